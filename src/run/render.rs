//! The text of `weaver run` (one line per change, the summary) and
//! `weaver runs`. Pure: values in, strings out.

use super::report::{JobResult, JobState, RunReport};

/// Milliseconds as seconds with two decimals: "1.25s".
pub fn secs(ms: u64) -> String {
    format!("{}.{:02}s", ms / 1000, (ms % 1000) / 10)
}

/// How a job ended, after its state word: "exit 2", "SIGKILL",
/// "timed out (124)", "convert failed".
pub fn how(j: &JobResult) -> String {
    match j.state {
        JobState::Skipped => match &j.because {
            Some(b) => format!("because of {b}"),
            None => String::new(),
        },
        JobState::Failed | JobState::Cancelled | JobState::Passed => {
            let mut parts = Vec::new();
            if j.timed_out {
                parts.push("timed out (124)".to_string());
            } else if let Some(s) = &j.signal {
                parts.push(format!("killed by {s}"));
            } else if let Some(c) = j.code.filter(|&c| c != 0) {
                parts.push(format!("exit {c}"));
            }
            if let (Some(b), None) = (&j.because, j.code) {
                parts.push(b.clone());
            }
            if j.state == JobState::Failed && j.allow_failure {
                parts.push("allowed to fail".into());
            }
            parts.join(", ")
        }
        JobState::Pending | JobState::Running => String::new(),
    }
}

/// One line for a change of state (progress without a terminal).
pub fn change(j: &JobResult) -> String {
    let mut s = format!("{}: {}", j.name, j.state.as_str());
    match j.state {
        JobState::Running => {
            if let Some(pid) = j.pid {
                s.push_str(&format!(" (pid {pid})"));
            }
        }
        JobState::Pending => {}
        _ => {
            if let Some(d) = j.duration_ms {
                s.push_str(&format!(" in {}", secs(d)));
            }
            let h = how(j);
            if !h.is_empty() {
                s.push_str(&format!(" ({h})"));
            }
        }
    }
    s
}

/// The end of a run: each job with its state, duration and why; the
/// totals; the critical path.
pub fn summary(r: &RunReport) -> String {
    let width = r.jobs.iter().map(|j| j.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for j in &r.jobs {
        let dur = j.duration_ms.map(secs).unwrap_or_else(|| "-".into());
        let line = format!("{:<9} {:<width$} {:>8}  {}", j.state.as_str(), j.name, dur, how(j));
        out.push_str(line.trim_end());
        out.push('\n');
        if j.state == JobState::Failed {
            for l in &j.stderr_tail {
                out.push_str(&format!("    | {l}\n"));
            }
        }
    }
    out.push_str(&format!(
        "run {}: {} passed, {} failed, {} skipped, {} cancelled in {}\n",
        r.id,
        r.passed,
        r.failed,
        r.skipped,
        r.cancelled_jobs,
        secs(r.duration_ms)
    ));
    if !r.critical_path.is_empty() {
        let span: u64 = r
            .critical_path
            .iter()
            .filter_map(|n| r.jobs.iter().find(|j| &j.name == n))
            .filter_map(|j| j.duration_ms)
            .sum();
        out.push_str(&format!(
            "critical path: {} ({} of jobs)\n",
            r.critical_path.join(" -> "),
            secs(span)
        ));
    }
    out
}

/// `weaver runs`: one line per run, newest last.
pub fn runs_table(runs: &[RunReport]) -> String {
    if runs.is_empty() {
        return "no runs yet\n".into();
    }
    let mut out = format!(
        "{:>4}  {:<9}  {:>6}  {:>6}  {:>7}  {:>9}  {:>9}  {}\n",
        "ID", "STATE", "PASSED", "FAILED", "SKIPPED", "CANCELLED", "DURATION", "JOBS"
    );
    for r in runs {
        let state = if !r.finished {
            "running"
        } else if r.cancelled {
            "cancelled"
        } else if r.failed_hard() {
            "failed"
        } else {
            "passed"
        };
        let names: Vec<&str> = r.jobs.iter().map(|j| j.name.as_str()).collect();
        out.push_str(&format!(
            "{:>4}  {:<9}  {:>6}  {:>6}  {:>7}  {:>9}  {:>9}  {}\n",
            r.id,
            state,
            r.passed,
            r.failed,
            r.skipped,
            r.cancelled_jobs,
            secs(r.duration_ms),
            names.join(",")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::report::RunMode;

    #[test]
    fn lines_say_what_happened_and_why() {
        let mut j = JobResult::pending("convert", false);
        j.state = JobState::Running;
        j.pid = Some(42);
        assert_eq!(change(&j), "convert: running (pid 42)");
        j.state = JobState::Failed;
        j.code = Some(2);
        j.duration_ms = Some(1250);
        assert_eq!(change(&j), "convert: failed in 1.25s (exit 2)");
        j.timed_out = true;
        j.code = Some(124);
        j.signal = Some("SIGTERM".into());
        assert_eq!(change(&j), "convert: failed in 1.25s (timed out (124))");
        let mut s = JobResult::pending("bench", false);
        s.state = JobState::Skipped;
        s.because = Some("convert".into());
        assert_eq!(change(&s), "bench: skipped (because of convert)");
    }

    #[test]
    fn the_summary_has_totals_stderr_and_the_critical_path() {
        let mut f = JobResult::pending("b", false);
        f.state = JobState::Failed;
        f.code = Some(1);
        f.start_ms = Some(0);
        f.duration_ms = Some(30);
        f.stderr_tail = vec!["boom".into()];
        let mut r = RunReport {
            id: 7,
            mode: RunMode::Graph,
            finished: true,
            cancelled: false,
            started_at_ms: 0,
            duration_ms: 30,
            passed: 0,
            failed: 0,
            skipped: 0,
            cancelled_jobs: 0,
            critical_path: vec![],
            jobs: vec![f],
        };
        r.tally();
        let s = summary(&r);
        assert!(s.contains("failed    b    0.03s  exit 1\n    | boom\n"), "{s}");
        assert!(s.contains("run 7: 0 passed, 1 failed, 0 skipped, 0 cancelled in 0.03s"), "{s}");
        assert!(s.contains("critical path: b (0.03s of jobs)"), "{s}");
        assert!(runs_table(&[r]).contains("   7  failed"));
    }
}
