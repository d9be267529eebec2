//! What rooms ask the loop to do. A room takes an event and values and
//! pushes effects; the reactor applies them in order, and it alone touches
//! `mio::Registry`. Rooms that need to act on each other do so through
//! effects too (a reply for a client, an event for subscribers), so every
//! room can be driven in a test with plain values.

use std::os::fd::{OwnedFd, RawFd};
use std::time::Instant;

use mio::{Interest, Token};

use crate::daemon::compute::Deadline;
use crate::protocol::Response;
use crate::supervise::events::EventKind;
use crate::supervise::TimerKey;

/// What a deadline is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer {
    /// A compute request's `--timeout` (by request id).
    Request(u64),
    /// A compute lifecycle deadline (HELLO, restart, stop grace).
    Compute(Deadline),
    /// A supervised process's timer (start duration, backoff, probes...).
    Supervise(TimerKey),
    /// What the main process of this group left behind had its stop
    /// signal's grace: SIGKILL the group.
    Sweep { pgid: u32 },
    /// The same for one process that had left its group.
    SweepOrphan { pid: u32 },
    /// Accepting stopped at the open-file limit: try again.
    AcceptRetry,
    /// This client has not finished its handshake in time.
    Handshake(u64),
    /// Hand freed heap back to the kernel after a busy spell.
    Trim,
    /// Join the daemon's cgroup even if compute has not settled.
    Join,
    /// This weavelet connection has not said `hello` in time, or (after
    /// an error) has not closed in time.
    WeaveletHello(u64),
    /// A `config set --wait` (by waiter id) has waited long enough.
    ConfigWait(u64),
    /// Job `job` of run `run`: its timeout passed (`kill: false`), or its
    /// stop signal's grace did (`kill: true`).
    Job { run: u64, job: usize, kill: bool },
    /// This HTTP connection was idle, or took too long to send a request
    /// head, or to close after its last answer.
    Http(u64),
    /// A send to a process's stdin (by send id) is not all in by its
    /// `--timeout`.
    Stdin(u64),
    /// The fleet link's next deadline (PINGs, reconnect, heartbeats).
    Fleet,
    /// A `config set --fleet --wait` (by waiter id) has waited long enough.
    FleetWait(u64),
}

#[derive(Debug)]
pub enum Effect {
    /// Watch `fd` under `token` (first registration).
    Watch { fd: RawFd, token: Token, interest: Interest },
    /// Change what a watched fd is watched for (WRITABLE armed or not).
    Rewatch { fd: RawFd, token: Token, interest: Interest },
    /// Stop watching `fd`, then close it.
    Unwatch { fd: OwnedFd },
    /// Stop watching `fd`; it stays open (its owner keeps it).
    Unregister { fd: RawFd },
    /// Arm a deadline (re-arming a key moves it).
    Arm { at: Instant, timer: Timer },
    /// Disarm a deadline.
    Cancel(Timer),
    /// Answer request `tag` of `client`.
    Reply { client: u64, tag: u64, resp: Response, payload: Vec<u8> },
    /// Reply with the payload in a sealed memfd of `len` bytes, passed on
    /// to the client as it is (`fdpass`).
    ReplyFd { client: u64, tag: u64, resp: Response, fd: std::os::fd::OwnedFd, len: u64 },
    /// Answer `status --wait` requests: compute has settled.
    AnswerStatus { waiters: Vec<(u64, u64)> },
    /// Close `client` once its queued replies are flushed.
    CloseAfterFlush { client: u64 },
    /// Close `client` now.
    Close { client: u64, why: &'static str },
    /// A supervised process's lifecycle event, for subscribers.
    Publish { instance: String, kind: EventKind },
    /// Begin the graceful stop.
    Stop { why: String },
    /// A job started with `stdin = "pipe"`: the stdin room takes the write
    /// end of its pipe (the runner and the stdin room are different rooms).
    StdinOpened { instance: String, fd: OwnedFd },
    /// A job with a stdin pipe ended: what waits for it fails, the pipe is
    /// closed.
    StdinGone { instance: String },
}

/// The effects of one step, applied in order.
pub type Effects = Vec<Effect>;
