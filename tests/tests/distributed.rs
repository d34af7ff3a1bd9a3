//! What only the distributed mode has: several ns-ua-ws instances, a monitor that restarts
//! with notifications in flight, draining on SIGTERM, and a database outage.

use std::time::Duration;

use ns_tests::{eventually, Backend, Cluster, Options, Ua, UaEvent};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

async fn two_instances() -> Cluster {
    Cluster::start_with(
        Backend::Distributed,
        Options {
            ws_instances: 2,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uatoken_is_live_on_one_connection_across_instances() {
    let c = two_instances().await;
    let token = c.token().await;
    let mut on_first = Ua::registered(&c.ws_url(0), &token).await;
    let url = on_first.register_wa("wa-cluster").await;
    // Another UA on the second instance registered for the same WA.
    let other_token = c.token().await;
    let mut other = Ua::registered(&c.ws_url(1), &other_token).await;
    assert_eq!(other.register_wa("wa-cluster").await, url);

    let (_, v) = c
        .notify(&url, &json!({"id": "a", "message": "both"}).to_string())
        .await;
    assert_eq!(
        on_first.next_notifications().await[0]["messageId"],
        v["messageId"]
    );
    assert_eq!(
        other.next_notifications().await[0]["messageId"],
        v["messageId"]
    );

    // The same uatoken registers on the second instance: the first connection is closed.
    let mut moved = Ua::registered(&c.ws_url(1), &token).await;
    assert_eq!(on_first.next_event(DEADLINE).await, Some(UaEvent::Closed));
    // "a" was never acked, so the new connection gets it again first.
    let again = moved.next_notifications().await;
    assert_eq!(again[0]["id"], "a");
    let a_id = again[0]["messageId"].as_str().unwrap().to_owned();
    moved.ack(&[&a_id]).await;
    let (_, v) = c
        .notify(&url, &json!({"id": "b", "message": "moved"}).to_string())
        .await;
    assert_eq!(
        moved.next_notifications().await[0]["messageId"],
        v["messageId"]
    );
    assert_eq!(
        other.next_notifications().await[0]["messageId"],
        v["messageId"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_restart_with_notifications_in_flight_loses_none() {
    let mut c = Cluster::start(Backend::Distributed).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let url = ua.register_wa("wa-restart").await;

    c.proc("ns-msg-monitor").kill();
    let mut ids = std::collections::HashSet::new();
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
    c.proc("ns-msg-monitor").start();
    let mut got = std::collections::HashSet::new();
    while got.len() < ids.len() {
        for n in ua.next_notifications().await {
            got.insert(n["messageId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(got, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_and_exits_cleanly() {
    let mut c = Cluster::start(Backend::Distributed).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let status = c
        .proc("ns-ua-ws")
        .terminate()
        .await
        .expect("ns-ua-ws exited");
    assert!(status.success(), "ns-ua-ws exited with {status}");
    assert_eq!(ua.next_event(DEADLINE).await, Some(UaEvent::Closed));
    for name in ["ns-as", "ns-msg-monitor", "ns-ua-udp"] {
        let status = c.proc(name).terminate().await.expect("exited");
        assert!(status.success(), "{name} exited with {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_to_a_dead_front_end_stays_pending() {
    let mut c = Cluster::start(Backend::Distributed).await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let url = ua.register_wa("wa-dead").await;
    // The front-end dies without telling anyone: the route still points at it.
    c.proc("ns-ua-ws").kill();
    let _ = ua.next_event(Duration::from_secs(5)).await;
    let (status, v) = c
        .notify(&url, &json!({"id": "d", "message": "kept"}).to_string())
        .await;
    assert_eq!(status, 200);
    c.proc("ns-ua-ws").start();
    c.wait_healthy().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let got = ua.notifications(1).await;
    assert_eq!(got[0]["messageId"], v["messageId"]);
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
    let port = ns_tests::cluster::free_port();
    let mongo = PrivateMongo::start(port, tempfile::tempdir().unwrap());
    let c = Cluster::start_with(
        Backend::Distributed,
        Options {
            mongo_url: Some(format!(
                "mongodb://127.0.0.1:{}/?directConnection=true",
                mongo.port
            )),
            ..Default::default()
        },
    )
    .await;
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let url = ua.register_wa("wa-outage").await;
    let dir = mongo.stop();

    eventually("503 from ns-as", DEADLINE, || async {
        let (status, v) = c
            .notify(&url, &json!({"id": "o", "message": "m"}).to_string())
            .await;
        (status == 503 && v["code"] == 503).then_some(())
    })
    .await;
    eventually("503 from /health", DEADLINE, || async {
        let r = reqwest::get(format!("{}/health", c.as_url)).await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;

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
}
