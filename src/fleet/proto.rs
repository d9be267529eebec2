//! The NATS core protocol, sans I/O: a parser for what a server sends
//! (`INFO`, `MSG`, `HMSG` with headers and status lines, `PING`, `PONG`,
//! `+OK`, `-ERR`) and encoders for what a client sends (`CONNECT`, `PUB`,
//! `HPUB`, `SUB`, `UNSUB`, `PING`, `PONG`).
//!
//! Bounds: an operation line is at most [`MAX_CONTROL_LINE`] bytes before
//! its `\r\n`; a message's headers and payload together are at most the
//! parser's limit (the server's `max_payload` plus [`HEADER_SLACK`], never
//! over [`MAX_PAYLOAD_CAP`]). The parser holds at most one partial line or
//! one partial message, and refuses a message over its limit before it
//! reserves anything.

use std::fmt;

use serde_json::Value;

/// Bytes in one operation line before its `\r\n` (an `INFO` with a
/// cluster's `connect_urls` is the longest).
pub const MAX_CONTROL_LINE: usize = 32 * 1024;
/// The largest message (headers and payload) weaver takes or sends,
/// whatever the server announces.
pub const MAX_PAYLOAD_CAP: usize = 8 << 20;
/// Headers the server adds to a message (JetStream's `Nats-*`) beyond what
/// was published: allowed on top of `max_payload` when receiving.
pub const HEADER_SLACK: usize = 64 * 1024;
/// The `max_payload` assumed before the server's `INFO` says it.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// Header fields in one message.
pub const MAX_HEADER_FIELDS: usize = 256;

/// What is wrong with the bytes a server sent. The connection cannot be
/// trusted after one: the client drops it and reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// An operation line longer than [`MAX_CONTROL_LINE`].
    LineTooLong,
    /// A message larger than the parser's limit.
    TooLarge { size: usize, limit: usize },
    /// An operation weaver does not know.
    UnknownOp(String),
    /// A known operation with bad arguments.
    BadArgs { op: &'static str, why: String },
    /// A message's payload not followed by `\r\n`.
    BadTerminator,
    /// A message's headers do not parse.
    BadHeaders(String),
    /// `INFO` that is not a JSON object.
    BadInfo(String),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::LineTooLong => {
                write!(f, "protocol line over {MAX_CONTROL_LINE} bytes without CRLF")
            }
            ProtoError::TooLarge { size, limit } => {
                write!(f, "message of {size} bytes over the limit of {limit}")
            }
            ProtoError::UnknownOp(op) => write!(f, "unknown protocol operation {op:?}"),
            ProtoError::BadArgs { op, why } => write!(f, "{op}: {why}"),
            ProtoError::BadTerminator => write!(f, "message payload not followed by CRLF"),
            ProtoError::BadHeaders(why) => write!(f, "message headers: {why}"),
            ProtoError::BadInfo(why) => write!(f, "INFO: {why}"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// What the server's `INFO` says that weaver uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Info {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub max_payload: usize,
    pub headers: bool,
    pub jetstream: bool,
    pub auth_required: bool,
    pub tls_required: bool,
    pub connect_urls: Vec<String>,
}

impl Info {
    fn parse(json: &[u8]) -> Result<Info, ProtoError> {
        let v: Value =
            serde_json::from_slice(json).map_err(|e| ProtoError::BadInfo(format!("{e}")))?;
        let Value::Object(m) = v else {
            return Err(ProtoError::BadInfo("not a JSON object".into()));
        };
        let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let b = |k: &str| m.get(k).and_then(Value::as_bool).unwrap_or(false);
        let max_payload = match m.get("max_payload") {
            None => DEFAULT_MAX_PAYLOAD,
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    ProtoError::BadInfo("max_payload must be a positive integer".into())
                })?
                .min(MAX_PAYLOAD_CAP as u64) as usize,
        };
        let connect_urls = match m.get("connect_urls") {
            Some(Value::Array(a)) => {
                a.iter().filter_map(Value::as_str).take(64).map(str::to_string).collect()
            }
            _ => Vec::new(),
        };
        Ok(Info {
            server_id: s("server_id"),
            server_name: s("server_name"),
            version: s("version"),
            max_payload,
            headers: b("headers"),
            jetstream: b("jetstream"),
            auth_required: b("auth_required"),
            tls_required: b("tls_required"),
            connect_urls,
        })
    }
}

/// A message's headers: the status line's code and description (JetStream
/// heartbeats, flow control, "no responders", request timeouts), then the
/// fields in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers {
    /// `100` for a heartbeat or flow control, `404`, `408`, `409`, `503`...
    pub status: Option<u16>,
    pub description: String,
    pub fields: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a field (checked when encoded).
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }

    /// The first value of `key` (case-insensitive, as NATS compares them).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    /// Parse a header block: `NATS/1.0[ code[ description]]\r\n`, then
    /// `Key: Value\r\n` lines, then an empty line.
    pub fn parse(block: &[u8]) -> Result<Headers, ProtoError> {
        let bad = |why: &str| ProtoError::BadHeaders(why.to_string());
        let text = std::str::from_utf8(block).map_err(|_| bad("not UTF-8"))?;
        let body =
            text.strip_suffix("\r\n\r\n").ok_or_else(|| bad("not ended by an empty line"))?;
        if body.split("\r\n").any(|l| l.contains(['\r', '\n'])) {
            return Err(bad("a line break inside a line"));
        }
        let mut lines = body.split("\r\n");
        let first = lines.next().unwrap_or_default();
        let rest = first.strip_prefix("NATS/1.0").ok_or_else(|| bad("no NATS/1.0 version line"))?;
        let mut h = Headers::new();
        let rest = rest.trim_start_matches([' ', '\t']);
        if !rest.is_empty() {
            let (code, desc) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
            if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad("status is not a three-digit code"));
            }
            let code: u16 = code.parse().map_err(|_| bad("status is not a number"))?;
            if code < 100 {
                return Err(bad("status is not a three-digit code"));
            }
            h.status = Some(code);
            h.description = desc.trim().to_string();
        }
        for line in lines {
            if h.fields.len() == MAX_HEADER_FIELDS {
                return Err(bad("too many fields"));
            }
            let (k, v) = line.split_once(':').ok_or_else(|| bad("a field without ':'"))?;
            if k.is_empty() || k.bytes().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
                return Err(bad("a field name empty or with white space"));
            }
            h.fields.push((k.to_string(), v.trim().to_string()));
        }
        Ok(h)
    }

    /// The header block as sent, or what is wrong with a field.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = b"NATS/1.0".to_vec();
        if let Some(code) = self.status {
            if !(100..=999).contains(&code) {
                return Err(format!("status {code} is not three digits"));
            }
            out.extend_from_slice(format!(" {code}").as_bytes());
            if !self.description.is_empty() {
                if self.description.contains(['\r', '\n']) {
                    return Err("a status description with a line break".into());
                }
                out.push(b' ');
                out.extend_from_slice(self.description.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        for (k, v) in &self.fields {
            if k.is_empty()
                || k.bytes().any(|c| c == b':' || c.is_ascii_whitespace() || c.is_ascii_control())
            {
                return Err(format!("header name {k:?} is empty or has ':', white space"));
            }
            if v.contains(['\r', '\n']) {
                return Err(format!("header {k}: value has a line break"));
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok(out)
    }
}

/// One message delivered on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub subject: String,
    pub sid: u64,
    pub reply: Option<String>,
    pub headers: Option<Headers>,
    pub payload: Vec<u8>,
}

impl Msg {
    /// The status code of its header line, if any.
    pub fn status(&self) -> Option<u16> {
        self.headers.as_ref().and_then(|h| h.status)
    }

    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.as_ref().and_then(|h| h.get(key))
    }
}

/// What a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    Info(Box<Info>),
    Msg(Msg),
    Ping,
    Pong,
    Ok,
    /// `-ERR 'text'`: the text without its quotes.
    Err(String),
}

impl ServerOp {
    /// The bytes a server would send for this operation (for tests, test
    /// peers and the fuzzer's round trip). `Info` carries only what weaver
    /// reads.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServerOp::Info(i) => {
                let v = serde_json::json!({
                    "server_id": i.server_id, "server_name": i.server_name,
                    "version": i.version, "max_payload": i.max_payload,
                    "headers": i.headers, "jetstream": i.jetstream,
                    "auth_required": i.auth_required, "tls_required": i.tls_required,
                    "connect_urls": i.connect_urls,
                });
                format!("INFO {v}\r\n").into_bytes()
            }
            ServerOp::Msg(m) => {
                let reply = m.reply.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
                let mut out;
                match &m.headers {
                    Some(h) => {
                        let hb = h.encode().unwrap_or_else(|_| b"NATS/1.0\r\n\r\n".to_vec());
                        let total = hb.len() + m.payload.len();
                        out =
                            format!("HMSG {} {}{reply} {} {total}\r\n", m.subject, m.sid, hb.len())
                                .into_bytes();
                        out.extend_from_slice(&hb);
                    }
                    None => {
                        out = format!("MSG {} {}{reply} {}\r\n", m.subject, m.sid, m.payload.len())
                            .into_bytes();
                    }
                }
                out.extend_from_slice(&m.payload);
                out.extend_from_slice(b"\r\n");
                out
            }
            ServerOp::Ping => b"PING\r\n".to_vec(),
            ServerOp::Pong => b"PONG\r\n".to_vec(),
            ServerOp::Ok => b"+OK\r\n".to_vec(),
            ServerOp::Err(t) => format!("-ERR '{t}'\r\n").into_bytes(),
        }
    }
}

/// A message whose operation line has been read, waiting for its body.
#[derive(Debug)]
struct Pending {
    subject: String,
    sid: u64,
    reply: Option<String>,
    /// Header bytes (0 for `MSG`), of `total`.
    hdr: Option<usize>,
    total: usize,
    /// The headers and payload, then `\r\n`.
    body: Vec<u8>,
}

/// The server-to-client parser. Feed it bytes in any split: the same
/// operations come out.
#[derive(Debug)]
pub struct Parser {
    line: Vec<u8>,
    pending: Option<Pending>,
    limit: usize,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl Parser {
    /// A parser taking messages of up to `max_payload` (clamped to
    /// [`MAX_PAYLOAD_CAP`]) plus [`HEADER_SLACK`].
    pub fn new(max_payload: usize) -> Self {
        let mut p = Parser { line: Vec::new(), pending: None, limit: 0 };
        p.set_max_payload(max_payload);
        p
    }

    /// The server's `max_payload` changed (a new `INFO`).
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.limit = max_payload.min(MAX_PAYLOAD_CAP) + HEADER_SLACK;
    }

    /// The largest message (headers and payload) taken now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held: a partial line or a partial message.
    pub fn buffered(&self) -> usize {
        self.line.len() + self.pending.as_ref().map_or(0, |p| p.body.len())
    }

    /// Consume bytes: how many were used (at least one of a non-empty
    /// input), and an operation if one completed.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<ServerOp>), ProtoError> {
        if data.is_empty() {
            return Ok((0, None));
        }
        if let Some(p) = &mut self.pending {
            let need = p.total + 2 - p.body.len();
            let take = need.min(data.len());
            p.body.extend_from_slice(&data[..take]);
            if p.body.len() < p.total + 2 {
                return Ok((take, None));
            }
            let p = self.pending.take().expect("pending message");
            return Ok((take, Some(finish(p)?)));
        }
        match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if self.line.len() + i > MAX_CONTROL_LINE + 1 {
                    return Err(ProtoError::LineTooLong);
                }
                self.line.extend_from_slice(&data[..i]);
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > MAX_CONTROL_LINE {
                    return Err(ProtoError::LineTooLong);
                }
                Ok((i + 1, self.op_line(&line)?))
            }
            None => {
                if self.line.len() + data.len() > MAX_CONTROL_LINE + 1 {
                    return Err(ProtoError::LineTooLong);
                }
                self.line.extend_from_slice(data);
                Ok((data.len(), None))
            }
        }
    }

    /// Every operation in `data` (for tests and simple peers).
    pub fn feed_all(&mut self, mut data: &[u8]) -> Result<Vec<ServerOp>, ProtoError> {
        let mut ops = Vec::new();
        while !data.is_empty() {
            let (used, op) = self.feed(data)?;
            data = &data[used..];
            ops.extend(op);
        }
        Ok(ops)
    }

    fn op_line(&mut self, line: &[u8]) -> Result<Option<ServerOp>, ProtoError> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_start_matches([' ', '\t']);
        let (op, rest) = match text.find([' ', '\t']) {
            Some(i) => (&text[..i], text[i..].trim_matches([' ', '\t'])),
            None => (text, ""),
        };
        let upper = op.to_ascii_uppercase();
        let no_args = |name: &'static str, v: ServerOp| {
            if rest.is_empty() {
                Ok(Some(v))
            } else {
                Err(ProtoError::BadArgs { op: name, why: "takes no arguments".into() })
            }
        };
        match upper.as_str() {
            "PING" => no_args("PING", ServerOp::Ping),
            "PONG" => no_args("PONG", ServerOp::Pong),
            "+OK" => no_args("+OK", ServerOp::Ok),
            "-ERR" => {
                let t = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')).unwrap_or(rest);
                Ok(Some(ServerOp::Err(t.to_string())))
            }
            "INFO" => {
                let info = Info::parse(rest.as_bytes())?;
                self.set_max_payload(info.max_payload);
                Ok(Some(ServerOp::Info(Box::new(info))))
            }
            "MSG" => self.start_msg("MSG", rest, false),
            "HMSG" => self.start_msg("HMSG", rest, true),
            "" => Err(ProtoError::UnknownOp(String::new())),
            _ => Err(ProtoError::UnknownOp(op.chars().take(32).collect())),
        }
    }

    fn start_msg(
        &mut self,
        op: &'static str,
        rest: &str,
        headers: bool,
    ) -> Result<Option<ServerOp>, ProtoError> {
        let bad = |why: &str| ProtoError::BadArgs { op, why: why.to_string() };
        let args: Vec<&str> = rest.split([' ', '\t']).filter(|a| !a.is_empty()).collect();
        let sizes = if headers { 2 } else { 1 };
        let (subject, sid, reply, nums) = match args.len() - sizes.min(args.len()) {
            2 => (args[0], args[1], None, &args[2..]),
            3 => (args[0], args[1], Some(args[2]), &args[3..]),
            _ => return Err(bad("wrong number of arguments")),
        };
        let num = |s: &str| -> Result<usize, ProtoError> {
            if s.is_empty() || s.len() > 12 || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad(&format!("{s:?} is not a size")));
            }
            s.parse().map_err(|_| bad(&format!("{s:?} is not a size")))
        };
        let sid: u64 = if sid.bytes().all(|c| c.is_ascii_digit()) && sid.len() <= 19 {
            sid.parse().map_err(|_| bad("subscription id is not a number"))?
        } else {
            return Err(bad("subscription id is not a number"));
        };
        let (hdr, total) = if headers {
            let (h, t) = (num(nums[0])?, num(nums[1])?);
            if h > t {
                return Err(bad("header size over the total size"));
            }
            if h < 12 {
                return Err(bad("header size too small for NATS/1.0 and an empty line"));
            }
            (Some(h), t)
        } else {
            (None, num(nums[0])?)
        };
        if total > self.limit {
            return Err(ProtoError::TooLarge { size: total, limit: self.limit });
        }
        let p = Pending {
            subject: subject.to_string(),
            sid,
            reply: reply.map(str::to_string),
            hdr,
            total,
            body: Vec::with_capacity(total + 2),
        };
        self.pending = Some(p);
        Ok(None)
    }
}

fn finish(mut p: Pending) -> Result<ServerOp, ProtoError> {
    if &p.body[p.total..] != b"\r\n" {
        return Err(ProtoError::BadTerminator);
    }
    p.body.truncate(p.total);
    let headers = match p.hdr {
        Some(h) => {
            let hs = Headers::parse(&p.body[..h])?;
            p.body.drain(..h);
            Some(hs)
        }
        None => None,
    };
    Ok(ServerOp::Msg(Msg {
        subject: p.subject,
        sid: p.sid,
        reply: p.reply,
        headers,
        payload: p.body,
    }))
}

// ---- what a client sends ----------------------------------------------------

/// A subject weaver may publish to or subscribe on: not empty, no white
/// space or control characters, at most 1024 bytes.
pub fn check_subject(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("an empty subject".into());
    }
    if s.len() > 1024 {
        return Err(format!("subject of {} bytes (at most 1024)", s.len()));
    }
    if s.bytes().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
        return Err(format!("subject {s:?} has white space or control characters"));
    }
    if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
        return Err(format!("subject {s:?} has an empty token"));
    }
    Ok(())
}

/// `CONNECT {json}\r\n`.
pub fn connect(out: &mut Vec<u8>, options: &Value) {
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(options.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `PUB` (no headers) or `HPUB`, checked against `max_payload`.
pub fn publish(
    out: &mut Vec<u8>,
    subject: &str,
    reply: Option<&str>,
    headers: Option<&Headers>,
    payload: &[u8],
    max_payload: usize,
) -> Result<(), String> {
    check_subject(subject)?;
    if let Some(r) = reply {
        check_subject(r)?;
    }
    let hb = match headers {
        Some(h) => Some(h.encode()?),
        None => None,
    };
    let total = payload.len() + hb.as_ref().map_or(0, Vec::len);
    if total > max_payload.min(MAX_PAYLOAD_CAP) {
        return Err(format!(
            "a message of {total} bytes is over the server's max_payload of {max_payload}"
        ));
    }
    let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
    match hb {
        Some(hb) => {
            out.extend_from_slice(
                format!("HPUB {subject}{reply} {} {total}\r\n", hb.len()).as_bytes(),
            );
            out.extend_from_slice(&hb);
        }
        None => out.extend_from_slice(format!("PUB {subject}{reply} {total}\r\n").as_bytes()),
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// `SUB subject [queue] sid\r\n`.
pub fn subscribe(out: &mut Vec<u8>, subject: &str, queue: Option<&str>, sid: u64) {
    let queue = queue.map(|q| format!(" {q}")).unwrap_or_default();
    out.extend_from_slice(format!("SUB {subject}{queue} {sid}\r\n").as_bytes());
}

/// `UNSUB sid [max]\r\n`.
pub fn unsubscribe(out: &mut Vec<u8>, sid: u64, max: Option<u64>) {
    let max = max.map(|m| format!(" {m}")).unwrap_or_default();
    out.extend_from_slice(format!("UNSUB {sid}{max}\r\n").as_bytes());
}

pub fn ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING\r\n");
}

pub fn pong(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PONG\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation in `data`, fed whole and a byte at a time: both
    /// ways must agree.
    fn parse(data: &[u8]) -> Result<Vec<ServerOp>, ProtoError> {
        let whole = Parser::default().feed_all(data);
        let mut p = Parser::default();
        let mut ops = Vec::new();
        let mut bytewise = Ok(());
        for b in data {
            match p.feed(std::slice::from_ref(b)) {
                Ok((used, op)) => {
                    assert_eq!(used, 1);
                    ops.extend(op);
                }
                Err(e) => {
                    bytewise = Err(e);
                    break;
                }
            }
        }
        let bytewise = bytewise.map(|()| ops);
        assert_eq!(whole, bytewise, "fed whole and a byte at a time");
        whole
    }

    #[test]
    fn control_ops() {
        let ops =
            parse(b"PING\r\nPONG\r\n+OK\r\n-ERR 'Authorization Violation'\r\nping\r\n").unwrap();
        assert_eq!(
            ops,
            vec![
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Err("Authorization Violation".into()),
                ServerOp::Ping
            ]
        );
    }

    #[test]
    fn info_sets_the_payload_limit() {
        let mut p = Parser::default();
        let line = br#"INFO {"server_id":"NABC","version":"2.9.10","max_payload":2048,"headers":true,"jetstream":true,"connect_urls":["10.0.0.1:4222"]}"#;
        let mut data = line.to_vec();
        data.extend_from_slice(b"\r\n");
        let ops = p.feed_all(&data).unwrap();
        let ServerOp::Info(i) = &ops[0] else { panic!("{ops:?}") };
        assert_eq!(i.server_id, "NABC");
        assert_eq!(i.max_payload, 2048);
        assert!(i.headers && i.jetstream && !i.auth_required);
        assert_eq!(i.connect_urls, ["10.0.0.1:4222"]);
        assert_eq!(p.limit(), 2048 + HEADER_SLACK);
        let too_big = format!("MSG a 1 {}\r\n", 2048 + HEADER_SLACK + 1);
        assert_eq!(
            p.feed_all(too_big.as_bytes()),
            Err(ProtoError::TooLarge { size: 2048 + HEADER_SLACK + 1, limit: p.limit() })
        );
        assert!(p.buffered() <= too_big.len(), "nothing reserved for a refused message");
        assert!(matches!(parse(b"INFO [1]\r\n"), Err(ProtoError::BadInfo(_))));
        assert!(matches!(parse(b"INFO {\"max_payload\":-1}\r\n"), Err(ProtoError::BadInfo(_))));
    }

    #[test]
    fn msg_with_and_without_reply() {
        let ops = parse(b"MSG foo.bar 9 5\r\nhello\r\nMSG a 1 _INBOX.x 0\r\n\r\n").unwrap();
        assert_eq!(
            ops,
            vec![
                ServerOp::Msg(Msg {
                    subject: "foo.bar".into(),
                    sid: 9,
                    reply: None,
                    headers: None,
                    payload: b"hello".to_vec()
                }),
                ServerOp::Msg(Msg {
                    subject: "a".into(),
                    sid: 1,
                    reply: Some("_INBOX.x".into()),
                    headers: None,
                    payload: vec![]
                }),
            ]
        );
        // A payload may hold CRLF and anything else.
        let ops = parse(b"MSG a 1 4\r\n\r\n\r\n\r\n").unwrap();
        let ServerOp::Msg(m) = &ops[0] else { panic!() };
        assert_eq!(m.payload, b"\r\n\r\n");
    }

    #[test]
    fn hmsg_with_status_lines() {
        let hb =
            b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 7\r\nNats-Last-Stream: 12\r\n\r\n";
        let mut data = format!("HMSG _INBOX.w.1 3 {} {}\r\n", hb.len(), hb.len()).into_bytes();
        data.extend_from_slice(hb);
        data.extend_from_slice(b"\r\n");
        let ops = parse(&data).unwrap();
        let ServerOp::Msg(m) = &ops[0] else { panic!() };
        assert_eq!(m.status(), Some(100));
        let h = m.headers.as_ref().unwrap();
        assert_eq!(h.description, "Idle Heartbeat");
        assert_eq!(m.header("nats-last-stream"), Some("12"));
        assert!(m.payload.is_empty());

        let hb = b"NATS/1.0 503\r\n\r\n";
        let mut data = format!("HMSG _INBOX.r 2 {} {}\r\n", hb.len(), hb.len()).into_bytes();
        data.extend_from_slice(hb);
        data.extend_from_slice(b"\r\n");
        let ServerOp::Msg(m) = &parse(&data).unwrap()[0] else { panic!() };
        assert_eq!((m.status(), m.headers.as_ref().unwrap().description.as_str()), (Some(503), ""));

        let hb = b"NATS/1.0\r\nNats-Msg-Id: abc\r\nKV-Operation: DEL\r\n\r\n";
        let mut data = format!("HMSG $KV.b.k 4 r.1 {} {}\r\n", hb.len(), hb.len() + 3).into_bytes();
        data.extend_from_slice(hb);
        data.extend_from_slice(b"xyz\r\n");
        let ServerOp::Msg(m) = &parse(&data).unwrap()[0] else { panic!() };
        assert_eq!(m.status(), None);
        assert_eq!(m.header("KV-Operation"), Some("DEL"));
        assert_eq!(m.reply.as_deref(), Some("r.1"));
        assert_eq!(m.payload, b"xyz");
    }

    #[test]
    fn bad_input_is_an_error_with_a_message() {
        let cases: &[(&[u8], &str)] = &[
            (b"FOO bar\r\n", "unknown protocol operation \"FOO\""),
            (b"\r\n", "unknown protocol operation \"\""),
            (b"PING x\r\n", "PING: takes no arguments"),
            (b"MSG a\r\n", "MSG: wrong number of arguments"),
            (b"MSG a b 1\r\n", "MSG: subscription id is not a number"),
            (b"MSG a 1 -1\r\n", "MSG: \"-1\" is not a size"),
            (b"MSG a 1 2\r\nabXY", "message payload not followed by CRLF"),
            (b"HMSG a 1 20 10\r\n", "HMSG: header size over the total size"),
            (b"HMSG a 1 2 2\r\n", "HMSG: header size too small for NATS/1.0 and an empty line"),
            (
                b"HMSG a 1 12 12\r\nHTTP/1.0\r\n\r\n\r\n",
                "message headers: no NATS/1.0 version line",
            ),
            (
                b"HMSG a 1 14 14\r\nNATS/1.0 1\r\n\r\n\r\n",
                "message headers: status is not a three-digit code",
            ),
            (
                b"HMSG a 1 15 15\r\nNATS/1.0\r\nx\r\n\r\n\r\n",
                "message headers: a field without ':'",
            ),
        ];
        for (data, want) in cases {
            let e = parse(data).expect_err(&String::from_utf8_lossy(data));
            assert_eq!(e.to_string(), *want, "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn oversized_lines_are_refused_without_holding_them() {
        let mut p = Parser::default();
        let long = vec![b'x'; MAX_CONTROL_LINE + 10];
        assert_eq!(p.feed_all(&long), Err(ProtoError::LineTooLong));
        let mut p = Parser::default();
        let mut r = Ok(());
        for b in &long {
            if let Err(e) = p.feed(std::slice::from_ref(b)) {
                r = Err(e);
                break;
            }
            assert!(p.buffered() <= MAX_CONTROL_LINE + 1);
        }
        assert_eq!(r, Err(ProtoError::LineTooLong));
        // The longest allowed line still parses.
        let mut info = b"INFO {\"x\":\"".to_vec();
        info.resize(MAX_CONTROL_LINE - 2, b'y');
        info.extend_from_slice(b"\"}\r\n");
        assert!(matches!(parse(&info).unwrap()[0], ServerOp::Info(_)));
    }

    #[test]
    fn client_ops_encode() {
        let mut out = Vec::new();
        connect(&mut out, &serde_json::json!({"verbose": false}));
        subscribe(&mut out, "$KV.b.>", None, 1);
        subscribe(&mut out, "q", Some("workers"), 2);
        unsubscribe(&mut out, 1, None);
        unsubscribe(&mut out, 2, Some(5));
        publish(&mut out, "a.b", None, None, b"hi", 1024).unwrap();
        publish(&mut out, "a.b", Some("_INBOX.1"), None, b"", 1024).unwrap();
        ping(&mut out);
        pong(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CONNECT {\"verbose\":false}\r\nSUB $KV.b.> 1\r\nSUB q workers 2\r\nUNSUB 1\r\n\
             UNSUB 2 5\r\nPUB a.b 2\r\nhi\r\nPUB a.b _INBOX.1 0\r\n\r\nPING\r\nPONG\r\n"
        );
        let mut out = Vec::new();
        let h = Headers::new()
            .with("Nats-Msg-Id", "w1")
            .with("Nats-Expected-Last-Subject-Sequence", "0");
        publish(&mut out, "$KV.b.k", Some("_INBOX.2"), Some(&h), b"{}", 1024).unwrap();
        let hb = "NATS/1.0\r\nNats-Msg-Id: w1\r\nNats-Expected-Last-Subject-Sequence: 0\r\n\r\n";
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("HPUB $KV.b.k _INBOX.2 {} {}\r\n{hb}{{}}\r\n", hb.len(), hb.len() + 2)
        );
    }

    #[test]
    fn publishing_checks_subjects_headers_and_max_payload() {
        let mut out = Vec::new();
        assert!(publish(&mut out, "a b", None, None, b"", 10).unwrap_err().contains("white space"));
        assert!(publish(&mut out, "", None, None, b"", 10).is_err());
        assert!(publish(&mut out, "a..b", None, None, b"", 10)
            .unwrap_err()
            .contains("empty token"));
        let e = publish(&mut out, "a", None, None, &[0; 11], 10).unwrap_err();
        assert_eq!(e, "a message of 11 bytes is over the server's max_payload of 10");
        let h = Headers::new().with("Bad Key", "v");
        assert!(publish(&mut out, "a", None, Some(&h), b"", 100).is_err());
        let h = Headers::new().with("K", "v\r\nInjected: 1");
        assert!(publish(&mut out, "a", None, Some(&h), b"", 100)
            .unwrap_err()
            .contains("line break"));
        assert!(out.is_empty(), "nothing written for a refused message");
    }

    #[test]
    fn server_ops_round_trip() {
        let ops = vec![
            ServerOp::Info(Box::new(Info {
                server_id: "S".into(),
                max_payload: 4096,
                headers: true,
                ..Info::default()
            })),
            ServerOp::Msg(Msg {
                subject: "x.y".into(),
                sid: 3,
                reply: Some("r".into()),
                headers: Some(Headers {
                    status: Some(409),
                    description: "Consumer Deleted".into(),
                    fields: vec![("A".into(), "b".into())],
                }),
                payload: b"p".to_vec(),
            }),
            ServerOp::Err("Stale Connection".into()),
            ServerOp::Pong,
        ];
        let bytes: Vec<u8> = ops.iter().flat_map(ServerOp::encode).collect();
        assert_eq!(parse(&bytes).unwrap(), ops);
    }
}
