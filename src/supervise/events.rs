//! Lifecycle events with global sequence numbers, and a broadcaster to
//! `events -f` subscribers that never lets a slow one grow memory: each
//! subscriber has a bounded queue, and what does not fit is replaced by one
//! [`Delivery::Lost`] marker counting the events it missed.

use std::collections::{HashMap, VecDeque};

use super::ring::Stream;

/// What happened to a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Spawned (for a detached process: its pid was found).
    Started { pid: u32 },
    /// It counts as started: up for `start_duration`.
    Running,
    /// The ready probe passed.
    Ready,
    /// One line of output (its sequence number in the process's ring).
    Output { stream: Stream, seq: u64, bytes: Vec<u8> },
    /// It exited with this code.
    Exited { code: i32 },
    /// A signal ended it.
    Killed { signal: i32 },
    /// A detached process's pid is gone (no exit status to report).
    Vanished,
    /// It will be started again in `delay_ms` (attempt n of this streak).
    Restarting { delay_ms: u64, attempt: u32 },
    /// Stop requested: the stop signal was sent.
    Stopping,
    /// It stopped because it was asked to.
    Stopped,
    /// It gave up, or cannot start.
    Failed { reason: String },
    /// A hook finished (`ok: false` with what went wrong).
    Hook { hook: &'static str, ok: bool, detail: String },
    /// Something worth telling that changes no state.
    Warning { message: String },
    /// Its stdin pipe was closed while it runs (`weaver send --close`,
    /// `attach --close-on-eof`, or it closed its own end).
    StdinClosed { reason: String },
    /// A job of a run was not run: a job it needs did not pass, or the
    /// run was cancelled first.
    Skipped { reason: String },
}

impl EventKind {
    /// Short name for display and filtering.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started { .. } => "started",
            EventKind::Running => "running",
            EventKind::Ready => "ready",
            EventKind::Output { .. } => "output",
            EventKind::Exited { .. } => "exited",
            EventKind::Killed { .. } => "killed",
            EventKind::Vanished => "vanished",
            EventKind::Restarting { .. } => "restarting",
            EventKind::Stopping => "stopping",
            EventKind::Stopped => "stopped",
            EventKind::Failed { .. } => "failed",
            EventKind::Hook { .. } => "hook",
            EventKind::Warning { .. } => "warning",
            EventKind::StdinClosed { .. } => "stdin_closed",
            EventKind::Skipped { .. } => "skipped",
        }
    }
}

/// An event as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Global, 1-based, increasing, never reused.
    pub seq: u64,
    /// Wall-clock milliseconds since the Unix epoch, as the caller said.
    pub time_ms: u64,
    /// The instance name (`web.0`).
    pub instance: String,
    pub kind: EventKind,
}

/// What a subscriber reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Event(Event),
    /// This many events were dropped here because the subscriber fell
    /// behind.
    Lost {
        count: u64,
    },
}

pub type SubscriberId = u64;

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Process or instance names (`web` matches `web`, `web.0`, `web.1`);
    /// empty: all.
    pub names: Vec<String>,
    /// Include output lines.
    pub output: bool,
}

impl Filter {
    pub fn matches(&self, instance: &str, kind: &EventKind) -> bool {
        if matches!(kind, EventKind::Output { .. }) && !self.output {
            return false;
        }
        self.names.is_empty()
            || self.names.iter().any(|n| {
                instance == n
                    || (instance.len() > n.len()
                        && instance.starts_with(n.as_str())
                        && instance.as_bytes()[n.len()] == b'.')
            })
    }
}

#[derive(Debug)]
struct Subscriber {
    filter: Filter,
    queue: VecDeque<Delivery>,
    /// Events (not markers) in `queue`.
    events: usize,
}

impl Subscriber {
    /// Turn the oldest queued output event into a lost marker in its place
    /// (merged with markers beside it), so that the gaps in sequence numbers
    /// still add up to the markers. False if no output event is queued.
    fn drop_oldest_output(&mut self) -> bool {
        let is_output = |d: &Delivery| {
            matches!(d, Delivery::Event(Event { kind: EventKind::Output { .. }, .. }))
        };
        let Some(mut i) = self.queue.iter().position(is_output) else { return false };
        self.queue[i] = Delivery::Lost { count: 1 };
        self.events -= 1;
        if i > 0 {
            if let Delivery::Lost { count } = self.queue[i - 1] {
                self.queue.remove(i);
                i -= 1;
                if let Delivery::Lost { count: c } = &mut self.queue[i] {
                    *c = count + 1;
                }
            }
        }
        if let Some(&Delivery::Lost { count: next }) = self.queue.get(i + 1) {
            self.queue.remove(i + 1);
            if let Delivery::Lost { count } = &mut self.queue[i] {
                *count += next;
            }
        }
        true
    }
}

/// The fan-out. The reactor publishes every event here and, after each
/// turn, drains each subscriber's queue into its connection as far as
/// the socket takes it.
#[derive(Debug)]
pub struct Broadcaster {
    next_seq: u64,
    /// Events a subscriber may have waiting; beyond it they are counted
    /// as lost.
    queue_cap: usize,
    subscribers: HashMap<SubscriberId, Subscriber>,
    next_id: SubscriberId,
    /// The newest events, for a subscriber that asks for some history.
    recent: VecDeque<Event>,
    recent_cap: usize,
}

/// Default per-subscriber queue bound.
pub const QUEUE_CAP: usize = 1024;
/// Default history kept for new subscribers.
pub const RECENT_CAP: usize = 256;

impl Default for Broadcaster {
    fn default() -> Self {
        Broadcaster::new(QUEUE_CAP, RECENT_CAP)
    }
}

impl Broadcaster {
    pub fn new(queue_cap: usize, recent_cap: usize) -> Self {
        Broadcaster {
            next_seq: 1,
            queue_cap: queue_cap.max(1),
            subscribers: HashMap::new(),
            next_id: 1,
            recent: VecDeque::new(),
            recent_cap,
        }
    }

    /// Publish; returns the event's sequence number. Output events are not
    /// kept in the history (the rings hold output).
    pub fn publish(&mut self, time_ms: u64, instance: &str, kind: EventKind) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let event = Event { seq, time_ms, instance: instance.to_string(), kind };
        for sub in self.subscribers.values_mut() {
            if !sub.filter.matches(&event.instance, &event.kind) {
                continue;
            }
            let lifecycle = !matches!(event.kind, EventKind::Output { .. });
            if sub.events < self.queue_cap {
                sub.queue.push_back(Delivery::Event(event.clone()));
                sub.events += 1;
            } else if lifecycle && sub.drop_oldest_output() {
                // A full queue gives up an output line, never an exit or a
                // failure: those are few and are what a watcher waits for.
                sub.queue.push_back(Delivery::Event(event.clone()));
                sub.events += 1;
            } else if let Some(Delivery::Lost { count }) = sub.queue.back_mut() {
                *count += 1;
            } else {
                sub.queue.push_back(Delivery::Lost { count: 1 });
            }
        }
        if self.recent_cap > 0 && !matches!(event.kind, EventKind::Output { .. }) {
            if self.recent.len() == self.recent_cap {
                self.recent.pop_front();
            }
            self.recent.push_back(event);
        }
        seq
    }

    /// Add a subscriber; its queue starts with up to `history` past events
    /// that match its filter.
    pub fn subscribe(&mut self, filter: Filter, history: usize) -> SubscriberId {
        let id = self.next_id;
        self.next_id += 1;
        let past: Vec<&Event> =
            self.recent.iter().filter(|e| filter.matches(&e.instance, &e.kind)).collect();
        let keep = history.min(self.queue_cap);
        let queue: VecDeque<Delivery> = past[past.len().saturating_sub(keep)..]
            .iter()
            .map(|e| Delivery::Event((*e).clone()))
            .collect();
        let events = queue.len();
        self.subscribers.insert(id, Subscriber { filter, queue, events });
        id
    }

    pub fn unsubscribe(&mut self, id: SubscriberId) {
        self.subscribers.remove(&id);
    }

    /// Take up to `max` deliveries waiting for `id` (a `Lost` marker counts
    /// as one).
    pub fn drain(&mut self, id: SubscriberId, max: usize) -> Vec<Delivery> {
        let Some(sub) = self.subscribers.get_mut(&id) else { return Vec::new() };
        let n = max.min(sub.queue.len());
        let out: Vec<Delivery> = sub.queue.drain(..n).collect();
        sub.events -= out.iter().filter(|d| matches!(d, Delivery::Event(_))).count();
        out
    }

    /// Deliveries waiting for `id`.
    pub fn pending(&self, id: SubscriberId) -> usize {
        self.subscribers.get(&id).map_or(0, |s| s.queue.len())
    }

    /// Subscribers with something waiting.
    pub fn ready(&self) -> Vec<SubscriberId> {
        let mut ids: Vec<SubscriberId> = self
            .subscribers
            .iter()
            .filter(|(_, s)| !s.queue.is_empty())
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The sequence number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(ds: &[Delivery]) -> Vec<String> {
        ds.iter()
            .map(|d| match d {
                Delivery::Event(e) => format!("{}:{}", e.seq, e.instance),
                Delivery::Lost { count } => format!("lost {count}"),
            })
            .collect()
    }

    #[test]
    fn a_slow_subscriber_gets_a_lost_marker_instead_of_growth() {
        let mut b = Broadcaster::new(2, 0);
        let slow = b.subscribe(Filter::default(), 0);
        let fast = b.subscribe(Filter::default(), 0);
        for i in 0..3 {
            b.publish(0, &format!("p{i}"), EventKind::Ready);
            assert_eq!(b.drain(fast, 10).len(), 1);
        }
        b.publish(0, "p3", EventKind::Ready);
        b.publish(0, "p4", EventKind::Ready);
        assert_eq!(seqs(&b.drain(fast, 10)), ["4:p3", "5:p4"]);
        assert_eq!(b.pending(slow), 3, "two events and one marker");
        assert_eq!(seqs(&b.drain(slow, 1)), ["1:p0"]);
        // Room for one more event, after the marker: order is kept.
        b.publish(0, "p5", EventKind::Ready);
        b.publish(0, "p6", EventKind::Ready);
        assert_eq!(seqs(&b.drain(slow, 10)), ["2:p1", "lost 3", "6:p5", "lost 1"]);
        assert_eq!(b.pending(slow), 0);
        assert_eq!(b.ready(), vec![fast]);
        assert_eq!(seqs(&b.drain(fast, 10)), ["6:p5", "7:p6"]);
        b.unsubscribe(slow);
        assert_eq!(b.subscribers(), 1);
        assert_eq!(b.next_seq(), 8);
    }

    #[test]
    fn a_full_queue_drops_output_lines_before_lifecycle_events() {
        let mut b = Broadcaster::new(3, 0);
        let slow = b.subscribe(Filter { names: vec![], output: true }, 0);
        let line = || EventKind::Output { stream: Stream::Stdout, seq: 1, bytes: b"x".to_vec() };
        b.publish(0, "a", EventKind::Started { pid: 1 }); // 1
        for _ in 0..4 {
            b.publish(0, "a", line()); // 2, 3, then 4 and 5 lost
        }
        b.publish(0, "a", EventKind::Exited { code: 0 }); // 6: takes 2's place
        b.publish(0, "a", EventKind::Failed { reason: "x".into() }); // 7: takes 3's place
        b.publish(0, "a", EventKind::Stopped); // 8: no line left to give up
        let got = seqs(&b.drain(slow, 10));
        assert_eq!(got, ["1:a", "lost 4", "6:a", "7:a", "lost 1"]);
        // Every missing number is counted, in its place.
        assert_eq!(b.pending(slow), 0);
    }

    #[test]
    fn filters_match_processes_instances_and_output() {
        let f = Filter { names: vec!["web".into()], output: false };
        assert!(f.matches("web", &EventKind::Ready));
        assert!(f.matches("web.1", &EventKind::Ready));
        assert!(!f.matches("webby", &EventKind::Ready));
        assert!(!f.matches("db", &EventKind::Ready));
        let line = EventKind::Output { stream: Stream::Stdout, seq: 1, bytes: vec![] };
        assert!(!f.matches("web", &line));
        assert!(Filter { names: vec![], output: true }.matches("any", &line));
        assert!(Filter { names: vec!["web.1".into()], output: false }
            .matches("web.1", &EventKind::Ready));
    }

    #[test]
    fn new_subscribers_can_ask_for_recent_history() {
        let mut b = Broadcaster::new(10, 3);
        for i in 0..5 {
            b.publish(i, if i % 2 == 0 { "a" } else { "b" }, EventKind::Ready);
        }
        b.publish(9, "a", EventKind::Output { stream: Stream::Stdout, seq: 1, bytes: vec![] });
        let all = b.subscribe(Filter::default(), 10);
        assert_eq!(seqs(&b.drain(all, 10)), ["3:a", "4:b", "5:a"], "history is bounded");
        let only_a = b.subscribe(Filter { names: vec!["a".into()], output: false }, 1);
        assert_eq!(seqs(&b.drain(only_a, 10)), ["5:a"]);
    }
}
