//! An upstream's failure handling: `slow_start`, `health`, `outlier`, `retry` and `breaker`.

use std::ops::Range;
use std::time::Duration;

use crate::diagnostics::did_you_mean;
use crate::model::*;
use crate::raw::*;
use crate::validate::Ctx;

/// `slow_start = "30s"` or `{ window, aggression, min_weight }`.
pub(crate) fn slow_start(
    cx: &mut Ctx<'_, '_>,
    raw: &S<RawSlowStart>,
    path: &str,
    what: &str,
) -> Option<SlowStart> {
    let key = format!("{what}: `slow_start`");
    match raw.get_ref() {
        RawSlowStart::Short(text) => {
            let spanned = Some(S::new(raw.span(), text.clone()));
            let window = cx.duration(&spanned, Duration::ZERO, &key, true);
            Some(SlowStart { window, aggression: 1.0, min_weight: 0.1 })
        }
        RawSlowStart::Full(t) => {
            let window = match &t.window {
                Some(_) => cx.duration(&t.window, Duration::ZERO, &format!("{key}: `window`"), true),
                None => {
                    let message = format!(
                        "{key} needs `window`, e.g. `slow_start = {{ window = \"30s\" }}` or `slow_start = \"30s\"`"
                    );
                    cx.missing(&format!("{path}.window"), raw.span(), message);
                    Duration::ZERO
                }
            };
            let mut aggression = 1.0;
            if let Some(a) = &t.aggression {
                let v = *a.get_ref();
                if v > 0.0 && v.is_finite() {
                    aggression = v;
                } else {
                    cx.error(a.span(), format!("{key}: `aggression` must be greater than 0, not {v}"));
                }
            }
            let mut min_weight = 0.1;
            if let Some(m) = &t.min_weight {
                let v = *m.get_ref();
                if v > 0.0 && v <= 1.0 {
                    min_weight = v;
                } else {
                    cx.error(
                        m.span(),
                        format!("{key}: `min_weight` must be greater than 0 and at most 1, not {v}"),
                    );
                }
            }
            Some(SlowStart { window, aggression, min_weight })
        }
    }
}

/// `health = { path | tcp, interval, timeout, healthy, unhealthy, expected, host, jitter }`.
pub(crate) fn health(
    cx: &mut Ctx<'_, '_>,
    raw: &S<RawHealth>,
    path: &str,
    what: &str,
) -> Option<HealthCheck> {
    let h = raw.get_ref();
    let tcp = h.tcp.as_ref().filter(|t| *t.get_ref());
    let kind = match (&h.path, tcp) {
        (Some(p), Some(t)) => {
            let later = if p.span().start > t.span().start { p.span() } else { t.span() };
            cx.error(
                later,
                format!(
                    "{what}: `health` takes `path` (an HTTP check) or `tcp = true` (a TCP check), not both"
                ),
            );
            None
        }
        (None, Some(_)) => {
            let http_only = [
                ("expected", h.expected.as_ref().map(|e| e.span())),
                ("host", h.host.as_ref().map(|e| e.span())),
            ];
            for (key, span) in http_only {
                if let Some(span) = span {
                    cx.error(
                        span,
                        format!("{what}: `health.{key}` applies to HTTP checks only; remove it or use `path` instead of `tcp`"),
                    );
                }
            }
            Some(HealthCheckKind::Tcp)
        }
        (Some(p), None) => {
            if let Err(e) = check_health_path(p.get_ref()) {
                cx.error(p.span(), format!("{what}: invalid `health.path` `{}`: {e}", p.get_ref()));
            }
            let expected = match &h.expected {
                None => vec![StatusRange { from: 200, to: 299 }],
                Some(list) => expected_statuses(cx, list, &format!("{path}.expected"), what),
            };
            let host = h.host.as_ref().and_then(|host| match check_host_header(host.get_ref()) {
                Ok(()) => Some(host.get_ref().to_ascii_lowercase()),
                Err(e) => {
                    cx.error(host.span(), format!("{what}: invalid `health.host` `{}`: {e}", host.get_ref()));
                    None
                }
            });
            Some(HealthCheckKind::Http { path: p.get_ref().clone(), expected, host })
        }
        (None, None) => {
            if !cx.reported(&format!("{path}.tcp")) {
                let message = format!(
                    "{what}: `health` needs `path` (an HTTP check, e.g. `path = \"/healthz\"`) or `tcp = true` (a TCP connect check)"
                );
                cx.missing(&format!("{path}.path"), raw.span(), message);
            }
            None
        }
    };
    let interval =
        cx.duration(&h.interval, Duration::from_secs(5), &format!("{what}: `health.interval`"), true);
    let timeout = cx.duration(&h.timeout, Duration::from_secs(1), &format!("{what}: `health.timeout`"), true);
    if timeout >= interval {
        let span = h.timeout.as_ref().or(h.interval.as_ref()).map_or_else(|| raw.span(), |s| s.span());
        cx.error(
            span,
            format!(
                "{what}: `health.timeout` ({}) must be shorter than `health.interval` ({})",
                show(timeout),
                show(interval)
            ),
        );
    }
    let healthy = count(cx, &h.healthy, 1, 2, &format!("{what}: `health.healthy`"));
    let unhealthy = count(cx, &h.unhealthy, 1, 3, &format!("{what}: `health.unhealthy`"));
    let jitter_percent = match &h.jitter {
        None => 10,
        Some(j) => percentage(j.get_ref()).unwrap_or_else(|| {
            cx.error(
                j.span(),
                format!(
                    "{what}: `health.jitter` must be a percentage from 0% to 100%, like \"10%\", not `{}`",
                    j.get_ref()
                ),
            );
            10
        }),
    };
    Some(HealthCheck {
        kind: kind?,
        interval,
        timeout,
        jitter_percent,
        healthy_threshold: healthy,
        unhealthy_threshold: unhealthy,
    })
}

/// A health-check request path: origin-form, a query allowed.
fn check_health_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with `/`");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') {
        return Err("must not contain spaces, control characters or a fragment (`#`)");
    }
    Ok(())
}

/// A `Host` header value: a DNS name, IPv4 or `[IPv6]` address, optionally with `:PORT`.
fn check_host_header(text: &str) -> Result<(), String> {
    let port = if let Some(rest) = text.strip_prefix('[') {
        let (v6, rest) = rest.split_once(']').ok_or("expected `[IPv6]` or `[IPv6]:PORT`")?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':').ok_or("expected `:PORT` after `]`")?),
        }
    } else {
        let (host, port) = match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        if !crate::validate::is_dns_name(host) && host.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(format!("`{host}` is not a valid host name or IP address"));
        }
        port
    };
    match port {
        Some(p) if !matches!(p.parse::<u16>(), Ok(1..)) => {
            Err(format!("`{p}` is not a valid port (1-65535)"))
        }
        _ => Ok(()),
    }
}

/// `[200, "2xx", "300-399"]`.
fn expected_statuses(
    cx: &mut Ctx<'_, '_>,
    list: &S<Vec<S<StringOrInt>>>,
    path: &str,
    what: &str,
) -> Vec<StatusRange> {
    // Items of the wrong type were reported and removed by the parser.
    if list.get_ref().is_empty() && !cx.reported(path) {
        cx.error(
            list.span(),
            format!("{what}: `health.expected` is empty; omit it to expect any 2xx status"),
        );
    }
    let mut out = Vec::new();
    for item in list.get_ref() {
        let parsed = match item.get_ref() {
            StringOrInt::Int(n) => u16::try_from(*n).ok().map(|n| StatusRange { from: n, to: n }),
            StringOrInt::Str(s) => status_range(s),
        };
        match parsed
            .filter(|r| (100..=599).contains(&r.from) && (100..=599).contains(&r.to) && r.from <= r.to)
        {
            Some(r) => out.push(r),
            None => {
                let text = match item.get_ref() {
                    StringOrInt::Int(n) => n.to_string(),
                    StringOrInt::Str(s) => s.clone(),
                };
                cx.error(
                    item.span(),
                    format!(
                        "{what}: `health.expected`: invalid status `{text}`: expected a status (`200`), a class (`\"2xx\"`) or a range (`\"200-299\"`) within 100-599"
                    ),
                );
            }
        }
    }
    out
}

/// `"204"`, `"2xx"`, `"200-299"`; None when malformed (the caller checks the bounds).
fn status_range(text: &str) -> Option<StatusRange> {
    let number = |s: &str| -> Option<u16> {
        (s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    if let Some((from, to)) = text.split_once('-') {
        return Some(StatusRange { from: number(from.trim())?, to: number(to.trim())? });
    }
    if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
        let digit = match class.as_bytes() {
            [d @ b'1'..=b'5'] => u16::from(d - b'0'),
            _ => return None,
        };
        return Some(StatusRange { from: digit * 100, to: digit * 100 + 99 });
    }
    number(text).map(|n| StatusRange { from: n, to: n })
}

/// `"10%"` → 10.
fn percentage(text: &str) -> Option<u8> {
    let digits = text.strip_suffix('%')?.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u8>().ok().filter(|p| *p <= 100)
}

/// `outlier = { consecutive_failures, consecutive_5xx, base_ejection, max_ejection, max_ejected_percent }`.
pub(crate) fn outlier(cx: &mut Ctx<'_, '_>, raw: &S<RawOutlier>, what: &str) -> OutlierDetection {
    let o = raw.get_ref();
    let d = OutlierDetection::default();
    let key = |k: &str| format!("{what}: `outlier.{k}`");
    let consecutive_failures =
        count(cx, &o.consecutive_failures, 0, d.consecutive_failures, &key("consecutive_failures"));
    let consecutive_5xx = count(cx, &o.consecutive_5xx, 0, d.consecutive_5xx, &key("consecutive_5xx"));
    let base_ejection = cx.duration(&o.base_ejection, d.base_ejection, &key("base_ejection"), true);
    let max_ejection = cx.duration(&o.max_ejection, d.max_ejection, &key("max_ejection"), true);
    if max_ejection < base_ejection {
        let span =
            o.max_ejection.as_ref().or(o.base_ejection.as_ref()).map_or_else(|| raw.span(), |s| s.span());
        cx.error(
            span,
            format!(
                "{what}: `outlier.max_ejection` ({}) must not be shorter than `outlier.base_ejection` ({})",
                show(max_ejection),
                show(base_ejection)
            ),
        );
    }
    let max_ejected_percent =
        percent(cx, &o.max_ejected_percent, d.max_ejected_percent, &key("max_ejected_percent"));
    if consecutive_failures == 0 && consecutive_5xx == 0 {
        cx.warning(
            raw.span(),
            format!(
                "{what}: `outlier` has both `consecutive_failures` and `consecutive_5xx` set to 0, so it never ejects; remove it or set a threshold"
            ),
        );
    }
    OutlierDetection {
        consecutive_failures,
        consecutive_5xx,
        base_ejection,
        max_ejection,
        max_ejected_percent,
    }
}

const RETRY_CONDITIONS: &[&str] = &["connect_failure", "reset", "timeout"];

/// `retry = { attempts, per_try_timeout, on, budget_percent, min_retries_per_second,
/// replay_buffer, backoff = { initial, max }, non_idempotent }`.
pub(crate) fn retry(
    cx: &mut Ctx<'_, '_>,
    raw: &S<RawRetry>,
    path: &str,
    what: &str,
    request_timeout: (Duration, Option<Range<usize>>),
) -> RetryPolicy {
    let r = raw.get_ref();
    let d = RetryPolicy::default();
    let key = |k: &str| format!("{what}: `retry.{k}`");
    let attempts = r
        .attempts
        .as_ref()
        .and_then(|a| cx.int(a, 1, 10, &key("attempts")))
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(d.attempts);
    let per_try_timeout = r
        .per_try_timeout
        .as_ref()
        .map(|_| cx.duration(&r.per_try_timeout, Duration::ZERO, &key("per_try_timeout"), true))
        .filter(|t| !t.is_zero());
    if let (Some(per_try), Some(raw_per_try)) = (per_try_timeout, &r.per_try_timeout) {
        let (request, request_span) = request_timeout;
        if per_try > request {
            let written = if request_span.is_some() { "" } else { ", the default" };
            cx.error(
                raw_per_try.span(),
                format!(
                    "{what}: `retry.per_try_timeout` ({}) must not exceed `timeouts.request` ({}{written}), which bounds all tries together",
                    show(per_try),
                    show(request)
                ),
            );
        }
    }
    let on = match &r.on {
        None => d.on.clone(),
        Some(list) => retry_on(cx, list, &format!("{path}.on"), what),
    };
    let budget_percent = percent(cx, &r.budget_percent, d.budget_percent, &key("budget_percent"));
    let min_retries_per_second =
        count(cx, &r.min_retries_per_second, 0, d.min_retries_per_second, &key("min_retries_per_second"));
    let replay_buffer =
        r.replay_buffer.as_ref().and_then(|b| cx.size(b, &key("replay_buffer"))).unwrap_or(d.replay_buffer);
    let (mut backoff_initial, mut backoff_max) = (d.backoff_initial, d.backoff_max);
    if let Some(b) = &r.backoff {
        let b_ref = b.get_ref();
        backoff_initial = cx.duration(&b_ref.initial, d.backoff_initial, &key("backoff.initial"), true);
        backoff_max = cx.duration(&b_ref.max, d.backoff_max, &key("backoff.max"), true);
        if backoff_max < backoff_initial {
            let span = b_ref.max.as_ref().or(b_ref.initial.as_ref()).map_or_else(|| b.span(), |s| s.span());
            cx.error(
                span,
                format!(
                    "{what}: `retry.backoff.max` ({}) must not be shorter than `retry.backoff.initial` ({})",
                    show(backoff_max),
                    show(backoff_initial)
                ),
            );
        }
    }
    let non_idempotent = r.non_idempotent.as_ref().is_some_and(|n| *n.get_ref());
    RetryPolicy {
        attempts,
        per_try_timeout,
        on,
        budget_percent,
        min_retries_per_second,
        replay_buffer,
        backoff_initial,
        backoff_max,
        non_idempotent,
    }
}

/// `["connect_failure", "reset", "timeout", "503", 502]`, duplicates dropped.
fn retry_on(cx: &mut Ctx<'_, '_>, list: &S<Vec<S<StringOrInt>>>, path: &str, what: &str) -> Vec<RetryOn> {
    // Items of the wrong type were reported and removed by the parser.
    if list.get_ref().is_empty() && !cx.reported(path) {
        cx.error(
            list.span(),
            format!("{what}: `retry.on` is empty; list what to retry, e.g. [\"connect_failure\", \"reset\"], or remove `retry`"),
        );
    }
    let mut out = Vec::new();
    for item in list.get_ref() {
        let status = match item.get_ref() {
            StringOrInt::Str(s) => match s.as_str() {
                "connect_failure" => Ok(RetryOn::ConnectFailure),
                "reset" => Ok(RetryOn::Reset),
                "timeout" => Ok(RetryOn::Timeout),
                s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Err(s.parse::<i64>().ok()),
                s => {
                    let mut message = format!("{what}: `retry.on`: unknown condition `{s}`");
                    if let Some(hint) = did_you_mean(s, RETRY_CONDITIONS.iter().copied()) {
                        message.push_str(&format!("; did you mean `{hint}`?"));
                    }
                    message.push_str(
                        " (valid: `connect_failure`, `reset`, `timeout`, or a 5xx status such as \"503\")",
                    );
                    cx.error(item.span(), message);
                    continue;
                }
            },
            StringOrInt::Int(n) => Err(Some(*n)),
        };
        let on = match status {
            Ok(on) => on,
            Err(Some(n)) if (500..=599).contains(&n) => RetryOn::Status(u16::try_from(n).unwrap_or(503)),
            Err(n) => {
                let n = n.map_or_else(|| "?".to_string(), |n| n.to_string());
                cx.error(
                    item.span(),
                    format!(
                        "{what}: `retry.on`: status {n} cannot be retried; only 5xx statuses (500-599) can"
                    ),
                );
                continue;
            }
        };
        if !out.contains(&on) {
            out.push(on);
        }
    }
    out
}

/// `breaker = { failure_ratio, window, min_requests, open_for, half_open_probes, per_endpoint }`.
pub(crate) fn breaker(cx: &mut Ctx<'_, '_>, raw: &S<RawBreaker>, what: &str) -> CircuitBreaker {
    let b = raw.get_ref();
    let d = CircuitBreaker::default();
    let key = |k: &str| format!("{what}: `breaker.{k}`");
    let mut failure_ratio = d.failure_ratio;
    if let Some(f) = &b.failure_ratio {
        let v = *f.get_ref();
        if v > 0.0 && v <= 1.0 {
            failure_ratio = v;
        } else {
            cx.error(
                f.span(),
                format!("{} must be greater than 0 and at most 1, not {v}", key("failure_ratio")),
            );
        }
    }
    CircuitBreaker {
        failure_ratio,
        window: cx.duration(&b.window, d.window, &key("window"), true),
        min_requests: count(cx, &b.min_requests, 1, d.min_requests, &key("min_requests")),
        open_for: cx.duration(&b.open_for, d.open_for, &key("open_for"), true),
        half_open_probes: count(cx, &b.half_open_probes, 1, d.half_open_probes, &key("half_open_probes")),
        per_endpoint: b.per_endpoint.as_ref().is_some_and(|p| *p.get_ref()),
    }
}

/// An optional integer key in `min..=u32::MAX`, or its default.
fn count(cx: &mut Ctx<'_, '_>, raw: &Option<S<i64>>, min: i64, default: u32, what: &str) -> u32 {
    raw.as_ref()
        .and_then(|v| cx.int(v, min, i64::from(u32::MAX), what))
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(default)
}

/// An optional integer key in `0..=100`, or its default.
fn percent(cx: &mut Ctx<'_, '_>, raw: &Option<S<i64>>, default: u8, what: &str) -> u8 {
    raw.as_ref().and_then(|v| cx.int(v, 0, 100, what)).and_then(|v| u8::try_from(v).ok()).unwrap_or(default)
}

/// A duration as it would be written in the config: `"5s"`, `"250ms"`, `"1m30s"`.
pub(crate) fn show(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() { "0s".into() } else { format!("{}ns", d.as_nanos()) };
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        let r = |from, to| Some(StatusRange { from, to });
        assert_eq!(status_range("204"), r(204, 204));
        assert_eq!(status_range("2xx"), r(200, 299));
        assert_eq!(status_range("5XX"), r(500, 599));
        assert_eq!(status_range("300-399"), r(300, 399));
        assert_eq!(status_range("6xx"), None);
        assert_eq!(status_range("xx"), None);
        assert_eq!(status_range("20"), None);
        assert_eq!(status_range("2000"), None);
        assert_eq!(status_range("a-b"), None);
        // Bounds and order are checked by the caller.
        assert_eq!(status_range("399-300"), r(399, 300));
    }

    #[test]
    fn percentages() {
        assert_eq!(percentage("10%"), Some(10));
        assert_eq!(percentage("0%"), Some(0));
        assert_eq!(percentage("100%"), Some(100));
        for bad in ["101%", "10", "%", "-1%", "1.5%", "ten%"] {
            assert_eq!(percentage(bad), None, "{bad}");
        }
    }

    #[test]
    fn host_headers() {
        for good in ["api.internal", "api.internal:8080", "10.0.0.1", "[::1]", "[::1]:80"] {
            assert!(check_host_header(good).is_ok(), "{good}");
        }
        for bad in ["bad host", "a:0", "a:x", "[zz]", "[::1]x", ""] {
            assert!(check_host_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_shown_as_written() {
        assert_eq!(show(Duration::from_secs(5)), "5s");
        assert_eq!(show(Duration::from_millis(250)), "250ms");
        assert_eq!(show(Duration::from_secs(90)), "1m30s");
        assert_eq!(show(Duration::from_secs(3600)), "1h");
        assert_eq!(show(Duration::ZERO), "0s");
    }
}
