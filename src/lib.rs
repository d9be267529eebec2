//! weaver: the conductor of a constrained GPU host.
//!
//! One per-user daemon, started on demand, owns every resource: its sockets,
//! the C compute daemon it spawns, and the processes it supervises.
//!
//! Invariants (each module keeps its share):
//! - weaver creates every socket before it spawns the process that uses it.
//! - A child never outlives weaver: parent-death signal + stdin pipe + socket
//!   EOF, any one suffices. What supervised processes fork dies with them:
//!   their process group is swept when they exit or stop, and the guard
//!   process kills every listed group if weaver dies by SIGKILL (detached
//!   processes excepted, by definition).
//! - Every request gets exactly one reply: success, error, cancel, or
//!   "compute died".
//! - Memory per client and per request is bounded; a slow client cannot stall
//!   anyone else.

pub mod cli; // clap definitions only
pub mod client; // blocking control-socket client
pub mod codec; // the frame decoder core shared by both framings, pure
pub mod commands; // the CLI's commands, client side
pub mod daemon; // the daemon: startup order, reactor, compute, mux
pub mod error; // error kind + message; exit codes
pub mod fdpass; // payloads by fd: sealed memfds passed with SCM_RIGHTS, checked
pub mod ffi; // bindgen bindings to include/weaver_compute.h and safe wrappers
pub mod fleet; // the NATS client and JetStream key-value, sans I/O (and a blocking driver)
pub mod frame; // control-socket framing, pure
#[doc(hidden)]
pub mod fuzzing; // fuzz target bodies, shared by fuzz/ and tests/fuzz_corpus.rs
pub mod http; // the HTTP endpoint: request heads, routing, health and metrics bodies; pure
pub mod launch; // connect-or-start, readiness pipe
pub mod logging; // env_logger set-up for the daemon
pub mod output; // stdout (a closed one ends the command quietly) and stderr
pub mod pidfile; // pid files with process start times
pub mod protocol; // client <-> daemon messages
pub mod registry; // the running daemons of this user: one file each under the state dir
pub mod render; // every text the CLI prints; the event wording the daemon logs
pub mod run; // one-shot job graphs: selection, waves, results, critical path; pure
pub mod runtime_dir; // runtime dir checks and paths
pub mod stream; // blocking frame reads and writes (client, test peers)
pub mod supervise; // supervised processes: config, order, lifecycle; pure
pub mod sys; // signal names, wait statuses, child set-up, random source: one of each
pub mod weavelet; // live configuration for weavelets: documents, revisions, NDJSON codec; pure
pub mod wire; // compute wire frames (encode, decode, HELLO), pure
