//! ns-standalone: ns-as, ns-msg-monitor, ns-ua-ws and ns-ua-udp in one process, on the
//! embedded store in a data directory and the in-process broker. Same protocol, same ports.
//!
//! This crate links neither the MongoDB driver nor lapin: the services' libraries are used
//! without their `distributed` feature.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use common::crypto::Secret;
use ns_broker::Broker;
use ns_broker_local::LocalBroker;
use ns_runtime::config::{ConfigError, PublicUrlConfig, SecretConfig};
use ns_runtime::listen::Listeners as Inherited;
use ns_runtime::metrics::Registry;
use ns_runtime::tls::TlsConfig;
use ns_runtime::Clock;
use ns_store::Store;
use ns_store_redb::EmbeddedStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The id of the one front-end, which names its in-process queue.
const NODE: &str = "local";

const DEFAULT_STORE_CACHE_MIB: usize = ns_store_redb::DEFAULT_CACHE_BYTES >> 20;

/// Everything the one-process server is configured with, but its addresses.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// Directory of the store and the generated secret.
    #[arg(long, env = "NS_DATA_DIR", default_value = "./ns-data")]
    pub data_dir: PathBuf,
    /// Memory the store may use to cache pages of its file, in MiB. Its indexes are in
    /// memory apart from this; payloads are read from the file when delivered.
    #[arg(long, env = "NS_STORE_CACHE_MIB", default_value_t = DEFAULT_STORE_CACHE_MIB)]
    pub store_cache_mib: usize,
    #[command(flatten)]
    pub secret: SecretConfig,
    #[command(flatten)]
    pub public: PublicUrlConfig,
    #[command(flatten)]
    pub notify: ns_as::Settings,
    #[command(flatten)]
    pub monitor: ns_msg_monitor::Settings,
    #[command(flatten)]
    pub front_end: ns_ua_ws::Settings,
    #[command(flatten)]
    pub wakeup: ns_ua_udp::Settings,
    /// Of every port.
    #[command(flatten)]
    pub http: ns_http::HttpLimits,
    /// Of every port: all four speak TLS when certificate and key are given.
    #[command(flatten)]
    pub tls: TlsConfig,
}

impl Settings {
    /// Settings with every default, keeping data in `data_dir`.
    pub fn new(data_dir: PathBuf, notify_base_url: String) -> Self {
        Settings {
            data_dir,
            store_cache_mib: DEFAULT_STORE_CACHE_MIB,
            secret: SecretConfig { secret: None },
            public: PublicUrlConfig { notify_base_url },
            notify: ns_as::Settings::default(),
            monitor: ns_msg_monitor::Settings::default(),
            front_end: ns_ua_ws::Settings::default(),
            wakeup: ns_ua_udp::Settings::default(),
            http: ns_http::HttpLimits::default(),
            tls: TlsConfig::default(),
        }
    }

    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self.notify.problems();
        let checks = [
            self.public.check(),
            match self.secret.secret {
                Some(_) => self.secret.require().map(|_| ()),
                None => Ok(()),
            },
            self.tls.load().map(|_| ()),
        ];
        problems.extend(checks.into_iter().filter_map(|r| match r {
            Err(ConfigError::Invalid(problem)) => Some(problem),
            Ok(()) => None,
        }));
        problems
    }
}

/// The four listening sockets.
pub struct Listeners {
    /// UAs: `GET /token` and the WebSocket.
    pub ws: TcpListener,
    /// Application servers: notify and status.
    pub notify: TcpListener,
    /// Pull and ack for UAs woken by UDP.
    pub pull: TcpListener,
    /// The monitor's health and metrics.
    pub monitor: TcpListener,
}

impl Listeners {
    /// The sockets handed over by the service manager (`LISTEN_FDS`, in this order), or
    /// bound at these addresses.
    pub async fn take(
        ws: SocketAddr,
        notify: SocketAddr,
        pull: SocketAddr,
        monitor: SocketAddr,
    ) -> anyhow::Result<Listeners> {
        let mut inherited = Inherited::from_env();
        Ok(Listeners {
            ws: inherited.next(ws).await?,
            notify: inherited.next(notify).await?,
            pull: inherited.next(pull).await?,
            monitor: inherited.next(monitor).await?,
        })
    }
}

/// Runs the whole server until `shutdown` is cancelled, or until one of its parts fails
/// (the others are then stopped too).
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    clock: Clock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = settings.tls.load()?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let secret = load_secret(&settings.secret, &settings.data_dir)?;
    let registry = Registry::default();
    // Every store and broker operation is timed, as in the distributed binaries.
    let store: Arc<dyn Store> = ns_store::Timed::wrap(
        Arc::new(
            EmbeddedStore::open_with_cache(
                &settings.data_dir.join("store.redb"),
                settings.store_cache_mib.saturating_mul(1 << 20),
            )
            .context("opening the store")?,
        ),
        &registry,
    );
    let broker: Arc<dyn Broker> = ns_broker::Timed::wrap(Arc::new(LocalBroker::new()), &registry);
    // Each service names its own port, scheme included, as it starts.
    tracing::info!(data_dir = %settings.data_dir.display(), "ns-standalone starting");

    // The in-process queue does not survive a crash; the store does: what was stored but
    // never routed is routed at start.
    let monitor = ns_msg_monitor::Settings {
        sweep_at_start: true,
        ..settings.monitor
    };
    let front_end = ns_ua_ws::Settings {
        server_id: Some(NODE.to_owned()),
        ..settings.front_end
    };
    let notify_base_url = settings.public.notify_base_url;
    let monitor = ns_msg_monitor::run(
        monitor,
        listeners.monitor,
        ns_msg_monitor::Deps {
            store: store.clone(),
            broker: broker.clone(),
            registry: registry.clone(),
            clock: clock.clone(),
        },
        shutdown.clone(),
    );
    let notify = ns_as::run(
        settings.notify,
        listeners.notify,
        ns_as::Deps {
            store: store.clone(),
            broker: broker.clone(),
            registry: registry.clone(),
            clock: clock.clone(),
            secret: secret.clone(),
            public_base_url: notify_base_url.clone(),
        },
        shutdown.clone(),
    );
    let ws = ns_ua_ws::run(
        front_end,
        listeners.ws,
        ns_ua_ws::Deps {
            store: store.clone(),
            broker: broker.clone(),
            registry: registry.clone(),
            clock: clock.clone(),
            secret: secret.clone(),
            notify_base_url: notify_base_url.clone(),
        },
        shutdown.clone(),
    );
    let udp = ns_ua_udp::run(
        settings.wakeup,
        listeners.pull,
        ns_ua_udp::Deps {
            store,
            broker,
            registry,
            clock,
            secret,
            notify_base_url,
        },
        shutdown.clone(),
    );
    let stop_all = |result: anyhow::Result<()>| {
        shutdown.cancel();
        result
    };
    let all = async {
        tokio::try_join!(
            async { stop_all(monitor.await) },
            async { stop_all(notify.await) },
            async { stop_all(ws.await) },
            async { stop_all(udp.await) },
        )
    };
    ns_http::with_tls(tls, ns_http::with_limits(settings.http, all))
        .await
        .map(|_| ())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_is_kept_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let config = SecretConfig { secret: None };
        let first = load_secret(&config, dir.path()).unwrap();
        let again = load_secret(&config, dir.path()).unwrap();
        let token = common::crypto::new_uatoken(&first);
        assert!(common::crypto::verify_uatoken(&again, &token).is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
