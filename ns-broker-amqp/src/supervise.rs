//! Connection supervision: opening a session (connection plus publishing channel), watching
//! it, and reconnecting with [`Backoff`] when it dies.

use crate::publish::{open_publisher, Publisher};
use crate::{within, Failure, Live, Shared};
use futures::stream::Stream;
use futures::StreamExt;
use lapin::{Connection, ConnectionProperties, Event};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the supervisor looks at the connection besides reacting to lapin's events.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub(crate) const FIRST_GENERATION: u64 = 1;

/// A fresh connection before it is handed to [`serve`].
pub(crate) struct Session {
    connection: Arc<Connection>,
    events: Pin<Box<dyn Stream<Item = Event> + Send>>,
    publisher: Publisher,
    publisher_task: JoinHandle<()>,
}

pub(crate) async fn open_session(shared: &Shared) -> Result<Session, Failure> {
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

pub(crate) fn publish_live(shared: &Shared, generation: u64, session: &Session) {
    shared.live.send_replace(Some(Arc::new(Live {
        generation,
        connection: session.connection.clone(),
        publisher: session.publisher.clone(),
    })));
}

/// Keeps a connection up until the broker is dropped.
pub(crate) async fn supervise(shared: Arc<Shared>, first: Session) {
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
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    fn peek(&self) -> Duration {
        self.next
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
}
