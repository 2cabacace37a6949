//! RFC 9111 policy for a shared cache: may a response be stored (§3, §3.5), how long is it
//! fresh (§4.2.1, §4.2.2), how old is it (§4.2.3), and may a stored response answer a given
//! request (§4.2.4, §5.2.1). The base storability rules come from `http-cache-semantics`; the
//! rest is here because that crate implements RFC 7234 with gaps a shared cache cannot live
//! with (see docs/cache.md, "Policy"): targeted fields (RFC 9213), heuristics limited to
//! heuristically cacheable statuses, the full age calculation, invalid `Age`, stale windows
//! (RFC 5861), and statuses it does not know.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::directives::{CDN_CACHE_CONTROL, DELTA_MAX, Delta, Directives, SURROGATE_CONTROL, parse_delta};

/// RFC 9110 §15.1: statuses cacheable by default, i.e. heuristically.
const HEURISTIC_STATUSES: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];
/// The statuses `http-cache-semantics` knows; for others we apply RFC 9111 §3 ourselves.
const LIB_UNDERSTOOD: [u16; 14] = [200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501];
/// Heuristic freshness never exceeds a day, so we never owe a `Warning: 113`.
const HEURISTIC_CAP: Duration = Duration::from_secs(86_400);
/// How long a stale response with validators is kept for revalidation at most.
const VALIDATOR_RETENTION_CAP: Duration = Duration::from_secs(86_400);

/// A route's freshness defaults, from its `cache = { … }`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Defaults {
    pub default_ttl: Option<Duration>,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// What the cache remembers about a stored response's freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub lifetime: Duration,
    /// §4.2.3 corrected_initial_age.
    pub initial_age: Duration,
    pub response_time: SystemTime,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
    pub must_revalidate: bool,
    /// `no-cache` (qualified or not) or `Pragma: no-cache`: validated on every use.
    pub no_cache: bool,
    /// `public`, `s-maxage` or `must-revalidate`: may answer requests with `Authorization`.
    pub shareable_with_auth: bool,
    pub has_validators: bool,
}

impl Freshness {
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }

    /// Positive: time left fresh; negative: time stale.
    pub fn ttl_secs(&self, now: SystemTime) -> i64 {
        let age = self.age(now).as_secs() as i64;
        self.lifetime.as_secs() as i64 - age
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.lifetime > self.age(now)
    }

    /// How long past `now` the entry is worth keeping (fresh time left plus the stale time
    /// during which it can still be served or revalidated).
    pub fn keep_for(&self, now: SystemTime) -> Duration {
        let fresh_left = self.lifetime.saturating_sub(self.age(now));
        let validators = if self.has_validators {
            self.lifetime.clamp(Duration::from_secs(60), VALIDATOR_RETENTION_CAP)
        } else {
            Duration::ZERO
        };
        let stale = if self.must_revalidate || self.no_cache {
            validators
        } else {
            self.stale_while_revalidate.max(self.stale_if_error).max(validators)
        };
        fresh_left + stale
    }

    /// Whether the response may be served stale because the origin failed, now.
    pub fn stale_if_error_ok(&self, now: SystemTime, request: &RequestDirectives) -> bool {
        if self.must_revalidate || self.no_cache {
            return false;
        }
        let over = self.age(now).saturating_sub(self.lifetime);
        let window = match request.stale_if_error {
            Some(s) => s.max(self.stale_if_error),
            None => self.stale_if_error,
        };
        over <= window && !window.is_zero()
    }
}

/// The decision for a response the origin sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storable {
    Yes(Freshness),
    No(&'static str),
}

/// What the request's `Cache-Control` (and `Pragma`) ask of the cache (§5.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    pub max_age: Option<Duration>,
    pub min_fresh: Option<Duration>,
    /// Some(None): any staleness accepted.
    pub max_stale: Option<Option<Duration>>,
    pub stale_if_error: Option<Duration>,
}

impl RequestDirectives {
    pub fn from_headers(headers: &HeaderMap) -> RequestDirectives {
        if !headers.contains_key(header::CACHE_CONTROL) {
            // §5.4: Pragma: no-cache only counts when Cache-Control is absent.
            let pragma_no_cache = headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("no-cache")));
            return RequestDirectives { no_cache: pragma_no_cache, ..Default::default() };
        }
        let cc = Directives::from_headers(headers, &header::CACHE_CONTROL);
        let secs = |n: &str| match cc.delta(n) {
            Delta::Seconds(s) => Some(Duration::from_secs(s)),
            // A malformed request max-age is the most conservative reading: zero.
            Delta::Invalid => Some(Duration::ZERO),
            Delta::Absent => None,
        };
        let max_stale = if cc.has("max-stale") {
            match cc.value("max-stale") {
                None => Some(None),
                Some(v) => match parse_delta(v) {
                    Delta::Seconds(s) => Some(Some(Duration::from_secs(s))),
                    _ => None,
                },
            }
        } else {
            None
        };
        RequestDirectives {
            no_cache: cc.has("no-cache"),
            no_store: cc.has("no-store"),
            only_if_cached: cc.has("only-if-cached"),
            max_age: secs("max-age"),
            min_fresh: secs("min-fresh"),
            max_stale,
            stale_if_error: match cc.delta("stale-if-error") {
                Delta::Seconds(s) => Some(Duration::from_secs(s)),
                _ => None,
            },
        }
    }
}

/// How a stored response can be used for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    Fresh,
    /// Stale, but the request's `max-stale` accepts it.
    StaleAccepted,
    /// Stale within `stale-while-revalidate`: serve it and refresh in the background.
    StaleWhileRevalidate,
    /// Must be validated (or refetched) first.
    Revalidate,
}

pub fn usable(f: &Freshness, now: SystemTime, req: &RequestDirectives) -> Usable {
    if f.no_cache || req.no_cache {
        return Usable::Revalidate;
    }
    let age = f.age(now);
    if req.max_age.is_some_and(|m| age > m) {
        return Usable::Revalidate;
    }
    if req.min_fresh.is_some_and(|m| f.lifetime.saturating_sub(age) < m) {
        return Usable::Revalidate;
    }
    if f.lifetime > age {
        return Usable::Fresh;
    }
    if f.must_revalidate {
        return Usable::Revalidate;
    }
    let over = age - f.lifetime;
    match req.max_stale {
        Some(None) => return Usable::StaleAccepted,
        Some(Some(m)) if over <= m => return Usable::StaleAccepted,
        _ => {}
    }
    // A request that limits age or asks for freshness does not want a stale answer.
    if over < f.stale_while_revalidate && req.max_age.is_none() && req.min_fresh.is_none() {
        return Usable::StaleWhileRevalidate;
    }
    Usable::Revalidate
}

/// The directives that govern this cache for a response: `Surrogate-Control` aimed at `me`,
/// else `CDN-Cache-Control`, else `Cache-Control`. The bool says whether a targeted field
/// was used (then `Expires` and `Pragma` are ignored, RFC 9213 §2.1).
pub fn governing(headers: &HeaderMap, me: &str) -> (Directives, bool) {
    if headers.contains_key(&SURROGATE_CONTROL)
        && let Some(mine) = Directives::from_headers(headers, &SURROGATE_CONTROL).targeted_at(me)
    {
        return (mine, true);
    }
    if headers.contains_key(&CDN_CACHE_CONTROL) {
        let cdn = Directives::from_headers(headers, &CDN_CACHE_CONTROL);
        if !cdn.is_empty() {
            return (cdn, true);
        }
    }
    (Directives::from_headers(headers, &header::CACHE_CONTROL), false)
}

/// `Age` as §5.1 allows it: exactly one field line holding `1*DIGIT`. None: absent;
/// Some(None): present but invalid (the response is then treated as stale).
fn age_value(headers: &HeaderMap) -> Option<Option<Duration>> {
    let mut all = headers.get_all(header::AGE).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return Some(None);
    }
    let s = first.to_str().ok().map(str::trim)?;
    match parse_delta(s) {
        Delta::Seconds(n) => Some(Some(Duration::from_secs(n))),
        _ => Some(None),
    }
}

fn http_date(v: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?.trim()).ok()
}

/// A single-valued date field; several lines that disagree count as invalid.
fn single_date(headers: &HeaderMap, name: &HeaderName) -> Option<Option<SystemTime>> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    let parsed = http_date(first);
    if all.any(|v| v != first) {
        return Some(None);
    }
    Some(parsed)
}

/// Everything §3 needs to decide on a response, plus the times of the exchange.
pub struct Exchange<'a> {
    pub method: &'a Method,
    pub request_headers: &'a HeaderMap,
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
}

/// Decides whether a response may be stored, and if so how fresh it is. `me` is this
/// cache's name for targeted fields.
pub fn evaluate(x: &Exchange<'_>, defaults: &Defaults, me: &str) -> Storable {
    if *x.method != Method::GET {
        return Storable::No("method");
    }
    let status = x.status.as_u16();
    // Final statuses only; partial content and 304s are never stored as such.
    if status < 200 || status == 206 || status == 304 {
        return Storable::No("status");
    }
    let req = RequestDirectives::from_headers(x.request_headers);
    if req.no_store {
        return Storable::No("request no-store");
    }
    let (cc, targeted) = governing(x.headers, me);
    // §5.2.2.3: `must-understand` stores only statuses whose caching rules we know, and
    // then overrides `no-store`.
    let must_understand = cc.has("must-understand");
    if must_understand && x.status.canonical_reason().is_none() {
        return Storable::No("must-understand");
    }
    if cc.has("no-store") && !must_understand {
        return Storable::No("no-store");
    }
    if cc.has("private") {
        return Storable::No("private");
    }
    if vary_star(x.headers) {
        return Storable::No("vary *");
    }
    let s_maxage = cc.delta("s-maxage");
    let max_age = cc.delta("max-age");
    let public = cc.has("public");
    let must_revalidate = cc.has("must-revalidate");
    let shareable_with_auth = public || must_revalidate || s_maxage != Delta::Absent;
    if x.request_headers.contains_key(header::AUTHORIZATION) && !shareable_with_auth {
        return Storable::No("authorization");
    }
    let expires = if targeted { None } else { single_date(x.headers, &header::EXPIRES) };
    let explicit = s_maxage != Delta::Absent || max_age != Delta::Absent || expires.is_some();

    // The library's §3 rules, fed the governing directives in canonical form. It does not
    // know some final statuses that RFC 9111 lets a cache store with explicit freshness.
    if !library_storable(x, &cc, targeted) {
        let known = LIB_UNDERSTOOD.contains(&status);
        if known || !(explicit || public) {
            return Storable::No("not cacheable");
        }
    }

    let date = single_date(x.headers, &header::DATE).flatten().unwrap_or(x.response_time);
    let heuristic_ok = HEURISTIC_STATUSES.contains(&status) || public;
    let mut lifetime = match (s_maxage, max_age) {
        (Delta::Seconds(s), _) => Duration::from_secs(s),
        (Delta::Invalid, _) => Duration::ZERO,
        (Delta::Absent, Delta::Seconds(s)) => Duration::from_secs(s),
        (Delta::Absent, Delta::Invalid) => Duration::ZERO,
        (Delta::Absent, Delta::Absent) => match expires {
            Some(Some(e)) => e.duration_since(date).unwrap_or_default(),
            Some(None) => Duration::ZERO,
            None if !heuristic_ok => Duration::ZERO,
            None => match defaults.default_ttl {
                Some(ttl) => ttl,
                None => heuristic(x.headers, date),
            },
        },
    };
    // Surrogate-Control's `max-age=N+M`: M is how long it may be served stale on errors.
    let mut surrogate_grace = None;
    if targeted
        && max_age == Delta::Invalid
        && let Some((n, m)) = cc.value("max-age").and_then(|v| v.split_once('+'))
        && let (Delta::Seconds(n), Delta::Seconds(m)) = (parse_delta(n), parse_delta(m))
    {
        lifetime = Duration::from_secs(n);
        surrogate_grace = Some(Duration::from_secs(m));
    }
    if x.headers.contains_key(header::SET_COOKIE) && !explicit {
        // Storing a cookie for everyone on a guess would leak sessions.
        return Storable::No("set-cookie without explicit freshness");
    }

    let response_delay = x.response_time.duration_since(x.request_time).unwrap_or_default();
    let apparent_age = x.response_time.duration_since(date).unwrap_or_default();
    let initial_age = match age_value(x.headers) {
        None => apparent_age.max(response_delay),
        Some(Some(a)) => apparent_age.max(a + response_delay),
        Some(None) => {
            // §5.1 invalid Age: treat the response as stale.
            lifetime = Duration::ZERO;
            apparent_age
        }
    };
    let no_cache = cc.has("no-cache")
        || (!targeted && !x.headers.contains_key(header::CACHE_CONTROL) && pragma_no_cache(x.headers));
    let window = |name: &str, default: Duration| match cc.delta(name) {
        Delta::Seconds(s) => Duration::from_secs(s),
        _ => default,
    };
    let has_validators =
        x.headers.contains_key(header::ETAG) || x.headers.contains_key(header::LAST_MODIFIED);
    let f = Freshness {
        lifetime: lifetime.min(Duration::from_secs(DELTA_MAX)),
        initial_age,
        response_time: x.response_time,
        stale_while_revalidate: window("stale-while-revalidate", defaults.stale_while_revalidate),
        stale_if_error: surrogate_grace.unwrap_or_else(|| window("stale-if-error", defaults.stale_if_error)),
        must_revalidate: must_revalidate || cc.has("proxy-revalidate") || s_maxage != Delta::Absent,
        no_cache,
        shareable_with_auth,
        has_validators,
    };
    if f.keep_for(x.response_time).is_zero() {
        return Storable::No("never reusable");
    }
    Storable::Yes(f)
}

fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("no-cache")))
}

/// §4.2.2: 10% of the time since `Last-Modified`, capped.
fn heuristic(headers: &HeaderMap, date: SystemTime) -> Duration {
    match single_date(headers, &header::LAST_MODIFIED).flatten() {
        Some(lm) => (date.duration_since(lm).unwrap_or_default() / 10).min(HEURISTIC_CAP),
        None => Duration::ZERO,
    }
}

pub fn vary_star(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim() == "*"))
}

/// Asks `http-cache-semantics` about §3 with the governing directives in canonical form (it
/// matches directive names case-sensitively and knows nothing of targeted fields).
fn library_storable(x: &Exchange<'_>, cc: &Directives, targeted: bool) -> bool {
    let mut req = http::Request::new(());
    *req.method_mut() = x.method.clone();
    for name in [header::AUTHORIZATION, header::HOST] {
        if let Some(v) = x.request_headers.get(&name) {
            req.headers_mut().insert(name, v.clone());
        }
    }
    if RequestDirectives::from_headers(x.request_headers).no_store {
        req.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let mut res = http::Response::new(());
    *res.status_mut() = x.status;
    let canonical = canonical_cc(cc);
    if let Ok(v) = HeaderValue::from_str(&canonical)
        && !canonical.is_empty()
    {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    if !targeted && let Some(e) = x.headers.get(header::EXPIRES) {
        res.headers_mut().insert(header::EXPIRES, e.clone());
    }
    let opts = http_cache_semantics::CacheOptions { shared: true, ..Default::default() };
    http_cache_semantics::CachePolicy::new_options(&req, &res, x.response_time, opts).is_storable()
}

fn canonical_cc(cc: &Directives) -> String {
    let mut out = String::new();
    let must_understand = cc.has("must-understand");
    for d in cc.iter() {
        if d.name.is_empty() || (must_understand && d.name == "no-store") {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&d.name);
        if let Some(v) = &d.value
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !v.is_empty()
        {
            out.push('=');
            out.push_str(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn date(secs: u64) -> HeaderValue {
        HeaderValue::from_str(&httpdate::fmt_http_date(at(secs))).unwrap()
    }

    fn eval_with(
        status: u16,
        headers: &[(&str, HeaderValue)],
        req: &[(&str, &str)],
        d: &Defaults,
    ) -> Storable {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), v.clone());
        }
        let mut rh = HeaderMap::new();
        for (n, v) in req {
            rh.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        evaluate(
            &Exchange {
                method: &Method::GET,
                request_headers: &rh,
                status: StatusCode::from_u16(status).unwrap(),
                headers: &h,
                request_time: at(0),
                response_time: at(0),
            },
            d,
            "sumun",
        )
    }

    fn eval(status: u16, headers: &[(&str, HeaderValue)]) -> Storable {
        eval_with(status, headers, &[], &Defaults::default())
    }

    fn v(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    fn fresh(s: &Storable) -> Freshness {
        match s {
            Storable::Yes(f) => *f,
            Storable::No(r) => panic!("not storable: {r}"),
        }
    }

    #[test]
    fn s_maxage_wins_over_max_age_for_a_shared_cache() {
        let f = fresh(&eval(200, &[("cache-control", v("max-age=3600, s-maxage=10"))]));
        assert_eq!(f.lifetime, Duration::from_secs(10));
        assert!(f.must_revalidate, "s-maxage carries proxy-revalidate");
    }

    #[test]
    fn directive_names_are_case_insensitive() {
        assert_eq!(eval(200, &[("cache-control", v("max-age=60, nO-StOrE"))]), Storable::No("no-store"));
        assert_eq!(
            fresh(&eval(200, &[("cache-control", v("MaX-AgE=60"))])).lifetime,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn private_and_authorization() {
        assert_eq!(eval(200, &[("cache-control", v("private, max-age=60"))]), Storable::No("private"));
        let d = Defaults::default();
        let auth = [("authorization", "Bearer x")];
        assert_eq!(
            eval_with(200, &[("cache-control", v("max-age=60"))], &auth, &d),
            Storable::No("authorization")
        );
        for cc in ["max-age=60, public", "max-age=60, must-revalidate", "s-maxage=60"] {
            let f = fresh(&eval_with(200, &[("cache-control", HeaderValue::from_static(cc))], &auth, &d));
            assert!(f.shareable_with_auth, "{cc}");
        }
    }

    #[test]
    fn heuristics_only_for_heuristically_cacheable_statuses() {
        let lm = [("date", date(1000)), ("last-modified", date(0))];
        assert_eq!(fresh(&eval(200, &lm)).lifetime, Duration::from_secs(100));
        assert_eq!(fresh(&eval(404, &lm)).lifetime, Duration::from_secs(100));
        for s in [201, 202, 403, 502, 503, 504, 599] {
            assert!(
                matches!(eval(s, &lm), Storable::No(_)) || fresh(&eval(s, &lm)).lifetime.is_zero(),
                "{s}"
            );
        }
        let public = [("date", date(1000)), ("last-modified", date(0)), ("cache-control", v("public"))];
        assert_eq!(fresh(&eval(599, &public)).lifetime, Duration::from_secs(100));
    }

    #[test]
    fn default_ttl_replaces_the_heuristic() {
        let d = Defaults { default_ttl: Some(Duration::from_secs(30)), ..Default::default() };
        assert_eq!(fresh(&eval_with(200, &[], &[], &d)).lifetime, Duration::from_secs(30));
        assert_eq!(
            fresh(&eval_with(200, &[("cache-control", v("max-age=5"))], &[], &d)).lifetime,
            Duration::from_secs(5)
        );
        assert!(matches!(eval_with(500, &[], &[], &d), Storable::No(_)));
    }

    #[test]
    fn unknown_statuses_with_explicit_freshness_are_stored() {
        for s in [299, 400, 500, 502, 599] {
            assert_eq!(
                fresh(&eval(s, &[("cache-control", v("max-age=60"))])).lifetime,
                Duration::from_secs(60),
                "{s}"
            );
        }
        assert!(matches!(eval(206, &[("cache-control", v("max-age=60"))]), Storable::No(_)));
    }

    #[test]
    fn expires_minus_date() {
        let f = fresh(&eval(200, &[("date", date(0)), ("expires", date(100))]));
        assert_eq!(f.lifetime, Duration::from_secs(100));
        // Invalid Expires means already expired; max-age overrides Expires.
        assert!(matches!(eval(200, &[("expires", v("0"))]), Storable::No(_)));
        let f = fresh(&eval(200, &[("expires", v("0")), ("cache-control", v("max-age=9"))]));
        assert_eq!(f.lifetime, Duration::from_secs(9));
        // RFC 850 dates are HTTP-dates too.
        let f = fresh(&eval(
            200,
            &[
                ("date", v("Tue, 14 Nov 2023 22:13:20 GMT")),
                ("expires", v("Tuesday, 14-Nov-23 22:15:00 GMT")),
            ],
        ));
        assert_eq!(f.lifetime, Duration::from_secs(100));
    }

    #[test]
    fn age_is_corrected_and_invalid_age_means_stale() {
        let f = fresh(&eval(
            200,
            &[
                ("date", date(0)),
                ("cache-control", v("max-age=3600")),
                ("age", v("7200")),
                ("etag", v("\"a\"")),
            ],
        ));
        assert_eq!(f.initial_age, Duration::from_secs(7200));
        assert!(!f.is_fresh(at(0)));
        for bad in ["abc", "-1", "1.0", "0, 0", "0;x=1"] {
            let f = eval(
                200,
                &[
                    ("cache-control", v("max-age=3600")),
                    ("age", HeaderValue::from_static(bad)),
                    ("etag", v("\"a\"")),
                ],
            );
            assert!(!fresh(&f).is_fresh(at(0)), "{bad}");
        }
        let two = eval(
            200,
            &[("cache-control", v("max-age=3600")), ("age", v("0")), ("age", v("0")), ("etag", v("\"a\""))],
        );
        assert!(!fresh(&two).is_fresh(at(0)));
        // A Date in the past makes the response older than its Age field says.
        let f = fresh(&eval(200, &[("date", date(0)), ("cache-control", v("max-age=3600"))]));
        assert_eq!(f.age(at(10)), Duration::from_secs(10));
    }

    #[test]
    fn targeted_fields_override_cache_control() {
        let f = fresh(&eval(
            200,
            &[("cache-control", v("no-store")), ("surrogate-control", v("max-age=100;sumun"))],
        ));
        assert_eq!(f.lifetime, Duration::from_secs(100));
        assert_eq!(
            eval(200, &[("cache-control", v("max-age=100")), ("surrogate-control", v("no-store"))]),
            Storable::No("no-store")
        );
        // Aimed at someone else: Cache-Control governs.
        assert_eq!(
            eval(200, &[("cache-control", v("no-store")), ("surrogate-control", v("max-age=100;other"))]),
            Storable::No("no-store")
        );
        let f =
            fresh(&eval(200, &[("cache-control", v("max-age=5")), ("cdn-cache-control", v("max-age=50"))]));
        assert_eq!(f.lifetime, Duration::from_secs(50));
        let f = fresh(&eval(200, &[("surrogate-control", v("max-age=60+30"))]));
        assert_eq!((f.lifetime, f.stale_if_error), (Duration::from_secs(60), Duration::from_secs(30)));
    }

    #[test]
    fn set_cookie_needs_explicit_freshness() {
        assert!(matches!(
            eval(200, &[("set-cookie", v("a=1")), ("date", date(1000)), ("last-modified", date(0))]),
            Storable::No(_)
        ));
        assert!(matches!(
            eval(200, &[("set-cookie", v("a=1")), ("cache-control", v("max-age=60"))]),
            Storable::Yes(_)
        ));
    }

    #[test]
    fn request_directives_decide_use() {
        let f = fresh(&eval(
            200,
            &[
                ("date", date(0)),
                ("cache-control", v("max-age=100, stale-while-revalidate=50")),
                ("etag", v("\"x\"")),
            ],
        ));
        let r = |s: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(s));
            RequestDirectives::from_headers(&h)
        };
        let none = RequestDirectives::default();
        assert_eq!(usable(&f, at(10), &none), Usable::Fresh);
        assert_eq!(usable(&f, at(10), &r("max-age=5")), Usable::Revalidate);
        assert_eq!(usable(&f, at(10), &r("min-fresh=95")), Usable::Revalidate);
        assert_eq!(usable(&f, at(10), &r("no-cache")), Usable::Revalidate);
        assert_eq!(usable(&f, at(120), &none), Usable::StaleWhileRevalidate);
        assert_eq!(usable(&f, at(200), &none), Usable::Revalidate);
        assert_eq!(usable(&f, at(200), &r("max-stale")), Usable::StaleAccepted);
        assert_eq!(usable(&f, at(200), &r("max-stale=50")), Usable::Revalidate);
        assert_eq!(usable(&f, at(120), &r("max-stale=50")), Usable::StaleAccepted);
        let mut pragma = HeaderMap::new();
        pragma.insert(header::PRAGMA, v("no-cache"));
        assert!(RequestDirectives::from_headers(&pragma).no_cache);
    }

    #[test]
    fn must_revalidate_and_no_cache_forbid_stale() {
        let d = Defaults {
            stale_if_error: Duration::from_secs(600),
            stale_while_revalidate: Duration::from_secs(600),
            ..Default::default()
        };
        let mr = fresh(&eval_with(
            200,
            &[("date", date(0)), ("cache-control", v("max-age=10, must-revalidate"))],
            &[],
            &d,
        ));
        let none = RequestDirectives::default();
        assert_eq!(usable(&mr, at(20), &none), Usable::Revalidate);
        assert!(!mr.stale_if_error_ok(at(20), &none));
        let pr = fresh(&eval_with(
            200,
            &[("date", date(0)), ("cache-control", v("max-age=10, proxy-revalidate"))],
            &[],
            &d,
        ));
        assert_eq!(usable(&pr, at(20), &none), Usable::Revalidate);
        let nc = fresh(&eval_with(200, &[("cache-control", v("no-cache")), ("etag", v("\"x\""))], &[], &d));
        assert_eq!(usable(&nc, at(0), &none), Usable::Revalidate);
        let plain = fresh(&eval_with(200, &[("date", date(0)), ("cache-control", v("max-age=10"))], &[], &d));
        assert_eq!(usable(&plain, at(20), &none), Usable::StaleWhileRevalidate);
        assert!(plain.stale_if_error_ok(at(500), &none));
        assert!(!plain.stale_if_error_ok(at(700), &none));
    }

    #[test]
    fn must_understand_refuses_unknown_statuses_and_overrides_no_store() {
        assert_eq!(
            eval(599, &[("cache-control", v("max-age=60, must-understand"))]),
            Storable::No("must-understand")
        );
        assert!(matches!(
            eval(200, &[("cache-control", v("max-age=60, must-understand, no-store"))]),
            Storable::Yes(_)
        ));
    }

    #[test]
    fn useless_responses_are_not_stored() {
        assert_eq!(eval(200, &[]), Storable::No("never reusable"));
        assert!(matches!(eval(200, &[("etag", v("\"a\""))]), Storable::Yes(_)));
        assert_eq!(
            eval(200, &[("cache-control", v("max-age=60")), ("vary", v("Foo, *"))]),
            Storable::No("vary *")
        );
    }
}
