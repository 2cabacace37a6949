//! The bus: every topic and subscription of the configuration, the metadata store, and the
//! background upkeep (retention, expiry of dedup keys). It is built once per process and
//! survives reloads: [`Bus::reconfigure`] opens added topics, applies the settings a topic can
//! change in place, and restarts subscriptions whose settings changed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use sumun_config::{Config, Deliver, Subscription};
use tokio::sync::watch;

use crate::envelope::now_ms;
use crate::meta::{DeadEntry, Meta, MetaError, Op};
use crate::push::{PoolResolver, PushTarget};
use crate::subscription::SubscriptionRuntime;
use crate::topic::{PublishError, PublishRequest, Published, TopicRuntime};

/// How often retention and dedup expiry run (both cheap when there is nothing to do).
const UPKEEP_EVERY: Duration = Duration::from_secs(2);
/// How long a stopping subscription waits for its running attempts.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("topic `{topic}`: {source}")]
    Topic { topic: String, source: crate::log::LogError },
    #[error("subscription `{0}`: {1}")]
    Subscription(String, String),
    #[error("{0}")]
    Meta(#[from] MetaError),
}

struct RunningSub {
    sub: Arc<SubscriptionRuntime>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Which dead letters to redrive.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    /// Last attempt's HTTP status.
    pub status: Option<u16>,
    /// A substring of the last attempt's error.
    pub error_contains: Option<String>,
    /// Dead at or after / before (ms since the epoch).
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

impl DeadFilter {
    pub fn matches(&self, d: &DeadEntry) -> bool {
        let last = d.attempts.last();
        self.status.is_none_or(|s| last.and_then(|a| a.status) == Some(s))
            && self
                .error_contains
                .as_deref()
                .is_none_or(|t| last.and_then(|a| a.error.as_deref()).is_some_and(|e| e.contains(t)))
            && self.since_ms.is_none_or(|t| d.dead_at_ms >= t)
            && self.until_ms.is_none_or(|t| d.dead_at_ms < t)
    }
}

pub struct Bus {
    dir: PathBuf,
    meta: OnceLock<Meta>,
    topics: ArcSwap<HashMap<String, Arc<TopicRuntime>>>,
    subs: tokio::sync::Mutex<HashMap<String, RunningSub>>,
    /// Subscriptions by name for request handlers (no await needed).
    sub_index: ArcSwap<HashMap<String, Arc<SubscriptionRuntime>>>,
    resolver: OnceLock<PoolResolver>,
    upkeep: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Bus {
    /// Opens the topics of `config` under `{data_dir}/bus`. Nothing touches the disk when
    /// the configuration has no topics.
    pub async fn open(config: &Config) -> Result<Arc<Bus>, BusError> {
        let bus = Arc::new(Bus {
            dir: config.data_dir.join("bus"),
            meta: OnceLock::new(),
            topics: ArcSwap::from_pointee(HashMap::new()),
            subs: tokio::sync::Mutex::new(HashMap::new()),
            sub_index: ArcSwap::from_pointee(HashMap::new()),
            resolver: OnceLock::new(),
            upkeep: Mutex::new(None),
        });
        bus.open_topics(config).await?;
        Ok(bus)
    }

    fn meta(&self) -> Result<&Meta, MetaError> {
        if let Some(m) = self.meta.get() {
            return Ok(m);
        }
        let (meta, _writer) = Meta::open(&self.dir.join("meta.redb"))?;
        Ok(self.meta.get_or_init(|| meta))
    }

    async fn open_topics(&self, config: &Config) -> Result<(), BusError> {
        let current = self.topics.load_full();
        let mut next = (*current).clone();
        for t in &config.topics {
            match current.get(&t.name) {
                Some(rt) => {
                    let ignored = rt.update(t);
                    if !ignored.is_empty() {
                        tracing::warn!(topic = %t.name, settings = ?ignored, "these topic settings take effect at the next restart");
                    }
                }
                None => {
                    self.meta()?;
                    let rt = TopicRuntime::open(&self.dir.join("topics"), t)
                        .await
                        .map_err(|source| BusError::Topic { topic: t.name.clone(), source })?;
                    tracing::info!(topic = %t.name, partitions = t.partitions, "topic open");
                    next.insert(t.name.clone(), rt);
                }
            }
        }
        // Topics removed from the config stop taking messages; their logs stay open (and
        // their files stay) until the next restart.
        next.retain(|name, _| config.topics.iter().any(|t| &t.name == name));
        self.topics.store(Arc::new(next));
        Ok(())
    }

    /// Starts delivery: the subscriptions of `config` and the upkeep task. `resolver` finds
    /// the gateway's current upstream pool by name.
    pub async fn start(self: &Arc<Self>, config: &Config, resolver: PoolResolver) -> Result<(), BusError> {
        let _ = self.resolver.set(resolver);
        self.sync_subscriptions(config).await?;
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tick.tick().await;
                let Some(bus) = weak.upgrade() else { return };
                bus.upkeep().await;
            }
        });
        if let Some(old) = self.upkeep.lock().unwrap_or_else(|p| p.into_inner()).replace(task) {
            old.abort();
        }
        Ok(())
    }

    /// Applies a reloaded configuration: new topics open, changed subscriptions restart.
    pub async fn reconfigure(self: &Arc<Self>, config: &Config) -> Result<(), BusError> {
        self.open_topics(config).await?;
        if self.resolver.get().is_some() {
            self.sync_subscriptions(config).await?;
        }
        Ok(())
    }

    async fn sync_subscriptions(&self, config: &Config) -> Result<(), BusError> {
        let mut subs = self.subs.lock().await;
        let topics = self.topics.load_full();
        // Stop those removed or changed.
        let stale: Vec<String> = subs
            .iter()
            .filter(|(name, r)| !config.subscriptions.iter().any(|s| &s.name == *name && s == &r.sub.cfg))
            .map(|(n, _)| n.clone())
            .collect();
        let restarting = !stale.is_empty();
        for name in stale {
            if let Some(r) = subs.remove(&name) {
                let _ = r.stop.send(true);
                let _ = tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), r.task).await;
                tracing::info!(subscription = %name, "subscription stopped");
            }
        }
        if restarting {
            // What the stopped tasks queued (acks, cursors) must be applied before a restarted
            // subscription loads its state, or it would deliver those messages again.
            self.meta()?.commit(Vec::new(), false).await?;
        }
        for s in &config.subscriptions {
            if subs.contains_key(&s.name) {
                continue;
            }
            let Some(topic) = topics.get(&s.topic).cloned() else { continue };
            let dead_letter = s.dead_letter.as_ref().and_then(|d| topics.get(d).cloned());
            let target = self.push_target(s)?;
            let meta = self.meta()?.clone();
            let rt = SubscriptionRuntime::load(s.clone(), topic, dead_letter, meta, target)
                .await
                .map_err(|e| BusError::Subscription(s.name.clone(), e.to_string()))?;
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(rt.clone().run(stop_rx, STOP_GRACE));
            tracing::info!(subscription = %s.name, topic = %s.topic, "subscription started");
            subs.insert(s.name.clone(), RunningSub { sub: rt, stop, task });
        }
        let index: HashMap<String, Arc<SubscriptionRuntime>> =
            subs.iter().map(|(n, r)| (n.clone(), r.sub.clone())).collect();
        self.sub_index.store(Arc::new(index));
        Ok(())
    }

    fn push_target(&self, s: &Subscription) -> Result<Option<PushTarget>, BusError> {
        Ok(match &s.deliver {
            Deliver::Pull => None,
            Deliver::Upstream { name, path, .. } => {
                let resolver = self.resolver.get().cloned().ok_or_else(|| {
                    BusError::Subscription(s.name.clone(), "started before the gateway".into())
                })?;
                Some(PushTarget::Pool { upstream: name.clone(), path: path.clone(), resolver })
            }
            Deliver::Url(url) => {
                let uri = url
                    .parse::<http::Uri>()
                    .map_err(|_| BusError::Subscription(s.name.clone(), format!("invalid URL `{url}`")))?;
                Some(PushTarget::url(uri, s.timeout).map_err(|e| BusError::Subscription(s.name.clone(), e))?)
            }
        })
    }

    async fn upkeep(&self) {
        let topics = self.topics.load_full();
        let mut oldest_window = Duration::ZERO;
        for t in topics.values() {
            oldest_window = oldest_window.max(t.settings().dedup_window);
            for (p, log) in t.partitions.iter().enumerate() {
                match log.enforce_retention().await {
                    Ok(r) if r.segments_deleted > 0 => {
                        tracing::info!(topic = %t.name, partition = p, segments = r.segments_deleted, bytes = r.bytes_deleted, start_offset = r.start_offset, "retention deleted segments");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(topic = %t.name, partition = p, error = %e, "retention failed"),
                }
            }
        }
        if let Some(meta) = self.meta.get() {
            let before_ms =
                now_ms().saturating_sub(u64::try_from(oldest_window.as_millis()).unwrap_or(u64::MAX));
            if let Err(e) = meta.send(vec![Op::ExpireDedup { before_ms }]).await {
                tracing::warn!(error = %e, "expiring dedup keys failed");
            }
        }
    }

    /// Runs retention and dedup expiry now (they also run every 2 s).
    pub async fn enforce_retention(&self) {
        self.upkeep().await;
    }

    /// Publishes one message to `topic`.
    pub async fn publish(&self, topic: &str, req: PublishRequest<'_>) -> Result<Published, PublishError> {
        let t = self.topics.load().get(topic).cloned().ok_or(PublishError::UnknownTopic)?;
        let meta = self.meta.get().ok_or(PublishError::Unavailable)?;
        t.publish(meta, req).await
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicRuntime>> {
        self.topics.load().get(name).cloned()
    }

    pub fn subscription(&self, name: &str) -> Option<Arc<SubscriptionRuntime>> {
        self.sub_index.load().get(name).cloned()
    }

    /// `GET /v1/topics`.
    pub fn topics_snapshot(&self) -> serde_json::Value {
        let topics = self.topics.load();
        let subs = self.sub_index.load();
        let mut names: Vec<&String> = topics.keys().collect();
        names.sort();
        let list: Vec<serde_json::Value> = names
            .into_iter()
            .filter_map(|n| topics.get(n))
            .map(|t| {
                let mut v = t.snapshot();
                let mut s: Vec<&str> =
                    subs.values().filter(|s| s.topic.name == t.name).map(|s| s.cfg.name.as_str()).collect();
                s.sort_unstable();
                v["subscriptions"] = serde_json::json!(s);
                v
            })
            .collect();
        serde_json::json!({ "topics": list })
    }

    /// `GET /v1/subscriptions`.
    pub async fn subscriptions_snapshot(&self) -> serde_json::Value {
        let subs = self.sub_index.load_full();
        let mut names: Vec<&String> = subs.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Some(s) = subs.get(n) {
                out.push(s.snapshot().await);
            }
        }
        serde_json::json!({ "subscriptions": out })
    }

    /// The status resource of a published message.
    pub async fn message_status(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Option<serde_json::Value> {
        let t = self.topic(topic)?;
        let log = t.partition(partition)?;
        let stored = log.read(offset, 1, 1).await.ok()?.into_iter().next().filter(|s| s.offset == offset)?;
        let subs = self.sub_index.load_full();
        let mut names: Vec<&String> = subs.keys().collect();
        names.sort();
        let statuses: Vec<serde_json::Value> = names
            .into_iter()
            .filter_map(|n| subs.get(n))
            .filter(|s| s.topic.name == t.name)
            .map(|s| s.message_status((partition, offset)))
            .collect();
        Some(serde_json::json!({
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "event": crate::envelope::to_json(&stored.record),
            "subscriptions": statuses,
        }))
    }

    pub async fn dead_list(
        &self,
        sub: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeadEntry>, MetaError> {
        let meta = self.meta.get().ok_or(MetaError::Closed)?;
        meta.dead_list(sub, after, limit).await
    }

    pub async fn dead_get(&self, sub: &str, id: &str) -> Result<Option<DeadEntry>, MetaError> {
        let meta = self.meta.get().ok_or(MetaError::Closed)?;
        meta.dead_get(sub, id).await
    }

    /// Redrives dead letters of `sub`: the ones named, or every one matching `filter`
    /// (`None` with no ids: all). Returns how many went back.
    pub async fn redrive(
        &self,
        sub: &str,
        ids: Option<Vec<String>>,
        filter: Option<DeadFilter>,
    ) -> Result<usize, BusError> {
        let rt = self
            .subscription(sub)
            .ok_or_else(|| BusError::Subscription(sub.to_owned(), "not running".into()))?;
        let meta = self.meta.get().ok_or(MetaError::Closed)?;
        let mut total = 0;
        if let Some(ids) = ids {
            let mut dead = Vec::new();
            for id in ids {
                if let Some(d) = meta.dead_get(sub, &id).await? {
                    dead.push(d);
                }
            }
            return rt.redrive(dead).await.map_err(|e| BusError::Subscription(sub.to_owned(), e.to_string()));
        }
        let filter = filter.unwrap_or_default();
        let mut after: Option<String> = None;
        loop {
            let page = meta.dead_list(sub, after.clone(), 500).await?;
            let Some(last) = page.last().map(|d| d.id.clone()) else { break };
            let chosen: Vec<DeadEntry> = page.into_iter().filter(|d| filter.matches(d)).collect();
            total += rt
                .redrive(chosen)
                .await
                .map_err(|e| BusError::Subscription(sub.to_owned(), e.to_string()))?;
            after = Some(last);
        }
        Ok(total)
    }

    /// Stops delivery (running attempts get a few seconds to finish), closes the logs
    /// (flushing what is written) and makes the metadata durable.
    pub async fn shutdown(&self) {
        if let Some(t) = self.upkeep.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        let mut subs = self.subs.lock().await;
        for r in subs.values() {
            let _ = r.stop.send(true);
        }
        for (name, r) in subs.drain() {
            if tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), r.task).await.is_err() {
                tracing::warn!(subscription = %name, "subscription did not stop in time");
            }
        }
        self.sub_index.store(Arc::new(HashMap::new()));
        for t in self.topics.load().values() {
            for log in &t.partitions {
                if let Err(e) = log.close().await {
                    tracing::warn!(topic = %t.name, error = %e, "closing a topic log failed");
                }
            }
        }
        if let Some(m) = self.meta.get() {
            m.close().await;
        }
    }
}
