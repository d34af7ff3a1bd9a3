//! ns-standalone: ns-as, ns-msg-monitor, ns-ua-ws and ns-ua-udp in one process, on an
//! embedded store in `--data-dir` and an in-process broker. Same protocol, same ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use common::broker::local::LocalBroker;
use common::broker::Broker;
use common::config::{LogConfig, Problems, PublicUrlConfig, SecretConfig};
use common::crypto::Secret;
use common::metrics::Registry;
use common::store::disk::EmbeddedStore;
use common::store::Store;
use tokio::net::TcpListener;

/// The whole push server in one process, with no MongoDB or RabbitMQ.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Directory of the store and the generated secret.
    #[arg(long, env = "NS_DATA_DIR", default_value = "./ns-data")]
    data_dir: PathBuf,
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
    #[command(flatten)]
    secret: SecretConfig,
    #[command(flatten)]
    public: PublicUrlConfig,
    #[command(flatten)]
    as_settings: ns_as::Settings,
    #[command(flatten)]
    udp_settings: ns_ua_udp::Settings,
    #[command(flatten)]
    log: LogConfig,
}

/// The secret given, or the one kept in the data directory (made on first start).
fn load_secret(config: &SecretConfig, data_dir: &Path) -> anyhow::Result<Secret> {
    if config.secret.is_some() {
        return config.require().map_err(Into::into);
    }
    let path = data_dir.join("secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(Secret::new(text.trim().as_bytes())),
        Ok(_) => anyhow::bail!("{} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (secret, text) = Secret::generate();
            write_private(&path, &text).with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new secret");
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes a file only its owner can read, atomically.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut problems = Problems::default();
    problems.check(cli.public.check());
    if cli.secret.secret.is_some() {
        problems.check(cli.secret.require());
    }
    problems.exit_if_any();
    common::telemetry::init(&cli.log);

    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("creating {}", cli.data_dir.display()))?;
    let secret = load_secret(&cli.secret, &cli.data_dir)?;
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&cli.data_dir.join("store.redb")).context("opening the store")?,
    );
    let broker: Arc<dyn Broker> = Arc::new(LocalBroker::new());
    let registry = Registry::default();
    let shutdown = common::shutdown::on_signal();

    let (ws_listener, as_listener, udp_listener, monitor_listener) = (
        bind(cli.ws_listen).await?,
        bind(cli.as_listen).await?,
        bind(cli.udp_listen).await?,
        bind(cli.monitor_listen).await?,
    );
    tracing::info!(
        data_dir = %cli.data_dir.display(),
        ws = %cli.ws_listen, notify = %cli.as_listen, pull = %cli.udp_listen,
        "ns-standalone starting"
    );

    let monitor = ns_msg_monitor::run(
        ns_msg_monitor::Settings {
            sweep_at_start: true,
            ..Default::default()
        },
        monitor_listener,
        ns_msg_monitor::Deps {
            store: store.clone(),
            broker: broker.clone(),
            registry: registry.clone(),
        },
        shutdown.clone(),
    );
    let notify = ns_as::run(
        cli.as_settings,
        as_listener,
        ns_as::Deps {
            store: store.clone(),
            broker: broker.clone(),
            registry: registry.clone(),
        },
        shutdown.clone(),
    );
    let ws = ns_ua_ws::run(
        ns_ua_ws::Settings {
            server_id: Some("local".into()),
            ..Default::default()
        },
        ws_listener,
        ns_ua_ws::Deps {
            store: store.clone(),
            broker: broker.clone(),
            registry: registry.clone(),
            secret: secret.clone(),
            notify_base_url: cli.public.notify_base_url.clone(),
        },
        shutdown.clone(),
    );
    let udp = ns_ua_udp::run(
        cli.udp_settings,
        udp_listener,
        ns_ua_udp::Deps {
            store,
            broker,
            registry,
            secret,
            notify_base_url: cli.public.notify_base_url,
        },
        shutdown.clone(),
    );
    // If one part fails the others are stopped too.
    let result = tokio::try_join!(
        async {
            let r = monitor.await;
            shutdown.cancel();
            r
        },
        async {
            let r = notify.await;
            shutdown.cancel();
            r
        },
        async {
            let r = ws.await;
            shutdown.cancel();
            r
        },
        async {
            let r = udp.await;
            shutdown.cancel();
            r
        },
    );
    result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
