//! The ops console (`/ops`) in headless Chromium: a second admin signs in
//! with a key typed into the page, sees a dead job this test made, retries
//! it and sees it succeed, and approves a SAKA adjustment another admin
//! requested, then reads `/docs`, both pages under their
//! Content-Security-Policy (a violation fails the test); screenshots go to
//! `target/console-screenshots/`. Needs
//! Chromium and playwright-core, which `cargo xtask test` installs and
//! passes in (`KOBATELA_CHROMIUM`, `KOBATELA_PLAYWRIGHT_CORE`), so it is
//! ignored by a plain `cargo test`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use e2e::env::eventually;
use e2e::scenario::{host_admin, person, shop};
use e2e::{Env, EnvOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and playwright-core: run by `cargo xtask test`"]
async fn an_operator_retries_a_dead_job_and_a_second_admin_approves_an_adjustment_in_the_console() -> anyhow::Result<()>
{
    let playwright =
        std::env::var("KOBATELA_PLAYWRIGHT_CORE").context("KOBATELA_PLAYWRIGHT_CORE (set by cargo xtask test)")?;
    let chromium = std::env::var("KOBATELA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut env = Env::with(EnvOptions::default().workers(0).var("JOB_MAX_ATTEMPTS", "2")).await?;
    let admin = env.admin();
    // A purchase that dies: its worker's rule panics on every attempt.
    env.start_worker_with("w0", &[("KOBATELA_FAILPOINTS", "rule.purchase=panic")]).await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let r = shop.beneficiary.client.job("/spend/purchases", "c1", shop.purchase_body("7.00", "USD"), 0).await?;
    let job = r.s("job_id");
    eventually(Duration::from_secs(30), || async {
        Ok((admin.receipt(&job, 0).await?.s("status") == "dead").then_some(()))
    })
    .await?;
    // The faulty worker is replaced by a healthy one: a retry will succeed.
    env.stop_worker("w0").await?;
    env.start_worker("w1").await?;
    // The second admin who approves is made on the host, before the request
    // (admin power made after a request does not count for it).
    let second = host_admin(&env, "ada").await?;
    // 600 grains need a second admin: the first admin asks.
    let member = person(&env, "sam", "beneficiary").await?;
    let asked = admin
        .job("/saka/adjustments", "adj-1", json!({"user_id": member.id, "amount": 600, "note": "console test"}), 20)
        .await?;
    assert_eq!(asked.s("status"), "succeeded", "{}", asked.text);
    let adjustment = asked.body["result"]["id"].as_str().context("the adjustment id")?.to_string();
    assert_eq!(asked.body["result"]["status"], "PENDING_APPROVAL", "{}", asked.text);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the workspace")?.to_path_buf();
    let shots = root.join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let out = tokio::time::timeout(
        Duration::from_secs(150),
        tokio::process::Command::new("node")
            .arg(root.join("tests/console/console.cjs"))
            .env("OPS_URL", &env.api_url)
            .env("OPS_KEY", &second.key)
            .env("DEAD_JOB_ID", &job)
            .env("ADJUSTMENT_ID", &adjustment)
            .env("SCREENSHOTS", &shots)
            .env("KOBATELA_PLAYWRIGHT_CORE", &playwright)
            .env("KOBATELA_CHROMIUM", &chromium)
            .output(),
    )
    .await
    .context("the browser test took over 150 s")??;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{said}");
    assert!(out.status.success(), "the browser test failed:\n{said}");

    // What the page did, seen through the API.
    let done = admin.receipt(&job, 0).await?;
    assert_eq!((done.s("status").as_str(), done.body["attempts"].as_i64()), ("succeeded", Some(1)), "{}", done.text);
    let adj = admin.get(&format!("/saka/adjustments/{adjustment}")).await?;
    assert_eq!((adj.s("status").as_str(), adj.s("approved_by")), ("APPLIED", second.id.clone()), "{}", adj.text);
    let wallet = admin.get(&format!("/saka/wallets/{}", member.id)).await?;
    assert_eq!(wallet.body["balance"], 600, "{}", wallet.text);
    for shot in [
        "01-sign-in.png",
        "02-dead-job.png",
        "03-retried-and-succeeded.png",
        "04-saka-pending.png",
        "05-approved.png",
        "06-docs.png",
    ] {
        let size = std::fs::metadata(shots.join(shot)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "screenshot {shot} missing or empty");
    }
    env.stop().await
}
