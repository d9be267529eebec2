//! `weaver send` and `weaver attach`: input to a supervised process's stdin.
//!
//! `send` splits its input into requests of [`SEND_CHUNK`], a few in
//! flight, each answered once its bytes are in the pipe; the daemon writes
//! them in order and refuses the rest of a connection's sends after one
//! failed, so a failure names how much of the input went in: a prefix.
//!
//! `attach` polls the terminal and the connection together (one thread):
//! what is typed goes to the process a line at a time (the terminal is in
//! raw mode and `attach` edits the line: backspace, Ctrl-U), the process's
//! output comes back as `logs -f` shows it. Ctrl-D on an empty line ends
//! the input (closing the process's stdin with `--close-on-eof`), Ctrl-]
//! or Ctrl-C detaches. The terminal is restored on every way out.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, OutputFlags, SetArg, Termios};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};

use super::{unexpected, Ctx};
use crate::cli::{AttachArgs, SendArgs};
use crate::client::Client;
use crate::daemon::stdin::queue::SEND_CHUNK;
use crate::error::{Error, Kind, Result};
use crate::output::{eprint, print, write_bytes};
use crate::protocol::{Request, Response};
use crate::render;

/// Pieces of input one `send` has in flight (their bytes together: the
/// daemon's bound per instance).
const SEND_IN_FLIGHT: usize = 4;
/// Sends of typed input one attach has in flight, at most; the terminal is
/// not read while they are out.
const ATTACH_IN_FLIGHT: usize = 16;
/// How long a typed line may wait for room in the process's stdin.
const ATTACH_SEND_TIMEOUT_MS: u64 = 10_000;
/// The detach key: Ctrl-].
pub const DETACH_KEY: u8 = 0x1d;
const CTRL_C: u8 = 0x03;
const CTRL_D: u8 = 0x04;
const CTRL_U: u8 = 0x15;
const BACKSPACE: u8 = 0x7f;
const CTRL_H: u8 = 0x08;

/// `weaver send`.
pub(super) fn send(ctx: &Ctx, a: SendArgs) -> Result<()> {
    let SendArgs { name, data, input, close, timeout, json } = a;
    if data.is_none() && input.is_none() && !close {
        return Err(Error::new(
            Kind::Usage,
            "nothing to send: give --data TEXT, --input FILE (or - for stdin), or --close",
        ));
    }
    let mut reader: Box<dyn Read> = match (data, &input) {
        (Some(d), _) => Box::new(io::Cursor::new(d.into_bytes())),
        (None, Some(p)) if p == Path::new("-") => Box::new(io::stdin().lock()),
        (None, Some(p)) => {
            Box::new(File::open(p).map_err(|e| Error::io(Kind::Usage, "read", p, &e))?)
        }
        (None, None) => Box::new(io::empty()),
    };
    let (mut c, _) = ctx.connect()?;
    // Pieces in flight: the daemon writes one while the next arrive, so
    // the pipe never waits on a round trip. Their tags, in order.
    let mut in_flight = std::collections::VecDeque::new();
    let mut total = 0u64;
    let mut instance = name.clone();
    let mut buf = vec![0u8; SEND_CHUNK];
    let mut more = true;
    let mut sent_any = false;
    while more || !in_flight.is_empty() {
        while more && in_flight.len() < SEND_IN_FLIGHT {
            // What is there now (a producer on a pipe is not waited for
            // to fill a piece); 0 is the end of the input.
            let n = read_some(&mut reader, &mut buf).map_err(|e| {
                let what = input.as_deref().map_or("--data".into(), |p| p.display().to_string());
                Error::new(Kind::Io, format!("cannot read {what}: {e}{}", written(total)))
            })?;
            more = n > 0;
            // The end needs a request of its own only to close, or when
            // nothing was sent at all (then it checks the process takes
            // input).
            if n == 0 && !close && sent_any {
                break;
            }
            sent_any = true;
            let req = Request::Send {
                name: name.clone(),
                close: close && n == 0,
                timeout_ms: timeout,
                attached: false,
            };
            let tag = c.send(req, &buf[..n]).map_err(|e| {
                Error::new(Kind::Daemon, format!("lost the connection to the daemon: {e}"))
            })?;
            in_flight.push_back(tag);
        }
        let r = c.next_reply()?.ok_or_else(|| {
            Error::new(
                Kind::Daemon,
                format!("the daemon closed the connection before answering{}", written(total)),
            )
        })?;
        if !in_flight.contains(&r.tag) {
            continue;
        }
        in_flight.retain(|&t| t != r.tag);
        match r.resp {
            Response::Sent { instance: i, bytes, .. } => {
                total += bytes;
                instance = i;
            }
            Response::Error(e) => {
                let mut e = Error::from(e);
                e.message.push_str(&written(total));
                return Err(e);
            }
            other => return Err(unexpected(&other)),
        }
    }
    if json {
        print(&render::sent(&instance, total, close))?;
    }
    Ok(())
}

/// What a failure message adds about the input sent before it.
fn written(total: u64) -> String {
    if total == 0 {
        String::new()
    } else {
        format!(" (the {total} bytes of input before it were written)")
    }
}

/// One read (retried if interrupted): how many bytes, 0 at the end.
fn read_some(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            n => return n,
        }
    }
}

/// The terminal in raw mode until dropped (output processing kept, so
/// `\n` still starts a new line).
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// `None` when stdin is not a terminal.
    fn enter() -> Option<RawTerminal> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        raw.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSAFLUSH, &self.saved);
    }
}

/// What typed input asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    /// Send these bytes.
    Send(Vec<u8>),
    /// Echo this to the terminal.
    Echo(Vec<u8>),
    /// End of input (Ctrl-D on an empty line).
    Eof,
    /// Leave (Ctrl-] or Ctrl-C).
    Detach,
}

/// The line being typed on a raw terminal.
#[derive(Debug, Default)]
pub struct LineEditor {
    line: Vec<u8>,
}

impl LineEditor {
    /// What the bytes typed ask for, in order.
    pub fn keys(&mut self, typed: &[u8]) -> Vec<Key> {
        let mut out = Vec::new();
        for &b in typed {
            match b {
                DETACH_KEY | CTRL_C => {
                    out.push(Key::Detach);
                    return out;
                }
                CTRL_D if self.line.is_empty() => {
                    out.push(Key::Eof);
                    return out;
                }
                // As a terminal does: Ctrl-D sends the line so far.
                CTRL_D => out.push(Key::Send(std::mem::take(&mut self.line))),
                b'\r' | b'\n' => {
                    let mut line = std::mem::take(&mut self.line);
                    line.push(b'\n');
                    out.push(Key::Echo(b"\n".to_vec()));
                    out.push(Key::Send(line));
                }
                BACKSPACE | CTRL_H => {
                    // One character, however many bytes it has in UTF-8.
                    while let Some(last) = self.line.pop() {
                        if last & 0xc0 != 0x80 {
                            break;
                        }
                    }
                    out.push(Key::Echo(b"\x08 \x08".to_vec()));
                }
                CTRL_U => {
                    self.line.clear();
                    out.push(Key::Echo(b"\r\x1b[K".to_vec()));
                }
                b'\t' | 0x20.. => {
                    self.line.push(b);
                    out.push(Key::Echo(vec![b]));
                }
                _ => {}
            }
        }
        out
    }

    /// The line typed so far (redrawn after output).
    pub fn pending(&self) -> &[u8] {
        &self.line
    }
}

/// `weaver attach`.
pub(super) fn attach(ctx: &Ctx, a: AttachArgs) -> Result<()> {
    let AttachArgs { name, close_on_eof, force, read_only, lines } = a;
    let (mut c, _) = ctx.connect()?;
    let req = Request::Attach { name: name.clone(), read_only, force, tail: lines };
    let tag = c.send(req, &[]).map_err(lost)?;
    // A signal ends the attach through its normal way out, so the terminal
    // is restored (poll returns EINTR when one arrives).
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGHUP, SIGINT, SIGQUIT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Error::new(Kind::Io, format!("cannot handle signal {sig}: {e}")))?;
    }
    let mut s = Session {
        stop,
        tag,
        name,
        close_on_eof,
        editor: LineEditor::default(),
        term: None,
        in_flight: 0,
        reading: !read_only,
        attached: false,
    };
    s.run(&mut c)
}

struct Session {
    /// A signal asked us to stop.
    stop: Arc<AtomicBool>,
    tag: u64,
    name: String,
    close_on_eof: bool,
    editor: LineEditor,
    /// Raw mode, while attached to a terminal.
    term: Option<RawTerminal>,
    /// Sends not yet answered.
    in_flight: usize,
    /// stdin is read (writer, and input not ended).
    reading: bool,
    attached: bool,
}

fn lost(e: io::Error) -> Error {
    Error::new(Kind::Daemon, format!("lost the connection to the daemon: {e}"))
}

impl Session {
    fn run(&mut self, c: &mut Client) -> Result<()> {
        let d = c.deadlines();
        let mut heard = Instant::now();
        let mut ping_due: Option<Instant> = None;
        let mut replies = Vec::new();
        let stdin = io::stdin();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                self.notice(&format!("detached from {} (signal)", self.name));
                return Err(Error::new(Kind::Io, "attach stopped by a signal"));
            }
            let now = Instant::now();
            let until = ping_due.unwrap_or(heard + d.ping_after);
            if now >= until {
                if ping_due.is_some() {
                    return Err(Error::not_responding(
                        Some(c.daemon_pid()),
                        "it answered nothing on the attached connection",
                    ));
                }
                c.send(Request::Ping, &[]).map_err(lost)?;
                ping_due = Some(now + d.pong_within);
                continue;
            }
            let wait = PollTimeout::try_from(until - now).unwrap_or(PollTimeout::MAX);
            let read_term = self.attached && self.reading && self.in_flight < ATTACH_IN_FLIGHT;
            // SAFETY: the connection outlives this poll.
            let sock = unsafe { BorrowedFd::borrow_raw(c.stream().as_raw_fd()) };
            let mut fds = vec![PollFd::new(sock, PollFlags::POLLIN)];
            if read_term {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, wait) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::new(Kind::Io, format!("poll failed: {e}"))),
            }
            let sock_ready = fds[0].any().unwrap_or(false);
            let term_ready = read_term && fds[1].any().unwrap_or(false);
            drop(fds);
            if sock_ready {
                if !c.read_ready(&mut replies).map_err(lost)? {
                    return Err(Error::new(
                        Kind::Daemon,
                        "the daemon closed the connection (it stopped?)",
                    ));
                }
                heard = Instant::now();
                ping_due = None;
                for r in replies.drain(..) {
                    if self.reply(c, r)? {
                        return Ok(());
                    }
                }
            }
            if term_ready && self.typed(c)? {
                return Ok(());
            }
        }
    }

    /// One reply; `true` when the attach is over.
    fn reply(&mut self, _c: &mut Client, r: crate::client::Reply) -> Result<bool> {
        match r.resp {
            Response::Pong => {}
            Response::Attached { instance, writer } if r.tag == self.tag => {
                self.attached = true;
                self.name = instance;
                if writer {
                    self.term = RawTerminal::enter();
                }
                let how = if writer {
                    "Ctrl-D ends the input, Ctrl-] detaches"
                } else {
                    "read-only; Ctrl-C detaches"
                };
                self.notice(&format!("attached to {} ({how})", self.name));
            }
            Response::Logs(chunk) if r.tag == self.tag => {
                let text = render::log_chunk(&chunk, false);
                self.output(text.as_bytes())?;
            }
            Response::Error(e) if r.tag == self.tag => return Err(e.into()),
            Response::Sent { closed, .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                if closed {
                    self.notice(&format!("closed {}'s stdin", self.name));
                    return Ok(true);
                }
            }
            // Later lines would be refused after this one (the process
            // gets no input with a hole): the attach ends, saying so.
            Response::Error(e) => {
                let mut e = Error::from(e);
                e.message = format!("input not delivered: {}; attach again to go on", e.message);
                return Err(e);
            }
            other => return Err(unexpected(&other)),
        }
        Ok(false)
    }

    /// Read the terminal (or piped stdin); `true` when the attach is over.
    fn typed(&mut self, c: &mut Client) -> Result<bool> {
        let mut buf = [0u8; 4096];
        // Straight from the fd: a buffered reader could keep bytes that
        // poll would not report again.
        let n = match nix::unistd::read(io::stdin().as_fd(), &mut buf) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return Ok(false),
            Err(e) => return Err(Error::new(Kind::Io, format!("cannot read the terminal: {e}"))),
        };
        let keys = if n == 0 {
            vec![Key::Eof]
        } else if self.term.is_some() {
            self.editor.keys(&buf[..n])
        } else {
            vec![Key::Send(buf[..n].to_vec())]
        };
        for k in keys {
            match k {
                Key::Echo(b) => self.echo(&b)?,
                Key::Send(b) => self.send(c, b, false)?,
                Key::Detach => {
                    self.notice(&format!("detached from {}", self.name));
                    return Ok(true);
                }
                Key::Eof if self.close_on_eof => {
                    self.reading = false;
                    self.send(c, Vec::new(), true)?;
                }
                Key::Eof => {
                    self.notice(&format!(
                        "end of input; {}'s stdin stays open (--close-on-eof closes it)",
                        self.name
                    ));
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn send(&mut self, c: &mut Client, bytes: Vec<u8>, close: bool) -> Result<()> {
        let req = Request::Send {
            name: self.name.clone(),
            close,
            timeout_ms: ATTACH_SEND_TIMEOUT_MS,
            attached: true,
        };
        c.send(req, &bytes).map_err(lost)?;
        self.in_flight += 1;
        Ok(())
    }

    fn echo(&mut self, b: &[u8]) -> Result<()> {
        write_bytes(&mut io::stdout().lock(), b)
    }

    /// Output of the process, above the line being typed.
    fn output(&mut self, text: &[u8]) -> Result<()> {
        let mut out = io::stdout().lock();
        let typing = self.term.is_some() && !self.editor.pending().is_empty();
        if typing {
            write_bytes(&mut out, b"\r\x1b[K")?;
        }
        write_bytes(&mut out, text)?;
        if typing {
            write_bytes(&mut out, self.editor.pending())?;
        }
        out.flush().map_err(|e| Error::new(Kind::Io, e.to_string()))
    }

    fn notice(&mut self, text: &str) {
        let mut t = render::notice(text);
        if self.term.is_some() && !self.editor.pending().is_empty() {
            t.insert_str(0, "\r\x1b[K");
        }
        eprint(&t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_editor_sends_lines_and_knows_its_keys() {
        let mut e = LineEditor::default();
        let keys = e.keys(b"hi\x7fo\r");
        let sent: Vec<&Vec<u8>> =
            keys.iter().filter_map(|k| if let Key::Send(b) = k { Some(b) } else { None }).collect();
        assert_eq!(sent, [&b"ho\n".to_vec()]);
        assert!(e.pending().is_empty());
        // A multi-byte character goes with one backspace.
        e.keys("é".as_bytes());
        e.keys(&[BACKSPACE]);
        assert!(e.pending().is_empty());
        assert_eq!(
            e.keys(b"ab\x15"),
            [Key::Echo(b"a".to_vec()), Key::Echo(b"b".to_vec()), Key::Echo(b"\r\x1b[K".to_vec())]
        );
        assert_eq!(e.keys(&[CTRL_D]), [Key::Eof]);
        assert_eq!(e.keys(b"x\x04"), [Key::Echo(b"x".to_vec()), Key::Send(b"x".to_vec())]);
        assert_eq!(e.keys(&[DETACH_KEY, b'z']), [Key::Detach]);
        assert_eq!(e.keys(&[CTRL_C]), [Key::Detach]);
    }
}
