//! Domain tests for payouts on a fresh database each, no HTTP: the three
//! phases (reserve, call, record), re-drives, settlements and failures in
//! any order, parallel payouts that never overdraw the balance, and the
//! child-job keys a client cannot take.

mod common;

use common::*;
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
