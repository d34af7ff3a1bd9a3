//! Start-up of a distributed-mode service: connects to MongoDB and RabbitMQ, waiting for
//! them with backoff so services may start before their dependencies.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::broker::amqp::AmqpBroker;
use crate::broker::Broker;
use crate::config::{AmqpConfig, MongoConfig};
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
