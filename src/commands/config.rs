//! `weaver config get|set|unset|history|rollback|status|watch`: weavelets'
//! live configuration. `--wait` and `watch` are streamed replies, like
//! `events`.

use super::fleet as render_fleet;
use super::{unexpected, Ctx};
use crate::cli::{ConfigCmd, WaitArgs};
use crate::error::{Error, Kind, Result};
use crate::output::{print, write_to};
use crate::protocol::{ConfigReq, ErrorKind, FleetReq, Request, Response};
use crate::render;
use crate::weavelet::doc;

pub(super) fn run(ctx: &Ctx, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Get { target, json, show_origin: true } => {
            let r = ctx.connect_call(Request::Fleet(FleetReq::Origin { target }))?;
            let Response::ConfigOrigin { target, revision, keys } = r.resp else {
                return Err(unexpected(&r.resp));
            };
            print(&render_fleet::origin(&target, revision, &keys, json))
        }
        ConfigCmd::Get { target, json, show_origin: false } => {
            let r = ctx.connect_call(Request::Config(ConfigReq::Get { target }))?;
            let Response::Config(d) = r.resp else { return Err(unexpected(&r.resp)) };
            print(&render::config_doc(&d, json))
        }
        ConfigCmd::Set { target, assignments, wait, scope } => {
            let mut set = Vec::new();
            for a in &assignments {
                let (k, v) = doc::parse_assignment(a).map_err(|e| Error::new(Kind::Usage, e))?;
                set.push((k, v.to_string()));
            }
            if scope.fleet || scope.local {
                let local = scope.local;
                let req = |w| FleetReq::Set { target, set, unset: Vec::new(), wait: w, local };
                return commit(ctx, &wait, |w| Request::Fleet(req(w)));
            }
            let req = |w| ConfigReq::Set { target, set, unset: Vec::new(), wait: w };
            commit(ctx, &wait, |w| Request::Config(req(w)))
        }
        ConfigCmd::Unset { target, keys, wait, scope } => {
            for k in &keys {
                doc::check_param(k).map_err(|e| Error::new(Kind::Usage, e))?;
            }
            if scope.fleet || scope.local {
                let local = scope.local;
                let req =
                    |w| FleetReq::Set { target, set: Vec::new(), unset: keys, wait: w, local };
                return commit(ctx, &wait, |w| Request::Fleet(req(w)));
            }
            let req = |w| ConfigReq::Set { target, set: Vec::new(), unset: keys, wait: w };
            commit(ctx, &wait, |w| Request::Config(req(w)))
        }
        ConfigCmd::Rollback { target, to, wait, fleet: true, .. } => {
            let (set, unset) = render_fleet::rollback_changes(ctx, &target, to)?;
            let req = |w| FleetReq::Set { target, set, unset, wait: w, local: false };
            commit(ctx, &wait, |w| Request::Fleet(req(w)))
        }
        ConfigCmd::History { target, json, fleet: true, .. } => {
            print(&render_fleet::history(ctx, &target, json)?)
        }
        ConfigCmd::Status { target, json, fleet: true } => {
            print(&render_fleet::statuses(ctx, target.as_deref(), json)?)
        }
        ConfigCmd::Rollback { target, to, wait, fleet: false, local } => {
            if !local {
                unscoped_in_fleet(ctx, "rollback", &target)?;
            }
            commit(ctx, &wait, |w| Request::Config(ConfigReq::Rollback { target, to, wait: w }))
        }
        ConfigCmd::History { target, json, fleet: false, local } => {
            if !local {
                unscoped_in_fleet(ctx, "history", &target)?;
            }
            let r = ctx.connect_call(Request::Config(ConfigReq::History { target }))?;
            let Response::ConfigHistory(h) = r.resp else { return Err(unexpected(&r.resp)) };
            print(&render::config_history(&h, json))
        }
        ConfigCmd::Status { target, json, fleet: false } => {
            let r = ctx.connect_call(Request::Config(ConfigReq::Status { target }))?;
            let Response::ConfigStatus(rows) = r.resp else { return Err(unexpected(&r.resp)) };
            print(&render::config_status(&rows, json))
        }
        ConfigCmd::Watch { targets, json } => {
            let (mut c, _) = ctx.connect()?;
            let mut out = std::io::stdout().lock();
            for r in c.stream_replies(Request::Config(ConfigReq::Watch { targets }), &[])? {
                match r?.resp {
                    Response::ConfigEvent(e) => {
                        write_to(&mut out, &render::config_event(&e, json))?
                    }
                    other => return Err(unexpected(&other)),
                }
            }
            Ok(())
        }
    }
}

/// `config rollback|history` without `--fleet` or `--local` on a host in a
/// fleet is refused, as `config set` is: a local rollback would be
/// replaced by the next fleet revision, so nobody makes one by accident.
/// The daemon says whether it has `[fleet]` (it is the one that counts).
fn unscoped_in_fleet(ctx: &Ctx, what: &str, target: &str) -> Result<()> {
    let r = ctx.connect_call(Request::Fleet(FleetReq::Status))?;
    let Response::FleetStatus(rep) = r.resp else { return Err(unexpected(&r.resp)) };
    if !rep.configured {
        return Ok(());
    }
    let (fleet, local) = if what == "rollback" {
        (
            "the fleet document (a new fleet revision on every host; see config history --fleet)",
            "this host only (replaced by the next fleet revision)",
        )
    } else {
        ("the fleet document's revisions", "this host's revisions")
    };
    Err(Error::new(
        Kind::Request(ErrorKind::BadRequest),
        format!(
            "this host is in a fleet: say config {what} --fleet {target} for {fleet}, \
             or --local for {local}"
        ),
    ))
}

/// A request that makes a revision: print it, and with `--wait` wait for
/// the acknowledgements (exit 0 all applied, 1 one rejected, 124 timeout).
fn commit(ctx: &Ctx, w: &WaitArgs, req: impl FnOnce(Option<u64>) -> Request) -> Result<()> {
    let wait = w.wait.then(|| w.timeout.unwrap_or(0));
    let (mut c, _) = ctx.connect()?;
    let mut out = std::io::stdout().lock();
    let mut replies = c.stream_replies(req(wait), &[])?;
    let first = replies
        .next()
        .ok_or_else(|| Error::new(Kind::Daemon, "the daemon closed the connection"))??;
    let Response::Config(d) = first.resp else { return Err(unexpected(&first.resp)) };
    if !w.wait {
        return write_to(&mut out, &render::config_doc(&d, w.json));
    }
    if !w.json {
        write_to(&mut out, &render::config_doc(&d, false))?;
    }
    let second = replies.next().ok_or_else(|| {
        Error::new(Kind::Daemon, "the daemon closed the connection while waiting")
    })??;
    let Response::ConfigWaited(rep) = second.resp else { return Err(unexpected(&second.resp)) };
    write_to(&mut out, &render::wait_report(&rep, w.json))?;
    if let Some((who, why)) = rep.rejected.first() {
        return Err(Error::new(
            Kind::Request(ErrorKind::Rejected),
            format!("revision {} of {} was rejected by {who}: {why}", rep.revision, rep.target),
        ));
    }
    if rep.timed_out {
        return Err(Error::new(
            Kind::Request(ErrorKind::Timeout),
            format!(
                "{} weavelet(s) of {} had not applied revision {} in time: {}",
                rep.lagging.len(),
                rep.target,
                rep.revision,
                rep.lagging.join(", ")
            ),
        ));
    }
    Ok(())
}
