//! `logs`: an instance's output from its ring, then (with `-f`) what comes.

use super::{not_found, Ctx};
use crate::daemon::follow::Follower;
use crate::protocol::{ErrorReply, LogQuery, Response};
use crate::supervise::ring::Stream;

pub fn handle(cx: &mut Ctx, client: u64, tag: u64, q: LogQuery) {
    if let Err(e) = logs(cx, client, tag, q) {
        cx.reply(client, tag, Response::Error(e));
    }
}

fn logs(cx: &mut Ctx, client: u64, tag: u64, q: LogQuery) -> Result<(), ErrorReply> {
    let LogQuery { name, after, tail, stream, follow } = q;
    let stream = stream.map(Stream::from);
    let sup = &cx.procs.sup;
    if sup.instance(&name).is_none() {
        if let Some(r) = super::run::job_logs(cx, &name, after, tail, stream, follow) {
            let resp = r.map(Response::Logs)?;
            cx.reply(client, tag, resp);
            return Ok(());
        }
    }
    let sup = &cx.procs.sup;
    let inst = sup.instance(&name).ok_or_else(|| {
        let known: Vec<String> = sup.ps(cx.now).into_iter().map(|r| r.name).collect();
        not_found(format!("no process instance named {name:?}; instances: {}", known.join(", ")))
    })?;
    let after = match tail {
        Some(n) if after == 0 => inst.ring().last_seq().saturating_sub(n as u64),
        _ => after,
    };
    let f = Follower { client, tag, instance: name, after, stream };
    cx.follow.logs(sup, f, follow, cx.fx);
    Ok(())
}
