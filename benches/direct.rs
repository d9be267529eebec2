//! `cargo bench --bench direct`: the compute daemon on its own, without
//! weaver in between. Spawns the real `compute-daemon` against a listener
//! in a temp dir (as weaver does) and measures echo over the compute wire:
//! round trips with one request in flight (p50/p99) and throughput with 64
//! in flight, for 64 B and 64 KiB payloads. `WEAVER_BENCH_QUICK=1` shrinks
//! the iteration counts for smoke runs.

mod common;

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weaver::wire::{self, kind, FrameDecoder, Hello};

use common::{iterations, micros, percentile, pipelined, round_trips, ComputeWire};

const EXE: &str = env!("CARGO_BIN_EXE_compute-daemon");
const WINDOW: usize = 64;

/// Kills and reaps the daemon however the bench ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn accept_within(listener: &UnixListener, daemon: &mut Daemon, within: Duration) -> UnixStream {
    listener.set_nonblocking(true).expect("non-blocking listener");
    let end = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if let Some(status) = daemon.0.try_wait().expect("try_wait") {
            panic!("compute-daemon exited before connecting: {status}");
        }
        assert!(Instant::now() < end, "compute-daemon did not connect within {within:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("compute.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let child = Command::new(EXE)
        .arg("--socket-path")
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn compute-daemon");
    let mut daemon = Daemon(child);
    let mut stream = accept_within(&listener, &mut daemon, Duration::from_secs(10));

    let hello = FrameDecoder::new()
        .read_frame(&mut stream)
        .expect("read HELLO")
        .expect("HELLO before end of file");
    assert_eq!(hello.header.kind, kind::HELLO);
    let hello = Hello::parse(&hello.payload).expect("valid HELLO");

    let quick = common::quick();
    println!(
        "compute-daemon direct: echo over a Unix socket, {} worker threads, {} CPUs{}",
        hello.workers,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick { " (WEAVER_BENCH_QUICK: few iterations, figures are rough)" } else { "" }
    );
    println!(
        "{:>9}  {:<12} {:>8}  {:>11}  {:>11}  {:>11}  {:>9}",
        "payload", "in flight", "n", "p50", "p99", "req/s", "MB/s"
    );

    let mut next_id = 1u64;
    let warm = iterations(2_000);
    round_trips(&mut stream, &ComputeWire, 64, warm, next_id).expect("warm-up");
    next_id += warm as u64;

    for (label, len, rt_n, pipe_n) in
        [("64 B", 64usize, 20_000usize, 200_000usize), ("64 KiB", 64 * 1024, 20_000, 50_000)]
    {
        let n = iterations(rt_n);
        let t0 = Instant::now();
        let mut times =
            round_trips(&mut stream, &ComputeWire, len, n, next_id).expect("round trips");
        let total = t0.elapsed();
        next_id += n as u64;
        let p50 = percentile(&mut times, 50.0);
        let p99 = percentile(&mut times, 99.0);
        let rps = n as f64 / total.as_secs_f64();
        println!(
            "{label:>9}  {:<12} {n:>8}  {:>11}  {:>11}  {rps:>11.0}  {:>9.1}",
            "1",
            micros(p50),
            micros(p99),
            rps * len as f64 / 1e6
        );

        let n = iterations(pipe_n);
        let elapsed = pipelined(&stream, &stream, &ComputeWire, len, WINDOW, n, next_id)
            .expect("pipelined echo");
        next_id += n as u64;
        let rps = n as f64 / elapsed.as_secs_f64();
        println!(
            "{label:>9}  {:<12} {n:>8}  {:>11}  {:>11}  {rps:>11.0}  {:>9.1}",
            WINDOW,
            "-",
            "-",
            rps * len as f64 / 1e6
        );
    }
    println!(
        "MB/s counts echo payload bytes one way (the same amount comes back); MB = 10^6 bytes."
    );

    // Let the daemon go the way weaver would.
    let mut bye = Vec::new();
    wire::push_frame(&mut bye, kind::SHUTDOWN, 0, 0, b"");
    use std::io::Write;
    stream.write_all(&bye).expect("send SHUTDOWN");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let end = Instant::now() + Duration::from_secs(5);
    while daemon.0.try_wait().expect("try_wait").is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}
