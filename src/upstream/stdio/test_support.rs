//! Helpers shared by the stdio upstream's unit tests: a connection with no process behind it,
//! and `tools/call` messages for the echo tool.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::conn::Conn;
use super::error::StdioError;
use super::message::Call;

/// A connection with no process: returns it and the receiving end of its stdin queue.
pub(super) fn conn() -> (Arc<Conn>, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel(16);
    (Arc::new(Conn::new(None, tx)), rx)
}

/// `tools/call` params for the echo tool.
pub(super) fn echo(text: &str) -> Box<RawValue> {
    serde_json::value::to_raw_value(&json!({"name": "echo", "arguments": {"message": text}}))
        .unwrap()
}

pub(super) fn call(params: &RawValue) -> Call<'_> {
    Call::Parts {
        method: "tools/call",
        params: Some(params),
    }
}

pub(super) fn parsed(answer: Result<Vec<u8>, StdioError>) -> Value {
    serde_json::from_slice(&answer.unwrap()).unwrap()
}
