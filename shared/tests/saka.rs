//! Domain tests for SAKA against a fresh database each: harvest limits,
//! spends, manual adjustments with dual approval, the daily cap (in parallel
//! transactions and inside one transaction), the day roll-over with an
//! injected clock, and the database refusing any balance change that does
//! not come with its ledger row. After every concurrency test the ledger
//! invariant `balance = sum(EARN) - sum(SPEND)` is checked.

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use shared::db;
use shared::domain::saka::{self, NewAdjustment, SakaHarvestV1, SakaSpendV1};
use shared::ids::{ApiKeyId, JobId, SakaAdjustmentId, UserId};
use shared::jobs::{End, Outcome};
use shared::money::Grains;
use shared::principal::{Principal, Role};
use shared::{Error, ErrorCode};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const UTC: Tz = chrono_tz::UTC;

fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, 0).single().expect("valid instant")
}

fn noon() -> DateTime<Utc> {
    at(2025, 3, 10, 12, 0)
}

/// A user acting with `role`; an admin acts with a real admin key made on
/// the host long before the tests' clock (2025), so their approvals count.
async fn user(pool: &PgPool, role: Role) -> Principal {
    let id = UserId::new();
    sqlx::query("INSERT INTO users (id, username, email) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(format!("u-{id}"))
        .bind(format!("{id}@example.test"))
        .execute(pool)
        .await
        .expect("insert user");
    let key_id = ApiKeyId::new();
    if role == Role::Admin {
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, prefix, key_hash, role, name, origin, derived_from, created_at)
             VALUES ($1, $2, 'kb_test', $3, 'admin', 'test', 'host', '{}', '2020-01-01T00:00:00Z')",
        )
        .bind(key_id)
        .bind(id)
        .bind(key_id.0.as_bytes().to_vec())
        .execute(pool)
        .await
        .expect("insert admin key");
    }
    Principal { user_id: id, key_id, role }
}

/// The code of a refusal, whether the rule returned it as `Err` (rolled
/// back) or as `Ok` with `End::Refused` (kept); `None` on success.
fn code(r: &shared::Result<Outcome>) -> Option<ErrorCode> {
    match r {
        Ok(Outcome { end: End::Succeeded(_), .. }) => None,
        Ok(Outcome { end: End::Refused(p), .. }) => Some(p.code),
        Ok(Outcome { end: End::Continue(_), .. }) => panic!("SAKA rules make no outside call"),
        Err(Error::Problem(p)) => Some(p.code),
        Err(e) => panic!("infrastructure error: {e}"),
    }
}

fn result(r: shared::Result<Outcome>) -> serde_json::Value {
    match r {
        Ok(Outcome { end: End::Succeeded(v), .. }) => v,
        Ok(Outcome { end: End::Refused(p), .. }) => panic!("refused: {p}"),
        Ok(Outcome { end: End::Continue(_), .. }) => panic!("SAKA rules make no outside call"),
        Err(e) => panic!("error: {e}"),
    }
}

/// Runs until the transaction commits or fails for a business reason, as
/// the job executor eventually does (past `db::serializable`'s own retries
/// it records an attempt and the job is retried).
macro_rules! until_settled {
    ($e:expr) => {
        loop {
            match $e {
                Err(e) if e.is_retryable_conflict() => continue,
                other => break other,
            }
        }
    };
}

async fn harvest(
    pool: &PgPool,
    who: Principal,
    user: UserId,
    reason: &str,
    now: DateTime<Utc>,
) -> shared::Result<Outcome> {
    let ctx = (who, SakaHarvestV1 { user_id: user, reason: reason.into(), amount: None }, now);
    until_settled!(
        db::serializable(pool, &ctx, |tx, (who, cmd, now)| Box::pin(async move {
            saka::harvest(tx, who, JobId::new(), cmd, *now, UTC).await
        }))
        .await
    )
}

async fn harvest_cmd(pool: &PgPool, who: Principal, cmd: SakaHarvestV1) -> shared::Result<Outcome> {
    let ctx = (who, cmd);
    db::serializable(pool, &ctx, |tx, (who, cmd)| {
        Box::pin(async move { saka::harvest(tx, who, JobId::new(), cmd, noon(), UTC).await })
    })
    .await
}

async fn spend(pool: &PgPool, who: Principal, user: UserId, amount: i64) -> shared::Result<Outcome> {
    let ctx = (who, SakaSpendV1 { user_id: user, amount: Grains(amount), reason: "badge".into() });
    until_settled!(
        db::serializable(pool, &ctx, |tx, (who, cmd)| Box::pin(async move {
            saka::spend(tx, who, JobId::new(), cmd).await
        }))
        .await
    )
}

async fn request(
    pool: &PgPool,
    who: Principal,
    user: UserId,
    amount: i64,
    now: DateTime<Utc>,
    tz: Tz,
) -> shared::Result<Outcome> {
    let ctx = (who, NewAdjustment { user_id: user, amount: Grains(amount), note: "support gesture".into() }, now, tz);
    until_settled!(
        db::serializable(pool, &ctx, |tx, (who, cmd, now, tz)| Box::pin(async move {
            saka::request_adjustment(tx, who, JobId::new(), cmd, *now, *tz).await
        }))
        .await
    )
}

async fn approve(
    pool: &PgPool,
    who: Principal,
    id: SakaAdjustmentId,
    now: DateTime<Utc>,
    tz: Tz,
) -> shared::Result<Outcome> {
    let ctx = (who, id, now, tz);
    until_settled!(
        db::serializable(pool, &ctx, |tx, (who, id, now, tz)| Box::pin(async move {
            saka::approve_adjustment(tx, who, JobId::new(), *id, *now, *tz).await
        }))
        .await
    )
}

async fn rollover(pool: &PgPool, now: DateTime<Utc>, tz: Tz) -> i64 {
    db::serializable(pool, &(now, tz), |tx, (now, tz)| Box::pin(async move { saka::rollover(tx, *now, *tz).await }))
        .await
        .expect("rollover")
}

fn adjustment_id(v: &serde_json::Value) -> SakaAdjustmentId {
    serde_json::from_value(v["id"].clone()).expect("adjustment id")
}

async fn adjustment_status(pool: &PgPool, id: SakaAdjustmentId) -> String {
    sqlx::query_scalar("SELECT status FROM saka_adjustments WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("adjustment")
}

async fn balance(pool: &PgPool, user: UserId) -> i64 {
    sqlx::query_scalar("SELECT balance FROM saka_wallets WHERE user_id = $1")
        .bind(user)
        .fetch_optional(pool)
        .await
        .expect("wallet")
        .unwrap_or(0)
}

async fn audit_count(pool: &PgPool, action: &str, entity_id: impl std::fmt::Display) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1 AND entity_id = $2")
        .bind(action)
        .bind(entity_id.to_string())
        .fetch_one(pool)
        .await
        .expect("audit count")
}

/// `balance = sum(EARN) - sum(SPEND)`, and the totals are the sums.
async fn assert_ledger_invariant(pool: &PgPool, user: UserId) {
    let (balance, harvested, spent, earned, debited): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT w.balance, w.total_harvested, w.total_spent,
                COALESCE(SUM(l.amount) FILTER (WHERE l.direction = 'EARN'), 0)::bigint,
                COALESCE(SUM(l.amount) FILTER (WHERE l.direction = 'SPEND'), 0)::bigint
           FROM saka_wallets w LEFT JOIN saka_ledger l ON l.user_id = w.user_id
          WHERE w.user_id = $1
          GROUP BY w.user_id",
    )
    .bind(user)
    .fetch_one(pool)
    .await
    .expect("wallet and ledger");
    assert_eq!(balance, earned - debited, "balance = sum(EARN) - sum(SPEND)");
    assert_eq!(harvested, earned);
    assert_eq!(spent, debited);
}

/// A pool big enough for ten transactions at once.
async fn wide_pool(opts: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    opts.max_connections(12).connect_with(connect).await.expect("pool")
}

fn db_constraint(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.constraint()).map(str::to_string)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_fourth_content_read_of_the_day_credits_nothing(pool: PgPool) {
    let support = user(&pool, Role::Support).await;
    let reader = user(&pool, Role::Beneficiary).await;
    for n in 1..=3 {
        let tx = result(harvest(&pool, support, reader.user_id, "CONTENT_READ", noon()).await);
        assert_eq!(tx["amount"], 10);
        assert_eq!(tx["balance_after"], 10 * n);
        assert_eq!(tx["direction"], "EARN");
    }
    let fourth = result(harvest(&pool, support, reader.user_id, "CONTENT_READ", noon()).await);
    assert_eq!(fourth, serde_json::json!({"credited": 0, "reason": "DAILY_LIMIT"}));
    assert_eq!(balance(&pool, reader.user_id).await, 30);
    // Other reasons have their own counters; INVEST_BONUS once a day.
    result(harvest(&pool, support, reader.user_id, "INVEST_BONUS", noon()).await);
    let again = result(harvest(&pool, support, reader.user_id, "INVEST_BONUS", noon()).await);
    assert_eq!(again["credited"], 0);
    // The next SAKA day counts from zero again.
    let tomorrow = result(harvest(&pool, support, reader.user_id, "CONTENT_READ", noon() + Duration::days(1)).await);
    assert_eq!(tomorrow["balance_after"], 140);
    assert_ledger_invariant(&pool, reader.user_id).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_harvest_refuses_unknown_reasons_chosen_amounts_and_other_roles(pool: PgPool) {
    let support = user(&pool, Role::Support).await;
    let reader = user(&pool, Role::Beneficiary).await;
    let cmd = |reason: &str, amount: Option<i64>| SakaHarvestV1 {
        user_id: reader.user_id,
        reason: reason.into(),
        amount: amount.map(Grains),
    };
    assert_eq!(code(&harvest_cmd(&pool, support, cmd("SUNBATHING", None)).await), Some(ErrorCode::SakaReasonUnknown));
    assert_eq!(
        code(&harvest_cmd(&pool, support, cmd("MANUAL_ADJUST", None)).await),
        Some(ErrorCode::SakaReasonUnknown)
    );
    assert_eq!(
        code(&harvest_cmd(&pool, support, cmd("CONTENT_READ", Some(10))).await),
        Some(ErrorCode::SakaAmountNotAllowed)
    );
    assert_eq!(
        code(&harvest_cmd(&pool, support, cmd("CONTENT_READ", Some(1000))).await),
        Some(ErrorCode::SakaAmountNotAllowed)
    );
    assert_eq!(code(&harvest_cmd(&pool, reader, cmd("CONTENT_READ", None)).await), Some(ErrorCode::Forbidden));
    let ghost = SakaHarvestV1 { user_id: UserId::new(), reason: "CONTENT_READ".into(), amount: None };
    assert_eq!(code(&harvest_cmd(&pool, support, ghost).await), Some(ErrorCode::UserNotFound));
    assert_eq!(balance(&pool, reader.user_id).await, 0);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn ten_parallel_content_reads_credit_exactly_three(opts: PgPoolOptions, connect: PgConnectOptions) {
    let pool = wide_pool(opts, connect).await;
    let support = user(&pool, Role::Support).await;
    let reader = user(&pool, Role::Beneficiary).await.user_id;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { harvest(&pool, support, reader, "CONTENT_READ", noon()).await })
        })
        .collect();
    let mut credited = 0;
    for t in tasks {
        let v = result(t.await.expect("task"));
        if v.get("credited") == Some(&serde_json::json!(0)) {
            assert_eq!(v["reason"], "DAILY_LIMIT");
        } else {
            credited += 1;
        }
    }
    assert_eq!(credited, 3);
    assert_eq!(balance(&pool, reader).await, 30);
    assert_ledger_invariant(&pool, reader).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_spend_never_takes_the_balance_below_zero(pool: PgPool) {
    let support = user(&pool, Role::Support).await;
    let me = user(&pool, Role::Beneficiary).await;
    let other = user(&pool, Role::Beneficiary).await;
    result(harvest(&pool, support, me.user_id, "CONTENT_READ", noon()).await);
    assert_eq!(code(&spend(&pool, me, me.user_id, 11).await), Some(ErrorCode::SakaInsufficient));
    assert_eq!(code(&spend(&pool, me, me.user_id, 0).await), Some(ErrorCode::ValidationError));
    assert_eq!(code(&spend(&pool, me, me.user_id, -5).await), Some(ErrorCode::ValidationError));
    assert_eq!(code(&spend(&pool, other, me.user_id, 5).await), Some(ErrorCode::Forbidden));
    let tx = result(spend(&pool, me, me.user_id, 10).await);
    assert_eq!(
        (tx["direction"].clone(), tx["amount"].clone(), tx["balance_after"].clone()),
        ("SPEND".into(), 10.into(), 0.into())
    );
    assert_eq!(code(&spend(&pool, me, me.user_id, 1).await), Some(ErrorCode::SakaInsufficient));
    // A user without a wallet has nothing to spend.
    assert_eq!(code(&spend(&pool, other, other.user_id, 1).await), Some(ErrorCode::SakaInsufficient));
    assert_eq!(balance(&pool, me.user_id).await, 0);
    assert_ledger_invariant(&pool, me.user_id).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn ten_parallel_spends_never_overspend(opts: PgPoolOptions, connect: PgConnectOptions) {
    let pool = wide_pool(opts, connect).await;
    let support = user(&pool, Role::Support).await;
    let me = user(&pool, Role::Beneficiary).await;
    for _ in 0..3 {
        result(harvest(&pool, support, me.user_id, "CONTENT_READ", noon()).await);
    }
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { spend(&pool, me, me.user_id, 10).await })
        })
        .collect();
    let mut spent = 0;
    let mut refused = 0;
    for t in tasks {
        match code(&t.await.expect("task")) {
            None => spent += 1,
            Some(ErrorCode::SakaInsufficient) => refused += 1,
            Some(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((spent, refused), (3, 7));
    assert_eq!(balance(&pool, me.user_id).await, 0);
    assert_ledger_invariant(&pool, me.user_id).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_adjustment_of_500_is_applied_and_501_waits_for_approval(pool: PgPool) {
    let admin = user(&pool, Role::Admin).await;
    let target = user(&pool, Role::Beneficiary).await.user_id;
    let applied = result(request(&pool, admin, target, 500, noon(), UTC).await);
    assert_eq!(applied["status"], "APPLIED");
    assert_eq!(applied["amount"], 500);
    assert_eq!(applied["approved_by"], serde_json::Value::Null);
    assert_eq!(balance(&pool, target).await, 500);
    let id = adjustment_id(&applied);
    assert_eq!(audit_count(&pool, "SAKA_ADJUSTMENT_REQUESTED", id).await, 1);
    assert_eq!(audit_count(&pool, "SAKA_ADJUSTMENT_APPLIED", id).await, 1);

    let pending = result(request(&pool, admin, target, 501, noon(), UTC).await);
    assert_eq!(pending["status"], "PENDING_APPROVAL");
    assert_eq!(pending["requested_by"], serde_json::json!(admin.user_id));
    let expires_at: DateTime<Utc> = serde_json::from_value(pending["expires_at"].clone()).expect("expires_at");
    assert_eq!(expires_at, noon() + Duration::hours(24));
    assert_eq!(balance(&pool, target).await, 500, "nothing is credited before the approval");
    let wallet = db::serializable(&pool, &(admin, target), |tx, (admin, target)| {
        Box::pin(async move { saka::get_wallet_for(tx, admin, *target, noon(), UTC).await })
    })
    .await
    .expect("wallet");
    assert_eq!(
        (wallet.balance, wallet.manual_adjust_today),
        (Grains(500), Grains(500)),
        "a pending request uses no cap"
    );
    assert_ledger_invariant(&pool, target).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn adjustments_are_for_admins_within_1_to_1000_and_never_for_themselves(pool: PgPool) {
    let admin = user(&pool, Role::Admin).await;
    let support = user(&pool, Role::Support).await;
    let target = user(&pool, Role::Beneficiary).await.user_id;
    assert_eq!(code(&request(&pool, support, target, 10, noon(), UTC).await), Some(ErrorCode::Forbidden));
    assert_eq!(code(&request(&pool, admin, admin.user_id, 10, noon(), UTC).await), Some(ErrorCode::Forbidden));
    assert_eq!(code(&request(&pool, admin, target, 0, noon(), UTC).await), Some(ErrorCode::ValidationError));
    assert_eq!(code(&request(&pool, admin, target, 1001, noon(), UTC).await), Some(ErrorCode::ValidationError));
    assert_eq!(code(&request(&pool, admin, UserId::new(), 10, noon(), UTC).await), Some(ErrorCode::UserNotFound));
    assert_eq!(balance(&pool, target).await, 0);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_requester_cannot_approve_their_own_adjustment(pool: PgPool) {
    let admin = user(&pool, Role::Admin).await;
    let target = user(&pool, Role::Beneficiary).await;
    let id = adjustment_id(&result(request(&pool, admin, target.user_id, 800, noon(), UTC).await));
    assert_eq!(code(&approve(&pool, admin, id, noon(), UTC).await), Some(ErrorCode::SakaSelfApproval));
    // Nor may anyone but an admin approve.
    let support = user(&pool, Role::Support).await;
    assert_eq!(code(&approve(&pool, support, id, noon(), UTC).await), Some(ErrorCode::Forbidden));
    assert_eq!(
        code(&approve(&pool, admin, SakaAdjustmentId::new(), noon(), UTC).await),
        Some(ErrorCode::SakaAdjustmentNotFound)
    );
    assert_eq!(adjustment_status(&pool, id).await, "PENDING_APPROVAL");
    assert_eq!(balance(&pool, target.user_id).await, 0);
    // The database refuses a self-approval too.
    let err = sqlx::query(
        "UPDATE saka_adjustments SET status = 'APPLIED', approved_by = requested_by, decided_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .expect_err("self-approval refused");
    assert_eq!(db_constraint(&err).as_deref(), Some("saka_adjustments_not_self_approved"));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_second_admins_approval_applies_the_adjustment(pool: PgPool) {
    let first = user(&pool, Role::Admin).await;
    let second = user(&pool, Role::Admin).await;
    let target = user(&pool, Role::Beneficiary).await.user_id;
    let id = adjustment_id(&result(request(&pool, first, target, 700, noon(), UTC).await));
    let later = noon() + Duration::hours(3);
    let applied = result(approve(&pool, second, id, later, UTC).await);
    assert_eq!(applied["status"], "APPLIED");
    assert_eq!(applied["approved_by"], serde_json::json!(second.user_id));
    assert_eq!(applied["requested_by"], serde_json::json!(first.user_id));
    assert_eq!(balance(&pool, target).await, 700);
    for action in ["SAKA_ADJUSTMENT_REQUESTED", "SAKA_ADJUSTMENT_APPROVED", "SAKA_ADJUSTMENT_APPLIED"] {
        assert_eq!(audit_count(&pool, action, id).await, 1, "{action}");
    }
    // Applied once: a second approval changes nothing.
    let third = user(&pool, Role::Admin).await;
    assert_eq!(code(&approve(&pool, third, id, later, UTC).await), Some(ErrorCode::SakaAdjustmentNotPending));
    assert_eq!(balance(&pool, target).await, 700);
    let out = db::serializable(&pool, &(third, id), |tx, (who, id)| {
        Box::pin(async move { saka::get_adjustment(tx, who, *id).await })
    })
    .await
    .expect("adjustment");
    assert_eq!((out.status.as_str(), out.approved_by), ("APPLIED", Some(second.user_id)));
    assert_ledger_invariant(&pool, target).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_approval_that_would_pass_the_cap_is_refused_and_stays_pending(pool: PgPool) {
    let first = user(&pool, Role::Admin).await;
    let second = user(&pool, Role::Admin).await;
    let target = user(&pool, Role::Beneficiary).await.user_id;
    result(request(&pool, first, target, 500, noon(), UTC).await);
    let id = adjustment_id(&result(request(&pool, first, target, 600, noon(), UTC).await));
    let refused = approve(&pool, second, id, noon() + Duration::hours(1), UTC).await;
    assert_eq!(code(&refused), Some(ErrorCode::SakaDailyCapReached));
    assert_eq!(adjustment_status(&pool, id).await, "PENDING_APPROVAL");
    assert_eq!(audit_count(&pool, "SAKA_ADJUSTMENT_REFUSED", id).await, 1);
    assert_eq!(balance(&pool, target).await, 500);
    // The next SAKA day, still within its 24 h, the same request goes through.
    let next_morning = at(2025, 3, 11, 9, 0);
    let applied = result(approve(&pool, second, id, next_morning, UTC).await);
    assert_eq!(applied["status"], "APPLIED");
    assert_eq!(balance(&pool, target).await, 1100);
    assert_ledger_invariant(&pool, target).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn ten_parallel_adjustments_of_200_apply_exactly_five(opts: PgPoolOptions, connect: PgConnectOptions) {
    let pool = wide_pool(opts, connect).await;
    let mut admins = Vec::new();
    for _ in 0..10 {
        admins.push(user(&pool, Role::Admin).await);
    }
    let target = user(&pool, Role::Beneficiary).await.user_id;
    // Ten different admins, each in their own SERIALIZABLE transaction.
    let tasks: Vec<_> = admins
        .into_iter()
        .map(|admin| {
            let pool = pool.clone();
            tokio::spawn(async move { request(&pool, admin, target, 200, noon(), UTC).await })
        })
        .collect();
    let (mut applied, mut capped) = (0, 0);
    for t in tasks {
        match code(&t.await.expect("task")) {
            None => applied += 1,
            Some(ErrorCode::SakaDailyCapReached) => capped += 1,
            Some(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((applied, capped), (5, 5));
    assert_eq!(balance(&pool, target).await, 1000);
    let (today, applied_rows): (i64, i64) = sqlx::query_as(
        "SELECT w.manual_adjust_today, (SELECT count(*) FROM saka_adjustments a WHERE a.user_id = w.user_id AND a.status = 'APPLIED')
           FROM saka_wallets w WHERE w.user_id = $1",
    )
    .bind(target)
    .fetch_one(&pool)
    .await
    .expect("wallet");
    assert_eq!((today, applied_rows), (1000, 5));
    assert_ledger_invariant(&pool, target).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_cap_guard_holds_without_serializable_isolation(opts: PgPoolOptions, connect: PgConnectOptions) {
    // No SERIALIZABLE retries here: each statement commits on its own (READ
    // COMMITTED), so only the guarded UPDATE and the triggers keep the cap
    // and the ledger right.
    let pool = wide_pool(opts, connect).await;
    let admin = user(&pool, Role::Admin).await;
    let target = user(&pool, Role::Beneficiary).await.user_id;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await.expect("connection");
                let cmd = NewAdjustment { user_id: target, amount: Grains(300), note: "autocommit".into() };
                saka::request_adjustment(&mut conn, &admin, JobId::new(), &cmd, noon(), UTC).await
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        match code(&t.await.expect("task")) {
            None => applied += 1,
            Some(ErrorCode::SakaDailyCapReached) => {}
            Some(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(applied, 3);
    assert_eq!(balance(&pool, target).await, 900);
    assert_ledger_invariant(&pool, target).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn parallel_spends_never_overspend_without_serializable_isolation(
    opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = wide_pool(opts, connect).await;
    let support = user(&pool, Role::Support).await;
    let me = user(&pool, Role::Beneficiary).await;
    for _ in 0..3 {
        result(harvest(&pool, support, me.user_id, "CONTENT_READ", noon()).await);
    }
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await.expect("connection");
                let cmd = SakaSpendV1 { user_id: me.user_id, amount: Grains(7), reason: "autocommit".into() };
                saka::spend(&mut conn, &me, JobId::new(), &cmd).await
            })
        })
        .collect();
    let mut spent = 0;
    for t in tasks {
        match code(&t.await.expect("task")) {
            None => spent += 1,
            Some(ErrorCode::SakaInsufficient) => {}
            Some(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(spent, 4);
    assert_eq!(balance(&pool, me.user_id).await, 2);
    assert_ledger_invariant(&pool, me.user_id).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn three_adjustments_in_one_transaction_cannot_pass_the_cap(pool: PgPool) {
    let admin = user(&pool, Role::Admin).await;
    let target = user(&pool, Role::Beneficiary).await.user_id;
    // The prototype's hole: within one transaction its cap saw nothing.
    let codes = db::serializable(&pool, &(admin, target), |tx, (admin, target)| {
        Box::pin(async move {
            let mut codes = Vec::new();
            for amount in [400, 400, 300] {
                let cmd = NewAdjustment { user_id: *target, amount: Grains(amount), note: "batch".into() };
                let outcome = saka::request_adjustment(tx, admin, JobId::new(), &cmd, noon(), UTC).await;
                codes.push(code(&outcome));
            }
            Ok(codes)
        })
    })
    .await
    .expect("transaction");
    assert_eq!(codes, vec![None, None, Some(ErrorCode::SakaDailyCapReached)]);
    assert_eq!(balance(&pool, target).await, 800);
    // Exactly 1,000 is allowed: 200 more fits, 1 more does not.
    assert_eq!(code(&request(&pool, admin, target, 200, noon(), UTC).await), None);
    assert_eq!(code(&request(&pool, admin, target, 1, noon(), UTC).await), Some(ErrorCode::SakaDailyCapReached));
    assert_eq!(balance(&pool, target).await, 1000);
    assert_ledger_invariant(&pool, target).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_cap_is_available_again_the_next_saka_day_with_or_without_the_rollover(pool: PgPool) {
    // Kinshasa is UTC+1: the SAKA day of 2025-03-11 starts at 23:00 UTC on the 10th.
    let tz: Tz = "Africa/Kinshasa".parse().expect("zone");
    let admin = user(&pool, Role::Admin).await;
    let a = user(&pool, Role::Beneficiary).await.user_id;
    let b = user(&pool, Role::Beneficiary).await.user_id;
    let day_d = at(2025, 3, 10, 12, 0);
    for target in [a, b] {
        result(request(&pool, admin, target, 500, day_d, tz).await);
        result(request(&pool, admin, target, 500, day_d, tz).await);
        assert_eq!(code(&request(&pool, admin, target, 1, day_d, tz).await), Some(ErrorCode::SakaDailyCapReached));
    }
    // A roll-over on day D resets nothing and changes nothing.
    assert_eq!(rollover(&pool, day_d, tz).await, 0);
    assert_eq!(code(&request(&pool, admin, a, 1, day_d, tz).await), Some(ErrorCode::SakaDailyCapReached));
    // 22:59 UTC is still day D in Kinshasa.
    let last_minute = at(2025, 3, 10, 22, 59);
    assert_eq!(code(&request(&pool, admin, a, 1, last_minute, tz).await), Some(ErrorCode::SakaDailyCapReached));
    // 23:00 UTC is D+1 there: the cap is available again although no
    // roll-over ran (the stale counter counts as zero in the guard).
    let next_day = at(2025, 3, 10, 23, 0);
    assert_eq!(code(&request(&pool, admin, a, 500, next_day, tz).await), None);
    let wallet_b = db::serializable(&pool, &(admin, b, tz), |tx, (who, b, tz)| {
        Box::pin(async move { saka::get_wallet_for(tx, who, *b, next_day, *tz).await })
    })
    .await
    .expect("wallet");
    assert_eq!(wallet_b.manual_adjust_today, Grains::ZERO, "a counter of an earlier day reads as zero");
    assert_eq!(wallet_b.day.to_string(), "2025-03-11");
    // Now the roll-over runs: only b's counter was still on day D.
    assert_eq!(rollover(&pool, next_day, tz).await, 1);
    assert_eq!(rollover(&pool, next_day, tz).await, 0, "a second run finds nothing");
    let counters: Vec<(i64, Option<chrono::NaiveDate>)> =
        sqlx::query_as("SELECT manual_adjust_today, manual_adjust_day FROM saka_wallets WHERE user_id = ANY($1) ORDER BY manual_adjust_today")
            .bind(vec![a, b])
            .fetch_all(&pool)
            .await
            .expect("counters");
    let d1 = chrono::NaiveDate::from_ymd_opt(2025, 3, 11);
    assert_eq!(counters, vec![(0, d1), (500, d1)]);
    assert_eq!(audit_count(&pool, "SAKA_DAY_ROLLOVER", "2025-03-11").await, 2);
    // Either way the cap of the new day is the whole 1,000, no more.
    assert_eq!(code(&request(&pool, admin, a, 500, next_day, tz).await), None);
    assert_eq!(code(&request(&pool, admin, a, 1, next_day, tz).await), Some(ErrorCode::SakaDailyCapReached));
    assert_eq!(code(&request(&pool, admin, b, 500, next_day, tz).await), None);
    assert_eq!(code(&request(&pool, admin, b, 500, next_day, tz).await), None);
    assert_eq!(code(&request(&pool, admin, b, 1, next_day, tz).await), Some(ErrorCode::SakaDailyCapReached));
    for target in [a, b] {
        assert_eq!(balance(&pool, target).await, 2000);
        assert_ledger_invariant(&pool, target).await;
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_database_refuses_a_balance_change_without_its_ledger_row(pool: PgPool) {
    let support = user(&pool, Role::Support).await;
    let me = user(&pool, Role::Beneficiary).await.user_id;
    result(harvest(&pool, support, me, "CONTENT_READ", noon()).await);
    let refused = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(sql).bind(me).execute(&pool).await.expect_err(sql) }
    };
    // A raw mint.
    let e = refused("UPDATE saka_wallets SET balance = balance + 100 WHERE user_id = $1").await;
    assert_eq!(db_constraint(&e).as_deref(), Some("saka_wallets_ledger_only"));
    // A forged but self-consistent one.
    let e = refused(
        "UPDATE saka_wallets SET balance = balance + 100, total_harvested = total_harvested + 100, ledger_seq = ledger_seq + 1 WHERE user_id = $1",
    )
    .await;
    assert_eq!(db_constraint(&e).as_deref(), Some("saka_wallets_ledger_only"));
    // Replaying an existing ledger state does not work either.
    let e = refused(
        "UPDATE saka_wallets SET balance = 0, total_harvested = 0, total_spent = 0, ledger_seq = 0 WHERE user_id = $1",
    )
    .await;
    assert_eq!(db_constraint(&e).as_deref(), Some("saka_wallets_ledger_only"));
    // A session flag is no key.
    let e = refused(
        "WITH f AS (SELECT set_config('kobatela.saka_ledger', 'on', true)) UPDATE saka_wallets SET balance = balance + 100 WHERE user_id = $1 AND EXISTS (SELECT 1 FROM f)",
    )
    .await;
    assert_eq!(db_constraint(&e).as_deref(), Some("saka_wallets_ledger_only"));
    // A manual credit without its applied adjustment.
    let e = refused(
        "INSERT INTO saka_ledger (id, user_id, direction, reason, amount, adjustment_id) VALUES (gen_random_uuid(), $1, 'EARN', 'MANUAL_ADJUST', 100, gen_random_uuid())",
    )
    .await;
    assert!(e.as_database_error().is_some(), "{e}");
    // The ledger is append-only.
    let e = refused("UPDATE saka_ledger SET amount = 1000 WHERE user_id = $1").await;
    assert_eq!(db_constraint(&e).as_deref(), Some("saka_ledger_immutable"));
    let e = refused("DELETE FROM saka_ledger WHERE user_id = $1").await;
    assert_eq!(db_constraint(&e).as_deref(), Some("saka_ledger_immutable"));
    let e = sqlx::query("TRUNCATE saka_ledger").execute(&pool).await.expect_err("truncate refused");
    assert_eq!(db_constraint(&e).as_deref(), Some("saka_ledger_immutable"));
    // A wallet is born empty.
    let other = user(&pool, Role::Beneficiary).await.user_id;
    let e = sqlx::query("INSERT INTO saka_wallets (user_id, balance, total_harvested) VALUES ($1, 100, 100)")
        .bind(other)
        .execute(&pool)
        .await
        .expect_err("a minted wallet is refused");
    assert_eq!(db_constraint(&e).as_deref(), Some("saka_wallets_ledger_only"));
    // Day counters are not balances: the roll-over may reset them.
    sqlx::query("UPDATE saka_wallets SET manual_adjust_today = 0, manual_adjust_day = '2025-03-11' WHERE user_id = $1")
        .bind(me)
        .execute(&pool)
        .await
        .expect("a day counter update is allowed");
    // A ledger row is the one way, and it moves the balance by itself.
    sqlx::query("INSERT INTO saka_ledger (id, user_id, direction, reason, amount) VALUES (gen_random_uuid(), $1, 'SPEND', 'test', 4)")
        .bind(me)
        .execute(&pool)
        .await
        .expect("a ledger row is applied");
    assert_eq!(balance(&pool, me).await, 6);
    assert_ledger_invariant(&pool, me).await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn pending_requests_expire_after_24_hours(pool: PgPool) {
    let first = user(&pool, Role::Admin).await;
    let second = user(&pool, Role::Admin).await;
    let target = user(&pool, Role::Beneficiary).await.user_id;
    let swept = adjustment_id(&result(request(&pool, first, target, 600, noon(), UTC).await));
    let expire = |now: DateTime<Utc>| {
        let pool = pool.clone();
        async move {
            db::serializable(&pool, &now, |tx, now| Box::pin(async move { saka::expire_pending(tx, *now).await }))
                .await
                .expect("expire")
        }
    };
    assert_eq!(expire(noon() + Duration::hours(23)).await, 0);
    assert_eq!(expire(noon() + Duration::hours(24)).await, 1);
    assert_eq!(adjustment_status(&pool, swept).await, "EXPIRED");
    assert_eq!(audit_count(&pool, "SAKA_ADJUSTMENT_EXPIRED", swept).await, 1);
    assert_eq!(
        code(&approve(&pool, second, swept, noon() + Duration::hours(25), UTC).await),
        Some(ErrorCode::SakaAdjustmentNotPending)
    );
    // Past its expiry but before the cron ran: approval expires it instead.
    let late = adjustment_id(&result(request(&pool, first, target, 600, noon(), UTC).await));
    let refused = approve(&pool, second, late, noon() + Duration::hours(25), UTC).await;
    assert_eq!(code(&refused), Some(ErrorCode::SakaAdjustmentNotPending));
    assert_eq!(adjustment_status(&pool, late).await, "EXPIRED");
    assert_eq!(balance(&pool, target).await, 0);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_rejection_is_final(pool: PgPool) {
    let first = user(&pool, Role::Admin).await;
    let second = user(&pool, Role::Admin).await;
    let target = user(&pool, Role::Beneficiary).await.user_id;
    let id = adjustment_id(&result(request(&pool, first, target, 900, noon(), UTC).await));
    let reject = |who: Principal| {
        let pool = pool.clone();
        async move {
            db::serializable(&pool, &(who, id), |tx, (who, id)| {
                Box::pin(async move { saka::reject_adjustment(tx, who, *id, Some("not justified"), noon()).await })
            })
            .await
        }
    };
    let support = user(&pool, Role::Support).await;
    assert!(matches!(reject(support).await, Err(Error::Problem(ref p)) if p.code == ErrorCode::Forbidden));
    let out = reject(second).await.expect("rejected");
    assert_eq!(
        (out.status.as_str(), out.rejected_by, out.decision_note.as_deref()),
        ("REJECTED", Some(second.user_id), Some("not justified"))
    );
    assert_eq!(audit_count(&pool, "SAKA_ADJUSTMENT_REJECTED", id).await, 1);
    assert!(matches!(reject(first).await, Err(Error::Problem(ref p)) if p.code == ErrorCode::SakaAdjustmentNotPending));
    assert_eq!(code(&approve(&pool, second, id, noon(), UTC).await), Some(ErrorCode::SakaAdjustmentNotPending));
    // The database keeps it final too.
    let e = sqlx::query("UPDATE saka_adjustments SET status = 'PENDING_APPROVAL', decided_at = NULL WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .expect_err("a decision is final");
    assert_eq!(db_constraint(&e).as_deref(), Some("saka_adjustments_final"));
    assert_eq!(balance(&pool, target).await, 0);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_wallet_is_seen_by_its_owner_support_and_admin_only(pool: PgPool) {
    let support = user(&pool, Role::Support).await;
    let admin = user(&pool, Role::Admin).await;
    let me = user(&pool, Role::Beneficiary).await;
    let stranger = user(&pool, Role::Sender).await;
    result(harvest(&pool, support, me.user_id, "POLL_VOTE", noon()).await);
    let read = |who: Principal, whose: UserId| {
        let pool = pool.clone();
        async move {
            db::serializable(&pool, &(who, whose), |tx, (who, whose)| {
                Box::pin(async move { saka::get_wallet_for(tx, who, *whose, noon(), UTC).await })
            })
            .await
        }
    };
    for who in [me, support, admin] {
        let w = read(who, me.user_id).await.expect("visible");
        assert_eq!((w.balance, w.total_harvested, w.total_spent), (Grains(5), Grains(5), Grains::ZERO));
        assert_eq!(w.day.to_string(), "2025-03-10");
    }
    assert!(
        matches!(read(stranger, me.user_id).await, Err(Error::Problem(ref p)) if p.code == ErrorCode::UserNotFound)
    );
    assert!(
        matches!(read(admin, UserId::new()).await, Err(Error::Problem(ref p)) if p.code == ErrorCode::UserNotFound)
    );
    // A user who never harvested has an empty wallet.
    let empty = read(stranger, stranger.user_id).await.expect("own wallet");
    assert_eq!(empty.balance, Grains::ZERO);
}
