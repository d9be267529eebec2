//! The reactor's hands for supervised processes: it performs what
//! [`Supervisor`] decides (spawn, signal, hooks, probes, timers, pid files,
//! events) and feeds back what it observes (exits, output, timers, probe and
//! hook results). Also serves `ps`, `start/stop/restart`, `logs`, `events`
//! and `reload`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{set_nonblocking, would_block, Reactor, Timer};
use crate::pidfile::{self, PidRecord};
use crate::protocol::{ErrorKind, ErrorReply};
use crate::protocol::{
    EventRecord, LogChunk, LogLine, LogQuery, ProcRow, ReloadReport, Response, Verb,
};
use crate::supervise::config::{self, Config};
use crate::supervise::events::{EventKind, Filter, SubscriberId};
use crate::supervise::machine::ProbeOutcome;
use crate::supervise::ring::Stream;
use crate::supervise::rotate::Rotation;
use crate::supervise::{plan_reload, Action, Check, Exit, RunId};

/// One end of a supervised process's stdout or stderr.
#[derive(Debug)]
pub(super) struct Pipe {
    pub instance: String,
    pub stream: Stream,
    pub file: File,
}

/// A hook or probe command weaver is running.
#[derive(Debug, Clone)]
pub(super) struct Aux {
    pub run: RunId,
    pub instance: String,
    pub probe: bool,
}

/// A `logs -f` request being served.
#[derive(Debug)]
pub(super) struct Follower {
    pub client: u64,
    pub tag: u64,
    pub instance: String,
    pub after: u64,
    pub stream: Option<Stream>,
}

/// An instance's output file and its rotation state.
#[derive(Debug)]
pub(super) struct OutFile {
    file: File,
    path: PathBuf,
    rotation: Rotation,
}

/// A subscriber's replies wait while its client has this much unsent.
const FOLLOW_BACKLOG: usize = 1 << 20;
/// Lines or events per reply while following.
const FOLLOW_BATCH: usize = 512;

pub(super) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn not_found(e: String) -> ErrorReply {
    ErrorReply { kind: ErrorKind::NotFound, message: e }
}

/// Spawn a child in its own process group that dies with weaver.
fn child_command(
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
    work_dir: Option<&Path>,
) -> io::Result<Command> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let mut cmd = Command::new(prog);
    cmd.args(args).envs(env).current_dir(work_dir.unwrap_or(Path::new("/"))).process_group(0);
    let parent = std::process::id() as libc::pid_t;
    let nofile = crate::daemon::child_nofile();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The open-file limit weaver was started with, not the one it
            // raised for itself (select() users break above 1024).
            if let Some(lim) = nofile {
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            // weaver's umask (0077 around its sockets) is not theirs.
            libc::umask(0o022);
            Ok(())
        });
    }
    Ok(cmd)
}

impl Reactor {
    /// A fresh random number for backoff jitter (xorshift; jitter needs no
    /// more).
    pub(super) fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Perform actions in order; answers that produce more actions are
    /// queued behind them.
    pub(super) fn run_actions(&mut self, actions: Vec<Action>) {
        let mut todo: VecDeque<Action> = actions.into();
        while let Some(a) = todo.pop_front() {
            let now = Instant::now();
            let more = match a {
                Action::Spawn { spec } => match self.spawn_instance(&spec) {
                    Ok(pid) => self.sup.on_spawned(&spec.name, pid, now),
                    Err(e) => {
                        let msg = format!(
                            "cannot start {:?}: {e}",
                            spec.argv.first().map(String::as_str).unwrap_or("")
                        );
                        self.sup.on_spawn_failed(&spec.name, msg, now)
                    }
                },
                Action::RunHook { run, instance, hook, spec } => {
                    match self.spawn_aux(
                        &spec.command,
                        &spec.env,
                        spec.work_dir.as_deref(),
                        &instance,
                        run,
                        false,
                    ) {
                        Ok(_) => Vec::new(),
                        Err(e) => self.sup.on_hook_exit(
                            run,
                            false,
                            format!("{} hook could not start: {e}", hook.name()),
                            now,
                        ),
                    }
                }
                Action::KillHook { run } | Action::KillProbe { run } => {
                    if let Some(&pid) = self.aux_runs.get(&run) {
                        let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                    }
                    Vec::new()
                }
                Action::Probe { run, instance, check, .. } => match check {
                    Check::Command { argv, env, work_dir } => {
                        match self.spawn_aux(&argv, &env, work_dir.as_deref(), &instance, run, true)
                        {
                            Ok(_) => Vec::new(),
                            Err(e) => {
                                debug!("probe for {instance} could not start: {e}");
                                self.sup.on_probe(run, ProbeOutcome { ok: false, pid: None }, now)
                            }
                        }
                    }
                    Check::FileExists(p) => {
                        let ok = p.exists();
                        self.sup.on_probe(run, ProbeOutcome { ok, pid: None }, now)
                    }
                    Check::PidFileLive(p) => {
                        let pid = self.live_in_pid_file(&instance, &p);
                        self.sup.on_probe(run, ProbeOutcome { ok: pid.is_some(), pid }, now)
                    }
                },
                Action::Signal { instance, pid, group, signal } => {
                    let target = if group { -(pid as i32) } else { pid as i32 };
                    if let Err(e) = kill(Pid::from_raw(target), signal) {
                        if e != nix::errno::Errno::ESRCH {
                            warn!("cannot send {signal} to {instance} (pid {pid}): {e}");
                        }
                    }
                    Vec::new()
                }
                Action::ArmTimer { key, at } => {
                    self.timers.arm(at, Timer::Supervise(key));
                    Vec::new()
                }
                // Stale timers are recognised by the supervisor.
                Action::CancelTimer { .. } => Vec::new(),
                Action::WritePidFile { path, pid } => {
                    if let Some(rec) = PidRecord::of(pid) {
                        if let Err(e) = pidfile::write(&path, rec) {
                            warn!("cannot write pid file {}: {e}", path.display());
                        }
                    }
                    Vec::new()
                }
                Action::RemovePidFile { path } => {
                    let _ = std::fs::remove_file(&path);
                    Vec::new()
                }
                Action::Emit { instance, kind } => {
                    self.emit(&instance, kind);
                    Vec::new()
                }
            };
            todo.extend(more);
        }
    }

    /// The live process `path` names for `instance`. A pid file written by
    /// a program that daemonizes itself holds only a pid: the first time a
    /// detached instance's pid is seen its start time is recorded (in
    /// memory and under `detached/` in the runtime dir, for adoption after
    /// a restart of weaver), and a later process that reuses the pid does
    /// not count.
    fn live_in_pid_file(&mut self, instance: &str, path: &Path) -> Option<u32> {
        let (pid, start) = pidfile::read(path).ok()?;
        let rec = match (start, self.detached.get(instance)) {
            (Some(start_time), _) => PidRecord { pid, start_time },
            (None, Some(r)) if r.pid == pid => *r,
            (None, _) => PidRecord::of(pid)?,
        };
        if !rec.is_current() {
            return None;
        }
        let detached = self.sup.instance(instance).is_some_and(|i| i.spec().detached);
        if detached && self.detached.get(instance) != Some(&rec) {
            self.detached.insert(instance.to_string(), rec);
            let path = self.detached_record(instance);
            let saved = std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(self.detached_dir())
                .and_then(|_| pidfile::write(&path, rec));
            if let Err(e) = saved {
                warn!("cannot record detached {instance} (pid {pid}) in {}: {e}", path.display());
            }
        }
        Some(pid)
    }

    fn detached_dir(&self) -> PathBuf {
        self.dir.path().join("detached")
    }

    /// weaver's record (pid and start time) of a detached instance.
    fn detached_record(&self, instance: &str) -> PathBuf {
        self.detached_dir().join(format!("{instance}.pid"))
    }

    /// A detached instance is down: forget its pid.
    fn forget_detached(&mut self, instance: &str) {
        if self.detached.remove(instance).is_some() {
            let _ = std::fs::remove_file(self.detached_record(instance));
        }
    }

    /// At start: detached processes a previous weaver started that still
    /// run (per the record of pid and start time) are watched, not started
    /// again.
    pub(super) fn adopt_detached(&mut self) {
        let dir = self.detached_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let now = Instant::now();
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().trim_end_matches(".pid").to_string();
            let rec = match pidfile::read(&path) {
                Ok((pid, Some(start_time))) => PidRecord { pid, start_time },
                _ => {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            let detached = self.sup.instance(&name).is_some_and(|i| i.spec().detached);
            if !detached || !rec.is_current() {
                if detached || !rec.is_current() {
                    let _ = std::fs::remove_file(&path);
                } else {
                    warn!(
                        "pid {} (recorded in {}) still runs but {name} is no longer a detached process in the configuration; leaving it alone",
                        rec.pid,
                        path.display()
                    );
                }
                continue;
            }
            info!(
                "adopting detached {name} (pid {}), still running from a previous weaver",
                rec.pid
            );
            self.detached.insert(name.clone(), rec);
            let a = self.sup.adopt(&name, rec.pid, now);
            self.run_actions(a);
        }
    }

    fn spawn_instance(&mut self, spec: &config::InstanceSpec) -> io::Result<u32> {
        let mut cmd = child_command(&spec.argv, &spec.env, spec.work_dir.as_deref())?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let out: Option<OwnedFd> = child.stdout.take().map(Into::into);
        let err: Option<OwnedFd> = child.stderr.take().map(Into::into);
        for (fd, stream) in [(out, Stream::Stdout), (err, Stream::Stderr)] {
            if let Some(fd) = fd {
                self.watch_pipe(fd, &spec.name, stream);
            }
        }
        // Reaped by the reactor's waitpid loop.
        drop(child);
        // A detached launcher's group may hold the daemon it starts: that
        // one is meant to outlive us.
        if !spec.detached {
            if let Some(g) = self.guard.as_mut() {
                g.watch(pid);
            }
        }
        debug!("spawned {} (pid {pid}): {:?}", spec.name, spec.argv);
        Ok(pid)
    }

    fn watch_pipe(&mut self, fd: OwnedFd, instance: &str, stream: Stream) {
        set_nonblocking(fd.as_raw_fd());
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd.as_raw_fd()),
            Token(token as usize),
            Interest::READABLE,
        ) {
            warn!("cannot watch {instance}'s {}: {e}", stream.name());
            return;
        }
        self.pipes.insert(token, Pipe { instance: instance.to_string(), stream, file: fd.into() });
    }

    /// A hook or probe: own process group, output into weaver's log.
    fn spawn_aux(
        &mut self,
        argv: &[String],
        env: &std::collections::BTreeMap<String, String>,
        work_dir: Option<&Path>,
        instance: &str,
        run: RunId,
        probe: bool,
    ) -> io::Result<u32> {
        let mut cmd = child_command(argv, env, work_dir)?;
        cmd.stdin(Stdio::null());
        if probe {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        drop(child);
        if let Some(g) = self.guard.as_mut() {
            g.watch(pid);
        }
        self.aux.insert(pid, Aux { run, instance: instance.to_string(), probe });
        self.aux_runs.insert(run, pid);
        Ok(pid)
    }

    /// Output from a supervised process.
    pub(super) fn read_pipe(&mut self, token: u64) {
        let mut eof = false;
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        {
            let Some(p) = self.pipes.get_mut(&token) else { return };
            loop {
                match p.file.read(&mut self.read_buf[..64 * 1024]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => chunks.push(self.read_buf[..n].to_vec()),
                    Err(e) if would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
                // A fast writer must not hold the reactor: come back later.
                if chunks.len() >= 16 {
                    break;
                }
            }
        }
        let (instance, stream) = {
            let p = &self.pipes[&token];
            (p.instance.clone(), p.stream)
        };
        let now = Instant::now();
        let ms = wall_ms();
        for c in &chunks {
            let a = self.sup.on_output(&instance, stream, c, ms, now);
            self.run_actions(a);
        }
        if eof {
            if let Some(p) = self.pipes.remove(&token) {
                let _ = self.poll.registry().deregister(&mut SourceFd(&p.file.as_raw_fd()));
            }
            let a = self.sup.on_output_eof(&instance, stream, ms, now);
            self.run_actions(a);
        } else if chunks.len() >= 16 {
            // Edge-triggered: nothing new will wake us for what is left.
            self.pending_pipes.push(token);
        }
    }

    /// Drain every pipe of `instance` (before acting on its exit).
    pub(super) fn drain_pipes_of(&mut self, instance: &str) {
        let tokens: Vec<u64> =
            self.pipes.iter().filter(|(_, p)| p.instance == instance).map(|(&t, _)| t).collect();
        for t in tokens {
            self.read_pipe(t);
        }
    }

    /// A reaped child that is not compute.
    pub(super) fn child_exited(&mut self, pid: u32, status: std::process::ExitStatus) {
        let now = Instant::now();
        if let Some(aux) = self.aux.remove(&pid) {
            self.aux_runs.remove(&aux.run);
            let exit = Exit::from_status(status);
            debug!(
                "{} for {} {}",
                if aux.probe { "probe" } else { "hook" },
                aux.instance,
                exit.describe()
            );
            // A hook's or probe's leftovers get no grace.
            self.sweep_group(&aux.instance, pid, Signal::SIGKILL, std::time::Duration::ZERO);
            let a = if aux.probe {
                self.sup.on_probe(aux.run, ProbeOutcome { ok: exit.success(), pid: None }, now)
            } else {
                self.sup.on_hook_exit(aux.run, exit.success(), exit.describe(), now)
            };
            return self.run_actions(a);
        }
        if let Some(name) = self.sup.by_pid(pid).map(str::to_string) {
            self.drain_pipes_of(&name);
            let spec = self.sup.instance(&name).map(|i| i.spec());
            let detached = spec.is_some_and(|s| s.detached);
            let signal = spec.map_or(Signal::SIGTERM, |s| s.stop_signal);
            let grace = spec.map_or(std::time::Duration::from_secs(2), |s| s.stop_timeout);
            if !detached {
                self.sweep_group(&name, pid, signal, grace);
                self.sweep_orphans(&name, signal, grace);
            }
            let a = self.sup.on_exit(pid, Exit::from_status(status), now);
            return self.run_actions(a);
        }
        if self.guard.as_ref().is_some_and(|g| g.pid() == pid) {
            return self.guard_exited(status);
        }
        if let Some(instance) = self.orphans.remove(&pid) {
            if let Some(g) = self.guard.as_mut() {
                g.withdraw_pid(pid);
            }
            debug!("reaped pid {pid}, which had left {instance}'s group");
            return;
        }
        debug!("reaped adopted pid {pid}: {}", super::compute::describe_exit(status));
    }

    /// The leader of process group `pgid` (a process we spawned) was
    /// reaped. What is left of the group (what it forked and did not wait
    /// for) gets `signal` now and SIGKILL after `grace`; an empty group is
    /// withdrawn from the guard at once.
    fn sweep_group(
        &mut self,
        instance: &str,
        pgid: u32,
        signal: Signal,
        grace: std::time::Duration,
    ) {
        let group = Pid::from_raw(-(pgid as i32));
        if kill(group, None).is_err() {
            if let Some(g) = self.guard.as_mut() {
                g.withdraw(pgid);
            }
            return;
        }
        if grace.is_zero() {
            return self.kill_rest(pgid);
        }
        info!(
            "{instance}: processes left in group {pgid} after its leader exited: {signal}, SIGKILL in {}",
            crate::supervise::human(grace)
        );
        let _ = kill(group, signal);
        // A stopped process would never see the signal.
        let _ = kill(group, Signal::SIGCONT);
        self.sweeps.insert(pgid);
        self.timers.arm(Instant::now() + grace, Timer::Sweep { pgid });
    }

    /// `instance`'s main process was reaped: processes that had left its
    /// group (setsid) and whose parent died came to us. They are part of
    /// what it started: `signal` now, SIGKILL after `grace`, and the guard
    /// watches them until we reap them.
    fn sweep_orphans(&mut self, instance: &str, signal: Signal, grace: std::time::Duration) {
        let Some((process, index)) =
            self.sup.instance(instance).map(|i| (i.spec().process.clone(), i.spec().index))
        else {
            return;
        };
        let (process, index) = (process.as_str(), index);
        let me = std::process::id();
        let Ok(list) = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
            return;
        };
        for pid in list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            let known = self.compute.pid() == Some(pid)
                || self.guard.as_ref().is_some_and(|g| g.pid() == pid)
                || self.aux.contains_key(&pid)
                || self.orphans.contains_key(&pid)
                || self.sup.by_pid(pid).is_some();
            // Only what carries this instance's identity in its environment
            // (inherited from the process we spawned): never a detached
            // process's daemon, never something that scrubbed it.
            if known || !from_instance(pid, process, index) {
                continue;
            }
            info!("{instance}: pid {pid} left its process group and outlived its parent: {signal}, SIGKILL in {}", crate::supervise::human(grace));
            self.orphans.insert(pid, instance.to_string());
            if let Some(g) = self.guard.as_mut() {
                g.watch_pid(pid);
            }
            let _ = kill(Pid::from_raw(pid as i32), signal);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            self.timers.arm(Instant::now() + grace, Timer::SweepOrphan { pid });
        }
    }

    /// An orphan outlived its grace. It is still ours (not reaped, so the
    /// pid is not reused): SIGKILL.
    pub(super) fn orphan_overdue(&mut self, pid: u32) {
        if self.orphans.contains_key(&pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// A sweep's grace is over.
    pub(super) fn sweep_done(&mut self, pgid: u32) {
        if self.sweeps.remove(&pgid) {
            self.kill_rest(pgid);
        }
    }

    /// SIGKILL what is left of group `pgid`; the guard need not watch it
    /// any more.
    fn kill_rest(&mut self, pgid: u32) {
        if kill(Pid::from_raw(-(pgid as i32)), Signal::SIGKILL).is_ok() {
            debug!("SIGKILL to what was left of process group {pgid}");
        }
        if let Some(g) = self.guard.as_mut() {
            g.withdraw(pgid);
        }
    }

    /// The guard died (someone killed it): start another and tell it every
    /// group it must watch.
    fn guard_exited(&mut self, status: std::process::ExitStatus) {
        let how = super::compute::describe_exit(status);
        let Some(g) = self.guard.as_mut() else { return };
        match g.respawn() {
            Ok(()) => warn!("the guard process {how}; started another (pid {})", g.pid()),
            Err(e) => {
                warn!("the guard process {how} and cannot be started again ({e}): what supervised processes fork may outlive weaver if it is killed with SIGKILL");
                self.guard = None;
            }
        }
    }

    fn emit(&mut self, instance: &str, kind: EventKind) {
        match &kind {
            EventKind::Output { bytes, .. } => {
                self.write_output_file(instance, bytes);
                self.followed_output = true;
            }
            EventKind::Failed { .. } => {
                self.forget_detached(instance);
                warn!("process {instance}: {}", describe_event(&kind))
            }
            EventKind::Vanished | EventKind::Stopped => {
                self.forget_detached(instance);
                info!("process {instance}: {}", describe_event(&kind))
            }
            EventKind::Warning { .. } => warn!("process {instance}: {}", describe_event(&kind)),
            k => info!("process {instance}: {}", describe_event(k)),
        }
        self.bcast.publish(wall_ms(), instance, kind);
    }

    fn write_output_file(&mut self, instance: &str, line: &[u8]) {
        let Some(spec) = self.sup.instance(instance).map(|i| i.spec().output.clone()) else {
            return;
        };
        let Some(path) = spec.file else { return };
        if !self.out_files.contains_key(instance) {
            let f = OpenOptions::new().create(true).append(true).mode(0o644).open(&path);
            match f {
                Ok(file) => {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    let rotation = Rotation::new(spec.max_file_bytes, spec.keep_files, size);
                    self.out_files.insert(
                        instance.to_string(),
                        OutFile { file, path: path.clone(), rotation },
                    );
                }
                Err(e) => {
                    warn!("cannot open output file {} of {instance}: {e}", path.display());
                    return;
                }
            }
        }
        let of = self.out_files.get_mut(instance).expect("opened above");
        if of.rotation.before_write(line.len() as u64 + 1) {
            for (from, to) in of.rotation.renames(&of.path) {
                let _ = std::fs::rename(from, to);
            }
            match OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o644)
                .open(&of.path)
            {
                Ok(f) => of.file = f,
                Err(e) => warn!("cannot reopen {}: {e}", of.path.display()),
            }
        }
        let _ = of.file.write_all(line).and_then(|_| of.file.write_all(b"\n"));
    }

    // ---- Requests -------------------------------------------------------

    pub(super) fn ps(&self) -> Vec<ProcRow> {
        self.sup.ps(Instant::now()).into_iter().map(ProcRow::from).collect()
    }

    pub(super) fn control(&mut self, verb: Verb, names: &[String]) -> Result<Response, ErrorReply> {
        if self.stopping {
            return Err(ErrorReply {
                kind: ErrorKind::ShuttingDown,
                message: "weaver is shutting down".into(),
            });
        }
        let instances = self.sup.resolve(names).map_err(not_found)?;
        let now = Instant::now();
        let a = match verb {
            Verb::Start => self.sup.start(names, now),
            Verb::Stop => self.sup.stop(names, now),
            Verb::Restart => self.sup.restart(names, now),
        }
        .map_err(not_found)?;
        self.run_actions(a);
        Ok(Response::Done { instances })
    }

    pub(super) fn logs(&mut self, client: u64, tag: u64, q: LogQuery) -> Result<(), ErrorReply> {
        let LogQuery { name, after, tail, stream, follow } = q;
        let stream = stream.map(Stream::from);
        let inst = self.sup.instance(&name).ok_or_else(|| {
            let known: Vec<String> =
                self.sup.ps(Instant::now()).into_iter().map(|r| r.name).collect();
            not_found(format!(
                "no process instance named {name:?}; instances: {}",
                known.join(", ")
            ))
        })?;
        let ring = inst.ring();
        let after = match tail {
            Some(n) if after == 0 => ring.last_seq().saturating_sub(n as u64),
            _ => after,
        };
        let mut f = Follower { client, tag, instance: name, after, stream };
        let chunk = self.log_chunk(&mut f, usize::MAX);
        self.reply(client, tag, Response::Logs(chunk), Vec::new());
        if follow {
            self.followers.push(f);
        }
        Ok(())
    }

    /// Lines after the follower's cursor (advancing it).
    fn log_chunk(&self, f: &mut Follower, max: usize) -> LogChunk {
        let Some(inst) = self.sup.instance(&f.instance) else {
            return LogChunk {
                instance: f.instance.clone(),
                lines: Vec::new(),
                lost: 0,
                next: f.after,
            };
        };
        let since = inst.ring().since(f.after, max);
        f.after = since.next;
        let lines = since
            .lines
            .into_iter()
            .filter(|l| f.stream.map_or(true, |s| s == l.stream))
            .map(|l| LogLine {
                seq: l.seq,
                stream: l.stream.into(),
                time_ms: l.time_ms,
                text: String::from_utf8_lossy(&l.bytes).into_owned(),
            })
            .collect();
        LogChunk { instance: f.instance.clone(), lines, lost: since.lost, next: since.next }
    }

    pub(super) fn events(
        &mut self,
        client: u64,
        tag: u64,
        names: Vec<String>,
        output: bool,
        history: u32,
    ) {
        let id = self.bcast.subscribe(Filter { names, output }, history as usize);
        self.subscribers.insert(id, (client, tag));
    }

    /// The client left: stop following for it.
    pub(super) fn forget_follows(&mut self, client: u64) {
        self.followers.retain(|f| f.client != client);
        let subs: Vec<SubscriberId> =
            self.subscribers.iter().filter(|(_, (c, _))| *c == client).map(|(&s, _)| s).collect();
        for s in subs {
            self.subscribers.remove(&s);
            self.bcast.unsubscribe(s);
        }
    }

    /// Send followers and subscribers what is new, as far as their clients
    /// keep up.
    pub(super) fn pump_follows(&mut self) {
        let backlog = |r: &Reactor, c: u64| r.clients.get(&c).map_or(usize::MAX, |c| c.out.len());
        if std::mem::take(&mut self.followed_output)
            || self.followers.iter().any(|f| backlog(self, f.client) == 0)
        {
            let mut followers = std::mem::take(&mut self.followers);
            for f in &mut followers {
                if backlog(self, f.client) > FOLLOW_BACKLOG {
                    continue;
                }
                let last = self.sup.instance(&f.instance).map_or(0, |i| i.ring().last_seq());
                if last <= f.after {
                    continue;
                }
                let chunk = self.log_chunk(f, FOLLOW_BATCH);
                if !chunk.lines.is_empty() || chunk.lost > 0 {
                    self.reply(f.client, f.tag, Response::Logs(chunk), Vec::new());
                }
            }
            followers.retain(|f| self.clients.contains_key(&f.client));
            followers.append(&mut self.followers);
            self.followers = followers;
        }
        for id in self.bcast.ready() {
            let Some(&(client, tag)) = self.subscribers.get(&id) else { continue };
            if backlog(self, client) > FOLLOW_BACKLOG {
                continue;
            }
            for d in self.bcast.drain(id, FOLLOW_BATCH) {
                self.reply(client, tag, Response::Event(d.into()), Vec::new());
            }
        }
    }

    /// Whether a follower or subscriber has more to send and its client's
    /// buffer is empty. Batches are bounded per turn, and a client whose
    /// buffer was flushed empty raises no event to come back for the rest,
    /// so the reactor must not sleep then. (A client with unsent bytes has a
    /// full socket: its writable event brings us back.)
    pub(super) fn follows_pending(&self) -> bool {
        let room = |c: u64| self.clients.get(&c).is_some_and(|c| c.out.is_empty());
        let lines = self.followers.iter().any(|f| {
            room(f.client)
                && self.sup.instance(&f.instance).is_some_and(|i| i.ring().last_seq() > f.after)
        });
        lines
            || self
                .subscribers
                .iter()
                .any(|(&id, &(client, _))| room(client) && self.bcast.pending(id) > 0)
    }

    pub(super) fn reload(&mut self, dry_run: bool) -> Result<ReloadReport, ErrorReply> {
        let bad = |message: String| ErrorReply { kind: ErrorKind::BadConfig, message };
        let new = match &self.config_path {
            Some(p) => config::load(p).map_err(|e| bad(format!("{e}\nnothing was changed")))?,
            None => Config::default(),
        };
        let config = self.config_path.as_ref().map(|p| p.display().to_string());
        let report = |plan: crate::supervise::ReloadPlan, applied: bool| ReloadReport {
            config: config.clone(),
            applied,
            added: plan.added,
            removed: plan.removed,
            changed: plan.changed,
            unchanged: plan.unchanged,
            compute_changed: plan.compute_changed,
        };
        if dry_run {
            return Ok(report(plan_reload(self.sup.config(), &new), false));
        }
        if self.stopping {
            return Err(ErrorReply {
                kind: ErrorKind::ShuttingDown,
                message: "weaver is shutting down".into(),
            });
        }
        let compute = new.compute.clone();
        let (plan, actions) = self
            .sup
            .reload(new, Instant::now())
            .map_err(|e| bad(format!("{e}\nnothing was changed")))?;
        if plan.compute_changed {
            self.reconfigure_compute(&compute);
        }
        self.run_actions(actions);
        info!(
            "reloaded: {} added, {} removed, {} changed, {} unchanged",
            plan.added.len(),
            plan.removed.len(),
            plan.changed.len(),
            plan.unchanged.len()
        );
        Ok(report(plan, true))
    }
}

/// Whether `pid`'s environment names it as part of `process`'s instance
/// `index` (`WEAVER_PROCESS`, `WEAVER_INSTANCE`).
fn from_instance(pid: u32, process: &str, index: u32) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    let (mut p, mut i) = (false, false);
    for var in env.split(|&b| b == 0) {
        if let Some(v) = var.strip_prefix(b"WEAVER_PROCESS=") {
            p = v == process.as_bytes();
        } else if let Some(v) = var.strip_prefix(b"WEAVER_INSTANCE=") {
            i = v == index.to_string().as_bytes();
        }
    }
    p && i
}

/// An event for the log, in the words of `weaver events` (without sequence
/// number, time and instance).
fn describe_event(k: &EventKind) -> String {
    EventRecord::of(0, 0, "", k).what().to_string()
}
