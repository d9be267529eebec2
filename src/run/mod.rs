//! One-shot job graphs (`[[job]]` in `weaver.toml`, `weaver run`), without
//! I/O: what a job is, which job starts when, and what a finished run
//! reports. The daemon's runner room (`daemon/runner.rs`) spawns, reads and
//! reaps; everything it decides comes from here, tested with plain values.
//!
//! | file | job |
//! |---|---|
//! | [`spec`] | [`JobSpec`]: one `[[job]]` as the runner needs it |
//! | [`sched`] | [`Schedule`]: the selection, the three modes, waves, skips, cancellation, what started what |
//! | [`report`] | the wire form of a run ([`RunReport`], [`JobResult`]), the critical path, the exit code |
//! | [`render`] | the text `weaver run` and `weaver runs` print |

pub mod render;
pub mod report;
pub mod sched;
pub mod spec;

pub use report::{critical_path, JobResult, JobState, RunMode, RunReport, RunReq};
pub use sched::{Options, Schedule, Step};
pub use spec::JobSpec;
