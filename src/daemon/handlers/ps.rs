//! `ps`: one row per supervised instance.

use super::Ctx;
use crate::protocol::{ProcRow, Response};

pub fn handle(cx: &mut Ctx, client: u64, tag: u64) {
    let rows = cx.procs.sup.ps(cx.now).into_iter().map(ProcRow::from).collect();
    cx.reply(client, tag, Response::Ps(rows));
}
