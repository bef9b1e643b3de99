//! Requests that are not what the server takes get an answer with a body that says why, which
//! the client can read: not a reset. (A server that closes a connection with unread bytes in
//! its receive queue sends a RST, and the client's kernel may throw the answer away.)

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream},
    time::Duration,
};

use idlecut_web::WebSettings;

mod common;
use common::TestServer;

/// Sends `request` whole, then reads the answer to its end, as curl does: a server that
/// answers early and closes with the rest unread resets the connection, and the write or the
/// read fails.
fn answer_to(server: &TestServer, request: &[u8]) -> Result<String, String> {
    let mut stream = TcpStream::connect(server.addr).map_err(|err| format!("connect: {err}"))?;
    for timeout in [
        stream.set_read_timeout(Some(Duration::from_secs(10))),
        stream.set_write_timeout(Some(Duration::from_secs(10))),
    ] {
        timeout.expect("socket timeout");
    }
    stream
        .write_all(request)
        .map_err(|err| format!("write: {err}"))?;
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|err| format!("read: {err} after {:?}", String::from_utf8_lossy(&answer)))?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn status_and_body(answer: &str) -> (&str, &str) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    (head.get(9..12).unwrap_or(""), body)
}

#[test]
fn a_request_head_of_megabytes_gets_431_with_a_body() {
    let server = TestServer::start(WebSettings::load(None).expect("web settings"));
    let mut request = b"GET /metrics HTTP/1.1\r\nhost: idlecut\r\nx-filler: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 8 << 20));
    request.extend(b"\r\n\r\n");
    let answer = answer_to(&server, &request).expect("an answer, not a reset");
    let (status, body) = status_and_body(&answer);
    assert_eq!(status, "431", "{answer}");
    assert!(body.contains("request head is over"), "{answer}");
}

#[test]
fn an_http2_preface_gets_505_with_a_body() {
    let server = TestServer::start(WebSettings::load(None).expect("web settings"));
    // What an HTTP/2 client with prior knowledge sends first: the preface, then SETTINGS.
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let answer = answer_to(&server, &request).expect("an answer, not a reset");
    let (status, body) = status_and_body(&answer);
    assert_eq!(status, "505", "{answer}");
    assert!(body.contains("HTTP/1.1"), "{answer}");
}
