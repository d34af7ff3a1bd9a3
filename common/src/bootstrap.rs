//! Start-up of a distributed-mode service: connects to MongoDB and RabbitMQ, waiting for
//! them with backoff so services may start before their dependencies.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::amqp::AmqpBroker;
use crate::broker::Broker;
use crate::config::{AmqpConfig, LogConfig, MongoConfig};
use crate::store::mongo::MongoStore;
use crate::store::Store;

/// The store and broker of a distributed-mode service; `None` if shutdown came first.
pub async fn connect(
    mongo: &MongoConfig,
    amqp: &AmqpConfig,
    shutdown: &CancellationToken,
) -> Option<(Arc<dyn Store>, Arc<dyn Broker>)> {
    let store = crate::retry::until_ok("connecting to MongoDB", shutdown, || {
        MongoStore::connect(&mongo.mongo_url, &mongo.mongo_db)
    })
    .await?;
    let broker = crate::retry::until_ok("connecting to RabbitMQ", shutdown, || {
        AmqpBroker::connect(&amqp.amqp_url, &amqp.amqp_prefix)
    })
    .await?;
    tracing::info!("connected to MongoDB and RabbitMQ");
    Some((Arc::new(store), Arc::new(broker)))
}

/// What a distributed-mode binary has once started: its listener, its shutdown token, and
/// its connected store and broker.
pub struct Started {
    pub listener: TcpListener,
    pub shutdown: CancellationToken,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
}

/// The start of every distributed-mode binary: logging, signals, the listener, then the
/// store and broker (waited for). `None` when a signal came before they answered.
pub async fn start(
    log: &LogConfig,
    listen: SocketAddr,
    mongo: &MongoConfig,
    amqp: &AmqpConfig,
) -> anyhow::Result<Option<Started>> {
    crate::telemetry::init(log);
    let shutdown = crate::shutdown::on_signal();
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    Ok(connect(mongo, amqp, &shutdown)
        .await
        .map(|(store, broker)| Started {
            listener,
            shutdown,
            store,
            broker,
        }))
}
