//! Serving HTTP/1 connections with limits: how long a request head, a request and an idle
//! keep-alive connection may take, and how many connections one listener holds at once.
//!
//! Neither warp nor hyper's connection builder bounds these by default, so a client that
//! opens connections and sends nothing, or a byte a second, could hold file descriptors
//! for ever. Every HTTP port is served through [`serve_with`] or [`serve_connection`], after
//! its TLS handshake when the process has TLS (see [`crate::tls`]).
//!
//! Each connection has one deadline, moved as it goes through its phases: the head of the
//! first request must be in by `accepted + header timeout`; from the moment a head is
//! parsed, its body must be read and its answer be ready within the body timeout; after an
//! answer, the connection may stay idle for the idle timeout, and once the first byte of
//! the next request arrives, its head must be in within the header timeout. Past the
//! deadline the connection is closed without an answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::{Filter, Reply};

use crate::tls::Incoming;

const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The limits of every HTTP listener (one group for all the ports of a process).
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Seconds within which a request's whole head must arrive (from the connection's
    /// accept, or from the first byte of a later request on a keep-alive connection).
    #[arg(long, env = "NS_HTTP_HEADER_TIMEOUT_SECS", default_value_t = DEFAULT_HEADER_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_secs: u64,
    /// Seconds within which, once its head is in, a request's whole body must arrive and its
    /// answer be ready.
    #[arg(long, env = "NS_HTTP_BODY_TIMEOUT_SECS", default_value_t = DEFAULT_BODY_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_body_timeout_secs: u64,
    /// Seconds a keep-alive connection may wait for its next request before it is closed.
    #[arg(long, env = "NS_HTTP_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_idle_timeout_secs: u64,
    /// HTTP connections one listener holds at once; past it a new connection is answered
    /// `503` (with `Retry-After: 1` and `Connection: close`) and closed. On the ns-ua-ws
    /// port it counts the connections not (yet) upgraded to WebSocket.
    #[arg(long, env = "NS_HTTP_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub http_max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            http_header_timeout_secs: DEFAULT_HEADER_TIMEOUT_SECS,
            http_body_timeout_secs: DEFAULT_BODY_TIMEOUT_SECS,
            http_idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            http_max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl HttpLimits {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.http_header_timeout_secs)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.http_body_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.http_idle_timeout_secs)
    }
}

tokio::task_local! {
    /// The limits of the services run within [`with_limits`].
    static SCOPED: HttpLimits;
}

/// Runs `future` (a service's `run`) with `limits` as the ones [`limits`] gives within it.
///
/// The limits are one group for every port of a process, set where the process is
/// composed (a binary's `main`, ns-standalone, the test harness), so they travel beside
/// the services' own settings rather than in them: ns-standalone flattens those settings
/// side by side, where one group in each would clash.
pub async fn with_limits<F: Future>(limits: HttpLimits, future: F) -> F::Output {
    SCOPED.scope(limits, future).await
}

/// The limits set by [`with_limits`] around the caller (not inherited by spawned tasks:
/// read them before spawning), or the defaults.
pub fn limits() -> HttpLimits {
    SCOPED.try_with(HttpLimits::clone).unwrap_or_default()
}

/// Serves `filter` on `listener` until `shutdown` is cancelled, then lets requests in
/// flight finish, within the [`limits`] of the caller.
pub async fn serve<F, R>(listener: TcpListener, filter: F, shutdown: CancellationToken)
where
    F: Filter<Extract = (R,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    R: Reply,
{
    let limits = limits();
    serve_with(listener, filter, limits, shutdown).await;
}

/// Serves `filter` on `listener` within `limits` until `shutdown` is cancelled, then lets
/// requests in flight finish and closes idle connections.
pub async fn serve_with<F, R>(
    listener: TcpListener,
    filter: F,
    limits: HttpLimits,
    shutdown: CancellationToken,
) where
    F: Filter<Extract = (R,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    R: Reply,
{
    let tasks = TaskTracker::new();
    let max = limits.http_max_connections;
    accept(
        listener,
        max,
        &tasks,
        &shutdown,
        |incoming, accepted_at, admitted| {
            let (filter, limits, shutdown) = (filter.clone(), limits.clone(), shutdown.clone());
            async move {
                let _admitted = admitted;
                // The handshake counts against the time the request head has.
                let head_deadline = accepted_at + limits.header_timeout();
                let Some(stream) = incoming.establish(head_deadline).await else {
                    return;
                };
                serve_connection(stream, filter, &limits, accepted_at, shutdown).await;
            }
        },
    )
    .await;
    tasks.close();
    // Bounded: idle connections close at once, requests in flight within the body timeout.
    tasks.wait().await;
}

/// Accepts connections on `listener` until `shutdown`, at most `max_connections` at once:
/// each admitted one goes to `serve`, with its accept time, as a task on `tasks`; one past
/// the limit is [`refuse`]d. Returns once `shutdown` is cancelled, the listener closed.
///
/// With the [`tls`](crate::tls()) of the caller's scope, each connection is handed over
/// before its handshake, which `serve`'s task does ([`Incoming::establish`]): the loop
/// itself never waits on a client.
pub async fn accept<H, Fut>(
    listener: TcpListener,
    max_connections: usize,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    mut serve: H,
) where
    H: FnMut(Incoming, Instant, Admitted) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let gate = ConnectionLimit::new(max_connections);
    let tls = crate::tls::tls();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let accepted_at = Instant::now();
                let incoming = Incoming::new(stream, tls.clone());
                match gate.admit(incoming.tcp()) {
                    Some(admitted) => {
                        tasks.spawn(serve(incoming, accepted_at, admitted));
                    }
                    None => {
                        tokio::spawn(refuse(incoming));
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How many connections a listener holds at once.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionLimit {
    slots: Arc<Semaphore>,
}

/// One connection's place under a [`ConnectionLimit`], given back when dropped.
#[derive(Debug)]
pub struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnectionLimit {
    pub(crate) fn new(max: usize) -> Self {
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// A place for `stream`, or `None` when the limit is reached: the caller then hands
    /// the stream to [`refuse`].
    pub(crate) fn admit(&self, stream: &TcpStream) -> Option<Admitted> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(Admitted(permit)),
            Err(_) => {
                tracing::warn!(
                    peer = stream.peer_addr().ok().map(tracing::field::display),
                    "too many HTTP connections: refused"
                );
                None
            }
        }
    }
}

/// What a connection past the limit is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 61\r\n\r\n\
{\"status\":\"ERROR\",\"reason\":\"too many connections\",\"code\":503}";

/// Answers a connection past the limit `503` and closes it (after its TLS handshake, on a
/// TLS port).
pub(crate) async fn refuse(incoming: Incoming) {
    // Bounded, so that refusals can't pile up either.
    let deadline = Instant::now() + Duration::from_secs(1);
    let _ = tokio::time::timeout_at(deadline, async {
        let Some(mut stream) = incoming.establish(deadline).await else {
            return Ok(());
        };
        stream.write_all(REFUSAL).await?;
        stream.shutdown().await?;
        // Closing with unread input would reset the connection and could discard the
        // answer before the client reads it: read what it sends until it closes.
        let mut sink = [0u8; 1024];
        loop {
            if tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? == 0 {
                return Ok::<_, io::Error>(());
            }
        }
    })
    .await;
}

/// Serves one accepted connection with `filter` within `limits` (the connection limit
/// aside, which is the listener's); its first head must be in by `accepted_at` plus the
/// header timeout. When `shutdown` is cancelled, the request in flight is finished and the
/// connection closed. `stream` is the connection's, plain or after its TLS handshake.
pub async fn serve_connection<S, F, R>(
    stream: S,
    filter: F,
    limits: &HttpLimits,
    accepted_at: Instant,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Filter<Extract = (R,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    R: Reply,
{
    let watch = Arc::new(Watch::new(limits, accepted_at));
    let inner = hyper_util::service::TowerToHyperService::new(warp::service(filter));
    let service = {
        let watch = watch.clone();
        hyper::service::service_fn(move |request| {
            watch.request_started();
            let response = hyper::service::Service::call(&inner, request);
            let watch = watch.clone();
            async move {
                let response = response.await;
                watch.request_answered();
                response
            }
        })
    };
    let io = hyper_util::rt::TokioIo::new(Watched {
        stream,
        watch: watch.clone(),
    });
    let connection = hyper::server::conn::http1::Builder::new()
        // The deadlines are ours (hyper's header timeout would also cut idle keep-alives).
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    loop {
        let deadline = watch.deadline();
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = watch.moved.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                if watch.deadline() <= Instant::now() {
                    tracing::debug!(phase = ?watch.phase(), "HTTP connection timed out: closed");
                    return;
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Where a connection is, which sets its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the rest of a request head.
    Head,
    /// A request read or being answered.
    Request,
    /// Answered; waiting for the first byte of the next request.
    Idle,
}

/// One connection's phase and deadline, moved by its reads and its service.
struct Watch {
    state: Mutex<(Phase, Instant)>,
    /// Wakes the connection's loop when the deadline moved, maybe earlier.
    moved: Notify,
    header: Duration,
    body: Duration,
    idle: Duration,
}

impl Watch {
    fn new(limits: &HttpLimits, accepted_at: Instant) -> Self {
        Watch {
            state: Mutex::new((Phase::Head, accepted_at + limits.header_timeout())),
            moved: Notify::new(),
            header: limits.header_timeout(),
            body: limits.body_timeout(),
            idle: limits.idle_timeout(),
        }
    }

    fn deadline(&self) -> Instant {
        self.lock().1
    }

    fn phase(&self) -> Phase {
        self.lock().0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Phase, Instant)> {
        // The state is two plain values: a panic elsewhere can't leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(&self, phase: Phase, timeout: Duration) {
        *self.lock() = (phase, Instant::now() + timeout);
        self.moved.notify_one();
    }

    fn request_started(&self) {
        self.enter(Phase::Request, self.body);
    }

    fn request_answered(&self) {
        self.enter(Phase::Idle, self.idle);
    }

    fn bytes_read(&self) {
        if self.phase() == Phase::Idle {
            self.enter(Phase::Head, self.header);
        }
    }
}

/// The connection's socket, telling its [`Watch`] when bytes arrive.
struct Watched<S> {
    stream: S,
    watch: Arc<Watch>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        http: HttpLimits,
    }

    #[test]
    fn defaults_and_zero_is_refused() {
        let cli = Cli::try_parse_from(["x"]).map(|c| c.http);
        assert_eq!(cli.ok(), Some(HttpLimits::default()));
        assert!(Cli::try_parse_from(["x", "--http-idle-timeout-secs", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--http-max-connections", "0"]).is_err());
    }

    #[test]
    fn the_refusal_says_its_length() {
        let text = String::from_utf8_lossy(REFUSAL);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
