//! Domain tests for the escrow money flows where a second flow touches the
//! money: a release pays everything (milestones and the remainder), usage
//! spends never take what milestones hold, nothing moves a milestone after
//! a release, re-drives and late settlements take the payee's limits again,
//! and the deadline sweep releases escrow by escrow.

mod common;

use common::{Deal, as_job, code, deal, dec, job, money, succeeded, user};
use rust_decimal::Decimal;
use shared::ErrorCode;
use shared::db;
use shared::domain::escrow::payees::{self, NewPayee, UsageSpendV1};
use shared::domain::escrow::payouts::{self, CallReply, CallState, PayoutV1};
use shared::domain::escrow::proofs::{self, Decision};
use shared::domain::escrow::transitions::{self, EscrowTransitionV1, TransitionAction};
use shared::domain::escrow::{deadlines, settlement, state};
use shared::ids::{EscrowId, JobId, PaymentId, ProofId};
use shared::jobs::{End, JobKind, JobRow, Outcome};
use shared::principal::{Principal, Role};
use sqlx::PgPool;

async fn transition(
    pool: &PgPool,
    who: Principal,
    job: &JobRow,
    escrow: EscrowId,
    action: TransitionAction,
) -> shared::Result<Outcome> {
    let ctx = (who, job.id, EscrowTransitionV1 { escrow_id: escrow, action, note: None });
    as_job(pool, job, &ctx, |tx, (who, job, cmd)| Box::pin(transitions::transition(tx, who, *job, cmd))).await
}

/// (id, kind, amount, status) of an escrow's payments, oldest first.
async fn payments(pool: &PgPool, escrow: EscrowId) -> Vec<(PaymentId, String, Decimal, String)> {
    sqlx::query_as("SELECT id, kind, amount, status FROM payments WHERE escrow_id = $1 ORDER BY created_at, id")
        .bind(escrow)
        .fetch_all(pool)
        .await
        .expect("payments")
}

/// A payout job's first phase and the PSP's acceptance.
async fn drive(pool: &PgPool, id: PaymentId) -> shared::Result<Outcome> {
    let first = db::serializable(pool, &id, |tx, id| {
        Box::pin(async move { payouts::prepare(tx, &PayoutV1 { payment_id: *id }).await })
    })
    .await?;
    let Outcome { end: End::Continue(state), .. } = first else { return Ok(first) };
    let state: CallState = serde_json::from_value(state).expect("call state");
    let ctx = (state, CallReply::Accepted { psp_ref: format!("psp-{id}-{}", uuid::Uuid::new_v4()) });
    db::serializable(pool, &ctx, |tx, (state, reply)| {
        Box::pin(async move { payouts::record_reply(tx, &Principal::system(), state, reply).await })
    })
    .await
}

/// What a `payment.settled` or `payment.failed` webhook does.
async fn psp_says(pool: &PgPool, id: PaymentId, settled: bool) -> bool {
    db::serializable(pool, &(id, settled), |tx, (id, settled)| {
        Box::pin(async move {
            let p = state::payment(tx, *id).await?.expect("payment");
            if *settled {
                settlement::settle(tx, &p, None, "psp").await
            } else {
                settlement::fail(tx, &p, "PSP_FAILED", "psp").await
            }
        })
    })
    .await
    .expect("webhook applied")
}

async fn alerts(pool: &PgPool, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM alerts WHERE type = $1").bind(kind).fetch_one(pool).await.expect("alerts")
}

/// A proof in review for milestone `idx`, as a validation would leave it.
async fn proof_in_review(pool: &PgPool, d: &Deal, idx: i32) -> ProofId {
    let id = ProofId::new();
    sqlx::query(
        "WITH m AS (UPDATE milestones SET status = 'PENDING_REVIEW' WHERE escrow_id = $2 AND idx = $3 RETURNING id)
         INSERT INTO proofs (id, escrow_id, milestone_id, sha256, storage_key, size_bytes, source, uploaded_by, status)
         SELECT $1, $2, m.id, $1::text, 'proofs/x/' || $1::text, 10, 'whatsapp', $4, 'PENDING_REVIEW' FROM m",
    )
    .bind(id)
    .bind(d.escrow)
    .bind(idx)
    .bind(d.provider.user_id)
    .execute(pool)
    .await
    .expect("proof in review");
    id
}

async fn decide(pool: &PgPool, who: Principal, proof: ProofId, decision: Decision) -> shared::Result<Outcome> {
    let parent = job(pool, &who, JobKind::ProofValidation).await;
    let ctx = (who, parent.id, proof, decision);
    as_job(pool, &parent, &ctx, |tx, (who, job, proof, decision)| {
        Box::pin(proofs::decide(tx, who, *job, *proof, *decision, None))
    })
    .await
}

async fn allow(
    pool: &PgPool,
    d: &Deal,
    payee: &str,
    daily: Option<&str>,
    total: Option<&str>,
) -> shared::Result<shared::domain::escrow::limits::PayeeOut> {
    let new = NewPayee {
        escrow_id: d.escrow,
        payee_ref: payee.into(),
        label: payee.into(),
        daily_limit: daily.map(dec),
        total_limit: total.map(dec),
    };
    db::serializable(pool, &(d.client, new), |tx, (who, new)| Box::pin(payees::allow(tx, who, new))).await
}

/// A usage spend; answers its payment.
async fn spend(pool: &PgPool, d: &Deal, payee: &str, amount: &str) -> Result<PaymentId, ErrorCode> {
    let parent = job(pool, &d.client, JobKind::UsageSpend).await;
    let cmd =
        UsageSpendV1 { escrow_id: d.escrow, payee_ref: payee.into(), money: money(amount, &d.currency), note: None };
    let ctx = (d.client, parent.id, cmd);
    let r = as_job(pool, &parent, &ctx, |tx, (who, job, cmd)| Box::pin(payees::spend(tx, who, *job, cmd))).await;
    match code(&r) {
        None => Ok(succeeded(r)["payment_id"].as_str().and_then(|s| s.parse().ok()).expect("payment id")),
        Some(refused) => Err(refused),
    }
}

/// (spent_today, spent_total) of a payee.
async fn limits(pool: &PgPool, d: &Deal, payee: &str) -> (Decimal, Decimal) {
    sqlx::query_as("SELECT spent_today, spent_total FROM allowed_payees WHERE escrow_id = $1 AND payee_ref = $2")
        .bind(d.escrow)
        .bind(payee)
        .fetch_one(pool)
        .await
        .expect("payee")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_approval_pays_the_unpaid_milestones_and_the_remainder_so_the_escrow_ends_at_zero(pool: PgPool) {
    let d = deal(&pool, "100.00", "USD", &[("30.00", "PHOTO"), ("20.00", "DOCUMENT")]).await;
    d.deposit(&pool, "100.00").await;
    let parent = job(&pool, &d.client, JobKind::EscrowTransition).await;
    let r = transition(&pool, d.client, &parent, d.escrow, TransitionAction::ClientApprove).await;
    assert_eq!(code(&r), None, "{r:?}");
    let pays = payments(&pool, d.escrow).await;
    let shape: Vec<(&str, Decimal)> = pays.iter().map(|(_, k, a, _)| (k.as_str(), *a)).collect();
    assert_eq!(shape, vec![("MILESTONE", dec("30.00")), ("MILESTONE", dec("20.00")), ("RELEASE", dec("50.00"))]);
    let (funded, reserved, _, status) = d.money(&pool).await;
    assert_eq!((funded - reserved, status.as_str()), (Decimal::ZERO, "RELEASED"), "no money stranded");
    assert_eq!(d.milestone_statuses(&pool).await, vec!["APPROVED", "APPROVED"]);
    let children: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE parent_job_id = $1 AND kind = 'payout'")
        .bind(parent.id)
        .fetch_one(&pool)
        .await
        .expect("children");
    assert_eq!(children, 3);
    for (id, ..) in &pays {
        assert_eq!(code(&drive(&pool, *id).await), None);
        assert!(psp_says(&pool, *id, true).await);
    }
    let (funded, reserved, paid, status) = d.money(&pool).await;
    assert_eq!((funded, reserved, paid, status.as_str()), (dec("100.00"), dec("100.00"), dec("100.00"), "RELEASED"));
    assert_eq!(d.milestone_statuses(&pool).await, vec!["PAID", "PAID"]);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn every_milestone_paid_with_a_remainder_left_waits_for_the_release_that_pays_it(pool: PgPool) {
    let d = deal(&pool, "50.00", "USD", &[("40.00", "DOCUMENT")]).await;
    d.deposit(&pool, "50.00").await;
    let proof = proof_in_review(&pool, &d, 1).await;
    assert_eq!(code(&decide(&pool, d.client, proof, Decision::Approve).await), None);
    let (id, ..) = payments(&pool, d.escrow).await[0];
    drive(&pool, id).await.expect("driven");
    psp_says(&pool, id, true).await;
    let (funded, reserved, _, status) = d.money(&pool).await;
    assert_eq!((funded - reserved, status.as_str()), (dec("10.00"), "FUNDED"), "10.00 is left, so not RELEASED yet");
    let parent = job(&pool, &d.client, JobKind::EscrowTransition).await;
    assert_eq!(code(&transition(&pool, d.client, &parent, d.escrow, TransitionAction::ClientApprove).await), None);
    let pays = payments(&pool, d.escrow).await;
    assert_eq!((pays.len(), pays[1].1.as_str(), pays[1].2), (2, "RELEASE", dec("10.00")));
    let (funded, reserved, _, status) = d.money(&pool).await;
    assert_eq!((funded - reserved, status.as_str()), (Decimal::ZERO, "RELEASED"));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_usage_spend_never_takes_money_promised_to_milestones(pool: PgPool) {
    let d = deal(&pool, "100.00", "USD", &[("60.00", "DOCUMENT")]).await;
    d.deposit(&pool, "100.00").await;
    allow(&pool, &d, "shop", None, None).await.expect("payee");
    assert_eq!(spend(&pool, &d, "shop", "40.01").await, Err(ErrorCode::InsufficientEscrowBalance));
    spend(&pool, &d, "shop", "40.00").await.expect("the 40.00 no milestone holds");
    assert_eq!(spend(&pool, &d, "shop", "0.01").await, Err(ErrorCode::InsufficientEscrowBalance));
    // Approving the proof finds its money.
    let proof = proof_in_review(&pool, &d, 1).await;
    let r = decide(&pool, d.client, proof, Decision::Approve).await;
    assert_eq!(code(&r), None, "{r:?}");
    let pays = payments(&pool, d.escrow).await;
    let shape: Vec<(&str, Decimal, &str)> = pays.iter().map(|(_, k, a, s)| (k.as_str(), *a, s.as_str())).collect();
    assert_eq!(shape, vec![("USAGE", dec("40.00"), "PENDING"), ("MILESTONE", dec("60.00"), "PENDING")]);
    let (funded, reserved, ..) = d.money(&pool).await;
    assert_eq!(funded - reserved, Decimal::ZERO);
    // Once the milestone's payment is live, its money is no longer held twice.
    let e = deal(&pool, "100.00", "USD", &[("60.00", "DOCUMENT")]).await;
    e.deposit(&pool, "100.00").await;
    allow(&pool, &e, "shop", None, None).await.expect("payee");
    let proof = proof_in_review(&pool, &e, 1).await;
    decide(&pool, e.client, proof, Decision::Approve).await.expect("approved");
    spend(&pool, &e, "shop", "40.00").await.expect("the rest");
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
    for decision in [Decision::Reject, Decision::Approve] {
        assert_eq!(code(&decide(&pool, d.admin, in_review, decision).await), Some(ErrorCode::EscrowNotActive));
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
    let store = shared::storage::LocalDirStore::new(std::env::temp_dir().join("kobatela-none"));
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

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_redrive_or_a_late_settlement_takes_the_payee_limits_again(pool: PgPool) {
    let d = deal(&pool, "100.00", "USD", &[]).await;
    d.deposit(&pool, "100.00").await;
    allow(&pool, &d, "shop", Some("30.00"), Some("50.00")).await.expect("payee");
    let a = spend(&pool, &d, "shop", "30.00").await.expect("spend a");
    drive(&pool, a).await.expect("sent");
    assert!(psp_says(&pool, a, false).await, "a fails");
    assert_eq!(limits(&pool, &d, "shop").await, (Decimal::ZERO, Decimal::ZERO), "given back");
    let b = spend(&pool, &d, "shop", "30.00").await.expect("spend b");
    assert_eq!(limits(&pool, &d, "shop").await, (dec("30.00"), dec("30.00")));
    // Re-driving a would pay 60.00 today against a daily limit of 30.00.
    assert_eq!(code(&drive(&pool, a).await), Some(ErrorCode::DailyLimitReached));
    assert_eq!(payments(&pool, d.escrow).await[0].3, "ERROR", "a stays failed");
    assert_eq!(limits(&pool, &d, "shop").await, (dec("30.00"), dec("30.00")));
    // The PSP paid a after all: recorded, counted in the balance, and the
    // limits that cannot hold it raise an alert.
    assert!(psp_says(&pool, a, true).await);
    assert_eq!(payments(&pool, d.escrow).await[0].3, "SETTLED");
    assert_eq!(alerts(&pool, "PAYEE_LIMIT_OVERRUN").await, 1);
    assert_eq!(limits(&pool, &d, "shop").await, (dec("30.00"), dec("30.00")), "never past the limits");
    let (funded, reserved, paid, _) = d.money(&pool).await;
    assert_eq!((funded, reserved, paid), (dec("100.00"), dec("60.00"), dec("30.00")));
    // Tomorrow b fails and is re-driven: it takes its limits again (day and total).
    drive(&pool, b).await.expect("sent");
    assert!(psp_says(&pool, b, false).await);
    sqlx::query("UPDATE allowed_payees SET spent_day = spent_day - 1").execute(&pool).await.expect("a day passes");
    assert_eq!(limits(&pool, &d, "shop").await.1, Decimal::ZERO);
    assert_eq!(code(&drive(&pool, b).await), None);
    let day_counter: (Decimal, Decimal, Option<chrono::NaiveDate>) =
        sqlx::query_as("SELECT spent_today, spent_total, spent_day FROM allowed_payees")
            .fetch_one(&pool)
            .await
            .expect("payee");
    assert_eq!(
        (day_counter.0, day_counter.1, day_counter.2),
        (dec("30.00"), dec("30.00"), Some(chrono::Utc::now().date_naive()))
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_late_settlement_the_balance_cannot_hold_is_recorded_with_an_alert(pool: PgPool) {
    let d = deal(&pool, "50.00", "USD", &[]).await;
    d.deposit(&pool, "50.00").await;
    allow(&pool, &d, "shop", None, None).await.expect("payee");
    let a = spend(&pool, &d, "shop", "50.00").await.expect("spend a");
    drive(&pool, a).await.expect("sent");
    assert!(psp_says(&pool, a, false).await);
    let b = spend(&pool, &d, "shop", "50.00").await.expect("spend b takes the freed balance");
    drive(&pool, b).await.expect("sent");
    assert!(psp_says(&pool, a, true).await, "recorded: the PSP paid");
    assert_eq!(alerts(&pool, "ESCROW_OVERDRAWN").await, 1);
    let (funded, reserved, paid, _) = d.money(&pool).await;
    assert_eq!((funded, reserved, paid), (dec("50.00"), dec("50.00"), Decimal::ZERO), "the constraints still hold");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_deadline_sweep_makes_one_job_per_escrow_and_a_refusal_holds_back_no_other(pool: PgPool) {
    let stuck = deal(&pool, "40.00", "USD", &[("40.00", "DOCUMENT")]).await;
    let fine = deal(&pool, "25.00", "USD", &[]).await;
    for (d, amount) in [(&stuck, "40.00"), (&fine, "25.00")] {
        d.deposit(&pool, amount).await;
        sqlx::query("UPDATE escrows SET deadline_at = now() - interval '1 minute' WHERE id = $1")
            .bind(d.escrow)
            .execute(&pool)
            .await
            .expect("past its deadline");
    }
    // The stuck escrow's balance is taken by a payment in flight, so paying
    // its milestone is refused.
    sqlx::query(
        "WITH e AS (UPDATE escrows SET reserved_amount = funded_amount WHERE id = $1 RETURNING id, currency)
         INSERT INTO payments (id, escrow_id, kind, recipient, amount, currency, idempotency_key)
         SELECT $2, e.id, 'USAGE', 'elsewhere', 40.00, e.currency, 'hand-made' FROM e",
    )
    .bind(stuck.escrow)
    .bind(PaymentId::new())
    .execute(&pool)
    .await
    .expect("a payment in flight");
    let sweep = job(&pool, &Principal::system(), JobKind::EscrowDeadlines).await;
    let made = succeeded(as_job(&pool, &sweep, &(), |tx, _| Box::pin(deadlines::release_due(tx))).await);
    assert_eq!(made["enqueued"], 2);
    let children: Vec<JobRow> = {
        let ids: Vec<JobId> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE parent_job_id = $1 AND kind = 'escrow_transition'")
                .bind(sweep.id)
                .fetch_all(&pool)
                .await
                .expect("children");
        let mut rows = Vec::new();
        for id in ids {
            let mut conn = pool.acquire().await.expect("conn");
            rows.push(shared::jobs::record::get(&mut conn, id).await.expect("get").expect("row"));
        }
        rows
    };
    assert_eq!(children.len(), 2);
    let mut refused = Vec::new();
    for child in &children {
        let cmd: EscrowTransitionV1 = child.payload().expect("payload");
        let r = transition(&pool, child.principal().expect("a known role"), child, cmd.escrow_id, cmd.action).await;
        if let Some(c) = code(&r) {
            refused.push((cmd.escrow_id, c));
        }
    }
    assert_eq!(refused, vec![(stuck.escrow, ErrorCode::InsufficientEscrowBalance)]);
    assert_eq!(alerts(&pool, "ESCROW_DEADLINE_REFUSED").await, 1);
    assert_eq!(stuck.money(&pool).await.3, "FUNDED");
    let (funded, reserved, _, status) = fine.money(&pool).await;
    assert_eq!((funded - reserved, status.as_str()), (Decimal::ZERO, "RELEASED"), "the other escrow was released");
    // The same hour's sweep makes no second job (and no second alert).
    let again = job(&pool, &Principal::system(), JobKind::EscrowDeadlines).await;
    let made = succeeded(as_job(&pool, &again, &(), |tx, _| Box::pin(deadlines::release_due(tx))).await);
    assert_eq!(made["enqueued"], 1, "only the stuck one is still due");
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'escrow_transition'")
        .fetch_one(&pool)
        .await
        .expect("jobs");
    assert_eq!(jobs, 2, "its job of this hour is the one that was refused");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn payee_limits_are_checked_in_the_escrow_currency_scale(pool: PgPool) {
    let d = deal(&pool, "50000", "XOF", &[]).await;
    for (daily, total) in [(Some("10.50"), None), (None, Some("0.5")), (Some("100.01"), Some("200"))] {
        let r = allow(&pool, &d, "shop", daily, total).await;
        assert!(matches!(&r, Err(shared::Error::Problem(p)) if p.code == ErrorCode::AmountInvalid), "{r:?}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM allowed_payees").fetch_one(&pool).await.expect("payees");
    assert_eq!(rows, 0, "no limit was stored rounded or with cents XOF does not have");
    let ok = allow(&pool, &d, "shop", Some("1000"), Some("5000.00")).await.expect("whole francs");
    assert_eq!((ok.daily_limit.as_deref(), ok.total_limit.as_deref()), (Some("1000"), Some("5000")));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_client_cannot_take_the_key_of_a_payout_its_own_approval_needs(pool: PgPool) {
    let d = deal(&pool, "30.00", "USD", &[("30.00", "DOCUMENT")]).await;
    d.deposit(&pool, "30.00").await;
    let proof = proof_in_review(&pool, &d, 1).await;
    decide(&pool, d.client, proof, Decision::Approve).await.expect("approved");
    let (payment, ..) = payments(&pool, d.escrow).await[0];
    drive(&pool, payment).await.expect("sent");
    assert!(psp_says(&pool, payment, false).await, "the payout failed");
    // The client, knowing the payment and its attempts, takes the key the
    // re-drive's payout job will use, with a request of their own.
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM payments WHERE id = $1")
        .bind(payment)
        .fetch_one(&pool)
        .await
        .expect("p");
    let squat = shared::jobs::NewJob::new(
        JobKind::EscrowDeposit,
        &serde_json::json!({"escrow_id": d.escrow, "amount": "1.00"}),
        &d.client,
        Some(format!("payout:{payment}:{attempts}")),
    )
    .expect("job");
    let mut conn = pool.acquire().await.expect("conn");
    shared::jobs::record::insert(&mut conn, &squat).await.expect("the client's own key");
    drop(conn);
    // Approving the escrow pays the failed milestone again: not refused.
    let parent = job(&pool, &d.client, JobKind::EscrowTransition).await;
    let r = transition(&pool, d.client, &parent, d.escrow, TransitionAction::ClientApprove).await;
    assert_eq!(code(&r), None, "{r:?}");
    let child: (String, Option<JobId>) =
        sqlx::query_as("SELECT kind, parent_job_id FROM jobs WHERE idempotency_key = $1 AND parent_job_id IS NOT NULL")
            .bind(format!("payout:{payment}:{attempts}"))
            .fetch_one(&pool)
            .await
            .expect("the payout job");
    assert_eq!(child, ("payout".to_string(), Some(parent.id)));
    let (funded, reserved, _, status) = d.money(&pool).await;
    assert_eq!(
        (funded - reserved, status.as_str()),
        (Decimal::ZERO, "RELEASED"),
        "the milestone's money is reserved again"
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn no_escrow_money_moves_once_a_party_is_inactive(pool: PgPool) {
    let d = deal(&pool, "50.00", "USD", &[]).await;
    d.deposit(&pool, "20.00").await;
    allow(&pool, &d, "shop", None, None).await.expect("payee");
    sqlx::query("UPDATE users SET is_active = false WHERE id = $1")
        .bind(d.provider.user_id)
        .execute(&pool)
        .await
        .expect("off");
    let cmd = shared::domain::escrow::deposits::EscrowDepositV1 { escrow_id: d.escrow, money: money("30.00", "USD") };
    let r = db::serializable(&pool, &(d.client, cmd), |tx, (who, cmd)| {
        Box::pin(shared::domain::escrow::deposits::deposit(
            tx,
            who,
            shared::domain::escrow::deposits::Source::Job(JobId::new()),
            cmd,
        ))
    })
    .await;
    assert!(matches!(&r, Err(shared::Error::Problem(p)) if p.code == ErrorCode::Forbidden), "{r:?}");
    // Make it FUNDED behind the rules' back to try the other flows.
    sqlx::query("UPDATE escrows SET funded_amount = 50.00, status = 'FUNDED' WHERE id = $1")
        .bind(d.escrow)
        .execute(&pool)
        .await
        .expect("funded");
    assert_eq!(spend(&pool, &d, "shop", "10.00").await, Err(ErrorCode::Forbidden));
    let parent = job(&pool, &d.client, JobKind::EscrowTransition).await;
    for action in [TransitionAction::ClientApprove, TransitionAction::ClientReject, TransitionAction::MarkDelivered] {
        let who = if action == TransitionAction::MarkDelivered { d.provider } else { d.client };
        assert_eq!(code(&transition(&pool, who, &parent, d.escrow, action).await), Some(ErrorCode::Forbidden));
    }
    let admin = user(&pool, Role::Admin).await;
    let r = transition(&pool, admin, &parent, d.escrow, TransitionAction::ClientApprove).await;
    assert_eq!(code(&r), Some(ErrorCode::Forbidden), "not even for an admin");
    assert!(payments(&pool, d.escrow).await.is_empty());
    let (funded, reserved, _, status) = d.money(&pool).await;
    assert_eq!((funded, reserved, status.as_str()), (dec("50.00"), Decimal::ZERO, "FUNDED"));
}
