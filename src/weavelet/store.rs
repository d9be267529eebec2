//! Revisions per target, and their files in the state dir.
//!
//! A target's document at revision 0 is its defaults (`[process.params]`);
//! every `config set`, `unset` or `rollback` commits the whole new document
//! as the next revision. The last [`KEEP`] revisions are kept, in memory
//! and in `<state dir>/targets/<target>.json`, written atomically (a
//! temporary file, fsync, rename, fsync of the directory) before the
//! revision counts as made, so an acknowledged revision survives a crash.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::doc::{self, Doc};
use super::KEEP;

/// One revision of a target's document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub values: Doc,
    /// Keys that differ from the revision before.
    pub changed: Vec<String>,
    /// What made it: "set", "unset", "rollback to 3".
    pub note: String,
}

/// A target file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct TargetFile {
    target: String,
    revisions: Vec<Revision>,
}

#[derive(Debug, Default)]
struct Target {
    defaults: Doc,
    /// Declared by the configuration (a process).
    declared: bool,
    /// Oldest first; at most [`KEEP`].
    revisions: VecDeque<Revision>,
}

impl Target {
    fn current(&self) -> (u64, &Doc) {
        match self.revisions.back() {
            Some(r) => (r.revision, &r.values),
            None => (0, &self.defaults),
        }
    }
}

/// Every target's revisions.
#[derive(Debug, Default)]
pub struct Store {
    /// `None`: nothing is persisted (tests of the pure parts).
    dir: Option<PathBuf>,
    targets: BTreeMap<String, Target>,
    /// Targets with revisions not written yet (`commit_with` not
    /// `durable`): written by `save_pending`.
    pending: std::collections::BTreeSet<String>,
}

/// The default state dir: `$XDG_STATE_HOME/weaver`, else
/// `~/.local/state/weaver`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x).join("weaver"),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/".into());
            home.join(".local/state/weaver")
        }
    }
}

impl Store {
    /// A store that keeps nothing on disk.
    pub fn in_memory() -> Store {
        Store::default()
    }

    /// Open (creating, mode 0700) `dir` and load every target file in it.
    /// Files that cannot be read are skipped and named in the second value.
    pub fn open(dir: &Path) -> io::Result<(Store, Vec<String>)> {
        let targets_dir = dir.join("targets");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&targets_dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let mut store = Store {
            dir: Some(dir.to_path_buf()),
            targets: BTreeMap::new(),
            pending: Default::default(),
        };
        let mut problems = Vec::new();
        for entry in fs::read_dir(&targets_dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match load(&path) {
                Ok(f) => {
                    let t = store.targets.entry(f.target).or_default();
                    t.revisions = f.revisions.into_iter().collect();
                    while t.revisions.len() > KEEP {
                        t.revisions.pop_front();
                    }
                }
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        Ok((store, problems))
    }

    /// The configuration declares `target` with these defaults (a reload
    /// may change them; targets no longer declared keep their revisions).
    pub fn declare(&mut self, target: &str, defaults: Doc) {
        let t = self.targets.entry(target.to_string()).or_default();
        t.declared = true;
        t.defaults = defaults;
    }

    /// Forget every declaration (before declaring the reloaded ones).
    pub fn undeclare_all(&mut self) {
        for t in self.targets.values_mut() {
            t.declared = false;
            t.defaults = Doc::new();
        }
    }

    /// Declared, or with revisions.
    pub fn known(&self, target: &str) -> bool {
        self.targets.get(target).is_some_and(|t| t.declared || !t.revisions.is_empty())
    }

    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().filter(|(n, _)| self.known(n)).map(|(n, _)| n.as_str())
    }

    /// The effective document and its revision.
    pub fn current(&self, target: &str) -> Option<(u64, &Doc)> {
        self.targets.get(target).filter(|_| self.known(target)).map(Target::current)
    }

    /// The document at `revision` (0: the defaults), if still kept.
    pub fn at(&self, target: &str, revision: u64) -> Option<&Doc> {
        let t = self.targets.get(target)?;
        if revision == 0 {
            return Some(&t.defaults);
        }
        t.revisions.iter().find(|r| r.revision == revision).map(|r| &r.values)
    }

    /// Kept revisions, oldest first.
    pub fn history(&self, target: &str) -> Vec<&Revision> {
        self.targets.get(target).map(|t| t.revisions.iter().collect()).unwrap_or_default()
    }

    /// Commit `values` as `target`'s next revision: validated, written to
    /// disk, then kept. On any error nothing changes.
    pub fn commit(
        &mut self,
        target: &str,
        values: Doc,
        note: String,
        time_ms: u64,
    ) -> Result<&Revision, String> {
        self.commit_with(target, values, note, time_ms, true)
    }

    /// `commit`, or when not `durable` kept in memory and written later
    /// by `save_pending` (atomically, without waiting for the disk): for
    /// revisions whose source of truth is elsewhere (the fleet's bucket),
    /// where a file written before delivery (~10 ms with its fsync) would
    /// only delay every weavelet.
    pub fn commit_with(
        &mut self,
        target: &str,
        values: Doc,
        note: String,
        time_ms: u64,
        durable: bool,
    ) -> Result<&Revision, String> {
        doc::check_target(target)?;
        doc::check_doc(&values)?;
        let t = self.targets.entry(target.to_string()).or_default();
        let (prev, old) = t.current();
        let rev = Revision {
            revision: prev + 1,
            time_ms,
            changed: doc::changed_keys(old, &values),
            values,
            note,
        };
        t.revisions.push_back(rev);
        let dropped = if t.revisions.len() > KEEP { t.revisions.pop_front() } else { None };
        if !durable {
            if self.dir.is_some() {
                self.pending.insert(target.to_string());
            }
            return Ok(t.revisions.back().expect("pushed above"));
        }
        self.pending.remove(target);
        if let Some(dir) = &self.dir {
            let file = TargetFile {
                target: target.to_string(),
                revisions: t.revisions.iter().cloned().collect(),
            };
            if let Err(e) = save(dir, target, &file, true) {
                t.revisions.pop_back();
                if let Some(d) = dropped {
                    t.revisions.push_front(d);
                }
                return Err(format!("cannot save the revision in {}: {e}", dir.display()));
            }
        }
        Ok(t.revisions.back().expect("pushed above"))
    }
}

impl Store {
    /// Write the revisions `commit_with` kept in memory (atomically, not
    /// waiting for the disk); what could not be written, said.
    pub fn save_pending(&mut self) -> Vec<String> {
        let Some(dir) = &self.dir else { return Vec::new() };
        let mut errors = Vec::new();
        for target in std::mem::take(&mut self.pending) {
            let Some(t) = self.targets.get(&target) else { continue };
            let file = TargetFile {
                target: target.clone(),
                revisions: t.revisions.iter().cloned().collect(),
            };
            if let Err(e) = save(dir, &target, &file, false) {
                errors.push(format!("cannot save {target}'s revisions in {}: {e}", dir.display()));
            }
        }
        errors
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

fn load(path: &Path) -> io::Result<TargetFile> {
    let bytes = fs::read(path)?;
    let f: TargetFile = serde_json::from_slice(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    doc::check_target(&f.target).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(f)
}

/// Write `<dir>/targets/<target>.json` atomically and durably.
fn save(dir: &Path, target: &str, file: &TargetFile, durable: bool) -> io::Result<()> {
    let bytes = serde_json::to_vec(file).map_err(io::Error::other)?;
    let name = format!("{target}.json");
    crate::sys::write_private_atomic(&dir.join("targets"), &name, &bytes, durable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: serde_json::Value) -> Doc {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn revisions_count_up_and_only_the_last_ones_are_kept() {
        let mut s = Store::in_memory();
        assert!(!s.known("t") && s.current("t").is_none());
        s.declare("t", doc(json!({"lr": 0.1})));
        assert_eq!(s.current("t").unwrap(), (0, &doc(json!({"lr": 0.1}))));
        let r = s.commit("t", doc(json!({"lr": 0.2, "x": 1})), "set".into(), 5).unwrap();
        assert_eq!((r.revision, r.changed.clone()), (1, vec!["lr".into(), "x".into()]));
        for i in 0..100 {
            s.commit("t", doc(json!({ "lr": i })), "set".into(), 6).unwrap();
        }
        let h = s.history("t");
        assert_eq!(h.len(), KEEP);
        assert_eq!((h[0].revision, h[KEEP - 1].revision), (101 - KEEP as u64 + 1, 101));
        assert!(s.at("t", 1).is_none(), "dropped");
        assert_eq!(s.at("t", 0).unwrap(), &doc(json!({"lr": 0.1})));
        assert_eq!(s.at("t", 101).unwrap(), &doc(json!({"lr": 99})));
        assert!(s.commit("t", doc(json!({"a b": 1})), "set".into(), 7).is_err());
        assert_eq!(s.current("t").unwrap().0, 101, "a refused commit changes nothing");
        assert!(s.commit("../x", Doc::new(), "set".into(), 7).is_err());
    }

    #[test]
    fn revisions_survive_reopening_and_numbers_are_never_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        {
            let (mut s, problems) = Store::open(&dir).unwrap();
            assert!(problems.is_empty());
            for i in 0..70 {
                s.commit("trainer", doc(json!({ "step": i })), "set".into(), 1).unwrap();
            }
        }
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::write(dir.join("targets/broken.json"), b"{nope").unwrap();
        let (mut s, problems) = Store::open(&dir).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(s.current("trainer").unwrap().0, 70);
        assert_eq!(s.history("trainer").len(), KEEP);
        let r = s.commit("trainer", Doc::new(), "unset".into(), 2).unwrap();
        assert_eq!((r.revision, r.changed.clone()), (71, vec!["step".to_string()]));
        assert!(s.known("trainer") && !s.known("broken"));
    }
}
