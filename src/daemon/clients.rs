//! The clients room: every control-socket connection, its decoder and
//! bounded write queue, whether it finished its handshake, and when it is
//! to be closed. It turns bytes into requests and replies into bytes; what
//! a request means is for the handlers.

use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::UnixStream;

use crate::daemon::conn::{self, Conn, Drained, Flushed};
use crate::daemon::effect::{Effect, Effects, Timer};
use crate::daemon::ids::IdMap;
use crate::daemon::token;
use crate::frame::{self, RawFrame};
use crate::protocol::{self, ErrorKind, ErrorReply, Handshake, Response, ServerMsg};

/// A client whose unread replies exceed this is cut off: a client that stops
/// reading must not make weaver buffer without limit.
pub const MAX_CLIENT_BUFFER: usize = 64 << 20;
/// Connected clients at most; more are refused with a busy handshake.
pub const MAX_CLIENTS: usize = 1024;
/// A connection must finish its handshake this soon.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// A handshake is small: a client that sends more before it is done is cut
/// off.
pub const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;
/// Bytes of unfinished frames held for all clients together; the client
/// that would push past it is cut off.
pub const MAX_PARTIAL_TOTAL: usize = 128 << 20;

#[derive(Debug)]
pub struct Client {
    pub conn: Conn<frame::Decoder>,
    /// Handshake done.
    pub ready: bool,
    /// Close once the write queue is flushed.
    pub close_after_flush: bool,
    /// Asked for shutdown: keep the connection open until weaver exits, so
    /// its EOF tells the client that everything is gone.
    pub awaits_exit: bool,
    pub peer_pid: i32,
    /// Bytes of an unfinished frame counted in [`Clients::partial`].
    partial: usize,
}

/// What a read of one client gave.
#[derive(Debug, Default)]
pub struct Read {
    pub frames: Vec<RawFrame>,
    /// The client is gone (EOF or a failed read).
    pub gone: bool,
    /// The bytes were not a valid frame: why.
    pub bad: Option<String>,
}

#[derive(Debug, Default)]
pub struct Clients {
    map: IdMap<Client>,
    /// Never reused.
    next_id: u64,
    /// Clients with queued output to flush at the end of this turn.
    dirty: Vec<u64>,
    /// Bytes of unfinished frames held for all clients.
    partial: usize,
    /// A reply's meta is encoded here (reused; a large one is not kept).
    meta: Vec<u8>,
}

impl Clients {
    pub fn new() -> Self {
        Clients { next_id: 1, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, id: u64) -> Option<&Client> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Client> {
        self.map.get_mut(&id)
    }

    /// Unsent reply bytes of `id` (`usize::MAX` once it is gone).
    pub fn backlog(&self, id: u64) -> usize {
        self.map.get(&id).map_or(usize::MAX, |c| c.conn.out.len())
    }

    /// A new connection: only our own uid may talk to us, only so many at
    /// once, and it must say its handshake in time.
    pub fn accept(&mut self, mut stream: UnixStream, now: Instant, fx: &mut Effects) {
        let cred = match conn::peer(&stream) {
            Ok(c) => c,
            Err(why) => {
                warn!("refused a control connection: {why}; only this user may use this daemon");
                return;
            }
        };
        if self.map.len() >= MAX_CLIENTS {
            warn!(
                "refused a control connection from pid {}: {MAX_CLIENTS} clients are connected",
                cred.pid()
            );
            let mut hs = Handshake::new(false);
            hs.refusal = format!(
                "the weaver daemon (pid {}) already serves {MAX_CLIENTS} clients, its limit; retry when some have left",
                std::process::id()
            );
            let meta = protocol::encode(&hs);
            let mut frame = Vec::new();
            frame::push(&mut frame, &meta, &[]);
            // A small frame into a fresh socket: it fits, or the peer
            // learns from the close.
            let _ = stream.write(&frame);
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut dec = frame::Decoder::new();
        dec.set_limit(MAX_HANDSHAKE_BYTES);
        let (conn, watch) = Conn::new(stream, dec, token::client(id));
        fx.push(watch);
        fx.push(Effect::Arm { at: now + HANDSHAKE_DEADLINE, timer: Timer::Handshake(id) });
        debug!("client {id} connected (pid {})", cred.pid());
        let c = Client {
            conn,
            ready: false,
            close_after_flush: false,
            awaits_exit: false,
            peer_pid: cred.pid(),
            partial: 0,
        };
        self.map.insert(id, c);
    }

    /// Read what `id` sent. Unfinished frames count against the bounds:
    /// a client over them is reported bad (and closed by the caller).
    pub fn read(&mut self, id: u64, scratch: &mut [u8], closed: bool) -> Read {
        let mut r = Read::default();
        let Some(c) = self.map.get_mut(&id) else { return r };
        match c.conn.read(scratch, &mut r.frames, closed) {
            Drained::WouldBlock => {}
            Drained::Eof => r.gone = true,
            // Fds that no frame can claim, or ancillary data cut short: the
            // client is told why before its connection ends.
            Drained::Failed(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                r.bad = Some(e.to_string())
            }
            Drained::Failed(e) => {
                debug!("client {id}: read failed: {e}");
                r.gone = true;
            }
            Drained::Bad(e) => r.bad = Some(e.to_string()),
        }
        let held = c.conn.dec.buffered();
        self.partial = self.partial - c.partial + held;
        c.partial = held;
        if r.bad.is_none() && held > 0 && self.partial > MAX_PARTIAL_TOTAL {
            r.bad = Some(format!(
                "weaver holds {} bytes of unfinished requests from its clients, over its \
                 {MAX_PARTIAL_TOTAL}-byte limit; retry this request",
                self.partial
            ));
        }
        if r.bad.is_some() {
            // Nothing more is read from it: give its partial frame back.
            c.conn.dec = frame::Decoder::new();
            c.conn.dec.set_limit(0);
            self.partial -= c.partial;
            c.partial = 0;
        }
        r
    }

    /// `id` finished its handshake: it may send whole requests now.
    pub fn handshaken(&mut self, id: u64) {
        if let Some(c) = self.map.get_mut(&id) {
            c.ready = true;
            c.conn.dec.set_limit(usize::MAX);
        }
    }

    /// `id`'s handshake deadline passed: close it if it is still not done.
    pub fn handshake_overdue(&mut self, id: u64, fx: &mut Effects) {
        if let Some(c) = self.map.get(&id) {
            if !c.ready {
                warn!(
                    "client {id} (pid {}) did not finish its handshake within {HANDSHAKE_DEADLINE:?}; closing",
                    c.peer_pid
                );
                fx.push(Effect::Close { client: id, why: "no handshake in time" });
            }
        }
    }

    /// Whether requests of `id` are still to be served.
    pub fn serving(&self, id: u64) -> bool {
        self.map.get(&id).is_some_and(|c| !c.close_after_flush)
    }

    /// Queue a reply; a client that has stopped reading is cut off.
    pub fn reply(&mut self, id: u64, tag: u64, resp: Response, payload: Vec<u8>, fx: &mut Effects) {
        let mut meta = std::mem::take(&mut self.meta);
        protocol::encode_into(&ServerMsg { tag, resp }, &mut meta);
        self.queue(id, &meta, payload, fx);
        if meta.capacity() <= 4096 {
            self.meta = meta;
        }
    }

    /// Queue a reply whose payload is the sealed memfd `fd` of `len` bytes:
    /// the fd rides on the frame's first byte (the client owns it then).
    pub fn reply_fd(
        &mut self,
        id: u64,
        tag: u64,
        resp: Response,
        fd: std::os::fd::OwnedFd,
        len: u64,
        fx: &mut Effects,
    ) {
        let Some(c) = self.map.get_mut(&id) else { return };
        if c.conn.out.fds() >= crate::fdpass::MAX_FDS_IN_FLIGHT {
            warn!("client {id} (pid {}) is not reading its replies (payload fds waiting); cutting it off", c.peer_pid);
            fx.push(Effect::Close { client: id, why: "stopped reading" });
            return;
        }
        let meta = protocol::encode(&ServerMsg { tag, resp });
        let out = &mut c.conn.out;
        out.attach_fd(fd);
        out.push_slice(&frame::prefix_fd(meta.len()));
        out.push_slice(&meta);
        out.push_slice(&len.to_le_bytes());
        self.dirty.push(id);
    }

    pub fn reply_error(
        &mut self,
        id: u64,
        tag: u64,
        kind: ErrorKind,
        message: String,
        fx: &mut Effects,
    ) {
        self.reply(id, tag, Response::Error(ErrorReply { kind, message }), Vec::new(), fx);
    }

    /// Queue one frame; a large payload is queued as its own buffer (no
    /// copy).
    pub fn queue(&mut self, id: u64, meta: &[u8], payload: Vec<u8>, fx: &mut Effects) {
        let Some(c) = self.map.get_mut(&id) else { return };
        let out = &mut c.conn.out;
        out.push_slice(&frame::prefix(meta.len(), payload.len()));
        out.push_slice(meta);
        out.push(payload);
        if out.len() > MAX_CLIENT_BUFFER {
            warn!(
                "client {id} (pid {}) is not reading its replies ({} bytes waiting); cutting it off",
                c.peer_pid,
                out.len()
            );
            fx.push(Effect::Close { client: id, why: "stopped reading" });
            return;
        }
        self.dirty.push(id);
    }

    pub fn close_after_flush(&mut self, id: u64) {
        if let Some(c) = self.map.get_mut(&id) {
            c.close_after_flush = true;
            self.dirty.push(id);
        }
    }

    /// Write what `id` has queued.
    pub fn flush(&mut self, id: u64, fx: &mut Effects) {
        let Some(c) = self.map.get_mut(&id) else { return };
        match c.conn.flush(fx) {
            Flushed::Done if c.close_after_flush && !c.awaits_exit => {
                fx.push(Effect::Close { client: id, why: "closed after its last reply" })
            }
            Flushed::Done | Flushed::Blocked => {}
            Flushed::Failed(e) => {
                debug!("client {id}: write failed: {e}");
                fx.push(Effect::Close { client: id, why: "write failed" });
            }
        }
    }

    /// Flush every client written to this turn.
    pub fn flush_dirty(&mut self, fx: &mut Effects) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty.drain(..) {
            self.flush(id, fx);
        }
        self.dirty = dirty;
    }

    /// Forget `id`; its fd is handed back to be unwatched and closed, with
    /// the bytes it had queued.
    pub fn remove(&mut self, id: u64) -> Option<(OwnedFd, usize)> {
        let c = self.map.remove(&id)?;
        self.partial -= c.partial;
        let queued = c.conn.out.len() + c.partial;
        // SAFETY: `into_raw_fd` gives up ownership of a valid, open fd.
        Some((unsafe { OwnedFd::from_raw_fd(c.conn.stream.into_raw_fd()) }, queued))
    }

    /// At exit: give every client what it can take now.
    pub fn flush_all(&mut self) {
        let mut fx = Effects::new();
        for c in self.map.values_mut() {
            let _ = c.conn.flush(&mut fx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientMsg, Handshake, Request};

    #[test]
    fn frames_in_replies_out_and_a_client_that_stops_reading_is_cut_off() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut theirs = {
            let s = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(theirs));
            s.set_nonblocking(false).unwrap();
            s
        };
        let mut cs = Clients::new();
        let mut fx = Effects::new();
        cs.accept(ours, Instant::now(), &mut fx);
        assert!(
            matches!(
                fx[..],
                [Effect::Watch { .. }, Effect::Arm { timer: Timer::Handshake(1), .. }]
            ),
            "{fx:?}"
        );
        assert_eq!(cs.len(), 1);
        let id = 1;
        let hs = protocol::encode(&Handshake::new(false));
        let req = protocol::encode(&ClientMsg { tag: 4, req: Request::Ps });
        crate::stream::write_control(&mut theirs, &hs, &[]).unwrap();
        crate::stream::write_control(&mut theirs, &req, b"payload").unwrap();
        let mut scratch = vec![0u8; 64];
        let mut frames = Vec::new();
        while frames.len() < 2 {
            let r = cs.read(id, &mut scratch, false);
            assert!(!r.gone && r.bad.is_none());
            frames.extend(r.frames);
        }
        assert_eq!(frames[1].payload, b"payload");
        let mut fx = Effects::new();
        cs.reply(id, 4, Response::ShutdownStarted, Vec::new(), &mut fx);
        cs.flush_dirty(&mut fx);
        assert!(fx.is_empty(), "a reply that fits goes out without arming WRITABLE: {fx:?}");
        let f =
            crate::stream::read_frame(&mut frame::Decoder::new(), &mut theirs).unwrap().unwrap();
        let msg: ServerMsg = protocol::decode(&f.meta, "reply").unwrap();
        assert_eq!((msg.tag, msg.resp), (4, Response::ShutdownStarted));
        // Nobody reads: past the bound the client is to be closed.
        cs.queue(id, b"m", vec![0u8; MAX_CLIENT_BUFFER + 1], &mut fx);
        assert!(matches!(fx[..], [Effect::Close { client: 1, .. }]), "{fx:?}");
        assert!(cs.remove(id).is_some());
        assert!(cs.is_empty() && cs.remove(id).is_none());
        assert_eq!(cs.backlog(id), usize::MAX);
    }

    #[test]
    fn garbage_is_reported_and_eof_is_gone() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut cs = Clients::new();
        let mut fx = Effects::new();
        cs.accept(ours, Instant::now(), &mut fx);
        let mut theirs = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(theirs));
        std::io::Write::write_all(&mut theirs, &[0xff; 8]).unwrap();
        let mut scratch = vec![0u8; 64];
        let r = cs.read(1, &mut scratch, false);
        assert!(r.bad.unwrap().contains("over the"), "an oversized prefix is named");
        drop(theirs);
        let (ours, theirs) = UnixStream::pair().unwrap();
        cs.accept(ours, Instant::now(), &mut fx);
        drop(theirs);
        assert!(cs.read(2, &mut scratch, false).gone);
    }
}
