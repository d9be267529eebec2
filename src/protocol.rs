//! Client <-> daemon messages on the control socket (serde + postcard).
//!
//! Every connection starts with a [`Handshake`] each way; its layout never
//! changes, so any two releases can at least tell each other apart and a
//! mismatch is reported plainly. After it, the client sends [`ClientMsg`]s
//! and the daemon answers each with one [`ServerMsg`] carrying the same tag;
//! a client may pipeline many requests and the answers may come back in any
//! order. Bulk bytes (compute input and output) travel in the frame payload
//! (frame.rs), never inside these messages.

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 1;
/// The release of this build.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");
/// First bytes of every handshake.
pub const HANDSHAKE_MAGIC: [u8; 4] = *b"WVCL";

/// First message each way. Frozen: never add, remove or reorder fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    pub magic: [u8; 4],
    pub protocol: u32,
    pub release: String,
    pub pid: u32,
    /// Client -> daemon: ask the daemon to stop even if the protocols differ
    /// (the documented way out of a version mismatch). Daemon -> client:
    /// unused.
    pub shutdown: bool,
    /// Daemon -> client: empty when accepted, else why not.
    pub refusal: String,
}

impl Handshake {
    pub fn new(shutdown: bool) -> Self {
        Handshake {
            magic: HANDSHAKE_MAGIC,
            protocol: PROTOCOL_VERSION,
            release: RELEASE.to_string(),
            pid: std::process::id(),
            shutdown,
            refusal: String::new(),
        }
    }
}

/// A request with the client's tag; the reply carries the same tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientMsg {
    pub tag: u64,
    pub req: Request,
}

/// What a client can ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Daemon and compute state. With `wait_compute`, the answer waits until
    /// compute is connected (or has failed).
    Status { wait_compute: bool },
    /// Run one compute op; the frame payload is its input.
    Compute { op: String, timeout_ms: Option<u64> },
    /// Graceful stop. The reply comes at once; the connection then stays
    /// open until the daemon has stopped, so EOF means "gone".
    Shutdown,
    /// Supervised processes, one row per instance.
    Ps,
    /// Start, stop or restart processes or instances (empty: all).
    Control { verb: Verb, names: Vec<String> },
    /// Output lines of one process or instance after sequence number
    /// `after` (0: from the oldest kept; with `tail`, only the last `tail`).
    /// With `follow`, more `Logs` replies with the same tag come as lines
    /// arrive, until the client closes the connection.
    Logs(LogQuery),
    /// Lifecycle events as they happen (replies with the same tag until the
    /// client closes), after up to `history` recent ones.
    Events { names: Vec<String>, output: bool, history: u32 },
    /// Re-read the configuration; with `dry_run`, only say what would
    /// change. A bad configuration changes nothing.
    Reload { dry_run: bool },
}

/// What `Control` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

/// A reply with the request's tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMsg {
    pub tag: u64,
    pub resp: Response,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Status(Box<StatusReport>),
    /// The compute op succeeded; the frame payload is its output.
    ComputeOk,
    /// The daemon is stopping.
    ShutdownStarted,
    Error(ErrorReply),
    Ps(Vec<ProcRow>),
    /// A control request was taken: the instances it applies to.
    Done {
        instances: Vec<String>,
    },
    Logs(LogChunk),
    Event(EventRecord),
    Reload(ReloadReport),
}

/// What `Request::Logs` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    pub name: String,
    pub after: u64,
    pub tail: Option<u32>,
    pub stream: Option<String>,
    pub follow: bool,
}

/// `weaver ps`, one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRow {
    pub name: String,
    pub process: String,
    /// stopped | waiting | starting | running | ready | stopping |
    /// exited(N) | killed(SIG) | failed
    pub state: String,
    pub pid: Option<u32>,
    pub restarts: u64,
    /// While backing off: milliseconds until the next start.
    pub next_restart_ms: Option<u64>,
    pub last_exit: Option<String>,
    pub uptime_ms: Option<u64>,
    /// Why it failed.
    pub reason: Option<String>,
    pub gpus: Option<Vec<u32>>,
}

/// Output lines of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub instance: String,
    pub lines: Vec<LogLine>,
    /// Lines after the cursor that were dropped from the ring before they
    /// could be sent.
    pub lost: u64,
    /// Resume with `after = next` to continue without gaps or repeats.
    pub next: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    /// stdout | stderr
    pub stream: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub text: String,
}

/// One lifecycle event (or, with `event = "lost"`, how many a slow
/// subscriber missed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub time_ms: u64,
    pub instance: String,
    /// started | running | ready | output | exited | killed | vanished |
    /// restarting | stopping | stopped | failed | hook | warning | lost
    pub event: String,
    pub pid: Option<u32>,
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub delay_ms: Option<u64>,
    pub attempt: Option<u32>,
    /// Reason, hook detail, warning, or the output line.
    pub detail: Option<String>,
    pub lost: Option<u64>,
}

/// What a reload changes (and whether it was applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub config: Option<String>,
    pub applied: bool,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    pub compute_changed: bool,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    /// Says what happened and what to do.
    pub message: String,
}

/// Failure classes; the CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request itself is wrong (bad parameters, malformed frame).
    BadRequest,
    /// compute does not serve this op.
    UnknownOp,
    /// Input or output over the size limit.
    TooLarge,
    /// No such process or instance.
    NotFound,
    /// The configuration file has errors.
    BadConfig,
    /// Cancelled (by compute or on shutdown).
    Cancelled,
    /// Queues are full; retry later.
    Busy,
    /// compute failed the op.
    ComputeFailed,
    /// compute is not running (died, restarting, failed to start).
    ComputeDown,
    /// The per-request timeout passed.
    Timeout,
    /// The daemon is stopping.
    ShuttingDown,
}

/// `weaver status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub protocol: u32,
    pub daemon: DaemonStatus,
    pub compute: ComputeStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub uptime_ms: u64,
    pub runtime_dir: String,
    /// Where the daemon logs; `None` when it logs to a terminal.
    pub log_file: Option<String>,
    pub clients: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeStatus {
    pub pid: Option<u32>,
    /// starting | ready | backoff | stopping | failed | stopped
    pub state: String,
    pub bin: String,
    pub workers: Option<u32>,
    pub restarts: u64,
    pub in_flight: u64,
    pub queued: u64,
    pub served: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub timed_out: u64,
    pub busy_rejected: u64,
    /// Replies that arrived for a client that had already gone.
    pub dropped_late: u64,
    /// How the last compute process ended, e.g. "killed by SIGKILL".
    pub last_exit: Option<String>,
    /// Why compute is not running, when it is not.
    pub last_error: Option<String>,
    /// While backing off: milliseconds until the next start.
    pub next_restart_ms: Option<u64>,
}

/// Encode a message (infallible for these types).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("protocol messages always encode")
}

/// Decode a message; the error names what could not be read.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("malformed {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_layout_is_frozen() {
        // The bytes of a handshake must never change between releases.
        let h = Handshake {
            magic: HANDSHAKE_MAGIC,
            protocol: 1,
            release: "0.1.0".into(),
            pid: 300,
            shutdown: true,
            refusal: String::new(),
        };
        let b = encode(&h);
        assert_eq!(b, [b'W', b'V', b'C', b'L', 1, 5, b'0', b'.', b'1', b'.', b'0', 0xac, 2, 1, 0]);
        assert_eq!(decode::<Handshake>(&b, "handshake").unwrap(), h);
    }

    #[test]
    fn messages_round_trip() {
        let m =
            ClientMsg { tag: 9, req: Request::Compute { op: "echo".into(), timeout_ms: Some(5) } };
        assert_eq!(decode::<ClientMsg>(&encode(&m), "request").unwrap(), m);
        assert!(decode::<ClientMsg>(&[0xff, 0xff], "request").unwrap_err().contains("malformed"));
    }
}
