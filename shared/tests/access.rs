//! Domain tests for access on a fresh database each, no HTTP: users are
//! unique by username and e-mail (also when created at once), seen by
//! themselves, support and admin only; API keys authenticate until they
//! expire, are revoked or their owner is deactivated; the bootstrap key is
//! made once.

mod common;

use common::*;
use shared::ErrorCode;
use shared::db;
use shared::domain::access::keys::{self, NewKey};
use shared::domain::access::users::{self, NewUser};
use shared::principal::{Principal, Role};
use sqlx::PgPool;

async fn create_user(pool: &PgPool, by: Principal, name: &str, email: &str) -> shared::Result<users::User> {
    let new = NewUser { username: name.into(), email: email.into(), is_active: true };
    db::serializable(pool, &(by, new), |tx, (by, new)| Box::pin(users::create(tx, by, new))).await
}

async fn create_key(pool: &PgPool, by: Principal, new: NewKey) -> shared::Result<keys::CreatedKey> {
    db::serializable(pool, &(by, new), |tx, (by, new)| Box::pin(keys::create(tx, by, new))).await
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_user_is_unique_by_name_and_e_mail_and_seen_only_by_themselves_support_and_admin(pool: PgPool) {
    let admin = user(&pool, Role::Admin).await;
    let ada = create_user(&pool, admin, "ada", "ada@example.test").await.expect("created");
    assert_eq!(refusal(&create_user(&pool, admin, "ada", "other@example.test").await), Some(ErrorCode::UserExists));
    assert_eq!(refusal(&create_user(&pool, admin, "ada2", "ada@example.test").await), Some(ErrorCode::UserExists));
    assert_eq!(audited(&pool, "USER_CREATED", ada.id).await, 1);
    let herself = Principal { user_id: ada.id, key_id: shared::ids::ApiKeyId::new(), role: Role::Sender };
    let (support, other) = (user(&pool, Role::Support).await, user(&pool, Role::Sender).await);
    let mut conn = pool.acquire().await.expect("conn");
    for who in [herself, support, admin] {
        assert_eq!(users::get_for(&mut conn, ada.id, &who).await.map(|u| u.username).ok().as_deref(), Some("ada"));
    }
    assert_eq!(refusal(&users::get_for(&mut conn, ada.id, &other).await), Some(ErrorCode::UserNotFound));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn five_users_created_at_once_under_one_name_make_one(pool: PgPool) {
    let admin = user(&pool, Role::Admin).await;
    let codes = at_once(5, |i| {
        let pool = pool.clone();
        async move { refusal(&create_user(&pool, admin, "same", &format!("same{i}@example.test")).await) }
    })
    .await;
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 1, "{codes:?}");
    assert!(codes.iter().flatten().all(|c| *c == ErrorCode::UserExists), "{codes:?}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_key_works_until_it_expires_is_revoked_or_its_owner_is_deactivated(pool: PgPool) {
    let admin = user(&pool, Role::Admin).await;
    let owner = user(&pool, Role::Sender).await;
    let new = |expires_at| NewKey { user_id: owner.user_id, role: Role::Sender, name: "k".into(), expires_at };
    let past = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    assert_eq!(refusal(&create_key(&pool, admin, new(past)).await), Some(ErrorCode::ValidationError));
    let ghost = NewKey { user_id: shared::ids::UserId::new(), ..new(None) };
    assert_eq!(refusal(&create_key(&pool, admin, ghost).await), Some(ErrorCode::UserNotFound));
    let key = create_key(&pool, admin, new(None)).await.expect("key");
    assert!(key.key.starts_with(&key.prefix));
    let who = keys::authenticate(&pool, &key.key).await.expect("authenticated");
    assert_eq!((who.user_id, who.role, who.key_id), (owner.user_id, Role::Sender, key.id));
    assert_eq!(refusal(&keys::authenticate(&pool, "kb_nothing").await), Some(ErrorCode::AuthInvalid));
    // Expired.
    let soon = create_key(&pool, admin, new(None)).await.expect("key");
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(soon.id)
        .execute(&pool)
        .await
        .expect("expired");
    assert_eq!(refusal(&keys::authenticate(&pool, &soon.key).await), Some(ErrorCode::AuthInvalid));
    // Revoked: at once; the owner's other key still works.
    let second = create_key(&pool, admin, new(None)).await.expect("key");
    db::serializable(&pool, &(admin, second.id), |tx, (by, id)| Box::pin(keys::revoke(tx, by, *id)))
        .await
        .expect("revoked");
    assert_eq!(refusal(&keys::authenticate(&pool, &second.key).await), Some(ErrorCode::AuthInvalid));
    assert!(keys::authenticate(&pool, &key.key).await.is_ok());
    // The owner deactivated: none of their keys.
    sqlx::query("UPDATE users SET is_active = false WHERE id = $1")
        .bind(owner.user_id)
        .execute(&pool)
        .await
        .expect("x");
    assert_eq!(refusal(&keys::authenticate(&pool, &key.key).await), Some(ErrorCode::AuthInvalid));
    let mut conn = pool.acquire().await.expect("conn");
    assert_eq!(keys::list(&mut conn, Some(owner.user_id)).await.expect("list").len(), 3);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_bootstrap_key_is_made_once_and_the_cli_reuses_its_user(pool: PgPool) {
    let made = db::serializable(&pool, &(), |tx, _| Box::pin(keys::bootstrap_admin(tx, "kb_bootstrap_secret_0123")))
        .await
        .expect("bootstrap");
    assert!(made);
    let again = db::serializable(&pool, &(), |tx, _| Box::pin(keys::bootstrap_admin(tx, "kb_another_secret_0123")))
        .await
        .expect("bootstrap");
    assert!(!again, "an admin key exists");
    assert_eq!(keys::authenticate(&pool, "kb_bootstrap_secret_0123").await.map(|p| p.role).ok(), Some(Role::Admin));
    let a = db::serializable(&pool, &(), |tx, _| Box::pin(keys::create_for_username(tx, "ops", Role::Support)))
        .await
        .expect("key");
    let b = db::serializable(&pool, &(), |tx, _| Box::pin(keys::create_for_username(tx, "ops", Role::Support)))
        .await
        .expect("key");
    assert_eq!(a.user_id, b.user_id);
    assert_ne!(a.key, b.key);
}
