//! What only `ns-ua-ws` processes show: two front-ends sharing the cluster's UAs, one killed
//! with its route still pointing at it, and SIGTERM closing every WebSocket. The rest of the
//! cluster runs in this process, on MongoDB and RabbitMQ.

use std::time::Duration;

use ns_tests::{Backend, Cluster, Options, Role, Ua, UaEvent};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

/// `count` front-ends, each a process of the binary built with these tests.
async fn front_ends(count: usize) -> Cluster {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ns-ua-ws"));
    let options = Options {
        ws_instances: count,
        processes: (0..count)
            .map(|i| (Role::FrontEnd(i), binary.clone()))
            .collect(),
        ..Default::default()
    };
    Cluster::start_with(Backend::Distributed, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uatoken_is_live_on_one_connection_across_instances() {
    let c = front_ends(2).await;
    let token = c.token().await;
    let mut on_first = Ua::registered(&c.ws_url(0), &token).await;
    let url = on_first.register_wa("wa-cluster").await;
    // Another UA on the second instance registered for the same WA.
    let other_token = c.token().await;
    let mut other = Ua::registered(&c.ws_url(1), &other_token).await;
    assert_eq!(other.register_wa("wa-cluster").await, url);

    let (_, v) = c
        .notify(&url, &json!({"id": "a", "message": "both"}).to_string())
        .await;
    assert_eq!(
        on_first.next_notifications().await[0]["messageId"],
        v["messageId"]
    );
    assert_eq!(
        other.next_notifications().await[0]["messageId"],
        v["messageId"]
    );

    // The same uatoken registers on the second instance: the first connection is closed.
    let mut moved = Ua::registered(&c.ws_url(1), &token).await;
    assert_eq!(on_first.next_event(DEADLINE).await, Some(UaEvent::Closed));
    // "a" was never acked, so the new connection gets it again first.
    let again = moved.next_notifications().await;
    assert_eq!(again[0]["id"], "a");
    let a_id = again[0]["messageId"].as_str().unwrap().to_owned();
    moved.ack(&[&a_id]).await;
    let (_, v) = c
        .notify(&url, &json!({"id": "b", "message": "moved"}).to_string())
        .await;
    assert_eq!(
        moved.next_notifications().await[0]["messageId"],
        v["messageId"]
    );
    assert_eq!(
        other.next_notifications().await[0]["messageId"],
        v["messageId"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_to_a_dead_front_end_stays_pending() {
    let mut c = front_ends(1).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let url = ua.register_wa("wa-dead").await;
    // The front-end dies without telling anyone: the route still points at it.
    c.proc(Role::FrontEnd(0)).kill();
    let _ = ua.next_event(Duration::from_secs(5)).await;
    let (status, v) = c
        .notify(&url, &json!({"id": "d", "message": "kept"}).to_string())
        .await;
    assert_eq!(status, 200);
    c.proc(Role::FrontEnd(0)).start();
    c.wait_healthy().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let got = ua.notifications(1).await;
    assert_eq!(got[0]["messageId"], v["messageId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_and_exits_cleanly() {
    let mut c = front_ends(1).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let status = c
        .proc(Role::FrontEnd(0))
        .terminate()
        .await
        .expect("ns-ua-ws exited");
    assert!(status.success(), "ns-ua-ws exited with {status}");
    assert_eq!(ua.next_event(DEADLINE).await, Some(UaEvent::Closed));
}
