//! `esctl rules check` as an operator runs it: validation errors name the problem, and a sample
//! event is evaluated in either form of the condition.

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
