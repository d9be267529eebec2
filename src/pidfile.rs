//! Pid files that cannot be fooled by a recycled pid: each holds the pid and
//! the process start time (field 22 of /proc/PID/stat, in clock ticks since
//! boot), and a pid counts as ours only while both still match.
//!
//! [`Process`] is a handle on one such process that can signal it and wait
//! for it to exit without the pid being recycled under it (a pidfd where the
//! kernel has them, else polling the pid and its start time).

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// How often [`Process::wait_gone`] looks again where there is no pidfd.
const POLL_GONE_EVERY: Duration = Duration::from_millis(5);

/// Start time of `pid` in clock ticks since boot, or `None` if it is gone
/// (zombies count as gone: they hold no resources and cannot be signalled
/// into doing anything).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split
    // after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?; // field 3
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok() // field 22
}

/// True while `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    start_time(pid).is_some()
}

/// What a pid file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: u32,
    pub start_time: u64,
}

impl PidRecord {
    /// The record for a live process.
    pub fn of(pid: u32) -> Option<PidRecord> {
        Some(PidRecord { pid, start_time: start_time(pid)? })
    }

    /// True while the recorded process is still the same one.
    pub fn is_current(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Write `rec` to `path` atomically (temp file in the same dir, then rename),
/// mode 0600.
pub fn write(path: &Path, rec: PidRecord) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    writeln!(f, "{} {}", rec.pid, rec.start_time)?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        e
    })
}

/// Read a pid file: a pid, optionally followed by a start time (a plain pid,
/// as written by programs that daemonize themselves, is accepted too).
pub fn read(path: &Path) -> io::Result<(u32, Option<u64>)> {
    let text = fs::read_to_string(path)?;
    let mut it = text.split_whitespace();
    let bad =
        || io::Error::new(io::ErrorKind::InvalidData, format!("{} holds no pid", path.display()));
    let pid: u32 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    if pid == 0 {
        return Err(bad());
    }
    let start = it.next().and_then(|s| s.parse().ok());
    Ok((pid, start))
}

/// The live process a pid file names, if its start time still matches (or,
/// for a file without one, if the pid is alive).
pub fn live_pid(path: &Path) -> Option<u32> {
    live_record(path).map(|r| r.pid)
}

/// The record of the live process a pid file names, as [`live_pid`] finds
/// it.
pub fn live_record(path: &Path) -> Option<PidRecord> {
    let (pid, start) = read(path).ok()?;
    let rec = PidRecord::of(pid)?;
    match start {
        Some(t) => (rec.start_time == t).then_some(rec),
        None => Some(rec),
    }
}

/// A live process named by a [`PidRecord`]: signals and waits reach that
/// very process, never one that got its pid later.
#[derive(Debug)]
pub struct Process {
    rec: PidRecord,
    /// `None` where `pidfd_open` is not available (kernels before 5.3).
    pidfd: Option<OwnedFd>,
}

impl Process {
    /// The process of `rec`, if it still runs.
    pub fn open(rec: PidRecord) -> Option<Process> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, rec.pid as libc::c_int, 0) };
        let pidfd = if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us; nobody else owns it.
            Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        } else if io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            return None;
        } else {
            None
        };
        // Checked after the pidfd is open: if the start time still matches,
        // the pidfd refers to the recorded process, not to a successor.
        rec.is_current().then_some(Process { rec, pidfd })
    }

    pub fn pid(&self) -> u32 {
        self.rec.pid
    }

    /// Send `sig`; false if the process is gone.
    pub fn signal(&self, sig: Signal) -> bool {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal takes an fd we own, a signal number,
            // a null siginfo and flags 0.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig as libc::c_int,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if r == 0 {
                return true;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return false;
            }
        }
        self.rec.is_current()
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.rec.pid as i32), sig).is_ok()
    }

    /// Wait until the process has exited (its files closed, so its locks
    /// released), at most until `deadline`; true once it is gone.
    pub fn wait_gone(&self, deadline: Instant) -> bool {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match &self.pidfd {
                Some(fd) => {
                    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                    let mut pfd =
                        [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
                    match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
                        // Readable: it has exited.
                        Ok(n) if n > 0 => return true,
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => return !self.rec.is_current(),
                    }
                }
                None => {
                    if !self.rec.is_current() {
                        return true;
                    }
                    std::thread::sleep(left.min(POLL_GONE_EVERY));
                }
            }
            if Instant::now() >= deadline {
                return !self.rec.is_current();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_record_is_current_and_a_changed_start_time_is_not() {
        let me = PidRecord::of(std::process::id()).expect("we are alive");
        assert!(me.is_current());
        let forged = PidRecord { start_time: me.start_time + 1, ..me };
        assert!(!forged.is_current());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pid");
        write(&p, me).unwrap();
        assert_eq!(live_pid(&p), Some(me.pid));
        write(&p, forged).unwrap();
        assert_eq!(live_pid(&p), None, "recycled pid must not count");
        fs::write(&p, "garbage").unwrap();
        assert!(read(&p).is_err());
        fs::write(&p, format!("{}\n", me.pid)).unwrap();
        assert_eq!(live_pid(&p), Some(me.pid));
    }

    #[test]
    fn a_process_handle_signals_and_sees_the_exit() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let rec = PidRecord::of(child.id()).unwrap();
        let p = Process::open(rec).expect("the child runs");
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(!p.wait_gone(soon), "still running");
        assert!(p.signal(Signal::SIGTERM));
        assert!(p.wait_gone(Instant::now() + Duration::from_secs(10)), "gone after SIGTERM");
        child.wait().unwrap();
        assert!(Process::open(rec).is_none(), "a reaped process cannot be opened");
        let forged = PidRecord {
            start_time: rec.start_time + 1,
            ..PidRecord::of(std::process::id()).unwrap()
        };
        assert!(Process::open(forged).is_none(), "another start time is another process");
    }
}
