//! The job executor tested directly, on a fresh database and a Redis key
//! prefix of its own each, with a rule made for the test: a first delivery
//! claims, runs and ends its job in one transaction; a refusal rolls the
//! rule back and is audited (unless the rule kept it); follow-ups commit
//! with their rule and are pushed after it; infrastructure errors and
//! panics are retried with back-off, then dead; a redelivery takes a
//! counted claim and a live lease keeps others off; a claim taken over no
//! longer owns the row; attempts used up by crashes end dead; the relay
//! pushes again what no worker took; a call to the outside world happens
//! between two transactions.

mod common;

use std::time::Duration;

use common::{job, user};
use futures::future::BoxFuture;
use shared::db;
use shared::error::{Error, ErrorCode, Problem, Result};
use shared::ids::JobId;
use shared::jobs::exec::{Executor, Hint, Report};
use shared::jobs::record::{self, Claim, JobRow};
use shared::jobs::{FollowUp, JobKind, NewJob, Outcome, Queue, Runner};
use shared::principal::{Principal, Role};
use sqlx::{PgConnection, PgPool};

/// The test's rule: its payload says what it does. It always writes an
/// alert first, so a rollback shows.
struct TestRule;

impl Runner for TestRule {
    fn run<'c>(&'c self, conn: &'c mut PgConnection, job: &'c JobRow) -> BoxFuture<'c, Result<Outcome>> {
        Box::pin(async move {
            let what = job.payload["do"].as_str().unwrap_or("").to_string();
            shared::domain::ops::alerts::raise(conn, "RULE_RAN", &what, None, serde_json::json!({"job": job.id}))
                .await?;
            let refusal = || Problem::new(ErrorCode::MandateExhausted, "refused by the test");
            match what.as_str() {
                "succeed" => Ok(Outcome::succeeded(serde_json::json!({"ok": true}))),
                "refuse" => Err(Error::Problem(refusal())),
                "refuse_kept" => Ok(Outcome::refused(refusal())),
                "spawn" => Ok(Outcome::succeeded(serde_json::json!({})).then(follow_ups(job)?)),
                "spawn_then_refuse" => {
                    let _ = follow_ups(job)?;
                    Err(Error::Problem(refusal()))
                }
                "call" => Ok(Outcome::call(serde_json::json!({"to": "psp"}))),
                "panic" => panic!("the test's rule panics"),
                _ => Err(Error::internal("the test's rule fails")),
            }
        })
    }

    fn call<'c>(&'c self, job: &'c JobRow, state: &'c serde_json::Value) -> BoxFuture<'c, Result<serde_json::Value>> {
        Box::pin(async move {
            match job.payload["reply"].as_str() {
                Some(reply) => Ok(serde_json::json!({"reply": reply, "state": state})),
                None => Err(Error::internal("the outside world does not answer")),
            }
        })
    }

    fn complete<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        _job: &'c JobRow,
        _state: &'c serde_json::Value,
        reply: &'c serde_json::Value,
    ) -> BoxFuture<'c, Result<Outcome>> {
        Box::pin(async move {
            shared::domain::ops::alerts::raise(conn, "REPLY_RECORDED", "reply", None, reply.clone()).await?;
            Ok(Outcome::succeeded(reply.clone()))
        })
    }
}

fn follow_ups(job: &JobRow) -> Result<Vec<FollowUp>> {
    let child = |n: u32| FollowUp::new(JobKind::Payout, &serde_json::json!({"n": n}), format!("test:{}:{n}", job.id));
    Ok(vec![child(1)?, child(2)?])
}

/// The Redis of `cargo xtask test`, under a prefix of this test's own.
struct Bus {
    queue: Queue,
    prefix: String,
    url: String,
}

impl Bus {
    fn new() -> Bus {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("exec-test-{}", uuid::Uuid::new_v4().simple());
        Bus { queue: Queue::new(&url, &prefix, 10_000).expect("queue"), prefix, url }
    }

    /// The job ids in a kind's stream.
    async fn pushed(&self, kind: JobKind) -> Vec<JobId> {
        let ids = self.queue.job_ids_in_stream(kind, 1_000).await.expect("stream").unwrap_or_default();
        ids.into_iter().collect()
    }

    async fn drop_keys(self) {
        let client = redis::Client::open(self.url.as_str()).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("conn");
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query_async(&mut conn).await.unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }
}

fn executor<'a>(pool: &'a PgPool, bus: &'a Bus, worker: &'a str, max_attempts: i32) -> Executor<'a, TestRule> {
    Executor { pool, runner: &TestRule, queue: &bus.queue, worker, lease: Duration::from_secs(10), max_attempts }
}

/// A queued job whose rule does `what`; answers its row (with its address).
async fn queued(pool: &PgPool, who: &Principal, what: &str, reply: Option<&str>) -> JobRow {
    let payload = serde_json::json!({"do": what, "reply": reply, "n": uuid::Uuid::new_v4()});
    let new = NewJob::new(JobKind::MandateExpiry, &payload, who, Some(uuid::Uuid::new_v4().to_string())).expect("job");
    let mut conn = pool.acquire().await.expect("conn");
    record::insert(&mut conn, &new).await.expect("inserted").0
}

fn first(job: &JobRow) -> Hint {
    Hint { ctid: job.ctid.clone(), redelivered: false }
}

fn again() -> Hint {
    Hint { ctid: None, redelivered: true }
}

async fn row(pool: &PgPool, id: JobId) -> JobRow {
    let mut conn = pool.acquire().await.expect("conn");
    record::get(&mut conn, id).await.expect("read").expect("row")
}

async fn alerts(pool: &PgPool, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM alerts WHERE type = $1").bind(kind).fetch_one(pool).await.expect("alerts")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_first_delivery_claims_runs_and_ends_its_job_in_one_transaction_and_a_second_is_skipped(pool: PgPool) {
    let (bus, who) = (Bus::new(), user(&pool, Role::Admin).await);
    let job = queued(&pool, &who, "succeed", None).await;
    let exec = executor(&pool, &bus, "w1", 3);
    assert_eq!(exec.run(job.id, &first(&job)).await.expect("ran"), Report::Succeeded);
    let done = row(&pool, job.id).await;
    assert_eq!((done.status.as_str(), done.attempts), ("succeeded", 1));
    assert_eq!(done.result, Some(serde_json::json!({"ok": true})));
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    // A duplicate delivery (first or counted) finds it ended and does nothing.
    assert_eq!(exec.run(job.id, &first(&job)).await.expect("ran"), Report::Skipped);
    assert_eq!(exec.run(job.id, &again()).await.expect("ran"), Report::Skipped);
    assert_eq!((row(&pool, job.id).await.attempts, alerts(&pool, "RULE_RAN").await), (1, 1));
    bus.drop_keys().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_refusal_rolls_the_rule_back_and_is_audited_unless_the_rule_kept_it(pool: PgPool) {
    let (bus, who) = (Bus::new(), user(&pool, Role::Admin).await);
    let exec = executor(&pool, &bus, "w1", 3);
    let refused = queued(&pool, &who, "refuse", None).await;
    assert_eq!(exec.run(refused.id, &first(&refused)).await.expect("ran"), Report::Failed("MANDATE_EXHAUSTED".into()));
    let r = row(&pool, refused.id).await;
    assert_eq!(
        (r.status.as_str(), r.error.as_ref().and_then(|e| e["code"].as_str())),
        ("failed", Some("MANDATE_EXHAUSTED"))
    );
    assert_eq!(alerts(&pool, "RULE_RAN").await, 0, "the rule's writes were rolled back");
    let (entity, action) = JobKind::MandateExpiry.refusal_audit();
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE entity = $1 AND action = $2 AND entity_id = $3")
            .bind(entity)
            .bind(action)
            .bind(refused.id.to_string())
            .fetch_one(&pool)
            .await
            .expect("audit");
    assert_eq!(audited, 1);
    let kept = queued(&pool, &who, "refuse_kept", None).await;
    assert_eq!(exec.run(kept.id, &first(&kept)).await.expect("ran"), Report::Failed("MANDATE_EXHAUSTED".into()));
    assert_eq!(alerts(&pool, "RULE_RAN").await, 1, "a kept refusal keeps the rule's writes");
    bus.drop_keys().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn follow_ups_commit_with_their_rule_are_pushed_after_it_and_vanish_with_a_refusal(pool: PgPool) {
    let (bus, who) = (Bus::new(), user(&pool, Role::Admin).await);
    let exec = executor(&pool, &bus, "w1", 3);
    let parent = queued(&pool, &who, "spawn", None).await;
    assert_eq!(exec.run(parent.id, &first(&parent)).await.expect("ran"), Report::Succeeded);
    let children: Vec<(JobId, String, String, String)> = sqlx::query_as(
        "SELECT id, kind, status, actor_role FROM jobs WHERE parent_job_id = $1 ORDER BY idempotency_key",
    )
    .bind(parent.id)
    .fetch_all(&pool)
    .await
    .expect("children");
    assert_eq!(children.len(), 2);
    assert!(children.iter().all(
        |(_, kind, status, role)| (kind.as_str(), status.as_str(), role.as_str()) == ("payout", "queued", "admin")
    ));
    let mut pushed = bus.pushed(JobKind::Payout).await;
    pushed.sort();
    let mut ids: Vec<JobId> = children.iter().map(|c| c.0).collect();
    ids.sort();
    assert_eq!(pushed, ids, "pushed after the commit");
    let refused = queued(&pool, &who, "spawn_then_refuse", None).await;
    exec.run(refused.id, &first(&refused)).await.expect("ran");
    let orphans: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE parent_job_id = $1")
        .bind(refused.id)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(orphans, 0);
    bus.drop_keys().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_infrastructure_error_or_a_panic_is_retried_after_a_back_off_then_dead(pool: PgPool) {
    let (bus, who) = (Bus::new(), user(&pool, Role::Admin).await);
    let exec = executor(&pool, &bus, "w1", 2);
    for what in ["fail", "panic"] {
        let job = queued(&pool, &who, what, None).await;
        let report = exec.run(job.id, &first(&job)).await.expect("recorded");
        assert!(matches!(&report, Report::Errored { status, .. } if status == "queued"), "{what}: {report:?}");
        let (attempts, waits): (i32, bool) =
            sqlx::query_as("SELECT attempts, next_attempt_at > now() FROM jobs WHERE id = $1")
                .bind(job.id)
                .fetch_one(&pool)
                .await
                .expect("row");
        assert_eq!((attempts, waits), (1, true), "{what}");
        // Not due yet: a delivery now does nothing.
        assert_eq!(exec.run(job.id, &again()).await.expect("ran"), Report::Skipped);
        sqlx::query("UPDATE jobs SET next_attempt_at = now() WHERE id = $1")
            .bind(job.id)
            .execute(&pool)
            .await
            .expect("due");
        let report = exec.run(job.id, &again()).await.expect("recorded");
        assert!(matches!(&report, Report::Errored { status, .. } if status == "dead"), "{what}: {report:?}");
        let dead = row(&pool, job.id).await;
        assert_eq!((dead.status.as_str(), dead.attempts), ("dead", 2));
        assert_eq!(dead.error.as_ref().and_then(|e| e["code"].as_str()), Some("INTERNAL"));
    }
    assert_eq!(alerts(&pool, "RULE_RAN").await, 0, "no failed attempt left a write");
    bus.drop_keys().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_live_lease_keeps_other_workers_off_and_an_expired_one_is_taken_over(pool: PgPool) {
    let (bus, who) = (Bus::new(), user(&pool, Role::Admin).await);
    let job = queued(&pool, &who, "succeed", None).await;
    // Worker 1 claims it (and, say, is still running it).
    let claim = record::claim(&pool, job.id, "w1", Duration::from_secs(10), 3).await.expect("claim");
    let Claim::Run(mine) = claim else { panic!("claimable: {claim:?}") };
    assert_eq!((mine.status.as_str(), mine.attempts), ("running", 1));
    let w2 = executor(&pool, &bus, "w2", 3);
    assert_eq!(w2.run(job.id, &again()).await.expect("ran"), Report::Busy);
    assert_eq!(
        w2.run(job.id, &first(&job)).await.expect("ran"),
        Report::Busy,
        "not queued: the counted claim says busy"
    );
    // Worker 1 dies: its lease runs out and worker 2 takes over, counting an attempt.
    sqlx::query("UPDATE jobs SET locked_until = now() - interval '1 second' WHERE id = $1")
        .bind(job.id)
        .execute(&pool)
        .await
        .expect("expired");
    assert_eq!(w2.run(job.id, &again()).await.expect("ran"), Report::Succeeded);
    assert_eq!(row(&pool, job.id).await.attempts, 2);
    // Worker 1's claim no longer owns the row.
    let owned = db::serializable(&pool, &mine, |tx, mine| Box::pin(record::still_owned(tx, mine))).await;
    assert_eq!(owned.ok(), Some(false));
    bus.drop_keys().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_claim_handed_over_by_the_relay_no_longer_owns_the_job(pool: PgPool) {
    let (bus, who) = (Bus::new(), user(&pool, Role::Admin).await);
    let job = queued(&pool, &who, "succeed", None).await;
    let Claim::Run(mine) = record::claim(&pool, job.id, "w1", Duration::from_secs(10), 3).await.expect("claim") else {
        panic!("claimable")
    };
    let owned = db::serializable(&pool, &mine, |tx, mine| Box::pin(record::still_owned(tx, mine))).await;
    assert_eq!(owned.ok(), Some(true));
    sqlx::query("UPDATE jobs SET locked_until = now() - interval '1 second' WHERE id = $1")
        .bind(job.id)
        .execute(&pool)
        .await
        .expect("expired");
    let picked = relay_pick(&pool, Duration::from_secs(3), 3).await.expect("relay");
    assert_eq!(picked.iter().map(|p| (p.0, p.2.as_str())).collect::<Vec<_>>(), vec![(job.id, "queued")]);
    let owned = db::serializable(&pool, &mine, |tx, mine| Box::pin(record::still_owned(tx, mine))).await;
    assert_eq!(owned.ok(), Some(false), "handed over: this claim must not commit");
    let w2 = executor(&pool, &bus, "w2", 3);
    assert_eq!(w2.run(job.id, &first(&job)).await.expect("ran"), Report::Succeeded);
    bus.drop_keys().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn attempts_used_up_by_runs_that_never_ended_make_the_job_dead_at_the_next_claim(pool: PgPool) {
    let (bus, who) = (Bus::new(), user(&pool, Role::Admin).await);
    let job = queued(&pool, &who, "succeed", None).await;
    for attempt in 1..=2 {
        // A worker claims it and crashes: its lease runs out.
        let claim = record::claim(&pool, job.id, "crashy", Duration::from_secs(10), 2).await.expect("claim");
        assert!(matches!(&claim, Claim::Run(j) if j.attempts == attempt), "{claim:?}");
        sqlx::query("UPDATE jobs SET locked_until = now() - interval '1 second' WHERE id = $1")
            .bind(job.id)
            .execute(&pool)
            .await
            .expect("expired");
    }
    let exec = executor(&pool, &bus, "w1", 2);
    assert_eq!(exec.run(job.id, &again()).await.expect("ran"), Report::GaveUp);
    let dead = row(&pool, job.id).await;
    assert_eq!((dead.status.as_str(), dead.attempts), ("dead", 2));
    assert_eq!(alerts(&pool, "RULE_RAN").await, 0, "the rule never committed");
    // The relay too ends a job whose worker died on its last attempt.
    let other = queued(&pool, &who, "succeed", None).await;
    for _ in 0..2 {
        record::claim(&pool, other.id, "crashy", Duration::from_secs(10), 2).await.expect("claim");
        sqlx::query("UPDATE jobs SET locked_until = now() - interval '1 second' WHERE id = $1")
            .bind(other.id)
            .execute(&pool)
            .await
            .expect("expired");
        let _ = relay_pick(&pool, Duration::from_secs(3), 2).await.expect("relay");
    }
    assert_eq!(row(&pool, other.id).await.status, "dead");
    bus.drop_keys().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_relay_picks_jobs_no_worker_took_and_leaves_fresh_ones(pool: PgPool) {
    let who = user(&pool, Role::Admin).await;
    // Pushed just now: the relay leaves it to its worker.
    let _fresh = queued(&pool, &who, "succeed", None).await;
    let lost = queued(&pool, &who, "succeed", None).await;
    sqlx::query("UPDATE jobs SET pushed_at = now() - interval '1 minute' WHERE id = $1")
        .bind(lost.id)
        .execute(&pool)
        .await
        .expect("pushed long ago");
    let picked = relay_pick(&pool, Duration::from_secs(3), 3).await.expect("relay");
    assert_eq!(picked.iter().map(|p| p.0).collect::<Vec<_>>(), vec![lost.id]);
    let again = relay_pick(&pool, Duration::from_secs(3), 3).await.expect("relay");
    assert!(again.is_empty(), "marked pushed: not picked twice in a row");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_call_to_the_outside_world_happens_between_two_transactions(pool: PgPool) {
    let (bus, who) = (Bus::new(), user(&pool, Role::Admin).await);
    let exec = executor(&pool, &bus, "w1", 2);
    let job = queued(&pool, &who, "call", Some("accepted")).await;
    assert_eq!(exec.run(job.id, &first(&job)).await.expect("ran"), Report::Succeeded);
    let done = row(&pool, job.id).await;
    assert_eq!((done.status.as_str(), done.attempts), ("succeeded", 1));
    assert_eq!(done.result.as_ref().and_then(|r| r["reply"].as_str()), Some("accepted"));
    assert_eq!((alerts(&pool, "RULE_RAN").await, alerts(&pool, "REPLY_RECORDED").await), (1, 1));
    // The outside world does not answer: the first transaction's writes
    // stay, the job waits for a retry.
    let silent = queued(&pool, &who, "call", None).await;
    let report = exec.run(silent.id, &first(&silent)).await.expect("recorded");
    assert!(matches!(&report, Report::Errored { status, .. } if status == "queued"), "{report:?}");
    assert_eq!(alerts(&pool, "RULE_RAN").await, 2, "phase 1 committed before the call");
    bus.drop_keys().await;
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_child_key_already_taken_by_the_same_request_is_not_made_twice(pool: PgPool) {
    let who = user(&pool, Role::Admin).await;
    let parent = job(&pool, &who, JobKind::EscrowTransition).await;
    let child = FollowUp::new(JobKind::Payout, &serde_json::json!({"n": 1}), "shared-key".into()).expect("follow-up");
    let run = |children: Vec<FollowUp>| {
        let (pool, parent) = (pool.clone(), parent.clone());
        async move {
            db::serializable(&pool, &(parent, children), |tx, (parent, children)| {
                Box::pin(record::insert_children(tx, parent, children))
            })
            .await
        }
    };
    assert_eq!(run(vec![child.clone()]).await.map(|c| c.len()).ok(), Some(1));
    assert_eq!(run(vec![child.clone()]).await.map(|c| c.len()).ok(), Some(0), "found, not made again");
    let other = FollowUp { payload: serde_json::json!({"n": 2}), ..child };
    let r = run(vec![other]).await;
    assert!(matches!(&r, Err(Error::Problem(p)) if p.code == ErrorCode::IdempotencyKeyReused), "{r:?}");
    assert_eq!(run(Vec::new()).await.map(|c| c.len()).ok(), Some(0));
}

/// The relay's database side: its candidates, all taken (the stream check
/// in between is the worker's).
async fn relay_pick(
    pool: &PgPool,
    after: Duration,
    max_attempts: i32,
) -> sqlx::Result<Vec<(JobId, String, String, String)>> {
    let ids: Vec<JobId> = record::relay_candidates(pool, after, 100)
        .await
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    record::take_for_relay(pool, &ids, after, max_attempts).await.map_err(|e| sqlx::Error::Protocol(e.to_string()))
}
