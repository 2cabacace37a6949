//! The shared store on `[redis]`: one key per (route, subject, key), holding either the
//! in-flight marker or the record, both encoded by `record.rs`. Each transition is one Lua
//! script, so claiming is `SET NX` (or reading what holds the key) in one step, and completing
//! or releasing touches the key only while it still holds our marker.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;

use super::memory::{Claimed, Key};
use super::record::{Fingerprint, Record, Slot};
use crate::protect::redis::Redis;

/// Claims the key, or returns what holds it. KEYS[1] = key; ARGV = marker, lifetime (ms).
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])",
    )
});

/// Replaces our marker with the record. ARGV = marker, record, ttl (ms).
static COMPLETE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0",
    )
});

/// Deletes our marker. ARGV = marker.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0",
    )
});

/// Starts our marker's lifetime over. ARGV = marker, lifetime (ms).
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0",
    )
});

const PREFIX: &[u8] = b"sumun:idem:";

#[derive(Clone)]
pub struct RedisStore {
    redis: Redis,
}

impl RedisStore {
    pub fn new(redis: Redis) -> Self {
        RedisStore { redis }
    }

    /// Err when Redis is unavailable or holds a value we cannot read: the request is refused.
    pub async fn claim(
        &self,
        key: &Key,
        token: &Bytes,
        fingerprint: Fingerprint,
        lifetime: Duration,
    ) -> Result<Claimed, ()> {
        let marker = Slot::InFlight { token: token.clone(), fingerprint }.encode();
        let found: Option<Vec<u8>> = self
            .redis
            .script(&CLAIM, &[&redis_key(key)], &[&marker, millis(lifetime).as_bytes()])
            .await
            .map_err(|e| tracing::warn!(error = %e, "idempotency: cannot claim a key"))?;
        match found {
            None => Ok(Claimed::Won),
            Some(v) => match Slot::decode(&v) {
                Some(slot) => Ok(Claimed::Taken(slot)),
                None => {
                    tracing::warn!(
                        "idempotency: a stored value is unreadable; refusing the key until it expires"
                    );
                    Err(())
                }
            },
        }
    }

    /// True when the record was written.
    pub async fn complete(&self, key: &Key, token: &Bytes, record: &Arc<Record>, ttl: Duration) -> bool {
        let marker = Slot::InFlight { token: token.clone(), fingerprint: record.fingerprint }.encode();
        let value = Slot::Done(record.clone()).encode();
        let res: Result<i64, _> = self
            .redis
            .script(&COMPLETE, &[&redis_key(key)], &[&marker, &value, millis(ttl).as_bytes()])
            .await;
        match res {
            Ok(n) => n == 1,
            Err(e) => {
                tracing::warn!(error = %e, "idempotency: cannot store a record; the key stays in flight until its marker expires");
                false
            }
        }
    }

    /// True while the marker is ours (its lifetime started over); false when it is not, or
    /// Redis could not be asked (the next renewal tries again).
    pub async fn renew(
        &self,
        key: &Key,
        token: &Bytes,
        fingerprint: Fingerprint,
        lifetime: Duration,
    ) -> Option<bool> {
        let marker = Slot::InFlight { token: token.clone(), fingerprint }.encode();
        let res: Result<i64, _> =
            self.redis.script(&RENEW, &[&redis_key(key)], &[&marker, millis(lifetime).as_bytes()]).await;
        match res {
            Ok(n) => Some(n == 1),
            Err(e) => {
                tracing::warn!(error = %e, "idempotency: cannot renew an in-flight marker");
                None
            }
        }
    }

    pub async fn release(&self, key: &Key, token: &Bytes, fingerprint: Fingerprint) {
        let marker = Slot::InFlight { token: token.clone(), fingerprint }.encode();
        let res: Result<i64, _> = self.redis.script(&RELEASE, &[&redis_key(key)], &[&marker]).await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "idempotency: cannot release a key; it stays in flight until its marker expires");
        }
    }
}

fn redis_key(key: &Key) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut k = Vec::with_capacity(PREFIX.len() + 64);
    k.extend_from_slice(PREFIX);
    for b in key {
        k.push(HEX[usize::from(b >> 4)]);
        k.push(HEX[usize::from(b & 0xf)]);
    }
    k
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}
