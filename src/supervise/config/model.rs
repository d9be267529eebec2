//! The configuration as data: what `weaver.toml` says, after parsing and
//! validation ([`ProcessSpec`], [`ComputeSpec`] and their parts), and one
//! concrete instance of a process ([`InstanceSpec`]). Defaults live here
//! next to the fields they fill.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub compute: ComputeSpec,
    /// `[http]`: the HTTP endpoint, when it is on.
    pub http: Option<HttpSpec>,
    /// In declaration order.
    pub processes: Vec<ProcessSpec>,
    /// `[[job]]`s (`weaver run`), in declaration order.
    pub jobs: Vec<crate::run::JobSpec>,
}

/// `[http]`: where the health, readiness and metrics endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSpec {
    /// `listen`: an IP address and port; port 0 takes a free one.
    pub listen: std::net::SocketAddr,
    /// `allow_remote`: a non-loopback `listen` is refused without it.
    pub allow_remote: bool,
    /// `header_timeout`: from the first byte of a request to the end of
    /// its head (a slow client then gets 408).
    pub header_timeout: std::time::Duration,
    /// `idle_timeout`: a keep-alive connection without a request is
    /// closed after this.
    pub idle_timeout: std::time::Duration,
}

impl HttpSpec {
    /// Check `listen` (from `[http]` or `--http`): an address and port,
    /// loopback unless `allow_remote`.
    pub fn check(listen: &str, allow_remote: bool) -> Result<HttpSpec, String> {
        let addr: std::net::SocketAddr = listen.trim().parse().map_err(|_| {
            format!(
                "{listen:?} is not an address and port: write it like \"127.0.0.1:9464\" \
                 or \"[::1]:9464\" (port 0 takes a free port)"
            )
        })?;
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(format!(
                "{addr} is not a loopback address: other hosts could read weaver's health and \
                 metrics; set allow_remote = true in [http] to allow it, or listen on 127.0.0.1"
            ));
        }
        Ok(HttpSpec {
            listen: addr,
            allow_remote,
            header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
        })
    }

    pub const DEFAULT_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
}

/// `[compute]`: how the compute daemon is run.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeSpec {
    /// argv; `None`: the bundled compute daemon.
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub workers: Option<u32>,
    pub restart: RestartPolicy,
    /// How often weaver PINGs a connected compute; zero: never.
    pub ping_interval: Duration,
    /// A compute that has not answered a PING this long is hung: it is
    /// killed and restarted.
    pub ping_timeout: Duration,
    /// The CPU scheduling policy compute runs under.
    pub scheduling: Scheduling,
}

/// `[compute] scheduling = "normal" | "batch"`: the Linux scheduling
/// policy of compute and every thread it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// `SCHED_OTHER` (the default), as weaver itself runs.
    #[default]
    Normal,
    /// `SCHED_BATCH`: the same share of the CPU, but a compute thread that
    /// wakes does not preempt the task running on its core; it runs when
    /// that task sleeps or its slice ends. weaver wakes compute by writing
    /// requests and then goes on to finish its turn, so compute no longer
    /// cuts that turn in two (see docs/performance.md for the figures).
    /// On a core busy with other work compute may wait up to a slice (a
    /// few milliseconds) for it.
    Batch,
}

impl Scheduling {
    /// The values `scheduling` takes, as written in `weaver.toml`.
    pub const CHOICES: [(&'static str, Scheduling); 2] =
        [("normal", Scheduling::Normal), ("batch", Scheduling::Batch)];
}

impl ComputeSpec {
    /// `ping_interval` when not given.
    pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
    /// `ping_timeout` when not given.
    pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(5);
}

impl Default for ComputeSpec {
    fn default() -> Self {
        ComputeSpec {
            command: None,
            env: BTreeMap::new(),
            workers: None,
            restart: RestartPolicy::COMPUTE,
            ping_interval: Self::DEFAULT_PING_INTERVAL,
            ping_timeout: Self::DEFAULT_PING_TIMEOUT,
            scheduling: Scheduling::Normal,
        }
    }
}

/// What happens after a process that had started exits on its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// Restart after any exit nobody asked for (exit code 0 included).
    pub auto_restart: bool,
    /// Delay before the first restart of a streak.
    pub restart_interval: Duration,
    /// Each further restart of a streak waits this many times longer.
    pub backoff_factor: f64,
    /// No delay is longer than this.
    pub backoff_cap: Duration,
    /// Each delay is moved by up to this fraction either way (0..=1).
    pub backoff_jitter: f64,
    /// A run this long ends the streak: the next delay is the first again.
    pub stable_after: Duration,
    /// Give up (state `failed`) after this many restarts in a row without a
    /// stable run; 0 = never give up.
    pub max_restarts: u32,
}

impl RestartPolicy {
    /// Defaults for `[[process]]`.
    pub const PROCESS: RestartPolicy = RestartPolicy {
        auto_restart: true,
        restart_interval: Duration::from_secs(1),
        backoff_factor: 2.0,
        backoff_cap: Duration::from_secs(30),
        backoff_jitter: 0.1,
        stable_after: Duration::from_secs(10),
        max_restarts: 10,
    };
    /// Defaults for `[compute]`: quick restarts, never give up.
    pub const COMPUTE: RestartPolicy = RestartPolicy {
        auto_restart: true,
        restart_interval: Duration::from_millis(100),
        backoff_factor: 2.0,
        backoff_cap: Duration::from_secs(10),
        backoff_jitter: 0.1,
        stable_after: Duration::from_secs(10),
        max_restarts: 0,
    };
}

/// What counts as a start, and how failed starts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPolicy {
    /// A process must stay up this long to count as started; one that exits
    /// sooner (or cannot be spawned) is a failed start.
    pub start_duration: Duration,
    /// Failed starts retried before giving up (state `failed`).
    pub retry_count: u32,
    /// Delay between failed start attempts.
    pub retry_interval: Duration,
}

impl StartPolicy {
    /// Defaults for `[[process]]`.
    pub(crate) const DEFAULT: StartPolicy = StartPolicy {
        start_duration: Duration::from_secs(1),
        retry_count: 3,
        retry_interval: Duration::from_secs(1),
    };
}

impl Default for StartPolicy {
    fn default() -> Self {
        StartPolicy::DEFAULT
    }
}

/// What an `after` entry waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Every instance counts as started (up for `start_duration`).
    Started,
    /// Every instance is ready (its ready probe passed; without a probe,
    /// started).
    Ready,
    /// Every instance exited with code 0 and is not restarting.
    ExitedOk,
}

/// One `after` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// A process name (all its instances).
    pub name: String,
    pub condition: Condition,
}

/// How to tell that a process still lives (needed for `detached` ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliveCheck {
    /// The pid in this file is a live process.
    PidFile(PathBuf),
    /// This command exits 0.
    Command(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliveDetector {
    pub check: AliveCheck,
    /// Default 1s.
    pub interval: Duration,
}

impl AliveDetector {
    /// `interval` when not given.
    pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
}

/// How to tell that a process is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyCheck {
    /// This command exits 0.
    Command(Vec<String>),
    /// This file exists.
    PidFile(PathBuf),
    /// A line of output (stdout or stderr) contains this text (plain
    /// substring, no regex).
    LogPattern(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyProbe {
    pub check: ReadyCheck,
    /// Between probe attempts; default 1s.
    pub interval: Duration,
    /// Not ready this long after counting as started: a failed start;
    /// default 30s.
    pub timeout: Duration,
}

impl ReadyProbe {
    /// `interval` when not given.
    pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
    /// `timeout` when not given.
    pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
}

/// Where output goes besides the in-memory ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Bytes of recent output kept in memory; default 1 MiB.
    pub ring_bytes: usize,
    /// Also append every line to this file.
    pub file: Option<PathBuf>,
    /// Rotate the file when it would grow past this; default 10 MiB.
    pub max_file_bytes: u64,
    /// Rotated files kept (`file.1` .. `file.N`); default 3.
    pub keep_files: u32,
}

impl OutputSpec {
    /// Defaults: a 1 MiB ring, no file; a file rotates at 10 MiB and keeps 3.
    pub(crate) const DEFAULT: OutputSpec =
        OutputSpec { ring_bytes: 1 << 20, file: None, max_file_bytes: 10 << 20, keep_files: 3 };
    /// The smallest `ring_bytes` accepted.
    pub(crate) const MIN_RING_BYTES: u64 = 1024;
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec::DEFAULT
    }
}

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookKind {
    PreStart,
    PostStart,
    PreStop,
    PostStop,
}

impl HookKind {
    pub const ALL: [HookKind; 4] =
        [HookKind::PreStart, HookKind::PostStart, HookKind::PreStop, HookKind::PostStop];

    pub fn name(self) -> &'static str {
        match self {
            HookKind::PreStart => "pre_start",
            HookKind::PostStart => "post_start",
            HookKind::PreStop => "pre_stop",
            HookKind::PostStop => "post_stop",
        }
    }
}

/// What a failed hook does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Carry on as if it had succeeded.
    Ignore,
    /// The process goes `failed` with the hook's failure as reason.
    Fail,
    /// Run the hook again, per the process's `retry_count` and
    /// `retry_interval`; then as `Fail`.
    Retry,
}

/// Whether the lifecycle waits for a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Blocking,
    Async,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    pub command: Vec<String>,
    /// Default: the process's `work_dir`.
    pub work_dir: Option<PathBuf>,
    /// Added to the process's environment.
    pub env: BTreeMap<String, String>,
    /// Default 30s; then the hook is killed and counts as failed.
    pub timeout: Duration,
    /// Default: `fail` for pre_start, `ignore` for the others.
    pub failure_mode: FailureMode,
    /// Default `blocking`.
    pub run_mode: RunMode,
}

impl HookSpec {
    /// `timeout` when not given.
    pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    pub pre_start: Option<HookSpec>,
    pub post_start: Option<HookSpec>,
    pub pre_stop: Option<HookSpec>,
    pub post_stop: Option<HookSpec>,
}

impl Hooks {
    pub fn get(&self, kind: HookKind) -> Option<&HookSpec> {
        match kind {
            HookKind::PreStart => self.pre_start.as_ref(),
            HookKind::PostStart => self.post_start.as_ref(),
            HookKind::PreStop => self.pre_stop.as_ref(),
            HookKind::PostStop => self.post_stop.as_ref(),
        }
    }

    pub(super) fn get_mut(&mut self, kind: HookKind) -> &mut Option<HookSpec> {
        match kind {
            HookKind::PreStart => &mut self.pre_start,
            HookKind::PostStart => &mut self.post_start,
            HookKind::PreStop => &mut self.pre_stop,
            HookKind::PostStop => &mut self.post_stop,
        }
    }
}

/// One `[[process]]` as written (before instance expansion).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    pub name: String,
    /// argv; with `shell`, a single element: the script for `/bin/sh -c`.
    pub command: Vec<String>,
    pub shell: bool,
    pub work_dir: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    /// Non-detached: weaver writes the pid there (and removes it after the
    /// exit). Detached: the program writes it and weaver reads it.
    pub pid_file: Option<PathBuf>,
    /// Start order among processes free to start: lower first. Default 0.
    pub priority: i64,
    pub after: Vec<Dependency>,
    pub start: StartPolicy,
    pub restart: RestartPolicy,
    /// Default 1.
    pub instances: u32,
    /// Entry i % len for instance i; empty: `CUDA_VISIBLE_DEVICES` untouched.
    pub gpus: Vec<Vec<u32>>,
    /// The program daemonizes itself.
    pub detached: bool,
    /// For detached processes, defaults to checking `pid_file`.
    pub alive: Option<AliveDetector>,
    pub ready: Option<ReadyProbe>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub output: OutputSpec,
    pub hooks: Hooks,
    /// `[process.params]`: the default live-configuration document of this
    /// process's weavelets (TOML values as JSON).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// `stdin`: what each instance's stdin is. Default: `/dev/null`.
    pub stdin: StdinMode,
}

/// `stdin = "null" | "pipe"`: an instance's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StdinMode {
    /// `/dev/null` (the default): the process reads EOF at once.
    #[default]
    Null,
    /// A pipe whose write end weaver holds (`weaver send`, `weaver attach`);
    /// each run gets a fresh one.
    Pipe,
}

impl StdinMode {
    /// The values `stdin` takes, as written in `weaver.toml`.
    pub const CHOICES: [(&'static str, StdinMode); 2] =
        [("null", StdinMode::Null), ("pipe", StdinMode::Pipe)];
}

impl ProcessSpec {
    /// `stop_signal` when not given.
    pub(crate) const DEFAULT_STOP_SIGNAL: Signal = Signal::SIGTERM;
    /// `stop_timeout` when not given.
    pub(crate) const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(2);
}

/// One concrete process: a `[[process]]` with `{instance}` replaced, the
/// shell applied and the GPUs chosen. Everything the lifecycle and the
/// reactor need to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    /// `name`, or `name.i` when the process has several instances.
    pub name: String,
    /// The `[[process]]` name.
    pub process: String,
    pub index: u32,
    /// Ready to exec: `["/bin/sh", "-c", script]` for shell commands.
    pub argv: Vec<String>,
    pub work_dir: Option<PathBuf>,
    /// The full environment to add (includes `WEAVER_PROCESS`,
    /// `WEAVER_INSTANCE` and, with `gpus`, `CUDA_VISIBLE_DEVICES`).
    pub env: BTreeMap<String, String>,
    pub pid_file: Option<PathBuf>,
    /// The devices this instance is pinned to.
    pub gpus: Option<Vec<u32>>,
    pub priority: i64,
    pub after: Vec<Dependency>,
    pub start: StartPolicy,
    pub restart: RestartPolicy,
    pub detached: bool,
    pub alive: Option<AliveDetector>,
    pub ready: Option<ReadyProbe>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub output: OutputSpec,
    /// Commands, work dirs and env already expanded; `env` is the full
    /// environment for the hook (the instance's plus the hook's own) and
    /// `work_dir` defaults to the instance's.
    pub hooks: Hooks,
    pub stdin: StdinMode,
}
