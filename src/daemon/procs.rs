//! The supervised-processes room: the hands of [`Supervisor`]. It performs
//! what the supervisor decides (spawn, signal, hooks, probes, pid files) and
//! feeds back what it observes (exits, output, probe and hook results); it
//! owns the output pipes, group sweeps, orphans that left their group,
//! detached records, output files and the guard. Deadlines, fd watches and
//! events for subscribers go out as effects.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::Interest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::daemon::effect::{Effect, Effects, Timer};
use crate::daemon::guard::Guard;
use crate::daemon::stdin::Stdins;
use crate::daemon::token;
use crate::pidfile::{self, PidRecord};
use crate::protocol::EventRecord;
use crate::supervise::config;
use crate::supervise::events::EventKind;
use crate::supervise::machine::ProbeOutcome;
use crate::supervise::ring::Stream;
use crate::supervise::rotate::Rotation;
use crate::supervise::{Action, Check, Exit, RunId, Supervisor};
use crate::sys::ChildSetup;

/// Bytes read from a pipe per read call.
pub(crate) const PIPE_READ: usize = 64 * 1024;
/// Reads of one pipe per turn: a fast writer must not hold the reactor.
const PIPE_READS_PER_TURN: usize = 16;

/// One end of a supervised process's stdout or stderr.
#[derive(Debug)]
struct Pipe {
    pub instance: String,
    pub stream: Stream,
    pub file: File,
}

/// A hook or probe command weaver is running.
#[derive(Debug, Clone)]
struct Aux {
    pub run: RunId,
    pub instance: String,
    pub probe: bool,
}

/// An instance's output file and its rotation state.
#[derive(Debug)]
struct OutFile {
    file: File,
    path: PathBuf,
    rotation: Rotation,
}

/// Where a supervised process finds the weavelet socket.
pub const WEAVELET_SOCKET_ENV: &str = "WEAVER_WEAVELET_SOCKET";

pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A command for a child in its own process group that dies with weaver.
pub(crate) fn child_command(
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
    work_dir: Option<&Path>,
    detached: bool,
) -> io::Result<Command> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let mut cmd = Command::new(prog);
    cmd.args(args).envs(env).current_dir(work_dir.unwrap_or(Path::new("/")));
    // A detached process is meant to outlive weaver: outside its
    // containment.
    ChildSetup { contained: !detached, ..ChildSetup::supervised() }.apply(&mut cmd);
    Ok(cmd)
}

/// The supervised processes and everything they hold.
#[derive(Debug)]
pub struct Procs {
    /// What to do (pure; this room acts).
    pub sup: Supervisor,
    /// Where `weaver.toml` was found, for `reload`.
    pub config_path: Option<PathBuf>,
    /// stdout/stderr pipes by pipe id (their token range).
    pipes: HashMap<u64, Pipe>,
    /// Never reused.
    next_pipe: u64,
    /// Pipes left with data after a bounded read: read again next turn.
    pending_pipes: Vec<u64>,
    /// Hook and probe commands running, by pid; and their pid by run.
    aux: HashMap<u32, Aux>,
    aux_runs: HashMap<RunId, u32>,
    /// Output files of instances that have one.
    out_files: HashMap<String, OutFile>,
    /// Kills our process groups if we die by SIGKILL.
    guard: Option<Guard>,
    /// Groups whose leader exited with members left, until their SIGKILL.
    sweeps: HashSet<u32>,
    /// Processes that left their group and came to us when their parent
    /// died (we are a subreaper), until reaped: pid -> instance.
    orphans: HashMap<u32, String>,
    /// Detached processes found through their pid files: instance ->
    /// (pid, start time), so a recycled pid is never taken for them.
    detached: HashMap<String, PidRecord>,
    /// Where detached records are kept (in the runtime dir).
    detached_dir: PathBuf,
    /// The weavelet socket, given to every instance as
    /// `WEAVER_WEAVELET_SOCKET`.
    weavelet_socket: PathBuf,
    /// The write ends of instances' stdin pipes (`stdin = "pipe"`).
    pub stdin: Stdins,
}

impl Procs {
    pub fn new(
        sup: Supervisor,
        config_path: Option<PathBuf>,
        guard: Option<Guard>,
        runtime_dir: &Path,
    ) -> Procs {
        Procs {
            sup,
            config_path,
            pipes: HashMap::new(),
            next_pipe: 1,
            pending_pipes: Vec::new(),
            aux: HashMap::new(),
            aux_runs: HashMap::new(),
            out_files: HashMap::new(),
            guard,
            sweeps: HashSet::new(),
            orphans: HashMap::new(),
            detached: HashMap::new(),
            detached_dir: runtime_dir.join("detached"),
            weavelet_socket: runtime_dir.join(crate::runtime_dir::WEAVELET_SOCKET),
            stdin: Stdins::new(),
        }
    }

    /// Everything is down and nothing we started is left to reap.
    pub fn all_gone(&self) -> bool {
        self.sup.all_down()
            && self.aux.is_empty()
            && self.sweeps.is_empty()
            && self.orphans.is_empty()
    }

    /// Pipes with data left over from a bounded read.
    pub fn has_pending(&self) -> bool {
        !self.pending_pipes.is_empty()
    }

    /// Read again what bounded reads left.
    pub fn read_pending(&mut self, scratch: &mut [u8], fx: &mut Effects) {
        for id in std::mem::take(&mut self.pending_pipes) {
            self.read_pipe(id, scratch, fx);
        }
    }

    pub fn guard_mut(&mut self) -> Option<&mut Guard> {
        self.guard.as_mut()
    }

    /// Perform actions in order; answers that produce more actions are
    /// queued behind them.
    pub fn run_actions(&mut self, actions: Vec<Action>, fx: &mut Effects) {
        let mut todo: VecDeque<Action> = actions.into();
        while let Some(a) = todo.pop_front() {
            let now = Instant::now();
            let more = match a {
                Action::Spawn { spec } => match self.spawn_instance(&spec, fx) {
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
                    fx.push(Effect::Arm { at, timer: Timer::Supervise(key) });
                    Vec::new()
                }
                Action::CancelTimer { key } => {
                    fx.push(Effect::Cancel(Timer::Supervise(key)));
                    Vec::new()
                }
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
                    self.emit(&instance, kind, fx);
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
                .create(&self.detached_dir)
                .and_then(|_| pidfile::write(&path, rec));
            if let Err(e) = saved {
                warn!("cannot record detached {instance} (pid {pid}) in {}: {e}", path.display());
            }
        }
        Some(pid)
    }

    /// weaver's record (pid and start time) of a detached instance.
    fn detached_record(&self, instance: &str) -> PathBuf {
        self.detached_dir.join(format!("{instance}.pid"))
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
    pub fn adopt_detached(&mut self, fx: &mut Effects) {
        let dir = self.detached_dir.clone();
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
            self.run_actions(a, fx);
        }
    }

    fn spawn_instance(&mut self, spec: &config::InstanceSpec, fx: &mut Effects) -> io::Result<u32> {
        let mut cmd =
            child_command(&spec.argv, &spec.env, spec.work_dir.as_deref(), spec.detached)?;
        cmd.env(WEAVELET_SOCKET_ENV, &self.weavelet_socket);
        let stdin =
            if spec.stdin == config::StdinMode::Pipe { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let pid = child.id();
        if let Some(w) = child.stdin.take() {
            self.stdin.opened(&spec.name, w.into(), fx);
        }
        let out: Option<OwnedFd> = child.stdout.take().map(Into::into);
        let err: Option<OwnedFd> = child.stderr.take().map(Into::into);
        for (fd, stream) in [(out, Stream::Stdout), (err, Stream::Stderr)] {
            if let Some(fd) = fd {
                self.watch_pipe(fd, &spec.name, stream, fx);
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

    fn watch_pipe(&mut self, fd: OwnedFd, instance: &str, stream: Stream, fx: &mut Effects) {
        crate::sys::set_nonblocking(fd.as_raw_fd());
        let id = self.next_pipe;
        self.next_pipe += 1;
        let interest = Interest::READABLE;
        fx.push(Effect::Watch { fd: fd.as_raw_fd(), token: token::pipe(id), interest });
        self.pipes.insert(id, Pipe { instance: instance.to_string(), stream, file: fd.into() });
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
        let mut cmd = child_command(argv, env, work_dir, false)?;
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
    pub fn read_pipe(&mut self, id: u64, scratch: &mut [u8], fx: &mut Effects) {
        let Some(p) = self.pipes.get_mut(&id) else { return };
        let Drained { chunks, eof, more } = drain_pipe(&mut p.file, scratch);
        let (instance, stream) = (p.instance.clone(), p.stream);
        let now = Instant::now();
        let ms = wall_ms();
        for c in &chunks {
            let a = self.sup.on_output(&instance, stream, c, ms, now);
            self.run_actions(a, fx);
        }
        if eof {
            if let Some(p) = self.pipes.remove(&id) {
                fx.push(Effect::Unwatch { fd: p.file.into() });
            }
            let a = self.sup.on_output_eof(&instance, stream, ms, now);
            self.run_actions(a, fx);
        } else if more {
            // Edge-triggered: nothing new will wake us for what is left.
            self.pending_pipes.push(id);
        }
    }

    /// Drain every pipe of `instance` (before acting on its exit).
    fn drain_pipes_of(&mut self, instance: &str, fx: &mut Effects) {
        let ids: Vec<u64> =
            self.pipes.iter().filter(|(_, p)| p.instance == instance).map(|(&t, _)| t).collect();
        let mut scratch = vec![0u8; PIPE_READ];
        for id in ids {
            self.read_pipe(id, &mut scratch, fx);
        }
    }

    /// A reaped child that is not compute (`compute` is compute's pid, never
    /// taken for an orphan).
    pub fn child_exited(
        &mut self,
        pid: u32,
        status: std::process::ExitStatus,
        compute: Option<u32>,
        fx: &mut Effects,
    ) {
        self.reaped(pid, status, compute, fx);
        if !self.sweeps.is_empty() {
            self.end_empty_sweeps(fx);
        }
    }

    fn reaped(
        &mut self,
        pid: u32,
        status: std::process::ExitStatus,
        compute: Option<u32>,
        fx: &mut Effects,
    ) {
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
            self.sweep_group(&aux.instance, pid, Signal::SIGKILL, Duration::ZERO, fx);
            let a = if aux.probe {
                self.sup.on_probe(aux.run, ProbeOutcome { ok: exit.success(), pid: None }, now)
            } else {
                self.sup.on_hook_exit(aux.run, exit.success(), exit.describe(), now)
            };
            return self.run_actions(a, fx);
        }
        if let Some(name) = self.sup.by_pid(pid).map(str::to_string) {
            self.drain_pipes_of(&name, fx);
            self.stdin.gone(&name, fx);
            let spec = self.sup.instance(&name).map(|i| i.spec());
            let detached = spec.is_some_and(|s| s.detached);
            let signal = spec.map_or(Signal::SIGTERM, |s| s.stop_signal);
            let grace = spec.map_or(config::ProcessSpec::DEFAULT_STOP_TIMEOUT, |s| s.stop_timeout);
            if !detached {
                self.sweep_group(&name, pid, signal, grace, fx);
                self.sweep_orphans(&name, signal, grace, compute, fx);
            }
            let a = self.sup.on_exit(pid, Exit::from_status(status), now);
            return self.run_actions(a, fx);
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
        debug!("reaped adopted pid {pid}: {}", Exit::from_status(status).describe());
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
        grace: Duration,
        fx: &mut Effects,
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
        fx.push(Effect::Arm { at: Instant::now() + grace, timer: Timer::Sweep { pgid } });
    }

    /// `instance`'s main process was reaped: processes that had left its
    /// group (setsid) and whose parent died came to us. They are part of
    /// what it started: `signal` now, SIGKILL after `grace`, and the guard
    /// watches them until we reap them.
    fn sweep_orphans(
        &mut self,
        instance: &str,
        signal: Signal,
        grace: Duration,
        compute: Option<u32>,
        fx: &mut Effects,
    ) {
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
            let known = compute == Some(pid)
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
            let at = Instant::now() + grace;
            fx.push(Effect::Arm { at, timer: Timer::SweepOrphan { pid } });
        }
    }

    /// An orphan outlived its grace. It is still ours (not reaped, so the
    /// pid is not reused): SIGKILL.
    pub fn orphan_overdue(&mut self, pid: u32) {
        if self.orphans.contains_key(&pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// A sweep's grace is over.
    /// Sweeps whose group emptied end now, not at their grace: checked
    /// after every reap (what is left of a group comes to us, the
    /// subreaper, when its parent is gone).
    fn end_empty_sweeps(&mut self, fx: &mut Effects) {
        let empty: Vec<u32> = self
            .sweeps
            .iter()
            .copied()
            .filter(|&g| kill(Pid::from_raw(-(g as i32)), None).is_err())
            .collect();
        for pgid in empty {
            self.sweeps.remove(&pgid);
            fx.push(Effect::Cancel(Timer::Sweep { pgid }));
            if let Some(g) = self.guard.as_mut() {
                g.withdraw(pgid);
            }
            debug!("process group {pgid} is empty: its sweep is over");
        }
    }

    pub fn sweep_done(&mut self, pgid: u32) {
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

    /// Processes that escaped their group and were adopted by us (we are a
    /// subreaper): at the very end nothing of ours may stay behind.
    pub fn kill_adopted(&mut self) {
        let me = std::process::id();
        let guard = self.guard.as_ref().map(Guard::pid);
        let Ok(list) = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
            return;
        };
        let mut killed = Vec::new();
        for pid in list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            if Some(pid) != guard && kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                killed.push(pid);
            }
        }
        if !killed.is_empty() {
            warn!("killed {} leftover descendant process(es) at exit", killed.len());
        }
        // Reap exactly those: the guard is a child too, and lives on until
        // it is released.
        for pid in killed {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
        }
    }

    /// The guard died (someone killed it): start another and tell it every
    /// group it must watch.
    fn guard_exited(&mut self, status: std::process::ExitStatus) {
        let how = Exit::from_status(status).describe();
        let Some(g) = self.guard.as_mut() else { return };
        match g.respawn() {
            Ok(()) => warn!("the guard process {how}; started another (pid {})", g.pid()),
            Err(e) => {
                warn!("the guard process {how} and cannot be started again ({e}): what supervised processes fork may outlive weaver if it is killed with SIGKILL");
                self.guard = None;
            }
        }
    }

    fn emit(&mut self, instance: &str, kind: EventKind, fx: &mut Effects) {
        match &kind {
            EventKind::Output { bytes, .. } => self.write_output_file(instance, bytes),
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
        fx.push(Effect::Publish { instance: instance.to_string(), kind });
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

/// What one turn read from an output pipe.
pub(crate) struct Drained {
    pub chunks: Vec<Vec<u8>>,
    /// The write end is closed (or the pipe failed).
    pub eof: bool,
    /// The turn's bound stopped the reads: more may wait (edge-triggered,
    /// so read again next turn).
    pub more: bool,
}

/// Read a non-blocking output pipe until it would block, ends, or
/// [`PIPE_READS_PER_TURN`] reads of at most [`PIPE_READ`] bytes were made
/// (one process's output cannot hold the loop). Processes' and jobs' pipes
/// alike.
pub(crate) fn drain_pipe(file: &mut File, scratch: &mut [u8]) -> Drained {
    let n = PIPE_READ.min(scratch.len());
    let buf = &mut scratch[..n];
    let mut d = Drained { chunks: Vec::new(), eof: false, more: false };
    loop {
        match file.read(buf) {
            Ok(0) => d.eof = true,
            Ok(n) => {
                d.chunks.push(buf[..n].to_vec());
                if d.chunks.len() < PIPE_READS_PER_TURN {
                    continue;
                }
                d.more = true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => d.eof = true,
        }
        return d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::machine::{TimerKey, TimerKind};

    fn procs(toml: &str, dir: &Path) -> Procs {
        let sup = Supervisor::new(crate::supervise::parse(toml, "t").unwrap(), 1).unwrap();
        Procs::new(sup, None, None, dir)
    }

    #[test]
    fn timers_are_armed_and_disarmed_through_effects() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = procs("", tmp.path());
        let key = TimerKey { instance: "a".into(), kind: TimerKind::Restart, token: 1 };
        let at = Instant::now();
        let mut fx = Effects::new();
        p.run_actions(
            vec![
                Action::ArmTimer { key: key.clone(), at },
                Action::CancelTimer { key: key.clone() },
            ],
            &mut fx,
        );
        let want = Timer::Supervise(key);
        assert!(matches!(&fx[0], Effect::Arm { timer, .. } if *timer == want));
        assert!(matches!(&fx[1], Effect::Cancel(timer) if *timer == want));
    }

    #[test]
    fn a_real_process_is_spawned_watched_read_and_reaped() {
        let tmp = tempfile::tempdir().unwrap();
        let toml = "[[process]]\nname = \"hi\"\ncommand = [\"sh\", \"-c\", \"echo hello\"]\n";
        let mut p = procs(toml, tmp.path());
        let mut fx = Effects::new();
        let plan = p.sup.plan_start_all(Instant::now());
        p.run_actions(plan, &mut fx);
        let pid = p.sup.ps(Instant::now())[0].pid.expect("spawned");
        let watched = fx.iter().filter(|e| matches!(e, Effect::Watch { .. })).count();
        assert_eq!(watched, 2, "stdout and stderr are watched: {fx:?}");
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Publish { kind: EventKind::Started { .. }, .. })));
        // Wait for it, then hand its exit to the room, which drains its
        // pipes first.
        let ws = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None).unwrap();
        let (_, status) = crate::sys::exit_status(ws).unwrap();
        let mut fx = Effects::new();
        p.child_exited(pid, status, None, &mut fx);
        let output: Vec<&[u8]> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Publish { kind: EventKind::Output { bytes, .. }, .. } => Some(&bytes[..]),
                _ => None,
            })
            .collect();
        assert_eq!(output, [b"hello"]);
        assert!(
            fx.iter().any(|e| matches!(e, Effect::Unwatch { .. })),
            "pipes at EOF are unwatched"
        );
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Publish { kind: EventKind::Exited { code: 0 }, .. })));
    }
}
