//! The token space, written down once: fixed tokens first, then one token per
//! client connection (its client id, never reused). Unknown tokens are
//! ignored: stale events for a closed source happen.

use mio::Token;

pub const CONTROL_LISTENER: Token = Token(0);
pub const COMPUTE_LISTENER: Token = Token(1);
pub const SIGNALS: Token = Token(2);
pub const COMPUTE_CONN: Token = Token(3);
pub const COMPUTE_STDOUT: Token = Token(4);
pub const COMPUTE_STDERR: Token = Token(5);
/// Client ids (and so their tokens) start here.
pub const FIRST_CLIENT: u64 = 64;

/// What an event's token refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ControlListener,
    ComputeListener,
    Signals,
    ComputeConn,
    ComputeStdout,
    ComputeStderr,
    Client(u64),
    Unknown,
}

pub fn source(t: Token) -> Source {
    match t {
        CONTROL_LISTENER => Source::ControlListener,
        COMPUTE_LISTENER => Source::ComputeListener,
        SIGNALS => Source::Signals,
        COMPUTE_CONN => Source::ComputeConn,
        COMPUTE_STDOUT => Source::ComputeStdout,
        COMPUTE_STDERR => Source::ComputeStderr,
        Token(n) if n as u64 >= FIRST_CLIENT => Source::Client(n as u64),
        _ => Source::Unknown,
    }
}

pub fn client_token(id: u64) -> Token {
    Token(id as usize)
}
