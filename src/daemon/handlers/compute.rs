//! `compute OP`: a request relayed to compute, answered when compute
//! answers (or fails, times out, or the client leaves).

use super::Ctx;
use crate::daemon::compute::Submit;
use crate::fdpass::Payload;
use crate::protocol::{ErrorKind, ErrorReply, Response};

pub fn handle(
    cx: &mut Ctx,
    client: u64,
    tag: u64,
    op: String,
    payload: Payload,
    timeout_ms: Option<u64>,
) {
    let r = if cx.stopping {
        Err(ErrorReply {
            kind: ErrorKind::ShuttingDown,
            message: "weaver is shutting down; retry once it has restarted".into(),
        })
    } else {
        cx.compute.submit(Submit { client, tag, op, payload, timeout_ms }, cx.now, cx.fx)
    };
    if let Err(e) = r {
        cx.reply(client, tag, Response::Error(e));
    }
}
