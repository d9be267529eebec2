//! The fleet link, a room: one NATS connection (token `FLEET`) driven by
//! the sans-I/O client (`crate::fleet::client`), two watchers (the config
//! bucket's documents, the status bucket's acknowledgements), the cache in
//! the state dir, the local overlay, and `config set --fleet --wait`
//! waiters.
//!
//! - The socket: a non-blocking connect with the client's deadline,
//!   `TCP_NODELAY`, one coalesced write per turn (`pump` at the end of
//!   the turn), WRITABLE armed only while the kernel's buffer is full.
//!   A host name is resolved on a short-lived thread that reports through
//!   a `mio::Waker` (token `FLEET_RESOLVED`); an IP literal needs none.
//! - Fleet documents become hub revisions: effective = `[process.params]`
//!   defaults < fleet document < local overlay, committed to the hub with
//!   a note naming the fleet revision. Each local revision remembers the
//!   fleet revision it carries, so weavelets' acks map back to it.
//! - Acks go to the status bucket under `<node>.<instance>`, coalesced to
//!   the latest per key, sent when connected (and after a reconnect).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Waker};
use serde_json::{json, Value};

use crate::daemon::effect::{Effect, Effects, Timer};
use crate::daemon::procs::wall_ms;
use crate::daemon::token;
use crate::daemon::weavelets::{Hub, Note};
use crate::fleet::cache::{effective, Cache};
use crate::fleet::client::{Client, Event, SendError, Url};
use crate::fleet::config::FleetConfig;
use crate::fleet::kv::{self, Step, Watch, Watcher};
use crate::protocol::{ConfigDoc, ErrorKind, ErrorReply, FleetReport, Response, WaitReport};
use crate::sys::Rng;
use crate::weavelet::doc::{self, Doc};

/// Each key of an effective document: its value as JSON text and origin.
pub type OriginKeys = Vec<(String, String, String)>;

/// JetStream requests wait this long for their reply.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// The watchers' idle heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Local revisions remembered per target for mapping acks back.
const REVS_KEPT: usize = 128;
/// Status entries (weavelets of the whole fleet) held for waiters.
const MAX_STATUSES: usize = 65536;
/// Fleet revisions and the cache are written at most this often.
const SAVE_EVERY: Duration = Duration::from_millis(500);
/// Bytes queued for the socket before publishing stops.
const MAX_UNSENT: usize = 8 << 20;
/// A `config set --fleet` while connected but not synced (the watch is
/// restarting, as after a compare-and-set conflict) waits this long for
/// the sync before it fails.
const RESYNC_WAIT: Duration = Duration::from_secs(3);
/// Puts waiting for the sync, at most.
const MAX_PARKED: usize = 256;
/// Status entries wait this long before they are published: a burst of
/// acks (every weavelet of the host answering one revision, or revisions
/// in quick succession) goes out as one write with the latest per key,
/// after the turns that deliver revisions rather than between them.
const STATUS_DELAY: Duration = Duration::from_millis(10);

/// Which watcher a request or subscription belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Config,
    Status,
}

/// What a request id is for.
#[derive(Debug)]
enum Pending {
    Watch(Which, Step),
    Put {
        client: u64,
        tag: u64,
        target: String,
        values: Doc,
        changed: Vec<String>,
        wait: Option<u64>,
    },
}

/// A status entry of one weavelet on some host.
#[derive(Debug, Clone)]
struct Status {
    target: String,
    connected: bool,
    fleet_revision: u64,
    state: String,
    reason: Option<String>,
    /// The config bucket's creation time the revision belongs to (a
    /// re-created bucket counts revisions from 1 again).
    epoch: Option<String>,
    /// When its host published it (wall clock, ms), and how often that
    /// host publishes it again while nothing changes.
    time_ms: Option<u64>,
    every_ms: Option<u64>,
}

/// A connected entry whose host has not published it for this many of its
/// intervals is stale: the host is gone or cut off from NATS.
const STALE_BEATS: u64 = 3;

impl Status {
    /// How long ago its host last published it, once that is more than
    /// one interval (a missed beat), with whether it is stale.
    fn silence(&self, now_ms: u64) -> Option<(u64, bool)> {
        let (t, every) = (self.time_ms?, self.every_ms?.max(1));
        let age = now_ms.saturating_sub(t);
        (age > every).then_some((age, age > STALE_BEATS * every))
    }
}

fn secs(ms: u64) -> String {
    format!("{:.0} s", ms as f64 / 1e3)
}

/// A `config set --fleet` waiting for the config watch to be synced.
#[derive(Debug)]
struct Parked {
    client: u64,
    tag: u64,
    target: String,
    set: Vec<(String, String)>,
    unset: Vec<String>,
    wait: Option<u64>,
    until: Instant,
}

/// A `config set --fleet --wait`.
#[derive(Debug)]
struct FleetWait {
    client: u64,
    tag: u64,
    target: String,
    revision: u64,
}

/// One weavelet connection of this host, as the status bucket shows it.
#[derive(Debug, Clone)]
struct Local {
    key: String,
    target: String,
    fleet_revision: u64,
    /// The last local (hub) revision it applied.
    local_revision: u64,
}

pub struct Fleet {
    pub cfg: FleetConfig,
    client: Client,
    stream: Option<TcpStream>,
    /// The connect is in progress (waiting for WRITABLE).
    connecting: bool,
    /// WRITABLE is armed (the kernel's buffer was full).
    want_write: bool,
    /// Bytes taken from the client not yet written.
    unsent: Vec<u8>,
    /// A resolver thread's answer comes here (then the waker fires).
    resolving: Option<mpsc::Receiver<Result<SocketAddr, String>>>,
    waker: Option<Arc<Waker>>,
    config_w: Watcher,
    status_w: Watcher,
    sids: HashMap<u64, Which>,
    requests: HashMap<u64, Pending>,
    cache: Cache,
    state_dir: PathBuf,
    /// Local revision -> fleet revision, per target (newest last).
    revs: HashMap<String, Vec<(u64, u64)>>,
    statuses: BTreeMap<String, Status>,
    waits: HashMap<u64, FleetWait>,
    next_wait: u64,
    /// Puts waiting (bounded) for the config watch to be synced again.
    parked: Vec<Parked>,
    /// This host's weavelets, by hub connection id.
    locals: HashMap<u64, Local>,
    /// Status entries to publish, coalesced per key.
    outbox: BTreeMap<String, Vec<u8>>,
    /// This host's connected weavelets' entries as last published, sent
    /// again every `status_every` (their liveness).
    shown: BTreeMap<String, Value>,
    beat_due: Option<Instant>,
    /// Waiters are checked again at this time (entries turn stale).
    recheck_due: Option<Instant>,
    /// When the queued status entries are published.
    status_due: Option<Instant>,
    since_ms: u64,
    rtt: Option<Duration>,
    server: Option<String>,
    /// The last connection failure logged.
    logged: Option<String>,
    /// The cache changed since it was written.
    cache_dirty: bool,
    /// When what waits to be written is written.
    save_due: Option<Instant>,
    next_msg: u64,
    rng: Rng,
}

fn unreachable(why: &str) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::FleetUnreachable,
        message: format!("fleet unreachable; nothing written ({why})"),
    }
}

fn bad(message: String) -> ErrorReply {
    ErrorReply { kind: ErrorKind::BadRequest, message }
}

impl Fleet {
    /// The link for `cfg`, with the cache read from `state_dir`; fails
    /// only for an unreadable secret.
    pub fn new(cfg: FleetConfig, state_dir: PathBuf, now: Instant) -> Result<Fleet, String> {
        let opts = cfg.client_options()?;
        let mut rng = Rng::from_time();
        let mut client = Client::new(opts, now, Rng::seeded(rng.next_u64()));
        let (cache, problem) = Cache::load(&state_dir, &cfg.bucket);
        if let Some(p) = problem {
            warn!("fleet: {p}");
        }
        let mut config_w =
            Watcher::new(cfg.config_bucket(), &cfg.node, client.new_inbox(), HEARTBEAT, now);
        config_w.resume_from(cache.revision, cache.created.clone());
        let mut status_w =
            Watcher::new(cfg.status_bucket(), &cfg.node, client.new_inbox(), HEARTBEAT, now);
        status_w.snapshot_all = true;
        Ok(Fleet {
            cfg,
            client,
            stream: None,
            connecting: false,
            want_write: false,
            unsent: Vec::new(),
            resolving: None,
            waker: None,
            config_w,
            status_w,
            sids: HashMap::new(),
            requests: HashMap::new(),
            cache,
            state_dir,
            revs: HashMap::new(),
            statuses: BTreeMap::new(),
            waits: HashMap::new(),
            next_wait: 1,
            parked: Vec::new(),
            locals: HashMap::new(),
            outbox: BTreeMap::new(),
            shown: BTreeMap::new(),
            beat_due: None,
            recheck_due: None,
            status_due: None,
            since_ms: wall_ms(),
            rtt: None,
            server: None,
            logged: None,
            cache_dirty: false,
            save_due: None,
            next_msg: 1,
            rng,
        })
    }

    /// The waker the resolver thread reports through.
    pub fn set_waker(&mut self, w: Arc<Waker>) {
        self.waker = Some(w);
    }

    /// Start-up: the cached fleet documents (and overlay) go to the hub
    /// before NATS is reached, so weavelets get the last known ones.
    pub fn serve_cache(&mut self, hub: &mut Hub) {
        let targets: Vec<String> =
            self.cache.targets.keys().chain(self.cache.overlay.keys()).cloned().collect();
        for t in targets {
            self.recompute(hub, &t, "fleet cache");
        }
        if self.cache.revision > 0 {
            info!(
                "fleet: serving the cached fleet configuration (revision {}), not synced yet",
                self.cache.revision
            );
        }
    }

    // ---- the socket ---------------------------------------------------------

    fn start_connect(&mut self, url: Url, fx: &mut Effects) {
        if let Ok(ip) = url.host.parse::<IpAddr>() {
            return self.connect_to(SocketAddr::new(ip, url.port), fx);
        }
        let (tx, rx) = mpsc::channel();
        let waker = self.waker.clone();
        let host = url.host.clone();
        let port = url.port;
        let spawned = std::thread::Builder::new().name("weaver-resolve".into()).spawn(move || {
            let r = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host}: {e}"))
                .and_then(|mut a| a.next().ok_or_else(|| format!("{host} has no address")));
            let _ = tx.send(r);
            if let Some(w) = waker {
                let _ = w.wake();
            }
        });
        match spawned {
            Ok(_) => self.resolving = Some(rx),
            Err(e) => {
                let ev = self
                    .client
                    .closed(&format!("cannot start a resolver thread: {e}"), Instant::now());
                self.drop_events(ev);
            }
        }
    }

    /// The resolver thread answered.
    pub fn resolved(&mut self, fx: &mut Effects) {
        let Some(rx) = &self.resolving else { return };
        match rx.try_recv() {
            Ok(Ok(addr)) => {
                self.resolving = None;
                self.connect_to(addr, fx);
            }
            Ok(Err(why)) => {
                self.resolving = None;
                let ev = self.client.closed(&why, Instant::now());
                self.drop_events(ev);
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => {
                self.resolving = None;
                let ev = self.client.closed("the resolver thread ended", Instant::now());
                self.drop_events(ev);
            }
        }
    }

    fn connect_to(&mut self, addr: SocketAddr, fx: &mut Effects) {
        match TcpStream::connect(addr) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                fx.push(Effect::Watch {
                    fd: s.as_raw_fd(),
                    token: token::FLEET,
                    interest: Interest::READABLE | Interest::WRITABLE,
                });
                self.stream = Some(s);
                self.connecting = true;
                self.want_write = true;
            }
            Err(e) => {
                let ev = self.client.closed(&format!("connect to {addr}: {e}"), Instant::now());
                self.drop_events(ev);
            }
        }
    }

    /// Events of a failed attempt carry nothing a caller waits for but the
    /// log line.
    fn drop_events(&mut self, ev: Vec<Event>) {
        for e in ev {
            if let Event::Disconnected { why } = e {
                if self.logged.as_deref() != Some(why.as_str()) {
                    warn!("fleet: cannot connect: {why}; retrying with backoff");
                }
                self.logged = Some(why);
            }
        }
    }

    fn close_socket(&mut self, fx: &mut Effects) {
        if let Some(s) = self.stream.take() {
            // SAFETY: into_raw_fd gives up ownership of a valid, open fd.
            let fd = unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) };
            fx.push(Effect::Unwatch { fd });
        }
        self.connecting = false;
        self.want_write = false;
        self.unsent.clear();
    }

    /// The socket is readable or writable.
    pub fn ready(
        &mut self,
        readable: bool,
        writable: bool,
        scratch: &mut [u8],
        hub: &mut Hub,
        fx: &mut Effects,
    ) {
        let now = Instant::now();
        if self.connecting && (writable || readable) {
            let Some(s) = &self.stream else { return };
            match s.take_error() {
                Ok(None) if s.peer_addr().is_ok() => {
                    self.connecting = false;
                    self.client.connected(now);
                }
                Ok(None) => return,
                Ok(Some(e)) | Err(e) => return self.lost(&format!("connect: {e}"), hub, fx),
            }
        }
        if readable {
            loop {
                let Some(s) = self.stream.as_mut() else { return };
                match s.read(scratch) {
                    Ok(0) => return self.lost("connection closed by the server", hub, fx),
                    Ok(n) => {
                        let ev = self.client.received(&scratch[..n], Instant::now());
                        self.events(ev, hub, fx);
                        if self.client.should_close().is_some() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return self.lost(&format!("read: {e}"), hub, fx),
                }
            }
        }
        if writable && self.want_write && !self.connecting {
            self.want_write = false;
            if let Some(s) = &self.stream {
                fx.push(Effect::Rewatch {
                    fd: s.as_raw_fd(),
                    token: token::FLEET,
                    interest: Interest::READABLE,
                });
            }
        }
    }

    fn lost(&mut self, why: &str, hub: &mut Hub, fx: &mut Effects) {
        self.close_socket(fx);
        let ev = self.client.closed(why, Instant::now());
        self.events(ev, hub, fx);
    }

    /// End of the turn: deadlines, the next dial, status entries, then one
    /// write of everything queued, and the next deadline armed.
    pub fn pump(&mut self, hub: &mut Hub, fx: &mut Effects) {
        let now = Instant::now();
        let ev = self.client.tick(now);
        self.events(ev, hub, fx);
        let connected = self.client.is_ready();
        let acts = self.config_w.tick(connected, now);
        self.watch(Which::Config, acts, hub, fx);
        let acts = self.status_w.tick(connected, now);
        self.watch(Which::Status, acts, hub, fx);
        if let Some(why) = self.client.should_close().map(str::to_string) {
            self.lost(&why, hub, fx);
        }
        if self.stream.is_none() && self.resolving.is_none() {
            if let Some(url) = self.client.dial(now) {
                debug!("fleet: connecting to {url}");
                self.start_connect(url, fx);
            }
        }
        self.parked_overdue(now, fx);
        self.beat(now);
        if !self.client.is_ready() || self.outbox.is_empty() {
            self.status_due = None;
        } else {
            match self.status_due {
                None => self.status_due = Some(now + STATUS_DELAY),
                Some(t) if t <= now => {
                    self.flush_outbox();
                    self.status_due = (!self.outbox.is_empty()).then_some(now + STATUS_DELAY);
                }
                Some(_) => {}
            }
        }
        if self.waits.is_empty() {
            self.recheck_due = None;
        } else if self.recheck_due.map_or(true, |t| t <= now) {
            self.recheck_due = Some(now + Duration::from_millis(500));
            self.check_waits(fx);
        }
        self.write(hub, fx);
        self.arm(now, fx);
    }

    /// Arm the room's one timer at its nearest deadline.
    fn arm(&self, now: Instant, fx: &mut Effects) {
        let next = [
            self.client.next_deadline(),
            self.config_w.next_deadline(),
            self.status_w.next_deadline(),
            self.save_due,
            self.parked.iter().map(|p| p.until).min(),
            self.beat_due,
            self.recheck_due,
            self.status_due,
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(at) => fx.push(Effect::Arm { at: at.max(now), timer: Timer::Fleet }),
            None => fx.push(Effect::Cancel(Timer::Fleet)),
        }
    }

    fn write(&mut self, hub: &mut Hub, fx: &mut Effects) {
        if self.connecting {
            return;
        }
        let out = self.client.take_output();
        if self.unsent.is_empty() {
            self.unsent = out;
        } else {
            self.unsent.extend_from_slice(&out);
        }
        if self.unsent.is_empty() || self.want_write {
            return;
        }
        let Some(s) = self.stream.as_mut() else {
            self.unsent.clear();
            return;
        };
        let mut at = 0;
        while at < self.unsent.len() {
            match s.write(&self.unsent[at..]) {
                Ok(0) => return self.lost("write: connection closed", hub, fx),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.lost(&format!("write: {e}"), hub, fx),
            }
        }
        self.unsent.drain(..at);
        if !self.unsent.is_empty() {
            self.want_write = true;
            fx.push(Effect::Rewatch {
                fd: s.as_raw_fd(),
                token: token::FLEET,
                interest: Interest::READABLE | Interest::WRITABLE,
            });
        }
    }

    // ---- client events ------------------------------------------------------

    fn events(&mut self, ev: Vec<Event>, hub: &mut Hub, fx: &mut Effects) {
        for e in ev {
            self.event(e, hub, fx);
        }
    }

    fn event(&mut self, e: Event, hub: &mut Hub, fx: &mut Effects) {
        let now = Instant::now();
        match e {
            Event::Connected { url, info, count } => {
                info!(
                    "fleet: connected to {url} (server {} {}, connection {count})",
                    info.server_name, info.version
                );
                if !info.jetstream {
                    warn!("fleet: {url} has no JetStream: the fleet configuration cannot be read");
                }
                self.since_ms = wall_ms();
                self.server = Some(url.to_string());
                let a = self.config_w.start(now);
                self.watch(Which::Config, a, hub, fx);
                if !self.waits.is_empty() {
                    let a = self.status_w.start(now);
                    self.watch(Which::Status, a, hub, fx);
                }
                // Every local weavelet's latest state goes out again.
                let locals: Vec<Local> = self.locals.values().cloned().collect();
                for l in locals {
                    let st = if l.fleet_revision > 0 { "applied" } else { "connected" };
                    self.queue_status(&l, true, st, None);
                }
            }
            Event::Disconnected { why } => {
                if self.server.is_some() {
                    warn!("fleet: connection lost: {why}; serving the cached configuration");
                    self.since_ms = wall_ms();
                } else if self.logged.as_deref() != Some(why.as_str()) {
                    // A failing attempt is logged when its reason changes,
                    // not at every retry.
                    warn!("fleet: cannot connect: {why}; retrying with backoff");
                }
                self.logged = Some(why.clone());
                self.server = None;
                self.close_socket(fx);
                self.config_w.stopped();
                self.status_w.stopped();
                self.sids.clear();
                // Requests were failed one by one before this event;
                // puts waiting for the sync fail now.
                for p in std::mem::take(&mut self.parked) {
                    let e = unreachable(&format!("connection lost: {why}"));
                    fx.push(Effect::Reply {
                        client: p.client,
                        tag: p.tag,
                        resp: Response::Error(e),
                        payload: Vec::new(),
                    });
                }
            }
            Event::Msg(m) => match self.sids.get(&m.sid) {
                Some(&Which::Config) => {
                    let a = self.config_w.message(&m, now);
                    self.watch(Which::Config, a, hub, fx);
                }
                Some(&Which::Status) => {
                    let a = self.status_w.message(&m, now);
                    self.watch(Which::Status, a, hub, fx);
                }
                None => {}
            },
            Event::Reply { id, msg } => self.replied(id, Ok(&msg.payload), hub, fx),
            Event::RequestFailed { id, why } => self.replied(id, Err(why), hub, fx),
            Event::ServerError(t) => warn!("fleet: server error: {t}"),
            Event::RoundTrip(d) => self.rtt = Some(d),
        }
    }

    fn replied(&mut self, id: u64, r: Result<&[u8], String>, hub: &mut Hub, fx: &mut Effects) {
        let Some(p) = self.requests.remove(&id) else { return };
        let now = Instant::now();
        match p {
            Pending::Watch(w, step) => {
                let a = match w {
                    Which::Config => self.config_w.replied(step, r, now),
                    Which::Status => self.status_w.replied(step, r, now),
                };
                self.watch(w, a, hub, fx);
            }
            Pending::Put { client, tag, target, values, changed, wait } => {
                let mut resync = false;
                let reply = match r {
                    Err(why) => Err(unreachable(&why)),
                    Ok(body) => match kv::pub_ack(body) {
                        Ok(ack) => Ok(ack.seq),
                        Err(e) if e.err_code == kv::err::WRONG_LAST_SEQUENCE => {
                            // This host's view may be stale (a re-created
                            // bucket): watch again from the stream's state.
                            resync = true;
                            Err(bad(format!(
                                "the fleet document of {target} changed meanwhile ({}); nothing \
                             written: run the command again",
                                e.description
                            )))
                        }
                        Err(e) if e.err_code == kv::err::STREAM_NOT_FOUND || e.code == 503 => {
                            Err(bad(format!(
                                "bucket {} does not exist: run weaver fleet init",
                                self.cfg.bucket
                            )))
                        }
                        Err(e) => Err(bad(format!("the fleet refused the write: {e}"))),
                    },
                };
                if resync && self.client.is_ready() {
                    let a = self.config_w.start(now);
                    self.watch(Which::Config, a, hub, fx);
                }
                match reply {
                    Err(e) => fx.push(Effect::Reply {
                        client,
                        tag,
                        resp: Response::Error(e),
                        payload: Vec::new(),
                    }),
                    Ok(seq) => {
                        info!("fleet: {target} is fleet revision {seq}: {}", changed.join(", "));
                        let doc = ConfigDoc {
                            target: target.clone(),
                            revision: seq,
                            values: serde_json::to_string(&values).unwrap_or_default(),
                            changed,
                            time_ms: Some(wall_ms()),
                            note: "fleet".into(),
                        };
                        fx.push(Effect::Reply {
                            client,
                            tag,
                            resp: Response::Config(doc),
                            payload: Vec::new(),
                        });
                        if let Some(ms) = wait {
                            let t = if ms == 0 {
                                super::handlers::config::DEFAULT_WAIT
                            } else {
                                Duration::from_millis(ms)
                            };
                            let wid = self.next_wait;
                            self.next_wait += 1;
                            self.waits
                                .insert(wid, FleetWait { client, tag, target, revision: seq });
                            fx.push(Effect::Arm { at: now + t, timer: Timer::FleetWait(wid) });
                            // The status bucket is watched while someone
                            // waits on it (every ack of every host would
                            // otherwise reach every host all the time).
                            if !self.status_w.is_live() && !self.status_w.is_starting() {
                                let a = self.status_w.start(now);
                                self.watch(Which::Status, a, hub, fx);
                            }
                            self.check_waits(fx);
                        }
                    }
                }
            }
        }
    }

    /// Carry out a watcher's actions; waiters are checked once all of a
    /// batch is applied (a batch may carry entries and then `Synced`).
    fn watch(&mut self, w: Which, acts: Vec<Watch>, hub: &mut Hub, fx: &mut Effects) {
        let any = !acts.is_empty();
        self.watch_batch(w, acts, hub, fx);
        if w == Which::Status && any {
            self.check_waits(fx);
        }
    }

    fn watch_batch(&mut self, w: Which, acts: Vec<Watch>, hub: &mut Hub, fx: &mut Effects) {
        let mut todo = acts;
        while !todo.is_empty() {
            let mut next = Vec::new();
            for a in todo {
                match a {
                    Watch::Request { step, subject, body } => {
                        match self.client.request(
                            &subject,
                            None,
                            &body,
                            API_TIMEOUT,
                            Instant::now(),
                        ) {
                            Ok(id) => {
                                self.requests.insert(id, Pending::Watch(w, step));
                            }
                            Err(e) => {
                                let why = e.to_string();
                                next.extend(match w {
                                    Which::Config => {
                                        self.config_w.replied(step, Err(why), Instant::now())
                                    }
                                    Which::Status => {
                                        self.status_w.replied(step, Err(why), Instant::now())
                                    }
                                });
                            }
                        }
                    }
                    Watch::Subscribe { subject } => {
                        self.sids.retain(|_, x| *x != w);
                        let sid = self.client.subscribe(&subject);
                        self.sids.insert(sid, w);
                    }
                    Watch::Reply { subject } => {
                        let _ = self.client.publish(&subject, None, None, b"");
                    }
                    Watch::Entry(e) => match w {
                        Which::Config => self.config_entry(e, hub),
                        Which::Status => self.status_entry(e),
                    },
                    Watch::Synced { revision } => {
                        if w == Which::Config {
                            info!("fleet: synced at revision {revision}");
                            self.cache.created = self.config_w.created().map(str::to_string);
                            self.save();
                            self.unpark(fx);
                        } else {
                            self.check_waits(fx);
                        }
                    }
                    Watch::Reset { why } => match w {
                        Which::Config => {
                            warn!("fleet: {why}: resynchronising from scratch");
                            let targets: Vec<String> = self.cache.targets.keys().cloned().collect();
                            self.cache.reset();
                            for t in targets {
                                self.recompute(hub, &t, "fleet reset");
                            }
                            self.save();
                        }
                        Which::Status => self.statuses.clear(),
                    },
                    Watch::Trouble(t) => warn!(
                        "fleet: {} watch: {t}",
                        if w == Which::Config { "config" } else { "status" }
                    ),
                }
            }
            todo = next;
        }
    }

    /// The cache is written after the turn's writes (`after_flush`).
    fn save(&mut self) {
        self.cache_dirty = true;
    }

    /// After the turn's writes went out: the cache and the hub's fleet
    /// revisions go to disk off the delivery path, at most every
    /// [`SAVE_EVERY`] (a burst of revisions is one write).
    pub fn after_flush(&mut self, hub: &mut Hub, fx: &mut Effects) {
        if !self.cache_dirty && !hub.store.has_pending() {
            return;
        }
        let now = Instant::now();
        match self.save_due {
            Some(t) if t <= now => self.save_all(hub),
            Some(_) => {}
            None => {
                self.save_due = Some(now + SAVE_EVERY);
                self.arm(now, fx);
            }
        }
    }

    /// The daemon stops: this host's weavelets' entries say so (not
    /// connected, state "stopped"), so waiters elsewhere neither wait for
    /// them nor take them for a vanished host's. One non-blocking write,
    /// best effort: a stop while NATS is away leaves them to turn stale.
    pub fn goodbye(&mut self, hub: &mut Hub, fx: &mut Effects) {
        if !self.client.is_ready() {
            return;
        }
        let locals: Vec<Local> = self.locals.values().cloned().collect();
        for l in locals {
            self.queue_status(&l, false, "stopped", None);
        }
        self.flush_outbox();
        self.write(hub, fx);
    }

    /// Write what waits to be written (also when the daemon stops).
    pub fn save_all(&mut self, hub: &mut Hub) {
        self.save_due = None;
        if std::mem::take(&mut self.cache_dirty) {
            self.save_with(false);
        }
        for e in hub.store.save_pending() {
            warn!("fleet: {e}");
        }
    }

    fn save_with(&mut self, durable: bool) {
        if let Err(e) = self.cache.save(&self.state_dir, wall_ms(), durable) {
            warn!("fleet: cannot save the cache in {}: {e}", self.state_dir.display());
        }
    }

    fn config_entry(&mut self, e: kv::Entry, hub: &mut Hub) {
        debug!("fleet: {} is at fleet revision {}", e.key, e.revision);
        let values = match e.value {
            None => None,
            Some(bytes) => match serde_json::from_slice::<Doc>(&bytes) {
                Ok(d) => Some(d),
                Err(err) => {
                    warn!(
                        "fleet: revision {} of {} is not a JSON object ({err}); ignored",
                        e.revision, e.key
                    );
                    self.cache.revision = self.cache.revision.max(e.revision);
                    return;
                }
            },
        };
        if let Err(why) = doc::check_target(&e.key) {
            warn!("fleet: key {:?} is not a target name ({why}); ignored", e.key);
            return;
        }
        self.cache.apply(&e.key, e.revision, values);
        self.recompute(hub, &e.key, &format!("fleet revision {}", e.revision));
        if self.config_w.synced {
            self.save();
        }
    }

    /// Commit `target`'s effective document to the hub if it changed.
    fn recompute(&mut self, hub: &mut Hub, target: &str, note: &str) {
        let defaults = hub.store.at(target, 0).cloned().unwrap_or_default();
        let fleet = self.cache.targets.get(target);
        let (doc, _) =
            effective(&defaults, fleet.map(|f| &f.values), self.cache.overlay.get(target));
        let fleet_rev = fleet.map_or(0, |f| f.revision);
        if hub.store.current(target).is_some_and(|(_, cur)| *cur == doc) {
            // Same values: the current local revision now also stands for
            // this fleet revision.
            if let Some((rev, _)) = hub.store.current(target) {
                self.remember(target, rev, fleet_rev);
                // Weavelets that applied these values have applied this
                // fleet revision too: say so.
                let caught_up: Vec<Local> = self
                    .locals
                    .values_mut()
                    .filter(|l| l.target == target && l.local_revision >= rev)
                    .map(|l| {
                        l.fleet_revision = fleet_rev;
                        l.clone()
                    })
                    .collect();
                for l in caught_up {
                    self.queue_status(&l, true, "applied", None);
                }
            }
            return;
        }
        // Fleet revisions live in the bucket: no fsync on the way to the
        // weavelets. The host's own overlay changes are made durable.
        let durable = note == "local";
        match hub.commit_with(target, doc, note.to_string(), durable) {
            Ok(d) => {
                self.remember(target, d.revision, fleet_rev);
                hub.announce(&d);
            }
            Err(e) => warn!("fleet: {target}: cannot apply {note}: {e}"),
        }
    }

    fn remember(&mut self, target: &str, local: u64, fleet: u64) {
        let v = self.revs.entry(target.to_string()).or_default();
        v.retain(|&(l, _)| l != local);
        v.push((local, fleet));
        if v.len() > REVS_KEPT {
            v.remove(0);
        }
    }

    /// The fleet revision a local revision carries.
    fn fleet_rev(&self, target: &str, local: u64) -> u64 {
        self.revs
            .get(target)
            .and_then(|v| v.iter().rev().find(|(l, _)| *l <= local))
            .map_or(0, |&(_, f)| f)
    }

    // ---- status bucket --------------------------------------------------------

    fn status_entry(&mut self, e: kv::Entry) {
        debug!("fleet: status {} at {}", e.key, e.revision);
        match e.value.as_deref().map(serde_json::from_slice::<Value>) {
            Some(Ok(v)) => {
                let s = Status {
                    target: v["target"].as_str().unwrap_or_default().to_string(),
                    connected: v["connected"].as_bool().unwrap_or(false),
                    fleet_revision: v["fleet_revision"].as_u64().unwrap_or(0),
                    state: v["state"].as_str().unwrap_or_default().to_string(),
                    reason: v["reason"].as_str().map(str::to_string),
                    epoch: v["epoch"].as_str().map(str::to_string),
                    time_ms: v["time_ms"].as_u64(),
                    every_ms: v["every_ms"].as_u64(),
                };
                if self.statuses.len() >= MAX_STATUSES && !self.statuses.contains_key(&e.key) {
                    warn!("fleet: over {MAX_STATUSES} status entries; {} ignored", e.key);
                } else {
                    self.statuses.insert(e.key, s);
                }
            }
            _ => {
                self.statuses.remove(&e.key);
            }
        }
    }

    /// The hub's news about this host's weavelets.
    pub fn notes(&mut self, notes: Vec<Note>) {
        for n in notes {
            let key = format!("{}.{}", self.cfg.node, status_key(n.instance.as_deref(), n.id));
            match n.event {
                "connected" => {
                    let l = Local { key, target: n.target, fleet_revision: 0, local_revision: 0 };
                    self.queue_status(&l, true, "connected", None);
                    self.locals.insert(n.id, l);
                }
                "applied" | "rejected" => {
                    let Some(l) = self.locals.get(&n.id).cloned() else { continue };
                    let rev = n.revision.unwrap_or(0);
                    let f = self.fleet_rev(&l.target, rev);
                    let l = if n.event == "applied" {
                        Local { fleet_revision: f, local_revision: rev, ..l }
                    } else {
                        l
                    };
                    self.locals.insert(n.id, l.clone());
                    let mut shown = l.clone();
                    shown.fleet_revision = f;
                    self.queue_status(&shown, true, n.event, n.reason);
                }
                "disconnected" => {
                    if let Some(l) = self.locals.remove(&n.id) {
                        self.queue_status(&l, false, "disconnected", None);
                    }
                }
                _ => {}
            }
        }
    }

    fn queue_status(&mut self, l: &Local, connected: bool, state: &str, reason: Option<String>) {
        let v = json!({
            "node": self.cfg.node, "target": l.target, "connected": connected,
            "fleet_revision": l.fleet_revision, "state": state, "reason": reason,
            "epoch": self.config_w.created(), "time_ms": wall_ms(),
            "every_ms": self.cfg.status_every.as_millis() as u64,
        });
        self.outbox.insert(l.key.clone(), v.to_string().into_bytes());
        if connected {
            self.shown.insert(l.key.clone(), v);
        } else {
            self.shown.remove(&l.key);
        }
    }

    /// Every `status_every`, this host's connected weavelets' entries are
    /// published again with the time: a waiter on another host tells a
    /// live entry from one a vanished host left behind.
    fn beat(&mut self, now: Instant) {
        if !self.client.is_ready() {
            self.beat_due = None;
            return;
        }
        match self.beat_due {
            Some(t) if t > now => return,
            Some(_) => {
                let ms = wall_ms();
                for (key, v) in self.shown.iter_mut() {
                    if !self.outbox.contains_key(key) {
                        v["time_ms"] = json!(ms);
                        self.outbox.insert(key.clone(), v.to_string().into_bytes());
                    }
                }
            }
            None => {}
        }
        self.beat_due = Some(now + self.cfg.status_every);
    }

    fn flush_outbox(&mut self) {
        let b = self.cfg.status_bucket();
        while let Some((key, value)) = self.outbox.pop_first() {
            if self.unsent.len() > MAX_UNSENT {
                self.outbox.insert(key, value);
                return;
            }
            let Ok(subject) = b.key_subject(&key) else { continue };
            debug!("fleet: publishing status {key}");
            match self.client.publish(&subject, None, None, &value) {
                Ok(()) => {}
                Err(SendError::NotConnected) => {
                    self.outbox.insert(key, value);
                    return;
                }
                Err(SendError::Invalid(e)) => warn!("fleet: status {key}: {e}"),
            }
        }
    }

    fn check_waits(&mut self, fx: &mut Effects) {
        let done: Vec<u64> =
            self.waits.iter().filter(|(_, w)| self.wait_state(w).0).map(|(&id, _)| id).collect();
        for id in done {
            self.finish_wait(id, false, fx);
        }
    }

    /// (finished, report) of a waiter now.
    fn wait_state(&self, w: &FleetWait) -> (bool, WaitReport) {
        let mut r = WaitReport {
            target: w.target.clone(),
            revision: w.revision,
            applied: Vec::new(),
            rejected: Vec::new(),
            lagging: Vec::new(),
            disconnected: Vec::new(),
            timed_out: false,
        };
        let now_ms = wall_ms();
        for (key, s) in &self.statuses {
            if s.target != w.target {
                continue;
            }
            if !s.connected {
                continue;
            }
            let current = s.epoch.as_deref() == self.config_w.created();
            let silence = s.silence(now_ms);
            if current && s.fleet_revision >= w.revision && s.state == "rejected" {
                r.rejected.push((key.clone(), s.reason.clone().unwrap_or_default()));
            } else if current && s.fleet_revision >= w.revision && s.state == "applied" {
                r.applied.push(key.clone());
            } else if let Some((age, true)) = silence {
                // Left behind by a host that is gone or cut off: reported,
                // not waited for.
                r.disconnected.push(format!(
                    "{key} (stale: its host last reported {} ago, every {} expected)",
                    secs(age),
                    secs(s.every_ms.unwrap_or(0))
                ));
            } else if let Some((age, false)) = silence {
                r.lagging.push(format!("{key} (its host last reported {} ago)", secs(age)));
            } else {
                r.lagging.push(key.clone());
            }
        }
        let known = self.status_w.synced;
        (known && (r.lagging.is_empty() || !r.rejected.is_empty()), r)
    }

    fn finish_wait(&mut self, id: u64, timed_out: bool, fx: &mut Effects) {
        let Some(w) = self.waits.remove(&id) else { return };
        fx.push(Effect::Cancel(Timer::FleetWait(id)));
        let (_, mut r) = self.wait_state(&w);
        r.timed_out = timed_out && r.rejected.is_empty() && !r.lagging.is_empty();
        if !r.timed_out && r.rejected.is_empty() {
            r.lagging.clear();
        }
        fx.push(Effect::Reply {
            client: w.client,
            tag: w.tag,
            resp: Response::ConfigWaited(r),
            payload: Vec::new(),
        });
        self.status_idle();
    }

    /// Nobody waits: stop watching the status bucket (its consumer goes
    /// after its inactivity threshold); the next waiter starts from a
    /// fresh snapshot.
    fn status_idle(&mut self) {
        if !self.waits.is_empty() {
            return;
        }
        self.status_w.stopped();
        self.status_w.resume_from(0, None);
        let sids: Vec<u64> =
            self.sids.iter().filter(|(_, w)| **w == Which::Status).map(|(s, _)| *s).collect();
        for sid in sids {
            self.sids.remove(&sid);
            self.client.unsubscribe(sid);
        }
        self.requests.retain(|_, p| !matches!(p, Pending::Watch(Which::Status, _)));
        self.statuses.clear();
    }

    pub fn wait_overdue(&mut self, id: u64, fx: &mut Effects) {
        self.finish_wait(id, true, fx);
    }

    pub fn forget_client(&mut self, client: u64, fx: &mut Effects) {
        let gone: Vec<u64> =
            self.waits.iter().filter(|(_, w)| w.client == client).map(|(&id, _)| id).collect();
        for id in gone {
            self.waits.remove(&id);
            fx.push(Effect::Cancel(Timer::FleetWait(id)));
        }
        self.parked.retain(|p| p.client != client);
        self.status_idle();
    }

    // ---- requests -------------------------------------------------------------

    /// `config set --fleet`: a compare-and-set put of the new document over
    /// the one this host knows; the reply comes with the PubAck.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &mut self,
        client: u64,
        tag: u64,
        target: &str,
        set: &[(String, String)],
        unset: &[String],
        wait: Option<u64>,
    ) -> Result<(), ErrorReply> {
        doc::check_target(target).map_err(bad)?;
        kv::check_key(target).map_err(bad)?;
        if !self.client.is_ready() {
            let why = self.client.last_error().unwrap_or("not connected yet").to_string();
            return Err(unreachable(&why));
        }
        if !self.config_w.synced {
            // The watch is (re)starting, as right after a compare-and-set
            // conflict: wait for the sync (bounded) rather than fail a
            // retry that comes at once.
            if self.parked.len() >= MAX_PARKED {
                return Err(unreachable(
                    "connected, but the fleet configuration is not synced yet and too many \
                     changes wait for it: retry in a moment (weaver fleet status says when it \
                     is synced)",
                ));
            }
            debug!("fleet: {target}: waiting for the sync before writing");
            self.parked.push(Parked {
                client,
                tag,
                target: target.to_string(),
                set: set.to_vec(),
                unset: unset.to_vec(),
                wait,
                until: Instant::now() + RESYNC_WAIT,
            });
            return Ok(());
        }
        let cur = self.cache.targets.get(target);
        let expected = cur.map_or(0, |c| c.revision);
        let old: Doc = cur.map(|c| c.values.clone()).unwrap_or_default();
        let values = apply_changes(&old, set, unset, target)?;
        let changed = doc::changed_keys(&old, &values);
        let body = serde_json::to_vec(&values).map_err(|e| bad(e.to_string()))?;
        let msg_id = format!("{}-{:x}-{}", self.cfg.node, self.rng.next_u64(), self.next_msg);
        self.next_msg += 1;
        let b = self.cfg.config_bucket();
        let (subject, h) = b.put(target, Some(expected), &msg_id).map_err(bad)?;
        match self.client.request(&subject, Some(&h), &body, API_TIMEOUT, Instant::now()) {
            Ok(id) => {
                self.requests.insert(
                    id,
                    Pending::Put { client, tag, target: target.to_string(), values, changed, wait },
                );
                Ok(())
            }
            Err(SendError::NotConnected) => Err(unreachable("not connected")),
            Err(SendError::Invalid(e)) => Err(bad(e)),
        }
    }

    /// The config watch is synced: the puts that waited for it are made.
    fn unpark(&mut self, fx: &mut Effects) {
        for p in std::mem::take(&mut self.parked) {
            if let Err(e) = self.put(p.client, p.tag, &p.target, &p.set, &p.unset, p.wait) {
                fx.push(Effect::Reply {
                    client: p.client,
                    tag: p.tag,
                    resp: Response::Error(e),
                    payload: Vec::new(),
                });
            }
        }
    }

    /// Puts that waited [`RESYNC_WAIT`] for the sync in vain fail, saying
    /// nothing was written and to retry.
    fn parked_overdue(&mut self, now: Instant, fx: &mut Effects) {
        if self.parked.iter().all(|p| p.until > now) {
            return;
        }
        let (over, keep): (Vec<Parked>, Vec<Parked>) =
            std::mem::take(&mut self.parked).into_iter().partition(|p| p.until <= now);
        self.parked = keep;
        for p in over {
            let e = unreachable(&format!(
                "connected, but the fleet configuration was not synced within {} s: retry in \
                 a moment (weaver fleet status says when it is synced)",
                RESYNC_WAIT.as_secs()
            ));
            fx.push(Effect::Reply {
                client: p.client,
                tag: p.tag,
                resp: Response::Error(e),
                payload: Vec::new(),
            });
        }
    }

    /// `config set --local`: the host's overlay, saved, then the hub.
    pub fn set_local(
        &mut self,
        hub: &mut Hub,
        target: &str,
        set: &[(String, String)],
        unset: &[String],
    ) -> Result<ConfigDoc, ErrorReply> {
        doc::check_target(target).map_err(bad)?;
        let old = self.cache.overlay.get(target).cloned().unwrap_or_default();
        let values = apply_changes(&old, set, unset, target)?;
        if values.is_empty() {
            self.cache.overlay.remove(target);
        } else {
            self.cache.overlay.insert(target.to_string(), values);
        }
        self.save_with(true);
        let before = hub.store.current(target).map(|c| c.0);
        self.recompute(hub, target, "local");
        let (rev, values) =
            hub.store.current(target).ok_or_else(|| bad(format!("unknown target {target}")))?;
        let doc = hub
            .store
            .history(target)
            .last()
            .filter(|r| Some(r.revision) != before)
            .map(|r| crate::daemon::weavelets::config_doc(target, r))
            .unwrap_or_else(|| ConfigDoc {
                target: target.to_string(),
                revision: rev,
                values: serde_json::to_string(values).unwrap_or_default(),
                changed: Vec::new(),
                time_ms: Some(wall_ms()),
                note: "local (no change)".into(),
            });
        Ok(doc)
    }

    /// `config get --show-origin`.
    pub fn origin(&self, hub: &Hub, target: &str) -> Option<(u64, OriginKeys)> {
        let (rev, _) = hub.store.current(target)?;
        let defaults = hub.store.at(target, 0).cloned().unwrap_or_default();
        let fleet = self.cache.targets.get(target).map(|f| &f.values);
        let (doc, origin) = effective(&defaults, fleet, self.cache.overlay.get(target));
        let keys = doc
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string(), origin[k].name().to_string()))
            .collect();
        Some((rev, keys))
    }

    pub fn report(&self) -> FleetReport {
        FleetReport {
            configured: true,
            node: self.cfg.node.clone(),
            servers: self.cfg.server_list(),
            server: self.server.clone(),
            connected: self.client.is_ready(),
            since_ms: self.since_ms,
            rtt_us: self.rtt.map(|d| d.as_micros() as u64),
            synced: self.config_w.synced && self.client.is_ready(),
            revision: self.cache.revision.max(self.config_w.revision),
            cache_saved_ms: self.cache.saved_ms,
            bucket: self.cfg.bucket.clone(),
            status_bucket: self.cfg.status_bucket.clone(),
            last_error: self.client.last_error().map(str::to_string),
            watch_restarts: self.config_w.restarts,
        }
    }
}

/// A status key's instance part: the instance name, or `w<id>` for a
/// weavelet weaver does not supervise; only key-safe characters.
fn status_key(instance: Option<&str>, id: u64) -> String {
    match instance {
        Some(i) => i
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect(),
        None => format!("w{id}"),
    }
}

fn apply_changes(
    old: &Doc,
    set: &[(String, String)],
    unset: &[String],
    target: &str,
) -> Result<Doc, ErrorReply> {
    if set.is_empty() && unset.is_empty() {
        return Err(bad("nothing to change: give KEY=VALUE or keys to unset".into()));
    }
    let mut values = old.clone();
    for k in unset {
        doc::check_param(k).map_err(bad)?;
        if values.remove(k).is_none() {
            return Err(ErrorReply {
                kind: ErrorKind::NotFound,
                message: format!("{target} has no parameter {k:?} in this layer"),
            });
        }
    }
    for (k, v) in set {
        doc::check_param(k).map_err(bad)?;
        let v = serde_json::from_str(v).map_err(|e| bad(format!("{k}: not JSON: {e}")))?;
        values.insert(k.clone(), v);
    }
    doc::check_doc(&values).map_err(bad)?;
    Ok(values)
}
