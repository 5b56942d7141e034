//! Consumer construction and offset bookkeeping. Offsets are stored explicitly, in partition
//! order, only after the caller's effect is durable; auto-commit then ships them.

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::KafkaConfig;

/// A stream consumer subscribed to `topics` in `group_id`.
pub fn subscribe(
    config: &KafkaConfig,
    group_id: &str,
    topics: &[&str],
) -> Result<StreamConsumer, KafkaError> {
    let consumer: StreamConsumer = config.consumer_config(group_id).create()?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// Highest processed offset per topic-partition of a batch, to be stored after the effect.
#[derive(Debug, Default)]
pub struct OffsetBatch {
    next: std::collections::BTreeMap<(String, i32), i64>,
}

impl OffsetBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` of `topic/partition` is processed.
    pub fn processed(&mut self, topic: &str, partition: i32, offset: i64) {
        let entry = self
            .next
            .entry((topic.to_string(), partition))
            .or_insert(offset + 1);
        if offset + 1 > *entry {
            *entry = offset + 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// Stores the next offset to read for every partition seen; auto-commit sends them.
    pub fn store<C: Consumer>(&self, consumer: &C) -> Result<(), KafkaError> {
        if self.next.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &self.next {
            list.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        consumer.store_offsets(&list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_batch_keeps_the_next_offset_per_partition() {
        let mut batch = OffsetBatch::new();
        batch.processed("t", 0, 5);
        batch.processed("t", 0, 7);
        batch.processed("t", 0, 6);
        batch.processed("t", 1, 0);
        assert_eq!(batch.next[&("t".to_string(), 0)], 8);
        assert_eq!(batch.next[&("t".to_string(), 1)], 1);
    }
}
