//! The Redis store's indexes: account ids to digests (`<prefix>ids`, a hash) and keys by tag
//! (`<prefix>tag:<name length>:<name>=<value>`, a set of digests per tag). The scripts that
//! insert, change and rotate keys keep both in step with the records they write.

use std::collections::{BTreeMap, HashSet};

use super::codec::record_from;
use super::{corrupt, unavailable, RedisKeyStore};
use crate::key::{KeyDigest, KeyId, KeyRecord};
use crate::store::StoreError;

/// Members of a tag set read per round trip of a search.
const SEARCH_BATCH: usize = 256;
/// Records re-indexed per round trip by [`RedisKeyStore::rebuild_indexes`].
const REINDEX_BATCH: usize = 500;
/// The `<prefix>schema` value of data whose keys are all indexed.
const INDEXED_SCHEMA: &str = "2";

impl RedisKeyStore {
    pub(super) fn ids_key(&self) -> String {
        format!("{}ids", self.prefix)
    }

    /// What every tag set's name starts with (the scripts append the rest).
    pub(super) fn tag_prefix(&self) -> String {
        format!("{}tag:", self.prefix)
    }

    /// The set of the keys carrying tag `name` = `value`. The name's length comes first, so
    /// no name/value split can be read two ways.
    pub(super) fn tag_key(&self, name: &str, value: &str) -> String {
        format!("{}{}:{name}={value}", self.tag_prefix(), name.len())
    }

    /// The tag sets of `rec`.
    pub(super) fn tag_sets(&self, tags: &BTreeMap<String, String>) -> Vec<String> {
        tags.iter().map(|(k, v)| self.tag_key(k, v)).collect()
    }

    pub(super) async fn find_id_inner(&self, id: &KeyId) -> Result<Option<KeyDigest>, StoreError> {
        let mut conn = self.conn.clone();
        let hex: Option<String> = redis::cmd("HGET")
            .arg(self.ids_key())
            .arg(id.to_string())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        hex.map(|h| KeyDigest::from_hex(&h).ok_or_else(|| corrupt("ids")))
            .transpose()
    }

    /// Reads the keys of the smallest wanted tag set, a batch at a time, and keeps those
    /// whose record carries every wanted tag (the record, not the index, has the last word).
    pub(super) async fn search_inner(
        &self,
        tags: &BTreeMap<String, String>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        use crate::store::KeyStore as _;
        if tags.is_empty() {
            return Ok(self.list(None, limit).await?.keys);
        }
        let mut conn = self.conn.clone();
        let sets = self.tag_sets(tags);
        let mut pipe = redis::pipe();
        for set in &sets {
            pipe.cmd("SCARD").arg(set);
        }
        let sizes: Vec<u64> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let Some((smallest, _)) = sets
            .iter()
            .zip(&sizes)
            .min_by_key(|(_, n)| **n)
            .filter(|(_, n)| **n > 0)
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, members): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(smallest)
                .arg(cursor)
                .arg("COUNT")
                .arg(SEARCH_BATCH)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            // SSCAN may return a member twice.
            let digests: Vec<KeyDigest> = members
                .iter()
                .map(|m| KeyDigest::from_hex(m).ok_or_else(|| corrupt("tag index")))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|d| seen.insert(*d))
                .collect();
            if !digests.is_empty() {
                let mut pipe = redis::pipe();
                for d in &digests {
                    pipe.cmd("HGETALL").arg(self.rec_key(d));
                }
                let hashes: Vec<std::collections::HashMap<String, String>> =
                    pipe.query_async(&mut conn).await.map_err(unavailable)?;
                for (d, h) in digests.iter().zip(hashes) {
                    if h.is_empty() {
                        continue;
                    }
                    let rec = record_from(*d, &h)?;
                    if tags.iter().all(|(k, v)| rec.tags.get(k) == Some(v)) {
                        out.push(rec);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Indexes keys written by a version without key ids and tag sets, once per deployment:
    /// the first gateway to start on the data walks it ([`RedisKeyStore::rebuild_indexes`])
    /// and marks it done (`<prefix>schema`); later starts cost one read.
    pub(super) async fn upgrade_indexes(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let marker = format!("{}schema", self.prefix);
        let version: Option<String> = redis::cmd("GET")
            .arg(&marker)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if version.as_deref() == Some(INDEXED_SCHEMA) {
            return Ok(());
        }
        let indexed = self.rebuild_indexes().await?;
        if indexed > 0 {
            tracing::info!(
                keys = indexed,
                "indexed keys stored before key ids and tag sets"
            );
        }
        redis::cmd("SET")
            .arg(&marker)
            .arg(INDEXED_SCHEMA)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Writes the id and tag indexes for every key, for data written by a version without
    /// them (keys without an id get the one derived from their digest, as every read already
    /// shows). Safe to run while gateways serve calls and to run again; costs a walk over all
    /// keys, so run it once after upgrading. Returns the number of keys indexed.
    ///
    /// ```no_run
    /// # async fn run(store: paygate_mcp::store::redis::RedisKeyStore) -> Result<(), paygate_mcp::StoreError> {
    /// let indexed = store.rebuild_indexes().await?;
    /// println!("{indexed} keys indexed");
    /// # Ok(()) }
    /// ```
    pub async fn rebuild_indexes(&self) -> Result<u64, StoreError> {
        use crate::store::KeyStore as _;
        let mut conn = self.conn.clone();
        let mut after = None;
        let mut indexed = 0u64;
        loop {
            let page = self.list(after, REINDEX_BATCH).await?;
            if !page.keys.is_empty() {
                // One script per batch: each record is indexed only if it still exists
                // when the script runs, so a rotation in between leaves nothing behind.
                let mut inv = self.scripts.reindex.key(self.ids_key());
                inv.arg(self.tag_prefix());
                for rec in &page.keys {
                    inv.arg(self.rec_key(&rec.key_hash))
                        .arg(rec.key_hash.to_hex())
                        .arg(KeyId::derived(&rec.key_hash).to_string());
                }
                let n: u64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
                indexed += n;
            }
            match page.next_cursor {
                Some(c) => after = Some(c),
                None => return Ok(indexed),
            }
        }
    }
}
