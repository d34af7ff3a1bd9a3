//! The ns-standalone binary: parses its configuration and runs the whole server.

use std::net::SocketAddr;

use clap::Parser;
use ns_runtime::config::LogConfig;
use ns_runtime::Clock;
use ns_standalone::Listeners;

/// The whole push server in one process, with no MongoDB or RabbitMQ.
///
/// Sockets handed over by a service manager (systemd socket activation, `LISTEN_FDS`) are
/// used in the order ws, as, udp, monitor instead of binding these addresses.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address of the UA side: GET /token and the WebSocket.
    #[arg(long, env = "NS_WS_LISTEN", default_value = "0.0.0.0:8080")]
    ws_listen: SocketAddr,
    /// Address of the application-server side: notify and status.
    #[arg(long, env = "NS_AS_LISTEN", default_value = "0.0.0.0:8081")]
    as_listen: SocketAddr,
    /// Address of pull and ack for UAs woken by UDP.
    #[arg(long, env = "NS_UDP_LISTEN", default_value = "0.0.0.0:8082")]
    udp_listen: SocketAddr,
    /// Address of the monitor's health and metrics.
    #[arg(long, env = "NS_MONITOR_LISTEN", default_value = "0.0.0.0:8083")]
    monitor_listen: SocketAddr,
    /// Threads that serve the connections and run the services (the store has two threads
    /// of its own); 0 for one per core.
    #[arg(long, env = "NS_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    #[command(flatten)]
    settings: ns_standalone::Settings,
    #[command(flatten)]
    log: LogConfig,
}

fn main() -> anyhow::Result<()> {
    let (cli, mut problems) = ns_runtime::cli::parse::<Cli>();
    problems.extend(cli.settings.problems());
    problems.exit_if_any();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cli.worker_threads > 0 {
        runtime.worker_threads(cli.worker_threads);
    }
    runtime.enable_all().build()?.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    ns_runtime::telemetry::init(&cli.log);
    let shutdown = ns_runtime::shutdown::on_signal();
    let listeners = Listeners::take(
        cli.ws_listen,
        cli.as_listen,
        cli.udp_listen,
        cli.monitor_listen,
    )
    .await?;
    ns_standalone::run(cli.settings, listeners, Clock::system(), shutdown).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
