//! The ns-ua-udp binary: parses its configuration and runs the service.

use clap::Parser;
use ns_distributed::BackendConfig;
use ns_runtime::config::{LogConfig, PublicUrlConfig, SecretConfig};
use ns_runtime::Clock;

/// NS-UA-UDP: wakes sleeping user agents and serves pull and ack.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "NS_LISTEN", default_value = "0.0.0.0:8082")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    settings: ns_ua_udp::Settings,
    #[command(flatten)]
    http: ns_http::HttpLimits,
    #[command(flatten)]
    tls: ns_runtime::tls::TlsConfig,
    #[command(flatten)]
    secret: SecretConfig,
    #[command(flatten)]
    public: PublicUrlConfig,
    #[command(flatten)]
    backends: BackendConfig,
    #[command(flatten)]
    log: LogConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cli, mut problems) = ns_runtime::cli::parse::<Cli>();
    let secret = problems.check(cli.secret.require());
    problems.check(cli.public.check());
    let tls = problems.check(cli.tls.load()).flatten();
    problems.exit_if_any();
    let Some(secret) = secret else {
        return Ok(());
    };
    let Some(started) = ns_distributed::start(&cli.log, cli.listen, &cli.backends).await? else {
        return Ok(());
    };
    let deps = ns_ua_udp::Deps {
        store: started.backends.store,
        broker: started.backends.broker,
        registry: started.backends.registry,
        clock: Clock::system(),
        secret,
        notify_base_url: cli.public.notify_base_url,
    };
    let run = ns_ua_udp::run(cli.settings, started.listener, deps, started.shutdown);
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
