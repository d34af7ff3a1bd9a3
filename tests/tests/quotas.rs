//! The quotas on pending notifications (PROTOCOL.md §3 and §6, WEBPUSH.md §5): per appToken
//! in ns-as (`--max-pending-per-app`), per UA in the monitor (`--max-pending-per-ua`). Each
//! test body runs once against the distributed mode and once against the one-process mode.

use std::time::Duration;

use ns_runtime::ManualClock;
use ns_tests::webpush::{location, PushUa};
use ns_tests::{eventually, Backend, Cluster, Options, Ua};
use reqwest::Method;
use serde_json::{json, Value};

ns_tests::both_modes!(
    per_app_quota_refuses_what_would_be_stored,
    per_app_quota_frees_as_notifications_expire,
    per_app_quota_on_push_endpoints,
    per_ua_quota_rejects_the_delivery_past_it,
    per_ua_quota_on_web_push,
);

const SHORT: Duration = Duration::from_millis(1500);
const DEADLINE: Duration = Duration::from_secs(20);

fn body(id: &str, message: &str) -> String {
    json!({ "id": id, "message": message }).to_string()
}

/// A UA registered with one WA; returns it with the notify URL.
async fn ua_with_wa(c: &Cluster, watoken: &str) -> (Ua, String) {
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let url = ua.register_wa(watoken).await;
    (ua, url)
}

async fn status(url: &str, id: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}/{id}"))
        .await
        .expect("GET status");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// The status of each delivery of `id`, sorted.
async fn statuses(url: &str, id: &str) -> Vec<String> {
    let (_, v) = status(url, id).await;
    let mut all: Vec<String> = v["deliveries"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["status"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

/// Waits until the deliveries of `id` have these statuses (sorted).
async fn wait_statuses(url: &str, id: &str, wanted: &[&str]) {
    eventually(&format!("{id}: {wanted:?}"), DEADLINE, || async move {
        (statuses(url, id).await == wanted).then_some(())
    })
    .await;
}

fn per_app(max: u64) -> Options {
    Options {
        notify: ns_as::Settings {
            max_pending_per_app: max,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn per_ua(max: u64) -> Options {
    Options {
        monitor: ns_msg_monitor::Settings {
            max_pending_per_ua: max,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn per_app_quota_refuses_what_would_be_stored(b: Backend) {
    let c = Cluster::start_with(b, per_app(3)).await;
    let (mut ua, url) = ua_with_wa(&c, "wa-quota").await;
    for id in ["a", "b", "c"] {
        assert_eq!(c.notify(&url, &body(id, id)).await.0, 200);
    }
    // Delivered but not acked yet, a notification is still pending.
    let delivered = ua.notifications(3).await;
    let ids: Vec<String> = delivered
        .iter()
        .filter_map(|n| n["messageId"].as_str().map(str::to_owned))
        .collect();

    let (code, v) = c.notify(&url, &body("d", "d")).await;
    assert_eq!((code, v["code"].as_u64()), (429, Some(465)), "{v}");
    assert_eq!(v["status"], "ERROR");
    let reason = v["reason"].as_str().expect("a reason");
    assert!(reason.contains("pending"), "{reason}");
    assert_eq!(status(&url, "d").await.0, 404, "nothing was stored");
    let (code, v) = c.notify(&url, &body("a", "again")).await;
    assert_eq!(
        (code, v["code"].as_u64()),
        (429, Some(465)),
        "a replacement is refused too while the quota is full: {v}"
    );

    // `ttl: 0` is never stored: neither counted nor refused.
    let live = json!({"id": "now", "message": "live", "ttl": 0}).to_string();
    assert_eq!(c.notify(&url, &live).await.0, 200);
    assert_eq!(ua.next_notifications().await[0]["message"], "live");

    // Another app has a quota of its own.
    let other = ua.register_wa("wa-other").await;
    assert_eq!(c.notify(&other, &body("a", "elsewhere")).await.0, 200);
    assert_eq!(ua.next_notifications().await[0]["message"], "elsewhere");

    // Acked by its UA, a notification no longer counts: room for one more, once this ns-as
    // asked the store again (within a second).
    ua.ack(&[ids[0].as_str()]).await;
    let (cluster, url) = (&c, &url);
    eventually("room after an ack", DEADLINE, || async move {
        (cluster.notify(url, &body("e", "e")).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(ua.next_notifications().await[0]["message"], "e");
    assert_eq!(c.notify(url, &body("f", "f")).await.1["code"], 465);
    ua.assert_silent(SHORT).await;
}

async fn per_app_quota_frees_as_notifications_expire(b: Backend) {
    let clock = ManualClock::default();
    let options = Options {
        clock: clock.clock(),
        ..per_app(2)
    };
    let c = Cluster::start_with(b, options).await;
    let (ua, url) = ua_with_wa(&c, "wa-expiring").await;
    ua.close().await;
    let short = |id: &str| json!({"id": id, "message": id, "ttl": 10}).to_string();
    assert_eq!(c.notify(&url, &short("a")).await.0, 200);
    assert_eq!(c.notify(&url, &short("b")).await.0, 200);
    assert_eq!(c.notify(&url, &short("c")).await.1["code"], 465);
    clock.advance(Duration::from_secs(10));
    // ns-as counts again from the store at most once a second.
    eventually("room once the first two expired", DEADLINE, || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        (c.notify(&url, &short("c")).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(c.notify(&url, &short("d")).await.0, 200);
    assert_eq!(c.notify(&url, &short("e")).await.1["code"], 465);
}

async fn per_app_quota_on_push_endpoints(b: Backend) {
    let c = Cluster::start_with(b, per_app(2)).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    // Both subscriptions first: subscribing skips the notifications that come meanwhile.
    let (sub, other) = (ua.subscribe(None).await, ua.subscribe(None).await);
    for text in ["one", "two"] {
        assert_eq!(sub.message(text, 60).send().await.status, 201);
    }
    let refused = sub.message("three", 60).send().await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.errno(), 201);
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("pending")),
        "{refused:?}"
    );
    assert!(refused.location.is_none());
    // `TTL: 0` is never stored.
    let live = sub.message("live", 0).send().await;
    assert_eq!(live.status, 201, "{live:?}");
    // Another subscription has its own quota.
    assert_eq!(other.message("elsewhere", 60).send().await.status, 201);

    let mut texts = Vec::new();
    for _ in 0..4 {
        let m = ua.notification().await;
        let text = if m["channelID"] == sub.channel_id {
            sub.decrypt(&m)
        } else {
            other.decrypt(&m)
        };
        texts.push(text);
    }
    texts.sort();
    assert_eq!(texts, ["elsewhere", "live", "one", "two"]);
    ua.assert_silent(SHORT).await;
}

async fn per_ua_quota_rejects_the_delivery_past_it(b: Backend) {
    let c = Cluster::start_with(b, per_ua(3)).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let mut urls = Vec::new();
    for i in 0..4 {
        urls.push(ua.register_wa(&format!("wa-{i}")).await);
    }
    ua.close().await;
    c.wait_no_connections().await;
    // Another UA of the last app, connected: not at any quota.
    let (mut other, last_url) = ua_with_wa(&c, "wa-3").await;
    assert_eq!(last_url, urls[3]);

    // Four notifications from four apps for the offline UA, each routed before the next.
    for (i, url) in urls.iter().enumerate().take(3) {
        assert_eq!(c.notify(url, &body("n", &format!("m{i}"))).await.0, 200);
        wait_statuses(url, "n", &["pending"]).await;
    }
    assert_eq!(c.notify(&urls[3], &body("n", "m3")).await.0, 200);
    assert_eq!(
        other.next_notifications().await[0]["message"],
        "m3",
        "the other UAs of the notification get it as ever"
    );
    wait_statuses(&urls[3], "n", &["rejected", "sent"]).await;

    // Back online: the three it had room for, and nothing else.
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let got = ua.notifications(3).await;
    let mut texts: Vec<&str> = got.iter().filter_map(|n| n["message"].as_str()).collect();
    texts.sort();
    assert_eq!(texts, ["m0", "m1", "m2"]);
    ua.assert_silent(SHORT).await;
    for url in &urls[..3] {
        wait_statuses(url, "n", &["sent"]).await;
    }
    assert_eq!(
        statuses(&urls[3], "n").await,
        ["rejected", "sent"],
        "rejected is settled: it stays"
    );

    // Acked, they make room again.
    let ids: Vec<&str> = got.iter().filter_map(|n| n["messageId"].as_str()).collect();
    ua.ack(&ids).await;
    for url in &urls[..3] {
        wait_statuses(url, "n", &["acked"]).await;
    }
    assert_eq!(c.notify(&urls[3], &body("again", "m4")).await.0, 200);
    assert_eq!(ua.next_notifications().await[0]["message"], "m4");
    assert_eq!(other.next_notifications().await[0]["message"], "m4");
}

async fn per_ua_quota_on_web_push(b: Backend) {
    let c = Cluster::start_with(b, per_ua(1)).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let (first, second) = (ua.subscribe(None).await, ua.subscribe(None).await);
    let uaid = ua.uaid.clone();
    ua.close().await;
    c.wait_no_connections().await;

    let kept = first.message("kept", 60).send().await;
    assert_eq!(kept.status, 201);
    let kept = kept.location.expect("a Location");
    let wait_location = |url: String, wanted: &'static str| async move {
        eventually(&format!("{url} {wanted}"), DEADLINE, || async {
            let (code, v) = location(Method::GET, &url).await;
            let d = v["deliveries"].as_array()?;
            (code == 200 && d.len() == 1 && d[0]["status"] == wanted).then_some(())
        })
        .await;
    };
    wait_location(kept.clone(), "pending").await;
    let refused = second.message("refused", 60).send().await;
    assert_eq!(refused.status, 201, "accepted from the sender: {refused:?}");
    wait_location(refused.location.expect("a Location"), "rejected").await;

    let mut ua = PushUa::hello(&c.ws_url(0), Some(&uaid)).await;
    let m = ua.notification().await;
    assert_eq!(first.decrypt(&m), "kept");
    ua.assert_silent(SHORT).await;
}
