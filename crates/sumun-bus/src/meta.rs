//! The bus's metadata in one redb file (`{data_dir}/bus/meta.redb`): subscription cursors,
//! pending messages (in flight, leased, waiting for a retry, queued behind their key) with
//! their attempt history, dedup keys, and the dead-letter index.
//!
//! The log is the source of truth for messages; this store only says how far each
//! subscription got. Losing a recent non-durable commit therefore only makes messages be
//! delivered again (at-least-once), never lost. Writes go through one writer task that
//! batches every waiting operation into one transaction; commits are non-durable unless an
//! operation asks for durability (dedup keys before a 202, dead-letter moves, redrives) or
//! [`FLUSH_EVERY`] has passed since the last durable one.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// (subscription, partition) → next offset to read.
const CURSORS: TableDefinition<(&str, u32), u64> = TableDefinition::new("cursors");
/// (subscription, partition, offset) → [`PendingEntry`] as JSON.
const PENDING: TableDefinition<(&str, u32, u64), &[u8]> = TableDefinition::new("pending");
/// (topic, dedup key) → [`DedupEntry`] as JSON.
const DEDUP: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("dedup");
/// (recorded at ms, topic, dedup key): expiry order of `DEDUP`.
const DEDUP_TIME: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("dedup_time");
/// (subscription, message id) → [`DeadEntry`] as JSON.
const DLQ: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("dlq");

/// Longest gap between durable commits: a crash replays at most this much metadata.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Operations batches waiting for the writer; a full queue is back-pressure.
const QUEUE: usize = 4096;

/// One delivery attempt, as the DLQ and the admin API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Milliseconds since the epoch when it started.
    pub at_ms: u64,
    /// HTTP status, when a response came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// Why it failed (None for a success).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a pending message's bytes are read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The subscription's topic, at the entry's own partition and offset.
    Topic,
    /// A dead-letter record (a redriven message): its original is wrapped in it.
    DeadLetter { topic: String, partition: u32, offset: u64 },
}

/// A message a subscription has read but not finished with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEntry {
    /// Attempts started so far.
    pub attempt: u32,
    /// When it may be delivered (waiting) or when its lease ends (leased / in flight).
    pub due_ms: u64,
    /// The publish time, for lag in seconds.
    pub published_ms: u64,
    /// xxh3 of the key, for per-key ordering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<u64>,
    pub source: Source,
    /// The lease of a pulled message (its ack id's nonce), so acks survive a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    pub id: String,
    pub partition: u32,
    pub offset: u64,
    pub at_ms: u64,
}

/// A dead message in a subscription's dead-letter index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadEntry {
    pub id: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub dead_letter_topic: String,
    pub dead_letter_partition: u32,
    pub dead_letter_offset: u64,
    pub dead_at_ms: u64,
    pub published_ms: u64,
    pub attempts: Vec<Attempt>,
}

/// One change to the store.
#[derive(Debug, Clone)]
pub enum Op {
    Cursor {
        sub: String,
        partition: u32,
        next: u64,
    },
    PutPending {
        sub: String,
        partition: u32,
        offset: u64,
        entry: PendingEntry,
    },
    DeletePending {
        sub: String,
        partition: u32,
        offset: u64,
    },
    PutDedup {
        topic: String,
        key: String,
        entry: DedupEntry,
    },
    PutDead {
        sub: String,
        entry: DeadEntry,
    },
    DeleteDead {
        sub: String,
        id: String,
    },
    /// Removes dedup keys recorded before this time.
    ExpireDedup {
        before_ms: u64,
    },
    /// Forgets everything about a subscription (cursors, pending, dead letters).
    DropSubscription {
        sub: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store: {0}")]
    Store(String),
    #[error("metadata store busy")]
    Busy,
    #[error("metadata store closed")]
    Closed,
}

fn store_err(e: impl std::fmt::Display) -> MetaError {
    MetaError::Store(e.to_string())
}

struct Batch {
    ops: Vec<Op>,
    durable: bool,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The metadata store: reads on the blocking pool, writes through the writer task.
#[derive(Clone)]
pub struct Meta {
    db: Arc<Database>,
    tx: mpsc::Sender<Batch>,
}

/// What a subscription finds when it starts.
#[derive(Debug, Default)]
pub struct SubscriptionState {
    pub cursors: Vec<(u32, u64)>,
    pub pending: Vec<(u32, u64, PendingEntry)>,
    pub dead: usize,
}

impl Meta {
    /// Opens (creating) the store at `path` and starts its writer task (inside a Tokio
    /// runtime). The task ends, after a last durable commit, when every `Meta` is dropped.
    pub fn open(path: &Path) -> Result<(Meta, tokio::task::JoinHandle<()>), MetaError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(store_err)?;
        }
        let db = Arc::new(Database::create(path).map_err(store_err)?);
        {
            let w = db.begin_write().map_err(store_err)?;
            w.open_table(CURSORS).map_err(store_err)?;
            w.open_table(PENDING).map_err(store_err)?;
            w.open_table(DEDUP).map_err(store_err)?;
            w.open_table(DEDUP_TIME).map_err(store_err)?;
            w.open_table(DLQ).map_err(store_err)?;
            w.commit().map_err(store_err)?;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer_db = db.clone();
        let handle = tokio::spawn(writer(writer_db, rx));
        Ok((Meta { db, tx }, handle))
    }

    /// Queues operations; they are visible to reads once the writer commits them (soon).
    /// Fails only when the queue is full or the writer stopped.
    pub fn submit(&self, ops: Vec<Op>) -> Result<(), MetaError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.tx.try_send(Batch { ops, durable: false, done: None }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => MetaError::Busy,
            mpsc::error::TrySendError::Closed(_) => MetaError::Closed,
        })
    }

    /// Applies operations and returns once they are committed (durably when `durable`).
    pub async fn commit(&self, ops: Vec<Op>, durable: bool) -> Result<(), MetaError> {
        let (done, rx) = oneshot::channel();
        let batch = Batch { ops, durable, done: Some(done) };
        match tokio::time::timeout(Duration::from_secs(5), self.tx.send(batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(MetaError::Closed),
            Err(_) => return Err(MetaError::Busy),
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(MetaError::Store(e)),
            Err(_) => Err(MetaError::Closed),
        }
    }

    /// Queues operations, waiting (up to 5 s) for room: back-pressure on whoever produces
    /// them faster than the disk takes them.
    pub async fn send(&self, ops: Vec<Op>) -> Result<(), MetaError> {
        if ops.is_empty() {
            return Ok(());
        }
        let batch = Batch { ops, durable: false, done: None };
        match tokio::time::timeout(Duration::from_secs(5), self.tx.send(batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(MetaError::Closed),
            Err(_) => Err(MetaError::Busy),
        }
    }

    /// Makes everything queued so far durable.
    pub async fn flush(&self) -> Result<(), MetaError> {
        self.commit(Vec::new(), true).await
    }

    /// Stops the writer after it has committed (durably) what is queued.
    pub async fn close(&self) {
        let _ = self.flush().await;
    }

    /// Runs a blocking read on the blocking pool.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(store_err)?
    }

    pub async fn load_subscription(&self, sub: &str) -> Result<SubscriptionState, MetaError> {
        let sub = sub.to_owned();
        self.read(move |db| load_subscription(db, &sub)).await
    }

    pub async fn dedup_get(&self, topic: &str, key: &str) -> Result<Option<DedupEntry>, MetaError> {
        let (topic, key) = (topic.to_owned(), key.to_owned());
        self.read(move |db| {
            let r = db.begin_read().map_err(store_err)?;
            let t = r.open_table(DEDUP).map_err(store_err)?;
            let v = t.get((topic.as_str(), key.as_str())).map_err(store_err)?;
            Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok()))
        })
        .await
    }

    /// Dead letters of a subscription in id order, after `after` (exclusive), at most `limit`.
    pub async fn dead_list(
        &self,
        sub: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeadEntry>, MetaError> {
        let sub = sub.to_owned();
        self.read(move |db| {
            let r = db.begin_read().map_err(store_err)?;
            let t = r.open_table(DLQ).map_err(store_err)?;
            let start = after.clone().unwrap_or_default();
            let mut out = Vec::new();
            for item in t.range((sub.as_str(), start.as_str())..).map_err(store_err)? {
                let (k, v) = item.map_err(store_err)?;
                let (s, id) = k.value();
                if s != sub {
                    break;
                }
                if after.as_deref() == Some(id) {
                    continue;
                }
                if let Ok(e) = serde_json::from_slice::<DeadEntry>(v.value()) {
                    out.push(e);
                }
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn dead_get(&self, sub: &str, id: &str) -> Result<Option<DeadEntry>, MetaError> {
        let (sub, id) = (sub.to_owned(), id.to_owned());
        self.read(move |db| {
            let r = db.begin_read().map_err(store_err)?;
            let t = r.open_table(DLQ).map_err(store_err)?;
            let v = t.get((sub.as_str(), id.as_str())).map_err(store_err)?;
            Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok()))
        })
        .await
    }
}

fn load_subscription(db: &Database, sub: &str) -> Result<SubscriptionState, MetaError> {
    let r = db.begin_read().map_err(store_err)?;
    let mut state = SubscriptionState::default();
    let cursors = r.open_table(CURSORS).map_err(store_err)?;
    for item in cursors.range((sub, 0u32)..=(sub, u32::MAX)).map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        state.cursors.push((k.value().1, v.value()));
    }
    let pending = r.open_table(PENDING).map_err(store_err)?;
    for item in pending.range((sub, 0u32, 0u64)..=(sub, u32::MAX, u64::MAX)).map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        let (_, p, o) = k.value();
        match serde_json::from_slice::<PendingEntry>(v.value()) {
            Ok(e) => state.pending.push((p, o, e)),
            Err(e) => {
                tracing::warn!(subscription = sub, partition = p, offset = o, error = %e, "unreadable pending entry; it will be read again from the log")
            }
        }
    }
    let dlq = r.open_table(DLQ).map_err(store_err)?;
    for item in dlq.range((sub, "")..).map_err(store_err)? {
        let (k, _) = item.map_err(store_err)?;
        if k.value().0 != sub {
            break;
        }
        state.dead += 1;
    }
    Ok(state)
}

/// The writer task: takes every batch waiting, applies them in one transaction on the
/// blocking pool, and meanwhile lets the next ones queue up (group commit).
async fn writer(db: Arc<Database>, mut rx: mpsc::Receiver<Batch>) {
    let mut last_durable = Instant::now();
    let mut dirty = false;
    loop {
        // Wait for work, but wake up to make non-durable commits durable in time.
        let first = if dirty {
            let deadline = last_durable + FLUSH_EVERY;
            tokio::select! {
                b = rx.recv() => match b {
                    Some(b) => Some(b),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => None,
            }
        } else {
            match rx.recv().await {
                Some(b) => Some(b),
                None => break,
            }
        };
        let mut batches: Vec<Batch> = first.into_iter().collect();
        while batches.len() < 1024 {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        let durable = batches.iter().any(|b| b.durable) || last_durable.elapsed() >= FLUSH_EVERY;
        let (ops, dones): (Vec<Vec<Op>>, Vec<_>) = batches.into_iter().map(|b| (b.ops, b.done)).unzip();
        let db2 = db.clone();
        let result = tokio::task::spawn_blocking(move || apply(&db2, &ops, durable))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match &result {
            Ok(()) if durable => {
                last_durable = Instant::now();
                dirty = false;
            }
            Ok(()) => dirty = true,
            Err(e) => tracing::error!(error = %e, "bus metadata commit failed"),
        }
        for done in dones.into_iter().flatten() {
            let _ = done.send(result.clone());
        }
    }
    if dirty {
        let _ = tokio::task::spawn_blocking(move || apply(&db, &[], true)).await;
    }
}

fn apply(db: &Database, batches: &[Vec<Op>], durable: bool) -> Result<(), String> {
    let mut w = db.begin_write().map_err(|e| e.to_string())?;
    w.set_durability(if durable { Durability::Immediate } else { Durability::None })
        .map_err(|e| e.to_string())?;
    {
        let mut cursors = w.open_table(CURSORS).map_err(|e| e.to_string())?;
        let mut pending = w.open_table(PENDING).map_err(|e| e.to_string())?;
        let mut dedup = w.open_table(DEDUP).map_err(|e| e.to_string())?;
        let mut dedup_time = w.open_table(DEDUP_TIME).map_err(|e| e.to_string())?;
        let mut dlq = w.open_table(DLQ).map_err(|e| e.to_string())?;
        let e = |e: redb::StorageError| e.to_string();
        for op in batches.iter().flatten() {
            match op {
                Op::Cursor { sub, partition, next } => {
                    cursors.insert((sub.as_str(), *partition), *next).map_err(e)?;
                }
                Op::PutPending { sub, partition, offset, entry } => {
                    let bytes = serde_json::to_vec(entry).map_err(|x| x.to_string())?;
                    pending.insert((sub.as_str(), *partition, *offset), bytes.as_slice()).map_err(e)?;
                }
                Op::DeletePending { sub, partition, offset } => {
                    pending.remove((sub.as_str(), *partition, *offset)).map_err(e)?;
                }
                Op::PutDedup { topic, key, entry } => {
                    let bytes = serde_json::to_vec(entry).map_err(|x| x.to_string())?;
                    dedup.insert((topic.as_str(), key.as_str()), bytes.as_slice()).map_err(e)?;
                    dedup_time.insert((entry.at_ms, topic.as_str(), key.as_str()), ()).map_err(e)?;
                }
                Op::PutDead { sub, entry } => {
                    let bytes = serde_json::to_vec(entry).map_err(|x| x.to_string())?;
                    dlq.insert((sub.as_str(), entry.id.as_str()), bytes.as_slice()).map_err(e)?;
                }
                Op::DeleteDead { sub, id } => {
                    dlq.remove((sub.as_str(), id.as_str())).map_err(e)?;
                }
                Op::ExpireDedup { before_ms } => {
                    let mut expired: Vec<(u64, String, String)> = Vec::new();
                    for item in dedup_time.range((0u64, "", "")..(*before_ms, "", "")).map_err(e)? {
                        let (k, _) = item.map_err(e)?;
                        let (at, t, key) = k.value();
                        expired.push((at, t.to_owned(), key.to_owned()));
                        if expired.len() >= 100_000 {
                            break;
                        }
                    }
                    for (at, t, key) in &expired {
                        dedup_time.remove((*at, t.as_str(), key.as_str())).map_err(e)?;
                        // A newer record of the same key keeps its entry.
                        let stale = dedup
                            .get((t.as_str(), key.as_str()))
                            .map_err(e)?
                            .and_then(|v| serde_json::from_slice::<DedupEntry>(v.value()).ok())
                            .is_some_and(|d| d.at_ms <= *at);
                        if stale {
                            dedup.remove((t.as_str(), key.as_str())).map_err(e)?;
                        }
                    }
                }
                Op::DropSubscription { sub } => {
                    let s = sub.as_str();
                    cursors.retain_in((s, 0u32)..=(s, u32::MAX), |_, _| false).map_err(e)?;
                    pending.retain_in((s, 0u32, 0u64)..=(s, u32::MAX, u64::MAX), |_, _| false).map_err(e)?;
                    let ids: Vec<String> = dlq
                        .range((s, "")..)
                        .map_err(e)?
                        .filter_map(Result::ok)
                        .take_while(|(k, _)| k.value().0 == s)
                        .map(|(k, _)| k.value().1.to_owned())
                        .collect();
                    for id in ids {
                        dlq.remove((s, id.as_str())).map_err(e)?;
                    }
                }
            }
        }
    }
    w.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(attempt: u32) -> PendingEntry {
        PendingEntry {
            attempt,
            due_ms: 5,
            published_ms: 1,
            key_hash: Some(9),
            source: Source::Topic,
            lease: None,
            history: vec![Attempt { at_ms: 1, status: Some(503), latency_ms: 3, error: None }],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let (meta, writer) = Meta::open(&path).unwrap();
            meta.submit(vec![
                Op::Cursor { sub: "s".into(), partition: 0, next: 10 },
                Op::Cursor { sub: "s".into(), partition: 1, next: 4 },
                Op::Cursor { sub: "other".into(), partition: 0, next: 99 },
                Op::PutPending { sub: "s".into(), partition: 0, offset: 7, entry: entry(2) },
                Op::PutPending { sub: "s".into(), partition: 0, offset: 8, entry: entry(0) },
            ])
            .unwrap();
            meta.commit(vec![Op::DeletePending { sub: "s".into(), partition: 0, offset: 8 }], false)
                .await
                .unwrap();
            let dead = DeadEntry {
                id: "msg_1".into(),
                topic: "t".into(),
                partition: 0,
                offset: 3,
                dead_letter_topic: "d".into(),
                dead_letter_partition: 0,
                dead_letter_offset: 0,
                dead_at_ms: 5,
                published_ms: 1,
                attempts: vec![],
            };
            meta.commit(vec![Op::PutDead { sub: "s".into(), entry: dead.clone() }], true).await.unwrap();
            assert_eq!(meta.dead_get("s", "msg_1").await.unwrap(), Some(dead));
            assert_eq!(meta.dead_list("s", None, 10).await.unwrap().len(), 1);
            assert!(meta.dead_list("s", Some("msg_1".into()), 10).await.unwrap().is_empty());
            meta.close().await;
            drop(meta);
            writer.await.unwrap();
        }
        let (meta, _w) = Meta::open(&path).unwrap();
        let st = meta.load_subscription("s").await.unwrap();
        assert_eq!(st.cursors, vec![(0, 10), (1, 4)]);
        assert_eq!(st.pending, vec![(0, 7, entry(2))]);
        assert_eq!(st.dead, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dedup_keys_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, _w) = Meta::open(&dir.path().join("m.redb")).unwrap();
        let put = |key: &str, at_ms| Op::PutDedup {
            topic: "t".into(),
            key: key.into(),
            entry: DedupEntry { id: format!("id-{key}"), partition: 0, offset: 1, at_ms },
        };
        meta.commit(vec![put("old", 100), put("new", 900)], true).await.unwrap();
        assert_eq!(meta.dedup_get("t", "old").await.unwrap().map(|d| d.id), Some("id-old".into()));
        meta.commit(vec![Op::ExpireDedup { before_ms: 500 }], false).await.unwrap();
        assert_eq!(meta.dedup_get("t", "old").await.unwrap(), None);
        assert!(meta.dedup_get("t", "new").await.unwrap().is_some());
        assert_eq!(meta.dedup_get("u", "new").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_a_subscription_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, _w) = Meta::open(&dir.path().join("m.redb")).unwrap();
        meta.commit(
            vec![
                Op::Cursor { sub: "a".into(), partition: 0, next: 3 },
                Op::PutPending { sub: "a".into(), partition: 0, offset: 1, entry: entry(1) },
                Op::Cursor { sub: "b".into(), partition: 0, next: 5 },
            ],
            false,
        )
        .await
        .unwrap();
        meta.commit(vec![Op::DropSubscription { sub: "a".into() }], true).await.unwrap();
        let a = meta.load_subscription("a").await.unwrap();
        assert!(a.cursors.is_empty() && a.pending.is_empty());
        assert_eq!(meta.load_subscription("b").await.unwrap().cursors, vec![(0, 5)]);
    }
}
