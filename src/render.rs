//! Every text the `weaver` CLI prints, in one place: status, the ps table,
//! log lines, events, the reload report, notices and errors, in text and
//! JSON. Each function returns the whole text (lines end in a newline) and
//! leaves the writing to the command.
//!
//! Events have one text form, [`EventRecord`]'s `Display`, which the
//! daemon's log shares (through [`EventRecord::what`]).

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::error::Error;
use crate::launch::Outcome;
use crate::protocol::{
    ConfigDoc, ConfigEvent, EventRecord, LogChunk, ProcRow, ReloadReport, StatusReport, Verb,
    WaitReport, WeaveletRow,
};

/// Room per ps row, to size the table's buffer.
const PS_ROW_BYTES: usize = 80;

/// An error, as the CLI prints it to stderr.
pub fn error(e: &Error) -> String {
    format!("weaver: {e}\n")
}

/// A remark on stderr that is not an error (e.g. while following).
pub fn notice(text: &str) -> String {
    format!("weaver: {text}\n")
}

/// Pretty JSON, for one whole answer (`status`, `ps`, `reload`).
pub fn json_pretty<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("protocol types serialise") + "\n"
}

/// One JSON object on a line, without null fields (`events`).
fn json_line<T: Serialize>(v: &T) -> String {
    let mut v = serde_json::to_value(v).expect("protocol types serialise");
    if let serde_json::Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
    }
    v.to_string() + "\n"
}

/// `weaver daemon` without `--foreground`.
pub fn launched(o: Outcome) -> String {
    match o {
        Outcome::Started(pid) => format!("weaver daemon started (pid {pid})\n"),
        Outcome::Connected => "weaver daemon already running\n".to_string(),
    }
}

/// `weaver shutdown`: the daemon of this pid has stopped, or (`None`) none
/// was running.
pub fn shut_down(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("weaver daemon (pid {pid}) stopped\n"),
        None => "no weaver daemon is running\n".to_string(),
    }
}

/// `weaver status`.
pub fn status(s: &StatusReport) -> String {
    let d = &s.daemon;
    let c = &s.compute;
    let mut t = String::new();
    let _ = writeln!(t, "weaver {} (protocol {})", s.version, s.protocol);
    let _ = writeln!(
        t,
        "daemon   pid {}, up {:.1}s, {} client(s)",
        d.pid,
        d.uptime_ms as f64 / 1000.0,
        d.clients
    );
    let _ = writeln!(
        t,
        "         runtime dir {}, log {}",
        d.runtime_dir,
        d.log_file.as_deref().unwrap_or("stderr")
    );
    if !d.containment.is_empty() {
        let _ = writeln!(t, "         children contained by {}", d.containment);
    }
    if let Some(h) = &d.http {
        let _ = writeln!(t, "         http http://{h} (/health, /ready, /metrics)");
    }
    let pid = c.pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "no process".into());
    let workers = c.workers.map(|w| format!(", {w} workers")).unwrap_or_default();
    let hangs = if c.hangs > 0 { format!(" ({} after it hung)", c.hangs) } else { String::new() };
    let _ = writeln!(
        t,
        "compute  {}, {pid}{workers}, {} restart(s){hangs}, bin {}",
        c.state, c.restarts, c.bin
    );
    let _ = writeln!(
        t,
        "         in flight {}, queued {}, served {}, errors {}, cancelled {}, timed out {}, busy {}, late {}",
        c.in_flight, c.queued, c.served, c.errors, c.cancelled, c.timed_out, c.busy_rejected, c.dropped_late
    );
    if let Some(e) = &c.last_exit {
        let _ = writeln!(t, "         last exit: {e}");
    }
    if let Some(e) = &c.last_error {
        let _ = writeln!(t, "         last error: {e}");
    }
    if let Some(ms) = c.next_restart_ms {
        let _ = writeln!(t, "         next start in {ms} ms");
    }
    t
}

/// A duration for the ps table: "250ms", "1.5s", "3m".
fn ms_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 120_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m", ms / 60_000)
    }
}

/// `weaver ps`: the table (or a hint when nothing is supervised).
pub fn ps(rows: &[ProcRow]) -> String {
    if rows.is_empty() {
        return "no supervised processes (declare them in weaver.toml)\n".to_string();
    }
    let mut table = String::with_capacity(PS_ROW_BYTES * (rows.len() + 1));
    let _ = writeln!(
        table,
        "{:<20} {:<14} {:>8} {:>8} {:>8}  INFO",
        "NAME", "STATE", "PID", "RESTARTS", "UPTIME"
    );
    for r in rows {
        let mut info = Vec::new();
        if let Some(ms) = r.next_restart_ms {
            info.push(format!("restart in {}", ms_text(ms)));
        }
        if let Some(e) = &r.last_exit {
            info.push(format!("last: {e}"));
        }
        if let Some(e) = &r.reason {
            info.push(e.clone());
        }
        if let Some(g) = &r.gpus {
            info.push(format!(
                "gpus {}",
                g.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
            ));
        }
        let _ = writeln!(
            table,
            "{:<20} {:<14} {:>8} {:>8} {:>8}  {}",
            r.name,
            r.state,
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.restarts,
            r.uptime_ms.map(ms_text).unwrap_or_else(|| "-".into()),
            info.join("; ")
        );
    }
    table
}

/// `weaver start|stop|restart`: what was acted on.
pub fn control(verb: Verb, instances: &[String], json: bool) -> String {
    if json {
        return serde_json::to_string(instances).expect("names serialise") + "\n";
    }
    let what = match verb {
        Verb::Start => "starting",
        Verb::Stop => "stopping",
        Verb::Restart => "restarting",
    };
    let names = if instances.is_empty() { "nothing".to_string() } else { instances.join(", ") };
    format!("{what}: {names}\n")
}

/// `weaver reload`: the plan, and whether it was applied.
pub fn reload(r: &ReloadReport) -> String {
    let mut t = String::new();
    let verb = if r.applied { "applied" } else { "plan (dry run, nothing changed)" };
    let _ =
        writeln!(t, "reload {verb}: {}", r.config.as_deref().unwrap_or("no configuration file"));
    for (label, names) in [
        ("added", &r.added),
        ("removed", &r.removed),
        ("changed", &r.changed),
        ("unchanged", &r.unchanged),
    ] {
        let names = if names.is_empty() { "-".to_string() } else { names.join(", ") };
        let _ = writeln!(t, "  {label:<9} {names}");
    }
    if r.compute_changed {
        let _ = writeln!(t, "  compute   changed{}", if r.applied { ": restarted" } else { "" });
    }
    t
}

/// `weaver logs`: a chunk's lines (the text alone, or JSON objects with
/// instance, sequence number, stream and time), after a note of lines lost
/// before them.
pub fn log_chunk(c: &LogChunk, json: bool) -> String {
    let mut t = String::new();
    if c.lost > 0 {
        if json {
            let _ = writeln!(t, "{}", serde_json::json!({"instance": c.instance, "lost": c.lost}));
        } else {
            let _ = writeln!(
                t,
                "[weaver: {} line(s) of {} were dropped before they could be shown]",
                c.lost, c.instance
            );
        }
    }
    for l in &c.lines {
        if json {
            let _ = writeln!(
                t,
                "{}",
                serde_json::json!({"instance": c.instance, "seq": l.seq, "stream": l.stream, "time_ms": l.time_ms, "text": l.text})
            );
        } else {
            let _ = writeln!(t, "{}", l.text);
        }
    }
    t
}

/// `weaver send --json`: what was written.
pub fn sent(instance: &str, bytes: u64, closed: bool) -> String {
    serde_json::json!({"instance": instance, "bytes": bytes, "closed": closed}).to_string() + "\n"
}

/// `weaver events`: one event on a line.
pub fn event(e: &EventRecord, json: bool) -> String {
    if json {
        json_line(e)
    } else {
        format!("{e}\n")
    }
}

/// A document's JSON text as a value (an object; `{}` if unreadable).
fn values(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({}))
}

/// A [`ConfigDoc`] as JSON, its values as an object.
fn config_doc_json(d: &ConfigDoc) -> serde_json::Value {
    serde_json::json!({
        "target": d.target,
        "revision": d.revision,
        "values": values(&d.values),
        "changed": d.changed,
        "time_ms": d.time_ms,
        "note": d.note,
    })
}

/// `weaver config get|set|unset|rollback`: one document.
pub fn config_doc(d: &ConfigDoc, json: bool) -> String {
    if json {
        return config_doc_json(d).to_string() + "\n";
    }
    let mut t = format!("{} revision {} ({})\n", d.target, d.revision, d.note);
    if let serde_json::Value::Object(m) = values(&d.values) {
        for (k, v) in m {
            let mark = if d.changed.contains(&k) { "*" } else { " " };
            let _ = writeln!(t, "{mark} {k} = {v}");
        }
    }
    t
}

/// `weaver config history`: one line per kept revision, oldest first.
pub fn config_history(docs: &[ConfigDoc], json: bool) -> String {
    if json {
        let all: Vec<serde_json::Value> = docs.iter().map(config_doc_json).collect();
        return json_pretty(&all);
    }
    let mut t = format!("{:>6}  {:<14}  {:<16}  CHANGED\n", "REV", "WHEN", "NOTE");
    for d in docs {
        let when = d.time_ms.map(|ms| format!("{}s ago", ago_s(ms))).unwrap_or_default();
        let _ =
            writeln!(t, "{:>6}  {:<14}  {:<16}  {}", d.revision, when, d.note, d.changed.join(","));
    }
    t
}

/// Whole seconds since `ms` (ms since the epoch).
fn ago_s(ms: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.saturating_sub(ms) / 1000
}

/// A weavelet row's label: instance, else name, else `#id`.
fn weavelet_label(r: &WeaveletRow) -> String {
    r.instance.clone().or_else(|| r.name.clone()).unwrap_or_else(|| format!("#{}", r.id))
}

/// `weaver config status`.
pub fn config_status(rows: &[WeaveletRow], json: bool) -> String {
    if json {
        let all: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("protocol types serialise");
                v["metrics"] = values(&r.metrics);
                v["rejected"] = match &r.rejected {
                    Some((rev, why)) => serde_json::json!({"revision": rev, "reason": why}),
                    None => serde_json::Value::Null,
                };
                v
            })
            .collect();
        return json_pretty(&all);
    }
    if rows.is_empty() {
        return "no weavelets\n".into();
    }
    let mut t = format!(
        "{:>4}  {:<12}  {:<16}  {:>8}  {:<12}  {:>7}  {:>4}  {:>8}  LAST REJECTION\n",
        "ID", "TARGET", "WEAVELET", "PID", "STATE", "APPLIED", "LAG", "STEP"
    );
    for r in rows {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let state = if r.connected { "connected" } else { "disconnected" };
        let rej = r.rejected.as_ref().map_or("-".to_string(), |(rev, why)| format!("{rev}: {why}"));
        let _ = writeln!(
            t,
            "{:>4}  {:<12}  {:<16}  {:>8}  {:<12}  {:>7}  {:>4}  {:>8}  {}",
            r.id,
            r.target,
            weavelet_label(r),
            r.pid,
            state,
            opt(r.applied),
            r.lag,
            opt(r.step),
            rej
        );
    }
    t
}

/// `--wait`: how it ended.
pub fn wait_report(r: &WaitReport, json: bool) -> String {
    if json {
        return serde_json::to_string(r).expect("protocol types serialise") + "\n";
    }
    let mut t = String::new();
    if r.rejected.is_empty() && !r.timed_out {
        let _ = writeln!(
            t,
            "revision {} of {} applied by {} weavelet(s)",
            r.revision,
            r.target,
            r.applied.len()
        );
    }
    for (who, why) in &r.rejected {
        let _ = writeln!(t, "rejected by {who}: {why}");
    }
    if r.timed_out {
        let _ =
            writeln!(t, "{} weavelet(s) had not applied revision {}:", r.lagging.len(), r.revision);
        for who in &r.lagging {
            let _ = writeln!(t, "  {who}");
        }
    }
    for who in &r.disconnected {
        let _ = writeln!(t, "disconnected before answering: {who}");
    }
    t
}

/// `weaver config watch`: one event on a line.
pub fn config_event(e: &ConfigEvent, json: bool) -> String {
    if json {
        return json_line(e);
    }
    let mut t = format!("{} {}", e.target, e.event);
    if let Some(r) = e.revision {
        let _ = write!(t, " revision={r}");
    }
    if let Some(w) = &e.who {
        let _ = write!(t, " by {w}");
    }
    if let Some(s) = e.step {
        let _ = write!(t, " step={s}");
    }
    if let Some(d) = &e.detail {
        let _ = write!(t, ": {d}");
    }
    t + "\n"
}

/// `SEQ INSTANCE WHAT`, e.g. `12 web.0 exited code=1`.
impl fmt::Display for EventRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.seq, self.instance, self.what())
    }
}

impl EventRecord {
    /// What happened, without sequence number and instance: the event's
    /// name and its fields, e.g. `started pid=41`, `killed signal=SIGKILL`,
    /// `restarting in=200ms attempt=2`, `failed: why`. The daemon logs this.
    pub fn what(&self) -> impl fmt::Display + '_ {
        What(self)
    }
}

struct What<'a>(&'a EventRecord);

impl fmt::Display for What<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        write!(f, "{}", e.event)?;
        if let Some(p) = e.pid {
            write!(f, " pid={p}")?;
        }
        if let Some(c) = e.code {
            write!(f, " code={c}")?;
        }
        if let Some(sig) = &e.signal {
            write!(f, " signal={sig}")?;
        }
        if let Some(d) = e.delay_ms {
            write!(f, " in={d}ms attempt={}", e.attempt.unwrap_or(0))?;
        }
        if let Some(d) = &e.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

/// `weaver health`: the verdict, then one line per check.
pub fn health(r: &crate::protocol::HealthReport) -> String {
    let mut t = String::new();
    let what = r.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
    let _ = writeln!(t, "{}{what}", if r.healthy { "healthy" } else { "unhealthy" });
    for c in &r.checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        let _ = write!(t, "  {mark} {:<20} {}", c.name, c.state);
        if !c.reason.is_empty() {
            let _ = write!(t, ": {}", c.reason);
        }
        t.push('\n');
    }
    t
}

/// `weaver ls`: the running daemons, one line each.
pub fn daemons(live: &[crate::registry::Entry], now_ms: u64) -> String {
    if live.is_empty() {
        return "no weaver daemon is running\n".to_string();
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>8} {:<10} {:>8} {:<22} {:<30} CONFIG",
        "PID", "VERSION", "UPTIME", "HTTP", "RUNTIME DIR"
    );
    for e in live {
        let _ = writeln!(
            t,
            "{:>8} {:<10} {:>8} {:<22} {:<30} {}",
            e.pid,
            e.version,
            ms_text(now_ms.saturating_sub(e.started_at_ms)),
            e.http.as_deref().unwrap_or("-"),
            e.runtime_dir,
            e.config.as_deref().unwrap_or("-")
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        ComputeState, ComputeStatus, DaemonStatus, EventType, LogLine, LogStream, ProcState,
    };
    use crate::supervise::events::EventKind;

    fn event(kind: EventKind) -> EventRecord {
        EventRecord::of(12, 0, "web.0", &kind)
    }

    #[test]
    fn events_have_one_text_form() {
        assert_eq!(event(EventKind::Started { pid: 41 }).to_string(), "12 web.0 started pid=41");
        assert_eq!(event(EventKind::Exited { code: 1 }).to_string(), "12 web.0 exited code=1");
        assert_eq!(
            event(EventKind::Killed { signal: 9 }).what().to_string(),
            "killed signal=SIGKILL"
        );
        assert_eq!(
            event(EventKind::Restarting { delay_ms: 200, attempt: 2 }).what().to_string(),
            "restarting in=200ms attempt=2"
        );
        assert_eq!(
            event(EventKind::Failed { reason: "gave up".into() }).to_string(),
            "12 web.0 failed: gave up"
        );
        assert_eq!(
            event(EventKind::Hook { hook: "pre_start", ok: true, detail: String::new() })
                .what()
                .to_string(),
            "hook: pre_start ok"
        );
        assert_eq!(event(EventKind::Ready).what().to_string(), "ready");
        let lost = EventRecord::lost(3);
        assert_eq!(lost.event, EventType::Lost);
        assert_eq!(lost.to_string(), "0  lost: 3 event(s) dropped: this subscriber fell behind");
    }

    #[test]
    fn event_json_lines_leave_out_nulls() {
        let line = super::event(&event(EventKind::Exited { code: 3 }), true);
        assert_eq!(
            line,
            "{\"code\":3,\"event\":\"exited\",\"instance\":\"web.0\",\"seq\":12,\"time_ms\":0}\n"
        );
    }

    #[test]
    fn ps_table_pads_states() {
        let row = |name: &str, state| ProcRow {
            name: name.into(),
            process: "web".into(),
            state,
            pid: Some(7),
            restarts: 1,
            next_restart_ms: Some(1500),
            last_exit: Some("exited with code 3".into()),
            uptime_ms: None,
            reason: None,
            gpus: Some(vec![0, 1]),
        };
        let t = ps(&[row("web.0", ProcState::Exited { code: Some(3) })]);
        let mut lines = t.lines();
        assert_eq!(
            lines.next().unwrap(),
            "NAME                 STATE               PID RESTARTS   UPTIME  INFO"
        );
        assert_eq!(
            lines.next().unwrap(),
            "web.0                exited(3)             7        1        -  \
             restart in 1.5s; last: exited with code 3; gpus 0,1"
        );
        assert_eq!(ps(&[]), "no supervised processes (declare them in weaver.toml)\n");
        assert_eq!(
            (ms_text(999), ms_text(119_999), ms_text(180_000)),
            ("999ms".into(), "120.0s".into(), "3m".into())
        );
    }

    #[test]
    fn log_chunks_in_text_and_json() {
        let c = LogChunk {
            instance: "web.0".into(),
            lines: vec![LogLine {
                seq: 5,
                stream: LogStream::Stderr,
                time_ms: 9,
                text: "hi".into(),
            }],
            lost: 2,
            next: 5,
        };
        assert_eq!(
            log_chunk(&c, false),
            "[weaver: 2 line(s) of web.0 were dropped before they could be shown]\nhi\n"
        );
        assert_eq!(
            log_chunk(&c, true),
            "{\"instance\":\"web.0\",\"lost\":2}\n\
             {\"instance\":\"web.0\",\"seq\":5,\"stream\":\"stderr\",\"text\":\"hi\",\"time_ms\":9}\n"
        );
    }

    #[test]
    fn status_control_and_reload_text() {
        let s = StatusReport {
            version: "0.1.0".into(),
            protocol: 2,
            daemon: DaemonStatus {
                pid: 10,
                uptime_ms: 1500,
                runtime_dir: "/run/w".into(),
                log_file: None,
                clients: 1,
                containment: "cgroup /sys/fs/cgroup/weaver-9".into(),
                http: Some("127.0.0.1:9464".into()),
            },
            compute: ComputeStatus {
                pid: None,
                state: ComputeState::Backoff,
                bin: "/bin/c".into(),
                workers: None,
                restarts: 2,
                hangs: 0,
                in_flight: 0,
                queued: 0,
                served: 0,
                errors: 0,
                cancelled: 0,
                timed_out: 0,
                busy_rejected: 0,
                dropped_late: 0,
                last_exit: None,
                last_error: None,
                next_restart_ms: Some(250),
            },
        };
        let t = status(&s);
        assert!(t.contains("compute  backoff, no process, 2 restart(s), bin /bin/c\n"), "{t}");
        assert!(t.ends_with("         next start in 250 ms\n"), "{t}");
        assert!(t.contains("         http http://127.0.0.1:9464 (/health, /ready, /metrics)\n"));
        assert_eq!(control(Verb::Stop, &[], false), "stopping: nothing\n");
        assert_eq!(
            control(Verb::Start, &["a.0".into(), "b.0".into()], true),
            "[\"a.0\",\"b.0\"]\n"
        );
        let r = ReloadReport {
            config: None,
            applied: false,
            added: vec!["x".into()],
            removed: vec![],
            changed: vec![],
            unchanged: vec![],
            compute_changed: true,
        };
        assert_eq!(
            reload(&r),
            "reload plan (dry run, nothing changed): no configuration file\n  added     x\n  \
             removed   -\n  changed   -\n  unchanged -\n  compute   changed\n"
        );
    }
}
