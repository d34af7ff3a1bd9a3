//! "How many are waiting for me?" (PROTOCOL.md §2 and §4): the `count` command, `POST
//! /count`, and the count events of a UA that registered with `countEvents`, in both modes.

use std::time::Duration;

use ns_runtime::ManualClock;
use ns_tests::{Backend, Cluster, Options, Ua, UaEvent};
use serde_json::{json, Value};
use tokio::time::Instant;

ns_tests::both_modes!(
    count_follows_notify_ack_replacement_and_expiry,
    count_events_are_coalesced,
    count_events_follow_expiry,
);

fn body(id: &str, message: &str, ttl: u64) -> String {
    json!({ "id": id, "message": message, "ttl": ttl }).to_string()
}

/// The answer to `count` on `ua`'s connection.
async fn count(ua: &mut Ua) -> u64 {
    ua.command("count", json!({})).await;
    let v = ua.next_json().await;
    v["pending"]
        .as_u64()
        .unwrap_or_else(|| panic!("not a count: {v}"))
}

/// `POST /count` for `token`: the HTTP status and the answer.
async fn post_count(c: &Cluster, token: &str) -> (u16, Value) {
    let r = c
        .client
        .post(format!("{}/count", c.udp_url))
        .body(json!({ "uatoken": token }).to_string())
        .send()
        .await
        .expect("POST /count");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn notify(c: &Cluster, url: &str, id: &str, message: &str, ttl: u64) -> String {
    let (status, v) = c.notify(url, &body(id, message, ttl)).await;
    assert_eq!(status, 200, "{v}");
    v["messageId"].as_str().expect("a messageId").to_owned()
}

/// A cluster whose services' clock is moved by hand.
async fn with_manual_clock(b: Backend) -> (ManualClock, Cluster) {
    let clock = ManualClock::default();
    let options = Options {
        clock: clock.clock(),
        ..Default::default()
    };
    (clock, Cluster::start_with(b, options).await)
}

/// A UA registered with `countEvents`, past its first event (a count of 0).
async fn with_count_events(c: &Cluster, token: &str) -> Ua {
    let mut ua = Ua::connect(&c.ws_url(0), token).await;
    ua.command(
        "register/ua",
        json!({ "uatoken": token, "countEvents": true }),
    )
    .await;
    assert_eq!(ua.next_text().await, "OK");
    // The first event says the count as it is.
    assert_eq!(ua.next_json().await, json!({ "pending": 0 }));
    ua
}

async fn count_follows_notify_ack_replacement_and_expiry(b: Backend) {
    let (clock, c) = with_manual_clock(b).await;
    let token = c.token().await;

    // Not before register/ua.
    let mut ua = Ua::connect(&c.ws_url(0), &token).await;
    ua.command("count", json!({})).await;
    assert_eq!(ua.next_error_code().await, 459);
    ua.command("register/ua", json!({ "uatoken": token })).await;
    assert_eq!(ua.next_text().await, "OK");
    let url = ua.register_wa("inbox").await;
    assert_eq!(count(&mut ua).await, 0);

    notify(&c, &url, "a", "first", 3600).await;
    notify(&c, &url, "b", "second", 3600).await;
    notify(&c, &url, "short", "brief", 2).await;
    let got = ua.notifications(3).await;
    // Sent but not acked: still owed.
    assert_eq!(count(&mut ua).await, 3);
    assert_eq!(post_count(&c, &token).await, (200, json!({ "pending": 3 })));

    let first = got[0]["messageId"].as_str().expect("a messageId");
    ua.ack(&[first]).await;
    assert_eq!(count(&mut ua).await, 2, "an ack lowers the count");

    // A newer notification with the same id replaces the one owed: the count stays.
    notify(&c, &url, "b", "second, again", 3600).await;
    let newer = ua.next_notifications().await;
    assert_eq!(newer[0]["message"], "second, again");
    assert_eq!(count(&mut ua).await, 2, "a replacement takes its place");

    // The short one runs out.
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        count(&mut ua).await,
        1,
        "an expired notification is not owed"
    );
    assert_eq!(post_count(&c, &token).await, (200, json!({ "pending": 1 })));

    // A UA that is not connected is counted too, and a forged token is refused.
    ua.close().await;
    assert_eq!(post_count(&c, &token).await, (200, json!({ "pending": 1 })));
    let (status, v) = post_count(&c, "forged-token").await;
    assert_eq!((status, v["code"].as_u64()), (401, Some(456)), "{v}");
}

/// The frames of `ua` for `wait`: the message ids of the notifications, and the count
/// events with their arrival.
async fn frames_for(ua: &mut Ua, wait: Duration) -> (Vec<String>, Vec<(Instant, u64)>) {
    let end = Instant::now() + wait;
    let (mut notifications, mut events) = (Vec::new(), Vec::new());
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match ua.next_event(left).await {
            Some(UaEvent::Text(text)) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(items)) => notifications.extend(
                    items
                        .iter()
                        .filter_map(|n| n["messageId"].as_str().map(str::to_owned)),
                ),
                Ok(v) if v["pending"].is_u64() => {
                    events.push((Instant::now(), v["pending"].as_u64().unwrap_or_default()));
                }
                other => panic!("unexpected frame {other:?}"),
            },
            Some(UaEvent::Closed) => panic!("the connection closed"),
            None => break,
        }
    }
    (notifications, events)
}

async fn count_events_are_coalesced(b: Backend) {
    let c = Cluster::start(b).await;
    let token = c.token().await;
    let mut ua = with_count_events(&c, &token).await;
    let url = ua.register_wa("inbox-events").await;
    // Another UA of the same app, without count events, never gets one.
    let other_token = c.token().await;
    let mut other = Ua::registered(&c.ws_url(0), &other_token).await;
    assert_eq!(other.register_wa("inbox-events").await, url);

    // Sent over about half a second while the UA reads, so that arrival times are send
    // times: a count that changes every 25 ms.
    const SENT: usize = 20;
    let sender = {
        let (client, url) = (c.client.clone(), url.clone());
        tokio::spawn(async move {
            for i in 0..SENT {
                let answer = client
                    .post(&url)
                    .body(body(&format!("n{i}"), "burst", 3600))
                    .send()
                    .await
                    .expect("POST notify");
                assert_eq!(answer.status(), 200);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let (notifications, events) = frames_for(&mut ua, Duration::from_millis(1500)).await;
    sender.await.expect("the sender");
    assert_eq!(notifications.len(), SENT);
    assert_eq!(events.last().map(|e| e.1), Some(SENT as u64), "{events:?}");
    assert!(events.len() < SENT, "not coalesced: {events:?}");
    for pair in events.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        // Sent 100 ms apart at least; measured where they arrive, with room for the jitter
        // of a loaded machine, and still far from the 25 ms of the changes.
        assert!(
            gap >= Duration::from_millis(60),
            "two events {gap:?} apart: {events:?}"
        );
        assert_ne!(
            pair[0].1, pair[1].1,
            "an event without a change: {events:?}"
        );
    }
    assert_eq!(other.notifications(SENT).await.len(), SENT);
    other.assert_silent(Duration::from_millis(300)).await;

    // Acking everything brings it to 0.
    let ids: Vec<&str> = notifications.iter().map(String::as_str).collect();
    ua.ack(&ids).await;
    let (_, events) = frames_for(&mut ua, Duration::from_millis(600)).await;
    assert_eq!(events.last().map(|e| e.1), Some(0), "{events:?}");
    assert_eq!(count(&mut ua).await, 0);
}

async fn count_events_follow_expiry(b: Backend) {
    let (clock, c) = with_manual_clock(b).await;
    let token = c.token().await;
    let mut ua = with_count_events(&c, &token).await;
    let url = ua.register_wa("inbox-expiry").await;

    let id = notify(&c, &url, "short", "brief", 2).await;
    let (notifications, events) = frames_for(&mut ua, Duration::from_millis(500)).await;
    assert_eq!(notifications, std::slice::from_ref(&id));
    assert_eq!(events.iter().map(|e| e.1).collect::<Vec<_>>(), [1]);

    // Nothing else happens: the count drops when the notification expires.
    clock.advance(Duration::from_secs(3));
    let (_, events) = frames_for(&mut ua, Duration::from_secs(4)).await;
    assert_eq!(events.iter().map(|e| e.1).collect::<Vec<_>>(), [0]);

    // An ack of a notification no longer owed changes nothing: no event.
    ua.ack(&[id.as_str()]).await;
    let (_, events) = frames_for(&mut ua, Duration::from_millis(400)).await;
    assert!(events.is_empty(), "{events:?}");
}
