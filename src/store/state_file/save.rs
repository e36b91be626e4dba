//! Saving a state file durably: written beside the target, flushed and renamed over it, the
//! snapshot it replaces kept as `<file>.bak`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{backup_path, io_err, StateFileError, STATE_FILE_VERSION};
use crate::key::KeyRecord;
use crate::store::memory::GrantSnapshot;
use crate::store::MemoryKeyStore;
use crate::store::PaymentSeen;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileOut<'a> {
    version: u32,
    saved_at: chrono::DateTime<chrono::Utc>,
    keys: &'a [KeyRecord],
    #[serde(skip_serializing_if = "GrantSnapshot::is_empty")]
    oauth: GrantSnapshot,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    payments: Vec<PaymentSeen>,
}

/// Makes the parent directory's entries (renames, new files) durable.
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

/// Points `<file>.bak` at the current content of `path` (when there is one). A hard link when
/// the file system has them, else a flushed copy; either way made under a temporary name and
/// renamed, so `.bak` is always a whole snapshot.
fn keep_backup(path: &Path) -> std::io::Result<()> {
    let bak = backup_path(path);
    let tmp = temp_path(&bak);
    match fs::hard_link(path, &tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {
            let copied = fs::copy(path, &tmp).and_then(|_| File::open(&tmp)?.sync_all());
            match copied {
                Ok(()) => {}
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return if e.kind() == std::io::ErrorKind::NotFound && !path.exists() {
                        Ok(())
                    } else {
                        Err(e)
                    };
                }
            }
        }
    }
    fs::rename(&tmp, &bak).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

impl MemoryKeyStore {
    /// Writes every record to `path` atomically; returns how many were written. The snapshot
    /// it replaces is kept as `<file>.bak` (after a load that skipped records, the original
    /// file stays there until a save holds at least as many records as it did).
    pub fn save_to(&self, path: impl AsRef<Path>) -> Result<usize, StateFileError> {
        let path = path.as_ref();
        // One save at a time, so backups and the pin follow the order of the snapshots.
        let mut pin = self.original.lock();
        let (keys, payments) = self.export_with_payments();
        let oauth = self.grants.snapshot();
        let tmp = temp_path(path);
        let pinned = pin.as_mut().filter(|p| p.path == path);
        let keep_previous = !pinned.as_ref().is_some_and(|p| p.kept);
        let write = || -> std::io::Result<()> {
            let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let mut out = BufWriter::new(file);
            let doc = FileOut {
                version: STATE_FILE_VERSION,
                saved_at: chrono::Utc::now(),
                keys: &keys,
                oauth,
                payments,
            };
            serde_json::to_writer(&mut out, &doc)?;
            out.flush()?;
            out.get_ref().sync_all()?;
            if keep_previous {
                keep_backup(path)?;
            }
            fs::rename(&tmp, path)?;
            // Make the renames themselves durable.
            sync_dir(path)
        };
        let result = write();
        if let Err(e) = &result {
            let _ = fs::remove_file(&tmp);
            tracing::error!(path = %path.display(), error = %e, "state file not saved");
        }
        result.map_err(io_err(path))?;
        tracing::debug!(path = %path.display(), keys = keys.len(), "state file saved");
        let unpin = pinned.is_some_and(|p| {
            p.kept = true;
            keys.len() >= p.held
        });
        if unpin {
            *pin = None;
        }
        Ok(keys.len())
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
    use crate::blocking::block_on;
    use crate::store::state_file::test_support::{dir, rec};
    use crate::store::KeyStore;

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
    fn every_save_keeps_the_previous_snapshot_as_bak() {
        let d = dir();
        let path = d.join("state.json");
        let store = MemoryKeyStore::new();
        block_on(store.insert(rec(1, 1))).unwrap();
        store.save_to(&path).unwrap();
        assert!(
            !backup_path(&path).exists(),
            "nothing to keep on the first save"
        );
        let mut previous = fs::read(&path).unwrap();
        for n in 2..6 {
            block_on(store.insert(rec(n, 1))).unwrap();
            store.save_to(&path).unwrap();
            assert_eq!(fs::read(backup_path(&path)).unwrap(), previous);
            let (from_bak, _) = MemoryKeyStore::load_from(backup_path(&path)).unwrap();
            assert_eq!(from_bak.export().len(), n as usize - 1);
            previous = fs::read(&path).unwrap();
        }
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
