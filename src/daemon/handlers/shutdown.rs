//! `shutdown`: begin the graceful stop; the client's connection stays open
//! until weaver exits, so its EOF says everything is gone.

use super::Ctx;
use crate::daemon::effect::Effect;
use crate::protocol::Response;

pub fn handle(cx: &mut Ctx, client: u64, tag: u64) {
    cx.reply(client, tag, Response::ShutdownStarted);
    if let Some(c) = cx.clients.get_mut(client) {
        c.awaits_exit = true;
    }
    cx.fx.push(Effect::Stop { why: "a client asked for shutdown".into() });
}
