//! `cargo bench --bench relay`: echo through weaver (client -> weaver ->
//! compute -> weaver -> client) against the same echo straight to a compute
//! daemon, both measured in this run, printed as ratios:
//! - one in flight, round trip p50 (goal: relay at most 2.0x direct);
//! - 64 in flight, throughput for 64 B and 64 KiB (goal: at least 0.8x);
//! - the same through a forwarder, the floor of any relay: a process that
//!   moves bytes between the client and a compute daemon and does nothing
//!   else (see `forward`), so that what the second hop costs on this
//!   machine (forwarder / direct) and what weaver adds to it (relay /
//!   forwarder) are told apart;
//! - where the time of 64 B echoes with 64 in flight goes: CPU per request
//!   of the client, weaver or the forwarder, and compute, on each path;
//! - payloads by fd (1 MiB, 16 MiB, 64 MiB, a sealed memfd passed on):
//!   round trip p50 and throughput with 8 in flight (goal: within 1.1x of
//!   direct from 16 MiB on), twice: the transport alone (one memfd, filled
//!   once, sent again each time, replies not read: a fixed cost per
//!   request that does not grow with the size), then end to end (the
//!   client fills a fresh memfd per request and reads every byte of the
//!   reply, the same work on both sides; what the relay adds is its
//!   fixed cost, small against the bytes' own);
//! - 64 B with 64 in flight with compute under SCHED_BATCH (`[compute]
//!   scheduling = "batch"`), relayed and direct, against the default;
//!
//! `WEAVER_BENCH_QUICK=1` shrinks the iteration counts.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use std::io::{self, Read};
use std::process::{Command, Stdio};

use common::{echo_suite, print_table, spawn_compute, ComputeWire, EchoWire};
use weaver::client::Client;
use weaver::frame;
use weaver::pidfile::{self, PidRecord};
use weaver::protocol::{self, ClientMsg, Request, Response, ServerMsg};

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");

/// weaver's control protocol: tag = request id, reply payload = echo.
struct ControlWire;

thread_local! {
    /// The request and its encoded meta, kept by each writing thread: only
    /// the tag changes from one request to the next, so a request costs no
    /// allocation, as the compute wire's does not.
    static ECHO: std::cell::RefCell<(ClientMsg, Vec<u8>)> = std::cell::RefCell::new((
        ClientMsg { tag: 0, req: Request::Compute { op: "echo".into(), timeout_ms: None } },
        Vec::with_capacity(64),
    ));
}

impl EchoWire for ControlWire {
    fn encode_request(&self, id: u64, payload: &[u8], out: &mut Vec<u8>) {
        ECHO.with_borrow_mut(|(msg, meta)| {
            msg.tag = id;
            protocol::encode_into(msg, meta);
            frame::push(out, meta, payload);
        });
    }

    /// The payload is read straight into `buf`, as the compute wire's is:
    /// both sides of the bench do the same work per reply.
    fn read_reply(&self, r: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<u64> {
        let mut head = [0u8; 8];
        r.read_exact(&mut head)?;
        let len = u32::from_le_bytes(head[0..4].try_into().unwrap()) as usize;
        let meta_len = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "frame shorter than its meta");
        let payload_len = len.checked_sub(4 + meta_len).ok_or_else(bad)?;
        // Replies' meta is a few bytes; an error's may be longer.
        let (mut small, mut large) = ([0u8; 64], Vec::new());
        let meta = if meta_len <= small.len() {
            &mut small[..meta_len]
        } else {
            large.resize(meta_len, 0);
            &mut large[..]
        };
        r.read_exact(meta)?;
        buf.resize(payload_len, 0);
        r.read_exact(buf)?;
        let msg: ServerMsg = protocol::decode(meta, "reply")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let Response::Error(e) = msg.resp {
            return Err(io::Error::other(e.message));
        }
        Ok(msg.tag)
    }
}

/// Set in the environment of the bench started again as the forwarder:
/// the two inherited socket fds it joins, "A,B".
const FORWARD_ENV: &str = "WEAVER_BENCH_FORWARD";

fn main() {
    if let Ok(fds) = std::env::var(FORWARD_ENV) {
        let mut it = fds.split(',').map(|f| f.parse::<i32>().expect("a forwarder fd"));
        let (a, b) = (it.next().expect("fd A"), it.next().expect("fd B"));
        forward(a, b);
    }
    let dir = tempfile::Builder::new().prefix("wvr").tempdir_in("/tmp").unwrap();
    let daemon = BenchWeaver::start(dir.path(), "default", "");
    let relay_stream = daemon.connect();
    let (direct_child, direct_stream, _hello) = spawn_compute(COMPUTE, dir.path());
    let floor_dir = dir.path().join("floor");
    std::fs::create_dir(&floor_dir).unwrap();
    let (floor_compute, floor_compute_stream, _) = spawn_compute(COMPUTE, &floor_dir);
    let (forwarder, floor_stream) = spawn_forwarder(floor_compute_stream);

    // Interleave direct, forwarder and relay rounds and take the median of
    // the per-round ratios: drift on a shared machine hits all alike.
    let rounds = if common::quick() { 1 } else { 5 };
    let (mut did, mut fid, mut rid) = (1u64, 1u64, 1u64);
    // Per round, per payload: relay / direct, forwarder / direct, relay /
    // forwarder, each as [round trip p50, p99, throughput].
    let mut ratios: Vec<Vec<[[f64; 3]; 3]>> = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let d = echo_suite(&direct_stream, &ComputeWire, &mut did, rounds);
        let f = echo_suite(&floor_stream, &ComputeWire, &mut fid, rounds);
        let r = echo_suite(&relay_stream, &ControlWire, &mut rid, rounds);
        let q = |x: &common::Figures, y: &common::Figures| {
            [
                x.rt_p50.as_secs_f64() / y.rt_p50.as_secs_f64(),
                x.rt_p99.as_secs_f64() / y.rt_p99.as_secs_f64(),
                x.pipe_rps / y.pipe_rps,
            ]
        };
        ratios.push(
            (0..d.len()).map(|i| [q(&r[i], &d[i]), q(&f[i], &d[i]), q(&r[i], &f[i])]).collect(),
        );
        last = Some((d, f, r));
    }
    let (direct, floor, relay) = last.expect("at least one round");
    print_table("direct (client -> compute), last round:", &direct);
    print_table("forwarder (client -> forwarder -> compute), last round:", &floor);
    print_table("relay (client -> weaver -> compute), last round:", &relay);
    let median = |payload: usize, pair: usize, k: usize| {
        common::median(&mut ratios.iter().map(|r| r[payload][pair][k]).collect::<Vec<_>>())
    };
    println!("ratios, median of {rounds} interleaved rounds:");
    for (i, f) in direct.iter().enumerate() {
        println!(
            "{:>9}  relay / direct: round trip p50 {:.2}x (goal <= 2.0x), p99 {:.2}x | throughput with {} in flight {:.2}x (goal >= 0.8x)",
            f.label,
            median(i, 0, 0),
            median(i, 0, 1),
            common::WINDOW,
            median(i, 0, 2)
        );
        for (pair, name) in [(1, "forwarder / direct"), (2, "relay / forwarder")] {
            println!(
                "{:>9}  {name}: round trip p50 {:.2}x, p99 {:.2}x | throughput {:.2}x",
                "",
                median(i, pair, 0),
                median(i, pair, 1),
                median(i, pair, 2)
            );
        }
    }
    cpu_per_request(&[
        Path {
            name: "direct",
            stream: &direct_stream,
            wire: &ComputeWire,
            procs: vec![("compute", direct_child.0.id())],
        },
        Path {
            name: "fwd",
            stream: &floor_stream,
            wire: &ComputeWire,
            procs: vec![("forwarder", forwarder.0.id()), ("compute", floor_compute.0.id())],
        },
        Path {
            name: "relay",
            stream: &relay_stream,
            wire: &ControlWire,
            procs: weaver_procs(&daemon.rt),
        },
    ]);
    drop(floor_stream);
    drop(forwarder);
    fd_payloads(&direct_stream, &daemon.rt);
    sched_batch(dir.path(), &direct_stream, &relay_stream);
}

/// A bench weaver of its own in `dir/<name>/` (runtime dir `rt`, its
/// revisions beside it) reading weaver.toml `toml`, started with compute
/// connected; stopped when dropped, with the benches' shutdown deadline and
/// backstop.
struct BenchWeaver {
    rt: std::path::PathBuf,
    config: std::path::PathBuf,
    rec: Option<PidRecord>,
}

impl BenchWeaver {
    fn start(dir: &std::path::Path, name: &str, toml: &str) -> BenchWeaver {
        let base = dir.join(name);
        std::fs::create_dir(&base).unwrap();
        let config = base.join("weaver.toml");
        std::fs::write(&config, toml).unwrap();
        let mut d = BenchWeaver { rt: base.join("rt"), config, rec: None };
        common::run_ok(d.weaver(&["status", "--wait"]));
        d.rec = pidfile::live_pid(&d.rt.join("weaver.pid")).and_then(PidRecord::of);
        d
    }

    fn weaver(&self, args: &[&str]) -> Command {
        let mut c = common::weaver_with_config(WEAVER, COMPUTE, &self.rt, &self.config);
        c.args(args);
        c
    }

    fn connect(&self) -> UnixStream {
        Client::connect(&self.rt.join("control.sock"), false).unwrap().unwrap().into_stream()
    }
}

impl Drop for BenchWeaver {
    fn drop(&mut self) {
        common::stop_daemon(self.weaver(&["--no-start", "shutdown"]), self.rec);
    }
}

/// Put every thread of `pid` under SCHED_BATCH, as `[compute] scheduling =
/// "batch"` does for weaver's compute (threads it starts later inherit it
/// from the first).
fn set_batch(pid: u32) {
    let param = libc::sched_param { sched_priority: 0 };
    for t in common::thread_ids(pid) {
        // SAFETY: sets a policy; `param` is a live struct.
        let r = unsafe { libc::sched_setscheduler(t, libc::SCHED_BATCH, &param) };
        assert_eq!(r, 0, "SCHED_BATCH for thread {t}: {}", io::Error::last_os_error());
    }
}

/// 64 B echoes with 64 in flight with compute under SCHED_BATCH: a second
/// weaver run with `[compute] scheduling = "batch"`, and a second direct
/// compute put under the same policy, against the default ones (`direct`,
/// `relay`), interleaved. A compute that wakes no longer preempts whoever
/// woke it (weaver, or the client on the direct path), and both paths gain:
/// the relay's gain is weaver's to give, the ratio is against a direct path
/// with the same policy.
fn sched_batch(dir: &std::path::Path, direct: &UnixStream, relay: &UnixStream) {
    let daemon = BenchWeaver::start(dir, "batch", "[compute]\nscheduling = \"batch\"\n");
    let relay_b = daemon.connect();
    let compute_dir = dir.join("batch-direct");
    std::fs::create_dir(&compute_dir).unwrap();
    let (child, direct_b, _) = spawn_compute(COMPUTE, &compute_dir);
    set_batch(child.0.id());
    let (rounds, n) = (if common::quick() { 1 } else { 3 }, common::iterations(100_000));
    let mut id = 1u64 << 50;
    let mut rate = |s: &UnixStream, wire: &dyn EchoWire| {
        let t = common::pipelined(s, s, wire, 64, common::WINDOW, n, id).expect("pipelined echo");
        id += n as u64;
        n as f64 / t.as_secs_f64()
    };
    // Per round: [direct, relay, direct batch, relay batch] requests/s.
    let mut runs: Vec<[f64; 4]> = Vec::new();
    for _ in 0..rounds {
        runs.push([
            rate(direct, &ComputeWire),
            rate(relay, &ControlWire),
            rate(&direct_b, &ComputeWire),
            rate(&relay_b, &ControlWire),
        ]);
    }
    let median =
        |f: &dyn Fn(&[f64; 4]) -> f64| common::median(&mut runs.iter().map(f).collect::<Vec<_>>());
    println!(
        "compute under SCHED_BATCH ([compute] scheduling = \"batch\"), 64 B with {} in flight, {n} per run, median of {rounds} interleaved rounds:",
        common::WINDOW
    );
    println!(
        "  relay {:.0} req/s, {:.2}x the default relay | direct {:.0} req/s, {:.2}x the default direct | relay / direct, both batch: {:.2}x",
        median(&|r| r[3]),
        median(&|r| r[3] / r[1]),
        median(&|r| r[2]),
        median(&|r| r[2] / r[0]),
        median(&|r| r[3] / r[2])
    );
}

/// CPU time of this process so far, threads that ended included.
fn cpu_of_self() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0);
        u
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(u.ru_utime) + us(u.ru_stime))
}

/// One way to compute for `cpu_per_request`: the stream the bench writes
/// to, its wire, and the processes between the bench and the echo whose
/// CPU time counts.
struct Path<'a> {
    name: &'static str,
    stream: &'a UnixStream,
    wire: &'a dyn EchoWire,
    procs: Vec<(&'static str, u32)>,
}

/// weaver and its compute process (when it is found), by pid.
fn weaver_procs(rt: &std::path::Path) -> Vec<(&'static str, u32)> {
    let (daemon, _) = weaver::pidfile::read(&rt.join("weaver.pid")).expect("weaver's pid file");
    let children = std::fs::read_to_string(format!("/proc/{daemon}/task/{daemon}/children"))
        .unwrap_or_default();
    let compute = children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .is_ok_and(|c| c.trim() == "compute-daemon")
    });
    if compute.is_none() {
        println!("  (weaver's compute process not found: the relay lines leave it out)");
    }
    let mut v = vec![("weaver", daemon)];
    v.extend(compute.map(|p| ("compute", p)));
    v
}

/// Where the time of 64 B echoes with 64 in flight goes: CPU per request
/// of each process (the client, weaver or the forwarder, compute) and the
/// wall time per request, for each path in turn, twice. The relay's
/// throughput ratio is bound by what weaver adds to the same two cores.
fn cpu_per_request(paths: &[Path]) {
    let n = common::iterations(200_000);
    println!("CPU per request, 64 B echoes with {} in flight, {n} per run:", common::WINDOW);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut ids = vec![1u64 << 40; paths.len()];
    for _ in 0..2 {
        for (path, id) in paths.iter().zip(ids.iter_mut()) {
            let before: Vec<u64> = path.procs.iter().map(|&(_, p)| common::cpu_ns(p)).collect();
            let me = cpu_of_self();
            let elapsed =
                common::pipelined(path.stream, path.stream, path.wire, 64, common::WINDOW, n, *id)
                    .expect("pipelined echo");
            *id += n as u64;
            let client = cpu_of_self() - me;
            let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
            let mut line = format!(
                "  {:<6} wall {:.2} us, client {:.2} us",
                path.name,
                per(elapsed),
                per(client)
            );
            let mut total = per(client);
            for (&(name, p), b) in path.procs.iter().zip(before) {
                let c = per(Duration::from_nanos(common::cpu_ns(p).saturating_sub(b)));
                total += c;
                line += &format!(", {name} {c:.2} us");
            }
            println!(
                "{line}: {total:.2} us of CPU, {:.2} us of the {cores} cores' time idle or elsewhere",
                (cores * per(elapsed) - total).max(0.0)
            );
        }
    }
}

/// Start this bench again as the forwarder between a new socket pair's far
/// end and `compute`; the near end is the bench's. The child is killed and
/// reaped when its guard drops, as a compute daemon's is.
fn spawn_forwarder(compute: UnixStream) -> (common::ComputeChild, UnixStream) {
    use std::os::unix::process::CommandExt;
    let (near, far) = UnixStream::pair().expect("socketpair");
    let (a, b) = (far.as_raw_fd(), compute.as_raw_fd());
    let mut cmd = Command::new(std::env::current_exe().expect("the bench's path"));
    cmd.env(FORWARD_ENV, format!("{a},{b}")).stdin(Stdio::null());
    // SAFETY: between fork and exec only fcntl, which is async-signal-safe,
    // on two fds this process owns: they stay open across exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [a, b] {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = common::ComputeChild(cmd.spawn().expect("start the forwarder"));
    (child, near)
}

/// The forwarder: moves bytes between sockets `a` and `b` both ways and
/// does nothing else, as a minimal proxy would: `poll` both, read what one
/// has (64 KiB at most) and write it to the other, keeping what the other
/// would not take until it is writable (and reading no more that way
/// meanwhile). Exits when either side closes.
fn forward(a: i32, b: i32) -> ! {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: the two fds were inherited for this and nothing else owns them.
    let mut socks = unsafe { [UnixStream::from_raw_fd(a), UnixStream::from_raw_fd(b)] };
    for s in &socks {
        s.set_nonblocking(true).expect("non-blocking");
    }
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes read from side i and not yet written to the other.
    let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    loop {
        let mut pf = [0, 1].map(|i| libc::pollfd {
            fd: socks[i].as_raw_fd(),
            events: (if pending[i].is_empty() { libc::POLLIN } else { 0 })
                | (if pending[1 - i].is_empty() { 0 } else { libc::POLLOUT }),
            revents: 0,
        });
        // SAFETY: pf is a live array of two pollfds.
        if unsafe { libc::poll(pf.as_mut_ptr(), 2, -1) } < 0 {
            assert_eq!(io::Error::last_os_error().kind(), io::ErrorKind::Interrupted, "poll");
            continue;
        }
        for i in 0..2 {
            let (from, to) = (i, 1 - i);
            if !pending[from].is_empty() && pf[to].revents & libc::POLLOUT != 0 {
                match socks[to].write(&pending[from]) {
                    Ok(w) => drop(pending[from].drain(..w)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => std::process::exit(0),
                }
            }
            if pending[from].is_empty() && pf[from].revents != 0 {
                let n = match socks[from].read(&mut buf) {
                    Ok(0) => std::process::exit(0),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => std::process::exit(0),
                };
                let w = match socks[to].write(&buf[..n]) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(_) => std::process::exit(0),
                };
                pending[from].extend_from_slice(&buf[w..n]);
            }
        }
    }
}

/// An echo by fd over the compute wire, straight to compute.
fn direct_send(s: &UnixStream, id: u64, fd: &OwnedFd, len: u64) {
    use weaver::wire::{kind, op};
    weaver::ffi::send_fd_frame(s.as_fd(), kind::REQUEST_FD, id, op::ECHO, len, fd.as_fd())
        .expect("send");
}

fn direct_fd_reply(s: &UnixStream, len: u64) -> OwnedFd {
    loop {
        let (h, size, back) = weaver::ffi::recv_fd_frame(s.as_fd()).expect("reply");
        if h.kind != weaver::wire::kind::RESPONSE_FD {
            // A PING's payload is read and dropped; any other frame is an
            // answer without the fd (BUSY, an error): the bench stops and
            // says so rather than wait for a reply that will not come.
            let mut skip = vec![0u8; h.payload_len as usize];
            std::io::Read::read_exact(&mut &*s, &mut skip).unwrap();
            assert_eq!(
                h.kind,
                weaver::wire::kind::PING,
                "compute answered request {} with status {} and no fd: {}",
                h.request_id,
                h.code,
                String::from_utf8_lossy(&skip)
            );
            continue;
        }
        assert_eq!(size, len);
        return back.expect("a reply fd");
    }
}

/// The control frame of an echo by fd, to send with the fd attached.
fn relay_fd_frame(tag: u64, len: u64) -> Vec<u8> {
    let meta = protocol::encode(&ClientMsg {
        tag,
        req: Request::Compute { op: "echo".into(), timeout_ms: None },
    });
    let mut b = frame::prefix_fd(meta.len()).to_vec();
    b.extend_from_slice(&meta);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

fn relay_send(s: &UnixStream, tag: u64, fd: &OwnedFd, len: u64) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let b = relay_fd_frame(tag, len);
    let fds = [fd.as_raw_fd()];
    let n = sendmsg::<()>(
        s.as_raw_fd(),
        &[std::io::IoSlice::new(&b)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .expect("send");
    assert_eq!(n, b.len());
}

fn relay_reply(s: &UnixStream, dec: &mut frame::Decoder, len: u64) -> OwnedFd {
    struct R<'a>(&'a UnixStream, std::collections::VecDeque<OwnedFd>);
    impl Read for R<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            weaver::fdpass::recv(self.0.as_raw_fd(), buf, &mut self.1, 0)
        }
    }
    let mut r = R(s, Default::default());
    let f = weaver::stream::read_frame(dec, &mut r).expect("read").expect("a reply");
    let msg: ServerMsg = protocol::decode(&f.meta, "reply").unwrap();
    assert_eq!(msg.resp, Response::ComputeOk, "{:?}", msg.resp);
    match weaver::fdpass::announced(&f.payload, r.1.pop_front()).expect("a checked fd") {
        weaver::fdpass::Payload::Fd { fd, len: got } => {
            assert_eq!(got, len);
            fd
        }
        weaver::fdpass::Payload::Bytes(_) => panic!("an fd reply came inline"),
    }
}

/// What a client does with the bytes around each request.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// One memfd, filled once, sent again and again; replies not read:
    /// only the transport, which never touches the bytes.
    Transport,
    /// What a client of large payloads does: its bytes go into a fresh
    /// sealed memfd per request and every byte of the reply is read.
    EndToEnd,
}

/// A request's payload fd: the one memfd sent again, or a fresh one.
enum Input<'a> {
    Same(&'a OwnedFd),
    Fresh(OwnedFd),
}

impl Input<'_> {
    fn fd(&self) -> &OwnedFd {
        match self {
            Input::Same(fd) => fd,
            Input::Fresh(fd) => fd,
        }
    }
}

/// Every byte of a reply, read (a checksum, so that it is not optimised
/// away): the cost of a client consuming a result.
fn consume(fd: OwnedFd, len: u64, buf: &mut [u8]) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::from(fd);
    let (mut off, mut sum) = (0u64, 0u64);
    while off < len {
        let n = f.read_at(buf, off).expect("read the reply");
        assert!(n > 0, "reply shorter than announced");
        sum = buf[..n].chunks(8).fold(sum, |a, c| a.rotate_left(5) ^ c[0] as u64);
        off += n as u64;
    }
    sum
}

/// Echo by fd, direct and through weaver, interleaved per size; first the
/// transport alone, then end to end (a client's own work on the bytes on
/// both sides).
fn fd_payloads(direct: &UnixStream, rt: &std::path::Path) {
    let relay = Client::connect(&rt.join("control.sock"), false).unwrap().unwrap().into_stream();
    let quick = common::quick();
    const FD_WINDOW: usize = 8;
    let mut id = 1u64 << 40;
    let mut dec = frame::Decoder::new();
    for work in [Work::Transport, Work::EndToEnd] {
        let (rt_n, pipe_n) = match (work, quick) {
            (Work::Transport, true) => (20, 40),
            (Work::Transport, false) => (300, 2_000),
            (Work::EndToEnd, true) => (6, 12),
            (Work::EndToEnd, false) => (40, 120),
        };
        println!(
            "payloads by fd, {}: {rt_n} round trips and {pipe_n} with {FD_WINDOW} in flight per size:",
            match work {
                Work::Transport => "the transport (one sealed memfd sent again, replies not read)",
                Work::EndToEnd => "end to end (a fresh memfd filled per request, every reply byte read)",
            }
        );
        for (label, len) in [("1 MiB", 1u64 << 20), ("16 MiB", 16 << 20), ("64 MiB", 64 << 20)] {
            let data = common::payload(len as usize);
            let reused = weaver::fdpass::sealed_memfd(&data).unwrap();
            // A fresh memfd per request end to end; the same one otherwise.
            let input = || match work {
                Work::Transport => Input::Same(&reused),
                Work::EndToEnd => Input::Fresh(weaver::fdpass::sealed_memfd(&data).unwrap()),
            };
            let mut buf = vec![0u8; 1 << 20];
            let mut output = |fd: OwnedFd| {
                if work == Work::EndToEnd {
                    std::hint::black_box(consume(fd, len, &mut buf));
                }
            };
            let (mut d_rt, mut r_rt) = (Vec::new(), Vec::new());
            for _ in 0..rt_n {
                id += 1;
                let t = Instant::now();
                direct_send(direct, id, input().fd(), len);
                output(direct_fd_reply(direct, len));
                d_rt.push(t.elapsed());
                let t = Instant::now();
                relay_send(&relay, id, input().fd(), len);
                output(relay_reply(&relay, &mut dec, len));
                r_rt.push(t.elapsed());
            }
            let d50 = common::percentile(&mut d_rt, 50.0);
            let r50 = common::percentile(&mut r_rt, 50.0);
            let pipe = |send: &(dyn Fn(u64) + Sync), recv: &mut dyn FnMut()| -> Duration {
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                let t = Instant::now();
                std::thread::scope(|sc| {
                    sc.spawn(move || {
                        for i in 0..pipe_n {
                            if i >= FD_WINDOW && rx.recv().is_err() {
                                return;
                            }
                            send(i as u64);
                        }
                    });
                    for _ in 0..pipe_n {
                        recv();
                        let _ = tx.send(());
                    }
                });
                t.elapsed()
            };
            let base = id;
            let dt = pipe(&|i| direct_send(direct, base + i, input().fd(), len), &mut || {
                output(direct_fd_reply(direct, len))
            });
            let rtp = pipe(&|i| relay_send(&relay, base + i, input().fd(), len), &mut || {
                output(relay_reply(&relay, &mut dec, len))
            });
            id += pipe_n as u64;
            let gbps = |d: Duration| (len * pipe_n as u64) as f64 / d.as_secs_f64() / 1e9;
            println!(
                "{label:>9}  round trip p50 direct {:.1} us, relay {:.1} us: {:.2}x (goal <= 1.1x from 16 MiB) | \
                 throughput direct {:.2} GB/s, relay {:.2} GB/s: {:.2}x",
                d50.as_secs_f64() * 1e6,
                r50.as_secs_f64() * 1e6,
                r50.as_secs_f64() / d50.as_secs_f64(),
                gbps(dt),
                gbps(rtp),
                dt.as_secs_f64() / rtp.as_secs_f64(),
            );
        }
    }
    println!(
        "64 KiB goes inline (below the {} byte fd threshold): see the table above.",
        weaver::fdpass::THRESHOLD
    );
}
