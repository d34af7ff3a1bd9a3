//! Where a notification goes, for each UA it is for: the one routing decision, used by the
//! monitor for new notifications and for those a front-end hands back because their UA is
//! no longer there.

use std::collections::BTreeMap;

use crate::messages::WakeUp;
use crate::model::{NodeId, UaId, UaRoute};
use crate::notification::Notification;

/// Highest priority that wakes a sleeping UA (1 at once, 2 within the coalescing window).
pub const MAX_WAKE_PRIORITY: u8 = 2;

/// The routing of one notification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per front-end, the UAs connected there.
    pub front_ends: BTreeMap<NodeId, Vec<UaId>>,
    /// Sleeping UAs to wake by UDP.
    pub wake: Vec<WakeUp>,
    /// UAs the notification waits for in the store, until they connect or pull.
    pub held: Vec<UaId>,
    /// UAs that get nothing: a `ttl: 0` notification and no live connection.
    pub dropped: Vec<UaId>,
}

/// Routes `n` to the UAs at `routes`. A UA connected to a front-end in `gone` counts as
/// offline: that front-end is known to have died, or to no longer hold the UA.
pub fn plan<'a>(
    n: &Notification,
    routes: impl IntoIterator<Item = &'a UaRoute>,
    gone: &[NodeId],
) -> Plan {
    let mut plan = Plan::default();
    for route in routes {
        let ua = route.ua.clone();
        match route.node().filter(|node| !gone.contains(node)) {
            Some(node) => plan.front_ends.entry(node.clone()).or_default().push(ua),
            None if n.is_ephemeral() => plan.dropped.push(ua),
            None => match &route.interface {
                Some(interface) if n.priority <= MAX_WAKE_PRIORITY => plan.wake.push(WakeUp {
                    ua,
                    interface: interface.clone(),
                    priority: n.priority,
                }),
                _ => plan.held.push(ua),
            },
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ConnId, Interface};

    fn notification(priority: u8, ttl: u32) -> Notification {
        crate::test_support::notification(ttl, priority)
    }

    fn interface() -> Interface {
        Interface {
            ip: "127.0.0.1".parse().unwrap(),
            port: 5000,
        }
    }

    fn route(ua: &str, node: Option<&str>, wakeable: bool) -> UaRoute {
        let interface = wakeable.then(interface);
        match node {
            Some(node) => UaRoute::connected(
                UaId::new(ua),
                NodeId::new(node),
                ConnId::new("c"),
                interface,
            ),
            None => UaRoute::offline(UaId::new(ua), interface),
        }
    }

    fn uas(ids: &[&str]) -> Vec<UaId> {
        ids.iter().map(|id| UaId::new(*id)).collect()
    }

    #[test]
    fn connected_uas_get_every_priority_at_once_grouped_by_front_end() {
        let routes = [
            route("a", Some("n1"), true),
            route("b", Some("n2"), false),
            route("c", Some("n1"), false),
        ];
        for priority in 1..=4 {
            for ttl in [0, 60] {
                let p = plan(&notification(priority, ttl), &routes, &[]);
                assert_eq!(p.front_ends[&NodeId::new("n1")], uas(&["a", "c"]));
                assert_eq!(p.front_ends[&NodeId::new("n2")], uas(&["b"]));
                assert!(p.wake.is_empty() && p.held.is_empty() && p.dropped.is_empty());
            }
        }
    }

    #[test]
    fn sleeping_uas_are_woken_for_priority_one_and_two_only() {
        let routes = [route("a", None, true), route("b", None, false)];
        for priority in [1, 2] {
            let p = plan(&notification(priority, 60), &routes, &[]);
            assert_eq!(
                p.wake,
                vec![WakeUp {
                    ua: UaId::new("a"),
                    interface: interface(),
                    priority
                }]
            );
            assert_eq!(p.held, uas(&["b"]));
        }
        for priority in [3, 4] {
            let p = plan(&notification(priority, 60), &routes, &[]);
            assert!(p.wake.is_empty());
            assert_eq!(p.held, uas(&["a", "b"]));
        }
    }

    #[test]
    fn a_gone_front_end_means_offline() {
        let routes = [
            route("a", Some("dead"), true),
            route("b", Some("dead"), false),
        ];
        let p = plan(&notification(1, 60), &routes, &[NodeId::new("dead")]);
        assert!(p.front_ends.is_empty());
        assert_eq!(p.wake.len(), 1);
        assert_eq!(p.held, uas(&["b"]));
    }

    #[test]
    fn ephemeral_notifications_reach_live_uas_only() {
        let routes = [
            route("a", None, true),
            route("b", Some("dead"), true),
            route("c", Some("live"), false),
        ];
        let p = plan(&notification(1, 0), &routes, &[NodeId::new("dead")]);
        assert_eq!(p.dropped, uas(&["a", "b"]));
        assert_eq!(p.front_ends[&NodeId::new("live")], uas(&["c"]));
        assert!(p.wake.is_empty() && p.held.is_empty());
    }
}
