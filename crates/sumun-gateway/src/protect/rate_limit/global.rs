//! The global GCRA store in Redis, shared by every instance: one `EVALSHA` per request (the
//! multiplexed connection pipelines concurrent ones). The script reads the key's theoretical
//! arrival time (TAT), decides, stores the new TAT with an expiry, and answers. It takes the
//! time from Redis (`TIME`), so the instances' clocks never matter.

use std::sync::LazyLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::Decision;
use super::local::Gcra;
use crate::protect::redis::{Redis, RedisError};

/// KEYS[1]: the bucket. ARGV[1]: the emission interval in µs (the cost of one request).
/// ARGV[2]: the capacity in µs (burst × interval). Returns
/// `{allowed (0|1), remaining, retry_after_ms, reset_ms}`. TATs are µs since the epoch: below
/// 2^53, exact in Lua numbers; written with `%.0f` because Lua's default number format keeps
/// only 14 digits.
const GCRA_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - capacity
if allow_at > now then
  return {0, 0, math.ceil((allow_at - now) / 1000), math.ceil((tat - now) / 1000)}
end
local ttl = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
return {1, math.floor((now + capacity - new_tat) / interval), 0, ttl}
";

static GCRA_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA_LUA));

/// Keys longer than this are stored as a digest.
const MAX_RAW_KEY: usize = 64;

pub(super) struct GlobalStore {
    redis: Redis,
    /// `sumun:rl:POLICY`.
    prefix: Vec<u8>,
    interval_us: Vec<u8>,
    capacity_us: Vec<u8>,
}

impl GlobalStore {
    pub fn new(redis: Redis, policy: &str, gcra: Gcra) -> Self {
        let interval = u64::try_from(gcra.interval.as_micros()).unwrap_or(u64::MAX).max(1);
        let capacity = interval.saturating_mul(u64::from(gcra.burst));
        GlobalStore {
            redis,
            prefix: format!("sumun:rl:{policy}").into_bytes(),
            interval_us: interval.to_string().into_bytes(),
            capacity_us: capacity.to_string().into_bytes(),
        }
    }

    pub async fn check(&self, key: Option<&[u8]>) -> Result<Decision, RedisError> {
        let k = redis_key(&self.prefix, key);
        let (allowed, remaining, retry_ms, reset_ms): (i64, i64, i64, i64) =
            self.redis.script(&GCRA_SCRIPT, &[&k], &[&self.interval_us, &self.capacity_us]).await?;
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        Ok(Decision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(if remaining < 0 { 0 } else { u32::MAX }),
            retry_after: ms(retry_ms),
            reset: ms(reset_ms),
        })
    }
}

/// `PREFIX:KEY`; requests without a key share `PREFIX` itself. A key longer than 64 bytes, or
/// one starting with `#`, becomes `#` + 32 hex digits of its SHA-256, so Redis keys stay short
/// and a raw key can never equal a digest.
pub(super) fn redis_key(prefix: &[u8], key: Option<&[u8]>) -> Vec<u8> {
    let Some(key) = key else { return prefix.to_vec() };
    let mut out = Vec::with_capacity(prefix.len() + 1 + MAX_RAW_KEY);
    out.extend_from_slice(prefix);
    out.push(b':');
    if key.len() <= MAX_RAW_KEY && key.first() != Some(&b'#') {
        out.extend_from_slice(key);
    } else {
        out.push(b'#');
        for b in &Sha256::digest(key)[..16] {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protect::redis::testing::RedisServer;

    #[test]
    fn keys_are_prefixed_short_and_unambiguous() {
        let p = b"sumun:rl:api";
        assert_eq!(redis_key(p, None), b"sumun:rl:api");
        assert_eq!(redis_key(p, Some(b"")), b"sumun:rl:api:");
        assert_eq!(redis_key(p, Some(b"10.0.0.1")), b"sumun:rl:api:10.0.0.1");
        let long = vec![b'x'; 65];
        let h = redis_key(p, Some(&long));
        assert_eq!(h.len(), p.len() + 2 + 32);
        assert!(h.starts_with(b"sumun:rl:api:#"));
        assert_ne!(redis_key(p, Some(&[b'x'; 66])), h);
        let hashed_tail = h[p.len() + 1..].to_vec();
        assert_ne!(redis_key(p, Some(&hashed_tail)), h, "a key that looks like a digest is digested too");
        assert_eq!(redis_key(p, Some(&[b'x'; 64])).len(), p.len() + 1 + 64);
    }

    fn store(server: &RedisServer, requests: u32, per: Duration, burst: u32) -> GlobalStore {
        let cfg = sumun_config::Redis {
            url: sumun_config::Secret(server.url()),
            timeout: Duration::from_secs(2),
            retry_after: Duration::from_millis(200),
        };
        GlobalStore::new(Redis::new(&cfg).unwrap(), "t", Gcra::new(requests, per, burst))
    }

    #[tokio::test]
    async fn script_enforces_burst_and_rate() {
        let server = RedisServer::start();
        // 1 per 2 s, 3 at once: the test takes well under one interval (bounds allow 1 s).
        let s = store(&server, 1, Duration::from_secs(2), 3);
        for i in 0..3u32 {
            let d = s.check(Some(b"k")).await.unwrap();
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 2 - i);
            let reset = d.reset.as_millis();
            let want = 2000 * u128::from(3 - d.remaining);
            assert!(reset <= want && reset + 1000 >= want, "reset {reset} ms, want ~{want}");
        }
        let d = s.check(Some(b"k")).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        let retry = d.retry_after.as_millis();
        assert!((1000..=2000).contains(&retry), "retry_after {retry} ms");
        let reset = d.reset.as_millis();
        assert!((5000..=6000).contains(&reset), "reset {reset} ms");
        assert!(s.check(Some(b"other")).await.unwrap().allowed, "keys are separate");
        assert!(s.check(None).await.unwrap().allowed);
        // The TAT is stored with an expiry: when it passes the key is as new.
        let ttl: i64 = s.redis.query(redis::cmd("PTTL").arg("sumun:rl:t:k")).await.unwrap();
        assert!((5000..=6000).contains(&ttl), "pttl {ttl}");
    }

    #[tokio::test]
    async fn script_refills_one_per_interval() {
        let server = RedisServer::start();
        // 1 per 100 ms, burst 1.
        let s = store(&server, 10, Duration::from_secs(1), 1);
        assert!(s.check(Some(b"k")).await.unwrap().allowed);
        let d = s.check(Some(b"k")).await.unwrap();
        assert!(!d.allowed);
        tokio::time::sleep(d.retry_after + Duration::from_millis(5)).await;
        assert!(s.check(Some(b"k")).await.unwrap().allowed, "one interval later one passes");
    }
}
