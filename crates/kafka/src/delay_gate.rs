//! Holding back records of delay topics until they are due: a record that is not yet due
//! pauses its partition (rewound to that record) until it is, so nothing sleeps per record and
//! other partitions keep flowing. Every record of a delay topic waits the same delay, so due
//! times grow along a partition and the head record decides for all behind it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, DefaultConsumerContext};
use rdkafka::message::Message;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

/// Holds back records of delay topics until they are due by pausing their partition.
pub struct DelayGate<C, X = DefaultConsumerContext>
where
    C: Consumer<X> + Send + Sync + 'static,
    X: ConsumerContext + 'static,
{
    consumer: Arc<C>,
    context: std::marker::PhantomData<fn() -> X>,
    /// Partitions paused and rewound to this offset; later records still buffered are stale.
    paused_at: Mutex<HashMap<(String, i32), i64>>,
}

/// What to do with a record read from a delay topic.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Process it now.
    Due,
    /// Not yet: the partition is paused and will be read again from this record.
    Held,
    /// A record read ahead of a held one; it will be read again after the partition resumes.
    Stale,
}

impl<C, X> DelayGate<C, X>
where
    C: Consumer<X> + Send + Sync + 'static,
    X: ConsumerContext + 'static,
{
    pub fn new(consumer: Arc<C>) -> Self {
        Self {
            consumer,
            context: std::marker::PhantomData,
            paused_at: Mutex::new(HashMap::new()),
        }
    }

    /// Decides for `message`; when it is not due, pauses its partition, rewinds to it, and
    /// resumes the partition when it is due.
    pub fn check<M: Message>(&self, message: &M, due_ms: Option<i64>) -> Gate {
        let key = (message.topic().to_string(), message.partition());
        let mut paused = self.paused_at.lock().expect("delay gate lock");
        if let Some(at) = paused.get(&key) {
            if message.offset() > *at {
                return Gate::Stale;
            }
            paused.remove(&key);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let Some(due) = due_ms.filter(|due| *due > now) else {
            return Gate::Due;
        };
        let mut list = TopicPartitionList::new();
        list.add_partition(message.topic(), message.partition());
        if let Err(e) = self.consumer.pause(&list) {
            tracing::warn!(topic = message.topic(), partition = message.partition(), error = %e, "pausing a delay partition failed");
        }
        if let Err(e) = self.consumer.seek(
            message.topic(),
            message.partition(),
            Offset::Offset(message.offset()),
            Timeout::After(Duration::from_secs(5)),
        ) {
            tracing::warn!(topic = message.topic(), partition = message.partition(), error = %e, "rewinding a delay partition failed");
        }
        paused.insert(key, message.offset());
        // The timer must not keep the consumer alive: the service drops it when it stops, so
        // librdkafka closes it then, never from a timer dropped during the runtime's teardown.
        let consumer = Arc::downgrade(&self.consumer);
        let wait = Duration::from_millis((due - now) as u64);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(consumer) = consumer.upgrade() else {
                return;
            };
            if let Err(e) = consumer.resume(&list) {
                tracing::debug!(error = %e, "resuming a delay partition failed (revoked?)");
            }
        });
        Gate::Held
    }
}
