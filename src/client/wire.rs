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
/// How many requests of the server's own one call answers (a flood is not followed).
const MAX_SERVER_REQUESTS: usize = 32;
/// The longest session id taken.
const MAX_SESSION_ID: usize = 256;

/// Whether `v` reads as an MCP protocol version (`YYYY-MM-DD`), safe to send in a header.
pub(super) fn is_protocol_version(v: &str) -> bool {
    v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        })
}

/// Whether `v` is a session id as MCP defines it: visible ASCII (0x21 to 0x7E), bounded.
fn is_session_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_SESSION_ID && v.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// What one request came to.
pub(super) enum Sent {
    /// The answer, or why there is none.
    Answer(Result<Value, ClientError>),
    /// The server answered 404 to our session (this id): it is gone, a new one is needed.
    SessionExpired(String),
}

impl Sent {
    pub(super) fn into_result(self) -> Result<Value, ClientError> {
        match self {
            Sent::Answer(answer) => answer,
            Sent::SessionExpired(_) => Err(ClientError::Transport(
                "the server ended the MCP session".into(),
            )),
        }
    }
}

fn transport(e: reqwest::Error) -> ClientError {
    ClientError::Transport(e.to_string())
}

impl PayGateClient {
    /// A request to the MCP endpoint in the current session, with the protocol version and
    /// credentials.
    pub(super) fn mcp_request(
        &self,
        method: reqwest::Method,
        accept: &'static str,
    ) -> reqwest::RequestBuilder {
        let session = self.session.lock().clone();
        self.mcp_request_in(method, accept, session.as_deref())
    }

    fn mcp_request_in(
        &self,
        method: reqwest::Method,
        accept: &'static str,
        session: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, self.mcp_path))
            .header("accept", accept)
            .header("mcp-protocol-version", self.protocol.lock().clone());
        if let Some(session) = session {
            req = req.header("mcp-session-id", session);
        }
        self.authorize(req)
    }

    /// A JSON-RPC POST to the MCP endpoint, in the current session.
    pub(super) fn mcp_post(&self) -> reqwest::RequestBuilder {
        let session = self.session.lock().clone();
        self.mcp_post_in(session.as_deref())
    }

    /// A JSON-RPC POST to the MCP endpoint in `session` (none for `initialize`).
    fn mcp_post_in(&self, session: Option<&str>) -> reqwest::RequestBuilder {
        self.mcp_request_in(
            reqwest::Method::POST,
            "application/json, text/event-stream",
            session,
        )
        .header("content-type", "application/json")
    }

    /// One JSON-RPC request to the MCP endpoint: its result, or the error by class.
    pub(super) async fn rpc_once(&self, method: &str, params: Value) -> Sent {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let sent_session = self.session.lock().clone();
        let post = self.mcp_post_in(sent_session.as_deref());
        let resp = match post.body(body.to_string()).send().await {
            Ok(resp) => resp,
            Err(e) => return Sent::Answer(Err(transport(e))),
        };
        let status = resp.status();
        if let (reqwest::StatusCode::NOT_FOUND, Some(gone)) = (status, sent_session) {
            // Forgotten only if no other call has opened a new session meanwhile.
            let mut current = self.session.lock();
            if current.as_deref() == Some(gone.as_str()) {
                *current = None;
            }
            return Sent::SessionExpired(gone);
        }
        let headers = resp.headers().clone();
        // The session is the one `initialize` was given; later answers cannot move it.
        if method == "initialize" {
            let given = headers.get("mcp-session-id").and_then(|v| v.to_str().ok());
            *self.session.lock() = given.filter(|v| is_session_id(v)).map(str::to_string);
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
                // A proxy's or server's own limit, without the gateway's JSON-RPC denial.
                429 => ClientError::RateLimited {
                    reason: "http_429".into(),
                    retry_after,
                },
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
        let mut replies = 0;
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
                let (events, ended) = match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        read += chunk.len();
                        if read > MAX_ANSWER {
                            return Err(ClientError::Transport("answer larger than 8 MiB".into()));
                        }
                        (reader.push(&chunk), false)
                    }
                    Ok(None) => (reader.finish(), true),
                    // A connection lost mid-stream resumes like a stream the server ended.
                    Err(_) if reader.last_event_id.is_some() => (Vec::new(), true),
                    Err(e) => return Err(transport(e)),
                };
                for data in events {
                    let Ok(message) = serde_json::from_str::<Value>(&data) else {
                        continue;
                    };
                    if answer::answers(&message, id) {
                        return Ok(Some(message));
                    }
                    if replies < MAX_SERVER_REQUESTS && self.reply_to_server(&message).await {
                        replies += 1;
                    }
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
    async fn reply_to_server(&self, message: &Value) -> bool {
        let (Some(id), Some(method)) = (message.get("id"), message.get("method")) else {
            return false;
        };
        let reply = if method == "ping" {
            json!({"jsonrpc": "2.0", "id": id, "result": {}})
        } else {
            json!({"jsonrpc": "2.0", "id": id,
                   "error": {"code": -32601, "message": "this client offers no such method"}})
        };
        // The server's answer to a reply (202) says nothing the call needs.
        let _ = self.mcp_post().body(reply.to_string()).send().await;
        true
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
