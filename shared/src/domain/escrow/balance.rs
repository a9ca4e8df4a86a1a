//! The escrow balance: deposits minus payouts PENDING, SENT or SETTLED
//! (`funded_amount - reserved_amount`). It moves only through these guarded
//! statements, never read-modify-write, and a CHECK
//! (`escrows_reserved_within_funded`) backs them up.

use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::error::{Error, ErrorCode, Result};
use crate::ids::EscrowId;

/// Moves `amount` out of the escrow's balance, or refuses
/// (`INSUFFICIENT_ESCROW_BALANCE`).
pub async fn reserve(conn: &mut PgConnection, escrow: EscrowId, amount: Decimal) -> Result<()> {
    if try_reserve(conn, escrow, amount).await? {
        Ok(())
    } else {
        Err(Error::problem(ErrorCode::InsufficientEscrowBalance, "the escrow balance is too small for this payout"))
    }
}

/// The guarded reservation; `false` when the balance is too small.
pub async fn try_reserve(conn: &mut PgConnection, escrow: EscrowId, amount: Decimal) -> Result<bool> {
    let done = sqlx::query("UPDATE escrows SET reserved_amount = reserved_amount + $2, updated_at = now() WHERE id = $1 AND funded_amount - reserved_amount >= $2")
        .bind(escrow)
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A usage payment's reservation: only from the balance that milestones do
/// not hold. A milestone holds its amount until a payment of it is live
/// (PENDING, SENT or SETTLED), so approving a proof never finds the money
/// gone.
pub async fn reserve_unheld(conn: &mut PgConnection, escrow: EscrowId, amount: Decimal) -> Result<()> {
    let done = sqlx::query(
        "UPDATE escrows e SET reserved_amount = reserved_amount + $2, updated_at = now()
          WHERE id = $1 AND funded_amount - reserved_amount - (
                SELECT coalesce(sum(m.amount), 0) FROM milestones m
                 WHERE m.escrow_id = e.id
                   AND NOT EXISTS (SELECT 1 FROM payments p
                                    WHERE p.escrow_id = e.id AND p.milestone_id = m.id
                                      AND p.status IN ('PENDING', 'SENT', 'SETTLED'))
              ) >= $2",
    )
    .bind(escrow)
    .bind(amount)
    .execute(conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::problem(
            ErrorCode::InsufficientEscrowBalance,
            "the escrow balance not held for milestones is too small for this spend",
        ));
    }
    Ok(())
}

/// Gives a failed payout's reservation back to the balance.
pub async fn unreserve(conn: &mut PgConnection, escrow: EscrowId, amount: Decimal) -> Result<()> {
    sqlx::query("UPDATE escrows SET reserved_amount = reserved_amount - $2, updated_at = now() WHERE id = $1")
        .bind(escrow)
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(())
}

/// Counts a settled payout as paid.
pub async fn add_paid(conn: &mut PgConnection, escrow: EscrowId, amount: Decimal) -> Result<()> {
    sqlx::query("UPDATE escrows SET paid_amount = paid_amount + $2, updated_at = now() WHERE id = $1")
        .bind(escrow)
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(())
}
