//! The fleet's documents as this host last saw them, and the host-local
//! overlay, persisted in `<state dir>/fleet.json` (atomically), so a weaver
//! that starts while NATS is down serves the last known fleet
//! configuration (flagged not synced).
//!
//! A weavelet's effective document is three layers, later winning per key:
//! the `[process.params]` defaults, the fleet document, the local overlay
//! (`config set --local`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::weavelet::Doc;

/// One target's fleet document at its revision (the KV sequence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDoc {
    pub revision: u64,
    pub values: Doc,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cache {
    /// The bucket these documents came from.
    pub bucket: String,
    /// Its stream's creation time (a re-created bucket differs).
    pub created: Option<String>,
    /// The last revision seen of the whole bucket.
    pub revision: u64,
    pub targets: BTreeMap<String, FleetDoc>,
    pub overlay: BTreeMap<String, Doc>,
    /// When it was last written (ms since the epoch).
    pub saved_ms: u64,
}

/// Where a key of the effective document comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Params,
    Fleet,
    Local,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Params => "params",
            Origin::Fleet => "fleet",
            Origin::Local => "local",
        }
    }
}

/// The effective document: `defaults`, then the fleet document, then the
/// overlay; with each key's origin.
pub fn effective(
    defaults: &Doc,
    fleet: Option<&Doc>,
    overlay: Option<&Doc>,
) -> (Doc, BTreeMap<String, Origin>) {
    let mut doc = defaults.clone();
    let mut origin: BTreeMap<String, Origin> =
        defaults.keys().map(|k| (k.clone(), Origin::Params)).collect();
    for (layer, o) in [(fleet, Origin::Fleet), (overlay, Origin::Local)] {
        for (k, v) in layer.into_iter().flatten() {
            doc.insert(k.clone(), v.clone());
            origin.insert(k.clone(), o);
        }
    }
    (doc, origin)
}

impl Cache {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("fleet.json")
    }

    /// The cache of `bucket` in `state_dir` (empty if none, or if it was of
    /// another bucket; a damaged file is reported and set aside).
    pub fn load(state_dir: &Path, bucket: &str) -> (Cache, Option<String>) {
        let path = Self::path(state_dir);
        let empty = Cache { bucket: bucket.to_string(), ..Cache::default() };
        match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => (empty, None),
            Err(e) => (empty, Some(format!("cannot read {}: {e}", path.display()))),
            Ok(bytes) => match serde_json::from_slice::<Cache>(&bytes) {
                Ok(c) if c.bucket == bucket => (c, None),
                Ok(c) => {
                    // Another bucket's documents do not apply; the overlay
                    // is this host's and stays.
                    (Cache { overlay: c.overlay, ..empty }, None)
                }
                Err(e) => {
                    let _ = fs::rename(&path, path.with_extension("json.damaged"));
                    (
                        empty,
                        Some(format!(
                            "{} is damaged ({e}); set aside, starting empty",
                            path.display()
                        )),
                    )
                }
            },
        }
    }

    /// Write atomically (temporary file, rename); `durable` also waits
    /// for the disk. Fleet documents need not: the bucket is their source
    /// of truth, and a lost write only makes the next start serve an
    /// older cache until it resyncs. The overlay (this host's own) does.
    pub fn save(&mut self, state_dir: &Path, now_ms: u64, durable: bool) -> io::Result<()> {
        self.saved_ms = now_ms;
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        let path = Self::path(state_dir);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("fleet.json");
        crate::sys::write_private_atomic(state_dir, name, &bytes, durable)
    }

    /// A key of the bucket changed (`None`: deleted).
    pub fn apply(&mut self, target: &str, revision: u64, values: Option<Doc>) {
        match values {
            Some(values) => {
                self.targets.insert(target.to_string(), FleetDoc { revision, values });
            }
            None => {
                self.targets.remove(target);
            }
        }
        self.revision = self.revision.max(revision);
    }

    /// The bucket was re-created: forget its documents (not the overlay).
    pub fn reset(&mut self) {
        self.targets.clear();
        self.revision = 0;
        self.created = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: serde_json::Value) -> Doc {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn layers_later_win_and_say_where_each_key_comes_from() {
        let d = doc(json!({"lr": 0.1, "opt": "sgd", "bs": 32}));
        let f = doc(json!({"lr": 0.01, "opt": "adam"}));
        let l = doc(json!({"opt": "lion", "gpu": 1}));
        let (e, o) = effective(&d, Some(&f), Some(&l));
        assert_eq!(e, doc(json!({"lr": 0.01, "opt": "lion", "bs": 32, "gpu": 1})));
        assert_eq!(o["lr"], Origin::Fleet);
        assert_eq!(o["opt"], Origin::Local);
        assert_eq!(o["bs"], Origin::Params);
        assert_eq!(effective(&d, None, None).0, d);
    }

    #[test]
    fn persisted_and_read_back_another_bucket_keeps_only_the_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, err) = Cache::load(dir.path(), "b");
        assert!(err.is_none() && c.targets.is_empty());
        c.apply("trainer", 7, Some(doc(json!({"lr": 1}))));
        c.overlay.insert("trainer".into(), doc(json!({"gpu": 0})));
        c.created = Some("t0".into());
        c.save(dir.path(), 42, true).unwrap();
        let (back, _) = Cache::load(dir.path(), "b");
        assert_eq!(back, c);
        let (other, _) = Cache::load(dir.path(), "other");
        assert!(other.targets.is_empty() && other.overlay.len() == 1);
        c.apply("trainer", 8, None);
        assert!(c.targets.is_empty() && c.revision == 8);
        std::fs::write(Cache::path(dir.path()), b"{nope").unwrap();
        let (empty, err) = Cache::load(dir.path(), "b");
        assert!(empty.targets.is_empty() && err.unwrap().contains("damaged"));
    }
}
