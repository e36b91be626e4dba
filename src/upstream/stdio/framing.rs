//! The child's byte streams: stdout and stderr cut into bounded lines, stdout's lines handed
//! to the connection, stderr's copied to the gateway's stderr, and queued lines written to
//! stdin.

use std::io::Write as _;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

use super::conn::Conn;

/// Bytes read from the child's stdout at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Longest stderr line forwarded; longer ones are replaced by a note.
const STDERR_LINE_MAX: usize = 64 * 1024;

/// A piece of a byte stream cut at newlines.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A complete line, without its `\n` (or `\r\n`).
    Line(Vec<u8>),
    /// A line longer than the limit, dropped (reported once, when the limit is crossed).
    TooLong,
}

/// Cuts a byte stream into lines of at most `max` bytes without ever holding more than
/// `max` bytes of one line: the rest of a longer line is skipped up to its newline.
struct LineFramer {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineFramer {
    fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    fn push(&mut self, mut data: &[u8], out: &mut Vec<Frame>) {
        while !data.is_empty() {
            let Some(at) = data.iter().position(|b| *b == b'\n') else {
                if !self.discarding {
                    if self.buf.len().saturating_add(data.len()) > self.max {
                        self.buf = Vec::new();
                        self.discarding = true;
                        out.push(Frame::TooLong);
                    } else {
                        self.buf.extend_from_slice(data);
                    }
                }
                return;
            };
            let (head, rest) = data.split_at(at);
            data = rest.get(1..).unwrap_or_default();
            if std::mem::take(&mut self.discarding) {
                continue; // the end of a line already reported as too long
            }
            if self.buf.len().saturating_add(head.len()) > self.max {
                self.buf = Vec::new();
                out.push(Frame::TooLong);
                continue;
            }
            self.buf.extend_from_slice(head);
            let mut line = std::mem::take(&mut self.buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push(Frame::Line(line));
        }
    }

    /// The last line when the stream ends without a newline.
    fn finish(&mut self) -> Option<Frame> {
        if std::mem::take(&mut self.discarding) || self.buf.is_empty() {
            return None;
        }
        Some(Frame::Line(std::mem::take(&mut self.buf)))
    }
}

/// Reads the child's stdout until it closes, then fails whatever still waits.
pub(super) async fn read_loop<R: AsyncRead + Unpin>(conn: Arc<Conn>, stdout: R, max: usize) {
    for_each_frame(stdout, max, READ_CHUNK, |frame| {
        if let Frame::Line(line) = frame {
            conn.handle_line(&line);
        }
    })
    .await;
    conn.fail_all();
}

/// Cuts a stream into lines of at most `max` bytes until it ends or fails.
async fn for_each_frame<R: AsyncRead + Unpin>(
    mut source: R,
    max: usize,
    chunk_size: usize,
    mut each: impl FnMut(Frame),
) {
    let mut framer = LineFramer::new(max);
    let mut chunk = vec![0u8; chunk_size];
    let mut frames = Vec::new();
    loop {
        let n = match source.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        framer.push(chunk.get(..n).unwrap_or_default(), &mut frames);
        frames.drain(..).for_each(&mut each);
    }
    if let Some(frame) = framer.finish() {
        each(frame);
    }
}

/// Writes queued lines to the child's stdin, whole, one after another. Ends (closing stdin)
/// when the child stops reading or the task is aborted.
pub(super) async fn write_loop(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(line) = rx.recv().await {
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

/// Copies the child's stderr to ours, line by line, prefixed with `label`.
pub(super) async fn stderr_loop<R: AsyncRead + Unpin>(stderr: R, label: String) {
    for_each_frame(stderr, STDERR_LINE_MAX, 8 * 1024, |frame| {
        log_frame(&label, frame)
    })
    .await;
}

fn log_frame(label: &str, frame: Frame) {
    match frame {
        Frame::Line(line) => log(label, &String::from_utf8_lossy(&line)),
        Frame::TooLong => log(
            label,
            &format!("(a stderr line of more than {STDERR_LINE_MAX} bytes was dropped)"),
        ),
    }
}

/// One line to the gateway's stderr; a failure to write it is ignored.
pub(super) fn log(label: &str, text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "[{label}] {text}");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::upstream::stdio::test_support::{call, conn, echo, parsed};
    use crate::upstream::stdio::StdioError;

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut framer = LineFramer::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk, &mut out);
        }
        out.extend(framer.finish());
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn framer_cuts_lines_across_chunks() {
        assert_eq!(
            frames(100, &[b"ab", b"c\nde", b"f\n\ng\r\n", b"tail"]),
            [line("abc"), line("def"), line(""), line("g"), line("tail")]
        );
    }

    #[test]
    fn framer_drops_over_long_lines_and_resyncs() {
        // Too long within one chunk, then too long across chunks, then fine again.
        assert_eq!(
            frames(4, &[b"12345\nok\n", b"abc", b"defgh", b"ij\nyes\n"]),
            [Frame::TooLong, line("ok"), Frame::TooLong, line("yes")]
        );
        // Exactly at the limit passes.
        assert_eq!(frames(4, &[b"1234\n"]), [line("1234")]);
        // An over-long unterminated tail yields nothing more.
        assert_eq!(frames(4, &[b"123456789"]), [Frame::TooLong]);
    }

    #[test]
    fn framer_never_buffers_more_than_the_limit() {
        let mut framer = LineFramer::new(1024);
        let mut out = Vec::new();
        for _ in 0..1000 {
            framer.push(&[b'x'; 4096], &mut out);
            assert!(framer.buf.len() <= 1024);
        }
        framer.push(b"\n{}\n", &mut out);
        assert_eq!(out, [Frame::TooLong, line("{}")]);
    }

    #[tokio::test]
    async fn the_reader_correlates_through_garbage_and_fails_all_at_eof() {
        let (conn, mut rx) = conn();
        let (mut child_out, gateway_in) = tokio::io::duplex(1024);
        let reader = tokio::spawn(read_loop(conn.clone(), gateway_in, 64));
        let next = AtomicU64::new(1);
        let (p_x, p_y) = (echo("x"), echo("y"));
        let answer = conn.request(&next, json!(1), call(&p_x), Duration::from_secs(5), 1 << 20);
        let child = async {
            let _ = rx.recv().await.unwrap();
            child_out.write_all(b"log line\n").await.unwrap();
            child_out.write_all(&[b'z'; 300]).await.unwrap();
            child_out
                .write_all(b"\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"ok\":true}}\n")
                .await
                .unwrap();
        };
        let (answer, ()) = tokio::join!(answer, child);
        assert_eq!(
            parsed(answer),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"ok": true}})
        );
        let pending = conn.request(&next, json!(2), call(&p_y), Duration::from_secs(5), 1 << 20);
        let close = async {
            let _ = rx.recv().await.unwrap();
            drop(child_out);
        };
        let (pending, ()) = tokio::join!(pending, close);
        assert!(matches!(pending, Err(StdioError::Crashed)));
        reader.await.unwrap();
    }
}
