//! The scenarios: set up UAs the way devices would, load the server, and measure what the
//! UAs see. Written once for both dialects; [`Client`] speaks the one chosen.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::dialect::{self, Client, Delivery, Device, Frame, Received};
use crate::http::{Answer, Connection, Url};
use crate::procstat::Watch;
use crate::report::{histogram, round, Report};
use crate::ua::Socket;
use crate::{LoadArgs, StoredArgs, Target, WakeupArgs};

/// UA set-ups in flight at once in the load scenarios.
const SETUP_CONCURRENCY: usize = 100;

/// Most notifications settled by one ack frame (both dialects' servers take up to 1,000).
const MAX_ACK_BATCH: usize = 500;

/// Failures counted by kind ("429", "connect: ...").
#[derive(Default)]
pub(crate) struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    pub(crate) fn count(&self, kind: impl Into<String>) {
        let mut kind: String = kind.into();
        kind.truncate(80);
        *self.0.lock().expect("errors lock").entry(kind).or_default() += 1;
    }

    /// The protocol's code of a refused notify (Web Push: the status and its `errno`), else
    /// the HTTP status.
    fn count_answer(&self, answer: &Answer) {
        let body = serde_json::from_slice::<Value>(&answer.body).unwrap_or_default();
        let code = body["code"].as_u64().unwrap_or(answer.status as u64);
        match body["errno"].as_u64() {
            Some(errno) => self.count(format!("{code} errno {errno}")),
            None => self.count(code.to_string()),
        }
    }

    #[cfg(test)]
    fn total(&self) -> u64 {
        self.0.lock().expect("errors lock").values().sum()
    }

    pub(crate) fn to_json(&self) -> Value {
        json!(*self.0.lock().expect("errors lock"))
    }
}

/// Microseconds since the start of the run, shared by senders and receivers.
#[derive(Clone, Copy)]
pub(crate) struct Clock(pub(crate) Instant);

impl Clock {
    pub(crate) fn now_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// What the UAs saw, together.
struct Tally {
    clock: Clock,
    /// Notifications with a lower sequence number are warm-up: delivered, not measured.
    warmup: u64,
    delivered: AtomicU64,
    measured: AtomicU64,
    duplicates: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    errors: Errors,
}

impl Tally {
    fn new(clock: Clock, warmup: u64) -> Arc<Tally> {
        Arc::new(Tally {
            clock,
            warmup,
            delivered: AtomicU64::new(0),
            measured: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            first_us: AtomicU64::new(u64::MAX),
            last_us: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
            errors: Errors::default(),
        })
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Records one frame's notifications; returns what to ack.
    fn frame(&self, client: &Client, text: &str, seen: &mut HashSet<u64>) -> Vec<Value> {
        let now = self.clock.now_us();
        let items: Vec<Delivery> = match client.read(text) {
            Frame::Notifications(items) => items,
            Frame::KeepAlive => return Vec::new(),
            Frame::Unexpected => {
                self.errors.count(format!("frame: {text}"));
                return Vec::new();
            }
        };
        let mut acks = Vec::with_capacity(items.len());
        let mut latency = self.latency.lock().expect("latency lock");
        for n in items {
            match n.seq {
                Some(seq) if seen.insert(seq) => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    if seq >= self.warmup {
                        self.measured.fetch_add(1, Ordering::Relaxed);
                        if let Some(sent) = n.sent_us {
                            let _ = latency.record(now.saturating_sub(sent).max(1));
                        }
                    }
                }
                Some(_) => {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                None => self.errors.count("notification with a foreign id"),
            }
            acks.push(n.ack);
        }
        drop(latency);
        self.first_us.fetch_min(now, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::Relaxed);
        acks
    }
}

/// Reads a subscribed UA's frames until the connection ends, acking every notification.
/// Frames that have already arrived are read before acking, so one ack settles a burst.
async fn receive(ws: Socket, client: Arc<Client>, tally: Arc<Tally>) {
    let (mut sink, mut stream) = ws.split();
    let mut seen = HashSet::new();
    let mut open = true;
    while open {
        let mut acks = Vec::new();
        let mut frame = stream.next().await;
        loop {
            match frame {
                Some(Ok(Message::Text(text))) => {
                    acks.extend(tally.frame(&client, &text, &mut seen));
                }
                Some(Ok(Message::Close(_))) | None => open = false,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tally.errors.count(format!("websocket: {e}"));
                    open = false;
                }
            }
            if !open || acks.len() >= MAX_ACK_BATCH {
                break;
            }
            match stream.next().now_or_never() {
                Some(next) => frame = next,
                None => break,
            }
        }
        while open && !acks.is_empty() {
            let rest = acks.split_off(acks.len().min(MAX_ACK_BATCH));
            let ack = client.ack(std::mem::replace(&mut acks, rest));
            if let Err(e) = sink.send(Message::Text(ack.into())).await {
                tally.errors.count(format!("websocket: {e}"));
                open = false;
            }
        }
    }
}

/// Sets up `count` UAs, each subscribed with `watoken(i)` (and a UDP interface when given).
async fn devices(
    target: &Target,
    client: &Arc<Client>,
    count: usize,
    watoken: impl Fn(usize) -> String,
    interfaces: Option<&[SocketAddr]>,
) -> anyhow::Result<Vec<Device>> {
    let limit = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut set = JoinSet::new();
    for i in 0..count {
        let (client, ws_url, limit) = (
            client.clone(),
            target.front_end(i).to_owned(),
            limit.clone(),
        );
        let watoken = watoken(i);
        let interface = interfaces.map(|a| a[i]);
        set.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let (mut ws, identity) = client.connect(&ws_url, None, interface).await?;
            let endpoint = client.subscribe(&mut ws, &identity, &watoken).await?;
            anyhow::Ok((
                i,
                Device {
                    ws: Some(ws),
                    identity,
                    endpoint,
                },
            ))
        });
    }
    let mut all: Vec<(usize, Device)> = Vec::with_capacity(count);
    while let Some(joined) = set.join_next().await {
        all.push(joined??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, d)| d).collect())
}

/// What the senders did.
struct Sent {
    accepted: AtomicU64,
    /// Deliveries the accepted notifications are owed (one per subscribed UA).
    owed: AtomicU64,
    /// When the first measured notification was sent.
    measured_from_us: AtomicU64,
    last_answer_us: AtomicU64,
    errors: Errors,
}

/// Where notifications go and how fast.
struct Plan {
    client: Arc<Client>,
    /// Notify URLs or push endpoints, with how many UAs receive what is sent to each.
    targets: Vec<(Url, u64)>,
    total: u64,
    warmup: u64,
    rate: Option<f64>,
    http_conns: usize,
    payload: usize,
    priority: u8,
}

/// Sends `plan.total` notifications over `plan.http_conns` keep-alive connections: at
/// `plan.rate` (notification k leaves at k / rate seconds; one that leaves late carries its
/// scheduled time, so a slow server is charged for the queue it causes) or as fast as the
/// answers come.
async fn send(plan: Arc<Plan>, clock: Clock) -> Arc<Sent> {
    let sent = Arc::new(Sent {
        accepted: AtomicU64::new(0),
        owed: AtomicU64::new(0),
        measured_from_us: AtomicU64::new(u64::MAX),
        last_answer_us: AtomicU64::new(0),
        errors: Errors::default(),
    });
    let start = tokio::time::Instant::now();
    let started_us = clock.now_us();
    let workers = plan.http_conns.max(1) as u64;
    let mut set = JoinSet::new();
    for w in 0..workers {
        let (plan, sent) = (plan.clone(), sent.clone());
        set.spawn(async move {
            let mut conns: BTreeMap<String, Connection> = BTreeMap::new();
            let mut k = w;
            while k < plan.total {
                let stamp = match plan.rate {
                    Some(rate) => {
                        let offset = Duration::from_secs_f64(k as f64 / rate);
                        tokio::time::sleep_until(start + offset).await;
                        started_us + offset.as_micros() as u64
                    }
                    None => clock.now_us(),
                };
                if k == plan.warmup {
                    sent.measured_from_us.fetch_min(stamp, Ordering::Relaxed);
                }
                let (url, subscribers) = &plan.targets[(k % plan.targets.len() as u64) as usize];
                let conn = conns
                    .entry(url.authority.clone())
                    .or_insert_with(|| Connection::new(&url.authority));
                let request = plan
                    .client
                    .request(url, k, stamp, plan.payload, plan.priority);
                match conn.post(&url.path, &request.headers, request.body).await {
                    Ok(a) if plan.client.accepted(a.status) => {
                        sent.accepted.fetch_add(1, Ordering::Relaxed);
                        sent.owed.fetch_add(*subscribers, Ordering::Relaxed);
                    }
                    Ok(a) => sent.errors.count_answer(&a),
                    Err(e) => sent.errors.count(format!("http: {e}")),
                }
                sent.last_answer_us
                    .fetch_max(clock.now_us(), Ordering::Relaxed);
                k += workers;
            }
        });
    }
    while set.join_next().await.is_some() {}
    sent
}

/// Waits until `tally` has every owed delivery, or nothing new came for `quiet`.
async fn drain(tally: &Tally, owed: u64, quiet: Duration) {
    let mut last = (tally.delivered(), Instant::now());
    while tally.delivered() < owed {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = tally.delivered();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > quiet {
            break;
        }
    }
}

pub(crate) fn per_sec(count: u64, micros: u64) -> f64 {
    round(count as f64 / (micros.max(1) as f64 / 1e6))
}

/// How the load scenarios attach WAs to UAs.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Shape {
    /// `throughput`: each UA its own WA, so every notification has one receiver.
    OneWaPerUa,
    /// `fanout`: one WA registered by every UA.
    OneWaForAll,
}

pub(crate) async fn throughput(
    target: &Target,
    client: Arc<Client>,
    args: LoadArgs,
    shape: Shape,
) -> anyhow::Result<Report> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut devices = devices(
        target,
        &client,
        args.uas,
        |i| match shape {
            Shape::OneWaPerUa => format!("bench-{run}-{i}"),
            Shape::OneWaForAll => format!("bench-{run}"),
        },
        None,
    )
    .await?;
    let targets: Vec<(Url, u64)> = match shape {
        Shape::OneWaPerUa => devices
            .iter()
            .map(|d| Ok((Url::parse(&d.endpoint)?, 1)))
            .collect::<anyhow::Result<_>>()?,
        Shape::OneWaForAll => {
            let url = &devices.first().ok_or_else(|| anyhow!("no UAs"))?.endpoint;
            if devices.iter().any(|d| &d.endpoint != url) {
                bail!("UAs registering the same watoken got different notify URLs");
            }
            vec![(Url::parse(url)?, devices.len() as u64)]
        }
    };
    let clock = Clock(Instant::now());
    let tally = Tally::new(clock, args.warmup);
    for d in &mut devices {
        let ws = d.ws.take().expect("a connected UA");
        tokio::spawn(receive(ws, client.clone(), tally.clone()));
    }
    let plan = Arc::new(Plan {
        client: client.clone(),
        targets,
        total: args.count + args.warmup,
        warmup: args.warmup,
        rate: args.rate,
        http_conns: args.http_conns,
        payload: args.payload,
        priority: 4,
    });
    let watch = Watch::start(&target.pids);
    let sent = send(plan, clock).await;
    let owed = sent.owed.load(Ordering::Relaxed);
    drain(&tally, owed, Duration::from_secs(args.drain_secs)).await;
    let usage = watch.usage();

    let name = match shape {
        Shape::OneWaPerUa => "throughput",
        Shape::OneWaForAll => "fanout",
    };
    let mut report = Report::new(
        name,
        &client,
        json!({
            "uas": args.uas, "count": args.count, "warmup": args.warmup,
            "rate": args.rate.map_or(json!("max"), |r| json!(r)),
            "http_conns": args.http_conns, "payload": args.payload,
        }),
    );
    let accepted = sent.accepted.load(Ordering::Relaxed);
    let from = sent
        .measured_from_us
        .load(Ordering::Relaxed)
        .min(clock.now_us());
    let measured = tally.measured.load(Ordering::Relaxed);
    let delivered = tally.delivered();
    report.add("accepted", accepted);
    report.add("notify_errors", sent.errors.to_json());
    let last_answer = sent.last_answer_us.load(Ordering::Relaxed);
    report.add(
        "accepted_per_s",
        per_sec(accepted, last_answer.saturating_sub(from)),
    );
    report.add("deliveries_owed", owed);
    report.add("delivered", delivered);
    report.add("missing", owed.saturating_sub(delivered));
    report.add("duplicates", tally.duplicates.load(Ordering::Relaxed));
    report.add(
        "delivered_per_s",
        per_sec(
            measured,
            tally.last_us.load(Ordering::Relaxed).saturating_sub(from),
        ),
    );
    report.latency(
        "latency_notify_to_ua",
        &tally.latency.lock().expect("latency lock"),
    );
    report.add("ua_errors", tally.errors.to_json());
    report.usage(&usage, watch.watching_servers());
    report.cpu_per_thousand(&usage, watch.watching_servers(), delivered);
    Ok(report)
}

pub(crate) async fn stored(
    target: &Target,
    client: Arc<Client>,
    args: StoredArgs,
) -> anyhow::Result<Report> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut devices = devices(
        target,
        &client,
        args.uas,
        |i| format!("bench-{run}-{i}"),
        None,
    )
    .await?;
    // Offline: close every WebSocket and give the server a moment to see it.
    for d in &mut devices {
        if let Some(mut ws) = d.ws.take() {
            let _ = ws.close(None).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let clock = Clock(Instant::now());
    let plan = Arc::new(Plan {
        client: client.clone(),
        targets: devices
            .iter()
            .map(|d| Ok((Url::parse(&d.endpoint)?, 1)))
            .collect::<anyhow::Result<_>>()?,
        total: args.count,
        warmup: 0,
        rate: None,
        http_conns: args.http_conns,
        payload: args.payload,
        priority: 4,
    });
    let watch = Watch::start(&target.pids);
    let sent = send(plan, clock).await;
    let accepted = sent.accepted.load(Ordering::Relaxed);
    let accept_us = sent.last_answer_us.load(Ordering::Relaxed);

    // Every UA's last notification must be stored as pending before the UAs come back,
    // or some would be delivered live instead of from the store.
    let last_seq = |i: usize| {
        let n = args.uas as u64;
        let i = i as u64;
        (i < args.count).then(|| i + (args.count - 1 - i) / n * n)
    };
    let last = devices
        .iter()
        .enumerate()
        .filter_map(|(i, d)| Some((d.endpoint.as_str(), last_seq(i)?)));
    client
        .wait_pending(last, Duration::from_secs(args.drain_secs))
        .await?;
    let routed_us = clock.now_us();
    // Everything accepted is now pending in the store: what holding it costs the server.
    let pending = watch.usage();

    // Everyone reconnects at once.
    let tally = Tally::new(clock, 0);
    let reconnect_us = clock.now_us();
    let limit = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut set = JoinSet::new();
    for (i, d) in devices.iter().enumerate() {
        let (ws_url, identity, client, tally, limit) = (
            target.front_end(i).to_owned(),
            d.identity.clone(),
            client.clone(),
            tally.clone(),
            limit.clone(),
        );
        set.spawn(async move {
            let permit = limit.acquire_owned().await?;
            let ws = client.reconnect(&ws_url, &identity).await?;
            drop(permit);
            tokio::spawn(receive(ws, client, tally));
            anyhow::Ok(())
        });
    }
    while let Some(joined) = set.join_next().await {
        if let Err(e) = joined? {
            tally.errors.count(format!("reconnect: {e:#}"));
        }
    }
    let registered_us = clock.now_us();
    drain(&tally, accepted, Duration::from_secs(args.drain_secs)).await;
    let usage = watch.usage();

    let delivered = tally.delivered();
    let last = tally.last_us.load(Ordering::Relaxed);
    let mut report = Report::new(
        "stored",
        &client,
        json!({ "uas": args.uas, "count": args.count, "http_conns": args.http_conns, "payload": args.payload }),
    );
    report.add("accepted", accepted);
    report.add("notify_errors", sent.errors.to_json());
    report.add("accepted_per_s", per_sec(accepted, accept_us));
    report.add("stored_all_s", round((routed_us as f64) / 1e6));
    if watch.watching_servers() && accepted > 0 {
        let (before, after) = pending.server_rss_kib;
        report.add(
            "server_bytes_per_pending",
            (after.saturating_sub(before) * 1024) / accepted,
        );
    }
    report.add(
        "reconnected_all_s",
        round((registered_us - reconnect_us) as f64 / 1e6),
    );
    report.add(
        "first_delivery_ms",
        round(
            tally
                .first_us
                .load(Ordering::Relaxed)
                .saturating_sub(reconnect_us) as f64
                / 1e3,
        ),
    );
    report.add(
        "last_delivery_s",
        round(last.saturating_sub(reconnect_us) as f64 / 1e6),
    );
    report.add("delivered", delivered);
    report.add("missing", accepted.saturating_sub(delivered));
    report.add("duplicates", tally.duplicates.load(Ordering::Relaxed));
    report.add(
        "drain_per_s",
        per_sec(delivered, last.saturating_sub(reconnect_us)),
    );
    report.add("ua_errors", tally.errors.to_json());
    report.usage(&usage, watch.watching_servers());
    report.cpu_per_thousand(&usage, watch.watching_servers(), delivered);
    Ok(report)
}

/// Telefónica only: Web Push has no wake-up (`main` refuses it there).
pub(crate) async fn wakeup(
    target: &Target,
    client: Arc<Client>,
    args: WakeupArgs,
) -> anyhow::Result<Report> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut sockets = Vec::with_capacity(args.uas);
    for _ in 0..args.uas {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await?);
    }
    let interfaces: Vec<SocketAddr> = sockets
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<Result<_, _>>()?;
    let mut devices = devices(
        target,
        &client,
        args.uas,
        |i| format!("bench-{run}-{i}"),
        Some(&interfaces),
    )
    .await?;
    // Asleep: no WebSocket, only the UDP interface.
    for d in &mut devices {
        if let Some(mut ws) = d.ws.take() {
            let _ = ws.close(None).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let pull = Url::parse(&target.udp_http)?;
    let clock = Clock(Instant::now());
    let to_datagram = Arc::new(Mutex::new(histogram()));
    let to_pull = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(Errors::default());
    let watch = Watch::start(&target.pids);
    let mut set = JoinSet::new();
    let n = args.uas as u64;
    for (i, (device, socket)) in devices.into_iter().zip(sockets).enumerate() {
        let (pull, to_datagram, to_pull, errors) = (
            pull.clone(),
            to_datagram.clone(),
            to_pull.clone(),
            errors.clone(),
        );
        let notify = Url::parse(&device.endpoint)?;
        let wait = Duration::from_secs(args.wait_secs);
        let mine: Vec<u64> = (i as u64..args.count).step_by(n as usize).collect();
        set.spawn(async move {
            let mut notify_conn = Connection::new(&notify.authority);
            let mut pull_conn = Connection::new(&pull.authority);
            let mut buf = [0u8; 1500];
            for seq in mine {
                let t0 = clock.now_us();
                match notify_conn
                    .post_json(&notify.path, dialect::notify_body(seq, t0, 32, 1))
                    .await
                {
                    Ok(a) if a.status == 200 => {}
                    Ok(a) => {
                        errors.count_answer(&a);
                        continue;
                    }
                    Err(e) => {
                        errors.count(format!("http: {e}"));
                        continue;
                    }
                }
                match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
                    Ok(Ok(len)) if buf[..len].starts_with(b"NOTIFY") => {
                        let us = clock.now_us() - t0;
                        let _ = to_datagram.lock().expect("histogram").record(us.max(1));
                    }
                    Ok(Ok(_)) => errors.count("datagram not starting with NOTIFY"),
                    Ok(Err(e)) => errors.count(format!("udp: {e}")),
                    Err(_) => errors.count("no datagram"),
                }
                let body = Bytes::from(json!({ "uatoken": device.identity }).to_string());
                let ids = match pull_conn.post_json("/pull", body).await {
                    Ok(a) if a.status == 200 => pulled_ids(&a.body, seq),
                    Ok(a) => Err(anyhow!("/pull answered {}", a.status)),
                    Err(e) => Err(e),
                };
                let ids = match ids {
                    Ok(ids) => ids,
                    Err(e) => {
                        errors.count(format!("pull: {e:#}"));
                        continue;
                    }
                };
                let us = clock.now_us() - t0;
                let _ = to_pull.lock().expect("histogram").record(us.max(1));
                let body = json!({ "uatoken": device.identity, "messageIds": ids }).to_string();
                match pull_conn.post_json("/ack", Bytes::from(body)).await {
                    Ok(a) if a.status == 200 => {}
                    Ok(a) => errors.count(format!("/ack answered {}", a.status)),
                    Err(e) => errors.count(format!("ack: {e}")),
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let elapsed = clock.now_us();
    let usage = watch.usage();

    let mut report = Report::new(
        "wakeup",
        &client,
        json!({ "uas": args.uas, "count": args.count, "wait_secs": args.wait_secs }),
    );
    let pulled = to_pull.lock().expect("histogram").len();
    report.add("woken", to_datagram.lock().expect("histogram").len());
    report.add("pulled", pulled);
    report.add("errors", errors.to_json());
    report.add("wakeups_per_s", per_sec(pulled, elapsed));
    report.latency(
        "latency_notify_to_datagram",
        &to_datagram.lock().expect("histogram"),
    );
    report.latency(
        "latency_notify_to_pull_answer",
        &to_pull.lock().expect("histogram"),
    );
    report.usage(&usage, watch.watching_servers());
    report.cpu_per_thousand(&usage, watch.watching_servers(), pulled);
    Ok(report)
}

/// The message ids of a `/pull` answer, which must hold notification `seq`.
fn pulled_ids(body: &[u8], seq: u64) -> anyhow::Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Pulled {
        messages: Vec<Received>,
    }
    let pulled: Pulled = serde_json::from_slice(body).context("/pull answer")?;
    if !pulled
        .messages
        .iter()
        .any(|m| dialect::seq_of(&m.id) == Some(seq))
    {
        bail!("notification {seq} not in the /pull answer");
    }
    Ok(pulled.messages.into_iter().map(|m| m.message_id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;

    #[test]
    fn a_frame_counts_each_notification_once_and_acks_all() {
        let tally = Tally::new(Clock(Instant::now()), 1);
        let client = Client::new(Dialect::Telefonica, false).unwrap();
        let mut seen = HashSet::new();
        let frame = |id: u64| {
            json!([{ "messageType": "notification", "messageId": format!("m{id}"), "id": id,
                     "message": format!("{:020}", 0), "ttl": 1, "timestamp": 1, "priority": 4 }])
            .to_string()
        };
        assert_eq!(tally.frame(&client, &frame(0), &mut seen), ["m0"]);
        assert_eq!(tally.frame(&client, &frame(1), &mut seen), ["m1"]);
        assert_eq!(tally.frame(&client, &frame(1), &mut seen), ["m1"]);
        assert_eq!(tally.delivered(), 2);
        // Notification 0 was warm-up: delivered, not measured.
        assert_eq!(tally.measured.load(Ordering::Relaxed), 1);
        assert_eq!(tally.latency.lock().unwrap().len(), 1);
        assert_eq!(tally.duplicates.load(Ordering::Relaxed), 1);
        assert!(tally.frame(&client, "PONG", &mut seen).is_empty());
        assert_eq!(tally.errors.total(), 0);
        assert!(tally
            .frame(&client, "{\"error\":\"x\",\"code\":450}", &mut seen)
            .is_empty());
        assert_eq!(tally.errors.total(), 1);
    }

    #[test]
    fn pull_answers_must_hold_the_notification() {
        let body = json!({ "messages": [{ "messageId": "a", "id": "3", "message": "m" }] });
        let body = body.to_string();
        assert_eq!(pulled_ids(body.as_bytes(), 3).unwrap(), ["a"]);
        assert!(pulled_ids(body.as_bytes(), 4).is_err());
        assert!(pulled_ids(b"nope", 3).is_err());
    }
}
