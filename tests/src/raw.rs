//! Raw HTTP/1.1 over TCP, for what an HTTP client library won't do: send a chunked body of
//! chosen chunks, or write a whole body before reading anything.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const DEADLINE: Duration = Duration::from_secs(20);

/// An answer: its status and its body as text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// POSTs `body` to `url` with `Transfer-Encoding: chunked`, in chunks of `chunk` bytes, and
/// `headers`; the server may answer and close before all is written.
pub async fn post_chunked(
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunk: usize,
) -> Answer {
    let (mut stream, head) = open(url, headers).await;
    let head = format!("{head}Transfer-Encoding: chunked\r\n\r\n");
    let mut written = stream.write_all(head.as_bytes()).await;
    for part in body.chunks(chunk.max(1)) {
        if written.is_err() {
            break;
        }
        let mut framed = format!("{:x}\r\n", part.len()).into_bytes();
        framed.extend_from_slice(part);
        framed.extend_from_slice(b"\r\n");
        written = stream.write_all(&framed).await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    read_answer(stream).await
}

/// POSTs `body` to `url` with its `Content-Length` and `headers`, writing the whole request
/// before reading the answer, as many simple clients do.
///
/// The client's send buffer is kept small, as a real network's would be in effect: on
/// loopback the kernel's buffers would otherwise take a large body whole, however little
/// of it the server reads.
pub async fn post_whole(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let (mut stream, head) = open_with(url, headers, Some(SMALL_SEND_BUFFER)).await;
    let mut request = format!("{head}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    request.extend_from_slice(body);
    if let Err(e) = stream.write_all(&request).await {
        panic!("the server closed before the body was written: {e}");
    }
    read_answer(stream).await
}

/// The send buffer of [`post_whole`]'s client, in bytes.
const SMALL_SEND_BUFFER: u32 = 4096;

/// Connects to `url`'s host; returns the stream and the head up to its last header line.
async fn open(url: &str, headers: &[(&str, &str)]) -> (TcpStream, String) {
    open_with(url, headers, None).await
}

async fn open_with(
    url: &str,
    headers: &[(&str, &str)],
    send_buffer: Option<u32>,
) -> (TcpStream, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let addr = tokio::net::lookup_host(host)
        .await
        .expect("resolve")
        .next()
        .expect("an address");
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .expect("socket");
    if let Some(size) = send_buffer {
        socket.set_send_buffer_size(size).expect("SO_SNDBUF");
    }
    let stream = socket.connect(addr).await.expect("connect");
    let mut head = format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    (stream, head)
}

/// Reads the answer to the end of the connection, which must be a clean close: a reset
/// can discard an answer before it is read.
async fn read_answer(mut stream: TcpStream) -> Answer {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    if !matches!(read, Ok(Ok(_))) {
        panic!("the answer did not end cleanly ({read:?}): {text}");
    }
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Answer { status, body }
}
