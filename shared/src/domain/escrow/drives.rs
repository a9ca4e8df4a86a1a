//! A payment's drives: each call to the PSP for one payment (its first, and
//! each re-drive after the PSP failed it) goes under an idempotency key of
//! its own (`{payment_id}`, then `{payment_id}-r{n}`), so the PSP sees a
//! new payout where the bare id would only replay its failure. A PSP may
//! still pay a drive it reported failed; then two drives pay one payment.
//! So each drive is a row (`payment_drives`) with the `psp_ref` the PSP gave
//! it and what the PSP said of it, the payment names its current drive
//! (`payments.drive`), and an event is matched to the drive it names before
//! it moves anything.

use sqlx::PgConnection;

use crate::domain::escrow::model::Payment;
use crate::error::Result;
use crate::ids::PaymentId;

/// The PSP idempotency key of a payment's drive `n`.
pub fn key(payment: PaymentId, drive: i32) -> String {
    if drive == 0 { payment.to_string() } else { format!("{payment}-r{drive}") }
}

/// The keys of every drive before `drive`, oldest first: what a re-drive
/// asks the PSP about before it drives (a drive adopted or never sent
/// included: the PSP answers "never got it" for those).
pub fn earlier_keys(payment: PaymentId, drive: i32) -> Vec<String> {
    (0..drive.max(0)).map(|n| key(payment, n)).collect()
}

/// What the PSP said of a drive, as `payment_drives.psp_status` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PspSaid {
    Accepted,
    Refused,
    Failed,
    Settled,
    /// An earlier drive was adopted before this one was sent.
    NotSent,
}

impl PspSaid {
    pub fn as_str(self) -> &'static str {
        match self {
            PspSaid::Accepted => "accepted",
            PspSaid::Refused => "refused",
            PspSaid::Failed => "failed",
            PspSaid::Settled => "settled",
            PspSaid::NotSent => "not_sent",
        }
    }
}

/// The row of drive `n`, made when the drive is about to call the PSP (a
/// job's retry of the same drive finds it).
pub async fn open(conn: &mut PgConnection, payment: PaymentId, drive: i32) -> Result<()> {
    sqlx::query(
        "INSERT INTO payment_drives (payment_id, drive, idempotency_key) VALUES ($1, $2, $3)
         ON CONFLICT (payment_id, drive) DO NOTHING",
    )
    .bind(payment)
    .bind(drive)
    .bind(key(payment, drive))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records what the PSP said of drive `n` (and its `psp_ref`, once known).
/// A settled drive stays settled: a late "failed" never undoes it.
pub async fn record(
    conn: &mut PgConnection,
    payment: PaymentId,
    drive: i32,
    psp_ref: Option<&str>,
    said: PspSaid,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO payment_drives (payment_id, drive, idempotency_key, psp_ref, psp_status) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (payment_id, drive) DO UPDATE
            SET psp_ref = coalesce(payment_drives.psp_ref, EXCLUDED.psp_ref),
                psp_status = CASE WHEN payment_drives.psp_status = 'settled' THEN 'settled' ELSE EXCLUDED.psp_status END,
                updated_at = now()",
    )
    .bind(payment)
    .bind(drive)
    .bind(key(payment, drive))
    .bind(psp_ref)
    .bind(said.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// A drive as an event or the PSP names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drive {
    /// `None`: a drive of this payment we have no record of.
    pub drive: Option<i32>,
    pub idempotency_key: Option<String>,
    pub psp_ref: Option<String>,
}

/// Which drive of a payment an event names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// The payment's current drive (or the event does not say which).
    Current,
    Other(Drive),
}

/// Matches an event to one of `p`'s drives: by the idempotency key the
/// drive was asked under when the event carries it, else by `psp_ref`. An
/// event that names neither is the current drive's (nothing to compare).
/// A `psp_ref` we have never seen for this payment, while its current drive
/// has another, is a drive we do not know: not the current one.
pub async fn named_by(conn: &mut PgConnection, p: &Payment, key: Option<&str>, psp_ref: Option<&str>) -> Result<Named> {
    let current = |n: i32| n == p.drive;
    let other = |drive: Option<i32>| {
        Named::Other(Drive { drive, idempotency_key: key.map(str::to_string), psp_ref: psp_ref.map(str::to_string) })
    };
    if let Some(key) = key {
        return Ok(match drive_of_key(p.id, key) {
            Some(n) if current(n) => Named::Current,
            Some(n) => other(Some(n)),
            None => other(None),
        });
    }
    let Some(psp_ref) = psp_ref else { return Ok(Named::Current) };
    let known: Option<i32> =
        sqlx::query_scalar("SELECT drive FROM payment_drives WHERE payment_id = $1 AND psp_ref = $2")
            .bind(p.id)
            .bind(psp_ref)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match known {
        Some(n) if current(n) => Named::Current,
        Some(n) => other(Some(n)),
        None => match current_ref(conn, p).await? {
            Some(ours) if ours != psp_ref => other(None),
            _ => Named::Current,
        },
    })
}

/// The drive number a key stands for, if it is one of this payment's.
fn drive_of_key(payment: PaymentId, key: &str) -> Option<i32> {
    let rest = key.strip_prefix(&payment.to_string())?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix("-r")?.parse().ok().filter(|n| *n > 0)
}

/// The `psp_ref` of the payment's current drive, once the PSP gave one.
async fn current_ref(conn: &mut PgConnection, p: &Payment) -> Result<Option<String>> {
    if p.psp_ref.is_some() {
        return Ok(p.psp_ref.clone());
    }
    let r: Option<Option<String>> =
        sqlx::query_scalar("SELECT psp_ref FROM payment_drives WHERE payment_id = $1 AND drive = $2")
            .bind(p.id)
            .bind(p.drive)
            .fetch_optional(conn)
            .await?;
    Ok(r.flatten())
}

/// The drives of a payment other than `except` that the PSP settled.
pub async fn settled_others(conn: &mut PgConnection, p: PaymentId, except: i32) -> Result<Vec<Drive>> {
    let rows: Vec<(i32, String, Option<String>)> = sqlx::query_as(
        "SELECT drive, idempotency_key, psp_ref FROM payment_drives
          WHERE payment_id = $1 AND drive <> $2 AND psp_status = 'settled' ORDER BY drive",
    )
    .bind(p)
    .bind(except)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(drive, key, psp_ref)| Drive { drive: Some(drive), idempotency_key: Some(key), psp_ref })
        .collect())
}

/// The payment's current drive as an alert shows it.
pub fn current(p: &Payment) -> Drive {
    Drive { drive: Some(p.drive), idempotency_key: Some(key(p.id, p.drive)), psp_ref: p.psp_ref.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_drive_only_for_its_own_payment() {
        let p = PaymentId::new();
        assert_eq!(key(p, 0), p.to_string());
        assert_eq!(key(p, 3), format!("{p}-r3"));
        for n in [0, 1, 12] {
            assert_eq!(drive_of_key(p, &key(p, n)), Some(n));
        }
        assert_eq!(drive_of_key(p, &key(PaymentId::new(), 0)), None);
        assert_eq!(drive_of_key(p, &format!("{p}-r0")), None);
        assert_eq!(drive_of_key(p, &format!("{p}-x1")), None);
        assert_eq!(earlier_keys(p, 2), vec![key(p, 0), key(p, 1)]);
        assert!(earlier_keys(p, 0).is_empty());
    }
}
