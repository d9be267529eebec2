//! Input to a supervised process, beside baselines from the same run (these
//! machines are shared and noisy; only ratios travel):
//! - throughput of `weaver send --input FILE` into `cat > /dev/null` (a
//!   process with `stdin = "pipe"`), beside this process writing the same
//!   bytes straight into a pipe to its own `cat > /dev/null`;
//! - the time of one small `weaver send`, beside one `weaver status` (a
//!   command's round trip to the daemon);
//! - the daemon's RSS after the bulk send, beside the same daemon idle
//!   before it.
//!
//! `cargo bench --bench stdin`; WEAVER_BENCH_QUICK=1 sends 4 MiB instead of
//! 256 MiB and times fewer sends.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{payload, percentile, proc_status_kb, quick, run_ok, timed, weaver_with_config};
use weaver::pidfile;

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");

const CONFIG: &str = r#"
[[process]]
name = "sink"
shell = true
command = "exec cat > /dev/null"
stdin = "pipe"
start_duration = 0
"#;

/// A bench daemon, shut down (or killed by pid) when dropped.
struct Daemon<'a> {
    rt: &'a Path,
    config: &'a Path,
}

impl Daemon<'_> {
    fn cmd(&self) -> Command {
        weaver_with_config(WEAVER, COMPUTE, self.rt, self.config)
    }

    fn pid(&self) -> u32 {
        pidfile::live_pid(&self.rt.join("weaver.pid")).expect("daemon running")
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let rec = pidfile::live_pid(&self.rt.join("weaver.pid")).and_then(pidfile::PidRecord::of);
        let mut shutdown = self.cmd();
        shutdown.arg("shutdown");
        common::stop_daemon(shutdown, rec);
    }
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Write `data` into a pipe to our own `cat > /dev/null`, in pieces of
/// 256 KiB, and wait for it: the baseline.
fn direct(data: &[u8]) -> Duration {
    let t = Instant::now();
    let mut c = Command::new("sh")
        .args(["-c", "exec cat > /dev/null"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn cat");
    let mut w = c.stdin.take().unwrap();
    for piece in data.chunks(256 * 1024) {
        w.write_all(piece).expect("write to cat");
    }
    drop(w);
    assert!(c.wait().expect("wait cat").success());
    t.elapsed()
}

fn main() {
    let tmp = tempfile::Builder::new().prefix("wvb").tempdir_in("/tmp").expect("temp dir");
    let rt = tmp.path().join("rt");
    let config = tmp.path().join("weaver.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let d = Daemon { rt: &rt, config: &config };
    let mut c = d.cmd();
    c.args(["status", "--wait"]);
    run_ok(c);
    // Until the sink runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = d.cmd().args(["ps", "--json"]).stdout(Stdio::piped()).output().expect("ps");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v[0]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the sink never ran: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let idle_kb = proc_status_kb(d.pid(), "VmRSS");

    let len = if quick() { 4 << 20 } else { 256 << 20 };
    let data = payload(len);
    let input = tmp.path().join("input");
    std::fs::write(&input, &data).expect("write input");
    let rounds = if quick() { 1 } else { 3 };
    let (mut via, mut base) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        base.push(direct(&data));
        let mut c = d.cmd();
        c.args(["send", "sink", "--input"]).arg(&input);
        via.push(timed(c));
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap();
    let (via_t, base_t) = (best(&via), best(&base));
    let after_kb = proc_status_kb(d.pid(), "VmRSS");

    let n = if quick() { 10 } else { 100 };
    let (mut sends, mut statuses) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let mut c = d.cmd();
        c.args(["status"]);
        statuses.push(timed(c));
        let mut c = d.cmd();
        c.args(["send", "sink", "--data", "x\n"]);
        sends.push(timed(c));
    }
    let (s50, b50) = (percentile(&mut sends, 0.5), percentile(&mut statuses, 0.5));
    let (s99, b99) = (percentile(&mut sends, 0.99), percentile(&mut statuses, 0.99));

    println!("stdin ({} MiB, best of {rounds}; {n} small sends)", len >> 20);
    println!(
        "  weaver send --input      {:>9.1} MiB/s   direct pipe {:>9.1} MiB/s   ratio {:.2}x the time",
        mib_per_s(len, via_t),
        mib_per_s(len, base_t),
        via_t.as_secs_f64() / base_t.as_secs_f64()
    );
    println!(
        "  weaver send --data (p50) {:>9.2} ms      weaver status {:>9.2} ms     ratio {:.2}x",
        s50.as_secs_f64() * 1e3,
        b50.as_secs_f64() * 1e3,
        s50.as_secs_f64() / b50.as_secs_f64()
    );
    println!(
        "  weaver send --data (p99) {:>9.2} ms      weaver status {:>9.2} ms     ratio {:.2}x",
        s99.as_secs_f64() * 1e3,
        b99.as_secs_f64() * 1e3,
        s99.as_secs_f64() / b99.as_secs_f64()
    );
    println!(
        "  daemon RSS after the sends {:>7} kB      idle before {:>7} kB         ratio {:.2}x",
        after_kb,
        idle_kb,
        after_kb as f64 / idle_kb as f64
    );
}
