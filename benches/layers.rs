//! What the PayGate layer stack adds per request over a no-op MCP service.
//!
//! `cargo bench --bench layers`. Each case builds the same request; the baseline sends it
//! to the no-op service directly, so the difference is the layers' cost.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use paygate_mcp::{block_on, Gate, PayGate, PayGateConfig, PayGateLayer};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"q":"hello"}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
const REPLY: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}"#;

fn request(body: &'static str, key: &str) -> Request<Full<Bytes>> {
    Request::post("http://localhost/mcp")
        .header("content-type", "application/json")
        .header("x-api-key", key)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid request")
}

fn noop() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(|_req: Request<Full<Bytes>>| async {
        let mut resp = Response::new(Full::new(Bytes::from_static(REPLY.as_bytes())));
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        Ok::<_, Infallible>(resp)
    })
}

fn drive<S, B>(svc: &S, req: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    block_on(async {
        let resp = svc.clone().oneshot(req).await.expect("infallible");
        let _ = resp.into_body().collect().await.expect("body");
    });
}

fn bench(c: &mut Criterion) {
    // Generous limits so the allowed case stays allowed for the whole run.
    let cfg = PayGateConfig::default().with_rate_limit(0);
    let gate = Arc::new(Gate::new(cfg).expect("valid config"));
    let rich = block_on(gate.create_key("bench", paygate_mcp::amount::MAX_AMOUNT)).expect("key");
    let broke = block_on(gate.create_key("broke", 0)).expect("key");
    let gated = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(noop());
    let bare = noop();

    let mut group = c.benchmark_group("layers");
    group.bench_function("baseline_noop_service", |b| {
        b.iter(|| drive(&bare, request(CALL, &rich)))
    });
    group.bench_function("tools_call_allowed", |b| {
        b.iter(|| drive(&gated, request(CALL, &rich)))
    });
    group.bench_function("tools_call_denied", |b| {
        b.iter(|| drive(&gated, request(CALL, &broke)))
    });
    group.bench_function("free_method", |b| {
        b.iter(|| drive(&gated, request(LIST, &rich)))
    });
    // The five layers stacked by hand from one handle: one decision, four pass-throughs.
    let pg = PayGate::from_gate(gate.clone());
    let composed = ServiceBuilder::new()
        .layer(pg.auth())
        .layer(pg.rate_limit())
        .layer(pg.quota())
        .layer(pg.billing())
        .layer(pg.alerts())
        .service(noop());
    group.bench_function("tools_call_allowed_five_layers", |b| {
        b.iter(|| drive(&composed, request(CALL, &rich)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
