//! Local staging of written bytes: each file open for writing gets an anonymous sparse file
//! in `--cache-dir` (gone when closed or when the daemon dies) plus the set of byte ranges
//! it holds. One shared bound (`--max-cache-size`) covers all of them.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Disjoint, non-adjacent half-open ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    m: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let (mut s, mut e) = (r.start, r.end);
        // Merge with every range that overlaps or touches [s, e).
        let touching: Vec<(u64, u64)> = self
            .m
            .range(..=e)
            .rev()
            .take_while(|(_, &ie)| ie >= s)
            .map(|(&is, &ie)| (is, ie))
            .collect();
        for (is, ie) in touching {
            self.m.remove(&is);
            s = s.min(is);
            e = e.max(ie);
        }
        self.m.insert(s, e);
    }

    pub fn remove(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let hit: Vec<(u64, u64)> = self
            .m
            .range(..r.end)
            .rev()
            .take_while(|(_, &ie)| ie > r.start)
            .map(|(&is, &ie)| (is, ie))
            .collect();
        for (is, ie) in hit {
            self.m.remove(&is);
            if is < r.start {
                self.m.insert(is, r.start);
            }
            if ie > r.end {
                self.m.insert(r.end, ie);
            }
        }
    }

    /// Pieces of `r`, each marked with whether the set holds it, in order.
    pub fn split(&self, r: Range<u64>) -> Vec<(Range<u64>, bool)> {
        let mut out = Vec::new();
        let mut pos = r.start;
        let first = self
            .m
            .range(..=r.start)
            .next_back()
            .filter(|(_, &e)| e > r.start)
            .map(|(&s, _)| s);
        let from = first.unwrap_or(r.start);
        for (&s, &e) in self.m.range(from..r.end) {
            let s = s.max(r.start);
            let e = e.min(r.end);
            if s > pos {
                out.push((pos..s, false));
            }
            if e > s {
                out.push((s..e, true));
            }
            pos = pos.max(e);
        }
        if pos < r.end {
            out.push((pos..r.end, false));
        }
        out
    }

    pub fn covers(&self, r: Range<u64>) -> bool {
        r.is_empty() || self.split(r).iter().all(|(_, held)| *held)
    }

    pub fn total(&self) -> u64 {
        self.m.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }
}

/// The cache directory and the bound on what all staging files hold together.
#[derive(Clone)]
pub struct StagingArea {
    dir: PathBuf,
    limit: u64,
    used: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("staging space exhausted (--max-cache-size)")]
    Full,
    #[error("staging file: {0}")]
    Io(#[from] std::io::Error),
}

impl StageError {
    pub fn errno(&self) -> i32 {
        match self {
            StageError::Full => libc::ENOSPC,
            StageError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl StagingArea {
    pub fn new(dir: &Path, limit: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(StagingArea {
            dir: dir.to_path_buf(),
            limit,
            used: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn open(&self) -> Result<StageFile, StageError> {
        Ok(StageFile {
            file: tempfile::tempfile_in(&self.dir)?,
            held: RangeSet::new(),
            area: self.clone(),
        })
    }
}

/// One file's staged bytes.
pub struct StageFile {
    file: File,
    held: RangeSet,
    area: StagingArea,
}

impl StageFile {
    pub fn held(&self) -> &RangeSet {
        &self.held
    }

    /// Bytes this write adds to the area (overwrites of held bytes are free).
    fn growth(&self, r: Range<u64>) -> u64 {
        self.held
            .split(r)
            .iter()
            .filter(|(_, h)| !h)
            .map(|(p, _)| p.end - p.start)
            .sum()
    }

    /// Whether `len` more bytes at `offset` fit under the bound.
    pub fn fits(&self, offset: u64, len: u64) -> bool {
        self.area.used() + self.growth(offset..offset + len) <= self.area.limit
    }

    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StageError> {
        let r = offset..offset + data.len() as u64;
        let grow = self.growth(r.clone());
        if self.area.used() + grow > self.area.limit {
            return Err(StageError::Full);
        }
        self.file.write_all_at(data, offset)?;
        self.area.used.fetch_add(grow, Ordering::Relaxed);
        self.held.insert(r);
        Ok(())
    }

    /// Reads held bytes `r` into `buf` (which is `r.len()` long).
    pub fn read_at(&self, r: Range<u64>, buf: &mut [u8]) -> Result<(), StageError> {
        self.file.read_exact_at(buf, r.start)?;
        Ok(())
    }

    /// Forgets `r` and gives its disk space back.
    pub fn discard(&mut self, r: Range<u64>) {
        let freed: u64 = self
            .held
            .split(r.clone())
            .iter()
            .filter(|(_, h)| *h)
            .map(|(p, _)| p.end - p.start)
            .sum();
        if freed == 0 {
            return;
        }
        self.held.remove(r.clone());
        self.area.used.fetch_sub(freed, Ordering::Relaxed);
        // Punch the hole so the disk space really returns; failure only costs space.
        let _ = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                r.start as libc::off_t,
                (r.end - r.start) as libc::off_t,
            )
        };
    }
}

impl Drop for StageFile {
    fn drop(&mut self) {
        self.area
            .used
            .fetch_sub(self.held.total(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rangeset_basics() {
        let mut s = RangeSet::new();
        s.insert(10..20);
        s.insert(30..40);
        s.insert(20..25);
        assert_eq!(
            s.split(0..50),
            vec![
                (0..10, false),
                (10..25, true),
                (25..30, false),
                (30..40, true),
                (40..50, false)
            ]
        );
        s.remove(12..35);
        assert_eq!(
            s.split(0..50),
            vec![
                (0..10, false),
                (10..12, true),
                (12..35, false),
                (35..40, true),
                (40..50, false)
            ]
        );
        assert!(s.covers(36..40));
        assert!(!s.covers(11..13));
        assert_eq!(s.total(), 7);
    }

    proptest! {
        #[test]
        fn rangeset_matches_a_bitmap(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 0u64..60), 1..40)) {
            let mut s = RangeSet::new();
            let mut bits = vec![false; 300];
            for (add, start, len) in ops {
                let r = start..start + len;
                if add { s.insert(r.clone()) } else { s.remove(r.clone()) }
                for b in &mut bits[r.start as usize..r.end as usize] { *b = add; }
            }
            for (r, held) in s.split(0..300) {
                for i in r { prop_assert_eq!(bits[i as usize], held); }
            }
            prop_assert_eq!(s.total(), bits.iter().filter(|b| **b).count() as u64);
        }
    }

    #[test]
    fn stage_file_bound_and_discard() {
        let dir = tempfile::tempdir().unwrap();
        let area = StagingArea::new(dir.path(), 100).unwrap();
        let mut f = area.open().unwrap();
        f.write_at(0, &[1u8; 60]).unwrap();
        f.write_at(10, &[2u8; 50]).unwrap(); // overwrite: no growth
        assert_eq!(area.used(), 60);
        assert!(matches!(f.write_at(60, &[3u8; 41]), Err(StageError::Full)));
        let mut buf = [0u8; 20];
        f.read_at(5..25, &mut buf).unwrap();
        assert_eq!(&buf[..5], &[1u8; 5]);
        assert_eq!(&buf[5..], &[2u8; 15]);
        f.discard(0..30);
        assert_eq!(area.used(), 30);
        drop(f);
        assert_eq!(area.used(), 0);
    }
}
