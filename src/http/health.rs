//! Health and readiness from a [`Snapshot`]: the checks `/health`,
//! `/health/NAME`, `/ready` and `weaver health` answer with.

use serde::Serialize;

use super::Snapshot;
use crate::protocol::{ComputeState, HealthCheck, HealthReport, ProcState};

/// `/ready`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ready {
    pub ready: bool,
    pub reason: String,
}

fn check(name: &str, ok: bool, state: impl ToString, reason: impl Into<String>) -> HealthCheck {
    HealthCheck {
        name: name.to_string(),
        ok,
        state: state.to_string(),
        reason: if ok { String::new() } else { reason.into() },
    }
}

/// The checks of the whole daemon (`name: None`): the daemon serves,
/// compute is ready, and each instance with a ready probe is ready. Of one
/// process or instance: each of its instances is ready (with a probe) or
/// up (without). `None` when no process or instance has that name.
pub fn report(s: &Snapshot, name: Option<&str>) -> Option<HealthReport> {
    let mut checks = Vec::new();
    match name {
        None => {
            let state = if s.stopping { "stopping" } else { "serving" };
            checks.push(check("daemon", !s.stopping, state, "weaver is stopping"));
            let c = &s.compute;
            let why = c
                .last_error
                .clone()
                .or_else(|| c.last_exit.clone().map(|e| format!("it {e}")))
                .map(|w| format!("compute is {}: {w}", c.state))
                .unwrap_or_else(|| format!("compute is {}", c.state));
            checks.push(check("compute", c.state == ComputeState::Ready, c.state, why));
            for p in s.procs.iter().filter(|p| p.ready_probe) {
                checks.push(instance(&p.row, true));
            }
        }
        Some(n) => {
            for p in s.procs.iter().filter(|p| p.row.name == n || p.row.process == n) {
                checks.push(instance(&p.row, p.ready_probe));
            }
            if checks.is_empty() {
                return None;
            }
        }
    }
    let healthy = checks.iter().all(|c| c.ok);
    Some(HealthReport { healthy, name: name.map(str::to_string), checks })
}

/// One instance: ready by its probe, or (without one) up.
fn instance(r: &crate::protocol::ProcRow, probe: bool) -> HealthCheck {
    let ok = match r.state {
        ProcState::Ready => true,
        ProcState::Running => !probe,
        _ => false,
    };
    let reason = match (&r.reason, r.state) {
        (Some(why), _) => format!("{} is {}: {why}", r.name, r.state),
        (None, ProcState::Running) => {
            format!("{} is running but its ready probe has not passed", r.name)
        }
        (None, st) => match &r.last_exit {
            Some(e) if !matches!(st, ProcState::Starting | ProcState::Waiting) => {
                format!("{} is {st} (last run {e})", r.name)
            }
            _ => format!("{} is {st}", r.name),
        },
    };
    check(&r.name, ok, r.state, reason)
}

/// `/ready`: once start-up ordering has finished, until weaver stops.
pub fn ready(s: &Snapshot) -> Ready {
    let (ready, reason) = match (s.stopping, s.started_up) {
        (true, _) => (false, "weaver is stopping"),
        (false, false) => (false, "processes are still being started in order"),
        (false, true) => (true, ""),
    };
    Ready { ready, reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::sample;

    #[test]
    fn healthy_when_everything_is_and_each_failure_names_itself() {
        let s = sample();
        let r = report(&s, None).unwrap();
        assert!(r.healthy, "{r:?}");
        let names: Vec<_> = r.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["daemon", "compute", "web.0"], "job has no probe: not a check");

        let mut s = sample();
        s.compute.state = ComputeState::Backoff;
        s.compute.last_exit = Some("was killed by SIGKILL".into());
        let r = report(&s, None).unwrap();
        assert!(!r.healthy);
        let c = r.checks.iter().find(|c| c.name == "compute").unwrap();
        assert_eq!((c.ok, c.state.as_str()), (false, "backoff"));
        assert!(c.reason.contains("SIGKILL"), "{}", c.reason);

        let mut s = sample();
        s.procs[0].row.state = ProcState::Running;
        let r = report(&s, None).unwrap();
        assert!(!r.healthy);
        assert!(r.checks[2].reason.contains("ready probe"), "{}", r.checks[2].reason);

        let mut s = sample();
        s.stopping = true;
        assert!(!report(&s, None).unwrap().healthy);
    }

    #[test]
    fn one_name_is_a_process_or_an_instance() {
        let s = sample();
        let r = report(&s, Some("web")).unwrap();
        assert_eq!((r.healthy, r.checks.len()), (true, 1));
        assert!(report(&s, Some("job")).unwrap().healthy, "running, no probe: healthy");
        assert!(report(&s, Some("web.0")).is_some());
        assert!(report(&s, Some("nope")).is_none());
        let mut s = sample();
        s.procs[1].row.state = ProcState::Failed;
        s.procs[1].row.reason = Some("gave up after 3 retries".into());
        let r = report(&s, Some("job")).unwrap();
        assert!(!r.healthy);
        assert!(r.checks[0].reason.contains("gave up"), "{:?}", r.checks);
    }

    #[test]
    fn ready_after_start_up_until_stopping() {
        let mut s = sample();
        assert!(ready(&s).ready);
        s.started_up = false;
        assert!(!ready(&s).ready);
        s.started_up = true;
        s.stopping = true;
        assert_eq!(ready(&s).reason, "weaver is stopping");
    }
}
