//! `weaver config set --wait` against 1, 16 and 64 weavelets (threads
//! speaking the weavelet protocol over the real weavelet.sock), each
//! against one `weaver status` call in the same run (these machines are
//! shared and noisy; only ratios travel). Goal: 64 weavelets acknowledged
//! within 3x one status call.
//!
//! `cargo bench --bench weavelet`; WEAVER_BENCH_QUICK=1 runs fewer rounds.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{percentile, quick, run_ok, timed};

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");

fn weaver(tmp: &Path) -> Command {
    let mut c = Command::new(WEAVER);
    c.env("WEAVER_RUNTIME_DIR", tmp.join("rt"))
        .env("WEAVER_STATE_DIR", tmp.join("state"))
        .env("XDG_CONFIG_HOME", tmp.join("config"))
        .env_remove("WEAVER_CONFIG")
        .env("WEAVER_COMPUTE_BIN", COMPUTE)
        .env("WEAVER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c
}

/// A weavelet on its own thread: hello, then `applied` for every config,
/// until weaver closes the connection.
fn weavelet(sock: &Path, i: usize) -> std::thread::JoinHandle<()> {
    let mut s = UnixStream::connect(sock).expect("weavelet.sock");
    let hello =
        format!("{{\"type\":\"hello\",\"protocol\":1,\"target\":\"bench\",\"name\":\"w{i}\"}}\n");
    s.write_all(hello.as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut welcome = String::new();
    r.read_line(&mut welcome).unwrap();
    assert!(welcome.contains("welcome"), "{welcome}");
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let rev = v["revision"].as_u64().unwrap();
            let ack = format!("{{\"type\":\"applied\",\"revision\":{rev},\"step\":{rev}}}\n");
            if s.write_all(ack.as_bytes()).is_err() {
                return;
            }
        }
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let tmp = tempfile::Builder::new().prefix("wvw").tempdir_in("/tmp").unwrap();
    let rounds = if quick() { 10 } else { 100 };
    let t = tmp.path();
    run_ok({
        let mut c = weaver(t);
        c.args(["status", "--wait"]);
        c
    });
    run_ok({
        let mut c = weaver(t);
        c.args(["config", "set", "bench", "i=0"]);
        c
    });
    let sock = t.join("rt/weavelet.sock");
    let mut st: Vec<Duration> = (0..rounds)
        .map(|_| {
            let mut c = weaver(t);
            c.arg("status");
            timed(c)
        })
        .collect();
    let s50 = percentile(&mut st, 50.0);
    println!("status: p50 {:.2} ms, p90 {:.2} ms", ms(s50), ms(percentile(&mut st, 90.0)));
    let mut threads = Vec::new();
    let mut k = 0;
    for n in [1usize, 16, 64] {
        while threads.len() < n {
            threads.push(weavelet(&sock, threads.len()));
        }
        let mut times: Vec<Duration> = (0..rounds)
            .map(|_| {
                k += 1;
                let mut c = weaver(t);
                c.args([
                    "config",
                    "set",
                    "bench",
                    &format!("i={k}"),
                    "--wait",
                    "--timeout",
                    "10000",
                ]);
                timed(c)
            })
            .collect();
        let p50 = percentile(&mut times, 50.0);
        let goal = if n == 64 { " (goal < 3x)" } else { "" };
        println!(
            "config set --wait, {n:>2} weavelet(s): p50 {:.2} ms, p90 {:.2} ms | ratio to status {:.2}x{goal}",
            ms(p50),
            ms(percentile(&mut times, 90.0)),
            p50.as_secs_f64() / s50.as_secs_f64()
        );
    }
    run_ok({
        let mut c = weaver(t);
        c.arg("shutdown");
        c
    });
    for th in threads {
        let _ = th.join();
    }
}
