//! The registry of running daemons: one JSON file per daemon under
//! `<state dir>/daemons/`, written atomically (temporary file, sync,
//! rename) when a daemon has started and removed when it stops. A daemon
//! killed by SIGKILL leaves its file behind; [`list`] prunes every entry
//! whose pid is gone or belongs to another process now (its start time
//! differs), so `weaver ls` shows only live daemons.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One running daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub pid: u32,
    /// Field 22 of /proc/PID/stat: with the pid, names this very process.
    pub start_time: u64,
    pub version: String,
    pub runtime_dir: String,
    /// weaver.toml, when the daemon has one.
    pub config: Option<String>,
    /// The HTTP endpoint's address, when it is on.
    pub http: Option<String>,
    /// When it started, in ms since the Unix epoch.
    pub started_at_ms: u64,
}

/// The registry directory under `state_dir`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("daemons")
}

fn file(state_dir: &Path, pid: u32) -> PathBuf {
    dir(state_dir).join(format!("{pid}.json"))
}

/// Write `e`'s entry (mode 0600, in a 0700 directory), atomically.
pub fn write(state_dir: &Path, e: &Entry) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(e).map_err(io::Error::other)?;
    let path = file(state_dir, e.pid);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    crate::sys::write_private_atomic(&dir(state_dir), &name, &bytes, true)
}

/// Remove the entry of `pid`, if it is still `start_time`'s (a newer daemon
/// with a recycled pid keeps its own).
pub fn remove(state_dir: &Path, pid: u32, start_time: u64) {
    let path = file(state_dir, pid);
    if read(&path).is_ok_and(|e| e.start_time == start_time) {
        let _ = fs::remove_file(&path);
    }
}

fn read(path: &Path) -> io::Result<Entry> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// What [`list`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Live daemons, oldest first.
    pub live: Vec<Entry>,
    /// Entries removed: the daemon is gone (or its pid is another
    /// process's now).
    pub pruned: Vec<Entry>,
    /// Files that could not be read or removed, with why.
    pub problems: Vec<String>,
}

/// The live daemons registered under `state_dir`, pruning the dead.
/// `is_current(pid, start_time)` says whether that process still runs.
pub fn list(state_dir: &Path, is_current: impl Fn(u32, u64) -> bool) -> io::Result<Listing> {
    let mut l = Listing::default();
    let rd = match fs::read_dir(dir(state_dir)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(l),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        match read(&path) {
            Ok(e) if is_current(e.pid, e.start_time) => l.live.push(e),
            Ok(e) => match fs::remove_file(&path) {
                Ok(()) => l.pruned.push(e),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => l.problems.push(format!("{}: cannot remove: {err}", path.display())),
            },
            Err(err) => l.problems.push(format!("{}: {err}", path.display())),
        }
    }
    l.live.sort_by_key(|e| (e.started_at_ms, e.pid));
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pid: u32, start_time: u64) -> Entry {
        Entry {
            pid,
            start_time,
            version: "0.1.0".into(),
            runtime_dir: format!("/run/{pid}"),
            config: None,
            http: Some("127.0.0.1:9464".into()),
            started_at_ms: pid as u64,
        }
    }

    #[test]
    fn entries_are_listed_while_current_and_pruned_after() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        write(s, &entry(20, 5)).unwrap();
        write(s, &entry(10, 7)).unwrap();
        write(s, &entry(30, 1)).unwrap();
        fs::write(dir(s).join("junk.json"), b"{").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir(s).join("10.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // 30 is gone; 20's pid now has another start time.
        let l = list(s, |pid, st| (pid, st) == (10, 7) || (pid, st) == (20, 5)).unwrap();
        assert_eq!(l.live.iter().map(|e| e.pid).collect::<Vec<_>>(), [10, 20]);
        assert_eq!(l.pruned.iter().map(|e| e.pid).collect::<Vec<_>>(), [30]);
        assert_eq!(l.problems.len(), 1, "{:?}", l.problems);
        assert!(!file(s, 30).exists());
        let l = list(s, |pid, _| pid == 10).unwrap();
        assert_eq!((l.live.len(), l.pruned.len()), (1, 1));
        // Removing checks the start time: a recycled pid keeps its entry.
        remove(s, 10, 99);
        assert!(file(s, 10).exists());
        remove(s, 10, 7);
        assert!(!file(s, 10).exists());
        assert!(list(&s.join("none"), |_, _| true).unwrap().live.is_empty());
    }
}
