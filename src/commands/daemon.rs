//! `weaver daemon`, `status` and `shutdown`.

use std::path::PathBuf;
use std::time::Duration;

use super::{absolute, unexpected, Ctx};
use crate::client::Client;
use crate::error::{Error, Kind, Result};
use crate::output::print;
use crate::protocol::{Request, Response};
use crate::{daemon, logging, render};

/// How long `shutdown` waits for a daemon of another protocol (which
/// answers no pings) to stop.
pub const UNCHECKED_STOP_WITHIN: Duration = Duration::from_secs(60);

/// `weaver daemon --foreground`: be the daemon, in this process.
pub(super) fn foreground(ctx: Ctx, ready_fd: Option<i32>, log_file: Option<PathBuf>) -> Result<()> {
    logging::init();
    let opts = daemon::Options {
        compute_bin: compute_bin(&ctx)?,
        compute_workers: ctx.global.compute_workers,
        config: crate::supervise::locate(ctx.global.config.as_deref()),
        dir: ctx.dir,
        ready_fd,
        log_file,
    };
    daemon::run(opts)
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
    let (mut c, _) = ctx.connect()?;
    let r = c.call(Request::Status { wait_compute: wait }, &[])?;
    let Response::Status(s) = r.resp else { return Err(unexpected(&r.resp)) };
    print(&if json { render::json_pretty(&s) } else { render::status(&s) })
}

/// `weaver shutdown`: ask the daemon to stop (whatever its protocol) and
/// wait until it is gone. No daemon is not an error.
pub(super) fn shutdown(ctx: &Ctx) -> Result<()> {
    let sock = ctx.dir.control_socket();
    let mut c = match Client::connect(&sock, true) {
        Ok(c) => c?,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED)) => {
            return print(&render::shut_down(None));
        }
        Err(e) => return Err(Error::io(Kind::Daemon, "connect to", &sock, &e)),
    };
    let pid = c.server.pid;
    c.wait_closed(UNCHECKED_STOP_WITHIN)?;
    print(&render::shut_down(Some(pid)))
}
