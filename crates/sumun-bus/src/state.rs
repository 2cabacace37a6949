//! The in-memory bookkeeping of one subscription: which messages it holds between its
//! cursor and their acknowledgement, in what state, and which may be delivered next.
//!
//! Invariants (checked by the tests below):
//! - `due` holds exactly the waiting entries that are eligible: with per-key ordering, an
//!   entry with a key is eligible only while it is the lowest (partition, offset) pending
//!   for that key, so a key's messages go one at a time, in offset order, and a key whose
//!   head keeps failing holds back only its own later messages;
//! - `leases` holds exactly the leased entries, by expiry.
//!
//! No I/O here: the subscription task persists what changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::meta::PendingEntry;

/// (partition, offset)
pub type Pos = (u32, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// May be delivered from `entry.due_ms` on (if eligible).
    Waiting,
    /// A push delivery attempt is running.
    InFlight,
    /// Pulled by a consumer until `entry.due_ms`; `entry.lease` is its nonce.
    Leased,
    /// Attempts exhausted; being moved to the dead-letter topic.
    Dying,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub meta: PendingEntry,
    pub state: EntryState,
}

#[derive(Default)]
pub struct SubState {
    pub per_key: bool,
    pub entries: BTreeMap<Pos, Entry>,
    /// (due_ms, partition, offset) of eligible waiting entries.
    due: BTreeSet<(u64, u32, u64)>,
    /// (expiry_ms, partition, offset) of leased entries.
    leases: BTreeSet<(u64, u32, u64)>,
    /// Per-key ordering: every pending position of each key.
    keys: HashMap<u64, BTreeSet<Pos>>,
    /// Push attempts running.
    pub in_flight: usize,
}

impl SubState {
    pub fn new(per_key: bool) -> Self {
        SubState { per_key, ..Default::default() }
    }

    /// Messages held (pending in any state).
    pub fn held(&self) -> usize {
        self.entries.len()
    }

    pub fn leased(&self) -> usize {
        self.leases.len()
    }

    fn eligible(&self, pos: Pos, e: &Entry) -> bool {
        match (self.per_key, e.meta.key_hash) {
            (true, Some(h)) => self.keys.get(&h).and_then(|s| s.first()) == Some(&pos),
            _ => true,
        }
    }

    /// Adds an entry (read from the log, loaded at start, or redriven). An entry already
    /// held at `pos` is kept and false returned.
    pub fn insert(&mut self, pos: Pos, entry: Entry) -> bool {
        if self.entries.contains_key(&pos) {
            return false;
        }
        let previous_head = match (self.per_key, entry.meta.key_hash) {
            (true, Some(h)) => {
                let set = self.keys.entry(h).or_default();
                let head = set.first().copied();
                set.insert(pos);
                head
            }
            _ => None,
        };
        // A redriven entry can land before the key's current head: that head waits again.
        if let Some(old) = previous_head
            && old > pos
            && let Some(e) = self.entries.get(&old)
            && e.state == EntryState::Waiting
        {
            self.due.remove(&(e.meta.due_ms, old.0, old.1));
        }
        match entry.state {
            EntryState::Leased => {
                self.leases.insert((entry.meta.due_ms, pos.0, pos.1));
            }
            EntryState::InFlight => self.in_flight += 1,
            _ => {}
        }
        let waiting = entry.state == EntryState::Waiting;
        let due_ms = entry.meta.due_ms;
        self.entries.insert(pos, entry);
        if waiting && self.entries.get(&pos).is_some_and(|e| self.eligible(pos, e)) {
            self.due.insert((due_ms, pos.0, pos.1));
        }
        true
    }

    /// Removes a finished entry (acknowledged, dead-lettered, dropped) and lets the next
    /// message of its key become eligible.
    pub fn remove(&mut self, pos: Pos) -> Option<Entry> {
        let e = self.entries.remove(&pos)?;
        match e.state {
            EntryState::Waiting => {
                self.due.remove(&(e.meta.due_ms, pos.0, pos.1));
            }
            EntryState::Leased => {
                self.leases.remove(&(e.meta.due_ms, pos.0, pos.1));
            }
            EntryState::InFlight => self.in_flight = self.in_flight.saturating_sub(1),
            EntryState::Dying => {}
        }
        if self.per_key
            && let Some(h) = e.meta.key_hash
            && let Some(set) = self.keys.get_mut(&h)
        {
            let was_head = set.first() == Some(&pos);
            set.remove(&pos);
            let next = set.first().copied();
            if set.is_empty() {
                self.keys.remove(&h);
            }
            if was_head
                && let Some(next) = next
                && let Some(n) = self.entries.get(&next)
                && n.state == EntryState::Waiting
            {
                self.due.insert((n.meta.due_ms, next.0, next.1));
            }
        }
        Some(e)
    }

    /// Takes out of `due` up to `limit` eligible entries due by `now_ms`, earliest first.
    pub fn take_due(&mut self, now_ms: u64, limit: usize) -> Vec<Pos> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(&(due, p, o)) = self.due.first() else { break };
            if due > now_ms {
                break;
            }
            self.due.pop_first();
            out.push((p, o));
        }
        out
    }

    /// When the next waiting entry becomes due.
    pub fn next_due(&self) -> Option<u64> {
        self.due.first().map(|d| d.0)
    }

    /// When the next lease expires.
    pub fn next_lease_expiry(&self) -> Option<u64> {
        self.leases.first().map(|d| d.0)
    }

    /// Leases that ended by `now_ms`.
    pub fn expired_leases(&self, now_ms: u64) -> Vec<Pos> {
        self.leases.range(..=(now_ms, u32::MAX, u64::MAX)).map(|&(_, p, o)| (p, o)).collect()
    }

    /// A taken entry starts a push attempt.
    pub fn start_flight(&mut self, pos: Pos) -> Option<&mut Entry> {
        let e = self.entries.get_mut(&pos)?;
        e.state = EntryState::InFlight;
        e.meta.attempt += 1;
        self.in_flight += 1;
        Some(e)
    }

    /// A taken entry is leased to a puller until `until_ms`.
    pub fn lease(&mut self, pos: Pos, until_ms: u64, nonce: u64) -> Option<&mut Entry> {
        let e = self.entries.get_mut(&pos)?;
        if e.state == EntryState::Leased {
            self.leases.remove(&(e.meta.due_ms, pos.0, pos.1));
        }
        if e.state != EntryState::Leased {
            e.meta.attempt += 1;
        }
        e.state = EntryState::Leased;
        e.meta.due_ms = until_ms;
        e.meta.lease = Some(nonce);
        self.leases.insert((until_ms, pos.0, pos.1));
        Some(e)
    }

    /// Back to waiting, deliverable from `due_ms`.
    pub fn reschedule(&mut self, pos: Pos, due_ms: u64) -> Option<&Entry> {
        let (state, old_due) = {
            let e = self.entries.get(&pos)?;
            (e.state, e.meta.due_ms)
        };
        match state {
            EntryState::Waiting => {
                self.due.remove(&(old_due, pos.0, pos.1));
            }
            EntryState::Leased => {
                self.leases.remove(&(old_due, pos.0, pos.1));
            }
            EntryState::InFlight => self.in_flight = self.in_flight.saturating_sub(1),
            EntryState::Dying => {}
        }
        let eligible = {
            let e = self.entries.get(&pos)?;
            self.eligible(pos, e)
        };
        let e = self.entries.get_mut(&pos)?;
        e.state = EntryState::Waiting;
        e.meta.due_ms = due_ms;
        e.meta.lease = None;
        if eligible {
            self.due.insert((due_ms, pos.0, pos.1));
        }
        self.entries.get(&pos)
    }

    /// Marks an entry as being dead-lettered (it keeps its key's place meanwhile).
    pub fn dying(&mut self, pos: Pos) -> Option<&Entry> {
        let (state, old_due) = {
            let e = self.entries.get(&pos)?;
            (e.state, e.meta.due_ms)
        };
        match state {
            EntryState::Waiting => {
                self.due.remove(&(old_due, pos.0, pos.1));
            }
            EntryState::Leased => {
                self.leases.remove(&(old_due, pos.0, pos.1));
            }
            EntryState::InFlight => self.in_flight = self.in_flight.saturating_sub(1),
            EntryState::Dying => {}
        }
        let e = self.entries.get_mut(&pos)?;
        e.state = EntryState::Dying;
        e.meta.lease = None;
        self.entries.get(&pos)
    }

    /// Entries waiting for a retry (at least one attempt made).
    pub fn retries_scheduled(&self) -> usize {
        self.entries.values().filter(|e| e.state == EntryState::Waiting && e.meta.attempt > 0).count()
    }

    /// The oldest publish time held.
    pub fn oldest_published_ms(&self) -> Option<u64> {
        self.entries.values().map(|e| e.meta.published_ms).min()
    }

    #[cfg(test)]
    fn check(&self) {
        for (&pos, e) in &self.entries {
            let in_due = self.due.contains(&(e.meta.due_ms, pos.0, pos.1));
            assert_eq!(
                in_due,
                e.state == EntryState::Waiting && self.eligible(pos, e),
                "due of {pos:?}: {e:?}"
            );
            let in_leases = self.leases.contains(&(e.meta.due_ms, pos.0, pos.1));
            assert_eq!(in_leases, e.state == EntryState::Leased, "lease of {pos:?}");
        }
        assert_eq!(
            self.due.len(),
            self.entries
                .iter()
                .filter(|(p, e)| e.state == EntryState::Waiting && self.eligible(**p, e))
                .count()
        );
        let flying = self.entries.values().filter(|e| e.state == EntryState::InFlight).count();
        assert_eq!(self.in_flight, flying);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Source;

    fn waiting(key: Option<u64>, due_ms: u64) -> Entry {
        Entry {
            meta: PendingEntry {
                attempt: 0,
                due_ms,
                published_ms: 0,
                key_hash: key,
                source: Source::Topic,
                lease: None,
                history: vec![],
            },
            state: EntryState::Waiting,
        }
    }

    #[test]
    fn a_failing_key_blocks_only_itself() {
        let mut s = SubState::new(true);
        // Key 1 at offsets 0, 2; key 2 at 1, 3; no key at 4.
        for (o, k) in [(0, Some(1)), (1, Some(2)), (2, Some(1)), (3, Some(2)), (4, None)] {
            assert!(s.insert((0, o), waiting(k, 0)));
            s.check();
        }
        // Heads of each key and the keyless one are eligible; later same-key ones are not.
        assert_eq!(s.take_due(0, 10), vec![(0, 0), (0, 1), (0, 4)]);
        for p in [(0, 0), (0, 1), (0, 4)] {
            s.start_flight(p);
        }
        s.check();
        // Key 1's head fails: it is retried later and blocks offset 2.
        s.reschedule((0, 0), 100);
        // Key 2's head succeeds: offset 3 becomes eligible.
        s.remove((0, 1));
        s.remove((0, 4));
        s.check();
        assert_eq!(s.take_due(50, 10), vec![(0, 3)]);
        s.start_flight((0, 3));
        assert_eq!(s.take_due(99, 10), Vec::<Pos>::new());
        assert_eq!(s.take_due(100, 10), vec![(0, 0)]);
        s.start_flight((0, 0));
        s.remove((0, 0));
        s.check();
        assert_eq!(s.take_due(100, 10), vec![(0, 2)]);
    }

    #[test]
    fn without_per_key_everything_is_eligible() {
        let mut s = SubState::new(false);
        for o in 0..3 {
            s.insert((0, o), waiting(Some(7), o));
        }
        assert_eq!(s.take_due(10, 10), vec![(0, 0), (0, 1), (0, 2)]);
    }

    #[test]
    fn leases_expire_and_are_renewed() {
        let mut s = SubState::new(true);
        s.insert((1, 5), waiting(Some(1), 0));
        s.insert((1, 6), waiting(Some(1), 0));
        assert_eq!(s.take_due(0, 10), vec![(1, 5)]);
        s.lease((1, 5), 30, 42);
        s.check();
        assert_eq!(s.entries[&(1, 5)].meta.attempt, 1);
        assert!(s.expired_leases(29).is_empty());
        // Extending keeps the attempt count.
        s.lease((1, 5), 60, 42);
        assert_eq!(s.entries[&(1, 5)].meta.attempt, 1);
        assert_eq!(s.expired_leases(60), vec![(1, 5)]);
        s.reschedule((1, 5), 60);
        s.check();
        assert_eq!(s.leased(), 0);
        assert_eq!(s.take_due(60, 10), vec![(1, 5)]);
    }

    #[test]
    fn a_redriven_entry_goes_before_its_key() {
        let mut s = SubState::new(true);
        s.insert((0, 9), waiting(Some(3), 0));
        s.check();
        // Offset 4 of the same key comes back from the DLQ: it goes first.
        s.insert((0, 4), waiting(Some(3), 0));
        s.check();
        assert_eq!(s.take_due(0, 10), vec![(0, 4)]);
        s.start_flight((0, 4));
        s.dying((0, 4));
        s.check();
        assert!(s.take_due(0, 10).is_empty());
        s.remove((0, 4));
        s.check();
        assert_eq!(s.take_due(0, 10), vec![(0, 9)]);
    }
}
