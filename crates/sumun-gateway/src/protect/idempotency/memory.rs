//! The in-process store: one moka map holds both the in-flight markers and the records, each
//! with its own lifetime, bounded to `max_keys` entries. Every transition is one
//! `and_compute_with` on the key, which moka serializes per key, so claiming is an atomic
//! insert-if-absent and only the claim's owner can complete or release it.
//!
//! Entries are weighed in units of `WEIGHT_UNIT` bytes of record (a marker or a small record
//! weighs 1) against a capacity of `max_keys`: at most `max_keys` keys, and at most about
//! `max_keys × 4 KiB` of records however large the responses, rather than `max_keys ×
//! max_body`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::ops::compute::{CompResult, Op};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::record::{Fingerprint, Record, Slot};

/// The store key: SHA-256 of the route, the authenticated subject and the client's key.
pub type Key = [u8; 32];

#[derive(Clone)]
struct Entry {
    slot: Slot,
    lifetime: Duration,
}

/// Each entry expires after its own lifetime, counted from its last write: a marker lives
/// for the in-flight limit, a record for the route's `ttl`.
struct Lifetimes;

impl moka::Expiry<Key, Entry> for Lifetimes {
    fn expire_after_create(&self, _key: &Key, value: &Entry, _created_at: Instant) -> Option<Duration> {
        Some(value.lifetime)
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Entry,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.lifetime)
    }
}

pub struct MemoryStore {
    cache: Cache<Key, Entry>,
    max_keys: u64,
}

/// What a claim found.
pub enum Claimed {
    /// The key was free and is now marked in flight under our token.
    Won,
    /// Someone else holds the key: a marker or a finished record.
    Taken(Slot),
}

/// Stores of live routes by route name, so a reload that rebuilds a route keeps its records
/// (a retry after a reload must still be answered from the record). Dead entries are pruned
/// whenever a store is looked up.
static SHARED: LazyLock<Mutex<HashMap<String, Weak<MemoryStore>>>> = LazyLock::new(Default::default);

impl MemoryStore {
    pub fn new(max_keys: u64) -> Self {
        // LRU, not TinyLFU: every key is new and used about once, and frequency-based
        // admission would refuse new markers once the map is full, leaving new keys
        // unprotected. The oldest records go first.
        let cache = Cache::builder()
            .max_capacity(max_keys)
            .weigher(weight)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(Lifetimes)
            .build();
        MemoryStore { cache, max_keys }
    }

    /// The store of route `route`: the one a previous configuration built when it is still
    /// alive and has the same capacity, else a new one.
    pub fn shared(route: &str, max_keys: u64) -> Arc<MemoryStore> {
        let mut map = SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(store) = map.get(route).and_then(Weak::upgrade)
            && store.max_keys == max_keys
        {
            return store;
        }
        let store = Arc::new(MemoryStore::new(max_keys));
        map.insert(route.to_owned(), Arc::downgrade(&store));
        store
    }

    /// Marks `key` in flight under `token` unless it holds something already.
    pub fn claim(&self, key: Key, token: &Bytes, fingerprint: Fingerprint, lifetime: Duration) -> Claimed {
        let res = self.cache.entry(key).and_compute_with(|cur| match cur {
            Some(_) => Op::Nop,
            None => Op::Put(Entry { slot: Slot::InFlight { token: token.clone(), fingerprint }, lifetime }),
        });
        match res {
            CompResult::Unchanged(e) => Claimed::Taken(e.into_value().slot),
            _ => Claimed::Won,
        }
    }

    /// Replaces our marker with the record; false when the marker is no longer ours (it
    /// expired and someone else claimed the key).
    pub fn complete(&self, key: Key, token: &Bytes, record: Arc<Record>, ttl: Duration) -> bool {
        let res = self.cache.entry(key).and_compute_with(|cur| match cur {
            Some(e) if owns(&e.value().slot, token) => {
                Op::Put(Entry { slot: Slot::Done(record), lifetime: ttl })
            }
            _ => Op::Nop,
        });
        matches!(res, CompResult::ReplacedWith(_))
    }

    /// Starts our marker's lifetime over; false when it is no longer ours.
    pub fn renew(&self, key: Key, token: &Bytes) -> bool {
        let res = self.cache.entry(key).and_compute_with(|cur| match cur {
            Some(e) if owns(&e.value().slot, token) => Op::Put(e.into_value()),
            _ => Op::Nop,
        });
        matches!(res, CompResult::ReplacedWith(_))
    }

    /// Removes our marker, if it is still ours.
    pub fn release(&self, key: Key, token: &Bytes) {
        self.cache.entry(key).and_compute_with(|cur| match cur {
            Some(e) if owns(&e.value().slot, token) => Op::Remove,
            _ => Op::Nop,
        });
    }

    #[cfg(test)]
    pub fn get(&self, key: &Key) -> Option<Slot> {
        self.cache.get(key).map(|e| e.slot)
    }
}

/// Bytes of record per unit of weight.
const WEIGHT_UNIT: usize = 4096;

fn weight(_key: &Key, e: &Entry) -> u32 {
    match &e.slot {
        Slot::InFlight { .. } => 1,
        Slot::Done(r) => {
            let fields: usize = r.headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
            let trailers: usize =
                r.trailers.iter().flat_map(|t| t.iter()).map(|(n, v)| n.as_str().len() + v.len()).sum();
            u32::try_from((r.body.len() + fields + trailers) / WEIGHT_UNIT + 1).unwrap_or(u32::MAX)
        }
    }
}

fn owns(slot: &Slot, token: &Bytes) -> bool {
    matches!(slot, Slot::InFlight { token: t, .. } if t == token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};

    fn record(fp: Fingerprint) -> Arc<Record> {
        Arc::new(Record {
            fingerprint: fp,
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"made"),
            trailers: None,
        })
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn claim_is_exclusive_until_released() {
        let s = MemoryStore::new(100);
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        assert!(matches!(s.claim([1; 32], &a, [9; 32], LONG), Claimed::Won));
        let Claimed::Taken(Slot::InFlight { fingerprint, .. }) = s.claim([1; 32], &b, [8; 32], LONG) else {
            panic!("second claim must find the marker")
        };
        assert_eq!(fingerprint, [9; 32]);
        // Only the owner releases.
        s.release([1; 32], &b);
        assert!(s.get(&[1; 32]).is_some());
        s.release([1; 32], &a);
        assert!(s.get(&[1; 32]).is_none());
        assert!(matches!(s.claim([1; 32], &b, [8; 32], LONG), Claimed::Won));
    }

    #[test]
    fn complete_needs_the_marker() {
        let s = MemoryStore::new(100);
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        assert!(!s.complete([2; 32], &a, record([9; 32]), LONG), "no marker, nothing stored");
        assert!(s.get(&[2; 32]).is_none());
        assert!(matches!(s.claim([2; 32], &a, [9; 32], LONG), Claimed::Won));
        assert!(!s.complete([2; 32], &b, record([9; 32]), LONG), "someone else's marker");
        assert!(s.complete([2; 32], &a, record([9; 32]), LONG));
        let Claimed::Taken(Slot::Done(r)) = s.claim([2; 32], &b, [9; 32], LONG) else {
            panic!("record expected")
        };
        assert_eq!(r.body, Bytes::from_static(b"made"));
        // A record is not released by its former owner.
        s.release([2; 32], &a);
        assert!(matches!(s.get(&[2; 32]), Some(Slot::Done(_))));
    }

    #[test]
    fn entries_expire_after_their_own_lifetime() {
        let s = MemoryStore::new(100);
        let a = Bytes::from_static(b"a");
        assert!(matches!(s.claim([3; 32], &a, [9; 32], Duration::from_millis(50)), Claimed::Won));
        assert!(matches!(s.claim([4; 32], &a, [9; 32], LONG), Claimed::Won));
        assert!(s.complete([4; 32], &a, record([9; 32]), Duration::from_millis(50)));
        assert!(matches!(s.claim([5; 32], &a, [9; 32], LONG), Claimed::Won));
        assert!(s.complete([5; 32], &a, record([9; 32]), LONG));
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.get(&[3; 32]).is_some() || s.get(&[4; 32]).is_some() {
            assert!(Instant::now() < deadline, "entries did not expire");
            std::thread::sleep(Duration::from_millis(10));
        }
        // An expired marker or record no longer blocks a claim; the long-lived record stays.
        let b = Bytes::from_static(b"b");
        assert!(matches!(s.claim([3; 32], &b, [9; 32], LONG), Claimed::Won));
        assert!(matches!(s.claim([4; 32], &b, [9; 32], LONG), Claimed::Won));
        assert!(matches!(s.claim([5; 32], &b, [9; 32], LONG), Claimed::Taken(Slot::Done(_))));
    }

    #[test]
    fn max_keys_bounds_the_map() {
        let s = MemoryStore::new(10);
        let a = Bytes::from_static(b"a");
        for i in 0..200u8 {
            let mut k = [0; 32];
            k[0] = i;
            s.claim(k, &a, [0; 32], LONG);
        }
        s.cache.run_pending_tasks();
        assert!(s.cache.entry_count() <= 10, "{} entries", s.cache.entry_count());
    }

    #[test]
    fn large_records_weigh_more() {
        let s = MemoryStore::new(10);
        let a = Bytes::from_static(b"a");
        for i in 0..20u8 {
            let mut k = [0; 32];
            k[0] = i;
            s.claim(k, &a, [0; 32], LONG);
            let mut r = (*record([0; 32])).clone();
            r.body = Bytes::from(vec![b'x'; 3 * WEIGHT_UNIT]);
            s.complete(k, &a, Arc::new(r), LONG);
        }
        s.cache.run_pending_tasks();
        // Each record weighs 4: at most two fit in a capacity of 10.
        assert!(s.cache.entry_count() <= 2, "{} entries", s.cache.entry_count());
        assert!(s.cache.weighted_size() <= 10);
    }

    #[test]
    fn a_full_store_admits_new_keys() {
        let s = MemoryStore::new(50);
        let a = Bytes::from_static(b"a");
        let key = |i: u16| {
            let mut k = [0; 32];
            k[..2].copy_from_slice(&i.to_be_bytes());
            k
        };
        for i in 0..500 {
            assert!(matches!(s.claim(key(i), &a, [0; 32], LONG), Claimed::Won));
            assert!(s.complete(key(i), &a, record([0; 32]), LONG));
            s.cache.run_pending_tasks();
            // The newest record is kept; the oldest make room.
            assert!(matches!(s.get(&key(i)), Some(Slot::Done(_))), "record {i} was not admitted");
        }
        assert!(s.get(&key(0)).is_none());
    }

    #[test]
    fn shared_store_survives_a_rebuild_while_alive() {
        let first = MemoryStore::shared("memory-test-route", 100);
        let again = MemoryStore::shared("memory-test-route", 100);
        assert!(Arc::ptr_eq(&first, &again));
        let resized = MemoryStore::shared("memory-test-route", 50);
        assert!(!Arc::ptr_eq(&first, &resized));
        drop((first, again, resized));
        let fresh = MemoryStore::shared("memory-test-route", 100);
        assert_eq!(Arc::strong_count(&fresh), 1);
    }
}
