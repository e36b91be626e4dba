//! What the gateway tells a `tracing` subscriber: one span per gated call with the tool, the
//! masked key, the decision and the credits; a refund event; a denial event. Captured as
//! JSON lines from a real subscriber.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use paygate_mcp::{Gate, PayGateConfig, PayGateLayer};
use serde_json::{json, Value};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::ErrorKind::Other)?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().expect("lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

fn call(key: Option<&str>, tool: &str) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}});
    let mut req = Request::post("/mcp").header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    req.body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

#[tokio::test]
async fn gated_calls_refunds_and_denials_are_traced() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let gate = Arc::new(
        Gate::new(
            PayGateConfig::default()
                .with_tool_price("search", 3)
                .with_refund_on_failure(true),
        )
        .expect("config"),
    );
    let key = gate.create_key("alice", 10).await.expect("key");
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            let answer =
                json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "boom"}});
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer.to_string()))))
        }));
    let resp = svc
        .clone()
        .oneshot(call(Some(&key), "search"))
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    let resp = svc.oneshot(call(None, "search")).await.unwrap();
    resp.into_body().collect().await.unwrap();
    // The refund runs on its own task: let it finish.
    for _ in 0..100 {
        if out
            .lines()
            .iter()
            .any(|l| l["fields"]["message"] == "refunded")
        {
            break;
        }
        tokio::task::yield_now().await;
    }

    let lines = out.lines();
    let refunded = lines
        .iter()
        .find(|l| l["fields"]["message"] == "refunded")
        .unwrap_or_else(|| panic!("a refund event: {lines:?}"));
    assert_eq!(refunded["fields"]["credits"], 3);
    assert_eq!(refunded["fields"]["reason"], "tool_failed");
    let finished = lines
        .iter()
        .find(|l| l["fields"]["message"] == "call finished")
        .unwrap_or_else(|| panic!("the call's end: {lines:?}"));
    assert_eq!(finished["span"]["name"], "paygate_call");
    assert_eq!(finished["span"]["credits"], 3);
    assert!(
        finished["span"]["key_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("kid_")),
        "the span names the account: {finished}"
    );
    assert!(finished["span"]["duration_ms"].is_u64(), "{finished}");
    assert!(finished["fields"]["duration_ms"].is_u64(), "{finished}");
    let denied = lines
        .iter()
        .find(|l| l["fields"]["message"] == "denied")
        .unwrap_or_else(|| panic!("a denial event: {lines:?}"));
    assert_eq!(denied["span"]["name"], "paygate_call");
    assert_eq!(denied["span"]["reason"], "missing_api_key");
    assert_eq!(denied["span"]["tool"], "search");
    assert_eq!(denied["span"]["allowed"], false);
    // Nothing logged carries the full key.
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains(&key), "a full key in the logs");
}
