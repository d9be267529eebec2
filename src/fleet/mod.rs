//! The fleet link, the pure part: the NATS core protocol (`proto.rs`), the
//! client state machine (`client.rs`), the JetStream key-value requests and
//! the watcher (`kv.rs`). No sockets here except in `blocking.rs`, the
//! driver the command line and tests use; the daemon's fleet room drives
//! the same client from the reactor.
//!
//! | file | what |
//! |---|---|
//! | `proto.rs` | NATS operations both ways, bounded lines and payloads |
//! | `client.rs` | handshake, PINGs, reconnect with backoff, subscriptions, requests |
//! | `kv.rs` | buckets as streams, compare-and-set puts, the ordered watcher |
//! | `blocking.rs` | a blocking driver over `std::net::TcpStream` |

pub mod blocking;
pub mod cache;
pub mod client;
pub mod config;
pub mod kv;
pub mod proto;
