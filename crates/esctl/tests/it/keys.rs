//! `esctl keys` as an operator runs it against the stack: the key is printed once (stdout holds
//! only the key, so scripts can capture it), the running gateway accepts it, listing never shows
//! it, rotation hands out a new key, revocation shows in the list.

use substrate_testkit::{unique, Stack};

fn purchase() -> serde_json::Value {
    serde_json::json!({
        "user": {"id": uuid::Uuid::new_v4(), "segment": "REGULAR"},
        "purchase": {"id": unique("cli-order"), "amount": 3.0, "currency": "EUR", "items": 1}
    })
}

#[tokio::test]
async fn create_use_list_rotate_revoke() {
    let stack = Stack::load();
    let source = unique("cli-shop");
    let flags = |args: &[&str], pepper: bool| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--database-url".into(), stack.database_url.clone()]);
        if pepper {
            all.extend(["--pepper".into(), stack.api_key_pepper.clone()]);
        }
        all
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        super::esctl(&args, None)
    };
    let (ok, stdout, stderr) = run(flags(
        &[
            "keys", "create", "--source", &source, "--routes", "purchase",
        ],
        true,
    ));
    assert!(ok, "{stderr}");
    let key = stdout.trim().to_string();
    let id = substrate_db::api_keys::parse_id(&key)
        .unwrap_or_else(|| panic!("stdout is the key alone: {stdout:?}"))
        .to_string();
    assert!(stderr.contains(&format!("esk_{id}")), "{stderr}");

    // The running gateway takes it for the purchase route.
    stack
        .wait_for_key(&stack.gateway_url, "purchase", &key)
        .await;
    let status = reqwest::Client::new()
        .post(format!("{}/api/v1/events/purchase", stack.gateway_url))
        .header("x-api-key", &key)
        .json(&purchase())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);

    let listed = |id: &str| {
        let (ok, stdout, stderr) = run(flags(&["keys", "list"], false));
        assert!(ok, "{stderr}");
        assert!(!stdout.contains(&key), "list never shows a key");
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("esk_{id}")))
            .unwrap_or_else(|| panic!("esk_{id} listed: {stdout}"))
            .to_string()
    };
    let line = listed(&id);
    assert!(line.contains(&source) && line.contains("purchase") && line.contains("active"));

    // Rotation with no overlap: a new key, the old one expired at once.
    let (ok, stdout, stderr) = run(flags(
        &["keys", "rotate", &format!("esk_{id}"), "--overlap", "0s"],
        true,
    ));
    assert!(ok, "{stderr}");
    let new_key = stdout.trim().to_string();
    let new_id = substrate_db::api_keys::parse_id(&new_key)
        .unwrap()
        .to_string();
    assert_ne!(new_id, id);
    assert!(listed(&id).contains("expired"));
    assert!(listed(&new_id).contains("active"));

    let (ok, _, stderr) = run(flags(&["keys", "revoke", &new_id], false));
    assert!(ok, "{stderr}");
    assert!(listed(&new_id).contains("revoked"));
    let (ok, _, stderr) = run(flags(&["keys", "revoke", "nosuchkey123"], false));
    assert!(!ok && stderr.contains("no key"), "{stderr}");
    let (ok, _, stderr) = run(flags(
        &[
            "keys",
            "create",
            "--source",
            "bad source",
            "--routes",
            "purchase",
        ],
        true,
    ));
    assert!(!ok && stderr.contains("source `bad source`"), "{stderr}");
}
