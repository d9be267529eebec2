//! The daemon, started in order: lock, bind, signals, pid file, ready, then
//! the reactor (which spawns compute) until a graceful stop, then cleanup.

pub mod clients; // room: control connections, their queues and handshakes
pub mod compute; // room: the compute child, its connection, lifecycle table, request mux
pub mod conn; // one framed non-blocking connection type
pub mod contain; // cgroup or environment marker: nothing started outlives weaver
pub mod effect; // what rooms ask the loop to do
pub mod fleet; // room: the fleet link, NATS and JetStream key-value
pub mod follow; // room: logs -f followers and event subscribers
pub mod guard; // the guard process that outlives a SIGKILLed weaver
pub mod handlers; // one file per request kind
pub mod http; // room: the HTTP endpoint (health, readiness, metrics) and its connections
pub mod ids; // maps keyed by ids weaver issues (a cheap hash)
pub mod mux; // in-flight table, pure
pub mod outq; // write queue of a non-blocking socket
pub mod procs; // room: supervised processes' plumbing
pub mod reactor; // the loop
pub mod runner; // room: `weaver run` jobs: spawn, output, reap, stop, followers
pub mod sockets; // notices a removed or replaced socket path
pub mod stdin; // room: write ends of supervised processes' stdin, sends, attached writers
pub mod tally; // compute requests by op and outcome, latency histogram; pure
pub mod timers; // deadline heap
pub mod token; // the token space
pub mod weavelets; // room: the weavelet hub, its connections, revisions, waiters

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use log::{info, warn};
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Kind, Result};
use crate::launch::{self, Readiness};
use crate::pidfile::{self, PidRecord};
use crate::runtime_dir::{self, RuntimeDir};

pub struct Options {
    pub dir: RuntimeDir,
    pub compute_bin: PathBuf,
    pub compute_workers: Option<u32>,
    /// weaver.toml, if one was found.
    pub config: Option<PathBuf>,
    /// Inherited fd to report readiness on (auto-start).
    pub ready_fd: Option<i32>,
    /// Where our stderr goes, for `status`.
    pub log_file: Option<PathBuf>,
    /// Where weavelet configuration revisions are kept (and the registry
    /// of running daemons).
    pub state_dir: PathBuf,
    /// `--http ADDR`: serve the HTTP endpoint there (over `[http] listen`).
    pub http: Option<String>,
}

/// What the daemon needs to run.
pub struct Setup {
    pub dir: RuntimeDir,
    pub control: mio::net::UnixListener,
    pub compute_listener: mio::net::UnixListener,
    pub weavelet_listener: mio::net::UnixListener,
    pub store: crate::weavelet::store::Store,
    pub compute: compute::Compute,
    pub log_file: Option<PathBuf>,
    pub supervisor: crate::supervise::Supervisor,
    pub config_path: Option<PathBuf>,
    pub guard: Option<guard::Guard>,
    /// The HTTP endpoint's settings and listener, when it is on.
    pub http: Option<(crate::supervise::config::HttpSpec, std::net::TcpListener)>,
    /// `[fleet]`, if configured, and the state dir its cache lives in.
    pub fleet: Option<crate::fleet::config::FleetConfig>,
    pub state_dir: PathBuf,
}

/// Run the daemon in this process until it is stopped.
pub fn run(o: Options) -> Result<()> {
    relay_malloc();
    // The readiness fd must not leak into compute.
    if let Some(fd) = o.ready_fd {
        // SAFETY: fcntl on an inherited fd.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    match start(&o) {
        Ok(r) => r,
        Err(e) => {
            // The kind travels too: a bad configuration is the user's to
            // fix (usage), not a daemon fault.
            launch::notify(o.ready_fd, &Readiness::Error { kind: e.kind, message: e.to_string() });
            Err(e)
        }
    }
}

/// Payload buffers of the relay (up to 64 KiB a frame, many a turn) come
/// and go by the thousand a second; glibc gives freed memory at the top of
/// the heap back to the kernel past 128 KiB by default, and every buffer
/// after that costs fresh page faults (a tenth of the relay's time in its
/// profile, docs/performance.md). Keep up to 8 MiB of freed heap instead,
/// and serve blocks under 1 MiB from the heap: bounded, and idle RSS is
/// unchanged (nothing is kept before it was used).
fn relay_malloc() {
    // SAFETY: mallopt only tunes thresholds; called before any thread.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn start(o: &Options) -> Result<Result<()>> {
    let dir = &o.dir;
    // A bad configuration stops us before we take anything.
    let config = match &o.config {
        Some(p) => crate::supervise::load(p)
            .map_err(|e| Error::new(Kind::Usage, format!("{e}\nfix {} and retry", p.display())))?,
        None => crate::supervise::Config::default(),
    };
    let supervisor = crate::supervise::Supervisor::new(config.clone(), std::process::id() as u64)
        .map_err(|e| Error::new(Kind::Usage, format!("{e}")))?;
    let fleet = crate::fleet::config::load(o.config.as_deref())
        .map_err(|e| Error::new(Kind::Usage, format!("{e}\nfix [fleet] and retry")))?;
    if let Some(f) = &fleet {
        // An unreadable secret is the user's to fix, before we start.
        f.auth().map_err(|e| Error::new(Kind::Usage, format!("[fleet]: {e}")))?;
    }
    let (store, problems) = crate::weavelet::store::Store::open(&o.state_dir).map_err(|e| {
        Error::io(
            Kind::Usage,
            "open the state dir (--state-dir, WEAVER_STATE_DIR)",
            &o.state_dir,
            &e,
        )
    })?;
    for p in problems {
        warn!("skipped an unreadable weavelet revision file: {p}");
    }
    let http_spec = match &o.http {
        Some(a) => {
            let allow = config.http.as_ref().is_some_and(|h| h.allow_remote);
            let h = crate::supervise::config::HttpSpec::check(a, allow)
                .map_err(|e| Error::new(Kind::Usage, format!("--http: {e}")))?;
            // The timeouts of [http] still apply.
            Some(match &config.http {
                Some(c) => crate::supervise::config::HttpSpec { listen: h.listen, ..c.clone() },
                None => h,
            })
        }
        None => config.http.clone(),
    };
    let lock_path = dir.daemon_lock();
    let lock = runtime_dir::open_private(&lock_path, false)
        .map_err(|e| Error::io(Kind::RuntimeDir, "open", &lock_path, &e))?;
    let lock = match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = pidfile::live_pid(&dir.pid_file())
                .map(|p| format!("pid {p}"))
                .unwrap_or_else(|| "a starting daemon".into());
            let msg = format!(
                "another weaver daemon ({holder}) already runs for {}",
                dir.path().display()
            );
            launch::notify(o.ready_fd, &Readiness::Busy(msg.clone()));
            return Ok(Err(Error::new(Kind::Daemon, msg)));
        }
        Err((_, e)) => {
            return Err(Error::new(
                Kind::RuntimeDir,
                format!("cannot lock {}: {e}", lock_path.display()),
            ))
        }
    };
    // We hold the lock: whatever sockets are there are stale.
    let control_path = dir.control_socket();
    let compute_path = dir.compute_socket();
    let weavelet_path = dir.weavelet_socket();
    remove_stale(&control_path)?;
    remove_stale(&compute_path)?;
    remove_stale(&weavelet_path)?;
    let control = bind(&control_path)?;
    let compute_listener = bind(&compute_path)?;
    let weavelet_listener = bind(&weavelet_path)?;
    let http = match &http_spec {
        Some(h) => Some((
            h.clone(),
            http::bind(h.listen).map_err(|e| {
                Error::new(
                    Kind::Usage,
                    format!(
                    "cannot listen for HTTP on {}: {e}; choose another address in [http] listen \
                     or --http (port 0 takes a free port)",
                    h.listen
                ),
                )
            })?,
        )),
        None => None,
    };
    let pid_path = dir.pid_file();
    let me = PidRecord::of(std::process::id())
        .ok_or_else(|| Error::new(Kind::Io, "cannot read our own /proc entry"))?;
    pidfile::write(&pid_path, me)
        .map_err(|e| Error::io(Kind::RuntimeDir, "write", &pid_path, &e))?;
    // Payload buffers come and go by the megabyte: keep up to 8 MiB of
    // freed heap instead of returning it to the kernel after every burst and
    // faulting it back in on the next (large payloads are mmapped and
    // returned at once regardless).
    // SAFETY: plain mallopt before any thread exists.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) };
    // A fixed mmap threshold: glibc would otherwise raise it after the first
    // large payload is freed and serve later ones from the heap, where they
    // stay after a burst. Payloads above it are mapped and unmapped.
    // SAFETY: as above.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    raise_nofile();
    // Orphaned descendants of our children come to us, so they can be reaped
    // and stopped too.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // Containment and the guard first, before anything they must hold is
    // spawned.
    let containment = contain::Containment::init(format!("{}.{}", me.pid, me.start_time));
    log::info!("children are contained by {}", containment.describe());
    let guard = match std::env::current_exe().and_then(|exe| guard::Guard::spawn(&exe)) {
        Ok(mut g) => {
            g.contain(containment);
            Some(g)
        }
        Err(e) => {
            warn!("cannot start the guard process ({e}): what supervised processes fork may outlive weaver if it is killed with SIGKILL");
            None
        }
    };
    let base = compute::Launch::defaults(o.compute_bin.clone(), o.compute_workers);
    let compute = compute::Compute::new(
        base,
        o.compute_workers.is_some(),
        &config.compute,
        compute_path.clone(),
    );
    let setup = Setup {
        dir: dir.clone(),
        control,
        compute_listener,
        weavelet_listener,
        store,
        compute,
        log_file: o.log_file.clone(),
        supervisor,
        config_path: o.config.clone(),
        guard,
        http,
        fleet,
        state_dir: o.state_dir.clone(),
    };
    let mut reactor = reactor::Reactor::new(setup)
        .map_err(|e| Error::new(Kind::Io, format!("cannot set up the event loop: {e}")))?;
    info!(
        "weaver daemon {} ready: pid {}, runtime dir {}",
        crate::protocol::RELEASE,
        me.pid,
        dir.path().display()
    );
    let entry = crate::registry::Entry {
        pid: me.pid,
        start_time: me.start_time,
        version: crate::protocol::RELEASE.to_string(),
        runtime_dir: dir.path().display().to_string(),
        config: o.config.as_ref().map(|p| p.display().to_string()),
        http: reactor.http_addr().map(|a| a.to_string()),
        started_at_ms: crate::daemon::procs::wall_ms(),
    };
    if let Err(e) = crate::registry::write(&o.state_dir, &entry) {
        warn!(
            "cannot register this daemon in {}: {e}; `weaver ls` will not list it",
            crate::registry::dir(&o.state_dir).display()
        );
    }
    if let Some(a) = &entry.http {
        info!("HTTP endpoint on http://{a} (/health, /ready, /metrics)");
    }
    launch::notify(o.ready_fd, &Readiness::Ready { pid: me.pid });
    let result = reactor.run().map_err(|e| Error::new(Kind::Io, format!("event loop failed: {e}")));
    drop(reactor);
    crate::registry::remove(&o.state_dir, me.pid, me.start_time);
    for p in [&control_path, &compute_path, &weavelet_path] {
        let _ = fs::remove_file(p);
    }
    if pidfile::read(&pid_path).is_ok_and(|(pid, _)| pid == me.pid) {
        let _ = fs::remove_file(&pid_path);
    }
    drop(lock);
    Ok(result)
}

/// Remove a socket left by a daemon that died; only called under the lock.
pub(crate) fn remove_stale(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) => {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_socket() {
                return Err(Error::new(
                    Kind::RuntimeDir,
                    format!(
                        "{} exists and is not a socket; weaver will not remove it. Move it away",
                        p.display()
                    ),
                ));
            }
            warn!("removing stale socket {}", p.display());
            fs::remove_file(p)
                .map_err(|e| Error::io(Kind::RuntimeDir, "remove stale socket", p, &e))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(Kind::RuntimeDir, "inspect", p, &e)),
    }
}

/// Bind a listening socket that only we can use (0600).
pub(crate) fn bind(p: &Path) -> Result<mio::net::UnixListener> {
    // SAFETY: umask is process-wide; the daemon is single-threaded here.
    let old = unsafe { libc::umask(0o177) };
    let l = mio::net::UnixListener::bind(p);
    // SAFETY: as above; the previous mask comes back.
    unsafe { libc::umask(old) };
    let l = l.map_err(|e| Error::io(Kind::RuntimeDir, "bind socket", p, &e))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(Kind::RuntimeDir, "chmod", p, &e))?;
    Ok(l)
}

/// Freed heap kept instead of returned to the kernel.
const TRIM_THRESHOLD: i32 = 8 << 20;
/// Allocations from this size on are mapped on their own.
const MMAP_THRESHOLD: i32 = 256 << 10;

/// The open-file limit the daemon was started with, for its children (set
/// once by [`raise_nofile`]).
static CHILD_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Every supervised process costs weaver two pipe ends, every client a
/// socket: raise our soft open-file limit to the hard one. Children get
/// the original limit back ([`child_nofile`]).
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur >= lim.rlim_max
    {
        return;
    }
    let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
    // SAFETY: plain setrlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        let _ = CHILD_NOFILE.set(lim);
        log::debug!("open-file limit raised from {} to {}", lim.rlim_cur, lim.rlim_max);
    }
}

/// The limit to give back to children, if [`raise_nofile`] changed ours.
pub(crate) fn child_nofile() -> Option<libc::rlimit> {
    CHILD_NOFILE.get().copied()
}
