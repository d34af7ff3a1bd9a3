//! The sockets a binary listens on: bound from its `--listen` addresses, or handed over
//! already listening by whoever started it (systemd socket activation: `LISTEN_FDS`, in the
//! order of the binary's listeners). A handed-over socket keeps its port across restarts of
//! the binary, and lets a privileged port be bound by the service manager alone.

use std::net::SocketAddr;

use anyhow::Context;
use listenfd::ListenFd;
use tokio::net::{TcpListener, TcpSocket};

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
            None => bind(addr).with_context(|| format!("binding {addr}")),
        }
    }
}

/// Connections the kernel may hold completed for a listener before it accepts them: far
/// more than the 128 of `std` and mio, so that a burst (every UA reconnecting after a
/// restart) is queued rather than dropped into the clients' SYN retries (the kernel caps it
/// at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `std` does: a restarted server binds its port while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// More connections than `std`'s backlog of 128, made before the server accepts any,
    /// are all queued: none waits for a SYN retry (a second at the earliest).
    #[tokio::test]
    async fn a_bound_listener_queues_a_burst_of_connections() {
        let listener = Listeners::from_env()
            .next("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for i in 0..300 {
            let connect = tokio::net::TcpStream::connect(addr);
            let client = tokio::time::timeout(Duration::from_millis(500), connect)
                .await
                .unwrap_or_else(|_| panic!("connection {i} was not queued"))
                .unwrap();
            clients.push(client);
        }
        for _ in 0..clients.len() {
            let accepted = tokio::time::timeout(Duration::from_millis(500), listener.accept());
            accepted.await.expect("queued").unwrap();
        }
    }
}
