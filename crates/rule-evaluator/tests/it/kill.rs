//! The rule-evaluator binary against the local stack, SIGKILLed ten times while it works through
//! a backlog of purchases and restarted each time. The killed runs are slowed (200 ms producer
//! linger), and every kill is asserted to land mid-stream: after the killed process itself
//! acknowledged dispatch requests, the topic gained requests not seen before that run and the
//! group committed offsets in that run, and while requests were still missing once the topic was
//! read to its end after the kill. After the last, clean run the dispatch topic holds exactly the
//! expected request ids (one per action of every VIP purchase, none for the others), copies
//! redelivered after a kill are identical to the first apart from their trace context, the
//! unified topic holds every event; the last run commits every event and SIGTERM stops it with
//! exit code 0.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use substrate_db::rules::{upsert, RuleRow};
use substrate_testkit::{repo_root, unique, Stack};
use tokio::process::{Child, Command};
use uuid::Uuid;

use super::{purchase, purchase_headers};

/// Purchases produced up front; every fourth is REGULAR and matches nothing.
const EVENTS: usize = 30_000;
const KILLS: usize = 10;
const PARTITIONS: i32 = 3;
/// Bound of the whole test (backlog, ten restarts with a 6 s session timeout each, last run).
const TIME_LIMIT: Duration = Duration::from_secs(240);
/// Bound of one run's wait for its first requests (group rebalance included).
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// The evaluator's counter of acknowledged dispatch requests.
const REQUESTS_SERIES: &str = "rule_evaluator_dispatch_requests_total";

/// A rule-evaluator process started from the built binary with only the test's configuration;
/// killed when dropped (a failing assertion leaves no process behind).
struct Evaluator {
    child: Child,
    metrics_url: String,
    log: PathBuf,
}

impl Evaluator {
    fn spawn(config: &Path, log: &Path) -> Self {
        // A free port for the operational surface, so the test can read this process's metrics.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_rule-evaluator"))
            .env_clear()
            .env("SUBSTRATE_CONFIG", config)
            .env(
                "SUBSTRATE_RULE_EVALUATOR__LISTEN",
                format!("127.0.0.1:{port}"),
            )
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("start rule-evaluator");
        Self {
            child,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            log: log.to_path_buf(),
        }
    }

    fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().expect("process state") {
            panic!(
                "the rule-evaluator exited ({status}) {what}; log: {}",
                self.log.display()
            );
        }
    }

    /// SIGKILL, and wait until the process is gone.
    async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// SIGTERM (the graceful path); the exit status within 30 s.
    async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGTERM to {pid}");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no exit within 30 s of SIGTERM; log: {}",
                    self.log.display()
                )
            })
            .expect("exit status")
    }
}

/// Reads a topic of the test from the start by direct assignment (no group to join), keeping
/// the first copy of each record by its id field and counting later copies; a later copy that
/// differs from the first (trace context aside) is recorded as a mismatch.
struct Observer {
    stack: Stack,
    topic: String,
    id_field: &'static str,
    consumer: StreamConsumer,
    /// Next offset to read, per partition.
    next: HashMap<i32, i64>,
    first: HashMap<String, Value>,
    copies: usize,
    mismatched: Vec<String>,
}

impl Observer {
    fn new(stack: &Stack, topic: &str, id_field: &'static str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &stack.bootstrap_servers)
            .set("group.id", format!("test-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).expect("assign");
        Self {
            stack: stack.clone(),
            topic: topic.to_string(),
            id_field,
            consumer,
            next: HashMap::new(),
            first: HashMap::new(),
            copies: 0,
            mismatched: Vec::new(),
        }
    }

    fn distinct(&self) -> usize {
        self.first.len()
    }

    /// Reads whatever arrives within `window`.
    async fn read_for(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, self.consumer.recv()).await {
                Ok(Ok(message)) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    let json = decode(&self.stack, &message).await;
                    self.next.insert(partition, offset + 1);
                    self.keep(json);
                }
                Ok(Err(error)) => eprintln!("reading {}: {error}", self.topic),
                Err(_) => break,
            }
        }
    }

    fn keep(&mut self, mut json: Value) {
        let id = json[self.id_field]
            .as_str()
            .unwrap_or_else(|| panic!("a record of {} without {}", self.topic, self.id_field))
            .to_string();
        // A redelivered event gets a new span (or a new root trace): the one field that differs.
        json.as_object_mut().unwrap().remove("traceparent");
        match self.first.entry(id) {
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(json);
            }
            std::collections::hash_map::Entry::Occupied(entry) => {
                self.copies += 1;
                if *entry.get() != json {
                    self.mismatched.push(entry.key().clone());
                }
            }
        }
    }

    /// Reads up to the end the topic has now (its high watermarks).
    async fn catch_up(&mut self) {
        let mut high = Vec::new();
        for partition in 0..PARTITIONS {
            let (_, end) = self
                .consumer
                .fetch_watermarks(&self.topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            high.push((partition, end));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while high
            .iter()
            .any(|(partition, end)| self.next.get(partition).copied().unwrap_or(0) < *end)
        {
            assert!(
                Instant::now() < deadline,
                "{} not read to {high:?} within 60 s (at {:?})",
                self.topic,
                self.next
            );
            self.read_for(Duration::from_millis(100)).await;
        }
    }
}

/// The offsets the evaluator's group committed on a topic, read by a client of the group that
/// never joins it (an offset fetch only).
struct Commits {
    consumer: StreamConsumer,
    topic: String,
}

impl Commits {
    fn new(stack: &Stack, group: &str, topic: &str) -> Self {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", &stack.bootstrap_servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        Self {
            consumer,
            topic: topic.to_string(),
        }
    }

    /// Events committed: the sum of the committed offsets.
    fn events(&self) -> i64 {
        let mut partitions = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            partitions.add_partition(&self.topic, partition);
        }
        self.consumer
            .committed_offsets(partitions, Duration::from_secs(10))
            .expect("committed offsets")
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            })
            .sum()
    }
}

async fn decode(stack: &Stack, message: &BorrowedMessage<'_>) -> Value {
    let (value, _) = stack
        .registry()
        .decode(message.payload().expect("a record value"))
        .await
        .expect("decode");
    substrate_avro::avro_to_json(&value)
}

/// What a request id stands for: the event and the action index.
struct Expected {
    event_id: String,
    action_index: usize,
}

#[tokio::test]
async fn killed_ten_times_mid_stream_it_leaves_exactly_the_expected_requests() {
    let test_started = Instant::now();
    let stack = Stack::load();
    let catalog = substrate_avro::Catalog::load(&repo_root().join("avro")).unwrap();
    let text_of = |topic: &str| catalog.get(topic).unwrap().text.clone();
    let input = unique("test.rules.kill-purchases");
    let dispatch_topic = unique("test.rules.kill-requests");
    let unified_topic = unique("test.rules.kill-unified");
    for (topic, schema) in [
        (&input, "public.commerce.purchase.events"),
        (&dispatch_topic, "internal.dispatch.requests"),
        (&unified_topic, "internal.platform.unified.events"),
    ] {
        stack.create_topic(topic, PARTITIONS).await;
        stack
            .registry()
            .register(topic, &text_of(schema))
            .await
            .unwrap();
    }
    // The evaluator finds the schemas of the topics it produces to by topic name: an Avro
    // directory of this test holds them under the test's topic names.
    let dir = std::env::temp_dir().join(unique("rule-evaluator-kill"));
    let avro_dir = dir.join("avro");
    std::fs::create_dir_all(&avro_dir).unwrap();
    std::fs::write(
        avro_dir.join(format!("{dispatch_topic}.avsc")),
        text_of("internal.dispatch.requests"),
    )
    .unwrap();
    std::fs::write(
        avro_dir.join(format!("{unified_topic}.avsc")),
        text_of("internal.platform.unified.events"),
    )
    .unwrap();

    let db = stack.db().await;
    // The public form, as `esctl rules save` stores it (the Slack URL is sealed apart).
    let full: Vec<substrate_rules::Action> = serde_json::from_value(json!([
        {"type": "slack", "webhook_url": "https://hooks.slack.com/services/T/B/X", "template": "VIP bought for {{purchase.amount}}"},
        {"type": "s3", "bucket": "event-archive", "prefix": "vip"}
    ]))
    .unwrap();
    let (actions, _) = substrate_rules::split_actions(&full);
    let rule = upsert(
        &db,
        &RuleRow {
            id: Uuid::nil(),
            name: unique("kill-vip"),
            enabled: true,
            topics: vec![input.clone()],
            event_types: vec![],
            condition: json!("user.segment == 'VIP'"),
            condition_text: Some("user.segment == 'VIP'".into()),
            actions: actions.clone(),
            priority: 10,
            version: 0,
        },
    )
    .await
    .unwrap();

    // The whole backlog first.
    let mut expected: HashMap<String, Expected> = HashMap::new();
    let mut event_ids = BTreeSet::new();
    let mut records = Vec::with_capacity(EVENTS);
    let input_schema = catalog.get("public.commerce.purchase.events").unwrap();
    for i in 0..EVENTS {
        let segment = if i % 4 == 3 { "REGULAR" } else { "VIP" };
        let event = purchase(segment, 10.0 + i as f64);
        let id = event["event_id"].as_str().unwrap().to_string();
        let bytes = stack
            .registry()
            .encode(&input, input_schema.to_avro(&event).unwrap())
            .await
            .unwrap();
        if segment == "VIP" {
            for action_index in 0..2 {
                expected.insert(
                    rule_evaluator::evaluate::request_id(&id, rule.id, action_index).to_string(),
                    Expected {
                        event_id: id.clone(),
                        action_index,
                    },
                );
            }
        }
        event_ids.insert(id.clone());
        records.push((id, bytes));
    }
    let producer: FutureProducer = stack.kafka().producer_config().create().unwrap();
    let sends = records.iter().map(|(id, bytes)| {
        producer.send(
            FutureRecord::<str, [u8]>::to(&input)
                .key(id)
                .payload(bytes)
                .headers(purchase_headers(id)),
            Duration::from_secs(30),
        )
    });
    for result in join_all(sends).await {
        result.map_err(|(e, _)| e).expect("produce");
    }
    drop(records);
    eprintln!(
        "{EVENTS} purchases produced, {} requests expected, after {:?}",
        expected.len(),
        test_started.elapsed()
    );

    let group = unique("kill-test");
    // The killed runs linger 200 ms before sending each produce, so a batch of events takes at
    // least that long to be acknowledged: a run works for seconds (its offsets get committed
    // while requests are still missing, and every kill lands with a batch in flight); the last
    // run sends at once.
    let config_with = |linger_ms: u64| {
        let path = dir.join(format!("rule-evaluator-{linger_ms}.yaml"));
        std::fs::write(
            &path,
            format!(
                "rule_evaluator:\n  listen: 127.0.0.1:0\n  group_id: {group}\n  topics: [{input}]\n  dispatch_topic: {dispatch_topic}\n  unified_topic: {unified_topic}\n  avro_dir: {avro}\n  resync_secs: 600\n\
                 kafka:\n  bootstrap_servers: {kafka}\n  linger_ms: {linger_ms}\n  extra:\n    session.timeout.ms: \"6000\"\n\
                 schema_registry:\n  url: {registry}\n\
                 database:\n  url: {db}\n",
                avro = avro_dir.display(),
                kafka = stack.bootstrap_servers,
                registry = stack.registry_url,
                db = stack.database_url,
            ),
        )
        .unwrap();
        path
    };
    let slow = config_with(200);
    let fast = config_with(1);

    let mut requests = Observer::new(&stack, &dispatch_topic, "request_id");
    let commits = Commits::new(&stack, &group, &input);
    for kill in 0..KILLS {
        let before = requests.distinct();
        let committed_before = commits.events();
        let mut evaluator = Evaluator::spawn(&slow, &dir.join(format!("run-{kill}.log")));
        let started = Instant::now();
        // Kill as soon as this run has produced requests the topic did not have, the process
        // itself reports acknowledged requests (they are not stragglers of the previous, killed
        // run), and the group's committed offsets moved (this run committed some of its work).
        let (acknowledged, committed) = loop {
            requests.read_for(Duration::from_millis(20)).await;
            if requests.distinct() > before {
                let acknowledged =
                    substrate_testkit::metric(&evaluator.metrics_url, REQUESTS_SERIES)
                        .await
                        .unwrap_or(0.0);
                if acknowledged > 0.0 {
                    let committed = commits.events();
                    if committed > committed_before {
                        break (acknowledged, committed);
                    }
                }
            }
            evaluator.assert_running(&format!("before making progress in run {kill}"));
            assert!(
                started.elapsed() < RUN_LIMIT,
                "run {kill} made no progress within {RUN_LIMIT:?}; log: {}",
                evaluator.log.display()
            );
            assert!(test_started.elapsed() < TIME_LIMIT, "over {TIME_LIMIT:?}");
        };
        let at_kill = requests.distinct();
        evaluator.kill().await;
        // Everything the killed process got acknowledged is on the topic by now.
        requests.catch_up().await;
        let after = requests.distinct();
        let committed_after = commits.events();
        eprintln!(
            "kill {kill} after {:.1?}: distinct requests {before} before the run, {at_kill} seen at the kill, {after} after it, of {}; {acknowledged} acknowledged by the run; events committed {committed_before} before the run, {committed} at the kill, {committed_after} after it, of {EVENTS}; {} duplicates so far",
            started.elapsed(),
            expected.len(),
            requests.copies,
        );
        assert!(
            after < expected.len(),
            "kill {kill} landed mid-stream ({after} of {} requests present)",
            expected.len()
        );
        assert!(
            committed_after < EVENTS as i64,
            "kill {kill} landed with events left to commit"
        );
    }

    // The last run finishes the backlog (its group has committed every event; offsets move only
    // after an event's effects are acknowledged) and stops cleanly.
    let last_started = Instant::now();
    let mut evaluator = Evaluator::spawn(&fast, &dir.join("last.log"));
    loop {
        requests.read_for(Duration::from_millis(100)).await;
        if commits.events() == EVENTS as i64 {
            break;
        }
        evaluator.assert_running("in the last run");
        assert!(
            test_started.elapsed() < TIME_LIMIT,
            "over {TIME_LIMIT:?} with {} of {EVENTS} events committed; log: {}",
            commits.events(),
            evaluator.log.display()
        );
    }
    let last_run = last_started.elapsed();
    let status = evaluator.terminate().await;
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert_eq!(commits.events(), EVENTS as i64, "nothing left to commit");
    // Everything every run got acknowledged, read to the end.
    requests.catch_up().await;
    let mut unified = Observer::new(&stack, &unified_topic, "event_id");
    unified.catch_up().await;

    let seen: BTreeSet<&String> = requests.first.keys().collect();
    let wanted: BTreeSet<&String> = expected.keys().collect();
    let missing: Vec<_> = wanted.difference(&seen).take(5).collect();
    let unexpected: Vec<_> = seen.difference(&wanted).take(5).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "requests: {} missing (e.g. {missing:?}), {} unexpected (e.g. {unexpected:?})",
        wanted.difference(&seen).count(),
        seen.difference(&wanted).count()
    );
    assert!(
        requests.mismatched.is_empty(),
        "copies differing from the first: {:?}",
        &requests.mismatched[..requests.mismatched.len().min(5)]
    );
    for (id, request) in &requests.first {
        let want = &expected[id];
        assert_eq!(request["event_id"], want.event_id.as_str(), "{id}");
        assert_eq!(request["action_index"], want.action_index, "{id}");
        assert_eq!(request["rule_id"], rule.id.to_string(), "{id}");
        assert_eq!(request["rule_version"], 1, "{id}");
        assert_eq!(request["source_topic"], input.as_str(), "{id}");
        let action: Value = serde_json::from_str(request["action"].as_str().unwrap()).unwrap();
        assert_eq!(action, actions[want.action_index], "{id}");
    }
    let unified_ids: BTreeSet<String> = unified.first.keys().cloned().collect();
    assert!(
        unified_ids == event_ids,
        "unified events: {} missing, {} unexpected",
        event_ids.difference(&unified_ids).count(),
        unified_ids.difference(&event_ids).count()
    );
    assert!(
        unified.mismatched.is_empty(),
        "unified copies differing from the first: {:?}",
        &unified.mismatched[..unified.mismatched.len().min(5)]
    );
    assert!(unified
        .first
        .values()
        .all(|e| e["source_topic"] == input.as_str()));
    eprintln!(
        "exactly {} distinct requests ({} duplicates) and {} distinct unified events ({} duplicates); last run {last_run:.1?}; test {:.1?}",
        requests.distinct(),
        requests.copies,
        unified.distinct(),
        unified.copies,
        test_started.elapsed()
    );

    db.execute("DELETE FROM public.rules WHERE name = $1", &[&rule.name])
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
