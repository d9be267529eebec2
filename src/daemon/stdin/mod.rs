//! The stdin room: the write ends of the pipes to supervised instances'
//! stdin (`stdin = "pipe"`), what waits to go into them, and who is
//! attached to write. It writes to a pipe at once and, only while bytes are
//! left that the pipe would not take, has the loop watch it for WRITABLE
//! (its own token range). Each run of an instance gets a fresh pipe
//! ([`Stdins::opened`] at spawn, [`Stdins::gone`] at the exit): bytes are
//! never kept for a later run.
//!
//! A send is answered once its last byte is in the pipe
//! ([`Response::Sent`]), or fails at its deadline with
//! [`ErrorKind::Busy`] saying how much of it went in (see
//! [`queue`] for the bounds and the order).

pub mod queue;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, info};
use mio::Interest;

use crate::daemon::effect::{Effect, Effects, Timer};
use crate::daemon::token;
use crate::protocol::{ErrorKind, ErrorReply, Response};
use crate::supervise::events::EventKind;
use queue::{Over, Pending, Queue, MAX_SEND, SEND_CHUNK, STDIN_BUFFER};

/// Bytes of sends that wait for room, across all instances, at most; a
/// send past it is refused busy at once.
pub const STDIN_WAITING: usize = 64 << 20;

/// One instance's stdin, while its process runs.
#[derive(Debug)]
struct Input {
    /// Names the pipe's token; never reused.
    pipe: u64,
    /// The write end; `None` once closed.
    file: Option<File>,
    /// Registered with the loop for WRITABLE.
    watched: bool,
    queue: Queue,
    /// Why it was closed, once it is.
    closed: Option<String>,
    /// Clients a send of which failed here: their later sends are refused
    /// too, so what one client sends arrives without a hole even when it
    /// has several sends in flight.
    failed: HashSet<u64>,
}

/// A `weaver attach` that writes to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer {
    pub client: u64,
    /// The attach request's tag.
    pub tag: u64,
    /// The attaching command's pid, for messages.
    pub pid: i32,
}

/// One send request, as the handler hands it over.
#[derive(Debug)]
pub struct Send {
    pub client: u64,
    pub tag: u64,
    pub instance: String,
    pub bytes: Vec<u8>,
    pub close: bool,
    /// Fail if not all in the pipe by then.
    pub timeout: Duration,
    /// Who closes, for the `stdin_closed` event ("weaver send").
    pub by: &'static str,
}

/// Why a send did not go in whole.
#[derive(Debug, Clone, Copy)]
enum Why {
    Overdue(Duration),
    EarlierFailed,
    Exited,
    ProcessClosed,
    Closed,
    ClientLeft,
}

#[derive(Debug, Default)]
pub struct Stdins {
    /// By instance name.
    inputs: HashMap<String, Input>,
    /// Pipe id -> instance.
    pipes: HashMap<u64, String>,
    next_pipe: u64,
    /// Send id -> (instance, its timeout), while queued.
    sends: HashMap<u64, (String, Duration)>,
    next_send: u64,
    /// Attached writers by instance (they stay across restarts).
    writers: HashMap<String, Writer>,
}

impl Stdins {
    pub fn new() -> Self {
        Stdins { next_pipe: 1, next_send: 1, ..Default::default() }
    }

    /// A run of `instance` started with this write end of its stdin.
    pub fn opened(&mut self, instance: &str, fd: OwnedFd, fx: &mut Effects) {
        self.gone(instance, fx);
        crate::sys::set_nonblocking(fd.as_raw_fd());
        let pipe = self.next_pipe;
        self.next_pipe += 1;
        self.pipes.insert(pipe, instance.to_string());
        let input = Input {
            pipe,
            file: Some(fd.into()),
            watched: false,
            queue: Queue::new(),
            closed: None,
            failed: HashSet::new(),
        };
        self.inputs.insert(instance.to_string(), input);
    }

    /// Whether the current run of `instance` has a stdin pipe (open or
    /// closed).
    pub fn has(&self, instance: &str) -> bool {
        self.inputs.contains_key(instance)
    }

    /// Why `instance`'s stdin is closed, if it is.
    pub fn closed(&self, instance: &str) -> Option<&str> {
        self.inputs.get(instance).and_then(|i| i.closed.as_deref())
    }

    /// The run of `instance` is over (its process was reaped): what waits
    /// fails, the pipe is closed.
    pub fn gone(&mut self, instance: &str, fx: &mut Effects) {
        let Some(mut input) = self.inputs.remove(instance) else { return };
        self.pipes.remove(&input.pipe);
        let over = input.queue.fail_all();
        self.fail(instance, over, Why::Exited, fx);
        close(&mut input, fx);
    }

    /// Queue a send and write what the pipe takes now. An error is the
    /// reply (nothing of the send was taken).
    pub fn send(&mut self, s: Send, now: Instant, fx: &mut Effects) -> Result<(), ErrorReply> {
        let Send { client, tag, instance, bytes, close, timeout, by } = s;
        if bytes.len() > MAX_SEND {
            return Err(ErrorReply {
                kind: ErrorKind::TooLarge,
                message: format!(
                    "one send takes at most {MAX_SEND} bytes, not {}; `weaver send` splits its \
                     input into pieces of {SEND_CHUNK}",
                    bytes.len()
                ),
            });
        }
        let waiting = self.waiting();
        let Some(input) = self.inputs.get_mut(&instance) else {
            return Err(bad(format!(
                "{instance} is not running: input is not kept for a later run"
            )));
        };
        if let Some(why) = &input.closed {
            return Err(bad(format!(
                "{instance}'s stdin is closed ({why}); it gets a new one when it starts again"
            )));
        }
        if input.failed.contains(&client) {
            return Err(ErrorReply {
                kind: ErrorKind::Busy,
                message: format!(
                    "an earlier send of this connection to {instance} failed: nothing of this \
                     send was written"
                ),
            });
        }
        let would_wait = input.queue.would_wait(bytes.len());
        if would_wait && waiting + bytes.len() > STDIN_WAITING {
            return Err(ErrorReply {
                kind: ErrorKind::Busy,
                message: format!(
                    "{} bytes already wait for room in processes' stdin, weaver's limit; nothing \
                     of this send was written. Retry later",
                    waiting
                ),
            });
        }
        let id = self.next_send;
        self.next_send += 1;
        input.queue.push(Pending { id, client, tag, bytes, written: 0, close });
        self.sends.insert(id, (instance.clone(), timeout));
        fx.push(Effect::Arm { at: now + timeout, timer: Timer::Stdin(id) });
        self.pump(&instance, by, fx);
        Ok(())
    }

    /// The pipe with this id has room again.
    pub fn writable(&mut self, pipe: u64, fx: &mut Effects) {
        if let Some(instance) = self.pipes.get(&pipe).cloned() {
            self.pump(&instance, "weaver send", fx);
        }
    }

    /// Send `id` was not all in the pipe by its deadline.
    pub fn overdue(&mut self, id: u64, fx: &mut Effects) {
        let Some((instance, timeout)) = self.sends.get(&id).cloned() else { return };
        let Some(input) = self.inputs.get_mut(&instance) else { return };
        let over = input.queue.fail(id);
        let mut over = over.into_iter();
        if let Some(first) = over.next() {
            self.fail(&instance, vec![first], Why::Overdue(timeout), fx);
        }
        self.fail(&instance, over.collect(), Why::EarlierFailed, fx);
        // What was behind the withdrawn send may fit now.
        self.pump(&instance, "weaver send", fx);
    }

    /// `client` left: its sends not begun are withdrawn, and it no longer
    /// writes to what it was attached to.
    pub fn forget_client(&mut self, client: u64, fx: &mut Effects) {
        self.writers.retain(|_, w| w.client != client);
        // Only the instances it had sends queued for need more.
        let mut touched = Vec::new();
        for (name, input) in &mut self.inputs {
            input.failed.remove(&client);
            let over = input.queue.forget_client(client);
            if !over.is_empty() {
                touched.push((name.clone(), over));
            }
        }
        for (name, over) in touched {
            self.fail(&name, over, Why::ClientLeft, fx);
            self.pump(&name, "weaver send", fx);
        }
    }

    /// Make `w` the writer of `instance`. Another writer there is an error
    /// unless `force`, which takes over: the one displaced is returned.
    pub fn attach(
        &mut self,
        instance: &str,
        w: Writer,
        force: bool,
    ) -> Result<Option<Writer>, Writer> {
        match self.writers.get(instance) {
            Some(old) if old.client != w.client && !force => Err(*old),
            _ => Ok(self.writers.insert(instance.to_string(), w).filter(|o| o.client != w.client)),
        }
    }

    /// The attached writer of `instance`, if any.
    pub fn writer(&self, instance: &str) -> Option<Writer> {
        self.writers.get(instance).copied()
    }

    /// Write what `instance` has queued until the pipe is full; watch it
    /// for WRITABLE only while something is left.
    fn pump(&mut self, instance: &str, by: &str, fx: &mut Effects) {
        let Some(input) = self.inputs.get_mut(instance) else { return };
        let mut done: Vec<Over> = Vec::new();
        let mut broken = false;
        while let Some(file) = input.file.as_mut() {
            let Some(buf) = input.queue.front() else { break };
            let n = if buf.is_empty() {
                0
            } else {
                match file.write(buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!("{instance}: writing to its stdin: {e}");
                        broken = true;
                        break;
                    }
                }
            };
            let over = input.queue.wrote(n);
            let closing = over.last().is_some_and(|o| o.close);
            done.extend(over);
            if closing {
                break;
            }
        }
        let closing = done.last().is_some_and(|o| o.close);
        for o in &done {
            fx.push(Effect::Cancel(Timer::Stdin(o.id)));
            self.sends.remove(&o.id);
            let resp = Response::Sent {
                instance: instance.to_string(),
                bytes: o.len as u64,
                closed: o.close,
            };
            fx.push(Effect::Reply { client: o.client, tag: o.tag, resp, payload: Vec::new() });
        }
        let input = self.inputs.get_mut(instance).expect("looked up above");
        if closing || broken {
            let why = if closing {
                format!("closed by {by}")
            } else {
                "the process closed its end".to_string()
            };
            info!("process {instance}: stdin closed: {why}");
            close(input, fx);
            input.closed = Some(why.clone());
            let rest = input.queue.fail_all();
            let how = if closing { Why::Closed } else { Why::ProcessClosed };
            self.fail(instance, rest, how, fx);
            let kind = EventKind::StdinClosed { reason: why };
            fx.push(Effect::Publish { instance: instance.to_string(), kind });
            return;
        }
        let want = input.queue.front().is_some();
        let Some(file) = input.file.as_ref() else { return };
        let (fd, token) = (file.as_raw_fd(), token::stdin(input.pipe));
        if want && !input.watched {
            fx.push(Effect::Watch { fd, token, interest: Interest::WRITABLE });
            input.watched = true;
        } else if !want && input.watched {
            fx.push(Effect::Unregister { fd });
            input.watched = false;
        }
    }

    /// Answer sends that did not go in whole.
    fn fail(&mut self, instance: &str, over: Vec<Over>, why: Why, fx: &mut Effects) {
        for o in over {
            fx.push(Effect::Cancel(Timer::Stdin(o.id)));
            self.sends.remove(&o.id);
            if matches!(why, Why::ClientLeft) {
                continue;
            }
            if let Some(input) = self.inputs.get_mut(instance) {
                input.failed.insert(o.client);
            }
            let went = if o.written == 0 {
                "nothing of this send was written".to_string()
            } else {
                format!("{} of its {} bytes were written, the rest was not", o.written, o.len)
            };
            let (kind, message) = match why {
                Why::Overdue(t) => (
                    ErrorKind::Busy,
                    format!(
                        "{instance} did not read its stdin in time ({} ms; weaver holds at most \
                         {STDIN_BUFFER} bytes for it): {went}. Retry later or give a longer \
                         --timeout",
                        t.as_millis()
                    ),
                ),
                Why::EarlierFailed => (
                    ErrorKind::Busy,
                    format!("an earlier send of this connection to {instance} failed: {went}"),
                ),
                Why::Exited => (
                    ErrorKind::Cancelled,
                    format!(
                        "{instance} exited before reading its input: {went}; input is not kept \
                         for a later run"
                    ),
                ),
                Why::ProcessClosed => {
                    (ErrorKind::Cancelled, format!("{instance} closed its stdin: {went}"))
                }
                Why::Closed => (
                    ErrorKind::BadRequest,
                    format!("{instance}'s stdin was closed by an earlier send: {went}"),
                ),
                Why::ClientLeft => unreachable!("skipped above"),
            };
            let resp = Response::Error(ErrorReply { kind, message });
            fx.push(Effect::Reply { client: o.client, tag: o.tag, resp, payload: Vec::new() });
        }
    }

    /// Bytes of sends waiting for room, all instances together.
    pub fn waiting(&self) -> usize {
        self.inputs.values().map(|i| i.queue.waiting()).sum()
    }
}

/// Close the write end (the process reads EOF), unwatching it first.
fn close(input: &mut Input, fx: &mut Effects) {
    if let Some(file) = input.file.take() {
        if input.watched {
            fx.push(Effect::Unwatch { fd: file.into() });
        }
        input.watched = false;
    }
}

fn bad(message: String) -> ErrorReply {
    ErrorReply { kind: ErrorKind::BadRequest, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const T: Duration = Duration::from_secs(5);

    fn pipe() -> (File, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (File::from(r), w)
    }

    fn send(client: u64, tag: u64, bytes: &[u8], close: bool) -> Send {
        Send {
            client,
            tag,
            instance: "cat".into(),
            bytes: bytes.to_vec(),
            close,
            timeout: T,
            by: "weaver send",
        }
    }

    fn replies(fx: &Effects) -> Vec<(u64, Response)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Reply { tag, resp, .. } => Some((*tag, resp.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_send_is_answered_once_it_is_in_the_pipe_and_close_gives_eof() {
        let mut s = Stdins::new();
        let (mut r, w) = pipe();
        let mut fx = Effects::new();
        s.opened("cat", w, &mut fx);
        s.send(send(1, 7, b"hello\n", false), Instant::now(), &mut fx).unwrap();
        assert!(matches!(replies(&fx)[..], [(7, Response::Sent { bytes: 6, closed: false, .. })]));
        assert!(!fx.iter().any(|e| matches!(e, Effect::Watch { .. })), "the pipe took it all");
        let mut fx = Effects::new();
        s.send(send(1, 8, b"", true), Instant::now(), &mut fx).unwrap();
        assert!(matches!(replies(&fx)[..], [(8, Response::Sent { closed: true, .. })]));
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Publish { kind: EventKind::StdinClosed { .. }, .. })));
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello\n", "then EOF");
        let e = s.send(send(1, 9, b"x", false), Instant::now(), &mut fx).unwrap_err();
        assert!(e.message.contains("stdin is closed (closed by weaver send)"), "{}", e.message);
    }

    #[test]
    fn a_full_pipe_is_watched_until_it_drains_and_a_late_send_fails_busy() {
        let mut s = Stdins::new();
        let (mut r, w) = pipe();
        let mut fx = Effects::new();
        s.opened("cat", w, &mut fx);
        let big = vec![b'x'; STDIN_BUFFER];
        s.send(send(1, 1, &big, false), Instant::now(), &mut fx).unwrap();
        s.send(send(2, 2, &big, false), Instant::now(), &mut fx).unwrap();
        s.send(send(2, 3, b"later", false), Instant::now(), &mut fx).unwrap();
        let watches = fx.iter().filter(|e| matches!(e, Effect::Watch { .. })).count();
        assert_eq!(watches, 1, "WRITABLE is asked for once: {fx:?}");
        assert!(replies(&fx).is_empty());
        assert_eq!(s.waiting(), STDIN_BUFFER + 5, "the second and third wait for room");
        // The second's deadline: it and the later send of its client fail,
        // nothing of them written.
        let mut fx = Effects::new();
        let id2 = 2;
        s.overdue(id2, &mut fx);
        let r2 = replies(&fx);
        assert_eq!(r2.len(), 2);
        for (_, resp) in &r2 {
            match resp {
                Response::Error(e) => {
                    assert_eq!(e.kind, ErrorKind::Busy);
                    assert!(
                        e.message.contains("nothing of this send was written"),
                        "{}",
                        e.message
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(s.waiting(), 0);
        // Client 2's later sends are refused: no hole in what it sends.
        let e = s.send(send(2, 4, b"more", false), Instant::now(), &mut fx).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Busy);
        assert!(e.message.contains("an earlier send of this connection"), "{}", e.message);
        // The reader drains: the first goes in whole and the watch ends.
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        let mut fx = Effects::new();
        while got < STDIN_BUFFER {
            got += r.read(&mut buf).unwrap();
            s.writable(1, &mut fx);
        }
        assert_eq!(got, STDIN_BUFFER);
        assert!(matches!(replies(&fx)[..], [(1, Response::Sent { .. })]));
        assert!(fx.iter().any(|e| matches!(e, Effect::Unregister { .. })), "{fx:?}");
    }

    #[test]
    fn an_exit_fails_what_waits_and_the_next_run_starts_empty() {
        let mut s = Stdins::new();
        let (r, w) = pipe();
        let mut fx = Effects::new();
        s.opened("cat", w, &mut fx);
        s.send(send(1, 1, &vec![0; STDIN_BUFFER], false), Instant::now(), &mut fx).unwrap();
        s.send(send(2, 2, &vec![1; STDIN_BUFFER], false), Instant::now(), &mut fx).unwrap();
        assert_eq!(s.waiting(), STDIN_BUFFER);
        let mut fx = Effects::new();
        s.gone("cat", &mut fx);
        drop(r);
        assert_eq!(s.waiting(), 0, "nothing is counted for a pipe that is gone");
        match &replies(&fx)[..] {
            [(1, Response::Error(e)), (2, Response::Error(e2))] => {
                assert_eq!(e.kind, ErrorKind::Cancelled);
                assert!(
                    e.message.contains("bytes were written, the rest was not"),
                    "{}",
                    e.message
                );
                assert!(e2.message.contains("nothing of this send was written"), "{}", e2.message);
            }
            other => panic!("{other:?}"),
        }
        let e = s.send(send(1, 2, b"x", false), Instant::now(), &mut fx).unwrap_err();
        assert!(e.message.contains("not running"), "{}", e.message);
        let (_r, w) = pipe();
        s.opened("cat", w, &mut fx);
        assert!(s.send(send(1, 3, b"x", false), Instant::now(), &mut fx).is_ok());
    }

    #[test]
    fn a_reader_that_closed_its_end_is_reported() {
        let mut s = Stdins::new();
        let (r, w) = pipe();
        let mut fx = Effects::new();
        s.opened("cat", w, &mut fx);
        drop(r);
        s.send(send(1, 1, b"x", false), Instant::now(), &mut fx).unwrap();
        assert!(
            matches!(&replies(&fx)[..], [(1, Response::Error(e))] if e.kind == ErrorKind::Cancelled)
        );
        assert_eq!(s.closed("cat"), Some("the process closed its end"));
    }

    #[test]
    fn one_writer_at_a_time_unless_forced() {
        let mut s = Stdins::new();
        let a = Writer { client: 1, tag: 1, pid: 10 };
        let b = Writer { client: 2, tag: 1, pid: 20 };
        assert_eq!(s.attach("cat", a, false), Ok(None));
        assert_eq!(s.attach("cat", b, false), Err(a));
        assert_eq!(s.attach("cat", b, true), Ok(Some(a)));
        assert_eq!(s.writer("cat"), Some(b));
        s.forget_client(2, &mut Effects::new());
        assert_eq!(s.writer("cat"), None);
    }
}
