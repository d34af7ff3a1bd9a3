//! The ns-as binary: parses its configuration and runs the service.

use clap::Parser;
use common::config::{AmqpConfig, ConfigError, LogConfig, MongoConfig, Problems};
use common::metrics::Registry;

/// NS-AS: accepts notifications from application servers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "NS_LISTEN", default_value = "0.0.0.0:8081")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    settings: ns_as::Settings,
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
    if cli.settings.max_message_bytes == 0 {
        problems.check::<()>(Err(ConfigError::Invalid(
            "--max-message-bytes must be positive".into(),
        )));
    }
    problems.exit_if_any();
    let Some(started) =
        common::bootstrap::start(&cli.log, cli.listen, &cli.mongo, &cli.amqp).await?
    else {
        return Ok(());
    };
    let deps = ns_as::Deps {
        store: started.store,
        broker: started.broker,
        registry: Registry::default(),
    };
    ns_as::run(cli.settings, started.listener, deps, started.shutdown).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
