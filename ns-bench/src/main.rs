//! ns-bench: measures a running notification server the way its users feel it.
//!
//! It is only a client, of either dialect (`--dialect`): PROTOCOL.md (HTTP to `/token`,
//! `/notify`, `/pull` and `/ack`, the `push-notification` WebSocket, and UDP wake-ups), or
//! Web Push (Firefox's WebSocket messages and RFC 8030 push endpoints, VAPID optional). Each
//! scenario prints a table, or one JSON object with `--json`.

// A benchmark's output is its report on standard output.
#![allow(clippy::print_stdout)]

mod dialect;
mod http;
mod idle;
mod load;
mod procstat;
mod report;
mod ua;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::dialect::{Client, Dialect};
use crate::report::Report;

/// Measures a push notification server that speaks PROTOCOL.md or Web Push.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Where the server is and what to watch.
#[derive(Args, Debug, Clone)]
pub(crate) struct Target {
    /// WebSocket URL of ns-ua-ws; `GET /token` is asked on the same host and port. Repeat
    /// for several front-ends: UAs are spread over them in turn.
    #[arg(long = "ws", global = true, default_value = "ws://127.0.0.1:8080/")]
    pub ws: Vec<String>,
    /// Base URL of ns-ua-udp (`/pull`, `/ack`).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8082")]
    pub udp_http: String,
    /// Server process to watch for resident memory and CPU (repeat for several).
    #[arg(long = "pid", global = true)]
    pub pids: Vec<u32>,
    /// Loopback source addresses to spread client sockets over (127.0.0.2, 127.0.0.3, ...);
    /// default: enough for the connections asked for, when the server is on loopback.
    #[arg(long, global = true)]
    pub sources: Option<u8>,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The protocol UAs and senders speak: PROTOCOL.md, or Web Push (Firefox's WebSocket
    /// messages and RFC 8030 push endpoints). `fanout` and `wakeup` are Telefónica only.
    #[arg(long, global = true, value_enum, default_value_t = Dialect::Telefonica)]
    pub dialect: Dialect,
    /// Web Push: sign every push request with VAPID (a new P-256 key per run) and register
    /// every channel with its public key.
    #[arg(long, global = true)]
    pub vapid: bool,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open and hold registered WebSocket connections; server memory per connection.
    Idle(IdleArgs),
    /// Notifications to C connected UAs, each with its own WA; latency notify → received.
    Throughput(LoadArgs),
    /// UAs offline while notifications are accepted, then all reconnect: drain rate.
    Stored(StoredArgs),
    /// One watoken registered by K UAs; deliveries per second.
    Fanout(LoadArgs),
    /// Sleeping UAs with UDP interfaces; priority 1; time to the datagram and to `/pull`.
    Wakeup(WakeupArgs),
}

#[derive(Args, Debug, Clone)]
pub(crate) struct IdleArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connection set-ups in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Seconds to hold every connection before measuring memory again.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
    /// Internal: run as one of several worker processes, from this loopback source address
    /// (127.0.0.N); report readiness on standard output and hold until standard input closes.
    #[arg(long, hide = true)]
    pub worker_source: Option<u8>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct LoadArgs {
    /// Connected UAs (for `fanout`: the UAs that registered the one watoken).
    #[arg(long, default_value_t = 100)]
    pub uas: usize,
    /// Notifications to send.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Open loop at this many notifications per second; without it, closed loop at maximum.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Keep-alive HTTP connections to ns-as (each carries one request at a time).
    #[arg(long, default_value_t = 32)]
    pub http_conns: usize,
    /// Bytes in each notification's message (Web Push: in its body, at least 16).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Notifications sent (and not measured) before the measured ones.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Seconds to wait for outstanding deliveries after the last send.
    #[arg(long, default_value_t = 30)]
    pub drain_secs: u64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct StoredArgs {
    /// UAs, offline while the notifications are sent.
    #[arg(long, default_value_t = 100)]
    pub uas: usize,
    /// Notifications accepted while the UAs are offline.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Keep-alive HTTP connections to ns-as.
    #[arg(long, default_value_t = 32)]
    pub http_conns: usize,
    /// Bytes in each notification's message (Web Push: in its body, at least 16).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds to wait for the notifications to be stored, and then for the drain.
    #[arg(long, default_value_t = 120)]
    pub drain_secs: u64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct WakeupArgs {
    /// Sleeping UAs, each with its own UDP socket; each wakes for its share in turn.
    #[arg(long, default_value_t = 50)]
    pub uas: usize,
    /// Priority-1 notifications in all.
    #[arg(long, default_value_t = 1_000)]
    pub count: u64,
    /// Seconds a UA waits for its datagram before counting it missing.
    #[arg(long, default_value_t = 10)]
    pub wait_secs: u64,
}

impl Target {
    /// The front-end of UA number `i`.
    pub(crate) fn front_end(&self, i: usize) -> &str {
        &self.ws[i % self.ws.len()]
    }

    /// Whether every front-end is on this machine's loopback.
    pub(crate) fn on_loopback(&self) -> bool {
        self.ws
            .iter()
            .all(|u| u.contains("://127.") || u.contains("://localhost"))
    }

    /// Source addresses for `connections` client sockets: none (the kernel picks) unless
    /// the server is on loopback and either asked for or needed past one address's ports.
    pub(crate) fn source_addrs(&self, connections: usize) -> Vec<IpAddr> {
        let loopback = self.on_loopback();
        let wanted = match self.sources {
            Some(n) => n as usize,
            // About 28k ephemeral ports per source address by default; leave headroom.
            None if loopback => connections.div_ceil(20_000),
            None => 0,
        };
        if !loopback || wanted <= 1 && self.sources.is_none() {
            return Vec::new();
        }
        (0..wanted.clamp(1, 250))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
            .collect()
    }
}

/// Raises the open-file limit to hold `wanted` sockets (the hard limit too, when allowed).
fn raise_nofile(wanted: u64) -> anyhow::Result<u64> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft >= wanted {
        return Ok(soft);
    }
    if hard < wanted && rlimit::setrlimit(rlimit::Resource::NOFILE, wanted, wanted).is_ok() {
        return Ok(wanted);
    }
    let soft = rlimit::increase_nofile_limit(wanted)?;
    Ok(soft)
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Idle(_) => "idle",
            Scenario::Throughput(_) => "throughput",
            Scenario::Stored(_) => "stored",
            Scenario::Fanout(_) => "fanout",
            Scenario::Wakeup(_) => "wakeup",
        }
    }
}

/// What the command line asks that can't be done, all of it.
fn usage_problems(cli: &Cli) -> Vec<String> {
    let mut problems = Vec::new();
    problems.extend(dialect::unsupported(
        cli.target.dialect,
        cli.scenario.name(),
    ));
    if cli.target.vapid && cli.target.dialect != Dialect::Webpush {
        problems.push("--vapid needs --dialect webpush".to_owned());
    }
    problems
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let problems = usage_problems(&cli);
    if !problems.is_empty() {
        Cli::command()
            .error(ErrorKind::ArgumentConflict, problems.join("; "))
            .exit();
    }
    let client = Arc::new(Client::new(cli.target.dialect, cli.target.vapid)?);
    let wanted = match &cli.scenario {
        Scenario::Idle(a) => a.connections as u64,
        Scenario::Throughput(a) | Scenario::Fanout(a) => a.uas as u64 + a.http_conns as u64,
        Scenario::Stored(a) => a.uas as u64 + a.http_conns as u64,
        Scenario::Wakeup(a) => 2 * a.uas as u64,
    } + 1_024;
    let limit = raise_nofile(wanted).context("raising the open-file limit")?;
    if limit < wanted && !matches!(cli.scenario, Scenario::Idle(_)) {
        eprintln!(
            "ns-bench: the open-file limit is {limit}, below the {wanted} this run needs; \
             raise it (as root: ulimit -Hn {wanted}) or expect failures"
        );
    }
    let target = cli.target.clone();
    let report: Report = match cli.scenario {
        Scenario::Idle(a) => idle::run(&target, client, a, limit).await?,
        Scenario::Throughput(a) => {
            load::throughput(&target, client, a, load::Shape::OneWaPerUa).await?
        }
        Scenario::Fanout(a) => {
            load::throughput(&target, client, a, load::Shape::OneWaForAll).await?
        }
        Scenario::Stored(a) => load::stored(&target, client, a).await?,
        Scenario::Wakeup(a) => load::wakeup(&target, client, a).await?,
    };
    if cli.target.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    // Open sockets are torn down with the process; don't wait for each close.
    tokio::time::sleep(Duration::from_millis(1)).await;
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn webpush_refuses_fanout_and_wakeup_and_vapid_needs_it() {
        let problems = |args: &[&str]| usage_problems(&Cli::parse_from(args));
        assert!(problems(&["ns-bench", "--dialect", "webpush", "throughput"]).is_empty());
        assert!(problems(&["ns-bench", "stored", "--dialect", "webpush", "--vapid"]).is_empty());
        assert!(problems(&["ns-bench", "fanout"]).is_empty());
        let refused = problems(&["ns-bench", "--dialect", "webpush", "fanout"]);
        assert!(
            refused[0].contains("`fanout` has no Web Push equivalent"),
            "{refused:?}"
        );
        assert_eq!(
            problems(&["ns-bench", "wakeup", "--dialect=webpush"]).len(),
            1
        );
        assert_eq!(problems(&["ns-bench", "idle", "--vapid"]).len(), 1);
    }

    #[test]
    fn source_addresses_only_on_loopback_and_when_needed() {
        let mut t = Cli::parse_from(["ns-bench", "idle"]).target;
        assert!(t.source_addrs(1_000).is_empty());
        assert_eq!(t.source_addrs(100_000).len(), 5);
        t.sources = Some(3);
        assert_eq!(
            t.source_addrs(10),
            ["127.0.0.2", "127.0.0.3", "127.0.0.4"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        assert_eq!(t.front_end(7), "ws://127.0.0.1:8080/");
        t.ws = vec!["ws://push.example.com/".into()];
        assert!(t.source_addrs(100_000).is_empty());
    }
}
