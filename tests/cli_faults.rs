//! The command line against daemons that fail: one that accepts nothing or
//! never answers, one whose socket was removed, one that is exiting, a
//! closed stdout, an oversized input. Real processes, each case in its own
//! runtime dir; every wait has a deadline.
//!
//! Some cases need a "daemon" that misbehaves on purpose. It is this test
//! executable run again as [`fake_daemon_process`] with the mode in
//! [`FAKE_MODE`]: it holds the daemon lock, writes the pid file and binds
//! the control socket like a daemon, then does what its mode says.

mod util;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::*;
use weaver::client::DEADLINE_ENV;
use weaver::pidfile::{self, PidRecord};
use weaver::protocol::{self, Handshake};
use weaver::runtime_dir::{self, RuntimeDir};
use weaver::{frame, wire};

/// The fake daemon's mode; set only in the fake's own process.
const FAKE_MODE: &str = "WEAVER_TEST_FAKE_DAEMON";
/// The fake daemon's runtime dir.
const FAKE_DIR: &str = "WEAVER_TEST_FAKE_DIR";
/// How long a fake that exits on its own stays after its cue.
const LINGER: Duration = Duration::from_millis(700);
/// The most a fake lives, should its test never end it.
const FAKE_LIFETIME: Duration = Duration::from_secs(60);
/// The client deadline the cases with a misbehaving daemon run under.
const DEADLINE_MS: &str = "300";
/// Upper bound on a command that must give up at its deadline (300 ms; a
/// few of them in a row, on a loaded machine).
const GIVES_UP_WITHIN: Duration = Duration::from_secs(5);
/// Upper bound on one command in these tests.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);

/// What the fake daemon does once it holds the lock.
///
/// - `mute`: binds the socket, never accepts.
/// - `deaf`: accepts and answers handshakes, then never answers anything.
/// - `linger`: answers one handshake, closes that connection, and exits
///   [`LINGER`] later (what a daemon does after `shutdown`, slowed down).
/// - `exiting`: binds no socket and exits [`LINGER`] after it starts (a
///   daemon on its way out: lock held, socket gone).
#[test]
fn fake_daemon_process() {
    // In an ordinary run this is a test that does nothing.
    let Ok(mode) = std::env::var(FAKE_MODE) else { return };
    let dir = std::env::var_os(FAKE_DIR).expect("the fake needs its runtime dir");
    fake_daemon(&mode, Path::new(&dir));
    std::process::exit(0);
}

fn fake_daemon(mode: &str, dir: &Path) {
    // SAFETY: plain prctl: die with the test thread that started us.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let dir = RuntimeDir::open(dir).unwrap();
    let lock = runtime_dir::open_private(&dir.daemon_lock(), false).unwrap();
    let _lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock).unwrap();
    let listener = (mode != "exiting").then(|| UnixListener::bind(dir.control_socket()).unwrap());
    // Last, so that a live pid file means the rest is in place.
    pidfile::write(&dir.pid_file(), PidRecord::of(std::process::id()).unwrap()).unwrap();
    match (mode, listener) {
        ("mute", Some(_l)) => std::thread::sleep(FAKE_LIFETIME),
        ("deaf", Some(l)) => {
            let mut conns = Vec::new();
            for s in l.incoming() {
                let mut s = s.unwrap();
                answer_handshake(&mut s);
                // Kept open, never answered.
                conns.push(s);
            }
        }
        ("linger", Some(l)) => {
            let (mut s, _) = l.accept().unwrap();
            answer_handshake(&mut s);
            drop(s);
            std::thread::sleep(LINGER);
        }
        ("exiting", None) => std::thread::sleep(LINGER),
        _ => panic!("unknown fake daemon mode {mode}"),
    }
    let _ = std::fs::remove_file(dir.control_socket());
    let _ = std::fs::remove_file(dir.pid_file());
}

fn answer_handshake(s: &mut UnixStream) {
    s.set_read_timeout(Some(FAKE_LIFETIME)).unwrap();
    let _ = weaver::stream::read_frame(&mut frame::Decoder::new(), s).unwrap();
    let hs = protocol::encode(&Handshake::new(false));
    weaver::stream::write_control(s, &hs, &[]).unwrap();
}

/// A fake daemon in its own process.
struct Fake {
    child: Child,
}

impl Fake {
    /// Start one on `env`'s runtime dir; returns once it holds the lock and
    /// has written its pid file.
    fn start(env: &TestEnv, mode: &str) -> Fake {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["fake_daemon_process", "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(FAKE_MODE, mode)
            .env(FAKE_DIR, &env.rt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        env.track(pid);
        let pid_file = env.path("weaver.pid");
        assert!(
            wait_for(Duration::from_secs(10), || pidfile::live_pid(&pid_file) == Some(pid)),
            "the fake daemon did not start"
        );
        Fake { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (at most `limit`) for it to exit; true if it did.
    fn exited_within(&mut self, limit: Duration) -> bool {
        wait_for(limit, || self.child.try_wait().unwrap().is_some())
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run weaver with `args` (at most [`COMMAND_LIMIT`]); also how long it took.
fn run_timed(env: &TestEnv, args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let child = env.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = wait_output(child, COMMAND_LIMIT);
    (out, t.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// True if nobody holds the daemon lock of `env` (checked by taking it).
fn lock_is_free(env: &TestEnv) -> bool {
    let f = runtime_dir::open_private(&env.path("weaver.lock"), false).unwrap();
    Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok()
}

/// Daemon processes serving `env`'s runtime dir.
fn daemons(env: &TestEnv) -> Vec<u32> {
    processes_mentioning(&[env.rt.to_str().unwrap(), "--foreground"])
}

fn signal(pid: u32, s: Signal) {
    kill(Pid::from_raw(pid as i32), s).unwrap();
}

#[test]
fn a_daemon_that_never_accepts_is_reported_within_the_deadline_and_shutdown_stops_it() {
    let env = TestEnv::new().env(DEADLINE_ENV, DEADLINE_MS);
    let mut fake = Fake::start(&env, "mute");
    let named = format!("the weaver daemon (pid {}) is not responding", fake.pid());
    for args in [&["--no-start", "status"][..], &["status"], &["ps"]] {
        let (out, took) = run_timed(&env, args);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {}", stderr(&out));
        let msg = stderr(&out);
        assert!(msg.contains(&named) && msg.contains("handshake"), "{args:?}: {msg}");
        assert!(took < GIVES_UP_WITHIN, "{args:?} took {took:?}");
    }
    // Never two daemons: none was started beside it.
    assert_eq!(daemons(&env), Vec::<u32>::new());
    // shutdown cannot ask it, so it stops it by signal.
    let (out, took) = run_timed(&env, &["shutdown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("pid {}) stopped", fake.pid())), "{}", stdout(&out));
    assert!(stderr(&out).contains("SIGTERM"), "{}", stderr(&out));
    assert!(took < GIVES_UP_WITHIN, "shutdown took {took:?}");
    assert!(fake.exited_within(Duration::from_secs(2)));
}

#[test]
fn a_daemon_that_stops_answering_is_reported_and_a_long_request_keeps_waiting() {
    let env = TestEnv::new().env(DEADLINE_ENV, DEADLINE_MS);
    let fake = Fake::start(&env, "deaf");
    let named = format!("the weaver daemon (pid {}) is not responding", fake.pid());
    for args in [&["--no-start", "status"][..], &["--no-start", "events"]] {
        let (out, took) = run_timed(&env, args);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(&named), "{args:?}: {}", stderr(&out));
        assert!(took < GIVES_UP_WITHIN, "{args:?} took {took:?}");
    }
    drop(fake);

    // A real daemon answers pings: a request far longer than the deadline
    // completes, and a quiet stream goes on.
    let env = TestEnv::new().env(DEADLINE_ENV, DEADLINE_MS);
    env.status();
    let (out, took) = run_timed(&env, &["compute", "sleep", "ms=2000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(took >= Duration::from_millis(2000));
    let mut events =
        env.cmd().arg("events").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    assert!(events.try_wait().unwrap().is_none(), "a quiet stream ended");
    // A stopped daemon answers no ping: the stream ends with the error.
    let daemon = env.daemon_pid().unwrap();
    signal(daemon, Signal::SIGSTOP);
    let ended = wait_for(GIVES_UP_WITHIN, || events.try_wait().unwrap().is_some());
    signal(daemon, Signal::SIGCONT);
    if !ended {
        let _ = events.kill();
    }
    let out = wait_output(events, COMMAND_LIMIT);
    assert!(ended, "events did not notice the stopped daemon");
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("(pid {daemon}) is not responding")),
        "{}",
        stderr(&out)
    );
    env.ok(&["shutdown"]);
}

#[test]
fn a_daemon_whose_socket_was_removed_is_named_and_shutdown_stops_it() {
    let env = TestEnv::new().env(DEADLINE_ENV, DEADLINE_MS);
    env.status();
    let daemon = env.daemon_pid().unwrap();
    // Stopped, so that it cannot put its socket back either.
    signal(daemon, Signal::SIGSTOP);
    std::fs::remove_file(env.path("control.sock")).unwrap();
    for args in [&["--no-start", "status"][..], &["status"]] {
        let (out, took) = run_timed(&env, args);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {}", stderr(&out));
        let msg = stderr(&out);
        assert!(msg.contains(&format!("(pid {daemon})")) && msg.contains("missing"), "{msg}");
        assert!(took < GIVES_UP_WITHIN, "{args:?} took {took:?}");
    }
    assert_eq!(daemons(&env), vec![daemon], "never two daemons");
    let (out, took) = run_timed(&env, &["shutdown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("pid {daemon}) stopped")), "{}", stdout(&out));
    assert!(took < GIVES_UP_WITHIN, "shutdown took {took:?}");
    // Gone when shutdown returned, with its lock free.
    assert!(!pidfile::alive(daemon), "the daemon outlived shutdown");
    assert!(lock_is_free(&env));
    assert_eq!(daemons(&env), Vec::<u32>::new());
    assert!(env.ok(&["shutdown"]).contains("no weaver daemon"));
}

#[test]
fn shutdown_returns_once_the_daemon_has_exited_and_released_its_lock() {
    let env = TestEnv::new();
    let mut fake = Fake::start(&env, "linger");
    let pid = fake.pid();
    let (out, took) = run_timed(&env, &["shutdown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The fake closed the connection LINGER before it exited.
    assert!(!pidfile::alive(pid), "shutdown returned while the daemon still ran");
    assert!(lock_is_free(&env), "shutdown returned while the lock was held");
    assert!(took >= LINGER, "{took:?}");
    assert!(fake.exited_within(Duration::from_secs(2)));

    // The race it closes: a start right after shutdown never finds the old
    // daemon still holding the lock.
    let env = TestEnv::new();
    env.ok(&["status"]);
    let t = Instant::now();
    for i in 0..200 {
        let out = env.run(&["shutdown"]);
        assert!(out.status.success(), "shutdown {i}: {}", stderr(&out));
        let out = env.run(&["status"]);
        assert!(out.status.success(), "status {i} after shutdown: {}\n{}", stderr(&out), env.log());
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "too slow: {i} rounds in {:?}",
            t.elapsed()
        );
    }
    env.ok(&["shutdown"]);
}

#[test]
fn a_start_waits_for_a_daemon_that_is_exiting() {
    let env = TestEnv::new();
    let mut fake = Fake::start(&env, "exiting");
    let old = fake.pid();
    // Lock held, no socket: neither an error nor a second daemon, but a
    // wait until it is gone, then a new daemon.
    let (out, took) = run_timed(&env, &["status", "--json"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), env.log());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new = s["daemon"]["pid"].as_u64().unwrap() as u32;
    env.track(new);
    assert_ne!(new, old);
    assert!(took < COMMAND_LIMIT);
    assert!(fake.exited_within(Duration::from_secs(2)));
    env.ok(&["shutdown"]);

    // Without starting one: the wait ends in "none is running".
    let env = TestEnv::new();
    let _fake = Fake::start(&env, "exiting");
    let (out, _) = run_timed(&env, &["--no-start", "status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no weaver daemon is running"), "{}", stderr(&out));
}

/// Run weaver with stdout a pipe whose reading end is already closed.
fn run_into_closed_pipe(env: &TestEnv, args: &[&str]) -> Output {
    let (rd, wr) = nix::unistd::pipe().unwrap();
    drop(rd);
    let child =
        env.cmd().args(args).stdout(Stdio::from(wr)).stderr(Stdio::piped()).spawn().unwrap();
    wait_output(child, COMMAND_LIMIT)
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let env = TestEnv::new();
    env.status();
    for args in
        [&["status"][..], &["status", "--json"], &["ps"], &["compute", "echo", "--data", "x"]]
    {
        let out = run_into_closed_pipe(&env, args);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}: nothing on stderr");
    }
    env.ok(&["shutdown"]);
}

#[test]
fn an_input_over_the_inline_limit_goes_by_fd_from_a_file_and_from_stdin() {
    let env = TestEnv::new();
    env.status();
    let big = env.tmp.path().join("big");
    let mut f = std::fs::File::create(&big).unwrap();
    f.write_all(&vec![b'x'; wire::MAX_PAYLOAD + 1]).unwrap();
    drop(f);
    let out = env.run(&["compute", "echo", "--input", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), wire::MAX_PAYLOAD + 1);
    let input = std::fs::File::open(&big).unwrap();
    let child = env
        .cmd()
        .args(["compute", "echo", "--input", "-"])
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, COMMAND_LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.len() == wire::MAX_PAYLOAD + 1 && out.stdout.iter().all(|&b| b == b'x'));
    env.ok(&["shutdown"]);
}
