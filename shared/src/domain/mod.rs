//! Domain rules as plain async functions over a connection the caller owns
//! (a transaction for writes). They never begin or commit.

pub mod alerts;
pub mod api_keys;
pub mod audit;
pub mod catalogue;
pub mod escrows;
pub mod invariants;
pub mod mandates;
pub mod payees;
pub mod payouts;
pub mod proofs;
pub mod purchases;
pub mod saka;
pub mod transfers;
pub mod users;
pub mod webhooks;

use crate::error::{Error, ErrorCode};
use crate::ids::UserId;
use sqlx::PgConnection;

/// Refuses with `USER_NOT_FOUND` unless the user exists.
pub(crate) async fn require_user(conn: &mut PgConnection, id: UserId) -> Result<bool, Error> {
    let active: Option<bool> =
        sqlx::query_scalar("SELECT is_active FROM users WHERE id = $1").bind(id).fetch_optional(conn).await?;
    active.ok_or_else(|| Error::not_found(ErrorCode::UserNotFound, "user"))
}

/// Refuses unless the user exists and is active: an inactive user can
/// neither act nor receive.
pub(crate) async fn require_active_user(conn: &mut PgConnection, id: UserId, field: &str) -> Result<(), Error> {
    if require_user(conn, id).await? {
        Ok(())
    } else {
        Err(Error::problem(ErrorCode::Forbidden, format!("{field} is not an active user")))
    }
}

/// Refuses with `FORBIDDEN` when one of these users exists and is not
/// active (an unknown one is left to the rule's own lookup and its code).
/// Jobs run later than their request: a user deactivated meanwhile can
/// neither act nor receive.
pub(crate) async fn refuse_inactive(conn: &mut PgConnection, users: &[(UserId, &str)]) -> Result<(), Error> {
    let ids: Vec<UserId> = users.iter().map(|(id, _)| *id).collect();
    let inactive: Vec<UserId> = sqlx::query_scalar("SELECT id FROM users WHERE id = ANY($1) AND NOT is_active")
        .bind(&ids)
        .fetch_all(conn)
        .await?;
    match users.iter().find(|(id, _)| inactive.contains(id)) {
        Some((_, field)) => Err(Error::problem(ErrorCode::Forbidden, format!("{field} is not an active user"))),
        None => Ok(()),
    }
}
