//! The compute child: how it is started (socket first, then the process,
//! with a stdin lifeline, its own process group and a parent-death signal),
//! its lifecycle state, restart backoff and how its exits are described.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::outq::OutQueue;
use crate::supervise::backoff;
use crate::supervise::config::{ComputeSpec, RestartPolicy};
use crate::wire::{FrameDecoder, Hello};

/// Shortest wait before retrying a compute that could not be spawned.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Time allowed from spawn to HELLO.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL when stopping.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Spawned; waiting for it to connect and say HELLO.
    Starting,
    /// Connected and serving.
    Ready,
    /// Connection lost; the process is being killed and reaped.
    Exiting,
    /// Waiting to start again.
    Backoff { until: Instant },
    /// weaver is stopping; compute was told to stop.
    Stopping,
    /// Not running and not coming back (weaver stopped).
    Stopped,
    /// Gave up: crashed more often in a row than `max_restarts` allows.
    Failed,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Exiting => "exiting",
            State::Backoff { .. } => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

/// The running process.
#[derive(Debug)]
pub struct Child {
    pub pid: u32,
    pub started: Instant,
    /// The write end of compute's stdin; only weaver holds it, so compute
    /// sees EOF the moment weaver is gone or lets go.
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

/// The connection compute made back to weaver.
#[derive(Debug)]
pub struct Conn {
    pub stream: mio::net::UnixStream,
    pub dec: FrameDecoder,
    pub out: OutQueue,
    pub writable_armed: bool,
}

/// How compute is run: `[compute]` in weaver.toml, or the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub bin: PathBuf,
    /// Arguments before weaver's own `--socket-path` and `--workers`.
    pub args: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub workers: Option<u32>,
    pub policy: RestartPolicy,
}

impl Launch {
    /// The defaults (`--compute-bin`, `--compute-workers`, the bundled
    /// daemon) with `[compute]` of weaver.toml laid over them; an explicit
    /// `--compute-workers` wins over the file.
    pub fn configured(&self, spec: &ComputeSpec, workers_flag: bool) -> Launch {
        let (bin, args) = match &spec.command {
            Some(argv) if !argv.is_empty() => (PathBuf::from(&argv[0]), argv[1..].to_vec()),
            _ => (self.bin.clone(), self.args.clone()),
        };
        let workers = if workers_flag { self.workers } else { spec.workers.or(self.workers) };
        Launch { bin, args, env: spec.env.clone(), workers, policy: spec.restart }
    }
}

#[derive(Debug)]
pub struct Compute {
    /// What `--compute-bin` / `--compute-workers` say, before weaver.toml.
    pub base: Launch,
    /// Whether `--compute-workers` was given (it beats the file).
    pub workers_flag: bool,
    pub launch: Launch,
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub state: State,
    pub child: Option<Child>,
    pub conn: Option<Conn>,
    pub hello: Option<Hello>,
    pub restarts: u64,
    /// Crashes since compute last ran stably.
    pub failures: u32,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    /// weaver itself stopped it to start it again (a reload changed
    /// `[compute]`): the exit is no crash.
    pub restart_requested: bool,
}

impl Compute {
    pub fn new(base: Launch, workers_flag: bool, spec: &ComputeSpec, socket: PathBuf) -> Self {
        let launch = base.configured(spec, workers_flag);
        Compute {
            bin: launch.bin.clone(),
            base,
            workers_flag,
            launch,
            socket,
            state: State::Stopped,
            child: None,
            conn: None,
            hello: None,
            restarts: 0,
            failures: 0,
            last_exit: None,
            last_error: None,
            restart_requested: false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid)
    }

    /// Start the process. The socket it connects to already listens.
    pub fn spawn(&mut self) -> io::Result<u32> {
        self.bin = self.launch.bin.clone();
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.launch.args).arg("--socket-path").arg(&self.socket).envs(&self.launch.env);
        if let Some(w) = self.launch.workers {
            cmd.arg("--workers").arg(w.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir("/")
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // weaver may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot start the compute daemon {}: {e}; build it (`cargo build --release`) \
                     or name another with --compute-bin / WEAVER_COMPUTE_BIN",
                    self.bin.display()
                ),
            )
        })?;
        let pid = child.id();
        self.child = Some(Child {
            pid,
            started: Instant::now(),
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        });
        // Reaped by the reactor's waitpid loop, never through `child`.
        drop(child);
        self.state = State::Starting;
        self.hello = None;
        Ok(pid)
    }

    /// The child exited (reaped): record how, and say how long to wait
    /// before starting it again; `None` while weaver is stopping or when
    /// compute has crashed too often (then the state is `Failed`).
    pub fn exited(&mut self, how: String, now: Instant, random: u64) -> Option<Duration> {
        let ran = self.child.take().map(|c| now.duration_since(c.started));
        self.conn = None;
        self.hello = None;
        self.last_exit = Some(how);
        if matches!(self.state, State::Stopping | State::Stopped) {
            self.state = State::Stopped;
            return None;
        }
        if std::mem::take(&mut self.restart_requested) {
            return Some(Duration::ZERO);
        }
        let p = self.launch.policy;
        if ran.is_some_and(|r| r >= p.stable_after) {
            self.failures = 0;
        }
        self.failures += 1;
        if !p.auto_restart || (p.max_restarts > 0 && self.failures > p.max_restarts) {
            self.state = State::Failed;
            self.last_error = Some(format!(
                "compute gave up after {} crash(es) in a row (max_restarts = {}); fix it and run                  `weaver reload` or restart weaver",
                self.failures, p.max_restarts
            ));
            return None;
        }
        self.restarts += 1;
        Some(restart_delay(&p, self.failures, random))
    }

    /// Starting failed before a process existed.
    pub fn spawn_failed(&mut self, why: String, random: u64) -> Duration {
        self.last_error = Some(why);
        self.failures += 1;
        restart_delay(&self.launch.policy, self.failures, random).max(BACKOFF_BASE)
    }
}

/// Delay before restart number `failures` (1-based) of a crash streak: the
/// first is immediate (a lone crash costs one request, not a pause), then
/// the policy's capped exponential backoff.
pub fn restart_delay(policy: &RestartPolicy, failures: u32, random: u64) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    backoff::delay(policy, failures - 1, random)
}

/// "exited with code 3", "killed by SIGKILL".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {sig}"));
        let core = if status.core_dumped() { " (core dumped)" } else { "" };
        return format!("killed by {name}{core}");
    }
    format!("ended: {status:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_capped_exponential() {
        let p = RestartPolicy { backoff_jitter: 0.0, ..RestartPolicy::COMPUTE };
        let d: Vec<u64> = (1..=10).map(|f| restart_delay(&p, f, 0).as_millis() as u64).collect();
        assert_eq!(d, [0, 100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
    }

    #[test]
    fn gives_up_after_max_restarts() {
        let launch = Launch {
            bin: "/bin/false".into(),
            args: vec![],
            env: Default::default(),
            workers: None,
            policy: RestartPolicy { max_restarts: 2, ..RestartPolicy::COMPUTE },
        };
        let spec = ComputeSpec { restart: launch.policy, ..Default::default() };
        let mut c = Compute::new(launch, false, &spec, "/x".into());
        let now = Instant::now();
        c.state = State::Ready;
        assert_eq!(c.exited("exited with code 1".into(), now, 0), Some(Duration::ZERO));
        assert!(c.exited("exited with code 1".into(), now, 0).is_some());
        assert_eq!(c.exited("exited with code 1".into(), now, 0), None);
        assert_eq!(c.state, State::Failed);
        assert!(c.last_error.as_deref().unwrap().contains("max_restarts = 2"));
    }

    #[test]
    fn exits_are_described() {
        use std::process::ExitStatus;
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exited with code 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by SIGKILL");
    }
}
