//! A small Prometheus registry: counters and gauges rendered in the text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count, or (through [`Metric::set`]) a gauge.
#[derive(Debug, Default)]
pub struct Metric(AtomicI64);

impl Metric {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.add(-1);
    }
    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Entry {
    name: String,
    help: &'static str,
    kind: &'static str,
    metric: Arc<Metric>,
}

/// The metrics of a process. Cloning shares it.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<Vec<Entry>>>);

impl Registry {
    pub fn counter(&self, name: &str, help: &'static str) -> Arc<Metric> {
        self.register(name, help, "counter")
    }

    pub fn gauge(&self, name: &str, help: &'static str) -> Arc<Metric> {
        self.register(name, help, "gauge")
    }

    fn register(&self, name: &str, help: &'static str, kind: &'static str) -> Arc<Metric> {
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.iter().find(|e| e.name == name) {
            return e.metric.clone();
        }
        let metric = Arc::new(Metric::default());
        entries.push(Entry {
            name: name.to_owned(),
            help,
            kind,
            metric: metric.clone(),
        });
        metric
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for e in entries.iter() {
            let _ = writeln!(out, "# HELP {} {}", e.name, e.help);
            let _ = writeln!(out, "# TYPE {} {}", e.name, e.kind);
            let _ = writeln!(out, "{} {}", e.name, e.metric.get());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format_and_shares_by_name() {
        let r = Registry::default();
        r.counter("ns_x_total", "Xs.").add(2);
        r.counter("ns_x_total", "Xs.").inc();
        r.gauge("ns_y", "Ys.").set(-1);
        let text = r.render();
        assert!(text.contains("# TYPE ns_x_total counter\nns_x_total 3\n"));
        assert!(text.contains("# TYPE ns_y gauge\nns_y -1\n"));
    }
}
