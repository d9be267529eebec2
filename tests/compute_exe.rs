//! The real `compute-daemon` executable end to end: the test binds the
//! socket first (as weaver does), spawns the program with a stdin pipe it
//! holds, checks who connected, reads HELLO, serves a request, then ends it
//! each way it can end. Every spawned process is killed on failure.
//! `WEAVER_COMPUTE_DAEMON=PATH` runs the same tests against another build.

mod common_compute;

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use weaver::ffi;
use weaver::wire::{kind, op, status, Hello};

use common_compute::{describe, pid_alive, text, wait_until, ChildGuard, Peer};

/// The executable under test: the Cargo binary, or another build of the same
/// program named by `WEAVER_COMPUTE_DAEMON` (e.g. the plain C build,
/// `compute-daemon/build/compute-daemon` from `make -C compute-daemon`).
fn exe() -> PathBuf {
    std::env::var_os("WEAVER_COMPUTE_DAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_compute-daemon")))
}
/// The contract: the daemon is gone within 2 s of losing weaver.
const EXIT_WITHIN: Duration = Duration::from_secs(2);

/// A running compute-daemon connected to the test.
struct Running {
    guard: ChildGuard,
    peer: Peer,
    listener: Option<UnixListener>,
    hello: Hello,
    _dir: tempfile::TempDir,
}

/// Accept one connection within `within`, failing early if `guard` exits.
fn accept(listener: &UnixListener, guard: &mut ChildGuard, within: Duration) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let mut got = None;
    let ok = wait_until(within, || {
        match listener.accept() {
            Ok((s, _)) => got = Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        got.is_some() || guard.child().try_wait().unwrap().is_some()
    });
    let stream = got.unwrap_or_else(|| {
        let exited = guard.child().try_wait().unwrap();
        panic!(
            "compute-daemon did not connect (ok={ok}, exit status {exited:?}): {}",
            stderr_of(guard)
        )
    });
    stream.set_nonblocking(false).unwrap();
    stream
}

fn stderr_of(guard: &mut ChildGuard) -> String {
    let mut s = String::new();
    if let Some(mut e) = guard.child().stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Bind, spawn with `stdin`, accept, check the peer's pid, read HELLO and
/// serve one echo.
fn start_with(stdin: Stdio) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compute.sock");
    let listener = UnixListener::bind(&path).unwrap(); // the socket exists first
    let child = Command::new(exe())
        .arg("--socket-path")
        .arg(&path)
        .args(["--workers", "2"])
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn compute-daemon");
    let mut guard = ChildGuard::new(child);
    let stream = accept(&listener, &mut guard, Duration::from_secs(10));

    let cred = getsockopt(&stream, PeerCredentials).expect("SO_PEERCRED");
    assert_eq!(cred.pid(), guard.pid() as i32, "the peer is the process we spawned");
    // SAFETY: getuid has no preconditions.
    assert_eq!(cred.uid(), unsafe { libc::getuid() });

    let mut peer = Peer::new(stream);
    let f = peer.recv();
    assert_eq!(f.header.kind, kind::HELLO, "{}", describe(&f));
    let hello = Hello::parse(&f.payload).expect("valid HELLO");
    assert_eq!(u32::from(hello.version), ffi::WC_PROTOCOL_VERSION);
    assert_eq!(hello.pid, guard.pid());
    assert_eq!(hello.workers, 2);
    let names: Vec<&str> = hello.ops.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["echo", "render", "sleep", "info"]);

    peer.send(kind::REQUEST, 1, op::ECHO, b"first light");
    let f = peer.response(1);
    assert_eq!((f.header.code, f.payload.as_slice()), (status::OK, &b"first light"[..]));
    Running { guard, peer, listener: Some(listener), hello, _dir: dir }
}

fn start() -> Running {
    start_with(Stdio::piped())
}

fn assert_exit_ok(status: Option<ExitStatus>, what: &str, took: Duration) {
    let status =
        status.unwrap_or_else(|| panic!("compute-daemon still running {took:?} after {what}"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after {what}: {status:?} (signal {:?})",
        status.signal()
    );
    assert!(took < EXIT_WITHIN, "exit after {what} took {took:?}");
}

/// Run the executable to completion with `args`, with a 10 s cap.
fn run_to_exit(args: &[&str], env_remove: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(exe());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for k in env_remove {
        cmd.env_remove(k);
    }
    let mut guard = ChildGuard::new(cmd.spawn().unwrap());
    let status = guard.wait_exit(Duration::from_secs(10)).expect("exits on its own");
    let mut out = String::new();
    guard.child().stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let err = stderr_of(&mut guard);
    (status.code().expect("exited, not killed"), out, err)
}

#[test]
fn exits_0_within_2s_when_weaver_closes_the_connection() {
    let mut r = start();
    r.peer.send(kind::REQUEST, 2, op::SLEEP, b"ms=3600000"); // busy when it happens
    r.peer.send(kind::PING, 3, 0, b"");
    assert_eq!(r.peer.recv().header.kind, kind::PONG);
    let t0 = Instant::now();
    drop(r.listener.take());
    drop(r.peer);
    let status = r.guard.wait_exit(Duration::from_secs(5));
    assert_exit_ok(status, "the connection closed", t0.elapsed());
}

#[test]
fn exits_within_2s_when_its_stdin_pipe_closes() {
    let mut r = start();
    r.peer.send(kind::REQUEST, 2, op::SLEEP, b"ms=3600000");
    r.peer.send(kind::PING, 3, 0, b"");
    assert_eq!(r.peer.recv().header.kind, kind::PONG);
    let t0 = Instant::now();
    drop(r.guard.child().stdin.take()); // the socket stays open
    let status = r.guard.wait_exit(Duration::from_secs(5));
    assert_exit_ok(status, "stdin closed", t0.elapsed());
}

#[test]
fn sigterm_cancels_what_runs_and_exits_0() {
    let mut r = start();
    r.peer.send(kind::REQUEST, 2, op::SLEEP, b"ms=3600000");
    r.peer.send(kind::PING, 3, 0, b"");
    assert_eq!(r.peer.recv().header.kind, kind::PONG);
    let t0 = Instant::now();
    // SAFETY: plain kill(2) of the child we spawned.
    assert_eq!(unsafe { libc::kill(r.guard.pid() as i32, libc::SIGTERM) }, 0);
    let status = r.guard.wait_exit(Duration::from_secs(5));
    assert_exit_ok(status, "SIGTERM", t0.elapsed());
    let f = r.peer.response(2);
    assert_eq!(f.header.code, status::CANCELLED, "{}", describe(&f));
    assert!(r.peer.drain_to_eof().is_empty());
}

#[test]
fn shutdown_frame_cancels_and_exits_0() {
    let mut r = start();
    r.peer.send(kind::REQUEST, 2, op::SLEEP, b"ms=3600000");
    let t0 = Instant::now();
    r.peer.send(kind::SHUTDOWN, 0, 0, b"");
    let f = r.peer.response(2);
    assert_eq!(f.header.code, status::CANCELLED, "{}", describe(&f));
    assert!(r.peer.drain_to_eof().is_empty());
    let status = r.guard.wait_exit(Duration::from_secs(5));
    assert_exit_ok(status, "SHUTDOWN", t0.elapsed());
}

#[test]
fn a_broken_header_exits_with_the_protocol_code() {
    let mut r = start();
    r.peer.send_raw(&[0u8; 24]);
    let status = r.guard.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(status.code(), Some(ffi::WC_EXIT_PROTOCOL as i32));
    let err = stderr_of(&mut r.guard);
    assert!(err.starts_with("compute-daemon: ") && err.contains("magic"), "{err}");
}

#[test]
fn stdin_from_dev_null_is_not_a_lifeline() {
    let mut r = start_with(Stdio::null());
    // stdin has been at end of file all along: a request that spans 300 ms
    // is answered, and the daemon still runs after it.
    r.peer.send(kind::REQUEST, 3, op::SLEEP, b"ms=300");
    let f = r.peer.response(3);
    assert_eq!(f.header.code, status::OK, "{}", describe(&f));
    assert!(r.guard.child().try_wait().unwrap().is_none(), "still running with stdin = /dev/null");
    r.peer.send(kind::REQUEST, 2, op::INFO, b"");
    let f = r.peer.response(2);
    let info: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
    assert_eq!(info["pid"], u64::from(r.hello.pid));
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let t0 = Instant::now();
    drop(r.peer);
    let status = r.guard.wait_exit(Duration::from_secs(5));
    assert_exit_ok(status, "the connection closed", t0.elapsed());
}

#[test]
fn dies_with_its_parent() {
    // compute-daemon's parent is a shell that the test kills; the socket
    // and (the shell's) stdin stay open, so only the parent-death signal
    // can end it. The shell arms none: compute owns its parent-death signal.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compute.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let shell = Command::new("/bin/sh")
        .arg("-c")
        .arg("\"$0\" --socket-path \"$1\" --workers 1 & wait")
        .arg(exe())
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(shell);
    let stream = accept(&listener, &mut guard, Duration::from_secs(10));
    let pid = getsockopt(&stream, PeerCredentials).unwrap().pid();
    guard.extra_pids.push(pid);
    assert_ne!(pid, guard.pid() as i32, "compute-daemon runs under the shell");
    let mut peer = Peer::new(stream);
    assert_eq!(peer.recv().header.kind, kind::HELLO);

    let t0 = Instant::now();
    guard.child().kill().unwrap(); // SIGKILL the parent
    guard.child().wait().unwrap();
    let gone = wait_until(Duration::from_secs(5), || !pid_alive(pid));
    let took = t0.elapsed();
    assert!(gone, "compute-daemon {pid} outlived its parent");
    assert!(took < EXIT_WITHIN, "took {took:?}");
    assert!(peer.drain_to_eof().is_empty());
}

#[test]
fn a_missing_socket_exits_with_the_connect_code_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("absent.sock");
    let (code, _, err) = run_to_exit(&["--socket-path", path.to_str().unwrap()], &[]);
    assert_eq!(code, ffi::WC_EXIT_CONNECT as i32, "{err}");
    assert!(err.starts_with("compute-daemon: "), "{err}");
    assert!(err.contains(path.to_str().unwrap()) && err.contains("ENOENT"), "{err}");
    assert!(!path.exists(), "the daemon never creates the socket");
}

#[test]
fn without_socket_path_the_default_needs_xdg_runtime_dir() {
    let (code, _, err) = run_to_exit(&[], &["XDG_RUNTIME_DIR"]);
    assert_eq!(code, ffi::WC_EXIT_USAGE as i32, "{err}");
    assert!(err.contains("XDG_RUNTIME_DIR") && err.contains("--socket-path"), "{err}");

    // With it set, the default path is used (and does not exist here).
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(exe())
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(ffi::WC_EXIT_CONNECT as i32), "{err}");
    let want = Path::new(dir.path()).join("weaver/compute.sock");
    assert!(err.contains(want.to_str().unwrap()), "{err}");
}

#[test]
fn bad_arguments_exit_with_the_usage_code() {
    for args in [
        &["--bogus"][..],
        &["--workers"],
        &["--workers", "many"],
        &["--workers", "257"],
        &["--socket-path", "/x", "stray"],
    ] {
        let (code, _, err) = run_to_exit(args, &[]);
        assert_eq!(code, ffi::WC_EXIT_USAGE as i32, "{args:?}: {err}");
        assert!(err.starts_with("compute-daemon: ") && err.contains("--help"), "{args:?}: {err}");
    }
}

#[test]
fn help_and_version_exit_0() {
    let (code, out, _) = run_to_exit(&["--help"], &[]);
    assert_eq!(code, 0);
    for w in ["--socket-path", "--workers", "stdin", "Exit status", "/dev/null"] {
        assert!(out.contains(w), "--help mentions {w}: {out}");
    }
    // The version is the crate's: build.rs and the Makefile both take it
    // from Cargo.toml.
    let (code, out, _) = run_to_exit(&["--version"], &[]);
    assert_eq!(code, 0);
    let want = format!(
        "compute-daemon {} (protocol {})\n",
        env!("CARGO_PKG_VERSION"),
        ffi::WC_PROTOCOL_VERSION
    );
    assert_eq!(out, want);
}

#[test]
fn bad_parameters_do_not_end_the_executable() {
    let mut r = start();
    r.peer.send(kind::REQUEST, 2, op::RENDER, b"width=huge");
    let f = r.peer.response(2);
    assert_eq!(f.header.code, status::BAD_REQUEST);
    assert!(text(&f).contains("width"), "{}", text(&f));
    r.peer.send(kind::REQUEST, 3, 77, b"");
    assert_eq!(r.peer.response(3).header.code, status::UNKNOWN_OP);
    r.peer.send(kind::REQUEST, 4, op::RENDER, b"width=16 height=16");
    let f = r.peer.response(4);
    assert_eq!(f.header.code, status::OK);
    assert!(f.payload.starts_with(b"P6\n16 16\n255\n"));
    let t0 = Instant::now();
    drop(r.peer);
    let status = r.guard.wait_exit(Duration::from_secs(5));
    assert_exit_ok(status, "the connection closed", t0.elapsed());
}
