//! `reload` (and SIGHUP): re-read weaver.toml, plan the change, apply it.

use log::{info, warn};

use super::Ctx;
use crate::protocol::{ErrorKind, ErrorReply, ReloadReport, Response};
use crate::supervise::config::{self, Config};
use crate::supervise::plan_reload;

pub fn handle(cx: &mut Ctx, client: u64, tag: u64, dry_run: bool) {
    let r = reload(cx, dry_run).map(Response::Reload);
    cx.reply_result(client, tag, r);
}

/// SIGHUP: the same as `weaver reload`, reported in the log.
pub fn on_hangup(cx: &mut Ctx) {
    match reload(cx, false) {
        Ok(_) => info!("SIGHUP: configuration reloaded"),
        Err(e) => warn!("SIGHUP: {}", e.message),
    }
}

pub fn reload(cx: &mut Ctx, dry_run: bool) -> Result<ReloadReport, ErrorReply> {
    let bad = |message: String| ErrorReply { kind: ErrorKind::BadConfig, message };
    let new = match &cx.procs.config_path {
        Some(p) => config::load(p).map_err(|e| bad(format!("{e}\nnothing was changed")))?,
        None => Config::default(),
    };
    let path = cx.procs.config_path.as_ref().map(|p| p.display().to_string());
    let report = |plan: crate::supervise::ReloadPlan, applied: bool| ReloadReport {
        config: path.clone(),
        applied,
        added: plan.added,
        removed: plan.removed,
        changed: plan.changed,
        unchanged: plan.unchanged,
        compute_changed: plan.compute_changed,
    };
    if dry_run {
        return Ok(report(plan_reload(cx.procs.sup.config(), &new), false));
    }
    cx.not_stopping()?;
    if new.http != cx.procs.sup.config().http {
        warn!("reload: [http] changed; the HTTP endpoint keeps its settings until weaver restarts");
    }
    let compute = new.compute.clone();
    let (plan, actions) =
        cx.procs.sup.reload(new, cx.now).map_err(|e| bad(format!("{e}\nnothing was changed")))?;
    if plan.compute_changed {
        cx.compute.reconfigure(&compute, cx.now, cx.fx);
    }
    cx.procs.run_actions(actions, cx.fx);
    cx.hub.declare(&cx.procs.sup);
    info!(
        "reloaded: {} added, {} removed, {} changed, {} unchanged",
        plan.added.len(),
        plan.removed.len(),
        plan.changed.len(),
        plan.unchanged.len()
    );
    Ok(report(plan, true))
}
