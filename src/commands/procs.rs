//! `weaver ps`, `start`, `stop`, `restart` and `reload`: one request, one
//! answer.

use super::{unexpected, Ctx};
use crate::cli::Targets;
use crate::error::Result;
use crate::output::print;
use crate::protocol::{Request, Response, Verb};
use crate::render;

/// `weaver ps`.
pub(super) fn ps(ctx: &Ctx, json: bool) -> Result<()> {
    let r = ctx.connect_call(Request::Ps)?;
    let Response::Ps(rows) = r.resp else { return Err(unexpected(&r.resp)) };
    print(&if json { render::json_pretty(&rows) } else { render::ps(&rows) })
}

/// `weaver start|stop|restart`.
pub(super) fn control(ctx: &Ctx, verb: Verb, t: Targets) -> Result<()> {
    let (mut c, _) = ctx.connect()?;
    let names = if t.all { Vec::new() } else { t.names };
    let r = c.call(Request::Control { verb, names }, &[])?;
    let Response::Done { instances } = r.resp else { return Err(unexpected(&r.resp)) };
    print(&render::control(verb, &instances, t.json))
}

/// `weaver reload`.
pub(super) fn reload(ctx: &Ctx, dry_run: bool, json: bool) -> Result<()> {
    let r = ctx.connect_call(Request::Reload { dry_run })?;
    let Response::Reload(rep) = r.resp else { return Err(unexpected(&r.resp)) };
    print(&if json { render::json_pretty(&rep) } else { render::reload(&rep) })
}
