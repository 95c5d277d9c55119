//! One memory budget for read-ahead and upload buffers. Writers wait for room
//! (back-pressure); read-ahead only takes what is free and otherwise reads less ahead.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are counted in KiB so that a budget of many GiB fits in a u32 acquire.
const UNIT: u64 = 1024;

/// Longest wait for room before a buffer is allowed over budget.
pub const OVERCOMMIT_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Buffers from this size up get their own mapping, given back to the kernel when freed.
const MMAP_FROM: i32 = 1 << 20;

/// Makes freed read-ahead and part buffers leave the process: glibc's default raises its
/// mmap threshold after the first large free, after which multi-MiB buffers come from the
/// heap arenas and stay resident when freed (measured: 450 MiB resident after 4 streams had
/// finished, with nothing reserved in the budget). A fixed threshold keeps them mmapped.
/// Call once at start-up, before other threads allocate.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM);
    }
}

#[derive(Clone)]
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    total_units: u64,
}

/// Room for `bytes` of buffer; given back when dropped.
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let units = (bytes / UNIT).max(1);
        MemoryBudget {
            sem: Arc::new(Semaphore::new(units as usize)),
            total_units: units,
        }
    }

    fn units(&self, bytes: u64) -> u32 {
        // A request larger than the whole budget is clamped so it can still proceed alone.
        bytes
            .div_ceil(UNIT)
            .clamp(1, self.total_units)
            .min(u32::MAX as u64) as u32
    }

    /// Waits until `bytes` fit in the budget. Buffers are held by open files, so a budget
    /// full of files that never progress could wait forever: after `OVERCOMMIT_AFTER` the
    /// request goes ahead over budget (with a warning) rather than hang the writer.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let acquire = self.sem.clone().acquire_many_owned(self.units(bytes));
        match tokio::time::timeout(OVERCOMMIT_AFTER, acquire).await {
            Ok(p) => Reservation { _permit: p.ok() },
            Err(_) => {
                tracing::warn!(
                    bytes,
                    budget = self.total_bytes(),
                    "memory budget exhausted for {}s; going over it (raise --max-memory?)",
                    OVERCOMMIT_AFTER.as_secs()
                );
                Reservation { _permit: None }
            }
        }
    }

    /// Reserves `bytes` only if they fit now.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        self.sem
            .clone()
            .try_acquire_many_owned(self.units(bytes))
            .ok()
            .map(|p| Reservation { _permit: Some(p) })
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_units * UNIT
    }

    pub fn used_bytes(&self) -> u64 {
        (self.total_units - self.sem.available_permits() as u64) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn writers_wait_for_room() {
        let b = MemoryBudget::new(4 << 20);
        let r1 = b.reserve(3 << 20).await;
        assert!(b.try_reserve(2 << 20).is_none());
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.reserve(2 << 20).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(r1);
        let _r2 = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.used_bytes(), 2 << 20);
        // Larger than the whole budget: clamped, still granted when alone.
        drop(_r2);
        let _big = b.reserve(100 << 20).await;
    }
}
