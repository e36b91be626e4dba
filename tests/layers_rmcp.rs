//! `PayGateLayer` in front of a real rmcp Streamable-HTTP server, driven by the rmcp client,
//! in both of rmcp's response modes (SSE and JSON).

mod common;

use common::mcp::{client, jsonrpc_message, key, spawn_gateway, Mode};
use common::{record, update};
use paygate_mcp::{KeyUpdate, PayGateConfig};
use rmcp::model::CallToolRequestParams;
use rmcp::ServiceError;
use serde_json::json;

fn args(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().cloned().unwrap_or_default()
}

async fn tools_list_is_filtered_by_acl(mode: Mode) {
    let gw = spawn_gateway(PayGateConfig::default(), mode).await;
    let k = key(&gw, 10);
    update(
        &gw.gate,
        &k,
        KeyUpdate::SetAcl {
            allowed_tools: vec!["echo".into(), "fail".into()],
            denied_tools: vec!["fail".into()],
        },
    );
    let c = client(&gw.url, &k).await;
    let tools = c.list_all_tools().await.expect("tools/list");
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["echo"]);
    // Listing is free.
    assert_eq!(record(&gw.gate, &k).credits, 10);
    c.cancel().await.ok();
}

async fn allowed_call_is_charged_once(mode: Mode) {
    let gw = spawn_gateway(PayGateConfig::default().with_tool_price("echo", 3), mode).await;
    let k = key(&gw, 10);
    let c = client(&gw.url, &k).await;
    let r = c
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args(json!({"q": "hi"}))))
        .await
        .expect("echo answers");
    assert_eq!(r.is_error, Some(false));
    let text = r.content[0]
        .as_text()
        .map(|t| t.text.clone())
        .unwrap_or_default();
    assert_eq!(text, r#"{"q":"hi"}"#);
    let rec = record(&gw.gate, &k);
    assert_eq!((rec.credits, rec.total_calls, rec.total_spent), (7, 1, 3));
    c.cancel().await.ok();
}

async fn denial_reaches_the_client_as_jsonrpc_error(mode: Mode) {
    let gw = spawn_gateway(PayGateConfig::default().with_tool_price("search", 5), mode).await;
    let k = key(&gw, 2);
    let c = client(&gw.url, &k).await;
    let err = c
        .call_tool(CallToolRequestParams::new("search").with_arguments(args(json!({"query": "x"}))))
        .await
        .expect_err("denied");
    let ServiceError::McpError(e) = err else {
        panic!("expected a JSON-RPC error, got {err:?}");
    };
    assert_eq!(e.code.0, -32402);
    assert_eq!(
        e.message,
        "Payment required: insufficient_credits: need 5, have 2"
    );
    let data = e.data.expect("data");
    assert_eq!(data["reason"], "insufficient_credits");
    assert_eq!(data["tool"], "search");
    assert_eq!(data["creditsRequired"], 5);
    assert_eq!(data["remainingCredits"], 2);
    assert_eq!(record(&gw.gate, &k).credits, 2);
    c.cancel().await.ok();
}

async fn failures_are_refunded(mode: Mode) {
    let mut cfg = PayGateConfig::default().with_refund_on_failure(true);
    cfg.refund_on_tool_error = true;
    let gw = spawn_gateway(cfg, mode).await;
    let k = key(&gw, 10);
    let c = client(&gw.url, &k).await;
    let err = c
        .call_tool(CallToolRequestParams::new("fail"))
        .await
        .expect_err("fail fails");
    assert!(
        matches!(err, ServiceError::McpError(ref e) if e.code.0 == -32603),
        "{err:?}"
    );
    let rec = record(&gw.gate, &k);
    assert_eq!(
        (rec.credits, rec.total_calls, rec.total_spent),
        (10, 0, 0),
        "refunded"
    );
    let r = c
        .call_tool(CallToolRequestParams::new("tool_error"))
        .await
        .expect("a result");
    assert_eq!(r.is_error, Some(true));
    assert_eq!(
        record(&gw.gate, &k).credits,
        10,
        "isError refunded with refundOnToolError"
    );
    c.call_tool(CallToolRequestParams::new("echo"))
        .await
        .expect("echo");
    assert_eq!(record(&gw.gate, &k).credits, 9, "successes stay charged");
    c.cancel().await.ok();
}

async fn tool_errors_stay_charged_without_refund_on_tool_error(mode: Mode) {
    let gw = spawn_gateway(PayGateConfig::default().with_refund_on_failure(true), mode).await;
    let k = key(&gw, 10);
    let c = client(&gw.url, &k).await;
    let r = c
        .call_tool(CallToolRequestParams::new("tool_error"))
        .await
        .expect("a result");
    assert_eq!(r.is_error, Some(true));
    assert_eq!(record(&gw.gate, &k).credits, 9);
    c.cancel().await.ok();
}

macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod sse {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Sse).await;
                }
            )*
        }
        mod json {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Json).await;
                }
            )*
        }
    };
}

both_modes!(
    tools_list_is_filtered_by_acl,
    allowed_call_is_charged_once,
    denial_reaches_the_client_as_jsonrpc_error,
    failures_are_refunded,
    tool_errors_stay_charged_without_refund_on_tool_error,
);

/// Raw Streamable HTTP against the real rmcp server: `_pricing` in `tools/list` and the
/// credits and rate-limit headers, in both response modes.
async fn raw_listing_is_priced_and_headers_are_present(mode: Mode) {
    let cfg = PayGateConfig::default()
        .with_tool_price("search", 5)
        .with_rate_limit(30);
    let gw = spawn_gateway(cfg, mode).await;
    let k = key(&gw, 10);
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value, session: Option<String>| {
        let mut req = http
            .post(&gw.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("x-api-key", &k)
            .body(body.to_string());
        if let Some(s) = session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-11-25");
        }
        req.send()
    };
    // Session mode needs the handshake first; stateless JSON mode does not.
    let mut session = None;
    if mode == Mode::Sse {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
        let resp = post(init, None).await.expect("initialize");
        session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        resp.bytes().await.expect("initialize body");
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        post(note, session.clone()).await.expect("initialized");
    }
    let resp = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        session.clone(),
    )
    .await
    .expect("tools/list");
    let expected_type = if mode == Mode::Sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with(expected_type));
    let list = jsonrpc_message(&resp.text().await.expect("body"));
    let tools = list["result"]["tools"].as_array().expect("tools");
    let search = tools
        .iter()
        .find(|t| t["name"] == "search")
        .expect("search listed");
    assert_eq!(search["_pricing"]["creditsPerCall"], 5);
    assert_eq!(search["_pricing"]["pricingModel"], "flat");
    assert!(tools.iter().all(|t| t["_pricing"].is_object()));

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "credits"}}});
    let resp = post(call, session).await.expect("tools/call");
    let h = resp.headers().clone();
    assert_eq!(h["x-credits-remaining"], "5");
    assert_eq!(h["x-ratelimit-limit"], "30");
    assert_eq!(h["x-ratelimit-remaining"], "29");
    assert!(h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-credits-remaining"));
    let answer = jsonrpc_message(&resp.text().await.expect("body"));
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["result"]["isError"], false);
    assert_eq!(record(&gw.gate, &k).credits, 5, "charged once");
}

mod raw {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sse() {
        super::raw_listing_is_priced_and_headers_are_present(super::Mode::Sse).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json() {
        super::raw_listing_is_priced_and_headers_are_present(super::Mode::Json).await;
    }
}
