//! The weavelet hub, a room: every connection on `weavelet.sock`, which
//! instance or name it is bound to, what it was sent and acknowledged, the
//! revision store, `config set --wait` waiters and `config watch`
//! subscribers. Documents, the line codec and the per-connection delivery
//! state are pure (`crate::weavelet`); this does their I/O through effects.
//!
//! A connection is bound to the supervised instance it came from by its
//! peer pid (SO_PEERCRED): the instance's main pid, a descendant of it
//! (ppid chain in /proc/PID/stat), or a process that carries
//! `WEAVER_PROCESS`/`WEAVER_INSTANCE` in /proc/PID/environ.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UnixStream;

use crate::daemon::conn::{self, Conn, Drained, Flushed};
use crate::daemon::effect::{Effect, Effects, Timer};
use crate::daemon::follow::FOLLOW_BACKLOG;
use crate::daemon::procs::wall_ms;
use crate::daemon::token;
use crate::protocol::{ConfigDoc, ConfigEvent, Response, WaitReport, WeaveletRow};
use crate::supervise::Supervisor;
use crate::weavelet::codec::{self, In, LineDecoder};
use crate::weavelet::delivery::Delivery;
use crate::weavelet::store::{Revision, Store};
use crate::weavelet::{Doc, MAX_LINE, PROTOCOL};

/// The first line must be a `hello` this soon.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// Disconnected weavelets remembered for `config status`.
pub const GONE_KEPT: usize = 256;
/// Events queued per `config watch` client that is behind; older ones are
/// dropped (and counted) past it.
pub const WATCH_QUEUE: usize = 4096;
/// Bytes of unfinished lines held for all weavelets together; the
/// connection that would push past it gets an error.
pub const MAX_PARTIAL_TOTAL: usize = 64 << 20;
/// After an error, how long weaver waits for the weavelet to close.
pub const LINGER: Duration = Duration::from_secs(1);
/// Longest ppid chain followed to find an instance's descendant.
const MAX_ANCESTRY: usize = 64;

/// What a `hello` bound a connection to.
#[derive(Debug, Clone)]
struct Bound {
    target: String,
    instance: Option<String>,
    name: Option<String>,
}

#[derive(Debug)]
struct Weavelet {
    conn: Conn<LineDecoder>,
    pid: u32,
    bound: Option<Bound>,
    d: Delivery,
    /// Lines taken so far (for errors: "line 3").
    lines: u64,
    /// Bytes of an unfinished line counted in [`Hub::partial`].
    partial: usize,
    /// An `error` was queued: read nothing more, close once flushed.
    closing: bool,
    /// The error is written and our side shut down: waiting for the peer
    /// to close (or [`LINGER`]), so that closing with its unread bytes
    /// cannot reset the connection before it read the error.
    shut: bool,
}

/// A `config set --wait`.
#[derive(Debug)]
struct Waiter {
    client: u64,
    tag: u64,
    target: String,
    revision: u64,
    /// Connections still to answer.
    pending: BTreeSet<u64>,
    applied: Vec<String>,
    disconnected: Vec<String>,
}

#[derive(Debug)]
struct Watcher {
    client: u64,
    tag: u64,
    targets: Vec<String>,
    /// Events not sent yet (at most [`WATCH_QUEUE`]).
    queue: VecDeque<ConfigEvent>,
    /// Events dropped from a full queue since the last send.
    lost: u64,
}

/// News about a weavelet, for the fleet link (kept only while `noting`).
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub id: u64,
    pub target: String,
    pub instance: Option<String>,
    /// `connected`, `applied`, `rejected` or `disconnected`.
    pub event: &'static str,
    pub revision: Option<u64>,
    pub reason: Option<String>,
}

#[derive(Debug)]
pub struct Hub {
    pub store: Store,
    /// Notes since the loop last took them (the fleet link reads them
    /// every turn; nothing is kept when `noting` is off).
    pub notes: Vec<Note>,
    pub noting: bool,
    conns: HashMap<u64, Weavelet>,
    /// Never reused.
    next_id: u64,
    /// Rows of weavelets that left, newest last.
    gone: VecDeque<WeaveletRow>,
    waiters: HashMap<u64, Waiter>,
    next_waiter: u64,
    watchers: Vec<Watcher>,
    /// Connections with output to flush this turn.
    dirty: Vec<u64>,
    /// Bytes of unfinished lines held for all connections.
    partial: usize,
}

/// `weavelet #id`, with the instance or name it gave and its pid.
fn who(id: u64, pid: u32, b: Option<&Bound>) -> String {
    let label = b.and_then(|b| b.instance.clone().or_else(|| b.name.clone()));
    match label {
        Some(l) => format!("{l} (weavelet {id}, pid {pid})"),
        None => format!("weavelet {id} (pid {pid})"),
    }
}

/// A revision as the protocol shows it.
pub fn config_doc(target: &str, r: &Revision) -> ConfigDoc {
    ConfigDoc {
        target: target.to_string(),
        revision: r.revision,
        values: serde_json::to_string(&r.values).unwrap_or_default(),
        changed: r.changed.clone(),
        time_ms: Some(r.time_ms),
        note: r.note.clone(),
    }
}

impl Hub {
    pub fn new(store: Store) -> Hub {
        Hub {
            store,
            notes: Vec::new(),
            noting: false,
            conns: HashMap::new(),
            next_id: 1,
            gone: VecDeque::new(),
            waiters: HashMap::new(),
            next_waiter: 1,
            watchers: Vec::new(),
            dirty: Vec::new(),
            partial: 0,
        }
    }

    /// Declare every process of the configuration as a target with its
    /// `[process.params]` as defaults; weavelets whose document changed
    /// with it (a target still at revision 0) are sent the new one.
    pub fn declare(&mut self, sup: &Supervisor) {
        self.store.undeclare_all();
        for p in &sup.config().processes {
            self.store.declare(&p.name, p.params.clone());
        }
        for (&id, w) in &mut self.conns {
            let Some(b) = w.bound.as_ref().filter(|_| !w.closing) else { continue };
            let Some((rev, values)) = self.store.current(&b.target) else { continue };
            if let Some(l) = w.d.offer(&b.target, rev, values, w.conn.out.is_empty()) {
                w.conn.out.push(l);
                self.dirty.push(id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A new connection: only our own uid, and it must say `hello` in time.
    pub fn accept(&mut self, stream: UnixStream, now: Instant, fx: &mut Effects) {
        let cred = match conn::peer(&stream) {
            Ok(c) => c,
            Err(why) => {
                warn!("refused a weavelet connection: {why}; only this user may use this daemon");
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let (conn, watch) = Conn::new(stream, LineDecoder::new(), token::weavelet(id));
        fx.push(watch);
        fx.push(Effect::Arm { at: now + HELLO_DEADLINE, timer: Timer::WeaveletHello(id) });
        let pid = cred.pid().max(0) as u32;
        debug!("weavelet {id} connected (pid {pid})");
        let w = Weavelet {
            conn,
            pid,
            bound: None,
            d: Delivery::new(),
            lines: 0,
            partial: 0,
            closing: false,
            shut: false,
        };
        self.conns.insert(id, w);
    }

    /// Read what `id` sent and act on each line.
    pub fn read(
        &mut self,
        id: u64,
        scratch: &mut [u8],
        closed: bool,
        sup: &Supervisor,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Some(w) = self.conns.get_mut(&id) else { return };
        if w.closing {
            // Whatever it sends after its error is dropped.
            let mut sink = Vec::new();
            let r = w.conn.read(scratch, &mut sink, closed);
            w.conn.dec = LineDecoder::new();
            if matches!(r, Drained::Eof | Drained::Failed(_)) {
                self.remove(id, "disconnected", fx);
            }
            return;
        }
        let mut lines = Vec::new();
        let r = w.conn.read(scratch, &mut lines, closed);
        for l in lines {
            if self.conns.get(&id).map_or(true, |w| w.closing) {
                break;
            }
            self.line(id, &l, sup, now, fx);
        }
        self.count_partial(id);
        match r {
            Drained::WouldBlock => {}
            Drained::Eof | Drained::Failed(_) => self.remove(id, "disconnected", fx),
            Drained::Bad(_) => {
                let n = self.conns.get(&id).map_or(0, |w| w.lines) + 1;
                self.fail(id, &format!("line {n}: over {} bytes without a newline", MAX_LINE))
            }
        }
    }

    /// Account `id`'s unfinished line; past [`MAX_PARTIAL_TOTAL`] for
    /// everyone together, the connection that holds it gets an error.
    fn count_partial(&mut self, id: u64) {
        let Some(w) = self.conns.get_mut(&id) else { return };
        let held = w.conn.dec.buffered();
        self.partial = self.partial - w.partial + held;
        w.partial = held;
        if held > 0 && self.partial > MAX_PARTIAL_TOTAL {
            let total = self.partial;
            self.fail(
                id,
                &format!(
                    "weaver holds {total} bytes of unfinished lines from its weavelets, over its \
                     {MAX_PARTIAL_TOTAL}-byte limit"
                ),
            );
        }
    }

    fn line(&mut self, id: u64, line: &[u8], sup: &Supervisor, now: Instant, fx: &mut Effects) {
        let Some(w) = self.conns.get_mut(&id) else { return };
        w.lines += 1;
        let n = w.lines;
        let msg = match codec::parse(line) {
            Ok(m) => m,
            Err(e) => return self.fail(id, &format!("line {n}: {e}")),
        };
        match (msg, w.bound.is_some()) {
            (In::Hello { protocol, target, name }, false) => {
                self.hello(id, protocol, target, name, sup, fx)
            }
            (In::Hello { .. }, true) => self.fail(id, &format!("line {n}: a second hello")),
            (_, false) => self.fail(id, &format!("line {n}: the first line must be a hello")),
            (In::Applied { revision, step }, true) => match w.d.applied(revision, step) {
                Ok(()) => self.acked(id, revision, step, None, fx),
                Err(e) => self.fail(id, &format!("line {n}: applied: {e}")),
            },
            (In::Rejected { revision, step, reason }, true) => {
                match w.d.rejected(revision, step, reason.clone()) {
                    Ok(()) => self.acked(id, revision, step, Some(reason), fx),
                    Err(e) => self.fail(id, &format!("line {n}: rejected: {e}")),
                }
            }
            (In::Status { step, metrics }, true) => {
                w.d.status(step, metrics, now);
            }
        }
    }

    fn hello(
        &mut self,
        id: u64,
        protocol: u64,
        target: Option<String>,
        name: Option<String>,
        sup: &Supervisor,
        fx: &mut Effects,
    ) {
        if protocol != PROTOCOL {
            return self.fail(
                id,
                &format!(
                    "hello: this weaver speaks weavelet protocol {PROTOCOL} only, not {protocol}"
                ),
            );
        }
        let pid = self.conns[&id].pid;
        let instance = instance_of(sup, pid);
        let target = match (target, &instance) {
            (Some(t), Some((inst, process))) if t != *process => {
                return self.fail(
                    id,
                    &format!(
                        "hello: target {t:?} disagrees with the process it runs in: \
                         {inst} of {process:?}"
                    ),
                )
            }
            (Some(t), _) => t,
            (None, Some((_, process))) => process.clone(),
            (None, None) => {
                return self.fail(
                    id,
                    &format!(
                        "hello: member \"target\" is required: weaver does not supervise pid {pid}"
                    ),
                )
            }
        };
        if !self.store.known(&target) {
            return self.fail(
                id,
                &format!(
                    "hello: unknown target {target:?}: no [[process]] of that name and no \
                     `weaver config set {target} ...` made it"
                ),
            );
        }
        fx.push(Effect::Cancel(Timer::WeaveletHello(id)));
        let bound = Bound { target: target.clone(), instance: instance.map(|i| i.0), name };
        let w = self.conns.get_mut(&id).expect("checked by the caller");
        let (rev, doc) = self.store.current(&target).expect("known above");
        w.conn.out.push(codec::welcome(&target, bound.instance.as_deref(), id));
        if let Some(l) = w.d.offer(&target, rev, doc, true) {
            w.conn.out.push(l);
        }
        let label = who(id, w.pid, Some(&bound));
        info!("weavelet {label} of {target:?} said hello");
        w.bound = Some(bound.clone());
        self.dirty.push(id);
        self.note(id, &bound, "connected", None, None);
        self.publish(&target, "connected", None, Some(label), None, None);
    }

    fn acked(
        &mut self,
        id: u64,
        revision: u64,
        step: Option<u64>,
        reason: Option<String>,
        fx: &mut Effects,
    ) {
        let w = &self.conns[&id];
        let b = w.bound.clone().expect("acks come after hello");
        let label = who(id, w.pid, Some(&b));
        let event = if reason.is_some() { "rejected" } else { "applied" };
        self.note(id, &b, event, Some(revision), reason.clone());
        self.publish(&b.target, event, Some(revision), Some(label.clone()), step, reason.clone());
        let mut done = Vec::new();
        for (&wid, wt) in &mut self.waiters {
            if wt.target != b.target || !wt.pending.contains(&id) {
                continue;
            }
            match &reason {
                None if revision >= wt.revision => {
                    wt.pending.remove(&id);
                    wt.applied.push(label.clone());
                    if wt.pending.is_empty() {
                        done.push((wid, None));
                    }
                }
                Some(why) if revision >= wt.revision => {
                    done.push((wid, Some((label.clone(), why.clone()))));
                }
                _ => {}
            }
        }
        for (wid, rejected) in done {
            self.finish_wait(wid, rejected, false, fx);
        }
    }

    /// Answer waiter `wid`: all applied, one rejected, or timed out.
    fn finish_wait(
        &mut self,
        wid: u64,
        rejected: Option<(String, String)>,
        timed_out: bool,
        fx: &mut Effects,
    ) {
        let Some(wt) = self.waiters.remove(&wid) else { return };
        fx.push(Effect::Cancel(Timer::ConfigWait(wid)));
        let lagging = if timed_out || rejected.is_some() {
            wt.pending.iter().filter_map(|c| self.label(*c)).collect()
        } else {
            Vec::new()
        };
        let report = WaitReport {
            target: wt.target,
            revision: wt.revision,
            applied: wt.applied,
            rejected: rejected.into_iter().collect(),
            lagging,
            disconnected: wt.disconnected,
            timed_out,
        };
        fx.push(Effect::Reply {
            client: wt.client,
            tag: wt.tag,
            resp: Response::ConfigWaited(report),
            payload: Vec::new(),
        });
    }

    fn label(&self, id: u64) -> Option<String> {
        self.conns.get(&id).map(|w| who(id, w.pid, w.bound.as_ref()))
    }

    /// A broken rule: queue an `error` line, read nothing more, close once
    /// it is written.
    fn fail(&mut self, id: u64, message: &str) {
        let Some(w) = self.conns.get_mut(&id).filter(|w| !w.closing) else { return };
        warn!("weavelet {}: {message}; closing its connection", who(id, w.pid, w.bound.as_ref()));
        w.conn.out.push(codec::error(message));
        w.closing = true;
        // Its partial line is dropped.
        w.conn.dec = LineDecoder::new();
        self.partial -= std::mem::take(&mut w.partial);
        self.dirty.push(id);
    }

    /// `id`'s hello deadline passed.
    pub fn hello_overdue(&mut self, id: u64, fx: &mut Effects) {
        if self.conns.get(&id).is_some_and(|w| w.shut) {
            return self.remove(id, "closed after an error", fx);
        }
        if self.conns.get(&id).is_some_and(|w| w.bound.is_none() && !w.closing) {
            let s = HELLO_DEADLINE.as_secs();
            self.fail(id, &format!("no hello within {s} seconds"));
        }
    }

    /// Write what `id` has queued; a pending document follows once the
    /// queue has drained.
    pub fn flush(&mut self, id: u64, fx: &mut Effects) {
        loop {
            let Some(w) = self.conns.get_mut(&id) else { return };
            match w.conn.flush(fx) {
                Flushed::Blocked => return,
                Flushed::Failed(e) => {
                    debug!("weavelet {id}: write failed: {e}");
                    return self.remove(id, "write failed", fx);
                }
                Flushed::Done if w.closing => {
                    if !w.shut {
                        w.shut = true;
                        let _ = w.conn.stream.shutdown(std::net::Shutdown::Write);
                        let at = Instant::now() + LINGER;
                        fx.push(Effect::Arm { at, timer: Timer::WeaveletHello(id) });
                    }
                    return;
                }
                Flushed::Done => {
                    if !w.d.pending {
                        return;
                    }
                    let Some(b) = &w.bound else { return };
                    let Some((rev, doc)) = self.store.current(&b.target) else { return };
                    match w.d.offer(&b.target, rev, doc, true) {
                        Some(l) => w.conn.out.push(l),
                        None => return,
                    }
                }
            }
        }
    }

    /// Flush every connection written to this turn.
    pub fn flush_dirty(&mut self, fx: &mut Effects) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty.drain(..) {
            self.flush(id, fx);
        }
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Drop connection `id`: its fd is unwatched and closed, waiters stop
    /// waiting for it, and `config status` remembers it.
    fn remove(&mut self, id: u64, why: &str, fx: &mut Effects) {
        let Some(w) = self.conns.remove(&id) else { return };
        self.partial -= w.partial;
        fx.push(Effect::Cancel(Timer::WeaveletHello(id)));
        let row = w.bound.as_ref().map(|_| self.row(id, &w));
        let (pid, bound) = (w.pid, w.bound);
        // SAFETY: `into_raw_fd` gives up ownership of a valid, open fd.
        let fd = unsafe { OwnedFd::from_raw_fd(w.conn.stream.into_raw_fd()) };
        fx.push(Effect::Unwatch { fd });
        let (Some(b), Some(mut row)) = (bound, row) else { return };
        let label = who(id, pid, Some(&b));
        debug!("weavelet {label}: {why}");
        row.connected = false;
        self.gone.push_back(row);
        if self.gone.len() > GONE_KEPT {
            self.gone.pop_front();
        }
        self.publish(&b.target, "disconnected", None, Some(label.clone()), None, None);
        self.note(id, &b, "disconnected", None, None);
        let mut done = Vec::new();
        for (&wid, wt) in &mut self.waiters {
            if wt.pending.remove(&id) {
                wt.disconnected.push(label.clone());
                if wt.pending.is_empty() {
                    done.push(wid);
                }
            }
        }
        for wid in done {
            self.finish_wait(wid, None, false, fx);
        }
    }

    fn row(&self, id: u64, w: &Weavelet) -> WeaveletRow {
        let b = w.bound.as_ref();
        let target = b.map(|b| b.target.clone()).unwrap_or_default();
        let current = self.store.current(&target).map_or(0, |c| c.0);
        WeaveletRow {
            id,
            target,
            instance: b.and_then(|b| b.instance.clone()),
            name: b.and_then(|b| b.name.clone()),
            pid: w.pid,
            connected: true,
            applied: w.d.applied,
            current,
            lag: w.d.lag(current),
            step: w.d.step,
            rejected: w.d.rejected.clone(),
            metrics: serde_json::to_string(&w.d.metrics).unwrap_or_default(),
        }
    }

    /// `config status`: connected weavelets (by id), then those that left.
    pub fn rows(&self, target: Option<&str>) -> Vec<WeaveletRow> {
        let mut ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, w)| {
                w.bound.as_ref().is_some_and(|b| target.map_or(true, |t| b.target == t))
            })
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        let mut rows: Vec<WeaveletRow> =
            ids.iter().map(|id| self.row(*id, &self.conns[id])).collect();
        rows.extend(
            self.gone.iter().filter(|r| target.map_or(true, |t| r.target == t)).cloned().map(
                |mut r| {
                    r.current = self.store.current(&r.target).map_or(0, |c| c.0);
                    r.lag = r.current.saturating_sub(r.applied.unwrap_or(0));
                    r
                },
            ),
        );
        rows
    }

    fn note(
        &mut self,
        id: u64,
        b: &Bound,
        event: &'static str,
        revision: Option<u64>,
        reason: Option<String>,
    ) {
        if self.noting {
            let (target, instance) = (b.target.clone(), b.instance.clone());
            self.notes.push(Note { id, target, instance, event, revision, reason });
        }
    }

    /// Commit `values` as `target`'s next revision and send it to every
    /// weavelet of the target (coalesced for those that are behind).
    pub fn commit(&mut self, target: &str, values: Doc, note: String) -> Result<ConfigDoc, String> {
        self.commit_with(target, values, note, true)
    }

    /// `commit`, durable on disk or not (see `Store::commit_with`).
    pub fn commit_with(
        &mut self,
        target: &str,
        values: Doc,
        note: String,
        durable: bool,
    ) -> Result<ConfigDoc, String> {
        codec::check_fits(target, &values)?;
        let r = self.store.commit_with(target, values, note, wall_ms(), durable)?;
        let doc = config_doc(target, r);
        info!("{target}: revision {} ({}): {}", doc.revision, doc.note, doc.changed.join(", "));
        let (rev, values) = self.store.current(target).expect("just committed");
        for (&id, w) in &mut self.conns {
            if w.closing || !w.bound.as_ref().is_some_and(|b| b.target == target) {
                continue;
            }
            let idle = w.conn.out.is_empty();
            if let Some(l) = w.d.offer(target, rev, values, idle) {
                w.conn.out.push(l);
                self.dirty.push(id);
            }
        }
        Ok(doc)
    }

    /// After a commit: announce it to watchers.
    pub fn announce(&mut self, doc: &ConfigDoc) {
        let detail = Some(doc.changed.join(","));
        self.publish(&doc.target, "revision", Some(doc.revision), None, None, detail);
    }

    /// `--wait`: answer `client`'s `tag` once every weavelet of `target`
    /// connected now applied `revision`, one rejected it, or `timeout`.
    #[allow(clippy::too_many_arguments)]
    pub fn wait(
        &mut self,
        client: u64,
        tag: u64,
        target: &str,
        revision: u64,
        timeout: Duration,
        now: Instant,
        fx: &mut Effects,
    ) {
        let pending: BTreeSet<u64> = self
            .conns
            .iter()
            .filter(|(_, w)| {
                !w.closing
                    && w.bound.as_ref().is_some_and(|b| b.target == target)
                    && w.d.applied.map_or(true, |a| a < revision)
            })
            .map(|(&id, _)| id)
            .collect();
        let wid = self.next_waiter;
        self.next_waiter += 1;
        let wt = Waiter {
            client,
            tag,
            target: target.to_string(),
            revision,
            pending,
            applied: Vec::new(),
            disconnected: Vec::new(),
        };
        let empty = wt.pending.is_empty();
        self.waiters.insert(wid, wt);
        if empty {
            self.finish_wait(wid, None, false, fx);
        } else {
            fx.push(Effect::Arm { at: now + timeout, timer: Timer::ConfigWait(wid) });
        }
    }

    /// A waiter's timeout passed.
    pub fn wait_overdue(&mut self, wid: u64, fx: &mut Effects) {
        self.finish_wait(wid, None, true, fx);
    }

    /// `config watch`.
    pub fn watch(&mut self, client: u64, tag: u64, targets: Vec<String>) {
        self.watchers.push(Watcher { client, tag, targets, queue: VecDeque::new(), lost: 0 });
    }

    /// The client left: stop waiting and watching for it.
    pub fn forget_client(&mut self, client: u64, fx: &mut Effects) {
        self.watchers.retain(|w| w.client != client);
        let gone: Vec<u64> =
            self.waiters.iter().filter(|(_, w)| w.client == client).map(|(&id, _)| id).collect();
        for wid in gone {
            self.waiters.remove(&wid);
            fx.push(Effect::Cancel(Timer::ConfigWait(wid)));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        target: &str,
        event: &str,
        revision: Option<u64>,
        who: Option<String>,
        step: Option<u64>,
        detail: Option<String>,
    ) {
        if self.watchers.is_empty() {
            return;
        }
        let e = ConfigEvent {
            time_ms: wall_ms(),
            target: target.to_string(),
            event: event.to_string(),
            revision,
            who,
            step,
            detail,
        };
        for w in &mut self.watchers {
            if w.targets.is_empty() || w.targets.iter().any(|t| t == target) {
                w.queue.push_back(e.clone());
                if w.queue.len() > WATCH_QUEUE {
                    w.queue.pop_front();
                    w.lost += 1;
                }
            }
        }
    }

    /// Send watchers their queued events, as far as their clients keep up
    /// (`backlog`: a client's unsent bytes); a watcher that fell behind
    /// first gets a `lost` event saying how many it missed.
    pub fn pump(&mut self, backlog: impl Fn(u64) -> usize, fx: &mut Effects) {
        for w in &mut self.watchers {
            if (w.queue.is_empty() && w.lost == 0) || backlog(w.client) > FOLLOW_BACKLOG {
                continue;
            }
            if w.lost > 0 {
                let lost = ConfigEvent {
                    time_ms: wall_ms(),
                    target: String::new(),
                    event: "lost".into(),
                    revision: None,
                    who: None,
                    step: None,
                    detail: Some(format!(
                        "{} event(s) dropped: this watcher fell behind",
                        std::mem::take(&mut w.lost)
                    )),
                };
                w.queue.push_front(lost);
            }
            for e in w.queue.drain(..) {
                fx.push(Effect::Reply {
                    client: w.client,
                    tag: w.tag,
                    resp: Response::ConfigEvent(e),
                    payload: Vec::new(),
                });
            }
        }
    }
}

/// The supervised instance `pid` belongs to, and its process name.
fn instance_of(sup: &Supervisor, pid: u32) -> Option<(String, String)> {
    let named =
        |inst: &str| sup.instance(inst).map(|i| (inst.to_string(), i.spec().process.clone()));
    let mut p = pid;
    for _ in 0..MAX_ANCESTRY {
        if let Some(inst) = sup.by_pid(p) {
            return named(inst);
        }
        match parent_of(p) {
            Some(pp) if pp > 1 => p = pp,
            _ => break,
        }
    }
    let (process, index) = environ_identity(pid)?;
    named(&format!("{process}.{index}")).or_else(|| {
        named(&process)
            .filter(|_| sup.instance(&process).is_some_and(|i| i.spec().index.to_string() == index))
    })
}

/// The parent pid from /proc/PID/stat (the field after the `)` of comm).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `WEAVER_PROCESS` and `WEAVER_INSTANCE` from /proc/PID/environ.
fn environ_identity(pid: u32) -> Option<(String, String)> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let (mut p, mut i) = (None, None);
    for var in env.split(|&b| b == 0) {
        if let Some(v) = var.strip_prefix(b"WEAVER_PROCESS=") {
            p = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = var.strip_prefix(b"WEAVER_INSTANCE=") {
            i = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    Some((p?, i?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    fn sup(toml: &str) -> Supervisor {
        Supervisor::new(crate::supervise::parse(toml, "t").unwrap(), 1).unwrap()
    }

    const TRAINER: &str =
        "[[process]]\nname = \"trainer\"\ncommand = [\"true\"]\n[process.params]\nlr = 0.1\n";

    struct Peer {
        r: BufReader<std::os::unix::net::UnixStream>,
        w: std::os::unix::net::UnixStream,
    }

    impl Peer {
        fn send(&mut self, s: &str) {
            self.w.write_all(s.as_bytes()).unwrap();
            self.w.write_all(b"\n").unwrap();
        }
        fn recv(&mut self) -> serde_json::Value {
            let mut l = String::new();
            self.r.read_line(&mut l).unwrap();
            serde_json::from_str(&l).unwrap_or(serde_json::Value::Null)
        }
    }

    fn connect(h: &mut Hub, fx: &mut Effects) -> (u64, Peer) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        h.accept(UnixStream::from_std(a), Instant::now(), fx);
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (h.next_id - 1, Peer { r: BufReader::new(b.try_clone().unwrap()), w: b })
    }

    fn pump(h: &mut Hub, id: u64, s: &Supervisor, fx: &mut Effects) {
        let mut scratch = vec![0u8; 4096];
        // The peer wrote before this: its bytes are there.
        h.read(id, &mut scratch, false, s, Instant::now(), fx);
        h.flush_dirty(fx);
    }

    #[test]
    fn hello_config_ack_and_wait() {
        let s = sup(TRAINER);
        let mut h = Hub::new(Store::in_memory());
        h.declare(&s);
        let mut fx = Effects::new();
        let (id, mut p) = connect(&mut h, &mut fx);
        p.send(r#"{"type":"hello","protocol":1,"target":"trainer","name":"rank0"}"#);
        pump(&mut h, id, &s, &mut fx);
        let w = p.recv();
        assert_eq!((w["type"].as_str(), w["id"].as_u64()), (Some("welcome"), Some(id)));
        let c = p.recv();
        assert_eq!(
            (c["revision"].as_u64(), &c["values"]["lr"]),
            (Some(0), &serde_json::json!(0.1))
        );
        let mut doc = Doc::new();
        doc.insert("lr".into(), serde_json::json!(0.2));
        let d = h.commit("trainer", doc, "set".into()).unwrap();
        assert_eq!(d.revision, 1);
        let mut fx = Effects::new();
        h.wait(9, 4, "trainer", 1, Duration::from_secs(5), Instant::now(), &mut fx);
        h.flush_dirty(&mut fx);
        let c = p.recv();
        assert_eq!((c["revision"].as_u64(), &c["changed"]), (Some(1), &serde_json::json!(["lr"])));
        p.send(r#"{"type":"applied","revision":1,"step":7}"#);
        let mut fx = Effects::new();
        pump(&mut h, id, &s, &mut fx);
        let report = fx.iter().find_map(|e| match e {
            Effect::Reply { client: 9, tag: 4, resp: Response::ConfigWaited(r), .. } => Some(r),
            _ => None,
        });
        let r = report.expect("the wait is answered");
        assert!(!r.timed_out && r.rejected.is_empty() && r.applied.len() == 1, "{r:?}");
        let rows = h.rows(Some("trainer"));
        assert_eq!((rows[0].applied, rows[0].lag, rows[0].step), (Some(1), 0, Some(7)));
    }

    #[test]
    fn watchers_get_events_as_far_as_they_keep_up() {
        let s = sup(TRAINER);
        let mut h = Hub::new(Store::in_memory());
        h.declare(&s);
        h.watch(5, 1, vec!["trainer".into()]);
        h.watch(6, 2, vec!["other".into()]);
        for i in 0..(WATCH_QUEUE + 3) {
            let mut doc = Doc::new();
            doc.insert("i".into(), serde_json::json!(i));
            let d = h.commit("trainer", doc, "set".into()).unwrap();
            h.announce(&d);
        }
        let mut fx = Effects::new();
        h.pump(|_| FOLLOW_BACKLOG + 1, &mut fx);
        assert!(fx.is_empty(), "a client that is behind gets nothing now");
        h.pump(|_| 0, &mut fx);
        let events: Vec<&ConfigEvent> = fx
            .iter()
            .map(|e| match e {
                Effect::Reply { client: 5, tag: 1, resp: Response::ConfigEvent(e), .. } => e,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(events.len(), WATCH_QUEUE + 1);
        assert_eq!(events[0].event, "lost");
        assert!(events[0].detail.as_deref().unwrap().starts_with("3 event(s)"));
        assert_eq!(events[WATCH_QUEUE].revision, Some(WATCH_QUEUE as u64 + 3));
        let mut fx = Effects::new();
        h.forget_client(5, &mut fx);
        h.pump(|_| 0, &mut fx);
        assert!(fx.is_empty());
    }

    #[test]
    fn unfinished_lines_are_counted_for_everyone_together() {
        let s = sup(TRAINER);
        let mut h = Hub::new(Store::in_memory());
        h.declare(&s);
        let mut fx = Effects::new();
        let (a, mut pa) = connect(&mut h, &mut fx);
        let (b, mut pb) = connect(&mut h, &mut fx);
        pa.w.write_all(b"{\"type\":").unwrap();
        pb.w.write_all(&[b' '; 1000]).unwrap();
        pump(&mut h, a, &s, &mut fx);
        pump(&mut h, b, &s, &mut fx);
        assert_eq!(h.partial, 1008);
        drop(pa);
        pump(&mut h, a, &s, &mut fx);
        assert_eq!(h.partial, 1000, "a closed connection gives its bytes back");
        h.partial += MAX_PARTIAL_TOTAL;
        pb.w.write_all(b" ").unwrap();
        pump(&mut h, b, &s, &mut fx);
        let e = pb.recv();
        assert!(e["message"].as_str().unwrap().contains("unfinished lines"), "{e}");
        assert_eq!(h.partial, MAX_PARTIAL_TOTAL, "the failed connection's bytes are given back");
    }

    #[test]
    fn broken_rules_get_an_error_then_the_close() {
        let s = sup(TRAINER);
        let mut h = Hub::new(Store::in_memory());
        h.declare(&s);
        for (lines, want) in [
            (vec!["nope"], "not JSON"),
            (vec![r#"{"type":"applied","revision":1}"#], "first line must be a hello"),
            (vec![r#"{"type":"hello","protocol":2,"target":"trainer"}"#], "protocol 1"),
            (vec![r#"{"type":"hello","protocol":1,"target":"ghost"}"#], "unknown target"),
            (vec![r#"{"type":"hello","protocol":1}"#], "\"target\" is required"),
        ] {
            let mut fx = Effects::new();
            let (id, mut p) = connect(&mut h, &mut fx);
            for l in lines {
                p.send(l);
            }
            pump(&mut h, id, &s, &mut fx);
            let e = p.recv();
            assert_eq!(e["type"], "error");
            assert!(e["message"].as_str().unwrap().contains(want), "{e}");
            assert_eq!(p.recv(), serde_json::Value::Null, "EOF after the error");
            assert!(h.conns[&id].shut, "it waits for the peer to close");
            assert!(fx
                .iter()
                .any(|e| matches!(e, Effect::Arm { timer: Timer::WeaveletHello(_), .. })));
            drop(p);
            let mut fx = Effects::new();
            pump(&mut h, id, &s, &mut fx);
            assert!(!h.conns.contains_key(&id), "gone once the peer closed");
            assert!(fx.iter().any(|e| matches!(e, Effect::Unwatch { .. })));
        }
    }
}
