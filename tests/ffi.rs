//! The C compute library through the bindgen FFI, over real sockets:
//! socket_connect against a Rust listener, and wc_serve (run on a Rust
//! thread) driven frame by frame from the test.

mod common_compute;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use weaver::ffi::{self, ServeResult};
use weaver::wire::{self, kind, op, status, Frame, Hello};

use common_compute::{describe, text, Peer};

/// The contract: wc_serve returns within 2 s of its reason, even while
/// requests run.
const RETURN_WITHIN: Duration = Duration::from_secs(2);

/// wc_serve running on its own thread over the server end of a socket pair.
struct Served {
    rx: mpsc::Receiver<(ServeResult, String)>,
}

impl Served {
    fn spawn(
        server: UnixStream,
        workers: u32,
        watch: Option<RawFd>,
        stop: Option<RawFd>,
        hello: bool,
    ) -> Served {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let r = ffi::serve(server.as_fd(), workers, watch, stop, hello);
            drop(server); // the peer sees EOF once wc_serve is done
            let _ = tx.send(r);
        });
        Served { rx }
    }

    /// wc_serve's result; fails the test if it does not come within `d`.
    fn result_within(&self, d: Duration) -> (ServeResult, String) {
        self.rx.recv_timeout(d).unwrap_or_else(|_| panic!("wc_serve did not return within {d:?}"))
    }

    fn result(&self) -> (ServeResult, String) {
        self.result_within(Duration::from_secs(10))
    }
}

fn start(workers: u32) -> (Peer, Served) {
    let (client, server) = UnixStream::pair().expect("socketpair");
    (Peer::new(client), Served::spawn(server, workers, None, None, false))
}

/// SHUTDOWN, then every frame until end of file; checks wc_serve said SHUTDOWN.
fn shutdown_and_drain(mut peer: Peer, served: Served) -> Vec<Frame> {
    peer.send(kind::SHUTDOWN, 0, 0, b"");
    let (r, msg) = served.result();
    assert_eq!(r, ServeResult::Shutdown, "{msg}");
    peer.drain_to_eof()
}

/// How many RESPONSE frames each request id got.
fn responses_per_id(frames: &[Frame]) -> HashMap<u64, usize> {
    let mut m = HashMap::new();
    for f in frames.iter().filter(|f| f.header.kind == kind::RESPONSE) {
        *m.entry(f.header.request_id).or_insert(0) += 1;
    }
    m
}

fn echo_round_trip(peer: &mut Peer, id: u64, payload: &[u8]) {
    peer.send(kind::REQUEST, id, op::ECHO, payload);
    let f = peer.response(id);
    assert_eq!(f.header.code, status::OK, "{}", describe(&f));
    assert_eq!(f.payload.len(), payload.len());
    assert!(f.payload == payload, "echo of {} bytes came back different", payload.len());
}

/// An ECHO round trip that proves every request sent before it has been
/// taken by a worker: the queue is FIFO (compute-daemon/README.md), so the
/// echo is taken only after them, and it is answered only if a worker is
/// left free for it. Frames are handled in order, so CANCEL or SHUTDOWN
/// sent afterwards finds them running.
fn all_taken(peer: &mut Peer, probe_id: u64) {
    echo_round_trip(peer, probe_id, b"probe");
}

/// A PING round trip: frames are handled in order, so once the PONG is
/// back compute has read (and queued) everything sent before it.
fn all_read(peer: &mut Peer, ping_id: u64) {
    peer.send(kind::PING, ping_id, 0, b"sync");
    let f = peer.recv();
    assert_eq!((f.header.kind, f.header.request_id), (kind::PONG, ping_id), "{}", describe(&f));
}

/// Independent Rust rendering of the header's Mandelbrot definition.
fn render_reference(w: u32, h: u32, iterations: u32, x: (f64, f64), y: (f64, f64)) -> Vec<u8> {
    let mut img = format!("P6\n{w} {h}\n255\n").into_bytes();
    let (x_min, x_max) = x;
    let (y_min, y_max) = y;
    for py in 0..h {
        let cy = y_max - (f64::from(py) + 0.5) * (y_max - y_min) / f64::from(h);
        for px in 0..w {
            let cx = x_min + (f64::from(px) + 0.5) * (x_max - x_min) / f64::from(w);
            let (mut zx, mut zy) = (0.0f64, 0.0f64);
            let mut n = 0u32;
            while n < iterations && zx * zx + zy * zy <= 4.0 {
                let nx = zx * zx - zy * zy + cx;
                zy = 2.0 * zx * zy + cy;
                zx = nx;
                n += 1;
            }
            if zx * zx + zy * zy <= 4.0 {
                img.extend_from_slice(&[0, 0, 0]);
            } else {
                let t = (u64::from(n) * 255 / u64::from(iterations)) as u32;
                img.extend_from_slice(&[t as u8, ((t * 7) & 255) as u8, (255 - t) as u8]);
            }
        }
    }
    img
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("pipe")
}

// ---- socket_connect ------------------------------------------------------

#[test]
fn socket_connect_reaches_a_listener_with_a_cloexec_fd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compute.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = ffi::socket_connect(&path).expect("connect to a listening socket");
    let (_accepted, _) = listener.accept().expect("the connection is accepted");
    // SAFETY: fcntl F_GETFD on an fd we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "fd must be close-on-exec");
    // SAFETY: as above.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(fl & libc::O_NONBLOCK, 0, "fd is blocking");
}

#[test]
fn socket_connect_to_a_missing_path_says_enoent_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing-here.sock");
    let (errno, msg) = ffi::socket_connect(&path).expect_err("no socket there");
    assert_eq!(errno, libc::ENOENT);
    assert!(msg.contains(path.to_str().unwrap()), "message names the path: {msg}");
    assert!(msg.contains("does not exist") && msg.contains("ENOENT"), "{msg}");
    assert!(msg.contains("--socket-path"), "message says what to do: {msg}");
    assert!(!path.exists(), "socket_connect never creates the socket");
}

#[test]
fn socket_connect_rejects_a_path_too_long_for_sun_path() {
    let long = format!("/tmp/{}", "x".repeat(200));
    let (errno, msg) = ffi::socket_connect(Path::new(&long)).expect_err("too long");
    assert_eq!(errno, libc::ENAMETOOLONG);
    assert!(msg.contains("ENAMETOOLONG") && msg.contains("shorter"), "{msg}");
}

#[test]
fn socket_connect_to_a_stale_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap()); // the file stays, nobody listens
    let (errno, msg) = ffi::socket_connect(&path).expect_err("nobody listens");
    assert_eq!(errno, libc::ECONNREFUSED);
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
}

#[test]
fn socket_connect_can_be_called_many_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let listener = UnixListener::bind(&path).unwrap();
    for _ in 0..20 {
        let fd = ffi::socket_connect(&path).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let mut peer = UnixStream::from(fd);
        use std::io::{Read, Write};
        peer.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }
}

// ---- header helpers ------------------------------------------------------

#[test]
fn c_and_rust_headers_agree_byte_for_byte() {
    let h = ffi::wc_header {
        magic: ffi::WC_MAGIC,
        version: ffi::WC_PROTOCOL_VERSION as u16,
        kind: kind::RESPONSE,
        request_id: 0x0102_0304_0506_0708,
        code: status::CANCELLED,
        payload_len: 77,
    };
    let c = ffi::header_encode(&h);
    let r = wire::Header {
        kind: kind::RESPONSE,
        request_id: h.request_id,
        code: h.code,
        payload_len: 77,
    }
    .encode();
    assert_eq!(c, r);
    assert_eq!(&c[..4], b"WVRC");
    assert_eq!(ffi::header_decode(&c), Ok(h));

    let mut bad = c;
    bad[0] = b'X';
    let (why, _) = ffi::header_decode(&bad).unwrap_err();
    assert_eq!(why, ffi::wc_decode_result::WC_DECODE_BAD_MAGIC);
    assert!(ffi::decode_result_str(why).contains("magic"));
    let (why, _) = ffi::header_decode(&c[..10]).unwrap_err();
    assert_eq!(why, ffi::wc_decode_result::WC_DECODE_SHORT);
    assert_eq!(ffi::status_str(status::BUSY), "busy");
    assert_eq!(ffi::op_name(op::RENDER), "render");
    assert_eq!(ffi::op_name(99), "unknown op");
}

// ---- the frame reader over bytes in memory --------------------------------

#[test]
fn read_frames_gives_the_same_frames_for_every_chunking() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut bytes = wire::encode_frame(kind::REQUEST, 1, op::ECHO, b"hello");
    bytes.extend(wire::encode_frame(kind::PING, 2, 0, b""));
    // Over the staging buffer: read straight into its own buffer.
    bytes.extend(wire::encode_frame(kind::REQUEST, 3, op::ECHO, &big));
    bytes.extend(wire::encode_frame(kind::CANCEL, 4, op::ECHO, b"x"));
    for keep in [true, false] {
        for chunk in [0, 1, 7, 24, 25, 4096, 65_536, 70_000] {
            let r = ffi::read_frames(&bytes, chunk, keep);
            assert_eq!(r.result, ServeResult::PeerClosed, "chunk {chunk}: {}", r.message);
            assert_eq!((r.partial, r.message.as_str()), (0, "peer closed the connection"));
            let ids: Vec<u64> = r.frames.iter().map(|(h, _)| h.request_id).collect();
            assert_eq!(ids, [1, 2, 3, 4], "chunk {chunk}");
            let lens: Vec<u32> = r.frames.iter().map(|(h, _)| h.payload_len).collect();
            assert_eq!(lens, [5, 0, 300_000, 1]);
            if keep {
                assert_eq!(r.frames[0].1, b"hello");
                assert!(r.frames[2].1 == big, "chunk {chunk}: the large payload differs");
            } else {
                assert!(r.frames.iter().all(|(_, p)| p.is_empty()), "chunk {chunk}");
            }
        }
    }
}

#[test]
fn read_frames_reports_a_cut_short_frame_and_a_bad_header() {
    let mut bytes = wire::encode_frame(kind::PING, 1, 0, b"abc");
    bytes.extend(wire::encode_frame(kind::REQUEST, 2, op::ECHO, &[9u8; 100]));
    let r = ffi::read_frames(&bytes[..bytes.len() - 60], 5, true);
    assert_eq!(r.result, ServeResult::PeerClosed);
    assert_eq!((r.frames.len(), r.partial), (1, 24 + 40));
    assert!(r.message.contains("40 of 100"), "{}", r.message);
    let r = ffi::read_frames(&bytes[..30], 0, true);
    assert_eq!((r.frames.len(), r.partial), (1, 3));
    assert!(r.message.contains("3 of 24"), "{}", r.message);

    let mut bad = wire::encode_frame(kind::PING, 1, 0, b"abc");
    bad.extend(header_bytes(wire::MAGIC, wire::VERSION, 42, 2, 0, 0));
    bad.extend(wire::encode_frame(kind::PING, 3, 0, b""));
    let r = ffi::read_frames(&bad, 0, true);
    assert_eq!(r.result, ServeResult::Protocol);
    assert_eq!(r.frames.len(), 1, "nothing after the bad header is read");
    assert!(r.message.contains("unknown frame kind 42"), "{}", r.message);
    let r = ffi::read_frames(b"", 0, true);
    assert_eq!((r.result, r.frames.len(), r.partial), (ServeResult::PeerClosed, 0, 0));
}

// ---- the request loop ----------------------------------------------------

#[test]
fn hello_comes_first_and_lists_the_ops() {
    let (client, server) = UnixStream::pair().unwrap();
    let served = Served::spawn(server, 3, None, None, true);
    let mut peer = Peer::new(client);
    let f = peer.recv();
    assert_eq!(f.header.kind, kind::HELLO);
    assert_eq!(f.header.request_id, 0);
    let hello = Hello::parse(&f.payload).expect("valid HELLO");
    assert_eq!(u32::from(hello.version), ffi::WC_PROTOCOL_VERSION);
    assert_eq!(hello.pid, std::process::id());
    assert_eq!(hello.max_frame, ffi::WC_MAX_FRAME);
    assert_eq!(hello.workers, 3);
    let names: Vec<&str> = hello.ops.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["echo", "render", "sleep", "info"]);
    assert_eq!(hello.op_id("sleep"), Some(op::SLEEP));
    let frames = shutdown_and_drain(peer, served);
    assert!(frames.is_empty(), "{frames:?}");
}

#[test]
fn echo_returns_the_same_bytes_for_0_small_and_1_mib() {
    let (mut peer, served) = start(2);
    echo_round_trip(&mut peer, 1, b"");
    echo_round_trip(&mut peer, 2, b"hello, compute");
    let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 31 + i / 7) as u8).collect();
    echo_round_trip(&mut peer, 3, &big);
    assert!(shutdown_and_drain(peer, served).is_empty());
}

#[test]
fn echo_of_the_largest_payload_is_read_incrementally() {
    let (mut peer, served) = start(1);
    let max = wire::MAX_PAYLOAD;
    let big: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
    echo_round_trip(&mut peer, 1, &big);
    assert!(shutdown_and_drain(peer, served).is_empty());
}

#[test]
fn render_matches_an_independent_rust_reference_byte_for_byte() {
    let (mut peer, served) = start(2);
    // Defaults: 256x256, 256 iterations, x -2.5..1, y -1.25..1.25.
    peer.request(1, op::RENDER, "");
    let f = peer.response(1);
    assert_eq!(f.header.code, status::OK, "{}", describe(&f));
    assert!(f.payload.starts_with(b"P6\n256 256\n255\n"));
    assert!(f.payload == render_reference(256, 256, 256, (-2.5, 1.0), (-1.25, 1.25)));

    // A deep zoom near the boundary, odd sizes, tabs and newlines as
    // separators: many points escape late, some on the very last step.
    let params = "width=97\theight=61\niterations=2000 x_min=-0.7480 x_max=-0.7460 \
                  y_min=0.0990 y_max=0.1010";
    peer.request(2, op::RENDER, params);
    let f = peer.response(2);
    assert_eq!(f.header.code, status::OK, "{}", describe(&f));
    let want = render_reference(97, 61, 2000, (-0.7480, -0.7460), (0.0990, 0.1010));
    assert!(f.payload == want, "deep zoom differs from the reference");

    // One iteration: everything that escapes does so on the last step.
    peer.request(
        3,
        op::RENDER,
        "width=31 height=17 iterations=1 x_min=-3 x_max=3 y_min=-2 y_max=2",
    );
    let f = peer.response(3);
    assert!(f.payload == render_reference(31, 17, 1, (-3.0, 3.0), (-2.0, 2.0)));
    assert!(shutdown_and_drain(peer, served).is_empty());
}

#[test]
fn render_of_a_small_image_has_a_pinned_checksum() {
    let (mut peer, served) = start(1);
    peer.request(1, op::RENDER, "width=64 height=48 iterations=100");
    let f = peer.response(1);
    assert_eq!(f.header.code, status::OK, "{}", describe(&f));
    assert_eq!(f.payload.len(), "P6\n64 48\n255\n".len() + 64 * 48 * 3);
    assert_eq!(fnv1a64(&f.payload), 0x1baa_dfb2_ea25_f4e9, "render output changed");
    assert!(shutdown_and_drain(peer, served).is_empty());
}

/// wc_serve over a socket pair whose client end the test reads with the
/// fd helpers (a `Peer` reads with read(2), which would drop fds).
fn start_fd(workers: u32) -> (UnixStream, Served) {
    let (client, server) = UnixStream::pair().expect("socketpair");
    (client, Served::spawn(server, workers, None, None, false))
}

/// Open fds of this process whose link names `target`.
fn open_fds_to(target: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains(target))
        .count()
}

#[test]
fn render_of_4096x4096_comes_back_in_a_sealed_memfd_equal_to_the_reference() {
    let (client, served) = start_fd(2);
    let mut peer = Peer::new(client.try_clone().unwrap());
    // Few iterations keep the debug-build reference quick; every pixel and
    // the whole 50 MB still go through the fd.
    let params = "width=4096 height=4096 iterations=12 x_min=-2.0 x_max=0.5 y_min=-1.0 y_max=1.0";
    peer.request(1, op::RENDER, params);
    let (h, size, fd) = ffi::recv_fd_frame(client.as_fd()).expect("a RESPONSE_FD");
    assert_eq!((h.kind, h.request_id, h.code), (kind::RESPONSE_FD, 1, status::OK));
    let want = render_reference(4096, 4096, 12, (-2.0, 0.5), (-1.0, 1.0));
    assert_eq!(size, want.len() as u64);
    assert!(size > wire::MAX_PAYLOAD as u64, "over what one inline frame carries");
    let f = std::fs::File::from(fd.expect("the image fd"));
    let mut got = vec![0u8; want.len()];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, 0).unwrap();
    assert!(got == want, "the 4096x4096 image differs from the reference");
    drop(f);
    assert!(shutdown_and_drain(peer, served).is_empty());
}

#[test]
fn echo_by_fd_answers_with_the_same_sealed_memfd_and_refusals_close_every_fd() {
    let (client, served) = start_fd(1);
    let mut peer = Peer::new(client.try_clone().unwrap());
    let name = format!("wvffi-echo-{}", std::process::id());
    let c = std::ffi::CString::new(name.clone()).unwrap();
    let mk = |seal: bool| {
        // SAFETY: c is NUL-terminated; the result is checked.
        let fd =
            unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: a new fd, ours alone.
        let f =
            std::fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        f.set_len(20 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"first", 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"last", (20 << 20) - 4).unwrap();
        let fd = OwnedFd::from(f);
        if seal {
            ffi::memfd_seal(fd.as_fd()).unwrap();
        }
        fd
    };
    // 20 MiB, over the inline limit: the reply is the same memfd.
    let fd = mk(true);
    ffi::send_fd_frame(client.as_fd(), kind::REQUEST_FD, 2, op::ECHO, 20 << 20, fd.as_fd())
        .unwrap();
    let (h, size, back) = ffi::recv_fd_frame(client.as_fd()).expect("a RESPONSE_FD");
    assert_eq!((h.kind, h.request_id, h.code, size), (kind::RESPONSE_FD, 2, status::OK, 20 << 20));
    let (a, b) = (
        nix::sys::stat::fstat(&fd).unwrap(),
        nix::sys::stat::fstat(back.as_ref().unwrap()).unwrap(),
    );
    assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino), "echo passes the very memfd back");
    drop((fd, back));
    // Unsealed: BAD_FD, and the loop goes on.
    let fd = mk(false);
    ffi::send_fd_frame(client.as_fd(), kind::REQUEST_FD, 3, op::ECHO, 20 << 20, fd.as_fd())
        .unwrap();
    drop(fd);
    let f = peer.response(3);
    assert_eq!(f.header.code, status::BAD_FD, "{}", describe(&f));
    assert!(text(&f).contains("not sealed"), "{}", describe(&f));
    // Announced and missing.
    peer.send(kind::REQUEST_FD, 4, op::ECHO, &4096u64.to_le_bytes());
    let f = peer.response(4);
    assert_eq!(f.header.code, status::BAD_FD, "{}", describe(&f));
    assert!(text(&f).contains("none came"), "{}", describe(&f));
    echo_round_trip(&mut peer, 5, b"still serving");
    assert!(shutdown_and_drain(peer, served).is_empty());
    assert_eq!(open_fds_to(&name), 0, "no memfd of this test is left open in the process");
}

/// An echo by fd passes the client's own memfd back: compute holds none
/// of its memory, so replies waiting to be written do not count against
/// the bytes compute may hold, and pipelined echoes of a 1 GiB memfd are
/// never answered BUSY (each would count 1 GiB, over the 256 MiB bound).
#[test]
fn pipelined_echoes_of_a_large_memfd_are_not_refused_busy_while_replies_wait() {
    let (client, server) = UnixStream::pair().expect("socketpair");
    // A small send buffer on compute's side keeps most replies waiting in
    // compute while the test does not read.
    nix::sys::socket::setsockopt(&server, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let served = Served::spawn(server, 2, None, None, false);
    let name = format!("wvffi-pipelined-{}", std::process::id());
    let c = std::ffi::CString::new(name.clone()).unwrap();
    // SAFETY: c is NUL-terminated; the result is checked.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: a new fd, ours alone.
    let f = std::fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    f.set_len(1 << 30).unwrap(); // sparse: no memory behind it
    let fd = OwnedFd::from(f);
    ffi::memfd_seal(fd.as_fd()).unwrap();
    const N: u64 = 24;
    let send = |id: u64| {
        ffi::send_fd_frame(client.as_fd(), kind::REQUEST_FD, id, op::ECHO, 1 << 30, fd.as_fd())
            .unwrap()
    };
    for id in 1..=N {
        send(id);
    }
    // Let compute answer those and fill its small send buffer, so that
    // replies wait in compute when the next requests come in.
    thread::sleep(Duration::from_millis(300));
    for id in N + 1..=2 * N {
        send(id);
    }
    for _ in 0..2 * N {
        let (h, size, back) = ffi::recv_fd_frame(client.as_fd()).expect("a reply");
        assert_eq!(
            (h.kind, h.code, size),
            (kind::RESPONSE_FD, status::OK, 1 << 30),
            "request {} was not echoed by fd",
            h.request_id
        );
        drop(back);
    }
    drop(fd);
    let peer = Peer::new(client);
    assert!(shutdown_and_drain(peer, served).is_empty());
    assert_eq!(open_fds_to(&name), 0, "no memfd of this test is left open in the process");
}

#[test]
fn an_fd_with_a_plain_frame_ends_the_connection_and_is_closed() {
    let (client, served) = start_fd(1);
    let name = format!("wvffi-stray-{}", std::process::id());
    let c = std::ffi::CString::new(name.clone()).unwrap();
    // SAFETY: c is NUL-terminated; the result is checked.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a new fd, ours alone.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let bytes = wire::encode_frame(kind::PING, 1, 0, b"x");
    let fds = [fd.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        client.as_raw_fd(),
        &[std::io::IoSlice::new(&bytes)],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    drop(fd);
    let (r, msg) = served.result();
    assert_eq!(r, ServeResult::Protocol, "{msg}");
    assert!(msg.contains("carry none"), "{msg}");
    assert_eq!(open_fds_to(&name), 0);
}

#[test]
fn info_is_one_line_of_json() {
    let (mut peer, served) = start(2);
    peer.request(1, op::INFO, "");
    let f = peer.response(1);
    assert_eq!(f.header.code, status::OK, "{}", describe(&f));
    let line = text(&f);
    assert_eq!(line.trim_end().lines().count(), 1, "{line}");
    let v: serde_json::Value = serde_json::from_str(&line).expect("info is JSON");
    assert_eq!(v["pid"], u64::from(std::process::id()));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["protocol"], u64::from(ffi::WC_PROTOCOL_VERSION));
    assert_eq!(v["workers"], 2);
    assert_eq!(v["max_frame"], u64::from(ffi::WC_MAX_FRAME));
    assert_eq!(v["ops"], serde_json::json!(["echo", "render", "sleep", "info"]));

    peer.request(2, op::INFO, "verbose=1");
    let f = peer.response(2);
    assert_eq!(f.header.code, status::BAD_REQUEST, "{}", describe(&f));
    assert!(shutdown_and_drain(peer, served).is_empty());
}

#[test]
fn replies_come_back_in_completion_order() {
    let (mut peer, served) = start(2);
    let t0 = Instant::now();
    peer.request(1, op::SLEEP, "ms=500");
    peer.request(2, op::ECHO, "quick");
    let first = peer.recv();
    assert_eq!(first.header.request_id, 2, "echo overtakes the sleep: {}", describe(&first));
    assert!(t0.elapsed() < Duration::from_millis(450), "echo was not held up by the sleep");
    let second = peer.response(1);
    assert_eq!(second.header.code, status::OK);
    assert!(second.payload.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(500), "sleep ms=500 slept");
    assert!(shutdown_and_drain(peer, served).is_empty());
}

#[test]
fn cancel_ends_queued_and_running_requests_with_one_response_each() {
    let (mut peer, served) = start(2);
    peer.request(1, op::SLEEP, "ms=60000"); // takes one worker
    all_taken(&mut peer, 10); // request 1 runs
    peer.request(3, op::SLEEP, "ms=60000"); // takes the other worker
    peer.request(4, op::SLEEP, "ms=60000"); // queued: no worker is left for it

    let t0 = Instant::now();
    peer.send(kind::CANCEL, 4, op::SLEEP, b"");
    let f = peer.response(4);
    assert_eq!(f.header.code, status::CANCELLED, "{}", describe(&f));
    assert!(text(&f).contains("before it started"), "{}", text(&f));

    peer.send(kind::CANCEL, 1, op::SLEEP, b"");
    let f = peer.response(1);
    assert_eq!(f.header.code, status::CANCELLED, "{}", describe(&f));
    assert!(text(&f).contains("while running"), "{}", text(&f));
    assert!(t0.elapsed() < RETURN_WITHIN, "cancel took {:?}", t0.elapsed());

    // Request 3 may or may not have reached its worker yet: either way it
    // gets its one CANCELLED response.
    peer.send(kind::CANCEL, 3, op::SLEEP, b"");
    let f = peer.response(3);
    assert_eq!(f.header.code, status::CANCELLED, "{}", describe(&f));

    // Cancelling answered or unknown ids is ignored: the PONG comes next.
    peer.send(kind::CANCEL, 1, 0, b"");
    peer.send(kind::CANCEL, 3, 0, b"");
    peer.send(kind::CANCEL, 4, 0, b"");
    peer.send(kind::CANCEL, 12345, 0, b"");
    all_read(&mut peer, 9);

    // Both workers are free again.
    echo_round_trip(&mut peer, 5, b"after cancel");
    echo_round_trip(&mut peer, 6, b"after cancel, again");
    let rest = shutdown_and_drain(peer, served);
    assert!(rest.is_empty(), "no second response: {rest:?}");
}

#[test]
fn cancel_stops_a_long_render() {
    let (mut peer, served) = start(2);
    peer.request(
        1,
        op::RENDER,
        "width=4000 height=1000 iterations=100000 x_min=-0.1 x_max=0.1 y_min=-0.1 y_max=0.1",
    );
    all_taken(&mut peer, 2); // the render runs
    let t0 = Instant::now();
    peer.send(kind::CANCEL, 1, op::RENDER, b"");
    let f = peer.response(1);
    assert_eq!(f.header.code, status::CANCELLED, "{}", describe(&f));
    assert!(text(&f).contains("while running"), "{}", text(&f));
    assert!(t0.elapsed() < RETURN_WITHIN, "render noticed the cancel after {:?}", t0.elapsed());
    assert!(shutdown_and_drain(peer, served).is_empty());
}

#[test]
fn ping_is_answered_with_pong_of_the_same_id_and_payload() {
    let (mut peer, served) = start(1);
    peer.send(kind::PING, 42, 0, b"are you there");
    let f = peer.recv();
    assert_eq!(f.header.kind, kind::PONG);
    assert_eq!(f.header.request_id, 42);
    assert_eq!(f.payload, b"are you there");
    peer.send(kind::PING, 43, 0, b"");
    let f = peer.recv();
    assert_eq!((f.header.kind, f.header.request_id, f.payload.len()), (kind::PONG, 43, 0));
    assert!(shutdown_and_drain(peer, served).is_empty());
}

#[test]
fn shutdown_cancels_outstanding_requests_and_returns() {
    let (mut peer, served) = start(2);
    peer.request(1, op::SLEEP, "ms=60000");
    all_taken(&mut peer, 4); // request 1 runs
    peer.request(2, op::SLEEP, "ms=60000"); // takes the other worker
    peer.request(3, op::RENDER, ""); // queued: no worker is left for it
    let t0 = Instant::now();
    peer.send(kind::SHUTDOWN, 0, 0, b"");
    let (r, msg) = served.result_within(Duration::from_secs(5));
    assert_eq!(r, ServeResult::Shutdown, "{msg}");
    assert!(t0.elapsed() < RETURN_WITHIN, "shutdown took {:?}", t0.elapsed());
    let frames = peer.drain_to_eof();
    let per_id = responses_per_id(&frames);
    assert_eq!(per_id, HashMap::from([(1, 1), (2, 1), (3, 1)]), "{frames:?}");
    for f in &frames {
        assert_eq!(f.header.code, status::CANCELLED, "{}", describe(f));
    }
    let said = |id: u64| text(frames.iter().find(|f| f.header.request_id == id).unwrap());
    assert!(said(1).contains("while running"), "{}", said(1));
    assert!(said(3).contains("before it started"), "{}", said(3));
}

#[test]
fn a_full_queue_answers_busy() {
    let (mut peer, served) = start(1);
    // 1024 accepted requests (one running, 1023 queued), then one too many.
    let mut batch = Vec::new();
    for id in 1..=1025u64 {
        wire::push_frame(&mut batch, kind::REQUEST, id, op::SLEEP, b"ms=60000");
    }
    peer.send_raw(&batch);
    let f = peer.response(1025);
    assert_eq!(f.header.code, status::BUSY, "{}", describe(&f));
    assert!(text(&f).contains("1024"), "{}", text(&f));
    let frames = shutdown_and_drain(peer, served);
    let per_id = responses_per_id(&frames);
    assert_eq!(per_id.len(), 1024);
    assert!(per_id.values().all(|&n| n == 1));
    assert!(frames.iter().all(|f| f.header.code == status::CANCELLED));
}

// ---- malformed input -----------------------------------------------------

fn header_bytes(magic: u32, version: u16, kind: u16, id: u64, code: u32, len: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&magic.to_le_bytes());
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&code.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b
}

fn expect_protocol_error(bytes: &[u8], words: &[&str]) {
    let (mut peer, served) = start(1);
    echo_round_trip(&mut peer, 1, b"fine so far");
    peer.send_raw(bytes);
    let (r, msg) = served.result();
    assert_eq!(r, ServeResult::Protocol, "{msg}");
    for w in words {
        assert!(msg.contains(w), "message {msg:?} should mention {w:?}");
    }
    assert!(peer.drain_to_eof().is_empty());
}

#[test]
fn bad_magic_ends_the_connection() {
    expect_protocol_error(&header_bytes(0x4142_4344, 1, kind::REQUEST, 5, op::ECHO, 0), &["magic"]);
}

#[test]
fn bad_version_ends_the_connection() {
    expect_protocol_error(
        &header_bytes(wire::MAGIC, wire::VERSION + 7, kind::REQUEST, 5, op::ECHO, 0),
        &["version 9"],
    );
}

#[test]
fn bad_kind_ends_the_connection() {
    expect_protocol_error(&header_bytes(wire::MAGIC, wire::VERSION, 0, 5, 0, 0), &["kind 0"]);
    expect_protocol_error(&header_bytes(wire::MAGIC, wire::VERSION, 99, 5, 0, 0), &["kind 99"]);
}

#[test]
fn payload_len_over_the_maximum_ends_the_connection() {
    let over = wire::MAX_PAYLOAD as u32 + 1;
    expect_protocol_error(
        &header_bytes(wire::MAGIC, wire::VERSION, kind::REQUEST, 5, op::ECHO, over),
        &["payload_len", "maximum"],
    );
    expect_protocol_error(
        &header_bytes(wire::MAGIC, wire::VERSION, kind::PING, 5, 0, u32::MAX),
        &["payload_len"],
    );
}

#[test]
fn a_truncated_header_then_close_is_peer_closed() {
    let (mut peer, served) = start(1);
    peer.send_raw(&header_bytes(wire::MAGIC, wire::VERSION, kind::REQUEST, 5, op::ECHO, 0)[..10]);
    peer.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (r, msg) = served.result();
    assert_eq!(r, ServeResult::PeerClosed, "{msg}");
    assert!(msg.contains("10 of 24"), "{msg}");
}

#[test]
fn a_truncated_payload_then_close_is_peer_closed() {
    let (mut peer, served) = start(1);
    let mut f = header_bytes(wire::MAGIC, wire::VERSION, kind::REQUEST, 5, op::ECHO, 100);
    f.extend_from_slice(&[7u8; 40]);
    peer.send_raw(&f);
    peer.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (r, msg) = served.result();
    assert_eq!(r, ServeResult::PeerClosed, "{msg}");
    assert!(msg.contains("40 of 100"), "{msg}");
}

#[test]
fn an_unknown_op_is_answered_and_the_loop_goes_on() {
    let (mut peer, served) = start(1);
    peer.send(kind::REQUEST, 1, 99, b"some payload that is skipped");
    let f = peer.response(1);
    assert_eq!(f.header.code, status::UNKNOWN_OP, "{}", describe(&f));
    assert!(text(&f).contains("99") && text(&f).contains("echo"), "{}", text(&f));
    echo_round_trip(&mut peer, 2, b"still serving");
    assert!(shutdown_and_drain(peer, served).is_empty());
}

#[test]
fn garbage_parameters_are_bad_requests_and_the_loop_goes_on() {
    let cases: &[(u32, &[u8], &str)] = &[
        (op::RENDER, b"width=abc", "width"),
        (op::RENDER, b"width=0", "out of range"),
        (op::RENDER, b"width=4097", "width"),
        (op::RENDER, b"height=-5", "height"),
        (op::RENDER, b"width=99999999999999999999999", "out of range"),
        (op::RENDER, b"iterations=100001", "iterations"),
        (op::RENDER, b"colour=red", "unknown key 'colour'"),
        (op::RENDER, b"width", "no '='"),
        (op::RENDER, b"width=", "empty value"),
        (op::RENDER, b"=5", "unknown key ''"),
        (op::RENDER, b"width=10 width=20", "duplicate key 'width'"),
        (op::RENDER, b"x_min=nan", "x_min"),
        (op::RENDER, b"x_max=1e999", "out of range"),
        (op::RENDER, b"y_min=1.5x", "y_min"),
        (op::RENDER, b"width=8\0", "NUL"),
        (op::RENDER, b"width=8\0 garbage", "NUL"),
        (op::RENDER, b"\xff\xfe=1", "unknown key"),
        (op::SLEEP, b"", "missing key 'ms'"),
        (op::SLEEP, b"ms=3600001", "out of range"),
        (op::SLEEP, b"ms=1.5", "ms"),
        (op::SLEEP, b"ms=+5", "ms"),
        (op::SLEEP, b"seconds=5", "unknown key 'seconds'"),
    ];
    let (mut peer, served) = start(2);
    for (i, (op_id, params, words)) in cases.iter().enumerate() {
        let id = i as u64 + 1;
        peer.send(kind::REQUEST, id, *op_id, params);
        let f = peer.response(id);
        assert_eq!(
            f.header.code,
            status::BAD_REQUEST,
            "{:?}: {}",
            String::from_utf8_lossy(params),
            describe(&f)
        );
        assert!(
            text(&f).contains(words),
            "{:?}: message {:?} should mention {words:?}",
            String::from_utf8_lossy(params),
            text(&f)
        );
    }
    // A value that ends exactly at the end of the payload (no terminator).
    peer.send(kind::REQUEST, 100, op::RENDER, b"width=8");
    let f = peer.response(100);
    assert_eq!(f.header.code, status::OK, "{}", describe(&f));
    assert!(f.payload.starts_with(b"P6\n8 256\n255\n"));
    echo_round_trip(&mut peer, 101, b"still serving");
    assert!(shutdown_and_drain(peer, served).is_empty());
}

// ---- ways out ------------------------------------------------------------

#[test]
fn the_loop_returns_quickly_when_the_peer_closes_during_a_long_sleep() {
    let (mut peer, served) = start(2);
    peer.request(1, op::SLEEP, "ms=3600000");
    all_taken(&mut peer, 3); // the sleep runs
    peer.request(2, op::RENDER, "width=4000 height=1000 iterations=100000 x_min=-0.1 x_max=0.1");
    all_read(&mut peer, 4);
    let t0 = Instant::now();
    drop(peer);
    let (r, msg) = served.result_within(Duration::from_secs(5));
    assert_eq!(r, ServeResult::PeerClosed, "{msg}");
    let took = t0.elapsed();
    assert!(took < RETURN_WITHIN, "took {took:?}");
    eprintln!("wc_serve returned {took:?} after the peer closed");
}

#[test]
fn the_loop_returns_quickly_when_the_watch_fd_closes() {
    let (client, server) = UnixStream::pair().unwrap();
    let (watch_r, watch_w) = pipe();
    let served = Served::spawn(server, 2, Some(watch_r.as_raw_fd()), None, false);
    let mut peer = Peer::new(client);
    peer.request(1, op::SLEEP, "ms=3600000");
    // Bytes on the lifeline are not an end of file.
    nix::unistd::write(&watch_w, b"noise").unwrap();
    echo_round_trip(&mut peer, 2, b"alive");
    let t0 = Instant::now();
    drop(watch_w);
    let (r, msg) = served.result_within(Duration::from_secs(5));
    assert_eq!(r, ServeResult::WatchClosed, "{msg}");
    assert!(t0.elapsed() < RETURN_WITHIN, "took {:?}", t0.elapsed());
    drop(watch_r);
}

#[test]
fn the_loop_stops_when_the_stop_fd_is_readable_and_flushes_cancellations() {
    let (client, server) = UnixStream::pair().unwrap();
    let (stop_r, stop_w) = pipe();
    let served = Served::spawn(server, 1, None, Some(stop_r.as_raw_fd()), false);
    let mut peer = Peer::new(client);
    peer.request(1, op::SLEEP, "ms=3600000");
    peer.request(2, op::SLEEP, "ms=3600000");
    peer.send(kind::PING, 3, 0, b""); // both sleeps are in once the PONG is back
    assert_eq!(peer.recv().header.kind, kind::PONG);
    let t0 = Instant::now();
    nix::unistd::write(&stop_w, b"T").unwrap();
    let (r, msg) = served.result_within(Duration::from_secs(5));
    assert_eq!(r, ServeResult::Stopped, "{msg}");
    assert!(t0.elapsed() < RETURN_WITHIN, "took {:?}", t0.elapsed());
    let frames = peer.drain_to_eof();
    assert_eq!(responses_per_id(&frames), HashMap::from([(1, 1), (2, 1)]), "{frames:?}");
    drop((stop_r, stop_w));
}

#[test]
fn wc_serve_runs_again_and_again_in_one_process() {
    for round in 0..5u64 {
        let (mut peer, served) = start(2);
        peer.request(round, op::SLEEP, "ms=3600000");
        echo_round_trip(&mut peer, 1000 + round, format!("round {round}").as_bytes());
        peer.request(2000 + round, op::INFO, "");
        let f = peer.response(2000 + round);
        assert_eq!(f.header.code, status::OK);
        drop(peer);
        let (r, msg) = served.result();
        assert_eq!(r, ServeResult::PeerClosed, "{msg}");
    }
}

#[test]
fn frames_meant_for_weaver_are_ignored() {
    let (mut peer, served) = start(1);
    peer.send(kind::HELLO, 0, 0, b"not for you");
    peer.send(kind::RESPONSE, 7, 0, b"");
    peer.send(kind::PONG, 8, 0, b"x");
    echo_round_trip(&mut peer, 1, b"after ignored frames");
    assert!(shutdown_and_drain(peer, served).is_empty());
}

// ---- the program entry, in-process (argument handling only) --------------

#[test]
fn daemon_main_handles_version_and_bad_arguments() {
    // (--help is checked on the real executable in tests/compute_exe.rs.)
    let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    assert_eq!(ffi::daemon_main(&args(&["compute-daemon", "--version"])), ffi::WC_EXIT_OK as i32);
    assert_eq!(ffi::daemon_main(&args(&["compute-daemon", "--nope"])), ffi::WC_EXIT_USAGE as i32);
    assert_eq!(
        ffi::daemon_main(&args(&["compute-daemon", "--workers", "x"])),
        ffi::WC_EXIT_USAGE as i32
    );
    assert_eq!(ffi::daemon_main(&args(&["compute-daemon", "stray"])), ffi::WC_EXIT_USAGE as i32);
    // getopt state is reset on every call: the same line gives the same answer.
    for _ in 0..2 {
        assert_eq!(ffi::daemon_main(&args(&["compute-daemon", "--workers", "2", "-V"])), 0);
        assert_eq!(ffi::daemon_main(&args(&["compute-daemon", "stray", "--workers", "1"])), 2);
    }
}
