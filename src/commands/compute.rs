//! `weaver compute`: one compute request, its input from the command line,
//! a file or stdin, its output to stdout or a file.
//!
//! An input from `--input` of at least `fdpass::THRESHOLD` bytes goes in a
//! sealed memfd, filled by an in-kernel copy (`copy_file_range` or
//! `splice`, through `std::io::copy`), and is passed to weaver as the fd; a
//! reply that comes as an fd is copied to `--output` or stdout the same
//! way, never read into this process.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::Ctx;
use crate::cli::ComputeArgs;
use crate::error::{Error, Kind, Result};
use crate::fdpass::{self, THRESHOLD};
use crate::protocol::{ErrorKind as ReplyKind, Request};
use crate::wire::MAX_PAYLOAD;

/// A request's input.
enum Input {
    Bytes(Vec<u8>),
    /// A sealed memfd and its size.
    Fd(OwnedFd, u64),
}

pub(super) fn compute(ctx: &Ctx, a: ComputeArgs) -> Result<()> {
    let input = input(&a)?;
    if let Input::Bytes(payload) = &input {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::new(
                Kind::Request(ReplyKind::TooLarge),
                format!(
                    "input of {} bytes is over the {MAX_PAYLOAD}-byte limit of one inline request; \
                     pass it with --input FILE",
                    payload.len()
                ),
            ));
        }
    }
    let (mut c, _) = ctx.connect()?;
    let req = Request::Compute { op: a.op.clone(), timeout_ms: a.timeout };
    let r = match &input {
        Input::Bytes(payload) => c.call(req, payload),
        Input::Fd(fd, len) => c.call_fd(req, fd.as_fd(), *len),
    }
    .map_err(|e| Error::new(e.kind, format!("compute {} failed: {}", a.op, e.message)))?;
    drop(input);
    let to_file = a.output.as_deref().filter(|p| p.as_os_str() != "-");
    match (r.fd, to_file) {
        (Some((fd, len)), Some(p)) => {
            let out = File::create(p).map_err(|e| Error::io(Kind::Io, "create output", p, &e))?;
            copy_fd(fd, len, out).map_err(|e| Error::io(Kind::Io, "write output to", p, &e))
        }
        (Some((fd, len)), None) => copy_fd(fd, len, io::stdout().lock()).map_err(stdout_err),
        (None, Some(p)) => {
            std::fs::write(p, &r.payload).map_err(|e| Error::io(Kind::Io, "write output to", p, &e))
        }
        (None, None) => crate::output::write_bytes(&mut io::stdout().lock(), &r.payload),
    }
}

/// Copy `len` bytes of a payload memfd, from offset 0 (its file offset is
/// shared with whoever else holds it, so it is never used), to `out` in
/// the kernel: `copy_file_range` to a regular file, `sendfile` to anything
/// else (a pipe, a socket, a terminal).
fn copy_fd(fd: OwnedFd, len: u64, out: impl AsFd + Write) -> io::Result<()> {
    let (src, dst) = (fd.as_raw_fd(), out.as_fd().as_raw_fd());
    let is_file = nix::sys::stat::fstat(out.as_fd())
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    let mut off: i64 = 0;
    let mut use_cfr = is_file;
    while (off as u64) < len {
        let want = ((len - off as u64) as usize).min(1 << 30);
        // SAFETY: plain syscalls on fds we hold; `off` is ours.
        let n = unsafe {
            if use_cfr {
                libc::copy_file_range(src, &mut off, dst, std::ptr::null_mut(), want, 0)
            } else {
                libc::sendfile(dst, src, &mut off, want)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not between these two files: sendfile does any pair.
                Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP) if use_cfr => {
                    use_cfr = false;
                    continue;
                }
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the reply held {off} of its {len} bytes"),
            ));
        }
    }
    Ok(())
}

fn stdout_err(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Error::new(Kind::StdoutClosed, "standard output is closed")
    } else {
        Error::new(Kind::Io, format!("cannot write to standard output: {e}"))
    }
}

/// The request's input: `--data`, `--input` (a file or - for stdin), or the
/// KEY=VALUE parameters one a line.
fn input(a: &ComputeArgs) -> Result<Input> {
    let either =
        || Error::new(Kind::Usage, "give either --data/--input or KEY=VALUE parameters, not both");
    if let Some(d) = &a.data {
        if !a.params.is_empty() {
            return Err(either());
        }
        return Ok(Input::Bytes(d.clone().into_bytes()));
    }
    if let Some(p) = &a.input {
        if !a.params.is_empty() {
            return Err(either());
        }
        let res = if p.as_os_str() == "-" {
            read_input(&mut io::stdin().lock())
        } else {
            File::open(p).and_then(|mut f| read_input(&mut f))
        };
        return res.map_err(|e| Error::io(Kind::Usage, "read input", p, &e));
    }
    for p in &a.params {
        if !p.contains('=') || p.starts_with('=') {
            return Err(Error::new(Kind::Usage, format!("parameter {p:?} is not KEY=VALUE")));
        }
    }
    Ok(Input::Bytes(a.params.join("\n").into_bytes()))
}

/// Up to the threshold into memory; past it, everything into a sealed
/// memfd (what was read first, then the rest copied in the kernel).
fn read_input<R: Read>(r: &mut R) -> io::Result<Input> {
    let mut buf = Vec::new();
    r.take(THRESHOLD as u64).read_to_end(&mut buf)?;
    if buf.len() < THRESHOLD {
        return Ok(Input::Bytes(buf));
    }
    let fd = crate::ffi::memfd_create(0)
        .map_err(|(e, m)| io::Error::new(io::Error::from_raw_os_error(e).kind(), m))?;
    let mut f = File::from(fd);
    f.write_all(&buf)?;
    drop(buf);
    let len = THRESHOLD as u64 + io::copy(r, &mut f)?;
    if len > fdpass::MAX_FD_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{len} bytes, over the {}-byte limit of one request", fdpass::MAX_FD_PAYLOAD),
        ));
    }
    let fd = OwnedFd::from(f);
    crate::ffi::memfd_seal(fd.as_fd())
        .map_err(|(e, m)| io::Error::new(io::Error::from_raw_os_error(e).kind(), m))?;
    Ok(Input::Fd(fd, len))
}
