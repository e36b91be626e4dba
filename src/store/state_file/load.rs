//! Loading a state file: read record by record, refused whole (and left untouched) when its
//! shape is wrong, records that break a bound skipped with a reason and kept aside in
//! `<file>.rejected`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use super::save::sync_dir;
use super::{io_err, rejected_path, LoadReport, OriginalPin, StateFileError, STATE_FILE_VERSION};
use crate::blocking::block_on;
use crate::key::KeyRecord;
use crate::store::memory::GrantSection;
use crate::store::{KeyStore, MemoryKeyStore};

/// Most skip reasons kept in a [`LoadReport`].
const MAX_REASONS: usize = 100;
/// Longest field name quoted in an error message.
const MAX_QUOTED: usize = 40;

/// A record loading skipped.
struct Rejected {
    index: usize,
    reason: String,
    record: serde_json::Value,
}

/// One line of `<file>.rejected`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RejectedLine<'a> {
    rejected_at: chrono::DateTime<chrono::Utc>,
    source: &'a str,
    index: usize,
    reason: &'a str,
    record: &'a serde_json::Value,
}

/// The top-level fields a state file had.
#[derive(Default)]
struct Header {
    version: Option<u32>,
    keys: bool,
    oauth: Option<GrantSection>,
    payments: Option<Vec<serde_json::Value>>,
}

/// Reads a state file record by record into a store, so a file of a million keys never
/// sits in memory as one parsed tree.
struct FileSeed<'a> {
    store: &'a MemoryKeyStore,
    report: &'a mut LoadReport,
    rejected: &'a mut Vec<Rejected>,
}

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = Header;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Header, D::Error> {
        // Any: a list is told apart (1.8's file) from the other wrong shapes.
        d.deserialize_any(self)
    }
}

/// `text`, cut to a length fit for an error message.
fn quoted(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_QUOTED).collect();
    if out.len() < text.len() {
        out.push_str("...");
    }
    out
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = Header;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a paygate state file object")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Header, A::Error> {
        Err(A::Error::custom(
            "this is a paygate-mcp 1.8 state file (a list of [key, record] pairs): import it \
             with --import-state FILE (Gate::import_ts18_state) and keep this gateway's keys in \
             another --state-file",
        ))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
        let mut header = Header::default();
        let mut saved_at = false;
        while let Some(field) = map.next_key::<String>()? {
            let seen = match field.as_str() {
                "version" => header.version.replace(map.next_value::<u32>()?).is_some(),
                "savedAt" => {
                    map.next_value::<chrono::DateTime<chrono::Utc>>()?;
                    std::mem::replace(&mut saved_at, true)
                }
                "keys" => {
                    if header.keys {
                        true
                    } else {
                        map.next_value_seed(KeysSeed {
                            store: self.store,
                            report: &mut *self.report,
                            rejected: &mut *self.rejected,
                        })?;
                        std::mem::replace(&mut header.keys, true)
                    }
                }
                "oauth" => header
                    .oauth
                    .replace(map.next_value::<GrantSection>()?)
                    .is_some(),
                "payments" => header
                    .payments
                    .replace(map.next_value::<Vec<serde_json::Value>>()?)
                    .is_some(),
                other => {
                    return Err(A::Error::custom(format!(
                        "unknown top-level field '{}' (a state file has version, savedAt, keys, oauth and payments)",
                        quoted(other)
                    )))
                }
            };
            if seen {
                return Err(A::Error::custom(format!(
                    "the top-level field '{field}' appears twice"
                )));
            }
        }
        Ok(header)
    }
}

struct KeysSeed<'a> {
    store: &'a MemoryKeyStore,
    report: &'a mut LoadReport,
    rejected: &'a mut Vec<Rejected>,
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
            let outcome = serde_json::from_value::<KeyRecord>(value.clone())
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
                    self.rejected.push(Rejected {
                        index: i,
                        reason,
                        record: value,
                    });
                }
            }
            i += 1;
        }
        Ok(())
    }
}

/// Appends the skipped records to `<file>.rejected`, leaving every line already there and
/// not repeating a record already kept (a restart before the next save loads them again).
fn keep_rejected(path: &Path, rejected: &[Rejected]) -> std::io::Result<PathBuf> {
    let out_path = rejected_path(path);
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&out_path)?;
    let mut kept = HashSet::new();
    let mut ends_with_newline = true;
    {
        let mut reader = BufReader::new(&mut file);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            ends_with_newline = line.last() == Some(&b'\n');
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                if let Some(record) = v.get("record") {
                    kept.insert(record.to_string());
                }
            }
        }
    }
    // `append` writes at the end whatever the cursor; seek only to be explicit.
    file.seek(SeekFrom::End(0))?;
    let source = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let now = chrono::Utc::now();
    let mut out = BufWriter::new(&mut file);
    if !ends_with_newline {
        // A torn last line from an earlier crash stays as it was, on its own line.
        out.write_all(b"\n")?;
    }
    for r in rejected {
        if !kept.insert(r.record.to_string()) {
            continue;
        }
        let line = RejectedLine {
            rejected_at: now,
            source: &source,
            index: r.index,
            reason: &r.reason,
            record: &r.record,
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    file.sync_all()?;
    sync_dir(&out_path)?;
    Ok(out_path)
}

impl MemoryKeyStore {
    /// Loads a store from `path`. A missing file gives an empty store; a file that cannot
    /// be read as a whole, or whose shape is wrong, is refused and left untouched; records
    /// that break a bound are skipped, reported, and kept in `<file>.rejected`.
    pub fn load_from(path: impl AsRef<Path>) -> Result<(Self, LoadReport), StateFileError> {
        let path = path.as_ref();
        let store = MemoryKeyStore::new();
        let mut report = LoadReport::default();
        let mut rejected = Vec::new();
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
            rejected: &mut rejected,
        };
        let header = seed
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| {
                // Positions help find a syntax error; a wrong shape is said in words.
                let why = if e.is_data() {
                    crate::json_errors::without_position(&e)
                } else {
                    e.to_string()
                };
                corrupt(format!("not a paygate state file: {why}"))
            })?;
        match header.version {
            Some(STATE_FILE_VERSION) => {}
            Some(v) => return Err(corrupt(format!("version {v} is not {STATE_FILE_VERSION}"))),
            None => return Err(corrupt("no version field".into())),
        }
        if !header.keys {
            return Err(corrupt("no 'keys' list".into()));
        }
        if let Some(seen) = header.payments {
            let skipped = store.restore_payments(seen);
            if skipped > 0 {
                tracing::warn!(skipped, "payment ids in the state file skipped (damaged)");
            }
        }
        if let Some(grants) = header.oauth {
            let dropped = store.grants.restore(grants);
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "OAuth grants of unknown or revoked clients not loaded"
                );
            }
        }
        if !rejected.is_empty() {
            let kept = keep_rejected(path, &rejected).map_err(|source| StateFileError::Io {
                path: rejected_path(path).display().to_string(),
                source,
            })?;
            report.rejected_file = Some(kept);
            *store.original.lock() = Some(OriginalPin {
                path: path.to_path_buf(),
                held: report.loaded + report.skipped,
                kept: false,
            });
        }
        Ok((store, report))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::store::state_file::backup_path;
    use crate::store::state_file::test_support::{dir, rec};

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
        let doc = serde_json::json!({"version": 1, "keys": [ok.clone(), negative, huge, too_big, extra, bad_hash, many_tags, ok, "not a record"]});
        fs::write(&path, doc.to_string()).unwrap();
        let (store, report) = MemoryKeyStore::load_from(&path).unwrap();
        assert_eq!(report.loaded, 2, "{:?}", report.reasons);
        assert_eq!(report.skipped, 7);
        assert_eq!(
            rejected_lines(&path).len(),
            7,
            "every skipped record is kept aside"
        );
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

    /// The JSON lines of `<path>.rejected` (none when it does not exist).
    fn rejected_lines(path: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(rejected_path(path))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_file_of_the_wrong_shape_is_refused_and_left_byte_for_byte() {
        let d = dir();
        let path = d.join("state.json");
        let r1 = serde_json::to_value(rec(1, 5)).unwrap();
        let docs = [
            // The `keys` field renamed by one byte: before, this loaded 0 keys and the next
            // save replaced the file.
            serde_json::json!({"version": 1, "kyes": [r1.clone()]}).to_string(),
            serde_json::json!({"version": 1, "Keys": [r1.clone()]}).to_string(),
            serde_json::json!({"version": 1}).to_string(),
            serde_json::json!({"version": 1, "keys": {"0": r1.clone()}}).to_string(),
            serde_json::json!({"version": 1, "keys": null}).to_string(),
            serde_json::json!({"version": 1, "keys": "[]"}).to_string(),
            serde_json::json!({"version": 1, "keys": 3}).to_string(),
            serde_json::json!({"version": "1", "keys": [r1.clone()]}).to_string(),
            serde_json::json!({"version": 1, "adminKey": "injected", "keys": [r1.clone()]})
                .to_string(),
            serde_json::json!({"version": 1, "savedAt": "yesterday", "keys": [r1.clone()]})
                .to_string(),
            format!(r#"{{"version": 1, "keys": [{r1}], "keys": []}}"#),
            format!(r#"{{"version": 1, "version": 1, "keys": [{r1}]}}"#),
            format!(r#"{{"version": 1, "keys": [{r1}]}} trailing"#),
            format!(
                r#"{{"version": 1, "{}": [], "keys": [{r1}]}}"#,
                "x".repeat(100_000)
            ),
        ];
        for bad in &docs {
            fs::write(&path, bad).unwrap();
            let err = MemoryKeyStore::load_from(&path).unwrap_err();
            assert!(
                matches!(err, StateFileError::Corrupt { .. }),
                "{bad}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains("left untouched"), "{msg}");
            assert!(msg.len() < 500, "the message stays short: {msg}");
            assert_eq!(&fs::read_to_string(&path).unwrap(), bad, "not modified");
            assert!(!rejected_path(&path).exists() && !backup_path(&path).exists());
        }
        let msg = {
            fs::write(&path, &docs[0]).unwrap();
            MemoryKeyStore::load_from(&path).unwrap_err().to_string()
        };
        assert!(msg.contains("'kyes'"), "the error names the field: {msg}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn skipped_records_are_kept_aside_and_survive_every_save() {
        let d = dir();
        let path = d.join("state.json");
        let mut bad = serde_json::to_value(rec(2, 5)).unwrap();
        bad["credits"] = serde_json::json!(-333);
        let doc = serde_json::json!({"version": 1, "keys": [serde_json::to_value(rec(1, 5)).unwrap(), bad.clone()]});
        let original = doc.to_string();
        fs::write(&path, &original).unwrap();
        // Lines already in the .rejected file (even a torn one) are never lost.
        fs::write(rejected_path(&path), "{\"earlier\": true}\n{\"torn").unwrap();

        let (store, report) = MemoryKeyStore::load_from(&path).unwrap();
        assert_eq!((report.loaded, report.skipped), (1, 1));
        assert_eq!(report.rejected_file, Some(rejected_path(&path)));
        let text = fs::read_to_string(rejected_path(&path)).unwrap();
        assert!(text.starts_with("{\"earlier\": true}\n{\"torn\n"), "{text}");
        let kept: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v.get("record").is_some())
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            kept[0]["record"], bad,
            "the record is kept exactly as it was"
        );
        assert_eq!(kept[0]["index"], 1);
        assert_eq!(kept[0]["source"], "state.json");
        assert!(kept[0]["reason"].as_str().unwrap().contains("-333"));

        // Saving drops the bad record from the state file but not from the world.
        store.save_to(&path).unwrap();
        assert_eq!(fs::read_to_string(backup_path(&path)).unwrap(), original);
        let (again, report) = MemoryKeyStore::load_from(&path).unwrap();
        assert_eq!((report.loaded, report.skipped), (1, 0));
        again.save_to(&path).unwrap();
        assert_eq!(fs::read_to_string(rejected_path(&path)).unwrap(), text);

        // Loading the same damaged file again (a restart before any save) adds no copies.
        fs::write(&path, &original).unwrap();
        MemoryKeyStore::load_from(&path).unwrap();
        assert_eq!(fs::read_to_string(rejected_path(&path)).unwrap(), text);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_load_that_skips_everything_keeps_the_original_until_a_save_holds_as_much() {
        let d = dir();
        let path = d.join("state.json");
        let bad: Vec<serde_json::Value> = (1..=3)
            .map(|n| {
                let mut v = serde_json::to_value(rec(n, 5)).unwrap();
                v["credits"] = serde_json::json!(-1);
                v
            })
            .collect();
        let original = serde_json::json!({"version": 1, "keys": bad}).to_string();
        fs::write(&path, &original).unwrap();
        let (store, report) = MemoryKeyStore::load_from(&path).unwrap();
        assert_eq!((report.loaded, report.skipped), (0, 3));
        assert_eq!(rejected_lines(&path).len(), 3);
        // Saves that hold fewer records than the original never push it out of `.bak`.
        for n in 10..13 {
            store.save_to(&path).unwrap();
            assert_eq!(
                fs::read_to_string(backup_path(&path)).unwrap(),
                original,
                "after {} keys",
                n - 10
            );
            block_on(store.insert(rec(n, 1))).unwrap();
        }
        // A save that holds as many does not need it: from then on `.bak` is the previous
        // snapshot again.
        assert_eq!(store.save_to(&path).unwrap(), 3);
        assert_eq!(fs::read_to_string(backup_path(&path)).unwrap(), original);
        let three = fs::read(&path).unwrap();
        store.save_to(&path).unwrap();
        assert_eq!(fs::read(backup_path(&path)).unwrap(), three);
        fs::remove_dir_all(d).unwrap();
    }
}
