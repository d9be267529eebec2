//! What keeps everything weaver started from outliving it, even processes
//! that left their process group with `setsid`: a cgroup (v2, or the
//! unified hierarchy of a hybrid mount) that the daemon moves itself into
//! once, so every child it forks from then on is born there, killed whole
//! with `cgroup.kill`; and always an environment marker
//! (`WEAVER_DAEMON_ID`) every child inherits, which the guard looks for in
//! `/proc` (the only mechanism where no cgroup can be made). Detached
//! processes get neither: they leave for a shared `weaver-detached` cgroup
//! and carry no marker, since they are meant to outlive weaver.
//!
//! Moving a process between cgroups waits for a kernel grace period (10-20
//! ms after a quiet spell, and every fork on the host waits meanwhile), so
//! it is done once, for the daemon, by a helper process, never per spawn.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable that marks a process as started by one daemon.
pub const MARKER: &str = "WEAVER_DAEMON_ID";
/// `WEAVER_CONTAINMENT=marker` turns the cgroup off.
pub const CHOICE_ENV: &str = "WEAVER_CONTAINMENT";
/// The shared cgroup detached processes live in, beside the daemons'.
const DETACHED: &str = "weaver-detached";
/// How long a sweep waits for killed processes to be gone.
const SWEEP_WAIT: Duration = Duration::from_secs(1);
/// Kill passes over a cgroup or /proc before giving up on forkers.
const SWEEP_PASSES: usize = 10;

#[derive(Debug)]
pub struct Containment {
    /// The daemon's cgroup, when it could make one.
    pub cgroup: Option<PathBuf>,
    /// The cgroup the daemon's sits in, where it goes back to at exit.
    base: Option<PathBuf>,
    /// `cgroup.procs` of the cgroup detached processes leave for (written
    /// from between fork and exec).
    detached_procs: Option<CString>,
    /// This daemon's marker value (pid and start time).
    pub marker: String,
}

static CURRENT: OnceLock<Containment> = OnceLock::new();

impl Containment {
    /// Set up once, at daemon start: a cgroup of the daemon's own (made,
    /// not yet joined: see [`Containment::join`]) when the cgroup v2
    /// hierarchy lets us, and the marker always.
    pub fn init(marker: String) -> &'static Containment {
        CURRENT.get_or_init(|| {
            let off = std::env::var(CHOICE_ENV).is_ok_and(|v| v == "marker");
            let (base, cgroup) = match if off { None } else { make_cgroup() } {
                Some((b, c)) => (Some(b), Some(c)),
                None => (None, None),
            };
            let detached_procs = base.as_ref().and_then(|b| {
                let d = b.join(DETACHED);
                let _ = std::fs::create_dir(&d);
                CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok()
            });
            Containment { cgroup, base, detached_procs, marker }
        })
    }

    /// The containment of this daemon, once set up.
    pub fn current() -> Option<&'static Containment> {
        CURRENT.get()
    }

    /// Start moving the daemon into its cgroup: what it forks from then on
    /// is born there. The move blocks for a kernel grace period, so a
    /// helper process (`weaver __join-cgroup`, holding none of the daemon's
    /// files) makes it; its exit says the move is done. Its pid, if one was
    /// started.
    pub fn start_join(&self) -> Option<u32> {
        let dir = self.cgroup.as_ref()?;
        let exe = std::env::current_exe().ok()?;
        let child = std::process::Command::new(exe)
            .arg("__join-cgroup")
            .arg(dir.join("cgroup.procs"))
            .arg(std::process::id().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn();
        match child {
            // Reaped by the reactor's waitpid loop.
            Ok(c) => Some(c.id()),
            Err(e) => {
                log::warn!("cannot join {}: {e}; the {MARKER} marker still holds", dir.display());
                None
            }
        }
    }

    /// `cgroup.procs` a detached process writes itself to, to leave.
    pub fn detached_procs(&self) -> Option<&CString> {
        self.detached_procs.as_ref()
    }

    /// For `status`.
    pub fn describe(&self) -> String {
        match &self.cgroup {
            Some(d) => format!("cgroup {}", d.display()),
            None => format!("environment marker {MARKER}={}", self.marker),
        }
    }

    /// At the daemon's exit: kill what is left in its cgroup (all but the
    /// daemon) and what carries the marker, then leave the cgroup and
    /// remove it. Returns how many processes were signalled.
    pub fn sweep(&self) -> usize {
        let me = std::process::id();
        let mut killed = 0;
        if let Some(dir) = &self.cgroup {
            killed += kill_listed(dir, me as i32);
            if let Some(base) = &self.base {
                let _ = std::fs::write(base.join("cgroup.procs"), me.to_string());
            }
            remove_cgroup(dir);
        }
        killed + kill_marked(&self.marker)
    }
}

/// The unified hierarchy's mount point.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Our own cgroup v2 path (the `0::` line).
fn own_cgroup() -> Option<PathBuf> {
    let s = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = s.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(PathBuf::from(rel.trim_start_matches('/')))
}

/// A fresh cgroup for this daemon, beside (never inside) another daemon's,
/// if we may make and enter it: (the cgroup it sits in, the new one).
fn make_cgroup() -> Option<(PathBuf, PathBuf)> {
    let mut own = own_cgroup()?;
    // A daemon started from another's process starts in that one's cgroup.
    while own.file_name().is_some_and(|n| n.to_string_lossy().starts_with("weaver-")) {
        own.pop();
    }
    let base = cgroup2_mount()?.join(own);
    remove_stale_cgroups(&base);
    let dir = base.join(format!("weaver-{}", std::process::id()));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // A daemon that had our pid died: what it left is stale.
            kill_cgroup(&dir);
        }
        Err(e) => {
            log::info!(
                "no cgroup for children ({}: {e}); using the {MARKER} marker",
                dir.display()
            );
            return None;
        }
    }
    // Moving in and back out needs write access to both.
    let writable = |d: &Path| std::fs::OpenOptions::new().write(true).open(d.join("cgroup.procs"));
    if writable(&dir).is_err() || writable(&base).is_err() {
        let _ = std::fs::remove_dir(&dir);
        return None;
    }
    Some((base, dir))
}

/// Remove an emptied cgroup: exiting processes keep it busy a moment after
/// they leave `cgroup.procs`, so this tries again for a little while.
pub fn remove_cgroup(dir: &Path) {
    let end = Instant::now() + SWEEP_WAIT;
    while std::fs::remove_dir(dir).is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
        && Instant::now() < end
    {
        std::thread::yield_now();
    }
}

/// Remove the empty cgroups of daemons that are gone (`weaver-PID` with no
/// such process), which a daemon killed before its guard could clean up
/// leaves behind.
fn remove_stale_cgroups(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("weaver-")) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !crate::pidfile::alive(pid) && pids_in(&e.path()).is_empty() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// SIGKILL every listed process of the cgroup but `spare`, pass after pass,
/// and wait a little for them to go.
fn kill_listed(dir: &Path, spare: i32) -> usize {
    let mut killed = std::collections::HashSet::new();
    for _ in 0..SWEEP_PASSES {
        let pids: Vec<i32> =
            pids_in(dir).into_iter().filter(|&p| p != spare && !killed.contains(&p)).collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            // SAFETY: plain kill of a listed pid.
            if unsafe { libc::kill(p, libc::SIGKILL) } == 0 {
                killed.insert(p);
            }
        }
    }
    let end = Instant::now() + SWEEP_WAIT;
    while pids_in(dir).iter().any(|&p| p != spare) && Instant::now() < end {
        std::thread::yield_now();
    }
    killed.len()
}

fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILL everything in the cgroup (`cgroup.kill`, or each listed pid)
/// and wait a little for it to empty.
pub fn kill_cgroup(dir: &Path) -> usize {
    let found = pids_in(dir).len();
    if found == 0 {
        return 0;
    }
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for _ in 0..SWEEP_PASSES {
            let pids = pids_in(dir);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: plain kill of a listed pid.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
    let end = Instant::now() + SWEEP_WAIT;
    while !pids_in(dir).is_empty() && Instant::now() < end {
        std::thread::yield_now();
    }
    found
}

/// Whether `pid`'s environment carries `MARKER=marker`.
fn carries(pid: i32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle))
}

/// SIGKILL every process (but this one) whose environment carries the
/// marker, pass after pass until none is found.
pub fn kill_marked(marker: &str) -> usize {
    let needle = format!("{MARKER}={marker}").into_bytes();
    let me = std::process::id() as i32;
    let mut killed = std::collections::HashSet::new();
    for _ in 0..SWEEP_PASSES {
        let Ok(dir) = std::fs::read_dir("/proc") else { break };
        let found: Vec<i32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| p != me && !killed.contains(&p) && carries(p, &needle))
            .collect();
        if found.is_empty() {
            break;
        }
        for p in found {
            // SAFETY: plain kill of a process that carries our marker.
            if unsafe { libc::kill(p, libc::SIGKILL) } == 0 {
                killed.insert(p);
            }
        }
    }
    killed.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn marked_processes_are_found_and_killed_and_others_are_not() {
        let marker = format!("test-{}", std::process::id());
        let mut marked = Command::new("sleep").arg("30").env(MARKER, &marker).spawn().unwrap();
        let mut other =
            Command::new("sleep").arg("30").env(MARKER, "someone-else").spawn().unwrap();
        // Its environment is ours until it has exec'd.
        let needle = format!("{MARKER}={marker}").into_bytes();
        let end = Instant::now() + Duration::from_secs(5);
        while !carries(marked.id() as i32, &needle) && Instant::now() < end {
            std::thread::yield_now();
        }
        assert_eq!(kill_marked(&marker), 1);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(marked.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(other.try_wait().unwrap().is_none(), "another marker is left alone");
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
