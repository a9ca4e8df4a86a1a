//! Alerts: operational signals that survive the refusal that raised them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::error::Result;
use crate::ids::{AlertId, UserId};
use crate::page::{Page, PageRequest};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Alert {
    pub id: AlertId,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub actor_user_id: Option<UserId>,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

pub async fn raise(
    conn: &mut PgConnection,
    kind: &str,
    message: &str,
    actor: Option<UserId>,
    payload: serde_json::Value,
) -> Result<AlertId> {
    let id = AlertId::new();
    sqlx::query("INSERT INTO alerts (id, type, message, actor_user_id, payload) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(kind)
        .bind(message)
        .bind(actor)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(id)
}

/// Newest first; support and admin only (checked by the caller).
pub async fn list(conn: &mut PgConnection, kind: Option<&str>, page: &PageRequest) -> Result<Page<Alert>> {
    let rows: Vec<Alert> = sqlx::query_as(
        "SELECT id, type, message, actor_user_id, payload, created_at FROM alerts
          WHERE ($1::text IS NULL OR type = $1) AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(kind)
    .bind(page.before())
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page, |a| a.id.0))
}
