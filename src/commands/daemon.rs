//! `weaver daemon`, `status` and `shutdown`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{absolute, unexpected, Ctx};
use crate::client::{Client, Deadlines};
use crate::error::{Error, Kind, Result};
use crate::launch::{self, Holder};
use crate::output::{eprint, print};
use crate::pidfile::{PidRecord, Process};
use crate::protocol::{Request, Response};
use crate::{daemon, logging, render};

/// How long `shutdown` waits for a daemon it cannot ask whether it is
/// alive: one stopped by signal (its socket is gone or it does not answer),
/// or one of another protocol (no pings).
pub const UNCHECKED_STOP_WITHIN: Duration = Duration::from_secs(60);

/// `weaver daemon --foreground`: be the daemon, in this process.
pub(super) fn foreground(ctx: Ctx, ready_fd: Option<i32>, log_file: Option<PathBuf>) -> Result<()> {
    logging::init();
    let state_dir = state_dir(&ctx)?;
    let opts = daemon::Options {
        compute_bin: compute_bin(&ctx)?,
        compute_workers: ctx.global.compute_workers,
        config: crate::supervise::locate(ctx.global.config.as_deref()),
        dir: ctx.dir,
        ready_fd,
        log_file,
        state_dir,
        http: ctx.global.http.clone(),
    };
    daemon::run(opts)
}

/// The state dir: --state-dir, else the default.
pub(super) fn state_dir(ctx: &Ctx) -> Result<PathBuf> {
    match &ctx.global.state_dir {
        Some(d) => absolute(d),
        None => Ok(crate::weavelet::store::default_dir()),
    }
}

/// The compute daemon: --compute-bin, else `compute-daemon` beside weaver.
fn compute_bin(ctx: &Ctx) -> Result<PathBuf> {
    if let Some(b) = &ctx.global.compute_bin {
        return absolute(b);
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(Kind::Io, format!("cannot locate the weaver executable: {e}")))?;
    Ok(exe.with_file_name("compute-daemon"))
}

/// `weaver daemon`: make sure one runs, detached.
pub(super) fn detached(ctx: &Ctx) -> Result<()> {
    let (_, outcome) = ctx.connect()?;
    print(&render::launched(outcome))
}

/// `weaver status`.
pub(super) fn status(ctx: &Ctx, json: bool, wait: bool) -> Result<()> {
    let r = ctx.connect_call(Request::Status { wait_compute: wait })?;
    let Response::Status(s) = r.resp else { return Err(unexpected(&r.resp)) };
    print(&if json { render::json_pretty(&s) } else { render::status(&s) })
}

/// `weaver shutdown`: ask the daemon to stop (whatever its protocol) and
/// wait until its process has exited, so its lock is free when this
/// returns. A daemon that cannot be asked (its socket is gone, or it does
/// not answer within the deadline) is stopped by SIGTERM, once its pid file
/// or lock names it. No daemon is not an error.
pub(super) fn shutdown(ctx: &Ctx) -> Result<()> {
    let sock = ctx.dir.control_socket();
    let d = Deadlines::from_env();
    let mut c = match Client::connect_with(&sock, true, d) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) if e.kind == Kind::NotResponding => {
            return stop_by_signal(ctx, "does not answer on its socket", Some(e))
        }
        Ok(Err(e)) => return Err(e),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            return stop_by_signal(ctx, "has no control socket", None)
        }
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            return stop_by_signal(ctx, "takes no new connections (it may be stopping)", None)
        }
        Err(e) => return Err(Error::io(Kind::Daemon, "connect to", &sock, &e)),
    };
    let pid = c.daemon_pid();
    // Recorded while it is surely alive: the connection is open. The
    // kernel's word for its pid, not the handshake's (which is the pid in
    // the daemon's own namespace).
    let process = c.peer_pid().and_then(PidRecord::of).and_then(Process::open);
    c.wait_closed(UNCHECKED_STOP_WITHIN)?;
    drop(c);
    // It closes its connections before it removes its files and lets go
    // of its lock: wait for the process itself.
    if let Some(p) = process {
        if !p.wait_gone(Instant::now() + d.connect) {
            return Err(Error::not_responding(
                Some(pid),
                format!("it closed its connections but has not exited {:?} later", d.connect),
            ));
        }
    }
    print(&render::shut_down(Some(pid)))
}

/// Stop the daemon that holds the lock of `ctx.dir` by SIGTERM (and SIGCONT,
/// should it be stopped) and wait for it to exit. `reason`: what is wrong
/// with its socket, for the notice; `why`: the error that made the socket
/// useless, if any. Nothing holds the lock: no daemon runs (or, with
/// `why`, something else answers on the socket, and that error stands).
fn stop_by_signal(ctx: &Ctx, reason: &str, why: Option<Error>) -> Result<()> {
    let process = match (launch::holder(&ctx.dir), why) {
        (Holder::Process(rec), _) => Process::open(rec),
        (Holder::Free, None) => None,
        (_, Some(why)) => return Err(why),
        (Holder::Unknown, None) => {
            return Err(Error::new(
                Kind::Daemon,
                format!(
                    "{} {reason}, and who holds {} cannot be told; if a weaver daemon runs, stop \
                     it by its pid (weaver.pid)",
                    ctx.dir.control_socket().display(),
                    ctx.dir.daemon_lock().display()
                ),
            ))
        }
    };
    let Some(p) = process else {
        return print(&render::shut_down(None));
    };
    let pid = p.pid();
    eprint(&render::notice(&format!("the weaver daemon (pid {pid}) {reason}; sending it SIGTERM")));
    p.signal(Signal::SIGTERM);
    // A stopped process acts on SIGTERM only once continued.
    p.signal(Signal::SIGCONT);
    if !p.wait_gone(Instant::now() + UNCHECKED_STOP_WITHIN) {
        return Err(Error::new(
            Kind::NotResponding,
            format!(
                "the weaver daemon (pid {pid}) has not exited {UNCHECKED_STOP_WITHIN:?} after \
                 SIGTERM; `kill -KILL {pid}` ends it (its children go with it)"
            ),
        ));
    }
    print(&render::shut_down(Some(pid)))
}
