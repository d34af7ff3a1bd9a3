//! TLS on the ports: the process's [`Tls`] in scope of the services it runs (as the
//! [`HttpLimits`](crate::HttpLimits) are), and the stream of an accepted connection, plain or
//! TLS once its handshake is done.
//!
//! The handshake is done by the connection's own task, never by the accept loop, and within
//! the header timeout: a client that stalls in it holds only its own task, and is closed as
//! one that stalls in its request head would be.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use ns_runtime::tls::Tls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

tokio::task_local! {
    /// The TLS of the services run within [`with_tls`].
    static SCOPED: Option<Tls>;
}

/// Runs `future` (a service's `run`, or several) with `tls` on every port it serves, and
/// reloads the certificate on SIGHUP or when its files change while it runs. With `None`,
/// the ports are plain HTTP.
pub async fn with_tls<F: Future>(tls: Option<Tls>, future: F) -> F::Output {
    match tls {
        None => SCOPED.scope(None, future).await,
        Some(tls) => {
            let watched = tls.clone();
            let watching = async move {
                tokio::select! {
                    output = future => output,
                    never = watched.watch() => match never {},
                }
            };
            SCOPED.scope(Some(tls), watching).await
        }
    }
}

/// The TLS set by [`with_tls`] around the caller (not inherited by spawned tasks: read it
/// before spawning), if any.
pub fn tls() -> Option<Tls> {
    SCOPED.try_with(Clone::clone).ok().flatten()
}

/// A connection as accepted, before its TLS handshake when its listener has TLS.
pub struct Incoming {
    stream: TcpStream,
    tls: Option<Tls>,
}

impl Incoming {
    pub(crate) fn new(stream: TcpStream, tls: Option<Tls>) -> Self {
        Incoming { stream, tls }
    }

    /// The TCP connection.
    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }

    /// The connection's stream: at once when plain; with TLS, once the handshake is done,
    /// which must be by `deadline`. `None` when the handshake failed or took too long (logged
    /// at debug level: it's the client's doing).
    pub async fn establish(self, deadline: Instant) -> Option<Stream> {
        match self.tls {
            None => Some(Stream::Plain(self.stream)),
            Some(tls) => {
                // On the heap: the handshake's state is given back once it is done.
                let handshake = Box::pin(tls.handshake(self.stream, deadline));
                handshake.await.map(|tls| Stream::Tls(Box::new(tls)))
            }
        }
    }
}

/// An accepted connection's bytes: plain TCP, or TLS over it. The TLS state is boxed, so a
/// plain connection stays about the size of its socket.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Self {
        Stream::Plain(stream)
    }
}

impl Stream {
    /// The TCP connection under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
