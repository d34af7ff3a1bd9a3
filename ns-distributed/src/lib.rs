//! Start-up of the distributed binaries (`ns-as`, `ns-msg-monitor`, `ns-ua-ws`,
//! `ns-ua-udp`): where MongoDB and RabbitMQ are, and the connections to both, waited for
//! with backoff so that a service may start before its dependencies.
//!
//! Only these binaries link this crate, and so the MongoDB driver and lapin; the services'
//! libraries and the one-process binary link neither.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use ns_broker::Broker;
use ns_broker_amqp::AmqpBroker;
use ns_runtime::config::LogConfig;
use ns_runtime::listen::Listeners;
use ns_runtime::metrics::Registry;
use ns_store::Store;
use ns_store_mongo::MongoStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where MongoDB and RabbitMQ are.
#[derive(Args, Clone)]
pub struct BackendConfig {
    /// MongoDB connection string.
    #[arg(
        long,
        env = "NS_MONGO_URL",
        default_value = "mongodb://127.0.0.1:27017"
    )]
    pub mongo_url: String,
    /// MongoDB database name.
    #[arg(long, env = "NS_MONGO_DB", default_value = "push")]
    pub mongo_db: String,
    /// AMQP 0.9.1 URL of RabbitMQ.
    #[arg(
        long,
        env = "NS_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Prefix of every queue and exchange name, to run several clusters on one broker.
    #[arg(long, env = "NS_AMQP_PREFIX", default_value = "")]
    pub amqp_prefix: String,
}

/// The URLs can carry passwords: they are shown without them.
impl fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendConfig")
            .field("mongo_url", &redact(&self.mongo_url))
            .field("mongo_db", &self.mongo_db)
            .field("amqp_url", &redact(&self.amqp_url))
            .field("amqp_prefix", &self.amqp_prefix)
            .finish()
    }
}

/// `scheme://user:password@host...` with the password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// The store and broker of a distributed service, each timed into `registry`: the
/// service's metrics, to hand to it.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub registry: Registry,
}

/// Connects to MongoDB and RabbitMQ, retrying until both answer; `None` if `shutdown`
/// came first.
pub async fn connect(config: &BackendConfig, shutdown: &CancellationToken) -> Option<Backends> {
    let store = ns_runtime::retry::until_ok("connecting to MongoDB", shutdown, || {
        MongoStore::connect(&config.mongo_url, &config.mongo_db)
    })
    .await?;
    let broker = ns_runtime::retry::until_ok("connecting to RabbitMQ", shutdown, || {
        AmqpBroker::connect(&config.amqp_url, &config.amqp_prefix)
    })
    .await?;
    tracing::info!("connected to MongoDB and RabbitMQ");
    let registry = Registry::default();
    Some(Backends {
        store: ns_store::Timed::wrap(Arc::new(store), &registry),
        broker: ns_broker::Timed::wrap(Arc::new(broker), &registry),
        registry,
    })
}

/// What a distributed binary has once started.
pub struct Started {
    pub listener: TcpListener,
    pub shutdown: CancellationToken,
    pub backends: Backends,
}

/// The start of every distributed binary: logging, signals, its listener (handed over, or
/// bound at `listen`), then the store and broker (waited for). `None` when a signal came
/// before they answered.
pub async fn start(
    log: &LogConfig,
    listen: SocketAddr,
    backends: &BackendConfig,
) -> anyhow::Result<Option<Started>> {
    ns_runtime::telemetry::init(log);
    let shutdown = ns_runtime::shutdown::on_signal();
    let listener = Listeners::from_env().next(listen).await?;
    Ok(connect(backends, &shutdown).await.map(|backends| Started {
        listener,
        shutdown,
        backends,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("mongodb://u:p@a:1,b:2/db?authSource=x@y"),
            "mongodb://u:***@a:1,b:2/db?authSource=x@y"
        );
        assert_eq!(
            redact("mongodb://127.0.0.1:27017"),
            "mongodb://127.0.0.1:27017"
        );
        assert_eq!(redact("amqp://user@host"), "amqp://user@host");
        let config = BackendConfig {
            mongo_url: "mongodb://u:hunter2@h".into(),
            mongo_db: "push".into(),
            amqp_url: "amqp://g:hunter2@h".into(),
            amqp_prefix: String::new(),
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
