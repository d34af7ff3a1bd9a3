//! Routing with the monitor's `run(...)` in this process, over the in-process broker and the
//! embedded store: a new notification goes to where its UAs are, and one handed back by a
//! front-end its UA had left goes to where that UA is now, with that front-end counted out.

use std::sync::Arc;
use std::time::Duration;

use common::delivery::{DeliveryStatus, DeliveryUpdate};
use common::messages::{
    decode, FrontEndMessage, NewMessage, Reroute, WakeUp, NEW_MESSAGES, UDP_WAKEUPS,
};
use common::model::{AppToken, ConnId, Interface, MessageId, NodeId, UaId, UaRoute};
use common::notification::Notification;
use ns_broker::{Broker, QueueKind, Subscription};
use ns_broker_local::LocalBroker;
use ns_runtime::metrics::Registry;
use ns_runtime::Clock;
use ns_store::Store;
use ns_store_redb::EmbeddedStore;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

struct Fixture {
    store: Arc<EmbeddedStore>,
    broker: Arc<LocalBroker>,
    registry: Registry,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        Fixture::start_on(store, dir).await
    }

    /// The monitor on `store`, which may hold notifications already.
    async fn start_on(store: Arc<EmbeddedStore>, dir: tempfile::TempDir) -> Fixture {
        let f = Fixture {
            store,
            broker: Arc::new(LocalBroker::new()),
            registry: Registry::default(),
            shutdown: CancellationToken::new(),
            _dir: dir,
        };
        let deps = ns_msg_monitor::Deps {
            store: f.store.clone(),
            broker: f.broker.clone(),
            registry: f.registry.clone(),
            clock: Clock::system(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings = ns_msg_monitor::Settings::default();
        tokio::spawn(ns_msg_monitor::run(
            settings,
            listener,
            deps,
            f.shutdown.clone(),
        ));
        f
    }

    async fn at(&self, ua: &str, node: Option<&str>, wakeable: bool) -> UaId {
        let ua = UaId::new(ua);
        let interface = wakeable.then(|| Interface {
            ip: "127.0.0.1".parse().unwrap(),
            port: 9,
        });
        let route = match node {
            Some(node) => {
                UaRoute::connected(ua.clone(), NodeId::new(node), ConnId::new("c"), interface)
            }
            None => UaRoute::offline(ua.clone(), interface),
        };
        self.store.register_ua(&route).await.unwrap();
        ua
    }

    async fn queue(&self, name: &str, kind: QueueKind) -> Subscription {
        self.broker.consume(name, kind, 16).await.unwrap()
    }
}

fn notification(app: &AppToken) -> Notification {
    let clock = Clock::system();
    Notification {
        message_id: MessageId::new(uuid::Uuid::now_v7().simple().to_string()),
        app_token: app.clone(),
        id: "n".into(),
        payload: common::notification::Payload::Text("m".into()),
        ttl: 3600,
        timestamp: clock.now(),
        expires_at: clock.now().plus(3600),
        priority: 1,
        created_at: clock.now_millis(),
    }
}

async fn next<T: serde::de::DeserializeOwned>(queue: &mut Subscription) -> T {
    let delivery = timeout(DEADLINE, queue.recv())
        .await
        .expect("a message before the deadline")
        .expect("the queue is open");
    let message = decode(&delivery.payload).expect("a message of the expected kind");
    delivery.ack().await.unwrap();
    message
}

async fn silent(queue: &mut Subscription) {
    let extra = timeout(Duration::from_millis(300), queue.recv()).await;
    assert!(extra.is_err(), "nothing more is routed there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_notification_goes_where_its_uas_are() {
    let f = Fixture::start().await;
    let app = AppToken::new("app");
    let mut front_end = f.queue("ws.b", QueueKind::Private).await;
    let mut wakeups = f.queue(UDP_WAKEUPS, QueueKind::Durable).await;
    let live = f.at("live", Some("b"), true).await;
    let sleeping = f.at("sleeping", None, true).await;
    let on_a_dead_node = f.at("stranded", Some("dead"), true).await;
    let unwakeable = f.at("unwakeable", None, false).await;
    for ua in [&live, &sleeping, &on_a_dead_node, &unwakeable] {
        f.store.register_wa(ua, &app).await.unwrap();
    }
    let n = notification(&app);
    f.store.insert_notification(&n, n.timestamp).await.unwrap();
    let message = NewMessage {
        notification: n.clone(),
        reroute: None,
    };
    ns_broker::publish(&*f.broker, NEW_MESSAGES, &message)
        .await
        .unwrap();

    match next::<FrontEndMessage>(&mut front_end).await {
        FrontEndMessage::Deliver {
            notification,
            targets,
        } => {
            assert_eq!(notification.message_id, n.message_id);
            assert_eq!(targets, vec![live]);
        }
        other => panic!("expected a delivery, got {other:?}"),
    }
    let mut woken = vec![
        next::<WakeUp>(&mut wakeups).await.ua,
        next::<WakeUp>(&mut wakeups).await.ua,
    ];
    woken.sort();
    assert_eq!(
        woken,
        vec![sleeping, on_a_dead_node],
        "a dead front-end's UA is woken too"
    );
    silent(&mut wakeups).await;
    let report = f
        .store
        .status(&app, "n", n.timestamp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.deliveries.len(), 4, "every UA is owed it");
    f.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_handed_back_goes_where_its_ua_is_now() {
    let f = Fixture::start().await;
    let app = AppToken::new("app");
    let mut moved_to = f.queue("ws.b", QueueKind::Private).await;
    let mut handed_back_by = f.queue("ws.a", QueueKind::Private).await;
    let mut wakeups = f.queue(UDP_WAKEUPS, QueueKind::Durable).await;
    // One UA moved from a to b; another is still recorded on a, which no longer holds it.
    let moved = f.at("moved", Some("b"), false).await;
    let left = f.at("left", Some("a"), true).await;
    let n = notification(&app);
    let message = NewMessage {
        notification: n.clone(),
        reroute: Some(Reroute {
            uas: vec![moved.clone(), left.clone()],
            away_from: NodeId::new("a"),
        }),
    };
    ns_broker::publish(&*f.broker, NEW_MESSAGES, &message)
        .await
        .unwrap();

    match next::<FrontEndMessage>(&mut moved_to).await {
        FrontEndMessage::Deliver { targets, .. } => assert_eq!(targets, vec![moved]),
        other => panic!("expected a delivery, got {other:?}"),
    }
    assert_eq!(next::<WakeUp>(&mut wakeups).await.ua, left);
    silent(&mut handed_back_by).await;
    assert!(f.registry.render().contains("ns_monitor_rerouted_total 1"));
    f.shutdown.cancel();
}

/// A message handled again after its UA acked (the monitor stopped before acking it to the
/// broker), or one that expired while queued, is not sent to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_goes_to_a_ua_that_acked_it_nor_after_expiry() {
    let f = Fixture::start().await;
    let app = AppToken::new("app");
    let mut front_end = f.queue("ws.b", QueueKind::Private).await;
    let (acked, owed) = (
        f.at("acked", Some("b"), false).await,
        f.at("owed", Some("b"), false).await,
    );
    for ua in [&acked, &owed] {
        f.store.register_wa(ua, &app).await.unwrap();
    }
    let n = notification(&app);
    f.store.insert_notification(&n, n.timestamp).await.unwrap();
    let both = [acked.clone(), owed.clone()];
    f.store
        .add_deliveries(&n, &both, n.timestamp, None)
        .await
        .unwrap();
    let ack = DeliveryUpdate::for_ua(&acked, [n.message_id.clone()], DeliveryStatus::Acked);
    f.store.update_deliveries(&ack, n.timestamp).await.unwrap();
    let again = NewMessage {
        notification: n.clone(),
        reroute: None,
    };
    ns_broker::publish(&*f.broker, NEW_MESSAGES, &again)
        .await
        .unwrap();
    match next::<FrontEndMessage>(&mut front_end).await {
        FrontEndMessage::Deliver { targets, .. } => assert_eq!(targets, vec![owed]),
        other => panic!("expected a delivery, got {other:?}"),
    }

    let now = Clock::system().now();
    let expired = Notification {
        id: "expired".into(),
        ttl: 1,
        timestamp: now.plus(-10),
        expires_at: now.plus(-9),
        ..notification(&app)
    };
    f.store.insert_notification(&expired, now).await.unwrap();
    let message = NewMessage {
        notification: expired,
        reroute: None,
    };
    ns_broker::publish(&*f.broker, NEW_MESSAGES, &message)
        .await
        .unwrap();
    silent(&mut front_end).await;
    f.shutdown.cancel();
}

/// `ns_pending_notifications` counts what the store owes, from the monitor's start on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_notifications_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    let app = AppToken::new("app-pending");
    for id in ["a", "b"] {
        let n = Notification {
            id: id.into(),
            ..notification(&app)
        };
        store.insert_notification(&n, n.timestamp).await.unwrap();
    }
    let f = Fixture::start_on(store, dir).await;
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = f.registry.render();
        if text.contains("\nns_pending_notifications 2\n") {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.shutdown.cancel();
}
