//! `weaver run`, end to end: a real daemon reads a real weaver.toml with
//! [[job]] tables and runs real programs (sh, sleep, true). Ordering is
//! proved with marker files the jobs write and wait for (each wait bounded
//! in the script), never with timing; every job that could linger writes
//! its pid, and each test checks that none is left.

mod util;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use util::{wait_for, wait_output, TestEnv};
use weaver::pidfile;

struct Jobs {
    env: TestEnv,
}

/// A daemon-to-be whose weaver.toml is `toml`, with `{dir}` replaced by the
/// test's temp dir.
fn jobs(toml: &str) -> Jobs {
    let env = TestEnv::new();
    let dir = env.tmp.path().display().to_string();
    let cfg = env.tmp.path().join("weaver.toml");
    std::fs::write(&cfg, toml.replace("{dir}", &dir)).unwrap();
    let env = env.env("WEAVER_CONFIG", cfg.to_str().unwrap());
    Jobs { env }
}

/// A shell loop that waits (at most ~10 s) for `file` to exist, else
/// fails with code 7.
fn wait_file(file: &str) -> String {
    format!("i=0; while [ ! -e {{dir}}/{file} ]; do i=$((i+1)); [ $i -gt 1000 ] && exit 7; sleep 0.01; done")
}

impl Jobs {
    fn file(&self, name: &str) -> PathBuf {
        self.env.tmp.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.env.run(args)
    }

    /// `weaver run --json ARGS`: exit code and the report.
    fn report(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["run", "--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "run {args:?} printed no JSON ({e}): {text}\nstderr: {}\nlog:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.env.log()
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    /// Every pid written to `names` (files in the temp dir) is gone.
    fn none_left(&self, names: &[&str]) {
        for n in names {
            let Ok((pid, _)) = pidfile::read(&self.file(n)) else {
                panic!("{n} was never written");
            };
            let gone = wait_for(Duration::from_secs(10), || !pidfile::alive(pid));
            assert!(gone, "pid {pid} ({n}) outlived its run");
        }
    }
}

fn job<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["jobs"].as_array().unwrap().iter().find(|j| j["name"] == name).unwrap_or_else(|| {
        panic!("no job {name} in {v}");
    })
}

fn states(v: &Value) -> Vec<(String, String)> {
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["name"].as_str().unwrap().into(), j["state"].as_str().unwrap().into()))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn a_diamond_runs_in_waves_and_reports_its_critical_path() {
    // b waits until c has ended and weaver has reaped it: c always ends
    // first, so d is started by b, and the critical path is a -> b -> d.
    let j = jobs(&format!(
        r#"
[[job]]
name = "a"
command = "touch {{dir}}/a.done"
shell = true

[[job]]
name = "b"
command = "[ -e {{dir}}/a.done ] || exit 9; {wait_c}; {wait_c_reaped}; touch {{dir}}/b.done"
shell = true
after = ["a"]

[[job]]
name = "c"
command = "[ -e {{dir}}/a.done ] || exit 9; echo $$ > {{dir}}/c.pid; touch {{dir}}/c.done"
shell = true
after = ["a"]

[[job]]
name = "d"
command = "[ -e {{dir}}/b.done ] && [ -e {{dir}}/c.done ]"
shell = true
after = ["b", "c"]
"#,
        wait_c = wait_file("c.done"),
        // Until weaver has reaped c (a zombie still answers kill -0), so
        // that c's end is seen before b's.
        wait_c_reaped = "p=$(cat {dir}/c.pid); i=0; while kill -0 $p 2>/dev/null; do \
                         i=$((i+1)); [ $i -gt 1000 ] && exit 8; sleep 0.01; done"
    ));
    let (code, v) = j.report(&[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        states(&v),
        pairs(&[("a", "passed"), ("b", "passed"), ("c", "passed"), ("d", "passed")])
    );
    assert_eq!(job(&v, "b")["started_by"], "a");
    assert_eq!(job(&v, "c")["started_by"], "a", "b and c are one wave");
    assert_eq!(job(&v, "d")["started_by"], "b");
    assert_eq!(v["critical_path"], serde_json::json!(["a", "b", "d"]));
    assert_eq!(
        (v["passed"].as_u64(), v["failed"].as_u64(), v["skipped"].as_u64()),
        (Some(4), Some(0), Some(0))
    );
    // Naming a job runs what it needs, and nothing else.
    let (code, v) = j.report(&["c"]);
    assert_eq!(code, 0);
    assert_eq!(states(&v), pairs(&[("a", "passed"), ("c", "passed")]));
    // Text mode, not a terminal: one line per change, then the summary.
    let out = j.run(&["run", "c"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("a: running (pid "), "{text}");
    assert!(text.contains("c: passed in "), "{text}");
    assert!(text.contains("critical path: a -> c"), "{text}");
}

#[test]
fn a_failure_skips_its_dependents_shows_in_logs_and_events_and_exits_1() {
    let j = jobs(
        r#"
[[job]]
name = "broken"
command = "echo starting; echo 'weights missing' >&2; exit 3"
shell = true

[[job]]
name = "after_broken"
command = ["true"]
after = ["broken"]

[[job]]
name = "then"
command = ["true"]
after = ["after_broken"]

[[job]]
name = "other"
command = ["true"]
"#,
    );
    let (code, v) = j.report(&[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        states(&v),
        pairs(&[
            ("broken", "failed"),
            ("after_broken", "skipped"),
            ("then", "skipped"),
            ("other", "passed")
        ])
    );
    let b = job(&v, "broken");
    assert_eq!(b["code"], 3);
    assert_eq!(b["stderr_tail"], serde_json::json!(["weights missing"]));
    assert_eq!(job(&v, "after_broken")["because"], "broken");
    assert_eq!(job(&v, "then")["because"], "after_broken");
    // The summary says it all in text too.
    let out = j.run(&["run", "then"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("exit 3\n    | weights missing"), "{text}");
    assert!(text.contains("skipped   then"), "{text}");
    // logs JOB: what it wrote, both streams.
    let logs = j.env.ok(&["logs", "broken"]);
    assert!(logs.contains("starting") && logs.contains("weights missing"), "{logs}");
    // events: started, exited, skipped, like processes.
    let mut child = j
        .env
        .cmd()
        .args(["events", "--json", "--history", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut found = (false, false, false);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while let Ok(l) = rx.recv_timeout(end.saturating_duration_since(std::time::Instant::now())) {
        let e: Value = serde_json::from_str(&l).unwrap();
        seen.push_str(&l);
        seen.push('\n');
        found.0 |= e["instance"] == "broken" && e["event"] == "started";
        found.1 |= e["instance"] == "broken" && e["event"] == "exited" && e["code"] == 3;
        found.2 |= e["instance"] == "then" && e["event"] == "skipped";
        if found == (true, true, true) {
            break;
        }
    }
    let ok = found == (true, true, true);
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "events lacked a job's started/exited/skipped:\n{seen}");
    // An unknown job is a clear error that names the jobs there are.
    let out = j.run(&["run", "brokn"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no job named \"brokn\"; jobs: after_broken, broken, other, then"),
        "{err}"
    );
}

#[test]
fn allow_failure_lets_dependents_run_and_the_run_pass() {
    let j = jobs(
        r#"
[[job]]
name = "flaky"
command = ["false"]
allow_failure = true

[[job]]
name = "next"
command = ["true"]
after = ["flaky"]
"#,
    );
    let (code, v) = j.report(&[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(states(&v), pairs(&[("flaky", "failed"), ("next", "passed")]));
    assert_eq!(job(&v, "flaky")["allow_failure"], true);
}

#[test]
fn sequential_stops_at_the_first_failure_unless_keep_going() {
    let j = jobs(
        r#"
[[job]]
name = "one"
command = "echo one >> {dir}/order"
shell = true

[[job]]
name = "two"
command = "echo two >> {dir}/order; exit 1"
shell = true

[[job]]
name = "three"
command = "echo three >> {dir}/order"
shell = true
"#,
    );
    let (code, v) = j.report(&["--sequential"]);
    assert_eq!(code, 1);
    assert_eq!(states(&v), pairs(&[("one", "passed"), ("two", "failed"), ("three", "skipped")]));
    assert_eq!(job(&v, "three")["because"], "two");
    assert_eq!(std::fs::read_to_string(j.file("order")).unwrap(), "one\ntwo\n");
    let (code, v) = j.report(&["--sequential", "--keep-going"]);
    assert_eq!(code, 1);
    assert_eq!(states(&v), pairs(&[("one", "passed"), ("two", "failed"), ("three", "passed")]));
    assert_eq!(std::fs::read_to_string(j.file("order")).unwrap(), "one\ntwo\none\ntwo\nthree\n");
    assert_eq!(job(&v, "three")["started_by"], "two", "one at a time");
}

#[test]
fn parallel_ignores_after() {
    // first waits for second's marker although second runs after first:
    // only a run that ignores `after` can pass.
    let j = jobs(&format!(
        r#"
[[job]]
name = "first"
command = "{}"
shell = true

[[job]]
name = "second"
command = "touch {{dir}}/second.done"
shell = true
after = ["first"]
"#,
        wait_file("second.done")
    ));
    let (code, v) = j.report(&["--parallel"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(states(&v), pairs(&[("first", "passed"), ("second", "passed")]));
}

#[test]
fn max_parallel_1_runs_one_job_at_a_time() {
    // Each job holds a directory as a lock while it runs: two at once
    // would fail one of them.
    let body = "mkdir {dir}/lock || exit 9; sleep 0.05; rmdir {dir}/lock";
    let j = jobs(&format!(
        "[[job]]\nname = \"a\"\ncommand = \"{body}\"\nshell = true\n\
         [[job]]\nname = \"b\"\ncommand = \"{body}\"\nshell = true\n\
         [[job]]\nname = \"c\"\ncommand = \"{body}\"\nshell = true\n"
    ));
    let (code, v) = j.report(&["--max-parallel", "1"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(job(&v, "b")["started_by"], "a");
    assert_eq!(job(&v, "c")["started_by"], "b");
    assert_eq!(v["critical_path"], serde_json::json!(["a", "b", "c"]));
    let out = j.run(&["run", "--max-parallel", "0"]);
    assert_eq!(out.status.code(), Some(2), "0 is refused by the command line");
}

#[test]
fn a_timeout_fails_the_job_with_124_and_escalates_to_sigkill() {
    let j = jobs(
        r#"
[[job]]
name = "slow"
command = "echo $$ > {dir}/slow.pid; exec sleep 60"
shell = true
timeout = "200ms"

[[job]]
name = "stubborn"
command = "echo $$ > {dir}/stubborn.pid; trap '' TERM; sleep 60 & echo $! > {dir}/stubborn_child.pid; wait"
shell = true
timeout = "200ms"
stop_timeout = "300ms"
"#,
    );
    let (code, v) = j.report(&[]);
    assert_eq!(code, 1, "a job's timeout fails the job, not the command: {v}");
    let s = job(&v, "slow");
    assert_eq!(
        (s["state"].as_str(), s["timed_out"].as_bool(), s["code"].as_i64()),
        (Some("failed"), Some(true), Some(124))
    );
    assert_eq!(s["signal"], "SIGTERM");
    let st = job(&v, "stubborn");
    assert_eq!((st["timed_out"].as_bool(), st["signal"].as_str()), (Some(true), Some("SIGKILL")));
    j.none_left(&["slow.pid", "stubborn.pid", "stubborn_child.pid"]);
}

#[test]
fn ctrl_c_cancels_the_run_and_leaves_nothing_running() {
    let j = jobs(
        r#"
[[job]]
name = "long"
command = "echo $$ > {dir}/long.pid; sleep 60 & echo $! > {dir}/long_child.pid; wait"
shell = true

[[job]]
name = "later"
command = ["true"]
after = ["long"]
"#,
    );
    j.env.ok(&["status", "--wait"]);
    let child =
        j.env.cmd().args(["run"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let cli = child.id();
    let started =
        wait_for(Duration::from_secs(10), || pidfile::read(&j.file("long_child.pid")).is_ok());
    assert!(started, "the job never started:\n{}", j.env.log());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("cancelled long"), "{text}");
    assert!(text.contains("cancelled later"), "{text}");
    assert!(text.contains("0 passed, 0 failed, 0 skipped, 2 cancelled"), "{text}");
    j.none_left(&["long.pid", "long_child.pid"]);
    // The daemon serves on.
    j.env.ok(&["runs"]);
}

#[test]
fn a_closed_connection_cancels_its_run() {
    let j = jobs(
        r#"
[[job]]
name = "long"
command = "echo $$ > {dir}/long.pid; exec sleep 60"
shell = true
"#,
    );
    j.env.ok(&["status", "--wait"]);
    let child =
        j.env.cmd().args(["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let cli = child.id();
    assert!(wait_for(Duration::from_secs(10), || pidfile::read(&j.file("long.pid")).is_ok()));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = wait_output(child, Duration::from_secs(10));
    j.none_left(&["long.pid"]);
    let runs: Value = serde_json::from_str(&j.env.ok(&["runs", "--json"])).unwrap();
    assert_eq!(runs[0]["cancelled"], true, "{runs}");
}

#[test]
fn detach_then_runs_and_attach() {
    let j = jobs(&format!(
        r#"
[[job]]
name = "gate"
command = "{}"
shell = true
"#,
        wait_file("open")
    ));
    let out: Value = serde_json::from_str(&j.env.ok(&["run", "--detach", "--json"])).unwrap();
    let id = out["id"].as_u64().expect("an id");
    let runs: Value = serde_json::from_str(&j.env.ok(&["runs", "--json"])).unwrap();
    assert_eq!(
        (runs[0]["id"].as_u64(), runs[0]["finished"].as_bool()),
        (Some(id), Some(false)),
        "{runs}"
    );
    std::fs::write(j.file("open"), "").unwrap();
    let (code, v) = j.report(&["--attach", &id.to_string()]);
    assert_eq!(code, 0, "{v}");
    assert_eq!((v["id"].as_u64(), v["finished"].as_bool()), (Some(id), Some(true)));
    let text = j.env.ok(&["runs"]);
    assert!(text.contains(&format!("{id:>4}  passed")), "{text}");
    let out = j.run(&["run", "--attach", "999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run 999"));
}

#[test]
fn a_cycle_is_a_config_error_with_its_location() {
    let j = jobs(
        "[[job]]\nname = \"a\"\ncommand = [\"true\"]\nafter = [\"b\"]\n\
         [[job]]\nname = \"b\"\ncommand = [\"true\"]\nafter = [\"a\"]\n",
    );
    let out = j.run(&["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("weaver.toml:4:10: job cycle: a -> b -> a"), "{err}");
}

#[test]
fn nothing_survives_weaver_killed_during_a_run() {
    let j = jobs(
        r#"
[[job]]
name = "long"
command = "echo $$ > {dir}/long.pid; setsid sleep 60 & echo $! > {dir}/escaped.pid; sleep 60 & echo $! > {dir}/child.pid; wait"
shell = true
"#,
    );
    j.env.ok(&["run", "--detach"]);
    let started = wait_for(Duration::from_secs(10), || pidfile::read(&j.file("child.pid")).is_ok());
    assert!(started, "{}", j.env.log());
    let daemon = j.env.daemon_pid().expect("a daemon");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    j.none_left(&["long.pid", "child.pid", "escaped.pid"]);
}

#[test]
fn what_a_job_leaves_behind_dies_with_it() {
    let j = jobs(
        r#"
[[job]]
name = "messy"
command = "sleep 60 & echo $! > {dir}/bg.pid; setsid sleep 60 & echo $! > {dir}/escaped.pid; exit 0"
shell = true
"#,
    );
    let (code, v) = j.report(&[]);
    assert_eq!(code, 0, "{v}");
    j.none_left(&["bg.pid", "escaped.pid"]);
    // The daemon still runs: they died with the job, not with weaver.
    assert!(j.env.daemon_pid().is_some());
}

#[test]
fn reload_changes_what_the_next_run_runs_and_a_bad_file_changes_nothing() {
    let j = jobs("[[job]]\nname = \"old\"\ncommand = [\"true\"]\n");
    let (code, v) = j.report(&[]);
    assert_eq!((code, states(&v)), (0, pairs(&[("old", "passed")])));
    let cfg = j.env.tmp.path().join("weaver.toml");
    std::fs::write(&cfg, "[[job]]\nname = \"new\"\ncommand = [\"true\"]\nafter = [\"nwe\"]\n")
        .unwrap();
    let out = j.run(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runs after unknown job \"nwe\""), "{err}");
    let (code, v) = j.report(&[]);
    assert_eq!(
        (code, states(&v)),
        (0, pairs(&[("old", "passed")])),
        "the bad file changed nothing"
    );
    std::fs::write(&cfg, "[[job]]\nname = \"new\"\ncommand = [\"true\"]\n").unwrap();
    j.env.ok(&["reload"]);
    let (code, v) = j.report(&[]);
    assert_eq!((code, states(&v)), (0, pairs(&[("new", "passed")])));
}

#[test]
fn send_reaches_a_running_job_with_a_stdin_pipe_and_only_while_it_runs() {
    let j = jobs(&format!(
        r#"
[[job]]
name = "reader"
command = "cat > {{dir}}/got"
shell = true
stdin = "pipe"

[[job]]
name = "plain"
command = "{}"
shell = true
"#,
        wait_file("open")
    ));
    let out: Value = serde_json::from_str(&j.env.ok(&["run", "--detach", "--json"])).unwrap();
    let id = out["id"].as_u64().expect("an id").to_string();
    let out = j.run(&["send", "plain", "--data", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job plain takes no input"), "{err}");
    j.env.ok(&["send", "reader", "--data", "hello\n", "--close"]);
    std::fs::write(j.file("open"), "").unwrap();
    let (code, v) = j.report(&["--attach", &id]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(job(&v, "reader")["state"], "passed", "{v}");
    assert_eq!(std::fs::read_to_string(j.file("got")).unwrap(), "hello\n");
    let out = j.run(&["send", "reader", "--data", "late"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job reader is not running"), "{err}");
}

/// On a terminal, `weaver run` shows a line per job updated in place
/// (running, with its elapsed time), then the summary.
#[test]
fn on_a_terminal_progress_is_drawn_in_place_then_the_summary() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let j = jobs(&format!(
        r#"
[[job]]
name = "gate"
command = "{}"
shell = true

[[job]]
name = "after_gate"
command = ["true"]
after = ["gate"]
"#,
        wait_file("open")
    ));
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave;
    let mut child = j
        .env
        .cmd()
        .arg("run")
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    j.env.track(child.id());
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut master = std::fs::File::from(pty.master);
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = master.read(&mut b) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&b[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let drawn = wait_for(Duration::from_secs(20), || {
        let t = text();
        t.contains("gate") && t.contains("running") && t.contains("pending")
    });
    assert!(drawn, "no live progress on the terminal: {:?}", text());
    // Drawn in place: the cursor goes back up over the job lines.
    assert!(text().contains("\x1b["), "no terminal control sequences: {:?}", text());
    std::fs::write(j.file("open"), "").unwrap();
    let mut status = None;
    assert!(wait_for(Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    }));
    assert_eq!(status.unwrap().code(), Some(0), "{}", text());
    drop(slave);
    let done = wait_for(Duration::from_secs(5), || text().contains("2 passed"));
    assert!(done, "no summary: {:?}", text());
    drop(reader);
}
