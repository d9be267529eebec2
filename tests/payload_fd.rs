//! Payloads by fd through the whole of weaver: the real daemon and compute
//! daemon, the CLI and the library client, on a private runtime dir.
//! Large inputs and outputs go as sealed memfds that weaver passes on
//! unread; every way a client can get an fd wrong is refused with a clear
//! error; and no fd is left behind in weaver or compute.

mod util;

use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use util::{render_reference, wait_for, TestEnv};
use weaver::client::Reply;
use weaver::frame;
use weaver::protocol::{self, ClientMsg, ErrorKind, Request, Response, ServerMsg};

fn echo() -> Request {
    Request::Compute { op: "echo".into(), timeout_ms: None }
}

/// Open fds of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A memfd named `name`, `size` bytes (sparse), `marks` written at their
/// offsets, sealed or not.
fn memfd(name: &str, size: u64, marks: &[(u64, &[u8])], seal: bool) -> OwnedFd {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: c is NUL-terminated; the result is checked.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd, ours alone.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(size).unwrap();
    for (at, bytes) in marks {
        f.write_all_at(bytes, *at).unwrap();
    }
    let fd = OwnedFd::from(f);
    if seal {
        weaver::ffi::memfd_seal(fd.as_fd()).unwrap();
    }
    fd
}

/// A file of `len` bytes in a pattern that repeats only every 251 bytes.
fn pattern_file(path: &Path, len: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let chunk: Vec<u8> = (0..251 * 4096).map(|i| (i % 251) as u8).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

/// Whether two files hold the same bytes, compared in 1 MiB pieces.
fn same_files(a: &Path, b: &Path) -> bool {
    let (fa, fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    if fb.metadata().unwrap().len() != len {
        return false;
    }
    let (mut p, mut q) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(p.len());
        fa.read_exact_at(&mut p[..n], off).unwrap();
        fb.read_exact_at(&mut q[..n], off).unwrap();
        if p[..n] != q[..n] {
            return false;
        }
        off += n as u64;
    }
    true
}

fn echo_file_through_the_cli(len: usize) {
    let env = TestEnv::new();
    env.status();
    let (input, output) = (env.tmp.path().join("in.bin"), env.tmp.path().join("out.bin"));
    pattern_file(&input, len);
    env.ok(&[
        "compute",
        "echo",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(same_files(&input, &output), "echo of {len} bytes came back different");
}

#[test]
fn echo_of_17_mib_is_byte_exact_through_weaver() {
    echo_file_through_the_cli(17 << 20);
}

#[test]
fn echo_of_64_mib_is_byte_exact_through_weaver() {
    echo_file_through_the_cli(64 << 20);
}

#[test]
fn echo_of_64_mib_from_stdin_to_stdout_is_byte_exact() {
    let env = TestEnv::new();
    env.status();
    let (input, output) = (env.tmp.path().join("in.bin"), env.tmp.path().join("out.bin"));
    pattern_file(&input, 64 << 20);
    let mut c = env.cmd();
    c.args(["compute", "echo", "--input", "-"])
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::process::Stdio::piped());
    let out = util::wait_output(c.spawn().unwrap(), Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(same_files(&input, &output));
}

#[test]
fn echo_of_a_sparse_1_gib_memfd_comes_back_as_the_same_memfd() {
    let env = TestEnv::new();
    env.status();
    let size = 1u64 << 30;
    let sent = memfd(
        "wvtest-1gib",
        size,
        &[(0, b"first"), (size / 2, b"middle"), (size - 4, b"last")],
        true,
    );
    let mut c = env.client();
    let r = c.call_fd(echo(), sent.as_fd(), size).unwrap();
    assert_eq!(r.resp, Response::ComputeOk);
    let (back, len) = r.fd.expect("a 1 GiB reply comes by fd");
    assert_eq!(len, size);
    // Passed on, never copied: the very memfd that was sent.
    let (a, b) = (nix::sys::stat::fstat(&sent).unwrap(), nix::sys::stat::fstat(&back).unwrap());
    assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
    assert_eq!(b.st_size as u64, size);
    let f = std::fs::File::from(back);
    for (at, want) in [(0u64, &b"first"[..]), (size / 2, b"middle"), (size - 4, b"last")] {
        let mut got = vec![0u8; want.len()];
        f.read_exact_at(&mut got, at).unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn render_of_4096x4096_matches_the_reference_render() {
    let env = TestEnv::new();
    env.status();
    let out = env.tmp.path().join("img.ppm");
    env.ok(&[
        "compute",
        "render",
        "width=4096",
        "height=4096",
        "iterations=12",
        "x_min=-2.0",
        "x_max=0.5",
        "y_min=-1.0",
        "y_max=1.0",
        "--output",
        out.to_str().unwrap(),
    ]);
    let want = render_reference(4096, 4096, 12, [-2.0, 0.5, -1.0, 1.0]);
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the 4096x4096 image differs from the reference");
}

// ---- clients that get the fd wrong -----------------------------------------

/// A handshaken raw control connection, for frames the library would not
/// send.
fn raw(env: &TestEnv) -> UnixStream {
    let s = env.client().into_stream();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A compute echo frame that announces `size` bytes by fd, sent with
/// `fds` attached.
fn send_fd_request(s: &UnixStream, tag: u64, size: u64, fds: &[RawFd]) {
    let meta = protocol::encode(&ClientMsg { tag, req: echo() });
    let mut bytes = frame::prefix_fd(meta.len()).to_vec();
    bytes.extend_from_slice(&meta);
    bytes.extend_from_slice(&size.to_le_bytes());
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let n = sendmsg::<()>(s.as_raw_fd(), &[IoSlice::new(&bytes)], cmsgs, MsgFlags::empty(), None)
        .unwrap();
    assert_eq!(n, bytes.len());
}

fn read_reply(s: &mut UnixStream) -> Option<ServerMsg> {
    let f = weaver::stream::read_frame(&mut frame::Decoder::new(), s).ok()??;
    Some(protocol::decode(&f.meta, "reply").unwrap())
}

fn expect_refused(s: &mut UnixStream, tag: u64, words: &str) {
    let m = read_reply(s).expect("a reply");
    assert_eq!(m.tag, tag);
    match m.resp {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
            assert!(e.message.contains(words), "{:?} should say {words:?}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The connection still serves: an inline echo comes back.
fn still_serving(s: &mut UnixStream, tag: u64) {
    let meta = protocol::encode(&ClientMsg { tag, req: echo() });
    weaver::stream::write_control(s, &meta, b"ping").unwrap();
    let m = read_reply(s).expect("a reply");
    assert_eq!((m.tag, m.resp), (tag, Response::ComputeOk));
}

#[test]
fn bad_payload_fds_are_refused_clearly_and_leak_nothing() {
    let env = TestEnv::new();
    env.status();
    let daemon = env.daemon_pid().unwrap();
    let compute = env.compute_pid();
    let mut s = raw(&env);
    still_serving(&mut s, 1);
    let (d0, c0) = (fd_count(daemon), fd_count(compute));

    // An unsealed memfd.
    let fd = memfd("wvtest-unsealed", 4096, &[], false);
    send_fd_request(&s, 2, 4096, &[fd.as_raw_fd()]);
    drop(fd);
    expect_refused(&mut s, 2, "not sealed");
    // A regular file.
    let path = env.tmp.path().join("plain.bin");
    std::fs::write(&path, vec![1u8; 4096]).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    send_fd_request(&s, 3, 4096, &[f.as_raw_fd()]);
    drop(f);
    expect_refused(&mut s, 3, "regular file");
    // A pipe.
    let (r, w) = nix::unistd::pipe().unwrap();
    send_fd_request(&s, 4, 4096, &[r.as_raw_fd()]);
    drop((r, w));
    expect_refused(&mut s, 4, "pipe");
    // A sealed memfd of another size than announced.
    let fd = memfd("wvtest-size", 4096, &[], true);
    send_fd_request(&s, 5, 8192, &[fd.as_raw_fd()]);
    drop(fd);
    expect_refused(&mut s, 5, "announced 8192");
    // None where one is announced.
    send_fd_request(&s, 6, 4096, &[]);
    expect_refused(&mut s, 6, "none came");
    still_serving(&mut s, 7);
    assert!(
        wait_for(Duration::from_secs(10), || fd_count(daemon) == d0 && fd_count(compute) == c0),
        "fds left open: daemon {} -> {}, compute {} -> {}",
        d0,
        fd_count(daemon),
        c0,
        fd_count(compute)
    );

    // Two fds with one frame: which is which is unknown, so the connection
    // ends (and both are closed); everybody else is served on.
    let other = env.client();
    let (a, b) = (memfd("wvtest-two", 4096, &[], true), memfd("wvtest-two", 4096, &[], true));
    send_fd_request(&s, 8, 4096, &[a.as_raw_fd(), b.as_raw_fd()]);
    drop((a, b));
    let m = read_reply(&mut s).expect("the reason, before the connection ends");
    match m.resp {
        Response::Error(e) => assert!(e.message.contains("carry none"), "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(read_reply(&mut s).is_none(), "the connection is closed");
    drop(s);
    let mut other = other;
    let r = other.call(echo(), b"still here").unwrap();
    assert_eq!(r.payload, b"still here");
    drop(other);
    assert!(
        wait_for(Duration::from_secs(10), || fd_count(daemon) == d0 - 1),
        "daemon fds: {} before (one of them the closed connection), {} after",
        d0,
        fd_count(daemon)
    );
    assert!(env.log().contains("carry none"), "the daemon logs why");
}

#[test]
fn a_client_that_dies_with_fds_in_flight_leaks_nothing() {
    let env = TestEnv::new();
    env.status();
    let daemon = env.daemon_pid().unwrap();
    let compute = env.compute_pid();
    // A quiet moment to count from (the status clients are gone).
    let mut c = env.client();
    c.call(echo(), b"x").unwrap();
    let (d0, c0) = (fd_count(daemon), fd_count(compute));
    // Requests by fd and large renders in flight, then the client is gone.
    for _ in 0..5 {
        let mut s = raw(&env);
        let big = memfd("wvtest-dying", 32 << 20, &[(0, b"x")], true);
        let meta = protocol::encode(&ClientMsg {
            tag: 1,
            req: Request::Compute { op: "render".into(), timeout_ms: None },
        });
        weaver::stream::write_control(&mut s, &meta, b"width=4096 height=4096 iterations=4")
            .unwrap();
        send_fd_request(&s, 2, 32 << 20, &[big.as_raw_fd()]);
        drop(big);
        // Both requests are in weaver (the replies' order is compute's).
        let _ = read_reply(&mut s).expect("one reply");
        drop(s);
    }
    // And a CLI client killed mid-transfer.
    let mut child = env
        .cmd()
        .args(["compute", "render", "width=4096", "height=4096", "iterations=50"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let connected = format!("connected (pid {})", child.id());
    assert!(wait_for(Duration::from_secs(10), || env.log().contains(&connected)));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || fd_count(daemon) == d0 && fd_count(compute) == c0),
        "fds left open: daemon {d0} -> {}, compute {c0} -> {}",
        fd_count(daemon),
        fd_count(compute)
    );
    let r = c.call(echo(), b"fine").unwrap();
    assert_eq!(r.payload, b"fine");
}

#[test]
fn fd_counts_of_weaver_and_compute_are_unchanged_after_10000_requests_by_fd() {
    let env = TestEnv::new();
    env.status();
    let daemon = env.daemon_pid().unwrap();
    let compute = env.compute_pid();
    let mut c = env.client();
    c.call(echo(), b"warm").unwrap();
    let (d0, c0) = (fd_count(daemon), fd_count(compute));
    for i in 0..10_000u64 {
        let fd = memfd("wvtest-10k", 4096, &[(0, &i.to_le_bytes())], true);
        let r: Reply = c.call_fd(echo(), fd.as_fd(), 4096).unwrap();
        let (back, len) = r.fd.expect("echo by fd answers by fd");
        assert_eq!(len, 4096);
        let mut v = [0u8; 8];
        std::fs::File::from(back).read_exact_at(&mut v, 0).unwrap();
        assert_eq!(u64::from_le_bytes(v), i);
    }
    assert!(
        wait_for(Duration::from_secs(10), || fd_count(daemon) == d0 && fd_count(compute) == c0),
        "fds after 10,000 requests: daemon {d0} -> {}, compute {c0} -> {}",
        fd_count(daemon),
        fd_count(compute)
    );
}
