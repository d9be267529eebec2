//! The compute child: how it is started (socket first, then the process,
//! with a stdin lifeline, its own process group and a parent-death signal),
//! its lifecycle state, restart backoff and how its exits are described.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::outq::OutQueue;
use crate::wire::{FrameDecoder, Hello};

/// First restart after a crash is immediate; then the delay doubles from
/// this, capped at [`BACKOFF_CAP`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A compute that ran this long counts as stable: the backoff resets.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
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

#[derive(Debug)]
pub struct Compute {
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub workers: Option<u32>,
    pub state: State,
    pub child: Option<Child>,
    pub conn: Option<Conn>,
    pub hello: Option<Hello>,
    pub restarts: u64,
    /// Crashes since compute last ran stably.
    pub failures: u32,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
}

impl Compute {
    pub fn new(bin: PathBuf, socket: PathBuf, workers: Option<u32>) -> Self {
        Compute {
            bin,
            socket,
            workers,
            state: State::Stopped,
            child: None,
            conn: None,
            hello: None,
            restarts: 0,
            failures: 0,
            last_exit: None,
            last_error: None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid)
    }

    /// Start the process. The socket it connects to already listens.
    pub fn spawn(&mut self) -> io::Result<u32> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--socket-path").arg(&self.socket);
        if let Some(w) = self.workers {
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
    /// before starting it again (`None` while weaver is stopping).
    pub fn exited(&mut self, how: String, now: Instant) -> Option<Duration> {
        let ran = self.child.take().map(|c| now.duration_since(c.started));
        self.conn = None;
        self.hello = None;
        self.last_exit = Some(how);
        if matches!(self.state, State::Stopping | State::Stopped) {
            self.state = State::Stopped;
            return None;
        }
        if ran.is_some_and(|r| r >= STABLE_AFTER) {
            self.failures = 0;
        }
        self.failures += 1;
        self.restarts += 1;
        Some(backoff(self.failures))
    }

    /// Starting failed before a process existed.
    pub fn spawn_failed(&mut self, why: String) -> Duration {
        self.last_error = Some(why);
        self.failures += 1;
        backoff(self.failures)
    }
}

/// Delay before restart number `failures` (1-based) of a crash streak:
/// 0, 100 ms, 200 ms, 400 ms, ... capped at 10 s.
pub fn backoff(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let exp = (failures - 2).min(16);
    (BACKOFF_BASE * 2u32.pow(exp)).min(BACKOFF_CAP)
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
    fn backoff_is_capped_exponential() {
        let d: Vec<u64> = (1..=10).map(|f| backoff(f).as_millis() as u64).collect();
        assert_eq!(d, [0, 100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        assert_eq!(backoff(1000), BACKOFF_CAP);
    }

    #[test]
    fn exits_are_described() {
        use std::process::ExitStatus;
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exited with code 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by SIGKILL");
    }
}
