//! `ns-bench` keeps working: each scenario, small, in both dialects, against the one-process
//! server running in this test's process. The figures are not judged here (BENCHMARKS.md has them); what is
//! checked is that every notification the server accepted was counted as delivered, and
//! nothing failed.

use ns_tests::{Backend, Cluster};
use serde_json::Value;

/// Runs one scenario with `--json` against `c` and returns its results.
async fn bench(c: &Cluster, args: &[&str]) -> Value {
    // The server is this process.
    let pid = std::process::id().to_string();
    let ws = c.ws_url(0);
    let udp = c.udp_url.clone();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ns-bench"))
        .args(["--ws", &ws, "--udp-http", &udp, "--pid", &pid, "--json"])
        .args(args)
        .output()
        .await
        .expect("running ns-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ns-bench {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("not JSON: {stdout}"));
    assert_eq!(report["scenario"], args[0]);
    let dialect = match args.windows(2).find(|w| w[0] == "--dialect") {
        Some(w) => w[1],
        None => "telefonica",
    };
    assert_eq!(report["dialect"], dialect);
    assert_eq!(report["vapid"], args.contains(&"--vapid"));
    report["results"].clone()
}

fn empty(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.is_empty())
}

/// A throughput report of `sent` notifications, 300 of them measured: every one accepted
/// and delivered once, without errors.
fn every_one_delivered_once(r: &Value, sent: u64) {
    assert_eq!(r["accepted"], sent, "{r}");
    assert_eq!(r["delivered"], sent, "{r}");
    assert_eq!(r["missing"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert!(empty(&r["notify_errors"]) && empty(&r["ua_errors"]), "{r}");
    // Warm-up notifications are delivered but not measured.
    assert_eq!(r["latency_notify_to_ua"]["count"], 300, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_counts_every_delivery() {
    let c = Cluster::start(Backend::Embedded).await;

    let r = bench(&c, &["idle", "--connections", "300", "--hold-secs", "1"]).await;
    assert_eq!(r["connected"], 300, "{r}");
    assert!(
        empty(&r["failed"]) && empty(&r["dropped_while_held"]),
        "{r}"
    );
    assert!(
        r["server_bytes_per_connection"].as_u64().unwrap() > 0,
        "{r}"
    );

    for (args, sent) in [
        (&["throughput", "--uas", "20", "--count", "300"][..], 300),
        (
            &[
                "throughput",
                "--uas",
                "20",
                "--count",
                "300",
                "--rate",
                "500",
                "--warmup",
                "20",
            ],
            320,
        ),
    ] {
        let r = bench(&c, args).await;
        assert_eq!(r["deliveries_owed"], sent, "{r}");
        every_one_delivered_once(&r, sent);
    }

    let r = bench(&c, &["fanout", "--uas", "10", "--count", "50"]).await;
    assert_eq!(r["accepted"], 50, "{r}");
    assert_eq!(r["deliveries_owed"], 500, "{r}");
    assert_eq!(r["delivered"], 500, "{r}");
    assert!(empty(&r["notify_errors"]) && empty(&r["ua_errors"]), "{r}");

    let r = bench(&c, &["stored", "--uas", "10", "--count", "300"]).await;
    assert_eq!(r["accepted"], 300, "{r}");
    assert_eq!(r["delivered"], 300, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert!(empty(&r["ua_errors"]), "{r}");

    let r = bench(&c, &["wakeup", "--uas", "5", "--count", "20"]).await;
    assert_eq!(r["woken"], 20, "{r}");
    assert_eq!(r["pulled"], 20, "{r}");
    assert!(empty(&r["errors"]), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webpush_scenarios_run_and_count_every_delivery() {
    let c = Cluster::start(Backend::Embedded).await;
    let webpush = |args: &[&'static str]| -> Vec<&'static str> {
        let mut all = vec![args[0], "--dialect", "webpush"];
        all.extend(&args[1..]);
        all
    };

    let r = bench(
        &c,
        &webpush(&["idle", "--connections", "200", "--hold-secs", "1"]),
    )
    .await;
    assert_eq!(r["connected"], 200, "{r}");
    assert!(
        empty(&r["failed"]) && empty(&r["dropped_while_held"]),
        "{r}"
    );

    for (args, sent) in [
        (&["throughput", "--uas", "20", "--count", "300"][..], 300),
        (
            &[
                "throughput",
                "--uas",
                "20",
                "--count",
                "300",
                "--rate",
                "500",
                "--warmup",
                "20",
                "--vapid",
            ],
            320,
        ),
    ] {
        let r = bench(&c, &webpush(args)).await;
        every_one_delivered_once(&r, sent);
    }

    let r = bench(&c, &webpush(&["stored", "--uas", "10", "--count", "300"])).await;
    assert_eq!(r["accepted"], 300, "{r}");
    assert_eq!(r["delivered"], 300, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert!(empty(&r["ua_errors"]), "{r}");
}

#[tokio::test]
async fn webpush_refuses_what_it_has_no_equivalent_for() {
    for scenario in ["fanout", "wakeup"] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ns-bench"))
            .args(["--dialect", "webpush", scenario])
            .output()
            .await
            .expect("running ns-bench");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("no Web Push equivalent"), "{stderr}");
    }
}
