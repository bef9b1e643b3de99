//! Bodies for the answers hyper writes on its own. When a request cannot be parsed (a target
//! over its length limit, headers over its size limit, bytes that are not HTTP), hyper answers
//! 400, 414 or 431 with an empty body before any handler sees the request, and offers no hook
//! to change that. This wrapper sits between hyper and the connection and replaces exactly
//! those answers (a status line of 400/414/431, headers only, `content-length: 0`, written at
//! the start of a write) with the same head plus a body that says what was wrong.
//!
//! hyper answers an HTTP/2 client (one that starts with the HTTP/2 preface, as with prior
//! knowledge) with nothing at all: this wrapper recognises the preface in the connection's
//! first bytes, answers 505 with a body itself, and tells hyper the connection ended.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct ErrorBodies<IO> {
    io: IO,
    /// A rewritten answer, still to be written (hyper was told its own answer went out).
    pending: Vec<u8>,
    written: usize,
    /// Whether anything was read yet: the HTTP/2 preface can only come first.
    read_any: bool,
    /// The client spoke HTTP/2: hyper reads nothing more (end of stream).
    refused: bool,
}

impl<IO> ErrorBodies<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            io,
            pending: Vec::new(),
            written: 0,
            read_any: false,
            refused: false,
        }
    }
}

/// The start of the HTTP/2 connection preface (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// The answer to an HTTP/2 preface.
fn http2_refusal() -> Vec<u8> {
    let body = "HTTP version not supported: this server speaks HTTP/1.1 (with TLS when \
                configured); ask without HTTP/2 prior knowledge\n";
    format!(
        "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The body for hyper's automatic answer with this status, if it is one we explain.
fn explanation(status: &str) -> Option<&'static str> {
    match status {
        "400" => Some("bad request: this is not a valid HTTP/1 request\n"),
        "414" => Some("URI too long: the request target is over the server's limit\n"),
        "431" => {
            Some("request header fields too large: the request head is over the server's limit\n")
        }
        _ => None,
    }
}

/// Rewrites hyper's head-only 4xx answer into one with a body; None for anything else.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(buf).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let body = explanation(status)?;
    let mut headers = Vec::new();
    let mut empty_body = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            empty_body = value.trim() == "0";
        } else if !name.eq_ignore_ascii_case("connection") {
            headers.push(line);
        }
    }
    if !empty_body {
        return None;
    }
    let mut answer = format!("{status_line}\r\n");
    for line in headers {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str(&format!(
        "content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    Some(answer.into_bytes())
}

impl<IO: AsyncWrite + Unpin> ErrorBodies<IO> {
    /// Writes what is pending; Ready(Ok) once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ErrorBodies<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.refused {
            // The refusal goes out before hyper hears of the end.
            ready!(self.poll_pending(cx))?;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if !self.read_any && buf.filled().len() > before {
            self.read_any = true;
            if buf.filled()[before..].starts_with(HTTP2_PREFACE) {
                buf.set_filled(before);
                self.pending = http2_refusal();
                self.refused = true;
                ready!(self.poll_pending(cx))?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ErrorBodies<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(answer) = rewrite(buf) {
            self.pending = answer;
            // hyper's answer counts as written whatever happens to ours: errors surface on
            // the next write, flush or shutdown.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    // Not vectored: hyper then hands each answer over as one buffer, which `rewrite` can
    // recognise (the default poll_write_vectored writes the first non-empty slice).
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn hypers_automatic_answers_get_a_body() {
        let answer = rewrite(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 12:00:00 GMT\r\n\r\n",
        )
        .expect("rewritten");
        let text = String::from_utf8(answer).expect("text");
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("date: Mon, 30 Nov 2026 12:00:00 GMT\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(body.contains("too large"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(!head.contains("content-length: 0"));
        assert!(rewrite(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n").is_some());
    }

    #[test]
    fn other_writes_pass_untouched() {
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n",
            b"some body bytes",
        ] {
            assert!(rewrite(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }
}
