//! PSP webhooks: the API stores the raw event under its unique id and
//! enqueues a `psp_webhook` job in one short transaction; the job applies
//! it. Out-of-order events never move a payment backwards (SETTLED is final).

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::audit;
use crate::domain::escrows::{self, EscrowDepositV1};
use crate::domain::payouts::{self, Payment};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{EscrowId, PaymentId, WebhookEventId};
use crate::jobs::{JobKind, Outcome};
use crate::principal::{Principal, Role};

/// The `psp_webhook` job payload, version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PspWebhookV1 {
    pub event_id: String,
}

/// The principal PSP callbacks act as.
pub fn psp_principal() -> Principal {
    let mut p = Principal::system();
    p.role = Role::Psp;
    p
}

#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub received: bool,
    pub event_id: String,
    pub duplicate: bool,
    #[serde(skip)]
    pub job: Option<(crate::ids::JobId, JobKind)>,
}

/// Stores a verified event and its job, once per event id, in one
/// statement (atomic on its own, one round trip): a replay inserts nothing.
pub async fn receive(
    pool: &sqlx::PgPool,
    event_id: &str,
    event_type: &str,
    payload: &serde_json::Value,
    raw: &str,
) -> Result<Received> {
    let job_id = crate::ids::JobId::new();
    let p = psp_principal();
    let job_payload = serde_json::to_value(PspWebhookV1 { event_id: event_id.to_string() })?;
    let key = format!("webhook:{event_id}");
    let hash = crate::jobs::record::request_hash(JobKind::PspWebhook, &job_payload);
    let stored: Option<crate::ids::JobId> = sqlx::query_scalar(
        "WITH ev AS (
            INSERT INTO psp_webhook_events (id, event_id, type, payload, raw_body, job_id) VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT ON CONSTRAINT psp_webhook_events_event_key DO NOTHING RETURNING job_id
         ), job AS (
            INSERT INTO jobs (id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash, pushed_at)
            SELECT job_id, 'psp_webhook', $7, $8, $9, 'psp', $10, $11, now() FROM ev RETURNING id
         ), audit AS (
            INSERT INTO audit_log (id, actor, action, entity, entity_id, data)
            SELECT $12, 'psp', 'WEBHOOK_RECEIVED', 'webhook_event', $2, jsonb_build_object('type', $3::text, 'job_id', id) FROM job
         )
         SELECT id FROM job",
    )
    .bind(WebhookEventId::new())
    .bind(event_id)
    .bind(event_type)
    .bind(payload)
    .bind(raw)
    .bind(job_id)
    .bind(&job_payload)
    .bind(p.user_id)
    .bind(p.key_id)
    .bind(&key)
    .bind(&hash)
    .bind(crate::ids::AuditId::new())
    .fetch_optional(pool)
    .await?;
    Ok(match stored {
        Some(id) => Received {
            received: true,
            event_id: event_id.to_string(),
            duplicate: false,
            job: Some((id, JobKind::PspWebhook)),
        },
        None => Received { received: true, event_id: event_id.to_string(), duplicate: true, job: None },
    })
}

async fn find_payment(conn: &mut PgConnection, data: &serde_json::Value) -> Result<Option<Payment>> {
    if let Some(id) = data.get("payment_id").and_then(|v| v.as_str()).and_then(|s| s.parse::<PaymentId>().ok())
        && let Some(p) = payouts::load(conn, id).await?
    {
        return Ok(Some(p));
    }
    if let Some(psp_ref) = data.get("psp_ref").and_then(|v| v.as_str()) {
        let id: Option<PaymentId> = sqlx::query_scalar("SELECT id FROM payments WHERE psp_ref = $1")
            .bind(psp_ref)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(id) = id {
            return payouts::load(conn, id).await;
        }
    }
    Ok(None)
}

/// Applies a stored event (the `psp_webhook` job).
pub async fn apply(conn: &mut PgConnection, cmd: &PspWebhookV1) -> Result<Outcome> {
    let row: Option<(String, serde_json::Value)> =
        sqlx::query_as("SELECT type, payload FROM psp_webhook_events WHERE event_id = $1")
            .bind(&cmd.event_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((event_type, payload)) = row else {
        return Err(Error::internal(format!("webhook event {} is not stored", cmd.event_id)));
    };
    let data = payload.get("data").cloned().unwrap_or(serde_json::Value::Null);
    let actor = "psp";
    let result = match event_type.as_str() {
        "payment.settled" => match find_payment(conn, &data).await? {
            Some(p) => {
                let psp_ref = data.get("psp_ref").and_then(|v| v.as_str());
                let moved = payouts::settle(conn, &p, psp_ref, actor).await?;
                serde_json::json!({"event_id": cmd.event_id, "type": event_type, "payment_id": p.id, "applied": moved})
            }
            None => unknown_payment(conn, cmd, &event_type).await?,
        },
        "payment.failed" => match find_payment(conn, &data).await? {
            Some(p) => {
                let reason = data.get("reason").and_then(|v| v.as_str()).unwrap_or("PSP_FAILED");
                let moved = payouts::fail(conn, &p, reason, actor).await?;
                serde_json::json!({"event_id": cmd.event_id, "type": event_type, "payment_id": p.id, "applied": moved})
            }
            None => unknown_payment(conn, cmd, &event_type).await?,
        },
        "funding.succeeded" => {
            let escrow = data.get("escrow_id").and_then(|v| v.as_str()).and_then(|s| s.parse::<EscrowId>().ok());
            let amount = data.get("amount").and_then(|v| match v {
                serde_json::Value::String(s) => s.parse::<rust_decimal::Decimal>().ok(),
                serde_json::Value::Number(n) => n.to_string().parse().ok(),
                _ => None,
            });
            let (Some(escrow_id), Some(amount)) = (escrow, amount) else {
                return Err(Error::problem(
                    ErrorCode::WebhookPayloadInvalid,
                    "funding.succeeded needs data.escrow_id and data.amount",
                ));
            };
            let e = escrows::deposit(
                conn,
                &psp_principal(),
                None,
                Some(&cmd.event_id),
                &EscrowDepositV1 { escrow_id, amount },
            )
            .await?;
            serde_json::json!({"event_id": cmd.event_id, "type": event_type, "escrow_id": e.id, "status": e.status})
        }
        _ => serde_json::json!({"event_id": cmd.event_id, "type": event_type, "ignored": true}),
    };
    audit::write(conn, actor, "WEBHOOK_APPLIED", "webhook_event", &cmd.event_id, result.clone()).await?;
    Ok(Outcome::Succeeded(result))
}

async fn unknown_payment(conn: &mut PgConnection, cmd: &PspWebhookV1, event_type: &str) -> Result<serde_json::Value> {
    crate::domain::alerts::raise(
        conn,
        "PSP_UNKNOWN_PAYMENT",
        &format!("{event_type} for a payment we do not know"),
        None,
        serde_json::json!({"event_id": cmd.event_id}),
    )
    .await?;
    Ok(serde_json::json!({"event_id": cmd.event_id, "type": event_type, "ignored": true, "reason": "unknown payment"}))
}
