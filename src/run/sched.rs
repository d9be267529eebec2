//! Which job starts when: the selection of a run, its order, and the
//! three modes, as a plain state machine over job indices.
//!
//! - **graph** (default): every job whose dependencies passed starts at
//!   once, up to `max_parallel`, in declaration order; a job whose
//!   dependency failed (without `allow_failure`), was skipped or was
//!   cancelled is skipped, naming that dependency.
//! - **sequential**: one job at a time in declaration order (a job still
//!   comes after what it needs); the first failure without
//!   `allow_failure` skips everything after it, unless `keep_going`.
//! - **parallel**: `after` is ignored; every job starts at once, up to
//!   `max_parallel`.
//!
//! Each start records the job whose end made room for it (`trigger`):
//! following those links back from the last job to end gives the chain
//! that decided the wall time (the critical path, `report.rs`).

use std::collections::{BTreeSet, HashMap};

use super::report::RunMode;
use super::spec::JobSpec;

/// How a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub mode: RunMode,
    /// At least 1.
    pub max_parallel: usize,
    /// Sequential mode: go on after a failure.
    pub keep_going: bool,
}

/// Where a job of the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Pending,
    Running,
    Passed,
    Failed,
    /// Not run because of this job (a dependency that did not pass, or in
    /// sequential mode the failure that stopped the run).
    Skipped(usize),
    /// Cancelled before it started, or stopped by the cancellation.
    Cancelled,
}

/// What to do after a step: jobs to start (in this order) and jobs now
/// skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    pub start: Vec<usize>,
    pub skip: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    names: Vec<String>,
    /// `deps[i]`: the jobs `i` needs (indices into this run).
    deps: Vec<Vec<usize>>,
    allow_failure: Vec<bool>,
    /// Dependencies first, otherwise declaration order.
    order: Vec<usize>,
    state: Vec<Slot>,
    trigger: Vec<Option<usize>>,
    opts: Options,
    running: usize,
    /// Sequential mode: the failure that stopped the run.
    halted_by: Option<usize>,
    cancelled: bool,
}

/// The jobs a run of `wanted` (job names; none: all) takes: those and
/// everything they need, as indices into `jobs`, in declaration order.
/// `Err` names what is not a job.
pub fn select(jobs: &[JobSpec], wanted: &[String]) -> Result<Vec<usize>, String> {
    let by_name: HashMap<&str, usize> =
        jobs.iter().enumerate().map(|(i, j)| (j.name.as_str(), i)).collect();
    if wanted.is_empty() {
        return Ok((0..jobs.len()).collect());
    }
    let mut unknown = Vec::new();
    let mut todo = Vec::new();
    for w in wanted {
        match by_name.get(w.as_str()) {
            Some(&i) => todo.push(i),
            None => unknown.push(format!("{w:?}")),
        }
    }
    if !unknown.is_empty() {
        let mut known: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        known.sort_unstable();
        let known = if known.is_empty() {
            "weaver.toml declares no [[job]]".to_string()
        } else {
            format!("jobs: {}", known.join(", "))
        };
        return Err(format!("no job named {}; {known}", unknown.join(", ")));
    }
    let mut seen = BTreeSet::new();
    while let Some(i) = todo.pop() {
        if seen.insert(i) {
            todo.extend(jobs[i].after.iter().filter_map(|d| by_name.get(d.as_str()).copied()));
        }
    }
    Ok(seen.into_iter().collect())
}

impl Schedule {
    /// A run of exactly `jobs` (as [`select`] picks them), nothing started.
    /// `after` names outside `jobs` are ignored; `Err` for a cycle (the
    /// configuration check refuses those first).
    pub fn new(jobs: &[&JobSpec], opts: Options) -> Result<Schedule, String> {
        let by_name: HashMap<&str, usize> =
            jobs.iter().enumerate().map(|(i, j)| (j.name.as_str(), i)).collect();
        let deps: Vec<Vec<usize>> = jobs
            .iter()
            .map(|j| {
                let mut d: Vec<usize> =
                    j.after.iter().filter_map(|n| by_name.get(n.as_str()).copied()).collect();
                d.sort_unstable();
                d.dedup();
                d
            })
            .collect();
        let order = topological(&deps).ok_or_else(|| {
            "the jobs' `after` lists make a cycle; fix weaver.toml and reload".to_string()
        })?;
        let n = jobs.len();
        Ok(Schedule {
            names: jobs.iter().map(|j| j.name.clone()).collect(),
            deps,
            allow_failure: jobs.iter().map(|j| j.allow_failure).collect(),
            order,
            state: vec![Slot::Pending; n],
            trigger: vec![None; n],
            opts: Options { max_parallel: opts.max_parallel.max(1), ..opts },
            running: 0,
            halted_by: None,
            cancelled: false,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn slot(&self, i: usize) -> Slot {
        self.state[i]
    }

    /// The job whose end made room for `i` to start (`None`: it started
    /// with the run, or has not started).
    pub fn trigger(&self, i: usize) -> Option<usize> {
        self.trigger[i]
    }

    pub fn allow_failure(&self, i: usize) -> bool {
        self.allow_failure[i]
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled
    }

    /// Nothing runs and nothing waits: the run is over.
    pub fn done(&self) -> bool {
        self.running == 0 && !self.state.contains(&Slot::Pending)
    }

    /// The first step: what starts with the run (and what is skipped at
    /// once).
    pub fn begin(&mut self) -> Step {
        self.advance(None)
    }

    /// Job `i` ended (`ok`: exit code 0). A job that ends after the run was
    /// cancelled counts as cancelled unless it passed.
    pub fn finished(&mut self, i: usize, ok: bool) -> Step {
        if self.state[i] != Slot::Running {
            return Step::default();
        }
        self.running -= 1;
        self.state[i] = match (ok, self.cancelled) {
            (true, _) => Slot::Passed,
            (false, true) => Slot::Cancelled,
            (false, false) => Slot::Failed,
        };
        let stops = self.opts.mode == RunMode::Sequential && !self.opts.keep_going;
        if !ok && !self.allow_failure[i] && stops && self.halted_by.is_none() {
            self.halted_by = Some(i);
        }
        self.advance(Some(i))
    }

    /// Cancel the run: every pending job is cancelled; returns the jobs
    /// still running (to be stopped).
    pub fn cancel(&mut self) -> Vec<usize> {
        self.cancelled = true;
        for s in &mut self.state {
            if *s == Slot::Pending {
                *s = Slot::Cancelled;
            }
        }
        (0..self.len()).filter(|&i| self.state[i] == Slot::Running).collect()
    }

    /// A dependency of `i` that ended without passing (and without
    /// `allow_failure`).
    fn bad_dep(&self, i: usize) -> Option<usize> {
        self.deps[i].iter().copied().find(|&d| match self.state[d] {
            Slot::Failed => !self.allow_failure[d],
            Slot::Skipped(_) | Slot::Cancelled => true,
            Slot::Pending | Slot::Running | Slot::Passed => false,
        })
    }

    /// Every dependency of `i` passed (or failed with `allow_failure`).
    fn deps_done(&self, i: usize) -> bool {
        self.deps[i].iter().all(|&d| match self.state[d] {
            Slot::Passed => true,
            Slot::Failed => self.allow_failure[d],
            _ => false,
        })
    }

    fn start(&mut self, i: usize, trigger: Option<usize>, step: &mut Step) {
        self.state[i] = Slot::Running;
        self.running += 1;
        self.trigger[i] = trigger;
        step.start.push(i);
    }

    fn skip(&mut self, i: usize, because: usize, step: &mut Step) {
        self.state[i] = Slot::Skipped(because);
        step.skip.push(i);
    }

    fn advance(&mut self, trigger: Option<usize>) -> Step {
        let mut step = Step::default();
        if self.cancelled {
            return step;
        }
        let order = std::mem::take(&mut self.order);
        for &i in &order {
            if self.state[i] != Slot::Pending {
                continue;
            }
            match self.opts.mode {
                RunMode::Sequential => {
                    if let Some(h) = self.halted_by {
                        self.skip(i, h, &mut step);
                    } else if let Some(d) = self.bad_dep(i) {
                        self.skip(i, d, &mut step);
                    } else {
                        if self.running == 0 {
                            self.start(i, trigger, &mut step);
                        }
                        break;
                    }
                }
                RunMode::Graph => {
                    if let Some(d) = self.bad_dep(i) {
                        self.skip(i, d, &mut step);
                    } else if self.deps_done(i) && self.running < self.opts.max_parallel {
                        self.start(i, trigger, &mut step);
                    }
                }
                RunMode::Parallel => {
                    if self.running < self.opts.max_parallel {
                        self.start(i, trigger, &mut step);
                    }
                }
            }
        }
        self.order = order;
        step
    }
}

/// A topological order of `deps` (dependencies first), the lowest index
/// first among those free to go; `None` for a cycle.
fn topological(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    let n = deps.len();
    let mut missing: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            dependents[j].push(i);
        }
    }
    let mut free: BTreeSet<usize> = (0..n).filter(|&i| missing[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = free.pop_first() {
        order.push(i);
        for &k in &dependents[i] {
            missing[k] -= 1;
            if missing[k] == 0 {
                free.insert(k);
            }
        }
    }
    (order.len() == n).then_some(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: RunMode, max_parallel: usize) -> Options {
        Options { mode, max_parallel, keep_going: false }
    }

    /// fetch; convert and lint after fetch; bench after both.
    fn diamond() -> Vec<JobSpec> {
        vec![
            JobSpec::new("fetch", &["true"], &[]),
            JobSpec::new("convert", &["true"], &["fetch"]),
            JobSpec::new("lint", &["true"], &["fetch"]),
            JobSpec::new("bench", &["true"], &["convert", "lint"]),
        ]
    }

    fn sched(jobs: &[JobSpec], o: Options) -> Schedule {
        Schedule::new(&jobs.iter().collect::<Vec<_>>(), o).unwrap()
    }

    fn step(start: &[usize], skip: &[usize]) -> Step {
        Step { start: start.to_vec(), skip: skip.to_vec() }
    }

    #[test]
    fn a_diamond_runs_in_waves_and_records_what_started_what() {
        let jobs = diamond();
        let mut s = sched(&jobs, opts(RunMode::Graph, 8));
        assert_eq!(s.begin(), step(&[0], &[]));
        assert_eq!(s.finished(0, true), step(&[1, 2], &[]));
        assert_eq!(s.finished(2, true), step(&[], &[]), "bench waits for convert");
        assert_eq!(s.finished(1, true), step(&[3], &[]));
        assert!(!s.done());
        assert_eq!(s.finished(3, true), step(&[], &[]));
        assert!(s.done());
        assert_eq!(
            (s.trigger(0), s.trigger(1), s.trigger(2), s.trigger(3)),
            (None, Some(0), Some(0), Some(1))
        );
    }

    #[test]
    fn a_failure_skips_its_dependents_and_theirs_but_not_the_others() {
        let mut jobs = diamond();
        jobs.push(JobSpec::new("other", &["true"], &[]));
        let mut s = sched(&jobs, opts(RunMode::Graph, 8));
        assert_eq!(s.begin(), step(&[0, 4], &[]));
        assert_eq!(s.finished(0, true), step(&[1, 2], &[]));
        assert_eq!(s.finished(1, false), step(&[], &[3]));
        assert_eq!(s.slot(3), Slot::Skipped(1));
        assert!(!s.done(), "lint still runs");
        assert_eq!(s.finished(2, true), step(&[], &[]));
        assert_eq!(s.finished(4, true), step(&[], &[]));
        assert!(s.done());
        // A skip cascades: fetch failing skips convert and lint, then bench.
        let mut s = sched(&diamond(), opts(RunMode::Graph, 8));
        s.begin();
        assert_eq!(s.finished(0, false), step(&[], &[1, 2, 3]));
        assert_eq!(s.slot(3), Slot::Skipped(1));
        assert!(s.done());
    }

    #[test]
    fn allow_failure_lets_dependents_run() {
        let mut jobs = diamond();
        jobs[1].allow_failure = true;
        let mut s = sched(&jobs, opts(RunMode::Graph, 8));
        s.begin();
        s.finished(0, true);
        s.finished(2, true);
        assert_eq!(s.finished(1, false), step(&[3], &[]));
        assert_eq!(s.slot(1), Slot::Failed);
    }

    #[test]
    fn sequential_runs_one_at_a_time_and_stops_at_the_first_failure() {
        let jobs = diamond();
        let mut s = sched(&jobs, opts(RunMode::Sequential, 8));
        assert_eq!(s.begin(), step(&[0], &[]));
        assert_eq!(s.finished(0, true), step(&[1], &[]));
        assert_eq!(s.finished(1, false), step(&[], &[2, 3]));
        assert_eq!(s.slot(2), Slot::Skipped(1), "stopped by convert's failure");
        assert!(s.done());
        // keep_going: lint still runs; bench needs convert, so it is skipped.
        let mut s = sched(&jobs, Options { keep_going: true, ..opts(RunMode::Sequential, 8) });
        s.begin();
        s.finished(0, true);
        assert_eq!(s.finished(1, false), step(&[2], &[]));
        assert_eq!(s.finished(2, true), step(&[], &[3]));
        assert!(s.done());
        // allow_failure does not stop a sequential run.
        let mut jobs = diamond();
        jobs[1].allow_failure = true;
        let mut s = sched(&jobs, opts(RunMode::Sequential, 8));
        s.begin();
        s.finished(0, true);
        assert_eq!(s.finished(1, false), step(&[2], &[]));
    }

    #[test]
    fn sequential_keeps_declaration_order_but_puts_dependencies_first() {
        let jobs = vec![
            JobSpec::new("b", &["true"], &["a"]),
            JobSpec::new("a", &["true"], &[]),
            JobSpec::new("c", &["true"], &[]),
        ];
        let mut s = sched(&jobs, opts(RunMode::Sequential, 8));
        assert_eq!(s.begin(), step(&[1], &[]));
        assert_eq!(s.finished(1, true), step(&[0], &[]));
        assert_eq!(s.finished(0, true), step(&[2], &[]));
    }

    #[test]
    fn parallel_ignores_after_and_max_parallel_bounds_every_mode() {
        let jobs = diamond();
        let mut s = sched(&jobs, opts(RunMode::Parallel, 8));
        assert_eq!(s.begin(), step(&[0, 1, 2, 3], &[]));
        s.finished(0, false);
        assert_eq!(s.slot(3), Slot::Running, "nothing is skipped in parallel mode");
        let mut s = sched(&jobs, opts(RunMode::Parallel, 2));
        assert_eq!(s.begin(), step(&[0, 1], &[]));
        assert_eq!(s.finished(1, true), step(&[2], &[]));
        assert_eq!(s.trigger(2), Some(1), "the end that made room");
        let mut s = sched(&jobs, opts(RunMode::Graph, 1));
        s.begin();
        assert_eq!(s.finished(0, true), step(&[1], &[]), "one slot: convert, then lint");
        assert_eq!(s.finished(1, true), step(&[2], &[]));
        assert_eq!(s.finished(2, true), step(&[3], &[]));
    }

    #[test]
    fn cancel_marks_what_waits_and_names_what_runs() {
        let jobs = diamond();
        let mut s = sched(&jobs, opts(RunMode::Graph, 8));
        s.begin();
        s.finished(0, true);
        assert_eq!(s.cancel(), [1, 2]);
        assert_eq!(s.slot(3), Slot::Cancelled);
        assert_eq!(s.finished(1, false), step(&[], &[]));
        assert_eq!(s.slot(1), Slot::Cancelled);
        assert!(!s.done());
        assert_eq!(s.finished(2, true), step(&[], &[]));
        assert_eq!(s.slot(2), Slot::Passed, "it passed before the stop reached it");
        assert!(s.done());
    }

    #[test]
    fn selection_takes_what_is_needed_and_names_the_unknown() {
        let jobs = diamond();
        assert_eq!(select(&jobs, &["convert".into()]).unwrap(), [0, 1]);
        assert_eq!(select(&jobs, &["bench".into()]).unwrap(), [0, 1, 2, 3]);
        assert_eq!(select(&jobs, &[]).unwrap(), [0, 1, 2, 3]);
        let e = select(&jobs, &["bnech".into()]).unwrap_err();
        assert_eq!(e, "no job named \"bnech\"; jobs: bench, convert, fetch, lint");
        assert!(select(&[], &["x".into()]).unwrap_err().contains("declares no [[job]]"));
        // Dependencies outside the selection are not waited for.
        let picked: Vec<&JobSpec> = vec![&jobs[1]];
        let mut s = Schedule::new(&picked, opts(RunMode::Graph, 1)).unwrap();
        assert_eq!(s.begin(), step(&[0], &[]));
    }

    #[test]
    fn a_cycle_is_refused() {
        let jobs = [JobSpec::new("a", &["true"], &["b"]), JobSpec::new("b", &["true"], &["a"])];
        assert!(Schedule::new(&jobs.iter().collect::<Vec<_>>(), opts(RunMode::Graph, 1))
            .unwrap_err()
            .contains("cycle"));
    }
}
