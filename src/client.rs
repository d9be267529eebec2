//! Blocking client of the daemon's control socket: handshake, tagged
//! requests (pipelining allowed), replies matched by tag.
//!
//! Nothing waits on the daemon for good. Connecting and the handshake share
//! one deadline ([`CONNECT_WITHIN`]); while a reply is awaited, a quiet
//! spell of [`PING_AFTER`] sends a [`Request::Ping`] on the same connection,
//! and a daemon that answers nothing within [`PONG_WITHIN`] is reported as
//! not responding. A long request or a quiet stream goes on as long as the
//! daemon answers its pings. [`DEADLINE_ENV`] sets all three at once.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Kind, Result};
use crate::frame;
use crate::protocol::{
    self, ClientMsg, Handshake, Request, Response, ServerMsg, HANDSHAKE_MAGIC, PROTOCOL_VERSION,
};

/// Read size while waiting for the daemon to close the connection.
const DRAIN_BYTES: usize = 4096;
/// How long connecting and the handshake may take together.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// Silence on a connection that awaits a reply after which the client asks
/// the daemon whether it is alive.
pub const PING_AFTER: Duration = Duration::from_secs(5);
/// How long the daemon has to answer that question (or send anything).
pub const PONG_WITHIN: Duration = Duration::from_secs(5);
/// Milliseconds to use for all three deadlines instead (tests, very slow
/// machines).
pub const DEADLINE_ENV: &str = "WEAVER_CLIENT_DEADLINE_MS";

/// How long a client waits on the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Connect and handshake, together.
    pub connect: Duration,
    /// Quiet spell before a ping.
    pub ping_after: Duration,
    /// Time to answer a ping.
    pub pong_within: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines { connect: CONNECT_WITHIN, ping_after: PING_AFTER, pong_within: PONG_WITHIN }
    }
}

impl Deadlines {
    /// The defaults, or [`DEADLINE_ENV`] milliseconds for each when set to
    /// a positive number.
    pub fn from_env() -> Deadlines {
        match std::env::var(DEADLINE_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(ms) if ms > 0 => Deadlines::all(Duration::from_millis(ms)),
            _ => Deadlines::default(),
        }
    }

    /// `d` for each deadline.
    pub fn all(d: Duration) -> Deadlines {
        Deadlines { connect: d, ping_after: d, pong_within: d }
    }
}

/// The tag of the first request on a connection.
const FIRST_TAG: u64 = 1;

/// A duration as the CLI's messages show it: "5s", "250ms".
fn shown(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A read or write that ran into its timeout.
fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

pub struct Client {
    stream: UnixStream,
    dec: frame::Decoder,
    next_tag: u64,
    deadlines: Deadlines,
    /// The daemon's pid as the kernel tells it (SO_PEERCRED); 0 when it is
    /// not visible in our pid namespace.
    peer_pid: u32,
    /// The daemon's side of the handshake.
    pub server: Handshake,
}

/// A reply: the message and the frame payload.
#[derive(Debug)]
pub struct Reply {
    pub tag: u64,
    pub resp: Response,
    pub payload: Vec<u8>,
    /// A payload that came by fd: a checked, sealed memfd and its size
    /// (`payload` is then empty).
    pub fd: Option<(std::os::fd::OwnedFd, u64)>,
}

/// Reads a blocking socket with `recvmsg`, keeping the fds that come along.
struct FdReader<'a> {
    stream: &'a UnixStream,
    fds: &'a mut std::collections::VecDeque<std::os::fd::OwnedFd>,
}

impl io::Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        crate::fdpass::recv(self.stream.as_raw_fd(), buf, self.fds, 0)
    }
}

fn daemon_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Kind::Daemon, format!("{what}: {e}"))
}

impl Client {
    /// Connect and exchange handshakes, with the deadlines of
    /// [`Deadlines::from_env`]. `shutdown` asks the daemon to stop even if
    /// its protocol differs (the way out of a version mismatch).
    ///
    /// `Err` when the connect itself failed (no socket: `ENOENT`, nobody
    /// listening: `ECONNREFUSED`); `Ok(Err)` for a daemon that was reached
    /// but failed: [`Kind::NotResponding`] when the connect or the
    /// handshake ran past the deadline (the message names no pid: the
    /// caller may know it).
    pub fn connect(path: &Path, shutdown: bool) -> io::Result<std::result::Result<Client, Error>> {
        Self::connect_with(path, shutdown, Deadlines::from_env())
    }

    /// [`connect`](Self::connect) with these deadlines.
    pub fn connect_with(
        path: &Path,
        shutdown: bool,
        deadlines: Deadlines,
    ) -> io::Result<std::result::Result<Client, Error>> {
        Self::connect_first(path, shutdown, deadlines, None)
    }

    /// [`connect_with`](Self::connect_with), sending `first` (a request
    /// without payload) right behind the handshake, in the same write: the
    /// command saves a round trip. Its reply is [`first_reply`](Self::first_reply).
    /// A daemon that refuses the handshake reads no further, so `first` is
    /// served only on a connection that is then returned.
    pub fn connect_first(
        path: &Path,
        shutdown: bool,
        deadlines: Deadlines,
        first: Option<&Request>,
    ) -> io::Result<std::result::Result<Client, Error>> {
        let deadline = Instant::now() + deadlines.connect;
        let stream = match connect_by(path, deadline) {
            Ok(s) => s,
            Err(e) if timed_out(&e) => {
                return Ok(Err(Error::not_responding(
                    None,
                    format!(
                        "{} accepted no connection within {}",
                        path.display(),
                        shown(deadlines.connect)
                    ),
                )))
            }
            Err(e) => return Err(e),
        };
        Ok(Self::handshake(stream, path, shutdown, deadline, deadlines, first))
    }

    fn handshake(
        mut stream: UnixStream,
        path: &Path,
        shutdown: bool,
        deadline: Instant,
        deadlines: Deadlines,
        first: Option<&Request>,
    ) -> Result<Client> {
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
        let late = || {
            Error::not_responding(
                None,
                format!("it did not answer the handshake within {}", shown(deadlines.connect)),
            )
        };
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(left))
            .and_then(|_| stream.set_write_timeout(Some(left)))
            .map_err(|e| daemon_err("cannot set the connection's deadline", e))?;
        let hs = protocol::encode(&Handshake::new(shutdown));
        let mut bytes = Vec::new();
        frame::push(&mut bytes, &hs, &[]);
        if let Some(req) = first {
            let meta = protocol::encode(&ClientMsg { tag: FIRST_TAG, req: req.clone() });
            frame::push(&mut bytes, &meta, &[]);
        }
        // A daemon that refuses us (too many clients) may say so and close
        // before our handshake is written: its answer is read all the same.
        let sent = stream.write_all(&bytes);
        let mut dec = frame::Decoder::new();
        let f = match crate::stream::read_frame(&mut dec, &mut stream) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) if sent.is_err() => {
                let e = sent.unwrap_err();
                return Err(if timed_out(&e) {
                    late()
                } else {
                    daemon_err("cannot send handshake", e)
                });
            }
            Ok(None) => {
                return Err(Error::new(
                    Kind::Daemon,
                    "the daemon closed the connection during the handshake",
                ))
            }
            Err(e) if timed_out(&e) => return Err(late()),
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
        // From here, reads wait as long as pings are answered; a write that
        // makes no progress for a ping's time means the daemon reads
        // nothing.
        stream
            .set_read_timeout(None)
            .and_then(|_| stream.set_write_timeout(Some(deadlines.pong_within)))
            .map_err(|e| daemon_err("cannot set the connection's deadline", e))?;
        let peer_pid = u32::try_from(cred.pid()).unwrap_or(0);
        let next_tag = if first.is_some() { FIRST_TAG + 1 } else { FIRST_TAG };
        Ok(Client { stream, dec, next_tag, deadlines, peer_pid, server })
    }

    /// The reply to the request sent with the handshake
    /// ([`connect_first`](Self::connect_first)), checked as
    /// [`call`](Self::call)'s.
    pub fn first_reply(&mut self) -> Result<Reply> {
        debug_assert_eq!(self.next_tag, FIRST_TAG + 1, "a first request was sent");
        Replies { client: self, tag: FIRST_TAG, done: false }.one()
    }

    /// The pid of the daemon this client talks to, as it says.
    pub fn daemon_pid(&self) -> u32 {
        self.server.pid
    }

    /// The pid of the process at the other end, as the kernel says (what
    /// to signal or wait for); `None` if it is not visible from here.
    pub fn peer_pid(&self) -> Option<u32> {
        (self.peer_pid != 0).then_some(self.peer_pid)
    }

    /// Whether the daemon answers [`Request::Ping`] (it speaks our
    /// protocol; one reached by a cross-version `shutdown` may not).
    fn answers_pings(&self) -> bool {
        self.server.protocol == PROTOCOL_VERSION
    }

    /// Send a request; returns its tag.
    pub fn send(&mut self, req: Request, payload: &[u8]) -> io::Result<u64> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let meta = protocol::encode(&ClientMsg { tag, req });
        crate::stream::write_control(&mut self.stream, &meta, payload)?;
        Ok(tag)
    }

    /// Send a request whose payload is the sealed memfd `fd` of `len`
    /// bytes (`fdpass`): the fd rides on the frame's first byte.
    pub fn send_fd(
        &mut self,
        req: Request,
        fd: std::os::fd::BorrowedFd<'_>,
        len: u64,
    ) -> io::Result<u64> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let tag = self.next_tag;
        self.next_tag += 1;
        let meta = protocol::encode(&ClientMsg { tag, req });
        let mut bytes = frame::prefix_fd(meta.len()).to_vec();
        bytes.extend_from_slice(&meta);
        bytes.extend_from_slice(&len.to_le_bytes());
        let fds = [fd.as_raw_fd()];
        let n = loop {
            match sendmsg::<()>(
                self.stream.as_raw_fd(),
                &[io::IoSlice::new(&bytes)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.map_err(io::Error::from)?,
            }
        };
        // The fd went with the first byte; the rest (if any) follows plain.
        self.stream.write_all(&bytes[n..])?;
        Ok(tag)
    }

    /// Receive the next reply, whatever its tag. `Ok(None)` on EOF.
    pub fn recv(&mut self) -> io::Result<Option<Reply>> {
        let mut fds = std::collections::VecDeque::new();
        let mut r = FdReader { stream: &self.stream, fds: &mut fds };
        let Some(f) = crate::stream::read_frame(&mut self.dec, &mut r)? else {
            return Ok(None);
        };
        let msg: ServerMsg = protocol::decode(&f.meta, "reply")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if !f.by_fd {
            if !fds.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the daemon sent an fd with a reply that carries none",
                ));
            }
            return Ok(Some(Reply { tag: msg.tag, resp: msg.resp, payload: f.payload, fd: None }));
        }
        let got = fds.pop_front();
        if !fds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the daemon sent more than one fd with a reply",
            ));
        }
        match crate::fdpass::announced(&f.payload, got) {
            Ok(crate::fdpass::Payload::Fd { fd, len }) => Ok(Some(Reply {
                tag: msg.tag,
                resp: msg.resp,
                payload: Vec::new(),
                fd: Some((fd, len)),
            })),
            Ok(_) => unreachable!("announced gives an fd payload"),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.0)),
        }
    }

    /// Receive the next reply, checking that the daemon is alive while
    /// none comes: after [`Deadlines::ping_after`] of silence a ping goes
    /// out, and a daemon that sends nothing within
    /// [`Deadlines::pong_within`] is not responding. Pongs are consumed
    /// here. `Ok(None)` on EOF.
    fn recv_live(&mut self) -> Result<Option<Reply>> {
        // A ping sent and when its answer is due.
        let mut due: Option<Instant> = None;
        loop {
            let wait = match due {
                None => self.deadlines.ping_after,
                Some(at) => at.saturating_duration_since(Instant::now()),
            };
            if wait.is_zero() {
                return Err(self.unresponsive());
            }
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(|e| daemon_err("cannot set the connection's deadline", e))?;
            let got = self.recv();
            // Plain blocking reads again for whoever uses the stream next.
            let _ = self.stream.set_read_timeout(None);
            match got {
                Ok(Some(r)) if r.resp == Response::Pong => due = None,
                Ok(r) => return Ok(r),
                Err(e) if timed_out(&e) && due.is_none() && self.answers_pings() => {
                    self.send(Request::Ping, &[]).map_err(|e| {
                        if timed_out(&e) {
                            self.not_reading()
                        } else {
                            daemon_err("lost the connection to the daemon", e)
                        }
                    })?;
                    due = Some(Instant::now() + self.deadlines.pong_within);
                }
                // A daemon that cannot be pinged gets the same time once.
                Err(e) if timed_out(&e) && due.is_none() => {
                    due = Some(Instant::now() + self.deadlines.pong_within)
                }
                Err(e) if timed_out(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(daemon_err("lost the connection to the daemon", e)),
            }
        }
    }

    fn unresponsive(&self) -> Error {
        Error::not_responding(
            Some(self.server.pid),
            format!(
                "it answered nothing for {} on a live connection",
                shown(self.deadlines.ping_after + self.deadlines.pong_within)
            ),
        )
    }

    /// The error for a daemon that took nothing of what we wrote for a
    /// ping's time.
    fn not_reading(&self) -> Error {
        Error::not_responding(
            Some(self.server.pid),
            format!("it read nothing of a request for {}", shown(self.deadlines.pong_within)),
        )
    }

    /// Send one request and wait for its reply; an error reply becomes an
    /// `Error`.
    pub fn call(&mut self, req: Request, payload: &[u8]) -> Result<Reply> {
        self.stream_replies(req, payload)?.one()
    }

    /// [`Client::call`] with the payload in the sealed memfd `fd` of `len`
    /// bytes, passed to the daemon rather than copied.
    pub fn call_fd(
        &mut self,
        req: Request,
        fd: std::os::fd::BorrowedFd<'_>,
        len: u64,
    ) -> Result<Reply> {
        let tag = self.send_fd(req, fd, len).map_err(|e| {
            if timed_out(&e) {
                self.not_reading()
            } else {
                daemon_err("cannot send request to the daemon", e)
            }
        })?;
        Replies { client: self, tag, done: false }.one()
    }

    /// Send a request answered by a stream of replies (`Logs` with
    /// `follow`, `Events`) and iterate over them: each reply with the
    /// request's tag, in order (replies to other tags are skipped). The
    /// iteration ends when the daemon closes the connection, or after an
    /// `Err`: an error reply (`Kind::Request`), a broken connection or
    /// unreadable reply (`Kind::Daemon`), or a daemon that stopped
    /// answering pings (`Kind::NotResponding`). A quiet stream is not an
    /// error as long as the daemon answers its pings.
    pub fn stream_replies(&mut self, req: Request, payload: &[u8]) -> Result<Replies<'_>> {
        let tag = self.send(req, payload).map_err(|e| {
            if timed_out(&e) {
                self.not_reading()
            } else {
                daemon_err("cannot send request to the daemon", e)
            }
        })?;
        Ok(Replies { client: self, tag, done: false })
    }

    /// Wait until the daemon closes the connection (it has stopped),
    /// pinging it while it stops. A daemon that cannot be pinged (another
    /// protocol) is given `unpinged` in all.
    pub fn wait_closed(&mut self, unpinged: Duration) -> Result<()> {
        if self.answers_pings() {
            while self.recv_live()?.is_some() {}
            return Ok(());
        }
        let deadline = Instant::now() + unpinged;
        let mut buf = [0u8; DRAIN_BYTES];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::not_responding(
                    Some(self.server.pid),
                    format!("it did not stop within {} of being asked to", shown(unpinged)),
                ));
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted || timed_out(&e) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(daemon_err("waiting for the daemon to stop", e)),
            }
        }
    }

    /// The next reply, whatever its tag, for a caller with several
    /// requests in flight (`send`); the daemon's liveness is checked as for
    /// [`call`](Self::call). `Ok(None)` on EOF.
    pub fn next_reply(&mut self) -> Result<Option<Reply>> {
        self.recv_live()
    }

    /// How long this client waits on the daemon.
    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    /// For a caller that polls the connection together with other fds
    /// (`attach`): read what has arrived (one read: call it when the socket
    /// is readable) and append every whole reply to `out`. `Ok(false)` on
    /// EOF.
    pub fn read_ready(&mut self, out: &mut Vec<Reply>) -> io::Result<bool> {
        let mut buf = [0u8; 64 * 1024];
        let n = match self.stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(false),
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(false);
        }
        let mut data = &buf[..n];
        while !data.is_empty() {
            let (used, frame) = self
                .dec
                .feed(data)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            data = &data[used..];
            if let Some(f) = frame {
                if f.by_fd {
                    let what = "the daemon sent a payload by fd on a stream that takes none";
                    return Err(io::Error::new(io::ErrorKind::InvalidData, what));
                }
                let msg: ServerMsg = protocol::decode(&f.meta, "reply")
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                out.push(Reply { tag: msg.tag, resp: msg.resp, payload: f.payload, fd: None });
            }
        }
        Ok(true)
    }

    /// The raw stream (tests and benches write malformed bytes through it).
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// The connection itself, after the handshake (benches drive the
    /// framing by hand), with plain blocking reads and writes. Nothing is
    /// buffered: frames are read exactly.
    pub fn into_stream(self) -> UnixStream {
        let _ = self.stream.set_read_timeout(None);
        let _ = self.stream.set_write_timeout(None);
        self.stream
    }
}

/// The replies to one request, from [`Client::stream_replies`].
pub struct Replies<'a> {
    client: &'a mut Client,
    tag: u64,
    done: bool,
}

impl Replies<'_> {
    /// The one reply of a request that gets one: an error when the
    /// connection ends first.
    fn one(mut self) -> Result<Reply> {
        self.next().unwrap_or_else(|| {
            Err(Error::new(
                Kind::Daemon,
                "the daemon closed the connection before answering; see its log \
                 (`weaver status` shows where)",
            ))
        })
    }
}

impl Iterator for Replies<'_> {
    type Item = Result<Reply>;

    fn next(&mut self) -> Option<Result<Reply>> {
        while !self.done {
            let r = match self.client.recv_live() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
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

/// Connect to `path`, waiting at most until `deadline` for room in the
/// listener's backlog (a daemon that accepts nothing fills it, and a plain
/// blocking connect would then wait for good). For a Unix socket a blocking
/// connect waits as long as the socket's send timeout, and then fails with
/// `EAGAIN`.
fn connect_by(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let stream = UnixStream::from(fd);
    let addr = UnixAddr::new(path)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match socket::connect(stream.as_raw_fd(), &addr) {
            Ok(()) => return Ok(stream),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    const SHORT: Duration = Duration::from_millis(200);

    /// A peer that answers the handshake like a daemon of our protocol,
    /// then hands the connection to `then`.
    fn daemon_peer(
        dir: &tempfile::TempDir,
        then: impl FnOnce(UnixStream, frame::Decoder) + Send + 'static,
    ) -> (std::path::PathBuf, thread::JoinHandle<()>) {
        let path = dir.path().join("c.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut dec = frame::Decoder::new();
            crate::stream::read_frame(&mut dec, &mut s).unwrap().unwrap();
            let hs = protocol::encode(&Handshake::new(false));
            crate::stream::write_control(&mut s, &hs, &[]).unwrap();
            then(s, dec)
        });
        (path, t)
    }

    /// Read the client's requests; answer pings with pongs while `pongs`
    /// lasts, then answer nothing. Returns when the client hangs up.
    fn answer_pings(mut s: UnixStream, mut dec: frame::Decoder, mut pongs: usize) {
        while let Ok(Some(f)) = crate::stream::read_frame(&mut dec, &mut s) {
            let msg: ClientMsg = protocol::decode(&f.meta, "request").unwrap();
            if msg.req == Request::Ping && pongs > 0 {
                pongs -= 1;
                let meta = protocol::encode(&ServerMsg { tag: msg.tag, resp: Response::Pong });
                let _ = crate::stream::write_control(&mut s, &meta, &[]);
            }
        }
    }

    #[test]
    fn a_full_backlog_and_a_silent_handshake_end_at_the_deadline() {
        use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        // A listener that never accepts, with room for one connection.
        let l = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
            .unwrap();
        socket::bind(l.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        socket::listen(&l, Backlog::new(0).unwrap()).unwrap();
        let d = Deadlines::all(SHORT);

        let t = Instant::now();
        let e = Client::connect_with(&path, false, d).unwrap().err().unwrap();
        assert_eq!(e.kind, Kind::NotResponding);
        assert!(e.message.contains("did not answer the handshake within 200ms"), "{}", e.message);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

        // That connection still sits in the backlog: the next finds it full.
        let t = Instant::now();
        let e = Client::connect_with(&path, false, d).unwrap().err().unwrap();
        assert_eq!(e.kind, Kind::NotResponding);
        assert!(e.message.contains("accepted no connection within 200ms"), "{}", e.message);
        assert!(t.elapsed() >= SHORT && t.elapsed() < Duration::from_secs(3));
        drop(l);
        let e = Client::connect_with(&dir.path().join("none"), false, d).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn a_first_request_rides_with_the_handshake_and_its_reply_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let l = UnixListener::bind(&path).unwrap();
        let peer = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // Both frames came in one write: one read holds them both.
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let mut dec = frame::Decoder::new();
            let mut frames = Vec::new();
            let mut data = &buf[..n];
            while !data.is_empty() {
                let (used, f) = dec.feed(data).unwrap();
                data = &data[used..];
                frames.extend(f);
            }
            assert_eq!(frames.len(), 2, "handshake and request in one write");
            let hs: Handshake = protocol::decode(&frames[0].meta, "handshake").unwrap();
            assert_eq!(hs.magic, HANDSHAKE_MAGIC);
            let msg: ClientMsg = protocol::decode(&frames[1].meta, "request").unwrap();
            assert_eq!((msg.tag, msg.req), (FIRST_TAG, Request::Ps));
            let hs = protocol::encode(&Handshake::new(false));
            crate::stream::write_control(&mut s, &hs, &[]).unwrap();
            let meta = protocol::encode(&ServerMsg { tag: msg.tag, resp: Response::ComputeOk });
            crate::stream::write_control(&mut s, &meta, &[]).unwrap();
            // The next request takes the next tag.
            let f = crate::stream::read_frame(&mut dec, &mut s).unwrap().unwrap();
            let msg: ClientMsg = protocol::decode(&f.meta, "request").unwrap();
            assert_eq!(msg.tag, FIRST_TAG + 1);
        });
        let d = Deadlines::all(Duration::from_secs(5));
        let mut c = Client::connect_first(&path, false, d, Some(&Request::Ps)).unwrap().unwrap();
        let r = c.first_reply().unwrap();
        assert_eq!((r.tag, r.resp), (FIRST_TAG, Response::ComputeOk));
        c.send(Request::Ps, &[]).unwrap();
        peer.join().unwrap();
    }

    #[test]
    fn a_long_wait_goes_on_while_pings_are_answered_and_ends_when_they_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (path, peer) = daemon_peer(&dir, |s, dec| answer_pings(s, dec, 4));
        let d = Deadlines::all(Duration::from_millis(100));
        let mut c = Client::connect_with(&path, false, d).unwrap().unwrap();
        let t = Instant::now();
        let e = c.call(Request::Ps, &[]).unwrap_err();
        // Four pongs keep it waiting past four quiet spells; the fifth ping
        // goes unanswered.
        assert!(t.elapsed() >= Duration::from_millis(500), "{:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(e.kind, Kind::NotResponding);
        assert!(e.message.contains(&format!("(pid {})", std::process::id())), "{}", e.message);
        assert!(e.message.contains("answered nothing for 200ms"), "{}", e.message);
        drop(c);
        peer.join().unwrap();
    }

    #[test]
    fn a_reply_after_pings_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (path, peer) = daemon_peer(&dir, |mut s, mut dec| {
            let f = crate::stream::read_frame(&mut dec, &mut s).unwrap().unwrap();
            let first: ClientMsg = protocol::decode(&f.meta, "request").unwrap();
            // Quiet long enough for two pings, answered, then the reply.
            for _ in 0..2 {
                let f = crate::stream::read_frame(&mut dec, &mut s).unwrap().unwrap();
                let ping: ClientMsg = protocol::decode(&f.meta, "request").unwrap();
                assert_eq!(ping.req, Request::Ping);
                let meta = protocol::encode(&ServerMsg { tag: ping.tag, resp: Response::Pong });
                crate::stream::write_control(&mut s, &meta, &[]).unwrap();
            }
            let meta = protocol::encode(&ServerMsg { tag: first.tag, resp: Response::ComputeOk });
            crate::stream::write_control(&mut s, &meta, b"done").unwrap();
        });
        let d = Deadlines::all(Duration::from_millis(50));
        let mut c = Client::connect_with(&path, false, d).unwrap().unwrap();
        let r = c.call(Request::Compute { op: "sleep".into(), timeout_ms: None }, &[]).unwrap();
        assert_eq!((r.resp, r.payload), (Response::ComputeOk, b"done".to_vec()));
        peer.join().unwrap();
        // The peer has hung up: the wait for it to close ends.
        c.wait_closed(SHORT).unwrap();
    }

    #[test]
    fn a_daemon_that_reads_nothing_fails_a_large_request() {
        let dir = tempfile::tempdir().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        // Holds the connection open, reads nothing, until the client is done.
        let (path, peer) = daemon_peer(&dir, move |_s, _dec| {
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
        });
        let mut c = Client::connect_with(&path, false, Deadlines::all(SHORT)).unwrap().unwrap();
        let big = vec![0u8; 8 << 20];
        let t = Instant::now();
        let e = c.call(Request::Compute { op: "echo".into(), timeout_ms: None }, &big).unwrap_err();
        assert_eq!(e.kind, Kind::NotResponding);
        assert!(e.message.contains("read nothing of a request for 200ms"), "{}", e.message);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        done_tx.send(()).unwrap();
        peer.join().unwrap();
    }

    #[test]
    fn deadlines_and_how_messages_show_them() {
        assert_eq!(Deadlines::default().connect, CONNECT_WITHIN);
        assert_eq!(Deadlines::all(SHORT).pong_within, SHORT);
        assert_eq!(shown(Duration::from_secs(5)), "5s");
        assert_eq!(shown(Duration::from_millis(1500)), "1500ms");
    }
}
