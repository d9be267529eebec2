//! `weaver run` against a shell loop, in the same run (these machines are
//! shared and noisy; only ratios travel):
//! - a chain of 100 `/bin/true` jobs (each after the one before);
//! - a fan of 100 independent `/bin/true` jobs with `--max-parallel 2`;
//!
//! each beside `sh -c 'for i in ...; do /bin/true; done'` spawning
//! `/bin/true` the same number of times (goal: within 2x of it). The
//! figure for weaver is the whole `weaver run` command (connect, run,
//! summary); the daemon's own duration of the run is printed beside it.
//!
//! One daemon with its own runtime dir and `--config` file under a temp
//! dir, stopped with `weaver shutdown` (and killed by pid should that
//! fail).
//!
//! `cargo bench --bench run`; WEAVER_BENCH_QUICK=1 runs fewer rounds.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{percentile, quick, run_ok, timed};
use weaver::pidfile::{self, PidRecord};

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");
const JOBS: usize = 100;

struct Daemon {
    rt: PathBuf,
    config: PathBuf,
    rec: Option<PidRecord>,
}

impl Daemon {
    fn weaver(&self, args: &[&str]) -> Command {
        let mut c = common::weaver_with_config(WEAVER, COMPUTE, &self.rt, &self.config);
        c.args(args);
        c
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        common::stop_daemon(self.weaver(&["--no-start", "shutdown"]), self.rec);
    }
}

/// `weaver run ARGS --json`: the wall time of the command and the run's
/// duration as the daemon measured it.
fn weaver_run(d: &Daemon, args: &[&str]) -> (Duration, Duration) {
    let mut c = d.weaver(&["--no-start", "run", "--json"]);
    c.args(args).stdout(Stdio::piped());
    let t = Instant::now();
    let out = c.output().expect("weaver run");
    let wall = t.elapsed();
    assert!(out.status.success(), "weaver run {args:?} failed: {}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(v["passed"].as_u64(), Some(JOBS as u64), "every job passed");
    (wall, Duration::from_millis(v["duration_ms"].as_u64().unwrap_or(0)))
}

fn shell_loop() -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("i=0; while [ $i -lt {JOBS} ]; do /bin/true; i=$((i+1)); done"))
        .stdin(Stdio::null());
    c
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let rounds = if quick() { 2 } else { 10 };
    let tmp = tempfile::Builder::new().prefix("wvrun").tempdir_in("/tmp").expect("temp dir");
    let mut toml = String::new();
    for i in 0..JOBS {
        let _ = write!(toml, "[[job]]\nname = \"c{i}\"\ncommand = [\"/bin/true\"]\n");
        if i > 0 {
            let _ = writeln!(toml, "after = [\"c{}\"]", i - 1);
        }
        let _ = write!(toml, "[[job]]\nname = \"f{i}\"\ncommand = [\"/bin/true\"]\n");
    }
    let config = tmp.path().join("weaver.toml");
    fs::write(&config, toml).expect("write config");
    let mut d = Daemon { rt: tmp.path().join("rt"), config, rec: None };
    run_ok(d.weaver(&["status", "--wait"]));
    d.rec = pidfile::live_pid(&d.rt.join("weaver.pid")).and_then(PidRecord::of);
    let chain_last = format!("c{}", JOBS - 1);
    let fan: Vec<String> = (0..JOBS).map(|i| format!("f{i}")).collect();
    let mut fan_args: Vec<&str> = vec!["--max-parallel", "2"];
    fan_args.extend(fan.iter().map(String::as_str));
    // Warm-up: page cache, the daemon's first spawns.
    weaver_run(&d, &[&chain_last]);
    timed(shell_loop());
    let (mut chain, mut chain_d, mut fanned, mut fan_d, mut shell) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (w, r) = weaver_run(&d, &[&chain_last]);
        chain.push(w);
        chain_d.push(r);
        shell.push(timed(shell_loop()));
        let (w, r) = weaver_run(&d, &fan_args);
        fanned.push(w);
        fan_d.push(r);
        shell.push(timed(shell_loop()));
    }
    let base = percentile(&mut shell, 50.0);
    println!(
        "weaver run, {JOBS} /bin/true jobs, median of {rounds} rounds (shell loop: {} rounds)",
        shell.len()
    );
    println!("  shell loop ({JOBS} x /bin/true)          {:8.2} ms  (baseline)", ms(base));
    for (label, wall, daemon) in [
        ("chain (each after the one before)", &mut chain, &mut chain_d),
        ("fan, --max-parallel 2           ", &mut fanned, &mut fan_d),
    ] {
        let w = percentile(wall, 50.0);
        let r = percentile(daemon, 50.0);
        println!(
            "  {label}  {:8.2} ms  ratio {:.2}x the shell loop (goal <= 2x); the daemon's run: {:.2} ms ({:.2}x)",
            ms(w),
            ms(w) / ms(base),
            ms(r),
            ms(r) / ms(base)
        );
    }
}
