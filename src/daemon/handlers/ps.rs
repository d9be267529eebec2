//! `ps`: one row per supervised instance.

use super::Ctx;
use crate::protocol::{ProcRow, Response};

pub fn handle(cx: &mut Ctx, client: u64, tag: u64) {
    let rows = cx
        .procs
        .sup
        .ps(cx.now)
        .into_iter()
        .map(|r| ProcRow {
            name: r.name,
            process: r.process,
            state: r.state,
            pid: r.pid,
            restarts: r.restarts,
            next_restart_ms: r.next_restart_in.map(|d| d.as_millis() as u64),
            last_exit: r.last_exit,
            uptime_ms: r.uptime.map(|d| d.as_millis() as u64),
            reason: r.reason,
            gpus: r.gpus,
        })
        .collect();
    cx.reply(client, tag, Response::Ps(rows));
}
