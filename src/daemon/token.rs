//! The token space, written down once: fixed tokens for the one-of-a-kind
//! fds, then one range per kind of dynamic fd, each id never reused within
//! its range. A new subsystem takes the next range. Unknown tokens are
//! ignored: stale events for a closed source happen.

use mio::Token;

pub const CONTROL_LISTENER: Token = Token(0);
pub const COMPUTE_LISTENER: Token = Token(1);
pub const SIGNALS: Token = Token(2);
pub const COMPUTE_CONN: Token = Token(3);
pub const COMPUTE_STDOUT: Token = Token(4);
pub const COMPUTE_STDERR: Token = Token(5);
/// inotify on the runtime dir (the sockets' paths).
pub const RUNTIME_DIR: Token = Token(6);
/// The weavelet socket.
pub const WEAVELET_LISTENER: Token = Token(7);
/// The HTTP endpoint's TCP listener.
pub const HTTP_LISTENER: Token = Token(8);
/// The fleet link's NATS connection.
pub const FLEET: Token = Token(9);
/// The fleet link's name resolution finished (a `mio::Waker`).
pub const FLEET_RESOLVED: Token = Token(10);

/// Width of each dynamic range: ids within a range count up from 1.
const RANGE: usize = 1 << 40;
/// Control-socket clients, by client id.
const CLIENTS: usize = RANGE;
/// Supervised processes' stdout and stderr pipes, by pipe id.
const PIPES: usize = 2 * RANGE;
/// Weavelet connections, by connection id.
const WEAVELETS: usize = 3 * RANGE;
/// HTTP connections, by connection id.
const HTTP: usize = 4 * RANGE;
/// Write ends of supervised processes' stdin pipes, by pipe id.
const STDINS: usize = 5 * RANGE;
/// Jobs' stdout and stderr pipes (`weaver run`), by pipe id.
const JOB_PIPES: usize = 6 * RANGE;
/// End of the ranges handed out so far.
const END: usize = 7 * RANGE;

/// What an event's token refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ControlListener,
    ComputeListener,
    Signals,
    ComputeConn,
    ComputeStdout,
    ComputeStderr,
    RuntimeDir,
    WeaveletListener,
    HttpListener,
    Fleet,
    FleetResolved,
    Client(u64),
    Weavelet(u64),
    Pipe(u64),
    Http(u64),
    Stdin(u64),
    JobPipe(u64),
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
        RUNTIME_DIR => Source::RuntimeDir,
        WEAVELET_LISTENER => Source::WeaveletListener,
        HTTP_LISTENER => Source::HttpListener,
        FLEET => Source::Fleet,
        FLEET_RESOLVED => Source::FleetResolved,
        Token(n) if (CLIENTS..PIPES).contains(&n) => Source::Client((n - CLIENTS) as u64),
        Token(n) if (PIPES..WEAVELETS).contains(&n) => Source::Pipe((n - PIPES) as u64),
        Token(n) if (WEAVELETS..HTTP).contains(&n) => Source::Weavelet((n - WEAVELETS) as u64),
        Token(n) if (HTTP..STDINS).contains(&n) => Source::Http((n - HTTP) as u64),
        Token(n) if (STDINS..JOB_PIPES).contains(&n) => Source::Stdin((n - STDINS) as u64),
        Token(n) if (JOB_PIPES..END).contains(&n) => Source::JobPipe((n - JOB_PIPES) as u64),
        _ => Source::Unknown,
    }
}

pub fn client(id: u64) -> Token {
    Token(CLIENTS + id as usize)
}

pub fn pipe(id: u64) -> Token {
    Token(PIPES + id as usize)
}

pub fn weavelet(id: u64) -> Token {
    Token(WEAVELETS + id as usize)
}

pub fn http(id: u64) -> Token {
    Token(HTTP + id as usize)
}

pub fn stdin(id: u64) -> Token {
    Token(STDINS + id as usize)
}

pub fn job_pipe(id: u64) -> Token {
    Token(JOB_PIPES + id as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_do_not_overlap() {
        for id in [1u64, 2, 1 << 20, (1 << 40) - 1] {
            assert_eq!(source(client(id)), Source::Client(id));
            assert_eq!(source(pipe(id)), Source::Pipe(id));
            assert_eq!(source(weavelet(id)), Source::Weavelet(id));
            assert_eq!(source(http(id)), Source::Http(id));
            assert_eq!(source(stdin(id)), Source::Stdin(id));
            assert_eq!(source(job_pipe(id)), Source::JobPipe(id));
        }
        assert_eq!(source(HTTP_LISTENER), Source::HttpListener);
        assert_eq!(source(Token(11)), Source::Unknown);
        assert_eq!(source(WEAVELET_LISTENER), Source::WeaveletListener);
        assert_eq!(source(Token(END)), Source::Unknown);
        assert_eq!(source(COMPUTE_CONN), Source::ComputeConn);
    }
}
