//! The HTTP endpoint, a room: the TCP listener's connections, each with a
//! bounded buffer for one request head, its answer being written, and one
//! deadline. Parsing, routing and the bodies are pure (`crate::http`);
//! this does their I/O and asks the loop, through effects, to watch and
//! unwatch sockets and to arm deadlines.
//!
//! What a slow or hostile client can cost is bounded: at most
//! [`MAX_CONNS`] connections (at the limit, the connection idle longest
//! makes room for a new one; with none idle the new one is told 503), at
//! most [`MAX_HEAD`] bytes of request head each, one answer at a time per
//! connection (pipelined requests wait in the kernel until the answer
//! before them is written) and [`MAX_UNSENT`] of answers for all together, `header_timeout` from the first byte of a
//! request to the end of its head (a slowloris client gets 408 and is
//! closed), and `idle_timeout` between requests (`[http]` in weaver.toml).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::Interest;

use crate::daemon::conn::{self, Accepted};
use crate::daemon::effect::{Effect, Effects, Timer};
use crate::daemon::token;
use crate::http::request::MAX_HEAD;
use crate::http::{self, Need, Served, Snapshot};
use crate::supervise::config::HttpSpec;

/// Open connections at most.
pub const MAX_CONNS: usize = 1024;
/// After its last answer, how long a connection may take to close.
pub const LINGER: Duration = Duration::from_secs(1);
/// Bytes of answers not yet taken by their clients, all connections
/// together; past it, requests are answered 503 (and their connection
/// closed) until clients read.
pub const MAX_UNSENT: usize = 64 << 20;

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Bytes of the request head being read (at most [`MAX_HEAD`]).
    buf: Vec<u8>,
    /// The answer being written, and how much of it went out.
    out: Vec<u8>,
    sent: usize,
    /// Close once `out` is written.
    close: bool,
    /// Our side is shut down: waiting for the peer to close.
    shut: bool,
    writable_armed: bool,
    /// When the first byte of the request being read came.
    head_since: Option<Instant>,
    /// The last request answered (or the connection accepted).
    last: Instant,
    /// When its timer is armed to fire. A later deadline leaves it: the
    /// timer then finds it early and arms again, so a busy keep-alive
    /// connection costs one heap entry per deadline, not one per request.
    armed: Instant,
}

/// How long a connection may take.
#[derive(Debug, Clone, Copy)]
struct Limits {
    head: Duration,
    idle: Duration,
}

impl Conn {
    fn deadline(&self, l: Limits) -> Instant {
        match (self.shut, self.head_since) {
            (true, _) => self.last + LINGER,
            (false, Some(t)) => t + l.head,
            (false, None) => self.last + l.idle,
        }
    }

    /// Idle: nothing being read or written; may be closed to make room.
    fn idle(&self) -> bool {
        self.buf.is_empty() && self.out.is_empty()
    }
}

#[derive(Debug)]
pub struct Http {
    listener: TcpListener,
    addr: SocketAddr,
    conns: HashMap<u64, Conn>,
    /// Never reused.
    next_id: u64,
    /// Start-up ordering was seen finished once (`/ready` stays 200 after,
    /// until stopping).
    started_up: bool,
    /// Requests answered.
    pub served: u64,
    limits: Limits,
}

impl Http {
    /// The room for a bound listener (made non-blocking here); the loop
    /// registers [`Http::listener`] under `HTTP_LISTENER`.
    pub fn new(l: std::net::TcpListener, spec: &HttpSpec) -> io::Result<Http> {
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        Ok(Http {
            listener: TcpListener::from_std(l),
            addr,
            conns: HashMap::new(),
            next_id: 1,
            started_up: false,
            served: 0,
            limits: Limits { head: spec.header_timeout, idle: spec.idle_timeout },
        })
    }

    pub fn listener(&mut self) -> &mut TcpListener {
        &mut self.listener
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Accept every queued connection.
    pub fn accept(&mut self, now: Instant, fx: &mut Effects) -> Accepted {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) => match conn::stopped(e) {
                    Some(why) => return why,
                    None => continue,
                },
            };
            if self.conns.len() >= MAX_CONNS && !self.make_room(fx) {
                let mut out = Vec::new();
                http::busy(&mut out);
                let mut s = stream;
                let _ = s.write(&out);
                debug!("HTTP: refused a connection: {MAX_CONNS} open and none idle");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let id = self.next_id;
            self.next_id += 1;
            let fd = stream.as_raw_fd();
            fx.push(Effect::Watch { fd, token: token::http(id), interest: Interest::READABLE });
            let mut c = Conn {
                stream,
                buf: Vec::new(),
                out: Vec::new(),
                sent: 0,
                close: false,
                shut: false,
                writable_armed: false,
                head_since: None,
                last: now,
                armed: now,
            };
            c.armed = c.deadline(self.limits);
            fx.push(Effect::Arm { at: c.armed, timer: Timer::Http(id) });
            self.conns.insert(id, c);
        }
    }

    /// At the limit: close the connection idle longest, if any is idle.
    fn make_room(&mut self, fx: &mut Effects) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| c.idle())
            // Connections accepted in one turn share `last`: the lower id
            // was accepted first.
            .min_by_key(|(&id, c)| (c.last, id))
            .map(|(&id, _)| id);
        match oldest {
            Some(id) => {
                debug!("HTTP: closing idle connection {id} to make room");
                self.close(id, fx);
                true
            }
            None => false,
        }
    }

    /// Connection `id` is readable or writable: write what is pending,
    /// answer what is buffered, read more; `snap` gives the daemon's state
    /// when an answer needs it.
    pub fn event(
        &mut self,
        id: u64,
        snap: &mut dyn FnMut(Need) -> Snapshot,
        now: Instant,
        fx: &mut Effects,
    ) {
        let n = self.conns.len() as u64;
        let latch = &mut self.started_up;
        let mut snap = |need: Need| {
            let mut s = snap(need);
            s.http_connections = n;
            *latch |= s.started_up;
            s.started_up = *latch;
            s
        };
        let unsent: usize = self.conns.values().map(|c| c.out.len() - c.sent).sum();
        let Some(c) = self.conns.get_mut(&id) else { return };
        match pump(c, &mut snap, now, unsent > MAX_UNSENT, &mut self.served) {
            Ok(()) => {
                let armed = c.sent < c.out.len();
                if armed != c.writable_armed {
                    c.writable_armed = armed;
                    let interest = if armed {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    fx.push(Effect::Rewatch {
                        fd: c.stream.as_raw_fd(),
                        token: token::http(id),
                        interest,
                    });
                }
                let at = c.deadline(self.limits);
                if at < c.armed {
                    c.armed = at;
                    fx.push(Effect::Arm { at, timer: Timer::Http(id) });
                }
            }
            Err(why) => {
                debug!("HTTP connection {id}: {why}");
                self.close(id, fx);
            }
        }
    }

    /// Its deadline passed: a head that is late gets 408, an idle or
    /// lingering connection is closed.
    pub fn timer(&mut self, id: u64, now: Instant, fx: &mut Effects) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if now < c.deadline(self.limits) {
            let at = c.deadline(self.limits);
            c.armed = at;
            fx.push(Effect::Arm { at, timer: Timer::Http(id) });
            return;
        }
        if c.head_since.is_some() && !c.shut && c.out.is_empty() {
            debug!("HTTP connection {id}: request head not complete after {:?}", self.limits.head);
            c.buf.clear();
            c.head_since = None;
            http::timed_out(&mut c.out);
            c.close = true;
            c.last = now;
            return self.event(id, &mut |_| unreachable!("no request is parsed"), now, fx);
        }
        self.close(id, fx);
    }

    fn close(&mut self, id: u64, fx: &mut Effects) {
        let Some(c) = self.conns.remove(&id) else { return };
        fx.push(Effect::Cancel(Timer::Http(id)));
        // SAFETY: the stream is ours and consumed; the fd moves into the
        // OwnedFd, which the loop closes after unwatching it.
        let fd = unsafe { OwnedFd::from_raw_fd(c.stream.into_raw_fd()) };
        fx.push(Effect::Unwatch { fd });
    }
}

/// Drive one connection as far as it goes without blocking. `Err`: close
/// it now (the peer left, or the socket failed).
fn pump(
    c: &mut Conn,
    snap: &mut dyn FnMut(Need) -> Snapshot,
    now: Instant,
    over_budget: bool,
    served: &mut u64,
) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    loop {
        // Write what is pending first.
        while c.sent < c.out.len() {
            match c.stream.write(&c.out[c.sent..]) {
                Ok(0) => return Err("the peer takes no more".into()),
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write failed: {e}")),
            }
        }
        if !c.out.is_empty() {
            c.out = Vec::new();
            c.sent = 0;
            if c.close && !c.shut {
                // Shut our side and wait for the peer to close, so that
                // closing over its unread bytes cannot reset the
                // connection before it read the answer.
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                c.shut = true;
                c.buf = Vec::new();
                c.last = now;
            }
        }
        if c.shut {
            // Discard whatever still comes, until EOF.
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => return Err("closed after its last answer".into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read failed: {e}")),
                }
            }
        }
        // Answer a buffered request.
        let whole = || !matches!(http::request::parse(&c.buf), http::request::Parsed::Partial);
        if !c.buf.is_empty() && over_budget && whole() {
            debug!("HTTP: over {MAX_UNSENT} bytes of answers unsent: 503");
            http::busy(&mut c.out);
            *served += 1;
            c.buf = Vec::new();
            c.head_since = None;
            c.close = true;
            c.last = now;
            continue;
        }
        if !c.buf.is_empty() {
            if let Served::Answered { used, close, status } = http::serve(&c.buf, snap, &mut c.out)
            {
                *served += 1;
                if status >= 400 && status != 404 && status != 405 {
                    debug!("HTTP: answered {status}");
                }
                c.buf.drain(..used.min(c.buf.len()));
                c.head_since = if c.buf.is_empty() { None } else { Some(now) };
                c.close = close;
                c.last = now;
                continue;
            }
        }
        // Read more of the head, never past MAX_HEAD in all.
        let room = (MAX_HEAD - c.buf.len()).min(chunk.len());
        match c.stream.read(&mut chunk[..room]) {
            Ok(0) => return Err("closed by the peer".into()),
            Ok(n) => {
                c.buf.extend_from_slice(&chunk[..n]);
                c.head_since.get_or_insert(now);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// Bind the HTTP endpoint's listener on `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    if !addr.ip().is_loopback() {
        warn!("the HTTP endpoint serves other hosts on {addr} (allow_remote = true)");
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn room() -> (Http, SocketAddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = HttpSpec::check("127.0.0.1:0", false).unwrap();
        let h = Http::new(l, &spec).unwrap();
        let a = h.addr();
        (h, a)
    }

    /// Accept until the room holds `n` connections (the kernel may take a
    /// moment to queue them).
    fn accept_n(h: &mut Http, n: usize, fx: &mut Effects) {
        let end = Instant::now() + Duration::from_secs(10);
        while h.len() < n {
            assert!(Instant::now() < end, "only {} of {n} accepted", h.len());
            assert!(matches!(h.accept(Instant::now(), fx), Accepted::Drained));
        }
    }

    fn snap(_: Need) -> Snapshot {
        crate::http::tests::sample()
    }

    #[test]
    fn a_connection_is_watched_answered_and_kept_then_closed_at_eof() {
        let (mut h, addr) = room();
        let mut fx = Effects::new();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        accept_n(&mut h, 1, &mut fx);
        assert!(matches!(fx[0], Effect::Watch { token, .. } if token == token::http(1)));
        assert!(matches!(fx[1], Effect::Arm { timer: Timer::Http(1), .. }));
        client.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(10);
        client.set_nonblocking(true).unwrap();
        while !got.ends_with(b"}\n") {
            assert!(Instant::now() < end, "no answer: {:?}", String::from_utf8_lossy(&got));
            h.event(1, &mut snap, Instant::now(), &mut fx);
            let mut b = [0u8; 4096];
            if let Ok(n) = client.read(&mut b) {
                got.extend_from_slice(&b[..n]);
            }
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!((h.len(), h.served), (1, 1), "kept alive");
        drop(client);
        let end = Instant::now() + Duration::from_secs(10);
        while h.len() == 1 {
            assert!(Instant::now() < end, "EOF not seen");
            h.event(1, &mut snap, Instant::now(), &mut fx);
        }
        assert!(fx.iter().any(|e| matches!(e, Effect::Unwatch { .. })));
        assert!(fx.iter().any(|e| matches!(e, Effect::Cancel(Timer::Http(1)))));
    }

    #[test]
    fn over_the_unsent_budget_a_request_gets_503_and_its_connection_closes() {
        let (mut h, addr) = room();
        let mut fx = Effects::new();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        accept_n(&mut h, 1, &mut fx);
        client.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let c = h.conns.get_mut(&1).unwrap();
        let mut served = 0;
        let end = Instant::now() + Duration::from_secs(10);
        while served == 0 {
            assert!(Instant::now() < end);
            pump(c, &mut |_| panic!("not routed"), Instant::now(), true, &mut served).unwrap();
        }
        let mut got = String::new();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
        assert!(got.contains("unread answers"), "{got}");
    }

    #[test]
    fn a_late_head_gets_408_and_an_idle_connection_is_closed() {
        let (mut h, addr) = room();
        let mut fx = Effects::new();
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        let _idle = std::net::TcpStream::connect(addr).unwrap();
        accept_n(&mut h, 2, &mut fx);
        slow.write_all(b"GET /health HTTP/1.1\r\nX-Slow: a").unwrap();
        let t0 = Instant::now();
        // Until the room has read the partial head.
        let end = t0 + Duration::from_secs(10);
        while !h.conns.values().any(|c| c.head_since.is_some()) {
            assert!(Instant::now() < end);
            for id in [1, 2] {
                h.event(id, &mut snap, t0, &mut fx);
            }
        }
        let slow_id = *h.conns.iter().find(|(_, c)| c.head_since.is_some()).unwrap().0;
        let idle_id = 3 - slow_id;
        // Early: nothing happens but the timer moves.
        fx.clear();
        h.timer(slow_id, t0, &mut fx);
        assert!(matches!(fx[..], [Effect::Arm { .. }]), "{fx:?}");
        // Past the header timeout: 408 and our side shut.
        h.timer(slow_id, t0 + Duration::from_secs(11), &mut fx);
        let mut got = String::new();
        slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        slow.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
        assert!(got.contains("Connection: close\r\n"));
        // The idle one goes after idle_timeout.
        h.timer(idle_id, t0 + Duration::from_secs(61), &mut fx);
        assert!(!h.conns.contains_key(&idle_id));
    }
}
