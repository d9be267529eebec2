//! One control-socket client: its socket, frame decoder, bounded write queue
//! and what we know about the peer.

use mio::net::UnixStream;

use crate::daemon::outq::OutQueue;
use crate::frame;

/// A client whose unread replies exceed this is cut off: a client that stops
/// reading must not make weaver buffer without limit.
pub const MAX_CLIENT_BUFFER: usize = 64 << 20;

#[derive(Debug)]
pub struct ClientConn {
    pub stream: UnixStream,
    pub dec: frame::Decoder,
    pub out: OutQueue,
    /// Handshake done.
    pub ready: bool,
    /// Close once the write queue is flushed.
    pub close_after_flush: bool,
    /// Asked for shutdown: keep the connection open until weaver exits, so
    /// its EOF tells the client that everything is gone.
    pub awaits_exit: bool,
    pub writable_armed: bool,
    pub peer_pid: i32,
}

impl ClientConn {
    pub fn new(stream: UnixStream, peer_pid: i32) -> Self {
        ClientConn {
            stream,
            dec: frame::Decoder::new(),
            out: OutQueue::new(),
            ready: false,
            close_after_flush: false,
            awaits_exit: false,
            writable_armed: false,
            peer_pid,
        }
    }

    /// Queue one frame; a large payload is queued as its own buffer (no
    /// copy).
    pub fn queue(&mut self, meta: &[u8], payload: Vec<u8>) {
        self.out.push_slice(&frame::prefix(meta.len(), payload.len()));
        self.out.push_slice(meta);
        self.out.push(payload);
    }
}
