//! `ping`: answered at once, so a client can tell a daemon that is busy
//! with its request from one that is stuck.

use super::Ctx;
use crate::protocol::Response;

pub fn handle(cx: &mut Ctx, client: u64, tag: u64) {
    cx.reply(client, tag, Response::Pong);
}
