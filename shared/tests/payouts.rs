//! Domain tests for payouts on a fresh database each, no HTTP: the three
//! phases (reserve, call, record), re-drives, settlements and failures in
//! any order, parallel payouts that never overdraw the balance, and the
//! child-job keys a client cannot take.

mod common;

use common::*;
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use shared::ErrorCode;
use shared::db;
use shared::domain::escrow::model::PaymentKind;
use shared::domain::escrow::payouts::{self, CallReply, CallState, NewPayment, PayoutV1};
use shared::domain::escrow::proofs::Decision;
use shared::domain::escrow::state;
use shared::domain::escrow::transitions::TransitionAction;
use shared::ids::{JobId, PaymentId};
use shared::jobs::{End, JobKind, Outcome};
use shared::principal::Principal;
use shared::psp::client::{PayoutRequest, PayoutResponse, PspClient, PspError, PspPayout};
use sqlx::PgPool;

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

/// Phase 1 of the payout job asked for the payment as it stands (a re-drive
/// when it is ERROR).
async fn prepare(pool: &PgPool, id: PaymentId) -> shared::Result<Outcome> {
    let p = state::payment(&mut pool.acquire().await.expect("conn"), id).await?.expect("payment");
    prepare_job(pool, PayoutV1::of(&p)).await
}

async fn prepare_job(pool: &PgPool, job: PayoutV1) -> shared::Result<Outcome> {
    db::serializable(pool, &job, |tx, job| Box::pin(async move { payouts::prepare(tx, job).await })).await
}

async fn record(pool: &PgPool, call: CallState, reply: CallReply) -> shared::Result<Outcome> {
    db::serializable(pool, &(call, reply), |tx, (call, reply)| {
        Box::pin(async move { payouts::record_reply(tx, &Principal::system(), call, reply).await })
    })
    .await
}

fn call_state(r: shared::Result<Outcome>) -> CallState {
    match r {
        Ok(Outcome { end: End::Continue(state), .. }) => serde_json::from_value(state).expect("call state"),
        other => panic!("expected a PSP call: {other:?}"),
    }
}

async fn status(pool: &PgPool, id: PaymentId) -> String {
    sqlx::query_scalar("SELECT status FROM payments WHERE id = $1").bind(id).fetch_one(pool).await.expect("payment")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_payout_reserves_calls_with_a_stable_key_and_records_the_answer(pool: PgPool) {
    let d = deal(&pool, "40.00", "USD", &[]).await;
    d.deposit(&pool, "40.00").await;
    let parent = job(&pool, &d.client, JobKind::EscrowTransition).await;
    assert_eq!(code(&transition(&pool, d.client, &parent, d.escrow, TransitionAction::ClientApprove).await), None);
    let (id, kind, amount, st) = payments(&pool, d.escrow).await.remove(0);
    assert_eq!((kind.as_str(), amount, st.as_str()), ("RELEASE", dec("40.00"), "PENDING"));
    assert_eq!(d.money(&pool).await.1, dec("40.00"), "reserved at once");
    // The PSP refuses: ERROR, the reservation released.
    let call = call_state(prepare(&pool, id).await);
    assert_eq!((call.idempotency_key.as_str(), call.amount.as_str()), (id.to_string().as_str(), "40.00"));
    let refused = CallReply::Refused { code: "LIMIT".into(), message: "no".into() };
    assert_eq!(code(&record(&pool, call, refused).await), Some(ErrorCode::PayoutFailed));
    assert_eq!((status(&pool, id).await.as_str(), d.money(&pool).await.1), ("ERROR", Decimal::ZERO));
    // A re-drive reserves again and calls under a new key; the PSP accepts.
    let redriven = payouts::redrive(&mut pool.acquire().await.expect("conn"), id).await.map(|p| p.id);
    assert_eq!(redriven.ok(), Some(id));
    let call = call_state(prepare(&pool, id).await);
    assert_eq!(call.idempotency_key, format!("{id}-r1"));
    assert_eq!(d.money(&pool).await.1, dec("40.00"));
    let accepted = CallReply::Accepted { psp_ref: "psp-1".into() };
    assert_eq!(code(&record(&pool, call.clone(), accepted.clone()).await), None);
    assert_eq!(status(&pool, id).await, "SENT");
    // A second answer for the same call, and a phase 1 of a SENT payment, change nothing.
    assert_eq!(code(&record(&pool, call, accepted).await), None);
    assert!(matches!(prepare(&pool, id).await, Ok(Outcome { end: End::Succeeded(_), .. })));
    let not_again = payouts::redrive(&mut pool.acquire().await.expect("conn"), id).await;
    assert_eq!(refusal(&not_again), Some(ErrorCode::PaymentNotRedrivable));
    assert_eq!(audited(&pool, "PAYMENT_SENT", id).await, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_settlement_is_final_and_counted_once_whatever_the_order_of_the_events(pool: PgPool) {
    let d = deal(&pool, "30.00", "USD", &[("30.00", "DOCUMENT")]).await;
    d.deposit(&pool, "30.00").await;
    let proof = proof_in_review(&pool, &d, 1).await;
    assert_eq!(code(&decide(&pool, d.client, proof, Decision::Approve).await), None);
    let (id, ..) = payments(&pool, d.escrow).await[0];
    // The settlement comes before the PSP's reply was recorded.
    assert!(psp_says(&pool, id, true).await);
    assert!(!psp_says(&pool, id, true).await, "a second settlement changes nothing");
    assert!(!psp_says(&pool, id, false).await, "a late failure changes nothing");
    assert_eq!(code(&drive(&pool, id).await), None, "phase 1 of a settled payment is done");
    assert_eq!(status(&pool, id).await, "SETTLED");
    let (funded, reserved, paid, st) = d.money(&pool).await;
    assert_eq!((funded, reserved, paid, st.as_str()), (dec("30.00"), dec("30.00"), dec("30.00"), "RELEASED"));
    assert_eq!(d.milestone_statuses(&pool).await, vec!["PAID"]);
    assert_eq!(audited(&pool, "PAYMENT_SETTLED", id).await, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn ten_parallel_payments_never_reserve_more_than_the_balance(
    opts: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = wide_pool(opts, connect).await;
    let d = deal(&pool, "100.00", "USD", &[]).await;
    d.deposit(&pool, "100.00").await;
    let codes = at_once(10, |i| {
        let (pool, escrow) = (pool.clone(), d.escrow);
        async move {
            let r = db::serializable(&pool, &(escrow, i), |tx, (escrow, i)| {
                Box::pin(async move {
                    let e = state::load(tx, *escrow).await?;
                    let new =
                        NewPayment { kind: PaymentKind::Refund, milestone: None, payee: None, amount: dec("30.00") };
                    payouts::create_reserved(tx, &e, &new, &format!("test:{i}")).await.map(|p| p.id)
                })
            })
            .await;
            refusal(&r)
        }
    })
    .await;
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 3, "{codes:?}");
    assert!(codes.iter().flatten().all(|c| *c == ErrorCode::InsufficientEscrowBalance), "{codes:?}");
    let (funded, reserved, ..) = d.money(&pool).await;
    assert_eq!((funded, reserved), (dec("100.00"), dec("90.00")));
    assert_eq!(payments(&pool, d.escrow).await.len(), 3);
}

/// Found by the chaos soak: a re-drive's settlement that came before its
/// PSP reply was recorded kept the failed drive's PSP reference, so our
/// record named a payout the PSP had failed (reconciliation: "settled
/// here, failed at the PSP").
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_settlement_names_the_payout_that_settled_not_an_earlier_failed_one(pool: PgPool) {
    let d = deal(&pool, "40.00", "USD", &[]).await;
    d.deposit(&pool, "40.00").await;
    let parent = job(&pool, &d.client, JobKind::EscrowTransition).await;
    assert_eq!(code(&transition(&pool, d.client, &parent, d.escrow, TransitionAction::ClientApprove).await), None);
    let (id, ..) = payments(&pool, d.escrow).await.remove(0);
    // Drive 1: accepted as psp-1, then failed by the PSP.
    let call = call_state(prepare(&pool, id).await);
    assert_eq!(code(&record(&pool, call, CallReply::Accepted { psp_ref: "psp-1".into() }).await), None);
    assert!(psp_says(&pool, id, false).await);
    // Drive 2: the PSP pays it as psp-2 and says so before its reply is recorded.
    payouts::redrive(&mut pool.acquire().await.expect("conn"), id).await.expect("redrivable");
    let call = call_state(prepare(&pool, id).await);
    let settled = db::serializable(&pool, &id, |tx, id| {
        Box::pin(async move {
            let p = state::payment(tx, *id).await?.expect("payment");
            shared::domain::escrow::settlement::settle(tx, &p, Some("psp-2"), "psp").await
        })
    })
    .await;
    assert_eq!(settled.ok(), Some(true));
    assert_eq!(code(&record(&pool, call, CallReply::Accepted { psp_ref: "psp-2".into() }).await), None);
    let (st, psp_ref): (String, Option<String>) = sqlx::query_as("SELECT status, psp_ref FROM payments WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("p");
    assert_eq!((st.as_str(), psp_ref.as_deref()), ("SETTLED", Some("psp-2")));
}

/// DOMAIN.md: a PSP refusal is final until an admin re-drives. A payout
/// job retried after a transport error, that finds its payment failed by
/// the PSP's webhook meanwhile, must not drive it again on its own; and a
/// re-drive drives only the failed drive it was asked for, once.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_retried_payout_job_never_drives_a_failed_payment_again_on_its_own(pool: PgPool) {
    let d = deal(&pool, "40.00", "USD", &[]).await;
    d.deposit(&pool, "40.00").await;
    let parent = job(&pool, &d.client, JobKind::EscrowTransition).await;
    assert_eq!(code(&transition(&pool, d.client, &parent, d.escrow, TransitionAction::ClientApprove).await), None);
    let (id, ..) = payments(&pool, d.escrow).await.remove(0);
    let first_job = PayoutV1 { payment_id: id, redrive_of: None };
    // The call reached the PSP but its answer was lost; the PSP's failure
    // arrives by webhook before the job's retry.
    call_state(prepare_job(&pool, first_job.clone()).await);
    assert!(psp_says(&pool, id, false).await);
    let retry = prepare_job(&pool, first_job).await;
    assert_eq!(code(&retry), Some(ErrorCode::PayoutFailed), "{retry:?}");
    assert_eq!(
        (status(&pool, id).await.as_str(), d.money(&pool).await.1),
        ("ERROR", Decimal::ZERO),
        "not reserved again"
    );
    // An admin's re-drive drives it once; a retry of that re-drive after the
    // PSP failed it again does not drive it a third time.
    let redrive = PayoutV1 { payment_id: id, redrive_of: Some(0) };
    let call = call_state(prepare_job(&pool, redrive.clone()).await);
    assert_eq!(call.idempotency_key, format!("{id}-r1"));
    assert!(psp_says(&pool, id, false).await);
    assert_eq!(code(&prepare_job(&pool, redrive).await), Some(ErrorCode::PayoutFailed));
    assert_eq!((status(&pool, id).await.as_str(), d.money(&pool).await.1), ("ERROR", Decimal::ZERO));
    assert_eq!(audited(&pool, "PAYMENT_REDRIVEN", id).await, 1);
}

/// The PSP as `payouts::call` sees it, in memory: what it holds under
/// each key, and the payouts asked of it.
#[derive(Default)]
struct HeldPsp {
    held: std::sync::Mutex<std::collections::HashMap<String, PspPayout>>,
    sent: std::sync::Mutex<Vec<String>>,
}

impl HeldPsp {
    fn hold(&self, key: &str, payment: PaymentId, psp_ref: &str, outcome: &str) {
        let payout = PspPayout {
            seq: 1,
            payment_id: payment.to_string(),
            idempotency_key: Some(key.to_string()),
            psp_ref: Some(psp_ref.to_string()),
            amount: "40.00".into(),
            currency: "USD".into(),
            status: "accepted".into(),
            outcome: Some(outcome.to_string()),
        };
        self.held.lock().expect("lock").insert(key.to_string(), payout);
    }
}

impl PspClient for HeldPsp {
    fn payout<'a>(&'a self, req: &'a PayoutRequest) -> BoxFuture<'a, Result<PayoutResponse, PspError>> {
        self.sent.lock().expect("lock").push(req.idempotency_key.clone());
        let psp_ref = format!("psp-{}", req.idempotency_key);
        Box::pin(async move { Ok(PayoutResponse { psp_ref, status: "accepted".into() }) })
    }

    fn payout_status<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<PspPayout>, PspError>> {
        let held = self.held.lock().expect("lock").get(key).cloned();
        Box::pin(async move { Ok(held) })
    }
}

/// A released escrow of 40.00 whose payment was driven once (accepted as
/// `psp-1`) and failed by the PSP: ERROR, ready for a re-drive.
async fn failed_once(pool: &PgPool) -> (Deal, PaymentId) {
    let d = deal(pool, "40.00", "USD", &[]).await;
    d.deposit(pool, "40.00").await;
    let parent = job(pool, &d.client, JobKind::EscrowTransition).await;
    assert_eq!(code(&transition(pool, d.client, &parent, d.escrow, TransitionAction::ClientApprove).await), None);
    let (id, ..) = payments(pool, d.escrow).await.remove(0);
    let call = call_state(prepare(pool, id).await);
    assert!(call.earlier.is_empty(), "a first drive asks about nothing");
    assert_eq!(code(&record(pool, call, CallReply::Accepted { psp_ref: "psp-1".into() }).await), None);
    assert_eq!(code(&psp_event(pool, payment_event(id, false, "psp-1")).await), None);
    assert_eq!(status(pool, id).await, "ERROR");
    (d, id)
}

async fn alert_payload(pool: &PgPool, kind: &str) -> Vec<serde_json::Value> {
    sqlx::query_scalar("SELECT payload FROM alerts WHERE type = $1 ORDER BY created_at")
        .bind(kind)
        .fetch_all(pool)
        .await
        .expect("alerts")
}

/// Found from outside (issue 15): the PSP may pay a drive it reported
/// failed. When it does after a re-drive was paid, both drives paid; the
/// late settlement must move nothing (the money is counted once) and tell
/// ops, with both drives, instead of passing unnoticed.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_late_settlement_of_a_failed_first_drive_after_a_paid_redrive_moves_nothing_and_raises_psp_double_payout(
    pool: PgPool,
) {
    let (d, id) = failed_once(&pool).await;
    let call = call_state(prepare_job(&pool, PayoutV1 { payment_id: id, redrive_of: Some(0) }).await);
    assert_eq!(call.idempotency_key, format!("{id}-r1"));
    assert_eq!(call.earlier.iter().map(|e| e.idempotency_key.clone()).collect::<Vec<_>>(), vec![id.to_string()]);
    assert_eq!(code(&record(&pool, call, CallReply::Accepted { psp_ref: "psp-2".into() }).await), None);
    assert_eq!(code(&psp_event(&pool, payment_event(id, true, "psp-2")).await), None);
    let before = d.money(&pool).await;
    assert_eq!((before.2, before.3.as_str()), (dec("40.00"), "RELEASED"));
    // The PSP now settles the first drive too.
    let late = succeeded(psp_event(&pool, payment_event(id, true, "psp-1")).await);
    assert_eq!(late["applied"], false, "{late}");
    assert_eq!(d.money(&pool).await, before, "counted once");
    let (st, psp_ref): (String, Option<String>) = sqlx::query_as("SELECT status, psp_ref FROM payments WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("p");
    assert_eq!((st.as_str(), psp_ref.as_deref()), ("SETTLED", Some("psp-2")), "the current drive's");
    let alerts = alert_payload(&pool, "PSP_DOUBLE_PAYOUT").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["current_drive"]["psp_ref"], "psp-2");
    assert_eq!(alerts[0]["other_drive"]["psp_ref"], "psp-1");
    assert_eq!(alerts[0]["other_drive"]["drive"], 0);
}

/// A failure of a drive the payment has moved past (a late or replayed
/// `payment.failed` of the first drive while the re-drive is SENT) must
/// not fail the re-drive: that would release a reservation the PSP is
/// paying.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_failure_of_an_earlier_drive_never_fails_the_current_one(pool: PgPool) {
    let (d, id) = failed_once(&pool).await;
    let call = call_state(prepare_job(&pool, PayoutV1 { payment_id: id, redrive_of: Some(0) }).await);
    assert_eq!(code(&record(&pool, call, CallReply::Accepted { psp_ref: "psp-2".into() }).await), None);
    let stale = succeeded(psp_event(&pool, payment_event(id, false, "psp-1")).await);
    assert_eq!(stale["applied"], false);
    assert_eq!((status(&pool, id).await.as_str(), d.money(&pool).await.1), ("SENT", dec("40.00")), "still reserved");
    // The current drive's own failure still counts.
    assert_eq!(succeeded(psp_event(&pool, payment_event(id, false, "psp-2")).await)["applied"], true);
    assert_eq!((status(&pool, id).await.as_str(), d.money(&pool).await.1), ("ERROR", Decimal::ZERO));
}

/// DOMAIN.md: before a re-drive, the PSP is asked about the earlier drives;
/// one it holds as accepted or paid is adopted, never paid again.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_redrive_adopts_an_earlier_drive_the_psp_paid_instead_of_paying_again(pool: PgPool) {
    let (d, id) = failed_once(&pool).await;
    let psp = HeldPsp::default();
    psp.hold(&id.to_string(), id, "psp-1", "settled");
    let call = call_state(prepare_job(&pool, PayoutV1 { payment_id: id, redrive_of: Some(0) }).await);
    let reply = payouts::call(&psp, &call).await.expect("an answer");
    assert!(matches!(&reply, CallReply::Adopted { drive: 0, settled: true, .. }), "{reply:?}");
    assert!(psp.sent.lock().expect("lock").is_empty(), "nothing paid again");
    assert_eq!(code(&record(&pool, call, reply).await), None);
    let (funded, reserved, paid, st) = d.money(&pool).await;
    assert_eq!((funded, reserved, paid, st.as_str()), (dec("40.00"), dec("40.00"), dec("40.00"), "RELEASED"));
    let (status, psp_ref, drive): (String, Option<String>, i32) =
        sqlx::query_as("SELECT status, psp_ref, drive FROM payments WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("p");
    assert_eq!((status.as_str(), psp_ref.as_deref(), drive), ("SETTLED", Some("psp-1"), 0));
    let drives: Vec<(i32, Option<String>)> =
        sqlx::query_as("SELECT drive, psp_status FROM payment_drives WHERE payment_id = $1 ORDER BY drive")
            .bind(id)
            .fetch_all(&pool)
            .await
            .expect("drives");
    assert_eq!(drives, vec![(0, Some("settled".into())), (1, Some("not_sent".into()))]);
    // Its settlement webhook, arriving now, changes nothing and alerts nobody.
    assert_eq!(succeeded(psp_event(&pool, payment_event(id, true, "psp-1")).await)["applied"], false);
    assert_eq!(alert_payload(&pool, "PSP_DOUBLE_PAYOUT").await.len(), 0);
    assert_eq!(d.money(&pool).await.2, dec("40.00"));
}

/// The other answers: an earlier drive the PSP failed, or never got, is
/// driven again under the new key; an earlier one it still holds as
/// accepted (not paid yet) is adopted as SENT.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_redrive_pays_again_only_when_every_earlier_drive_failed_or_never_reached_the_psp(pool: PgPool) {
    let (_, failed) = failed_once(&pool).await;
    let psp = HeldPsp::default();
    psp.hold(&failed.to_string(), failed, "psp-1", "failed");
    let call = call_state(prepare_job(&pool, PayoutV1 { payment_id: failed, redrive_of: Some(0) }).await);
    let reply = payouts::call(&psp, &call).await.expect("an answer");
    assert!(matches!(&reply, CallReply::Accepted { .. }), "{reply:?}");
    assert_eq!(*psp.sent.lock().expect("lock"), vec![format!("{failed}-r1")]);

    let (_, unknown) = failed_once(&pool).await;
    let call = call_state(prepare_job(&pool, PayoutV1 { payment_id: unknown, redrive_of: Some(0) }).await);
    assert!(matches!(payouts::call(&psp, &call).await, Ok(CallReply::Accepted { .. })));
    assert_eq!(psp.sent.lock().expect("lock").len(), 2, "a drive the PSP never got is driven again");

    let (d, pending) = failed_once(&pool).await;
    psp.hold(&pending.to_string(), pending, "psp-1", "pending");
    let call = call_state(prepare_job(&pool, PayoutV1 { payment_id: pending, redrive_of: Some(0) }).await);
    let reply = payouts::call(&psp, &call).await.expect("an answer");
    assert!(matches!(&reply, CallReply::Adopted { drive: 0, settled: false, .. }), "{reply:?}");
    assert_eq!(code(&record(&pool, call, reply).await), None);
    assert_eq!(status(&pool, pending).await, "SENT");
    assert_eq!(d.money(&pool).await.1, dec("40.00"), "reserved for the adopted drive");
    assert_eq!(psp.sent.lock().expect("lock").len(), 2, "not sent");
}

/// DOMAIN.md: our credentials refused (401/403) raise `PSP_AUTH_FAILED`
/// once per outage, not once per payout; the next answer that is not one
/// ends the outage, and the next refusal starts a new one.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn refused_credentials_raise_one_alert_per_outage(pool: PgPool) {
    use shared::domain::psp::health;
    let fail = |pool: PgPool| async move {
        db::serializable(&pool, &(), |tx, _| Box::pin(health::auth_failed(tx, 401, "bad key"))).await.expect("tx")
    };
    let started = at_once(4, |_| fail(pool.clone())).await;
    assert_eq!(started.iter().filter(|s| **s).count(), 1, "{started:?}");
    assert!(!fail(pool.clone()).await);
    assert_eq!(alerts(&pool, "PSP_AUTH_FAILED").await, 1);
    let mut conn = pool.acquire().await.expect("conn");
    assert!(health::auth_failing_since(&mut conn).await.expect("read").is_some());
    assert!(health::answered(&mut conn).await.expect("answered"), "the outage ends");
    assert!(!health::answered(&mut conn).await.expect("answered"), "once");
    drop(conn);
    assert!(fail(pool.clone()).await, "a new outage");
    assert_eq!(alerts(&pool, "PSP_AUTH_FAILED").await, 2);
}
