//! The HTTP endpoint's pure parts: request heads ([`request`]), routing,
//! response bytes, and the bodies: health checks ([`health`], JSON) and
//! metrics ([`metrics`], the Prometheus text format). Everything here works
//! on a [`Snapshot`] of the daemon taken when a request is answered; the
//! room that owns the sockets is `daemon/http.rs`.
//!
//! | path | answer |
//! |---|---|
//! | `GET /health` | 200 or 503, JSON: the daemon serves, compute is ready, every process with a ready probe is ready |
//! | `GET /health/NAME` | the same for one process or instance; 404 for an unknown name |
//! | `GET /ready` | 200 once start-up ordering has finished, 503 before and while stopping |
//! | `GET /metrics` | 200, Prometheus text exposition format 0.0.4 |
//!
//! HEAD is answered like GET without the body; other methods get 405,
//! other paths 404.

pub mod health;
pub mod metrics;
pub mod request;

use std::fmt::Write as _;
use std::time::Duration;

use crate::daemon::tally::Tally;
use crate::protocol::{ComputeStatus, ProcRow, WeaveletRow};
use request::{Head, Parsed};

/// What the answers are made from, taken when a request needs it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: String,
    pub uptime: Duration,
    /// A graceful stop is under way.
    pub stopping: bool,
    /// Start-up ordering has finished: every process was started (or gave
    /// up) once.
    pub started_up: bool,
    pub compute: ComputeStatus,
    pub tally: Tally,
    pub procs: Vec<ProcSnap>,
    /// Every weavelet the hub knows (connected or not).
    pub weavelets: Vec<WeaveletRow>,
    /// Open HTTP connections.
    pub http_connections: u64,
    /// The fleet link, with `[fleet]` configured (`/metrics` only).
    pub fleet: Option<crate::protocol::FleetReport>,
}

/// What an answer needs of the daemon's state: a snapshot is built with
/// only that (a `/health` of a daemon with 500 processes need not list
/// them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Everything (`/metrics`).
    All,
    /// The instances that have a ready probe (`/health`).
    ReadyProbes,
    /// The instances of this process, or this instance (`/health/NAME`).
    Name(&'a str),
    /// Whether start-up ordering has finished (`/ready`): no instances.
    StartUp,
}

/// One supervised instance.
#[derive(Debug, Clone)]
pub struct ProcSnap {
    pub row: ProcRow,
    /// It has a ready probe: `/health` waits for it to be ready.
    pub ready_probe: bool,
}

/// An answer before it becomes bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
/// The Prometheus text exposition format.
pub const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn json_error(status: u16, message: &str) -> Answer {
    let body = serde_json::json!({ "error": message }).to_string().into_bytes();
    Answer { status, content_type: JSON, body }
}

/// Answer `method path`; `snap` is called only for the paths that need it,
/// with what they need.
pub fn route(method: &str, path: &str, snap: &mut dyn FnMut(Need) -> Snapshot) -> Answer {
    if method != "GET" && method != "HEAD" {
        return json_error(405, &format!("method {method} is not served: use GET or HEAD"));
    }
    let json =
        |status, v: &dyn erased::Json| Answer { status, content_type: JSON, body: v.to_json() };
    match path {
        "/health" => {
            let r = health::report(&snap(Need::ReadyProbes), None)
                .expect("the whole daemon always has a report");
            json(if r.healthy { 200 } else { 503 }, &r)
        }
        "/ready" => {
            let r = health::ready(&snap(Need::StartUp));
            json(if r.ready { 200 } else { 503 }, &r)
        }
        "/metrics" => Answer {
            status: 200,
            content_type: METRICS_TYPE,
            body: metrics::render(&snap(Need::All)).into_bytes(),
        },
        _ => match path.strip_prefix("/health/") {
            Some(name) if !name.is_empty() => {
                match health::report(&snap(Need::Name(name)), Some(name)) {
                    Some(r) => json(if r.healthy { 200 } else { 503 }, &r),
                    None => json_error(404, &format!("no process or instance is named {name:?}")),
                }
            }
            _ => json_error(
                404,
                &format!("no such path {path:?}: try /health, /health/NAME, /ready or /metrics"),
            ),
        },
    }
}

/// Serialising the two body types through one closure.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            let mut v = serde_json::to_vec(self).unwrap_or_default();
            v.push(b'\n');
            v
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Append the response bytes of `a` to `out`: the body only when
/// `with_body` (not for HEAD), `Connection: close` when `close`.
pub fn write_response(a: &Answer, with_body: bool, close: bool, out: &mut Vec<u8>) {
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        a.status,
        reason(a.status),
        a.content_type,
        a.body.len()
    );
    if a.status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if with_body {
        out.extend_from_slice(&a.body);
    }
}

/// What [`serve`] made of the buffered bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// Not a whole request yet: read more.
    Partial,
    /// One request answered: its response was appended; drop `used` bytes
    /// from the buffer, and close after writing when `close`.
    Answered { used: usize, close: bool, status: u16 },
}

/// Answer the first request in `buf`, appending its response to `out`.
pub fn serve(buf: &[u8], snap: &mut dyn FnMut(Need) -> Snapshot, out: &mut Vec<u8>) -> Served {
    match request::parse(buf) {
        Parsed::Partial => Served::Partial,
        Parsed::Bad { status, reason } => {
            write_response(&json_error(status, reason), true, true, out);
            Served::Answered { used: buf.len(), close: true, status }
        }
        Parsed::Head(Head { method, path, len, close }) => {
            let a = route(method, path, snap);
            write_response(&a, method != "HEAD", close, out);
            Served::Answered { used: len, close, status: a.status }
        }
    }
}

/// The answer for a client that took too long to send its request head.
pub fn timed_out(out: &mut Vec<u8>) {
    write_response(&json_error(408, "the request head did not arrive in time"), true, true, out);
}

/// Plain text, for a connection refused at the connection limit or a
/// request refused while too many answers wait for their clients.
pub fn busy(out: &mut Vec<u8>) {
    let a = Answer {
        status: 503,
        content_type: TEXT,
        body: b"weaver has too many HTTP connections or unread answers right now; retry later\n"
            .to_vec(),
    };
    write_response(&a, true, true, out);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::{ComputeState, ProcState};

    /// A daemon with compute ready, `web.0` ready by its probe and `job`
    /// running without one.
    pub fn sample() -> Snapshot {
        let row = |name: &str, process: &str, state| ProcRow {
            name: name.into(),
            process: process.into(),
            state,
            pid: Some(42),
            restarts: 1,
            next_restart_ms: None,
            last_exit: Some("exited with code 3".into()),
            uptime_ms: Some(1500),
            reason: None,
            gpus: None,
        };
        Snapshot {
            version: "0.1.0".into(),
            uptime: Duration::from_secs(3),
            stopping: false,
            started_up: true,
            compute: ComputeStatus {
                pid: Some(7),
                state: ComputeState::Ready,
                bin: "c".into(),
                workers: Some(2),
                restarts: 0,
                hangs: 0,
                in_flight: 1,
                queued: 0,
                served: 5,
                errors: 0,
                cancelled: 0,
                timed_out: 0,
                busy_rejected: 0,
                dropped_late: 0,
                last_exit: None,
                last_error: None,
                next_restart_ms: None,
            },
            tally: Tally::default(),
            procs: vec![
                ProcSnap { row: row("web.0", "web", ProcState::Ready), ready_probe: true },
                ProcSnap { row: row("job", "job", ProcState::Running), ready_probe: false },
            ],
            weavelets: Vec::new(),
            http_connections: 1,
            fleet: None,
        }
    }

    fn get(req: &[u8], snap: Snapshot) -> (Served, String) {
        let mut out = Vec::new();
        let s = serve(req, &mut |_| snap.clone(), &mut out);
        (s, String::from_utf8(out).unwrap())
    }

    #[test]
    fn routes_answer_with_status_type_and_length() {
        let (s, text) = get(b"GET /health HTTP/1.1\r\n\r\n", sample());
        assert!(matches!(s, Served::Answered { close: false, status: 200, .. }), "{s:?}");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Type: application/json\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["healthy"], true);

        let (_, text) = get(b"HEAD /metrics HTTP/1.1\r\n\r\n", sample());
        assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text}");
        assert!(text.contains(METRICS_TYPE));
        assert!(!text.contains("Content-Length: 0\r\n"), "HEAD gives GET's length");

        let (s, text) = get(b"POST /health HTTP/1.1\r\n\r\n", sample());
        assert!(matches!(s, Served::Answered { status: 405, .. }));
        assert!(text.contains("Allow: GET, HEAD\r\n"));
        let (s, _) = get(b"GET /nope HTTP/1.1\r\n\r\n", sample());
        assert!(matches!(s, Served::Answered { status: 404, .. }));
        let (s, _) = get(b"GET /health/nope HTTP/1.1\r\n\r\n", sample());
        assert!(matches!(s, Served::Answered { status: 404, .. }));
        let (s, _) = get(b"GET /health/web HTTP/1.1\r\n\r\n", sample());
        assert!(matches!(s, Served::Answered { status: 200, .. }));
        let (s, text) = get(b"GET /ready HTTP/1.0\r\n\r\n", sample());
        assert!(matches!(s, Served::Answered { status: 200, close: true, .. }));
        assert!(text.contains("Connection: close\r\n"));
    }

    #[test]
    fn the_snapshot_is_taken_only_when_needed_and_bad_heads_close() {
        let mut taken = 0;
        let mut out = Vec::new();
        let mut snap = |_: Need| {
            taken += 1;
            sample()
        };
        serve(b"GET /nope HTTP/1.1\r\n\r\n", &mut snap, &mut out);
        serve(b"DELETE /health HTTP/1.1\r\n\r\n", &mut snap, &mut out);
        assert_eq!(serve(b"GET /hea", &mut snap, &mut out), Served::Partial);
        let s = serve(b"\x16\x03\x01 tls hello", &mut snap, &mut out);
        assert!(matches!(s, Served::Answered { status: 400, close: true, used: 13 }), "{s:?}");
        assert_eq!(taken, 0);
    }
}

#[cfg(test)]
mod config_tests {
    use crate::supervise::parse;
    use std::time::Duration;

    #[test]
    fn http_table_is_checked_loopback_unless_allowed() {
        let c = parse("[http]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"2s\"\n", "w").unwrap();
        let h = c.http.unwrap();
        assert_eq!((h.listen.port(), h.header_timeout), (0, Duration::from_secs(2)));
        assert_eq!(h.idle_timeout, Duration::from_secs(60));
        let e = parse("[http]\nlisten = \"0.0.0.0:9464\"\n", "w").unwrap_err().to_string();
        assert!(e.contains("not a loopback address") && e.contains("allow_remote"), "{e}");
        let c = parse("[http]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n", "w").unwrap();
        assert!(c.http.unwrap().allow_remote);
        let e = parse("[http]\nlisten = \"localhost\"\n", "w").unwrap_err().to_string();
        assert!(e.contains("not an address and port"), "{e}");
        let e = parse("[http]\nallow_remote = true\n", "w").unwrap_err().to_string();
        assert!(e.contains("listen is required"), "{e}");
        let e = parse("[http]\nlisten = \"[::1]:1\"\nbogus = 1\n", "w").unwrap_err().to_string();
        assert!(e.contains("unknown key \"bogus\""), "{e}");
        assert!(parse("", "w").unwrap().http.is_none());
    }
}
