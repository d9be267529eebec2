//! The daemon's own sockets, watched: a socket path that was removed (a
//! /tmp cleaner) or replaced is noticed through inotify on the runtime dir,
//! with no polling, and bound again. The loop owns the listeners; this
//! tells it which ones need binding again.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Which listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Control,
    Compute,
    Weavelet,
}

/// What a socket path must still be: the file we bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    /// The file at `path` now, if any.
    pub fn of(path: &Path) -> Option<Identity> {
        let md = std::fs::symlink_metadata(path).ok()?;
        Some(Identity { dev: md.dev(), ino: md.ino() })
    }
}

/// The watched paths and the identity each had when bound.
#[derive(Debug)]
pub struct Sockets {
    inotify: Option<Inotify>,
    paths: [(Which, PathBuf, Option<Identity>); 3],
}

impl Sockets {
    /// Watch `dir` for changes to the socket paths (bound already).
    pub fn new(dir: &Path, control: PathBuf, compute: PathBuf, weavelet: PathBuf) -> Sockets {
        let inotify = match watch(dir) {
            Ok(i) => Some(i),
            Err(e) => {
                log::warn!(
                    "cannot watch {} ({e}): a removed socket is bound again only on SIGUSR1",
                    dir.display()
                );
                None
            }
        };
        let ids = (Identity::of(&control), Identity::of(&compute), Identity::of(&weavelet));
        Sockets {
            inotify,
            paths: [
                (Which::Control, control, ids.0),
                (Which::Compute, compute, ids.1),
                (Which::Weavelet, weavelet, ids.2),
            ],
        }
    }

    /// The inotify fd to watch, if there is one.
    pub fn fd(&self) -> Option<RawFd> {
        self.inotify.as_ref().map(|i| i.as_fd().as_raw_fd())
    }

    pub fn path(&self, which: Which) -> &Path {
        &self.paths.iter().find(|p| p.0 == which).expect("all are listed").1
    }

    /// Read what inotify has (to WouldBlock) and say which sockets are no
    /// longer the files we bound.
    pub fn changed(&mut self) -> Vec<Which> {
        if let Some(i) = &self.inotify {
            // The events only wake us; the paths are checked below.
            while let Ok(events) = i.read_events() {
                if events.is_empty() {
                    break;
                }
            }
        }
        self.check()
    }

    /// The sockets whose path is missing or holds another file.
    pub fn check(&self) -> Vec<Which> {
        self.paths
            .iter()
            .filter(|(_, path, id)| Identity::of(path) != *id)
            .map(|(w, _, _)| *w)
            .collect()
    }

    /// A fresh listener at `which`'s path (whatever stale file sits there
    /// removed: we hold the daemon lock), or `None` with the reason logged.
    pub fn bind_again(&self, which: Which) -> Option<mio::net::UnixListener> {
        let path = self.path(which);
        match crate::daemon::remove_stale(path).and_then(|_| crate::daemon::bind(path)) {
            Ok(l) => Some(l),
            Err(e) => {
                log::error!("{} is gone and cannot be bound again: {e}", path.display());
                None
            }
        }
    }

    /// `which` was bound again and is watched: remember the new file.
    pub fn rebound(&mut self, which: Which) {
        for (w, path, id) in &mut self.paths {
            if *w == which {
                *id = Identity::of(path);
                log::warn!("{} was removed or replaced: bound it again", path.display());
            }
        }
    }
}

fn watch(dir: &Path) -> io::Result<Inotify> {
    let i = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    let mask = AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF;
    i.add_watch(dir, mask)?;
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_and_replaced_sockets_are_noticed() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("control.sock"), tmp.path().join("compute.sock"));
        let c = tmp.path().join("weavelet.sock");
        let _la = std::os::unix::net::UnixListener::bind(&a).unwrap();
        let _lb = std::os::unix::net::UnixListener::bind(&b).unwrap();
        let _lc = std::os::unix::net::UnixListener::bind(&c).unwrap();
        let mut s = Sockets::new(tmp.path(), a.clone(), b.clone(), c.clone());
        assert!(s.fd().is_some());
        assert!(s.changed().is_empty());
        std::fs::remove_file(&a).unwrap();
        assert_eq!(s.changed(), [Which::Control]);
        // Another file in its place is no better.
        let _other = std::os::unix::net::UnixListener::bind(&a).unwrap();
        assert_eq!(s.changed(), [Which::Control]);
        s.rebound(Which::Control);
        assert!(s.changed().is_empty());
        std::fs::remove_file(&b).unwrap();
        assert_eq!(s.check(), [Which::Compute]);
        s.rebound(Which::Compute);
        std::fs::remove_file(&c).unwrap();
        assert_eq!(s.changed(), [Which::Weavelet]);
    }
}
