//! Compute wire frames, the Rust half of `include/weaver_compute.h`.
//!
//! Pure: encode and decode headers, an incremental decoder that never holds
//! more than one maximum frame, and the HELLO payload. Every constant comes
//! from the header through the bindgen bindings, so the two sides cannot
//! drift apart silently.

use std::fmt;

use crate::codec::{self, Framing};
use crate::ffi;

/// "WVRC" on the wire.
pub const MAGIC: u32 = ffi::WC_MAGIC;
/// Protocol version both sides must speak.
pub const VERSION: u16 = ffi::WC_PROTOCOL_VERSION as u16;
/// Bytes in an encoded header.
pub const HEADER_SIZE: usize = ffi::WC_HEADER_SIZE as usize;
/// Largest frame, header included.
pub const MAX_FRAME: usize = ffi::WC_MAX_FRAME as usize;
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = ffi::WC_MAX_PAYLOAD as usize;
/// Inline payload of a `*_FD` frame: the u64 LE size of its memfd payload.
pub const FD_INFO_SIZE: usize = ffi::WC_FD_INFO_SIZE as usize;
/// Largest payload one memfd may carry.
pub const MAX_FD_PAYLOAD: u64 = ffi::WC_MAX_FD_PAYLOAD;
/// Payloads from this size on go by memfd.
pub const FD_THRESHOLD: usize = ffi::WC_FD_THRESHOLD as usize;

/// Frame kinds (`enum wc_frame_kind`).
pub mod kind {
    use crate::ffi::wc_frame_kind as k;
    pub const HELLO: u16 = k::WC_FRAME_HELLO as u16;
    pub const REQUEST: u16 = k::WC_FRAME_REQUEST as u16;
    pub const RESPONSE: u16 = k::WC_FRAME_RESPONSE as u16;
    pub const CANCEL: u16 = k::WC_FRAME_CANCEL as u16;
    pub const PING: u16 = k::WC_FRAME_PING as u16;
    pub const PONG: u16 = k::WC_FRAME_PONG as u16;
    pub const SHUTDOWN: u16 = k::WC_FRAME_SHUTDOWN as u16;
    /// REQUEST whose payload is the sealed memfd sent with it.
    pub const REQUEST_FD: u16 = k::WC_FRAME_REQUEST_FD as u16;
    /// RESPONSE whose payload is the sealed memfd sent with it.
    pub const RESPONSE_FD: u16 = k::WC_FRAME_RESPONSE_FD as u16;
    /// Highest valid kind.
    pub const LAST: u16 = RESPONSE_FD;
}

/// Ops (`enum wc_op`).
pub mod op {
    use crate::ffi::wc_op as o;
    pub const ECHO: u32 = o::WC_OP_ECHO;
    pub const RENDER: u32 = o::WC_OP_RENDER;
    pub const SLEEP: u32 = o::WC_OP_SLEEP;
    pub const INFO: u32 = o::WC_OP_INFO;
}

/// Response statuses (`enum wc_status`).
pub mod status {
    use crate::ffi::wc_status as s;
    pub const OK: u32 = s::WC_STATUS_OK;
    pub const UNKNOWN_OP: u32 = s::WC_STATUS_UNKNOWN_OP;
    pub const BAD_REQUEST: u32 = s::WC_STATUS_BAD_REQUEST;
    pub const TOO_LARGE: u32 = s::WC_STATUS_TOO_LARGE;
    pub const CANCELLED: u32 = s::WC_STATUS_CANCELLED;
    pub const BUSY: u32 = s::WC_STATUS_BUSY;
    pub const INTERNAL: u32 = s::WC_STATUS_INTERNAL;
    pub const BAD_FD: u32 = s::WC_STATUS_BAD_FD;

    /// Short name of a status, for messages.
    pub fn name(code: u32) -> &'static str {
        match code {
            OK => "ok",
            UNKNOWN_OP => "unknown op",
            BAD_REQUEST => "bad request",
            TOO_LARGE => "too large",
            CANCELLED => "cancelled",
            BUSY => "busy",
            INTERNAL => "internal error",
            BAD_FD => "bad payload fd",
            _ => "unknown status",
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u16,
    pub request_id: u64,
    /// Op for REQUEST and CANCEL, status for RESPONSE, else 0.
    pub code: u32,
    pub payload_len: u32,
}

/// Why a header cannot be trusted. The connection cannot be resynchronised
/// after any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    BadMagic(u32),
    BadVersion(u16),
    BadKind(u16),
    TooLarge(u32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadMagic(m) => write!(f, "bad frame magic {m:#010x} (expected {MAGIC:#010x}): the peer does not speak the weaver compute protocol"),
            DecodeError::BadVersion(v) => write!(f, "compute protocol version {v}, this weaver speaks {VERSION}: rebuild the compute daemon from the same release"),
            DecodeError::BadKind(k) => write!(f, "unknown frame kind {k}"),
            DecodeError::TooLarge(n) => write!(f, "frame payload of {n} bytes is over the {MAX_PAYLOAD}-byte maximum"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Header {
    /// Encode into the 24-byte little-endian wire form.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.kind.to_le_bytes());
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.code.to_le_bytes());
        b[20..24].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// Decode and validate a header from exactly [`HEADER_SIZE`] bytes.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header, DecodeError> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let version = u16_at(4);
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let kind = u16_at(6);
        if kind == 0 || kind > kind::LAST {
            return Err(DecodeError::BadKind(kind));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..16]);
        let payload_len = u32_at(20);
        if payload_len as usize > MAX_PAYLOAD {
            return Err(DecodeError::TooLarge(payload_len));
        }
        Ok(Header { kind, request_id: u64::from_le_bytes(id), code: u32_at(16), payload_len })
    }
}

/// Encode a whole frame (header then payload) into a new buffer.
pub fn encode_frame(kind: u16, request_id: u64, code: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_SIZE + payload.len());
    push_frame(&mut v, kind, request_id, code, payload);
    v
}

/// Append a whole frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, kind: u16, request_id: u64, code: u32, payload: &[u8]) {
    assert!(payload.len() <= MAX_PAYLOAD, "payload over MAX_PAYLOAD");
    let h = Header { kind, request_id, code, payload_len: payload.len() as u32 };
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
}

/// One received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
    /// The fd that came with a REQUEST_FD / RESPONSE_FD (empty otherwise,
    /// or when none came).
    pub fd: crate::fdpass::FdSlot,
}

/// The compute framing for the shared decoder core.
#[derive(Debug)]
pub struct Compute;

impl Framing for Compute {
    const HEAD_LEN: usize = HEADER_SIZE;
    type Head = Header;
    type Frame = Frame;
    type Error = DecodeError;

    fn parse(b: &[u8]) -> Result<(Header, usize, usize), DecodeError> {
        let h = Header::decode(b.try_into().expect("a whole header"))?;
        Ok((h, 0, h.payload_len as usize))
    }

    fn over_limit(len: usize, _limit: usize) -> DecodeError {
        DecodeError::TooLarge(len.min(u32::MAX as usize) as u32)
    }

    fn assemble(header: Header, _meta: Vec<u8>, payload: Vec<u8>) -> Frame {
        Frame { header, payload, fd: Default::default() }
    }

    fn carries_fd(f: &Frame) -> bool {
        matches!(f.header.kind, kind::REQUEST_FD | kind::RESPONSE_FD)
    }

    fn put_fd(f: &mut Frame, fd: Option<std::os::fd::OwnedFd>) {
        f.fd = crate::fdpass::FdSlot(fd);
    }
}

/// Incremental frame decoder: feed it bytes as they arrive, take whole
/// frames out. Holds at most one partial frame, so its memory is bounded by
/// [`MAX_FRAME`].
pub type FrameDecoder = codec::Decoder<Compute>;

/// The HELLO payload a compute daemon sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub pid: u32,
    pub max_frame: u32,
    pub workers: u32,
    /// (op id, name) pairs the daemon serves.
    pub ops: Vec<(u32, String)>,
}

impl Hello {
    /// Parse a HELLO payload; the error says what is wrong with it.
    pub fn parse(p: &[u8]) -> Result<Hello, String> {
        let mut r = p;
        let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
            if r.len() < n {
                return Err(format!("HELLO payload truncated in {what}"));
            }
            let (a, b) = r.split_at(n);
            r = b;
            Ok(a)
        };
        let u32le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let version = u16::from_le_bytes(take(2, "version")?.try_into().expect("2 bytes"));
        take(2, "reserved")?;
        let pid = u32le(take(4, "pid")?);
        let max_frame = u32le(take(4, "max frame")?);
        let workers = u32le(take(4, "workers")?);
        let count = u32le(take(4, "op count")?);
        if count > 1024 {
            return Err(format!("HELLO claims {count} ops"));
        }
        let mut ops = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let id = u32le(take(4, "op id")?);
            let len = take(1, "op name length")?[0] as usize;
            let name = take(len, "op name")?;
            let name =
                std::str::from_utf8(name).map_err(|_| "HELLO op name is not UTF-8".to_string())?;
            ops.push((id, name.to_string()));
        }
        if !r.is_empty() {
            return Err(format!("HELLO payload has {} trailing bytes", r.len()));
        }
        Ok(Hello { version, pid, max_frame, workers, ops })
    }

    /// Encode as a HELLO payload (for test peers).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(&self.pid.to_le_bytes());
        v.extend_from_slice(&self.max_frame.to_le_bytes());
        v.extend_from_slice(&self.workers.to_le_bytes());
        v.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        for (id, name) in &self.ops {
            v.extend_from_slice(&id.to_le_bytes());
            v.push(name.len() as u8);
            v.extend_from_slice(name.as_bytes());
        }
        v
    }

    /// Op id for a name, if served.
    pub fn op_id(&self, name: &str) -> Option<u32> {
        self.ops.iter().find(|(_, n)| n == name).map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_is_little_endian() {
        let h = Header {
            kind: kind::REQUEST,
            request_id: 0x0102030405060708,
            code: op::ECHO,
            payload_len: 5,
        };
        let b = h.encode();
        assert_eq!(&b[0..4], b"WVRC");
        assert_eq!(b[8], 0x08);
        assert_eq!(Header::decode(&b), Ok(h));
    }

    #[test]
    fn header_rejects_untrusted_fields() {
        let good = Header { kind: kind::PING, request_id: 1, code: 0, payload_len: 0 }.encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(Header::decode(&b), Err(DecodeError::BadMagic(_))));
        let mut b = good;
        b[4] = 9;
        assert_eq!(Header::decode(&b), Err(DecodeError::BadVersion(9)));
        let mut b = good;
        b[6] = 99;
        assert_eq!(Header::decode(&b), Err(DecodeError::BadKind(99)));
        let mut b = good;
        b[20..24].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(matches!(Header::decode(&b), Err(DecodeError::TooLarge(_))));
    }

    #[test]
    fn decoder_handles_byte_by_byte_and_batches() {
        let mut wire = encode_frame(kind::RESPONSE, 7, status::OK, b"hello");
        wire.extend(encode_frame(kind::PONG, 8, 0, b""));
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for b in &wire {
            feed_all(&mut d, std::slice::from_ref(b), &mut out);
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].payload, b"hello");
        assert_eq!(out[1].header.request_id, 8);
        assert!(d.is_idle());
        let mut d = FrameDecoder::new();
        let mut out2 = Vec::new();
        feed_all(&mut d, &wire, &mut out2);
        assert_eq!(out, out2);
    }

    fn feed_all(d: &mut FrameDecoder, mut data: &[u8], out: &mut Vec<Frame>) {
        while !data.is_empty() {
            let (used, frame) = d.feed(data).unwrap();
            data = &data[used..];
            out.extend(frame);
        }
    }

    #[test]
    fn hello_round_trip_and_truncation() {
        let h = Hello {
            version: VERSION,
            pid: 42,
            max_frame: MAX_FRAME as u32,
            workers: 2,
            ops: vec![(1, "echo".into()), (2, "render".into())],
        };
        let p = h.encode();
        assert_eq!(Hello::parse(&p), Ok(h.clone()));
        assert_eq!(h.op_id("render"), Some(2));
        for cut in 0..p.len() {
            assert!(Hello::parse(&p[..cut]).is_err(), "cut at {cut} parsed");
        }
    }
}
