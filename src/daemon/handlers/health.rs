//! `health` (`weaver health [NAME]`): the checks `GET /health` answers,
//! over the control socket. [`snapshot`] is what every HTTP answer is made
//! from too.

use std::time::Instant;

use super::{not_found, Ctx, DaemonInfo};
use crate::daemon::compute::Compute;
use crate::daemon::procs::Procs;
use crate::daemon::weavelets::Hub;
use crate::http::{ProcSnap, Snapshot};
use crate::protocol::{ProcRow, ProcState, Response};

pub fn handle(cx: &mut Ctx, client: u64, tag: u64, name: Option<String>) {
    // Start-up ordering does not count for health.
    let s = snapshot(cx.compute, cx.procs, cx.hub, cx.info, cx.stopping, true, cx.now);
    let r = match crate::http::health::report(&s, name.as_deref()) {
        Some(r) => Ok(Response::Health(r)),
        None => Err(not_found(format!(
            "no process or instance is named {:?}; `weaver ps` lists them",
            name.unwrap_or_default()
        ))),
    };
    cx.reply_result(client, tag, r);
}

/// The daemon's state for health, readiness and metrics. `processes_started`:
/// the supervised processes were told to start (after the cgroup join);
/// start-up ordering has finished once none of them waits or starts.
pub fn snapshot(
    compute: &Compute,
    procs: &Procs,
    hub: &Hub,
    info: &DaemonInfo,
    stopping: bool,
    processes_started: bool,
    now: Instant,
) -> Snapshot {
    let procs: Vec<ProcSnap> = procs
        .sup
        .ps(now)
        .into_iter()
        .map(|r| {
            let ready_probe = procs.sup.instance(&r.name).is_some_and(|i| i.spec().ready.is_some());
            ProcSnap { row: ProcRow::from(r), ready_probe }
        })
        .collect();
    let started_up = processes_started
        && !procs.iter().any(|p| matches!(p.row.state, ProcState::Waiting | ProcState::Starting));
    Snapshot {
        version: crate::protocol::RELEASE.to_string(),
        uptime: now.saturating_duration_since(info.started),
        stopping,
        started_up,
        compute: compute.status(now),
        tally: compute.mux.tally.clone(),
        procs,
        weavelets: hub.rows(None),
        http_connections: 0,
    }
}
