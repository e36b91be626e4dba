//! Response bodies the layers hand back: the downstream's body passed through (watched for
//! the call's JSON-RPC response when a refund may be due, or rewritten event by event for
//! `tools/list`), or a body the gate wrote itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pub(crate) use super::watch::{RefundWatch, Rewrite};

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
            // The call's answer came, or the stream ended or broke.
            over: bool,
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
                over: false,
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

/// What a watch made of one frame of the downstream's body.
enum Through<E> {
    /// Pass this on (`None`: the body ended).
    Out(Option<Result<Frame<Bytes>, E>>),
    /// Nothing to pass on yet (a rewrite holding bytes back).
    Skip,
    /// Pass this on, then end (the rest of a rewrite).
    OutThenEnd(Result<Frame<Bytes>, E>),
}

/// Runs one polled frame through the body's watch; a refund the watch calls for is put in
/// `pending`.
fn through_watch<E>(
    watch: &mut Option<Watch>,
    polled: Option<Result<Frame<Bytes>, E>>,
    pending: &mut Option<FollowUp>,
) -> Through<E> {
    let Some(w) = watch.as_mut() else {
        return Through::Out(polled);
    };
    match (w, polled) {
        (Watch::Refund(r), Some(Ok(frame))) => {
            if let Some(data) = frame.data_ref() {
                if r.feed(data) {
                    *pending = r.on_failure.take();
                }
            }
            Through::Out(Some(Ok(frame)))
        }
        (Watch::Refund(r), Some(Err(e))) => {
            // The stream broke: unless the call's answer was already seen, refund.
            if r.broke() {
                *pending = r.on_failure.take();
            }
            Through::Out(Some(Err(e)))
        }
        (Watch::Refund(r), None) => {
            if r.finish() {
                *pending = r.on_failure.take();
            }
            Through::Out(None)
        }
        (Watch::Rewrite(rw), Some(Ok(frame))) => match frame.into_data() {
            Ok(data) => {
                let out = rw.feed(&data);
                if out.is_empty() {
                    Through::Skip
                } else {
                    Through::Out(Some(Ok(Frame::data(out))))
                }
            }
            Err(frame) => Through::Out(Some(Ok(frame))),
        },
        (Watch::Rewrite(rw), None) => {
            let rest = rw.finish();
            *watch = None;
            if rest.is_empty() {
                Through::Out(None)
            } else {
                Through::OutThenEnd(Ok(Frame::data(rest)))
            }
        }
        (Watch::Rewrite(_), Some(Err(e))) => Through::Out(Some(Err(e))),
    }
}

/// The deadline passed: the reply to end the body with (none for a JSON body already under
/// way, which cannot take a second document), and any refund the watch owes in `pending`.
fn expire(
    d: &Deadline,
    sent_any: bool,
    watch: &mut Option<Watch>,
    pending: &mut Option<FollowUp>,
) -> Option<Bytes> {
    if let Some(Watch::Refund(r)) = watch.as_mut() {
        if r.at_deadline() {
            *pending = r.on_failure.take();
        }
    }
    match d.framing {
        Framing::Json if sent_any => None,
        Framing::Json => Some(d.reply.clone()),
        Framing::Sse => {
            let mut event = BytesMut::from(&b"data: "[..]);
            event.extend_from_slice(&d.reply);
            event.extend_from_slice(b"\n\n");
            Some(event.freeze())
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
                over,
                sent_any,
                ended,
            } => loop {
                // A refund in progress finishes before anything more is passed on.
                if let Some(fut) = pending.as_mut() {
                    ready!(fut.as_mut().poll(cx));
                    *pending = None;
                }
                // The call is over (its answer came, or the stream ended or broke) and any
                // refund it owed was made: record it, even if the stream stays open.
                if *over {
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
                        let reply = expire(d, *sent_any, watch, pending);
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
                let stream_over = polled.as_ref().is_none_or(Result::is_err);
                // A JSON body under way takes no second document at the deadline.
                if matches!(&polled, Some(Ok(f)) if f.data_ref().is_some_and(|d| !d.is_empty())) {
                    *sent_any = true;
                }
                let out = match through_watch(watch, polled, pending) {
                    Through::Out(out) => out,
                    Through::Skip => continue,
                    Through::OutThenEnd(frame) => {
                        *held = Some(None);
                        Some(frame)
                    }
                };
                *over |= stream_over || matches!(watch, Some(Watch::Refund(r)) if r.answered());
                // Over with nothing to refund: record it now (with a refund, once it is made,
                // at the top of the loop).
                if *over && pending.is_none() {
                    drop(on_end.take());
                }
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
    use crate::jsonrpc::{split_event, split_event_after};
    use crate::layer::watch::INSPECT_LIMIT;
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
