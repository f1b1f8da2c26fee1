//! Bounded least-recently-used caches shared by all threads reading one image.
//!
//! The lock is held only to look up or insert; table and cluster reads happen outside it, so
//! two threads missing on the same key may both read it (harmless: the contents are equal).
//! Values are `Arc`s so a reader keeps using a table after it is evicted. A writer will later
//! keep dirty tables here too; eviction would then write them back first.

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
    /// last use -> key, oldest first.
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl<V: ?Sized> Lru<V> {
    pub fn new(capacity: usize) -> Self {
        Lru {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
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
        while inner.map.len() > self.capacity {
            let Some((_, old)) = inner.order.pop_first() else {
                break;
            };
            inner.map.remove(&old);
        }
    }

    pub fn clear(&self) {
        let mut g = self.lock();
        g.map.clear();
        g.order.clear();
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
}
