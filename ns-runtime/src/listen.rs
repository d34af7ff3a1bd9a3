//! The sockets a binary listens on: bound from its `--listen` addresses, or handed over
//! already listening by whoever started it (systemd socket activation: `LISTEN_FDS`, in the
//! order of the binary's listeners). A handed-over socket keeps its port across restarts of
//! the binary, and lets a privileged port be bound by the service manager alone.

use std::net::SocketAddr;

use anyhow::Context;
use listenfd::ListenFd;
use tokio::net::TcpListener;

/// The listeners of one process, taken in order.
pub struct Listeners {
    inherited: ListenFd,
    next: usize,
}

impl Listeners {
    /// Reads the sockets handed over in the environment (none when `LISTEN_FDS` is unset).
    pub fn from_env() -> Self {
        Listeners {
            inherited: ListenFd::from_env(),
            next: 0,
        }
    }

    /// The next handed-over socket, or `addr` bound now when there is none.
    pub async fn next(&mut self, addr: SocketAddr) -> anyhow::Result<TcpListener> {
        let index = self.next;
        self.next += 1;
        let inherited = self
            .inherited
            .take_tcp_listener(index)
            .with_context(|| format!("taking handed-over socket {index} (LISTEN_FDS)"))?;
        match inherited {
            Some(listener) => {
                listener
                    .set_nonblocking(true)
                    .context("making a handed-over socket non-blocking")?;
                TcpListener::from_std(listener).context("using a handed-over socket")
            }
            None => TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}")),
        }
    }
}
