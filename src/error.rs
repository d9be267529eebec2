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
    /// Client and daemon speak different protocols.
    Mismatch,
    /// The daemon answered the request with an error.
    Request(ReplyKind),
    /// Anything else (local I/O).
    Io,
    /// Standard output was closed (`weaver status | head -c0`): the command
    /// ends quietly.
    StdoutClosed,
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
            Kind::Request(ReplyKind::ComputeDown) => 69,
            Kind::Request(ReplyKind::Busy) | Kind::Request(ReplyKind::ShuttingDown) => 75,
            Kind::Request(ReplyKind::Timeout) => 124,
            Kind::Request(_) | Kind::Io => 1,
            // What a shell reports for a process ended by SIGPIPE (128 + 13).
            Kind::StdoutClosed => 141,
        }
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
