//! A real browser against the server: headless Firefox (Debian's `firefox-esr`), pointed at
//! the server with its push prefs, subscribes on the demo page, and pywebpush sends to it;
//! then Firefox is stopped, messages are sent (one replaced by Topic, one expiring), and on
//! restart exactly the right ones arrive. The browser side is driven by
//! `tests/browser/firefox.py` over Marionette. And pywebpush, unmodified, signs with VAPID
//! for a subscription bound to its key. Each test body runs against both back-ends.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ns_tests::webpush::{vapid_key, PushUa, PYWEBPUSH};
use ns_tests::{Backend, Cluster};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

ns_tests::both_modes!(firefox_subscribes_and_receives, pywebpush_with_vapid);

/// The driver's own limit is 180 s; this one only catches a driver that hangs.
const DRIVER_DEADLINE: Duration = Duration::from_secs(240);

async fn firefox_subscribes_and_receives(b: Backend) {
    let c = Cluster::start(b).await;
    let page = format!("{}/demo/", c.ws[0]);
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/firefox.py");
    let mut child = Command::new("python3")
        .arg(&driver)
        .args(["scenario", "--page", &page, "--push-server", &c.ws_url(0)])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (.ci/run installs firefox-esr and pywebpush)");
    let stdout = child.stdout.take().expect("the driver's output");
    let mut lines = BufReader::new(stdout).lines();
    let mut output = Vec::new();
    let outcome = tokio::time::timeout(DRIVER_DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            output.push(line);
        }
        child.wait().await
    })
    .await;
    match outcome {
        Ok(Ok(status)) => assert!(
            status.success(),
            "the browser scenario failed ({status}):\n{}",
            output.join("\n")
        ),
        Ok(Err(e)) => panic!("waiting for the driver: {e}"),
        Err(_) => {
            // SIGTERM lets the driver stop Firefox and remove its profile.
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg(pid.to_string())
                    .status();
            }
            panic!("the browser scenario hung:\n{}", output.join("\n"));
        }
    }
}

async fn pywebpush_with_vapid(b: Backend) {
    let c = Cluster::start(b).await;
    let key = vapid_key();
    let mut ua = PushUa::hello(&c.ws_url(0), None).await;
    let sub = ua.subscribe(Some(&key)).await;
    assert!(sub.endpoint.contains("/wpush/v2/"));
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let secret = b64(&key.to_bytes());
    for encoding in ["aes128gcm", "aesgcm"] {
        let text = format!("signed by pywebpush with {encoding}");
        let output = Command::new("python3")
            .args(["-c", PYWEBPUSH, &sub.endpoint])
            .args([&b64(&sub.keys.p256dh()), &b64(&sub.keys.auth()), &secret])
            .args([encoding, text.as_str()])
            .output()
            .await
            .expect("python3 runs (.ci/run installs pywebpush)");
        let printed = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            printed.trim(),
            "201",
            "pywebpush ({encoding}): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let message = ua.notification().await;
        assert_eq!(message["headers"]["encoding"], encoding);
        assert_eq!(sub.decrypt(&message), text);
    }
}
