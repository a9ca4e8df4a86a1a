//! Users: unique username and e-mail, `is_active`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::audit;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::UserId;
use crate::principal::Principal;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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
