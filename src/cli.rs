//! Command-line definitions (clap). No logic here.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::protocol::LogStream;

#[derive(Debug, Parser)]
#[command(name = "weaver", version, about = "Conductor of a GPU host: one per-user daemon that owns the compute worker", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Runtime directory (sockets, lock, pid file, log). Default:
    /// $XDG_RUNTIME_DIR/weaver, else /tmp/weaver-<uid>.
    #[arg(long, global = true, env = "WEAVER_RUNTIME_DIR", value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Compute daemon executable (default: compute-daemon beside weaver).
    #[arg(long, global = true, env = "WEAVER_COMPUTE_BIN", value_name = "PATH")]
    pub compute_bin: Option<PathBuf>,
    /// Worker threads for the compute daemon (default: its own, the CPU count).
    #[arg(long, global = true, env = "WEAVER_COMPUTE_WORKERS", value_name = "N")]
    pub compute_workers: Option<u32>,
    /// Never start a daemon: fail if none runs.
    #[arg(long, global = true)]
    pub no_start: bool,
    /// Configuration file (default: $WEAVER_CONFIG, else
    /// $XDG_CONFIG_HOME/weaver/weaver.toml; none: compute alone). Read by
    /// the daemon when it starts and on `reload`.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where weavelet configuration revisions are kept (default:
    /// $XDG_STATE_HOME/weaver, else ~/.local/state/weaver). Read by the
    /// daemon when it starts.
    #[arg(long, global = true, env = "WEAVER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve /health, /ready and /metrics over HTTP on this address
    /// (over `[http] listen` in weaver.toml; port 0 takes a free port).
    /// Read by the daemon when it starts.
    #[arg(long, global = true, env = "WEAVER_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show daemon and compute state.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Wait until compute is connected (or has failed) before answering.
        #[arg(long)]
        wait: bool,
    },
    /// Run one compute request through the daemon.
    Compute(ComputeArgs),
    /// Stop the daemon gracefully; returns once it and its children are gone.
    Shutdown,
    /// List supervised processes.
    Ps {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start processes (and what they wait for).
    Start(Targets),
    /// Stop processes (dependents first).
    Stop(Targets),
    /// Stop, then start processes again.
    Restart(Targets),
    /// Output of a process or instance.
    Logs(LogsArgs),
    /// Lifecycle events as they happen (JSON lines with --json).
    Events(EventsArgs),
    /// Live configuration of weavelets (parameters pushed to running
    /// processes, applied and acknowledged).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Health checks as `GET /health` answers them: exit 0 when healthy,
    /// 1 when not (or when no daemon runs). Never starts a daemon.
    Health {
        /// One process or instance only.
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The weaver daemons of this user on this host (from the registry in
    /// the state dir); entries of daemons that are gone are removed.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Write to the stdin of a process that has stdin = "pipe"; returns
    /// once the bytes are in its pipe.
    Send(SendArgs),
    /// The terminal to a process's stdin, its output to the terminal
    /// (Ctrl-D: end of input; Ctrl-] or Ctrl-C: detach).
    Attach(AttachArgs),
    /// Run jobs ([[job]] in weaver.toml) and every job they need; all jobs
    /// when none is named. Exit 0 when no job failed (but those with
    /// allow_failure), 1 when one did, 130 when cancelled.
    Run(RunArgs),
    /// Recent runs of `weaver run` and their results.
    Runs {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The fleet: configuration shared by every host through NATS
    /// JetStream (`[fleet]` in weaver.toml).
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Re-read the configuration and apply what changed.
    Reload {
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// The daemon's guard process (started by the daemon itself): kills
    /// the daemon's process groups listed on stdin once stdin closes.
    #[command(name = "__guard", hide = true)]
    Guard,
    /// Move process PID into the cgroup whose `cgroup.procs` is PROCS
    /// (started by the daemon itself, for itself: the move blocks for a
    /// kernel grace period, which this process waits out instead).
    #[command(name = "__join-cgroup", hide = true)]
    JoinCgroup { procs: PathBuf, pid: u32 },
    /// Run the daemon (detached unless --foreground).
    Daemon {
        /// Stay in the foreground and log to stderr (systemd, containers, debugging).
        #[arg(long)]
        foreground: bool,
        /// Report readiness on this inherited fd (used by the auto-start).
        #[arg(long, hide = true, value_name = "FD")]
        ready_fd: Option<i32>,
        /// Where stderr goes, for `status` (used by the auto-start).
        #[arg(long, hide = true, value_name = "PATH")]
        log_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct Targets {
    /// Processes or instances (web, web.1).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub names: Vec<String>,
    /// Every process.
    #[arg(long)]
    pub all: bool,
    /// Print what was acted on as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Process instance, e.g. web or web.1.
    pub name: String,
    /// Keep printing lines as they come.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (default: all kept, or 10 with --follow).
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<u32>,
    /// Only this stream.
    #[arg(
        long,
        value_parser = PossibleValuesParser::new(LogStream::NAMES)
            .try_map(|s| s.parse::<LogStream>())
    )]
    pub stream: Option<LogStream>,
    /// Start after this sequence number (resume a follow).
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// JSON lines with sequence numbers, streams and times.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only these processes or instances.
    pub names: Vec<String>,
    /// Include output lines.
    #[arg(long)]
    pub output: bool,
    /// Recent events to show first.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub history: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ComputeArgs {
    /// The op: echo, render, sleep, info, or any op the compute daemon serves.
    pub op: String,
    /// Input bytes given inline.
    #[arg(long, conflicts_with = "input", value_name = "TEXT")]
    pub data: Option<String>,
    /// Input read from a file, or - for stdin.
    #[arg(long, value_name = "FILE|-")]
    pub input: Option<PathBuf>,
    /// Where the reply goes: a file, or - for stdout (default).
    #[arg(long, value_name = "FILE|-")]
    pub output: Option<PathBuf>,
    /// Fail the request if no reply comes within this many milliseconds.
    #[arg(long, value_name = "MS")]
    pub timeout: Option<u64>,
    /// Op parameters (e.g. width=640 iterations=500), sent as the input
    /// when neither --data nor --input is given.
    #[arg(value_name = "KEY=VALUE")]
    pub params: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// The effective document of a target.
    Get {
        target: String,
        /// One JSON object (target, revision, values, changed, time_ms, note).
        #[arg(long)]
        json: bool,
        /// Say where each value comes from: params, fleet or local.
        #[arg(long)]
        show_origin: bool,
    },
    /// A new revision with these parameters set (values are JSON when they
    /// parse as JSON: 0.01, true, "x"; else strings).
    Set {
        target: String,
        #[arg(value_name = "KEY=VALUE", required = true)]
        assignments: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// A new revision without these parameters.
    Unset {
        target: String,
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Kept revisions of a target (the last 64).
    History {
        target: String,
        #[arg(long)]
        json: bool,
        /// The fleet document's revisions (the bucket's history), read
        /// from NATS.
        #[arg(long, conflicts_with = "local")]
        fleet: bool,
        /// This host's revisions (on a host in a fleet, one of --fleet or
        /// --local is required).
        #[arg(long)]
        local: bool,
    },
    /// A new revision with the document of an old one (0: the defaults).
    Rollback {
        target: String,
        #[arg(long, value_name = "REV")]
        to: u64,
        #[command(flatten)]
        wait: WaitArgs,
        /// Roll the fleet document back to fleet revision REV (a new fleet
        /// revision with its values).
        #[arg(long, conflicts_with = "local")]
        fleet: bool,
        /// A revision of this host only, with the document of its local
        /// revision REV; the next fleet revision replaces it (on a host in
        /// a fleet, one of --fleet or --local is required).
        #[arg(long)]
        local: bool,
    },
    /// Every weavelet: instance or name, pid, applied revision, lag, step,
    /// last rejection, connected or not.
    Status {
        target: Option<String>,
        #[arg(long)]
        json: bool,
        /// Every host's weavelets, from the fleet's status bucket.
        #[arg(long)]
        fleet: bool,
    },
    /// Revisions and acknowledgements as they happen (JSON lines with --json).
    Watch {
        targets: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Where a change goes on a host in a fleet (required there).
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// Change the fleet's document: every host (with --wait: every
    /// connected weavelet of the target on every host).
    #[arg(long, conflicts_with = "local")]
    pub fleet: bool,
    /// Change this host's overlay only (it wins over the fleet's values).
    #[arg(long)]
    pub local: bool,
}

#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// Create the configuration and status buckets (never done implicitly).
    Init {
        /// Values kept per key (history and rollback), 1 to 64.
        #[arg(long, default_value_t = 16, value_name = "N")]
        history: u32,
    },
    /// The link: server, round trip, connected or down since when, synced
    /// revision, cache age.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Return once every connected weavelet of the target applied the
    /// revision (exit 0), one rejected it (exit 1) or the timeout passed
    /// (exit 124).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in milliseconds (default 30000).
    #[arg(long, value_name = "MS", requires = "wait")]
    pub timeout: Option<u64>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// A process with one instance, or an instance (web.1).
    pub name: String,
    /// The bytes to write, as given (add the newline yourself).
    #[arg(long, conflicts_with = "input", value_name = "TEXT")]
    pub data: Option<String>,
    /// Bytes read from a file, or - for stdin.
    #[arg(long, value_name = "FILE|-")]
    pub input: Option<PathBuf>,
    /// Close the process's stdin afterwards (it reads EOF).
    #[arg(long)]
    pub close: bool,
    /// Fail with exit 75 (busy) if a piece of the input (256 KiB) is not
    /// in the pipe within this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub timeout: u64,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// A process with one instance, or an instance (web.1).
    pub name: String,
    /// Ctrl-D (or the end of a piped stdin) also closes the process's
    /// stdin; without it the process's stdin stays open.
    #[arg(long)]
    pub close_on_eof: bool,
    /// Take over from another attach that writes to this process.
    #[arg(long, conflicts_with = "read_only")]
    pub force: bool,
    /// Only follow the output; write nothing.
    #[arg(long)]
    pub read_only: bool,
    /// Output lines to show first, from those kept.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10)]
    pub lines: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Jobs to run (with every job they need); none: all.
    #[arg(value_name = "JOB")]
    pub jobs: Vec<String>,
    /// One job at a time, in declaration order; stop at the first failure
    /// (the rest are skipped) unless --keep-going.
    #[arg(long, conflicts_with = "parallel")]
    pub sequential: bool,
    /// Ignore `after`: start every job at once (up to --max-parallel).
    #[arg(long)]
    pub parallel: bool,
    /// At most N jobs at once (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: Option<u32>,
    /// With --sequential: go on after a failure.
    #[arg(long)]
    pub keep_going: bool,
    /// Print the result as one JSON object (no progress).
    #[arg(long)]
    pub json: bool,
    /// Print the run's id at once; the run goes on without this command.
    #[arg(long, conflicts_with = "attach")]
    pub detach: bool,
    /// Follow run ID (see `weaver runs`); Ctrl-C stops following, not the
    /// run.
    #[arg(long, value_name = "ID", conflicts_with_all = ["jobs", "sequential", "parallel", "max_parallel", "keep_going"])]
    pub attach: Option<u64>,
}
