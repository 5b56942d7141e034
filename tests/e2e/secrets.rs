//! Secrets never travel (issue 10). A rule whose webhook, Slack and Discord actions carry secrets
//! made for this run is saved as `esctl rules save` saves it (public actions in `rules`, the
//! secrets sealed in `substrate_private.action_secrets` with the stack's key), and a purchase
//! goes through the running gateway, rule-evaluator and dispatcher: the webhook is delivered
//! signed, the Slack message after a 500 and a retry, the Discord message retried and then
//! dead-lettered by a 410 that disables its endpoint. Then not one of the secrets is in any record
//! written to any of the stack's topics during the run (keys, values, header names and values;
//! records older than the run cannot hold secrets made in it), in any row of `rules`,
//! `dispatch_attempts` or `dispatch_endpoints`, or in anything the services logged meanwhile.
//! And the login webhook secret is out of reach of `anon` and `authenticated`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use substrate_db::rules::RuleRow;
use substrate_rules::{split_actions, Action};
use substrate_testkit::{eventually, metric, repo_root, unique, Stack};
use uuid::Uuid;

use crate::harness::post_json;

/// Saves `rule` (its `actions` in the full, authoring form) as esctl does: public actions in the
/// rule, secrets sealed with the stack's key in the same transaction.
pub async fn save_sealed(
    stack: &Stack,
    db: &mut tokio_postgres::Client,
    mut rule: RuleRow,
) -> RuleRow {
    let actions: Vec<Action> = serde_json::from_value(rule.actions.clone()).unwrap();
    let (public, secrets) = split_actions(&actions);
    rule.actions = public;
    let plaintexts: Vec<(i32, Vec<u8>)> = secrets.iter().map(|(i, s)| (*i, s.to_bytes())).collect();
    substrate_db::secrets::save_rule(db, &rule, &plaintexts, &stack.keyring())
        .await
        .unwrap()
}

/// One request a receiver got: path, headers, body.
type Hit = (String, HeaderMap, Bytes);

/// Local receivers answering from a script per path (200 once it runs out).
#[derive(Clone, Default)]
struct Receivers {
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<HashMap<String, VecDeque<u16>>>>,
}

async fn receive(
    State(receivers): State<Receivers>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_string();
    let status = {
        let mut script = receivers.script.lock().unwrap();
        let answers = script.entry(path.clone()).or_default();
        // The last scripted answer repeats.
        match answers.len() {
            0 => 200,
            1 => answers[0],
            _ => answers.pop_front().unwrap(),
        }
    };
    receivers.hits.lock().unwrap().push((path, headers, body));
    StatusCode::from_u16(status).unwrap()
}

impl Receivers {
    fn hits_at(&self, path: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .cloned()
            .collect()
    }
}

/// The topics of the stack (every topic but the per-test `test.*`/`test-*`, `bench.*` and
/// internal ones) with the end of each partition.
fn stack_topic_ends(stack: &Stack) -> HashMap<(String, i32), i64> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap_servers)
        .set("group.id", format!("test-scan-{}", Uuid::new_v4()))
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let metadata = client.fetch_metadata(None, timeout).unwrap();
    let mut ends = HashMap::new();
    for topic in metadata.topics() {
        let name = topic.name();
        if ["test.", "test-", "bench.", "__"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        for partition in topic.partitions() {
            let (_, high) = client
                .fetch_watermarks(name, partition.id(), timeout)
                .unwrap();
            ends.insert((name.to_string(), partition.id()), high);
        }
    }
    ends
}

/// Every record written to the stack's topics since `from` (partitions not in `from` are read
/// from their start), as the text of its key, value, header names and values, by topic.
fn records_since(
    stack: &Stack,
    from: &HashMap<(String, i32), i64>,
) -> HashMap<String, Vec<String>> {
    let ends = stack_topic_ends(stack);
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap_servers)
        .set("group.id", format!("test-scan-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for ((topic, partition), end) in &ends {
        let start = from.get(&(topic.clone(), *partition)).copied().unwrap_or(0);
        if *end > start {
            list.add_partition_offset(topic, *partition, Offset::Offset(start))
                .unwrap();
            remaining.insert((topic.clone(), *partition), *end);
        }
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if remaining.is_empty() {
        return out;
    }
    client.assign(&list).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !remaining.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "reading the topics timed out"
        );
        let Some(message) = client.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        let key = (message.topic().to_string(), message.partition());
        let mut text = String::new();
        for bytes in [message.key(), message.payload()].into_iter().flatten() {
            text.push_str(&String::from_utf8_lossy(bytes));
            text.push('\n');
        }
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                text.push_str(header.key);
                text.push('=');
                text.push_str(&String::from_utf8_lossy(header.value.unwrap_or_default()));
                text.push('\n');
            }
        }
        out.entry(key.0.clone()).or_default().push(text);
        if remaining
            .get(&key)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            remaining.remove(&key);
        }
    }
    out
}

/// [`records_since`] off the runtime's threads.
async fn scan(stack: &Stack, from: &HashMap<(String, i32), i64>) -> HashMap<String, Vec<String>> {
    let (stack, from) = (stack.clone(), from.clone());
    tokio::task::spawn_blocking(move || records_since(&stack, &from))
        .await
        .unwrap()
}

/// The size of every service and component log of the stack.
fn log_sizes() -> HashMap<std::path::PathBuf, u64> {
    std::fs::read_dir(repo_root().join(".local/logs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| {
            let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, size)
        })
        .collect()
}

/// What each log got since `from`.
fn logged_since(from: &HashMap<std::path::PathBuf, u64>) -> HashMap<String, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = HashMap::new();
    for path in log_sizes().into_keys() {
        let mut file = std::fs::File::open(&path).unwrap();
        let start = from.get(&path).copied().unwrap_or(0);
        // A log rotated or truncated meanwhile is read whole.
        let len = file.metadata().unwrap().len();
        file.seek(SeekFrom::Start(if len >= start { start } else { 0 }))
            .unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        out.insert(name, String::from_utf8_lossy(&bytes).into_owned());
    }
    out
}

/// Every row of a table, as text.
async fn table_rows(db: &tokio_postgres::Client, table: &str) -> Vec<String> {
    db.query(&format!("SELECT t::text FROM {table} t"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn assert_no_secret<'a>(
    what: &str,
    texts: impl IntoIterator<Item = &'a String>,
    secrets: &[(&str, String)],
) {
    for text in texts {
        for (name, secret) in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} holds the {name}: …{}…",
                excerpt(text, secret)
            );
        }
    }
}

/// The text around `needle`, with the needle itself masked.
fn excerpt(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or(0);
    let start = text.floor_char_boundary(at.saturating_sub(80));
    let end = text.ceil_char_boundary((at + needle.len() + 80).min(text.len()));
    text[start..end].replace(needle, "<SECRET>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_nowhere_in_topics_audit_rows_or_logs_after_delivery_retry_and_dead_letter() {
    let stack = Stack::load();
    let mut db = stack.db().await;
    let topics_before = {
        let stack = stack.clone();
        tokio::task::spawn_blocking(move || stack_topic_ends(&stack))
            .await
            .unwrap()
    };
    let logs_before = log_sizes();

    let receivers = Receivers::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(receivers.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Secrets of this run only.
    let token = || Uuid::new_v4().simple().to_string();
    let key_material =
        base64::engine::general_purpose::STANDARD.encode(Uuid::new_v4().as_bytes().repeat(2));
    let whsec = format!("whsec_{key_material}");
    let (hook_token, query_token, bearer) = (token(), token(), token());
    let (slack_token, discord_token) = (token(), token());
    let hook_path = format!("/hooks/{hook_token}");
    let slack_path = format!("/services/T0/B0/{slack_token}");
    let discord_path = format!("/api/webhooks/1/{discord_token}");
    let hook_url = format!("http://{addr}{hook_path}?token={query_token}");
    let slack_url = format!("http://{addr}{slack_path}");
    let discord_url = format!("http://{addr}{discord_path}");
    let secrets = [
        ("webhook signing secret", whsec.clone()),
        ("webhook signing key", key_material.clone()),
        ("webhook URL path", hook_token.clone()),
        ("webhook URL query", query_token.clone()),
        ("webhook Authorization header", bearer.clone()),
        ("Slack URL", slack_token.clone()),
        ("Discord URL", discord_token.clone()),
    ];
    receivers.script.lock().unwrap().extend([
        (slack_path.clone(), VecDeque::from([500, 200])),
        (discord_path.clone(), VecDeque::from([500, 410])),
    ]);

    let order = unique("order-secrets");
    let name = unique("e2e-secrets");
    let condition = format!("purchase.id == '{order}'");
    let rule = save_sealed(
        &stack,
        &mut db,
        RuleRow {
            id: Uuid::nil(),
            name: name.clone(),
            enabled: true,
            topics: vec!["public.commerce.purchase.events".into()],
            event_types: vec![],
            condition: json!(condition),
            condition_text: Some(condition.clone()),
            actions: json!([
                {"type": "webhook", "url": hook_url, "secrets": [whsec],
                 "headers": {"authorization": format!("Bearer {bearer}")}},
                {"type": "slack", "webhook_url": slack_url, "template": "order {{purchase.id}}"},
                {"type": "discord", "webhook_url": discord_url, "template": "order {{purchase.id}}"}
            ]),
            priority: 0,
            version: 0,
        },
    )
    .await;
    let series = format!("rule_evaluator_rule_version{{rule=\"{name}\"}}");
    eventually(Duration::from_secs(15), "the rule loaded", || async {
        (metric(&stack.rule_evaluator_metrics, &series).await? >= 1.0).then_some(())
    })
    .await
    .unwrap();

    // The sealed rows: one per HTTP action, with the stack's key id.
    let sealed: Vec<(i32, i32, String)> = db
        .query(
            "SELECT rule_version, action_index, key_id FROM substrate_private.action_secrets
             WHERE rule_id = $1 ORDER BY action_index",
            &[&rule.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let key_id = stack.keyring().active_key_id().to_string();
    assert_eq!(
        sealed,
        (0..3).map(|i| (1, i, key_id.clone())).collect::<Vec<_>>()
    );

    // The purchase route takes the shop's API key, itself a secret of this run.
    let api_key = stack.api_key(&unique("shop"), &["purchase"]).await;
    stack
        .wait_for_key(&stack.gateway_url, "purchase", &api_key)
        .await;
    let user = Uuid::new_v4();
    let (status, _, body) = post_json(
        &format!("{}/api/v1/events/purchase", stack.gateway_url),
        Some(&api_key),
        &json!({
            "user": {"id": user, "email": "buyer@example.com", "segment": "REGULAR", "country": "DE"},
            "purchase": {"id": order, "amount": 12.5, "currency": "EUR", "items": 1}
        }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_string();
    let ids: Vec<String> = (0..3)
        .map(|i| rule_evaluator::evaluate::request_id(&event_id, rule.id, i).to_string())
        .collect();

    // Delivered: the webhook once, signed with the secret, with its header.
    let hook = eventually(Duration::from_secs(30), "the webhook", || async {
        receivers.hits_at(&hook_path).first().cloned()
    })
    .await
    .unwrap();
    let (_, headers, body) = hook;
    let header = |name: &str| headers[name].to_str().unwrap().to_string();
    assert_eq!(header("webhook-id"), ids[0]);
    assert_eq!(header("authorization"), format!("Bearer {bearer}"));
    dispatcher::signing::verify(
        &dispatcher::signing::Secret::parse(&whsec).unwrap(),
        &ids[0],
        header("webhook-timestamp").parse().unwrap(),
        &body[..],
        &header("webhook-signature"),
        chrono::Utc::now().timestamp(),
    )
    .expect("signed with the sealed secret");
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["data"]["purchase"]["id"], order.as_str());

    // Retried: Slack after its 500 (through the 5 s delay topic), Discord into the dead letter
    // after its 410.
    for (path, what) in [
        (&slack_path, "the Slack retry"),
        (&discord_path, "the Discord retry"),
    ] {
        let hits = eventually(Duration::from_secs(40), what, || async {
            let hits = receivers.hits_at(path);
            (hits.len() >= 2).then_some(hits)
        })
        .await
        .unwrap();
        assert_eq!(hits.len(), 2, "{what}");
        let body: Value = serde_json::from_slice(&hits[1].2).unwrap();
        assert_eq!(
            body.get("text").or_else(|| body.get("content")).unwrap(),
            &json!(format!("order {order}"))
        );
    }
    let outcomes = |id: String| {
        let db = &db;
        async move {
            let id = Uuid::parse_str(&id).unwrap();
            substrate_db::dispatch::attempts_of(db, id).await.unwrap()
        }
    };
    for (id, expected) in [
        (&ids[0], vec![(1, "delivered".to_string(), Some(200))]),
        (
            &ids[1],
            vec![
                (1, "retry".into(), Some(500)),
                (2, "delivered".into(), Some(200)),
            ],
        ),
        (
            &ids[2],
            vec![
                (1, "retry".into(), Some(500)),
                (2, "disabled".into(), Some(410)),
            ],
        ),
    ] {
        let rows = eventually(Duration::from_secs(20), "the audit rows", || async {
            let rows = outcomes(id.clone()).await;
            (rows.len() >= expected.len()).then_some(rows)
        })
        .await
        .unwrap();
        assert_eq!(rows, expected, "{id}");
    }
    let disabled: Vec<(String, bool)> = db
        .query(
            "SELECT endpoint, disabled FROM public.dispatch_endpoints WHERE url_hash = $1",
            &[&substrate_secrets::url_hash(&discord_url)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        disabled,
        [(substrate_secrets::redact_url(&discord_url), true)]
    );
    let dead_lettered = eventually(Duration::from_secs(20), "the dead letter", || async {
        let records = scan(&stack, &topics_before).await;
        records
            .get("internal.dispatch.dead-letter")
            .is_some_and(|r| r.iter().any(|t| t.contains(&ids[2])))
            .then_some(records)
    })
    .await
    .unwrap();

    // Nowhere: every record written meanwhile to any of the stack's topics. (The scan sees the
    // requests: each is in the requests topic, the retried ones in the first delay topic.)
    let secrets = {
        let mut all = secrets.to_vec();
        all.push(("shop's API key", api_key.clone()));
        all
    };
    let records = scan(&stack, &topics_before).await;
    for (topic, id) in [
        ("internal.dispatch.requests", &ids[0]),
        ("internal.dispatch.requests", &ids[1]),
        ("internal.dispatch.requests", &ids[2]),
        ("internal.dispatch.retry.5s", &ids[1]),
        ("internal.dispatch.retry.5s", &ids[2]),
    ] {
        assert!(
            records[topic].iter().any(|t| t.contains(id.as_str())),
            "{topic} holds {id}"
        );
    }
    for (topic, texts) in records.iter().chain(dead_lettered.iter()) {
        assert_no_secret(&format!("topic {topic}"), texts, &secrets);
    }

    // Nowhere in the tables operators and services read.
    for table in [
        "public.rules",
        "public.dispatch_attempts",
        "public.dispatch_endpoints",
    ] {
        let rows = table_rows(&db, table).await;
        assert!(!rows.is_empty(), "{table} has rows");
        assert_no_secret(table, &rows, &secrets);
    }
    let targets: Vec<String> = db
        .query(
            "SELECT DISTINCT target FROM public.dispatch_attempts WHERE request_id = ANY($1)",
            &[&ids
                .iter()
                .map(|i| Uuid::parse_str(i).unwrap())
                .collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for url in [&hook_url, &slack_url, &discord_url] {
        assert!(
            targets.contains(&substrate_secrets::redact_url(url)),
            "the audit names {} ({targets:?})",
            substrate_secrets::redact_url(url)
        );
    }

    // Nowhere in what the services (and Kafka, the registry, Postgres, S3) logged meanwhile.
    let logged = logged_since(&logs_before);
    assert!(
        logged["dispatcher.log"].contains(&substrate_secrets::redact_url(&discord_url)),
        "the dispatcher logged the disabled endpoint, redacted"
    );
    for (file, text) in &logged {
        assert_no_secret(&format!(".local/logs/{file}"), [text], &secrets);
    }

    db.execute("DELETE FROM public.rules WHERE id = $1", &[&rule.id])
        .await
        .unwrap();
    db.execute(
        "DELETE FROM public.dispatch_endpoints WHERE url_hash = $1",
        &[&substrate_secrets::url_hash(&discord_url)],
    )
    .await
    .unwrap();
}

/// The login webhook secret lives in `substrate_private.settings`: no database setting holds
/// it, `anon`, `authenticated` and `service_role` cannot read it, and the trigger (SECURITY
/// DEFINER) still sends it. Everything happens in a transaction that is rolled back.
#[tokio::test]
async fn the_login_webhook_secret_is_out_of_reach_of_client_roles() {
    let stack = Stack::load();
    let mut db = stack.db().await;
    let setting: Option<String> = db
        .query_one(
            "SELECT nullif(current_setting('substrate.login_webhook_secret', true), '')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, None, "no database setting holds the secret");

    let tx = db.transaction().await.unwrap();
    let secret = format!("login-{}", Uuid::new_v4().simple());
    substrate_db::secrets::set_login_webhook_secret(&tx, &secret)
        .await
        .unwrap();
    for role in ["anon", "authenticated", "service_role"] {
        for query in [
            "SELECT value FROM substrate_private.settings",
            "SELECT count(*) FROM substrate_private.action_secrets",
        ] {
            if role == "service_role" && query.contains("action_secrets") {
                continue; // the dispatcher's role reads ciphertexts
            }
            tx.batch_execute(&format!("SAVEPOINT s; SET LOCAL ROLE {role}"))
                .await
                .unwrap();
            let refused = tx.query(query, &[]).await.unwrap_err();
            assert_eq!(
                refused.code(),
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                "{role}: {query}: {refused}"
            );
            tx.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
        }
    }

    // The trigger reads it with its owner's rights when a user signs in (net.http_post stands in
    // for pg_net, which plain PostgreSQL lacks).
    let has_net: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'net')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if !has_net {
        let schema = format!("test_login_{}", Uuid::new_v4().simple());
        tx.batch_execute(&format!(
            "CREATE SCHEMA net;
             CREATE SCHEMA {schema};
             CREATE TABLE {schema}.posts (url text, headers jsonb);
             CREATE FUNCTION net.http_post(url text, body jsonb, headers jsonb) RETURNS bigint
               LANGUAGE sql AS $$ INSERT INTO {schema}.posts VALUES (url, headers) RETURNING 1::bigint $$;
             CREATE TABLE {schema}.users (id uuid PRIMARY KEY, last_sign_in_at timestamptz);
             CREATE TRIGGER login AFTER INSERT ON {schema}.users
               FOR EACH ROW EXECUTE FUNCTION public.substrate_login_webhook();
             GRANT USAGE ON SCHEMA {schema} TO authenticated;
             GRANT INSERT ON {schema}.users TO authenticated;
             SET LOCAL substrate.login_webhook_url = 'http://gateway.invalid/webhooks/login';
             SET LOCAL ROLE authenticated;
             INSERT INTO {schema}.users VALUES (gen_random_uuid(), now());
             RESET ROLE;"
        ))
        .await
        .unwrap();
        let sent: String = tx
            .query_one(
                &format!("SELECT headers->>'X-Webhook-Secret' FROM {schema}.posts"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(sent, secret);
    }
    tx.rollback().await.unwrap();
}
