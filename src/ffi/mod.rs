//! The C compute library (`compute-daemon/src`, contract in
//! `include/weaver_compute.h`): bindgen bindings, re-exported as they are,
//! and thin safe wrappers that tests and the `compute-daemon` binary use.
//!
//! `bindings.rs` is generated (see `build.rs`, feature `regen-bindings`);
//! never edit it by hand.

#[rustfmt::skip]
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_docs,
    unreachable_pub,
    clippy::all
)]
mod bindings;

pub use bindings::*;

/// Every generated item under its C name, including the raw functions that
/// the safe wrappers below shadow (`raw::socket_connect`).
pub mod raw {
    pub use super::bindings::*;
}

use std::ffi::{c_char, CStr, CString, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

/// Room for the C side's one-line messages.
const ERR_LEN: usize = 1024;

/// Why [`serve`] returned (`enum wc_serve_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeResult {
    /// The socket reached end of file or hung up.
    PeerClosed,
    /// The watched fd (the daemon's stdin) reached end of file.
    WatchClosed,
    /// A SHUTDOWN frame arrived.
    Shutdown,
    /// The stop fd became readable.
    Stopped,
    /// The peer sent a header that cannot be trusted.
    Protocol,
    /// I/O or resource failure.
    Error,
}

impl From<wc_serve_result> for ServeResult {
    fn from(r: wc_serve_result) -> Self {
        match r {
            wc_serve_result::WC_SERVE_PEER_CLOSED => ServeResult::PeerClosed,
            wc_serve_result::WC_SERVE_WATCH_CLOSED => ServeResult::WatchClosed,
            wc_serve_result::WC_SERVE_SHUTDOWN => ServeResult::Shutdown,
            wc_serve_result::WC_SERVE_STOPPED => ServeResult::Stopped,
            wc_serve_result::WC_SERVE_PROTOCOL => ServeResult::Protocol,
            wc_serve_result::WC_SERVE_ERROR => ServeResult::Error,
        }
    }
}

/// The NUL-terminated text the C side wrote into `buf`.
fn message(buf: &[u8]) -> String {
    match CStr::from_bytes_until_nul(buf) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(buf).into_owned(),
    }
}

/// Static C text as `&'static str` (every string the library returns is
/// ASCII and lives for the whole program).
fn static_str(p: *const c_char) -> &'static str {
    if p.is_null() {
        return "";
    }
    // SAFETY: the library returns pointers to string literals.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
}

/// Connect to the existing Unix stream socket at `path` (`socket_connect`).
/// The fd is blocking and close-on-exec. On failure: the errno and a
/// message that names the path and what to do.
pub fn socket_connect(path: &Path) -> Result<OwnedFd, (i32, String)> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        (libc::EINVAL, format!("compute socket path {} contains a NUL byte", path.display()))
    })?;
    let mut err = [0u8; ERR_LEN];
    // SAFETY: c_path is NUL-terminated; err is writable for err.len() bytes.
    let fd =
        unsafe { bindings::socket_connect(c_path.as_ptr(), err.as_mut_ptr().cast(), err.len()) };
    if fd < 0 {
        return Err((-fd, message(&err)));
    }
    // SAFETY: socket_connect returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Run the request loop (`wc_serve`) on the connected socket `fd` until the
/// peer closes, `watch_fd` reaches end of file, `stop_fd` becomes readable,
/// SHUTDOWN arrives or the peer breaks the protocol. Does not close any fd.
/// Returns why, and the C side's one-line reason.
pub fn serve(
    fd: BorrowedFd<'_>,
    workers: u32,
    watch_fd: Option<RawFd>,
    stop_fd: Option<RawFd>,
    send_hello: bool,
) -> (ServeResult, String) {
    let opts = wc_serve_opts {
        workers,
        watch_fd: watch_fd.unwrap_or(-1),
        stop_fd: stop_fd.unwrap_or(-1),
        send_hello: i32::from(send_hello),
    };
    let mut err = [0u8; ERR_LEN];
    // SAFETY: opts and err outlive the call; wc_serve joins every thread it
    // starts before returning and keeps no pointer to either.
    let r = unsafe { wc_serve(fd.as_raw_fd(), &opts, err.as_mut_ptr().cast(), err.len()) };
    (r.into(), message(&err))
}

/// `wc_daemon_main` uses getopt (process-wide state) and, once it runs,
/// process-wide signal dispositions: one call at a time.
static DAEMON_MAIN: Mutex<()> = Mutex::new(());

/// Run the compute-daemon program (`wc_daemon_main`) with `args` as its
/// argv (`args[0]` is the program name). Returns a `WC_EXIT_*` code.
/// Calls are serialised; an argument with a NUL byte is a usage error.
pub fn daemon_main(args: &[OsString]) -> i32 {
    let mut owned = Vec::with_capacity(args.len());
    for a in args {
        match CString::new(a.as_bytes()) {
            Ok(c) => owned.push(c),
            Err(_) => {
                eprintln!("compute-daemon: argument {a:?} contains a NUL byte");
                return WC_EXIT_USAGE as i32;
            }
        }
    }
    let mut argv: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let argc = i32::try_from(owned.len()).expect("fewer than 2^31 arguments");
    let _one_at_a_time = DAEMON_MAIN.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: argv holds argc valid NUL-terminated strings and a final NULL;
    // getopt may permute the pointers (argv is ours) but never writes the
    // strings; `owned` outlives the call.
    unsafe { wc_daemon_main(argc, argv.as_mut_ptr()) }
}

/// Encode a header into its 24 wire bytes (`wc_header_encode`).
pub fn header_encode(h: &wc_header) -> [u8; WC_HEADER_SIZE as usize] {
    let mut out = [0u8; WC_HEADER_SIZE as usize];
    // SAFETY: out has exactly WC_HEADER_SIZE bytes.
    unsafe { wc_header_encode(h, out.as_mut_ptr()) };
    out
}

/// Decode and check a header (`wc_header_decode`). On failure, the reason
/// and whatever fields were read.
pub fn header_decode(bytes: &[u8]) -> Result<wc_header, (wc_decode_result, wc_header)> {
    let mut h = wc_header::default();
    // SAFETY: bytes is readable for bytes.len(); h is a valid out pointer.
    let r = unsafe { wc_header_decode(bytes.as_ptr(), bytes.len(), &mut h) };
    match r {
        wc_decode_result::WC_DECODE_OK => Ok(h),
        other => Err((other, h)),
    }
}

/// English text for a decode result (`wc_decode_result_str`).
pub fn decode_result_str(r: wc_decode_result) -> &'static str {
    // SAFETY: pure function returning a static string.
    static_str(unsafe { wc_decode_result_str(r) })
}

/// English text for a RESPONSE status (`wc_status_str`).
pub fn status_str(status: u32) -> &'static str {
    // SAFETY: pure function returning a static string.
    static_str(unsafe { wc_status_str(status) })
}

/// Name of an op (`wc_op_name`), "unknown op" for others.
pub fn op_name(op: u32) -> &'static str {
    // SAFETY: pure function returning a static string.
    static_str(unsafe { wc_op_name(op) })
}

/// What [`read_frames`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramesRead {
    /// Each whole frame, in order: its header and payload (empty when
    /// payloads are not kept).
    pub frames: Vec<(wc_header, Vec<u8>)>,
    /// Why reading stopped: [`ServeResult::PeerClosed`] once every byte
    /// was read, [`ServeResult::Protocol`] at an untrustworthy header,
    /// [`ServeResult::Error`] when out of memory.
    pub result: ServeResult,
    /// Bytes of the frame being read when reading stopped, header
    /// included; 0 when it stopped between frames.
    pub partial: usize,
    /// The C side's one-line reason.
    pub message: String,
}

/// Collects the frames [`read_frames`] hands over.
extern "C" fn collect_frame(
    ctx: *mut std::ffi::c_void,
    h: *const wc_header,
    payload: *const u8,
    len: usize,
) {
    // SAFETY: ctx is the `Vec` read_frames passes, alive and not otherwise
    // borrowed during the call; h points to a valid header for the call.
    let (frames, h) = unsafe { (&mut *ctx.cast::<Vec<(wc_header, Vec<u8>)>>(), *h) };
    let payload = if payload.is_null() || len == 0 {
        Vec::new()
    } else {
        // SAFETY: the C side passes `len` readable bytes at `payload`.
        unsafe { std::slice::from_raw_parts(payload, len) }.to_vec()
    };
    frames.push((h, payload));
}

/// Run `bytes` through the compute daemon's frame reader
/// (`wc_read_frames`), as if each socket read returned at most `chunk` of
/// them (0: as many as the reader takes), then end of file; payloads kept
/// or only counted.
pub fn read_frames(bytes: &[u8], chunk: usize, keep: bool) -> FramesRead {
    let mut frames: Vec<(wc_header, Vec<u8>)> = Vec::new();
    let mut partial = 0usize;
    let mut err = [0u8; ERR_LEN];
    // SAFETY: bytes is readable for bytes.len(); collect_frame gets `frames`
    // as ctx and only during this call; partial and err are writable (err
    // for err.len() bytes).
    let r = unsafe {
        wc_read_frames(
            bytes.as_ptr(),
            bytes.len(),
            chunk,
            i32::from(keep),
            Some(collect_frame),
            (&mut frames as *mut Vec<(wc_header, Vec<u8>)>).cast(),
            &mut partial,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    FramesRead { frames, result: r.into(), partial, message: message(&err) }
}

// ---- Payloads by file descriptor (fdpass.c) -------------------------------

/// Why a payload fd was refused: the result and the C side's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdRefused {
    pub result: wc_fd_result,
    /// The header as far as it was read (its request id answers the frame).
    pub header: wc_header,
    pub message: String,
}

/// English text for an fd result (`wc_fd_result_str`).
pub fn fd_result_str(r: wc_fd_result) -> &'static str {
    // SAFETY: pure function returning a static string.
    static_str(unsafe { wc_fd_result_str(r) })
}

/// A sealable, close-on-exec memfd of `size` bytes, sparse
/// (`wc_memfd_create`).
pub fn memfd_create(size: u64) -> Result<OwnedFd, (i32, String)> {
    let mut err = [0u8; ERR_LEN];
    // SAFETY: the name is a NUL-terminated literal; err is writable.
    let fd = unsafe {
        wc_memfd_create(
            b"weaver-payload\0".as_ptr().cast(),
            size,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    if fd < 0 {
        return Err((-fd, message(&err)));
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Seal a payload memfd: no shrink, no grow, no write, no more seals
/// (`wc_memfd_seal`).
pub fn memfd_seal(fd: BorrowedFd<'_>) -> Result<(), (i32, String)> {
    let mut err = [0u8; ERR_LEN];
    // SAFETY: err is writable for err.len() bytes.
    let r = unsafe { wc_memfd_seal(fd.as_raw_fd(), err.as_mut_ptr().cast(), err.len()) };
    if r < 0 {
        return Err((-r, message(&err)));
    }
    Ok(())
}

/// Whether `fd` may carry a payload of `size` bytes (`wc_fd_check`).
pub fn fd_check(fd: BorrowedFd<'_>, size: u64) -> Result<(), (wc_fd_result, String)> {
    let mut err = [0u8; ERR_LEN];
    // SAFETY: err is writable for err.len() bytes; the fd is not closed.
    let r = unsafe { wc_fd_check(fd.as_raw_fd(), size, err.as_mut_ptr().cast(), err.len()) };
    match r {
        wc_fd_result::WC_FD_OK => Ok(()),
        other => Err((other, message(&err))),
    }
}

/// Send a `*_FD` frame announcing `size` bytes with `fd` attached
/// (`wc_send_fd_frame`). Blocking.
pub fn send_fd_frame(
    sock: BorrowedFd<'_>,
    kind: u16,
    request_id: u64,
    code: u32,
    size: u64,
    fd: BorrowedFd<'_>,
) -> Result<(), (i32, String)> {
    let h = wc_header { kind, request_id, code, ..Default::default() };
    let mut err = [0u8; ERR_LEN];
    // SAFETY: h and err outlive the call; neither fd is closed by it.
    let r = unsafe {
        wc_send_fd_frame(
            sock.as_raw_fd(),
            &h,
            size,
            fd.as_raw_fd(),
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    if r < 0 {
        return Err((-r, message(&err)));
    }
    Ok(())
}

/// Read one frame header from a blocking socket with the fds that came
/// with it (`wc_recv_fd_frame`): the header, and for a `*_FD` frame the
/// payload size and its checked memfd. An inline frame's payload is left
/// on the socket for the caller.
pub fn recv_fd_frame(sock: BorrowedFd<'_>) -> Result<(wc_header, u64, Option<OwnedFd>), FdRefused> {
    let mut h = wc_header::default();
    let (mut size, mut fd) = (0u64, -1i32);
    let mut err = [0u8; ERR_LEN];
    // SAFETY: every out pointer is valid for the call; err for err.len().
    let r = unsafe {
        wc_recv_fd_frame(
            sock.as_raw_fd(),
            &mut h,
            &mut size,
            &mut fd,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    match r {
        wc_fd_result::WC_FD_OK => {
            // SAFETY: on WC_FD_OK a non-negative fd is new and ours.
            let fd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
            Ok((h, size, fd))
        }
        other => Err(FdRefused { result: other, header: h, message: message(&err) }),
    }
}
