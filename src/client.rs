//! Blocking client of the daemon's control socket: handshake, tagged
//! requests (pipelining allowed), replies matched by tag.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::error::{Error, Kind, Result};
use crate::frame;
use crate::protocol::{
    self, ClientMsg, Handshake, Request, Response, ServerMsg, HANDSHAKE_MAGIC, PROTOCOL_VERSION,
};

/// Read size while waiting for the daemon to close the connection.
const DRAIN_BYTES: usize = 4096;

pub struct Client {
    stream: UnixStream,
    dec: frame::Decoder,
    next_tag: u64,
    /// The daemon's side of the handshake.
    pub server: Handshake,
}

/// A reply: the message and the frame payload.
#[derive(Debug)]
pub struct Reply {
    pub tag: u64,
    pub resp: Response,
    pub payload: Vec<u8>,
}

fn daemon_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Kind::Daemon, format!("{what}: {e}"))
}

impl Client {
    /// Connect and exchange handshakes. `shutdown` asks the daemon to stop
    /// even if its protocol differs (the way out of a version mismatch).
    pub fn connect(path: &Path, shutdown: bool) -> io::Result<std::result::Result<Client, Error>> {
        let stream = UnixStream::connect(path)?;
        Ok(Self::handshake(stream, path, shutdown))
    }

    fn handshake(mut stream: UnixStream, path: &Path, shutdown: bool) -> Result<Client> {
        let cred =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_err(|e| daemon_err("cannot read the daemon's credentials", e))?;
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid() != me {
            return Err(Error::new(
                Kind::Daemon,
                format!(
                    "{} is served by uid {}, not by you (uid {me}); refusing to talk to it. \
                     Check who owns the runtime directory",
                    path.display(),
                    cred.uid()
                ),
            ));
        }
        let hs = protocol::encode(&Handshake::new(shutdown));
        // A daemon that refuses us (too many clients) may say so and close
        // before our handshake is written: its answer is read all the same.
        let sent = crate::stream::write_control(&mut stream, &hs, &[]);
        let mut dec = frame::Decoder::new();
        let f = match crate::stream::read_frame(&mut dec, &mut stream) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) if sent.is_err() => {
                return Err(daemon_err("cannot send handshake", sent.unwrap_err()))
            }
            Ok(None) => {
                return Err(Error::new(
                    Kind::Daemon,
                    "the daemon closed the connection during the handshake",
                ))
            }
            Err(e) => return Err(daemon_err("cannot read the daemon's handshake", e)),
        };
        let server: Handshake = protocol::decode(&f.meta, "handshake").map_err(|e| {
            Error::new(
                Kind::Mismatch,
                format!(
                    "{e}: the process behind {} is not a weaver daemon of a compatible release",
                    path.display()
                ),
            )
        })?;
        if server.magic != HANDSHAKE_MAGIC {
            return Err(Error::new(
                Kind::Mismatch,
                format!("{} is not a weaver control socket", path.display()),
            ));
        }
        if !server.refusal.is_empty() {
            // A daemon of our protocol refuses only for a while (too many
            // clients): retry later. Otherwise the releases differ.
            let kind = if server.protocol == PROTOCOL_VERSION {
                Kind::Request(crate::protocol::ErrorKind::Busy)
            } else {
                Kind::Mismatch
            };
            return Err(Error::new(kind, server.refusal));
        }
        if server.protocol != PROTOCOL_VERSION && !shutdown {
            return Err(Error::new(Kind::Mismatch, mismatch_message(&server)));
        }
        Ok(Client { stream, dec, next_tag: 1, server })
    }

    /// Send a request; returns its tag.
    pub fn send(&mut self, req: Request, payload: &[u8]) -> io::Result<u64> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let meta = protocol::encode(&ClientMsg { tag, req });
        crate::stream::write_control(&mut self.stream, &meta, payload)?;
        Ok(tag)
    }

    /// Receive the next reply, whatever its tag. `Ok(None)` on EOF.
    pub fn recv(&mut self) -> io::Result<Option<Reply>> {
        let Some(f) = crate::stream::read_frame(&mut self.dec, &mut self.stream)? else {
            return Ok(None);
        };
        let msg: ServerMsg = protocol::decode(&f.meta, "reply")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some(Reply { tag: msg.tag, resp: msg.resp, payload: f.payload }))
    }

    /// Send one request and wait for its reply; an error reply becomes an
    /// `Error`.
    pub fn call(&mut self, req: Request, payload: &[u8]) -> Result<Reply> {
        self.stream_replies(req, payload)?.next().unwrap_or_else(|| {
            Err(Error::new(
                Kind::Daemon,
                "the daemon closed the connection before answering; see its log \
                 (`weaver status` shows where)",
            ))
        })
    }

    /// Send a request answered by a stream of replies (`Logs` with
    /// `follow`, `Events`) and iterate over them: each reply with the
    /// request's tag, in order (replies to other tags are skipped). The
    /// iteration ends when the daemon closes the connection, or after an
    /// `Err`: an error reply (`Kind::Request`), or a broken connection or
    /// unreadable reply (`Kind::Daemon`).
    pub fn stream_replies(&mut self, req: Request, payload: &[u8]) -> Result<Replies<'_>> {
        let tag = self
            .send(req, payload)
            .map_err(|e| daemon_err("cannot send request to the daemon", e))?;
        Ok(Replies { client: self, tag, done: false })
    }

    /// Block until the daemon closes the connection (it has stopped).
    pub fn wait_closed(&mut self) -> io::Result<()> {
        let mut buf = [0u8; DRAIN_BYTES];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The raw stream (tests and benches write malformed bytes through it).
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// The connection itself, after the handshake (benches drive the
    /// framing by hand). Nothing is buffered: frames are read exactly.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }
}

/// The replies to one request, from [`Client::stream_replies`].
pub struct Replies<'a> {
    client: &'a mut Client,
    tag: u64,
    done: bool,
}

impl Iterator for Replies<'_> {
    type Item = Result<Reply>;

    fn next(&mut self) -> Option<Result<Reply>> {
        while !self.done {
            let r = match self.client.recv() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.done = true;
                    return Some(Err(daemon_err("lost the connection to the daemon", e)));
                }
            };
            if r.tag != self.tag {
                continue;
            }
            if let Response::Error(e) = r.resp {
                self.done = true;
                return Some(Err(e.into()));
            }
            return Some(Ok(r));
        }
        self.done = true;
        None
    }
}

/// The message for a daemon of another protocol version.
fn mismatch_message(server: &Handshake) -> String {
    format!(
        "the running weaver daemon (pid {}, release {}, protocol {}) does not speak this \
         client's protocol {} (release {}). Stop it with `weaver shutdown` (works across \
         versions); the next command starts a daemon of this release",
        server.pid,
        server.release,
        server.protocol,
        PROTOCOL_VERSION,
        protocol::RELEASE
    )
}
