//! Domain tests for usage payees on a fresh database each, no HTTP: limits
//! in the escrow's currency scale, spends that never take what milestones
//! hold, parallel spends that never pass a limit or the balance, and the
//! limits a re-drive or a late settlement takes again.

mod common;

use common::*;
use rust_decimal::Decimal;
use shared::ErrorCode;
use shared::domain::escrow::proofs::Decision;
use shared::principal::Role;
use sqlx::PgPool;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn payee_limits_are_checked_in_the_escrow_currency_scale(pool: PgPool) {
    let d = deal(&pool, "50000", "XOF", &[]).await;
    for (daily, total) in [(Some("10.50"), None), (None, Some("0.5")), (Some("100.01"), Some("200"))] {
        let r = allow(&pool, &d, "shop", daily, total).await;
        assert!(matches!(&r, Err(shared::Error::Problem(p)) if p.code == ErrorCode::AmountInvalid), "{r:?}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM allowed_payees").fetch_one(&pool).await.expect("payees");
    assert_eq!(rows, 0, "no limit was stored rounded or with cents XOF does not have");
    let ok = allow(&pool, &d, "shop", Some("1000"), Some("5000.00")).await.expect("whole francs");
    assert_eq!((ok.daily_limit.as_deref(), ok.total_limit.as_deref()), (Some("1000"), Some("5000")));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_usage_spend_never_takes_money_promised_to_milestones(pool: PgPool) {
    let d = deal(&pool, "100.00", "USD", &[("60.00", "DOCUMENT")]).await;
    d.deposit(&pool, "100.00").await;
    allow(&pool, &d, "shop", None, None).await.expect("payee");
    assert_eq!(spend(&pool, &d, "shop", "40.01").await, Err(ErrorCode::InsufficientEscrowBalance));
    spend(&pool, &d, "shop", "40.00").await.expect("the 40.00 no milestone holds");
    assert_eq!(spend(&pool, &d, "shop", "0.01").await, Err(ErrorCode::InsufficientEscrowBalance));
    // Approving the proof finds its money.
    let proof = proof_in_review(&pool, &d, 1).await;
    let r = decide(&pool, d.client, proof, Decision::Approve).await;
    assert_eq!(code(&r), None, "{r:?}");
    let pays = payments(&pool, d.escrow).await;
    let shape: Vec<(&str, Decimal, &str)> = pays.iter().map(|(_, k, a, s)| (k.as_str(), *a, s.as_str())).collect();
    assert_eq!(shape, vec![("USAGE", dec("40.00"), "PENDING"), ("MILESTONE", dec("60.00"), "PENDING")]);
    let (funded, reserved, ..) = d.money(&pool).await;
    assert_eq!(funded - reserved, Decimal::ZERO);
    // Once the milestone's payment is live, its money is no longer held twice.
    let e = deal(&pool, "100.00", "USD", &[("60.00", "DOCUMENT")]).await;
    e.deposit(&pool, "100.00").await;
    allow(&pool, &e, "shop", None, None).await.expect("payee");
    let proof = proof_in_review(&pool, &e, 1).await;
    decide(&pool, e.client, proof, Decision::Approve).await.expect("approved");
    spend(&pool, &e, "shop", "40.00").await.expect("the rest");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_redrive_or_a_late_settlement_takes_the_payee_limits_again(pool: PgPool) {
    let d = deal(&pool, "100.00", "USD", &[]).await;
    d.deposit(&pool, "100.00").await;
    allow(&pool, &d, "shop", Some("30.00"), Some("50.00")).await.expect("payee");
    let a = spend(&pool, &d, "shop", "30.00").await.expect("spend a");
    drive(&pool, a).await.expect("sent");
    assert!(psp_says(&pool, a, false).await, "a fails");
    assert_eq!(limits(&pool, &d, "shop").await, (Decimal::ZERO, Decimal::ZERO), "given back");
    let b = spend(&pool, &d, "shop", "30.00").await.expect("spend b");
    assert_eq!(limits(&pool, &d, "shop").await, (dec("30.00"), dec("30.00")));
    // Re-driving a would pay 60.00 today against a daily limit of 30.00.
    assert_eq!(code(&drive(&pool, a).await), Some(ErrorCode::DailyLimitReached));
    assert_eq!(payments(&pool, d.escrow).await[0].3, "ERROR", "a stays failed");
    assert_eq!(limits(&pool, &d, "shop").await, (dec("30.00"), dec("30.00")));
    // The PSP paid a after all: recorded, counted in the balance, and the
    // limits that cannot hold it raise an alert.
    assert!(psp_says(&pool, a, true).await);
    assert_eq!(payments(&pool, d.escrow).await[0].3, "SETTLED");
    assert_eq!(alerts(&pool, "PAYEE_LIMIT_OVERRUN").await, 1);
    assert_eq!(limits(&pool, &d, "shop").await, (dec("30.00"), dec("30.00")), "never past the limits");
    let (funded, reserved, paid, _) = d.money(&pool).await;
    assert_eq!((funded, reserved, paid), (dec("100.00"), dec("60.00"), dec("30.00")));
    // Tomorrow b fails and is re-driven: it takes its limits again (day and total).
    drive(&pool, b).await.expect("sent");
    assert!(psp_says(&pool, b, false).await);
    sqlx::query("UPDATE allowed_payees SET spent_day = spent_day - 1").execute(&pool).await.expect("a day passes");
    assert_eq!(limits(&pool, &d, "shop").await.1, Decimal::ZERO);
    assert_eq!(code(&drive(&pool, b).await), None);
    let day_counter: (Decimal, Decimal, Option<chrono::NaiveDate>) =
        sqlx::query_as("SELECT spent_today, spent_total, spent_day FROM allowed_payees")
            .fetch_one(&pool)
            .await
            .expect("payee");
    assert_eq!(
        (day_counter.0, day_counter.1, day_counter.2),
        (dec("30.00"), dec("30.00"), Some(chrono::Utc::now().date_naive()))
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn only_the_client_allows_payees_and_spends_and_only_to_an_allowed_one(pool: PgPool) {
    let d = deal(&pool, "100.00", "USD", &[]).await;
    let as_provider = Deal { client: d.provider, ..d.clone() };
    assert_eq!(refusal(&allow(&pool, &as_provider, "shop", None, None).await), Some(ErrorCode::Forbidden));
    allow(&pool, &d, "shop", Some("50.00"), None).await.expect("payee");
    assert_eq!(refusal(&allow(&pool, &d, "shop", None, None).await), Some(ErrorCode::PayeeAlreadyAllowed));
    assert_eq!(spend(&pool, &d, "shop", "10.00").await, Err(ErrorCode::EscrowNotActive), "nothing deposited yet");
    d.deposit(&pool, "100.00").await;
    assert_eq!(spend(&pool, &d, "nobody", "10.00").await, Err(ErrorCode::PayeeNotAllowed));
    assert_eq!(spend(&pool, &as_provider, "shop", "10.00").await, Err(ErrorCode::Forbidden));
    assert_eq!(spend(&pool, &d, "shop", "10.00").await.map(|_| ()), Ok(()));
    assert_eq!(limits(&pool, &d, "shop").await, (dec("10.00"), dec("10.00")));
    let stranger = user(&pool, Role::Sender).await;
    let as_stranger = Deal { client: stranger, ..d.clone() };
    assert_eq!(spend(&pool, &as_stranger, "shop", "1.00").await, Err(ErrorCode::EscrowNotFound));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn twenty_parallel_spends_never_pass_a_daily_limit_or_the_balance(
    opts: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = wide_pool(opts, connect).await;
    let d = deal(&pool, "100.00", "USD", &[]).await;
    d.deposit(&pool, "100.00").await;
    allow(&pool, &d, "a", Some("30.00"), None).await.expect("payee a");
    allow(&pool, &d, "b", None, None).await.expect("payee b");
    let done = at_once(20, |i| {
        let (pool, d) = (pool.clone(), d.clone());
        let payee = if i % 2 == 0 { "a" } else { "b" };
        async move { (payee, spend(&pool, &d, payee, "10.00").await) }
    })
    .await;
    let ok = |p: &str| done.iter().filter(|(payee, r)| *payee == p && r.is_ok()).count();
    assert_eq!(ok("a"), 3, "a's daily limit of 30.00 allows three spends of 10.00: {done:?}");
    assert_eq!(ok("a") + ok("b"), 10, "the balance of 100.00 allows ten: {done:?}");
    for (_, r) in &done {
        if let Err(code) = r {
            assert!(matches!(code, ErrorCode::DailyLimitReached | ErrorCode::InsufficientEscrowBalance), "{code:?}");
        }
    }
    assert_eq!(limits(&pool, &d, "a").await, (dec("30.00"), dec("30.00")));
    let (funded, reserved, ..) = d.money(&pool).await;
    assert_eq!((funded, reserved), (dec("100.00"), dec("100.00")));
}
