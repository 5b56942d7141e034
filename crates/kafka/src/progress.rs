//! How far a consumer group has got in its topics, as the broker knows it: whether every record
//! written before a given time has been processed (its offset committed) by the group, whichever
//! member owns the partition. A timer that must not fire before the events that would cancel it
//! are read (a saga's deadline after downtime) asks this first. Blocking calls; run them off the
//! async threads.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::KafkaConfig;

pub struct GroupProgress {
    client: BaseConsumer,
    topics: Vec<String>,
}

impl GroupProgress {
    /// A client of `group_id` that never joins the group: it only reads the group's committed
    /// offsets and the offsets of `topics`.
    pub fn new(
        config: &KafkaConfig,
        group_id: &str,
        topics: &[String],
    ) -> Result<Self, KafkaError> {
        let client: BaseConsumer = config
            .consumer_config(group_id)
            .set("enable.auto.commit", "false")
            .create()?;
        Ok(Self {
            client,
            topics: topics.to_vec(),
        })
    }

    /// True when, in every partition of every topic, the group's committed offset is at or past
    /// the first record whose timestamp is `before_ms` or later (or the end of the partition):
    /// every record written before `before_ms` has been processed.
    pub fn processed_before(&self, before_ms: i64, timeout: Duration) -> Result<bool, KafkaError> {
        for topic in &self.topics {
            if !self.topic_processed_before(topic, before_ms, timeout)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn topic_processed_before(
        &self,
        topic: &str,
        before_ms: i64,
        timeout: Duration,
    ) -> Result<bool, KafkaError> {
        let metadata = self.client.fetch_metadata(Some(topic), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(KafkaError::MetadataFetch(
                rdkafka::error::RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        let mut at_time = TopicPartitionList::new();
        let mut all = TopicPartitionList::new();
        for p in &partitions {
            at_time.add_partition_offset(topic, *p, Offset::Offset(before_ms))?;
            all.add_partition(topic, *p);
        }
        let firsts = self.client.offsets_for_times(at_time, timeout)?;
        let committed = self.client.committed_offsets(all, timeout)?;
        for p in partitions {
            let (low, high) = self.client.fetch_watermarks(topic, p, timeout)?;
            let first = match firsts.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                // No record at or after the time: everything in the partition is older.
                _ => high,
            };
            let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                // Nothing committed yet: the group starts at the earliest record.
                _ => low,
            };
            if done < first {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
