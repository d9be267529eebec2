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

use super::config::{self, Config, InstanceSpec};
use super::graph::{Graph, GraphError};
use super::machine::{
    Action, Ctx, Exit, Input, Instance, ProbeOutcome, PsRow, RunId, Satisfied, State, TimerKey,
};
use super::ring::{Since, Stream};

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

/// Start order, or declaration order for specs that cannot be ordered.
fn start_order_of(specs: &[InstanceSpec]) -> Vec<usize> {
    match Graph::new(specs) {
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
    graph: Graph,
    retiring: Vec<Instance>,
    /// Asked to stop; waiting for what waits for them to go first.
    stop_queue: BTreeSet<String>,
    /// To start again once they are down (ordered restart).
    restart_queue: BTreeSet<String>,
    /// Run ids and timer tokens.
    next_id: u64,
    /// splitmix64 state for backoff jitter.
    rng: u64,
}

impl Supervisor {
    /// All instances of `config`, stopped. `seed` drives the backoff
    /// jitter (pass something varying, e.g. the time, outside tests).
    pub fn new(config: Config, seed: u64) -> Result<Supervisor, GraphError> {
        let specs = config.expand();
        let graph = Graph::new(&specs)?;
        Ok(Supervisor {
            config,
            instances: specs.into_iter().map(Instance::new).collect(),
            graph,
            retiring: Vec::new(),
            stop_queue: BTreeSet::new(),
            restart_queue: BTreeSet::new(),
            next_id: 1,
            rng: seed,
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

    /// Start everything (in dependency and priority order).
    pub fn plan_start_all(&mut self, now: Instant) -> Vec<Action> {
        self.start(&[], now).expect("no names cannot be unknown")
    }

    /// Start `names` and what they wait for.
    pub fn start(&mut self, names: &[String], now: Instant) -> Result<Vec<Action>, String> {
        let set = self.resolve_indices(names)?;
        let with_deps = self.graph.with_dependencies(&set.iter().copied().collect::<Vec<_>>());
        let mut out = Vec::new();
        for i in self.graph.sort_for_start(&with_deps) {
            let name = self.graph.name(i).to_string();
            self.stop_queue.remove(&name);
            self.step(Slot::Live(i), Input::Queue, now, &mut out);
        }
        self.pump(now, &mut out);
        Ok(out)
    }

    /// Stop `names` (what waits for them is not stopped, but among the
    /// named, dependents stop first).
    pub fn stop(&mut self, names: &[String], now: Instant) -> Result<Vec<Action>, String> {
        let set = self.resolve_indices(names)?;
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
        let graph = Graph::new(&specs)?;
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
            let st = self.instances[i].state();
            if st.is_up() || *st == State::Waiting {
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

    fn all(&self) -> impl Iterator<Item = &Instance> {
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
                let hint = config::suggest(n, known)
                    .map(|k| format!(" (did you mean \"{k}\"?)"))
                    .unwrap_or_default();
                return Err(format!("no process named \"{n}\"{hint}"));
            }
            set.extend(of_process);
        }
        Ok(set)
    }

    /// splitmix64.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn step(&mut self, slot: Slot, input: Input, now: Instant, out: &mut Vec<Action>) {
        let random = self.random();
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
        self.retiring.retain(Instance::is_down);
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
            let blocked = self.graph.dependents(i).iter().any(|&d| {
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
