//! The decoder core both framings share, pure: a fixed-size head, then a
//! body of two parts (a message and a payload), each into its own buffer.
//! The control framing (`frame.rs`) and the compute framing (`wire.rs`)
//! differ only in how they read a head; this holds at most one partial
//! frame, and lets a large payload be read straight into place.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::OwnedFd;

/// Payloads with at least this much left are read straight into place.
pub const DIRECT_MIN: usize = 4096;
/// The longest head a framing may have.
const MAX_HEAD: usize = 32;

/// What distinguishes one framing from another.
pub trait Framing {
    /// Bytes in a head (at most 32).
    const HEAD_LEN: usize;
    /// What a head says besides the sizes.
    type Head: Copy + fmt::Debug;
    type Frame;
    type Error: fmt::Display + fmt::Debug;
    /// Validate a complete head: what it says, and the sizes of the
    /// message and payload that follow.
    fn parse(head: &[u8]) -> Result<(Self::Head, usize, usize), Self::Error>;
    /// The error for a frame of `len` body bytes over a decoder's `limit`.
    fn over_limit(len: usize, limit: usize) -> Self::Error;
    fn assemble(head: Self::Head, meta: Vec<u8>, payload: Vec<u8>) -> Self::Frame;
    /// Whether the frame's payload travels by fd (one fd came with its
    /// first byte); such a frame gets the fd with [`Framing::put_fd`].
    fn carries_fd(_frame: &Self::Frame) -> bool {
        false
    }
    /// Give a frame that carries an fd the one that came (None: missing).
    fn put_fd(_frame: &mut Self::Frame, _fd: Option<OwnedFd>) {}
}

/// An incremental decoder the reactor can drain a socket into: bytes fed
/// from a scratch buffer, or a large payload read straight into place.
pub trait StreamDecoder {
    type Frame;
    type Error: fmt::Display + fmt::Debug;
    /// Consume bytes: how many were used, and a frame if one completed.
    fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<Self::Frame>), Self::Error>;
    /// The payload buffer to read straight into, while a large one arrives
    /// (its spare capacity is exactly what the frame still needs).
    fn direct_target(&mut self) -> Option<&mut Vec<u8>>;
    /// After a direct read: the frame, if it is now complete.
    fn direct_done(&mut self) -> Option<Self::Frame>;
    /// A frame completed: if it carries an fd, give it the oldest received
    /// one. Framings without fds take none (a received fd stays, and the
    /// connection refuses it as stray).
    fn claim_fd(&self, _frame: &mut Self::Frame, _fds: &mut VecDeque<OwnedFd>) {}
    /// Part of a frame is read (a received fd may belong to it).
    fn mid_frame(&self) -> bool {
        false
    }
}

pub struct Decoder<F: Framing> {
    head: [u8; MAX_HEAD],
    head_len: usize,
    /// The head and the body's sizes, once the head is complete.
    current: Option<(F::Head, usize, usize)>,
    meta: Vec<u8>,
    payload: Vec<u8>,
    /// Largest body (message and payload) this decoder takes now.
    limit: usize,
}

impl<F: Framing> fmt::Debug for Decoder<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("head_len", &self.head_len)
            .field("current", &self.current)
            .field("meta", &self.meta.len())
            .field("payload", &self.payload.len())
            .finish()
    }
}

impl<F: Framing> Default for Decoder<F> {
    fn default() -> Self {
        debug_assert!(F::HEAD_LEN <= MAX_HEAD);
        Decoder {
            head: [0; MAX_HEAD],
            head_len: 0,
            current: None,
            meta: Vec::new(),
            payload: Vec::new(),
            limit: usize::MAX,
        }
    }
}

impl<F: Framing> Decoder<F> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take frames with at most `limit` body bytes (the framing's own cap
    /// still holds); a larger one is an error before any of it is held.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Parse a complete head and make room for its body.
    fn start(&mut self) -> Result<(), F::Error> {
        let (head, meta_len, payload_len) = F::parse(&self.head[..F::HEAD_LEN])?;
        if meta_len + payload_len > self.limit {
            return Err(F::over_limit(meta_len + payload_len, self.limit));
        }
        self.meta = Vec::with_capacity(meta_len);
        self.payload = Vec::with_capacity(payload_len);
        self.current = Some((head, meta_len, payload_len));
        Ok(())
    }

    /// Bytes of a partial frame held now.
    pub fn buffered(&self) -> usize {
        self.head_len + self.meta.len() + self.payload.len()
    }

    /// True when no partial frame is held (a clean place for EOF).
    pub fn is_idle(&self) -> bool {
        self.head_len == 0 && self.current.is_none()
    }

    /// Bytes of the frame being read so far, head included (0 between
    /// frames).
    pub fn partial_len(&self) -> usize {
        self.head_len + self.meta.len() + self.payload.len()
    }

    /// Bytes of buffer held for the frame being read (what its head
    /// announced, reserved once the head is in): the decoder's memory
    /// beyond its fixed head buffer.
    pub fn reserved(&self) -> usize {
        self.meta.capacity() + self.payload.capacity()
    }

    /// The complete frame, if every byte of it is in.
    fn complete(&mut self) -> Option<F::Frame> {
        let (head, meta_len, payload_len) = self.current?;
        if self.meta.len() < meta_len || self.payload.len() < payload_len {
            return None;
        }
        self.current = None;
        self.head_len = 0;
        Some(F::assemble(head, std::mem::take(&mut self.meta), std::mem::take(&mut self.payload)))
    }

    /// Consume bytes from `data`: how many were used, and a frame if one
    /// completed. Call again with the rest until everything is used.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<F::Frame>), F::Error> {
        let mut used = 0;
        if self.current.is_none() {
            let take = (F::HEAD_LEN - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
            self.head_len += take;
            used = take;
            if self.head_len < F::HEAD_LEN {
                return Ok((used, None));
            }
            self.start()?;
        }
        let (_, meta_len, payload_len) = self.current.expect("head parsed above");
        let take = (meta_len - self.meta.len()).min(data.len() - used);
        self.meta.extend_from_slice(&data[used..used + take]);
        used += take;
        let take = (payload_len - self.payload.len()).min(data.len() - used);
        self.payload.extend_from_slice(&data[used..used + take]);
        used += take;
        Ok((used, self.complete()))
    }

    /// While a large payload is arriving: the buffer to read straight into.
    pub fn direct_target(&mut self) -> Option<&mut Vec<u8>> {
        let (_, meta_len, payload_len) = self.current?;
        if self.meta.len() == meta_len && payload_len - self.payload.len() >= DIRECT_MIN {
            return Some(&mut self.payload);
        }
        None
    }

    /// After a direct read: the frame, if it is now complete.
    pub fn direct_done(&mut self) -> Option<F::Frame> {
        self.complete()
    }

    /// Where the next bytes of a blocking read go: the head, the message or
    /// the payload, with how many are still wanted. `None` once a frame is
    /// complete (take it with [`Decoder::direct_done`]).
    pub(crate) fn next_buffer(&mut self) -> Option<NextBuffer<'_>> {
        match self.current {
            None => Some(NextBuffer::Head(&mut self.head[self.head_len..F::HEAD_LEN])),
            Some((_, meta_len, _)) if self.meta.len() < meta_len => {
                Some(NextBuffer::Body(&mut self.meta, meta_len))
            }
            Some((_, _, payload_len)) if self.payload.len() < payload_len => {
                Some(NextBuffer::Body(&mut self.payload, payload_len))
            }
            Some(_) => None,
        }
    }

    /// `n` head bytes were read into the slice [`Decoder::next_buffer`]
    /// gave.
    pub(crate) fn head_read(&mut self, n: usize) -> Result<(), F::Error> {
        self.head_len += n;
        if self.head_len == F::HEAD_LEN {
            self.start()?;
        }
        Ok(())
    }

    /// Whether a head has been started.
    pub(crate) fn in_head(&self) -> bool {
        self.head_len > 0 && self.current.is_none()
    }
}

/// See [`Decoder::next_buffer`].
pub(crate) enum NextBuffer<'a> {
    Head(&'a mut [u8]),
    /// The buffer and the length it must reach.
    Body(&'a mut Vec<u8>, usize),
}

impl<F: Framing> StreamDecoder for Decoder<F> {
    type Frame = F::Frame;
    type Error = F::Error;
    fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<F::Frame>), F::Error> {
        Decoder::feed(self, data)
    }
    fn direct_target(&mut self) -> Option<&mut Vec<u8>> {
        Decoder::direct_target(self)
    }
    fn direct_done(&mut self) -> Option<F::Frame> {
        Decoder::direct_done(self)
    }
    fn claim_fd(&self, frame: &mut F::Frame, fds: &mut VecDeque<OwnedFd>) {
        if F::carries_fd(frame) {
            F::put_fd(frame, fds.pop_front());
        }
    }
    fn mid_frame(&self) -> bool {
        !self.is_idle()
    }
}
