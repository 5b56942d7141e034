//! The notification-writer's failure handling with a writer of the test's own (own topic, group
//! and event type): poison records go to the dead-letter topic with their origin in headers
//! while the partition moves on; a batch Postgres refuses is split so that only the refused row
//! is dead-lettered; a Postgres outage moves no offset and the writer resumes.

use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use substrate_runtime::Shutdown;
use substrate_testkit::{
    count_rows, encode_message, eventually, message_event, message_topic, unique, Outage, Stack,
};
use uuid::Uuid;

struct TestWriter {
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_writer(
    stack: &Stack,
    topic: &str,
    dlq: &str,
    event_type: &str,
    database_url: &str,
) -> TestWriter {
    let yaml = format!(
        "notification_writer:\n  listen: 127.0.0.1:0\n  group_id: {group}\n  batch_max_rows: 50\n  batch_max_ms: 20\n  dead_letter_topic: {dlq}\n  topics:\n    {topic}:\n      event_type: {event_type}\n      visibility_field: visibility\n      recipient_field: recipient_id\n      sender_field: sender_id\n\
         kafka:\n  bootstrap_servers: {kafka}\n  client_id: test-writer\n\
         schema_registry:\n  url: {registry}\n\
         database:\n  url: {database_url}\n  pool_size: 2\n",
        group = unique("test-writer"),
        kafka = stack.bootstrap_servers,
        registry = stack.registry_url,
    );
    let config: notification_writer::Config =
        substrate_runtime::config::load_config_from("{}", &yaml).expect("writer config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = Shutdown::default();
    let handle = tokio::spawn(notification_writer::serve(
        config,
        listener,
        shutdown.clone(),
    ));
    TestWriter { shutdown, handle }
}

fn producer(stack: &Stack) -> FutureProducer {
    stack.kafka().producer_config().create().unwrap()
}

async fn send(producer: &FutureProducer, topic: &str, payload: &[u8], ce_id: Option<Uuid>) {
    let mut headers = OwnedHeaders::new();
    let id = ce_id.map(|u| u.to_string());
    if let Some(id) = &id {
        headers = headers.insert(Header {
            key: "ce_id",
            value: Some(id.as_str()),
        });
    }
    let record = FutureRecord::<[u8], [u8]>::to(topic)
        .payload(payload)
        .partition(0)
        .headers(headers);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("produce");
}

#[tokio::test]
async fn poison_records_are_dead_lettered_and_the_partition_moves_on() {
    let stack = Stack::load();
    let topic = unique("test.writer.poison");
    let dlq = unique("test.writer.dlq");
    let event_type = format!("test.poison_{}", &Uuid::new_v4().simple().to_string()[..8]);
    message_topic(&stack, &topic, 1).await;
    stack.create_topic(&dlq, 1).await;
    let writer = start_writer(&stack, &topic, &dlq, &event_type, &stack.database_url).await;
    let producer = producer(&stack);

    send(&producer, &topic, b"definitely not avro", None).await;
    let mut no_recipient = message_event(Uuid::new_v4(), None, "bad");
    no_recipient["visibility"] = "direct".into();
    let bad = encode_message(&stack, &topic, &no_recipient).await;
    send(&producer, &topic, &bad, None).await;
    let good_event = message_event(Uuid::new_v4(), None, "good");
    let good = encode_message(&stack, &topic, &good_event).await;
    send(&producer, &topic, &good, None).await;

    let db = stack.db().await;
    eventually(Duration::from_secs(30), "the good record's row", || async {
        (count_rows(&db, &event_type).await == 1).then_some(())
    })
    .await
    .unwrap();

    let consumer = stack.consumer(&dlq);
    let mut dead = Vec::new();
    while dead.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters arrive")
            .unwrap();
        dead.push(message.detach());
    }
    dead.sort_by_key(|m| {
        substrate_kafka::headers::header_str(m.headers().unwrap(), "dlq_source_offset")
            .unwrap()
            .parse::<i64>()
            .unwrap()
    });
    let header = |m: &rdkafka::message::OwnedMessage, k: &str| {
        substrate_kafka::headers::header_str(m.headers().unwrap(), k)
            .unwrap()
            .to_string()
    };
    assert_eq!(
        dead[0].payload(),
        Some(&b"definitely not avro"[..]),
        "original bytes kept"
    );
    assert_eq!(header(&dead[0], "dlq_source_topic"), topic);
    assert_eq!(header(&dead[0], "dlq_source_partition"), "0");
    assert_eq!(header(&dead[0], "dlq_source_offset"), "0");
    assert!(header(&dead[0], "dlq_error").contains("undecodable"));
    assert_eq!(header(&dead[1], "dlq_source_offset"), "1");
    assert!(
        header(&dead[1], "dlq_error").contains("recipient"),
        "{}",
        header(&dead[1], "dlq_error")
    );
    assert_eq!(dead[1].payload(), Some(&bad[..]));

    writer.shutdown.cancel();
    writer.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_refused_row_is_split_out_of_its_batch_and_dead_lettered() {
    let stack = Stack::load();
    let topic = unique("test.writer.split");
    let dlq = unique("test.writer.dlq");
    let event_type = format!("test.split_{}", &Uuid::new_v4().simple().to_string()[..8]);
    message_topic(&stack, &topic, 1).await;
    stack.create_topic(&dlq, 1).await;
    let producer = producer(&stack);
    // Nine records in one partition before the writer starts, so they are read as one batch;
    // the fifth holds a NUL, which `jsonb` refuses (SQLSTATE 22P05).
    for i in 0..9 {
        let text = if i == 4 {
            "refused\u{0}row".to_string()
        } else {
            format!("row {i}")
        };
        let payload =
            encode_message(&stack, &topic, &message_event(Uuid::new_v4(), None, &text)).await;
        send(&producer, &topic, &payload, None).await;
    }
    let writer = start_writer(&stack, &topic, &dlq, &event_type, &stack.database_url).await;
    let db = stack.db().await;
    eventually(
        Duration::from_secs(30),
        "the eight storable rows",
        || async { (count_rows(&db, &event_type).await == 8).then_some(()) },
    )
    .await
    .unwrap();

    let consumer = stack.consumer(&dlq);
    let dead = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the refused row is dead-lettered")
        .unwrap()
        .detach();
    let header = |k: &str| {
        substrate_kafka::headers::header_str(dead.headers().unwrap(), k)
            .unwrap()
            .to_string()
    };
    assert_eq!(header("dlq_source_offset"), "4");
    let error = header("dlq_error");
    assert!(
        error.contains("22P05") && error.contains("user_notifications refused the row"),
        "the database's own code and message: {error}"
    );
    // Only that row: nothing else arrives and the rows stay at eight.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), consumer.recv())
            .await
            .is_err(),
        "exactly one dead letter"
    );
    assert_eq!(count_rows(&db, &event_type).await, 8);
    let metrics = substrate_runtime::ops::metrics_handle().render();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("substrate_batch_splits_total{operation=\"notification_writer.insert\"}")),
        "the batch was split to find the row: {metrics}"
    );
    writer.shutdown.cancel();
    writer.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn postgres_outage_holds_offsets_and_the_writer_resumes() {
    let stack = Stack::load();
    let topic = unique("test.writer.outage");
    let dlq = unique("test.writer.dlq");
    let event_type = format!("test.outage_{}", &Uuid::new_v4().simple().to_string()[..8]);
    message_topic(&stack, &topic, 1).await;
    stack.create_topic(&dlq, 1).await;

    let pg: std::net::SocketAddr = {
        let config: tokio_postgres::Config = stack.database_url.parse().unwrap();
        let port = config.get_ports()[0];
        format!("127.0.0.1:{port}").parse().unwrap()
    };
    let outage = Outage::proxy(pg).await;
    let via_proxy = stack.database_url.replace(
        &format!(":{}/", pg.port()),
        &format!(":{}/", outage.addr.port()),
    );
    let writer = start_writer(&stack, &topic, &dlq, &event_type, &via_proxy).await;
    let producer = producer(&stack);
    let db = stack.db().await;

    let first = encode_message(
        &stack,
        &topic,
        &message_event(Uuid::new_v4(), None, "before"),
    )
    .await;
    send(&producer, &topic, &first, None).await;
    eventually(Duration::from_secs(30), "the first row", || async {
        (count_rows(&db, &event_type).await == 1).then_some(())
    })
    .await
    .unwrap();

    outage.down();
    for i in 0..20 {
        let payload = encode_message(
            &stack,
            &topic,
            &message_event(Uuid::new_v4(), None, &format!("during {i}")),
        )
        .await;
        send(&producer, &topic, &payload, None).await;
    }
    // The writer read them and keeps trying: wait until it has been refused a few times (its
    // backoff retrying the held batch), then nothing may have been written.
    eventually(Duration::from_secs(30), "reconnect attempts", || async {
        (outage.refused() >= 3).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        count_rows(&db, &event_type).await,
        1,
        "nothing is written while Postgres is away"
    );

    outage.restore();
    eventually(
        Duration::from_secs(30),
        "the held rows after the outage",
        || async { (count_rows(&db, &event_type).await == 21).then_some(()) },
    )
    .await
    .unwrap();
    writer.shutdown.cancel();
    writer.handle.await.unwrap().unwrap();
}
