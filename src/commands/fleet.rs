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
            let r = ctx.connect_call(Request::Fleet(FleetReq::Status))?;
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

/// A session with the fleet's server, for a command that reads the
/// buckets itself.
fn session(ctx: &Ctx, deadline: Instant) -> Result<(FleetConfig, Session)> {
    let cfg = fleet_config(ctx)?;
    let opts = cfg.client_options().map_err(|e| Error::new(Kind::Usage, e))?;
    let s = Session::connect(opts, deadline).map_err(unreachable)?;
    Ok((cfg, s))
}

fn api_error(what: &str, e: kv::ApiError) -> Error {
    Error::new(Kind::Request(ErrorKind::BadRequest), format!("{what}: {e}"))
}

/// Every kept fleet revision of `target`, oldest first.
fn revisions(
    s: &mut Session,
    b: &kv::Bucket,
    target: &str,
    deadline: Instant,
) -> Result<Vec<kv::Stored>> {
    let mut out = Vec::new();
    let mut seq = 1;
    // A key keeps at most 64 values; deleted ones are skipped by the server.
    for _ in 0..=64 {
        let (subj, body) = b.msg_get(seq, Some(target)).map_err(|e| Error::new(Kind::Usage, e))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = s.request(&subj, None, &body, left).map_err(unreachable)?;
        match kv::stored(&reply.payload) {
            Ok(m) => {
                seq = m.seq + 1;
                out.push(m);
            }
            Err(e) if e.err_code == kv::err::NO_MESSAGE_FOUND => break,
            Err(e) if e.err_code == kv::err::STREAM_NOT_FOUND => {
                return Err(api_error(&format!("bucket {} (run weaver fleet init)", b.name), e))
            }
            Err(e) => return Err(api_error("reading the fleet history", e)),
        }
    }
    Ok(out)
}

/// `config history --fleet`.
pub(super) fn history(ctx: &Ctx, target: &str, json: bool) -> Result<String> {
    let deadline = Instant::now() + INIT_DEADLINE;
    let (cfg, mut s) = session(ctx, deadline)?;
    let revs = revisions(&mut s, &cfg.config_bucket(), target, deadline)?;
    if revs.is_empty() {
        return Err(Error::new(
            Kind::Request(ErrorKind::NotFound),
            format!("{target} has no fleet document in bucket {}", cfg.bucket),
        ));
    }
    let mut t = String::new();
    for m in &revs {
        let values = String::from_utf8_lossy(&m.data);
        if json {
            let v: serde_json::Value =
                serde_json::from_slice(&m.data).unwrap_or(serde_json::Value::Null);
            let line = json!({"target": target, "revision": m.seq, "time": m.time,
                "values": v, "deleted": m.op.is_some()});
            t.push_str(&format!("{line}\n"));
        } else if m.op.is_some() {
            t.push_str(&format!("{:>6}  {}  (deleted)\n", m.seq, m.time));
        } else {
            t.push_str(&format!("{:>6}  {}  {values}\n", m.seq, m.time));
        }
    }
    Ok(t)
}

/// Keys to set (values as JSON text) and keys to unset.
type Changes = (Vec<(String, String)>, Vec<String>);

/// `config rollback --fleet`: the changes that make the current fleet
/// document equal revision `to`'s.
pub(super) fn rollback_changes(ctx: &Ctx, target: &str, to: u64) -> Result<Changes> {
    let deadline = Instant::now() + INIT_DEADLINE;
    let (cfg, mut s) = session(ctx, deadline)?;
    let revs = revisions(&mut s, &cfg.config_bucket(), target, deadline)?;
    let Some(old) = revs.iter().find(|m| m.seq == to && m.op.is_none()) else {
        let kept: Vec<String> = revs.iter().map(|m| m.seq.to_string()).collect();
        return Err(Error::new(
            Kind::Request(ErrorKind::NotFound),
            format!("{target} has no fleet revision {to} (kept: {})", kept.join(", ")),
        ));
    };
    let parse = |d: &[u8]| -> Result<crate::weavelet::Doc> {
        serde_json::from_slice(d).map_err(|e| {
            Error::new(Kind::Request(ErrorKind::BadRequest), format!("revision {to}: {e}"))
        })
    };
    let want = parse(&old.data)?;
    let cur = match revs.last() {
        Some(m) if m.op.is_none() => parse(&m.data)?,
        _ => Default::default(),
    };
    let set = want.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    let unset = cur.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
    Ok((set, unset))
}

/// `config status --fleet`: every host's weavelets, from a snapshot of the
/// status bucket read by a consumer of this command's own.
pub(super) fn statuses(ctx: &Ctx, target: Option<&str>, json: bool) -> Result<String> {
    use crate::fleet::client::Event;
    use crate::fleet::kv::{Watch, Watcher};
    let deadline = Instant::now() + INIT_DEADLINE;
    let (cfg, mut s) = session(ctx, deadline)?;
    let inbox = s.client.new_inbox();
    let name = format!("{}_cli{}", cfg.node, std::process::id());
    let mut w =
        Watcher::new(cfg.status_bucket(), &name, inbox, Duration::from_secs(2), Instant::now());
    w.snapshot_all = true;
    let mut rows: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    let mut sid = None;
    let mut todo = w.start(Instant::now());
    while !w.synced || !todo.is_empty() {
        if Instant::now() >= deadline {
            return Err(unreachable("the status bucket did not answer in time"));
        }
        let mut next = Vec::new();
        for a in todo {
            match a {
                Watch::Request { step, subject, body } => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let r = s.request(&subject, None, &body, left);
                    let r = r.as_ref().map(|m| &m.payload[..]).map_err(|e| e.clone());
                    next.extend(w.replied(step, r, Instant::now()));
                }
                Watch::Subscribe { subject } => sid = Some(s.client.subscribe(&subject)),
                Watch::Reply { subject } => {
                    let _ = s.publish(&subject, None, b"");
                }
                Watch::Entry(e) => match e.value.as_deref().map(serde_json::from_slice) {
                    Some(Ok(v)) => {
                        rows.insert(e.key, v);
                    }
                    _ => {
                        rows.remove(&e.key);
                    }
                },
                Watch::Trouble(t) => return Err(unreachable(t)),
                _ => {}
            }
        }
        todo = next;
        if todo.is_empty() && !w.synced {
            if let Some(Event::Msg(m)) =
                s.next_event((Instant::now() + Duration::from_millis(100)).min(deadline))
            {
                if Some(m.sid) == sid {
                    todo = w.message(&m, Instant::now());
                }
            }
        }
    }
    // Our consumer goes now rather than after its inactivity threshold.
    let del = cfg
        .status_bucket()
        .api(&format!("CONSUMER.DELETE.KV_{}.{}", cfg.status_bucket, w.consumer));
    let _ = s.request(&del, None, b"", Duration::from_secs(1));
    let mut t = String::new();
    for (key, v) in rows.iter().filter(|(_, v)| target.map_or(true, |t| v["target"] == t)) {
        if json {
            let mut v = v.clone();
            v["key"] = json!(key);
            t.push_str(&format!("{v}\n"));
        } else {
            let reason = v["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
            t.push_str(&format!(
                "{key:<32} {:<12} {:<12} fleet revision {:<6} {}{reason}\n",
                v["target"].as_str().unwrap_or(""),
                if v["connected"] == json!(true) { "connected" } else { "gone" },
                v["fleet_revision"],
                v["state"].as_str().unwrap_or(""),
            ));
        }
    }
    Ok(t)
}

fn init(ctx: &Ctx, history: u32) -> Result<()> {
    if !(1..=64).contains(&history) {
        return Err(Error::new(Kind::Usage, "--history: give 1 to 64 values kept per key"));
    }
    let deadline = Instant::now() + INIT_DEADLINE;
    let (cfg, mut s) = session(ctx, deadline)?;
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
