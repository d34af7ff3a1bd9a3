//! TLS on every port, natively: the real binaries given `--tls-cert` / `--tls-key` (as
//! `NS_TLS_CERT` / `NS_TLS_KEY`) serve `https://` and `wss://` with a certificate of the
//! test's own CA, made here with rcgen. Clients: Rust (reqwest and tokio-tungstenite on
//! rustls), pywebpush and the npm `web-push` library, unmodified, each trusting the CA the
//! way its stack does. Then the certificate is reloaded on SIGHUP and when its files change,
//! a bad one is refused while the old one is kept, and bad settings stop a binary with 64.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ns_tests::faults::binaries;
use ns_tests::tls::{replace, Ca, Files};
use ns_tests::webpush::{application_server_key, vapid_key, PushUa, PYWEBPUSH};
use ns_tests::{eventually, Backend, Cluster, Options, Role, Ua};
use serde_json::json;
use tokio::process::Command;
use tokio_tungstenite::MaybeTlsStream;

const DEADLINE: Duration = Duration::from_secs(30);

/// ns-standalone as a process, on TLS.
async fn standalone(files: &Files, log: Option<PathBuf>) -> Cluster {
    let options = Options {
        processes: vec![(Role::Standalone, binaries().standalone.clone())],
        tls: Some(files.tls.clone()),
        process_log: log,
        ..Default::default()
    };
    Cluster::start_with(Backend::Embedded, options).await
}

/// The certificate the server showed `ua`'s connection, DER.
fn peer_certificate(ua: &Ua) -> Vec<u8> {
    match ua.ws.get_ref() {
        MaybeTlsStream::Rustls(tls) => tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("the server's certificate")
            .to_vec(),
        _ => panic!("not a TLS connection"),
    }
}

/// A Telefónica UA registered over `wss://`, with a notify URL; returns both.
async fn registered_ua(c: &Cluster, watoken: &str) -> (Ua, String) {
    let token = c.token().await;
    let tls = c.tls.as_ref().expect("a TLS cluster").client_config();
    let mut ua = Ua::connect_tls(&c.ws_url(0), &token, tls).await;
    ua.command("register/ua", json!({ "uatoken": token })).await;
    assert_eq!(ua.next_text().await, "OK");
    let url = ua.register_wa(watoken).await;
    (ua, url)
}

/// Posts `text` to `url` and checks that `ua` gets it.
async fn notify_and_receive(c: &Cluster, ua: &mut Ua, url: &str, text: &str) {
    // Each text is a notification of its own: it is its id too.
    let body = json!({ "id": text, "message": text }).to_string();
    let (status, reply) = c.notify(url, &body).await;
    assert_eq!(status, 200, "{reply}");
    let got = ua.next_notifications().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["message"], text);
    let id = got[0]["messageId"]
        .as_str()
        .expect("a messageId")
        .to_owned();
    ua.ack(&[id.as_str()]).await;
}

/// (a) Rust clients: a UA registers over `wss://` and receives what was posted to its
/// `https://` notify URL; every port answers over TLS, and no port speaks plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_clients_over_wss_and_https() {
    let ca = Ca::new();
    let issued = ca.issue();
    let files = Files::new(&ca, &issued);
    let c = standalone(&files, None).await;
    assert!(c.ws_url(0).starts_with("wss://"));
    let (mut ua, url) = registered_ua(&c, "tls-app").await;
    assert!(url.starts_with(&format!("{}/notify/", c.as_url)), "{url}");
    assert!(url.starts_with("https://"), "{url}");
    assert_eq!(peer_certificate(&ua), issued.der);
    notify_and_receive(&c, &mut ua, &url, "over TLS").await;

    for port in c.http_ports() {
        let health = c.client.get(format!("{port}/health")).send().await;
        assert_eq!(health.expect("health over https").status(), 200, "{port}");
        // The same port without TLS: no answer a plain HTTP client can read.
        let plain = port.replacen("https://", "http://", 1);
        let answer = reqwest::Client::new()
            .get(format!("{plain}/health"))
            .timeout(DEADLINE)
            .send()
            .await;
        assert!(answer.is_err(), "{plain} answered plain HTTP: {answer:?}");
    }
    // A client that does not trust the CA is refused, and the server goes on.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .build()
        .expect("a client");
    assert!(untrusting.get(c.ws[0].clone()).send().await.is_err());
    notify_and_receive(&c, &mut ua, &url, "still over TLS").await;
}

/// Sends one message with the npm `web-push` library: endpoint, p256dh, auth, VAPID public
/// and private keys (base64url), encoding and text as arguments; prints the status.
const WEB_PUSH_JS: &str = r#"
const webpush = require('web-push');
const [endpoint, p256dh, auth, publicKey, privateKey, contentEncoding, text] =
    process.argv.slice(1);
webpush.sendNotification({ endpoint, keys: { p256dh, auth } }, text, {
    vapidDetails: { subject: 'mailto:test@example.com', publicKey, privateKey },
    contentEncoding, TTL: 600,
}).then(r => console.log(r.statusCode), e => console.log(e.statusCode || String(e)));
"#;

/// Where scripts/services.sh installs the npm `web-push` library.
fn npm_modules() -> PathBuf {
    let prefix = std::env::var("NS_NPM_PREFIX").unwrap_or_else(|_| "/opt/ns-peers/npm".into());
    Path::new(&prefix).join("node_modules")
}

fn printed(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// (b) and (c): pywebpush and web-push, unmodified, send over `https://` (trusting the CA
/// through REQUESTS_CA_BUNDLE and NODE_EXTRA_CA_CERTS) to a Web Push UA on `wss://`, with
/// both encodings and VAPID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_libraries_send_over_https() {
    let ca = Ca::new();
    let files = Files::new(&ca, &ca.issue());
    let c = standalone(&files, None).await;
    let key = vapid_key();
    let mut ua = PushUa::hello_tls(&c.ws_url(0), None, files.tls.client_config()).await;
    let sub = ua.subscribe(Some(&key)).await;
    assert!(
        sub.endpoint.starts_with(&format!("{}/wpush/v2/", c.as_url)),
        "{}",
        sub.endpoint
    );
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let (p256dh, auth) = (b64(&sub.keys.p256dh()), b64(&sub.keys.auth()));
    let private = b64(&key.to_bytes());
    for encoding in ["aes128gcm", "aesgcm"] {
        let text = format!("pywebpush over https with {encoding}");
        let output = Command::new("python3")
            .args(["-c", PYWEBPUSH, &sub.endpoint, &p256dh, &auth, &private])
            .args([encoding, text.as_str()])
            .env("REQUESTS_CA_BUNDLE", files.ca())
            .output()
            .await
            .expect("python3 runs (scripts/services.sh installs pywebpush)");
        let (status, stderr) = printed(&output);
        assert_eq!(status, "201", "pywebpush ({encoding}): {stderr}");
        let message = ua.notification().await;
        assert_eq!(message["headers"]["encoding"], encoding);
        assert_eq!(sub.decrypt(&message), text);
        ua.ack(&message, 100).await;
    }

    let public = application_server_key(&key);
    for encoding in ["aes128gcm", "aesgcm"] {
        let text = format!("web-push over https with {encoding}");
        let output = Command::new("node")
            .args(["-e", WEB_PUSH_JS, &sub.endpoint, &p256dh, &auth, &public])
            .args([private.as_str(), encoding, text.as_str()])
            .env("NODE_PATH", npm_modules())
            .env("NODE_EXTRA_CA_CERTS", files.ca())
            .output()
            .await
            .expect("node runs (scripts/services.sh installs nodejs and web-push)");
        let (status, stderr) = printed(&output);
        assert_eq!(status, "201", "web-push ({encoding}): {stderr}");
        let message = ua.notification().await;
        assert_eq!(message["headers"]["encoding"], encoding);
        assert_eq!(sub.decrypt(&message), text);
        ua.ack(&message, 100).await;
    }

    // Without the CA, each library refuses the server's certificate: nothing is sent.
    let output = Command::new("node")
        .args(["-e", WEB_PUSH_JS, &sub.endpoint, &p256dh, &auth, &public])
        .args([private.as_str(), "aes128gcm", "untrusted"])
        .env("NODE_PATH", npm_modules())
        .env_remove("NODE_EXTRA_CA_CERTS")
        .output()
        .await
        .expect("node runs");
    let (status, _) = printed(&output);
    assert_ne!(
        status, "201",
        "web-push trusted a certificate of an unknown CA"
    );
}

/// How many failed reloads the log at `path` reports.
fn failed_reloads(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("reloading the TLS certificate failed"))
        .count()
}

/// A new connection's view of the server's certificate.
async fn served_certificate(c: &Cluster) -> Vec<u8> {
    let token = c.token().await;
    let tls = c.tls.as_ref().expect("TLS").client_config();
    let ua = Ua::connect_tls(&c.ws_url(0), &token, tls).await;
    let der = peer_certificate(&ua);
    ua.close().await;
    der
}

fn hang_up(c: &mut Cluster) {
    let pid = c.proc(Role::Standalone).pid().expect("a running server");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

/// (d) A new certificate is served to new connections after SIGHUP while a connection made
/// before goes on with the old one; a bad file on reload keeps the certificate in use; and
/// new files are also picked up without a signal, when their modification time changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload() {
    let ca = Ca::new();
    let first = ca.issue();
    let files = Files::new(&ca, &first);
    let log = files.dir.path().join("server.log");
    let mut c = standalone(&files, Some(log.clone())).await;
    let (mut old, old_url) = registered_ua(&c, "before-reload").await;
    assert_eq!(peer_certificate(&old), first.der);

    let second = ca.issue();
    files.install(&second);
    hang_up(&mut c);
    eventually("the new certificate after SIGHUP", DEADLINE, || async {
        (served_certificate(&c).await == second.der).then_some(())
    })
    .await;
    let (mut new, new_url) = registered_ua(&c, "after-reload").await;
    assert_eq!(peer_certificate(&new), second.der);
    // The connection made before the reload still has the first certificate, and works.
    assert_eq!(peer_certificate(&old), first.der);
    notify_and_receive(&c, &mut old, &old_url, "to the old connection").await;
    notify_and_receive(&c, &mut new, &new_url, "to the new connection").await;

    // A bad certificate file: the reload fails (and says so), the second one stays.
    let failed_before = failed_reloads(&log);
    replace(
        &files.tls.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    );
    hang_up(&mut c);
    eventually("the failed reload in the log", DEADLINE, || async {
        (failed_reloads(&log) > failed_before).then_some(())
    })
    .await;
    assert_eq!(served_certificate(&c).await, second.der);
    notify_and_receive(&c, &mut old, &old_url, "after a failed reload").await;

    // Good files again, and no signal: their change of modification time is enough.
    let third = ca.issue();
    files.install(&third);
    eventually(
        "the third certificate without a signal",
        DEADLINE,
        || async { (served_certificate(&c).await == third.der).then_some(()) },
    )
    .await;
    notify_and_receive(&c, &mut new, &new_url, "after the third certificate").await;
}

/// (e) The distributed binaries: ns-as and ns-ua-ws as processes on TLS (the monitor and
/// ns-ua-udp in this process, on TLS too), a UA on `wss://` gets what was posted to its
/// `https://` notify URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_binaries_serve_tls() {
    let ca = Ca::new();
    let issued = ca.issue();
    let files = Files::new(&ca, &issued);
    let binaries = binaries();
    let options = Options {
        processes: vec![
            (Role::Notify, binaries.notify.clone()),
            (Role::FrontEnd(0), binaries.front_end.clone()),
        ],
        tls: Some(files.tls.clone()),
        ..Default::default()
    };
    // Every port answered /health over https to get here.
    let c = Cluster::start_with(Backend::Distributed, options).await;
    let (mut ua, url) = registered_ua(&c, "distributed-tls").await;
    assert!(url.starts_with("https://"), "{url}");
    assert_eq!(peer_certificate(&ua), issued.der);
    notify_and_receive(&c, &mut ua, &url, "through the distributed binaries").await;

    // The pull port of ns-ua-udp over https: an unknown token is refused, in JSON.
    let pull = c
        .client
        .post(format!("{}/pull", c.udp_url))
        .body("{}")
        .send()
        .await
        .expect("pull over https");
    assert!(pull.status().is_client_error(), "{}", pull.status());
}

/// Runs `binary` with `args` and `env` and no inherited TLS settings; returns its output.
async fn run(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let data = tempfile::tempdir().expect("a directory");
    let output = Command::new(binary)
        .env_remove("NS_TLS_CERT")
        .env_remove("NS_TLS_KEY")
        .env_remove("NS_CONFIG")
        .env("NS_DATA_DIR", data.path())
        .envs(env.iter().copied())
        .args(args)
        .kill_on_drop(true)
        .output();
    // A binary that starts when it should have refused its settings is a failure, not a hang.
    tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the binary exits within 30 s")
        .expect("running the binary")
}

fn assert_usage_error(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
}

/// Certificate without key (or the other way round), a file that can't be read, a file
/// that is not PEM, a key of another certificate: each stops the binary at start with 64
/// and says what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_exit_64() {
    let ca = Ca::new();
    let files = Files::new(&ca, &ca.issue());
    let other = ca.issue();
    let dir = files.dir.path();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "this is no PEM").expect("writing");
    let broken = dir.join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .expect("writing");
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).expect("writing");
    let missing = dir.join("missing.pem");
    let (cert, key) = (
        files.tls.cert.display().to_string(),
        files.tls.key.display().to_string(),
    );
    let standalone = &binaries().standalone;

    let output = run(standalone, &["--tls-cert", &cert], &[]).await;
    assert_usage_error(&output, "without --tls-key");
    let output = run(standalone, &[], &[("NS_TLS_KEY", &key)]).await;
    assert_usage_error(&output, "without --tls-cert");
    let missing = missing.display().to_string();
    let output = run(
        standalone,
        &["--tls-cert", &missing, "--tls-key", &key],
        &[],
    )
    .await;
    assert_usage_error(&output, &format!("reading {missing}"));
    let garbage = garbage.display().to_string();
    let output = run(
        standalone,
        &["--tls-cert", &garbage, "--tls-key", &key],
        &[],
    )
    .await;
    assert_usage_error(&output, "holds no certificate");
    let broken = broken.display().to_string();
    let output = run(standalone, &["--tls-cert", &broken, "--tls-key", &key], &[]).await;
    assert_usage_error(&output, "is not valid PEM");
    let output = run(
        standalone,
        &["--tls-cert", &cert, "--tls-key", &garbage],
        &[],
    )
    .await;
    assert_usage_error(&output, "holds no private key");
    let other_key = other_key.display().to_string();
    let output = run(
        standalone,
        &["--tls-cert", &cert, "--tls-key", &other_key],
        &[],
    )
    .await;
    assert_usage_error(&output, "does not match");

    // A distributed binary, through its environment, with its other problems listed too.
    let output = run(&binaries().notify, &[], &[("NS_TLS_CERT", &cert)]).await;
    assert_usage_error(&output, "without --tls-key");
    assert_usage_error(&output, "NS_SECRET");
    let output = run(
        &binaries().front_end,
        &[],
        &[
            ("NS_TLS_CERT", &garbage),
            ("NS_TLS_KEY", &key),
            ("NS_SECRET", "a-secret-of-at-least-16"),
        ],
    )
    .await;
    assert_usage_error(&output, "holds no certificate");
}
