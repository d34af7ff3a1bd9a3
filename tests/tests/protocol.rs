//! Every row of PROTOCOL.md, against the services started in this process: each test body
//! runs once against the distributed mode (MongoDB + RabbitMQ) and once against the
//! one-process mode.

use std::time::Duration;

use base64::Engine;
use ns_runtime::ManualClock;
use ns_tests::{eventually, raw, Backend, Cluster, Options, Ua, UaEvent};
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::UdpSocket;

ns_tests::both_modes!(
    foreign_interface_refused,
    registrations_per_ua_quota,
    token_endpoint,
    websocket_basics,
    malformed_command_data,
    rejected_register_ua_closes,
    wa_registration_errors,
    notify_deliver_ack_and_status,
    notify_validation_errors,
    chunked_notify,
    signed_notifications,
    rate_limit,
    pending_sent_after_register_and_until_acked,
    replace_by_id,
    ttl_and_expiry,
    same_watoken_fans_out,
    udp_wakeup_pull_and_ack,
    takeover_on_one_instance,
    health_and_metrics,
    burst_to_one_live_ua,
);

const SHORT: Duration = Duration::from_millis(1500);
const DEADLINE: Duration = Duration::from_secs(20);

/// A UA registered with one WA; returns it with the notify URL.
async fn ua_with_wa(c: &Cluster, instance: usize, watoken: &str) -> (Ua, String) {
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(instance), &token).await;
    let url = ua.register_wa(watoken).await;
    (ua, url)
}

fn body(id: &str, message: &str) -> String {
    json!({ "id": id, "message": message }).to_string()
}

/// POSTs JSON; returns the status and the JSON answer.
async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("POST");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

async fn status(url: &str, id: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}/{id}"))
        .await
        .expect("GET status");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// Waits until every delivery in the status of `id` has `wanted` status.
async fn wait_status(url: &str, id: &str, wanted: &str, count: usize) -> Value {
    eventually(&format!("{id} {wanted}"), DEADLINE, || async move {
        let (code, v) = status(url, id).await;
        let deliveries = v["deliveries"].as_array()?;
        (code == 200
            && deliveries.len() == count
            && deliveries.iter().all(|d| d["status"] == wanted))
        .then_some(v)
    })
    .await
}

async fn token_endpoint(b: Backend) {
    let c = Cluster::start(b).await;
    let r = reqwest::get(format!("{}/token", c.ws[0])).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let t1 = r.text().await.unwrap();
    let t2 = c.token().await;
    assert_ne!(t1, t2);
    // URL-safe, and at least 128 bits of randomness fit in it.
    assert!(t1.len() >= 22);
    assert!(t1
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
}

async fn websocket_basics(b: Backend) {
    let c = Cluster::start(b).await;
    let token = c.token().await;
    let mut ua = Ua::connect(&c.ws_url(0), &token).await;
    assert_eq!(ua.protocol.as_deref(), Some("push-notification"));
    ua.send_text("PING").await;
    assert_eq!(ua.next_text().await, "PONG");
    ua.send_text("{not json").await;
    assert_eq!(ua.next_error_code().await, 450);
    ua.command("fly", json!({})).await;
    assert_eq!(ua.next_error_code().await, 405);
    use futures::SinkExt;
    ua.ws
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![1, 2].into(),
        ))
        .await
        .unwrap();
    assert_eq!(ua.next_error_code().await, 463);
    // WA commands and acks need a registered UA on this connection.
    ua.command("register/wa", json!({"uatoken": token, "watoken": "w"}))
        .await;
    assert_eq!(ua.next_error_code().await, 459);
    ua.command("ack", json!({"messageId": "x"})).await;
    assert_eq!(ua.next_error_code().await, 459);
    // None of these errors closed the connection.
    ua.command("register/ua", json!({"uatoken": token})).await;
    assert_eq!(ua.next_text().await, "OK");
    // Registering the same token again on the same connection is harmless.
    ua.command("register/ua", json!({"uatoken": token})).await;
    assert_eq!(ua.next_text().await, "OK");
    ua.send_text("PING").await;
    assert_eq!(ua.next_text().await, "PONG");
    // A WebSocket ping is answered too.
    ua.ws
        .send(tokio_tungstenite::tungstenite::Message::Ping(
            vec![7].into(),
        ))
        .await
        .unwrap();
    use futures::StreamExt;
    let pong = tokio::time::timeout(DEADLINE, async {
        loop {
            match ua.ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("pong");
    assert_eq!(&pong[..], &[7]);
}

async fn malformed_command_data(b: Backend) {
    let c = Cluster::start(b).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    ua.send_text(r#"{"command": "ack", "data": "x"}"#).await;
    assert_eq!(ua.next_error_code().await, 400, "data must be an object");
    ua.command("ack", json!({})).await;
    assert_eq!(ua.next_error_code().await, 400, "an ack names what it acks");
    let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    ua.command("ack", json!({ "messageIds": many })).await;
    assert_eq!(ua.next_error_code().await, 413);
    ua.command(
        "register/wa",
        json!({ "uatoken": token, "watoken": "w", "pbkbase64": 3 }),
    )
    .await;
    assert_eq!(ua.next_error_code().await, 458);
    // None of these closed the connection.
    ua.send_text("PING").await;
    assert_eq!(ua.next_text().await, "PONG");
}

async fn rejected_register_ua_closes(b: Backend) {
    let c = Cluster::start(b).await;
    // No uatoken.
    let mut ua = Ua::connect(&c.ws_url(0), "").await;
    ua.command("register/ua", json!({})).await;
    assert_eq!(ua.next_error_code().await, 462);
    assert_eq!(ua.next_event(DEADLINE).await, Some(UaEvent::Closed));
    // A forged token (signed by another secret) and an altered one.
    for forged in ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(), {
        let mut t = c.token().await.into_bytes();
        t[5] = if t[5] == b'a' { b'b' } else { b'a' };
        String::from_utf8(t).unwrap()
    }] {
        let mut ua = Ua::connect(&c.ws_url(0), &forged).await;
        ua.command("register/ua", json!({ "uatoken": forged }))
            .await;
        assert_eq!(ua.next_error_code().await, 456);
        assert_eq!(ua.next_event(DEADLINE).await, Some(UaEvent::Closed));
    }
}

async fn wa_registration_errors(b: Backend) {
    let c = Cluster::start(b).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    ua.command("register/wa", json!({ "uatoken": token })).await;
    assert_eq!(ua.next_error_code().await, 457);
    ua.command("register/wa", json!({ "uatoken": token, "watoken": "" }))
        .await;
    assert_eq!(ua.next_error_code().await, 457);
    ua.command(
        "register/wa",
        json!({ "uatoken": token, "watoken": "w", "pbkbase64": "bm90IGEga2V5" }),
    )
    .await;
    assert_eq!(ua.next_error_code().await, 458);
    // Another (genuine) token than the one registered on this connection.
    let other = c.token().await;
    ua.command("register/wa", json!({ "uatoken": other, "watoken": "w" }))
        .await;
    assert_eq!(ua.next_error_code().await, 459);
    ua.command("register/wa", json!({ "data": 1 })).await;
    assert_eq!(ua.next_error_code().await, 462);
    // unregister/wa answers OK.
    ua.register_wa("w").await;
    ua.command("unregister/wa", json!({ "uatoken": token, "watoken": "w" }))
        .await;
    assert_eq!(ua.next_text().await, "OK");
}

async fn notify_deliver_ack_and_status(b: Backend) {
    let c = Cluster::start(b).await;
    let (mut ua, url) = ua_with_wa(&c, 0, "wa-basic").await;
    assert!(
        url.starts_with(&c.as_url),
        "{url} is not under {}",
        c.as_url
    );
    // The same watoken gives the same URL again; another gives another.
    assert_eq!(ua.register_wa("wa-basic").await, url);
    assert_ne!(ua.register_wa("wa-other").await, url);

    let (code, v) = c
        .notify(
            &url,
            &json!({"id": "n1", "message": "hello", "ttl": 60, "priority": 2}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "ACCEPTED");
    let message_id = v["messageId"].as_str().unwrap().to_owned();

    let n = ua.next_notifications().await;
    assert_eq!(n.len(), 1);
    let n = &n[0];
    assert_eq!(n["messageType"], "notification");
    assert_eq!(n["messageId"], message_id.as_str());
    assert_eq!(n["id"], "n1");
    assert_eq!(n["url"], url.as_str());
    assert_eq!(n["message"], "hello");
    assert_eq!(n["ttl"], 60);
    assert_eq!(n["priority"], 2);
    assert!(n["timestamp"].as_i64().unwrap() > 1_600_000_000);

    let v = wait_status(&url, "n1", "sent", 1).await;
    assert_eq!(v["id"], "n1");
    assert_eq!(v["messageId"], message_id.as_str());
    let device = v["deliveries"][0]["device"].as_str().unwrap();
    assert!(
        !device.is_empty() && device != ua.token,
        "the device must not be the uatoken"
    );
    assert!(v["deliveries"][0]["at"].as_i64().unwrap() > 0);

    ua.ack(&[&message_id]).await;
    wait_status(&url, "n1", "acked", 1).await;
    assert_eq!(status(&url, "unknown-id").await.0, 404);
    // A numeric AS id is accepted and reported as a string.
    let (code, _) = c.notify(&url, r#"{"id": 42, "message": "n"}"#).await;
    assert_eq!(code, 200);
    assert_eq!(ua.next_notifications().await[0]["id"], "42");
}

async fn notify_validation_errors(b: Backend) {
    let c = Cluster::start(b).await;
    let (_ua, url) = ua_with_wa(&c, 0, "wa-validation").await;
    let long = "x".repeat(33);
    let big = "m".repeat(4097);
    let cases: Vec<(String, u16, u64)> = vec![
        ("{nope".into(), 400, 450),
        ("[1,2]".into(), 400, 450),
        (
            json!({"id": "a", "message": "m", "messageType": "other"}).to_string(),
            400,
            452,
        ),
        (json!({"message": "m"}).to_string(), 400, 454),
        (json!({"id": true, "message": "m"}).to_string(), 400, 454),
        (json!({"id": long, "message": "m"}).to_string(), 413, 413),
        (json!({"id": "a", "message": big}).to_string(), 413, 413),
        (json!({"id": "a"}).to_string(), 400, 464),
        (
            json!({"id": "a", "message": "m", "ttl": -1}).to_string(),
            400,
            464,
        ),
        (
            json!({"id": "a", "message": "m", "ttl": 2_592_001}).to_string(),
            400,
            464,
        ),
        // Far ahead of the server's clock: it would outlive the TTL cap.
        (
            r#"{"id":"e","message":"m","timestamp":9223372036854775807,"ttl":1}"#.to_owned(),
            400,
            464,
        ),
        (
            json!({"id": "a", "message": "m", "priority": 0}).to_string(),
            400,
            464,
        ),
        (
            json!({"id": "a", "message": "m", "priority": 5}).to_string(),
            400,
            464,
        ),
        (
            json!({"id": "a", "message": "m", "timestamp": "soon"}).to_string(),
            400,
            464,
        ),
        (
            json!({"id": "a", "message": "m", "timestamp": 1000, "ttl": 60}).to_string(),
            400,
            464,
        ),
    ];
    for (body, http, code) in cases {
        let (status, v) = c.notify(&url, &body).await;
        assert_eq!(
            (status, v["code"].as_u64()),
            (http, Some(code)),
            "{body} -> {v}"
        );
        assert_eq!(v["status"], "ERROR");
        assert!(v["reason"].is_string());
    }
    // Unknown and malformed appTokens.
    let unknown = format!("{}/notify/{}", c.as_url, "A".repeat(43));
    let (status, v) = c.notify(&unknown, &body("a", "m")).await;
    assert_eq!((status, v["code"].as_u64()), (404, Some(404)));
    let (status, v) = c
        .notify(&format!("{}/notify/short", c.as_url), &body("a", "m"))
        .await;
    assert_eq!((status, v["code"].as_u64()), (404, Some(404)));
    // A body over the limit is refused from its Content-Length.
    let huge = json!({"id": "a", "message": "m".repeat(100_000)}).to_string();
    let (status, v) = c.notify(&url, &huge).await;
    assert_eq!((status, v["code"].as_u64()), (413, Some(413)));
    // A client that writes a large body whole before reading gets the 413, not a reset.
    let answer = raw::post_whole(&url, &[], &[b' '; 200_000]).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    let v: Value = serde_json::from_str(&answer.body).unwrap_or_default();
    assert_eq!(v["code"], 413, "{answer:?}");
    // Wrong method.
    let r = reqwest::Client::new()
        .put(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], 405);
    // Fields at their limits are fine.
    let ok = json!({"id": "x".repeat(32), "message": "m".repeat(4096), "ttl": 2_592_000,
                    "priority": 1, "timestamp": format!("{}", ns_runtime::Clock::system().now())});
    assert_eq!(c.notify(&url, &ok.to_string()).await.0, 200);
}

/// A body without a Content-Length (chunked) is read up to the limit, and refused past it.
async fn chunked_notify(b: Backend) {
    let c = Cluster::start(b).await;
    let (mut ua, url) = ua_with_wa(&c, 0, "wa-chunked").await;
    let json = [("Content-Type", "application/json")];
    let within = body("c", &"m".repeat(4096));
    let answer = raw::post_chunked(&url, &json, within.as_bytes(), 1000).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let v: Value = serde_json::from_str(&answer.body).expect("JSON");
    let got = ua.notifications(1).await;
    assert_eq!(got[0]["messageId"], v["messageId"]);
    assert_eq!(got[0]["message"], "m".repeat(4096));

    // Past the body limit (6 × 4096 + 4096 bytes by default), whatever the message.
    let over = vec![b' '; 40_000];
    let answer = raw::post_chunked(&url, &json, &over, 1000).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    let v: Value = serde_json::from_str(&answer.body).unwrap_or_default();
    assert_eq!(v["code"], 413, "{answer:?}");
}

async fn signed_notifications(b: Backend) {
    let c = Cluster::start(b).await;
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
    let pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let pbk = base64::engine::general_purpose::STANDARD.encode(pem);
    let signer = SigningKey::<Sha256>::new(private);
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    ua.command(
        "register/wa",
        json!({"uatoken": token, "watoken": "signed", "pbkbase64": pbk}),
    )
    .await;
    let url = ua.next_text().await;
    // The key is part of the registration: without it, another URL.
    assert_ne!(url, ua.register_wa("signed").await);

    let (status, v) = c.notify(&url, &body("a", "hello")).await;
    assert_eq!((status, v["code"].as_u64()), (401, Some(453)));
    let wrong = hex_of(&signer.sign(b"other").to_bytes());
    let (status, v) = c
        .notify(
            &url,
            &json!({"id": "a", "message": "hello", "signature": wrong}).to_string(),
        )
        .await;
    assert_eq!((status, v["code"].as_u64()), (401, Some(455)));
    let (status, v) = c
        .notify(
            &url,
            &json!({"id": "a", "message": "hello", "signature": "zz"}).to_string(),
        )
        .await;
    assert_eq!((status, v["code"].as_u64()), (401, Some(455)));
    let good = hex_of(&signer.sign(b"hello").to_bytes());
    let (status, v) = c
        .notify(
            &url,
            &json!({"id": "a", "message": "hello", "signature": good}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(ua.next_notifications().await[0]["message"], "hello");
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    let (_ua, url) = ua_with_wa(&c, 0, "wa-rate").await;
    assert_eq!(c.notify(&url, &body("a", "1")).await.0, 200);
    let r = reqwest::Client::new()
        .post(&url)
        .body(body("b", "2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], 429);
}

async fn pending_sent_after_register_and_until_acked(b: Backend) {
    let c = Cluster::start(b).await;
    let (ua, url) = ua_with_wa(&c, 0, "wa-pending").await;
    let token = ua.token.clone();
    ua.close().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, v) = c
            .notify(&url, &body(&format!("p{i}"), &format!("m{i}")))
            .await;
        assert_eq!(status, 200);
        ids.push(v["messageId"].as_str().unwrap().to_owned());
        wait_status(&url, &format!("p{i}"), "pending", 1).await;
    }
    // Right after OK, every pending notification, oldest first.
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let got: Vec<String> = ua
        .notifications(3)
        .await
        .iter()
        .map(|n| n["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ids);
    ua.close().await;
    // Not acked: sent again on the next register/ua.
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    assert_eq!(ua.notifications(3).await.len(), 3);
    ua.command("ack", json!({"messageIds": [ids[0], ids[1]]}))
        .await;
    wait_status(&url, "p1", "acked", 1).await;
    ua.ack(&[]).await;
    ua.close().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let rest = ua.notifications(1).await;
    assert_eq!(rest[0]["messageId"], ids[2].as_str());
    ua.assert_silent(SHORT).await;
}

async fn replace_by_id(b: Backend) {
    let c = Cluster::start(b).await;
    let (ua, url) = ua_with_wa(&c, 0, "wa-replace").await;
    let token = ua.token.clone();
    ua.close().await;
    let (_, first) = c.notify(&url, &body("same", "old")).await;
    wait_status(&url, "same", "pending", 1).await;
    let (_, second) = c.notify(&url, &body("same", "new")).await;
    assert_ne!(first["messageId"], second["messageId"]);
    let v = eventually("status of the newer", DEADLINE, || async {
        let (_, v) = status(&url, "same").await;
        (v["messageId"] == second["messageId"] && v["deliveries"].as_array()?.len() == 1)
            .then_some(v)
    })
    .await;
    assert_eq!(v["deliveries"][0]["status"], "pending");
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let got = ua.notifications(1).await;
    assert_eq!(got[0]["message"], "new");
    assert_eq!(got[0]["messageId"], second["messageId"]);
    ua.assert_silent(SHORT).await;
}

async fn ttl_and_expiry(b: Backend) {
    // The services' clock, moved by hand: a TTL runs out without waiting for it.
    let clock = ManualClock::default();
    let options = Options {
        clock: clock.clock(),
        ..Default::default()
    };
    let c = Cluster::start_with(b, options).await;
    let (mut live, url) = ua_with_wa(&c, 0, "wa-ttl").await;
    let (sleeper, _) = ua_with_wa(&c, 0, "wa-ttl").await;
    let sleeper_token = sleeper.token.clone();
    sleeper.close().await;
    // ttl 0: only the UA connected right now gets it, and nothing is stored.
    let (status_code, _) = c
        .notify(
            &url,
            &json!({"id": "now", "message": "live", "ttl": 0}).to_string(),
        )
        .await;
    assert_eq!(status_code, 200);
    assert_eq!(live.next_notifications().await[0]["message"], "live");
    assert_eq!(status(&url, "now").await.0, 404);
    // A short TTL runs out while the sleeper is away.
    let (status_code, _) = c
        .notify(
            &url,
            &json!({"id": "short", "message": "brief", "ttl": 2}).to_string(),
        )
        .await;
    assert_eq!(status_code, 200);
    assert_eq!(live.next_notifications().await[0]["message"], "brief");
    clock.advance(Duration::from_secs(3));
    eventually("expiry", DEADLINE, || async {
        let (_, v) = status(&url, "short").await;
        let d = v["deliveries"].as_array()?;
        d.iter().any(|d| d["status"] == "expired").then_some(())
    })
    .await;
    let mut sleeper = Ua::registered(&c.ws_url(0), &sleeper_token).await;
    sleeper.assert_silent(SHORT).await;
}

async fn same_watoken_fans_out(b: Backend) {
    let c = Cluster::start(b).await;
    let (mut a, url) = ua_with_wa(&c, 0, "wa-shared").await;
    let (mut b2, url2) = ua_with_wa(&c, 0, "wa-shared").await;
    assert_eq!(url, url2);
    let (status_code, v) = c.notify(&url, &body("f", "to both")).await;
    assert_eq!(status_code, 200);
    let id = v["messageId"].clone();
    assert_eq!(a.next_notifications().await[0]["messageId"], id);
    assert_eq!(b2.next_notifications().await[0]["messageId"], id);
    wait_status(&url, "f", "sent", 2).await;
    // After unregister/wa, only the other UA gets it.
    let token = b2.token.clone();
    b2.command(
        "unregister/wa",
        json!({"uatoken": token, "watoken": "wa-shared"}),
    )
    .await;
    assert_eq!(b2.next_text().await, "OK");
    let (_, v) = c.notify(&url, &body("g", "to one")).await;
    assert_eq!(a.next_notifications().await[0]["messageId"], v["messageId"]);
    b2.assert_silent(SHORT).await;
}

async fn registrations_per_ua_quota(b: Backend) {
    let options = Options {
        front_end: ns_ua_ws::Settings {
            max_registrations_per_ua: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let c = Cluster::start_with(b, options).await;
    let (mut ua, first) = ua_with_wa(&c, 0, "quota-a").await;
    ua.register_wa("quota-b").await;
    let token = ua.token.clone();
    ua.command(
        "register/wa",
        json!({"uatoken": token, "watoken": "quota-c"}),
    )
    .await;
    assert_eq!(
        ua.next_error_code().await,
        465,
        "a third app is over the quota"
    );
    assert_eq!(
        ua.register_wa("quota-a").await,
        first,
        "registering again is not a new registration"
    );
    ua.command(
        "unregister/wa",
        json!({"uatoken": token, "watoken": "quota-b"}),
    )
    .await;
    assert_eq!(ua.next_text().await, "OK");
    ua.register_wa("quota-c").await;
}

async fn foreign_interface_refused(b: Backend) {
    let options = Options {
        front_end: ns_ua_ws::Settings {
            udp_allow_networks: vec!["192.0.2.0/24".parse().expect("a network")],
            ..Default::default()
        },
        ..Default::default()
    };
    let c = Cluster::start_with(b, options).await;
    let token = c.token().await;
    // Not the UA's own address, nor an allowed network: a reflection attempt.
    let mut ua = Ua::connect(&c.ws_url(0), &token).await;
    let interface = json!({"ip": "8.8.8.8", "port": 53});
    ua.command(
        "register/ua",
        json!({"uatoken": token, "interface": interface}),
    )
    .await;
    assert_eq!(ua.next_error_code().await, 464);
    assert_eq!(ua.next_event(DEADLINE).await, Some(UaEvent::Closed));
    // Its own address (the test connects from 127.0.0.1), or an allowed network: accepted.
    for ip in ["127.0.0.1", "192.0.2.77"] {
        let mut ua = Ua::connect(&c.ws_url(0), &token).await;
        let interface = json!({"ip": ip, "port": 5000});
        ua.command(
            "register/ua",
            json!({"uatoken": token, "interface": interface}),
        )
        .await;
        assert_eq!(ua.next_text().await, "OK", "{ip}");
    }
}

async fn udp_wakeup_pull_and_ack(b: Backend) {
    let c = Cluster::start(b).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let token = c.token().await;
    let mut ua = Ua::registered_wakeable(&c.ws_url(0), &token, port).await;
    let url = ua.register_wa("wa-udp").await;
    // Connected: every priority goes over the WebSocket, no datagram.
    c.notify(
        &url,
        &json!({"id": "c", "message": "ws", "priority": 4}).to_string(),
    )
    .await;
    let n = ua.next_notifications().await;
    ua.ack(&[n[0]["messageId"].as_str().unwrap()]).await;
    ua.close().await;
    wait_status(&url, "c", "acked", 1).await;
    // Priority 3: no wake-up; the notification waits for a pull.
    c.notify(
        &url,
        &json!({"id": "low", "message": "low", "priority": 3}).to_string(),
    )
    .await;
    let mut buf = [0u8; 512];
    assert!(
        tokio::time::timeout(SHORT, socket.recv_from(&mut buf))
            .await
            .is_err(),
        "priority 3 must not wake"
    );
    // Priority 1: a datagram at once.
    c.notify(
        &url,
        &json!({"id": "rt", "message": "now", "priority": 1}).to_string(),
    )
    .await;
    let (n, _) = tokio::time::timeout(DEADLINE, socket.recv_from(&mut buf))
        .await
        .expect("a wake-up datagram")
        .unwrap();
    assert!(buf[..n].starts_with(b"NOTIFY"));
    // Another priority 1 within the interval is coalesced.
    c.notify(
        &url,
        &json!({"id": "rt2", "message": "again", "priority": 1}).to_string(),
    )
    .await;
    assert!(
        tokio::time::timeout(SHORT, socket.recv_from(&mut buf))
            .await
            .is_err(),
        "a second wake-up within the interval"
    );

    let (pull, ack) = (format!("{}/pull", c.udp_url), format!("{}/ack", c.udp_url));
    let (code, v) = post_json(&pull, &json!({"uatoken": token})).await;
    assert_eq!(code, 200);
    let messages = v["messages"].as_array().unwrap().clone();
    let ids: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["low", "rt", "rt2"],
        "oldest first, own notifications only"
    );
    assert_eq!(messages[0]["messageType"], "notification");
    // Bodies may be chunked, and one past the limit gets a 413 the client can read.
    let body = json!({"uatoken": token, "limit": 1}).to_string();
    let chunked = ns_tests::raw::post_chunked(&pull, &[], body.as_bytes(), 5).await;
    assert_eq!(chunked.status, 200, "{chunked:?}");
    let big = ns_tests::raw::post_whole(&ack, &[], &vec![b' '; 200_000]).await;
    assert_eq!(big.status, 413, "{big:?}");
    // A limit is honoured; pulled notifications stay pending until acked.
    let (_, v) = post_json(&pull, &json!({"uatoken": token, "limit": 1})).await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    let all: Vec<&str> = messages
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    let (code, v) = post_json(&ack, &json!({"uatoken": token, "messageIds": all})).await;
    assert_eq!((code, v["acked"].as_u64()), (200, Some(3)));
    let (_, v) = post_json(&pull, &json!({"uatoken": token})).await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 0);

    for bad in [json!({"uatoken": "forged"}), json!({})] {
        for url in [&pull, &ack] {
            let (code, v) = post_json(url, &bad).await;
            assert_eq!((code, v["code"].as_u64()), (401, Some(456)), "{url} {bad}");
        }
    }
}

async fn takeover_on_one_instance(b: Backend) {
    let c = Cluster::start(b).await;
    let (mut first, url) = ua_with_wa(&c, 0, "wa-take").await;
    let token = first.token.clone();
    let mut second = Ua::registered(&c.ws_url(0), &token).await;
    assert_eq!(first.next_event(DEADLINE).await, Some(UaEvent::Closed));
    let (_, v) = c.notify(&url, &body("t", "to the newer")).await;
    assert_eq!(
        second.next_notifications().await[0]["messageId"],
        v["messageId"]
    );
}

async fn health_and_metrics(b: Backend) {
    let c = Cluster::start(b).await;
    for url in c.http_ports() {
        let r = reqwest::get(format!("{url}/health")).await.unwrap();
        assert_eq!(r.status(), 200, "{url}/health");
        let r = reqwest::get(format!("{url}/metrics")).await.unwrap();
        assert_eq!(r.status(), 200, "{url}/metrics");
        let text = r.text().await.unwrap();
        assert!(text.contains("# TYPE ns_"), "{url}/metrics: {text}");
    }
}

async fn burst_to_one_live_ua(b: Backend) {
    let c = Cluster::start(b).await;
    let (mut ua, url) = ua_with_wa(&c, 0, "wa-burst").await;
    // Far more than a connection's outbound queue holds, all at once.
    let sends = (0..300).map(|i| {
        let (c, url) = (&c, &url);
        async move { c.notify(url, &body(&format!("b{i}"), "burst")).await }
    });
    let mut ids = std::collections::HashSet::new();
    for (status_code, v) in futures::future::join_all(sends).await {
        assert_eq!(status_code, 200, "{v}");
        ids.insert(v["messageId"].as_str().unwrap().to_owned());
    }
    let mut got = std::collections::HashSet::new();
    while got.len() < ids.len() {
        for n in ua.next_notifications().await {
            got.insert(n["messageId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        got, ids,
        "every notification arrives on the open connection"
    );
}
