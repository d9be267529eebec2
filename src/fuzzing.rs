//! The body of every fuzz target, one function per decoder of outside
//! bytes. The targets in `fuzz/fuzz_targets/` call these, and
//! `tests/fuzz_corpus.rs` replays the saved corpora through them, so both
//! run the same checks. Each takes arbitrary bytes and panics only when an
//! invariant breaks:
//!
//! - no decoder panics, whatever the bytes: every failure is an error value
//!   with a message;
//! - bytes fed in any split (whole, one at a time, in pieces derived from
//!   the input, through the reactor's direct reads or the blocking reader)
//!   give the same frames and end the same way (clean, cut short after the
//!   same number of bytes, or the same error);
//! - a decoder never reserves more than its framing's largest frame, and
//!   refuses a bad head before reserving anything;
//! - what decodes re-encodes to bytes that decode to the same value;
//! - the C reader (through FFI) and the Rust decoder read the same frames
//!   and stop at the same place for the same reason.

use std::fmt::Debug;
use std::io::{self, Read};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Decoder, Framing};
use crate::ffi::{self, ServeResult};
use crate::protocol::{self, ClientMsg, Handshake, ServerMsg};
use crate::{frame, stream, supervise, wire};

/// Control framing and message decoding: `frame::Decoder` fed every way,
/// each frame's message (and the input itself) decoded as each message
/// type.
pub fn control_frame(data: &[u8]) {
    let out = decode_every_way::<frame::Control>(data, frame::MAX_CONTROL_FRAME - 4);
    for f in &out.frames {
        assert!(f.meta.len() <= frame::MAX_META, "message of {} bytes", f.meta.len());
        if f.by_fd {
            // The size of a payload by fd; without its fd it is refused.
            assert_eq!(f.payload.len(), 8, "a frame by fd carries the 8 size bytes");
            assert!(crate::fdpass::announced(&f.payload, None).is_err());
        }
        messages(&f.meta);
    }
    messages(data);
}

/// Compute framing: `wire::FrameDecoder` fed every way, each payload (and
/// the input itself) parsed as a HELLO.
pub fn compute_frame(data: &[u8]) {
    let out = decode_every_way::<wire::Compute>(data, wire::MAX_PAYLOAD);
    for f in &out.frames {
        let h = &f.header;
        assert!((1..=wire::kind::LAST).contains(&h.kind), "kind {}", h.kind);
        assert_eq!(h.payload_len as usize, f.payload.len());
        hello(&f.payload);
    }
    hello(data);
}

/// The C daemon's frame reader through FFI (`ffi::read_frames`): the same
/// outcome in one read, a byte per read and in pieces derived from the
/// input, payloads kept or counted; and the same frames and end as the Rust
/// decoder.
pub fn c_reader(data: &[u8]) {
    let whole = ffi::read_frames(data, 0, true);
    let chunk = 1 + (fnv1a(data) % 97) as usize;
    for (chunk, keep) in [(1, true), (chunk, true), (chunk, false)] {
        let r = ffi::read_frames(data, chunk, keep);
        assert_eq!(
            (r.result, r.partial, &r.message),
            (whole.result, whole.partial, &whole.message),
            "read {chunk} bytes at a time (keep {keep})"
        );
        assert_eq!(r.frames.len(), whole.frames.len(), "read {chunk} bytes at a time");
        for ((h, p), (wh, wp)) in r.frames.iter().zip(&whole.frames) {
            assert_eq!(h, wh, "read {chunk} bytes at a time");
            assert_eq!(p, if keep { wp } else { &[][..] }, "read {chunk} bytes at a time");
        }
    }
    assert!(!whole.message.is_empty());

    let rust = decode(&mut Decoder::<wire::Compute>::new(), data, wire::MAX_PAYLOAD, &mut Whole);
    assert_eq!(whole.frames.len(), rust.frames.len(), "C: {}", whole.message);
    for ((h, p), f) in whole.frames.iter().zip(&rust.frames) {
        let c = wire::Header {
            kind: h.kind,
            request_id: h.request_id,
            code: h.code,
            payload_len: h.payload_len,
        };
        assert_eq!((h.magic, h.version), (wire::MAGIC, wire::VERSION));
        assert_eq!(c, f.header);
        assert_eq!(p, &f.payload);
    }
    match (&rust.end, whole.result) {
        (End::Clean, ServeResult::PeerClosed) => assert_eq!(whole.partial, 0),
        (End::Partial(n), ServeResult::PeerClosed) => assert_eq!(whole.partial, *n),
        (End::Bad(e), ServeResult::Protocol) => {
            assert_eq!(whole.partial, wire::HEADER_SIZE);
            let word = match e.split_whitespace().next() {
                Some("bad") if e.starts_with("bad frame magic") => "bad magic",
                Some("compute") => "protocol version",
                Some("unknown") => "unknown frame kind",
                _ => "over the maximum",
            };
            assert!(whole.message.contains(word), "C: {:?}, Rust: {e:?}", whole.message);
        }
        (end, r) => panic!("Rust ended {end:?}, C {r:?}: {}", whole.message),
    }
}

/// Configurations with more instances than this are not expanded here
/// (each instance is a full copy of its process's settings).
const EXPAND_MAX: u64 = 64;

/// The `weaver.toml` loader on any text (invalid UTF-8 replaced): a
/// configuration that expands to uniquely named instances, or errors that
/// each say something, with positions in the text, in file order.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // `[fleet]` is read by its own parser: a value or an error that says
    // something.
    match crate::fleet::config::parse(&text) {
        Ok(Some(f)) => assert!(!f.urls.is_empty() && !f.node.is_empty()),
        Ok(None) => {}
        Err(e) => assert!(!e.is_empty(), "an empty [fleet] error"),
    }
    let errors = match supervise::parse(&text, "weaver.toml") {
        Ok(c) => {
            let total: u64 = c.processes.iter().map(|p| u64::from(p.instances)).sum();
            if total <= EXPAND_MAX {
                let instances = c.expand();
                assert_eq!(instances.len() as u64, total);
                let mut names: Vec<&str> = instances.iter().map(|i| i.name.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                assert_eq!(names.len(), instances.len(), "two instances share a name");
            }
            return;
        }
        Err(errors) => errors,
    };
    assert!(!errors.0.is_empty(), "an error without a message");
    let lines = text.split('\n').count();
    let mut last = (0, 0);
    for e in &errors.0 {
        assert!(!e.message.trim().is_empty(), "an empty message at {}:{}", e.line, e.col);
        assert_eq!(e.file, "weaver.toml");
        assert!((1..=lines).contains(&e.line) && e.col >= 1, "{e}");
        assert!((e.line, e.col) >= last, "errors out of file order: {errors}");
        last = (e.line, e.col);
    }
}

// ---- decoders fed every way -----------------------------------------------

/// How a run of a decoder over the whole input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Between frames.
    Clean,
    /// Inside a frame, after this many of its bytes.
    Partial(usize),
    /// At a bad head; the error's text.
    Bad(String),
}

#[derive(Debug, PartialEq)]
struct Outcome<T> {
    frames: Vec<T>,
    end: End,
}

/// Decode `data` whole, a byte at a time, in pieces with the reactor's
/// direct reads, and through the blocking reader; all four must agree.
fn decode_every_way<F: Framing>(data: &[u8], cap: usize) -> Outcome<F::Frame>
where
    F::Frame: PartialEq + Debug,
{
    let whole = decode(&mut Decoder::<F>::new(), data, cap, &mut Whole);
    let seed = fnv1a(data);
    let bytes = decode(&mut Decoder::<F>::new(), data, cap, &mut Splits::fixed(1));
    assert_eq!(bytes, whole, "fed a byte at a time");
    let pieces = decode(&mut Decoder::<F>::new(), data, cap, &mut Splits::new(seed));
    assert_eq!(pieces, whole, "fed in pieces");
    let blocking = read_blocking::<F>(data, cap, Splits::new(seed.rotate_left(32)));
    assert_eq!(blocking, whole, "read by the blocking reader");
    whole
}

/// Chunk lengths to feed.
trait Chunking {
    fn next_len(&mut self) -> usize;
}

/// Everything at once.
struct Whole;

impl Chunking for Whole {
    fn next_len(&mut self) -> usize {
        usize::MAX
    }
}

/// Pseudo-random lengths from a seed (derived from the input, so a saved
/// input replays the same splits), all at most `max`.
struct Splits {
    state: u64,
    max: usize,
}

impl Splits {
    fn new(seed: u64) -> Splits {
        let max = [1, 7, 64, 4096][(seed % 4) as usize];
        Splits { state: seed | 1, max }
    }

    fn fixed(len: usize) -> Splits {
        Splits { state: 0, max: len }
    }
}

impl Chunking for Splits {
    fn next_len(&mut self) -> usize {
        if self.state == 0 {
            return self.max;
        }
        // xorshift64
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        1 + (self.state % self.max as u64) as usize
    }
}

/// Feed `data` in the chunks `split` gives, the way the reactor does: a
/// large payload's bytes go straight into the buffer `direct_target` gives
/// (never past its reserved room), everything else through `feed`.
fn decode<F: Framing>(
    dec: &mut Decoder<F>,
    mut data: &[u8],
    cap: usize,
    split: &mut dyn Chunking,
) -> Outcome<F::Frame> {
    let mut frames = Vec::new();
    while !data.is_empty() {
        let n = split.next_len().min(data.len());
        if let Some(v) = dec.direct_target() {
            let room = v.capacity() - v.len();
            assert!(room > 0, "a direct target with no room");
            let n = n.min(room);
            v.extend_from_slice(&data[..n]);
            assert_eq!(v.capacity() - v.len(), room - n, "a direct read grew the buffer");
            data = &data[n..];
            frames.extend(dec.direct_done());
            assert!(dec.reserved() <= cap, "{} bytes reserved", dec.reserved());
            continue;
        }
        let mut piece = &data[..n];
        data = &data[n..];
        while !piece.is_empty() {
            match dec.feed(piece) {
                Ok((used, frame)) => {
                    assert!(used > 0 && used <= piece.len(), "feed used {used} of {}", piece.len());
                    piece = &piece[used..];
                    frames.extend(frame);
                }
                Err(e) => return Outcome { frames, end: bad(dec, e) },
            }
            assert!(dec.reserved() <= cap, "{} bytes reserved", dec.reserved());
        }
    }
    let end = if dec.is_idle() { End::Clean } else { End::Partial(dec.partial_len()) };
    assert_eq!(dec.is_idle(), dec.partial_len() == 0);
    Outcome { frames, end }
}

/// The end at a bad head: an error with a message, nothing reserved.
fn bad<F: Framing>(dec: &Decoder<F>, e: F::Error) -> End {
    let text = e.to_string();
    assert!(!text.is_empty(), "an error without a message: {e:?}");
    assert_eq!(dec.reserved(), 0, "a bad head reserved memory: {e}");
    End::Bad(text)
}

/// A blocking reader that returns the bytes in pieces.
struct Trickle<'a> {
    data: &'a [u8],
    split: Splits,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.split.next_len().min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Read every frame with `stream::read_frame`, as the command line does.
fn read_blocking<F: Framing>(data: &[u8], cap: usize, split: Splits) -> Outcome<F::Frame> {
    let mut r = Trickle { data, split };
    let mut dec = Decoder::<F>::new();
    let mut frames = Vec::new();
    loop {
        let got = stream::read_frame(&mut dec, &mut r);
        assert!(dec.reserved() <= cap, "{} bytes reserved", dec.reserved());
        let end = match got {
            Ok(Some(f)) => {
                frames.push(f);
                continue;
            }
            Ok(None) => End::Clean,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => End::Partial(dec.partial_len()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                assert_eq!(dec.reserved(), 0, "a bad head reserved memory: {e}");
                End::Bad(e.to_string())
            }
            Err(e) => panic!("read_frame failed with {e:?}"),
        };
        return Outcome { frames, end };
    }
}

// ---- messages ---------------------------------------------------------------

/// `bytes` decoded as each message type the control socket carries.
fn messages(bytes: &[u8]) {
    round_trip::<Handshake>(bytes, "handshake");
    round_trip::<ClientMsg>(bytes, "request");
    round_trip::<ServerMsg>(bytes, "reply");
}

/// A message that decodes encodes to bytes that decode to it again; one
/// that does not is an error that says so.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8], what: &str) {
    match protocol::decode::<T>(bytes, what) {
        Ok(m) => {
            let again = protocol::encode(&m);
            match protocol::decode::<T>(&again, what) {
                Ok(m2) => assert_eq!(m2, m, "{what} changed in a round trip"),
                Err(e) => panic!("{what} {m:?} encodes to bytes that do not decode: {e}"),
            }
        }
        Err(e) => assert!(e.starts_with("malformed ") && e.len() > 10 + what.len(), "{e:?}"),
    }
}

/// A HELLO payload that parses encodes back to the same bytes (the
/// reserved field aside) and parses to the same value.
fn hello(p: &[u8]) {
    match wire::Hello::parse(p) {
        Ok(h) => {
            let again = h.encode();
            assert_eq!(again.len(), p.len());
            assert_eq!((&again[..2], &again[4..]), (&p[..2], &p[4..]));
            assert_eq!(wire::Hello::parse(&again), Ok(h));
        }
        Err(e) => assert!(e.starts_with("HELLO "), "{e:?}"),
    }
}

/// FNV-1a, to derive splits from the input.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The weavelet line codec (`weavelet::codec`): `LineDecoder` fed whole, a
/// byte at a time and in pieces derived from the input gives the same
/// lines and ends the same way; it never holds more than one bounded line;
/// every line parses to a message or an error with a message.
pub fn weavelet_line(data: &[u8]) {
    use crate::codec::StreamDecoder;
    use crate::weavelet::codec::{parse, LineDecoder};
    use crate::weavelet::MAX_LINE;

    fn run(data: &[u8], piece: impl Fn(usize) -> usize) -> (Vec<Vec<u8>>, Option<String>) {
        let mut d = LineDecoder::new();
        let mut lines = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let end = (at + piece(at).max(1)).min(data.len());
            let mut chunk = &data[at..end];
            while !chunk.is_empty() {
                match d.feed(chunk) {
                    Ok((used, line)) => {
                        assert!(used > 0 && used <= chunk.len(), "used {used} of {}", chunk.len());
                        chunk = &chunk[used..];
                        lines.extend(line);
                    }
                    Err(e) => return (lines, Some(e.to_string())),
                }
                assert!(d.buffered() <= MAX_LINE, "holds {} bytes", d.buffered());
            }
            at = end;
        }
        (lines, None)
    }
    let whole = run(data, |_| usize::MAX);
    assert_eq!(run(data, |_| 1), whole, "a byte at a time");
    let seed = data.first().copied().unwrap_or(1) as usize;
    assert_eq!(run(data, |at| (at * 31 + seed) % 97 + 1), whole, "in pieces");
    for line in &whole.0 {
        assert!(line.len() <= MAX_LINE);
        if let Err(e) = parse(line) {
            assert!(!e.is_empty(), "an error says what is wrong");
        }
    }
}

/// The HTTP endpoint's request handling (`http::serve`, over `httparse`),
/// driven as its connection drives it: bytes arrive in pieces into a
/// buffer never over `MAX_HEAD`, and each whole request is answered.
/// Invariants: nothing panics; every response is well-formed (status line,
/// headers, a Content-Length that matches its body, except HEAD's) with a
/// known status and a bounded size; a request is answered at once once its
/// head is whole, so feeding the bytes whole, a byte at a time or in
/// pieces derived from the input gives the same answers.
pub fn http_request(data: &[u8]) {
    use crate::http::request::MAX_HEAD;
    use crate::http::{serve, Served};

    let flags = data.first().copied().unwrap_or(0);
    let snapshot = || fuzz_snapshot(flags);

    fn run(
        data: &[u8],
        piece: impl Fn(usize) -> usize,
        snap: &dyn Fn() -> crate::http::Snapshot,
    ) -> Vec<(u16, bool, Vec<u8>)> {
        let mut buf: Vec<u8> = Vec::new();
        let mut answers = Vec::new();
        let mut at = 0;
        loop {
            if !buf.is_empty() {
                let mut out = Vec::new();
                match serve(&buf, &mut |_| snap(), &mut out) {
                    Served::Answered { used, close, status } => {
                        assert!(used > 0 && used <= buf.len(), "used {used} of {}", buf.len());
                        check_response(&out, status);
                        answers.push((status, close, out));
                        buf.drain(..used);
                        if close {
                            return answers;
                        }
                        continue;
                    }
                    Served::Partial => assert!(buf.len() < MAX_HEAD, "partial at {}", buf.len()),
                }
            }
            if at >= data.len() {
                return answers;
            }
            let room = MAX_HEAD - buf.len();
            let end = (at + piece(at).max(1).min(room)).min(data.len());
            buf.extend_from_slice(&data[at..end]);
            at = end;
        }
    }
    let whole = run(data, |_| usize::MAX, &snapshot);
    assert_eq!(run(data, |_| 1, &snapshot), whole, "a byte at a time");
    let seed = flags as usize;
    assert_eq!(run(data, |at| (at * 31 + seed) % 97 + 1, &snapshot), whole, "in pieces");
}

/// A response is a status line, headers with a Content-Length, a blank
/// line, and a body of that length (none for HEAD, whose length is GET's).
fn check_response(out: &[u8], status: u16) {
    assert!([200, 400, 404, 405, 408, 431, 503].contains(&status), "unexpected status {status}");
    assert!(out.len() < 1 << 20, "a {}-byte response", out.len());
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a head that ends") + 4;
    let head = std::str::from_utf8(&out[..end]).expect("an ASCII head");
    let first = head.lines().next().unwrap();
    assert!(first.starts_with(&format!("HTTP/1.1 {status} ")), "status line {first:?}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("a number");
    let body = &out[end..];
    assert!(body.is_empty() || body.len() == len, "body {} vs Content-Length {len}", body.len());
    for l in head.lines().skip(1).filter(|l| !l.is_empty()) {
        assert!(l.contains(": ") && !l.contains('\r'), "header line {l:?}");
    }
}

/// A daemon's state for the HTTP target; `flags` varies what health says.
fn fuzz_snapshot(flags: u8) -> crate::http::Snapshot {
    use crate::protocol::{ComputeState, ComputeStatus, ProcRow, ProcState};
    let row = |name: &str, state| ProcRow {
        name: name.into(),
        process: name.split('.').next().unwrap_or(name).into(),
        state,
        pid: Some(42),
        restarts: 2,
        next_restart_ms: None,
        last_exit: Some("exited with code 1".into()),
        uptime_ms: Some(1200),
        reason: (flags & 8 != 0).then(|| "gave \"up\"\n".into()),
        gpus: None,
    };
    let web = if flags & 4 != 0 { ProcState::Ready } else { ProcState::Running };
    let mut tally = crate::daemon::tally::Tally::default();
    tally.record("echo", "ok", Some(std::time::Duration::from_millis(3)));
    crate::http::Snapshot {
        version: "0.1.0".into(),
        uptime: std::time::Duration::from_secs(9),
        stopping: flags & 1 != 0,
        started_up: flags & 2 != 0,
        compute: ComputeStatus {
            pid: Some(7),
            state: if flags & 16 != 0 { ComputeState::Backoff } else { ComputeState::Ready },
            bin: "compute-daemon".into(),
            workers: Some(2),
            restarts: 1,
            hangs: 0,
            in_flight: 0,
            queued: 0,
            served: 1,
            errors: 0,
            cancelled: 0,
            timed_out: 0,
            busy_rejected: 0,
            dropped_late: 0,
            last_exit: None,
            last_error: None,
            next_restart_ms: None,
        },
        tally,
        procs: vec![
            crate::http::ProcSnap { row: row("web.0", web), ready_probe: true },
            crate::http::ProcSnap {
                row: row("job", ProcState::Exited { code: Some(1) }),
                ready_probe: false,
            },
        ],
        weavelets: Vec::new(),
        http_connections: 3,
        fleet: None,
    }
}

/// What JetStream's API answers, decoded by every reader weaver has: an
/// error value with a description, never a panic.
fn jetstream(payload: &[u8]) {
    use crate::fleet::kv;
    if let Err(e) = kv::api_response(payload) {
        assert!(!e.description.is_empty());
    }
    let _ = kv::pub_ack(payload);
    let _ = kv::stream_info(payload);
    if let Ok(m) = kv::stored(payload) {
        let _ = m.subject.len();
    }
    let _ = crate::fleet::proto::Headers::parse(payload);
    let _ = kv::ack_meta(&String::from_utf8_lossy(payload));
}

/// The NATS protocol parser (`fleet::proto::Parser`): fed whole, a byte at
/// a time and in pieces derived from the input gives the same operations
/// and ends the same way; it never holds more than one bounded line or
/// one message within its limit; every operation re-encodes to bytes that
/// parse to the same operation; the JetStream readers (API replies, acks,
/// stored messages, ack subjects) take the input and every payload.
pub fn nats_proto(data: &[u8]) {
    use crate::fleet::proto::{Parser, ServerOp, MAX_CONTROL_LINE, MAX_PAYLOAD_CAP};

    type Run = (Vec<ServerOp>, Option<String>);
    fn run(data: &[u8], piece: impl Fn(usize) -> usize) -> Run {
        let mut p = Parser::default();
        let mut ops = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let end = (at + piece(at).max(1)).min(data.len());
            let mut chunk = &data[at..end];
            while !chunk.is_empty() {
                match p.feed(chunk) {
                    Ok((used, op)) => {
                        assert!(used > 0 && used <= chunk.len(), "used {used} of {}", chunk.len());
                        chunk = &chunk[used..];
                        ops.extend(op);
                    }
                    Err(e) => return (ops, Some(e.to_string())),
                }
                let bound = (MAX_CONTROL_LINE + 1).max(p.limit() + 2);
                assert!(p.buffered() <= bound, "holds {} bytes", p.buffered());
                assert!(p.limit() <= MAX_PAYLOAD_CAP + crate::fleet::proto::HEADER_SLACK);
            }
            at = end;
        }
        (ops, None)
    }
    let whole = run(data, |_| usize::MAX);
    assert_eq!(run(data, |_| 1), whole, "a byte at a time");
    let seed = data.first().copied().unwrap_or(1) as usize;
    assert_eq!(run(data, |at| (at * 31 + seed) % 97 + 1), whole, "in pieces");
    if let Some(e) = &whole.1 {
        assert!(!e.is_empty(), "an error says what is wrong");
    }
    jetstream(data);
    for op in &whole.0 {
        if let ServerOp::Msg(m) = op {
            jetstream(&m.payload);
            if let Some(r) = &m.reply {
                let _ = crate::fleet::kv::ack_meta(r);
            }
        }
        let bytes = op.encode();
        let mut p = Parser::new(MAX_PAYLOAD_CAP);
        let again = p.feed_all(&bytes).unwrap_or_else(|e| panic!("{op:?} re-encoded: {e}"));
        match (op, &again[..]) {
            // INFO carries only what weaver reads: compare that.
            (ServerOp::Info(a), [ServerOp::Info(b)]) => assert_eq!(a, b),
            (_, [b]) => assert_eq!(op, b, "re-encoded"),
            _ => panic!("{op:?} re-encoded to {again:?}"),
        }
    }
}
