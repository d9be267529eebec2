//! The NATS client state machine, sans I/O. It decides; a driver (the
//! daemon's fleet room, or `blocking.rs` for the command line and tests)
//! owns the socket and the clock:
//!
//! 1. `dial(now)` says which server to connect to (when the backoff has
//!    passed); the driver connects without blocking and reports
//!    `connected(now)` or `failed(why, now)`.
//! 2. Bytes read go to `received`, which returns [`Event`]s; what to write
//!    accumulates in one buffer the driver takes once per turn
//!    (`take_output`), so a turn's operations leave in one write.
//! 3. `tick(now)` at `next_deadline()` runs the deadlines: the handshake,
//!    client PINGs (a connection with [`Options::max_pings_out`]
//!    unanswered is stale and dropped), request timeouts.
//! 4. When `should_close()` the driver closes the socket and reports
//!    `closed(why, now)`; reconnecting waits a backoff with jitter and
//!    re-subscribes every subscription.
//!
//! The handshake: INFO, then CONNECT and the subscriptions and a PING in
//! one write; the PONG (after any `-ERR`) makes the connection ready.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::proto::{self, Headers, Info, Msg, Parser, ServerOp};
use crate::sys::Rng;

/// One server to try: `nats://host:port` (the port defaults to 4222).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "nats://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "nats://{}:{}", self.host, self.port)
        }
    }
}

impl Url {
    /// `nats://host[:port]`, `host[:port]` or `nats://[v6]:port`.
    pub fn parse(s: &str) -> Result<Url, String> {
        let bad = |why: &str| format!("fleet url {s:?}: {why} (write nats://HOST:PORT)");
        let rest = match s.split_once("://") {
            Some(("nats", r)) => r,
            Some((scheme, _)) => {
                return Err(bad(&format!("scheme {scheme}:// is not supported, only nats://")))
            }
            None => s,
        };
        if rest.contains(['/', '@', '?', '#']) || rest.chars().any(char::is_whitespace) {
            return Err(bad("only a host and a port may follow nats://"));
        }
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r.split_once(']').ok_or_else(|| bad("an unclosed '['"))?;
            (h, p.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 4222,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| bad("a bad port"))?,
        };
        Ok(Url { host: host.to_string(), port })
    }
}

/// How the client proves who it is.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    #[default]
    None,
    Token(String),
    UserPassword {
        user: String,
        password: String,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => write!(f, "None"),
            Auth::Token(_) => write!(f, "Token(..)"),
            Auth::UserPassword { user, .. } => write!(f, "UserPassword({user}, ..)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub urls: Vec<Url>,
    /// The connection's name, as the server's monitoring shows it.
    pub name: String,
    pub auth: Auth,
    /// Replies to requests come to `<inbox_prefix>.<random>.<n>`.
    pub inbox_prefix: String,
    /// From dialing to the handshake's PONG.
    pub connect_timeout: Duration,
    pub ping_interval: Duration,
    /// Unanswered PINGs that make the connection stale.
    pub max_pings_out: u32,
    /// The first reconnect delay, doubled per failure up to `backoff_max`,
    /// each moved by up to half either way.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Options {
    pub fn new(urls: Vec<Url>) -> Options {
        Options {
            urls,
            name: "weaver".into(),
            auth: Auth::None,
            inbox_prefix: "_INBOX".into(),
            connect_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(2),
            max_pings_out: 2,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Where the connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No socket; the next dial is due at `retry_at`.
    Down {
        retry_at: Instant,
    },
    /// The driver is connecting to `urls[url]`.
    Dialing {
        url: usize,
        deadline: Instant,
    },
    /// Connected; waiting for INFO, then for the PONG to our first PING.
    Handshake {
        url: usize,
        deadline: Instant,
        sent_connect: bool,
    },
    Ready {
        url: usize,
    },
}

/// What happened, for the layer above.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The handshake completed (`count` ready connections so far, from 1).
    Connected { url: Url, info: Box<Info>, count: u64 },
    /// The connection went away (or an attempt failed).
    Disconnected { why: String },
    /// A message on a subscription.
    Msg(Msg),
    /// The reply to a request.
    Reply { id: u64, msg: Msg },
    /// A request got no reply: timed out, no responders, or the connection
    /// went away.
    RequestFailed { id: u64, why: String },
    /// A `-ERR` the connection survives (a permissions violation).
    ServerError(String),
    /// A PONG came back: the round trip of the PING it answers.
    RoundTrip(Duration),
}

/// Why a publish or request was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Not connected: nothing was sent or queued.
    NotConnected,
    /// The message is invalid or too large.
    Invalid(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NotConnected => write!(f, "not connected to NATS"),
            SendError::Invalid(why) => write!(f, "{why}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Sub {
    subject: String,
}

#[derive(Debug)]
struct Request {
    deadline: Instant,
}

/// Most requests waiting for their reply at once.
pub const MAX_REQUESTS: usize = 4096;

#[derive(Debug)]
pub struct Client {
    opts: Options,
    phase: Phase,
    parser: Parser,
    /// What the turn wants written: taken whole by the driver.
    out: Vec<u8>,
    info: Option<Info>,
    subs: BTreeMap<u64, Sub>,
    next_sid: u64,
    /// The sid of `<inbox>.*`, the requests' replies.
    inbox_sid: u64,
    inbox: String,
    requests: BTreeMap<u64, Request>,
    next_request: u64,
    /// When each unanswered PING was sent, oldest first.
    pings: Vec<Instant>,
    next_ping: Option<Instant>,
    /// Failed dials or connections since the last ready one.
    failures: u32,
    /// The next server to try.
    cursor: usize,
    close: Option<String>,
    rng: Rng,
    ready_count: u64,
    /// Why the last connection or attempt ended (a `-ERR` is kept over the
    /// EOF that follows it).
    last_error: Option<String>,
}

impl Client {
    pub fn new(opts: Options, now: Instant, mut rng: Rng) -> Client {
        assert!(!opts.urls.is_empty(), "at least one url");
        let inbox = format!("{}.{:016x}", opts.inbox_prefix, rng.next_u64());
        let mut c = Client {
            phase: Phase::Down { retry_at: now },
            parser: Parser::default(),
            out: Vec::new(),
            info: None,
            subs: BTreeMap::new(),
            next_sid: 1,
            inbox_sid: 0,
            inbox: inbox.clone(),
            requests: BTreeMap::new(),
            next_request: 1,
            pings: Vec::new(),
            next_ping: None,
            failures: 0,
            cursor: 0,
            close: None,
            rng,
            ready_count: 0,
            last_error: None,
            opts,
        };
        c.inbox_sid = c.subscribe(&format!("{inbox}.*"));
        c
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready { .. })
    }

    pub fn info(&self) -> Option<&Info> {
        self.info.as_ref()
    }

    pub fn url(&self) -> Option<&Url> {
        match self.phase {
            Phase::Dialing { url, .. } | Phase::Handshake { url, .. } | Phase::Ready { url } => {
                self.opts.urls.get(url)
            }
            Phase::Down { .. } => None,
        }
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// A fresh subject under this client's inbox (a push consumer's
    /// deliver subject).
    pub fn new_inbox(&mut self) -> String {
        let n = self.next_request;
        self.next_request += 1;
        format!("{}.d{n}", self.inbox)
    }

    /// The server to connect to now, if one is due: the phase becomes
    /// `Dialing`.
    pub fn dial(&mut self, now: Instant) -> Option<Url> {
        match self.phase {
            Phase::Down { retry_at } if retry_at <= now => {
                let url = self.cursor % self.opts.urls.len();
                self.cursor = self.cursor.wrapping_add(1);
                self.phase = Phase::Dialing { url, deadline: now + self.opts.connect_timeout };
                self.close = None;
                Some(self.opts.urls[url].clone())
            }
            _ => None,
        }
    }

    /// The TCP connection is up: wait for INFO.
    pub fn connected(&mut self, now: Instant) {
        if let Phase::Dialing { url, deadline } = self.phase {
            let deadline = deadline.max(now + Duration::from_millis(1));
            self.phase = Phase::Handshake { url, deadline, sent_connect: false };
            self.parser = Parser::default();
            self.out.clear();
            self.pings.clear();
        }
    }

    /// The dial or the connection failed, or the driver closed the socket
    /// after `should_close`: back to `Down` with a backoff.
    pub fn closed(&mut self, why: &str, now: Instant) -> Vec<Event> {
        let mut ev = Vec::new();
        if matches!(self.phase, Phase::Down { .. }) {
            return ev;
        }
        let why = match self.close.take() {
            Some(own) => own,
            None => why.to_string(),
        };
        // Our own reason (an -ERR, a stale connection) is kept over the
        // EOF that follows it.
        self.last_error = Some(why.clone());
        let shown = why;
        // A lost ready connection is redialed at once; a failed attempt
        // waits a growing backoff.
        let delay = if self.is_ready() {
            self.failures = 0;
            Duration::ZERO
        } else {
            self.failures = self.failures.saturating_add(1);
            self.backoff()
        };
        self.phase = Phase::Down { retry_at: now + delay };
        self.out.clear();
        self.pings.clear();
        self.next_ping = None;
        for (id, _) in std::mem::take(&mut self.requests) {
            ev.push(Event::RequestFailed { id, why: format!("connection lost: {shown}") });
        }
        ev.push(Event::Disconnected { why: shown });
        ev
    }

    /// The delay before the next attempt: nothing for the first after a
    /// ready connection, then `backoff_base * 2^k` capped, with jitter.
    fn backoff(&mut self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let exp = (self.failures - 1).min(20);
        let d = self.opts.backoff_base.saturating_mul(1 << exp).min(self.opts.backoff_max);
        let r = self.rng.next_u64() as f64 / u64::MAX as f64;
        d.mul_f64(0.5 + r)
    }

    /// Set when the connection must be dropped (a protocol error, a stale
    /// connection, a missed handshake deadline): the driver closes the
    /// socket and calls `closed`.
    pub fn should_close(&self) -> Option<&str> {
        self.close.as_deref()
    }

    fn fail(&mut self, why: String) {
        if self.close.is_none() {
            self.close = Some(why);
        }
    }

    /// The bytes to write, taken once per turn.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes read from the socket.
    pub fn received(&mut self, mut data: &[u8], now: Instant) -> Vec<Event> {
        let mut ev = Vec::new();
        while !data.is_empty() && self.close.is_none() {
            match self.parser.feed(data) {
                Ok((used, op)) => {
                    data = &data[used..];
                    if let Some(op) = op {
                        self.op(op, now, &mut ev);
                    }
                }
                Err(e) => self.fail(format!("protocol error from the server: {e}")),
            }
        }
        ev
    }

    fn op(&mut self, op: ServerOp, now: Instant, ev: &mut Vec<Event>) {
        match op {
            ServerOp::Ping => proto::pong(&mut self.out),
            ServerOp::Pong => {
                if !self.pings.is_empty() {
                    let sent = self.pings.remove(0);
                    ev.push(Event::RoundTrip(now.saturating_duration_since(sent)));
                }
                if let Phase::Handshake { url, sent_connect: true, .. } = self.phase {
                    self.phase = Phase::Ready { url };
                    self.failures = 0;
                    self.last_error = None;
                    self.ready_count += 1;
                    self.next_ping = Some(now + self.opts.ping_interval);
                    let info = self.info.clone().unwrap_or_default();
                    ev.push(Event::Connected {
                        url: self.opts.urls[url].clone(),
                        info: Box::new(info),
                        count: self.ready_count,
                    });
                }
            }
            ServerOp::Ok => {}
            ServerOp::Err(text) => {
                let fatal = !text.to_ascii_lowercase().starts_with("permissions violation");
                if fatal {
                    let why = format!("server error: {text}");
                    self.last_error = Some(why.clone());
                    self.fail(why);
                } else {
                    ev.push(Event::ServerError(text));
                }
            }
            ServerOp::Info(info) => {
                if let Phase::Handshake { sent_connect: false, url, deadline } = self.phase {
                    if !info.headers {
                        self.fail(format!(
                            "the server {} does not support headers (NATS 2.2 or later is needed)",
                            self.opts.urls[url]
                        ));
                        return;
                    }
                    self.handshake(&info, now);
                    self.phase = Phase::Handshake { url, deadline, sent_connect: true };
                }
                self.info = Some(*info);
            }
            ServerOp::Msg(m) => {
                if m.sid == self.inbox_sid {
                    let id = m.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok());
                    if let Some(id) = id.filter(|id| self.requests.remove(id).is_some()) {
                        if m.status() == Some(503) {
                            ev.push(Event::RequestFailed {
                                id,
                                why: "no responders (is JetStream enabled on the server?)".into(),
                            });
                        } else {
                            ev.push(Event::Reply { id, msg: m });
                        }
                    }
                } else if self.subs.contains_key(&m.sid) {
                    ev.push(Event::Msg(m));
                }
            }
        }
    }

    /// CONNECT, every subscription and a PING, in one write.
    fn handshake(&mut self, _info: &Info, now: Instant) {
        let mut o = json!({
            "verbose": false, "pedantic": false, "tls_required": false,
            "name": self.opts.name, "lang": "rust-weaver",
            "version": env!("CARGO_PKG_VERSION"), "protocol": 1,
            "headers": true, "no_responders": true,
        });
        match &self.opts.auth {
            Auth::None => {}
            Auth::Token(t) => o["auth_token"] = Value::String(t.clone()),
            Auth::UserPassword { user, password } => {
                o["user"] = Value::String(user.clone());
                o["pass"] = Value::String(password.clone());
            }
        }
        proto::connect(&mut self.out, &o);
        for (sid, s) in &self.subs {
            proto::subscribe(&mut self.out, &s.subject, None, *sid);
        }
        proto::ping(&mut self.out);
        self.pings.push(now);
    }

    /// Subscribe (now if ready, and again after every reconnect).
    pub fn subscribe(&mut self, subject: &str) -> u64 {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.subs.insert(sid, Sub { subject: subject.to_string() });
        if self.is_ready() {
            proto::subscribe(&mut self.out, subject, None, sid);
        }
        sid
    }

    pub fn unsubscribe(&mut self, sid: u64) {
        if self.subs.remove(&sid).is_some() && self.is_ready() {
            proto::unsubscribe(&mut self.out, sid, None);
        }
    }

    fn max_payload(&self) -> usize {
        self.info.as_ref().map_or(proto::DEFAULT_MAX_PAYLOAD, |i| i.max_payload)
    }

    /// Publish now, or fail: nothing is queued while not connected.
    pub fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Headers>,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if !self.is_ready() {
            return Err(SendError::NotConnected);
        }
        let max = self.max_payload();
        proto::publish(&mut self.out, subject, reply, headers, payload, max)
            .map_err(SendError::Invalid)
    }

    /// Publish with a reply subject under the inbox; the reply (or the
    /// failure) comes back as an event with the returned id.
    pub fn request(
        &mut self,
        subject: &str,
        headers: Option<&Headers>,
        payload: &[u8],
        timeout: Duration,
        now: Instant,
    ) -> Result<u64, SendError> {
        if self.requests.len() >= MAX_REQUESTS {
            return Err(SendError::Invalid(format!(
                "{MAX_REQUESTS} requests already wait for their replies"
            )));
        }
        let id = self.next_request;
        let reply = format!("{}.{id}", self.inbox);
        self.publish(subject, Some(&reply), headers, payload)?;
        self.next_request += 1;
        self.requests.insert(id, Request { deadline: now + timeout });
        Ok(id)
    }

    /// Forget a request: its reply, if one comes, is dropped.
    pub fn cancel(&mut self, id: u64) {
        self.requests.remove(&id);
    }

    /// The next time `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Down { retry_at } => Some(retry_at),
            Phase::Dialing { deadline, .. } | Phase::Handshake { deadline, .. } => Some(deadline),
            Phase::Ready { .. } => self.next_ping,
        };
        let req = self.requests.values().map(|r| r.deadline).min();
        match (phase, req) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Run what is due.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let mut ev = Vec::new();
        match self.phase {
            Phase::Dialing { deadline, url } | Phase::Handshake { deadline, url, .. }
                if deadline <= now =>
            {
                let what = if matches!(self.phase, Phase::Dialing { .. }) {
                    "connecting"
                } else {
                    "the handshake"
                };
                self.fail(format!(
                    "{} did not answer {what} within {} ms",
                    self.opts.urls[url],
                    self.opts.connect_timeout.as_millis()
                ));
            }
            Phase::Ready { url } if self.next_ping.is_some_and(|t| t <= now) => {
                if self.pings.len() as u32 >= self.opts.max_pings_out {
                    self.fail(format!(
                        "{} is stale: {} PINGs unanswered",
                        self.opts.urls[url],
                        self.pings.len()
                    ));
                } else {
                    proto::ping(&mut self.out);
                    self.pings.push(now);
                    self.next_ping = Some(now + self.opts.ping_interval);
                }
            }
            _ => {}
        }
        let due: Vec<u64> =
            self.requests.iter().filter(|(_, r)| r.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            self.requests.remove(&id);
            ev.push(Event::RequestFailed { id, why: "no reply in time".into() });
        }
        ev
    }

    /// A PING now (a caller measuring the round trip, or checking a quiet
    /// connection at once).
    pub fn ping_now(&mut self, now: Instant) {
        if self.is_ready() {
            proto::ping(&mut self.out);
            self.pings.push(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Vec<u8> {
        br#"INFO {"server_id":"S1","version":"2.9.10","max_payload":1048576,"headers":true,"jetstream":true}"#
            .iter()
            .chain(b"\r\n")
            .copied()
            .collect()
    }

    fn client(now: Instant) -> Client {
        let mut o = Options::new(vec![Url::parse("nats://127.0.0.1:4222").unwrap()]);
        o.auth = Auth::Token("s3cret".into());
        Client::new(o, now, Rng::seeded(1))
    }

    fn ready(c: &mut Client, now: Instant) {
        assert!(c.dial(now).is_some());
        c.connected(now);
        assert!(c.received(&info(), now).is_empty());
        let ev = c.received(b"PONG\r\n", now);
        assert!(matches!(ev[..], [Event::RoundTrip(_), Event::Connected { .. }]), "{ev:?}");
        c.take_output();
    }

    #[test]
    fn urls_parse_with_clear_errors() {
        assert_eq!(Url::parse("nats://h:1").unwrap(), Url { host: "h".into(), port: 1 });
        assert_eq!(Url::parse("10.0.0.1").unwrap().port, 4222);
        assert_eq!(Url::parse("nats://[::1]:5").unwrap(), Url { host: "::1".into(), port: 5 });
        assert_eq!(Url::parse("nats://[::1]:5").unwrap().to_string(), "nats://[::1]:5");
        for bad in ["tls://h:1", "nats://h:0", "nats://h:x", "nats://u:p@h:1", "nats://:1", ""] {
            let e = Url::parse(bad).unwrap_err();
            assert!(e.contains("nats://HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn handshake_sends_connect_subs_and_ping_in_one_write() {
        let now = Instant::now();
        let mut c = client(now);
        let sid = c.subscribe("$KV.b.>");
        assert_eq!(c.dial(now), Some(Url::parse("127.0.0.1:4222").unwrap()));
        assert_eq!(c.dial(now), None, "one dial at a time");
        c.connected(now);
        assert!(!c.has_output(), "nothing before INFO");
        c.received(&info(), now);
        let out = String::from_utf8(c.take_output()).unwrap();
        assert!(out.starts_with("CONNECT {"), "{out}");
        assert!(out.contains("\"auth_token\":\"s3cret\"") && out.contains("\"headers\":true"));
        assert!(out.contains(&format!("SUB $KV.b.> {sid}\r\n")), "{out}");
        assert!(out.ends_with("PING\r\n"), "{out}");
        assert!(!c.is_ready());
        assert_eq!(c.publish("x", None, None, b""), Err(SendError::NotConnected));
        let ev = c.received(b"PONG\r\n", now + Duration::from_millis(3));
        assert_eq!(ev[0], Event::RoundTrip(Duration::from_millis(3)));
        assert!(
            matches!(&ev[1], Event::Connected { count: 1, info, .. } if info.server_id == "S1")
        );
        assert!(c.is_ready());
        assert!(!format!("{:?}", c.options().auth).contains("s3cret"), "secrets are not logged");
    }

    #[test]
    fn auth_error_is_kept_over_the_eof() {
        let now = Instant::now();
        let mut c = client(now);
        c.dial(now);
        c.connected(now);
        c.received(&info(), now);
        c.received(b"-ERR 'Authorization Violation'\r\n", now);
        assert_eq!(c.should_close(), Some("server error: Authorization Violation"));
        let ev = c.closed("connection closed by the server", now);
        assert_eq!(
            ev,
            vec![Event::Disconnected { why: "server error: Authorization Violation".into() }]
        );
        assert_eq!(c.last_error(), Some("server error: Authorization Violation"));
        // The next attempt waits a backoff.
        assert_eq!(c.dial(now), None);
        let Phase::Down { retry_at } = *c.phase() else { panic!() };
        assert!(retry_at > now && retry_at <= now + Duration::from_millis(150));
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets_after_a_ready_connection() {
        let now = Instant::now();
        let mut c = client(now);
        let mut delays = Vec::new();
        let mut t = now;
        for _ in 0..12 {
            assert!(c.dial(t).is_some());
            c.closed("connection refused", t);
            let Phase::Down { retry_at } = *c.phase() else { panic!() };
            delays.push(retry_at - t);
            t = retry_at;
        }
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(150));
        assert!(delays[3] >= Duration::from_millis(400), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(7500)), "{delays:?}");
        assert!(delays[11] >= Duration::from_millis(2500), "{delays:?}");
        ready(&mut c, t);
        c.closed("connection reset", t);
        assert_eq!(
            *c.phase(),
            Phase::Down { retry_at: t },
            "a lost connection is redialed at once"
        );
    }

    #[test]
    fn unanswered_pings_make_the_connection_stale() {
        let now = Instant::now();
        let mut c = client(now);
        ready(&mut c, now);
        let i = c.options().ping_interval;
        assert_eq!(c.next_deadline(), Some(now + i));
        c.tick(now + i);
        assert_eq!(c.take_output(), b"PING\r\n");
        c.tick(now + 2 * i);
        assert_eq!(c.take_output(), b"PING\r\n");
        assert!(c.should_close().is_none());
        c.tick(now + 3 * i);
        assert_eq!(c.should_close(), Some("nats://127.0.0.1:4222 is stale: 2 PINGs unanswered"));
        // An answered PING keeps it alive.
        let mut c = client(now);
        ready(&mut c, now);
        for k in 1..10 {
            c.tick(now + k * i);
            c.received(b"PONG\r\n", now + k * i);
        }
        assert!(c.should_close().is_none());
    }

    #[test]
    fn handshake_deadline() {
        let now = Instant::now();
        let mut c = client(now);
        c.dial(now);
        c.connected(now);
        c.tick(now + Duration::from_secs(3));
        assert_eq!(
            c.should_close(),
            Some("nats://127.0.0.1:4222 did not answer the handshake within 2000 ms")
        );
    }

    #[test]
    fn requests_get_replies_timeouts_and_no_responders() {
        let now = Instant::now();
        let mut c = client(now);
        ready(&mut c, now);
        let a = c.request("$JS.API.INFO", None, b"", Duration::from_secs(1), now).unwrap();
        let b = c.request("$JS.API.INFO", None, b"", Duration::from_secs(1), now).unwrap();
        let d = c.request("$JS.API.INFO", None, b"", Duration::from_secs(5), now).unwrap();
        let out = String::from_utf8(c.take_output()).unwrap();
        assert!(out.contains(&format!("PUB $JS.API.INFO {}.{a} 0\r\n", c.inbox)), "{out}");
        let (inbox, isid) = (c.inbox.clone(), c.inbox_sid);
        let reply = |id: u64, hdr: Option<&str>| {
            let subj = format!("{inbox}.{id}");
            match hdr {
                None => format!("MSG {subj} {isid} 2\r\n{{}}\r\n"),
                Some(h) => format!("HMSG {subj} {isid} {} {}\r\n{h}\r\n", h.len(), h.len()),
            }
        };
        let ev = c.received(reply(a, None).as_bytes(), now);
        assert!(matches!(&ev[..], [Event::Reply { id, msg }] if *id == a && msg.payload == b"{}"));
        let ev = c.received(reply(b, Some("NATS/1.0 503\r\n\r\n")).as_bytes(), now);
        assert!(
            matches!(&ev[..], [Event::RequestFailed { id, why }] if *id == b && why.contains("no responders"))
        );
        assert!(c.received(reply(a, None).as_bytes(), now).is_empty(), "a second reply is dropped");
        let ev = c.tick(now + Duration::from_secs(6));
        assert_eq!(ev, vec![Event::RequestFailed { id: d, why: "no reply in time".into() }]);
    }

    #[test]
    fn reconnect_resubscribes_and_fails_pending_requests() {
        let now = Instant::now();
        let mut c = client(now);
        let s1 = c.subscribe("a.>");
        ready(&mut c, now);
        let s2 = c.subscribe("b.*");
        assert_eq!(c.take_output(), format!("SUB b.* {s2}\r\n").as_bytes());
        c.unsubscribe(s1);
        assert_eq!(c.take_output(), format!("UNSUB {s1}\r\n").as_bytes());
        let r = c.request("x", None, b"", Duration::from_secs(1), now).unwrap();
        c.publish("y", None, None, b"unsent").unwrap();
        let ev = c.closed("connection reset by peer", now);
        assert_eq!(
            ev[0],
            Event::RequestFailed { id: r, why: "connection lost: connection reset by peer".into() }
        );
        assert!(!c.has_output(), "nothing queued for a dead connection");
        c.dial(now);
        c.connected(now);
        c.received(&info(), now);
        let out = String::from_utf8(c.take_output()).unwrap();
        assert!(out.contains(&format!("SUB b.* {s2}\r\n")) && !out.contains("SUB a.>"), "{out}");
        let ev = c.received(b"PONG\r\n", now);
        assert!(matches!(&ev[1], Event::Connected { count: 2, .. }));
    }

    #[test]
    fn server_pings_are_answered_and_protocol_errors_close() {
        let now = Instant::now();
        let mut c = client(now);
        ready(&mut c, now);
        c.received(b"PING\r\n", now);
        assert_eq!(c.take_output(), b"PONG\r\n");
        let ev = c.received(b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n", now);
        assert!(matches!(&ev[..], [Event::ServerError(_)]));
        assert!(c.should_close().is_none());
        c.received(b"BOGUS\r\n", now);
        assert_eq!(
            c.should_close(),
            Some("protocol error from the server: unknown protocol operation \"BOGUS\"")
        );
    }
}
