//! The client side of each `weaver` command: reach the daemon (starting it
//! if need be), send the request, and print the answer through
//! [`render`](crate::render). [`run`] picks the command.
//!
//! | file | commands |
//! |---|---|
//! | [`daemon`] | `daemon`, `status`, `shutdown` |
//! | [`compute`] | `compute` |
//! | [`procs`] | `ps`, `start`, `stop`, `restart`, `reload` |
//! | [`follow`] | `logs`, `events` (streamed replies) |
//! | [`config`] | `config get|set|unset|history|rollback|status|watch` |
//! | [`run`] | `run`, `runs` (progress, summary, Ctrl-C) |
//! | [`health`] | `health`, `ls` |
//! | [`input`] | `send`, `attach` (a process's stdin) |
//! | [`fleet`] | `fleet init|status` |

mod compute;
mod config;
mod daemon;
mod fleet;
mod follow;
mod health;
mod input;
mod procs;
mod run;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::cli::{Cli, Command, Global};
use crate::client::{Client, Reply};
use crate::error::{Error, Kind, Result};
use crate::launch::{self, Launch, Outcome};
use crate::protocol::{Request, Response, Verb};
use crate::runtime_dir::{self, RuntimeDir};

/// Run one command line.
pub fn run(cli: Cli) -> Result<()> {
    let Cli { global, command } = cli;
    if let Command::Guard = command {
        crate::daemon::guard::run(std::io::stdin().lock());
        return Ok(());
    }
    if let Command::JoinCgroup { procs, pid } = &command {
        return std::fs::write(procs, pid.to_string())
            .map_err(|e| Error::io(Kind::Io, "write", procs, &e));
    }
    let dir =
        RuntimeDir::open(&global.runtime_dir.clone().unwrap_or_else(runtime_dir::default_path))?;
    let ctx = Ctx { global, dir };
    match command {
        Command::Guard | Command::JoinCgroup { .. } => unreachable!("handled above"),
        Command::Daemon { foreground: true, ready_fd, log_file } => {
            daemon::foreground(ctx, ready_fd, log_file)
        }
        Command::Daemon { foreground: false, .. } => daemon::detached(&ctx),
        Command::Status { json, wait } => daemon::status(&ctx, json, wait),
        Command::Shutdown => daemon::shutdown(&ctx),
        Command::Compute(args) => compute::compute(&ctx, args),
        Command::Ps { json } => procs::ps(&ctx, json),
        Command::Start(t) => procs::control(&ctx, Verb::Start, t),
        Command::Stop(t) => procs::control(&ctx, Verb::Stop, t),
        Command::Restart(t) => procs::control(&ctx, Verb::Restart, t),
        Command::Reload { dry_run, json } => procs::reload(&ctx, dry_run, json),
        Command::Logs(args) => follow::logs(&ctx, args),
        Command::Events(args) => follow::events(&ctx, args),
        Command::Config(cmd) => config::run(&ctx, cmd),
        Command::Run(args) => run::run(&ctx, args),
        Command::Runs { json } => run::runs(&ctx, json),
        Command::Health { name, json } => health::health(&ctx, name, json),
        Command::Ls { json } => health::ls(&ctx, json),
        Command::Send(args) => input::send(&ctx, args),
        Command::Attach(args) => input::attach(&ctx, args),
        Command::Fleet(cmd) => fleet::run(&ctx, cmd),
    }
}

/// What every command starts from: the global options and the runtime
/// directory they name.
struct Ctx {
    global: Global,
    dir: RuntimeDir,
}

impl Ctx {
    /// Connect to the daemon, starting it unless `--no-start`.
    fn connect(&self) -> Result<(Client, Outcome)> {
        self.connect_with(self.global.no_start, None)
    }

    /// Connect to a running daemon; never start one.
    fn connect_running(&self) -> Result<Client> {
        self.connect_with(true, None).map(|(c, _)| c)
    }

    /// Connect (starting the daemon unless `--no-start`) with `req` sent
    /// along with the handshake; its reply (the connection then closes).
    fn connect_call(&self, req: Request) -> Result<Reply> {
        let (mut c, _) = self.connect_with(self.global.no_start, Some(req))?;
        c.first_reply()
    }

    /// `first`: a request to send with the handshake (see `connect_call`).
    fn connect_with(&self, no_start: bool, first: Option<Request>) -> Result<(Client, Outcome)> {
        let g = &self.global;
        let mut daemon_args: Vec<OsString> = Vec::new();
        if let Some(b) = &g.compute_bin {
            daemon_args.push("--compute-bin".into());
            daemon_args.push(absolute(b)?.into());
        }
        if let Some(w) = g.compute_workers {
            daemon_args.push("--compute-workers".into());
            daemon_args.push(w.to_string().into());
        }
        if let Some(d) = &g.state_dir {
            daemon_args.push("--state-dir".into());
            daemon_args.push(absolute(d)?.into());
        }
        if let Some(h) = &g.http {
            daemon_args.push("--http".into());
            daemon_args.push(h.into());
        }
        if let Some(c) = &g.config {
            daemon_args.push("--config".into());
            daemon_args.push(absolute(c)?.into());
        }
        launch::connect_or_start(&Launch { dir: &self.dir, daemon_args, no_start, first })
    }
}

/// `p` made absolute against the current directory (the daemon runs in /).
fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| Error::new(Kind::Io, format!("cannot resolve {}: {e}", p.display())))?;
    Ok(cwd.join(p))
}

/// A reply of the wrong kind for the request.
fn unexpected(r: &Response) -> Error {
    Error::new(Kind::Daemon, format!("the daemon sent an unexpected reply: {r:?}"))
}
