//! A subscription at run time: a consumer group reading one topic. Its task reads new
//! messages from the partition logs into [`SubState`] (persisting them as pending and moving
//! the cursor in one metadata batch), delivers them (push) or hands them to pullers (pull),
//! applies the outcome (ack, retry with backoff, dead letter), and expires pull leases.
//!
//! At-least-once: a message leaves the pending set only after a 2xx (push) or an ack
//! (pull), or after it was durably moved to the dead-letter topic. The cursor moves past a
//! message only in the same metadata batch that records it as pending, so a crash at any
//! point either replays the batch from the older cursor or finds the pending entries:
//! nothing is skipped, some messages may be delivered twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sumun_config::{DeliveryOrdering, StartPosition, Subscription};
use tokio::sync::{Notify, mpsc, watch};

use crate::envelope::{self, now_ms};
use crate::log::{LogError, Record, Stored};
use crate::meta::{Attempt, DeadEntry, Meta, Op, PendingEntry, Source};
use crate::push::{AttemptResult, PushTarget, SigningKey};
use crate::state::{Entry, EntryState, Pos, SubState};
use crate::topic::{TopicRuntime, key_hash};

/// Records read from a partition per refill step.
const READ_BATCH: usize = 256;
const READ_BYTES: usize = 4 * 1024 * 1024;
/// Freshly read records kept for their first delivery, per subscription.
const CACHE_BYTES: usize = 8 * 1024 * 1024;
/// Longest error text kept in an attempt's history.
const MAX_ERROR_CHARS: usize = 200;
/// Headers a dead-letter record adds to the original's.
pub const DEAD_SUBSCRIPTION: &str = "sumun-dead-subscription";
pub const DEAD_TOPIC: &str = "sumun-dead-topic";
pub const DEAD_PARTITION: &str = "sumun-dead-partition";
pub const DEAD_OFFSET: &str = "sumun-dead-offset";
pub const DEAD_ATTEMPTS: &str = "sumun-dead-attempts";
pub const DEAD_PUBLISHED_MS: &str = "sumun-dead-published-ms";

/// How a running attempt or dead-letter move ended, reported to the subscription task.
enum Done {
    Attempt {
        pos: Pos,
        id: String,
        result: AttemptResult,
        started_ms: u64,
    },
    /// The message's bytes are gone (retention deleted them, or they are unreadable).
    Gone {
        pos: Pos,
        reason: String,
    },
    Dead {
        pos: Pos,
        ok: bool,
    },
}

/// One ack id: `partition-offset-nonce`.
fn ack_id(pos: Pos, nonce: u64) -> String {
    format!("{}-{}-{:x}", pos.0, pos.1, nonce)
}

fn parse_ack_id(s: &str) -> Option<(Pos, u64)> {
    let mut it = s.splitn(3, '-');
    let p = it.next()?.parse().ok()?;
    let o = it.next()?.parse().ok()?;
    let n = u64::from_str_radix(it.next()?, 16).ok()?;
    Some(((p, o), n))
}

/// A message handed to a puller.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub ack_id: String,
    pub partition: u32,
    pub offset: u64,
    pub attempt: u32,
    pub record: Record,
}

impl Pulled {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ack_id": self.ack_id,
            "partition": self.partition,
            "offset": self.offset,
            "attempt": self.attempt,
            "event": envelope::to_json(&self.record),
        })
    }
}

/// What a pull client asked to happen to its leases.
#[derive(Debug, Clone, Copy)]
pub enum LeaseAction {
    Ack,
    /// Give back for another delivery after this delay (None: the retry backoff).
    Nack(Option<Duration>),
    /// Keep the lease this much longer (from now).
    Extend(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("this subscription is delivered by push, not pull")]
    NotPull,
    #[error("the subscription's metadata store is unavailable")]
    Unavailable,
}

/// Deliveries per second over the last seconds.
#[derive(Default)]
struct Rate {
    /// (unix second, count) for the last 10 seconds.
    slots: Mutex<[(u64, u64); 10]>,
}

impl Rate {
    fn add(&self, n: u64) {
        let sec = now_ms() / 1000;
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut s[(sec % 10) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += n;
    }

    /// Average over the last 5 complete seconds.
    fn per_second(&self) -> f64 {
        let sec = now_ms() / 1000;
        let s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let total: u64 = s.iter().filter(|(t, _)| *t < sec && sec - *t <= 5).map(|(_, c)| c).sum();
        total as f64 / 5.0
    }
}

struct Stats {
    delivered: AtomicU64,
    failures: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicU64,
    dead: AtomicU64,
    rate: Rate,
    m_ok: metrics::Counter,
    m_failed: metrics::Counter,
    m_dead: metrics::Counter,
    m_dropped: metrics::Counter,
    m_latency: metrics::Histogram,
    m_lag: metrics::Gauge,
    m_in_flight: metrics::Gauge,
}

/// Bounded cache of records read but not yet delivered.
#[derive(Default)]
struct RecordCache {
    map: HashMap<Pos, Record>,
    bytes: usize,
}

fn record_size(r: &Record) -> usize {
    r.value.len() + r.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() + 64
}

impl RecordCache {
    fn put(&mut self, pos: Pos, r: Record) {
        let size = record_size(&r);
        if self.bytes + size <= CACHE_BYTES {
            self.bytes += size;
            self.map.insert(pos, r);
        }
    }

    fn take(&mut self, pos: Pos) -> Option<Record> {
        let r = self.map.remove(&pos)?;
        self.bytes = self.bytes.saturating_sub(record_size(&r));
        Some(r)
    }
}

/// A running subscription.
pub struct SubscriptionRuntime {
    pub cfg: Subscription,
    pub topic: Arc<TopicRuntime>,
    dead_letter: Option<Arc<TopicRuntime>>,
    meta: Meta,
    state: Mutex<SubState>,
    cursors: Mutex<Vec<u64>>,
    cache: Mutex<RecordCache>,
    target: Option<PushTarget>,
    signing: Option<SigningKey>,
    /// Wakes the task: new records, redrives, nacks.
    wake: Notify,
    /// Wakes long-polling pullers.
    pullers: Notify,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: Mutex<Option<mpsc::UnboundedReceiver<Done>>>,
    stats: Stats,
}

impl SubscriptionRuntime {
    /// Loads the subscription's state from the metadata store. `target` is None for pull.
    pub async fn load(
        cfg: Subscription,
        topic: Arc<TopicRuntime>,
        dead_letter: Option<Arc<TopicRuntime>>,
        meta: Meta,
        target: Option<PushTarget>,
    ) -> Result<Arc<SubscriptionRuntime>, SubscriptionError> {
        let saved = meta.load_subscription(&cfg.name).await.map_err(|e| {
            tracing::error!(subscription = %cfg.name, error = %e, "loading the subscription state failed");
            SubscriptionError::Unavailable
        })?;
        let mut cursors = Vec::with_capacity(topic.partitions.len());
        let mut new_cursors = Vec::new();
        for (p, log) in topic.partitions.iter().enumerate() {
            let p32 = u32::try_from(p).unwrap_or(u32::MAX);
            let c = match saved.cursors.iter().find(|(sp, _)| *sp == p32) {
                // After a machine crash under `interval`/`none` durability the log can be
                // shorter than what was read from it: offsets past its end will be reused.
                Some((_, c)) => (*c).min(log.end_offset()),
                None => {
                    let c = match cfg.start {
                        StartPosition::Earliest => log.start_offset(),
                        StartPosition::Latest => log.end_offset(),
                    };
                    new_cursors.push(Op::Cursor { sub: cfg.name.clone(), partition: p32, next: c });
                    c
                }
            };
            cursors.push(c);
        }
        meta.send(new_cursors).await.map_err(|_| SubscriptionError::Unavailable)?;
        let mut state = SubState::new(cfg.ordering == DeliveryOrdering::PerKey);
        let now = now_ms();
        for (p, o, mut pe) in saved.pending {
            if topic.partition(p).is_none_or(|log| o >= log.end_offset()) {
                continue;
            }
            // A push attempt interrupted by the restart is retried at once; a pull lease keeps
            // its ack id until it would have expired.
            let state_of = if pe.lease.is_some() && target.is_none() {
                EntryState::Leased
            } else {
                pe.lease = None;
                pe.due_ms = pe.due_ms.min(now);
                EntryState::Waiting
            };
            state.insert((p, o), Entry { meta: pe, state: state_of });
        }
        let name = cfg.name.clone();
        let signing = cfg.signing_secret.as_ref().and_then(|s| SigningKey::from_secret(&s.0));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let labels = [("subscription", name.clone())];
        Ok(Arc::new(SubscriptionRuntime {
            topic,
            dead_letter,
            meta,
            state: Mutex::new(state),
            cursors: Mutex::new(cursors),
            cache: Mutex::new(RecordCache::default()),
            target,
            signing,
            wake: Notify::new(),
            pullers: Notify::new(),
            done_tx,
            done_rx: Mutex::new(Some(done_rx)),
            stats: Stats {
                delivered: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                dead_lettered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                dead: AtomicU64::new(saved.dead as u64),
                rate: Rate::default(),
                m_ok: metrics::counter!("sumun_bus_deliveries_total", "subscription" => name.clone(), "result" => "success"),
                m_failed: metrics::counter!("sumun_bus_deliveries_total", "subscription" => name.clone(), "result" => "failure"),
                m_dead: metrics::counter!("sumun_bus_dead_lettered_total", &labels),
                m_dropped: metrics::counter!("sumun_bus_dropped_total", &labels),
                m_latency: metrics::histogram!("sumun_bus_delivery_duration_seconds", &labels),
                m_lag: metrics::gauge!("sumun_bus_lag_messages", &labels),
                m_in_flight: metrics::gauge!("sumun_bus_in_flight", &labels),
            },
            cfg,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_pull(&self) -> bool {
        self.target.is_none()
    }

    /// Wakes the task (new records, redrives).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// The task: runs until `stop` turns true, then lets running attempts finish for up to
    /// `grace` so their outcomes are recorded.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, grace: Duration) {
        let Some(mut done_rx) = self.done_rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // New records in any partition wake the task.
        let mut watchers = Vec::new();
        for log in &self.topic.partitions {
            let mut rx = log.watch();
            let me = Arc::downgrade(&self);
            watchers.push(tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    match me.upgrade() {
                        Some(s) => s.wake.notify_one(),
                        None => return,
                    }
                }
            }));
        }
        let mut gauge_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if *stop.borrow() {
                break;
            }
            self.refill().await;
            self.expire_leases().await;
            self.dispatch();
            let next = {
                let s = self.state();
                let due = if self.is_pull() || s.in_flight < self.cfg.concurrency as usize {
                    s.next_due()
                } else {
                    None
                };
                [due, s.next_lease_expiry()].into_iter().flatten().min()
            };
            let sleep = match next {
                Some(at) => Duration::from_millis(at.saturating_sub(now_ms())).min(Duration::from_secs(60)),
                None => Duration::from_secs(60),
            };
            tokio::select! {
                Some(done) = done_rx.recv() => {
                    let mut ops = Vec::new();
                    self.on_done(done, &mut ops);
                    // Everything else that finished meanwhile, in the same metadata batch.
                    while let Ok(more) = done_rx.try_recv() {
                        self.on_done(more, &mut ops);
                    }
                    self.persist(ops).await;
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = gauge_tick.tick() => self.update_gauges(),
                _ = stop.changed() => {}
            }
        }
        // Let attempts in flight finish so their outcome is recorded (else they are
        // delivered again after the restart, which at-least-once allows).
        let deadline = tokio::time::Instant::now() + grace;
        while self.state().in_flight > 0 {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(done)) => {
                    let mut ops = Vec::new();
                    self.on_done(done, &mut ops);
                    self.persist(ops).await;
                }
                _ => break,
            }
        }
        for w in watchers {
            w.abort();
        }
    }

    async fn persist(&self, ops: Vec<Op>) {
        if let Err(e) = self.meta.send(ops).await {
            // The state in memory is right; only a crash before the next successful batch
            // would replay these changes (deliver again), never lose a message.
            tracing::warn!(subscription = %self.cfg.name, error = %e, "persisting subscription state failed");
        }
    }

    /// Reads new records while there is room for them.
    async fn refill(&self) {
        let max = self.cfg.max_pending as usize;
        for (p, log) in self.topic.partitions.iter().enumerate() {
            let p32 = u32::try_from(p).unwrap_or(u32::MAX);
            loop {
                let room = max.saturating_sub(self.state().held());
                if room == 0 {
                    return;
                }
                let cursor =
                    self.cursors.lock().unwrap_or_else(|e| e.into_inner()).get(p).copied().unwrap_or(0);
                if cursor >= log.end_offset() {
                    break;
                }
                let start = log.start_offset();
                let records = match log.read(cursor.max(start), room.min(READ_BATCH), READ_BYTES).await {
                    Ok(r) => r,
                    Err(e) => {
                        self.read_failed(p32, cursor, &e).await;
                        break;
                    }
                };
                let Some(last) = records.last().map(|r| r.offset) else { break };
                let first = records.first().map_or(cursor, |r| r.offset);
                if first > cursor {
                    let skipped = first - cursor;
                    self.stats.dropped.fetch_add(skipped, AtomicOrdering::Relaxed);
                    self.stats.m_dropped.increment(skipped);
                    tracing::warn!(subscription = %self.cfg.name, partition = p32, from = cursor, to = first, "messages were deleted by retention before this subscription read them");
                }
                self.accept(p32, records, last + 1).await;
            }
        }
    }

    async fn read_failed(&self, p: u32, cursor: u64, e: &LogError) {
        if let LogError::Corrupt { offset, skip_to, .. } = e {
            tracing::error!(subscription = %self.cfg.name, partition = p, offset, skip_to, error = %e, "corrupt records skipped");
            let skip = (*skip_to).max(cursor + 1);
            self.stats.dropped.fetch_add(skip - cursor, AtomicOrdering::Relaxed);
            self.set_cursor(p, skip).await;
        } else {
            tracing::warn!(subscription = %self.cfg.name, partition = p, error = %e, "reading the topic failed");
        }
    }

    async fn set_cursor(&self, p: u32, next: u64) {
        if let Some(c) = self.cursors.lock().unwrap_or_else(|e| e.into_inner()).get_mut(p as usize) {
            *c = next;
        }
        self.persist(vec![Op::Cursor { sub: self.cfg.name.clone(), partition: p, next }]).await;
    }

    /// Records read from partition `p` become pending; the cursor moves to `next`.
    async fn accept(&self, p: u32, records: Vec<Stored>, next: u64) {
        let now = now_ms();
        let mut ops = Vec::with_capacity(records.len() + 1);
        {
            let mut state = self.state();
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for s in records {
                let meta = PendingEntry {
                    attempt: 0,
                    due_ms: now,
                    published_ms: s.record.timestamp_ms,
                    key_hash: s.record.key.as_deref().map(key_hash),
                    source: Source::Topic,
                    lease: None,
                    history: Vec::new(),
                };
                // A position already held (a redriven message) keeps its own state.
                if state.insert((p, s.offset), Entry { meta: meta.clone(), state: EntryState::Waiting }) {
                    ops.push(Op::PutPending {
                        sub: self.cfg.name.clone(),
                        partition: p,
                        offset: s.offset,
                        entry: meta,
                    });
                    cache.put((p, s.offset), s.record);
                }
            }
        }
        ops.push(Op::Cursor { sub: self.cfg.name.clone(), partition: p, next });
        if let Some(c) = self.cursors.lock().unwrap_or_else(|e| e.into_inner()).get_mut(p as usize) {
            *c = next;
        }
        self.persist(ops).await;
        self.pullers.notify_waiters();
    }

    /// Push: starts attempts for due entries while `concurrency` allows.
    fn dispatch(self: &Arc<Self>) {
        let Some(_) = &self.target else { return };
        let now = now_ms();
        let started: Vec<(Pos, Source, u32)> = {
            let mut s = self.state();
            let room = (self.cfg.concurrency as usize).saturating_sub(s.in_flight);
            let due = s.take_due(now, room);
            due.into_iter()
                .filter_map(|pos| s.start_flight(pos).map(|e| (pos, e.meta.source.clone(), e.meta.attempt)))
                .collect()
        };
        for (pos, source, attempt) in started {
            let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner()).take(pos);
            let me = self.clone();
            tokio::spawn(async move {
                let done = me.attempt(pos, source, attempt, cached).await;
                let _ = me.done_tx.send(done);
            });
        }
    }

    /// Reads a pending message's record: the topic's, or the original inside a dead letter.
    async fn read_record(&self, pos: Pos, source: &Source) -> Result<Record, String> {
        let (log, offset) = match source {
            Source::Topic => (self.topic.partition(pos.0), pos.1),
            Source::DeadLetter { topic, partition, offset } => {
                let dl = self.dead_letter.as_ref().filter(|d| &*d.name == topic);
                (dl.and_then(|d| d.partition(*partition)), *offset)
            }
        };
        let log = log.ok_or_else(|| "its partition no longer exists".to_owned())?;
        let mut got = log.read(offset, 1, 1).await.map_err(|e| e.to_string())?;
        match got.pop() {
            Some(s) if s.offset == offset => Ok(match source {
                Source::Topic => s.record,
                Source::DeadLetter { .. } => strip_dead_headers(s.record),
            }),
            _ => Err("deleted by retention".to_owned()),
        }
    }

    async fn attempt(&self, pos: Pos, source: Source, attempt: u32, cached: Option<Record>) -> Done {
        let record = match cached {
            Some(r) => r,
            None => match self.read_record(pos, &source).await {
                Ok(r) => r,
                Err(reason) => return Done::Gone { pos, reason },
            },
        };
        let id = envelope::id_of(&record);
        let started_ms = now_ms();
        let Some(target) = &self.target else {
            return Done::Gone { pos, reason: "not a push subscription".into() };
        };
        let result = target.deliver(&id, &record, self.signing.as_ref(), self.cfg.timeout).await;
        tracing::info!(
            subscription = %self.cfg.name,
            topic = %self.topic.name,
            id = %id,
            partition = pos.0,
            offset = pos.1,
            attempt,
            status = result.status,
            latency_ms = result.latency.as_millis() as u64,
            outcome = if result.ok() { "delivered" } else { "failed" },
            error = result.error.as_deref(),
            "delivery attempt"
        );
        Done::Attempt { pos, id, result, started_ms }
    }

    fn on_done(self: &Arc<Self>, done: Done, ops: &mut Vec<Op>) {
        match done {
            Done::Attempt { pos, id, result, started_ms } => {
                self.stats.m_latency.record(result.latency.as_secs_f64());
                if result.ok() {
                    self.state().remove(pos);
                    self.delivered(1);
                    ops.push(self.delete_op(pos));
                    return;
                }
                let attempt = Attempt {
                    at_ms: started_ms,
                    status: result.status,
                    latency_ms: result.latency.as_millis() as u64,
                    error: result.error.map(|e| truncate(&e)),
                };
                self.failed(pos, &id, attempt, result.retry_after, ops);
            }
            Done::Gone { pos, reason } => {
                self.state().remove(pos);
                self.stats.dropped.fetch_add(1, AtomicOrdering::Relaxed);
                self.stats.m_dropped.increment(1);
                tracing::warn!(subscription = %self.cfg.name, partition = pos.0, offset = pos.1, reason, "a pending message could not be read and is dropped");
                ops.push(self.delete_op(pos));
            }
            Done::Dead { pos, ok } => {
                if ok {
                    self.state().remove(pos);
                } else {
                    // The dead-letter topic refused it (disk full…): try again later.
                    let due = now_ms() + duration_ms(self.cfg.retry.max);
                    if let Some(e) = self.state().reschedule(pos, due) {
                        ops.push(self.put_op(pos, &e.meta));
                    }
                }
            }
        }
    }

    fn delivered(&self, n: u64) {
        self.stats.delivered.fetch_add(n, AtomicOrdering::Relaxed);
        self.stats.rate.add(n);
        self.stats.m_ok.increment(n);
    }

    fn delete_op(&self, pos: Pos) -> Op {
        Op::DeletePending { sub: self.cfg.name.clone(), partition: pos.0, offset: pos.1 }
    }

    fn put_op(&self, pos: Pos, entry: &PendingEntry) -> Op {
        Op::PutPending { sub: self.cfg.name.clone(), partition: pos.0, offset: pos.1, entry: entry.clone() }
    }

    /// A failed attempt: retry with backoff, or dead-letter when attempts are exhausted.
    fn failed(
        self: &Arc<Self>,
        pos: Pos,
        id: &str,
        attempt: Attempt,
        retry_after: Option<Duration>,
        ops: &mut Vec<Op>,
    ) {
        self.stats.failures.fetch_add(1, AtomicOrdering::Relaxed);
        self.stats.m_failed.increment(1);
        let mut state = self.state();
        let Some(entry) = state.entries.get_mut(&pos) else { return };
        entry.meta.history.push(attempt);
        if entry.meta.history.len() > self.cfg.retry.max_attempts as usize {
            entry.meta.history.remove(0);
        }
        let n = entry.meta.attempt;
        if n >= self.cfg.retry.max_attempts {
            let Some(e) = state.dying(pos).cloned() else { return };
            drop(state);
            self.spawn_dead_letter(pos, id.to_owned(), e.meta);
            return;
        }
        let wait = backoff(&self.cfg, n, retry_after);
        if let Some(e) = state.reschedule(pos, now_ms() + duration_ms(wait)) {
            ops.push(self.put_op(pos, &e.meta));
        }
        drop(state);
        tracing::debug!(subscription = %self.cfg.name, id, attempt = n, wait_ms = wait.as_millis() as u64, "retry scheduled");
    }

    /// Moves an exhausted message to the dead-letter topic (durably), or drops it when the
    /// subscription has none.
    fn spawn_dead_letter(self: &Arc<Self>, pos: Pos, id: String, entry: PendingEntry) {
        let me = self.clone();
        tokio::spawn(async move {
            let ok = me.dead_letter(pos, &id, &entry).await;
            let _ = me.done_tx.send(Done::Dead { pos, ok });
            me.wake.notify_one();
        });
    }

    async fn dead_letter(&self, pos: Pos, id: &str, entry: &PendingEntry) -> bool {
        let Some(dlq) = &self.dead_letter else {
            tracing::error!(subscription = %self.cfg.name, id, partition = pos.0, offset = pos.1, attempts = entry.attempt, "attempts exhausted and no dead_letter topic: message dropped");
            self.stats.dropped.fetch_add(1, AtomicOrdering::Relaxed);
            self.stats.m_dropped.increment(1);
            let _ = self.meta.commit(vec![self.delete_op(pos)], true).await;
            return true;
        };
        let original = match self.read_record(pos, &entry.source).await {
            Ok(r) => r,
            Err(reason) => {
                tracing::warn!(subscription = %self.cfg.name, id, reason, "an exhausted message could not be read; dropped");
                let _ = self.meta.commit(vec![self.delete_op(pos)], true).await;
                return true;
            }
        };
        let history = serde_json::to_string(&entry.history).unwrap_or_else(|_| "[]".into());
        let mut record = original;
        record.headers.extend([
            (DEAD_SUBSCRIPTION.to_owned(), Bytes::from(self.cfg.name.clone())),
            (DEAD_TOPIC.to_owned(), Bytes::from(self.topic.name.to_string())),
            (DEAD_PARTITION.to_owned(), Bytes::from(pos.0.to_string())),
            (DEAD_OFFSET.to_owned(), Bytes::from(pos.1.to_string())),
            (DEAD_PUBLISHED_MS.to_owned(), Bytes::from(entry.published_ms.to_string())),
            (DEAD_ATTEMPTS.to_owned(), Bytes::from(history)),
        ]);
        let key = record.key.clone();
        record.timestamp_ms = now_ms();
        let dp = dlq.choose_partition(key.as_deref());
        let Some(log) = dlq.partition(dp) else { return false };
        let offset = match log.append(vec![record]).await {
            Ok(o) => o.first().copied().unwrap_or(0),
            Err(e) => {
                tracing::error!(subscription = %self.cfg.name, id, error = %e, "writing to the dead-letter topic failed; retrying later");
                return false;
            }
        };
        let dead = DeadEntry {
            id: id.to_owned(),
            topic: self.topic.name.to_string(),
            partition: pos.0,
            offset: pos.1,
            dead_letter_topic: dlq.name.to_string(),
            dead_letter_partition: dp,
            dead_letter_offset: offset,
            dead_at_ms: now_ms(),
            published_ms: entry.published_ms,
            attempts: entry.history.clone(),
        };
        let ops = vec![self.delete_op(pos), Op::PutDead { sub: self.cfg.name.clone(), entry: dead }];
        if let Err(e) = self.meta.commit(ops, true).await {
            tracing::error!(subscription = %self.cfg.name, id, error = %e, "recording a dead letter failed; it will be delivered again");
            return false;
        }
        self.stats.dead.fetch_add(1, AtomicOrdering::Relaxed);
        self.stats.dead_lettered.fetch_add(1, AtomicOrdering::Relaxed);
        self.stats.m_dead.increment(1);
        tracing::warn!(subscription = %self.cfg.name, id, attempts = entry.attempt, dead_letter = %dlq.name, "attempts exhausted: moved to the dead-letter topic");
        true
    }

    /// Pull: expired leases count as failed attempts.
    async fn expire_leases(self: &Arc<Self>) {
        if !self.is_pull() {
            return;
        }
        let now = now_ms();
        let expired = self.state().expired_leases(now);
        if expired.is_empty() {
            return;
        }
        let mut ops = Vec::new();
        for pos in expired {
            let at_ms = self.state().entries.get(&pos).map_or(now, |e| e.meta.due_ms);
            let attempt = Attempt {
                at_ms,
                status: None,
                latency_ms: 0,
                error: Some("visibility timeout expired".into()),
            };
            // Redelivered at once: the consumer already had its visibility timeout.
            self.failed_pull(pos, attempt, Some(Duration::ZERO), &mut ops);
        }
        self.persist(ops).await;
        self.pullers.notify_waiters();
    }

    fn failed_pull(self: &Arc<Self>, pos: Pos, attempt: Attempt, delay: Option<Duration>, ops: &mut Vec<Op>) {
        self.stats.failures.fetch_add(1, AtomicOrdering::Relaxed);
        self.stats.m_failed.increment(1);
        let mut state = self.state();
        let Some(entry) = state.entries.get_mut(&pos) else { return };
        // Pull attempts are logged like push ones: one line per attempt that did not end in an ack.
        tracing::info!(
            subscription = %self.cfg.name,
            topic = %self.topic.name,
            partition = pos.0,
            offset = pos.1,
            attempt = entry.meta.attempt,
            latency_ms = attempt.latency_ms,
            outcome = "failed",
            error = attempt.error.as_deref(),
            "delivery attempt"
        );
        entry.meta.history.push(attempt);
        if entry.meta.history.len() > self.cfg.retry.max_attempts as usize {
            entry.meta.history.remove(0);
        }
        let n = entry.meta.attempt;
        if n >= self.cfg.retry.max_attempts {
            let Some(e) = state.dying(pos).cloned() else { return };
            drop(state);
            let me = self.clone();
            tokio::spawn(async move {
                let record = me.read_record(pos, &e.meta.source).await;
                let id = record.as_ref().map(envelope::id_of).unwrap_or_default();
                let ok = me.dead_letter(pos, &id, &e.meta).await;
                let _ = me.done_tx.send(Done::Dead { pos, ok });
                me.wake.notify_one();
            });
            return;
        }
        let wait = delay.unwrap_or_else(|| backoff(&self.cfg, n, None));
        if let Some(e) = state.reschedule(pos, now_ms() + duration_ms(wait)) {
            ops.push(self.put_op(pos, &e.meta));
        }
    }

    /// Long-polls up to `max` messages, waiting up to `wait` for the first.
    pub async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<Pulled>, SubscriptionError> {
        if !self.is_pull() {
            return Err(SubscriptionError::NotPull);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.pullers.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = self.lease_due(max);
            if !taken.is_empty() {
                let mut ops = Vec::with_capacity(taken.len());
                for (pos, entry) in &taken {
                    ops.push(self.put_op(*pos, entry));
                }
                self.meta.send(ops).await.map_err(|_| SubscriptionError::Unavailable)?;
                let mut out = Vec::with_capacity(taken.len());
                let mut gone = Vec::new();
                for (pos, entry) in taken {
                    let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner()).take(pos);
                    let record = match cached {
                        Some(r) => r,
                        None => match self.read_record(pos, &entry.source).await {
                            Ok(r) => r,
                            Err(reason) => {
                                gone.push(Done::Gone { pos, reason });
                                continue;
                            }
                        },
                    };
                    out.push(Pulled {
                        ack_id: ack_id(pos, entry.lease.unwrap_or(0)),
                        partition: pos.0,
                        offset: pos.1,
                        attempt: entry.attempt,
                        record,
                    });
                }
                for g in gone {
                    let _ = self.done_tx.send(g);
                }
                if !out.is_empty() {
                    self.wake.notify_one();
                    return Ok(out);
                }
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let next_due = self.state().next_due();
            let until = match next_due {
                Some(due) => deadline.min(now + Duration::from_millis(due.saturating_sub(now_ms()))),
                None => deadline,
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    fn lease_due(&self, max: usize) -> Vec<(Pos, PendingEntry)> {
        let now = now_ms();
        let until = now + duration_ms(self.cfg.visibility_timeout);
        let mut s = self.state();
        let due = s.take_due(now, max);
        due.into_iter()
            .filter_map(|pos| {
                let nonce = fastrand::u64(1..);
                s.lease(pos, until, nonce).map(|e| (pos, e.meta.clone()))
            })
            .collect()
    }

    /// Acks, nacks or extends leases by ack id; returns, per id, whether it held the lease.
    pub async fn settle(
        self: &Arc<Self>,
        ids: &[String],
        action: LeaseAction,
    ) -> Result<Vec<bool>, SubscriptionError> {
        if !self.is_pull() {
            return Err(SubscriptionError::NotPull);
        }
        let now = now_ms();
        let mut ops = Vec::new();
        let mut results = Vec::with_capacity(ids.len());
        let mut acked = 0;
        for id in ids {
            let Some((pos, nonce)) = parse_ack_id(id) else {
                results.push(false);
                continue;
            };
            let held = self
                .state()
                .entries
                .get(&pos)
                .is_some_and(|e| e.state == EntryState::Leased && e.meta.lease == Some(nonce));
            if !held {
                results.push(false);
                continue;
            }
            match action {
                LeaseAction::Ack => {
                    if let Some(e) = self.state().entries.get(&pos) {
                        tracing::info!(subscription = %self.cfg.name, topic = %self.topic.name, partition = pos.0, offset = pos.1, attempt = e.meta.attempt, outcome = "delivered", "delivery attempt");
                    }
                    self.state().remove(pos);
                    ops.push(self.delete_op(pos));
                    acked += 1;
                }
                LeaseAction::Nack(delay) => {
                    let at_ms = self.state().entries.get(&pos).map_or(now, |e| {
                        e.meta.due_ms.saturating_sub(duration_ms(self.cfg.visibility_timeout))
                    });
                    let attempt = Attempt {
                        at_ms,
                        status: None,
                        latency_ms: now.saturating_sub(at_ms),
                        error: Some("nacked by the consumer".into()),
                    };
                    self.failed_pull(pos, attempt, delay, &mut ops);
                }
                LeaseAction::Extend(by) => {
                    let until = now + duration_ms(by.min(Duration::from_secs(12 * 3600)));
                    if let Some(e) = self.state().lease(pos, until, nonce) {
                        ops.push(Op::PutPending {
                            sub: self.cfg.name.clone(),
                            partition: pos.0,
                            offset: pos.1,
                            entry: e.meta.clone(),
                        });
                    }
                }
            }
            results.push(true);
        }
        if acked > 0 {
            self.delivered(acked);
        }
        self.meta.send(ops).await.map_err(|_| SubscriptionError::Unavailable)?;
        self.wake.notify_one();
        self.pullers.notify_waiters();
        Ok(results)
    }

    /// Dead letters back to this subscription: each becomes pending again (attempts from
    /// zero, same message id), read from its dead-letter record. Returns how many.
    pub async fn redrive(&self, dead: Vec<DeadEntry>) -> Result<usize, SubscriptionError> {
        let now = now_ms();
        let mut ops = Vec::new();
        let mut entries = Vec::new();
        for d in dead {
            let pos = (d.partition, d.offset);
            if pos.0 as usize >= self.topic.partitions.len() {
                continue;
            }
            let key_hash = match self.read_dead_key(&d).await {
                Ok(k) => k,
                Err(reason) => {
                    tracing::warn!(subscription = %self.cfg.name, id = %d.id, reason, "a dead letter could not be read; left in the DLQ");
                    continue;
                }
            };
            let entry = PendingEntry {
                attempt: 0,
                due_ms: now,
                published_ms: d.published_ms,
                key_hash,
                source: Source::DeadLetter {
                    topic: d.dead_letter_topic.clone(),
                    partition: d.dead_letter_partition,
                    offset: d.dead_letter_offset,
                },
                lease: None,
                history: Vec::new(),
            };
            ops.push(self.put_op(pos, &entry));
            ops.push(Op::DeleteDead { sub: self.cfg.name.clone(), id: d.id.clone() });
            entries.push((pos, entry));
        }
        if entries.is_empty() {
            return Ok(0);
        }
        self.meta.commit(ops, true).await.map_err(|_| SubscriptionError::Unavailable)?;
        let n = entries.len();
        {
            let mut s = self.state();
            for (pos, entry) in entries {
                s.insert(pos, Entry { meta: entry, state: EntryState::Waiting });
            }
        }
        self.stats.dead.fetch_sub(
            (n as u64).min(self.stats.dead.load(AtomicOrdering::Relaxed)),
            AtomicOrdering::Relaxed,
        );
        tracing::info!(subscription = %self.cfg.name, messages = n, "redriven from the dead-letter queue");
        self.wake.notify_one();
        self.pullers.notify_waiters();
        Ok(n)
    }

    async fn read_dead_key(&self, d: &DeadEntry) -> Result<Option<u64>, String> {
        let source = Source::DeadLetter {
            topic: d.dead_letter_topic.clone(),
            partition: d.dead_letter_partition,
            offset: d.dead_letter_offset,
        };
        let r = self.read_record((d.partition, d.offset), &source).await?;
        Ok(r.key.as_deref().map(key_hash))
    }

    /// The original message of a dead letter, for `dlq show`.
    pub async fn dead_message(&self, d: &DeadEntry) -> Result<Record, String> {
        let source = Source::DeadLetter {
            topic: d.dead_letter_topic.clone(),
            partition: d.dead_letter_partition,
            offset: d.dead_letter_offset,
        };
        self.read_record((d.partition, d.offset), &source).await
    }

    /// Where a message of this subscription's topic stands: pending (with its state and
    /// history), dead, or done.
    pub fn message_status(&self, pos: Pos) -> serde_json::Value {
        let s = self.state();
        if let Some(e) = s.entries.get(&pos) {
            return serde_json::json!({
                "subscription": self.cfg.name,
                "status": match e.state {
                    EntryState::Waiting if e.meta.attempt == 0 => "queued",
                    EntryState::Waiting => "retry_scheduled",
                    EntryState::InFlight => "in_flight",
                    EntryState::Leased => "leased",
                    EntryState::Dying => "dead_lettering",
                },
                "attempts": e.meta.attempt,
                "history": e.meta.history,
            });
        }
        let cursor =
            self.cursors.lock().unwrap_or_else(|e| e.into_inner()).get(pos.0 as usize).copied().unwrap_or(0);
        let status = if pos.1 >= cursor { "not_yet_read" } else { "done" };
        serde_json::json!({ "subscription": self.cfg.name, "status": status })
    }

    fn update_gauges(&self) {
        let (pending, in_flight) = {
            let s = self.state();
            (s.held() as u64, (s.in_flight + s.leased()) as u64)
        };
        let unread = self.unread();
        self.stats.m_lag.set((unread + pending) as f64);
        self.stats.m_in_flight.set(in_flight as f64);
    }

    fn unread(&self) -> u64 {
        let cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.topic.partitions.iter().zip(cursors).map(|(l, c)| l.end_offset().saturating_sub(c)).sum()
    }

    /// `GET /v1/subscriptions/NAME`.
    pub async fn snapshot(&self) -> serde_json::Value {
        let (pending, in_flight, leased, retries, oldest) = {
            let s = self.state();
            (s.held() as u64, s.in_flight, s.leased(), s.retries_scheduled(), s.oldest_published_ms())
        };
        let cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let unread = self.unread();
        // The oldest message not finished: a pending one, else the first unread one.
        let mut oldest_ms = oldest;
        if oldest_ms.is_none() {
            for (log, &c) in self.topic.partitions.iter().zip(&cursors) {
                if c < log.end_offset()
                    && let Ok(r) = log.read(c, 1, 1).await
                    && let Some(s) = r.first()
                {
                    oldest_ms =
                        Some(oldest_ms.map_or(s.record.timestamp_ms, |o: u64| o.min(s.record.timestamp_ms)));
                }
            }
        }
        let lag_seconds = oldest_ms.map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0);
        let deliver = match &self.cfg.deliver {
            sumun_config::Deliver::Upstream { name, path, .. } => {
                serde_json::json!({ "upstream": name, "path": path })
            }
            sumun_config::Deliver::Url(u) => serde_json::json!({ "url": u }),
            sumun_config::Deliver::Pull => serde_json::json!({ "pull": true }),
        };
        serde_json::json!({
            "name": self.cfg.name,
            "topic": &*self.topic.name,
            "deliver": deliver,
            "ordering": match self.cfg.ordering { DeliveryOrdering::PerKey => "per_key", DeliveryOrdering::None => "none" },
            "concurrency": self.cfg.concurrency,
            "dead_letter": self.cfg.dead_letter,
            "lag": { "messages": unread + pending, "seconds": lag_seconds, "unread": unread },
            "pending": pending,
            "in_flight": in_flight + leased,
            "retries_scheduled": retries,
            "delivered": self.stats.delivered.load(AtomicOrdering::Relaxed),
            "delivered_per_second": self.stats.rate.per_second(),
            "failures": self.stats.failures.load(AtomicOrdering::Relaxed),
            "dead_lettered": self.stats.dead_lettered.load(AtomicOrdering::Relaxed),
            "dropped": self.stats.dropped.load(AtomicOrdering::Relaxed),
            "dlq_size": self.stats.dead.load(AtomicOrdering::Relaxed),
            "cursors": cursors,
        })
    }
}

/// Full-jitter exponential backoff before attempt `attempt + 1`, never shorter than the
/// receiver's `Retry-After` (capped at a day).
pub fn backoff(cfg: &Subscription, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let b = sumun_upstream::retry::Backoff::new(cfg.retry.initial, cfg.retry.max)
        .with_max_retry_after(Duration::from_secs(86_400));
    let floor = retry_after.map(|r| r.min(Duration::from_secs(86_400)));
    b.delay(attempt, floor).unwrap_or(cfg.retry.max)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_ERROR_CHARS {
        return s.to_owned();
    }
    s.chars().take(MAX_ERROR_CHARS).collect::<String>() + "…"
}

/// A dead-letter record without the headers the dead-lettering added: the original.
pub fn strip_dead_headers(mut r: Record) -> Record {
    r.headers.retain(|(n, _)| !n.starts_with("sumun-dead-"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ids_round_trip() {
        let id = ack_id((3, 99), 0xdead_beef);
        assert_eq!(parse_ack_id(&id), Some(((3, 99), 0xdead_beef)));
        assert_eq!(parse_ack_id("x"), None);
        assert_eq!(parse_ack_id("1-2"), None);
        assert_eq!(parse_ack_id("1-2-zz"), None);
    }

    #[test]
    fn backoff_is_jittered_under_the_ceiling_and_honours_retry_after() {
        let cfg = Subscription {
            name: "s".into(),
            topic: "t".into(),
            deliver: sumun_config::Deliver::Pull,
            concurrency: 1,
            ordering: DeliveryOrdering::PerKey,
            dead_letter: None,
            retry: sumun_config::DeliveryRetry {
                max_attempts: 5,
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            signing_secret: None,
            timeout: Duration::from_secs(1),
            visibility_timeout: Duration::from_secs(1),
            start: StartPosition::Earliest,
            max_pending: 10,
        };
        for _ in 0..100 {
            assert!(backoff(&cfg, 1, None) <= Duration::from_millis(100));
            assert!(backoff(&cfg, 3, None) <= Duration::from_millis(400));
            assert!(backoff(&cfg, 30, None) <= Duration::from_secs(1));
            assert!(backoff(&cfg, 1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
    }

    #[test]
    fn errors_are_truncated() {
        assert_eq!(truncate("short"), "short");
        assert_eq!(truncate(&"x".repeat(500)).chars().count(), MAX_ERROR_CHARS + 1);
    }
}
