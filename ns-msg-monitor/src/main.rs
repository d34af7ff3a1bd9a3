//! The ns-msg-monitor binary: parses its configuration and runs the service.

use clap::Parser;
use ns_distributed::BackendConfig;
use ns_runtime::config::LogConfig;
use ns_runtime::Clock;

/// NS-MSG-Monitor: routes new notifications to the front-ends.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address of the health and metrics endpoint.
    #[arg(long, env = "NS_LISTEN", default_value = "0.0.0.0:8083")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    settings: ns_msg_monitor::Settings,
    #[command(flatten)]
    http: ns_http::HttpLimits,
    #[command(flatten)]
    tls: ns_runtime::tls::TlsConfig,
    #[command(flatten)]
    backends: BackendConfig,
    #[command(flatten)]
    log: LogConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cli, mut problems) = ns_runtime::cli::parse::<Cli>();
    let tls = problems.check(cli.tls.load()).flatten();
    problems.exit_if_any();
    let Some(started) = ns_distributed::start(&cli.log, cli.listen, &cli.backends).await? else {
        return Ok(());
    };
    let deps = ns_msg_monitor::Deps {
        store: started.backends.store,
        broker: started.backends.broker,
        registry: started.backends.registry,
        clock: Clock::system(),
    };
    let run = ns_msg_monitor::run(cli.settings, started.listener, deps, started.shutdown);
    ns_http::with_tls(tls, ns_http::with_limits(cli.http, run)).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
