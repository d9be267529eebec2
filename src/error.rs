//! Errors: a kind (which decides the exit code) and a message that says what
//! happened and what to do. Only `main.rs` turns them into exit codes.

use std::fmt;
use std::io;
use std::path::Path;

use crate::protocol::{ErrorKind as ReplyKind, ErrorReply};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad command line or arguments.
    Usage,
    /// The runtime directory is unsafe or unusable.
    RuntimeDir,
    /// No daemon could be reached or started.
    Daemon,
    /// A daemon runs (its pid is in the message) but cannot be talked to:
    /// it did not accept, handshake or answer within its deadline, or its
    /// socket is gone.
    NotResponding,
    /// Client and daemon speak different protocols.
    Mismatch,
    /// The daemon answered the request with an error.
    Request(ReplyKind),
    /// Anything else (local I/O).
    Io,
    /// Standard output was closed (`weaver status | head -c0`): the command
    /// ends quietly.
    StdoutClosed,
    /// The command printed its outcome itself and ends with this code
    /// (`weaver run`: 1 when a job failed, 130 when cancelled).
    Reported(i32),
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }

    /// A daemon that does not respond: `pid` if known, and what it failed
    /// to do (e.g. "it did not answer the handshake within 5s").
    pub fn not_responding(pid: Option<u32>, what: impl fmt::Display) -> Self {
        Error::new(
            Kind::NotResponding,
            format!(
                "{} is not responding: {what}. `weaver shutdown` stops it (by signal if need \
                 be); the next command starts a new one",
                daemon_named(pid)
            ),
        )
    }

    /// A [`not_responding`](Self::not_responding) error made without the
    /// pid, with `pid` named (other errors are returned as they are).
    pub fn naming_pid(mut self, pid: u32) -> Self {
        let anonymous = format!("{} is", daemon_named(None));
        if self.kind == Kind::NotResponding && self.message.starts_with(&anonymous) {
            let rest = &self.message[anonymous.len()..];
            self.message = format!("{} is{rest}", daemon_named(Some(pid)));
        }
        self
    }

    /// An I/O failure while doing `action` on `path`.
    pub fn io(kind: Kind, action: &str, path: &Path, e: &io::Error) -> Self {
        Error::new(kind, format!("cannot {action} {}: {e}", path.display()))
    }

    /// Exit code for this error (documented in README.md).
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Usage => 2,
            Kind::Daemon => 3,
            Kind::RuntimeDir => 4,
            Kind::Mismatch => 5,
            Kind::NotResponding => 6,
            Kind::Request(ReplyKind::ComputeDown) => 69,
            Kind::Request(ReplyKind::FleetUnreachable) => 69,
            Kind::Request(ReplyKind::Busy) | Kind::Request(ReplyKind::ShuttingDown) => 75,
            Kind::Request(ReplyKind::Timeout) => 124,
            Kind::Request(_) | Kind::Io => 1,
            // What a shell reports for a process ended by SIGPIPE (128 + 13).
            Kind::StdoutClosed => 141,
            Kind::Reported(code) => code,
        }
    }
}

/// "the weaver daemon", with its pid when known.
fn daemon_named(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("the weaver daemon (pid {pid})"),
        None => "the weaver daemon".to_string(),
    }
}

impl From<ErrorReply> for Error {
    fn from(r: ErrorReply) -> Self {
        Error::new(Kind::Request(r.kind), r.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_that_does_not_respond_is_named_once_its_pid_is_known() {
        let e = Error::not_responding(None, "it did not answer the handshake within 5s");
        assert_eq!(e.exit_code(), 6);
        assert!(e.message.starts_with("the weaver daemon is not responding: it did not"));
        let e = e.naming_pid(42);
        assert!(e.message.starts_with("the weaver daemon (pid 42) is not responding: it did"));
        assert!(e.message.contains("`weaver shutdown` stops it"), "{}", e.message);
        // Named already, or another kind: unchanged.
        assert_eq!(Error::new(e.kind, e.message.clone()).naming_pid(7).message, e.message);
        let other = Error::new(Kind::Daemon, "the weaver daemon is gone").naming_pid(7);
        assert_eq!(other.message, "the weaver daemon is gone");
    }
}
