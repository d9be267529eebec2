//! Supervised processes, end to end: a real daemon reads a real weaver.toml
//! in a temp dir and runs real programs (sh, sleep, false). Each test kills
//! (by pid) everything it saw started.

mod util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{processes_mentioning, wait_for, TestEnv};
use weaver::pidfile;

/// A test daemon with its configuration file.
struct Sup {
    env: TestEnv,
    cfg: PathBuf,
}

fn sup(toml: &str) -> Sup {
    let env = TestEnv::new();
    let cfg = env.tmp.path().join("weaver.toml");
    std::fs::write(&cfg, toml).unwrap();
    let env = env.env("WEAVER_CONFIG", cfg.to_str().unwrap());
    Sup { env, cfg }
}

impl Sup {
    /// A path in the test's temp dir (for scripts' files).
    fn file(&self, name: &str) -> String {
        self.env.tmp.path().join(name).display().to_string()
    }

    fn write_config(&self, toml: &str) {
        std::fs::write(&self.cfg, toml).unwrap();
    }

    /// `ps --json`; every pid seen is tracked for cleanup.
    fn ps(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.env.ok(&["ps", "--json"])).unwrap();
        let rows = v.as_array().unwrap().clone();
        track_rows(&self.env, &rows);
        rows
    }

    fn row(&self, name: &str) -> Value {
        self.ps()
            .into_iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row {name} in ps"))
    }

    /// Wait until `name`'s row satisfies `f`; panics with ps and the log.
    fn wait_row(&self, name: &str, limit: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let ok = wait_for(limit, || {
            last = self.row(name);
            f(&last)
        });
        assert!(ok, "{name} never got there; last row: {last}\nlog:\n{}", self.env.log());
        last
    }

    fn wait_state(&self, name: &str, state: &str, limit: Duration) -> Value {
        self.wait_row(name, limit, |r| r["state"] == state)
    }

    /// `weaver events --json --history N [names]` as a child; lines come
    /// through the channel.
    fn events(&self, extra: &[&str]) -> Events {
        let mut args = vec!["events", "--json", "--history", "256"];
        args.extend_from_slice(extra);
        let (child, rx) = json_lines(self, &args);
        Events { _child: child, rx, seen: Vec::new() }
    }

    fn log_texts(&self, name: &str) -> Vec<String> {
        self.env.ok(&["logs", name]).lines().map(str::to_string).collect()
    }
}

/// A child killed and reaped when dropped (a failing test included).
struct Owned(Child);

impl std::ops::Deref for Owned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Owned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `weaver ARGS` printing JSON lines, which come through the channel.
fn json_lines(s: &Sup, args: &[&str]) -> (Owned, mpsc::Receiver<Value>) {
    let child =
        s.env.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    lines_of(child)
}

/// [`json_lines`], with the lines the child writes to stderr through a
/// second channel.
fn json_lines_and_stderr(
    s: &Sup,
    args: &[&str],
) -> (Owned, mpsc::Receiver<Value>, mpsc::Receiver<String>) {
    let mut child =
        s.env.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let (child, rx) = lines_of(child);
    (child, rx, err_rx)
}

/// The JSON lines `child` prints on stdout, through a channel.
fn lines_of(mut child: Child) -> (Owned, mpsc::Receiver<Value>) {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            let v: Value = serde_json::from_str(&l)
                .unwrap_or_else(|e| panic!("output line is not JSON ({e}): {l}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    (Owned(child), rx)
}

struct Events {
    _child: Owned,
    rx: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Events {
    /// Collect until `f` holds over everything seen so far.
    fn until(&mut self, limit: Duration, f: impl Fn(&[Value]) -> bool) -> &[Value] {
        let end = Instant::now() + limit;
        while !f(&self.seen) {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => panic!("events never satisfied the test; seen:\n{}", dump(&self.seen)),
            }
        }
        &self.seen
    }
}

/// Track (for cleanup) every pid in `ps --json` rows.
fn track_rows(env: &TestEnv, rows: &[Value]) {
    for p in rows.iter().filter_map(|r| r["pid"].as_u64()) {
        env.track(p as u32);
    }
}

fn dump(v: &[Value]) -> String {
    v.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
}

/// Events of `instance` named `event`.
fn of<'a>(v: &'a [Value], instance: &str, event: &str) -> Vec<&'a Value> {
    v.iter().filter(|e| e["instance"] == instance && e["event"] == event).collect()
}

fn count(v: &[Value], instance: &str, event: &str) -> usize {
    of(v, instance, event).len()
}

/// Sequence number of the first `event` of `instance`.
fn seq_of(v: &[Value], instance: &str, event: &str) -> u64 {
    of(v, instance, event)
        .first()
        .unwrap_or_else(|| panic!("no {event} of {instance}:\n{}", dump(v)))["seq"]
        .as_u64()
        .unwrap()
}

/// A `sleep` argument (seconds) that no other test run uses, for finding
/// this run's processes by command line.
fn marker(secs: u32) -> String {
    format!("{secs}.{}", std::process::id())
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn gone(pid: u32) -> bool {
    !pidfile::alive(pid)
}

fn read_pid(path: &str) -> Option<u32> {
    pidfile::read(Path::new(path)).ok().map(|(p, _)| p)
}

/// The parent of `pid` (field 4 of /proc/PID/stat).
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// The guard process (`weaver __guard`) of daemon `daemon`: its child.
fn guard_of(daemon: u32) -> u32 {
    let guards: Vec<u32> = processes_mentioning(&["__guard"])
        .into_iter()
        .filter(|&p| ppid(p) == Some(daemon))
        .collect();
    assert_eq!(guards.len(), 1, "daemon {daemon} runs one guard: {guards:?}");
    guards[0]
}

/// True if a SIGKILL is queued for `pid` and not yet acted on.
fn sigkill_pending(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let kill_bit = 1u64 << (libc::SIGKILL - 1);
    status
        .lines()
        .filter_map(|l| l.strip_prefix("SigPnd:").or_else(|| l.strip_prefix("ShdPnd:")))
        .any(|v| u64::from_str_radix(v.trim(), 16).is_ok_and(|m| m & kill_bit != 0))
}

/// Seconds since boot (/proc/uptime) in the first line of `path`.
fn uptime_in(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().next()?.trim().parse().ok()
}

// ---------------------------------------------------------------- restarts

#[test]
fn a_crash_looping_false_restarts_on_the_documented_backoff_then_fails() {
    let s = sup(r#"
[[process]]
name = "crash"
command = ["false"]
start_duration = 0
restart_interval = "100ms"
backoff_factor = 2.0
backoff_cap = "400ms"
backoff_jitter = 0.0
max_restarts = 4

[[process]]
name = "slow"
command = ["sh", "-c", "exit 3"]
start_duration = 0
restart_interval = "20s"
backoff_jitter = 0.0
"#);
    let mut ev = s.events(&["crash"]);
    let seen = ev.until(secs(20), |v| count(v, "crash", "failed") == 1).to_vec();
    // 1 start + 4 restarts, each after the documented delay.
    let delays: Vec<u64> =
        of(&seen, "crash", "restarting").iter().map(|e| e["delay_ms"].as_u64().unwrap()).collect();
    assert_eq!(delays, [100, 200, 400, 400], "restart_interval x 2^k, capped at 400ms");
    let attempts: Vec<u64> =
        of(&seen, "crash", "restarting").iter().map(|e| e["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    let starts: Vec<u64> =
        of(&seen, "crash", "started").iter().map(|e| e["time_ms"].as_u64().unwrap()).collect();
    assert_eq!(starts.len(), 5, "{}", dump(&seen));
    for (i, want) in delays.iter().enumerate() {
        let gap = starts[i + 1] - starts[i];
        // Never early; late only by the spawn and a loaded machine.
        assert!(
            gap + 2 >= *want && gap <= want + 250,
            "start {} came {gap} ms after the previous one, the backoff says {want} ms",
            i + 1
        );
    }
    let row = s.row("crash");
    assert_eq!(row["state"], "failed");
    assert_eq!(row["restarts"], 4);
    assert_eq!(row["last_exit"], "exited with code 1");
    let reason = row["reason"].as_str().unwrap();
    assert!(reason.contains("4") && reason.contains("exited with code 1"), "{reason}");
    // No more starts once failed: no restart is due (and below, the only
    // starts after the failure are those of the explicit start).
    assert!(row["next_restart_ms"].is_null(), "a restart is due after failing: {row}");
    // While backing off, ps says when the next start comes.
    let row = s.wait_row("slow", secs(10), |r| r["state"] == "exited(3)");
    let next = row["next_restart_ms"].as_u64().expect("next_restart_ms while backing off");
    assert!(next > 10_000 && next <= 20_000, "{row}");
    assert_eq!(s.row("crash")["restarts"], 4);
    // An explicit start resets the failed one: a new streak of 1 start and
    // 4 restarts, and nothing else, came after the first failure.
    s.env.ok(&["start", "crash"]);
    let row = s.wait_row("crash", secs(10), |r| {
        r["state"] == "failed" && r["restarts"].as_u64() > Some(4)
    });
    assert_eq!(row["restarts"], 8, "{row}");
    let seen = ev.until(secs(5), |v| count(v, "crash", "failed") == 2).to_vec();
    let failed = seq_of(&seen, "crash", "failed");
    let since: Vec<Value> =
        seen.iter().filter(|e| e["seq"].as_u64().unwrap() > failed).cloned().collect();
    assert_eq!(count(&since, "crash", "started"), 5, "{}", dump(&since));
    assert_eq!(count(&since, "crash", "restarting"), 4, "{}", dump(&since));
}

#[test]
fn an_exit_before_start_duration_is_a_failed_start_retried_then_failed() {
    let s = sup(r#"
[[process]]
name = "early"
command = ["sh", "-c", "echo attempt; exit 1"]
start_duration = "1s"
retry_count = 2
retry_interval = "200ms"
"#);
    let mut ev = s.events(&["early"]);
    let row = s.wait_state("early", "failed", secs(20));
    let reason = row["reason"].as_str().unwrap();
    assert!(reason.contains("start"), "the reason names the failed start: {reason}");
    let seen = ev.until(secs(5), |v| count(v, "early", "failed") == 1).to_vec();
    let starts: Vec<u64> =
        of(&seen, "early", "started").iter().map(|e| e["time_ms"].as_u64().unwrap()).collect();
    assert_eq!(starts.len(), 3, "first try + retry_count retries: {}", dump(&seen));
    for w in starts.windows(2) {
        let gap = w[1] - w[0];
        assert!((198..=700).contains(&gap), "retries come retry_interval apart: {gap} ms");
    }
    assert_eq!(count(&seen, "early", "running"), 0, "it never counted as started");
    let lines = s.log_texts("early");
    assert_eq!(lines.iter().filter(|l| *l == "attempt").count(), 3, "{lines:?}");
}

// ---------------------------------------------------------------- detached

#[test]
fn a_self_daemonizing_script_is_tracked_through_its_pid_file_and_adopted_after_a_restart() {
    let s = sup("");
    let pidf = s.file("d.pid");
    let mark = marker(3011);
    s.write_config(&format!(
        r#"
[[process]]
name = "legacy"
command = ["sh", "-c", "setsid sleep {mark} </dev/null >/dev/null 2>&1 & echo $! > {pidf}"]
detached = true
pid_file = "{pidf}"
start_duration = "300ms"
restart_interval = "200ms"
detectors = {{ alive = {{ pid_file = "{pidf}", interval = "100ms" }} }}
"#
    ));
    let row = s.wait_state("legacy", "running", secs(10));
    let pid = row["pid"].as_u64().unwrap() as u32;
    assert_eq!(Some(pid), read_pid(&pidf), "the pid is the daemon's, not the launcher's");
    s.env.track(pid);
    // It dies on its own: seen through the pid file, restarted.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM)
        .unwrap();
    let row = s.wait_row("legacy", secs(10), |r| {
        r["state"] == "running" && r["pid"].as_u64().is_some_and(|p| p as u32 != pid)
    });
    assert_eq!(row["last_exit"], "vanished");
    let pid = row["pid"].as_u64().unwrap() as u32;
    s.env.track(pid);
    // weaver is killed: a detached process survives by definition ...
    let daemon = s.env.daemon_pid().unwrap();
    let guard = guard_of(daemon);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::SIGKILL)
        .unwrap();
    assert!(wait_for(secs(5), || gone(daemon)));
    // The guard kills what a killed weaver listed, then exits: once it is
    // gone, every signal it was going to send has been sent.
    assert!(wait_for(secs(5), || gone(guard)), "the guard exits after weaver");
    assert!(!gone(pid) && !sigkill_pending(pid), "a detached process outlives weaver");
    // ... and the next weaver adopts it instead of starting another.
    let row = s.wait_state("legacy", "running", secs(10));
    assert_eq!(row["pid"].as_u64(), Some(pid as u64), "adopted: {row}");
    assert_eq!(processes_mentioning(&["sleep", &mark]), vec![pid], "no second copy");
    // Stopped through its pid.
    s.env.ok(&["stop", "legacy"]);
    s.wait_state("legacy", "stopped", secs(10));
    assert!(wait_for(secs(5), || gone(pid)));
}

#[test]
fn a_recycled_pid_is_never_taken_for_a_detached_process() {
    let s = sup("");
    let pidf = s.file("r.pid");
    s.write_config(&format!(
        r#"
[[process]]
name = "r"
command = ["sh", "-c", "setsid sleep 3012 </dev/null >/dev/null 2>&1 & echo $! > {pidf}"]
detached = true
pid_file = "{pidf}"
start_duration = "300ms"
"#
    ));
    // A stranger, and a record of weaver's that names its pid with another
    // start time: the pid was "reused" since weaver last saw it.
    let mut stranger = std::process::Command::new("sleep").arg("3013").spawn().unwrap();
    s.env.track(stranger.id());
    let rt = &s.env.rt;
    std::fs::create_dir_all(rt.join("detached")).unwrap();
    let real = pidfile::start_time(stranger.id()).unwrap();
    std::fs::write(rt.join("detached/r.pid"), format!("{} {}\n", stranger.id(), real + 7)).unwrap();
    // weaver created rt itself in other tests; here it must accept ours:
    // make it private as weaver requires.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rt, std::fs::Permissions::from_mode(0o700)).unwrap();
    let row = s.wait_state("r", "running", secs(10));
    let pid = row["pid"].as_u64().unwrap() as u32;
    s.env.track(pid);
    assert_ne!(pid, stranger.id(), "not adopted: the start time differs");
    assert!(!gone(stranger.id()), "and never signalled");
    s.env.ok(&["stop", "r"]);
    s.wait_state("r", "stopped", secs(10));
    assert!(!gone(stranger.id()));
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

// ---------------------------------------------------------------- stopping

#[test]
fn a_process_that_ignores_sigterm_is_killed_after_stop_timeout() {
    let s = sup(r#"
[[process]]
name = "stubborn"
command = ["sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.05; done"]
stop_timeout = "600ms"
detectors = { ready = { log_pattern = "up" } }
"#);
    let pid = s.wait_state("stubborn", "ready", secs(10))["pid"].as_u64().unwrap() as u32;
    let mut ev = s.events(&["stubborn"]);
    let t0 = Instant::now();
    s.env.ok(&["stop", "stubborn"]);
    let row = s.wait_state("stubborn", "stopped", secs(10));
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(550), "SIGKILL only after stop_timeout: {took:?}");
    assert_eq!(row["last_exit"], "killed by SIGKILL");
    assert!(gone(pid));
    let seen = ev.until(secs(5), |v| count(v, "stubborn", "stopped") == 1).to_vec();
    let killed = of(&seen, "stubborn", "killed");
    assert_eq!(killed.len(), 1, "{}", dump(&seen));
    assert_eq!(killed[0]["signal"], "SIGKILL");
}

#[test]
fn a_stop_sent_as_the_daemon_starts_is_not_undone_by_the_autostart() {
    // The first command starts the daemon; it starts what autostarts once
    // it settled (after joining its cgroup where it can), which may be
    // after this stop was served.
    let s = sup(r#"
[[process]]
name = "early"
command = ["sleep", "30"]
"#);
    s.env.ok(&["stop", "early"]);
    std::thread::sleep(Duration::from_millis(700));
    let row = s.wait_state("early", "stopped", secs(5));
    assert!(row["pid"].is_null(), "stopped, and never started after the stop: {row}");
    s.env.ok(&["start", "early"]);
    s.wait_state("early", "running", secs(10));
}

#[test]
fn what_a_process_forks_is_stopped_with_it() {
    let s = sup("");
    let (a, b, e) = (s.file("a.pid"), s.file("b.pid"), s.file("e.pid"));
    // The grandchild of "hard": SIGTERM does not end it; it writes the time
    // (seconds since boot) when SIGTERM came to `term`, and keeps appending
    // the time to `beats` as long as it runs.
    let (hard, term, beats) = (s.file("hard.sh"), s.file("term"), s.file("beats"));
    std::fs::write(
        &hard,
        format!(
            "trap 'read up _ </proc/uptime; echo $up > {term}' TERM\n\
             echo $$ > {b}\n\
             while :; do sleep 0.05; read up _ </proc/uptime; echo $up >> {beats}; done\n"
        ),
    )
    .unwrap();
    s.write_config(&format!(
        r#"
# Forks a grandchild and exits at once: the grandchild gets the stop signal.
[[process]]
name = "forker"
command = ["sh", "-c", "sleep 3021 & echo $! > {a}"]
start_duration = 0
auto_restart = false

# Its grandchild outlives SIGTERM: SIGKILL after stop_timeout.
[[process]]
name = "hard"
command = ["sh", "-c", "sh {hard} & while [ ! -s {b} ]; do sleep 0.01; done"]
start_duration = 0
auto_restart = false
stop_timeout = "500ms"

# A grandchild that leaves the group (setsid) comes to weaver (a
# subreaper) when its parent dies, and is stopped with it.
[[process]]
name = "escapee"
command = ["sh", "-c", "setsid sh -c 'echo $$ > {e}; exec sleep 3022' & exec sleep 3023"]
"#
    ));
    // The escaped grandchild is tracked first: it is in no group of
    // weaver's, so only the test can kill it if an assertion below fails.
    s.wait_state("escapee", "running", secs(10));
    assert!(wait_for(secs(5), || read_pid(&e).is_some()));
    let esc = read_pid(&e).unwrap();
    s.env.track(esc);
    assert!(!gone(esc));
    s.wait_state("forker", "exited(0)", secs(10));
    assert!(wait_for(secs(5), || read_pid(&a).is_some()));
    let gc = read_pid(&a).unwrap();
    s.env.track(gc);
    assert!(wait_for(secs(5), || gone(gc)), "the forked sleep went with its parent");
    s.wait_state("hard", "exited(0)", secs(10));
    assert!(wait_for(secs(5), || read_pid(&b).is_some()));
    let gc2 = read_pid(&b).unwrap();
    s.env.track(gc2);
    // What is left of the group gets SIGTERM as its leader exits, ...
    assert!(wait_for(secs(5), || uptime_in(&term).is_some()), "SIGTERM reached the grandchild");
    // ... and SIGKILL stop_timeout (500 ms) later: it ran on after SIGTERM.
    assert!(wait_for(secs(5), || gone(gc2)), "SIGKILL after stop_timeout");
    let termed = uptime_in(&term).unwrap();
    let beats = std::fs::read_to_string(&beats).unwrap();
    let last: f64 = beats.lines().filter_map(|l| l.trim().parse().ok()).fold(0.0, f64::max);
    assert!(last - termed >= 0.2, "still in its grace: ran {:.2} s after SIGTERM", last - termed);
    s.env.ok(&["stop", "escapee"]);
    s.wait_state("escapee", "stopped", secs(10));
    assert!(wait_for(secs(5), || gone(esc)), "the escaped grandchild is stopped with it");
    let daemon = s.env.daemon_pid().unwrap();
    s.env.ok(&["shutdown"]);
    // The socket closes as the process exits: allow the kernel its moment.
    assert!(wait_for(secs(2), || gone(daemon)));
}

#[test]
fn kill_9_of_weaver_with_20_supervised_processes_leaves_none() {
    let (m1, m2) = (marker(3031), marker(3032));
    let mut toml = String::new();
    for i in 0..16 {
        toml += &format!("[[process]]\nname = \"p{i}\"\ncommand = [\"sleep\", \"{m1}\"]\n\n");
    }
    // Shells with children of their own: the parent-death signal reaches
    // the shell only; the guard kills the rest of the group.
    toml += &format!("[[process]]\nname = \"fam\"\ncommand = [\"sh\", \"-c\", \"sleep {m2} & sleep {m2} & wait\"]\ninstances = 4\n");
    let s = sup(&toml);
    let ok = wait_for(secs(20), || {
        let rows = s.ps();
        rows.len() == 20 && rows.iter().all(|r| r["state"] == "running")
    });
    assert!(ok, "{:?}\n{}", s.ps(), s.env.log());
    assert!(wait_for(secs(5), || processes_mentioning(&["sleep", &m2]).len() == 8));
    let mut pids: Vec<u32> = processes_mentioning(&["sleep", &m1]);
    pids.extend(processes_mentioning(&["sleep", &m2]));
    pids.extend(s.ps().iter().filter_map(|r| r["pid"].as_u64()).map(|p| p as u32));
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 28, "16 sleeps, 4 shells, 8 grandchildren");
    for &p in &pids {
        s.env.track(p);
    }
    let daemon = s.env.daemon_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::SIGKILL)
        .unwrap();
    let t0 = Instant::now();
    let ok = wait_for(secs(2), || pids.iter().all(|&p| gone(p)));
    let left: Vec<u32> = pids.iter().copied().filter(|&p| !gone(p)).collect();
    assert!(ok, "still alive {:?} after kill -9 of weaver: {left:?}", t0.elapsed());
    // And the next start is not blocked by anything the dead one left.
    s.env.ok(&["ps"]);
    s.env.ok(&["shutdown"]);
}

// ---------------------------------------------------------------- dependencies

#[test]
fn a_dependency_chain_waits_for_ready_and_exited_ok() {
    let s = sup("");
    let (ready, mig) = (s.file("db.ready"), s.file("migrated"));
    s.write_config(&format!(
        r#"
[[process]]
name = "web"
command = ["sh", "-c", "cat {mig}; echo listening; exec sleep 3041"]
after = [{{ name = "migrate", condition = "exited_ok" }}]
detectors = {{ ready = {{ log_pattern = "listening" }} }}

[[process]]
name = "migrate"
command = ["sh", "-c", "echo schema-v2 > {mig}"]
after = [{{ name = "db", condition = "ready" }}]
auto_restart = false
start_duration = 0

# Ready only 0.4 s after it starts (its probe fails until then): the
# scenario, a slow database, not a wait of the test's.
[[process]]
name = "db"
command = ["sh", "-c", "sleep 0.4; touch {ready}; exec sleep 3042"]
start_duration = "100ms"
[process.detectors.ready]
command = ["test", "-e", "{ready}"]
interval = "50ms"
"#
    ));
    let mut ev = s.events(&[]);
    s.wait_state("web", "ready", secs(15));
    let seen = ev.until(secs(5), |v| count(v, "web", "ready") == 1).to_vec();
    let t = seq_of;
    assert!(t(&seen, "db", "ready") < t(&seen, "migrate", "started"), "migrate waits for db");
    assert!(t(&seen, "migrate", "exited") < t(&seen, "web", "started"), "web waits for migrate");
    assert_eq!(s.row("migrate")["state"], "exited(0)");
    assert!(s.log_texts("web").contains(&"schema-v2".to_string()));
    // Stopping everything goes dependents first.
    s.env.ok(&["stop", "--all"]);
    let seen = ev.until(secs(10), |v| count(v, "db", "stopped") == 1).to_vec();
    assert!(t(&seen, "web", "stopped") < t(&seen, "db", "stopping"), "web stops before db");
}

// ---------------------------------------------------------------- hooks

#[test]
fn hooks_run_in_order_in_every_mode_and_failure_mode() {
    let s = sup("");
    let (trace, tries) = (s.file("trace"), s.file("tries"));
    let hang = marker(3056);
    let mark = |what: &str| format!(r#"["sh", "-c", "echo {what} $WEAVER_PROCESS >> {trace}"]"#);
    s.write_config(&format!(
        r#"
[[process]]
name = "h"
command = ["sh", "-c", "echo main $WEAVER_PROCESS >> {trace}; exec sleep 3051"]
start_duration = "200ms"
[process.hooks]
pre_start = {{ command = {pre_start} }}
post_start = {{ command = {post_start}, run_mode = "async" }}
pre_stop = {{ command = {pre_stop} }}
post_stop = {{ command = {post_stop} }}

[[process]]
name = "fails"
command = ["sleep", "3052"]
hooks = {{ pre_start = {{ command = ["false"], failure_mode = "fail" }} }}

[[process]]
name = "ignores"
command = ["sleep", "3053"]
hooks = {{ pre_start = {{ command = ["false"], failure_mode = "ignore" }} }}

[[process]]
name = "retries"
command = ["sleep", "3054"]
retry_count = 3
retry_interval = "100ms"
hooks = {{ pre_start = {{ command = ["sh", "-c", "echo x >> {tries}; [ $(wc -l < {tries}) -ge 3 ]"], failure_mode = "retry" }} }}

[[process]]
name = "hangs"
command = ["sleep", "3055"]
hooks = {{ pre_start = {{ command = ["sleep", "{hang}"], timeout = "300ms", failure_mode = "fail" }} }}

[[process]]
name = "async"
command = ["sleep", "3057"]
start_duration = "100ms"
hooks = {{ pre_start = {{ command = ["sleep", "3"], run_mode = "async" }} }}
"#,
        pre_start = mark("pre_start"),
        post_start = mark("post_start"),
        pre_stop = mark("pre_stop"),
        post_stop = mark("post_stop"),
    ));
    s.wait_state("h", "running", secs(10));
    s.wait_state("ignores", "running", secs(10));
    s.wait_state("retries", "running", secs(10));
    let row = s.wait_state("async", "running", secs(10));
    assert!(row["uptime_ms"].as_u64().is_some(), "an async pre_start does not hold the start");
    let row = s.wait_state("fails", "failed", secs(10));
    assert!(row["reason"].as_str().unwrap().contains("pre_start"), "{row}");
    assert!(row["pid"].is_null(), "never spawned");
    let t0 = Instant::now();
    let row = s.wait_state("hangs", "failed", secs(10));
    assert!(t0.elapsed() < secs(5));
    let reason = row["reason"].as_str().unwrap();
    assert!(reason.contains("pre_start") && reason.contains("300ms"), "{reason}");
    assert!(wait_for(secs(5), || processes_mentioning(&["sleep", &hang]).is_empty()));
    assert_eq!(std::fs::read_to_string(&tries).unwrap().lines().count(), 3);
    assert!(wait_for(secs(5), || std::fs::read_to_string(&trace)
        .unwrap_or_default()
        .contains("post_start")));
    s.env.ok(&["stop", "h"]);
    s.wait_state("h", "stopped", secs(10));
    let lines: Vec<String> =
        std::fs::read_to_string(&trace).unwrap().lines().map(str::to_string).collect();
    let at = |w: &str| {
        lines.iter().position(|l| l == &format!("{w} h")).unwrap_or_else(|| panic!("{lines:?}"))
    };
    assert!(at("pre_start") < at("main"), "{lines:?}");
    assert!(at("main") < at("post_start"), "{lines:?}");
    assert!(at("post_start") < at("pre_stop"), "{lines:?}");
    assert!(at("pre_stop") < at("post_stop"), "{lines:?}");
    assert_eq!(lines.len(), 5, "each hook once: {lines:?}");
}

// ---------------------------------------------------------------- instances

#[test]
fn instances_get_their_index_and_gpus() {
    let s = sup(r#"
[[process]]
name = "w"
command = ["sh", "-c", "echo gpus=$CUDA_VISIBLE_DEVICES shard={instance} idx=$WEAVER_INSTANCE; exec sleep 3061"]
instances = 3
gpus = [0, [1, 2]]
"#);
    for i in 0..3 {
        s.wait_state(&format!("w.{i}"), "running", secs(10));
    }
    let want = ["gpus=0 shard=0 idx=0", "gpus=1,2 shard=1 idx=1", "gpus=0 shard=2 idx=2"];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(s.log_texts(&format!("w.{i}")), [w.to_string()]);
    }
    let rows = s.ps();
    assert_eq!(rows[1]["gpus"], serde_json::json!([1, 2]));
    assert_eq!(rows[1]["process"], "w");
    // One instance alone, then the whole process by name.
    s.env.ok(&["stop", "w.1"]);
    s.wait_state("w.1", "stopped", secs(10));
    assert_eq!(s.row("w.0")["state"], "running");
    let out = s.env.ok(&["stop", "w", "--json"]);
    let names: Vec<String> = serde_json::from_str(&out).unwrap();
    assert_eq!(names, ["w.0", "w.1", "w.2"]);
    // Unknown names: a clear error, nothing done.
    let out = s.env.run(&["start", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("w.0"), "{err}");
}

// ---------------------------------------------------------------- logs

#[test]
fn logs_follow_resumes_by_sequence_number_without_loss_or_repeats() {
    let s = sup(r#"
# A slow writer (300 lines 4 ms apart) for a follower to be cut off from
# mid-stream: the scenario, not a wait of the test's.
[[process]]
name = "tick"
command = ["sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line$i; i=$((i+1)); sleep 0.004; done; echo done; exec sleep 3071"]
"#);
    s.wait_state("tick", "starting", secs(10));
    let (mut a, rx) = json_lines(&s, &["logs", "tick", "-f", "--json", "--since", "0"]);
    let mut got: Vec<Value> = Vec::new();
    while got.len() < 60 {
        got.push(rx.recv_timeout(secs(10)).expect("lines while following"));
    }
    // The follower goes away mid-stream (a dropped ssh, a killed pager) ...
    a.kill().unwrap();
    a.wait().unwrap();
    for v in rx.try_iter() {
        got.push(v);
    }
    let last = got.last().unwrap()["seq"].as_u64().unwrap();
    // ... and a new one resumes from the last sequence number it saw.
    let since = last.to_string();
    let (mut b, rx) = json_lines(&s, &["logs", "tick", "-f", "--json", "--since", &since]);
    loop {
        let v = rx.recv_timeout(secs(10)).expect("lines after resuming");
        let done = v["text"] == "done";
        got.push(v);
        if done {
            break;
        }
    }
    b.kill().unwrap();
    b.wait().unwrap();
    let texts: Vec<&str> = got.iter().map(|v| v["text"].as_str().unwrap()).collect();
    let want: Vec<String> =
        (0..300).map(|i| format!("line{i}")).chain(["done".to_string()]).collect();
    assert_eq!(texts, want, "every line once, in order");
    let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(got.iter().all(|v| v["stream"] == "stdout" && v["time_ms"].as_u64().is_some()));
    // -n and --stream.
    let tail = s.log_texts("tick");
    assert_eq!(tail.len(), 301);
    let out = s.env.ok(&["logs", "tick", "-n", "2"]);
    assert_eq!(out, "line299\ndone\n");
    assert_eq!(s.env.ok(&["logs", "tick", "--stream", "stderr"]), "");
}

#[test]
fn logs_follow_waits_for_a_restarted_daemon_and_never_starts_one() {
    let s = sup(r#"
[[process]]
name = "boot"
command = ["sh", "-c", "echo hello; exec sleep 3081"]
"#);
    s.wait_state("boot", "running", secs(10));
    let args = ["logs", "boot", "-f", "--json", "--since", "0"];
    let (mut f, rx, err) = json_lines_and_stderr(&s, &args);
    assert_eq!(rx.recv_timeout(secs(10)).unwrap()["text"], "hello");
    let daemon = s.env.daemon_pid().unwrap();
    s.env.ok(&["shutdown"]);
    // The follower finds the daemon gone and, having tried without
    // starting one, says it waits.
    let end = Instant::now() + secs(10);
    let mut said = Vec::new();
    while !said.iter().any(|l: &String| l.contains("waiting for it to come back")) {
        let left = end.saturating_duration_since(Instant::now());
        said.push(err.recv_timeout(left).unwrap_or_else(|_| panic!("follower said {said:?}")));
    }
    assert!(wait_for(secs(2), || gone(daemon)));
    assert_eq!(s.env.daemon_pid(), None, "the follower did not start a daemon");
    assert!(f.try_wait().unwrap().is_none(), "it waits for the daemon");
    // A new daemon: its output follows, from its first line.
    s.row("boot");
    let v = rx.recv_timeout(secs(10)).expect("output of the new daemon");
    assert_eq!(v["text"], "hello");
    assert_eq!(v["seq"], 1);
    f.kill().unwrap();
    f.wait().unwrap();
}

#[test]
fn output_is_bounded_rotated_and_never_blocks_a_fast_writer() {
    let s = sup("");
    let out = s.file("big.out");
    s.write_config(&format!(
        r#"
[[process]]
name = "flood"
command = ["sh", "-c", "yes 0123456789012345678901234567890123456789 | head -n 200000; echo finished"]
auto_restart = false
start_duration = 0
output = {{ ring_bytes = 65536, file = "{out}", max_file_bytes = 1000000, keep_files = 2 }}
"#
    ));
    // 8 MB of output: it finishes (never blocked on a full pipe).
    s.wait_state("flood", "exited(0)", secs(60));
    let tail = s.env.ok(&["logs", "flood", "-n", "1"]);
    assert_eq!(tail, "finished\n");
    let kept = s.log_texts("flood");
    let bytes: usize = kept.iter().map(|l| l.len() + 1).sum();
    assert!(bytes <= 65536, "the ring keeps ring_bytes: {bytes}");
    assert!(kept.len() > 500, "and is full of recent lines: {}", kept.len());
    // Rotated: the file and two old ones, each within the limit.
    for p in [out.clone(), format!("{out}.1"), format!("{out}.2")] {
        let len = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{p}: {e}")).len();
        assert!(len <= 1_000_000, "{p} is {len} bytes");
    }
    assert!(!Path::new(&format!("{out}.3")).exists(), "keep_files = 2");
    assert!(std::fs::read_to_string(&out).unwrap().ends_with("finished\n"));
    // The daemon's memory stays small for all that.
    let pid = s.env.daemon_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss < 30 * 1024, "daemon RSS {rss} kB after 8 MB of output");
}

// ---------------------------------------------------------------- reload and config

#[test]
fn reload_plans_then_restarts_only_what_changed_and_a_bad_config_changes_nothing() {
    let v1 = r#"
[[process]]
name = "a"
command = ["sleep", "3091"]

[[process]]
name = "b"
command = ["sleep", "3092"]

[[process]]
name = "c"
command = ["sleep", "3093"]
"#;
    let s = sup(v1);
    let pid = |n: &str| s.wait_state(n, "running", secs(10))["pid"].as_u64().unwrap();
    let (a, b, c) = (pid("a"), pid("b"), pid("c"));
    s.write_config(
        r#"
[[process]]
name = "a"
command = ["sleep", "3091"]

[[process]]
name = "b"
command = ["sleep", "3094"]

[[process]]
name = "d"
command = ["sleep", "3095"]
after = ["b"]
"#,
    );
    let plan: Value = serde_json::from_str(&s.env.ok(&["reload", "--dry-run", "--json"])).unwrap();
    assert_eq!(plan["applied"], false);
    assert_eq!(plan["added"], serde_json::json!(["d"]));
    assert_eq!(plan["removed"], serde_json::json!(["c"]));
    assert_eq!(plan["changed"], serde_json::json!(["b"]));
    assert_eq!(plan["unchanged"], serde_json::json!(["a"]));
    assert_eq!((pid("a"), pid("b"), pid("c")), (a, b, c), "a dry run changes nothing");
    let text = s.env.ok(&["reload", "--dry-run"]);
    assert!(text.contains("added") && text.contains("d"), "{text}");
    let done: Value = serde_json::from_str(&s.env.ok(&["reload", "--json"])).unwrap();
    assert_eq!(done["applied"], true);
    let b2 = s.wait_row("b", secs(10), |r| {
        r["state"] == "running" && r["pid"].as_u64().is_some_and(|p| p != b)
    });
    assert_eq!(pid("a"), a, "unchanged keeps running");
    assert!(wait_for(secs(5), || gone(c as u32)), "removed is stopped");
    assert!(s.ps().iter().all(|r| r["name"] != "c"));
    let d = s.wait_state("d", "running", secs(10));
    assert!(d["pid"].as_u64() != b2["pid"].as_u64());
    // A bad file: the error says where, and nothing changes.
    s.write_config("[[process]]\nname = \"a\"\ncommand = [\"sleep\", \"3091\"]\nbogus = 1\n");
    let out = s.env.run(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("weaver.toml:4:1") && err.contains("bogus"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    let names: Vec<String> =
        s.ps().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["a", "b", "d"]);
    assert_eq!(pid("a"), a);
}

#[test]
fn a_bad_config_reports_every_error_with_its_place_and_starts_nothing() {
    let s = sup(r#"[[process]]
name = "a"
command = ["sleep", "1"]
after = ["b"]
colour = "blue"

[[process]]
name = "b"
command = []
after = ["a"]
stop_timeout = "soon"
"#);
    let out = s.env.run(&["ps"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    for want in ["weaver.toml:5:1", "colour", "weaver.toml:9:11", "weaver.toml:11:16"] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert_eq!(s.env.daemon_pid(), None, "no daemon started on a bad config");
    // The file given by --config is read too (and wins over WEAVER_CONFIG).
    let other = s.file("other.toml");
    std::fs::write(&other, "[[process]]\nname = \"x\"\ncommand = [\"sleep\", \"3101\"]\n").unwrap();
    let out = s.env.ok(&["--config", &other, "ps", "--json"]);
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["name"], "x");
    track_rows(&s.env, &rows);
}

#[test]
fn a_dependency_cycle_is_reported_with_its_path() {
    let s = sup(r#"
[[process]]
name = "a"
command = ["true"]
after = ["c"]

[[process]]
name = "b"
command = ["true"]
after = ["a"]

[[process]]
name = "c"
command = ["true"]
after = ["b"]
"#);
    let out = s.env.run(&["ps"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cycle") && err.contains("a -> c -> b -> a"), "{err}");
}

#[test]
fn the_config_is_found_under_xdg_config_home() {
    let env = TestEnv::new();
    let dir = env.tmp.path().join("config/weaver");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("weaver.toml"),
        "[[process]]\nname = \"x\"\ncommand = [\"sleep\", \"3111\"]\n",
    )
    .unwrap();
    let rows: Vec<Value> = serde_json::from_str(&env.ok(&["ps", "--json"])).unwrap();
    track_rows(&env, &rows);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "x");
}

#[test]
fn events_are_json_lines_with_increasing_sequence_numbers() {
    let s = sup(r#"
[[process]]
name = "e"
command = ["sh", "-c", "echo one; echo two >&2; exec sleep 3121"]
"#);
    let mut ev = s.events(&["--output"]);
    s.wait_state("e", "running", secs(10));
    s.env.ok(&["restart", "e"]);
    let seen = ev
        .until(secs(10), |v| count(v, "e", "started") == 2 && count(v, "e", "output") >= 2)
        .to_vec();
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let names: Vec<&str> = seen.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for want in ["started", "output", "running", "stopping", "killed", "stopped"] {
        assert!(names.contains(&want), "no {want} in {names:?}");
    }
    let outputs: Vec<&str> =
        of(&seen, "e", "output").iter().map(|e| e["detail"].as_str().unwrap()).collect();
    assert!(outputs.iter().any(|d| d.starts_with("stdout#") && d.ends_with("one")), "{outputs:?}");
    assert!(outputs.iter().any(|d| d.starts_with("stderr#") && d.ends_with("two")), "{outputs:?}");
    assert!(seen.iter().all(|e| e["time_ms"].as_u64().unwrap() > 1_700_000_000_000));
}

/// The scheduling policy of every thread of `pid` (its main thread first).
fn thread_policies(pid: u32) -> Vec<i32> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    // SAFETY: a plain query of a thread's policy; no memory.
    tids.iter().map(|&t| unsafe { libc::sched_getscheduler(t) }).collect()
}

#[test]
fn compute_runs_under_its_sections_scheduling_policy_and_a_reload_changes_it() {
    let s = sup("");
    let first = s.env.compute_pid();
    let before = thread_policies(first);
    // The I/O thread and at least one worker.
    assert!(before.len() >= 2, "{before:?}");
    assert!(before.iter().all(|&p| p == libc::SCHED_OTHER), "{before:?}");
    s.write_config("[compute]\nscheduling = \"batch\"\n");
    s.env.ok(&["reload"]);
    let mut second = first;
    let restarted = wait_for(secs(10), || {
        second = s.env.compute_pid();
        second != first
    });
    assert!(restarted, "a changed [compute] restarts compute\nlog:\n{}", s.env.log());
    let after = thread_policies(second);
    assert!(after.len() >= 2, "{after:?}");
    assert!(after.iter().all(|&p| p == libc::SCHED_BATCH), "every thread: {after:?}");
    let daemon = s.env.daemon_pid().expect("weaver runs");
    assert_eq!(thread_policies(daemon), [libc::SCHED_OTHER], "weaver itself is left as it was");
    // An unknown policy: the error says where and what to write.
    s.write_config("[compute]\nscheduling = \"bach\"\n");
    let out = s.env.run(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("weaver.toml:2:14"), "{err}");
    assert!(err.contains("unknown scheduling \"bach\": use normal or batch"), "{err}");
    assert!(err.contains("(did you mean \"batch\"?)"), "{err}");
    assert_eq!(s.env.compute_pid(), second, "nothing changed");
}

#[test]
fn shell_work_dir_pid_file_and_the_compute_section_are_honoured() {
    let s = sup("");
    let (wd, pf) = (s.file("wd"), s.file("p-{instance}.pid"));
    for i in 0..2 {
        std::fs::create_dir_all(format!("{wd}/{i}")).unwrap();
    }
    s.write_config(&format!(
        r#"
[compute]
workers = 3

[[process]]
name = "sh"
command = "echo $((6 * 7)) | tr 4 x; exec sleep 3131"
shell = true

[[process]]
name = "lim"
command = "ulimit -n; ulimit -Hn; exec sleep 3133"
shell = true

[[process]]
name = "wd"
command = ["sh", "-c", "pwd; exec sleep 3132"]
instances = 2
work_dir = "{wd}/{{instance}}"
pid_file = "{pf}"
"#
    ));
    // Start the daemon with a low soft open-file limit.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let low = lim.rlim_max.min(512);
    let mut first = s.env.cmd();
    first.arg("status").stdout(Stdio::null());
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut first, move || {
            let l = libc::rlimit { rlim_cur: low, rlim_max: lim.rlim_max };
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            Ok(())
        });
    }
    assert!(first.status().unwrap().success());
    s.wait_state("sh", "running", secs(10));
    assert_eq!(s.log_texts("sh"), ["x2"], "the command went through /bin/sh");
    for i in 0..2 {
        let row = s.wait_state(&format!("wd.{i}"), "running", secs(10));
        assert_eq!(s.log_texts(&format!("wd.{i}")), [format!("{wd}/{i}")]);
        // weaver's pid file: pid and start time.
        let path = pf.replace("{instance}", &i.to_string());
        let (pid, start) = pidfile::read(Path::new(&path)).unwrap();
        assert_eq!(Some(pid as u64), row["pid"].as_u64());
        assert_eq!(start, pidfile::start_time(pid));
    }
    assert_eq!(s.env.status()["compute"]["workers"], 3);
    // weaver raises its own open-file limit (two pipes per process) but
    // gives its children the limits it was started with.
    s.wait_state("lim", "running", secs(10));
    let show =
        |v: u64| if v == libc::RLIM_INFINITY { "unlimited".to_string() } else { v.to_string() };
    assert_eq!(s.log_texts("lim"), [show(low), show(lim.rlim_max)]);
    let daemon = s.env.daemon_pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{daemon}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[3], f[4], "the daemon's soft limit is its hard limit: {line}");
    s.env.ok(&["stop", "wd"]);
    s.wait_state("wd.0", "stopped", secs(10));
    s.wait_state("wd.1", "stopped", secs(10));
    assert!(!Path::new(&pf.replace("{instance}", "0")).exists(), "removed at stop");
}

#[test]
fn a_subscriber_that_falls_behind_is_told_what_it_lost_and_slows_nobody() {
    let s = sup("");
    let gate = s.file("gate");
    s.write_config(&format!(
        r#"
# Floods once the test has its subscriber in place (the gate file exists).
[[process]]
name = "flood"
command = ["sh", "-c", "while [ ! -e {gate} ]; do sleep 0.01; done; yes event-line-padding-padding-padding | head -n 60000; echo last"]
auto_restart = false
start_duration = 0
"#
    ));
    s.wait_state("flood", "running", secs(10));
    // A subscriber whose reader takes one line (the latest event, sent as
    // history: the subscription is in place), then does not read until the
    // flood is over.
    let mut child = Owned(
        s.env
            .cmd()
            .args(["events", "--json", "--output", "--history", "1", "flood"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let (go, wait_go) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        let pass = |l: Option<std::io::Result<String>>| {
            let Some(Ok(l)) = l else { return false };
            let v: Value = serde_json::from_str(&l).unwrap();
            tx.send(v).is_ok()
        };
        if !pass(lines.next()) || wait_go.recv().is_err() {
            return;
        }
        while pass(lines.next()) {}
    });
    let first = rx.recv_timeout(secs(10)).expect("the latest event of flood");
    assert_eq!(first["instance"], "flood", "{first}");
    std::fs::write(&gate, "").unwrap();
    // Everyone else is served meanwhile.
    let row = s.wait_state("flood", "exited(0)", secs(60));
    assert_eq!(row["last_exit"], "exited with code 0");
    assert_eq!(s.env.ok(&["logs", "flood", "-n", "1"]), "last\n");
    // Now read what the subscriber got, until the flood's exit event.
    go.send(()).unwrap();
    let mut seen: Vec<Value> = vec![first];
    loop {
        let v = rx.recv_timeout(secs(30)).unwrap_or_else(|_| {
            panic!("no exit event; {} events, the last: {}", seen.len(), seen.last().unwrap())
        });
        let end = v["event"] == "exited";
        seen.push(v);
        if end {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let lost: u64 = seen.iter().filter_map(|e| e["lost"].as_u64()).sum();
    assert!(lost > 0, "60000 lines cannot all wait for a stalled reader");
    // Every event is either delivered or counted as lost: the gaps in the
    // sequence numbers add up to what was reported lost.
    let seqs: Vec<u64> = seen.iter().filter_map(|e| e["seq"].as_u64().filter(|&q| q > 0)).collect();
    let gaps: u64 = seqs.windows(2).map(|w| w[1] - w[0] - 1).sum();
    assert_eq!(gaps, lost, "lost markers account for every missing event");
    assert!(seen
        .iter()
        .any(|e| e["event"] == "lost"
            && e["detail"].as_str().is_some_and(|d| d.contains("fell behind"))));
    assert_eq!(seen.last().unwrap()["event"], "exited", "the end still arrives");
}

#[test]
fn a_follower_gets_a_whole_burst_even_when_the_process_goes_quiet() {
    let s = sup("");
    let gate = s.file("gate");
    s.write_config(&format!(
        r#"
# One line, then once the test follows (the gate file exists) a burst of
# 6000, then nothing.
[[process]]
name = "burst"
command = ["sh", "-c", "echo before; while [ ! -e {gate} ]; do sleep 0.01; done; seq 1 6000; exec sleep 3141"]
# Room for every line of the burst.
output = {{ ring_bytes = 4194304 }}
"#
    ));
    s.row("burst");
    let (mut f, rx) = json_lines(&s, &["logs", "burst", "-f", "--json", "--since", "0"]);
    // A line reaches the follower only once it is registered: the burst
    // comes while it follows.
    assert_eq!(rx.recv_timeout(secs(10)).expect("the first line")["text"], "before");
    std::fs::write(&gate, "").unwrap();
    let mut n = 0;
    while n < 6000 {
        let v = rx.recv_timeout(secs(10)).unwrap_or_else(|_| panic!("stalled after {n} lines"));
        n += 1;
        assert_eq!(v["text"], n.to_string(), "{v}");
    }
    f.kill().unwrap();
    f.wait().unwrap();
}

#[test]
fn stop_signal_and_a_failing_alive_check_are_honoured() {
    let s = sup("");
    let (alive, got) = (s.file("alive"), s.file("got"));
    std::fs::write(&alive, "").unwrap();
    s.write_config(&format!(
        r#"
[[process]]
name = "int"
command = ["sh", "-c", "trap 'echo INT > {got}; exit 0' INT; while :; do sleep 0.05; done"]
stop_signal = "INT"

# Hung (alive check fails) while its process still runs: restarted.
[[process]]
name = "hung"
command = ["sleep", "3151"]
start_duration = "100ms"
restart_interval = "100ms"
detectors = {{ alive = {{ command = ["test", "-e", "{alive}"], interval = "100ms" }} }}
"#
    ));
    s.wait_state("int", "running", secs(10));
    s.env.ok(&["stop", "int"]);
    let row = s.wait_state("int", "stopped", secs(10));
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "INT\n", "{row}");
    let first = s.wait_state("hung", "running", secs(10))["pid"].as_u64().unwrap();
    std::fs::remove_file(&alive).unwrap();
    let mut ev = s.events(&["hung"]);
    ev.until(secs(10), |v| count(v, "hung", "restarting") >= 1);
    assert!(wait_for(secs(5), || gone(first as u32)), "the hung process was stopped");
    std::fs::write(&alive, "").unwrap();
    let row = s.wait_row("hung", secs(10), |r| {
        r["state"] == "running" && r["pid"].as_u64().is_some_and(|p| p != first)
    });
    assert!(row["restarts"].as_u64().unwrap() >= 1, "{row}");
}
