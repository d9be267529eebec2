//! The NATS client and JetStream key-value against a real `nats-server`
//! (one per test, random loopback port, killed by pid): handshake, auth
//! errors, a wrong URL, compare-and-set puts and duplicates, the ordered
//! watcher's snapshot and live changes, reconnects after a restart and a
//! silent partition (SIGSTOP), one consumer per node after many restarts.

#[path = "util/nats.rs"]
mod nats;

use std::time::{Duration, Instant};

use weaver::fleet::blocking::Session;
use weaver::fleet::client::{Auth, Event, Options, SendError, Url};
use weaver::fleet::kv::{self, Bucket, Entry, Watch, Watcher};

use nats::NatsServer;

fn opts(url: &str) -> Options {
    let mut o = Options::new(vec![Url::parse(url).unwrap()]);
    o.connect_timeout = Duration::from_secs(5);
    o
}

fn connect(url: &str) -> Session {
    Session::connect(opts(url), Instant::now() + Duration::from_secs(10)).expect("connect")
}

const T: Duration = Duration::from_secs(5);

fn init_bucket(s: &mut Session, b: &Bucket, history: u32) {
    let (subj, body) = b.create(history);
    let reply = s.request(&subj, None, &body, T).unwrap();
    kv::api_response(&reply.payload).unwrap_or_else(|e| panic!("create {}: {e}", b.name));
}

/// Put with compare-and-set; the ack or the API error.
fn put(
    s: &mut Session,
    b: &Bucket,
    key: &str,
    expected: Option<u64>,
    id: &str,
    value: &[u8],
) -> Result<kv::PubAck, kv::ApiError> {
    let (subj, h) = b.put(key, expected, id).unwrap();
    let reply = s.request(&subj, Some(&h), value, T).unwrap();
    kv::pub_ack(&reply.payload)
}

/// Drive a watcher over a session until `done` holds (or the deadline):
/// the entries seen, and the troubles reported.
struct Driven {
    entries: Vec<Entry>,
    troubles: Vec<String>,
    resets: usize,
    sid: Option<u64>,
}

fn run(w: &mut Watcher, s: &mut Session, first: Vec<Watch>, d: &mut Driven) {
    let mut todo = first;
    while !todo.is_empty() {
        let mut next = Vec::new();
        for a in todo {
            match a {
                Watch::Request { step, subject, body } => {
                    let r = s.request(&subject, None, &body, T);
                    let r = r.as_ref().map(|m| &m.payload[..]).map_err(|e| e.clone());
                    next.extend(w.replied(step, r, Instant::now()));
                }
                Watch::Subscribe { subject } => {
                    if let Some(old) = d.sid.take() {
                        s.client.unsubscribe(old);
                    }
                    d.sid = Some(s.client.subscribe(&subject));
                }
                Watch::Reply { subject } => s.publish(&subject, None, b"").unwrap(),
                Watch::Entry(e) => d.entries.push(e),
                Watch::Synced { .. } => {}
                Watch::Reset { .. } => d.resets += 1,
                Watch::Trouble(t) => d.troubles.push(t),
            }
        }
        todo = next;
    }
}

fn pump(
    w: &mut Watcher,
    s: &mut Session,
    d: &mut Driven,
    mut done: impl FnMut(&Watcher, &Driven, bool) -> bool,
) {
    let end = Instant::now() + Duration::from_secs(20);
    while !done(w, d, s.client.is_ready()) {
        assert!(Instant::now() < end, "watcher did not get there: {:?}", d.troubles);
        let step = (Instant::now() + Duration::from_millis(50)).min(end);
        let mut acts = Vec::new();
        if let Some(e) = s.next_event(step) {
            match e {
                Event::Msg(m) if Some(m.sid) == d.sid => acts.extend(w.message(&m, Instant::now())),
                Event::Connected { .. } => acts.extend(w.start(Instant::now())),
                Event::Disconnected { .. } => w.stopped(),
                _ => {}
            }
        }
        acts.extend(w.tick(s.client.is_ready(), Instant::now()));
        run(w, s, acts, d);
    }
}

fn driven() -> Driven {
    Driven { entries: Vec::new(), troubles: Vec::new(), resets: 0, sid: None }
}

fn latest(d: &Driven, key: &str) -> Option<Entry> {
    d.entries.iter().rev().find(|e| e.key == key).cloned()
}

#[test]
fn compare_and_set_puts_and_duplicates() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let mut s = connect(&srv.url());
    let info = s.client.info().unwrap().clone();
    assert!(info.jetstream && info.headers, "{info:?}");
    let b = Bucket::new("weaver_config", None).unwrap();
    init_bucket(&mut s, &b, 5);

    let a = put(&mut s, &b, "trainer", Some(0), "w1", br#"{"lr":0.1}"#).unwrap();
    assert_eq!((a.stream.as_str(), a.seq, a.duplicate), ("KV_weaver_config", 1, false));
    // A second writer who believed the key new loses, nothing overwritten.
    let e = put(&mut s, &b, "trainer", Some(0), "w2", br#"{"lr":9}"#).unwrap_err();
    assert_eq!(e.err_code, kv::err::WRONG_LAST_SEQUENCE, "{e}");
    // A retried write (same message id) is stored once.
    let a = put(&mut s, &b, "trainer", Some(1), "w3", br#"{"lr":0.01}"#).unwrap();
    assert_eq!(a.seq, 2);
    let again = put(&mut s, &b, "trainer", Some(1), "w3", br#"{"lr":0.01}"#).unwrap();
    assert_eq!((again.seq, again.duplicate), (2, true));
    let info = kv::stream_info(&s.request(&b.info(), None, b"", T).unwrap().payload).unwrap();
    assert_eq!((info.last_seq, info.messages, info.history), (2, 2, 5));

    let (subj, body) = b.get_last("trainer").unwrap();
    let (seq, data, op) =
        kv::stored_msg(&s.request(&subj, None, &body, T).unwrap().payload).unwrap();
    assert_eq!((seq, data.as_slice(), op), (2, &br#"{"lr":0.01}"#[..], None));

    // max_payload is checked before anything is sent.
    let big = vec![b'x'; info_max(&s) + 1];
    let e = s.client.publish("$KV.weaver_config.big", None, None, &big).unwrap_err();
    assert!(matches!(e, SendError::Invalid(ref m) if m.contains("max_payload")), "{e:?}");
    assert!(s.client.is_ready());
}

fn info_max(s: &Session) -> usize {
    s.client.info().unwrap().max_payload
}

#[test]
fn watcher_snapshot_then_live_changes() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let mut writer = connect(&srv.url());
    let b = Bucket::new("cfg", None).unwrap();
    init_bucket(&mut writer, &b, 5);
    put(&mut writer, &b, "trainer", None, "1", b"{\"lr\":1}").unwrap();
    put(&mut writer, &b, "trainer", None, "2", b"{\"lr\":2}").unwrap();
    put(&mut writer, &b, "eval", None, "3", b"{}").unwrap();

    let mut s = connect(&srv.url());
    let deliver = s.client.new_inbox();
    let mut w =
        Watcher::new(b.clone(), "host-a", deliver, Duration::from_millis(500), Instant::now());
    let mut d = driven();
    let first = w.start(Instant::now());
    run(&mut w, &mut s, first, &mut d);
    pump(&mut w, &mut s, &mut d, |w, _, _| w.synced);
    // The snapshot: the latest value per key, not the history.
    assert_eq!(d.entries.len(), 2, "{:?}", d.entries);
    assert_eq!(latest(&d, "trainer").unwrap().value.unwrap(), b"{\"lr\":2}");
    assert_eq!(w.revision, 3);

    let a = put(&mut writer, &b, "trainer", Some(2), "4", b"{\"lr\":3}").unwrap();
    pump(&mut w, &mut s, &mut d, |_, d, _| d.entries.len() == 3);
    assert_eq!(
        latest(&d, "trainer").unwrap(),
        Entry { key: "trainer".into(), revision: a.seq, value: Some(b"{\"lr\":3}".to_vec()) }
    );
    assert!(d.troubles.iter().all(|t| !t.contains("gap")), "{:?}", d.troubles);
}

#[test]
fn restart_and_silent_partition_reconnect_and_resume_after_the_revision() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut srv = NatsServer::start(tmp.path());
    let b = Bucket::new("cfg", None).unwrap();
    {
        let mut w = connect(&srv.url());
        init_bucket(&mut w, &b, 5);
        put(&mut w, &b, "trainer", None, "1", b"1").unwrap();
    }
    let mut o = opts(&srv.url());
    o.ping_interval = Duration::from_millis(200);
    o.backoff_max = Duration::from_millis(300);
    let mut s = Session::connect(o, Instant::now() + T).unwrap();
    let deliver = s.client.new_inbox();
    let mut w =
        Watcher::new(b.clone(), "host-a", deliver, Duration::from_millis(300), Instant::now());
    let mut d = driven();
    let first = w.start(Instant::now());
    run(&mut w, &mut s, first, &mut d);
    pump(&mut w, &mut s, &mut d, |w, _, _| w.synced);
    assert_eq!(d.entries.len(), 1);

    // SIGKILL and restart on the same store: the watcher resumes after
    // its revision and sees the next write once.
    srv.kill();
    pump(&mut w, &mut s, &mut d, |_, _, ready| !ready);
    srv.restart();
    pump(&mut w, &mut s, &mut d, |w, _, _| w.is_live());
    {
        let mut wr = connect(&srv.url());
        put(&mut wr, &b, "trainer", Some(1), "2", b"2").unwrap();
    }
    pump(&mut w, &mut s, &mut d, |_, d, _| d.entries.len() == 2);
    assert_eq!(d.entries[1].revision, 2, "nothing applied twice: {:?}", d.entries);

    // SIGSTOP: a silent partition, found by unanswered PINGs.
    srv.stop();
    let stopped = Instant::now();
    let mut saw_stale = false;
    let end = stopped + Duration::from_secs(15);
    while Instant::now() < end && !saw_stale {
        if let Some(Event::Disconnected { why }) =
            s.next_event(Instant::now() + Duration::from_millis(100))
        {
            saw_stale = why.contains("stale") || why.contains("did not answer");
            w.stopped();
        }
    }
    assert!(saw_stale, "a stopped server is noticed as stale");
    srv.cont();
    pump(&mut w, &mut s, &mut d, |w, _, _| w.is_live());
    {
        let mut wr = connect(&srv.url());
        put(&mut wr, &b, "trainer", Some(2), "3", b"3").unwrap();
    }
    pump(&mut w, &mut s, &mut d, |_, d, _| d.entries.len() == 3);
    let revs: Vec<u64> = d.entries.iter().map(|e| e.revision).collect();
    assert_eq!(revs, [1, 2, 3], "each revision once, in order");

    // However many times the watcher restarted, the server holds one
    // consumer for this node.
    assert!(w.restarts >= 3, "{}", w.restarts);
    let names = s.request(&b.api("CONSUMER.NAMES.KV_cfg"), None, b"", T).unwrap();
    let v = kv::api_response(&names.payload).unwrap();
    assert_eq!(v["consumers"], serde_json::json!(["weaver_host-a"]), "{v}");
}

#[test]
fn bucket_deleted_and_created_again_is_resynced() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start(tmp.path());
    let b = Bucket::new("cfg", None).unwrap();
    let mut wr = connect(&srv.url());
    init_bucket(&mut wr, &b, 5);
    put(&mut wr, &b, "trainer", None, "1", b"old").unwrap();
    put(&mut wr, &b, "eval", None, "2", b"old").unwrap();

    let mut s = connect(&srv.url());
    let deliver = s.client.new_inbox();
    let mut w = Watcher::new(b.clone(), "n", deliver, Duration::from_millis(300), Instant::now());
    let mut d = driven();
    let first = w.start(Instant::now());
    run(&mut w, &mut s, first, &mut d);
    pump(&mut w, &mut s, &mut d, |w, _, _| w.synced);

    let r = wr.request(&b.delete(), None, b"", T).unwrap();
    kv::api_response(&r.payload).unwrap();
    init_bucket(&mut wr, &b, 5);
    put(&mut wr, &b, "trainer", None, "3", b"new").unwrap();
    // The consumer went with the stream: the missed heartbeats restart
    // the watcher, which sees a new stream and starts over.
    pump(&mut w, &mut s, &mut d, |w, d, _| d.resets == 1 && w.synced);
    assert_eq!(latest(&d, "trainer").unwrap().value.unwrap(), b"new");
    assert_eq!(w.revision, 1);
}

#[test]
fn bad_credentials_and_a_wrong_url_are_clear_errors() {
    if !nats::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = NatsServer::start_with(tmp.path(), &["--auth", "right-token"]);
    let mut o = opts(&srv.url());
    o.auth = Auth::Token("wrong-token".into());
    let e = Session::connect(o, Instant::now() + T).err().expect("refused");
    assert!(e.contains("Authorization Violation"), "{e}");
    let mut o = opts(&srv.url());
    o.auth = Auth::Token("right-token".into());
    Session::connect(o, Instant::now() + T).expect("the right token connects");

    // A port nobody listens on (the server's, after it is gone).
    let url = srv.url();
    drop(srv);
    let e = Session::connect(opts(&url), Instant::now() + T).err().expect("refused");
    assert!(e.contains("refused"), "{e}");
}
