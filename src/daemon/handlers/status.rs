//! `status`: the daemon and compute, now or (with `--wait`) once compute
//! has settled.

use std::time::Instant;

use super::{Ctx, DaemonInfo};
use crate::daemon::compute::Compute;
use crate::protocol::{self, DaemonStatus, Response, StatusReport, PROTOCOL_VERSION};

pub fn handle(cx: &mut Ctx, client: u64, tag: u64, wait_compute: bool) {
    if wait_compute && cx.compute.wait_settled(client, tag) {
        return;
    }
    let s = report(cx.info, cx.clients.len(), cx.compute, cx.now);
    cx.reply(client, tag, Response::Status(Box::new(s)));
}

pub fn report(info: &DaemonInfo, clients: usize, compute: &Compute, now: Instant) -> StatusReport {
    StatusReport {
        version: protocol::RELEASE.to_string(),
        protocol: PROTOCOL_VERSION,
        daemon: DaemonStatus {
            pid: std::process::id(),
            uptime_ms: now.saturating_duration_since(info.started).as_millis() as u64,
            runtime_dir: info.dir.path().display().to_string(),
            log_file: info.log_file.as_ref().map(|p| p.display().to_string()),
            clients: clients as u64,
            containment: crate::daemon::contain::Containment::current()
                .map(|c| c.describe())
                .unwrap_or_default(),
            http: info.http.clone(),
        },
        compute: compute.status(now),
    }
}
