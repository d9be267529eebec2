//! The fault matrix, daemon side: each case with real weaver and compute
//! processes in its own runtime dir, and proof that nothing is left behind.

mod util;

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::{wait_for, wait_output, TestEnv};
use weaver::pidfile;

fn signal(pid: u32, s: Signal) {
    kill(Pid::from_raw(pid as i32), s).unwrap();
}

/// A test env whose daemon reads `toml` as its weaver.toml.
fn with_config(toml: &str) -> TestEnv {
    let env = TestEnv::new();
    let path = env.tmp.path().join("weaver.toml");
    std::fs::write(&path, toml).unwrap();
    env.env("WEAVER_CONFIG", path.to_str().unwrap())
}

#[test]
fn a_hung_compute_is_found_by_ping_killed_and_restarted() {
    let env = with_config("[compute]\nping_interval = \"100ms\"\nping_timeout = \"300ms\"\n");
    let old = env.compute_pid();
    // A request without --timeout, in flight when compute stops answering.
    let waiting = env
        .cmd()
        .args(["compute", "sleep", "ms=60000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || env.status()["compute"]["in_flight"] == 1),
        "the sleep request reached compute"
    );
    let t0 = Instant::now();
    signal(old, Signal::SIGSTOP);
    let out = wait_output(waiting, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "compute down: {stderr}");
    assert!(stderr.contains("hung"), "the reply says compute hung: {stderr}");
    assert!(t0.elapsed() < Duration::from_secs(5), "found within interval + timeout, not never");
    assert!(wait_for(Duration::from_secs(5), || !pidfile::alive(old)), "the hung compute was killed");
    let s = env.status();
    assert_eq!(s["compute"]["state"], "ready", "{s}");
    assert_ne!(s["compute"]["pid"].as_u64(), Some(old as u64), "a new compute serves");
    assert_eq!(s["compute"]["hangs"], 1, "{s}");
    let last = s["compute"]["last_exit"].as_str().unwrap_or_default();
    assert!(last.contains("hung"), "status says how the last one ended: {last}");
    assert!(env.ok(&["status"]).contains("after it hung"));
    assert_eq!(env.ok(&["compute", "echo", "--data", "again"]), "again");
}
