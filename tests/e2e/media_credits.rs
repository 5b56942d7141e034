//! Credits for media uploads in PostgreSQL: one credit per upload request however often the
//! intent is redelivered (also concurrently), refusal at zero, refunds exactly once, and the
//! ledger always summing to the balance.

use substrate_db::media::{balance, debit, ledger_sum, refund};
use substrate_testkit::Stack;
use uuid::Uuid;

#[tokio::test]
async fn credits_are_charged_and_refunded_exactly_once() {
    let stack = Stack::load();
    let db = stack.db().await;
    let user = Uuid::new_v4();

    // A new user starts with 2 credits; the first request is charged once, however often.
    let first = Uuid::new_v4();
    let d = debit(&db, first, user, 2).await.unwrap();
    assert!(d.approved);
    assert_eq!(d.balance, 1);
    let again = debit(&db, first, user, 2).await.unwrap();
    assert!(again.approved, "a redelivered intent keeps its approval");
    assert_eq!(again.balance, 1, "and is not charged twice");

    // Concurrent deliveries of one request: exactly one charge (the loser's call fails and
    // is retried, as the service does, and then sees the approval).
    let second = Uuid::new_v4();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let stack = stack.clone();
        handles.push(tokio::spawn(async move {
            let db = stack.db().await;
            loop {
                match debit(&db, second, user, 2).await {
                    Ok(d) => return d,
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        }));
    }
    for handle in handles {
        assert!(handle.await.unwrap().approved);
    }
    assert_eq!(balance(&db, user).await.unwrap(), Some(0));

    // No credits left: refused, nothing charged.
    let third = Uuid::new_v4();
    let refused = debit(&db, third, user, 2).await.unwrap();
    assert!(!refused.approved);
    assert_eq!(refused.balance, 0);
    assert!(!refund(&db, third).await.unwrap(), "nothing to refund");

    // Refund once.
    assert!(refund(&db, second).await.unwrap());
    assert!(
        !refund(&db, second).await.unwrap(),
        "a second refund does nothing"
    );
    assert_eq!(balance(&db, user).await.unwrap(), Some(1));
    assert_eq!(ledger_sum(&db, user).await.unwrap(), 1);

    // Users cannot write their balance, only read it (RLS + grants).
    let denied = db
        .batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE authenticated; SET LOCAL request.jwt.claims = '{{\"sub\":\"{user}\"}}';
             UPDATE public.credits SET balance = 100 WHERE user_id = '{user}'; COMMIT;"
        ))
        .await;
    assert!(denied.is_err());
    db.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(balance(&db, user).await.unwrap(), Some(1));
}
