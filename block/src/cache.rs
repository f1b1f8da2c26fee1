//! A bounded cache shared by all threads reading one image or filesystem: qcow2's L2 tables
//! and refcount blocks, ext4's metadata blocks.
//!
//! Reads that hit take only a *sharded* read lock ([`ShardedLock`]: each thread locks its
//! own shard, so readers on different cores never write to a shared cache line) and mark the
//! entry used with a flag that is written only when it was clear. Eviction is CLOCK (second
//! chance), an approximation of least-recently-used that needs no bookkeeping on a hit:
//! before this, every hit moved the key in an ordered map under one mutex, and 4 KiB random
//! reads from two threads ran at 57% of a raw file's rate, waiting on each other
//! (`benches/random_io.rs`).
//!
//! Table and cluster reads happen outside the lock, so two threads missing on the same key
//! may both read it (harmless: the contents are equal). Values are `Arc`s so a reader keeps
//! using a table after it is evicted.
//!
//! A writer keeps its dirty L2 tables here *pinned*: a pinned entry is never evicted, so the
//! newest version of a table is always the cached one, never the stale copy on disk. Writers
//! replace a table's `Arc` (copy-on-write) rather than mutating it, so a reader holding the old
//! version sees a consistent table. A reader that missed and read a table from disk inserts it
//! with [`Lru::insert_if_absent`]: an entry that appeared meanwhile wins, and when a pinned
//! entry was written back and unpinned since the reader looked ([`Lru::epoch`] moved), the
//! reader's copy may predate that write and is not cached.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

/// A map from a host offset to a shared value, holding at most `capacity` unpinned values.
#[derive(Debug)]
pub struct Lru<V: ?Sized> {
    inner: ShardedLock<Inner<V>>,
    capacity: usize,
}

#[derive(Debug)]
struct Slot<V: ?Sized> {
    value: Arc<V>,
    /// Set by a hit, cleared when the clock hand passes: the entry's second chance.
    used: AtomicBool,
    /// A dirty table: never evicted.
    pinned: bool,
    /// Matches the clock queue entry that stands for this slot; older entries for the same
    /// key (left by a removal and re-insertion) are skipped.
    seq: u64,
}

#[derive(Debug)]
struct Inner<V: ?Sized> {
    map: HashMap<u64, Slot<V>>,
    /// The clock: keys in insertion order, each with the `seq` of the slot it stands for.
    /// Entries whose slot is gone or newer are stale and dropped when met.
    clock: VecDeque<(u64, u64)>,
    next_seq: u64,
    pinned: usize,
    /// Bumped whenever an entry is unpinned or removed.
    epoch: u64,
}

impl<V: ?Sized> Slot<V> {
    /// Marks the slot used, writing the flag only when it changes, so that a hot entry's
    /// cache line stays shared between cores.
    fn touch(&self) -> &Arc<V> {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        &self.value
    }
}

impl<V: ?Sized> Inner<V> {
    /// Inserts or replaces `key`; a new entry joins the clock unused.
    fn put(&mut self, key: u64, value: Arc<V>, pin: bool) -> &mut Slot<V> {
        if let Some(slot) = self.map.get_mut(&key) {
            slot.value = value;
            slot.used.store(true, Ordering::Relaxed);
            if pin && !slot.pinned {
                slot.pinned = true;
                self.pinned += 1;
            }
            // The borrow checker cannot see that this returns the same slot.
            return self.map.get_mut(&key).expect("present");
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.clock.push_back((key, seq));
        if pin {
            self.pinned += 1;
        }
        self.compact();
        self.map.entry(key).or_insert(Slot {
            value,
            used: AtomicBool::new(false),
            pinned: pin,
            seq,
        })
    }

    /// Drops stale clock entries once they outnumber the live ones, so that removals and
    /// re-insertions without evictions cannot grow the queue without bound.
    fn compact(&mut self) {
        if self.clock.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.clock
                .retain(|(k, s)| map.get(k).is_some_and(|slot| slot.seq == *s));
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(slot) = self.map.remove(&key) {
            if slot.pinned {
                self.pinned -= 1;
            }
        }
    }

    /// Evicts unpinned entries, oldest first but sparing those used since the hand last
    /// passed, until at most `capacity` unpinned ones remain.
    fn evict(&mut self, capacity: usize) {
        while self.map.len() > capacity + self.pinned {
            // An unpinned live entry exists (the map holds more than the pinned ones), so
            // at most two turns of the clock find one.
            let Some((key, seq)) = self.clock.pop_front() else {
                break;
            };
            let Some(slot) = self.map.get(&key).filter(|s| s.seq == seq) else {
                continue; // stale
            };
            if slot.pinned || slot.used.swap(false, Ordering::Relaxed) {
                self.clock.push_back((key, seq));
                continue;
            }
            self.map.remove(&key);
        }
    }
}

impl<V: ?Sized> Lru<V> {
    /// An empty cache holding at most `capacity` unpinned values (at least one).
    pub fn new(capacity: usize) -> Self {
        Lru {
            inner: ShardedLock::new(Inner {
                map: HashMap::new(),
                clock: VecDeque::new(),
                next_seq: 0,
                pinned: 0,
                epoch: 0,
            }),
            capacity: capacity.max(1),
        }
    }

    // A panic while holding the lock cannot leave the map inconsistent in a way that matters
    // for reads; keep going.
    fn read(&self) -> ShardedLockReadGuard<'_, Inner<V>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> ShardedLockWriteGuard<'_, Inner<V>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value of `key`, marked used.
    pub fn get(&self, key: u64) -> Option<Arc<V>> {
        self.read().map.get(&key).map(|s| Arc::clone(s.touch()))
    }

    /// Runs `f` on the cached value of `key` without taking a reference to it (which would
    /// write the shared reference count).
    pub fn with<R>(&self, key: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        let g = self.read();
        g.map.get(&key).map(|s| f(s.touch()))
    }

    /// Inserts or replaces `key`, evicting unused entries beyond the capacity.
    pub fn insert(&self, key: u64, value: Arc<V>) {
        let mut g = self.write();
        g.put(key, value, false);
        g.evict(self.capacity);
    }

    /// The current epoch; see [`insert_if_absent`](Lru::insert_if_absent).
    pub fn epoch(&self) -> u64 {
        self.read().epoch
    }

    /// Inserts `value` read from disk unless the key is already cached (the cached value is
    /// returned then) or the epoch moved past `epoch` since the caller sampled it (then
    /// `value` is returned without caching it).
    pub fn insert_if_absent(&self, key: u64, value: Arc<V>, epoch: u64) -> Arc<V> {
        let mut g = self.write();
        if let Some(s) = g.map.get(&key) {
            return Arc::clone(s.touch());
        }
        if g.epoch != epoch {
            return value;
        }
        g.put(key, Arc::clone(&value), false);
        g.evict(self.capacity);
        value
    }

    /// Inserts or replaces `value` and pins it: it stays until [`unpin`](Lru::unpin).
    pub fn insert_pinned(&self, key: u64, value: Arc<V>) {
        let mut g = self.write();
        g.put(key, value, true);
        g.evict(self.capacity);
    }

    /// Makes a pinned entry evictable again (its content is now on disk).
    pub fn unpin(&self, key: u64) {
        let mut g = self.write();
        let inner = &mut *g;
        if let Some(slot) = inner.map.get_mut(&key) {
            if slot.pinned {
                slot.pinned = false;
                inner.pinned -= 1;
            }
        }
        inner.epoch += 1;
        inner.evict(self.capacity);
    }

    /// Forgets `key` (its storage was freed and may be reused for something else).
    pub fn remove(&self, key: u64) {
        let mut g = self.write();
        g.epoch += 1;
        g.remove(key);
    }

    /// Forgets everything, pinned entries included: the caller wrote them back first.
    pub fn clear(&self) {
        let mut g = self.write();
        g.epoch += 1;
        g.map.clear();
        g.clock.clear();
        g.pinned = 0;
    }
}

impl Lru<[u64]> {
    /// Applies `f` to the cached table `key` and pins it. When the key is not cached,
    /// `current` (the caller's up-to-date copy) is inserted first. A table some reader still
    /// holds is copied before `f` runs, so readers never see a half-made change.
    pub fn modify_pinned(&self, key: u64, current: Arc<[u64]>, f: impl FnOnce(&mut [u64])) {
        let mut g = self.write();
        let inner = &mut *g;
        let slot = match inner.map.contains_key(&key) {
            true => {
                // The caller's copy is usually the cached table itself: let go of it, or
                // the table would look shared and be copied below on every change.
                drop(current);
                let slot = inner.map.get_mut(&key).expect("present");
                if !slot.pinned {
                    slot.pinned = true;
                    inner.pinned += 1;
                }
                slot
            }
            false => inner.put(key, current, true),
        };
        slot.used.store(true, Ordering::Relaxed);
        if Arc::get_mut(&mut slot.value).is_none() {
            slot.value = Arc::from(slot.value.to_vec());
        }
        if let Some(t) = Arc::get_mut(&mut slot.value) {
            f(t);
        }
        inner.evict(self.capacity);
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let c: Lru<u32> = Lru::new(2);
        c.insert(1, Arc::new(1));
        c.insert(2, Arc::new(2));
        assert!(c.get(1).is_some());
        c.insert(3, Arc::new(3));
        assert!(c.get(2).is_none());
        assert_eq!(c.get(1).as_deref(), Some(&1));
        assert_eq!(c.get(3).as_deref(), Some(&3));
    }

    #[test]
    fn pinned_entries_stay_and_stale_inserts_lose() {
        let c: Lru<u32> = Lru::new(1);
        c.insert_pinned(1, Arc::new(1));
        c.insert(2, Arc::new(2));
        c.insert(3, Arc::new(3));
        assert_eq!(c.get(1).as_deref(), Some(&1));
        assert!(c.get(2).is_none());
        let e = c.epoch();
        assert_eq!(*c.insert_if_absent(1, Arc::new(9), e), 1);
        c.unpin(1);
        assert_eq!(*c.insert_if_absent(4, Arc::new(4), e), 4);
        assert!(c.get(4).is_none(), "a stale read is not cached");
    }

    #[test]
    fn clock_gives_used_entries_a_second_chance() {
        let c: Lru<u32> = Lru::new(3);
        for k in 1..=3 {
            c.insert(k, Arc::new(k as u32));
        }
        // 1 and 3 are used; 2 is the oldest unused entry and goes first.
        assert!(c.with(1, |v| *v).is_some());
        assert!(c.get(3).is_some());
        c.insert(4, Arc::new(4));
        assert!(c.get(2).is_none());
        for k in [1, 3, 4] {
            assert_eq!(c.with(k, |v| *v), Some(k as u32), "key {k}");
        }
    }

    #[test]
    fn removals_and_reinsertions_keep_the_clock_bounded() {
        let c: Lru<u32> = Lru::new(4);
        for round in 0..10_000u32 {
            c.insert(7, Arc::new(round));
            c.remove(7);
            c.insert_pinned(8, Arc::new(round));
            c.unpin(8);
        }
        let g = c.read();
        assert!(
            g.clock.len() <= 2 * g.map.len() + 65,
            "clock {}",
            g.clock.len()
        );
        assert_eq!(g.pinned, 0);
        drop(g);
        assert_eq!(c.get(8).as_deref(), Some(&9_999));
    }

    #[test]
    fn pinned_entries_do_not_count_against_capacity() {
        let c: Lru<[u64]> = Lru::new(2);
        for k in 0..5 {
            c.modify_pinned(k, Arc::from(vec![0u64; 2]), |t| t[0] = k);
        }
        for k in 10..20 {
            c.insert(k, Arc::from(vec![k; 2]));
        }
        for k in 0..5 {
            assert_eq!(c.get(k).map(|t| t[0]), Some(k));
        }
        assert_eq!((10..20).filter(|k| c.get(*k).is_some()).count(), 2);
        for k in 0..5 {
            c.unpin(k);
        }
        assert_eq!(c.read().map.len(), 2);
    }

    #[test]
    fn modifying_a_cached_table_does_not_copy_it() {
        let c: Lru<[u64]> = Lru::new(2);
        c.insert(1, Arc::from(vec![0u64; 4]));
        let before = c.with(1, |t| t.as_ptr()).unwrap();
        for i in 0..4 {
            // The caller passes the cached table as its current copy, as set_l2_entry does.
            let current = c.get(1).unwrap();
            c.modify_pinned(1, current, |t| t[i] = i as u64 + 1);
        }
        assert_eq!(c.with(1, |t| t.as_ptr()), Some(before), "changed in place");
        assert_eq!(c.get(1).as_deref(), Some(&[1, 2, 3, 4][..]));
        // A reader still holding the table keeps its version; the cache gets a copy.
        let held = c.get(1).unwrap();
        c.modify_pinned(1, Arc::clone(&held), |t| t[0] = 9);
        assert_eq!(held[0], 1);
        assert_eq!(c.get(1).unwrap()[0], 9);
    }
}
