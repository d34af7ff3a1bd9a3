//! What only the `ns-msg-monitor` process shows: it can be killed with notifications in
//! flight and lose none, and it exits cleanly on SIGTERM. The rest of the cluster runs in
//! this process, on MongoDB and RabbitMQ.

use std::collections::HashSet;

use ns_tests::{Backend, Cluster, Options, Role, Ua};
use serde_json::json;

async fn cluster() -> Cluster {
    let options = Options {
        processes: vec![(Role::Monitor, env!("CARGO_BIN_EXE_ns-msg-monitor").into())],
        ..Default::default()
    };
    Cluster::start_with(Backend::Distributed, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_notifications_in_flight_loses_none() {
    let mut c = cluster().await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let url = ua.register_wa("wa-restart").await;

    c.proc(Role::Monitor).kill();
    let mut ids = HashSet::new();
    for i in 0..100 {
        let (status, v) = c
            .notify(
                &url,
                &json!({"id": format!("r{i}"), "message": "m"}).to_string(),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        ids.insert(v["messageId"].as_str().unwrap().to_owned());
    }
    c.proc(Role::Monitor).start();
    let mut got = HashSet::new();
    while got.len() < ids.len() {
        for n in ua.next_notifications().await {
            got.insert(n["messageId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(got, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly() {
    let mut c = cluster().await;
    let status = c.proc(Role::Monitor).terminate().await.expect("exited");
    assert!(status.success(), "ns-msg-monitor exited with {status}");
}
