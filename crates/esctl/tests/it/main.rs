//! `esctl rules check` as an operator runs it: validation errors name the problem, and a sample
//! event is evaluated in either form of the condition.

mod keys;

use std::io::Write;
use std::process::{Command, Stdio};

fn esctl(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_esctl"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TOPIC: &str = "public.commerce.purchase.events";

fn event(segment: &str, amount: f64) -> String {
    serde_json::json!({
        "event_id": "0b6b1d2e-8a39-4a4e-9e55-7d4b8f1b2c3d", "event_time": 0,
        "user": {"id": "6f0e4e5c-1d2b-4c3a-9f8e-7d6c5b4a3928", "segment": segment},
        "purchase": {"id": "o-1", "amount": amount, "currency": "EUR", "items": 1}
    })
    .to_string()
}

#[test]
fn check_validates_and_evaluates_both_forms() {
    let text = "purchase.amount > 500 AND user.segment == 'VIP'";
    let json = r#"{"all":[{"field":"purchase.amount","operator":">","value":500},{"field":"user.segment","op":"==","value":"VIP"}]}"#;
    for condition in [text, json] {
        for (segment, amount, expected) in [
            ("VIP", 750.0, "true"),
            ("REGULAR", 750.0, "false"),
            ("VIP", 20.0, "false"),
        ] {
            let (ok, stdout, stderr) = esctl(
                &[
                    "rules",
                    "check",
                    "--topic",
                    TOPIC,
                    "--condition",
                    condition,
                    "--event",
                    "-",
                ],
                Some(&event(segment, amount)),
            );
            assert!(ok, "{stderr}");
            assert!(
                stdout.contains(&format!("matches: {expected}")),
                "{condition} {segment} {amount}: {stdout}"
            );
        }
    }
}

#[test]
fn check_refuses_invalid_conditions_with_the_reason() {
    for (condition, fragment) in [
        ("purchase.total > 5", "unknown field `purchase.total`"),
        ("user.segment == 'GOLD'", "not one of REGULAR, VIP, STAFF"),
        ("purchase.amount > ", "column 19"),
    ] {
        let (ok, _, stderr) = esctl(
            &["rules", "check", "--topic", TOPIC, "--condition", condition],
            None,
        );
        assert!(!ok, "{condition} must be refused");
        assert!(stderr.contains(fragment), "{condition}: {stderr}");
    }
}

#[test]
fn save_refuses_invalid_rules_before_touching_the_database() {
    for (condition, actions, fragment) in [
        (
            "purchase.total > 5",
            r#"[{"type":"kafka","topic":"t"}]"#,
            "unknown field `purchase.total`",
        ),
        (
            "purchase.amount > 5",
            r#"[{"type":"slack","webhook_url":"https://x","template":"{{nope}}"}]"#,
            "unknown field `nope`",
        ),
        ("purchase.amount > 5", "[]", "non-empty"),
        (
            "purchase.amount > 5",
            r#"[{"type":"notification","event_type":"commerce.vip-purchase"}]"#,
            "event_type `commerce.vip-purchase` must be namespaced",
        ),
    ] {
        let (ok, _, stderr) = esctl(
            &[
                "rules",
                "save",
                "--name",
                "bad",
                "--topic",
                TOPIC,
                "--condition",
                condition,
                "--actions",
                actions,
                "--database-url",
                "postgres://nobody@127.0.0.1:1/none",
            ],
            None,
        );
        assert!(!ok);
        assert!(stderr.contains(fragment), "{condition}: {stderr}");
    }
}

#[test]
fn save_list_disable_enable_against_the_stack() {
    let stack = substrate_testkit::Stack::load();
    let name = substrate_testkit::unique("cli-rule");
    let db = ["--database-url", stack.database_url.as_str()];
    let save = |condition: &str| {
        let mut args = vec![
            "rules",
            "save",
            "--name",
            &name,
            "--topic",
            TOPIC,
            "--condition",
            condition,
            "--actions",
            r#"[{"type":"kafka","topic":"public.commerce.vip.events"}]"#,
            "--priority",
            "5",
        ];
        args.extend_from_slice(&db);
        esctl(&args, None)
    };
    let (ok, stdout, stderr) = save("purchase.amount > 500");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("version 1"), "{stdout}");
    let (ok, stdout, _) = save("purchase.amount > 900");
    assert!(ok);
    assert!(stdout.contains("version 2"), "{stdout}");

    let listed = |expect: &str| {
        let mut args = vec!["rules", "list"];
        args.extend_from_slice(&db);
        let (ok, stdout, stderr) = esctl(&args, None);
        assert!(ok, "{stderr}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name.as_str()))
            .expect("the rule is listed")
            .to_string();
        assert!(line.contains(expect), "{line}");
        line
    };
    assert!(listed("enabled").contains("purchase.amount > 900"));
    let mut args = vec!["rules", "disable", name.as_str()];
    args.extend_from_slice(&db);
    assert!(esctl(&args, None).0);
    listed("disabled");
    let mut args = vec!["rules", "enable", name.as_str()];
    args.extend_from_slice(&db);
    assert!(esctl(&args, None).0);
    listed("v4");
}

#[tokio::test]
async fn tail_prints_records_decoded_from_avro() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let stack = substrate_testkit::Stack::load();
    let topic = substrate_testkit::unique("test.cli.tail");
    substrate_testkit::message_topic(&stack, &topic, 1).await;
    let producer: FutureProducer = stack.kafka().producer_config().create().unwrap();
    for text in ["first", "second", "third"] {
        let event = substrate_testkit::message_event(uuid::Uuid::new_v4(), None, text);
        let bytes = substrate_testkit::encode_message(&stack, &topic, &event).await;
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&topic)
                    .key(text)
                    .payload(&bytes),
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let connection = [
        "--bootstrap-servers",
        stack.bootstrap_servers.as_str(),
        "--schema-registry-url",
        stack.registry_url.as_str(),
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["tail", topic.as_str()];
        args.extend_from_slice(&connection);
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = esctl(&args, None);
        assert!(ok, "{stderr}");
        stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let last_two = run(&["-n", "2"]);
    assert_eq!(last_two.len(), 2);
    assert_eq!(last_two[0]["value"]["message"], "second");
    assert_eq!(last_two[1]["value"]["message"], "third");
    assert_eq!(last_two[1]["key"], "third");
    assert_eq!(last_two[1]["offset"], 2);
    let all = run(&["--from-beginning"]);
    assert_eq!(all.len(), 3);
    assert_eq!(all[0]["value"]["visibility"], "broadcast");
}

/// Runs esctl with `env` set (and nothing of the caller's `SUBSTRATE_SECRETS__*`).
fn esctl_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_esctl"));
    command
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .env_remove("SUBSTRATE_SECRETS__KEYS")
        .env_remove("SUBSTRATE_SECRETS__ACTIVE_KEY_ID");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn save_seals_secrets_apart_and_rotate_reseals_them_with_the_new_key() {
    let stack = substrate_testkit::Stack::load();
    let db = stack.db().await;
    let name = substrate_testkit::unique("cli-sealed");
    let token = uuid::Uuid::new_v4().simple().to_string();
    let whsec = format!("whsec_{}", base64_of(&token));
    let slack = format!("https://hooks.slack.com/services/T0/B0/{token}");
    let actions = serde_json::json!([
        {"type": "webhook", "url": format!("https://example.com/hook?k={token}"), "secrets": [whsec],
         "headers": {"authorization": format!("Bearer {token}")}},
        {"type": "slack", "webhook_url": slack, "template": "VIP {{purchase.amount}}"},
        {"type": "kafka", "topic": "public.commerce.vip.events"}
    ])
    .to_string();
    let (ok, key, _) = esctl_env(&["secrets", "generate-key", "--id", "cli-old"], &[]);
    assert!(ok);
    let old_key = key.trim().to_string();
    let save = |keys: &str| {
        esctl_env(
            &[
                "rules",
                "save",
                "--name",
                &name,
                "--topic",
                TOPIC,
                "--condition",
                "purchase.amount > 500",
                "--actions",
                &actions,
                "--database-url",
                &stack.database_url,
            ],
            &[("SUBSTRATE_SECRETS__KEYS", keys)],
        )
    };

    // Without a key, HTTP actions cannot be saved (nothing is written).
    let (ok, _, stderr) = save("");
    assert!(!ok);
    assert!(stderr.contains("SUBSTRATE_SECRETS__KEYS"), "{stderr}");

    let (ok, stdout, stderr) = save(&old_key);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("version 1") && stdout.contains("sealed 2 secret(s) with key cli-old"),
        "{stdout}"
    );
    let (id, stored): (uuid::Uuid, String) = {
        let row = db
            .query_one(
                "SELECT id, actions::text FROM public.rules WHERE name = $1",
                &[&name],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        !stored.contains(&token),
        "the rule stores no secret: {stored}"
    );
    assert!(
        stored.contains(&substrate_secrets::redact_url(&slack)),
        "{stored}"
    );
    let rows = sealed_rows(&db, id).await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.0, r.1, r.2.as_str()))
            .collect::<Vec<_>>(),
        [(1, 0, "cli-old"), (1, 1, "cli-old")]
    );
    for (_, _, _, ciphertext) in &rows {
        assert!(!String::from_utf8_lossy(ciphertext).contains(&token));
    }
    let (ok, shown, _) = esctl_env(
        &[
            "rules",
            "show",
            &name,
            "--database-url",
            &stack.database_url,
        ],
        &[],
    );
    assert!(ok);
    assert!(!shown.contains(&token), "{shown}");
    assert!(shown.contains("\"endpoint\""), "{shown}");

    // Rotation: the stack's key becomes active, the old one stays listed until it is done.
    let rotated_keys = format!("{},{old_key}", stack.secrets_keys);
    let (ok, stdout, stderr) = esctl_env(
        &["secrets", "rotate", "--database-url", &stack.database_url],
        &[("SUBSTRATE_SECRETS__KEYS", &rotated_keys)],
    );
    assert!(ok, "{stdout}{stderr}");
    let active = stack.keyring().active_key_id().to_string();
    assert!(stdout.contains(&format!("with key {active}")), "{stdout}");
    let rows = sealed_rows(&db, id).await;
    assert!(rows.iter().all(|r| r.2 == active), "{rows:?}");
    // They open with the stack's key alone, bound to their rule, version and index.
    for (version, index, key_id, ciphertext) in &rows {
        let nonce: Vec<u8> = db
            .query_one(
                "SELECT nonce FROM substrate_private.action_secrets
                 WHERE rule_id = $1 AND rule_version = $2 AND action_index = $3",
                &[&id, version, index],
            )
            .await
            .unwrap()
            .get(0);
        let plain = stack
            .keyring()
            .open(
                &substrate_secrets::Sealed {
                    key_id: key_id.clone(),
                    nonce,
                    ciphertext: ciphertext.clone(),
                },
                &substrate_secrets::action_aad(&id, *version, *index),
            )
            .unwrap();
        assert!(String::from_utf8_lossy(&plain).contains(&token));
    }
    let (ok, status, _) = esctl_env(
        &["secrets", "status", "--database-url", &stack.database_url],
        &[("SUBSTRATE_SECRETS__KEYS", &stack.secrets_keys)],
    );
    assert!(ok);
    assert!(!status.contains("key cli-old"), "{status}");
    assert!(!status.contains(&token));

    // A new version seals its own rows; pruning removes those superseded before the cutoff.
    let (ok, stdout, stderr) = save(&stack.secrets_keys);
    assert!(ok && stdout.contains("version 2"), "{stdout}{stderr}");
    assert_eq!(sealed_rows(&db, id).await.len(), 4);
    let (ok, stdout, _) = esctl_env(
        &[
            "secrets",
            "prune",
            "--older-than-days",
            "0",
            "--database-url",
            &stack.database_url,
        ],
        &[],
    );
    assert!(ok, "{stdout}");
    let left: Vec<(i32, i32)> = sealed_rows(&db, id)
        .await
        .iter()
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(left, [(2, 0), (2, 1)]);
    db.execute("DELETE FROM public.rules WHERE id = $1", &[&id])
        .await
        .unwrap();
}

/// (version, index, key id, ciphertext) of a rule's sealed secrets.
async fn sealed_rows(
    db: &tokio_postgres::Client,
    id: uuid::Uuid,
) -> Vec<(i32, i32, String, Vec<u8>)> {
    db.query(
        "SELECT rule_version, action_index, key_id, ciphertext FROM substrate_private.action_secrets
         WHERE rule_id = $1 ORDER BY rule_version, action_index",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
