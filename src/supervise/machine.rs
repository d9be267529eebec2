//! One instance's lifecycle as state x input, without I/O.
//!
//! [`Instance::step`] takes an [`Input`] (something the reactor saw, or a
//! request) and appends the [`Action`]s the reactor must perform: spawn,
//! run a hook, signal, arm a timer, write a pid file, run a probe, publish
//! an event. The transition table is one `match (state, input)` in
//! [`Instance::step`]; each cell is a small named method, and the pairs
//! that change nothing are spelled out too, grouped by why (no catch-all,
//! so a new state or input must be placed in every row).
//!
//! Life of a process (blocking hooks shown; async hooks run alongside):
//!
//! ```text
//! Stopped/Exited/Killed/Failed --Start--> [pre_start] --> Spawn --Spawned--> Starting(Up)
//! Starting(Up) --start_duration--> [post_start] --> Running --probe ok--> Ready
//! Starting(Up) --exit--> failed start: retry after retry_interval, or Failed
//! Running/Ready --exit--> [post_stop] --> Exited/Killed (+ restart timer per backoff) or Failed
//! any up state --Stop--> [pre_stop] --> stop_signal --stop_timeout--> SIGKILL --exit--> [post_stop] --> Stopped
//! ```
//!
//! Detached processes: the spawned launcher is expected to exit 0; the
//! process itself is then found and watched through the alive detector
//! (its pid file, by default), and signalled by pid (not by group).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::backoff::{Backoff, Verdict};
use super::config::{
    AliveCheck, AliveDetector, Condition, FailureMode, HookKind, HookSpec, InstanceSpec,
    ReadyCheck, RunMode,
};
use super::duration::human;
use super::events::EventKind;
use super::ring::{LineAssembler, Ring, Stream};
use crate::sys::signal_name;

/// Identifies one run of a hook or probe command, so a late answer about
/// an earlier run is recognised and dropped.
pub type RunId = u64;

/// How often a detached process is polled while it is stopping.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Longest gap between alive checks while a detached process has not yet
/// written its pid file.
const START_POLL: Duration = Duration::from_millis(200);
/// A probe command gets at least this long (or [`PROBE_DEADLINE_INTERVALS`]
/// of its interval, if longer) before it is killed and counted as failed.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);
const PROBE_DEADLINE_INTERVALS: u32 = 2;
/// Output streams per instance: stdout and stderr.
const STREAMS: usize = 2;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// A detached process's pid went away; no status is known.
    Vanished,
}

impl Exit {
    pub fn from_status(status: std::process::ExitStatus) -> Exit {
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Vanished,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// "exited with code 1", "killed by SIGKILL", "vanished".
    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("killed by {}", signal_name(s)),
            Exit::Vanished => "vanished".into(),
        }
    }

    fn event(self) -> EventKind {
        match self {
            Exit::Code(code) => EventKind::Exited { code },
            Exit::Signal(signal) => EventKind::Killed { signal },
            Exit::Vanished => EventKind::Vanished,
        }
    }
}

/// Where a start is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPhase {
    /// A blocking pre_start hook runs; nothing spawned yet.
    PreStart,
    /// Spawn was asked for; waiting for `Spawned` or `SpawnFailed`.
    Spawning,
    /// Spawned; not yet up for `start_duration` (for a detached process:
    /// or its pid not yet found).
    Up,
    /// Up long enough; a blocking post_start hook runs.
    PostStart,
}

/// Where a stop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPhase {
    /// A blocking pre_stop hook runs; no signal sent yet.
    PreStop,
    /// The stop signal was sent; waiting for the exit or `stop_timeout`.
    Signalled,
    /// SIGKILL was sent.
    Killed,
    /// The process is gone; a blocking post_stop hook runs.
    PostStop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not running; never started or stopped on request.
    Stopped,
    /// Start requested; waiting for what it runs `after`.
    Waiting,
    Starting(StartPhase),
    /// Counts as started; not (yet) ready by its probe.
    Running,
    /// Its ready probe passed.
    Ready,
    Stopping(StopPhase),
    /// Exited on its own; `None`: a detached process vanished. Restarting
    /// when `next_restart_at` is set.
    Exited {
        code: Option<i32>,
    },
    /// Ended by a signal it was not sent by a stop; restarting when
    /// `next_restart_at` is set.
    Killed {
        signal: i32,
    },
    /// Gave up; stays down until started again.
    Failed {
        reason: String,
    },
}

impl State {
    /// For `ps`: "running", "exited(1)", "killed(SIGSEGV)", "killed(signal
    /// 34)" for a signal with no name, "failed".
    pub fn label(&self) -> String {
        match self {
            State::Stopped => "stopped".into(),
            State::Waiting => "waiting".into(),
            State::Starting(_) => "starting".into(),
            State::Running => "running".into(),
            State::Ready => "ready".into(),
            State::Stopping(_) => "stopping".into(),
            State::Exited { code: Some(c) } => format!("exited({c})"),
            State::Exited { code: None } => "exited(?)".into(),
            State::Killed { signal } => format!("killed({})", signal_name(*signal)),
            State::Failed { .. } => "failed".into(),
        }
    }

    /// A process exists (or is being made) for this state.
    pub fn is_up(&self) -> bool {
        matches!(self, State::Starting(_) | State::Running | State::Ready | State::Stopping(_))
    }

    fn of_exit(exit: Exit) -> State {
        match exit {
            Exit::Code(c) => State::Exited { code: Some(c) },
            Exit::Signal(signal) => State::Killed { signal },
            Exit::Vanished => State::Exited { code: None },
        }
    }
}

/// What a timer is for (one of each kind at most per instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// Up this long: counts as started.
    StartDuration,
    /// The stop signal got no exit in time: SIGKILL.
    StopTimeout,
    /// Backoff or retry over: start again.
    Restart,
    /// This hook ran too long: kill it, count it failed.
    Hook(HookKind),
    /// Run this hook again (failure_mode = retry).
    HookRetry(HookKind),
    /// Time for the next ready probe.
    ReadyProbe,
    /// Not ready in time: a failed start.
    ReadyTimeout,
    /// Time for the next alive check.
    Alive,
    /// The probe command in flight ran too long.
    ProbeDeadline,
}

/// A timer as the reactor holds it: hand it back to `on_timer` when it
/// fires. `token` makes every arming unique, so a timer that was replaced
/// or cancelled is recognised and ignored even if the reactor never
/// cancelled it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TimerKey {
    pub instance: String,
    pub kind: TimerKind,
    pub token: u64,
}

/// Which probe a result is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeRole {
    Ready,
    Alive,
}

/// What the reactor checks for a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Run this; exit code 0 = ok. Kill it on `KillProbe`.
    Command { argv: Vec<String>, env: BTreeMap<String, String>, work_dir: Option<PathBuf> },
    /// Ok when the file exists.
    FileExists(PathBuf),
    /// Ok when the file names a live process (`pidfile::live_pid`); report
    /// that pid.
    PidFileLive(PathBuf),
}

/// The reactor's answer to a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub ok: bool,
    /// For `PidFileLive`: the live pid.
    pub pid: Option<u32>,
}

/// What the reactor must do. Perform them in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Spawn `spec.argv` in `spec.work_dir` with `spec.env` added, in a new
    /// process group, stdout and stderr piped (feed them to `on_output`),
    /// stdin from /dev/null; then call `on_spawned(name, pid)` or
    /// `on_spawn_failed(name, error)`.
    Spawn {
        spec: Box<InstanceSpec>,
    },
    /// Run a hook (`spec.command` with `spec.env` in `spec.work_dir`, its
    /// own process group); report its end with `on_hook_exit(run, ok,
    /// detail)`. The timeout is armed here as a timer, not by the reactor.
    RunHook {
        run: RunId,
        instance: String,
        hook: HookKind,
        spec: HookSpec,
    },
    /// Kill that hook's process group (SIGKILL); no report expected.
    KillHook {
        run: RunId,
    },
    /// Check something; report with `on_probe(run, outcome)`.
    Probe {
        run: RunId,
        instance: String,
        role: ProbeRole,
        check: Check,
    },
    /// Kill that probe command (if it is one); no report expected.
    KillProbe {
        run: RunId,
    },
    /// `kill(-pid)` when `group` (the process group weaver made), else
    /// `kill(pid)` (a detached process).
    Signal {
        instance: String,
        pid: u32,
        group: bool,
        signal: Signal,
    },
    ArmTimer {
        key: TimerKey,
        at: Instant,
    },
    /// Optional to honour: a stale key is ignored by `on_timer` anyway.
    CancelTimer {
        key: TimerKey,
    },
    /// Write `pid` (and its start time) to `path` (`pidfile::write`).
    WritePidFile {
        path: PathBuf,
        pid: u32,
    },
    RemovePidFile {
        path: PathBuf,
    },
    /// Publish to the event broadcaster; `Output` events also go to the
    /// instance's output file when it has one.
    Emit {
        instance: String,
        kind: EventKind,
    },
}

/// How a dependency stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Satisfied {
    Yes,
    NotYet,
    /// It cannot come true without someone starting it again.
    Never(String),
}

/// Requests and observations, fed to [`Instance::step`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Start now (what it waits for is satisfied). Resets the counters.
    Start,
    /// Start once what it waits for is satisfied (the supervisor checks).
    Queue,
    /// What it waits for can no longer happen.
    DependencyFailed {
        reason: String,
    },
    Stop,
    /// Stop if up, then start again (with the new spec after a reload).
    Restart,
    Spawned {
        pid: u32,
    },
    SpawnFailed {
        error: String,
    },
    /// The spawned process (or a detached process's launcher) was reaped.
    Exited(Exit),
    Timer(TimerKind),
    HookDone {
        hook: HookKind,
        ok: bool,
        detail: String,
    },
    Probe {
        role: ProbeRole,
        outcome: ProbeOutcome,
    },
    /// A line of output contained the ready `log_pattern`.
    LogMatched,
    /// A detached process found alive when weaver starts (a previous
    /// weaver started it): watch it as running instead of starting another.
    Adopt {
        pid: u32,
    },
}

/// What a stop started by weaver is for: decides what the exit leads to.
#[derive(Debug, Clone, PartialEq)]
enum Intent {
    /// Asked to stop: end `Stopped`.
    Stop,
    /// Asked to restart: start again at once.
    Restart,
    /// Stopped because the start failed (not ready in time, detached pid
    /// never found): retry per retry_count.
    FailStart(String),
    /// Stopped because it failed (a hook with failure_mode = fail).
    Fail(String),
    /// Stopped because it was hung (alive check failed): like a crash.
    Crash(String),
}

/// Where an exit leads, once post_stop (if blocking) is done.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Stopped,
    Down(Exit),
    RestartLater { exit: Exit, delay: Duration, attempt: u32 },
    RestartNow,
    Failed(String),
}

/// What `step` needs from outside: the time, one random number (for
/// backoff jitter), a source of fresh ids, and where actions go.
pub struct Ctx<'a> {
    pub now: Instant,
    pub random: u64,
    pub next_id: &'a mut u64,
    pub out: &'a mut Vec<Action>,
}

impl Ctx<'_> {
    fn id(&mut self) -> u64 {
        let id = *self.next_id;
        *self.next_id += 1;
        id
    }
}

/// `ps` for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsRow {
    pub name: String,
    pub process: String,
    /// "running", "exited(1)", "failed", ...
    pub state: String,
    pub pid: Option<u32>,
    /// Automatic restarts and retries so far.
    pub restarts: u64,
    /// While waiting to restart: how long until it does.
    pub next_restart_in: Option<Duration>,
    /// "exited with code 1", ...
    pub last_exit: Option<String>,
    /// Since the current process was spawned.
    pub uptime: Option<Duration>,
    /// Why it failed, when it has.
    pub reason: Option<String>,
    pub gpus: Option<Vec<u32>>,
}

/// One supervised instance and its bookkeeping.
#[derive(Debug)]
pub struct Instance {
    spec: InstanceSpec,
    /// A reloaded spec, taken up at the next start.
    pending_spec: Option<InstanceSpec>,
    state: State,
    /// The process weaver watches and signals: the child, or for a
    /// detached process the pid from its pid file.
    pid: Option<u32>,
    /// Detached: the spawned launcher, while it runs.
    launcher: Option<u32>,
    started_at: Option<Instant>,
    next_restart_at: Option<Instant>,
    restarts: u64,
    backoff: Backoff,
    /// Failed runs of each hook in a row (failure_mode = retry).
    hook_tries: BTreeMap<HookKind, u32>,
    /// Hooks in flight.
    hooks: BTreeMap<HookKind, RunId>,
    /// The probe in flight.
    probe: Option<(RunId, ProbeRole)>,
    /// Armed timers: kind -> token.
    timers: BTreeMap<TimerKind, u64>,
    intent: Option<Intent>,
    /// Decided outcome waiting for a blocking post_stop hook.
    pending: Option<Outcome>,
    /// A pre_stop hook failed with failure_mode = fail.
    stop_failure: Option<String>,
    /// The log pattern was seen before the process counted as started.
    ready_seen: bool,
    last_exit: Option<Exit>,
    /// Why the last start attempt did not spawn.
    last_error: Option<String>,
    ring: Ring,
    lines: [LineAssembler; STREAMS],
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Instance {
    pub fn new(spec: InstanceSpec) -> Instance {
        let ring = Ring::new(spec.output.ring_bytes);
        Instance {
            spec,
            pending_spec: None,
            state: State::Stopped,
            pid: None,
            launcher: None,
            started_at: None,
            next_restart_at: None,
            restarts: 0,
            backoff: Backoff::default(),
            hook_tries: BTreeMap::new(),
            hooks: BTreeMap::new(),
            probe: None,
            timers: BTreeMap::new(),
            intent: None,
            pending: None,
            stop_failure: None,
            ready_seen: false,
            last_exit: None,
            last_error: None,
            ring,
            lines: [LineAssembler::default(), LineAssembler::default()],
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    #[cfg(test)]
    fn restarts(&self) -> u64 {
        self.restarts
    }

    #[cfg(test)]
    fn next_restart_at(&self) -> Option<Instant> {
        self.next_restart_at
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Whether `pid` is this instance's process or launcher.
    pub fn owns_pid(&self, pid: u32) -> bool {
        self.launcher == Some(pid) || (!self.spec.detached && self.pid == Some(pid))
    }

    /// The hook a run id belongs to, if it is in flight here.
    pub fn hook_of(&self, run: RunId) -> Option<HookKind> {
        self.hooks.iter().find(|(_, &r)| r == run).map(|(&h, _)| h)
    }

    /// The probe a run id belongs to, if it is in flight here.
    pub fn probe_of(&self, run: RunId) -> Option<ProbeRole> {
        self.probe.filter(|&(r, _)| r == run).map(|(_, role)| role)
    }

    /// Whether the timer is the armed one; disarms it if so.
    pub fn take_timer(&mut self, key: &TimerKey) -> bool {
        if self.timers.get(&key.kind) == Some(&key.token) {
            self.timers.remove(&key.kind);
            true
        } else {
            false
        }
    }

    /// Nothing runs and nothing is pending: safe to forget.
    pub fn is_down(&self) -> bool {
        !self.state.is_up() && self.hooks.is_empty() && self.next_restart_at.is_none()
    }

    /// Take a reloaded spec: at once when nothing runs, else at the next
    /// start.
    pub fn set_spec(&mut self, spec: InstanceSpec) {
        if self.state.is_up() || self.state == State::Waiting {
            self.pending_spec = Some(spec);
        } else {
            self.ring.set_capacity(spec.output.ring_bytes);
            self.spec = spec;
        }
    }

    /// How this instance stands for something that waits for it.
    pub fn satisfies(&self, cond: Condition) -> Satisfied {
        let name = &self.spec.name;
        let no_probe = self.spec.ready.is_none();
        match (&self.state, cond) {
            (State::Running, Condition::Started) | (State::Ready, Condition::Started) => {
                Satisfied::Yes
            }
            (State::Ready, Condition::Ready) => Satisfied::Yes,
            (State::Running, Condition::Ready) if no_probe => Satisfied::Yes,
            (State::Exited { code: Some(0) }, _) if self.next_restart_at.is_none() => {
                Satisfied::Yes
            }
            (State::Failed { reason }, _) => Satisfied::Never(format!("{name} failed: {reason}")),
            (State::Exited { .. } | State::Killed { .. }, _) if self.next_restart_at.is_none() => {
                let how = self.last_exit.map_or_else(|| "ended".into(), Exit::describe);
                Satisfied::Never(format!("{name} {how}"))
            }
            _ => Satisfied::NotYet,
        }
    }

    /// Add a chunk of output. Returns the lines' events and whether a line
    /// held the ready log pattern.
    pub fn output(&mut self, stream: Stream, chunk: &[u8], time_ms: u64) -> (Vec<Action>, bool) {
        let pieces = self.lines[stream_index(stream)].feed(chunk);
        self.record(stream, pieces, time_ms)
    }

    /// The pipe closed: flush a partial line.
    pub fn output_eof(&mut self, stream: Stream, time_ms: u64) -> (Vec<Action>, bool) {
        let pieces: Vec<_> = self.lines[stream_index(stream)].finish().into_iter().collect();
        self.record(stream, pieces, time_ms)
    }

    fn record(
        &mut self,
        stream: Stream,
        pieces: Vec<super::ring::Piece>,
        time_ms: u64,
    ) -> (Vec<Action>, bool) {
        let pattern = match &self.spec.ready {
            Some(p) => match &p.check {
                ReadyCheck::LogPattern(s) => Some(s.as_bytes()),
                _ => None,
            },
            None => None,
        };
        let mut matched = false;
        let mut out = Vec::with_capacity(pieces.len());
        for piece in pieces {
            if let Some(pat) = pattern {
                matched |= piece.bytes.windows(pat.len()).any(|w| w == pat);
            }
            let seq = self.ring.push(stream, time_ms, piece.bytes.clone(), piece.cut);
            out.push(Action::Emit {
                instance: self.spec.name.clone(),
                kind: EventKind::Output { stream, seq, bytes: piece.bytes },
            });
        }
        (out, matched)
    }

    pub fn ps(&self, now: Instant) -> PsRow {
        PsRow {
            name: self.spec.name.clone(),
            process: self.spec.process.clone(),
            state: self.state.label(),
            pid: if self.state.is_up() { self.pid.or(self.launcher) } else { None },
            restarts: self.restarts,
            next_restart_in: self.next_restart_at.map(|t| t.saturating_duration_since(now)),
            last_exit: self.last_exit.map(Exit::describe),
            uptime: match (self.state.is_up(), self.started_at) {
                (true, Some(t)) => Some(now.saturating_duration_since(t)),
                _ => None,
            },
            reason: match &self.state {
                State::Failed { reason } => Some(reason.clone()),
                _ => self.last_error.clone(),
            },
            gpus: self.spec.gpus.clone(),
        }
    }

    // ------------------------------------------------------------ the table

    /// Apply one input; actions go to `cx.out`.
    pub fn step(&mut self, input: Input, cx: &mut Ctx) {
        use StartPhase as Sp;
        use State as S;
        use StopPhase as Tp;
        match (&self.state, input) {
            // requests
            (
                S::Waiting | S::Stopped | S::Exited { .. } | S::Killed { .. } | S::Failed { .. },
                Input::Start,
            ) => {
                self.backoff.reset();
                self.hook_tries.clear();
                self.begin_start(cx)
            }
            (S::Stopped | S::Exited { .. } | S::Killed { .. } | S::Failed { .. }, Input::Queue) => {
                self.queue(cx)
            }
            (S::Waiting, Input::DependencyFailed { reason }) => {
                self.fail(format!("cannot start: {reason}"), cx)
            }
            (S::Stopping(Tp::PostStop), Input::Start | Input::Restart) => {
                self.pending = Some(Outcome::RestartNow)
            }
            (S::Stopping(Tp::PostStop), Input::Stop) => self.pending = Some(Outcome::Stopped),
            (S::Stopping(_), Input::Start | Input::Restart) => self.intent = Some(Intent::Restart),
            (S::Waiting, Input::Stop) => self.become_stopped(cx),
            (S::Exited { .. } | S::Killed { .. }, Input::Stop) => self.become_stopped(cx),
            (S::Starting(Sp::PreStart), Input::Stop) => self.abandon_start(cx),
            (S::Starting(Sp::Spawning), Input::Stop) => self.intent = Some(Intent::Stop),
            (S::Starting(Sp::Spawning), Input::Restart) => self.intent = Some(Intent::Restart),
            (S::Starting(Sp::Up | Sp::PostStart) | S::Running | S::Ready, Input::Stop) => {
                self.begin_stop(Intent::Stop, cx)
            }
            (S::Starting(Sp::Up | Sp::PostStart) | S::Running | S::Ready, Input::Restart) => {
                self.begin_stop(Intent::Restart, cx)
            }
            (S::Stopping(_), Input::Stop) => self.intent = Some(Intent::Stop),
            (
                S::Stopped | S::Exited { .. } | S::Killed { .. } | S::Failed { .. },
                Input::Restart,
            ) => {
                self.backoff.reset();
                self.hook_tries.clear();
                self.begin_start(cx)
            }
            (S::Starting(Sp::PreStart), Input::Restart) => {
                self.abandon_start(cx);
                self.begin_start(cx)
            }

            (S::Stopped | S::Waiting, Input::Adopt { pid }) if self.spec.detached => {
                self.adopt(pid, cx)
            }

            // spawning
            (S::Starting(Sp::Spawning), Input::Spawned { pid }) => self.spawned(pid, cx),
            (S::Starting(Sp::Spawning), Input::SpawnFailed { error }) => {
                self.spawn_failed(error, cx)
            }
            (S::Starting(Sp::Up), Input::Timer(TimerKind::StartDuration)) => {
                self.start_duration_passed(cx)
            }

            // exits
            (_, Input::Exited(exit)) if self.spec.detached => self.launcher_exited(exit, cx),
            (S::Starting(Sp::Up | Sp::PostStart), Input::Exited(exit)) => {
                self.exited_early(exit, cx)
            }
            (S::Running | S::Ready, Input::Exited(exit)) => self.run_ended(exit, cx),
            (S::Stopping(Tp::PreStop | Tp::Signalled | Tp::Killed), Input::Exited(exit)) => {
                self.stopped_exit(exit, cx)
            }
            (S::Stopping(Tp::Signalled), Input::Timer(TimerKind::StopTimeout)) => self.kill(cx),

            // restarts
            (S::Exited { .. } | S::Killed { .. }, Input::Timer(TimerKind::Restart)) => {
                self.restart_due(cx)
            }

            // hooks
            (_, Input::HookDone { hook, ok, detail }) => self.hook_done(hook, ok, detail, cx),
            (_, Input::Timer(TimerKind::Hook(hook))) => self.hook_timed_out(hook, cx),
            (_, Input::Timer(TimerKind::HookRetry(hook))) => self.hook_retry_due(hook, cx),

            // probes
            (S::Running, Input::Timer(TimerKind::ReadyProbe)) => self.probe_ready(cx),
            (S::Running, Input::Timer(TimerKind::ReadyTimeout)) => self.not_ready(cx),
            (S::Running, Input::Probe { role: ProbeRole::Ready, outcome }) => {
                self.ready_result(outcome.ok, cx)
            }
            (S::Running, Input::LogMatched) => self.become_ready(cx),
            (S::Starting(_), Input::LogMatched) => self.ready_seen = true,
            (
                S::Starting(_) | S::Running | S::Ready | S::Stopping(_),
                Input::Timer(TimerKind::Alive),
            ) => self.probe_alive(cx),
            (
                S::Starting(_) | S::Running | S::Ready | S::Stopping(_),
                Input::Probe { role: ProbeRole::Alive, outcome },
            ) => self.alive_result(outcome, cx),
            (_, Input::Timer(TimerKind::ProbeDeadline)) => self.probe_overdue(cx),

            // Ignored: every other pair, one group per reason. Each asks for
            // what already holds or answers something that is over.

            // Start: already up or on its way up.
            (S::Starting(_) | S::Running | S::Ready, Input::Start) => {}
            // Queue: already queued, up, or stopping (the supervisor queues
            // the start again for once the stop is over).
            (
                S::Waiting | S::Starting(_) | S::Running | S::Ready | S::Stopping(_),
                Input::Queue,
            ) => {}
            // DependencyFailed: no longer waiting, so the news is moot.
            (
                S::Stopped
                | S::Starting(_)
                | S::Running
                | S::Ready
                | S::Stopping(_)
                | S::Exited { .. }
                | S::Killed { .. }
                | S::Failed { .. },
                Input::DependencyFailed { .. },
            ) => {}
            // Stop: already down.
            (S::Stopped | S::Failed { .. }, Input::Stop) => {}
            // Restart: already about to start.
            (S::Waiting, Input::Restart) => {}
            // Adopt: only a detached instance that is stopped or waiting is
            // adopted; this one is not detached ...
            (S::Stopped | S::Waiting, Input::Adopt { .. }) => {}
            // ... or already has a process, or had one.
            (
                S::Starting(_)
                | S::Running
                | S::Ready
                | S::Stopping(_)
                | S::Exited { .. }
                | S::Killed { .. }
                | S::Failed { .. },
                Input::Adopt { .. },
            ) => {}
            // Spawned, SpawnFailed: no spawn outstanding, a late answer.
            (
                S::Stopped
                | S::Waiting
                | S::Starting(Sp::PreStart | Sp::Up | Sp::PostStart)
                | S::Running
                | S::Ready
                | S::Stopping(_)
                | S::Exited { .. }
                | S::Killed { .. }
                | S::Failed { .. },
                Input::Spawned { .. } | Input::SpawnFailed { .. },
            ) => {}
            // Exited (not detached): no process of its own runs, a stale pid.
            (
                S::Stopped
                | S::Waiting
                | S::Starting(Sp::PreStart | Sp::Spawning)
                | S::Stopping(Tp::PostStop)
                | S::Exited { .. }
                | S::Killed { .. }
                | S::Failed { .. },
                Input::Exited(_),
            ) => {}
            // Timers of a phase that is over: start_duration once started
            // (or stopping), stop_timeout once killed or gone, restart once
            // started again or stopped.
            (
                S::Stopped
                | S::Waiting
                | S::Starting(Sp::PreStart | Sp::Spawning | Sp::PostStart)
                | S::Running
                | S::Ready
                | S::Stopping(_)
                | S::Exited { .. }
                | S::Killed { .. }
                | S::Failed { .. },
                Input::Timer(TimerKind::StartDuration),
            ) => {}
            (
                S::Stopped
                | S::Waiting
                | S::Starting(_)
                | S::Running
                | S::Ready
                | S::Stopping(Tp::PreStop | Tp::Killed | Tp::PostStop)
                | S::Exited { .. }
                | S::Killed { .. }
                | S::Failed { .. },
                Input::Timer(TimerKind::StopTimeout),
            ) => {}
            (
                S::Stopped
                | S::Waiting
                | S::Starting(_)
                | S::Running
                | S::Ready
                | S::Stopping(_)
                | S::Failed { .. },
                Input::Timer(TimerKind::Restart),
            ) => {}
            // Readiness is looked for only while running: ready already, or
            // no longer running.
            (
                S::Stopped
                | S::Waiting
                | S::Starting(_)
                | S::Ready
                | S::Stopping(_)
                | S::Exited { .. }
                | S::Killed { .. }
                | S::Failed { .. },
                Input::Timer(TimerKind::ReadyProbe | TimerKind::ReadyTimeout)
                | Input::Probe { role: ProbeRole::Ready, .. },
            ) => {}
            // LogMatched: ready already, or no process of its own runs.
            (
                S::Stopped
                | S::Waiting
                | S::Ready
                | S::Stopping(_)
                | S::Exited { .. }
                | S::Killed { .. }
                | S::Failed { .. },
                Input::LogMatched,
            ) => {}
            // Alive checks: nothing up to watch.
            (
                S::Stopped | S::Waiting | S::Exited { .. } | S::Killed { .. } | S::Failed { .. },
                Input::Timer(TimerKind::Alive) | Input::Probe { role: ProbeRole::Alive, .. },
            ) => {}
        }
    }

    // ------------------------------------------------------------ helpers

    fn emit(&self, kind: EventKind, cx: &mut Ctx) {
        cx.out.push(Action::Emit { instance: self.spec.name.clone(), kind });
    }

    fn arm(&mut self, kind: TimerKind, after: Duration, cx: &mut Ctx) {
        self.cancel(kind, cx);
        let token = cx.id();
        self.timers.insert(kind, token);
        let key = TimerKey { instance: self.spec.name.clone(), kind, token };
        cx.out.push(Action::ArmTimer { key, at: cx.now + after });
    }

    fn cancel(&mut self, kind: TimerKind, cx: &mut Ctx) {
        if let Some(token) = self.timers.remove(&kind) {
            let key = TimerKey { instance: self.spec.name.clone(), kind, token };
            cx.out.push(Action::CancelTimer { key });
        }
    }

    /// Cancel the timers that belong to a live process.
    fn cancel_run_timers(&mut self, cx: &mut Ctx) {
        for kind in [
            TimerKind::StartDuration,
            TimerKind::StopTimeout,
            TimerKind::ReadyProbe,
            TimerKind::ReadyTimeout,
            TimerKind::Alive,
        ] {
            self.cancel(kind, cx);
        }
        self.kill_probe(cx);
    }

    fn kill_probe(&mut self, cx: &mut Ctx) {
        if let Some((run, _)) = self.probe.take() {
            cx.out.push(Action::KillProbe { run });
        }
        self.cancel(TimerKind::ProbeDeadline, cx);
    }

    fn kill_hook(&mut self, hook: HookKind, cx: &mut Ctx) {
        if let Some(run) = self.hooks.remove(&hook) {
            cx.out.push(Action::KillHook { run });
        }
        self.cancel(TimerKind::Hook(hook), cx);
        self.cancel(TimerKind::HookRetry(hook), cx);
    }

    /// Start `hook` if configured; returns whether the caller must wait
    /// for it (blocking).
    fn run_hook(&mut self, hook: HookKind, cx: &mut Ctx) -> bool {
        let Some(spec) = self.spec.hooks.get(hook).cloned() else { return false };
        self.kill_hook(hook, cx);
        let run = cx.id();
        self.hooks.insert(hook, run);
        self.arm(TimerKind::Hook(hook), spec.timeout, cx);
        let blocking = spec.run_mode == RunMode::Blocking;
        cx.out.push(Action::RunHook { run, instance: self.spec.name.clone(), hook, spec });
        blocking
    }

    fn probe_check(&self, role: ProbeRole) -> Option<(Check, Duration)> {
        let command = |argv: &Vec<String>| Check::Command {
            argv: argv.clone(),
            env: self.spec.env.clone(),
            work_dir: self.spec.work_dir.clone(),
        };
        match role {
            ProbeRole::Ready => {
                let p = self.spec.ready.as_ref()?;
                let check = match &p.check {
                    ReadyCheck::Command(argv) => command(argv),
                    ReadyCheck::PidFile(path) => Check::FileExists(path.clone()),
                    ReadyCheck::LogPattern(_) => return None,
                };
                Some((check, p.interval))
            }
            ProbeRole::Alive => {
                let a = self.spec.alive.as_ref()?;
                let check = match &a.check {
                    AliveCheck::PidFile(path) => Check::PidFileLive(path.clone()),
                    AliveCheck::Command(argv) => command(argv),
                };
                Some((check, a.interval))
            }
        }
    }

    fn launch_probe(&mut self, role: ProbeRole, cx: &mut Ctx) {
        let Some((check, interval)) = self.probe_check(role) else { return };
        self.kill_probe(cx);
        let run = cx.id();
        self.probe = Some((run, role));
        if matches!(check, Check::Command { .. }) {
            self.arm(
                TimerKind::ProbeDeadline,
                (interval * PROBE_DEADLINE_INTERVALS).max(PROBE_DEADLINE),
                cx,
            );
        }
        cx.out.push(Action::Probe { run, instance: self.spec.name.clone(), role, check });
    }

    // ------------------------------------------------------------ starting

    fn queue(&mut self, cx: &mut Ctx) {
        self.cancel(TimerKind::Restart, cx);
        self.next_restart_at = None;
        self.state = State::Waiting;
    }

    fn begin_start(&mut self, cx: &mut Ctx) {
        self.cancel(TimerKind::Restart, cx);
        self.next_restart_at = None;
        self.intent = None;
        self.pending = None;
        self.stop_failure = None;
        if let Some(spec) = self.pending_spec.take() {
            self.ring.set_capacity(spec.output.ring_bytes);
            self.spec = spec;
        }
        if self.run_hook(HookKind::PreStart, cx) {
            self.state = State::Starting(StartPhase::PreStart);
        } else {
            self.spawn(cx);
        }
    }

    fn spawn(&mut self, cx: &mut Ctx) {
        self.state = State::Starting(StartPhase::Spawning);
        cx.out.push(Action::Spawn { spec: Box::new(self.spec.clone()) });
    }

    /// Stop during a blocking pre_start: nothing was spawned.
    fn abandon_start(&mut self, cx: &mut Ctx) {
        self.kill_hook(HookKind::PreStart, cx);
        self.become_stopped(cx);
    }

    fn spawned(&mut self, pid: u32, cx: &mut Ctx) {
        self.started_at = Some(cx.now);
        self.ready_seen = false;
        self.state = State::Starting(StartPhase::Up);
        // start_duration = 0: started the moment it is spawned, so that an
        // exit reaped before a zero timer fires is still a run that ended.
        let at_once = self.spec.start.start_duration.is_zero() && !self.spec.detached;
        if !at_once {
            self.arm(TimerKind::StartDuration, self.spec.start.start_duration, cx);
        }
        self.last_error = None;
        if self.spec.detached {
            self.launcher = Some(pid);
            self.pid = None;
            // Look for it while the launcher runs, too.
            let interval = self.spec.alive.as_ref().map_or(START_POLL, |a| a.interval);
            self.arm(TimerKind::Alive, interval.min(START_POLL), cx);
        } else {
            self.pid = Some(pid);
            self.emit(EventKind::Started { pid }, cx);
            if let Some(path) = &self.spec.pid_file {
                cx.out.push(Action::WritePidFile { path: path.clone(), pid });
            }
        }
        match self.intent.take() {
            Some(Intent::Stop) => self.begin_stop(Intent::Stop, cx),
            Some(Intent::Restart) => self.begin_stop(Intent::Restart, cx),
            // Nothing was asked for while spawning: started at once, or
            // when the start_duration timer armed above fires.
            _ if at_once => self.start_duration_passed(cx),
            _ => {}
        }
    }

    /// A detached process already running: it counts as started.
    fn adopt(&mut self, pid: u32, cx: &mut Ctx) {
        self.started_at = Some(cx.now);
        self.pid = Some(pid);
        self.launcher = None;
        self.last_error = None;
        self.backoff.started();
        self.emit(EventKind::Started { pid }, cx);
        self.become_running(cx);
        let interval = self.spec.alive.as_ref().map_or(START_POLL, |a| a.interval);
        self.arm(TimerKind::Alive, interval, cx);
    }

    fn spawn_failed(&mut self, error: String, cx: &mut Ctx) {
        let why = format!("cannot spawn {}: {error}", self.spec.argv[0]);
        self.last_error = Some(why.clone());
        self.emit(EventKind::Warning { message: why.clone() }, cx);
        if self.intent.take() == Some(Intent::Stop) {
            return self.become_stopped(cx);
        }
        let outcome = self.start_failure(&why);
        self.apply(outcome, cx);
    }

    fn start_duration_passed(&mut self, cx: &mut Ctx) {
        if self.spec.detached && self.pid.is_none() {
            let reason = match &self.spec.alive {
                Some(a) => match &a.check {
                    AliveCheck::PidFile(p) => format!(
                        "no live pid in {} {} after spawning",
                        p.display(),
                        human(self.spec.start.start_duration)
                    ),
                    AliveCheck::Command(_) => format!(
                        "alive check not passing {} after spawning",
                        human(self.spec.start.start_duration)
                    ),
                },
                None => "no way to find the detached process".into(),
            };
            return self.begin_stop(Intent::FailStart(reason), cx);
        }
        self.backoff.started();
        if self.run_hook(HookKind::PostStart, cx) {
            self.state = State::Starting(StartPhase::PostStart);
        } else {
            self.become_running(cx);
        }
    }

    fn become_running(&mut self, cx: &mut Ctx) {
        self.state = State::Running;
        self.emit(EventKind::Running, cx);
        if let Some(p) = &self.spec.ready {
            let (timeout, by_log) = (p.timeout, matches!(p.check, ReadyCheck::LogPattern(_)));
            self.arm(TimerKind::ReadyTimeout, timeout, cx);
            if by_log {
                if self.ready_seen {
                    self.become_ready(cx);
                }
            } else {
                self.launch_probe(ProbeRole::Ready, cx);
            }
        }
        if self.spec.alive.is_some() && !self.spec.detached {
            let interval = self.spec.alive.as_ref().map_or(Duration::ZERO, |a| a.interval);
            self.arm(TimerKind::Alive, interval, cx);
        }
    }

    fn become_ready(&mut self, cx: &mut Ctx) {
        self.cancel(TimerKind::ReadyTimeout, cx);
        self.cancel(TimerKind::ReadyProbe, cx);
        if self.probe.is_some_and(|(_, role)| role == ProbeRole::Ready) {
            self.kill_probe(cx);
        }
        self.state = State::Ready;
        self.emit(EventKind::Ready, cx);
    }

    // ------------------------------------------------------------ probes

    fn probe_ready(&mut self, cx: &mut Ctx) {
        self.launch_probe(ProbeRole::Ready, cx);
    }

    fn ready_result(&mut self, ok: bool, cx: &mut Ctx) {
        self.probe = None;
        self.cancel(TimerKind::ProbeDeadline, cx);
        if ok {
            self.become_ready(cx);
        } else if let Some(p) = &self.spec.ready {
            let interval = p.interval;
            self.arm(TimerKind::ReadyProbe, interval, cx);
        }
    }

    fn not_ready(&mut self, cx: &mut Ctx) {
        let timeout = self.spec.ready.as_ref().map_or(Duration::ZERO, |p| p.timeout);
        self.begin_stop(Intent::FailStart(format!("not ready after {}", human(timeout))), cx);
    }

    fn probe_alive(&mut self, cx: &mut Ctx) {
        self.launch_probe(ProbeRole::Alive, cx);
    }

    fn alive_result(&mut self, outcome: ProbeOutcome, cx: &mut Ctx) {
        if self.probe.is_some_and(|(_, role)| role == ProbeRole::Alive) {
            self.probe = None;
            self.cancel(TimerKind::ProbeDeadline, cx);
        }
        let interval =
            self.spec.alive.as_ref().map_or(AliveDetector::DEFAULT_INTERVAL, |a| a.interval);
        if !self.spec.detached {
            if outcome.ok {
                self.arm(TimerKind::Alive, interval, cx);
            } else if matches!(self.state, State::Running | State::Ready) {
                self.begin_stop(Intent::Crash("alive check failed".into()), cx);
            }
            return;
        }
        // Detached: the alive check is how it is found and how its end is seen.
        let stopping = matches!(self.state, State::Stopping(_));
        match (outcome.ok.then_some(outcome.pid).flatten(), self.pid) {
            (Some(pid), known) => {
                if known.is_none() {
                    self.pid = Some(pid);
                    self.emit(EventKind::Started { pid }, cx);
                }
                let next = if stopping { STOP_POLL } else { interval };
                self.arm(TimerKind::Alive, next, cx);
            }
            (None, Some(_)) => self.detached_gone(cx),
            (None, None) if stopping && self.launcher.is_none() => self.detached_gone(cx),
            (None, None) => {
                let next = if stopping { STOP_POLL } else { interval.min(START_POLL) };
                self.arm(TimerKind::Alive, next, cx);
            }
        }
    }

    /// A detached process is no longer there: its exit, without a status.
    fn detached_gone(&mut self, cx: &mut Ctx) {
        use StopPhase as Tp;
        self.pid = None;
        let exit = Exit::Vanished;
        match self.state {
            State::Starting(StartPhase::Up | StartPhase::PostStart) => self.exited_early(exit, cx),
            State::Running | State::Ready => self.run_ended(exit, cx),
            State::Stopping(Tp::PreStop | Tp::Signalled | Tp::Killed) => {
                self.stopped_exit(exit, cx)
            }
            // No run to end: never found, or its end was already handled.
            State::Stopped
            | State::Waiting
            | State::Starting(StartPhase::PreStart | StartPhase::Spawning)
            | State::Stopping(Tp::PostStop)
            | State::Exited { .. }
            | State::Killed { .. }
            | State::Failed { .. } => {}
        }
    }

    fn probe_overdue(&mut self, cx: &mut Ctx) {
        let Some((run, role)) = self.probe else { return };
        cx.out.push(Action::KillProbe { run });
        self.probe = None;
        let outcome = ProbeOutcome { ok: false, pid: None };
        self.step(Input::Probe { role, outcome }, cx);
    }

    // ------------------------------------------------------------ exits

    /// A detached process's launcher was reaped (any exit of a detached
    /// instance's child is its launcher's).
    fn launcher_exited(&mut self, exit: Exit, cx: &mut Ctx) {
        if self.launcher.take().is_none() {
            return;
        }
        let starting = self.state == State::Starting(StartPhase::Up);
        let stopping = matches!(
            self.state,
            State::Stopping(StopPhase::PreStop | StopPhase::Signalled | StopPhase::Killed)
        );
        if stopping && self.pid.is_none() {
            // It was stopped before its pid was found: nothing else to wait for.
            return self.detached_gone(cx);
        }
        if exit.success() || !starting || self.pid.is_some() {
            if !exit.success() {
                let message = format!("the launcher {}", exit.describe());
                self.emit(EventKind::Warning { message }, cx);
            }
            if self.state.is_up() && self.pid.is_none() && self.probe.is_none() {
                self.launch_probe(ProbeRole::Alive, cx);
            }
            return;
        }
        self.last_exit = Some(exit);
        self.cancel_run_timers(cx);
        let why = format!("the launcher {}", exit.describe());
        self.emit(exit.event(), cx);
        let outcome = self.start_failure(&why);
        self.finish(outcome, cx);
    }

    fn ran_for(&self, now: Instant) -> Duration {
        self.started_at.map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    fn process_gone(&mut self, exit: Exit, cx: &mut Ctx) {
        self.last_exit = Some(exit);
        self.pid = None;
        self.cancel_run_timers(cx);
        for hook in [HookKind::PreStart, HookKind::PostStart, HookKind::PreStop] {
            self.kill_hook(hook, cx);
        }
        self.emit(exit.event(), cx);
    }

    /// Exited before it counted as started.
    fn exited_early(&mut self, exit: Exit, cx: &mut Ctx) {
        let ran = self.ran_for(cx.now);
        self.process_gone(exit, cx);
        let why = format!("{} after {}", exit.describe(), human(ran));
        let outcome = self.start_failure(&why);
        self.finish(outcome, cx);
    }

    /// A run that had started ended on its own.
    fn run_ended(&mut self, exit: Exit, cx: &mut Ctx) {
        let ran = self.ran_for(cx.now);
        self.process_gone(exit, cx);
        let outcome = self.run_outcome(exit, ran, &exit.describe(), cx.random);
        self.finish(outcome, cx);
    }

    fn run_outcome(&mut self, exit: Exit, ran: Duration, how: &str, random: u64) -> Outcome {
        match self.backoff.run_ended(&self.spec.restart, ran, how, random) {
            Verdict::Restart { delay, attempt } => Outcome::RestartLater { exit, delay, attempt },
            Verdict::Stay => Outcome::Down(exit),
            Verdict::GiveUp { reason } => Outcome::Failed(reason),
        }
    }

    fn start_failure(&mut self, why: &str) -> Outcome {
        match self.backoff.start_failed(&self.spec.start, why) {
            Verdict::Restart { delay, attempt } => {
                let exit = self.last_exit.unwrap_or(Exit::Vanished);
                Outcome::RestartLater { exit, delay, attempt }
            }
            Verdict::Stay => Outcome::Stopped,
            Verdict::GiveUp { reason } => Outcome::Failed(reason),
        }
    }

    /// The exit of a stop weaver started: the intent decides.
    fn stopped_exit(&mut self, exit: Exit, cx: &mut Ctx) {
        let ran = self.ran_for(cx.now);
        self.process_gone(exit, cx);
        let outcome = match self.intent.take().unwrap_or(Intent::Stop) {
            Intent::Stop => match self.stop_failure.take() {
                Some(reason) => Outcome::Failed(reason),
                None => Outcome::Stopped,
            },
            Intent::Restart => Outcome::RestartNow,
            Intent::Fail(reason) => Outcome::Failed(reason),
            Intent::FailStart(why) => self.start_failure(&why),
            Intent::Crash(why) => self.run_outcome(exit, ran, &why, cx.random),
        };
        self.finish(outcome, cx);
    }

    /// After an exit: remove the pid file, run post_stop, then apply.
    fn finish(&mut self, outcome: Outcome, cx: &mut Ctx) {
        self.launcher = None;
        if let (false, Some(path)) = (self.spec.detached, &self.spec.pid_file) {
            cx.out.push(Action::RemovePidFile { path: path.clone() });
        }
        if self.run_hook(HookKind::PostStop, cx) {
            self.state = State::Stopping(StopPhase::PostStop);
            self.pending = Some(outcome);
        } else {
            self.apply(outcome, cx);
        }
    }

    fn apply(&mut self, outcome: Outcome, cx: &mut Ctx) {
        match outcome {
            Outcome::Stopped => self.become_stopped(cx),
            Outcome::Down(exit) => self.state = State::of_exit(exit),
            Outcome::RestartLater { exit, delay, attempt } => {
                self.state = State::of_exit(exit);
                self.next_restart_at = Some(cx.now + delay);
                self.arm(TimerKind::Restart, delay, cx);
                let delay_ms = delay.as_millis() as u64;
                self.emit(EventKind::Restarting { delay_ms, attempt }, cx);
            }
            Outcome::RestartNow => {
                self.backoff.reset();
                self.hook_tries.clear();
                self.begin_start(cx);
            }
            Outcome::Failed(reason) => self.fail(reason, cx),
        }
    }

    fn become_stopped(&mut self, cx: &mut Ctx) {
        self.cancel(TimerKind::Restart, cx);
        self.next_restart_at = None;
        self.state = State::Stopped;
        self.emit(EventKind::Stopped, cx);
    }

    fn fail(&mut self, reason: String, cx: &mut Ctx) {
        self.cancel(TimerKind::Restart, cx);
        self.next_restart_at = None;
        self.state = State::Failed { reason: reason.clone() };
        self.emit(EventKind::Failed { reason }, cx);
    }

    fn restart_due(&mut self, cx: &mut Ctx) {
        self.next_restart_at = None;
        self.restarts += 1;
        self.begin_start(cx);
    }

    // ------------------------------------------------------------ stopping

    fn begin_stop(&mut self, intent: Intent, cx: &mut Ctx) {
        self.intent = Some(intent);
        self.cancel_run_timers(cx);
        for hook in [HookKind::PreStart, HookKind::PostStart] {
            self.kill_hook(hook, cx);
        }
        if self.spec.detached {
            // Keep watching: its end is only seen through the alive check.
            self.arm(TimerKind::Alive, Duration::ZERO, cx);
        }
        if self.run_hook(HookKind::PreStop, cx) {
            self.state = State::Stopping(StopPhase::PreStop);
        } else {
            self.send_stop_signal(cx);
        }
    }

    fn send_stop_signal(&mut self, cx: &mut Ctx) {
        self.state = State::Stopping(StopPhase::Signalled);
        self.emit(EventKind::Stopping, cx);
        let sig = self.spec.stop_signal;
        if !self.signal(sig, cx) {
            // Nothing to signal: a detached process never found.
            return self.detached_gone(cx);
        }
        self.arm(TimerKind::StopTimeout, self.spec.stop_timeout, cx);
    }

    /// Signal the process (group) or, for a detached process not yet found,
    /// its launcher. False when there is nothing to signal.
    fn signal(&self, signal: Signal, cx: &mut Ctx) -> bool {
        let instance = self.spec.name.clone();
        let target = match (self.spec.detached, self.pid, self.launcher) {
            (false, Some(pid), _) => (pid, true),
            (true, Some(pid), _) => (pid, false),
            (true, None, Some(launcher)) => (launcher, true),
            _ => return false,
        };
        cx.out.push(Action::Signal { instance, pid: target.0, group: target.1, signal });
        true
    }

    fn kill(&mut self, cx: &mut Ctx) {
        self.state = State::Stopping(StopPhase::Killed);
        let gone = !self.signal(Signal::SIGKILL, cx);
        let name = self.spec.name.clone();
        let message = format!(
            "{name} did not stop within {} of {}; sent SIGKILL",
            human(self.spec.stop_timeout),
            self.spec.stop_signal.as_str()
        );
        self.emit(EventKind::Warning { message }, cx);
        if gone {
            self.detached_gone(cx);
        }
    }

    // ------------------------------------------------------------ hooks

    fn hook_timed_out(&mut self, hook: HookKind, cx: &mut Ctx) {
        let Some(run) = self.hooks.get(&hook).copied() else { return };
        cx.out.push(Action::KillHook { run });
        let timeout = self.spec.hooks.get(hook).map_or(Duration::ZERO, |h| h.timeout);
        // The timer already fired; what is left is the report.
        self.timers.remove(&TimerKind::Hook(hook));
        let detail = format!("timed out after {}", human(timeout));
        self.hook_done(hook, false, detail, cx);
    }

    fn hook_retry_due(&mut self, hook: HookKind, cx: &mut Ctx) {
        let wanted = match hook {
            HookKind::PreStart => {
                self.state == State::Starting(StartPhase::PreStart) || self.state.is_up()
            }
            HookKind::PostStart => {
                self.state == State::Starting(StartPhase::PostStart) || self.state.is_up()
            }
            HookKind::PreStop => matches!(self.state, State::Stopping(_)),
            HookKind::PostStop => true,
        };
        if wanted {
            self.run_hook(hook, cx);
        }
    }

    fn hook_done(&mut self, hook: HookKind, ok: bool, detail: String, cx: &mut Ctx) {
        if self.hooks.remove(&hook).is_none() {
            return;
        }
        self.cancel(TimerKind::Hook(hook), cx);
        self.emit(EventKind::Hook { hook: hook.name(), ok, detail: detail.clone() }, cx);
        let Some(spec) = self.spec.hooks.get(hook) else { return };
        let blocking = spec.run_mode == RunMode::Blocking;
        let verdict = if ok {
            self.hook_tries.remove(&hook);
            HookVerdict::Go
        } else {
            let reason = format!("{} hook failed: {detail}", hook.name());
            match spec.failure_mode {
                FailureMode::Ignore => HookVerdict::Go,
                FailureMode::Fail => HookVerdict::Abort(reason),
                FailureMode::Retry => {
                    let tries = self.hook_tries.entry(hook).or_insert(0);
                    *tries += 1;
                    if *tries <= self.spec.start.retry_count {
                        let interval = self.spec.start.retry_interval;
                        self.arm(TimerKind::HookRetry(hook), interval, cx);
                        HookVerdict::Wait
                    } else {
                        let n = *tries;
                        HookVerdict::Abort(format!("{reason} ({n} attempts)"))
                    }
                }
            }
        };
        let state = self.state.clone();
        match (hook, blocking, &state, verdict) {
            // A retry is armed; nothing moves until it has run.
            (_, _, _, HookVerdict::Wait) => {}
            (HookKind::PreStart, true, State::Starting(StartPhase::PreStart), HookVerdict::Go) => {
                self.spawn(cx)
            }
            (
                HookKind::PreStart,
                true,
                State::Starting(StartPhase::PreStart),
                HookVerdict::Abort(r),
            ) => self.fail(r, cx),
            (
                HookKind::PostStart,
                true,
                State::Starting(StartPhase::PostStart),
                HookVerdict::Go,
            ) => self.become_running(cx),
            // Stopping already: a start hook's result no longer matters.
            (HookKind::PreStart | HookKind::PostStart, _, State::Stopping(_), _) => {}
            (HookKind::PreStart | HookKind::PostStart, _, s, HookVerdict::Abort(r))
                if s.is_up() =>
            {
                self.begin_stop(Intent::Fail(r), cx)
            }
            (HookKind::PreStop, _, s, v) => {
                if let HookVerdict::Abort(r) = v {
                    self.stop_failure = Some(r);
                }
                if blocking && *s == State::Stopping(StopPhase::PreStop) {
                    self.send_stop_signal(cx);
                }
            }
            (HookKind::PostStop, true, State::Stopping(StopPhase::PostStop), v) => {
                let outcome = self.pending.take().unwrap_or(Outcome::Stopped);
                match v {
                    HookVerdict::Abort(r) => self.apply(Outcome::Failed(r), cx),
                    _ => self.apply(outcome, cx),
                }
            }
            // A failure nothing waits for: reported, nothing else.
            (_, _, _, HookVerdict::Abort(message)) => {
                self.emit(EventKind::Warning { message }, cx);
            }
            // A success nothing waits for (an async hook, or a blocking one
            // whose phase is over).
            (_, _, _, HookVerdict::Go) => {}
        }
    }
}

enum HookVerdict {
    Go,
    Wait,
    Abort(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::config::parse;

    const MID: u64 = u64::MAX / 2;

    fn spec(extra: &str) -> InstanceSpec {
        let text = format!("[[process]]\nname = \"p\"\ncommand = [\"prog\"]\n{extra}");
        parse(&text, "t.toml").unwrap().expand().remove(0)
    }

    /// One instance, a clock, and its armed timers.
    struct T {
        inst: Instance,
        t0: Instant,
        now: Instant,
        ids: u64,
        timers: BTreeMap<TimerKind, (Instant, TimerKey)>,
    }

    impl T {
        fn new(extra: &str) -> T {
            let t0 = Instant::now();
            T { inst: Instance::new(spec(extra)), t0, now: t0, ids: 1, timers: BTreeMap::new() }
        }

        fn step(&mut self, input: Input) -> Vec<Action> {
            let mut out = Vec::new();
            let mut cx = Ctx { now: self.now, random: MID, next_id: &mut self.ids, out: &mut out };
            self.inst.step(input, &mut cx);
            for a in &out {
                match a {
                    Action::ArmTimer { key, at } => {
                        self.timers.insert(key.kind, (*at, key.clone()));
                    }
                    Action::CancelTimer { key } => {
                        self.timers.remove(&key.kind);
                    }
                    _ => {}
                }
            }
            out
        }

        /// Move the clock to the next timer and fire it.
        fn fire(&mut self, kind: TimerKind) -> Vec<Action> {
            let (at, key) = self.timers.remove(&kind).unwrap_or_else(|| {
                panic!("{kind:?} is not armed; armed: {:?}", self.timers.keys())
            });
            self.now = self.now.max(at);
            assert!(self.inst.take_timer(&key), "{kind:?} should be live");
            self.step(Input::Timer(kind))
        }

        /// When `kind` is due, relative to the start.
        fn due(&self, kind: TimerKind) -> Option<Duration> {
            self.timers.get(&kind).map(|(at, _)| at.duration_since(self.t0))
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
        }

        fn state(&self) -> State {
            self.inst.state().clone()
        }

        /// Start and spawn as pid 100.
        fn up(&mut self) -> Vec<Action> {
            let mut out = self.step(Input::Start);
            out.extend(self.step(Input::Spawned { pid: 100 }));
            out
        }
    }

    fn events(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit { kind, .. } => Some(match kind {
                    EventKind::Started { pid } => format!("started {pid}"),
                    EventKind::Exited { code } => format!("exited {code}"),
                    EventKind::Killed { signal } => format!("killed {signal}"),
                    EventKind::Restarting { delay_ms, attempt } => {
                        format!("restarting {delay_ms}ms #{attempt}")
                    }
                    EventKind::Failed { reason } => format!("failed: {reason}"),
                    EventKind::Hook { hook, ok, detail } => format!("hook {hook} {ok} {detail}"),
                    EventKind::Warning { message } => format!("warning: {message}"),
                    other => other.name().to_string(),
                }),
                _ => None,
            })
            .collect()
    }

    fn signals(actions: &[Action]) -> Vec<(u32, bool, Signal)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Signal { pid, group, signal, .. } => Some((*pid, *group, *signal)),
                _ => None,
            })
            .collect()
    }

    fn spawns(actions: &[Action]) -> usize {
        actions.iter().filter(|a| matches!(a, Action::Spawn { .. })).count()
    }

    fn hook_runs(actions: &[Action]) -> Vec<(RunId, HookKind)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::RunHook { run, hook, .. } => Some((*run, *hook)),
                _ => None,
            })
            .collect()
    }

    fn probes(actions: &[Action]) -> Vec<(RunId, ProbeRole, Check)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Probe { run, role, check, .. } => Some((*run, *role, check.clone())),
                _ => None,
            })
            .collect()
    }

    const S1: Duration = Duration::from_secs(1);

    #[test]
    fn a_crash_after_starting_restarts_with_backoff_and_a_stable_run_resets_it() {
        let mut t =
            T::new("restart_interval = \"1s\"\nbackoff_jitter = 0.0\nstable_after = \"10s\"");
        let out = t.up();
        assert_eq!(spawns(&out), 1);
        assert_eq!(events(&out), ["started 100"]);
        assert_eq!(t.state(), State::Starting(StartPhase::Up));
        assert_eq!(t.due(TimerKind::StartDuration), Some(S1));
        assert_eq!(events(&t.fire(TimerKind::StartDuration)), ["running"]);
        assert_eq!(t.state(), State::Running);
        assert_eq!(t.inst.satisfies(Condition::Started), Satisfied::Yes);
        assert_eq!(
            t.inst.satisfies(Condition::Ready),
            Satisfied::Yes,
            "no probe: started is ready"
        );

        let mut delays = Vec::new();
        for _ in 0..3 {
            t.advance(S1);
            let out = t.step(Input::Exited(Exit::Code(3)));
            assert_eq!(t.state(), State::Exited { code: Some(3) });
            assert!(t.inst.next_restart_at().is_some());
            assert_eq!(t.inst.satisfies(Condition::Started), Satisfied::NotYet);
            delays.push(events(&out));
            let out = t.fire(TimerKind::Restart);
            assert_eq!(spawns(&out), 1);
            t.step(Input::Spawned { pid: 100 });
            t.fire(TimerKind::StartDuration);
        }
        assert_eq!(
            delays,
            [
                ["exited 3", "restarting 1000ms #1"],
                ["exited 3", "restarting 2000ms #2"],
                ["exited 3", "restarting 4000ms #3"]
            ]
        );
        assert_eq!(t.inst.restarts(), 3);
        // A stable run: back to the first delay.
        t.advance(Duration::from_secs(10));
        let out = t.step(Input::Exited(Exit::Signal(11)));
        assert_eq!(events(&out), ["killed 11", "restarting 1000ms #1"]);
        assert_eq!(t.state().label(), "killed(SIGSEGV)");
    }

    #[test]
    fn an_exit_before_start_duration_is_a_failed_start_retried_then_failed() {
        let mut t = T::new("retry_count = 2\nretry_interval = \"300ms\"\nstart_duration = \"2s\"");
        t.up();
        t.advance(Duration::from_millis(50));
        let out = t.step(Input::Exited(Exit::Code(1)));
        assert_eq!(events(&out), ["exited 1", "restarting 300ms #1"]);
        t.fire(TimerKind::Restart);
        t.step(Input::Spawned { pid: 101 });
        assert_eq!(
            events(&t.step(Input::Exited(Exit::Code(1)))),
            ["exited 1", "restarting 300ms #2"]
        );
        t.fire(TimerKind::Restart);
        let out = t.step(Input::SpawnFailed { error: "No such file or directory".into() });
        assert_eq!(
            events(&out),
            [
                "warning: cannot spawn prog: No such file or directory",
                "failed: failed to start: cannot spawn prog: No such file or directory (3 attempts)"
            ]
        );
        assert!(matches!(t.state(), State::Failed { .. }));
        assert!(t.timers.is_empty(), "nothing left armed: {:?}", t.timers.keys());
        assert!(t.inst.is_down());
        // An explicit start forgives everything.
        t.step(Input::Start);
        t.step(Input::Spawned { pid: 102 });
        assert_eq!(
            events(&t.step(Input::Exited(Exit::Code(1)))),
            ["exited 1", "restarting 300ms #1"]
        );
    }

    #[test]
    fn giving_up_after_max_restarts_fails_with_a_reason() {
        let mut t = T::new("max_restarts = 1\nbackoff_jitter = 0.0\nstart_duration = 0");
        // start_duration = 0: started on spawn, no timer.
        assert_eq!(events(&t.up()), ["started 100", "running"]);
        assert!(t.due(TimerKind::StartDuration).is_none());
        assert_eq!(events(&t.step(Input::Exited(Exit::Code(2))))[1], "restarting 1000ms #1");
        t.fire(TimerKind::Restart);
        t.step(Input::Spawned { pid: 7 });
        let out = t.step(Input::Exited(Exit::Code(2)));
        assert_eq!(
            events(&out),
            [
                "exited 2",
                "failed: exited with code 2; gave up after 1 restarts in a row, none lasting 10s"
            ]
        );
        let row = t.inst.ps(t.now);
        assert_eq!(row.state, "failed");
        assert_eq!(row.restarts, 1);
        assert_eq!(row.last_exit.as_deref(), Some("exited with code 2"));
        assert!(row.reason.unwrap().contains("gave up"));
        assert!(matches!(t.inst.satisfies(Condition::Started), Satisfied::Never(_)));
    }

    #[test]
    fn without_auto_restart_an_exit_stays_and_exit_0_satisfies_exited_ok() {
        let mut t = T::new("auto_restart = false\nstart_duration = 0");
        t.up();
        assert_eq!(t.inst.satisfies(Condition::ExitedOk), Satisfied::NotYet);
        assert_eq!(events(&t.step(Input::Exited(Exit::Code(0)))), ["exited 0"]);
        assert_eq!(t.state(), State::Exited { code: Some(0) });
        assert_eq!(t.inst.satisfies(Condition::ExitedOk), Satisfied::Yes);
        t.step(Input::Start);
        t.step(Input::Spawned { pid: 9 });
        t.step(Input::Exited(Exit::Code(4)));
        assert_eq!(
            t.inst.satisfies(Condition::ExitedOk),
            Satisfied::Never("p exited with code 4".into())
        );
    }

    #[test]
    fn stop_signals_the_group_then_kills_after_the_timeout() {
        let mut t =
            T::new("stop_signal = \"INT\"\nstop_timeout = \"3s\"\npid_file = \"/run/p.pid\"");
        let out = t.up();
        assert!(out.contains(&Action::WritePidFile { path: "/run/p.pid".into(), pid: 100 }));
        t.fire(TimerKind::StartDuration);
        let out = t.step(Input::Stop);
        assert_eq!(signals(&out), [(100, true, Signal::SIGINT)]);
        assert_eq!(events(&out), ["stopping"]);
        assert_eq!(t.due(TimerKind::StopTimeout), Some(Duration::from_secs(4)));
        let out = t.fire(TimerKind::StopTimeout);
        assert_eq!(signals(&out), [(100, true, Signal::SIGKILL)]);
        assert_eq!(t.state(), State::Stopping(StopPhase::Killed));
        let out = t.step(Input::Exited(Exit::Signal(9)));
        assert!(out.contains(&Action::RemovePidFile { path: "/run/p.pid".into() }));
        assert_eq!(events(&out), ["killed 9", "stopped"]);
        assert_eq!(t.state(), State::Stopped);
        assert!(t.timers.is_empty());
    }

    #[test]
    fn a_prompt_exit_after_stop_cancels_the_kill_and_stop_cancels_a_pending_restart() {
        let mut t = T::new("");
        t.up();
        t.step(Input::Stop);
        assert_eq!(events(&t.step(Input::Exited(Exit::Code(0)))), ["exited 0", "stopped"]);
        assert!(t.timers.is_empty());
        // Crash, then stop while backing off.
        t.up();
        t.fire(TimerKind::StartDuration);
        t.step(Input::Exited(Exit::Code(1)));
        assert!(t.due(TimerKind::Restart).is_some());
        assert_eq!(events(&t.step(Input::Stop)), ["stopped"]);
        assert!(t.timers.is_empty(), "the restart is cancelled");
        assert_eq!(t.inst.next_restart_at(), None);
    }

    #[test]
    fn stop_while_spawning_stops_as_soon_as_the_pid_is_known() {
        let mut t = T::new("");
        t.step(Input::Start);
        assert!(t.step(Input::Stop).is_empty());
        let out = t.step(Input::Spawned { pid: 5 });
        assert_eq!(signals(&out), [(5, true, Signal::SIGTERM)]);
        // And a stop while a spawn fails: just stopped.
        let mut t = T::new("");
        t.step(Input::Start);
        t.step(Input::Stop);
        let out = t.step(Input::SpawnFailed { error: "EACCES".into() });
        assert_eq!(t.state(), State::Stopped);
        assert_eq!(events(&out).last().unwrap(), "stopped");
    }

    #[test]
    fn restart_stops_then_starts_at_once_with_counters_reset() {
        let mut t = T::new("");
        t.up();
        t.fire(TimerKind::StartDuration);
        let out = t.step(Input::Restart);
        assert_eq!(signals(&out).len(), 1);
        let out = t.step(Input::Exited(Exit::Signal(15)));
        assert_eq!(events(&out), ["killed 15"]);
        assert_eq!(spawns(&out), 1, "started again without waiting");
        assert_eq!(t.state(), State::Starting(StartPhase::Spawning));
    }

    #[test]
    fn a_ready_probe_is_retried_at_its_interval_until_ok() {
        let mut t = T::new(
            "[process.detectors.ready]\ncommand = [\"check\", \"{instance}\"]\ninterval = \"250ms\"\ntimeout = \"5s\"",
        );
        t.up();
        let out = t.fire(TimerKind::StartDuration);
        let p = probes(&out);
        assert_eq!(p.len(), 1);
        let (run, role, check) = p[0].clone();
        assert_eq!(role, ProbeRole::Ready);
        assert!(matches!(check, Check::Command { ref argv, .. } if argv == &["check", "0"]));
        assert_eq!(t.inst.probe_of(run), Some(ProbeRole::Ready));
        assert_eq!(t.inst.satisfies(Condition::Ready), Satisfied::NotYet);
        assert_eq!(t.due(TimerKind::ReadyTimeout), Some(Duration::from_secs(6)));
        assert_eq!(t.due(TimerKind::ProbeDeadline), Some(Duration::from_secs(6)));
        let out = t.step(Input::Probe { role, outcome: ProbeOutcome { ok: false, pid: None } });
        assert!(events(&out).is_empty());
        assert_eq!(t.due(TimerKind::ReadyProbe), Some(Duration::from_millis(1250)));
        let out = t.fire(TimerKind::ReadyProbe);
        assert_eq!(probes(&out).len(), 1);
        let out = t.step(Input::Probe { role, outcome: ProbeOutcome { ok: true, pid: None } });
        assert_eq!(events(&out), ["ready"]);
        assert_eq!(t.state(), State::Ready);
        assert_eq!(t.inst.satisfies(Condition::Ready), Satisfied::Yes);
        assert!(t.due(TimerKind::ReadyTimeout).is_none());
    }

    #[test]
    fn not_ready_in_time_is_a_failed_start() {
        let mut t = T::new(
            "retry_count = 0\n[process.detectors.ready]\npid_file = \"/run/p.ready\"\ntimeout = \"2s\"",
        );
        t.up();
        let out = t.fire(TimerKind::StartDuration);
        assert_eq!(probes(&out)[0].2, Check::FileExists("/run/p.ready".into()));
        let out = t.fire(TimerKind::ReadyTimeout);
        assert_eq!(signals(&out), [(100, true, Signal::SIGTERM)]);
        assert!(out.iter().any(|a| matches!(a, Action::KillProbe { .. })));
        let out = t.step(Input::Exited(Exit::Signal(15)));
        assert_eq!(
            events(&out),
            ["killed 15", "failed: failed to start: not ready after 2s (1 attempt)"]
        );
    }

    #[test]
    fn a_log_pattern_seen_early_makes_it_ready_once_started() {
        let mut t = T::new("[process.detectors.ready]\nlog_pattern = \"listening on\"");
        t.up();
        let (out, matched) = t.inst.output(Stream::Stdout, b"boot\nnow listen", 1);
        assert!(!matched && events(&out) == ["output"]);
        let (_, matched) = t.inst.output(Stream::Stdout, b"ing on :80\n", 2);
        assert!(matched);
        t.step(Input::LogMatched);
        assert_eq!(t.state(), State::Starting(StartPhase::Up), "not before start_duration");
        assert_eq!(events(&t.fire(TimerKind::StartDuration)), ["running", "ready"]);
        assert_eq!(t.inst.ring().since(0, 10).lines.len(), 2);
    }

    #[test]
    fn a_blocking_pre_start_hook_gates_the_spawn_and_its_failure_modes_apply() {
        // fail (the default for pre_start): failed, nothing spawned.
        let mut t = T::new("[process.hooks.pre_start]\ncommand = [\"prep\"]");
        let out = t.step(Input::Start);
        assert_eq!(spawns(&out), 0);
        let (run, hook) = hook_runs(&out)[0];
        assert_eq!((t.inst.hook_of(run), hook), (Some(HookKind::PreStart), HookKind::PreStart));
        assert_eq!(t.state(), State::Starting(StartPhase::PreStart));
        let out = t.step(Input::HookDone { hook, ok: false, detail: "exited with code 1".into() });
        assert_eq!(spawns(&out), 0);
        assert_eq!(
            events(&out),
            [
                "hook pre_start false exited with code 1",
                "failed: pre_start hook failed: exited with code 1"
            ]
        );
        // ok: spawn.
        let mut t = T::new("[process.hooks.pre_start]\ncommand = [\"prep\"]");
        t.step(Input::Start);
        let out = t.step(Input::HookDone { hook, ok: true, detail: String::new() });
        assert_eq!(spawns(&out), 1);
        // ignore: spawn anyway.
        let mut t =
            T::new("[process.hooks.pre_start]\ncommand = [\"prep\"]\nfailure_mode = \"ignore\"");
        t.step(Input::Start);
        assert_eq!(spawns(&t.step(Input::HookDone { hook, ok: false, detail: String::new() })), 1);
    }

    #[test]
    fn a_retried_hook_runs_again_then_fails_and_a_slow_one_is_killed() {
        let mut t = T::new(
            "retry_count = 1\nretry_interval = \"5s\"\n[process.hooks.pre_start]\ncommand = [\"prep\"]\nfailure_mode = \"retry\"\ntimeout = \"10s\"",
        );
        let out = t.step(Input::Start);
        assert_eq!(t.due(TimerKind::Hook(HookKind::PreStart)), Some(Duration::from_secs(10)));
        let (run1, _) = hook_runs(&out)[0];
        // It hangs: killed at its timeout and counted as a failure.
        let out = t.fire(TimerKind::Hook(HookKind::PreStart));
        assert!(out.contains(&Action::KillHook { run: run1 }));
        assert_eq!(events(&out), ["hook pre_start false timed out after 10s"]);
        assert_eq!(t.due(TimerKind::HookRetry(HookKind::PreStart)), Some(Duration::from_secs(15)));
        let out = t.fire(TimerKind::HookRetry(HookKind::PreStart));
        let (run2, _) = hook_runs(&out)[0];
        assert_ne!(run1, run2);
        assert_eq!(t.inst.hook_of(run1), None, "the old run is forgotten");
        let out = t.step(Input::HookDone {
            hook: HookKind::PreStart,
            ok: false,
            detail: "exited with code 2".into(),
        });
        assert_eq!(
            events(&out)[1],
            "failed: pre_start hook failed: exited with code 2 (2 attempts)"
        );
        assert_eq!(spawns(&out), 0);
    }

    #[test]
    fn an_async_pre_start_hook_does_not_wait_but_its_failure_stops_the_process() {
        let mut t = T::new("[process.hooks.pre_start]\ncommand = [\"prep\"]\nrun_mode = \"async\"");
        let out = t.step(Input::Start);
        assert_eq!((hook_runs(&out).len(), spawns(&out)), (1, 1));
        t.step(Input::Spawned { pid: 8 });
        let out =
            t.step(Input::HookDone { hook: HookKind::PreStart, ok: false, detail: "boom".into() });
        assert_eq!(signals(&out), [(8, true, Signal::SIGTERM)]);
        let out = t.step(Input::Exited(Exit::Code(0)));
        assert_eq!(events(&out), ["exited 0", "failed: pre_start hook failed: boom"]);
    }

    #[test]
    fn pre_stop_runs_before_the_signal_and_post_stop_before_the_restart() {
        let mut t = T::new(
            "backoff_jitter = 0.0\n[process.hooks.pre_stop]\ncommand = [\"drain\"]\n[process.hooks.post_stop]\ncommand = [\"cleanup\"]",
        );
        t.up();
        t.fire(TimerKind::StartDuration);
        let out = t.step(Input::Stop);
        assert_eq!(hook_runs(&out)[0].1, HookKind::PreStop);
        assert!(signals(&out).is_empty(), "the signal waits for pre_stop");
        let out =
            t.step(Input::HookDone { hook: HookKind::PreStop, ok: true, detail: String::new() });
        assert_eq!(signals(&out), [(100, true, Signal::SIGTERM)]);
        let out = t.step(Input::Exited(Exit::Code(0)));
        assert_eq!(hook_runs(&out)[0].1, HookKind::PostStop);
        assert_eq!(t.state(), State::Stopping(StopPhase::PostStop));
        let out =
            t.step(Input::HookDone { hook: HookKind::PostStop, ok: true, detail: String::new() });
        assert_eq!(events(&out), ["hook post_stop true ", "stopped"]);
        // A crash: the restart is armed only after post_stop.
        t.up();
        t.fire(TimerKind::StartDuration);
        let out = t.step(Input::Exited(Exit::Code(1)));
        assert!(t.due(TimerKind::Restart).is_none());
        assert_eq!(events(&out), ["exited 1"]);
        let out =
            t.step(Input::HookDone { hook: HookKind::PostStop, ok: false, detail: "x".into() });
        assert_eq!(
            events(&out),
            ["hook post_stop false x", "restarting 1000ms #1"],
            "ignored by default"
        );
    }

    #[test]
    fn a_detached_process_is_found_watched_and_stopped_through_its_pid_file() {
        let mut t = T::new("detached = true\npid_file = \"/run/d.pid\"\nstart_duration = \"2s\"\nbackoff_jitter = 0.0");
        let out = t.up();
        assert!(events(&out).is_empty(), "the launcher is not the process");
        assert!(!out.iter().any(|a| matches!(a, Action::WritePidFile { .. })));
        assert!(t.inst.owns_pid(100));
        // The launcher exits 0: look for the pid at once.
        let out = t.step(Input::Exited(Exit::Code(0)));
        let (run, role, check) = probes(&out)[0].clone();
        assert_eq!((role, check), (ProbeRole::Alive, Check::PidFileLive("/run/d.pid".into())));
        assert!(t.inst.probe_of(run).is_some());
        let out = t.step(Input::Probe { role, outcome: ProbeOutcome { ok: false, pid: None } });
        assert!(events(&out).is_empty());
        t.fire(TimerKind::Alive);
        let out =
            t.step(Input::Probe { role, outcome: ProbeOutcome { ok: true, pid: Some(4242) } });
        assert_eq!(events(&out), ["started 4242"]);
        assert!(!t.inst.owns_pid(4242), "not our child: never reaped by us");
        assert_eq!(events(&t.fire(TimerKind::StartDuration)), ["running"]);
        // It dies: seen by the next check.
        t.fire(TimerKind::Alive);
        t.advance(Duration::from_secs(20));
        let out = t.step(Input::Probe { role, outcome: ProbeOutcome { ok: false, pid: None } });
        assert_eq!(events(&out), ["vanished", "restarting 1000ms #1"]);
        assert_eq!(t.state(), State::Exited { code: None });
        // Up again, then stopped: signalled by pid, end seen by polling.
        t.fire(TimerKind::Restart);
        t.step(Input::Spawned { pid: 101 });
        t.step(Input::Exited(Exit::Code(0)));
        t.step(Input::Probe { role, outcome: ProbeOutcome { ok: true, pid: Some(4343) } });
        t.fire(TimerKind::StartDuration);
        let out = t.step(Input::Stop);
        assert_eq!(signals(&out), [(4343, false, Signal::SIGTERM)]);
        let out = t.fire(TimerKind::Alive);
        assert_eq!(probes(&out).len(), 1);
        let out =
            t.step(Input::Probe { role, outcome: ProbeOutcome { ok: true, pid: Some(4343) } });
        assert!(events(&out).is_empty());
        assert_eq!(t.due(TimerKind::Alive).unwrap() - t.now.duration_since(t.t0), STOP_POLL);
        t.fire(TimerKind::Alive);
        let out = t.step(Input::Probe { role, outcome: ProbeOutcome { ok: false, pid: None } });
        assert_eq!(events(&out), ["vanished", "stopped"]);
    }

    #[test]
    fn a_detached_process_found_alive_is_adopted_not_started_again() {
        let mut t = T::new("detached = true\npid_file = \"/run/d.pid\"\nbackoff_jitter = 0.0");
        let out = t.step(Input::Adopt { pid: 4242 });
        assert!(!out.iter().any(|a| matches!(a, Action::Spawn { .. })), "no second copy");
        assert_eq!(events(&out), ["started 4242", "running"]);
        assert_eq!(t.state(), State::Running);
        assert!(t.due(TimerKind::Alive).is_some(), "watched through its pid file");
        let out = t.step(Input::Stop);
        assert_eq!(signals(&out), [(4242, false, Signal::SIGTERM)]);
        // Only a detached, stopped instance is adopted.
        let mut t = T::new("backoff_jitter = 0.0");
        assert!(t.step(Input::Adopt { pid: 4242 }).is_empty());
        assert_eq!(t.state(), State::Stopped);
    }

    #[test]
    fn a_detached_process_whose_pid_never_appears_fails_to_start() {
        let mut t = T::new("detached = true\npid_file = \"/run/d.pid\"\nretry_count = 0");
        t.up();
        t.step(Input::Exited(Exit::Code(0)));
        let out = t.fire(TimerKind::StartDuration);
        assert_eq!(
            events(&out),
            [
                "stopping",
                "vanished",
                "failed: failed to start: no live pid in /run/d.pid 1s after spawning (1 attempt)"
            ]
        );
        // A launcher that fails is a failed start too.
        let mut t = T::new("detached = true\npid_file = \"/run/d.pid\"\nretry_count = 0");
        t.up();
        let out = t.step(Input::Exited(Exit::Code(3)));
        assert_eq!(
            events(&out),
            ["exited 3", "failed: failed to start: the launcher exited with code 3 (1 attempt)"]
        );
    }

    #[test]
    fn a_failing_alive_check_stops_a_hung_process_and_restarts_it() {
        let mut t = T::new(
            "backoff_jitter = 0.0\n[process.detectors.alive]\ncommand = [\"ping\"]\ninterval = \"5s\"",
        );
        t.up();
        t.fire(TimerKind::StartDuration);
        let out = t.fire(TimerKind::Alive);
        let (_, role, _) = probes(&out)[0].clone();
        t.step(Input::Probe { role, outcome: ProbeOutcome { ok: true, pid: None } });
        assert!(t.due(TimerKind::Alive).is_some());
        t.fire(TimerKind::Alive);
        // The check hangs: killed at its deadline and counted as failed.
        let out = t.fire(TimerKind::ProbeDeadline);
        assert!(out.iter().any(|a| matches!(a, Action::KillProbe { .. })));
        assert_eq!(signals(&out), [(100, true, Signal::SIGTERM)]);
        let out = t.step(Input::Exited(Exit::Signal(15)));
        assert_eq!(events(&out), ["killed 15", "restarting 1000ms #1"]);
    }

    #[test]
    fn a_blocking_post_start_hook_delays_running_and_its_failure_stops_the_process() {
        let mut t =
            T::new("[process.hooks.post_start]\ncommand = [\"warm\"]\nfailure_mode = \"fail\"");
        t.up();
        let out = t.fire(TimerKind::StartDuration);
        assert_eq!(hook_runs(&out)[0].1, HookKind::PostStart);
        assert_eq!(t.state(), State::Starting(StartPhase::PostStart));
        assert_eq!(t.inst.satisfies(Condition::Started), Satisfied::NotYet);
        let out =
            t.step(Input::HookDone { hook: HookKind::PostStart, ok: true, detail: String::new() });
        assert_eq!(events(&out), ["hook post_start true ", "running"]);
        // Next start: the hook fails, so the process is stopped and failed.
        t.step(Input::Restart);
        t.step(Input::Exited(Exit::Code(0)));
        t.step(Input::Spawned { pid: 200 });
        t.fire(TimerKind::StartDuration);
        let out =
            t.step(Input::HookDone { hook: HookKind::PostStart, ok: false, detail: "bad".into() });
        assert_eq!(signals(&out), [(200, true, Signal::SIGTERM)]);
        let out = t.step(Input::Exited(Exit::Code(0)));
        assert_eq!(events(&out), ["exited 0", "failed: post_start hook failed: bad"]);
    }

    #[test]
    fn a_failed_pre_stop_with_fail_mode_still_stops_but_ends_failed() {
        let mut t =
            T::new("[process.hooks.pre_stop]\ncommand = [\"drain\"]\nfailure_mode = \"fail\"");
        t.up();
        t.step(Input::Stop);
        let out =
            t.step(Input::HookDone { hook: HookKind::PreStop, ok: false, detail: "x".into() });
        assert_eq!(signals(&out).len(), 1, "the stop goes on");
        let out = t.step(Input::Exited(Exit::Code(0)));
        assert_eq!(events(&out), ["exited 0", "failed: pre_stop hook failed: x"]);
    }

    #[test]
    fn requests_during_post_stop_change_what_follows_it() {
        let mut t = T::new("[process.hooks.post_stop]\ncommand = [\"cleanup\"]");
        t.up();
        t.fire(TimerKind::StartDuration);
        t.step(Input::Stop);
        t.step(Input::Exited(Exit::Code(0)));
        assert_eq!(t.state(), State::Stopping(StopPhase::PostStop));
        // Started while post_stop runs: start once it is done.
        t.step(Input::Start);
        let out =
            t.step(Input::HookDone { hook: HookKind::PostStop, ok: true, detail: String::new() });
        assert_eq!(spawns(&out), 1);
        // And a late answer for a hook that is not in flight changes nothing.
        let out =
            t.step(Input::HookDone { hook: HookKind::PostStop, ok: false, detail: String::new() });
        assert!(out.is_empty());
    }

    #[test]
    fn a_reloaded_spec_is_taken_up_at_the_next_start_only() {
        let mut t = T::new("");
        t.up();
        let mut new = spec("");
        new.argv = vec!["prog".into(), "--v2".into()];
        t.inst.set_spec(new.clone());
        assert_eq!(t.inst.spec().argv, ["prog"], "the running process keeps its spec");
        t.step(Input::Restart);
        let out = t.step(Input::Exited(Exit::Code(0)));
        assert!(out.iter().any(|a| matches!(a, Action::Spawn { spec } if spec.argv == new.argv)));
    }

    #[test]
    fn exits_are_described_and_labels_read_well() {
        use std::process::ExitStatus;
        assert_eq!(Exit::from_status(ExitStatus::from_raw(3 << 8)), Exit::Code(3));
        assert_eq!(Exit::from_status(ExitStatus::from_raw(9)), Exit::Signal(9));
        assert_eq!(Exit::Signal(9).describe(), "killed by SIGKILL");
        assert_eq!(Exit::Signal(77).describe(), "killed by signal 77");
        assert_eq!(State::Killed { signal: 11 }.label(), "killed(SIGSEGV)");
        assert_eq!(State::Killed { signal: 77 }.label(), "killed(signal 77)");
        assert_eq!(Exit::Code(0).describe(), "exited with code 0");
        assert_eq!(State::Exited { code: Some(2) }.label(), "exited(2)");
        assert_eq!(State::Starting(StartPhase::Up).label(), "starting");
    }
}
