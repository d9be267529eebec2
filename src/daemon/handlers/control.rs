//! `start`, `stop`, `restart` of processes or instances.

use super::{not_found, Ctx};
use crate::protocol::{ErrorReply, Response, Verb};

pub fn handle(cx: &mut Ctx, client: u64, tag: u64, verb: Verb, names: &[String]) {
    let r = control(cx, verb, names);
    cx.reply_result(client, tag, r);
}

fn control(cx: &mut Ctx, verb: Verb, names: &[String]) -> Result<Response, ErrorReply> {
    cx.not_stopping()?;
    let sup = &mut cx.procs.sup;
    let instances = sup.resolve(names).map_err(not_found)?;
    let a = match verb {
        Verb::Start => sup.start(names, cx.now),
        Verb::Stop => sup.stop(names, cx.now),
        Verb::Restart => sup.restart(names, cx.now),
    }
    .map_err(not_found)?;
    cx.procs.run_actions(a, cx.fx);
    Ok(Response::Done { instances })
}
