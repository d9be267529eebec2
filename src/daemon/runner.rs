//! The runner room: `weaver run`. It spawns the jobs a [`Schedule`]
//! (`run/sched.rs`) says to start, with the guarantees of supervised
//! processes (own process group, parent-death signal, the daemon's
//! containment and marker, the guard watching the group), reads their
//! output into a ring per job (`weaver logs JOB`), reaps them, stops them
//! on timeout or cancellation (stop signal, SIGKILL after `stop_timeout`),
//! and tells the run's followers each change. Lifecycle events go out as
//! `Publish` effects, so jobs show in `weaver events` like processes.
//!
//! A run belongs to the connection that asked for it unless detached:
//! when that connection closes, the run is cancelled. Finished runs are
//! kept for `weaver runs` (the last [`KEEP_RUNS`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use log::{debug, info, warn};
use mio::Interest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::daemon::effect::{Effect, Effects, Timer};
use crate::daemon::guard::Guard;
use crate::daemon::procs::{child_command, drain_pipe, wall_ms, Drained, PIPE_READ};
use crate::daemon::token;
use crate::protocol::{ErrorKind, ErrorReply, LogChunk, Response};
use crate::run::sched::{select, Slot};
use crate::run::{JobResult, JobSpec, JobState, Options, RunMode, RunReport, RunReq, Schedule};
use crate::supervise::config::StdinMode;
use crate::supervise::events::EventKind;
use crate::supervise::ring::{LineAssembler, Ring, Stream};
use crate::supervise::rotate::Rotation;
use crate::supervise::Exit;

/// Finished runs kept for `weaver runs` and `--attach`.
pub const KEEP_RUNS: usize = 32;
/// Runs going at once.
pub const MAX_ACTIVE_RUNS: usize = 64;
/// Lines of stderr a failed job's result shows.
const STDERR_TAIL: usize = 5;
/// The exit code a job's timeout gives it (as `timeout(1)` does).
pub const TIMEOUT_CODE: i32 = 124;
/// Variables every job sees.
pub const JOB_ENV: &str = "WEAVER_JOB";
pub const RUN_ENV: &str = "WEAVER_RUN";

/// One stdout or stderr pipe of a job.
#[derive(Debug)]
struct JobPipe {
    run: u64,
    job: usize,
    stream: Stream,
    file: File,
}

/// A job's output: the ring `weaver logs` reads (of its latest run), the
/// line assemblers, and its output file.
#[derive(Debug)]
struct Output {
    ring: Ring,
    lines: [LineAssembler; 2],
    file: Option<(File, PathBuf, Rotation)>,
}

/// One job of a run, as the room tracks it.
#[derive(Debug)]
struct JobRun {
    result: JobResult,
    started: Option<Instant>,
    /// Its pid (and process group) while it runs.
    pid: Option<u32>,
    /// The stop signal was sent (timeout or cancel).
    stopping: bool,
    stderr_tail: VecDeque<String>,
}

#[derive(Debug)]
struct Run {
    id: u64,
    mode: RunMode,
    sched: Schedule,
    /// Indexed like `sched`.
    specs: Vec<JobSpec>,
    jobs: Vec<JobRun>,
    started: Instant,
    started_at_ms: u64,
    /// The `weaver run` connection that owns it (not detached): its
    /// closing cancels the run.
    owner: Option<u64>,
    /// (client, tag) told of every change and of the end.
    followers: Vec<(u64, u64)>,
}

impl Run {
    fn report(&self, now: Instant) -> RunReport {
        let mut r = RunReport {
            id: self.id,
            mode: self.mode,
            finished: self.sched.done(),
            cancelled: self.sched.cancelled(),
            started_at_ms: self.started_at_ms,
            duration_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            passed: 0,
            failed: 0,
            skipped: 0,
            cancelled_jobs: 0,
            critical_path: Vec::new(),
            jobs: self.jobs.iter().map(|j| j.live(now)).collect(),
        };
        r.tally();
        r
    }

    fn tell(&self, resp: Response, fx: &mut Effects) {
        for &(client, tag) in &self.followers {
            fx.push(Effect::Reply { client, tag, resp: resp.clone(), payload: Vec::new() });
        }
    }

    fn tell_job(&self, i: usize, now: Instant, fx: &mut Effects) {
        if !self.followers.is_empty() {
            self.tell(Response::RunJob(self.jobs[i].live(now)), fx);
        }
    }
}

impl JobRun {
    /// The result with the running time so far.
    fn live(&self, now: Instant) -> JobResult {
        let mut r = self.result.clone();
        if let (JobState::Running, Some(t)) = (r.state, self.started) {
            r.duration_ms = Some(now.saturating_duration_since(t).as_millis() as u64);
        }
        r
    }
}

#[derive(Debug, Default)]
pub struct Runner {
    active: BTreeMap<u64, Run>,
    finished: VecDeque<RunReport>,
    /// Never reused.
    next_run: u64,
    /// Running jobs by pid.
    by_pid: HashMap<u32, (u64, usize)>,
    pipes: HashMap<u64, JobPipe>,
    /// Never reused.
    next_pipe: u64,
    /// Pipes left with data after a bounded read.
    pending_pipes: Vec<u64>,
    /// By job name: the output of its latest run.
    outputs: HashMap<String, Output>,
}

fn error(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply { kind, message: message.into() }
}

impl Runner {
    pub fn new() -> Runner {
        Runner { next_run: 1, next_pipe: 1, ..Runner::default() }
    }

    /// No run is going (the daemon may exit).
    pub fn idle(&self) -> bool {
        self.active.is_empty()
    }

    /// Whether job `name` runs now, and if so whether it has a stdin pipe.
    pub fn running_job(&self, name: &str) -> Option<bool> {
        self.active.values().find_map(|run| {
            let i = run.specs.iter().position(|s| s.name == name)?;
            run.jobs[i].pid.map(|_| run.specs[i].stdin == StdinMode::Pipe)
        })
    }

    pub fn owns(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    pub fn has_pending(&self) -> bool {
        !self.pending_pipes.is_empty()
    }

    /// `weaver run`: start a run of `req.jobs` (and what they need) out of
    /// `jobs` (the configuration's), answering `client`'s `tag`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        jobs: &[JobSpec],
        req: RunReq,
        client: u64,
        tag: u64,
        guard: Option<&mut Guard>,
        fx: &mut Effects,
    ) -> Result<u64, ErrorReply> {
        if jobs.is_empty() {
            return Err(error(
                ErrorKind::NotFound,
                "the configuration declares no [[job]]: add [[job]] tables to weaver.toml \
                 and run `weaver reload`",
            ));
        }
        let picked = select(jobs, &req.jobs).map_err(|e| error(ErrorKind::NotFound, e))?;
        let specs: Vec<JobSpec> = picked.iter().map(|&i| jobs[i].clone()).collect();
        for s in &specs {
            if let Some(r) = self.active.values().find(|r| r.specs.iter().any(|o| o.name == s.name))
            {
                if r.jobs.iter().any(|j| j.result.name == s.name && !j.result.state.is_final()) {
                    return Err(error(
                        ErrorKind::Busy,
                        format!(
                            "job {:?} is already part of run {} that is still going; wait for \
                             it (`weaver run --attach {}`) or cancel it",
                            s.name, r.id, r.id
                        ),
                    ));
                }
            }
        }
        if self.active.len() >= MAX_ACTIVE_RUNS {
            return Err(error(
                ErrorKind::Busy,
                format!("{MAX_ACTIVE_RUNS} runs are going already; wait for one to end"),
            ));
        }
        let max_parallel = match req.max_parallel {
            Some(0) => {
                return Err(error(ErrorKind::BadRequest, "--max-parallel must be at least 1"))
            }
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let opts = Options { mode: req.mode, max_parallel, keep_going: req.keep_going };
        let sched = Schedule::new(&specs.iter().collect::<Vec<_>>(), opts)
            .map_err(|e| error(ErrorKind::BadConfig, e))?;
        // Output is kept for the jobs the configuration declares (and those
        // still going): memory stays bounded across reloads.
        let going: Vec<String> =
            self.active.values().flat_map(|r| r.specs.iter().map(|s| s.name.clone())).collect();
        self.outputs.retain(|n, _| jobs.iter().any(|j| &j.name == n) || going.contains(n));
        let id = self.next_run;
        self.next_run += 1;
        let jobs: Vec<JobRun> = specs
            .iter()
            .map(|s| JobRun {
                result: JobResult::pending(&s.name, s.allow_failure),
                started: None,
                pid: None,
                stopping: false,
                stderr_tail: VecDeque::new(),
            })
            .collect();
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        info!("run {id}: {} job(s), {:?}, at most {max_parallel} at once", names.len(), req.mode);
        fx.push(Effect::Reply {
            client,
            tag,
            resp: Response::RunStarted { id, jobs: names },
            payload: Vec::new(),
        });
        let run = Run {
            id,
            mode: req.mode,
            sched,
            specs,
            jobs,
            started: Instant::now(),
            started_at_ms: wall_ms(),
            owner: (!req.detach).then_some(client),
            followers: if req.detach { Vec::new() } else { vec![(client, tag)] },
        };
        self.active.insert(id, run);
        let step = self.active.get_mut(&id).expect("inserted").sched.begin();
        self.step(id, step, guard, fx);
        Ok(id)
    }

    /// `weaver run --attach ID`.
    pub fn attach(
        &mut self,
        id: u64,
        client: u64,
        tag: u64,
        fx: &mut Effects,
    ) -> Result<(), ErrorReply> {
        let reply = |resp| Effect::Reply { client, tag, resp, payload: Vec::new() };
        if let Some(run) = self.active.get_mut(&id) {
            let names = run.specs.iter().map(|s| s.name.clone()).collect();
            fx.push(reply(Response::RunStarted { id, jobs: names }));
            let now = Instant::now();
            for j in &run.jobs {
                fx.push(reply(Response::RunJob(j.live(now))));
            }
            run.followers.push((client, tag));
            return Ok(());
        }
        match self.finished.iter().find(|r| r.id == id) {
            Some(r) => {
                let names = r.jobs.iter().map(|j| j.name.clone()).collect();
                fx.push(reply(Response::RunStarted { id, jobs: names }));
                fx.push(reply(Response::RunDone(Box::new(r.clone()))));
                Ok(())
            }
            None => Err(error(
                ErrorKind::NotFound,
                format!(
                    "no run {id} (the last {KEEP_RUNS} finished runs are kept; see `weaver runs`)"
                ),
            )),
        }
    }

    /// `weaver runs`: the kept finished runs, then those going, oldest first.
    pub fn runs(&self) -> Vec<RunReport> {
        let now = Instant::now();
        let mut v: Vec<RunReport> = self.finished.iter().cloned().collect();
        v.extend(self.active.values().map(|r| r.report(now)));
        v.sort_by_key(|r| r.id);
        v
    }

    /// A job's output (of its latest run), for `weaver logs JOB`.
    pub fn logs(
        &self,
        name: &str,
        after: u64,
        tail: Option<u32>,
        stream: Option<Stream>,
    ) -> Option<LogChunk> {
        let out = self.outputs.get(name)?;
        let after = match tail {
            Some(n) if after == 0 => out.ring.last_seq().saturating_sub(n as u64),
            _ => after,
        };
        let since = out.ring.since(after, usize::MAX);
        let lines = crate::daemon::follow::log_lines(since.lines, stream);
        Some(LogChunk { instance: name.into(), lines, lost: since.lost, next: since.next })
    }

    /// Whether `name` is a job that ran (has output kept).
    pub fn knows(&self, name: &str) -> bool {
        self.outputs.contains_key(name)
    }

    /// Cancel run `id` (Ctrl-C on its command).
    pub fn cancel(&mut self, id: u64, why: &str, fx: &mut Effects) -> Result<(), ErrorReply> {
        let Some(run) = self.active.get_mut(&id) else {
            return Err(error(ErrorKind::NotFound, format!("no run {id} is going")));
        };
        if run.sched.cancelled() {
            return Ok(());
        }
        info!("run {id}: cancelled ({why})");
        let now = Instant::now();
        let running = run.sched.cancel();
        for i in 0..run.jobs.len() {
            if run.sched.slot(i) == Slot::Cancelled && run.jobs[i].result.state == JobState::Pending
            {
                run.jobs[i].result.state = JobState::Cancelled;
                fx.push(Effect::Publish {
                    instance: run.specs[i].name.clone(),
                    kind: EventKind::Skipped { reason: format!("run {id} was cancelled") },
                });
                run.tell_job(i, now, fx);
            }
        }
        for i in running {
            stop_job(run, i, fx);
        }
        self.finish_if_done(id, fx);
        Ok(())
    }

    /// A client left: its runs are cancelled, and it follows nothing.
    pub fn forget_client(&mut self, client: u64, fx: &mut Effects) {
        let owned: Vec<u64> =
            self.active.values().filter(|r| r.owner == Some(client)).map(|r| r.id).collect();
        for r in self.active.values_mut() {
            r.followers.retain(|&(c, _)| c != client);
            if r.owner == Some(client) {
                r.owner = None;
            }
        }
        for id in owned {
            let _ = self.cancel(id, "its command's connection closed", fx);
        }
    }

    /// weaver stops: every run is cancelled.
    pub fn cancel_all(&mut self, fx: &mut Effects) {
        let ids: Vec<u64> = self.active.keys().copied().collect();
        for id in ids {
            let _ = self.cancel(id, "weaver is stopping", fx);
        }
    }

    /// A job's deadline: its timeout (stop it), or its stop's grace
    /// (SIGKILL its group).
    pub fn on_timer(&mut self, run: u64, job: usize, kill_now: bool, fx: &mut Effects) {
        let Some(r) = self.active.get_mut(&run) else { return };
        let Some(pid) = r.jobs.get(job).and_then(|j| j.pid) else { return };
        if kill_now {
            debug!("run {run}: {} outlived its stop grace: SIGKILL", r.specs[job].name);
            let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
            return;
        }
        warn!("run {run}: {} ran past its timeout", r.specs[job].name);
        r.jobs[job].result.timed_out = true;
        fx.push(Effect::Publish {
            instance: r.specs[job].name.clone(),
            kind: EventKind::Warning { message: "its timeout passed: stopping it".into() },
        });
        stop_job(r, job, fx);
    }

    /// A reaped child that is one of our jobs.
    pub fn exited(
        &mut self,
        pid: u32,
        status: std::process::ExitStatus,
        guard: Option<&mut Guard>,
        fx: &mut Effects,
    ) {
        let Some((id, i)) = self.by_pid.remove(&pid) else { return };
        // What it wrote before it ended, then its leftovers get no grace
        // (a job is done when its main process is).
        self.drain_pipes_of(id, i, fx);
        let group = Pid::from_raw(-(pid as i32));
        if kill(group, Signal::SIGKILL).is_ok() {
            debug!("run {id}: SIGKILL to what job {i} left in its process group {pid}");
        }
        let mut guard = guard;
        if let Some(g) = guard.as_deref_mut() {
            g.withdraw(pid);
        }
        if let Some(name) = self.active.get(&id).map(|r| r.specs[i].name.clone()) {
            kill_escaped(id, &name, &self.by_pid);
        }
        self.close_pipes_of(id, i, fx);
        let Some(run) = self.active.get_mut(&id) else { return };
        let now = Instant::now();
        let exit = Exit::from_status(status);
        let name = run.specs[i].name.clone();
        if run.specs[i].stdin == StdinMode::Pipe {
            fx.push(Effect::StdinGone { instance: name.clone() });
        }
        fx.push(Effect::Cancel(Timer::Job { run: id, job: i, kill: false }));
        fx.push(Effect::Cancel(Timer::Job { run: id, job: i, kill: true }));
        let j = &mut run.jobs[i];
        j.pid = None;
        j.result.duration_ms =
            j.started.map(|t| now.saturating_duration_since(t).as_millis() as u64);
        let kind = match status.code() {
            Some(code) => {
                j.result.code = Some(code);
                EventKind::Exited { code }
            }
            None => {
                let sig = std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0);
                j.result.signal = Some(crate::sys::signal_name(sig));
                EventKind::Killed { signal: sig }
            }
        };
        if j.result.timed_out {
            j.result.code = Some(TIMEOUT_CODE);
        }
        let ok = exit.success() && !j.result.timed_out;
        debug!("run {id}: {name} {}", exit.describe());
        fx.push(Effect::Publish { instance: name, kind });
        let step = run.sched.finished(i, ok);
        let j = &mut run.jobs[i];
        j.result.state = state_of(run.sched.slot(i));
        if !ok {
            j.result.stderr_tail = j.stderr_tail.iter().cloned().collect();
        }
        run.tell_job(i, now, fx);
        self.step(id, step, guard, fx);
    }

    /// Start and skip what the schedule says, until it says nothing more
    /// (a job that cannot be spawned fails at once, which may skip or
    /// start others).
    fn step(
        &mut self,
        id: u64,
        step: crate::run::Step,
        mut guard: Option<&mut Guard>,
        fx: &mut Effects,
    ) {
        let mut todo = VecDeque::from([step]);
        while let Some(step) = todo.pop_front() {
            let Some(run) = self.active.get_mut(&id) else { return };
            let now = Instant::now();
            for &i in &step.skip {
                let because = match run.sched.slot(i) {
                    Slot::Skipped(b) => run.specs[b].name.clone(),
                    _ => String::new(),
                };
                let why = match run
                    .jobs
                    .iter()
                    .find(|j| j.result.name == because)
                    .map(|j| j.result.state)
                {
                    Some(JobState::Skipped) => format!("{because} was skipped"),
                    Some(JobState::Cancelled) => format!("{because} was cancelled"),
                    _ => format!("{because} failed"),
                };
                let j = &mut run.jobs[i];
                j.result.state = JobState::Skipped;
                j.result.because = Some(because);
                fx.push(Effect::Publish {
                    instance: run.specs[i].name.clone(),
                    kind: EventKind::Skipped { reason: why },
                });
                run.tell_job(i, now, fx);
            }
            for &i in &step.start {
                match self.spawn(id, i, guard.as_deref_mut(), fx) {
                    Ok(()) => {}
                    Err(e) => {
                        let run = self.active.get_mut(&id).expect("running");
                        let msg = format!(
                            "cannot start {:?}: {e}",
                            run.specs[i].argv.first().map(String::as_str).unwrap_or("")
                        );
                        warn!("run {id}: {}: {msg}", run.specs[i].name);
                        fx.push(Effect::Publish {
                            instance: run.specs[i].name.clone(),
                            kind: EventKind::Failed { reason: msg.clone() },
                        });
                        let next = run.sched.finished(i, false);
                        let j = &mut run.jobs[i];
                        j.result.state = state_of(run.sched.slot(i));
                        j.result.because = Some(msg);
                        j.result.duration_ms = Some(0);
                        j.result.start_ms =
                            Some(now.saturating_duration_since(run.started).as_millis() as u64);
                        run.tell_job(i, now, fx);
                        todo.push_back(next);
                    }
                }
            }
        }
        self.finish_if_done(id, fx);
    }

    fn spawn(
        &mut self,
        id: u64,
        i: usize,
        guard: Option<&mut Guard>,
        fx: &mut Effects,
    ) -> io::Result<()> {
        let run = self.active.get_mut(&id).expect("a run being stepped");
        let spec = &run.specs[i];
        let mut cmd = child_command(&spec.argv, &spec.env, spec.work_dir.as_deref(), false)?;
        cmd.env(JOB_ENV, &spec.name).env(RUN_ENV, id.to_string());
        let stdin = if spec.stdin == StdinMode::Pipe { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let pid = child.id();
        if let Some(w) = child.stdin.take() {
            fx.push(Effect::StdinOpened { instance: spec.name.clone(), fd: w.into() });
        }
        let now = Instant::now();
        if let Some(g) = guard {
            g.watch(pid);
        }
        let out: Option<OwnedFd> = child.stdout.take().map(Into::into);
        let err: Option<OwnedFd> = child.stderr.take().map(Into::into);
        // Reaped by the reactor's waitpid loop.
        drop(child);
        self.by_pid.insert(pid, (id, i));
        let trigger = run.sched.trigger(i).map(|t| run.specs[t].name.clone());
        let j = &mut run.jobs[i];
        j.pid = Some(pid);
        j.started = Some(now);
        j.result.state = JobState::Running;
        j.result.pid = Some(pid);
        j.result.started_by = trigger;
        j.result.start_ms = Some(now.saturating_duration_since(run.started).as_millis() as u64);
        if let Some(t) = spec.timeout {
            fx.push(Effect::Arm {
                at: now + t,
                timer: Timer::Job { run: id, job: i, kill: false },
            });
        }
        let name = spec.name.clone();
        let file = spec.output.file.clone();
        let ring_bytes = spec.output.ring_bytes;
        let (max_bytes, keep) = (spec.output.max_file_bytes, spec.output.keep_files);
        debug!("run {id}: started {name} (pid {pid}): {:?}", spec.argv);
        fx.push(Effect::Publish { instance: name.clone(), kind: EventKind::Started { pid } });
        run.tell_job(i, now, fx);
        let file = file.and_then(|path| {
            match OpenOptions::new().create(true).append(true).mode(0o644).open(&path) {
                Ok(f) => {
                    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    Some((f, path, Rotation::new(max_bytes, keep, size)))
                }
                Err(e) => {
                    warn!("cannot open output file {} of job {name}: {e}", path.display());
                    None
                }
            }
        });
        self.outputs
            .insert(name, Output { ring: Ring::new(ring_bytes), lines: Default::default(), file });
        for (fd, stream) in [(out, Stream::Stdout), (err, Stream::Stderr)] {
            let Some(fd) = fd else { continue };
            crate::sys::set_nonblocking(fd.as_raw_fd());
            let pipe = self.next_pipe;
            self.next_pipe += 1;
            let interest = Interest::READABLE;
            fx.push(Effect::Watch { fd: fd.as_raw_fd(), token: token::job_pipe(pipe), interest });
            self.pipes.insert(pipe, JobPipe { run: id, job: i, stream, file: fd.into() });
        }
        Ok(())
    }

    /// Read again what bounded reads left.
    pub fn read_pending(&mut self, scratch: &mut [u8], fx: &mut Effects) {
        for id in std::mem::take(&mut self.pending_pipes) {
            self.read_pipe(id, scratch, fx);
        }
    }

    /// Output from a job.
    pub fn read_pipe(&mut self, id: u64, scratch: &mut [u8], fx: &mut Effects) {
        let Some(p) = self.pipes.get_mut(&id) else { return };
        let Drained { chunks, eof, more } = drain_pipe(&mut p.file, scratch);
        let (run, job, stream) = (p.run, p.job, p.stream);
        for c in &chunks {
            self.output(run, job, stream, c, false, fx);
        }
        if eof {
            self.output(run, job, stream, &[], true, fx);
            if let Some(p) = self.pipes.remove(&id) {
                fx.push(Effect::Unwatch { fd: p.file.into() });
            }
        } else if more {
            self.pending_pipes.push(id);
        }
    }

    /// Lines of output into the job's ring, file, stderr tail and events.
    fn output(
        &mut self,
        run: u64,
        job: usize,
        stream: Stream,
        chunk: &[u8],
        end: bool,
        fx: &mut Effects,
    ) {
        let Some(r) = self.active.get_mut(&run) else { return };
        let name = &r.specs[job].name;
        let Some(out) = self.outputs.get_mut(name) else { return };
        let asm = &mut out.lines[stream as usize];
        let pieces = if end { asm.finish().into_iter().collect() } else { asm.feed(chunk) };
        let ms = wall_ms();
        for p in pieces {
            if let Some((f, path, rot)) = out.file.as_mut() {
                if rot.before_write(p.bytes.len() as u64 + 1) {
                    for (from, to) in rot.renames(path) {
                        let _ = std::fs::rename(from, to);
                    }
                    if let Ok(nf) = OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true)
                        .mode(0o644)
                        .open(&*path)
                    {
                        *f = nf;
                    }
                }
                let _ = f.write_all(&p.bytes).and_then(|_| f.write_all(b"\n"));
            }
            if stream == Stream::Stderr {
                let tail = &mut r.jobs[job].stderr_tail;
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(String::from_utf8_lossy(&p.bytes).into_owned());
            }
            let seq = out.ring.push(stream, ms, p.bytes.clone(), p.cut);
            fx.push(Effect::Publish {
                instance: name.clone(),
                kind: EventKind::Output { stream, seq, bytes: p.bytes },
            });
        }
    }

    /// The pipes of job `job` of run `run` still open.
    fn pipes_of(&self, run: u64, job: usize) -> Vec<u64> {
        self.pipes.iter().filter(|(_, p)| p.run == run && p.job == job).map(|(&id, _)| id).collect()
    }

    fn drain_pipes_of(&mut self, run: u64, job: usize, fx: &mut Effects) {
        let ids = self.pipes_of(run, job);
        let mut scratch = vec![0u8; PIPE_READ];
        for id in ids {
            // Bounded reads: what a job wrote is in the pipe already.
            for _ in 0..64 {
                if !self.pipes.contains_key(&id) {
                    break;
                }
                self.pending_pipes.retain(|&p| p != id);
                self.read_pipe(id, &mut scratch, fx);
                if !self.pending_pipes.contains(&id) {
                    break;
                }
            }
        }
    }

    /// The job is over: its pipes close (what its leftovers held open).
    fn close_pipes_of(&mut self, run: u64, job: usize, fx: &mut Effects) {
        let ids = self.pipes_of(run, job);
        for id in ids {
            self.pending_pipes.retain(|&p| p != id);
            if let Some(p) = self.pipes.remove(&id) {
                let stream = p.stream;
                fx.push(Effect::Unwatch { fd: p.file.into() });
                self.output(run, job, stream, &[], true, fx);
            }
        }
    }

    /// The run is over: tell its followers, keep its report.
    fn finish_if_done(&mut self, id: u64, fx: &mut Effects) {
        if !self.active.get(&id).is_some_and(|r| r.sched.done()) {
            return;
        }
        let run = self.active.remove(&id).expect("checked");
        let report = run.report(Instant::now());
        info!(
            "run {id}: {} passed, {} failed, {} skipped, {} cancelled in {} ms",
            report.passed, report.failed, report.skipped, report.cancelled_jobs, report.duration_ms
        );
        run.tell(Response::RunDone(Box::new(report.clone())), fx);
        if self.finished.len() == KEEP_RUNS {
            self.finished.pop_front();
        }
        self.finished.push_back(report);
    }
}

/// Send job `i` of `run` its stop signal (and SIGCONT), SIGKILL after its
/// `stop_timeout`.
fn stop_job(run: &mut Run, i: usize, fx: &mut Effects) {
    let Some(pid) = run.jobs[i].pid else { return };
    if run.jobs[i].stopping {
        return;
    }
    run.jobs[i].stopping = true;
    let spec = &run.specs[i];
    let group = Pid::from_raw(-(pid as i32));
    let _ = kill(group, spec.stop_signal);
    let _ = kill(group, Signal::SIGCONT);
    let at = Instant::now() + spec.stop_timeout;
    fx.push(Effect::Arm { at, timer: Timer::Job { run: run.id, job: i, kill: true } });
}

/// Processes a job started that left its group (setsid) and came to us
/// when their parent died (the daemon is a subreaper): found by the job's
/// identity in their environment, they get SIGKILL now; the loop reaps
/// them like any child.
fn kill_escaped(run: u64, job: &str, ours: &HashMap<u32, (u64, usize)>) {
    let me = std::process::id();
    let Ok(list) = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
        return;
    };
    let want_run = format!("{RUN_ENV}={run}");
    let want_job = format!("{JOB_ENV}={job}");
    for pid in list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
        if ours.contains_key(&pid) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        if vars.contains(&want_run.as_bytes()) && vars.contains(&want_job.as_bytes()) {
            info!("run {run}: pid {pid} left job {job}'s process group and outlived it: SIGKILL");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn state_of(s: Slot) -> JobState {
    match s {
        Slot::Pending => JobState::Pending,
        Slot::Running => JobState::Running,
        Slot::Passed => JobState::Passed,
        Slot::Failed => JobState::Failed,
        Slot::Skipped(_) => JobState::Skipped,
        Slot::Cancelled => JobState::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(jobs: &[&str], detach: bool) -> RunReq {
        RunReq {
            jobs: jobs.iter().map(|s| s.to_string()).collect(),
            mode: RunMode::Graph,
            max_parallel: Some(4),
            keep_going: false,
            detach,
        }
    }

    fn replies(fx: &Effects) -> Vec<&Response> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Reply { resp, .. } => Some(resp),
                _ => None,
            })
            .collect()
    }

    fn published(fx: &Effects) -> Vec<(String, &'static str)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Publish { instance, kind } => Some((instance.clone(), kind.name())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn bad_requests_get_clear_errors() {
        let mut r = Runner::new();
        let mut fx = Effects::new();
        let e = r.start(&[], req(&[], false), 1, 1, None, &mut fx).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("declares no [[job]]"), "{}", e.message);
        let jobs = [JobSpec::new("a", &["true"], &[])];
        let e = r.start(&jobs, req(&["b"], false), 1, 1, None, &mut fx).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::NotFound, "no job named \"b\"; jobs: a")
        );
        let zero = RunReq { max_parallel: Some(0), ..req(&[], false) };
        assert_eq!(
            r.start(&jobs, zero, 1, 1, None, &mut fx).unwrap_err().kind,
            ErrorKind::BadRequest
        );
        assert!(fx.is_empty() && r.idle());
        assert_eq!(r.attach(9, 1, 1, &mut fx).unwrap_err().kind, ErrorKind::NotFound);
    }

    #[test]
    fn a_real_job_is_spawned_read_reaped_and_reported() {
        let jobs = [
            JobSpec::new("hi", &["sh", "-c", "echo hello; echo oops >&2; exit 3"], &[]),
            JobSpec::new("next", &["true"], &["hi"]),
        ];
        let mut r = Runner::new();
        let mut fx = Effects::new();
        let id = r.start(&jobs, req(&["next"], false), 5, 7, None, &mut fx).unwrap();
        assert!(
            matches!(replies(&fx)[0], Response::RunStarted { jobs, .. } if jobs == &["hi", "next"])
        );
        assert_eq!(fx.iter().filter(|e| matches!(e, Effect::Watch { .. })).count(), 2);
        assert_eq!(published(&fx), [("hi".to_string(), "started")]);
        let pid = *r.by_pid.keys().next().expect("hi runs");
        assert!(r.owns(pid));
        let ws = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None).unwrap();
        let (_, status) = crate::sys::exit_status(ws).unwrap();
        let mut fx = Effects::new();
        r.exited(pid, status, None, &mut fx);
        let events = published(&fx);
        assert!(events.contains(&("hi".to_string(), "output")), "{events:?}");
        assert!(events.contains(&("hi".to_string(), "exited")), "{events:?}");
        assert!(events.contains(&("next".to_string(), "skipped")), "{events:?}");
        let done = replies(&fx)
            .into_iter()
            .find_map(|resp| match resp {
                Response::RunDone(rep) => Some(rep.clone()),
                _ => None,
            })
            .expect("the run is over");
        assert_eq!((done.id, done.failed, done.skipped, done.exit_code()), (id, 1, 1, 1));
        assert_eq!(done.jobs[0].code, Some(3));
        assert_eq!(done.jobs[0].stderr_tail, ["oops"]);
        assert_eq!(done.jobs[1].because.as_deref(), Some("hi"));
        assert!(r.idle());
        let logs = r.logs("hi", 0, None, None).unwrap();
        // Both streams; their order between pipes is whichever was read first.
        let mut texts: Vec<&str> = logs.lines.iter().map(|l| l.text.as_str()).collect();
        texts.sort_unstable();
        assert_eq!(texts, ["hello", "oops"]);
        assert_eq!(r.runs().len(), 1);
        let mut fx = Effects::new();
        r.attach(id, 6, 1, &mut fx).unwrap();
        assert!(matches!(replies(&fx)[..], [Response::RunStarted { .. }, Response::RunDone(_)]));
    }

    /// Reap `pid` and hand its status to the room.
    fn reap(r: &mut Runner, pid: u32, fx: &mut Effects) {
        let ws = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None).unwrap();
        let (_, status) = crate::sys::exit_status(ws).unwrap();
        r.exited(pid, status, None, fx);
    }

    fn pid_of(r: &Runner, run: u64) -> u32 {
        r.by_pid.iter().find(|(_, (id, _))| *id == run).map(|(&p, _)| p).expect("a job runs")
    }

    #[test]
    fn a_closed_connection_cancels_its_run_but_not_a_detached_one() {
        let jobs = [
            JobSpec::new("lone", &["sleep", "30"], &[]),
            JobSpec::new("wait", &["sleep", "30"], &[]),
            JobSpec::new("after", &["true"], &["wait"]),
        ];
        let mut r = Runner::new();
        let mut fx = Effects::new();
        let detached = r.start(&jobs, req(&["lone"], true), 2, 1, None, &mut fx).unwrap();
        let owned = r.start(&jobs, req(&["after"], false), 1, 1, None, &mut fx).unwrap();
        let busy = r.start(&jobs, req(&["lone"], false), 3, 1, None, &mut fx).unwrap_err();
        assert_eq!(busy.kind, ErrorKind::Busy);
        assert!(busy.message.contains(&format!("run {detached}")), "{}", busy.message);
        let mut fx = Effects::new();
        r.forget_client(1, &mut fx);
        r.forget_client(2, &mut fx);
        let armed = |fx: &Effects, id: u64| {
            fx.iter().any(|e| {
                matches!(e, Effect::Arm { timer: Timer::Job { run, kill: true, .. }, .. } if *run == id)
            })
        };
        assert!(armed(&fx, owned), "its running job is stopped, SIGKILL armed: {fx:?}");
        assert!(!armed(&fx, detached), "a detached run goes on");
        assert_eq!(published(&fx), [("after".to_string(), "skipped")]);
        let mut fx = Effects::new();
        let pid = pid_of(&r, owned);
        reap(&mut r, pid, &mut fx);
        assert!(!r.idle(), "the detached run still goes");
        r.cancel(detached, "test", &mut fx).unwrap();
        let pid = pid_of(&r, detached);
        reap(&mut r, pid, &mut fx);
        assert!(r.idle());
        let runs = r.runs();
        let report = runs.iter().find(|x| x.id == owned).unwrap();
        assert!(report.cancelled && report.finished);
        assert_eq!(report.cancelled_jobs, 2);
        assert_eq!(report.exit_code(), 130);
    }
}
