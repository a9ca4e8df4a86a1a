//! Invariants (DOMAIN.md, "Invariants and reconciliation"): the money is
//! provable at any moment. Each invariant is one SQL query that returns its
//! violating rows, as JSON (none when all is well); PSP reconciliation
//! compares our payments and PSP-funded deposits with what the PSP lists.
//!
//! A run reads everything in one read-only snapshot (REPEATABLE READ: no
//! predicate locks, nothing for a job to conflict with), stores its result
//! in `invariant_runs`, raises one `INVARIANT_VIOLATED` alert per violating
//! row, and never repairs anything.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::db;
use crate::domain::ops::alerts;
use crate::error::{Error, Result};
use crate::ids::PaymentId;
use crate::psp::client::{PspFunding, PspPayout};

/// One invariant: its name, what it says, and the query returning one JSON
/// object per violating row. `$1` is the SAKA time zone, `$2` the longest
/// time (seconds) a lease may have run out before the relay takes the job.
pub struct Invariant {
    pub name: &'static str,
    pub description: &'static str,
    sql: &'static str,
}

pub const SQL_INVARIANTS: &[Invariant] = &[
    Invariant {
        name: "mandate_spent",
        description: "a mandate's spent amount is the sum of its completed purchases, and at most its total",
        sql: "SELECT jsonb_build_object('mandate_id', m.id, 'spent_amount', m.spent_amount, 'total_amount', m.total_amount,
                                        'purchases', coalesce(p.total, 0))
                FROM mandates m
                LEFT JOIN (SELECT mandate_id, sum(amount) AS total FROM purchases WHERE status = 'COMPLETED'
                            GROUP BY mandate_id) p ON p.mandate_id = m.id
               WHERE m.spent_amount <> coalesce(p.total, 0) OR m.spent_amount > m.total_amount",
    },
    Invariant {
        name: "escrow_balance",
        description: "an escrow's deposits minus its live payouts is its balance, never negative; its paid amount \
                      is its settled payouts; released or refunded with every payout settled, its balance is 0",
        sql: "WITH d AS (SELECT escrow_id, sum(amount) AS total FROM escrow_deposits GROUP BY escrow_id),
                   p AS (SELECT escrow_id,
                                sum(amount) FILTER (WHERE status IN ('PENDING', 'SENT', 'SETTLED')) AS live,
                                sum(amount) FILTER (WHERE status = 'SETTLED') AS settled,
                                count(*) FILTER (WHERE status <> 'SETTLED') AS unsettled
                           FROM payments GROUP BY escrow_id)
              SELECT jsonb_build_object('escrow_id', e.id, 'status', e.status, 'funded_amount', e.funded_amount,
                                        'deposits', coalesce(d.total, 0), 'reserved_amount', e.reserved_amount,
                                        'live_payouts', coalesce(p.live, 0), 'paid_amount', e.paid_amount,
                                        'settled_payouts', coalesce(p.settled, 0),
                                        'balance', e.funded_amount - e.reserved_amount)
                FROM escrows e
                LEFT JOIN d ON d.escrow_id = e.id
                LEFT JOIN p ON p.escrow_id = e.id
               WHERE e.funded_amount <> coalesce(d.total, 0)
                  OR e.reserved_amount <> coalesce(p.live, 0)
                  OR e.paid_amount <> coalesce(p.settled, 0)
                  OR e.funded_amount - e.reserved_amount < 0
                  OR (e.status IN ('RELEASED', 'REFUNDED') AND coalesce(p.unsettled, 0) = 0
                      AND e.funded_amount - e.reserved_amount <> 0)",
    },
    Invariant {
        name: "milestone_payment",
        description: "a PAID milestone has exactly one SETTLED payout of its amount; no milestone has two live payouts",
        sql: "SELECT jsonb_build_object('milestone_id', m.id, 'status', m.status, 'amount', m.amount,
                                        'settled_payouts', count(p.id) FILTER (WHERE p.status = 'SETTLED'),
                                        'settled_amount', coalesce(sum(p.amount) FILTER (WHERE p.status = 'SETTLED'), 0),
                                        'live_payouts', count(p.id) FILTER (WHERE p.status IN ('PENDING', 'SENT', 'SETTLED')))
                FROM milestones m LEFT JOIN payments p ON p.milestone_id = m.id
               GROUP BY m.id, m.status, m.amount
              HAVING (m.status = 'PAID' AND (count(p.id) FILTER (WHERE p.status = 'SETTLED') <> 1
                                             OR coalesce(sum(p.amount) FILTER (WHERE p.status = 'SETTLED'), 0) <> m.amount))
                  OR count(p.id) FILTER (WHERE p.status IN ('PENDING', 'SENT', 'SETTLED')) > 1",
    },
    Invariant {
        name: "payee_limits",
        description: "a payee's day and all-time counters are the sums of its payments that hold limits",
        sql: "SELECT jsonb_build_object('payee_id', a.id, 'spent_total', a.spent_total, 'held_total', coalesce(p.total, 0),
                                        'spent_day', a.spent_day, 'spent_today', a.spent_today,
                                        'held_that_day', coalesce(p.that_day, 0))
                FROM allowed_payees a
                LEFT JOIN LATERAL (
                     SELECT sum(amount) AS total, sum(amount) FILTER (WHERE limits_day = a.spent_day) AS that_day
                       FROM payments WHERE payee_id = a.id AND limits_day IS NOT NULL) p ON true
               WHERE a.spent_total <> coalesce(p.total, 0)
                  OR (a.spent_day IS NOT NULL AND a.spent_today <> coalesce(p.that_day, 0))",
    },
    Invariant {
        name: "saka_ledger",
        description: "a wallet's balance is sum(EARN) - sum(SPEND) of its ledger; at most 1,000 manually adjusted \
                      grains per user per SAKA day",
        sql: "SELECT jsonb_build_object('user_id', w.user_id, 'balance', w.balance,
                                        'ledger', coalesce(l.earn, 0) - coalesce(l.spend, 0))
                FROM saka_wallets w
                LEFT JOIN (SELECT user_id, sum(amount) FILTER (WHERE direction = 'EARN') AS earn,
                                  sum(amount) FILTER (WHERE direction = 'SPEND') AS spend
                             FROM saka_ledger GROUP BY user_id) l ON l.user_id = w.user_id
               WHERE w.balance <> coalesce(l.earn, 0) - coalesce(l.spend, 0)
              UNION ALL
              SELECT jsonb_build_object('user_id', user_id, 'saka_day', day, 'manually_adjusted', sum(amount))
                FROM (SELECT user_id, (created_at AT TIME ZONE $1)::date AS day, amount FROM saka_ledger
                       WHERE direction = 'EARN' AND reason = 'MANUAL_ADJUST') m
               GROUP BY user_id, day HAVING sum(amount) > 1000",
    },
    Invariant {
        name: "jobs",
        description: "no job has two effects (two purchases, transfers, deposits or ledger rows; two payments for \
                      one key); no job is running past its lease for longer than the relay period",
        sql: "SELECT jsonb_build_object('job_id', job_id, 'effects', count(*))
                FROM (SELECT job_id FROM purchases UNION ALL SELECT job_id FROM transactions
                      UNION ALL SELECT job_id FROM escrow_deposits WHERE job_id IS NOT NULL
                      UNION ALL SELECT job_id FROM saka_ledger WHERE job_id IS NOT NULL) effects
               GROUP BY job_id HAVING count(*) > 1
              UNION ALL
              SELECT jsonb_build_object('idempotency_key', idempotency_key, 'payments', count(*))
                FROM payments GROUP BY idempotency_key HAVING count(*) > 1
              UNION ALL
              SELECT jsonb_build_object('job_id', id, 'kind', kind, 'status', status, 'locked_until', locked_until)
                FROM jobs
               WHERE status = 'running' AND locked_until < now() - make_interval(secs => $2)",
    },
];

pub const PSP_RECONCILIATION: &str = "psp_reconciliation";
const PSP_DESCRIPTION: &str = "every payment we hold as SENT or SETTLED is known to the PSP with the same amount and \
                               currency; every payout the PSP holds is one of our payments; no payment has more \
                               than one payout the PSP did not fail; every deposit from a funding.succeeded event \
                               matches a funding the PSP holds";

/// Violating rows kept in a run's sample (all are counted).
const SAMPLE: usize = 20;
/// Alerts raised per invariant per run at most.
const MAX_ALERTS: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvariantResult {
    pub name: String,
    pub description: String,
    pub violations: usize,
    pub sample: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Run {
    pub run_id: crate::ids::InvariantRunId,
    pub checked_at: DateTime<Utc>,
    pub invariants: Vec<InvariantResult>,
}

impl Run {
    pub fn violations(&self) -> usize {
        self.invariants.iter().map(|i| i.violations).sum()
    }
}

/// Where the PSP's side comes from; `None` skips the reconciliation (it is
/// then reported as not checked, never as clean).
pub struct PspSide<'a> {
    pub client: &'a crate::psp::client::HttpPspClient,
}

/// Our side of the reconciliation, read in the run's snapshot.
struct Ours {
    sent: Vec<(PaymentId, String, Option<String>, Decimal, String)>,
    deposits: Vec<(String, crate::ids::EscrowId, Decimal, String)>,
}

/// How long a running job's lease may have run out before the `jobs`
/// invariant counts it stuck: the relay's period (it hands such jobs over),
/// plus a margin for a slow tick.
pub fn stale_lease_secs(config: &crate::config::Config) -> f64 {
    let period = if config.relay_every_secs > 0 { config.relay_every_secs } else { 60 };
    f64::from(period) + 10.0
}

/// Runs every invariant, stores the run and raises its alerts.
pub async fn run(pool: &PgPool, psp: Option<PspSide<'_>>, saka_tz: &str, stale_after_secs: f64) -> Result<Run> {
    let tz = saka_tz.to_string();
    // First our side, in one snapshot; then the PSP's (what we hold was
    // sent to the PSP before our snapshot); then the payment ids again (a
    // payout the PSP got after our snapshot has its row by then).
    let (mut invariants, ours) = db::snapshot(pool, &(tz, stale_after_secs), |tx, (tz, stale)| {
        Box::pin(async move {
            let mut results = Vec::new();
            for inv in SQL_INVARIANTS {
                let rows: Vec<serde_json::Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(inv.sql))
                    .bind(tz.as_str())
                    .bind(*stale)
                    .fetch_all(&mut *tx)
                    .await?;
                results.push(result(inv.name, inv.description, rows));
            }
            let ours = our_side(tx).await?;
            Ok((results, ours))
        })
    })
    .await?;
    invariants.push(match psp {
        Some(side) => reconcile(pool, side, &ours).await?,
        None => InvariantResult {
            name: PSP_RECONCILIATION.into(),
            description: format!("{PSP_DESCRIPTION} (not checked: no PSP configured)"),
            violations: 0,
            sample: Vec::new(),
        },
    });
    store(pool, invariants).await
}

fn result(name: &str, description: &str, rows: Vec<serde_json::Value>) -> InvariantResult {
    InvariantResult {
        name: name.into(),
        description: description.into(),
        violations: rows.len(),
        sample: rows.into_iter().take(SAMPLE.max(MAX_ALERTS)).collect(),
    }
}

async fn our_side(tx: &mut PgConnection) -> Result<Ours> {
    let sent = sqlx::query_as(
        "SELECT id, status, psp_ref, amount, currency FROM payments WHERE status IN ('SENT', 'SETTLED')",
    )
    .fetch_all(&mut *tx)
    .await?;
    let deposits = sqlx::query_as(
        "SELECT d.event_id, d.escrow_id, d.amount, e.currency FROM escrow_deposits d JOIN escrows e ON e.id = d.escrow_id
          WHERE d.source = 'psp' AND d.event_id IS NOT NULL",
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(Ours { sent, deposits })
}

fn same_amount(theirs: &str, ours: Decimal) -> bool {
    theirs.trim().parse::<Decimal>().is_ok_and(|d| d == ours)
}

/// Compares our side with the PSP's lists; each mismatch is a violation
/// carrying both sides.
async fn reconcile(pool: &PgPool, psp: PspSide<'_>, ours: &Ours) -> Result<InvariantResult> {
    let failed = |e: crate::psp::client::PspError| Error::Unavailable(format!("reading the PSP's log: {e}"));
    let payouts: Vec<PspPayout> = psp.client.payouts().await.map_err(failed)?;
    let fundings: Vec<PspFunding> = psp.client.fundings().await.map_err(failed)?;
    let mut rows = Vec::new();
    let accepted: Vec<&PspPayout> = payouts.iter().filter(|p| p.status == "accepted").collect();
    let by_ref: HashMap<&str, &PspPayout> =
        accepted.iter().filter_map(|p| p.psp_ref.as_deref().map(|r| (r, *p))).collect();
    for (id, status, psp_ref, amount, currency) in &ours.sent {
        let ours_json = serde_json::json!({"payment_id": id, "status": status, "psp_ref": psp_ref,
                                           "amount": amount.to_string(), "currency": currency});
        let theirs = psp_ref.as_deref().and_then(|r| by_ref.get(r));
        match theirs {
            None => rows.push(serde_json::json!({"problem": "payment unknown to the PSP", "ours": ours_json})),
            Some(p)
                if p.payment_id != id.to_string() || !same_amount(&p.amount, *amount) || p.currency != *currency =>
            {
                rows.push(
                    serde_json::json!({"problem": "payment differs at the PSP", "ours": ours_json, "psp": p_json(p)}),
                )
            }
            Some(p) if status == "SETTLED" && p.outcome.as_deref() == Some("failed") => rows.push(
                serde_json::json!({"problem": "settled here, failed at the PSP", "ours": ours_json, "psp": p_json(p)}),
            ),
            Some(_) => {}
        }
    }
    let ids: HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM payments")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    for p in accepted.iter().filter(|p| !ids.contains(&p.payment_id)) {
        rows.push(serde_json::json!({"problem": "PSP payout that is not one of our payments", "psp": p_json(p)}));
    }
    // One payment, at most one payout the PSP pays: every drive of a
    // payment that the PSP accepted and did not fail counts.
    let mut live: BTreeMap<&str, Vec<&PspPayout>> = BTreeMap::new();
    for p in accepted.iter().filter(|p| p.outcome.as_deref() != Some("failed")) {
        live.entry(p.payment_id.as_str()).or_default().push(p);
    }
    for (payment_id, payouts) in live.into_iter().filter(|(_, v)| v.len() > 1) {
        rows.push(serde_json::json!({
            "problem": "payment with more than one payout the PSP did not fail", "payment_id": payment_id,
            "psp": payouts.iter().map(|p| p_json(p)).collect::<Vec<_>>(),
        }));
    }
    let by_event: HashMap<&str, &PspFunding> = fundings.iter().map(|f| (f.event_id.as_str(), f)).collect();
    for (event_id, escrow_id, amount, currency) in &ours.deposits {
        let ours_json = serde_json::json!({"event_id": event_id, "escrow_id": escrow_id,
                                           "amount": amount.to_string(), "currency": currency});
        match by_event.get(event_id.as_str()) {
            None => rows.push(serde_json::json!({"problem": "deposit without a PSP funding", "ours": ours_json})),
            Some(f)
                if f.escrow_id != escrow_id.to_string()
                    || !same_amount(&f.amount, *amount)
                    || f.currency != *currency =>
            {
                rows.push(serde_json::json!({"problem": "deposit differs from its PSP funding", "ours": ours_json,
                                             "psp": {"id": f.id, "escrow_id": f.escrow_id, "amount": f.amount,
                                                     "currency": f.currency, "event_id": f.event_id}}))
            }
            Some(_) => {}
        }
    }
    Ok(result(PSP_RECONCILIATION, PSP_DESCRIPTION, rows))
}

fn p_json(p: &PspPayout) -> serde_json::Value {
    serde_json::json!({"payment_id": p.payment_id, "idempotency_key": p.idempotency_key, "psp_ref": p.psp_ref, "amount": p.amount,
                       "currency": p.currency, "status": p.status, "outcome": p.outcome})
}

/// Stores the run and raises one alert per violating row (up to
/// [`MAX_ALERTS`] per invariant), then trims each sample.
async fn store(pool: &PgPool, mut invariants: Vec<InvariantResult>) -> Result<Run> {
    let alerted: Vec<(String, serde_json::Value)> = invariants
        .iter()
        .flat_map(|inv| inv.sample.iter().take(MAX_ALERTS).map(|row| (inv.name.clone(), row.clone())))
        .collect();
    for inv in &mut invariants {
        inv.sample.truncate(SAMPLE);
    }
    let run = Run { run_id: crate::ids::InvariantRunId::new(), checked_at: Utc::now(), invariants };
    db::serializable(pool, &(&run, &alerted), |tx, (run, alerted)| {
        Box::pin(async move {
            for (name, row) in alerted.iter() {
                let payload = serde_json::json!({"invariant": name, "run_id": run.run_id, "row": row});
                alerts::raise(tx, "INVARIANT_VIOLATED", &format!("invariant {name} violated"), None, payload).await?;
            }
            sqlx::query("INSERT INTO invariant_runs (id, checked_at, violations, result) VALUES ($1, $2, $3, $4)")
                .bind(run.run_id)
                .bind(run.checked_at)
                .bind(i32::try_from(run.violations()).unwrap_or(i32::MAX))
                .bind(serde_json::to_value(&run.invariants)?)
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
    })
    .await?;
    for inv in run.invariants.iter().filter(|i| i.violations > 0) {
        tracing::error!(invariant = %inv.name, violations = inv.violations, run_id = %run.run_id, "invariant violated");
    }
    // `kobatela_invariant_violations{invariant}` is the api's sampler's,
    // read from the stored run, so it holds between runs and across restarts.
    Ok(run)
}

/// The latest stored run, if any.
pub async fn latest(conn: &mut PgConnection) -> Result<Option<Run>> {
    let row: Option<(crate::ids::InvariantRunId, DateTime<Utc>, serde_json::Value)> =
        sqlx::query_as("SELECT id, checked_at, result FROM invariant_runs ORDER BY checked_at DESC LIMIT 1")
            .fetch_optional(conn)
            .await?;
    match row {
        Some((run_id, checked_at, result)) => {
            Ok(Some(Run { run_id, checked_at, invariants: serde_json::from_value(result)? }))
        }
        None => Ok(None),
    }
}
