//! The small pieces of process plumbing that every part of weaver shares,
//! each written once: signal names, wait statuses, the child set-up before
//! exec, non-blocking fds, and the random source for backoff jitter.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// "SIGTERM", or "signal 77" for a number with no name.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// The `ExitStatus` of a reaped child, `None` for a stop or continue report.
pub fn exit_status(ws: WaitStatus) -> Option<(u32, ExitStatus)> {
    let (pid, raw) = match ws {
        WaitStatus::Exited(pid, code) => (pid, (code & 0xff) << 8),
        WaitStatus::Signaled(pid, sig, core) => (pid, sig as i32 | if core { 0x80 } else { 0 }),
        _ => return None,
    };
    Some((pid.as_raw() as u32, ExitStatus::from_raw(raw)))
}

/// Reap every exited child without blocking: (pid, status) in reaping order.
pub fn reap_all() -> Vec<(u32, ExitStatus)> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
            Ok(ws) => reaped.extend(exit_status(ws)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("waitpid failed: {e}");
                break;
            }
        }
    }
    reaped
}

/// Put `fd` in non-blocking mode.
pub fn set_nonblocking(fd: std::os::fd::RawFd) {
    // SAFETY: fcntl on an fd the caller owns; no memory is involved.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Give freed heap back to the kernel (after a burst).
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// What a child of the daemon gets between fork and exec.
#[derive(Debug, Clone, Copy)]
pub struct ChildSetup {
    /// Joins the daemon's containment (its cgroup, and the marker in its
    /// environment), so it cannot outlive weaver. Off for detached
    /// processes, which are meant to.
    pub contained: bool,
    /// Set SIGKILL as the parent-death signal (and exit if weaver already
    /// died between fork and prctl). Off for a program that owns its own
    /// parent-death signal, as compute does.
    pub die_with_parent: bool,
    /// The open-file limit weaver was started with, if it raised its own.
    pub nofile: Option<libc::rlimit>,
    /// Run under `SCHED_BATCH` (`[compute] scheduling = "batch"`); the
    /// threads it starts inherit it. If the kernel refuses, the child runs
    /// as before: the caller checks and says so.
    pub sched_batch: bool,
}

impl ChildSetup {
    /// The set-up every supervised process, hook and probe gets.
    pub fn supervised() -> ChildSetup {
        ChildSetup {
            contained: true,
            die_with_parent: true,
            nofile: crate::daemon::child_nofile(),
            sched_batch: false,
        }
    }

    /// Apply to `cmd`: its own process group, the original open-file limit,
    /// umask 022 (weaver's own 077 is not its children's), the daemon's
    /// containment and the parent-death signal when asked.
    pub fn apply(self, cmd: &mut Command) {
        use crate::daemon::contain::{Containment, MARKER};
        cmd.process_group(0);
        let parent = std::process::id() as libc::pid_t;
        let containment = Containment::current().filter(|_| self.contained);
        match containment {
            Some(c) => cmd.env(MARKER, &c.marker),
            None => cmd.env_remove(MARKER),
        };
        // Children are born in the daemon's cgroup; a detached one leaves
        // it for the shared cgroup of detached processes.
        let join = match (self.contained, Containment::current()) {
            (false, Some(c)) => c.detached_procs().cloned(),
            _ => None,
        };
        // SAFETY: only async-signal-safe calls (open, write, close,
        // setrlimit, sched_setscheduler, prctl, getppid, umask, _exit) run
        // between fork and exec; `join` was allocated before the fork and
        // is only read.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the daemon's cgroup before anything can fork.
                if let Some(path) = &join {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                // select() users break above 1024 descriptors.
                if let Some(lim) = self.nofile {
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
                if self.sched_batch {
                    let param = libc::sched_param { sched_priority: 0 };
                    libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
                }
                if self.die_with_parent {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // weaver may have died between fork and prctl.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                }
                libc::umask(0o022);
                Ok(())
            });
        }
    }
}

/// The one random source for backoff jitter: splitmix64. Jitter needs
/// spread, not secrecy.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A fixed seed (tests).
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Seeded from the pid and the wall clock.
    pub fn from_time() -> Rng {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng((std::process::id() as u64) << 32 ^ ns)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Write `bytes` to `dir/name` atomically: a private temporary file
/// (0600, no symlink followed) in `dir` (made 0700 if missing), renamed
/// over `name`; with `durable`, the file and then the directory are synced
/// before it returns. The state dir's files (weavelet revisions, the fleet
/// cache, the daemon registry) are all written this way.
pub fn write_private_atomic(
    dir: &std::path::Path,
    name: &str,
    bytes: &[u8],
    durable: bool,
) -> std::io::Result<()> {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(77), "signal 77");
    }

    #[test]
    fn wait_statuses_convert() {
        let p = Pid::from_raw(42);
        let (pid, st) = exit_status(WaitStatus::Exited(p, 3)).unwrap();
        assert_eq!((pid, st.code()), (42, Some(3)));
        let (_, st) = exit_status(WaitStatus::Signaled(p, Signal::SIGKILL, false)).unwrap();
        assert_eq!(st.signal(), Some(9));
        let (_, st) = exit_status(WaitStatus::Signaled(p, Signal::SIGSEGV, true)).unwrap();
        assert!(st.core_dumped());
        assert!(exit_status(WaitStatus::StillAlive).is_none());
    }

    #[test]
    fn rng_is_repeatable_and_spread() {
        let (mut a, mut b) = (Rng::seeded(7), Rng::seeded(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut sorted = xs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 100);
        // Both halves of the range are hit.
        assert!(xs.iter().any(|&x| x > u64::MAX / 2) && xs.iter().any(|&x| x < u64::MAX / 2));
    }
}
