//! The DNS answers the checks have seen, kept for their TTL in a map of bounded size (the
//! cache hooks of mail-auth: one per record type).
//!
//! Input: names and answers from DNS (untrusted: a peer decides which names we look up).
//! Output: answers still within their TTL. Limits: at most `capacity` entries per map; when it
//! is full, expired entries go first, then the entry that expires soonest.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_auth::ResolverCache;

/// The longest an answer is kept, whatever its TTL: a record changed at the source is seen
/// within this time.
pub const MAX_TTL: Duration = Duration::from_secs(6 * 3600);

/// One record type's answers.
pub struct BoundedCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> BoundedCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedCache { entries: Mutex::new(HashMap::new()), capacity }
    }

    /// Entries held now (expired ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ResolverCache<K, V> for BoundedCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.lock().ok()?;
        match entries.get(name) {
            Some((value, until)) if *until > Instant::now() => Some(value.clone()),
            Some(_) => {
                entries.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.lock().ok()?.remove(name).map(|(value, _)| value)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        if valid_until <= now {
            return;
        }
        let until = valid_until.min(now + MAX_TTL);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.capacity {
                // Scanning is O(capacity), paid only by an insert into a full map of live
                // entries: rarer than once per lookup, and cheaper than an ordered index.
                let soonest = entries.iter().min_by_key(|(_, (_, until))| *until).map(|(k, _)| k.clone());
                if let Some(soonest) = soonest {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(key, (value, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_live_for_their_ttl() {
        let cache: BoundedCache<Box<str>, u32> = BoundedCache::new(10);
        let now = Instant::now();
        cache.insert("a.example.".into(), 1, now + Duration::from_secs(60));
        cache.insert("b.example.".into(), 2, now - Duration::from_secs(1));
        assert_eq!(cache.get("a.example."), Some(1));
        assert_eq!(cache.get("b.example."), None);
        cache.insert("c.example.".into(), 3, now + Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get("c.example."), None);
        assert_eq!(cache.remove("a.example."), Some(1));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_drops_the_entry_that_expires_first() {
        let cache: BoundedCache<Box<str>, u32> = BoundedCache::new(3);
        let now = Instant::now();
        for (n, secs) in [(1u32, 300u64), (2, 100), (3, 200)] {
            cache.insert(format!("{n}.example.").into(), n, now + Duration::from_secs(secs));
        }
        cache.insert("4.example.".into(), 4, now + Duration::from_secs(400));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("2.example."), None);
        assert_eq!(cache.get("1.example."), Some(1));
        assert_eq!(cache.get("4.example."), Some(4));
        for n in 0..1000u32 {
            cache.insert(format!("x{n}.example.").into(), n, now + Duration::from_secs(60));
        }
        assert_eq!(cache.len(), 3, "never more than the capacity");
    }
}
