//! The ns-ua-udp binary: parses its configuration and runs the service.

use clap::Parser;
use common::config::{AmqpConfig, LogConfig, MongoConfig, Problems, PublicUrlConfig, SecretConfig};
use common::metrics::Registry;

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
    secret: SecretConfig,
    #[command(flatten)]
    public: PublicUrlConfig,
    #[command(flatten)]
    mongo: MongoConfig,
    #[command(flatten)]
    amqp: AmqpConfig,
    #[command(flatten)]
    log: LogConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut problems = Problems::default();
    let secret = problems.check(cli.secret.require());
    problems.check(cli.public.check());
    problems.exit_if_any();
    let Some(secret) = secret else {
        return Ok(());
    };
    let Some(started) =
        common::bootstrap::start(&cli.log, cli.listen, &cli.mongo, &cli.amqp).await?
    else {
        return Ok(());
    };
    let deps = ns_ua_udp::Deps {
        store: started.store,
        broker: started.broker,
        registry: Registry::default(),
        secret,
        notify_base_url: cli.public.notify_base_url,
    };
    ns_ua_udp::run(cli.settings, started.listener, deps, started.shutdown).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
