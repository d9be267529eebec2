//! Client-side measurement helpers for the echo benches: one request in
//! flight (latency) and a window of requests in flight (throughput), over
//! any byte stream and any framing that implements [`EchoWire`]. The direct
//! bench uses [`ComputeWire`] against the compute daemon; a relay bench can
//! reuse the same loops with its own framing.

#![allow(dead_code)]

use std::io::{self, BufReader, Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weaver::wire::{self, kind, op, status};

/// How one echo request is framed and its reply read.
pub trait EchoWire: Sync {
    /// Append the request `id` carrying `payload` to `out`.
    fn encode_request(&self, id: u64, payload: &[u8], out: &mut Vec<u8>);
    /// Read one whole reply; its request id, with the payload left in `buf`.
    fn read_reply(&self, r: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<u64>;
}

/// The compute wire (`include/weaver_compute.h`): REQUEST echo, RESPONSE OK.
pub struct ComputeWire;

impl EchoWire for ComputeWire {
    fn encode_request(&self, id: u64, payload: &[u8], out: &mut Vec<u8>) {
        wire::push_frame(out, kind::REQUEST, id, op::ECHO, payload);
    }

    fn read_reply(&self, r: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<u64> {
        loop {
            let mut hdr = [0u8; wire::HEADER_SIZE];
            r.read_exact(&mut hdr)?;
            let h = wire::Header::decode(&hdr)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            buf.resize(h.payload_len as usize, 0);
            r.read_exact(buf)?;
            if h.kind != kind::RESPONSE {
                continue; // HELLO, PONG: not an echo reply
            }
            if h.code != status::OK {
                let msg = String::from_utf8_lossy(buf).into_owned();
                return Err(io::Error::other(format!("echo {} failed: {msg}", h.request_id)));
            }
            return Ok(h.request_id);
        }
    }
}

/// The bytes a request of `len` bytes carries (a repeating pattern).
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `n` sequential round trips of a `payload_len`-byte echo, one in flight;
/// the time of each. Request ids start at `first_id`.
pub fn round_trips<S, W>(
    stream: &mut S,
    wire: &W,
    payload_len: usize,
    n: usize,
    first_id: u64,
) -> io::Result<Vec<Duration>>
where
    S: Read + Write,
    W: EchoWire,
{
    let body = payload(payload_len);
    let mut frame = Vec::with_capacity(payload_len + 64);
    let mut buf = Vec::with_capacity(payload_len);
    let mut times = Vec::with_capacity(n);
    for i in 0..n as u64 {
        frame.clear();
        wire.encode_request(first_id + i, &body, &mut frame);
        let t0 = Instant::now();
        stream.write_all(&frame)?;
        let id = wire.read_reply(stream, &mut buf)?;
        times.push(t0.elapsed());
        if id != first_id + i || buf.len() != payload_len {
            return Err(io::Error::other(format!(
                "reply {id} ({} bytes) does not match request {} ({payload_len} bytes)",
                buf.len(),
                first_id + i
            )));
        }
    }
    Ok(times)
}

/// Send `n` echo requests of `payload_len` bytes keeping `window` in
/// flight (a writer thread and this thread reading), and return the time
/// from the first write to the last reply. `writer` and `reader` are two
/// handles on the same connection (e.g. `&UnixStream` twice).
pub fn pipelined<Wr, Rd, W>(
    writer: Wr,
    reader: Rd,
    wire: &W,
    payload_len: usize,
    window: usize,
    n: usize,
    first_id: u64,
) -> io::Result<Duration>
where
    Wr: Write + Send,
    Rd: Read,
    W: EchoWire + ?Sized,
{
    assert!(window > 0);
    let body = payload(payload_len);
    let (credit_tx, credit_rx) = mpsc::channel::<()>();
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        let writer_thread = scope.spawn(move || -> io::Result<()> {
            let mut writer = writer;
            let mut frame = Vec::with_capacity(payload_len + 64);
            for i in 0..n {
                if i >= window && credit_rx.recv().is_err() {
                    return Ok(()); // the reader stopped; it reports why
                }
                frame.clear();
                wire.encode_request(first_id + i as u64, &body, &mut frame);
                writer.write_all(&frame)?;
            }
            Ok(())
        });
        let mut reader = BufReader::with_capacity(256 * 1024, reader);
        let mut buf = Vec::with_capacity(payload_len);
        let mut result = Ok(());
        for _ in 0..n {
            match wire.read_reply(&mut reader, &mut buf) {
                Ok(_) if buf.len() == payload_len => {
                    let _ = credit_tx.send(());
                }
                Ok(id) => {
                    result = Err(io::Error::other(format!("reply {id} has {} bytes", buf.len())));
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(credit_tx);
        let elapsed = t0.elapsed();
        let written = writer_thread.join().expect("writer thread panicked");
        result.and(written).map(|()| elapsed)
    })
}

/// The `p`-th percentile (0..=100) of `times` (sorted in place).
pub fn percentile(times: &mut [Duration], p: f64) -> Duration {
    assert!(!times.is_empty());
    times.sort_unstable();
    let rank = ((p / 100.0) * (times.len() - 1) as f64).round() as usize;
    times[rank.min(times.len() - 1)]
}

/// Iteration counts shrink under `WEAVER_BENCH_QUICK=1` (CI smoke runs).
/// Run `c` to completion; it must succeed.
/// `weaver` for a bench daemon in runtime dir `rt` with `config`: its
/// revisions beside the runtime dir, quiet logs, no terminal.
pub fn weaver_with_config(
    weaver: &str,
    compute: &str,
    rt: &std::path::Path,
    config: &std::path::Path,
) -> std::process::Command {
    use std::process::Stdio;
    let mut c = std::process::Command::new(weaver);
    c.env("WEAVER_RUNTIME_DIR", rt)
        .env("WEAVER_STATE_DIR", rt.with_file_name("state"))
        .env("WEAVER_COMPUTE_BIN", compute)
        .env("WEAVER_LOG", "warn")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c
}

pub fn run_ok(mut c: std::process::Command) {
    let s = c.status().expect("spawn");
    assert!(s.success(), "{c:?} failed: {s}");
}

/// How long `c` took to run to success.
pub fn timed(c: std::process::Command) -> Duration {
    let t = Instant::now();
    run_ok(c);
    t.elapsed()
}

/// The thread ids of `pid`, lowest (its main thread) first.
pub fn thread_ids(pid: u32) -> Vec<i32> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let mut tids: Vec<i32> =
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    tids.sort_unstable();
    tids
}

/// CPU time of every thread of `pid` in nanoseconds (first field of each
/// thread's schedstat).
pub fn cpu_ns(pid: u32) -> u64 {
    thread_ids(pid)
        .into_iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/task/{t}/schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The median of `v` (sorted in place; the upper one of an even count).
pub fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A `kB` (or count) field of /proc/PID/status, e.g. "VmRSS".
pub fn proc_status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

pub fn quick() -> bool {
    std::env::var_os("WEAVER_BENCH_QUICK").is_some_and(|v| v != "0" && !v.is_empty())
}

/// `full`, or a small fraction of it in quick mode.
pub fn iterations(full: usize) -> usize {
    if quick() {
        (full / 50).max(50)
    } else {
        full
    }
}

/// A duration in microseconds with two decimals.
pub fn micros(d: Duration) -> String {
    format!("{:.2} us", d.as_secs_f64() * 1e6)
}

/// A compute daemon started by a bench; killed and reaped however the bench
/// ends.
pub struct ComputeChild(pub std::process::Child);

impl Drop for ComputeChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Start `exe` as weaver does (listener first, then the process with
/// `--socket-path` and a stdin pipe), accept its connection and read its
/// HELLO.
pub fn spawn_compute(
    exe: &str,
    dir: &std::path::Path,
) -> (ComputeChild, std::os::unix::net::UnixStream, wire::Hello) {
    use std::process::{Command, Stdio};
    let path = dir.join("compute.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let child = Command::new(exe)
        .arg("--socket-path")
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn compute-daemon");
    let mut daemon = ComputeChild(child);
    listener.set_nonblocking(true).expect("non-blocking listener");
    let end = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                break s;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if let Some(status) = daemon.0.try_wait().expect("try_wait") {
            panic!("compute-daemon exited before connecting: {status}");
        }
        assert!(Instant::now() < end, "compute-daemon did not connect within 10 s");
        std::thread::sleep(Duration::from_millis(2));
    };
    let hello = weaver::stream::read_frame(&mut wire::FrameDecoder::new(), &mut stream)
        .expect("read HELLO")
        .expect("HELLO before end of file");
    assert_eq!(hello.header.kind, kind::HELLO);
    let hello = wire::Hello::parse(&hello.payload).expect("valid HELLO");
    (daemon, stream, hello)
}

/// Figures of one payload size.
pub struct Figures {
    pub label: &'static str,
    pub len: usize,
    pub rt_n: usize,
    pub rt_p50: Duration,
    pub rt_p99: Duration,
    pub rt_rps: f64,
    pub pipe_n: usize,
    pub pipe_rps: f64,
}

/// In flight when pipelining.
pub const WINDOW: usize = 64;

/// The standard echo suite over one connection: a warm-up, then for 64 B
/// and 64 KiB, round trips with one in flight and pipelined throughput with
/// [`WINDOW`] in flight. `scale` divides the iteration counts (a relay run
/// interleaves with a direct one).
pub fn echo_suite<W: EchoWire>(
    stream: &std::os::unix::net::UnixStream,
    wire: &W,
    next_id: &mut u64,
    scale: usize,
) -> Vec<Figures> {
    let mut s = stream;
    let warm = iterations(2_000 / scale);
    round_trips(&mut s, wire, 64, warm, *next_id).expect("warm-up");
    *next_id += warm as u64;
    let mut out = Vec::new();
    for (label, len, rt_full, pipe_full) in
        [("64 B", 64usize, 20_000usize, 200_000usize), ("64 KiB", 64 * 1024, 20_000, 50_000)]
    {
        let rt_n = iterations(rt_full / scale);
        let t0 = Instant::now();
        let mut times = round_trips(&mut s, wire, len, rt_n, *next_id).expect("round trips");
        let total = t0.elapsed();
        *next_id += rt_n as u64;
        let pipe_n = iterations(pipe_full / scale);
        let elapsed =
            pipelined(stream, stream, wire, len, WINDOW, pipe_n, *next_id).expect("pipelined echo");
        *next_id += pipe_n as u64;
        out.push(Figures {
            label,
            len,
            rt_n,
            rt_p50: percentile(&mut times, 50.0),
            rt_p99: percentile(&mut times, 99.0),
            rt_rps: rt_n as f64 / total.as_secs_f64(),
            pipe_n,
            pipe_rps: pipe_n as f64 / elapsed.as_secs_f64(),
        });
    }
    out
}

/// Print figures as a table.
pub fn print_table(title: &str, figs: &[Figures]) {
    println!("{title}");
    println!(
        "{:>9}  {:<9} {:>8}  {:>11}  {:>11}  {:>11}  {:>9}",
        "payload", "in flight", "n", "p50", "p99", "req/s", "MB/s"
    );
    for f in figs {
        println!(
            "{:>9}  {:<9} {:>8}  {:>11}  {:>11}  {:>11.0}  {:>9.1}",
            f.label,
            "1",
            f.rt_n,
            micros(f.rt_p50),
            micros(f.rt_p99),
            f.rt_rps,
            f.rt_rps * f.len as f64 / 1e6
        );
        println!(
            "{:>9}  {:<9} {:>8}  {:>11}  {:>11}  {:>11.0}  {:>9.1}",
            f.label,
            WINDOW,
            f.pipe_n,
            "-",
            "-",
            f.pipe_rps,
            f.pipe_rps * f.len as f64 / 1e6
        );
    }
}

/// Stop a bench's daemon: `shutdown` (the command, run with a 15 s
/// deadline), then the backstop: the daemon `rec` names must be gone within
/// 2 s (its children die with it), else SIGKILL and 5 s more. Says what it
/// had to do.
pub fn stop_daemon(mut shutdown: std::process::Command, rec: Option<weaver::pidfile::PidRecord>) {
    if let Ok(mut child) = shutdown.spawn() {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(s)) => {
                    if !s.success() {
                        eprintln!("weaver shutdown exited with {s}");
                    }
                    break;
                }
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    eprintln!("weaver shutdown did not return in 15 s");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
    let Some(rec) = rec else { return };
    let gone = |secs| {
        let end = Instant::now() + Duration::from_secs(secs);
        while rec.is_current() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        !rec.is_current()
    };
    if !gone(2) {
        eprintln!("daemon {} still running after shutdown: SIGKILL", rec.pid);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(rec.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        gone(5);
    }
}
