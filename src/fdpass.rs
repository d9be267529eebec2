//! Payloads by file descriptor, the Rust half (the C half is
//! `compute-daemon/src/fdpass.c`; the contract is the PAYLOAD BY FILE
//! DESCRIPTOR section of `include/weaver_compute.h`).
//!
//! A large payload travels as a sealed memfd passed with SCM_RIGHTS on the
//! first byte of its frame, on the compute socket and the control socket
//! alike; weaver passes the very fd on without reading or mapping it.
//! Here: the [`Payload`] a request or reply carries, non-blocking
//! `recvmsg`/`sendmsg` that take and attach fds, and the check of a
//! received fd.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::ffi;

/// Bytes that go by memfd from this size on (`WC_FD_THRESHOLD`).
pub const THRESHOLD: usize = ffi::WC_FD_THRESHOLD as usize;
/// Largest payload one memfd may carry (`WC_MAX_FD_PAYLOAD`).
pub const MAX_FD_PAYLOAD: u64 = ffi::WC_MAX_FD_PAYLOAD;
/// Received fds one connection may hold before their frames are read.
pub const MAX_FDS_IN_FLIGHT: usize = ffi::WC_MAX_FDS_IN_FLIGHT as usize;
/// Room for fds in one receive: more than a frame may carry, so that a
/// peer that sends several is seen and refused, not cut short.
const RECV_FDS: usize = 8;

/// A request's input or a reply's output: bytes in memory, or a sealed
/// memfd of `len` bytes that weaver only passes on.
#[derive(Debug)]
pub enum Payload {
    Bytes(Vec<u8>),
    Fd { fd: OwnedFd, len: u64 },
}

impl Payload {
    /// Bytes the payload stands for.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Bytes(b) => b.len() as u64,
            Payload::Fd { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory weaver holds for it (none for an fd).
    pub fn held(&self) -> usize {
        match self {
            Payload::Bytes(b) => b.len(),
            Payload::Fd { .. } => 0,
        }
    }

    /// The bytes, when they are in memory.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Payload::Bytes(b) => Some(b),
            Payload::Fd { .. } => None,
        }
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Bytes(Vec::new())
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload::Bytes(v)
    }
}

/// Equal bytes, or the same open fd and length.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Payload::Bytes(a), Payload::Bytes(b)) => a == b,
            (Payload::Fd { fd: a, len: m }, Payload::Fd { fd: b, len: n }) => {
                a.as_raw_fd() == b.as_raw_fd() && m == n
            }
            _ => false,
        }
    }
}

impl PartialEq<[u8]> for Payload {
    fn eq(&self, other: &[u8]) -> bool {
        self.bytes() == Some(other)
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Payload {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.bytes() == Some(&other[..])
    }
}

/// The fd that came with a frame, if the frame carries one. Frames compare
/// by it as by identity; a clone is a `dup`.
#[derive(Debug, Default)]
pub struct FdSlot(pub Option<OwnedFd>);

impl Clone for FdSlot {
    fn clone(&self) -> Self {
        FdSlot(self.0.as_ref().and_then(|f| f.try_clone().ok()))
    }
}

impl PartialEq for FdSlot {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_ref().map(|f| f.as_raw_fd()) == other.0.as_ref().map(|f| f.as_raw_fd())
    }
}

impl Eq for FdSlot {}

/// Why a received fd is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFd(pub String);

impl fmt::Display for BadFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Check a received fd against the contract (a memfd sealed against
/// shrink, grow and write, of exactly `len` bytes, within the limit).
pub fn check(fd: BorrowedFd<'_>, len: u64) -> Result<(), BadFd> {
    ffi::fd_check(fd, len).map_err(|(_, m)| BadFd(m))
}

/// The payload a frame announced by fd: its 8 inline bytes are the size,
/// the fd must have come and pass [`check`]. The fd is closed on refusal.
pub fn announced(inline: &[u8], fd: Option<OwnedFd>) -> Result<Payload, BadFd> {
    let Ok(size) = <[u8; 8]>::try_from(inline) else {
        return Err(BadFd(format!(
            "a frame carrying its payload by fd has {} inline bytes, not the 8 size bytes",
            inline.len()
        )));
    };
    let len = u64::from_le_bytes(size);
    let Some(fd) = fd else {
        return Err(BadFd(format!(
            "the frame announced a {len}-byte payload fd but none came with it"
        )));
    };
    check(fd.as_fd(), len)?;
    Ok(Payload::Fd { fd, len })
}

/// A sealed memfd holding `data` (for inputs over the threshold, and for
/// tests).
pub fn sealed_memfd(data: &[u8]) -> io::Result<OwnedFd> {
    use std::os::unix::fs::FileExt;
    let fd = ffi::memfd_create(data.len() as u64).map_err(|(e, m)| io_err(e, m))?;
    let f = std::fs::File::from(fd);
    f.write_all_at(data, 0)?;
    let fd = OwnedFd::from(f);
    ffi::memfd_seal(fd.as_fd()).map_err(|(e, m)| io_err(e, m))?;
    Ok(fd)
}

fn io_err(errno: i32, msg: String) -> io::Error {
    io::Error::new(io::Error::from_raw_os_error(errno).kind(), msg)
}

/// `recvmsg` into `buf` without blocking (or blocking, if the socket is),
/// the fds that come along (close-on-exec) appended to `fds`. Ancillary
/// data cut short, or more than [`MAX_FDS_IN_FLIGHT`] fds held, is an
/// `InvalidData` error with every fd taken closed.
pub fn recv(
    sock: RawFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    unsafe { recv_raw(sock, buf.as_mut_ptr(), buf.len(), fds, flags) }
}

/// [`recv`] into the spare capacity of `v` (never past it).
pub fn recv_spare(sock: RawFd, v: &mut Vec<u8>, fds: &mut VecDeque<OwnedFd>) -> io::Result<usize> {
    let spare = v.capacity() - v.len();
    // SAFETY: the kernel writes at most `spare` bytes into the vector's
    // reserved, unused capacity.
    let n = unsafe { recv_raw(sock, v.as_mut_ptr().add(v.len()), spare, fds, 0)? };
    // SAFETY: the kernel initialised exactly `n` bytes past the old length.
    unsafe { v.set_len(v.len() + n) };
    Ok(n)
}

/// # Safety
/// `ptr` must be writable for `len` bytes.
unsafe fn recv_raw(
    sock: RawFd,
    ptr: *mut u8,
    len: usize,
    fds: &mut VecDeque<OwnedFd>,
    flags: libc::c_int,
) -> io::Result<usize> {
    #[repr(C)]
    union Control {
        _align: libc::cmsghdr,
        buf: [u8; 128],
    }
    // SAFETY: plain old data, zeroed.
    let mut control: Control = unsafe { std::mem::zeroed() };
    // SAFETY: computing the space for RECV_FDS ints, a constant.
    let space = unsafe { libc::CMSG_SPACE((RECV_FDS * std::mem::size_of::<RawFd>()) as u32) };
    debug_assert!(space as usize <= std::mem::size_of::<Control>());
    let mut iov = libc::iovec { iov_base: ptr.cast(), iov_len: len };
    // SAFETY: zeroed msghdr, then its pointers set to live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: reading the union's byte view of zeroed memory.
    msg.msg_control = unsafe { control.buf.as_mut_ptr() }.cast();
    msg.msg_controllen = space as usize;
    // SAFETY: msg points at valid buffers for the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let before = fds.len();
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let k = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..k {
                    let mut f: RawFd = -1;
                    std::ptr::copy_nonoverlapping(
                        data.add(i * std::mem::size_of::<RawFd>()),
                        (&mut f as *mut RawFd).cast::<u8>(),
                        std::mem::size_of::<RawFd>(),
                    );
                    fds.push_back(OwnedFd::from_raw_fd(f));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        fds.truncate(before);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "ancillary data cut short (MSG_CTRUNC): fds were lost, which fd belongs to which \
             frame is no longer known",
        ));
    }
    if fds.len() > MAX_FDS_IN_FLIGHT {
        fds.truncate(before);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {MAX_FDS_IN_FLIGHT} payload fds in flight on one connection"),
        ));
    }
    Ok(n as usize)
}

/// `sendmsg` of `bufs` with `fd` attached to their first byte.
pub fn send_with_fd(sock: RawFd, bufs: &[IoSlice<'_>], fd: BorrowedFd<'_>) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        sock,
        bufs,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_arrive_in_order_and_a_refused_one_is_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let one = sealed_memfd(b"one").unwrap();
        let n = send_with_fd(a.as_raw_fd(), &[IoSlice::new(b"xy")], one.as_fd()).unwrap();
        assert_eq!(n, 2);
        let mut fds = VecDeque::new();
        let mut buf = [0u8; 16];
        let n = recv(b.as_raw_fd(), &mut buf, &mut fds, 0).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"xy"[..], 1));
        let p = announced(&3u64.to_le_bytes(), fds.pop_front()).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.held(), 0);
        let e = announced(&4u64.to_le_bytes(), Some(sealed_memfd(b"one").unwrap())).unwrap_err();
        assert!(e.0.contains("holds 3 bytes"), "{e}");
        let e = announced(&4u64.to_le_bytes(), None).unwrap_err();
        assert!(e.0.contains("none came"), "{e}");
        assert!(announced(b"short", None).is_err());
    }
}
