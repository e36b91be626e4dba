//! A small MCP server written with rmcp, for the gateway example and the tests:
//! `echo` returns its arguments, `search` pretends to search, `fail` answers with a JSON-RPC
//! error, `tool_error` returns a result with `isError: true` and `headers` lists the HTTP
//! header names the server received.

#![allow(dead_code)]

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, ErrorCode, JsonObject, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_handler, tool_router, ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::json;

/// The demo MCP server.
#[derive(Debug, Clone)]
pub struct DemoServer {
    tool_router: ToolRouter<Self>,
}

impl Default for DemoServer {
    fn default() -> Self {
        // In stateless mode rmcp makes a server per request; building the router derives
        // every tool's JSON schema, so it is built once and cloned.
        static ROUTER: std::sync::OnceLock<ToolRouter<DemoServer>> = std::sync::OnceLock::new();
        Self {
            tool_router: ROUTER.get_or_init(Self::tool_router).clone(),
        }
    }
}

#[tool_router]
impl DemoServer {
    #[tool(description = "Returns its arguments as JSON text")]
    async fn echo(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<CallToolResult, McpError> {
        let text = serde_json::to_string(&args)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
    }

    #[tool(description = "Searches a tiny built-in corpus for `query`")]
    async fn search(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<CallToolResult, McpError> {
        let query = args
            .get("query")
            .and_then(|q| q.as_str())
            .unwrap_or_default()
            .to_lowercase();
        let corpus = [
            "paygate meters MCP tools",
            "credits pay for calls",
            "refunds undo failed calls",
        ];
        let hits: Vec<_> = corpus.iter().filter(|d| d.contains(&query)).collect();
        Ok(CallToolResult::success(vec![ContentBlock::text(
            json!({"query": query, "hits": hits}).to_string(),
        )]))
    }

    #[tool(description = "Always fails with a JSON-RPC error")]
    async fn fail(&self) -> Result<CallToolResult, McpError> {
        Err(McpError::new(
            ErrorCode::INTERNAL_ERROR,
            "fail always fails",
            Some(json!({"demo": true})),
        ))
    }

    #[tool(description = "Returns a tool result with isError: true")]
    async fn tool_error(&self) -> Result<CallToolResult, McpError> {
        Ok(CallToolResult::error(vec![ContentBlock::text(
            "the tool reported an error",
        )]))
    }

    #[tool(description = "Lists the names of the HTTP headers this server received")]
    async fn headers(&self, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, McpError> {
        let names: Vec<String> = ctx
            .extensions
            .get::<http::request::Parts>()
            .map(|p| p.headers.keys().map(|k| k.as_str().to_string()).collect())
            .unwrap_or_default();
        Ok(CallToolResult::success(vec![ContentBlock::text(
            json!(names).to_string(),
        )]))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("paygate-mcp demo server: echo, search, fail, tool_error, headers")
    }
}

/// How the demo service answers `tools/call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// rmcp's default: sessions, answers as `text/event-stream`.
    Sse,
    /// Stateless, answers as `application/json`.
    Json,
}

/// The demo server as a Streamable-HTTP tower service.
pub fn service(mode: Mode) -> StreamableHttpService<DemoServer, LocalSessionManager> {
    let config = match mode {
        Mode::Sse => StreamableHttpServerConfig::default(),
        Mode::Json => StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true)
            .with_sse_keep_alive(None),
    };
    StreamableHttpService::new(|| Ok(DemoServer::default()), Default::default(), config)
}
