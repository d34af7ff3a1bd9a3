//! A conformance suite for [`Store`] implementations: each function checks one documented
//! behaviour of the trait and panics when the store gets it wrong.
//!
//! Every function makes up its own UAs, apps and AS ids with random UUIDs, so the suite can run
//! against a database that other runs share. Times are epoch seconds close to the real clock,
//! and expiries are tested by passing a `now` in the future rather than by storing notifications
//! that are already expired, because MongoDB's TTL monitor could remove those at any moment.

use crate::model::{App, DeliveryStatus, Interface, Notification, StatusReport, UaId, UaRoute};
use crate::store::{connected_route, DeliveryUpdate, Store};

/// Runs every check of the suite, one after the other.
pub async fn run_all(store: &dyn Store) {
    ping(store).await;
    register_ua_returns_previous(store).await;
    disconnect_ua_only_matching(store).await;
    ua_routes_leaves_unknown_out(store).await;
    put_and_get_app(store).await;
    register_and_unregister_wa(store).await;
    app_uas_lists_registrations(store).await;
    add_deliveries_is_idempotent(store).await;
    add_deliveries_needs_a_stored_notification(store).await;
    insert_notification_replaces_older(store).await;
    outstanding_order_filter_and_limit(store).await;
    update_deliveries_rules(store).await;
    unrouted_lists_notifications_not_routed(store).await;
    status_reports_deliveries(store).await;
    purge_removes_expired_and_old_acked(store).await;
}

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn new_ua() -> UaId {
    UaId(uid())
}

/// A notification stored at `now` (seconds) with this creation time (milliseconds).
fn notification(app_token: &str, id: &str, ttl: u32, now: i64, created_at: i64) -> Notification {
    Notification {
        message_id: uuid::Uuid::now_v7().to_string(),
        app_token: app_token.to_owned(),
        id: id.to_owned(),
        message: format!("message {}", uid()),
        ttl,
        timestamp: now,
        expires_at: now + i64::from(ttl),
        priority: 1,
        created_at,
    }
}

fn update(n: &Notification, ua: &UaId, status: DeliveryStatus) -> DeliveryUpdate {
    DeliveryUpdate {
        message_id: n.message_id.clone(),
        ua: ua.clone(),
        status,
    }
}

fn ids(ns: &[Notification]) -> Vec<&str> {
    ns.iter().map(|n| n.message_id.as_str()).collect()
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

pub async fn ping(store: &dyn Store) {
    store.ping().await.expect("ping");
}

pub async fn register_ua_returns_previous(store: &dyn Store) {
    let ua = new_ua();
    let first = UaRoute {
        ua: ua.clone(),
        node: None,
        conn: None,
        interface: Some(Interface {
            ip: "192.0.2.7".parse().expect("ip"),
            port: 5000,
        }),
    };
    let before = store.register_ua(&first).await.expect("register_ua");
    assert_eq!(before, None, "a new UA has no previous record");

    let second = connected_route(ua.clone(), "node-a", "conn-1", None);
    let before = store.register_ua(&second).await.expect("register_ua");
    assert_eq!(
        before,
        Some(first),
        "register_ua returns the record as it was"
    );

    let third = connected_route(ua.clone(), "node-b", "conn-2", None);
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
    let route = connected_route(ua.clone(), "node-a", "conn-1", None);
    store.register_ua(&route).await.expect("register_ua");

    store
        .disconnect_ua(&ua, "node-a", "conn-other")
        .await
        .expect("disconnect_ua");
    store
        .disconnect_ua(&ua, "node-other", "conn-1")
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
        .disconnect_ua(&ua, "node-a", "conn-1")
        .await
        .expect("disconnect_ua");
    let routes = store
        .ua_routes(std::slice::from_ref(&ua))
        .await
        .expect("ua_routes");
    assert_eq!(routes.len(), 1, "a disconnected UA is still known");
    assert_eq!(routes[0].ua, ua);
    assert_eq!(
        routes[0].node, None,
        "the matching disconnect clears the node"
    );

    // A disconnect of a UA the store never saw is not an error, and doesn't create it.
    let unknown = new_ua();
    store
        .disconnect_ua(&unknown, "node-a", "conn-1")
        .await
        .expect("disconnect_ua of an unknown UA");
    let routes = store.ua_routes(&[unknown]).await.expect("ua_routes");
    assert!(routes.is_empty());
}

pub async fn ua_routes_leaves_unknown_out(store: &dyn Store) {
    let a = connected_route(new_ua(), "node-a", "conn-a", None);
    let b = UaRoute {
        ua: new_ua(),
        node: None,
        conn: None,
        interface: Some(Interface {
            ip: "2001:db8::1".parse().expect("ip"),
            port: 2442,
        }),
    };
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
        app_token: uid(),
        pbk: Some("-----BEGIN PUBLIC KEY-----\nMFww\n-----END PUBLIC KEY-----\n".to_owned()),
    };
    let without_key = App {
        app_token: uid(),
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
    let got = store.get_app(&uid()).await.expect("get_app of unknown");
    assert_eq!(got, None);
}

pub async fn register_and_unregister_wa(store: &dyn Store) {
    let ua = new_ua();
    let app = uid();
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
        .unregister_wa(&new_ua(), &uid())
        .await
        .expect("unregister_wa of unknown"));
}

pub async fn app_uas_lists_registrations(store: &dyn Store) {
    let app = uid();
    let other_app = uid();
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
    assert!(store.app_uas(&uid()).await.expect("app_uas").is_empty());
}

pub async fn add_deliveries_is_idempotent(store: &dyn Store) {
    let now = crate::now_secs();
    let (a, b, c) = (new_ua(), new_ua(), new_ua());
    let n = notification(&uid(), &uid(), 3600, now, crate::now_millis());
    store
        .insert_notification(&n)
        .await
        .expect("insert_notification");
    // A broker message handled twice stores the notification twice.
    store
        .insert_notification(&n)
        .await
        .expect("insert_notification twice");

    assert!(store
        .add_deliveries(&n, &[a.clone(), b.clone()])
        .await
        .expect("add_deliveries"));
    let changed = store
        .update_deliveries(&[update(&n, &a, DeliveryStatus::Sent)], now)
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 1);

    assert!(store
        .add_deliveries(&n, &[a.clone(), b.clone(), c.clone()])
        .await
        .expect("add_deliveries again"));
    let report = store
        .status(&n.app_token, &n.id, now)
        .await
        .expect("status")
        .expect("a report");
    assert_eq!(report.message_id, n.message_id);
    assert_eq!(report.id, n.id);
    assert_eq!(
        statuses(&report),
        sorted(vec![
            (a, DeliveryStatus::Sent),
            (b, DeliveryStatus::Pending),
            (c, DeliveryStatus::Pending),
        ]),
        "existing deliveries are left as they are, new ones are pending"
    );
}

pub async fn add_deliveries_needs_a_stored_notification(store: &dyn Store) {
    let now = crate::now_secs();
    let ua = new_ua();
    let n = notification(&uid(), &uid(), 3600, now, crate::now_millis());
    let routed = store
        .add_deliveries(&n, std::slice::from_ref(&ua))
        .await
        .expect("add_deliveries");
    assert!(!routed, "a notification that isn't stored can't be routed");
    let out = store.outstanding(&ua, now, 100).await.expect("outstanding");
    assert!(out.is_empty(), "nothing was created");
}

pub async fn insert_notification_replaces_older(store: &dyn Store) {
    let now = crate::now_secs();
    let created = crate::now_millis();
    let app = uid();
    let id = uid();
    let (a, b, c, d) = (new_ua(), new_ua(), new_ua(), new_ua());

    let old = notification(&app, &id, 3600, now, created);
    store
        .insert_notification(&old)
        .await
        .expect("insert_notification");
    assert!(store
        .add_deliveries(&old, &[a.clone(), b.clone(), c.clone()])
        .await
        .expect("add_deliveries"));
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
    store
        .insert_notification(&other)
        .await
        .expect("insert_notification");
    assert!(store
        .add_deliveries(&other, std::slice::from_ref(&a))
        .await
        .expect("add_deliveries"));

    // Nor one with the same AS id in another app.
    let elsewhere = notification(&uid(), &id, 3600, now, created);
    store
        .insert_notification(&elsewhere)
        .await
        .expect("insert_notification");

    // The newer one is short-lived so that a purge can remove it and let `status` show the
    // older one again.
    let new = notification(&app, &id, 10, now, created + 1);
    store
        .insert_notification(&new)
        .await
        .expect("insert_notification");
    assert!(
        store
            .add_deliveries(&elsewhere, &[new_ua()])
            .await
            .expect("add_deliveries"),
        "the same AS id in another app is another notification"
    );

    let routed = store
        .add_deliveries(&old, std::slice::from_ref(&d))
        .await
        .expect("add_deliveries");
    assert!(!routed, "a replaced notification must not be routed");

    let report = store
        .status(&app, &id, now)
        .await
        .expect("status")
        .expect("a report");
    assert_eq!(
        report.message_id, new.message_id,
        "status shows the newest notification"
    );
    assert!(
        report.deliveries.is_empty(),
        "the newest one isn't routed yet"
    );

    for ua in [&a, &b, &c, &d] {
        let out = store.outstanding(ua, now, 100).await.expect("outstanding");
        assert!(
            !ids(&out).contains(&old.message_id.as_str()),
            "a replaced notification is not outstanding"
        );
    }
    let out = store.outstanding(&a, now, 100).await.expect("outstanding");
    assert_eq!(
        ids(&out),
        vec![other.message_id.as_str()],
        "others stay outstanding"
    );

    assert!(store
        .add_deliveries(&new, &[a.clone(), b.clone()])
        .await
        .expect("add_deliveries"));
    let out = store.outstanding(&b, now, 100).await.expect("outstanding");
    assert_eq!(ids(&out), vec![new.message_id.as_str()]);

    // Purging past the newer one's expiry makes the older one the newest again, which shows
    // what the replacement did to its deliveries.
    store.purge(now + 20, now - 3600).await.expect("purge");
    let report = store
        .status(&app, &id, now)
        .await
        .expect("status")
        .expect("a report of the older notification");
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
    let now = crate::now_secs();
    let created = crate::now_millis();
    let app = uid();
    let ua = new_ua();
    let other_ua = new_ua();

    // Made and stored out of creation order, so that neither the order of the message ids
    // (UUIDv7, which sort by the time they were made) nor the order of storing gives the
    // order of `created_at`.
    let third = notification(&app, &uid(), 3600, now, created + 3);
    let second = notification(&app, &uid(), 3600, now, created + 2);
    let first = notification(&app, &uid(), 3600, now, created + 1);
    let short = notification(&app, &uid(), 60, now, created + 4);
    let acked = notification(&app, &uid(), 3600, now, created);
    let replaced = notification(&app, &uid(), 3600, now, created + 5);
    let replacement = notification(&app, &replaced.id, 3600, now, created + 6);
    for n in [&second, &third, &first, &short, &acked, &replaced] {
        store
            .insert_notification(n)
            .await
            .expect("insert_notification");
        assert!(store
            .add_deliveries(n, std::slice::from_ref(&ua))
            .await
            .expect("add_deliveries"));
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
        .insert_notification(&replacement)
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

    let out = store.outstanding(&ua, now, 2).await.expect("outstanding");
    assert_eq!(
        ids(&out),
        ids(&[first.clone(), second.clone()]),
        "the limit holds"
    );

    let out = store
        .outstanding(&ua, now + 120, 100)
        .await
        .expect("outstanding");
    assert_eq!(
        ids(&out),
        ids(&[first, second, third]),
        "expired notifications are not outstanding"
    );

    let out = store
        .outstanding(&other_ua, now, 100)
        .await
        .expect("outstanding");
    assert!(out.is_empty(), "other UAs owe nothing");
}

pub async fn update_deliveries_rules(store: &dyn Store) {
    let now = crate::now_secs();
    let (a, b) = (new_ua(), new_ua());
    let n = notification(&uid(), &uid(), 3600, now, crate::now_millis());
    store
        .insert_notification(&n)
        .await
        .expect("insert_notification");
    assert!(store
        .add_deliveries(&n, &[a.clone(), b.clone()])
        .await
        .expect("add_deliveries"));

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
        .update_deliveries(&[update(&n, &a, DeliveryStatus::Acked)], now + 1)
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 1);

    let changed = store
        .update_deliveries(&[update(&n, &a, DeliveryStatus::Sent)], now + 2)
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 0, "sent never downgrades acked");
    let changed = store
        .update_deliveries(&[update(&n, &a, DeliveryStatus::Acked)], now + 3)
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 0, "acking twice changes nothing");

    let report = store
        .status(&n.app_token, &n.id, now + 4)
        .await
        .expect("status")
        .expect("a report");
    assert_eq!(
        statuses(&report),
        sorted(vec![
            (a.clone(), DeliveryStatus::Acked),
            (b.clone(), DeliveryStatus::Sent)
        ])
    );

    let changed = store
        .update_deliveries(&[], now)
        .await
        .expect("update_deliveries");
    assert_eq!(changed, 0);

    let out = store
        .outstanding(&a, now + 4, 100)
        .await
        .expect("outstanding");
    assert!(
        out.is_empty(),
        "an acked notification is no longer outstanding"
    );
    let out = store
        .outstanding(&b, now + 4, 100)
        .await
        .expect("outstanding");
    assert_eq!(ids(&out), vec![n.message_id.as_str()]);
}

pub async fn unrouted_lists_notifications_not_routed(store: &dyn Store) {
    let now = crate::now_secs();
    let created = crate::now_millis();
    let app = uid();
    let later = notification(&app, &uid(), 3600, now, created + 1);
    let earlier = notification(&app, &uid(), 3600, now, created);
    store
        .insert_notification(&later)
        .await
        .expect("insert_notification");
    store
        .insert_notification(&earlier)
        .await
        .expect("insert_notification");

    let unrouted = store.unrouted(10_000).await.expect("unrouted");
    let positions: Vec<Option<usize>> = [&earlier, &later]
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
        store.unrouted(1).await.expect("unrouted").len() <= 1,
        "the limit holds"
    );

    // Routing to nobody still counts as routed.
    assert!(store
        .add_deliveries(&earlier, &[])
        .await
        .expect("add_deliveries"));
    let unrouted = store.unrouted(10_000).await.expect("unrouted");
    assert!(!ids(&unrouted).contains(&earlier.message_id.as_str()));
    assert!(ids(&unrouted).contains(&later.message_id.as_str()));

    assert!(store
        .add_deliveries(&later, &[new_ua()])
        .await
        .expect("add_deliveries"));
    let unrouted = store.unrouted(10_000).await.expect("unrouted");
    assert!(!ids(&unrouted).contains(&later.message_id.as_str()));
}

pub async fn status_reports_deliveries(store: &dyn Store) {
    let now = crate::now_secs();
    assert_eq!(
        store.status(&uid(), &uid(), now).await.expect("status"),
        None,
        "an unknown notification has no report"
    );

    let (a, b, c) = (new_ua(), new_ua(), new_ua());
    let n = notification(&uid(), &uid(), 60, now, crate::now_millis());
    store
        .insert_notification(&n)
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
    assert!(store
        .add_deliveries(&n, &[a.clone(), b.clone(), c.clone()])
        .await
        .expect("add_deliveries"));
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

    let report = store
        .status(&n.app_token, &n.id, now)
        .await
        .expect("status")
        .expect("a report");
    assert_eq!(report.id, n.id);
    assert_eq!(report.message_id, n.message_id);
    assert_eq!(report.deliveries.len(), 3, "one delivery per UA");
    assert_eq!(
        statuses(&report),
        sorted(vec![
            (a.clone(), DeliveryStatus::Pending),
            (b.clone(), DeliveryStatus::Sent),
            (c.clone(), DeliveryStatus::Acked),
        ])
    );

    let report = store
        .status(&n.app_token, &n.id, now + 120)
        .await
        .expect("status")
        .expect("an expired notification still has a report until it is purged");
    assert_eq!(
        statuses(&report),
        sorted(vec![
            (a, DeliveryStatus::Expired),
            (b, DeliveryStatus::Expired),
            (c, DeliveryStatus::Acked),
        ]),
        "what was still owed when the notification expired shows as expired"
    );
}

pub async fn purge_removes_expired_and_old_acked(store: &dyn Store) {
    let now = crate::now_secs();
    let created = crate::now_millis();
    let (a, b) = (new_ua(), new_ua());

    let short = notification(&uid(), &uid(), 5, now, created);
    let long = notification(&uid(), &uid(), 3600, now, created);
    for n in [&short, &long] {
        store
            .insert_notification(n)
            .await
            .expect("insert_notification");
        assert!(store
            .add_deliveries(n, &[a.clone(), b.clone()])
            .await
            .expect("add_deliveries"));
    }
    store
        .update_deliveries(&[update(&long, &a, DeliveryStatus::Acked)], now)
        .await
        .expect("update_deliveries");
    store
        .update_deliveries(&[update(&long, &b, DeliveryStatus::Acked)], now + 5)
        .await
        .expect("update_deliveries");

    let removed = store.purge(now + 10, now + 1).await.expect("purge");
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
    let report = store
        .status(&long.app_token, &long.id, now + 10)
        .await
        .expect("status")
        .expect("the unexpired notification stays");
    assert_eq!(
        statuses(&report),
        vec![(b, DeliveryStatus::Acked)],
        "deliveries acked before acked_before go, later ones stay"
    );

    let unrouted = store.unrouted(10_000).await.expect("unrouted");
    assert!(!ids(&unrouted).contains(&short.message_id.as_str()));
}
