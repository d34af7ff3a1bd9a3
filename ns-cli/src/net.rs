//! The connections `ns` makes: HTTP(S) with reqwest and WebSockets (ws/wss) with
//! tokio-tungstenite, both on one rustls configuration that trusts the webpki roots and,
//! with `--ca-cert`, the certificates of one more PEM file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Url;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::{one_line, Dialect, Error, Refusal};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one HTTP request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The subprotocol both dialects of the UA WebSocket use.
const SUBPROTOCOL: &str = "push-notification";

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The clients of one run of `ns`.
#[derive(Clone)]
pub struct Net {
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
}

/// An HTTP answer, read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, or a protocol error saying what came instead.
    pub fn json(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.body).map_err(|_| {
            Error::Protocol(format!(
                "HTTP {}, not JSON: {}",
                self.status,
                snippet(&self.text())
            ))
        })
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The refusal this error answer carries, in the shape of `dialect`.
    pub fn refusal(&self, dialect: Dialect) -> Error {
        let body: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        // An answer in the other dialect's shape is taken as it is: a Web Push Location
        // and a notify URL share `ns status`.
        let dialect = if body.get("errno").is_some() {
            Dialect::WebPush
        } else {
            dialect
        };
        let code = match dialect {
            Dialect::WebPush => body["errno"].as_u64(),
            _ => body["code"].as_u64(),
        };
        let reason = match dialect {
            Dialect::WebPush => body["message"].as_str().or(body["error"].as_str()),
            _ => body["reason"].as_str().or(body["error"].as_str()),
        };
        match (code, reason) {
            (Some(code), Some(reason)) => Error::Refused(Refusal {
                dialect,
                http: Some(self.status),
                code,
                reason: reason.to_owned(),
            }),
            _ => Error::Protocol(format!("HTTP {}: {}", self.status, snippet(&self.text()))),
        }
    }
}

/// At most a line's worth of a server's text, for an error message.
pub fn snippet(text: &str) -> String {
    let text = text.trim().replace(['\n', '\r'], " ");
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

impl Net {
    /// Clients that trust the webpki roots and the certificates in `ca_cert`.
    pub fn new(ca_cert: Option<&Path>) -> Result<Net, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| Error::read(path, e))?;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert
                    .map_err(|e| Error::bad_input(path, format!("not a PEM certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::bad_input(path, format!("not a usable CA: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(Error::bad_input(path, "no PEM certificate in it"));
            }
        }
        // The provider is named: the workspace enables two, and rustls won't pick one.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("ns/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(one_line(&e)))?;
        Ok(Net {
            http,
            tls: Arc::new(tls),
        })
    }

    pub async fn get(&self, url: &Url) -> Result<Answer, Error> {
        self.send(url, self.http.get(url.clone())).await
    }

    pub async fn post_json(&self, url: &Url, body: &Value) -> Result<Answer, Error> {
        let request = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(url, request).await
    }

    pub fn post(&self, url: &Url) -> reqwest::RequestBuilder {
        self.http.post(url.clone())
    }

    /// Sends `request` and reads its whole answer.
    pub async fn send(&self, url: &Url, request: reqwest::RequestBuilder) -> Result<Answer, Error> {
        let unavailable = |e: reqwest::Error| Error::Unavailable {
            url: without_path(url),
            detail: one_line(&e),
        };
        let response = request.send().await.map_err(unavailable)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(unavailable)?.to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Opens the UA WebSocket at `url`, offering the `push-notification` subprotocol.
    pub async fn websocket(&self, url: &Url) -> Result<Socket, Error> {
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Usage(format!("bad WebSocket URL {url}: {e}")))?;
        let protocol = tungstenite::http::HeaderValue::from_static(SUBPROTOCOL);
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol);
        let connector = Connector::Rustls(self.tls.clone());
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
        let unavailable = |detail: String| Error::Unavailable {
            url: without_path(url),
            detail,
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => Err(unavailable("timed out".into())),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tungstenite::Error::Http(response))) => Err(Error::Protocol(format!(
                "the WebSocket handshake was answered HTTP {}",
                response.status().as_u16()
            ))),
            Ok(Err(e)) => Err(unavailable(one_line(&e))),
        }
    }
}

/// `scheme://host:port` of a URL, for messages about reaching it.
fn without_path(url: &Url) -> String {
    crate::vapid::origin(url.as_str())
}

/// Parses a URL given on the command line, which must have one of `schemes`.
pub fn parse_url(text: &str, what: &str, schemes: &[&str]) -> Result<Url, Error> {
    let url =
        Url::parse(text.trim()).map_err(|e| Error::Usage(format!("bad {what} {text:?}: {e}")))?;
    if !schemes.contains(&url.scheme()) || url.host_str().is_none() {
        return Err(Error::Usage(format!(
            "bad {what} {text:?}: want a {} URL",
            schemes.join(" or ")
        )));
    }
    Ok(url)
}

/// The HTTP base of a UA server given as `ws://`, `wss://`, `http://` or `https://`.
pub fn http_of(server: &Url) -> Url {
    let mut url = server.clone();
    let scheme = match server.scheme() {
        "ws" => "http",
        "wss" => "https",
        other => other,
    };
    // Both sets of schemes are "special" in the URL standard, so this can't fail.
    let _ = url.set_scheme(scheme);
    url
}

/// The WebSocket URL of a UA server given in either form.
pub fn ws_of(server: &Url) -> Url {
    let mut url = server.clone();
    let scheme = match server.scheme() {
        "http" => "ws",
        "https" => "wss",
        other => other,
    };
    let _ = url.set_scheme(scheme);
    url
}

/// `base` with `segment` appended to its path.
pub fn join(base: &Url, segment: &str) -> Result<Url, Error> {
    let mut text = base.as_str().trim_end_matches('/').to_owned();
    text.push('/');
    text.push_str(segment);
    Url::parse(&text).map_err(|e| Error::Usage(format!("bad URL {text:?}: {e}")))
}

/// Sends one text frame.
pub async fn send_text(socket: &mut Socket, url: &Url, text: String) -> Result<(), Error> {
    socket
        .send(Message::text(text))
        .await
        .map_err(|e| lost(url, &e))
}

/// The next text frame; `None` once the server closed the connection. Pings are answered
/// by tungstenite as frames are read.
pub async fn next_text(socket: &mut Socket, url: &Url) -> Result<Option<String>, Error> {
    loop {
        match socket.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Text(text))) => return Ok(Some(text.as_str().to_owned())),
            Some(Ok(Message::Binary(_))) => {
                return Err(Error::Protocol("a binary WebSocket frame".into()))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(lost(url, &e)),
        }
    }
}

fn lost(url: &Url, e: &tungstenite::Error) -> Error {
    Error::Unavailable {
        url: without_path(url),
        detail: format!("connection lost: {}", one_line(e)),
    }
}

/// Ends a WebSocket politely; the server may already be gone.
pub async fn close(socket: &mut Socket) {
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
}
