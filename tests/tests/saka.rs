//! SAKA end to end: harvest limits, spends, manual adjustments with a
//! second admin, and the daily cap under parallel jobs on two workers.

use e2e::scenario::{host_admin, person};
use e2e::{Env, EnvOptions};
use serde_json::json;

async fn invariant_holds(env: &Env, user: &str) -> anyhow::Result<i64> {
    let (balance, earned, spent): (i64, i64, i64) = sqlx::query_as(
        "SELECT w.balance,
                coalesce((SELECT sum(amount) FROM saka_ledger l WHERE l.user_id = w.user_id AND direction = 'EARN'), 0)::bigint,
                coalesce((SELECT sum(amount) FROM saka_ledger l WHERE l.user_id = w.user_id AND direction = 'SPEND'), 0)::bigint
           FROM saka_wallets w WHERE w.user_id = $1::uuid",
    )
    .bind(user)
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(balance, earned - spent, "balance = sum(EARN) - sum(SPEND)");
    Ok(balance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harvests_stop_at_the_daily_count_and_spends_never_go_below_zero() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let bob = person(&env, "bob", "beneficiary").await?;
    for i in 0..3 {
        let r = admin
            .job("/saka/harvest", &format!("h{i}"), json!({"user_id": bob.id, "reason": "CONTENT_READ"}), 20)
            .await?;
        assert_eq!(r.s("status"), "succeeded", "{}", r.text);
        assert_eq!(r.body.pointer("/result/amount"), Some(&json!(10)), "{}", r.text);
    }
    let fourth = admin.job("/saka/harvest", "h3", json!({"user_id": bob.id, "reason": "CONTENT_READ"}), 20).await?;
    assert_eq!(fourth.s("status"), "succeeded");
    assert_eq!(fourth.body["result"], json!({"credited": 0, "reason": "DAILY_LIMIT"}));
    let r = admin
        .job("/saka/harvest", "h4", json!({"user_id": bob.id, "reason": "CONTENT_READ", "amount": 500}), 0)
        .await?;
    assert_eq!((r.status, r.code().as_str()), (422, "SAKA_AMOUNT_NOT_ALLOWED"));
    let r = admin.job("/saka/harvest", "h5", json!({"user_id": bob.id, "reason": "FREE_MONEY"}), 0).await?;
    assert_eq!((r.status, r.code().as_str()), (422, "SAKA_REASON_UNKNOWN"));
    assert_eq!(
        bob.client.job("/saka/harvest", "h6", json!({"user_id": bob.id, "reason": "POLL_VOTE"}), 0).await?.status,
        403
    );
    let w = bob.client.get(&format!("/saka/wallets/{}", bob.id)).await?;
    assert_eq!((w.body["balance"].clone(), w.body["total_harvested"].clone()), (json!(30), json!(30)), "{}", w.text);
    // Spends: the owner spends; more than the balance is refused.
    let r =
        bob.client.job("/saka/spend", "s1", json!({"user_id": bob.id, "amount": 25, "reason": "badge"}), 20).await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    let r = bob.client.job("/saka/spend", "s2", json!({"user_id": bob.id, "amount": 6, "reason": "badge"}), 20).await?;
    assert_eq!(r.code(), "SAKA_INSUFFICIENT", "{}", r.text);
    let r = bob.client.job("/saka/spend", "s3", json!({"user_id": bob.id, "amount": 0, "reason": "x"}), 0).await?;
    assert_eq!(r.status, 422);
    let r = bob.client.job("/saka/spend", "s4", json!({"user_id": bob.id, "amount": "5.5", "reason": "x"}), 0).await?;
    assert_eq!(r.status, 422);
    let alice = person(&env, "alice", "sender").await?;
    assert_eq!(
        alice.client.job("/saka/spend", "s5", json!({"user_id": bob.id, "amount": 1, "reason": "x"}), 0).await?.status,
        403
    );
    assert_eq!(alice.client.get(&format!("/saka/wallets/{}", bob.id)).await?.status, 404);
    assert_eq!(invariant_holds(&env, &bob.id).await?, 5);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjustments_above_500_need_a_second_admin_within_the_daily_cap() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let second = host_admin(&env, "root2").await?;
    let bob = person(&env, "bob", "beneficiary").await?;
    let r =
        admin.job("/saka/adjustments", "a1", json!({"user_id": bob.id, "amount": 500, "note": "welcome"}), 20).await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("APPLIED")));
    let r = admin.job("/saka/adjustments", "a2", json!({"user_id": bob.id, "amount": 501, "note": "big"}), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("PENDING_APPROVAL")), "{}", r.text);
    let pending = r.body.pointer("/result/id").and_then(|v| v.as_str()).unwrap_or("").to_string();
    // The requester cannot approve their own request.
    let r = admin.job(&format!("/saka/adjustments/{pending}/approve"), "ap1", json!({}), 20).await?;
    assert_eq!(r.code(), "SAKA_SELF_APPROVAL", "{}", r.text);
    // A second admin can, but 500 + 501 would pass the 1,000 cap: refused, still pending.
    let r = second.client.job(&format!("/saka/adjustments/{pending}/approve"), "ap2", json!({}), 20).await?;
    assert_eq!(r.code(), "SAKA_DAILY_CAP_REACHED", "{}", r.text);
    let a = admin.get(&format!("/saka/adjustments/{pending}")).await?;
    assert_eq!(a.s("status"), "PENDING_APPROVAL");
    // 500 exactly reaches the cap; a request of 1,000 for another user is approved.
    let carol = person(&env, "carol", "beneficiary").await?;
    let r =
        admin.job("/saka/adjustments", "a3", json!({"user_id": carol.id, "amount": 1000, "note": "grant"}), 20).await?;
    let big = r.body.pointer("/result/id").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let r = second.client.job(&format!("/saka/adjustments/{big}/approve"), "ap3", json!({}), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("APPLIED")), "{}", r.text);
    assert_eq!(r.body.pointer("/result/approved_by").and_then(|v| v.as_str()), Some(second.id.as_str()));
    let w = admin.get(&format!("/saka/wallets/{}", carol.id)).await?;
    assert_eq!((w.body["balance"].clone(), w.body["manual_adjust_today"].clone()), (json!(1000), json!(1000)));
    // Carol's cap is used: the next small adjustment is refused.
    let r =
        admin.job("/saka/adjustments", "a4", json!({"user_id": carol.id, "amount": 1, "note": "one more"}), 20).await?;
    assert_eq!(r.code(), "SAKA_DAILY_CAP_REACHED");
    // Reject is final; amounts outside 1..1000 are refused at the door.
    let r = admin.post(&format!("/saka/adjustments/{pending}/reject"), json!({"note": "no"})).await?;
    assert_eq!((r.status, r.s("status").as_str()), (200, "REJECTED"), "{}", r.text);
    let r = second.client.job(&format!("/saka/adjustments/{pending}/approve"), "ap4", json!({}), 20).await?;
    assert_eq!(r.s("status"), "failed");
    for bad in [0, 1001, -5] {
        let r = admin
            .job("/saka/adjustments", &format!("bad{bad}"), json!({"user_id": bob.id, "amount": bad, "note": "x"}), 0)
            .await?;
        assert_eq!(r.status, 422);
    }
    assert_eq!(
        bob.client
            .job("/saka/adjustments", "b", json!({"user_id": bob.id, "amount": 5, "note": "me"}), 0)
            .await?
            .status,
        403
    );
    assert_eq!(invariant_holds(&env, &bob.id).await?, 500);
    assert_eq!(invariant_holds(&env, &carol.id).await?, 1000);
    let audit = admin.get(&format!("/audit?entity=saka_adjustment&entity_id={pending}")).await?;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["action"].as_str()).collect())
        .unwrap_or_default();
    for a in ["SAKA_ADJUSTMENT_REQUESTED", "SAKA_ADJUSTMENT_REJECTED"] {
        assert!(actions.contains(&a), "{a} missing: {actions:?}");
    }
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_parallel_adjustments_of_200_on_two_workers_apply_exactly_five() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(2)).await?;
    let admin = env.admin();
    let bob = person(&env, "bob", "beneficiary").await?;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let admin = admin.clone();
        let body = json!({"user_id": bob.id, "amount": 200, "note": format!("parallel {i}")});
        tasks.push(tokio::spawn(async move { admin.job("/saka/adjustments", &format!("p{i}"), body, 0).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await??.s("job_id"));
    }
    let (mut applied, mut capped) = (0, 0);
    for id in &ids {
        let r = admin.finished(id, 60).await?;
        match (r.s("status").as_str(), r.code().as_str()) {
            ("succeeded", _) => applied += 1,
            ("failed", "SAKA_DAILY_CAP_REACHED") => capped += 1,
            other => panic!("unexpected outcome {other:?}: {}", r.text),
        }
    }
    assert_eq!((applied, capped), (5, 5));
    assert_eq!(invariant_holds(&env, &bob.id).await?, 1000);
    env.stop().await
}
