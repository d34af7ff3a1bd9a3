//! The HTTP limits (`NS_HTTP_*`) on every HTTP port of the cluster, seen from a raw TCP
//! client: connections that send nothing, send their head a byte at a time, never finish
//! their body or sit idle after an answer are closed within their timeout, and past the
//! connection limit a new connection is answered `503` and closed.

use std::time::Duration;

use futures::future::join_all;
use ns_http::HttpLimits;
use ns_tests::{eventually, Backend, Cluster, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

ns_tests::both_modes!(
    silent_connection_closed,
    slowloris_closed,
    unfinished_body_closed,
    idle_keep_alive_closed,
    connection_limit,
);

/// Every timeout of the short-limit cluster (s).
const TIMEOUT: u64 = 1;
/// Slack past a timeout for the server to notice and the close to arrive.
const MARGIN: Duration = Duration::from_millis(1500);

async fn cluster(backend: Backend, http: HttpLimits) -> Cluster {
    Cluster::start_with(
        backend,
        Options {
            http,
            ..Options::default()
        },
    )
    .await
}

fn short_limits() -> HttpLimits {
    HttpLimits {
        http_header_timeout_secs: TIMEOUT,
        http_body_timeout_secs: TIMEOUT,
        http_idle_timeout_secs: TIMEOUT,
        ..HttpLimits::default()
    }
}

async fn connect(url: &str) -> TcpStream {
    let addr = url.trim_start_matches("http://");
    TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// Reads until the server closes `stream` (EOF or reset), or panics after `within`;
/// returns what was read.
async fn closed_within(stream: &mut TcpStream, within: Duration, what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(within, read_all).await.is_err() {
        panic!("{what}: still open after {within:?}");
    }
    seen
}

/// Sends `GET /health` on `stream` and reads its answer's head and `body_len` bytes.
async fn get_health(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("writing a request");
    read_answer(stream).await
}

/// Reads one answer with a `content-length`, or what came before the connection closed.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&seen).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return text;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&seen).to_string(),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s")
}

async fn silent_connection_closed(backend: Backend) {
    let cluster = cluster(backend, short_limits()).await;
    join_all(cluster.http_ports().iter().map(|url| async move {
        let mut stream = connect(url).await;
        let within = Duration::from_secs(TIMEOUT) + MARGIN;
        closed_within(&mut stream, within, &format!("silent connection to {url}")).await;
    }))
    .await;
}

async fn slowloris_closed(backend: Backend) {
    let cluster = cluster(backend, short_limits()).await;
    join_all(cluster.http_ports().iter().map(|url| async move {
        let stream = connect(url).await;
        let started = Instant::now();
        let (mut read, mut write) = stream.into_split();
        let head = b"GET /health HTTP/1.1\r\nhost: test\r\nx-slow: ";
        let mut bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let within = Duration::from_secs(TIMEOUT) + MARGIN;
        let mut buf = [0u8; 1024];
        loop {
            assert!(
                started.elapsed() < within,
                "a head sent a byte every 200 ms to {url} still open after {within:?}"
            );
            tokio::select! {
                r = read.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                _ = tick.tick() => {
                    let byte = bytes.next().unwrap_or(b'a');
                    if write.write_all(&[byte]).await.is_err() {
                        break;
                    }
                }
            }
        }
    }))
    .await;
}

async fn unfinished_body_closed(backend: Backend) {
    let cluster = cluster(backend, short_limits()).await;
    join_all(cluster.http_ports().iter().map(|url| async move {
        let mut stream = connect(url).await;
        // On ns-as a route that reads its body; elsewhere a 404 that leaves it unread.
        let request = "POST /notify/abc HTTP/1.1\r\nhost: test\r\n\
                       content-type: application/json\r\ncontent-length: 1000\r\n\r\n\
                       {\"messageType\":\"notification\"";
        assert_eq!(
            request.split_once("\r\n\r\n").map(|(_, b)| b.len()),
            Some(29)
        );
        stream.write_all(request.as_bytes()).await.expect("writing");
        let within = Duration::from_secs(TIMEOUT) + MARGIN;
        closed_within(&mut stream, within, &format!("29 bytes of 1000 to {url}")).await;
    }))
    .await;
}

async fn idle_keep_alive_closed(backend: Backend) {
    let cluster = cluster(backend, short_limits()).await;
    join_all(cluster.http_ports().iter().map(|url| async move {
        let mut stream = connect(url).await;
        let answer = get_health(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{url}: {answer}");
        let within = Duration::from_secs(TIMEOUT) + MARGIN;
        closed_within(&mut stream, within, &format!("idle keep-alive to {url}")).await;
    }))
    .await;
}

async fn connection_limit(backend: Backend) {
    const MAX: usize = 5;
    // Long timeouts: the connections held must outlast the test.
    let cluster = cluster(
        backend,
        HttpLimits {
            http_max_connections: MAX,
            ..HttpLimits::default()
        },
    )
    .await;
    join_all(cluster.http_ports().iter().map(|url| async move {
        // Each held connection is known to be admitted by its answer; a connection of the
        // harness's health check may still be closing, hence the polling.
        let mut held = Vec::new();
        for _ in 0..MAX {
            let stream = eventually(
                &format!("a connection to {url}"),
                Duration::from_secs(10),
                || async {
                    let mut stream = connect(url).await;
                    get_health(&mut stream)
                        .await
                        .starts_with("HTTP/1.1 200")
                        .then_some(stream)
                },
            )
            .await;
            held.push(stream);
        }

        let mut refused = connect(url).await;
        let answer = String::from_utf8_lossy(
            &closed_within(&mut refused, Duration::from_secs(5), "a refused connection").await,
        )
        .to_string();
        assert!(answer.starts_with("HTTP/1.1 503"), "{url}: {answer}");
        assert!(answer.contains("too many connections"), "{url}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{url}: {answer}"
        );

        drop(held.pop());
        eventually(
            &format!("a place freed on {url}"),
            Duration::from_secs(5),
            || async {
                let mut stream = connect(url).await;
                get_health(&mut stream)
                    .await
                    .starts_with("HTTP/1.1 200")
                    .then_some(())
            },
        )
        .await;
        // The others are still served on their kept-alive connections.
        for stream in &mut held {
            assert!(
                get_health(stream).await.starts_with("HTTP/1.1 200"),
                "{url}"
            );
        }
    }))
    .await;
}
