//! Secrets resolved from Postgres: a secret that is missing, sealed with a key the dispatcher
//! does not have, altered, moved to another rule or made for another endpoint dead-letters its
//! request at once with a reason that names the rule and never the secret; a database outage
//! only delays it; records written before secrets were sealed still deliver.

use std::time::Duration;

use serde_json::json;
use substrate_secrets::{action_aad, SecretsConfig};
use substrate_testkit::{eventually, Outage};

use crate::harness::{audit_rows, purchase, Answer, Receiver, Request, Setup};
use crate::{esctl, verify_with_python, SECRET};

/// The `error` of a request's audit rows.
async fn audit_errors(db: &tokio_postgres::Client, request: &Request) -> Vec<String> {
    db.query(
        "SELECT coalesce(error, '') FROM public.dispatch_attempts WHERE request_id = $1 ORDER BY id",
        &[&request.request_id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_that_cannot_be_had_dead_letter_at_once_naming_the_rule_not_the_secret() {
    let setup = Setup::new(&["300ms"]).await;
    let running = setup.start().await;
    let receiver = Receiver::start(Answer::Status(200)).await;
    let producer = setup.producer();
    let db = setup.stack.db().await;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let action = |path: &str| json!({"type": "slack", "webhook_url": receiver.url(&format!("/{path}/{token}")), "template": "x"});

    // No sealed row at all (the request is produced without sealing its secret).
    let mut missing = Request::new(action("missing"), purchase("VIP", 1.0));
    missing.rule_id = uuid::Uuid::new_v4();
    setup.mark_sealed(&missing);
    setup.send_request(&producer, &missing).await;

    // Sealed with a key the dispatcher is not configured with.
    let other = substrate_secrets::keyring::generate_key_entry("other").unwrap();
    let other = SecretsConfig {
        keys: vec![other],
        active_key_id: None,
    }
    .keyring("secrets")
    .unwrap();
    let unknown_key = Request::new(action("unknown-key"), purchase("VIP", 2.0));
    let secret = substrate_rules::ActionSecret {
        url: unknown_key.action["webhook_url"]
            .as_str()
            .unwrap()
            .to_string(),
        secrets: vec![],
        headers: Default::default(),
    };
    substrate_db::secrets::insert(
        &db,
        &[substrate_db::secrets::ActionSecretRow {
            rule_id: unknown_key.rule_id,
            rule_version: 1,
            action_index: 0,
            sealed: other.seal(&secret.to_bytes(), &action_aad(&unknown_key.rule_id, 1, 0)),
        }],
    )
    .await
    .unwrap();
    setup.mark_sealed(&unknown_key);
    setup.send_request(&producer, &unknown_key).await;

    // Sealed properly, then one bit of the ciphertext flipped.
    let tampered = Request::new(action("tampered"), purchase("VIP", 3.0));
    setup.seal(&tampered).await;
    db.execute(
        "UPDATE substrate_private.action_secrets
            SET ciphertext = set_byte(ciphertext, 3, get_byte(ciphertext, 3) # 1)
          WHERE rule_id = $1",
        &[&tampered.rule_id],
    )
    .await
    .unwrap();
    setup.send_request(&producer, &tampered).await;

    // Another rule's sealed row copied under this rule's binding.
    let moved = Request::new(action("moved"), purchase("VIP", 4.0));
    let source = Request::new(action("moved"), purchase("VIP", 4.0));
    let mut source = source;
    source.rule_id = uuid::Uuid::new_v4();
    setup.seal(&source).await;
    db.execute(
        "INSERT INTO substrate_private.action_secrets
             (rule_id, rule_version, action_index, key_id, nonce, ciphertext)
         SELECT $2, rule_version, action_index, key_id, nonce, ciphertext
           FROM substrate_private.action_secrets WHERE rule_id = $1",
        &[&source.rule_id, &moved.rule_id],
    )
    .await
    .unwrap();
    setup.mark_sealed(&moved);
    setup.send_request(&producer, &moved).await;

    // A properly sealed secret, but of another endpoint than the action names.
    let mismatch = Request::new(action("mismatch"), purchase("VIP", 5.0));
    let elsewhere = substrate_rules::ActionSecret {
        url: receiver.url(&format!("/elsewhere/{token}")),
        secrets: vec![],
        headers: Default::default(),
    };
    substrate_db::secrets::insert(
        &db,
        &[substrate_db::secrets::ActionSecretRow {
            rule_id: mismatch.rule_id,
            rule_version: 1,
            action_index: 0,
            sealed: setup
                .stack
                .keyring()
                .seal(&elsewhere.to_bytes(), &action_aad(&mismatch.rule_id, 1, 0)),
        }],
    )
    .await
    .unwrap();
    setup.mark_sealed(&mismatch);
    setup.send_request(&producer, &mismatch).await;

    for (request, reason) in [
        (&missing, "no sealed secret for rule"),
        (
            &unknown_key,
            "is sealed with key `other`, which is not configured",
        ),
        (&tampered, "does not authenticate"),
        (&moved, "does not authenticate"),
        (&mismatch, "is for another endpoint"),
    ] {
        let rows = eventually(
            Duration::from_secs(20),
            "the refusal's audit row",
            || async {
                let rows = audit_rows(&db, &request.request_id).await;
                (!rows.is_empty()).then_some(rows)
            },
        )
        .await
        .unwrap();
        assert_eq!(
            rows,
            vec![(1, "failed".to_string(), None)],
            "{reason}: not retried"
        );
        let error = &audit_errors(&db, request).await[0];
        assert!(error.contains(reason), "{reason}: {error}");
        assert!(
            error.contains(&request.rule_id.to_string()),
            "names the rule: {error}"
        );
        assert!(!error.contains(&token), "{error}");
        let listed = esctl(
            &setup,
            &[
                "dlq",
                "list",
                "--topic",
                &setup.dead_letter_topic,
                "--request-id",
                &request.request_id.to_string(),
            ],
        );
        let record: serde_json::Value =
            serde_json::from_str(listed.lines().next().unwrap()).unwrap();
        assert!(
            record["error"].as_str().unwrap().contains(reason),
            "{record}"
        );
        assert_eq!(record["attempts"], 1);
        assert!(!listed.contains(&token), "{listed}");
    }
    assert!(receiver.hits().is_empty(), "nothing was delivered");
    running.stop().await;
    // Rows that never open would make every later `esctl secrets rotate` report them.
    let rules: Vec<uuid::Uuid> = [&unknown_key, &tampered, &moved, &mismatch, &source]
        .iter()
        .map(|r| r.rule_id)
        .collect();
    db.execute(
        "DELETE FROM substrate_private.action_secrets WHERE rule_id = ANY($1)",
        &[&rules],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_with_inline_secrets_still_deliver_signed() {
    let setup = Setup::new(&["300ms"]).await;
    let running = setup.start().await;
    let receiver = Receiver::start(Answer::Status(200)).await;
    let producer = setup.producer();
    let mut request = Request::new(
        json!({"type": "webhook", "url": receiver.url("/inline"), "secrets": [SECRET]}),
        purchase("VIP", 1.0),
    );
    request.inline = true;
    setup.send_request(&producer, &request).await;
    let hits = receiver
        .wait_for(&request.request_id, 1, Duration::from_secs(20))
        .await;
    assert_eq!(hits.len(), 1);
    assert_eq!(verify_with_python(&hits, &[SECRET]), vec![vec![true]]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_delays_resolving_a_secret_and_never_dead_letters() {
    let setup = Setup::new(&["300ms"]).await;
    let pg: std::net::SocketAddr = {
        let config: tokio_postgres::Config = setup.stack.database_url.parse().unwrap();
        format!("127.0.0.1:{}", config.get_ports()[0])
            .parse()
            .unwrap()
    };
    let outage = Outage::proxy(pg).await;
    let via_proxy = setup.stack.database_url.replace(
        &format!(":{}/", pg.port()),
        &format!(":{}/", outage.addr.port()),
    );
    let running = setup
        .start_with(&setup.yaml().replace(&setup.stack.database_url, &via_proxy))
        .await;
    let receiver = Receiver::start(Answer::Status(200)).await;
    let producer = setup.producer();

    // A rule whose secret the dispatcher has not read yet, sent while Postgres is away.
    let request = Request::new(
        json!({"type": "webhook", "url": receiver.url("/outage"), "secrets": [SECRET]}),
        purchase("VIP", 1.0),
    );
    setup.seal(&request).await;
    outage.down();
    setup.send_request(&producer, &request).await;
    eventually(Duration::from_secs(30), "reconnect attempts", || async {
        (outage.refused() >= 3).then_some(())
    })
    .await
    .unwrap();
    assert!(receiver.hits().is_empty());
    assert!(
        setup.records(&setup.dead_letter_topic).await.is_empty(),
        "an outage is not a reason to give up"
    );
    outage.restore();
    let hits = receiver
        .wait_for(&request.request_id, 1, Duration::from_secs(30))
        .await;
    assert_eq!(hits.len(), 1, "delivered once Postgres is back");
    running.stop().await;
}
