//! Request correlation: one child process as the request path sees it. Every forwarded
//! request gets a fresh internal id; the child's answer is matched by that id and handed back
//! with the client's id restored. Requests the child sends are answered at once, and a
//! request the gateway stops waiting for is cancelled at the child.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::error::{Failure, StdioError};
use super::message::{encode, Call};

/// JSON-RPC "method not found", for requests the child sends the gateway.
const METHOD_NOT_FOUND: i64 = -32601;

/// The child's answer as the client sees it (its id restored), one JSON object.
type Reply = Result<Vec<u8>, Failure>;

/// A request waiting for the child's answer.
struct Pending {
    /// The id the client sent, restored on the answer.
    original: Value,
    reply: oneshot::Sender<Reply>,
}

/// One child process as the request path sees it: a queue to its stdin and the requests
/// waiting for its answers.
pub(super) struct Conn {
    pub(super) pid: Option<u32>,
    tx: mpsc::Sender<Vec<u8>>,
    /// Internal id → pending request; `None` once the child is gone (nothing new may wait).
    pending: Mutex<Option<HashMap<u64, Pending>>>,
    /// Set when the gateway is stopping the child on purpose.
    pub(super) closing: AtomicBool,
}

impl Conn {
    pub(super) fn new(pid: Option<u32>, tx: mpsc::Sender<Vec<u8>>) -> Self {
        Self {
            pid,
            tx,
            pending: Mutex::new(Some(HashMap::new())),
            closing: AtomicBool::new(false),
        }
    }

    fn failure(&self) -> Failure {
        if self.closing.load(Ordering::Acquire) {
            Failure::ShutDown
        } else {
            Failure::Crashed
        }
    }

    fn register(&self, id: u64, original: Value) -> Result<oneshot::Receiver<Reply>, Failure> {
        let (reply, rx) = oneshot::channel();
        match self.pending.lock().as_mut() {
            Some(map) => {
                map.insert(id, Pending { original, reply });
                Ok(rx)
            }
            None => Err(self.failure()),
        }
    }

    /// Whether the child is gone (its pending requests were failed).
    pub(super) fn is_dead(&self) -> bool {
        self.pending.lock().is_none()
    }

    fn take(&self, id: u64) -> Option<Pending> {
        self.pending.lock().as_mut()?.remove(&id)
    }

    #[cfg(test)]
    fn pending_len(&self) -> usize {
        self.pending.lock().as_ref().map_or(0, HashMap::len)
    }

    /// Fails every pending request at once and refuses new ones.
    pub(super) fn fail_all(&self) {
        let drained = self.pending.lock().take();
        let failure = self.failure();
        for (_, p) in drained.into_iter().flatten() {
            let _ = p.reply.send(Err(failure));
        }
    }

    /// Queues one message for the child's stdin.
    async fn send(&self, line: Vec<u8>) -> Result<(), Failure> {
        self.tx.send(line).await.map_err(|_| self.failure())
    }

    /// Sends a request under a fresh internal id and waits for the answer, which comes back
    /// with `original` as its id.
    pub(super) async fn request(
        &self,
        next_id: &AtomicU64,
        original: Value,
        call: Call<'_>,
        timeout: Duration,
        max: usize,
    ) -> Result<Vec<u8>, StdioError> {
        let internal = next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = call.method() != "initialize";
        let line = call.encode(Some(internal), max)?;
        let rx = self.register(internal, original)?;
        // Removes the entry however this future ends: answered, timed out or dropped.
        let _guard = PendingGuard {
            conn: self,
            id: internal,
            cancel,
        };
        let exchange = async {
            self.send(line).await?;
            rx.await.map_err(|_| self.failure())?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(failure)) => Err(failure.into()),
            Err(_) => Err(StdioError::Timeout(timeout)),
        }
    }

    /// Sends a notification (no answer expected).
    pub(super) async fn notify(
        &self,
        call: Call<'_>,
        timeout: Duration,
        max: usize,
    ) -> Result<(), StdioError> {
        let line = call.encode(None, max)?;
        match tokio::time::timeout(timeout, self.send(line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(failure.into()),
            Err(_) => Err(StdioError::Timeout(timeout)),
        }
    }

    /// Handles one line from the child's stdout.
    pub(super) fn handle_line(&self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        // The common case, an answer to one of ours, is read without building its result.
        if let Ok(Incoming {
            id: Some(id),
            method: None,
            result,
            error,
        }) = serde_json::from_slice::<Incoming>(line)
        {
            if result.is_some() || error.is_some() {
                let Ok(internal) = id.get().parse::<u64>() else {
                    return;
                };
                if let Some(pending) = self.take(internal) {
                    let answer = answer_line(&pending.original, result, error);
                    let _ = pending.reply.send(Ok(answer));
                }
                return;
            }
        }
        self.handle_other_line(line);
    }

    /// Any other line: a request or notification from the child, an answer with a `null`
    /// result, a log line or garbage.
    fn handle_other_line(&self, line: &[u8]) {
        let Ok(Value::Object(mut msg)) = serde_json::from_slice::<Value>(line) else {
            return; // a log line or garbage
        };
        if let Some(method) = msg.get("method").and_then(Value::as_str) {
            if let Some(id) = msg.get("id") {
                self.answer_server_request(method, id);
            }
            return; // notifications from the server have no one to go to
        }
        if !msg.contains_key("result") && !msg.contains_key("error") {
            return;
        }
        let Some(internal) = msg.get("id").and_then(Value::as_u64) else {
            return;
        };
        let Some(pending) = self.take(internal) else {
            return; // nobody waits for it any more (timed out) or never did
        };
        msg.insert("id".into(), pending.original);
        let _ = pending
            .reply
            .send(Ok(Value::Object(msg).to_string().into_bytes()));
    }

    /// Answers a request the child sent the gateway, so it does not wait forever.
    fn answer_server_request(&self, method: &str, id: &Value) {
        let answer = if method == "ping" {
            json!({"jsonrpc": "2.0", "id": id, "result": {}})
        } else {
            json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": METHOD_NOT_FOUND,
                    "message": format!("Method not found: the gateway does not offer {method}"),
                },
            })
        };
        if let Ok(line) = encode(&answer, usize::MAX) {
            let _ = self.tx.try_send(line);
        }
    }
}

/// Removes a pending entry when its request stops waiting, and tells the child the request
/// was cancelled when it was never answered.
struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
    cancel: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.conn.take(self.id).is_some() && self.cancel {
            let note = json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": self.id, "reason": "the gateway stopped waiting"},
            });
            if let Ok(line) = encode(&note, usize::MAX) {
                let _ = self.conn.tx.try_send(line);
            }
        }
    }
}

/// An answer from the child, read without building its result or error.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// The answer with the client's id put back: `{"jsonrpc":"2.0","id":…,"result"|"error":…}`.
pub(super) fn answer_line(
    id: &Value,
    result: Option<&RawValue>,
    error: Option<&RawValue>,
) -> Vec<u8> {
    let parts = [(&b",\"result\":"[..], result), (&b",\"error\":"[..], error)];
    let size: usize = parts
        .iter()
        .flat_map(|(_, p)| p)
        .map(|p| p.get().len() + 10)
        .sum();
    let mut out = Vec::with_capacity(size + 48);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    // Writing a `Value` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut out, id);
    for (name, part) in parts {
        if let Some(part) = part {
            out.extend_from_slice(name);
            out.extend_from_slice(part.get().as_bytes());
        }
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::stdio::test_support::{call, conn, echo, parsed};

    #[tokio::test]
    async fn answers_of_every_shape_reach_their_caller() {
        let (conn, mut rx) = conn();
        let next = AtomicU64::new(1);
        let p = echo("x");
        let t = Duration::from_secs(5);
        let calls = async {
            let mut answers = Vec::new();
            for id in [json!("a"), json!(2), json!(null)] {
                answers.push(parsed(conn.request(&next, id, call(&p), t, 1 << 20).await));
            }
            answers
        };
        let child = async {
            let replies: [&[u8]; 3] = [
                // Extra members and spacing; an error answer; a null result (read the slow way).
                br#"{ "id" : 1 , "jsonrpc":"2.0", "result" : {"content":[{"type":"text","text":"ok"}]}, "x": 1 }"#,
                br#"{"jsonrpc":"2.0","id":2,"error":{"code":-32000,"message":"no"}}"#,
                br#"{"jsonrpc":"2.0","id":3,"result":null}"#,
            ];
            for reply in replies {
                let _ = rx.recv().await.unwrap();
                conn.handle_line(reply);
            }
        };
        let (answers, ()) = tokio::join!(calls, child);
        assert_eq!(answers[0]["id"], "a");
        assert_eq!(answers[0]["result"]["content"][0]["text"], "ok");
        assert_eq!(answers[1]["id"], 2);
        assert_eq!(answers[1]["error"]["message"], "no");
        assert_eq!(answers[2]["id"], Value::Null);
        assert!(answers[2].get("result").is_some_and(Value::is_null));
        assert_eq!(conn.pending_len(), 0);
    }

    #[tokio::test]
    async fn ids_are_rewritten_and_restored() {
        let (conn, mut rx) = conn();
        let next = AtomicU64::new(41);
        let t = Duration::from_secs(5);
        let (p_a, p_b, p_c) = (echo("a"), echo("b"), echo("c"));
        // Two clients, both with id 1, plus one with a string id.
        let a = conn.request(&next, json!(1), call(&p_a), t, 1 << 20);
        let b = conn.request(&next, json!(1), call(&p_b), t, 1 << 20);
        let c = conn.request(&next, json!("c"), call(&p_c), t, 1 << 20);
        let child = async {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let line = rx.recv().await.unwrap();
                let msg: Value = serde_json::from_slice(&line).unwrap();
                seen.push((
                    msg["id"].as_u64().unwrap(),
                    msg["params"]["arguments"]["message"].clone(),
                ));
            }
            let ids: Vec<u64> = seen.iter().map(|s| s.0).collect();
            assert_eq!(ids, [41, 42, 43], "fresh internal ids");
            // Answer out of order, with noise in between.
            conn.handle_line(b"not json at all");
            conn.handle_line(br#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#);
            conn.handle_line(br#"{"jsonrpc":"2.0","id":999,"result":{}}"#);
            for (id, text) in seen.iter().rev() {
                let answer = json!({"jsonrpc": "2.0", "id": id, "result": {"echo": text}});
                conn.handle_line(&serde_json::to_vec(&answer).unwrap());
            }
        };
        let (a, b, c, ()) = tokio::join!(a, b, c, child);
        let (a, b, c) = (parsed(a), parsed(b), parsed(c));
        assert_eq!(
            (a["id"].clone(), a["result"]["echo"].clone()),
            (json!(1), json!("a"))
        );
        assert_eq!(
            (b["id"].clone(), b["result"]["echo"].clone()),
            (json!(1), json!("b"))
        );
        assert_eq!(
            (c["id"].clone(), c["result"]["echo"].clone()),
            (json!("c"), json!("c"))
        );
        assert_eq!(conn.pending_len(), 0);
    }

    #[tokio::test]
    async fn a_timed_out_request_is_forgotten_and_cancelled() {
        let (conn, mut rx) = conn();
        let next = AtomicU64::new(7);
        let p_x = echo("x");
        let err = conn
            .request(
                &next,
                json!(1),
                call(&p_x),
                Duration::from_millis(20),
                1 << 20,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StdioError::Timeout(_)));
        assert_eq!(conn.pending_len(), 0);
        let sent: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(sent["id"], 7);
        let cancel: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(cancel["method"], "notifications/cancelled");
        assert_eq!(cancel["params"]["requestId"], 7);
        // A late answer goes nowhere and breaks nothing.
        conn.handle_line(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#);
        assert_eq!(conn.pending_len(), 0);
    }

    #[tokio::test]
    async fn a_dead_child_fails_pending_requests_at_once() {
        let (conn, _rx) = conn();
        let next = AtomicU64::new(1);
        let (p_x, p_y) = (echo("x"), echo("y"));
        let waiting = conn.request(
            &next,
            json!(5),
            call(&p_x),
            Duration::from_secs(30),
            1 << 20,
        );
        let crash = async {
            tokio::task::yield_now().await;
            conn.fail_all();
        };
        let (result, ()) = tokio::join!(waiting, crash);
        assert!(matches!(result, Err(StdioError::Crashed)));
        // Nothing new may wait on a dead child.
        let later = conn
            .request(
                &next,
                json!(6),
                call(&p_y),
                Duration::from_secs(30),
                1 << 20,
            )
            .await;
        assert!(matches!(later, Err(StdioError::Crashed)));
    }

    #[tokio::test]
    async fn server_requests_are_answered() {
        let (conn, mut rx) = conn();
        conn.handle_line(br#"{"jsonrpc":"2.0","id":"s1","method":"ping"}"#);
        conn.handle_line(
            br#"{"jsonrpc":"2.0","id":2,"method":"sampling/createMessage","params":{}}"#,
        );
        let ping: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(ping, json!({"jsonrpc": "2.0", "id": "s1", "result": {}}));
        let other: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(other["id"], 2);
        assert_eq!(other["error"]["code"], METHOD_NOT_FOUND);
    }
}
