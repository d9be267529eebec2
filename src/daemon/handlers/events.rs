//! `events`: lifecycle events as they happen, after up to `history` past
//! ones.

use super::Ctx;
use crate::supervise::events::Filter;

pub fn handle(cx: &mut Ctx, client: u64, tag: u64, names: Vec<String>, output: bool, history: u32) {
    cx.follow.subscribe(client, tag, Filter { names, output }, history as usize);
}
