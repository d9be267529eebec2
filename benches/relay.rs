//! `cargo bench --bench relay`: echo through weaver (client -> weaver ->
//! compute -> weaver -> client) against the same echo straight to a compute
//! daemon, both measured in this run, printed as ratios:
//! - one in flight, round trip p50 (goal: relay at most 2.2x direct);
//! - 64 in flight, throughput for 64 B and 64 KiB (goal: at least 0.6x).
//!
//! `WEAVER_BENCH_QUICK=1` shrinks the iteration counts.

mod common;

use std::io::{self, Read};
use std::process::{Command, Stdio};

use common::{echo_suite, print_table, spawn_compute, ComputeWire, EchoWire};
use weaver::client::Client;
use weaver::frame;
use weaver::protocol::{self, ClientMsg, Request, Response, ServerMsg};

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");

/// weaver's control protocol: tag = request id, reply payload = echo.
struct ControlWire;

impl EchoWire for ControlWire {
    fn encode_request(&self, id: u64, payload: &[u8], out: &mut Vec<u8>) {
        let meta = protocol::encode(&ClientMsg {
            tag: id,
            req: Request::Compute { op: "echo".into(), timeout_ms: None },
        });
        frame::push(out, &meta, payload);
    }

    fn read_reply(&self, r: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<u64> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        let mut body = std::mem::take(buf);
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        let meta_len = u32::from_le_bytes(body[0..4].try_into().unwrap()) as usize;
        let msg: ServerMsg = protocol::decode(&body[4..4 + meta_len], "reply")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let Response::Error(e) = msg.resp {
            return Err(io::Error::other(e.message));
        }
        body.drain(..4 + meta_len);
        *buf = body;
        Ok(msg.tag)
    }
}

fn main() {
    let dir = tempfile::Builder::new().prefix("wvr").tempdir_in("/tmp").unwrap();
    let rt = dir.path().join("rt");
    let st = Command::new(WEAVER)
        .args(["status", "--wait"])
        .env("WEAVER_RUNTIME_DIR", &rt)
        // Revisions of the bench daemon, beside its runtime dir.
        .env("WEAVER_STATE_DIR", rt.with_file_name("state"))
        .env("WEAVER_COMPUTE_BIN", COMPUTE)
        .env("WEAVER_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "weaver did not start");
    let client = Client::connect(&rt.join("control.sock"), false).unwrap().unwrap();
    let relay_stream = client.into_stream();
    let (_direct_child, direct_stream, _hello) = spawn_compute(COMPUTE, dir.path());

    // Interleave direct and relay rounds and take the median of the
    // per-round ratios: drift on a shared machine hits both sides alike.
    let rounds = if common::quick() { 1 } else { 5 };
    let (mut did, mut rid) = (1u64, 1u64);
    let mut ratios: Vec<[f64; 6]> = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let d = echo_suite(&direct_stream, &ComputeWire, &mut did, rounds);
        let r = echo_suite(&relay_stream, &ControlWire, &mut rid, rounds);
        let q = |i: usize| {
            [
                r[i].rt_p50.as_secs_f64() / d[i].rt_p50.as_secs_f64(),
                r[i].rt_p99.as_secs_f64() / d[i].rt_p99.as_secs_f64(),
                r[i].pipe_rps / d[i].pipe_rps,
            ]
        };
        let (a, b) = (q(0), q(1));
        ratios.push([a[0], a[1], a[2], b[0], b[1], b[2]]);
        last = Some((d, r));
    }
    let (direct, relay) = last.expect("at least one round");
    print_table("direct (client -> compute), last round:", &direct);
    print_table("relay (client -> weaver -> compute), last round:", &relay);
    let median = |k: usize| {
        let mut v: Vec<f64> = ratios.iter().map(|r| r[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("ratios relay / direct, median of {rounds} interleaved rounds:");
    for (i, f) in direct.iter().enumerate() {
        println!(
            "{:>9}  round trip p50 {:.2}x (goal <= 2.2x), p99 {:.2}x | throughput with {} in flight {:.2}x (goal >= 0.6x)",
            f.label,
            median(3 * i),
            median(3 * i + 1),
            common::WINDOW,
            median(3 * i + 2)
        );
    }
    drop(relay_stream);
    let _ = Command::new(WEAVER)
        .arg("shutdown")
        .env("WEAVER_RUNTIME_DIR", &rt)
        // Revisions of the bench daemon, beside its runtime dir.
        .env("WEAVER_STATE_DIR", rt.with_file_name("state"))
        .stdout(Stdio::null())
        .status();
}
