//! The fleet end to end: several weaver daemons, each with its own runtime
//! dir, state dir and `node`, stand in for hosts; one real `nats-server`
//! with JetStream per test (random loopback port, killed by pid); real
//! weavelets on each host's weavelet.sock.

#[path = "util/nats.rs"]
mod nats;
mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use util::{wait_for, TestEnv};

use nats::NatsServer;

const LIMIT: Duration = Duration::from_secs(30);

/// A host: a daemon with a weaver.toml naming the server and `node`.
fn host(url: &str, node: &str) -> TestEnv {
    let env = TestEnv::new();
    let cfg = env.tmp.path().join("weaver.toml");
    let toml = format!(
        r#"
[[process]]
name = "trainer"
command = ["sleep", "3600"]
[process.params]
lr = 0.1
optimizer = "sgd"

[fleet]
url = "{url}"
node = "{node}"
"#
    );
    std::fs::write(&cfg, toml).unwrap();
    env.env("WEAVER_CONFIG", cfg.to_str().unwrap())
}

/// A weavelet that applies every document it is sent, on its own thread;
/// what it applied is kept.
struct Weavelet {
    applied: Arc<Mutex<Vec<Value>>>,
    _sock: UnixStream,
}

impl Weavelet {
    fn start(sock: &Path, name: &str) -> Weavelet {
        let s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut w = s.try_clone().unwrap();
        let hello = json!({"type": "hello", "protocol": 1, "target": "trainer", "name": name});
        w.write_all(format!("{hello}\n").as_bytes()).unwrap();
        let applied = Arc::new(Mutex::new(Vec::new()));
        let keep = applied.clone();
        let r = BufReader::new(s.try_clone().unwrap());
        std::thread::spawn(move || {
            for line in r.lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line).unwrap();
                if v["type"] == "config" {
                    let ack = json!({"type": "applied", "revision": v["revision"]});
                    if w.write_all(format!("{ack}\n").as_bytes()).is_err() {
                        return;
                    }
                    keep.lock().unwrap().push(v);
                }
            }
        });
        Weavelet { applied, _sock: s }
    }

    fn last(&self) -> Option<Value> {
        self.applied.lock().unwrap().last().cloned()
    }

    fn count(&self) -> usize {
        self.applied.lock().unwrap().len()
    }
}

fn fleet_status(env: &TestEnv) -> Value {
    serde_json::from_str(&env.ok(&["fleet", "status", "--json"])).unwrap()
}

fn synced(env: &TestEnv) -> bool {
    fleet_status(env)["synced"] == json!(true)
}

/// Sample `name` of the host's `GET /metrics` (its HTTP endpoint is on).
fn metric(env: &TestEnv, name: &str) -> Option<f64> {
    let st: Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    let addr = st["daemon"]["http"].as_str().expect("the HTTP endpoint is on").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let prefix = format!("{name} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
}

fn lr_of(w: &Weavelet) -> Option<Value> {
    w.last().map(|c| c["values"]["lr"].clone())
}

#[test]
fn set_fleet_wait_reaches_weavelets_on_every_host() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let hosts: Vec<TestEnv> = (0..3).map(|i| host(&srv.url(), &format!("host{i}"))).collect();
    let init = hosts[0].ok(&["fleet", "init", "--history", "8"]);
    assert!(init.contains("bucket weaver_config ready"), "{init}");
    for h in &hosts {
        h.status();
        assert!(wait_for(LIMIT, || synced(h)), "not synced: {}\n{}", fleet_status(h), h.log());
    }
    let ws: Vec<Weavelet> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Weavelet::start(&h.path("weavelet.sock"), &format!("rank{i}")))
        .collect();
    for w in &ws {
        assert!(wait_for(LIMIT, || lr_of(w) == Some(json!(0.1))), "defaults first");
    }

    // Without --fleet or --local nobody changes the whole fleet by accident.
    let out = hosts[1].run(&["config", "set", "trainer", "lr=5"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--fleet") && err.contains("--local"), "{err}");

    let out = hosts[1].ok(&[
        "config",
        "set",
        "--fleet",
        "trainer",
        "lr=0.01",
        "--wait",
        "--timeout",
        "20000",
        "--json",
    ]);
    let report: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(report["timed_out"], json!(false), "{out}");
    let logs: Vec<String> = hosts.iter().map(|h| h.log()).collect();
    assert_eq!(report["applied"].as_array().unwrap().len(), 3, "{out}\n{}", logs.join("\n-----\n"));
    for w in &ws {
        assert_eq!(
            lr_of(w),
            Some(json!(0.01)),
            "every host applied it by the time --wait returned"
        );
    }

    // A local overlay wins on its host only, and says so.
    hosts[2].ok(&["config", "set", "--local", "trainer", "optimizer=adam"]);
    assert!(wait_for(LIMIT, || ws[2].last().unwrap()["values"]["optimizer"] == json!("adam")));
    let o: Value = serde_json::from_str(&hosts[2].ok(&[
        "config",
        "get",
        "trainer",
        "--show-origin",
        "--json",
    ]))
    .unwrap();
    assert_eq!(o["values"]["lr"], json!({"value": 0.01, "origin": "fleet"}), "{o}");
    assert_eq!(o["values"]["optimizer"], json!({"value": "adam", "origin": "local"}), "{o}");
    assert_eq!(ws[0].last().unwrap()["values"]["optimizer"], json!("sgd"));

    // A write from a stale view loses nothing: the second fleet write
    // builds on the first.
    hosts[0].ok(&[
        "config",
        "set",
        "--fleet",
        "trainer",
        "warmup=100",
        "--wait",
        "--timeout",
        "20000",
    ]);
    for w in &ws {
        let v = w.last().unwrap()["values"].clone();
        assert_eq!((v["lr"].clone(), v["warmup"].clone()), (json!(0.01), json!(100)), "{v}");
    }
    // Nothing applied twice: each weavelet saw each document once.
    for w in &ws {
        let revs: Vec<u64> =
            w.applied.lock().unwrap().iter().map(|c| c["revision"].as_u64().unwrap()).collect();
        let mut dedup = revs.clone();
        dedup.dedup();
        assert_eq!(revs, dedup, "a revision applied twice");
    }
    let st = fleet_status(&hosts[0]);
    assert_eq!(st["connected"], json!(true));
    assert!(st["rtt_us"].as_u64().is_some(), "{st}");
    assert_eq!(ws.iter().map(Weavelet::count).min().map(|n| n >= 3), Some(true));
}

#[test]
fn unreachable_fleet_fails_at_once_with_69_and_the_cache_is_served() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut srv = NatsServer::start(tmp.path());
    let h = host(&srv.url(), "solo").env("WEAVER_HTTP", "127.0.0.1:0");
    h.ok(&["fleet", "init"]);
    h.status();
    assert!(wait_for(LIMIT, || synced(&h)), "{}", h.log());
    h.ok(&["config", "set", "--fleet", "trainer", "lr=0.5"]);
    assert!(wait_for(LIMIT, || {
        let g: Value =
            serde_json::from_str(&h.ok(&["config", "get", "trainer", "--json"])).unwrap();
        g["values"]["lr"] == json!(0.5)
    }));
    let revision = fleet_status(&h)["revision"].as_f64().unwrap();
    assert!(revision >= 1.0);
    assert_eq!(metric(&h, "weaver_fleet_connected"), Some(1.0));
    assert_eq!(metric(&h, "weaver_fleet_synced"), Some(1.0));
    assert_eq!(metric(&h, "weaver_fleet_revision"), Some(revision));

    // The server goes away; the daemon restarts during the outage.
    srv.kill();
    h.ok(&["shutdown"]);
    h.status();
    let g: Value = serde_json::from_str(&h.ok(&["config", "get", "trainer", "--json"])).unwrap();
    assert_eq!(g["values"]["lr"], json!(0.5), "the cached fleet document is served: {g}");
    let st = fleet_status(&h);
    assert_eq!(
        (st["connected"].clone(), st["synced"].clone()),
        (json!(false), json!(false)),
        "{st}"
    );
    assert!(wait_for(LIMIT, || fleet_status(&h)["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("refused"))));
    assert_eq!(metric(&h, "weaver_fleet_connected"), Some(0.0));
    assert_eq!(metric(&h, "weaver_fleet_synced"), Some(0.0));
    assert_eq!(metric(&h, "weaver_fleet_revision"), Some(revision), "the cache's revision");

    let out = h.run(&["config", "set", "--fleet", "trainer", "lr=0.9"]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fleet unreachable; nothing written"), "{err}");
    let out = h.run(&["fleet", "init"]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");

    // Back: the link reconnects by itself and syncs again.
    srv.restart();
    assert!(wait_for(LIMIT, || synced(&h)), "{}", h.log());
    h.ok(&["config", "set", "--fleet", "trainer", "lr=0.9"]);
}

/// Two hosts with a weavelet each, synced and on the defaults.
fn two_hosts(srv: &NatsServer) -> (Vec<TestEnv>, Vec<Weavelet>) {
    let hosts: Vec<TestEnv> = (0..2).map(|i| host(&srv.url(), &format!("host{i}"))).collect();
    hosts[0].ok(&["fleet", "init"]);
    for h in &hosts {
        h.status();
        assert!(wait_for(LIMIT, || synced(h)), "{}", h.log());
    }
    let ws: Vec<Weavelet> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Weavelet::start(&h.path("weavelet.sock"), &format!("rank{i}")))
        .collect();
    for w in &ws {
        assert!(wait_for(LIMIT, || lr_of(w) == Some(json!(0.1))));
    }
    (hosts, ws)
}

/// Every weavelet ends on `lr`, and none applied a revision twice.
fn converged(ws: &[Weavelet], lr: Value) {
    for w in ws {
        assert!(wait_for(LIMIT, || lr_of(w) == Some(lr.clone())), "stuck at {:?}", lr_of(w));
        let revs: Vec<u64> =
            w.applied.lock().unwrap().iter().map(|c| c["revision"].as_u64().unwrap()).collect();
        let mut dedup = revs.clone();
        dedup.dedup();
        assert_eq!(revs, dedup, "a revision applied twice");
    }
}

fn set_wait(h: &TestEnv, kv: &str) {
    h.ok(&["config", "set", "--fleet", "trainer", kv, "--wait", "--timeout", "30000"]);
}

/// Consumers the server holds on the config bucket's stream.
fn consumers(srv: &NatsServer) -> Vec<String> {
    use weaver::fleet::{blocking::Session, client, kv};
    let o = client::Options::new(vec![client::Url::parse(&srv.url()).unwrap()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut s = Session::connect(o, deadline).unwrap();
    let r = s
        .request("$JS.API.CONSUMER.NAMES.KV_weaver_config", None, b"", Duration::from_secs(5))
        .unwrap();
    let v = kv::api_response(&r.payload).unwrap();
    let mut names: Vec<String> = v["consumers"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn outage_kill_restart_and_writes_while_a_host_reconnects() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut srv = NatsServer::start(tmp.path());
    let (hosts, ws) = two_hosts(&srv);
    set_wait(&hosts[0], "lr=0.2");
    converged(&ws, json!(0.2));

    // SIGKILL and restart on the same store: a write as soon as one host
    // is back reaches the other once it reconnects.
    srv.kill();
    for h in &hosts {
        assert!(wait_for(LIMIT, || fleet_status(h)["connected"] == json!(false)));
    }
    srv.restart();
    assert!(wait_for(LIMIT, || synced(&hosts[1])), "{}", hosts[1].log());
    hosts[1].ok(&["config", "set", "--fleet", "trainer", "lr=0.3"]);
    converged(&ws, json!(0.3));
    set_wait(&hosts[0], "lr=0.4");
    converged(&ws, json!(0.4));

    // A reconnect storm: the server holds one consumer per node after it.
    for _ in 0..4 {
        srv.kill();
        srv.restart();
    }
    for h in &hosts {
        assert!(wait_for(LIMIT, || synced(h)), "{}", h.log());
    }
    set_wait(&hosts[1], "lr=0.5");
    converged(&ws, json!(0.5));
    assert_eq!(consumers(&srv), ["weaver_host0", "weaver_host1"]);
}

#[test]
fn outage_silent_partition_found_by_ping() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let (hosts, ws) = two_hosts(&srv);

    // SIGSTOP: no FIN, no RST; only unanswered PINGs tell. The outage
    // lasts 15 s (the scenario), during which both hosts notice it.
    srv.stop();
    let stopped = std::time::Instant::now();
    for h in &hosts {
        assert!(
            wait_for(LIMIT, || fleet_status(h)["connected"] == json!(false)),
            "a stopped server is found by PING"
        );
        let st = fleet_status(h);
        let e = st["last_error"].as_str().unwrap_or_default().to_string();
        assert!(e.contains("stale") || e.contains("did not answer"), "{st}");
        // Meanwhile a write fails at once, nothing queued.
        let out = h.run(&["config", "set", "--fleet", "trainer", "lr=7"]);
        assert_eq!(out.status.code(), Some(69), "{out:?}");
    }
    let rest = Duration::from_secs(15).saturating_sub(stopped.elapsed());
    std::thread::sleep(rest);
    srv.cont();
    for h in &hosts {
        assert!(wait_for(LIMIT, || synced(h)), "{}", h.log());
    }
    set_wait(&hosts[0], "lr=0.6");
    converged(&ws, json!(0.6));
    assert!(hosts[0].log().contains("stale"), "the log says why the link dropped");
}

#[test]
fn outage_bucket_deleted_and_initialised_again() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let (hosts, ws) = two_hosts(&srv);
    set_wait(&hosts[0], "lr=0.2");
    set_wait(&hosts[0], "lr=0.3");
    converged(&ws, json!(0.3));
    {
        use weaver::fleet::{blocking::Session, client, kv};
        let o = client::Options::new(vec![client::Url::parse(&srv.url()).unwrap()]);
        let mut s = Session::connect(o, std::time::Instant::now() + LIMIT).unwrap();
        let r = s
            .request("$JS.API.STREAM.DELETE.KV_weaver_config", None, b"", Duration::from_secs(5))
            .unwrap();
        kv::api_response(&r.payload).unwrap();
    }
    hosts[1].ok(&["fleet", "init"]);
    // The new bucket counts from 1 again: its first revision must reach
    // everyone, and --wait must not take the old bucket's acks for it.
    // Each host notices (missed heartbeats: its consumer went with the
    // stream) and starts over from the new, empty bucket.
    for h in &hosts {
        assert!(
            wait_for(LIMIT, || {
                let st = fleet_status(h);
                st["synced"] == json!(true) && st["revision"] == json!(0)
            }),
            "{}",
            h.log()
        );
    }
    set_wait(&hosts[1], "lr=0.9");
    converged(&ws, json!(0.9));
    for h in &hosts {
        assert_eq!(fleet_status(h)["revision"], json!(1));
    }
    assert!(hosts[0].log().contains("resynchronising"), "{}", hosts[0].log());
}

#[test]
fn bad_credentials_and_bad_urls_are_clear_in_status_and_log() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start_with(tmp.path(), &["--auth", "right-token"]);
    let h = host(&srv.url(), "creds");
    let tok = h.tmp.path().join("nats.token");
    std::fs::write(&tok, "wrong-token\n").unwrap();
    // A secret readable by others is refused before anything starts.
    std::fs::set_permissions(&tok, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cfg = h.tmp.path().join("weaver.toml");
    let toml =
        std::fs::read_to_string(&cfg).unwrap() + &format!("token_file = \"{}\"\n", tok.display());
    std::fs::write(&cfg, toml).unwrap();
    let out = h.run(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");

    std::fs::set_permissions(&tok, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    h.status();
    assert!(wait_for(LIMIT, || fleet_status(&h)["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("Authorization Violation"))));
    assert!(wait_for(LIMIT, || h.log().contains("Authorization Violation")));
    let text = h.ok(&["fleet", "status"]);
    assert!(text.contains("down since") && text.contains("Authorization Violation"), "{text}");

    // A host name that does not resolve, resolved off the loop.
    let bad = host("nats://no-such-host.invalid:4222", "lost");
    bad.status();
    assert!(wait_for(LIMIT, || fleet_status(&bad)["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("cannot resolve no-such-host.invalid"))));
    // The daemon keeps serving everyone else.
    bad.ok(&["config", "get", "trainer"]);
}

#[test]
fn fleet_history_rollback_and_status() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let (hosts, ws) = two_hosts(&srv);
    set_wait(&hosts[0], "lr=0.2");
    hosts[0].ok(&["config", "set", "--fleet", "trainer", "warmup=10", "--wait"]);
    converged(&ws, json!(0.2));
    let h = hosts[1].ok(&["config", "history", "--fleet", "trainer", "--json"]);
    let revs: Vec<Value> = h.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(revs.len(), 2, "{h}");
    assert_eq!(revs[0]["values"], json!({"lr": 0.2}));
    assert_eq!(revs[1]["values"], json!({"lr": 0.2, "warmup": 10}));
    let first = revs[0]["revision"].as_u64().unwrap().to_string();

    // Back to the first fleet revision: a new revision with its values,
    // reaching every host.
    hosts[1].ok(&[
        "config",
        "rollback",
        "--fleet",
        "trainer",
        "--to",
        &first,
        "--wait",
        "--timeout",
        "20000",
    ]);
    for w in &ws {
        assert!(wait_for(LIMIT, || w.last().unwrap()["values"].get("warmup").is_none()));
    }
    let h = hosts[0].ok(&["config", "history", "--fleet", "trainer", "--json"]);
    assert_eq!(h.lines().count(), 3, "{h}");
    let out = hosts[0].run(&["config", "rollback", "--fleet", "trainer", "--to", "999"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no fleet revision 999"), "{out:?}");

    // Every host's weavelets, as the status bucket has them.
    let st = hosts[0].ok(&["config", "status", "--fleet", "trainer", "--json"]);
    let rows: Vec<Value> = st.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let nodes: Vec<&str> = rows.iter().map(|r| r["node"].as_str().unwrap()).collect();
    assert_eq!(
        nodes,
        ["host0", "host1"],
        "{st}\nall:\n{}\nlog:\n{}",
        hosts[0].ok(&["config", "status", "--fleet"]),
        hosts[0].log()
    );
    assert!(rows.iter().all(|r| r["state"] == "applied" && r["connected"] == json!(true)), "{st}");
}

/// A weavelet that says hello and then applies every config but one with
/// lr=0.4, which it answers with `reply` (None: it never answers at all).
fn scripted(sock: &Path, name: &str, reply: Option<&'static str>) -> UnixStream {
    let s = UnixStream::connect(sock).unwrap();
    let mut w = s.try_clone().unwrap();
    let hello = json!({"type": "hello", "protocol": 1, "target": "trainer", "name": name});
    w.write_all(format!("{hello}\n").as_bytes()).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    std::thread::spawn(move || {
        for line in r.lines() {
            let Ok(line) = line else { return };
            let v: Value = serde_json::from_str(&line).unwrap();
            if let (Some(kind), "config") = (reply, v["type"].as_str().unwrap_or("")) {
                // lr=0.4 gets `kind`; anything else is applied.
                let kind = if v["values"]["lr"] == json!(0.4) { kind } else { "applied" };
                let ack = json!({"type": kind, "revision": v["revision"], "reason": "lr too high"});
                if w.write_all(format!("{ack}\n").as_bytes()).is_err() {
                    return;
                }
            }
        }
    });
    s
}

#[test]
fn wait_across_hosts_names_laggards_and_rejections() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let (hosts, ws) = two_hosts(&srv);
    // A weavelet on host1 that never answers: --wait ends at its timeout
    // with 124, naming it.
    let silent = scripted(&hosts[1].path("weavelet.sock"), "silent", None);
    assert!(wait_for(LIMIT, || hosts[1].ok(&["config", "status", "trainer"]).contains("silent")));
    let out = hosts[0].run(&[
        "config",
        "set",
        "--fleet",
        "trainer",
        "lr=0.3",
        "--wait",
        "--timeout",
        "3000",
    ]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("host1.w2") && !err.contains("host0.w1"), "{err}");
    converged(&ws, json!(0.3));
    silent.shutdown(std::net::Shutdown::Both).unwrap();

    // One that rejects: exit 1 with who and why.
    let _rejecting = scripted(&hosts[1].path("weavelet.sock"), "picky", Some("rejected"));
    assert!(wait_for(LIMIT, || {
        let st = hosts[0].ok(&["config", "status", "--fleet", "--json"]);
        st.lines().any(|l| l.contains("host1.w3") && l.contains("\"connected\":true"))
            && st.lines().any(|l| l.contains("host1.w2") && l.contains("\"connected\":false"))
    }));
    let out = hosts[0].run(&[
        "config",
        "set",
        "--fleet",
        "trainer",
        "lr=0.4",
        "--wait",
        "--timeout",
        "20000",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("host1.w3") && err.contains("lr too high"), "{err}");
}

/// A host with more lines under `[fleet]`.
fn host_with(url: &str, node: &str, fleet_extra: &str) -> TestEnv {
    let env = host(url, node);
    let cfg = env.tmp.path().join("weaver.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}{fleet_extra}\n")).unwrap();
    env
}

#[test]
fn rollback_and_history_on_a_host_in_a_fleet_need_fleet_or_local() {
    // No server needed: the daemon serves its local revisions while the
    // fleet is unreachable.
    let h = host("nats://127.0.0.1:1", "alone");
    h.status();
    h.ok(&["config", "set", "--local", "trainer", "lr=0.5"]);
    for args in
        [&["config", "rollback", "trainer", "--to", "0"][..], &["config", "history", "trainer"][..]]
    {
        let out = h.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("in a fleet") && err.contains("--fleet") && err.contains("--local"),
            "{err}"
        );
    }
    // Nothing was rolled back by the refused command.
    let doc: Value = serde_json::from_str(&h.ok(&["config", "get", "trainer", "--json"])).unwrap();
    assert_eq!(doc["values"]["lr"], json!(0.5), "{doc}");
    let hist = h.ok(&["config", "history", "--local", "trainer", "--json"]);
    assert!(hist.lines().count() >= 1, "{hist}");
    let out = h.ok(&["config", "rollback", "--local", "trainer", "--to", "0", "--json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["values"]["lr"], json!(0.1), "{doc}");
    // Without [fleet] the plain commands work as before.
    let plain = TestEnv::new();
    let cfg = plain.tmp.path().join("weaver.toml");
    std::fs::write(&cfg, "[[process]]\nname = \"trainer\"\ncommand = [\"sleep\", \"3600\"]\n")
        .unwrap();
    let plain = plain.env("WEAVER_CONFIG", cfg.to_str().unwrap());
    plain.status();
    plain.ok(&["config", "set", "trainer", "lr=1"]);
    plain.ok(&["config", "history", "trainer"]);
    plain.ok(&["config", "rollback", "trainer", "--to", "0"]);
}

#[test]
fn a_vanished_hosts_entries_are_stale_not_waited_for() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let hosts: Vec<TestEnv> =
        (0..2).map(|i| host_with(&srv.url(), &format!("host{i}"), "status_every = 1")).collect();
    hosts[0].ok(&["fleet", "init"]);
    for h in &hosts {
        h.status();
        assert!(wait_for(LIMIT, || synced(h)), "{}", h.log());
    }
    let ws: Vec<Weavelet> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Weavelet::start(&h.path("weavelet.sock"), &format!("rank{i}")))
        .collect();
    set_wait(&hosts[0], "lr=0.2");
    converged(&ws, json!(0.2));
    // Both entries are in the status bucket, applied.
    assert!(wait_for(LIMIT, || {
        let st = hosts[0].ok(&["config", "status", "--fleet", "--json"]);
        ["host0.w1", "host1.w1"].iter().all(|k| {
            st.lines().any(|l| l.contains(&format!("\"{k}\"")) && l.contains("\"applied\""))
        })
    }));
    // host1 vanishes without a word: its entry stays "connected" in the
    // status bucket, but its beats stop.
    let pid = hosts[1].daemon_pid().expect("host1 runs");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(wait_for(LIMIT, || !weaver::pidfile::alive(pid)));
    let out = hosts[0].run(&[
        "config",
        "set",
        "--fleet",
        "trainer",
        "lr=0.3",
        "--wait",
        "--timeout",
        "30000",
    ]);
    // Answered once the entry is stale (three missed 1 s beats), not at
    // the timeout, naming it and its age.
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", hosts[0].log());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("host1.w1 (stale: its host last reported"), "{text}");
    assert!(text.contains("applied by 1 weavelet(s)"), "{text}");
    assert_eq!(lr_of(&ws[0]), Some(json!(0.3)));
}

#[test]
fn a_retry_after_a_conflict_waits_for_the_resync() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let (hosts, ws) = two_hosts(&srv);
    use weaver::protocol::{FleetReq, Request, Response};
    let pid = hosts[0].daemon_pid().expect("host0 runs") as i32;
    let put = |lr: &str| {
        Request::Fleet(FleetReq::Set {
            target: "trainer".into(),
            set: vec![("lr".into(), lr.into())],
            unset: Vec::new(),
            wait: None,
            local: false,
        })
    };
    let mut conflicts = 0;
    for round in 0..3 {
        // host0's put is read before host1's write reaches it: the put
        // carries a revision that is no longer the last.
        let mut c = hosts[0].client();
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let lr = format!("0.{}", round + 5);
        c.send(put(&lr), &[]).unwrap();
        hosts[1].ok(&["config", "set", "--fleet", "trainer", &format!("other={round}")]);
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let r = c.recv().unwrap().expect("a reply");
        if let Response::Error(e) = &r.resp {
            assert!(
                e.message.contains("changed meanwhile")
                    && e.message.contains("run the command again"),
                "{e:?}"
            );
            conflicts += 1;
            // Run again at once: the watch is resyncing, and the put waits
            // for it rather than failing 69.
            c.send(put(&lr), &[]).unwrap();
            let r = c.recv().unwrap().expect("a reply");
            assert!(matches!(r.resp, Response::Config(_)), "{:?}\n{}", r.resp, hosts[0].log());
        } else {
            assert!(matches!(r.resp, Response::Config(_)), "{:?}", r.resp);
        }
        converged(&ws, json!(lr.parse::<f64>().unwrap()));
        for w in &ws {
            assert!(wait_for(LIMIT, || w.last().unwrap()["values"]["other"] == json!(round)));
        }
    }
    // The order above makes the conflict happen; the retry is what is tested.
    assert!(conflicts > 0, "no round met a compare-and-set conflict");
}

#[test]
fn a_cleanly_stopped_host_says_so_and_is_not_waited_for() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let (hosts, ws) = two_hosts(&srv);
    set_wait(&hosts[0], "lr=0.2");
    converged(&ws, json!(0.2));
    let entry = |key: &str| {
        let st = hosts[0].ok(&["config", "status", "--fleet", "--json"]);
        st.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["key"] == json!(key))
    };
    assert!(wait_for(LIMIT, || entry("host1.w1").is_some_and(|v| v["state"] == "applied")));
    hosts[1].ok(&["shutdown"]);
    // Its entry says it stopped: not connected, so not waited for.
    assert!(wait_for(LIMIT, || entry("host1.w1")
        .is_some_and(|v| v["state"] == "stopped" && v["connected"] == json!(false))));
    let out = hosts[0].ok(&["config", "set", "--fleet", "trainer", "lr=0.3", "--wait"]);
    assert!(out.contains("applied by 1 weavelet(s)") && !out.contains("host1"), "{out}");
}
