//! The live connections of this front-end, by UA: at most one per UA, reached through its
//! outbound queue.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use common::model::{ConnId, MessageId, UaId};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What is sent to a live connection from outside its task. Kept one pointer wide: the
/// queue of every connection, idle or not, allocates room for a block of these.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// One notification frame (a JSON array of one object).
    Notify(Box<Queued>),
    /// Close the connection: the UA registered elsewhere.
    TakenOver,
    /// Send the UA what it is owed and was not sent here lately: what was routed while this
    /// front-end's queue was gone is pending in the store only.
    Resync,
}

#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) message_id: MessageId,
    pub(crate) frame: Utf8Bytes,
}

struct Handle {
    conn: ConnId,
    tx: mpsc::Sender<Outbound>,
}

#[derive(Default)]
pub(crate) struct Registry {
    conns: Mutex<HashMap<UaId, Handle>>,
}

impl Registry {
    fn conns(&self) -> MutexGuard<'_, HashMap<UaId, Handle>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `conn` the live connection of `ua` here, and tells an older one of `ua` here to
    /// close; true if there was one. A connection registering its own UA again is not
    /// taking it over.
    pub(crate) fn attach(&self, ua: &UaId, conn: &ConnId, tx: mpsc::Sender<Outbound>) -> bool {
        let handle = Handle {
            conn: conn.clone(),
            tx,
        };
        let old = self.conns().insert(ua.clone(), handle);
        match old.filter(|old| old.conn != *conn) {
            Some(old) => {
                // Full or closed: either way that connection is on its way out.
                let _ = old.tx.try_send(Outbound::TakenOver);
                true
            }
            None => false,
        }
    }

    /// Forgets `ua`'s connection if it is still `conn`; true if it was.
    pub(crate) fn detach(&self, ua: &UaId, conn: &ConnId) -> bool {
        let mut conns = self.conns();
        if conns.get(ua).is_some_and(|h| h.conn == *conn) {
            conns.remove(ua);
            true
        } else {
            false
        }
    }

    /// Queues `outbound` on `ua`'s live connection, waiting up to `wait` while the
    /// connection catches up; false if it has none here or stays too far behind.
    pub(crate) async fn send_to(&self, ua: &UaId, outbound: Outbound, wait: Duration) -> bool {
        let Some(tx) = self.conns().get(ua).map(|h| h.tx.clone()) else {
            return false;
        };
        tx.send_timeout(outbound, wait).await.is_ok()
    }

    /// Tells every connection here to send what its UA is owed ([`Outbound::Resync`]).
    pub(crate) fn resync_all(&self) -> usize {
        let senders: Vec<mpsc::Sender<Outbound>> =
            self.conns().values().map(|h| h.tx.clone()).collect();
        let count = senders.len();
        for tx in senders {
            // A connection with a full queue is still told, once it has room.
            tokio::spawn(async move { tx.send(Outbound::Resync).await });
        }
        count
    }

    /// Closes `ua`'s connection here if it is `conn` (a take-over from another front-end);
    /// true if it was.
    pub(crate) fn take_over(&self, ua: &UaId, conn: &ConnId) -> bool {
        match self.conns().get(ua).filter(|h| h.conn == *conn) {
            Some(h) => {
                let _ = h.tx.try_send(Outbound::TakenOver);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    fn notify(id: &str) -> Outbound {
        Outbound::Notify(Box::new(Queued {
            message_id: MessageId::new(id),
            frame: Utf8Bytes::from_static("[]"),
        }))
    }

    #[tokio::test]
    async fn a_second_connection_of_a_ua_takes_it_over() {
        let registry = Registry::default();
        let ua = UaId::new("u");
        let (first, second) = (ConnId::new("1"), ConnId::new("2"));
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        assert!(!registry.attach(&ua, &first, tx1.clone()));
        assert!(
            !registry.attach(&ua, &first, tx1),
            "registering again is no take-over"
        );
        assert!(rx1.try_recv().is_err());
        assert!(registry.attach(&ua, &second, tx2));
        assert!(matches!(rx1.try_recv(), Ok(Outbound::TakenOver)));

        assert!(registry.send_to(&ua, notify("m"), WAIT).await);
        assert!(matches!(rx2.try_recv(), Ok(Outbound::Notify(q)) if q.message_id.as_str() == "m"));
        assert!(
            !registry.detach(&ua, &first),
            "the older connection can't detach the newer"
        );
        assert!(registry.detach(&ua, &second));
        assert!(!registry.send_to(&ua, notify("n"), WAIT).await);
    }

    #[tokio::test]
    async fn a_connection_too_far_behind_is_skipped_after_the_wait() {
        let registry = Registry::default();
        let ua = UaId::new("u");
        let (tx, _rx) = mpsc::channel(1);
        registry.attach(&ua, &ConnId::new("c"), tx);
        assert!(registry.send_to(&ua, notify("1"), WAIT).await);
        assert!(
            !registry.send_to(&ua, notify("2"), WAIT).await,
            "the queue is full"
        );
    }

    #[tokio::test]
    async fn a_take_over_from_elsewhere_closes_only_the_named_connection() {
        let registry = Registry::default();
        let ua = UaId::new("u");
        let (tx, mut rx) = mpsc::channel(4);
        registry.attach(&ua, &ConnId::new("current"), tx);
        assert!(!registry.take_over(&ua, &ConnId::new("older")));
        assert!(rx.try_recv().is_err());
        assert!(!registry.take_over(&UaId::new("other"), &ConnId::new("current")));
        assert!(registry.take_over(&ua, &ConnId::new("current")));
        assert!(matches!(rx.try_recv(), Ok(Outbound::TakenOver)));
    }
}
