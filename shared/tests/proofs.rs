//! Domain tests for proof files: retention deletes what no proof
//! references, and only once it is a day old.

mod common;

use std::time::{Duration, SystemTime};

use common::deal;
use shared::domain::escrow::proofs;
use shared::ids::ProofId;
use shared::storage::{LocalDirStore, ProofStore};
use sqlx::PgPool;

fn age(root: &std::path::Path, key: &str, by: Duration) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join(key))
        .expect("open")
        .set_modified(SystemTime::now() - by)
        .expect("mtime");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn retention_deletes_stored_files_no_proof_references_once_a_day_old(pool: PgPool) {
    let root = std::env::temp_dir().join(format!("kobatela-retention-{}", uuid::Uuid::new_v4()));
    let store = LocalDirStore::new(&root);
    let d = deal(&pool, "10.00", "USD", &[("10.00", "DOCUMENT")]).await;
    let milestone: uuid::Uuid = sqlx::query_scalar("SELECT id FROM milestones WHERE escrow_id = $1")
        .bind(d.escrow)
        .fetch_one(&pool)
        .await
        .expect("m");
    for key in ["proofs/aa/referenced", "proofs/bb/orphan-old", "proofs/cc/orphan-new"] {
        store.put(key, key.as_bytes()).await.expect("put");
    }
    let mut stale = store.stage().await.expect("stage");
    stale.write(b"left by a crash").await.expect("write");
    stale.finish().await.expect("finish");
    let two_days = Duration::from_secs(2 * 86_400);
    age(&root, "proofs/aa/referenced", two_days);
    age(&root, "proofs/bb/orphan-old", two_days);
    std::fs::OpenOptions::new()
        .write(true)
        .open(stale.path())
        .expect("open")
        .set_modified(SystemTime::now() - two_days)
        .expect("mtime");
    sqlx::query(
        "INSERT INTO proofs (id, escrow_id, milestone_id, sha256, storage_key, size_bytes, source, uploaded_by)
         VALUES ($1, $2, $3, 'sha', 'proofs/aa/referenced', 20, 'app', $4)",
    )
    .bind(ProofId::new())
    .bind(d.escrow)
    .bind(milestone)
    .bind(d.provider.user_id)
    .execute(&pool)
    .await
    .expect("proof");
    let mut conn = pool.acquire().await.expect("conn");
    let deleted = proofs::sweep_files(&mut conn, &store, Duration::from_secs(86_400)).await.expect("sweep");
    assert_eq!(deleted, 2, "the old orphan and the stale staging file");
    assert!(!stale.path().exists());
    assert!(store.get("proofs/bb/orphan-old").await.is_err());
    assert_eq!(store.get("proofs/aa/referenced").await.expect("kept"), b"proofs/aa/referenced");
    assert_eq!(store.get("proofs/cc/orphan-new").await.expect("too young"), b"proofs/cc/orphan-new");
    let again = proofs::sweep_files(&mut conn, &store, Duration::from_secs(86_400)).await.expect("sweep");
    assert_eq!(again, 0);
    drop(stale);
    let _ = std::fs::remove_dir_all(&root);
}
