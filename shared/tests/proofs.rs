//! Domain tests for proofs on a fresh database each, no HTTP: an upload's
//! checks in DOMAIN.md's order and its replay (through `intake`, as the api
//! submits it), two uploads racing for one milestone, validations (an
//! unreadable photo, a document sent to review), decisions, nothing moving
//! a milestone after a release, and retention of files no proof references.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use shared::ErrorCode;
use shared::config::StorageUrl;
use shared::db;
use shared::domain::escrow::proofs::NewProof;
use shared::domain::escrow::proofs::{self, Decision};
use shared::domain::escrow::transitions::TransitionAction;
use shared::ids::ProofId;
use shared::intake;
use shared::jobs::JobKind;
use shared::jobs::{JobRow, Outcome};
use shared::principal::{Principal, Role};
use shared::storage::{ObjectProofStore, ProofStore, StagedFile};
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
    let store = local_store(root.clone());
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

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn after_a_release_no_decision_or_validation_moves_a_paid_milestone_back(pool: PgPool) {
    let d = deal(&pool, "50.00", "USD", &[("50.00", "DOCUMENT")]).await;
    d.deposit(&pool, "50.00").await;
    let in_review = proof_in_review(&pool, &d, 1).await;
    let parent = job(&pool, &d.client, JobKind::EscrowTransition).await;
    assert_eq!(code(&transition(&pool, d.client, &parent, d.escrow, TransitionAction::ClientApprove).await), None);
    let (id, ..) = payments(&pool, d.escrow).await[0];
    drive(&pool, id).await.expect("driven");
    psp_says(&pool, id, true).await;
    assert_eq!(d.milestone_statuses(&pool).await, vec!["PAID"]);
    // The proof left in review was closed by the release (see below).
    for decision in [Decision::Reject, Decision::Approve] {
        assert_eq!(code(&decide(&pool, d.admin, in_review, decision).await), Some(ErrorCode::ProofAlreadyDecided));
    }
    assert_eq!(d.milestone_statuses(&pool).await, vec!["PAID"], "a PAID milestone never moves back");
    // A validation still queued when the escrow was released: the proof is
    // rejected, the milestone stays PAID, no second payout.
    let pending = ProofId::new();
    sqlx::query(
        "INSERT INTO proofs (id, escrow_id, milestone_id, sha256, storage_key, size_bytes, source, uploaded_by)
         SELECT $1, $2, id, 'p2', 'proofs/x/p2', 10, 'app', $3 FROM milestones WHERE escrow_id = $2",
    )
    .bind(pending)
    .bind(d.escrow)
    .bind(d.provider.user_id)
    .execute(&pool)
    .await
    .expect("pending proof");
    let store = local_store(std::env::temp_dir().join("kobatela-none"));
    let v = job(&pool, &d.provider, JobKind::ProofValidation).await;
    let r = as_job(&pool, &v, &(v.id, d.provider, pending, store), |tx, (job, who, id, store)| {
        Box::pin(proofs::validate(tx, store, who, *job, *id))
    })
    .await;
    assert_eq!(code(&r), Some(ErrorCode::EscrowNotActive));
    let status: (String, Option<String>) = sqlx::query_as("SELECT status, rejection_code FROM proofs WHERE id = $1")
        .bind(pending)
        .fetch_one(&pool)
        .await
        .expect("proof");
    assert_eq!(status, ("REJECTED".into(), Some("ESCROW_NOT_ACTIVE".into())));
    assert_eq!(d.milestone_statuses(&pool).await, vec!["PAID"]);
    assert_eq!(payments(&pool, d.escrow).await.len(), 1);
    let (_, reserved, paid, _) = d.money(&pool).await;
    assert_eq!((reserved, paid), (dec("50.00"), dec("50.00")));
}

/// Found by the chaos soak: an escrow released or refunded while a proof
/// waited for a person left that proof in review for ever (no decision
/// applies to an ended escrow). The transition closes it.
async fn an_ended_escrow_leaves_no_proof_in_review(pool: PgPool, action: TransitionAction, milestone: &str) {
    let d = deal(&pool, "50.00", "USD", &[("50.00", "DOCUMENT")]).await;
    d.deposit(&pool, "50.00").await;
    let in_review = proof_in_review(&pool, &d, 1).await;
    let parent = job(&pool, &d.client, JobKind::EscrowTransition).await;
    assert_eq!(code(&transition(&pool, d.client, &parent, d.escrow, action).await), None);
    let proof: (String, Option<String>) = sqlx::query_as("SELECT status, rejection_code FROM proofs WHERE id = $1")
        .bind(in_review)
        .fetch_one(&pool)
        .await
        .expect("proof");
    assert_eq!(proof, ("REJECTED".into(), Some("ESCROW_NOT_ACTIVE".into())));
    assert_eq!(d.milestone_statuses(&pool).await, vec![milestone]);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE entity = 'proof' AND entity_id = $1 AND action = 'PROOF_REJECTED'",
    )
    .bind(in_review.to_string())
    .fetch_one(&pool)
    .await
    .expect("audit");
    assert_eq!(audited, 1);
    assert_eq!(
        code(&decide(&pool, d.client, in_review, Decision::Approve).await),
        Some(ErrorCode::ProofAlreadyDecided)
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_release_closes_a_proof_left_in_review_and_pays_the_milestone_it_approved(pool: PgPool) {
    an_ended_escrow_leaves_no_proof_in_review(pool, TransitionAction::ClientApprove, "APPROVED").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_refund_closes_a_proof_left_in_review_and_its_milestone_waits_no_more(pool: PgPool) {
    an_ended_escrow_leaves_no_proof_in_review(pool, TransitionAction::ClientReject, "WAITING").await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_decision_on_a_milestone_that_is_not_in_review_is_an_invalid_transition(pool: PgPool) {
    let d = deal(&pool, "50.00", "USD", &[("50.00", "DOCUMENT")]).await;
    d.deposit(&pool, "50.00").await;
    let proof = proof_in_review(&pool, &d, 1).await;
    // Something else moved the milestone meanwhile.
    sqlx::query("UPDATE milestones SET status = 'APPROVED' WHERE escrow_id = $1")
        .bind(d.escrow)
        .execute(&pool)
        .await
        .expect("moved");
    assert_eq!(
        code(&decide(&pool, d.client, proof, Decision::Reject).await),
        Some(ErrorCode::MilestoneInvalidTransition)
    );
    assert_eq!(
        code(&decide(&pool, d.client, proof, Decision::Approve).await),
        Some(ErrorCode::MilestoneInvalidTransition)
    );
    assert_eq!(d.milestone_statuses(&pool).await, vec!["APPROVED"]);
    assert!(payments(&pool, d.escrow).await.is_empty(), "nothing was paid");
}

/// A file staged in `store` holding `bytes`, and its SHA-256.
async fn staged(store: &ObjectProofStore, bytes: &[u8]) -> (StagedFile, String) {
    let mut file = store.stage().await.expect("staged");
    file.write(bytes).await.expect("written");
    let sha = file.finish().await.expect("hashed");
    (file, sha)
}

/// An upload as the api submits it: checks, proof row and job in one
/// transaction (`intake`). Answers the proof and whether its job is new.
async fn upload(
    pool: &PgPool,
    store: &ObjectProofStore,
    who: Principal,
    d: &Deal,
    idx: i32,
    bytes: &[u8],
    key: &str,
) -> Result<(ProofId, bool), ErrorCode> {
    let (file, sha256) = staged(store, bytes).await;
    let new = NewProof {
        escrow_id: d.escrow,
        milestone_idx: idx,
        source: "app".into(),
        storage_key: format!("proofs/{}/{sha256}", &sha256[..2]),
        sha256,
        content_type: None,
        size_bytes: bytes.len() as i64,
    };
    let ctx = (who, new, key.to_string(), file, store);
    let r = db::serializable(pool, &ctx, |tx, (who, new, key, file, store)| {
        Box::pin(intake::proof_upload(tx, who, new, key, *store, file))
    })
    .await;
    match r {
        Ok((proof, _, created)) => Ok((proof, created)),
        Err(shared::Error::Problem(p)) => Err(p.code),
        Err(e) => panic!("infrastructure error: {e}"),
    }
}

/// A store on a local directory, as `STORAGE_URL=file://…` makes it.
fn local_store(dir: std::path::PathBuf) -> ObjectProofStore {
    ObjectProofStore::open(&StorageUrl::File(dir)).expect("a local store")
}

fn temp_store() -> ObjectProofStore {
    local_store(std::env::temp_dir().join(format!("kobatela-proofs-{}", uuid::Uuid::new_v4())))
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_upload_is_checked_in_domain_order_and_replayed_under_its_key(pool: PgPool) {
    let store = temp_store();
    let d = deal(&pool, "30.00", "USD", &[("10.00", "DOCUMENT"), ("20.00", "DOCUMENT")]).await;
    let stranger = user(&pool, Role::Beneficiary).await;
    assert_eq!(upload(&pool, &store, d.provider, &d, 1, b"doc-1", "k1").await, Err(ErrorCode::EscrowNotActive));
    d.deposit(&pool, "30.00").await;
    assert_eq!(upload(&pool, &store, stranger, &d, 1, b"doc-1", "k1").await, Err(ErrorCode::EscrowNotFound));
    assert_eq!(upload(&pool, &store, d.client, &d, 1, b"doc-1", "k1").await, Err(ErrorCode::EscrowNotFound));
    assert_eq!(upload(&pool, &store, d.provider, &d, 9, b"doc-1", "k1").await, Err(ErrorCode::MilestoneNotFound));
    assert_eq!(upload(&pool, &store, d.provider, &d, 2, b"doc-1", "k1").await, Err(ErrorCode::SequenceError));
    let (proof, created) = upload(&pool, &store, d.provider, &d, 1, b"doc-1", "k1").await.expect("accepted");
    assert!(created);
    assert!(store.get(&format!("proofs/{}", stored_key(&pool, proof).await)).await.is_ok(), "the file was placed");
    // The same key and file answer the first job; another file under that
    // key is another request.
    assert_eq!(upload(&pool, &store, d.provider, &d, 1, b"doc-1", "k1").await, Ok((proof, false)));
    assert_eq!(upload(&pool, &store, d.provider, &d, 1, b"doc-2", "k1").await, Err(ErrorCode::IdempotencyKeyReused));
    // The file before the milestone: a used file is a duplicate even for a
    // milestone that does not exist.
    assert_eq!(upload(&pool, &store, d.provider, &d, 9, b"doc-1", "k2").await, Err(ErrorCode::ProofDuplicate));
    assert_eq!(upload(&pool, &store, d.provider, &d, 1, b"doc-2", "k3").await, Err(ErrorCode::MilestoneNotWaiting));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'proof_validation'")
        .fetch_one(&pool)
        .await
        .expect("jobs");
    assert_eq!((jobs, audited(&pool, "PROOF_SUBMITTED", proof).await), (1, 1));
}

async fn stored_key(pool: &PgPool, proof: ProofId) -> String {
    let key: String = sqlx::query_scalar("SELECT storage_key FROM proofs WHERE id = $1")
        .bind(proof)
        .fetch_one(pool)
        .await
        .expect("p");
    key.trim_start_matches("proofs/").to_string()
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn two_uploads_racing_for_one_milestone_accept_exactly_one(
    opts: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = wide_pool(opts, connect).await;
    let d = deal(&pool, "10.00", "USD", &[("10.00", "DOCUMENT")]).await;
    d.deposit(&pool, "10.00").await;
    let results = at_once(6, |i| {
        let (pool, d) = (pool.clone(), d.clone());
        async move {
            let store = temp_store();
            upload(&pool, &store, d.provider, &d, 1, format!("file-{i}").as_bytes(), &format!("k{i}")).await
        }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|c| *c == ErrorCode::MilestoneNotWaiting));
    let proofs: i64 = sqlx::query_scalar("SELECT count(*) FROM proofs").fetch_one(&pool).await.expect("proofs");
    assert_eq!(proofs, 1);
}

async fn validate(
    pool: &PgPool,
    store: &ObjectProofStore,
    d: &Deal,
    proof: ProofId,
) -> (shared::Result<Outcome>, JobRow) {
    let parent = job(pool, &d.provider, JobKind::ProofValidation).await;
    let ctx = (parent.id, d.provider, proof, store);
    let r = as_job(pool, &parent, &ctx, |tx, (job, who, proof, store)| {
        Box::pin(proofs::validate(tx, *store, who, *job, *proof))
    })
    .await;
    (r, parent)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_unreadable_photo_is_rejected_and_a_document_waits_for_a_person_who_approves_it(pool: PgPool) {
    let store = temp_store();
    let d = deal(&pool, "30.00", "USD", &[("10.00", "PHOTO"), ("20.00", "DOCUMENT")]).await;
    d.deposit(&pool, "30.00").await;
    let (photo, _) = upload(&pool, &store, d.provider, &d, 1, b"not a jpeg", "p1").await.expect("accepted");
    let (r, parent) = validate(&pool, &store, &d, photo).await;
    assert_eq!(code(&r), Some(ErrorCode::ProofUnreadable));
    assert!(children(&pool, &parent).await.is_empty());
    assert_eq!(d.milestone_statuses(&pool).await, vec!["WAITING", "WAITING"], "it waits for a new proof");
    // A document for milestone 1 (a new file), validated: sent to review.
    sqlx::query("UPDATE milestones SET proof_type = 'DOCUMENT' WHERE escrow_id = $1 AND idx = 1")
        .bind(d.escrow)
        .execute(&pool)
        .await
        .expect("document");
    let (doc, _) = upload(&pool, &store, d.provider, &d, 1, b"%PDF-1.4", "p2").await.expect("accepted");
    let (r, parent) = validate(&pool, &store, &d, doc).await;
    let out = succeeded(r);
    assert_eq!(
        (out["status"].as_str(), out["review_reasons"][0].as_str()),
        (Some("PENDING_REVIEW"), Some("DOCUMENT_PROOF"))
    );
    assert!(children(&pool, &parent).await.is_empty(), "no payout before a person decides");
    assert_eq!(d.milestone_statuses(&pool).await, vec!["PENDING_REVIEW", "WAITING"]);
    // The provider may not decide; the client approves: a payout job follows.
    assert_eq!(code(&decide(&pool, d.provider, doc, Decision::Approve).await), Some(ErrorCode::Forbidden));
    assert_eq!(code(&decide(&pool, d.client, doc, Decision::Approve).await), None);
    assert_eq!(d.milestone_statuses(&pool).await, vec!["APPROVED", "WAITING"]);
    let pays = payments(&pool, d.escrow).await;
    assert_eq!((pays.len(), pays[0].2), (1, dec("10.00")));
    assert_eq!(code(&decide(&pool, d.client, doc, Decision::Reject).await), Some(ErrorCode::ProofAlreadyDecided));
    let (r, _) = validate(&pool, &store, &d, doc).await;
    assert_eq!(succeeded(r)["status"], "APPROVED", "a validation run again changes nothing");
}
