//! `cargo bench --bench direct`: the compute daemon on its own, without
//! weaver in between. Spawns the real `compute-daemon` against a listener
//! in a temp dir (as weaver does) and measures echo over the compute wire:
//! round trips with one request in flight (p50/p99) and throughput with 64
//! in flight, for 64 B and 64 KiB payloads. `WEAVER_BENCH_QUICK=1` shrinks
//! the iteration counts for smoke runs.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use weaver::wire::{self, kind};

use common::{echo_suite, print_table, spawn_compute, ComputeWire};

const EXE: &str = env!("CARGO_BIN_EXE_compute-daemon");

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut daemon, mut stream, hello) = spawn_compute(EXE, dir.path());

    let quick = common::quick();
    println!(
        "compute-daemon direct: echo over a Unix socket, {} worker threads, {} CPUs{}",
        hello.workers,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick { " (WEAVER_BENCH_QUICK: few iterations, figures are rough)" } else { "" }
    );
    let mut next_id = 1u64;
    let figs = echo_suite(&stream, &ComputeWire, &mut next_id, 1);
    print_table("", &figs);
    println!(
        "MB/s counts echo payload bytes one way (the same amount comes back); MB = 10^6 bytes."
    );

    // Let the daemon go the way weaver would.
    let mut bye = Vec::new();
    wire::push_frame(&mut bye, kind::SHUTDOWN, 0, 0, b"");
    stream.write_all(&bye).expect("send SHUTDOWN");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let end = Instant::now() + Duration::from_secs(5);
    while daemon.0.try_wait().expect("try_wait").is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}
