//! Snapshots of the in-memory store in a JSON state file.
//!
//! A state file is never overwritten with less than it held:
//! - Saving writes a temporary file beside the target, flushes it to disk and renames it over
//!   the target, so a crash at any moment leaves either the previous or the new snapshot,
//!   never a torn one. The snapshot it replaces is kept as `<file>.bak` (a hard link made
//!   before the rename, so the target itself is never missing).
//! - Loading refuses a file it cannot read as a whole, or whose shape is not what this crate
//!   writes (an object with exactly `version`, `savedAt` and a `keys` list), and leaves it
//!   untouched, so a damaged or hand-edited file is never silently replaced by an empty
//!   store.
//! - Records that break a bound (negative or huge balances, oversized lists, duplicates) are
//!   skipped with a reason and kept aside in `<file>.rejected` (JSON Lines, one
//!   `{rejectedAt, source, index, reason, record}` object per skipped record, appended, never
//!   rewritten), so the next save does not drop them silently. After such a load the original
//!   file stays as `<file>.bak` until a save holds at least as many records as it did.

use std::path::{Path, PathBuf};

mod load;
mod save;
mod ts18;

pub use ts18::{import_ts18, ImportReport};
#[cfg(test)]
mod test_support;

/// The state file format version this crate writes and reads.
pub const STATE_FILE_VERSION: u32 = 1;

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
    /// Where the skipped records were kept, with their reasons (`<file>.rejected`); `None`
    /// when nothing was skipped.
    pub rejected_file: Option<PathBuf>,
}

/// `<file>.bak`: the snapshot a save replaced.
pub fn backup_path(path: &Path) -> PathBuf {
    with_suffix(path, ".bak")
}

/// `<file>.rejected`: the records loading skipped, with the reason for each.
pub fn rejected_path(path: &Path) -> PathBuf {
    with_suffix(path, ".rejected")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// After a load that skipped records: the file it came from and how many records that file
/// held. Until a save holds as many, the original stays as `<file>.bak`.
#[derive(Debug)]
pub(crate) struct OriginalPin {
    path: PathBuf,
    held: usize,
    /// Whether `<file>.bak` is the original already.
    kept: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateFileError + '_ {
    move |source| StateFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::test_support::{dir, rec};
    use crate::blocking::block_on;
    use crate::store::{KeyStore, KeyUpdate, MemoryKeyStore};

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
}
