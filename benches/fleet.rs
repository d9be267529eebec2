//! The fleet: one KV put to every weavelet applied, 10 daemons (hosts) x
//! 10 weavelets on one real nats-server, p50 and p99; against a raw KV put
//! to a watching consumer, measured from the same puts in the same run (a
//! second NATS connection with its own ordered consumer on the bucket).
//! Goal: p99 under 10 ms and within 2x the raw figure.
//!
//! `cargo bench --bench fleet`; WEAVER_BENCH_QUICK=1 runs 2 daemons x 2
//! weavelets and a few rounds.

mod common;
#[path = "../tests/util/nats.rs"]
mod nats;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{percentile, quick, run_ok, weaver_with_config};
use weaver::fleet::blocking::Session;
use weaver::fleet::client::{Event, Options, Url};
use weaver::fleet::kv::{self, Bucket, Watch, Watcher};

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");
const LIMIT: Duration = Duration::from_secs(30);

/// Applied counts per round value, and a condvar to wait on them.
type Applied = Arc<(Mutex<HashMap<u64, usize>>, Condvar)>;

/// A weavelet thread: hello for `bench`, then `applied` for every config;
/// counts each round's value when it applies it.
fn weavelet(sock: &Path, name: &str, applied: Applied) -> std::thread::JoinHandle<()> {
    let mut s = UnixStream::connect(sock).expect("weavelet.sock");
    let hello =
        format!("{{\"type\":\"hello\",\"protocol\":1,\"target\":\"bench\",\"name\":\"{name}\"}}\n");
    s.write_all(hello.as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["type"] != "config" {
                continue;
            }
            let rev = v["revision"].as_u64().unwrap();
            let ack = format!("{{\"type\":\"applied\",\"revision\":{rev}}}\n");
            if s.write_all(ack.as_bytes()).is_err() {
                return;
            }
            if let Some(k) = v["values"]["k"].as_u64() {
                let (m, cv) = &*applied;
                *m.lock().unwrap().entry(k).or_default() += 1;
                cv.notify_all();
            }
        }
    })
}

/// The raw consumer: an ordered watcher on its own connection, reporting
/// each value's arrival time.
fn raw_watcher(
    url: &str,
    tx: mpsc::Sender<(u64, Instant)>,
    stop: Arc<Mutex<bool>>,
) -> std::thread::JoinHandle<()> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let o = Options::new(vec![Url::parse(&url).unwrap()]);
        let mut s = Session::connect(o, Instant::now() + LIMIT).unwrap();
        let b = Bucket::new("weaver_config", None).unwrap();
        let deliver = s.client.new_inbox();
        let mut w = Watcher::new(b, "raw-bench", deliver, Duration::from_secs(2), Instant::now());
        let mut sid = None;
        let mut todo = w.start(Instant::now());
        loop {
            while !todo.is_empty() {
                let mut next = Vec::new();
                for a in todo {
                    match a {
                        Watch::Request { step, subject, body } => {
                            let r = s.request(&subject, None, &body, Duration::from_secs(5));
                            let r = r.as_ref().map(|m| &m.payload[..]).map_err(|e| e.clone());
                            next.extend(w.replied(step, r, Instant::now()));
                        }
                        Watch::Subscribe { subject } => sid = Some(s.client.subscribe(&subject)),
                        Watch::Reply { subject } => {
                            let _ = s.publish(&subject, None, b"");
                        }
                        Watch::Entry(e) => {
                            let v: serde_json::Value =
                                serde_json::from_slice(e.value.as_deref().unwrap_or(b"{}"))
                                    .unwrap_or_default();
                            if let Some(k) = v["k"].as_u64() {
                                let _ = tx.send((k, Instant::now()));
                            }
                        }
                        _ => {}
                    }
                }
                todo = next;
            }
            if *stop.lock().unwrap() {
                return;
            }
            if let Some(Event::Msg(m)) = s.next_event(Instant::now() + Duration::from_millis(100)) {
                if Some(m.sid) == sid {
                    todo = w.message(&m, Instant::now());
                }
            }
            todo.extend(w.tick(s.client.is_ready(), Instant::now()));
        }
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if !nats::available() {
        return;
    }
    let (daemons, per, rounds) = if quick() { (2, 2, 10) } else { (10, 10, 200) };
    let tmp = tempfile::Builder::new().prefix("wvf").tempdir_in("/tmp").unwrap();
    let t = tmp.path();
    let srv = nats::NatsServer::start(&t.join("nats"));
    let url = srv.url();
    // The daemons.
    let mut rts: Vec<(PathBuf, PathBuf)> = Vec::new();
    for i in 0..daemons {
        let d = t.join(format!("h{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let cfg = d.join("weaver.toml");
        let toml = format!(
            "[[process]]\nname = \"bench\"\ncommand = [\"sleep\", \"3600\"]\n\n[fleet]\nurl = \"{url}\"\nnode = \"h{i}\"\n"
        );
        std::fs::write(&cfg, toml).unwrap();
        rts.push((d.join("rt"), cfg));
    }
    let cmd = |i: usize, args: &[&str]| {
        let mut c = weaver_with_config(WEAVER, COMPUTE, &rts[i].0, &rts[i].1);
        c.args(args);
        if let Ok(l) = std::env::var("FLEET_BENCH_LOG") {
            c.env("WEAVER_LOG", l);
        }
        c
    };
    run_ok(cmd(0, &["fleet", "init"]));
    for i in 0..daemons {
        run_ok(cmd(i, &["status", "--wait"]));
    }
    let applied: Applied = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
    let mut threads = Vec::new();
    for (i, (rt, _)) in rts.iter().enumerate() {
        for j in 0..per {
            threads.push(weavelet(
                &rt.join("weavelet.sock"),
                &format!("h{i}w{j}"),
                applied.clone(),
            ));
        }
    }
    let total = daemons * per;
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(Mutex::new(false));
    let raw = raw_watcher(&url, tx, stop.clone());

    let o = Options::new(vec![Url::parse(&url).unwrap()]);
    let mut s = Session::connect(o, Instant::now() + LIMIT).unwrap();
    let b = Bucket::new("weaver_config", None).unwrap();
    let mut last = 0u64;
    let mut fleet_t = Vec::new();
    let mut raw_t = Vec::new();
    // Round 0 warms every path up (and waits for every host to be synced
    // and every weavelet connected); it is not counted.
    for k in 0..=rounds as u64 {
        let body = format!("{{\"k\":{k}}}");
        let (subj, h) = b.put("bench", Some(last), &format!("bench-{k}")).unwrap();
        let t0 = Instant::now();
        let reply = s.request(&subj, Some(&h), body.as_bytes(), Duration::from_secs(5)).unwrap();
        let ack = kv::pub_ack(&reply.payload).expect("put");
        last = ack.seq;
        let (m, cv) = &*applied;
        let guard = m.lock().unwrap();
        let wait = if k == 0 { Duration::from_secs(60) } else { LIMIT };
        let (guard, to) = cv
            .wait_timeout_while(guard, wait, |c| c.get(&k).copied().unwrap_or(0) < total)
            .unwrap();
        assert!(
            !to.timed_out(),
            "round {k}: {} of {total} weavelets applied it",
            guard.get(&k).copied().unwrap_or(0)
        );
        let done = t0.elapsed();
        drop(guard);
        let seen = loop {
            let (rk, at) = rx.recv_timeout(LIMIT).expect("the raw consumer saw the put");
            if rk == k {
                break at.saturating_duration_since(t0);
            }
        };
        if k > 0 {
            fleet_t.push(done);
            raw_t.push(seen);
        }
    }
    let (f50, f99) = (percentile(&mut fleet_t, 50.0), percentile(&mut fleet_t, 99.0));
    let (r50, r99) = (percentile(&mut raw_t, 50.0), percentile(&mut raw_t, 99.0));
    println!(
        "raw KV put -> watching consumer: p50 {:.2} ms, p99 {:.2} ms ({rounds} puts)",
        ms(r50),
        ms(r99)
    );
    println!(
        "fleet put -> {total} weavelets on {daemons} daemons applied: p50 {:.2} ms, p99 {:.2} ms | p99 ratio to raw {:.2}x (goal: p99 < 10 ms and < 2x)",
        ms(f50),
        ms(f99),
        f99.as_secs_f64() / r99.as_secs_f64()
    );
    if std::env::var("FLEET_BENCH_LOG").is_ok() {
        let log = std::fs::read_to_string(rts[0].0.join("weaver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
    *stop.lock().unwrap() = true;
    let _ = raw.join();
    for i in 0..daemons {
        run_ok(cmd(i, &["shutdown"]));
    }
    for th in threads {
        let _ = th.join();
    }
}
