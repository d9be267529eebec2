//! The HTTP endpoint over real TCP: every path and status code, keep-alive
//! and HEAD, the limits (an oversized head, a slowloris client, a thousand
//! idle connections), health turning 503, the metrics checked by
//! Prometheus's own parser (`promtool`) and scraped by a real Prometheus
//! server; and the registry of running daemons (`weaver ls`).
//!
//! Without `promtool` or `prometheus` (Debian package `prometheus`) those
//! two tests pass with a loud skip line, unless `WEAVER_REQUIRE_ALL=1`.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{wait_for, TestEnv};

const LIMIT: Duration = Duration::from_secs(30);

/// A daemon with `toml` (an `[http]` table on a free port is added).
fn daemon(toml: &str) -> (TestEnv, SocketAddr) {
    let env = TestEnv::new();
    let cfg = env.tmp.path().join("weaver.toml");
    let text = format!("[http]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"1s\"\n\n{toml}");
    std::fs::write(&cfg, text).unwrap();
    let env = env.env("WEAVER_CONFIG", cfg.to_str().unwrap());
    let addr = http_addr(&env);
    (env, addr)
}

/// The endpoint's address as `status` shows it.
fn http_addr(env: &TestEnv) -> SocketAddr {
    let s = env.status();
    s["daemon"]["http"].as_str().expect("status shows the HTTP address").parse().unwrap()
}

fn track_processes(env: &TestEnv) {
    let v: Value = serde_json::from_str(&env.ok(&["ps", "--json"])).unwrap();
    for r in v.as_array().unwrap() {
        if let Some(p) = r["pid"].as_u64() {
            env.track(p as u32);
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

/// Read one response; `head_only`: a HEAD response (no body whatever its
/// Content-Length says).
fn read_response(s: &mut TcpStream, head_only: bool) -> Resp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("a response within the deadline");
        assert!(n == 1, "connection closed mid-head after {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut r = Resp { status, head, body: Vec::new() };
    let len: usize = r.header("content-length").expect("Content-Length").parse().unwrap();
    if !head_only {
        r.body = vec![0; len];
        s.read_exact(&mut r.body).unwrap();
    }
    r
}

fn request(s: &mut TcpStream, method: &str, path: &str) -> Resp {
    write!(s, "{method} {path} HTTP/1.1\r\nHost: weaver\r\n\r\n").unwrap();
    read_response(s, method == "HEAD")
}

/// One GET on a fresh connection.
fn get(addr: SocketAddr, path: &str) -> Resp {
    request(&mut connect(addr), "GET", path)
}

/// Wait until GET `path` answers `status`; the last answer.
fn wait_status(env: &TestEnv, addr: SocketAddr, path: &str, status: u16) -> Resp {
    let mut last = None;
    let ok = wait_for(LIMIT, || {
        let r = get(addr, path);
        let done = r.status == status;
        last = Some(r);
        done
    });
    let last = last.unwrap();
    assert!(
        ok,
        "{path} never answered {status}; last: {} {}\nlog:\n{}",
        last.status,
        last.text(),
        env.log()
    );
    last
}

fn at_eof(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0))
}

fn check(r: &Value, name: &str) -> Value {
    r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no check {name}: {r}"))
}

#[test]
fn every_endpoint_and_status_code_over_one_keep_alive_connection() {
    let (env, addr) = daemon(
        r#"[[process]]
name = "web"
command = ["sh", "-c", "echo up; exec sleep 3600"]
detectors = { ready = { log_pattern = "up" } }
"#,
    );
    wait_status(&env, addr, "/health", 200);
    track_processes(&env);
    let mut s = connect(addr);
    let r = request(&mut s, "GET", "/health");
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    let v = r.json();
    assert_eq!(v["healthy"], true);
    assert_eq!(check(&v, "web")["state"], "ready");
    assert_eq!(check(&v, "compute")["ok"], true);
    // HEAD: GET's headers, no body (the next response follows at once).
    let head = request(&mut s, "HEAD", "/metrics");
    assert_eq!(head.status, 200);
    assert!(head.header("content-length").unwrap().parse::<usize>().unwrap() > 100);
    assert!(head.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    assert_eq!(request(&mut s, "GET", "/ready").status, 200);
    assert_eq!(request(&mut s, "GET", "/health/web").status, 200);
    let r = request(&mut s, "GET", "/health/nope");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nope"));
    let r = request(&mut s, "GET", "/nope");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("/metrics"), "{}", r.text());
    let m = request(&mut s, "GET", "/metrics").text();
    assert!(m.contains("\nweaver_up 1\n") || m.starts_with("# HELP weaver_up"), "{m}");
    assert!(m.contains("weaver_process_up{instance=\"web\",process=\"web\"} 1\n"), "{m}");
    assert!(m.contains("weaver_process_ready{instance=\"web\",process=\"web\"} 1\n"), "{m}");
    // 405 with Allow; a request without a body keeps the connection.
    write!(s, "DELETE /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    let r = read_response(&mut s, false);
    assert_eq!((r.status, r.header("allow").as_deref()), (405, Some("GET, HEAD")));
    assert_eq!(request(&mut s, "GET", "/health").status, 200, "still open after 405");
    // Pipelined: two requests in one write, two answers in order.
    write!(s, "GET /ready HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).status, 200);
    assert_eq!(read_response(&mut s, false).status, 404);
    // Connection: close is honoured.
    write!(s, "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let r = read_response(&mut s, false);
    assert_eq!((r.status, r.header("connection").as_deref()), (200, Some("close")));
    assert!(at_eof(&mut s), "closed after Connection: close");
    // The same answer without HTTP.
    let out = env.run(&["health", "web", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["healthy"].clone(), v["name"].clone()), (Value::Bool(true), "web".into()));
    let text = env.ok(&["health"]);
    assert!(text.starts_with("healthy\n"), "{text}");
    let out = env.run(&["health", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn health_turns_503_when_a_process_is_not_ready_and_when_compute_is_down() {
    let flag = TempFlag::new();
    let (env, addr) = daemon(&format!(
        r#"[compute]
auto_restart = false

[[process]]
name = "svc"
command = ["sleep", "3600"]
start_duration = "100ms"
[process.detectors.ready]
command = ["test", "-e", "{}"]
interval = "100ms"
"#,
        flag.path
    ));
    let mut v = Value::Null;
    let running = wait_for(LIMIT, || {
        v = get(addr, "/health/svc").json();
        check(&v, "svc")["state"] == "running"
    });
    assert!(running, "svc never ran: {v}");
    track_processes(&env);
    assert_eq!(get(addr, "/health/svc").status, 503);
    assert_eq!(v["healthy"], false);
    assert!(check(&v, "svc")["reason"].as_str().unwrap().contains("ready probe"), "{v}");
    let r = get(addr, "/health");
    assert_eq!(r.status, 503);
    assert_eq!(check(&r.json(), "compute")["ok"], true);
    let out = env.run(&["health"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL svc"), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy: svc failed"), "{out:?}");
    assert_eq!(get(addr, "/ready").status, 200, "start-up ordering is over: svc runs");
    std::fs::write(&flag.path, b"").unwrap();
    wait_status(&env, addr, "/health", 200);
    assert!(env.run(&["health"]).status.success());
    // compute killed, not restarted: unhealthy, naming compute.
    let pid = env.compute_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL)
        .unwrap();
    // Unhealthy from the moment it is lost; "exiting" until its exit is
    // reaped, then "failed".
    let r = wait_status(&env, addr, "/health", 503);
    assert_eq!(check(&r.json(), "compute")["ok"], false, "{}", r.text());
    let mut v = Value::Null;
    let failed = wait_for(LIMIT, || {
        let r = get(addr, "/health");
        v = r.json();
        r.status == 503 && check(&v, "compute")["state"] == "failed"
    });
    assert!(failed, "compute never reported failed: {v}");
    let c = check(&v, "compute");
    assert_eq!((c["ok"].clone(), c["state"].clone()), (Value::Bool(false), "failed".into()));
    assert!(c["reason"].as_str().unwrap().contains("compute is failed"), "{c}");
    let out = env.run(&["health", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let m = get(addr, "/metrics").text();
    assert!(m.contains("weaver_compute_up 0\n") && m.contains("weaver_healthy 0\n"), "{m}");
}

#[test]
fn ready_waits_for_start_up_ordering_and_turns_503_while_stopping() {
    let env0 = TempFlag::new();
    let (env, addr) = daemon(&format!(
        r#"[[process]]
name = "db"
command = ["sleep", "3600"]
start_duration = "100ms"
detectors = {{ ready = {{ command = ["test", "-e", "{}"], interval = "100ms" }} }}

[[process]]
name = "app"
command = ["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"]
start_duration = "100ms"
stop_timeout = "5s"
after = [{{ name = "db", condition = "ready" }}]
"#,
        env0.path
    ));
    // app waits for db's readiness: start-up ordering is not over.
    let r = wait_status(&env, addr, "/ready", 503);
    assert!(r.json()["reason"].as_str().unwrap().contains("started in order"), "{}", r.text());
    track_processes(&env);
    std::fs::write(&env0.path, b"").unwrap();
    wait_status(&env, addr, "/ready", 200);
    track_processes(&env);
    // app ignores SIGTERM: the stop takes stop_timeout, and /ready says so.
    let mut shutdown =
        env.cmd().arg("shutdown").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let r = wait_status(&env, addr, "/ready", 503);
    assert_eq!(r.json()["reason"], "weaver is stopping");
    assert_eq!(check(&get(addr, "/health").json(), "daemon")["state"], "stopping");
    let done = wait_for(LIMIT, || shutdown.try_wait().unwrap().is_some());
    assert!(done, "shutdown did not finish");
}

/// A path for a flag file, removed at the end.
struct TempFlag {
    _dir: tempfile::TempDir,
    path: String,
}

impl TempFlag {
    fn new() -> TempFlag {
        let dir = tempfile::Builder::new().prefix("wvf").tempdir_in("/tmp").unwrap();
        let path = dir.path().join("flag").display().to_string();
        TempFlag { _dir: dir, path }
    }
}

#[test]
fn an_oversized_head_a_slowloris_and_garbage_are_cut_off_while_others_are_served() {
    let (env, addr) = daemon("");
    wait_status(&env, addr, "/health", 200);
    // A head over 8 KiB: 431, then the connection closes.
    let mut s = connect(addr);
    let big = format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let _ = s.write_all(big.as_bytes());
    let r = read_response(&mut s, false);
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(at_eof(&mut s));
    // Garbage: 400.
    let mut s = connect(addr);
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).status, 400);
    // A slowloris: a byte every 50 ms, never ending its head.
    let mut slow = connect(addr);
    slow.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = slow.try_clone().unwrap();
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + LIMIT;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                if writer.write_all(b"a").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Others are served meanwhile.
    assert_eq!(get(addr, "/health").status, 200);
    // header_timeout (1 s) after its first byte: 408, closed.
    let r = read_response(&mut slow, false);
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(get(addr, "/health").status, 200);
}

/// The soft open-file limit of `pid`.
fn nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap_or(u64::MAX)
}

/// Raise this process's soft open-file limit to its hard one.
fn raise_own_nofile() -> u64 {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    l.rlim_cur
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let m = get(addr, "/metrics").text();
    let line = m
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_thousand_idle_connections_and_others_are_still_served() {
    let (env, addr) = daemon("");
    wait_status(&env, addr, "/health", 200);
    // The daemon raises its soft limit to the hard one; 1,000 connections
    // need it above 1,100 (and so does this test process).
    let daemon_limit = nofile(env.daemon_pid().unwrap());
    let own = raise_own_nofile();
    if daemon_limit < 1200 || own < 2300 {
        let require = std::env::var("WEAVER_REQUIRE_ALL").is_ok_and(|v| v == "1");
        let msg = format!(
            "open-file limit too low for 1,000 idle connections (daemon {daemon_limit}, test {own}); raise `ulimit -Hn`"
        );
        assert!(!require, "{msg}");
        eprintln!("\n======== SKIPPED: {msg} ========\n");
        return;
    }
    let idle: Vec<TcpStream> = (0..1000).map(|_| connect(addr)).collect();
    let ok = wait_for(LIMIT, || metric(addr, "weaver_http_connections") >= 1001.0);
    assert!(ok, "the daemon did not take 1,000 connections");
    let r = get(addr, "/health");
    assert_eq!(r.status, 200);
    // Past the limit (1,024) the connections idle longest make room.
    let more: Vec<TcpStream> = (0..100).map(|_| connect(addr)).collect();
    assert_eq!(get(addr, "/health").status, 200);
    let mut first = idle.into_iter().next().unwrap();
    assert!(at_eof(&mut first), "the oldest idle connection was closed for room");
    let n = metric(addr, "weaver_http_connections");
    assert!(n <= 1024.0, "{n} connections open, over the limit");
    // A kept connection still works.
    let mut last = more.into_iter().last().unwrap();
    assert_eq!(request(&mut last, "GET", "/ready").status, 200);
}

fn tool(name: &str, package: &str) -> bool {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let require = std::env::var("WEAVER_REQUIRE_ALL").is_ok_and(|v| v == "1");
        let msg = format!("{name} not found: this test did not run (apt-get install {package})");
        assert!(!require, "{msg}; WEAVER_REQUIRE_ALL=1 requires it");
        eprintln!("\n======== SKIPPED: {msg} ========\n");
    }
    found
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    if !tool("promtool", "prometheus") {
        return;
    }
    let (env, addr) = daemon(
        r#"[[process]]
name = "web"
command = ["sh", "-c", "echo up; exec sleep 3600"]
instances = 2
detectors = { ready = { log_pattern = "up" } }

[[process]]
name = "once"
command = ["sh", "-c", "exit 3"]
auto_restart = false
start_duration = 0
"#,
    );
    wait_status(&env, addr, "/health", 200);
    track_processes(&env);
    env.ok(&["compute", "echo", "--data", "hi"]);
    let out = env.run(&["compute", "nosuchop"]);
    assert!(!out.status.success());
    let m = get(addr, "/metrics").text();
    assert!(m.contains("weaver_compute_requests_total{op=\"echo\",outcome=\"ok\"} 1\n"), "{m}");
    assert!(
        m.contains("weaver_compute_requests_total{op=\"nosuchop\",outcome=\"unknown_op\"} 1\n"),
        "{m}"
    );
    assert!(m.contains("weaver_compute_request_duration_seconds_count 1\n"), "{m}");
    let ok = wait_for(LIMIT, || {
        get(addr, "/metrics")
            .text()
            .contains("weaver_process_last_exit_code{instance=\"once\",process=\"once\"} 3\n")
    });
    assert!(ok, "{}", get(addr, "/metrics").text());
    let m = get(addr, "/metrics").body;
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(&m).unwrap();
    let out = util::wait_output(p, LIMIT);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {out:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_real_prometheus_scrapes_weaver_up() {
    if !tool("prometheus", "prometheus") {
        return;
    }
    let (env, addr) = daemon("");
    wait_status(&env, addr, "/health", 200);
    let dir = env.tmp.path().join("prom");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: weaver\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    // Another process may take the port between our probe and its bind:
    // try a few.
    let mut server = None;
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        env.track(child.id());
        let paddr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = wait_for(LIMIT, || {
            child.try_wait().unwrap().is_some() || TcpStream::connect(paddr).is_ok()
        });
        if up && child.try_wait().unwrap().is_none() {
            server = Some((child, paddr));
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let (mut child, paddr) = server.expect("prometheus did not start on any of 5 ports");
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(60), || {
        let r = get(paddr, "/api/v1/query?query=weaver_up");
        last = r.text();
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        v["data"]["result"][0]["value"][1] == "1"
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "prometheus never read weaver_up = 1; last answer: {last}");
}

#[test]
fn ls_lists_two_daemons_and_prunes_a_sigkilled_one() {
    let state = tempfile::Builder::new().prefix("wvs").tempdir_in("/tmp").unwrap();
    let st = state.path().to_str().unwrap();
    let a = TestEnv::new().env("WEAVER_STATE_DIR", st);
    let b = TestEnv::new().env("WEAVER_STATE_DIR", st);
    a.ok(&["--http", "127.0.0.1:0", "status", "--wait"]);
    b.ok(&["status", "--wait"]);
    let (pa, pb) = (a.daemon_pid().unwrap(), b.daemon_pid().unwrap());
    a.track(a.compute_pid());
    b.track(b.compute_pid());
    let ls = |env: &TestEnv| -> Vec<Value> {
        serde_json::from_str::<Value>(&env.ok(&["ls", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let rows = ls(&a);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row_a = rows.iter().find(|r| r["pid"] == pa).expect("a listed");
    let row_b = rows.iter().find(|r| r["pid"] == pb).expect("b listed");
    assert_eq!(row_a["runtime_dir"], a.rt.display().to_string());
    assert_eq!(row_b["runtime_dir"], b.rt.display().to_string());
    assert!(row_a["http"].as_str().unwrap().starts_with("127.0.0.1:"), "{row_a}");
    assert_eq!(row_b["http"], Value::Null);
    assert!(row_a["start_time"].as_u64().is_some() && row_a["started_at_ms"].as_u64().is_some());
    let text = b.ok(&["ls"]);
    assert!(text.contains(&pa.to_string()) && text.contains(&b.rt.display().to_string()), "{text}");
    // SIGKILL leaves a's entry; the next ls prunes it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pa as i32), nix::sys::signal::SIGKILL)
        .unwrap();
    assert!(wait_for(LIMIT, || !weaver::pidfile::alive(pa)));
    assert!(state.path().join("daemons").join(format!("{pa}.json")).exists());
    let rows = ls(&b);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["pid"], pb);
    assert!(!state.path().join("daemons").join(format!("{pa}.json")).exists());
    // A daemon that stops removes its own entry.
    b.ok(&["shutdown"]);
    assert!(!state.path().join("daemons").join(format!("{pb}.json")).exists());
    assert_eq!(b.ok(&["ls"]), "no weaver daemon is running\n");
}

#[test]
fn a_remote_or_taken_address_is_refused_with_what_to_do() {
    let env = TestEnv::new();
    let out = env.run(&["--http", "0.0.0.0:0", "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a loopback address") && err.contains("allow_remote"), "{err}");
    assert!(env.daemon_pid().is_none(), "no daemon started");
    let out = env.run(&["--http", "localhost", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an address and port"));
    // A port another program holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = env.run(&["--http", &addr, "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("cannot listen for HTTP on {addr}")), "{err}");
    assert!(env.daemon_pid().is_none());
    // `health` never starts a daemon: none runs, unhealthy.
    let out = env.run(&["health"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"), "{out:?}");
    assert!(env.daemon_pid().is_none());
}
