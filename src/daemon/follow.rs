//! The followers room: `logs -f` followers and `events` subscribers, and
//! the broadcaster of lifecycle events. It reads the supervisor's rings and
//! sends what is new as far as each client keeps up; a client with a full
//! buffer is skipped until it drains, so a slow follower costs bounded
//! memory and stalls nobody.

use std::collections::HashMap;

use crate::daemon::effect::{Effect, Effects};
use crate::protocol::{LogChunk, LogLine, Response};
use crate::supervise::events::{Broadcaster, EventKind, Filter, SubscriberId};
use crate::supervise::ring::Stream;
use crate::supervise::Supervisor;

/// A subscriber's replies wait while its client has this much unsent.
pub const FOLLOW_BACKLOG: usize = 1 << 20;
/// Lines or events per reply while following.
pub const FOLLOW_BATCH: usize = 512;

/// A `logs` request's cursor.
#[derive(Debug)]
pub struct Follower {
    pub client: u64,
    pub tag: u64,
    pub instance: String,
    /// The last sequence number sent.
    pub after: u64,
    pub stream: Option<Stream>,
}

#[derive(Debug, Default)]
pub struct Follow {
    /// Lifecycle events to `events` subscribers.
    bcast: Broadcaster,
    /// `events` subscriptions: subscriber -> (client, tag).
    subscribers: HashMap<SubscriberId, (u64, u64)>,
    /// `logs -f` requests being served.
    followers: Vec<Follower>,
    /// Output arrived this turn: followers may have lines to send.
    output_arrived: bool,
}

impl Follow {
    pub fn new() -> Self {
        Self::default()
    }

    /// A lifecycle event (or an output line) happened.
    pub fn publish(&mut self, time_ms: u64, instance: &str, kind: EventKind) {
        if matches!(kind, EventKind::Output { .. }) {
            self.output_arrived = true;
        }
        self.bcast.publish(time_ms, instance, kind);
    }

    /// `logs`: the lines after `f`'s cursor now, then (with `follow`) what
    /// comes.
    pub fn logs(&mut self, sup: &Supervisor, mut f: Follower, follow: bool, fx: &mut Effects) {
        let chunk = log_chunk(sup, &mut f, usize::MAX);
        fx.push(Effect::Reply {
            client: f.client,
            tag: f.tag,
            resp: Response::Logs(chunk),
            payload: Vec::new(),
        });
        if follow {
            self.followers.push(f);
        }
    }

    /// `events`.
    pub fn subscribe(&mut self, client: u64, tag: u64, filter: Filter, history: usize) {
        let id = self.bcast.subscribe(filter, history);
        self.subscribers.insert(id, (client, tag));
    }

    /// The client left: stop following for it.
    pub fn forget(&mut self, client: u64) {
        self.followers.retain(|f| f.client != client);
        let subs: Vec<SubscriberId> =
            self.subscribers.iter().filter(|(_, (c, _))| *c == client).map(|(&s, _)| s).collect();
        for s in subs {
            self.subscribers.remove(&s);
            self.bcast.unsubscribe(s);
        }
    }

    /// Send followers and subscribers what is new, as far as their clients
    /// keep up (`backlog`: a client's unsent bytes).
    pub fn pump(&mut self, sup: &Supervisor, backlog: impl Fn(u64) -> usize, fx: &mut Effects) {
        if std::mem::take(&mut self.output_arrived)
            || self.followers.iter().any(|f| backlog(f.client) == 0)
        {
            for f in &mut self.followers {
                if backlog(f.client) > FOLLOW_BACKLOG {
                    continue;
                }
                let last = sup.instance(&f.instance).map_or(0, |i| i.ring().last_seq());
                if last <= f.after {
                    continue;
                }
                let chunk = log_chunk(sup, f, FOLLOW_BATCH);
                if !chunk.lines.is_empty() || chunk.lost > 0 {
                    fx.push(Effect::Reply {
                        client: f.client,
                        tag: f.tag,
                        resp: Response::Logs(chunk),
                        payload: Vec::new(),
                    });
                }
            }
            self.followers.retain(|f| backlog(f.client) != usize::MAX);
        }
        for id in self.bcast.ready() {
            let Some(&(client, tag)) = self.subscribers.get(&id) else { continue };
            if backlog(client) > FOLLOW_BACKLOG {
                continue;
            }
            for d in self.bcast.drain(id, FOLLOW_BATCH) {
                fx.push(Effect::Reply {
                    client,
                    tag,
                    resp: Response::Event(d.into()),
                    payload: Vec::new(),
                });
            }
        }
    }

    /// Whether a follower or subscriber has more to send and its client's
    /// buffer is empty (`room`). Batches are bounded per turn, and a client
    /// whose buffer was flushed empty raises no event to come back for the
    /// rest, so the reactor must not sleep then. (A client with unsent
    /// bytes has a full socket: its writable event brings us back.)
    pub fn pending(&self, sup: &Supervisor, room: impl Fn(u64) -> bool) -> bool {
        let lines = self.followers.iter().any(|f| {
            room(f.client)
                && sup.instance(&f.instance).is_some_and(|i| i.ring().last_seq() > f.after)
        });
        lines
            || self
                .subscribers
                .iter()
                .any(|(&id, &(client, _))| room(client) && self.bcast.pending(id) > 0)
    }
}

/// Lines after the follower's cursor (advancing it).
fn log_chunk(sup: &Supervisor, f: &mut Follower, max: usize) -> LogChunk {
    let Some(inst) = sup.instance(&f.instance) else {
        return LogChunk {
            instance: f.instance.clone(),
            lines: Vec::new(),
            lost: 0,
            next: f.after,
        };
    };
    let since = inst.ring().since(f.after, max);
    f.after = since.next;
    let lines = log_lines(since.lines, f.stream);
    LogChunk { instance: f.instance.clone(), lines, lost: since.lost, next: since.next }
}

/// Ring lines as the protocol sends them, only `stream`'s when one is
/// asked for (processes' and jobs' output alike).
pub fn log_lines(lines: Vec<crate::supervise::ring::Line>, stream: Option<Stream>) -> Vec<LogLine> {
    lines
        .into_iter()
        .filter(|l| stream.map_or(true, |s| s == l.stream))
        .map(|l| LogLine {
            seq: l.seq,
            stream: l.stream.into(),
            time_ms: l.time_ms,
            text: String::from_utf8_lossy(&l.bytes).into_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sup() -> Supervisor {
        let c = crate::supervise::parse("[[process]]\nname = \"a\"\ncommand = [\"true\"]\n", "t");
        Supervisor::new(c.unwrap(), 1).unwrap()
    }

    fn replies(fx: &Effects) -> Vec<&Response> {
        fx.iter()
            .map(|e| match e {
                Effect::Reply { resp, .. } => resp,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn subscribers_get_events_only_while_their_client_keeps_up() {
        let s = sup();
        let mut f = Follow::new();
        f.subscribe(1, 10, Filter { names: vec![], output: false }, 0);
        f.publish(5, "a", EventKind::Started { pid: 3 });
        let mut fx = Effects::new();
        f.pump(&s, |_| FOLLOW_BACKLOG + 1, &mut fx);
        assert!(fx.is_empty(), "a client that is behind gets nothing more");
        assert!(!f.pending(&s, |_| false));
        assert!(f.pending(&s, |_| true));
        f.pump(&s, |_| 0, &mut fx);
        match replies(&fx)[..] {
            [Response::Event(e)] => {
                assert_eq!(
                    (e.event.as_str(), e.pid, e.instance.as_str()),
                    ("started", Some(3), "a")
                )
            }
            ref other => panic!("{other:?}"),
        }
        f.forget(1);
        f.publish(6, "a", EventKind::Stopped);
        let mut fx = Effects::new();
        f.pump(&s, |_| 0, &mut fx);
        assert!(fx.is_empty(), "a forgotten subscriber gets nothing");
    }

    #[test]
    fn followers_get_what_is_new_after_their_cursor() {
        let mut s = sup();
        let now = Instant::now();
        s.on_output("a", Stream::Stdout, b"one\ntwo\n", 1, now);
        let mut f = Follow::new();
        let mut fx = Effects::new();
        let cursor = Follower { client: 2, tag: 7, instance: "a".into(), after: 1, stream: None };
        f.logs(&s, cursor, true, &mut fx);
        match replies(&fx)[..] {
            [Response::Logs(c)] => {
                let lines: Vec<&str> = c.lines.iter().map(|l| l.text.as_str()).collect();
                assert_eq!(lines, ["two"]);
            }
            ref other => panic!("{other:?}"),
        }
        s.on_output("a", Stream::Stderr, b"three\n", 2, now);
        f.publish(
            2,
            "a",
            EventKind::Output { stream: Stream::Stderr, seq: 3, bytes: b"three".to_vec() },
        );
        let mut fx = Effects::new();
        f.pump(&s, |_| 0, &mut fx);
        match replies(&fx)[..] {
            [Response::Logs(c)] => assert_eq!(c.lines[0].text, "three"),
            ref other => panic!("{other:?}"),
        }
        // A client with a full buffer waits; one that left is forgotten.
        s.on_output("a", Stream::Stdout, b"four\n", 3, now);
        let mut fx = Effects::new();
        f.pump(&s, |_| FOLLOW_BACKLOG + 1, &mut fx);
        assert!(fx.is_empty());
        assert!(f.pending(&s, |_| true), "line four is still to be sent");
        f.forget(2);
        assert!(!f.pending(&s, |_| true));
    }
}
