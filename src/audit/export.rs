//! Exporting the log: every event oldest first, as values or as CSV safe to open in a
//! spreadsheet (formulas neutralized).

use std::borrow::Cow;

use chrono::SecondsFormat;

use super::entry::Entry;
use super::{AuditEvent, AuditLog};

impl AuditLog {
    /// Every event held, oldest first.
    pub fn export(&self) -> Vec<AuditEvent> {
        // Copied under the lock, turned into events after it, so gated calls never wait for
        // the rendering.
        let entries: Vec<Entry> = self.pruned().oldest_first().cloned().collect();
        entries.iter().map(Entry::to_event).collect()
    }

    /// Every event held, oldest first, as CSV with the header
    /// `id,timestamp,type,actor,message,metadata`.
    ///
    /// Fields are quoted whenever they hold a quote, comma or line break, and any cell that
    /// starts with `=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with `'` so a
    /// spreadsheet shows it as text instead of running it as a formula.
    ///
    /// ```
    /// use paygate_mcp::AuditLog;
    /// let log = AuditLog::default();
    /// log.record("admin.auth_failed", "=cmd|' /C calc'!A0", "bad, \"key\"", serde_json::json!({}));
    /// let csv = log.export_csv();
    /// let row = csv.lines().nth(1).unwrap();
    /// assert!(row.ends_with(r#",admin.auth_failed,'=cmd|' /C calc'!A0,"bad, ""key""",{}"#));
    /// ```
    pub fn export_csv(&self) -> String {
        let events = self.export();
        let mut writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::new());
        let mut rows: Vec<[String; 6]> = Vec::with_capacity(events.len() + 1);
        rows.push(["id", "timestamp", "type", "actor", "message", "metadata"].map(str::to_string));
        rows.extend(events.into_iter().map(|e| {
            [
                e.id.to_string(),
                e.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
                e.event_type,
                e.actor,
                e.message,
                e.metadata.to_string(),
            ]
        }));
        for row in rows {
            let cells: Vec<Cow<'_, str>> = row.iter().map(|c| neutralize_formula(c)).collect();
            // Writing to a Vec cannot fail; should it ever, the export ends at that row.
            if writer
                .write_record(cells.iter().map(|c| c.as_bytes()))
                .is_err()
            {
                break;
            }
        }
        match writer.into_inner() {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => String::from_utf8_lossy(e.into_inner().get_ref()).into_owned(),
        }
    }
}

/// Prefixes `'` to a cell a spreadsheet would otherwise read as a formula.
pub(crate) fn neutralize_formula(cell: &str) -> Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::audit::test_support::{log_at, parse_csv, T0};

    #[test]
    fn csv_escapes_hostile_text_and_neutralizes_formulas() {
        let (_, log) = log_at(T0);
        let hostile = [
            "=cmd|' /C calc'!A0",
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "\tTAB",
            "\rCR",
            "plain, with \"quotes\"\nand a newline",
        ];
        for h in hostile {
            log.record(h, h, h, json!({ "v": h }));
        }
        log.record("x", "-", "", json!(-5));
        let csv_text = log.export_csv();
        assert!(csv_text.starts_with("id,timestamp,type,actor,message,metadata\r\n"));
        let rows = parse_csv(&csv_text);
        assert_eq!(rows.len(), hostile.len() + 1, "each event is one record");
        for (row, h) in rows.iter().zip(hostile) {
            assert_eq!(row.len(), 6);
            let expected = if h.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{h}")
            } else {
                h.to_string()
            };
            assert_eq!(row[2], expected);
            assert_eq!(row[3], expected);
            assert_eq!(row[4], expected);
            let meta: Value = serde_json::from_str(&row[5]).unwrap();
            assert_eq!(meta["v"], h);
        }
        let last = rows.last().unwrap();
        assert_eq!(last[3], "'-");
        assert_eq!(last[5], "'-5");
        assert_eq!(rows[0][0], "1");
        assert_eq!(rows[0][1], "2026-01-01T00:00:00.000Z");
    }

    #[test]
    fn empty_log_exports_only_the_header() {
        let (_, log) = log_at(T0);
        assert_eq!(
            log.export_csv(),
            "id,timestamp,type,actor,message,metadata\r\n"
        );
    }
}
