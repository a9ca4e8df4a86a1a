//! Errors: one enum of stable codes (status, title, SCREAMING_SNAKE string),
//! the problem a client sees, and the crate-wide error that keeps business
//! outcomes apart from infrastructure failures.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($variant:ident = ($text:literal, $status:literal, $title:literal),)*) => {
        /// Every error code a client can see. The string is the contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $($variant,)* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $text,)* }
            }

            pub fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title,)* }
            }

            pub fn parse(text: &str) -> Option<ErrorCode> {
                match text { $($text => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    // Generic HTTP-level codes (API.md, conventions).
    ValidationError = ("VALIDATION_ERROR", 422, "The request is not valid"),
    NotFound = ("NOT_FOUND", 404, "Not found"),
    MethodNotAllowed = ("METHOD_NOT_ALLOWED", 405, "Method not allowed"),
    PayloadTooLarge = ("PAYLOAD_TOO_LARGE", 413, "Request body too large"),
    UnsupportedMediaType = ("UNSUPPORTED_MEDIA_TYPE", 415, "Unsupported media type"),
    RateLimited = ("RATE_LIMITED", 429, "Too many requests"),
    RequestTimeout = ("REQUEST_TIMEOUT", 408, "The request took too long"),
    Internal = ("INTERNAL", 500, "Internal error"),
    Unavailable = ("UNAVAILABLE", 503, "Service unavailable"),
    IdempotencyKeyRequired = ("IDEMPOTENCY_KEY_REQUIRED", 400, "Idempotency-Key header required"),
    IdempotencyKeyReused = ("IDEMPOTENCY_KEY_REUSED", 409, "Idempotency-Key reused with another body"),
    JobNotDead = ("JOB_NOT_DEAD", 409, "Only a dead job can be retried"),
    // Money.
    AmountInvalid = ("AMOUNT_INVALID", 422, "Amount invalid"),
    CurrencyUnsupported = ("CURRENCY_UNSUPPORTED", 422, "Currency not supported"),
    CurrencyMismatch = ("CURRENCY_MISMATCH", 422, "Currency does not match"),
    // Users, roles, keys.
    UserExists = ("USER_EXISTS", 409, "User already exists"),
    UserNotFound = ("USER_NOT_FOUND", 404, "User not found"),
    AuthRequired = ("AUTH_REQUIRED", 401, "Authentication required"),
    AuthInvalid = ("AUTH_INVALID", 401, "Invalid API key"),
    Forbidden = ("FORBIDDEN", 403, "Forbidden"),
    // Four eyes on admin power.
    AdminSelfApproval = ("ADMIN_SELF_APPROVAL", 403, "The requester cannot approve"),
    AdminGrantNeedsSecondAdmin = ("ADMIN_GRANT_NEEDS_SECOND_ADMIN", 409, "Admin grants need a second active admin"),
    ApproverNotIndependent = ("APPROVER_NOT_INDEPENDENT", 403, "The approver is not independent of the requester"),
    AdminGrantNotPending = ("ADMIN_GRANT_NOT_PENDING", 409, "Admin grant is no longer pending approval"),
    // Catalogue.
    CategoryExists = ("CATEGORY_EXISTS", 409, "Category already exists"),
    CategoryNotFound = ("CATEGORY_NOT_FOUND", 404, "Category not found"),
    MerchantExists = ("MERCHANT_EXISTS", 409, "Merchant already exists"),
    MerchantNotFound = ("MERCHANT_NOT_FOUND", 404, "Merchant not found"),
    UsageRuleInvalid = ("USAGE_RULE_INVALID", 422, "Usage rule invalid"),
    // Mandates and purchases.
    MandateExpiresInPast = ("MANDATE_EXPIRES_IN_PAST", 422, "Mandate expiry is in the past"),
    MandateSelf = ("MANDATE_SELF", 422, "Sender and beneficiary must differ"),
    MandateNotFound = ("MANDATE_NOT_FOUND", 404, "Mandate not found"),
    MandateNotActive = ("MANDATE_NOT_ACTIVE", 409, "Mandate is not active"),
    ActiveMandateExists = ("ACTIVE_MANDATE_EXISTS", 409, "An active mandate already exists"),
    CategoryMismatch = ("CATEGORY_MISMATCH", 422, "Category does not match the merchant"),
    MandateRequired = ("MANDATE_REQUIRED", 403, "No active mandate for this purchase"),
    MandateExpired = ("MANDATE_EXPIRED", 403, "Mandate expired"),
    MandateMerchantForbidden = ("MANDATE_MERCHANT_FORBIDDEN", 403, "Merchant not allowed by the mandate"),
    MandateCategoryForbidden = ("MANDATE_CATEGORY_FORBIDDEN", 403, "Category not allowed by the mandate"),
    UnauthorizedUsage = ("UNAUTHORIZED_USAGE", 403, "Usage not allowed"),
    MandateExhausted = ("MANDATE_EXHAUSTED", 409, "Mandate exhausted"),
    PurchaseNotFound = ("PURCHASE_NOT_FOUND", 404, "Purchase not found"),
    // Transfers.
    UnauthorizedTransfer = ("UNAUTHORIZED_TRANSFER", 403, "Transfer not allowed"),
    // Escrows, milestones, proofs, payouts.
    EscrowNotFound = ("ESCROW_NOT_FOUND", 404, "Escrow not found"),
    EscrowNotActive = ("ESCROW_NOT_ACTIVE", 409, "Escrow not active"),
    EscrowOverfunded = ("ESCROW_OVERFUNDED", 409, "Deposit would over-fund the escrow"),
    EscrowInvalidTransition = ("ESCROW_INVALID_TRANSITION", 409, "Illegal escrow transition"),
    MilestoneSumExceedsTotal = ("MILESTONE_SUM_EXCEEDS_TOTAL", 422, "Milestones exceed the escrow total"),
    MilestoneNotFound = ("MILESTONE_NOT_FOUND", 404, "Milestone not found"),
    MilestoneNotWaiting = ("MILESTONE_NOT_WAITING", 409, "Milestone is not waiting for a proof"),
    SequenceError = ("SEQUENCE_ERROR", 422, "An earlier milestone is not paid"),
    InsufficientEscrowBalance = ("INSUFFICIENT_ESCROW_BALANCE", 409, "Insufficient escrow balance"),
    MilestoneInvalidTransition = ("MILESTONE_INVALID_TRANSITION", 409, "Illegal milestone transition"),
    ProofDuplicate = ("PROOF_DUPLICATE", 409, "This file was already used as a proof"),
    ProofAlreadyDecided = ("PROOF_ALREADY_DECIDED", 409, "Proof already decided"),
    MissingExifTimestamp = ("MISSING_EXIF_TIMESTAMP", 422, "The photo has no capture time"),
    StaleTimestamp = ("STALE_TIMESTAMP", 422, "The photo is too old"),
    FutureTimestamp = ("FUTURE_TIMESTAMP", 422, "The photo is dated in the future"),
    MissingGps = ("MISSING_GPS", 422, "The photo has no GPS position"),
    GeofenceViolation = ("GEOFENCE_VIOLATION", 422, "The photo was taken outside the geofence"),
    ProofUnreadable = ("PROOF_UNREADABLE", 422, "The proof file cannot be read"),
    PayoutFailed = ("PAYOUT_FAILED", 409, "The PSP refused the payout"),
    PaymentNotRedrivable = ("PAYMENT_NOT_REDRIVABLE", 409, "Only a PENDING or ERROR payment can be executed again"),
    PayeeAlreadyAllowed = ("PAYEE_ALREADY_ALLOWED", 409, "Payee already allowed"),
    PayeeNotAllowed = ("PAYEE_NOT_ALLOWED", 403, "Payee not allowed"),
    DailyLimitReached = ("DAILY_LIMIT_REACHED", 409, "Daily limit reached"),
    TotalLimitReached = ("TOTAL_LIMIT_REACHED", 409, "Total limit reached"),
    // PSP webhooks.
    WebhookSignatureMissing = ("WEBHOOK_SIGNATURE_MISSING", 401, "Webhook signature missing"),
    WebhookTimestampInvalid = ("WEBHOOK_TIMESTAMP_INVALID", 401, "Webhook timestamp invalid"),
    WebhookTimestampSkew = ("WEBHOOK_TIMESTAMP_SKEW", 401, "Webhook timestamp outside tolerance"),
    WebhookSignatureInvalid = ("WEBHOOK_SIGNATURE_INVALID", 401, "Webhook signature invalid"),
    WebhookPayloadInvalid = ("WEBHOOK_PAYLOAD_INVALID", 400, "Webhook payload invalid"),
    // SAKA.
    SakaAmountNotAllowed = ("SAKA_AMOUNT_NOT_ALLOWED", 422, "Amount not allowed for this reason"),
    SakaReasonUnknown = ("SAKA_REASON_UNKNOWN", 422, "Unknown SAKA reason"),
    SakaInsufficient = ("SAKA_INSUFFICIENT", 409, "Not enough SAKA grains"),
    SakaSelfApproval = ("SAKA_SELF_APPROVAL", 403, "The requester cannot approve"),
    SakaDailyCapReached = ("SAKA_DAILY_CAP_REACHED", 409, "Daily manual adjustment cap reached"),
    SakaAdjustmentNotFound = ("SAKA_ADJUSTMENT_NOT_FOUND", 404, "SAKA adjustment not found"),
    SakaAdjustmentNotPending = ("SAKA_ADJUSTMENT_NOT_PENDING", 409, "SAKA adjustment is no longer pending approval"),
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ErrorCode::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown error code {text}")))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A business outcome a client sees: a refusal, a missing object, a
/// conflict or invalid fields. It is stored as the `error` of a failed job
/// and rendered as `application/problem+json` by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: ErrorCode,
    pub detail: String,
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into(), errors: Vec::new() }
    }

    /// A 422 carrying every invalid field at once. When all the field errors
    /// share a sharper code (say `AMOUNT_INVALID`), that code is used.
    pub fn fields(code: ErrorCode, errors: Vec<FieldError>) -> Self {
        let detail = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
        Self { code, detail, errors }
    }

    /// The problem body as JSON (RFC 9457 with our `code`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "type": format!("https://kobatela.dev/problems/{}", self.code.as_str().to_ascii_lowercase().replace('_', "-")),
            "title": self.code.title(),
            "status": self.code.status(),
            "detail": self.detail,
            "code": self.code.as_str(),
        });
        if !self.errors.is_empty()
            && let Some(map) = body.as_object_mut()
        {
            map.insert("errors".into(), serde_json::json!(self.errors));
        }
        body
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// The crate-wide error: a business [`Problem`] or an infrastructure fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Problem(Problem),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("queue: {0}")]
    Queue(String),
    /// A backing service is away (already judged so, e.g. for every request
    /// of a batch that failed together).
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SQLSTATEs of a server that is going away or not there yet: class 08
/// (connection exceptions), 57P01 admin shutdown, 57P02 crash shutdown,
/// 57P03 cannot connect now, 53300 too many connections.
pub fn is_unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

impl From<Problem> for Error {
    fn from(p: Problem) -> Self {
        Error::Problem(p)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("json: {e}"))
    }
}

impl Error {
    pub fn problem(code: ErrorCode, detail: impl Into<String>) -> Self {
        Error::Problem(Problem::new(code, detail))
    }

    pub fn not_found(code: ErrorCode, what: &str) -> Self {
        Error::Problem(Problem::new(code, format!("{what} not found")))
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Error::Internal(detail.to_string())
    }

    /// SQLSTATE of a database error, if any.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Db(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }

    /// Serialization failure or deadlock: the whole transaction is retried.
    pub fn is_retryable_conflict(&self) -> bool {
        matches!(self.sqlstate().as_deref(), Some("40001") | Some("40P01"))
    }

    /// A backing service is away (Redis, or Postgres shutting down,
    /// restarting, refusing connections or dropping them): the client may
    /// retry, so the answer is 503 `UNAVAILABLE`, never 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Queue(_) | Error::Unavailable(_) => true,
            Error::Db(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::BeginFailed,
            ) => true,
            Error::Db(sqlx::Error::Database(_)) => self.sqlstate().is_some_and(|code| is_unavailable_sqlstate(&code)),
            _ => false,
        }
    }

    /// The business problem, if this is one.
    pub fn as_problem(&self) -> Option<&Problem> {
        match self {
            Error::Problem(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_server_going_away_is_unavailable_and_a_bug_is_not() {
        for code in ["57P01", "57P02", "57P03", "08000", "08003", "08006", "08P01", "53300"] {
            assert!(is_unavailable_sqlstate(code), "{code}");
        }
        for code in ["23505", "40001", "42P01", "57014", "XX000"] {
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
        assert!(Error::Db(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(Error::Queue("broken pipe".into()).is_unavailable());
        assert!(!Error::Db(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!Error::internal("bug").is_unavailable());
    }

    #[test]
    fn error_code_strings_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate code {}", code.as_str());
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            assert!(code.status() >= 400 && code.status() < 600);
        }
    }

    #[test]
    fn every_error_code_is_named_in_the_spec() {
        // The spec lives beside the repository (../shared). Codes we added
        // for HTTP plumbing are listed here with the reason they exist.
        let ours = [
            "METHOD_NOT_ALLOWED",
            "REQUEST_TIMEOUT",
            "PAYLOAD_TOO_LARGE",
            "UNSUPPORTED_MEDIA_TYPE",
            "UNAVAILABLE",
            "JOB_NOT_DEAD",
            "MANDATE_NOT_FOUND",
            "MANDATE_NOT_ACTIVE",
            "PURCHASE_NOT_FOUND",
            // Approving or rejecting an unknown, or an already decided or
            // expired, manual adjustment.
            "SAKA_ADJUSTMENT_NOT_FOUND",
            "SAKA_ADJUSTMENT_NOT_PENDING",
            // Approving or rejecting an admin grant already decided or
            // expired (an unknown one is plain NOT_FOUND).
            "ADMIN_GRANT_NOT_PENDING",
            // A payout the PSP refused (the payment is ERROR, the balance freed);
            // re-driving a payment that is already SENT or SETTLED.
            "PAYOUT_FAILED",
            "PAYMENT_NOT_REDRIVABLE",
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
        let (Ok(domain), Ok(api)) =
            (std::fs::read_to_string(root.join("DOMAIN.md")), std::fs::read_to_string(root.join("API.md")))
        else {
            panic!("the spec (../shared/DOMAIN.md and API.md beside the repository) is missing");
        };
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(
                ours.contains(&s) || domain.contains(s) || api.contains(s),
                "{s} is neither in DOMAIN.md nor API.md nor in our documented list"
            );
        }
        let mut missing = Vec::new();
        for word in domain.split(|c: char| !(c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())) {
            let looks_like_code = word.len() > 6 && word.contains('_') && !word.starts_with('_');
            if looks_like_code && ErrorCode::parse(word).is_none() {
                missing.push(word.to_string());
            }
        }
        // Names in DOMAIN.md that are not error codes: states, audit actions,
        // reasons and event names.
        let not_codes = [
            "PENDING_REVIEW",
            "UNTRUSTED_SOURCE",
            "DOCUMENT_PROOF",
            "MANUAL_ADJUST",
            "PENDING_APPROVAL",
            "CONTENT_READ",
            "POLL_VOTE",
            "INVITE_ACCEPTED",
            "INVEST_BONUS",
            "DAILY_LIMIT",
            "SAKA_TIMEZONE",
            "MANDATE_CREATED",
            "MANDATE_CONSUMED",
            "MANDATE_REVOKED",
            "PURCHASE_COMPLETED",
            "PURCHASE_REFUSED",
            "UNAUTHORIZED_TRANSFER_ATTEMPT",
            // Alert types.
            "PAYEE_LIMIT_OVERRUN",
            "ESCROW_OVERDRAWN",
            "INVARIANT_VIOLATED",
            // The `code` of the 202 answer to an admin grant request
            // (waiting for a second admin, not refused).
            "ADMIN_GRANT_PENDING",
            "ADMIN_GRANTED",
            "PSP_DOUBLE_PAYOUT",
            "PSP_AUTH_FAILED",
            "PSP_FUNDING_REFUSED",
        ];
        missing.retain(|w| !not_codes.contains(&w.as_str()));
        assert!(missing.is_empty(), "codes in DOMAIN.md without an ErrorCode: {missing:?}");
    }
}
