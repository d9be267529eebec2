//! Control-socket framing: length-prefixed frames, pure.
//!
//! ```text
//!   u32 LE  len        bytes after this field (4 + meta_len + payload len)
//!   u32 LE  meta_len   length of the postcard-encoded message; its top
//!                      bit (FD_FLAG) says the payload travels by fd
//!   meta               the message (protocol.rs)
//!   payload            raw bytes (compute input/output), never re-encoded;
//!                      with FD_FLAG, the u64 LE size of the sealed memfd
//!                      passed (SCM_RIGHTS) with the frame's first byte
//! ```
//! Keeping bulk data out of the serde encoding lets a 16 MiB payload cross
//! weaver with plain copies. Pure: decoding is the shared core in
//! `codec.rs`, blocking I/O is in `stream.rs`. The decoder holds at most one partial frame, so
//! a client costs at most [`MAX_CONTROL_FRAME`] bytes of read buffer.

use std::fmt;

use crate::codec::{self, Framing};
use crate::wire;

/// Bytes in a frame's prefix (length and message length).
pub const PREFIX_LEN: usize = 8;
/// Set in `meta_len`: the payload is in the memfd sent with this frame and
/// the inline payload is its u64 LE size (`fdpass`).
pub const FD_FLAG: u32 = 1 << 31;

/// Largest control frame after its length field: one maximal compute
/// payload plus room for the message around it.
pub const MAX_CONTROL_FRAME: usize = wire::MAX_PAYLOAD + MAX_META + 4;
/// Largest encoded message.
pub const MAX_META: usize = 1024 * 1024;

/// A frame that cannot be trusted; the connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    TooLarge(u64),
    BadMeta {
        len: u32,
        meta_len: u32,
    },
    /// Over what this connection may send now (e.g. before its handshake).
    OverLimit {
        len: usize,
        limit: usize,
    },
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
            FrameError::OverLimit { len, limit } => {
                write!(
                    f,
                    "a frame of {len} bytes, over the {limit} bytes this connection may send now"
                )
            }
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
    /// The payload travels by fd: `payload` is its size, `fd` the fd that
    /// came with the frame (empty when none came).
    pub by_fd: bool,
    pub fd: crate::fdpass::FdSlot,
}

/// Encode a frame's 8-byte prefix for a message and payload of these sizes.
pub fn prefix(meta_len: usize, payload_len: usize) -> [u8; PREFIX_LEN] {
    let len = 4 + meta_len + payload_len;
    let mut p = [0u8; PREFIX_LEN];
    p[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    p[4..8].copy_from_slice(&(meta_len as u32).to_le_bytes());
    p
}

/// The prefix of a frame whose payload travels by fd: `payload` is the 8
/// size bytes.
pub fn prefix_fd(meta_len: usize) -> [u8; PREFIX_LEN] {
    let mut p = prefix(meta_len, 8);
    p[4..8].copy_from_slice(&(meta_len as u32 | FD_FLAG).to_le_bytes());
    p
}

/// Append a whole frame to `out`.
pub fn push(out: &mut Vec<u8>, meta: &[u8], payload: &[u8]) {
    out.reserve(PREFIX_LEN + meta.len() + payload.len());
    out.extend_from_slice(&prefix(meta.len(), payload.len()));
    out.extend_from_slice(meta);
    out.extend_from_slice(payload);
}

/// The control framing for the shared decoder core.
#[derive(Debug)]
pub struct Control;

impl Framing for Control {
    const HEAD_LEN: usize = PREFIX_LEN;
    /// Whether the payload travels by fd.
    type Head = bool;
    type Frame = RawFrame;
    type Error = FrameError;

    fn parse(p: &[u8]) -> Result<(bool, usize, usize), FrameError> {
        let len = u32::from_le_bytes(p[0..4].try_into().expect("4 bytes"));
        let word = u32::from_le_bytes(p[4..8].try_into().expect("4 bytes"));
        let by_fd = word & FD_FLAG != 0;
        let meta_len = word & !FD_FLAG;
        if len as usize > MAX_CONTROL_FRAME {
            return Err(FrameError::TooLarge(len as u64));
        }
        if len < 4 || meta_len > len - 4 || meta_len as usize > MAX_META {
            return Err(FrameError::BadMeta { len, meta_len });
        }
        if by_fd && len - 4 - meta_len != 8 {
            return Err(FrameError::BadMeta { len, meta_len: word });
        }
        Ok((by_fd, meta_len as usize, (len - 4 - meta_len) as usize))
    }

    fn over_limit(len: usize, limit: usize) -> FrameError {
        FrameError::OverLimit { len, limit }
    }

    fn assemble(by_fd: bool, meta: Vec<u8>, payload: Vec<u8>) -> RawFrame {
        RawFrame { meta, payload, by_fd, fd: Default::default() }
    }

    fn carries_fd(f: &RawFrame) -> bool {
        f.by_fd
    }

    fn put_fd(f: &mut RawFrame, fd: Option<std::os::fd::OwnedFd>) {
        f.fd = crate::fdpass::FdSlot(fd);
    }
}

/// Incremental decoder of control frames: prefix, then the message, then
/// the payload, each into its own buffer (no copy to split them apart).
pub type Decoder = codec::Decoder<Control>;

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
                RawFrame {
                    meta: b"meta".to_vec(),
                    payload: b"payload".to_vec(),
                    by_fd: false,
                    fd: Default::default()
                }
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
}
