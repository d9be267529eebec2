//! Weavelets, the pure part: live configuration documents for targets,
//! their revisions and persistence, the NDJSON line codec and messages of
//! the weavelet protocol (`docs/weavelet-protocol.md`), and what each
//! connection has been sent and has acknowledged. No sockets here: the
//! hub room (`daemon/weavelets.rs`) does the I/O.
//!
//! | file | what |
//! |---|---|
//! | `doc.rs` | names, documents, `KEY=VALUE` parsing, changed keys |
//! | `store.rs` | revisions per target (last 64 kept), the state dir files |
//! | `codec.rs` | NDJSON lines (65536-byte bound), the messages both ways |
//! | `delivery.rs` | per connection: latest unsent document, acks, status rate |

pub mod codec;
pub mod delivery;
pub mod doc;
pub mod store;

/// The weavelet protocol version this weaver speaks.
pub const PROTOCOL: u64 = 1;
/// Bytes in one line before its `\n`, either way.
pub const MAX_LINE: usize = 65536;
/// Bytes of a document as compact JSON.
pub const MAX_DOC: usize = 64 * 1024;
/// Revisions kept per target for history and rollback.
pub const KEEP: usize = 64;

pub use doc::Doc;
