//! Users: unique username and e-mail, `is_active`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::UserId;
use crate::principal::Principal;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub is_active: bool,
}

pub async fn create(conn: &mut PgConnection, by: &Principal, new: &NewUser) -> Result<User> {
    let user: User = sqlx::query_as(
        "INSERT INTO users (id, username, email, is_active) VALUES ($1, $2, $3, $4)
         RETURNING id, username, email, is_active, created_at",
    )
    .bind(UserId::new())
    .bind(&new.username)
    .bind(&new.email)
    .bind(new.is_active)
    .fetch_one(&mut *conn)
    .await
    .on_constraint("users_username_key", ErrorCode::UserExists, "a user with this username exists")
    .on_constraint("users_email_key", ErrorCode::UserExists, "a user with this e-mail exists")?;
    audit::write(conn, &by.actor(), "USER_CREATED", "user", user.id, serde_json::json!({"username": user.username}))
        .await?;
    Ok(user)
}

pub async fn get(conn: &mut PgConnection, id: UserId) -> Result<Option<User>> {
    Ok(sqlx::query_as("SELECT id, username, email, is_active, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

/// Admin, support or the user themself; anyone else sees a 404.
pub async fn get_for(conn: &mut PgConnection, id: UserId, who: &Principal) -> Result<User> {
    if !(who.reads_all() || who.user_id == id) {
        return Err(Error::not_found(ErrorCode::UserNotFound, "user"));
    }
    get(conn, id).await?.ok_or_else(|| Error::not_found(ErrorCode::UserNotFound, "user"))
}

/// Refuses with `USER_NOT_FOUND` unless the user exists.
pub(crate) async fn require_user(conn: &mut PgConnection, id: UserId) -> Result<bool> {
    let active: Option<bool> =
        sqlx::query_scalar("SELECT is_active FROM users WHERE id = $1").bind(id).fetch_optional(conn).await?;
    active.ok_or_else(|| Error::not_found(ErrorCode::UserNotFound, "user"))
}

/// Refuses unless the user exists and is active: an inactive user can
/// neither act nor receive.
pub(crate) async fn require_active_user(conn: &mut PgConnection, id: UserId, field: &str) -> Result<()> {
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
pub(crate) async fn refuse_inactive(conn: &mut PgConnection, users: &[(UserId, &str)]) -> Result<()> {
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
