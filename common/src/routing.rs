//! The monitor's routing decision, as a pure function.

use crate::model::{Interface, UaRoute};

/// Highest priority that wakes a sleeping UA (1 at once, 2 within the coalescing window).
pub const MAX_WAKE_PRIORITY: u8 = 2;

/// Where a notification goes for one UA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// To the front-end holding the UA's live connection.
    FrontEnd(String),
    /// The UA sleeps but can be woken: to ns-ua-udp.
    Wake(Interface),
    /// Nothing to send now: the delivery stays pending until the UA connects or pulls.
    Hold,
    /// A `ttl: 0` notification and no live connection: nothing is kept.
    Drop,
}

/// Decides where a notification of `priority` goes for a UA at `route`.
/// `connected` is false when the route's front-end is known to be gone.
pub fn decide(route: &UaRoute, priority: u8, ephemeral: bool, connected: bool) -> Target {
    match (&route.node, connected) {
        (Some(node), true) => Target::FrontEnd(node.clone()),
        _ if ephemeral => Target::Drop,
        _ => match &route.interface {
            Some(interface) if priority <= MAX_WAKE_PRIORITY => Target::Wake(interface.clone()),
            _ => Target::Hold,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UaId;

    fn route(node: Option<&str>, wakeable: bool) -> UaRoute {
        UaRoute {
            ua: UaId("u".into()),
            node: node.map(str::to_owned),
            conn: node.map(|_| "c".to_owned()),
            interface: wakeable.then(|| Interface {
                ip: "127.0.0.1".parse().unwrap(),
                port: 5000,
            }),
        }
    }

    #[test]
    fn connected_ua_gets_every_priority_at_once() {
        for p in 1..=4 {
            assert_eq!(
                decide(&route(Some("a"), true), p, false, true),
                Target::FrontEnd("a".into())
            );
            assert_eq!(
                decide(&route(Some("a"), false), p, true, true),
                Target::FrontEnd("a".into())
            );
        }
    }

    #[test]
    fn sleeping_ua_is_woken_for_priority_one_and_two_only() {
        let r = route(None, true);
        assert!(matches!(decide(&r, 1, false, true), Target::Wake(_)));
        assert!(matches!(decide(&r, 2, false, true), Target::Wake(_)));
        assert_eq!(decide(&r, 3, false, true), Target::Hold);
        assert_eq!(decide(&r, 4, false, true), Target::Hold);
    }

    #[test]
    fn unwakeable_offline_ua_holds() {
        assert_eq!(decide(&route(None, false), 1, false, true), Target::Hold);
    }

    #[test]
    fn dead_front_end_means_offline() {
        let r = route(Some("gone"), true);
        assert!(matches!(decide(&r, 1, false, false), Target::Wake(_)));
        assert_eq!(
            decide(&route(Some("gone"), false), 1, false, false),
            Target::Hold
        );
    }

    #[test]
    fn ephemeral_notifications_reach_live_uas_only() {
        assert_eq!(decide(&route(None, true), 1, true, true), Target::Drop);
        assert_eq!(
            decide(&route(Some("gone"), true), 1, true, false),
            Target::Drop
        );
    }
}
