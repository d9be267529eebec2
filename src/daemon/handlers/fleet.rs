//! `fleet status`, `config set --fleet|--local`, `config get
//! --show-origin`: served by the fleet link room.

use super::Ctx;
use crate::protocol::{ErrorKind, ErrorReply, FleetReport, FleetReq, Response};

fn not_configured() -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::BadRequest,
        message: "this weaver has no [fleet] in its weaver.toml: add one (see README, \
                  \"The fleet\") or leave out --fleet/--local"
            .into(),
    }
}

pub fn handle(cx: &mut Ctx, client: u64, tag: u64, req: FleetReq) {
    match req {
        FleetReq::Status => {
            let r = match cx.fleet.as_deref() {
                Some(f) => f.report(),
                None => FleetReport {
                    configured: false,
                    node: String::new(),
                    servers: String::new(),
                    server: None,
                    connected: false,
                    since_ms: 0,
                    rtt_us: None,
                    synced: false,
                    revision: 0,
                    cache_saved_ms: 0,
                    bucket: String::new(),
                    status_bucket: String::new(),
                    last_error: None,
                    watch_restarts: 0,
                },
            };
            cx.reply(client, tag, Response::FleetStatus(Box::new(r)));
        }
        FleetReq::Set { target, set, unset, wait, local } => {
            if let Err(e) = cx.not_stopping() {
                return cx.reply(client, tag, Response::Error(e));
            }
            let Some(f) = cx.fleet.as_deref_mut() else {
                return cx.reply(client, tag, Response::Error(not_configured()));
            };
            if !local {
                // The reply comes with the fleet's acknowledgement.
                if let Err(e) = f.put(client, tag, &target, &set, &unset, wait) {
                    cx.reply(client, tag, Response::Error(e));
                }
                return;
            }
            match f.set_local(cx.hub, &target, &set, &unset) {
                Ok(doc) => {
                    let rev = doc.revision;
                    cx.reply(client, tag, Response::Config(doc));
                    if let Some(ms) = wait {
                        let t = if ms == 0 {
                            super::config::DEFAULT_WAIT
                        } else {
                            std::time::Duration::from_millis(ms)
                        };
                        cx.hub.wait(client, tag, &target, rev, t, cx.now, cx.fx);
                    }
                }
                Err(e) => cx.reply(client, tag, Response::Error(e)),
            }
        }
        FleetReq::Origin { target } => {
            let r = match cx.fleet.as_deref() {
                Some(f) => f.origin(cx.hub, &target),
                None => cx.hub.store.current(&target).map(|(rev, doc)| {
                    (
                        rev,
                        doc.iter()
                            .map(|(k, v)| (k.clone(), v.to_string(), "params".into()))
                            .collect(),
                    )
                }),
            };
            let resp = match r {
                Some((revision, keys)) => Response::ConfigOrigin { target, revision, keys },
                None => Response::Error(ErrorReply {
                    kind: ErrorKind::NotFound,
                    message: format!("unknown target {target:?}"),
                }),
            };
            cx.reply(client, tag, resp);
        }
    }
}
