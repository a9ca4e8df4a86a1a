//! Domain tests for four eyes on admin power, on a fresh database each, no
//! HTTP: an admin key over the API is a grant that waits for a second,
//! independent admin (its secret works only once approved), refused while
//! nobody could approve it; approvals of grants and of large SAKA
//! adjustments count only from admin power held before the request and not
//! derived from the requester (nor the requester's from the approver);
//! the host path (`api keys create`) makes independent admins; every grant
//! raises `ADMIN_GRANTED`; two approvals at once make one key; pending
//! grants expire after 24 h; and the migration attributes admin keys made
//! before it from the audit trail.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::*;
use shared::db;
use shared::domain::access::grants::{self, Approval, GrantRequested, Issued};
use shared::domain::access::keys::{self, NewKey};
use shared::domain::saka::{self, NewAdjustment};
use shared::ids::{AdminGrantId, JobId, SakaAdjustmentId, UserId};
use shared::jobs::Outcome;
use shared::money::Grains;
use shared::principal::{Principal, Role};
use shared::{Error, ErrorCode};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn admin_key_for(user: UserId) -> NewKey {
    NewKey { user_id: user, role: Role::Admin, name: "ops".into(), expires_at: None }
}

async fn issue(pool: &PgPool, by: Principal, user: UserId) -> shared::Result<Issued> {
    let new = admin_key_for(user);
    db::serializable(pool, &(by, new), |tx, (by, new)| Box::pin(grants::issue(tx, by, new, Utc::now()))).await
}

/// A grant request that must be accepted as pending.
async fn request_grant(pool: &PgPool, by: Principal, user: UserId) -> GrantRequested {
    match issue(pool, by, user).await {
        Ok(Issued::Requested(g)) => g,
        other => panic!("expected a pending grant, got {other:?}"),
    }
}

async fn approve_at(pool: &PgPool, who: Principal, id: AdminGrantId, now: DateTime<Utc>) -> shared::Result<Approval> {
    loop {
        match db::serializable(pool, &(who, id, now), |tx, (who, id, now)| {
            Box::pin(grants::approve(tx, who, *id, *now))
        })
        .await
        {
            Err(e) if e.is_retryable_conflict() => continue,
            other => break other,
        }
    }
}

async fn approve(pool: &PgPool, who: Principal, id: AdminGrantId) -> shared::Result<Approval> {
    approve_at(pool, who, id, Utc::now()).await
}

/// The code of a refused approval (kept or rolled back), `None` when approved.
fn grant_code(r: &shared::Result<Approval>) -> Option<ErrorCode> {
    match r {
        Ok(Approval::Approved(_)) => None,
        Ok(Approval::Refused(p)) | Err(Error::Problem(p)) => Some(p.code),
        Err(e) => panic!("infrastructure error: {e}"),
    }
}

/// `api keys create --user NAME --role admin`: the principal of the new key.
async fn host_admin(pool: &PgPool, name: &str) -> Principal {
    let name = name.to_string();
    let key = db::serializable(pool, &name, |tx, name| Box::pin(keys::create_for_username(tx, name, Role::Admin)))
        .await
        .expect("host admin");
    keys::authenticate(pool, &key.key).await.expect("the host key works at once")
}

async fn admin_grant(pool: &PgPool, id: AdminGrantId) -> (String, Option<UserId>) {
    sqlx::query_as("SELECT status, approved_by FROM admin_grants WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("grant")
}

async fn admin_keys_of(pool: &PgPool, user: UserId) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE user_id = $1 AND role = 'admin'")
        .bind(user)
        .fetch_one(pool)
        .await
        .expect("keys")
}

/// A large SAKA adjustment requested by `who` for `user`, now: its id.
async fn saka_request(pool: &PgPool, who: Principal, user: UserId, amount: i64) -> SakaAdjustmentId {
    let cmd = NewAdjustment { user_id: user, amount: Grains(amount), note: "community award".into() };
    let r = db::serializable(pool, &(who, cmd), |tx, (who, cmd)| {
        Box::pin(saka::request_adjustment(tx, who, JobId::new(), cmd, Utc::now(), chrono_tz::UTC))
    })
    .await;
    let v = succeeded(r);
    assert_eq!(v["status"], "PENDING_APPROVAL", "{v}");
    v["id"].as_str().and_then(|s| s.parse().ok()).expect("adjustment id")
}

async fn saka_approve(pool: &PgPool, who: Principal, id: SakaAdjustmentId) -> shared::Result<Outcome> {
    db::serializable(pool, &(who, id), |tx, (who, id)| {
        Box::pin(saka::approve_adjustment(tx, who, JobId::new(), *id, Utc::now(), chrono_tz::UTC))
    })
    .await
}

async fn saka_status(pool: &PgPool, id: SakaAdjustmentId) -> String {
    sqlx::query_scalar("SELECT status FROM saka_adjustments WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("adjustment")
}

/// A wallet's balance; 0 when it has none yet.
async fn grains(pool: &PgPool, user: UserId) -> i64 {
    let b: Option<i64> = sqlx::query_scalar("SELECT balance FROM saka_wallets WHERE user_id = $1")
        .bind(user)
        .fetch_optional(pool)
        .await
        .expect("wallet");
    b.unwrap_or(0)
}

/// Admin A requests admin power for a fresh user P; B approves: P's principal.
async fn granted(pool: &PgPool, a: Principal, b: Principal) -> Principal {
    let p = user(pool, Role::Sender).await;
    let g = request_grant(pool, a, p.user_id).await;
    assert_eq!(grant_code(&approve(pool, b, g.grant.id).await), None);
    keys::authenticate(pool, &g.key).await.expect("the approved key works")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_admin_grant_waits_for_a_second_admin_and_its_key_works_only_once_approved(pool: PgPool) {
    let (a, b) = (user(&pool, Role::Admin).await, user(&pool, Role::Admin).await);
    let p = user(&pool, Role::Sender).await;
    let g = request_grant(&pool, a, p.user_id).await;
    assert_eq!((g.grant.status.as_str(), g.code.as_str()), ("PENDING_APPROVAL", "ADMIN_GRANT_PENDING"));
    assert_eq!((g.grant.user_id, g.grant.requested_by, g.grant.role.as_str()), (p.user_id, a.user_id, "admin"));
    assert_eq!(g.grant.href, format!("/admin-grants/{}", g.grant.id));
    assert!(g.key.starts_with(&g.grant.prefix) && g.grant.key_id.is_none());
    assert!(g.grant.request_expires_at - g.grant.created_at == Duration::hours(24));
    // Waiting: no key row, the secret does not authenticate.
    assert_eq!(admin_keys_of(&pool, p.user_id).await, 0);
    assert_eq!(refusal(&keys::authenticate(&pool, &g.key).await), Some(ErrorCode::AuthInvalid));
    assert_eq!(audited(&pool, "ADMIN_GRANT_REQUESTED", g.grant.id).await, 1);
    // The second admin approves: the key exists, works, and says where it came from.
    let approved = match approve(&pool, b, g.grant.id).await {
        Ok(Approval::Approved(out)) => out,
        other => panic!("expected an approval, got {other:?}"),
    };
    assert_eq!((approved.status.as_str(), approved.approved_by), ("APPROVED", Some(b.user_id)));
    let key_id = approved.key_id.expect("the key made");
    let p_as_admin = keys::authenticate(&pool, &g.key).await.expect("the key works now");
    assert_eq!((p_as_admin.user_id, p_as_admin.role, p_as_admin.key_id), (p.user_id, Role::Admin, key_id));
    type Provenance = (String, Option<UserId>, Option<UserId>, Option<AdminGrantId>, Vec<UserId>);
    let (origin, granted_by, approved_by, grant_id, mut derived): Provenance =
        sqlx::query_as("SELECT origin, granted_by, approved_by, grant_id, derived_from FROM api_keys WHERE id = $1")
            .bind(key_id)
            .fetch_one(&pool)
            .await
            .expect("key row");
    derived.sort();
    let mut expected = vec![a.user_id, b.user_id];
    expected.sort();
    assert_eq!(
        (origin.as_str(), granted_by, approved_by, grant_id, derived),
        ("api", Some(a.user_id), Some(b.user_id), Some(g.grant.id), expected)
    );
    assert_eq!(audited(&pool, "ADMIN_GRANT_APPROVED", g.grant.id).await, 1);
    assert_eq!(audited(&pool, "API_KEY_CREATED", key_id).await, 1);
    // The listing ties the key to who asked and who approved.
    let mut conn = pool.acquire().await.expect("conn");
    let listed = keys::list(&mut conn, Some(p.user_id)).await.expect("list");
    let k = listed.first().expect("the key");
    assert_eq!(
        (k.origin.as_str(), k.granted_by, k.approved_by, k.grant_id),
        ("api", Some(a.user_id), Some(b.user_id), Some(g.grant.id))
    );
    drop(conn);
    // Approved is final.
    let c = user(&pool, Role::Admin).await;
    assert_eq!(grant_code(&approve(&pool, c, g.grant.id).await), Some(ErrorCode::AdminGrantNotPending));
    assert_eq!(admin_keys_of(&pool, p.user_id).await, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn other_roles_are_made_at_once_and_never_admin_through_keys_create(pool: PgPool) {
    let (a, _b) = (user(&pool, Role::Admin).await, user(&pool, Role::Admin).await);
    let p = user(&pool, Role::Sender).await;
    let new = NewKey { role: Role::Support, ..admin_key_for(p.user_id) };
    let made = db::serializable(&pool, &(a, new), |tx, (a, new)| Box::pin(grants::issue(tx, a, new, Utc::now())))
        .await
        .expect("issued");
    assert!(matches!(made, Issued::Key(ref k) if k.role == "support"), "{made:?}");
    // The rule that makes keys at once refuses the admin role whoever calls it.
    let new = admin_key_for(p.user_id);
    let r = db::serializable(&pool, &(a, new), |tx, (a, new)| Box::pin(keys::create(tx, a, new))).await;
    assert_eq!(refusal(&r), Some(ErrorCode::Forbidden));
    assert_eq!(admin_keys_of(&pool, p.user_id).await, 0);
    // Nor may anyone but an admin ask.
    let support = user(&pool, Role::Support).await;
    assert_eq!(refusal(&issue(&pool, support, p.user_id).await), Some(ErrorCode::Forbidden));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_requester_cannot_approve_their_grant_nor_the_grantee_their_own_power(pool: PgPool) {
    let (a, b) = (user(&pool, Role::Admin).await, user(&pool, Role::Admin).await);
    let _c = user(&pool, Role::Admin).await;
    let p = user(&pool, Role::Sender).await;
    let g = request_grant(&pool, a, p.user_id).await;
    assert_eq!(grant_code(&approve(&pool, a, g.grant.id).await), Some(ErrorCode::AdminSelfApproval));
    // A second key for B, asked by A: B may not approve their own new power.
    let for_b = request_grant(&pool, a, b.user_id).await;
    assert_eq!(grant_code(&approve(&pool, b, for_b.grant.id).await), Some(ErrorCode::AdminSelfApproval));
    for id in [g.grant.id, for_b.grant.id] {
        assert_eq!(admin_grant(&pool, id).await, ("PENDING_APPROVAL".to_string(), None));
    }
    assert_eq!((admin_keys_of(&pool, p.user_id).await, admin_keys_of(&pool, b.user_id).await), (0, 1));
    // The database says so too.
    let err = sqlx::query("UPDATE admin_grants SET approved_by = requested_by WHERE id = $1")
        .bind(g.grant.id)
        .execute(&pool)
        .await
        .expect_err("refused");
    let constraint = err.as_database_error().and_then(|e| e.constraint()).map(str::to_string);
    assert_eq!(constraint.as_deref(), Some("admin_grants_not_self_approved"));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn with_one_active_admin_a_grant_is_refused_and_nothing_is_written(pool: PgPool) {
    let a = user(&pool, Role::Admin).await;
    let p = user(&pool, Role::Sender).await;
    assert_eq!(refusal(&issue(&pool, a, p.user_id).await), Some(ErrorCode::AdminGrantNeedsSecondAdmin));
    // Admins who cannot act do not count: inactive, revoked, expired; nor the grantee.
    let off = inactive(&pool, Role::Sender).await;
    let revoked = user(&pool, Role::Admin).await;
    let expired = user(&pool, Role::Admin).await;
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, prefix, key_hash, role, name, origin, derived_from)
                 VALUES ($1, $2, 'kb_x', $3, 'admin', 'x', 'host', '{}')",
    )
    .bind(off.key_id)
    .bind(off.user_id)
    .bind(off.key_id.0.as_bytes().to_vec())
    .execute(&pool)
    .await
    .expect("inactive admin");
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(revoked.key_id)
        .execute(&pool)
        .await
        .expect("r");
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(expired.key_id)
        .execute(&pool)
        .await
        .expect("e");
    assert_eq!(refusal(&issue(&pool, a, p.user_id).await), Some(ErrorCode::AdminGrantNeedsSecondAdmin));
    // The only other admin is the grantee, who may not approve their own power.
    let grantee = user(&pool, Role::Admin).await;
    assert_eq!(refusal(&issue(&pool, a, grantee.user_id).await), Some(ErrorCode::AdminGrantNeedsSecondAdmin));
    let grants_made: i64 =
        sqlx::query_scalar("SELECT count(*) FROM admin_grants").fetch_one(&pool).await.expect("count");
    assert_eq!((grants_made, alerts(&pool, "ADMIN_GRANTED").await, admin_keys_of(&pool, p.user_id).await), (0, 0, 0));
    // With a second active admin it is a request.
    let _b = host_admin(&pool, "second").await;
    assert!(matches!(issue(&pool, a, p.user_id).await, Ok(Issued::Requested(_))));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_puppet_admin_cannot_approve_its_makers_900_grain_adjustment(pool: PgPool) {
    let (a, b) = (user(&pool, Role::Admin).await, user(&pool, Role::Admin).await);
    let puppet = granted(&pool, a, b).await;
    let bob = user(&pool, Role::Beneficiary).await;
    let adjustment = saka_request(&pool, a, bob.user_id, 900).await;
    assert_eq!(code(&saka_approve(&pool, puppet, adjustment).await), Some(ErrorCode::ApproverNotIndependent));
    assert_eq!(
        (saka_status(&pool, adjustment).await.as_str(), grains(&pool, bob.user_id).await),
        ("PENDING_APPROVAL", 0)
    );
    // The self-approval check keeps its own code and comes first.
    assert_eq!(code(&saka_approve(&pool, a, adjustment).await), Some(ErrorCode::SakaSelfApproval));
    // An independent admin's approval counts.
    let applied = succeeded(saka_approve(&pool, b, adjustment).await);
    assert_eq!(applied["status"], "APPLIED");
    assert_eq!(grains(&pool, bob.user_id).await, 900);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn admin_power_made_after_the_request_cannot_approve_it(pool: PgPool) {
    let (a, _b) = (user(&pool, Role::Admin).await, user(&pool, Role::Admin).await);
    let bob = user(&pool, Role::Beneficiary).await;
    let adjustment = saka_request(&pool, a, bob.user_id, 900).await;
    let p = user(&pool, Role::Sender).await;
    let grant = request_grant(&pool, a, p.user_id).await;
    // Made on the host after both requests: independent of A, but too late.
    let late = host_admin(&pool, "late").await;
    assert_eq!(code(&saka_approve(&pool, late, adjustment).await), Some(ErrorCode::ApproverNotIndependent));
    assert_eq!(grant_code(&approve(&pool, late, grant.grant.id).await), Some(ErrorCode::ApproverNotIndependent));
    assert_eq!(
        (saka_status(&pool, adjustment).await.as_str(), grains(&pool, bob.user_id).await),
        ("PENDING_APPROVAL", 0)
    );
    assert_eq!(admin_grant(&pool, grant.grant.id).await.0, "PENDING_APPROVAL");
    assert_eq!(admin_keys_of(&pool, p.user_id).await, 0);
    // The same admin counts for what is asked after their key was made.
    let next = saka_request(&pool, a, bob.user_id, 600).await;
    assert_eq!(succeeded(saka_approve(&pool, late, next).await)["status"], "APPLIED");
    assert_eq!(grains(&pool, bob.user_id).await, 600);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_host_made_admin_approves_grants_and_adjustments(pool: PgPool) {
    let a = user(&pool, Role::Admin).await;
    let host = host_admin(&pool, "ops2").await;
    let bob = user(&pool, Role::Beneficiary).await;
    let adjustment = saka_request(&pool, a, bob.user_id, 900).await;
    assert_eq!(succeeded(saka_approve(&pool, host, adjustment).await)["approved_by"], serde_json::json!(host.user_id));
    assert_eq!(grains(&pool, bob.user_id).await, 900);
    let p = user(&pool, Role::Sender).await;
    let g = request_grant(&pool, a, p.user_id).await;
    assert_eq!(grant_code(&approve(&pool, host, g.grant.id).await), None);
    assert_eq!(admin_keys_of(&pool, p.user_id).await, 1);
    let (origin, granted_by): (String, Option<UserId>) =
        sqlx::query_as("SELECT origin, granted_by FROM api_keys WHERE id = $1")
            .bind(host.key_id)
            .fetch_one(&pool)
            .await
            .expect("host key");
    assert_eq!((origin.as_str(), granted_by), ("host", None));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn admin_granted_is_raised_on_request_approval_and_host_creation(pool: PgPool) {
    let made = db::serializable(&pool, &(), |tx, _| Box::pin(keys::bootstrap_admin(tx, "kb_bootstrap_secret_0123")))
        .await
        .expect("bootstrap");
    assert!(made);
    let a = keys::authenticate(&pool, "kb_bootstrap_secret_0123").await.expect("bootstrap key");
    let b = host_admin(&pool, "ops2").await;
    // A support key made on the host is no admin grant.
    db::serializable(&pool, &(), |tx, _| Box::pin(keys::create_for_username(tx, "help", Role::Support)))
        .await
        .expect("support key");
    let p = user(&pool, Role::Sender).await;
    let g = request_grant(&pool, a, p.user_id).await;
    assert_eq!(grant_code(&approve(&pool, b, g.grant.id).await), None);
    let rows: Vec<(serde_json::Value, Option<UserId>)> =
        sqlx::query_as("SELECT payload, actor_user_id FROM alerts WHERE type = 'ADMIN_GRANTED' ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("alerts");
    let seen: Vec<(String, String, String)> = rows
        .iter()
        .map(|(p, _)| {
            let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
            (s("via"), s("origin") + &s("stage"), s("user_id"))
        })
        .collect();
    let expected = [
        ("host", "bootstrap", a.user_id),
        ("host", "cli", b.user_id),
        ("api", "requested", p.user_id),
        ("api", "approved", p.user_id),
    ]
    .map(|(via, what, who)| (via.to_string(), what.to_string(), who.to_string()));
    assert_eq!(seen, expected.to_vec());
    assert_eq!(rows[2].0["requested_by"], serde_json::json!(a.user_id));
    assert_eq!(rows[3].0["approved_by"], serde_json::json!(b.user_id));
    assert_eq!((rows[2].1, rows[3].1), (Some(a.user_id), Some(b.user_id)));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_chain_of_grants_from_the_requester_never_makes_an_independent_approver(pool: PgPool) {
    let (a, b, c) = (user(&pool, Role::Admin).await, user(&pool, Role::Admin).await, user(&pool, Role::Admin).await);
    // A's puppet P, approved by B; P asks for Q, approved by C: Q's key names
    // neither A as granter nor as approver, yet its power comes from A.
    let p = granted(&pool, a, b).await;
    let q = granted(&pool, p, c).await;
    let bob = user(&pool, Role::Beneficiary).await;
    let adjustment = saka_request(&pool, a, bob.user_id, 900).await;
    assert_eq!(code(&saka_approve(&pool, q, adjustment).await), Some(ErrorCode::ApproverNotIndependent));
    // The other way round: the puppet asks, its maker approves.
    let asked_by_puppet = saka_request(&pool, p, bob.user_id, 800).await;
    assert_eq!(code(&saka_approve(&pool, a, asked_by_puppet).await), Some(ErrorCode::ApproverNotIndependent));
    let r = request_grant(&pool, p, user(&pool, Role::Sender).await.user_id).await;
    assert_eq!(grant_code(&approve(&pool, a, r.grant.id).await), Some(ErrorCode::ApproverNotIndependent));
    for id in [adjustment, asked_by_puppet] {
        assert_eq!(saka_status(&pool, id).await, "PENDING_APPROVAL");
    }
    assert_eq!(grains(&pool, bob.user_id).await, 0);
    // An admin outside the chain counts.
    let d = user(&pool, Role::Admin).await;
    assert_eq!(succeeded(saka_approve(&pool, d, adjustment).await)["status"], "APPLIED");
    assert_eq!(grains(&pool, bob.user_id).await, 900);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn nothing_is_approved_by_a_dead_key_for_a_requester_without_power_or_an_inactive_grantee(pool: PgPool) {
    let (a, b, c) = (user(&pool, Role::Admin).await, user(&pool, Role::Admin).await, user(&pool, Role::Admin).await);
    let revoke = |key: shared::ids::ApiKeyId| {
        let pool = pool.clone();
        async move {
            sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
                .bind(key)
                .execute(&pool)
                .await
                .expect("r");
        }
    };
    // An approval job that runs after its approver's key was revoked.
    let bob = user(&pool, Role::Beneficiary).await;
    let adjustment = saka_request(&pool, a, bob.user_id, 900).await;
    let p = user(&pool, Role::Sender).await;
    let grant = request_grant(&pool, a, p.user_id).await;
    revoke(c.key_id).await;
    assert_eq!(code(&saka_approve(&pool, c, adjustment).await), Some(ErrorCode::Forbidden));
    assert_eq!(grant_code(&approve(&pool, c, grant.grant.id).await), Some(ErrorCode::Forbidden));
    // The grantee deactivated meanwhile.
    sqlx::query("UPDATE users SET is_active = false WHERE id = $1").bind(p.user_id).execute(&pool).await.expect("off");
    assert_eq!(grant_code(&approve(&pool, b, grant.grant.id).await), Some(ErrorCode::Forbidden));
    // The requester lost their admin power meanwhile.
    let q = user(&pool, Role::Sender).await;
    let other = request_grant(&pool, a, q.user_id).await;
    revoke(a.key_id).await;
    assert_eq!(grant_code(&approve(&pool, b, other.grant.id).await), Some(ErrorCode::Forbidden));
    assert_eq!((admin_keys_of(&pool, p.user_id).await, admin_keys_of(&pool, q.user_id).await), (0, 0));
    for id in [grant.grant.id, other.grant.id] {
        assert_eq!(admin_grant(&pool, id).await.0, "PENDING_APPROVAL");
    }
    assert_eq!(
        (saka_status(&pool, adjustment).await.as_str(), grains(&pool, bob.user_id).await),
        ("PENDING_APPROVAL", 0)
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn two_approvals_of_one_grant_at_once_make_exactly_one_key(opts: PgPoolOptions, connect: PgConnectOptions) {
    let pool = wide_pool(opts, connect).await;
    let a = user(&pool, Role::Admin).await;
    let approvers: Vec<Principal> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(user(&pool, Role::Admin).await);
        }
        v
    };
    let p = user(&pool, Role::Sender).await;
    let g = request_grant(&pool, a, p.user_id).await;
    let id = g.grant.id;
    let codes = at_once(6, |i| {
        let (pool, who) = (pool.clone(), approvers[i % 3]);
        async move { grant_code(&approve(&pool, who, id).await) }
    })
    .await;
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 1, "{codes:?}");
    assert!(codes.iter().flatten().all(|c| *c == ErrorCode::AdminGrantNotPending), "{codes:?}");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE grant_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("n");
    assert_eq!((keys, admin_keys_of(&pool, p.user_id).await), (1, 1));
    assert_eq!(alerts(&pool, "ADMIN_GRANTED").await, 2, "requested, approved once");
    assert_eq!(audited(&pool, "ADMIN_GRANT_APPROVED", id).await, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn pending_grants_expire_after_24_hours(pool: PgPool) {
    let (a, b) = (user(&pool, Role::Admin).await, user(&pool, Role::Admin).await);
    let (p, q) = (user(&pool, Role::Sender).await, user(&pool, Role::Sender).await);
    let late = request_grant(&pool, a, p.user_id).await;
    let swept = request_grant(&pool, a, q.user_id).await;
    let after = Utc::now() + Duration::hours(25);
    // Found past its time on approval: expired (kept) and refused.
    let r = approve_at(&pool, b, late.grant.id, after).await;
    assert!(matches!(r, Ok(Approval::Refused(ref p)) if p.code == ErrorCode::AdminGrantNotPending), "{r:?}");
    assert_eq!(admin_grant(&pool, late.grant.id).await.0, "EXPIRED");
    // The cron's rule expires the rest.
    let n = db::serializable(&pool, &after, |tx, at| Box::pin(grants::expire_pending(tx, *at))).await.expect("swept");
    assert_eq!(n, 1);
    assert_eq!(admin_grant(&pool, swept.grant.id).await.0, "EXPIRED");
    assert_eq!(grant_code(&approve(&pool, b, swept.grant.id).await), Some(ErrorCode::AdminGrantNotPending));
    assert_eq!((admin_keys_of(&pool, p.user_id).await, admin_keys_of(&pool, q.user_id).await), (0, 0));
    assert_eq!(refusal(&keys::authenticate(&pool, &late.key).await), Some(ErrorCode::AuthInvalid));
    for id in [late.grant.id, swept.grant.id] {
        assert_eq!(audited(&pool, "ADMIN_GRANT_EXPIRED", id).await, 1);
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_rejected_grant_is_final_and_lists_show_what_waits(pool: PgPool) {
    let (a, b) = (user(&pool, Role::Admin).await, user(&pool, Role::Admin).await);
    let (p, q) = (user(&pool, Role::Sender).await, user(&pool, Role::Sender).await);
    let withdrawn = request_grant(&pool, a, p.user_id).await;
    let waiting = request_grant(&pool, a, q.user_id).await;
    // The requester withdraws their own.
    let out = db::serializable(&pool, &(a, withdrawn.grant.id), |tx, (a, id)| {
        Box::pin(grants::reject(tx, a, *id, Some("mistake"), Utc::now()))
    })
    .await
    .expect("rejected");
    assert_eq!(
        (out.status.as_str(), out.rejected_by, out.decision_note.as_deref()),
        ("REJECTED", Some(a.user_id), Some("mistake"))
    );
    assert_eq!(grant_code(&approve(&pool, b, withdrawn.grant.id).await), Some(ErrorCode::AdminGrantNotPending));
    assert_eq!(admin_keys_of(&pool, p.user_id).await, 0);
    assert_eq!(audited(&pool, "ADMIN_GRANT_REJECTED", withdrawn.grant.id).await, 1);
    let support = user(&pool, Role::Support).await;
    let mut conn = pool.acquire().await.expect("conn");
    let page = shared::page::PageRequest::parse(None, None).expect("page");
    let pending = grants::list(&mut conn, &support, Some("PENDING_APPROVAL"), &page).await.expect("list");
    assert_eq!(pending.items.iter().map(|g| g.id).collect::<Vec<_>>(), vec![waiting.grant.id]);
    let all = grants::list(&mut conn, &support, None, &page).await.expect("list");
    assert_eq!(all.items.iter().map(|g| g.id).collect::<Vec<_>>(), vec![waiting.grant.id, withdrawn.grant.id]);
    assert_eq!(grants::get(&mut conn, &support, waiting.grant.id).await.expect("one").status, "PENDING_APPROVAL");
    let sender = user(&pool, Role::Sender).await;
    assert_eq!(refusal(&grants::get(&mut conn, &sender, waiting.grant.id).await), Some(ErrorCode::Forbidden));
    assert_eq!(refusal(&grants::get(&mut conn, &support, AdminGrantId::new()).await), Some(ErrorCode::NotFound));
    assert_eq!(
        refusal(&grants::list(&mut conn, &support, Some("LOST"), &page).await),
        Some(ErrorCode::ValidationError)
    );
}

/// The migration on a database that already holds keys: run every
/// migration before 0016, write keys as the code before it did (with
/// their audit rows), then 0016.
#[sqlx::test(migrations = false)]
async fn the_migration_attributes_existing_keys_from_the_audit_trail(pool: PgPool) {
    let run = |below: bool| {
        let pool = pool.clone();
        async move {
            for m in shared::db::MIGRATOR.iter().filter(|m| (m.version < 16) == below) {
                sqlx::raw_sql(m.sql.clone()).execute(&pool).await.expect("migration");
            }
        }
    };
    run(true).await;
    let person = |name: &str| {
        let (pool, name) = (pool.clone(), name.to_string());
        async move {
            let id = UserId::new();
            sqlx::query("INSERT INTO users (id, username, email) VALUES ($1, $2, $2 || '@x.test')")
                .bind(id)
                .bind(name)
                .execute(&pool)
                .await
                .expect("user");
            id
        }
    };
    let (root, ops, puppet, deeper, alice, ghost) = (
        person("admin").await,
        person("ops").await,
        person("p").await,
        person("q").await,
        person("alice").await,
        person("g").await,
    );
    // (user, role, name, audit actor and entity id; None: no audit row)
    let key = |user: UserId, role: &str, name: &str, actor: Option<&str>, audit_on_user: bool, at: &str| {
        let (pool, role, name, actor, at) =
            (pool.clone(), role.to_string(), name.to_string(), actor.map(str::to_string), at.to_string());
        async move {
            let id = uuid::Uuid::now_v7();
            sqlx::query(
                "INSERT INTO api_keys (id, user_id, prefix, key_hash, role, name, created_at)
                         VALUES ($1, $2, 'kb_x', $3, $4, $5, $6::timestamptz)",
            )
            .bind(id)
            .bind(user)
            .bind(id.as_bytes().to_vec())
            .bind(&role)
            .bind(&name)
            .bind(&at)
            .execute(&pool)
            .await
            .expect("key");
            if let Some(actor) = actor {
                let entity_id = if audit_on_user { user.0 } else { id };
                sqlx::query(
                    "INSERT INTO audit_log (id, actor, action, entity, entity_id, data)
                             VALUES ($1, $2, 'API_KEY_CREATED', 'api_key', $3, $4)",
                )
                .bind(uuid::Uuid::now_v7())
                .bind(&actor)
                .bind(entity_id.to_string())
                .bind(serde_json::json!({"bootstrap": audit_on_user}))
                .execute(&pool)
                .await
                .expect("audit");
            }
            id
        }
    };
    let boot = key(root, "admin", "bootstrap", Some("system"), true, "2024-01-01").await;
    let cli = key(ops, "admin", "cli", Some("cli"), false, "2024-01-02").await;
    let p = key(puppet, "admin", "x", Some(&format!("user:{root}")), false, "2024-01-03").await;
    let q = key(deeper, "admin", "x", Some(&format!("user:{puppet}")), false, "2024-01-04").await;
    let s = key(alice, "sender", "x", Some(&format!("user:{ops}")), false, "2024-01-05").await;
    let unknown = key(ghost, "admin", "x", None, false, "2024-01-06").await;
    run(false).await;
    type Row = (String, Option<UserId>, Option<UserId>, Vec<UserId>);
    let row = |id: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            let (origin, granted_by, approved_by, mut derived): Row =
                sqlx::query_as("SELECT origin, granted_by, approved_by, derived_from FROM api_keys WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .expect("row");
            derived.sort();
            (origin, granted_by, approved_by, derived)
        }
    };
    let sorted = |mut v: Vec<UserId>| {
        v.sort();
        v
    };
    assert_eq!(row(boot).await, ("bootstrap".into(), None, None, vec![]));
    assert_eq!(row(cli).await, ("host".into(), None, None, vec![]));
    assert_eq!(row(p).await, ("legacy".into(), Some(root), None, vec![root]));
    assert_eq!(row(q).await, ("legacy".into(), Some(puppet), None, sorted(vec![root, puppet])));
    assert_eq!(row(s).await, ("api".into(), Some(ops), None, vec![ops]));
    assert_eq!(row(unknown).await, ("legacy".into(), None, None, vec![]));
    // From now on an insert must say where its key comes from.
    let r = sqlx::query(
        "INSERT INTO api_keys (id, user_id, prefix, key_hash, role, name) VALUES ($1, $2, 'kb', $3, 'admin', 'x')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(ghost)
    .bind(vec![1u8, 2, 3])
    .execute(&pool)
    .await;
    assert!(r.is_err(), "origin has no default");
}
