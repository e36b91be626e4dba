//! What is stored of an event's text: full API keys masked, strings cut on character
//! boundaries, metadata bounded in entries, depth and size.

use std::borrow::Cow;

use serde_json::Value;

use super::{MAX_AUDIT_LABEL_CHARS, MAX_AUDIT_TEXT_CHARS};
use crate::key::redact_full_keys;

/// How much of an event's metadata is kept: strings as [`MAX_AUDIT_TEXT_CHARS`] says (and at
/// most 4 KiB), object keys as [`MAX_AUDIT_LABEL_CHARS`] says, at most 100 entries per array
/// or object, 8 levels of nesting and about 8 KiB of text in all; what is cut ends with `…`.
const METADATA_LIMITS: crate::meter::JsonLimits = crate::meter::JsonLimits {
    text_bytes: 4 * MAX_AUDIT_TEXT_CHARS,
    key_bytes: 4 * MAX_AUDIT_LABEL_CHARS,
    entries: 100,
    depth: 8,
    total_bytes: 8_192,
};

/// Cuts `text` to at most `max` characters (at least 1), the last one `…` when something
/// was cut.
pub(super) fn truncate(mut text: String, max: usize) -> String {
    let max = max.max(1);
    if text.char_indices().nth(max).is_none() {
        return text;
    }
    let cut = text
        .char_indices()
        .nth(max - 1)
        .map_or(text.len(), |(i, _)| i);
    text.truncate(cut);
    text.push('…');
    text
}

/// `text` with full API keys masked, cut to `max` characters; copies only what it keeps
/// (unless a key had to be masked).
fn sanitize_str(text: &str, max: usize) -> Cow<'_, str> {
    let max = max.max(1);
    // Only text longer than `max` is copied, and only its first `max + 1` characters.
    let cut = |t: &str| {
        t.char_indices()
            .nth(max)
            .map(|_| truncate(t.chars().take(max + 1).collect(), max))
    };
    match redact_full_keys(text) {
        Cow::Borrowed(t) => cut(t).map_or(Cow::Borrowed(t), Cow::Owned),
        Cow::Owned(t) => Cow::Owned(cut(&t).unwrap_or(t)),
    }
}

/// A copy of `value` with full API keys masked in every string and object key, within
/// [`METADATA_LIMITS`].
pub(super) fn sanitize_value(value: &Value) -> Value {
    crate::meter::bound_json(value, &METADATA_LIMITS, &|text, is_key| {
        let max = if is_key {
            MAX_AUDIT_LABEL_CHARS
        } else {
            MAX_AUDIT_TEXT_CHARS
        };
        sanitize_str(text, max)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::audit::test_support::{event_bytes, log_at, T0};

    #[test]
    fn full_keys_are_masked_before_storage() {
        let (_, log) = log_at(T0);
        let key = format!("pg_{}", "ab12".repeat(12));
        log.record(
            "key.created",
            key.as_str(),
            format!("created {key}!"),
            json!({"key": key, "nested": [{ key.clone(): "v" }]}),
        );
        let e = &log.export()[0];
        let masked = crate::key::mask_key(&key);
        assert_eq!(e.actor, masked);
        assert_eq!(e.message, format!("created {masked}!"));
        assert_eq!(e.metadata["key"], masked.as_str());
        assert_eq!(e.metadata["nested"][0][masked.as_str()], "v");
        assert!(!log.export_csv().contains(&key));
    }

    #[test]
    fn long_text_is_cut_on_character_boundaries() {
        let (_, log) = log_at(T0);
        let huge = "é".repeat(100_000);
        log.record(
            huge.as_str(),
            huge.as_str(),
            huge.as_str(),
            json!({ "tool": huge, "ok": "short" }),
        );
        let e = &log.export()[0];
        assert_eq!(e.event_type.chars().count(), MAX_AUDIT_LABEL_CHARS);
        assert_eq!(e.actor.chars().count(), MAX_AUDIT_LABEL_CHARS);
        assert_eq!(e.message.chars().count(), MAX_AUDIT_TEXT_CHARS);
        assert!(e.message.ends_with("é…"));
        let tool = e.metadata["tool"].as_str().unwrap();
        assert_eq!(tool.chars().count(), MAX_AUDIT_TEXT_CHARS);
        assert_eq!(e.metadata["ok"], "short");
        assert_eq!(truncate("abc".into(), 3), "abc");
        assert_eq!(truncate("abcd".into(), 3), "ab…");
        assert_eq!(truncate("abcd".into(), 0), "…");
        assert_eq!(truncate(String::new(), 0), "");
    }

    #[test]
    fn metadata_is_bounded_in_entries_depth_and_size() {
        let (_, log) = log_at(T0);
        let huge = "x".repeat(1 << 20);
        let wide: Vec<Value> = (0..100_000).map(|i| json!(i)).collect();
        let many: serde_json::Map<String, Value> =
            (0..10_000).map(|i| (format!("k{i}"), json!(i))).collect();
        let mut deep = json!("bottom");
        for _ in 0..100 {
            deep = json!([deep]);
        }
        log.record(
            huge.as_str(),
            huge.as_str(),
            huge.as_str(),
            json!({"wide": wide, "many": many, "deep": deep, (huge.clone()): huge, "a": huge}),
        );
        let e = &log.export()[0];
        let meta = e.metadata.to_string().len();
        assert!(meta <= 8_192 + 2 * 4_096, "metadata kept {meta} bytes");
        assert!(event_bytes(e) <= 24 * 1_024, "{}", event_bytes(e));
        let wide = e.metadata["wide"].as_array();
        assert!(wide.is_none_or(|w| w.len() <= 101));
        // Ordinary metadata is kept whole.
        log.record(
            "key.created",
            "admin",
            "",
            json!({"name": "a", "allowedTools": ["x", "y"], "quota": {"dailyCallLimit": 5}}),
        );
        assert_eq!(
            log.export()[1].metadata,
            json!({"name": "a", "allowedTools": ["x", "y"], "quota": {"dailyCallLimit": 5}})
        );
    }

    #[test]
    fn redaction_leaves_other_text_alone() {
        assert!(matches!(redact_full_keys("no keys here"), Cow::Borrowed(_)));
        assert!(matches!(
            redact_full_keys("pg_1234...abcd"),
            Cow::Borrowed(_)
        ));
        let short = format!("pg_{}", "a".repeat(47));
        assert_eq!(redact_full_keys(&short), short);
        let two = format!("pg_pg_{0} é pg_{0}", "f".repeat(48));
        let m = crate::key::mask_key(&format!("pg_{}", "f".repeat(48)));
        assert_eq!(redact_full_keys(&two), format!("pg_{m} é {m}"));
        assert_eq!(redact_full_keys("ép"), "ép");
        assert_eq!(redact_full_keys("pg_"), "pg_");
    }
}
