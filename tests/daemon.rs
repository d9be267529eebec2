//! The weaver daemon end to end: real weaver and compute processes, real
//! sockets and signals, each test in its own runtime dir.

mod util;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::{exists, processes_mentioning, render_reference, wait_for, TestEnv};
use weaver::frame;
use weaver::pidfile;
use weaver::protocol::{self, ClientMsg, ErrorKind, Handshake, Request, Response, ServerMsg};
use weaver::wire::MAX_PAYLOAD;

fn signal(pid: u32, s: Signal) {
    kill(Pid::from_raw(pid as i32), s).unwrap();
}

fn gone(pid: u32, limit: Duration) -> bool {
    wait_for(limit, || !pidfile::alive(pid))
}

fn echo(c: &mut weaver::client::Client, data: &[u8]) -> Vec<u8> {
    c.call(Request::Compute { op: "echo".into(), timeout_ms: None }, data).unwrap().payload
}

fn compute_req(op: &str) -> Request {
    Request::Compute { op: op.into(), timeout_ms: None }
}

fn error_kind(r: &Response) -> ErrorKind {
    match r {
        Response::Error(e) => e.kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn first_command_starts_the_daemon_with_safe_files() {
    let env = TestEnv::new();
    assert!(!exists(&env.rt));
    let s = env.status();
    assert_eq!(s["compute"]["state"], "ready", "{s}");
    for key in ["version", "daemon", "compute"] {
        assert!(!s[key].is_null(), "missing {key}");
    }
    for key in ["pid", "uptime_ms", "runtime_dir", "log_file"] {
        assert!(!s["daemon"][key].is_null(), "missing daemon.{key}: {s}");
    }
    for key in ["pid", "state", "restarts", "in_flight", "served", "last_exit"] {
        assert!(s["compute"].get(key).is_some(), "missing compute.{key}: {s}");
    }
    let pid = s["daemon"]["pid"].as_u64().unwrap() as u32;
    assert_eq!(env.daemon_pid(), Some(pid));
    assert_eq!(s["daemon"]["runtime_dir"], env.rt.display().to_string());
    assert_eq!(std::fs::metadata(&env.rt).unwrap().permissions().mode() & 0o777, 0o700);
    for sock in ["control.sock", "compute.sock"] {
        let md = std::fs::metadata(env.path(sock)).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600, "{sock}");
        assert_eq!(md.uid(), nix::unistd::geteuid().as_raw());
    }
    // The pid file records pid and start time.
    let (p, start) = pidfile::read(&env.path("weaver.pid")).unwrap();
    assert_eq!((p, start), (pid, pidfile::start_time(pid)));
    // The daemon is detached: its own session, cwd /.
    assert_eq!(nix::unistd::getsid(Some(Pid::from_raw(pid as i32))).unwrap().as_raw() as u32, pid);
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), std::path::Path::new("/"));
    // A second command reuses it.
    let again = env.status();
    assert_eq!(again["daemon"]["pid"].as_u64().unwrap() as u32, pid);
    assert!(env.log().contains("ready"), "log: {}", env.log());
    env.ok(&["shutdown"]);
}

#[test]
fn sixteen_racing_first_commands_give_one_daemon() {
    let env = TestEnv::new();
    let children: Vec<_> = (0..16)
        .map(|_| {
            env.cmd()
                .args(["status", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut pids = Vec::new();
    for c in children {
        let out = util::wait_output(c, Duration::from_secs(60));
        assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        pids.push(v["daemon"]["pid"].as_u64().unwrap() as u32);
    }
    env.status();
    pids.dedup();
    assert_eq!(pids.len(), 1, "answers came from several daemons: {pids:?}");
    let rt = env.rt.display().to_string();
    let daemons = processes_mentioning(&[&rt, "daemon", "--foreground"]);
    assert_eq!(daemons, pids, "exactly one daemon process");
    env.ok(&["shutdown"]);
}

#[test]
fn echo_is_byte_exact_from_empty_to_the_maximum() {
    let env = TestEnv::new();
    env.status();
    let mut c = env.client();
    assert_eq!(echo(&mut c, b""), b"");
    let mib: Vec<u8> =
        (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    assert_eq!(echo(&mut c, &mib), mib);
    let max: Vec<u8> = (0..MAX_PAYLOAD as u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    assert!(echo(&mut c, &max) == max, "16 MiB - header payload differs");
    // Over the maximum: refused with a clear error, nothing lost.
    let over = vec![0u8; MAX_PAYLOAD + 1];
    let e = c.call(compute_req("echo"), &over).unwrap_err();
    assert!(e.message.contains("limit"), "{}", e.message);
    assert_eq!(echo(&mut c, b"still here"), b"still here");
    // Through the command line, files in and out.
    let input = env.tmp.path().join("in.bin");
    let output = env.tmp.path().join("out.bin");
    std::fs::write(&input, &mib).unwrap();
    env.ok(&[
        "compute",
        "echo",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&output).unwrap() == mib);
    assert_eq!(env.ok(&["compute", "echo", "--data", "hi"]), "hi");
    env.ok(&["shutdown"]);
}

#[test]
fn render_through_weaver_matches_the_reference() {
    let env = TestEnv::new();
    let out = env.tmp.path().join("m.ppm");
    env.ok(&[
        "compute",
        "render",
        "--output",
        out.to_str().unwrap(),
        "width=96",
        "height=64",
        "iterations=200",
        "x_min=-2",
        "x_max=0.5",
        "y_min=-1",
        "y_max=1",
    ]);
    let got = std::fs::read(&out).unwrap();
    assert!(
        got == render_reference(96, 64, 200, [-2.0, 0.5, -1.0, 1.0]),
        "render differs from the reference"
    );
    // Bad parameters: a clear error naming the key, exit code 1.
    let bad = env.run(&["compute", "render", "width=abc"]);
    assert_eq!(bad.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains("width") && msg.contains("bad request"), "{msg}");
    let usage = env.run(&["compute", "render", "novalue"]);
    assert_eq!(usage.status.code(), Some(2));
    env.ok(&["shutdown"]);
}

#[test]
fn replies_come_back_out_of_order_and_many_clients_share_compute() {
    let env = TestEnv::new().env("WEAVER_COMPUTE_WORKERS", "4");
    env.status();
    let mut c = env.client();
    let slow = c.send(compute_req("sleep"), b"ms=400").unwrap();
    let fast = c.send(compute_req("echo"), b"fast").unwrap();
    let first = c.recv().unwrap().unwrap();
    assert_eq!(first.tag, fast, "echo should overtake the sleep");
    assert_eq!(first.payload, b"fast");
    assert_eq!(c.recv().unwrap().unwrap().tag, slow);

    let threads: Vec<_> = (0..8)
        .map(|t| {
            let mut c = env.client();
            std::thread::spawn(move || {
                let tags: Vec<(u64, Vec<u8>)> = (0..50)
                    .map(|i| {
                        let data = format!("client {t} request {i}").into_bytes();
                        (c.send(compute_req("echo"), &data).unwrap(), data)
                    })
                    .collect();
                for _ in 0..tags.len() {
                    let r = c.recv().unwrap().unwrap();
                    let (_, want) = tags.iter().find(|(tag, _)| *tag == r.tag).unwrap();
                    assert_eq!(&r.payload, want);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = env.status();
    assert_eq!(s["compute"]["served"], 402);
    env.ok(&["shutdown"]);
}

#[test]
fn a_client_that_leaves_gets_its_request_cancelled_at_compute() {
    let env = TestEnv::new().env("WEAVER_COMPUTE_WORKERS", "1");
    env.status();
    {
        let mut a = env.client();
        a.send(compute_req("sleep"), b"ms=30000").unwrap();
        assert!(wait_for(Duration::from_secs(10), || env.status()["compute"]["in_flight"] == 1));
    }
    // With one worker, this echo can only run once compute has cancelled
    // the 30 s sleep.
    let mut b = env.client();
    b.stream().set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    assert_eq!(echo(&mut b, b"after"), b"after");
    assert!(wait_for(Duration::from_secs(5), || env.status()["compute"]["dropped_late"] == 1));
    env.ok(&["shutdown"]);
}

#[test]
fn compute_killed_mid_request_fails_in_flight_and_restarts() {
    let env = TestEnv::new();
    env.status();
    let old = env.compute_pid();
    let mut c = env.client();
    let tags = [
        c.send(compute_req("sleep"), b"ms=20000").unwrap(),
        c.send(compute_req("sleep"), b"ms=20000").unwrap(),
    ];
    assert!(wait_for(Duration::from_secs(10), || env.status()["compute"]["in_flight"] == 2));
    signal(old, Signal::SIGKILL);
    for _ in tags {
        let r = c.recv().unwrap().unwrap();
        assert!(tags.contains(&r.tag));
        assert_eq!(error_kind(&r.resp), ErrorKind::ComputeDown);
    }
    assert_eq!(echo(&mut c, b"next"), b"next");
    let s = env.status();
    assert_eq!(s["compute"]["restarts"], 1);
    assert_eq!(s["compute"]["last_exit"], "killed by SIGKILL");
    assert_ne!(s["compute"]["pid"].as_u64().unwrap() as u32, old);
    assert!(gone(old, Duration::from_secs(2)));
    env.ok(&["shutdown"]);
}

#[test]
fn killing_weaver_takes_compute_down_and_the_next_command_recovers() {
    let env = TestEnv::new();
    env.status();
    let daemon = env.daemon_pid().unwrap();
    let compute = env.compute_pid();
    signal(daemon, Signal::SIGKILL);
    assert!(gone(compute, Duration::from_secs(2)), "compute outlived weaver by 2 s");
    assert!(gone(daemon, Duration::from_secs(2)));
    // Stale files stay behind ...
    assert!(exists(&env.path("control.sock")) && exists(&env.path("weaver.pid")));
    // ... and do not block the next start.
    let s = env.status();
    let new = s["daemon"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(new, daemon);
    assert_eq!(env.ok(&["compute", "echo", "--data", "back"]), "back");
    assert!(env.log().contains("removing stale socket"));
    env.ok(&["shutdown"]);
}

fn graceful_stop_on(sig: Signal) {
    let env = TestEnv::new();
    env.status();
    let daemon = env.daemon_pid().unwrap();
    let compute = env.compute_pid();
    let mut c = env.client();
    c.send(compute_req("sleep"), b"ms=20000").unwrap();
    assert!(wait_for(Duration::from_secs(10), || env.status()["compute"]["in_flight"] == 1));
    signal(daemon, sig);
    let r = c.recv().unwrap().expect("the in-flight request gets an answer");
    assert!(matches!(error_kind(&r.resp), ErrorKind::Cancelled | ErrorKind::ShuttingDown), "{r:?}");
    assert!(gone(daemon, Duration::from_secs(5)));
    assert!(gone(compute, Duration::from_secs(1)));
    for f in ["control.sock", "compute.sock", "weaver.pid"] {
        assert!(!exists(&env.path(f)), "{f} left behind");
    }
    let log = env.log();
    assert!(log.contains(&format!("stopping: {sig} received")), "{log}");
    assert!(
        log.contains(&format!("compute (pid {compute}) exited with code 0")),
        "compute did not stop gracefully:\n{log}"
    );
}

#[test]
fn sigterm_stops_gracefully() {
    graceful_stop_on(Signal::SIGTERM);
}

#[test]
fn sigint_stops_gracefully() {
    graceful_stop_on(Signal::SIGINT);
}

#[test]
fn shutdown_returns_once_everything_is_gone() {
    let env = TestEnv::new();
    env.status();
    let daemon = env.daemon_pid().unwrap();
    let compute = env.compute_pid();
    let out = env.ok(&["shutdown"]);
    assert!(out.contains("stopped"), "{out}");
    assert!(!pidfile::alive(compute), "compute still alive after shutdown returned");
    assert!(gone(daemon, Duration::from_millis(500)));
    for f in ["control.sock", "compute.sock", "weaver.pid"] {
        assert!(!exists(&env.path(f)), "{f} left behind");
    }
    // Nothing running: shutdown says so and succeeds.
    assert!(env.ok(&["shutdown"]).contains("no weaver daemon"));
    let out = env.run(&["--no-start", "status"]);
    assert_eq!(out.status.code(), Some(3));
}

fn handshake(s: &mut UnixStream, hs: &Handshake) -> Handshake {
    weaver::stream::write_control(s, &protocol::encode(hs), &[]).unwrap();
    let f = weaver::stream::read_frame(&mut frame::Decoder::new(), s).unwrap().unwrap();
    protocol::decode(&f.meta, "handshake").unwrap()
}

fn read_to_eof(s: &mut UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut v = Vec::new();
    match s.read_to_end(&mut v) {
        Ok(_) => {}
        // Closed with our bytes unread: the kernel resets the connection.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading to EOF: {e}"),
    }
    v
}

fn error_reply(bytes: &[u8]) -> protocol::ErrorReply {
    let f =
        weaver::stream::read_frame(&mut frame::Decoder::new(), &mut &bytes[..]).unwrap().unwrap();
    match protocol::decode::<ServerMsg>(&f.meta, "reply").unwrap().resp {
        Response::Error(e) => e,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn malformed_control_frames_close_only_that_client() {
    let env = TestEnv::new();
    env.status();
    let mut good = env.client();

    // Not a handshake at all: closed.
    let mut s = env.raw();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    read_to_eof(&mut s);

    // Oversized frame after the handshake: an error that says why, then EOF.
    let mut s = env.raw();
    handshake(&mut s, &Handshake::new(false));
    let mut p = [0u8; 8];
    p[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&p).unwrap();
    let e = error_reply(&read_to_eof(&mut s));
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("over the"), "{}", e.message);

    // Garbage message: an error reply, then EOF.
    let mut s = env.raw();
    handshake(&mut s, &Handshake::new(false));
    weaver::stream::write_control(&mut s, &[0xff, 0xff, 0xff], b"").unwrap();
    let e = error_reply(&read_to_eof(&mut s));
    assert!(e.message.contains("malformed request"), "{}", e.message);

    // Truncated frame, then the client vanishes.
    let mut s = env.raw();
    handshake(&mut s, &Handshake::new(false));
    let meta = protocol::encode(&ClientMsg { tag: 1, req: compute_req("echo") });
    let mut buf = Vec::new();
    frame::push(&mut buf, &meta, &[1u8; 1000]);
    s.write_all(&buf[..500]).unwrap();
    drop(s);

    // Everyone else is still served.
    assert_eq!(echo(&mut good, b"unharmed"), b"unharmed");
    assert_eq!(env.status()["compute"]["state"], "ready");
    env.ok(&["shutdown"]);
}

#[test]
fn a_protocol_mismatch_is_explained_and_shutdown_still_works() {
    let env = TestEnv::new();
    env.status();
    let daemon = env.daemon_pid().unwrap();
    let mut s = env.raw();
    let future = Handshake { protocol: 99, release: "9.9.9".into(), ..Handshake::new(false) };
    let reply = handshake(&mut s, &future);
    assert!(reply.refusal.contains("weaver shutdown"), "{}", reply.refusal);
    assert_eq!(reply.protocol, protocol::PROTOCOL_VERSION);
    read_to_eof(&mut s);
    // A request written right behind a refused handshake (as the command
    // line sends its first one) is never served: not even a shutdown.
    let mut s = env.raw();
    let mut bytes = Vec::new();
    frame::push(&mut bytes, &protocol::encode(&future), &[]);
    frame::push(&mut bytes, &protocol::encode(&ClientMsg { tag: 1, req: Request::Shutdown }), &[]);
    s.write_all(&bytes).unwrap();
    let rest = read_to_eof(&mut s);
    let f =
        weaver::stream::read_frame(&mut frame::Decoder::new(), &mut &rest[..]).unwrap().unwrap();
    let reply: Handshake = protocol::decode(&f.meta, "handshake").unwrap();
    assert!(!reply.refusal.is_empty());
    assert_eq!(f.meta.len() + 8, rest.len(), "nothing after the refusal");
    assert!(!gone(daemon, Duration::from_millis(300)), "the pipelined shutdown was served");
    // Behind an accepted one, it is served with the tag it was sent with.
    let mut s = env.raw();
    let mut bytes = Vec::new();
    frame::push(&mut bytes, &protocol::encode(&Handshake::new(false)), &[]);
    let status = Request::Status { wait_compute: false };
    frame::push(&mut bytes, &protocol::encode(&ClientMsg { tag: 1, req: status }), &[]);
    s.write_all(&bytes).unwrap();
    let mut dec = frame::Decoder::new();
    let f = weaver::stream::read_frame(&mut dec, &mut s).unwrap().unwrap();
    let hs: Handshake = protocol::decode(&f.meta, "handshake").unwrap();
    assert!(hs.refusal.is_empty(), "{}", hs.refusal);
    let f = weaver::stream::read_frame(&mut dec, &mut s).unwrap().unwrap();
    let msg: ServerMsg = protocol::decode(&f.meta, "reply").unwrap();
    assert_eq!(msg.tag, 1);
    assert!(matches!(msg.resp, Response::Status(_)), "{:?}", msg.resp);
    drop(s);
    let mut s = env.raw();
    let reply = handshake(&mut s, &Handshake { shutdown: true, ..future });
    assert!(reply.refusal.is_empty());
    read_to_eof(&mut s);
    assert!(gone(daemon, Duration::from_secs(5)));
}

#[test]
fn unsafe_runtime_dirs_are_refused() {
    let env = TestEnv::new();
    std::fs::create_dir(&env.rt).unwrap();
    std::fs::set_permissions(&env.rt, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = env.run(&["status"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 700"));
    assert!(!exists(&env.path("control.sock")), "nothing was started");

    let real = env.tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = env.tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = env.cmd().arg("--runtime-dir").arg(&link).arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));

    if nix::unistd::geteuid().is_root() {
        let theirs = env.tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let out = env.cmd().arg("--runtime-dir").arg(&theirs).arg("status").output().unwrap();
        assert_eq!(out.status.code(), Some(4));
        assert!(String::from_utf8_lossy(&out.stderr).contains("not to you"));
    }
}

#[test]
fn a_stranger_on_the_compute_socket_is_refused() {
    let env = TestEnv::new();
    env.status();
    let mut s = UnixStream::connect(env.path("compute.sock")).unwrap();
    let hello = weaver::wire::Hello {
        version: weaver::wire::VERSION,
        pid: std::process::id(),
        max_frame: weaver::wire::MAX_FRAME as u32,
        workers: 1,
        ops: vec![(1, "echo".into())],
    };
    let _ =
        s.write_all(&weaver::wire::encode_frame(weaver::wire::kind::HELLO, 0, 0, &hello.encode()));
    assert!(read_to_eof(&mut s).is_empty(), "the daemon must close a stranger's connection");
    assert!(wait_for(Duration::from_secs(2), || env
        .log()
        .contains("refused a connection on the compute socket")));
    assert_eq!(env.ok(&["compute", "echo", "--data", "ok"]), "ok");
    env.ok(&["shutdown"]);
}

#[test]
fn timeouts_busy_and_a_missing_compute_binary_are_clear_errors() {
    let env = TestEnv::new().env("WEAVER_COMPUTE_WORKERS", "1");
    let out = env.run(&["compute", "sleep", "ms=5000", "--timeout", "100"]);
    assert_eq!(out.status.code(), Some(124));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reply within 100 ms"));
    assert_eq!(env.status()["compute"]["timed_out"], 1);

    // Fill the window to compute and weaver's queue: the next request is busy.
    let mut c = env.client();
    let n = 256 + 4096;
    for _ in 0..n {
        c.send(compute_req("sleep"), b"ms=60000").unwrap();
    }
    let extra = c.send(compute_req("echo"), b"x").unwrap();
    let r = c.recv().unwrap().unwrap();
    assert_eq!(r.tag, extra);
    assert_eq!(error_kind(&r.resp), ErrorKind::Busy);
    drop(c);
    // All of it is cancelled and compute serves again.
    let mut c = env.client();
    c.stream().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(echo(&mut c, b"free"), b"free");
    env.ok(&["shutdown"]);

    let env = TestEnv::new().env("WEAVER_COMPUTE_BIN", "/nonexistent/compute-daemon");
    let s = env.status();
    assert_eq!(s["compute"]["state"], "backoff");
    assert!(s["compute"]["last_error"].as_str().unwrap().contains("/nonexistent/compute-daemon"));
    let out = env.run(&["compute", "echo", "--data", "x"]);
    assert_eq!(out.status.code(), Some(69));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("compute is down") && msg.contains("WEAVER_COMPUTE_BIN"), "{msg}");
    env.ok(&["shutdown"]);
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let env = TestEnv::new();
    env.status();
    let mut slow = env.client();
    let big = vec![7u8; MAX_PAYLOAD];
    for _ in 0..6 {
        // Once cut off, our sends fail: that is the point.
        if slow.send(compute_req("echo"), &big).is_err() {
            break;
        }
    }
    assert!(wait_for(Duration::from_secs(30), || env.log().contains("is not reading its replies")));
    let mut other = env.client();
    assert_eq!(echo(&mut other, b"fine"), b"fine");
    env.ok(&["shutdown"]);
}
