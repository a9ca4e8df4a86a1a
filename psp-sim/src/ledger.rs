//! What the simulator holds, in memory only: the payouts by idempotency
//! key, the fundings, the webhooks it sent. Payouts and fundings share one
//! sequence, by which `GET /payouts` and `GET /fundings` are paged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rust_decimal::Decimal;
use serde::Serialize;

use crate::config::Settings;

/// One idempotency key as the simulator saw it: one payout.
#[derive(Debug, Clone, Serialize)]
pub struct PayoutRecord {
    /// Its place in the PSP's log, for paging (`?since=`).
    pub seq: u64,
    pub created_at: String,
    pub payment_id: String,
    /// `None` for a refused payout: a refusal creates nothing at the PSP.
    pub psp_ref: Option<String>,
    pub amount: String,
    pub currency: String,
    pub payee_ref: Option<String>,
    pub kind: Option<String>,
    pub idempotency_key: String,
    /// POSTs received with this key, the first included.
    pub calls: u32,
    /// `accepted` or `refused`.
    pub status: &'static str,
    /// What the PSP reported (or will report) of an accepted payout:
    /// `settled` or `failed`; a late reversal may change it.
    pub outcome: Option<&'static str>,
    #[serde(skip)]
    pub amount_value: Decimal,
}

/// A sender's funding the PSP took, announced by `funding.succeeded`.
#[derive(Debug, Clone, Serialize)]
pub struct FundingRecord {
    pub seq: u64,
    pub id: String,
    pub escrow_id: String,
    pub amount: String,
    pub currency: String,
    /// The id of its `funding.succeeded` event (our deposit is keyed by it).
    pub event_id: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookRecord {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub payment_id: Option<String>,
    pub attempts: u32,
    pub delivered: bool,
    /// The HTTP status of the last try, `None` if it got no answer.
    pub last_status: Option<u16>,
    /// The signed body exactly as sent (the first version sent under this
    /// id), so a test can replay a captured event byte for byte.
    pub body: String,
}

#[derive(Default)]
pub struct Ledger {
    /// The last sequence number given (payouts and fundings share it).
    seq: u64,
    pub fundings: Vec<FundingRecord>,
    pub payouts: Vec<PayoutRecord>,
    pub payout_by_key: HashMap<String, usize>,
    pub webhooks: Vec<WebhookRecord>,
    webhook_by_event: HashMap<String, usize>,
}

impl Ledger {
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The payout asked under `key`, if any.
    pub fn payout(&mut self, key: &str) -> Option<&mut PayoutRecord> {
        let i = *self.payout_by_key.get(key)?;
        self.payouts.get_mut(i)
    }

    pub fn add_payout(&mut self, record: PayoutRecord) {
        self.payout_by_key.insert(record.idempotency_key.clone(), self.payouts.len());
        self.payouts.push(record);
    }

    /// The record for an event id, created on first use (a replayed id from
    /// `/sim/events` keeps counting on the same record).
    pub fn webhook(
        &mut self,
        event_id: &str,
        kind: &str,
        payment_id: Option<String>,
        body: &[u8],
    ) -> &mut WebhookRecord {
        let index = match self.webhook_by_event.get(event_id) {
            Some(&i) => i,
            None => {
                self.webhooks.push(WebhookRecord {
                    event_id: event_id.to_string(),
                    kind: kind.to_string(),
                    payment_id,
                    attempts: 0,
                    delivered: false,
                    last_status: None,
                    body: String::from_utf8_lossy(body).into_owned(),
                });
                self.webhook_by_event.insert(event_id.to_string(), self.webhooks.len() - 1);
                self.webhooks.len() - 1
            }
        };
        &mut self.webhooks[index]
    }
}

/// Answers switched at run time by `POST /sim/config` (a test makes the
/// PSP fail a payout, or refuse our key, then recover).
#[derive(Default)]
pub struct Overrides {
    pub fail_amounts: Option<Vec<Decimal>>,
    pub status_amounts: Option<BTreeMap<Decimal, u16>>,
}

pub struct Sim {
    pub http: reqwest::Client,
    pub settings: Settings,
    ledger: Mutex<Ledger>,
    overrides: Mutex<Overrides>,
}

pub type SharedSim = Arc<Sim>;

impl Sim {
    pub fn new(settings: Settings) -> SharedSim {
        Arc::new(Sim {
            http: reqwest::Client::new(),
            settings,
            ledger: Mutex::new(Ledger::default()),
            overrides: Mutex::new(Overrides::default()),
        })
    }

    /// The ledger is plain data updated in single steps, so a panic elsewhere
    /// cannot leave it half-written: a poisoned lock is still usable.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn overrides(&self) -> MutexGuard<'_, Overrides> {
        self.overrides.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a payout of `amount` is reported `payment.failed`.
    pub fn fails(&self, amount: Decimal) -> bool {
        match &self.overrides().fail_amounts {
            Some(list) => list.contains(&amount),
            None => self.settings.fail_amounts.contains(&amount),
        }
    }

    /// The HTTP status a payout of `amount` is answered with, if any.
    pub fn status_for(&self, amount: Decimal) -> Option<u16> {
        match &self.overrides().status_amounts {
            Some(map) => map.get(&amount).copied(),
            None => self.settings.status_amounts.get(&amount).copied(),
        }
    }
}
