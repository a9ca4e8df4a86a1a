//! The OpenAPI 3.1 document (`GET /openapi.json`), generated with utoipa
//! from the code: responses are the `shared` types the handlers serialize
//! (each derives `ToSchema`); request bodies, which the handlers read field
//! by field (`extract::fields`), are described by the `…Doc` types below.
//! [`document`] adds what every operation shares: the security schemes,
//! the problem responses with their codes, and on job endpoints the
//! `Idempotency-Key` and `Prefer: wait` headers and the receipt answers.
//! `api/tests/openapi.rs` fails when a route has no entry here (or an entry
//! no route).

#![allow(dead_code)] // the `…Doc` types and the path functions exist for the document only

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::domain::access::grants::{GrantOut, GrantRequested};
use shared::domain::access::keys::{ApiKey, CreatedKey};
use shared::domain::access::users::User;
use shared::domain::escrow::limits::PayeeOut;
use shared::domain::escrow::model::{EscrowOut, GeofenceIn, MilestoneOut, PaymentOut};
use shared::domain::escrow::proofs::proof::ProofOut;
use shared::domain::saka::model::{AdjustmentOut, WalletOut};
use shared::domain::spend::mandates::MandateOut;
use shared::domain::spend::purchases::PurchaseOut;
use shared::domain::spend::transfers::TransferOut;
use shared::ids::{CategoryId, EscrowId, MerchantId, UserId};
use shared::jobs::Receipt;
use shared::jobs::stats::QueueStats;
use utoipa::openapi::security::{ApiKey as KeyScheme, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{self, RefOr};
use utoipa::{OpenApi, ToSchema};

/// A money amount: its literal text with the currency's decimals (a JSON
/// number is accepted too, read from its text, never through a float).
#[derive(ToSchema)]
#[schema(value_type = String, example = "12.50", pattern = r"^[0-9]+(\.[0-9]+)?$")]
pub struct AmountDoc(String);

/// An ISO 4217 code among `CURRENCIES`.
#[derive(ToSchema)]
#[schema(value_type = String, example = "USD", pattern = "^[A-Z]{3}$")]
pub struct CurrencyDoc(String);

/// `application/problem+json` (RFC 9457); `code` is stable, the rest is for people.
#[derive(ToSchema)]
pub struct Problem {
    #[schema(example = "https://kobatela.dev/problems/mandate-required")]
    r#type: String,
    title: String,
    status: u16,
    detail: String,
    #[schema(example = "MANDATE_REQUIRED")]
    code: String,
    /// Validation errors: every invalid field at once.
    errors: Option<Vec<FieldError>>,
}

#[derive(ToSchema)]
pub struct FieldError {
    field: String,
    message: String,
}

/// The last invariants run (`run_id` and `checked_at` are null before the
/// first run; found by schemathesis: the document said they never were).
#[derive(ToSchema)]
pub struct InvariantsAnswer {
    run_id: Option<shared::ids::InvariantRunId>,
    checked_at: Option<DateTime<Utc>>,
    invariants: Vec<shared::domain::ops::invariants::InvariantResult>,
}

#[derive(ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: String,
}

#[derive(ToSchema)]
pub struct Ready {
    /// `ok` or `down`
    postgres: String,
    /// `ok` or `down`
    redis: String,
}

#[derive(ToSchema)]
pub struct UserIn {
    username: String,
    email: String,
    is_active: Option<bool>,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum RoleDoc {
    Admin,
    Support,
    Sender,
    Beneficiary,
    Psp,
}

#[derive(ToSchema)]
pub struct ApiKeyIn {
    user_id: UserId,
    role: RoleDoc,
    name: String,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(ToSchema)]
pub struct ApiKeyPage {
    items: Vec<ApiKey>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct MeKey {
    id: shared::ids::ApiKeyId,
    role: String,
    prefix: String,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(ToSchema)]
pub struct Me {
    user: User,
    key: MeKey,
}

#[derive(ToSchema)]
pub struct CategoryIn {
    code: String,
    label: String,
}

#[derive(ToSchema)]
pub struct Category {
    id: CategoryId,
    code: String,
    label: String,
}

#[derive(ToSchema)]
pub struct MerchantIn {
    name: String,
    category_id: Option<CategoryId>,
    is_certified: Option<bool>,
}

#[derive(ToSchema)]
pub struct Merchant {
    id: MerchantId,
    name: String,
    category_id: Option<CategoryId>,
    is_certified: bool,
}

#[derive(ToSchema)]
pub struct AllowIn {
    owner_id: UserId,
    merchant_id: Option<MerchantId>,
    category_id: Option<CategoryId>,
}

#[derive(ToSchema)]
pub struct AllowlistIn {
    owner_id: UserId,
    recipient_id: UserId,
}

#[derive(ToSchema)]
pub struct CertifiedIn {
    user_id: UserId,
    level: String,
}

/// A row added (201, `added` or `created`) or already there (200, `exists` or `updated`).
#[derive(ToSchema)]
pub struct Upserted {
    id: uuid::Uuid,
    status: String,
}

#[derive(ToSchema)]
pub struct MandateIn {
    sender_id: UserId,
    beneficiary_id: UserId,
    total_amount: AmountDoc,
    currency: CurrencyDoc,
    allowed_merchant_id: Option<MerchantId>,
    allowed_category_id: Option<CategoryId>,
    expires_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct MandatePage {
    items: Vec<MandateOut>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct PurchaseIn {
    sender_id: UserId,
    beneficiary_id: UserId,
    merchant_id: MerchantId,
    amount: AmountDoc,
    currency: CurrencyDoc,
    category_id: Option<CategoryId>,
}

#[derive(ToSchema)]
pub struct TransferIn {
    sender_id: UserId,
    receiver_id: UserId,
    amount: AmountDoc,
    currency: CurrencyDoc,
}

#[derive(ToSchema)]
pub struct Alert {
    id: shared::ids::AlertId,
    r#type: String,
    message: String,
    actor_user_id: Option<UserId>,
    payload: Value,
    created_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct AlertPage {
    items: Vec<Alert>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct EscrowIn {
    client_id: UserId,
    provider_id: UserId,
    amount_total: AmountDoc,
    currency: CurrencyDoc,
    release_conditions: Option<Value>,
    deadline_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct MilestoneIn {
    idx: i32,
    label: String,
    amount: AmountDoc,
    proof_type: String,
    geofence: Option<GeofenceIn>,
}

#[derive(ToSchema)]
pub struct AmountIn {
    amount: AmountDoc,
}

#[derive(ToSchema)]
pub struct NoteIn {
    note: Option<String>,
}

#[derive(ToSchema)]
pub struct PayeeIn {
    escrow_id: EscrowId,
    payee_ref: String,
    label: String,
    daily_limit: Option<AmountDoc>,
    total_limit: Option<AmountDoc>,
}

#[derive(ToSchema)]
pub struct SpendIn {
    escrow_id: EscrowId,
    payee_ref: String,
    amount: AmountDoc,
    note: Option<String>,
}

/// `multipart/form-data`
#[derive(ToSchema)]
pub struct ProofUpload {
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    escrow_id: EscrowId,
    milestone_idx: i32,
    source: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum DecisionDoc {
    Approve,
    Reject,
}

#[derive(ToSchema)]
pub struct DecisionIn {
    decision: DecisionDoc,
    note: Option<String>,
}

/// A PSP event, signed: `X-PSP-Signature` is the hex HMAC-SHA256 of
/// `{X-PSP-Timestamp}.{raw body}` under a `PSP_WEBHOOK_SECRETS` secret.
#[derive(ToSchema)]
pub struct PspEvent {
    id: String,
    #[schema(example = "payment.settled")]
    r#type: String,
    created_at: DateTime<Utc>,
    data: Value,
}

#[derive(ToSchema)]
pub struct WebhookAck {
    received: bool,
    event_id: String,
    duplicate: bool,
}

#[derive(ToSchema)]
pub struct AuditEntry {
    id: shared::ids::AuditId,
    actor: Value,
    action: String,
    entity: String,
    entity_id: String,
    data: Value,
    at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct AuditPage {
    items: Vec<AuditEntry>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct ReceiptPage {
    items: Vec<Receipt>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct QueuePage {
    items: Vec<QueueStats>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct CronPage {
    items: Vec<shared::domain::ops::cron::CronTick>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct GrantPage {
    items: Vec<GrantOut>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct AdjustmentPage {
    items: Vec<AdjustmentOut>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct HarvestIn {
    user_id: UserId,
    reason: String,
    amount: Option<i64>,
}

#[derive(ToSchema)]
pub struct SakaSpendIn {
    user_id: UserId,
    amount: i64,
    reason: String,
}

#[derive(ToSchema)]
pub struct AdjustmentIn {
    user_id: UserId,
    amount: i64,
    note: String,
}

// The operations. `job` in a description marks a job endpoint (see
// `JOB_OPERATIONS`): its 202 receipt, 200 final receipt and headers are
// added by `document`.

#[utoipa::path(get, path = "/health", tag = "health", security(()), responses((status = 200, body = Health)))]
fn health() {}
#[utoipa::path(get, path = "/ready", tag = "health", security(()), responses((status = 200, body = Ready), (status = 503, description = "Postgres or Redis down: a problem that also carries `postgres` and `redis`", body = Problem, content_type = "application/problem+json")))]
fn ready() {}
#[utoipa::path(get, path = "/openapi.json", tag = "health", security(()), responses((status = 200, description = "this document", body = Object)))]
fn openapi_json() {}
#[utoipa::path(get, path = "/docs", tag = "health", security(()), responses((status = 200, description = "the API reference (HTML)", content_type = "text/html", body = String)))]
fn docs() {}
#[utoipa::path(get, path = "/ops", tag = "ops", security(()), responses((status = 200, description = "the ops console (HTML); its calls need a support or admin key", content_type = "text/html", body = String)))]
fn ops_console() {}
#[utoipa::path(get, path = "/assets/{name}", tag = "health", security(()), params(("name" = String, Path, description = "`console.js`, `console.css`, `docs.js` or `docs.css`")), responses((status = 200, description = "a script or style sheet of `/ops` or `/docs`", content((String = "text/javascript"), (String = "text/css")))))]
fn assets() {}
#[utoipa::path(get, path = "/ops/invariants", tag = "ops", params(("run" = Option<String>, Query, description = "`1` runs them now")), responses((status = 200, body = InvariantsAnswer)))]
fn ops_invariants() {}
#[utoipa::path(get, path = "/ops/cron", tag = "ops", responses((status = 200, body = CronPage)))]
fn ops_cron() {}
#[utoipa::path(get, path = "/ops/queues", tag = "ops", responses((status = 200, body = QueuePage)))]
fn ops_queues() {}

#[utoipa::path(post, path = "/users", tag = "users", request_body = UserIn, responses((status = 201, body = User)))]
fn users_create() {}
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = UserId, Path)), responses((status = 200, body = User)))]
fn users_read() {}
#[utoipa::path(get, path = "/me", tag = "users", responses((status = 200, body = Me)))]
fn me() {}
#[utoipa::path(post, path = "/api-keys", tag = "users", description = "Any role but `admin`: the key at once (201). Role `admin`: a grant request a second, independent active admin approves (202, `code: ADMIN_GRANT_PENDING`; the secret in `key` is shown this once and works only after approval); 409 `ADMIN_GRANT_NEEDS_SECOND_ADMIN` while no other active admin could approve it (the operator makes further admins on the host: `api keys create --user NAME --role admin`).", request_body = ApiKeyIn, responses((status = 201, description = "`key` is shown this once", body = CreatedKey), (status = 202, description = "an admin grant waiting for a second admin; `Location` is its `/admin-grants/{id}`", body = GrantRequested)))]
fn api_keys_create() {}
#[utoipa::path(get, path = "/api-keys", tag = "users", params(("user_id" = Option<UserId>, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), responses((status = 200, body = ApiKeyPage)))]
fn api_keys_list() {}
#[utoipa::path(delete, path = "/api-keys/{id}", tag = "users", params(("id" = shared::ids::ApiKeyId, Path)), responses((status = 204, description = "revoked")))]
fn api_keys_revoke() {}
#[utoipa::path(get, path = "/admin-grants", tag = "users", description = "admin, support; newest first", params(("status" = Option<String>, Query, description = "`PENDING_APPROVAL`, `APPROVED`, `REJECTED` or `EXPIRED`"), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), responses((status = 200, body = GrantPage)))]
fn admin_grants_list() {}
#[utoipa::path(get, path = "/admin-grants/{id}", tag = "users", description = "admin, support", params(("id" = shared::ids::AdminGrantId, Path)), responses((status = 200, body = GrantOut)))]
fn admin_grants_read() {}
#[utoipa::path(post, path = "/admin-grants/{id}/approve", tag = "users", description = "an admin other than the requester and the grantee (403 `ADMIN_SELF_APPROVAL`), holding admin power from before the request and not from the requester (403 `APPROVER_NOT_INDEPENDENT`); makes the key (`key_id`); 409 `ADMIN_GRANT_NOT_PENDING` once decided or expired", params(("id" = shared::ids::AdminGrantId, Path)), responses((status = 200, body = GrantOut)))]
fn admin_grants_approve() {}
#[utoipa::path(post, path = "/admin-grants/{id}/reject", tag = "users", description = "any admin (the requester may withdraw their own); final", params(("id" = shared::ids::AdminGrantId, Path)), request_body = NoteIn, responses((status = 200, body = GrantOut)))]
fn admin_grants_reject() {}

#[utoipa::path(post, path = "/spend/categories", tag = "catalogue", request_body = CategoryIn, responses((status = 201, body = Category)))]
fn categories_create() {}
#[utoipa::path(post, path = "/spend/merchants", tag = "catalogue", request_body = MerchantIn, responses((status = 201, body = Merchant)))]
fn merchants_create() {}
#[utoipa::path(post, path = "/spend/allow", tag = "catalogue", request_body = AllowIn, responses((status = 201, body = Upserted), (status = 200, body = Upserted)))]
fn allow_usage() {}
#[utoipa::path(post, path = "/allowlist", tag = "catalogue", request_body = AllowlistIn, responses((status = 201, body = Upserted), (status = 200, body = Upserted)))]
fn allowlist_add() {}
#[utoipa::path(post, path = "/certified", tag = "catalogue", request_body = CertifiedIn, responses((status = 201, body = Upserted), (status = 200, body = Upserted)))]
fn certify() {}

#[utoipa::path(post, path = "/mandates", tag = "mandates", request_body = MandateIn, responses((status = 201, body = MandateOut)))]
fn mandates_create() {}
#[utoipa::path(get, path = "/mandates", tag = "mandates", params(("sender_id" = Option<UserId>, Query), ("beneficiary_id" = Option<UserId>, Query), ("status" = Option<String>, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), responses((status = 200, body = MandatePage)))]
fn mandates_list() {}
#[utoipa::path(get, path = "/mandates/{id}", tag = "mandates", params(("id" = shared::ids::MandateId, Path)), responses((status = 200, body = MandateOut)))]
fn mandates_read() {}
#[utoipa::path(post, path = "/mandates/{id}/revoke", tag = "mandates", params(("id" = shared::ids::MandateId, Path)), responses((status = 200, body = MandateOut)))]
fn mandates_revoke() {}
#[utoipa::path(
    post,
    path = "/mandates/cleanup",
    tag = "mandates",
    description = "job `mandate_expiry`; result `{\"expired\": n}`",
    responses()
)]
fn mandates_cleanup() {}

#[utoipa::path(post, path = "/spend/purchases", tag = "purchases", description = "job `purchase`; result the purchase", request_body = PurchaseIn, responses())]
fn purchases_create() {}
#[utoipa::path(get, path = "/spend/purchases/{id}", tag = "purchases", params(("id" = shared::ids::PurchaseId, Path)), responses((status = 200, body = PurchaseOut)))]
fn purchases_read() {}

#[utoipa::path(post, path = "/transactions", tag = "transfers", description = "job `transfer`; result the transaction", request_body = TransferIn, responses())]
fn transfers_create() {}
#[utoipa::path(get, path = "/transactions/{id}", tag = "transfers", params(("id" = shared::ids::TransferId, Path)), responses((status = 200, body = TransferOut)))]
fn transfers_read() {}
#[utoipa::path(get, path = "/alerts", tag = "transfers", params(("type" = Option<String>, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), responses((status = 200, body = AlertPage)))]
fn alerts_list() {}

#[utoipa::path(post, path = "/escrows", tag = "escrows", request_body = EscrowIn, responses((status = 201, body = EscrowOut)))]
fn escrows_create() {}
#[utoipa::path(get, path = "/escrows/{id}", tag = "escrows", params(("id" = EscrowId, Path)), responses((status = 200, description = "with `milestones` and `payments`", body = EscrowOut)))]
fn escrows_read() {}
#[utoipa::path(post, path = "/escrows/{id}/milestones", tag = "escrows", params(("id" = EscrowId, Path)), request_body = MilestoneIn, responses((status = 201, body = MilestoneOut)))]
fn milestones_create() {}
#[utoipa::path(post, path = "/escrows/{id}/deposit", tag = "escrows", description = "job `escrow_deposit`; result the escrow", params(("id" = EscrowId, Path)), request_body = AmountIn, responses())]
fn escrows_deposit() {}
#[utoipa::path(post, path = "/escrows/{id}/mark-delivered", tag = "escrows", description = "job `escrow_transition`; result the escrow", params(("id" = EscrowId, Path)), request_body = NoteIn, responses())]
fn escrows_mark_delivered() {}
#[utoipa::path(post, path = "/escrows/{id}/client-approve", tag = "escrows", description = "job `escrow_transition`; result the escrow (payout jobs enqueued)", params(("id" = EscrowId, Path)), request_body = NoteIn, responses())]
fn escrows_client_approve() {}
#[utoipa::path(post, path = "/escrows/{id}/client-reject", tag = "escrows", description = "job `escrow_transition`; result the escrow", params(("id" = EscrowId, Path)), request_body = NoteIn, responses())]
fn escrows_client_reject() {}
#[utoipa::path(post, path = "/escrows/{id}/check-deadline", tag = "escrows", description = "job `escrow_transition`; result the escrow", params(("id" = EscrowId, Path)), responses())]
fn escrows_check_deadline() {}
#[utoipa::path(post, path = "/spend/allowed", tag = "escrows", request_body = PayeeIn, responses((status = 201, body = PayeeOut)))]
fn payees_create() {}
#[utoipa::path(post, path = "/spend", tag = "escrows", description = "job `usage_spend`; result `{payment_id, escrow_id, amount, status, payee_ref}`", request_body = SpendIn, responses())]
fn usage_spend() {}

#[utoipa::path(post, path = "/proofs", tag = "proofs", description = "job `proof_validation`; `proof_id` is in the body beside the receipt fields", request_body(content = ProofUpload, content_type = "multipart/form-data"), responses())]
fn proofs_upload() {}
#[utoipa::path(get, path = "/proofs/{id}", tag = "proofs", params(("id" = shared::ids::ProofId, Path)), responses((status = 200, body = ProofOut)))]
fn proofs_read() {}
#[utoipa::path(post, path = "/proofs/{id}/decision", tag = "proofs", description = "job `proof_validation`; result the proof", params(("id" = shared::ids::ProofId, Path)), request_body = DecisionIn, responses())]
fn proofs_decide() {}

#[utoipa::path(get, path = "/payments/{id}", tag = "payments", params(("id" = shared::ids::PaymentId, Path)), responses((status = 200, body = PaymentOut)))]
fn payments_read() {}
#[utoipa::path(post, path = "/payments/execute/{id}", tag = "payments", description = "job `payout`", params(("id" = shared::ids::PaymentId, Path)), responses())]
fn payments_execute() {}
#[utoipa::path(post, path = "/psp/webhook", tag = "payments", security(("psp_signature" = [], "psp_timestamp" = [])), params(("X-PSP-Event-Id" = Option<String>, Header, description = "repeats the body's `id` when sent")), request_body = PspEvent, responses((status = 200, body = WebhookAck)))]
fn psp_webhook() {}

#[utoipa::path(get, path = "/audit", tag = "audit", params(("entity" = Option<String>, Query), ("entity_id" = Option<String>, Query), ("action" = Option<String>, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), responses((status = 200, body = AuditPage)))]
fn audit_list() {}

#[utoipa::path(get, path = "/saka/wallets/{user_id}", tag = "saka", params(("user_id" = UserId, Path)), responses((status = 200, body = WalletOut)))]
fn saka_wallet() {}
#[utoipa::path(post, path = "/saka/harvest", tag = "saka", description = "job `saka_harvest`; result a SAKA transaction or `{\"credited\": 0, \"reason\": \"DAILY_LIMIT\"}`", request_body = HarvestIn, responses())]
fn saka_harvest() {}
#[utoipa::path(post, path = "/saka/spend", tag = "saka", description = "job `saka_spend`; result a SAKA transaction", request_body = SakaSpendIn, responses())]
fn saka_spend() {}
#[utoipa::path(post, path = "/saka/adjustments", tag = "saka", description = "job `saka_adjustment`; result the adjustment", request_body = AdjustmentIn, responses())]
fn saka_adjust() {}
#[utoipa::path(get, path = "/saka/adjustments", tag = "saka", params(("status" = Option<String>, Query, description = "`PENDING_APPROVAL`, `APPLIED`, `REJECTED` or `EXPIRED`"), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), responses((status = 200, body = AdjustmentPage)))]
fn saka_adjustments_list() {}
#[utoipa::path(get, path = "/saka/adjustments/{id}", tag = "saka", params(("id" = shared::ids::SakaAdjustmentId, Path)), responses((status = 200, body = AdjustmentOut)))]
fn saka_adjustment_read() {}
#[utoipa::path(post, path = "/saka/adjustments/{id}/approve", tag = "saka", description = "job `saka_adjustment` (an admin other than the requester); result the adjustment", params(("id" = shared::ids::SakaAdjustmentId, Path)), responses())]
fn saka_approve() {}
#[utoipa::path(post, path = "/saka/adjustments/{id}/reject", tag = "saka", params(("id" = shared::ids::SakaAdjustmentId, Path)), request_body = NoteIn, responses((status = 200, body = AdjustmentOut)))]
fn saka_reject() {}

#[utoipa::path(get, path = "/jobs", tag = "jobs", params(("status" = Option<String>, Query), ("kind" = Option<String>, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), responses((status = 200, body = ReceiptPage)))]
fn jobs_list() {}
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = shared::ids::JobId, Path), ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): hold the answer until the job ends or N seconds pass (then 202)")), responses((status = 200, body = Receipt), (status = 202, description = "`Prefer: wait` ran out before the job ended", body = Receipt)))]
fn jobs_read() {}
#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs", params(("id" = shared::ids::JobId, Path)), responses((status = 202, description = "a dead job queued again", body = Receipt)))]
fn jobs_retry() {}

#[derive(OpenApi)]
#[openapi(
    info(title = "Kobatela", description = "Payments back end: usage mandates, escrows with photo proofs, restricted transfers, PSP payouts, SAKA. Money is a string with the currency's decimals; a request that moves value is a job answered with a receipt."),
    paths(
        health, ready, openapi_json, docs, ops_console, assets, ops_invariants, ops_queues, ops_cron,
        users_create, users_read, me, api_keys_create, api_keys_list, api_keys_revoke,
        admin_grants_list, admin_grants_read, admin_grants_approve, admin_grants_reject,
        categories_create, merchants_create, allow_usage, allowlist_add, certify,
        mandates_create, mandates_list, mandates_read, mandates_revoke, mandates_cleanup,
        purchases_create, purchases_read, transfers_create, transfers_read, alerts_list,
        escrows_create, escrows_read, milestones_create, escrows_deposit, escrows_mark_delivered,
        escrows_client_approve, escrows_client_reject, escrows_check_deadline, payees_create, usage_spend,
        proofs_upload, proofs_read, proofs_decide, payments_read, payments_execute, psp_webhook,
        audit_list, saka_wallet, saka_harvest, saka_spend, saka_adjust, saka_adjustments_list, saka_adjustment_read, saka_approve,
        saka_reject, jobs_list, jobs_read, jobs_retry,
    ),
    components(schemas(Problem, FieldError, Receipt)),
    security(("bearer" = []), ("api_key" = [])),
)]
struct Doc;

/// The job endpoints: `(method, path)`.
pub const JOB_OPERATIONS: &[(&str, &str)] = &[
    ("post", "/mandates/cleanup"),
    ("post", "/spend/purchases"),
    ("post", "/transactions"),
    ("post", "/escrows/{id}/deposit"),
    ("post", "/escrows/{id}/mark-delivered"),
    ("post", "/escrows/{id}/client-approve"),
    ("post", "/escrows/{id}/client-reject"),
    ("post", "/escrows/{id}/check-deadline"),
    ("post", "/spend"),
    ("post", "/proofs"),
    ("post", "/proofs/{id}/decision"),
    ("post", "/payments/execute/{id}"),
    ("post", "/saka/harvest"),
    ("post", "/saka/spend"),
    ("post", "/saka/adjustments"),
    ("post", "/saka/adjustments/{id}/approve"),
];

/// The problem answers any operation may give, with the codes behind each.
const PROBLEMS: &[(&str, &str)] = &[
    ("400", "`IDEMPOTENCY_KEY_REQUIRED`, or a malformed request"),
    ("401", "`UNAUTHORIZED`: no key, or a key unknown, revoked or expired"),
    ("403", "`FORBIDDEN` and the business refusals DOMAIN.md names with 403"),
    ("404", "`NOT_FOUND` and the `…_NOT_FOUND` codes: missing, or not yours"),
    ("405", "`METHOD_NOT_ALLOWED`"),
    ("408", "`REQUEST_TIMEOUT`"),
    ("409", "`IDEMPOTENCY_KEY_REUSED`, `JOB_NOT_DEAD` and the other conflicts"),
    ("413", "`PAYLOAD_TOO_LARGE`"),
    ("415", "`UNSUPPORTED_MEDIA_TYPE`"),
    ("422", "`VALIDATION_ERROR` (with `errors`) and the sharper codes of DOMAIN.md"),
    (
        "429",
        "`RATE_LIMITED`: the key's `RATE_LIMIT_PER_KEY`, or the client address's budget of failed authentications (`AUTH_FAILURES_PER_ADDR`, checked before any key lookup); `Retry-After` says when to try again",
    ),
    ("500", "`INTERNAL`, and nothing more"),
    (
        "503",
        "`UNAVAILABLE`: Postgres or Redis cannot be reached (answered at once); `Retry-After` says when to try again",
    ),
];

/// The answers that say when to come back: each carries `Retry-After`.
const RETRY_AFTER_STATUSES: &[&str] = &["429", "503"];

/// The whole document: the derived paths, then what every operation shares.
pub fn document() -> openapi::OpenApi {
    let mut doc = Doc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("an API key: `Authorization: Bearer <key>`"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(KeyScheme::Header(ApiKeyValue::with_description(
            "X-API-Key",
            "the same API key in a header of its own",
        ))),
    );
    components.add_security_scheme(
        "psp_signature",
        SecurityScheme::ApiKey(KeyScheme::Header(ApiKeyValue::with_description(
            "X-PSP-Signature",
            "hex HMAC-SHA256 of `{X-PSP-Timestamp}.{raw body}` under any secret of `PSP_WEBHOOK_SECRETS`",
        ))),
    );
    components.add_security_scheme(
        "psp_timestamp",
        SecurityScheme::ApiKey(KeyScheme::Header(ApiKeyValue::with_description(
            "X-PSP-Timestamp",
            "unix seconds; must be within the tolerance",
        ))),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations(item) {
            let is_job = JOB_OPERATIONS.contains(&(method, path.as_str()));
            if is_job {
                add_job_parts(op);
            }
            for (status, what) in PROBLEMS {
                op.responses.responses.entry(status.to_string()).or_insert_with(|| problem_response(what));
            }
            // Here, once for every operation (its own 503 included, like
            // `/ready`'s), rather than in each operation.
            for status in RETRY_AFTER_STATUSES {
                if let Some(RefOr::T(response)) = op.responses.responses.get_mut(*status) {
                    response.headers.insert("Retry-After".into(), retry_after_header());
                }
            }
        }
    }
    doc
}

fn operations(item: &mut openapi::PathItem) -> Vec<(&'static str, &mut openapi::path::Operation)> {
    [
        ("get", item.get.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("put", item.put.as_mut()),
        ("patch", item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

fn problem_response(what: &str) -> RefOr<openapi::Response> {
    let content = openapi::ContentBuilder::new().schema(Some(openapi::Ref::from_schema_name("Problem"))).build();
    RefOr::T(openapi::ResponseBuilder::new().description(what).content("application/problem+json", content).build())
}

/// `Retry-After`: whole seconds, at least 1.
fn retry_after_header() -> openapi::Header {
    openapi::HeaderBuilder::new()
        .schema(openapi::ObjectBuilder::new().schema_type(openapi::schema::Type::Integer).minimum(Some(1)))
        .description(Some("seconds to wait before trying again"))
        .build()
}

fn receipt_response(what: &str, location: bool) -> RefOr<openapi::Response> {
    let content = openapi::ContentBuilder::new().schema(Some(openapi::Ref::from_schema_name("Receipt"))).build();
    let mut response = openapi::ResponseBuilder::new().description(what).content("application/json", content);
    if location {
        let header = openapi::HeaderBuilder::new()
            .schema(openapi::ObjectBuilder::new().schema_type(openapi::schema::Type::String))
            .description(Some("`/jobs/{job_id}`"))
            .build();
        response = response.header("Location", header);
    }
    RefOr::T(response.build())
}

/// `Idempotency-Key` (required) and `Prefer: wait=N`, and the receipt answers.
fn add_job_parts(op: &mut openapi::path::Operation) {
    use openapi::path::{ParameterBuilder, ParameterIn};
    use openapi::{ObjectBuilder, Required};
    let header = |name: &str, required: bool, what: &str, max: Option<usize>| {
        let mut schema = ObjectBuilder::new().schema_type(openapi::schema::Type::String);
        if let Some(max) = max {
            schema = schema.min_length(Some(1)).max_length(Some(max));
        }
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(if required { Required::True } else { Required::False })
            .description(Some(what))
            .schema(Some(schema))
            .build()
    };
    let params = op.parameters.get_or_insert_with(Vec::new);
    params.push(header(
        "Idempotency-Key",
        true,
        "same key and body: the same receipt; another body: 409 `IDEMPOTENCY_KEY_REUSED`",
        Some(255),
    ));
    params.push(header(
        "Prefer",
        false,
        "`wait=N` (N ≤ 30): hold the answer until the job ends (then 200) or N seconds pass (202)",
        None,
    ));
    let responses = &mut op.responses.responses;
    responses.insert("202".into(), receipt_response("accepted: the receipt; `Location` is `/jobs/{job_id}`", true));
    responses.insert(
        "200".into(),
        receipt_response("with `Prefer: wait=N`, the job ended within N seconds: its final receipt", true),
    );
}

/// `GET /openapi.json`'s body, built once.
pub fn json() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JSON.get_or_init(|| document().to_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")))
}
