//! Entry points for the fuzz targets under `fuzz/` and the property tests in
//! `tests/fuzz_corpus.rs`: each takes arbitrary bytes and runs them through one of the
//! parsers that read untrusted input (the JSON-RPC request parser, the SSE splitter and the
//! response watchers, the state-file loader, the admin body parsers).
//!
//! This is a stable surface for those harnesses, not public API: it only calls the crate's
//! own functions, so the harnesses exercise exactly what the gateway runs. None of these
//! functions may panic on any input; where they check something (the SSE splitter cutting
//! the same events however the stream is chunked, a watched body passing through
//! unchanged, a loaded state file saving and loading back whole) a panic means the product
//! broke that promise.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::admin::{keys, reports, AdminRequest};
use crate::blocking::block_on;
use crate::jsonrpc::{parse_request, split_event, sse_data};
use crate::layer::body::{Framing, GateBody, RefundWatch, Rewrite, Watch};
use crate::store::MemoryKeyStore;

/// Parses `data` as a request body, and on success reads what the gate reads from it.
pub fn jsonrpc_request(data: &[u8]) {
    let Ok(req) = parse_request(data) else {
        return;
    };
    let _ = req.tool_name();
    let _ = req.arguments_len();
    if let Some(span) = req.id_span() {
        let text = data.get(span).expect("the id span lies inside the body");
        let id: serde_json::Value = serde_json::from_slice(text).expect("the id span is the id");
        assert_eq!(Some(&id), req.id.as_ref(), "the id span holds the id");
    }
}

/// Runs `data` (after a first byte that picks chunk sizes) through the SSE splitter whole
/// and in chunks, and through the layer's response watchers as a JSON and an SSE body.
pub fn sse_events(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let chunks = chunked(seed, stream);
    let whole = split_all(std::slice::from_ref(&stream));
    assert_eq!(
        whole,
        split_all(&chunks),
        "the splitter cuts the same events whatever the chunking"
    );
    for framing in [Framing::Json, Framing::Sse] {
        let watch = Watch::Refund(Box::new(RefundWatch::new(
            framing,
            seed & 1 == 1,
            Box::pin(async {}),
        )));
        let out = collect(GateBody::inner(Chunks::new(&chunks), Some(watch)));
        assert_eq!(out, stream, "a watched body passes through unchanged");
        let watch = Watch::Rewrite(Box::new(Rewrite::new(framing, Box::new(|v| v), None)));
        collect(GateBody::inner(Chunks::new(&chunks), Some(watch)));
    }
}

/// Loads `data` as a state file (from a scratch directory, removed afterwards); a file
/// that loads must save and load back with the same records.
pub fn state_file(data: &[u8]) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "paygate-fuzz-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let path = dir.join("state.json");
    if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&path, data).is_ok() {
        if let Ok((store, _)) = MemoryKeyStore::load_from(&path) {
            let saved = store.save_to(&path).expect("a loaded store saves");
            let (_, again) = MemoryKeyStore::load_from(&path).expect("a saved file loads");
            assert_eq!((again.loaded, again.skipped), (saved, 0), "nothing is lost");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Parses `data` as the body of every admin endpoint that takes one, through the admin
/// API's own body parser.
pub fn admin_body(data: &[u8]) {
    let req = AdminRequest {
        method: http::Method::POST,
        path: String::new(),
        query: Default::default(),
        headers: Default::default(),
        body: Bytes::copy_from_slice(data),
    };
    fn parse<T: DeserializeOwned>(req: &AdminRequest) {
        let _ = req.json::<T>();
    }
    parse::<keys::CreateKey>(&req);
    parse::<keys::TopUp>(&req);
    parse::<keys::KeyOnly>(&req);
    parse::<keys::Acl>(&req);
    parse::<keys::Expiry>(&req);
    parse::<keys::QuotaBody>(&req);
    parse::<keys::Tags>(&req);
    parse::<keys::Ip>(&req);
    parse::<keys::Limits>(&req);
    parse::<keys::Search>(&req);
    parse::<reports::Rules>(&req);
}

/// `stream` cut into pieces whose sizes follow a small generator seeded by `seed`.
fn chunked(seed: u8, stream: &[u8]) -> Vec<&[u8]> {
    let max = (stream.len() / 64).max(32);
    let mut state = u32::from(seed) | 0x100;
    let mut rest = stream;
    let mut chunks = Vec::new();
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let (head, tail) = rest.split_at((state as usize % max + 1).min(rest.len()));
        chunks.push(head);
        rest = tail;
    }
    chunks
}

/// Each event the splitter cut, with its data, then what was left over.
type Split = (Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

/// What the splitter makes of `chunks`.
fn split_all(chunks: &[&[u8]]) -> Split {
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(event) = split_event(&mut buf) {
            events.push((event.to_vec(), sse_data(&event)));
        }
    }
    (events, buf.to_vec())
}

fn collect(body: GateBody<Chunks>) -> Vec<u8> {
    match block_on(body.collect()) {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(never) => match never {},
    }
}

/// A downstream body that yields the given chunks, one frame each.
struct Chunks(std::collections::VecDeque<Bytes>);

impl Chunks {
    fn new(chunks: &[&[u8]]) -> Self {
        Self(chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect())
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}
