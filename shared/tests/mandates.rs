//! Domain tests for mandates on a fresh database each, no HTTP: a mandate
//! is sealed by its sender to another active user, expires in the future,
//! is the only ACTIVE one of its (sender, beneficiary, currency) even when
//! eight are created at once, is revoked by its sender only, expires by the
//! sweep, and is seen by its parties, support and admin only.

mod common;

use chrono::{Duration, Utc};
use common::*;
use shared::ErrorCode;
use shared::db;
use shared::domain::spend::mandates::{self, MandateFilter, MandateOut, NewMandate};
use shared::ids::{MandateId, MerchantId};
use shared::page::PageRequest;
use shared::principal::{Principal, Role};
use sqlx::PgPool;

fn sealed(sender: &Principal, beneficiary: &Principal, total: &str) -> NewMandate {
    NewMandate {
        sender_id: sender.user_id,
        beneficiary_id: beneficiary.user_id,
        total: money(total, "USD"),
        allowed_merchant_id: None,
        allowed_category_id: None,
        expires_at: Utc::now() + Duration::days(1),
    }
}

async fn create(pool: &PgPool, by: Principal, new: NewMandate) -> shared::Result<MandateOut> {
    db::serializable(pool, &(by, new), |tx, (by, new)| Box::pin(mandates::create(tx, by, new))).await
}

async fn revoke(pool: &PgPool, by: Principal, id: MandateId) -> shared::Result<MandateOut> {
    db::serializable(pool, &(by, id), |tx, (by, id)| Box::pin(mandates::revoke(tx, by, *id))).await
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_mandate_is_sealed_by_its_sender_to_another_active_user_until_a_future_date(pool: PgPool) {
    let (alice, bob) = (user(&pool, Role::Sender).await, user(&pool, Role::Beneficiary).await);
    assert_eq!(refusal(&create(&pool, alice, sealed(&alice, &alice, "10.00")).await), Some(ErrorCode::MandateSelf));
    let mut past = sealed(&alice, &bob, "10.00");
    past.expires_at = Utc::now() - Duration::minutes(1);
    assert_eq!(refusal(&create(&pool, alice, past).await), Some(ErrorCode::MandateExpiresInPast));
    let carol = user(&pool, Role::Sender).await;
    assert_eq!(refusal(&create(&pool, carol, sealed(&alice, &bob, "10.00")).await), Some(ErrorCode::Forbidden));
    let gone = inactive(&pool, Role::Beneficiary).await;
    assert_eq!(refusal(&create(&pool, alice, sealed(&alice, &gone, "10.00")).await), Some(ErrorCode::Forbidden));
    let mut nowhere = sealed(&alice, &bob, "10.00");
    nowhere.allowed_merchant_id = Some(MerchantId::new());
    assert_eq!(refusal(&create(&pool, alice, nowhere).await), Some(ErrorCode::MerchantNotFound));
    let m = create(&pool, alice, sealed(&alice, &bob, "10.00")).await.expect("created");
    assert_eq!((m.status.as_str(), m.remaining_amount.as_str()), ("ACTIVE", "10.00"));
    assert_eq!(
        refusal(&create(&pool, alice, sealed(&alice, &bob, "5.00")).await),
        Some(ErrorCode::ActiveMandateExists)
    );
    assert_eq!(audited(&pool, "MANDATE_CREATED", m.id).await, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn eight_mandates_created_at_once_for_one_pair_and_currency_leave_one_active(pool: PgPool) {
    let (alice, bob) = (user(&pool, Role::Sender).await, user(&pool, Role::Beneficiary).await);
    let codes = at_once(8, |_| {
        let pool = pool.clone();
        async move { refusal(&create(&pool, alice, sealed(&alice, &bob, "10.00")).await) }
    })
    .await;
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 1, "{codes:?}");
    assert!(codes.iter().flatten().all(|c| *c == ErrorCode::ActiveMandateExists), "{codes:?}");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM mandates WHERE status = 'ACTIVE'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(active, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn only_the_sender_revokes_and_a_revoked_or_expired_mandate_never_changes_again(pool: PgPool) {
    let (alice, bob) = (user(&pool, Role::Sender).await, user(&pool, Role::Beneficiary).await);
    let m = create(&pool, alice, sealed(&alice, &bob, "10.00")).await.expect("created");
    assert_eq!(refusal(&revoke(&pool, bob, m.id).await), Some(ErrorCode::Forbidden));
    let stranger = user(&pool, Role::Sender).await;
    assert_eq!(refusal(&revoke(&pool, stranger, m.id).await), Some(ErrorCode::MandateNotFound));
    assert_eq!(revoke(&pool, alice, m.id).await.map(|m| m.status).ok().as_deref(), Some("REVOKED"));
    assert_eq!(refusal(&revoke(&pool, alice, m.id).await), Some(ErrorCode::MandateNotActive));
    // Another may be sealed now; the sweep expires it once past its date.
    let next = create(&pool, alice, sealed(&alice, &bob, "10.00")).await.expect("a new one");
    sqlx::query("UPDATE mandates SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(next.id)
        .execute(&pool)
        .await
        .expect("due");
    let expired = db::serializable(&pool, &(), |tx, _| Box::pin(mandates::expire_due(tx, "system"))).await;
    assert_eq!(expired.ok(), Some(1));
    let expired = db::serializable(&pool, &(), |tx, _| Box::pin(mandates::expire_due(tx, "system"))).await;
    assert_eq!(expired.ok(), Some(0), "expired once");
    assert_eq!(refusal(&revoke(&pool, alice, next.id).await), Some(ErrorCode::MandateNotActive));
    assert_eq!(audited(&pool, "MANDATE_EXPIRED", next.id).await, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_mandate_is_seen_by_its_parties_support_and_admin_only(pool: PgPool) {
    let (alice, bob) = (user(&pool, Role::Sender).await, user(&pool, Role::Beneficiary).await);
    let m = create(&pool, alice, sealed(&alice, &bob, "10.00")).await.expect("created");
    let (support, stranger) = (user(&pool, Role::Support).await, user(&pool, Role::Sender).await);
    let mut conn = pool.acquire().await.expect("conn");
    for who in [alice, bob, support] {
        assert!(mandates::get_for(&mut conn, m.id, &who).await.is_ok());
    }
    assert_eq!(refusal(&mandates::get_for(&mut conn, m.id, &stranger).await), Some(ErrorCode::MandateNotFound));
    let page = PageRequest::parse(None, None).expect("page");
    let seen = |who| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.expect("conn");
            mandates::list_for(&mut conn, &who, &MandateFilter::default(), &page).await.expect("list").items.len()
        }
    };
    assert_eq!((seen(bob).await, seen(support).await, seen(stranger).await), (1, 1, 0));
}
