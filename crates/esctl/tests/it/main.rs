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
