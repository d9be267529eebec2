//! Supervision figures of real weaver daemons, each beside a baseline taken
//! in the same run (these machines are shared and noisy; only ratios travel):
//! - child exit -> respawn, with no restart delay configured (goal p50 and
//!   p99 < 2 ms), beside this process spawning and waiting for the same
//!   child in a loop;
//! - the daemon's RSS while it supervises 100 processes (goal < 10 MB;
//!   supervisord about 32 MB, pm2 about 75 MB), beside an idle daemon;
//! - `weaver ps` (and `ps --json`) against a daemon running 500 processes,
//!   beside `ps` against a daemon running none;
//! - the CPU a crash-looping process under backoff costs the daemon, beside
//!   an idle daemon over the same window, and per restart beside this
//!   process spawning and reaping the same program itself.
//!
//! Every daemon gets its own runtime dir and `--config` file under one temp
//! dir; each is stopped with `weaver shutdown` and, should that fail,
//! killed by pid (the pid file's start time guards against a recycled pid).
//!
//! `cargo bench --bench supervise`; WEAVER_BENCH_QUICK=1 runs fewer rounds.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cpu_ns, median, percentile, proc_status_kb, quick, run_ok, timed};
use weaver::pidfile::{self, PidRecord};

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");

/// Set in the environment of this executable when it runs as the child of
/// the respawn figure: the file to append its start and exit times to.
const STAMPS_ENV: &str = "WEAVER_BENCH_STAMPS";

/// Nanoseconds of CLOCK_MONOTONIC (the same clock in every process).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The respawn figure's child: one line "START EXIT" (monotonic ns), then
/// exit 0.
fn stamp_and_exit(start: u64, path: std::ffi::OsString) -> ! {
    let mut f = fs::OpenOptions::new().append(true).create(true).open(path).expect("stamps file");
    let line = format!("{start} {}\n", mono_ns());
    f.write_all(line.as_bytes()).expect("write stamps");
    std::process::exit(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// utime + stime of `pid` in clock ticks (a cross-check of [`cpu_ns`]).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let rest = &stat[stat.rfind(')').expect("stat has a command") + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15; `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Voluntary plus involuntary context switches of `pid`'s main thread.
fn switches(pid: u32) -> u64 {
    proc_status_kb(pid, "voluntary_ctxt_switches")
        + proc_status_kb(pid, "nonvoluntary_ctxt_switches")
}

// ---------------------------------------------------------------- daemons

/// One weaver daemon with its own runtime dir and configuration file;
/// stopped (and, failing that, killed) when dropped.
struct Daemon {
    rt: PathBuf,
    config: PathBuf,
    rec: Option<PidRecord>,
    /// `stop` has run.
    stopped: bool,
}

impl Daemon {
    /// Write `toml` as the configuration and start a daemon on it.
    fn start(base: &Path, name: &str, toml: &str) -> Daemon {
        let rt = base.join(name);
        let config = base.join(format!("{name}.toml"));
        fs::write(&config, toml).expect("write config");
        // Built before the daemon starts, so that whatever fails below, its
        // drop stops what was started.
        let mut d = Daemon { rt, config, rec: None, stopped: false };
        let mut c = d.weaver_base();
        c.arg("status");
        run_ok(c);
        d.rec = d.pid_record();
        let Some(rec) = d.rec else {
            panic!("no live daemon in {} after starting one", d.rt.display())
        };
        // The daemon and what it started first (its guard, compute): once
        // stopped, they must also have been reaped before we finish.
        let mut family = vec![(rec.pid, rec.start_time)];
        let me = rec.pid;
        if let Ok(list) = fs::read_to_string(format!("/proc/{me}/task/{me}/children")) {
            family.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .filter_map(|p| Some((p, pidfile::start_time(p)?))),
            );
        }
        EXITED.lock().unwrap().extend(family);
        d
    }

    /// The live daemon the pid file names.
    fn pid_record(&self) -> Option<PidRecord> {
        PidRecord::of(pidfile::live_pid(&self.rt.join("weaver.pid"))?)
    }

    fn weaver_base(&self) -> Command {
        common::weaver_with_config(WEAVER, COMPUTE, &self.rt, &self.config)
    }

    /// `weaver ARGS` against this daemon; never starts another one.
    fn weaver(&self, args: &[&str]) -> Command {
        let mut c = self.weaver_base();
        c.arg("--no-start").args(args);
        c
    }

    fn pid(&self) -> u32 {
        self.rec.expect("daemon started").pid
    }

    fn ps(&self) -> Vec<serde_json::Value> {
        let out = self.weaver(&["ps", "--json"]).stdout(Stdio::piped()).output().expect("ps");
        assert!(out.status.success(), "weaver ps --json failed: {}", out.status);
        serde_json::from_slice(&out.stdout).expect("ps --json is a JSON array")
    }

    /// Wait until `n` instances are listed and every one is in `state`.
    fn wait_all(&self, n: usize, state: &str, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let rows = self.ps();
            let there = rows.iter().filter(|r| r["state"] == state).count();
            if rows.len() == n && there == n {
                return;
            }
            if let Some(r) = rows.iter().find(|r| r["state"] == "failed" && state != "failed") {
                panic!("waiting for {n} instances {state}, one failed: {r}");
            }
            assert!(
                Instant::now() < end,
                "{} of {n} instances {state} after {limit:?} ({} listed); first other: {:?}",
                there,
                rows.len(),
                rows.iter().find(|r| r["state"] != state)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn restarts(&self, name: &str) -> u64 {
        self.ps()
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["restarts"].as_u64())
            .expect("instance listed with restarts")
    }

    /// `weaver shutdown`; then SIGKILL by pid if the daemon is still there.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let rec = self.rec.or_else(|| self.pid_record());
        common::stop_daemon(self.weaver(&["shutdown"]), rec);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// (pid, start time) of every daemon, guard and compute the bench started.
static EXITED: std::sync::Mutex<Vec<(u32, u64)>> = std::sync::Mutex::new(Vec::new());

/// Start time of `pid`, zombie or not.
fn any_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(19)?.parse().ok()
}

/// A stopped daemon exits as an orphan: wait (a little) for init to reap
/// it, its guard and compute, so that nothing of ours is listed by
/// `pgrep` once the bench returns, not even a zombie.
fn wait_reaped(limit: Duration) {
    let end = Instant::now() + limit;
    let list = EXITED.lock().unwrap().clone();
    loop {
        let left: Vec<u32> = list
            .iter()
            .filter(|&&(pid, start)| any_start_time(pid) == Some(start))
            .map(|&(pid, _)| pid)
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= end {
            eprintln!("still listed after {limit:?} (not reaped by their parent yet): {left:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` instances of `sleep 1000` named `name`.
fn sleepers(name: &str, n: usize) -> String {
    format!(
        "[[process]]\nname = \"{name}\"\ncommand = [\"sleep\", \"1000\"]\ninstances = {n}\nstart_duration = \"0\"\n"
    )
}

// ---------------------------------------------------------------- 1. respawn

/// Gaps between one run's exit stamp and the next run's start stamp, in
/// the order written; the first `skip` are dropped (warm-up).
fn gaps(text: &str, skip: usize) -> Vec<Duration> {
    let runs: Vec<(u64, u64)> = text
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace().map(|v| v.parse::<u64>().expect("stamp"));
            (it.next().expect("start stamp"), it.next().expect("exit stamp"))
        })
        .collect();
    runs.windows(2)
        .map(|w| Duration::from_nanos(w[1].0.saturating_sub(w[0].1)))
        .skip(skip)
        .collect()
}

fn lines_in(path: &Path) -> usize {
    fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

/// Spawn the stamping child `n` times in a row from this process and wait
/// for each. `like_weaver`: with the options weaver's spawn uses (own
/// process group, parent-death signal in a pre_exec hook, piped output).
fn spawn_loop(exe: &Path, stamps: &Path, n: usize, like_weaver: bool) {
    for _ in 0..n {
        let mut c = Command::new(exe);
        c.env(STAMPS_ENV, stamps).stdin(Stdio::null());
        if like_weaver {
            c.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                c.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        } else {
            c.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let s = c.status().expect("spawn the stamping child");
        assert!(s.success(), "stamping child failed: {s}");
    }
}

struct Respawn {
    n: usize,
    rounds: usize,
    weaver: (Duration, Duration),
    plain: (Duration, Duration),
    like: (Duration, Duration),
    /// Median over rounds of (weaver p50 / plain p50) within the round.
    ratio: f64,
}

fn p50_p99(v: &mut [Duration]) -> (Duration, Duration) {
    (percentile(v, 50.0), percentile(v, 99.0))
}

/// A process that exits at once, restarted with no delay: the gap from
/// one run's exit to the next run's start. Rounds interleave the daemon's
/// restarts with this process spawning the same child itself, so that the
/// ratio sees the same machine load.
fn respawn(base: &Path) -> Respawn {
    let exe = std::env::current_exe().expect("own executable");
    let (rounds, per, skip) = if quick() { (4, 30, 3) } else { (16, 120, 3) };
    let stamps = base.join("stamps");
    let toml = format!(
        "[[process]]\n\
         name = \"bounce\"\n\
         command = [{}]\n\
         env = {{ {STAMPS_ENV} = {} }}\n\
         start_duration = \"0\"\n\
         restart_interval = \"0\"\n\
         backoff_factor = 1.0\n\
         backoff_jitter = 0.0\n\
         stable_after = \"1s\"\n\
         max_restarts = 0\n",
        toml_str(&exe.to_string_lossy()),
        toml_str(&stamps.to_string_lossy())
    );
    let (mut w, mut plain, mut like, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut d = Daemon::start(base, "b", &toml);
    // It starts with the daemon; each round starts it afresh.
    run_ok(d.weaver(&["stop", "bounce"]));
    d.wait_all(1, "stopped", Duration::from_secs(10));
    let _ = fs::remove_file(&stamps);
    for round in 0..rounds {
        let (mut rw, mut rp) = (Vec::new(), Vec::new());
        for step in 0..3 {
            // Alternate which goes first.
            match (step + round) % 3 {
                0 => {
                    run_ok(d.weaver(&["start", "bounce"]));
                    let end = Instant::now() + Duration::from_secs(60);
                    while lines_in(&stamps) < per + skip + 1 {
                        let n = lines_in(&stamps);
                        assert!(Instant::now() < end, "bounce made {n} runs in 60 s");
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    run_ok(d.weaver(&["stop", "bounce"]));
                    d.wait_all(1, "stopped", Duration::from_secs(10));
                    let text = fs::read_to_string(&stamps).expect("stamps");
                    fs::remove_file(&stamps).expect("remove stamps");
                    rw = gaps(&text, skip);
                }
                k => {
                    let like_weaver = k == 2;
                    let path = base.join(if like_weaver { "stamps-like" } else { "stamps-plain" });
                    spawn_loop(&exe, &path, per + skip + 1, like_weaver);
                    let text = fs::read_to_string(&path).expect("stamps");
                    fs::remove_file(&path).expect("remove stamps");
                    let g = gaps(&text, skip);
                    if like_weaver {
                        like.extend(g);
                    } else {
                        rp = g;
                    }
                }
            }
        }
        ratios.push(
            percentile(&mut rw, 50.0).as_secs_f64() / percentile(&mut rp, 50.0).as_secs_f64(),
        );
        w.extend(rw);
        plain.extend(rp);
    }
    d.stop();
    Respawn {
        n: w.len(),
        rounds,
        weaver: p50_p99(&mut w),
        plain: p50_p99(&mut plain),
        like: p50_p99(&mut like),
        ratio: median(&mut ratios),
    }
}

// ---------------------------------------------------------------- 4. crash loop

struct CrashLoop {
    window: Duration,
    restarts: u64,
    cpu: u64,
    cpu_ticks: u64,
    idle_cpu: u64,
    switches: u64,
    raw_per_spawn: u64,
}

/// Spawn `false` as weaver does (own process group, parent-death signal in
/// a pre_exec hook, piped output) and reap it; the CPU this thread spent.
fn spawn_false_cpu() -> u64 {
    let t0 = thread_cpu_ns();
    let mut c = Command::new("false");
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _ = c.status().expect("spawn false");
    thread_cpu_ns() - t0
}

/// The crash loop's backoff cap.
const CAP: Duration = Duration::from_millis(200);

fn crash_loop(base: &Path, idle: &Daemon) -> CrashLoop {
    let (settle, window) = if quick() {
        (Duration::from_millis(500), Duration::from_secs(1))
    } else {
        (Duration::from_secs(1), Duration::from_secs(3))
    };
    let toml = format!(
        "[[process]]\n\
         name = \"crash\"\n\
         command = [\"false\"]\n\
         start_duration = \"0\"\n\
         restart_interval = \"10ms\"\n\
         backoff_factor = 2.0\n\
         backoff_cap = \"{}ms\"\n\
         max_restarts = 0\n",
        CAP.as_millis()
    );
    let mut d = Daemon::start(base, "c", &toml);
    // Past the first delays (10, 20, 40, 80, 160 ms): at the cap.
    std::thread::sleep(settle);
    let r0 = d.restarts("crash");
    let (c0, k0, i0, s0) =
        (cpu_ns(d.pid()), cpu_ticks(d.pid()), cpu_ns(idle.pid()), switches(d.pid()));
    let t0 = Instant::now();
    // Meanwhile this thread spawns and reaps `false` itself at the daemon's
    // pace (one per backoff cap), so both pay the same cold caches.
    let (mut raw, mut spawns) = (0u64, 0u32);
    while t0.elapsed() + CAP < window {
        raw += spawn_false_cpu();
        spawns += 1;
        std::thread::sleep((t0 + CAP * spawns).saturating_duration_since(Instant::now()));
    }
    std::thread::sleep((t0 + window).saturating_duration_since(Instant::now()));
    let (c1, k1, i1, s1) =
        (cpu_ns(d.pid()), cpu_ticks(d.pid()), cpu_ns(idle.pid()), switches(d.pid()));
    let window = t0.elapsed();
    let r1 = d.restarts("crash");
    d.stop();
    let raw_per_spawn = raw / u64::from(spawns.max(1));
    CrashLoop {
        window,
        restarts: r1 - r0,
        cpu: c1 - c0,
        cpu_ticks: k1 - k0,
        idle_cpu: i1 - i0,
        switches: s1 - s0,
        raw_per_spawn,
    }
}

// ---------------------------------------------------------------- main

fn main() {
    let start = mono_ns();
    if let Some(path) = std::env::var_os(STAMPS_ENV) {
        stamp_and_exit(start, path);
    }
    let t_all = Instant::now();
    let tmp = tempfile::Builder::new().prefix("wvs").tempdir_in("/tmp").unwrap();
    let base = tmp.path();
    let mut table: Vec<[String; 5]> = Vec::new();

    // 1. child exit -> respawn.
    let r = respawn(base);
    println!(
        "respawn after exit ({} restarts in {} rounds): p50 {:.3} ms, p99 {:.3} ms (goal < 2 ms) | \
         this process spawning the same child: p50 {:.3} ms, p99 {:.3} ms; with weaver's spawn \
         options p50 {:.3} ms, p99 {:.3} ms | ratio p50 {:.2}x, p99 {:.2}x, median of per-round \
         p50 ratios {:.2}x",
        r.n,
        r.rounds,
        ms(r.weaver.0),
        ms(r.weaver.1),
        ms(r.plain.0),
        ms(r.plain.1),
        ms(r.like.0),
        ms(r.like.1),
        r.weaver.0.as_secs_f64() / r.plain.0.as_secs_f64(),
        r.weaver.1.as_secs_f64() / r.plain.1.as_secs_f64(),
        r.ratio,
    );
    for (label, w, p, ratio) in [
        ("respawn p50", r.weaver.0, r.plain.0, r.ratio),
        ("respawn p99", r.weaver.1, r.plain.1, r.weaver.1.as_secs_f64() / r.plain.1.as_secs_f64()),
    ] {
        table.push([
            label.into(),
            format!("{:.3} ms", ms(w)),
            format!("{:.3} ms spawn+wait", ms(p)),
            format!("{ratio:.2}x"),
            "< 2 ms".into(),
        ]);
    }

    // The idle daemon: baseline of figures 2, 3 and 4.
    let idle = Daemon::start(base, "i", "");
    idle.wait_all(0, "running", Duration::from_secs(5));

    // 2. RSS with 100 supervised processes.
    let (kb, hwm, idle_kb) = {
        let mut d = Daemon::start(base, "h", &sleepers("nap", 100));
        d.wait_all(100, "running", Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(200));
        // The same requests to both, then read both.
        idle.ps();
        d.ps();
        let idle_kb = proc_status_kb(idle.pid(), "VmRSS");
        let kb = proc_status_kb(d.pid(), "VmRSS");
        let hwm = proc_status_kb(d.pid(), "VmHWM");
        d.stop();
        (kb, hwm, idle_kb)
    };
    println!(
        "daemon RSS with 100 processes running: {kb} kB (peak {hwm} kB) (goal < 10240 kB; \
         supervisord ~32 MB, pm2 ~75 MB) | idle daemon {idle_kb} kB | ratio {:.2}x, {:.1} kB per process",
        kb as f64 / idle_kb as f64,
        (kb as f64 - idle_kb as f64) / 100.0
    );
    table.push([
        "RSS, 100 processes".into(),
        format!("{kb} kB"),
        format!("{idle_kb} kB idle"),
        format!("{:.2}x", kb as f64 / idle_kb as f64),
        "< 10240 kB".into(),
    ]);

    // 3. `weaver ps` with 500 processes.
    {
        let d = Daemon::start(base, "p", &sleepers("fleet", 500));
        d.wait_all(500, "running", Duration::from_secs(60));
        let kb500 = proc_status_kb(d.pid(), "VmRSS");
        let rounds = if quick() { 20 } else { 200 };
        let (mut ps, mut psj, mut ps0, mut st) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds + 5 {
            let a = timed(d.weaver(&["ps"]));
            let b = timed(d.weaver(&["ps", "--json"]));
            let c = timed(idle.weaver(&["ps"]));
            let e = timed(d.weaver(&["status"]));
            if i >= 5 {
                ps.push(a);
                psj.push(b);
                ps0.push(c);
                st.push(e);
            }
        }
        let (p50, p99) = p50_p99(&mut ps);
        let (j50, j99) = p50_p99(&mut psj);
        let (z50, z99) = p50_p99(&mut ps0);
        let (s50, _) = p50_p99(&mut st);
        println!(
            "`weaver ps` with 500 processes ({rounds} runs): p50 {:.2} ms, p99 {:.2} ms; --json p50 \
             {:.2} ms, p99 {:.2} ms | `ps` with 0 processes p50 {:.2} ms, p99 {:.2} ms; `status` \
             (same daemon) p50 {:.2} ms | ratio {:.2}x, --json {:.2}x | daemon RSS {kb500} kB",
            ms(p50),
            ms(p99),
            ms(j50),
            ms(j99),
            ms(z50),
            ms(z99),
            ms(s50),
            p50.as_secs_f64() / z50.as_secs_f64(),
            j50.as_secs_f64() / z50.as_secs_f64(),
        );
        table.push([
            "ps, 500 processes p50".into(),
            format!("{:.2} ms", ms(p50)),
            format!("{:.2} ms 0 processes", ms(z50)),
            format!("{:.2}x", p50.as_secs_f64() / z50.as_secs_f64()),
            "-".into(),
        ]);
        table.push([
            "ps --json, 500 p50".into(),
            format!("{:.2} ms", ms(j50)),
            format!("{:.2} ms 0 processes", ms(z50)),
            format!("{:.2}x", j50.as_secs_f64() / z50.as_secs_f64()),
            "-".into(),
        ]);
        table.push([
            "RSS, 500 processes".into(),
            format!("{kb500} kB"),
            format!("{idle_kb} kB idle"),
            format!("{:.2}x", kb500 as f64 / idle_kb as f64),
            "-".into(),
        ]);
    }

    // 4. CPU of a crash loop under backoff.
    let c = crash_loop(base, &idle);
    let secs = c.window.as_secs_f64();
    let pct = c.cpu as f64 / 1e9 / secs * 100.0;
    let idle_pct = c.idle_cpu as f64 / 1e9 / secs * 100.0;
    let per_restart = (c.cpu.saturating_sub(c.idle_cpu)) as f64 / 1e6 / c.restarts.max(1) as f64;
    let raw = c.raw_per_spawn as f64 / 1e6;
    println!(
        "crash loop (`false`, 10 ms doubling to a 200 ms cap) over {secs:.2} s: {} restarts, daemon \
         CPU {:.2} ms = {pct:.3} % of a core ({} ticks of {} ms), {:.1} wakeups per restart | idle \
         daemon {:.2} ms = {idle_pct:.3} % | {per_restart:.3} ms CPU per restart beyond idle vs \
         {raw:.3} ms for this process to spawn and reap `false` at the same pace | ratio {:.2}x",
        c.restarts,
        c.cpu as f64 / 1e6,
        c.cpu_ticks,
        1000 / clock_ticks_per_s(),
        c.switches as f64 / c.restarts.max(1) as f64,
        c.idle_cpu as f64 / 1e6,
        per_restart / raw,
    );
    table.push([
        "crash loop CPU".into(),
        format!("{pct:.3} % core"),
        format!("{idle_pct:.3} % idle"),
        "-".into(),
        "-".into(),
    ]);
    table.push([
        "CPU per restart".into(),
        format!("{per_restart:.3} ms"),
        format!("{raw:.3} ms spawn+reap"),
        format!("{:.2}x", per_restart / raw),
        "-".into(),
    ]);
    drop(idle);
    let t_reap = Instant::now();
    wait_reaped(Duration::from_secs(10));
    let reap = t_reap.elapsed();

    println!();
    println!(
        "{:<22}  {:>14}  {:>24}  {:>7}  {:>11}",
        "figure", "weaver", "baseline", "ratio", "goal"
    );
    for row in &table {
        println!("{:<22}  {:>14}  {:>24}  {:>7}  {:>11}", row[0], row[1], row[2], row[3], row[4]);
    }
    println!(
        "(whole run {:.1} s, of which {:.1} s waiting for stopped daemons to be reaped)",
        t_all.elapsed().as_secs_f64(),
        reap.as_secs_f64()
    );
}
