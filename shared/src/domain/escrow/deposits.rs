//! Deposits (job `escrow_deposit`, or a PSP `funding.succeeded` event): an
//! escrow is funded up to its total, never past it; reaching the total
//! makes a DRAFT escrow `FUNDED`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::escrow::milestones::in_escrow_currency;
use crate::domain::escrow::model::{ESCROW_COLUMNS, Escrow};
use crate::domain::escrow::state::{event, load, load_for, require_parties_active};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{EscrowId, JobId};
use crate::money::{Money, display};
use crate::principal::{Principal, Role};

/// `escrow_deposit` job payload, version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EscrowDepositV1 {
    pub escrow_id: EscrowId,
    /// `amount` and `currency` (the escrow's), checked again when the
    /// payload is read.
    #[serde(flatten)]
    pub money: Money,
}

/// Where a deposit comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A client's (or an admin's) `escrow_deposit` job.
    Job(JobId),
    /// A verified PSP event (`funding.succeeded`), by its id: the PSP's
    /// fact, so it names any escrow and is recorded whatever its parties.
    Psp(&'a str),
}

/// A deposit: never over-funds; reaching the total makes a DRAFT `FUNDED`.
pub async fn deposit(
    conn: &mut PgConnection,
    who: &Principal,
    source: Source<'_>,
    cmd: &EscrowDepositV1,
) -> Result<Escrow> {
    let e = match source {
        Source::Psp(_) => load(conn, cmd.escrow_id).await?,
        Source::Job(_) => load_for(conn, cmd.escrow_id, who, true).await?,
    };
    if !(who.is_admin() || who.role == Role::Psp || (who.role == Role::Sender && who.user_id == e.client_id)) {
        return Err(Error::problem(ErrorCode::Forbidden, "only the escrow's client or an admin deposits"));
    }
    // A client's deposit needs both parties active; a PSP funding is the
    // PSP's fact (the money has arrived) and is recorded whatever.
    if let Source::Job(_) = source {
        require_parties_active(conn, &e).await?;
    }
    if !matches!(e.status.as_str(), "DRAFT" | "FUNDED") {
        return Err(Error::problem(ErrorCode::EscrowNotActive, format!("the escrow is {}", e.status)));
    }
    let amount = in_escrow_currency(&e, &cmd.money)?;
    let after = fund(conn, &e, amount).await?;
    record(conn, &e, &after, who, source, amount).await?;
    Ok(after)
}

/// The guarded increment: `ESCROW_OVERFUNDED` past the total.
async fn fund(conn: &mut PgConnection, e: &Escrow, amount: Decimal) -> Result<Escrow> {
    let after: Option<Escrow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE escrows SET funded_amount = funded_amount + $2,
                status = CASE WHEN funded_amount + $2 = amount_total THEN 'FUNDED' ELSE status END, updated_at = now()
          WHERE id = $1 AND (status || '') IN ('DRAFT', 'FUNDED') AND funded_amount + $2 <= amount_total RETURNING {ESCROW_COLUMNS}"
    )))
    .bind(e.id)
    .bind(amount)
    .fetch_optional(&mut *conn)
    .await?;
    after.ok_or_else(|| {
        Error::problem(
            ErrorCode::EscrowOverfunded,
            format!(
                "a deposit of {} would take the escrow past its total of {} (funded {})",
                display(amount, &e.currency),
                display(e.amount_total, &e.currency),
                display(e.funded_amount, &e.currency)
            ),
        )
    })
}

/// The deposit row (unique per job and per event), its events and audit.
async fn record(
    conn: &mut PgConnection,
    e: &Escrow,
    after: &Escrow,
    who: &Principal,
    source: Source<'_>,
    amount: Decimal,
) -> Result<()> {
    let (origin, job_id, event_id) = match source {
        Source::Job(job) => ("api", Some(job), None),
        Source::Psp(event) => ("psp", None, Some(event)),
    };
    sqlx::query(
        "INSERT INTO escrow_deposits (id, escrow_id, amount, source, job_id, event_id) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(e.id)
    .bind(amount)
    .bind(origin)
    .bind(job_id)
    .bind(event_id)
    .execute(&mut *conn)
    .await?;
    let actor = who.actor();
    let data = serde_json::json!({
        "amount": display(amount, &e.currency), "funded_amount": display(after.funded_amount, &e.currency),
        "event_id": event_id,
    });
    event(conn, e.id, "DEPOSITED", &actor, data).await?;
    if e.status == "DRAFT" && after.status == "FUNDED" {
        event(conn, e.id, "FUNDED", &actor, serde_json::json!({"from": "DRAFT", "to": "FUNDED"})).await?;
    }
    Ok(())
}
