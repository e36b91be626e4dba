//! One JSON-RPC request over MCP Streamable HTTP: the POST with the session, the protocol
//! version and the credentials; a JSON answer, or an SSE stream read as it arrives (requests
//! the server makes on it are answered, a stream cut before the answer is resumed from its
//! last event id with `Last-Event-ID`); a session the server forgot (404) is reported so the
//! caller can open a new one.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::answer::{self, SseReader};
use super::{header_u64, CallInfo, ClientError, PayGateClient, MAX_ANSWER};

/// How often a stream cut before its answer is resumed.
const MAX_RESUMES: usize = 2;

/// What one request came to.
pub(super) enum Sent {
    /// The answer, or why there is none.
    Answer(Result<Value, ClientError>),
    /// The server answered 404 to our session: it is gone, a new one is needed.
    SessionExpired,
}

impl Sent {
    pub(super) fn into_result(self) -> Result<Value, ClientError> {
        match self {
            Sent::Answer(answer) => answer,
            Sent::SessionExpired => Err(ClientError::Transport(
                "the server ended the MCP session".into(),
            )),
        }
    }
}

fn transport(e: reqwest::Error) -> ClientError {
    ClientError::Transport(e.to_string())
}

impl PayGateClient {
    /// A request to the MCP endpoint with the session, protocol version and credentials.
    fn mcp_request(
        &self,
        method: reqwest::Method,
        accept: &'static str,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, self.mcp_path))
            .header("accept", accept)
            .header("mcp-protocol-version", self.protocol.lock().clone());
        if let Some(session) = self.session.lock().clone() {
            req = req.header("mcp-session-id", session);
        }
        self.authorize(req)
    }

    /// A JSON-RPC POST to the MCP endpoint.
    pub(super) fn mcp_post(&self) -> reqwest::RequestBuilder {
        self.mcp_request(reqwest::Method::POST, "application/json, text/event-stream")
            .header("content-type", "application/json")
    }

    /// One JSON-RPC request to the MCP endpoint: its result, or the error by class.
    pub(super) async fn rpc_once(&self, method: &str, params: Value) -> Sent {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let had_session = self.session.lock().is_some();
        let resp = match self.mcp_post().body(body.to_string()).send().await {
            Ok(resp) => resp,
            Err(e) => return Sent::Answer(Err(transport(e))),
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND && had_session {
            *self.session.lock() = None;
            return Sent::SessionExpired;
        }
        let headers = resp.headers().clone();
        if let Some(session) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
            *self.session.lock() = Some(session.to_string());
        }
        // Only tool calls carry the gateway's figures; a free method must not blank them.
        if method == "tools/call" {
            *self.last.lock() = CallInfo {
                credits_remaining: header_u64(&headers, "x-credits-remaining"),
                rate_limit: header_u64(&headers, "x-ratelimit-limit"),
                rate_remaining: header_u64(&headers, "x-ratelimit-remaining"),
                rate_reset: header_u64(&headers, "x-ratelimit-reset"),
            };
        }
        let retry_after = header_u64(&headers, "retry-after").map(std::time::Duration::from_secs);
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let found = if answer::is_event_stream(&content_type) {
            self.read_stream(resp, id).await
        } else {
            read_bounded(resp)
                .await
                .map(|bytes| answer::find_answer(&content_type, &bytes, id))
        };
        Sent::Answer(match found {
            Err(e) => Err(e),
            Ok(Some(message)) => match message.get("error") {
                Some(error) => Err(ClientError::from_rpc(error, retry_after)),
                None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
            },
            Ok(None) => Err(match status.as_u16() {
                401 => ClientError::Unauthorized {
                    reason: "http_401".into(),
                },
                403 => ClientError::Forbidden {
                    reason: "http_403".into(),
                },
                code => {
                    ClientError::Transport(format!("HTTP {code} without an answer to the request"))
                }
            }),
        })
    }

    /// Reads an SSE answer as it arrives and stops at the answer to `id`: a stream the server
    /// keeps open after it does not hold the call. Requests the server makes on the stream
    /// are answered; a stream cut before the answer is resumed from its last event id.
    async fn read_stream(
        &self,
        mut resp: reqwest::Response,
        id: u64,
    ) -> Result<Option<Value>, ClientError> {
        let mut reader = SseReader::default();
        let mut read = 0;
        for resumes in 0..=MAX_RESUMES {
            if resumes > 0 {
                let Some(last) = reader.last_event_id.clone() else {
                    return Ok(None);
                };
                match self.resume(&last).await? {
                    Some(resumed) => resp = resumed,
                    None => return Ok(None),
                }
                reader = SseReader::resuming(last);
            }
            loop {
                let (events, ended) = match resp.chunk().await.map_err(transport)? {
                    Some(chunk) => {
                        read += chunk.len();
                        if read > MAX_ANSWER {
                            return Err(ClientError::Transport("answer larger than 8 MiB".into()));
                        }
                        (reader.push(&chunk), false)
                    }
                    None => (reader.finish(), true),
                };
                for data in events {
                    let Ok(message) = serde_json::from_str::<Value>(&data) else {
                        continue;
                    };
                    if answer::answers(&message, id) {
                        return Ok(Some(message));
                    }
                    self.reply_to_server(&message).await;
                }
                if ended {
                    break;
                }
            }
        }
        Ok(None)
    }

    /// `GET` the MCP endpoint with `Last-Event-ID: last`: the rest of a cut stream, if the
    /// server keeps it.
    async fn resume(&self, last: &str) -> Result<Option<reqwest::Response>, ClientError> {
        let resp = self
            .mcp_request(reqwest::Method::GET, "text/event-stream")
            .header("last-event-id", last)
            .send()
            .await
            .map_err(transport)?;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let resumable = resp.status().is_success() && answer::is_event_stream(content_type);
        Ok(resumable.then_some(resp))
    }

    /// Answers a request the server made on a stream, so a server that waits for the answer
    /// goes on: `ping` with an empty result, anything else as a method this client does not
    /// offer. Notifications and stray answers need nothing.
    async fn reply_to_server(&self, message: &Value) {
        let (Some(id), Some(method)) = (message.get("id"), message.get("method")) else {
            return;
        };
        let reply = if method == "ping" {
            json!({"jsonrpc": "2.0", "id": id, "result": {}})
        } else {
            json!({"jsonrpc": "2.0", "id": id,
                   "error": {"code": -32601, "message": "this client offers no such method"}})
        };
        // The server's answer to a reply (202) says nothing the call needs.
        let _ = self.mcp_post().body(reply.to_string()).send().await;
    }
}

/// The body, refused past [`MAX_ANSWER`].
pub(super) async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(ClientError::Transport("answer larger than 8 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
