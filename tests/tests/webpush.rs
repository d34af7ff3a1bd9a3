//! Every row of WEBPUSH.md, with real encryption and VAPID, against the services started in
//! this process: each test body runs once against the distributed mode (MongoDB + RabbitMQ)
//! and once against the one-process mode.

use std::time::Duration;

use futures::SinkExt;
use ns_tests::webpush::{application_server_key, location, vapid_key, Push, PushUa};
use ns_tests::{eventually, raw, Backend, Cluster, Options, Ua};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

ns_tests::both_modes!(
    push_deliver_ack_and_status,
    both_encodings_relayed_exactly,
    pending_after_hello_until_settled,
    topic_replaces_and_ttl_expires,
    ack_codes_and_nack,
    client_messages_and_malformed_ones,
    forged_uaid_gets_a_new_one,
    takeover_across_front_ends,
    endpoint_errors,
    vapid_on_v2_and_v1,
    ttl_zero_is_live_only,
    withdraw_and_locations,
    rate_limit,
    backlog_follows_as_acked,
    both_dialects_on_one_port,
    subscriptions_count_toward_the_quota,
);

const SHORT: Duration = Duration::from_millis(1500);
const DEADLINE: Duration = Duration::from_secs(20);

/// Waits until the status at `location` has one delivery in `wanted`.
async fn wait_status(location_url: &str, wanted: &str) -> Value {
    eventually(
        &format!("{location_url} {wanted}"),
        DEADLINE,
        || async move {
            let (code, v) = location(Method::GET, location_url).await;
            let deliveries = v["deliveries"].as_array()?;
            (code == 200 && deliveries.len() == 1 && deliveries[0]["status"] == wanted).then_some(v)
        },
    )
    .await
}

/// Closes the UA's connection and waits until the server has recorded it offline, so that
/// what is sent next is routed to an offline UA, never to the connection being closed.
async fn offline(c: &Cluster, ua: PushUa) {
    ua.close().await;
    c.wait_no_connections().await;
}

/// Sends a message to a UA that is offline, and waits until it is pending for it: routed,
/// so that it comes with the stored ones after the next `hello` rather than live.
async fn stored_for_later(push: Push) {
    let answer = push.send().await;
    assert_eq!(answer.status, 201, "{answer:?}");
    wait_status(answer.location.as_deref().expect("a Location"), "pending").await;
}

async fn push_deliver_ack_and_status(b: Backend) {
    let c = Cluster::start(b).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    assert!(!ua.uaid.is_empty() && ua.uaid.len() <= 128);
    let sub = ua.subscribe(None).await;
    assert!(
        sub.endpoint.starts_with(&format!("{}/wpush/v1/", c.as_url)),
        "{}",
        sub.endpoint
    );
    let again = ua.register(&sub.channel_id, None).await;
    assert_eq!(
        again["pushEndpoint"], sub.endpoint,
        "registering again gives the same endpoint"
    );

    let answer = sub.message("Hello, Web Push", 60).send().await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(answer.ttl.as_deref(), Some("60"));
    let location_url = answer.location.expect("a Location");
    assert!(location_url.starts_with(&format!("{}/m/", c.as_url)));

    let message = ua.notification().await;
    assert_eq!(message["ttl"], 60);
    assert_eq!(message["headers"], json!({"encoding": "aes128gcm"}));
    assert_eq!(sub.decrypt(&message), "Hello, Web Push");
    let version = message["version"].as_str().expect("a version");
    assert!(
        !location_url.contains(version),
        "the location is not the version"
    );
    wait_status(&location_url, "sent").await;
    ua.ack(&message, 100).await;
    let report = wait_status(&location_url, "acked").await;
    assert_eq!(report["messageId"], version);

    // An empty body needs no encoding and arrives without data.
    let empty = Push::new(&sub.endpoint, Vec::new())
        .header("TTL", "60")
        .send()
        .await;
    assert_eq!(empty.status, 201, "{empty:?}");
    let message = ua.notification().await;
    assert!(message.get("data").is_none() && message.get("headers").is_none());
    ua.close().await;
}

async fn both_encodings_relayed_exactly(b: Backend) {
    let c = Cluster::start(b).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let sub = ua.subscribe(None).await;
    let text = "ünïcödé ✓ and the largest record: ".to_owned() + &"x".repeat(3900);
    assert_eq!(sub.message(&text, 60).send().await.status, 201);
    let message = ua.notification().await;
    assert_eq!(sub.decrypt(&message), text);

    let legacy = sub.legacy_message("legacy aesgcm", 60);
    assert_eq!(legacy.send().await.status, 201);
    let message = ua.notification().await;
    assert_eq!(message["headers"]["encoding"], "aesgcm");
    assert!(message["headers"]["encryption"]
        .as_str()
        .is_some_and(|e| e.starts_with("salt=")));
    assert!(message["headers"]["crypto_key"]
        .as_str()
        .is_some_and(|k| k.contains("dh=")));
    assert_eq!(sub.decrypt(&message), "legacy aesgcm");
}

async fn pending_after_hello_until_settled(b: Backend) {
    let c = Cluster::start(b).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let uaid = ua.uaid.clone();
    let sub = ua.subscribe(None).await;
    offline(&c, ua).await;
    for text in ["one", "two", "three"] {
        stored_for_later(sub.message(text, 600)).await;
    }
    let mut ua = PushUa::hello(&c.ws_url(0), Some(&uaid)).await;
    assert_eq!(ua.uaid, uaid, "a uaid the server issued is kept");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(ua.notification().await);
    }
    let texts: Vec<String> = got.iter().map(|m| sub.decrypt(m)).collect();
    assert_eq!(texts, ["one", "two", "three"], "oldest first");
    ua.ack(&got[0], 100).await;
    // The ack is stored before the next hello reads what is owed.
    ua.send(json!({})).await;
    assert_eq!(ua.next_json().await, json!({}));
    ua.close().await;

    let mut ua = PushUa::hello(&c.ws_url(0), Some(&uaid)).await;
    let again = [ua.notification().await, ua.notification().await];
    let texts: Vec<String> = again.iter().map(|m| sub.decrypt(m)).collect();
    assert_eq!(
        texts,
        ["two", "three"],
        "only what was not acked comes again"
    );
    for m in &again {
        ua.ack(m, 100).await;
    }
    ua.send(json!({})).await;
    assert_eq!(ua.next_json().await, json!({}));
    ua.close().await;
    let mut ua = PushUa::hello(&c.ws_url(0), Some(&uaid)).await;
    ua.assert_silent(SHORT).await;
}

async fn topic_replaces_and_ttl_expires(b: Backend) {
    let c = Cluster::start(b).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let uaid = ua.uaid.clone();
    let sub = ua.subscribe(None).await;
    offline(&c, ua).await;
    let old = sub
        .message("old", 600)
        .header("Topic", "weather")
        .send()
        .await;
    assert_eq!(old.status, 201);
    let new = sub
        .message("new", 600)
        .header("Topic", "weather")
        .send()
        .await;
    assert_eq!(new.status, 201);
    assert_eq!(sub.message("short", 1).send().await.status, 201);
    stored_for_later(sub.message("kept", 600)).await;
    wait_status(new.location.as_deref().expect("a Location"), "pending").await;
    // The TTL is in whole seconds: past 2 s, the 1 s one is expired whatever the rounding.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut ua = PushUa::hello(&c.ws_url(0), Some(&uaid)).await;
    let texts = [ua.notification().await, ua.notification().await].map(|m| sub.decrypt(&m));
    assert_eq!(texts, ["new", "kept"]);
    ua.assert_silent(SHORT).await;
    let old_location = old.location.expect("a Location");
    let (code, report) = location(Method::GET, &old_location).await;
    assert_eq!(code, 200);
    assert_eq!(report["deliveries"][0]["status"], "replaced", "{report}");
}

async fn ack_codes_and_nack(b: Backend) {
    let c = Cluster::start(b).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let sub = ua.subscribe(None).await;
    let mut locations = Vec::new();
    let mut messages = Vec::new();
    for text in [
        "undecryptable",
        "not delivered",
        "worker failed",
        "acked twice",
    ] {
        let answer = sub.message(text, 600).send().await;
        locations.push(answer.location.expect("a Location"));
        messages.push(ua.notification().await);
    }
    ua.ack(&messages[0], 101).await;
    ua.ack(&messages[1], 102).await;
    ua.send(json!({"messageType": "nack", "version": messages[2]["version"], "code": 302}))
        .await;
    ua.ack(&messages[3], 100).await;
    ua.ack(&messages[3], 102).await;
    wait_status(&locations[0], "rejected").await;
    wait_status(&locations[1], "rejected").await;
    wait_status(&locations[2], "rejected").await;
    ua.send(json!({})).await;
    assert_eq!(ua.next_json().await, json!({}));
    wait_status(&locations[3], "acked").await;
    let uaid = ua.uaid.clone();
    ua.close().await;
    let mut ua = PushUa::hello(&c.ws_url(0), Some(&uaid)).await;
    ua.assert_silent(SHORT).await;
}

async fn client_messages_and_malformed_ones(b: Backend) {
    let c = Cluster::start(b).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    ua.send(json!({})).await;
    assert_eq!(ua.next_json().await, json!({}), "a ping is answered");
    ua.send(json!({"messageType": "broadcast_subscribe", "broadcasts": {"x": "v1"}}))
        .await;
    ua.send(json!({})).await;
    assert_eq!(
        ua.next_json().await,
        json!({}),
        "broadcast_subscribe is ignored"
    );
    let bad = ua.register("not-a-uuid", None).await;
    assert_eq!(bad["status"], 400);
    let channel = uuid::Uuid::new_v4().to_string();
    let bad_key = ua.register(&channel, Some("AAAA")).await;
    assert_eq!(bad_key["status"], 400);
    ua.send(json!({"messageType": "unregister", "channelID": channel}))
        .await;
    let reply = ua.next_json().await;
    assert_eq!(
        (reply["messageType"].as_str(), reply["status"].as_u64()),
        (Some("unregister"), Some(200))
    );
    ua.send(json!({"messageType": "hello", "use_webpush": true}))
        .await;
    ua.closed().await;
    // After its close frame, the server drops the TCP connection (Firefox does not finish
    // the close handshake).
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ua.ua.ws.get_mut() else {
        panic!("a plain TCP connection");
    };
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read(tcp, &mut buf))
        .await
        .expect("the server drops the connection after its close frame");
    assert_eq!(read.unwrap_or(0), 0, "end of stream");

    // Anything before hello, an unknown messageType, bad JSON and binary frames close.
    let closing: [&str; 4] = [
        r#"{"messageType":"register","channelID":"5d0b5a1e-8a4c-4a43-9f3e-3a1b2c3d4e5f"}"#,
        r#"{"messageType":"fly"}"#,
        r#"{"messageType":5}"#,
        r#"{"messageType":"ack","updates":"x"}"#,
    ];
    for text in closing {
        let mut ua = Ua::connect(&c.ws_url(0), "").await;
        ua.send_text(text).await;
        assert_eq!(
            ua.next_event(DEADLINE).await,
            Some(ns_tests::UaEvent::Closed),
            "{text}"
        );
    }
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    ua.ua.send_text("{not json").await;
    ua.closed().await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    ua.ua
        .ws
        .send(Message::Binary(vec![1, 2].into()))
        .await
        .expect("a frame");
    ua.closed().await;
    // The server still serves everyone else.
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    ua.subscribe(None).await;
}

async fn forged_uaid_gets_a_new_one(b: Backend) {
    let c = Cluster::start(b).await;
    let mut first = PushUa::hello(&c.ws_url(0), None).await;
    let sub = first.subscribe(None).await;
    let genuine = first.uaid.clone();
    offline(&c, first).await;
    assert_eq!(
        sub.message("for the genuine one", 600).send().await.status,
        201
    );
    let forged = genuine.chars().rev().collect::<String>();
    let mut ua = PushUa::hello(&c.ws_url(0), Some(&forged)).await;
    assert_ne!(ua.uaid, forged);
    assert_ne!(ua.uaid, genuine);
    ua.assert_silent(SHORT).await;
    let other = "an uaid of another server's making";
    let ua = PushUa::hello(&c.ws_url(0), Some(other)).await;
    assert_ne!(ua.uaid, other);
}

async fn takeover_across_front_ends(b: Backend) {
    let options = Options {
        ws_instances: 2,
        ..Default::default()
    };
    let c = Cluster::start_with(b, options).await;
    let last = c.ws.len() - 1;
    let mut old = PushUa::hello(&c.ws_url(0), None).await;
    let sub = old.subscribe(None).await;
    let mut new = PushUa::hello(&c.ws_url(last), Some(&old.uaid)).await;
    assert_eq!(new.uaid, old.uaid);
    old.closed().await;
    assert_eq!(sub.message("to the new one", 600).send().await.status, 201);
    let message = new.notification().await;
    assert_eq!(sub.decrypt(&message), "to the new one");
}

async fn endpoint_errors(b: Backend) {
    let c = Cluster::start(b).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let sub = ua.subscribe(None).await;
    let base = || sub.message("m", 60);

    let cases: Vec<(Push, u16, u64)> = vec![
        (base().without("TTL"), 400, 111),
        (base().without("TTL").header("TTL", "-1"), 400, 112),
        (base().without("TTL").header("TTL", "soon"), 400, 112),
        (base().header("Urgency", "urgent"), 400, 114),
        (base().header("Topic", "not a topic"), 400, 113),
        (base().header("Topic", &"t".repeat(33)), 400, 113),
        (base().without("Content-Encoding"), 400, 111),
        (
            base()
                .without("Content-Encoding")
                .header("Content-Encoding", "gzip"),
            400,
            110,
        ),
        (
            base()
                .without("Content-Encoding")
                .header("Content-Encoding", "aesgcm"),
            400,
            101,
        ),
    ];
    for (push, status, errno) in cases {
        let answer = push.send().await;
        assert_eq!(
            (answer.status, answer.errno()),
            (status, errno),
            "{answer:?}"
        );
    }
    let big = Push::new(&sub.endpoint, vec![0u8; 4097])
        .header("TTL", "60")
        .header("Content-Encoding", "aes128gcm")
        .send()
        .await;
    assert_eq!((big.status, big.errno()), (413, 104));
    let at_limit = Push::new(&sub.endpoint, vec![0u8; 4096])
        .header("TTL", "60")
        .header("Content-Encoding", "aes128gcm")
        .send()
        .await;
    assert_eq!(at_limit.status, 201, "4096 bytes are accepted");
    // Without a Content-Length, the body is refused as soon as it passes the limit.
    assert_eq!(chunked_status(&sub.endpoint, 10).await, 413);
    assert_eq!(chunked_status(&sub.endpoint, 2).await, 201);
    // A sender that writes a large body whole before reading gets its 413, not a reset.
    let headers = [("TTL", "60"), ("Content-Encoding", "aes128gcm")];
    let answer = raw::post_whole(&sub.endpoint, &headers, &vec![0u8; 200_000]).await;
    assert_eq!(answer.status, 413, "{answer:?}");

    let unknown = sub.endpoint.replace("/wpush/v1/", "/wpush/v1/A") + "A";
    let answer = Push::new(&unknown, b"x".to_vec())
        .header("TTL", "60")
        .send()
        .await;
    assert_eq!((answer.status, answer.errno()), (404, 102));
    let wrong_version = sub.endpoint.replace("/wpush/v1/", "/wpush/v2/");
    let answer = Push::new(&wrong_version, Vec::new())
        .header("TTL", "60")
        .send()
        .await;
    assert_eq!(answer.status, 401, "v2 asks for VAPID first: {answer:?}");

    // UnifiedPush discovery.
    let r = reqwest::get(&sub.endpoint).await.expect("GET");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(v, json!({"unifiedpush": {"version": 1}}));
    assert_eq!(reqwest::get(&unknown).await.expect("GET").status(), 404);

    ua.send(json!({"messageType": "unregister", "channelID": sub.channel_id, "code": 200}))
        .await;
    assert_eq!(ua.reply("unregister").await["status"], 200);
    let gone = base().send().await;
    assert_eq!((gone.status, gone.errno()), (410, 103));
    // Registering again brings the same endpoint back to life.
    let again = ua.register(&sub.channel_id, None).await;
    assert_eq!(again["pushEndpoint"], sub.endpoint);
    assert_eq!(base().send().await.status, 201);
}

async fn vapid_on_v2_and_v1(b: Backend) {
    let c = Cluster::start(b).await;
    let key = vapid_key();
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let sub = ua.subscribe(Some(&key)).await;
    assert!(sub.endpoint.contains("/wpush/v2/"), "{}", sub.endpoint);
    let origin = c.as_url.clone();
    let no_port = origin.rsplit_once(':').expect("a port").0.to_owned();
    let other = vapid_key();

    let refused: Vec<(&str, Push)> = vec![
        ("no VAPID", sub.message("m", 60)),
        ("another key", sub.message("m", 60).vapid(&other, 3600)),
        ("expired", sub.message("m", 60).vapid(&key, -10)),
        ("over 24 h", sub.message("m", 60).vapid(&key, 25 * 3600)),
        (
            "another audience",
            sub.message("m", 60)
                .vapid_for(&key, "https://elsewhere.example", 3600),
        ),
    ];
    for (what, push) in refused {
        let answer = push.send().await;
        assert_eq!(
            (answer.status, answer.errno()),
            (401, 109),
            "{what}: {answer:?}"
        );
    }
    // VAPID is checked before the subscription: a forged v2 token is 401 without VAPID,
    // 404 with a valid one.
    let forged = sub.endpoint.replace("/wpush/v2/", "/wpush/v2/A");
    let answer = Push::new(&forged, Vec::new())
        .header("TTL", "1")
        .send()
        .await;
    assert_eq!((answer.status, answer.errno()), (401, 109));
    let answer = Push::new(&forged, Vec::new())
        .header("TTL", "1")
        .vapid(&key, 3600)
        .send()
        .await;
    assert_eq!((answer.status, answer.errno()), (404, 102));

    let answer = sub.message("signed", 60).vapid(&key, 3600).send().await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(sub.decrypt(&ua.notification().await), "signed");
    let answer = sub
        .message("no port in aud", 60)
        .vapid_for(&key, &no_port, 3600)
        .send()
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(sub.decrypt(&ua.notification().await), "no port in aud");
    // The older form: `WebPush <JWT>` with the key in Crypto-Key.
    let value = common::vapid::sign(&key, &origin, common::model::EpochSecs(now() + 3600), None);
    let (jwt, k) = parse_vapid(&value);
    let answer = sub
        .message("old form", 60)
        .header("Authorization", &format!("WebPush {jwt}"))
        .header("Crypto-Key", &format!("p256ecdsa={k}"))
        .send()
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(sub.decrypt(&ua.notification().await), "old form");
    assert_eq!(
        application_server_key(&key),
        k,
        "the key sent is the one subscribed with"
    );

    // On v1, VAPID is optional but checked when present.
    let v1 = ua.subscribe(None).await;
    let bad = v1.message("m", 60).vapid(&key, -10).send().await;
    assert_eq!((bad.status, bad.errno()), (401, 109));
    let good = v1.message("v1 signed", 60).vapid(&other, 3600).send().await;
    assert_eq!(good.status, 201);
    assert_eq!(v1.decrypt(&ua.notification().await), "v1 signed");
}

/// POSTs `chunks` chunks of 1,000 bytes with `Transfer-Encoding: chunked` (no
/// Content-Length); returns the status.
async fn chunked_status(endpoint: &str, chunks: usize) -> u16 {
    let headers = [("TTL", "60"), ("Content-Encoding", "aes128gcm")];
    raw::post_chunked(endpoint, &headers, &vec![0u8; chunks * 1000], 1000)
        .await
        .status
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// The JWT and key of a `vapid t=...,k=...` header.
fn parse_vapid(value: &str) -> (String, String) {
    let params = value.strip_prefix("vapid ").expect("the vapid scheme");
    let mut jwt = String::new();
    let mut key = String::new();
    for p in params.split(',') {
        match p.trim().split_once('=') {
            Some(("t", v)) => jwt = v.to_owned(),
            Some(("k", v)) => key = v.to_owned(),
            _ => {}
        }
    }
    (jwt, key)
}

async fn ttl_zero_is_live_only(b: Backend) {
    let c = Cluster::start(b).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let uaid = ua.uaid.clone();
    let sub = ua.subscribe(None).await;
    let live = sub.message("now or never", 0).send().await;
    assert_eq!((live.status, live.ttl.as_deref()), (201, Some("0")));
    assert_eq!(sub.decrypt(&ua.notification().await), "now or never");
    offline(&c, ua).await;
    let missed = sub.message("missed", 0).send().await;
    assert_eq!((missed.status, missed.ttl.as_deref()), (201, Some("0")));
    let (code, report) = location(Method::GET, &missed.location.expect("a Location")).await;
    assert_eq!(code, 200);
    assert_eq!(report["deliveries"], json!([]), "nothing was stored");
    let mut ua = PushUa::hello(&c.ws_url(0), Some(&uaid)).await;
    ua.assert_silent(SHORT).await;
    // Over 30 days is lowered to 30 days.
    let long = sub.message("long", 99_999_999).send().await;
    assert_eq!(long.ttl.as_deref(), Some("2592000"));
}

async fn withdraw_and_locations(b: Backend) {
    let c = Cluster::start(b).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let uaid = ua.uaid.clone();
    let sub = ua.subscribe(None).await;
    offline(&c, ua).await;
    let answer = sub.message("take it back", 600).send().await;
    let location_url = answer.location.expect("a Location");
    let (code, _) = location(Method::DELETE, &location_url).await;
    assert_eq!(code, 204);
    let mut ua = PushUa::hello(&c.ws_url(0), Some(&uaid)).await;
    ua.assert_silent(SHORT).await;
    let forged = format!(
        "{}/m/{}",
        c.as_url, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    );
    for method in [Method::GET, Method::DELETE] {
        let (code, body) = location(method, &forged).await;
        assert_eq!((code, body["errno"].as_u64()), (404, Some(102)));
    }
}

async fn rate_limit(b: Backend) {
    let options = Options {
        notify: ns_as::Settings {
            rate_limit: 1,
            rate_burst: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let c = Cluster::start_with(b, options).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let sub = ua.subscribe(None).await;
    assert_eq!(sub.message("1", 60).send().await.status, 201);
    let answer = sub.message("2", 60).send().await;
    assert_eq!(answer.status, 429);
    assert!(answer.errno() > 0);
    let retry: u64 = answer
        .retry_after
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("a Retry-After");
    assert!(retry >= 1);
}

async fn backlog_follows_as_acked(b: Backend) {
    let options = Options {
        front_end: ns_ua_ws::Settings {
            max_pending: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let c = Cluster::start_with(b, options).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let uaid = ua.uaid.clone();
    let sub = ua.subscribe(None).await;
    offline(&c, ua).await;
    for i in 0..8 {
        stored_for_later(sub.message(&format!("m{i}"), 600)).await;
    }
    let mut ua = PushUa::hello(&c.ws_url(0), Some(&uaid)).await;
    // At most three unsettled at a time; the next three once all of those are settled, by
    // ack or nack alike.
    for batch in [&["m0", "m1", "m2"][..], &["m3", "m4", "m5"], &["m6", "m7"]] {
        let mut got = Vec::new();
        for _ in batch {
            got.push(ua.notification().await);
        }
        let texts: Vec<String> = got.iter().map(|m| sub.decrypt(m)).collect();
        assert_eq!(texts, batch);
        ua.assert_silent(SHORT).await;
        let (last, rest) = got.split_last().expect("a batch");
        for m in rest {
            ua.ack(m, 100).await;
        }
        ua.assert_silent(SHORT).await;
        ua.ack(last, 101).await;
    }
    ua.assert_silent(SHORT).await;
}

async fn subscriptions_count_toward_the_quota(b: Backend) {
    let options = Options {
        front_end: ns_ua_ws::Settings {
            max_registrations_per_ua: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let c = Cluster::start_with(b, options).await;
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let first = ua.subscribe(None).await;
    ua.subscribe(None).await;
    let third = uuid::Uuid::new_v4().to_string();
    assert_eq!(ua.register(&third, None).await["status"], 429);
    let again = ua.register(&first.channel_id, None).await;
    assert_eq!(
        (again["status"].as_u64(), again["pushEndpoint"].as_str()),
        (Some(200), Some(first.endpoint.as_str())),
        "registering a channel again is not a new subscription"
    );
    ua.send(json!({"messageType": "unregister", "channelID": first.channel_id}))
        .await;
    assert_eq!(ua.reply("unregister").await["status"], 200);
    assert_eq!(ua.register(&third, None).await["status"], 200);
}

async fn both_dialects_on_one_port(b: Backend) {
    let c = Cluster::start(b).await;
    let token = c.token().await;
    let mut telefonica = Ua::registered(&c.ws_url(0), &token).await;
    let url = telefonica.register_wa("wa-both").await;
    let mut push = PushUa::hello(&c.ws_url(0), None).await;
    let sub = push.subscribe(None).await;
    let body = json!({"id": "a", "message": "telefonica"}).to_string();
    assert_eq!(c.notify(&url, &body).await.0, 200);
    assert_eq!(sub.message("web push", 60).send().await.status, 201);
    let notifications = telefonica.next_notifications().await;
    assert_eq!(notifications[0]["message"], "telefonica");
    assert_eq!(sub.decrypt(&push.notification().await), "web push");
    // A uaid is no uatoken, and the other way round.
    let mut ua = Ua::connect(&c.ws_url(0), &push.uaid).await;
    ua.command("register/ua", json!({"uatoken": push.uaid}))
        .await;
    assert_eq!(ua.next_error_code().await, 456);
    let hello = PushUa::hello(&c.ws_url(0), Some(&token)).await;
    assert_ne!(hello.uaid, token);
    // A subscription is stored like an app registration, yet its appToken is no notify URL.
    let secret = common::crypto::Secret::new(c.secret.as_bytes());
    let token = sub.endpoint.rsplit('/').next().expect("a token");
    let subscription =
        common::webpush::Subscription::open(&secret, token).expect("a genuine endpoint");
    let app = subscription.app_token(&secret);
    let (code, _) = c.notify(&format!("{}/notify/{app}", c.as_url), &body).await;
    assert_eq!(code, 404);
}
