//! `ns-bench` keeps working: each scenario, small, against the one-process server running in
//! this test's process. The figures are not judged here (BENCHMARKS.md has them); what is
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
    report["results"].clone()
}

fn empty(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.is_empty())
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
        assert_eq!(r["accepted"], sent, "{r}");
        assert_eq!(r["deliveries_owed"], sent, "{r}");
        assert_eq!(r["delivered"], sent, "{r}");
        assert_eq!(r["missing"], 0, "{r}");
        assert!(empty(&r["notify_errors"]) && empty(&r["ua_errors"]), "{r}");
        // Warm-up notifications are delivered but not measured.
        assert_eq!(r["latency_notify_to_ua"]["count"], 300, "{r}");
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
