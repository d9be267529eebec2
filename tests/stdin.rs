//! Input to supervised processes, end to end: a real daemon runs real
//! programs with `stdin = "pipe"` (cat, a shell line echo, a slow reader, a
//! process that never reads); `weaver send` and `weaver attach` (driven
//! through a pseudo-terminal) write to them. Each test kills (by pid)
//! everything it saw started.

mod util;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use util::{wait_for, wait_output, TestEnv};

const LIMIT: Duration = Duration::from_secs(30);

struct Sup {
    env: TestEnv,
}

fn sup(toml: &str) -> Sup {
    let env = TestEnv::new();
    let cfg = env.tmp.path().join("weaver.toml");
    std::fs::write(&cfg, toml).unwrap();
    let env = env.env("WEAVER_CONFIG", cfg.to_str().unwrap());
    Sup { env }
}

impl Sup {
    fn file(&self, name: &str) -> PathBuf {
        self.env.tmp.path().join(name)
    }

    fn row(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.env.ok(&["ps", "--json"])).unwrap();
        for r in v.as_array().unwrap() {
            if let Some(p) = r["pid"].as_u64() {
                self.env.track(p as u32);
            }
        }
        v.as_array().unwrap().iter().find(|r| r["name"] == name).cloned().unwrap()
    }

    fn wait_row(&self, name: &str, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let ok = wait_for(LIMIT, || {
            last = self.row(name);
            f(&last)
        });
        assert!(ok, "{name} never got there; last row: {last}\nlog:\n{}", self.env.log());
        last
    }

    fn wait_state(&self, name: &str, state: &str) -> Value {
        self.wait_row(name, |r| r["state"] == state)
    }

    fn logs(&self, name: &str) -> Vec<String> {
        self.env.ok(&["logs", name]).lines().map(str::to_string).collect()
    }

    fn wait_logs(&self, name: &str, f: impl Fn(&[String]) -> bool) -> Vec<String> {
        let mut last = Vec::new();
        let ok = wait_for(LIMIT, || {
            last = self.logs(name);
            f(&last)
        });
        assert!(ok, "{name}'s output never got there: {last:?}\nlog:\n{}", self.env.log());
        last
    }

    /// `weaver send NAME ARGS...`: (exit code, stdout, stderr).
    fn send(&self, name: &str, args: &[&str]) -> (i32, String, String) {
        let mut a = vec!["send", name];
        a.extend_from_slice(args);
        let out = self.env.run(&a);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn send_ok(&self, name: &str, args: &[&str]) -> String {
        let (code, out, err) = self.send(name, args);
        assert_eq!(code, 0, "send {name} {args:?}: {err}\nlog:\n{}", self.env.log());
        out
    }

    /// A running `weaver ...` child, tracked for cleanup.
    fn spawn(&self, args: &[&str], stdin: Stdio) -> Child {
        let c = self
            .env
            .cmd()
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.env.track(c.id());
        c
    }
}

/// Lines a reader sends through the channel, as they come.
fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait for a line containing `needle`; the lines seen are kept in `seen`.
fn expect_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) {
    let end = std::time::Instant::now() + LIMIT;
    while !seen.iter().any(|l| l.contains(needle)) {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line with {needle:?}; seen: {seen:?}"),
        }
    }
}

const CAT: &str = r#"
[[process]]
name = "cat"
command = ["cat"]
stdin = "pipe"
start_duration = "100ms"
restart_interval = "100ms"
"#;

#[test]
fn cat_and_a_line_echo_script_round_trip_through_send_and_logs() {
    let s = sup(&format!(
        "{CAT}\n[[process]]\nname = \"echo\"\nshell = true\ncommand = 'while read -r l; do echo \"echo: $l\"; done'\nstdin = \"pipe\"\n"
    ));
    s.wait_state("cat", "running");
    s.wait_state("echo", "running");
    let out = s.send_ok("cat", &["--data", "hello\n", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["instance"].as_str(), v["bytes"].as_u64(), v["closed"].as_bool()),
        (Some("cat"), Some(6), Some(false))
    );
    s.wait_logs("cat", |l| l == ["hello"]);
    let input = s.file("lines");
    std::fs::write(&input, "one\ntwo\nthree\n").unwrap();
    s.send_ok("echo", &["--input", input.to_str().unwrap()]);
    s.wait_logs("echo", |l| l == ["echo: one", "echo: two", "echo: three"]);
    // Input from stdin too, sent as it comes: a line is in before the
    // producer writes the next.
    let mut c = s.spawn(&["send", "echo", "--input", "-"], Stdio::piped());
    let mut producer = c.stdin.take().unwrap();
    producer.write_all(b"four\n").unwrap();
    s.wait_logs("echo", |l| l.last().map(String::as_str) == Some("echo: four"));
    assert!(c.try_wait().unwrap().is_none(), "send goes on until its input ends");
    producer.write_all(b"five\n").unwrap();
    s.wait_logs("echo", |l| l.last().map(String::as_str) == Some("echo: five"));
    drop(producer);
    let out = wait_output(c, LIMIT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // What cannot be sent is a clear error.
    let (code, _, err) = s.send("nope", &["--data", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("no process named \"nope\""), "{err}");
    let (code, _, err) = s.send("cat", &[]);
    assert_eq!(code, 2, "nothing to send is a usage error");
    assert!(err.contains("nothing to send"), "{err}");
}

#[test]
fn a_process_without_a_pipe_is_a_clear_error() {
    let s = sup("[[process]]\nname = \"quiet\"\ncommand = [\"sleep\", \"1000\"]\n");
    s.wait_state("quiet", "running");
    let (code, _, err) = s.send("quiet", &["--data", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("quiet takes no input: its stdin is /dev/null"), "{err}");
    assert!(err.contains("stdin = \"pipe\""), "{err}");
    // The process went on untouched.
    assert_eq!(s.row("quiet")["state"], "running");
}

#[test]
fn close_gives_eof_the_process_exits_0_and_stdin_closed_is_an_event() {
    let s = sup("[[process]]\nname = \"wc\"\nshell = true\ncommand = 'wc -c'\nstdin = \"pipe\"\nauto_restart = false\n");
    s.wait_state("wc", "running");
    let mut events = s.spawn(&["events", "--json", "--history", "64", "wc"], Stdio::null());
    let rx = lines_of(events.stdout.take().unwrap());
    s.send_ok("wc", &["--data", "12345", "--close"]);
    s.wait_state("wc", "exited(0)");
    s.wait_logs("wc", |l| l.iter().any(|x| x.trim() == "5"));
    let mut seen = Vec::new();
    expect_line(&rx, &mut seen, "\"stdin_closed\"");
    let ev: Value =
        serde_json::from_str(seen.iter().find(|l| l.contains("stdin_closed")).unwrap()).unwrap();
    assert_eq!(ev["detail"], "closed by weaver send --close");
    expect_line(&rx, &mut seen, "\"exited\"");
    // A stopped process takes no input; it is not kept for later.
    let (code, _, err) = s.send("wc", &["--data", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("wc is not running (exited(0))"), "{err}");
    let _ = events.kill();
    let _ = events.wait();
}

#[test]
fn send_after_a_restart_reaches_the_new_run_and_nothing_sent_while_down() {
    let s = sup(CAT);
    s.wait_state("cat", "running");
    s.send_ok("cat", &["--data", "first run\n"]);
    s.wait_logs("cat", |l| l == ["first run"]);
    s.env.ok(&["stop", "cat"]);
    s.wait_state("cat", "stopped");
    let (code, _, err) = s.send("cat", &["--data", "while down\n"]);
    assert_eq!(code, 1);
    assert!(err.contains("not running (stopped)"), "{err}");
    assert!(err.contains("input is not kept for a later run"), "{err}");
    s.env.ok(&["start", "cat"]);
    s.wait_state("cat", "running");
    s.send_ok("cat", &["--data", "second run\n"]);
    s.wait_logs("cat", |l| l == ["first run", "second run"]);
    // A run ended by --close restarts with a fresh, open stdin.
    let pid = s.row("cat")["pid"].as_u64();
    s.send_ok("cat", &["--close"]);
    s.wait_row("cat", |r| r["state"] == "running" && r["pid"].as_u64() != pid);
    s.send_ok("cat", &["--data", "third run\n"]);
    s.wait_logs("cat", |l| l == ["first run", "second run", "third run"]);
    // A closed stdin of the running process is a clear error.
    let slow = sup("[[process]]\nname = \"hold\"\nshell = true\ncommand = 'cat; sleep 1000'\nstdin = \"pipe\"\n");
    slow.wait_state("hold", "running");
    slow.send_ok("hold", &["--close"]);
    let (code, _, err) = slow.send("hold", &["--data", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("hold's stdin is closed (closed by weaver send --close)"), "{err}");
}

/// Deterministic bytes, so that order and completeness show.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sixty_four_mib_to_a_slow_reader_arrive_whole_in_order_with_bounded_memory() {
    let s = sup("");
    let out = s.file("received");
    // Reads 1 MiB at a time with a pause after each: far slower than
    // weaver writes.
    let toml = format!(
        "[[process]]\nname = \"slow\"\nshell = true\nstdin = \"pipe\"\nauto_restart = false\ncommand = 'while :; do n=$(dd bs=1048576 count=1 iflag=fullblock 2>/dev/null | tee -a {} | wc -c); [ \"$n\" -gt 0 ] || break; sleep 0.02; done; echo reader-done'\n",
        out.display()
    );
    std::fs::write(s.env.tmp.path().join("weaver.toml"), toml).unwrap();
    s.wait_state("slow", "running");
    let daemon = s.env.daemon_pid().unwrap();
    let before = vm_kib(daemon, "VmRSS:");
    let data = pattern(64 << 20);
    let input = s.file("input");
    std::fs::write(&input, &data).unwrap();
    let sent = s.send_ok("slow", &["--input", input.to_str().unwrap(), "--close", "--json"]);
    let v: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(v["bytes"].as_u64(), Some(64 << 20));
    s.wait_state("slow", "exited(0)");
    s.wait_logs("slow", |l| l.iter().any(|x| x == "reader-done"));
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), data.len(), "nothing lost");
    assert!(got == data, "every byte in order");
    // The daemon held at most its bound per instance and one request at a
    // time: its peak is far below the 64 MiB that went through.
    let peak = vm_kib(daemon, "VmHWM:");
    eprintln!("daemon RSS before the 64 MiB send: {before} KiB; peak over its life: {peak} KiB");
    assert!(peak < before + 24 * 1024, "daemon peak RSS {peak} KiB (before: {before} KiB)");
}

#[test]
fn a_process_that_never_reads_makes_send_busy_and_the_daemon_keeps_serving() {
    let s =
        sup("[[process]]\nname = \"deaf\"\ncommand = [\"sleep\", \"1000\"]\nstdin = \"pipe\"\n");
    s.wait_state("deaf", "running");
    let input = s.file("big");
    std::fs::write(&input, pattern(3 << 20)).unwrap();
    // Several senders at once: the bound holds across them, each fails
    // busy at its deadline and says how much of its input went in.
    let senders: Vec<Child> = (0..4)
        .map(|_| {
            s.spawn(
                &["send", "deaf", "--input", input.to_str().unwrap(), "--timeout", "1500"],
                Stdio::null(),
            )
        })
        .collect();
    // Meanwhile the daemon answers.
    for _ in 0..5 {
        let v: Value = serde_json::from_str(&s.env.ok(&["status", "--json"])).unwrap();
        assert_eq!(v["protocol"], weaver::protocol::PROTOCOL_VERSION);
        assert_eq!(s.row("deaf")["state"], "running");
    }
    let mut written = 0u64;
    for c in senders {
        let out = wait_output(c, LIMIT);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(75), "busy: {err}");
        assert!(err.contains("deaf did not read its stdin in time"), "{err}");
        assert!(err.contains("1048576 bytes"), "the bound is named: {err}");
        // "N of its M bytes were written", or nothing.
        if let Some(i) = err.find(" of its ") {
            let n: String = err[..i].chars().rev().take_while(char::is_ascii_digit).collect();
            written += n.chars().rev().collect::<String>().parse::<u64>().unwrap();
        }
    }
    // What went in is what one pipe holds, no more: nothing was kept
    // beyond it for later.
    assert!(written > 0 && written <= 1 << 20, "written: {written}");
    assert_eq!(s.row("deaf")["state"], "running");
    s.env.ok(&["ps"]);
}

/// `weaver attach ARGS` on a new pseudo-terminal: the child, the master,
/// and the lines read from the master.
fn attach_on_pty(s: &Sup, args: &[&str]) -> (Child, std::fs::File, mpsc::Receiver<String>) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let mut a = vec!["attach"];
    a.extend_from_slice(args);
    let child = s
        .env
        .cmd()
        .args(&a)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    s.env.track(child.id());
    // The slave stays open here too, so reading the master never sees EOF
    // early; the terminal's state can be read from it.
    let master = std::fs::File::from(pty.master);
    let rx = lines_of(master.try_clone().unwrap());
    SLAVES.with(|v| v.borrow_mut().push(slave));
    (child, master, rx)
}

thread_local! {
    static SLAVES: std::cell::RefCell<Vec<OwnedFd>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn wait_exit(mut c: Child) -> std::process::ExitStatus {
    let mut st = None;
    assert!(wait_for(LIMIT, || {
        st = c.try_wait().unwrap();
        st.is_some()
    }));
    st.unwrap()
}

#[test]
fn attach_from_a_pty_types_lines_and_ctrl_d_closes_with_close_on_eof() {
    let s = sup(&format!("{CAT}auto_restart = false\n"));
    s.wait_state("cat", "running");
    s.send_ok("cat", &["--data", "before attach\n"]);
    s.wait_logs("cat", |l| l == ["before attach"]);
    let (child, mut master, rx) = attach_on_pty(&s, &["cat", "--close-on-eof"]);
    let mut seen = Vec::new();
    expect_line(&rx, &mut seen, "before attach");
    expect_line(&rx, &mut seen, "attached to cat");
    // The terminal is raw while attached: no canonical line editing.
    let slave_state =
        SLAVES.with(|v| nix::sys::termios::tcgetattr(v.borrow().last().unwrap().as_fd()).unwrap());
    assert!(!slave_state.local_flags.contains(nix::sys::termios::LocalFlags::ICANON));
    // A typing mistake, fixed with backspace, then Enter.
    master.write_all(b"hellp\x7fo\r").unwrap();
    s.wait_logs("cat", |l| l == ["before attach", "hello"]);
    // Ctrl-D on an empty line: the process's stdin closes, cat exits 0.
    master.write_all(b"\x04").unwrap();
    let st = wait_exit(child);
    assert!(st.success(), "{st:?}");
    s.wait_state("cat", "exited(0)");
    expect_line(&rx, &mut seen, "closed cat's stdin");
    let restored =
        SLAVES.with(|v| nix::sys::termios::tcgetattr(v.borrow().last().unwrap().as_fd()).unwrap());
    assert!(
        restored.local_flags.contains(nix::sys::termios::LocalFlags::ICANON),
        "the terminal is restored"
    );
}

#[test]
fn ctrl_d_without_close_on_eof_and_the_detach_key_leave_stdin_open() {
    let s = sup(CAT);
    s.wait_state("cat", "running");
    let pid = s.row("cat")["pid"].as_u64();
    let (child, mut master, rx) = attach_on_pty(&s, &["cat"]);
    let mut seen = Vec::new();
    expect_line(&rx, &mut seen, "attached to cat");
    master.write_all(b"\x04").unwrap();
    assert!(wait_exit(child).success());
    expect_line(&rx, &mut seen, "stays open");
    let (child, mut master, rx) = attach_on_pty(&s, &["cat"]);
    let mut seen = Vec::new();
    expect_line(&rx, &mut seen, "attached to cat");
    master.write_all(b"half a line\x1d").unwrap();
    assert!(wait_exit(child).success());
    expect_line(&rx, &mut seen, "detached from cat");
    // Same run, stdin still open, the unfinished line never sent.
    s.send_ok("cat", &["--data", "still open\n"]);
    s.wait_logs("cat", |l| l == ["still open"]);
    assert_eq!(s.row("cat")["pid"].as_u64(), pid);
}

#[test]
fn two_attachers_share_the_output_and_one_writes_until_another_forces() {
    let s = sup(CAT);
    s.wait_state("cat", "running");
    let (first, mut master, rx) = attach_on_pty(&s, &["cat"]);
    let mut seen = Vec::new();
    expect_line(&rx, &mut seen, "attached to cat");
    // A second writer is refused, clearly.
    let out = s.env.run(&["attach", "cat"]);
    assert_eq!(out.status.code(), Some(75));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cat's stdin is written by another `weaver attach` (pid"), "{err}");
    assert!(err.contains("--read-only") && err.contains("--force"), "{err}");
    // A read-only attach sees what the writer types.
    let mut watcher = s.spawn(&["attach", "cat", "--read-only"], Stdio::null());
    let wrx = lines_of(watcher.stdout.take().unwrap());
    let werr = lines_of(watcher.stderr.take().unwrap());
    let mut wseen = Vec::new();
    expect_line(&werr, &mut wseen, "attached to cat (read-only");
    master.write_all(b"from the first\r").unwrap();
    let mut wlines = Vec::new();
    expect_line(&wrx, &mut wlines, "from the first");
    // --force takes over: the first attach ends with the reason.
    let mut forced = s.spawn(&["attach", "cat", "--force"], Stdio::piped());
    let ferr = lines_of(forced.stderr.take().unwrap());
    let mut fseen = Vec::new();
    expect_line(&ferr, &mut fseen, "attached to cat");
    let st = wait_exit(first);
    assert_eq!(st.code(), Some(1));
    expect_line(&rx, &mut seen, "took over cat's stdin");
    // The new writer's (piped) input goes in as it is.
    forced.stdin.as_mut().unwrap().write_all(b"from the second\n").unwrap();
    expect_line(&wrx, &mut wlines, "from the second");
    s.wait_logs("cat", |l| l == ["from the first", "from the second"]);
    // The end of its piped input ends it, stdin left open.
    drop(forced.stdin.take());
    assert!(wait_exit(forced).success());
    let _ = watcher.kill();
    let _ = watcher.wait();
    s.send_ok("cat", &["--data", "after\n"]);
}

#[test]
fn a_signal_ends_an_attach_and_the_terminal_is_restored() {
    let s = sup(CAT);
    s.wait_state("cat", "running");
    let (child, _master, rx) = attach_on_pty(&s, &["cat"]);
    let mut seen = Vec::new();
    expect_line(&rx, &mut seen, "attached to cat");
    let raw =
        SLAVES.with(|v| nix::sys::termios::tcgetattr(v.borrow().last().unwrap().as_fd()).unwrap());
    assert!(!raw.local_flags.contains(nix::sys::termios::LocalFlags::ICANON));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = wait_exit(child);
    assert_eq!(st.code(), Some(1), "{st:?}");
    expect_line(&rx, &mut seen, "detached from cat (signal)");
    let restored =
        SLAVES.with(|v| nix::sys::termios::tcgetattr(v.borrow().last().unwrap().as_fd()).unwrap());
    assert!(restored.local_flags.contains(nix::sys::termios::LocalFlags::ICANON));
    // The process goes on, its stdin open.
    s.send_ok("cat", &["--data", "still here\n"]);
    s.wait_logs("cat", |l| l == ["still here"]);
}
