//! Payloads by file descriptor through the C helpers (fdpass.c, via FFI):
//! sealed memfds sent with SCM_RIGHTS over a real socket pair, every way a
//! peer can get it wrong refused with its own result, and no fd left open
//! on any path (each test's fds are found by a name or inode of its own in
//! /proc/self/fd, so tests running beside each other do not disturb the
//! count).

use std::ffi::CString;
use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use weaver::ffi::{self, wc_fd_result};
use weaver::wire::{self, kind, status};

/// Open fds of this process whose link names `target` (a memfd name, a
/// `pipe:[inode]`, a path).
fn open_fds_to(target: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains(target))
        .count()
}

/// A memfd named `name` (unique per test) of `size` bytes, `head` written
/// at offset 0, sealed or not.
fn memfd(name: &str, size: u64, head: &[u8], seal: bool) -> OwnedFd {
    let c = CString::new(name).unwrap();
    // SAFETY: c is NUL-terminated; the result is checked.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd, ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let f = std::fs::File::from(fd);
    f.set_len(size).unwrap();
    f.write_all_at(head, 0).unwrap();
    let fd = OwnedFd::from(f);
    if seal {
        ffi::memfd_seal(fd.as_fd()).unwrap();
    }
    fd
}

/// The 32 bytes of a `*_FD` frame announcing `size`, sent with `fds`
/// attached (any number, any kind of fd), the way a careless peer might.
fn send_raw_fd_frame(sock: &UnixStream, k: u16, id: u64, size: u64, fds: &[RawFd]) {
    let h = wire::Header { kind: k, request_id: id, code: status::OK, payload_len: 8 };
    let mut bytes = h.encode().to_vec();
    bytes.extend_from_slice(&size.to_le_bytes());
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let n =
        sendmsg::<()>(sock.as_raw_fd(), &[IoSlice::new(&bytes)], cmsgs, MsgFlags::empty(), None)
            .unwrap();
    assert_eq!(n, bytes.len());
}

/// A PING right behind a refused frame is read cleanly: the connection is
/// still in step.
fn still_in_step(a: &mut UnixStream, b: &UnixStream) {
    a.write_all(&wire::encode_frame(kind::PING, 99, 0, b"")).unwrap();
    let (h, _, fd) = ffi::recv_fd_frame(b.as_fd()).expect("the next frame reads cleanly");
    assert_eq!((h.kind, h.request_id), (kind::PING, 99));
    assert!(fd.is_none());
}

fn refused(b: &UnixStream) -> ffi::FdRefused {
    ffi::recv_fd_frame(b.as_fd()).expect_err("the frame must be refused")
}

fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GETFD on an fd we hold.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    flags >= 0 && flags & libc::FD_CLOEXEC != 0
}

/// Whether two files hold the same `len` bytes, compared in 1 MiB pieces
/// (never the whole file in memory).
fn same_bytes(x: &std::fs::File, y: &std::fs::File, len: u64) -> bool {
    let (mut p, mut q) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(p.len());
        x.read_exact_at(&mut p[..n], off).unwrap();
        y.read_exact_at(&mut q[..n], off).unwrap();
        if p[..n] != q[..n] {
            return false;
        }
        off += n as u64;
    }
    true
}

#[test]
fn a_sealed_memfd_of_17_mib_arrives_checked_close_on_exec_and_byte_exact() {
    let (a, b) = UnixStream::pair().unwrap();
    let size = 17u64 << 20;
    let fd = ffi::memfd_create(size).unwrap();
    let f = std::fs::File::from(fd);
    let pattern: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    f.write_all_at(&pattern, 0).unwrap();
    let fd = OwnedFd::from(f);
    ffi::memfd_seal(fd.as_fd()).unwrap();
    ffi::send_fd_frame(a.as_fd(), kind::RESPONSE_FD, 41, status::OK, size, fd.as_fd()).unwrap();
    let (h, got_size, got) = ffi::recv_fd_frame(b.as_fd()).unwrap();
    assert_eq!((h.kind, h.request_id, h.code), (kind::RESPONSE_FD, 41, status::OK));
    assert_eq!(h.payload_len as usize, wire::FD_INFO_SIZE);
    assert_eq!(got_size, size);
    let got = got.expect("an fd came with the frame");
    assert!(is_cloexec(got.as_fd()), "received fds are close-on-exec");
    let got = std::fs::File::from(got);
    let mut back = vec![0u8; size as usize];
    got.read_exact_at(&mut back, 0).unwrap();
    assert!(back == pattern, "the payload read back differs");
    // Sealed: the receiver cannot change what it checked.
    assert!(got.set_len(1).is_err(), "a sealed memfd cannot shrink");
}

#[test]
fn a_sparse_1_gib_memfd_passes_without_being_read_into_memory() {
    let (a, b) = UnixStream::pair().unwrap();
    let size = 1u64 << 30;
    let name = format!("wvtest-sparse-{}", std::process::id());
    let fd = memfd(&name, size, b"head", false);
    let f = std::fs::File::from(fd);
    f.write_all_at(b"tail", size - 4).unwrap();
    let fd = OwnedFd::from(f);
    ffi::memfd_seal(fd.as_fd()).unwrap();
    ffi::send_fd_frame(a.as_fd(), kind::REQUEST_FD, 5, 1, size, fd.as_fd()).unwrap();
    let (h, got_size, got) = ffi::recv_fd_frame(b.as_fd()).unwrap();
    assert_eq!((h.kind, got_size), (kind::REQUEST_FD, size));
    let got = std::fs::File::from(got.unwrap());
    // Streamed in 1 MiB pieces, compared with the same walk of the sent fd.
    let sent = std::fs::File::from(fd);
    assert!(same_bytes(&got, &sent, size), "the 1 GiB payload differs");
    let mut t = [0u8; 4];
    got.read_exact_at(&mut t, size - 4).unwrap();
    assert_eq!(&t, b"tail");
    drop((got, sent));
    assert_eq!(open_fds_to(&name), 0);
}

#[test]
fn an_unsealed_memfd_is_refused_closed_and_the_connection_goes_on() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let name = format!("wvtest-unsealed-{}", std::process::id());
    let fd = memfd(&name, 10, b"0123456789", false);
    send_raw_fd_frame(&a, kind::RESPONSE_FD, 3, 10, &[fd.as_raw_fd()]);
    drop(fd);
    let r = refused(&b);
    assert_eq!(r.result, wc_fd_result::WC_FD_UNSEALED, "{}", r.message);
    assert_eq!(r.header.request_id, 3, "the refusal still names the request");
    assert!(r.message.contains("not sealed"), "{}", r.message);
    assert_eq!(open_fds_to(&name), 0, "the refused fd is closed");
    still_in_step(&mut a, &b);
}

#[test]
fn a_regular_file_is_refused_as_not_a_memfd() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payload.bin");
    std::fs::write(&path, b"0123456789").unwrap();
    let f = std::fs::File::open(&path).unwrap();
    send_raw_fd_frame(&a, kind::RESPONSE_FD, 4, 10, &[f.as_raw_fd()]);
    drop(f);
    let r = refused(&b);
    assert_eq!(r.result, wc_fd_result::WC_FD_NOT_MEMFD, "{}", r.message);
    assert!(r.message.contains("regular file"), "{}", r.message);
    assert_eq!(open_fds_to(&path.to_string_lossy()), 0);
    still_in_step(&mut a, &b);
}

#[test]
fn a_pipe_is_refused_as_not_a_memfd() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let (r_end, w_end) = nix::unistd::pipe().unwrap();
    let st = nix::sys::stat::fstat(&r_end).unwrap();
    let link = format!("pipe:[{}]", st.st_ino);
    send_raw_fd_frame(&a, kind::REQUEST_FD, 5, 10, &[r_end.as_raw_fd()]);
    drop((r_end, w_end));
    let r = refused(&b);
    assert_eq!(r.result, wc_fd_result::WC_FD_NOT_MEMFD, "{}", r.message);
    assert!(r.message.contains("pipe"), "{}", r.message);
    assert_eq!(open_fds_to(&link), 0);
    still_in_step(&mut a, &b);
}

#[test]
fn two_fds_with_one_frame_are_refused_and_both_closed() {
    let (a, b) = UnixStream::pair().unwrap();
    let name = format!("wvtest-two-{}", std::process::id());
    let one = memfd(&name, 4, b"abcd", true);
    let two = memfd(&name, 4, b"abcd", true);
    send_raw_fd_frame(&a, kind::RESPONSE_FD, 6, 4, &[one.as_raw_fd(), two.as_raw_fd()]);
    drop((one, two));
    let r = refused(&b);
    assert_eq!(r.result, wc_fd_result::WC_FD_EXTRA, "{}", r.message);
    assert!(r.message.contains("2 fds"), "{}", r.message);
    assert_eq!(open_fds_to(&name), 0);
}

#[test]
fn a_frame_announcing_an_fd_without_one_is_refused_and_the_connection_goes_on() {
    let (mut a, b) = UnixStream::pair().unwrap();
    send_raw_fd_frame(&a, kind::RESPONSE_FD, 7, 100, &[]);
    let r = refused(&b);
    assert_eq!(r.result, wc_fd_result::WC_FD_MISSING, "{}", r.message);
    assert!(r.message.contains("none came"), "{}", r.message);
    assert_eq!(r.header.request_id, 7);
    still_in_step(&mut a, &b);
}

#[test]
fn an_fd_with_a_frame_that_carries_none_is_refused_and_closed() {
    let (a, b) = UnixStream::pair().unwrap();
    let name = format!("wvtest-stray-{}", std::process::id());
    let fd = memfd(&name, 4, b"abcd", true);
    let bytes = wire::encode_frame(kind::PING, 8, 0, b"");
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        a.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    drop(fd);
    let r = refused(&b);
    assert_eq!(r.result, wc_fd_result::WC_FD_EXTRA, "{}", r.message);
    assert!(r.message.contains("PING"), "{}", r.message);
    assert_eq!(open_fds_to(&name), 0);
}

#[test]
fn a_memfd_of_another_size_than_announced_is_refused() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let name = format!("wvtest-size-{}", std::process::id());
    let fd = memfd(&name, 10, b"0123456789", true);
    send_raw_fd_frame(&a, kind::RESPONSE_FD, 9, 11, &[fd.as_raw_fd()]);
    drop(fd);
    let r = refused(&b);
    assert_eq!(r.result, wc_fd_result::WC_FD_BAD_SIZE, "{}", r.message);
    assert!(r.message.contains("holds 10 bytes") && r.message.contains("announced 11"));
    assert_eq!(open_fds_to(&name), 0);
    still_in_step(&mut a, &b);
    // Over the documented limit: refused before anything is mapped or read.
    assert!(ffi::memfd_create(wire::MAX_FD_PAYLOAD + 1).is_err());
}

#[test]
fn ancillary_data_cut_short_is_refused_and_every_fd_that_came_is_closed() {
    let (a, b) = UnixStream::pair().unwrap();
    let name = format!("wvtest-ctrunc-{}", std::process::id());
    let fds: Vec<OwnedFd> = (0..40).map(|_| memfd(&name, 4, b"abcd", true)).collect();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    send_raw_fd_frame(&a, kind::RESPONSE_FD, 10, 4, &raw);
    drop(fds);
    let r = refused(&b);
    assert_eq!(r.result, wc_fd_result::WC_FD_TRUNCATED, "{}", r.message);
    assert!(r.message.contains("MSG_CTRUNC"), "{}", r.message);
    assert_eq!(open_fds_to(&name), 0);
}

#[test]
fn fd_counts_are_unchanged_after_10000_fd_frames() {
    let (a, b) = UnixStream::pair().unwrap();
    let name = format!("wvtest-loop-{}", std::process::id());
    let sender = std::thread::spawn(move || {
        for i in 0..10_000u64 {
            let fd = memfd(&name, 8, &i.to_le_bytes(), true);
            ffi::send_fd_frame(a.as_fd(), kind::RESPONSE_FD, i, status::OK, 8, fd.as_fd()).unwrap();
        }
        name
    });
    for i in 0..10_000u64 {
        let (h, size, fd) = ffi::recv_fd_frame(b.as_fd()).unwrap();
        assert_eq!((h.request_id, size), (i, 8));
        let f = std::fs::File::from(fd.unwrap());
        let mut v = [0u8; 8];
        f.read_exact_at(&mut v, 0).unwrap();
        assert_eq!(u64::from_le_bytes(v), i);
    }
    let name = sender.join().unwrap();
    assert_eq!(open_fds_to(&name), 0, "every payload fd of 10,000 frames is closed");
}

#[test]
fn results_have_names() {
    assert_eq!(ffi::fd_result_str(wc_fd_result::WC_FD_UNSEALED), "payload memfd is not sealed");
    assert_eq!(ffi::status_str(status::BAD_FD), "bad payload fd");
    assert_eq!(wire::status::name(status::BAD_FD), "bad payload fd");
}

// The contract promises payload fds of at least 4 GiB.
const _: () = assert!(wire::MAX_FD_PAYLOAD >= 4 << 30);
