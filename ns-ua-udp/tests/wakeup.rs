//! Wake-up timing (§4) with the service's `run(...)` in this process and the clock paused:
//! a priority-2 notification wakes its UA within the coalescing window and not before, and a
//! second wake-up waits for the end of the interval. No test waits for those seconds.

use std::sync::Arc;
use std::time::Duration;

use common::crypto::Secret;
use common::messages::{WakeUp, UDP_WAKEUPS};
use common::model::{Interface, UaId};
use ns_broker_local::LocalBroker;
use ns_runtime::metrics::Registry;
use ns_runtime::Clock;
use ns_store_redb::EmbeddedStore;
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Whether a datagram arrives at `socket` within `wait`.
async fn woken_within(socket: &UdpSocket, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    match timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(received) => {
            let (n, _) = received.expect("receiving");
            assert!(buf[..n].starts_with(b"NOTIFY"), "not a wake-up");
            true
        }
        Err(_) => false,
    }
}

#[tokio::test(start_paused = true)]
async fn priority_two_wakes_within_the_window_and_a_second_wake_up_waits_for_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    let broker = Arc::new(LocalBroker::new());
    let settings = ns_ua_udp::Settings {
        wakeup_interval_secs: 5,
        coalesce_window_secs: 30,
        ..Default::default()
    };
    let deps = ns_ua_udp::Deps {
        store,
        broker: broker.clone(),
        registry: Registry::default(),
        clock: Clock::system(),
        secret: Secret::new("0123456789abcdef"),
        notify_base_url: "http://push.example".into(),
    };
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = tokio::spawn(ns_ua_udp::run(settings, listener, deps, shutdown.clone()));

    let ua = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let wake = |priority| WakeUp {
        ua: UaId::new("u"),
        interface: Interface {
            ip: "127.0.0.1".parse().unwrap(),
            port: ua.local_addr().unwrap().port(),
        },
        priority,
    };
    ns_broker::publish(&*broker, UDP_WAKEUPS, &wake(2))
        .await
        .unwrap();
    assert!(
        !woken_within(&ua, Duration::from_secs(29)).await,
        "priority 2 waits for the window"
    );
    assert!(
        woken_within(&ua, Duration::from_secs(2)).await,
        "priority 2 wakes within the window"
    );

    // Priority 1 at once, but not within the interval after the last datagram.
    ns_broker::publish(&*broker, UDP_WAKEUPS, &wake(1))
        .await
        .unwrap();
    assert!(!woken_within(&ua, Duration::from_secs(4)).await);
    assert!(woken_within(&ua, Duration::from_secs(2)).await);

    shutdown.cancel();
    service.await.unwrap().unwrap();
}
