//! One keep-alive HTTP/1.1 connection carrying one request at a time: the cheapest way to
//! post notifications and push messages, so that the load generator leaves the CPU to the server.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// `http://host:port/path` split into its authority and path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Url {
    pub authority: String,
    pub path: String,
}

impl Url {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Url> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported: {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok(Url {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// What a request came back with.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// A persistent connection to one server; reconnects after an error.
pub(crate) struct Connection {
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    pub(crate) fn new(authority: &str) -> Connection {
        Connection {
            authority: authority.to_owned(),
            sender: None,
        }
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if let Some(s) = &self.sender {
            if !s.is_closed() {
                return Ok(self.sender.as_mut().expect("checked above"));
            }
        }
        let stream = TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(self.sender.insert(sender))
    }

    /// POSTs a JSON body to `path` and reads the whole answer.
    pub(crate) async fn post_json(&mut self, path: &str, body: Bytes) -> anyhow::Result<Answer> {
        self.post(path, &[("content-type", "application/json".into())], body)
            .await
    }

    /// POSTs `body` with `headers` to `path` and reads the whole answer.
    pub(crate) async fn post(
        &mut self,
        path: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let mut request = hyper::Request::post(path).header("host", &self.authority);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body))?;
        let sender = self.sender().await?;
        sender.ready().await?;
        let result = sender.send_request(request).await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(
            Url::parse("http://127.0.0.1:8081/notify/abc").unwrap(),
            Url {
                authority: "127.0.0.1:8081".into(),
                path: "/notify/abc".into()
            }
        );
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        assert!(Url::parse("https://h/x").is_err());
    }
}
