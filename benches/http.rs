//! The HTTP endpoint's figures against a real daemon, each beside a
//! baseline taken in the same run on the same port (these machines are
//! shared and noisy; only ratios travel): `GET /metrics` with 500
//! supervised processes and `GET /health`, p50 and p99, each on a fresh
//! connection and on a kept-alive one, beside a bare TCP connect-and-close
//! to the same port.
//!
//! `cargo bench --bench http`; WEAVER_BENCH_QUICK=1 runs fewer rounds with
//! 50 processes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{iterations, percentile, quick, run_ok};
use weaver::pidfile::{self, PidRecord};

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");

/// A daemon of this bench: stopped by `weaver shutdown`, else SIGKILLed by
/// pid, however the bench ends.
struct Daemon {
    rt: std::path::PathBuf,
    config: std::path::PathBuf,
    rec: Option<PidRecord>,
}

impl Daemon {
    fn start(base: &Path, toml: &str) -> Daemon {
        let rt = base.join("rt");
        let config = base.join("weaver.toml");
        std::fs::write(&config, toml).unwrap();
        let mut d = Daemon { rt, config, rec: None };
        let mut c = d.weaver(&[]);
        c.arg("status");
        run_ok(c);
        d.rec = pidfile::live_pid(&d.rt.join("weaver.pid")).and_then(PidRecord::of);
        d
    }

    fn weaver(&self, args: &[&str]) -> std::process::Command {
        let mut c = common::weaver_with_config(WEAVER, COMPUTE, &self.rt, &self.config);
        c.args(args);
        c
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.weaver(args).stdout(Stdio::piped()).output().unwrap();
        assert!(out.status.success(), "weaver {args:?}: {}", out.status);
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        common::stop_daemon(self.weaver(&["--no-start", "shutdown"]), self.rec);
    }
}

/// One response's bytes (head and Content-Length body).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap();
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).expect("read");
                assert!(n > 0, "closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return len;
        }
    }
}

struct Figure {
    what: String,
    p50: Duration,
    p99: Duration,
    bytes: usize,
}

fn measure(what: &str, rounds: usize, mut f: impl FnMut() -> usize) -> Figure {
    for _ in 0..rounds / 10 + 1 {
        f();
    }
    let mut times = Vec::with_capacity(rounds);
    let mut bytes = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        bytes = f();
        times.push(t.elapsed());
    }
    Figure {
        what: what.into(),
        p50: percentile(&mut times, 50.0),
        p99: percentile(&mut times, 99.0),
        bytes,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn main() {
    let procs = if quick() { 50 } else { 500 };
    let rounds = iterations(2000);
    let tmp = tempfile::Builder::new().prefix("wvbh").tempdir_in("/tmp").unwrap();
    let d = Daemon::start(
        tmp.path(),
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[[process]]\nname = \"fleet\"\n\
             command = [\"sleep\", \"1000\"]\ninstances = {procs}\nstart_duration = \"0\"\n"
        ),
    );
    let addr: SocketAddr = d.json(&["status", "--json", "--wait"])["daemon"]["http"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // Every instance running before measuring.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let ps = d.json(&["ps", "--json"]);
        let running = ps.as_array().unwrap().iter().filter(|r| r["state"] == "running").count();
        if running == procs {
            break;
        }
        assert!(Instant::now() < end, "{running} of {procs} running after 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut buf = Vec::new();
    let base = measure("TCP connect+close (baseline)", rounds, || {
        drop(connect(addr));
        0
    });
    let fresh = |path: &str, buf: &mut Vec<u8>| {
        let mut s = connect(addr);
        write!(s, "GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        read_response(&mut s, buf)
    };
    let health = measure("GET /health, new connection", rounds, || fresh("/health", &mut buf));
    let what = format!("GET /metrics ({procs} processes), new connection");
    let metrics = measure(&what, rounds, || fresh("/metrics", &mut buf));
    let mut s = connect(addr);
    let mut kept = |path: &str, buf: &mut Vec<u8>| {
        write!(s, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
        read_response(&mut s, buf)
    };
    let health_ka = measure("GET /health, kept alive", rounds, || kept("/health", &mut buf));
    let what = format!("GET /metrics ({procs} processes), kept alive");
    let metrics_ka = measure(&what, rounds, || kept("/metrics", &mut buf));
    println!("\nHTTP endpoint, {rounds} requests each ({procs} supervised processes):");
    println!("{:<46} {:>10} {:>10} {:>9} {:>9}", "", "p50", "p99", "p50 x", "body");
    for f in [&base, &health, &metrics, &health_ka, &metrics_ka] {
        println!(
            "{:<46} {:>7.1} us {:>7.1} us {:>8.2}x {:>7} B",
            f.what,
            f.p50.as_secs_f64() * 1e6,
            f.p99.as_secs_f64() * 1e6,
            f.p50.as_secs_f64() / base.p50.as_secs_f64(),
            f.bytes
        );
    }
    drop(d);
}
