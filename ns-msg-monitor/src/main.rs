//! The ns-msg-monitor binary: parses its configuration and runs the service.

use clap::Parser;
use common::config::{AmqpConfig, LogConfig, MongoConfig};
use common::metrics::Registry;

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
    mongo: MongoConfig,
    #[command(flatten)]
    amqp: AmqpConfig,
    #[command(flatten)]
    log: LogConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(started) =
        common::bootstrap::start(&cli.log, cli.listen, &cli.mongo, &cli.amqp).await?
    else {
        return Ok(());
    };
    let deps = ns_msg_monitor::Deps {
        store: started.store,
        broker: started.broker,
        registry: Registry::default(),
    };
    ns_msg_monitor::run(cli.settings, started.listener, deps, started.shutdown).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
