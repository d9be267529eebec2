//! One framed, non-blocking connection, for clients and compute alike:
//! read to WouldBlock through a decoder, queue and flush writes, arm
//! WRITABLE only while the socket is full, and check the peer's
//! credentials. The decoders are pure; this is where their bytes come from.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use mio::net::UnixStream;
use mio::{Interest, Token};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials, UnixCredentials};

use crate::codec::StreamDecoder;
use crate::daemon::effect::{Effect, Effects};
use crate::daemon::outq::OutQueue;
use crate::fdpass;

/// Socket reads through the scratch buffer take at most this much, so that
/// a large payload is soon read straight into its own buffer (see
/// `direct_target`) instead of being copied out of scratch; small frames
/// still arrive by the hundred per read.
pub const SCRATCH_READ: usize = 8 * 1024;

/// How a read stopped.
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

/// How a flush ended.
#[derive(Debug)]
pub enum Flushed {
    /// Everything queued went out.
    Done,
    /// The socket is full; WRITABLE is armed.
    Blocked,
    /// The write failed: the connection is lost.
    Failed(io::Error),
}

#[derive(Debug)]
pub struct Conn<D> {
    pub stream: UnixStream,
    pub dec: D,
    pub out: OutQueue,
    /// Fds received and not yet given to their frame: at most one between
    /// reads (it belongs to the frame being read).
    pub fds: VecDeque<OwnedFd>,
    token: Token,
    writable_armed: bool,
}

impl<D: StreamDecoder> Conn<D> {
    /// A connection watched under `token`; push the returned effect to
    /// watch it.
    pub fn new(stream: UnixStream, dec: D, token: Token) -> (Conn<D>, Effect) {
        let watch = Effect::Watch { fd: stream.as_raw_fd(), token, interest: Interest::READABLE };
        let conn = Conn {
            stream,
            dec,
            out: OutQueue::new(),
            fds: VecDeque::new(),
            token,
            writable_armed: false,
        };
        (conn, watch)
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Read what the socket has, appending whole frames to `out`. `closed`:
    /// the event said the peer closed or failed, so read on to the end.
    pub fn read(
        &mut self,
        scratch: &mut [u8],
        out: &mut Vec<D::Frame>,
        closed: bool,
    ) -> Drained<D::Error> {
        drain(&mut self.stream, &mut self.dec, scratch, out, &mut self.fds, closed)
    }

    /// Write what is queued; arm or disarm WRITABLE as the socket needs.
    pub fn flush(&mut self, fx: &mut Effects) -> Flushed {
        let (result, armed) = match self.out.flush(&mut self.stream) {
            Ok(true) => (Flushed::Done, false),
            Ok(false) => (Flushed::Blocked, true),
            Err(e) => return Flushed::Failed(e),
        };
        if armed != self.writable_armed {
            self.writable_armed = armed;
            let interest =
                if armed { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            fx.push(Effect::Rewatch { fd: self.fd(), token: self.token, interest });
        }
        result
    }
}

/// How accepting from a listener stopped.
#[derive(Debug)]
pub enum Accepted {
    /// Every queued connection was taken.
    Drained,
    /// Out of file descriptors: the rest wait in the listen queue.
    OutOfFds(io::Error),
    Failed(io::Error),
}

/// Accept every queued connection of `l`, handing each to `take`; how many
/// and why it stopped.
pub fn accept_all(
    l: &mio::net::UnixListener,
    mut take: impl FnMut(UnixStream),
) -> (usize, Accepted) {
    let mut n = 0;
    loop {
        match l.accept() {
            Ok((stream, _)) => {
                n += 1;
                take(stream);
            }
            Err(e) => match stopped(e) {
                Some(why) => return (n, why),
                None => continue,
            },
        }
    }
}

/// What a failed `accept` means for the loop taking connections: `None`
/// to take the next (interrupted, or a connection reset before it was
/// taken), else why accepting stops. Every listener (Unix or TCP) reads
/// its errors with this.
pub fn stopped(e: io::Error) -> Option<Accepted> {
    match e.kind() {
        io::ErrorKind::WouldBlock => Some(Accepted::Drained),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => None,
        _ if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
            Some(Accepted::OutOfFds(e))
        }
        _ => Some(Accepted::Failed(e)),
    }
}

/// The peer's credentials, checked to be our own uid.
pub fn peer(stream: &UnixStream) -> Result<UnixCredentials, String> {
    let cred = getsockopt(stream, PeerCredentials)
        .map_err(|e| format!("cannot read its credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != me {
        return Err(format!("pid {} runs as uid {}, not {me}", cred.pid(), cred.uid()));
    }
    Ok(cred)
}

/// Read a non-blocking stream socket until it has nothing more (readiness
/// is a hint: the read decides), appending whole frames to `out`. Large
/// payloads are read straight into their buffer, everything else through
/// `scratch`. Reads are `recvmsg`: fds that come along wait in `fds` for
/// the frame they ride on (whose decoder claims them); one that no frame
/// can claim ends the connection (`Failed`, `InvalidData`), closed.
///
/// A read that fills less than its buffer and brings no fd found the
/// socket empty (a stream read stops early only at an fd), so it is the
/// last: the edge-triggered registration reports whatever arrives after
/// it, which saves the `recvmsg` that would only say `EAGAIN`, one per
/// wake-up. `closed` (the event said the peer closed or failed) reads on
/// to the end instead: a close that came before the event reports no
/// new edge.
pub fn drain<S, D>(
    stream: &mut S,
    dec: &mut D,
    scratch: &mut [u8],
    out: &mut Vec<D::Frame>,
    fds: &mut VecDeque<OwnedFd>,
    closed: bool,
) -> Drained<D::Error>
where
    S: Read + AsRawFd,
    D: StreamDecoder,
{
    let sock = stream.as_raw_fd();
    let mut done = |dec: &mut D, f: Option<D::Frame>, fds: &mut VecDeque<OwnedFd>| {
        if let Some(mut f) = f {
            dec.claim_fd(&mut f, fds);
            out.push(f);
        }
    };
    loop {
        if let Some(v) = dec.direct_target() {
            let (room, held) = (v.capacity() - v.len(), fds.len());
            match fdpass::recv_spare(sock, v, fds) {
                Ok(0) => return Drained::Eof,
                Ok(n) => {
                    let f = dec.direct_done();
                    done(dec, f, fds);
                    if let Err(e) = stray(dec, fds) {
                        return Drained::Failed(e);
                    }
                    if n < room && fds.len() == held && !closed {
                        return Drained::WouldBlock;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Drained::Failed(e),
            }
        }
        let held = fds.len();
        match fdpass::recv(sock, scratch, fds, 0) {
            Ok(0) => return Drained::Eof,
            Ok(n) => {
                let emptied = n < scratch.len() && fds.len() == held && !closed;
                let mut data = &scratch[..n];
                while !data.is_empty() {
                    match dec.feed(data) {
                        Ok((used, f)) => {
                            data = &data[used..];
                            done(dec, f, fds);
                        }
                        Err(e) => return Drained::Bad(e),
                    }
                }
                if let Err(e) = stray(dec, fds) {
                    return Drained::Failed(e);
                }
                if emptied {
                    return Drained::WouldBlock;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Drained::Failed(e),
        }
    }
}

/// After a read: an fd still waiting must belong to the frame being read,
/// and only one may. Otherwise every waiting fd is closed.
fn stray<D: StreamDecoder>(dec: &D, fds: &mut VecDeque<OwnedFd>) -> io::Result<()> {
    let allowed = usize::from(dec.mid_frame());
    if fds.len() > allowed {
        let n = fds.len();
        fds.clear();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{n} fd(s) came with frames that carry none (a payload fd rides on the first \
                 byte of a frame that announces it)"
            ),
        ));
    }
    Ok(())
}

/// Read from `fd` into the spare capacity of `v` (never past it).
/// Returns the bytes read; 0 means EOF.
pub fn read_spare(fd: RawFd, v: &mut Vec<u8>) -> io::Result<usize> {
    let spare = v.capacity() - v.len();
    // SAFETY: the kernel writes at most `spare` bytes into the vector's
    // reserved, unused capacity.
    let n = unsafe { libc::read(fd, v.as_mut_ptr().add(v.len()).cast(), spare) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel initialised exactly `n` bytes past the old length.
    unsafe { v.set_len(v.len() + n as usize) };
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;
    use std::io::Write;

    #[test]
    fn reads_frames_to_would_block_and_flushes_with_writable_armed_only_when_full() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let (mut c, watch) = Conn::new(UnixStream::from_std(a), frame::Decoder::new(), Token(7));
        assert!(matches!(watch, Effect::Watch { token: Token(7), .. }));
        // Two frames, one with a payload large enough to be read in place.
        let mut bytes = Vec::new();
        frame::push(&mut bytes, b"m1", b"p");
        frame::push(&mut bytes, b"m2", &vec![7u8; 100_000]);
        let writer = std::thread::spawn(move || {
            b.write_all(&bytes).unwrap();
            b
        });
        let mut frames = Vec::new();
        let mut scratch = vec![0u8; SCRATCH_READ];
        while frames.len() < 2 {
            match c.read(&mut scratch, &mut frames, false) {
                Drained::WouldBlock => std::thread::yield_now(),
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut b = writer.join().unwrap();
        assert_eq!(frames[0].meta, b"m1");
        assert_eq!(frames[1].payload.len(), 100_000);
        // Fill the socket: the flush blocks and arms WRITABLE once.
        let mut fx = Effects::new();
        c.out.push(vec![1u8; 8 << 20]);
        assert!(matches!(c.flush(&mut fx), Flushed::Blocked));
        assert!(matches!(c.flush(&mut fx), Flushed::Blocked));
        assert_eq!(fx.len(), 1, "armed once: {fx:?}");
        // Drain the other end: the flush completes and disarms.
        let reader = std::thread::spawn(move || {
            let mut got = 0;
            let mut buf = vec![0u8; 1 << 16];
            while got < 8 << 20 {
                got += std::io::Read::read(&mut b, &mut buf).unwrap();
            }
        });
        while !matches!(c.flush(&mut fx), Flushed::Done) {
            std::thread::yield_now();
        }
        reader.join().unwrap();
        assert_eq!(fx.len(), 2);
        assert!(
            matches!(fx[1], Effect::Rewatch { interest, .. } if interest == Interest::READABLE)
        );
    }

    #[test]
    fn a_short_read_is_the_last_unless_the_peer_closed() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let (mut c, _) = Conn::new(UnixStream::from_std(a), frame::Decoder::new(), Token(7));
        let mut scratch = vec![0u8; SCRATCH_READ];
        let mut bytes = Vec::new();
        frame::push(&mut bytes, b"m1", b"p");
        b.write_all(&bytes).unwrap();
        drop(b);
        // The data and the close are both queued: a plain readable event
        // stops after the short read (the close comes as its own event)...
        let mut frames = Vec::new();
        assert!(matches!(c.read(&mut scratch, &mut frames, false), Drained::WouldBlock));
        assert_eq!(frames.len(), 1);
        // ... and an event that says "closed" reads on to the end.
        assert!(matches!(c.read(&mut scratch, &mut frames, true), Drained::Eof));
        // A buffer's worth is not taken for "empty": the read goes on.
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let (mut c, _) = Conn::new(UnixStream::from_std(a), frame::Decoder::new(), Token(8));
        let mut small = vec![0u8; 16];
        let mut bytes = Vec::new();
        for m in [&b"first"[..], b"second", b"third"] {
            frame::push(&mut bytes, m, b"");
        }
        b.write_all(&bytes).unwrap();
        let mut frames = Vec::new();
        assert!(matches!(c.read(&mut small, &mut frames, false), Drained::WouldBlock));
        assert_eq!(
            frames.iter().map(|f| f.meta.clone()).collect::<Vec<_>>(),
            [b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
        );
    }
}
