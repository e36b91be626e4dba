//! `PayGateLayer` in front of a real rmcp Streamable-HTTP server, driven by the rmcp client,
//! in both of rmcp's response modes (SSE and JSON).

mod common;

use common::mcp::{client, key, spawn_gateway, Mode};
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
