//! The compute lifecycle as a state x event table, pure: every pair of
//! [`State`] and [`Event`] has a named cell in [`Lifecycle::on`], and each
//! cell returns what to do ([`Do`]) instead of doing it. The compute room
//! performs the steps; the tests drive the table with plain values and a
//! fake clock.

use std::time::{Duration, Instant};

use log::Level;
use nix::sys::signal::Signal;

use crate::protocol::ErrorKind;
use crate::supervise::backoff;
use crate::supervise::config::RestartPolicy;

/// Shortest wait before retrying a compute that could not be spawned.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Time allowed from spawn to HELLO.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL when stopping.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started yet.
    Idle,
    /// Spawned; waiting for it to connect and say HELLO.
    Starting { pid: u32 },
    /// Connected and serving.
    Ready { pid: u32 },
    /// Connection lost; the process is being killed and reaped.
    Exiting { pid: u32 },
    /// Waiting to start again (a spawn may be under way when `until` is
    /// now).
    Backoff { until: Instant },
    /// weaver is stopping; compute was told to stop.
    Stopping { pid: u32 },
    /// Not running and not coming back (weaver stopped).
    Stopped,
    /// Gave up: crashed more often in a row than `max_restarts` allows.
    Failed,
}

impl State {
    /// The process, while there is one.
    pub fn pid(&self) -> Option<u32> {
        match *self {
            State::Starting { pid }
            | State::Ready { pid }
            | State::Exiting { pid }
            | State::Stopping { pid } => Some(pid),
            State::Idle | State::Backoff { .. } | State::Stopped | State::Failed => None,
        }
    }
}

/// How a connected compute is checked for being alive: a PING every
/// `interval` (zero: never), answered within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub interval: Duration,
    pub timeout: Duration,
}

/// A lifecycle deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deadline {
    /// This compute has not said HELLO in time.
    Hello { pid: u32 },
    /// Time to PING this compute.
    Ping { pid: u32 },
    /// This compute has not answered its PING in time: it is hung.
    Pong { pid: u32 },
    /// Start compute again after backoff.
    Restart,
    /// The stop grace is over: SIGKILL what is left.
    Grace,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The daemon is up: start compute.
    Start,
    Spawned {
        pid: u32,
    },
    SpawnFailed {
        why: String,
    },
    /// compute connected and said a valid HELLO.
    Hello,
    /// compute answered a PING.
    Pong,
    /// The connection failed, closed, or broke the protocol.
    Lost {
        why: String,
    },
    /// The process was reaped after running for `ran`.
    Exited {
        pid: u32,
        how: String,
        ran: Duration,
    },
    Due(Deadline),
    /// weaver is stopping.
    Stop,
    /// `[compute]` changed on reload: run compute the new way.
    Reconfigured,
}

/// What the compute room must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Do {
    /// Spawn compute, then feed back `Spawned` or `SpawnFailed`.
    Spawn,
    Arm(Deadline, Instant),
    Cancel(Deadline),
    /// Signal compute's process group.
    Kill {
        pid: u32,
        signal: Signal,
    },
    /// Send a PING frame.
    Ping,
    /// Send the SHUTDOWN frame.
    SayShutdown,
    /// Close compute's stdin (its lifeline).
    CloseStdin,
    /// Forget the connection and HELLO.
    DropConn,
    /// Answer every request sent to compute with this error.
    FailInFlight(ErrorKind, String),
    /// Answer every request still waiting in weaver with this error.
    FailQueued(ErrorKind, String),
    Log(Level, String),
}

#[derive(Debug)]
pub struct Lifecycle {
    pub state: State,
    pub policy: RestartPolicy,
    pub liveness: Liveness,
    /// Times compute was found hung (no PONG in time).
    pub hangs: u64,
    /// The process found hung, until it is reaped.
    hung: Option<u32>,
    /// Restarts after crashes, for `status`.
    pub restarts: u64,
    /// Crashes since compute last ran stably.
    pub failures: u32,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    /// weaver itself stopped it to start it again (a reload changed
    /// `[compute]`): the exit is no crash.
    restart_requested: bool,
}

impl Lifecycle {
    pub fn new(policy: RestartPolicy, liveness: Liveness) -> Lifecycle {
        Lifecycle {
            state: State::Idle,
            policy,
            liveness,
            hangs: 0,
            hung: None,
            restarts: 0,
            failures: 0,
            last_exit: None,
            last_error: None,
            restart_requested: false,
        }
    }

    /// `status --wait` waits while this is true.
    pub fn settling(&self) -> bool {
        matches!(self.state, State::Starting { .. } | State::Exiting { .. })
    }

    /// The table.
    pub fn on(&mut self, event: Event, now: Instant, random: u64) -> Vec<Do> {
        use Event as E;
        use State as S;
        let mut out = Vec::new();
        match (self.state, event) {
            // ---- Starting a process ------------------------------------
            (S::Idle, E::Start) => out.push(Do::Spawn),
            (S::Idle | S::Backoff { .. } | S::Failed, E::Spawned { pid }) => {
                self.spawned(pid, now, &mut out)
            }
            (S::Idle | S::Backoff { .. } | S::Failed, E::SpawnFailed { why }) => {
                self.spawn_failed(why, now, random, &mut out)
            }
            (S::Backoff { .. }, E::Due(Deadline::Restart)) => out.push(Do::Spawn),
            (S::Starting { pid }, E::Hello) => {
                self.state = S::Ready { pid };
                out.push(Do::Cancel(Deadline::Hello { pid }));
                self.next_ping(pid, now, &mut out);
            }

            // ---- Liveness ----------------------------------------------
            (S::Ready { pid }, E::Due(Deadline::Ping { pid: p })) if p == pid => {
                out.extend([
                    Do::Ping,
                    Do::Arm(Deadline::Pong { pid }, now + self.liveness.timeout),
                ]);
            }
            (S::Ready { pid }, E::Pong) => {
                out.push(Do::Cancel(Deadline::Pong { pid }));
                self.next_ping(pid, now, &mut out);
            }
            (S::Ready { pid }, E::Due(Deadline::Pong { pid: p })) if p == pid => {
                self.hung = Some(pid);
                self.hangs += 1;
                let why = format!(
                    "compute (pid {pid}) hung: no PONG within {}",
                    crate::supervise::human(self.liveness.timeout)
                );
                self.lost(pid, &why, &mut out)
            }

            // ---- Losing it ---------------------------------------------
            (S::Starting { pid } | S::Ready { pid }, E::Lost { why }) => {
                self.lost(pid, &why, &mut out)
            }
            (S::Starting { pid }, E::Due(Deadline::Hello { pid: p })) if p == pid => {
                let why = format!(
                    "compute (pid {pid}) did not connect and say HELLO within {HELLO_TIMEOUT:?}"
                );
                self.lost(pid, &why, &mut out)
            }
            (
                S::Starting { pid } | S::Ready { pid } | S::Exiting { pid },
                E::Exited { how, ran, .. },
            ) => self.crashed(pid, how, ran, now, random, &mut out),
            // Already lost: the kill is on its way.
            (S::Exiting { .. }, E::Lost { .. }) => out.push(Do::DropConn),

            // ---- Stopping with weaver ----------------------------------
            (S::Starting { pid } | S::Ready { pid } | S::Exiting { pid }, E::Stop) => {
                self.state = S::Stopping { pid };
                out.extend([
                    Do::Cancel(Deadline::Ping { pid }),
                    Do::Cancel(Deadline::Pong { pid }),
                    Do::SayShutdown,
                    Do::CloseStdin,
                    Do::Kill { pid, signal: Signal::SIGTERM },
                    Do::Arm(Deadline::Grace, now + STOP_GRACE),
                ]);
            }
            (S::Idle | S::Backoff { .. } | S::Failed, E::Stop) => {
                self.state = S::Stopped;
                out.push(Do::Cancel(Deadline::Restart));
            }
            // While stopping, compute closing its end is the expected
            // goodbye: the grace covers a compute that does not exit.
            (S::Stopping { .. }, E::Lost { why }) => out.extend([
                Do::DropConn,
                Do::FailInFlight(
                    ErrorKind::ShuttingDown,
                    format!("weaver is shutting down and compute stopped ({why})"),
                ),
            ]),
            (S::Stopping { pid }, E::Exited { how, .. }) => {
                self.state = S::Stopped;
                out.extend([
                    Do::DropConn,
                    Do::FailInFlight(
                        ErrorKind::ShuttingDown,
                        format!("weaver is shutting down and compute (pid {pid}) {how}"),
                    ),
                    Do::Cancel(Deadline::Grace),
                    Do::Log(Level::Info, format!("compute (pid {pid}) {how}")),
                ]);
                self.last_exit = Some(how);
            }
            (S::Stopping { pid }, E::Due(Deadline::Grace)) => out.extend([
                Do::Log(
                    Level::Warn,
                    format!(
                        "compute (pid {pid}) still running {STOP_GRACE:?} after SIGTERM: SIGKILL"
                    ),
                ),
                Do::Kill { pid, signal: Signal::SIGKILL },
            ]),

            // ---- Reconfiguring -----------------------------------------
            (S::Starting { pid } | S::Ready { pid }, E::Reconfigured) => {
                self.failures = 0;
                self.restart_requested = true;
                out.extend([Do::SayShutdown, Do::Kill { pid, signal: Signal::SIGTERM }]);
            }
            (S::Exiting { .. }, E::Reconfigured) => {
                self.failures = 0;
                self.restart_requested = true;
            }
            (S::Idle | S::Backoff { .. } | S::Failed, E::Reconfigured) => {
                self.failures = 0;
                out.extend([Do::Cancel(Deadline::Restart), Do::Spawn]);
            }

            // ---- Nothing to do -----------------------------------------
            // Start is sent once, at daemon start.
            (
                S::Starting { .. }
                | S::Ready { .. }
                | S::Exiting { .. }
                | S::Backoff { .. }
                | S::Stopping { .. }
                | S::Stopped
                | S::Failed,
                E::Start,
            ) => {}
            // Spawn results come only after a Spawn from a state without a
            // process.
            (
                S::Starting { .. }
                | S::Ready { .. }
                | S::Exiting { .. }
                | S::Stopping { .. }
                | S::Stopped,
                E::Spawned { .. } | E::SpawnFailed { .. },
            ) => {}
            // A HELLO counts only while starting; the room refuses a second
            // one as a protocol error before it gets here.
            (
                S::Idle
                | S::Ready { .. }
                | S::Exiting { .. }
                | S::Backoff { .. }
                | S::Stopping { .. }
                | S::Stopped
                | S::Failed,
                E::Hello,
            ) => {}
            // A PONG counts only while ready (one after a loss is late).
            (
                S::Idle
                | S::Starting { .. }
                | S::Exiting { .. }
                | S::Backoff { .. }
                | S::Stopping { .. }
                | S::Stopped
                | S::Failed,
                E::Pong,
            ) => {}
            // Liveness deadlines of another process, or of a state that
            // has passed.
            (S::Ready { .. }, E::Due(Deadline::Ping { .. } | Deadline::Pong { .. })) => {}
            (
                S::Idle
                | S::Starting { .. }
                | S::Exiting { .. }
                | S::Backoff { .. }
                | S::Stopping { .. }
                | S::Stopped
                | S::Failed,
                E::Due(Deadline::Ping { .. } | Deadline::Pong { .. }),
            ) => {}
            // No connection without a process.
            (S::Idle | S::Backoff { .. } | S::Stopped | S::Failed, E::Lost { .. }) => {}
            // No exit without a process.
            (S::Idle | S::Backoff { .. } | S::Stopped | S::Failed, E::Exited { .. }) => {}
            // Stale deadlines: armed for a state that has passed.
            (S::Starting { .. }, E::Due(Deadline::Hello { .. })) => {}
            (
                S::Idle
                | S::Ready { .. }
                | S::Exiting { .. }
                | S::Backoff { .. }
                | S::Stopping { .. }
                | S::Stopped
                | S::Failed,
                E::Due(Deadline::Hello { .. }),
            ) => {}
            (
                S::Idle
                | S::Starting { .. }
                | S::Ready { .. }
                | S::Exiting { .. }
                | S::Stopping { .. }
                | S::Stopped
                | S::Failed,
                E::Due(Deadline::Restart),
            ) => {}
            (
                S::Idle
                | S::Starting { .. }
                | S::Ready { .. }
                | S::Exiting { .. }
                | S::Backoff { .. }
                | S::Stopped
                | S::Failed,
                E::Due(Deadline::Grace),
            ) => {}
            // Already stopping or stopped.
            (S::Stopping { .. } | S::Stopped, E::Stop | E::Reconfigured) => {}
        }
        out
    }

    /// Arm the next PING of a ready compute, when liveness checks are on.
    fn next_ping(&self, pid: u32, now: Instant, out: &mut Vec<Do>) {
        if !self.liveness.interval.is_zero() {
            out.push(Do::Arm(Deadline::Ping { pid }, now + self.liveness.interval));
        }
    }

    fn spawned(&mut self, pid: u32, now: Instant, out: &mut Vec<Do>) {
        self.state = State::Starting { pid };
        self.last_error = None;
        out.push(Do::Arm(Deadline::Hello { pid }, now + HELLO_TIMEOUT));
    }

    fn spawn_failed(&mut self, why: String, now: Instant, random: u64, out: &mut Vec<Do>) {
        self.failures += 1;
        let delay = restart_delay(&self.policy, self.failures, random).max(BACKOFF_BASE);
        out.push(Do::Log(Level::Error, format!("{why}; retrying in {delay:?}")));
        self.last_error = Some(why);
        self.backoff(delay, now, out);
    }

    /// The connection is gone or untrustworthy: fail what compute held and
    /// make sure the process is gone; the restart follows its reaping.
    fn lost(&mut self, pid: u32, why: &str, out: &mut Vec<Do>) {
        self.state = State::Exiting { pid };
        out.extend([
            Do::Cancel(Deadline::Ping { pid }),
            Do::Cancel(Deadline::Pong { pid }),
            Do::DropConn,
            Do::FailInFlight(
                ErrorKind::ComputeDown,
                format!("{why}; the request was lost, retry it (weaver restarts compute)"),
            ),
            Do::Log(Level::Warn, format!("{why}: killing compute (pid {pid})")),
            Do::Kill { pid, signal: Signal::SIGKILL },
        ]);
    }

    /// The process ended on its own (or after a kill for a lost
    /// connection): restart it, after backoff, or give up.
    fn crashed(
        &mut self,
        pid: u32,
        how: String,
        ran: Duration,
        now: Instant,
        random: u64,
        out: &mut Vec<Do>,
    ) {
        let how = match self.hung.take() {
            Some(p) if p == pid => format!(
                "{how} after it hung (no PONG within {})",
                crate::supervise::human(self.liveness.timeout)
            ),
            _ => how,
        };
        let why = format!("compute (pid {pid}) {how}");
        out.extend([
            Do::Cancel(Deadline::Ping { pid }),
            Do::Cancel(Deadline::Pong { pid }),
            Do::DropConn,
            Do::FailInFlight(
                ErrorKind::ComputeDown,
                format!("{why}; the request was lost, retry it (weaver restarts compute)"),
            ),
            // What it left in its group goes with it.
            Do::Kill { pid, signal: Signal::SIGKILL },
            Do::Cancel(Deadline::Hello { pid }),
        ]);
        self.last_exit = Some(how);
        if std::mem::take(&mut self.restart_requested) {
            out.push(Do::Log(Level::Info, format!("{why}; starting it the new way")));
            self.state = State::Backoff { until: now };
            out.push(Do::Spawn);
            return;
        }
        let p = self.policy;
        if ran >= p.stable_after {
            self.failures = 0;
        }
        self.failures += 1;
        if !p.auto_restart || (p.max_restarts > 0 && self.failures > p.max_restarts) {
            self.state = State::Failed;
            let error = format!(
                "compute gave up after {} crash(es) in a row (max_restarts = {}); fix it and run \
                 `weaver reload` or restart weaver",
                self.failures, p.max_restarts
            );
            out.extend([
                Do::Log(Level::Error, format!("{why}; {error}")),
                Do::FailQueued(
                    ErrorKind::ComputeDown,
                    "compute failed and will not be restarted".into(),
                ),
            ]);
            self.last_error = Some(error);
            return;
        }
        self.restarts += 1;
        let delay = restart_delay(&p, self.failures, random);
        out.push(Do::Log(Level::Warn, format!("{why}; restart {} in {delay:?}", self.restarts)));
        if delay.is_zero() {
            self.state = State::Backoff { until: now };
            out.push(Do::Spawn);
        } else {
            self.backoff(delay, now, out);
        }
    }

    /// Wait `delay`; requests waiting in weaver cannot be served soon: fail
    /// them now.
    fn backoff(&mut self, delay: Duration, now: Instant, out: &mut Vec<Do>) {
        let until = now + delay;
        self.state = State::Backoff { until };
        let why = self.last_error.clone().or_else(|| self.last_exit.clone()).unwrap_or_default();
        out.extend([
            Do::Arm(Deadline::Restart, until),
            Do::FailQueued(
                ErrorKind::ComputeDown,
                format!("compute is down ({why}); retry in {} ms", delay.as_millis()),
            ),
        ]);
    }
}

/// Delay before restart number `failures` (1-based) of a crash streak: the
/// first is immediate (a lone crash costs one request, not a pause), then
/// the policy's capped exponential backoff.
pub fn restart_delay(policy: &RestartPolicy, failures: u32, random: u64) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    backoff::delay(policy, failures - 1, random)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 7;

    fn policy() -> RestartPolicy {
        RestartPolicy { backoff_jitter: 0.0, ..RestartPolicy::COMPUTE }
    }

    const LIVE: Liveness =
        Liveness { interval: Duration::from_secs(5), timeout: Duration::from_secs(3) };

    fn life(policy: RestartPolicy) -> Lifecycle {
        Lifecycle::new(policy, LIVE)
    }

    fn states(now: Instant) -> Vec<State> {
        vec![
            State::Idle,
            State::Starting { pid: PID },
            State::Ready { pid: PID },
            State::Exiting { pid: PID },
            State::Backoff { until: now + Duration::from_secs(1) },
            State::Stopping { pid: PID },
            State::Stopped,
            State::Failed,
        ]
    }

    fn events() -> Vec<Event> {
        vec![
            Event::Start,
            Event::Spawned { pid: 9 },
            Event::SpawnFailed { why: "no such file".into() },
            Event::Hello,
            Event::Pong,
            Event::Lost { why: "compute closed its connection".into() },
            Event::Exited { pid: PID, how: "exited with code 1".into(), ran: Duration::ZERO },
            Event::Due(Deadline::Hello { pid: PID }),
            Event::Due(Deadline::Hello { pid: 8 }),
            Event::Due(Deadline::Ping { pid: PID }),
            Event::Due(Deadline::Pong { pid: PID }),
            Event::Due(Deadline::Pong { pid: 8 }),
            Event::Due(Deadline::Restart),
            Event::Due(Deadline::Grace),
            Event::Stop,
            Event::Reconfigured,
        ]
    }

    /// One letter per step: Spawn, Arm, Cancel, Term/Kill, sHutdown,
    /// close stdIn, Drop, Fail in flight, Queued failed, Log.
    fn code(d: &Do) -> char {
        match d {
            Do::Spawn => 'S',
            Do::Arm(..) => 'A',
            Do::Cancel(_) => 'C',
            Do::Kill { signal: Signal::SIGTERM, .. } => 'T',
            Do::Kill { .. } => 'K',
            Do::Ping => 'P',
            Do::SayShutdown => 'H',
            Do::CloseStdin => 'I',
            Do::DropConn => 'D',
            Do::FailInFlight(..) => 'F',
            Do::FailQueued(..) => 'Q',
            Do::Log(..) => 'L',
        }
    }

    fn cell(state: State, event: Event, now: Instant) -> String {
        let mut l = life(policy());
        l.state = state;
        let steps: String = l.on(event, now, 0).iter().map(code).collect();
        let name = format!("{:?}", crate::protocol::ComputeState::from(l.state)).to_lowercase();
        format!("{name}:{steps}")
    }

    /// Every (state, event) pair: rows in the order of `states()`, columns
    /// in the order of `events()`:
    /// Start, Spawned, SpawnFailed, Hello, Pong, Lost, Exited, Due(Hello 7),
    /// Due(Hello 8), Due(Ping 7), Due(Pong 7), Due(Pong 8), Due(Restart),
    /// Due(Grace), Stop, Reconfigured.
    #[rustfmt::skip]
    const TABLE: [[&str; 16]; 8] = [
        // Idle
        ["stopped:S", "starting:A", "backoff:LAQ", "stopped:", "stopped:", "stopped:", "stopped:", "stopped:",
         "stopped:", "stopped:", "stopped:", "stopped:", "stopped:", "stopped:", "stopped:C", "stopped:CS"],
        // Starting
        ["starting:", "starting:", "starting:", "ready:CA", "starting:", "exiting:CCDFLK", "backoff:CCDFKCLS", "exiting:CCDFLK",
         "starting:", "starting:", "starting:", "starting:", "starting:", "starting:", "stopping:CCHITA", "starting:HT"],
        // Ready
        ["ready:", "ready:", "ready:", "ready:", "ready:CA", "exiting:CCDFLK", "backoff:CCDFKCLS", "ready:",
         "ready:", "ready:PA", "exiting:CCDFLK", "ready:", "ready:", "ready:", "stopping:CCHITA", "ready:HT"],
        // Exiting
        ["exiting:", "exiting:", "exiting:", "exiting:", "exiting:", "exiting:D", "backoff:CCDFKCLS", "exiting:",
         "exiting:", "exiting:", "exiting:", "exiting:", "exiting:", "exiting:", "stopping:CCHITA", "exiting:"],
        // Backoff
        ["backoff:", "starting:A", "backoff:LAQ", "backoff:", "backoff:", "backoff:", "backoff:", "backoff:",
         "backoff:", "backoff:", "backoff:", "backoff:", "backoff:S", "backoff:", "stopped:C", "backoff:CS"],
        // Stopping
        ["stopping:", "stopping:", "stopping:", "stopping:", "stopping:", "stopping:DF", "stopped:DFCL", "stopping:",
         "stopping:", "stopping:", "stopping:", "stopping:", "stopping:", "stopping:LK", "stopping:", "stopping:"],
        // Stopped
        ["stopped:", "stopped:", "stopped:", "stopped:", "stopped:", "stopped:", "stopped:", "stopped:",
         "stopped:", "stopped:", "stopped:", "stopped:", "stopped:", "stopped:", "stopped:", "stopped:"],
        // Failed
        ["failed:", "starting:A", "backoff:LAQ", "failed:", "failed:", "failed:", "failed:", "failed:",
         "failed:", "failed:", "failed:", "failed:", "failed:", "failed:", "stopped:C", "failed:CS"],
    ];

    #[test]
    fn every_cell_of_the_table() {
        let now = Instant::now();
        let mut wrong = Vec::new();
        for (r, state) in states(now).into_iter().enumerate() {
            for (c, event) in events().into_iter().enumerate() {
                let got = cell(state, event.clone(), now);
                if got != TABLE[r][c] {
                    wrong.push(format!("{state:?} x {event:?}: got {got}, want {}", TABLE[r][c]));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// Drive a lifecycle on a fake clock: crash after `ran`, return the
    /// delay before the next spawn (None: no restart).
    fn crash(l: &mut Lifecycle, now: Instant, ran: Duration) -> Option<Duration> {
        let pid = l.state.pid().expect("running");
        let steps = l.on(Event::Exited { pid, how: "exited with code 1".into(), ran }, now, 0);
        if steps.contains(&Do::Spawn) {
            return Some(Duration::ZERO);
        }
        steps.iter().find_map(|d| match d {
            Do::Arm(Deadline::Restart, at) => Some(*at - now),
            _ => None,
        })
    }

    fn run(l: &mut Lifecycle, now: Instant, pid: u32) {
        l.on(Event::Spawned { pid }, now, 0);
        l.on(Event::Hello, now, 0);
        assert_eq!(l.state, State::Ready { pid });
    }

    #[test]
    fn restarts_are_immediate_then_capped_exponential_and_a_stable_run_resets_them() {
        let t0 = Instant::now();
        let mut l = life(policy());
        let mut delays = Vec::new();
        for i in 0..10 {
            run(&mut l, t0, 100 + i);
            delays.push(crash(&mut l, t0, Duration::ZERO).unwrap().as_millis() as u64);
        }
        assert_eq!(delays, [0, 100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        assert_eq!(l.restarts, 10);
        run(&mut l, t0, 200);
        let stable = policy().stable_after;
        assert_eq!(
            crash(&mut l, t0, stable),
            Some(Duration::ZERO),
            "a stable run resets the streak"
        );
        assert_eq!(l.failures, 1);
    }

    #[test]
    fn gives_up_after_max_restarts_and_a_reload_starts_it_again() {
        let t0 = Instant::now();
        let mut l = life(RestartPolicy { max_restarts: 2, ..policy() });
        for pid in 1..=2 {
            run(&mut l, t0, pid);
            assert!(crash(&mut l, t0, Duration::ZERO).is_some());
        }
        run(&mut l, t0, 3);
        let steps = l.on(
            Event::Exited { pid: 3, how: "killed by SIGSEGV".into(), ran: Duration::ZERO },
            t0,
            0,
        );
        assert_eq!(l.state, State::Failed);
        assert!(steps.iter().any(|d| matches!(d, Do::FailQueued(ErrorKind::ComputeDown, _))));
        assert!(l.last_error.as_deref().unwrap().contains("max_restarts = 2"));
        assert_eq!(l.last_exit.as_deref(), Some("killed by SIGSEGV"));
        assert_eq!(l.on(Event::Reconfigured, t0, 0), [Do::Cancel(Deadline::Restart), Do::Spawn]);
        assert_eq!(l.failures, 0);
    }

    #[test]
    fn a_reconfigured_compute_restarts_at_once_without_counting_a_crash() {
        let t0 = Instant::now();
        let mut l = life(policy());
        run(&mut l, t0, 1);
        assert_eq!(
            l.on(Event::Reconfigured, t0, 0),
            [Do::SayShutdown, Do::Kill { pid: 1, signal: Signal::SIGTERM }]
        );
        let steps = l.on(
            Event::Exited { pid: 1, how: "exited with code 0".into(), ran: Duration::ZERO },
            t0,
            0,
        );
        assert_eq!(steps.last(), Some(&Do::Spawn));
        assert_eq!((l.failures, l.restarts), (0, 0));
    }

    #[test]
    fn a_silent_compute_is_killed_at_its_hello_deadline() {
        let t0 = Instant::now();
        let mut l = life(policy());
        let steps = l.on(Event::Spawned { pid: 5 }, t0, 0);
        assert_eq!(steps, [Do::Arm(Deadline::Hello { pid: 5 }, t0 + HELLO_TIMEOUT)]);
        let steps = l.on(Event::Due(Deadline::Hello { pid: 5 }), t0 + HELLO_TIMEOUT, 0);
        assert_eq!(l.state, State::Exiting { pid: 5 });
        assert!(steps.contains(&Do::Kill { pid: 5, signal: Signal::SIGKILL }));
        assert!(steps.iter().any(
            |d| matches!(d, Do::FailInFlight(ErrorKind::ComputeDown, m) if m.contains("HELLO"))
        ));
    }

    #[test]
    fn a_stop_sends_shutdown_then_sigterm_then_sigkill_after_the_grace() {
        let t0 = Instant::now();
        let mut l = life(policy());
        run(&mut l, t0, 4);
        let steps = l.on(Event::Stop, t0, 0);
        assert_eq!(
            steps,
            [
                Do::Cancel(Deadline::Ping { pid: 4 }),
                Do::Cancel(Deadline::Pong { pid: 4 }),
                Do::SayShutdown,
                Do::CloseStdin,
                Do::Kill { pid: 4, signal: Signal::SIGTERM },
                Do::Arm(Deadline::Grace, t0 + STOP_GRACE),
            ]
        );
        let steps = l.on(Event::Due(Deadline::Grace), t0 + STOP_GRACE, 0);
        assert!(steps.contains(&Do::Kill { pid: 4, signal: Signal::SIGKILL }));
        l.on(Event::Exited { pid: 4, how: "killed by SIGKILL".into(), ran: STOP_GRACE }, t0, 0);
        assert_eq!(l.state, State::Stopped);
        assert!(!l.settling());
    }

    #[test]
    fn a_spawn_failure_backs_off_at_least_the_base() {
        let t0 = Instant::now();
        let mut l = life(policy());
        let steps = l.on(Event::SpawnFailed { why: "cannot start".into() }, t0, 0);
        assert_eq!(l.state, State::Backoff { until: t0 + BACKOFF_BASE });
        assert!(steps.contains(&Do::Arm(Deadline::Restart, t0 + BACKOFF_BASE)));
        assert_eq!(l.last_error.as_deref(), Some("cannot start"));
        assert_eq!(l.on(Event::Due(Deadline::Restart), t0 + BACKOFF_BASE, 0), [Do::Spawn]);
    }

    #[test]
    fn a_ready_compute_is_pinged_and_one_that_stops_answering_is_killed_as_hung() {
        let t0 = Instant::now();
        let mut l = life(policy());
        l.on(Event::Spawned { pid: 3 }, t0, 0);
        let steps = l.on(Event::Hello, t0, 0);
        assert!(steps.contains(&Do::Arm(Deadline::Ping { pid: 3 }, t0 + LIVE.interval)));
        // Answered: the next PING is armed.
        let t1 = t0 + LIVE.interval;
        assert_eq!(
            l.on(Event::Due(Deadline::Ping { pid: 3 }), t1, 0),
            [Do::Ping, Do::Arm(Deadline::Pong { pid: 3 }, t1 + LIVE.timeout)]
        );
        assert_eq!(
            l.on(Event::Pong, t1, 0),
            [
                Do::Cancel(Deadline::Pong { pid: 3 }),
                Do::Arm(Deadline::Ping { pid: 3 }, t1 + LIVE.interval)
            ]
        );
        // Not answered: hung, killed, its requests failed, then restarted.
        let t2 = t1 + LIVE.interval;
        l.on(Event::Due(Deadline::Ping { pid: 3 }), t2, 0);
        let steps = l.on(Event::Due(Deadline::Pong { pid: 3 }), t2 + LIVE.timeout, 0);
        assert_eq!(l.state, State::Exiting { pid: 3 });
        assert!(steps.contains(&Do::Kill { pid: 3, signal: Signal::SIGKILL }));
        assert!(steps.iter().any(
            |d| matches!(d, Do::FailInFlight(ErrorKind::ComputeDown, m) if m.contains("hung: no PONG within 3s"))
        ));
        assert_eq!(l.hangs, 1);
        let ran = Duration::from_secs(60);
        let steps = l.on(Event::Exited { pid: 3, how: "killed by SIGKILL".into(), ran }, t2, 0);
        assert_eq!(steps.last(), Some(&Do::Spawn));
        assert_eq!(
            l.last_exit.as_deref(),
            Some("killed by SIGKILL after it hung (no PONG within 3s)")
        );
        // A deadline of the old process means nothing to the next one.
        l.on(Event::Spawned { pid: 4 }, t2, 0);
        l.on(Event::Hello, t2, 0);
        assert!(l.on(Event::Due(Deadline::Pong { pid: 3 }), t2, 0).is_empty());
        assert_eq!(l.state, State::Ready { pid: 4 });
    }

    #[test]
    fn a_zero_ping_interval_turns_liveness_checks_off() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(policy(), Liveness { interval: Duration::ZERO, ..LIVE });
        l.on(Event::Spawned { pid: 3 }, t0, 0);
        assert_eq!(l.on(Event::Hello, t0, 0), [Do::Cancel(Deadline::Hello { pid: 3 })]);
    }
}
