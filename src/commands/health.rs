//! `weaver health` and `weaver ls`.

use super::{unexpected, Ctx};
use crate::error::{Error, Kind, Result};
use crate::output::{eprint, print};
use crate::protocol::{Request, Response};
use crate::{registry, render};

/// `weaver health [NAME]`: exit 0 when healthy, 1 when not. No daemon is
/// unhealthy too (and none is started).
pub(super) fn health(ctx: &Ctx, name: Option<String>, json: bool) -> Result<()> {
    let mut c = ctx.connect_running().map_err(|e| match e.kind {
        Kind::Daemon | Kind::RuntimeDir | Kind::NotResponding => {
            Error::new(Kind::Io, format!("unhealthy: {}", e.message))
        }
        _ => e,
    })?;
    let r = c.call(Request::Health { name }, &[])?;
    let Response::Health(h) = r.resp else { return Err(unexpected(&r.resp)) };
    print(&if json { render::json_pretty(&h) } else { render::health(&h) })?;
    if h.healthy {
        return Ok(());
    }
    let failed: Vec<&str> = h.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    Err(Error::new(Kind::Io, format!("unhealthy: {} failed", failed.join(", "))))
}

/// `weaver ls`: the live daemons in the registry, pruning the dead.
pub(super) fn ls(ctx: &Ctx, json: bool) -> Result<()> {
    let state = super::daemon::state_dir(ctx)?;
    let l = registry::list(&state, |pid, start| {
        crate::pidfile::PidRecord { pid, start_time: start }.is_current()
    })
    .map_err(|e| Error::io(Kind::Io, "read", &registry::dir(&state), &e))?;
    for p in &l.problems {
        eprint(&render::notice(&format!("skipped a registry entry: {p}")));
    }
    let now = crate::daemon::procs::wall_ms();
    print(&if json { render::json_pretty(&l.live) } else { render::daemons(&l.live, now) })
}
