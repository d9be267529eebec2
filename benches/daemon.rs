//! Whole-process figures of the weaver daemon, each against a baseline taken
//! in the same run (these machines are shared and noisy; only ratios travel):
//! - `weaver --version` and `weaver status` against a warm daemon vs running
//!   `true`, interleaved (goal: status within 1.5x);
//! - cold start: no daemon to the first `status` answer with compute
//!   connected (goal < 30 ms), beside the cost of spawning `true`;
//! - compute's exit after `kill -9` of weaver (goal p99 < 50 ms over 100
//!   runs), beside the same measurement for a plain `sleep`;
//! - the daemon's RSS when idle with compute connected (goal < 5 MB).
//!
//! `cargo bench --bench daemon`; WEAVER_BENCH_QUICK=1 runs fewer rounds.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{proc_status_kb, quick, run_ok, timed};

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");

fn weaver(rt: &Path) -> Command {
    let mut c = Command::new(WEAVER);
    c.env("WEAVER_RUNTIME_DIR", rt)
        // Revisions of the bench daemon, beside its runtime dir.
        .env("WEAVER_STATE_DIR", rt.with_file_name("state"))
        .env("WEAVER_COMPUTE_BIN", COMPUTE)
        .env("WEAVER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn daemon_pid(rt: &Path) -> u32 {
    weaver::pidfile::live_pid(&rt.join("weaver.pid")).expect("daemon running")
}

fn compute_pid(rt: &Path) -> u32 {
    let out =
        weaver(rt).args(["status", "--json", "--wait"]).stdout(Stdio::piped()).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["compute"]["pid"].as_u64().expect("compute connected") as u32
}

fn shutdown(rt: &Path) {
    run_ok({
        let mut c = weaver(rt);
        c.arg("shutdown");
        c
    });
}

/// Wait for `pid` to exit through a pidfd: no polling interval in the way.
fn wait_exit(pidfd: &OwnedFd) {
    use std::os::fd::AsFd;
    let mut p = [nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
    nix::poll::poll(&mut p, nix::poll::PollTimeout::from(5000u16)).unwrap();
    assert!(p[0].revents().is_some_and(|r| !r.is_empty()), "process did not exit within 5 s");
}

fn pidfd(pid: u32) -> OwnedFd {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmRSS")
}

fn fresh_dir(base: &Path, i: usize) -> PathBuf {
    base.join(format!("rt{i}"))
}

fn main() {
    let tmp = tempfile::Builder::new().prefix("wvb").tempdir_in("/tmp").unwrap();
    let rounds = if quick() { 20 } else { 200 };

    // 1. the command line against a warm daemon vs `true`, interleaved.
    let rt = fresh_dir(tmp.path(), 0);
    compute_pid(&rt);
    let (mut st, mut ver, mut tr) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        st.push(timed({
            let mut c = weaver(&rt);
            c.arg("status");
            c
        }));
        ver.push(timed({
            let mut c = weaver(&rt);
            c.arg("--version");
            c
        }));
        tr.push(timed(Command::new("true")));
    }
    let (s50, v50, t50) = (pct(&mut st, 0.5), pct(&mut ver, 0.5), pct(&mut tr, 0.5));
    println!(
        "`true`: p50 {:.2} ms, p90 {:.2} ms (the baseline: a process that does nothing)",
        ms(t50),
        ms(pct(&mut tr, 0.9))
    );
    println!(
        "`weaver --version`: p50 {:.2} ms, p90 {:.2} ms | ratio {:.2}x `true`",
        ms(v50),
        ms(pct(&mut ver, 0.9)),
        v50.as_secs_f64() / t50.as_secs_f64()
    );
    println!(
        "`weaver status` (warm daemon): p50 {:.2} ms, p90 {:.2} ms | ratio {:.2}x `true` (goal <= 1.5x)",
        ms(s50),
        ms(pct(&mut st, 0.9)),
        s50.as_secs_f64() / t50.as_secs_f64()
    );

    // 4. idle RSS with compute connected.
    std::thread::sleep(Duration::from_millis(200));
    let d = daemon_pid(&rt);
    let c = compute_pid(&rt);
    let sleeper = Command::new("sleep").arg("10").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let base = rss_kb(sleeper.id());
    println!(
        "daemon RSS idle: {} kB (goal < 5000 kB); compute {} kB; baseline `sleep` {} kB | ratio {:.2}x",
        rss_kb(d),
        rss_kb(c),
        base,
        rss_kb(d) as f64 / base as f64
    );
    let mut sleeper = sleeper;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    shutdown(&rt);

    // 2. cold start.
    let n = if quick() { 5 } else { 30 };
    let (mut cold, mut spawn) = (Vec::new(), Vec::new());
    for i in 0..n {
        let rt = fresh_dir(tmp.path(), 100 + i);
        cold.push(timed({
            let mut c = weaver(&rt);
            c.args(["status", "--wait"]);
            c
        }));
        spawn.push(timed(Command::new("true")));
        shutdown(&rt);
    }
    let c50 = pct(&mut cold, 0.5);
    println!(
        "cold start to status with compute connected: p50 {:.2} ms, max {:.2} ms (goal < 30 ms) | `true` p50 {:.2} ms | ratio {:.1}x",
        ms(c50),
        ms(pct(&mut cold, 1.0)),
        ms(pct(&mut spawn, 0.5)),
        c50.as_secs_f64() / pct(&mut spawn, 0.5).as_secs_f64()
    );

    // 3. compute exit after kill -9 of weaver.
    let n = if quick() { 10 } else { 100 };
    let (mut lat, mut base) = (Vec::new(), Vec::new());
    for i in 0..n {
        let rt = fresh_dir(tmp.path(), 1000 + i);
        let cpid = compute_pid(&rt);
        let dpid = daemon_pid(&rt);
        let fd = pidfd(cpid);
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(dpid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_exit(&fd);
        lat.push(t.elapsed());
        let dfd = pidfd(dpid);
        wait_exit(&dfd);

        let mut s = Command::new("sleep").arg("30").spawn().unwrap();
        let fd = pidfd(s.id());
        let t = Instant::now();
        s.kill().unwrap();
        wait_exit(&fd);
        base.push(t.elapsed());
        let _ = s.wait();
    }
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let b50 = pct(&mut base, 0.5);
    println!(
        "compute exit after kill -9 of weaver ({n} runs): p50 {:.3} ms, p99 {:.3} ms (goal p99 < 50 ms) | direct kill of `sleep` p50 {:.3} ms | ratio {:.1}x",
        ms(p50),
        ms(p99),
        ms(b50),
        p50.as_secs_f64() / b50.as_secs_f64()
    );
}
