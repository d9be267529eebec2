//! The runtime directory: where the sockets, lock, pid file and log live.
//!
//! It must be a real directory (not a symlink), owned by us and closed to
//! group and other (0700); weaver creates it that way and refuses anything
//! else, since whoever controls it controls the sockets.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Kind, Result};

#[derive(Debug, Clone)]
pub struct RuntimeDir {
    path: PathBuf,
}

/// The default directory: `$XDG_RUNTIME_DIR/weaver`, else `/tmp/weaver-<uid>`.
pub fn default_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("weaver"),
        _ => PathBuf::from(format!("/tmp/weaver-{}", nix::unistd::geteuid())),
    }
}

impl RuntimeDir {
    /// Open `path`, creating it (mode 0700, the last component only) when
    /// missing, and check that it is safe to use.
    pub fn open(path: &Path) -> Result<RuntimeDir> {
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| {
                    Error::new(Kind::RuntimeDir, format!("cannot resolve {}: {e}", path.display()))
                })?
                .join(path)
        };
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::new(
                    Kind::RuntimeDir,
                    format!(
                        "cannot create runtime directory {}: {e}; create its parent or pick \
                         another with --runtime-dir / WEAVER_RUNTIME_DIR",
                        path.display()
                    ),
                ))
            }
        }
        check(&path)?;
        Ok(RuntimeDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Control socket clients connect to.
    pub fn control_socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }
    /// Socket the compute daemon connects back to.
    pub fn compute_socket(&self) -> PathBuf {
        self.path.join("compute.sock")
    }
    /// Socket weavelets connect to.
    pub fn weavelet_socket(&self) -> PathBuf {
        self.path.join(WEAVELET_SOCKET)
    }
    /// Held (flock) by the daemon for its whole life.
    pub fn daemon_lock(&self) -> PathBuf {
        self.path.join("weaver.lock")
    }
    /// Held by a command while it starts a daemon, so racing first commands
    /// start one.
    pub fn launch_lock(&self) -> PathBuf {
        self.path.join("launch.lock")
    }
    /// Pid and start time of the daemon.
    pub fn pid_file(&self) -> PathBuf {
        self.path.join("weaver.pid")
    }
    /// The detached daemon's log.
    pub fn log_file(&self) -> PathBuf {
        self.path.join("weaver.log")
    }
}

/// The weavelet socket's name in the runtime dir.
pub const WEAVELET_SOCKET: &str = "weavelet.sock";

/// Open (creating, mode 0600) a file of ours in the runtime dir: never
/// through a symlink, closed on exec. `append` for logs; otherwise opened
/// for writing without truncation (lock files).
pub fn open_private(path: &Path, append: bool) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = fs::OpenOptions::new();
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(false);
    }
    o.create(true).mode(0o600).custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW).open(path)
}

/// The pid of the process holding a `flock` on `path`, from `/proc/locks`:
/// `Ok(None)` when nobody holds one, an error when that cannot be told (no
/// `/proc/locks`, or no such file). Lets a command name a daemon without
/// taking its lock, even while the daemon has no pid file (just started,
/// or about to exit).
pub fn lock_holder(path: &Path) -> io::Result<Option<u32>> {
    let md = fs::metadata(path)?;
    let locks = fs::read_to_string("/proc/locks")?;
    Ok(flock_holder(&locks, md.dev(), md.ino()))
}

/// The holder of a flock on the file (`dev`, `ino`) in the text of
/// `/proc/locks`, whose lines read `1: FLOCK  ADVISORY  WRITE 4262
/// 00:2c:1234 0 EOF` (waiters' lines have `->` after the number). A line of
/// the same inode on a device numbered otherwise still counts when no line
/// matches both: some filesystems (btrfs subvolumes) report another device
/// in `stat` than in `/proc/locks`.
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let dev = format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev));
    let mut same_inode = None;
    for line in locks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let Some((d, i)) = f[5].rsplit_once(':') else { continue };
        let Ok(pid) = f[4].parse::<u32>() else { continue };
        if i.parse() != Ok(ino) || pid == 0 {
            continue;
        }
        if d == dev {
            return Some(pid);
        }
        same_inode.get_or_insert(pid);
    }
    same_inode
}

/// Refuse a directory that is a symlink, not a directory, not ours, or open
/// to group or other.
pub fn check(path: &Path) -> Result<()> {
    let md = fs::symlink_metadata(path)
        .map_err(|e| Error::io(Kind::RuntimeDir, "inspect runtime directory", path, &e))?;
    let p = path.display();
    if md.file_type().is_symlink() {
        return Err(Error::new(
            Kind::RuntimeDir,
            format!(
                "runtime directory {p} is a symbolic link; weaver refuses it because the link \
                 could redirect its sockets. Remove the link or pick another --runtime-dir"
            ),
        ));
    }
    if !md.is_dir() {
        return Err(Error::new(
            Kind::RuntimeDir,
            format!(
                "runtime directory {p} is not a directory; remove it or pick another --runtime-dir"
            ),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        return Err(Error::new(
            Kind::RuntimeDir,
            format!(
                "runtime directory {p} belongs to uid {}, not to you (uid {me}); pick a directory \
                 of your own with --runtime-dir",
                md.uid()
            ),
        ));
    }
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::new(
            Kind::RuntimeDir,
            format!(
                "runtime directory {p} has mode {mode:03o}, open to group or other; weaver needs \
                 0700. Run `chmod 700 {p}` or pick another --runtime-dir"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_0700_and_refuses_unsafe_dirs() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("rt");
        let rt = RuntimeDir::open(&d).unwrap();
        assert_eq!(fs::metadata(rt.path()).unwrap().permissions().mode() & 0o777, 0o700);
        RuntimeDir::open(&d).expect("reopening is fine");

        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let e = RuntimeDir::open(&d).unwrap_err();
        assert!(e.message.contains("chmod 700"), "{}", e.message);

        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = RuntimeDir::open(&link).unwrap_err();
        assert!(e.message.contains("symbolic link"), "{}", e.message);

        let file = t.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(RuntimeDir::open(&file).unwrap_err().message.contains("not a directory"));
    }

    #[test]
    fn the_holder_of_a_flock_is_found_in_proc_locks() {
        use nix::fcntl::{Flock, FlockArg};
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.lock");
        let f = open_private(&p, false).unwrap();
        assert_eq!(lock_holder(&p).unwrap(), None);
        let held = Flock::lock(f, FlockArg::LockExclusiveNonblock).unwrap();
        assert_eq!(lock_holder(&p).unwrap(), Some(std::process::id()));
        drop(held);
        assert_eq!(lock_holder(&p).unwrap(), None);
        assert!(lock_holder(&t.path().join("none")).is_err());
    }

    #[test]
    fn proc_locks_lines_are_read_by_device_and_inode() {
        let dev = libc::makedev(0, 0x2c);
        let text = "1: POSIX  ADVISORY  WRITE 10 00:2c:77 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 11 00:2c:78 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 12 00:2c:77 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 13 00:2d:77 0 EOF\n\
                    4: FLOCK  ADVISORY  WRITE 14 00:2c:77 0 EOF\n";
        assert_eq!(flock_holder(text, dev, 77), Some(14), "device and inode match");
        assert_eq!(flock_holder(text, libc::makedev(0, 0x99), 77), Some(13), "inode alone");
        assert_eq!(flock_holder(text, dev, 79), None);
    }
}
