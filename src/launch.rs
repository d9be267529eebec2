//! Connect to the daemon, starting it first if none runs.
//!
//! Start-up races are named cases, not hopes:
//! - Racing first commands serialise on `launch.lock` (a blocking flock: the
//!   kernel wakes the waiters, nobody polls). The winner starts the daemon;
//!   the others find it answering once they get the lock.
//! - The daemon reports readiness on an inherited pipe once its sockets are
//!   bound ("ready PID"), or why it could not start ("error ..."); EOF
//!   without a line means it died, and the log says why.
//! - A daemon that holds the daemon lock without a socket that answers is
//!   waited for, at most [`Deadlines::connect`]: one just started (another
//!   way, e.g. `weaver daemon --foreground`) binds its socket; one that is
//!   stopping exits, and then a new one is started. The holder is named by
//!   the pid file or, without one, by `/proc/locks`.
//! - One that does neither is reported with its pid and never replaced: its
//!   socket is gone ([`Kind::NotResponding`]), or it is stopping and takes
//!   no new connections (shutting down). Never two daemons.
//! - A daemon that is there but does not accept or handshake within the
//!   deadline is reported as not responding, with its pid.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::client::{Client, Deadlines};
use crate::error::{Error, Kind, Result};
use crate::pidfile::{self, PidRecord, Process};
use crate::protocol::{ErrorKind as ReplyKind, Request};
use crate::runtime_dir::{self, RuntimeDir};

/// The fd number the daemon finds its readiness pipe on.
const READY_FD: i32 = 3;
/// How long a command waits for a new daemon to report readiness.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a readiness report that is read (an error report may span
/// lines; anything longer is cut).
const MAX_READY_BYTES: u64 = 1 << 20;
/// How often a command looks again at a daemon that holds the lock without
/// a socket that answers.
const HELD_RETRY_EVERY: Duration = Duration::from_millis(10);
/// How many daemons one command starts, when each finds the lock held by a
/// daemon that then exits.
const START_ATTEMPTS: u32 = 3;

/// How to start a daemon if none runs.
pub struct Launch<'a> {
    pub dir: &'a RuntimeDir,
    /// Global options to pass on to the daemon (compute binary, workers...).
    pub daemon_args: Vec<OsString>,
    /// Do not start one: fail if none runs.
    pub no_start: bool,
    /// A request (without payload) to send with the handshake
    /// ([`Client::connect_first`]); its reply is [`Client::first_reply`].
    pub first: Option<Request>,
}

/// What happened on the way to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A daemon was already running.
    Connected,
    /// This command started the daemon.
    Started(u32),
}

fn is_absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED))
}

/// Connect to the running daemon, starting one if needed.
pub fn connect_or_start(l: &Launch) -> Result<(Client, Outcome)> {
    let d = Deadlines::from_env();
    let first = l.first.as_ref();
    if let Some(c) = reach(l.dir, d, false, first)? {
        return Ok((c, Outcome::Connected));
    }
    if l.no_start {
        return Err(Error::new(
            Kind::Daemon,
            format!("no weaver daemon is running for {}", l.dir.path().display()),
        ));
    }
    let lock_path = l.dir.launch_lock();
    let lock_file = runtime_dir::open_private(&lock_path, false)
        .map_err(|e| Error::io(Kind::RuntimeDir, "open", &lock_path, &e))?;
    let _guard = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| {
        Error::new(Kind::RuntimeDir, format!("cannot lock {}: {e}", lock_path.display()))
    })?;
    let mut busy = String::new();
    for _ in 0..START_ATTEMPTS {
        // Someone may have started it while we waited for the lock.
        if let Some(c) = reach(l.dir, d, false, first)? {
            return Ok((c, Outcome::Connected));
        }
        match spawn_daemon(l)? {
            Started::Ready(pid) => {
                let sock = l.dir.control_socket();
                let c = Client::connect_first(&sock, false, d, first)
                    .map_err(|e| {
                        Error::io(Kind::Daemon, "connect to the new daemon at", &sock, &e)
                    })?
                    .map_err(|e| e.naming_pid(pid))?;
                return Ok((c, Outcome::Started(pid)));
            }
            // Another daemon holds the lock: wait for it to answer, or to
            // exit and leave the place to a new one.
            Started::Busy(msg) => {
                if let Some(c) = reach(l.dir, d, true, first)? {
                    return Ok((c, Outcome::Connected));
                }
                busy = msg;
            }
        }
    }
    Err(Error::new(
        Kind::Daemon,
        format!(
            "{busy}; {START_ATTEMPTS} daemons were started and each found the lock held by \
             another. See {}",
            l.dir.log_file().display()
        ),
    ))
}

/// Who holds the daemon lock.
#[derive(Debug)]
pub enum Holder {
    /// This live process (named by the pid file or `/proc/locks`).
    Process(PidRecord),
    /// Nobody.
    Free,
    /// Cannot be told (no `/proc/locks`, and no live pid file).
    Unknown,
}

/// Who holds the daemon lock of `dir`, without taking it.
pub fn holder(dir: &RuntimeDir) -> Holder {
    let mut unknown = false;
    match runtime_dir::lock_holder(&dir.daemon_lock()) {
        Ok(Some(pid)) => {
            if let Some(rec) = PidRecord::of(pid) {
                return Holder::Process(rec);
            }
        }
        Ok(None) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => unknown = true,
    }
    match pidfile::live_record(&dir.pid_file()) {
        Some(rec) => Holder::Process(rec),
        None if unknown => Holder::Unknown,
        None => Holder::Free,
    }
}

/// Connect to the daemon that runs, if one does; `Ok(None)` when none does.
///
/// A daemon that holds the lock but has no socket that answers is waited
/// for, at most `d.connect`: it binds its socket (just started), or it
/// exits (stopping: then `Ok(None)`, and a new one may start). One that
/// does neither is an error that names it. `held`: the lock is known to be
/// held (a daemon just said so), even where no holder can be named.
fn reach(
    dir: &RuntimeDir,
    d: Deadlines,
    held: bool,
    first: Option<&Request>,
) -> Result<Option<Client>> {
    let sock = dir.control_socket();
    let deadline = Instant::now() + d.connect;
    // A daemon whose socket went missing binds it again on SIGUSR1 (it
    // also notices by itself where it can watch its runtime dir).
    let mut nudged = false;
    loop {
        let refused = match Client::connect_first(&sock, false, d, first) {
            Ok(Ok(c)) => return Ok(Some(c)),
            Ok(Err(e)) => {
                return Err(match holder(dir) {
                    Holder::Process(rec) => e.naming_pid(rec.pid),
                    _ => e,
                })
            }
            Err(e) if is_absent(&e) => e.raw_os_error() == Some(libc::ECONNREFUSED),
            Err(e) => return Err(Error::io(Kind::Daemon, "connect to", &sock, &e)),
        };
        let holder = holder(dir);
        let pid = match &holder {
            Holder::Process(rec) => Some(rec.pid),
            Holder::Free => return Ok(None),
            Holder::Unknown if !held => return Ok(None),
            Holder::Unknown => None,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(unreachable(pid, &sock, refused, d.connect));
        }
        let next = deadline.min(now + HELD_RETRY_EVERY);
        match holder {
            // Returns early if it exits.
            Holder::Process(rec) => {
                if let Some(p) = Process::open(rec) {
                    if !refused && !nudged {
                        nudged = p.signal(nix::sys::signal::Signal::SIGUSR1);
                    }
                    p.wait_gone(next);
                }
            }
            _ => std::thread::sleep(next - now),
        }
    }
}

/// The error for a daemon (`pid`, if known) that holds the lock but has not
/// answered on `sock` for `waited`: its socket refuses connections (it is
/// stopping) or is missing.
fn unreachable(pid: Option<u32>, sock: &Path, refused: bool, waited: Duration) -> Error {
    match (pid, refused) {
        (Some(pid), true) => Error::new(
            Kind::Request(ReplyKind::ShuttingDown),
            format!(
                "the weaver daemon (pid {pid}) is shutting down and takes no new connections; \
                 retry once it has stopped (`weaver shutdown` waits for that)"
            ),
        ),
        (Some(pid), false) => Error::not_responding(
            Some(pid),
            format!(
                "it runs, but its control socket {} is missing, so no command can reach it",
                sock.display()
            ),
        ),
        (None, _) => Error::new(
            Kind::Daemon,
            format!(
                "another weaver daemon holds the lock, but {} has not answered within {waited:?}; \
                 if that daemon is stuck, stop it (its pid is in weaver.pid) and retry",
                sock.display()
            ),
        ),
    }
}

/// What a daemon this command started said on the readiness pipe, when it
/// did not fail.
enum Started {
    /// Serving, with this pid.
    Ready(u32),
    /// Another daemon holds the lock: why, in words.
    Busy(String),
}

fn spawn_daemon(l: &Launch) -> Result<Started> {
    let exe = std::env::current_exe().map_err(|e| {
        Error::new(
            Kind::Daemon,
            format!("cannot find the weaver executable to start the daemon: {e}"),
        )
    })?;
    let log_path = l.dir.log_file();
    let log = runtime_dir::open_private(&log_path, true)
        .map_err(|e| Error::io(Kind::RuntimeDir, "open the daemon log", &log_path, &e))?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::new(Kind::Daemon, format!("cannot create the readiness pipe: {e}")))?;
    let wr_raw = wr.as_raw_fd();
    let mut cmd = Command::new(&exe);
    cmd.arg("--runtime-dir")
        .arg(l.dir.path())
        .args(&l.daemon_args)
        .arg("daemon")
        .arg("--foreground")
        .arg("--ready-fd")
        .arg(READY_FD.to_string())
        .arg("--log-file")
        .arg(&log_path)
        .current_dir("/")
        // A daemon started from a process of another daemon is not that
        // daemon's to kill.
        .env_remove(crate::daemon::contain::MARKER)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| Error::io(Kind::Io, "duplicate", &log_path, &e))?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if wr_raw == READY_FD {
                // dup2 onto itself would keep close-on-exec set.
                if libc::fcntl(READY_FD, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(wr_raw, READY_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        Error::new(Kind::Daemon, format!("cannot start the daemon ({}): {e}", exe.display()))
    })?;
    drop(wr);
    let pid = child.id();
    // The daemon runs on detached; it is reaped by whoever adopts it.
    drop(child);
    read_ready(rd, pid, &log_path)
}

fn read_ready(rd: OwnedFd, pid: u32, log_path: &Path) -> Result<Started> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut pfd = [nix::poll::PollFd::new(rd.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
            Ok(0) if left.is_zero() => {
                return Err(Error::new(
                    Kind::Daemon,
                    format!("the daemon (pid {pid}) did not report readiness within {READY_TIMEOUT:?}; see {}", log_path.display()),
                ))
            }
            Ok(0) => continue,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::new(Kind::Daemon, format!("waiting for the daemon: {e}"))),
        }
    }
    // One line, or for an error a report of several lines; the daemon
    // closes its end after writing either way.
    let mut text = String::new();
    BufReader::new(File::from(rd))
        .take(MAX_READY_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| Error::new(Kind::Daemon, format!("reading the daemon's readiness: {e}")))?;
    match Readiness::parse(&text) {
        Some(Readiness::Ready { pid }) => Ok(Started::Ready(pid)),
        Some(Readiness::Busy(msg)) => Ok(Started::Busy(msg)),
        Some(Readiness::Error { kind, message }) => {
            Err(Error::new(kind, format!("the daemon could not start: {message}")))
        }
        None => Err(Error::new(
            Kind::Daemon,
            format!(
                "the daemon (pid {pid}) exited before it was ready; its log {} says why",
                log_path.display()
            ),
        )),
    }
}

/// How start-up went, as the daemon reports it on its readiness fd: one
/// line, `ready <pid>`, `busy <why>` or `error <kind> <why>` (kind: `usage`,
/// `runtime-dir` or `daemon`; the why of an error may span lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The sockets are bound: clients can connect.
    Ready { pid: u32 },
    /// Another daemon holds the daemon lock (it may not answer yet).
    Busy(String),
    /// Start-up failed. Kinds other than `Usage` and `RuntimeDir` travel as
    /// `Daemon`.
    Error { kind: Kind, message: String },
}

impl Readiness {
    /// The text written to the pipe, without the final newline.
    pub fn encode(&self) -> String {
        match self {
            Readiness::Ready { pid } => format!("ready {pid}"),
            Readiness::Busy(msg) => format!("busy {msg}"),
            Readiness::Error { kind, message } => {
                let kind = match kind {
                    Kind::Usage => "usage",
                    Kind::RuntimeDir => "runtime-dir",
                    _ => "daemon",
                };
                format!("error {kind} {message}")
            }
        }
    }

    /// Read what [`encode`](Self::encode) wrote (trailing whitespace
    /// ignored); `None` for anything else, e.g. nothing at all when the
    /// daemon died first.
    pub fn parse(text: &str) -> Option<Readiness> {
        let text = text.trim_end();
        if let Some(pid) = text.strip_prefix("ready ") {
            return pid.parse().ok().map(|pid| Readiness::Ready { pid });
        }
        if let Some(msg) = text.strip_prefix("busy ") {
            return Some(Readiness::Busy(msg.to_string()));
        }
        let rest = text.strip_prefix("error ")?;
        let (kind, message) = match rest.split_once(' ') {
            Some(("usage", m)) => (Kind::Usage, m),
            Some(("runtime-dir", m)) => (Kind::RuntimeDir, m),
            Some(("daemon", m)) => (Kind::Daemon, m),
            _ => (Kind::Daemon, rest),
        };
        Some(Readiness::Error { kind, message: message.to_string() })
    }
}

/// Tell the process that started us (through `--ready-fd`) how start-up went.
pub fn notify(fd: Option<i32>, r: &Readiness) {
    let Some(fd) = fd else { return };
    // SAFETY: the fd was handed to us by our parent for this one purpose and
    // is used exactly once, here.
    let f = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = File::from(f);
    let _ = io::Write::write_all(&mut f, format!("{}\n", r.encode()).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_round_trips() {
        for r in [
            Readiness::Ready { pid: 4242 },
            Readiness::Busy("another weaver daemon (pid 7) already runs for /run/w".into()),
            Readiness::Error { kind: Kind::Usage, message: "bad weaver.toml\nline 3".into() },
            Readiness::Error { kind: Kind::RuntimeDir, message: "cannot lock x".into() },
            Readiness::Error { kind: Kind::Daemon, message: "no".into() },
        ] {
            let line = r.encode();
            assert!(!line.ends_with('\n'), "{line:?}");
            assert_eq!(Readiness::parse(&format!("{line}\n")), Some(r));
        }
    }

    #[test]
    fn readiness_encodes_and_parses_known_lines() {
        assert_eq!(Readiness::Ready { pid: 12 }.encode(), "ready 12");
        assert_eq!(Readiness::Busy("held".into()).encode(), "busy held");
        let io = Readiness::Error { kind: Kind::Io, message: "event loop failed".into() };
        assert_eq!(io.encode(), "error daemon event loop failed");
        assert_eq!(
            Readiness::parse("error runtime-dir not yours\n"),
            Some(Readiness::Error { kind: Kind::RuntimeDir, message: "not yours".into() })
        );
        // An unknown kind keeps the whole text as the message.
        assert_eq!(
            Readiness::parse("error exploded"),
            Some(Readiness::Error { kind: Kind::Daemon, message: "exploded".into() })
        );
        for junk in ["", "\n", "ready", "ready x", "hello 1", "readyish 3"] {
            assert_eq!(Readiness::parse(junk), None, "{junk:?}");
        }
    }
}
