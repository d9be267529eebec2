//! `weaver fleet init|status`, and the text of `config get --show-origin`.
//! `init` talks to NATS itself (the buckets are made once, by an operator);
//! `status` asks the daemon, which holds the link.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{unexpected, Ctx};
use crate::cli::FleetCmd;
use crate::error::{Error, Kind, Result};
use crate::fleet::blocking::Session;
use crate::fleet::config::{self, FleetConfig};
use crate::fleet::kv;
use crate::output::print;
use crate::protocol::{ErrorKind, FleetReport, FleetReq, Request, Response};

/// How long `fleet init` may take in all.
const INIT_DEADLINE: Duration = Duration::from_secs(10);

pub(super) fn run(ctx: &Ctx, cmd: FleetCmd) -> Result<()> {
    match cmd {
        FleetCmd::Init { history } => init(ctx, history),
        FleetCmd::Status { json } => {
            let (mut c, _) = ctx.connect()?;
            let r = c.call(Request::Fleet(FleetReq::Status), &[])?;
            let Response::FleetStatus(rep) = r.resp else { return Err(unexpected(&r.resp)) };
            print(&status_text(&rep, json))
        }
    }
}

fn fleet_config(ctx: &Ctx) -> Result<FleetConfig> {
    let path = crate::supervise::locate(ctx.global.config.as_deref());
    config::load(path.as_deref()).map_err(|e| Error::new(Kind::Usage, e))?.ok_or_else(|| {
        Error::new(
            Kind::Usage,
            "no [fleet] in weaver.toml: add url = \"nats://HOST:PORT\" under [fleet]",
        )
    })
}

fn unreachable(e: impl std::fmt::Display) -> Error {
    Error::new(
        Kind::Request(ErrorKind::FleetUnreachable),
        format!("fleet unreachable; nothing written ({e})"),
    )
}

fn init(ctx: &Ctx, history: u32) -> Result<()> {
    if !(1..=64).contains(&history) {
        return Err(Error::new(Kind::Usage, "--history: give 1 to 64 values kept per key"));
    }
    let cfg = fleet_config(ctx)?;
    let opts = cfg.client_options().map_err(|e| Error::new(Kind::Usage, e))?;
    let deadline = Instant::now() + INIT_DEADLINE;
    let mut s = Session::connect(opts, deadline).map_err(unreachable)?;
    let mut out = String::new();
    for (b, h) in [(cfg.config_bucket(), history), (cfg.status_bucket(), 1)] {
        let (subj, body) = b.create(h);
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = s.request(&subj, None, &body, left).map_err(unreachable)?;
        match kv::api_response(&reply.payload) {
            Ok(_) => out.push_str(&format!("bucket {} ready ({h} kept per key)\n", b.name)),
            Err(e) if e.err_code == kv::err::STREAM_NAME_IN_USE => out.push_str(&format!(
                "bucket {} already exists with other settings; left as it is\n",
                b.name
            )),
            Err(e) => {
                return Err(Error::new(
                    Kind::Request(ErrorKind::BadRequest),
                    format!("cannot create bucket {}: {e}", b.name),
                ))
            }
        }
    }
    print(&out)
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let now = crate::daemon::procs::wall_ms();
    let s = now.saturating_sub(ms) / 1000;
    format!("{s} s ago")
}

pub(super) fn status_text(r: &FleetReport, json: bool) -> String {
    if json {
        let v = json!({
            "configured": r.configured, "node": r.node, "servers": r.servers,
            "server": r.server, "connected": r.connected, "since_ms": r.since_ms,
            "rtt_us": r.rtt_us, "synced": r.synced, "revision": r.revision,
            "cache_saved_ms": r.cache_saved_ms, "bucket": r.bucket,
            "status_bucket": r.status_bucket, "last_error": r.last_error,
            "watch_restarts": r.watch_restarts,
        });
        return format!("{v}\n");
    }
    if !r.configured {
        return "fleet: not configured (no [fleet] in weaver.toml)\n".into();
    }
    let mut t = format!("node:        {}\n", r.node);
    match (&r.server, r.connected) {
        (Some(s), true) => {
            t.push_str(&format!("server:      {s} (connected since {})\n", ago(r.since_ms)));
            if let Some(us) = r.rtt_us {
                t.push_str(&format!("round trip:  {:.2} ms\n", us as f64 / 1000.0));
            }
        }
        _ => t.push_str(&format!(
            "server:      down since {} (tried {})\n",
            ago(r.since_ms),
            r.servers
        )),
    }
    if let Some(e) = &r.last_error {
        t.push_str(&format!("last error:  {e}\n"));
    }
    let synced = if r.synced { "synced" } else { "NOT synced: serving the cached configuration" };
    t.push_str(&format!("revision:    {} ({synced})\n", r.revision));
    t.push_str(&format!("cache saved: {}\n", ago(r.cache_saved_ms)));
    t.push_str(&format!("buckets:     {} (config), {} (status)\n", r.bucket, r.status_bucket));
    t
}

pub(super) fn origin(
    target: &str,
    revision: u64,
    keys: &[(String, String, String)],
    json: bool,
) -> String {
    if json {
        let m: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .map(|(k, v, o)| {
                let v: serde_json::Value =
                    serde_json::from_str(v).unwrap_or(serde_json::Value::Null);
                (k.clone(), json!({ "value": v, "origin": o }))
            })
            .collect();
        return format!("{}\n", json!({ "target": target, "revision": revision, "values": m }));
    }
    let mut t = format!("{target} revision {revision}\n");
    let w = keys.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
    for (k, v, o) in keys {
        t.push_str(&format!("  {k:<w$}  {v}  ({o})\n"));
    }
    t
}
