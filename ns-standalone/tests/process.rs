//! What only the `ns-standalone` process shows: its data directory survives `kill -9`, for
//! Telefónica notifications and Web Push messages alike, and SIGTERM closes every WebSocket
//! and exits cleanly.

use std::time::Duration;

use ns_tests::webpush::PushUa;
use ns_tests::{Backend, Cluster, Options, Role, Ua, UaEvent};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

/// The one-process server as a process of the binary built with these tests.
async fn standalone() -> Cluster {
    let options = Options {
        processes: vec![(Role::Standalone, env!("CARGO_BIN_EXE_ns-standalone").into())],
        // Room for every notification the kill -9 test's senders may get answered (8 × 1,000)
        // before the kill: past the quota, a UA would be owed none of the rest.
        monitor: ns_msg_monitor::Settings {
            max_pending_per_ua: 10_000,
            ..Default::default()
        },
        ..Default::default()
    };
    Cluster::start_with(Backend::Embedded, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_that_was_answered() {
    let mut c = standalone().await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let url = ua.register_wa("wa-durable").await;
    // One notification acked before the crash must not come back.
    let (_, acked) = c
        .notify(&url, &json!({"id": "acked", "message": "a"}).to_string())
        .await;
    let n = ua.next_notifications().await;
    ua.ack(&[n[0]["messageId"].as_str().unwrap()]).await;
    ns_tests::eventually("the ack to be stored", Duration::from_secs(20), || async {
        let v: serde_json::Value = reqwest::get(format!("{url}/acked"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["deliveries"][0]["status"] == "acked").then_some(())
    })
    .await;
    ua.close().await;

    // Notifications answered 200 right up to the kill, from concurrent senders so that the
    // kill lands in the middle of group commits.
    let mut answered = std::collections::HashSet::new();
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut ids = Vec::new();
                for i in 0..1000 {
                    let body = json!({"id": format!("k{s}-{i}"), "message": "m"}).to_string();
                    match client.post(&url).body(body).send().await {
                        Ok(r) if r.status() == 200 => {
                            let v: serde_json::Value = r.json().await.unwrap_or_default();
                            if let Some(id) = v["messageId"].as_str() {
                                ids.push(id.to_owned());
                            }
                        }
                        _ => break,
                    }
                }
                ids
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.proc(Role::Standalone).kill();
    for sender in senders {
        answered.extend(sender.await.unwrap());
    }
    assert!(!answered.is_empty(), "nothing was answered before the kill");

    c.proc(Role::Standalone).start();
    c.wait_healthy().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let mut got = std::collections::HashSet::new();
    while !answered.is_subset(&got) {
        for n in ua.next_notifications().await {
            assert_ne!(
                n["messageId"], acked["messageId"],
                "an acked notification came back"
            );
            got.insert(n["messageId"].as_str().unwrap().to_owned());
        }
    }
    eprintln!(
        "kill -9: {} notifications answered 200 before the kill, {} delivered after restart, 0 lost",
        answered.len(),
        got.len()
    );
    // The notify URL still works after the restart.
    let (status, v) = c
        .notify(&url, &json!({"id": "after", "message": "m"}).to_string())
        .await;
    assert_eq!(status, 200);
    // Notifications stored at the kill but not yet answered may still come first.
    tokio::time::timeout(DEADLINE, async {
        while !ua
            .next_notifications()
            .await
            .iter()
            .any(|n| n["messageId"] == v["messageId"])
        {}
    })
    .await
    .expect("the notification sent after the restart arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_messages_survive_kill_9() {
    let mut c = standalone().await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let uaid = ua.uaid.clone();
    let sub = ua.subscribe(None).await;
    let acked = sub.message("acked before", 600).send().await;
    assert_eq!(acked.status, 201);
    let message = ua.notification().await;
    ua.ack(&message, 100).await;
    let location = acked.location.expect("a Location");
    ns_tests::eventually("the ack to be stored", DEADLINE, || async {
        let (_, v) = ns_tests::webpush::location(reqwest::Method::GET, &location).await;
        (v["deliveries"][0]["status"] == "acked").then_some(())
    })
    .await;
    ua.close().await;
    let texts: Vec<String> = (0..20).map(|i| format!("stored {i}")).collect();
    for text in &texts {
        assert_eq!(sub.message(text, 600).send().await.status, 201);
    }
    c.proc(Role::Standalone).kill();
    c.proc(Role::Standalone).start();
    c.wait_healthy().await;

    let mut ua = PushUa::hello(&c.ws_url(0), Some(&uaid)).await;
    assert_eq!(ua.uaid, uaid, "the uaid is still genuine after a restart");
    let mut got = Vec::new();
    for _ in &texts {
        got.push(sub.decrypt(&ua.notification().await));
    }
    assert_eq!(
        got, texts,
        "every message answered 201, in order, bytes intact"
    );
    ua.assert_silent(Duration::from_millis(1500)).await;
    // The endpoint still works after the restart.
    assert_eq!(sub.message("after", 60).send().await.status, 201);
    assert_eq!(sub.decrypt(&ua.notification().await), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_and_exits_cleanly() {
    let mut c = standalone().await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let status = c
        .proc(Role::Standalone)
        .terminate()
        .await
        .expect("ns-standalone exited");
    assert!(status.success(), "ns-standalone exited with {status}");
    assert_eq!(ua.next_event(DEADLINE).await, Some(UaEvent::Closed));
}
