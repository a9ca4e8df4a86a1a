//! Milestones of an escrow: numbered from 1 in sequence, in the escrow's
//! currency, never summing past its total, added while it is DRAFT or
//! FUNDED. Their state machine is in `state` (every move guarded).

use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::escrow::model::{Escrow, GeofenceIn, MILESTONE_COLUMNS, Milestone, MilestoneOut};
use crate::domain::escrow::state::{event, load_for};
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, FieldError, Problem, Result};
use crate::ids::{EscrowId, MilestoneId};
use crate::money::{Money, display};
use crate::principal::{Principal, Role};

#[derive(Debug, Clone)]
pub struct NewMilestone {
    pub idx: i32,
    pub label: String,
    pub amount: Money,
    pub proof_type: String,
    pub geofence: Option<GeofenceIn>,
}

pub async fn add_milestone(
    conn: &mut PgConnection,
    who: &Principal,
    escrow: EscrowId,
    new: &NewMilestone,
) -> Result<MilestoneOut> {
    let e = load_for(conn, escrow, who, true).await?;
    if !(who.is_admin() || (who.role == Role::Sender && who.user_id == e.client_id)) {
        return Err(Error::problem(ErrorCode::Forbidden, "only the escrow's client or an admin adds milestones"));
    }
    if !matches!(e.status.as_str(), "DRAFT" | "FUNDED") {
        return Err(Error::problem(
            ErrorCode::EscrowNotActive,
            format!("milestones can be added to a DRAFT or FUNDED escrow, not {}", e.status),
        ));
    }
    let amount = in_escrow_currency(&e, &new.amount)?;
    check_sequence_and_sum(conn, &e, new.idx, amount).await?;
    let m = insert(conn, &e, new, amount).await?;
    let data = serde_json::json!({"milestone_id": m.id, "idx": m.idx, "amount": display(m.amount, &e.currency)});
    event(conn, escrow, "MILESTONE_ADDED", &who.actor(), data).await?;
    let data = serde_json::json!({"escrow_id": escrow, "idx": m.idx});
    audit::write(conn, &who.actor(), "MILESTONE_CREATED", "milestone", m.id, data).await?;
    Ok(m.out(&e.currency))
}

/// An amount for this escrow: in its currency (the API parsed it at that
/// currency's minor unit), or `AMOUNT_INVALID`.
pub(crate) fn in_escrow_currency(e: &Escrow, amount: &Money) -> Result<Decimal> {
    if amount.currency() != e.currency {
        return Err(Error::problem(
            ErrorCode::CurrencyMismatch,
            format!("the amount is in {}, the escrow in {}", amount.currency(), e.currency),
        ));
    }
    Ok(amount.amount())
}

/// The next index in sequence, and the sum of milestones within the total.
async fn check_sequence_and_sum(conn: &mut PgConnection, e: &Escrow, idx: i32, amount: Decimal) -> Result<()> {
    let (count, sum): (i64, Option<Decimal>) =
        sqlx::query_as("SELECT count(*), sum(amount) FROM milestones WHERE escrow_id = $1")
            .bind(e.id)
            .fetch_one(&mut *conn)
            .await?;
    if i64::from(idx) != count + 1 {
        let why = format!("milestones are numbered in sequence from 1; the next is {}", count + 1);
        return Err(Problem::fields(ErrorCode::ValidationError, vec![FieldError::new("idx", why)]).into());
    }
    let sum = sum.unwrap_or_default() + amount;
    if sum > e.amount_total {
        return Err(Error::problem(
            ErrorCode::MilestoneSumExceedsTotal,
            format!(
                "milestones would total {} of an escrow of {}",
                display(sum, &e.currency),
                display(e.amount_total, &e.currency)
            ),
        ));
    }
    Ok(())
}

async fn insert(conn: &mut PgConnection, e: &Escrow, new: &NewMilestone, amount: Decimal) -> Result<Milestone> {
    let g = new.geofence;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO milestones (id, escrow_id, idx, label, amount, proof_type, geofence_lat, geofence_lng, geofence_radius_m)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {MILESTONE_COLUMNS}"
    )))
    .bind(MilestoneId::new())
    .bind(e.id)
    .bind(new.idx)
    .bind(&new.label)
    .bind(amount)
    .bind(&new.proof_type)
    .bind(g.map(|g| g.lat))
    .bind(g.map(|g| g.lng))
    .bind(g.map(|g| g.radius_m))
    .fetch_one(&mut *conn)
    .await
    .on_constraint("milestones_escrow_idx_key", ErrorCode::ValidationError, "this milestone index is taken")
}
