//! Weavelets end to end: a real daemon, real `weaver config` commands and
//! test weavelets speaking the protocol (docs/weavelet-protocol.md) over
//! the real weavelet.sock. Each test has its own runtime dir and state dir.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::{wait_for, wait_output, TestEnv};

/// A test daemon with a weaver.toml.
fn env_with(toml: &str) -> TestEnv {
    let env = TestEnv::new();
    let cfg = env.tmp.path().join("weaver.toml");
    std::fs::write(&cfg, toml).unwrap();
    env.env("WEAVER_CONFIG", cfg.to_str().unwrap())
}

const TRAINER: &str = r#"
[[process]]
name = "trainer"
command = ["sleep", "3600"]
[process.params]
lr = 0.1
optimizer = "sgd"
"#;

/// One weavelet speaking the protocol over a blocking socket.
struct Weavelet {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Weavelet {
    fn connect(sock: &Path) -> Weavelet {
        let s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Weavelet { r: BufReader::new(s.try_clone().unwrap()), w: s }
    }

    /// Connect and say hello for `target`; returns it after `welcome` and
    /// the first `config`.
    fn hello(sock: &Path, target: &str, name: &str) -> (Weavelet, Value) {
        let mut w = Weavelet::connect(sock);
        w.send(&json!({"type": "hello", "protocol": 1, "target": target, "name": name}));
        let welcome = w.recv();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let config = w.recv();
        assert_eq!(config["type"], "config", "{config}");
        (w, config)
    }

    fn send(&mut self, v: &Value) {
        self.raw(format!("{v}\n").as_bytes());
    }

    fn raw(&mut self, b: &[u8]) {
        let _ = self.w.write_all(b);
    }

    fn recv(&mut self) -> Value {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) => Value::Null,
            Ok(_) => serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}")),
            Err(e) => panic!("no line from weaver: {e}"),
        }
    }

    /// Read configs until revision `rev`; answer it with `applied`.
    fn apply(&mut self, rev: u64, step: u64) -> Value {
        loop {
            let c = self.recv();
            assert_eq!(c["type"], "config", "{c}");
            if c["revision"].as_u64() == Some(rev) {
                self.send(&json!({"type": "applied", "revision": rev, "step": step}));
                return c;
            }
        }
    }

    /// After an error: the error line, then EOF.
    fn error_then_eof(&mut self) -> String {
        let e = self.recv();
        assert_eq!(e["type"], "error", "{e}");
        let mut rest = Vec::new();
        let _ = self.r.read_to_end(&mut rest);
        assert!(rest.is_empty(), "nothing after the error: {:?}", String::from_utf8_lossy(&rest));
        e["message"].as_str().unwrap().to_string()
    }
}

fn sock(env: &TestEnv) -> PathBuf {
    env.path("weavelet.sock")
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Run `weaver config ...` in the background.
fn spawn(env: &TestEnv, args: &[&str]) -> std::process::Child {
    env.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn set_wait_get_history_and_rollback() {
    let env = env_with(TRAINER);
    let g = json_of(&env.ok(&["config", "get", "trainer", "--json"]));
    assert_eq!((g["target"].as_str(), g["revision"].as_u64()), (Some("trainer"), Some(0)));
    assert_eq!(g["values"], json!({"lr": 0.1, "optimizer": "sgd"}));
    let md = std::fs::metadata(sock(&env)).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777, 0o600);

    let (mut a, first) = Weavelet::hello(&sock(&env), "trainer", "rank0");
    assert_eq!(
        (first["revision"].as_u64(), &first["changed"]),
        (Some(0), &json!(["lr", "optimizer"]))
    );
    let (mut b, _) = Weavelet::hello(&sock(&env), "trainer", "rank1");

    // --wait returns once both applied.
    let child = spawn(
        &env,
        &[
            "config",
            "set",
            "trainer",
            "lr=0.01",
            "optimizer=adam",
            "fused=true",
            "--wait",
            "--timeout",
            "10000",
        ],
    );
    let c = a.apply(1, 100);
    assert_eq!(c["values"], json!({"lr": 0.01, "optimizer": "adam", "fused": true}));
    assert_eq!(c["changed"], json!(["fused", "lr", "optimizer"]));
    b.apply(1, 101);
    let out = wait_output(child, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("applied by 2 weavelet(s)"), "{text}");

    // A rejection: exit 1, naming who and why.
    let child = spawn(&env, &["config", "set", "trainer", "lr=-1", "--wait", "--timeout", "10000"]);
    a.recv();
    a.send(&json!({"type": "rejected", "revision": 2, "step": 102, "reason": "lr must be > 0"}));
    let out = wait_output(child, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rank0") && err.contains("lr must be > 0"), "{err}");

    // A timeout: exit 124, naming who lags (b never answered revision 2
    // or 3).
    let out = env.run(&["config", "unset", "trainer", "fused", "--wait", "--timeout", "300"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("rank1") && err.contains("rank0"), "{err}");

    // Status lists both with their revisions, steps and rejections.
    let st = json_of(&env.ok(&["config", "status", "trainer", "--json"]));
    let rows = st.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{st}");
    assert_eq!((rows[0]["name"].as_str(), rows[0]["applied"].as_u64()), (Some("rank0"), Some(1)));
    assert_eq!(rows[0]["rejected"]["reason"], "lr must be > 0");
    assert_eq!((rows[0]["lag"].as_u64(), rows[0]["step"].as_u64()), (Some(2), Some(102)));
    assert_eq!(rows[0]["pid"].as_u64(), Some(std::process::id() as u64));
    assert_eq!(rows[1]["connected"], true);

    // History, then a rollback to revision 1 is revision 4 with its values.
    let h = json_of(&env.ok(&["config", "history", "trainer", "--json"]));
    let revs: Vec<u64> =
        h.as_array().unwrap().iter().map(|r| r["revision"].as_u64().unwrap()).collect();
    assert_eq!(revs, [1, 2, 3]);
    let r = json_of(&env.ok(&["config", "rollback", "trainer", "--to", "1", "--json"]));
    assert_eq!((r["revision"].as_u64(), &r["values"]["lr"]), (Some(4), &json!(0.01)));
    assert_eq!(r["note"], "rollback to 1");
    let out = env.run(&["config", "rollback", "trainer", "--to", "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no revision 99"));
    let r = json_of(&env.ok(&["config", "rollback", "trainer", "--to", "0", "--json"]));
    assert_eq!(r["values"], json!({"lr": 0.1, "optimizer": "sgd"}));
    // b gets the newest document: state, not deltas.
    let c = b.apply(5, 200);
    assert_eq!(c["values"], json!({"lr": 0.1, "optimizer": "sgd"}));

    // Unknown targets and bad arguments are clear errors.
    let out = env.run(&["config", "get", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target \"nope\""));
    let out = env.run(&["config", "set", "trainer", "bad key=1"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env.run(&["config", "unset", "trainer", "missing"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no parameter \"missing\""));
    env.ok(&["shutdown"]);
}

#[test]
fn revisions_survive_a_sigkill_of_weaver() {
    let env = env_with(TRAINER);
    for i in 1..=70 {
        env.ok(&["config", "set", "trainer", &format!("step={i}")]);
    }
    let pid = env.daemon_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_for(Duration::from_secs(10), || !weaver::pidfile::alive(pid)));
    let g = json_of(&env.ok(&["config", "get", "trainer", "--json"]));
    assert_ne!(env.daemon_pid(), Some(pid), "a new daemon");
    assert_eq!((g["revision"].as_u64(), &g["values"]["step"]), (Some(70), &json!(70)));
    let h = json_of(&env.ok(&["config", "history", "trainer", "--json"]));
    assert_eq!(h.as_array().unwrap().len(), 64, "the last 64 are kept");
    assert_eq!(h[0]["revision"], 7);
    // A weavelet that reconnects gets the current document; numbers go on.
    let (_w, c) = Weavelet::hello(&sock(&env), "trainer", "again");
    assert_eq!(c["revision"], 70);
    let r = json_of(&env.ok(&["config", "set", "trainer", "x=1", "--json"]));
    assert_eq!(r["revision"], 71);
    let state = env.tmp.path().join("state/weaver");
    let mode = std::fs::metadata(&state).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o700);
    // --state-dir chooses another place.
    env.ok(&["shutdown"]);
    let other = env.tmp.path().join("other-state");
    let out =
        env.run(&["--state-dir", other.to_str().unwrap(), "config", "get", "trainer", "--json"]);
    assert_eq!(json_of(&String::from_utf8_lossy(&out.stdout))["revision"], 0);
    assert!(other.join("targets").is_dir());
    env.ok(&["shutdown"]);
}

#[test]
fn broken_rules_are_clear_errors_and_everyone_else_is_served() {
    let env = env_with(TRAINER);
    env.status();
    let (mut good, _) = Weavelet::hello(&sock(&env), "trainer", "good");
    let s = sock(&env);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json\n".to_vec(), "line 1: not JSON"),
        (b"[1,2]\n".to_vec(), "not a JSON object"),
        (
            br#"{"type":"hello","protocol":"one","target":"trainer"}"#.to_vec(),
            "non-negative integer",
        ),
        (br#"{"type":"hello","protocol":1,"target":"ghost"}"#.to_vec(), "unknown target \"ghost\""),
        (br#"{"type":"hello","protocol":1}"#.to_vec(), "\"target\" is required"),
        (br#"{"type":"hello","protocol":9,"target":"trainer"}"#.to_vec(), "protocol 1"),
        (br#"{"type":"applied","revision":1}"#.to_vec(), "first line must be a hello"),
        (br#"{"type":"dance"}"#.to_vec(), "unknown type"),
    ];
    for (line, want) in cases {
        let mut w = Weavelet::connect(&s);
        let mut l = line;
        if l.last() != Some(&b'\n') {
            l.push(b'\n');
        }
        w.raw(&l);
        let msg = w.error_then_eof();
        assert!(msg.contains(want), "{want}: {msg}");
    }
    // Wrong types and unsent revisions after a good hello.
    for (line, want) in [
        (json!({"type": "applied", "revision": "1"}), "non-negative integer"),
        (json!({"type": "applied", "revision": 42}), "never sent"),
        (json!({"type": "rejected", "revision": 0}), "reason"),
        (json!({"type": "status", "metrics": {"loss": "low"}}), "must be a number"),
        (json!({"type": "hello", "protocol": 1, "target": "trainer"}), "second hello"),
    ] {
        let (mut w, _) = Weavelet::hello(&s, "trainer", "bad");
        w.send(&line);
        let msg = w.error_then_eof();
        assert!(msg.contains(want) && msg.starts_with("line 2:"), "{want}: {msg}");
    }
    // Lines that arrive together are still numbered one by one.
    let mut w = Weavelet::connect(&s);
    w.raw(b"{\"type\":\"hello\",\"protocol\":1,\"target\":\"trainer\"}\n{\"type\":\"status\"}\n[]\n{}\n");
    assert_eq!(w.recv()["type"], "welcome");
    assert_eq!(w.recv()["type"], "config");
    let msg = w.error_then_eof();
    assert!(msg.starts_with("line 3: not a JSON object"), "{msg}");
    // A line over 65536 bytes.
    let mut w = Weavelet::connect(&s);
    let big = vec![b'x'; 65537];
    let writer = {
        let mut ws = w.w.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = ws.write_all(&big);
        })
    };
    let msg = w.error_then_eof();
    assert!(msg.contains("over 65536 bytes"), "{msg}");
    writer.join().unwrap();
    // A document over the limit is refused by `config set`.
    let huge = format!("blob={}", "y".repeat(70_000));
    let out = env.run(&["config", "set", "trainer", &huge]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit"));
    // No hello in time.
    let mut w = Weavelet::connect(&s);
    let t = Instant::now();
    let msg = w.error_then_eof();
    assert!(msg.contains("no hello within 5 seconds"), "{msg}");
    assert!(t.elapsed() >= Duration::from_secs(4));
    // The good one was served all along.
    let child =
        spawn(&env, &["config", "set", "trainer", "lr=0.5", "--wait", "--timeout", "10000"]);
    good.apply(1, 1);
    assert_eq!(wait_output(child, Duration::from_secs(20)).status.code(), Some(0));
    env.status();
    env.ok(&["shutdown"]);
}

#[test]
fn a_weavelet_that_never_reads_costs_one_document() {
    let env = env_with(TRAINER);
    env.status();
    let (mut slow, _) = Weavelet::hello(&sock(&env), "trainer", "slow");
    let (mut fast, _) = Weavelet::hello(&sock(&env), "trainer", "fast");
    // Big documents, many revisions; `slow` never reads meanwhile.
    let pad = "z".repeat(30_000);
    for i in 1..=100u64 {
        env.ok(&["config", "set", "trainer", &format!("i={i}"), &format!("pad={pad}")]);
        fast.apply(i, i);
    }
    // The daemon keeps answering, and its memory stays small.
    env.status();
    let pid = env.daemon_pid().unwrap();
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap())
        })
        .unwrap();
    assert!(rss_kb < 64 * 1024, "RSS {rss_kb} kB");
    // Reading now, it gets some old documents still in the socket, then
    // the newest: never all 100.
    let mut seen = 0;
    loop {
        let c = slow.recv();
        seen += 1;
        if c["revision"] == 100 {
            break;
        }
    }
    assert!(seen < 100, "{seen} documents: the unsent ones were coalesced");
    let st = json_of(&env.ok(&["config", "status", "--json"]));
    assert_eq!(st.as_array().unwrap().len(), 2);
    env.ok(&["shutdown"]);
}

#[test]
fn a_thousand_weavelets_and_a_wait_for_all() {
    // SAFETY: plain getrlimit/setrlimit on this test process.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let env = env_with(TRAINER);
    env.status();
    let mut all: Vec<Weavelet> =
        (0..1000).map(|i| Weavelet::hello(&sock(&env), "trainer", &format!("w{i}")).0).collect();
    let st = json_of(&env.ok(&["config", "status", "--json"]));
    assert_eq!(st.as_array().unwrap().len(), 1000);
    let child =
        spawn(&env, &["config", "set", "trainer", "lr=0.2", "--wait", "--timeout", "60000"]);
    for w in &mut all {
        w.apply(1, 1);
    }
    let out = wait_output(child, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("applied by 1000 weavelet(s)"), "{text}");
    drop(all);
    let st = json_of(&env.ok(&["config", "status", "--json"]));
    assert!(
        wait_for(Duration::from_secs(10), || {
            let st = json_of(&env.ok(&["config", "status", "--json"]));
            st.as_array().unwrap().iter().all(|r| r["connected"] == false)
        }),
        "{st}"
    );
    env.ok(&["shutdown"]);
}

/// A process weaver supervises finds the socket in its environment and is
/// bound to its instance without naming a target.
#[test]
fn supervised_instances_are_bound_by_pid() {
    let env = TestEnv::new();
    let script = env.tmp.path().join("wl.sh");
    // The instance records the socket path it was given.
    let out = env.tmp.path().join("env.txt");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$WEAVER_WEAVELET_SOCKET\" > {}\nexec sleep 3600\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = env.tmp.path().join("weaver.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[process]]\nname = \"trainer\"\ncommand = [\"{}\"]\ninstances = 2\n[process.params]\nlr = 1\n",
            script.display()
        ),
    )
    .unwrap();
    let env = env.env("WEAVER_CONFIG", cfg.to_str().unwrap());
    env.status();
    assert!(wait_for(Duration::from_secs(10), || std::fs::read_to_string(&out)
        .is_ok_and(|s| !s.is_empty())));
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), sock(&env).display().to_string());
    // A process carrying an instance's identity in its environment is
    // bound to it, target from the instance; a disagreeing target is an
    // error.
    let helper = |target: Option<&str>| {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["--exact", "weavelet_helper", "--nocapture", "--test-threads=1"])
            .env("WEAVELET_HELPER_SOCKET", sock(&env))
            .env("WEAVER_PROCESS", "trainer")
            .env("WEAVER_INSTANCE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(t) = target {
            c.env("WEAVELET_HELPER_TARGET", t);
        }
        let out = wait_output(c.spawn().unwrap(), Duration::from_secs(30));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = helper(None);
    let line = text.lines().find(|l| l.contains("\"welcome\"")).unwrap_or_else(|| panic!("{text}"));
    let welcome = json_of(&line[line.find('{').unwrap()..]);
    assert_eq!(
        (welcome["instance"].as_str(), welcome["target"].as_str()),
        (Some("trainer.1"), Some("trainer"))
    );
    let text = helper(Some("other"));
    assert!(text.contains("disagrees"), "{text}");
    env.ok(&["shutdown"]);
}

/// The instance's main process, and a child of it that carries none of
/// weaver's variables, are bound to the instance by pid (the ppid chain for
/// the child).
#[test]
fn an_instance_and_its_descendant_are_bound_by_pid() {
    let env = TestEnv::new();
    let exe = std::env::current_exe().unwrap();
    let args = "--exact weavelet_helper --nocapture --test-threads=1";
    let sock = env.rt.join("weavelet.sock");
    let cfg = env.tmp.path().join("weaver.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[process]]
name = "direct"
command = ["{exe}", "--exact", "weavelet_helper", "--nocapture", "--test-threads=1"]
env = {{ WEAVELET_HELPER_SOCKET = "{sock}" }}
auto_restart = false

[[process]]
name = "child"
shell = true
command = "env -u WEAVER_PROCESS -u WEAVER_INSTANCE WEAVELET_HELPER_SOCKET={sock} {exe} {args}; sleep 3600"
"#,
            exe = exe.display(),
            sock = sock.display(),
        ),
    )
    .unwrap();
    let env = env.env("WEAVER_CONFIG", cfg.to_str().unwrap());
    env.status();
    for (name, instance) in [("direct", "direct"), ("child", "child")] {
        let mut text = String::new();
        let ok = wait_for(Duration::from_secs(20), || {
            text = env.ok(&["logs", name]);
            text.contains("\"welcome\"")
        });
        assert!(ok, "{name}: {text}");
        let line = text.lines().find(|l| l.contains("\"welcome\"")).unwrap();
        let welcome = json_of(&line[line.find('{').unwrap()..]);
        assert_eq!(welcome["instance"], instance, "{welcome}");
        assert_eq!(welcome["target"], name, "{welcome}");
    }
    env.ok(&["shutdown"]);
}

/// Run by `supervised_instances_are_bound_by_pid` as a separate process:
/// says hello without a target and prints what weaver answers.
#[test]
fn weavelet_helper() {
    let Ok(s) = std::env::var("WEAVELET_HELPER_SOCKET") else { return };
    let mut w = Weavelet::connect(Path::new(&s));
    let mut hello = json!({"type": "hello", "protocol": 1});
    if let Ok(t) = std::env::var("WEAVELET_HELPER_TARGET") {
        hello["target"] = json!(t);
    }
    w.send(&hello);
    println!("{}", w.recv());
}

/// Another uid on weavelet.sock is refused. As root, one thread takes
/// another effective uid (raw syscalls change one thread's credentials
/// only) while keeping root's file-system uid to reach the socket, so the
/// peer credentials weaver reads name the other uid. Not as root, the
/// runtime dir's 0700 already keeps other users out; the check is the one
/// the control socket uses (`conn::peer`).
#[test]
fn a_stranger_uid_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the stranger cannot be made; skipped");
        return;
    }
    let env = env_with(TRAINER);
    env.status();
    let path = sock(&env);
    let s = std::thread::spawn(move || {
        // SAFETY: raw set*id syscalls affect this thread only; it ends
        // right after.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresuid, -1i64, 65534i64, -1i64), 0);
            libc::syscall(libc::SYS_setfsuid, 0i64);
        }
        UnixStream::connect(&path).unwrap()
    })
    .join()
    .unwrap();
    let mut w = Weavelet { r: BufReader::new(s.try_clone().unwrap()), w: s };
    w.w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    w.send(&json!({"type": "hello", "protocol": 1, "target": "trainer"}));
    // Closed without a word (a reset, if our hello was still unread).
    let mut rest = Vec::new();
    let _ = w.r.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(wait_for(Duration::from_secs(5), || env
        .log()
        .contains("refused a weavelet connection")));
    let (_ok, c) = Weavelet::hello(&sock(&env), "trainer", "me");
    assert_eq!(c["revision"], 0);
    env.ok(&["shutdown"]);
}

#[test]
fn a_removed_weavelet_socket_is_bound_again_and_watch_shows_changes() {
    let env = env_with(TRAINER);
    env.status();
    std::fs::remove_file(sock(&env)).unwrap();
    assert!(wait_for(Duration::from_secs(5), || sock(&env).exists()));
    let mut watch = spawn(&env, &["config", "watch", "trainer", "--json"]);
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    std::thread::sleep(Duration::from_millis(300));
    let (mut w, _) = Weavelet::hello(&sock(&env), "trainer", "rank0");
    env.ok(&["config", "set", "trainer", "lr=3"]);
    w.apply(1, 9);
    let mut events = Vec::new();
    while events.len() < 3 {
        let l = lines.next().unwrap().unwrap();
        events.push(json_of(&l));
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["connected", "revision", "applied"], "{events:?}");
    assert_eq!((events[2]["revision"].as_u64(), events[2]["step"].as_u64()), (Some(1), Some(9)));
    let _ = watch.kill();
    let _ = watch.wait();
    env.ok(&["shutdown"]);
}

#[test]
fn a_reload_changes_the_defaults_of_revision_0() {
    let env = TestEnv::new();
    let cfg = env.tmp.path().join("weaver.toml");
    std::fs::write(&cfg, TRAINER).unwrap();
    let env = env.env("WEAVER_CONFIG", cfg.to_str().unwrap());
    env.status();
    let (mut w, c) = Weavelet::hello(&sock(&env), "trainer", "rank0");
    assert_eq!(c["values"]["lr"], 0.1);
    std::fs::write(&cfg, TRAINER.replace("lr = 0.1", "lr = 0.5")).unwrap();
    env.ok(&["reload"]);
    let c = w.recv();
    assert_eq!((c["revision"].as_u64(), &c["values"]["lr"]), (Some(0), &json!(0.5)));
    assert_eq!(c["changed"], json!(["lr"]));
    env.ok(&["shutdown"]);
}
