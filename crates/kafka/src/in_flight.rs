//! Offsets of records processed concurrently: which offset may be stored while some records of
//! a partition are still running. Pure bookkeeping, no Kafka calls.

use std::collections::{BTreeSet, HashMap};

/// Offsets handed to concurrent tasks, and the offset that may be stored: everything below the
/// lowest offset still in flight (or above the highest finished one) is done.
#[derive(Debug, Default)]
pub struct InFlight {
    partitions: HashMap<(String, i32), PartitionProgress>,
}

#[derive(Debug, Default)]
struct PartitionProgress {
    pending: BTreeSet<i64>,
    next_done: i64,
    stored: i64,
}

impl InFlight {
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        let progress = self
            .partitions
            .entry((topic.to_string(), partition))
            .or_insert_with(|| PartitionProgress {
                stored: offset,
                next_done: offset,
                ..Default::default()
            });
        progress.pending.insert(offset);
    }

    /// Marks `offset` finished; returns the next offset to store when it advanced.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let progress = self.partitions.get_mut(&(topic.to_string(), partition))?;
        progress.pending.remove(&offset);
        progress.next_done = progress.next_done.max(offset + 1);
        let storable = progress
            .pending
            .first()
            .copied()
            .unwrap_or(progress.next_done);
        if storable > progress.stored {
            progress.stored = storable;
            Some(storable)
        } else {
            None
        }
    }

    /// Records still in flight.
    pub fn pending(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_stores_below_the_lowest_pending() {
        let mut f = InFlight::default();
        for o in 10..14 {
            f.begin("t", 0, o);
        }
        assert_eq!(f.finish("t", 0, 11), None, "10 is still pending");
        assert_eq!(f.finish("t", 0, 10), Some(12));
        assert_eq!(f.finish("t", 0, 13), None, "12 is still pending");
        assert_eq!(f.finish("t", 0, 12), Some(14));
        assert_eq!(f.pending(), 0);
    }
}
