//! `ns`, the command-line client, end to end: the real binary run as a child process against
//! the server of each test, in the distributed mode (MongoDB + RabbitMQ) and the one-process
//! mode, for every command; over TLS with `--ca-cert`; and the exit statuses and one-line
//! messages a script relies on, with no server at all.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ns_tests::cli::{ns, Running};
use ns_tests::ece::Subscriber;
use ns_tests::tls::{Ca, Files};
use ns_tests::{eventually, Backend, Cluster, Options};
use serde_json::Value;
use tokio::net::UdpSocket;

ns_tests::both_modes!(
    listen_notify_and_status,
    listen_json_with_token_and_watoken,
    signed_notifications,
    repeat,
    udp_wakeup_pull_and_ack,
    webpush_round_trip,
    webpush_state_and_topic,
);

const DEADLINE: Duration = Duration::from_secs(20);

/// The delivery states of notification `id` of the notify URL `url`, by `ns status --json`.
async fn states(url: &str, id: &str) -> Vec<String> {
    let report = ns(&["--json", "status", url, id]).await.json();
    assert_eq!(report["id"], id, "{report}");
    report["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["status"].as_str().expect("a status").to_owned())
        .collect()
}

/// Waits until `ns status` says every one of `count` deliveries of `target` (a notify URL
/// and an id, or a Web Push Location) is `state`.
async fn wait_states(what: &str, target: &[&str], state: &str, count: usize) {
    eventually(what, DEADLINE, || async {
        let args = [&["--json", "status"], target].concat();
        let report = ns(&args).await.json();
        let deliveries = report["deliveries"].as_array()?.clone();
        let all = deliveries.iter().all(|d| d["status"] == state);
        (deliveries.len() == count && all).then_some(())
    })
    .await;
}

/// `ns listen` prints the notify URL, then each message as it comes; `ns notify` with `--id
/// --ttl --priority` prints the messageId; the listener acked, as `ns status` shows.
async fn listen_notify_and_status(b: Backend) {
    let c = Cluster::start(b).await;
    let server = c.ws_url(0);
    let mut listen = Running::spawn(&["listen", "--server", &server]);
    let url = listen.line().await;
    assert!(url.starts_with(&format!("{}/notify/", c.as_url)), "{url}");
    // Standard error gives the new uatoken and the command that sends to the URL.
    let hint = format!("ns: send to it with: ns notify {url} MESSAGE");
    eventually("the hints on standard error", DEADLINE, || async {
        let stderr = listen.stderr();
        (stderr.contains("ns: uatoken ") && stderr.contains(&hint)).then_some(())
    })
    .await;

    let sent = ns(&[
        "notify",
        &url,
        "hi",
        "--id",
        "greeting",
        "--ttl",
        "60",
        "--priority",
        "1",
    ])
    .await;
    let message_id = sent.ok().to_owned();
    assert!(!message_id.is_empty() && !message_id.contains(char::is_whitespace));
    assert_eq!(listen.line().await, "hi");
    let sent = ns(&["notify", &url, "ho, with spaces"]).await;
    sent.ok();
    assert_eq!(listen.line().await, "ho, with spaces");

    wait_states("the first acked", &[&url, "greeting"], "acked", 1).await;
    let report = ns(&["--json", "status", &url, "greeting"]).await.json();
    assert_eq!(report["messageId"], message_id.as_str(), "{report}");
    // Text: one line per delivery, device, status and time.
    let text = ns(&["status", &url, "greeting"]).await;
    let fields: Vec<&str> = text.ok().split('\t').collect();
    assert_eq!(fields.len(), 3, "{text:?}");
    assert_eq!(fields[1], "acked");
    assert!(fields[2].parse::<u64>().is_ok(), "{text:?}");

    // Refusals: an unknown id, an unknown appToken, a bad priority and TTL.
    ns(&["status", &url, "no-such-id"])
        .await
        .assert_failed(65, "code 404");
    let unknown = format!("{}/notify/not-an-app-token", c.as_url);
    ns(&["notify", &unknown, "hi"])
        .await
        .assert_failed(65, "code 404");
    let bad = ns(&["notify", &url, "hi", "--priority", "9"]).await;
    bad.assert_failed(65, "code 464");
    let bad = ns(&["notify", &url, "hi", "--ttl", "99999999"]).await;
    bad.assert_failed(65, "code 464");
}

/// `ns token`, then `ns listen --json --token --watoken --count`: the first line says the
/// registration, each next one is the notification object; the listener exits by itself.
async fn listen_json_with_token_and_watoken(b: Backend) {
    let c = Cluster::start(b).await;
    let server = c.ws_url(0);
    let token = ns(&["token", "--server", &server]).await.ok().to_owned();
    assert!(token.len() >= 22, "{token}");
    let again = ns(&["--json", "token", "--server", &server]).await.json();
    assert!(again["uatoken"].is_string() && again["uatoken"] != token.as_str());

    let args = ["listen", "--json", "--server", &server, "--token", &token];
    let mut listen =
        Running::spawn(&[&args[..], &["--watoken", "my-app", "--count", "2"]].concat());
    let first = listen.json().await;
    assert_eq!(first["uatoken"], token.as_str(), "{first}");
    assert_eq!(first["watoken"], "my-app", "{first}");
    let url = first["notifyUrl"].as_str().expect("a notifyUrl").to_owned();
    // The same watoken gives the same notify URL, to any UA.
    let other = ns(&[
        "listen",
        "--server",
        &server,
        "--watoken",
        "my-app",
        "--count",
        "0",
    ])
    .await;
    assert_eq!(other.ok(), url);

    let sent = ns(&[
        "--json",
        "notify",
        &url,
        "one",
        "--id",
        "j-1",
        "--ttl",
        "120",
        "--priority",
        "2",
    ])
    .await;
    let sent = sent.json();
    assert_eq!(sent["status"], "ACCEPTED", "{sent}");
    let got = listen.json().await;
    assert_eq!(got["messageType"], "notification", "{got}");
    assert_eq!(got["message"], "one", "{got}");
    assert_eq!(got["id"], "j-1", "{got}");
    assert_eq!(got["ttl"], 120, "{got}");
    assert_eq!(got["priority"], 2, "{got}");
    assert_eq!(got["messageId"], sent["messageId"], "{got}");
    ns(&["notify", &url, "two", "--id", "j-2"]).await.ok();
    assert_eq!(listen.json().await["message"], "two");
    let done = listen.exit().await;
    assert_eq!(done.ok(), "", "nothing after --count messages");
    // Both acked by the listener; the other UA, gone, still owes both.
    for id in ["j-1", "j-2"] {
        eventually(id, DEADLINE, || async {
            let mut states = states(&url, id).await;
            states.sort();
            (states == ["acked", "pending"]).then_some(())
        })
        .await;
    }
}

/// `ns keygen` prints the pbkbase64 and writes the PEM; `ns listen --key` registers a WA
/// that takes only notifications signed with it: `ns notify --sign` with that key is
/// delivered, unsigned or signed with another key is refused (65, the protocol's code).
async fn signed_notifications(b: Backend) {
    let c = Cluster::start(b).await;
    let dir = tempfile::tempdir().expect("a directory");
    let key = dir.path().join("key.pem");
    let key = key.to_str().expect("UTF-8");
    let pbk = ns(&["keygen", "--bits", "1024", "--out", key]).await;
    let pbk = pbk.ok().to_owned();
    let pem = std::fs::read_to_string(key).expect("the key file");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&pbk)
        .expect("pbkbase64 is base64");
    assert!(decoded.starts_with(b"-----BEGIN PUBLIC KEY-----"));
    assert_file_private(Path::new(key));
    // Never overwritten.
    let again = ns(&["keygen", "--bits", "1024", "--out", key]).await;
    again.assert_failed(73, key);
    assert_eq!(std::fs::read_to_string(key).expect("the key file"), pem);
    // Without --out: the pbkbase64 line, then the PEM; the whole output is a key file.
    let other = ns(&["keygen", "--bits", "1024"]).await;
    assert!(other.ok().starts_with("pbkbase64: "), "{other:?}");
    assert!(
        other.ok().contains("\n-----BEGIN PRIVATE KEY-----\n"),
        "{other:?}"
    );
    let other_key = dir.path().join("other.pem");
    std::fs::write(&other_key, &other.stdout).expect("writing other.pem");
    let other_key = other_key.to_str().expect("UTF-8");

    let server = c.ws_url(0);
    let mut listen = Running::spawn(&["listen", "--server", &server, "--key", key, "--count", "1"]);
    let url = listen.line().await;
    ns(&["notify", &url, "unsigned"])
        .await
        .assert_failed(65, "code 453");
    let forged = ns(&["notify", &url, "forged", "--sign", other_key]).await;
    forged.assert_failed(65, "code 455");
    let signed = ns(&["notify", &url, "signed", "--id", "s-1", "--sign", key]).await;
    signed.ok();
    assert_eq!(listen.line().await, "signed");
    listen.exit().await.ok();
    wait_states("the signed one acked", &[&url, "s-1"], "acked", 1).await;
}

#[cfg(unix)]
fn assert_file_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .expect("the file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{} is readable by others", path.display());
}

/// `ns notify --repeat N` sends N notifications, ids ID-1 ... ID-N: all delivered, one
/// summary line on standard output whatever the progress display does on standard error.
async fn repeat(b: Backend) {
    let c = Cluster::start(b).await;
    let server = c.ws_url(0);
    let mut listen = Running::spawn(&["listen", "--server", &server, "--count", "30"]);
    let url = listen.line().await;
    let sent = ns(&["notify", &url, "load", "--id", "batch", "--repeat", "25"]).await;
    let lines = sent.lines();
    assert_eq!(lines.len(), 1, "{sent:?}");
    assert!(
        lines[0].starts_with("sent 25: 25 accepted, 0 refused, in "),
        "{sent:?}"
    );
    assert!(lines[0].ends_with("/s)"), "{sent:?}");
    // The progress display is for a terminal: none drawn into a pipe or a log.
    assert_eq!(sent.stderr, "", "{sent:?}");
    let sent = ns(&["--json", "notify", &url, "more", "--repeat", "5"]).await;
    let summary = sent.json();
    assert_eq!(summary["sent"], 5, "{summary}");
    assert_eq!(summary["accepted"], 5, "{summary}");
    assert_eq!(summary["refused"], 0, "{summary}");
    assert!(
        summary["perSecond"].as_f64().is_some_and(|r| r > 0.0),
        "{summary}"
    );

    let mut got = Vec::new();
    for _ in 0..30 {
        got.push(listen.line().await);
    }
    assert_eq!(got.iter().filter(|m| *m == "load").count(), 25, "{got:?}");
    assert_eq!(got.iter().filter(|m| *m == "more").count(), 5, "{got:?}");
    listen.exit().await.ok();
    for id in ["batch-1", "batch-25"] {
        wait_states(id, &[&url, id], "acked", 1).await;
    }
    // Refused ones are counted, and the first refusal decides the exit.
    let unknown = format!("{}/notify/not-an-app-token", c.as_url);
    let refused = ns(&["notify", &unknown, "x", "--repeat", "3"]).await;
    assert_eq!(refused.code(), 65, "{refused:?}");
    assert!(
        refused.stdout.starts_with("sent 3: 0 accepted, 3 refused"),
        "{refused:?}"
    );
    assert!(refused.stderr.starts_with("ns: ") && refused.stderr.contains("code 404"));
}

/// A UA registered for UDP wake-ups (`ns listen --interface --count 0`) and gone: a
/// priority-1 notification wakes it, `ns pull` prints what is pending, `ns ack` acks it.
async fn udp_wakeup_pull_and_ack(b: Backend) {
    let c = Cluster::start(b).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
    let interface = socket.local_addr().expect("its address").to_string();
    let server = c.ws_url(0);
    let token = ns(&["token", "--server", &server]).await.ok().to_owned();
    let args = [
        "listen",
        "--server",
        &server,
        "--token",
        &token,
        "--interface",
        &interface,
    ];
    let registered = ns(&[&args[..], &["--count", "0"]].concat()).await;
    let url = registered.ok().to_owned();
    assert!(url.contains("/notify/"), "{url}");
    c.wait_no_connections().await;

    ns(&["notify", &url, "low", "--id", "low", "--priority", "3"])
        .await
        .ok();
    ns(&["notify", &url, "now", "--id", "rt", "--priority", "1"])
        .await
        .ok();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(DEADLINE, socket.recv_from(&mut buf))
        .await
        .expect("a wake-up datagram")
        .expect("a datagram");
    assert!(buf[..n].starts_with(b"NOTIFY"));

    let pull = |extra: &'static [&'static str]| {
        let mut args = vec!["pull", "--pull-server", &c.udp_url, "--token", &token];
        args.extend_from_slice(extra);
        async move { ns(&args).await }
    };
    let pulled = pull(&[]).await;
    let lines: Vec<(String, String)> = pulled
        .lines()
        .iter()
        .map(|l| {
            let (id, message) = l.split_once('\t').expect("MESSAGE_ID<TAB>MESSAGE");
            (id.to_owned(), message.to_owned())
        })
        .collect();
    let messages: Vec<&str> = lines.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(messages, ["low", "now"], "oldest first");
    // Pulled is not acked: the same again, and --limit.
    assert_eq!(pull(&["--limit", "1"]).await.lines().len(), 1);

    let acked = ns(&[
        "ack",
        "--pull-server",
        &c.udp_url,
        "--token",
        &token,
        &lines[0].0,
    ])
    .await;
    assert_eq!(acked.ok(), "1");
    let pulled = pull(&["--json", "--ack"]).await;
    let rest = pulled.json();
    assert_eq!(rest["message"], "now", "{rest}");
    assert_eq!(rest["id"], "rt", "{rest}");
    assert!(pulled.stderr.contains("acked 1"), "{pulled:?}");
    assert_eq!(pull(&[]).await.ok(), "");
    for id in ["low", "rt"] {
        wait_states(id, &[&url, id], "acked", 1).await;
    }
    let forged = ns(&["pull", "--pull-server", &c.udp_url, "--token", "forged"]).await;
    forged.assert_failed(65, "code 456");
}

/// The base64url `p256dh` and `auth` of a printed subscription.
fn keys(subscription: &Value) -> (String, String) {
    let key = |name: &str| {
        subscription["keys"][name]
            .as_str()
            .unwrap_or_else(|| panic!("keys.{name} in {subscription}"))
            .to_owned()
    };
    (key("p256dh"), key("auth"))
}

/// `ns vapid keygen`, `ns webpush listen --application-server-key`, `ns webpush send` with
/// `--vapid-key --ttl --urgency --topic`: encrypted aes128gcm, signed, decrypted by the
/// listener, acked; a send without the key, or with another key, is refused.
async fn webpush_round_trip(b: Backend) {
    let c = Cluster::start(b).await;
    let dir = tempfile::tempdir().expect("a directory");
    let vapid = dir.path().join("vapid.pem");
    let vapid = vapid.to_str().expect("UTF-8");
    let public = ns(&["vapid", "keygen", "--out", vapid])
        .await
        .ok()
        .to_owned();
    assert_eq!(
        URL_SAFE_NO_PAD.decode(&public).expect("base64url").len(),
        65
    );
    let pem = std::fs::read_to_string(vapid).expect("the VAPID key file");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    assert_file_private(Path::new(vapid));
    // Without --out: the public key line, then the PEM; --json adds the raw private key.
    let printed = ns(&["vapid", "keygen"]).await;
    assert!(
        printed.ok().starts_with("applicationServerKey: "),
        "{printed:?}"
    );
    let other = dir.path().join("other.pem");
    std::fs::write(&other, &printed.stdout).expect("writing other.pem");
    let other = other.to_str().expect("UTF-8");
    let generated = ns(&["--json", "vapid", "keygen"]).await.json();
    let raw = generated["privateKey"]
        .as_str()
        .expect("privateKey")
        .to_owned();

    let server = c.ws_url(0);
    let args = ["webpush", "listen", "--server", &server, "--count", "2"];
    let mut listen = Running::spawn(&[&args[..], &["--application-server-key", &public]].concat());
    let subscription = listen.json().await;
    let endpoint = subscription["endpoint"]
        .as_str()
        .expect("an endpoint")
        .to_owned();
    assert!(
        endpoint.starts_with(&format!("{}/wpush/v2/", c.as_url)),
        "{endpoint}"
    );
    let (p256dh, auth) = keys(&subscription);
    // Standard error gives the command that sends to it.
    let hint =
        format!("ns webpush send {endpoint} MESSAGE --p256dh {p256dh} --auth {auth} --vapid-key");
    eventually("the send hint", DEADLINE, || async {
        listen.stderr().contains(&hint).then_some(())
    })
    .await;

    let send = ["webpush", "send", &endpoint];
    let keys = ["--p256dh", &p256dh, "--auth", &auth];
    let unsigned = ns(&[&send[..], &["unsigned"], &keys].concat()).await;
    unsigned.assert_failed(65, "errno 109");
    let forged = ns(&[&send[..], &["forged"], &keys, &["--vapid-key", other]].concat()).await;
    forged.assert_failed(65, "(HTTP 401)");

    let options = [
        "--vapid-key",
        vapid,
        "--ttl",
        "60",
        "--urgency",
        "high",
        "--topic",
        "news",
    ];
    let sent = ns(&[&send[..], &["Hello, Web Push"], &keys, &options].concat()).await;
    let location = sent.ok().to_owned();
    assert!(
        location.starts_with(&format!("{}/m/", c.as_url)),
        "{location}"
    );
    assert_eq!(listen.line().await, "Hello, Web Push");
    // Another key in web-push's raw form: refused as well.
    let sent = ns(&[&send[..], &["raw key"], &keys, &["--vapid-key", &raw]].concat()).await;
    sent.assert_failed(65, "(HTTP 401)");
    let json = ["--json"];
    let sent = ns(&[
        &json[..],
        &send,
        &["second"],
        &keys,
        &["--vapid-key", vapid],
    ]
    .concat())
    .await;
    let sent = sent.json();
    assert_eq!(sent["status"], 201, "{sent}");
    assert_eq!(sent["ttl"], "2419200", "{sent}");
    assert_eq!(listen.line().await, "second");
    listen.exit().await.ok();
    wait_states("the Web Push message acked", &[&location], "acked", 1).await;

    // A subscription bound to no key takes a message signed with any, here a raw one.
    let mut open = Running::spawn(&["webpush", "listen", "--server", &server, "--count", "1"]);
    let subscription = open.json().await;
    let endpoint = subscription["endpoint"]
        .as_str()
        .expect("an endpoint")
        .to_owned();
    let (p256dh, auth) = self::keys(&subscription);
    let args = [
        "webpush", "send", &endpoint, "raw", "--p256dh", &p256dh, "--auth", &auth,
    ];
    ns(&[&args[..], &["--vapid-key", &raw]].concat()).await.ok();
    assert_eq!(open.line().await, "raw");
    open.exit().await.ok();
}

/// `ns webpush listen --state FILE --json` keeps its subscription between runs; messages
/// sent meanwhile wait, and one with the `--topic` of a pending one replaces it.
async fn webpush_state_and_topic(b: Backend) {
    let c = Cluster::start(b).await;
    let dir = tempfile::tempdir().expect("a directory");
    let state = dir.path().join("sub.json");
    let state = state.to_str().expect("UTF-8");
    let server = c.ws_url(0);
    let listen = [
        "--json", "webpush", "listen", "--server", &server, "--state", state,
    ];
    let first = ns(&[&listen[..], &["--count", "0"]].concat()).await.json();
    let endpoint = first["endpoint"].as_str().expect("an endpoint").to_owned();
    assert!(
        first["uaid"].is_string() && first["channelID"].is_string(),
        "{first}"
    );
    assert_file_private(Path::new(state));
    c.wait_no_connections().await;

    let (p256dh, auth) = keys(&first);
    let send = [
        "webpush", "send", &endpoint, "--p256dh", &p256dh, "--auth", &auth,
    ];
    let old = ns(&[&send[..], &["old", "--topic", "t1", "--ttl", "600"]].concat()).await;
    let old = old.ok().to_owned();
    ns(&[&send[..], &["new", "--topic", "t1", "--ttl", "600"]].concat())
        .await
        .ok();
    wait_states("the older one replaced", &[&old], "replaced", 1).await;

    let mut again = Running::spawn(&[&listen[..], &["--count", "1"]].concat());
    let second = again.json().await;
    assert_eq!(
        second["endpoint"],
        endpoint.as_str(),
        "the same subscription"
    );
    assert_eq!(second["uaid"], first["uaid"]);
    let got = again.json().await;
    assert_eq!(got["message"], "new", "{got}");
    assert_eq!(got["ttl"], 600, "{got}");
    again.exit().await.ok();
}

/// The CLI over TLS: ns-standalone with a certificate of the test's CA; `ns listen` on
/// `wss://` trusting it through `--ca-cert` receives what `ns notify` posted to the
/// `https://` notify URL; without the CA, `ns` can't reach the server (69).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_ca_cert() {
    let ca = Ca::new();
    let files = Files::new(&ca, &ca.issue());
    let options = Options {
        tls: Some(files.tls.clone()),
        ..Default::default()
    };
    let c = Cluster::start_with(Backend::Embedded, options).await;
    let server = c.ws_url(0);
    assert!(server.starts_with("wss://"), "{server}");
    let ca_file = files.ca();
    let ca_file = ca_file.to_str().expect("UTF-8");

    let untrusted = ns(&["token", "--server", &server]).await;
    untrusted.assert_failed(69, "cannot reach the server");
    let mut listen = Running::spawn(&[
        "listen",
        "--server",
        &server,
        "--ca-cert",
        ca_file,
        "--count",
        "1",
    ]);
    let url = listen.line().await;
    assert!(url.starts_with(&format!("{}/notify/", c.as_url)), "{url}");
    assert!(url.starts_with("https://"), "{url}");
    let untrusted = ns(&["notify", &url, "not sent"]).await;
    untrusted.assert_failed(69, "cannot reach the server");
    ns(&["notify", &url, "over TLS", "--ca-cert", ca_file])
        .await
        .ok();
    assert_eq!(listen.line().await, "over TLS");
    listen.exit().await.ok();

    // Web Push over TLS too.
    let mut push = Running::spawn(&[
        "webpush",
        "listen",
        "--server",
        &server,
        "--ca-cert",
        ca_file,
        "--count",
        "1",
    ]);
    let subscription = push.json().await;
    let endpoint = subscription["endpoint"]
        .as_str()
        .expect("an endpoint")
        .to_owned();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let (p256dh, auth) = keys(&subscription);
    let args = [
        "webpush",
        "send",
        &endpoint,
        "pushed over TLS",
        "--p256dh",
        &p256dh,
        "--auth",
        &auth,
    ];
    ns(&[&args[..], &["--ca-cert", ca_file]].concat())
        .await
        .ok();
    assert_eq!(push.line().await, "pushed over TLS");
    push.exit().await.ok();
}

/// 64 for a bad command line, URL or option value; 69 for a server that can't be reached;
/// 66 for a key or certificate file that can't be read or is no key; each with one line
/// `ns: ...` on standard error and nothing on standard output.
#[tokio::test]
async fn exit_statuses_without_a_server() {
    // A port held by a socket that does not listen: a connection to it is refused, and no
    // other test can take it meanwhile.
    let held = tokio::net::TcpSocket::new_v4().expect("a socket");
    held.bind(([127, 0, 0, 1], 0).into())
        .expect("binding a port");
    let nobody = held.local_addr().expect("its address").to_string();
    let notify_url = format!("http://{nobody}/notify/x");
    let ws = format!("ws://{nobody}");
    let endpoint = format!("http://{nobody}/wpush/v2/x");
    let subscriber = Subscriber::generate();
    let p256dh = URL_SAFE_NO_PAD.encode(subscriber.p256dh());
    let auth = URL_SAFE_NO_PAD.encode(subscriber.auth());
    let push = [
        "webpush", "send", &endpoint, "m", "--p256dh", &p256dh, "--auth", &auth,
    ];
    let dir = tempfile::tempdir().expect("a directory");
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().expect("UTF-8");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "no key in here\n").expect("writing");
    let garbage = garbage.to_str().expect("UTF-8");

    let usage: &[(&[&str], &str)] = &[
        (&["notify", "not a url", "hi"], "bad notify URL"),
        (
            &["notify", "ftp://example.com/notify/x", "hi"],
            "want a http or https URL",
        ),
        (&["token", "--server", "nonsense"], "bad --server"),
        (
            &["pull", "--token", "t", "--pull-server", "ws://h:1"],
            "bad --pull-server",
        ),
        (
            &["notify", &notify_url, "hi", "--ttl", "abc"],
            "invalid value 'abc' for '--ttl",
        ),
        (
            &["notify", &notify_url],
            "required arguments were not provided",
        ),
        (&["notify", &notify_url, "hi", "--repeat", "0"], "--repeat"),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (
            &[&push[..], &["--urgency", "now"]].concat(),
            "invalid value 'now' for '--urgency",
        ),
        (
            &[
                "webpush", "send", &endpoint, "m", "--p256dh", "@@", "--auth", &auth,
            ],
            "bad --p256dh",
        ),
        (
            &[
                "webpush",
                "listen",
                "--application-server-key",
                "nope",
                "--server",
                &ws,
            ],
            "bad --application-server-key",
        ),
    ];
    for (args, expected) in usage {
        ns(args).await.assert_failed(64, expected);
    }

    let unavailable: &[&[&str]] = &[
        &["token", "--server", &ws],
        &["listen", "--server", &ws],
        &["webpush", "listen", "--server", &ws],
        &["notify", &notify_url, "hi"],
        &[
            "pull",
            "--token",
            "t",
            "--pull-server",
            &format!("http://{nobody}"),
        ],
        &push,
    ];
    for args in unavailable {
        let done = ns(args).await;
        done.assert_failed(69, "cannot reach the server at ");
        assert!(done.stderr.contains(&nobody), "{done:?}");
    }

    let no_input: &[(&[&str], &str)] = &[
        (&["notify", &notify_url, "hi", "--sign", missing], missing),
        (
            &["notify", &notify_url, "hi", "--sign", garbage],
            "no PEM block",
        ),
        (&["listen", "--server", &ws, "--key", missing], missing),
        (&["token", "--server", &ws, "--ca-cert", missing], missing),
        (&["token", "--server", &ws, "--ca-cert", garbage], garbage),
        (&[&push[..], &["--vapid-key", missing]].concat(), missing),
        (
            &[&push[..], &["--vapid-key", garbage]].concat(),
            "no PEM block",
        ),
    ];
    for (args, expected) in no_input {
        ns(args).await.assert_failed(66, expected);
    }
}

/// `--help` of `ns` and of each command shows an example, and exits 0.
#[tokio::test]
async fn help_has_examples() {
    let commands: &[&[&str]] = &[
        &[],
        &["token"],
        &["listen"],
        &["notify"],
        &["status"],
        &["keygen"],
        &["pull"],
        &["ack"],
        &["webpush", "listen"],
        &["webpush", "send"],
        &["vapid", "keygen"],
    ];
    for command in commands {
        let help = ns(&[*command, &["--help"]].concat()).await;
        let text = help.ok();
        assert!(text.contains("Example"), "ns {command:?} --help: {text}");
    }
    let top = ns(&["--help"]).await;
    assert!(top.ok().contains("Exit status:"), "{top:?}");
    assert!(
        top.ok().contains("ns notify http://localhost:8081/notify/"),
        "{top:?}"
    );
    // `ns` alone: the overview on standard error, and a usage status.
    let bare = ns(&[]).await;
    assert_eq!(bare.code(), 64, "{bare:?}");
    assert!(bare.stderr.contains("Commands:"), "{bare:?}");
}
