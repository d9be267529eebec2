//! One `[[job]]`, parsed and validated (see `supervise::config` for the
//! keys), with the shell applied.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::supervise::config::{OutputSpec, StdinMode};

/// A job of `weaver.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Unique among jobs and processes.
    pub name: String,
    /// Ready to exec: `["/bin/sh", "-c", script]` with `shell = true`.
    pub argv: Vec<String>,
    pub work_dir: Option<PathBuf>,
    /// Added to weaver's environment (with `gpus`, `CUDA_VISIBLE_DEVICES`
    /// too).
    pub env: BTreeMap<String, String>,
    /// Jobs that must pass first (names of jobs).
    pub after: Vec<String>,
    /// A failure of this job fails nothing else: its dependents run and
    /// the run's exit code ignores it.
    pub allow_failure: bool,
    /// Stopped (stop signal, SIGKILL after `stop_timeout`) and failed when
    /// it runs longer.
    pub timeout: Option<Duration>,
    /// The devices it is pinned to (`CUDA_VISIBLE_DEVICES`).
    pub gpus: Option<Vec<u32>>,
    pub output: OutputSpec,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// `stdin = "pipe"`: `weaver send JOB` writes to it while it runs.
    pub stdin: StdinMode,
}

impl JobSpec {
    /// `stop_signal` when not given.
    pub const DEFAULT_STOP_SIGNAL: Signal = Signal::SIGTERM;
    /// `stop_timeout` when not given.
    pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(2);
    /// Output kept in memory per job when `output.ring_bytes` is not given.
    pub const DEFAULT_RING_BYTES: usize = 256 * 1024;

    /// A job running `argv` with every default (tests).
    pub fn new(name: &str, argv: &[&str], after: &[&str]) -> JobSpec {
        JobSpec {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            work_dir: None,
            env: BTreeMap::new(),
            after: after.iter().map(|s| s.to_string()).collect(),
            allow_failure: false,
            timeout: None,
            gpus: None,
            output: OutputSpec { ring_bytes: Self::DEFAULT_RING_BYTES, ..OutputSpec::default() },
            stop_signal: Self::DEFAULT_STOP_SIGNAL,
            stop_timeout: Self::DEFAULT_STOP_TIMEOUT,
            stdin: StdinMode::Null,
        }
    }
}
