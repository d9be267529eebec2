//! A write queue for a non-blocking socket: write first, keep only what the
//! socket did not take, and say when WRITABLE interest is needed. A payload
//! fd can ride on a frame: it is attached (SCM_RIGHTS) to the first byte of
//! that frame, which then starts a `sendmsg` of its own, and is closed here
//! once sent.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// Buffers up to this size are merged rather than queued apart.
const COALESCE: usize = 16 * 1024;
/// Buffers handed to one writev.
const MAX_IOV: usize = 64;
/// Merge buffers kept for reuse once written, for every queue of the
/// thread together: under load, a turn's small frames go into a buffer
/// that needs no allocation and has already grown.
const SPARE_BUFFERS: usize = 8;
/// Capacities worth keeping as a spare (a small one is cheap to allocate;
/// a buffer merges at most `COALESCE` bytes, so it grows to at most twice
/// that).
const SPARE_CAPACITY: std::ops::RangeInclusive<usize> = 1024..=2 * COALESCE;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer to merge `first` and what follows into: a spare when
/// there is one.
fn merge_buffer(first: usize) -> Vec<u8> {
    SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(first.max(256)))
}

/// A written buffer: kept as a spare if its size is worth it and there is
/// room, else freed.
fn recycle(mut b: Vec<u8>) {
    if SPARE_CAPACITY.contains(&b.capacity()) {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_BUFFERS {
                b.clear();
                s.push(b);
            }
        });
    }
}

#[derive(Debug, Default)]
pub struct OutQueue {
    bufs: VecDeque<Vec<u8>>,
    /// Bytes of the front buffer already written.
    offset: usize,
    /// Bytes queued and not yet written.
    bytes: usize,
    /// Fds to send, each with the stream position (bytes ever queued before
    /// it) of the byte it rides on.
    fds: VecDeque<(u64, OwnedFd)>,
    /// Bytes ever queued, and ever written.
    pushed: u64,
    written: u64,
}

impl OutQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Fds waiting to be sent.
    pub fn fds(&self) -> usize {
        self.fds.len()
    }

    /// Send `fd` with the next byte queued (the first byte of the frame
    /// queued next).
    pub fn attach_fd(&mut self, fd: OwnedFd) {
        self.fds.push_back((self.pushed, fd));
    }

    /// Queue a buffer without copying it; a small one is appended to a
    /// small last buffer instead, so many small frames become one write.
    pub fn push(&mut self, buf: Vec<u8>) {
        if buf.len() < COALESCE {
            return self.push_slice(&buf);
        }
        self.bytes += buf.len();
        self.pushed += buf.len() as u64;
        self.bufs.push_back(buf);
    }

    /// Queue a copy of `data`, appended to the last buffer while that stays
    /// small.
    pub fn push_slice(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.bytes += data.len();
        self.pushed += data.len() as u64;
        match self.bufs.back_mut() {
            Some(last) if last.len() + data.len() <= COALESCE => last.extend_from_slice(data),
            _ if data.len() >= COALESCE => self.bufs.push_back(data.to_vec()),
            _ => {
                let mut v = merge_buffer(data.len());
                v.extend_from_slice(data);
                self.bufs.push_back(v);
            }
        }
    }

    /// Write as much as the socket takes. `Ok(true)` when everything went
    /// out, `Ok(false)` when the socket is full (arm WRITABLE).
    pub fn flush<W: Write + AsRawFd>(&mut self, w: &mut W) -> io::Result<bool> {
        while !self.bufs.is_empty() {
            let mut slices: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            // An fd rides on the byte at its position: a write that starts
            // there carries it, and no write runs past the next one.
            let attach = self.fds.front().filter(|(at, _)| *at == self.written);
            let stop = self
                .fds
                .iter()
                .map(|(at, _)| *at)
                .find(|at| *at > self.written)
                .map_or(usize::MAX, |at| (at - self.written) as usize);
            let mut room = stop;
            for (i, b) in self.bufs.iter().take(MAX_IOV).enumerate() {
                let s = if i == 0 { &b[self.offset..] } else { &b[..] };
                let s = &s[..s.len().min(room)];
                slices[i] = IoSlice::new(s);
                n += 1;
                room -= s.len();
                if room == 0 {
                    break;
                }
            }
            let sent = match attach {
                Some((_, fd)) => send_fd(w.as_raw_fd(), &slices[..n], fd),
                None => w.write_vectored(&slices[..n]),
            };
            match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn consume(&mut self, mut n: usize) {
        if n > 0 && self.fds.front().is_some_and(|(at, _)| *at == self.written) {
            // The peer holds its own reference now.
            self.fds.pop_front();
        }
        self.written += n as u64;
        self.bytes -= n;
        while n > 0 {
            let front = self.bufs.front().expect("consumed bytes were queued").len() - self.offset;
            if n >= front {
                n -= front;
                self.offset = 0;
                recycle(self.bufs.pop_front().expect("checked above"));
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
}

fn send_fd(sock: RawFd, bufs: &[IoSlice<'_>], fd: &OwnedFd) -> io::Result<usize> {
    crate::fdpass::send_with_fd(sock, bufs, fd.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then WouldBlock.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
        calls: usize,
        block_every: usize,
    }

    impl AsRawFd for Trickle {
        fn as_raw_fd(&self) -> RawFd {
            -1
        }
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % self.block_every == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.cap);
            self.out.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_and_count() {
        let mut q = OutQueue::new();
        let mut expect = Vec::new();
        for i in 0..50u8 {
            // Small and large buffers, merged and not.
            let b = vec![i; (i as usize * 3701) % 40_000 + 1];
            expect.extend_from_slice(&b);
            if i % 3 == 0 {
                q.push_slice(&b);
            } else {
                q.push(b);
            }
        }
        let mut w = Trickle { out: Vec::new(), cap: 1300, calls: 0, block_every: 7 };
        let mut rounds = 0;
        while !q.flush(&mut w).unwrap() {
            rounds += 1;
            assert_eq!(q.len(), expect.len() - w.out.len());
        }
        assert!(rounds > 0);
        assert!(q.is_empty());
        assert_eq!(w.out, expect);
    }

    #[test]
    fn written_merge_buffers_are_reused_and_the_spares_are_bounded() {
        let sink =
            || Trickle { out: Vec::new(), cap: usize::MAX, calls: 0, block_every: usize::MAX };
        // A turn's worth of small frames grows one merge buffer...
        let mut q = OutQueue::new();
        for _ in 0..100 {
            q.push_slice(&[1u8; 100]);
        }
        let grown = q.bufs[0].capacity();
        assert!(grown >= 10_000);
        assert!(q.flush(&mut sink()).unwrap());
        // ... which the next queue's first small frame gets back, grown.
        let mut other = OutQueue::new();
        other.push_slice(b"x");
        assert_eq!(other.bufs[0].capacity(), grown);
        assert_eq!(other.bufs[0], b"x");
        // Many queues written at once keep at most SPARE_BUFFERS of them.
        let mut qs: Vec<OutQueue> = (0..3 * SPARE_BUFFERS).map(|_| OutQueue::new()).collect();
        for q in &mut qs {
            q.push_slice(&[2u8; 4000]);
        }
        for q in &mut qs {
            assert!(q.flush(&mut sink()).unwrap());
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARE_BUFFERS);
        // A large buffer is queued as it is and is not kept.
        let mut q = OutQueue::new();
        q.push(vec![3u8; 1 << 20]);
        assert!(q.flush(&mut sink()).unwrap());
        assert!(SPARE.with(|s| s.borrow().iter().all(|b| b.capacity() <= 2 * COALESCE)));
    }

    #[test]
    fn a_passed_fd_rides_on_its_frames_first_byte_and_is_closed_once_sent() {
        use std::os::unix::net::UnixStream;
        let (mut a, b) = UnixStream::pair().unwrap();
        let fd = crate::fdpass::sealed_memfd(b"payload").unwrap();
        let raw = fd.as_raw_fd();
        let mut q = OutQueue::new();
        q.push_slice(b"before");
        q.attach_fd(fd);
        q.push_slice(b"FRAME");
        q.push(vec![7u8; 40_000]);
        assert_eq!(q.fds(), 1);
        assert!(q.flush(&mut a).unwrap());
        assert_eq!(q.fds(), 0, "sent and closed here");
        // SAFETY: F_GETFD on a number that must no longer be open here.
        assert_eq!(unsafe { libc::fcntl(raw, libc::F_GETFD) }, -1, "our copy is closed");
        // Every byte in order, the fd once, with the read that holds the
        // frame's first byte (the kernel may glue earlier bytes to it).
        let mut fds = VecDeque::new();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while got.len() < 6 + 5 + 40_000 {
            let before = fds.len();
            let n = crate::fdpass::recv(b.as_raw_fd(), &mut buf, &mut fds, 0).unwrap();
            let first = got.len();
            got.extend_from_slice(&buf[..n]);
            if fds.len() > before {
                assert!((first..first + n).contains(&6), "the fd came with byte 6");
            }
        }
        assert_eq!(&got[..11], b"beforeFRAME");
        assert!(got[11..].iter().all(|&x| x == 7));
        assert_eq!(fds.len(), 1);
        let p = crate::fdpass::announced(&7u64.to_le_bytes(), fds.pop_front()).unwrap();
        assert_eq!(p.len(), 7);
    }
}
