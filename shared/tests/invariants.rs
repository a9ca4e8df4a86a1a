//! Each invariant on a fresh database: silent on consistent books, and
//! firing on a hand-made violation (a row tampered with in SQL, the way a
//! bug or a careless hand would). Reconciliation with the PSP is shown end
//! to end (`tests/tests/invariants.rs`), against the simulator.

use shared::domain::ops::invariants::{self, Run};
use sqlx::PgPool;
use uuid::Uuid;

/// Consistent books across every table the invariants read: a mandate with
/// a purchase, a funded escrow with a paid milestone and a usage payment
/// holding its payee's limits, a SAKA wallet with one harvest.
struct World {
    mandate: Uuid,
    purchase_job: Uuid,
    escrow: Uuid,
    milestone: Uuid,
    payee: Uuid,
    wallet_user: Uuid,
}

async fn exec(pool: &PgPool, sql: &str, ids: &[Uuid]) {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
    for id in ids {
        q = q.bind(*id);
    }
    q.execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn world(pool: &PgPool) -> World {
    let [s, b, c, p] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    for (id, name) in [(s, "s"), (b, "b"), (c, "c"), (p, "p")] {
        sqlx::query("INSERT INTO users (id, username, email) VALUES ($1, $2, $2 || '@example.test')")
            .bind(id)
            .bind(name)
            .execute(pool)
            .await
            .expect("user");
    }
    let (merchant, mandate, purchase_job) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    exec(pool, "INSERT INTO merchants (id, name, is_certified) VALUES ($1, 'Market', true)", &[merchant]).await;
    exec(
        pool,
        "INSERT INTO mandates (id, sender_id, beneficiary_id, total_amount, spent_amount, currency, expires_at)
         VALUES ($1, $2, $3, 100, 30, 'USD', now() + interval '1 day')",
        &[mandate, s, b],
    )
    .await;
    exec(
        pool,
        "INSERT INTO purchases (id, job_id, sender_id, beneficiary_id, merchant_id, mandate_id, amount, currency, status)
         VALUES ($1, $2, $3, $4, $5, $6, 30, 'USD', 'COMPLETED')",
        &[Uuid::now_v7(), purchase_job, s, b, merchant, mandate],
    )
    .await;
    let (escrow, milestone, payee) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    exec(
        pool,
        "INSERT INTO escrows (id, client_id, provider_id, amount_total, currency, status, funded_amount,
                              reserved_amount, paid_amount, deadline_at)
         VALUES ($1, $2, $3, 100, 'USD', 'FUNDED', 100, 70, 60, now() + interval '30 days')",
        &[escrow, c, p],
    )
    .await;
    exec(
        pool,
        "INSERT INTO escrow_deposits (id, escrow_id, amount, source, job_id) VALUES ($1, $2, 100, 'api', $3)",
        &[Uuid::now_v7(), escrow, Uuid::now_v7()],
    )
    .await;
    exec(
        pool,
        "INSERT INTO milestones (id, escrow_id, idx, label, amount, proof_type, status)
         VALUES ($1, $2, 1, 'first', 60, 'DOCUMENT', 'PAID')",
        &[milestone, escrow],
    )
    .await;
    exec(
        pool,
        "INSERT INTO payments (id, escrow_id, milestone_id, kind, recipient, amount, currency, status, idempotency_key, psp_ref)
         VALUES ($1, $2, $3, 'MILESTONE', 'provider', 60, 'USD', 'SETTLED', 'milestone:' || $3, 'ref-1')",
        &[Uuid::now_v7(), escrow, milestone],
    )
    .await;
    exec(
        pool,
        "INSERT INTO allowed_payees (id, escrow_id, payee_ref, label, daily_limit, total_limit, spent_day, spent_today, spent_total)
         VALUES ($1, $2, 'shop', 'Shop', 50, 100, current_date, 10, 10)",
        &[payee, escrow],
    )
    .await;
    exec(
        pool,
        "INSERT INTO payments (id, escrow_id, kind, recipient, amount, currency, status, idempotency_key, payee_id, limits_day)
         VALUES ($1, $2, 'USAGE', 'shop', 10, 'USD', 'SENT', 'usage:' || $1, $3, current_date)",
        &[Uuid::now_v7(), escrow, payee],
    )
    .await;
    exec(pool, "INSERT INTO saka_wallets (user_id) VALUES ($1)", &[b]).await;
    exec(
        pool,
        "INSERT INTO saka_ledger (id, user_id, seq, direction, reason, amount, balance_after, total_harvested_after,
                                  total_spent_after, job_id)
         VALUES ($1, $2, 0, 'EARN', 'CONTENT_READ', 10, 0, 0, 0, $3)",
        &[Uuid::now_v7(), b, Uuid::now_v7()],
    )
    .await;
    World { mandate, purchase_job, escrow, milestone, payee, wallet_user: b }
}

async fn check(pool: &PgPool) -> Run {
    invariants::run(pool, None, "UTC", 60.0).await.expect("the invariants run")
}

fn count(run: &Run, name: &str) -> usize {
    run.invariants.iter().find(|i| i.name == name).map(|i| i.violations).unwrap_or(usize::MAX)
}

/// Consistent books violate nothing; after `tamper`, exactly the named
/// invariant fires (with the other ones it implies, if any), a run is
/// stored and an alert raised per violating row.
async fn fires(pool: &PgPool, tamper: &str, ids: &[Uuid], name: &str) -> Run {
    let clean = check(pool).await;
    assert_eq!(clean.violations(), 0, "consistent books: {:?}", clean.invariants);
    exec(pool, tamper, ids).await;
    let run = check(pool).await;
    assert!(count(&run, name) >= 1, "{name} did not fire: {:?}", run.invariants);
    let alerts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alerts WHERE type = 'INVARIANT_VIOLATED' AND payload->>'run_id' = $1")
            .bind(run.run_id.to_string())
            .fetch_one(pool)
            .await
            .expect("alerts");
    assert_eq!(alerts as usize, run.violations(), "one alert per violating row");
    let stored: i32 = sqlx::query_scalar("SELECT violations FROM invariant_runs WHERE id = $1")
        .bind(run.run_id)
        .fetch_one(pool)
        .await
        .expect("stored run");
    assert_eq!(stored as usize, run.violations());
    run
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn mandate_spent_fires_on_a_spent_amount_its_purchases_do_not_explain(pool: PgPool) {
    let w = world(&pool).await;
    let run = fires(&pool, "UPDATE mandates SET spent_amount = 40 WHERE id = $1", &[w.mandate], "mandate_spent").await;
    assert_eq!(run.violations(), 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn escrow_balance_fires_on_a_paid_amount_without_its_payouts(pool: PgPool) {
    let w = world(&pool).await;
    let run = fires(&pool, "UPDATE escrows SET paid_amount = 50 WHERE id = $1", &[w.escrow], "escrow_balance").await;
    assert_eq!(run.violations(), 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn escrow_balance_fires_on_a_released_escrow_that_kept_money(pool: PgPool) {
    let w = world(&pool).await;
    assert_eq!(check(&pool).await.violations(), 0);
    // Every payout settled, the escrow released, 30.00 left in it.
    exec(&pool, "UPDATE payments SET status = 'SETTLED' WHERE escrow_id = $1", &[w.escrow]).await;
    exec(&pool, "UPDATE escrows SET status = 'RELEASED', paid_amount = 70 WHERE id = $1", &[w.escrow]).await;
    let run = check(&pool).await;
    let sample = &run.invariants.iter().find(|i| i.name == "escrow_balance").expect("present").sample;
    assert_eq!(sample.len(), 1, "{sample:?}");
    assert_eq!(sample[0]["balance"], serde_json::json!(30.00));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn milestone_payment_fires_on_a_second_live_payout(pool: PgPool) {
    let w = world(&pool).await;
    let run = fires(
        &pool,
        "INSERT INTO payments (id, escrow_id, milestone_id, kind, recipient, amount, currency, status, idempotency_key)
         VALUES ($1, $2, $3, 'MILESTONE', 'provider', 60, 'USD', 'PENDING', 'again:' || $1)",
        &[Uuid::now_v7(), w.escrow, w.milestone],
        "milestone_payment",
    )
    .await;
    assert_eq!(count(&run, "milestone_payment"), 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn payee_limits_fire_on_counters_their_payments_do_not_explain(pool: PgPool) {
    let w = world(&pool).await;
    let run =
        fires(&pool, "UPDATE allowed_payees SET spent_total = 20 WHERE id = $1", &[w.payee], "payee_limits").await;
    assert_eq!(run.violations(), 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn saka_ledger_fires_on_a_balance_changed_behind_the_ledger(pool: PgPool) {
    let w = world(&pool).await;
    // The triggers refuse this; a hand that disables them is what the
    // invariant is for.
    let tamper = "ALTER TABLE saka_wallets DISABLE TRIGGER USER";
    exec(&pool, tamper, &[]).await;
    let run = fires(
        &pool,
        "UPDATE saka_wallets SET balance = balance + 5, total_harvested = total_harvested + 5 WHERE user_id = $1",
        &[w.wallet_user],
        "saka_ledger",
    )
    .await;
    assert_eq!(run.violations(), 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn saka_ledger_fires_on_more_than_a_thousand_manual_grains_in_a_day(pool: PgPool) {
    let w = world(&pool).await;
    let [a1, a2] = [Uuid::now_v7(), Uuid::now_v7()];
    for (id, name) in [(a1, "a1"), (a2, "a2")] {
        sqlx::query("INSERT INTO users (id, username, email) VALUES ($1, $2, $2 || '@example.test')")
            .bind(id)
            .bind(name)
            .execute(&pool)
            .await
            .expect("admin");
    }
    assert_eq!(check(&pool).await.violations(), 0);
    // Two approved adjustments of 600 the same day, each applied by its own
    // ledger row: what the daily cap guard exists to prevent.
    for _ in 0..2 {
        let adjustment = Uuid::now_v7();
        exec(
            &pool,
            "INSERT INTO saka_adjustments (id, user_id, amount, note, status, requested_by, approved_by, decided_at)
             VALUES ($1, $2, 600, 'bonus', 'APPLIED', $3, $4, now())",
            &[adjustment, w.wallet_user, a1, a2],
        )
        .await;
        exec(
            &pool,
            "INSERT INTO saka_ledger (id, user_id, seq, direction, reason, amount, balance_after, total_harvested_after,
                                      total_spent_after, adjustment_id)
             VALUES ($1, $2, 0, 'EARN', 'MANUAL_ADJUST', 600, 0, 0, 0, $3)",
            &[Uuid::now_v7(), w.wallet_user, adjustment],
        )
        .await;
    }
    let run = check(&pool).await;
    let sample = &run.invariants.iter().find(|i| i.name == "saka_ledger").expect("present").sample;
    assert_eq!(sample.len(), 1, "{sample:?}");
    assert_eq!(sample[0]["manually_adjusted"], serde_json::json!(1200));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn jobs_fires_on_a_job_with_two_effects_and_on_a_stuck_job(pool: PgPool) {
    let w = world(&pool).await;
    let users: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM users ORDER BY username").fetch_all(&pool).await.expect("users");
    // A transfer carrying the purchase's job id: one job, two effects.
    let run = fires(
        &pool,
        "INSERT INTO transactions (id, job_id, sender_id, receiver_id, amount, currency, status)
         VALUES ($1, $2, $3, $4, 5, 'USD', 'COMPLETED')",
        &[Uuid::now_v7(), w.purchase_job, users[0], users[1]],
        "jobs",
    )
    .await;
    assert_eq!(count(&run, "jobs"), 1);
    // A job whose lease ran out an hour ago and that nobody took over.
    exec(
        &pool,
        "INSERT INTO jobs (id, kind, payload, actor_user_id, actor_key_id, actor_role, status, attempts, locked_by, locked_until)
         VALUES ($1, 'purchase', '{}', $2, $2, 'beneficiary', 'running', 1, 'gone', now() - interval '1 hour')",
        &[Uuid::now_v7(), users[0]],
    )
    .await;
    assert_eq!(count(&check(&pool).await, "jobs"), 2);
}
