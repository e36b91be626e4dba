//! Watching a call's answer as it streams by: for a failure to refund ([`RefundWatch`]), and
//! rewriting the `tools/list` answer ([`Rewrite`]).

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::body::{FollowUp, Framing};
use crate::jsonrpc::{classify_response, split_event, split_event_after, sse_data, CallOutcome};

/// Bytes of a JSON response or of one SSE event kept for inspection; beyond it the refund
/// watch stops looking (and does not refund) and the `tools/list` rewrite fails closed.
pub(super) const INSPECT_LIMIT: usize = 8 * 1024 * 1024;

/// Watches a response for the call's JSON-RPC response and runs `on_failure` once when it
/// shows a failure (or, in a JSON body, never shows up).
pub(crate) struct RefundWatch {
    framing: Framing,
    refund_tool_errors: bool,
    buf: BytesMut,
    /// Bytes at the front of `buf` already searched for an event's end.
    scanned: usize,
    overflow: bool,
    decided: bool,
    pub(super) on_failure: Option<FollowUp>,
}

impl RefundWatch {
    pub(crate) fn new(framing: Framing, refund_tool_errors: bool, on_failure: FollowUp) -> Self {
        Self {
            framing,
            refund_tool_errors,
            buf: BytesMut::new(),
            scanned: 0,
            overflow: false,
            decided: false,
            on_failure: Some(on_failure),
        }
    }

    fn is_failure(&self, outcome: CallOutcome) -> bool {
        match outcome {
            CallOutcome::Success => false,
            CallOutcome::ToolError => self.refund_tool_errors,
            CallOutcome::RpcError => true,
        }
    }

    /// A watch that refunds nothing and only tells when the call's answer came.
    pub(crate) fn answer_only(framing: Framing) -> Self {
        let mut watch = Self::new(framing, false, Box::pin(async {}));
        watch.on_failure = None;
        watch
    }

    /// The call's answer was seen (or the watch gave up on it).
    pub(super) fn answered(&self) -> bool {
        self.decided || self.overflow
    }

    /// Feeds a chunk; returns true when a failure was seen.
    pub(super) fn feed(&mut self, chunk: &[u8]) -> bool {
        if self.decided || self.overflow {
            return false;
        }
        self.buf.extend_from_slice(chunk);
        if self.framing == Framing::Sse {
            while let Some(event) = split_event_after(&mut self.buf, &mut self.scanned) {
                if let Some(outcome) = sse_event_outcome(&event) {
                    self.decided = true;
                    self.buf = BytesMut::new();
                    return self.is_failure(outcome);
                }
            }
        }
        if self.buf.len() > INSPECT_LIMIT {
            self.overflow = true;
            self.buf = BytesMut::new();
        }
        false
    }

    /// The stream broke; returns true when the call is to be refunded (its answer was not
    /// seen).
    pub(super) fn broke(&mut self) -> bool {
        !std::mem::replace(&mut self.decided, true)
    }

    /// The deadline passed before the body ended; returns true when the call is to be
    /// refunded. A JSON answer already held whole is judged on what it says: the client has
    /// it, even if the body's end was not read in time.
    pub(super) fn at_deadline(&mut self) -> bool {
        if self.decided || self.overflow {
            return false;
        }
        self.decided = true;
        match self.framing {
            Framing::Json => self.json_failed(),
            // SSE answers are judged as soon as their event is complete: none came.
            Framing::Sse => true,
        }
    }

    /// Whether the JSON body held is anything but a successful answer.
    pub(super) fn json_failed(&self) -> bool {
        serde_json::from_slice::<Value>(&self.buf)
            .ok()
            .and_then(|v| classify_response(&v))
            .is_none_or(|o| self.is_failure(o))
    }

    /// The stream ended; returns true when the call failed (a JSON body with no answer
    /// counts, an SSE stream ending cleanly without one does not).
    pub(super) fn finish(&mut self) -> bool {
        if self.decided || self.overflow {
            return false;
        }
        self.decided = true;
        match self.framing {
            // A JSON body is the whole answer: one that is not a response means the call
            // failed.
            Framing::Json => self.json_failed(),
            // An SSE stream that ends cleanly without the answer proves nothing: a session
            // server may have moved the answer to a resumed stream (`Last-Event-ID`), or the
            // client cancelled while the tool ran on. Refunding it would hand out the result
            // for free, so only an error answer, a broken stream or the deadline refunds.
            Framing::Sse => {
                let mut rest = std::mem::take(&mut self.buf);
                rest.extend_from_slice(b"\n\n");
                let mut found = None;
                while let Some(event) = split_event(&mut rest) {
                    found = found.or_else(|| sse_event_outcome(&event));
                }
                found.is_some_and(|o| self.is_failure(o))
            }
        }
    }
}

/// Rewrites the call's JSON-RPC response (`tools/list`) inside a JSON or SSE body: the first
/// response in the body, whatever its id (see [`classify_response`]).
pub(crate) struct Rewrite {
    framing: Framing,
    buf: BytesMut,
    /// Bytes at the front of `buf` already searched for an event's end.
    scanned: usize,
    transform: Box<dyn Fn(Value) -> Value + Send>,
    done: bool,
    /// The request's id as sent, for the error that replaces an answer too large to inspect.
    id: Option<String>,
    /// The answer was too large: everything after it is dropped.
    refused: bool,
}

impl Rewrite {
    pub(crate) fn new(
        framing: Framing,
        transform: Box<dyn Fn(Value) -> Value + Send>,
        id: Option<String>,
    ) -> Self {
        Self {
            framing,
            buf: BytesMut::new(),
            scanned: 0,
            transform,
            done: false,
            id,
            refused: false,
        }
    }

    /// Gives up on an answer past [`INSPECT_LIMIT`]: what was held is dropped and the
    /// client gets an error, never a listing the key's ACL was not applied to.
    fn refuse(&mut self) -> Bytes {
        self.refused = true;
        self.done = true;
        self.buf = BytesMut::new();
        // Filtering fails closed: the client gets an error, never the unfiltered list.
        let error = crate::jsonrpc::error_body_as_sent(
            self.id.as_deref(),
            crate::jsonrpc::INTERNAL_ERROR,
            "the tool list is too large to filter for this key",
            None,
        );
        match self.framing {
            Framing::Json => Bytes::from(error),
            Framing::Sse => {
                let mut event = BytesMut::from(&b"data: "[..]);
                event.extend_from_slice(&error);
                event.extend_from_slice(b"\n\n");
                event.freeze()
            }
        }
    }

    fn rewrite_message(&self, text: &[u8]) -> Option<Vec<u8>> {
        let value: Value = serde_json::from_slice(text).ok()?;
        if value.get("method").is_some() || value.get("result").is_none() {
            return None;
        }
        serde_json::to_vec(&(self.transform)(value)).ok()
    }

    /// Takes a chunk and returns what can be passed on now.
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Bytes {
        if self.refused {
            return Bytes::new();
        }
        if self.done {
            return Bytes::copy_from_slice(chunk);
        }
        self.buf.extend_from_slice(chunk);
        match self.framing {
            Framing::Json => {
                if self.buf.len() > INSPECT_LIMIT {
                    return self.refuse();
                }
                Bytes::new()
            }
            Framing::Sse => {
                let mut out = BytesMut::new();
                while let Some(event) = split_event_after(&mut self.buf, &mut self.scanned) {
                    out.extend_from_slice(&self.rewrite_event(&event));
                }
                if !self.done && self.buf.len() > INSPECT_LIMIT {
                    out.extend_from_slice(&self.refuse());
                } else if self.done {
                    // The answer went by: the rest passes as it comes.
                    out.extend_from_slice(&std::mem::take(&mut self.buf));
                }
                out.freeze()
            }
        }
    }

    fn rewrite_event(&mut self, event: &[u8]) -> Vec<u8> {
        let data = sse_data(event);
        if !self.done && !data.is_empty() {
            if let Some(new) = self.rewrite_message(&data) {
                self.done = true;
                let mut out = Vec::with_capacity(new.len() + 16);
                // Keep the event's other fields (id, event, retry) and replace its data.
                for line in event.split(|&b| b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if !line.starts_with(b"data:") && !line.is_empty() {
                        out.extend_from_slice(line);
                        out.push(b'\n');
                    }
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&new);
                out.extend_from_slice(b"\n\n");
                return out;
            }
        }
        event.to_vec()
    }

    pub(super) fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.buf);
        if self.refused {
            return Bytes::new();
        }
        if self.done || rest.is_empty() {
            return rest.freeze();
        }
        self.done = true;
        match self.framing {
            Framing::Json => match self.rewrite_message(&rest) {
                Some(new) => Bytes::from(new),
                None => rest.freeze(),
            },
            Framing::Sse => rest.freeze(),
        }
    }
}

fn sse_event_outcome(event: &[u8]) -> Option<CallOutcome> {
    let data = sse_data(event);
    if data.iter().all(u8::is_ascii_whitespace) {
        return None; // priming or keep-alive event
    }
    let value: Value = serde_json::from_slice(&data).ok()?;
    classify_response(&value)
}
