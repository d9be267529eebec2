//! Every instance together: names, dependency gating, ordered start, stop
//! and restart, routing of the reactor's observations, `ps`, logs and
//! reload. Pure like [`machine`](super::machine): each method returns the
//! [`Action`]s to perform.
//!
//! Gating, re-checked after every call:
//! - an instance queued to start starts once everything in its `after`
//!   list satisfies its condition (`started`, `ready`, `exited_ok`); if
//!   that can no longer happen (the dependency failed, or exited and stays
//!   down) it fails with the reason;
//! - an instance asked to stop is signalled once nothing that waits for it
//!   (and is stopping too) still runs; stop is thus in reverse dependency
//!   order;
//! - restart = ordered stop, then ordered start.
//!
//! `priority` orders instances that are free to go at the same moment
//! (lower first, stop reversed); it does not make one wait for another —
//! `after` does that.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use super::config::{self, Condition, Config, InstanceSpec};
use super::graph::{Graph, GraphError, Node};
use super::machine::{
    Action, Ctx, Exit, Input, Instance, ProbeOutcome, PsRow, RunId, Satisfied, State, TimerKey,
};
use super::ring::{Since, Stream};
use crate::sys::Rng;

/// What a reload changes, by instance name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// New instances, in start order.
    pub added: Vec<String>,
    /// Gone instances, in stop order (of the old configuration).
    pub removed: Vec<String>,
    /// Instances whose spec differs in any way, in start order; running
    /// ones are restarted (ordered stop, then ordered start).
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// `[compute]` differs (the reactor restarts compute).
    pub compute_changed: bool,
}

/// Compare two configurations instance by instance.
pub fn plan_reload(old: &Config, new: &Config) -> ReloadPlan {
    let old_specs = old.expand();
    let new_specs = new.expand();
    let old_by_name: HashMap<&str, &InstanceSpec> =
        old_specs.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_names: BTreeSet<&str> = new_specs.iter().map(|s| s.name.as_str()).collect();
    let mut plan = ReloadPlan { compute_changed: old.compute != new.compute, ..Default::default() };
    for i in start_order_of(&new_specs) {
        let spec = &new_specs[i];
        match old_by_name.get(spec.name.as_str()) {
            None => plan.added.push(spec.name.clone()),
            Some(&o) if *o == *spec => plan.unchanged.push(spec.name.clone()),
            Some(_) => plan.changed.push(spec.name.clone()),
        }
    }
    for i in start_order_of(&old_specs).into_iter().rev() {
        if !new_names.contains(old_specs[i].name.as_str()) {
            plan.removed.push(old_specs[i].name.clone());
        }
    }
    plan
}

/// The instances as a graph: an `after` name is a process name and stands
/// for every instance of it (`after = ["db"]` waits for `db.0`, `db.1`,
/// ...); each edge carries the condition waited for.
fn instance_graph(specs: &[InstanceSpec]) -> Result<Graph<Condition>, GraphError> {
    let mut by_process: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, spec) in specs.iter().enumerate() {
        by_process.entry(spec.process.as_str()).or_default().push(i);
    }
    let mut nodes = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut waits_for = Vec::new();
        for dep in &spec.after {
            let Some(targets) = by_process.get(dep.name.as_str()) else {
                return Err(GraphError::UnknownDependency {
                    instance: spec.name.clone(),
                    name: dep.name.clone(),
                });
            };
            waits_for.extend(targets.iter().map(|&t| (t, dep.condition)));
        }
        nodes.push(Node { name: spec.name.clone(), priority: spec.priority, waits_for });
    }
    Graph::new(nodes)
}

/// Start order, or declaration order for specs that cannot be ordered.
fn start_order_of(specs: &[InstanceSpec]) -> Vec<usize> {
    match instance_graph(specs) {
        Ok(g) => g.start_order().to_vec(),
        Err(_) => (0..specs.len()).collect(),
    }
}

/// Where an instance lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Live(usize),
    /// Removed by a reload; kept until it is down.
    Retiring(usize),
}

#[derive(Debug)]
pub struct Supervisor {
    config: Config,
    /// Indexed like `graph`.
    instances: Vec<Instance>,
    graph: Graph<Condition>,
    retiring: Vec<Instance>,
    /// Asked to stop; waiting for what waits for them to go first.
    stop_queue: BTreeSet<String>,
    /// To start again once they are down (ordered restart).
    restart_queue: BTreeSet<String>,
    /// Until the autostart ([`plan_start_all`](Self::plan_start_all)):
    /// what a start, stop or restart request named, which the autostart
    /// leaves as asked (e.g. a `weaver stop` that came before the daemon
    /// started what autostarts). `None` once it ran.
    asked: Option<BTreeSet<String>>,
    /// Run ids and timer tokens.
    next_id: u64,
    /// Backoff jitter.
    rng: Rng,
}

impl Supervisor {
    /// All instances of `config`, stopped. `seed` seeds the backoff
    /// jitter ([`Rng::seeded`]: the same seed, the same delays); pass
    /// something varying, e.g. the time, outside tests.
    pub fn new(config: Config, seed: u64) -> Result<Supervisor, GraphError> {
        let specs = config.expand();
        let graph = instance_graph(&specs)?;
        Ok(Supervisor {
            config,
            instances: specs.into_iter().map(Instance::new).collect(),
            graph,
            retiring: Vec::new(),
            stop_queue: BTreeSet::new(),
            restart_queue: BTreeSet::new(),
            asked: Some(BTreeSet::new()),
            next_id: 1,
            rng: Rng::seeded(seed),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        match self.slot(name)? {
            Slot::Live(i) => Some(&self.instances[i]),
            Slot::Retiring(i) => Some(&self.retiring[i]),
        }
    }

    /// The instance whose process (or detached launcher) has this pid.
    pub fn by_pid(&self, pid: u32) -> Option<&str> {
        self.all().find(|i| i.owns_pid(pid)).map(Instance::name)
    }

    /// Nothing runs, nothing is pending: weaver may exit after `stop_all`.
    pub fn all_down(&self) -> bool {
        self.all().all(Instance::is_down)
    }

    /// `ps`: live instances in declaration order, then retiring ones.
    pub fn ps(&self, now: Instant) -> Vec<PsRow> {
        self.all().map(|i| i.ps(now)).collect()
    }

    /// Output of `name` after sequence number `after`.
    pub fn logs(&self, name: &str, after: u64, max: usize) -> Option<Since> {
        Some(self.instance(name)?.ring().since(after, max))
    }

    /// Instance names that `names` stand for (process names stand for all
    /// their instances; none: all), in start order.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<String>, String> {
        let set = self.resolve_indices(names)?;
        Ok(self.graph.sort_for_start(&set).into_iter().map(|i| self.graph.name(i).into()).collect())
    }

    // ------------------------------------------------------------ requests

    /// The autostart: start everything (in dependency and priority order)
    /// but what a request already named; those stay as that request left
    /// them.
    pub fn plan_start_all(&mut self, now: Instant) -> Vec<Action> {
        let asked = self.asked.take().unwrap_or_default();
        let set: BTreeSet<usize> =
            (0..self.instances.len()).filter(|&i| !asked.contains(self.graph.name(i))).collect();
        self.start_set(set, now)
    }

    /// Start `names` and what they wait for.
    pub fn start(&mut self, names: &[String], now: Instant) -> Result<Vec<Action>, String> {
        let set = self.resolve_indices(names)?;
        self.note_asked(&set);
        Ok(self.start_set(set, now))
    }

    fn note_asked(&mut self, set: &BTreeSet<usize>) {
        if let Some(asked) = self.asked.as_mut() {
            asked.extend(set.iter().map(|&i| self.graph.name(i).to_string()));
        }
    }

    fn start_set(&mut self, set: BTreeSet<usize>, now: Instant) -> Vec<Action> {
        let with_deps = self.graph.with_dependencies(&set.iter().copied().collect::<Vec<_>>());
        let mut out = Vec::new();
        for i in self.graph.sort_for_start(&with_deps) {
            let name = self.graph.name(i).to_string();
            self.stop_queue.remove(&name);
            if matches!(self.instances[i].state(), State::Stopping(_)) {
                // Start it again once this stop is over.
                self.restart_queue.insert(name);
            } else {
                self.step(Slot::Live(i), Input::Queue, now, &mut out);
            }
        }
        self.pump(now, &mut out);
        out
    }

    /// Stop `names` (what waits for them is not stopped, but among the
    /// named, dependents stop first).
    pub fn stop(&mut self, names: &[String], now: Instant) -> Result<Vec<Action>, String> {
        let set = self.resolve_indices(names)?;
        self.note_asked(&set);
        for &i in &set {
            let name = self.graph.name(i).to_string();
            self.restart_queue.remove(&name);
            self.stop_queue.insert(name);
        }
        let mut out = Vec::new();
        self.pump(now, &mut out);
        Ok(out)
    }

    /// Stop everything, retiring instances included (shutdown); then wait
    /// for [`all_down`](Self::all_down).
    pub fn stop_all(&mut self, now: Instant) -> Vec<Action> {
        let mut out = self.stop(&[], now).expect("no names cannot be unknown");
        for i in 0..self.retiring.len() {
            self.step(Slot::Retiring(i), Input::Stop, now, &mut out);
        }
        out
    }

    /// Stop `names` in reverse dependency order, then start them again in
    /// order (a stopped one is just started).
    pub fn restart(&mut self, names: &[String], now: Instant) -> Result<Vec<Action>, String> {
        let set = self.resolve_indices(names)?;
        self.note_asked(&set);
        for &i in &set {
            let name = self.graph.name(i).to_string();
            self.stop_queue.insert(name.clone());
            self.restart_queue.insert(name);
        }
        let mut out = Vec::new();
        self.pump(now, &mut out);
        Ok(out)
    }

    /// Take a new configuration: stop removed instances, restart changed
    /// ones that run (in dependency order), start added ones. Unchanged
    /// instances are not touched.
    pub fn reload(
        &mut self,
        new: Config,
        now: Instant,
    ) -> Result<(ReloadPlan, Vec<Action>), GraphError> {
        let plan = plan_reload(&self.config, &new);
        let specs = new.expand();
        let graph = instance_graph(&specs)?;
        let mut old: HashMap<String, Instance> =
            self.instances.drain(..).map(|i| (i.name().to_string(), i)).collect();
        let mut instances = Vec::with_capacity(specs.len());
        for spec in specs {
            match old.remove(&spec.name) {
                Some(mut inst) => {
                    if *inst.spec() != spec {
                        inst.set_spec(spec);
                    }
                    instances.push(inst);
                }
                None => instances.push(Instance::new(spec)),
            }
        }
        let mut out = Vec::new();
        let first_retiring = self.retiring.len();
        for name in &plan.removed {
            if let Some(inst) = old.remove(name) {
                self.retiring.push(inst);
            }
        }
        self.instances = instances;
        self.graph = graph;
        self.config = new;
        self.stop_queue.retain(|n| self.graph.index(n).is_some());
        self.restart_queue.retain(|n| self.graph.index(n).is_some());
        for i in first_retiring..self.retiring.len() {
            self.step(Slot::Retiring(i), Input::Stop, now, &mut out);
        }
        for name in &plan.changed {
            let i = self.graph.index(name).expect("changed names are in the new graph");
            // Running or on its way up (not already being stopped by
            // someone): restart it with the new spec.
            let st = self.instances[i].state();
            if matches!(st, State::Starting(_) | State::Running | State::Ready | State::Waiting) {
                self.stop_queue.insert(name.clone());
                self.restart_queue.insert(name.clone());
            }
        }
        for name in &plan.added {
            let i = self.graph.index(name).expect("added names are in the new graph");
            self.step(Slot::Live(i), Input::Queue, now, &mut out);
        }
        self.pump(now, &mut out);
        Ok((plan, out))
    }

    // ------------------------------------------------------------ observations

    /// The reactor spawned `name` (an [`Action::Spawn`]).
    pub fn on_spawned(&mut self, name: &str, pid: u32, now: Instant) -> Vec<Action> {
        self.feed_named(name, Input::Spawned { pid }, now)
    }

    /// Watch the detached instance `name` as running with `pid` (found
    /// alive when weaver starts) instead of starting it. Only a stopped
    /// or waiting detached instance takes this; call before
    /// [`plan_start_all`](Self::plan_start_all).
    pub fn adopt(&mut self, name: &str, pid: u32, now: Instant) -> Vec<Action> {
        self.feed_named(name, Input::Adopt { pid }, now)
    }

    /// The reactor could not spawn `name`.
    pub fn on_spawn_failed(&mut self, name: &str, error: String, now: Instant) -> Vec<Action> {
        self.feed_named(name, Input::SpawnFailed { error }, now)
    }

    /// A child was reaped. Pids of hooks and probes are the reactor's to
    /// route (it spawned them); an unknown pid gives nothing.
    pub fn on_exit(&mut self, pid: u32, exit: Exit, now: Instant) -> Vec<Action> {
        let slot = self.slots().find(|&s| self.get(s).owns_pid(pid));
        self.feed(slot, Input::Exited(exit), now)
    }

    /// A timer fired; stale ones (replaced or cancelled) give nothing.
    pub fn on_timer(&mut self, key: &TimerKey, now: Instant) -> Vec<Action> {
        let slot = self.slot(&key.instance).filter(|&s| self.get_mut(s).take_timer(key));
        self.feed(slot, Input::Timer(key.kind), now)
    }

    /// A probe finished.
    pub fn on_probe(&mut self, run: RunId, outcome: ProbeOutcome, now: Instant) -> Vec<Action> {
        let found = self.slots().find_map(|s| Some((s, self.get(s).probe_of(run)?)));
        match found {
            Some((slot, role)) => self.feed(Some(slot), Input::Probe { role, outcome }, now),
            None => Vec::new(),
        }
    }

    /// A hook finished: `ok` when it exited 0; `detail` says how it ended
    /// otherwise ("exited with code 2").
    pub fn on_hook_exit(
        &mut self,
        run: RunId,
        ok: bool,
        detail: String,
        now: Instant,
    ) -> Vec<Action> {
        let found = self.slots().find_map(|s| Some((s, self.get(s).hook_of(run)?)));
        match found {
            Some((slot, hook)) => self.feed(Some(slot), Input::HookDone { hook, ok, detail }, now),
            None => Vec::new(),
        }
    }

    /// A chunk from `name`'s stdout or stderr: lines go to its ring and
    /// out as `Output` events; the ready log pattern is looked for.
    pub fn on_output(
        &mut self,
        name: &str,
        stream: Stream,
        chunk: &[u8],
        time_ms: u64,
        now: Instant,
    ) -> Vec<Action> {
        let Some(slot) = self.slot(name) else { return Vec::new() };
        let (mut out, matched) = self.get_mut(slot).output(stream, chunk, time_ms);
        if matched {
            out.extend(self.feed(Some(slot), Input::LogMatched, now));
        }
        out
    }

    /// `name`'s stdout or stderr closed.
    pub fn on_output_eof(
        &mut self,
        name: &str,
        stream: Stream,
        time_ms: u64,
        now: Instant,
    ) -> Vec<Action> {
        let Some(slot) = self.slot(name) else { return Vec::new() };
        let (mut out, matched) = self.get_mut(slot).output_eof(stream, time_ms);
        if matched {
            out.extend(self.feed(Some(slot), Input::LogMatched, now));
        }
        out
    }

    // ------------------------------------------------------------ internals

    /// Every instance: live ones in declaration order, then retiring ones.
    pub fn all(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().chain(self.retiring.iter())
    }

    fn slots(&self) -> impl Iterator<Item = Slot> {
        (0..self.instances.len())
            .map(Slot::Live)
            .chain((0..self.retiring.len()).map(Slot::Retiring))
    }

    fn slot(&self, name: &str) -> Option<Slot> {
        if let Some(i) = self.graph.index(name) {
            return Some(Slot::Live(i));
        }
        self.retiring.iter().position(|r| r.name() == name).map(Slot::Retiring)
    }

    fn get(&self, slot: Slot) -> &Instance {
        match slot {
            Slot::Live(i) => &self.instances[i],
            Slot::Retiring(i) => &self.retiring[i],
        }
    }

    fn get_mut(&mut self, slot: Slot) -> &mut Instance {
        match slot {
            Slot::Live(i) => &mut self.instances[i],
            Slot::Retiring(i) => &mut self.retiring[i],
        }
    }

    /// "processes: a, w (w.0 .. w.2)" for error messages.
    fn known_names(&self) -> String {
        if self.instances.is_empty() {
            return "no processes are declared (weaver.toml has none)".into();
        }
        let mut parts: Vec<String> = Vec::new();
        let mut i = 0;
        while i < self.instances.len() {
            let p = &self.instances[i].spec().process;
            let mut j = i;
            while j + 1 < self.instances.len() && self.instances[j + 1].spec().process == *p {
                j += 1;
            }
            if self.instances[i].name() == p {
                parts.push(p.clone());
            } else {
                let (first, last) = (self.instances[i].name(), self.instances[j].name());
                parts.push(format!("{p} ({first} .. {last})"));
            }
            i = j + 1;
        }
        format!("processes: {}", parts.join(", "))
    }

    fn resolve_indices(&self, names: &[String]) -> Result<BTreeSet<usize>, String> {
        if names.is_empty() {
            return Ok((0..self.instances.len()).collect());
        }
        let mut set = BTreeSet::new();
        for n in names {
            if let Some(i) = self.graph.index(n) {
                set.insert(i);
                continue;
            }
            let of_process: Vec<usize> = (0..self.instances.len())
                .filter(|&i| self.instances[i].spec().process == *n)
                .collect();
            if of_process.is_empty() {
                let known = self.instances.iter().map(|i| i.spec().process.as_str());
                let hint = config::did_you_mean(config::suggest(n, known));
                return Err(format!("no process named \"{n}\"{hint}; {}", self.known_names()));
            }
            set.extend(of_process);
        }
        Ok(set)
    }

    fn step(&mut self, slot: Slot, input: Input, now: Instant, out: &mut Vec<Action>) {
        let random = self.rng.next_u64();
        let mut cx = Ctx { now, random, next_id: &mut self.next_id, out };
        match slot {
            Slot::Live(i) => self.instances[i].step(input, &mut cx),
            Slot::Retiring(i) => self.retiring[i].step(input, &mut cx),
        }
    }

    fn feed(&mut self, slot: Option<Slot>, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(slot) = slot {
            self.step(slot, input, now, &mut out);
            self.pump(now, &mut out);
        }
        out
    }

    fn feed_named(&mut self, name: &str, input: Input, now: Instant) -> Vec<Action> {
        let slot = self.slot(name);
        self.feed(slot, input, now)
    }

    /// Release what the gates allow, until nothing changes.
    fn pump(&mut self, now: Instant, out: &mut Vec<Action>) {
        for _ in 0..=self.instances.len() + 1 {
            let before = out.len();
            self.release_stops(now, out);
            self.release_restarts(now, out);
            self.release_starts(now, out);
            if out.len() == before {
                break;
            }
        }
        self.retiring.retain(|r| !r.is_down());
    }

    fn release_stops(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.stop_queue.is_empty() {
            return;
        }
        for i in self.graph.stop_order() {
            let name = self.graph.name(i).to_string();
            if !self.stop_queue.contains(&name) {
                continue;
            }
            // Something not running is "stopped" at once; a running one
            // waits for what depends on it (directly or through a process
            // that is already down, e.g. a finished one-shot job) and is
            // stopping too.
            let blocked = self.instances[i].state().is_up()
                && self.graph.all_dependents(i).iter().any(|&d| {
                    self.stop_queue.contains(self.graph.name(d))
                        || matches!(self.instances[d].state(), State::Stopping(_))
                });
            if !blocked {
                self.stop_queue.remove(&name);
                self.step(Slot::Live(i), Input::Stop, now, out);
            }
        }
    }

    fn release_restarts(&mut self, now: Instant, out: &mut Vec<Action>) {
        let ready: Vec<String> = self
            .restart_queue
            .iter()
            .filter(|n| !self.stop_queue.contains(*n))
            .filter(|n| {
                let i = self.graph.index(n).expect("queues hold live names");
                !self.instances[i].state().is_up()
            })
            .cloned()
            .collect();
        for name in ready {
            self.restart_queue.remove(&name);
            let i = self.graph.index(&name).expect("queues hold live names");
            self.step(Slot::Live(i), Input::Queue, now, out);
        }
    }

    fn release_starts(&mut self, now: Instant, out: &mut Vec<Action>) {
        for &i in &self.graph.start_order().to_vec() {
            if *self.instances[i].state() != State::Waiting {
                continue;
            }
            let mut verdict = Satisfied::Yes;
            for &(d, cond) in self.graph.deps(i) {
                match self.instances[d].satisfies(cond) {
                    Satisfied::Yes => {}
                    Satisfied::NotYet => verdict = Satisfied::NotYet,
                    never @ Satisfied::Never(_) => {
                        verdict = never;
                        break;
                    }
                }
            }
            let input = match verdict {
                Satisfied::Yes => Input::Start,
                Satisfied::NotYet => continue,
                Satisfied::Never(reason) => Input::DependencyFailed { reason },
            };
            self.step(Slot::Live(i), input, now, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};
    use std::time::Duration;

    use super::*;
    use crate::supervise::config::parse;
    use crate::supervise::events::EventKind;
    use crate::supervise::machine::Check;

    /// Plays the reactor: spawns succeed at once with fresh pids (unless
    /// told otherwise), timers fire when the clock passes them, file
    /// probes are answered from a set of paths that "exist".
    struct World {
        sup: Supervisor,
        now: Instant,
        timers: BTreeMap<(Instant, u64), TimerKey>,
        next_pid: u32,
        pids: HashMap<String, u32>,
        cannot_spawn: BTreeSet<String>,
        files: BTreeSet<String>,
        /// Hook runs in flight: run -> (instance, hook name).
        hooks: BTreeMap<RunId, (String, &'static str)>,
        /// Command probes in flight: run -> instance.
        probes: BTreeMap<RunId, String>,
        log: Vec<String>,
    }

    impl World {
        fn new(toml: &str) -> World {
            let config = parse(toml, "t.toml").unwrap();
            let t0 = Instant::now();
            World {
                sup: Supervisor::new(config, 7).unwrap(),
                now: t0,
                timers: BTreeMap::new(),
                next_pid: 100,
                pids: HashMap::new(),
                cannot_spawn: BTreeSet::new(),
                files: BTreeSet::new(),
                hooks: BTreeMap::new(),
                probes: BTreeMap::new(),
                log: Vec::new(),
            }
        }

        /// Perform actions the way the reactor would, feeding answers back.
        fn run(&mut self, actions: Vec<Action>) {
            let mut queue: VecDeque<Action> = actions.into();
            while let Some(a) = queue.pop_front() {
                let more = match a {
                    Action::Spawn { spec } => {
                        if self.cannot_spawn.contains(&spec.name) {
                            self.sup.on_spawn_failed(&spec.name, "ENOENT".into(), self.now)
                        } else {
                            let pid = self.next_pid;
                            self.next_pid += 1;
                            self.pids.insert(spec.name.clone(), pid);
                            self.sup.on_spawned(&spec.name, pid, self.now)
                        }
                    }
                    Action::ArmTimer { key, at } => {
                        self.timers.insert((at, key.token), key);
                        vec![]
                    }
                    Action::CancelTimer { key } => {
                        self.timers.retain(|_, k| *k != key);
                        vec![]
                    }
                    Action::Signal { instance, signal, .. } => {
                        self.log.push(format!("{instance} <- {}", signal.as_str()));
                        vec![]
                    }
                    Action::RunHook { run, instance, hook, .. } => {
                        self.log.push(format!("{instance} hook {}", hook.name()));
                        self.hooks.insert(run, (instance, hook.name()));
                        vec![]
                    }
                    Action::Probe { run, instance, check, .. } => match check {
                        Check::FileExists(p) | Check::PidFileLive(p) => {
                            let ok = self.files.contains(p.to_str().unwrap());
                            let outcome = ProbeOutcome { ok, pid: ok.then_some(999) };
                            self.sup.on_probe(run, outcome, self.now)
                        }
                        Check::Command { .. } => {
                            self.probes.insert(run, instance);
                            vec![]
                        }
                    },
                    Action::Emit { instance, kind } => {
                        let what = match kind {
                            EventKind::Failed { reason } => format!("failed: {reason}"),
                            EventKind::Exited { code } => format!("exited {code}"),
                            EventKind::Output { .. } => "output".into(),
                            other => other.name().into(),
                        };
                        self.log.push(format!("{instance} {what}"));
                        vec![]
                    }
                    Action::KillHook { .. }
                    | Action::KillProbe { .. }
                    | Action::WritePidFile { .. }
                    | Action::RemovePidFile { .. } => vec![],
                };
                queue.extend(more);
            }
        }

        /// Advance the clock, firing timers in order.
        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            while let Some((&(at, token), _)) = self.timers.iter().next() {
                if at > end {
                    break;
                }
                let key = self.timers.remove(&(at, token)).unwrap();
                self.now = self.now.max(at);
                let out = self.sup.on_timer(&key, self.now);
                self.run(out);
            }
            self.now = end;
        }

        fn exit(&mut self, name: &str, exit: Exit) {
            let pid = self.pids[name];
            let out = self.sup.on_exit(pid, exit, self.now);
            self.run(out);
        }

        fn hook_done(&mut self, name: &str, ok: bool) {
            let run = self.hooks.iter().find(|(_, (n, _))| n == name).map(|(&r, _)| r).unwrap();
            self.hooks.remove(&run);
            let out = self.sup.on_hook_exit(run, ok, "exited with code 1".into(), self.now);
            self.run(out);
        }

        fn probe_done(&mut self, name: &str, ok: bool) {
            let run = self.probes.iter().find(|(_, n)| *n == name).map(|(&r, _)| r).unwrap();
            self.probes.remove(&run);
            let out = self.sup.on_probe(run, ProbeOutcome { ok, pid: None }, self.now);
            self.run(out);
        }

        fn take_log(&mut self) -> Vec<String> {
            std::mem::take(&mut self.log)
        }

        fn state(&self, name: &str) -> String {
            self.sup.instance(name).unwrap().state().label()
        }

        fn names(v: &[&str]) -> Vec<String> {
            v.iter().map(|s| s.to_string()).collect()
        }
    }

    const STACK: &str = r#"
[[process]]
name = "web"
command = ["web"]
instances = 2
after = [{ name = "db", condition = "ready" }, { name = "migrate", condition = "exited_ok" }]

[[process]]
name = "migrate"
command = ["migrate"]
auto_restart = false
start_duration = 0
after = ["db"]

[[process]]
name = "db"
command = ["db"]
priority = 5
[process.detectors.ready]
command = ["pg_isready"]

[[process]]
name = "cache"
command = ["cache"]
priority = -1
"#;

    const S1: Duration = Duration::from_secs(1);

    #[test]
    fn instances_wait_for_every_instance_of_a_dependency() {
        let config = parse(
            r#"
            [[process]]
            name = "web"
            command = ["web"]
            instances = 2
            after = ["db"]
            [[process]]
            name = "db"
            command = ["db"]
            instances = 2
            priority = 5
            [[process]]
            name = "early"
            command = ["x"]
            priority = -1
            "#,
            "t.toml",
        )
        .unwrap();
        let mut specs = config.expand();
        let g = instance_graph(&specs).unwrap();
        let names = |order: &[usize]| -> Vec<String> {
            order.iter().map(|&i| g.name(i).to_string()).collect()
        };
        assert_eq!(names(g.start_order()), ["early", "db.0", "db.1", "web.0", "web.1"]);
        assert_eq!(names(&g.stop_order()), ["web.1", "web.0", "db.1", "db.0", "early"]);
        let web0 = g.index("web.0").unwrap();
        let deps: Vec<&str> = g.deps(web0).iter().map(|&(d, _)| g.name(d)).collect();
        assert_eq!(deps, ["db.0", "db.1"]);
        assert!(g.deps(web0).iter().all(|&(_, c)| c == Condition::Started));
        let db1 = g.index("db.1").unwrap();
        let waiting: Vec<usize> = g.all_dependents(db1).into_iter().collect();
        assert_eq!(names(&waiting), ["web.0", "web.1"]);
        let all = g.with_dependencies(&[web0]);
        assert_eq!(names(&g.sort_for_start(&all)), ["db.0", "db.1", "web.0"]);

        specs[4]
            .after
            .push(config::Dependency { name: "nope".into(), condition: Condition::Ready });
        assert_eq!(
            instance_graph(&specs).unwrap_err().to_string(),
            "early waits for unknown process \"nope\""
        );
    }

    #[test]
    fn start_all_follows_priority_then_dependencies_and_their_conditions() {
        let mut w = World::new(STACK);
        let out = w.sup.plan_start_all(w.now);
        w.run(out);
        // Free to go now: cache (priority -1) before db (5); the rest wait.
        assert_eq!(w.take_log(), ["cache started", "db started"]);
        assert_eq!(w.state("web.0"), "waiting");
        assert_eq!(w.state("migrate"), "waiting");
        w.advance(S1);
        // db started: migrate (after db, started) goes; web waits for ready.
        assert_eq!(
            w.take_log(),
            ["cache running", "db running", "migrate started", "migrate running"]
        );
        w.probe_done("db", true);
        assert_eq!(w.take_log(), ["db ready"]);
        assert_eq!(w.state("web.0"), "waiting", "migrate has not exited yet");
        w.exit("migrate", Exit::Code(0));
        assert_eq!(w.take_log(), ["migrate exited 0", "web.0 started", "web.1 started"]);
        let row = &w.sup.ps(w.now)[0];
        assert_eq!(
            (row.name.as_str(), row.state.as_str(), row.pid),
            ("web.0", "starting", Some(103))
        );
        assert_eq!(w.sup.by_pid(103), Some("web.0"));
        assert_eq!(w.sup.by_pid(1), None);
        assert!(w.sup.on_exit(1, Exit::Code(0), w.now).is_empty(), "unknown pids are ignored");
    }

    #[test]
    fn a_waiter_fails_when_its_dependency_cannot_succeed() {
        let mut w = World::new(STACK);
        let out = w.sup.plan_start_all(w.now);
        w.run(out);
        w.advance(S1);
        w.probe_done("db", true);
        w.take_log();
        w.exit("migrate", Exit::Code(1));
        assert_eq!(
            w.take_log(),
            [
                "migrate exited 1",
                "web.0 failed: cannot start: migrate exited with code 1",
                "web.1 failed: cannot start: migrate exited with code 1"
            ]
        );
    }

    #[test]
    fn a_stop_waits_for_dependents_reached_through_a_finished_job() {
        // web waits for migrate (done), which waited for db: web still
        // needs db, so db stops only after web.
        let mut w = World::new(
            r#"
[[process]]
name = "web"
command = ["web"]
after = [{ name = "migrate", condition = "exited_ok" }]

[[process]]
name = "migrate"
command = ["migrate"]
auto_restart = false
start_duration = 0
after = ["db"]

[[process]]
name = "db"
command = ["db"]
"#,
        );
        let out = w.sup.plan_start_all(w.now);
        w.run(out);
        w.advance(S1);
        w.exit("migrate", Exit::Code(0));
        w.advance(S1);
        assert_eq!(w.state("web"), "running");
        w.take_log();
        let out = w.sup.stop_all(w.now);
        w.run(out);
        assert_eq!(w.take_log(), ["web stopping", "web <- SIGTERM", "migrate stopped"]);
        w.exit("web", Exit::Code(0));
        assert_eq!(w.take_log(), ["web exited 0", "web stopped", "db stopping", "db <- SIGTERM"]);
    }

    #[test]
    fn stop_all_stops_dependents_first_and_waits_for_them() {
        let mut w = World::new(STACK);
        let out = w.sup.plan_start_all(w.now);
        w.run(out);
        w.advance(S1);
        w.probe_done("db", true);
        w.exit("migrate", Exit::Code(0));
        w.advance(S1);
        w.take_log();
        let out = w.sup.stop_all(w.now);
        w.run(out);
        // web.* wait for nobody; db waits for web.*; cache is independent.
        assert_eq!(
            w.take_log(),
            [
                "web.1 stopping",
                "web.1 <- SIGTERM",
                "web.0 stopping",
                "web.0 <- SIGTERM",
                "migrate stopped",
                "cache stopping",
                "cache <- SIGTERM"
            ]
        );
        w.exit("web.0", Exit::Code(0));
        assert_eq!(w.take_log(), ["web.0 exited 0", "web.0 stopped"]);
        assert!(!w.sup.all_down());
        w.exit("web.1", Exit::Code(0));
        assert_eq!(
            w.take_log(),
            ["web.1 exited 0", "web.1 stopped", "db stopping", "db <- SIGTERM"]
        );
        w.exit("db", Exit::Code(0));
        w.exit("cache", Exit::Code(0));
        assert!(w.sup.all_down());
        assert!(w.timers.is_empty(), "{:?}", w.timers);
    }

    #[test]
    fn starting_one_pulls_in_what_it_waits_for_and_names_are_checked() {
        let mut w = World::new(STACK);
        let out = w.sup.start(&World::names(&["migrate"]), w.now).unwrap();
        w.run(out);
        assert_eq!(w.take_log(), ["db started"]);
        w.advance(S1);
        assert_eq!(w.take_log(), ["db running", "migrate started", "migrate running"]);
        assert_eq!(w.state("cache"), "stopped");
        assert_eq!(w.state("web.0"), "stopped");
        let err = w.sup.start(&World::names(&["wbe"]), w.now).unwrap_err();
        assert_eq!(
            err,
            "no process named \"wbe\" (did you mean \"web\"?); processes: web (web.0 .. web.1), migrate, db, cache"
        );
        assert_eq!(w.sup.resolve(&World::names(&["web", "db"])).unwrap(), ["db", "web.0", "web.1"]);
        assert_eq!(w.sup.resolve(&World::names(&["web.1"])).unwrap(), ["web.1"]);
    }

    #[test]
    fn restart_stops_in_reverse_order_and_starts_in_order() {
        let toml = r#"
[[process]]
name = "a"
command = ["a"]
[[process]]
name = "b"
command = ["b"]
after = ["a"]
"#;
        let mut w = World::new(toml);
        let out = w.sup.plan_start_all(w.now);
        w.run(out);
        w.advance(S1);
        w.take_log();
        let out = w.sup.restart(&[], w.now).unwrap();
        w.run(out);
        assert_eq!(w.take_log(), ["b stopping", "b <- SIGTERM"]);
        w.exit("b", Exit::Signal(15));
        assert_eq!(w.take_log(), ["b killed", "b stopped", "a stopping", "a <- SIGTERM"]);
        w.exit("a", Exit::Signal(15));
        assert_eq!(w.take_log(), ["a killed", "a stopped", "a started"]);
        w.advance(S1);
        assert_eq!(w.take_log(), ["a running", "b started"]);
    }

    #[test]
    fn spawn_failures_are_retried_and_timers_that_were_replaced_are_ignored() {
        let toml = "[[process]]\nname = \"x\"\ncommand = [\"nope\"]\nretry_count = 1\n";
        let mut w = World::new(toml);
        w.cannot_spawn.insert("x".into());
        let out = w.sup.plan_start_all(w.now);
        w.run(out);
        assert_eq!(w.take_log(), ["x warning", "x restarting"]);
        let stale = w.timers.values().next().unwrap().clone();
        w.advance(S1);
        assert_eq!(
            w.take_log(),
            ["x warning", "x failed: failed to start: cannot spawn nope: ENOENT (2 attempts)"]
        );
        assert!(w.sup.on_timer(&stale, w.now).is_empty(), "a fired timer cannot fire twice");
        let row = &w.sup.ps(w.now)[0];
        assert_eq!(row.state, "failed");
        assert!(row.reason.as_deref().unwrap().contains("ENOENT"));
    }

    #[test]
    fn output_goes_to_the_ring_and_a_log_pattern_makes_it_ready() {
        let toml = "[[process]]\nname = \"s\"\ncommand = [\"s\"]\nstart_duration = 0\n\
                    [process.detectors.ready]\nlog_pattern = \"READY\"\n";
        let mut w = World::new(toml);
        let out = w.sup.plan_start_all(w.now);
        w.run(out);
        w.advance(Duration::ZERO);
        w.take_log();
        let out = w.sup.on_output("s", Stream::Stderr, b"warming up\nRE", 10, w.now);
        w.run(out);
        let out = w.sup.on_output("s", Stream::Stderr, b"ADY\npartial", 11, w.now);
        w.run(out);
        assert_eq!(w.take_log(), ["s output", "s output", "s ready"]);
        let out = w.sup.on_output_eof("s", Stream::Stderr, 12, w.now);
        w.run(out);
        let logs = w.sup.logs("s", 0, 10).unwrap();
        let texts: Vec<&[u8]> = logs.lines.iter().map(|l| l.bytes.as_slice()).collect();
        assert_eq!(texts, [&b"warming up"[..], b"READY", b"partial"]);
        assert!(logs.lines[2].cut);
        assert_eq!(w.sup.logs("s", logs.next, 10).unwrap().lines.len(), 0);
        assert!(w.sup.logs("nope", 0, 1).is_none());
    }

    #[test]
    fn a_blocking_pre_start_hook_holds_back_dependents() {
        let toml = r#"
[[process]]
name = "a"
command = ["a"]
[process.hooks.pre_start]
command = ["prep"]
[[process]]
name = "b"
command = ["b"]
after = ["a"]
"#;
        let mut w = World::new(toml);
        let out = w.sup.plan_start_all(w.now);
        w.run(out);
        assert_eq!(w.take_log(), ["a hook pre_start"]);
        w.advance(Duration::from_secs(5));
        assert!(w.take_log().is_empty());
        w.hook_done("a", true);
        assert_eq!(w.take_log(), ["a hook", "a started"]);
        w.advance(S1);
        assert_eq!(w.take_log(), ["a running", "b started"]);
    }

    #[test]
    fn a_start_while_stopping_starts_again_once_stopped() {
        let mut w = World::new("[[process]]\nname = \"a\"\ncommand = [\"a\"]\n");
        let out = w.sup.plan_start_all(w.now);
        w.run(out);
        let out = w.sup.stop(&[], w.now).unwrap();
        w.run(out);
        let out = w.sup.start(&[], w.now).unwrap();
        w.run(out);
        w.take_log();
        w.exit("a", Exit::Code(0));
        assert_eq!(w.take_log(), ["a exited 0", "a stopped", "a started"]);
        // Stopping a waiting or backing-off instance is immediate.
        w.advance(S1);
        w.exit("a", Exit::Code(1));
        assert_eq!(w.take_log(), ["a running", "a exited 1", "a restarting"]);
        let out = w.sup.stop(&[], w.now).unwrap();
        w.run(out);
        assert_eq!(w.take_log(), ["a stopped"]);
        assert!(w.sup.all_down() && w.timers.is_empty());
    }

    #[test]
    fn the_autostart_leaves_what_a_request_already_named() {
        // The daemon starts what autostarts a moment after it listens
        // (once it joined its cgroup): a stop or start that came first wins.
        let toml = "[[process]]\nname = \"a\"\ncommand = [\"a\"]\n\
                    [[process]]\nname = \"b\"\ncommand = [\"b\"]\n\
                    [[process]]\nname = \"c\"\ncommand = [\"c\"]\n";
        let mut w = World::new(toml);
        let out = w.sup.stop(&["a".into()], w.now).unwrap();
        w.run(out);
        let out = w.sup.start(&["b".into()], w.now).unwrap();
        w.run(out);
        assert_eq!(w.take_log(), ["b started"]);
        let out = w.sup.plan_start_all(w.now);
        w.run(out);
        assert_eq!(w.take_log(), ["c started"], "a stays stopped, b is not started twice");
        assert_eq!(*w.sup.instance("a").unwrap().state(), State::Stopped);
    }

    #[test]
    fn a_reload_is_planned_by_instance_and_applied_in_order() {
        let old_toml = r#"
[[process]]
name = "db"
command = ["db"]
[[process]]
name = "web"
command = ["web", "--v1"]
after = ["db"]
[[process]]
name = "old"
command = ["old"]
[[process]]
name = "idle"
command = ["idle"]
auto_restart = false
"#;
        let new_toml = r#"
[[process]]
name = "db"
command = ["db"]
[[process]]
name = "web"
command = ["web", "--v2"]
after = ["db"]
[[process]]
name = "fresh"
command = ["fresh"]
after = ["web"]
[[process]]
name = "idle"
command = ["idle", "--changed"]
auto_restart = false
[compute]
workers = 2
"#;
        let old = parse(old_toml, "t").unwrap();
        let new = parse(new_toml, "t").unwrap();
        let plan = plan_reload(&old, &new);
        assert_eq!(
            plan,
            ReloadPlan {
                added: vec!["fresh".into()],
                removed: vec!["old".into()],
                changed: vec!["web".into(), "idle".into()],
                unchanged: vec!["db".into()],
                compute_changed: true,
            }
        );
        let mut w = World::new(old_toml);
        let out = w.sup.start(&World::names(&["db", "web", "old"]), w.now).unwrap();
        w.run(out);
        w.advance(S1);
        let db_pid = w.pids["db"];
        w.take_log();
        let (_, out) = w.sup.reload(new, w.now).unwrap();
        w.run(out);
        // old is stopped; web (running, changed) is restarted; fresh waits
        // for web; db and idle (stopped, changed) are left alone.
        assert_eq!(
            w.take_log(),
            ["old stopping", "old <- SIGTERM", "web stopping", "web <- SIGTERM"]
        );
        assert_eq!(w.state("fresh"), "waiting");
        assert_eq!(w.state("idle"), "stopped");
        assert_eq!(w.sup.instance("idle").unwrap().spec().argv, ["idle", "--changed"]);
        w.exit("web", Exit::Code(0));
        assert_eq!(w.take_log(), ["web exited 0", "web stopped", "web started"]);
        assert_eq!(w.sup.instance("web").unwrap().spec().argv, ["web", "--v2"]);
        w.exit("old", Exit::Code(0));
        assert_eq!(w.take_log(), ["old exited 0", "old stopped"]);
        assert!(w.sup.instance("old").is_none(), "gone once down");
        w.advance(S1);
        assert_eq!(w.take_log(), ["web running", "fresh started"]);
        assert_eq!(w.pids["db"], db_pid, "db was not touched");
        assert_eq!(w.state("db"), "running");
    }
}
