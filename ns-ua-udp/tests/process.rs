//! What only the `ns-ua-udp` process shows: the binary wakes a UA and serves its pull, and
//! exits cleanly on SIGTERM. The rest of the cluster runs in this process, on MongoDB and
//! RabbitMQ.

use std::time::Duration;

use ns_tests::{Backend, Cluster, Options, Role, Ua};
use serde_json::json;
use tokio::net::UdpSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_serves_pulls_and_exits_cleanly_on_sigterm() {
    let options = Options {
        processes: vec![(Role::Wakeup, env!("CARGO_BIN_EXE_ns-ua-udp").into())],
        ..Default::default()
    };
    let mut c = Cluster::start_with(Backend::Distributed, options).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let token = c.token().await;
    let mut ua = Ua::registered_wakeable(&c.ws_url(0), &token, port).await;
    let url = ua.register_wa("wa-udp-process").await;
    ua.close().await;

    let (status, v) = c
        .notify(
            &url,
            &json!({"id": "w", "message": "wake", "priority": 1}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(Duration::from_secs(30), socket.recv_from(&mut buf))
        .await
        .expect("a wake-up datagram")
        .unwrap();
    assert!(buf[..n].starts_with(b"NOTIFY"));
    let pulled: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/pull", c.udp_url))
        .json(&json!({"uatoken": token}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pulled["messages"][0]["messageId"], v["messageId"]);

    let status = c.proc(Role::Wakeup).terminate().await.expect("exited");
    assert!(status.success(), "ns-ua-udp exited with {status}");
}
