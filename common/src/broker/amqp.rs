//! RabbitMQ implementation of the [`Broker`] seam, on lapin.
//!
//! One AMQP connection per [`AmqpBroker`], owned by a supervisor task. When the connection
//! dies the supervisor reconnects with exponential backoff (100 ms doubling to 5 s, reset after
//! a successful connection) for as long as the broker handle lives; [`Broker::is_healthy`] is
//! false meanwhile. [`AmqpBroker::connect`] fails fast when the *first* connection can't be made
//! (a wrong URL or wrong credentials should surface at start-up; the caller decides whether to
//! retry); after that the broker never gives up.
//!
//! lapin's `enable_auto_recover` is deliberately not used: it stops after a bounded number of
//! attempts and replays consumers on its own, while here each subscription task declares and
//! consumes again on a fresh channel of the new connection, which also re-creates the
//! non-durable queues a broker restart deleted, and keeps feeding the caller's channel.
//!
//! Publishing goes through one confirm-mode channel driven by a single task (see
//! `run_publisher`) so that many publishes are in flight at once and each caller still gets
//! its own, correct outcome.

use super::{Acker, Broker, BrokerError, Delivery, QueueKind, Subscription};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, Stream};
use futures::{FutureExt, StreamExt};
use lapin::message::BasicReturnMessage;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event, ExchangeKind,
};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

/// Name (before the prefix) of the fan-out exchange carrying the events.
const EVENTS_EXCHANGE: &str = "nsEvents";
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bound on connecting, declaring and subscribing: a half-dead broker must not hang a task.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor looks at the connection besides reacting to lapin's events.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Publishes waiting for a broker confirm at once; more wait in the request queue.
const MAX_IN_FLIGHT: usize = 4096;
const REQUEST_QUEUE: usize = 1024;
/// Events buffered for a slow subscriber before it is told that it missed some.
const EVENTS_BUFFER: usize = 1024;
const PERSISTENT: u8 = 2;

/// A [`Broker`] on RabbitMQ. Cheap to clone: clones share the connection. The connection and
/// every task behind it stop when the last clone is dropped (a [`Subscription`] still open
/// then ends).
#[derive(Clone)]
pub struct AmqpBroker {
    shared: Arc<Shared>,
    _stop: Arc<DropGuard>,
}

/// What the background tasks share with the handles.
struct Shared {
    url: String,
    prefix: String,
    /// The current connection, `None` while reconnecting.
    live: watch::Sender<Option<Arc<Live>>>,
    stop: CancellationToken,
}

/// One established connection with its publishing channel.
struct Live {
    /// Increases with each new connection: subscriptions compare it to learn that theirs is gone.
    generation: u64,
    connection: Arc<Connection>,
    publisher: Publisher,
}

#[derive(Clone)]
struct Publisher {
    channel: Channel,
    requests: mpsc::Sender<PublishRequest>,
}

struct PublishRequest {
    exchange: ShortString,
    routing_key: ShortString,
    /// The caller's queue name, for [`BrokerError::Unroutable`].
    queue: String,
    mandatory: bool,
    payload: Bytes,
    reply: oneshot::Sender<Result<(), BrokerError>>,
}

/// Sources of [`BrokerError::Unavailable`] that are not lapin errors.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("not connected to the broker")]
    Disconnected,
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
    #[error("the delivery's channel is closed")]
    ChannelClosed,
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

impl From<Failure> for BrokerError {
    fn from(failure: Failure) -> Self {
        BrokerError::unavailable(failure)
    }
}

async fn within<T>(future: impl Future<Output = Result<T, lapin::Error>>) -> Result<T, Failure> {
    match tokio::time::timeout(SETUP_TIMEOUT, future).await {
        Ok(result) => result.map_err(Failure::from),
        Err(_) => Err(Failure::Timeout(SETUP_TIMEOUT)),
    }
}

impl AmqpBroker {
    /// Connects to `url` (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`; add `?heartbeat=10` to
    /// notice a silently dead peer sooner than the server's default). Every queue and exchange
    /// name is prefixed with `prefix`. Fails with [`BrokerError::Unavailable`] if this first
    /// connection can't be made; later losses are repaired in the background.
    pub async fn connect(url: &str, prefix: &str) -> Result<AmqpBroker, BrokerError> {
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            live: watch::Sender::new(None),
            stop: stop.clone(),
        });
        let session = open_session(&shared).await.inspect_err(|error| {
            warn!(%error, "could not connect to the broker");
        })?;
        // Usable as soon as this returns, before the supervisor task has run.
        publish_live(&shared, FIRST_GENERATION, &session);
        tokio::spawn(supervise(shared.clone(), session));
        Ok(AmqpBroker {
            shared,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    fn name(&self, queue: &str) -> String {
        format!("{}{queue}", self.shared.prefix)
    }

    fn current(&self) -> Result<Arc<Live>, BrokerError> {
        self.shared
            .live
            .borrow()
            .clone()
            .ok_or_else(|| Failure::Disconnected.into())
    }

    async fn submit(
        &self,
        exchange: String,
        routing_key: String,
        queue: &str,
        mandatory: bool,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        let requests = self.current()?.publisher.requests.clone();
        let (reply, outcome) = oneshot::channel();
        let request = PublishRequest {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            queue: queue.to_owned(),
            mandatory,
            payload,
            reply,
        };
        // Either side going away means the channel or the connection died under us.
        requests
            .send(request)
            .await
            .map_err(|_| Failure::Disconnected)?;
        outcome.await.map_err(|_| Failure::Disconnected)?
    }

    async fn subscribe(&self, target: Target) -> Result<Subscription, BrokerError> {
        let live = self.current()?;
        // The first subscription is made before returning so that the queue exists (and is
        // routable) as soon as the caller holds the Subscription.
        let stream = target.open(&live).await.inspect_err(|error| {
            warn!(target = %target, %error, "could not subscribe");
        })?;
        let (tx, rx) = mpsc::channel(target.buffer());
        tokio::spawn(run_subscription(self.shared.clone(), target, tx, stream));
        Ok(rx)
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn is_healthy(&self) -> bool {
        self.shared.live.borrow().as_ref().is_some_and(|live| {
            live.connection.status().connected() && live.publisher.channel.status().connected()
        })
    }

    async fn publish(&self, queue: &str, payload: Bytes) -> Result<(), BrokerError> {
        // The default exchange routes by queue name; `mandatory` turns "no such queue" into a
        // basic.return instead of a silent drop.
        self.submit(String::new(), self.name(queue), queue, true, payload)
            .await
    }

    async fn declare_durable(&self, queue: &str) -> Result<(), BrokerError> {
        let live = self.current()?;
        let channel = within(live.connection.create_channel()).await?;
        let declared = within(channel.queue_declare(
            self.name(queue).as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        ))
        .await;
        close_quietly(&channel).await;
        declared.map(|_| ()).map_err(Into::into)
    }

    async fn consume(
        &self,
        queue: &str,
        kind: QueueKind,
        prefetch: u16,
    ) -> Result<Subscription, BrokerError> {
        self.subscribe(Target::Queue {
            name: self.name(queue),
            kind,
            prefetch,
        })
        .await
    }

    async fn publish_event(&self, payload: Bytes) -> Result<(), BrokerError> {
        let exchange = self.name(EVENTS_EXCHANGE);
        // Not mandatory: an event nobody listens to is not an error.
        self.submit(exchange, String::new(), EVENTS_EXCHANGE, false, payload)
            .await
    }

    async fn subscribe_events(&self) -> Result<Subscription, BrokerError> {
        self.subscribe(Target::Events {
            exchange: self.name(EVENTS_EXCHANGE),
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Connection supervision

/// A fresh connection before it is handed to [`serve`].
struct Session {
    connection: Arc<Connection>,
    events: Pin<Box<dyn Stream<Item = Event> + Send>>,
    publisher: Publisher,
    publisher_task: JoinHandle<()>,
}

async fn open_session(shared: &Shared) -> Result<Session, Failure> {
    let properties =
        ConnectionProperties::default().with_connection_name(connection_name(&shared.prefix));
    let connection = within(Connection::connect(&shared.url, properties)).await?;
    // Listen before anything else can fail so that no error event is missed.
    let events = Box::pin(connection.events_listener());
    let connection = Arc::new(connection);
    let (publisher, publisher_task) = open_publisher(shared, &connection).await?;
    Ok(Session {
        connection,
        events,
        publisher,
        publisher_task,
    })
}

/// The name the connection shows in RabbitMQ's management tools.
fn connection_name(prefix: &str) -> lapin::types::LongString {
    format!("ns:{prefix}:{}", std::process::id()).into()
}

async fn open_publisher(
    shared: &Shared,
    connection: &Connection,
) -> Result<(Publisher, JoinHandle<()>), Failure> {
    let channel = within(connection.create_channel()).await?;
    // Publishing to a missing exchange closes the channel, so the events exchange is declared
    // with every publishing channel (idempotent). Transient: events need no durability.
    within(channel.exchange_declare(
        format!("{}{EVENTS_EXCHANGE}", shared.prefix).into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await?;
    within(channel.confirm_select(ConfirmSelectOptions::default())).await?;
    let (requests, receiver) = mpsc::channel(REQUEST_QUEUE);
    let task = tokio::spawn(run_publisher(channel.clone(), receiver));
    Ok((Publisher { channel, requests }, task))
}

const FIRST_GENERATION: u64 = 1;

fn publish_live(shared: &Shared, generation: u64, session: &Session) {
    shared.live.send_replace(Some(Arc::new(Live {
        generation,
        connection: session.connection.clone(),
        publisher: session.publisher.clone(),
    })));
}

/// Keeps a connection up until the broker is dropped.
async fn supervise(shared: Arc<Shared>, first: Session) {
    let mut next = Some(first);
    let mut generation = FIRST_GENERATION - 1;
    let mut backoff = Backoff::new();
    loop {
        let session = match next.take() {
            Some(session) => session,
            None => {
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                let attempt = tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    attempt = open_session(&shared) => attempt,
                };
                match attempt {
                    Ok(session) => session,
                    Err(error) => {
                        warn!(%error, retry_in = ?backoff.peek(), "reconnection to the broker failed");
                        continue;
                    }
                }
            }
        };
        backoff = Backoff::new();
        generation += 1;
        info!(generation, "connected to the broker");
        let lost = serve(&shared, generation, session).await;
        shared.live.send_replace(None);
        match lost {
            None => return,
            Some(reason) => {
                warn!(generation, %reason, "lost the broker connection, reconnecting");
            }
        }
    }
}

/// Publishes the session and watches it; returns why it ended, `None` when stopping.
async fn serve(shared: &Shared, generation: u64, mut session: Session) -> Option<String> {
    publish_live(shared, generation, &session);
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => {
                // Best effort: the broker requeues our unacked deliveries either way.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    session.connection.close(200, "shutting down".into()),
                )
                .await;
                return None;
            }
            event = session.events.next() => match event {
                Some(Event::Error(error)) if !session.connection.status().connected() => {
                    return Some(error.to_string());
                }
                // A channel error; the owner of that channel sees it and recovers.
                Some(Event::Error(error)) => debug!(%error, "broker channel error"),
                Some(Event::ConnectionBlocked(reason)) => {
                    warn!(%reason, "the broker blocks publishing (resource alarm)");
                }
                Some(Event::ConnectionUnblocked) => info!("the broker unblocked publishing"),
                Some(_) => {}
                None => return Some("the connection's event stream ended".to_owned()),
            },
            _ = &mut session.publisher_task => {
                if !session.connection.status().connected() {
                    return Some("the connection closed".to_owned());
                }
                // Only the publishing channel died (a channel-level error): replace it and
                // keep the connection and the subscriptions on it.
                warn!(generation, "the publishing channel closed, opening another");
                match open_publisher(shared, &session.connection).await {
                    Ok((publisher, task)) => {
                        session.publisher = publisher;
                        session.publisher_task = task;
                        publish_live(shared, generation, &session);
                    }
                    Err(error) => return Some(error.to_string()),
                }
            }
            _ = check.tick() => {
                if !session.connection.status().connected() {
                    return Some("the connection is no longer connected".to_owned());
                }
            }
        }
    }
}

/// 100 ms doubling to 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    fn peek(&self) -> Duration {
        self.next
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing

type Confirming = Pin<Box<dyn Future<Output = (u64, lapin::Result<Confirmation>)> + Send>>;

/// The fate of one publish, known once its confirm has arrived.
enum Outcome {
    Ack,
    Nack,
    Failed(lapin::Error),
}

struct Pending {
    queue: String,
    reply: oneshot::Sender<Result<(), BrokerError>>,
    outcome: Option<Outcome>,
}

/// Drives every publish of one channel.
///
/// lapin cannot be trusted to tell which publish a basic.return belongs to once several are in
/// flight: it hands each return to whichever confirm it resolves next, and it resolves a
/// multiple-ack in hash-map order, so a return routinely lands on another publish (measured:
/// about one in five outcomes wrong with 4000 concurrent mixed publishes). Hence:
///
/// * this task is the only one publishing on the channel, so the ids it numbers publishes with
///   follow lapin's delivery tags and the order of the frames on the wire;
/// * every message carries its id as `message_id`, so a returned message names its owner
///   whichever confirm it is attached to;
/// * a publish is settled only once it and every publish before it are confirmed. The server
///   sends a message's return before its ack and returns in publish order, and lapin pops the
///   waiting returns in order, one per resolved confirm; so by then the return, if any, has been
///   attached to a confirm that resolved earlier and that this task has already seen (it drains
///   every ready confirm before settling).
///
/// The cost is that an outcome can wait for the confirms of earlier publishes (milliseconds).
async fn run_publisher(channel: Channel, mut requests: mpsc::Receiver<PublishRequest>) {
    let mut in_flight: FuturesUnordered<Confirming> = FuturesUnordered::new();
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut returned: HashSet<u64> = HashSet::new();
    let mut next_id = 0u64;
    let mut accepting = true;
    while accepting || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some((id, result)) = in_flight.next(), if !in_flight.is_empty() => {
                record(&mut pending, &mut returned, id, result);
                // Collect every other confirm that already resolved before settling anything.
                while let Some(Some((id, result))) = in_flight.next().now_or_never() {
                    record(&mut pending, &mut returned, id, result);
                }
            }
            request = requests.recv(), if accepting && pending.len() < MAX_IN_FLIGHT => {
                let Some(request) = request else {
                    // The connection was replaced: finish what is in flight, then stop.
                    accepting = false;
                    continue;
                };
                let PublishRequest { exchange, routing_key, queue, mandatory, payload, reply } =
                    request;
                next_id += 1;
                let id = next_id;
                pending.insert(id, Pending { queue, reply, outcome: None });
                let mut confirming =
                    start_publish(&channel, id, exchange, routing_key, mandatory, payload);
                // The first poll runs lapin's synchronous part: it takes the delivery tag and
                // queues the frames. Doing it here, in order, keeps our ids in tag order.
                match poll_once(&mut confirming).await {
                    Poll::Ready((id, result)) => record(&mut pending, &mut returned, id, result),
                    Poll::Pending => in_flight.push(confirming),
                }
            }
        }
        settle(&mut pending, &mut returned);
        if accepting && !channel.status().connected() {
            // Whatever is queued or comes next can't be published on this channel; the
            // supervisor opens another when this task ends.
            accepting = false;
            requests.close();
            while let Ok(request) = requests.try_recv() {
                let _ = request.reply.send(Err(Failure::Disconnected.into()));
            }
        }
    }
    // Anything not settled (only possible if confirms never came) is answered by dropping the
    // reply senders: the callers see Unavailable.
    debug!(unsettled = pending.len(), "publisher stopped");
}

fn start_publish(
    channel: &Channel,
    id: u64,
    exchange: ShortString,
    routing_key: ShortString,
    mandatory: bool,
    payload: Bytes,
) -> Confirming {
    let channel = channel.clone();
    Box::pin(async move {
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(id.to_string().into());
        let options = BasicPublishOptions {
            mandatory,
            immediate: false,
        };
        let result = match channel
            .basic_publish(exchange, routing_key, options, &payload, properties)
            .await
        {
            Ok(confirm) => confirm.await,
            Err(error) => Err(error),
        };
        (id, result)
    })
}

async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

fn record(
    pending: &mut BTreeMap<u64, Pending>,
    returned: &mut HashSet<u64>,
    id: u64,
    result: lapin::Result<Confirmation>,
) {
    let outcome = match result {
        Ok(Confirmation::Ack(message)) => {
            note_return(returned, message);
            Outcome::Ack
        }
        Ok(Confirmation::Nack(message)) => {
            note_return(returned, message);
            Outcome::Nack
        }
        // Only without confirm mode, which the channel always has.
        Ok(Confirmation::NotRequested) => Outcome::Ack,
        Err(error) => Outcome::Failed(error),
    };
    if let Some(entry) = pending.get_mut(&id) {
        entry.outcome = Some(outcome);
    }
}

fn note_return(returned: &mut HashSet<u64>, message: Option<BasicReturnMessage>) {
    let Some(message) = message else { return };
    let owner = message
        .delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| id.as_str().parse::<u64>().ok());
    match owner {
        Some(id) => {
            returned.insert(id);
        }
        None => warn!(
            routing_key = %message.delivery.routing_key,
            "the broker returned a message without our id"
        ),
    }
}

/// Answers every publish whose outcome is final (see [`run_publisher`]).
fn settle(pending: &mut BTreeMap<u64, Pending>, returned: &mut HashSet<u64>) {
    while let Some(entry) = pending.first_entry() {
        if entry.get().outcome.is_none() {
            break;
        }
        let (
            id,
            Pending {
                queue,
                reply,
                outcome,
            },
        ) = entry.remove_entry();
        let was_returned = returned.remove(&id);
        let result = match outcome {
            Some(Outcome::Ack) if was_returned => Err(BrokerError::Unroutable(queue)),
            Some(Outcome::Ack) | None => Ok(()),
            Some(Outcome::Nack) => {
                warn!(queue = %queue, "the broker refused a message");
                Err(BrokerError::Refused)
            }
            Some(Outcome::Failed(error)) => Err(Failure::Amqp(error).into()),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = reply.send(result);
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

/// What a subscription task keeps subscribed to.
enum Target {
    Queue {
        name: String,
        kind: QueueKind,
        prefetch: u16,
    },
    Events {
        exchange: String,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Queue { name, .. } => write!(f, "queue {name}"),
            Target::Events { exchange } => write!(f, "events of {exchange}"),
        }
    }
}

/// One subscription on one channel of one connection.
struct Consuming {
    generation: u64,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl Target {
    fn buffer(&self) -> usize {
        match self {
            // Unacked deliveries are bounded by the prefetch already (0 means unlimited).
            Target::Queue { prefetch, .. } => usize::from(*prefetch).max(1),
            Target::Events { .. } => EVENTS_BUFFER,
        }
    }

    async fn open(&self, live: &Live) -> Result<Consuming, Failure> {
        let channel = within(live.connection.create_channel()).await?;
        match self.declare_and_consume(&channel).await {
            Ok(consumer) => Ok(Consuming {
                generation: live.generation,
                channel,
                consumer,
            }),
            Err(error) => {
                close_quietly(&channel).await;
                Err(error)
            }
        }
    }

    async fn declare_and_consume(&self, channel: &Channel) -> Result<lapin::Consumer, Failure> {
        let tag = ShortString::from(format!("ns-{}", uuid::Uuid::new_v4().simple()));
        match self {
            Target::Queue {
                name,
                kind,
                prefetch,
            } => {
                within(channel.basic_qos(*prefetch, BasicQosOptions::default())).await?;
                let options = match kind {
                    QueueKind::Durable => QueueDeclareOptions::durable(),
                    // Deleted by the broker when its consumer goes, so that publishing to a
                    // gone front-end fails instead of piling up.
                    QueueKind::Private => QueueDeclareOptions::default().auto_delete(),
                };
                within(channel.queue_declare(name.as_str().into(), options, FieldTable::default()))
                    .await?;
                within(channel.basic_consume(
                    name.as_str().into(),
                    tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ))
                .await
            }
            Target::Events { exchange } => {
                within(channel.exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                ))
                .await?;
                // A server-named queue of our own, deleted with its consumer (auto-delete) or
                // at the latest with the connection (exclusive).
                let queue = within(channel.queue_declare(
                    ShortString::from(""),
                    QueueDeclareOptions::exclusive().auto_delete(),
                    FieldTable::default(),
                ))
                .await?;
                within(channel.queue_bind(
                    queue.name().clone(),
                    exchange.as_str().into(),
                    ShortString::from(""),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ))
                .await?;
                let options = BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                };
                within(channel.basic_consume(
                    queue.name().clone(),
                    tag,
                    options,
                    FieldTable::default(),
                ))
                .await
            }
        }
    }
}

async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        // Closing requeues the unacked deliveries; failing means the channel is gone anyway.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            channel.close(200, "subscription ended".into()),
        )
        .await;
    }
}

/// Why [`pump`] returned.
enum End {
    /// The caller dropped the Subscription, or the broker was dropped.
    Done,
    /// The channel or the connection is gone: subscribe again.
    Lost,
}

/// Feeds `tx` for as long as the caller holds the Subscription, subscribing again after every
/// reconnection.
async fn run_subscription(
    shared: Arc<Shared>,
    target: Target,
    tx: mpsc::Sender<Delivery>,
    first: Consuming,
) {
    let mut live_rx = shared.live.subscribe();
    let mut consuming = first;
    // For events: the caller must be told (empty payload) that some may have been missed.
    let mut missed = false;
    // Slows down a subscription that keeps ending as soon as it is made.
    let mut backoff = Backoff::new();
    loop {
        let since = tokio::time::Instant::now();
        let end = pump(
            &shared,
            &target,
            &tx,
            &mut consuming,
            &mut live_rx,
            &mut missed,
        )
        .await;
        close_quietly(&consuming.channel).await;
        if let End::Done = end {
            debug!(target = %target, "subscription ended");
            return;
        }
        if since.elapsed() < BACKOFF_MAX {
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        } else {
            backoff = Backoff::new();
        }
        consuming = match resubscribe(&shared, &target, &tx, &mut live_rx).await {
            Some(consuming) => consuming,
            None => return,
        };
        info!(target = %target, generation = consuming.generation, "subscribed again");
        if let Target::Events { .. } = target {
            missed = true;
        }
    }
}

async fn pump(
    shared: &Shared,
    target: &Target,
    tx: &mpsc::Sender<Delivery>,
    consuming: &mut Consuming,
    live_rx: &mut watch::Receiver<Option<Arc<Live>>>,
    missed: &mut bool,
) -> End {
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return End::Done,
            _ = tx.closed() => return End::Done,
            changed = live_rx.changed() => {
                if changed.is_err() {
                    return End::Done;
                }
                let generation = live_rx.borrow_and_update().as_ref().map(|live| live.generation);
                // Same generation: only the publishing channel was replaced.
                if generation != Some(consuming.generation) {
                    return End::Lost;
                }
            }
            permit = tx.reserve(), if *missed => match permit {
                Ok(permit) => {
                    permit.send(Delivery::new(Bytes::new(), Box::new(NoAck)));
                    *missed = false;
                }
                Err(_) => return End::Done,
            },
            next = consuming.consumer.next() => match next {
                Some(Ok(delivery)) => match target {
                    Target::Queue { .. } => {
                        let delivery = Delivery::new(
                            Bytes::from(delivery.data),
                            Box::new(AmqpAcker(delivery.acker)),
                        );
                        // Blocks at most until the caller takes one: the prefetch bounds how
                        // many are unacked, and so how many can be waiting here.
                        if tx.send(delivery).await.is_err() {
                            return End::Done;
                        }
                    }
                    Target::Events { .. } => {
                        if !offer_event(tx, Bytes::from(delivery.data), missed) {
                            return End::Done;
                        }
                    }
                },
                Some(Err(error)) => {
                    warn!(target = %target, %error, "subscription interrupted");
                    return End::Lost;
                }
                None => {
                    warn!(target = %target, "the broker cancelled the subscription");
                    return End::Lost;
                }
            },
        }
    }
}

/// Hands an event to a subscriber without ever waiting on it: a subscriber that lags behind
/// loses events and gets an empty payload instead, as soon as it has room. False once the
/// subscriber is gone.
fn offer_event(tx: &mpsc::Sender<Delivery>, payload: Bytes, missed: &mut bool) -> bool {
    use mpsc::error::TrySendError;
    if *missed {
        match tx.try_send(Delivery::new(Bytes::new(), Box::new(NoAck))) {
            Ok(()) => *missed = false,
            Err(TrySendError::Full(_)) => return true,
            Err(TrySendError::Closed(_)) => return false,
        }
    }
    match tx.try_send(Delivery::new(payload, Box::new(NoAck))) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            *missed = true;
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

/// Waits for a connection and subscribes on it; `None` when there is no one to feed any more.
async fn resubscribe(
    shared: &Shared,
    target: &Target,
    tx: &mpsc::Sender<Delivery>,
    live_rx: &mut watch::Receiver<Option<Arc<Live>>>,
) -> Option<Consuming> {
    let mut backoff = Backoff::new();
    loop {
        let live = tokio::select! {
            _ = shared.stop.cancelled() => return None,
            _ = tx.closed() => return None,
            live = live_rx.wait_for(Option::is_some) => match live {
                Ok(live) => live.clone(),
                Err(_) => return None,
            },
        };
        let Some(live) = live else { continue };
        let attempt = tokio::select! {
            _ = shared.stop.cancelled() => return None,
            _ = tx.closed() => return None,
            attempt = target.open(&live) => attempt,
        };
        match attempt {
            Ok(consuming) => return Some(consuming),
            Err(error) => {
                // Usually the connection died too and the supervisor is on it.
                let delay = backoff.next_delay();
                debug!(target = %target, %error, retry_in = ?delay, "could not subscribe again");
                tokio::select! {
                    _ = shared.stop.cancelled() => return None,
                    _ = tx.closed() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Settles a queue delivery on the channel it came from.
struct AmqpAcker(lapin::Acker);

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        settled(self.0.ack(BasicAckOptions::default()).await)
    }

    async fn nack(self: Box<Self>) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        settled(self.0.nack(options).await)
    }
}

/// lapin answers `Ok(false)` when the delivery's channel is closed: the broker will deliver
/// the message again, so the caller must know it was not settled.
fn settled(result: lapin::Result<bool>) -> Result<(), BrokerError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure::ChannelClosed.into()),
        Err(error) => Err(Failure::Amqp(error).into()),
    }
}

/// Event deliveries are consumed without acks.
struct NoAck;

#[async_trait]
impl Acker for NoAck {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn nack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use lapin::options::QueueDeleteOptions;
    use std::collections::HashSet;
    use std::time::Instant;
    use tokio::time::timeout;

    const DEADLINE: Duration = Duration::from_secs(15);

    fn url() -> String {
        std::env::var("NS_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
    }

    async fn broker() -> (AmqpBroker, String) {
        let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
        let broker = AmqpBroker::connect(&url(), &prefix)
            .await
            .expect("RabbitMQ must run at NS_TEST_AMQP_URL");
        (broker, prefix)
    }

    async fn next(subscription: &mut Subscription) -> Delivery {
        timeout(DEADLINE, subscription.recv())
            .await
            .expect("no delivery before the deadline")
            .expect("the subscription ended")
    }

    /// Stops the broker, then deletes what the test leaves on the shared RabbitMQ.
    async fn clean_up(broker: AmqpBroker, prefix: &str, durable_queues: &[&str]) {
        drop(broker);
        delete(prefix, durable_queues).await;
    }

    /// Deletes durable queues and the events exchange behind the broker's back.
    async fn delete(prefix: &str, durable_queues: &[&str]) {
        let Ok(connection) = Connection::connect(&url(), ConnectionProperties::default()).await
        else {
            return;
        };
        if let Ok(channel) = connection.create_channel().await {
            for queue in durable_queues {
                let name = format!("{prefix}{queue}");
                let _ = channel
                    .queue_delete(name.into(), QueueDeleteOptions::default())
                    .await;
            }
            let exchange = format!("{prefix}{EVENTS_EXCHANGE}");
            let _ = channel
                .exchange_delete(exchange.into(), Default::default())
                .await;
            let _ = channel.close(200, "test done".into()).await;
        }
        let _ = connection.close(200, "test done".into()).await;
    }

    #[tokio::test]
    async fn round_trip_with_ack() {
        let (broker, prefix) = broker().await;
        assert!(broker.is_healthy());
        let mut subscription = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        broker
            .publish("q", Bytes::from_static(b"one"))
            .await
            .unwrap();
        let delivery = next(&mut subscription).await;
        assert_eq!(delivery.payload, Bytes::from_static(b"one"));
        delivery.ack().await.unwrap();

        // Acked: a new subscription gets the next message, not this one again.
        drop(subscription);
        broker
            .publish("q", Bytes::from_static(b"two"))
            .await
            .unwrap();
        let mut subscription = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        let delivery = next(&mut subscription).await;
        assert_eq!(delivery.payload, Bytes::from_static(b"two"));
        delivery.ack().await.unwrap();
        clean_up(broker, &prefix, &["q"]).await;
    }

    #[tokio::test]
    async fn a_declared_durable_queue_keeps_messages_until_its_first_consumer() {
        let (broker, prefix) = broker().await;
        assert!(matches!(
            broker.publish("early", Bytes::from_static(b"x")).await,
            Err(BrokerError::Unroutable(_))
        ));
        broker.declare_durable("early").await.unwrap();
        broker
            .publish("early", Bytes::from_static(b"kept"))
            .await
            .unwrap();
        let mut subscription = broker
            .consume("early", QueueKind::Durable, 10)
            .await
            .unwrap();
        let delivery = next(&mut subscription).await;
        assert_eq!(delivery.payload, Bytes::from_static(b"kept"));
        delivery.ack().await.unwrap();
        clean_up(broker, &prefix, &["early"]).await;
    }

    #[tokio::test]
    async fn nack_redelivers() {
        let (broker, prefix) = broker().await;
        let mut subscription = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        broker
            .publish("q", Bytes::from_static(b"again"))
            .await
            .unwrap();
        next(&mut subscription).await.nack().await.unwrap();
        let delivery = next(&mut subscription).await;
        assert_eq!(delivery.payload, Bytes::from_static(b"again"));
        delivery.ack().await.unwrap();
        clean_up(broker, &prefix, &["q"]).await;
    }

    #[tokio::test]
    async fn unacked_delivery_comes_back_after_the_subscription_is_dropped() {
        let (broker, prefix) = broker().await;
        let mut subscription = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        broker
            .publish("q", Bytes::from_static(b"lost?"))
            .await
            .unwrap();
        let delivery = next(&mut subscription).await;
        drop(subscription);
        let mut subscription = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        let again = next(&mut subscription).await;
        assert_eq!(again.payload, Bytes::from_static(b"lost?"));
        again.ack().await.unwrap();
        // Too late for the first copy: the channel it came from is closed.
        assert!(matches!(
            delivery.ack().await,
            Err(BrokerError::Unavailable(_))
        ));
        clean_up(broker, &prefix, &["q"]).await;
    }

    #[tokio::test]
    async fn publishing_to_a_missing_queue_is_unroutable() {
        let (broker, prefix) = broker().await;
        match broker.publish("nobody", Bytes::from_static(b"x")).await {
            Err(BrokerError::Unroutable(queue)) => assert_eq!(queue, "nobody"),
            other => panic!("expected Unroutable, got {other:?}"),
        }
        // The channel survives it.
        let _subscription = broker.consume("q", QueueKind::Durable, 1).await.unwrap();
        broker.publish("q", Bytes::from_static(b"x")).await.unwrap();
        assert!(broker.is_healthy());
        clean_up(broker, &prefix, &["q"]).await;
    }

    #[tokio::test]
    async fn private_queue_goes_away_with_its_consumer() {
        let (broker, prefix) = broker().await;
        let mut subscription = broker
            .consume("ws.a", QueueKind::Private, 10)
            .await
            .unwrap();
        broker
            .publish("ws.a", Bytes::from_static(b"hi"))
            .await
            .unwrap();
        next(&mut subscription).await.ack().await.unwrap();
        drop(subscription);
        let gone = timeout(DEADLINE, async {
            loop {
                match broker.publish("ws.a", Bytes::from_static(b"hi")).await {
                    Err(BrokerError::Unroutable(_)) => break,
                    Ok(()) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
        })
        .await;
        assert!(gone.is_ok(), "the private queue outlived its consumer");
        clean_up(broker, &prefix, &[]).await;
    }

    #[tokio::test]
    async fn events_fan_out_to_every_subscriber() {
        let (broker, prefix) = broker().await;
        let mut first = broker.subscribe_events().await.unwrap();
        let mut second = broker.subscribe_events().await.unwrap();
        broker
            .publish_event(Bytes::from_static(b"changed"))
            .await
            .unwrap();
        for subscription in [&mut first, &mut second] {
            let delivery = next(subscription).await;
            assert_eq!(delivery.payload, Bytes::from_static(b"changed"));
            delivery.ack().await.unwrap();
        }
        clean_up(broker, &prefix, &[]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_publishes_are_confirmed_and_consumed() {
        const COUNT: usize = 2000;
        let (broker, prefix) = broker().await;
        let mut subscription = broker.consume("q", QueueKind::Durable, 200).await.unwrap();
        let started = Instant::now();
        let consumer = tokio::spawn(async move {
            let mut seen = HashSet::new();
            while seen.len() < COUNT {
                let delivery = next(&mut subscription).await;
                seen.insert(delivery.payload.clone());
                delivery.ack().await.unwrap();
            }
            seen
        });
        let publishes = (0..COUNT).map(|i| broker.publish("q", Bytes::from(i.to_string())));
        let results = timeout(DEADLINE, futures::future::join_all(publishes))
            .await
            .expect("publishes not confirmed before the deadline");
        let published = started.elapsed();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let seen = timeout(DEADLINE, consumer).await.unwrap().unwrap();
        let consumed = started.elapsed();
        assert_eq!(seen.len(), COUNT);
        eprintln!(
            "{COUNT} messages: confirmed in {published:?}, consumed in {consumed:?} ({:.0} msg/s)",
            COUNT as f64 / consumed.as_secs_f64()
        );
        clean_up(broker, &prefix, &["q"]).await;
    }

    /// lapin attaches returns to whichever confirm resolves next; the publisher must still give
    /// each caller its own outcome.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_mixed_publishes_each_get_their_own_outcome() {
        const COUNT: usize = 4000;
        let (broker, prefix) = broker().await;
        let _subscription = broker.consume("q", QueueKind::Durable, 100).await.unwrap();
        let publishes = (0..COUNT).map(|i| {
            let broker = broker.clone();
            async move {
                let queue = if i % 2 == 0 { "q" } else { "missing" };
                (
                    queue,
                    broker.publish(queue, Bytes::from(i.to_string())).await,
                )
            }
        });
        let results = timeout(DEADLINE, futures::future::join_all(publishes))
            .await
            .expect("publishes not confirmed before the deadline");
        let wrong: Vec<_> = results
            .iter()
            .filter(|(queue, result)| match result {
                Ok(()) => *queue != "q",
                Err(BrokerError::Unroutable(returned)) => *queue != "missing" || returned != queue,
                Err(_) => true,
            })
            .collect();
        assert!(wrong.is_empty(), "{} wrong outcomes", wrong.len());
        clean_up(broker, &prefix, &["q"]).await;
    }

    /// A queue deleted under its consumer is declared again; the connection is not affected.
    #[tokio::test]
    async fn resubscribes_when_the_queue_is_deleted() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (broker, prefix) = broker().await;
        let mut work = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        let generation = broker.current().unwrap().generation;
        delete(&prefix, &["q"]).await;
        let back = timeout(DEADLINE, async {
            while broker
                .publish("q", Bytes::from_static(b"again"))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(back.is_ok(), "the queue was not declared again");
        assert_eq!(next(&mut work).await.payload, Bytes::from_static(b"again"));
        assert_eq!(broker.current().unwrap().generation, generation);
        assert!(broker.is_healthy());
        clean_up(broker, &prefix, &["q"]).await;
    }

    /// The pid of our connection in `rabbitmqctl list_connections`, if the tool is there.
    fn connection_pid(prefix: &str) -> Option<String> {
        let output = std::process::Command::new("rabbitmqctl")
            .args(["list_connections", "-q", "pid", "client_properties"])
            .output()
            .ok()?;
        let marker = format!("\"ns:{prefix}:");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|line| line.contains(&marker))
            .and_then(|line| line.split('\t').next())
            .map(str::to_owned)
    }

    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let waited = timeout(DEADLINE, async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{what} did not happen before the deadline");
    }

    /// Kills our connection from the broker's side (the other tests' connections are left
    /// alone) and checks that everything comes back on a new one.
    #[tokio::test]
    async fn recovers_when_the_broker_closes_the_connection() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (broker, prefix) = broker().await;
        let Some(pid) = connection_pid(&prefix) else {
            eprintln!("rabbitmqctl unavailable: reconnection test skipped");
            return;
        };
        let mut work = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        let mut private = broker
            .consume("ws.a", QueueKind::Private, 10)
            .await
            .unwrap();
        let mut events = broker.subscribe_events().await.unwrap();
        broker
            .publish("q", Bytes::from_static(b"before"))
            .await
            .unwrap();
        let unacked = next(&mut work).await;

        let closed = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", &pid, "reconnection test"])
            .output()
            .expect("rabbitmqctl");
        assert!(closed.status.success(), "{closed:?}");
        wait_until("going unhealthy", || !broker.is_healthy()).await;
        assert!(matches!(
            broker.publish("q", Bytes::from_static(b"x")).await,
            Err(BrokerError::Unavailable(_))
        ));
        // The delivery's channel is gone: it can't be acked, it will come again.
        assert!(matches!(
            unacked.ack().await,
            Err(BrokerError::Unavailable(_))
        ));
        wait_until("reconnecting", || broker.is_healthy()).await;

        // The subscriptions come back by themselves; the private queue is declared again.
        let redelivered = next(&mut work).await;
        assert_eq!(redelivered.payload, Bytes::from_static(b"before"));
        redelivered.ack().await.unwrap();
        let resubscribed = timeout(DEADLINE, async {
            while broker
                .publish("ws.a", Bytes::from_static(b"after"))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(resubscribed.is_ok(), "the private queue did not come back");
        assert_eq!(
            next(&mut private).await.payload,
            Bytes::from_static(b"after")
        );
        // Events: first the "you may have missed some" marker, then events again.
        assert!(next(&mut events).await.payload.is_empty());
        broker
            .publish_event(Bytes::from_static(b"e"))
            .await
            .unwrap();
        assert_eq!(next(&mut events).await.payload, Bytes::from_static(b"e"));
        clean_up(broker, &prefix, &["q"]).await;
    }
}
