//! Paths deleted through the mount during a live migration: an append-only journal, one JSON
//! string per line, fsync'ed before the delete is answered. A tombstoned path (or anything
//! below a tombstoned directory) never falls through to the old tree again, and the copier
//! skips it. The old tree itself is never modified.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

pub struct Tombstones {
    set: HashSet<String>,
    journal: File,
}

impl Tombstones {
    /// Loads the journal at `path` (created if absent). A torn last line (a kill mid-append,
    /// whose delete was never answered) is ignored.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut journal = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut text = Vec::new();
        journal.read_to_end(&mut text)?;
        let mut set = HashSet::new();
        for line in text.split(|b| *b == b'\n') {
            if let Ok(rel) = serde_json::from_slice::<String>(line) {
                set.insert(rel);
            }
        }
        if text.last().is_some_and(|b| *b != b'\n') {
            // Ends the torn line, so the next entry starts on a line of its own.
            journal.write_all(b"\n")?;
            journal.sync_data()?;
        }
        Ok(Tombstones { set, journal })
    }

    /// Whether `rel` (a path relative to the old tree, no leading or trailing `/`) or one
    /// of its parent directories was deleted.
    pub fn covers(&self, rel: &str) -> bool {
        if self.set.is_empty() {
            return false;
        }
        let mut end = rel.len();
        loop {
            if self.set.contains(&rel[..end]) {
                return true;
            }
            match rel[..end].rfind('/') {
                Some(i) => end = i,
                None => return false,
            }
        }
    }

    /// Records `rel` durably; returns once the line is on disk.
    pub fn add(&mut self, rel: &str) -> std::io::Result<()> {
        if self.set.contains(rel) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(rel).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.journal.write_all(&line)?;
        self.journal.sync_data()?;
        self.set.insert(rel.to_string());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survive_reopen_and_cover_children() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tombstones");
        {
            let mut t = Tombstones::open(&p).unwrap();
            t.add("media/a b.png").unwrap();
            t.add("reports").unwrap();
            t.add("naïve\nname").unwrap();
        }
        // A torn line from a kill mid-append.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"\"half")
            .unwrap();
        let mut t = Tombstones::open(&p).unwrap();
        assert_eq!(t.len(), 3);
        t.add("x").unwrap();
        let t = Tombstones::open(&p).unwrap();
        assert_eq!(t.len(), 4);
        assert!(t.covers("media/a b.png"));
        assert!(!t.covers("media/a b.pn"));
        assert!(!t.covers("media"));
        assert!(t.covers("reports/public/r.csv"));
        assert!(!t.covers("reportsx"));
        assert!(t.covers("naïve\nname"));
        assert!(t.covers("x"));
    }
}
