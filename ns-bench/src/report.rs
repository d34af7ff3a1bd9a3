//! What a scenario found: a table for people, one JSON object for programs.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::dialect::{Client, Dialect};
use crate::procstat::Usage;

pub(crate) struct Report {
    scenario: &'static str,
    dialect: Dialect,
    /// Whether the push requests were signed with VAPID.
    vapid: bool,
    params: Map<String, Value>,
    results: Vec<(String, Value)>,
}

impl Report {
    /// The report of `scenario` run by `client`, with the settings that shape it.
    pub(crate) fn new(scenario: &'static str, client: &Client, params: Value) -> Report {
        Report {
            scenario,
            dialect: client.dialect(),
            vapid: client.signs(),
            params: params.as_object().cloned().unwrap_or_default(),
            results: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, name: &str, value: impl Into<Value>) {
        self.results.push((name.to_owned(), value.into()));
    }

    /// p50, p90, p99, p99.9 and max of a histogram of microseconds, in milliseconds.
    pub(crate) fn latency(&mut self, name: &str, h: &Histogram<u64>) {
        if h.is_empty() {
            self.add(name, Value::Null);
            return;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        self.add(
            name,
            json!({
                "count": h.len(),
                "p50_ms": ms(h.value_at_quantile(0.50)),
                "p90_ms": ms(h.value_at_quantile(0.90)),
                "p99_ms": ms(h.value_at_quantile(0.99)),
                "p99.9_ms": ms(h.value_at_quantile(0.999)),
                "max_ms": ms(h.max()),
            }),
        );
    }

    /// Memory and CPU of the watched servers and of the load generator.
    pub(crate) fn usage(&mut self, usage: &Usage, watching_servers: bool) {
        if watching_servers {
            self.add(
                "server_rss_mib",
                round(usage.server_rss_kib.1 as f64 / 1024.0),
            );
            self.add("server_cpu_cores", round(usage.server_cores));
        }
        self.add("load_generator_cpu_cores", round(usage.own_cores));
        self.add(
            "load_generator_rss_mib",
            round(usage.own_rss_kib as f64 / 1024.0),
        );
    }

    /// Server CPU-seconds per 1,000 of `done` (the notifications, or deliveries, the watch
    /// covered): the figure this noisy machine disturbs least.
    pub(crate) fn cpu_per_thousand(&mut self, usage: &Usage, watching_servers: bool, done: u64) {
        if watching_servers && done > 0 {
            self.add(
                "server_cpu_s_per_1000",
                round(usage.server_cpu_secs * 1000.0 / done as f64),
            );
        }
    }

    pub(crate) fn to_json(&self) -> String {
        let results: Map<String, Value> = self.results.iter().cloned().collect();
        json!({
            "scenario": self.scenario,
            "dialect": self.dialect.name(),
            "vapid": self.vapid,
            "params": self.params,
            "results": results,
        })
        .to_string()
    }

    pub(crate) fn to_table(&self) -> String {
        let mut out = String::new();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let vapid = if self.vapid { ", VAPID" } else { "" };
        let _ = writeln!(
            out,
            "{} [{}{vapid}]  ({})",
            self.scenario,
            self.dialect.name(),
            params.join(" ")
        );
        let width = self.results.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (name, value) in &self.results {
            let shown = match value {
                Value::Object(fields) => fields
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join("  "),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "  {name:<width$}  {shown}");
        }
        out
    }
}

/// Three decimals are plenty for rates, seconds and cores.
pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// An empty latency histogram in microseconds, up to an hour, three significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json_carry_the_same_results() {
        let client = Client::new(Dialect::Webpush, true).unwrap();
        let mut r = Report::new("throughput", &client, json!({ "uas": 10 }));
        r.add("delivered", 5);
        let mut h = histogram();
        for us in [1_000, 2_000, 3_000] {
            h.record(us).unwrap();
        }
        r.latency("latency", &h);
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["scenario"], "throughput");
        assert_eq!(v["dialect"], "webpush");
        assert_eq!(v["vapid"], true);
        assert_eq!(v["params"]["uas"], 10);
        assert_eq!(v["results"]["delivered"], 5);
        assert_eq!(v["results"]["latency"]["count"], 3);
        // Three significant digits: 3 ms is reported within 0.1 %.
        let max = v["results"]["latency"]["max_ms"].as_f64().unwrap();
        assert!((3.0..3.003).contains(&max), "{max}");
        let table = r.to_table();
        assert!(
            table.starts_with("throughput [webpush, VAPID]  (uas=10)"),
            "{table}"
        );
        assert!(table.contains("delivered  5"), "{table}");
    }
}
