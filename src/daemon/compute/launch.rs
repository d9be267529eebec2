//! How compute is started: the socket it connects to already listens; the
//! process gets a stdin lifeline only weaver holds, its own process group,
//! and its output on pipes. compute owns its parent-death signal.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use log::warn;

use super::lifecycle::Liveness;
use crate::supervise::config::{ComputeSpec, RestartPolicy, Scheduling};
use crate::sys::ChildSetup;

/// How compute is run: `[compute]` in weaver.toml, or the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub bin: PathBuf,
    /// Arguments before weaver's own `--socket-path` and `--workers`.
    pub args: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub workers: Option<u32>,
    pub policy: RestartPolicy,
    pub liveness: Liveness,
    pub scheduling: Scheduling,
}

impl Launch {
    /// `bin` with `--workers` (if given) and every other setting at its
    /// default.
    pub fn defaults(bin: PathBuf, workers: Option<u32>) -> Launch {
        let d = ComputeSpec::default();
        let liveness = Liveness { interval: d.ping_interval, timeout: d.ping_timeout };
        Launch {
            bin,
            args: Vec::new(),
            env: d.env,
            workers,
            policy: d.restart,
            liveness,
            scheduling: d.scheduling,
        }
    }

    /// The defaults (`--compute-bin`, `--compute-workers`, the bundled
    /// daemon) with `[compute]` of weaver.toml laid over them; an explicit
    /// `--compute-workers` wins over the file.
    pub fn configured(&self, spec: &ComputeSpec, workers_flag: bool) -> Launch {
        let (bin, args) = match &spec.command {
            Some(argv) if !argv.is_empty() => (PathBuf::from(&argv[0]), argv[1..].to_vec()),
            _ => (self.bin.clone(), self.args.clone()),
        };
        let workers = if workers_flag { self.workers } else { spec.workers.or(self.workers) };
        let liveness = Liveness { interval: spec.ping_interval, timeout: spec.ping_timeout };
        Launch {
            bin,
            args,
            env: spec.env.clone(),
            workers,
            policy: spec.restart,
            liveness,
            scheduling: spec.scheduling,
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

/// Start compute, connecting to `socket`.
pub fn spawn(l: &Launch, socket: &Path) -> io::Result<Child> {
    let mut cmd = Command::new(&l.bin);
    cmd.args(&l.args).arg("--socket-path").arg(socket).envs(&l.env);
    if let Some(w) = l.workers {
        cmd.arg("--workers").arg(w.to_string());
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).current_dir("/");
    let nofile = crate::daemon::child_nofile();
    let sched_batch = l.scheduling == Scheduling::Batch;
    ChildSetup { contained: true, die_with_parent: false, nofile, sched_batch }.apply(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot start the compute daemon {}: {e}; build it (`cargo build --release`) \
                 or name another with --compute-bin / WEAVER_COMPUTE_BIN",
                l.bin.display()
            ),
        )
    })?;
    if sched_batch && !runs_batch(child.id()) {
        warn!(
            "compute (pid {}) runs under the normal scheduling policy: the kernel refused \
             SCHED_BATCH ([compute] scheduling = \"batch\")",
            child.id()
        );
    }
    // Reaped by the reactor's waitpid loop, never through `child`.
    Ok(Child {
        pid: child.id(),
        started: Instant::now(),
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
    })
}

/// Whether `pid` runs under `SCHED_BATCH` (its main thread; the policy set
/// before exec is every later thread's).
fn runs_batch(pid: u32) -> bool {
    // SAFETY: a plain query of another process's policy; no memory.
    unsafe { libc::sched_getscheduler(pid as libc::pid_t) == libc::SCHED_BATCH }
}
