//! An escrow's creation and what its parties read of it: the escrow with
//! its milestones and payments.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::access::users::require_active_user;
use crate::domain::escrow::model::{ESCROW_COLUMNS, Escrow, EscrowOut};
use crate::domain::escrow::state::{self, event};
use crate::error::{ErrorCode, FieldError, Problem, Result};
use crate::ids::{EscrowId, UserId};
use crate::money::{Currency, Money, display};
use crate::principal::{Principal, Role};

#[derive(Debug, Clone)]
pub struct NewEscrow {
    pub client_id: UserId,
    pub provider_id: UserId,
    pub total: Money,
    pub release_conditions: serde_json::Value,
    pub deadline_at: DateTime<Utc>,
}

fn invalid(field: &str, message: &str) -> crate::Error {
    Problem::fields(ErrorCode::ValidationError, vec![FieldError::new(field, message)]).into()
}

/// A DRAFT escrow between a client (the caller, or any for an admin) and
/// another, active, provider.
pub async fn create(conn: &mut PgConnection, who: &Principal, new: &NewEscrow) -> Result<EscrowOut> {
    who.require_self_or_admin(new.client_id, &[Role::Sender])?;
    if new.client_id == new.provider_id {
        return Err(invalid("provider_id", "must differ from client_id"));
    }
    if new.deadline_at <= Utc::now() {
        return Err(invalid("deadline_at", "must be in the future"));
    }
    require_active_user(conn, new.client_id, "client_id").await?;
    require_active_user(conn, new.provider_id, "provider_id").await?;
    let e: Escrow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO escrows (id, client_id, provider_id, amount_total, currency, release_conditions, deadline_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ESCROW_COLUMNS}"
    )))
    .bind(EscrowId::new())
    .bind(new.client_id)
    .bind(new.provider_id)
    .bind(new.total.amount())
    .bind(new.total.currency())
    .bind(&new.release_conditions)
    .bind(new.deadline_at)
    .fetch_one(&mut *conn)
    .await?;
    let data = serde_json::json!({"amount_total": display(e.amount_total, &e.currency), "currency": e.currency});
    event(conn, e.id, "CREATED", &who.actor(), data).await?;
    Ok((&e).into())
}

/// The escrow with its milestones and payments, for its parties, support
/// and admin.
pub async fn get_for(conn: &mut PgConnection, id: EscrowId, who: &Principal) -> Result<EscrowOut> {
    let e = state::load_for(conn, id, who, false).await?;
    full(conn, &e).await
}

/// The escrow with its milestones and payments.
pub async fn full(conn: &mut PgConnection, e: &Escrow) -> Result<EscrowOut> {
    let ms = state::milestones(conn, e.id).await?;
    let pays = state::payments_of(conn, e.id).await?;
    let mut out: EscrowOut = e.into();
    out.milestones = Some(ms.iter().map(|m| m.out(&e.currency)).collect());
    out.payments = Some(pays);
    Ok(out)
}

/// The currency of an escrow the caller may see (anyone else gets
/// `ESCROW_NOT_FOUND`): the API reads an escrow's amounts (deposits,
/// spends, milestones) in it, at its own minor unit.
pub async fn currency_for(conn: &mut PgConnection, id: EscrowId, who: &Principal) -> Result<Currency> {
    Ok(state::load_for(conn, id, who, false).await?.currency())
}
