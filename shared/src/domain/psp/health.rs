//! The PSP's health as the payout path sees it. A `401`/`403` means our
//! credentials are wrong (a rotated key): every payout waits, PENDING with
//! its reservation, until they are fixed. Ops hear of it once per outage,
//! not once per payout: the first such answer sets
//! `psp_health.auth_failing_since` and raises `PSP_AUTH_FAILED`; the next
//! answer that is not one clears it.

use sqlx::PgConnection;

use crate::domain::ops::alerts;
use crate::error::Result;

/// Records a `401`/`403` from the PSP. Raises `PSP_AUTH_FAILED` when it
/// starts an outage; answers whether it did.
pub async fn auth_failed(conn: &mut PgConnection, status: u16, message: &str) -> Result<bool> {
    let started: Option<i32> = sqlx::query_scalar(
        "UPDATE psp_health SET auth_failing_since = now(), last_auth_error = $1
          WHERE id = 1 AND auth_failing_since IS NULL RETURNING id",
    )
    .bind(format!("{status}: {}", message.chars().take(200).collect::<String>()))
    .fetch_optional(&mut *conn)
    .await?;
    if started.is_none() {
        return Ok(false);
    }
    let why = format!(
        "the PSP refused our credentials ({status}): every payout waits, PENDING with its reservation, \
         until PSP_API_KEY is fixed; they are tried again on their own"
    );
    let data = serde_json::json!({"status": status, "message": message.chars().take(200).collect::<String>()});
    alerts::raise(conn, "PSP_AUTH_FAILED", &why, None, data).await?;
    Ok(true)
}

/// Records an answer from the PSP that was not a `401`/`403` (an
/// acceptance or a refusal: our credentials work). One statement that
/// writes nothing outside an outage; answers whether it ended one.
pub async fn answered(conn: &mut PgConnection) -> Result<bool> {
    let ended: Option<i32> = sqlx::query_scalar(
        "UPDATE psp_health SET auth_failing_since = NULL WHERE id = 1 AND auth_failing_since IS NOT NULL RETURNING id",
    )
    .fetch_optional(conn)
    .await?;
    Ok(ended.is_some())
}

/// Since when our credentials have been refused, if they are.
pub async fn auth_failing_since(conn: &mut PgConnection) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    Ok(sqlx::query_scalar("SELECT auth_failing_since FROM psp_health WHERE id = 1")
        .fetch_optional(conn)
        .await?
        .flatten())
}
