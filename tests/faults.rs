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
    assert!(
        wait_for(Duration::from_secs(5), || !pidfile::alive(old)),
        "the hung compute was killed"
    );
    let s = env.status();
    assert_eq!(s["compute"]["state"], "ready", "{s}");
    assert_ne!(s["compute"]["pid"].as_u64(), Some(old as u64), "a new compute serves");
    assert_eq!(s["compute"]["hangs"], 1, "{s}");
    let last = s["compute"]["last_exit"].as_str().unwrap_or_default();
    assert!(last.contains("hung"), "status says how the last one ended: {last}");
    assert!(env.ok(&["status"]).contains("after it hung"));
    assert_eq!(env.ok(&["compute", "echo", "--data", "again"]), "again");
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64
}

fn set_nofile(pid: u32, n: u64) {
    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: prlimit reads `lim` and writes nothing (old limit pointer null).
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn clients_queued_at_the_open_file_limit_are_served_once_fds_free() {
    let env = TestEnv::new();
    env.status();
    let pid = env.daemon_pid().unwrap();
    set_nofile(pid, open_fds(pid) + 20);
    // More connections than the daemon has fds for: some are accepted,
    // the rest wait in the listen queue.
    let held: Vec<_> = (0..40).map(|_| env.raw()).collect();
    assert!(
        wait_for(Duration::from_secs(5), || env.log().contains("Too many open files")),
        "the daemon met its limit:\n{}",
        env.log()
    );
    // This one is queued for sure: the daemon has no fd to accept it with.
    let mut late = env.raw();
    drop(held);
    // Once fds free it is served: its handshake is answered in time.
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hs = weaver::protocol::encode(&weaver::protocol::Handshake::new(false));
    weaver::stream::write_control(&mut late, &hs, &[]).unwrap();
    let reply = weaver::stream::read_frame(&mut weaver::frame::Decoder::new(), &mut late);
    assert!(
        matches!(reply, Ok(Some(_))),
        "the queued client got its handshake: {reply:?}\nlog:\n{}",
        env.log()
    );
    let out = env.run(&["--no-start", "status"]);
    assert!(out.status.success(), "and the daemon serves new clients");
    assert!(env.log().contains("accepting clients again"));
}

/// The file at `p` (device, inode), if any.
fn identity(p: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[test]
fn a_removed_control_socket_is_bound_again() {
    let env = TestEnv::new();
    env.status();
    let pid = env.daemon_pid().unwrap();
    let sock = env.path("control.sock");
    let before = identity(&sock).unwrap();
    std::fs::remove_file(&sock).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || identity(&sock).is_some_and(|i| i != before)),
        "control.sock came back"
    );
    assert!(env.log().contains("bound it again"));
    let s = env.status();
    assert_eq!(s["daemon"]["pid"], pid, "the same daemon answers");
}

#[test]
fn a_replaced_control_socket_is_taken_back() {
    let env = TestEnv::new();
    env.status();
    let pid = env.daemon_pid().unwrap();
    let sock = env.path("control.sock");
    std::fs::remove_file(&sock).unwrap();
    // Someone else's socket at our path (if the daemon was not faster).
    let foreign = std::os::unix::net::UnixListener::bind(&sock);
    let foreign_id = foreign.as_ref().ok().and_then(|_| identity(&sock));
    assert!(
        wait_for(Duration::from_secs(5), || {
            let now = identity(&sock);
            now.is_some() && now != foreign_id && env.log().contains("bound it again")
        }),
        "the daemon's socket is back at the path"
    );
    assert_eq!(env.status()["daemon"]["pid"], pid);
    drop(foreign);
}

#[test]
fn a_removed_compute_socket_is_bound_again_so_compute_restarts() {
    let env = TestEnv::new();
    let old = env.compute_pid();
    let sock = env.path("compute.sock");
    let before = identity(&sock).unwrap();
    std::fs::remove_file(&sock).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || identity(&sock).is_some_and(|i| i != before)),
        "compute.sock came back"
    );
    signal(old, Signal::SIGKILL);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let s = env.status();
            s["compute"]["state"] == "ready" && s["compute"]["pid"].as_u64() != Some(old as u64)
        }),
        "a new compute connected:\n{}",
        env.log()
    );
    assert_eq!(env.ok(&["compute", "echo", "--data", "x"]), "x");
}

#[test]
fn sigusr1_and_sigusr2_do_not_kill_the_daemon() {
    let env = TestEnv::new();
    env.status();
    let pid = env.daemon_pid().unwrap();
    signal(pid, Signal::SIGUSR2);
    signal(pid, Signal::SIGUSR1);
    assert!(
        wait_for(Duration::from_secs(5), || env.log().contains("SIGUSR1")
            && env.log().contains("SIGUSR2")),
        "both were received:\n{}",
        env.log()
    );
    assert!(pidfile::alive(pid));
    assert_eq!(env.status()["daemon"]["pid"], pid);
    assert!(env.path("control.sock").exists() && env.path("weaver.pid").exists());
}
