//! The request handlers, one file per request kind. A handler gets the
//! rooms it needs through [`Ctx`] and answers through effects; none of them
//! touches a socket.

pub mod compute;
pub mod config;
pub mod control;
pub mod events;
pub mod fleet;
pub mod handshake;
pub mod logs;
pub mod ping;
pub mod ps;
pub mod reload;
pub mod shutdown;
pub mod status;

use std::path::PathBuf;
use std::time::Instant;

use crate::daemon::clients::Clients;
use crate::daemon::compute::Compute;
use crate::daemon::effect::{Effect, Effects};
use crate::daemon::fleet::Fleet;
use crate::daemon::follow::Follow;
use crate::daemon::procs::Procs;
use crate::daemon::weavelets::Hub;
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
    pub hub: &'a mut Hub,
    /// The fleet link, with `[fleet]` configured.
    pub fleet: Option<&'a mut Fleet>,
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
        Request::Ping => ping::handle(cx, client, tag),
        Request::Config(req) => config::handle(cx, client, tag, req),
        Request::Fleet(req) => fleet::handle(cx, client, tag, req),
    }
}

fn not_found(message: String) -> ErrorReply {
    ErrorReply { kind: ErrorKind::NotFound, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::compute::Launch;
    use crate::protocol::Verb;
    use crate::supervise::config::ComputeSpec;
    use crate::supervise::Supervisor;

    struct Rooms {
        clients: Clients,
        compute: Compute,
        procs: Procs,
        follow: Follow,
        hub: Hub,
        info: DaemonInfo,
        fx: Effects,
        _dir: tempfile::TempDir,
    }

    fn rooms(toml: &str) -> Rooms {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RuntimeDir::open(&tmp.path().join("rt")).unwrap();
        let launch = Launch::defaults("/nonexistent/compute-daemon".into(), None);
        let sup = Supervisor::new(crate::supervise::parse(toml, "t").unwrap(), 1).unwrap();
        Rooms {
            clients: Clients::new(),
            compute: Compute::new(launch, false, &ComputeSpec::default(), tmp.path().join("c")),
            procs: Procs::new(sup, None, None, dir.path()),
            follow: Follow::new(),
            hub: Hub::new(crate::weavelet::store::Store::in_memory()),
            info: DaemonInfo { dir, log_file: None, started: Instant::now() },
            fx: Effects::new(),
            _dir: tmp,
        }
    }

    impl Rooms {
        fn serve(&mut self, stopping: bool, req: Request) -> Vec<Effect> {
            let mut cx = Ctx {
                clients: &mut self.clients,
                compute: &mut self.compute,
                procs: &mut self.procs,
                follow: &mut self.follow,
                hub: &mut self.hub,
                fleet: None,
                info: &self.info,
                stopping,
                now: Instant::now(),
                fx: &mut self.fx,
            };
            request(&mut cx, 3, 8, req, Vec::new());
            std::mem::take(&mut self.fx)
        }
    }

    fn only_reply(fx: Vec<Effect>) -> Response {
        match fx.into_iter().next() {
            Some(Effect::Reply { client: 3, tag: 8, resp, .. }) => resp,
            other => panic!("expected a reply to client 3 tag 8, got {other:?}"),
        }
    }

    const ONE: &str = "[[process]]\nname = \"a\"\ncommand = [\"true\"]\n";

    #[test]
    fn status_and_ps_answer_from_the_rooms() {
        let mut r = rooms(ONE);
        match only_reply(r.serve(false, Request::Status { wait_compute: false })) {
            Response::Status(s) => {
                assert_eq!(s.daemon.pid, std::process::id());
                assert_eq!(s.compute.state, crate::protocol::ComputeState::Stopped);
                assert_eq!(s.daemon.clients, 0);
            }
            other => panic!("{other:?}"),
        }
        match only_reply(r.serve(false, Request::Ps)) {
            Response::Ps(rows) => assert_eq!(rows.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_names_and_a_stopping_daemon_get_clear_errors() {
        let mut r = rooms(ONE);
        let req = Request::Control { verb: Verb::Start, names: vec!["nope".into()] };
        match only_reply(r.serve(false, req)) {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::NotFound);
                assert!(e.message.contains("nope"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        let req = Request::Compute { op: "echo".into(), timeout_ms: None };
        match only_reply(r.serve(true, req)) {
            Response::Error(e) => assert_eq!(e.kind, ErrorKind::ShuttingDown),
            other => panic!("{other:?}"),
        }
        let req = Request::Reload { dry_run: false };
        match only_reply(r.serve(true, req)) {
            Response::Error(e) => assert_eq!(e.kind, ErrorKind::ShuttingDown),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_requests_make_revisions_and_name_what_is_unknown() {
        use crate::protocol::ConfigReq;
        let mut r = rooms(ONE);
        r.hub.declare(&r.procs.sup);
        match only_reply(r.serve(false, Request::Config(ConfigReq::Get { target: "a".into() }))) {
            Response::Config(d) => assert_eq!((d.revision, d.values.as_str()), (0, "{}")),
            other => panic!("{other:?}"),
        }
        let get = Request::Config(ConfigReq::Get { target: "zz".into() });
        match only_reply(r.serve(false, get)) {
            Response::Error(e) => assert_eq!(e.kind, ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        let set = |v: &str| {
            Request::Config(ConfigReq::Set {
                target: "a".into(),
                set: vec![("lr".into(), v.into())],
                unset: vec![],
                wait: None,
            })
        };
        match only_reply(r.serve(false, set("0.5"))) {
            Response::Config(d) => {
                assert_eq!(
                    (d.revision, d.values.as_str(), d.note.as_str()),
                    (1, r#"{"lr":0.5}"#, "set")
                )
            }
            other => panic!("{other:?}"),
        }
        match only_reply(r.serve(false, set("not json"))) {
            Response::Error(e) => assert_eq!(e.kind, ErrorKind::BadRequest),
            other => panic!("{other:?}"),
        }
        match only_reply(r.serve(true, set("1"))) {
            Response::Error(e) => assert_eq!(e.kind, ErrorKind::ShuttingDown),
            other => panic!("{other:?}"),
        }
        let back = Request::Config(ConfigReq::Rollback { target: "a".into(), to: 0, wait: None });
        match only_reply(r.serve(false, back)) {
            Response::Config(d) => assert_eq!((d.revision, d.values.as_str()), (2, "{}")),
            other => panic!("{other:?}"),
        }
        let h = Request::Config(ConfigReq::History { target: "a".into() });
        match only_reply(r.serve(false, h)) {
            Response::ConfigHistory(h) => assert_eq!(h.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shutdown_replies_then_asks_the_loop_to_stop() {
        let mut r = rooms(ONE);
        let fx = r.serve(false, Request::Shutdown);
        assert!(
            matches!(
                fx[..],
                [Effect::Reply { resp: Response::ShutdownStarted, .. }, Effect::Stop { .. }]
            ),
            "{fx:?}"
        );
    }

    #[test]
    fn a_dry_run_reload_plans_without_changing_anything() {
        let mut r = rooms(ONE);
        match only_reply(r.serve(false, Request::Reload { dry_run: true })) {
            Response::Reload(rep) => {
                assert!(!rep.applied);
                assert_eq!(rep.removed, ["a"], "no file: everything declared goes");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.procs.sup.ps(Instant::now()).len(), 1);
    }
}
