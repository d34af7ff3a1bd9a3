//! What only the `ns-as` process shows: a database outage answered with 503 (on notify URLs
//! and push endpoints alike) and recovered from, and a clean exit on SIGTERM. The rest of the cluster runs in this process, on
//! MongoDB and RabbitMQ.

use std::time::Duration;

use ns_tests::webpush::PushUa;
use ns_tests::{eventually, Backend, Cluster, Options, Role, Ua};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);
/// How long `/health` may take to answer while a dependency is down.
const HEALTH_BOUND: Duration = Duration::from_secs(1);

fn options(mongo_url: Option<String>) -> Options {
    Options {
        processes: vec![(Role::Notify, env!("CARGO_BIN_EXE_ns-as").into())],
        mongo_url,
        ..Default::default()
    }
}

/// A port no port-0 bind can be given: below the kernel's ephemeral range, and free now.
fn fixed_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let first_ephemeral: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(32768);
    (0..1000)
        .map(|_| rand::random::<u16>() % (first_ephemeral - 20_000) + 20_000)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// A private MongoDB-wire server for the outage test, so the shared one stays up.
struct PrivateMongo {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateMongo {
    fn start(port: u16, dir: tempfile::TempDir) -> PrivateMongo {
        let child = std::process::Command::new("secantusd-py")
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--storage-path",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting secantusd-py");
        PrivateMongo { child, port, dir }
    }

    /// Stops the server as an operator would (SIGTERM), keeping its data.
    fn stop(mut self) -> tempfile::TempDir {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for PrivateMongo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_gives_503_and_recovers() {
    let port = fixed_port();
    let mongo = PrivateMongo::start(port, tempfile::tempdir().unwrap());
    let url = format!("mongodb://127.0.0.1:{}/?directConnection=true", mongo.port);
    let c = Cluster::start_with(Backend::Distributed, options(Some(url))).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let url = ua.register_wa("wa-outage").await;
    let mut push_ua = PushUa::hello(&c.ws_url(0), None).await;
    let sub = push_ua.subscribe(None).await;
    let dir = mongo.stop();

    eventually("503 from ns-as", DEADLINE, || async {
        let (status, v) = c
            .notify(&url, &json!({"id": "o", "message": "m"}).to_string())
            .await;
        (status == 503 && v["code"] == 503).then_some(())
    })
    .await;
    let refused = eventually("503 from a push endpoint", DEADLINE, || async {
        let answer = sub.message("during the outage", 60).send().await;
        (answer.status == 503).then_some(answer)
    })
    .await;
    assert_eq!(refused.errno(), 201);
    assert!(refused.retry_after.is_some(), "{refused:?}");
    eventually("503 from /health", DEADLINE, || async {
        let r = reqwest::get(format!("{}/health", c.as_url)).await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    // A prober is answered promptly, not after waiting for the database: the bound is
    // the behaviour under test (ns-http answers within 500 ms; 1 s leaves room).
    for _ in 0..8 {
        let started = std::time::Instant::now();
        let r = reqwest::get(format!("{}/health", c.as_url))
            .await
            .expect("GET /health");
        let took = started.elapsed();
        assert_eq!(r.status(), 503);
        assert!(
            took < HEALTH_BOUND,
            "/health took {took:?} during the outage"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    let _mongo = PrivateMongo::start(port, dir);
    c.wait_healthy().await;
    let (status, v) = eventually("notify to work again", DEADLINE, || async {
        let (status, v) = c
            .notify(&url, &json!({"id": "p", "message": "back"}).to_string())
            .await;
        (status == 200).then_some((status, v))
    })
    .await;
    assert_eq!(status, 200);
    let got = ua.notifications(1).await;
    assert_eq!(got[0]["messageId"], v["messageId"]);
    let answer = sub.message("back", 60).send().await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(sub.decrypt(&push_ua.notification().await), "back");
    // Before the database goes: the cluster removes its data from it.
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly() {
    let mut c = Cluster::start_with(Backend::Distributed, options(None)).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let url = ua.register_wa("wa-sigterm").await;
    let (status, v) = c
        .notify(&url, &json!({"id": "s", "message": "m"}).to_string())
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        ua.next_notifications().await[0]["messageId"],
        v["messageId"]
    );
    let status = c.proc(Role::Notify).terminate().await.expect("exited");
    assert!(status.success(), "ns-as exited with {status}");
}
