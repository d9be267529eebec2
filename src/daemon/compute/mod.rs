//! The compute room: the compute child and its one connection, the
//! requests multiplexed over it, and its lifecycle. The lifecycle decisions
//! are the pure table in [`lifecycle`]; this room performs them (spawn,
//! signal, send) and turns what compute says into replies.

pub mod launch;
pub mod lifecycle;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UnixStream;
use mio::Interest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::daemon::conn::{self, Conn, Drained, Flushed};
use crate::daemon::effect::{Effect, Effects, Timer};
use crate::daemon::mux::{Completion, Deliver, Limits, Mux, OpRef};
use crate::daemon::token;
use crate::fdpass::{self, Payload};
use crate::protocol::{ComputeStatus, ErrorKind, ErrorReply, Response};
use crate::supervise::config::ComputeSpec;
use crate::supervise::Exit;
use crate::sys::Rng;
use crate::wire::{self, kind, Frame, FrameDecoder, Hello};
use launch::Child;
pub use launch::Launch;
pub use lifecycle::{Deadline, Event, State, STOP_GRACE};
use lifecycle::{Do, Lifecycle};

/// A partial output line of compute is logged anyway past this size.
const MAX_LOG_LINE: usize = 8 * 1024;

#[derive(Debug)]
pub struct Compute {
    /// What `--compute-bin` / `--compute-workers` say, before weaver.toml.
    base: Launch,
    /// Whether `--compute-workers` was given (it beats the file).
    workers_flag: bool,
    /// How compute runs now.
    launch: Launch,
    /// The binary last started, for `status`.
    bin: PathBuf,
    /// The socket compute connects to.
    socket: PathBuf,
    pub life: Lifecycle,
    child: Option<Child>,
    conn: Option<Conn<FrameDecoder>>,
    hello: Option<Hello>,
    /// Requests in flight to compute and waiting for it.
    pub mux: Mux,
    /// `status --wait` requests waiting for compute to settle.
    waiters: Vec<(u64, u64)>,
    /// Partial output lines of compute's stdout and stderr.
    out_lines: [Vec<u8>; 2],
    /// Frames read in one go (kept to reuse the allocation).
    frames: Vec<Frame>,
    rng: Rng,
}

impl Compute {
    pub fn new(base: Launch, workers_flag: bool, spec: &ComputeSpec, socket: PathBuf) -> Self {
        let launch = base.configured(spec, workers_flag);
        Compute {
            bin: launch.bin.clone(),
            life: Lifecycle::new(launch.policy, launch.liveness),
            base,
            workers_flag,
            launch,
            socket,
            child: None,
            conn: None,
            hello: None,
            mux: Mux::new(Limits::default()),
            waiters: Vec::new(),
            out_lines: [Vec::new(), Vec::new()],
            frames: Vec::new(),
            rng: Rng::from_time(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid)
    }

    /// Feed the lifecycle an event and perform what it decides.
    pub fn step(&mut self, event: Event, now: Instant, fx: &mut Effects) {
        let mut todo = VecDeque::from([event]);
        while let Some(event) = todo.pop_front() {
            for d in self.life.on(event, now, self.rng.next_u64()) {
                self.perform(d, &mut todo, fx);
            }
        }
        if !self.waiters.is_empty() && !self.life.settling() {
            fx.push(Effect::AnswerStatus { waiters: std::mem::take(&mut self.waiters) });
        }
    }

    fn perform(&mut self, d: Do, todo: &mut VecDeque<Event>, fx: &mut Effects) {
        match d {
            Do::Spawn => match launch::spawn(&self.launch, &self.socket) {
                Ok(child) => {
                    self.bin = self.launch.bin.clone();
                    info!("compute started: pid {} ({})", child.pid, self.bin.display());
                    self.hello = None;
                    self.watch_output(&child, fx);
                    todo.push_back(Event::Spawned { pid: child.pid });
                    self.child = Some(child);
                }
                Err(e) => todo.push_back(Event::SpawnFailed { why: e.to_string() }),
            },
            Do::Arm(d, at) => fx.push(Effect::Arm { at, timer: Timer::Compute(d) }),
            Do::Cancel(d) => fx.push(Effect::Cancel(Timer::Compute(d))),
            Do::Kill { pid, signal } => kill_group(pid, signal),
            Do::Ping => self.send(kind::PING, 0, 0, &[]),
            Do::SayShutdown => self.send(kind::SHUTDOWN, 0, 0, &[]),
            Do::CloseStdin => {
                if let Some(c) = self.child.as_mut() {
                    c.stdin = None;
                }
            }
            Do::DropConn => {
                if let Some(c) = self.conn.take() {
                    fx.push(Effect::Unwatch { fd: stream_fd(c.stream) });
                }
                self.hello = None;
            }
            Do::FailInFlight(kind, msg) => {
                for d in self.mux.fail_in_flight(kind, &msg) {
                    deliver(d, fx);
                }
            }
            Do::FailQueued(kind, msg) => self.fail_queued(kind, &msg, fx),
            Do::Log(level, msg) => log::log!(level, "{msg}"),
        }
    }

    pub fn fail_in_flight(&mut self, kind: ErrorKind, msg: &str, fx: &mut Effects) {
        for d in self.mux.fail_in_flight(kind, msg) {
            deliver(d, fx);
        }
    }

    pub fn fail_queued(&mut self, kind: ErrorKind, msg: &str, fx: &mut Effects) {
        for d in self.mux.fail_queued(kind, msg) {
            deliver(d, fx);
        }
    }

    /// The child was reaped.
    pub fn exited(&mut self, status: std::process::ExitStatus, now: Instant, fx: &mut Effects) {
        // Last words first: drain what it wrote before dying.
        let mut scratch = vec![0u8; MAX_LOG_LINE];
        self.read_output(0, &mut scratch, fx);
        self.read_output(1, &mut scratch, fx);
        let Some(child) = self.child.take() else { return };
        let how = Exit::from_status(status).describe();
        let ran = now.saturating_duration_since(child.started);
        self.step(Event::Exited { pid: child.pid, how, ran }, now, fx);
    }

    /// `[compute]` changed on reload: run compute the new way.
    pub fn reconfigure(&mut self, spec: &ComputeSpec, now: Instant, fx: &mut Effects) {
        let launch = self.base.configured(spec, self.workers_flag);
        // New liveness settings apply from the next PING on.
        self.life.liveness = launch.liveness;
        let same = Launch { liveness: self.launch.liveness, ..launch.clone() } == self.launch;
        self.launch = launch;
        if same {
            return;
        }
        info!("compute configuration changed: restarting compute");
        self.life.policy = self.launch.policy;
        self.step(Event::Reconfigured, now, fx);
    }

    /// A connection on the compute socket: it must come from the very
    /// process we started, and only once.
    pub fn accept(&mut self, stream: UnixStream, fx: &mut Effects) {
        let expected = self.life.state.pid();
        let refusal = match (conn::peer(&stream), expected) {
            (Err(e), _) => Some(e),
            (Ok(c), Some(p)) if c.pid() as u32 != p => {
                Some(format!("pid {} is not the compute daemon weaver started (pid {p})", c.pid()))
            }
            (Ok(c), None) => Some(format!("pid {}: no compute daemon is being started", c.pid())),
            (Ok(_), Some(_)) if self.conn.is_some() => Some("compute is already connected".into()),
            (Ok(_), Some(_)) => None,
        };
        if let Some(why) = refusal {
            warn!("refused a connection on the compute socket: {why}");
            return;
        }
        debug!("compute connected; waiting for HELLO");
        let (c, watch) = Conn::new(stream, FrameDecoder::new(), token::COMPUTE_CONN);
        fx.push(watch);
        self.conn = Some(c);
    }

    /// The connection is readable.
    pub fn read(&mut self, scratch: &mut [u8], closed: bool, now: Instant, fx: &mut Effects) {
        let Some(c) = self.conn.as_mut() else { return };
        let mut frames = std::mem::take(&mut self.frames);
        let mut lost = match c.read(scratch, &mut frames, closed) {
            Drained::WouldBlock => None,
            Drained::Eof => Some("compute closed its connection".to_string()),
            Drained::Failed(e) => Some(format!("compute connection failed: {e}")),
            Drained::Bad(e) => Some(format!("compute broke the protocol: {e}")),
        };
        for f in frames.drain(..) {
            if let Err(why) = self.frame(f, now, fx) {
                lost = Some(why);
                break;
            }
        }
        frames.clear();
        self.frames = frames;
        if let Some(why) = lost {
            self.step(Event::Lost { why }, now, fx);
        }
    }

    fn frame(&mut self, f: Frame, now: Instant, fx: &mut Effects) -> Result<(), String> {
        let h = f.header;
        match h.kind {
            kind::RESPONSE => {
                self.complete(h.request_id, h.code, Payload::Bytes(f.payload), now, fx)
            }
            kind::RESPONSE_FD => {
                // A refused fd fails only its request: the connection is
                // still in step (the fd was claimed by this frame).
                let p = match fdpass::announced(&f.payload, f.fd.0) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!("compute's reply to request {} is refused: {e}", h.request_id);
                        let why = format!("compute's reply was refused: {e}");
                        Payload::Bytes(why.into_bytes())
                    }
                };
                let code =
                    if matches!(p, Payload::Fd { .. }) { h.code } else { wire::status::BAD_FD };
                self.complete(h.request_id, code, p, now, fx);
            }
            kind::HELLO if self.hello.is_none() => {
                let hello = Hello::parse(&f.payload)
                    .map_err(|e| format!("compute sent a bad HELLO: {e}"))?;
                if hello.version != wire::VERSION {
                    return Err(format!(
                        "compute speaks protocol {}, weaver {}: rebuild it from this release",
                        hello.version,
                        wire::VERSION
                    ));
                }
                info!(
                    "compute ready: pid {}, {} workers, ops {}",
                    hello.pid,
                    hello.workers,
                    op_names(&hello)
                );
                self.hello = Some(hello);
                self.step(Event::Hello, now, fx);
            }
            kind::PING => self.send(kind::PONG, h.request_id, 0, &f.payload),
            kind::PONG => self.step(Event::Pong, now, fx),
            k => return Err(format!("compute sent an unexpected frame of kind {k}")),
        }
        Ok(())
    }

    fn complete(&mut self, id: u64, code: u32, payload: Payload, now: Instant, fx: &mut Effects) {
        match self.mux.complete(id, code, payload, now) {
            Completion::Deliver(d) => deliver(d, fx),
            Completion::Dropped => debug!("dropped a late reply for request {id}"),
            Completion::Unknown => warn!("compute answered unknown request {id}"),
        }
    }

    fn send(&mut self, kind: u16, id: u64, code: u32, payload: &[u8]) {
        let Some(c) = self.conn.as_mut() else { return };
        let h = wire::Header { kind, request_id: id, code, payload_len: payload.len() as u32 };
        c.out.push_slice(&h.encode());
        c.out.push_slice(payload);
    }

    fn send_owned(&mut self, kind: u16, id: u64, code: u32, payload: Payload) {
        let Some(c) = self.conn.as_mut() else { return };
        match payload {
            Payload::Bytes(payload) => {
                let payload_len = payload.len() as u32;
                let h = wire::Header { kind, request_id: id, code, payload_len };
                c.out.push_slice(&h.encode());
                c.out.push(payload);
            }
            Payload::Fd { fd, len } => {
                // The very fd the client sent, passed on unread.
                let h = wire::Header {
                    kind: kind::REQUEST_FD,
                    request_id: id,
                    code,
                    payload_len: wire::FD_INFO_SIZE as u32,
                };
                c.out.attach_fd(fd);
                c.out.push_slice(&h.encode());
                c.out.push_slice(&len.to_le_bytes());
            }
        }
    }

    /// Take a client's request for compute, or say why not.
    pub fn submit(&mut self, r: Submit, now: Instant, fx: &mut Effects) -> Result<(), ErrorReply> {
        let Submit { client, tag, op, payload, timeout_ms } = r;
        let code = self.check_submit(&op, &payload, now).map_err(|e| {
            self.mux.tally.record(&op, crate::daemon::tally::outcome(Err(e.kind)), None);
            e
        })?;
        // The mux counts its own refusals.
        let id = self.mux.submit(client, tag, code, op, payload, now)?;
        if let Some(ms) = timeout_ms {
            self.mux.set_timeout(id, ms);
            fx.push(Effect::Arm { at: now + Duration::from_millis(ms), timer: Timer::Request(id) });
        }
        // Into the window at once (written at the end of the turn), so the
        // queue limit counts only what really waits.
        self.pump(fx);
        Ok(())
    }

    /// Whether a compute request can be taken now; its op, resolved when
    /// compute's ops are known.
    fn check_submit(&self, op: &str, p: &Payload, now: Instant) -> Result<OpRef, ErrorReply> {
        let e = |kind, message: String| Err(ErrorReply { kind, message });
        let len = p.held();
        if len > wire::MAX_PAYLOAD {
            return e(
                ErrorKind::TooLarge,
                format!(
                    "input of {len} bytes is over the {}-byte limit; split it",
                    wire::MAX_PAYLOAD
                ),
            );
        }
        let life = &self.life;
        match life.state {
            State::Backoff { until } => {
                let why = life.last_error.clone().or_else(|| life.last_exit.clone());
                e(
                    ErrorKind::ComputeDown,
                    format!(
                        "compute is down ({}); weaver starts it again in {} ms, retry then",
                        why.unwrap_or_else(|| "not started".into()),
                        until.saturating_duration_since(now).as_millis()
                    ),
                )
            }
            State::Stopping { .. } | State::Stopped => {
                e(ErrorKind::ShuttingDown, "compute is stopping with weaver".into())
            }
            State::Failed => {
                let why = life.last_error.clone().unwrap_or_default();
                e(ErrorKind::ComputeDown, format!("compute is down: {why}"))
            }
            State::Ready { .. } | State::Starting { .. } | State::Exiting { .. } | State::Idle => {
                match &self.hello {
                    Some(h) => match h.op_id(op) {
                        Some(code) => Ok(OpRef::Code(code)),
                        None => e(ErrorKind::UnknownOp, unknown_op(op, h)),
                    },
                    None => Ok(OpRef::Name(op.to_string())),
                }
            }
        }
    }

    /// Move queued requests to compute while the window allows.
    pub fn pump(&mut self, fx: &mut Effects) {
        if !matches!(self.life.state, State::Ready { .. }) || self.conn.is_none() {
            return;
        }
        while let Some(out) = self.mux.next_send() {
            let code = match out.op {
                OpRef::Code(c) => Ok(c),
                OpRef::Name(name) => {
                    let h = self.hello.as_ref().expect("ready has hello");
                    h.op_id(&name).ok_or_else(|| unknown_op(&name, h))
                }
            };
            match code {
                Ok(code) => self.send_owned(kind::REQUEST, out.id, code, out.payload),
                Err(message) => {
                    let reply = ErrorReply { kind: ErrorKind::UnknownOp, message };
                    if let Completion::Deliver(d) = self.mux.fail(out.id, reply) {
                        deliver(d, fx);
                    }
                }
            }
        }
    }

    /// Write what is queued for compute.
    pub fn flush(&mut self, now: Instant, fx: &mut Effects) {
        let Some(c) = self.conn.as_mut() else { return };
        if let Flushed::Failed(e) = c.flush(fx) {
            self.step(Event::Lost { why: format!("writing to compute failed: {e}") }, now, fx);
        }
    }

    /// A request's `--timeout` passed.
    pub fn expire(&mut self, id: u64, fx: &mut Effects) {
        if let Some((d, sent)) = self.mux.expire(id) {
            if sent {
                self.send(kind::CANCEL, id, 0, &[]);
            }
            deliver(d, fx);
        }
    }

    /// A client left: cancel what it had at compute, drop what it queued.
    pub fn forget_client(&mut self, client: u64, fx: &mut Effects) {
        let (cancel, timed) = self.mux.forget_client(client);
        for id in timed {
            fx.push(Effect::Cancel(Timer::Request(id)));
        }
        if !cancel.is_empty() {
            debug!("client {client} left {} request(s) at compute: cancelling", cancel.len());
        }
        for id in cancel {
            self.send(kind::CANCEL, id, 0, &[]);
        }
        self.waiters.retain(|(c, _)| *c != client);
    }

    /// `status --wait`: answer once compute has settled.
    pub fn wait_settled(&mut self, client: u64, tag: u64) -> bool {
        if self.life.settling() {
            self.waiters.push((client, tag));
            return true;
        }
        false
    }

    pub fn status(&self, now: Instant) -> ComputeStatus {
        let life = &self.life;
        let s = self.mux.stats;
        ComputeStatus {
            pid: self.pid(),
            state: life.state.into(),
            bin: self.bin.display().to_string(),
            workers: self.hello.as_ref().map(|h| h.workers),
            restarts: life.restarts,
            hangs: life.hangs,
            in_flight: self.mux.in_flight() as u64,
            queued: self.mux.queued() as u64,
            served: s.served,
            errors: s.errors,
            cancelled: s.cancelled,
            timed_out: s.timed_out,
            busy_rejected: s.busy_rejected,
            dropped_late: s.dropped_late,
            last_exit: life.last_exit.clone(),
            last_error: life.last_error.clone(),
            next_restart_ms: match life.state {
                State::Backoff { until } => {
                    Some(until.saturating_duration_since(now).as_millis() as u64)
                }
                _ => None,
            },
        }
    }

    fn watch_output(&self, child: &Child, fx: &mut Effects) {
        for (fd, token) in [
            (child.stdout.as_ref().map(|s| s.as_raw_fd()), token::COMPUTE_STDOUT),
            (child.stderr.as_ref().map(|s| s.as_raw_fd()), token::COMPUTE_STDERR),
        ] {
            let Some(fd) = fd else { continue };
            crate::sys::set_nonblocking(fd);
            fx.push(Effect::Watch { fd, token, interest: Interest::READABLE });
        }
    }

    /// Forward compute's stdout (0) or stderr (1) into the log, a line at a
    /// time.
    pub fn read_output(&mut self, which: usize, scratch: &mut [u8], fx: &mut Effects) {
        let Some(child) = self.child.as_mut() else { return };
        let pid = child.pid;
        let pipe: Option<&mut dyn Read> = if which == 0 {
            child.stdout.as_mut().map(|s| s as &mut dyn Read)
        } else {
            child.stderr.as_mut().map(|s| s as &mut dyn Read)
        };
        let Some(pipe) = pipe else { return };
        let mut eof = false;
        loop {
            match pipe.read(scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.out_lines[which].extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let stream = if which == 0 { "stdout" } else { "stderr" };
        log_lines(&mut self.out_lines[which], pid, stream, eof);
        if eof {
            // Stop watching at EOF.
            let pipe: Option<OwnedFd> = if which == 0 {
                child.stdout.take().map(Into::into)
            } else {
                child.stderr.take().map(Into::into)
            };
            if let Some(fd) = pipe {
                fx.push(Effect::Unwatch { fd });
            }
        }
    }
}

/// A client's request for compute.
#[derive(Debug)]
pub struct Submit {
    pub client: u64,
    pub tag: u64,
    pub op: String,
    pub payload: Payload,
    pub timeout_ms: Option<u64>,
}

/// Hand a finished request to its client, disarming its deadline.
fn deliver(d: Deliver, fx: &mut Effects) {
    if d.timed {
        fx.push(Effect::Cancel(Timer::Request(d.id)));
    }
    match d.result {
        Ok(Payload::Bytes(payload)) => fx.push(Effect::Reply {
            client: d.client,
            tag: d.tag,
            resp: Response::ComputeOk,
            payload,
        }),
        Ok(Payload::Fd { fd, len }) => fx.push(Effect::ReplyFd {
            client: d.client,
            tag: d.tag,
            resp: Response::ComputeOk,
            fd,
            len,
        }),
        Err(e) => fx.push(Effect::Reply {
            client: d.client,
            tag: d.tag,
            resp: Response::Error(e),
            payload: Vec::new(),
        }),
    }
}

fn stream_fd(s: UnixStream) -> OwnedFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `into_raw_fd` gives up ownership of a valid, open fd.
    unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) }
}

fn op_names(h: &Hello) -> String {
    h.ops.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
}

fn unknown_op(op: &str, h: &Hello) -> String {
    format!("compute does not serve op {op:?}; it serves: {}", op_names(h))
}

fn kill_group(pid: u32, sig: Signal) {
    // compute leads its own process group (pgid == pid).
    if let Err(e) = kill(Pid::from_raw(-(pid as i32)), sig) {
        if e != nix::errno::Errno::ESRCH {
            warn!("cannot send {sig} to compute's group {pid}: {e}");
        }
    }
}

/// Log each complete line of `buf` (and the rest at EOF or when it grows
/// past [`MAX_LOG_LINE`]), keeping a partial line for later.
fn log_lines(buf: &mut Vec<u8>, pid: u32, stream: &str, eof: bool) {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        info!("compute[{pid}] {stream}: {}", String::from_utf8_lossy(&buf[start..start + nl]));
        start += nl + 1;
    }
    buf.drain(..start);
    if (eof && !buf.is_empty()) || buf.len() > MAX_LOG_LINE {
        info!("compute[{pid}] {stream}: {}", String::from_utf8_lossy(buf));
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(bin: &str) -> Compute {
        let launch = Launch::defaults(bin.into(), None);
        Compute::new(launch, false, &ComputeSpec::default(), "/nonexistent/compute.sock".into())
    }

    fn submit(
        c: &mut Compute,
        op: &str,
        len: usize,
        timeout_ms: Option<u64>,
        fx: &mut Effects,
    ) -> Result<(), ErrorReply> {
        let r =
            Submit { client: 1, tag: 2, op: op.into(), payload: vec![0; len].into(), timeout_ms };
        c.submit(r, Instant::now(), fx)
    }

    #[test]
    fn a_missing_binary_backs_off_and_requests_are_refused_with_the_reason() {
        let mut c = room("/nonexistent/compute-daemon");
        let mut fx = Effects::new();
        c.step(Event::Start, Instant::now(), &mut fx);
        assert!(matches!(c.life.state, State::Backoff { .. }));
        assert!(c.pid().is_none());
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::Arm { timer: Timer::Compute(Deadline::Restart), .. })),
            "{fx:?}"
        );
        let e = submit(&mut c, "echo", 1, None, &mut fx).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ComputeDown);
        assert!(e.message.contains("cannot start the compute daemon"), "{}", e.message);
        let s = c.status(Instant::now());
        assert_eq!(s.state, crate::protocol::ComputeState::Backoff);
        assert!(s.next_restart_ms.is_some());
    }

    #[test]
    fn requests_before_hello_queue_by_name_with_their_deadline_and_leave_with_their_client() {
        let mut c = room("/bin/true");
        let mut fx = Effects::new();
        submit(&mut c, "echo", 10, Some(50), &mut fx).unwrap();
        assert_eq!(c.mux.queued(), 1);
        assert!(matches!(fx[..], [Effect::Arm { timer: Timer::Request(1), .. }]), "{fx:?}");
        let e = submit(&mut c, "echo", wire::MAX_PAYLOAD + 1, None, &mut fx).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge);
        // Nothing is sent before compute is ready.
        c.pump(&mut fx);
        assert_eq!(c.mux.queued(), 1);
        // A status --wait waits only while compute settles.
        assert!(!c.wait_settled(1, 9), "idle compute is settled");
        let mut fx = Effects::new();
        c.forget_client(1, &mut fx);
        assert_eq!(c.mux.queued(), 0);
        assert!(matches!(fx[..], [Effect::Cancel(Timer::Request(1))]), "{fx:?}");
    }

    #[test]
    fn a_timed_out_request_is_answered_once() {
        let mut c = room("/bin/true");
        let mut fx = Effects::new();
        submit(&mut c, "echo", 1, Some(5), &mut fx).unwrap();
        let mut fx = Effects::new();
        c.expire(1, &mut fx);
        match &fx[..] {
            [Effect::Reply { client: 1, tag: 2, resp: Response::Error(e), .. }] => {
                assert_eq!(e.kind, ErrorKind::Timeout)
            }
            other => panic!("{other:?}"),
        }
        let mut fx = Effects::new();
        c.expire(1, &mut fx);
        assert!(fx.is_empty());
        assert_eq!(c.mux.stats.timed_out, 1);
    }

    #[test]
    fn output_is_logged_a_line_at_a_time() {
        let mut buf = b"one\ntwo\npartial".to_vec();
        log_lines(&mut buf, 1, "stdout", false);
        assert_eq!(buf, b"partial");
        log_lines(&mut buf, 1, "stdout", true);
        assert!(buf.is_empty());
        let mut long = vec![b'x'; MAX_LOG_LINE + 1];
        log_lines(&mut long, 1, "stderr", false);
        assert!(long.is_empty(), "an overlong line is logged anyway");
    }
}
