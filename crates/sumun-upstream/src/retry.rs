//! When a failed try may be tried again, how long to wait first, and how many retries an
//! upstream can take before retrying would only pile more load on a brown-out.
//!
//! - [`retryable`] encodes the safety rules: a try whose request never reached the upstream is
//!   always safe to repeat; otherwise only idempotent methods (RFC 9110 §9.2.2) or a route that
//!   opted in, and only when the request body can be sent again.
//! - [`RetryBudget`] caps retries at a share of recent requests plus a small floor (Finagle's
//!   retry budget semantics), so a full outage adds at most `budget_percent`% extra load.
//! - [`Backoff`] spaces tries with capped exponential backoff and full jitter, and honours a
//!   server's `Retry-After` as a lower bound.

use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
use sumun_config::{RetryOn, RetryPolicy};

use crate::breaker::Window;
use crate::endpoint::Outcome;

/// Why a try failed, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made: the request never reached the upstream.
    ConnectFailure,
    /// The connection broke (before or after the request was sent; see `request_sent`).
    Reset,
    /// The try ran out of time.
    Timeout,
    /// A response arrived with this status (matched against `on = ["503", …]`).
    Status(u16),
}

impl Failure {
    /// The failure behind an endpoint outcome; `None` for a success.
    pub fn from_outcome(outcome: Outcome) -> Option<Failure> {
        match outcome {
            Outcome::Success => None,
            Outcome::Status5xx(status) => Some(Failure::Status(status)),
            Outcome::ConnectFailure => Some(Failure::ConnectFailure),
            Outcome::Reset => Some(Failure::Reset),
            Outcome::Timeout => Some(Failure::Timeout),
        }
    }

    fn listed_in(self, on: &[RetryOn]) -> bool {
        on.iter().any(|kind| match (kind, self) {
            (RetryOn::ConnectFailure, Failure::ConnectFailure)
            | (RetryOn::Reset, Failure::Reset)
            | (RetryOn::Timeout, Failure::Timeout) => true,
            (RetryOn::Status(listed), Failure::Status(status)) => *listed == status,
            _ => false,
        })
    }
}

/// Whether a try that failed with `failure` may be tried again under `policy`.
///
/// - The kind of failure must be listed in `policy.on`.
/// - The body must be sendable again: `body_replayable` is true when there is no body, or the
///   replay buffer still holds all of it (`ReplayBody::try_clone` would succeed).
/// - A connect failure, or any failure with `request_sent == false` (e.g. a pooled connection
///   found closed before a byte of the request went out), never reached the upstream: safe for
///   every method.
/// - Otherwise the upstream may have acted on the request: only idempotent methods (GET, HEAD,
///   OPTIONS, TRACE, PUT, DELETE) or `policy.non_idempotent`.
///
/// Attempts left, the retry budget and the breaker are the caller's to check.
pub fn retryable(
    policy: &RetryPolicy,
    failure: Failure,
    method: &Method,
    body_replayable: bool,
    request_sent: bool,
) -> bool {
    if !failure.listed_in(&policy.on) || !body_replayable {
        return false;
    }
    if failure == Failure::ConnectFailure || !request_sent {
        return true;
    }
    method.is_idempotent() || policy.non_idempotent
}

/// Caps retries to a share of recent requests (Finagle's `RetryBudget`).
///
/// Over a sliding window of [`RetryBudget::WINDOW`] (ten 1 s buckets), a retry is allowed while
///
/// ```text
/// retries < budget_percent / 100 × requests + min_retries_per_second × window_seconds
/// ```
///
/// where `requests` counts first tries only ([`record_request`](Self::record_request)) and
/// `retries` counts the retries this budget allowed ([`try_retry`](Self::try_retry)). Under a
/// full outage with N requests in the window, at most `N × budget_percent% + floor` retries
/// go out; the floor (`min_retries_per_second × 10`) lets a quiet upstream retry at all. The
/// check and the count are one atomic step, so concurrent callers cannot overshoot it.
#[derive(Debug)]
pub struct RetryBudget {
    window: Window,
    percent: u64,
    /// `min_retries_per_second × window seconds`, in retries.
    reserve: u64,
}

impl RetryBudget {
    /// The span over which requests and retries are counted.
    pub const WINDOW: Duration = Duration::from_secs(10);

    pub fn new(budget_percent: u8, min_retries_per_second: u32) -> Self {
        RetryBudget {
            window: Window::new(Self::WINDOW, 10),
            percent: u64::from(budget_percent),
            reserve: u64::from(min_retries_per_second) * Self::WINDOW.as_secs(),
        }
    }

    pub fn from_policy(policy: &RetryPolicy) -> Self {
        Self::new(policy.budget_percent, policy.min_retries_per_second)
    }

    /// Counts a request's first try at `now_ms` (pool clock).
    pub fn record_request(&self, now_ms: u64) {
        self.window.add(now_ms, 1, 0);
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_retry(&self, now_ms: u64) -> bool {
        let (percent, reserve) = (self.percent, self.reserve);
        // retries < percent/100 × requests + reserve, in integers.
        self.window
            .add_if(now_ms, 0, 1, |requests, retries| retries * 100 < percent * requests + reserve * 100)
    }

    /// (requests, retries) counted in the window ending at `now_ms`.
    pub fn counts(&self, now_ms: u64) -> (u64, u64) {
        self.window.totals(now_ms)
    }
}

/// Delay between tries: exponential from `initial`, capped at `max`, with full jitter (a
/// uniform pick in `[0, ceiling]`, which spreads synchronized clients best), and never shorter
/// than a server's `Retry-After`.
///
/// A `Retry-After` longer than [`max_retry_after`](Self::with_max_retry_after) (default
/// [`Backoff::DEFAULT_MAX_RETRY_AFTER`]) means "don't retry": waiting less than the server asked
/// would not honour it, and waiting longer holds the client; its response goes back as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    max_retry_after: Duration,
}

impl Backoff {
    /// The longest `Retry-After` a retry waits for unless configured otherwise.
    pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, max_retry_after: Self::DEFAULT_MAX_RETRY_AFTER }
    }

    pub fn from_policy(policy: &RetryPolicy) -> Self {
        Self::new(policy.backoff_initial, policy.backoff_max)
    }

    pub fn with_max_retry_after(self, max_retry_after: Duration) -> Self {
        Backoff { max_retry_after, ..self }
    }

    /// Upper bound of the delay before retry number `retry` (1 = the second try):
    /// `min(max, initial × 2^(retry − 1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1);
        let grown = match 1u32.checked_shl(doublings) {
            Some(factor) => self.initial.saturating_mul(factor),
            None => Duration::MAX,
        };
        grown.min(self.max)
    }

    /// How long to wait before retry number `retry`, or `None` when the server's
    /// `Retry-After` asks for longer than this backoff will wait.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let ceiling = u64::try_from(self.ceiling(retry).as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(fastrand::u64(0..=ceiling));
        match retry_after {
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => Some(jittered.max(wait)),
            None => Some(jittered),
        }
    }
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delay-seconds or an HTTP-date, the latter
/// relative to `now`. A date in the past means "now" (zero). `None` when it is neither.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too large for u64: as good as forever.
        return Some(text.parse::<u64>().map_or(Duration::MAX, Duration::from_secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: Vec<RetryOn>, non_idempotent: bool) -> RetryPolicy {
        RetryPolicy { on, non_idempotent, ..RetryPolicy::default() }
    }

    #[test]
    fn retryable_truth_table() {
        use Failure::*;
        let all = vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::Timeout, RetryOn::Status(503)];
        let strict = policy(all.clone(), false);
        let lax = policy(all, true);
        let (get, post, put, patch) = (Method::GET, Method::POST, Method::PUT, Method::PATCH);
        // (policy, failure, method, body_replayable, request_sent, expected)
        let table: &[(&RetryPolicy, Failure, &Method, bool, bool, bool)] = &[
            // Never reached the upstream: safe for any method…
            (&strict, ConnectFailure, &post, true, false, true),
            (&strict, ConnectFailure, &post, true, true, true),
            (&strict, Reset, &post, true, false, true),
            (&strict, Timeout, &patch, true, false, true),
            // …but only if the body can be sent again.
            (&strict, ConnectFailure, &post, false, false, false),
            // Reached it: idempotent methods only…
            (&strict, Reset, &get, true, true, true),
            (&strict, Timeout, &put, true, true, true),
            (&strict, Status(503), &Method::DELETE, true, true, true),
            (&strict, Status(503), &Method::HEAD, true, true, true),
            (&strict, Status(503), &Method::OPTIONS, true, true, true),
            (&strict, Status(503), &Method::TRACE, true, true, true),
            (&strict, Reset, &post, true, true, false),
            (&strict, Status(503), &patch, true, true, false),
            (&strict, Timeout, &Method::CONNECT, true, true, false),
            // …unless the route opted in.
            (&lax, Reset, &post, true, true, true),
            (&lax, Status(503), &patch, true, true, true),
            // A body already streamed past the buffer cannot be sent again.
            (&strict, Reset, &put, false, true, false),
            (&lax, Reset, &post, false, true, false),
            // Statuses not listed are not retried.
            (&strict, Status(502), &get, true, true, false),
            (&lax, Status(500), &get, true, true, false),
        ];
        for (i, &(p, failure, method, replayable, sent, expected)) in table.iter().enumerate() {
            assert_eq!(
                retryable(p, failure, method, replayable, sent),
                expected,
                "row {i}: {failure:?} {method} replayable={replayable} sent={sent}"
            );
        }
        // Kinds not in `on` are never retried, however safe.
        let connect_only = policy(vec![RetryOn::ConnectFailure], false);
        assert!(retryable(&connect_only, ConnectFailure, &get, true, false));
        assert!(!retryable(&connect_only, Reset, &get, true, false));
        assert!(!retryable(&connect_only, Timeout, &get, true, true));
        assert!(!retryable(&connect_only, Status(503), &get, true, true));
    }

    #[test]
    fn failure_from_outcome() {
        assert_eq!(Failure::from_outcome(Outcome::Success), None);
        assert_eq!(Failure::from_outcome(Outcome::Status5xx(503)), Some(Failure::Status(503)));
        assert_eq!(Failure::from_outcome(Outcome::ConnectFailure), Some(Failure::ConnectFailure));
        assert_eq!(Failure::from_outcome(Outcome::Reset), Some(Failure::Reset));
        assert_eq!(Failure::from_outcome(Outcome::Timeout), Some(Failure::Timeout));
    }

    /// Every request fails and wants `attempts − 1` retries; counts the retries the budget let out.
    fn outage(budget: &RetryBudget, requests: u64, per_second: u64, attempts: u32) -> u64 {
        let mut retries = 0;
        for i in 0..requests {
            let now = 1 + i * 1_000 / per_second;
            budget.record_request(now);
            for _ in 1..attempts {
                if budget.try_retry(now) {
                    retries += 1;
                }
            }
        }
        retries
    }

    #[test]
    fn budget_caps_retries_under_full_outage() {
        // 1,000 failing requests within the window: at most 20% + the 3/s floor × 10 s.
        let budget = RetryBudget::new(20, 3);
        let retries = outage(&budget, 1_000, 200, 3);
        assert!(retries <= 200 + 30, "{retries} retries");
        // The budget is used, not starved: close to its cap.
        assert!(retries >= 200, "{retries} retries");
        assert_eq!(budget.counts(5_000), (1_000, retries));
    }

    #[test]
    fn budget_holds_over_a_sustained_outage() {
        // 100 req/s for 60 s, every request wanting 4 retries: in any window the retries stay
        // under 20% of requests plus the floor.
        let budget = RetryBudget::new(20, 1);
        let mut total = 0;
        for i in 0..6_000u64 {
            let now = 1 + i * 10;
            budget.record_request(now);
            for _ in 0..4 {
                if budget.try_retry(now) {
                    total += 1;
                }
            }
            let (requests, retries) = budget.counts(now);
            // The last retry let out was taken while fewer than 20% + 10 had gone.
            assert!(
                retries.saturating_sub(1) * 100 < 20 * requests + 10 * 100,
                "at {now}: {retries} for {requests}"
            );
        }
        // About 20% of 6,000 over the run (plus floors), far from the 24,000 wanted.
        assert!(total <= 6_000 / 5 + 10 * 7, "{total}");
        assert!(total >= 1_000, "{total}");
    }

    #[test]
    fn min_per_second_lets_a_quiet_service_retry() {
        let budget = RetryBudget::new(20, 1);
        // One request every 2 s; 20% of that would never allow a single retry.
        let mut allowed = 0;
        for i in 0..10u64 {
            let now = 1 + i * 2_000;
            budget.record_request(now);
            if budget.try_retry(now) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 10);
        // With no floor and no percentage, nothing.
        let none = RetryBudget::new(0, 0);
        none.record_request(1);
        assert!(!none.try_retry(1));
        // The floor is a window's worth: 10 retries in 10 s, then none until they age out.
        let quiet = RetryBudget::new(0, 1);
        assert_eq!((0..15).filter(|_| quiet.try_retry(1)).count(), 10);
        assert!(!quiet.try_retry(9_999));
        assert!(quiet.try_retry(10_001));
    }

    #[test]
    fn backoff_grows_and_stays_within_bounds() {
        fastrand::seed(7);
        let b = Backoff::new(Duration::from_millis(25), Duration::from_millis(250));
        assert_eq!(b.ceiling(0), Duration::from_millis(25));
        assert_eq!(b.ceiling(1), Duration::from_millis(25));
        assert_eq!(b.ceiling(2), Duration::from_millis(50));
        assert_eq!(b.ceiling(4), Duration::from_millis(200));
        assert_eq!(b.ceiling(5), Duration::from_millis(250));
        assert_eq!(b.ceiling(40), Duration::from_millis(250));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(250));
        let mut previous_mean = Duration::ZERO;
        for retry in 1..=6 {
            let samples: Vec<Duration> = (0..2_000).filter_map(|_| b.delay(retry, None)).collect();
            assert_eq!(samples.len(), 2_000);
            assert!(samples.iter().all(|d| *d <= b.ceiling(retry)));
            let mean = samples.iter().sum::<Duration>() / 2_000;
            // Full jitter: the mean sits near half the ceiling.
            let half = b.ceiling(retry) / 2;
            assert!(mean > half * 8 / 10 && mean < half * 12 / 10, "retry {retry}: {mean:?}");
            assert!(mean >= previous_mean || retry > 5, "retry {retry}");
            previous_mean = mean;
        }
        // Jitter spreads the picks instead of repeating one value.
        let picks: std::collections::HashSet<_> = (0..50).filter_map(|_| b.delay(3, None)).collect();
        assert!(picks.len() > 40);
    }

    #[test]
    fn backoff_honours_retry_after() {
        let b = Backoff::new(Duration::from_millis(25), Duration::from_millis(250));
        for _ in 0..100 {
            assert_eq!(b.delay(1, Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
        }
        assert_eq!(b.delay(1, Some(Duration::from_secs(5))), Some(Duration::from_secs(5)));
        assert_eq!(b.delay(1, Some(Duration::from_secs(6))), None);
        let d = b.delay(3, Some(Duration::ZERO)).unwrap();
        assert!(d <= Duration::from_millis(100));
        let patient = b.with_max_retry_after(Duration::from_secs(60));
        assert_eq!(patient.delay(1, Some(Duration::from_secs(30))), Some(Duration::from_secs(30)));
    }

    #[test]
    fn retry_after_parses_both_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let parse = |s: &'static str| parse_retry_after(&HeaderValue::from_static(s), now);
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("99999999999999999999999"), Some(Duration::MAX));
        assert_eq!(parse("Sun, 06 Nov 1994 08:50:07 GMT"), Some(Duration::from_secs(30)));
        // Obsolete date forms are accepted too (RFC 9110 §5.6.7).
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:47 GMT"), Some(Duration::from_secs(10)));
        assert_eq!(parse("Sun Nov  6 08:49:38 1994"), Some(Duration::from_secs(1)));
        // In the past: retry now.
        assert_eq!(parse("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse("-5"), None);
        assert_eq!(parse("1.5"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("soon"), None);
        let bad = HeaderValue::from_bytes(b"\xff1").unwrap();
        assert_eq!(parse_retry_after(&bad, now), None);
    }
}
