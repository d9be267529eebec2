//! The request handlers, one file per request kind. A handler gets the
//! rooms it needs through [`Ctx`] and answers through effects; none of them
//! touches a socket.

pub mod compute;
pub mod control;
pub mod events;
pub mod handshake;
pub mod logs;
pub mod ps;
pub mod reload;
pub mod shutdown;
pub mod status;

use std::path::PathBuf;
use std::time::Instant;

use crate::daemon::clients::Clients;
use crate::daemon::compute::Compute;
use crate::daemon::effect::{Effect, Effects};
use crate::daemon::follow::Follow;
use crate::daemon::procs::Procs;
use crate::protocol::{ErrorKind, ErrorReply, Request, Response};
use crate::runtime_dir::RuntimeDir;

/// What the daemon says about itself in `status`.
#[derive(Debug)]
pub struct DaemonInfo {
    pub dir: RuntimeDir,
    pub log_file: Option<PathBuf>,
    pub started: Instant,
}

/// The rooms a handler may use, for one request.
pub struct Ctx<'a> {
    pub clients: &'a mut Clients,
    pub compute: &'a mut Compute,
    pub procs: &'a mut Procs,
    pub follow: &'a mut Follow,
    pub info: &'a DaemonInfo,
    /// A graceful stop is under way.
    pub stopping: bool,
    pub now: Instant,
    pub fx: &'a mut Effects,
}

impl Ctx<'_> {
    pub fn reply(&mut self, client: u64, tag: u64, resp: Response) {
        self.fx.push(Effect::Reply { client, tag, resp, payload: Vec::new() });
    }

    pub fn reply_result(&mut self, client: u64, tag: u64, r: Result<Response, ErrorReply>) {
        self.reply(client, tag, r.unwrap_or_else(Response::Error));
    }

    /// Refuse what cannot be done while weaver stops.
    pub fn not_stopping(&self) -> Result<(), ErrorReply> {
        if self.stopping {
            return Err(ErrorReply {
                kind: ErrorKind::ShuttingDown,
                message: "weaver is shutting down".into(),
            });
        }
        Ok(())
    }
}

/// Serve one decoded request of `client`.
pub fn request(cx: &mut Ctx, client: u64, tag: u64, req: Request, payload: Vec<u8>) {
    match req {
        Request::Status { wait_compute } => status::handle(cx, client, tag, wait_compute),
        Request::Compute { op, timeout_ms } => {
            compute::handle(cx, client, tag, op, payload, timeout_ms)
        }
        Request::Shutdown => shutdown::handle(cx, client, tag),
        Request::Ps => ps::handle(cx, client, tag),
        Request::Control { verb, names } => control::handle(cx, client, tag, verb, &names),
        Request::Logs(q) => logs::handle(cx, client, tag, q),
        Request::Events { names, output, history } => {
            events::handle(cx, client, tag, names, output, history)
        }
        Request::Reload { dry_run } => reload::handle(cx, client, tag, dry_run),
    }
}

fn not_found(message: String) -> ErrorReply {
    ErrorReply { kind: ErrorKind::NotFound, message }
}
