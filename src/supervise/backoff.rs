//! Restart and retry policy as plain arithmetic. No clock and no global
//! random generator: the caller passes how long a run lasted and a random
//! `u64`, so every decision can be replayed in a test.
//!
//! Two counters, two rules:
//! - A *failed start* (could not spawn, exited before `start_duration`, or
//!   not ready in time) is retried `retry_count` times, `retry_interval`
//!   apart; the next one fails the process.
//! - A *run* (one that counted as started) that ends on its own restarts
//!   when `auto_restart` is set, after `restart_interval * backoff_factor^(k-1)`
//!   for the k-th such end in a row (capped at `backoff_cap`, moved by up to
//!   `backoff_jitter` either way). A run of at least `stable_after` ends the
//!   streak. After `max_restarts` restarts in a row the next end fails the
//!   process (0: never).

use std::time::Duration;

use super::config::{RestartPolicy, StartPolicy};
use super::duration::human;

/// What to do after a process ended or failed to start.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Start it again after `delay`; this is attempt `attempt` of the
    /// current streak (1-based).
    Restart { delay: Duration, attempt: u32 },
    /// Stay down: `auto_restart` is off.
    Stay,
    /// Stop trying; the process is `failed` for `reason`.
    GiveUp { reason: String },
}

/// The exponent stops growing here: any factor > 1 has long reached the cap
/// (and `powi` takes an `i32`).
const MAX_EXPONENT: u32 = 1000;

/// The delay before restart `k` (1-based) of a streak:
/// `restart_interval * backoff_factor^(k-1)`, capped at `backoff_cap`,
/// then scaled by a factor in `[1 - jitter, 1 + jitter]` chosen by
/// `random` (0 gives the low end, `u64::MAX` the high end), and capped
/// again.
pub fn delay(policy: &RestartPolicy, k: u32, random: u64) -> Duration {
    let cap = policy.backoff_cap.as_secs_f64();
    let exp = k.saturating_sub(1).min(MAX_EXPONENT) as i32;
    let base = (policy.restart_interval.as_secs_f64() * policy.backoff_factor.powi(exp)).min(cap);
    let u = random as f64 / u64::MAX as f64;
    let jitter = policy.backoff_jitter.clamp(0.0, 1.0);
    let scaled = (base * (1.0 + jitter * (2.0 * u - 1.0))).clamp(0.0, cap);
    Duration::try_from_secs_f64(scaled).unwrap_or(policy.backoff_cap)
}

/// The counters of one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Runs that ended in a row without lasting `stable_after`.
    streak: u32,
    /// Failed starts since the last start that worked.
    start_failures: u32,
}

impl Backoff {
    /// Failed starts in a row.
    #[cfg(test)]
    fn start_failures(&self) -> u32 {
        self.start_failures
    }

    /// Forget everything (an explicit start or restart).
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// The process counted as started: failed starts are forgiven.
    pub fn started(&mut self) {
        self.start_failures = 0;
    }

    /// A run that had counted as started ended on its own after `ran`;
    /// `how` ("exited with code 1") goes into a give-up reason.
    pub fn run_ended(
        &mut self,
        policy: &RestartPolicy,
        ran: Duration,
        how: &str,
        random: u64,
    ) -> Verdict {
        self.start_failures = 0;
        if ran >= policy.stable_after {
            self.streak = 0;
        }
        if !policy.auto_restart {
            return Verdict::Stay;
        }
        self.streak += 1;
        if policy.max_restarts > 0 && self.streak > policy.max_restarts {
            return Verdict::GiveUp {
                reason: format!(
                    "{how}; gave up after {} restarts in a row, none lasting {}",
                    policy.max_restarts,
                    human(policy.stable_after)
                ),
            };
        }
        Verdict::Restart { delay: delay(policy, self.streak, random), attempt: self.streak }
    }

    /// A start failed: `why` says how ("exited with code 1 after 200ms").
    pub fn start_failed(&mut self, policy: &StartPolicy, why: &str) -> Verdict {
        self.start_failures += 1;
        if self.start_failures > policy.retry_count {
            let tries = self.start_failures;
            let s = if tries == 1 { "" } else { "s" };
            return Verdict::GiveUp {
                reason: format!("failed to start: {why} ({tries} attempt{s})"),
            };
        }
        Verdict::Restart { delay: policy.retry_interval, attempt: self.start_failures }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            auto_restart: true,
            restart_interval: Duration::from_secs(1),
            backoff_factor: 2.0,
            backoff_cap: Duration::from_secs(30),
            backoff_jitter: 0.0,
            stable_after: Duration::from_secs(10),
            max_restarts: 3,
        }
    }

    const MID: u64 = u64::MAX / 2;

    #[test]
    fn delays_grow_by_the_factor_up_to_the_cap() {
        let p = policy();
        let secs: Vec<f64> = (1..=7).map(|k| delay(&p, k, MID).as_secs_f64()).collect();
        assert_eq!(secs, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]);
        assert_eq!(delay(&p, u32::MAX, MID), Duration::from_secs(30), "no overflow");
    }

    #[test]
    fn jitter_moves_the_delay_both_ways_within_the_fraction_and_the_cap() {
        let p = RestartPolicy { backoff_jitter: 0.1, ..policy() };
        assert_eq!(delay(&p, 2, 0), Duration::from_millis(1800));
        assert_eq!(delay(&p, 2, u64::MAX), Duration::from_millis(2200));
        let mid = delay(&p, 2, MID).as_secs_f64();
        assert!((mid - 2.0).abs() < 1e-6, "{mid}");
        // At the cap, jitter can only shorten.
        assert_eq!(delay(&p, 20, u64::MAX), Duration::from_secs(30));
        assert_eq!(delay(&p, 20, 0), Duration::from_secs(27));
    }

    #[test]
    fn a_streak_gives_up_after_max_restarts_and_a_stable_run_resets_it() {
        let p = policy();
        let short = Duration::from_secs(1);
        let mut b = Backoff::default();
        for k in 1..=3 {
            let v = b.run_ended(&p, short, "exited with code 1", MID);
            assert_eq!(v, Verdict::Restart { delay: delay(&p, k, MID), attempt: k });
        }
        // A stable run: the streak starts over.
        let v = b.run_ended(&p, Duration::from_secs(10), "exited with code 1", MID);
        assert_eq!(v, Verdict::Restart { delay: Duration::from_secs(1), attempt: 1 });
        for _ in 0..2 {
            b.run_ended(&p, short, "x", MID);
        }
        let v = b.run_ended(&p, short, "killed by SIGSEGV", MID);
        assert_eq!(
            v,
            Verdict::GiveUp {
                reason: "killed by SIGSEGV; gave up after 3 restarts in a row, none lasting 10s"
                    .into()
            }
        );
        // 0 = never give up.
        let forever = RestartPolicy { max_restarts: 0, ..p };
        let mut b = Backoff::default();
        for _ in 0..100 {
            assert!(matches!(b.run_ended(&forever, short, "x", MID), Verdict::Restart { .. }));
        }
        let once = RestartPolicy { auto_restart: false, ..p };
        assert_eq!(Backoff::default().run_ended(&once, short, "x", MID), Verdict::Stay);
    }

    #[test]
    fn failed_starts_are_retried_retry_count_times() {
        let p = StartPolicy {
            start_duration: Duration::from_secs(1),
            retry_count: 2,
            retry_interval: Duration::from_millis(300),
        };
        let mut b = Backoff::default();
        let retry = |attempt| Verdict::Restart { delay: Duration::from_millis(300), attempt };
        assert_eq!(b.start_failed(&p, "exited with code 1 after 10ms"), retry(1));
        assert_eq!(b.start_failed(&p, "exited with code 1 after 10ms"), retry(2));
        assert_eq!(
            b.start_failed(&p, "exited with code 1 after 10ms"),
            Verdict::GiveUp {
                reason: "failed to start: exited with code 1 after 10ms (3 attempts)".into()
            }
        );
        b.started();
        assert_eq!(b.start_failures(), 0);
        let none = StartPolicy { retry_count: 0, ..p };
        assert_eq!(
            Backoff::default().start_failed(&none, "no such file"),
            Verdict::GiveUp { reason: "failed to start: no such file (1 attempt)".into() }
        );
    }
}
