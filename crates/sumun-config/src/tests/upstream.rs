//! `[upstream.NAME]` balancing and failure handling: defaults, every form, every error with
//! its line:col, and warnings.

use std::time::Duration;

use super::{LISTENER, error_lines, ok};
use crate::*;

/// A listener and `[upstream.a]` with one endpoint; `keys` start on line 5.
fn with(keys: &str) -> String {
    format!("{LISTENER}[upstream.a]\nendpoints = [\"a:1\"]\n{keys}")
}

fn upstream(keys: &str) -> Upstream {
    let loaded = ok(&with(keys));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded.config.upstreams.into_iter().next().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Warnings rendered as `line:col: message`.
fn warning_lines(source: &str) -> Vec<String> {
    ok(source)
        .warnings
        .iter()
        .map(|w| {
            assert_eq!(w.severity, Severity::Warning);
            format!("{}:{}: {}", w.line, w.col, w.message)
        })
        .collect()
}

#[test]
fn defaults_when_absent() {
    let u = upstream("");
    assert_eq!(u.balance, Balance::RoundRobin);
    assert_eq!(u.hash_key, None);
    assert_eq!(u.sticky, None);
    assert_eq!(u.slow_start, None);
    assert_eq!(u.health, None);
    assert_eq!(u.all_unavailable, AllUnavailable::Panic);
    assert_eq!(u.outlier, None);
    assert_eq!(u.retry, None);
    assert_eq!(u.breaker, None);
    assert_eq!(u.tcp_keepalive, None);
}

#[test]
fn empty_tables_take_every_default() {
    let u = upstream(
        "sticky = {}\nhealth = { path = \"/healthz\" }\noutlier = {}\nretry = { backoff = {} }\nbreaker = {}\n",
    );
    assert_eq!(u.sticky, Some(Sticky { cookie: "sumun_sticky".into(), ttl: secs(3600) }));
    assert_eq!(
        u.health,
        Some(HealthCheck {
            kind: HealthCheckKind::Http {
                path: "/healthz".into(),
                expected: vec![StatusRange { from: 200, to: 299 }],
                host: None,
            },
            interval: secs(5),
            timeout: secs(1),
            jitter_percent: 10,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        })
    );
    assert_eq!(
        u.outlier,
        Some(OutlierDetection {
            consecutive_failures: 5,
            consecutive_5xx: 5,
            base_ejection: secs(30),
            max_ejection: secs(300),
            max_ejected_percent: 50,
        })
    );
    assert_eq!(
        u.retry,
        Some(RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            on: vec![RetryOn::ConnectFailure, RetryOn::Reset],
            budget_percent: 20,
            min_retries_per_second: 3,
            replay_buffer: 64 * 1024,
            backoff_initial: ms(25),
            backoff_max: ms(250),
            non_idempotent: false,
        })
    );
    assert_eq!(
        u.breaker,
        Some(CircuitBreaker {
            failure_ratio: 0.5,
            window: secs(10),
            min_requests: 20,
            open_for: secs(30),
            half_open_probes: 3,
            per_endpoint: false,
        })
    );
}

#[test]
fn every_balancer() {
    for (text, balance) in [
        ("round_robin", Balance::RoundRobin),
        ("random", Balance::Random),
        ("least_request", Balance::LeastRequest),
        ("ring_hash", Balance::RingHash),
        ("rendezvous", Balance::Rendezvous),
    ] {
        let keys = match balance {
            Balance::RingHash | Balance::Rendezvous => format!("balance = \"{text}\"\nhash_key = \"path\"\n"),
            _ => format!("balance = \"{text}\"\n"),
        };
        assert_eq!(upstream(&keys).balance, balance, "{text}");
    }
}

#[test]
fn every_hash_key() {
    for (text, key) in [
        ("header:X-User-Id", HashKey::Header("x-user-id".into())),
        ("cookie:Session_ID", HashKey::Cookie("Session_ID".into())),
        ("client_ip", HashKey::ClientIp),
        ("path", HashKey::Path),
        ("query:user", HashKey::Query("user".into())),
    ] {
        let u = upstream(&format!("balance = \"ring_hash\"\nhash_key = \"{text}\"\n"));
        assert_eq!(u.hash_key, Some(key), "{text}");
    }
    let u = upstream("balance = \"rendezvous\"\nhash_key = \"client_ip\"\n");
    assert_eq!((u.balance, u.hash_key), (Balance::Rendezvous, Some(HashKey::ClientIp)));
}

#[test]
fn sticky_sessions() {
    let u = upstream("balance = \"least_request\"\nsticky = { cookie = \"srv\", ttl = \"30m\" }\n");
    assert_eq!(u.sticky, Some(Sticky { cookie: "srv".into(), ttl: secs(1800) }));
}

#[test]
fn slow_start_forms() {
    let u = upstream("slow_start = \"30s\"\n");
    assert_eq!(u.slow_start, Some(SlowStart { window: secs(30), aggression: 1.0, min_weight: 0.1 }));
    let u = upstream("slow_start = { window = \"1m\", aggression = 2.5, min_weight = 0.05 }\n");
    assert_eq!(u.slow_start, Some(SlowStart { window: secs(60), aggression: 2.5, min_weight: 0.05 }));
    // Integers are accepted where a float is expected.
    let u = upstream("slow_start = { window = \"10s\", aggression = 2, min_weight = 1 }\n");
    assert_eq!(u.slow_start, Some(SlowStart { window: secs(10), aggression: 2.0, min_weight: 1.0 }));
}

#[test]
fn health_check_forms() {
    let u = upstream(
        "health = { path = \"/healthz?deep=1\", interval = \"10s\", timeout = \"2s\", healthy = 1, unhealthy = 5, expected = [204, \"2xx\", \"300-399\", \"418\"], host = \"API.internal:8080\", jitter = \"0%\" }\n",
    );
    let h = u.health.unwrap();
    assert_eq!(
        h.kind,
        HealthCheckKind::Http {
            path: "/healthz?deep=1".into(),
            expected: vec![
                StatusRange { from: 204, to: 204 },
                StatusRange { from: 200, to: 299 },
                StatusRange { from: 300, to: 399 },
                StatusRange { from: 418, to: 418 },
            ],
            host: Some("api.internal:8080".into()),
        }
    );
    assert_eq!((h.interval, h.timeout), (secs(10), secs(2)));
    assert_eq!((h.healthy_threshold, h.unhealthy_threshold, h.jitter_percent), (1, 5, 0));

    let u = upstream(
        "health = { tcp = true, interval = \"3s\", timeout = \"500ms\", healthy = 4, unhealthy = 1, jitter = \"25%\" }\n",
    );
    let h = u.health.unwrap();
    assert_eq!(h.kind, HealthCheckKind::Tcp);
    assert_eq!((h.interval, h.timeout), (secs(3), ms(500)));
    assert_eq!((h.healthy_threshold, h.unhealthy_threshold, h.jitter_percent), (4, 1, 25));

    // `tcp = false` next to `path` is an HTTP check.
    let u = upstream("health = { path = \"/\", tcp = false }\n");
    assert!(matches!(u.health.unwrap().kind, HealthCheckKind::Http { path, .. } if path == "/"));
}

#[test]
fn all_unavailable_values() {
    assert_eq!(upstream("all_unavailable = \"panic\"\n").all_unavailable, AllUnavailable::Panic);
    assert_eq!(upstream("all_unavailable = \"fail\"\n").all_unavailable, AllUnavailable::Fail);
}

#[test]
fn outlier_detection_values() {
    let u = upstream(
        "outlier = { consecutive_failures = 0, consecutive_5xx = 10, base_ejection = \"10s\", max_ejection = \"10s\", max_ejected_percent = 100 }\n",
    );
    assert_eq!(
        u.outlier,
        Some(OutlierDetection {
            consecutive_failures: 0,
            consecutive_5xx: 10,
            base_ejection: secs(10),
            max_ejection: secs(10),
            max_ejected_percent: 100,
        })
    );
}

#[test]
fn retry_policy_values() {
    let u = upstream(
        "timeouts = { request = \"2s\" }\nretry = { attempts = 10, per_try_timeout = \"2s\", on = [\"timeout\", \"503\", 502, \"reset\", \"connect_failure\", 503], budget_percent = 0, min_retries_per_second = 0, replay_buffer = 0, backoff = { initial = \"10ms\", max = \"10ms\" }, non_idempotent = true }\n",
    );
    assert_eq!(
        u.retry,
        Some(RetryPolicy {
            attempts: 10,
            per_try_timeout: Some(secs(2)),
            // File order, duplicates dropped.
            on: vec![
                RetryOn::Timeout,
                RetryOn::Status(503),
                RetryOn::Status(502),
                RetryOn::Reset,
                RetryOn::ConnectFailure
            ],
            budget_percent: 0,
            min_retries_per_second: 0,
            replay_buffer: 0,
            backoff_initial: ms(10),
            backoff_max: ms(10),
            non_idempotent: true,
        })
    );
    let u = upstream("retry = { attempts = 1, replay_buffer = \"1MiB\", backoff = { max = \"1s\" } }\n");
    let r = u.retry.unwrap();
    assert_eq!(
        (r.attempts, r.replay_buffer, r.backoff_initial, r.backoff_max),
        (1, 1 << 20, ms(25), secs(1))
    );
}

#[test]
fn circuit_breaker_values() {
    let u = upstream(
        "breaker = { failure_ratio = 1, window = \"1m\", min_requests = 1, open_for = \"5s\", half_open_probes = 1, per_endpoint = true }\n",
    );
    assert_eq!(
        u.breaker,
        Some(CircuitBreaker {
            failure_ratio: 1.0,
            window: secs(60),
            min_requests: 1,
            open_for: secs(5),
            half_open_probes: 1,
            per_endpoint: true,
        })
    );
}

#[test]
fn tcp_keepalive_values() {
    assert_eq!(upstream("tcp_keepalive = \"60s\"\n").tcp_keepalive, Some(secs(60)));
    assert_eq!(upstream("tcp_keepalive = \"off\"\n").tcp_keepalive, None);
}

#[test]
fn unknown_keys_in_every_new_table_get_hints() {
    let source = with(
        "\
retry = { attempts = 3, budget_percnt = 20, backoff = { inital = \"1s\" } }
health = { path = \"/h\", intervall = \"5s\" }
sticky = { cookie_name = \"s\" }
slow_start = { window = \"1s\", agression = 2.0 }
outlier = { max_ejected = 10 }
breaker = { failure_rate = 0.5 }
tcp_keep_alive = \"1s\"
",
    );
    assert_eq!(
        error_lines(&source),
        [
            "5:25: unknown key `budget_percnt` in `upstream.a.retry`; did you mean `budget_percent`?",
            "5:57: unknown key `inital` in `upstream.a.retry.backoff`; did you mean `initial`?",
            "6:25: unknown key `intervall` in `upstream.a.health`; did you mean `interval`?",
            "7:12: unknown key `cookie_name` in `upstream.a.sticky`; did you mean `cookie`?",
            "8:31: unknown key `agression` in `upstream.a.slow_start`; did you mean `aggression`?",
            "9:13: unknown key `max_ejected` in `upstream.a.outlier`; did you mean `max_ejection`?",
            "10:13: unknown key `failure_rate` in `upstream.a.breaker`; did you mean `failure_ratio`?",
            "11:1: unknown key `tcp_keep_alive` in `upstream.a`; did you mean `tcp_keepalive`?",
        ]
    );
}

#[test]
fn hashing_balancers_need_a_hash_key() {
    let source = format!(
        "{LISTENER}\
[upstream.a]
endpoints = [\"a:1\"]
balance = \"ring_hash\"
[upstream.b]
endpoints = [\"b:1\"]
balance = \"rendezvous\"
[upstream.c]
endpoints = [\"c:1\"]
balance = \"ring_hash\"
hash_key = 5
"
    );
    assert_eq!(
        error_lines(&source),
        [
            "5:11: upstream `a`: `balance = \"ring_hash\"` needs `hash_key`, e.g. `hash_key = \"header:x-user-id\"` (`header:NAME`, `cookie:NAME`, `client_ip`, `path` or `query:NAME`)",
            "8:11: upstream `b`: `balance = \"rendezvous\"` needs `hash_key`, e.g. `hash_key = \"header:x-user-id\"` (`header:NAME`, `cookie:NAME`, `client_ip`, `path` or `query:NAME`)",
            // Only the type error: the key is there, just wrong.
            "12:12: `upstream.c.hash_key`: invalid type: integer `5`, expected a string",
        ]
    );
}

#[test]
fn bad_hash_keys() {
    let source = format!(
        "{LISTENER}\
[upstream.a]
endpoints = [\"a:1\"]
balance = \"ring_hash\"
hash_key = \"header:bad name\"
[upstream.b]
endpoints = [\"b:1\"]
balance = \"ring_hash\"
hash_key = \"clientip\"
[upstream.c]
endpoints = [\"c:1\"]
balance = \"ring_hash\"
hash_key = \"cookie:\"
[upstream.d]
endpoints = [\"d:1\"]
balance = \"ring_hash\"
hash_key = \"path:/x\"
[upstream.e]
endpoints = [\"e:1\"]
balance = \"ring_hash\"
hash_key = \"query:a&b\"
[upstream.f]
endpoints = [\"f:1\"]
balance = \"ring_hash\"
hash_key = \"headr:x-user\"
[upstream.g]
endpoints = [\"g:1\"]
balance = \"ring_hash\"
hash_key = \"cookie:a;b\"
"
    );
    assert_eq!(
        error_lines(&source),
        [
            "6:12: upstream `a`: invalid `hash_key` `header:bad name`: `bad name` is not a valid header name",
            "10:12: upstream `b`: invalid `hash_key` `clientip`: did you mean `client_ip`? (expected `header:NAME`, `cookie:NAME`, `client_ip`, `path` or `query:NAME`)",
            "14:12: upstream `c`: invalid `hash_key` `cookie:`: `cookie` needs a name, e.g. `cookie:user`",
            "18:12: upstream `d`: invalid `hash_key` `path:/x`: `path` takes no name; write `path`",
            "22:12: upstream `e`: invalid `hash_key` `query:a&b`: `a&b` is not a valid query parameter name (no spaces, control characters, `&`, `=` or `#`)",
            "26:12: upstream `f`: invalid `hash_key` `headr:x-user`: did you mean `header:x-user`? (expected `header:NAME`, `cookie:NAME`, `client_ip`, `path` or `query:NAME`)",
            "30:12: upstream `g`: invalid `hash_key` `cookie:a;b`: `a;b` is not a valid cookie name",
        ]
    );
}

#[test]
fn hash_key_without_a_hashing_balancer_is_a_warning() {
    assert_eq!(
        warning_lines(&with("hash_key = \"client_ip\"\n")),
        [
            "5:12: upstream `a`: `hash_key` is ignored by `balance = \"round_robin\"`; only `ring_hash` and `rendezvous` use it"
        ]
    );
    let u = ok(&with("balance = \"least_request\"\nhash_key = \"path\"\n"));
    assert_eq!(u.warnings.len(), 1);
    assert_eq!((u.warnings[0].line, u.warnings[0].col), (6, 12));
    assert!(u.warnings[0].message.contains("`balance = \"least_request\"`"), "{}", u.warnings[0].message);
    // Kept in the model all the same.
    assert_eq!(u.config.upstreams[0].hash_key, Some(HashKey::Path));
    // No warning about a balancer that is itself an error.
    assert_eq!(
        error_lines(&with("balance = \"ringhash\"\nhash_key = \"path\"\n")),
        [
            "5:11: upstream `a`: unknown `balance` `ringhash`; did you mean `ring_hash`? (valid: `round_robin`, `random`, `least_request`, `ring_hash`, `rendezvous`)"
        ]
    );
}

#[test]
fn sticky_problems() {
    let source = with("sticky = { cookie = \"a b\", ttl = \"0s\" }\n");
    assert_eq!(
        error_lines(&source),
        [
            "5:21: upstream `a`: `sticky.cookie` `a b` is not a valid cookie name (letters, digits and `!#$%&'*+-.^_`|~`; no spaces, `=`, `;` or `,`)",
            "5:34: upstream `a`: `sticky.ttl` must be greater than zero",
        ]
    );
}

#[test]
fn slow_start_problems() {
    let source = format!(
        "{LISTENER}\
[upstream.a]
endpoints = [\"a:1\"]
slow_start = \"0s\"
[upstream.b]
endpoints = [\"b:1\"]
slow_start = {{ aggression = 0, min_weight = 1.5 }}
[upstream.c]
endpoints = [\"c:1\"]
slow_start = {{ window = \"30\", min_weight = 0.0 }}
[upstream.d]
endpoints = [\"d:1\"]
slow_start = 30
"
    );
    assert_eq!(
        error_lines(&source),
        [
            "5:14: upstream `a`: `slow_start` must be greater than zero",
            "8:14: upstream `b`: `slow_start` needs `window`, e.g. `slow_start = { window = \"30s\" }` or `slow_start = \"30s\"`",
            "8:29: upstream `b`: `slow_start`: `aggression` must be greater than 0, not 0",
            "8:45: upstream `b`: `slow_start`: `min_weight` must be greater than 0 and at most 1, not 1.5",
            "11:25: upstream `c`: `slow_start`: `window`: invalid duration `30`: missing unit (ms, s, m, h or d); e.g. `250ms`, `30s`, `1m30s`, `1.5h`, `7d`",
            "11:44: upstream `c`: `slow_start`: `min_weight` must be greater than 0 and at most 1, not 0",
            "14:14: `upstream.d.slow_start`: invalid type: integer `30`, expected a duration like \"30s\" or a table like { window = \"30s\", aggression = 1.0, min_weight = 0.1 }",
        ]
    );
}

#[test]
fn health_check_problems() {
    let source = format!(
        "{LISTENER}\
[upstream.a]
endpoints = [\"a:1\"]
health = {{ path = \"/healthz\", tcp = true }}
[upstream.b]
endpoints = [\"b:1\"]
health = {{ interval = \"5s\", timeout = \"5s\" }}
[upstream.c]
endpoints = [\"c:1\"]
health = {{ tcp = true, interval = \"1s\" }}
[upstream.d]
endpoints = [\"d:1\"]
health = {{ tcp = true, expected = [200], host = \"x\", healthy = 0, unhealthy = -1, jitter = \"10\" }}
[upstream.e]
endpoints = [\"e:1\"]
health = {{ path = \"healthz\", expected = [600, \"6xx\", \"299-200\", \"ok\"], host = \"bad host\" }}
[upstream.f]
endpoints = [\"f:1\"]
health = {{ path = \"/h\", expected = [] }}
"
    );
    assert_eq!(
        error_lines(&source),
        [
            "5:37: upstream `a`: `health` takes `path` (an HTTP check) or `tcp = true` (a TCP check), not both",
            "8:10: upstream `b`: `health` needs `path` (an HTTP check, e.g. `path = \"/healthz\"`) or `tcp = true` (a TCP connect check)",
            "8:39: upstream `b`: `health.timeout` (5s) must be shorter than `health.interval` (5s)",
            // The default timeout (1s) is not shorter than this interval: reported at the interval.
            "11:35: upstream `c`: `health.timeout` (1s) must be shorter than `health.interval` (1s)",
            "14:35: upstream `d`: `health.expected` applies to HTTP checks only; remove it or use `path` instead of `tcp`",
            "14:49: upstream `d`: `health.host` applies to HTTP checks only; remove it or use `path` instead of `tcp`",
            "14:64: upstream `d`: `health.healthy` must be between 1 and 4294967295, not 0",
            "14:79: upstream `d`: `health.unhealthy` must be between 1 and 4294967295, not -1",
            "14:92: upstream `d`: `health.jitter` must be a percentage from 0% to 100%, like \"10%\", not `10`",
            "17:19: upstream `e`: invalid `health.path` `healthz`: must start with `/`",
            "17:42: upstream `e`: `health.expected`: invalid status `600`: expected a status (`200`), a class (`\"2xx\"`) or a range (`\"200-299\"`) within 100-599",
            "17:47: upstream `e`: `health.expected`: invalid status `6xx`: expected a status (`200`), a class (`\"2xx\"`) or a range (`\"200-299\"`) within 100-599",
            "17:54: upstream `e`: `health.expected`: invalid status `299-200`: expected a status (`200`), a class (`\"2xx\"`) or a range (`\"200-299\"`) within 100-599",
            "17:65: upstream `e`: `health.expected`: invalid status `ok`: expected a status (`200`), a class (`\"2xx\"`) or a range (`\"200-299\"`) within 100-599",
            "17:79: upstream `e`: invalid `health.host` `bad host`: `bad host` is not a valid host name or IP address",
            "20:36: upstream `f`: `health.expected` is empty; omit it to expect any 2xx status",
        ]
    );
}

#[test]
fn all_unavailable_problems() {
    assert_eq!(
        error_lines(&with("all_unavailable = \"fial\"\n")),
        [
            "5:19: upstream `a`: unknown `all_unavailable` `fial`; did you mean `fail`? (valid: `panic`, `fail`)"
        ]
    );
}

#[test]
fn outlier_problems() {
    let source = with(
        "outlier = { consecutive_failures = -1, base_ejection = \"1m\", max_ejection = \"30s\", max_ejected_percent = 101 }\n",
    );
    assert_eq!(
        error_lines(&source),
        [
            "5:36: upstream `a`: `outlier.consecutive_failures` must be between 0 and 4294967295, not -1",
            "5:77: upstream `a`: `outlier.max_ejection` (30s) must not be shorter than `outlier.base_ejection` (1m)",
            "5:106: upstream `a`: `outlier.max_ejected_percent` must be between 0 and 100, not 101",
        ]
    );
    // A base ejection longer than the default maximum (5m) is reported at the base.
    assert_eq!(
        error_lines(&with("outlier = { base_ejection = \"10m\" }\n")),
        [
            "5:29: upstream `a`: `outlier.max_ejection` (5m) must not be shorter than `outlier.base_ejection` (10m)"
        ]
    );
    assert_eq!(
        warning_lines(&with("outlier = { consecutive_failures = 0, consecutive_5xx = 0 }\n")),
        [
            "5:11: upstream `a`: `outlier` has both `consecutive_failures` and `consecutive_5xx` set to 0, so it never ejects; remove it or set a threshold"
        ]
    );
}

#[test]
fn retry_problems() {
    let source = format!(
        "{LISTENER}\
[upstream.a]
endpoints = [\"a:1\"]
retry = {{ attempts = 0, on = [\"connect_failure\", \"404\", 499, \"conect_failure\", \"5xx\"] }}
[upstream.b]
endpoints = [\"b:1\"]
timeouts = {{ request = \"5s\" }}
retry = {{ attempts = 11, per_try_timeout = \"10s\", budget_percent = 101, min_retries_per_second = -1 }}
[upstream.c]
endpoints = [\"c:1\"]
retry = {{ on = [], replay_buffer = \"lots\", backoff = {{ initial = \"1s\", max = \"100ms\" }}, per_try_timeout = \"2m\" }}
[upstream.d]
endpoints = [\"d:1\"]
retry = {{ on = [true], non_idempotent = \"yes\" }}
"
    );
    assert_eq!(
        error_lines(&source),
        [
            "5:22: upstream `a`: `retry.attempts` must be between 1 and 10, not 0",
            "5:50: upstream `a`: `retry.on`: status 404 cannot be retried; only 5xx statuses (500-599) can",
            "5:57: upstream `a`: `retry.on`: status 499 cannot be retried; only 5xx statuses (500-599) can",
            "5:62: upstream `a`: `retry.on`: unknown condition `conect_failure`; did you mean `connect_failure`? (valid: `connect_failure`, `reset`, `timeout`, or a 5xx status such as \"503\")",
            "5:80: upstream `a`: `retry.on`: unknown condition `5xx` (valid: `connect_failure`, `reset`, `timeout`, or a 5xx status such as \"503\")",
            "9:22: upstream `b`: `retry.attempts` must be between 1 and 10, not 11",
            "9:44: upstream `b`: `retry.per_try_timeout` (10s) must not exceed `timeouts.request` (5s), which bounds all tries together",
            "9:68: upstream `b`: `retry.budget_percent` must be between 0 and 100, not 101",
            "9:98: upstream `b`: `retry.min_retries_per_second` must be between 0 and 4294967295, not -1",
            "12:16: upstream `c`: `retry.on` is empty; list what to retry, e.g. [\"connect_failure\", \"reset\"], or remove `retry`",
            "12:36: upstream `c`: `retry.replay_buffer`: invalid size `lots`: expected a number; e.g. `512`, `64KiB`, `10MiB`, `1GB`",
            "12:78: upstream `c`: `retry.backoff.max` (100ms) must not be shorter than `retry.backoff.initial` (1s)",
            "12:107: upstream `c`: `retry.per_try_timeout` (2m) must not exceed `timeouts.request` (1m, the default), which bounds all tries together",
            "15:17: `upstream.d.retry.on[0]`: invalid type: boolean `true`, expected a string or an integer",
            "15:41: `upstream.d.retry.non_idempotent`: invalid type: string \"yes\", expected a boolean",
        ]
    );
}

#[test]
fn breaker_problems() {
    let source = format!(
        "{LISTENER}\
[upstream.a]
endpoints = [\"a:1\"]
breaker = {{ failure_ratio = 0, window = \"0s\", min_requests = 0, open_for = \"x\", half_open_probes = 0 }}
[upstream.b]
endpoints = [\"b:1\"]
breaker = {{ failure_ratio = 1.5, per_endpoint = 1 }}
"
    );
    assert_eq!(
        error_lines(&source),
        [
            "5:29: upstream `a`: `breaker.failure_ratio` must be greater than 0 and at most 1, not 0",
            "5:41: upstream `a`: `breaker.window` must be greater than zero",
            "5:62: upstream `a`: `breaker.min_requests` must be between 1 and 4294967295, not 0",
            "5:76: upstream `a`: `breaker.open_for`: invalid duration `x`: expected a number; e.g. `250ms`, `30s`, `1m30s`, `1.5h`, `7d`",
            "5:100: upstream `a`: `breaker.half_open_probes` must be between 1 and 4294967295, not 0",
            "8:29: upstream `b`: `breaker.failure_ratio` must be greater than 0 and at most 1, not 1.5",
            "8:49: `upstream.b.breaker.per_endpoint`: invalid type: integer `1`, expected a boolean",
        ]
    );
}

#[test]
fn tcp_keepalive_problems() {
    let source = format!(
        "{LISTENER}\
[upstream.a]
endpoints = [\"a:1\"]
tcp_keepalive = \"0s\"
[upstream.b]
endpoints = [\"b:1\"]
tcp_keepalive = \"on\"
"
    );
    assert_eq!(
        error_lines(&source),
        [
            "5:17: upstream `a`: `tcp_keepalive` must be greater than zero",
            "8:17: upstream `b`: `tcp_keepalive`: invalid duration `on`: expected a number; e.g. `250ms`, `30s`, `1m30s`, `1.5h`, `7d`",
        ]
    );
}

#[test]
fn new_tables_must_be_tables() {
    let source = with("health = \"/healthz\"\nretry = 3\nbreaker = true\noutlier = 5\nsticky = \"s\"\n");
    assert_eq!(
        error_lines(&source),
        [
            "5:10: `upstream.a.health`: invalid type: string \"/healthz\", expected a table",
            "6:9: `upstream.a.retry`: invalid type: integer `3`, expected a table",
            "7:11: `upstream.a.breaker`: invalid type: boolean `true`, expected a table",
            "8:11: `upstream.a.outlier`: invalid type: integer `5`, expected a table",
            "9:10: `upstream.a.sticky`: invalid type: string \"s\", expected a table",
        ]
    );
}
