//! Fixtures shared by the domain tests: users, escrows with milestones and
//! deposits, parent job rows, all through the domain rules themselves.

#![allow(dead_code)]

use futures::future::BoxFuture;
use rust_decimal::Decimal;
use shared::db;
use shared::domain::escrow::deposits::{self, EscrowDepositV1, Source};
use shared::domain::escrow::escrows::{self, NewEscrow};
use shared::domain::escrow::milestones::{self, NewMilestone};
use shared::domain::escrow::payees::{self, NewPayee, UsageSpendV1};
use shared::domain::escrow::payouts::{self, CallReply, CallState, PayoutV1};
use shared::domain::escrow::proofs::{self, Decision};
use shared::domain::escrow::transitions::{self, EscrowTransitionV1, TransitionAction};
use shared::domain::escrow::{settlement, state};
use shared::ids::{ApiKeyId, EscrowId, PaymentId, ProofId, UserId};
use shared::jobs::{End, JobKind, JobRow, NewJob, Outcome, record};
use shared::money::{AmountIn, Currency, Money};
use shared::principal::{Principal, Role};
use shared::{Error, ErrorCode};
use sqlx::{PgConnection, PgPool};

pub fn dec(text: &str) -> Decimal {
    text.parse().expect("a decimal")
}

/// An amount of `currency` (USD and EUR with 2 decimals, XOF with none).
pub fn money(text: &str, currency: &str) -> Money {
    let decimals = if currency == "XOF" { 0 } else { 2 };
    Money::parse("amount", &AmountIn::Text(text.into()), &Currency { code: currency.into(), decimals })
        .expect("a valid amount")
}

/// A user acting with `role`. An admin gets a real admin key row, made as on
/// the host (no granter) and long ago (2020, before any test's clock):
/// approvals judge the approver by the key they act with. Other roles act
/// with a key id that has no row.
pub async fn user(pool: &PgPool, role: Role) -> Principal {
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

#[derive(Clone)]
pub struct Deal {
    pub client: Principal,
    pub provider: Principal,
    pub admin: Principal,
    pub escrow: EscrowId,
    pub currency: String,
}

/// A client, a provider and a DRAFT escrow of `total` in `currency`, with
/// milestones of the given amounts (PHOTO without a fence, or DOCUMENT).
pub async fn deal(pool: &PgPool, total: &str, currency: &str, milestones: &[(&str, &str)]) -> Deal {
    let client = user(pool, Role::Sender).await;
    let provider = user(pool, Role::Beneficiary).await;
    let admin = user(pool, Role::Admin).await;
    let total = money(total, currency);
    let new = NewEscrow {
        client_id: client.user_id,
        provider_id: provider.user_id,
        total,
        release_conditions: serde_json::json!({}),
        deadline_at: chrono::Utc::now() + chrono::Duration::days(30),
    };
    let e = db::serializable(pool, &(client, new), |tx, (who, new)| Box::pin(escrows::create(tx, who, new)))
        .await
        .expect("escrow");
    for (i, (amount, kind)) in milestones.iter().enumerate() {
        let new = NewMilestone {
            idx: i as i32 + 1,
            label: format!("step {}", i + 1),
            amount: money(amount, currency),
            proof_type: kind.to_string(),
            geofence: None,
        };
        db::serializable(pool, &(client, e.id, new), |tx, (who, id, new)| {
            Box::pin(milestones::add_milestone(tx, who, *id, new))
        })
        .await
        .expect("milestone");
    }
    Deal { client, provider, admin, escrow: e.id, currency: currency.into() }
}

impl Deal {
    pub async fn deposit(&self, pool: &PgPool, amount: &str) {
        let cmd = EscrowDepositV1 { escrow_id: self.escrow, money: money(amount, &self.currency) };
        db::serializable(pool, &(self.client, cmd), |tx, (who, cmd)| {
            Box::pin(deposits::deposit(tx, who, Source::Job(shared::ids::JobId::new()), cmd))
        })
        .await
        .expect("deposit");
    }

    /// (funded, reserved, paid, status)
    pub async fn money(&self, pool: &PgPool) -> (Decimal, Decimal, Decimal, String) {
        sqlx::query_as("SELECT funded_amount, reserved_amount, paid_amount, status FROM escrows WHERE id = $1")
            .bind(self.escrow)
            .fetch_one(pool)
            .await
            .expect("escrow")
    }

    pub async fn milestone_statuses(&self, pool: &PgPool) -> Vec<String> {
        sqlx::query_scalar("SELECT status FROM milestones WHERE escrow_id = $1 ORDER BY idx")
            .bind(self.escrow)
            .fetch_all(pool)
            .await
            .expect("milestones")
    }
}

/// A job row standing for the job a rule runs in (rules that create
/// follow-up jobs need their parent).
pub async fn job(pool: &PgPool, who: &Principal, kind: JobKind) -> JobRow {
    let new = NewJob::new(
        kind,
        &serde_json::json!({"test": uuid::Uuid::new_v4()}),
        who,
        Some(uuid::Uuid::new_v4().to_string()),
    )
    .expect("job");
    let mut conn = pool.acquire().await.expect("conn");
    record::insert(&mut conn, &new).await.expect("insert job").0
}

/// Runs a rule in one SERIALIZABLE transaction as the executor does: the
/// rule, then the follow-up jobs it asks for as children of `parent`, one
/// commit (retried on serialization failures).
pub async fn as_job<C, F>(pool: &PgPool, parent: &JobRow, ctx: &C, rule: F) -> shared::Result<Outcome>
where
    C: Sync,
    F: for<'c> Fn(&'c mut PgConnection, &'c C) -> BoxFuture<'c, shared::Result<Outcome>> + Sync,
{
    db::serializable(pool, &(parent, ctx, &rule), |tx, (parent, ctx, rule)| {
        Box::pin(async move {
            let outcome = rule(&mut *tx, ctx).await?;
            record::insert_children(tx, parent, &outcome.follow_ups).await?;
            Ok(outcome)
        })
    })
    .await
}

/// The code of a refusal (kept or rolled back), `None` on success.
pub fn code(r: &shared::Result<Outcome>) -> Option<ErrorCode> {
    match r {
        Ok(Outcome { end: End::Succeeded(_) | End::Continue(_), .. }) => None,
        Ok(Outcome { end: End::Refused(p), .. }) | Err(Error::Problem(p)) => Some(p.code),
        Err(e) => panic!("infrastructure error: {e}"),
    }
}

/// The result of a rule that succeeded.
pub fn succeeded(r: shared::Result<Outcome>) -> serde_json::Value {
    match r {
        Ok(Outcome { end: End::Succeeded(v), .. }) => v,
        other => panic!("expected a success: {other:?}"),
    }
}

pub async fn transition(
    pool: &PgPool,
    who: Principal,
    job: &JobRow,
    escrow: EscrowId,
    action: TransitionAction,
) -> shared::Result<Outcome> {
    let ctx = (who, job.id, EscrowTransitionV1 { escrow_id: escrow, action, note: None });
    as_job(pool, job, &ctx, |tx, (who, job, cmd)| Box::pin(transitions::transition(tx, who, *job, cmd))).await
}

/// (id, kind, amount, status) of an escrow's payments, oldest first.
pub async fn payments(pool: &PgPool, escrow: EscrowId) -> Vec<(PaymentId, String, Decimal, String)> {
    sqlx::query_as("SELECT id, kind, amount, status FROM payments WHERE escrow_id = $1 ORDER BY created_at, id")
        .bind(escrow)
        .fetch_all(pool)
        .await
        .expect("payments")
}

/// A payout job's first phase and the PSP's acceptance.
pub async fn drive(pool: &PgPool, id: PaymentId) -> shared::Result<Outcome> {
    let first = db::serializable(pool, &id, |tx, id| {
        // The job as its creator would have asked for it (an ERROR payment: a re-drive).
        Box::pin(async move {
            let p = state::payment(tx, *id).await?.expect("payment");
            payouts::prepare(tx, &PayoutV1::of(&p)).await
        })
    })
    .await?;
    let Outcome { end: End::Continue(state), .. } = first else { return Ok(first) };
    let state: CallState = serde_json::from_value(state).expect("call state");
    let ctx = (state, CallReply::Accepted { psp_ref: format!("psp-{id}-{}", uuid::Uuid::new_v4()) });
    db::serializable(pool, &ctx, |tx, (state, reply)| {
        Box::pin(async move { payouts::record_reply(tx, &Principal::system(), state, reply).await })
    })
    .await
}

/// What a `payment.settled` or `payment.failed` webhook does.
pub async fn psp_says(pool: &PgPool, id: PaymentId, settled: bool) -> bool {
    db::serializable(pool, &(id, settled), |tx, (id, settled)| {
        Box::pin(async move {
            let p = state::payment(tx, *id).await?.expect("payment");
            if *settled {
                settlement::settle(tx, &p, None, "psp").await
            } else {
                settlement::fail(tx, &p, "PSP_FAILED", "psp").await
            }
        })
    })
    .await
    .expect("webhook applied")
}

pub async fn alerts(pool: &PgPool, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM alerts WHERE type = $1").bind(kind).fetch_one(pool).await.expect("alerts")
}

/// A proof in review for milestone `idx`, as a validation would leave it.
pub async fn proof_in_review(pool: &PgPool, d: &Deal, idx: i32) -> ProofId {
    let id = ProofId::new();
    sqlx::query(
        "WITH m AS (UPDATE milestones SET status = 'PENDING_REVIEW' WHERE escrow_id = $2 AND idx = $3 RETURNING id)
         INSERT INTO proofs (id, escrow_id, milestone_id, sha256, storage_key, size_bytes, source, uploaded_by, status)
         SELECT $1, $2, m.id, $1::text, 'proofs/x/' || $1::text, 10, 'whatsapp', $4, 'PENDING_REVIEW' FROM m",
    )
    .bind(id)
    .bind(d.escrow)
    .bind(idx)
    .bind(d.provider.user_id)
    .execute(pool)
    .await
    .expect("proof in review");
    id
}

pub async fn decide(pool: &PgPool, who: Principal, proof: ProofId, decision: Decision) -> shared::Result<Outcome> {
    let parent = job(pool, &who, JobKind::ProofValidation).await;
    let ctx = (who, parent.id, proof, decision);
    as_job(pool, &parent, &ctx, |tx, (who, job, proof, decision)| {
        Box::pin(proofs::decide(tx, who, *job, *proof, *decision, None))
    })
    .await
}

pub async fn allow(
    pool: &PgPool,
    d: &Deal,
    payee: &str,
    daily: Option<&str>,
    total: Option<&str>,
) -> shared::Result<shared::domain::escrow::limits::PayeeOut> {
    let new = NewPayee {
        escrow_id: d.escrow,
        payee_ref: payee.into(),
        label: payee.into(),
        daily_limit: daily.map(dec),
        total_limit: total.map(dec),
    };
    db::serializable(pool, &(d.client, new), |tx, (who, new)| Box::pin(payees::allow(tx, who, new))).await
}

/// A usage spend; answers its payment.
pub async fn spend(pool: &PgPool, d: &Deal, payee: &str, amount: &str) -> Result<PaymentId, ErrorCode> {
    let parent = job(pool, &d.client, JobKind::UsageSpend).await;
    let cmd =
        UsageSpendV1 { escrow_id: d.escrow, payee_ref: payee.into(), money: money(amount, &d.currency), note: None };
    let ctx = (d.client, parent.id, cmd);
    let r = as_job(pool, &parent, &ctx, |tx, (who, job, cmd)| Box::pin(payees::spend(tx, who, *job, cmd))).await;
    match code(&r) {
        None => Ok(succeeded(r)["payment_id"].as_str().and_then(|s| s.parse().ok()).expect("payment id")),
        Some(refused) => Err(refused),
    }
}

/// (spent_today, spent_total) of a payee.
pub async fn limits(pool: &PgPool, d: &Deal, payee: &str) -> (Decimal, Decimal) {
    sqlx::query_as("SELECT spent_today, spent_total FROM allowed_payees WHERE escrow_id = $1 AND payee_ref = $2")
        .bind(d.escrow)
        .bind(payee)
        .fetch_one(pool)
        .await
        .expect("payee")
}

/// A pool wide enough for a dozen transactions at once (the most a test may take from the server).
pub async fn wide_pool(opts: sqlx::postgres::PgPoolOptions, connect: sqlx::postgres::PgConnectOptions) -> PgPool {
    opts.max_connections(12).connect_with(connect).await.expect("pool")
}

/// A user with `role` who is not active.
pub async fn inactive(pool: &PgPool, role: Role) -> Principal {
    let who = user(pool, role).await;
    sqlx::query("UPDATE users SET is_active = false WHERE id = $1").bind(who.user_id).execute(pool).await.expect("off");
    who
}

/// The error code of a rule that answers a plain result.
pub fn refusal<T: std::fmt::Debug>(r: &shared::Result<T>) -> Option<ErrorCode> {
    match r {
        Ok(_) => None,
        Err(Error::Problem(p)) => Some(p.code),
        Err(e) => panic!("infrastructure error: {e}"),
    }
}

/// How many audit rows with `action` there are for `entity_id`.
pub async fn audited(pool: &PgPool, action: &str, entity_id: impl std::fmt::Display) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1 AND entity_id = $2")
        .bind(action)
        .bind(entity_id.to_string())
        .fetch_one(pool)
        .await
        .expect("audit")
}

/// The child jobs of `parent`: (kind, idempotency key).
pub async fn children(pool: &PgPool, parent: &JobRow) -> Vec<(String, String)> {
    sqlx::query_as("SELECT kind, idempotency_key FROM jobs WHERE parent_job_id = $1 ORDER BY idempotency_key")
        .bind(parent.id)
        .fetch_all(pool)
        .await
        .expect("children")
}

/// Runs `n` copies of a task at once (each its own tokio task, so their
/// transactions truly overlap) and answers their results in order.
pub async fn at_once<T, F, Fut>(n: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(task(i))).collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.expect("a task that does not panic"));
    }
    out
}

/// A signed PSP event as the api stores it (its event row and job) and its
/// job applies it.
pub async fn psp_event(pool: &PgPool, body: serde_json::Value) -> shared::Result<Outcome> {
    let raw = body.to_string();
    let env = shared::domain::psp::webhooks::envelope(raw.as_bytes(), None).expect("a valid envelope");
    shared::intake::webhook(pool, &env, &raw).await.expect("stored");
    let cmd = shared::domain::psp::webhooks::PspWebhookV1 { event_id: env.event_id.to_string() };
    db::serializable(pool, &cmd, |tx, cmd| Box::pin(shared::domain::psp::events::apply(tx, cmd))).await
}

/// `payment.settled` (or `.failed`) of one drive of a payment, as a PSP
/// sends it: the payment, the drive's reference.
pub fn payment_event(id: PaymentId, settled: bool, psp_ref: &str) -> serde_json::Value {
    serde_json::json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "type": if settled { "payment.settled" } else { "payment.failed" },
        "data": {"payment_id": id, "psp_ref": psp_ref},
    })
}
