//! JetStream key-value, sans I/O: a bucket is the stream `KV_<bucket>` over
//! the subjects `$KV.<bucket>.>`; a key's value is the last message on
//! `$KV.<bucket>.<key>`, its revision the message's stream sequence.
//!
//! - Writes are compare-and-set: `Nats-Expected-Last-Subject-Sequence`
//!   (0: the key must not exist) and a `Nats-Msg-Id`, so a retried write is
//!   stored once and concurrent writers cannot overwrite each other.
//! - Watching is an ordered push consumer ([`Watcher`]): the latest value
//!   per key, then live changes; flow control answered, heartbeats
//!   expected, the consumer sequence checked. A gap, a missed heartbeat, a
//!   deleted consumer or a reconnect recreates it from the next revision,
//!   under the same name (the previous one deleted first, an inactivity
//!   threshold set): a node holds at most one consumer.
//! - A bucket deleted and created again is noticed by its stream's
//!   creation time: the watcher starts over from a full snapshot.
//!
//! API subjects are `$JS.API.<op>`, or `$JS.<domain>.API.<op>` with a
//! JetStream domain (a leaf node's hub).

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::proto::{Headers, Msg};

/// What the JetStream API answered instead of success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u64,
    pub err_code: u64,
    pub description: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (JetStream error {}, {})", self.description, self.err_code, self.code)
    }
}

/// JetStream's error codes weaver acts on.
pub mod err {
    pub const STREAM_NAME_IN_USE: u64 = 10058;
    pub const STREAM_NOT_FOUND: u64 = 10059;
    pub const CONSUMER_NOT_FOUND: u64 = 10014;
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    pub const NO_MESSAGE_FOUND: u64 = 10037;
}

/// A JetStream API reply: its JSON, or its error.
pub fn api_response(payload: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| ApiError {
        code: 0,
        err_code: 0,
        description: format!("a JetStream reply that is not JSON: {e}"),
    })?;
    if let Some(e) = v.get("error") {
        return Err(ApiError {
            code: e.get("code").and_then(Value::as_u64).unwrap_or(0),
            err_code: e.get("err_code").and_then(Value::as_u64).unwrap_or(0),
            description: e
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("unknown JetStream error")
                .to_string(),
        });
    }
    Ok(v)
}

/// Bucket and key names: `[A-Za-z0-9_-]` for buckets; keys may add `.`,
/// `/` and `=` (not first or last, no empty token).
pub fn check_bucket(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Err(format!("bucket name {name:?}: use 1 to 64 letters, digits, '_' or '-'"));
    }
    Ok(())
}

pub fn check_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 256
        && key.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_=/.".contains(&c))
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!("key {key:?}: use letters, digits, '-', '_', '=', '/' and '.' between tokens"))
    }
}

/// One bucket, in one JetStream domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub name: String,
    pub domain: Option<String>,
}

impl Bucket {
    pub fn new(name: &str, domain: Option<&str>) -> Result<Bucket, String> {
        check_bucket(name)?;
        if let Some(d) = domain {
            check_bucket(d)
                .map_err(|_| format!("js_domain {d:?}: use letters, digits, '_', '-'"))?;
        }
        Ok(Bucket { name: name.to_string(), domain: domain.map(str::to_string) })
    }

    pub fn stream(&self) -> String {
        format!("KV_{}", self.name)
    }

    /// `$JS.API.<op>` or `$JS.<domain>.API.<op>`.
    pub fn api(&self, op: &str) -> String {
        match &self.domain {
            Some(d) => format!("$JS.{d}.API.{op}"),
            None => format!("$JS.API.{op}"),
        }
    }

    pub fn prefix(&self) -> String {
        format!("$KV.{}.", self.name)
    }

    pub fn key_subject(&self, key: &str) -> Result<String, String> {
        check_key(key)?;
        Ok(format!("$KV.{}.{key}", self.name))
    }

    /// The key a message's subject is for.
    pub fn key_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(&self.prefix()).filter(|k| !k.is_empty())
    }

    /// `STREAM.CREATE` for the bucket keeping `history` values per key.
    pub fn create(&self, history: u32) -> (String, Vec<u8>) {
        let stream = self.stream();
        let body = json!({
            "name": stream,
            "subjects": [format!("$KV.{}.>", self.name)],
            "retention": "limits",
            "max_msgs_per_subject": history.clamp(1, 64),
            "max_msgs": -1, "max_bytes": -1, "max_age": 0, "max_msg_size": -1,
            "max_consumers": -1,
            "storage": "file", "num_replicas": 1, "discard": "new",
            "duplicate_window": 120_000_000_000u64,
            "allow_rollup_hdrs": true, "deny_delete": true, "deny_purge": false,
            "allow_direct": true,
        });
        (self.api(&format!("STREAM.CREATE.{stream}")), body.to_string().into_bytes())
    }

    pub fn info(&self) -> String {
        self.api(&format!("STREAM.INFO.{}", self.stream()))
    }

    pub fn delete(&self) -> String {
        self.api(&format!("STREAM.DELETE.{}", self.stream()))
    }

    /// A compare-and-set put: `expected` is the key's current revision (0:
    /// it must not exist, `None`: any), `msg_id` makes a retry a duplicate.
    pub fn put(
        &self,
        key: &str,
        expected: Option<u64>,
        msg_id: &str,
    ) -> Result<(String, Headers), String> {
        let subject = self.key_subject(key)?;
        let mut h = Headers::new().with("Nats-Msg-Id", msg_id);
        if let Some(e) = expected {
            h = h.with("Nats-Expected-Last-Subject-Sequence", &e.to_string());
        }
        Ok((subject, h))
    }

    /// `STREAM.MSG.GET` of the message at `seq`, or (with `key`) of the
    /// key's first message at or after `seq`: `(subject, body)`.
    pub fn msg_get(&self, seq: u64, key: Option<&str>) -> Result<(String, Vec<u8>), String> {
        let body = match key {
            Some(k) => json!({ "seq": seq, "next_by_subj": self.key_subject(k)? }),
            None => json!({ "seq": seq }),
        };
        Ok((self.api(&format!("STREAM.MSG.GET.{}", self.stream())), body.to_string().into_bytes()))
    }

    /// `STREAM.MSG.GET` of a key's last value: `(subject, body)`.
    pub fn get_last(&self, key: &str) -> Result<(String, Vec<u8>), String> {
        let subject = self.key_subject(key)?;
        let body = json!({ "last_by_subj": subject }).to_string().into_bytes();
        Ok((self.api(&format!("STREAM.MSG.GET.{}", self.stream())), body))
    }
}

/// What a publish into a stream returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    pub stream: String,
    pub seq: u64,
    pub duplicate: bool,
}

pub fn pub_ack(payload: &[u8]) -> Result<PubAck, ApiError> {
    let v = api_response(payload)?;
    let seq = v.get("seq").and_then(Value::as_u64).ok_or_else(|| ApiError {
        code: 0,
        err_code: 0,
        description: "a publish acknowledgement without a sequence".into(),
    })?;
    Ok(PubAck {
        stream: v.get("stream").and_then(Value::as_str).unwrap_or_default().to_string(),
        seq,
        duplicate: v.get("duplicate").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// What `STREAM.INFO` says that weaver uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// When the stream was created: a bucket deleted and created again
    /// has a new one.
    pub created: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub history: u64,
}

pub fn stream_info(payload: &[u8]) -> Result<StreamInfo, ApiError> {
    let v = api_response(payload)?;
    let state = &v["state"];
    Ok(StreamInfo {
        created: v.get("created").and_then(Value::as_str).unwrap_or_default().to_string(),
        first_seq: state["first_seq"].as_u64().unwrap_or(0),
        last_seq: state["last_seq"].as_u64().unwrap_or(0),
        messages: state["messages"].as_u64().unwrap_or(0),
        history: v["config"]["max_msgs_per_subject"].as_u64().unwrap_or(0),
    })
}

/// A message stored in a stream, as `STREAM.MSG.GET` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub data: Vec<u8>,
    /// `KV-Operation` (`DEL`, `PURGE`), if any.
    pub op: Option<String>,
    pub time: String,
}

/// A `STREAM.MSG.GET` reply.
pub fn stored(payload: &[u8]) -> Result<Stored, ApiError> {
    let v = api_response(payload)?;
    let (seq, data, op) = stored_msg(payload)?;
    let m = &v["message"];
    Ok(Stored {
        seq,
        subject: m["subject"].as_str().unwrap_or_default().to_string(),
        data,
        op,
        time: m["time"].as_str().unwrap_or_default().to_string(),
    })
}

/// A `STREAM.MSG.GET` reply: the stored message's sequence, data and
/// `KV-Operation`.
pub fn stored_msg(payload: &[u8]) -> Result<(u64, Vec<u8>, Option<String>), ApiError> {
    let v = api_response(payload)?;
    let m = &v["message"];
    let seq = m["seq"].as_u64().unwrap_or(0);
    let data = match m["data"].as_str() {
        Some(b64) => base64_decode(b64).ok_or_else(|| ApiError {
            code: 0,
            err_code: 0,
            description: "a stored message whose data is not base64".into(),
        })?,
        None => Vec::new(),
    };
    let hdrs = m["hdrs"].as_str().and_then(base64_decode).and_then(|h| {
        Headers::parse(&h).ok().and_then(|h| h.get("KV-Operation").map(str::to_string))
    });
    Ok((seq, data, hdrs))
}

/// Standard base64 with padding (what JetStream's JSON carries).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// What a JetStream message's reply subject says:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ms>.<pending>`,
/// or the form with a domain and an account hash before the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckMeta {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub consumer_seq: u64,
    pub pending: u64,
}

pub fn ack_meta(reply: &str) -> Option<AckMeta> {
    let t: Vec<&str> = reply.split('.').collect();
    if t.len() < 9 || t[0] != "$JS" || t[1] != "ACK" {
        return None;
    }
    let base = if t.len() == 9 {
        2
    } else if t.len() >= 11 {
        4
    } else {
        return None;
    };
    let n = |i: usize| t.get(base + i).and_then(|s| s.parse::<u64>().ok());
    Some(AckMeta {
        stream: t[base].to_string(),
        consumer: t[base + 1].to_string(),
        stream_seq: n(3)?,
        consumer_seq: n(4)?,
        pending: n(6)?,
    })
}

/// A key's new value (`None`: deleted or purged) at `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub revision: u64,
    pub value: Option<Vec<u8>>,
}

/// What the watcher asks its driver to do, or tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// Send a JetStream request; its reply goes to `replied(step, ...)`.
    Request { step: Step, subject: String, body: Vec<u8> },
    /// Subscribe to the deliver subject (after unsubscribing the old one).
    Subscribe { subject: String },
    /// Publish an empty message (flow control, a stalled consumer).
    Reply { subject: String },
    /// A key changed.
    Entry(Entry),
    /// The snapshot is complete: every key is at its latest revision.
    Synced { revision: u64 },
    /// The bucket was deleted and created again (or is gone): forget every
    /// key before the snapshot that follows.
    Reset { why: String },
    /// Something went wrong; the watcher retries by itself.
    Trouble(String),
}

/// Which request a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    StreamInfo,
    DeleteConsumer,
    CreateConsumer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for the connection (or the retry after trouble).
    Idle { retry_at: Option<Instant> },
    /// A request for `step` is out.
    Waiting(Step),
    /// Messages flow.
    Live,
}

/// The ordered watcher of one bucket.
#[derive(Debug)]
pub struct Watcher {
    pub bucket: Bucket,
    /// The consumer's name: one per node.
    pub consumer: String,
    deliver: String,
    state: State,
    /// The last revision applied (the stream sequence).
    pub revision: u64,
    /// The last consumer sequence seen on the current consumer.
    cseq: u64,
    /// The stream's creation time when last seen.
    created: Option<String>,
    pub synced: bool,
    pub heartbeat: Duration,
    last_activity: Instant,
    /// Times the consumer was (re)created.
    pub restarts: u64,
    /// Start from every message kept instead of the last per key: for a
    /// bucket keeping one value per key whose keys change while the
    /// snapshot is read (the last-per-key snapshot may count a replaced
    /// value as pending and end before its replacement).
    pub snapshot_all: bool,
    /// Messages pushed before the consumer's create reply came (the
    /// server starts delivering at once), replayed once it has.
    early: Vec<Msg>,
}

/// Messages held while the create reply is awaited.
const MAX_EARLY: usize = 4096;

/// Consumer names: the node's name with anything but `[A-Za-z0-9_-]`
/// replaced by `_`.
pub fn consumer_name(node: &str) -> String {
    let n: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(48)
        .collect();
    format!("weaver_{n}")
}

impl Watcher {
    pub fn new(
        bucket: Bucket,
        node: &str,
        deliver: String,
        heartbeat: Duration,
        now: Instant,
    ) -> Self {
        Watcher {
            bucket,
            consumer: consumer_name(node),
            deliver,
            state: State::Idle { retry_at: None },
            revision: 0,
            cseq: 0,
            created: None,
            synced: false,
            heartbeat,
            last_activity: now,
            restarts: 0,
            snapshot_all: false,
            early: Vec::new(),
        }
    }

    /// Start from a known revision (the persisted cache): the next
    /// consumer starts after it.
    pub fn resume_from(&mut self, revision: u64, created: Option<String>) {
        self.revision = revision;
        self.created = created;
    }

    pub fn created(&self) -> Option<&str> {
        self.created.as_deref()
    }

    pub fn is_live(&self) -> bool {
        self.state == State::Live
    }

    /// A request of the start is out.
    pub fn is_starting(&self) -> bool {
        matches!(self.state, State::Waiting(_))
    }

    /// The connection is (again) ready: begin with the stream's info.
    pub fn start(&mut self, now: Instant) -> Vec<Watch> {
        self.forget_early();
        self.last_activity = now;
        self.synced = false;
        self.state = State::Waiting(Step::StreamInfo);
        vec![Watch::Request {
            step: Step::StreamInfo,
            subject: self.bucket.info(),
            body: Vec::new(),
        }]
    }

    /// The connection went away: wait for the next one.
    pub fn stopped(&mut self) {
        self.state = State::Idle { retry_at: None };
        self.synced = false;
    }

    /// A fresh start: messages held for a previous consumer go.
    fn forget_early(&mut self) {
        self.early.clear();
    }

    /// Recreate the consumer after the current revision.
    fn restart(&mut self, why: String, now: Instant) -> Vec<Watch> {
        let mut out = vec![Watch::Trouble(why)];
        out.extend(self.start(now));
        out
    }

    fn retry_later(&mut self, why: String, now: Instant) -> Vec<Watch> {
        self.state =
            State::Idle { retry_at: Some(now + self.heartbeat.max(Duration::from_secs(1))) };
        vec![Watch::Trouble(why)]
    }

    /// A JetStream request of this watcher got its reply (`Err`: it failed
    /// or timed out).
    pub fn replied(
        &mut self,
        step: Step,
        reply: Result<&[u8], String>,
        now: Instant,
    ) -> Vec<Watch> {
        if self.state != State::Waiting(step) {
            return Vec::new();
        }
        let body = match reply {
            Ok(b) => b,
            Err(why) => return self.retry_later(format!("{step:?}: {why}"), now),
        };
        let mut out = Vec::new();
        match step {
            Step::StreamInfo => {
                let info = match stream_info(body) {
                    Ok(i) => i,
                    Err(e) if e.err_code == err::STREAM_NOT_FOUND => {
                        let was = self.created.take().is_some() || self.revision > 0;
                        if was {
                            self.revision = 0;
                            out.push(Watch::Reset { why: "the bucket is gone".into() });
                        }
                        out.extend(self.retry_later(
                            format!(
                                "bucket {} does not exist (create it with weaver fleet init)",
                                self.bucket.name
                            ),
                            now,
                        ));
                        return out;
                    }
                    Err(e) => return self.retry_later(format!("stream info: {e}"), now),
                };
                let recreated = self.created.as_ref().is_some_and(|c| *c != info.created)
                    || info.last_seq < self.revision;
                if recreated {
                    self.revision = 0;
                    out.push(Watch::Reset {
                        why: "the bucket was deleted and created again".into(),
                    });
                }
                self.created = Some(info.created);
                self.state = State::Waiting(Step::DeleteConsumer);
                let subject = self.bucket.api(&format!(
                    "CONSUMER.DELETE.{}.{}",
                    self.bucket.stream(),
                    self.consumer
                ));
                out.push(Watch::Request { step: Step::DeleteConsumer, subject, body: Vec::new() });
            }
            Step::DeleteConsumer => {
                if let Err(e) = api_response(body) {
                    if e.err_code != err::CONSUMER_NOT_FOUND {
                        return self.retry_later(format!("deleting consumer: {e}"), now);
                    }
                }
                self.cseq = 0;
                self.restarts += 1;
                self.state = State::Waiting(Step::CreateConsumer);
                out.push(Watch::Subscribe { subject: self.deliver.clone() });
                let (subject, body) = self.create_request();
                out.push(Watch::Request { step: Step::CreateConsumer, subject, body });
            }
            Step::CreateConsumer => match api_response(body) {
                Ok(v) => {
                    self.state = State::Live;
                    self.last_activity = now;
                    let early = std::mem::take(&mut self.early);
                    if early.is_empty() && v["num_pending"].as_u64() == Some(0) && !self.synced {
                        self.synced = true;
                        out.push(Watch::Synced { revision: self.revision });
                    }
                    for m in &early {
                        out.extend(self.message(m, now));
                    }
                }
                Err(e) => return self.retry_later(format!("creating consumer: {e}"), now),
            },
        }
        out
    }

    fn create_request(&self) -> (String, Vec<u8>) {
        let hb = self.heartbeat.as_nanos() as u64;
        let mut config = json!({
            "name": self.consumer,
            "deliver_subject": self.deliver,
            "ack_policy": "none",
            "replay_policy": "instant",
            "filter_subject": format!("$KV.{}.>", self.bucket.name),
            "flow_control": true,
            "idle_heartbeat": hb,
            "inactive_threshold": hb.saturating_mul(6).max(5_000_000_000),
            "mem_storage": true,
            "num_replicas": 1,
            "max_deliver": 1,
        });
        if self.revision == 0 && self.snapshot_all {
            config["deliver_policy"] = json!("all");
        } else if self.revision == 0 {
            config["deliver_policy"] = json!("last_per_subject");
        } else {
            config["deliver_policy"] = json!("by_start_sequence");
            config["opt_start_seq"] = json!(self.revision + 1);
        }
        let body = json!({ "stream_name": self.bucket.stream(), "config": config });
        let subject =
            self.bucket.api(&format!("CONSUMER.CREATE.{}.{}", self.bucket.stream(), self.consumer));
        (subject, body.to_string().into_bytes())
    }

    /// The subject pushed messages come to (the driver routes what its
    /// subscription receives to `message`).
    pub fn deliver_subject(&self) -> &str {
        &self.deliver
    }

    /// A message on the deliver subject's subscription.
    pub fn message(&mut self, m: &Msg, now: Instant) -> Vec<Watch> {
        if self.state == State::Waiting(Step::CreateConsumer) {
            if self.early.len() < MAX_EARLY {
                self.early.push(m.clone());
            }
            return Vec::new();
        }
        if self.state != State::Live {
            return Vec::new();
        }
        self.last_activity = now;
        let mut out = Vec::new();
        if let Some(status) = m.status() {
            if status == 100 {
                if let Some(r) = &m.reply {
                    // Flow control: answer, or the server stops sending.
                    out.push(Watch::Reply { subject: r.clone() });
                }
                if let Some(r) = m.header("Nats-Consumer-Stalled") {
                    out.push(Watch::Reply { subject: r.to_string() });
                }
                if let Some(last) =
                    m.header("Nats-Last-Consumer").and_then(|v| v.parse::<u64>().ok())
                {
                    if last != self.cseq {
                        out.extend(self.restart(
                            format!("heartbeat says consumer sequence {last}, had {}", self.cseq),
                            now,
                        ));
                    }
                }
                return out;
            }
            let desc = m.headers.as_ref().map(|h| h.description.clone()).unwrap_or_default();
            return self.restart(format!("consumer status {status} {desc}"), now);
        }
        let Some(meta) = m.reply.as_deref().and_then(ack_meta) else {
            return out;
        };
        if meta.consumer_seq != self.cseq + 1 {
            return self.restart(
                format!("gap: consumer sequence {} after {}", meta.consumer_seq, self.cseq),
                now,
            );
        }
        self.cseq = meta.consumer_seq;
        let Some(key) = self.bucket.key_of(&m.subject) else {
            return out;
        };
        if meta.stream_seq > self.revision {
            self.revision = meta.stream_seq;
        }
        let deleted = matches!(m.header("KV-Operation"), Some("DEL") | Some("PURGE"));
        out.push(Watch::Entry(Entry {
            key: key.to_string(),
            revision: meta.stream_seq,
            value: if deleted { None } else { Some(m.payload.clone()) },
        }));
        if meta.pending == 0 && !self.synced {
            self.synced = true;
            out.push(Watch::Synced { revision: self.revision });
        }
        out
    }

    /// When `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Idle { retry_at } => retry_at,
            State::Live => Some(self.last_activity + self.heartbeat * 3),
            State::Waiting(_) => None,
        }
    }

    /// A missed heartbeat recreates the consumer; a retry after trouble
    /// starts again.
    pub fn tick(&mut self, connected: bool, now: Instant) -> Vec<Watch> {
        match self.state {
            State::Idle { retry_at: Some(t) } if t <= now && connected => self.start(now),
            State::Live if self.last_activity + self.heartbeat * 3 <= now => self
                .restart(format!("no heartbeat for {} ms", (self.heartbeat * 3).as_millis()), now),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket() -> Bucket {
        Bucket::new("weaver_config", None).unwrap()
    }

    #[test]
    fn names_subjects_and_domains() {
        let b = bucket();
        assert_eq!(b.stream(), "KV_weaver_config");
        assert_eq!(b.api("INFO"), "$JS.API.INFO");
        assert_eq!(Bucket::new("b", Some("hub")).unwrap().api("INFO"), "$JS.hub.API.INFO");
        assert_eq!(b.key_subject("trainer").unwrap(), "$KV.weaver_config.trainer");
        assert_eq!(b.key_of("$KV.weaver_config.n1.trainer"), Some("n1.trainer"));
        assert!(Bucket::new("a.b", None).is_err());
        assert!(Bucket::new("b", Some("x y")).is_err());
        assert!(check_key("a..b").is_err() && check_key(".a").is_err() && check_key("a*").is_err());
        assert_eq!(consumer_name("gpu-01.example.com"), "weaver_gpu-01_example_com");
        let (subj, body) = b.create(5);
        assert_eq!(subj, "$JS.API.STREAM.CREATE.KV_weaver_config");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["subjects"][0], "$KV.weaver_config.>");
        assert_eq!(v["max_msgs_per_subject"], 5);
    }

    #[test]
    fn puts_carry_compare_and_set_and_a_message_id() {
        let (subj, h) = bucket().put("trainer", Some(0), "w-1").unwrap();
        assert_eq!(subj, "$KV.weaver_config.trainer");
        assert_eq!(h.get("Nats-Expected-Last-Subject-Sequence"), Some("0"));
        assert_eq!(h.get("Nats-Msg-Id"), Some("w-1"));
        assert_eq!(
            pub_ack(br#"{"stream":"KV_b","seq":7,"duplicate":true}"#).unwrap(),
            PubAck { stream: "KV_b".into(), seq: 7, duplicate: true }
        );
        let e = pub_ack(
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 6"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.err_code, err::WRONG_LAST_SEQUENCE);
        assert_eq!(e.to_string(), "wrong last sequence: 6 (JetStream error 10071, 400)");
        assert!(pub_ack(b"nope").unwrap_err().description.contains("not JSON"));
    }

    #[test]
    fn ack_subjects_both_forms() {
        let v1 = ack_meta("$JS.ACK.KV_b.weaver_n1.1.42.7.1700000000000000000.3").unwrap();
        assert_eq!((v1.stream_seq, v1.consumer_seq, v1.pending), (42, 7, 3));
        let v2 =
            ack_meta("$JS.ACK.hub.ACCHASH.KV_b.weaver_n1.1.42.7.1700000000000000000.0.r").unwrap();
        assert_eq!((v2.stream.as_str(), v2.stream_seq, v2.pending), ("KV_b", 42, 0));
        assert_eq!(ack_meta("$JS.ACK.x"), None);
        assert_eq!(ack_meta("_INBOX.a.b.c.d.e.f.g.h"), None);
    }

    #[test]
    fn base64_of_stored_messages() {
        assert_eq!(base64_decode("eyJhIjoxfQ==").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert_eq!(base64_decode("!!"), None);
    }

    fn entry_msg(w: &Watcher, key: &str, sseq: u64, cseq: u64, pending: u64, value: &str) -> Msg {
        Msg {
            subject: format!("$KV.weaver_config.{key}"),
            sid: 1,
            reply: Some(format!(
                "$JS.ACK.KV_weaver_config.{}.1.{sseq}.{cseq}.1.{pending}",
                w.consumer
            )),
            headers: None,
            payload: value.as_bytes().to_vec(),
        }
    }

    /// Drive a watcher to Live with `pending` messages to come.
    fn live(w: &mut Watcher, now: Instant, pending: u64) {
        let out = w.start(now);
        assert!(matches!(&out[..], [Watch::Request { step: Step::StreamInfo, .. }]));
        let info = br#"{"created":"2026-01-01T00:00:00Z","state":{"first_seq":1,"last_seq":9,"messages":3}}"#;
        let out = w.replied(Step::StreamInfo, Ok(info), now);
        assert!(matches!(&out[..], [Watch::Request { step: Step::DeleteConsumer, subject, .. }]
            if subject == "$JS.API.CONSUMER.DELETE.KV_weaver_config.weaver_n1"));
        let out = w.replied(
            Step::DeleteConsumer,
            Ok(br#"{"error":{"code":404,"err_code":10014,"description":"consumer not found"}}"#),
            now,
        );
        let [Watch::Subscribe { .. }, Watch::Request { step: Step::CreateConsumer, subject, body }] =
            &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(subject, "$JS.API.CONSUMER.CREATE.KV_weaver_config.weaver_n1");
        let v: Value = serde_json::from_slice(body).unwrap();
        if w.revision == 0 {
            assert_eq!(v["config"]["deliver_policy"], "last_per_subject");
        } else {
            assert_eq!(v["config"]["opt_start_seq"], w.revision + 1);
        }
        assert_eq!(v["config"]["flow_control"], true);
        let reply = format!(r#"{{"name":"weaver_n1","num_pending":{pending}}}"#);
        let out = w.replied(Step::CreateConsumer, Ok(reply.as_bytes()), now);
        assert_eq!(out.is_empty(), pending > 0, "{out:?}");
        assert!(w.is_live());
    }

    #[test]
    fn snapshot_then_live_changes_then_a_gap_restarts_after_the_revision() {
        let now = Instant::now();
        let mut w = Watcher::new(bucket(), "n1", "_INBOX.x.d1".into(), Duration::from_secs(1), now);
        live(&mut w, now, 2);
        let out = w.message(&entry_msg(&w, "trainer", 4, 1, 1, "{\"lr\":1}"), now);
        assert_eq!(
            out,
            vec![Watch::Entry(Entry {
                key: "trainer".into(),
                revision: 4,
                value: Some(b"{\"lr\":1}".to_vec())
            })]
        );
        let out = w.message(&entry_msg(&w, "eval", 9, 2, 0, "{}"), now);
        assert_eq!(out[1], Watch::Synced { revision: 9 });
        assert!(w.synced);
        // A gap: consumer sequence 4 after 2.
        let out = w.message(&entry_msg(&w, "trainer", 12, 4, 0, "{}"), now);
        assert!(matches!(&out[0], Watch::Trouble(t) if t.contains("gap")), "{out:?}");
        assert_eq!(w.revision, 9, "nothing applied past the gap");
        live(&mut w, now, 0);
        assert_eq!(w.restarts, 2);
    }

    #[test]
    fn messages_before_the_create_reply_are_replayed_in_order() {
        let now = Instant::now();
        let mut w = Watcher::new(bucket(), "n1", "_INBOX.x.d1".into(), Duration::from_secs(1), now);
        w.start(now);
        let info = br#"{"created":"c","state":{"last_seq":9}}"#;
        w.replied(Step::StreamInfo, Ok(info), now);
        w.replied(Step::DeleteConsumer, Ok(b"{\"success\":true}"), now);
        assert!(w.message(&entry_msg(&w, "a", 3, 1, 1, "{}"), now).is_empty());
        assert!(w.message(&entry_msg(&w, "b", 9, 2, 0, "{}"), now).is_empty());
        let out = w.replied(Step::CreateConsumer, Ok(br#"{"num_pending":2}"#), now);
        let keys: Vec<&str> = out
            .iter()
            .filter_map(|a| if let Watch::Entry(e) = a { Some(e.key.as_str()) } else { None })
            .collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(out.last(), Some(&Watch::Synced { revision: 9 }));
    }

    #[test]
    fn heartbeats_flow_control_and_missed_heartbeats() {
        let now = Instant::now();
        let mut w = Watcher::new(bucket(), "n1", "_INBOX.x.d1".into(), Duration::from_secs(1), now);
        live(&mut w, now, 0);
        let hb = |last: u64, reply: Option<&str>| Msg {
            subject: "_INBOX.x.d1".into(),
            sid: 1,
            reply: reply.map(str::to_string),
            headers: Some(Headers {
                status: Some(100),
                description: "Idle Heartbeat".into(),
                fields: vec![("Nats-Last-Consumer".into(), last.to_string())],
            }),
            payload: vec![],
        };
        assert!(w.message(&hb(0, None), now).is_empty());
        assert_eq!(
            w.message(&hb(0, Some("$JS.FC.x")), now),
            vec![Watch::Reply { subject: "$JS.FC.x".into() }]
        );
        let out = w.message(&hb(3, None), now);
        assert!(matches!(&out[0], Watch::Trouble(t) if t.contains("heartbeat says")));
        live(&mut w, now, 0);
        let t = w.next_deadline().unwrap();
        assert_eq!(t, now + Duration::from_secs(3));
        let out = w.tick(true, t);
        assert!(matches!(&out[0], Watch::Trouble(t) if t.contains("no heartbeat")));
    }

    #[test]
    fn a_recreated_or_missing_bucket_resets() {
        let now = Instant::now();
        let mut w = Watcher::new(bucket(), "n1", "_INBOX.x.d1".into(), Duration::from_secs(1), now);
        w.resume_from(20, Some("2025-01-01T00:00:00Z".into()));
        w.start(now);
        let info = br#"{"created":"2026-01-01T00:00:00Z","state":{"last_seq":3}}"#;
        let out = w.replied(Step::StreamInfo, Ok(info), now);
        assert!(matches!(&out[0], Watch::Reset { .. }), "{out:?}");
        assert_eq!(w.revision, 0);
        w.start(now);
        let gone = br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        let out = w.replied(Step::StreamInfo, Ok(gone), now);
        assert!(matches!(&out[0], Watch::Reset { .. }), "{out:?}");
        assert!(matches!(&out[1], Watch::Trouble(t) if t.contains("weaver fleet init")));
        assert!(w.tick(false, now + Duration::from_secs(5)).is_empty(), "no retry while down");
        assert_eq!(w.tick(true, now + Duration::from_secs(5)).len(), 1);
    }
}
