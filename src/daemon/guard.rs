//! The guard: a small process that outlives a killed weaver just long
//! enough to kill what weaver started.
//!
//! Every process weaver spawns gets its own process group and a
//! parent-death signal, but the parent-death signal reaches only that one
//! process: what it forked (a shell's children, a launcher's workers) would
//! survive a `kill -9` of weaver. So weaver starts the guard (`weaver
//! __guard`, its own process group, no parent-death signal) before anything
//! else and tells it, over a pipe, each process group it creates (`+PGID`)
//! and each it has finished with (`-PGID`); likewise single processes that
//! escaped their group and were reparented to weaver (`>PID`, `<PID`:
//! weaver is their parent, so their pid cannot be reused before weaver has
//! reaped them and withdrawn it). When the pipe reaches EOF
//! (weaver exited, however it exited: the kernel closes the write end of a
//! killed process) the guard sends SIGKILL to every group still listed and
//! exits. A group id cannot be handed to a new process while any member of
//! the group lives, and weaver withdraws a group as soon as it is empty, so
//! the guard never signals a stranger.
//!
//! The guard holds no other file, socket or memory of weaver's; it reads
//! one pipe and sleeps in `read` the rest of the time.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use log::warn;

/// weaver's end of the pipe to its guard.
#[derive(Debug)]
pub struct Guard {
    exe: std::path::PathBuf,
    pipe: Option<File>,
    pid: u32,
    /// What the guard was told to watch (to tell a new one).
    groups: HashSet<u32>,
    pids: HashSet<u32>,
    /// The containment lines it was told.
    contain: Vec<String>,
}

impl Guard {
    /// Start `exe __guard` with the read end of a fresh pipe as its stdin.
    pub fn spawn(exe: &Path) -> io::Result<Guard> {
        let (pipe, pid) = start(exe)?;
        Ok(Guard {
            exe: exe.to_path_buf(),
            pipe: Some(pipe),
            pid,
            groups: HashSet::new(),
            pids: HashSet::new(),
            contain: Vec::new(),
        })
    }

    /// Tell the guard the daemon's cgroup and marker: at EOF it kills what
    /// is in the one and what carries the other too.
    pub fn contain(&mut self, c: &crate::daemon::contain::Containment) {
        if let Some(dir) = &c.cgroup {
            self.contain.push(format!("c{}", dir.display()));
        }
        self.contain.push(format!("m{}", c.marker));
        for line in self.contain.clone() {
            self.send_line(&line);
        }
    }

    /// The guard died: start another and tell it every group.
    pub fn respawn(&mut self) -> io::Result<()> {
        let (pipe, pid) = start(&self.exe)?;
        self.pipe = Some(pipe);
        self.pid = pid;
        for g in self.groups.clone() {
            self.send(b'+', g);
        }
        for p in self.pids.clone() {
            self.send(b'>', p);
        }
        for line in self.contain.clone() {
            self.send_line(&line);
        }
        Ok(())
    }
}

/// Start `exe __guard` reading a fresh pipe; our end and its pid.
fn start(exe: &Path) -> io::Result<(File, u32)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let child = Command::new(exe)
        .arg("__guard")
        .stdin(Stdio::from(rd))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Out of weaver's group: a signal meant for weaver's group (a
        // terminal's Ctrl-C) must not take the guard first.
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    // Reaped by the reactor's waitpid loop, or by init after we exit.
    drop(child);
    Ok((File::from(wr), pid))
}

impl Guard {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kill group `pgid` if weaver dies before it withdraws it.
    pub fn watch(&mut self, pgid: u32) {
        self.groups.insert(pgid);
        self.send(b'+', pgid);
    }

    /// Group `pgid` is empty (or no longer weaver's to kill).
    pub fn withdraw(&mut self, pgid: u32) {
        if self.groups.remove(&pgid) {
            self.send(b'-', pgid);
        }
    }

    /// Kill process `pid` (a child of weaver's) if weaver dies first.
    pub fn watch_pid(&mut self, pid: u32) {
        self.pids.insert(pid);
        self.send(b'>', pid);
    }

    /// Process `pid` was reaped.
    pub fn withdraw_pid(&mut self, pid: u32) {
        if self.pids.remove(&pid) {
            self.send(b'<', pid);
        }
    }

    fn send(&mut self, op: u8, pgid: u32) {
        self.send_line(&format!("{}{pgid}", op as char));
    }

    fn send_line(&mut self, line: &str) {
        let Some(p) = self.pipe.as_mut() else { return };
        let line = format!("{line}\n");
        // A few bytes into a pipe the guard drains at once: never blocks
        // for long. A failure means the guard is gone.
        if let Err(e) = p.write_all(line.as_bytes()) {
            warn!(
                "the guard process (pid {}) is gone ({e}); processes started from now on may outlive a killed weaver",
                self.pid
            );
            self.pipe = None;
        }
    }

    /// Close the pipe: the guard kills what is still listed and exits.
    /// Waits up to `limit` for it (a deadline on its pidfd, no sleeping).
    pub fn release(&mut self, limit: std::time::Duration) {
        self.pipe = None;
        // SAFETY: pidfd_open on our own child; the fd is ours to close.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid as libc::pid_t, 0) };
        if fd >= 0 {
            // SAFETY: a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = limit.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
}

/// The guard's own main: track `+PGID` / `-PGID` (groups) and `>PID` /
/// `<PID` (processes) lines on stdin; at EOF, SIGKILL every group and
/// process still listed. Returns how many signals were delivered.
pub fn run(mut input: impl Read) -> usize {
    let mut groups: HashSet<i32> = HashSet::new();
    let mut pids: HashSet<i32> = HashSet::new();
    let mut cgroup: Option<std::path::PathBuf> = None;
    let mut marker: Option<String> = None;
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::with_capacity(32);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b != b'\n' {
                if line.len() < MAX_LINE {
                    line.push(b);
                }
                continue;
            }
            match line.split_first() {
                Some((b'c', path)) => {
                    cgroup = Some(std::path::PathBuf::from(String::from_utf8_lossy(path).as_ref()))
                }
                Some((b'm', m)) if !m.is_empty() => {
                    marker = Some(String::from_utf8_lossy(m).into_owned())
                }
                _ => apply(&mut groups, &mut pids, &line),
            }
            line.clear();
        }
    }
    let mut killed = 0;
    for &g in &groups {
        // SAFETY: plain kill on a negative pid (a process group).
        if unsafe { libc::kill(-g, libc::SIGKILL) } == 0 {
            killed += 1;
        }
    }
    for &p in &pids {
        // SAFETY: plain kill.
        if unsafe { libc::kill(p, libc::SIGKILL) } == 0 {
            killed += 1;
        }
    }
    // What left its group while its parent lived: in the cgroup, or
    // carrying the marker.
    if let Some(dir) = &cgroup {
        killed += crate::daemon::contain::kill_cgroup(dir);
        crate::daemon::contain::remove_cgroup(dir);
    }
    if let Some(m) = &marker {
        killed += crate::daemon::contain::kill_marked(m);
    }
    killed
}

/// Longest line the guard reads (a cgroup path).
const MAX_LINE: usize = 4096;

fn apply(groups: &mut HashSet<i32>, pids: &mut HashSet<i32>, line: &[u8]) {
    let Some((&op, num)) = line.split_first() else { return };
    let Some(pgid) = std::str::from_utf8(num).ok().and_then(|s| s.parse::<i32>().ok()) else {
        return;
    };
    // Never 0, 1 or a negative number: kill(-0) and kill(-1) mean "my
    // group" and "everyone".
    if pgid <= 1 {
        return;
    }
    match op {
        b'+' => {
            groups.insert(pgid);
        }
        b'-' => {
            groups.remove(&pgid);
        }
        b'>' => {
            pids.insert(pgid);
        }
        b'<' => {
            pids.remove(&pgid);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_add_and_withdraw_groups_and_dangerous_ids_are_refused() {
        let (mut g, mut p) = (HashSet::new(), HashSet::new());
        for l in ["+100", "+200", "-100", "+0", "+1", "+-5", "x7", "+", "+abc", "+300"] {
            apply(&mut g, &mut p, l.as_bytes());
        }
        for l in [">50", ">60", "<50", ">1", ">0"] {
            apply(&mut g, &mut p, l.as_bytes());
        }
        let mut v: Vec<i32> = g.into_iter().collect();
        v.sort();
        assert_eq!(v, [200, 300]);
        assert_eq!(p.into_iter().collect::<Vec<_>>(), [60]);
    }

    #[test]
    fn at_eof_every_listed_group_is_killed() {
        // A real group: a shell in its own group with a child of its own.
        let mut child =
            Command::new("sh").args(["-c", "sleep 30 & wait"]).process_group(0).spawn().unwrap();
        let pgid = child.id();
        let input = format!("+{pgid}\n+{}\n-{}\n", 999_999_999, 999_999_999);
        assert_eq!(run(input.as_bytes()), 1);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // The sleep was in the group too: the group empties.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // SAFETY: kill with signal 0 only checks that the group exists.
        while unsafe { libc::kill(-(pgid as i32), 0) } == 0 {
            assert!(std::time::Instant::now() < end, "group {pgid} still has members");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
