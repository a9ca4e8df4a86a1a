//! The vocabulary of a scene: steps, what each must get back, and the
//! photos of proof uploads.

use reqwest::Method;
use serde_json::Value;

pub(super) struct Scene {
    pub(super) title: &'static str,
    pub(super) steps: Vec<Step>,
}

/// What a step must get back.
#[derive(Clone, Copy, Debug)]
pub(super) enum Expect {
    /// This HTTP status.
    Status(u16),
    /// A job whose receipt ends `succeeded`.
    Succeeded,
    /// A job whose receipt ends `failed` with this error code.
    Failed(&'static str),
    /// A refusal with one of these codes, either straight from the API (a
    /// 4xx problem) or as a `failed` receipt.
    Refused(&'static [&'static str]),
}

/// Who a step talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// The API, with the step's key.
    Api,
    /// The PSP simulator's own `/sim/*` views, without a key.
    PspSim,
    /// The `api` binary run on the host, as the operator runs it (with the
    /// database's credentials); `path` holds its arguments.
    Host,
}

/// A proof upload: `POST /proofs` as multipart/form-data with a real JPEG
/// made when the step runs (its EXIF GPS time is relative to now).
#[derive(Clone, Copy, Debug)]
pub(super) struct Upload {
    /// The escrow id, as a template (`{escrow.id}`).
    pub(super) escrow: &'static str,
    pub(super) milestone_idx: u32,
    pub(super) source: &'static str,
    pub(super) photo: Photo,
}

/// Where and when the photo of an upload was taken, for its EXIF.
#[derive(Clone, Copy, Debug)]
pub(super) struct Photo {
    /// Makes each file distinct (the API refuses a file used twice).
    pub(super) seed: u64,
    /// Metres north (negative: south) of the site's centre.
    pub(super) north_m: f64,
    /// Minutes before the upload, in the EXIF GPS time (UTC).
    pub(super) minutes_ago: i64,
}

impl Photo {
    /// The JPEG file and one line saying what its EXIF holds.
    pub(super) fn file(&self, now: chrono::DateTime<chrono::Utc>) -> (Vec<u8>, String) {
        let (lat, lng) = (SITE_LAT + self.north_m / METRES_PER_DEGREE, SITE_LNG);
        let taken = now - chrono::Duration::minutes(self.minutes_ago);
        let file = e2e::jpeg::jpeg(&e2e::jpeg::PhotoSpec {
            gps: Some((lat, lng)),
            gps_time: Some(taken),
            original: None,
            seed: self.seed,
        });
        let about = format!(
            "JPEG of {} bytes, EXIF GPS {lat:.6}, {lng:.6} ({:.0} m {} of the fence centre, radius {SITE_RADIUS_M:.0} m), GPS time {} ({} min ago)",
            file.len(),
            self.north_m.abs(),
            if self.north_m < 0.0 { "south" } else { "north" },
            taken.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.minutes_ago,
        );
        (file, about)
    }
}

/// The building site of the escrow scene: Abidjan's Plateau, and the radius
/// of both milestones' geofence.
pub(super) const SITE_LAT: f64 = 5.3200;
pub(super) const SITE_LNG: f64 = -4.0170;
pub(super) const SITE_RADIUS_M: f64 = 150.0;
/// Metres per degree of latitude on the 6,371 km sphere the API uses.
pub(super) const METRES_PER_DEGREE: f64 = 6_371_000.0 * std::f64::consts::PI / 180.0;

/// One HTTP call of a scene. Strings in `path`, `body`, the upload's
/// escrow and the expected field values may hold `{name}` placeholders for
/// values saved by earlier steps.
pub(super) struct Step {
    pub(super) title: &'static str,
    /// The saved value holding the API key to call with (unused for the
    /// simulator).
    pub(super) key: &'static str,
    pub(super) target: Target,
    pub(super) method: Method,
    pub(super) path: &'static str,
    pub(super) body: Option<Value>,
    /// A proof upload instead of a JSON body.
    pub(super) upload: Option<Upload>,
    /// A job endpoint: sent with `Idempotency-Key` and `Prefer: wait=10`,
    /// its receipt followed until the job ends.
    pub(super) job: bool,
    /// A GET repeated until the fields hold (or [`POLL_DEADLINE`] passes),
    /// for what settles later, like a payout through the PSP's webhook.
    pub(super) poll: bool,
    pub(super) expect: Expect,
    /// JSON pointer and the value it must hold (in the receipt for a job).
    pub(super) fields: Vec<(&'static str, &'static str)>,
    /// More JSON pointers a polling step shows while it waits.
    pub(super) watch: Vec<&'static str>,
    /// Name and JSON pointer of values to keep for later steps.
    pub(super) save: Vec<(&'static str, &'static str)>,
}

impl Step {
    pub(super) fn post(title: &'static str, key: &'static str, path: &'static str, body: Value) -> Self {
        Self {
            title,
            key,
            target: Target::Api,
            method: Method::POST,
            path,
            body: Some(body),
            upload: None,
            job: false,
            poll: false,
            expect: Expect::Status(201),
            fields: Vec::new(),
            watch: Vec::new(),
            save: Vec::new(),
        }
    }

    pub(super) fn get(title: &'static str, key: &'static str, path: &'static str) -> Self {
        Self {
            method: Method::GET,
            body: None,
            expect: Expect::Status(200),
            ..Self::post(title, key, path, Value::Null)
        }
    }

    pub(super) fn job(title: &'static str, key: &'static str, path: &'static str, body: Value) -> Self {
        Self { job: true, expect: Expect::Succeeded, ..Self::post(title, key, path, body) }
    }

    /// A proof upload, a job.
    pub(super) fn upload(title: &'static str, key: &'static str, upload: Upload) -> Self {
        Self { body: None, upload: Some(upload), ..Self::job(title, key, "/proofs", Value::Null) }
    }

    /// A GET repeated until its fields hold.
    pub(super) fn poll(title: &'static str, key: &'static str, path: &'static str) -> Self {
        Self { poll: true, ..Self::get(title, key, path) }
    }

    /// `api keys create --user NAME --role admin` on the host: the operator
    /// makes an admin the API could only request. Saves `NAME.id` and
    /// `NAME.key` (the step's `save` names them).
    pub(super) fn host_admin(title: &'static str, args: &'static str, id: &'static str, key: &'static str) -> Self {
        Self { target: Target::Host, body: None, expect: Expect::Succeeded, ..Self::get(title, "", args) }
            .save(id, "/id")
            .save(key, "/key")
    }

    /// A GET of the PSP simulator's own views.
    pub(super) fn sim_get(title: &'static str, path: &'static str) -> Self {
        Self { target: Target::PspSim, ..Self::get(title, "", path) }
    }

    pub(super) fn watch(mut self, pointer: &'static str) -> Self {
        self.watch.push(pointer);
        self
    }

    pub(super) fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    pub(super) fn field(mut self, pointer: &'static str, value: &'static str) -> Self {
        self.fields.push((pointer, value));
        self
    }

    pub(super) fn save(mut self, name: &'static str, pointer: &'static str) -> Self {
        self.save.push((name, pointer));
        self
    }
}
