//! Pid files that cannot be fooled by a recycled pid: each holds the pid and
//! the process start time (field 22 of /proc/PID/stat, in clock ticks since
//! boot), and a pid counts as ours only while both still match.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

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
    let (pid, start) = read(path).ok()?;
    match start {
        Some(t) => (start_time(pid) == Some(t)).then_some(pid),
        None => alive(pid).then_some(pid),
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
}
