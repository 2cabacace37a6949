//! `[topic.NAME]`, `[subscription.NAME]` and routes with `to = { topic = … }`.

use std::time::Duration;

use super::*;
use crate::*;

const UPSTREAM: &str = "[upstream.api]\nendpoints = [\"127.0.0.1:9000\"]\n";

fn with(extra: &str) -> String {
    format!("{LISTENER}{UPSTREAM}{extra}")
}

#[test]
fn a_full_topic_and_its_subscriptions() {
    let secret = std::env::temp_dir().join(format!("sumun-bus-secret-{}", std::process::id()));
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let text = with(
        &r#"
[topic.orders]
partitions = 4
durability = "interval"
fsync_interval = "20ms"
retention = { age = "7d", bytes = "10GiB" }
key = "header:X-Order-Id"
dedup_window = "1h"
segment_bytes = "16MiB"
max_message_bytes = "256KiB"
keep_headers = ["X-Tenant", "traceparent"]

[topic."orders.dlq"]

[subscription.order-workers]
topic = "orders"
deliver = { upstream = "api", path = "/internal/orders" }
concurrency = 16
ordering = "none"
dead_letter = "orders.dlq"
retry = { max_attempts = 5, initial = "200ms", max = "1m" }
signing_secret = "file:@SECRET@"
timeout = "5s"
start = "latest"
max_pending = 500

[subscription.audit]
topic = "orders"
deliver = { pull = true }
visibility_timeout = "1m"
dead_letter = "orders.dlq"

[subscription.hook]
topic = "orders"
deliver = { url = "https://hooks.example.com/in?x=1" }
dead_letter = "orders.dlq"

[[route]]
match = { path = "/orders", methods = ["POST"] }
to = { topic = "orders" }
"#
        .replace("@SECRET@", &secret.display().to_string()),
    );
    let loaded = ok(&text);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["orders", "orders.dlq"]);
    let t = &c.topics[0];
    assert_eq!(t.partitions, 4);
    assert_eq!(t.durability, TopicDurability::Interval(Duration::from_millis(20)));
    assert_eq!(t.retention_age, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(t.retention_bytes, Some(10 << 30));
    assert_eq!(t.key, PartitionKey::Header("x-order-id".into()));
    assert_eq!(t.dedup_window, Duration::from_secs(3600));
    assert_eq!((t.segment_bytes, t.max_message_bytes), (16 << 20, 256 << 10));
    assert_eq!(t.keep_headers, ["x-tenant", "traceparent"]);
    let dlq = &c.topics[1];
    assert_eq!(dlq.partitions, 1);
    assert_eq!(dlq.durability, TopicDurability::Fsync);
    assert_eq!(dlq.key, PartitionKey::None);
    assert_eq!(dlq.dedup_window, Duration::from_secs(86_400));
    assert_eq!((dlq.retention_age, dlq.retention_bytes), (None, None));

    let names: Vec<&str> = c.subscriptions.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["audit", "hook", "order-workers"]);
    let audit = &c.subscriptions[0];
    assert_eq!(audit.deliver, Deliver::Pull);
    assert_eq!(audit.visibility_timeout, Duration::from_secs(60));
    assert_eq!(audit.ordering, DeliveryOrdering::PerKey);
    assert_eq!(audit.start, StartPosition::Earliest);
    assert_eq!(audit.retry, DeliveryRetry::default());
    assert_eq!((audit.concurrency, audit.max_pending), (8, 10_000));
    assert_eq!(c.subscriptions[1].deliver, Deliver::Url("https://hooks.example.com/in?x=1".into()));
    let w = &c.subscriptions[2];
    assert_eq!(w.topic, "orders");
    assert_eq!(
        w.deliver,
        Deliver::Upstream { index: 0, name: "api".into(), path: "/internal/orders".into() }
    );
    assert_eq!((w.concurrency, w.ordering), (16, DeliveryOrdering::None));
    assert_eq!(w.dead_letter.as_deref(), Some("orders.dlq"));
    assert_eq!(
        w.retry,
        DeliveryRetry { max_attempts: 5, initial: Duration::from_millis(200), max: Duration::from_secs(60) }
    );
    assert_eq!(
        w.signing_secret.as_ref().map(|s| s.0.as_str()),
        Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    );
    assert_eq!((w.timeout, w.start, w.max_pending), (Duration::from_secs(5), StartPosition::Latest, 500));
    assert!(matches!(&c.routes[0].target, Target::Topic { index: 0, name } if name == "orders"));
}

#[test]
fn json_pointer_keys_and_none() {
    let c = ok(&with(
        "[topic.a]\nkey = \"json:/order/id\"\n[topic.b]\nkey = \"none\"\n[topic.c]\nkey = \"json:\"\n",
    ))
    .config;
    assert_eq!(c.topics[0].key, PartitionKey::Json("/order/id".into()));
    assert_eq!(c.topics[1].key, PartitionKey::None);
    assert_eq!(c.topics[2].key, PartitionKey::Json(String::new()));
}

#[test]
fn topic_errors_are_located() {
    let text = with(
        r#"[topic.t]
partitions = 0
durability = "fsnyc"
retention = {}
key = "cookie:id"
segment_bytes = "1KiB"
max_message_bytes = "100MiB"
keep_headers = ["Connection", "bad header"]
[topic.u]
fsync_interval = "10ms"
key = "json:/a~2"
[topic.".hidden"]
"#,
    );
    let lines = error_lines(&text);
    assert_eq!(
        lines,
        [
            "6:14: topic `t`: `partitions` must be between 1 and 256, not 0",
            "7:14: topic `t`: unknown `durability` `fsnyc`; did you mean `fsync`? (valid: `fsync`, `interval`, `none`)",
            "8:13: topic `t`: `retention` needs `age`, `bytes` or both",
            "9:7: topic `t`: `key` must be `header:NAME`, `json:/pointer` or `none`, not `cookie:id`",
            "10:17: topic `t`: `segment_bytes` must be between 4096 and 1073741824 bytes, not 1024",
            "11:21: topic `t`: `max_message_bytes` must be between 1 and 67108864 bytes, not 104857600",
            "12:17: topic `t`: `connection` is a hop-by-hop header and cannot be kept",
            "12:31: topic `t`: `keep_headers`: `bad header` is not a valid header name",
            "14:18: topic `u`: `fsync_interval` needs `durability = \"interval\"`",
            "15:7: topic `u`: `/a~2` is not a JSON pointer: `~` must be followed by `0` or `1`",
            "16:8: topic name `.hidden` must not start with `.`",
        ],
        "{lines:#?}"
    );
}

#[test]
fn subscription_errors_are_located() {
    let text = with(
        r#"[topic.t]
[subscription.a]
topic = "tt"
deliver = { upstream = "apj", path = "/x" }
[subscription.b]
topic = "t"
deliver = { url = "ftp://x", pull = true }
ordering = "fifo"
dead_letter = "t"
retry = { max_attempts = 0, initial = "2s", max = "1s" }
signing_secret = "env:PATH"
[subscription.c]
topic = "t"
deliver = { pull = false }
start = "now"
[subscription.d]
deliver = { url = "http://user@host/x" }
[subscription.e]
topic = "t"
[subscription.f]
topic = "t"
deliver = { url = "http://h/x", path = "/y" }
"#,
    );
    let lines: Vec<String> = errors(&text)
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
        .collect();
    let has = |want: &str| assert!(lines.iter().any(|l| l == want), "missing {want:?} in {lines:#?}");
    has("7:9: subscription `a`: unknown topic `tt`; did you mean `t`?");
    has("8:24: subscription `a`: unknown upstream `apj`; did you mean `api`?");
    has("11:37: subscription `b`: `deliver` has both `url` and `pull`; choose one");
    has("12:12: subscription `b`: unknown `ordering` `fifo` (valid: `per_key`, `none`)");
    has("13:15: subscription `b`: `dead_letter` must be another topic than the one it reads");
    has("14:9: subscription `b`: `retry.max` is shorter than `retry.initial`");
    has("14:26: subscription `b`: `retry.max_attempts` must be between 1 and 1000, not 0");
    let starts =
        |want: &str| assert!(lines.iter().any(|l| l.starts_with(want)), "missing {want:?} in {lines:#?}");
    starts("15:18: subscription `b`: `signing_secret` must be base64");
    has("18:20: subscription `c`: `pull = false` is not a delivery; use `pull = true`, `upstream` or `url`");
    has("19:9: subscription `c`: unknown `start` `now` (valid: `earliest`, `latest`)");
    has("20:1: subscription `d` needs `topic`, e.g. `topic = \"orders\"`");
    starts("21:19: subscription `d`: `deliver.url` must be an http://");
    starts("22:1: subscription `e` needs `deliver`");
    has("26:40: subscription `f`: `deliver.path` goes with `upstream`; put the path in the URL");
    assert_eq!(lines.len(), 14, "{lines:#?}");
}

#[test]
fn routes_name_known_topics_and_one_target() {
    let lines = error_lines(&with(
        "[topic.orders]\n[[route]]\nto = { topic = \"order\" }\n[[route]]\nname = \"b\"\nto = { topic = \"orders\", echo = true }\n",
    ));
    assert_eq!(
        lines,
        [
            "7:16: route `route-1`: unknown topic `order`; did you mean `orders`?",
            "10:16: route `b`: `to` has both `echo` and `topic`; a route has one target",
        ]
    );
}

#[test]
fn a_subscription_without_dead_letter_is_a_warning() {
    let loaded = ok(&with("[topic.t]\n[subscription.s]\ntopic = \"t\"\ndeliver = { pull = true }\n"));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].message.contains("has no `dead_letter`"), "{}", loaded.warnings[0].message);
    assert_eq!(loaded.config.subscriptions[0].dead_letter, None);
}

#[test]
fn an_unset_secret_variable_is_named() {
    // A variable no environment sets.
    let var = "SUMUN_TEST_BUS_SIGNING_SECRET";
    let text = with(&format!(
        "[topic.t]\n[topic.d]\n[subscription.s]\ntopic = \"t\"\ndeliver = {{ url = \"http://127.0.0.1:1/\" }}\ndead_letter = \"d\"\nsigning_secret = \"env:{var}\"\n"
    ));
    // Unset: an error that names the variable.
    let lines = error_lines(&text);
    assert!(lines.iter().any(|l| l.contains(var)), "{lines:#?}");
}

#[test]
fn routes_can_expose_a_pull_subscription() {
    let text = with(
        r#"[topic.t]
[topic.d]
[subscription.pulled]
topic = "t"
deliver = { pull = true }
dead_letter = "d"
[subscription.pushed]
topic = "t"
deliver = { upstream = "api" }
dead_letter = "d"
[[route]]
name = "q"
match = { path_prefix = "/queues/pulled" }
to = { subscription = "pulled" }
"#,
    );
    let c = ok(&text).config;
    assert!(matches!(&c.routes[0].target, Target::Subscription { name } if name == "pulled"));
    let lines = error_lines(&format!(
        "{text}[[route]]\nname = \"a\"\nto = {{ subscription = \"pushed\" }}\n[[route]]\nname = \"b\"\nto = {{ subscription = \"pulld\" }}\n"
    ));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("subscription `pushed` is delivered by push"), "{lines:#?}");
    assert!(lines[1].contains("unknown subscription `pulld`; did you mean `pulled`?"), "{lines:#?}");
}
