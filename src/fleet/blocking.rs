//! A blocking driver for [`Client`]: one `std::net::TcpStream`, every wait
//! with a deadline. For the command line (`weaver fleet init`) and for
//! tests and benches talking to a real server; the daemon drives the same
//! client from its reactor instead.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::client::{Client, Event, Options, Phase, SendError};
use super::proto::{Headers, Msg};
use crate::sys::Rng;

pub struct Session {
    pub client: Client,
    stream: Option<TcpStream>,
    /// Events read but not yet asked for.
    queued: std::collections::VecDeque<Event>,
}

impl Session {
    /// Connect to the first server that answers, trying each once, before
    /// `deadline`.
    pub fn connect(opts: Options, deadline: Instant) -> Result<Session, String> {
        let now = Instant::now();
        let tries = opts.urls.len();
        let mut s = Session {
            client: Client::new(opts, now, Rng::from_time()),
            stream: None,
            queued: Default::default(),
        };
        let mut errors = Vec::new();
        for _ in 0..tries {
            match s.try_one(deadline) {
                Ok(()) => return Ok(s),
                Err(e) => errors.push(e),
            }
        }
        Err(errors.join("; "))
    }

    /// Dial the next server (after the client's backoff) and handshake.
    fn try_one(&mut self, deadline: Instant) -> Result<(), String> {
        let url = loop {
            if let Some(u) = self.client.dial(Instant::now()) {
                break u;
            }
            let Phase::Down { retry_at } = *self.client.phase() else {
                return Err("already connecting".into());
            };
            if retry_at >= deadline {
                return Err("no time left to connect".into());
            }
            // The blocking driver waits out the backoff (bounded by the
            // deadline checked above).
            std::thread::sleep(retry_at.saturating_duration_since(Instant::now()));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{url}: no time left to connect"));
        }
        let addr = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {}: {e}", url.host))?
            .next()
            .ok_or_else(|| format!("{url}: {} has no address", url.host))?;
        let stream = match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("{url}: {e}");
                self.client.closed(&why, Instant::now());
                return Err(why);
            }
        };
        let _ = stream.set_nodelay(true);
        self.stream = Some(stream);
        self.client.connected(Instant::now());
        loop {
            if self.client.is_ready() {
                // Connected events go to the caller too.
                return Ok(());
            }
            if matches!(self.client.phase(), Phase::Down { .. }) {
                let why = self.client.last_error().unwrap_or("connection lost").to_string();
                return Err(why);
            }
            self.turn(deadline).map_err(|e| format!("{url}: {e}"))?;
        }
    }

    /// Write what the client wants written, then read once (until
    /// `deadline` or the client's own next deadline) and run its timers.
    fn turn(&mut self, deadline: Instant) -> Result<(), String> {
        let out = self.client.take_output();
        let now = Instant::now();
        let Some(stream) = self.stream.as_mut() else {
            return Err("not connected".into());
        };
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out) {
                self.drop_conn(&format!("write: {e}"));
                return Ok(());
            }
        }
        let until = self.client.next_deadline().map_or(deadline, |d| d.min(deadline));
        let wait = until.saturating_duration_since(now).max(Duration::from_millis(1));
        stream.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64 * 1024];
        match stream.read(&mut buf) {
            Ok(0) => self.drop_conn("connection closed by the server"),
            Ok(n) => {
                let ev = self.client.received(&buf[..n], Instant::now());
                self.queued.extend(ev);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => self.drop_conn(&format!("read: {e}")),
        }
        let ev = self.client.tick(Instant::now());
        self.queued.extend(ev);
        if let Some(why) = self.client.should_close().map(str::to_string) {
            self.drop_conn(&why);
        }
        if Instant::now() >= deadline {
            return Err("timed out".into());
        }
        Ok(())
    }

    fn drop_conn(&mut self, why: &str) {
        self.stream = None;
        let ev = self.client.closed(why, Instant::now());
        self.queued.extend(ev);
    }

    /// The next event before `deadline` (None at the deadline). Reconnects
    /// as the client's backoff says.
    pub fn next_event(&mut self, deadline: Instant) -> Option<Event> {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            if self.stream.is_none() {
                let _ = self.try_one(deadline);
                continue;
            }
            if self.turn(deadline).is_err() {
                return None;
            }
        }
    }

    /// Send what is queued now.
    pub fn flush(&mut self) -> Result<(), String> {
        let out = self.client.take_output();
        match self.stream.as_mut() {
            Some(s) => s.write_all(&out).map_err(|e| format!("write: {e}")),
            None => Err("not connected".into()),
        }
    }

    pub fn publish(
        &mut self,
        subject: &str,
        headers: Option<&Headers>,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.client.publish(subject, None, headers, payload)
    }

    /// A request and its reply, other events kept for `next_event`.
    pub fn request(
        &mut self,
        subject: &str,
        headers: Option<&Headers>,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Msg, String> {
        let id = self
            .client
            .request(subject, headers, payload, timeout, Instant::now())
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout + Duration::from_millis(100);
        let mut kept = Vec::new();
        let r = loop {
            let Some(e) = self.next_event(deadline) else {
                break Err(format!("{subject}: no reply in time"));
            };
            match e {
                Event::Reply { id: r, msg } if r == id => break Ok(msg),
                Event::RequestFailed { id: r, why } if r == id => {
                    break Err(format!("{subject}: {why}"))
                }
                other => kept.push(other),
            }
        };
        for e in kept.into_iter().rev() {
            self.queued.push_front(e);
        }
        r
    }
}
