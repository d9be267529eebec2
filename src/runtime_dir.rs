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
}
