//! Consumer construction and offset bookkeeping. Offsets are stored explicitly, in partition
//! order, only after the caller's effect is durable; auto-commit then ships them.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::KafkaConfig;

/// Records between the group's committed offset and the partition's high watermark, by
/// `group`, `topic` and `partition` (from librdkafka's statistics, every `STATS_INTERVAL_MS`).
pub const CONSUMER_LAG: &str = "substrate_kafka_consumer_lag_records";
/// The partition's high watermark as the consumer last saw it.
pub const HIGH_WATERMARK: &str = "substrate_kafka_partition_high_watermark";
/// Partitions assigned to this consumer, by `group`.
pub const ASSIGNED_PARTITIONS: &str = "substrate_kafka_consumer_assigned_partitions";
/// How often librdkafka reports the consumer's statistics.
pub const STATS_INTERVAL_MS: u64 = 5_000;

/// A consumer of the platform: a stream consumer whose statistics become lag gauges.
pub type GroupConsumer = StreamConsumer<LagReporter>;

/// Turns librdkafka's statistics of one consumer into [`CONSUMER_LAG`] and
/// [`HIGH_WATERMARK`] per assigned partition.
pub struct LagReporter {
    group: String,
}

impl ClientContext for LagReporter {
    fn stats(&self, statistics: Statistics) {
        let mut assigned = 0u64;
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a negative lag means no
                // offset was committed there yet (the partition still counts as assigned).
                if *partition < 0 || !p.desired {
                    continue;
                }
                assigned += 1;
                if p.consumer_lag < 0 {
                    continue;
                }
                let labels = [
                    ("group", self.group.clone()),
                    ("topic", topic.clone()),
                    ("partition", partition.to_string()),
                ];
                metrics::gauge!(CONSUMER_LAG, &labels).set(p.consumer_lag as f64);
                metrics::gauge!(HIGH_WATERMARK, &labels).set(p.hi_offset as f64);
            }
        }
        metrics::gauge!(ASSIGNED_PARTITIONS, "group" => self.group.clone()).set(assigned as f64);
    }
}

impl ConsumerContext for LagReporter {}

/// A stream consumer subscribed to `topics` in `group_id`, reporting its lag.
pub fn subscribe(
    config: &KafkaConfig,
    group_id: &str,
    topics: &[&str],
) -> Result<GroupConsumer, KafkaError> {
    let mut client = config.consumer_config(group_id);
    client.set("statistics.interval.ms", STATS_INTERVAL_MS.to_string());
    let consumer: GroupConsumer = client.create_with_context(LagReporter {
        group: group_id.to_string(),
    })?;
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
    pub fn store<X: ConsumerContext, C: Consumer<X>>(
        &self,
        consumer: &C,
    ) -> Result<(), KafkaError> {
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
