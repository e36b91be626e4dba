//! API keys and their records.
//!
//! A key is `pg_` followed by 48 lowercase hex digits from the operating system's CSPRNG. It is
//! shown to its owner once; stores keep only its SHA-256 [`KeyDigest`] and a masked display
//! form, so a dump of a state file or of Redis lets nobody in.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::quota::{Quota, QuotaUsage};

/// The prefix every generated key starts with.
pub const KEY_PREFIX: &str = "pg_";
/// Number of random bytes in a key (48 hex digits).
const KEY_RANDOM_BYTES: usize = 24;

/// The most tags one key may carry.
pub const MAX_TAGS: usize = 50;
/// The longest tag name or value, in characters.
pub const MAX_TAG_LEN: usize = 100;
/// The most entries in an allowed/denied tool list or an IP allowlist.
pub const MAX_LIST_LEN: usize = 1_000;
/// The longest key name or tool name, in characters.
pub const MAX_NAME_LEN: usize = 200;

/// Generates a new API key: `pg_` + 48 lowercase hex digits from the OS CSPRNG.
///
/// ```
/// let key = paygate_mcp::generate_key().unwrap();
/// assert!(key.starts_with("pg_") && key.len() == 51);
/// ```
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; KEY_RANDOM_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

/// Most characters a mask shows: the first 7 and last 4 of a generated key.
const MASK_HEAD: usize = 7;
const MASK_TAIL: usize = 4;

/// Masks a key for display. It never shows more than a third of the key: a generated key
/// (`pg_` + 48 hex digits) shows its first 7 and last 4 characters; a shorter one (an
/// imported key, say) shows proportionally less, at most `len / 3` characters split about
/// 7 : 4 between head and tail; one under 12 characters shows nothing but `***`.
///
/// ```
/// use paygate_mcp::mask_key;
/// assert_eq!(
///     mask_key("pg_0123456789abcdef0123456789abcdef0123456789abcdef"),
///     "pg_0123...cdef"
/// );
/// assert_eq!(mask_key("imported-key-123"), "imp...23"); // 5 of 16 characters
/// assert_eq!(mask_key("short"), "***");
/// ```
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let shown = (chars.len() / 3).min(MASK_HEAD + MASK_TAIL);
    if shown < 4 {
        // Too short to reveal anything safely.
        return "***".to_string();
    }
    // Split like 7 : 4, to the nearest character.
    let head = (shown * MASK_HEAD + (MASK_HEAD + MASK_TAIL) / 2) / (MASK_HEAD + MASK_TAIL);
    let tail = shown - head;
    let head: String = chars[..head].iter().collect();
    let tail: String = chars[chars.len() - tail..].iter().collect();
    format!("{head}...{tail}")
}

/// The SHA-256 digest of an API key: how every store identifies a key at rest.
///
/// ```
/// use paygate_mcp::KeyDigest;
/// let d = KeyDigest::of("pg_example");
/// assert_eq!(d, KeyDigest::of("pg_example"));
/// assert_ne!(d, KeyDigest::of("pg_Example"));
/// assert_eq!(KeyDigest::from_hex(&d.to_hex()), Some(d));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    /// Digests a plaintext key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Lowercase hex form (64 digits).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the 64-digit hex form.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({}…)", &self.to_hex()[..12])
    }
}

impl Serialize for KeyDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("keyHash must be 64 hex digits"))
    }
}

/// The prefix of every key id.
pub const KEY_ID_PREFIX: &str = "kid_";
/// Random bytes in a key id (20 hex digits).
const KEY_ID_BYTES: usize = 10;

/// The public name of an account: `kid_` + 20 lowercase hex digits, random and not secret.
///
/// A key is the account's current credential; its id stays the same when the key is rotated,
/// so operators, dashboards and payment processors can refer to the account without ever
/// holding its secret. Records written before ids existed get one derived from their digest,
/// the same on every read.
///
/// ```
/// use paygate_mcp::{KeyDigest, KeyId};
/// let id = KeyId::generate().unwrap();
/// assert!(id.to_string().starts_with("kid_") && id.to_string().len() == 24);
/// assert_eq!(id.to_string().parse::<KeyId>(), Ok(id));
/// assert!("kid_XYZ".parse::<KeyId>().is_err());
/// let legacy = KeyId::derived(&KeyDigest::of("pg_old"));
/// assert_eq!(legacy, KeyId::derived(&KeyDigest::of("pg_old")));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_BYTES]);

impl KeyId {
    /// A fresh random id from the OS CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; KEY_ID_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The id of a record that has none: a one-way function of its digest, so it reveals
    /// nothing about the key and is the same wherever the record is read.
    pub fn derived(digest: &KeyDigest) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"paygate-mcp key id\0");
        hasher.update(digest.0);
        let full: [u8; 32] = hasher.finalize().into();
        let mut bytes = [0u8; KEY_ID_BYTES];
        bytes.copy_from_slice(&full[..KEY_ID_BYTES]);
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_ID_BYTES] {
        &self.0
    }
}

/// Why a text is not a key id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a key id is 'kid_' followed by 20 lowercase hex digits")]
pub struct BadKeyId;

impl std::str::FromStr for KeyId {
    type Err = BadKeyId;
    fn from_str(text: &str) -> Result<Self, BadKeyId> {
        let hex_part = text.strip_prefix(KEY_ID_PREFIX).ok_or(BadKeyId)?;
        if hex_part.len() != KEY_ID_BYTES * 2
            || !hex_part
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(BadKeyId);
        }
        let mut bytes = [0u8; KEY_ID_BYTES];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| BadKeyId)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_ID_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a caller names a key to read or change it: by the key itself, or by the account id
/// that outlives rotations. `Debug` masks the key.
///
/// ```
/// use paygate_mcp::{KeyId, KeyRef};
/// let by_key: KeyRef<'_> = "pg_0123456789abcdef0123456789abcdef0123456789abcdef".into();
/// assert!(format!("{by_key:?}").contains("pg_0123...cdef"));
/// let id: KeyId = "kid_0123456789abcdef0123".parse().unwrap();
/// assert_eq!(KeyRef::from(id), KeyRef::Id(id));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeyRef<'a> {
    /// The full API key.
    Key(&'a str),
    /// The account id ([`KeyRecord::id`]).
    Id(KeyId),
}

impl fmt::Debug for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Key(key) => write!(f, "Key({})", mask_key(key)),
            KeyRef::Id(id) => write!(f, "Id({id})"),
        }
    }
}

impl<'a> From<&'a str> for KeyRef<'a> {
    fn from(key: &'a str) -> Self {
        KeyRef::Key(key)
    }
}

impl<'a> From<&'a String> for KeyRef<'a> {
    fn from(key: &'a String) -> Self {
        KeyRef::Key(key)
    }
}

impl From<KeyId> for KeyRef<'_> {
    fn from(id: KeyId) -> Self {
        KeyRef::Id(id)
    }
}

/// Everything a store keeps about one API key. The plaintext key is not part of it.
///
/// ```
/// use paygate_mcp::KeyRecord;
/// let rec = KeyRecord::new("pg_0123456789abcdef0123456789abcdef0123456789abcdef", "demo", 100, 0);
/// assert_eq!(rec.key_masked, "pg_0123...cdef");
/// assert!(rec.permits_tool("anything"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// SHA-256 of the key.
    pub key_hash: KeyDigest,
    /// The account's public id, kept across rotation. Absent in records written before ids
    /// existed: readers fill it in with [`KeyId::derived`] (see [`KeyRecord::with_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    /// Display form of the key ([`mask_key`]: at most a third of it).
    pub key_masked: String,
    /// Owner-chosen label.
    pub name: String,
    /// Credits left.
    pub credits: u64,
    /// Credits spent over the key's life (refunds subtract).
    pub total_spent: u64,
    /// Allowed calls over the key's life (refunds subtract).
    pub total_calls: u64,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// When the key last made an allowed call.
    pub last_used_at: Option<DateTime<Utc>>,
    /// False once revoked.
    pub active: bool,
    /// Cap on `total_spent`; 0 = unlimited.
    pub spending_limit: u64,
    /// Tools the key may call; empty = all.
    pub allowed_tools: Vec<String>,
    /// Tools the key may never call.
    pub denied_tools: Vec<String>,
    /// When the key stops working; `None` = never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Per-key quota; `None` = the global quota applies.
    pub quota: Option<Quota>,
    /// Free-form labels for external systems.
    pub tags: BTreeMap<String, String>,
    /// Client IPs or networks the key may be used from; empty = any.
    pub ip_allowlist: Vec<IpNet>,
    /// Quota counters and the UTC day and month they belong to.
    pub quota_usage: QuotaUsage,
    /// Whether the `key.expired` event has been emitted for the current expiry.
    #[serde(default)]
    pub expiry_notified: bool,
}

impl KeyRecord {
    /// A fresh, active record for `key` with `credits`, created at `now_ms`, with a random
    /// account id.
    pub fn new(key: &str, name: &str, credits: u64, now_ms: i64) -> Self {
        let key_hash = KeyDigest::of(key);
        // A random id: one derived from the key would let whoever sees the id test guesses
        // of a short, imported key offline. (Only if the OS random source fails, which
        // nothing else here survives either, is the derived form used.)
        let key_id = KeyId::generate().unwrap_or_else(|_| KeyId::derived(&key_hash));
        Self {
            key_hash,
            key_id: Some(key_id),
            key_masked: mask_key(key),
            name: name.to_string(),
            credits,
            total_spent: 0,
            total_calls: 0,
            created_at: crate::clock::ms_to_datetime(now_ms),
            last_used_at: None,
            active: true,
            spending_limit: 0,
            allowed_tools: Vec::new(),
            denied_tools: Vec::new(),
            expires_at: None,
            quota: None,
            tags: BTreeMap::new(),
            ip_allowlist: Vec::new(),
            quota_usage: QuotaUsage::default(),
            expiry_notified: false,
        }
    }

    /// The account's id: its own, or for a record written before ids existed the one derived
    /// from its digest.
    pub fn id(&self) -> KeyId {
        self.key_id
            .unwrap_or_else(|| KeyId::derived(&self.key_hash))
    }

    /// The record with its id filled in (see [`KeyRecord::id`]).
    pub fn with_id(mut self) -> Self {
        self.key_id = Some(self.id());
        self
    }

    /// Whether the key has expired at `now_ms` (exact to the millisecond).
    pub fn is_expired_at(&self, now_ms: i64) -> bool {
        self.expires_at
            .is_some_and(|t| now_ms >= t.timestamp_millis())
    }

    /// Whether the ACL lets this key call `tool` (exact, case-sensitive names).
    pub fn permits_tool(&self, tool: &str) -> bool {
        self.acl_denial(tool).is_none()
    }

    /// Which ACL rule refuses `tool`, if any.
    pub(crate) fn acl_denial(&self, tool: &str) -> Option<crate::deny::DenyReason> {
        use crate::deny::DenyReason;
        if !self.allowed_tools.is_empty() && !self.allowed_tools.iter().any(|t| t == tool) {
            return Some(DenyReason::ToolNotAllowed);
        }
        if self.denied_tools.iter().any(|t| t == tool) {
            return Some(DenyReason::ToolDenied);
        }
        None
    }

    /// Whether a call from `ip` satisfies the allowlist. An unknown IP never satisfies a
    /// non-empty allowlist.
    pub fn permits_ip(&self, ip: Option<IpAddr>) -> bool {
        if self.ip_allowlist.is_empty() {
            return true;
        }
        let Some(ip) = ip else { return false };
        let ip = canonical_ip(ip);
        self.ip_allowlist.iter().any(|net| net.contains(&ip))
    }

    /// Checks the bounds every stored record keeps (for records read from outside: state
    /// files, imports). Says which field is wrong.
    pub fn validate(&self) -> Result<(), String> {
        use crate::amount::MAX_AMOUNT;
        for (field, v) in [
            ("credits", self.credits),
            ("totalSpent", self.total_spent),
            ("spendingLimit", self.spending_limit),
        ] {
            if v > MAX_AMOUNT {
                return Err(format!("{field} {v} is larger than {MAX_AMOUNT}"));
            }
        }
        if self.name.chars().count() > MAX_NAME_LEN {
            return Err(format!("name is longer than {MAX_NAME_LEN} characters"));
        }
        if self.key_masked.chars().count() > 32 {
            return Err("keyMasked is not a masked key".into());
        }
        if self.allowed_tools.len() > MAX_LIST_LEN
            || self.denied_tools.len() > MAX_LIST_LEN
            || self.ip_allowlist.len() > MAX_LIST_LEN
        {
            return Err(format!("a list holds more than {MAX_LIST_LEN} entries"));
        }
        if self.tags.len() > MAX_TAGS
            || self
                .tags
                .iter()
                .any(|(k, v)| k.chars().count() > MAX_TAG_LEN || v.chars().count() > MAX_TAG_LEN)
        {
            return Err(format!(
                "more than {MAX_TAGS} tags or a tag over {MAX_TAG_LEN} characters"
            ));
        }
        Ok(())
    }

    /// Credits left before the spending limit is reached; `None` when unlimited.
    pub fn remaining_budget(&self) -> Option<u64> {
        (self.spending_limit > 0).then(|| self.spending_limit.saturating_sub(self.total_spent))
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) to plain IPv4 so allowlists match
/// however the socket reported the peer.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Parses an allowlist entry: an exact IPv4/IPv6 address or a CIDR network.
///
/// ```
/// let net = paygate_mcp::parse_ip_entry("10.0.0.0/8").unwrap();
/// assert!(net.contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
/// assert!(paygate_mcp::parse_ip_entry("10.0.0.0/33").is_err());
/// ```
pub fn parse_ip_entry(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    match text.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(canonical_ip(ip))),
        Err(_) => Err(format!("'{text}' is not an IP address or CIDR network")),
    }
}

const KEY_HEX_LEN: usize = 48;
/// Length of a full API key: the prefix and 48 hex digits.
pub(crate) const FULL_KEY_LEN: usize = KEY_PREFIX.len() + KEY_HEX_LEN;

/// Masks every run of `pg_` followed by 48 hex digits (a full API key) in `text`.
pub(crate) fn redact_full_keys(text: &str) -> Cow<'_, str> {
    let prefix = KEY_PREFIX;
    if !text.contains(prefix) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(pos) = text.get(search..).and_then(|rest| rest.find(prefix)) {
        let start = search + pos;
        let hex_start = start + prefix.len();
        let hex_end = hex_start + KEY_HEX_LEN;
        let is_key = bytes
            .get(hex_start..hex_end)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit));
        if is_key {
            // `start` and `hex_end` sit on ASCII bytes, so both are char boundaries.
            out.push_str(text.get(copied..start).unwrap_or_default());
            out.push_str(&mask_key(text.get(start..hex_end).unwrap_or_default()));
            copied = hex_end;
            search = hex_end;
        } else {
            search = hex_start;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_lowercase_hex() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 51);
        assert!(a[3..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    }

    #[test]
    fn record_holds_no_plaintext_key() {
        let key = generate_key().unwrap();
        let rec = KeyRecord::new(&key, "n", 5, 0);
        let json = serde_json::to_string(&rec).unwrap();
        assert!(!json.contains(&key));
        assert!(!json.contains(&key[7..47]));
        assert!(json.contains(&rec.key_hash.to_hex()));
    }

    #[test]
    fn masking_short_input_reveals_nothing() {
        assert_eq!(mask_key("pg_short"), "***");
        assert_eq!(mask_key(""), "***");
        assert_eq!(mask_key("pg_0123456"), "***");
        // Multi-byte input does not panic on a char boundary.
        assert_eq!(mask_key("ééééééééééééé"), "ééé...é");
    }

    #[test]
    fn masking_never_reveals_more_than_a_third() {
        // A generated key shows its first 7 and last 4, as every listing documents.
        let key = generate_key().unwrap();
        let masked = mask_key(&key);
        assert_eq!(masked, format!("{}...{}", &key[..7], &key[key.len() - 4..]));
        // An imported 16-character key showed 11 of its characters; now 5.
        assert_eq!(mask_key("abcdefghijklmnop"), "abc...op");
        for len in 0..=300 {
            let key: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let masked = mask_key(&key);
            let shown = masked.chars().filter(|c| *c != '.' && *c != '*').count();
            assert!(shown * 3 <= len, "{len}: {masked}");
            if len >= 33 {
                assert_eq!(shown, 11, "{len}: {masked}");
            }
            if len >= 12 {
                let (head, tail) = masked.split_once("...").unwrap();
                assert!(key.starts_with(head) && key.ends_with(tail), "{masked}");
                assert!(!head.is_empty() && !tail.is_empty(), "{masked}");
            } else {
                assert_eq!(masked, "***");
            }
        }
    }

    #[test]
    fn acl_is_exact_and_case_sensitive() {
        let mut rec = KeyRecord::new("pg_xxxxxxxxxxxxxxxxxxxx", "n", 5, 0);
        rec.allowed_tools = vec!["search".into()];
        assert!(rec.permits_tool("search"));
        assert!(!rec.permits_tool("Search"));
        assert!(!rec.permits_tool("search "));
        rec.allowed_tools.clear();
        rec.denied_tools = vec!["admin".into()];
        assert!(!rec.permits_tool("admin"));
        assert!(rec.permits_tool("ADMIN"));
    }

    #[test]
    fn ip_allowlist_exact_cidr_v4_v6_and_mapped() {
        let mut rec = KeyRecord::new("pg_xxxxxxxxxxxxxxxxxxxx", "n", 5, 0);
        assert!(rec.permits_ip(None));
        rec.ip_allowlist = vec![
            parse_ip_entry("192.168.1.10").unwrap(),
            parse_ip_entry("10.0.0.0/8").unwrap(),
            parse_ip_entry("2001:db8::/32").unwrap(),
        ];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(rec.permits_ip(ip("192.168.1.10")));
        assert!(!rec.permits_ip(ip("192.168.1.11")));
        assert!(rec.permits_ip(ip("10.200.0.1")));
        assert!(rec.permits_ip(ip("::ffff:10.1.1.1")));
        assert!(rec.permits_ip(ip("2001:db8::1")));
        assert!(!rec.permits_ip(ip("2001:db9::1")));
        assert!(!rec.permits_ip(None));
    }

    #[test]
    fn bad_ip_entries_are_refused() {
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/40",
            "::/200",
            "host.example",
            "1.2.3.4/-1",
        ] {
            assert!(parse_ip_entry(bad).is_err(), "{bad}");
        }
        // Host bits are dropped so the stored form is canonical.
        assert_eq!(
            parse_ip_entry("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn expiry_is_exact_to_the_millisecond() {
        let mut rec = KeyRecord::new("pg_xxxxxxxxxxxxxxxxxxxx", "n", 5, 0);
        rec.expires_at = Some(crate::clock::ms_to_datetime(10_000));
        assert!(!rec.is_expired_at(9_999));
        assert!(rec.is_expired_at(10_000));
    }
}
