//! Fixtures shared by the domain tests: users, escrows with milestones and
//! deposits, parent job rows, all through the domain rules themselves.

#![allow(dead_code)]

use futures::future::BoxFuture;
use rust_decimal::Decimal;
use shared::db;
use shared::domain::escrow::deposits::{self, EscrowDepositV1, Source};
use shared::domain::escrow::escrows::{self, NewEscrow};
use shared::domain::escrow::milestones::{self, NewMilestone};
use shared::ids::{ApiKeyId, EscrowId, UserId};
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

pub async fn user(pool: &PgPool, role: Role) -> Principal {
    let id = UserId::new();
    sqlx::query("INSERT INTO users (id, username, email) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(format!("u-{id}"))
        .bind(format!("{id}@example.test"))
        .execute(pool)
        .await
        .expect("insert user");
    Principal { user_id: id, key_id: ApiKeyId::new(), role }
}

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
