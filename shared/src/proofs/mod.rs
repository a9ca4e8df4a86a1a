//! Proof evaluation, as pure functions over the uploaded bytes (no database,
//! no clock): [`exif`] reads what a JPEG says about itself, [`geo`] measures
//! distances to a geofence, and [`evaluate`] applies the rules of DOMAIN.md
//! ("Proofs") in their order to give a verdict. The `proof_validation` job
//! stores the verdict; keeping the rules here makes every branch a unit test.

pub mod exif;
pub mod geo;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

pub use self::exif::{PhotoFacts, read_photo};
pub use self::geo::{Geofence, GpsPoint, haversine_m};
use crate::error::ErrorCode;

/// The kind of proof a milestone asks for (`milestones.proof_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProofType {
    Photo,
    Document,
}

impl ProofType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProofType::Photo => "PHOTO",
            ProofType::Document => "DOCUMENT",
        }
    }

    pub fn parse(text: &str) -> Option<ProofType> {
        match text {
            "PHOTO" => Some(ProofType::Photo),
            "DOCUMENT" => Some(ProofType::Document),
            _ => None,
        }
    }
}

/// Review reason: the upload did not come from the app or its camera.
pub const UNTRUSTED_SOURCE: &str = "UNTRUSTED_SOURCE";
/// Review reason: non-photo milestones are always reviewed by a person.
pub const DOCUMENT_PROOF: &str = "DOCUMENT_PROOF";

/// Sources whose uploads are trusted (DOMAIN.md: `app`, `camera`).
const TRUSTED_SOURCES: &[&str] = &["app", "camera"];

/// A photo may be at most this old at upload (inclusive).
pub fn max_age() -> TimeDelta {
    TimeDelta::minutes(120)
}

/// A photo may be dated at most this far after the upload (inclusive):
/// room for a camera clock a little ahead, not for a made-up date.
pub fn max_ahead() -> TimeDelta {
    TimeDelta::minutes(2)
}

/// What the rules decide about one proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A hard failure: the proof is `REJECTED` with this code and the
    /// milestone stays `WAITING`.
    Rejected(ErrorCode),
    /// Soft reasons, in a stable order: the proof waits for a person.
    Review(Vec<String>),
    /// All clear: proof and milestone `APPROVED`, payout enqueued.
    Approved,
}

/// The verdict and the facts behind it, all stored on the proof row. The
/// facts are filled whenever they were read, even for a rejection, so a
/// reviewer or support can see why.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub captured_at: Option<DateTime<Utc>>,
    pub gps: Option<GpsPoint>,
    /// Distance to the geofence centre, when there is a fence and a position.
    pub distance_m: Option<f64>,
}

/// Applies the proof rules to the uploaded bytes.
///
/// `uploaded_at` is when the API received the file (not when the job runs),
/// so a queue backlog never makes a fresh photo stale.
pub fn evaluate(
    bytes: &[u8],
    proof_type: ProofType,
    geofence: Option<&Geofence>,
    source: &str,
    uploaded_at: DateTime<Utc>,
) -> Evaluation {
    match proof_type {
        // A document is whatever file the milestone needs (a PDF, a scan):
        // no EXIF rule applies, a person always looks at it.
        ProofType::Document => {
            let mut reasons = vec![DOCUMENT_PROOF.to_string()];
            reasons.extend(soft_reasons(source));
            Evaluation { verdict: Verdict::Review(reasons), captured_at: None, gps: None, distance_m: None }
        }
        ProofType::Photo => match read_photo(bytes) {
            Ok(facts) => judge_photo(&facts, geofence, source, uploaded_at),
            Err(code) => {
                Evaluation { verdict: Verdict::Rejected(code), captured_at: None, gps: None, distance_m: None }
            }
        },
    }
}

/// The rules for a readable photo, in DOMAIN.md's order: the first hard
/// failure wins, then soft reasons, else approval.
pub fn judge_photo(
    facts: &PhotoFacts,
    geofence: Option<&Geofence>,
    source: &str,
    uploaded_at: DateTime<Utc>,
) -> Evaluation {
    let distance_m = match (geofence, facts.gps) {
        (Some(fence), Some(gps)) => Some(haversine_m(fence.centre(), gps)),
        _ => None,
    };
    let verdict = match hard_failure(facts, geofence, distance_m, uploaded_at) {
        Some(code) => Verdict::Rejected(code),
        None => {
            let reasons = soft_reasons(source);
            if reasons.is_empty() { Verdict::Approved } else { Verdict::Review(reasons) }
        }
    };
    Evaluation { verdict, captured_at: facts.captured_at, gps: facts.gps, distance_m }
}

fn hard_failure(
    facts: &PhotoFacts,
    geofence: Option<&Geofence>,
    distance_m: Option<f64>,
    uploaded_at: DateTime<Utc>,
) -> Option<ErrorCode> {
    let Some(captured_at) = facts.captured_at else {
        return Some(ErrorCode::MissingExifTimestamp);
    };
    // Both limits are inclusive: exactly 120 minutes old or exactly 2
    // minutes ahead still passes.
    if captured_at < uploaded_at - max_age() {
        return Some(ErrorCode::StaleTimestamp);
    }
    if captured_at > uploaded_at + max_ahead() {
        return Some(ErrorCode::FutureTimestamp);
    }
    if let Some(fence) = geofence {
        let Some(distance_m) = distance_m else {
            return Some(ErrorCode::MissingGps);
        };
        if !fence.contains_distance(distance_m) {
            return Some(ErrorCode::GeofenceViolation);
        }
    }
    None
}

fn soft_reasons(source: &str) -> Vec<String> {
    if TRUSTED_SOURCES.contains(&source) { Vec::new() } else { vec![UNTRUSTED_SOURCE.to_string()] }
}

#[cfg(test)]
mod tests {
    use super::exif::testing::{GREY_8X8, gps, gps_time, jpeg_with, jpeg_with_tiff};
    use super::*;
    use chrono::TimeZone;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn upload() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 5, 17, 12, 0, 0).single().expect("valid test time")
    }

    /// Paris, Notre-Dame; a fence of 100 m around it.
    const LAT: f64 = 48.853;
    const LNG: f64 = 2.3499;

    fn fence(radius_m: f64) -> Geofence {
        Geofence { lat: LAT, lng: LNG, radius_m }
    }

    fn facts(captured_at: Option<DateTime<Utc>>, gps: Option<GpsPoint>) -> PhotoFacts {
        PhotoFacts { captured_at, gps }
    }

    fn here() -> Option<GpsPoint> {
        Some(GpsPoint { lat: LAT, lng: LNG })
    }

    fn verdict(f: &PhotoFacts, geofence: Option<&Geofence>, source: &str) -> Verdict {
        judge_photo(f, geofence, source, upload()).verdict
    }

    fn rejected(code: ErrorCode) -> Verdict {
        Verdict::Rejected(code)
    }

    #[test]
    fn proof_types_round_trip_through_their_strings() {
        for t in [ProofType::Photo, ProofType::Document] {
            assert_eq!(ProofType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).ok(), Some(serde_json::json!(t.as_str())));
        }
        assert_eq!(ProofType::parse("photo"), None);
    }

    #[test]
    fn a_fresh_photo_inside_the_fence_from_the_app_is_approved() {
        let f = facts(Some(upload()), here());
        assert_eq!(verdict(&f, Some(&fence(100.0)), "app"), Verdict::Approved);
        assert_eq!(verdict(&f, Some(&fence(100.0)), "camera"), Verdict::Approved);
        assert_eq!(verdict(&f, None, "app"), Verdict::Approved);
    }

    #[test]
    fn a_real_jpeg_with_gps_time_and_position_is_approved_end_to_end() {
        let mut fields = gps(LAT, LNG);
        fields.extend(gps_time(upload() - TimeDelta::minutes(30)));
        let e = evaluate(&jpeg_with(&fields), ProofType::Photo, Some(&fence(100.0)), "app", upload());
        assert_eq!(e.verdict, Verdict::Approved);
        assert_eq!(e.captured_at, Some(upload() - TimeDelta::minutes(30)));
        let gps = e.gps.expect("gps");
        assert!((gps.lat - LAT).abs() < 1e-6 && (gps.lng - LNG).abs() < 1e-6);
        assert!(e.distance_m.expect("distance") < 0.1);
    }

    #[test]
    fn an_unreadable_photo_is_rejected_before_anything_else() {
        let e = evaluate(b"%PDF-1.7", ProofType::Photo, Some(&fence(100.0)), "email", upload());
        assert_eq!(e.verdict, rejected(ErrorCode::ProofUnreadable));
        assert_eq!((e.captured_at, e.gps, e.distance_m), (None, None, None));
    }

    #[test]
    fn a_jpeg_without_exif_is_missing_its_timestamp() {
        let e = evaluate(GREY_8X8, ProofType::Photo, None, "app", upload());
        assert_eq!(e.verdict, rejected(ErrorCode::MissingExifTimestamp));
        // The timestamp comes before the geofence: no time and no GPS is
        // reported as the time.
        let e = evaluate(GREY_8X8, ProofType::Photo, Some(&fence(100.0)), "app", upload());
        assert_eq!(e.verdict, rejected(ErrorCode::MissingExifTimestamp));
    }

    #[test]
    fn exactly_120_minutes_old_passes_and_one_second_more_is_stale() {
        let edge = upload() - TimeDelta::minutes(120);
        assert_eq!(verdict(&facts(Some(edge), None), None, "app"), Verdict::Approved);
        let stale = edge - TimeDelta::seconds(1);
        assert_eq!(verdict(&facts(Some(stale), None), None, "app"), rejected(ErrorCode::StaleTimestamp));
        let ancient = upload() - TimeDelta::days(400);
        assert_eq!(verdict(&facts(Some(ancient), None), None, "app"), rejected(ErrorCode::StaleTimestamp));
    }

    #[test]
    fn exactly_2_minutes_ahead_passes_and_one_second_more_is_future() {
        let edge = upload() + TimeDelta::minutes(2);
        assert_eq!(verdict(&facts(Some(edge), None), None, "app"), Verdict::Approved);
        let future = edge + TimeDelta::seconds(1);
        assert_eq!(verdict(&facts(Some(future), None), None, "app"), rejected(ErrorCode::FutureTimestamp));
    }

    #[test]
    fn the_age_limits_apply_to_times_read_from_a_real_file() {
        let file = |at: DateTime<Utc>| jpeg_with(&gps_time(at));
        let judge = |at| evaluate(&file(at), ProofType::Photo, None, "app", upload()).verdict;
        assert_eq!(judge(upload() - TimeDelta::minutes(120)), Verdict::Approved);
        assert_eq!(judge(upload() - TimeDelta::seconds(7201)), rejected(ErrorCode::StaleTimestamp));
        assert_eq!(judge(upload() + TimeDelta::minutes(2)), Verdict::Approved);
        assert_eq!(judge(upload() + TimeDelta::seconds(121)), rejected(ErrorCode::FutureTimestamp));
    }

    #[test]
    fn a_geofence_without_gps_is_missing_gps_and_no_fence_needs_no_gps() {
        let f = facts(Some(upload()), None);
        assert_eq!(verdict(&f, Some(&fence(100.0)), "app"), rejected(ErrorCode::MissingGps));
        assert_eq!(verdict(&f, None, "app"), Verdict::Approved);
    }

    #[test]
    fn the_time_rules_come_before_the_gps_rules() {
        let stale = facts(Some(upload() - TimeDelta::hours(3)), None);
        assert_eq!(verdict(&stale, Some(&fence(100.0)), "app"), rejected(ErrorCode::StaleTimestamp));
        let far_and_future = facts(Some(upload() + TimeDelta::hours(1)), Some(GpsPoint { lat: 0.0, lng: 0.0 }));
        assert_eq!(verdict(&far_and_future, Some(&fence(100.0)), "app"), rejected(ErrorCode::FutureTimestamp));
    }

    #[test]
    fn just_inside_the_radius_passes_and_just_outside_is_a_violation() {
        // A point due north of the centre, with the fence sized to the
        // measured distance so the boundary is exact.
        let point = GpsPoint { lat: LAT + 0.001, lng: LNG };
        let d = haversine_m(fence(0.0).centre(), point);
        assert!((d - 111.19).abs() < 0.01, "{d}");
        let f = facts(Some(upload()), Some(point));
        assert_eq!(verdict(&f, Some(&fence(d)), "app"), Verdict::Approved, "on the radius is inside");
        assert_eq!(verdict(&f, Some(&fence(d + 0.01)), "app"), Verdict::Approved);
        assert_eq!(verdict(&f, Some(&fence(d - 0.01)), "app"), rejected(ErrorCode::GeofenceViolation));
        let e = judge_photo(&f, Some(&fence(d - 0.01)), "app", upload());
        assert_eq!(e.distance_m, Some(d), "the distance is kept for the reviewer");
    }

    #[test]
    fn a_photo_far_away_is_a_geofence_violation_even_from_an_untrusted_source() {
        let f = facts(Some(upload()), Some(GpsPoint { lat: 51.5074, lng: -0.1278 }));
        assert_eq!(verdict(&f, Some(&fence(500.0)), "email"), rejected(ErrorCode::GeofenceViolation));
    }

    #[test]
    fn an_untrusted_source_sends_a_good_photo_to_review() {
        let f = facts(Some(upload()), here());
        for source in ["email", "", "App", "camera ", "upload"] {
            assert_eq!(
                verdict(&f, Some(&fence(100.0)), source),
                Verdict::Review(vec![UNTRUSTED_SOURCE.to_string()]),
                "{source:?}"
            );
        }
    }

    #[test]
    fn documents_are_always_reviewed_and_never_read() {
        let e = evaluate(b"%PDF-1.7 not a jpeg", ProofType::Document, Some(&fence(1.0)), "app", upload());
        assert_eq!(e.verdict, Verdict::Review(vec![DOCUMENT_PROOF.to_string()]));
        assert_eq!((e.captured_at, e.gps, e.distance_m), (None, None, None));
        let e = evaluate(b"", ProofType::Document, None, "email", upload());
        assert_eq!(e.verdict, Verdict::Review(vec![DOCUMENT_PROOF.to_string(), UNTRUSTED_SOURCE.to_string()]));
    }

    /// Arbitrary bytes and mutations of a valid EXIF JPEG never panic, and
    /// a verdict always comes back. The seed is fixed so a failure
    /// reproduces; the iteration count keeps the test under a few seconds.
    #[test]
    fn arbitrary_bytes_and_mutated_photos_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x6b6f_6261_7465_6c61);
        let mut fields = gps(-33.8688, 151.2093);
        fields.extend(gps_time(upload()));
        fields.push(super::exif::testing::ascii(::exif::Tag::DateTimeOriginal, "2030:05:17 14:00:00"));
        fields.push(super::exif::testing::ascii(::exif::Tag::OffsetTimeOriginal, "+02:00"));
        let valid = jpeg_with(&fields);
        assert_eq!(
            evaluate(&valid, ProofType::Photo, None, "app", upload()).verdict,
            Verdict::Approved,
            "the seed file is good"
        );
        let fence = fence(1_000.0);
        let check = |bytes: &[u8]| {
            let _ = read_photo(bytes);
            let _ = evaluate(bytes, ProofType::Photo, Some(&fence), "app", upload());
        };

        // Pure noise; noise after SOI for the segment walker; noise as the
        // TIFF body of a well-formed JPEG (after a valid TIFF header in
        // either byte order) for the EXIF parser and the value readers.
        for i in 0..6_000 {
            let len = rng.random_range(0..600);
            let noise: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
            let bytes = match i % 4 {
                0 => noise,
                1 => [&b"\xFF\xD8"[..], &noise].concat(),
                2 => jpeg_with_tiff(&[&b"MM\0*\0\0\0\x08"[..], &noise].concat()),
                _ => jpeg_with_tiff(&[&b"II*\0\x08\0\0\0"[..], &noise].concat()),
            };
            check(&bytes);
        }

        // Mutations of the valid file: flipped bytes, overwritten bytes,
        // truncation, and all three together.
        for _ in 0..6_000 {
            let mut bytes = valid.clone();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..bytes.len());
                if rng.random_bool(0.5) {
                    bytes[at] ^= 1 << rng.random_range(0..8);
                } else {
                    bytes[at] = rng.random();
                }
            }
            if rng.random_bool(0.3) {
                bytes.truncate(rng.random_range(0..bytes.len()));
            }
            check(&bytes);
        }

        // Every single-byte overwrite of the TIFF header and first IFD with
        // the values most likely to break arithmetic.
        for at in 0..valid.len().min(120) {
            for value in [0x00, 0x01, 0x7F, 0x80, 0xFF] {
                let mut bytes = valid.clone();
                bytes[at] = value;
                check(&bytes);
            }
        }
    }
}
