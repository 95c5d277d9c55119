//! Reads of one open file: ranged GETs with sequential read-ahead. The first request is
//! small so random reads stay cheap; while reads stay sequential the window doubles (up to
//! `max_window`) and is fetched as parallel chunks; a seek resets it. Read-ahead takes only
//! memory the budget has free.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use crate::budget::{MemoryBudget, Reservation};
use crate::store::{ObjectStore, StoreError, StoreResult};

#[derive(Clone, Debug)]
pub struct ReadConfig {
    pub first_window: u64,
    pub max_window: u64,
    pub chunk: u64,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            first_window: 256 * 1024,
            max_window: 64 * 1024 * 1024,
            chunk: 8 * 1024 * 1024,
        }
    }
}

/// Reads that land this far behind the read-ahead still count as sequential: the kernel
/// issues concurrent reads that can arrive slightly out of order.
const KEEP_BEHIND: u64 = 4 * 1024 * 1024;

enum Data {
    Pending(JoinHandle<StoreResult<Bytes>>),
    Ready(Bytes),
}

struct Chunk {
    start: u64,
    end: u64,
    data: Data,
    _mem: Reservation,
}

pub struct Reader {
    store: Arc<dyn ObjectStore>,
    key: String,
    etag: Option<String>,
    size: u64,
    budget: MemoryBudget,
    cfg: ReadConfig,
    window: u64,
    chunks: VecDeque<Chunk>,
}

impl Reader {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: String,
        etag: Option<String>,
        size: u64,
        budget: MemoryBudget,
        cfg: ReadConfig,
    ) -> Self {
        Reader {
            window: cfg.first_window,
            store,
            key,
            etag,
            size,
            budget,
            cfg,
            chunks: VecDeque::new(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The version this reader is pinned to.
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    fn covered(&self) -> Option<(u64, u64)> {
        Some((self.chunks.front()?.start, self.chunks.back()?.end))
    }

    fn spawn(&mut self, start: u64, end: u64, mem: Reservation) {
        let store = self.store.clone();
        let key = self.key.clone();
        let etag = self.etag.clone();
        let task =
            tokio::spawn(async move { store.get_range(&key, start..end, etag.as_deref()).await });
        self.chunks.push_back(Chunk {
            start,
            end,
            data: Data::Pending(task),
            _mem: mem,
        });
    }

    pub async fn read(&mut self, offset: u64, len: u32) -> StoreResult<Bytes> {
        let end = (offset + len as u64).min(self.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        // The kernel's read-ahead sends several reads at once and they reach this reader in
        // any order: one that lands a little past what is covered is the same stream (the gap
        // is fetched next), not a seek that would throw away the GETs in flight.
        let ahead = KEEP_BEHIND.max(self.window);
        let sequential =
            matches!(self.covered(), Some((s, e)) if offset >= s && offset <= e + ahead);
        if matches!(self.covered(), Some((s, _)) if offset < s && offset + ahead >= s) {
            // A straggler of that read-ahead, arriving after the stream moved past it: fetched
            // on its own, so the stream keeps its window and its GETs in flight.
            let _mem = self.budget.reserve(end - offset).await;
            return self
                .store
                .get_range(&self.key, offset..end, self.etag.as_deref())
                .await;
        }
        if sequential {
            self.window = (self.window * 2).min(self.cfg.max_window);
            while self
                .chunks
                .front()
                .is_some_and(|c| c.end + KEEP_BEHIND <= offset)
            {
                self.chunks.pop_front();
            }
        } else {
            for c in self.chunks.drain(..) {
                if let Data::Pending(t) = c.data {
                    t.abort();
                }
            }
            self.window = self.cfg.first_window;
        }
        // What this read needs: wait for memory if we must.
        let mut next = self.covered().map(|(_, e)| e).unwrap_or(offset);
        while next < end {
            // After a seek the first request is small (the window); later ones are chunks.
            let want = if self.chunks.is_empty() {
                self.window.max(len as u64)
            } else {
                self.cfg.chunk.min(self.window).max(len as u64)
            };
            let stop = (next + want).min(self.size);
            let mem = self.budget.reserve(stop - next).await;
            self.spawn(next, stop, mem);
            next = stop;
        }
        // Read-ahead: only with memory that is free right now. Always whole steps (the last
        // may pass the target by less than one): topping up to the exact target would send
        // one GET the size of each application read once the window is full.
        // None after a seek into the file: a random reader would throw it away, so the stream
        // has to prove itself sequential first (a read from offset 0 counts as a stream).
        let target = if sequential || offset == 0 {
            (end + self.window).min(self.size)
        } else {
            end
        };
        let step = self.cfg.chunk.min(self.window);
        while next < target {
            let stop = (next + step).min(self.size);
            let Some(mem) = self.budget.try_reserve(stop - next) else {
                break;
            };
            self.spawn(next, stop, mem);
            next = stop;
        }
        self.collect(offset, end).await
    }

    async fn collect(&mut self, offset: u64, end: u64) -> StoreResult<Bytes> {
        let mut parts: Vec<Bytes> = Vec::new();
        let mut failed = None;
        for c in self.chunks.iter_mut() {
            if c.end <= offset || c.start >= end {
                continue;
            }
            if let Data::Pending(t) = &mut c.data {
                match t.await {
                    Ok(Ok(b)) => c.data = Data::Ready(b),
                    Ok(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                    Err(e) => {
                        failed = Some(StoreError::Other(format!("read task failed: {e}")));
                        break;
                    }
                }
            }
            if let Data::Ready(b) = &c.data {
                let s = (offset.max(c.start) - c.start) as usize;
                let e = ((end.min(c.end) - c.start) as usize).min(b.len());
                if s < e {
                    parts.push(b.slice(s..e));
                }
            }
        }
        if let Some(e) = failed {
            // Drop what we hold so a retry fetches afresh.
            for c in self.chunks.drain(..) {
                if let Data::Pending(t) = c.data {
                    t.abort();
                }
            }
            return Err(e);
        }
        Ok(match parts.len() {
            1 => parts.pop().unwrap_or_default(),
            _ => {
                let mut out = BytesMut::with_capacity((end - offset) as usize);
                for p in parts {
                    out.extend_from_slice(&p);
                }
                out.freeze()
            }
        })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        for c in self.chunks.drain(..) {
            if let Data::Pending(t) = c.data {
                t.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;

    #[tokio::test]
    async fn sequential_and_random_reads_return_the_right_bytes() {
        let store = Arc::new(MemStore::new());
        let data: Vec<u8> = (0..(20 * 1024 * 1024u32))
            .map(|i| (i % 253) as u8)
            .collect();
        store.insert("f", &data);
        let tag = store.head_sync("f");
        let budget = MemoryBudget::new(32 * 1024 * 1024);
        let cfg = ReadConfig {
            first_window: 64 * 1024,
            max_window: 8 << 20,
            chunk: 2 << 20,
        };
        let mut r = Reader::new(
            store.clone(),
            "f".into(),
            tag,
            data.len() as u64,
            budget.clone(),
            cfg,
        );
        let mut off = 0u64;
        while off < data.len() as u64 {
            let b = r.read(off, 131072).await.unwrap();
            assert_eq!(&b[..], &data[off as usize..(off as usize + b.len())]);
            off += b.len() as u64;
        }
        for &o in &[5_000_000u64, 17, 19_999_000, 3] {
            let b = r.read(o, 4096).await.unwrap();
            let e = (o as usize + 4096).min(data.len());
            assert_eq!(&b[..], &data[o as usize..e]);
        }
        assert!(r.read(data.len() as u64, 10).await.unwrap().is_empty());
        drop(r);
        assert_eq!(budget.used_bytes(), 0);
    }

    #[tokio::test]
    async fn a_full_window_is_refilled_in_whole_chunks() {
        // 64 MiB read in 256 KiB steps, 2 MiB chunks: whole chunks, not one GET per read.
        use crate::store::fault::{FaultStore, Op};
        let mem = Arc::new(MemStore::new());
        let size = 64 * 1024 * 1024u64;
        mem.insert("f", &vec![7u8; size as usize]);
        let tag = mem.head_sync("f");
        let store = Arc::new(FaultStore::new(mem));
        let cfg = ReadConfig {
            first_window: 256 * 1024,
            max_window: 8 << 20,
            chunk: 2 << 20,
        };
        let mut r = Reader::new(
            store.clone(),
            "f".into(),
            tag,
            size,
            MemoryBudget::new(64 << 20),
            cfg,
        );
        let mut off = 0;
        while off < size {
            off += r.read(off, 256 * 1024).await.unwrap().len() as u64;
        }
        let gets = store.calls().iter().filter(|o| **o == Op::Get).count();
        assert!(gets <= 40, "{gets} GETs for 32 chunks");
    }

    #[tokio::test]
    async fn reads_out_of_order_keep_the_stream() {
        // The kernel's read-ahead reads reach the reader in any order: a read a little ahead
        // of the covered range, and a straggler behind it, must not reset the stream.
        use crate::store::fault::{FaultStore, Op};
        let mem = Arc::new(MemStore::new());
        let mib = 1024 * 1024u64;
        let data: Vec<u8> = (0..(64 * mib) as u32).map(|i| (i % 251) as u8).collect();
        mem.insert("f", &data);
        let tag = mem.head_sync("f");
        let store = Arc::new(FaultStore::new(mem));
        let cfg = ReadConfig {
            first_window: 256 * 1024,
            max_window: 16 * mib,
            chunk: 4 * mib,
        };
        let mut r = Reader::new(
            store.clone(),
            "f".into(),
            tag,
            64 * mib,
            MemoryBudget::new(64 * mib),
            cfg,
        );
        // 1 MiB reads in order, but each pair swapped, and every 8th read held back by 6 MiB.
        let mut order = Vec::new();
        for i in (0..64u64).step_by(2) {
            order.extend([i + 1, i]);
        }
        for i in (8..64).step_by(8) {
            let late = order.remove(i);
            order.insert((i + 6).min(order.len()), late);
        }
        for &i in &order {
            let b = r.read(i * mib, mib as u32).await.unwrap();
            assert_eq!(&b[..], &data[(i * mib) as usize..((i + 1) * mib) as usize]);
        }
        let gets = store.calls().iter().filter(|o| **o == Op::Get).count();
        assert!(gets <= 30, "{gets} GETs: the stream was reset");
    }

    #[tokio::test]
    async fn a_random_read_sends_one_get() {
        use crate::store::fault::{FaultStore, Op};
        let mem = Arc::new(MemStore::new());
        let mib = 1024 * 1024u64;
        let data: Vec<u8> = (0..(64 * mib) as u32).map(|i| (i % 249) as u8).collect();
        mem.insert("f", &data);
        let tag = mem.head_sync("f");
        let store = Arc::new(FaultStore::new(mem));
        let mut r = Reader::new(
            store.clone(),
            "f".into(),
            tag,
            64 * mib,
            MemoryBudget::new(64 * mib),
            ReadConfig::default(),
        );
        let bs = 256 * 1024u64;
        for i in 0..50u64 {
            let off = (1 + (i * 37 + 11) % 240) * bs; // never 0, never the next block
            let b = r.read(off, bs as u32).await.unwrap();
            assert_eq!(&b[..], &data[off as usize..(off + bs) as usize]);
        }
        let gets = store.calls().iter().filter(|o| **o == Op::Get).count();
        assert_eq!(
            gets, 50,
            "read-ahead after a seek is wasted on a random reader"
        );
    }

    #[tokio::test]
    async fn a_changed_object_is_an_error_not_a_mix() {
        let store = Arc::new(MemStore::new());
        store.insert("f", &[1u8; 1000]);
        let tag = store.head_sync("f");
        let mut r = Reader::new(
            store.clone(),
            "f".into(),
            tag,
            1000,
            MemoryBudget::new(1 << 20),
            ReadConfig::default(),
        );
        store.insert("f", &[2u8; 1000]);
        assert_eq!(r.read(0, 10).await, Err(StoreError::PreconditionFailed));
    }
}
