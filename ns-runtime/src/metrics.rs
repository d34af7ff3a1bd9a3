//! A small Prometheus registry: counters, gauges and histograms, each a family of series
//! told apart by fixed label values, rendered in the text format.
//!
//! Every series is registered once, up front or on first use, and the caller keeps its
//! `Arc`: an observation is a few relaxed atomic operations, never a lock or a look-up.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the latency histograms: 0.1 ms to 10 s, about three per decade
/// (the embedded store answers most calls well under a millisecond; a remote database and
/// a stalled disk take seconds).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The histogram of the time from a notification's acceptance (its `created_at`) to its
/// write to a UA: on a WebSocket (ns-ua-ws) or in the answer to a pull (ns-ua-udp).
pub const DELIVERY_LATENCY: &str = "ns_delivery_latency_seconds";

/// The series of [`DELIVERY_LATENCY`] for one dialect (`telefonica`, `webpush`) and way
/// (`websocket`, `pull`).
pub fn delivery_latency(r: &Registry, dialect: &str, via: &str) -> Arc<Histogram> {
    r.histogram(
        DELIVERY_LATENCY,
        "Time from a notification's acceptance to its write to a UA, by dialect and way \
         (websocket or pull), to the millisecond; one sent again after a reconnection counts \
         again.",
        &[("dialect", dialect), ("via", via)],
        // From 1 ms: acceptance times are kept in whole milliseconds, so a finer bucket
        // would only show the rounding.
        &LATENCY_BUCKETS[3..],
    )
}

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

/// Observations counted in buckets by upper bound, with their sum: durations, in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus one for `+Inf`; not cumulative (rendering adds them up).
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // `le` is inclusive: the first bound not below the value.
        let i = self.bounds.partition_point(|b| *b < secs);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observes the time since `start`.
    pub fn since(&self, start: Instant) {
        self.observe(start.elapsed());
    }

    /// Observes a span of wall-clock milliseconds; a negative one (clocks of two hosts a
    /// little apart) counts as zero.
    pub fn observe_millis(&self, millis: i64) {
        self.observe(Duration::from_millis(u64::try_from(millis).unwrap_or(0)));
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The sum of the observations.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

enum Value {
    Scalar(Arc<Metric>),
    Histogram(Arc<Histogram>),
}

/// One series of a family: its labels rendered once (`a="x",b="y"`, or empty).
struct Series {
    labels: String,
    value: Value,
}

/// The series of one metric name, rendered under one `HELP` and `TYPE`.
struct Family {
    name: String,
    help: &'static str,
    kind: Kind,
    series: Vec<Series>,
}

/// The metrics of a process. Cloning shares it.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<Vec<Family>>>);

impl Registry {
    pub fn counter(&self, name: &str, help: &'static str) -> Arc<Metric> {
        self.counter_with(name, help, &[])
    }

    /// The series of counter `name` with these label values.
    pub fn counter_with(
        &self,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Arc<Metric> {
        self.scalar(name, help, Kind::Counter, labels)
    }

    pub fn gauge(&self, name: &str, help: &'static str) -> Arc<Metric> {
        self.gauge_with(name, help, &[])
    }

    /// The series of gauge `name` with these label values.
    pub fn gauge_with(
        &self,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Arc<Metric> {
        self.scalar(name, help, Kind::Gauge, labels)
    }

    /// The series of histogram `name` with these label values; `bounds` are ascending
    /// upper bounds, in seconds (see [`LATENCY_BUCKETS`]).
    pub fn histogram(
        &self,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
        bounds: &'static [f64],
    ) -> Arc<Histogram> {
        let made = self.register(name, help, Kind::Histogram, labels, || {
            Value::Histogram(Arc::new(Histogram::new(bounds)))
        });
        match made {
            Some(Value::Histogram(h)) => h,
            // Another kind under this name: counted, but not rendered.
            _ => Arc::new(Histogram::new(bounds)),
        }
    }

    fn scalar(
        &self,
        name: &str,
        help: &'static str,
        kind: Kind,
        labels: &[(&str, &str)],
    ) -> Arc<Metric> {
        match self.register(name, help, kind, labels, || Value::Scalar(Arc::default())) {
            Some(Value::Scalar(m)) => m,
            _ => Arc::default(),
        }
    }

    /// The series of `name` with `labels`, made by `make` if new; `None` when `name` is a
    /// family of another kind (a programming error, logged).
    fn register(
        &self,
        name: &str,
        help: &'static str,
        kind: Kind,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Value,
    ) -> Option<Value> {
        let labels = render_labels(labels);
        let mut families = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let family = match families.iter().position(|f| f.name == name) {
            Some(i) => &mut families[i],
            None => {
                families.push(Family {
                    name: name.to_owned(),
                    help,
                    kind,
                    series: Vec::new(),
                });
                families.last_mut()?
            }
        };
        if family.kind != kind {
            tracing::error!(metric = name, "a metric registered again as another type");
            return None;
        }
        let value = match family.series.iter().find(|s| s.labels == labels) {
            Some(s) => &s.value,
            None => {
                family.series.push(Series {
                    labels,
                    value: make(),
                });
                &family.series.last()?.value
            }
        };
        Some(match value {
            Value::Scalar(m) => Value::Scalar(m.clone()),
            Value::Histogram(h) => Value::Histogram(h.clone()),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for f in families.iter() {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.name());
            for s in &f.series {
                match &s.value {
                    Value::Scalar(m) => {
                        let _ = writeln!(out, "{}{} {}", f.name, braced(&s.labels), m.get());
                    }
                    Value::Histogram(h) => render_histogram(&mut out, &f.name, &s.labels, h),
                }
            }
        }
        out
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    let bounds = h.bounds.iter().map(|b| b.to_string());
    for (le, bucket) in bounds
        .chain(std::iter::once("+Inf".to_owned()))
        .zip(h.buckets.iter())
    {
        cumulative += bucket.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    let labels = braced(labels);
    let _ = writeln!(out, "{name}_sum{labels} {}", h.sum().as_secs_f64());
    // The count is the `+Inf` bucket's, so that the two always agree.
    let _ = writeln!(out, "{name}_count{labels} {cumulative}");
}

fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
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

    #[test]
    fn a_family_has_one_help_and_type_and_a_line_per_label_value() {
        let r = Registry::default();
        r.gauge_with("ns_c", "Cs.", &[("dialect", "webpush")])
            .set(2);
        r.gauge_with("ns_c", "Cs.", &[("dialect", "telefonica")])
            .inc();
        r.gauge_with("ns_c", "Cs.", &[("dialect", "webpush")]).inc();
        r.counter_with("ns_e_total", "Es.", &[("a", "x\"y"), ("b", "1")])
            .inc();
        let text = r.render();
        assert_eq!(text.matches("# TYPE ns_c gauge").count(), 1, "{text}");
        assert!(text.contains("ns_c{dialect=\"webpush\"} 3\n"), "{text}");
        assert!(text.contains("ns_c{dialect=\"telefonica\"} 1\n"), "{text}");
        assert!(
            text.contains("ns_e_total{a=\"x\\\"y\",b=\"1\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn histograms_count_cumulatively_with_inclusive_bounds() {
        let r = Registry::default();
        let h = r.histogram("ns_t_seconds", "Ts.", &[("op", "get")], &[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        h.observe_millis(-3);
        assert_eq!(h.count(), 5);
        let text = r.render();
        let expected = "# TYPE ns_t_seconds histogram\n\
            ns_t_seconds_bucket{op=\"get\",le=\"0.001\"} 3\n\
            ns_t_seconds_bucket{op=\"get\",le=\"0.01\"} 4\n\
            ns_t_seconds_bucket{op=\"get\",le=\"+Inf\"} 5\n\
            ns_t_seconds_sum{op=\"get\"} 2.0065\n\
            ns_t_seconds_count{op=\"get\"} 5\n";
        assert!(text.contains(expected), "{text}");
    }

    #[test]
    fn another_kind_under_a_taken_name_is_not_rendered() {
        let r = Registry::default();
        r.counter("ns_z_total", "Zs.").inc();
        r.gauge("ns_z_total", "Zs.").set(7);
        let text = r.render();
        assert!(text.contains("ns_z_total 1\n"), "{text}");
        assert!(!text.contains(" 7"), "{text}");
    }
}
