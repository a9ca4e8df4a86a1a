//! Proofs in an object store (issue 16): a private S3-compatible server
//! (`s3s-fs`) the test starts holds the photos; the api writes an accepted
//! upload there, a worker that has no path to the api's disk validates it
//! from there, retention deletes only what no proof references, and a store
//! that is killed, or hangs, mid-upload or mid-validation is a fast 503 at
//! the api and a retried job at the worker, with nothing left half-done.

use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use e2e::env::eventually;
use e2e::jpeg::{PhotoSpec, jpeg};
use e2e::scenario::{Deal, deal};
use e2e::{Env, EnvOptions, Reply};
use serde_json::json;

const SITE: (f64, f64) = (5.3200, -4.0170);

fn photo(seed: u64) -> Vec<u8> {
    let spec = PhotoSpec {
        gps: Some((SITE.0 + 0.0002, SITE.1)),
        gps_time: Some(Utc::now() - chrono::Duration::minutes(5)),
        original: None,
        seed,
    };
    jpeg(&spec)
}

async fn funded(env: &Env, milestones: usize) -> anyhow::Result<Deal> {
    let total = format!("{}.00", milestones * 10);
    let deal = deal(env, &total).await?;
    for i in 1..=milestones {
        let r = deal.milestone(i as i32, "10.00", "PHOTO", Some((SITE.0, SITE.1, 150.0))).await?;
        anyhow::ensure!(r.status == 201, "milestone: {}", r.text);
    }
    let r = deal.deposit("fund", &total).await?;
    anyhow::ensure!(r.body.pointer("/result/status") == Some(&json!("FUNDED")), "deposit: {}", r.text);
    Ok(deal)
}

async fn upload(deal: &Deal, key: &str, file: Vec<u8>, wait: u32) -> anyhow::Result<Reply> {
    deal.provider.client.upload_proof(key, &deal.escrow_id, 1, "app", file, wait).await
}

async fn count(env: &Env, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&env.pool).await?)
}

/// The bucket's objects under this test's prefix, without the prefix.
fn stored(env: &Env) -> Vec<String> {
    let Some(s3) = &env.s3 else { return Vec::new() };
    let prefix = format!("e2e-{}/", env.prefix.trim_start_matches("e2e-"));
    s3.objects().into_iter().filter_map(|o| o.strip_prefix(&prefix).map(str::to_string)).collect()
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { dirs.push(path) } else { out.push(path) }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_in_the_object_store_is_validated_by_a_worker_with_no_path_to_the_apis_disk() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().s3().psp()).await?;
    assert!(env.var("STORAGE_DIR").is_none(), "no process is given a local proof directory");
    let deal = funded(&env, 1).await?;
    let bytes = photo(1);
    let r = upload(&deal, "u1", bytes.clone(), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("APPROVED")), "the worker read it: {}", r.text);
    let key: String = sqlx::query_scalar("SELECT storage_key FROM proofs").fetch_one(&env.pool).await?;
    assert_eq!(stored(&env), vec![key.clone()], "the object, once, under its content address");
    let s3 = env.s3.as_ref().expect("s3");
    let object = s3.bucket_dir().join(format!("e2e-{}", env.prefix.trim_start_matches("e2e-"))).join(&key);
    assert_eq!(std::fs::read(object)?, bytes, "the bytes the client sent");
    // Nothing of it on the api's or the worker's own disk.
    for process in ["api", "worker-w0"] {
        let left = files_under(&env.tmp_dir(process));
        assert!(left.is_empty(), "{process} kept {left:?}");
    }
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_killed_or_hanging_mid_upload_is_a_fast_503_and_leaves_no_row_and_no_object() -> anyhow::Result<()> {
    let mut env = Env::with(EnvOptions::default().s3()).await?;
    let deal = funded(&env, 1).await?;
    let rows = "SELECT (SELECT count(*) FROM proofs) + (SELECT count(*) FROM jobs WHERE kind = 'proof_validation')";
    // Killed: connections refused.
    env.s3.as_mut().expect("s3").kill().await?;
    let started = Instant::now();
    let r = upload(&deal, "u1", photo(1), 0).await?;
    let took = started.elapsed();
    assert_eq!((r.status, r.code().as_str()), (503, "UNAVAILABLE"), "{}", r.text);
    assert!(r.is_problem(), "{}", r.text);
    assert!(took < Duration::from_secs(3), "a refused connection is a fast 503: {took:?}");
    assert_eq!(count(&env, rows).await?, 0, "no proof, no job");
    env.s3.as_mut().expect("s3").start_again().await?;
    assert!(stored(&env).is_empty());
    // Hanging (SIGSTOP: the connection is taken, nothing answers): a 503
    // bounded by the store's request timeout, not the crate's three minutes.
    env.s3.as_ref().expect("s3").pause().await?;
    let started = Instant::now();
    let r = upload(&deal, "u2", photo(2), 0).await?;
    let took = started.elapsed();
    env.s3.as_ref().expect("s3").resume().await?;
    assert_eq!((r.status, r.code().as_str()), (503, "UNAVAILABLE"), "{}", r.text);
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(count(&env, rows).await?, 0, "no proof, no job");
    // Back: the same upload under its key goes through, and is stored once.
    let r = upload(&deal, "u1", photo(1), 0).await?;
    assert_eq!(r.status, 202, "{}", r.text);
    let done = deal.provider.client.finished(&r.s("job_id"), 30).await?;
    assert_eq!(done.body.pointer("/result/status"), Some(&json!("APPROVED")), "{}", done.text);
    let key: String = sqlx::query_scalar("SELECT storage_key FROM proofs").fetch_one(&env.pool).await?;
    // The hung PUT may have landed once the store resumed; a row names only
    // the accepted one, and retention takes the other after a day.
    assert!(stored(&env).contains(&key), "{:?}", stored(&env));
    assert_eq!(count(&env, "SELECT count(*) FROM proofs").await?, 1);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_killed_mid_validation_retries_the_job_and_never_fails_the_proof() -> anyhow::Result<()> {
    let mut env = Env::with(EnvOptions::default().s3().workers(0)).await?;
    // The worker holds each validation 2 s inside its transaction, before it
    // reads the photo: the store dies in that window.
    env.start_worker_with("w0", &[("KOBATELA_FAILPOINTS", "rule.proof_validation=sleep:2000")]).await?;
    let deal = funded(&env, 1).await?;
    let r = upload(&deal, "u1", photo(1), 0).await?;
    assert_eq!(r.status, 202, "{}", r.text);
    let job = r.s("job_id");
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.s3.as_mut().expect("s3").kill().await?;
    let retried: (String, i32, String) = eventually(Duration::from_secs(20), || async {
        let row: (String, i32, Option<String>) =
            sqlx::query_as("SELECT status, attempts, last_error FROM jobs WHERE id = $1::uuid")
                .bind(&job)
                .fetch_one(&env.pool)
                .await?;
        Ok((row.1 >= 1).then(|| (row.0, row.1, row.2.unwrap_or_default())))
    })
    .await?;
    assert!(["queued", "running"].contains(&retried.0.as_str()), "retried, not ended: {retried:?}");
    assert!(retried.2.contains("proof store cannot be reached"), "{retried:?}");
    let proof: String = sqlx::query_scalar("SELECT status FROM proofs").fetch_one(&env.pool).await?;
    assert_eq!(proof, "PENDING", "never REJECTED for an outage");
    env.s3.as_mut().expect("s3").start_again().await?;
    let done = deal.provider.client.finished(&job, 40).await?;
    assert_eq!(done.body.pointer("/result/status"), Some(&json!("APPROVED")), "{}", done.text);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_only_old_objects_no_proof_references() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().s3().var("RETENTION_CRON", "*/2 * * * * *")).await?;
    let deal = funded(&env, 1).await?;
    let r = upload(&deal, "u1", photo(1), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("APPROVED")), "{}", r.text);
    let key: String = sqlx::query_scalar("SELECT storage_key FROM proofs").fetch_one(&env.pool).await?;
    let s3 = env.s3.as_ref().expect("s3");
    let base = s3.bucket_dir().join(format!("e2e-{}", env.prefix.trim_start_matches("e2e-")));
    // An orphan of a day and more (an upload whose commit failed after its
    // object was written), a fresh orphan, and the referenced proof made old.
    for orphan in ["proofs/00/old-orphan", "proofs/00/fresh-orphan"] {
        std::fs::create_dir_all(base.join("proofs/00"))?;
        std::fs::write(base.join(orphan), b"orphan")?;
    }
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    for old in ["proofs/00/old-orphan", key.as_str()] {
        std::fs::OpenOptions::new().write(true).open(base.join(old))?.set_modified(two_days_ago)?;
    }
    let kept = eventually(Duration::from_secs(30), || async {
        let objects = stored(&env);
        Ok((!objects.iter().any(|o| o.ends_with("old-orphan"))).then_some(objects))
    })
    .await?;
    let mut expected = vec!["proofs/00/fresh-orphan".to_string(), key];
    expected.sort();
    assert_eq!(kept, expected);
    env.stop().await
}
