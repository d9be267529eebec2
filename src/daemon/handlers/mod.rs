//! The request handlers, one file per request kind. A handler gets the
//! rooms it needs through [`Ctx`] and answers through effects; none of them
//! touches a socket.

pub mod compute;
pub mod config;
pub mod control;
pub mod events;
pub mod fleet;
pub mod handshake;
pub mod health;
pub mod input;
pub mod logs;
pub mod ping;
pub mod ps;
pub mod reload;
pub mod run;
pub mod shutdown;
pub mod status;

use crate::fdpass::Payload;
use std::path::PathBuf;
use std::time::Instant;

use crate::daemon::clients::Clients;
use crate::daemon::compute::Compute;
use crate::daemon::effect::{Effect, Effects};
use crate::daemon::fleet::Fleet;
use crate::daemon::follow::Follow;
use crate::daemon::procs::Procs;
use crate::daemon::runner::Runner;
use crate::daemon::weavelets::Hub;
use crate::protocol::{ErrorKind, ErrorReply, Request, Response};
use crate::runtime_dir::RuntimeDir;

/// What the daemon says about itself in `status`.
#[derive(Debug)]
pub struct DaemonInfo {
    pub dir: RuntimeDir,
    pub log_file: Option<PathBuf>,
    pub started: Instant,
    /// The HTTP endpoint's bound address, when it is on.
    pub http: Option<String>,
}

/// The rooms a handler may use, for one request.
pub struct Ctx<'a> {
    pub clients: &'a mut Clients,
    pub compute: &'a mut Compute,
    pub procs: &'a mut Procs,
    pub follow: &'a mut Follow,
    pub hub: &'a mut Hub,
    pub runner: &'a mut Runner,
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

/// A request frame's payload: its bytes, or the checked memfd it announced.
pub fn payload_of(f: crate::frame::RawFrame) -> Result<Payload, crate::fdpass::BadFd> {
    if f.by_fd {
        return crate::fdpass::announced(&f.payload, f.fd.0);
    }
    Ok(Payload::Bytes(f.payload))
}

/// Serve one decoded request of `client`.
pub fn request(cx: &mut Ctx, client: u64, tag: u64, req: Request, payload: Payload) {
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
        Request::Run(req) => run::start(cx, client, tag, req),
        Request::RunCancel { id } => run::cancel(cx, client, tag, id),
        Request::RunAttach { id } => run::attach(cx, client, tag, id),
        Request::Runs => run::runs(cx, client, tag),
        Request::Health { name } => health::handle(cx, client, tag, name),
        Request::Send { name, close, timeout_ms, attached } => {
            let s = input::SendReq { name, close, timeout_ms, attached };
            match payload {
                Payload::Bytes(bytes) => input::send(cx, client, tag, s, bytes),
                Payload::Fd { .. } => {
                    let e = ErrorReply {
                        kind: ErrorKind::BadRequest,
                        message: "send takes its input inline, in pieces of at most 256 KiB, \
                                  not by fd; the fd was closed and nothing was written"
                            .into(),
                    };
                    cx.reply(client, tag, Response::Error(e));
                }
            }
        }
        Request::Attach { name, read_only, force, tail } => {
            input::attach(cx, client, tag, &name, read_only, force, tail)
        }
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
        runner: Runner,
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
            runner: Runner::new(),
            info: DaemonInfo { dir, log_file: None, started: Instant::now(), http: None },
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
                runner: &mut self.runner,
                fleet: None,
                info: &self.info,
                stopping,
                now: Instant::now(),
                fx: &mut self.fx,
            };
            request(&mut cx, 3, 8, req, Payload::default());
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

    #[test]
    fn send_and_attach_name_one_instance_with_a_pipe_that_runs() {
        let toml =
            "[[process]]\nname = \"two\"\ncommand = [\"cat\"]\nstdin = \"pipe\"\ninstances = 2\n\
                    [[process]]\nname = \"plain\"\ncommand = [\"cat\"]\n";
        let mut r = rooms(toml);
        let send = |name: &str| Request::Send {
            name: name.into(),
            close: false,
            timeout_ms: 1000,
            attached: false,
        };
        let error = |fx: Vec<Effect>| match only_reply(fx) {
            Response::Error(e) => e,
            other => panic!("{other:?}"),
        };
        let e = error(r.serve(false, send("two")));
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(
            e.message.contains("two has 2 instances (two.0, two.1): name one"),
            "{}",
            e.message
        );
        let e = error(r.serve(false, send("two.1")));
        assert!(e.message.contains("two.1 is not running (stopped)"), "{}", e.message);
        let e = error(r.serve(false, send("plain")));
        assert!(e.message.contains("plain takes no input"), "{}", e.message);
        assert_eq!(error(r.serve(false, send("zz"))).kind, ErrorKind::NotFound);
        assert_eq!(error(r.serve(true, send("two.0"))).kind, ErrorKind::ShuttingDown);
        let attach =
            |read_only| Request::Attach { name: "plain".into(), read_only, force: false, tail: 5 };
        let e = error(r.serve(false, attach(false)));
        assert!(e.message.contains("`attach --read-only` follows its output"), "{}", e.message);
        // Read-only: attached, then the output as logs -f.
        let fx = r.serve(false, attach(true));
        assert!(
            matches!(
                &fx[..],
                [
                    Effect::Reply { resp: Response::Attached { writer: false, .. }, .. },
                    Effect::Reply { resp: Response::Logs(_), .. }
                ]
            ),
            "{fx:?}"
        );
    }
}
