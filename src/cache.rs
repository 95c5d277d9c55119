//! The metadata cache (moka): what a key is (file, directory, missing) and directory
//! listings, each with a TTL; misses live shorter. The filesystem writes its own changes
//! here at once, so it never serves its own stale writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use crate::keys::Child;
use crate::meta::FileMeta;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    File(FileMeta),
    Dir,
    Missing,
}

/// Entries of one directory, by name, straight from ListObjectsV2.
pub type Listing = BTreeMap<String, Child<FileMeta>>;

struct Ttl {
    hit: Duration,
    miss: Duration,
}

impl Expiry<String, Lookup> for Ttl {
    fn expire_after_create(&self, _: &String, v: &Lookup, _: Instant) -> Option<Duration> {
        Some(match v {
            Lookup::Missing => self.miss,
            _ => self.hit,
        })
    }

    fn expire_after_update(
        &self,
        k: &String,
        v: &Lookup,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(k, v, now)
    }
}

pub struct MetaCache {
    entries: Cache<String, Lookup>,
    listings: Cache<String, Arc<Listing>>,
    enabled: bool,
}

impl MetaCache {
    pub fn new(ttl: Duration, miss_ttl: Duration) -> Self {
        MetaCache {
            entries: Cache::builder()
                .max_capacity(1_000_000)
                .expire_after(Ttl {
                    hit: ttl,
                    miss: miss_ttl.min(ttl),
                })
                .build(),
            listings: Cache::builder()
                .max_capacity(1_000)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            enabled: !ttl.is_zero(),
        }
    }

    /// `key` is the object key of a file, or a directory's prefix without its `/`.
    pub fn get(&self, key: &str) -> Option<Lookup> {
        if !self.enabled {
            return None;
        }
        let v = self.entries.get(key);
        crate::metrics::cache(crate::metrics::CacheKind::Entry, v.is_some());
        v
    }

    pub fn put(&self, key: &str, v: Lookup) {
        if self.enabled {
            self.entries.insert(key.to_string(), v);
        }
    }

    pub fn forget(&self, key: &str) {
        self.entries.invalidate(key);
    }

    pub fn listing(&self, prefix: &str) -> Option<Arc<Listing>> {
        if !self.enabled {
            return None;
        }
        let v = self.listings.get(prefix);
        crate::metrics::cache(crate::metrics::CacheKind::Listing, v.is_some());
        v
    }

    pub fn put_listing(&self, prefix: &str, l: Arc<Listing>) {
        if self.enabled {
            self.listings.insert(prefix.to_string(), l);
        }
    }

    /// A change inside directory `prefix`: its listing must be fetched again.
    pub fn dir_changed(&self, prefix: &str) {
        self.listings.invalidate(prefix);
    }

    pub fn clear(&self) {
        self.entries.invalidate_all();
        self.listings.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_expire_before_hits() {
        let c = MetaCache::new(Duration::from_millis(400), Duration::from_millis(50));
        c.put("a", Lookup::Dir);
        c.put("b", Lookup::Missing);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(c.get("a"), Some(Lookup::Dir));
        assert_eq!(c.get("b"), None);
        c.put("a", Lookup::Missing);
        assert_eq!(c.get("a"), Some(Lookup::Missing));
    }

    #[test]
    fn zero_ttl_disables() {
        let c = MetaCache::new(Duration::ZERO, Duration::ZERO);
        c.put("a", Lookup::Dir);
        assert_eq!(c.get("a"), None);
    }
}
