//! Control-socket framing: length-prefixed frames, pure.
//!
//! ```text
//!   u32 LE  len        bytes after this field (4 + meta_len + payload len)
//!   u32 LE  meta_len   length of the postcard-encoded message
//!   meta               the message (protocol.rs)
//!   payload            raw bytes (compute input/output), never re-encoded
//! ```
//! Keeping bulk data out of the serde encoding lets a 16 MiB payload cross
//! weaver with plain copies. The decoder holds at most one partial frame, so
//! a client costs at most [`MAX_CONTROL_FRAME`] bytes of read buffer.

use std::fmt;
use std::io::{self, Read, Write};

use crate::wire;

/// Largest control frame after its length field: one maximal compute
/// payload plus room for the message around it.
pub const MAX_CONTROL_FRAME: usize = wire::MAX_PAYLOAD + MAX_META + 4;
/// Largest encoded message.
pub const MAX_META: usize = 1024 * 1024;

/// A frame that cannot be trusted; the connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    TooLarge(u64),
    BadMeta { len: u32, meta_len: u32 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(
                f,
                "control frame of {n} bytes is over the {MAX_CONTROL_FRAME}-byte limit \
                 (compute payloads are at most {} bytes)",
                wire::MAX_PAYLOAD
            ),
            FrameError::BadMeta { len, meta_len } => {
                write!(f, "control frame of {len} bytes claims a {meta_len}-byte message")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// One decoded frame: the encoded message and the raw payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Encode a frame's 8-byte prefix for a message and payload of these sizes.
pub fn prefix(meta_len: usize, payload_len: usize) -> [u8; 8] {
    let len = 4 + meta_len + payload_len;
    let mut p = [0u8; 8];
    p[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    p[4..8].copy_from_slice(&(meta_len as u32).to_le_bytes());
    p
}

/// Append a whole frame to `out`.
pub fn push(out: &mut Vec<u8>, meta: &[u8], payload: &[u8]) {
    out.reserve(8 + meta.len() + payload.len());
    out.extend_from_slice(&prefix(meta.len(), payload.len()));
    out.extend_from_slice(meta);
    out.extend_from_slice(payload);
}

/// Write a whole frame to a blocking writer without copying the payload.
pub fn write_to<W: Write>(w: &mut W, meta: &[u8], payload: &[u8]) -> io::Result<()> {
    if payload.len() <= 64 * 1024 {
        let mut buf = Vec::with_capacity(8 + meta.len() + payload.len());
        push(&mut buf, meta, payload);
        return w.write_all(&buf);
    }
    let mut head = Vec::with_capacity(8 + meta.len());
    head.extend_from_slice(&prefix(meta.len(), payload.len()));
    head.extend_from_slice(meta);
    w.write_all(&head)?;
    w.write_all(payload)
}

/// Incremental decoder: prefix, then the message, then the payload, each
/// into its own buffer (no copy to split them apart).
#[derive(Debug, Default)]
pub struct Decoder {
    prefix: [u8; 8],
    prefix_len: usize,
    /// (meta_len, payload_len) once the prefix is complete.
    sizes: Option<(usize, usize)>,
    meta: Vec<u8>,
    payload: Vec<u8>,
}

/// Payloads with at least this much left are read straight into place.
pub const DIRECT_MIN: usize = 4096;

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no partial frame is held.
    pub fn is_idle(&self) -> bool {
        self.prefix_len == 0 && self.sizes.is_none()
    }

    fn check(&mut self) -> Result<(), FrameError> {
        let len = u32::from_le_bytes(self.prefix[0..4].try_into().expect("4 bytes"));
        let meta_len = u32::from_le_bytes(self.prefix[4..8].try_into().expect("4 bytes"));
        if len as usize > MAX_CONTROL_FRAME {
            return Err(FrameError::TooLarge(len as u64));
        }
        if len < 4 || meta_len > len - 4 || meta_len as usize > MAX_META {
            return Err(FrameError::BadMeta { len, meta_len });
        }
        let (meta_len, payload_len) = (meta_len as usize, (len - 4 - meta_len) as usize);
        self.sizes = Some((meta_len, payload_len));
        self.meta = Vec::with_capacity(meta_len);
        self.payload = Vec::with_capacity(payload_len);
        Ok(())
    }

    fn complete(&mut self) -> Option<RawFrame> {
        let (meta_len, payload_len) = self.sizes?;
        if self.meta.len() < meta_len || self.payload.len() < payload_len {
            return None;
        }
        self.sizes = None;
        self.prefix_len = 0;
        Some(RawFrame {
            meta: std::mem::take(&mut self.meta),
            payload: std::mem::take(&mut self.payload),
        })
    }

    /// Consume bytes from `data`: returns how many were used and a frame if
    /// one completed.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<RawFrame>), FrameError> {
        let mut used = 0;
        if self.sizes.is_none() {
            let take = (8 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            used = take;
            if self.prefix_len < 8 {
                return Ok((used, None));
            }
            self.check()?;
        }
        let (meta_len, payload_len) = self.sizes.expect("sizes known");
        let take = (meta_len - self.meta.len()).min(data.len() - used);
        self.meta.extend_from_slice(&data[used..used + take]);
        used += take;
        let take = (payload_len - self.payload.len()).min(data.len() - used);
        self.payload.extend_from_slice(&data[used..used + take]);
        used += take;
        Ok((used, self.complete()))
    }

    /// While a large payload is arriving: the buffer to read straight into
    /// (its spare capacity is exactly what the frame still needs).
    pub fn direct_target(&mut self) -> Option<&mut Vec<u8>> {
        let (meta_len, payload_len) = self.sizes?;
        if self.meta.len() == meta_len && payload_len - self.payload.len() >= DIRECT_MIN {
            return Some(&mut self.payload);
        }
        None
    }

    /// After a direct read: the frame, if it is now complete.
    pub fn direct_done(&mut self) -> Option<RawFrame> {
        self.complete()
    }

    /// Read one frame from a blocking reader; `Ok(None)` on EOF between
    /// frames. Payload bytes are read straight into place.
    pub fn read_frame<R: Read>(&mut self, r: &mut R) -> io::Result<Option<RawFrame>> {
        let bad = |e: FrameError| io::Error::new(io::ErrorKind::InvalidData, e);
        let eof = |what: &str| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed inside a frame {what}"),
            )
        };
        loop {
            if let Some((meta_len, payload_len)) = self.sizes {
                let (buf, want) = if self.meta.len() < meta_len {
                    (&mut self.meta, meta_len)
                } else if self.payload.len() < payload_len {
                    (&mut self.payload, payload_len)
                } else {
                    return Ok(self.complete());
                };
                let start = buf.len();
                buf.resize(want, 0);
                let n = r.read(&mut buf[start..])?;
                buf.truncate(start + n);
                if n == 0 {
                    return Err(eof("body"));
                }
                continue;
            }
            let n = r.read(&mut self.prefix[self.prefix_len..])?;
            if n == 0 {
                if self.prefix_len == 0 {
                    return Ok(None);
                }
                return Err(eof("prefix"));
            }
            self.prefix_len += n;
            if self.prefix_len == 8 {
                self.check().map_err(bad)?;
            }
        }
    }
}

/// An incremental decoder the reactor can drain a socket into: bytes fed
/// from a scratch buffer, or a large payload read straight into place.
/// Implemented by the control-socket [`Decoder`] and the compute
/// [`FrameDecoder`](crate::wire::FrameDecoder).
pub trait StreamDecoder {
    type Frame;
    type Error: std::fmt::Display;
    /// Consume bytes: how many were used, and a frame if one completed.
    fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<Self::Frame>), Self::Error>;
    /// The payload buffer to read straight into, while a large one arrives.
    fn direct_target(&mut self) -> Option<&mut Vec<u8>>;
    /// After a direct read: the frame, if it is now complete.
    fn direct_done(&mut self) -> Option<Self::Frame>;
}

impl StreamDecoder for Decoder {
    type Frame = RawFrame;
    type Error = FrameError;
    fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<RawFrame>), FrameError> {
        Decoder::feed(self, data)
    }
    fn direct_target(&mut self) -> Option<&mut Vec<u8>> {
        Decoder::direct_target(self)
    }
    fn direct_done(&mut self) -> Option<RawFrame> {
        Decoder::direct_done(self)
    }
}

/// How [`drain`] stopped.
#[derive(Debug)]
pub enum Drained<E> {
    /// Everything there was is read: wait for the next readiness.
    WouldBlock,
    /// The peer closed its end.
    Eof,
    /// The read failed.
    Failed(io::Error),
    /// The bytes are not a valid frame.
    Bad(E),
}

/// Read a non-blocking socket until it would block (readiness is a hint:
/// the read decides), appending whole frames to `out`. Large payloads are
/// read straight into their buffer, everything else through `scratch`.
pub fn drain<S, D>(
    stream: &mut S,
    dec: &mut D,
    scratch: &mut [u8],
    out: &mut Vec<D::Frame>,
) -> Drained<D::Error>
where
    S: Read + std::os::fd::AsRawFd,
    D: StreamDecoder,
{
    loop {
        if let Some(v) = dec.direct_target() {
            match read_spare(stream.as_raw_fd(), v) {
                Ok(0) => return Drained::Eof,
                Ok(_) => {
                    out.extend(dec.direct_done());
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Drained::Failed(e),
            }
        }
        match stream.read(scratch) {
            Ok(0) => return Drained::Eof,
            Ok(n) => {
                let mut data = &scratch[..n];
                while !data.is_empty() {
                    match dec.feed(data) {
                        Ok((used, f)) => {
                            data = &data[used..];
                            out.extend(f);
                        }
                        Err(e) => return Drained::Bad(e),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Drained::Failed(e),
        }
    }
}

/// Read from `fd` into the spare capacity of `v` (never past it).
/// Returns the bytes read; 0 means EOF.
pub fn read_spare(fd: std::os::fd::RawFd, v: &mut Vec<u8>) -> io::Result<usize> {
    let spare = v.capacity() - v.len();
    // SAFETY: the kernel writes at most `spare` bytes into the vector's
    // reserved, unused capacity; only the bytes it reports are then
    // counted as initialised.
    let n = unsafe { libc::read(fd, v.as_mut_ptr().add(v.len()).cast(), spare) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe { v.set_len(v.len() + n as usize) };
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces() {
        let mut wire = Vec::new();
        push(&mut wire, b"meta", b"payload");
        push(&mut wire, b"", b"");
        push(&mut wire, b"m2", &[7u8; 100_000]);
        for chunk in [1usize, 3, 8, 1000, wire.len()] {
            let mut d = Decoder::new();
            let mut frames = Vec::new();
            for piece in wire.chunks(chunk) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let (n, f) = d.feed(rest).unwrap();
                    rest = &rest[n..];
                    frames.extend(f);
                }
            }
            assert_eq!(frames.len(), 3, "chunk {chunk}");
            assert_eq!(
                frames[0],
                RawFrame { meta: b"meta".to_vec(), payload: b"payload".to_vec() }
            );
            assert!(frames[1].meta.is_empty() && frames[1].payload.is_empty());
            assert_eq!(frames[2].payload.len(), 100_000);
            assert!(d.is_idle());
        }
    }

    #[test]
    fn rejects_oversized_and_inconsistent_prefixes() {
        let mut d = Decoder::new();
        let mut p = [0u8; 8];
        p[0..4].copy_from_slice(&(MAX_CONTROL_FRAME as u32 + 1).to_le_bytes());
        assert!(matches!(d.feed(&p), Err(FrameError::TooLarge(_))));
        let mut d = Decoder::new();
        assert!(matches!(d.feed(&prefix_raw(10, 7)), Err(FrameError::BadMeta { .. })));
        let mut d = Decoder::new();
        assert!(matches!(d.feed(&prefix_raw(2, 0)), Err(FrameError::BadMeta { .. })));
    }

    fn prefix_raw(len: u32, meta_len: u32) -> [u8; 8] {
        let mut p = [0u8; 8];
        p[0..4].copy_from_slice(&len.to_le_bytes());
        p[4..8].copy_from_slice(&meta_len.to_le_bytes());
        p
    }

    #[test]
    fn direct_reads_fill_the_payload_in_place() {
        let mut wire = Vec::new();
        let body: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        push(&mut wire, b"meta", &body);
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        std::thread::spawn(move || std::io::Write::write_all(&mut &a, &wire).unwrap());
        let mut d = Decoder::new();
        let mut small = [0u8; 100];
        let n = std::io::Read::read(&mut &b, &mut small).unwrap();
        let (used, f) = d.feed(&small[..n]).unwrap();
        assert_eq!((used, f), (n, None));
        let mut got = None;
        while got.is_none() {
            let v = d.direct_target().expect("a large payload is pending");
            let before = v.len();
            assert!(read_spare(std::os::fd::AsRawFd::as_raw_fd(&b), v).unwrap() > 0);
            assert!(v.len() > before && v.len() <= v.capacity());
            got = d.direct_done();
        }
        let f = got.unwrap();
        assert_eq!((f.meta.as_slice(), f.payload), (&b"meta"[..], body));
        assert!(d.is_idle() && d.direct_target().is_none());
    }

    #[test]
    fn drain_reads_to_would_block_then_sees_eof_or_garbage() {
        let mut wire = Vec::new();
        let body: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        push(&mut wire, b"big", &body);
        push(&mut wire, b"small", b"x");
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut &a, &wire).unwrap();
            a
        });
        let (mut d, mut scratch, mut out) = (Decoder::new(), [0u8; 64], Vec::new());
        while out.len() < 2 {
            match drain(&mut b, &mut d, &mut scratch, &mut out) {
                Drained::WouldBlock => std::thread::sleep(std::time::Duration::from_millis(1)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((out[0].meta.as_slice(), &out[0].payload), (&b"big"[..], &body));
        assert_eq!((out[1].meta.as_slice(), out[1].payload.as_slice()), (&b"small"[..], &b"x"[..]));
        let a = writer.join().unwrap();
        drop(a);
        assert!(matches!(drain(&mut b, &mut d, &mut scratch, &mut out), Drained::Eof));
        // A prefix announcing more than the cap is refused, not buffered.
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut &a, &prefix_raw(u32::MAX, 0)).unwrap();
        let mut d = Decoder::new();
        assert!(matches!(drain(&mut b, &mut d, &mut scratch, &mut out), Drained::Bad(_)));
    }

    #[test]
    fn blocking_read_and_write_agree() {
        let mut wire = Vec::new();
        write_to(&mut wire, b"x", &vec![1u8; 200_000]).unwrap();
        write_to(&mut wire, b"y", b"small").unwrap();
        let mut r = &wire[..];
        let mut d = Decoder::new();
        assert_eq!(d.read_frame(&mut r).unwrap().unwrap().payload.len(), 200_000);
        assert_eq!(d.read_frame(&mut r).unwrap().unwrap().payload, b"small");
        assert!(d.read_frame(&mut r).unwrap().is_none());
        let mut r = &wire[..5];
        assert_eq!(d.read_frame(&mut r).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
