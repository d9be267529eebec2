//! What a run is asked to do and what it reports, in the form both the
//! control protocol (postcard) and `weaver run --json` (JSON) carry; the
//! critical path; the exit code.

use serde::{Deserialize, Serialize};

/// How the jobs of a run are ordered (see `sched.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    Graph,
    Sequential,
    Parallel,
}

/// `weaver run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReq {
    /// Job names (none: all); what they need comes too.
    pub jobs: Vec<String>,
    pub mode: RunMode,
    /// `None`: the daemon's CPU count.
    pub max_parallel: Option<u32>,
    pub keep_going: bool,
    /// Answer with the run id at once; the run does not end with this
    /// connection.
    pub detach: bool,
}

/// Where a job of a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running,
    Passed,
    Failed,
    Skipped,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Passed => "passed",
            JobState::Failed => "failed",
            JobState::Skipped => "skipped",
            JobState::Cancelled => "cancelled",
        }
    }

    /// It will not change any more.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Pending | JobState::Running)
    }
}

/// One job of a run, as it is now (sent at each change) or as it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub name: String,
    pub state: JobState,
    pub allow_failure: bool,
    pub pid: Option<u32>,
    /// Its exit code; 124 when its timeout ended it.
    pub code: Option<i32>,
    /// The signal that ended it ("SIGKILL").
    pub signal: Option<String>,
    /// Its `timeout` ended it.
    pub timed_out: bool,
    /// Skipped: the job because of which; failed to start: why.
    pub because: Option<String>,
    /// The job whose end made room for this one to start.
    pub started_by: Option<String>,
    /// Milliseconds from the start of the run to its start.
    pub start_ms: Option<u64>,
    /// How long it ran (so far, while running).
    pub duration_ms: Option<u64>,
    /// The last lines of its stderr (failed jobs).
    pub stderr_tail: Vec<String>,
}

impl JobResult {
    pub fn pending(name: &str, allow_failure: bool) -> JobResult {
        JobResult {
            name: name.into(),
            state: JobState::Pending,
            allow_failure,
            pid: None,
            code: None,
            signal: None,
            timed_out: false,
            because: None,
            started_by: None,
            start_ms: None,
            duration_ms: None,
            stderr_tail: Vec::new(),
        }
    }

    /// Milliseconds from the start of the run to its end, if it ran.
    pub fn end_ms(&self) -> Option<u64> {
        Some(self.start_ms? + self.duration_ms?)
    }
}

/// A run: as it goes (`finished: false`) or as it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub id: u64,
    pub mode: RunMode,
    pub finished: bool,
    /// It was cancelled (Ctrl-C, its command's connection gone, weaver
    /// stopping).
    pub cancelled: bool,
    /// Wall-clock milliseconds since the Unix epoch when it started.
    pub started_at_ms: u64,
    pub duration_ms: u64,
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub cancelled_jobs: u32,
    /// The chain of jobs that decided the wall time, first to last.
    pub critical_path: Vec<String>,
    /// In declaration order.
    pub jobs: Vec<JobResult>,
}

impl RunReport {
    /// Count the jobs and find the critical path.
    pub fn tally(&mut self) {
        let count = |s: JobState| self.jobs.iter().filter(|j| j.state == s).count() as u32;
        self.passed = count(JobState::Passed);
        self.failed = count(JobState::Failed);
        self.skipped = count(JobState::Skipped);
        self.cancelled_jobs = count(JobState::Cancelled);
        self.critical_path = critical_path(&self.jobs);
    }

    /// Some job failed without `allow_failure`.
    pub fn failed_hard(&self) -> bool {
        self.jobs.iter().any(|j| j.state == JobState::Failed && !j.allow_failure)
    }

    /// `weaver run`'s exit code: 0 when no job failed without
    /// `allow_failure`, 1 when one did, 130 when the run was cancelled.
    pub fn exit_code(&self) -> i32 {
        if self.cancelled {
            130
        } else if self.failed_hard() {
            1
        } else {
            0
        }
    }
}

/// The chain of jobs that decided the wall time: from the job that ended
/// last, back through the job whose end let each one start (`started_by`),
/// returned first to last. Empty when no job ran.
pub fn critical_path(jobs: &[JobResult]) -> Vec<String> {
    let last =
        jobs.iter().enumerate().filter_map(|(i, j)| Some((j.end_ms()?, i))).max().map(|(_, i)| i);
    let mut path = Vec::new();
    let mut at = last;
    while let Some(i) = at {
        if path.contains(&jobs[i].name) || path.len() > jobs.len() {
            break;
        }
        path.push(jobs[i].name.clone());
        at = jobs[i]
            .started_by
            .as_ref()
            .and_then(|n| jobs.iter().position(|j| &j.name == n && j.end_ms().is_some()));
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(name: &str, start: u64, dur: u64, by: Option<&str>) -> JobResult {
        JobResult {
            state: JobState::Passed,
            start_ms: Some(start),
            duration_ms: Some(dur),
            started_by: by.map(Into::into),
            ..JobResult::pending(name, false)
        }
    }

    #[test]
    fn the_critical_path_follows_what_started_what_from_the_last_end() {
        // fetch 0-100; convert 100-600; lint 100-150; bench 600-700.
        let jobs = vec![
            ran("fetch", 0, 100, None),
            ran("convert", 100, 500, Some("fetch")),
            ran("lint", 100, 50, Some("fetch")),
            ran("bench", 600, 100, Some("convert")),
            JobResult { state: JobState::Skipped, ..JobResult::pending("docs", false) },
        ];
        assert_eq!(critical_path(&jobs), ["fetch", "convert", "bench"]);
        assert_eq!(critical_path(&jobs[..3]), ["fetch", "convert"]);
        assert!(critical_path(&jobs[4..]).is_empty());
    }

    #[test]
    fn counts_and_exit_codes() {
        let mut r = RunReport {
            id: 1,
            mode: RunMode::Graph,
            finished: true,
            cancelled: false,
            started_at_ms: 0,
            duration_ms: 700,
            passed: 0,
            failed: 0,
            skipped: 0,
            cancelled_jobs: 0,
            critical_path: vec![],
            jobs: vec![
                ran("a", 0, 10, None),
                JobResult { state: JobState::Failed, ..JobResult::pending("b", true) },
            ],
        };
        r.tally();
        assert_eq!((r.passed, r.failed, r.skipped, r.exit_code()), (1, 1, 0, 0));
        r.jobs[1].allow_failure = false;
        assert_eq!(r.exit_code(), 1);
        r.cancelled = true;
        assert_eq!(r.exit_code(), 130);
    }
}
