//! Messages of JSON errors for people: the field says where, so the parser's position is
//! dropped (it means nothing to someone who sent a request, and leaks how it was parsed).

/// serde_json's message without the " at line L column C" it appends.
///
/// ```
/// let e = serde_json::from_str::<u8>("300").unwrap_err();
/// assert_eq!(paygate_mcp::json_errors::without_position(&e), "invalid value: integer `300`, expected u8");
/// ```
pub fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_string(),
        None => text,
    }
}
