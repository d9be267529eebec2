//! The in-flight table, without I/O: many clients' requests share one
//! compute connection. Each request gets a fresh u64 id (never reused, so a
//! late reply can never reach the wrong client); replies are routed by id in
//! any order. The reactor feeds events in and gets back what to send and
//! what to deliver.

use std::collections::VecDeque;
use std::time::Instant;

use crate::daemon::ids::IdMap;

use crate::fdpass::Payload;
use crate::protocol::{ErrorKind, ErrorReply};
use crate::wire::status;

pub type ClientId = u64;

/// Bounds on what weaver holds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests sent to compute and not yet answered.
    pub window: usize,
    /// Payload bytes sent to compute and not yet answered (a single request
    /// larger than this still goes when nothing else is in flight).
    pub window_bytes: usize,
    /// Requests waiting in weaver for a window slot; beyond it, "busy".
    pub queue_len: usize,
    /// Payload bytes waiting in weaver; beyond it, "busy".
    pub queue_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { window: 256, window_bytes: 64 << 20, queue_len: 4096, queue_bytes: 256 << 20 }
    }
}

#[derive(Debug)]
struct Entry {
    /// The waiting client and its tag; `None` once the client left or the
    /// request timed out (the reply will be dropped).
    owner: Option<(ClientId, u64)>,
    op: OpRef,
    /// The input while queued; emptied when sent.
    payload: Payload,
    /// Bytes of memory it holds (an fd holds none).
    len: usize,
    sent: bool,
    /// The request's `--timeout`, while its deadline is armed.
    timeout_ms: Option<u64>,
    /// The op's name, for the metrics.
    label: String,
    /// When it was taken.
    since: Instant,
}

/// The op of a request: resolved to compute's op id once, at submit, when
/// compute's HELLO is known; by name until then (resolved when sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpRef {
    Code(u32),
    Name(String),
}

impl From<&str> for OpRef {
    fn from(name: &str) -> OpRef {
        OpRef::Name(name.to_string())
    }
}

/// A reply to hand to a client.
#[derive(Debug, PartialEq)]
pub struct Deliver {
    /// The request's id.
    pub id: u64,
    pub client: ClientId,
    pub tag: u64,
    pub result: Result<Payload, ErrorReply>,
    /// The request had a deadline, to disarm.
    pub timed: bool,
}

/// A request to write to compute now.
#[derive(Debug, PartialEq)]
pub struct Outgoing {
    pub id: u64,
    pub op: OpRef,
    pub payload: Payload,
}

/// What a compute reply turned into.
#[derive(Debug, PartialEq)]
pub enum Completion {
    Deliver(Deliver),
    /// The client had gone (or timed out): dropped and counted.
    Dropped,
    /// No such request: compute answered twice or invented an id.
    Unknown,
}

/// Counters for `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub served: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub timed_out: u64,
    pub busy_rejected: u64,
    pub dropped_late: u64,
}

#[derive(Debug, Default)]
pub struct Mux {
    limits: Limits,
    next_id: u64,
    entries: IdMap<Entry>,
    queue: VecDeque<u64>,
    queued_bytes: usize,
    in_flight: usize,
    in_flight_bytes: usize,
    pub stats: Stats,
    /// By op and outcome, and latency, for the metrics.
    pub tally: crate::daemon::tally::Tally,
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply { kind, message: message.into() }
}

/// Turn a compute RESPONSE into a client result.
pub fn reply_result(code: u32, payload: Payload) -> Result<Payload, ErrorReply> {
    if code == status::OK {
        return Ok(payload);
    }
    let Payload::Bytes(payload) = payload else {
        return Err(err(
            ErrorKind::ComputeFailed,
            format!(
                "compute answered {} with a payload fd instead of a message",
                status::name(code)
            ),
        ));
    };
    let kind = match code {
        status::UNKNOWN_OP => ErrorKind::UnknownOp,
        status::BAD_REQUEST => ErrorKind::BadRequest,
        status::TOO_LARGE => ErrorKind::TooLarge,
        status::CANCELLED => ErrorKind::Cancelled,
        status::BUSY => ErrorKind::Busy,
        status::BAD_FD => ErrorKind::BadRequest,
        _ => ErrorKind::ComputeFailed,
    };
    let text = String::from_utf8_lossy(&payload);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("compute answered {}", status::name(code))
    } else {
        format!("compute answered {}: {text}", status::name(code))
    };
    Err(err(kind, message))
}

impl Mux {
    pub fn new(limits: Limits) -> Self {
        Mux { limits, next_id: 1, ..Default::default() }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Accept a request into the queue, or refuse it as busy. `label`: the
    /// op's name for the metrics (`op` may be its code already).
    pub fn submit(
        &mut self,
        client: ClientId,
        tag: u64,
        op: OpRef,
        label: String,
        payload: impl Into<Payload>,
        now: Instant,
    ) -> Result<u64, ErrorReply> {
        let payload = payload.into();
        let len = payload.held();
        if self.queue.len() >= self.limits.queue_len
            || (self.queued_bytes + len > self.limits.queue_bytes && !self.queue.is_empty())
        {
            self.stats.busy_rejected += 1;
            let outcome = crate::daemon::tally::outcome(Err(ErrorKind::Busy));
            self.tally.record(&label, outcome, None);
            return Err(err(
                ErrorKind::Busy,
                format!(
                    "weaver is busy: {} requests ({} bytes) already wait for compute; retry later",
                    self.queue.len(),
                    self.queued_bytes
                ),
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                owner: Some((client, tag)),
                label,
                op,
                payload,
                len,
                sent: false,
                timeout_ms: None,
                since: now,
            },
        );
        self.queue.push_back(id);
        self.queued_bytes += len;
        Ok(id)
    }

    /// The request has a deadline `ms` from now (armed by the caller).
    pub fn set_timeout(&mut self, id: u64, ms: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.timeout_ms = Some(ms);
        }
    }

    /// The next queued request that fits the window, marked as sent.
    pub fn next_send(&mut self) -> Option<Outgoing> {
        let &id = self.queue.front()?;
        let len = self.entries[&id].len;
        let fits = self.in_flight < self.limits.window
            && (self.in_flight == 0 || self.in_flight_bytes + len <= self.limits.window_bytes);
        if !fits {
            return None;
        }
        self.queue.pop_front();
        self.queued_bytes -= len;
        self.in_flight += 1;
        self.in_flight_bytes += len;
        let e = self.entries.get_mut(&id).expect("queued ids have entries");
        e.sent = true;
        Some(Outgoing {
            id,
            op: std::mem::replace(&mut e.op, OpRef::Code(0)),
            payload: std::mem::take(&mut e.payload),
        })
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        if e.sent {
            self.in_flight -= 1;
            self.in_flight_bytes -= e.len;
        } else {
            self.queue.retain(|&q| q != id);
            self.queued_bytes -= e.len;
        }
        Some(e)
    }

    fn finish(&mut self, id: u64, result: Result<Payload, ErrorReply>, now: Instant) -> Completion {
        let Some(e) = self.remove(id) else { return Completion::Unknown };
        let Some((client, tag)) = e.owner else {
            self.stats.dropped_late += 1;
            return Completion::Dropped;
        };
        let kind = result.as_ref().map(|_| ()).map_err(|r| r.kind);
        let took = now.saturating_duration_since(e.since);
        self.tally.record(&e.label, crate::daemon::tally::outcome(kind), Some(took));
        match &result {
            Ok(_) => self.stats.served += 1,
            Err(r) if r.kind == ErrorKind::Cancelled => self.stats.cancelled += 1,
            Err(r) if r.kind == ErrorKind::Timeout => self.stats.timed_out += 1,
            Err(_) => self.stats.errors += 1,
        }
        Completion::Deliver(Deliver { id, client, tag, result, timed: e.timeout_ms.is_some() })
    }

    /// A RESPONSE from compute.
    pub fn complete(
        &mut self,
        id: u64,
        code: u32,
        payload: impl Into<Payload>,
        now: Instant,
    ) -> Completion {
        self.finish(id, reply_result(code, payload.into()), now)
    }

    /// Fail one request (sent or not) with `reply`, e.g. an op compute does
    /// not serve.
    pub fn fail(&mut self, id: u64, reply: ErrorReply) -> Completion {
        self.finish(id, Err(reply), Instant::now())
    }

    /// The client left: its queued requests vanish, its sent ones stay until
    /// compute answers (to keep the window honest) and their replies will be
    /// dropped. Returns the ids to CANCEL at compute and timers to disarm.
    pub fn forget_client(&mut self, client: ClientId) -> (Vec<u64>, Vec<u64>) {
        let mine: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.owner.is_some_and(|(c, _)| c == client))
            .map(|(&id, _)| id)
            .collect();
        let mut cancel = Vec::new();
        let mut timers = Vec::new();
        for id in mine {
            let e = self.entries.get_mut(&id).expect("listed above");
            if e.timeout_ms.take().is_some() {
                timers.push(id);
            }
            if e.sent {
                e.owner = None;
                cancel.push(id);
            } else {
                self.remove(id);
            }
        }
        cancel.sort_unstable();
        (cancel, timers)
    }

    /// The request's deadline passed. Returns the timeout reply and whether
    /// it had been sent (then CANCEL it at compute; its late reply is
    /// dropped).
    pub fn expire(&mut self, id: u64) -> Option<(Deliver, bool)> {
        let e = self.entries.get_mut(&id)?;
        let after_ms = e.timeout_ms?;
        let (client, tag) = e.owner?;
        let sent = e.sent;
        let reply = err(
            ErrorKind::Timeout,
            format!(
                "no reply within {after_ms} ms ({}); raise --timeout or check `weaver status`",
                if sent {
                    "compute was still working on it, now cancelled"
                } else {
                    "it was still waiting for compute"
                }
            ),
        );
        self.stats.timed_out += 1;
        let took = e.since.elapsed();
        self.tally.record(&e.label, "timeout", Some(took));
        if sent {
            e.owner = None;
            e.timeout_ms = None;
        } else {
            self.remove(id);
        }
        Some((Deliver { id, client, tag, result: Err(reply), timed: false }, sent))
    }

    /// compute died: every sent request fails now.
    pub fn fail_in_flight(&mut self, kind: ErrorKind, message: &str) -> Vec<Deliver> {
        let ids: Vec<u64> =
            self.entries.iter().filter(|(_, e)| e.sent).map(|(&id, _)| id).collect();
        self.fail_ids(ids, kind, message)
    }

    /// Fail everything still queued in weaver.
    pub fn fail_queued(&mut self, kind: ErrorKind, message: &str) -> Vec<Deliver> {
        let ids: Vec<u64> = self.queue.iter().copied().collect();
        self.fail_ids(ids, kind, message)
    }

    fn fail_ids(&mut self, mut ids: Vec<u64>, kind: ErrorKind, message: &str) -> Vec<Deliver> {
        ids.sort_unstable();
        let now = Instant::now();
        ids.into_iter()
            .filter_map(|id| match self.finish(id, Err(err(kind, message)), now) {
                Completion::Deliver(d) => Some(d),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Mux {
        Mux::new(Limits { window: 2, window_bytes: 100, queue_len: 3, queue_bytes: 1000 })
    }

    /// Submit `op` by name, labelled with it.
    fn sub(
        m: &mut Mux,
        client: ClientId,
        tag: u64,
        op: &str,
        p: Vec<u8>,
    ) -> Result<u64, ErrorReply> {
        m.submit(client, tag, op.into(), op.to_string(), p, Instant::now())
    }

    fn ok(m: &mut Mux, id: u64, data: &[u8]) -> Deliver {
        match m.complete(id, status::OK, data.to_vec(), Instant::now()) {
            Completion::Deliver(d) => d,
            other => panic!("expected delivery, got {other:?}"),
        }
    }

    #[test]
    fn ids_are_fresh_and_replies_route_out_of_order() {
        let mut m = small();
        let a = sub(&mut m, 1, 10, "sleep", b"ms=5".to_vec()).unwrap();
        let b = sub(&mut m, 2, 20, "echo", b"x".to_vec()).unwrap();
        assert!(b > a);
        assert_eq!(m.next_send().unwrap().id, a);
        assert_eq!(m.next_send().unwrap().payload, b"x");
        let d = ok(&mut m, b, b"x");
        assert_eq!((d.client, d.tag, d.result), (2, 20, Ok(b"x".to_vec().into())));
        let d = ok(&mut m, a, b"");
        assert_eq!((d.client, d.tag), (1, 10));
        assert_eq!(
            m.complete(a, status::OK, vec![], Instant::now()),
            Completion::Unknown,
            "answered twice"
        );
        assert_eq!(m.stats.served, 2);
    }

    #[test]
    fn window_and_queue_are_bounded() {
        let mut m = small();
        for t in 0..3 {
            sub(&mut m, 1, t, "echo", vec![0; 10]).unwrap();
        }
        let e = sub(&mut m, 1, 9, "echo", vec![]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Busy);
        assert_eq!(m.stats.busy_rejected, 1);
        assert_eq!(m.tally.get("echo", "busy"), 1, "the refusal is counted under its op");
        assert!(m.next_send().is_some());
        assert!(m.next_send().is_some());
        assert!(m.next_send().is_none(), "window of 2");
        assert_eq!((m.in_flight(), m.queued()), (2, 1));
        // Byte window: a big request waits until the link is empty.
        let mut m = small();
        sub(&mut m, 1, 1, "echo", vec![0; 60]).unwrap();
        sub(&mut m, 1, 2, "echo", vec![0; 60]).unwrap();
        let first = m.next_send().unwrap().id;
        assert!(m.next_send().is_none(), "60+60 > 100 bytes");
        ok(&mut m, first, b"");
        assert!(m.next_send().is_some());
    }

    #[test]
    fn a_leaving_client_cancels_sent_and_drops_queued() {
        let mut m = small();
        let a = sub(&mut m, 1, 1, "sleep", vec![]).unwrap();
        let _b = sub(&mut m, 1, 2, "sleep", vec![]).unwrap();
        let c = sub(&mut m, 1, 3, "sleep", vec![]).unwrap();
        let other = sub(&mut m, 2, 1, "echo", vec![]).unwrap_err();
        assert_eq!(other.kind, ErrorKind::Busy);
        m.next_send();
        m.next_send();
        let (cancel, _) = m.forget_client(1);
        assert_eq!(cancel, vec![a, a + 1]);
        assert_eq!(m.queued(), 0, "queued request {c} dropped");
        assert_eq!(m.complete(a, status::CANCELLED, vec![], Instant::now()), Completion::Dropped);
        assert_eq!(m.stats.dropped_late, 1);
        assert_eq!(m.in_flight(), 1);
    }

    #[test]
    fn timeouts_and_compute_death() {
        let mut m = small();
        let a = sub(&mut m, 1, 1, "sleep", vec![]).unwrap();
        let b = sub(&mut m, 1, 2, "echo", vec![]).unwrap();
        let q = sub(&mut m, 1, 3, "echo", vec![]).unwrap();
        m.set_timeout(a, 50);
        m.set_timeout(q, 1);
        assert!(m.expire(b).is_none(), "no deadline, nothing to expire");
        m.next_send();
        m.next_send();
        let (d, sent) = m.expire(a).unwrap();
        assert!(sent);
        let e = d.result.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert!(e.message.contains("50 ms"), "{}", e.message);
        assert!(m.expire(a).is_none(), "only once");
        let failed = m.fail_in_flight(ErrorKind::ComputeDown, "compute died");
        assert_eq!(failed.len(), 1, "the timed-out one was already answered");
        assert_eq!(failed[0].tag, 2);
        assert_eq!(m.complete(b, status::OK, vec![], Instant::now()), Completion::Unknown);
        let rest = m.fail_queued(ErrorKind::ShuttingDown, "stopping");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].tag, 3);
        assert!(rest[0].timed, "its deadline is to be disarmed");
        assert!(m.expire(q).is_none());
        assert_eq!((m.in_flight(), m.queued()), (0, 0));
    }

    #[test]
    fn compute_statuses_map_to_error_kinds() {
        assert_eq!(reply_result(status::OK, b"x".to_vec().into()), Ok(b"x".to_vec().into()));
        let e =
            reply_result(status::BAD_REQUEST, b"width: not a number".to_vec().into()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("width: not a number"));
        assert_eq!(
            reply_result(status::CANCELLED, Payload::default()).unwrap_err().kind,
            ErrorKind::Cancelled
        );
        assert_eq!(
            reply_result(999, Payload::default()).unwrap_err().kind,
            ErrorKind::ComputeFailed
        );
    }
}
