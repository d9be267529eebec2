//! The reactor: one thread, one `mio::Poll`, the loop and nothing else. It
//! owns the listeners, the signals, the token table and every deadline,
//! dispatches each event to the room it belongs to, applies the effects the
//! rooms return (it alone touches `mio::Registry`), and flushes at the end
//! of each turn. The rooms: clients, compute, procs, follow, and the
//! request handlers (see ARCHITECTURE.md).

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

use crate::daemon::clients::Clients;
use crate::daemon::compute::{Compute, Event};
use crate::daemon::conn::{accept_all, Accepted, SCRATCH_READ};
use crate::daemon::contain::Containment;
use crate::daemon::effect::{Effect, Effects, Timer};
use crate::daemon::fleet::Fleet;
use crate::daemon::follow::Follow;
use crate::daemon::handlers::{self, Ctx, DaemonInfo};
use crate::daemon::http::Http;
use crate::daemon::procs::{wall_ms, Procs};
use crate::daemon::runner::Runner;
use crate::daemon::sockets::{Sockets, Which};
use crate::daemon::timers::Timers;
use crate::daemon::token::{self, Source};
use crate::daemon::weavelets::Hub;
use crate::daemon::Setup;
use crate::frame::RawFrame;
use crate::protocol::{self, ClientMsg, ErrorKind, Response};

/// Events taken from one poll.
const EVENTS_PER_POLL: usize = 256;
/// Scratch buffer for reads of pipes and sockets.
const SCRATCH: usize = 256 * 1024;
/// How long the guard may take to confirm it let go of everything.
const GUARD_RELEASE: Duration = Duration::from_millis(500);
/// While out of file descriptors, accepting is tried again this often (and
/// whenever a client leaves).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// A client leaving with this much buffered has its memory handed back to
/// the kernel at once.
const TRIM_AFTER: usize = 1 << 20;
/// After traffic, freed heap goes back to the kernel this much later (once
/// per spell, however busy), so RSS settles after a burst.
const TRIM_DELAY: Duration = Duration::from_secs(2);
/// The cgroup is joined once compute is ready, or this long after start.
const JOIN_AFTER: Duration = Duration::from_millis(200);

pub struct Reactor {
    poll: Poll,
    /// Control socket; `None` once stopping (no new clients).
    control: Option<UnixListener>,
    /// The socket compute connects back to.
    compute_listener: UnixListener,
    /// The socket weavelets connect to; `None` once stopping.
    weavelet_listener: Option<UnixListener>,
    /// SIGINT, SIGTERM, SIGCHLD, SIGHUP, SIGUSR1, SIGUSR2 as events.
    signals: Signals,
    /// Notices when a socket path is removed or replaced.
    sockets: Sockets,
    /// Every deadline.
    timers: Timers<Timer>,
    /// The rooms.
    clients: Clients,
    compute: Compute,
    procs: Procs,
    follow: Follow,
    hub: Hub,
    runner: Runner,
    /// The HTTP endpoint, when it is on.
    http: Option<Http>,
    /// The fleet link, with `[fleet]` configured.
    fleet: Option<Fleet>,
    info: DaemonInfo,
    /// A graceful stop is under way.
    stopping: bool,
    /// Accepting hit the open-file limit at this time; connections wait in
    /// the listen queue until fds free.
    accept_starved: Option<Instant>,
    /// A trim of the heap is armed.
    trim_armed: bool,
    /// The cgroup to join before supervised processes start, until joined.
    contain: Option<&'static Containment>,
    /// The helper process moving the daemon into it, while it runs.
    joining: Option<u32>,
    /// Effects waiting to be applied.
    fx: Effects,
    /// The batch being applied (kept to reuse its allocation).
    applying: Effects,
    /// Scratch buffer for reads.
    scratch: Vec<u8>,
}

impl Reactor {
    pub fn new(s: Setup) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGCHLD, SIGHUP, SIGUSR1, SIGUSR2])?;
        let mut control = s.control;
        let mut compute_listener = s.compute_listener;
        let mut weavelet_listener = s.weavelet_listener;
        let reg = poll.registry();
        reg.register(&mut weavelet_listener, token::WEAVELET_LISTENER, Interest::READABLE)?;
        reg.register(&mut control, token::CONTROL_LISTENER, Interest::READABLE)?;
        reg.register(&mut compute_listener, token::COMPUTE_LISTENER, Interest::READABLE)?;
        reg.register(&mut signals, token::SIGNALS, Interest::READABLE)?;
        let sockets = Sockets::new(
            s.dir.path(),
            s.dir.control_socket(),
            s.dir.compute_socket(),
            s.dir.weavelet_socket(),
        );
        let procs = Procs::new(s.supervisor, s.config_path, s.guard, s.dir.path());
        let mut hub = Hub::new(s.store);
        hub.declare(&procs.sup);
        let fleet = match s.fleet {
            Some(cfg) => {
                let mut f = Fleet::new(cfg, s.state_dir.clone(), Instant::now())
                    .map_err(io::Error::other)?;
                f.set_waker(std::sync::Arc::new(mio::Waker::new(reg, token::FLEET_RESOLVED)?));
                hub.noting = true;
                f.serve_cache(&mut hub);
                Some(f)
            }
            None => None,
        };
        if let Some(fd) = sockets.fd() {
            reg.register(&mut SourceFd(&fd), token::RUNTIME_DIR, Interest::READABLE)?;
        }
        let mut http = s.http.map(|(spec, l)| Http::new(l, &spec)).transpose()?;
        if let Some(h) = http.as_mut() {
            reg.register(h.listener(), token::HTTP_LISTENER, Interest::READABLE)?;
        }
        Ok(Reactor {
            poll,
            control: Some(control),
            compute_listener,
            weavelet_listener: Some(weavelet_listener),
            signals,
            sockets,
            timers: Timers::new(),
            clients: Clients::new(),
            compute: s.compute,
            procs,
            follow: Follow::new(),
            hub,
            runner: Runner::new(),
            info: DaemonInfo {
                dir: s.dir,
                log_file: s.log_file,
                started: Instant::now(),
                http: http.as_ref().map(|h| h.addr().to_string()),
            },
            http,
            fleet,
            stopping: false,
            accept_starved: None,
            trim_armed: false,
            contain: Containment::current(),
            joining: None,
            fx: Effects::new(),
            applying: Effects::new(),
            scratch: vec![0; SCRATCH],
        })
    }

    /// The HTTP endpoint's bound address, when it is on.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(Http::addr)
    }

    /// Run until a graceful stop completes.
    pub fn run(&mut self) -> io::Result<()> {
        self.compute.step(Event::Start, Instant::now(), &mut self.fx);
        if self.contain.is_some_and(|c| c.cgroup.is_some()) {
            self.timers.arm(Instant::now() + JOIN_AFTER, Timer::Join);
        } else {
            self.contain = None;
            self.start_processes();
        }
        self.apply();
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            // Pipes or followers with more than one turn's worth: no sleep.
            let clients = &self.clients;
            let more = self.procs.has_pending()
                || self.runner.has_pending()
                || self.follow.pending(&self.procs.sup, |c| clients.backlog(c) == 0);
            let timeout =
                if more { Some(Duration::ZERO) } else { self.timers.next_timeout(Instant::now()) };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                let closed = ev.is_read_closed() || ev.is_error();
                let readable = ev.is_readable() || closed;
                self.dispatch(ev.token(), readable, closed, ev.is_writable());
                self.apply();
            }
            if !events.is_empty() && !self.trim_armed {
                self.trim_armed = true;
                self.timers.arm(Instant::now() + TRIM_DELAY, Timer::Trim);
            }
            self.end_of_turn();
            self.join_cgroup_when_settled();
            if self.stopping
                && self.compute.pid().is_none()
                && self.procs.all_gone()
                && self.runner.idle()
            {
                break;
            }
        }
        self.procs.kill_adopted();
        if let Some(c) = crate::daemon::contain::Containment::current() {
            let n = c.sweep();
            if n > 0 {
                warn!("killed {n} leftover process(es) of this daemon at exit");
            }
        }
        if let Some(g) = self.procs.guard_mut() {
            g.release(GUARD_RELEASE);
        }
        self.finish();
        Ok(())
    }

    /// Adopt detached processes still running, then start what autostarts.
    fn start_processes(&mut self) {
        self.procs.adopt_detached(&mut self.fx);
        let plan = self.procs.sup.plan_start_all(Instant::now());
        self.procs.run_actions(plan, &mut self.fx);
    }

    /// One event. `closed`: the peer closed or the socket failed (a
    /// connection's read then goes on to the end, see
    /// [`drain`](crate::daemon::conn::drain)).
    fn dispatch(&mut self, t: Token, readable: bool, closed: bool, writable: bool) {
        let now = Instant::now();
        let fx = &mut self.fx;
        match token::source(t) {
            Source::ControlListener => self.accept_on(Which::Control),
            Source::ComputeListener => self.accept_on(Which::Compute),
            Source::WeaveletListener => self.accept_on(Which::Weavelet),
            Source::Weavelet(id) => {
                if writable {
                    self.hub.flush(id, fx);
                }
                if readable {
                    let scratch = &mut self.scratch[..SCRATCH_READ];
                    self.hub.read(id, scratch, closed, &self.procs.sup, now, fx);
                }
            }
            Source::Signals => self.on_signals(),
            Source::HttpListener => self.accept_http(),
            Source::Http(id) => {
                let Some(http) = self.http.as_mut() else { return };
                let view = handlers::health::View {
                    compute: &self.compute,
                    procs: &self.procs,
                    hub: &self.hub,
                    info: &self.info,
                    stopping: self.stopping,
                    processes_started: self.contain.is_none(),
                    fleet: self.fleet.as_ref(),
                };
                http.event(id, &mut |need| view.snapshot(need, Instant::now()), now, fx);
            }
            Source::Fleet => {
                if let Some(f) = self.fleet.as_mut() {
                    let scratch = &mut self.scratch[..SCRATCH_READ];
                    f.ready(readable, writable, scratch, &mut self.hub, fx);
                }
            }
            Source::FleetResolved => {
                if let Some(f) = self.fleet.as_mut() {
                    f.resolved(fx);
                }
            }

            Source::RuntimeDir => {
                let changed = self.sockets.changed();
                self.rebind(&changed);
            }
            Source::ComputeConn => {
                if writable {
                    self.compute.flush(now, fx);
                }
                if readable {
                    self.compute.read(&mut self.scratch[..SCRATCH_READ], closed, now, fx);
                }
            }
            Source::ComputeStdout => self.compute.read_output(0, &mut self.scratch, fx),
            Source::ComputeStderr => self.compute.read_output(1, &mut self.scratch, fx),
            Source::Pipe(id) => self.procs.read_pipe(id, &mut self.scratch, fx),
            Source::Stdin(id) => self.procs.stdin.writable(id, fx),
            Source::JobPipe(id) => self.runner.read_pipe(id, &mut self.scratch, fx),
            Source::Client(id) => {
                if writable {
                    self.clients.flush(id, fx);
                }
                if readable {
                    self.read_client(id, closed);
                }
            }
            Source::Unknown => debug!("event for unknown token {t:?}"),
        }
    }

    /// Accept every queued connection on one listener. At the open-file
    /// limit the rest stay queued in the kernel, and accepting is tried
    /// again when a client leaves or after [`ACCEPT_RETRY`] (the listener is
    /// edge-triggered: no new event would come for them).
    fn accept_on(&mut self, which: Which) {
        let now = Instant::now();
        let (fx, clients, compute, hub) =
            (&mut self.fx, &mut self.clients, &mut self.compute, &mut self.hub);
        let (n, stop) = match which {
            Which::Control => match self.control.as_ref() {
                Some(l) => accept_all(l, |s| clients.accept(s, now, fx)),
                None => return,
            },
            Which::Compute => accept_all(&self.compute_listener, |s| compute.accept(s, fx)),
            Which::Weavelet => match self.weavelet_listener.as_ref() {
                Some(l) => accept_all(l, |s| hub.accept(s, now, fx)),
                None => return,
            },
        };
        if let (true, Some(since)) = (n > 0, self.accept_starved) {
            info!("accepting again after {:?} out of file descriptors", since.elapsed());
            self.accept_starved = None;
        }
        if !matches!(stop, Accepted::Drained) {
            let what = self.sockets.path(which).display().to_string();
            self.accept_stopped(stop, &what, now);
        }
    }

    /// Accepting on `what` stopped: at the open-file limit, say so once and
    /// try again after [`ACCEPT_RETRY`] (or when a client leaves).
    fn accept_stopped(&mut self, stop: Accepted, what: &str, now: Instant) {
        match stop {
            Accepted::Drained => {}
            Accepted::OutOfFds(e) => {
                if self.accept_starved.is_none() {
                    warn!(
                        "out of file descriptors ({e}) with {} clients: new connections on {what} \
                         wait until some leave",
                        self.clients.len()
                    );
                    self.accept_starved = Some(now);
                }
                self.timers.arm(now + ACCEPT_RETRY, Timer::AcceptRetry);
            }
            Accepted::Failed(e) => warn!("accept on {what} failed: {e}"),
        }
    }

    /// Accepting stopped at the open-file limit: try every listener again.
    fn accept_again(&mut self) {
        for w in [Which::Control, Which::Weavelet, Which::Compute] {
            self.accept_on(w);
        }
        self.accept_http();
    }

    /// Accept every queued HTTP connection (the same open-file handling as
    /// [`Reactor::accept_on`]).
    fn accept_http(&mut self) {
        let Some(http) = self.http.as_mut() else { return };
        let now = Instant::now();
        let stop = http.accept(now, &mut self.fx);
        self.accept_stopped(stop, "the HTTP endpoint", now);
    }

    fn read_client(&mut self, id: u64, closed: bool) {
        let r = self.clients.read(id, &mut self.scratch[..SCRATCH_READ], closed);
        for f in r.frames {
            if !self.clients.serving(id) {
                break;
            }
            self.client_frame(id, f);
        }
        if let Some(why) = r.bad {
            warn!("client {id}: {why}; closing its connection");
            let msg = format!("{why}; closing this connection");
            self.clients.reply_error(id, 0, ErrorKind::BadRequest, msg, &mut self.fx);
            self.clients.close_after_flush(id);
        }
        if r.gone {
            self.fx.push(Effect::Close { client: id, why: "disconnected" });
        }
    }

    fn client_frame(&mut self, id: u64, f: RawFrame) {
        if !self.clients.get(id).is_some_and(|c| c.ready) {
            return handlers::handshake::handle(&mut self.clients, id, f, &mut self.fx);
        }
        match protocol::decode::<ClientMsg>(&f.meta, "request") {
            Ok(msg) => match handlers::payload_of(f) {
                Ok(p) => handlers::request(&mut self.ctx(), id, msg.tag, msg.req, p),
                Err(e) => {
                    let msg_ = format!("{e}; send the payload in a sealed memfd of its size");
                    self.clients.reply_error(
                        id,
                        msg.tag,
                        ErrorKind::BadRequest,
                        msg_,
                        &mut self.fx,
                    );
                }
            },
            Err(e) => {
                warn!("client {id}: {e}; closing its connection");
                let msg = format!("{e}; closing this connection");
                self.clients.reply_error(id, 0, ErrorKind::BadRequest, msg, &mut self.fx);
                self.clients.close_after_flush(id);
            }
        }
    }

    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            clients: &mut self.clients,
            compute: &mut self.compute,
            procs: &mut self.procs,
            follow: &mut self.follow,
            hub: &mut self.hub,
            runner: &mut self.runner,
            fleet: self.fleet.as_mut(),
            info: &self.info,
            stopping: self.stopping,
            now: Instant::now(),
            fx: &mut self.fx,
        }
    }

    /// Apply effects until none are left (applying one may produce more).
    fn apply(&mut self) {
        while !self.fx.is_empty() {
            let mut batch = std::mem::replace(&mut self.fx, std::mem::take(&mut self.applying));
            for e in batch.drain(..) {
                self.apply_one(e);
            }
            self.applying = batch;
        }
    }

    fn apply_one(&mut self, e: Effect) {
        let reg = self.poll.registry();
        match e {
            Effect::Watch { fd, token, interest } => {
                if let Err(e) = reg.register(&mut SourceFd(&fd), token, interest) {
                    warn!("cannot watch fd {fd} ({token:?}): {e}");
                }
            }
            Effect::Rewatch { fd, token, interest } => {
                if let Err(e) = reg.reregister(&mut SourceFd(&fd), token, interest) {
                    debug!("cannot change the watch of fd {fd} ({token:?}): {e}");
                }
            }
            Effect::Unwatch { fd } => {
                let _ = reg.deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
            Effect::Unregister { fd } => {
                let _ = reg.deregister(&mut SourceFd(&fd));
            }
            Effect::Arm { at, timer } => self.timers.arm(at, timer),
            Effect::Cancel(timer) => self.timers.cancel(&timer),
            Effect::Reply { client, tag, resp, payload } => {
                self.clients.reply(client, tag, resp, payload, &mut self.fx)
            }
            Effect::ReplyFd { client, tag, resp, fd, len } => {
                self.clients.reply_fd(client, tag, resp, fd, len, &mut self.fx)
            }
            Effect::AnswerStatus { waiters } => {
                let now = Instant::now();
                let s =
                    handlers::status::report(&self.info, self.clients.len(), &self.compute, now);
                for (client, tag) in waiters {
                    let resp = Response::Status(Box::new(s.clone()));
                    self.clients.reply(client, tag, resp, Vec::new(), &mut self.fx);
                }
            }
            Effect::CloseAfterFlush { client } => self.clients.close_after_flush(client),
            Effect::Close { client, why } => {
                let Some((fd, queued)) = self.clients.remove(client) else { return };
                let _ = reg.deregister(&mut SourceFd(&fd.as_raw_fd()));
                debug!("client {client} {why}");
                self.compute.forget_client(client, &mut self.fx);
                self.follow.forget(client);
                self.hub.forget_client(client, &mut self.fx);
                self.procs.stdin.forget_client(client, &mut self.fx);
                self.runner.forget_client(client, &mut self.fx);
                if let Some(f) = self.fleet.as_mut() {
                    f.forget_client(client, &mut self.fx);
                }
                drop(fd);
                if queued >= TRIM_AFTER {
                    crate::sys::trim_heap();
                }
                if self.accept_starved.is_some() {
                    self.accept_again();
                }
            }
            Effect::Publish { instance, kind } => self.follow.publish(wall_ms(), &instance, kind),
            Effect::Stop { why } => self.begin_stop(&why),
            Effect::StdinOpened { instance, fd } => {
                self.procs.stdin.opened(&instance, fd, &mut self.fx)
            }
            Effect::StdinGone { instance } => self.procs.stdin.gone(&instance, &mut self.fx),
        }
    }

    /// Join the daemon's cgroup once compute has settled (or a moment
    /// after start): the move holds every fork on the host for a kernel
    /// grace period, so a helper process makes it while the loop serves,
    /// and supervised processes start when it has exited, born in the
    /// cgroup.
    fn join_cgroup_when_settled(&mut self) {
        let Some(c) = self.contain else { return };
        let settled = !self.compute.life.settling() || self.info.started.elapsed() >= JOIN_AFTER;
        if self.joining.is_some() || !settled {
            return;
        }
        match c.start_join() {
            Some(pid) => self.joining = Some(pid),
            None => self.joined(),
        }
    }

    /// The join is over (done or not possible): start the processes.
    fn joined(&mut self) {
        self.contain = None;
        self.joining = None;
        if !self.stopping {
            self.start_processes();
        }
    }

    /// After the events of one poll: bounded reads left over, deadlines,
    /// requests to compute, followers, then every write.
    fn end_of_turn(&mut self) {
        self.procs.read_pending(&mut self.scratch, &mut self.fx);
        self.runner.read_pending(&mut self.scratch, &mut self.fx);
        self.fire_timers();
        self.apply();
        self.compute.pump(&mut self.fx);
        let clients = &self.clients;
        self.follow.pump(&self.procs.sup, |c| clients.backlog(c), &mut self.fx);
        self.hub.pump(|c| clients.backlog(c), &mut self.fx);
        if let Some(f) = self.fleet.as_mut() {
            f.notes(std::mem::take(&mut self.hub.notes));
            f.pump(&mut self.hub, &mut self.fx);
        }
        self.apply();
        let now = Instant::now();
        self.compute.flush(now, &mut self.fx);
        self.hub.flush_dirty(&mut self.fx);
        self.clients.flush_dirty(&mut self.fx);
        self.apply();
        // Closing clients may have queued cancellations for compute.
        self.compute.flush(now, &mut self.fx);
        self.apply();
        if let Some(f) = self.fleet.as_mut() {
            f.after_flush(&mut self.hub, &mut self.fx);
            self.apply();
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        for t in self.timers.expired(now) {
            let fx = &mut self.fx;
            match t {
                Timer::Request(id) => self.compute.expire(id, fx),
                Timer::Compute(d) => self.compute.step(Event::Due(d), now, fx),
                Timer::Supervise(key) => {
                    let a = self.procs.sup.on_timer(&key, now);
                    self.procs.run_actions(a, fx);
                }
                Timer::Sweep { pgid } => self.procs.sweep_done(pgid),
                Timer::SweepOrphan { pid } => self.procs.orphan_overdue(pid),
                Timer::AcceptRetry => self.accept_again(),
                Timer::WeaveletHello(id) => self.hub.hello_overdue(id, fx),
                Timer::ConfigWait(id) => self.hub.wait_overdue(id, fx),
                Timer::Job { run, job, kill } => self.runner.on_timer(run, job, kill, fx),
                Timer::Http(id) => {
                    if let Some(h) = self.http.as_mut() {
                        h.timer(id, now, fx)
                    }
                }
                Timer::Stdin(id) => self.procs.stdin.overdue(id, fx),
                // The end of this turn runs the fleet link's deadlines.
                Timer::Fleet => {}
                Timer::FleetWait(id) => {
                    if let Some(f) = self.fleet.as_mut() {
                        f.wait_overdue(id, fx);
                    }
                }
                Timer::Handshake(id) => self.clients.handshake_overdue(id, fx),
                // The end of this turn joins the cgroup.
                Timer::Join => {}
                Timer::Trim => {
                    self.trim_armed = false;
                    crate::sys::trim_heap();
                }
            }
        }
    }

    fn on_signals(&mut self) {
        let sigs: Vec<i32> = self.signals.pending().collect();
        for sig in sigs {
            match sig {
                SIGCHLD => self.reap(),
                SIGINT => self.begin_stop("SIGINT received"),
                SIGTERM => self.begin_stop("SIGTERM received"),
                SIGHUP => handlers::reload::on_hangup(&mut self.ctx()),
                SIGUSR1 => {
                    let changed = self.sockets.check();
                    info!("SIGUSR1: {} socket(s) to bind again", changed.len());
                    self.rebind(&changed);
                }
                SIGUSR2 => info!("SIGUSR2 received: ignored"),
                other => debug!("signal {other} ignored"),
            }
        }
    }

    /// Bind again the sockets whose path was removed or replaced. Clients
    /// already queued on the old socket are accepted first; we hold the
    /// daemon lock, so whatever else sits at the path is stale.
    fn rebind(&mut self, which: &[Which]) {
        for &w in which {
            if self.stopping {
                return;
            }
            let Some(mut fresh) = self.sockets.bind_again(w) else { continue };
            let token = match w {
                Which::Control => token::CONTROL_LISTENER,
                Which::Compute => token::COMPUTE_LISTENER,
                Which::Weavelet => token::WEAVELET_LISTENER,
            };
            if let Err(e) = self.poll.registry().register(&mut fresh, token, Interest::READABLE) {
                warn!("cannot watch the new {}: {e}", self.sockets.path(w).display());
                continue;
            }
            // Connections queued on the old socket are taken first.
            self.accept_on(w);
            let old = match w {
                Which::Control => self.control.replace(fresh),
                Which::Compute => Some(std::mem::replace(&mut self.compute_listener, fresh)),
                Which::Weavelet => self.weavelet_listener.replace(fresh),
            };
            if let Some(mut old) = old {
                let _ = self.poll.registry().deregister(&mut old);
            }
            self.sockets.rebound(w);
        }
    }

    /// Reap every exited child before acting on any of them.
    fn reap(&mut self) {
        let now = Instant::now();
        for (pid, status) in crate::sys::reap_all() {
            let compute = self.compute.pid();
            if Some(pid) == self.joining {
                if !status.success() {
                    warn!("joining the daemon's cgroup failed ({status}); the marker still holds");
                }
                self.joined();
            } else if Some(pid) == compute {
                self.compute.exited(status, now, &mut self.fx);
            } else if self.runner.owns(pid) {
                self.runner.exited(pid, status, self.procs.guard_mut(), &mut self.fx);
            } else {
                self.procs.child_exited(pid, status, compute, &mut self.fx);
            }
        }
    }

    /// Graceful stop: no new clients, queued requests fail, supervised
    /// processes stop in order, compute gets SHUTDOWN and SIGTERM, and
    /// SIGKILL after the grace.
    fn begin_stop(&mut self, why: &str) {
        if self.stopping {
            return;
        }
        info!("stopping: {why}");
        self.stopping = true;
        if let Some(mut l) = self.control.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(mut l) = self.weavelet_listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let now = Instant::now();
        self.compute.fail_queued(ErrorKind::ShuttingDown, "weaver is shutting down", &mut self.fx);
        let a = self.procs.sup.stop_all(now);
        self.procs.run_actions(a, &mut self.fx);
        self.runner.cancel_all(&mut self.fx);
        self.compute.step(Event::Stop, now, &mut self.fx);
    }

    /// After the loop: fail what is left, flush what clients can take.
    fn finish(&mut self) {
        let fx = &mut self.fx;
        self.compute.fail_in_flight(
            ErrorKind::ShuttingDown,
            "weaver stopped before compute answered",
            fx,
        );
        self.compute.fail_queued(ErrorKind::ShuttingDown, "weaver stopped", fx);
        if let Some(f) = self.fleet.as_mut() {
            f.goodbye(&mut self.hub, fx);
            f.save_all(&mut self.hub);
        }
        self.apply();
        self.clients.flush_all();
        info!("stopped");
    }
}
