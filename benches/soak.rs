//! `cargo bench --bench soak`: one weaver daemon with compute under many
//! clients sending a mix of requests for minutes, while compute is killed
//! (SIGKILL) and stopped (SIGSTOP, later SIGCONT) at random. Checks, each
//! printed with its figures:
//! - every request got exactly one reply: sent, answered ok, errors by
//!   kind, abandoned (its client walked away), missing, duplicated, late
//!   and wrong replies, per kind of request;
//! - the daemon's RSS, sampled every second: idle before the load, peak,
//!   and settled a few seconds after it, against the idle figure of the
//!   same run (goal: settled at most 2x idle);
//! - at rest, compute's request table is empty and the daemon holds no
//!   more file descriptors than when idle;
//! - after `weaver shutdown`, no process of the run is left: neither one
//!   recorded during the run (daemon, guard, every compute seen, the
//!   supervised process) nor any whose command line or environment names
//!   the run's temp dir.
//!
//! The mix: `echo` of 0 B to 1 MiB (the reply must be the same bytes),
//! small `render`s, short `sleep`s, sleeps that outlast their timeout,
//! `status`, `ps`, an unknown op, bad parameters, a 4096x4096 render (over
//! the inline payload limit: its image comes by fd), now and then an inline
//! input over the limit, and clients that close their
//! connection with requests in flight or in the middle of a frame. Every
//! compute request carries `timeout_ms`, each client checks the clock while
//! it waits, and a watchdog ends the whole run if it overstays, so nothing
//! can wait forever, however compute is treated.
//!
//! Environment: `WEAVER_BENCH_QUICK=1` (5 s of load instead of 180 s),
//! `WEAVER_SOAK_SECS` (seconds of load), `WEAVER_SOAK_SEED` (the request
//! mix's seed; each run prints its own), `WEAVER_SOAK_STRICT=1` (the RSS
//! goal decides the exit code too; without it a missed goal is printed and
//! the run still passes). Every other check always decides the exit code.
//! A failed run keeps its temp dir (with the daemon's `weaver.log`).

mod common;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weaver::client::Client;
use weaver::frame;
use weaver::pidfile::{self, PidRecord};
use weaver::protocol::{
    self, ClientMsg, ComputeState, ErrorKind, ProcRow, Request, Response, ServerMsg, StatusReport,
};
use weaver::sys::Rng;
use weaver::wire;

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");

/// Client threads, each with its own connection.
const CLIENTS: usize = 16;
/// Requests each client keeps in flight.
const WINDOW: usize = 4;
/// Largest echo of the mix.
const MAX_ECHO: usize = 1 << 20;
/// Echo payloads are slices of one pattern, starting at `tag % PERIOD`.
const PERIOD: usize = 251;
/// A reply due by its request's timeout (status and ps: at once) that has
/// not come this much later is overdue: counted late if it comes after
/// all, missing if it never does.
const GRACE: Duration = Duration::from_secs(5);
/// How often a waiting client looks at the clock (its read timeout).
const READ_TICK: Duration = Duration::from_millis(100);
/// A write that takes longer than this means weaver stopped reading.
const WRITE_LIMIT: Duration = Duration::from_secs(20);
/// Connecting (handshake included) is retried for this long.
const CONNECT_FOR: Duration = Duration::from_secs(5);
/// The monitor's and the chaos thread's `status` calls give up after this.
const STATUS_LIMIT: Duration = Duration::from_secs(5);
/// One send in this many is replaced by walking away: a `sleep` that
/// compute will still hold, then the connection is closed, at a frame
/// boundary or inside a frame (half of one written).
const WALK_AWAY_ONE_IN: u64 = 300;
/// One compute request in this many is an input over the payload limit
/// (16 MiB, refused by weaver before compute sees it).
const OVERSIZED_ONE_IN: u64 = 4000;
/// How long the run may take beyond its load before the watchdog ends it.
const OVERALL_SLACK: Duration = Duration::from_secs(150);
/// What a child of the daemon is recorded as until it is known to be
/// compute or the supervised process (the guard stays one).
const CHILD: &str = "child of the daemon";
/// The RSS goal: settled at most this many times idle.
const RSS_GOAL: f64 = 2.0;

/// The run's daemon configuration. Chaos strikes far more often than the
/// default `stable_after` (10 s): with the defaults every kill would
/// lengthen compute's backoff up to its 10 s cap and compute would spend
/// the soak down. Four workers, so that sleeps do not starve echoes. One
/// supervised process, so that `ps` has a row and the end has one more
/// process to find gone.
const CONFIG: &str = r#"[compute]
workers = 4
restart_interval = "50ms"
backoff_cap = "500ms"
stable_after = "1s"

[[process]]
name = "idler"
command = ["sleep", "3600"]
"#;

// ------------------------------------------------------------- requests

/// The kinds of request of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Echo,
    Render,
    Sleep,
    /// A 1 s sleep with a timeout of at most 200 ms.
    SleepTimeout,
    Status,
    Ps,
    Nonexistent,
    BadParams,
    LargeRender,
    OversizedInput,
}

const OPS: [Op; 10] = [
    Op::Echo,
    Op::Render,
    Op::Sleep,
    Op::SleepTimeout,
    Op::Status,
    Op::Ps,
    Op::Nonexistent,
    Op::BadParams,
    Op::LargeRender,
    Op::OversizedInput,
];

/// A 4096x4096 PPM: its header and 3 bytes a pixel.
const LARGE_RENDER_BYTES: u64 = "P6\n4096 4096\n255\n".len() as u64 + 4096 * 4096 * 3;

/// The mix, by weight (oversized inputs are drawn apart, one in
/// [`OVERSIZED_ONE_IN`]).
const MIX: [(Op, u64); 9] = [
    (Op::Echo, 50),
    (Op::Render, 10),
    (Op::Sleep, 10),
    (Op::SleepTimeout, 3),
    (Op::Status, 8),
    (Op::Ps, 6),
    (Op::Nonexistent, 5),
    (Op::BadParams, 4),
    (Op::LargeRender, 4),
];

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Echo => "echo 0 B-1 MiB",
            Op::Render => "render 32x24",
            Op::Sleep => "sleep",
            Op::SleepTimeout => "sleep > timeout",
            Op::Status => "status",
            Op::Ps => "ps",
            Op::Nonexistent => "unknown op",
            Op::BadParams => "bad parameters",
            Op::LargeRender => "render 4096x4096 by fd",
            Op::OversizedInput => "input > limit",
        }
    }

    fn index(self) -> usize {
        OPS.iter().position(|&o| o == self).expect("every op is listed")
    }

    /// Requests that must never succeed.
    fn must_fail(self) -> bool {
        matches!(self, Op::SleepTimeout | Op::Nonexistent | Op::BadParams | Op::OversizedInput)
    }
}

const KINDS: [ErrorKind; 11] = [
    ErrorKind::BadRequest,
    ErrorKind::UnknownOp,
    ErrorKind::TooLarge,
    ErrorKind::NotFound,
    ErrorKind::BadConfig,
    ErrorKind::Cancelled,
    ErrorKind::Busy,
    ErrorKind::ComputeFailed,
    ErrorKind::ComputeDown,
    ErrorKind::Timeout,
    ErrorKind::ShuttingDown,
];

fn kind_index(k: ErrorKind) -> usize {
    KINDS.iter().position(|&x| x == k).expect("every error kind is listed")
}

/// What each client counts, and the sums of all of them.
#[derive(Debug, Default, Clone)]
struct PerOp {
    sent: u64,
    ok: u64,
    err: [u64; KINDS.len()],
    /// Still unanswered when their client closed the connection on purpose.
    abandoned: u64,
    missing: u64,
    dup: u64,
    late: u64,
    wrong: u64,
}

impl PerOp {
    fn errors(&self) -> u64 {
        self.err.iter().sum()
    }

    fn add(&mut self, o: &PerOp) {
        self.sent += o.sent;
        self.ok += o.ok;
        for (a, b) in self.err.iter_mut().zip(o.err) {
            *a += b;
        }
        self.abandoned += o.abandoned;
        self.missing += o.missing;
        self.dup += o.dup;
        self.late += o.late;
        self.wrong += o.wrong;
    }
}

/// At most this many examples of each kind of finding are kept.
const EXAMPLES: usize = 5;

#[derive(Debug, Default)]
struct Tally {
    ops: [PerOp; OPS.len()],
    /// Replies with a tag this client never sent (or sent on a connection
    /// it had closed).
    unknown_tags: u64,
    connects: u64,
    /// Connections closed on purpose with requests in flight.
    walked_away: u64,
    /// Connections closed on purpose inside a frame.
    half_frames: u64,
    /// Connections weaver closed, or that failed.
    closed_by_weaver: u64,
    connect_failures: u64,
    /// The first message of each error kind.
    messages: BTreeMap<usize, String>,
    findings: Vec<String>,
}

impl Tally {
    fn finding(&mut self, what: String) {
        if self.findings.len() < EXAMPLES {
            self.findings.push(what);
        }
    }

    fn add(&mut self, o: Tally) {
        for (a, b) in self.ops.iter_mut().zip(&o.ops) {
            a.add(b);
        }
        self.unknown_tags += o.unknown_tags;
        self.connects += o.connects;
        self.walked_away += o.walked_away;
        self.half_frames += o.half_frames;
        self.closed_by_weaver += o.closed_by_weaver;
        self.connect_failures += o.connect_failures;
        for (k, m) in o.messages {
            self.messages.entry(k).or_insert(m);
        }
        for f in o.findings {
            self.finding(f);
        }
    }

    fn total(&self) -> PerOp {
        let mut t = PerOp::default();
        for o in &self.ops {
            t.add(o);
        }
        t
    }
}

// ------------------------------------------------------------ the run

/// What every thread of the run shares.
struct Run {
    rt: PathBuf,
    config: PathBuf,
    /// The temp dir's path: every process of the run has it in its command
    /// line or environment.
    mark: String,
    daemon: PidRecord,
    /// Set when the load starts.
    load_end: OnceLock<Instant>,
    seed: u64,
    quick: bool,
    /// Echo payloads: `PERIOD` bytes repeating, long enough for any slice.
    pattern: Vec<u8>,
    /// The input over the limit.
    oversized: Vec<u8>,
    /// Every process of the run seen: (pid, start time) -> what it is.
    seen: Mutex<BTreeMap<(u32, u64), String>>,
    /// The compute pid the chaos thread has stopped (0: none).
    stopped: AtomicU32,
    /// The run is over: no watchdog, no emergency stop.
    done: AtomicBool,
    phase: Mutex<&'static str>,
}

impl Run {
    fn weaver(&self) -> Command {
        common::weaver_with_config(WEAVER, COMPUTE, &self.rt, &self.config)
    }

    fn load_end(&self) -> Instant {
        *self.load_end.get().expect("the load has started")
    }

    fn control(&self) -> PathBuf {
        self.rt.join("control.sock")
    }

    fn compute_socket(&self) -> String {
        self.rt.join("compute.sock").display().to_string()
    }

    /// Record a process of the run; what it is, once known, replaces
    /// [`CHILD`].
    fn saw(&self, pid: u32, what: &str) {
        if let Some(start) = pidfile::start_time(pid) {
            let mut seen = self.seen.lock().unwrap();
            let w = seen.entry((pid, start)).or_insert_with(|| what.to_string());
            if what != CHILD {
                *w = what.to_string();
            }
        }
    }

    fn set_phase(&self, p: &'static str) {
        *self.phase.lock().unwrap() = p;
    }

    /// Whether `pid` is this run's compute (its command line names our
    /// compute socket), not a recycled pid.
    fn is_our_compute(&self, pid: u32) -> bool {
        cmdline(pid).is_some_and(|c| c.contains(&self.compute_socket()))
    }

    /// The run went wrong: let a stopped compute go, and kill the daemon
    /// (its guard and compute's parent-death signal take the rest).
    fn emergency_stop(&self) {
        let pid = self.stopped.swap(0, Ordering::SeqCst);
        if pid != 0 && self.is_our_compute(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
        }
        if self.daemon.is_current() {
            let _ = kill(Pid::from_raw(self.daemon.pid as i32), Signal::SIGKILL);
        }
    }
}

/// Stops the daemon by force if the run ends early (a panic).
struct EmergencyStop<'a>(&'a Run);

impl Drop for EmergencyStop<'_> {
    fn drop(&mut self) {
        if !self.0.done.load(Ordering::SeqCst) {
            self.0.emergency_stop();
        }
    }
}

fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " ").trim_end().to_string())
}

fn environ_has(pid: u32, mark: &str) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|e| e.windows(mark.len()).any(|w| w == mark.as_bytes()))
}

/// VmRSS of `pid` in kB; `None` once it is gone.
fn rss_kb(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The daemon's open fds less one per connected client (as `status`
/// counts them, asked just before).
fn fds_besides_clients(run: &Run, probe: &mut Probe<'_>) -> Option<usize> {
    let clients = probe.status().ok()?.daemon.clients as usize;
    Some(fd_count(run.daemon.pid)?.saturating_sub(clients))
}

fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|l| l.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

/// A duration drawn evenly from `lo..hi` milliseconds.
fn between(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(lo + below(rng, hi - lo))
}

/// Sleep until `until` or until `stop` is set, in short steps.
fn nap_until(until: Instant, stop: impl Fn() -> bool) {
    while !stop() {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

// ----------------------------------------------------- status requests

/// A connection for `status` and `ps`, reconnected after any failure.
struct Probe<'a> {
    run: &'a Run,
    client: Option<Client>,
}

impl<'a> Probe<'a> {
    fn new(run: &'a Run) -> Self {
        Probe { run, client: None }
    }

    fn call(&mut self, req: Request) -> Result<Response, String> {
        if self.client.is_none() {
            let mut c = Client::connect(&self.run.control(), false)
                .map_err(|e| format!("connect: {e}"))?
                .map_err(|e| format!("connect: {e}"))?;
            c.stream().set_read_timeout(Some(STATUS_LIMIT)).map_err(|e| e.to_string())?;
            c.stream().set_write_timeout(Some(STATUS_LIMIT)).map_err(|e| e.to_string())?;
            self.client = Some(c);
        }
        let c = self.client.as_mut().expect("connected above");
        match c.call(req, &[]) {
            Ok(r) => Ok(r.resp),
            Err(e) => {
                self.client = None;
                Err(e.to_string())
            }
        }
    }

    fn status(&mut self) -> Result<StatusReport, String> {
        match self.call(Request::Status { wait_compute: false })? {
            Response::Status(s) => Ok(*s),
            other => Err(format!("status answered {other:?}")),
        }
    }

    fn ps(&mut self) -> Result<Vec<ProcRow>, String> {
        match self.call(Request::Ps)? {
            Response::Ps(rows) => Ok(rows),
            other => Err(format!("ps answered {other:?}")),
        }
    }
}

// -------------------------------------------------------------- clients

/// A request waiting for its reply.
struct Pending {
    op: Op,
    /// When the reply is overdue.
    due: Instant,
    /// Echo: the pattern's offset and the length sent.
    echo: Option<(usize, usize)>,
}

struct Conn {
    stream: UnixStream,
    dec: frame::Decoder,
}

enum Got {
    Reply(ServerMsg, Vec<u8>),
    Nothing,
    Closed(String),
}

struct ClientRun<'a> {
    id: usize,
    run: &'a Run,
    rng: Rng,
    seq: u64,
    conn: Option<Conn>,
    pending: HashMap<u64, Pending>,
    /// Past due, still unanswered: late if answered, else missing.
    overdue: HashMap<u64, Pending>,
    /// Tags answered, with their op (to tell a duplicate).
    answered: HashMap<u64, Op>,
    t: Tally,
}

impl<'a> ClientRun<'a> {
    fn new(id: usize, run: &'a Run) -> Self {
        ClientRun {
            id,
            run,
            rng: Rng::seeded(run.seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            seq: 0,
            conn: None,
            pending: HashMap::new(),
            overdue: HashMap::new(),
            answered: HashMap::new(),
            t: Tally::default(),
        }
    }

    fn connect(&mut self) -> bool {
        let end = Instant::now() + CONNECT_FOR;
        loop {
            let why = match Client::connect(&self.run.control(), false) {
                Ok(Ok(c)) => {
                    let stream = c.into_stream();
                    let set = stream
                        .set_read_timeout(Some(READ_TICK))
                        .and_then(|()| stream.set_write_timeout(Some(WRITE_LIMIT)));
                    match set {
                        Ok(()) => {
                            self.conn = Some(Conn { stream, dec: frame::Decoder::new() });
                            self.t.connects += 1;
                            return true;
                        }
                        Err(e) => e.to_string(),
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= end {
                self.t.connect_failures += 1;
                self.t.finding(format!("client {}: cannot connect: {why}", self.id));
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pick(&mut self) -> Op {
        if below(&mut self.rng, OVERSIZED_ONE_IN) == 0 {
            return Op::OversizedInput;
        }
        let total: u64 = MIX.iter().map(|m| m.1).sum();
        let mut r = below(&mut self.rng, total);
        for (op, w) in MIX {
            if r < w {
                return op;
            }
            r -= w;
        }
        unreachable!("r < total")
    }

    fn echo_len(&mut self) -> usize {
        let r = &mut self.rng;
        match below(r, 100) {
            0..=9 => 0,
            10..=39 => 1 + below(r, 100) as usize,
            40..=59 => 101 + below(r, 4096 - 100) as usize,
            60..=84 => 4097 + below(r, 65536 - 4096) as usize,
            85..=94 => 65537 + below(r, (MAX_ECHO - 65536) as u64) as usize,
            _ => MAX_ECHO,
        }
    }

    /// Send one request of `op`; `hold`: a sleep compute will still be
    /// running when this client walks away.
    fn send(&mut self, op: Op, hold: bool) {
        let run = self.run;
        self.seq += 1;
        let tag = ((self.id as u64 + 1) << 40) | self.seq;
        let mut timeout_ms = 1000 + below(&mut self.rng, 3000);
        let mut echo = None;
        let compute =
            |name: &str, t: u64| Request::Compute { op: name.into(), timeout_ms: Some(t) };
        let (req, payload): (Request, Cow<'_, [u8]>) = match op {
            Op::Echo => {
                let len = self.echo_len();
                let off = (tag % PERIOD as u64) as usize;
                echo = Some((off, len));
                (compute("echo", timeout_ms), Cow::Borrowed(&run.pattern[off..off + len]))
            }
            Op::Render => (
                compute("render", timeout_ms),
                Cow::Borrowed(b"width=32 height=24 iterations=64".as_slice()),
            ),
            Op::Sleep if hold => {
                timeout_ms = 5000;
                (compute("sleep", timeout_ms), Cow::Borrowed(b"ms=2000".as_slice()))
            }
            Op::Sleep => {
                let ms = 1 + below(&mut self.rng, 100);
                (compute("sleep", timeout_ms), Cow::Owned(format!("ms={ms}").into_bytes()))
            }
            Op::SleepTimeout => {
                timeout_ms = 50 + below(&mut self.rng, 150);
                (compute("sleep", timeout_ms), Cow::Borrowed(b"ms=1000".as_slice()))
            }
            Op::Status => {
                timeout_ms = 0;
                (Request::Status { wait_compute: false }, Cow::Borrowed(&[][..]))
            }
            Op::Ps => {
                timeout_ms = 0;
                (Request::Ps, Cow::Borrowed(&[][..]))
            }
            Op::Nonexistent => (compute("no-such-op", timeout_ms), Cow::Borrowed(&[][..])),
            Op::BadParams => {
                (compute("render", timeout_ms), Cow::Borrowed(b"width=0 colour=red".as_slice()))
            }
            Op::LargeRender => (
                compute("render", timeout_ms),
                Cow::Borrowed(b"width=4096 height=4096 iterations=1".as_slice()),
            ),
            Op::OversizedInput => {
                (compute("echo", timeout_ms), Cow::Borrowed(run.oversized.as_slice()))
            }
        };
        let Some(conn) = self.conn.as_mut() else { return };
        let meta = protocol::encode(&ClientMsg { tag, req });
        let due = Instant::now() + Duration::from_millis(timeout_ms) + GRACE;
        self.t.ops[op.index()].sent += 1;
        self.pending.insert(tag, Pending { op, due, echo });
        if let Err(e) = weaver::stream::write_control(&mut conn.stream, &meta, &payload) {
            self.lost_connection(format!("writing a request failed: {e}"));
        }
    }

    /// Close the connection with a request at compute (and maybe half a
    /// frame written), then connect again.
    fn walk_away(&mut self) {
        self.send(Op::Sleep, true);
        if let Some(mut c) = self.conn.take() {
            if below(&mut self.rng, 2) == 0 {
                let mut f = Vec::new();
                let meta = protocol::encode(&ClientMsg {
                    tag: u64::MAX,
                    req: Request::Compute { op: "echo".into(), timeout_ms: Some(1000) },
                });
                frame::push(&mut f, &meta, &self.run.pattern[..1000]);
                let _ = c.stream.write_all(&f[..f.len() / 2]);
                self.t.half_frames += 1;
            } else {
                self.t.walked_away += 1;
            }
        }
        for (_, p) in self.pending.drain().chain(self.overdue.drain()) {
            self.t.ops[p.op.index()].abandoned += 1;
        }
        self.connect();
    }

    /// weaver closed the connection (or it failed): what it still owed us
    /// is missing.
    fn lost_connection(&mut self, why: String) {
        self.conn = None;
        self.t.closed_by_weaver += 1;
        let owed = self.pending.len() + self.overdue.len();
        self.t.finding(format!(
            "client {}: connection lost with {owed} request(s) unanswered: {why}",
            self.id
        ));
        for (_, p) in self.pending.drain().chain(self.overdue.drain()) {
            self.t.ops[p.op.index()].missing += 1;
        }
    }

    fn read(&mut self) -> Got {
        let Some(c) = self.conn.as_mut() else { return Got::Closed("not connected".into()) };
        match weaver::stream::read_frame(&mut c.dec, &mut c.stream) {
            Ok(Some(f)) => match protocol::decode::<ServerMsg>(&f.meta, "reply") {
                Ok(m) => Got::Reply(m, f.payload),
                Err(e) => Got::Closed(e),
            },
            Ok(None) => Got::Closed("weaver closed the connection".into()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Got::Nothing
            }
            Err(e) => Got::Closed(format!("reading a reply failed: {e}")),
        }
    }

    fn on_reply(&mut self, msg: ServerMsg, payload: Vec<u8>) {
        let (p, late) = match self.pending.remove(&msg.tag) {
            Some(p) => (p, false),
            None => match self.overdue.remove(&msg.tag) {
                Some(p) => (p, true),
                None => {
                    match self.answered.get(&msg.tag) {
                        Some(&op) => {
                            self.t.ops[op.index()].dup += 1;
                            self.t.finding(format!(
                                "client {}: a second reply to tag {:#x} ({}): {:?}",
                                self.id,
                                msg.tag,
                                op.label(),
                                msg.resp
                            ));
                        }
                        None => {
                            self.t.unknown_tags += 1;
                            self.t.finding(format!(
                                "client {}: a reply to tag {:#x}, never sent on this connection",
                                self.id, msg.tag
                            ));
                        }
                    }
                    return;
                }
            },
        };
        self.answered.insert(msg.tag, p.op);
        let s = &mut self.t.ops[p.op.index()];
        if late {
            s.late += 1;
        }
        let wrong = match msg.resp {
            Response::Error(e) => {
                s.err[kind_index(e.kind)] += 1;
                self.t.messages.entry(kind_index(e.kind)).or_insert(e.message);
                (p.op == Op::OversizedInput && e.kind != ErrorKind::TooLarge)
                    .then(|| format!("refused as {:?}, not TooLarge", e.kind))
            }
            resp => {
                s.ok += 1;
                self.check_ok(&p, &resp, &payload)
            }
        };
        if let Some(why) = wrong {
            self.t.ops[p.op.index()].wrong += 1;
            self.t.finding(format!(
                "client {}: tag {:#x} ({}): {why}",
                self.id,
                msg.tag,
                p.op.label()
            ));
        }
    }

    /// What is wrong with a successful reply, if anything.
    fn check_ok(&self, p: &Pending, resp: &Response, payload: &[u8]) -> Option<String> {
        if p.op.must_fail() {
            return Some(format!("succeeded, but must fail: {resp:?}"));
        }
        match (p.op, resp) {
            (Op::Status, Response::Status(_)) | (Op::Ps, Response::Ps(_)) => None,
            (Op::Echo, Response::ComputeOk) => {
                let (off, len) = p.echo.expect("echo requests record their payload");
                (payload != &self.run.pattern[off..off + len]).then(|| {
                    format!("echo of {len} bytes came back as {} other bytes", payload.len())
                })
            }
            (Op::Render, Response::ComputeOk) => {
                (!payload.starts_with(b"P6")).then(|| "render output is not a PPM".into())
            }
            (Op::Sleep, Response::ComputeOk) => None,
            // Over the inline limit: the image comes in a sealed memfd, the
            // frame carries its size (a plain read drops the fd).
            (Op::LargeRender, Response::ComputeOk) => (payload != LARGE_RENDER_BYTES.to_le_bytes())
                .then(|| {
                    format!("a 4096x4096 render did not announce {LARGE_RENDER_BYTES} bytes by fd")
                }),
            (_, other) => Some(format!("answered with {other:?}")),
        }
    }

    /// Move what is past due out of the window.
    fn sweep_overdue(&mut self, now: Instant) {
        let due: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.due < now).map(|(&t, _)| t).collect();
        for tag in due {
            let p = self.pending.remove(&tag).expect("listed above");
            self.overdue.insert(tag, p);
        }
    }

    fn run(mut self) -> Tally {
        if !self.connect() {
            return self.t;
        }
        if self.id == 0 {
            // At least one input over the limit in every run.
            self.send(Op::OversizedInput, false);
        }
        loop {
            let now = Instant::now();
            if self.conn.is_none() && (now >= self.run.load_end() || !self.connect()) {
                break;
            }
            if now < self.run.load_end() {
                while self.pending.len() < WINDOW && self.conn.is_some() {
                    if below(&mut self.rng, WALK_AWAY_ONE_IN) == 0 {
                        self.walk_away();
                    } else {
                        let op = self.pick();
                        self.send(op, false);
                    }
                }
            } else if self.pending.is_empty() {
                break;
            }
            match self.read() {
                Got::Reply(m, payload) => self.on_reply(m, payload),
                Got::Nothing => {}
                Got::Closed(why) => self.lost_connection(why),
            }
            self.sweep_overdue(Instant::now());
        }
        self.fence();
        for (tag, p) in self.overdue.drain().collect::<Vec<_>>() {
            self.t.ops[p.op.index()].missing += 1;
            self.t.finding(format!(
                "client {}: no reply to tag {tag:#x} ({}) {GRACE:?} past its timeout",
                self.id,
                p.op.label()
            ));
        }
        self.t
    }

    /// At the end: one more `status`, and every frame until its reply
    /// (late replies and duplicates of what came before), then a short
    /// wait for stragglers.
    fn fence(&mut self) {
        if self.conn.is_none() {
            return;
        }
        self.seq += 1;
        let tag = ((self.id as u64 + 1) << 40) | self.seq;
        let meta =
            protocol::encode(&ClientMsg { tag, req: Request::Status { wait_compute: false } });
        let conn = self.conn.as_mut().expect("checked above");
        if let Err(e) = weaver::stream::write_control(&mut conn.stream, &meta, &[]) {
            self.lost_connection(format!("writing the last status failed: {e}"));
            return;
        }
        let end = Instant::now() + GRACE;
        let mut linger: Option<Instant> = None;
        while Instant::now() < linger.unwrap_or(end) {
            match self.read() {
                Got::Reply(m, _) if m.tag == tag => {
                    linger = Some(Instant::now() + Duration::from_millis(300))
                }
                Got::Reply(m, payload) => self.on_reply(m, payload),
                Got::Nothing => {}
                Got::Closed(why) => {
                    self.lost_connection(why);
                    return;
                }
            }
        }
        if linger.is_none() {
            self.t.finding(format!("client {}: no reply to the last status", self.id));
            self.t.ops[Op::Status.index()].missing += 1;
        }
    }
}

// ------------------------------------------------------ monitor, chaos

#[derive(Debug, Default)]
struct Watch {
    /// (seconds since the load started, kB).
    rss: Vec<(f64, u64)>,
    status_failures: u64,
    daemon_gone: bool,
    last_error: Option<String>,
}

/// Every second: the daemon's RSS, compute's pid, the daemon's children.
fn monitor(run: &Run, t0: Instant, stop: &AtomicBool) -> Watch {
    let mut w = Watch::default();
    let mut probe = Probe::new(run);
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let Some(kb) = rss_kb(run.daemon.pid).filter(|_| run.daemon.is_current()) else {
            w.daemon_gone = true;
            break;
        };
        w.rss.push((t0.elapsed().as_secs_f64(), kb));
        match probe.status() {
            Ok(s) => {
                if let Some(pid) = s.compute.pid {
                    run.saw(pid, "compute");
                }
            }
            Err(e) => {
                w.status_failures += 1;
                w.last_error = Some(e);
            }
        }
        for c in children(run.daemon.pid) {
            run.saw(c, CHILD);
        }
        next += Duration::from_secs(1);
        nap_until(next, || stop.load(Ordering::SeqCst));
    }
    w
}

#[derive(Debug, Default)]
struct Chaos {
    kills: u64,
    stops: u64,
    /// Stopped computes that were gone before their SIGCONT.
    gone_before_cont: u64,
    /// Due, but compute was not ready (restarting) or not ours.
    skipped: u64,
    status_failures: u64,
    longest_stop: Duration,
}

fn chaos(run: &Run) -> Chaos {
    let mut c = Chaos::default();
    let mut rng = Rng::seeded(run.seed ^ 0xc4a0_5c4a_05c4_a05c);
    let mut probe = Probe::new(run);
    let (gap, stop_for) =
        if run.quick { ((300, 1200), (200, 1000)) } else { ((1000, 5000), (300, 3000)) };
    let loading = || Instant::now() < run.load_end();
    loop {
        nap_until(Instant::now() + between(&mut rng, gap.0, gap.1), || !loading());
        if !loading() {
            break;
        }
        let s = match probe.status() {
            Ok(s) => s,
            Err(_) => {
                c.status_failures += 1;
                continue;
            }
        };
        let pid = match (s.compute.state, s.compute.pid) {
            (ComputeState::Ready, Some(pid)) if run.is_our_compute(pid) => pid,
            _ => {
                c.skipped += 1;
                continue;
            }
        };
        let Some(start) = pidfile::start_time(pid) else {
            c.skipped += 1;
            continue;
        };
        run.saw(pid, "compute");
        let target = Pid::from_raw(pid as i32);
        // A kill first and a stop second, so that even a short run has
        // both; then either, at random.
        let kill_it = match (c.kills, c.stops) {
            (0, _) => true,
            (_, 0) => false,
            _ => below(&mut rng, 2) == 0,
        };
        if kill_it {
            let _ = kill(target, Signal::SIGKILL);
            c.kills += 1;
            continue;
        }
        run.stopped.store(pid, Ordering::SeqCst);
        let _ = kill(target, Signal::SIGSTOP);
        c.stops += 1;
        let d = between(&mut rng, stop_for.0, stop_for.1);
        c.longest_stop = c.longest_stop.max(d);
        std::thread::sleep(d);
        if pidfile::start_time(pid) == Some(start) {
            let _ = kill(target, Signal::SIGCONT);
        } else {
            c.gone_before_cont += 1;
        }
        run.stopped.store(0, Ordering::SeqCst);
    }
    c
}

/// After shutdown: what of the run still runs, waiting up to `limit` for
/// it to go; those recorded during the run, then any other.
fn leftovers(run: &Run, limit: Duration) -> (Vec<String>, Vec<String>) {
    let me = std::process::id();
    let end = Instant::now() + limit;
    loop {
        let (mut left, mut other) = (Vec::new(), Vec::new());
        let seen = run.seen.lock().unwrap().clone();
        for (&(pid, start), what) in &seen {
            if pidfile::start_time(pid) == Some(start) {
                left.push(format!("{what} (pid {pid}): {}", cmdline(pid).unwrap_or_default()));
            }
        }
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Some(start) = pidfile::start_time(pid) else { continue };
            if pid == me || seen.contains_key(&(pid, start)) {
                continue;
            }
            let line = cmdline(pid).unwrap_or_default();
            if line.contains(&run.mark) || environ_has(pid, &run.mark) {
                other.push(format!("pid {pid}: {line}"));
            }
        }
        if (left.is_empty() && other.is_empty()) || Instant::now() >= end {
            return (left, other);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

// ----------------------------------------------------------------- main

fn main() {
    let quick = common::quick();
    let secs = env_u64("WEAVER_SOAK_SECS").unwrap_or(if quick { 5 } else { 180 });
    let strict = std::env::var("WEAVER_SOAK_STRICT").is_ok_and(|v| v == "1");
    let seed = env_u64("WEAVER_SOAK_SEED").unwrap_or_else(|| Rng::from_time().next_u64());
    let load = Duration::from_secs(secs);
    let settle = Duration::from_secs(if quick { 3 } else { 5 });

    let dir = tempfile::Builder::new().prefix("wvsoak").tempdir_in("/tmp").unwrap();
    let rt = dir.path().join("rt");
    let config = dir.path().join("weaver.toml");
    fs::write(&config, CONFIG).expect("write weaver.toml");
    let mut start = Command::new(WEAVER);
    start
        .env("WEAVER_RUNTIME_DIR", &rt)
        // Revisions of the bench daemon, beside its runtime dir.
        .env("WEAVER_STATE_DIR", rt.with_file_name("state"))
        .env("WEAVER_COMPUTE_BIN", COMPUTE)
        .env("WEAVER_LOG", "warn")
        .arg("--config")
        .arg(&config)
        .args(["status", "--wait"])
        .stdout(Stdio::null());
    common::run_ok(start);
    let daemon = pidfile::live_pid(&rt.join("weaver.pid"))
        .and_then(PidRecord::of)
        .expect("a live daemon after `weaver status --wait`");

    let mut pattern = Vec::with_capacity(MAX_ECHO + PERIOD);
    pattern.extend((0..MAX_ECHO + PERIOD).map(|i| (i % PERIOD) as u8));
    let run = Arc::new(Run {
        rt,
        config,
        mark: dir.path().display().to_string(),
        daemon,
        load_end: OnceLock::new(),
        seed,
        quick,
        pattern,
        oversized: vec![0x5a; wire::MAX_PAYLOAD + 1],
        seen: Mutex::new(BTreeMap::new()),
        stopped: AtomicU32::new(0),
        done: AtomicBool::new(false),
        phase: Mutex::new("start"),
    });
    run.saw(daemon.pid, "daemon");
    for c in children(daemon.pid) {
        run.saw(c, CHILD);
    }

    // The watchdog: a run that overstays is ended, whatever it waits for.
    {
        let run = Arc::clone(&run);
        let deadline = Instant::now() + load + OVERALL_SLACK;
        std::thread::spawn(move || {
            nap_until(deadline, || run.done.load(Ordering::SeqCst));
            if run.done.load(Ordering::SeqCst) {
                return;
            }
            let phase = *run.phase.lock().unwrap();
            eprintln!(
                "soak: FAILED: the run took longer than its {load:?} of load and {:?} more, \
                 in phase \"{phase}\"; daemon killed; kept {} (the daemon's log is \
                 rt/weaver.log)",
                OVERALL_SLACK, run.mark
            );
            run.emergency_stop();
            std::process::exit(2);
        });
    }
    let _emergency = EmergencyStop(&run);
    let run: &Run = &run;

    // Idle: compute connected, the supervised process up, nobody asking.
    let mut probe = Probe::new(run);
    let st = probe.status().expect("status");
    if let Some(pid) = st.compute.pid {
        run.saw(pid, "compute");
    }
    let rows = probe.ps().expect("ps");
    for r in &rows {
        if let Some(pid) = r.pid {
            run.saw(pid, "supervised process");
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle_kb = rss_kb(daemon.pid).expect("daemon RSS");
    let idle_fds = fds_besides_clients(run, &mut probe).expect("daemon fds when idle");

    println!(
        "soak: {CLIENTS} clients x {WINDOW} in flight, {secs} s of load with compute killed and \
         stopped at random; seed {seed:#x} (WEAVER_SOAK_SEED to repeat the mix)"
    );

    // The load.
    drop(probe);
    run.load_end.set(Instant::now() + load).expect("set once");
    run.set_phase("load");
    let t0 = Instant::now();
    let stop_monitor = AtomicBool::new(false);
    let (tally, chaos_out, watch, load_wall, settled) = std::thread::scope(|s| {
        let mon = s.spawn(|| monitor(run, t0, &stop_monitor));
        let ch = s.spawn(|| chaos(run));
        let clients: Vec<_> =
            (0..CLIENTS).map(|i| s.spawn(move || ClientRun::new(i, run).run())).collect();
        let mut tally = Tally::default();
        for c in clients {
            tally.add(c.join().expect("client thread panicked"));
        }
        let load_wall = t0.elapsed();
        let chaos_out = ch.join().expect("chaos thread panicked");
        run.set_phase("settle");
        std::thread::sleep(settle);
        stop_monitor.store(true, Ordering::SeqCst);
        let watch = mon.join().expect("monitor thread panicked");
        let mut probe = Probe::new(run);
        let settled = probe.status();
        let rss = rss_kb(run.daemon.pid);
        let fds = fds_besides_clients(run, &mut probe);
        (tally, chaos_out, watch, load_wall, (settled, rss, fds))
    });
    let (settled_status, settled_kb, settled_fds) = settled;

    // Shutdown, then nothing of the run may be left.
    run.set_phase("shutdown");
    let shutdown_ok = run.weaver().arg("shutdown").status().is_ok_and(|s| s.success());
    let (left, other) = leftovers(run, Duration::from_secs(5));
    run.done.store(true, Ordering::SeqCst);

    // ---- Report
    let total = tally.total();
    let mut failed: Vec<String> = Vec::new();
    let mut goals_missed: Vec<String> = Vec::new();

    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>8} {:>5} {:>5} {:>6}",
        "request", "sent", "ok", "errors", "abandoned", "missing", "dup", "late", "wrong"
    );
    let row = |label: &str, o: &PerOp| {
        println!(
            "{label:<16} {:>9} {:>9} {:>9} {:>9} {:>8} {:>5} {:>5} {:>6}",
            o.sent,
            o.ok,
            o.errors(),
            o.abandoned,
            o.missing,
            o.dup,
            o.late,
            o.wrong
        )
    };
    for op in OPS {
        row(op.label(), &tally.ops[op.index()]);
    }
    row("total", &total);
    let by_kind: Vec<String> = KINDS
        .iter()
        .enumerate()
        .filter(|&(i, _)| total.err[i] > 0)
        .map(|(i, k)| format!("{k:?} {}", total.err[i]))
        .collect();
    println!(
        "errors by kind: {}",
        if by_kind.is_empty() { "none".into() } else { by_kind.join(", ") }
    );
    for (k, m) in &tally.messages {
        println!("  e.g. {:?}: {m}", KINDS[*k]);
    }
    let answered = total.ok + total.errors();
    let unanswered = total.sent - answered - total.abandoned;
    println!(
        "replies: {answered} to {} requests sent ({} abandoned by their client); {unanswered} \
         without a reply, {} duplicated, {} to unknown tags, {} late (> timeout + {GRACE:?}), \
         {} wrong",
        total.sent, total.abandoned, total.dup, tally.unknown_tags, total.late, total.wrong
    );
    println!(
        "connections: {} opened ({} closed with requests in flight, {} closed inside a frame), \
         {} closed by weaver, {} failed to connect",
        tally.connects,
        tally.walked_away,
        tally.half_frames,
        tally.closed_by_weaver,
        tally.connect_failures
    );
    println!(
        "throughput: {:.0} requests/s answered ({} sent) over {:.1} s of load and drain",
        answered as f64 / load_wall.as_secs_f64(),
        total.sent,
        load_wall.as_secs_f64()
    );
    println!(
        "chaos: {} SIGKILL, {} SIGSTOP (up to {:.1} s; {} gone before SIGCONT), {} skipped \
         (compute restarting)",
        chaos_out.kills,
        chaos_out.stops,
        chaos_out.longest_stop.as_secs_f64(),
        chaos_out.gone_before_cont,
        chaos_out.skipped
    );
    let computes = run.seen.lock().unwrap().values().filter(|w| *w == "compute").count();
    match &settled_status {
        Ok(s) => {
            let c = &s.compute;
            println!(
                "compute: {} restarts (status), {computes} pids seen; served {}, errors {}, \
                 cancelled {}, timed out {}, busy {}, late replies dropped {}; at rest {}, \
                 {} in flight, {} queued",
                c.restarts,
                c.served,
                c.errors,
                c.cancelled,
                c.timed_out,
                c.busy_rejected,
                c.dropped_late,
                c.state,
                c.in_flight,
                c.queued
            );
            if c.in_flight != 0 || c.queued != 0 {
                failed.push(format!(
                    "at rest compute still has {} in flight and {} queued",
                    c.in_flight, c.queued
                ));
            }
        }
        Err(e) => failed.push(format!("status after the load failed: {e}")),
    }
    let peak_kb = watch.rss.iter().map(|r| r.1).max().unwrap_or(idle_kb).max(idle_kb);
    let ratio = settled_kb.map(|kb| kb as f64 / idle_kb as f64);
    println!(
        "daemon RSS: idle {}, peak {}, settled {} ({} s after the load) | settled / idle {} \
         (goal <= {RSS_GOAL}x) | {} samples",
        mb(idle_kb),
        mb(peak_kb),
        settled_kb.map_or("-".into(), mb),
        settle.as_secs(),
        ratio.map_or("-".into(), |r| format!("{r:.2}x")),
        watch.rss.len()
    );
    // Whether RSS stays flat under load or creeps up: the largest sample
    // of each sixth of the run's samples, in order.
    let n = watch.rss.len();
    let slices: Vec<String> = (0..6)
        .map(|i| &watch.rss[i * n / 6..(i + 1) * n / 6])
        .filter(|c| !c.is_empty())
        .map(|c| mb(c.iter().map(|r| r.1).max().unwrap_or(0)))
        .collect();
    println!("daemon RSS over the run, largest of each sixth: {}", slices.join(", "));
    println!(
        "daemon fds besides client connections: idle {idle_fds}, settled {}",
        settled_fds.map_or("-".into(), |n| n.to_string())
    );
    println!(
        "after shutdown: {} of {} processes recorded during the run left, {} other naming its \
         temp dir",
        left.len(),
        run.seen.lock().unwrap().len(),
        other.len()
    );

    // ---- Checks
    if total.sent == 0 || total.ok == 0 {
        failed.push("no request succeeded".into());
    }
    if unanswered > 0 || total.dup > 0 || tally.unknown_tags > 0 {
        failed.push(format!(
            "not exactly one reply each: {unanswered} missing, {} duplicated, {} to unknown tags",
            total.dup, tally.unknown_tags
        ));
    }
    if total.late > 0 {
        failed.push(format!("{} replies came more than {GRACE:?} past their timeout", total.late));
    }
    if total.wrong > 0 {
        failed.push(format!("{} replies were wrong for their request", total.wrong));
    }
    if tally.closed_by_weaver > 0 || tally.connect_failures > 0 {
        failed.push(format!(
            "{} connections lost, {} connects failed",
            tally.closed_by_weaver, tally.connect_failures
        ));
    }
    if chaos_out.kills == 0 || chaos_out.stops == 0 {
        failed.push(format!(
            "chaos did not both kill and stop compute ({} kills, {} stops, {} skipped while \
             compute was not ready)",
            chaos_out.kills, chaos_out.stops, chaos_out.skipped
        ));
    }
    if watch.daemon_gone {
        failed.push("the daemon died during the run".into());
    }
    if watch.status_failures + chaos_out.status_failures > 0 {
        failed.push(format!(
            "{} status calls of the monitor and chaos failed; last: {}",
            watch.status_failures + chaos_out.status_failures,
            watch.last_error.as_deref().unwrap_or("-")
        ));
    }
    if settled_fds.is_some_and(|n| n > idle_fds) {
        failed.push(format!(
            "the daemon holds {} fds at rest, {idle_fds} when idle",
            settled_fds.unwrap_or(0)
        ));
    }
    match ratio {
        Some(r) if r <= RSS_GOAL => {}
        Some(r) => goals_missed.push(format!("settled RSS is {r:.2}x idle (goal <= {RSS_GOAL}x)")),
        None => failed.push("the daemon was gone before its settled RSS".into()),
    }
    if !shutdown_ok {
        failed.push("`weaver shutdown` failed".into());
    }
    if !left.is_empty() || !other.is_empty() {
        let all: Vec<String> = left.into_iter().chain(other).collect();
        failed.push(format!("left running after shutdown: {}", all.join("; ")));
    }
    for f in &tally.findings {
        println!("  finding: {f}");
    }
    for g in &goals_missed {
        if strict {
            failed.push(g.clone());
        } else {
            println!("soak: GOAL MISSED (not fatal; WEAVER_SOAK_STRICT=1 makes it so): {g}");
        }
    }
    if failed.is_empty() {
        println!("soak: OK");
        return;
    }
    for f in &failed {
        eprintln!("soak: FAILED: {f}");
    }
    eprintln!(
        "soak: kept {} (the daemon's log is rt/weaver.log); repeat the mix with \
         WEAVER_SOAK_SEED={seed:#x}",
        dir.keep().display()
    );
    std::process::exit(1);
}
