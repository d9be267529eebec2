//! `health` (`weaver health [NAME]`): the checks `GET /health` answers,
//! over the control socket. [`View::snapshot`] is what every HTTP answer
//! is made from too.

use std::time::Instant;

use super::{not_found, Ctx, DaemonInfo};
use crate::daemon::compute::Compute;
use crate::daemon::procs::Procs;
use crate::daemon::weavelets::Hub;
use crate::http::{Need, ProcSnap, Snapshot};
use crate::protocol::{ProcRow, Response};
use crate::supervise::machine::State;

pub fn handle(cx: &mut Ctx, client: u64, tag: u64, name: Option<String>) {
    let view = View {
        compute: cx.compute,
        procs: cx.procs,
        hub: cx.hub,
        info: cx.info,
        stopping: cx.stopping,
        // Start-up ordering does not count for health.
        processes_started: true,
        fleet: cx.fleet.as_deref(),
    };
    let need = name.as_deref().map_or(Need::ReadyProbes, Need::Name);
    let s = view.snapshot(need, cx.now);
    let r = match crate::http::health::report(&s, name.as_deref()) {
        Some(r) => Ok(Response::Health(r)),
        None => Err(not_found(format!(
            "no process or instance is named {:?}; `weaver ps` lists them",
            name.unwrap_or_default()
        ))),
    };
    cx.reply_result(client, tag, r);
}

/// The rooms health, readiness and metrics are read from.
pub struct View<'a> {
    pub compute: &'a Compute,
    pub procs: &'a Procs,
    pub hub: &'a Hub,
    pub info: &'a DaemonInfo,
    pub stopping: bool,
    /// The supervised processes were told to start (after the cgroup
    /// join); start-up ordering has finished once none of them waits or
    /// starts.
    pub processes_started: bool,
    /// The fleet link, with `[fleet]` configured.
    pub fleet: Option<&'a crate::daemon::fleet::Fleet>,
}

impl View<'_> {
    /// The daemon's state, with the instances `need` asks for.
    pub fn snapshot(&self, need: Need, now: Instant) -> Snapshot {
        let sup = &self.procs.sup;
        let starting = sup.all().any(|i| matches!(i.state(), State::Waiting | State::Starting(_)));
        let procs: Vec<ProcSnap> = sup
            .all()
            .filter(|i| match need {
                Need::All => true,
                Need::ReadyProbes => i.spec().ready.is_some(),
                Need::Name(n) => i.name() == n || i.spec().process == n,
                Need::StartUp => false,
            })
            .map(|i| ProcSnap {
                row: ProcRow::from(i.ps(now)),
                ready_probe: i.spec().ready.is_some(),
            })
            .collect();
        let all = need == Need::All;
        Snapshot {
            version: crate::protocol::RELEASE.to_string(),
            uptime: now.saturating_duration_since(self.info.started),
            stopping: self.stopping,
            started_up: self.processes_started && !starting,
            compute: self.compute.status(now),
            tally: if all { self.compute.mux.tally.clone() } else { Default::default() },
            procs,
            weavelets: if all { self.hub.rows(None) } else { Vec::new() },
            http_connections: 0,
            fleet: if all { self.fleet.map(|f| f.report()) } else { None },
        }
    }
}
