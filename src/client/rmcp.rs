//! [`PayGateClient`] under rmcp's MCP client (cargo feature `rmcp`).
//!
//! [`PayGateClient::rmcp_transport`] gives rmcp a Streamable HTTP transport whose requests
//! carry the client's credentials and follow its policies: an OAuth access token the gateway
//! refuses is refreshed once, a rate-limited `tools/call` waits for the gateway's
//! `Retry-After` (as configured), and a `-32402` asks the payment hook and is sent again once
//! when it says so. The HTTP itself is rmcp's own reqwest client, with its limits. What rmcp
//! still returns as an error converts into the same typed [`ClientError`] with `From`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use paygate_mcp::client::{ClientError, Credentials, PayGateClient};
//! use rmcp::model::CallToolRequestParams;
//! use rmcp::ServiceExt;
//!
//! let client = Arc::new(
//!     PayGateClient::builder("http://127.0.0.1:3402", Credentials::ApiKey("pg_...".into()))
//!         .build()?,
//! );
//! let agent = ().serve(client.rmcp_transport()).await?;
//! match agent.call_tool(CallToolRequestParams::new("search")).await {
//!     Ok(result) => println!("{result:?}"),
//!     Err(e) => match ClientError::from(e) {
//!         ClientError::PaymentRequired { credits_required, .. } => {
//!             println!("top up: {credits_required} credits needed")
//!         }
//!         other => println!("{other}"),
//!     },
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use futures_core::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::ServiceError;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use rmcp::transport::StreamableHttpClientTransport;
use sse_stream::Sse;

use super::{ClientError, Credentials, PayGateClient, Retries};

/// The HTTP side of [`PayGateClient::rmcp_transport`]: rmcp's reqwest client with the
/// gateway's credentials and the client's policies.
#[derive(Clone, Debug)]
pub struct PayGateHttp {
    client: Arc<PayGateClient>,
}

impl PayGateClient {
    /// A transport for rmcp's client (`().serve(transport)`), to this client's gateway, with
    /// its credentials and policies. See [the module](crate::client::rmcp).
    pub fn rmcp_transport(self: &Arc<Self>) -> StreamableHttpClientTransport<PayGateHttp> {
        let uri = format!("{}{}", self.base, self.mcp_path);
        StreamableHttpClientTransport::with_client(
            PayGateHttp {
                client: Arc::clone(self),
            },
            StreamableHttpClientTransportConfig::with_uri(uri),
        )
    }
}

impl PayGateHttp {
    /// The bearer token and headers for one request: `X-API-Key` is added to rmcp's headers,
    /// a token goes as rmcp's bearer. Whatever rmcp was configured with is replaced, so the
    /// credentials in use (a refreshed token) are always the ones sent.
    fn credentials(
        &self,
        mut headers: HashMap<HeaderName, HeaderValue>,
    ) -> (Option<String>, HashMap<HeaderName, HeaderValue>) {
        match self.client.credentials() {
            Credentials::ApiKey(key) => {
                // A key that is no header value cannot authenticate; the gateway says so.
                if let Some(value) = super::api_key_header(&key) {
                    headers.insert(HeaderName::from_static("x-api-key"), value);
                }
                (None, headers)
            }
            Credentials::Bearer(token) => (Some(token), headers),
            Credentials::OAuth(tokens) => (Some(tokens.access_token), headers),
        }
    }
}

/// The tool a message calls, when it is a `tools/call`.
fn called_tool(message: &ClientJsonRpcMessage) -> Option<String> {
    match message {
        JsonRpcMessage::Request(req) => match &req.request {
            ClientRequest::CallToolRequest(call) => Some(call.params.name.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// The gateway's JSON-RPC error in an answer, typed. Denials always come as JSON.
fn denial(answer: &StreamableHttpPostResponse) -> Option<ClientError> {
    match answer {
        StreamableHttpPostResponse::Json(ServerJsonRpcMessage::Error(e), _) => {
            let error = serde_json::to_value(&e.error).ok()?;
            Some(ClientError::from_rpc(&error, None))
        }
        _ => None,
    }
}

type Posted = Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>;

impl StreamableHttpClient for PayGateHttp {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Posted {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Posted {
        let tool = called_tool(&message);
        let mut retries = Retries::default();
        let mut refreshed = false;
        loop {
            let sent_token = self.client.access_token();
            let (bearer, headers) = self.credentials(custom_headers.clone());
            let answer = self
                .client
                .http
                .post_message_with_response_limits(
                    Arc::clone(&uri),
                    message.clone(),
                    session_id.clone(),
                    bearer,
                    headers,
                    limits,
                )
                .await;
            let refused = match &answer {
                Err(StreamableHttpError::AuthRequired(_)) => true,
                Ok(a) => matches!(
                    denial(a),
                    Some(ClientError::Unauthorized { reason }) if reason != "ip_not_allowed"
                ),
                Err(_) => false,
            };
            if refused && !refreshed {
                if let Some(token) = sent_token {
                    refreshed = true;
                    if self.client.refresh(&token).await.unwrap_or(false) {
                        continue;
                    }
                }
                return answer;
            }
            let (Some(tool), Ok(a)) = (&tool, &answer) else {
                return answer;
            };
            match denial(a) {
                Some(error) if self.client.try_again(tool, &error, &mut retries).await => {}
                _ => return answer,
            }
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        let (bearer, headers) = self.credentials(custom_headers);
        self.client
            .http
            .delete_session(uri, session_id, bearer, headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.get_stream_with_max_sse_event_size(
            uri,
            session_id,
            last_event_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default().max_sse_event_size,
        )
        .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        let (bearer, headers) = self.credentials(custom_headers);
        self.client
            .http
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                bearer,
                headers,
                max_sse_event_size,
            )
            .await
    }
}

impl From<ServiceError> for ClientError {
    /// A JSON-RPC error the gateway or the server answered becomes its class (payment, rate
    /// limit, unauthorized, forbidden, or `Tool`); the gateway's OAuth challenge (401, or 403
    /// for a missing scope) becomes `Unauthorized` or `Forbidden`; anything else is
    /// `Transport`.
    fn from(error: ServiceError) -> Self {
        if let Some(challenge) = error.auth_challenge() {
            return if challenge.contains("insufficient_scope") {
                ClientError::Forbidden {
                    reason: "insufficient_scope".into(),
                }
            } else {
                ClientError::Unauthorized {
                    reason: "invalid_token".into(),
                }
            };
        }
        match &error {
            ServiceError::McpError(data) => match serde_json::to_value(data) {
                Ok(value) => ClientError::from_rpc(&value, None),
                Err(_) => ClientError::Transport(error.to_string()),
            },
            _ => ClientError::Transport(error.to_string()),
        }
    }
}
