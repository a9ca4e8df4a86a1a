//! The `psp_webhook` job: applies a stored event, read from its raw body.
//! `payment.settled` and `payment.failed` end a payment (out-of-order
//! events never move it backwards: SETTLED is final), `funding.succeeded`
//! deposits into an escrow once per event; unknown types are ignored.

use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::PgConnection;

use crate::domain::escrow::deposits::{self, EscrowDepositV1, Source};
use crate::domain::escrow::drives::{self, Named, PspSaid};
use crate::domain::escrow::model::Payment;
use crate::domain::escrow::{payouts, settlement, state};
use crate::domain::ops::{alerts, audit};
use crate::domain::psp::webhooks::{PspWebhookV1, psp_principal};
use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::{EscrowId, PaymentId};
use crate::jobs::Outcome;
use crate::money::{AmountIn, Money, display, parse_decimal};
use crate::text::holds_nul;

async fn find_payment(conn: &mut PgConnection, data: &serde_json::Value) -> Result<Option<Payment>> {
    if let Some(id) = data.get("payment_id").and_then(|v| v.as_str()).and_then(|s| s.parse::<PaymentId>().ok())
        && let Some(p) = state::payment(conn, id).await?
    {
        return Ok(Some(p));
    }
    if let Some(psp_ref) = data.get("psp_ref").and_then(|v| v.as_str()) {
        // Any drive's reference names its payment (a re-drive clears the
        // payment's own `psp_ref`).
        let id: Option<PaymentId> = sqlx::query_scalar(
            "SELECT id FROM payments WHERE psp_ref = $1 UNION SELECT payment_id FROM payment_drives WHERE psp_ref = $1 LIMIT 1",
        )
            .bind(psp_ref)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(id) = id {
            return state::payment(conn, id).await;
        }
    }
    Ok(None)
}

/// `data.amount` of an event, from its literal text.
fn data_amount(raw: &str) -> std::result::Result<AmountIn, Problem> {
    #[derive(Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        amount: Option<&'a RawValue>,
    }
    let invalid = || Problem::new(ErrorCode::WebhookPayloadInvalid, "the event's data cannot be read");
    let event: Event = serde_json::from_str(raw).map_err(|_| invalid())?;
    let Some(data) = event.data else { return Ok(AmountIn::Missing) };
    let data: Data = serde_json::from_str(data.get()).map_err(|_| invalid())?;
    Ok(data.amount.map(AmountIn::from_raw).unwrap_or_default())
}

/// A signed event Postgres cannot hold (U+0000): acknowledged and stored
/// raw by the API, refused here with an alert for ops (the refusal commits
/// with the alert).
async fn refuse_unholdable(conn: &mut PgConnection, cmd: &PspWebhookV1) -> Result<Outcome> {
    let problem = Problem::new(ErrorCode::WebhookPayloadInvalid, "the event holds U+0000, which cannot be stored");
    alerts::raise(
        conn,
        ErrorCode::WebhookPayloadInvalid.as_str(),
        "a signed PSP event could not be applied: it holds U+0000",
        None,
        serde_json::json!({"event_id": cmd.event_id}),
    )
    .await?;
    audit::write(
        conn,
        "psp",
        "WEBHOOK_REFUSED",
        "webhook_event",
        &cmd.event_id,
        serde_json::json!({"code": problem.code.as_str(), "detail": problem.detail}),
    )
    .await?;
    Ok(Outcome::refused(problem))
}

/// Applies a stored event (the `psp_webhook` job), read from its raw body.
pub async fn apply(conn: &mut PgConnection, cmd: &PspWebhookV1) -> Result<Outcome> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT type, raw_body FROM psp_webhook_events WHERE event_id = $1")
            .bind(&cmd.event_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((event_type, raw)) = row else {
        return Err(Error::internal(format!("webhook event {} is not stored", cmd.event_id)));
    };
    let payload = match serde_json::from_str::<serde_json::Value>(&raw) {
        Ok(payload) if !holds_nul(&payload) => payload,
        _ => return refuse_unholdable(conn, cmd).await,
    };
    let data = payload.get("data").cloned().unwrap_or(serde_json::Value::Null);
    let event = Event { id: &cmd.event_id, kind: &event_type, data: &data, raw: &raw };
    let result = match event_type.as_str() {
        "payment.settled" | "payment.failed" => payment_event(conn, &event).await?,
        "funding.succeeded" => match funding(conn, &event).await {
            Err(Error::Problem(refusal)) => return refuse_funding(conn, &event, refusal).await,
            other => other?,
        },
        _ => serde_json::json!({"event_id": cmd.event_id, "type": event_type, "ignored": true}),
    };
    audit::write(conn, ACTOR, "WEBHOOK_APPLIED", "webhook_event", &cmd.event_id, result.clone()).await?;
    Ok(Outcome::succeeded(result))
}

/// The actor of what PSP events do.
const ACTOR: &str = "psp";

/// A stored event being applied.
struct Event<'a> {
    id: &'a str,
    kind: &'a str,
    data: &'a serde_json::Value,
    raw: &'a str,
}

/// `payment.settled` or `payment.failed`: the payment ends (or stays as it
/// is, when it already ended the other way round).
async fn payment_event(conn: &mut PgConnection, event: &Event<'_>) -> Result<serde_json::Value> {
    let Some(p) = find_payment(conn, event.data).await? else {
        return unknown_payment(conn, event.id, event.kind).await;
    };
    let text = |name: &str| event.data.get(name).and_then(|v| v.as_str());
    let settled = event.kind == "payment.settled";
    let moved = match drives::named_by(conn, &p, text("idempotency_key"), text("psp_ref")).await? {
        Named::Current if settled => settlement::settle(conn, &p, text("psp_ref"), ACTOR).await?,
        Named::Current => {
            drives::record(conn, p.id, p.drive, text("psp_ref"), PspSaid::Failed).await?;
            settlement::fail(conn, &p, text("reason").unwrap_or("PSP_FAILED"), ACTOR).await?
        }
        Named::Other(other) => payouts::other_drive_said(conn, &p, &other, settled, ACTOR).await?,
    };
    Ok(serde_json::json!({"event_id": event.id, "type": event.kind, "payment_id": p.id, "applied": moved}))
}

/// `funding.succeeded`: a deposit keyed by the event id, in the escrow's
/// own currency only: a funding that names another currency (or none)
/// credits nothing (`CURRENCY_MISMATCH`), whatever its amount would read
/// as; then the amount must fit that currency's minor unit.
async fn funding(conn: &mut PgConnection, event: &Event<'_>) -> Result<serde_json::Value> {
    let escrow = event.data.get("escrow_id").and_then(|v| v.as_str()).and_then(|s| s.parse::<EscrowId>().ok());
    // Exactly as the PSP wrote it (its shape first, as for any amount).
    let amount = match data_amount(event.raw)? {
        AmountIn::Missing => None,
        amount => Some(
            parse_decimal("data.amount", &amount, 2)
                .map_err(|(code, e)| Error::problem(code, format!("{}: {}", e.field, e.message)))?,
        ),
    };
    let (Some(escrow_id), Some(amount)) = (escrow, amount) else {
        return Err(Error::problem(
            ErrorCode::WebhookPayloadInvalid,
            "funding.succeeded needs data.escrow_id and data.amount",
        ));
    };
    let escrow_currency = state::load(conn, escrow_id).await?.currency();
    let currency = match event.data.get("currency") {
        Some(serde_json::Value::String(c)) if *c == escrow_currency.code => escrow_currency,
        named => {
            let named = match named {
                Some(serde_json::Value::String(c)) => format!("`{}`", c.chars().take(16).collect::<String>()),
                None | Some(serde_json::Value::Null) => "no currency".to_string(),
                Some(_) => "a currency that is not a string".to_string(),
            };
            return Err(Error::problem(
                ErrorCode::CurrencyMismatch,
                format!("the funding names {named}; the escrow is in {}", escrow_currency.code),
            ));
        }
    };
    let money = Money::of("data.amount", amount, &currency)
        .map_err(|(code, e)| Error::problem(code, format!("{}: {}", e.field, e.message)))?;
    let cmd = EscrowDepositV1 { escrow_id, money };
    let e = deposits::deposit(conn, &psp_principal(), Source::Psp(event.id), &cmd).await?;
    Ok(serde_json::json!({"event_id": event.id, "type": event.kind, "escrow_id": e.id, "status": e.status}))
}

/// A funding the PSP holds that no escrow can take (another currency than
/// the escrow's, over the total, an escrow no longer taking deposits, an
/// amount or escrow that cannot be read): the sender's money sits at the
/// PSP, credited nowhere. The job fails with the refusal and ops get an
/// alert carrying both sides (the funding's amount and currency, the
/// escrow's currency and amounts) to send it back; both commit (the
/// refusal wrote nothing before it).
async fn refuse_funding(conn: &mut PgConnection, event: &Event<'_>, refusal: Problem) -> Result<Outcome> {
    let escrow = match event.data.get("escrow_id").and_then(|v| v.as_str()).and_then(|s| s.parse::<EscrowId>().ok()) {
        Some(id) => match state::load(conn, id).await {
            Ok(e) => Some(e),
            Err(Error::Problem(_)) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let data = serde_json::json!({
        "event_id": event.id, "escrow_id": event.data.get("escrow_id"), "amount": event.data.get("amount"),
        "currency": event.data.get("currency"), "code": refusal.code.as_str(),
        "escrow": escrow.map(|e| serde_json::json!({
            "currency": e.currency, "amount_total": display(e.amount_total, &e.currency),
            "funded_amount": display(e.funded_amount, &e.currency), "status": e.status,
        })),
    });
    let why =
        format!("a PSP funding could not be credited ({}): the sender's money is held at the PSP", refusal.detail);
    alerts::raise(conn, "PSP_FUNDING_REFUSED", &why, None, data.clone()).await?;
    audit::write(conn, ACTOR, "WEBHOOK_REFUSED", "webhook_event", event.id, data).await?;
    Ok(Outcome::refused(refusal))
}

async fn unknown_payment(conn: &mut PgConnection, event_id: &str, event_type: &str) -> Result<serde_json::Value> {
    alerts::raise(
        conn,
        "PSP_UNKNOWN_PAYMENT",
        &format!("{event_type} for a payment we do not know"),
        None,
        serde_json::json!({"event_id": event_id}),
    )
    .await?;
    Ok(serde_json::json!({"event_id": event_id, "type": event_type, "ignored": true, "reason": "unknown payment"}))
}
