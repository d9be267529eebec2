//! The reactor: one thread, one `mio::Poll`, every fd and all daemon state.
//! Nothing else touches the registry. Each event is drained to WouldBlock;
//! writes go out at once and WRITABLE is armed only when a socket is full;
//! every timeout is a deadline that sets the poll timeout.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

mod procs;

use super::guard::Guard;
use crate::daemon::client_conn::{ClientConn, MAX_CLIENT_BUFFER};
use crate::daemon::compute::{self, Compute, Conn, State, HELLO_TIMEOUT, STOP_GRACE};
use crate::daemon::mux::{Completion, Deliver, Limits, Mux};
use crate::daemon::timers::Timers;
use crate::daemon::token::{self, Source};
use crate::frame::{self, Drained, RawFrame};
use crate::pidfile::PidRecord;
use crate::protocol::{
    self, ClientMsg, ComputeStatus, DaemonStatus, ErrorKind, ErrorReply, Handshake, Request,
    Response, ServerMsg, StatusReport, HANDSHAKE_MAGIC, PROTOCOL_VERSION,
};
use crate::runtime_dir::RuntimeDir;
use crate::supervise::events::{Broadcaster, SubscriberId};
use crate::supervise::{RunId, Supervisor, TimerKey};
use crate::wire::{self, kind, Frame, Hello};
use procs::{Aux, Follower, OutFile, Pipe};

/// What a deadline is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Timer {
    /// A request's --timeout passed.
    Request { id: u64, after_ms: u64 },
    /// Start compute again after backoff.
    ComputeRestart,
    /// compute (this pid) has not said HELLO in time.
    ComputeHello { pid: u32 },
    /// The stop grace is over: SIGKILL what is left.
    StopGrace,
    /// A supervised process's timer (start duration, backoff, probes...).
    Supervise(TimerKey),
    /// What the main process of this group left behind had its stop
    /// signal's grace: SIGKILL the group.
    Sweep { pgid: u32 },
    /// The same for one orphan that had left its group.
    SweepOrphan { pid: u32 },
}

/// Everything the daemon owns.
pub struct Reactor {
    /// The one poll instance.
    poll: Poll,
    /// Control socket; `None` once stopping (no new clients).
    control: Option<UnixListener>,
    /// The socket compute connects back to.
    compute_listener: UnixListener,
    /// SIGINT, SIGTERM, SIGCHLD, SIGHUP as events.
    signals: Signals,
    /// Connected clients by id (= token).
    clients: HashMap<u64, ClientConn>,
    /// Next dynamic token (client id or pipe); never reused.
    next_token: u64,
    /// Supervised processes' stdout/stderr by token.
    pipes: HashMap<u64, Pipe>,
    /// Pipes left with data after a bounded read: read again next turn.
    pending_pipes: Vec<u64>,
    /// The supervised processes: what to do (pure; we act).
    sup: Supervisor,
    /// Where `weaver.toml` was found, for `reload`.
    config_path: Option<PathBuf>,
    /// Hook and probe commands running, by pid; and their pid by run.
    aux: HashMap<u32, Aux>,
    aux_runs: HashMap<RunId, u32>,
    /// Lifecycle events to `events` subscribers.
    bcast: Broadcaster,
    /// `events` subscriptions: subscriber -> (client, tag).
    subscribers: HashMap<SubscriberId, (u64, u64)>,
    /// `logs -f` requests being served.
    followers: Vec<Follower>,
    /// Output arrived this turn: followers may have lines to send.
    followed_output: bool,
    /// Output files of instances that have one.
    out_files: HashMap<String, OutFile>,
    /// Kills our process groups if we die by SIGKILL.
    guard: Option<Guard>,
    /// Groups whose leader exited with members left, until their SIGKILL.
    sweeps: HashSet<u32>,
    /// Processes that left their group and came to us when their parent
    /// died (we are a subreaper), until reaped: pid -> instance.
    orphans: HashMap<u32, String>,
    /// Detached processes found through their pid files: instance ->
    /// (pid, start time), so a recycled pid is never taken for them.
    detached: HashMap<String, PidRecord>,
    /// Jitter source for backoff.
    rng: u64,
    /// Clients with queued output to flush at the end of this turn.
    dirty: Vec<u64>,
    /// Requests in flight to compute and waiting for it.
    mux: Mux,
    /// The compute child and its connection.
    compute: Compute,
    /// Every deadline.
    timers: Timers<Timer>,
    /// `status --wait` requests waiting for compute to settle.
    status_waiters: Vec<(u64, u64)>,
    /// Scratch buffer for reads.
    read_buf: Vec<u8>,
    dir: RuntimeDir,
    log_file: Option<PathBuf>,
    started: Instant,
    /// A graceful stop is under way.
    stopping: bool,
    /// Partial output lines of compute's stdout and stderr.
    out_lines: [Vec<u8>; 2],
}

/// What the daemon needs to run.
pub struct Setup {
    pub dir: RuntimeDir,
    pub control: UnixListener,
    pub compute_listener: UnixListener,
    pub compute: Compute,
    pub log_file: Option<PathBuf>,
    pub supervisor: Supervisor,
    pub config_path: Option<PathBuf>,
    pub guard: Option<Guard>,
}

/// Socket reads through the scratch buffer take at most this much, so that
/// a large payload is soon read straight into its own buffer (see
/// `direct_target`) instead of being copied out of scratch; small frames
/// still arrive by the hundred per read.
const SCRATCH_READ: usize = 8 * 1024;

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Reactor {
    pub fn new(s: Setup) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGCHLD, SIGHUP])?;
        let mut control = s.control;
        let mut compute_listener = s.compute_listener;
        let reg = poll.registry();
        reg.register(&mut control, token::CONTROL_LISTENER, Interest::READABLE)?;
        reg.register(&mut compute_listener, token::COMPUTE_LISTENER, Interest::READABLE)?;
        reg.register(&mut signals, token::SIGNALS, Interest::READABLE)?;
        Ok(Reactor {
            poll,
            control: Some(control),
            compute_listener,
            signals,
            clients: HashMap::new(),
            next_token: token::FIRST_CLIENT,
            pipes: HashMap::new(),
            pending_pipes: Vec::new(),
            sup: s.supervisor,
            config_path: s.config_path,
            aux: HashMap::new(),
            aux_runs: HashMap::new(),
            bcast: Broadcaster::default(),
            subscribers: HashMap::new(),
            followers: Vec::new(),
            followed_output: false,
            out_files: HashMap::new(),
            detached: HashMap::new(),
            guard: s.guard,
            sweeps: HashSet::new(),
            orphans: HashMap::new(),
            rng: (std::process::id() as u64) << 32 ^ procs::wall_ms() | 1,
            dirty: Vec::new(),
            mux: Mux::new(Limits::default()),
            compute: s.compute,
            timers: Timers::new(),
            status_waiters: Vec::new(),
            read_buf: vec![0; 256 * 1024],
            dir: s.dir,
            log_file: s.log_file,
            started: Instant::now(),
            stopping: false,
            out_lines: [Vec::new(), Vec::new()],
        })
    }

    /// Run until a graceful stop completes.
    pub fn run(&mut self) -> io::Result<()> {
        self.start_compute();
        self.adopt_detached();
        let plan = self.sup.plan_start_all(Instant::now());
        self.run_actions(plan);
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = if self.pending_pipes.is_empty() && !self.follows_pending() {
                self.timers.next_timeout(Instant::now())
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                let (readable, writable) =
                    (ev.is_readable() || ev.is_read_closed() || ev.is_error(), ev.is_writable());
                self.dispatch(ev.token(), readable, writable);
            }
            for t in std::mem::take(&mut self.pending_pipes) {
                self.read_pipe(t);
            }
            self.fire_timers();
            self.pump_compute();
            self.pump_follows();
            self.flush_dirty();
            if self.stopping
                && self.compute.child.is_none()
                && self.sup.all_down()
                && self.aux.is_empty()
                && self.sweeps.is_empty()
                && self.orphans.is_empty()
            {
                break;
            }
        }
        self.kill_adopted();
        if let Some(g) = self.guard.as_mut() {
            g.release(Duration::from_millis(500));
        }
        self.finish();
        Ok(())
    }

    fn dispatch(&mut self, t: Token, readable: bool, writable: bool) {
        match token::source(t) {
            Source::ControlListener => self.accept_clients(),
            Source::ComputeListener => self.accept_compute(),
            Source::Signals => self.on_signals(),
            Source::ComputeConn => {
                if writable {
                    self.flush_compute();
                }
                if readable {
                    self.read_compute();
                }
            }
            Source::ComputeStdout => self.read_compute_output(0),
            Source::ComputeStderr => self.read_compute_output(1),
            Source::Client(id) if self.pipes.contains_key(&id) => self.read_pipe(id),
            Source::Client(id) => {
                if writable {
                    self.flush_client(id);
                }
                if readable {
                    self.read_client(id);
                }
            }
            Source::Unknown => debug!("event for unknown token {t:?}"),
        }
    }

    // ---- Clients --------------------------------------------------------

    fn accept_clients(&mut self) {
        loop {
            let Some(listener) = self.control.as_ref() else { return };
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if would_block(&e) => return,
                Err(e) => {
                    warn!("accept on the control socket failed: {e}");
                    return;
                }
            };
            let cred = match nix::sys::socket::getsockopt(
                &stream,
                nix::sys::socket::sockopt::PeerCredentials,
            ) {
                Ok(c) => c,
                Err(e) => {
                    warn!("refused a control connection: cannot read its credentials: {e}");
                    continue;
                }
            };
            let me = nix::unistd::geteuid().as_raw();
            if cred.uid() != me {
                warn!(
                    "refused a control connection from pid {} uid {}: only uid {me} may use this daemon",
                    cred.pid(),
                    cred.uid()
                );
                continue;
            }
            let id = self.next_token;
            self.next_token += 1;
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                token::client_token(id),
                Interest::READABLE,
            ) {
                warn!("cannot watch client {id}: {e}");
                continue;
            }
            debug!("client {id} connected (pid {})", cred.pid());
            self.clients.insert(id, ClientConn::new(stream, cred.pid()));
        }
    }

    fn read_client(&mut self, id: u64) {
        let mut frames = Vec::new();
        let mut gone = false;
        let mut bad = None;
        {
            let Some(c) = self.clients.get_mut(&id) else { return };
            let scratch = &mut self.read_buf[..SCRATCH_READ];
            match frame::drain(&mut c.stream, &mut c.dec, scratch, &mut frames) {
                Drained::WouldBlock => {}
                Drained::Eof => gone = true,
                Drained::Failed(e) => {
                    debug!("client {id}: read failed: {e}");
                    gone = true;
                }
                Drained::Bad(e) => bad = Some(e.to_string()),
            }
        }
        for f in frames {
            if !self.clients.get(&id).is_some_and(|c| !c.close_after_flush) {
                break;
            }
            self.client_frame(id, f);
        }
        if let Some(why) = bad {
            warn!("client {id}: {why}; closing its connection");
            self.reply_error(
                id,
                0,
                ErrorKind::BadRequest,
                format!("{why}; closing this connection"),
            );
            self.close_after_flush(id);
        }
        if gone {
            self.close_client(id, "disconnected");
        }
    }

    fn client_frame(&mut self, id: u64, f: RawFrame) {
        let ready = self.clients.get(&id).is_some_and(|c| c.ready);
        if !ready {
            return self.client_handshake(id, f);
        }
        let msg: ClientMsg = match protocol::decode(&f.meta, "request") {
            Ok(m) => m,
            Err(e) => {
                warn!("client {id}: {e}; closing its connection");
                self.reply_error(
                    id,
                    0,
                    ErrorKind::BadRequest,
                    format!("{e}; closing this connection"),
                );
                return self.close_after_flush(id);
            }
        };
        match msg.req {
            Request::Status { wait_compute } => {
                if wait_compute && matches!(self.compute.state, State::Starting | State::Exiting) {
                    self.status_waiters.push((id, msg.tag));
                } else {
                    let s = self.status();
                    self.reply(id, msg.tag, Response::Status(Box::new(s)), Vec::new());
                }
            }
            Request::Compute { op, timeout_ms } => {
                self.submit(id, msg.tag, op, f.payload, timeout_ms)
            }
            Request::Shutdown => {
                self.reply(id, msg.tag, Response::ShutdownStarted, Vec::new());
                if let Some(c) = self.clients.get_mut(&id) {
                    c.awaits_exit = true;
                }
                self.begin_stop("a client asked for shutdown");
            }
            Request::Ps => {
                let rows = self.ps();
                self.reply(id, msg.tag, Response::Ps(rows), Vec::new());
            }
            Request::Control { verb, names } => {
                let r = self.control(verb, &names).unwrap_or_else(Response::Error);
                self.reply(id, msg.tag, r, Vec::new());
            }
            Request::Logs(q) => {
                if let Err(e) = self.logs(id, msg.tag, q) {
                    self.reply(id, msg.tag, Response::Error(e), Vec::new());
                }
            }
            Request::Events { names, output, history } => {
                self.events(id, msg.tag, names, output, history)
            }
            Request::Reload { dry_run } => {
                let r = self.reload(dry_run).map(Response::Reload).unwrap_or_else(Response::Error);
                self.reply(id, msg.tag, r, Vec::new());
            }
        }
    }

    fn client_handshake(&mut self, id: u64, f: RawFrame) {
        let hs = match protocol::decode::<Handshake>(&f.meta, "handshake") {
            Ok(h) if h.magic == HANDSHAKE_MAGIC => h,
            Ok(_) | Err(_) => {
                warn!("client {id}: first frame is not a weaver handshake; closing");
                return self.close_client(id, "sent no handshake");
            }
        };
        let mut mine = Handshake::new(false);
        let compatible = hs.protocol == PROTOCOL_VERSION;
        if !compatible && !hs.shutdown {
            mine.refusal = format!(
                "this weaver daemon (pid {}, release {}, protocol {PROTOCOL_VERSION}) does not speak \
                 protocol {} of client release {}. Run `weaver shutdown` (works across versions) and \
                 retry; the next command starts a daemon of the client's release",
                std::process::id(),
                protocol::RELEASE,
                hs.protocol,
                hs.release
            );
            warn!(
                "client {id} (release {}, protocol {}) refused: protocol mismatch",
                hs.release, hs.protocol
            );
        }
        let refused = !mine.refusal.is_empty();
        if let Some(c) = self.clients.get_mut(&id) {
            c.queue(&protocol::encode(&mine), Vec::new());
            c.ready = !refused;
            c.awaits_exit = hs.shutdown;
        }
        self.dirty.push(id);
        if refused {
            return self.close_after_flush(id);
        }
        if hs.shutdown {
            self.begin_stop(&format!("shutdown requested by pid {}", hs.pid));
        }
    }

    fn submit(&mut self, id: u64, tag: u64, op: String, payload: Vec<u8>, timeout_ms: Option<u64>) {
        if let Err(e) = self.check_submit(&op, payload.len()) {
            return self.reply_error(id, tag, e.kind, e.message);
        }
        match self.mux.submit(id, tag, op, payload) {
            Ok(rid) => {
                if let Some(ms) = timeout_ms {
                    let at = Instant::now() + Duration::from_millis(ms);
                    let t = self.timers.arm(at, Timer::Request { id: rid, after_ms: ms });
                    self.mux.set_timer(rid, t);
                }
            }
            Err(e) => self.reply_error(id, tag, e.kind, e.message),
        }
    }

    /// Whether a compute request can be taken now.
    fn check_submit(&self, op: &str, len: usize) -> Result<(), ErrorReply> {
        let e = |kind, message: String| Err(ErrorReply { kind, message });
        if self.stopping {
            return e(
                ErrorKind::ShuttingDown,
                "weaver is shutting down; retry once it has restarted".into(),
            );
        }
        if len > wire::MAX_PAYLOAD {
            return e(
                ErrorKind::TooLarge,
                format!(
                    "input of {len} bytes is over the {}-byte limit; split it",
                    wire::MAX_PAYLOAD
                ),
            );
        }
        match self.compute.state {
            State::Backoff { until } => {
                let why =
                    self.compute.last_error.clone().or_else(|| self.compute.last_exit.clone());
                return e(
                    ErrorKind::ComputeDown,
                    format!(
                        "compute is down ({}); weaver starts it again in {} ms, retry then",
                        why.unwrap_or_else(|| "not started".into()),
                        until.saturating_duration_since(Instant::now()).as_millis()
                    ),
                );
            }
            State::Stopping | State::Stopped => {
                return e(ErrorKind::ShuttingDown, "compute is stopping with weaver".into())
            }
            State::Failed => {
                let why = self.compute.last_error.clone().unwrap_or_default();
                return e(ErrorKind::ComputeDown, format!("compute is down: {why}"));
            }
            State::Ready => {
                if let Some(h) = &self.compute.hello {
                    if h.op_id(op).is_none() {
                        return e(ErrorKind::UnknownOp, unknown_op(op, h));
                    }
                }
            }
            State::Starting | State::Exiting => {}
        }
        Ok(())
    }

    fn reply(&mut self, id: u64, tag: u64, resp: Response, payload: Vec<u8>) {
        let meta = protocol::encode(&ServerMsg { tag, resp });
        let Some(c) = self.clients.get_mut(&id) else { return };
        c.queue(&meta, payload);
        if c.out.len() > MAX_CLIENT_BUFFER {
            warn!(
                "client {id} (pid {}) is not reading its replies ({} bytes waiting); cutting it off",
                c.peer_pid,
                c.out.len()
            );
            return self.close_client(id, "stopped reading");
        }
        self.dirty.push(id);
    }

    fn reply_error(&mut self, id: u64, tag: u64, kind: ErrorKind, message: String) {
        self.reply(id, tag, Response::Error(ErrorReply { kind, message }), Vec::new());
    }

    fn deliver(&mut self, d: Deliver) {
        if let Some(t) = d.timer {
            self.timers.cancel(t);
        }
        match d.result {
            Ok(payload) => self.reply(d.client, d.tag, Response::ComputeOk, payload),
            Err(e) => self.reply(d.client, d.tag, Response::Error(e), Vec::new()),
        }
    }

    fn flush_client(&mut self, id: u64) {
        let Some(c) = self.clients.get_mut(&id) else { return };
        match c.out.flush(&mut c.stream) {
            Ok(true) => {
                if c.writable_armed {
                    c.writable_armed = false;
                    let _ = self.poll.registry().reregister(
                        &mut c.stream,
                        token::client_token(id),
                        Interest::READABLE,
                    );
                }
                if c.close_after_flush && !c.awaits_exit {
                    self.close_client(id, "closed after its last reply");
                }
            }
            Ok(false) => {
                if !c.writable_armed {
                    c.writable_armed = true;
                    let _ = self.poll.registry().reregister(
                        &mut c.stream,
                        token::client_token(id),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                }
            }
            Err(e) => {
                debug!("client {id}: write failed: {e}");
                self.close_client(id, "write failed");
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty.drain(..) {
            self.flush_client(id);
        }
        self.dirty = dirty;
    }

    fn close_after_flush(&mut self, id: u64) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.close_after_flush = true;
            self.dirty.push(id);
        }
    }

    fn close_client(&mut self, id: u64, why: &str) {
        let Some(mut c) = self.clients.remove(&id) else { return };
        let _ = self.poll.registry().deregister(&mut c.stream);
        debug!("client {id} {why}");
        let (cancel, timers) = self.mux.forget_client(id);
        for t in timers {
            self.timers.cancel(t);
        }
        self.status_waiters.retain(|(c, _)| *c != id);
        self.forget_follows(id);
        if !cancel.is_empty() {
            debug!("client {id} left {} request(s) at compute: cancelling", cancel.len());
        }
        for rid in cancel {
            self.send_compute(kind::CANCEL, rid, 0, Vec::new());
        }
        self.flush_compute();
    }

    // ---- Compute --------------------------------------------------------

    fn start_compute(&mut self) {
        if self.stopping {
            return;
        }
        match self.compute.spawn() {
            Ok(pid) => {
                info!("compute started: pid {pid} ({})", self.compute.bin.display());
                self.compute.last_error = None;
                self.watch_compute_output();
                self.timers.arm(Instant::now() + HELLO_TIMEOUT, Timer::ComputeHello { pid });
            }
            Err(e) => {
                let r = self.random();
                let delay = self.compute.spawn_failed(e.to_string(), r);
                error!("{e}; retrying in {delay:?}");
                self.backoff(delay.max(compute::BACKOFF_BASE));
            }
        }
    }

    /// `[compute]` changed on reload: run compute the new way.
    fn reconfigure_compute(&mut self, spec: &crate::supervise::config::ComputeSpec) {
        let launch = self.compute.base.configured(spec, self.compute.workers_flag);
        if launch == self.compute.launch {
            return;
        }
        info!("compute configuration changed: restarting compute");
        self.compute.launch = launch;
        self.compute.failures = 0;
        match (self.compute.state, self.compute.pid()) {
            (State::Failed | State::Backoff { .. }, None) => self.start_compute(),
            (_, Some(pid)) => {
                self.compute.restart_requested = true;
                self.send_compute(kind::SHUTDOWN, 0, 0, Vec::new());
                self.flush_compute();
                kill_group(pid, Signal::SIGTERM);
            }
            _ => {}
        }
    }

    fn backoff(&mut self, delay: Duration) {
        let until = Instant::now() + delay;
        self.compute.state = State::Backoff { until };
        self.timers.arm(until, Timer::ComputeRestart);
        // Waiting requests cannot be served soon: fail them now.
        let why = self
            .compute
            .last_error
            .clone()
            .or_else(|| self.compute.last_exit.clone())
            .unwrap_or_default();
        let msg = format!("compute is down ({why}); retry in {} ms", delay.as_millis());
        for d in self.mux.fail_queued(ErrorKind::ComputeDown, &msg) {
            self.deliver(d);
        }
        self.answer_status_waiters();
    }

    fn watch_compute_output(&mut self) {
        let Some(child) = self.compute.child.as_ref() else { return };
        let reg = self.poll.registry();
        for (fd, tok) in [
            (child.stdout.as_ref().map(|s| s.as_raw_fd()), token::COMPUTE_STDOUT),
            (child.stderr.as_ref().map(|s| s.as_raw_fd()), token::COMPUTE_STDERR),
        ] {
            let Some(fd) = fd else { continue };
            set_nonblocking(fd);
            if let Err(e) = reg.register(&mut SourceFd(&fd), tok, Interest::READABLE) {
                warn!("cannot watch compute output: {e}");
            }
        }
    }

    /// Forward compute's stdout/stderr into the log, a line at a time.
    fn read_compute_output(&mut self, which: usize) {
        let Some(child) = self.compute.child.as_mut() else { return };
        let pid = child.pid;
        let pipe: Option<&mut dyn Read> = if which == 0 {
            child.stdout.as_mut().map(|s| s as &mut dyn Read)
        } else {
            child.stderr.as_mut().map(|s| s as &mut dyn Read)
        };
        let Some(pipe) = pipe else { return };
        let mut eof = false;
        loop {
            match pipe.read(&mut self.read_buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.out_lines[which].extend_from_slice(&self.read_buf[..n]),
                Err(e) if would_block(&e) => break,
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
            self.close_compute_output(which);
        }
    }

    /// Stop watching a pipe at EOF; closing the fd removes it from epoll.
    fn close_compute_output(&mut self, which: usize) {
        let Some(child) = self.compute.child.as_mut() else { return };
        let pipe: Option<std::os::fd::OwnedFd> = if which == 0 {
            child.stdout.take().map(Into::into)
        } else {
            child.stderr.take().map(Into::into)
        };
        if let Some(pipe) = pipe {
            let _ = self.poll.registry().deregister(&mut SourceFd(&pipe.as_raw_fd()));
        }
    }

    fn accept_compute(&mut self) {
        loop {
            let (mut stream, _) = match self.compute_listener.accept() {
                Ok(s) => s,
                Err(e) if would_block(&e) => return,
                Err(e) => {
                    warn!("accept on the compute socket failed: {e}");
                    return;
                }
            };
            let cred =
                nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
            let me = nix::unistd::geteuid().as_raw();
            let expected = self.compute.pid();
            let refusal = match (&cred, expected) {
                (Err(e), _) => Some(format!("cannot read its credentials: {e}")),
                (Ok(c), _) if c.uid() != me => {
                    Some(format!("pid {} runs as uid {}, not {me}", c.pid(), c.uid()))
                }
                (Ok(c), Some(p)) if c.pid() as u32 != p => Some(format!(
                    "pid {} is not the compute daemon weaver started (pid {p})",
                    c.pid()
                )),
                (Ok(c), None) => {
                    Some(format!("pid {}: no compute daemon is being started", c.pid()))
                }
                (Ok(_), Some(_)) if self.compute.conn.is_some() => {
                    Some("compute is already connected".into())
                }
                _ => None,
            };
            if let Some(why) = refusal {
                warn!("refused a connection on the compute socket: {why}");
                continue;
            }
            if let Err(e) =
                self.poll.registry().register(&mut stream, token::COMPUTE_CONN, Interest::READABLE)
            {
                warn!("cannot watch the compute connection: {e}");
                continue;
            }
            debug!("compute connected; waiting for HELLO");
            self.compute.conn = Some(Conn {
                stream,
                dec: wire::FrameDecoder::new(),
                out: Default::default(),
                writable_armed: false,
            });
        }
    }

    fn read_compute(&mut self) {
        let mut frames = Vec::new();
        let Some(conn) = self.compute.conn.as_mut() else { return };
        let scratch = &mut self.read_buf[..SCRATCH_READ];
        let mut lost = match frame::drain(&mut conn.stream, &mut conn.dec, scratch, &mut frames) {
            Drained::WouldBlock => None,
            Drained::Eof => Some("compute closed its connection".to_string()),
            Drained::Failed(e) => Some(format!("compute connection failed: {e}")),
            Drained::Bad(e) => Some(format!("compute broke the protocol: {e}")),
        };
        for f in frames {
            if let Err(why) = self.compute_frame(f) {
                lost = Some(why);
                break;
            }
        }
        if let Some(why) = lost {
            self.compute_lost(&why);
        }
    }

    fn compute_frame(&mut self, f: Frame) -> Result<(), String> {
        let h = f.header;
        match h.kind {
            kind::RESPONSE => match self.mux.complete(h.request_id, h.code, f.payload) {
                Completion::Deliver(d) => self.deliver(d),
                Completion::Dropped => debug!("dropped a late reply for request {}", h.request_id),
                Completion::Unknown => warn!("compute answered unknown request {}", h.request_id),
            },
            kind::HELLO if self.compute.hello.is_none() => {
                let hello = Hello::parse(&f.payload)
                    .map_err(|e| format!("compute sent a bad HELLO: {e}"))?;
                if hello.version != wire::VERSION {
                    return Err(format!(
                        "compute speaks protocol {}, weaver {}: rebuild it from this release",
                        hello.version,
                        wire::VERSION
                    ));
                }
                let ops: Vec<&str> = hello.ops.iter().map(|(_, n)| n.as_str()).collect();
                info!(
                    "compute ready: pid {}, {} workers, ops {}",
                    hello.pid,
                    hello.workers,
                    ops.join(", ")
                );
                self.compute.hello = Some(hello);
                if self.compute.state == State::Starting {
                    self.compute.state = State::Ready;
                }
                self.answer_status_waiters();
            }
            kind::PING => self.send_compute(kind::PONG, h.request_id, 0, f.payload),
            kind::PONG => {}
            k => return Err(format!("compute sent an unexpected frame of kind {k}")),
        }
        Ok(())
    }

    fn send_compute(&mut self, kind: u16, id: u64, code: u32, payload: Vec<u8>) {
        let Some(conn) = self.compute.conn.as_mut() else { return };
        let h = wire::Header { kind, request_id: id, code, payload_len: payload.len() as u32 };
        conn.out.push_slice(&h.encode());
        conn.out.push(payload);
    }

    /// Move queued requests to compute while the window allows.
    fn pump_compute(&mut self) {
        if self.compute.state != State::Ready || self.compute.conn.is_none() {
            return;
        }
        let mut sent = false;
        while let Some(out) = self.mux.next_send() {
            let op = self.compute.hello.as_ref().and_then(|h| h.op_id(&out.op));
            match op {
                Some(code) => {
                    self.send_compute(kind::REQUEST, out.id, code, out.payload);
                    sent = true;
                }
                None => {
                    let msg =
                        unknown_op(&out.op, self.compute.hello.as_ref().expect("ready has hello"));
                    if let Completion::Deliver(d) = self
                        .mux
                        .fail(out.id, ErrorReply { kind: ErrorKind::UnknownOp, message: msg })
                    {
                        self.deliver(d);
                    }
                }
            }
        }
        if sent {
            self.flush_compute();
        }
    }

    fn flush_compute(&mut self) {
        let Some(conn) = self.compute.conn.as_mut() else { return };
        match conn.out.flush(&mut conn.stream) {
            Ok(true) if conn.writable_armed => {
                conn.writable_armed = false;
                let _ = self.poll.registry().reregister(
                    &mut conn.stream,
                    token::COMPUTE_CONN,
                    Interest::READABLE,
                );
            }
            Ok(true) => {}
            Ok(false) if !conn.writable_armed => {
                conn.writable_armed = true;
                let _ = self.poll.registry().reregister(
                    &mut conn.stream,
                    token::COMPUTE_CONN,
                    Interest::READABLE | Interest::WRITABLE,
                );
            }
            Ok(false) => {}
            Err(e) => {
                let why = format!("writing to compute failed: {e}");
                self.compute_lost(&why);
            }
        }
    }

    /// The connection is gone or untrustworthy: fail what compute held, make
    /// sure the process is gone; the restart follows its reaping.
    fn compute_lost(&mut self, why: &str) {
        if let Some(mut conn) = self.compute.conn.take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.compute.hello = None;
        let (kind, msg) = if self.stopping {
            (
                ErrorKind::ShuttingDown,
                format!("weaver is shutting down and compute stopped ({why})"),
            )
        } else {
            (
                ErrorKind::ComputeDown,
                format!("{why}; the request was lost, retry it (weaver restarts compute)"),
            )
        };
        for d in self.mux.fail_in_flight(kind, &msg) {
            self.deliver(d);
        }
        // While stopping, compute closing its end is the expected goodbye:
        // the grace timer covers a compute that does not exit.
        if let (Some(pid), false) = (self.compute.pid(), self.stopping) {
            warn!("{why}: killing compute (pid {pid})");
            self.compute.state = State::Exiting;
            kill_group(pid, Signal::SIGKILL);
        }
    }

    fn compute_exited(&mut self, status: std::process::ExitStatus) {
        let how = compute::describe_exit(status);
        // Last words first: drain what it wrote before dying.
        self.read_compute_output(0);
        self.read_compute_output(1);
        let pid = self.compute.pid().unwrap_or(0);
        if self.compute.conn.is_some() {
            self.compute_lost(&format!("compute (pid {pid}) {how}"));
        }
        let now = Instant::now();
        let r = self.random();
        match self.compute.exited(how.clone(), now, r) {
            None if self.compute.state == State::Failed => {
                error!(
                    "compute (pid {pid}) {how}; {}",
                    self.compute.last_error.clone().unwrap_or_default()
                );
                for d in self
                    .mux
                    .fail_queued(ErrorKind::ComputeDown, "compute failed and will not be restarted")
                {
                    self.deliver(d);
                }
                self.answer_status_waiters();
            }
            None => info!("compute (pid {pid}) {how}"),
            Some(delay) => {
                warn!("compute (pid {pid}) {how}; restart {} in {delay:?}", self.compute.restarts);
                if delay.is_zero() {
                    self.start_compute();
                } else {
                    self.backoff(delay);
                }
            }
        }
    }

    // ---- Signals, children, timers --------------------------------------

    fn on_signals(&mut self) {
        let sigs: Vec<i32> = self.signals.pending().collect();
        for sig in sigs {
            match sig {
                SIGCHLD => self.reap(),
                SIGINT | SIGTERM => {
                    let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                    self.begin_stop(&format!("{name} received"));
                }
                SIGHUP => info!("SIGHUP received: nothing to reload"),
                _ => {}
            }
        }
    }

    /// Reap every exited child before acting on any of them.
    fn reap(&mut self) {
        let mut reaped = Vec::new();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(ws) => {
                    let Some(pid) = ws.pid() else { continue };
                    let raw = match ws {
                        WaitStatus::Exited(_, code) => (code & 0xff) << 8,
                        WaitStatus::Signaled(_, sig, core) => {
                            sig as i32 | if core { 0x80 } else { 0 }
                        }
                        _ => continue,
                    };
                    let status = <std::process::ExitStatus as std::os::unix::process::ExitStatusExt>::from_raw(raw);
                    reaped.push((pid.as_raw() as u32, status));
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("waitpid failed: {e}");
                    break;
                }
            }
        }
        for (pid, status) in reaped {
            if Some(pid) == self.compute.pid() {
                self.compute_exited(status);
            } else {
                self.child_exited(pid, status);
            }
        }
    }

    /// Processes that escaped their group and were adopted by us (we are a
    /// subreaper): at the very end nothing of ours may stay behind.
    fn kill_adopted(&mut self) {
        let me = std::process::id();
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        let mut killed = 0;
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
            let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            if ppid == Some(me) && Some(pid) != self.guard.as_ref().map(Guard::pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                killed += 1;
            }
        }
        if killed > 0 {
            warn!("killed {killed} leftover descendant process(es) at exit");
            while waitpid(Pid::from_raw(-1), None).is_ok() {}
        }
    }

    fn fire_timers(&mut self) {
        for t in self.timers.expired(Instant::now()) {
            match t {
                Timer::Request { id, after_ms } => {
                    if let Some((d, sent)) = self.mux.expire(id, after_ms) {
                        if sent {
                            self.send_compute(kind::CANCEL, id, 0, Vec::new());
                            self.flush_compute();
                        }
                        self.deliver(d);
                    }
                }
                Timer::ComputeRestart => {
                    if matches!(self.compute.state, State::Backoff { .. }) {
                        self.start_compute();
                    }
                }
                Timer::ComputeHello { pid } => {
                    if self.compute.pid() == Some(pid)
                        && self.compute.hello.is_none()
                        && !self.stopping
                    {
                        self.compute_lost(&format!(
                            "compute (pid {pid}) did not connect and say HELLO within {HELLO_TIMEOUT:?}"
                        ));
                    }
                }
                Timer::Supervise(key) => {
                    let a = self.sup.on_timer(&key, Instant::now());
                    self.run_actions(a);
                }
                Timer::Sweep { pgid } => self.sweep_done(pgid),
                Timer::SweepOrphan { pid } => self.orphan_overdue(pid),
                Timer::StopGrace => {
                    if let Some(pid) = self.compute.pid() {
                        warn!("compute (pid {pid}) still running {STOP_GRACE:?} after SIGTERM: SIGKILL");
                        kill_group(pid, Signal::SIGKILL);
                    }
                }
            }
        }
    }

    // ---- Status and stop ------------------------------------------------

    fn status(&self) -> StatusReport {
        let c = &self.compute;
        let s = self.mux.stats;
        StatusReport {
            version: protocol::RELEASE.to_string(),
            protocol: PROTOCOL_VERSION,
            daemon: DaemonStatus {
                pid: std::process::id(),
                uptime_ms: self.started.elapsed().as_millis() as u64,
                runtime_dir: self.dir.path().display().to_string(),
                log_file: self.log_file.as_ref().map(|p| p.display().to_string()),
                clients: self.clients.len() as u64,
            },
            compute: ComputeStatus {
                pid: c.pid(),
                state: c.state.into(),
                bin: c.bin.display().to_string(),
                workers: c.hello.as_ref().map(|h| h.workers),
                restarts: c.restarts,
                in_flight: self.mux.in_flight() as u64,
                queued: self.mux.queued() as u64,
                served: s.served,
                errors: s.errors,
                cancelled: s.cancelled,
                timed_out: s.timed_out,
                busy_rejected: s.busy_rejected,
                dropped_late: s.dropped_late,
                last_exit: c.last_exit.clone(),
                last_error: c.last_error.clone(),
                next_restart_ms: match c.state {
                    State::Backoff { until } => {
                        Some(until.saturating_duration_since(Instant::now()).as_millis() as u64)
                    }
                    _ => None,
                },
            },
        }
    }

    fn answer_status_waiters(&mut self) {
        if self.status_waiters.is_empty() {
            return;
        }
        let s = self.status();
        for (id, tag) in std::mem::take(&mut self.status_waiters) {
            self.reply(id, tag, Response::Status(Box::new(s.clone())), Vec::new());
        }
    }

    /// Graceful stop: no new clients, queued requests fail, compute gets
    /// SHUTDOWN and SIGTERM, and SIGKILL after the grace.
    fn begin_stop(&mut self, why: &str) {
        if self.stopping {
            return;
        }
        info!("stopping: {why}");
        self.stopping = true;
        if let Some(mut l) = self.control.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for d in self.mux.fail_queued(ErrorKind::ShuttingDown, "weaver is shutting down") {
            self.deliver(d);
        }
        let a = self.sup.stop_all(Instant::now());
        self.run_actions(a);
        self.send_compute(kind::SHUTDOWN, 0, 0, Vec::new());
        self.flush_compute();
        match self.compute.pid() {
            Some(pid) => {
                self.compute.state = State::Stopping;
                if let Some(c) = self.compute.child.as_mut() {
                    c.stdin = None;
                }
                kill_group(pid, Signal::SIGTERM);
                self.timers.arm(Instant::now() + STOP_GRACE, Timer::StopGrace);
            }
            None => self.compute.state = State::Stopped,
        }
        self.answer_status_waiters();
    }

    /// After the loop: fail what is left, flush what clients can take.
    fn finish(&mut self) {
        for d in self
            .mux
            .fail_in_flight(ErrorKind::ShuttingDown, "weaver stopped before compute answered")
        {
            self.deliver(d);
        }
        for d in self.mux.fail_queued(ErrorKind::ShuttingDown, "weaver stopped") {
            self.deliver(d);
        }
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.clients.get_mut(&id) {
                let _ = c.out.flush(&mut c.stream);
            }
        }
        info!("stopped");
    }
}

fn unknown_op(op: &str, h: &Hello) -> String {
    let ops: Vec<&str> = h.ops.iter().map(|(_, n)| n.as_str()).collect();
    format!("compute does not serve op {op:?}; it serves: {}", ops.join(", "))
}

fn kill_group(pid: u32, sig: Signal) {
    // compute leads its own process group (pgid == pid).
    if let Err(e) = kill(Pid::from_raw(-(pid as i32)), sig) {
        if e != nix::errno::Errno::ESRCH {
            warn!("cannot send {sig} to compute's group {pid}: {e}");
        }
    }
}

pub(super) fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Log each complete line of `buf` (and the rest at EOF or when it grows
/// past 8 KiB), keeping a partial line for later.
fn log_lines(buf: &mut Vec<u8>, pid: u32, stream: &str, eof: bool) {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        info!("compute[{pid}] {stream}: {}", String::from_utf8_lossy(&buf[start..start + nl]));
        start += nl + 1;
    }
    buf.drain(..start);
    if (eof && !buf.is_empty()) || buf.len() > 8192 {
        info!("compute[{pid}] {stream}: {}", String::from_utf8_lossy(buf));
        buf.clear();
    }
}
