//! Response bodies the layers hand back: the downstream's body passed through (watched for
//! the call's JSON-RPC response when a refund may be due, or rewritten event by event for
//! `tools/list`), or a body the gate wrote itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde_json::Value;

use crate::jsonrpc::{classify_response, split_event, split_event_after, sse_data, CallOutcome};

/// Bytes of a JSON response or of one SSE event kept for inspection; beyond it the refund
/// watch stops looking (and does not refund) and the `tools/list` rewrite fails closed.
const INSPECT_LIMIT: usize = 8 * 1024 * 1024;

/// Something dropped when a body ends: the record of the call it answers.
pub(crate) type OnEnd = Box<dyn std::any::Any + Send>;

/// A refund (or any follow-up) to run when the call turns out to have failed.
pub(crate) type FollowUp = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How the downstream answered, as far as the layer can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Json,
    Sse,
}

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
    on_failure: Option<FollowUp>,
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
    fn answered(&self) -> bool {
        self.decided || self.overflow
    }

    /// Feeds a chunk; returns true when a failure was seen.
    fn feed(&mut self, chunk: &[u8]) -> bool {
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

    /// The deadline passed before the body ended; returns true when the call is to be
    /// refunded. A JSON answer already held whole is judged on what it says: the client has
    /// it, even if the body's end was not read in time.
    fn at_deadline(&mut self) -> bool {
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
    fn json_failed(&self) -> bool {
        serde_json::from_slice::<Value>(&self.buf)
            .ok()
            .and_then(|v| classify_response(&v))
            .is_none_or(|o| self.is_failure(o))
    }

    /// The stream ended; returns true when the call failed (a JSON body with no answer
    /// counts, an SSE stream ending cleanly without one does not).
    fn finish(&mut self) -> bool {
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
    fn feed(&mut self, chunk: &[u8]) -> Bytes {
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

    fn finish(&mut self) -> Bytes {
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

/// A call's time limit inside its response body: when it passes before the body ends, the
/// body ends with `reply` (an SSE event or a JSON-RPC error) and any refund runs.
pub(crate) struct Deadline {
    pub(crate) sleep: Pin<Box<tokio::time::Sleep>>,
    /// The response's framing, which decides how the reply is written.
    pub(crate) framing: Framing,
    /// The JSON-RPC error document to send.
    pub(crate) reply: Bytes,
}

impl Deadline {
    /// A deadline `after` from now that sends `reply`.
    pub(crate) fn after(after: std::time::Duration, reply: Bytes) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(after)),
            framing: Framing::Json,
            reply,
        }
    }

    /// Sets how the reply is written (known once the answer's head arrived).
    pub(crate) fn with_framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// Runs `fut` until the deadline: its output, or `None` once the deadline passed.
    pub(crate) async fn race<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            self.sleep.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

/// What a [`GateBody`] does with the downstream's bytes (opaque).
pub(crate) enum Watch {
    /// Watching for a failure to refund.
    Refund(Box<RefundWatch>),
    /// Rewriting the `tools/list` answer.
    Rewrite(Box<Rewrite>),
}

pin_project! {
    /// The response body of every PayGate layer: the downstream's body passed through (and
    /// watched or rewritten when needed), or a body the gate wrote itself.
    pub struct GateBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Inner {
            #[pin]
            body: B,
            watch: Option<Watch>,
            // A refund that must finish before more is passed on.
            pending: Option<FollowUp>,
            // A frame held back while a refund finishes.
            held: Option<Option<Result<Frame<Bytes>, B::Error>>>,
            // When the call must have answered, and what to send if it has not.
            deadline: Option<Deadline>,
            // Dropped when the body ends (or with the body): what records the call as over.
            on_end: Option<OnEnd>,
            sent_any: bool,
            ended: bool,
        },
        Full { data: Option<Bytes> },
    }
}

impl<B: Body> GateBody<B> {
    /// Wraps the downstream's body unchanged.
    pub(crate) fn inner(body: B, watch: Option<Watch>) -> Self {
        Self::with_deadline(body, watch, None)
    }

    /// Wraps the downstream's body, cutting it off at `deadline`.
    pub(crate) fn with_deadline(body: B, watch: Option<Watch>, deadline: Option<Deadline>) -> Self {
        Self {
            kind: Kind::Inner {
                body,
                watch,
                pending: None,
                held: None,
                deadline,
                on_end: None,
                sent_any: false,
                ended: false,
            },
        }
    }

    /// Holds `guard` until the body ends or is dropped.
    pub(crate) fn finishing(mut self, guard: OnEnd) -> Self {
        if let Kind::Inner { on_end, .. } = &mut self.kind {
            *on_end = Some(guard);
        }
        self
    }

    /// A body of `bytes`.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full {
                data: Some(bytes.into()),
            },
        }
    }
}

impl<B: Body> std::fmt::Debug for GateBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { watch, ended, .. } => f
                .debug_struct("GateBody::Inner")
                .field("watched", &watch.is_some())
                .field("ended", ended)
                .finish(),
            Kind::Full { data } => f
                .debug_struct("GateBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B> Body for GateBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner {
                mut body,
                watch,
                pending,
                held,
                deadline,
                on_end,
                sent_any,
                ended,
            } => loop {
                // A refund in progress finishes before anything more is passed on.
                if let Some(fut) = pending.as_mut() {
                    ready!(fut.as_mut().poll(cx));
                    *pending = None;
                }
                // The call is over once its answer came (and any refund it owed was made),
                // even if the stream stays open.
                if matches!(watch, Some(Watch::Refund(r)) if r.answered()) {
                    drop(on_end.take());
                }
                if let Some(frame) = held.take() {
                    *sent_any = true;
                    return Poll::Ready(frame);
                }
                if *ended {
                    drop(on_end.take());
                    return Poll::Ready(None);
                }
                if let Some(d) = deadline.as_mut() {
                    if d.sleep.as_mut().poll(cx).is_ready() {
                        let reply = match d.framing {
                            // A JSON body already under way cannot take a second document.
                            Framing::Json if *sent_any => None,
                            Framing::Json => Some(d.reply.clone()),
                            Framing::Sse => {
                                let mut event = BytesMut::from(&b"data: "[..]);
                                event.extend_from_slice(&d.reply);
                                event.extend_from_slice(b"\n\n");
                                Some(event.freeze())
                            }
                        };
                        if let Some(Watch::Refund(r)) = watch.as_mut() {
                            if r.at_deadline() {
                                *pending = r.on_failure.take();
                            }
                        }
                        *deadline = None;
                        *watch = None;
                        *ended = true;
                        if let Some(reply) = reply {
                            *held = Some(Some(Ok(Frame::data(reply))));
                        }
                        continue;
                    }
                }
                let polled = ready!(body.as_mut().poll_frame(cx));
                if polled.is_none() {
                    *deadline = None;
                }
                if polled.as_ref().is_none_or(Result::is_err) {
                    drop(on_end.take());
                }
                // A JSON body under way takes no second document at the deadline.
                if matches!(&polled, Some(Ok(f)) if f.data_ref().is_some_and(|d| !d.is_empty())) {
                    *sent_any = true;
                }
                let Some(w) = watch.as_mut() else {
                    return Poll::Ready(polled);
                };
                let out = match (w, polled) {
                    (Watch::Refund(r), Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            if r.feed(data) {
                                *pending = r.on_failure.take();
                            }
                        }
                        // Answered with nothing to refund: the call is over now (with a
                        // refund, once it is made, at the top of the loop).
                        if r.answered() && pending.is_none() {
                            drop(on_end.take());
                        }
                        Some(Ok(frame))
                    }
                    (Watch::Refund(r), Some(Err(e))) => {
                        // The stream broke: unless the call's answer was already seen, refund.
                        if !r.decided {
                            r.decided = true;
                            *pending = r.on_failure.take();
                        }
                        Some(Err(e))
                    }
                    (Watch::Refund(r), None) => {
                        if r.finish() {
                            *pending = r.on_failure.take();
                        }
                        None
                    }
                    (Watch::Rewrite(rw), Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            let out = rw.feed(&data);
                            if out.is_empty() {
                                continue;
                            }
                            Some(Ok(Frame::data(out)))
                        }
                        Err(frame) => Some(Ok(frame)),
                    },
                    (Watch::Rewrite(rw), None) => {
                        let rest = rw.finish();
                        *watch = None;
                        if rest.is_empty() {
                            None
                        } else {
                            *held = Some(None);
                            Some(Ok(Frame::data(rest)))
                        }
                    }
                    (Watch::Rewrite(_), Some(Err(e))) => Some(Err(e)),
                };
                if pending.is_some() {
                    *held = Some(out);
                    continue;
                }
                return Poll::Ready(out);
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Inner {
                body,
                watch,
                pending,
                held,
                ended,
                ..
            } => {
                *ended
                    || (watch.is_none()
                        && pending.is_none()
                        && held.is_none()
                        && body.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner {
                body, watch: None, ..
            } => body.size_hint(),
            // A rewrite changes the length.
            Kind::Inner { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn split_event_after_finds_separators_across_chunks() {
        // Every way of cutting the stream gives the same events as splitting it whole.
        let stream = b"data: a\n\ndata: b\r\n\r\n: c\n\ndata: d\r\n\r\ntail";
        for cut in 1..stream.len() {
            let (mut buf, mut scanned, mut events) = (BytesMut::new(), 0, Vec::new());
            for chunk in stream.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(e) = split_event_after(&mut buf, &mut scanned) {
                    events.push(e);
                }
            }
            let mut whole = BytesMut::from(&stream[..]);
            let mut expected = Vec::new();
            while let Some(e) = split_event(&mut whole) {
                expected.push(e);
            }
            assert_eq!(events, expected, "chunks of {cut}");
            assert_eq!(&buf[..], b"tail");
        }
    }

    #[test]
    fn split_events_on_lf_and_crlf() {
        let mut buf = BytesMut::from(&b"data: a\n\ndata: b\r\n\r\ndata: partial"[..]);
        assert_eq!(&split_event(&mut buf).unwrap()[..], b"data: a\n\n");
        assert_eq!(&split_event(&mut buf).unwrap()[..], b"data: b\r\n\r\n");
        assert!(split_event(&mut buf).is_none());
        assert_eq!(&buf[..], b"data: partial");
    }

    #[test]
    fn refund_watch_sees_errors_across_chunk_boundaries() {
        let mut w = RefundWatch::new(Framing::Sse, false, Box::pin(async {}));
        assert!(!w.feed(b"data: \nid: 0\nretry: 3000\n\n"));
        assert!(!w.feed(b"data: {\"jsonrpc\":\"2.0\",\"id\":5,\"er"));
        assert!(w.feed(b"ror\":{\"code\":-1,\"message\":\"x\"}}\n\n"));
        assert!(!w.finish(), "decided once");
    }

    #[test]
    fn refund_watch_success_tool_error_and_missing_answer() {
        let mut ok = RefundWatch::new(Framing::Json, true, Box::pin(async {}));
        ok.feed(br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#);
        assert!(!ok.finish());
        let mut tool_err = RefundWatch::new(Framing::Json, true, Box::pin(async {}));
        tool_err.feed(br#"{"jsonrpc":"2.0","id":1,"result":{"isError":true}}"#);
        assert!(tool_err.finish());
        let mut ignored = RefundWatch::new(Framing::Json, false, Box::pin(async {}));
        ignored.feed(br#"{"jsonrpc":"2.0","id":1,"result":{"isError":true}}"#);
        assert!(!ignored.finish());
        let mut silent = RefundWatch::new(Framing::Sse, false, Box::pin(async {}));
        silent.feed(b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n");
        assert!(
            !silent.finish(),
            "an SSE stream that ends cleanly without the answer may have moved it: no refund"
        );
        let mut empty = RefundWatch::new(Framing::Json, false, Box::pin(async {}));
        empty.feed(b"");
        assert!(empty.finish(), "a JSON body that is no answer refunds");
    }

    #[test]
    fn refund_watch_ignores_how_the_downstream_spells_the_id() {
        // A call sent as `"id": 1.0` answered as `"id": 1` ran and succeeded: no refund.
        for answer in [
            &br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#[..],
            br#"{"jsonrpc":"2.0","id":1.0,"result":{"content":[]}}"#,
            br#"{"jsonrpc":"2.0","id":12345678901234567000,"result":{}}"#,
            br#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
        ] {
            let mut w = RefundWatch::new(Framing::Json, true, Box::pin(async {}));
            w.feed(answer);
            assert!(!w.finish(), "{}", String::from_utf8_lossy(answer));
        }
        // A server request carrying an id before the answer is not the answer.
        let mut w = RefundWatch::new(Framing::Sse, false, Box::pin(async {}));
        assert!(!w.feed(b"data: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"ping\"}\n\n"));
        assert!(w.feed(b"data: {\"jsonrpc\":\"2.0\",\"id\":7,\"error\":{}}\n\n"));
    }

    #[test]
    fn a_listing_too_large_to_filter_fails_closed() {
        let chunk = vec![b' '; 1024 * 1024];
        for framing in [Framing::Json, Framing::Sse] {
            let mut rw = Rewrite::new(framing, Box::new(|v| v), Some("7".into()));
            let mut out = Vec::new();
            out.extend_from_slice(
                &rw.feed(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":["),
            );
            for _ in 0..(INSPECT_LIMIT / chunk.len() + 2) {
                out.extend_from_slice(&rw.feed(&chunk));
            }
            out.extend_from_slice(&rw.feed(b"{\"name\":\"secret\"}]}}"));
            out.extend_from_slice(&rw.finish());
            let text = String::from_utf8_lossy(&out);
            assert!(text.contains("too large to filter"), "{framing:?}");
            assert!(text.contains(r#""id":7"#), "{framing:?}");
            assert!(
                !text.contains("secret"),
                "nothing unfiltered passes ({framing:?})"
            );
            assert!(out.len() < 256, "the held bytes are dropped ({framing:?})");
        }
    }

    #[test]
    fn rewrite_replaces_only_the_matching_event() {
        let mut rw = Rewrite::new(
            Framing::Sse,
            Box::new(|mut v| {
                v["result"]["x"] = json!(1);
                v
            }),
            None,
        );
        let mut out = Vec::new();
        out.extend_from_slice(
            &rw.feed(b"data: \nid: 0\n\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,"),
        );
        out.extend_from_slice(&rw.feed(b"\"result\":{}}\n\n"));
        out.extend_from_slice(&rw.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("data: \nid: 0\n\n"));
        assert!(
            text.contains("id: 7\ndata: {\"id\":2,\"jsonrpc\":\"2.0\",\"result\":{\"x\":1}}\n\n")
                || text.contains("\"x\":1")
        );
    }
}
