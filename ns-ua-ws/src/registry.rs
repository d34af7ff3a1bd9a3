//! The live connections of this front-end, by UA: at most one per UA, reached through its
//! outbound queue.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::model::{ConnId, EpochMillis, EpochSecs, MessageId, UaId};
use common::notification::Notification;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What is sent to a live connection from outside its task. Kept one pointer wide, so that
/// a queue's room for a few of them stays small.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// One notification frame (a JSON array of one object).
    Notify(Box<Queued>),
    /// Close the connection: the UA registered elsewhere.
    TakenOver,
    /// Send the UA what it is owed and was not sent here lately: what was routed while this
    /// front-end's queue was gone is pending in the store only.
    Resync,
    /// Count what the UA is owed, for a count event (from the connection's own timer).
    Count,
}

#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) message_id: MessageId,
    pub(crate) frame: Utf8Bytes,
    /// When it may no longer be sent; `None` for a `ttl: 0` one, sent only now.
    pub(crate) expires_at: Option<EpochSecs>,
    /// When it was accepted: the start of its delivery latency.
    pub(crate) created_at: EpochMillis,
}

impl Queued {
    pub(crate) fn new(n: &Notification, frame: Utf8Bytes) -> Self {
        Queued {
            message_id: n.message_id.clone(),
            frame,
            expires_at: (!n.is_ephemeral()).then_some(n.expires_at),
            created_at: n.created_at,
        }
    }

    /// Past its TTL: a connection checks right before it writes, since a queue can be slow.
    pub(crate) fn is_expired(&self, now: EpochSecs) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

struct Handle {
    conn: ConnId,
    tx: Sender,
}

/// A connection's outbound queue: up to a fixed number of [`Outbound`]s from any number of
/// [`Sender`]s to the connection's one [`Receiver`], in the order they were queued.
///
/// Every connection has one for its whole life, idle or not, so it is one small allocation
/// (a lock, the room left, the receiver's waker) whose buffer exists only while something is
/// queued: a channel of tokio keeps a block of 32 slots and two cache-padded halves, a
/// kilobyte, from the start.
pub(crate) fn queue(capacity: usize) -> (Sender, Receiver) {
    let queue = Arc::new(Queue {
        state: Mutex::default(),
        room: Semaphore::new(capacity),
    });
    (Sender(queue.clone()), Receiver(queue))
}

struct Queue {
    state: Mutex<QueueState>,
    /// One permit per free place; closed once the receiver is gone.
    room: Semaphore,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Outbound>,
    /// The receiver, waiting for an item.
    waiting: Option<Waker>,
}

impl Queue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` in the place taken for it; false if the receiver is gone.
    fn push(&self, item: Outbound) -> bool {
        let mut state = self.state();
        // Closed under the lock by the receiver before it empties the queue: what comes after
        // would never be taken.
        if self.room.is_closed() {
            return false;
        }
        state.items.push_back(item);
        let waiting = state.waiting.take();
        drop(state);
        if let Some(waker) = waiting {
            waker.wake();
        }
        true
    }
}

/// A handle that queues on one connection; clones queue on the same connection.
#[derive(Clone)]
pub(crate) struct Sender(Arc<Queue>);

impl Sender {
    /// Queues `item` if there is room right away; false if the queue is full or its
    /// connection gone.
    pub(crate) fn try_send(&self, item: Outbound) -> bool {
        match self.0.room.try_acquire() {
            Ok(place) => {
                place.forget();
                self.0.push(item)
            }
            Err(_) => false,
        }
    }

    /// Queues `item`, waiting for room as long as it takes (senders are served in the order
    /// they came); false if the connection is gone.
    pub(crate) async fn send(&self, item: Outbound) -> bool {
        match self.0.room.acquire().await {
            Ok(place) => {
                place.forget();
                self.0.push(item)
            }
            Err(_) => false,
        }
    }

    /// Queues `item`, waiting up to `wait` for room; false if there was none in time or the
    /// connection is gone. Room there already is taken even when `wait` is zero.
    pub(crate) async fn send_timeout(&self, item: Outbound, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.send(item))
            .await
            .unwrap_or(false)
    }
}

/// The connection's end of its queue. Dropping it closes the queue: senders are refused
/// from then on, and what was queued is dropped.
pub(crate) struct Receiver(Arc<Queue>);

impl Receiver {
    /// The next item, oldest first, waiting for one. Cancel-safe: an item is taken only
    /// when it is returned. (The connection holds a [`Sender`] of its own, so there is
    /// always one that could still queue.)
    pub(crate) async fn recv(&mut self) -> Outbound {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Outbound> {
        let mut state = self.0.state();
        match self.take(&mut state) {
            Some(item) => Poll::Ready(item),
            None => {
                let waker = cx.waker();
                if !state.waiting.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    state.waiting = Some(waker.clone());
                }
                Poll::Pending
            }
        }
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        let mut state = self.0.state();
        self.take(&mut state)
    }

    fn take(&self, state: &mut QueueState) -> Option<Outbound> {
        let item = state.items.pop_front()?;
        if state.items.is_empty() {
            // An idle connection keeps no buffer.
            state.items = VecDeque::new();
        }
        self.0.room.add_permits(1);
        Some(item)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.0.state();
        self.0.room.close();
        state.waiting = None;
        let items = std::mem::take(&mut state.items);
        drop(state);
        drop(items);
    }
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
    pub(crate) fn attach(&self, ua: &UaId, conn: &ConnId, tx: Sender) -> bool {
        let handle = Handle {
            conn: conn.clone(),
            tx,
        };
        let old = self.conns().insert(ua.clone(), handle);
        match old.filter(|old| old.conn != *conn) {
            Some(old) => {
                // Full or closed: either way that connection is on its way out.
                old.tx.try_send(Outbound::TakenOver);
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
        tx.send_timeout(outbound, wait).await
    }

    /// Tells every connection here to send what its UA is owed ([`Outbound::Resync`]).
    pub(crate) fn resync_all(&self) -> usize {
        let senders: Vec<Sender> = self.conns().values().map(|h| h.tx.clone()).collect();
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
                h.tx.try_send(Outbound::TakenOver);
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
            expires_at: None,
            created_at: EpochMillis(0),
        }))
    }

    #[tokio::test]
    async fn a_queue_keeps_its_order_and_its_bound() {
        let (tx, mut rx) = queue(2);
        assert!(tx.try_send(notify("1")));
        assert!(tx.clone().send_timeout(notify("2"), WAIT).await);
        assert!(!tx.try_send(notify("3")), "full");
        assert!(!tx.send_timeout(notify("3"), WAIT).await, "still full");
        assert!(matches!(rx.recv().await, Outbound::Notify(q) if q.message_id.as_str() == "1"));
        assert!(tx.try_send(Outbound::Resync), "room again");
        assert!(matches!(rx.try_recv(), Some(Outbound::Notify(q)) if q.message_id.as_str() == "2"));
        assert!(matches!(rx.try_recv(), Some(Outbound::Resync)));
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_gets_it_and_the_receiver_is_woken() {
        let (tx, mut rx) = queue(1);
        assert!(tx.try_send(notify("1")));
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(notify("2")).await }
        });
        tokio::task::yield_now().await;
        assert!(matches!(rx.recv().await, Outbound::Notify(q) if q.message_id.as_str() == "1"));
        assert!(
            waiting.await.expect("no panic"),
            "queued once there was room"
        );
        let receiving = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx.recv().await)
        });
        tokio::task::yield_now().await;
        assert!(tx.try_send(Outbound::TakenOver));
        let (first, second) = receiving.await.expect("no panic");
        assert!(matches!(first, Outbound::Notify(q) if q.message_id.as_str() == "2"));
        assert!(matches!(second, Outbound::TakenOver));
    }

    #[tokio::test]
    async fn a_queue_without_its_receiver_refuses_everything() {
        let (tx, rx) = queue(1);
        assert!(tx.try_send(notify("1")));
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(notify("2")).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(
            !waiting.await.expect("no panic"),
            "a waiting sender is told"
        );
        assert!(!tx.try_send(Outbound::Resync));
        assert!(!tx.send_timeout(Outbound::Resync, WAIT).await);
    }

    #[tokio::test]
    async fn a_second_connection_of_a_ua_takes_it_over() {
        let registry = Registry::default();
        let ua = UaId::new("u");
        let (first, second) = (ConnId::new("1"), ConnId::new("2"));
        let (tx1, mut rx1) = queue(4);
        let (tx2, mut rx2) = queue(4);
        assert!(!registry.attach(&ua, &first, tx1.clone()));
        assert!(
            !registry.attach(&ua, &first, tx1),
            "registering again is no take-over"
        );
        assert!(rx1.try_recv().is_none());
        assert!(registry.attach(&ua, &second, tx2));
        assert!(matches!(rx1.try_recv(), Some(Outbound::TakenOver)));

        assert!(registry.send_to(&ua, notify("m"), WAIT).await);
        assert!(
            matches!(rx2.try_recv(), Some(Outbound::Notify(q)) if q.message_id.as_str() == "m")
        );
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
        let (tx, _rx) = queue(1);
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
        let (tx, mut rx) = queue(4);
        registry.attach(&ua, &ConnId::new("current"), tx);
        assert!(!registry.take_over(&ua, &ConnId::new("older")));
        assert!(rx.try_recv().is_none());
        assert!(!registry.take_over(&UaId::new("other"), &ConnId::new("current")));
        assert!(registry.take_over(&ua, &ConnId::new("current")));
        assert!(matches!(rx.try_recv(), Some(Outbound::TakenOver)));
    }
}
