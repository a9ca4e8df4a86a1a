//! Admin power: who holds it (an active admin is an active user with an
//! admin key neither revoked nor expired; roles live on keys) and whether
//! an approval that needs a second admin counts (independence). Used by
//! admin grants and by SAKA adjustment approvals alike.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::error::{Error, ErrorCode, Result};
use crate::ids::UserId;
use crate::principal::{Principal, Role};

/// How many active admins there are other than `besides`.
pub async fn active_admins_besides(conn: &mut PgConnection, besides: &[UserId]) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(DISTINCT k.user_id) FROM api_keys k JOIN users u ON u.id = k.user_id
          WHERE k.role = 'admin' AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
            AND u.is_active AND NOT (k.user_id = ANY($1))",
    )
    .bind(besides)
    .fetch_one(conn)
    .await?)
}

/// Whether `user` is an active admin now.
pub async fn is_active_admin(conn: &mut PgConnection, user: UserId) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_keys k JOIN users u ON u.id = k.user_id
                         WHERE k.user_id = $1 AND k.role = 'admin' AND k.revoked_at IS NULL
                           AND (k.expires_at IS NULL OR k.expires_at > now()) AND u.is_active)",
    )
    .bind(user)
    .fetch_one(conn)
    .await?)
}

/// Refuses an approval, of anything that needs a second admin, that does
/// not count (DOMAIN.md: "an approval … counts only from an admin who held
/// admin power before the request was made and did not get it from the
/// requester"). The approver's power is judged by the key they act with
/// (`approver.key_id`), which must be:
/// - a live admin key of an active user (else `FORBIDDEN`);
/// - created before the request (`created_at < requested_at`), else
///   `APPROVER_NOT_INDEPENDENT`: power made after the request could have
///   been made for it;
/// - not derived from the requester, directly (they granted it or approved
///   its grant) or through a chain of grants (`derived_from`, filled when
///   each key is made), else `APPROVER_NOT_INDEPENDENT`.
///
/// And, the same relation the other way round, the requester's admin power
/// at the time of the request must not derive from the approver: a puppet
/// that asks and its maker who approves are one person as surely as the
/// reverse (`APPROVER_NOT_INDEPENDENT`). Keys made on the host
/// (`api keys create`, `BOOTSTRAP_ADMIN_KEY`) derive from nobody.
///
/// The caller checks self-approval first, with its own code.
#[tracing::instrument(skip_all, fields(approver = %approver.user_id, requester = %requester))]
pub async fn require_independent(
    conn: &mut PgConnection,
    approver: &Principal,
    requester: UserId,
    requested_at: DateTime<Utc>,
) -> Result<()> {
    approver.require(&[Role::Admin])?;
    type Row = (bool, DateTime<Utc>, bool, bool);
    let row: Option<Row> = sqlx::query_as(
        "SELECT k.role = 'admin' AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
                AND u.is_active,
                k.created_at,
                $2 = ANY(k.derived_from) OR k.granted_by IS NOT DISTINCT FROM $2 OR k.approved_by IS NOT DISTINCT FROM $2,
                EXISTS (SELECT 1 FROM api_keys r
                         WHERE r.user_id = $2 AND r.role = 'admin' AND r.created_at < $3
                           AND (r.revoked_at IS NULL OR r.revoked_at > $3)
                           AND (k.user_id = ANY(r.derived_from) OR r.granted_by IS NOT DISTINCT FROM k.user_id
                                OR r.approved_by IS NOT DISTINCT FROM k.user_id))
           FROM api_keys k JOIN users u ON u.id = k.user_id
          WHERE k.id = $1 AND k.user_id = $4",
    )
    .bind(approver.key_id)
    .bind(requester)
    .bind(requested_at)
    .bind(approver.user_id)
    .fetch_optional(conn)
    .await?;
    let Some((live, key_made_at, from_requester, requester_from_approver)) = row else {
        return Err(Error::problem(ErrorCode::Forbidden, "the approving key is not an admin key"));
    };
    if !live {
        return Err(Error::problem(ErrorCode::Forbidden, "the approving key is no longer a live admin key"));
    }
    if key_made_at >= requested_at {
        return Err(Error::problem(
            ErrorCode::ApproverNotIndependent,
            "the approving key was made after the request: only admin power held before it counts",
        ));
    }
    if from_requester {
        return Err(Error::problem(
            ErrorCode::ApproverNotIndependent,
            "the approver's admin power comes from the requester (granted, approved or derived through a grant)",
        ));
    }
    if requester_from_approver {
        return Err(Error::problem(
            ErrorCode::ApproverNotIndependent,
            "the requester's admin power comes from the approver: they are not independent",
        ));
    }
    Ok(())
}
