//! A topic at run time: its partition logs and publishing into them — envelope, partition
//! choice (key hash, else round robin), de-duplication within `dedup_window`, append.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use sumun_config::{Topic, TopicDurability};

use crate::envelope::{self, EnvelopeError};
use crate::log::{self, LogConfig, LogError, PartitionLog};
use crate::meta::{DedupEntry, Meta, Op};

/// How long a publish waits for another publish of the same dedup key to finish.
const DEDUP_WAIT: Duration = Duration::from_secs(10);

/// A publish as the bus receives it.
pub struct PublishRequest<'a> {
    /// The request headers (`ce-*`, `Content-Type`, `Idempotency-Key`, kept headers).
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// `source` of a message published without `ce-source`.
    pub default_source: &'a str,
}

/// Where a message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: String,
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    /// A repeat within the dedup window: this is the original message, not a new one.
    pub replayed: bool,
}

impl Published {
    /// The 202 body: `{id, topic, partition, offset}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "topic": &*self.topic,
            "partition": self.partition,
            "offset": self.offset,
        })
    }

    /// The status resource on the admin API.
    pub fn location(&self) -> String {
        format!("/v1/topics/{}/partitions/{}/messages/{}", self.topic, self.partition, self.offset)
    }
}

/// Why a publish failed; [`PublishError::status`] maps it for HTTP.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no such topic")]
    UnknownTopic,
    #[error("the message is larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("{0}")]
    Invalid(#[from] EnvelopeError),
    #[error("the topic is busy; retry later")]
    Busy,
    #[error("the message store is full")]
    DiskFull,
    #[error("the message store is unavailable")]
    Unavailable,
}

impl PublishError {
    pub fn status(&self) -> StatusCode {
        match self {
            PublishError::UnknownTopic => StatusCode::NOT_FOUND,
            PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::Invalid(_) => StatusCode::BAD_REQUEST,
            PublishError::Busy | PublishError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            PublishError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// When the publisher should try again (503 and 507 answers carry it).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PublishError::Busy | PublishError::Unavailable => Some(Duration::from_secs(1)),
            PublishError::DiskFull => Some(Duration::from_secs(30)),
            _ => None,
        }
    }

    fn from_log(e: LogError) -> Self {
        match e {
            LogError::DiskFull => PublishError::DiskFull,
            LogError::Busy => PublishError::Busy,
            LogError::RecordTooLarge { max, .. } => PublishError::TooLarge { max },
            other => {
                tracing::error!(error = %other, "append to a topic log failed");
                PublishError::Unavailable
            }
        }
    }
}

/// Keyed async locks: publishes of one dedup key run one at a time.
#[derive(Default)]
struct KeyLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl KeyLocks {
    async fn lock(&self, key: &str) -> Option<KeyGuard<'_>> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_owned()).or_default().clone()
        };
        let held = tokio::time::timeout(DEDUP_WAIT, lock.clone().lock_owned()).await.ok()?;
        Some(KeyGuard { locks: self, key: key.to_owned(), lock, _held: held })
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.0.lock().unwrap_or_else(|p| p.into_inner());
        // The map, this guard and its held lock: nobody else waits for the key.
        if Arc::strong_count(&self.lock) <= 3 {
            map.remove(&self.key);
        }
    }
}

/// One topic: its settings (reloadable ones swap in place), partition logs and counters.
pub struct TopicRuntime {
    pub name: Arc<str>,
    settings: ArcSwap<Topic>,
    pub partitions: Vec<Arc<PartitionLog>>,
    round_robin: AtomicU32,
    /// `max_message_bytes` when the logs opened: their record limit.
    opened_max_message: u64,
    dedup_locks: KeyLocks,
    published: metrics::Counter,
    replayed: metrics::Counter,
    duration: metrics::Histogram,
}

/// The log settings of a topic under `dir`.
pub fn log_config(dir: &std::path::Path, t: &Topic) -> LogConfig {
    let mut cfg = LogConfig::new(dir);
    cfg.durability = match t.durability {
        TopicDurability::Fsync => log::Durability::Fsync,
        TopicDurability::Interval(d) => log::Durability::Interval(d),
        TopicDurability::None => log::Durability::None,
    };
    cfg.segment_bytes = t.segment_bytes;
    cfg.retention_age = t.retention_age;
    cfg.retention_bytes = t.retention_bytes;
    // Envelope attributes and kept headers travel with the body: leave room for them.
    cfg.max_record_bytes = u32::try_from(t.max_message_bytes.saturating_add(64 * 1024)).unwrap_or(u32::MAX);
    cfg
}

impl TopicRuntime {
    /// Opens every partition of `t` under `dir`.
    pub async fn open(dir: &std::path::Path, t: &Topic) -> Result<Arc<TopicRuntime>, LogError> {
        let cfg = log_config(dir, t);
        let mut partitions = Vec::with_capacity(t.partitions as usize);
        for p in 0..t.partitions {
            partitions.push(PartitionLog::open(&cfg, &t.name, p).await?);
        }
        let name = t.name.clone();
        Ok(Arc::new(TopicRuntime {
            name: Arc::from(t.name.as_str()),
            settings: ArcSwap::from_pointee(t.clone()),
            partitions,
            round_robin: AtomicU32::new(fastrand::u32(..)),
            opened_max_message: t.max_message_bytes,
            dedup_locks: KeyLocks::default(),
            published: metrics::counter!("sumun_bus_published_total", "topic" => name.clone()),
            replayed: metrics::counter!("sumun_bus_publish_replayed_total", "topic" => name.clone()),
            duration: metrics::histogram!("sumun_bus_publish_duration_seconds", "topic" => name),
        }))
    }

    pub fn settings(&self) -> Arc<Topic> {
        self.settings.load_full()
    }

    /// Takes the settings a reload may change without reopening the logs (key, dedup
    /// window, kept headers, message size); returns the names of those it could not apply.
    pub fn update(&self, t: &Topic) -> Vec<&'static str> {
        let old = self.settings.load();
        let mut ignored = Vec::new();
        if old.partitions != t.partitions {
            ignored.push("partitions");
        }
        if old.durability != t.durability {
            ignored.push("durability");
        }
        if old.segment_bytes != t.segment_bytes {
            ignored.push("segment_bytes");
        }
        if old.retention_age != t.retention_age || old.retention_bytes != t.retention_bytes {
            ignored.push("retention");
        }
        if t.max_message_bytes > self.opened_max_message {
            // The log's record limit was fixed when it opened.
            ignored.push("max_message_bytes (above the size the topic opened with)");
        }
        let mut next = t.clone();
        next.partitions = old.partitions;
        next.durability = old.durability;
        next.segment_bytes = old.segment_bytes;
        next.retention_age = old.retention_age;
        next.retention_bytes = old.retention_bytes;
        next.max_message_bytes = t.max_message_bytes.min(self.opened_max_message);
        self.settings.store(Arc::new(next));
        ignored
    }

    pub fn partition(&self, p: u32) -> Option<&Arc<PartitionLog>> {
        self.partitions.get(p as usize)
    }

    /// The partition for a message: its key's hash, or the next in round robin.
    pub fn choose_partition(&self, key: Option<&[u8]>) -> u32 {
        let n = u32::try_from(self.partitions.len()).unwrap_or(1).max(1);
        match key {
            Some(k) => (key_hash(k) % u64::from(n)) as u32,
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// Stores one message: 202-worthy when it returns Ok.
    pub async fn publish(&self, meta: &Meta, req: PublishRequest<'_>) -> Result<Published, PublishError> {
        let started = std::time::Instant::now();
        let settings = self.settings.load_full();
        if req.body.len() as u64 > settings.max_message_bytes {
            return Err(PublishError::TooLarge { max: settings.max_message_bytes });
        }
        let now = SystemTime::now();
        let env = envelope::build(
            req.headers,
            req.body,
            &settings.key,
            &settings.keep_headers,
            req.default_source,
            now,
        )?;
        let dedup_key = env.dedup_key.clone().filter(|_| !settings.dedup_window.is_zero());
        let _guard = match &dedup_key {
            Some(k) => {
                let guard = self.dedup_locks.lock(k).await.ok_or(PublishError::Busy)?;
                let hit = meta.dedup_get(&self.name, k).await.map_err(|e| {
                    tracing::error!(error = %e, "dedup lookup failed");
                    PublishError::Unavailable
                })?;
                let window_ms = u64::try_from(settings.dedup_window.as_millis()).unwrap_or(u64::MAX);
                if let Some(d) = hit.filter(|d| envelope::unix_ms(now).saturating_sub(d.at_ms) < window_ms) {
                    self.replayed.increment(1);
                    return Ok(Published {
                        id: d.id,
                        topic: self.name.clone(),
                        partition: d.partition,
                        offset: d.offset,
                        replayed: true,
                    });
                }
                Some(guard)
            }
            None => None,
        };
        let partition = self.choose_partition(env.record.key.as_deref());
        let log = self.partition(partition).ok_or(PublishError::Unavailable)?;
        let offsets = log.append(vec![env.record]).await.map_err(PublishError::from_log)?;
        let offset = offsets.first().copied().ok_or(PublishError::Unavailable)?;
        if let Some(key) = dedup_key {
            // Durable before the 202, so a retry after a crash still finds it.
            let entry = DedupEntry { id: env.id.clone(), partition, offset, at_ms: envelope::unix_ms(now) };
            meta.commit(vec![Op::PutDedup { topic: self.name.to_string(), key, entry }], true)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "recording a dedup key failed");
                    PublishError::Unavailable
                })?;
        }
        self.published.increment(1);
        self.duration.record(started.elapsed().as_secs_f64());
        Ok(Published { id: env.id, topic: self.name.clone(), partition, offset, replayed: false })
    }

    /// Partitions, offsets and sizes, for `GET /v1/topics`.
    pub fn snapshot(&self) -> serde_json::Value {
        let s = self.settings.load();
        let partitions: Vec<serde_json::Value> = self
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let st = p.stats();
                serde_json::json!({
                    "partition": i,
                    "start_offset": st.start_offset,
                    "end_offset": st.end_offset,
                    "segments": st.segments,
                    "bytes": st.bytes,
                })
            })
            .collect();
        let messages: u64 =
            self.partitions.iter().map(|p| p.end_offset().saturating_sub(p.start_offset())).sum();
        serde_json::json!({
            "name": &*self.name,
            "durability": match s.durability {
                TopicDurability::Fsync => "fsync".to_owned(),
                TopicDurability::Interval(d) => format!("interval({}ms)", d.as_millis()),
                TopicDurability::None => "none".to_owned(),
            },
            "messages": messages,
            "partitions": partitions,
        })
    }
}

/// The stable hash of a key (partition choice and per-key ordering).
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn key_locks_serialize_one_key_and_clean_up() {
        let locks = KeyLocks::default();
        let a = locks.lock("k").await.unwrap();
        // Another key is independent.
        let b = locks.lock("other").await.unwrap();
        drop(b);
        let second = tokio::time::timeout(Duration::from_millis(50), locks.lock("k")).await;
        assert!(second.is_err(), "a second holder of `k` must wait");
        drop(a);
        let c = locks.lock("k").await.unwrap();
        drop(c);
        assert!(locks.0.lock().unwrap().is_empty());
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(PublishError::from_log(LogError::DiskFull).status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(PublishError::from_log(LogError::Busy).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(PublishError::Busy.retry_after().is_some() && PublishError::DiskFull.retry_after().is_some());
        assert_eq!(
            PublishError::from_log(LogError::RecordTooLarge { size: 9, max: 5 }).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
