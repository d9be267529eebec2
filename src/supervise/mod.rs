//! Supervised processes: everything about them that is not I/O.
//!
//! weaver runs the processes declared in `weaver.toml` (see [`config`])
//! besides compute. This module decides; the reactor acts. Every type here
//! is a plain struct: methods take values (the time as an `Instant`, random
//! numbers as a seed) and return values, so all of it is tested without
//! processes, sockets or sleeps.
//!
//! | file | job |
//! |---|---|
//! | [`config`] | parse `weaver.toml` with spans, report every error with file:line:col, expand instances |
//! | `duration` | the duration syntax both ways: [`human`] prints what `weaver.toml` reads |
//! | [`graph`] | start and stop order, cycles with their path |
//! | [`backoff`] | restart delays, retries of failed starts, giving up |
//! | [`machine`] | one instance's lifecycle: `step(state, input) -> actions` |
//! | [`supervisor`] | all instances: dependency gating, ordered stop/restart, routing, `ps`, reload |
//! | [`ring`] | recent output per instance, line assembly from pipe chunks |
//! | [`events`] | event fan-out with bounded per-subscriber queues |
//! | [`rotate`] | size-based rotation plan for `output.file` |
//!
//! # The contract with the reactor
//!
//! At start-up: `config::locate(flag)` then `config::load(path)` (no file:
//! `Config::default()`, no processes); on errors print `ConfigErrors` (one
//! per line) and refuse to start. Then `Supervisor::new(config, seed)` and
//! `plan_start_all(now)`.
//!
//! Every `Supervisor` method returns `Vec<Action>`; perform them in order.
//! Some actions are answered at once by calling back into the supervisor,
//! whose answer is more actions, so a work queue is the natural shape:
//!
//! ```text
//! let mut todo: VecDeque<Action> = sup.plan_start_all(now).into();
//! while let Some(action) = todo.pop_front() {
//!     let more = match action {
//!         Spawn { spec } => match spawn(&spec) {            // own process group, pipes
//!             Ok(pid) => sup.on_spawned(&spec.name, pid, now),
//!             Err(e) => sup.on_spawn_failed(&spec.name, e.to_string(), now),
//!         },
//!         RunHook { run, spec, .. } => { spawn_hook(run, &spec); vec![] }   // own group
//!         KillHook { run } | KillProbe { run } => { killpg_if_running(run); vec![] }
//!         Probe { run, check: Check::Command { .. }, .. } => { spawn_probe(run); vec![] }
//!         Probe { run, check: Check::FileExists(p), .. } => sup.on_probe(run, exists(p), now),
//!         Probe { run, check: Check::PidFileLive(p), .. } => sup.on_probe(run, live(p), now),
//!         Signal { pid, group, signal, .. } => { kill(if group { -pid } else { pid }); vec![] }
//!         ArmTimer { key, at } => { timers.arm(at, Timer::Supervise(key)); vec![] }
//!         CancelTimer { key } => { cancel(key); vec![] }     // optional: stale keys are ignored
//!         WritePidFile { path, pid } => { pidfile::write(..); vec![] }
//!         RemovePidFile { path } => { remove(path); vec![] }
//!         Emit { instance, kind } => { broadcaster.publish(wall_ms, &instance, kind); vec![] }
//!     };
//!     todo.extend(more);
//! }
//! ```
//!
//! Then feed observations back, each returning more actions:
//! - SIGCHLD: reap with `waitpid(-1, WNOHANG)` in a loop; a pid that is a
//!   hook or probe the reactor spawned goes to `on_hook_exit(run, ok,
//!   detail)` / `on_probe(run, ProbeOutcome { ok, pid: None })`; any other
//!   goes to `on_exit(pid, Exit::from_status(status), now)` (unknown pids
//!   give nothing).
//! - a timer fired: `on_timer(&key, now)`.
//! - output readable: `on_output(name, stream, chunk, wall_ms, now)`; at
//!   EOF `on_output_eof`. Lines land in the instance's ring and come back
//!   as `Emit { kind: Output { .. } }`; write those to `output.file` when
//!   the instance has one (rotating with [`rotate::Rotation`]).
//! - control requests: `ps(now)`, `start(names)`, `stop(names)`,
//!   `restart(names)`, `logs(name, after_seq, max)`, `reload(new_config)`
//!   (a `GraphError` leaves everything as it was), `events` through
//!   [`events::Broadcaster::subscribe`] and `drain`.
//! - shutdown: `stop_all(now)`, keep running the loop until `all_down()`.
//!
//! Names in requests are process names (all instances) or instance names
//! (`web.1`); an empty list means all. Hooks and probes get the instance's
//! environment; their timeouts are timers armed here, so the reactor never
//! needs its own. Every timer key carries a unique token: a timer that was
//! cancelled or replaced is recognised and ignored, so cancelling is an
//! optimisation, never a correctness duty.

pub mod backoff;
pub mod config;
mod duration;
pub mod events;
pub mod graph;
pub mod machine;
pub mod ring;
pub mod rotate;
pub mod supervisor;

pub use config::{load, locate, parse, Config, ConfigErrors, InstanceSpec};
pub use duration::human;
pub use machine::{Action, Check, Exit, ProbeOutcome, ProbeRole, PsRow, RunId, TimerKey};
pub use supervisor::{plan_reload, ReloadPlan, Supervisor};
