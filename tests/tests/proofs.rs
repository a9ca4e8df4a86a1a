//! Photo proofs end to end: real JPEG files with real EXIF uploaded over
//! HTTP, checked by the worker for place and time, paid through the PSP
//! simulator and settled by its signed webhook.

use std::time::Duration;

use chrono::Utc;
use e2e::env::eventually;
use e2e::jpeg::{PhotoSpec, jpeg, jpeg_without_exif, not_a_jpeg};
use e2e::scenario::{Deal, deal};
use e2e::{Env, EnvOptions, Reply};
use serde_json::json;

/// Abidjan's Plateau, the fence of the tests.
const SITE: (f64, f64) = (5.3200, -4.0170);

fn photo(seed: u64, gps: Option<(f64, f64)>, minutes_ago: i64) -> Vec<u8> {
    jpeg(&PhotoSpec { gps, gps_time: Some(Utc::now() - chrono::Duration::minutes(minutes_ago)), original: None, seed })
}

async fn funded(env: &Env, total: &str, milestones: &[(&str, &str)]) -> anyhow::Result<Deal> {
    let deal = deal(env, total).await?;
    for (i, (amount, kind)) in milestones.iter().enumerate() {
        let fence = (*kind == "PHOTO").then_some((SITE.0, SITE.1, 150.0));
        let r = deal.milestone(i as i32 + 1, amount, kind, fence).await?;
        anyhow::ensure!(r.status == 201, "milestone: {}", r.text);
    }
    let r = deal.deposit("fund", total).await?;
    anyhow::ensure!(r.body.pointer("/result/status") == Some(&json!("FUNDED")), "deposit: {}", r.text);
    Ok(deal)
}

async fn upload(deal: &Deal, key: &str, idx: i32, source: &str, file: Vec<u8>) -> anyhow::Result<Reply> {
    let r = deal.provider.client.upload_proof(key, &deal.escrow_id, idx, source, file, 20).await?;
    Ok(r)
}

async fn milestone_status(deal: &Deal, idx: usize) -> anyhow::Result<String> {
    let e = deal.escrow().await?;
    Ok(e.body["milestones"][idx - 1]["status"].as_str().unwrap_or("").to_string())
}

async fn wait_released(deal: &Deal, paid: &str) -> anyhow::Result<serde_json::Value> {
    eventually(Duration::from_secs(40), || async {
        let e = deal.escrow().await?;
        Ok((e.s("status") == "RELEASED" && e.s("paid_amount") == paid).then_some(e.body))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_photo_is_approved_paid_and_settled_by_the_webhook() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp()).await?;
    let deal = funded(&env, "100.00", &[("100.00", "PHOTO")]).await?;
    // 40 m from the centre of a 150 m fence, taken 10 minutes ago.
    let r = upload(&deal, "u1", 1, "app", photo(1, Some((SITE.0 + 0.00036, SITE.1)), 10)).await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("APPROVED")));
    let proof_id = r.s("proof_id");
    let p = deal.client.client.get(&format!("/proofs/{proof_id}")).await?;
    let d = p.body["distance_m"].as_f64().unwrap_or(-1.0);
    assert!((35.0..45.0).contains(&d), "distance {d}");
    assert!(p.body["captured_at"].is_string() && p.body["gps"]["lat"].is_number(), "{}", p.text);
    let e = wait_released(&deal, "100.00").await?;
    assert_eq!(e["milestones"][0]["status"], json!("PAID"));
    assert_eq!(e["payments"][0]["status"], json!("SETTLED"));
    assert!(e["payments"][0]["psp_ref"].as_str().is_some_and(|r| r.starts_with("sim_")));
    // The webhook came from the simulator, signed, and is stored once.
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM psp_webhook_events WHERE type = 'payment.settled'")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(events, 1);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_photo_is_rejected_with_its_code_and_the_milestone_keeps_waiting() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let deal = funded(&env, "100.00", &[("100.00", "PHOTO")]).await?;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("far", photo(2, Some((SITE.0 + 0.01, SITE.1)), 10), "GEOFENCE_VIOLATION"),
        ("stale", photo(3, Some(SITE), 121), "STALE_TIMESTAMP"),
        ("future", photo(4, Some(SITE), -3), "FUTURE_TIMESTAMP"),
        ("no-exif", jpeg_without_exif(5), "MISSING_EXIF_TIMESTAMP"),
        ("no-gps", photo(6, None, 5), "MISSING_GPS"),
        (
            "no-offset",
            jpeg(&PhotoSpec {
                gps: Some(SITE),
                gps_time: None,
                original: Some(((Utc::now() - chrono::Duration::minutes(5)).naive_utc(), "")),
                seed: 7,
            }),
            "MISSING_EXIF_TIMESTAMP",
        ),
        ("not-jpeg", not_a_jpeg(), "PROOF_UNREADABLE"),
    ];
    for (key, file, code) in cases {
        let r = upload(&deal, key, 1, "camera", file).await?;
        assert_eq!((r.s("status").as_str(), r.code().as_str()), ("failed", code), "{key}: {}", r.text);
        let p = deal.client.client.get(&format!("/proofs/{}", r.s("proof_id"))).await?;
        assert_eq!((p.s("status").as_str(), p.s("rejection_code").as_str()), ("REJECTED", code));
        assert_eq!(milestone_status(&deal, 1).await?, "WAITING", "{key}");
    }
    // A good photo with DateTimeOriginal and its offset (UTC+2 local time) passes.
    let local = (Utc::now() + chrono::Duration::hours(2) - chrono::Duration::minutes(3)).naive_utc();
    let r = upload(
        &deal,
        "offset",
        1,
        "camera",
        jpeg(&PhotoSpec { gps: Some(SITE), gps_time: None, original: Some((local, "+02:00")), seed: 8 }),
    )
    .await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("APPROVED")), "{}", r.text);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_source_goes_to_review_and_the_clients_approval_pays() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp()).await?;
    let deal = funded(&env, "60.00", &[("60.00", "PHOTO")]).await?;
    let r = upload(&deal, "u", 1, "whatsapp", photo(9, Some(SITE), 5)).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("PENDING_REVIEW")), "{}", r.text);
    assert_eq!(r.body.pointer("/result/review_reasons"), Some(&json!(["UNTRUSTED_SOURCE"])));
    assert_eq!(milestone_status(&deal, 1).await?, "PENDING_REVIEW");
    let proof = r.s("proof_id");
    // The provider cannot decide on their own proof.
    let d = deal
        .provider
        .client
        .job(&format!("/proofs/{proof}/decision"), "d0", json!({"decision": "approve"}), 20)
        .await?;
    assert_eq!(d.status, 403);
    let d =
        deal.client.client.job(&format!("/proofs/{proof}/decision"), "d1", json!({"decision": "maybe"}), 20).await?;
    assert_eq!(d.status, 422);
    let d = deal
        .client
        .client
        .job(&format!("/proofs/{proof}/decision"), "d2", json!({"decision": "approve", "note": "looks right"}), 20)
        .await?;
    assert_eq!(d.body.pointer("/result/status"), Some(&json!("APPROVED")), "{}", d.text);
    let d = env.admin().job(&format!("/proofs/{proof}/decision"), "d3", json!({"decision": "reject"}), 20).await?;
    assert_eq!(d.code(), "PROOF_ALREADY_DECIDED", "{}", d.text);
    wait_released(&deal, "60.00").await?;
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_milestones_are_paid_in_sequence_to_released() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp()).await?;
    let deal = funded(&env, "90.00", &[("30.00", "PHOTO"), ("30.00", "PHOTO"), ("30.00", "DOCUMENT")]).await?;
    // Milestone 2 before 1 is paid: refused at upload.
    let r = upload(&deal, "early", 2, "app", photo(10, Some(SITE), 5)).await?;
    assert_eq!((r.status, r.code().as_str()), (422, "SEQUENCE_ERROR"), "{}", r.text);
    let r = upload(&deal, "m9", 9, "app", photo(11, Some(SITE), 5)).await?;
    assert_eq!((r.status, r.code().as_str()), (404, "MILESTONE_NOT_FOUND"));
    let first = photo(12, Some(SITE), 5);
    let r = upload(&deal, "m1", 1, "app", first.clone()).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("APPROVED")), "{}", r.text);
    // The same file again is a duplicate, the same request again the same receipt.
    let again = upload(&deal, "m1", 1, "app", first.clone()).await?;
    assert_eq!(again.s("job_id"), r.s("job_id"));
    let dup = upload(&deal, "m1-dup", 1, "app", first).await?;
    assert_eq!((dup.status, dup.code().as_str()), (409, "PROOF_DUPLICATE"));
    eventually(Duration::from_secs(30), || async { Ok((milestone_status(&deal, 1).await? == "PAID").then_some(())) })
        .await?;
    // Milestone 1 is no longer waiting.
    let r = upload(&deal, "m1-again", 1, "app", photo(13, Some(SITE), 5)).await?;
    assert_eq!((r.status, r.code().as_str()), (409, "MILESTONE_NOT_WAITING"));
    let r = upload(&deal, "m2", 2, "camera", photo(14, Some(SITE), 5)).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("APPROVED")), "{}", r.text);
    eventually(Duration::from_secs(30), || async { Ok((milestone_status(&deal, 2).await? == "PAID").then_some(())) })
        .await?;
    // A document is always reviewed, then approved by support.
    let r = upload(&deal, "m3", 3, "app", b"%PDF-1.4 invoice".to_vec()).await?;
    assert_eq!(r.body.pointer("/result/review_reasons"), Some(&json!(["DOCUMENT_PROOF"])), "{}", r.text);
    let support = e2e::scenario::person(&env, "sue", "support").await?;
    let d = support
        .client
        .job(&format!("/proofs/{}/decision", r.s("proof_id")), "ok", json!({"decision": "approve"}), 20)
        .await?;
    assert_eq!(d.s("status"), "succeeded", "{}", d.text);
    let e = wait_released(&deal, "90.00").await?;
    assert!(e["milestones"].as_array().is_some_and(|ms| ms.iter().all(|m| m["status"] == json!("PAID"))));
    assert_eq!(e["payments"].as_array().map(Vec::len), Some(3));
    assert_eq!(e["balance"], json!("0.00"));
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_checked_before_anything_is_queued() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let deal = funded(&env, "10.00", &[("10.00", "PHOTO")]).await?;
    let jobs_before: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&env.pool).await?;
    // The client is not the provider; missing fields; not multipart.
    let r = deal.client.client.upload_proof("x", &deal.escrow_id, 1, "app", photo(20, Some(SITE), 5), 0).await?;
    assert_eq!(r.status, 403);
    let form = reqwest::multipart::Form::new().text("escrow_id", deal.escrow_id.clone());
    let r = deal
        .provider
        .client
        .send(
            reqwest::Client::new()
                .post(format!("{}/proofs", env.api_url))
                .bearer_auth(&deal.provider.key)
                .header("Idempotency-Key", "y")
                .multipart(form),
        )
        .await?;
    assert_eq!(r.status, 422, "{}", r.text);
    let fields: Vec<&str> =
        r.body["errors"].as_array().map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect()).unwrap_or_default();
    assert!(fields.contains(&"file") && fields.contains(&"milestone_idx") && fields.contains(&"source"), "{fields:?}");
    let r = deal.provider.client.post("/proofs", json!({"file": "x"})).await?;
    assert!(r.status == 400 || r.status == 415, "{}", r.text);
    let r = deal
        .provider
        .client
        .upload_proof("z", &uuid::Uuid::new_v4().to_string(), 1, "app", photo(21, Some(SITE), 5), 0)
        .await?;
    assert_eq!(r.code(), "ESCROW_NOT_FOUND");
    let jobs_after: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&env.pool).await?;
    assert_eq!(jobs_before, jobs_after);
    env.stop().await
}

/// Every file under the store, staging included.
fn files_on_disk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_leave_no_file_on_disk_and_an_accepted_one_is_stored_once() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().var("PROOF_MAX_BYTES", "100000")).await?;
    let root = std::path::PathBuf::from(env.var("STORAGE_DIR").unwrap_or_default());
    let deal = funded(&env, "20.00", &[("10.00", "DOCUMENT"), ("10.00", "DOCUMENT")]).await?;
    let doc = |n: u32| format!("%PDF-1.4 delivery note {n} {}", "x".repeat(50_000)).into_bytes();
    let stranger = e2e::scenario::person(&env, "stranger", "beneficiary").await?;
    let refusals: Vec<(Reply, u16, &str)> = vec![
        (upload(&deal, "r1", 1, "app", doc(1)).await?, 0, ""),
        (
            deal.provider.client.upload_proof("r2", &uuid::Uuid::new_v4().to_string(), 1, "app", doc(2), 20).await?,
            404,
            "ESCROW_NOT_FOUND",
        ),
        (stranger.client.upload_proof("r3", &deal.escrow_id, 1, "app", doc(3), 20).await?, 404, "ESCROW_NOT_FOUND"),
        (upload(&deal, "r4", 9, "app", doc(4)).await?, 404, "MILESTONE_NOT_FOUND"),
        (upload(&deal, "r5", 2, "app", doc(5)).await?, 422, "SEQUENCE_ERROR"),
        (upload(&deal, "r6", 1, "app", doc(6)).await?, 409, "MILESTONE_NOT_WAITING"),
        (upload(&deal, "r7", 1, "app", doc(1)).await?, 409, "PROOF_DUPLICATE"),
        (upload(&deal, "r8", 1, "app", vec![b'%'; 150_000]).await?, 413, "PAYLOAD_TOO_LARGE"),
        (upload(&deal, "r9", 1, "app\u{7}", doc(9)).await?, 422, "VALIDATION_ERROR"),
    ];
    let (accepted, refused) = refusals.split_at(1);
    assert_eq!(accepted[0].0.body.pointer("/result/status"), Some(&json!("PENDING_REVIEW")), "{}", accepted[0].0.text);
    let proofs: Vec<(String, i64)> =
        sqlx::query_as("SELECT storage_key, size_bytes FROM proofs").fetch_all(&env.pool).await?;
    assert_eq!(proofs.len(), 1);
    assert_eq!(proofs[0].1, doc(1).len() as i64);
    // On disk: the accepted file, once, with its bytes; nothing else, staging included.
    let files = files_on_disk(&root);
    assert_eq!(files, vec![root.join(&proofs[0].0)], "{} orphans: {files:?}", files.len() - 1);
    assert_eq!(std::fs::read(&files[0])?, doc(1));
    for (r, status, code) in refused {
        assert_eq!((r.status, r.code().as_str()), (*status, *code), "{}", r.text);
    }
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_two_file_parts_is_a_422_naming_file_and_stores_nothing() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let root = std::path::PathBuf::from(env.var("STORAGE_DIR").unwrap_or_default());
    let deal = funded(&env, "10.00", &[("10.00", "DOCUMENT")]).await?;
    let jobs_before: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&env.pool).await?;
    let part = |bytes: &[u8]| reqwest::multipart::Part::bytes(bytes.to_vec()).file_name("proof.pdf");
    // Which of the two would be the proof? A gateway may have scanned the other.
    let form = reqwest::multipart::Form::new()
        .text("escrow_id", deal.escrow_id.clone())
        .text("milestone_idx", "1")
        .text("source", "app")
        .part("file", part(b"%PDF-1.4 the delivery note"))
        .part("file", part(b"%PDF-1.4 something else entirely"));
    let r = deal
        .provider
        .client
        .send(
            reqwest::Client::new()
                .post(format!("{}/proofs", env.api_url))
                .bearer_auth(&deal.provider.key)
                .header("Idempotency-Key", "two-files")
                .multipart(form),
        )
        .await?;
    assert_eq!((r.status, r.code().as_str()), (422, "VALIDATION_ERROR"), "{}", r.text);
    let fields: Vec<&str> =
        r.body["errors"].as_array().map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect()).unwrap_or_default();
    assert_eq!(fields, ["file"], "{}", r.text);
    let proofs: i64 = sqlx::query_scalar("SELECT count(*) FROM proofs").fetch_one(&env.pool).await?;
    let jobs_after: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&env.pool).await?;
    assert_eq!((proofs, jobs_after), (0, jobs_before), "no proof, no job");
    assert_eq!(files_on_disk(&root), Vec::<std::path::PathBuf>::new(), "no file, staging included");
    assert_eq!(milestone_status(&deal, 1).await?, "WAITING");
    env.stop().await
}
