//! Size-based rotation of a process's output file, as a plan: the reactor
//! asks before each append whether to rotate first, and performs the
//! renames this module lists (`file.2 -> file.3`, `file.1 -> file.2`,
//! `file -> file.1`), then reopens `file`. No I/O here.

use std::path::{Path, PathBuf};

/// The size bookkeeping of one output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    max_bytes: u64,
    keep: u32,
    size: u64,
}

impl Rotation {
    /// `size`: how big the file already is when opened (append mode).
    pub fn new(max_bytes: u64, keep: u32, size: u64) -> Rotation {
        Rotation { max_bytes: max_bytes.max(1), keep, size }
    }

    /// About to append `len` bytes: true when the file must be rotated
    /// first (it is not empty and would grow past `max_bytes`). A single
    /// write larger than `max_bytes` still goes whole into a fresh file.
    pub fn before_write(&mut self, len: u64) -> bool {
        let rotate = self.size > 0 && self.size + len > self.max_bytes;
        if rotate {
            self.size = 0;
        }
        self.size += len;
        rotate
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Renames that rotate `path`, to perform in order (a missing source is
    /// skipped by the caller). With `keep = 0` there are none: truncate.
    pub fn renames(&self, path: &Path) -> Vec<(PathBuf, PathBuf)> {
        renames(path, self.keep)
    }
}

/// `path.N` (the suffix added to the whole file name).
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// `path.{keep-1} -> path.{keep}`, ..., `path -> path.1`.
pub fn renames(path: &Path, keep: u32) -> Vec<(PathBuf, PathBuf)> {
    let mut out: Vec<(PathBuf, PathBuf)> =
        (1..keep).rev().map(|n| (numbered(path, n), numbered(path, n + 1))).collect();
    if keep > 0 {
        out.push((path.to_path_buf(), numbered(path, 1)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_before_a_write_that_would_pass_the_limit() {
        let mut r = Rotation::new(10, 2, 4);
        assert!(!r.before_write(6), "exactly at the limit is fine");
        assert!(r.before_write(1));
        assert_eq!(r.size(), 1);
        assert!(!r.before_write(9));
        // A write larger than the limit: into a fresh file, whole.
        assert!(r.before_write(50));
        assert!(r.before_write(1));
        let mut fresh = Rotation::new(10, 2, 0);
        assert!(!fresh.before_write(50), "an empty file is never rotated");
    }

    #[test]
    fn renames_shift_the_old_files_oldest_first() {
        let p = Path::new("/log/web.out");
        let s = |a: &str, b: &str| (PathBuf::from(a), PathBuf::from(b));
        assert_eq!(
            renames(p, 3),
            [
                s("/log/web.out.2", "/log/web.out.3"),
                s("/log/web.out.1", "/log/web.out.2"),
                s("/log/web.out", "/log/web.out.1")
            ]
        );
        assert_eq!(renames(p, 1), [s("/log/web.out", "/log/web.out.1")]);
        assert!(Rotation::new(1, 0, 0).renames(p).is_empty());
    }
}
