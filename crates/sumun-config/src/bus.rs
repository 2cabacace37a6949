//! `[topic.NAME]` and `[subscription.NAME]`: the raw tables, their validated model and the
//! validation. A topic is a durable, partitioned log that routes (`to = { topic = … }`) and
//! the admin API publish to; a subscription is a consumer group on one topic, delivered by
//! push (HTTP POST to an upstream or a URL) or pull (long-poll leases).

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;

use crate::headers::header_name;
use crate::model::Secret;
use crate::raw::{RawConfig, RawSize, S};
use crate::route::unknown_reference;
use crate::units::resolve_secret;
use crate::validate::{Ctx, check_name, one_of};

// ---------------------------------------------------------------------------------------
// Raw tables.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawTopic {
    pub partitions: Option<S<i64>>,
    pub durability: Option<S<String>>,
    pub fsync_interval: Option<S<String>>,
    pub retention: Option<S<RawRetention>>,
    pub key: Option<S<String>>,
    pub dedup_window: Option<S<String>>,
    pub segment_bytes: Option<S<RawSize>>,
    pub max_message_bytes: Option<S<RawSize>>,
    pub keep_headers: Option<S<Vec<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRetention {
    pub age: Option<S<String>>,
    pub bytes: Option<S<RawSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawSubscription {
    pub topic: Option<S<String>>,
    pub deliver: Option<S<RawDeliver>>,
    pub concurrency: Option<S<i64>>,
    pub ordering: Option<S<String>>,
    pub dead_letter: Option<S<String>>,
    pub retry: Option<S<RawDeliveryRetry>>,
    pub signing_secret: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub visibility_timeout: Option<S<String>>,
    pub start: Option<S<String>>,
    pub max_pending: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawDeliver {
    pub upstream: Option<S<String>>,
    pub path: Option<S<String>>,
    pub url: Option<S<String>>,
    pub pull: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawDeliveryRetry {
    pub max_attempts: Option<S<i64>>,
    pub initial: Option<S<String>>,
    pub max: Option<S<String>>,
}

// ---------------------------------------------------------------------------------------
// The validated model.

/// `[topic.NAME]`: a durable log of messages, split into partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    /// 1 ..= 256. Messages with the same key always land in the same partition.
    pub partitions: u32,
    pub durability: TopicDurability,
    /// Sealed segments older than this are deleted.
    pub retention_age: Option<Duration>,
    /// Per partition: sealed segments are deleted, oldest first, while it is larger.
    pub retention_bytes: Option<u64>,
    pub key: PartitionKey,
    /// A publish repeating an `Idempotency-Key` (or a client-given `ce-id`) seen within this
    /// window answers with the original message; zero turns de-duplication off.
    pub dedup_window: Duration,
    /// Size of one segment file.
    pub segment_bytes: u64,
    /// Larger message bodies are refused with 413.
    pub max_message_bytes: u64,
    /// Request headers stored with the message and delivered with it (lower-case), beside
    /// `content-type`, the `ce-*` attributes and `idempotency-key`, which are always kept.
    pub keep_headers: Vec<String>,
}

/// When a publish is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicDurability {
    /// 202 only after the message is fsynced (group commit).
    Fsync,
    /// 202 after the write; fsync at most this long later. A machine crash can lose the
    /// last interval.
    Interval(Duration),
    /// 202 after the write; the OS flushes when it likes.
    None,
}

/// Where a message's partition (and ordering) key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionKey {
    /// No key: partitions are chosen round robin and messages are unordered.
    None,
    /// A request header, lower-case.
    Header(String),
    /// A JSON pointer (RFC 6901) into a JSON request body, e.g. `/order/id`.
    Json(String),
}

/// `[subscription.NAME]`: a consumer group. Every subscription of a topic sees every message;
/// within one subscription each message goes to one consumer at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub name: String,
    pub topic: String,
    pub deliver: Deliver,
    /// Push: deliveries in flight at once. Pull: not used.
    pub concurrency: u32,
    pub ordering: DeliveryOrdering,
    /// A topic that receives messages whose attempts are exhausted, with their history.
    /// None: such messages are dropped (logged and counted; `sumun check` warns).
    pub dead_letter: Option<String>,
    pub retry: DeliveryRetry,
    /// Standard Webhooks signing key (`whsec_` + base64, or base64): adds `webhook-signature`.
    pub signing_secret: Option<Secret>,
    /// Push: one delivery attempt's deadline (to the end of the response head).
    pub timeout: Duration,
    /// Pull: how long a leased message stays invisible before it is delivered again.
    pub visibility_timeout: Duration,
    /// Where a subscription seen for the first time starts reading its topic.
    pub start: StartPosition,
    /// Messages the subscription holds between its cursor and their acknowledgement
    /// (in flight, waiting for retry, or queued behind their key). Reading pauses above it.
    pub max_pending: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deliver {
    /// POST to a configured upstream pool, at `path`.
    Upstream { index: usize, name: String, path: String },
    /// POST to this `http://` or `https://` URL.
    Url(String),
    /// Consumers fetch with `GET /v1/subscriptions/NAME/messages`.
    Pull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOrdering {
    /// Messages with one key go one at a time in offset order; a failing key blocks only its
    /// own later messages.
    PerKey,
    /// Any order, as parallel as `concurrency` allows.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRetry {
    /// Attempts in all, the first included (≥ 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time up to `max`, with full jitter.
    pub initial: Duration,
    pub max: Duration,
}

impl Default for DeliveryRetry {
    fn default() -> Self {
        DeliveryRetry { max_attempts: 10, initial: Duration::from_secs(1), max: Duration::from_secs(600) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// Every message the topic still retains.
    Earliest,
    /// Only messages published after the subscription first starts.
    Latest,
}

// ---------------------------------------------------------------------------------------
// Validation.

/// Topic names, sorted (a route's `Target::Topic` index points into this order).
pub(crate) fn topic_names(raw: &RawConfig) -> Vec<String> {
    let mut names: Vec<String> =
        raw.topic.iter().flat_map(|t| &t.get_ref().0).map(|(n, _)| n.get_ref().clone()).collect();
    names.sort();
    names
}

pub(crate) fn topics(cx: &mut Ctx<'_, '_>, raw: &RawConfig) -> Vec<Topic> {
    let mut entries: Vec<_> = raw.topic.iter().flat_map(|t| &t.get_ref().0).collect();
    entries.sort_by(|a, b| a.0.get_ref().cmp(b.0.get_ref()));
    let mut out = Vec::new();
    for (name, t) in entries {
        check_name(cx, name, "topic");
        if name.get_ref().starts_with('.') {
            cx.error(name.span(), format!("topic name `{}` must not start with `.`", name.get_ref()));
        }
        if let Some(topic) = topic(cx, name.get_ref(), t) {
            out.push(topic);
        }
    }
    out
}

fn topic(cx: &mut Ctx<'_, '_>, name: &str, raw: &S<RawTopic>) -> Option<Topic> {
    let what = format!("topic `{name}`");
    let t = raw.get_ref();
    let partitions = match &t.partitions {
        Some(p) => cx.int(p, 1, 256, &format!("{what}: `partitions`")).unwrap_or(1),
        None => 1,
    };
    let interval = t.fsync_interval.as_ref().map(|i| {
        let d = cx.duration(
            &Some(i.clone()),
            Duration::from_millis(100),
            &format!("{what}: `fsync_interval`"),
            true,
        );
        (d, i.span())
    });
    let durability = match t.durability.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
        None | Some(("fsync", _)) => TopicDurability::Fsync,
        Some(("interval", _)) => {
            TopicDurability::Interval(interval.as_ref().map_or(Duration::from_millis(100), |i| i.0))
        }
        Some(("none", _)) => TopicDurability::None,
        Some((other, span)) => {
            cx.error(
                span,
                one_of(&format!("{what}: unknown `durability`"), other, &["fsync", "interval", "none"]),
            );
            TopicDurability::Fsync
        }
    };
    if let Some((_, span)) = &interval
        && !matches!(durability, TopicDurability::Interval(_))
    {
        cx.error(span.clone(), format!("{what}: `fsync_interval` needs `durability = \"interval\"`"));
    }
    let (mut retention_age, mut retention_bytes) = (None, None);
    if let Some(r) = &t.retention {
        let rr = r.get_ref();
        if rr.age.is_none() && rr.bytes.is_none() {
            cx.error(r.span(), format!("{what}: `retention` needs `age`, `bytes` or both"));
        }
        if rr.age.is_some() {
            retention_age = Some(cx.duration(
                &rr.age,
                Duration::from_secs(86_400),
                &format!("{what}: `retention.age`"),
                true,
            ));
        }
        if let Some(b) = &rr.bytes {
            retention_bytes = cx.size(b, &format!("{what}: `retention.bytes`"));
            if retention_bytes == Some(0) {
                cx.error(b.span(), format!("{what}: `retention.bytes` must be greater than zero"));
            }
        }
    }
    let key = match &t.key {
        None => PartitionKey::None,
        Some(k) => partition_key(cx, k, &what).unwrap_or(PartitionKey::None),
    };
    let dedup_window =
        cx.duration(&t.dedup_window, Duration::from_secs(86_400), &format!("{what}: `dedup_window`"), false);
    let segment_bytes = match &t.segment_bytes {
        Some(s) => {
            bounded_size(cx, s, 4096, 1 << 30, &format!("{what}: `segment_bytes`")).unwrap_or(64 << 20)
        }
        None => 64 * 1024 * 1024,
    };
    let max_message_bytes = match &t.max_message_bytes {
        Some(s) => bounded_size(cx, s, 1, 64 * 1024 * 1024, &format!("{what}: `max_message_bytes`"))
            .unwrap_or(1 << 20),
        None => 1024 * 1024,
    };
    let mut keep_headers: Vec<String> = Vec::new();
    for h in t.keep_headers.iter().flat_map(|l| l.get_ref()) {
        let Some(lower) = header_name(cx, h, &format!("{what}: `keep_headers`")) else { continue };
        if is_hop_by_hop(&lower) {
            cx.error(h.span(), format!("{what}: `{lower}` is a hop-by-hop header and cannot be kept"));
            continue;
        }
        if !keep_headers.contains(&lower) {
            keep_headers.push(lower);
        }
    }
    Some(Topic {
        name: name.to_owned(),
        partitions: u32::try_from(partitions).unwrap_or(1),
        durability,
        retention_age,
        retention_bytes,
        key,
        dedup_window,
        segment_bytes,
        max_message_bytes,
        keep_headers,
    })
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn bounded_size(cx: &mut Ctx<'_, '_>, raw: &S<RawSize>, min: u64, max: u64, what: &str) -> Option<u64> {
    let v = cx.size(raw, what)?;
    if (min..=max).contains(&v) {
        Some(v)
    } else {
        cx.error(raw.span(), format!("{what} must be between {min} and {max} bytes, not {v}"));
        None
    }
}

/// `header:NAME`, `json:/pointer` or `none`.
fn partition_key(cx: &mut Ctx<'_, '_>, raw: &S<String>, what: &str) -> Option<PartitionKey> {
    let text = raw.get_ref();
    if text == "none" {
        return Some(PartitionKey::None);
    }
    match text.split_once(':') {
        Some(("header", h)) if crate::validate::is_token(h) => {
            Some(PartitionKey::Header(h.to_ascii_lowercase()))
        }
        Some(("json", p)) if p.is_empty() || p.starts_with('/') => {
            if !valid_pointer(p) {
                cx.error(
                    raw.span(),
                    format!("{what}: `{p}` is not a JSON pointer: `~` must be followed by `0` or `1`"),
                );
                return None;
            }
            Some(PartitionKey::Json(p.to_owned()))
        }
        _ => {
            cx.error(
                raw.span(),
                format!("{what}: `key` must be `header:NAME`, `json:/pointer` or `none`, not `{text}`"),
            );
            None
        }
    }
}

/// RFC 6901: every `~` is an escape, `~0` or `~1`.
fn valid_pointer(p: &str) -> bool {
    let b = p.as_bytes();
    b.iter().enumerate().all(|(i, c)| *c != b'~' || matches!(b.get(i + 1), Some(b'0' | b'1')))
}

/// Names a subscription may refer to.
pub(crate) struct BusNames<'a> {
    pub topics: &'a [String],
    /// Sorted: a position is the upstream's index.
    pub upstreams: &'a [String],
}

pub(crate) fn subscriptions(
    cx: &mut Ctx<'_, '_>,
    raw: &RawConfig,
    names: &BusNames<'_>,
) -> Vec<Subscription> {
    let mut entries: Vec<_> = raw.subscription.iter().flat_map(|t| &t.get_ref().0).collect();
    entries.sort_by(|a, b| a.0.get_ref().cmp(b.0.get_ref()));
    let mut out = Vec::new();
    for (name, s) in entries {
        check_name(cx, name, "subscription");
        if let Some(sub) = subscription(cx, name.get_ref(), s, names) {
            out.push(sub);
        }
    }
    out
}

fn topic_ref(cx: &mut Ctx<'_, '_>, raw: &S<String>, what: &str, topics: &[String]) -> Option<String> {
    if topics.contains(raw.get_ref()) {
        Some(raw.get_ref().clone())
    } else {
        let message = unknown_reference(what, "topic", raw.get_ref(), topics);
        cx.error(raw.span(), message);
        None
    }
}

fn subscription(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    raw: &S<RawSubscription>,
    names: &BusNames<'_>,
) -> Option<Subscription> {
    let what = format!("subscription `{name}`");
    let s = raw.get_ref();
    let topic = match &s.topic {
        Some(t) => topic_ref(cx, t, &what, names.topics),
        None => {
            let message = format!("{what} needs `topic`, e.g. `topic = \"orders\"`");
            cx.missing(&format!("subscription.{name}.topic"), raw.span(), message);
            None
        }
    };
    let deliver = match &s.deliver {
        Some(d) => deliver(cx, d, &what, names.upstreams),
        None => {
            let message = format!(
                "{what} needs `deliver`: `{{ upstream = \"api\", path = \"/jobs\" }}`, `{{ url = \"http://…\" }}` or `{{ pull = true }}`"
            );
            cx.missing(&format!("subscription.{name}.deliver"), raw.span(), message);
            None
        }
    };
    let concurrency = match &s.concurrency {
        Some(c) => cx.int(c, 1, 4096, &format!("{what}: `concurrency`")).unwrap_or(8),
        None => 8,
    };
    let ordering = match s.ordering.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
        None | Some(("per_key", _)) => DeliveryOrdering::PerKey,
        Some(("none", _)) => DeliveryOrdering::None,
        Some((other, span)) => {
            cx.error(span, one_of(&format!("{what}: unknown `ordering`"), other, &["per_key", "none"]));
            DeliveryOrdering::PerKey
        }
    };
    let dead_letter = match &s.dead_letter {
        Some(d) => {
            let t = topic_ref(cx, d, &format!("{what}: `dead_letter`"), names.topics);
            if t.is_some() && s.topic.as_ref().is_some_and(|own| own.get_ref() == d.get_ref()) {
                cx.error(
                    d.span(),
                    format!("{what}: `dead_letter` must be another topic than the one it reads"),
                );
            }
            t
        }
        None => {
            if s.deliver.is_some() {
                cx.warning(
                    raw.span(),
                    format!("{what} has no `dead_letter`: messages that exhaust their attempts will be dropped (logged and counted)"),
                );
            }
            None
        }
    };
    let retry = s.retry.as_ref().map_or_else(DeliveryRetry::default, |r| retry(cx, r, &what));
    let signing_secret = s.signing_secret.as_ref().and_then(|raw| {
        let value = resolve_secret(raw.get_ref())
            .map_err(|e| cx.error(raw.span(), format!("{what}: `signing_secret`: {e}")))
            .ok()?;
        match signing_key_len(&value.0) {
            Some(n) if n >= 16 => Some(value),
            Some(_) => {
                cx.error(raw.span(), format!("{what}: `signing_secret` must hold at least 16 bytes (24 base64 characters)"));
                None
            }
            None => {
                cx.error(
                    raw.span(),
                    format!("{what}: `signing_secret` must be base64, optionally prefixed `whsec_` (Standard Webhooks); e.g. `whsec_` + `openssl rand -base64 32`"),
                );
                None
            }
        }
    });
    if signing_secret.is_some() && matches!(deliver, Some(Deliver::Pull)) {
        if let Some(raw) = &s.signing_secret {
            cx.warning(
                raw.span(),
                format!("{what}: `signing_secret` only signs push deliveries; pull ignores it"),
            );
        }
    }
    let timeout = cx.duration(&s.timeout, Duration::from_secs(30), &format!("{what}: `timeout`"), true);
    let visibility_timeout = cx.duration(
        &s.visibility_timeout,
        Duration::from_secs(30),
        &format!("{what}: `visibility_timeout`"),
        true,
    );
    if visibility_timeout > Duration::from_secs(12 * 3600) {
        if let Some(v) = &s.visibility_timeout {
            cx.error(v.span(), format!("{what}: `visibility_timeout` must be at most 12h"));
        }
    }
    let start = match s.start.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
        None | Some(("earliest", _)) => StartPosition::Earliest,
        Some(("latest", _)) => StartPosition::Latest,
        Some((other, span)) => {
            cx.error(span, one_of(&format!("{what}: unknown `start`"), other, &["earliest", "latest"]));
            StartPosition::Earliest
        }
    };
    let max_pending = match &s.max_pending {
        Some(m) => cx.int(m, 1, 1_000_000, &format!("{what}: `max_pending`")).unwrap_or(10_000),
        None => 10_000,
    };
    Some(Subscription {
        name: name.to_owned(),
        topic: topic?,
        deliver: deliver?,
        concurrency: u32::try_from(concurrency).unwrap_or(8),
        ordering,
        dead_letter,
        retry,
        signing_secret,
        timeout,
        visibility_timeout,
        start,
        max_pending: u32::try_from(max_pending).unwrap_or(10_000),
    })
}

fn deliver(cx: &mut Ctx<'_, '_>, raw: &S<RawDeliver>, what: &str, upstreams: &[String]) -> Option<Deliver> {
    let d = raw.get_ref();
    let given: Vec<(&str, Range<usize>)> = [
        ("upstream", d.upstream.as_ref().map(|v| v.span())),
        ("url", d.url.as_ref().map(|v| v.span())),
        ("pull", d.pull.as_ref().map(|v| v.span())),
    ]
    .into_iter()
    .filter_map(|(k, span)| span.map(|s| (k, s)))
    .collect();
    match given.as_slice() {
        [] => {
            cx.error(raw.span(), format!("{what}: `deliver` needs one of `upstream`, `url` or `pull`"));
            return None;
        }
        [_] => {}
        [(first, _), (second, span), ..] => {
            cx.error(
                span.clone(),
                format!("{what}: `deliver` has both `{first}` and `{second}`; choose one"),
            );
            return None;
        }
    }
    if let Some(p) = &d.path
        && d.upstream.is_none()
    {
        cx.error(p.span(), format!("{what}: `deliver.path` goes with `upstream`; put the path in the URL"));
    }
    if let Some(name) = &d.upstream {
        let Some(index) = upstreams.iter().position(|u| u == name.get_ref()) else {
            let message = unknown_reference(what, "upstream", name.get_ref(), upstreams);
            cx.error(name.span(), message);
            return None;
        };
        let path = match &d.path {
            Some(p) => {
                let text = p.get_ref();
                let ok = text.starts_with('/')
                    && !text.contains('#')
                    && !text.chars().any(|c| c.is_whitespace() || c.is_control());
                if !ok {
                    cx.error(
                        p.span(),
                        format!("{what}: `deliver.path` must start with `/` and hold no spaces or `#`"),
                    );
                    return None;
                }
                text.clone()
            }
            None => "/".to_owned(),
        };
        return Some(Deliver::Upstream { index, name: name.get_ref().clone(), path });
    }
    if let Some(url) = &d.url {
        let text = url.get_ref();
        let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
        let ok = rest.is_some_and(|r| {
            let authority = r.split(['/', '?']).next().unwrap_or("");
            !authority.is_empty() && !authority.contains('@')
        }) && !text.contains('#')
            && !text.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            cx.error(url.span(), format!("{what}: `deliver.url` must be an http:// or https:// URL with a host (no credentials, no fragment)"));
            return None;
        }
        return Some(Deliver::Url(text.clone()));
    }
    match &d.pull {
        Some(p) if !*p.get_ref() => {
            cx.error(
                p.span(),
                format!("{what}: `pull = false` is not a delivery; use `pull = true`, `upstream` or `url`"),
            );
            None
        }
        _ => Some(Deliver::Pull),
    }
}

fn retry(cx: &mut Ctx<'_, '_>, raw: &S<RawDeliveryRetry>, what: &str) -> DeliveryRetry {
    let r = raw.get_ref();
    let d = DeliveryRetry::default();
    let max_attempts = match &r.max_attempts {
        Some(m) => cx.int(m, 1, 1000, &format!("{what}: `retry.max_attempts`")).unwrap_or(10),
        None => i64::from(d.max_attempts),
    };
    let initial = cx.duration(&r.initial, d.initial, &format!("{what}: `retry.initial`"), true);
    let max = cx.duration(&r.max, d.max.max(initial), &format!("{what}: `retry.max`"), true);
    if max < initial {
        cx.error(raw.span(), format!("{what}: `retry.max` is shorter than `retry.initial`"));
    }
    DeliveryRetry { max_attempts: u32::try_from(max_attempts).unwrap_or(10), initial, max }
}

/// The byte length of a Standard Webhooks secret (`whsec_` + base64, or bare base64), or
/// None when it is not base64.
fn signing_key_len(secret: &str) -> Option<usize> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret).trim();
    let body = b64.trim_end_matches('=');
    let padding = b64.len() - body.len();
    let valid = !body.is_empty()
        && padding <= 2
        && b64.len() % 4 == 0
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    valid.then(|| b64.len() / 4 * 3 - padding)
}

/// A route's `to = { topic = … }`: the topic's index in the sorted topic names.
pub(crate) fn check_target_topic(
    cx: &mut Ctx<'_, '_>,
    raw: &S<String>,
    what: &str,
    topics: &[String],
) -> Option<usize> {
    match topics.iter().position(|t| t == raw.get_ref()) {
        Some(i) => Some(i),
        None => {
            let message = unknown_reference(what, "topic", raw.get_ref(), topics);
            cx.error(raw.span(), message);
            None
        }
    }
}

/// Every subscription's name and whether it is delivered by pull, for routes'
/// `to = { subscription = … }`.
pub(crate) fn subscription_kinds(raw: &RawConfig) -> Vec<(String, bool)> {
    raw.subscription
        .iter()
        .flat_map(|t| &t.get_ref().0)
        .map(|(n, s)| {
            let pull = s.get_ref().deliver.as_ref().is_some_and(|d| {
                let d = d.get_ref();
                d.pull.as_ref().is_some_and(|p| *p.get_ref()) && d.upstream.is_none() && d.url.is_none()
            });
            (n.get_ref().clone(), pull)
        })
        .collect()
}

/// A route's `to = { subscription = … }`: it must name a pull subscription.
pub(crate) fn check_target_subscription(
    cx: &mut Ctx<'_, '_>,
    raw: &S<String>,
    what: &str,
    subs: &[(String, bool)],
) -> Option<String> {
    match subs.iter().find(|(n, _)| n == raw.get_ref()) {
        Some((n, true)) => Some(n.clone()),
        Some((n, false)) => {
            cx.error(
                raw.span(),
                format!("{what}: subscription `{n}` is delivered by push; only a `deliver = {{ pull = true }}` subscription can be a route target"),
            );
            None
        }
        None => {
            let names: Vec<String> = subs.iter().map(|(n, _)| n.clone()).collect();
            let message = unknown_reference(what, "subscription", raw.get_ref(), &names);
            cx.error(raw.span(), message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_and_secrets() {
        assert!(valid_pointer("/a/b~0c~1d") && valid_pointer(""));
        assert!(!valid_pointer("/a~") && !valid_pointer("/a~2"));
        assert_eq!(signing_key_len("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Some(24));
        assert_eq!(signing_key_len("AAAA"), Some(3));
        assert_eq!(signing_key_len("AA=="), Some(1));
        assert_eq!(signing_key_len("not base64!"), None);
        assert_eq!(signing_key_len("whsec_"), None);
    }
}
