//! The embedded store of the one-process mode: redb on disk as the record, a write-ahead log
//! beside it for durability, indexes in memory for the reads.
//!
//! Writes are commands handed to one writer thread. It takes every command queued, plans
//! each against what is committed plus what the commands before it in the group will change
//! ([`plan::View`]), appends all their changes to the log ([`wal`]) as one record and commits
//! them in one redb transaction without a sync, and only then applies them to the in-memory
//! indexes. Memory therefore only ever holds what is committed: a failed commit changes
//! nothing, and its callers get an error. At open, the log is applied again from the last
//! checkpoint and the indexes are rebuilt from the tables.
//!
//! Commands that need not be durable ([`Command::must_be_durable`]: routing and `sent`,
//! which a crash may lose without losing anything owed) are answered at once; the others
//! once the [`Syncer`] has synced the log (group commit: one sync for every record written
//! before it started), while the writer goes on with the next group.
//!
//! Payloads are not in memory: they are read from the file when notifications are
//! delivered or routed, one read transaction for a batch, so that memory grows with the
//! number of records and not with what they carry.

mod mem;
mod plan;
mod tables;
mod wal;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use async_trait::async_trait;
use common::delivery::{DeliveryUpdate, StatusReport};
use common::model::{App, AppToken, EpochSecs, Live, MessageId, UaId, UaRoute};
use common::notification::{Notification, NotificationHead};
use common::purge::Retention;
use ns_store::{Added, Durable, OwedCount, Store, StoreError, StoreResult};
use redb::Database;
use tokio::sync::{mpsc, oneshot};

use mem::Mem;
use plan::{Changes, Command, Outcome};
use tables::CommitError;
use wal::Wal;

/// Memory redb may use to cache pages of the file, by default.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// Commands committed in one transaction at most.
const MAX_GROUP: usize = 4096;
/// Notifications the purge looks at in one command, so that it never holds up the writer
/// (and every write behind it) for a walk over all of them.
const PURGE_CHUNK: usize = 1_000;

/// A command, who waits for its outcome, and who waits only for it to be applied (visible
/// to later commands and reads), before it is durable.
type Job = (
    Command,
    oneshot::Sender<StoreResult<Outcome>>,
    Option<oneshot::Sender<()>>,
);
/// An outcome and whom it goes to.
type Answer = (oneshot::Sender<StoreResult<Outcome>>, StoreResult<Outcome>);

/// The writer thread is gone: the store is shutting down, or the thread failed.
#[derive(Debug, thiserror::Error)]
#[error("the store's writer has stopped")]
struct WriterStopped;

/// The one-process store. Cloning shares it; the writer thread stops, after finishing what
/// was queued, when the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    mem: Arc<RwLock<Mem>>,
    /// For the payloads; every write goes through the writer thread.
    db: Arc<Database>,
    writer: Option<mpsc::Sender<Job>>,
    /// The writer's thread, then the syncer's, if any: joined in that order.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer's loop once it has answered what it holds, which
        // closes the syncer's.
        self.writer.take();
        let threads = std::mem::take(
            self.threads
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a thread of the store panicked");
            }
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file with redb's page cache at
    /// [`DEFAULT_CACHE_BYTES`], and rebuilds the indexes from it.
    pub fn open(path: &Path) -> StoreResult<EmbeddedStore> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database file with a page cache of at most `cache_bytes`, and
    /// rebuilds the indexes from it.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> StoreResult<EmbeddedStore> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(tables::unavailable)?;
        tables::create_all(&db)?;
        let checkpoint = tables::checkpointed(&db)?;
        let (wal, replay) =
            Wal::open(&path.with_extension("wal"), checkpoint).map_err(StoreError::unavailable)?;
        if !replay.is_empty() {
            let mut groups = Vec::with_capacity(replay.len());
            for (seq, payload) in &replay {
                let ops = wal::decode_ops(payload).ok_or_else(|| {
                    StoreError::corrupt(format!("record {seq} of the store's log"), MalformedLog)
                })?;
                groups.push(ops);
            }
            tables::checkpoint(&db, &groups, wal.last_seq()).map_err(|e| match e {
                CommitError::Database(e) => tables::unavailable(e),
                e => StoreError::unavailable(e),
            })?;
            tracing::info!(
                groups = groups.len(),
                "applied the store's log after an unclean stop"
            );
        }
        let mem = tables::load(&db)?;
        let db = Arc::new(db);
        let log = wal.file().map_err(StoreError::unavailable)?;
        let (syncer, sync_thread) = Syncer::start(log)?;
        let mut committer = Committer {
            db: db.clone(),
            wal,
        };
        let commit = move |changes: &Changes| committer.commit(changes);
        let store = Self::start(mem, db, commit, Some(syncer))?;
        store
            .inner
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sync_thread);
        Ok(store)
    }

    /// The store over `mem` and `db`, with a writer thread that commits with `commit`: a
    /// commit that is durable when it returns, without a `syncer`; else one that the syncer
    /// makes durable.
    fn start(
        mem: Mem,
        db: Arc<Database>,
        commit: impl FnMut(&Changes) -> Result<(), CommitError> + Send + 'static,
        syncer: Option<Syncer>,
    ) -> StoreResult<EmbeddedStore> {
        let mem = Arc::new(RwLock::new(mem));
        let (tx, rx) = mpsc::channel(MAX_GROUP);
        let thread = {
            let mem = mem.clone();
            std::thread::Builder::new()
                .name("ns-store-writer".into())
                .spawn(move || write_loop(&mem, rx, commit, syncer))
                .map_err(StoreError::unavailable)?
        };
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                mem,
                db,
                writer: Some(tx),
                threads: Mutex::new(vec![thread]),
            }),
        })
    }

    fn mem(&self) -> RwLockReadGuard<'_, Mem> {
        self.inner
            .mem
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The notifications of `heads`, read with their payloads off the async threads.
    async fn with_payloads(&self, heads: Vec<NotificationHead>) -> StoreResult<Vec<Notification>> {
        if heads.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || tables::with_payloads(&db, heads))
            .await
            .map_err(StoreError::unavailable)?
    }

    /// Runs `command` through the writer; returns once its changes are committed and
    /// applied.
    async fn run(&self, command: Command) -> StoreResult<Outcome> {
        let stopped = || StoreError::unavailable(WriterStopped);
        let writer = self.inner.writer.as_ref().ok_or_else(stopped)?;
        let (done, outcome) = oneshot::channel();
        writer
            .send((command, done, None))
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Runs `command` through the writer; returns once it is applied, with what resolves
    /// once it is durable.
    async fn stage(&self, command: Command) -> StoreResult<Durable> {
        let stopped = || StoreError::unavailable(WriterStopped);
        let writer = self.inner.writer.as_ref().ok_or_else(stopped)?;
        let (done, outcome) = oneshot::channel();
        let (applied_tx, applied) = oneshot::channel();
        writer
            .send((command, done, Some(applied_tx)))
            .await
            .map_err(|_| stopped())?;
        let durable = async move { outcome.await.map_err(|_| stopped())?.map(|_| ()) };
        match applied.await {
            Ok(()) => Ok(Box::pin(durable)),
            // Not applied: the outcome says why.
            Err(_) => durable
                .await
                .map(|()| -> Durable { Box::pin(std::future::ready(Ok(()))) }),
        }
    }
}

/// The writer thread: plans every queued command, commits them in one transaction, applies
/// them to memory, then answers them all; with a syncer, those that must be durable once it
/// has synced the log, while the writer goes on with the next group.
fn write_loop(
    mem: &RwLock<Mem>,
    mut jobs: mpsc::Receiver<Job>,
    mut commit: impl FnMut(&Changes) -> Result<(), CommitError>,
    syncer: Option<Syncer>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while jobs.blocking_recv_many(&mut group, MAX_GROUP) > 0 {
        let mut commands = Vec::with_capacity(group.len());
        let mut waiters = Vec::with_capacity(group.len());
        let mut applied = Vec::new();
        for (command, done, on_applied) in group.drain(..) {
            waiters.push((done, command.must_be_durable()));
            commands.push(command);
            applied.extend(on_applied);
        }
        if let Some(failed) = syncer.as_ref().and_then(Syncer::failed) {
            for (waiter, _) in waiters {
                let _ = waiter.send(Err(StoreError::unavailable(failed.clone())));
            }
            continue;
        }
        let (outcomes, changes) = {
            let committed = mem.read().unwrap_or_else(PoisonError::into_inner);
            plan::plan_group(&committed, commands)
        };
        let result = if changes.is_empty() {
            Ok(())
        } else {
            commit(&changes)
        };
        match result {
            Ok(()) => {
                mem.write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .apply(changes);
                for waiter in applied {
                    let _ = waiter.send(());
                }
                let mut after_sync = Vec::new();
                for ((waiter, durable), outcome) in waiters.into_iter().zip(outcomes) {
                    match &syncer {
                        Some(_) if durable => after_sync.push((waiter, Ok(outcome))),
                        // A caller that stopped waiting needs no answer: its write is done.
                        _ => drop(waiter.send(Ok(outcome))),
                    }
                }
                if let Some(syncer) = &syncer {
                    syncer.answer_when_synced(after_sync);
                }
            }
            Err(error) => {
                tracing::error!(%error, commands = waiters.len(), "committing to the store failed");
                let error = Arc::new(error);
                for (waiter, _) in waiters {
                    let answer = match &*error {
                        CommitError::Encode(_) => {
                            StoreError::corrupt("a record to write", error.clone())
                        }
                        CommitError::Database(_) | CommitError::Log(_) => {
                            StoreError::unavailable(error.clone())
                        }
                    };
                    let _ = waiter.send(Err(answer));
                }
            }
        }
    }
}

/// Syncs the log and then answers the commands that waited for it to be durable, on a
/// thread of its own: while the disk syncs, the writer goes on with the next group, so that a
/// routing or a `sent` (which need not be durable) is not held up by a sync. One sync
/// answers every command whose record was written before it started.
struct Syncer {
    answers: std::sync::mpsc::Sender<Vec<Answer>>,
    /// Set once a sync failed: what memory holds may then not be on the disk, so every later
    /// write is refused.
    failed: Arc<Mutex<Option<Arc<SyncFailed>>>>,
}

/// The log could not be synced to the disk.
#[derive(Debug, thiserror::Error)]
#[error("syncing the store's log failed; the store takes no more writes")]
struct SyncFailed(#[source] std::io::Error);

impl Syncer {
    fn start(log: std::fs::File) -> StoreResult<(Syncer, JoinHandle<()>)> {
        let (answers, pending) = std::sync::mpsc::channel::<Vec<Answer>>();
        let failed = Arc::new(Mutex::new(None));
        let thread = {
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("ns-store-sync".into())
                .spawn(move || {
                    while let Ok(first) = pending.recv() {
                        let batch: Vec<Answer> = first
                            .into_iter()
                            .chain(pending.try_iter().flatten())
                            .collect();
                        let synced = log.sync_data().map_err(|e| {
                            tracing::error!(error = %e, "syncing the store's log failed");
                            let e = Arc::new(SyncFailed(e));
                            *failed.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some(e.clone());
                            e
                        });
                        for (waiter, outcome) in batch {
                            let answer = match &synced {
                                Ok(()) => outcome,
                                Err(e) => Err(StoreError::unavailable(e.clone())),
                            };
                            let _ = waiter.send(answer);
                        }
                    }
                })
                .map_err(StoreError::unavailable)?
        };
        Ok((Syncer { answers, failed }, thread))
    }

    fn answer_when_synced(&self, answers: Vec<Answer>) {
        if !answers.is_empty() {
            // The thread ends only once this sender is dropped.
            let _ = self.answers.send(answers);
        }
    }

    fn failed(&self) -> Option<Arc<SyncFailed>> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A record of the store's log that is whole but does not decode.
#[derive(Debug, thiserror::Error)]
#[error("a record of the log is malformed")]
struct MalformedLog;

/// How the writer thread commits a group: its changes appended to the log (which the
/// [`Syncer`] syncs), then committed to redb without a sync; every
/// [`wal::CHECKPOINT_BYTES`] of log, and when the writer stops, a synced checkpoint.
struct Committer {
    db: Arc<Database>,
    wal: Wal,
}

impl Committer {
    fn commit(&mut self, changes: &Changes) -> Result<(), CommitError> {
        let ops = tables::ops(changes)?;
        let start = self
            .wal
            .append(&wal::encode_ops(&ops))
            .map_err(CommitError::Log)?;
        if let Err(e) = tables::commit_ops(&self.db, &ops) {
            // Its callers are told it failed: no replay may apply it later.
            if let Err(undo) = self.wal.undo(start) {
                tracing::error!(error = %undo, "taking a failed group out of the store's log failed");
            }
            return Err(e);
        }
        if self.wal.written() >= wal::CHECKPOINT_BYTES {
            self.checkpoint();
        }
        Ok(())
    }

    /// A failed checkpoint loses nothing: the log keeps every group since the last one, and
    /// the next commit tries again.
    fn checkpoint(&mut self) {
        match tables::checkpoint(&self.db, &[], self.wal.last_seq()) {
            Ok(()) => self.wal.restart(),
            Err(e) => tracing::error!(error = %e, "checkpointing the store failed"),
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        if self.wal.written() > 0 {
            self.checkpoint();
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn register_ua(&self, route: &UaRoute) -> StoreResult<Option<UaRoute>> {
        self.run(Command::RegisterUa(route.clone()))
            .await?
            .into_previous()
    }

    async fn disconnect_ua(&self, ua: &UaId, live: &Live) -> StoreResult<()> {
        self.run(Command::DisconnectUa(ua.clone(), live.clone()))
            .await
            .map(|_| ())
    }

    async fn ua_routes(&self, uas: &[UaId]) -> StoreResult<Vec<UaRoute>> {
        let mem = self.mem();
        Ok(uas.iter().filter_map(|ua| mem.route(ua)).collect())
    }

    async fn put_app(&self, app: &App) -> StoreResult<()> {
        self.run(Command::PutApp(app.clone())).await.map(|_| ())
    }

    async fn get_app(&self, app_token: &AppToken) -> StoreResult<Option<App>> {
        Ok(self.mem().apps.get(app_token).map(|pbk| App {
            app_token: app_token.clone(),
            pbk: pbk.clone(),
        }))
    }

    async fn register_wa(&self, ua: &UaId, app_token: &AppToken) -> StoreResult<()> {
        self.run(Command::RegisterWa(ua.clone(), app_token.clone()))
            .await
            .map(|_| ())
    }

    async fn unregister_wa(&self, ua: &UaId, app_token: &AppToken) -> StoreResult<bool> {
        self.run(Command::UnregisterWa(ua.clone(), app_token.clone()))
            .await?
            .into_bool()
    }

    async fn ua_registrations(&self, ua: &UaId) -> StoreResult<u64> {
        Ok(self.mem().ua_registrations(ua))
    }

    async fn app_uas(&self, app_token: &AppToken) -> StoreResult<Vec<UaId>> {
        Ok(self
            .mem()
            .registrations
            .get(app_token)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn insert_notification(&self, n: &Notification, now: EpochSecs) -> StoreResult<()> {
        self.run(Command::InsertNotification(n.clone(), now))
            .await
            .map(|_| ())
    }

    async fn stage_notification(&self, n: &Notification, now: EpochSecs) -> StoreResult<Durable> {
        self.stage(Command::InsertNotification(n.clone(), now))
            .await
    }

    async fn pending_for_app(&self, app_token: &AppToken, now: EpochSecs) -> StoreResult<u64> {
        Ok(self.mem().pending_for_app(app_token, now))
    }

    async fn pending_total(&self, now: EpochSecs) -> StoreResult<u64> {
        Ok(self.mem().pending_total(now))
    }

    async fn add_deliveries(
        &self,
        n: &Notification,
        uas: &[UaId],
        now: EpochSecs,
        max_pending: Option<u64>,
    ) -> StoreResult<Added> {
        self.run(Command::AddDeliveries(
            n.message_id.clone(),
            uas.to_vec(),
            now,
            max_pending,
        ))
        .await?
        .into_added()
    }

    async fn unrouted(&self, now: EpochSecs, limit: usize) -> StoreResult<Vec<Notification>> {
        let heads = self.mem().unrouted(now, limit);
        self.with_payloads(heads).await
    }

    async fn update_deliveries(
        &self,
        updates: &[DeliveryUpdate],
        now: EpochSecs,
    ) -> StoreResult<u64> {
        if updates.is_empty() {
            return Ok(0);
        }
        self.run(Command::UpdateDeliveries(updates.to_vec(), now))
            .await?
            .into_count()
    }

    async fn outstanding(
        &self,
        ua: &UaId,
        now: EpochSecs,
        limit: usize,
    ) -> StoreResult<Vec<Notification>> {
        let heads = self.mem().outstanding(ua, now, limit);
        self.with_payloads(heads).await
    }

    async fn owed_count(&self, ua: &UaId, now: EpochSecs) -> StoreResult<OwedCount> {
        Ok(self.mem().owed_count(ua, now))
    }

    async fn status(
        &self,
        app_token: &AppToken,
        id: &str,
        now: EpochSecs,
    ) -> StoreResult<Option<StatusReport>> {
        Ok(self.mem().status(app_token, id, now))
    }

    async fn report(
        &self,
        message_id: &MessageId,
        now: EpochSecs,
    ) -> StoreResult<Option<StatusReport>> {
        Ok(self.mem().report(message_id, now))
    }

    async fn withdraw(&self, message_id: &MessageId, now: EpochSecs) -> StoreResult<bool> {
        self.run(Command::Withdraw(message_id.clone(), now))
            .await?
            .into_bool()
    }

    async fn purge(&self, now: EpochSecs, retention: Retention) -> StoreResult<u64> {
        // A chunk at a time, each its own command: writes queued meanwhile go in between.
        let mut removed = 0;
        let mut after: Option<MessageId> = None;
        loop {
            let command = Command::Purge {
                after: after.take(),
                limit: PURGE_CHUNK,
                now,
                retention,
            };
            let (count, last) = self.run(command).await?.into_purged()?;
            removed += count;
            match last {
                Some(last) => after = Some(last),
                None => return Ok(removed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::model::{EpochMillis, Interface};

    struct Fixture {
        store: EmbeddedStore,
        _dir: tempfile::TempDir,
    }

    #[async_trait]
    impl ns_store::conformance::Fixture for Fixture {
        fn store(&self) -> &dyn Store {
            &self.store
        }

        async fn tear_down(self) {}
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open");
        Fixture { store, _dir: dir }
    }

    ns_store::conformance_tests!(fixture);

    const NOW: EpochSecs = EpochSecs(1_700_000_000);

    fn notification(app: &str, id: &str, created_at: i64) -> Notification {
        Notification {
            message_id: MessageId::new(uuid::Uuid::now_v7().simple().to_string()),
            app_token: AppToken::new(app),
            id: id.into(),
            payload: common::notification::Payload::Text("m".into()),
            ttl: 3600,
            timestamp: NOW,
            expires_at: NOW.plus(3600),
            priority: 4,
            created_at: EpochMillis(created_at),
        }
    }

    /// What the disk holds at a moment, as a crash leaves it: the file and the log copied
    /// while the store is open. The file alone holds none of the writes since the last
    /// checkpoint (they were committed without a sync); with the log, every one comes back.
    #[tokio::test]
    async fn a_crash_loses_nothing_the_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let (ua, app) = (UaId::new("u"), AppToken::new("app"));
        let ns: Vec<_> = (0..3)
            .map(|i| notification("app", &format!("n{i}"), i))
            .collect();
        let store = EmbeddedStore::open(&path).unwrap();
        store.register_wa(&ua, &app).await.unwrap();
        for n in &ns {
            store.insert_notification(n, NOW).await.unwrap();
        }
        store
            .add_deliveries(&ns[0], std::slice::from_ref(&ua), NOW, None)
            .await
            .unwrap();
        let ack = DeliveryUpdate {
            message_id: ns[0].message_id.clone(),
            ua: ua.clone(),
            status: common::delivery::DeliveryStatus::Acked,
        };
        store.update_deliveries(&[ack], NOW).await.unwrap();

        let copy = |name: &str, with_log: bool| {
            let to = dir.path().join(name);
            std::fs::create_dir(&to).unwrap();
            std::fs::copy(&path, to.join("store.redb")).unwrap();
            if with_log {
                std::fs::copy(path.with_extension("wal"), to.join("store.wal")).unwrap();
            }
            to.join("store.redb")
        };
        let (bare, logged) = (copy("bare", false), copy("logged", true));
        drop(store);

        let without = EmbeddedStore::open(&bare).unwrap();
        assert!(without.app_uas(&app).await.unwrap().is_empty());
        assert!(without.unrouted(NOW, 10).await.unwrap().is_empty());

        let crashed = EmbeddedStore::open(&logged).unwrap();
        assert_eq!(crashed.app_uas(&app).await.unwrap(), vec![ua.clone()]);
        assert_eq!(crashed.unrouted(NOW, 10).await.unwrap(), ns[1..].to_vec());
        let report = crashed.status(&app, "n0", NOW).await.unwrap().unwrap();
        assert_eq!(
            report.deliveries[0].status,
            common::delivery::DeliveryStatus::Acked
        );
        drop(crashed);
        // Applied once: the next open finds it all in the file.
        let again = EmbeddedStore::open(&logged).unwrap();
        assert_eq!(again.unrouted(NOW, 10).await.unwrap(), ns[1..].to_vec());
    }

    #[tokio::test]
    async fn a_staged_notification_is_seen_before_it_is_durable() {
        let (_dir, store) = {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
            (dir, store)
        };
        let n = notification("app", "a", 1);
        let durable = store.stage_notification(&n, NOW).await.unwrap();
        assert_eq!(store.unrouted(NOW, 10).await.unwrap(), vec![n.clone()]);
        let routed = store
            .add_deliveries(&n, &[UaId::new("u")], NOW, None)
            .await
            .unwrap();
        assert!(routed.routed, "a later write sees it");
        durable.await.unwrap();
    }

    #[tokio::test]
    async fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let ua = UaId::new("u1");
        let app = AppToken::new("app");
        let n = notification("app", "a", 1);
        let replaced = notification("app", "b", 2);
        let replacement = notification("app", "b", 3);
        let route = UaRoute::offline(
            ua.clone(),
            Some(Interface {
                ip: "127.0.0.1".parse().unwrap(),
                port: 9,
            }),
        );
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.register_ua(&route).await.unwrap();
            store
                .put_app(&App {
                    app_token: app.clone(),
                    pbk: Some("pem".into()),
                })
                .await
                .unwrap();
            store.register_wa(&ua, &app).await.unwrap();
            for n in [&n, &replaced, &replacement] {
                store.insert_notification(n, NOW).await.unwrap();
            }
            assert!(
                store
                    .add_deliveries(&n, std::slice::from_ref(&ua), NOW, None)
                    .await
                    .unwrap()
                    .routed
            );
        }
        // Dropping the store joined its writer, so the file is free at once.
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(
            store.get_app(&app).await.unwrap().and_then(|a| a.pbk),
            Some("pem".into())
        );
        assert_eq!(store.app_uas(&app).await.unwrap(), vec![ua.clone()]);
        assert_eq!(
            store.ua_routes(std::slice::from_ref(&ua)).await.unwrap(),
            vec![route]
        );
        assert_eq!(store.outstanding(&ua, NOW, 10).await.unwrap(), vec![n]);
        let unrouted: Vec<_> = store
            .unrouted(NOW, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.message_id)
            .collect();
        assert_eq!(
            unrouted,
            vec![replacement.message_id],
            "what was replaced stays replaced"
        );
    }

    #[tokio::test]
    async fn group_commit_serves_many_concurrent_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        let ns: Vec<_> = (0..1000)
            .map(|i| notification("app", &i.to_string(), i))
            .collect();
        let results =
            futures::future::join_all(ns.iter().map(|n| store.insert_notification(n, NOW))).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(store.unrouted(NOW, 10_000).await.unwrap().len(), 1000);
    }

    #[tokio::test]
    async fn a_failed_commit_changes_nothing_in_memory() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let failing = Arc::new(AtomicBool::new(true));
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("store.redb")).unwrap());
        tables::create_all(&db).unwrap();
        let (wal, _) = Wal::open(&dir.path().join("store.wal"), 0).unwrap();
        let (syncer, _) = Syncer::start(wal.file().unwrap()).unwrap();
        let store = {
            let failing = failing.clone();
            let mut committer = Committer {
                db: db.clone(),
                wal,
            };
            let commit = move |changes: &Changes| {
                if failing.load(Ordering::SeqCst) {
                    Err(CommitError::Database(redb::Error::DatabaseAlreadyOpen))
                } else {
                    committer.commit(changes)
                }
            };
            EmbeddedStore::start(Mem::default(), db, commit, Some(syncer)).unwrap()
        };
        let ua = UaId::new("u");
        let app = AppToken::new("app");
        let n = notification("app", "a", 1);
        assert!(matches!(
            store.insert_notification(&n, NOW).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(store.register_wa(&ua, &app).await.is_err());
        assert!(
            store.unrouted(NOW, 10).await.unwrap().is_empty(),
            "a refused notification is not there to be routed later"
        );
        assert_eq!(store.status(&app, "a", NOW).await.unwrap(), None);
        assert!(store.app_uas(&app).await.unwrap().is_empty());

        failing.store(false, Ordering::SeqCst);
        store.insert_notification(&n, NOW).await.unwrap();
        assert_eq!(store.unrouted(NOW, 10).await.unwrap(), vec![n]);
    }

    #[tokio::test]
    async fn commands_in_one_group_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        let ua = UaId::new("u");
        let older = notification("app", "same", 1);
        let newer = notification("app", "same", 2);
        // Issued together, so that the writer is likely to take them as one group: each must
        // be planned against the ones before it.
        let (a, b, c) = tokio::join!(
            store.insert_notification(&older, NOW),
            store.add_deliveries(&older, std::slice::from_ref(&ua), NOW, None),
            store.insert_notification(&newer, NOW),
        );
        a.unwrap();
        c.unwrap();
        let routed = b.unwrap().routed;
        let report = store.status(&older.app_token, "same", NOW).await.unwrap();
        assert_eq!(report.map(|r| r.message_id), Some(newer.message_id));
        assert!(
            store.outstanding(&ua, NOW, 10).await.unwrap().is_empty(),
            "routed ({routed}) or not, the older one is replaced"
        );
    }
}
