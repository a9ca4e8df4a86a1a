//! The job row: insert with idempotency, the receipt a client reads, and
//! the state changes the executor and the relay make.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::{ApiKeyId, JobId, UserId};
use crate::jobs::JobKind;
use crate::jobs::outcome::FollowUp;
use crate::jobs::transport::JobRef;
use crate::page::{Page, PageRequest};
use crate::principal::{Principal, Role};

const COLUMNS: &str = "id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash, status, attempts, created_at, started_at, finished_at, result, error";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: JobId,
    pub kind: String,
    pub payload: serde_json::Value,
    pub actor_user_id: UserId,
    pub actor_key_id: ApiKeyId,
    pub actor_role: String,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<Vec<u8>>,
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    /// The row's physical address as the claim left it: the work transaction
    /// reaches its own job row by it (see [`still_owned`]).
    #[sqlx(default)]
    pub ctid: Option<String>,
}

impl JobRow {
    /// Who the job acts as. A role we do not know fails closed: the job is
    /// refused `FORBIDDEN`, never run with some other role's rights.
    pub fn principal(&self) -> Result<Principal> {
        let Some(role) = Role::parse(&self.actor_role) else {
            return Err(Error::problem(
                ErrorCode::Forbidden,
                format!("the job's role `{}` is unknown; it runs with no rights", self.actor_role.escape_debug()),
            ));
        };
        Ok(Principal { user_id: self.actor_user_id, key_id: self.actor_key_id, role })
    }

    /// The actor string of the job's audit rows, whatever its role.
    pub fn actor(&self) -> String {
        if self.actor_user_id.0.is_nil() { "system".to_string() } else { format!("user:{}", self.actor_user_id) }
    }

    pub fn job_kind(&self) -> Option<JobKind> {
        JobKind::parse(&self.kind)
    }

    /// The payload as the command type of its kind.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.payload.clone())
            .map_err(|e| Error::internal(format!("job {} payload: {e}", self.id)))
    }

    /// What to push for this row.
    pub fn job_ref(&self) -> Option<JobRef> {
        self.job_kind().map(|kind| JobRef {
            kind,
            id: self.id,
            ctid: self.ctid.clone(),
            key: kind.conflict_key(&self.payload),
        })
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "dead")
    }

    pub fn receipt(&self) -> Receipt {
        Receipt {
            job_id: self.id,
            kind: self.kind.clone(),
            status: self.status.clone(),
            attempts: self.attempts,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            result: self.result.clone(),
            error: self.error.clone(),
        }
    }
}

/// What a client sees of a job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Receipt {
    pub job_id: JobId,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
}

pub struct NewJob {
    pub kind: JobKind,
    pub payload: serde_json::Value,
    pub principal: Principal,
    pub idempotency_key: Option<String>,
}

impl NewJob {
    pub fn new(
        kind: JobKind,
        payload: &impl Serialize,
        principal: &Principal,
        idempotency_key: Option<String>,
    ) -> Result<Self> {
        Ok(Self { kind, payload: serde_json::to_value(payload)?, principal: *principal, idempotency_key })
    }

    fn request_hash(&self) -> Vec<u8> {
        request_hash(self.kind, &self.payload)
    }
}

/// What identifies "the same request" under one idempotency key.
pub fn request_hash(kind: JobKind, payload: &serde_json::Value) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update(b"\n");
    h.update(payload.to_string().as_bytes());
    h.finalize().to_vec()
}

/// Inserts the job row. With an idempotency key already used by the same
/// principal: the same request gives back the original row (`false`), another
/// request is `IDEMPOTENCY_KEY_REUSED`.
///
/// Keys live in two namespaces, each backed by its own unique index: a
/// principal's own requests (`jobs_idempotency`, jobs without a parent) and
/// the follow-up jobs that jobs create (`jobs_child_idempotency`, keyed
/// globally; see [`insert_child`]). A client can therefore never take a key
/// a child job will need, whatever key it sends.
pub async fn insert(conn: &mut PgConnection, new: &NewJob) -> Result<(JobRow, bool)> {
    let hash = new.request_hash();
    let inserted: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO jobs (id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash, pushed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
         ON CONFLICT (actor_user_id, idempotency_key) WHERE idempotency_key IS NOT NULL AND parent_job_id IS NULL DO NOTHING
         RETURNING {COLUMNS}, ctid::text AS ctid"
    )))
    .bind(JobId::new())
    .bind(new.kind.as_str())
    .bind(&new.payload)
    .bind(new.principal.user_id)
    .bind(new.principal.key_id)
    .bind(new.principal.role.as_str())
    .bind(&new.idempotency_key)
    .bind(&hash)
    .fetch_optional(&mut *conn)
    .await?;
    match inserted {
        Some(row) => Ok((row, true)),
        None => existing(conn, new).await.map(|row| (row, false)),
    }
}

/// The row an earlier request with the same principal and idempotency key
/// created: given back when it is the same request (same kind and
/// canonical payload), else `IDEMPOTENCY_KEY_REUSED`.
pub async fn existing(conn: &mut PgConnection, new: &NewJob) -> Result<JobRow> {
    let row: JobRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM jobs WHERE actor_user_id = $1 AND idempotency_key = $2 AND parent_job_id IS NULL"
    )))
    .bind(new.principal.user_id)
    .bind(&new.idempotency_key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(same_request(row, &new.request_hash())?.0)
}

/// The job a principal's own request created under `key`, if any (a
/// proof upload checks its replay itself: its payload names a new proof
/// each time).
pub async fn by_key(conn: &mut PgConnection, who: &Principal, key: &str) -> Result<Option<JobRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM jobs WHERE actor_user_id = $1 AND idempotency_key = $2 AND parent_job_id IS NULL"
    )))
    .bind(who.user_id)
    .bind(key)
    .fetch_optional(conn)
    .await?)
}

fn same_request(existing: JobRow, hash: &[u8]) -> Result<(JobRow, bool)> {
    if existing.request_hash.as_deref() == Some(hash) {
        Ok((existing, false))
    } else {
        Err(Error::problem(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was already used with another request",
        ))
    }
}

/// Inserts many job rows in one statement (the api's group commit): for
/// each request, in order, its new row, or `None` when its idempotency key
/// was taken (by an earlier request, or by another in the same batch);
/// [`existing`] then decides, request by request.
pub async fn insert_many(conn: &mut PgConnection, news: &[NewJob]) -> Result<Vec<Option<JobRow>>> {
    let ids: Vec<JobId> = news.iter().map(|_| JobId::new()).collect();
    let kinds: Vec<&str> = news.iter().map(|n| n.kind.as_str()).collect();
    let payloads: Vec<&serde_json::Value> = news.iter().map(|n| &n.payload).collect();
    let users: Vec<UserId> = news.iter().map(|n| n.principal.user_id).collect();
    let keys: Vec<ApiKeyId> = news.iter().map(|n| n.principal.key_id).collect();
    let roles: Vec<&str> = news.iter().map(|n| n.principal.role.as_str()).collect();
    let idempotency: Vec<Option<&str>> = news.iter().map(|n| n.idempotency_key.as_deref()).collect();
    let hashes: Vec<Vec<u8>> = news.iter().map(NewJob::request_hash).collect();
    let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO jobs (id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash, pushed_at)
         SELECT id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash, now()
           FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::bytea[])
                AS n(id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash)
         ON CONFLICT (actor_user_id, idempotency_key) WHERE idempotency_key IS NOT NULL AND parent_job_id IS NULL DO NOTHING
         RETURNING {COLUMNS}, ctid::text AS ctid"
    )))
    .bind(&ids)
    .bind(&kinds)
    .bind(&payloads)
    .bind(&users)
    .bind(&keys)
    .bind(&roles)
    .bind(&idempotency)
    .bind(&hashes)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_id: std::collections::HashMap<JobId, JobRow> = rows.into_iter().map(|r| (r.id, r)).collect();
    Ok(ids.iter().map(|id| by_id.remove(id)).collect())
}

/// Creates the follow-up jobs a rule asked for, inside the parent's
/// transaction, under the parent's principal, each keyed so that a re-run
/// of the parent (or another parent asking for the same work) finds the
/// same child. Child keys are a namespace of their own (a unique index on
/// the key of jobs that have a parent), apart from every client's keys.
/// Answers the rows it created, to push once the parent commits; a child
/// its key already names is left as it is (another key reused with another
/// request is `IDEMPOTENCY_KEY_REUSED`). No statement when there are none.
pub async fn insert_children(conn: &mut PgConnection, parent: &JobRow, children: &[FollowUp]) -> Result<Vec<JobRef>> {
    let mut created = Vec::new();
    for child in children {
        if let Some(row) = insert_child(conn, parent, child).await?
            && let Some(job) = row.job_ref()
        {
            created.push(job);
        }
    }
    Ok(created)
}

/// One follow-up job: its new row, or `None` when its key names one already.
async fn insert_child(conn: &mut PgConnection, parent: &JobRow, child: &FollowUp) -> Result<Option<JobRow>> {
    let principal = parent.principal()?;
    let hash = request_hash(child.kind, &child.payload);
    let inserted: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO jobs (id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash, pushed_at, parent_job_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), $9)
         ON CONFLICT (idempotency_key) WHERE parent_job_id IS NOT NULL DO NOTHING
         RETURNING {COLUMNS}, ctid::text AS ctid"
    )))
    .bind(JobId::new())
    .bind(child.kind.as_str())
    .bind(&child.payload)
    .bind(principal.user_id)
    .bind(principal.key_id)
    .bind(principal.role.as_str())
    .bind(&child.key)
    .bind(&hash)
    .bind(parent.id)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        return Ok(inserted);
    }
    let existing: JobRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM jobs WHERE idempotency_key = $1 AND parent_job_id IS NOT NULL"
    )))
    .bind(&child.key)
    .fetch_one(&mut *conn)
    .await?;
    same_request(existing, &hash)?;
    Ok(None)
}

pub async fn get(conn: &mut PgConnection, id: JobId) -> Result<Option<JobRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM jobs WHERE id = $1")))
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

/// A receipt for its creator, support or admin; anyone else gets the same
/// 404 as for a missing job.
pub async fn get_for(conn: &mut PgConnection, id: JobId, who: &Principal) -> Result<JobRow> {
    let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM jobs WHERE id = $1 AND ($2 OR actor_user_id = $3)"
    )))
    .bind(id)
    .bind(who.reads_all())
    .bind(who.user_id)
    .fetch_optional(conn)
    .await?;
    row.ok_or_else(|| Error::not_found(ErrorCode::NotFound, "job"))
}

pub async fn list(
    conn: &mut PgConnection,
    status: Option<&str>,
    kind: Option<&str>,
    page: &PageRequest,
) -> Result<Page<JobRow>> {
    // `dead` and `failed` spelled out, so the planner uses their partial
    // indexes (a parameter never implies an index's predicate).
    let status_is = match status {
        Some("dead") => "status = 'dead' AND $1::text = 'dead'",
        Some("failed") => "status = 'failed' AND $1::text = 'failed'",
        _ => "($1::text IS NULL OR status = $1)",
    };
    let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM jobs WHERE {status_is} AND ($2::text IS NULL OR kind = $2) AND id < $3
          ORDER BY id DESC LIMIT $4"
    )))
    .bind(status)
    .bind(kind)
    .bind(page.before())
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page, |r| r.id.0))
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// Claimed for this worker: run it.
    Run(JobRow),
    /// Another worker runs it under a lease that has not run out.
    Busy,
    /// Its attempts were used up by runs that never recorded an outcome (a
    /// worker that crashed or was killed each time): now `dead`.
    Dead(JobRow),
    /// Nothing to do here: finished, not due yet (the relay pushes it when
    /// it is), or not there.
    Nothing,
}

/// The problem a job that used up its attempts ends with.
fn gave_up_json() -> &'static str {
    "jsonb_build_object('code', 'INTERNAL', 'status', 500, 'title', 'Internal error', 'detail', 'gave up after repeated infrastructure errors')"
}

/// Claims a job for this worker, outside the work transaction so that the
/// receipt shows `running`: only a `queued` job that is due, or a `running`
/// one whose lease ran out (its worker died), can be claimed. Attempts are
/// counted here, at the claim, so a job that kills its worker every time
/// still ends: past `max_attempts` the claim makes it `dead` instead.
pub async fn claim(
    pool: &PgPool,
    id: JobId,
    worker: &str,
    lease: std::time::Duration,
    max_attempts: i32,
) -> Result<Claim> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let gave_up = gave_up_json();
    let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs SET
                status = CASE WHEN attempts >= $4 THEN 'dead' ELSE 'running' END,
                attempts = CASE WHEN attempts >= $4 THEN attempts ELSE attempts + 1 END,
                started_at = coalesce(started_at, now()),
                finished_at = CASE WHEN attempts >= $4 THEN now() END,
                error = CASE WHEN attempts >= $4 THEN {gave_up} END,
                locked_by = CASE WHEN attempts >= $4 THEN NULL ELSE $2 END,
                locked_until = CASE WHEN attempts >= $4 THEN NULL ELSE now() + make_interval(secs => $3::float8 / 1000) END
          WHERE id = $1 AND ((status = 'queued' AND next_attempt_at <= now())
                          OR (status = 'running' AND locked_until < now()))
          RETURNING {COLUMNS}, ctid::text AS ctid"
    )))
    .bind(id)
    .bind(worker)
    .bind(lease_ms as f64)
    .bind(max_attempts)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) if row.status == "dead" => Ok(Claim::Dead(row)),
        Some(row) => Ok(Claim::Run(row)),
        None => {
            let busy: Option<bool> =
                sqlx::query_scalar("SELECT status = 'running' AND locked_until >= now() FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
            Ok(if busy == Some(true) { Claim::Busy } else { Claim::Nothing })
        }
    }
}

/// Inside the work transaction: locks the row and checks that this claim
/// (same attempt) still owns it; a relay hand-over in between means another
/// worker took it and this run must not commit.
///
/// The row is reached by the address the claim returned (a TID scan, with
/// the id re-checked), not through `jobs_pkey`: under SERIALIZABLE an index
/// read locks a whole b-tree page, and with time-ordered ids every running
/// job sits on the same newest page, which every `finish` writes into — each
/// job would conflict with every other. A stale address (the relay moved the
/// row) finds nothing and reads as "not owned".
pub async fn still_owned(conn: &mut PgConnection, job: &JobRow) -> Result<bool> {
    let row: Option<(String, i32)> = match &job.ctid {
        Some(ctid) => {
            sqlx::query_as("SELECT status, attempts FROM jobs WHERE ctid = $1::tid AND id = $2 FOR UPDATE")
                .bind(ctid)
                .bind(job.id)
                .fetch_optional(conn)
                .await?
        }
        None => {
            sqlx::query_as("SELECT status, attempts FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(job.id)
                .fetch_optional(conn)
                .await?
        }
    };
    Ok(matches!(row, Some((status, attempts)) if status == "running" && attempts == job.attempts))
}

/// The first delivery's claim, inside the job's own transaction: reads the
/// row when it is `queued` and due, and returns it with this attempt
/// counted (in memory: [`finish`] or [`mark_running`] writes it), so a job
/// that ends at the first try costs its transaction's one commit. The row
/// is reached by the address the api gave the message when it has one (a
/// TID scan: see [`still_owned`] for why), else by id.
///
/// No `FOR UPDATE`: a row lock is a write of its own. Two deliveries of one
/// job (rare) may both run the rule; the second to update the row at its
/// end fails with a serialization error, and its retry finds the job ended.
pub async fn queued_row(conn: &mut PgConnection, id: JobId, ctid: Option<&str>) -> Result<Option<JobRow>> {
    let by_address: Option<JobRow> = match ctid {
        Some(ctid) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS}, ctid::text AS ctid FROM jobs
                  WHERE ctid = $1::tid AND id = $2 AND status = 'queued' AND next_attempt_at <= now()"
            )))
            .bind(ctid)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        }
        None => None,
    };
    let row = match by_address {
        Some(row) => Some(row),
        // No address, or a stale one (the row was updated since): by id.
        None => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS}, ctid::text AS ctid FROM jobs
                  WHERE id = $1 AND status = 'queued' AND next_attempt_at <= now()"
            )))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    Ok(row.map(|mut row| {
        row.attempts += 1;
        row
    }))
}

/// Ends a job inside its transaction (one statement, by address like
/// [`still_owned`]). Receipt waiters are woken after the commit, through
/// Redis (`Queue::ack`): a `NOTIFY` here would serialise every job commit
/// of the cluster.
pub async fn finish(
    conn: &mut PgConnection,
    job: &JobRow,
    result: std::result::Result<&serde_json::Value, &Problem>,
) -> Result<()> {
    let (status, result, error) = match result {
        Ok(v) => ("succeeded", Some(v.clone()), None),
        Err(p) => ("failed", None, Some(p.to_json())),
    };
    // Two spellings so the planner sees a plain TID condition (a TID scan).
    // `now()` is the transaction's start: when the job started.
    let set = "status = $3, result = $4, error = $5, attempts = $6, started_at = coalesce(started_at, now()),
               finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL";
    let sql = if job.ctid.is_some() {
        format!("UPDATE jobs SET {set} WHERE ctid = $1::tid AND id = $2")
    } else {
        format!("UPDATE jobs SET {set} WHERE id = $2 AND $1::text IS NULL")
    };
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&job.ctid)
        .bind(job.id)
        .bind(status)
        .bind(result)
        .bind(error)
        .bind(job.attempts)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::internal(format!("job {} vanished while it ran", job.id)));
    }
    Ok(())
}

/// A job claimed by [`queued_row`] that must call out (a payout): it is
/// committed `running` under this worker's lease, like a claim, before the
/// call. Returns the row with its new address.
pub async fn mark_running(
    conn: &mut PgConnection,
    job: &JobRow,
    worker: &str,
    lease: std::time::Duration,
) -> Result<JobRow> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let ctid: Option<String> = sqlx::query_scalar(
        "UPDATE jobs SET status = 'running', attempts = $3, started_at = coalesce(started_at, now()),
                locked_by = $4, locked_until = clock_timestamp() + make_interval(secs => $5::float8 / 1000)
          WHERE id = $1 AND ctid = $2::tid RETURNING ctid::text",
    )
    .bind(job.id)
    .bind(&job.ctid)
    .bind(job.attempts)
    .bind(worker)
    .bind(lease_ms as f64)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(ctid) = ctid else {
        return Err(Error::internal(format!("job {} vanished while it ran", job.id)));
    };
    let mut running = job.clone();
    running.status = "running".into();
    running.ctid = Some(ctid);
    Ok(running)
}

/// After an infrastructure error in a first delivery's transaction (rolled
/// back, so nothing of the attempt was written): the attempt is counted now,
/// and the job goes back to `queued` with a back-off, or `dead` past the
/// last attempt. Returns the new status.
pub async fn record_failed_attempt(pool: &PgPool, id: JobId, max_attempts: i32, message: &str) -> Result<String> {
    let gave_up = gave_up_json();
    let status: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs SET attempts = attempts + 1,
            status = CASE WHEN attempts + 1 >= $2 THEN 'dead' ELSE 'queued' END,
            finished_at = CASE WHEN attempts + 1 >= $2 THEN now() END,
            error = CASE WHEN attempts + 1 >= $2 THEN {gave_up} END,
            next_attempt_at = now() + make_interval(secs => $3), last_error = $4
          WHERE id = $1 AND status = 'queued'
          RETURNING status"
    )))
    .bind(id)
    .bind(max_attempts)
    .bind(backoff_secs(1))
    .bind(message)
    .fetch_optional(pool)
    .await?;
    Ok(status.unwrap_or_else(|| "superseded".into()))
}

fn backoff_secs(attempt: i32) -> f64 {
    2f64.powi(attempt.clamp(1, 10)) * (0.75 + rand::random::<f64>() * 0.5)
}

/// After an infrastructure error: back to `queued` with a later
/// `next_attempt_at` (exponential back-off, the relay pushes it when due), or
/// `dead` past the last attempt. Returns the new status.
pub async fn record_failure(
    pool: &PgPool,
    id: JobId,
    attempt: i32,
    max_attempts: i32,
    message: &str,
) -> Result<String> {
    let backoff_secs = backoff_secs(attempt);
    let gave_up = gave_up_json();
    let status: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs SET
            status = CASE WHEN attempts >= $3 THEN 'dead' ELSE 'queued' END,
            finished_at = CASE WHEN attempts >= $3 THEN now() ELSE NULL END,
            error = CASE WHEN attempts >= $3 THEN {gave_up} ELSE NULL END,
            next_attempt_at = now() + make_interval(secs => $4),
            last_error = $5, locked_by = NULL, locked_until = NULL
          WHERE id = $1 AND attempts = $2 AND status = 'running'
          RETURNING status"
    )))
    .bind(id)
    .bind(attempt)
    .bind(max_attempts)
    .bind(backoff_secs)
    .bind(message)
    .fetch_optional(pool)
    .await?;
    Ok(status.unwrap_or_else(|| "superseded".into()))
}

/// `POST /jobs/{id}/retry`: a dead job goes back to the queue with fresh
/// attempts, and its audit row is written in the same transaction.
pub async fn retry_dead(conn: &mut PgConnection, id: JobId, who: &Principal) -> Result<JobRow> {
    let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs SET status = 'queued', attempts = 0, next_attempt_at = now(), pushed_at = now(),
                finished_at = NULL, error = NULL, started_at = NULL
          WHERE id = $1 AND status = 'dead' RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => {
            crate::domain::ops::audit::write(conn, &who.actor(), "JOB_RETRIED", "job", row.id, serde_json::json!({}))
                .await?;
            Ok(row)
        }
        None => match get(conn, id).await? {
            Some(_) => Err(Error::problem(ErrorCode::JobNotDead, "only a dead job can be retried")),
            None => Err(Error::not_found(ErrorCode::NotFound, "job")),
        },
    }
}

/// The relay's candidates, read only: jobs due but not taken. A `queued`
/// job pushed longer than `after` ago, or due for a retry since its last
/// push, or a `running` job whose lease ran out. (Reading first lets the
/// relay leave alone the ones whose entry is still in a stream: a backlog
/// being worked costs it no write.)
pub async fn relay_candidates(pool: &PgPool, after: std::time::Duration, limit: i64) -> Result<Vec<(JobId, String)>> {
    let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX) as f64;
    Ok(sqlx::query_as(
        "SELECT id, kind FROM jobs
          WHERE status IN ('queued', 'running') AND next_attempt_at <= now()
            AND ((status = 'queued' AND (pushed_at IS NULL OR pushed_at < now() - make_interval(secs => $1 / 1000)
                                          OR pushed_at < next_attempt_at))
              OR (status = 'running' AND locked_until < now()))
          ORDER BY next_attempt_at LIMIT $2",
    )
    .bind(after_ms)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Takes the given candidates for the relay, those that still qualify:
/// marked pushed now and returned with their new status, `queued` to push
/// again, or `dead` for a running job whose attempts are used up (its
/// worker died on the last one).
pub async fn take_for_relay(
    pool: &PgPool,
    ids: &[JobId],
    after: std::time::Duration,
    max_attempts: i32,
) -> Result<Vec<(JobId, String, String, String)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX) as f64;
    let gave_up = gave_up_json();
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs SET pushed_at = now(),
                status = CASE WHEN status = 'running' AND attempts >= $3 THEN 'dead'
                              WHEN status = 'running' THEN 'queued' ELSE status END,
                finished_at = CASE WHEN status = 'running' AND attempts >= $3 THEN now() ELSE finished_at END,
                error = CASE WHEN status = 'running' AND attempts >= $3 THEN {gave_up} ELSE error END,
                locked_by = NULL, locked_until = NULL
          WHERE id = ANY($2) AND status IN ('queued', 'running') AND next_attempt_at <= now()
            AND ((status = 'queued' AND (pushed_at IS NULL OR pushed_at < now() - make_interval(secs => $1 / 1000)
                                          OR pushed_at < next_attempt_at))
              OR (status = 'running' AND locked_until < now()))
          RETURNING id, kind, status, ctid::text"
    )))
    .bind(after_ms)
    .bind(ids)
    .bind(max_attempts)
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(role: &str) -> JobRow {
        JobRow {
            id: JobId::new(),
            kind: "escrow_deposit".into(),
            payload: serde_json::json!({}),
            actor_user_id: UserId::new(),
            actor_key_id: ApiKeyId::new(),
            actor_role: role.into(),
            idempotency_key: None,
            request_hash: None,
            status: "queued".into(),
            attempts: 0,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
            ctid: None,
        }
    }

    #[test]
    fn an_unknown_role_fails_closed_instead_of_acting_as_the_psp() {
        for role in ["ghost", "PSP", "", "admin ", "psp\u{0}"] {
            let r = row(role).principal();
            assert!(matches!(&r, Err(Error::Problem(p)) if p.code == ErrorCode::Forbidden), "{role:?}: {r:?}");
        }
        for role in ["admin", "support", "sender", "beneficiary", "psp"] {
            assert_eq!(row(role).principal().map(|p| p.role.as_str()).ok(), Some(role));
        }
        assert!(row("ghost").actor().starts_with("user:"));
    }
}
