//! Domain tests for escrows on a fresh database each, no HTTP: creation,
//! milestones, deposits (parallel ones never over-fund), transitions (a
//! release pays everything, milestones and the remainder), the deadline
//! sweep, and inactive parties.

mod common;

use common::*;
use rust_decimal::Decimal;
use shared::ErrorCode;
use shared::db;
use shared::domain::escrow::deadlines;
use shared::domain::escrow::deposits::{self, EscrowDepositV1, Source};
use shared::domain::escrow::escrows::{self, NewEscrow};
use shared::domain::escrow::milestones::{self, NewMilestone};
use shared::domain::escrow::model::EscrowOut;
use shared::domain::escrow::proofs::Decision;
use shared::domain::escrow::transitions::{EscrowTransitionV1, TransitionAction};
use shared::ids::{JobId, PaymentId};
use shared::jobs::{JobKind, JobRow};
use shared::principal::{Principal, Role};
use sqlx::PgPool;

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

async fn create(pool: &PgPool, who: Principal, new: NewEscrow) -> shared::Result<EscrowOut> {
    db::serializable(pool, &(who, new), |tx, (who, new)| Box::pin(escrows::create(tx, who, new))).await
}

fn new_escrow(client: &Principal, provider: &Principal, total: &str) -> NewEscrow {
    NewEscrow {
        client_id: client.user_id,
        provider_id: provider.user_id,
        total: money(total, "USD"),
        release_conditions: serde_json::json!({}),
        deadline_at: chrono::Utc::now() + chrono::Duration::days(1),
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_escrow_is_between_two_active_users_its_client_and_a_provider_and_only_they_see_it(pool: PgPool) {
    let (client, provider) = (user(&pool, Role::Sender).await, user(&pool, Role::Beneficiary).await);
    let mut past = new_escrow(&client, &provider, "10.00");
    past.deadline_at = chrono::Utc::now() - chrono::Duration::minutes(1);
    assert_eq!(refusal(&create(&pool, client, past).await), Some(ErrorCode::ValidationError));
    assert_eq!(
        refusal(&create(&pool, client, new_escrow(&client, &client, "10.00")).await),
        Some(ErrorCode::ValidationError)
    );
    assert_eq!(
        refusal(&create(&pool, provider, new_escrow(&provider, &client, "10.00")).await),
        Some(ErrorCode::Forbidden)
    );
    let gone = inactive(&pool, Role::Beneficiary).await;
    assert_eq!(refusal(&create(&pool, client, new_escrow(&client, &gone, "10.00")).await), Some(ErrorCode::Forbidden));
    let e = create(&pool, client, new_escrow(&client, &provider, "10.00")).await.expect("created");
    assert_eq!((e.status.as_str(), e.balance.as_str()), ("DRAFT", "0.00"));
    assert_eq!(audited(&pool, "ESCROW_CREATED", e.id).await, 1);
    let stranger = user(&pool, Role::Sender).await;
    let support = user(&pool, Role::Support).await;
    let read = |who: Principal| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.expect("conn");
            escrows::get_for(&mut conn, e.id, &who).await.map(|e| e.id)
        }
    };
    for who in [client, provider, support] {
        assert_eq!(read(who).await.ok(), Some(e.id));
    }
    assert_eq!(refusal(&read(stranger).await), Some(ErrorCode::EscrowNotFound));
}

async fn add(pool: &PgPool, who: Principal, d: &Deal, idx: i32, amount: &str, currency: &str) -> Option<ErrorCode> {
    let new = NewMilestone {
        idx,
        label: format!("m{idx}"),
        amount: money(amount, currency),
        proof_type: "PHOTO".into(),
        geofence: None,
    };
    let r = db::serializable(pool, &(who, d.escrow, new), |tx, (who, id, new)| {
        Box::pin(milestones::add_milestone(tx, who, *id, new))
    })
    .await;
    refusal(&r)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn milestones_come_in_sequence_in_the_escrow_currency_and_never_pass_its_total(pool: PgPool) {
    let d = deal(&pool, "100.00", "USD", &[("60.00", "PHOTO")]).await;
    assert_eq!(add(&pool, d.client, &d, 3, "10.00", "USD").await, Some(ErrorCode::ValidationError), "idx 2 is next");
    assert_eq!(add(&pool, d.client, &d, 2, "40.01", "USD").await, Some(ErrorCode::MilestoneSumExceedsTotal));
    assert_eq!(add(&pool, d.client, &d, 2, "40", "EUR").await, Some(ErrorCode::CurrencyMismatch), "not its currency");
    assert_eq!(add(&pool, d.provider, &d, 2, "40.00", "USD").await, Some(ErrorCode::Forbidden));
    assert_eq!(add(&pool, d.client, &d, 2, "40.00", "USD").await, None, "exactly the total");
    assert_eq!(d.milestone_statuses(&pool).await, vec!["WAITING", "WAITING"]);
    sqlx::query("UPDATE escrows SET status = 'RELEASED' WHERE id = $1").bind(d.escrow).execute(&pool).await.expect("x");
    let more = deal(&pool, "100.00", "USD", &[]).await;
    sqlx::query("UPDATE escrows SET status = 'REFUNDED' WHERE id = $1")
        .bind(more.escrow)
        .execute(&pool)
        .await
        .expect("x");
    assert_eq!(add(&pool, more.client, &more, 1, "1.00", "USD").await, Some(ErrorCode::EscrowNotActive));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn ten_parallel_deposits_never_over_fund_an_escrow(
    opts: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = wide_pool(opts, connect).await;
    let d = deal(&pool, "100.00", "USD", &[]).await;
    let codes = at_once(10, |_| {
        let (pool, who, escrow) = (pool.clone(), d.client, d.escrow);
        async move {
            let cmd = EscrowDepositV1 { escrow_id: escrow, money: money("25.00", "USD") };
            let r = db::serializable(&pool, &(who, cmd), |tx, (who, cmd)| {
                Box::pin(deposits::deposit(tx, who, Source::Job(JobId::new()), cmd))
            })
            .await;
            refusal(&r)
        }
    })
    .await;
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 4, "{codes:?}");
    assert!(codes.iter().flatten().all(|c| *c == ErrorCode::EscrowOverfunded), "{codes:?}");
    let (funded, reserved, _, status) = d.money(&pool).await;
    assert_eq!((funded, reserved, status.as_str()), (dec("100.00"), Decimal::ZERO, "FUNDED"));
    let (rows, funded_events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM escrow_deposits WHERE escrow_id = $1),
                (SELECT count(*) FROM escrow_events WHERE escrow_id = $1 AND kind = 'FUNDED')",
    )
    .bind(d.escrow)
    .fetch_one(&pool)
    .await
    .expect("rows");
    assert_eq!((rows, funded_events), (4, 1));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_psp_funding_is_recorded_whatever_the_parties_and_a_client_deposit_needs_them_active(pool: PgPool) {
    let d = deal(&pool, "50.00", "USD", &[]).await;
    sqlx::query("UPDATE users SET is_active = false WHERE id = $1")
        .bind(d.provider.user_id)
        .execute(&pool)
        .await
        .expect("off");
    let cmd = EscrowDepositV1 { escrow_id: d.escrow, money: money("20.00", "USD") };
    let r = db::serializable(&pool, &(d.client, cmd.clone()), |tx, (who, cmd)| {
        Box::pin(deposits::deposit(tx, who, Source::Job(JobId::new()), cmd))
    })
    .await;
    assert_eq!(refusal(&r), Some(ErrorCode::Forbidden));
    let psp = shared::domain::psp::webhooks::psp_principal();
    let r = db::serializable(&pool, &(psp, cmd), |tx, (who, cmd)| {
        Box::pin(deposits::deposit(tx, who, Source::Psp("evt-1"), cmd))
    })
    .await;
    assert_eq!(r.map(|e| e.funded_amount).ok(), Some(dec("20.00")));
    let source: (String, Option<String>) =
        sqlx::query_as("SELECT source, event_id FROM escrow_deposits WHERE escrow_id = $1")
            .bind(d.escrow)
            .fetch_one(&pool)
            .await
            .expect("deposit");
    assert_eq!(source, ("psp".into(), Some("evt-1".into())));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn transitions_move_only_along_their_edges_and_a_cancellation_refunds_what_was_deposited(pool: PgPool) {
    let d = deal(&pool, "50.00", "USD", &[]).await;
    let parent = job(&pool, &d.client, JobKind::EscrowTransition).await;
    let go = |who, action| transition(&pool, who, &parent, d.escrow, action);
    assert_eq!(code(&go(d.provider, TransitionAction::MarkDelivered).await), Some(ErrorCode::EscrowInvalidTransition));
    d.deposit(&pool, "20.00").await;
    assert_eq!(code(&go(d.client, TransitionAction::MarkDelivered).await), Some(ErrorCode::Forbidden));
    assert_eq!(code(&go(d.provider, TransitionAction::ClientReject).await), Some(ErrorCode::Forbidden));
    // A DRAFT escrow the client rejects is CANCELLED, its deposits refunded.
    assert_eq!(code(&go(d.client, TransitionAction::ClientReject).await), None);
    assert_eq!(d.money(&pool).await.3, "CANCELLED");
    let pays = payments(&pool, d.escrow).await;
    assert_eq!(pays.iter().map(|p| (p.1.as_str(), p.2)).collect::<Vec<_>>(), vec![("REFUND", dec("20.00"))]);
    assert_eq!(children(&pool, &parent).await, vec![("payout".to_string(), format!("payout:{}:0", pays[0].0))]);
    assert_eq!(code(&go(d.client, TransitionAction::ClientApprove).await), Some(ErrorCode::EscrowInvalidTransition));
    // FUNDED → RELEASABLE by the provider, once.
    let e = deal(&pool, "30.00", "USD", &[]).await;
    e.deposit(&pool, "30.00").await;
    let parent = job(&pool, &e.client, JobKind::EscrowTransition).await;
    assert_eq!(code(&transition(&pool, e.provider, &parent, e.escrow, TransitionAction::MarkDelivered).await), None);
    assert_eq!(e.money(&pool).await.3, "RELEASABLE");
    let again = transition(&pool, e.provider, &parent, e.escrow, TransitionAction::MarkDelivered).await;
    assert_eq!(code(&again), Some(ErrorCode::EscrowInvalidTransition));
    assert!(children(&pool, &parent).await.is_empty(), "a delivery pays nothing");
}
