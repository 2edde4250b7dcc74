//! The response budget: how many records a GetRecords call asks for, so that the responses a
//! replica holds at once stay within a fixed amount of memory whatever its shard count.
//!
//! Every shard reader holds a [`BudgetShare`] of one [`ResponseBudget`]. A call asks for the
//! records that the reader's share (the budget divided by the readers present) holds at the
//! shard's recent record size, never more than `maxRecordsPerCall` and never fewer than one. A
//! response in memory costs about 2.5 times its record data (the JSON body with base64 data, then
//! the decoded records), so a replica's responses stay within about 2.5 × the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Record size assumed before a shard's first non-empty response: Kinesis's largest record, so
/// that the first calls of many shards at once cannot overrun the budget (a first call of a
/// shard whose share is below 1 MiB asks for one record).
const FIRST_GUESS_RECORD_BYTES: f64 = 1_048_576.0;

/// How fast a shard's record size estimate comes down after bigger records (an exponential
/// moving average over about the last eight responses). Bigger records raise it at once: memory
/// errs on the safe side.
const SMOOTHING: f64 = 0.125;

/// The record data a replica's GetRecords responses may hold at once.
#[derive(Debug)]
pub struct ResponseBudget {
    bytes: u64,
    readers: AtomicUsize,
}

impl ResponseBudget {
    pub fn new(bytes: u64) -> Arc<ResponseBudget> {
        Arc::new(ResponseBudget {
            bytes: bytes.max(1),
            readers: AtomicUsize::new(0),
        })
    }

    /// A budget of `mib` MiB.
    pub fn mib(mib: u32) -> Arc<ResponseBudget> {
        ResponseBudget::new(u64::from(mib) << 20)
    }

    /// A share for one more shard reader; the share leaves the budget when dropped.
    pub fn join(self: &Arc<ResponseBudget>) -> BudgetShare {
        self.readers.fetch_add(1, Ordering::Relaxed);
        BudgetShare {
            budget: Arc::clone(self),
            average_record_bytes: FIRST_GUESS_RECORD_BYTES,
            learned: false,
        }
    }

    /// The readers sharing the budget now.
    pub fn readers(&self) -> usize {
        self.readers.load(Ordering::Relaxed)
    }
}

/// One shard reader's part of a [`ResponseBudget`].
#[derive(Debug)]
pub struct BudgetShare {
    budget: Arc<ResponseBudget>,
    average_record_bytes: f64,
    /// Whether a response has replaced the first guess.
    learned: bool,
}

impl BudgetShare {
    /// Records the next call should ask for: what this reader's share holds at the shard's
    /// recent record size, within `1..=max_records`.
    pub fn limit(&self, max_records: u32) -> u32 {
        let share = self.budget.bytes as f64 / self.budget.readers().max(1) as f64;
        let records = (share / self.average_record_bytes.max(1.0)).floor();
        // The float is finite and positive here; `as` saturates at u32::MAX anyway.
        (records as u32).clamp(1, max_records.max(1))
    }

    /// Learns the record size from a response (`records` records of `bytes` data in all).
    pub fn observe(&mut self, records: usize, bytes: usize) {
        if records == 0 {
            return;
        }
        let size = bytes as f64 / records as f64;
        if !self.learned || size > self.average_record_bytes {
            self.average_record_bytes = size;
            self.learned = true;
        } else {
            self.average_record_bytes += SMOOTHING * (size - self.average_record_bytes);
        }
    }

    /// The shard's recent record size, in bytes.
    pub fn average_record_bytes(&self) -> f64 {
        self.average_record_bytes
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.budget.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_shrinks_as_readers_join_and_grows_as_they_leave() {
        let budget = ResponseBudget::mib(16);
        let mut first = budget.join();
        // Before any response: as if records were 1 MiB.
        assert_eq!(first.limit(10_000), 16);
        // Records of 32 KiB (a hundred clicks each): learned from the first response.
        first.observe(10, 10 * 32 * 1024);
        assert_eq!(first.average_record_bytes(), 32.0 * 1024.0);
        // Alone: 16 MiB / 32 KiB.
        assert_eq!(first.limit(10_000), 512);
        let others: Vec<BudgetShare> = (0..31).map(|_| budget.join()).collect();
        assert_eq!(budget.readers(), 32);
        // One of 32: 0.5 MiB / 32 KiB.
        assert_eq!(first.limit(10_000), 16);
        drop(others);
        assert_eq!(budget.readers(), 1);
        assert_eq!(first.limit(10_000), 512);
    }

    #[test]
    fn the_limit_stays_within_one_and_the_configured_maximum() {
        let budget = ResponseBudget::mib(16);
        let mut share = budget.join();
        // Small records: the configured maximum caps it.
        share.observe(1_000, 300_000);
        assert_eq!(share.average_record_bytes(), 300.0);
        assert_eq!(share.limit(10_000), 10_000);
        assert_eq!(share.limit(250), 250);
        // Records bigger than the share: still one record per call, never none.
        let tiny = ResponseBudget::new(1024);
        let mut share = tiny.join();
        for _ in 0..100 {
            share.observe(1, 1 << 20);
        }
        assert_eq!(share.limit(10_000), 1);
        // An empty response teaches nothing.
        let before = share.average_record_bytes();
        share.observe(0, 0);
        assert_eq!(share.average_record_bytes(), before);
    }

    #[test]
    fn bigger_records_count_at_once_smaller_ones_slowly() {
        let budget = ResponseBudget::mib(16);
        let mut share = budget.join();
        share.observe(100, 100 * 300);
        share.observe(10, 10 * 30_000);
        assert_eq!(share.average_record_bytes(), 30_000.0);
        share.observe(100, 100 * 300);
        let after_one = share.average_record_bytes();
        assert!(after_one < 30_000.0 && after_one > 20_000.0, "{after_one}");
        for _ in 0..100 {
            share.observe(100, 100 * 300);
        }
        assert!((share.average_record_bytes() - 300.0).abs() < 1.0);
    }
}
