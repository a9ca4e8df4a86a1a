//! Restricted transfers (job `transfer`): allowed to a recipient on the
//! sender's allowlist or a certified one; otherwise an alert is stored (it
//! survives the refusal) and the job fails `UNAUTHORIZED_TRANSFER`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::access::users::require_active_user;
use crate::domain::ops::{alerts, audit};
use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::{JobId, TransferId, UserId};
use crate::jobs::Outcome;
use crate::money::{Money, display};
use crate::principal::{Principal, Role};

/// The `transfer` job payload, version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferV1 {
    pub sender_id: UserId,
    pub receiver_id: UserId,
    /// `amount` and `currency`, checked again when the payload is read.
    #[serde(flatten)]
    pub money: Money,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Transfer {
    pub id: TransferId,
    pub sender_id: UserId,
    pub receiver_id: UserId,
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TransferOut {
    pub id: TransferId,
    pub sender_id: UserId,
    pub receiver_id: UserId,
    pub amount: String,
    pub currency: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub href: String,
}

impl From<Transfer> for TransferOut {
    fn from(t: Transfer) -> Self {
        TransferOut {
            href: format!("/transactions/{}", t.id),
            id: t.id,
            sender_id: t.sender_id,
            receiver_id: t.receiver_id,
            amount: display(t.amount, &t.currency),
            currency: t.currency,
            status: t.status,
            created_at: t.created_at,
        }
    }
}

const COLUMNS: &str = "id, sender_id, receiver_id, amount, currency, status, created_at";

pub async fn execute(conn: &mut PgConnection, who: &Principal, job_id: JobId, cmd: &TransferV1) -> Result<Outcome> {
    who.require_self_or_admin(cmd.sender_id, &[Role::Sender])?;
    require_active_user(conn, cmd.sender_id, "sender_id").await?;
    require_active_user(conn, cmd.receiver_id, "receiver_id").await?;
    let allowed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM allowlist WHERE owner_id = $1 AND recipient_id = $2)
             OR EXISTS (SELECT 1 FROM certifications WHERE user_id = $2)",
    )
    .bind(cmd.sender_id)
    .bind(cmd.receiver_id)
    .fetch_one(&mut *conn)
    .await?;
    if !allowed {
        return refuse(conn, who, job_id, cmd).await;
    }
    let (currency, amount) = (cmd.money.currency(), display(cmd.money.amount(), cmd.money.currency()));
    let t: Transfer = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO transactions (id, job_id, sender_id, receiver_id, amount, currency, status) VALUES ($1, $2, $3, $4, $5, $6, 'COMPLETED') RETURNING {COLUMNS}"
    )))
    .bind(TransferId::new())
    .bind(job_id)
    .bind(cmd.sender_id)
    .bind(cmd.receiver_id)
    .bind(cmd.money.amount())
    .bind(currency)
    .fetch_one(&mut *conn)
    .await?;
    audit::write(
        conn,
        &who.actor(),
        "TRANSFER_COMPLETED",
        "transfer",
        t.id,
        serde_json::json!({"receiver_id": t.receiver_id, "amount": amount, "currency": t.currency}),
    )
    .await?;
    Ok(Outcome::succeeded(serde_json::to_value(TransferOut::from(t))?))
}

/// Not allowed: an alert that survives the refusal, and the refusal's audit.
async fn refuse(conn: &mut PgConnection, who: &Principal, job_id: JobId, cmd: &TransferV1) -> Result<Outcome> {
    let payload = serde_json::json!({
        "sender_id": cmd.sender_id, "receiver_id": cmd.receiver_id,
        "amount": display(cmd.money.amount(), cmd.money.currency()), "currency": cmd.money.currency(), "job_id": job_id,
    });
    let why = "transfer to a recipient neither allow-listed nor certified";
    alerts::raise(conn, "UNAUTHORIZED_TRANSFER_ATTEMPT", why, Some(cmd.sender_id), payload.clone()).await?;
    let refusal = Problem::new(
        ErrorCode::UnauthorizedTransfer,
        "the receiver is neither on the sender's allowlist nor certified",
    );
    let data = serde_json::json!({"code": refusal.code.as_str(), "request": payload});
    audit::write(conn, &who.actor(), "TRANSFER_REFUSED", "transfer", job_id, data).await?;
    Ok(Outcome::refused(refusal))
}

pub async fn get_for(conn: &mut PgConnection, id: TransferId, who: &Principal) -> Result<TransferOut> {
    let t: Option<Transfer> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM transactions WHERE id = $1 AND ($2 OR sender_id = $3 OR receiver_id = $3)"
    )))
    .bind(id)
    .bind(who.reads_all())
    .bind(who.user_id)
    .fetch_optional(conn)
    .await?;
    t.map(Into::into).ok_or_else(|| Error::not_found(ErrorCode::NotFound, "transaction"))
}
