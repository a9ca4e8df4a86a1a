//! Domain tests for operations on a fresh database each, no HTTP: the
//! audit trail and alerts list newest first, filtered and paged.

use shared::db;
use shared::domain::ops::alerts;
use shared::domain::ops::audit::{self, AuditFilter};
use shared::page::PageRequest;
use sqlx::PgPool;

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_audit_trail_lists_newest_first_filtered_and_paged(pool: PgPool) {
    db::serializable(&pool, &(), |tx, _| {
        Box::pin(async move {
            for i in 0..5 {
                audit::write(tx, "system", "THING_DONE", "thing", format!("t{i}"), serde_json::json!({"i": i})).await?;
            }
            audit::write(tx, "system", "OTHER_DONE", "other", "o1", serde_json::json!({})).await
        })
    })
    .await
    .expect("written");
    let mut conn = pool.acquire().await.expect("conn");
    let filter = AuditFilter { action: Some("THING_DONE".into()), ..AuditFilter::default() };
    let first =
        audit::list(&mut conn, &filter, &PageRequest::parse(Some("3"), None).expect("page")).await.expect("list");
    let ids: Vec<&str> = first.items.iter().map(|r| r.entity_id.as_str()).collect();
    assert_eq!(ids, vec!["t4", "t3", "t2"]);
    let cursor = first.next_cursor.expect("more");
    let rest = audit::list(&mut conn, &filter, &PageRequest::parse(Some("3"), Some(&cursor)).expect("page"))
        .await
        .expect("list");
    let ids: Vec<&str> = rest.items.iter().map(|r| r.entity_id.as_str()).collect();
    assert_eq!((ids, rest.next_cursor), (vec!["t1", "t0"], None));
    let one = AuditFilter { entity: Some("other".into()), entity_id: Some("o1".into()), ..AuditFilter::default() };
    let page = PageRequest::parse(None, None).expect("page");
    assert_eq!(audit::list(&mut conn, &one, &page).await.expect("list").items.len(), 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn alerts_list_newest_first_by_type(pool: PgPool) {
    db::serializable(&pool, &(), |tx, _| {
        Box::pin(async move {
            alerts::raise(tx, "A", "first", None, serde_json::json!({})).await?;
            alerts::raise(tx, "B", "other", None, serde_json::json!({})).await?;
            alerts::raise(tx, "A", "second", None, serde_json::json!({})).await
        })
    })
    .await
    .expect("raised");
    let mut conn = pool.acquire().await.expect("conn");
    let page = PageRequest::parse(None, None).expect("page");
    let a = alerts::list(&mut conn, Some("A"), &page).await.expect("list");
    assert_eq!(a.items.iter().map(|x| x.message.as_str()).collect::<Vec<_>>(), vec!["second", "first"]);
    assert_eq!(alerts::list(&mut conn, None, &page).await.expect("list").items.len(), 3);
}
