//! The audit trail: one row per decision, written inside the transaction
//! that made it, so a rolled-back change leaves no audit and a committed one
//! always has its row.

use serde::Serialize;
use sqlx::PgConnection;

use crate::error::Result;
use crate::ids::AuditId;
use crate::page::{Page, PageRequest};

pub async fn write(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    entity: &str,
    entity_id: impl std::fmt::Display,
    data: serde_json::Value,
) -> Result<()> {
    sqlx::query("INSERT INTO audit_log (id, actor, action, entity, entity_id, data) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(AuditId::new())
        .bind(actor)
        .bind(action)
        .bind(entity)
        .bind(entity_id.to_string())
        .bind(data)
        .execute(conn)
        .await?;
    Ok(())
}

/// Several rows by one actor in one statement: (action, entity, entity id,
/// data) each, in this order.
pub async fn write_many(
    conn: &mut PgConnection,
    actor: &str,
    rows: &[(&str, &str, String, serde_json::Value)],
) -> Result<()> {
    let ids: Vec<AuditId> = rows.iter().map(|_| AuditId::new()).collect();
    let actions: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let entities: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let entity_ids: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    let data: Vec<&serde_json::Value> = rows.iter().map(|r| &r.3).collect();
    sqlx::query(
        "INSERT INTO audit_log (id, actor, action, entity, entity_id, data)
         SELECT id, $2, action, entity, entity_id, data
           FROM unnest($1::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[])
                WITH ORDINALITY AS r(id, action, entity, entity_id, data, n)
          ORDER BY n",
    )
    .bind(&ids)
    .bind(actor)
    .bind(&actions)
    .bind(&entities)
    .bind(&entity_ids)
    .bind(&data)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: AuditId,
    pub actor: String,
    pub action: String,
    pub entity: String,
    pub entity_id: String,
    pub data: serde_json::Value,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Default)]
pub struct AuditFilter {
    pub entity: Option<String>,
    pub entity_id: Option<String>,
    pub action: Option<String>,
}

/// Newest first. Callers check the role (support, admin).
pub async fn list(conn: &mut PgConnection, filter: &AuditFilter, page: &PageRequest) -> Result<Page<AuditRow>> {
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT id, actor, action, entity, entity_id, data, at FROM audit_log
          WHERE ($1::text IS NULL OR entity = $1) AND ($2::text IS NULL OR entity_id = $2)
            AND ($3::text IS NULL OR action = $3) AND id < $4
          ORDER BY id DESC LIMIT $5",
    )
    .bind(&filter.entity)
    .bind(&filter.entity_id)
    .bind(&filter.action)
    .bind(page.before())
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page, |r| r.id.0))
}
