//! A conformance suite for [`Store`] implementations: each function checks one documented
//! behaviour of the trait and panics when the store gets it wrong. An implementation runs
//! every one of them as its own test with [`conformance_tests!`](crate::conformance_tests).
//!
//! Every function makes up its own UAs, apps and AS ids with random UUIDs, so the suite can run
//! against a database that other runs share. Times are epoch seconds close to the real clock,
//! and expiries are tested by passing a `now` in the future rather than by storing notifications
//! that are already expired, because MongoDB's TTL monitor could remove those at any moment.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use common::delivery::{DeliveryStatus, DeliveryUpdate, StatusReport};
use common::model::{
    App, AppToken, ConnId, EpochMillis, EpochSecs, Interface, Live, MessageId, NodeId, UaId,
    UaRoute,
};
use common::notification::{ContentEncoding, Notification, Payload, PushMessage};
use common::purge::Retention;
use futures::FutureExt;

use crate::{Added, OwedCount, Store};

/// A store to run one behaviour against, and how to clean up after it.
#[async_trait]
pub trait Fixture: Send + Sync {
    fn store(&self) -> &dyn Store;

    /// Removes what the behaviour left behind (a database on a shared server, say).
    async fn tear_down(self);
}

/// Runs `behaviour` against the fixture's store, then tears the fixture down, even when the
/// behaviour failed; a failure is then raised again.
pub async fn run<F>(
    fixture: F,
    behaviour: impl for<'a> FnOnce(&'a dyn Store) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
) where
    F: Fixture,
{
    let outcome = AssertUnwindSafe(behaviour(fixture.store()))
        .catch_unwind()
        .await;
    fixture.tear_down().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One `#[tokio::test]` per behaviour of the suite, each with a fixture from `$fixture`, an
/// `async fn() -> impl Fixture`.
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:path) => {
        $crate::conformance_tests!(@each $fixture;
            ping,
            register_ua_returns_previous,
            disconnect_ua_only_matching,
            ua_routes_leaves_unknown_out,
            put_and_get_app,
            register_and_unregister_wa,
            app_uas_lists_registrations,
            ua_registrations_counts_each_app_once,
            add_deliveries_is_idempotent,
            add_deliveries_needs_a_stored_notification,
            pending_for_app_counts_live_notifications,
            pending_total_counts_every_app,
            add_deliveries_refuses_uas_at_their_quota,
            quota_leaves_out_replaced_and_expired_deliveries,
            concurrent_routings_keep_to_the_quota,
            insert_notification_replaces_older,
            outstanding_order_filter_and_limit,
            update_deliveries_rules,
            record_deliveries_follow_the_same_rules,
            unrouted_lists_notifications_not_routed,
            unrouted_leaves_out_expired,
            status_reports_deliveries,
            report_finds_a_notification_by_its_message_id,
            withdraw_stops_routing_and_delivery,
            push_payloads_come_back_as_stored,
            rejected_settles_but_never_downgrades_an_ack,
            purge_removes_expired_and_old_acked,
            purge_removes_routed_notifications_with_nothing_left,
        );
    };
    (@each $fixture:path; $($behaviour:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $behaviour() {
            $crate::conformance::run($fixture().await, |store| {
                Box::pin($crate::conformance::$behaviour(store))
            })
            .await;
        }
    )*};
}

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn new_ua() -> UaId {
    UaId::new(uid())
}

fn new_app() -> AppToken {
    AppToken::new(uid())
}

fn now() -> EpochSecs {
    millis().secs()
}

fn millis() -> EpochMillis {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    EpochMillis(i64::try_from(since.as_millis()).expect("a sane clock"))
}

fn later(at: EpochMillis, by: i64) -> EpochMillis {
    EpochMillis(at.as_i64() + by)
}

/// A notification stored at `now` with this creation time.
fn notification(
    app_token: &AppToken,
    id: &str,
    ttl: u32,
    now: EpochSecs,
    created_at: EpochMillis,
) -> Notification {
    Notification {
        message_id: MessageId::new(uuid::Uuid::now_v7().simple().to_string()),
        app_token: app_token.clone(),
        id: id.to_owned(),
        payload: Payload::Text(format!("message {}", uid())),
        ttl,
        timestamp: now,
        expires_at: now.plus(i64::from(ttl)),
        priority: 1,
        created_at,
    }
}

fn connected(ua: &UaId, node: &str, conn: &str) -> UaRoute {
    UaRoute::connected(ua.clone(), NodeId::new(node), ConnId::new(conn), None)
}

fn live(node: &str, conn: &str) -> Live {
    Live {
        node: NodeId::new(node),
        conn: ConnId::new(conn),
    }
}

fn update(n: &Notification, ua: &UaId, status: DeliveryStatus) -> DeliveryUpdate {
    DeliveryUpdate {
        message_id: n.message_id.clone(),
        ua: ua.clone(),
        status,
    }
}

fn ids(ns: &[Notification]) -> Vec<&MessageId> {
    ns.iter().map(|n| &n.message_id).collect()
}

/// The status of each UA in a report, sorted by UA.
fn statuses(report: &StatusReport) -> Vec<(UaId, DeliveryStatus)> {
    let mut v: Vec<_> = report
        .deliveries
        .iter()
        .map(|d| (d.device.clone(), d.status))
        .collect();
    v.sort_by(|x, y| x.0.cmp(&y.0));
    v
}

fn sorted(mut v: Vec<(UaId, DeliveryStatus)>) -> Vec<(UaId, DeliveryStatus)> {
    v.sort_by(|x, y| x.0.cmp(&y.0));
    v
}

/// Stores `n` and routes it to `uas`, which must succeed.
async fn stored_and_routed(store: &dyn Store, n: &Notification, uas: &[UaId], now: EpochSecs) {
    store
        .insert_notification(n, now)
        .await
        .expect("insert_notification");
    assert!(
        store
            .add_deliveries(n, uas, now, None)
            .await
            .expect("add_deliveries")
            .routed
    );
}

async fn report(store: &dyn Store, n: &Notification, now: EpochSecs) -> StatusReport {
    store
        .status(&n.app_token, &n.id, now)
        .await
        .expect("status")
        .expect("a report")
}

pub async fn ping(store: &dyn Store) {
    store.ping().await.expect("ping");
}

pub async fn register_ua_returns_previous(store: &dyn Store) {
    let ua = new_ua();
    let first = UaRoute::offline(
        ua.clone(),
        Some(Interface {
            ip: "192.0.2.7".parse().expect("ip"),
            port: 5000,
        }),
    );
    let before = store.register_ua(&first).await.expect("register_ua");
    assert_eq!(before, None, "a new UA has no previous record");

    let second = connected(&ua, "node-a", "conn-1");
    let before = store.register_ua(&second).await.expect("register_ua");
    assert_eq!(
        before,
        Some(first),
        "register_ua returns the record as it was"
    );

    let third = connected(&ua, "node-b", "conn-2");
    let before = store.register_ua(&third).await.expect("register_ua");
    assert_eq!(before, Some(second));

    let routes = store
        .ua_routes(std::slice::from_ref(&ua))
        .await
        .expect("ua_routes");
    assert_eq!(routes, vec![third], "the newest record is stored");
}

pub async fn disconnect_ua_only_matching(store: &dyn Store) {
    let ua = new_ua();
    let route = connected(&ua, "node-a", "conn-1");
    store.register_ua(&route).await.expect("register_ua");

    store
        .disconnect_ua(&ua, &live("node-a", "conn-other"))
        .await
        .expect("disconnect_ua");
    store
        .disconnect_ua(&ua, &live("node-other", "conn-1"))
        .await
        .expect("disconnect_ua");
    let routes = store
        .ua_routes(std::slice::from_ref(&ua))
        .await
        .expect("ua_routes");
    assert_eq!(
        routes,
        vec![route],
        "a disconnect of another connection leaves the UA as it is"
    );

    store
        .disconnect_ua(&ua, &live("node-a", "conn-1"))
        .await
        .expect("disconnect_ua");
    let routes = store
        .ua_routes(std::slice::from_ref(&ua))
        .await
        .expect("ua_routes");
    assert_eq!(routes.len(), 1, "a disconnected UA is still known");
    assert_eq!(routes[0].ua, ua);
    assert_eq!(
        routes[0].live, None,
        "the matching disconnect clears the live connection"
    );

    // A disconnect of a UA the store never saw is not an error, and doesn't create it.
    let unknown = new_ua();
    store
        .disconnect_ua(&unknown, &live("node-a", "conn-1"))
        .await
        .expect("disconnect_ua of an unknown UA");
    let routes = store.ua_routes(&[unknown]).await.expect("ua_routes");
    assert!(routes.is_empty());
}

pub async fn ua_routes_leaves_unknown_out(store: &dyn Store) {
    let a = connected(&new_ua(), "node-a", "conn-a");
    let b = UaRoute::offline(
        new_ua(),
        Some(Interface {
            ip: "2001:db8::1".parse().expect("ip"),
            port: 2442,
        }),
    );
    store.register_ua(&a).await.expect("register_ua");
    store.register_ua(&b).await.expect("register_ua");

    let mut routes = store
        .ua_routes(&[a.ua.clone(), new_ua(), b.ua.clone()])
        .await
        .expect("ua_routes");
    routes.sort_by(|x, y| x.ua.cmp(&y.ua));
    let mut expected = vec![a, b];
    expected.sort_by(|x, y| x.ua.cmp(&y.ua));
    assert_eq!(
        routes, expected,
        "known UAs are returned, unknown ones left out"
    );

    let routes = store.ua_routes(&[]).await.expect("ua_routes of nothing");
    assert!(routes.is_empty());
}

pub async fn put_and_get_app(store: &dyn Store) {
    let with_key = App {
        app_token: new_app(),
        pbk: Some("-----BEGIN PUBLIC KEY-----\nMFww\n-----END PUBLIC KEY-----\n".to_owned()),
    };
    let without_key = App {
        app_token: new_app(),
        pbk: None,
    };
    store.put_app(&with_key).await.expect("put_app");
    store.put_app(&with_key).await.expect("put_app twice");
    store.put_app(&without_key).await.expect("put_app");

    let got = store.get_app(&with_key.app_token).await.expect("get_app");
    assert_eq!(got, Some(with_key));
    let got = store
        .get_app(&without_key.app_token)
        .await
        .expect("get_app");
    assert_eq!(got, Some(without_key));
    let got = store.get_app(&new_app()).await.expect("get_app of unknown");
    assert_eq!(got, None);
}

pub async fn register_and_unregister_wa(store: &dyn Store) {
    let ua = new_ua();
    let app = new_app();
    store.register_wa(&ua, &app).await.expect("register_wa");
    store
        .register_wa(&ua, &app)
        .await
        .expect("register_wa twice");
    let uas = store.app_uas(&app).await.expect("app_uas");
    assert_eq!(
        uas,
        vec![ua.clone()],
        "registering twice keeps one registration"
    );

    assert!(store.unregister_wa(&ua, &app).await.expect("unregister_wa"));
    assert!(
        !store.unregister_wa(&ua, &app).await.expect("unregister_wa"),
        "a second unregister finds nothing"
    );
    assert!(store.app_uas(&app).await.expect("app_uas").is_empty());
    assert!(!store
        .unregister_wa(&new_ua(), &new_app())
        .await
        .expect("unregister_wa of unknown"));
}

pub async fn app_uas_lists_registrations(store: &dyn Store) {
    let app = new_app();
    let other_app = new_app();
    let (a, b, c) = (new_ua(), new_ua(), new_ua());
    store.register_wa(&a, &app).await.expect("register_wa");
    store.register_wa(&b, &app).await.expect("register_wa");
    store
        .register_wa(&c, &other_app)
        .await
        .expect("register_wa");
    store
        .register_wa(&a, &other_app)
        .await
        .expect("register_wa");

    let mut uas = store.app_uas(&app).await.expect("app_uas");
    uas.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(uas, expected);

    store.unregister_wa(&a, &app).await.expect("unregister_wa");
    assert_eq!(store.app_uas(&app).await.expect("app_uas"), vec![b]);
    let mut uas = store.app_uas(&other_app).await.expect("app_uas");
    uas.sort();
    let mut expected = vec![a, c];
    expected.sort();
    assert_eq!(uas, expected, "other apps' registrations are untouched");
    assert!(store.app_uas(&new_app()).await.expect("app_uas").is_empty());
}

pub async fn ua_registrations_counts_each_app_once(store: &dyn Store) {
    let (ua, other) = (new_ua(), new_ua());
    assert_eq!(store.ua_registrations(&ua).await.expect("count"), 0);
    let (a, b) = (new_app(), new_app());
    for app in [&a, &b, &a] {
        store.register_wa(&ua, app).await.expect("register_wa");
    }
    store.register_wa(&other, &a).await.expect("register_wa");
    assert_eq!(
        store.ua_registrations(&ua).await.expect("count"),
        2,
        "registering again counts once"
    );
    assert!(store.unregister_wa(&ua, &a).await.expect("unregister_wa"));
    assert!(!store.unregister_wa(&ua, &a).await.expect("unregister_wa"));
    assert_eq!(store.ua_registrations(&ua).await.expect("count"), 1);
    assert_eq!(store.ua_registrations(&other).await.expect("count"), 1);
}

pub async fn add_deliveries_is_idempotent(store: &dyn Store) {
    let now = now();
    let (a, b, c) = (new_ua(), new_ua(), new_ua());
    let n = notification(&new_app(), &uid(), 3600, now, millis());
    store
        .insert_notification(&n, now)
        .await
        .expect("insert_notification");
    // A broker message handled twice stores the notification twice.
    store
        .insert_notification(&n, now)
        .await
        .expect("insert_notification twice");

    assert!(
        store
            .add_deliveries(&n, &[a.clone(), b.clone()], now, None)
            .await
            .expect("add_deliveries")
            .routed
    );
    let changed = store
        .update_deliveries(&[update(&n, &a, DeliveryStatus::Sent)], now)
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 1);

    assert!(
        store
            .add_deliveries(&n, &[a.clone(), b.clone(), c.clone()], now, None)
            .await
            .expect("add_deliveries again")
            .routed
    );
    let report = report(store, &n, now).await;
    assert_eq!(report.message_id, n.message_id);
    assert_eq!(report.id, n.id);
    assert_eq!(
        statuses(&report),
        sorted(vec![
            (a.clone(), DeliveryStatus::Sent),
            (b.clone(), DeliveryStatus::Pending),
            (c.clone(), DeliveryStatus::Pending),
        ]),
        "existing deliveries are left as they are, new ones are pending"
    );

    // Handled once more after `a` acked: `a` is told settled, so that it is not routed to
    // again; the others are still owed.
    store
        .update_deliveries(&[update(&n, &a, DeliveryStatus::Acked)], now)
        .await
        .expect("update_deliveries");
    let again = store
        .add_deliveries(&n, &[a.clone(), b.clone(), c.clone()], now, None)
        .await
        .expect("add_deliveries after an ack");
    assert!(again.routed);
    assert_eq!(again.settled, vec![a.clone()]);
    assert!(again.refused.is_empty());
    let after_ack = self::report(store, &n, now).await;
    assert_eq!(
        statuses(&after_ack),
        sorted(vec![
            (a, DeliveryStatus::Acked),
            (b, DeliveryStatus::Pending),
            (c, DeliveryStatus::Pending),
        ])
    );
}

pub async fn add_deliveries_needs_a_stored_notification(store: &dyn Store) {
    let now = now();
    let ua = new_ua();
    let n = notification(&new_app(), &uid(), 3600, now, millis());
    let routed = store
        .add_deliveries(&n, std::slice::from_ref(&ua), now, None)
        .await
        .expect("add_deliveries")
        .routed;
    assert!(!routed, "a notification that isn't stored can't be routed");
    let out = store.outstanding(&ua, now, 100).await.expect("outstanding");
    assert!(out.is_empty(), "nothing was created");
}

pub async fn insert_notification_replaces_older(store: &dyn Store) {
    let now = now();
    let created = millis();
    let app = new_app();
    let id = uid();
    let (a, b, c, d) = (new_ua(), new_ua(), new_ua(), new_ua());

    let old = notification(&app, &id, 3600, now, created);
    stored_and_routed(store, &old, &[a.clone(), b.clone(), c.clone()], now).await;
    store
        .update_deliveries(
            &[
                update(&old, &b, DeliveryStatus::Sent),
                update(&old, &c, DeliveryStatus::Acked),
            ],
            now,
        )
        .await
        .expect("update_deliveries");

    // An unrelated notification of the same app must not be replaced.
    let other = notification(&app, &uid(), 3600, now, created);
    stored_and_routed(store, &other, std::slice::from_ref(&a), now).await;

    // Nor one with the same AS id in another app.
    let elsewhere = notification(&new_app(), &id, 3600, now, created);
    store
        .insert_notification(&elsewhere, now)
        .await
        .expect("insert_notification");

    // The newer one is short-lived so that a purge can remove it and let `status` show the
    // older one again.
    let new = notification(&app, &id, 10, now, later(created, 1));
    store
        .insert_notification(&new, now)
        .await
        .expect("insert_notification");
    assert!(
        store
            .add_deliveries(&elsewhere, &[new_ua()], now, None)
            .await
            .expect("add_deliveries")
            .routed,
        "the same AS id in another app is another notification"
    );

    let routed = store
        .add_deliveries(&old, std::slice::from_ref(&d), now, None)
        .await
        .expect("add_deliveries")
        .routed;
    assert!(!routed, "a replaced notification must not be routed");

    let newest = report(store, &new, now).await;
    assert_eq!(
        newest.message_id, new.message_id,
        "status shows the newest notification"
    );
    assert!(
        newest.deliveries.is_empty(),
        "the newest one isn't routed yet"
    );

    for ua in [&a, &b, &c, &d] {
        let out = store.outstanding(ua, now, 100).await.expect("outstanding");
        assert!(
            !ids(&out).contains(&&old.message_id),
            "a replaced notification is not outstanding"
        );
    }
    let out = store.outstanding(&a, now, 100).await.expect("outstanding");
    assert_eq!(
        ids(&out),
        vec![&other.message_id],
        "others stay outstanding"
    );

    assert!(
        store
            .add_deliveries(&new, &[a.clone(), b.clone()], now, None)
            .await
            .expect("add_deliveries")
            .routed
    );
    let out = store.outstanding(&b, now, 100).await.expect("outstanding");
    assert_eq!(ids(&out), vec![&new.message_id]);

    // Purging past the newer one's expiry makes the older one the newest again, which shows
    // what the replacement did to its deliveries.
    store
        .purge(now.plus(20), Retention { acked_secs: 3620 })
        .await
        .expect("purge");
    let report = report(store, &old, now).await;
    assert_eq!(report.message_id, old.message_id);
    assert_eq!(
        statuses(&report),
        sorted(vec![
            (a, DeliveryStatus::Replaced),
            (b, DeliveryStatus::Replaced),
            (c, DeliveryStatus::Acked),
        ]),
        "outstanding deliveries become replaced, acked ones stay acked, none is created for d"
    );
}

pub async fn outstanding_order_filter_and_limit(store: &dyn Store) {
    let now = now();
    let created = millis();
    let app = new_app();
    let ua = new_ua();
    let other_ua = new_ua();

    // Made and stored out of creation order, so that neither the order of the message ids
    // (UUIDv7, which sort by the time they were made) nor the order of storing gives the
    // order of `created_at`.
    let third = notification(&app, &uid(), 3600, now, later(created, 3));
    let second = notification(&app, &uid(), 3600, now, later(created, 2));
    let first = notification(&app, &uid(), 3600, now, later(created, 1));
    let short = notification(&app, &uid(), 60, now, later(created, 4));
    let acked = notification(&app, &uid(), 3600, now, created);
    let replaced = notification(&app, &uid(), 3600, now, later(created, 5));
    let replacement = notification(&app, &replaced.id, 3600, now, later(created, 6));
    for n in [&second, &third, &first, &short, &acked, &replaced] {
        stored_and_routed(store, n, std::slice::from_ref(&ua), now).await;
    }
    store
        .update_deliveries(&[update(&acked, &ua, DeliveryStatus::Acked)], now)
        .await
        .expect("update_deliveries");
    store
        .update_deliveries(&[update(&first, &ua, DeliveryStatus::Sent)], now)
        .await
        .expect("update_deliveries");
    store
        .insert_notification(&replacement, now)
        .await
        .expect("insert_notification");

    let out = store.outstanding(&ua, now, 100).await.expect("outstanding");
    assert_eq!(
        ids(&out),
        ids(&[first.clone(), second.clone(), third.clone(), short.clone()]),
        "pending and sent, oldest first, without acked or replaced ones"
    );
    assert_eq!(
        out[0], first,
        "the notification comes back as it was stored"
    );
    let count = store.owed_count(&ua, now).await.expect("owed_count");
    assert_eq!(
        count,
        OwedCount {
            pending: 4,
            next_expiry: Some(short.expires_at),
        },
        "owed_count counts what outstanding returns; the short one expires first"
    );

    let out = store.outstanding(&ua, now, 2).await.expect("outstanding");
    assert_eq!(
        ids(&out),
        ids(&[first.clone(), second.clone()]),
        "the limit holds"
    );

    let out = store
        .outstanding(&ua, now.plus(120), 100)
        .await
        .expect("outstanding");
    assert_eq!(
        ids(&out),
        ids(&[first.clone(), second, third]),
        "expired notifications are not outstanding"
    );
    let count = store
        .owed_count(&ua, now.plus(120))
        .await
        .expect("owed_count");
    assert_eq!(
        count,
        OwedCount {
            pending: 3,
            next_expiry: Some(first.expires_at),
        }
    );

    let out = store
        .outstanding(&other_ua, now, 100)
        .await
        .expect("outstanding");
    assert!(out.is_empty(), "other UAs owe nothing");
    let count = store.owed_count(&other_ua, now).await.expect("owed_count");
    assert_eq!(count, OwedCount::default());
}

pub async fn update_deliveries_rules(store: &dyn Store) {
    let now = now();
    let (a, b) = (new_ua(), new_ua());
    let n = notification(&new_app(), &uid(), 3600, now, millis());
    stored_and_routed(store, &n, &[a.clone(), b.clone()], now).await;

    let unknown_message = notification(&n.app_token, &uid(), 3600, now, n.created_at);
    let changed = store
        .update_deliveries(
            &[
                update(&n, &a, DeliveryStatus::Sent),
                update(&n, &b, DeliveryStatus::Sent),
                update(&n, &new_ua(), DeliveryStatus::Sent),
                update(&unknown_message, &a, DeliveryStatus::Acked),
            ],
            now,
        )
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 2, "unknown deliveries are ignored");

    let changed = store
        .update_deliveries(&[update(&n, &a, DeliveryStatus::Acked)], now.plus(1))
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 1);

    let changed = store
        .update_deliveries(&[update(&n, &a, DeliveryStatus::Sent)], now.plus(2))
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 0, "sent never downgrades acked");
    let changed = store
        .update_deliveries(&[update(&n, &a, DeliveryStatus::Acked)], now.plus(3))
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 0, "acking twice changes nothing");

    let report = report(store, &n, now.plus(4)).await;
    assert_eq!(
        statuses(&report),
        sorted(vec![
            (a.clone(), DeliveryStatus::Acked),
            (b.clone(), DeliveryStatus::Sent)
        ])
    );
    let acked_at = report
        .deliveries
        .iter()
        .find(|d| d.device == a)
        .map(|d| d.at);
    assert_eq!(acked_at, Some(now.plus(1)), "a change records its time");

    let changed = store
        .update_deliveries(&[], now)
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 0);

    let out = store
        .outstanding(&a, now.plus(4), 100)
        .await
        .expect("outstanding");
    assert!(
        out.is_empty(),
        "an acked notification is no longer outstanding"
    );
    let out = store
        .outstanding(&b, now.plus(4), 100)
        .await
        .expect("outstanding");
    assert_eq!(ids(&out), vec![&n.message_id]);
}

pub async fn record_deliveries_follow_the_same_rules(store: &dyn Store) {
    let now = now();
    let uas: Vec<UaId> = (0..20).map(|_| new_ua()).collect();
    let n = notification(&new_app(), &uid(), 3600, now, millis());
    stored_and_routed(store, &n, &uas, now).await;

    // Concurrent callers, as front-ends are: each UA is sent the notification and acks it,
    // the ack sometimes written before the sent.
    let n = &n;
    let writes = uas.iter().enumerate().map(|(i, ua)| async move {
        let (first, second) = if i % 2 == 0 {
            (DeliveryStatus::Sent, DeliveryStatus::Acked)
        } else {
            (DeliveryStatus::Acked, DeliveryStatus::Sent)
        };
        let both = futures::future::join(
            store.record_deliveries(vec![update(n, ua, first)], now),
            store.record_deliveries(vec![update(n, ua, second)], now),
        )
        .await;
        assert!(both.0.is_ok() && both.1.is_ok(), "record_deliveries");
    });
    futures::future::join_all(writes).await;
    store
        .record_deliveries(vec![update(n, &new_ua(), DeliveryStatus::Acked)], now)
        .await
        .expect("record_deliveries of an unknown delivery");
    store
        .record_deliveries(Vec::new(), now)
        .await
        .expect("record_deliveries of nothing");

    let report = report(store, n, now).await;
    assert_eq!(report.deliveries.len(), uas.len(), "nothing was created");
    assert!(
        report
            .deliveries
            .iter()
            .all(|d| d.status == DeliveryStatus::Acked),
        "acked wins whatever order the writes came in: {:?}",
        statuses(&report)
    );
}

pub async fn unrouted_lists_notifications_not_routed(store: &dyn Store) {
    let now = now();
    let created = millis();
    let app = new_app();
    let later_one = notification(&app, &uid(), 3600, now, later(created, 1));
    let earlier = notification(&app, &uid(), 3600, now, created);
    store
        .insert_notification(&later_one, now)
        .await
        .expect("insert_notification");
    store
        .insert_notification(&earlier, now)
        .await
        .expect("insert_notification");

    let unrouted = store.unrouted(now, 10_000).await.expect("unrouted");
    let positions: Vec<Option<usize>> = [&earlier, &later_one]
        .iter()
        .map(|n| unrouted.iter().position(|u| u.message_id == n.message_id))
        .collect();
    let [Some(e), Some(l)] = positions[..] else {
        panic!("stored notifications that were not routed must be listed as unrouted");
    };
    assert!(e < l, "unrouted notifications come oldest first");
    assert_eq!(
        unrouted[e], earlier,
        "the notification comes back as it was stored"
    );

    assert!(
        store.unrouted(now, 1).await.expect("unrouted").len() <= 1,
        "the limit holds"
    );

    // Routing to nobody still counts as routed.
    assert!(
        store
            .add_deliveries(&earlier, &[], now, None)
            .await
            .expect("add_deliveries")
            .routed
    );
    let unrouted = store.unrouted(now, 10_000).await.expect("unrouted");
    assert!(!ids(&unrouted).contains(&&earlier.message_id));
    assert!(ids(&unrouted).contains(&&later_one.message_id));

    assert!(
        store
            .add_deliveries(&later_one, &[new_ua()], now, None)
            .await
            .expect("add_deliveries")
            .routed
    );
    let unrouted = store.unrouted(now, 10_000).await.expect("unrouted");
    assert!(!ids(&unrouted).contains(&&later_one.message_id));
}

pub async fn unrouted_leaves_out_expired(store: &dyn Store) {
    let now = now();
    let app = new_app();
    let short = notification(&app, &uid(), 10, now, millis());
    let replaced = notification(&app, &uid(), 3600, now, millis());
    let replacement = notification(&app, &replaced.id, 3600, now, later(millis(), 1));
    for n in [&short, &replaced, &replacement] {
        store
            .insert_notification(n, now)
            .await
            .expect("insert_notification");
    }
    let unrouted = store.unrouted(now, 10_000).await.expect("unrouted");
    assert!(ids(&unrouted).contains(&&short.message_id));
    assert!(
        !ids(&unrouted).contains(&&replaced.message_id),
        "a replaced notification needs no routing"
    );
    let unrouted = store
        .unrouted(now.plus(10), 10_000)
        .await
        .expect("unrouted");
    assert!(
        !ids(&unrouted).contains(&&short.message_id),
        "an expired notification needs no routing"
    );
    assert!(ids(&unrouted).contains(&&replacement.message_id));
}

pub async fn status_reports_deliveries(store: &dyn Store) {
    let now = now();
    assert_eq!(
        store.status(&new_app(), &uid(), now).await.expect("status"),
        None,
        "an unknown notification has no report"
    );

    let (a, b, c) = (new_ua(), new_ua(), new_ua());
    let n = notification(&new_app(), &uid(), 60, now, millis());
    store
        .insert_notification(&n, now)
        .await
        .expect("insert_notification");
    assert_eq!(
        store
            .status(&n.app_token, &uid(), now)
            .await
            .expect("status"),
        None,
        "another AS id of the same app has no report"
    );
    assert!(
        store
            .add_deliveries(&n, &[a.clone(), b.clone(), c.clone()], now, None)
            .await
            .expect("add_deliveries")
            .routed
    );
    store
        .update_deliveries(
            &[
                update(&n, &b, DeliveryStatus::Sent),
                update(&n, &c, DeliveryStatus::Acked),
            ],
            now,
        )
        .await
        .expect("update_deliveries");

    let current = report(store, &n, now).await;
    assert_eq!(current.id, n.id);
    assert_eq!(current.message_id, n.message_id);
    assert_eq!(current.deliveries.len(), 3, "one delivery per UA");
    assert_eq!(
        statuses(&current),
        sorted(vec![
            (a.clone(), DeliveryStatus::Pending),
            (b.clone(), DeliveryStatus::Sent),
            (c.clone(), DeliveryStatus::Acked),
        ])
    );

    let expired = store
        .status(&n.app_token, &n.id, now.plus(120))
        .await
        .expect("status")
        .expect("an expired notification still has a report until it is purged");
    assert_eq!(
        statuses(&expired),
        sorted(vec![
            (a, DeliveryStatus::Expired),
            (b, DeliveryStatus::Expired),
            (c, DeliveryStatus::Acked),
        ]),
        "what was still owed when the notification expired shows as expired"
    );
}

pub async fn report_finds_a_notification_by_its_message_id(store: &dyn Store) {
    let now = now();
    let unknown = MessageId::new(uid());
    assert_eq!(store.report(&unknown, now).await.expect("report"), None);
    let ua = new_ua();
    let app = new_app();
    let old = notification(&app, "same", 60, now, millis());
    let new = notification(&app, "same", 60, now, later(old.created_at, 1));
    stored_and_routed(store, &old, std::slice::from_ref(&ua), now).await;
    stored_and_routed(store, &new, std::slice::from_ref(&ua), now).await;
    let report = store
        .report(&old.message_id, now)
        .await
        .expect("report")
        .expect("a replaced notification still has a report");
    assert_eq!(report.message_id, old.message_id);
    assert_eq!(
        statuses(&report),
        vec![(ua.clone(), DeliveryStatus::Replaced)]
    );
    let report = store.report(&new.message_id, now).await.expect("report");
    assert_eq!(
        report.map(|r| statuses(&r)),
        Some(vec![(ua, DeliveryStatus::Pending)])
    );
}

pub async fn withdraw_stops_routing_and_delivery(store: &dyn Store) {
    let now = now();
    let (a, b) = (new_ua(), new_ua());
    let routed = notification(&new_app(), &uid(), 60, now, millis());
    stored_and_routed(store, &routed, std::slice::from_ref(&a), now).await;
    store
        .update_deliveries(&[update(&routed, &a, DeliveryStatus::Sent)], now)
        .await
        .expect("update_deliveries");
    assert!(store
        .withdraw(&routed.message_id, now.plus(1))
        .await
        .expect("withdraw"));
    assert!(
        store
            .outstanding(&a, now, 10)
            .await
            .expect("outstanding")
            .is_empty(),
        "a withdrawn notification is no longer owed"
    );
    assert_eq!(
        report(store, &routed, now).await.deliveries[0].status,
        DeliveryStatus::Replaced
    );

    let unrouted = notification(&new_app(), &uid(), 60, now, millis());
    store
        .insert_notification(&unrouted, now)
        .await
        .expect("insert_notification");
    assert!(store
        .withdraw(&unrouted.message_id, now)
        .await
        .expect("withdraw"));
    assert!(
        !ids(&store.unrouted(now, 1000).await.expect("unrouted")).contains(&&unrouted.message_id),
        "a withdrawn notification is not routed"
    );
    assert!(
        !store
            .add_deliveries(&unrouted, std::slice::from_ref(&b), now, None)
            .await
            .expect("add_deliveries")
            .routed
    );
    assert!(store
        .outstanding(&b, now, 10)
        .await
        .expect("outstanding")
        .is_empty());
    assert!(!store
        .withdraw(&MessageId::new(uid()), now)
        .await
        .expect("withdraw"));
}

pub async fn push_payloads_come_back_as_stored(store: &dyn Store) {
    let now = now();
    let ua = new_ua();
    let every_byte: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let payloads = [
        Payload::Push(PushMessage {
            channel_id: uid(),
            data: every_byte.into(),
            encoding: Some(ContentEncoding::Aes128gcm),
        }),
        Payload::Push(PushMessage {
            channel_id: uid(),
            data: vec![0, 1, 2].into(),
            encoding: Some(ContentEncoding::Aesgcm {
                encryption: "salt=abc".into(),
                crypto_key: "dh=def".into(),
            }),
        }),
        Payload::Push(PushMessage {
            channel_id: uid(),
            data: Default::default(),
            encoding: None,
        }),
    ];
    let mut stored = Vec::new();
    let at = millis();
    for (i, payload) in payloads.into_iter().enumerate() {
        let n = Notification {
            payload,
            ..notification(&new_app(), &uid(), 60, now, later(at, i as i64))
        };
        stored_and_routed(store, &n, std::slice::from_ref(&ua), now).await;
        stored.push(n);
    }
    assert_eq!(
        store.outstanding(&ua, now, 10).await.expect("outstanding"),
        stored,
        "bytes and encoding headers unchanged"
    );
}

pub async fn rejected_settles_but_never_downgrades_an_ack(store: &dyn Store) {
    let now = now();
    let (a, b) = (new_ua(), new_ua());
    let n = notification(&new_app(), &uid(), 60, now, millis());
    stored_and_routed(store, &n, &[a.clone(), b.clone()], now).await;
    store
        .update_deliveries(&[update(&n, &b, DeliveryStatus::Acked)], now)
        .await
        .expect("update_deliveries");
    let changed = store
        .update_deliveries(
            &[
                update(&n, &a, DeliveryStatus::Rejected),
                update(&n, &b, DeliveryStatus::Rejected),
            ],
            now,
        )
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 1, "only the delivery not acked");
    assert!(store
        .outstanding(&a, now, 10)
        .await
        .expect("outstanding")
        .is_empty());
    assert_eq!(
        statuses(&report(store, &n, now).await),
        sorted(vec![
            (a, DeliveryStatus::Rejected),
            (b, DeliveryStatus::Acked)
        ])
    );
}

pub async fn purge_removes_expired_and_old_acked(store: &dyn Store) {
    let now = now();
    let created = millis();
    let (a, b) = (new_ua(), new_ua());

    let short = notification(&new_app(), &uid(), 5, now, created);
    let long = notification(&new_app(), &uid(), 3600, now, created);
    for n in [&short, &long] {
        stored_and_routed(store, n, &[a.clone(), b.clone()], now).await;
    }
    store
        .update_deliveries(&[update(&long, &a, DeliveryStatus::Acked)], now)
        .await
        .expect("update_deliveries");
    store
        .update_deliveries(&[update(&long, &b, DeliveryStatus::Acked)], now.plus(5))
        .await
        .expect("update_deliveries");

    // Deliveries acked before now + 1 are past their retention.
    let removed = store
        .purge(now.plus(10), Retention { acked_secs: 9 })
        .await
        .expect("purge");
    assert!(
        removed >= 2,
        "at least the expired notification and the old acked delivery went, got {removed}"
    );

    assert_eq!(
        store
            .status(&short.app_token, &short.id, now)
            .await
            .expect("status"),
        None,
        "the expired notification is gone"
    );
    for ua in [&a, &b] {
        let out = store.outstanding(ua, now, 100).await.expect("outstanding");
        assert!(out.is_empty());
    }
    let kept = store
        .status(&long.app_token, &long.id, now.plus(10))
        .await
        .expect("status")
        .expect("the unexpired notification stays");
    assert_eq!(
        statuses(&kept),
        vec![(b, DeliveryStatus::Acked)],
        "deliveries acked before the retention go, later ones stay"
    );

    let unrouted = store.unrouted(now, 10_000).await.expect("unrouted");
    assert!(!ids(&unrouted).contains(&&short.message_id));
}

pub async fn purge_removes_routed_notifications_with_nothing_left(store: &dyn Store) {
    let now = now();
    let ua = new_ua();
    let done = notification(&new_app(), &uid(), 3600, now, millis());
    let owed = notification(&new_app(), &uid(), 3600, now, millis());
    let to_nobody = notification(&new_app(), &uid(), 3600, now, millis());
    let on_its_way = notification(&new_app(), &uid(), 3600, now, millis());
    stored_and_routed(store, &done, std::slice::from_ref(&ua), now).await;
    stored_and_routed(store, &owed, std::slice::from_ref(&ua), now).await;
    stored_and_routed(store, &to_nobody, &[], now).await;
    store
        .insert_notification(&on_its_way, now)
        .await
        .expect("insert_notification");
    store
        .update_deliveries(&[update(&done, &ua, DeliveryStatus::Acked)], now)
        .await
        .expect("update_deliveries");

    // Well within every notification's TTL, and past the acked delivery's retention.
    store
        .purge(now.plus(100), Retention { acked_secs: 10 })
        .await
        .expect("purge");
    for (n, kept) in [
        (&done, false),
        (&to_nobody, false),
        (&owed, true),
        (&on_its_way, true),
    ] {
        let found = store
            .status(&n.app_token, &n.id, now)
            .await
            .expect("status")
            .is_some();
        assert_eq!(
            found, kept,
            "routed with nothing left goes; owed or not yet routed stays"
        );
    }
    let out = store.outstanding(&ua, now, 100).await.expect("outstanding");
    assert_eq!(ids(&out), vec![&owed.message_id]);
    let unrouted = store.unrouted(now, 10_000).await.expect("unrouted");
    assert!(ids(&unrouted).contains(&&on_its_way.message_id));
}

async fn pending_for_app(store: &dyn Store, app: &AppToken, now: EpochSecs) -> u64 {
    store
        .pending_for_app(app, now)
        .await
        .expect("pending_for_app")
}

pub async fn pending_for_app_counts_live_notifications(store: &dyn Store) {
    let now = now();
    let (app, other) = (new_app(), new_app());
    assert_eq!(pending_for_app(store, &app, now).await, 0);
    let start = millis();
    let short = notification(&app, "short", 60, now, start);
    let long = notification(&app, "long", 3600, now, later(start, 1));
    let first = notification(&app, "same", 3600, now, later(start, 2));
    for n in [&short, &long, &first] {
        store
            .insert_notification(n, now)
            .await
            .expect("insert_notification");
    }
    assert_eq!(pending_for_app(store, &app, now).await, 3);
    // A broker message handled twice stores the notification once.
    store
        .insert_notification(&first, now)
        .await
        .expect("insert_notification twice");
    assert_eq!(pending_for_app(store, &app, now).await, 3);

    // Routed, it counts while some UA is owed it.
    let (ua, other_ua) = (new_ua(), new_ua());
    let both = [ua.clone(), other_ua.clone()];
    assert!(
        store
            .add_deliveries(&long, &both, now, None)
            .await
            .expect("add_deliveries")
            .routed
    );
    let acked = |ua: &UaId| update(&long, ua, DeliveryStatus::Acked);
    let sent = update(&long, &other_ua, DeliveryStatus::Sent);
    store
        .update_deliveries(&[acked(&ua), sent], now)
        .await
        .expect("update_deliveries");
    assert_eq!(
        pending_for_app(store, &app, now).await,
        3,
        "still owed to one"
    );
    store
        .update_deliveries(&[acked(&other_ua)], now)
        .await
        .expect("update_deliveries");
    assert_eq!(
        pending_for_app(store, &app, now).await,
        2,
        "acked by every UA it went to, it is owed to nobody"
    );

    let replacement = notification(&app, "same", 3600, now, later(start, 3));
    store
        .insert_notification(&replacement, now)
        .await
        .expect("insert_notification");
    assert_eq!(
        pending_for_app(store, &app, now).await,
        2,
        "a replaced notification no longer counts"
    );
    let withdrawn = notification(&app, "withdrawn", 3600, now, later(start, 3));
    let to_nobody = notification(&app, "to-nobody", 3600, now, later(start, 3));
    for n in [&withdrawn, &to_nobody] {
        store
            .insert_notification(n, now)
            .await
            .expect("insert_notification");
    }
    assert_eq!(pending_for_app(store, &app, now).await, 4);
    assert!(store
        .withdraw(&withdrawn.message_id, now)
        .await
        .expect("withdraw"));
    assert_eq!(
        pending_for_app(store, &app, now).await,
        3,
        "a withdrawn one neither"
    );
    assert!(
        store
            .add_deliveries(&to_nobody, &[], now, None)
            .await
            .expect("add_deliveries")
            .routed
    );
    assert_eq!(
        pending_for_app(store, &app, now).await,
        2,
        "nor one routed to no UA"
    );
    assert_eq!(
        pending_for_app(store, &app, now.plus(60)).await,
        1,
        "nor an expired one"
    );

    let elsewhere = notification(&other, "same", 3600, now, later(start, 4));
    store
        .insert_notification(&elsewhere, now)
        .await
        .expect("insert_notification");
    assert_eq!(pending_for_app(store, &other, now).await, 1);
    assert_eq!(
        pending_for_app(store, &app, now).await,
        2,
        "each app counts its own"
    );

    store
        .purge(now.plus(60), Retention { acked_secs: 3600 })
        .await
        .expect("purge");
    assert_eq!(pending_for_app(store, &app, now.plus(60)).await, 1);
    assert_eq!(
        pending_for_app(store, &app, now).await,
        1,
        "the purge took the expired one"
    );
}

/// `pending_total` is what `pending_for_app` counts, every app together.
pub async fn pending_total_counts_every_app(store: &dyn Store) {
    let now = now();
    let total =
        |at: EpochSecs| async move { store.pending_total(at).await.expect("pending_total") };
    assert_eq!(total(now).await, 0);
    let (app, other) = (new_app(), new_app());
    let start = millis();
    let short = notification(&app, "short", 60, now, start);
    let long = notification(&app, "long", 3600, now, later(start, 1));
    let elsewhere = notification(&other, "elsewhere", 3600, now, later(start, 2));
    for n in [&short, &long, &elsewhere] {
        store
            .insert_notification(n, now)
            .await
            .expect("insert_notification");
    }
    assert_eq!(total(now).await, 3);
    let ua = new_ua();
    assert!(
        store
            .add_deliveries(&long, std::slice::from_ref(&ua), now, None)
            .await
            .expect("add_deliveries")
            .routed
    );
    assert_eq!(total(now).await, 3, "routed and owed to its UA");
    store
        .update_deliveries(&[update(&long, &ua, DeliveryStatus::Acked)], now)
        .await
        .expect("update_deliveries");
    assert_eq!(total(now).await, 2, "acked, it is owed to nobody");
    assert_eq!(total(now.plus(60)).await, 1, "nor an expired one");
}

/// Routes `n` to `uas` with a quota; the notification must be routed.
async fn routed_with_quota(
    store: &dyn Store,
    n: &Notification,
    uas: &[UaId],
    now: EpochSecs,
    max: Option<u64>,
) -> Vec<UaId> {
    let added = store
        .add_deliveries(n, uas, now, max)
        .await
        .expect("add_deliveries");
    assert!(added.routed, "a stored notification is routed");
    added.refused
}

/// `count` notifications of `app`, each with an id of its own, a millisecond apart, stored.
async fn stored_apart(
    store: &dyn Store,
    app: &AppToken,
    count: i64,
    now: EpochSecs,
) -> Vec<Notification> {
    let start = millis();
    let mut ns = Vec::new();
    for i in 0..count {
        let n = notification(app, &uid(), 3600, now, later(start, i));
        store
            .insert_notification(&n, now)
            .await
            .expect("insert_notification");
        ns.push(n);
    }
    ns
}

pub async fn add_deliveries_refuses_uas_at_their_quota(store: &dyn Store) {
    let now = now();
    let (full, free) = (new_ua(), new_ua());
    let app = new_app();
    let ns = stored_apart(store, &app, 5, now).await;
    let start = ns[0].created_at;
    let quota = Some(2);
    for n in &ns[..2] {
        let added = store
            .add_deliveries(n, std::slice::from_ref(&full), now, quota)
            .await
            .expect("add_deliveries");
        assert_eq!(added, Added::to_all(), "under the quota");
    }
    let both = [full.clone(), free.clone()];
    let refused = routed_with_quota(store, &ns[2], &both, now, quota).await;
    assert_eq!(
        refused,
        vec![full.clone()],
        "only the UA at its quota is refused"
    );
    assert_eq!(
        statuses(&report(store, &ns[2], now).await),
        sorted(vec![
            (full.clone(), DeliveryStatus::Rejected),
            (free.clone(), DeliveryStatus::Pending),
        ]),
        "the refused delivery is rejected at once, the other one pending"
    );
    let out = store
        .outstanding(&full, now, 100)
        .await
        .expect("outstanding");
    assert_eq!(ids(&out), vec![&ns[0].message_id, &ns[1].message_id]);

    // A message handled twice gets the same answer, whatever the UA has now: an accepted
    // delivery stays accepted though the UA is at its quota, a refused one stays refused.
    let refused = routed_with_quota(store, &ns[2], &both, now, quota).await;
    assert_eq!(refused, vec![full.clone()]);
    let refused = routed_with_quota(store, &ns[0], std::slice::from_ref(&full), now, quota).await;
    assert!(
        refused.is_empty(),
        "accepted the first time, accepted again"
    );
    let refused = routed_with_quota(store, &ns[2], &both, now, None).await;
    assert_eq!(
        refused,
        vec![full.clone()],
        "rejected is settled, quota or not"
    );
    assert_eq!(
        statuses(&report(store, &ns[0], now).await),
        vec![(full.clone(), DeliveryStatus::Pending)]
    );

    // A sent delivery is still owed; an acked one no longer.
    store
        .update_deliveries(&[update(&ns[0], &full, DeliveryStatus::Sent)], now)
        .await
        .expect("update_deliveries");
    let refused = routed_with_quota(store, &ns[3], std::slice::from_ref(&full), now, quota).await;
    assert_eq!(refused, vec![full.clone()], "sent is still outstanding");
    store
        .update_deliveries(&[update(&ns[0], &full, DeliveryStatus::Acked)], now)
        .await
        .expect("update_deliveries");
    let refused = routed_with_quota(store, &ns[4], std::slice::from_ref(&full), now, quota).await;
    assert!(refused.is_empty(), "an ack makes room");
    let out = store
        .outstanding(&full, now, 100)
        .await
        .expect("outstanding");
    assert_eq!(ids(&out), vec![&ns[1].message_id, &ns[4].message_id]);

    // Without a quota, nothing is refused.
    let more = notification(&app, &uid(), 3600, now, later(start, 10));
    store
        .insert_notification(&more, now)
        .await
        .expect("insert_notification");
    let refused = routed_with_quota(store, &more, &both, now, None).await;
    assert!(refused.is_empty());

    // A replaced notification is not routed, quota or not, and gets no delivery at all.
    let old = notification(&app, "same", 3600, now, later(start, 11));
    let new = notification(&app, "same", 3600, now, later(start, 12));
    for n in [&old, &new] {
        store
            .insert_notification(n, now)
            .await
            .expect("insert_notification");
    }
    let added = store
        .add_deliveries(&old, std::slice::from_ref(&full), now, Some(1))
        .await
        .expect("add_deliveries");
    assert!(!added.routed);
    let report_old = store
        .report(&old.message_id, now)
        .await
        .expect("report")
        .expect("a report");
    assert!(report_old.deliveries.is_empty(), "{report_old:?}");
}

pub async fn quota_leaves_out_replaced_and_expired_deliveries(store: &dyn Store) {
    let now = now();
    let app = new_app();
    let start = millis();
    let quota = Some(1);

    // Expired: owed no more once its notification expired, purged or not.
    let ua = new_ua();
    let short = notification(&app, &uid(), 60, now, start);
    let long = notification(&app, &uid(), 3600, now, later(start, 1));
    let next = notification(&app, &uid(), 3600, now, later(start, 2));
    for n in [&short, &long, &next] {
        store
            .insert_notification(n, now)
            .await
            .expect("insert_notification");
    }
    let one = std::slice::from_ref(&ua);
    assert!(routed_with_quota(store, &short, one, now, quota)
        .await
        .is_empty());
    assert_eq!(
        routed_with_quota(store, &long, one, now, quota).await,
        vec![ua.clone()],
        "at its quota while the first is owed"
    );
    assert!(
        routed_with_quota(store, &next, one, now.plus(60), quota)
            .await
            .is_empty(),
        "the expired one no longer counts"
    );

    // Replaced: its delivery is no longer owed either.
    let ua = new_ua();
    let one = std::slice::from_ref(&ua);
    let old = notification(&app, "same", 3600, now, later(start, 3));
    let new = notification(&app, "same", 3600, now, later(start, 4));
    stored_and_routed(store, &old, one, now).await;
    store
        .insert_notification(&new, now)
        .await
        .expect("insert_notification");
    assert!(
        routed_with_quota(store, &new, one, now, quota)
            .await
            .is_empty(),
        "the replaced one no longer counts"
    );
    assert_eq!(
        report(store, &new, now).await.deliveries[0].status,
        DeliveryStatus::Pending
    );
}

pub async fn concurrent_routings_keep_to_the_quota(store: &dyn Store) {
    let now = now();
    let (ua, other) = (new_ua(), new_ua());
    let app = new_app();
    let ns = stored_apart(store, &app, 8, now).await;
    let uas = [ua.clone(), other.clone()];
    // Issued together, so that a store that groups writes is likely to take them in one go.
    let routings = ns
        .iter()
        .map(|n| store.add_deliveries(n, &uas, now, Some(5)));
    let results = futures::future::join_all(routings).await;
    let mut refused = (0, 0);
    for added in results {
        let added = added.expect("add_deliveries");
        assert!(added.routed);
        refused.0 += usize::from(added.refused.contains(&ua));
        refused.1 += usize::from(added.refused.contains(&other));
    }
    assert_eq!(
        refused,
        (3, 3),
        "five of eight accepted for each UA, whatever the grouping"
    );
    let owed = store.outstanding(&ua, now, 100).await.expect("outstanding");
    assert_eq!(owed.len(), 5);
    assert_eq!(
        store
            .outstanding(&other, now, 100)
            .await
            .expect("outstanding")
            .len(),
        5
    );
}
