//! `idle`: open and hold registered WebSocket connections; what each costs the server.
//! A connection is set up as its dialect's devices do it ([`Client::idle`]).
//!
//! One process can hold only as many sockets as its open-file limit allows. When the limit
//! can't be raised far enough (no privilege to raise the hard limit), the run is split over
//! worker processes, each a copy of this program holding its share from a loopback source
//! address of its own; the parent adds up what they report.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::Semaphore;

use crate::dialect::Client;
use crate::load::{per_sec, Clock, Errors};
use crate::procstat::{Usage, Watch};
use crate::report::{round, Report};
use crate::ua;
use crate::{IdleArgs, Target};

/// File descriptors kept free for everything but the held connections.
const SPARE_FDS: u64 = 256;

/// What opening a set of connections came to.
struct Opened {
    connected: u64,
    failures: Arc<Errors>,
    /// Connections that ended while held, by reason.
    dropped: Arc<Errors>,
    setup_us: u64,
}

/// Opens `count` registered connections, spread over `sources`, and holds them (in
/// spawned tasks) until the process ends.
async fn open_and_hold(
    target: &Target,
    client: &Arc<Client>,
    count: usize,
    concurrency: usize,
    sources: &[IpAddr],
) -> Opened {
    let clock = Clock(Instant::now());
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let failures = Arc::new(Errors::default());
    let dropped = Arc::new(Errors::default());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    for i in 0..count {
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let (client, ws_url, limit, failures, dropped, done) = (
            client.clone(),
            target.front_end(i).to_owned(),
            limit.clone(),
            failures.clone(),
            dropped.clone(),
            done_tx.clone(),
        );
        tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            let mut ws = match client.idle(&ws_url, source).await {
                Ok(ws) => ws,
                Err(e) => {
                    failures.count(format!("{e:#}"));
                    let _ = done.send(false);
                    return;
                }
            };
            drop(permit);
            let _ = done.send(true);
            // Hold: reading answers the server's pings, and notices a close.
            loop {
                if let Err(e) = ua::next_text(&mut ws).await {
                    dropped.count(format!("{e:#}"));
                    break;
                }
            }
        });
    }
    drop(done_tx);
    let mut opened = Opened {
        connected: 0,
        failures,
        dropped,
        setup_us: 0,
    };
    let mut finished = 0;
    while finished < count {
        match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
            Ok(Some(ok)) => {
                finished += 1;
                opened.connected += ok as u64;
            }
            Ok(None) => break,
            Err(_) => {
                let stuck = (count - finished) as u64;
                for _ in 0..stuck {
                    opened.failures.count("no answer for 60 s");
                }
                break;
            }
        }
    }
    opened.setup_us = clock.now_us();
    opened
}

pub(crate) async fn run(
    target: &Target,
    client: Arc<Client>,
    args: IdleArgs,
    fd_limit: u64,
) -> anyhow::Result<Report> {
    if let Some(source) = args.worker_source {
        return worker(target, &client, &args, source).await;
    }
    let per_process = fd_limit.saturating_sub(SPARE_FDS).max(1) as usize;
    let watch = Watch::start(&target.pids);
    let held = if args.connections <= per_process {
        let sources = target.source_addrs(args.connections);
        let opened = open_and_hold(
            target,
            &client,
            args.connections,
            args.concurrency,
            &sources,
        )
        .await;
        let at_setup = watch.usage();
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
        Held {
            connected: opened.connected,
            failed: opened.failures.to_json(),
            dropped: opened.dropped.to_json(),
            setup_us: opened.setup_us,
            at_setup,
            worker_cores: None,
            processes: 1,
        }
    } else {
        split(target, &args, per_process, &watch).await?
    };
    let usage = watch.usage();

    let mut report = Report::new(
        "idle",
        &client,
        json!({ "connections": args.connections, "concurrency": args.concurrency,
                "hold_secs": args.hold_secs, "processes": held.processes }),
    );
    report.add("connected", held.connected);
    report.add("failed", held.failed.clone());
    report.add("dropped_while_held", held.dropped);
    report.add("setup_s", round(held.setup_us as f64 / 1e6));
    report.add("setup_per_s", per_sec(held.connected, held.setup_us));
    if watch.watching_servers() {
        let (before, after) = usage.server_rss_kib;
        report.add("server_rss_before_mib", round(before as f64 / 1024.0));
        report.add(
            "server_bytes_per_connection",
            (after.saturating_sub(before) * 1024)
                .checked_div(held.connected)
                .unwrap_or(0),
        );
        report.add(
            "server_cpu_cores_during_setup",
            round(held.at_setup.server_cores),
        );
    }
    report.usage(&usage, watch.watching_servers());
    if let Some(cores) = held.worker_cores {
        report.add("load_generator_worker_cpu_cores", round(cores));
    }
    if held.connected == 0 {
        bail!("no connection could be set up: {}", held.failed);
    }
    Ok(report)
}

/// The connections held, however many processes held them.
struct Held {
    connected: u64,
    failed: Value,
    dropped: Value,
    setup_us: u64,
    /// The watched servers' usage from the start until every connection was up.
    at_setup: Usage,
    /// CPU the worker processes used, when there were any.
    worker_cores: Option<f64>,
    processes: usize,
}

/// Runs the scenario over worker processes of `per_process` connections each.
async fn split(
    target: &Target,
    args: &IdleArgs,
    per_process: usize,
    watch: &Watch,
) -> anyhow::Result<Held> {
    // One loopback source address per worker: its ephemeral ports are all its own.
    if !target.on_loopback() {
        bail!(
            "{} connections need several processes here (open-file limit); \
             that needs the server on loopback",
            args.connections
        );
    }
    let per_process = per_process.min(25_000);
    let count = args.connections.div_ceil(per_process);
    if count > 250 {
        bail!(
            "{} connections would need {count} processes",
            args.connections
        );
    }
    let exe = std::env::current_exe().context("this program's path")?;
    let started = Instant::now();
    let mut workers: Vec<(Child, BufReader<ChildStdout>)> = Vec::new();
    let mut remaining = args.connections;
    for w in 0..count {
        let share = remaining.min(per_process);
        remaining -= share;
        let mut command = Command::new(&exe);
        command
            .args(target.ws.iter().flat_map(|u| ["--ws", u.as_str()]))
            .args(["--dialect", target.dialect.name(), "--json"])
            .args(target.vapid.then_some("--vapid"))
            .arg("idle")
            .args(["--connections", &share.to_string()])
            .args([
                "--concurrency",
                &(args.concurrency / count).max(1).to_string(),
            ])
            .args(["--worker-source", &(2 + w).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("starting a worker process")?;
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        workers.push((child, stdout));
    }
    let worker_pids: Vec<u32> = workers.iter().filter_map(|(c, _)| c.id()).collect();
    let worker_watch = Watch::start(&worker_pids);

    let mut connected = 0;
    let mut failures = serde_json::Map::new();
    for (_, stdout) in &mut workers {
        let line = read_line(stdout).await?;
        connected += line["connected"].as_u64().unwrap_or(0);
        merge(&mut failures, &line["failed"]);
    }
    let setup_us = started.elapsed().as_micros() as u64;
    let at_setup = watch.usage();
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let worker_cores = worker_watch.usage().server_cores;

    // Closing a worker's standard input ends it; its last line says what dropped.
    let mut dropped = serde_json::Map::new();
    for (child, stdout) in &mut workers {
        drop(child.stdin.take());
        if let Ok(line) = read_line(stdout).await {
            merge(&mut dropped, &line["dropped_while_held"]);
        }
        let _ = child.wait().await;
    }
    Ok(Held {
        connected,
        failed: Value::Object(failures),
        dropped: Value::Object(dropped),
        setup_us,
        at_setup,
        worker_cores: Some(worker_cores),
        processes: count,
    })
}

async fn read_line(stdout: &mut BufReader<ChildStdout>) -> anyhow::Result<Value> {
    let mut line = String::new();
    if stdout.read_line(&mut line).await? == 0 {
        return Err(anyhow!("a worker process ended early"));
    }
    Ok(serde_json::from_str(&line)?)
}

/// Adds counts by reason.
fn merge(into: &mut serde_json::Map<String, Value>, counts: &Value) {
    for (reason, n) in counts.as_object().into_iter().flatten() {
        let sum = into.get(reason).and_then(Value::as_u64).unwrap_or(0) + n.as_u64().unwrap_or(0);
        into.insert(reason.clone(), sum.into());
    }
}

/// A worker process: opens its share, prints one line, holds until its standard input
/// closes, prints what dropped meanwhile, and exits.
async fn worker(
    target: &Target,
    client: &Arc<Client>,
    args: &IdleArgs,
    source: u8,
) -> anyhow::Result<Report> {
    let sources = [IpAddr::V4(Ipv4Addr::new(127, 0, 0, source))];
    let opened = open_and_hold(target, client, args.connections, args.concurrency, &sources).await;
    let mut out = tokio::io::stdout();
    let ready = json!({ "connected": opened.connected, "failed": opened.failures.to_json() });
    out.write_all(format!("{ready}\n").as_bytes()).await?;
    out.flush().await?;
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let held = json!({ "dropped_while_held": opened.dropped.to_json() });
    out.write_all(format!("{held}\n").as_bytes()).await?;
    out.flush().await?;
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason_add_up() {
        let mut into = serde_json::Map::new();
        merge(&mut into, &json!({ "a": 1, "b": 2 }));
        merge(&mut into, &json!({ "a": 3 }));
        merge(&mut into, &Value::Null);
        assert_eq!(Value::Object(into), json!({ "a": 4, "b": 2 }));
    }
}
