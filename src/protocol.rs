//! Client <-> daemon messages on the control socket (serde + postcard).
//!
//! Every connection starts with a [`Handshake`] each way; its layout never
//! changes, so any two releases can at least tell each other apart and a
//! mismatch is reported plainly. After it, the client sends [`ClientMsg`]s
//! and the daemon answers each with one [`ServerMsg`] carrying the same tag;
//! a client may pipeline many requests and the answers may come back in any
//! order. Bulk bytes (compute input and output) travel in the frame payload
//! (frame.rs), never inside these messages.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use nix::sys::signal::Signal;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::daemon::compute;
use crate::supervise::events::{Delivery, EventKind};
use crate::supervise::ring::Stream;
use crate::supervise::PsRow;

/// Bumped on any incompatible change to the messages below.
///
/// 2: process and compute states, output streams and event kinds are enums
/// ([`ProcState`], [`ComputeState`], [`LogStream`], [`EventType`]).
/// 3: [`Request::Ping`] and [`Response::Pong`].
/// 4: [`Request::Config`] (`weaver config`) and its replies;
/// [`ErrorKind::Rejected`].
/// 5: [`Request::Health`] and [`Response::Health`]; [`DaemonStatus::http`].
/// 6: [`Request::Send`] and [`Request::Attach`] (a process's stdin), their
/// replies, [`EventType::StdinClosed`].
/// 7: payloads by fd (`frame::FD_FLAG`, `fdpass`).
/// 8: `weaver run`: [`Request::Run`], [`Request::RunCancel`],
/// [`Request::RunAttach`], [`Request::Runs`] and their replies;
/// [`EventType::Skipped`].
/// 9: [`Request::Fleet`] (`weaver fleet`, `config --fleet/--local`),
/// [`Response::FleetStatus`], [`Response::ConfigOrigin`],
/// [`ErrorKind::FleetUnreachable`].
pub const PROTOCOL_VERSION: u32 = 9;
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

/// What a client can ask. Each request is answered by one [`Response`] with
/// its tag ([`Response::Error`] when it fails), except the two streams
/// (`Logs` with `follow`, and `Events`), which are answered by replies with
/// its tag until the client closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Daemon and compute state (`weaver status`). Answered by
    /// [`Response::Status`] at once, or with `wait_compute` once compute is
    /// connected (or has failed).
    Status { wait_compute: bool },
    /// Run one compute op (`weaver compute`); the frame payload is its
    /// input. Answered by [`Response::ComputeOk`] with the output as payload
    /// when compute replies, or by an error (unknown op, compute failed or
    /// down, timeout after `timeout_ms`, queues full, shutting down).
    Compute { op: String, timeout_ms: Option<u64> },
    /// Graceful stop (`weaver shutdown`). Answered by
    /// [`Response::ShutdownStarted`] at once; the connection then stays open
    /// until the daemon has stopped, so EOF means "gone".
    Shutdown,
    /// Supervised processes (`weaver ps`). Answered by [`Response::Ps`],
    /// one row per instance.
    Ps,
    /// Start, stop or restart processes or instances (empty `names`: all).
    /// Answered by [`Response::Done`] once the request is taken (not once
    /// the processes are up or down), or by an error for an unknown name or
    /// while shutting down.
    Control { verb: Verb, names: Vec<String> },
    /// Output lines of one process or instance (`weaver logs`). Answered by
    /// one [`Response::Logs`] with the lines after sequence number `after`
    /// (0: from the oldest kept; with `tail`, only the last `tail`). With
    /// `follow`, more `Logs` replies with the same tag come as lines arrive,
    /// until the client closes the connection. An unknown name is an error.
    Logs(LogQuery),
    /// Lifecycle events as they happen (`weaver events`): up to `history`
    /// recent ones, then each new one, every one a [`Response::Event`] with
    /// this tag, until the client closes the connection. Only events of
    /// `names` (processes or instances; empty: all); output lines only with
    /// `output`.
    Events { names: Vec<String>, output: bool, history: u32 },
    /// Re-read the configuration (`weaver reload`). Answered by
    /// [`Response::Reload`] with the plan, applied unless `dry_run`. A bad
    /// configuration is an error and changes nothing.
    Reload { dry_run: bool },
    /// Are you alive? Answered by [`Response::Pong`] at once by the
    /// daemon's loop, whatever else the connection waits for, even while
    /// stopping. A client sends it after a quiet spell, to tell a long
    /// request or a quiet stream from a daemon that is stuck.
    Ping,
    /// Live configuration of weavelets (`weaver config`); see [`ConfigReq`]
    /// for what each answers.
    Config(ConfigReq),
    /// The health checks `GET /health` answers (`weaver health`): of
    /// everything, or (`name`) of one process or instance. Answered by
    /// [`Response::Health`]; an unknown name is [`ErrorKind::NotFound`].
    Health { name: Option<String> },
    /// Write the frame payload (at most 1 MiB) to the stdin of `name` (an
    /// instance, or a process with one instance; `stdin = "pipe"`), then
    /// with `close` close it. Answered by [`Response::Sent`] once every
    /// byte is in the pipe; by [`ErrorKind::Busy`] if they are not by
    /// `timeout_ms` (the message says how many went in; the rest never
    /// will); by an error for an unknown name, a process without a stdin
    /// pipe, one not running, or a closed stdin. With `attached`, only the
    /// client attached as its writer may send.
    Send { name: String, close: bool, timeout_ms: u64, attached: bool },
    /// `weaver attach`: become the writer of `name`'s stdin (unless
    /// `read_only`; another writer is an error unless `force`, which takes
    /// over and ends the other attach with an error reply), and follow its
    /// output: one [`Response::Attached`], then [`Response::Logs`] replies
    /// with this tag as with `Logs` and `follow` (starting with the last
    /// `tail` lines), until the client closes the connection.
    Attach { name: String, read_only: bool, force: bool, tail: u32 },
    /// Run jobs (`weaver run`). Answered by [`Response::RunStarted`], then
    /// (unless `detach`) one [`Response::RunJob`] per change of a job's
    /// state and one [`Response::RunDone`] at the end. Without `detach`
    /// the run is cancelled if this connection closes. Unknown job names
    /// are an error.
    Run(crate::run::RunReq),
    /// Cancel run `id` (Ctrl-C on `weaver run`): running jobs get their
    /// stop signal, the rest are cancelled. Answered by [`Response::Done`]
    /// at once; the run's own stream ends with its `RunDone`.
    RunCancel { id: u64 },
    /// Follow run `id` (`weaver run --attach`): answered like `Run`, with
    /// every job's state first; a finished run gets its `RunDone` at once.
    RunAttach { id: u64 },
    /// Recent runs (`weaver runs`), oldest first: [`Response::Runs`].
    Runs,
    /// The fleet link (`weaver fleet`, `config set --fleet/--local`); see
    /// [`FleetReq`].
    Fleet(FleetReq),
}

/// The fleet: configuration shared by every host through NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FleetReq {
    /// The link's state: [`Response::FleetStatus`].
    Status,
    /// A change of `target`'s fleet document (`local`: of this host's
    /// overlay instead). Answered by [`Response::Config`] once the fleet
    /// stored it (its revision is the fleet revision) or once the overlay
    /// is saved; with `wait` (ms) then by one [`Response::ConfigWaited`]
    /// once every connected weavelet of the target on every host applied
    /// it, one rejected it, or the timeout passed. NATS unreachable:
    /// [`ErrorKind::FleetUnreachable`], nothing written.
    Set {
        target: String,
        set: Vec<(String, String)>,
        unset: Vec<String>,
        wait: Option<u64>,
        local: bool,
    },
    /// The effective document with each key's origin:
    /// [`Response::ConfigOrigin`].
    Origin { target: String },
}

/// `weaver fleet status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReport {
    /// Configured at all (`[fleet]` in weaver.toml).
    pub configured: bool,
    pub node: String,
    /// The servers configured, and the one connected to.
    pub servers: String,
    pub server: Option<String>,
    pub connected: bool,
    /// Since when (ms since the epoch) connected or down.
    pub since_ms: u64,
    /// The last PING's round trip, in microseconds.
    pub rtt_us: Option<u64>,
    /// The snapshot is complete and changes flow.
    pub synced: bool,
    /// The last fleet revision seen.
    pub revision: u64,
    /// When the cache was last saved (ms since the epoch; 0: never).
    pub cache_saved_ms: u64,
    pub bucket: String,
    pub status_bucket: String,
    /// Why the last connection or attempt failed.
    pub last_error: Option<String>,
    /// Times the watch was (re)started.
    pub watch_restarts: u64,
}

/// `weaver config`. Documents travel as JSON text (postcard cannot carry
/// arbitrary JSON values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigReq {
    /// The effective document: answered by [`Response::Config`]; an unknown
    /// target is [`ErrorKind::NotFound`].
    Get { target: String },
    /// A new revision: `set` (name, value as JSON text) over the current
    /// document, `unset` names removed. Answered by [`Response::Config`]
    /// with the new revision once it is saved; with `wait` (a timeout in
    /// ms) then by one [`Response::ConfigWaited`] with the same tag once
    /// every connected weavelet of the target applied it, one rejected it,
    /// or the timeout passed. A target weaver does not know yet is made.
    Set { target: String, set: Vec<(String, String)>, unset: Vec<String>, wait: Option<u64> },
    /// Kept revisions, oldest first: [`Response::ConfigHistory`].
    History { target: String },
    /// A new revision with the document of revision `to` (0: the
    /// defaults); answered like `Set`.
    Rollback { target: String, to: u64, wait: Option<u64> },
    /// Every weavelet (of `target`): [`Response::ConfigStatus`].
    Status { target: Option<String> },
    /// Revisions, acknowledgements, connections and disconnections as they
    /// happen (of `targets`; empty: all), each a [`Response::ConfigEvent`]
    /// with this tag, until the client closes the connection.
    Watch { targets: Vec<String> },
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

/// What the daemon answers; each variant names the [`Request`] it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answers `Status`: daemon and compute state, sent at once or (with
    /// `wait_compute`) when compute is connected or has failed.
    Status(Box<StatusReport>),
    /// Answers `Compute` when the op succeeded; the frame payload is its
    /// output.
    ComputeOk,
    /// Answers `Shutdown` at once: the daemon is stopping. It closes the
    /// connection when it is gone.
    ShutdownStarted,
    /// Answers any request that failed: what went wrong and what to do. For
    /// a stream it is the last reply with that tag.
    Error(ErrorReply),
    /// Answers `Ps`: one row per supervised instance, in declaration order.
    Ps(Vec<ProcRow>),
    /// Answers `Control` once the request is taken: the instances it
    /// applies to.
    Done { instances: Vec<String> },
    /// Answers `Logs`: one chunk of lines, and with `follow` one more each
    /// time new lines (or lost ones) are there.
    Logs(LogChunk),
    /// Answers `Events`, once per event (or per run of events a slow
    /// subscriber missed: `event` is [`EventType::Lost`]).
    Event(EventRecord),
    /// Answers `Reload`: what changes, and whether it was applied.
    Reload(ReloadReport),
    /// Answers `Ping`.
    Pong,
    /// Answers `Config::Get`, `Set` and `Rollback`: a document and its
    /// revision.
    Config(ConfigDoc),
    /// Answers `Config::History`.
    ConfigHistory(Vec<ConfigDoc>),
    /// Answers `Config::Status`.
    ConfigStatus(Vec<WeaveletRow>),
    /// The second answer of `Config::Set` or `Rollback` with `wait`.
    ConfigWaited(WaitReport),
    /// Answers `Config::Watch`, once per event.
    ConfigEvent(ConfigEvent),
    /// Answers `Send`: `bytes` are in the instance's stdin pipe (and it
    /// was closed after them, with `closed`).
    Sent { instance: String, bytes: u64, closed: bool },
    /// The first answer of `Attach`: the instance, and whether this client
    /// is its stdin's writer.
    Attached { instance: String, writer: bool },
    /// Answers `Health`.
    Health(HealthReport),
    /// First answer of `Run` and `RunAttach`: the run and its jobs.
    RunStarted { id: u64, jobs: Vec<String> },
    /// A job of a followed run changed state.
    RunJob(crate::run::JobResult),
    /// Last answer of `Run` and `RunAttach`: how the run ended.
    RunDone(Box<crate::run::RunReport>),
    /// Answers `Runs`.
    Runs(Vec<crate::run::RunReport>),
    /// Answers `Fleet::Status`.
    FleetStatus(Box<FleetReport>),
    /// Answers `Fleet::Origin`: the effective document of `target` at
    /// `revision`, each key with its value (JSON text) and origin
    /// (`params`, `fleet` or `local`).
    ConfigOrigin { target: String, revision: u64, keys: Vec<(String, String, String)> },
}

/// `weaver health` and `GET /health`: healthy when every check is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub healthy: bool,
    /// The process or instance asked about; `None`: the whole daemon.
    pub name: Option<String>,
    pub checks: Vec<HealthCheck>,
}

/// One health check: the daemon, compute, or one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// "daemon", "compute", or an instance name ("web.1").
    pub name: String,
    pub ok: bool,
    /// The state it is in ("serving", "ready", "running", "backoff"...).
    pub state: String,
    /// Why it is not ok (empty when it is).
    pub reason: String,
}

/// A target's document at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDoc {
    pub target: String,
    pub revision: u64,
    /// The document, a JSON object as text.
    pub values: String,
    /// Keys that differ from the revision before.
    pub changed: Vec<String>,
    /// When it was made (ms since the epoch); `None` for the defaults.
    pub time_ms: Option<u64>,
    /// What made it: "defaults", "set", "unset", "rollback to 3".
    pub note: String,
}

/// One weavelet in `weaver config status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeaveletRow {
    /// The connection's id (its `welcome` says it).
    pub id: u64,
    pub target: String,
    /// The supervised instance it came from.
    pub instance: Option<String>,
    /// The name it gave in `hello`.
    pub name: Option<String>,
    pub pid: u32,
    pub connected: bool,
    /// The newest revision it applied.
    pub applied: Option<u64>,
    /// The target's revision now.
    pub current: u64,
    /// Revisions behind `current`.
    pub lag: u64,
    pub step: Option<u64>,
    /// Its last rejection: revision and reason.
    pub rejected: Option<(u64, String)>,
    /// Its latest metrics, a JSON object as text.
    pub metrics: String,
}

/// How a `--wait` ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitReport {
    pub target: String,
    pub revision: u64,
    /// Weavelets (`render::who` labels) that applied it.
    pub applied: Vec<String>,
    /// Who rejected it and why.
    pub rejected: Vec<(String, String)>,
    /// Who had not answered when the timeout passed.
    pub lagging: Vec<String>,
    /// Who disconnected before answering.
    pub disconnected: Vec<String>,
    pub timed_out: bool,
}

/// One event of `weaver config watch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEvent {
    pub time_ms: u64,
    pub target: String,
    /// "revision", "applied", "rejected", "connected", "disconnected".
    pub event: String,
    pub revision: Option<u64>,
    /// The weavelet, for all but "revision".
    pub who: Option<String>,
    pub step: Option<u64>,
    /// The keys that changed ("revision"), or the reason ("rejected").
    pub detail: Option<String>,
}

/// What `Request::Logs` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    pub name: String,
    pub after: u64,
    pub tail: Option<u32>,
    /// Only this stream; `None`: both.
    pub stream: Option<LogStream>,
    pub follow: bool,
}

/// `weaver ps`, one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRow {
    pub name: String,
    pub process: String,
    pub state: ProcState,
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

impl From<PsRow> for ProcRow {
    fn from(r: PsRow) -> Self {
        ProcRow {
            name: r.name,
            process: r.process,
            // Every label the supervisor gives parses (tested below).
            state: r.state.parse().unwrap_or(ProcState::Failed),
            pid: r.pid,
            restarts: r.restarts,
            next_restart_ms: r.next_restart_in.map(|d| d.as_millis() as u64),
            last_exit: r.last_exit,
            uptime_ms: r.uptime.map(|d| d.as_millis() as u64),
            reason: r.reason,
            gpus: r.gpus,
        }
    }
}

/// A supervised instance's state.
///
/// Wire form, in postcard and JSON alike: one string, the text `weaver ps`
/// shows (`Display`): `stopped`, `waiting`, `starting`, `running`, `ready`,
/// `stopping`, `exited(N)` (`exited(?)` when a detached process vanished),
/// `killed(SIGNAME)` (`killed(N)` for a signal with no name), `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Not running; never started, or stopped on request.
    Stopped,
    /// Start requested; waiting for what it runs after.
    Waiting,
    /// Being started (hooks, spawn, not up long enough yet).
    Starting,
    /// Counts as started; not (yet) ready by its probe.
    Running,
    /// Its ready probe passed.
    Ready,
    /// Being stopped on request.
    Stopping,
    /// Exited on its own with this code; `None`: a detached process
    /// vanished (no status to report).
    Exited { code: Option<i32> },
    /// Ended by this signal, not sent by a stop.
    Killed { signal: i32 },
    /// Gave up, or cannot start; `ProcRow::reason` says why.
    Failed,
}

impl fmt::Display for ProcState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ProcState::Stopped => Cow::Borrowed("stopped"),
            ProcState::Waiting => "waiting".into(),
            ProcState::Starting => "starting".into(),
            ProcState::Running => "running".into(),
            ProcState::Ready => "ready".into(),
            ProcState::Stopping => "stopping".into(),
            ProcState::Exited { code: Some(c) } => format!("exited({c})").into(),
            ProcState::Exited { code: None } => "exited(?)".into(),
            ProcState::Killed { signal } => {
                format!("killed({})", crate::sys::signal_name(*signal)).into()
            }
            ProcState::Failed => "failed".into(),
        };
        // `pad`, so that widths and alignment apply (the ps table).
        f.pad(&text)
    }
}

impl FromStr for ProcState {
    type Err = String;

    /// The inverse of `Display`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown process state {s:?}");
        let inner = |prefix: &str| s.strip_prefix(prefix).and_then(|r| r.strip_suffix(')'));
        Ok(match s {
            "stopped" => ProcState::Stopped,
            "waiting" => ProcState::Waiting,
            "starting" => ProcState::Starting,
            "running" => ProcState::Running,
            "ready" => ProcState::Ready,
            "stopping" => ProcState::Stopping,
            "failed" => ProcState::Failed,
            "exited(?)" => ProcState::Exited { code: None },
            _ => {
                if let Some(code) = inner("exited(") {
                    ProcState::Exited { code: Some(code.parse().map_err(|_| bad())?) }
                } else if let Some(sig) = inner("killed(") {
                    let signal = match Signal::from_str(sig) {
                        Ok(named) => named as i32,
                        Err(_) => sig
                            .strip_prefix("signal ")
                            .and_then(|n| n.parse().ok())
                            .ok_or_else(bad)?,
                    };
                    ProcState::Killed { signal }
                } else {
                    return Err(bad());
                }
            }
        })
    }
}

impl Serialize for ProcState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProcState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
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
    pub stream: LogStream,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub text: String,
}

/// Which output of a process a line came from. Wire form: a unit variant
/// (postcard: its index; JSON: `"stdout"` or `"stderr"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    /// The names, as the command line takes them.
    pub const NAMES: [&'static str; 2] = ["stdout", "stderr"];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for LogStream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(LogStream::Stdout),
            "stderr" => Ok(LogStream::Stderr),
            _ => Err(format!("unknown stream {s:?}: use stdout or stderr")),
        }
    }
}

impl From<Stream> for LogStream {
    fn from(s: Stream) -> Self {
        match s {
            Stream::Stdout => LogStream::Stdout,
            Stream::Stderr => LogStream::Stderr,
        }
    }
}

impl From<LogStream> for Stream {
    fn from(s: LogStream) -> Self {
        match s {
            LogStream::Stdout => Stream::Stdout,
            LogStream::Stderr => Stream::Stderr,
        }
    }
}

/// One lifecycle event (or, with `event` [`EventType::Lost`], how many a
/// slow subscriber missed). The text form is in `render`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub time_ms: u64,
    pub instance: String,
    pub event: EventType,
    pub pid: Option<u32>,
    pub code: Option<i32>,
    /// The signal's name ("SIGKILL"; "signal N" with no name).
    pub signal: Option<String>,
    pub delay_ms: Option<u64>,
    pub attempt: Option<u32>,
    /// Reason, hook detail, warning, or the output line.
    pub detail: Option<String>,
    pub lost: Option<u64>,
}

impl EventRecord {
    /// The record of a published event of `instance`.
    pub fn of(seq: u64, time_ms: u64, instance: &str, kind: &EventKind) -> EventRecord {
        let mut r = EventRecord {
            seq,
            time_ms,
            instance: instance.to_string(),
            event: EventType::from(kind),
            pid: None,
            code: None,
            signal: None,
            delay_ms: None,
            attempt: None,
            detail: None,
            lost: None,
        };
        match kind {
            EventKind::Started { pid } => r.pid = Some(*pid),
            EventKind::Output { stream, seq, bytes } => {
                r.detail = Some(format!(
                    "{}#{seq}: {}",
                    LogStream::from(*stream),
                    String::from_utf8_lossy(bytes)
                ));
            }
            EventKind::Exited { code } => r.code = Some(*code),
            EventKind::Killed { signal } => r.signal = Some(crate::sys::signal_name(*signal)),
            EventKind::Restarting { delay_ms, attempt } => {
                r.delay_ms = Some(*delay_ms);
                r.attempt = Some(*attempt);
            }
            EventKind::Failed { reason } => r.detail = Some(reason.clone()),
            EventKind::Hook { hook, ok, detail } => {
                let outcome = if *ok { "ok" } else { "failed" };
                r.detail = Some(if detail.is_empty() {
                    format!("{hook} {outcome}")
                } else {
                    format!("{hook} {outcome}: {detail}")
                });
            }
            EventKind::Warning { message } => r.detail = Some(message.clone()),
            EventKind::StdinClosed { reason } => r.detail = Some(reason.clone()),
            EventKind::Skipped { reason } => r.detail = Some(reason.clone()),
            EventKind::Running
            | EventKind::Ready
            | EventKind::Vanished
            | EventKind::Stopping
            | EventKind::Stopped => {}
        }
        r
    }

    /// The marker for `count` events a subscriber missed (no instance, seq
    /// or time).
    pub fn lost(count: u64) -> EventRecord {
        EventRecord {
            seq: 0,
            time_ms: 0,
            instance: String::new(),
            event: EventType::Lost,
            pid: None,
            code: None,
            signal: None,
            delay_ms: None,
            attempt: None,
            detail: Some(format!("{count} event(s) dropped: this subscriber fell behind")),
            lost: Some(count),
        }
    }
}

impl From<Delivery> for EventRecord {
    fn from(d: Delivery) -> Self {
        match d {
            Delivery::Event(e) => EventRecord::of(e.seq, e.time_ms, &e.instance, &e.kind),
            Delivery::Lost { count } => EventRecord::lost(count),
        }
    }
}

/// What happened, in an [`EventRecord`]. Wire form: a unit variant
/// (postcard: its index; JSON: the snake_case name, e.g. `"restarting"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// Spawned (`pid`).
    Started,
    /// Up long enough to count as started.
    Running,
    /// The ready probe passed.
    Ready,
    /// One output line (`detail`: `stream#seq: text`).
    Output,
    /// Exited on its own (`code`).
    Exited,
    /// A signal ended it (`signal`).
    Killed,
    /// A detached process's pid is gone.
    Vanished,
    /// Will start again (`delay_ms`, `attempt`).
    Restarting,
    /// The stop signal was sent.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Gave up, or cannot start (`detail`: why).
    Failed,
    /// A hook finished (`detail`: `hook ok|failed[: detail]`).
    Hook,
    /// Something worth telling (`detail`).
    Warning,
    /// Its stdin was closed while it runs (`detail`: by whom).
    StdinClosed,
    /// A slow subscriber missed `lost` events here.
    Lost,
    /// A job of a run was not run (`detail`: why).
    Skipped,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Started => "started",
            EventType::Running => "running",
            EventType::Ready => "ready",
            EventType::Output => "output",
            EventType::Exited => "exited",
            EventType::Killed => "killed",
            EventType::Vanished => "vanished",
            EventType::Restarting => "restarting",
            EventType::Stopping => "stopping",
            EventType::Stopped => "stopped",
            EventType::Failed => "failed",
            EventType::Hook => "hook",
            EventType::Warning => "warning",
            EventType::StdinClosed => "stdin_closed",
            EventType::Lost => "lost",
            EventType::Skipped => "skipped",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl From<&EventKind> for EventType {
    fn from(k: &EventKind) -> Self {
        match k {
            EventKind::Started { .. } => EventType::Started,
            EventKind::Running => EventType::Running,
            EventKind::Ready => EventType::Ready,
            EventKind::Output { .. } => EventType::Output,
            EventKind::Exited { .. } => EventType::Exited,
            EventKind::Killed { .. } => EventType::Killed,
            EventKind::Vanished => EventType::Vanished,
            EventKind::Restarting { .. } => EventType::Restarting,
            EventKind::Stopping => EventType::Stopping,
            EventKind::Stopped => EventType::Stopped,
            EventKind::Failed { .. } => EventType::Failed,
            EventKind::Hook { .. } => EventType::Hook,
            EventKind::Warning { .. } => EventType::Warning,
            EventKind::StdinClosed { .. } => EventType::StdinClosed,
            EventKind::Skipped { .. } => EventType::Skipped,
        }
    }
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
    /// A weavelet rejected a configuration revision.
    Rejected,
    /// The fleet's NATS server cannot be reached: nothing was written.
    FleetUnreachable,
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
    /// What keeps its children from outliving it: "cgroup DIR" or
    /// "environment marker WEAVER_DAEMON_ID=...".
    pub containment: String,
    /// The address the HTTP endpoint is bound to, when it is on.
    pub http: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeStatus {
    pub pid: Option<u32>,
    pub state: ComputeState,
    pub bin: String,
    pub workers: Option<u32>,
    pub restarts: u64,
    /// Times compute was found hung (no PONG in time) and restarted.
    pub hangs: u64,
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

/// The compute daemon's state. Wire form: a unit variant (postcard: its
/// index; JSON: the snake_case name, e.g. `"backoff"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeState {
    /// Spawned; not connected yet.
    Starting,
    /// Connected and serving.
    Ready,
    /// Its connection was lost; being killed and reaped.
    Exiting,
    /// Waiting to start again (`next_restart_ms`).
    Backoff,
    /// weaver is stopping it.
    Stopping,
    /// Not running and not coming back.
    Stopped,
    /// Gave up after too many crashes in a row.
    Failed,
}

impl ComputeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeState::Starting => "starting",
            ComputeState::Ready => "ready",
            ComputeState::Exiting => "exiting",
            ComputeState::Backoff => "backoff",
            ComputeState::Stopping => "stopping",
            ComputeState::Stopped => "stopped",
            ComputeState::Failed => "failed",
        }
    }
}

impl fmt::Display for ComputeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl From<compute::State> for ComputeState {
    fn from(s: compute::State) -> Self {
        match s {
            compute::State::Starting { .. } => ComputeState::Starting,
            compute::State::Ready { .. } => ComputeState::Ready,
            compute::State::Exiting { .. } => ComputeState::Exiting,
            compute::State::Backoff { .. } => ComputeState::Backoff,
            compute::State::Stopping { .. } => ComputeState::Stopping,
            compute::State::Idle | compute::State::Stopped => ComputeState::Stopped,
            compute::State::Failed => ComputeState::Failed,
        }
    }
}

/// Encode a message (infallible for these types).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("protocol messages always encode")
}

/// Encode a message into `buf` (cleared first), reusing its allocation.
pub fn encode_into<T: Serialize>(msg: &T, buf: &mut Vec<u8>) {
    buf.clear();
    let v = postcard::to_extend(msg, std::mem::take(buf)).expect("protocol messages always encode");
    *buf = v;
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

    #[test]
    fn proc_states_are_the_supervisor_labels() {
        use crate::supervise::machine::{StartPhase, State, StopPhase};
        let states = [
            State::Stopped,
            State::Waiting,
            State::Starting(StartPhase::PreStart),
            State::Starting(StartPhase::PostStart),
            State::Running,
            State::Ready,
            State::Stopping(StopPhase::Signalled),
            State::Exited { code: Some(3) },
            State::Exited { code: Some(-1) },
            State::Exited { code: None },
            State::Killed { signal: libc::SIGSEGV },
            State::Killed { signal: 77 },
            State::Failed { reason: "gave up".into() },
        ];
        for st in states {
            let label = st.label();
            let parsed: ProcState = label.parse().unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(parsed.to_string(), label);
            // The wire form is the label, in JSON and in postcard.
            assert_eq!(serde_json::to_value(parsed).unwrap(), serde_json::json!(label));
            assert_eq!(encode(&parsed), encode(&label));
            assert_eq!(decode::<ProcState>(&encode(&parsed), "state").unwrap(), parsed);
        }
        assert_eq!(
            "killed(SIGKILL)".parse::<ProcState>(),
            Ok(ProcState::Killed { signal: libc::SIGKILL })
        );
        for bad in ["", "exited()", "exited(x)", "killed(SIGNOPE)", "dancing", "exited(1"] {
            assert!(bad.parse::<ProcState>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<ProcState>("\"dancing\"").is_err());
        // Widths apply (the ps table pads the state).
        assert_eq!(format!("[{:<10}]", ProcState::Exited { code: Some(1) }), "[exited(1) ]");
    }

    #[test]
    fn unit_enums_are_their_snake_case_names_in_json() {
        let name = |v: serde_json::Value| v.as_str().unwrap().to_string();
        for s in [LogStream::Stdout, LogStream::Stderr] {
            assert_eq!(name(serde_json::to_value(s).unwrap()), s.as_str());
            assert_eq!(s.as_str().parse::<LogStream>(), Ok(s));
            assert_eq!(LogStream::from(Stream::from(s)), s);
        }
        assert!("stdin".parse::<LogStream>().is_err());
        use ComputeState as C;
        for s in [C::Starting, C::Ready, C::Exiting, C::Backoff, C::Stopping, C::Stopped, C::Failed]
        {
            assert_eq!(name(serde_json::to_value(s).unwrap()), s.as_str());
        }
        use EventType as E;
        for e in [
            E::Started,
            E::Running,
            E::Ready,
            E::Output,
            E::Exited,
            E::Killed,
            E::Vanished,
            E::Restarting,
            E::Stopping,
            E::Stopped,
            E::Failed,
            E::Hook,
            E::Warning,
            E::StdinClosed,
            E::Lost,
            E::Skipped,
        ] {
            assert_eq!(name(serde_json::to_value(e).unwrap()), e.as_str());
        }
    }

    #[test]
    fn event_records_of_supervise_events() {
        use crate::supervise::events::Event;
        let rec = |kind| EventRecord::of(7, 1000, "web.0", &kind);
        let r = rec(EventKind::Killed { signal: libc::SIGKILL });
        assert_eq!((r.seq, r.time_ms, r.instance.as_str()), (7, 1000, "web.0"));
        assert_eq!((r.event, r.signal.as_deref()), (EventType::Killed, Some("SIGKILL")));
        let r = rec(EventKind::Output { stream: Stream::Stderr, seq: 4, bytes: b"oops".to_vec() });
        assert_eq!(r.detail.as_deref(), Some("stderr#4: oops"));
        let r = rec(EventKind::Hook { hook: "pre_start", ok: false, detail: "exit 1".into() });
        assert_eq!(r.detail.as_deref(), Some("pre_start failed: exit 1"));
        let r = rec(EventKind::Hook { hook: "post_stop", ok: true, detail: String::new() });
        assert_eq!(r.detail.as_deref(), Some("post_stop ok"));
        let e = Event { seq: 3, time_ms: 5, instance: "a.0".into(), kind: EventKind::Running };
        assert_eq!(
            EventRecord::from(Delivery::Event(e)),
            EventRecord::of(3, 5, "a.0", &EventKind::Running)
        );
        let r = rec(EventKind::StdinClosed { reason: "closed by weaver send --close".into() });
        assert_eq!(r.event.as_str(), "stdin_closed");
        assert_eq!(r.what().to_string(), "stdin_closed: closed by weaver send --close");
        let lost = EventRecord::from(Delivery::Lost { count: 9 });
        assert_eq!((lost.event, lost.lost), (EventType::Lost, Some(9)));
    }
}
