//! Bounded least-recently-used caches shared by all threads reading one image.
//!
//! The lock is held only to look up or insert; table and cluster reads happen outside it, so
//! two threads missing on the same key may both read it (harmless: the contents are equal).
//! Values are `Arc`s so a reader keeps using a table after it is evicted.
//!
//! A writer keeps its dirty L2 tables here *pinned*: a pinned entry is never evicted, so the
//! newest version of a table is always the cached one, never the stale copy on disk. Writers
//! replace a table's `Arc` (copy-on-write) rather than mutating it, so a reader holding the old
//! version sees a consistent table. A reader that missed and read a table from disk inserts it
//! with [`Lru::insert_if_absent`]: an entry that appeared meanwhile wins, and when a pinned
//! entry was written back and unpinned since the reader looked ([`Lru::epoch`] moved), the
//! reader's copy may predate that write and is not cached.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// An LRU map from a host offset to a shared value, holding at most `capacity` values.
#[derive(Debug)]
pub(crate) struct Lru<V: ?Sized> {
    inner: Mutex<Inner<V>>,
    capacity: usize,
}

#[derive(Debug)]
struct Inner<V: ?Sized> {
    /// key -> (value, last use)
    map: HashMap<u64, (Arc<V>, u64)>,
    /// Keys that must not be evicted (dirty tables).
    pinned: std::collections::HashSet<u64>,
    /// Bumped whenever an entry is unpinned or removed.
    epoch: u64,
    /// last use -> key, oldest first.
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl<V: ?Sized> Lru<V> {
    pub fn new(capacity: usize) -> Self {
        Lru {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                pinned: std::collections::HashSet::new(),
                epoch: 0,
                order: BTreeMap::new(),
                tick: 0,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that
        // matters for reads; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: u64) -> Option<Arc<V>> {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let (value, used) = inner.map.get_mut(&key)?;
        inner.order.remove(used);
        *used = tick;
        inner.order.insert(tick, key);
        Some(Arc::clone(value))
    }

    pub fn insert(&self, key: u64, value: Arc<V>) {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((_, used)) = inner.map.insert(key, (value, tick)) {
            inner.order.remove(&used);
        }
        inner.order.insert(tick, key);
        Self::evict(inner, self.capacity);
    }

    /// Drops least recently used unpinned entries until at most `capacity` unpinned ones
    /// remain (pinned entries do not count against the capacity).
    fn evict(inner: &mut Inner<V>, capacity: usize) {
        let mut skipped = Vec::new();
        while inner.map.len() > capacity + inner.pinned.len() {
            let Some((used, old)) = inner.order.pop_first() else {
                break;
            };
            if inner.pinned.contains(&old) {
                skipped.push((used, old));
                continue;
            }
            inner.map.remove(&old);
        }
        for (used, key) in skipped {
            inner.order.insert(used, key);
        }
    }

    /// The current epoch; see [`insert_if_absent`](Lru::insert_if_absent).
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Inserts `value` read from disk unless the key is already cached (the cached value is
    /// returned then) or the epoch moved past `epoch` since the caller sampled it (then
    /// `value` is returned without caching it).
    pub fn insert_if_absent(&self, key: u64, value: Arc<V>, epoch: u64) -> Arc<V> {
        let g = self.lock();
        if let Some((v, _)) = g.map.get(&key) {
            return Arc::clone(v);
        }
        if g.epoch != epoch {
            return value;
        }
        drop(g);
        self.insert(key, Arc::clone(&value));
        value
    }

    /// Inserts or replaces `value` and pins it: it stays until [`unpin`](Lru::unpin).
    pub fn insert_pinned(&self, key: u64, value: Arc<V>) {
        self.lock().pinned.insert(key);
        self.insert(key, value);
    }

    /// Makes a pinned entry evictable again (its content is now on disk).
    pub fn unpin(&self, key: u64) {
        let mut g = self.lock();
        g.pinned.remove(&key);
        g.epoch += 1;
        let inner = &mut *g;
        Self::evict(inner, self.capacity);
    }

    /// Forgets `key` (its storage was freed and may be reused for something else).
    pub fn remove(&self, key: u64) {
        let mut g = self.lock();
        g.epoch += 1;
        g.pinned.remove(&key);
        if let Some((_, used)) = g.map.remove(&key) {
            g.order.remove(&used);
        }
    }

    /// Forgets everything, pinned entries included: the caller wrote them back first.
    pub fn clear(&self) {
        let mut g = self.lock();
        g.epoch += 1;
        g.map.clear();
        g.order.clear();
        g.pinned.clear();
    }
}

impl Lru<[u64]> {
    /// Applies `f` to the cached table `key` and pins it. When the key is not cached,
    /// `current` (the caller's up-to-date copy) is inserted first. A table some reader still
    /// holds is copied before `f` runs, so readers never see a half-made change.
    pub fn modify_pinned(&self, key: u64, current: Arc<[u64]>, f: impl FnOnce(&mut [u64])) {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.map.entry(key).or_insert_with(|| (current, tick));
        inner.order.remove(&entry.1);
        entry.1 = tick;
        inner.order.insert(tick, key);
        if Arc::get_mut(&mut entry.0).is_none() {
            entry.0 = Arc::from(entry.0.to_vec());
        }
        if let Some(t) = Arc::get_mut(&mut entry.0) {
            f(t);
        }
        inner.pinned.insert(key);
        Self::evict(inner, self.capacity);
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
}
