//! `config get|set|unset|history|rollback|status|watch`: weavelets' live
//! configuration, served by the hub room.

use std::time::Duration;

use super::{not_found, Ctx};
use crate::daemon::weavelets::config_doc;
use crate::protocol::{ConfigDoc, ConfigReq, ErrorKind, ErrorReply, Response};
use crate::weavelet::doc::{self, Doc};

/// How long `--wait` waits when the client names no timeout.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

fn bad(message: String) -> ErrorReply {
    ErrorReply { kind: ErrorKind::BadRequest, message }
}

fn unknown(target: &str) -> ErrorReply {
    not_found(format!(
        "unknown target {target:?}: no [[process]] of that name and no `weaver config set` made it"
    ))
}

pub fn handle(cx: &mut Ctx, client: u64, tag: u64, req: ConfigReq) {
    match req {
        ConfigReq::Get { target } => {
            let r = current(cx, &target).map(Response::Config);
            cx.reply_result(client, tag, r);
        }
        ConfigReq::Set { target, set, unset, wait } => {
            if cx.fleet.is_some() {
                let e = bad(format!(
                    "this host is in a fleet: say --fleet to change {target} on every host, \
                     or --local for this host only"
                ));
                return cx.reply(client, tag, Response::Error(e));
            }
            let r = set_doc(cx, &target, &set, &unset);
            committed(cx, client, tag, &target, r, wait);
        }
        ConfigReq::History { target } => {
            let r = if cx.hub.store.known(&target) {
                let h = cx.hub.store.history(&target);
                Ok(Response::ConfigHistory(h.into_iter().map(|r| config_doc(&target, r)).collect()))
            } else {
                Err(unknown(&target))
            };
            cx.reply_result(client, tag, r);
        }
        ConfigReq::Rollback { target, to, wait } => {
            let r = rollback(cx, &target, to);
            committed(cx, client, tag, &target, r, wait);
        }
        ConfigReq::Status { target } => {
            let r = match target {
                Some(t) if !cx.hub.store.known(&t) => Err(unknown(&t)),
                t => Ok(Response::ConfigStatus(cx.hub.rows(t.as_deref()))),
            };
            cx.reply_result(client, tag, r);
        }
        ConfigReq::Watch { targets } => cx.hub.watch(client, tag, targets),
    }
}

/// The effective document of `target`.
fn current(cx: &Ctx, target: &str) -> Result<ConfigDoc, ErrorReply> {
    let store = &cx.hub.store;
    let (rev, values) = store.current(target).ok_or_else(|| unknown(target))?;
    if let Some(r) = store.history(target).last() {
        return Ok(config_doc(target, r));
    }
    Ok(ConfigDoc {
        target: target.to_string(),
        revision: rev,
        values: serde_json::to_string(values).unwrap_or_default(),
        changed: Vec::new(),
        time_ms: None,
        note: "defaults".into(),
    })
}

fn set_doc(
    cx: &mut Ctx,
    target: &str,
    set: &[(String, String)],
    unset: &[String],
) -> Result<ConfigDoc, ErrorReply> {
    cx.not_stopping()?;
    doc::check_target(target).map_err(bad)?;
    if set.is_empty() && unset.is_empty() {
        return Err(bad("nothing to change: give KEY=VALUE or keys to unset".into()));
    }
    let mut values: Doc = cx.hub.store.current(target).map(|c| c.1.clone()).unwrap_or_default();
    for k in unset {
        doc::check_param(k).map_err(bad)?;
        if values.remove(k).is_none() {
            return Err(not_found(format!("{target} has no parameter {k:?}")));
        }
    }
    for (k, v) in set {
        doc::check_param(k).map_err(bad)?;
        let v = serde_json::from_str(v).map_err(|e| bad(format!("{k}: not JSON: {e}")))?;
        values.insert(k.clone(), v);
    }
    let note = if set.is_empty() {
        "unset"
    } else if unset.is_empty() {
        "set"
    } else {
        "set, unset"
    };
    cx.hub.commit(target, values, note.into()).map_err(bad)
}

fn rollback(cx: &mut Ctx, target: &str, to: u64) -> Result<ConfigDoc, ErrorReply> {
    cx.not_stopping()?;
    let store = &cx.hub.store;
    if !store.known(target) {
        return Err(unknown(target));
    }
    let Some(values) = store.at(target, to).cloned() else {
        let h = store.history(target);
        let kept = match (h.first(), h.last()) {
            (Some(a), Some(b)) => {
                format!("kept: 0 (the defaults) and {} to {}", a.revision, b.revision)
            }
            _ => "kept: 0 (the defaults)".into(),
        };
        return Err(not_found(format!("{target} has no revision {to} ({kept})")));
    };
    cx.hub.commit(target, values, format!("rollback to {to}")).map_err(bad)
}

/// Answer a commit, and with `wait` wait for the acknowledgements.
fn committed(
    cx: &mut Ctx,
    client: u64,
    tag: u64,
    target: &str,
    r: Result<ConfigDoc, ErrorReply>,
    wait: Option<u64>,
) {
    match r {
        Ok(doc) => {
            cx.hub.announce(&doc);
            let rev = doc.revision;
            cx.reply(client, tag, Response::Config(doc));
            if let Some(ms) = wait {
                let t = if ms == 0 { DEFAULT_WAIT } else { Duration::from_millis(ms) };
                cx.hub.wait(client, tag, target, rev, t, cx.now, cx.fx);
            }
        }
        Err(e) => cx.reply(client, tag, Response::Error(e)),
    }
}
