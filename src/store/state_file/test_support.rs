//! Helpers shared by the state file unit tests: a fresh directory and numbered key records.

use std::fs;
use std::path::PathBuf;

use crate::key::KeyRecord;

pub(super) fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "paygate-state-{}-{}",
        std::process::id(),
        crate::generate_key().unwrap()
    ));
    fs::create_dir_all(&d).unwrap();
    d
}

pub(super) fn rec(n: u32, credits: u64) -> KeyRecord {
    KeyRecord::new(
        &format!("pg_{n:048x}"),
        &format!("k{n}"),
        credits,
        1_700_000_000_000,
    )
}
