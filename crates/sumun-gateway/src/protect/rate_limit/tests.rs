use super::*;
use crate::protect::redis::testing::RedisServer;

fn policy(key: RateKey, rate: (u32, u64), burst: u32, store: RateStore, fail_open: bool) -> RateLimitPolicy {
    RateLimitPolicy {
        name: "api".into(),
        key,
        requests: rate.0,
        per: Duration::from_secs(rate.1),
        burst,
        store,
        fail_open,
        ipv6_prefix: 128,
    }
}

fn identity(api_key: Option<&str>, claims: serde_json::Value) -> Identity {
    Identity {
        policy: Arc::from("users"),
        subject: "alice".into(),
        scopes: Vec::new(),
        claims: claims.as_object().cloned().unwrap_or_default(),
        issuer: None,
        jti: None,
        api_key: api_key.map(str::to_owned),
    }
}

fn input<'a>(headers: &'a HeaderMap, identity: Option<&'a Identity>, ip: Option<&str>) -> RateInput<'a> {
    RateInput { client_ip: ip.map(|i| i.parse().unwrap()), headers, identity, route: "orders" }
}

fn header<'a>(h: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_str().unwrap())
}

fn key(l: &Limiter, i: &RateInput<'_>) -> Option<Vec<u8>> {
    l.key_of(i).map(|k| k.to_vec())
}

#[test]
fn keys_are_read_from_the_request() {
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    let id = identity(Some("ci"), serde_json::json!({"org": "o1", "n": 42, "flag": true, "list": ["a"]}));
    let no_key = identity(None, serde_json::json!({}));
    let l = |k: RateKey| Limiter::new(&policy(k, (10, 1), 10, RateStore::Local, false), None, None);

    let ip = l(RateKey::ClientIp);
    assert_eq!(key(&ip, &input(&headers, None, Some("10.0.0.1"))), Some(b"10.0.0.1".to_vec()));
    assert_eq!(
        key(&ip, &input(&headers, None, Some("::ffff:10.0.0.1"))),
        Some(b"10.0.0.1".to_vec()),
        "an IPv4-mapped address is the IPv4 client"
    );
    assert_eq!(key(&ip, &input(&headers, None, None)), None, "no address: the shared bucket");
    for v6 in ["::1", "2001:db8:85a3:1234:5678:8a2e:370:7334", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"] {
        assert_eq!(key(&ip, &input(&headers, None, Some(v6))), Some(v6.as_bytes().to_vec()), "{v6}");
    }

    // IPv6 clients by their /64 (the default) or any other prefix.
    let mut p = policy(RateKey::ClientIp, (10, 1), 10, RateStore::Local, false);
    p.ipv6_prefix = 64;
    let by64 = Limiter::new(&p, None, None);
    let a = key(&by64, &input(&headers, None, Some("2001:db8:85a3:1234:5678:8a2e:370:7334")));
    let b = key(&by64, &input(&headers, None, Some("2001:db8:85a3:1234::1")));
    let other = key(&by64, &input(&headers, None, Some("2001:db8:85a3:1235::1")));
    assert_eq!(a, Some(b"2001:db8:85a3:1234::".to_vec()));
    assert_eq!(a, b, "one /64, one bucket");
    assert_ne!(a, other, "the next /64 is another client");
    assert_eq!(
        key(&by64, &input(&headers, None, Some("10.0.0.1"))),
        Some(b"10.0.0.1".to_vec()),
        "IPv4 untouched"
    );
    p.ipv6_prefix = 48;
    let by48 = Limiter::new(&p, None, None);
    assert_eq!(
        key(&by48, &input(&headers, None, Some("2001:db8:85a3:1234::1"))),
        Some(b"2001:db8:85a3::".to_vec())
    );
    p.ipv6_prefix = 1;
    let by1 = Limiter::new(&p, None, None);
    assert_eq!(key(&by1, &input(&headers, None, Some("ffff::1"))), Some(b"8000::".to_vec()));

    let h = l(RateKey::Header("x-tenant".into()));
    assert_eq!(key(&h, &input(&headers, None, None)), Some(b"acme".to_vec()));
    assert_eq!(key(&h, &input(&HeaderMap::new(), None, None)), None);

    let claim = |c: &str| l(RateKey::JwtClaim(c.into()));
    assert_eq!(key(&claim("org"), &input(&headers, Some(&id), None)), Some(b"o1".to_vec()));
    assert_eq!(key(&claim("n"), &input(&headers, Some(&id), None)), Some(b"42".to_vec()));
    assert_eq!(key(&claim("flag"), &input(&headers, Some(&id), None)), None, "only strings and numbers");
    assert_eq!(key(&claim("list"), &input(&headers, Some(&id), None)), None);
    assert_eq!(key(&claim("missing"), &input(&headers, Some(&id), None)), None);
    assert_eq!(key(&claim("org"), &input(&headers, None, None)), None);

    let ak = l(RateKey::ApiKey);
    assert_eq!(key(&ak, &input(&headers, Some(&id), None)), Some(b"ci".to_vec()));
    assert_eq!(key(&ak, &input(&headers, Some(&no_key), None)), Some(b"alice".to_vec()), "else the subject");
    assert_eq!(key(&ak, &input(&headers, None, None)), None);

    assert_eq!(key(&l(RateKey::Route), &input(&headers, None, None)), Some(b"orders".to_vec()));
}

#[test]
fn header_formatting() {
    assert_eq!(sf_string("per-client"), "\"per-client\"");
    assert_eq!(sf_string("a\"b\\c\u{e9}"), "\"a\\\"b\\\\c?\"");
    assert_eq!(advertised_quota(100, Duration::from_secs(1)), (100, 1));
    assert_eq!(advertised_quota(6000, Duration::from_secs(60)), (6000, 60));
    assert_eq!(advertised_quota(10, Duration::from_millis(100)), (100, 1));
    assert_eq!(advertised_quota(10, Duration::from_millis(1500)), (13, 2));
    assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
    assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
    assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    assert_eq!(ceil_secs(Duration::ZERO), 0);
}

/// A local limit: the burst passes with decreasing `r`, then 429 with `Retry-After` and both
/// headers.
#[tokio::test]
async fn local_limit_answers_with_headers_then_429() {
    // 1 per minute, 3 at once.
    let l = Limiter::new(&policy(RateKey::ClientIp, (1, 60), 3, RateStore::Local, false), None, None);
    let h = HeaderMap::new();
    let i = input(&h, None, Some("192.0.2.1"));
    for r in (0..3).rev() {
        let hs = l.check(&i).await.unwrap();
        assert_eq!(header(&hs, "ratelimit-policy"), Some("\"api\";q=1;w=60"));
        let t = 60 * (3 - r);
        assert_eq!(header(&hs, "ratelimit"), Some(format!("\"api\";r={r};t={t}").as_str()));
    }
    let rej = l.check(&i).await.unwrap_err();
    assert_eq!(rej.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(rej.reason, "rate_limited");
    let retry: u64 = header(&rej.headers, "retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&rej.headers, "ratelimit-policy"), Some("\"api\";q=1;w=60"));
    let state = header(&rej.headers, "ratelimit").unwrap();
    assert!(state.starts_with("\"api\";r=0;t=1"), "{state}");
    // Another client is not affected.
    assert!(l.check(&input(&h, None, Some("192.0.2.2"))).await.is_ok());
}

/// Reload with an unchanged policy keeps the counts; a changed quota starts fresh.
#[tokio::test]
async fn reload_keeps_local_state_when_the_policy_is_unchanged() {
    let p = policy(RateKey::Route, (1, 60), 1, RateStore::Local, false);
    let h = HeaderMap::new();
    let i = input(&h, None, None);
    let first = Limiter::new(&p, None, None);
    assert!(first.check(&i).await.is_ok());
    let same = Limiter::new(&p, None, Some(&first));
    assert!(same.check(&i).await.is_err(), "state carried over");
    let mut changed = p.clone();
    changed.burst = 2;
    let fresh = Limiter::new(&changed, None, Some(&same));
    assert!(fresh.check(&i).await.is_ok(), "a new quota starts with a full bucket");
}

fn redis_cfg(url: String) -> sumun_config::Redis {
    sumun_config::Redis {
        url: sumun_config::Secret(url),
        timeout: Duration::from_secs(1),
        retry_after: Duration::from_secs(5),
    }
}

fn closed_port_redis() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    Redis::new(&redis_cfg(format!("redis://127.0.0.1:{port}"))).unwrap()
}

#[tokio::test]
async fn redis_down_fail_open_lets_everything_through() {
    let l = Limiter::new(
        &policy(RateKey::Route, (1, 60), 1, RateStore::Redis, true),
        Some(closed_port_redis()),
        None,
    );
    let h = HeaderMap::new();
    for _ in 0..5 {
        let hs = l.check(&input(&h, None, None)).await.unwrap();
        assert!(hs.is_empty(), "failing open advertises no budget");
    }
}

#[tokio::test]
async fn redis_down_fail_closed_uses_the_local_limit() {
    let l = Limiter::new(
        &policy(RateKey::Route, (1, 60), 2, RateStore::Redis, false),
        Some(closed_port_redis()),
        None,
    );
    let h = HeaderMap::new();
    assert!(l.check(&input(&h, None, None)).await.is_ok());
    assert!(l.check(&input(&h, None, None)).await.is_ok());
    let rej = l.check(&input(&h, None, None)).await.unwrap_err();
    assert_eq!(rej.status, StatusCode::TOO_MANY_REQUESTS);
}

/// Two limiters (two instances) on one Redis share the budget; with Redis killed they fall
/// back, and when it is back the shared budget applies again.
#[tokio::test]
async fn redis_store_is_global_and_survives_an_outage() {
    let mut server = RedisServer::start();
    let p = policy(RateKey::Header("x-user".into()), (1, 60), 3, RateStore::Redis, false);
    let mk = || {
        let mut cfg = redis_cfg(server.url());
        cfg.retry_after = Duration::from_millis(100);
        Limiter::new(&p, Some(Redis::new(&cfg).unwrap()), None)
    };
    let (a, b) = (mk(), mk());
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("u1"));
    let i = input(&h, None, None);
    // `t` counts down from the first request (Redis time): allow a slow machine a second.
    let hs = a.check(&i).await.unwrap();
    let state = header(&hs, "ratelimit").unwrap();
    assert!(["\"api\";r=2;t=60", "\"api\";r=2;t=59"].contains(&state), "{state}");
    assert!(b.check(&i).await.is_ok());
    let hs = a.check(&i).await.unwrap();
    let state = header(&hs, "ratelimit").unwrap();
    assert!(["\"api\";r=0;t=180", "\"api\";r=0;t=179"].contains(&state), "{state}");
    let rej = b.check(&i).await.unwrap_err();
    let retry: u64 = header(&rej.headers, "retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "retry-after {retry}");

    server.kill();
    // Fallback: each instance's local bucket (3 at once) applies.
    let passed = {
        let mut n = 0;
        for _ in 0..10 {
            n += usize::from(a.check(&i).await.is_ok());
        }
        n
    };
    assert_eq!(passed, 3, "the local fallback enforces the same quota");

    server.restart();
    // A fresh Redis knows no TATs: the global budget of 3 applies again once reconnected.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(120)).await;
        let (ga, gb) = (a.global.as_ref().unwrap(), b.global.as_ref().unwrap());
        if ga.check(Some(b"probe")).await.is_ok() && gb.check(Some(b"probe")).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "Redis not used again after its restart");
    }
    let mut results = Vec::new();
    for l in [&a, &b, &a, &b, &a] {
        results.push(l.check(&i).await.is_ok());
    }
    assert_eq!(results, [true, true, true, false, false], "the shared budget of 3");
}
