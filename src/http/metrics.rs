//! `/metrics`: the Prometheus text exposition format (0.0.4) from a
//! [`Snapshot`]. Every family has its HELP and TYPE once, then its
//! samples; label values are escaped (backslash, quote, newline).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Snapshot;
use crate::daemon::tally::BUCKETS;
use crate::protocol::{ComputeState, ProcState};

/// The families, in order, with their type and help.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(k);
                self.text.push_str("=\"");
                escape(v, &mut self.text);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        if value.is_infinite() {
            self.text.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(self.text, "{value}");
        }
        self.text.push('\n');
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value as the format wants it.
pub fn escape(v: &str, out: &mut String) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

const COMPUTE_STATES: [ComputeState; 7] = [
    ComputeState::Starting,
    ComputeState::Ready,
    ComputeState::Exiting,
    ComputeState::Backoff,
    ComputeState::Stopping,
    ComputeState::Stopped,
    ComputeState::Failed,
];

/// A process state's label: its name without the code or signal.
fn state_label(s: ProcState) -> &'static str {
    match s {
        ProcState::Stopped => "stopped",
        ProcState::Waiting => "waiting",
        ProcState::Starting => "starting",
        ProcState::Running => "running",
        ProcState::Ready => "ready",
        ProcState::Stopping => "stopping",
        ProcState::Exited { .. } => "exited",
        ProcState::Killed { .. } => "killed",
        ProcState::Failed => "failed",
    }
}

/// The code in "exited with code N".
fn exit_code(last_exit: Option<&str>) -> Option<i32> {
    last_exit?.strip_prefix("exited with code ")?.trim().parse().ok()
}

pub fn render(s: &Snapshot) -> String {
    let mut o = Out { text: String::with_capacity(4096 + s.procs.len() * 600) };
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    o.one("weaver_up", "gauge", "1 while the weaver daemon serves.", 1.0);
    o.family("weaver_build_info", "gauge", "The weaver release, as a label.");
    o.sample("weaver_build_info", &[("version", &s.version)], 1.0);
    o.one(
        "weaver_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        s.uptime.as_secs_f64(),
    );
    o.one(
        "weaver_ready",
        "gauge",
        "1 once start-up ordering has finished, 0 before and while stopping.",
        b(super::health::ready(s).ready),
    );
    let healthy = super::health::report(s, None).is_some_and(|r| r.healthy);
    o.one("weaver_healthy", "gauge", "1 when every /health check passes.", b(healthy));
    o.one("weaver_http_connections", "gauge", "Open HTTP connections.", s.http_connections as f64);

    let c = &s.compute;
    o.one(
        "weaver_compute_up",
        "gauge",
        "1 while compute is connected and serving.",
        b(c.state == ComputeState::Ready),
    );
    o.family(
        "weaver_compute_state",
        "gauge",
        "The compute daemon's state (1 for the current one).",
    );
    for st in COMPUTE_STATES {
        o.sample("weaver_compute_state", &[("state", st.as_str())], b(c.state == st));
    }
    o.one(
        "weaver_compute_restarts_total",
        "counter",
        "Times compute was started again.",
        c.restarts as f64,
    );
    o.one(
        "weaver_compute_hangs_total",
        "counter",
        "Times compute was found hung and restarted.",
        c.hangs as f64,
    );
    o.one(
        "weaver_compute_requests_in_flight",
        "gauge",
        "Requests sent to compute and not yet answered.",
        c.in_flight as f64,
    );
    o.one(
        "weaver_compute_requests_queued",
        "gauge",
        "Requests waiting in weaver for compute.",
        c.queued as f64,
    );
    o.family("weaver_compute_requests_total", "counter", "Compute requests by op and outcome.");
    for ((op, outcome), n) in s.tally.requests() {
        o.sample("weaver_compute_requests_total", &[("op", op), ("outcome", outcome)], n as f64);
    }
    let h = "weaver_compute_request_duration_seconds";
    o.family(h, "histogram", "Time from taking a compute request to answering it.");
    let mut cumulative = 0;
    for (i, n) in s.tally.buckets.iter().enumerate() {
        cumulative += n;
        let le = BUCKETS.get(i).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        o.sample(&format!("{h}_bucket"), &[("le", &le)], cumulative as f64);
    }
    o.sample(&format!("{h}_sum"), &[], s.tally.sum_secs);
    o.sample(&format!("{h}_count"), &[], s.tally.count as f64);

    let procs = &s.procs;
    let fam = [
        ("weaver_process_state", "gauge", "A supervised instance's state (1, labelled with it)."),
        ("weaver_process_up", "gauge", "1 while the instance runs (running or ready)."),
        ("weaver_process_ready", "gauge", "1 while the instance is ready."),
        (
            "weaver_process_restarts_total",
            "counter",
            "Automatic restarts and retries of the instance.",
        ),
        (
            "weaver_process_uptime_seconds",
            "gauge",
            "Seconds since the instance's process was spawned.",
        ),
        ("weaver_process_last_exit_code", "gauge", "The exit code of the instance's last run."),
    ];
    for (i, (name, kind, help)) in fam.iter().enumerate() {
        o.family(name, kind, help);
        for p in procs {
            let r = &p.row;
            let l = [("instance", r.name.as_str()), ("process", r.process.as_str())];
            match i {
                0 => o.sample(name, &[l[0], l[1], ("state", state_label(r.state))], 1.0),
                1 => {
                    o.sample(name, &l, b(matches!(r.state, ProcState::Running | ProcState::Ready)))
                }
                2 => o.sample(name, &l, b(r.state == ProcState::Ready)),
                3 => o.sample(name, &l, r.restarts as f64),
                4 => {
                    if let Some(ms) = r.uptime_ms {
                        o.sample(name, &l, ms as f64 / 1000.0)
                    }
                }
                _ => {
                    if let Some(code) = exit_code(r.last_exit.as_deref()) {
                        o.sample(name, &l, code as f64)
                    }
                }
            }
        }
    }

    let mut by_target: BTreeMap<&str, u64> = BTreeMap::new();
    for w in s.weavelets.iter().filter(|w| w.connected) {
        *by_target.entry(&w.target).or_default() += 1;
    }
    o.family("weaver_weavelets_connected", "gauge", "Weavelets connected, by target.");
    for (t, n) in &by_target {
        o.sample("weaver_weavelets_connected", &[("target", t)], *n as f64);
    }
    o.family(
        "weaver_weavelet_lag_revisions",
        "gauge",
        "Revisions a connected weavelet is behind its target.",
    );
    for w in s.weavelets.iter().filter(|w| w.connected) {
        let id = w.id.to_string();
        let who = w.instance.as_deref().or(w.name.as_deref()).unwrap_or(&id);
        o.sample(
            "weaver_weavelet_lag_revisions",
            &[("target", &w.target), ("weavelet", who), ("id", &id)],
            w.lag as f64,
        );
    }
    if let Some(f) = &s.fleet {
        o.one(
            "weaver_fleet_connected",
            "gauge",
            "1 while the fleet link is connected to a NATS server.",
            b(f.connected),
        );
        o.one(
            "weaver_fleet_synced",
            "gauge",
            "1 while this host has the fleet's latest configuration and changes flow.",
            b(f.synced),
        );
        o.one(
            "weaver_fleet_revision",
            "gauge",
            "The last fleet revision this host has seen (the key-value bucket's sequence).",
            f.revision as f64,
        );
        o.one(
            "weaver_fleet_watch_restarts_total",
            "counter",
            "Times the watch of the fleet's bucket was started again.",
            f.watch_restarts as f64,
        );
        if let Some(us) = f.rtt_us {
            o.one(
                "weaver_fleet_rtt_seconds",
                "gauge",
                "The round trip of the last PING to the NATS server.",
                us as f64 / 1e6,
            );
        }
    }
    o.text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::sample;

    #[test]
    fn families_have_help_and_type_once_and_labels_are_escaped() {
        let mut s = sample();
        s.procs[1].row.name = "we\"ird\\na\nme".into();
        s.tally.record("echo", "ok", Some(std::time::Duration::from_millis(2)));
        let w = |id, connected, lag| crate::protocol::WeaveletRow {
            id,
            target: "trainer".into(),
            instance: Some(format!("trainer.{id}")),
            name: None,
            pid: 9,
            connected,
            applied: Some(1),
            current: 1 + lag,
            lag,
            step: None,
            rejected: None,
            metrics: "{}".into(),
        };
        s.weavelets = vec![w(1, true, 0), w(2, true, 3), w(3, false, 9)];
        let text = render(&s);
        assert!(text.contains("weaver_up 1\n"));
        assert!(text.contains("weaver_compute_state{state=\"ready\"} 1\n"));
        assert!(text.contains("weaver_compute_requests_total{op=\"echo\",outcome=\"ok\"} 1\n"));
        assert!(text.contains("weaver_compute_request_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("weaver_compute_request_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("weaver_compute_request_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains(r#"instance="we\"ird\\na\nme""#), "{text}");
        assert!(text.contains("weaver_weavelets_connected{target=\"trainer\"} 2\n"), "{text}");
        assert!(text.contains(
            "weaver_weavelet_lag_revisions{target=\"trainer\",weavelet=\"trainer.2\",id=\"2\"} 3\n"
        ));
        assert!(!text.contains("trainer.3"), "a gone weavelet has no lag");
        assert!(!text.contains("weaver_fleet"), "no fleet configured, no fleet metrics");
        assert!(
            text.contains("weaver_process_last_exit_code{instance=\"web.0\",process=\"web\"} 3\n")
        );
        let mut seen = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(seen.insert(line.to_string()), "twice: {line}");
        }
        // Every sample line is `name[{labels}] value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn the_fleet_link_has_its_metrics_when_configured() {
        let mut s = sample();
        s.fleet = Some(crate::protocol::FleetReport {
            configured: true,
            node: "gpu-7".into(),
            servers: "nats://127.0.0.1:4222".into(),
            server: Some("nats://127.0.0.1:4222".into()),
            connected: true,
            since_ms: 1,
            rtt_us: Some(250),
            synced: false,
            revision: 42,
            cache_saved_ms: 0,
            bucket: "weaver_config".into(),
            status_bucket: "weaver_status".into(),
            last_error: None,
            watch_restarts: 3,
        });
        let text = render(&s);
        assert!(text.contains("weaver_fleet_connected 1\n"), "{text}");
        assert!(text.contains("weaver_fleet_synced 0\n"), "{text}");
        assert!(text.contains("weaver_fleet_revision 42\n"), "{text}");
        assert!(text.contains("weaver_fleet_watch_restarts_total 3\n"), "{text}");
        assert!(text.contains("weaver_fleet_rtt_seconds 0.00025\n"), "{text}");
    }
}
