//! Replays the saved fuzz corpora (`fuzz/corpus/<target>/`, see fuzz/)
//! through the same target bodies the fuzzer runs (`weaver::fuzzing`), so a
//! plain `cargo test` re-checks every input found so far. A missing or
//! empty corpus directory fails: the replay must never test nothing.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` writes the seed
//! inputs (valid frames and configurations, `seed-*` files) the corpora
//! start from.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use weaver::frame;
use weaver::fuzzing;
use weaver::protocol::{self, *};
use weaver::wire::{self, kind, op, status, Hello};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// Every file of the target's corpus through `body`; fails naming the
/// input that broke an invariant.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = corpus_dir(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> =
        entries.map(|e| e.expect("readable corpus entry").path()).filter(|p| p.is_file()).collect();
    paths.sort();
    assert!(!paths.is_empty(), "{} holds no inputs", dir.display());
    for p in &paths {
        let data = fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        if let Err(cause) = panic::catch_unwind(AssertUnwindSafe(|| body(&data))) {
            eprintln!("{target}: input {} broke an invariant", p.display());
            panic::resume_unwind(cause);
        }
    }
    println!("{target}: {} inputs replayed", paths.len());
}

#[test]
fn control_frame_corpus_replays_clean() {
    replay("control_frame", fuzzing::control_frame);
}

#[test]
fn compute_frame_corpus_replays_clean() {
    replay("compute_frame", fuzzing::compute_frame);
}

#[test]
fn c_reader_corpus_replays_clean() {
    replay("c_reader", fuzzing::c_reader);
}

#[test]
fn config_corpus_replays_clean() {
    replay("config", fuzzing::config);
}

#[test]
fn weavelet_line_corpus_replays_clean() {
    replay("weavelet_line", fuzzing::weavelet_line);
}

#[test]
fn http_request_corpus_replays_clean() {
    replay("http_request", fuzzing::http_request);
}

#[test]
fn nats_proto_corpus_replays_clean() {
    replay("nats_proto", fuzzing::nats_proto);
}

// ---- seeds ------------------------------------------------------------------

/// Writes `fuzz/corpus/<target>/seed-*`: valid inputs for each target,
/// and a few cut short or broken, for the fuzzer to start from.
#[test]
#[ignore = "writes the seed corpus into fuzz/corpus"]
fn write_seeds() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    };
    for (name, data) in control_seeds() {
        write("control_frame", &name, &data);
    }
    for (name, data) in compute_seeds() {
        write("compute_frame", &name, &data);
        write("c_reader", &name, &data);
    }
    for (name, text) in config_seeds() {
        write("config", &name, text.as_bytes());
    }
    for (name, text) in http_seeds() {
        write("http_request", name, text.as_bytes());
    }
    for (name, data) in nats_seeds() {
        write("nats_proto", name, data);
    }
}

/// What a NATS server sends: a session's worth, status lines, and a few
/// broken inputs.
fn nats_seeds() -> Vec<(&'static str, &'static [u8])> {
    vec![
        (
            "session",
            b"INFO {\"server_id\":\"NA\",\"version\":\"2.9.10\",\"max_payload\":1048576,\
              \"headers\":true,\"jetstream\":true}\r\n+OK\r\nPONG\r\nPING\r\n\
              MSG $KV.weaver_config.trainer 2 _INBOX.a.1 5\r\nhello\r\n",
        ),
        (
            "heartbeat",
            b"HMSG _INBOX.a.d1 3 76 76\r\nNATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 7\r\n\
              Nats-Last-Stream: 12\r\n\r\n\r\n",
        ),
        (
            "flow-control",
            b"HMSG _INBOX.a.d1 3 $JS.FC.KV_b.x.1 36 36\r\nNATS/1.0 100 FlowControl Request\r\n\r\n\r\n",
        ),
        ("no-responders", b"HMSG _INBOX.a.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"),
        (
            "kv-entry",
            b"HMSG $KV.b.k 4 $JS.ACK.KV_b.c.1.5.5.1700000000000000000.0 29 34\r\n\
              NATS/1.0\r\nNats-Msg-Id: w1\r\n\r\n{\"a\"}\r\n",
        ),
        ("err", b"-ERR 'Authorization Violation'\r\n"),
        (
            "js-wrong-last",
            b"MSG _INBOX.a.3 1 78\r\n{\"error\":{\"code\":400,\"err_code\":10071,\
              \"description\":\"wrong last sequence: 6\"}}\r\n",
        ),
        ("bad-size", b"MSG a 1 99999999999\r\n"),
        ("bad-terminator", b"MSG a 1 2\r\nabXY"),
        ("cut-short", b"HMSG a 1 12 20\r\nNATS/1.0\r\n"),
    ]
}

fn control_frame(meta: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::push(&mut out, meta, payload);
    out
}

fn control_seeds() -> Vec<(String, Vec<u8>)> {
    let mut hs = Handshake::new(false);
    hs.pid = 4242;
    let requests = [
        Request::Status { wait_compute: true },
        Request::Compute { op: "echo".into(), timeout_ms: Some(500) },
        Request::Shutdown,
        Request::Ps,
        Request::Control { verb: Verb::Restart, names: vec!["web".into(), "db.0".into()] },
        Request::Logs(LogQuery {
            name: "web.1".into(),
            after: 7,
            tail: Some(10),
            stream: Some(LogStream::Stderr),
            follow: true,
        }),
        Request::Events { names: vec![], output: true, history: 50 },
        Request::Reload { dry_run: true },
        Request::Run(weaver::run::RunReq {
            jobs: vec!["bench".into()],
            mode: weaver::run::RunMode::Sequential,
            max_parallel: Some(2),
            keep_going: true,
            detach: false,
        }),
        Request::RunCancel { id: 3 },
        Request::RunAttach { id: 3 },
        Request::Runs,
    ];
    let status = StatusReport {
        version: "0.1.0".into(),
        protocol: PROTOCOL_VERSION,
        daemon: DaemonStatus {
            pid: 10,
            uptime_ms: 1000,
            runtime_dir: "/run/user/1000/weaver".into(),
            log_file: Some("/tmp/weaver.log".into()),
            clients: 2,
            containment: "cgroup /sys/fs/cgroup/weaver-10".into(),
            http: Some("127.0.0.1:9464".into()),
        },
        compute: ComputeStatus {
            pid: Some(11),
            state: ComputeState::Ready,
            bin: "compute-daemon".into(),
            workers: Some(4),
            restarts: 1,
            hangs: 0,
            in_flight: 2,
            queued: 3,
            served: 4,
            errors: 5,
            cancelled: 6,
            timed_out: 7,
            busy_rejected: 8,
            dropped_late: 9,
            last_exit: Some("killed by SIGKILL".into()),
            last_error: None,
            next_restart_ms: None,
        },
    };
    let row = |state: &str| ProcRow {
        name: "web.0".into(),
        process: "web".into(),
        state: state.parse().unwrap(),
        pid: Some(99),
        restarts: 3,
        next_restart_ms: Some(250),
        last_exit: Some("exit 1".into()),
        uptime_ms: None,
        reason: None,
        gpus: Some(vec![0, 1]),
    };
    let responses = [
        Response::Status(Box::new(status)),
        Response::ComputeOk,
        Response::ShutdownStarted,
        Response::Error(ErrorReply {
            kind: ErrorKind::NotFound,
            message: "no such process".into(),
        }),
        Response::Ps(vec![row("running"), row("killed(SIGKILL)"), row("exited(3)")]),
        Response::Done { instances: vec!["web.0".into()] },
        Response::Logs(LogChunk {
            instance: "web.0".into(),
            lines: vec![LogLine {
                seq: 1,
                stream: LogStream::Stdout,
                time_ms: 5,
                text: "hello".into(),
            }],
            lost: 0,
            next: 2,
        }),
        Response::Event(EventRecord::lost(3)),
        Response::Reload(ReloadReport {
            config: Some("weaver.toml".into()),
            applied: false,
            added: vec!["a".into()],
            removed: vec![],
            changed: vec!["b".into()],
            unchanged: vec![],
            compute_changed: true,
        }),
        Response::RunStarted { id: 3, jobs: vec!["fetch".into(), "bench".into()] },
        Response::RunJob(weaver::run::JobResult {
            code: Some(124),
            timed_out: true,
            signal: Some("SIGTERM".into()),
            stderr_tail: vec!["boom".into()],
            ..weaver::run::JobResult::pending("fetch", true)
        }),
        Response::RunDone(Box::new(weaver::run::RunReport {
            id: 3,
            mode: weaver::run::RunMode::Graph,
            finished: true,
            cancelled: false,
            started_at_ms: 1,
            duration_ms: 2,
            passed: 1,
            failed: 0,
            skipped: 1,
            cancelled_jobs: 0,
            critical_path: vec!["fetch".into()],
            jobs: vec![weaver::run::JobResult::pending("bench", false)],
        })),
    ];
    let mut seeds = vec![("handshake".to_string(), control_frame(&protocol::encode(&hs), b""))];
    for (i, req) in requests.into_iter().enumerate() {
        let payload: &[u8] = if i == 1 { b"input bytes" } else { b"" };
        let m = protocol::encode(&ClientMsg { tag: i as u64 + 1, req });
        seeds.push((format!("request-{i}"), control_frame(&m, payload)));
    }
    for (i, resp) in responses.into_iter().enumerate() {
        let m = protocol::encode(&ServerMsg { tag: i as u64 + 1, resp });
        seeds.push((format!("reply-{i}"), control_frame(&m, b"")));
    }
    // A conversation: handshake, two pipelined requests; then cut short.
    let mut talk = control_frame(&protocol::encode(&hs), b"");
    talk.extend(control_frame(&protocol::encode(&ClientMsg { tag: 1, req: Request::Ps }), b""));
    talk.extend(control_frame(
        &protocol::encode(&ClientMsg {
            tag: 2,
            req: Request::Compute { op: "render".into(), timeout_ms: None },
        }),
        b"width=8 height=8",
    ));
    seeds.push(("cut-short".into(), talk[..talk.len() - 5].to_vec()));
    seeds.push(("conversation".into(), talk));
    seeds.push(("bad-prefix".into(), frame::prefix(10, 0)[..].to_vec()));
    // A request whose payload travels by fd: the 8 size bytes inline.
    let m = protocol::encode(&ClientMsg {
        tag: 9,
        req: Request::Compute { op: "echo".into(), timeout_ms: None },
    });
    let mut by_fd = frame::prefix_fd(m.len()).to_vec();
    by_fd.extend_from_slice(&m);
    by_fd.extend_from_slice(&(64u64 << 20).to_le_bytes());
    seeds.push(("request-by-fd".into(), by_fd));
    seeds
}

fn compute_seeds() -> Vec<(String, Vec<u8>)> {
    let hello = Hello {
        version: wire::VERSION,
        pid: 1234,
        max_frame: wire::MAX_FRAME as u32,
        workers: 4,
        ops: vec![(op::ECHO, "echo".into()), (op::RENDER, "render".into())],
    };
    let mut talk = wire::encode_frame(kind::HELLO, 0, 0, &hello.encode());
    talk.extend(wire::encode_frame(kind::REQUEST, 1, op::ECHO, b"hello"));
    talk.extend(wire::encode_frame(kind::RESPONSE, 1, status::OK, b"hello"));
    talk.extend(wire::encode_frame(kind::CANCEL, 2, op::SLEEP, b""));
    talk.extend(wire::encode_frame(kind::PING, 3, 0, b"ping"));
    talk.extend(wire::encode_frame(kind::PONG, 3, 0, b"ping"));
    talk.extend(wire::encode_frame(kind::SHUTDOWN, 0, 0, b""));
    let mut bad = wire::encode_frame(kind::PING, 1, 0, b"x");
    bad.extend(wire::encode_frame(kind::PING, 2, 0, b"y"));
    bad[25 + 6] = 99; // the second header's kind
    vec![
        ("hello".into(), wire::encode_frame(kind::HELLO, 0, 0, &hello.encode())),
        ("request".into(), wire::encode_frame(kind::REQUEST, 7, op::RENDER, b"width=4 height=4")),
        (
            "request-by-fd".into(),
            wire::encode_frame(kind::REQUEST_FD, 8, op::ECHO, &(1u64 << 30).to_le_bytes()),
        ),
        (
            "response-by-fd".into(),
            wire::encode_frame(kind::RESPONSE_FD, 8, status::OK, &(1u64 << 30).to_le_bytes()),
        ),
        (
            "bad-request".into(),
            wire::encode_frame(kind::RESPONSE, 7, status::BAD_REQUEST, b"width: out of range"),
        ),
        ("cut-short".into(), talk[..talk.len() - 30].to_vec()),
        ("conversation".into(), talk),
        ("bad-kind".into(), bad),
    ]
}

fn http_seeds() -> Vec<(&'static str, String)> {
    vec![
        ("health", "\x00GET /health HTTP/1.1\r\nHost: a\r\n\r\n".into()),
        (
            "pipelined",
            "\x07GET /ready HTTP/1.1\r\n\r\nHEAD /metrics HTTP/1.1\r\n\r\n\
             GET /health/web HTTP/1.1\r\n\r\nGET /health/nope HTTP/1.0\r\n\r\n"
                .into(),
        ),
        ("metrics", "\x1fGET /metrics?x=1 HTTP/1.1\r\nConnection: keep-alive\r\n\r\n".into()),
        (
            "post",
            "\x08POST /health HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"
                .into(),
        ),
        (
            "delete",
            "\x02DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /nope HTTP/1.1\r\n\r\n".into(),
        ),
        ("big", format!("\x03GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000))),
        ("partial", "\x04GET /health HTTP/1.1\r\nX-Slow: aaa".into()),
        (
            "close",
            "GET /health HTTP/1.1\r\nConnection: close\r\n\r\nGET /ready HTTP/1.1\r\n\r\n".into(),
        ),
    ]
}

fn config_seeds() -> Vec<(String, String)> {
    let readme = include_str!("../README.md");
    let start = readme.find("```toml\n").expect("README has a weaver.toml example") + 8;
    let len = readme[start..].find("```").unwrap();
    let mut seeds = vec![("readme".to_string(), readme[start..start + len].to_string())];
    let small = [
        ("empty", ""),
        ("compute", "[compute]\ncommand = [\"/opt/compute\"]\nworkers = 2\nmax_restarts = 0\n"),
        (
            "shell",
            "[[process]]\nname = \"job\"\ncommand = \"echo hi && sleep 1\"\nshell = true\n\
             auto_restart = false\nstop_timeout = \"1m30s\"\n",
        ),
        (
            "detached",
            "[[process]]\nname = \"d\"\ncommand = [\"d\"]\ndetached = true\n\
             pid_file = \"/run/d.pid\"\n[process.detectors.alive]\npid_file = \"/run/d.pid\"\n\
             interval = 2000\n",
        ),
        (
            "hooks",
            "[[process]]\nname = \"w\"\ncommand = [\"w\", \"{instance}\"]\ninstances = 3\n\
             gpus = [[0, 1], 2]\nenv = { A = \"{instance}\" }\n\
             output = { ring_bytes = 65536, file = \"/tmp/w-{instance}.log\" }\n\
             [process.hooks.post_stop]\ncommand = [\"cleanup\"]\nrun_mode = \"async\"\n\
             timeout = \"5s\"\n[process.detectors.ready]\nlog_pattern = \"listening\"\n",
        ),
        (
            "errors",
            "[[process]]\nname = \"a b\"\ncomand = [\"x\"]\nafter = [\"c\"]\n\
             stop_signal = \"NOPE\"\nbackoff_jitter = 2.0\n[[process]]\nname = \"c\"\n\
             command = []\nafter = [{ name = \"a b\", condition = \"redy\" }]\n",
        ),
        ("cycle", "process = [{ name = \"a\", command = [\"a\"], after = [\"b\"] }, { name = \"b\", command = [\"b\"], after = [\"a\"] }]\n"),
        ("bad-toml", "[[process]\nname = \"x\n"),
    ];
    seeds.extend(small.iter().map(|(n, t)| (n.to_string(), t.to_string())));
    seeds
}
