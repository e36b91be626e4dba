//! Snapshots of the in-memory store in a JSON state file.
//!
//! Saving writes a temporary file beside the target, flushes it to disk and renames it over
//! the target, so a crash at any moment leaves either the previous or the new snapshot,
//! never a torn one. Loading refuses a file it cannot read as a whole (so a damaged file is
//! never silently replaced by an empty store) and skips, with a reason, each record that
//! breaks a bound (negative or huge balances, oversized lists, duplicates).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use super::{KeyStore, MemoryKeyStore};
use crate::gate::block_on;
use crate::key::KeyRecord;

/// The state file format version this crate writes and reads.
pub const STATE_FILE_VERSION: u32 = 1;
/// Most skip reasons kept in a [`LoadReport`].
const MAX_REASONS: usize = 100;

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// The file could not be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state file this crate can read; it was left untouched.
    #[error("state file {path} is unreadable ({reason}); it was left untouched: move it aside to start empty")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// What loading a state file found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Whether a file was there (a missing file means a first start).
    pub found: bool,
    /// Records loaded.
    pub loaded: usize,
    /// Records skipped.
    pub skipped: usize,
    /// Why records were skipped (the first 100).
    pub reasons: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileOut<'a> {
    version: u32,
    saved_at: chrono::DateTime<chrono::Utc>,
    keys: &'a [KeyRecord],
}

/// Reads a state file record by record into a store, so a file of a million keys never
/// sits in memory as one parsed tree.
struct FileSeed<'a> {
    store: &'a MemoryKeyStore,
    report: &'a mut LoadReport,
}

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = Option<u32>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = Option<u32>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a paygate state file object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u32>, A::Error> {
        let mut version = None;
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "version" => version = Some(map.next_value::<u32>()?),
                "keys" => map.next_value_seed(KeysSeed {
                    store: self.store,
                    report: &mut *self.report,
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(version)
    }
}

struct KeysSeed<'a> {
    store: &'a MemoryKeyStore,
    report: &'a mut LoadReport,
}

impl<'de> DeserializeSeed<'de> for KeysSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KeysSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of key records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while let Some(value) = seq.next_element::<serde_json::Value>()? {
            let outcome = serde_json::from_value::<KeyRecord>(value)
                .map_err(|e| e.to_string())
                .and_then(|rec| rec.validate().map(|()| rec))
                .and_then(|rec| block_on(self.store.insert(rec)).map_err(|e| e.to_string()));
            match outcome {
                Ok(()) => self.report.loaded += 1,
                Err(reason) => {
                    self.report.skipped += 1;
                    if self.report.reasons.len() < MAX_REASONS {
                        self.report.reasons.push(format!("keys[{i}]: {reason}"));
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateFileError + '_ {
    move |source| StateFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl MemoryKeyStore {
    /// Writes every record to `path` atomically; returns how many were written.
    pub fn save_to(&self, path: impl AsRef<Path>) -> Result<usize, StateFileError> {
        let path = path.as_ref();
        let keys = self.export();
        let tmp = temp_path(path);
        let write = || -> std::io::Result<()> {
            let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let mut out = BufWriter::new(file);
            let doc = FileOut {
                version: STATE_FILE_VERSION,
                saved_at: chrono::Utc::now(),
                keys: &keys,
            };
            serde_json::to_writer(&mut out, &doc)?;
            out.flush()?;
            out.get_ref().sync_all()?;
            fs::rename(&tmp, path)?;
            // Make the rename itself durable.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        let result = write();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err(path))?;
        Ok(keys.len())
    }

    /// Loads a store from `path`. A missing file gives an empty store; a file that cannot
    /// be read as a whole is refused; records that break a bound are skipped and reported.
    pub fn load_from(path: impl AsRef<Path>) -> Result<(Self, LoadReport), StateFileError> {
        let path = path.as_ref();
        let store = MemoryKeyStore::new();
        let mut report = LoadReport::default();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((store, report)),
            Err(e) => return Err(io_err(path)(e)),
        };
        report.found = true;
        let corrupt = |reason: String| StateFileError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let mut de = serde_json::Deserializer::from_reader(BufReader::new(file));
        let seed = FileSeed {
            store: &store,
            report: &mut report,
        };
        let version = seed
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| corrupt(format!("not a paygate state file: {e}")))?;
        match version {
            Some(STATE_FILE_VERSION) => Ok((store, report)),
            Some(v) => Err(corrupt(format!("version {v} is not {STATE_FILE_VERSION}"))),
            None => Err(corrupt("no version field".into())),
        }
    }
}

/// A temporary file beside `path`, unique to this process and call.
fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    path.with_file_name(unique)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KeyStore, KeyUpdate};

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "paygate-state-{}-{}",
            std::process::id(),
            crate::generate_key().unwrap()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn rec(n: u32, credits: u64) -> KeyRecord {
        KeyRecord::new(
            &format!("pg_{n:048x}"),
            &format!("k{n}"),
            credits,
            1_700_000_000_000,
        )
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let d = dir();
        let path = d.join("state.json");
        let store = MemoryKeyStore::new();
        for n in 0..50 {
            block_on(store.insert(rec(n, u64::from(n)))).unwrap();
        }
        let tags = [("team".to_string(), Some("x".to_string()))].into();
        block_on(store.update(&rec(3, 0).key_hash, &KeyUpdate::MergeTags(tags))).unwrap();
        assert_eq!(store.save_to(&path).unwrap(), 50);
        let (loaded, report) = MemoryKeyStore::load_from(&path).unwrap();
        assert_eq!((report.found, report.loaded, report.skipped), (true, 50, 0));
        let mut a = store.export();
        let mut b = loaded.export();
        a.sort_by_key(|r| r.key_hash);
        b.sort_by_key(|r| r.key_hash);
        assert_eq!(a, b);
        assert_eq!(
            block_on(loaded.stats()).unwrap(),
            block_on(store.stats()).unwrap()
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&format!("pg_{:048x}", 3)),
            "no plaintext key at rest"
        );
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_previous_snapshot() {
        let d = dir();
        let path = d.join("state.json");
        let store = MemoryKeyStore::new();
        block_on(store.insert(rec(1, 7))).unwrap();
        store.save_to(&path).unwrap();
        // A writer killed mid-write leaves a torn temporary file and never renames it.
        let mut next = fs::read(&path).unwrap();
        next.truncate(next.len() / 3);
        fs::write(temp_path(&path), &next).unwrap();
        let (loaded, report) = MemoryKeyStore::load_from(&path).unwrap();
        assert_eq!((report.loaded, report.skipped), (1, 0));
        assert_eq!(loaded.export()[0].credits, 7);
        // The next save still succeeds beside the leftover.
        block_on(store.insert(rec(2, 1))).unwrap();
        assert_eq!(store.save_to(&path).unwrap(), 2);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn missing_file_is_a_first_start() {
        let (store, report) = MemoryKeyStore::load_from(dir().join("none.json")).unwrap();
        assert!(!report.found);
        assert_eq!(store.export().len(), 0);
    }

    #[test]
    fn damaged_files_are_refused_and_left_untouched() {
        let d = dir();
        let good = MemoryKeyStore::new();
        block_on(good.insert(rec(1, 5))).unwrap();
        let path = d.join("state.json");
        good.save_to(&path).unwrap();
        let full = fs::read(&path).unwrap();
        for bad in [
            &full[..full.len() / 2],
            b"",
            b"\x00\x01garbage",
            br#"{"version": 99, "keys": []}"#,
            br#"[1,2,3]"#,
        ] {
            fs::write(&path, bad).unwrap();
            let err = MemoryKeyStore::load_from(&path).unwrap_err();
            assert!(matches!(err, StateFileError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("left untouched"));
            assert_eq!(fs::read(&path).unwrap(), bad, "the file is not modified");
        }
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn hostile_records_are_skipped_with_reasons() {
        let d = dir();
        let path = d.join("state.json");
        let ok = serde_json::to_value(rec(1, 5)).unwrap();
        let mut negative = serde_json::to_value(rec(2, 5)).unwrap();
        negative["credits"] = serde_json::json!(-100);
        let mut huge = serde_json::to_value(rec(3, 5)).unwrap();
        huge["credits"] = serde_json::json!(1e300);
        let mut too_big = serde_json::to_value(rec(4, 5)).unwrap();
        too_big["credits"] = serde_json::json!(u64::MAX);
        let mut extra = serde_json::to_value(rec(5, 5)).unwrap();
        extra["adminKey"] = serde_json::json!("injected");
        extra["isAdmin"] = serde_json::json!(true);
        let mut bad_hash = serde_json::to_value(rec(6, 5)).unwrap();
        bad_hash["keyHash"] = serde_json::json!("zz");
        let mut many_tags = serde_json::to_value(rec(7, 5)).unwrap();
        many_tags["tags"] = (0..60)
            .map(|i| (format!("t{i}"), serde_json::json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let doc = serde_json::json!({"version": 1, "adminKey": "injected", "keys": [ok.clone(), negative, huge, too_big, extra, bad_hash, many_tags, ok, "not a record"]});
        fs::write(&path, doc.to_string()).unwrap();
        let (store, report) = MemoryKeyStore::load_from(&path).unwrap();
        assert_eq!(report.loaded, 2, "{:?}", report.reasons);
        assert_eq!(report.skipped, 7);
        assert!(
            report
                .reasons
                .iter()
                .any(|r| r.starts_with("keys[7]") && r.contains("exists")),
            "duplicates are skipped"
        );
        assert_eq!(block_on(store.stats()).unwrap().total_credits, 10);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn concurrent_readers_only_ever_see_whole_snapshots() {
        let d = dir();
        let path = d.join("state.json");
        let store = std::sync::Arc::new(MemoryKeyStore::new());
        block_on(store.insert(rec(0, 0))).unwrap();
        store.save_to(&path).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (s, report) =
                        MemoryKeyStore::load_from(&path).expect("always a whole snapshot");
                    assert_eq!(report.skipped, 0);
                    assert!(!s.export().is_empty());
                    reads += 1;
                }
                reads
            })
        };
        for n in 1..200 {
            block_on(store.insert(rec(n, u64::from(n)))).unwrap();
            store.save_to(&path).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        fs::remove_dir_all(d).unwrap();
    }
}
