//! The Prometheus metrics of the real binaries, in both deployments: after one notification
//! delivered in each dialect and a few refusals, every port's `/metrics` is valid text
//! exposition named by the conventions, shows the traffic in its histograms, gauges and
//! refusal counters, and has every metric the Grafana dashboard
//! (`contrib/grafana/ns-dashboard.json`) queries. The binaries' start-up lines name the
//! URLs they listen on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ns_tests::faults::binaries;
use ns_tests::webpush::PushUa;
use ns_tests::{eventually, Backend, Cluster, Options, Role, Ua};
use serde_json::{json, Value};

ns_tests::both_modes!(metrics_of_the_binaries);

const DEADLINE: Duration = Duration::from_secs(20);

/// Label names to values.
type Labels = BTreeMap<String, String>;

/// One sample line: its name, labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// One port's `/metrics`, parsed and checked as text exposition.
#[derive(Debug, Default)]
struct Scrape {
    /// Family name to its `TYPE`.
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses `text`, panicking (with `port` in the message) at the first line that is not
    /// valid exposition or breaks a naming convention.
    fn parse(port: &str, text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        let mut helped = HashSet::new();
        for line in text.lines() {
            let fail = |why: &str| -> ! { panic!("{port}/metrics: {why}: {line:?}\n{text}") };
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or_else(|| fail("no help text"));
                if help.trim().is_empty() || !helped.insert(name.to_owned()) {
                    fail("an empty or second HELP");
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| fail("no type"));
                if !helped.contains(name) {
                    fail("a TYPE without its HELP before it");
                }
                check_name_convention(name, kind).unwrap_or_else(|why| fail(&why));
                if scrape
                    .types
                    .insert(name.to_owned(), kind.to_owned())
                    .is_some()
                {
                    fail("a second TYPE");
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let sample = parse_sample(line).unwrap_or_else(|why| fail(&why));
            if scrape.family_of(&sample.name).is_none() {
                fail("a sample before (or without) its family's TYPE");
            }
            scrape.samples.push(sample);
        }
        scrape.check_histograms(port);
        scrape
    }

    /// The family a sample name belongs to: itself, or a histogram's for its `_bucket`,
    /// `_sum` and `_count` series.
    fn family_of(&self, sample: &str) -> Option<&str> {
        if let Some((name, _)) = self.types.get_key_value(sample) {
            return (self.types[sample] != "histogram").then_some(name.as_str());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = sample.strip_suffix(suffix)?;
            let (name, kind) = self.types.get_key_value(base)?;
            (kind == "histogram").then_some(name.as_str())
        })
    }

    /// Every histogram series: buckets cumulative, ending at `+Inf`, which equals `_count`.
    fn check_histograms(&self, port: &str) {
        // Each series (name and labels but `le`) to its buckets' bounds and counts.
        let mut buckets: BTreeMap<(String, Labels), Vec<(f64, f64)>> = BTreeMap::new();
        for s in &self.samples {
            if let Some(base) = s.name.strip_suffix("_bucket") {
                let mut labels = s.labels.clone();
                let le = labels.remove("le").expect("a bucket has `le`");
                let le: f64 = le.parse().expect("`le` is a number or +Inf");
                buckets
                    .entry((base.to_owned(), labels))
                    .or_default()
                    .push((le, s.value));
            }
        }
        for ((base, labels), series) in &buckets {
            let what = format!("{port}/metrics: {base}{labels:?}");
            assert!(
                series
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{what}: buckets not ascending and cumulative: {series:?}"
            );
            let last = series.last().expect("a bucket");
            assert!(last.0.is_infinite(), "{what}: no +Inf bucket");
            assert_eq!(
                Some(last.1),
                self.value(&format!("{base}_count"), labels),
                "{what}: +Inf bucket and _count differ"
            );
            assert!(
                self.value(&format!("{base}_sum"), labels).is_some(),
                "{what}: no _sum"
            );
        }
    }

    /// The value of the sample with exactly these labels.
    fn value(&self, name: &str, labels: &Labels) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && &s.labels == labels)
            .map(|s| s.value)
    }

    /// The sum of the samples of `name` whose labels include `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

/// Counters end `_total`; histograms, all durations here, in `_seconds`; gauges neither;
/// no duration in a unit other than the second.
fn check_name_convention(name: &str, kind: &str) -> Result<(), String> {
    let valid = name.starts_with("ns_")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(format!("{name}: not an ns_ snake_case name"));
    }
    let not_base_units = [
        "_ms",
        "_millis",
        "_milliseconds",
        "_micros",
        "_nanos",
        "_minutes",
    ];
    if not_base_units.iter().any(|u| name.contains(u)) {
        return Err(format!("{name}: a duration not in seconds"));
    }
    let ok = match kind {
        "counter" => name.ends_with("_total"),
        "histogram" => name.ends_with("_seconds"),
        "gauge" => !name.ends_with("_total") && !name.ends_with("_seconds"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{name}: a {kind} against the naming conventions"))
    }
}

/// `name{a="x",b="y"} value` or `name value`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or_else(|| "no value".to_owned())?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner
                .split_once("=\"")
                .ok_or_else(|| "a label without `=\"`".to_owned())?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("a bad escape in a label value".to_owned()),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated label value".to_owned()),
                }
            };
            if labels.insert(key.to_owned(), value).is_some() {
                return Err("a label twice".to_owned());
            }
            inner = &after[end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or_else(|| "no space before the value".to_owned())?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("not a number: {v}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `/metrics` of every port, parsed: port URL to its scrape.
async fn scrape_all(c: &Cluster) -> Vec<(String, Scrape)> {
    let mut all = Vec::new();
    for url in c.http_ports() {
        let scrape = scrape(c, &url).await;
        all.push((url, scrape));
    }
    all
}

async fn scrape(c: &Cluster, url: &str) -> Scrape {
    let response = c
        .client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200, "{url}/metrics");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("a text body");
    Scrape::parse(url, &text)
}

/// The sum of the samples of `name` with `with` at the port `url`.
async fn value_at(c: &Cluster, url: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    scrape(c, url).await.sum(name, with)
}

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("contrib/grafana/ns-dashboard.json")
}

/// Every `ns_` name in the `expr` of every query of the dashboard, as written.
fn dashboard_metrics() -> HashSet<String> {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(
        dashboard["schemaVersion"].as_u64().map(|v| v >= 36),
        Some(true)
    );
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "too few queries: {exprs:?}");
    let mut names = HashSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("ns_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The processes of every role, logging at info level to a file of their own.
fn options(backend: Backend, log: &Path) -> Options {
    let b = binaries();
    let processes = match backend {
        Backend::Embedded => vec![(Role::Standalone, b.standalone.clone())],
        Backend::Distributed => vec![
            (Role::Notify, b.notify.clone()),
            (Role::Monitor, b.monitor.clone()),
            (Role::FrontEnd(0), b.front_end.clone()),
            (Role::Wakeup, b.wakeup.clone()),
        ],
    };
    Options {
        processes,
        process_log: Some(log.to_owned()),
        log_filter: Some("info".into()),
        ..Default::default()
    }
}

async fn metrics_of_the_binaries(b: Backend) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = dir.path().join("server.log");
    let c = Cluster::start_with(b, options(b, &log)).await;
    let ws = c.ws[0].clone();
    let refusals = "ns_refusals_total";
    let bad_json = [
        ("service", "ns-as"),
        ("dialect", "telefonica"),
        ("code", "450"),
    ];
    let http_before = value_at(&c, &c.as_url, refusals, &bad_json).await;

    // One notification end to end in each dialect; both UAs stay connected.
    let token = c.token().await;
    let mut ua = Ua::registered(&c.ws_url(0), &token).await;
    let url = ua.register_wa("wa-metrics").await;
    let (status, answer) = c
        .notify(&url, &json!({"id": "m1", "message": "hi"}).to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    let got = ua.notifications(1).await;
    assert_eq!(got[0]["message"], "hi", "{got:?}");

    let mut push_ua = PushUa::hello(&c.ws_url(0), None).await;
    let sub = push_ua.subscribe(None).await;
    let sent = sub.message("hello", 60).send().await;
    assert_eq!(sent.status, 201, "{sent:?}");
    let message = push_ua.notification().await;
    assert_eq!(sub.decrypt(&message), "hello");

    // Refusals: an HTTP one, and a WebSocket one in each dialect.
    let (status, answer) = c.notify(&url, "not json").await;
    assert_eq!(
        (status, answer["code"].as_u64()),
        (400, Some(450)),
        "{answer}"
    );
    let mut bad = Ua::connect(&c.ws_url(0), "").await;
    bad.command("no/such/command", json!({})).await;
    let code = bad.next_error_code().await.to_string();
    let ws_refusal = [
        ("service", "ns-ua-ws"),
        ("dialect", "telefonica"),
        ("code", code.as_str()),
    ];
    let mut bad_push = PushUa::hello(&c.ws_url(0), None).await;
    bad_push
        .send(json!({"messageType": "hello", "use_webpush": true}))
        .await;
    bad_push.closed().await;
    let ws_push_refusal = [
        ("service", "ns-ua-ws"),
        ("dialect", "webpush"),
        ("code", "1002"),
    ];

    let http_after = value_at(&c, &c.as_url, refusals, &bad_json).await;
    assert!(http_after > http_before, "{http_before} → {http_after}");
    eventually("the WebSocket refusals counted", DEADLINE, || async {
        let s = scrape(&c, &ws).await;
        (s.sum(refusals, &ws_refusal) >= 1.0 && s.sum(refusals, &ws_push_refusal) >= 1.0)
            .then_some(())
    })
    .await;

    // The observations of the traffic: some are made just after the frame went out.
    let histograms = [
        (
            "ns_as_notify_duration_seconds",
            vec![("dialect", "telefonica")],
        ),
        (
            "ns_as_notify_duration_seconds",
            vec![("dialect", "webpush")],
        ),
        (
            "ns_delivery_latency_seconds",
            vec![("dialect", "telefonica"), ("via", "websocket")],
        ),
        (
            "ns_delivery_latency_seconds",
            vec![("dialect", "webpush"), ("via", "websocket")],
        ),
        (
            "ns_store_operation_duration_seconds",
            vec![("operation", "stage_notification")],
        ),
        (
            "ns_store_operation_duration_seconds",
            vec![("operation", "add_deliveries")],
        ),
        (
            "ns_broker_operation_duration_seconds",
            vec![("operation", "publish")],
        ),
        (
            "ns_broker_operation_duration_seconds",
            vec![("operation", "ack")],
        ),
        ("ns_broker_message_handling_duration_seconds", vec![]),
    ];
    let scrapes = eventually("every histogram observed", DEADLINE, || async {
        let scrapes = scrape_all(&c).await;
        let observed = |(name, labels): &(&str, Vec<(&str, &str)>)| {
            let count = format!("{name}_count");
            scrapes
                .iter()
                .map(|(_, s)| s.sum(&count, labels))
                .sum::<f64>()
                > 0.0
        };
        histograms.iter().all(observed).then_some(scrapes)
    })
    .await;

    // Open connections per dialect: the two UAs still connected.
    let total = |name: &str, with: &[(&str, &str)]| -> f64 {
        let at_ws = scrapes
            .iter()
            .find(|(url, _)| *url == ws)
            .expect("the ws port");
        at_ws.1.sum(name, with)
    };
    for dialect in ["telefonica", "webpush"] {
        let open = total("ns_ws_connections", &[("dialect", dialect)]);
        assert!(open >= 1.0, "{dialect}: {open} open connections");
    }

    // Every metric the dashboard queries is served by some port.
    let mut families: HashMap<String, String> = HashMap::new();
    for (_, s) in &scrapes {
        families.extend(s.types.clone());
    }
    for name in ["ns_pending_notifications", "ns_ws_connections"] {
        assert_eq!(
            families.get(name).map(String::as_str),
            Some("gauge"),
            "{name}"
        );
    }
    let mut missing = Vec::new();
    for name in dashboard_metrics() {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| families.get(*base).map(String::as_str) == Some("histogram"))
            .unwrap_or(&name);
        if !families.contains_key(family) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no port serves: {missing:?}"
    );

    startup_lines_name_the_urls(&c, &log).await;
    ua.close().await;
    push_ua.close().await;
}

/// Each service said where it listens, as a URL, and no log line shows an `Option`.
async fn startup_lines_name_the_urls(c: &Cluster, log: &Path) {
    let expected = [
        format!("listening on {} (notify)", c.as_url),
        format!("listening on {} (monitor)", c.monitor_url),
        format!("listening on {} (WebSocket)", c.ws[0]),
        format!("listening on {} (pull and ack)", c.udp_url),
    ];
    let text = eventually("the start-up lines", DEADLINE, || async {
        let text = std::fs::read_to_string(log).ok()?;
        expected
            .iter()
            .all(|line| text.contains(line.as_str()))
            .then_some(text)
    })
    .await;
    assert!(!text.contains("Some("), "{text}");
    assert!(text.contains("wake-ups sent from udp 0.0.0.0:"), "{text}");
}
