//! The close handshake of RFC 6455 on the WebSocket port: a client's Close is echoed, a
//! frame the server cannot read gets the Close frame that says why (1002, 1007, 1009), and
//! the server then drops TCP. Malformed frames are written by hand over raw TCP.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ns_tests::webpush::PushUa;
use ns_tests::{Backend, Cluster, Ua};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const DEADLINE: Duration = Duration::from_secs(10);

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// The server's frame limit.
const LIMIT: usize = 64 * 1024;

/// A client frame: `first` is its first byte (FIN, reserved bits, opcode); masked unless
/// `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The payload of a Close frame.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// What the server sent until it dropped the connection.
#[derive(Debug, PartialEq)]
enum Ending {
    /// A Close frame (its code, if any, and reason), then end of stream.
    Closed(Option<u16>, String),
    /// End of stream with no Close frame.
    Dropped,
    /// A Close frame, but the connection stayed open past the deadline.
    Open(Option<u16>),
    /// Something else: a reset, a deadline with no Close, frames after the Close.
    Other(String),
}

/// A raw WebSocket client: does the HTTP upgrade itself, so that it can write any bytes.
async fn upgraded(ws_url: &str) -> TcpStream {
    let address = ws_url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned();
    let mut tcp = TcpStream::connect(&address).await.expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: push-notification\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("request");
    // Byte by byte up to the end of the head, so that no frame is read with it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(DEADLINE, tcp.read_u8())
            .await
            .expect("a response before the deadline")
            .expect("a response");
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// Reads one server frame: opcode and payload. `None` at end of stream.
async fn read_frame(tcp: &mut TcpStream) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let first = match tcp.read_u8().await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = match tcp.read_u8().await? & 0x7f {
        126 => u64::from(tcp.read_u16().await?),
        127 => tcp.read_u64().await?,
        n => u64::from(n),
    };
    let mut payload = vec![0; len as usize];
    tcp.read_exact(&mut payload).await?;
    Ok(Some((first & 0x0f, payload)))
}

/// Reads until the server's Close frame and then the end of the stream.
async fn ending(tcp: &mut TcpStream) -> Ending {
    let close = loop {
        match tokio::time::timeout(DEADLINE, read_frame(tcp)).await {
            Err(_) => return Ending::Other("no Close frame before the deadline".into()),
            Ok(Err(e)) => return Ending::Other(format!("read failed: {e}")),
            Ok(Ok(None)) => return Ending::Dropped,
            Ok(Ok(Some((CLOSE, payload)))) => break payload,
            // Text a connection sends before it closes (an error, a reply).
            Ok(Ok(Some(_))) => {}
        }
    };
    let code = (close.len() >= 2).then(|| u16::from_be_bytes([close[0], close[1]]));
    let reason = String::from_utf8_lossy(close.get(2..).unwrap_or_default()).into_owned();
    match tokio::time::timeout(DEADLINE, read_frame(tcp)).await {
        Ok(Ok(None)) => Ending::Closed(code, reason),
        Err(_) => Ending::Open(code),
        Ok(Ok(Some((opcode, _)))) => Ending::Other(format!("opcode {opcode} after the Close")),
        Ok(Err(e)) => Ending::Other(format!("read after the Close failed: {e}")),
    }
}

/// A malformed input, and the code of the Close frame it must get.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    code: u16,
}

fn case(name: &'static str, frames: &[Vec<u8>], code: u16) -> Case {
    Case {
        name,
        bytes: frames.concat(),
        code,
    }
}

fn malformed() -> Vec<Case> {
    let big = vec![b'a'; LIMIT + 1];
    let half = vec![b'a'; LIMIT / 2 + 1];
    vec![
        case("unmasked text", &[frame(FIN | TEXT, b"PING", false)], 1002),
        case(
            "reserved bit",
            &[frame(FIN | RSV1 | TEXT, b"PING", true)],
            1002,
        ),
        case("unknown data opcode", &[frame(FIN | 0x3, b"x", true)], 1002),
        case(
            "unknown control opcode",
            &[frame(FIN | 0xb, b"", true)],
            1002,
        ),
        case(
            "ping over 125 bytes",
            &[frame(FIN | PING, &[b'p'; 126], true)],
            1002,
        ),
        case("fragmented ping", &[frame(PING, b"p", true)], 1002),
        case(
            "continuation with nothing to continue",
            &[frame(FIN | CONTINUATION, b"x", true)],
            1002,
        ),
        case(
            "new message inside a fragmented one",
            &[frame(TEXT, b"PI", true), frame(FIN | TEXT, b"NG", true)],
            1002,
        ),
        case(
            "close with a one-byte payload",
            &[frame(FIN | CLOSE, &[3], true)],
            1002,
        ),
        case(
            "close with a code no client may send",
            &[frame(FIN | CLOSE, &close_payload(1005, ""), true)],
            1002,
        ),
        case(
            "invalid UTF-8 in a text frame",
            &[frame(FIN | TEXT, &[b'P', 0xff, 0xfe], true)],
            1007,
        ),
        case(
            "invalid UTF-8 across fragments",
            &[
                frame(TEXT, b"P", true),
                frame(FIN | CONTINUATION, &[0xc3], true),
            ],
            1007,
        ),
        case(
            "close with an invalid UTF-8 reason",
            &[frame(FIN | CLOSE, &[0x03, 0xe8, 0xff], true)],
            1007,
        ),
        case(
            "text frame over the limit",
            &[frame(FIN | TEXT, &big, true)],
            1009,
        ),
        case(
            "binary frame over the limit",
            &[frame(FIN | BINARY, &big, true)],
            1009,
        ),
        case(
            "message over the limit in fragments",
            &[
                frame(BINARY, &half, true),
                frame(FIN | CONTINUATION, &half, true),
            ],
            1009,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_a_close_frame_then_tcp_ends() {
    let c = Cluster::start(Backend::Embedded).await;
    let mut wrong = Vec::new();
    let cases = malformed();
    for case in &cases {
        let mut tcp = upgraded(&c.ws_url(0)).await;
        // The server may stop reading before the end of a frame too large.
        let _ = tcp.write_all(&case.bytes).await;
        match ending(&mut tcp).await {
            Ending::Closed(Some(code), _) if code == case.code => {}
            other => wrong.push(format!(
                "{}: {other:?}, expected a Close {}",
                case.name, case.code
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed_on_raw_tcp() {
    let c = Cluster::start(Backend::Embedded).await;
    for (payload, expected) in [
        (
            close_payload(1000, "bye"),
            Ending::Closed(Some(1000), "bye".into()),
        ),
        (
            close_payload(4000, ""),
            Ending::Closed(Some(4000), String::new()),
        ),
        // A close with no code is answered with an empty one.
        (Vec::new(), Ending::Closed(None, String::new())),
    ] {
        let mut tcp = upgraded(&c.ws_url(0)).await;
        tcp.write_all(&frame(FIN | CLOSE, &payload, true))
            .await
            .expect("write");
        assert_eq!(ending(&mut tcp).await, expected, "{payload:?}");
    }
}

/// Sends a Close 1000 with a reason on `ws`; expects it echoed, then the end of the stream.
async fn close_is_echoed(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) {
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    ws.send(Message::Close(Some(close.clone())))
        .await
        .expect("send the Close");
    let reply = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a reply before the deadline");
    match reply {
        Some(Ok(Message::Close(Some(echo)))) => assert_eq!(echo, close),
        other => panic!("expected the Close echoed, got {other:?}"),
    }
    let end = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("the server drops TCP before the deadline");
    assert!(end.is_none(), "end of stream, got {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed_in_both_dialects() {
    let c = Cluster::start(Backend::Embedded).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    close_is_echoed(&mut ua.ws).await;
    let mut push = PushUa::hello(&c.ws_url(0), None).await;
    close_is_echoed(&mut push.ua.ws).await;
}
