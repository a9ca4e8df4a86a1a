//! `cargo xtask demo`: the product end to end, through its HTTP API only.
//!
//! A fresh `kobatela_demo` database, `api migrate`, then `api serve`, two
//! `worker`s and `psp-sim` on free ports with a random queue prefix and
//! random secrets; then the scenes below, one line per step and the receipt
//! of every job. Each step states what it must get back, and the demo stops
//! at the first step that gets something else ("expected … got …").
//!
//! The scenes: a sealed mandate spent at a merchant; an escrow paid on
//! photo proofs (real JPEG files with EXIF GPS, uploaded as multipart, one
//! outside the geofence; payouts through `psp-sim`, settled by its signed
//! webhooks, polled until the escrow is RELEASED); SAKA grains (harvest
//! limit, an adjustment approved by a second admin, the daily cap).
//!
//! A scene is a list of [`Step`]s; values a step saves (`alice.id`) fill the
//! `{alice.id}` placeholders of later paths, bodies and expected values.
//! Scenes go in [`scenes`].

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, Url};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::procs::{self, Binaries, Proc};
use crate::services::{Origin, Services, redact};
use crate::{Layout, Signals};

const DATABASE: &str = "kobatela_demo";
/// How long the demo follows a job that `Prefer: wait` did not see finish.
const JOB_DEADLINE: Duration = Duration::from_secs(60);

/// The scenes, in order.
fn scenes() -> Vec<Scene> {
    vec![mandates_and_purchases(), escrow_with_photo_proofs(), saka_grains()]
}

fn mandates_and_purchases() -> Scene {
    let purchase = |amount: &str| {
        json!({
            "sender_id": "{alice.id}", "beneficiary_id": "{bob.id}", "merchant_id": "{merchant.id}",
            "amount": amount, "currency": "USD",
        })
    };
    Scene {
        title: "A sealed mandate: alice funds 100.00 USD that bob may spend only on food",
        steps: vec![
            Step::post(
                "admin creates user alice",
                "admin.key",
                "/users",
                json!({"username": "alice", "email": "alice@example.com"}),
            )
            .save("alice.id", "/id"),
            Step::post(
                "admin creates user bob",
                "admin.key",
                "/users",
                json!({"username": "bob", "email": "bob@example.com"}),
            )
            .save("bob.id", "/id"),
            Step::post(
                "admin gives alice a sender key",
                "admin.key",
                "/api-keys",
                json!({"user_id": "{alice.id}", "role": "sender", "name": "demo alice"}),
            )
            .save("alice.key", "/key"),
            Step::post(
                "admin gives bob a beneficiary key",
                "admin.key",
                "/api-keys",
                json!({"user_id": "{bob.id}", "role": "beneficiary", "name": "demo bob"}),
            )
            .save("bob.key", "/key"),
            Step::post(
                "admin creates the category FOOD",
                "admin.key",
                "/spend/categories",
                json!({"code": "FOOD", "label": "Food"}),
            )
            .save("food.id", "/id"),
            Step::post(
                "admin creates the merchant Marché Central in FOOD",
                "admin.key",
                "/spend/merchants",
                json!({"name": "Marché Central", "category_id": "{food.id}"}),
            )
            .save("merchant.id", "/id"),
            Step::post(
                "admin allows bob to spend on FOOD",
                "admin.key",
                "/spend/allow",
                json!({"owner_id": "{bob.id}", "category_id": "{food.id}"}),
            )
            .field("/status", "added"),
            Step::post(
                "alice seals 100.00 USD to bob for 30 days",
                "alice.key",
                "/mandates",
                json!({
                    "sender_id": "{alice.id}", "beneficiary_id": "{bob.id}", "total_amount": "100.00",
                    "currency": "USD", "expires_at": "{in_30_days}",
                }),
            )
            .field("/status", "ACTIVE")
            .save("mandate.id", "/id"),
            Step::job("bob buys for 30.00 at Marché Central", "bob.key", "/spend/purchases", purchase("30.00")),
            Step::job("bob buys for 50.00 at Marché Central", "bob.key", "/spend/purchases", purchase("50.00")),
            Step::job("bob tries 40.00 with 20.00 left", "bob.key", "/spend/purchases", purchase("40.00"))
                .expect(Expect::Failed("MANDATE_EXHAUSTED")),
            Step::job("bob buys for the last 20.00", "bob.key", "/spend/purchases", purchase("20.00")),
            Step::get("bob reads the mandate", "bob.key", "/mandates/{mandate.id}")
                .field("/status", "CONSUMED")
                .field("/spent_amount", "100.00")
                .field("/remaining_amount", "0.00"),
            Step::job("alice tries to spend bob's mandate herself", "alice.key", "/spend/purchases", purchase("5.00"))
                .expect(Expect::Refused(&["FORBIDDEN", "MANDATE_REQUIRED"])),
        ],
    }
}

/// The building site of the escrow scene: Abidjan's Plateau, and the radius
/// of both milestones' geofence.
const SITE_LAT: f64 = 5.3200;
const SITE_LNG: f64 = -4.0170;
const SITE_RADIUS_M: f64 = 150.0;
/// Metres per degree of latitude on the 6,371 km sphere the API uses.
const METRES_PER_DEGREE: f64 = 6_371_000.0 * std::f64::consts::PI / 180.0;
/// How long a polling step may wait for its fields, and how often it looks.
const POLL_DEADLINE: Duration = Duration::from_secs(40);
const POLL_EVERY: Duration = Duration::from_millis(500);

fn escrow_with_photo_proofs() -> Scene {
    let fence = json!({"lat": SITE_LAT, "lng": SITE_LNG, "radius_m": SITE_RADIUS_M});
    let milestone = |idx: u32, label: &str, amount: &str| json!({"idx": idx, "label": label, "amount": amount, "proof_type": "PHOTO", "geofence": fence});
    let upload = |milestone_idx, photo| Upload { escrow: "{escrow.id}", milestone_idx, source: "camera", photo };
    Scene {
        title: "An escrow paid on photo proofs: alice hires bob for 300.00 USD, two fenced milestones on a site in Abidjan",
        steps: vec![
            Step::post(
                "alice opens an escrow of 300.00 USD for bob",
                "alice.key",
                "/escrows",
                json!({
                    "client_id": "{alice.id}", "provider_id": "{bob.id}", "amount_total": "300.00",
                    "currency": "USD", "release_conditions": {"milestones": "a geotagged photo of each"},
                    "deadline_at": "{in_30_days}",
                }),
            )
            .field("/status", "DRAFT")
            .save("escrow.id", "/id"),
            Step::post(
                "alice adds milestone 1: foundations, 120.00, PHOTO",
                "alice.key",
                "/escrows/{escrow.id}/milestones",
                milestone(1, "foundations", "120.00"),
            )
            .field("/status", "WAITING"),
            Step::post(
                "alice adds milestone 2: roof, 180.00, PHOTO",
                "alice.key",
                "/escrows/{escrow.id}/milestones",
                milestone(2, "roof", "180.00"),
            )
            .field("/status", "WAITING"),
            Step::job(
                "alice deposits 300.00",
                "alice.key",
                "/escrows/{escrow.id}/deposit",
                json!({"amount": "300.00"}),
            )
            .field("/result/status", "FUNDED")
            .field("/result/balance", "300.00"),
            Step::upload(
                "bob uploads a photo of the foundations",
                "bob.key",
                upload(1, Photo { seed: 1, north_m: 40.0, minutes_ago: 10 }),
            )
            .field("/result/status", "APPROVED")
            .save("proof1.id", "/proof_id"),
            Step::get("alice reads the proof", "alice.key", "/proofs/{proof1.id}").field("/status", "APPROVED"),
            Step::poll("the simulator's webhook settles the payout of 120.00", "alice.key", "/escrows/{escrow.id}")
                .field("/milestones/0/status", "PAID")
                .field("/payments/0/status", "SETTLED")
                .field("/paid_amount", "120.00")
                .watch("/status")
                .save("payment1.id", "/payments/0/id"),
            Step::get("bob reads his payment", "bob.key", "/payments/{payment1.id}")
                .field("/status", "SETTLED")
                .field("/amount", "120.00"),
            Step::upload(
                "bob uploads a roof photo taken 1 km away",
                "bob.key",
                upload(2, Photo { seed: 2, north_m: 1_000.0, minutes_ago: 8 }),
            )
            .expect(Expect::Failed("GEOFENCE_VIOLATION"))
            .save("proof2.id", "/proof_id"),
            Step::get("alice reads the rejected proof", "alice.key", "/proofs/{proof2.id}")
                .field("/status", "REJECTED")
                .field("/rejection_code", "GEOFENCE_VIOLATION"),
            Step::get("milestone 2 still waits for a proof", "alice.key", "/escrows/{escrow.id}")
                .field("/status", "FUNDED")
                .field("/milestones/1/status", "WAITING")
                .field("/balance", "180.00"),
            Step::upload(
                "bob uploads a roof photo taken on the site",
                "bob.key",
                upload(2, Photo { seed: 3, north_m: -35.0, minutes_ago: 5 }),
            )
            .field("/result/status", "APPROVED"),
            Step::poll("the second payout settles and the escrow is RELEASED", "alice.key", "/escrows/{escrow.id}")
                .field("/status", "RELEASED")
                .field("/milestones/1/status", "PAID")
                .field("/payments/1/status", "SETTLED")
                .field("/paid_amount", "300.00")
                .field("/balance", "0.00"),
            Step::sim_get("psp-sim: its signed webhooks, both delivered", "/sim/webhooks")
                .field("/0/type", "payment.settled")
                .field("/0/delivered", "true")
                .field("/1/type", "payment.settled")
                .field("/1/delivered", "true"),
        ],
    }
}

fn saka_grains() -> Scene {
    let harvest = || json!({"user_id": "{bob.id}", "reason": "CONTENT_READ"});
    let adjust = |amount: u32, note: &str| json!({"user_id": "{bob.id}", "amount": amount, "note": note});
    Scene {
        title: "SAKA grains: bob harvests to the daily limit, a large adjustment needs a second admin, the daily cap holds",
        steps: vec![
            Step::post(
                "admin creates user root2",
                "admin.key",
                "/users",
                json!({"username": "root2", "email": "root2@example.com"}),
            )
            .save("root2.id", "/id"),
            Step::post(
                "admin gives root2 an admin key",
                "admin.key",
                "/api-keys",
                json!({"user_id": "{root2.id}", "role": "admin", "name": "demo second admin"}),
            )
            .save("root2.key", "/key"),
            Step::job("admin harvests CONTENT_READ for bob (1 of 3)", "admin.key", "/saka/harvest", harvest())
                .field("/result/amount", "10"),
            Step::job("admin harvests CONTENT_READ for bob (2 of 3)", "admin.key", "/saka/harvest", harvest())
                .field("/result/amount", "10"),
            Step::job("admin harvests CONTENT_READ for bob (3 of 3)", "admin.key", "/saka/harvest", harvest())
                .field("/result/amount", "10"),
            Step::job("a 4th CONTENT_READ today credits nothing", "admin.key", "/saka/harvest", harvest())
                .field("/result/credited", "0")
                .field("/result/reason", "DAILY_LIMIT"),
            Step::get("bob reads his wallet", "bob.key", "/saka/wallets/{bob.id}")
                .field("/balance", "30")
                .field("/total_harvested", "30"),
            Step::job(
                "admin grants bob 600: above 500, pending",
                "admin.key",
                "/saka/adjustments",
                adjust(600, "community award"),
            )
            .field("/result/status", "PENDING_APPROVAL")
            .save("adjustment.id", "/result/id"),
            Step::job(
                "admin tries to approve their own request",
                "admin.key",
                "/saka/adjustments/{adjustment.id}/approve",
                json!({}),
            )
            .expect(Expect::Refused(&["SAKA_SELF_APPROVAL"])),
            Step::job("root2 approves the 600", "root2.key", "/saka/adjustments/{adjustment.id}/approve", json!({}))
                .field("/result/status", "APPLIED")
                .field("/result/approved_by", "{root2.id}"),
            Step::job("admin grants bob 500 more: 1,100 today", "admin.key", "/saka/adjustments", adjust(500, "bonus"))
                .expect(Expect::Failed("SAKA_DAILY_CAP_REACHED")),
            Step::job("admin grants bob 400: exactly the cap", "admin.key", "/saka/adjustments", adjust(400, "bonus"))
                .field("/result/status", "APPLIED"),
            Step::get("bob reads his wallet", "bob.key", "/saka/wallets/{bob.id}")
                .field("/balance", "1030")
                .field("/manual_adjust_today", "1000"),
        ],
    }
}

pub struct Scene {
    title: &'static str,
    steps: Vec<Step>,
}

/// What a step must get back.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// This HTTP status.
    Status(u16),
    /// A job whose receipt ends `succeeded`.
    Succeeded,
    /// A job whose receipt ends `failed` with this error code.
    Failed(&'static str),
    /// A refusal with one of these codes, either straight from the API (a
    /// 4xx problem) or as a `failed` receipt.
    Refused(&'static [&'static str]),
}

/// Who a step talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The API, with the step's key.
    Api,
    /// The PSP simulator's own `/sim/*` views, without a key.
    PspSim,
}

/// A proof upload: `POST /proofs` as multipart/form-data with a real JPEG
/// made when the step runs (its EXIF GPS time is relative to now).
#[derive(Clone, Copy, Debug)]
struct Upload {
    /// The escrow id, as a template (`{escrow.id}`).
    escrow: &'static str,
    milestone_idx: u32,
    source: &'static str,
    photo: Photo,
}

/// Where and when the photo of an upload was taken, for its EXIF.
#[derive(Clone, Copy, Debug)]
struct Photo {
    /// Makes each file distinct (the API refuses a file used twice).
    seed: u64,
    /// Metres north (negative: south) of the site's centre.
    north_m: f64,
    /// Minutes before the upload, in the EXIF GPS time (UTC).
    minutes_ago: i64,
}

impl Photo {
    /// The JPEG file and one line saying what its EXIF holds.
    fn file(&self, now: chrono::DateTime<chrono::Utc>) -> (Vec<u8>, String) {
        let (lat, lng) = (SITE_LAT + self.north_m / METRES_PER_DEGREE, SITE_LNG);
        let taken = now - chrono::Duration::minutes(self.minutes_ago);
        let file = e2e::jpeg::jpeg(&e2e::jpeg::PhotoSpec {
            gps: Some((lat, lng)),
            gps_time: Some(taken),
            original: None,
            seed: self.seed,
        });
        let about = format!(
            "JPEG of {} bytes, EXIF GPS {lat:.6}, {lng:.6} ({:.0} m {} of the fence centre, radius {SITE_RADIUS_M:.0} m), GPS time {} ({} min ago)",
            file.len(),
            self.north_m.abs(),
            if self.north_m < 0.0 { "south" } else { "north" },
            taken.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.minutes_ago,
        );
        (file, about)
    }
}

/// One HTTP call of a scene. Strings in `path`, `body`, the upload's
/// escrow and the expected field values may hold `{name}` placeholders for
/// values saved by earlier steps.
pub struct Step {
    title: &'static str,
    /// The saved value holding the API key to call with (unused for the
    /// simulator).
    key: &'static str,
    target: Target,
    method: Method,
    path: &'static str,
    body: Option<Value>,
    /// A proof upload instead of a JSON body.
    upload: Option<Upload>,
    /// A job endpoint: sent with `Idempotency-Key` and `Prefer: wait=10`,
    /// its receipt followed until the job ends.
    job: bool,
    /// A GET repeated until the fields hold (or [`POLL_DEADLINE`] passes),
    /// for what settles later, like a payout through the PSP's webhook.
    poll: bool,
    expect: Expect,
    /// JSON pointer and the value it must hold (in the receipt for a job).
    fields: Vec<(&'static str, &'static str)>,
    /// More JSON pointers a polling step shows while it waits.
    watch: Vec<&'static str>,
    /// Name and JSON pointer of values to keep for later steps.
    save: Vec<(&'static str, &'static str)>,
}

impl Step {
    fn post(title: &'static str, key: &'static str, path: &'static str, body: Value) -> Self {
        Self {
            title,
            key,
            target: Target::Api,
            method: Method::POST,
            path,
            body: Some(body),
            upload: None,
            job: false,
            poll: false,
            expect: Expect::Status(201),
            fields: Vec::new(),
            watch: Vec::new(),
            save: Vec::new(),
        }
    }

    fn get(title: &'static str, key: &'static str, path: &'static str) -> Self {
        Self {
            method: Method::GET,
            body: None,
            expect: Expect::Status(200),
            ..Self::post(title, key, path, Value::Null)
        }
    }

    fn job(title: &'static str, key: &'static str, path: &'static str, body: Value) -> Self {
        Self { job: true, expect: Expect::Succeeded, ..Self::post(title, key, path, body) }
    }

    /// A proof upload, a job.
    fn upload(title: &'static str, key: &'static str, upload: Upload) -> Self {
        Self { body: None, upload: Some(upload), ..Self::job(title, key, "/proofs", Value::Null) }
    }

    /// A GET repeated until its fields hold.
    fn poll(title: &'static str, key: &'static str, path: &'static str) -> Self {
        Self { poll: true, ..Self::get(title, key, path) }
    }

    /// A GET of the PSP simulator's own views.
    fn sim_get(title: &'static str, path: &'static str) -> Self {
        Self { target: Target::PspSim, ..Self::get(title, "", path) }
    }

    fn watch(mut self, pointer: &'static str) -> Self {
        self.watch.push(pointer);
        self
    }

    fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    fn field(mut self, pointer: &'static str, value: &'static str) -> Self {
        self.fields.push((pointer, value));
        self
    }

    fn save(mut self, name: &'static str, pointer: &'static str) -> Self {
        self.save.push((name, pointer));
        self
    }
}

/// Runs the demo; everything it started is stopped before it returns.
pub async fn run(layout: &Layout, services: &Services, signals: &mut Signals) -> Result<()> {
    let binaries = procs::build_binaries(layout, signals).await?;
    let database = crate::services::fresh_database(&services.postgres, DATABASE).await?;
    let logs = layout.logs();
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let setup = Setup::new(&database, services)?;
    println!("database: {} (fresh)", redact(&database));
    println!(
        "api: {}  psp-sim: http://127.0.0.1:{}  queue prefix: {}",
        setup.api_base, setup.psp_port, setup.queue_prefix
    );

    println!("migrating: api migrate");
    procs::run_to_end(
        "api migrate",
        tokio::process::Command::new(&binaries.api).arg("migrate").envs(setup.api_env()),
        &logs.join("api-migrate.log"),
        Duration::from_secs(120),
    )
    .await?;

    let mut fleet: Vec<Proc> = Vec::new();
    let outcome = tokio::select! {
        outcome = start_and_walk(&mut fleet, &binaries, &setup, &logs) => outcome,
        name = signals.recv() => Err(anyhow!("interrupted by {name}")),
    };
    println!("stopping api, workers and psp-sim");
    procs::stop_all(fleet).await;
    println!("logs: {}", logs.display());
    if outcome.is_ok() && !matches!(services.postgres_origin, Origin::Private(_)) {
        println!("the database {DATABASE} is left for a look; the next demo recreates it");
    }
    outcome
}

/// Ports, secrets and environments of one demo run.
struct Setup {
    api_base: String,
    api_port: u16,
    psp_port: u16,
    queue_prefix: String,
    admin_key: String,
    common: Vec<(String, String)>,
    webhook_secret: String,
}

impl Setup {
    fn new(database: &Url, services: &Services) -> Result<Self> {
        let api_port = procs::free_port()?;
        let psp_port = procs::free_port()?;
        let queue_prefix = format!("demo-{}", crate::services::random_text(8).to_lowercase());
        let admin_key = crate::services::random_text(40);
        let webhook_secret = crate::services::random_text(32);
        let common = [
            ("DATABASE_URL", database.to_string()),
            ("REDIS_URL", services.redis.to_string()),
            ("PORT", api_port.to_string()),
            ("QUEUE_PREFIX", queue_prefix.clone()),
            ("BOOTSTRAP_ADMIN_KEY", admin_key.clone()),
            ("PSP_WEBHOOK_SECRETS", webhook_secret.clone()),
            ("PSP_BASE_URL", format!("http://127.0.0.1:{psp_port}")),
            ("LOG_FORMAT", "json".to_string()),
            ("RELAY_EVERY_SECS", "1".to_string()),
            ("JOB_RELAY_AFTER_SECS", "3".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Self {
            api_base: format!("http://127.0.0.1:{api_port}"),
            api_port,
            psp_port,
            queue_prefix,
            admin_key,
            common,
            webhook_secret,
        })
    }

    fn api_env(&self) -> Vec<(String, String)> {
        self.common.clone()
    }

    fn worker_env(&self, name: &str) -> Vec<(String, String)> {
        let mut env = self.common.clone();
        env.push(("WORKER_NAME".to_string(), name.to_string()));
        env
    }

    fn psp_sim_env(&self) -> Vec<(String, String)> {
        [
            ("PSP_SIM_PORT", self.psp_port.to_string()),
            ("PSP_SIM_WEBHOOK_URL", format!("http://127.0.0.1:{}/psp/webhook", self.api_port)),
            ("PSP_WEBHOOK_SECRETS", self.webhook_secret.clone()),
            ("LOG_FORMAT", "json".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Starts api, psp-sim and two workers into `fleet`, waits until they are
/// up, then walks the scenes.
async fn start_and_walk(
    fleet: &mut Vec<Proc>,
    binaries: &Binaries,
    setup: &Setup,
    logs: &std::path::Path,
) -> Result<()> {
    let api = fleet_push(fleet, procs::spawn("api", &binaries.api, &["serve"], &setup.api_env(), logs)?);
    println!("started api (pid {}), waiting for /health", pid_text(api));
    api.wait_http_ok(&format!("{}/health", setup.api_base)).await?;

    let psp = fleet_push(fleet, procs::spawn("psp-sim", &binaries.psp_sim, &[], &setup.psp_sim_env(), logs)?);
    println!("started psp-sim (pid {}), waiting for /health", pid_text(psp));
    psp.wait_http_ok(&format!("http://127.0.0.1:{}/health", setup.psp_port)).await?;

    for n in 1..=2 {
        let name = format!("demo-worker-{n}");
        let worker = fleet_push(fleet, procs::spawn(&name, &binaries.worker, &[], &setup.worker_env(&name), logs)?);
        println!("started {name} (pid {})", pid_text(worker));
    }

    let api = fleet.first_mut().context("the api process is gone")?;
    println!("waiting for the api's /ready");
    api.wait_http_ok(&format!("{}/ready", setup.api_base)).await?;
    for proc in fleet.iter_mut() {
        if let Some(status) = proc.exited()? {
            bail!("{} exited ({status})\n{}", proc.name(), proc.log_tail());
        }
    }

    let mut walk = Walk::new(setup)?;
    for scene in scenes() {
        println!("\n== {}", scene.title);
        for step in &scene.steps {
            if let Err(e) = walk.step(step).await {
                // A step that fails because a process died says so.
                let exited = procs::report_exited(fleet);
                bail!("{e:#}{exited}");
            }
        }
    }
    println!("\nthe demo went as expected");
    Ok(())
}

fn fleet_push(fleet: &mut Vec<Proc>, proc: Proc) -> &mut Proc {
    fleet.push(proc);
    let last = fleet.len() - 1;
    &mut fleet[last]
}

fn pid_text(proc: &Proc) -> String {
    proc.pid().map(|p| p.to_string()).unwrap_or_else(|| "?".to_string())
}

/// The state of a walk through the scenes: saved values, step count.
struct Walk {
    http: reqwest::Client,
    base: String,
    psp_base: String,
    run: String,
    vars: HashMap<String, String>,
    count: usize,
}

/// What came back from one step: the HTTP status and the JSON body (for a
/// job, the final receipt when the job ended).
struct Answer {
    status: u16,
    body: Value,
}

impl Walk {
    fn new(setup: &Setup) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(45))
            .build()
            .context("building an HTTP client")?;
        let in_30_days =
            (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let vars =
            HashMap::from([("admin.key".to_string(), setup.admin_key.clone()), ("in_30_days".to_string(), in_30_days)]);
        Ok(Self {
            http,
            base: setup.api_base.clone(),
            psp_base: format!("http://127.0.0.1:{}", setup.psp_port),
            run: setup.queue_prefix.clone(),
            vars,
            count: 0,
        })
    }

    async fn step(&mut self, step: &Step) -> Result<()> {
        self.count += 1;
        let n = self.count;
        let path = self.fill(step.path)?;
        let fields =
            step.fields.iter().map(|(pointer, want)| Ok((*pointer, self.fill(want)?))).collect::<Result<Vec<_>>>()?;
        let key = match step.target {
            Target::Api => Some(self.var(step.key)?.to_string()),
            Target::PspSim => None,
        };
        let context = || format!("step {n} ({}): {} {path}", step.title, step.method);

        let mut photo = None;
        let answer = if step.poll {
            println!(
                "{n:>2}. {:<52} {} {path} (polling, up to {} s)",
                step.title,
                step.method,
                POLL_DEADLINE.as_secs()
            );
            self.poll(step, &path, key.as_deref(), &fields).await.with_context(context)?
        } else {
            let mut request = self.request(step, &path, key.as_deref());
            if step.job {
                request =
                    request.header("Idempotency-Key", format!("{}-step-{n}", self.run)).header("Prefer", "wait=10");
            }
            if let Some(body) = &step.body {
                request = request.json(&self.fill_json(body)?);
            }
            if let Some(upload) = &step.upload {
                let (form, about) = self.form(upload)?;
                request = request.multipart(form);
                photo = Some(about);
            }
            let mut answer = self.send(request).await.with_context(context)?;
            if step.job && is_receipt(&answer.body) {
                answer = self
                    .follow(answer, key.as_deref())
                    .await
                    .with_context(|| format!("step {n} ({}): following the job", step.title))?;
            }
            answer
        };

        let result = summary(&answer, step, &self.saved_preview(step, &answer));
        match step.poll {
            true => println!("    -> {result}"),
            false => println!("{n:>2}. {:<52} {} {path} -> {result}", step.title, step.method),
        }
        if let Some(photo) = photo {
            println!("    photo: {photo}");
        }
        if step.job && is_receipt(&answer.body) {
            println!("    receipt {}", answer.body);
        } else if step.method == Method::GET || answer.status >= 400 {
            println!("    {}", answer.body);
        }

        check(step, &answer, &fields).map_err(|expected| {
            let within = match step.poll {
                true => format!(" within {} s", POLL_DEADLINE.as_secs()),
                false => String::new(),
            };
            anyhow!("step {n} ({}): expected {expected}{within}, got {}", step.title, describe(&answer))
        })?;
        for (name, pointer) in &step.save {
            let value = text_at(&answer.body, pointer)
                .with_context(|| format!("step {n} ({}): the answer has no {pointer} to save as {name}", step.title))?;
            self.vars.insert(name.to_string(), value);
        }
        Ok(())
    }

    /// The request of a step, without its body: to the API with the key,
    /// or to the simulator.
    fn request(&self, step: &Step, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let base = match step.target {
            Target::Api => &self.base,
            Target::PspSim => &self.psp_base,
        };
        let request = self.http.request(step.method.clone(), format!("{base}{path}"));
        match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// The multipart form of a proof upload, with a photo made now; and
    /// what the photo's EXIF says.
    fn form(&self, upload: &Upload) -> Result<(reqwest::multipart::Form, String)> {
        let (file, about) = upload.photo.file(chrono::Utc::now());
        let part = reqwest::multipart::Part::bytes(file)
            .file_name(format!("proof-{}.jpg", upload.photo.seed))
            .mime_str("image/jpeg")
            .context("the JPEG part")?;
        let form = reqwest::multipart::Form::new()
            .text("escrow_id", self.fill(upload.escrow)?)
            .text("milestone_idx", upload.milestone_idx.to_string())
            .text("source", upload.source)
            .part("file", part);
        Ok((form, about))
    }

    /// Repeats a GET until the step's expectation and fields hold or
    /// [`POLL_DEADLINE`] passes; prints what it sees each time it changes.
    /// The last answer either way.
    async fn poll(&self, step: &Step, path: &str, key: Option<&str>, fields: &[(&str, String)]) -> Result<Answer> {
        let start = Instant::now();
        let mut shown = String::new();
        let mut pointers: Vec<&str> = fields.iter().map(|(pointer, _)| *pointer).collect();
        pointers.extend(step.watch.iter().copied());
        loop {
            let answer = self.send(self.request(step, path, key)).await?;
            let done = check(step, &answer, fields).is_ok();
            let seen = match answer.status {
                200 => pointers
                    .iter()
                    .map(|p| {
                        let value = text_at(&answer.body, p).unwrap_or_else(|| "-".into());
                        format!("{}={value}", p.trim_start_matches('/'))
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => describe(&answer),
            };
            if seen != shown {
                println!("    {:>5.1} s  {seen}", start.elapsed().as_secs_f64());
                shown = seen;
            }
            if done || start.elapsed() >= POLL_DEADLINE {
                return Ok(answer);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer> {
        let response = request.send().await.map_err(|e| anyhow!("{}", e.without_url()))?;
        let status = response.status().as_u16();
        let text = response.text().await.context("reading the answer")?;
        let body = match text.trim() {
            "" => Value::Null,
            trimmed => serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(text.clone())),
        };
        Ok(Answer { status, body })
    }

    /// Follows a receipt with `GET /jobs/{id}` and `Prefer: wait=10` until
    /// the job ends or [`JOB_DEADLINE`] passes. Fields the first answer had
    /// beside the receipt's (a proof's `proof_id`) are kept.
    async fn follow(&self, mut answer: Answer, key: Option<&str>) -> Result<Answer> {
        let deadline = Instant::now() + JOB_DEADLINE;
        let first = answer.body.clone();
        while !is_terminal(&answer.body) {
            if Instant::now() >= deadline {
                bail!(
                    "the job is still {} after {} s",
                    text_at(&answer.body, "/status").unwrap_or_default(),
                    JOB_DEADLINE.as_secs()
                );
            }
            let job_id = text_at(&answer.body, "/job_id").context("the receipt has no job_id")?;
            let mut request = self.http.get(format!("{}/jobs/{job_id}", self.base)).header("Prefer", "wait=10");
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            answer = self.send(request).await?;
            if !is_receipt(&answer.body) {
                bail!("GET /jobs/{job_id} answered {}", describe(&answer));
            }
        }
        if let (Some(first), Some(last)) = (first.as_object(), answer.body.as_object_mut()) {
            for (name, value) in first {
                last.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
        Ok(answer)
    }

    fn var(&self, name: &str) -> Result<&str> {
        self.vars.get(name).map(String::as_str).with_context(|| format!("no saved value named `{name}`"))
    }

    /// Replaces each `{name}` with the saved value.
    fn fill(&self, template: &str) -> Result<String> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('}').with_context(|| format!("unclosed {{ in `{template}`"))?;
            out.push_str(self.var(&after[..end])?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn fill_json(&self, value: &Value) -> Result<Value> {
        Ok(match value {
            Value::String(s) => Value::String(self.fill(s)?),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.fill_json(v)).collect::<Result<_>>()?),
            Value::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), self.fill_json(v)?))).collect::<Result<_>>()?)
            }
            other => other.clone(),
        })
    }

    /// `name=value` for each value the step saves; secrets shown by prefix.
    fn saved_preview(&self, step: &Step, answer: &Answer) -> String {
        step.save
            .iter()
            .filter_map(|(name, pointer)| {
                let value = text_at(&answer.body, pointer)?;
                let shown = match name.ends_with(".key") {
                    true => format!("{}…", value.chars().take(8).collect::<String>()),
                    false => value,
                };
                Some(format!("{name}={shown}"))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn is_receipt(body: &Value) -> bool {
    body.get("job_id").is_some() && body.get("status").is_some()
}

fn is_terminal(receipt: &Value) -> bool {
    matches!(receipt.get("status").and_then(Value::as_str), Some("succeeded" | "failed" | "dead"))
}

/// A string or number at a JSON pointer, as text.
fn text_at(body: &Value, pointer: &str) -> Option<String> {
    match body.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The problem of an answer: the `error` of a receipt, or the body of a
/// 4xx/5xx answer.
fn problem(answer: &Answer) -> Option<&Value> {
    match is_receipt(&answer.body) {
        true => answer.body.get("error").filter(|e| !e.is_null()),
        false => (answer.status >= 400).then_some(&answer.body),
    }
}

fn error_code(answer: &Answer) -> Option<String> {
    problem(answer).and_then(|p| text_at(p, "/code"))
}

/// Ok, or what was expected instead. `fields` are the step's, filled.
fn check(step: &Step, answer: &Answer, fields: &[(&str, String)]) -> Result<(), String> {
    let receipt_status = text_at(&answer.body, "/status").filter(|_| is_receipt(&answer.body));
    let code = error_code(answer);
    let ok = match step.expect {
        Expect::Status(status) => answer.status == status,
        Expect::Succeeded => receipt_status.as_deref() == Some("succeeded"),
        Expect::Failed(want) => receipt_status.as_deref() == Some("failed") && code.as_deref() == Some(want),
        Expect::Refused(codes) => {
            let refused = receipt_status.as_deref() == Some("failed") || (400..500).contains(&answer.status);
            refused && code.as_deref().is_some_and(|c| codes.contains(&c))
        }
    };
    if !ok {
        return Err(match step.expect {
            Expect::Status(status) => format!("HTTP {status}"),
            Expect::Succeeded => "a receipt with status succeeded".to_string(),
            Expect::Failed(code) => format!("a receipt with status failed and error code {code}"),
            Expect::Refused(codes) => format!("a refusal with code {}", codes.join(" or ")),
        });
    }
    let wrong: Vec<String> = fields
        .iter()
        .filter(|(pointer, want)| text_at(&answer.body, pointer).as_deref() != Some(want.as_str()))
        .map(|(pointer, want)| format!("{pointer} = {want}"))
        .collect();
    if !wrong.is_empty() {
        return Err(wrong.join(", "));
    }
    Ok(())
}

/// The one-line result of a step.
fn summary(answer: &Answer, step: &Step, saved: &str) -> String {
    let mut line = answer.status.to_string();
    if step.job && is_receipt(&answer.body) {
        let id = text_at(&answer.body, "/job_id").unwrap_or_default();
        let status = text_at(&answer.body, "/status").unwrap_or_default();
        line.push_str(&format!(" job {id} {status}"));
    }
    if let Some(code) = error_code(answer) {
        line.push_str(&format!(" {code}"));
        if let Some(detail) = problem(answer).and_then(|p| text_at(p, "/detail")) {
            line.push_str(&format!(" ({detail})"));
        }
    }
    if !saved.is_empty() {
        line.push(' ');
        line.push_str(saved);
    }
    line
}

/// An answer as the "got" of an error message.
fn describe(answer: &Answer) -> String {
    let mut body = answer.body.to_string();
    if body.len() > 600 {
        let cut = (0..=600).rev().find(|i| body.is_char_boundary(*i)).unwrap_or(0);
        body.truncate(cut);
        body.push('…');
    }
    format!("HTTP {} {body}", answer.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk() -> Walk {
        Walk {
            http: reqwest::Client::new(),
            base: String::new(),
            psp_base: String::new(),
            run: "demo-test".into(),
            vars: HashMap::from([("alice.id".to_string(), "a-1".to_string())]),
            count: 0,
        }
    }

    #[test]
    fn placeholders_are_filled_in_paths_and_bodies() -> Result<()> {
        let walk = walk();
        assert_eq!(walk.fill("/users/{alice.id}/x")?, "/users/a-1/x");
        let body = walk.fill_json(&json!({"sender_id": "{alice.id}", "n": 3, "list": ["{alice.id}"]}))?;
        assert_eq!(body, json!({"sender_id": "a-1", "n": 3, "list": ["a-1"]}));
        assert!(walk.fill("/users/{bob.id}").is_err());
        Ok(())
    }

    #[test]
    fn a_refusal_counts_from_the_api_or_from_a_failed_receipt() {
        let step = Step::job("t", "k", "/p", Value::Null).expect(Expect::Refused(&["FORBIDDEN", "MANDATE_REQUIRED"]));
        let problem = Answer { status: 403, body: json!({"status": 403, "code": "FORBIDDEN"}) };
        assert!(check(&step, &problem, &[]).is_ok());
        let receipt = Answer {
            status: 200,
            body: json!({"job_id": "j", "status": "failed", "error": {"code": "MANDATE_REQUIRED"}}),
        };
        assert!(check(&step, &receipt, &[]).is_ok());
        let succeeded = Answer { status: 200, body: json!({"job_id": "j", "status": "succeeded", "error": null}) };
        assert!(check(&step, &succeeded, &[]).is_err());
    }

    #[test]
    fn an_exhausted_mandate_must_show_its_code() {
        let step = Step::job("t", "k", "/p", Value::Null).expect(Expect::Failed("MANDATE_EXHAUSTED"));
        let receipt = Answer {
            status: 200,
            body: json!({"job_id": "j", "status": "failed", "error": {"code": "MANDATE_EXHAUSTED"}}),
        };
        assert!(check(&step, &receipt, &[]).is_ok());
        let other = Answer { status: 200, body: json!({"job_id": "j", "status": "failed", "error": {"code": "X"}}) };
        assert!(check(&step, &other, &[]).is_err());
    }

    /// The `{name}` placeholders of a template.
    fn names_in(text: &str) -> Vec<String> {
        text.split('{').skip(1).filter_map(|piece| piece.split_once('}').map(|(name, _)| name.to_string())).collect()
    }

    fn strings_in(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
            Value::Object(map) => map.values().for_each(|v| strings_in(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_step_uses_only_values_saved_before_it() {
        let mut known: Vec<String> = vec!["admin.key".into(), "in_30_days".into()];
        for scene in scenes() {
            for step in &scene.steps {
                let mut texts = vec![step.path.to_string()];
                if let Some(body) = &step.body {
                    strings_in(body, &mut texts);
                }
                if let Some(upload) = &step.upload {
                    texts.push(upload.escrow.to_string());
                }
                texts.extend(step.fields.iter().map(|(_, want)| want.to_string()));
                let mut used: Vec<String> = texts.iter().flat_map(|t| names_in(t)).collect();
                if step.target == Target::Api {
                    used.push(step.key.to_string());
                }
                for name in used {
                    assert!(known.contains(&name), "step `{}` uses `{name}` before a step saves it", step.title);
                }
                known.extend(step.save.iter().map(|(name, _)| name.to_string()));
            }
        }
    }
}
