//! `run`, `run --attach`, `runs` and the cancel a Ctrl-C sends: the runner
//! room does the work; the jobs come from the configuration the
//! supervisor holds (so `reload` changes what the next run runs).

use super::Ctx;
use crate::protocol::{ErrorKind, ErrorReply, LogChunk, Response};
use crate::run::RunReq;
use crate::supervise::ring::Stream;

pub fn start(cx: &mut Ctx, client: u64, tag: u64, req: RunReq) {
    let r = cx.not_stopping().and_then(|()| {
        let jobs = cx.procs.sup.config().jobs.clone();
        cx.runner.start(&jobs, req, client, tag, cx.procs.guard_mut(), cx.fx)
    });
    if let Err(e) = r {
        cx.reply(client, tag, Response::Error(e));
    }
}

pub fn cancel(cx: &mut Ctx, client: u64, tag: u64, id: u64) {
    let r = cx.runner.cancel(id, "cancelled by its command", cx.fx);
    cx.reply_result(client, tag, r.map(|_| Response::Done { instances: Vec::new() }));
}

pub fn attach(cx: &mut Ctx, client: u64, tag: u64, id: u64) {
    if let Err(e) = cx.runner.attach(id, client, tag, cx.fx) {
        cx.reply(client, tag, Response::Error(e));
    }
}

pub fn runs(cx: &mut Ctx, client: u64, tag: u64) {
    let runs = cx.runner.runs();
    cx.reply(client, tag, Response::Runs(runs));
}

/// `weaver logs JOB`: the output of the job's latest run; `None` when
/// `name` is no job (then it is looked up as a process).
pub fn job_logs(
    cx: &Ctx,
    name: &str,
    after: u64,
    tail: Option<u32>,
    stream: Option<Stream>,
    follow: bool,
) -> Option<Result<LogChunk, ErrorReply>> {
    let declared = cx.procs.sup.config().jobs.iter().any(|j| j.name == name);
    if !declared && !cx.runner.knows(name) {
        return None;
    }
    if follow {
        return Some(Err(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!(
                "{name:?} is a job: its output cannot be followed with -f; use `weaver events \
                 --output {name}` while it runs, or `weaver logs {name}` for what it wrote"
            ),
        }));
    }
    let empty = || LogChunk { instance: name.into(), lines: Vec::new(), lost: 0, next: 0 };
    Some(Ok(cx.runner.logs(name, after, tail, stream).unwrap_or_else(empty)))
}
