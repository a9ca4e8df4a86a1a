//! The photo builder of `e2e::jpeg` checked against the reader the worker
//! uses (`shared::proofs::exif::read_photo`), against `kamadak-exif`'s own
//! JPEG reader, and by walking each file's structure from SOI to EOI, so the
//! end-to-end proof tests upload real files and not just EXIF bytes. No
//! database or binaries: these run without `cargo xtask test`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};
use e2e::jpeg::{PhotoSpec, jpeg, jpeg_without_exif, not_a_jpeg};
use shared::ErrorCode;
use shared::proofs::exif::{PhotoFacts, read_photo};
use shared::proofs::{Geofence, ProofType, Verdict, evaluate};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().expect("valid test time")
}

fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(y, mo, d).and_then(|date| date.and_hms_opt(h, mi, s)).expect("valid test time")
}

/// One marker segment or the entropy-coded data of a scan.
#[derive(Debug, PartialEq)]
enum Part {
    Marker(u8),
    Segment(u8, Vec<u8>),
    Scan(usize),
}

/// Decodes a JPEG's structure (ITU T.81 annex B): SOI, length-prefixed
/// segments, entropy-coded data after each SOS (where FF00 is a stuffed
/// byte and FFD0–FFD7 are restarts), and EOI as the very last two bytes.
fn structure(bytes: &[u8]) -> Result<Vec<Part>, String> {
    if bytes.get(..2) != Some(&[0xFF, 0xD8][..]) {
        return Err("no SOI".into());
    }
    let mut parts = vec![Part::Marker(0xD8)];
    let mut pos = 2;
    loop {
        if bytes.get(pos) != Some(&0xFF) {
            return Err(format!("no marker at {pos}"));
        }
        let code = *bytes.get(pos + 1).ok_or("cut after FF")?;
        pos += 2;
        if code == 0xD9 {
            parts.push(Part::Marker(code));
            return if pos == bytes.len() { Ok(parts) } else { Err(format!("{} bytes after EOI", bytes.len() - pos)) };
        }
        let len = usize::from(u16::from_be_bytes([
            *bytes.get(pos).ok_or("cut length")?,
            *bytes.get(pos + 1).ok_or("cut length")?,
        ]));
        let body = bytes.get(pos + 2..pos + len).ok_or(format!("segment {code:02X} overruns the file"))?;
        parts.push(Part::Segment(code, body.to_vec()));
        pos += len;
        if code == 0xDA {
            let start = pos;
            // The scan ends at the first marker that is neither a stuffed
            // byte (FF00) nor a restart (FFD0–FFD7).
            let ends_scan =
                |at: usize| bytes.get(at) == Some(&0xFF) && !matches!(bytes.get(at + 1), Some(0x00 | 0xD0..=0xD7));
            while !ends_scan(pos) {
                if pos >= bytes.len() {
                    return Err("scan runs to the end without EOI".into());
                }
                pos += 1;
            }
            parts.push(Part::Scan(pos - start));
        }
    }
}

fn codes(parts: &[Part]) -> Vec<u8> {
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Marker(c) | Part::Segment(c, _) => Some(*c),
            Part::Scan(_) => None,
        })
        .collect()
}

fn facts(bytes: &[u8]) -> PhotoFacts {
    read_photo(bytes).expect("the builder's files are readable")
}

fn assert_close(got: (f64, f64), want: (f64, f64)) {
    assert!((got.0 - want.0).abs() < 1e-6 && (got.1 - want.1).abs() < 1e-6, "got {got:?}, want {want:?}");
}

#[test]
fn every_built_file_is_a_complete_baseline_jpeg_with_exif_right_after_soi() {
    let specs = [
        PhotoSpec::default(),
        PhotoSpec {
            gps: Some((48.8566, 2.3522)),
            gps_time: Some(utc(2030, 1, 1, 0, 0, 0)),
            seed: 1,
            ..PhotoSpec::default()
        },
        PhotoSpec { original: Some((local(2030, 1, 1, 1, 0, 0), "+01:00")), seed: 2, ..PhotoSpec::default() },
    ];
    for spec in &specs {
        let bytes = jpeg(spec);
        let parts = structure(&bytes).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        // SOI, APP1, COM, DQT, SOF0, DHT, DHT, SOS, EOI.
        assert_eq!(codes(&parts), vec![0xD8, 0xE1, 0xFE, 0xDB, 0xC0, 0xC4, 0xC4, 0xDA, 0xD9], "{spec:?}");
        let Part::Segment(0xE1, app1) = &parts[1] else { panic!("APP1 first: {parts:?}") };
        assert!(app1.starts_with(b"Exif\0\0"));
        let tiff_header = &app1[6..10];
        assert!(tiff_header == b"MM\0*" || tiff_header == b"II*\0", "{tiff_header:02X?}");
        // Odd seeds are little-endian, even ones big-endian.
        assert_eq!(tiff_header == b"II*\0", spec.seed % 2 == 1);
        let Part::Segment(0xC0, frame) = &parts[4] else { panic!("SOF0: {parts:?}") };
        assert_eq!(frame[..6], [8, 0, 8, 0, 8, 1], "8-bit, 8x8, one component");
        assert!(parts.contains(&Part::Scan(1)), "one byte of entropy-coded data");
    }
    let plain = structure(&jpeg_without_exif(3)).expect("structure");
    assert_eq!(codes(&plain), vec![0xD8, 0xFE, 0xDB, 0xC0, 0xC4, 0xC4, 0xDA, 0xD9]);
    assert!(structure(&not_a_jpeg()).is_err());
}

#[test]
fn gps_position_and_gps_time_read_back_as_written() {
    let cases = [
        ((48.8566, 2.3522), utc(2030, 5, 17, 12, 0, 0)),
        ((-33.8688, 151.2093), utc(2030, 12, 31, 23, 59, 59)),
        ((40.7128, -74.0060), utc(2031, 2, 28, 0, 0, 1)),
        ((-22.906_847, -43.172_896), utc(2032, 2, 29, 6, 7, 8) + TimeDelta::milliseconds(250)),
        ((0.0, 0.0), utc(2030, 1, 1, 0, 0, 0)),
        ((89.999_999, 179.999_999), utc(2030, 6, 1, 12, 30, 0)),
        ((1.999_999_999_9, -0.000_000_4), utc(2030, 6, 1, 12, 30, 0)),
    ];
    for (seed, (position, at)) in cases.into_iter().enumerate() {
        let spec = PhotoSpec { gps: Some(position), gps_time: Some(at), seed: seed as u64, ..PhotoSpec::default() };
        let got = facts(&jpeg(&spec));
        let gps = got.gps.unwrap_or_else(|| panic!("no gps for {spec:?}"));
        assert_close((gps.lat, gps.lng), position);
        assert_eq!(got.captured_at, Some(at), "{spec:?}");
    }
}

#[test]
fn date_time_original_with_its_offset_reads_back_in_utc() {
    let cases = [
        (local(2030, 1, 1, 0, 30, 0), "+01:00", utc(2029, 12, 31, 23, 30, 0)),
        (local(2030, 6, 15, 20, 0, 0), "-05:30", utc(2030, 6, 16, 1, 30, 0)),
        (local(2030, 3, 3, 3, 3, 3), "+00:00", utc(2030, 3, 3, 3, 3, 3)),
        (local(2030, 3, 3, 14, 0, 0), "+14:00", utc(2030, 3, 3, 0, 0, 0)),
    ];
    for (seed, (original, offset, expected)) in cases.into_iter().enumerate() {
        let spec = PhotoSpec { original: Some((original, offset)), seed: seed as u64, ..PhotoSpec::default() };
        let got = facts(&jpeg(&spec));
        assert_eq!(got, PhotoFacts { captured_at: Some(expected), gps: None }, "{spec:?}");
    }
}

#[test]
fn gps_time_takes_precedence_over_date_time_original() {
    let spec = PhotoSpec {
        gps_time: Some(utc(2030, 1, 1, 12, 0, 0)),
        original: Some((local(2030, 1, 1, 9, 0, 0), "+00:00")),
        ..PhotoSpec::default()
    };
    assert_eq!(facts(&jpeg(&spec)).captured_at, Some(utc(2030, 1, 1, 12, 0, 0)));
}

#[test]
fn files_without_time_or_exif_read_as_empty_facts_and_not_a_jpeg_is_unreadable() {
    assert_eq!(facts(&jpeg(&PhotoSpec::default())), PhotoFacts::default());
    assert_eq!(facts(&jpeg_without_exif(9)), PhotoFacts::default());
    let gps_only = facts(&jpeg(&PhotoSpec { gps: Some((10.0, 20.0)), ..PhotoSpec::default() }));
    assert_eq!(gps_only.captured_at, None);
    assert_eq!(read_photo(&not_a_jpeg()), Err(ErrorCode::ProofUnreadable));
}

#[test]
fn kamadak_exifs_own_jpeg_reader_finds_the_same_fields() {
    let spec = PhotoSpec {
        gps: Some((48.8566, 2.3522)),
        gps_time: Some(utc(2030, 5, 17, 12, 0, 0)),
        original: Some((local(2030, 5, 17, 14, 0, 0), "+02:00")),
        seed: 5,
    };
    let bytes = jpeg(&spec);
    let exif =
        exif::Reader::new().read_from_container(&mut std::io::Cursor::new(&bytes)).expect("kamadak reads the file");
    let text = |tag| exif.get_field(tag, exif::In::PRIMARY).map(|f| f.display_value().to_string());
    assert_eq!(text(exif::Tag::GPSLatitudeRef).as_deref(), Some("N"));
    assert_eq!(text(exif::Tag::GPSDateStamp).as_deref(), Some("2030-05-17"));
    assert_eq!(text(exif::Tag::DateTimeOriginal).as_deref(), Some("2030-05-17 14:00:00"));
    assert_eq!(text(exif::Tag::OffsetTimeOriginal).as_deref(), Some("\"+02:00\""));
}

#[test]
fn distinct_seeds_make_distinct_files_with_the_same_facts() {
    let spec = |seed| PhotoSpec {
        gps: Some((1.0, 2.0)),
        gps_time: Some(utc(2030, 1, 1, 0, 0, 0)),
        seed,
        ..PhotoSpec::default()
    };
    let files: Vec<Vec<u8>> = (0..20).map(|seed| jpeg(&spec(seed))).collect();
    for (i, a) in files.iter().enumerate() {
        for b in &files[i + 1..] {
            assert_ne!(a, b);
        }
        assert_eq!(facts(a), facts(&files[0]));
    }
}

#[test]
fn the_builders_files_drive_each_photo_verdict() {
    let uploaded_at = utc(2030, 5, 17, 12, 0, 0);
    let fence = Geofence { lat: 48.8566, lng: 2.3522, radius_m: 200.0 };
    let good = PhotoSpec {
        gps: Some((48.8566, 2.3522)),
        gps_time: Some(uploaded_at - TimeDelta::minutes(10)),
        ..PhotoSpec::default()
    };
    let verdict =
        |spec: &PhotoSpec, source| evaluate(&jpeg(spec), ProofType::Photo, Some(&fence), source, uploaded_at).verdict;
    assert_eq!(verdict(&good, "app"), Verdict::Approved);
    assert_eq!(verdict(&good, "email"), Verdict::Review(vec!["UNTRUSTED_SOURCE".into()]));
    let far = PhotoSpec { gps: Some((48.8666, 2.3522)), ..good.clone() };
    assert_eq!(verdict(&far, "app"), Verdict::Rejected(ErrorCode::GeofenceViolation));
    let stale = PhotoSpec { gps_time: Some(uploaded_at - TimeDelta::minutes(121)), ..good.clone() };
    assert_eq!(verdict(&stale, "app"), Verdict::Rejected(ErrorCode::StaleTimestamp));
    let future = PhotoSpec { gps_time: Some(uploaded_at + TimeDelta::minutes(3)), ..good.clone() };
    assert_eq!(verdict(&future, "app"), Verdict::Rejected(ErrorCode::FutureTimestamp));
    let no_gps = PhotoSpec { gps: None, ..good.clone() };
    assert_eq!(verdict(&no_gps, "app"), Verdict::Rejected(ErrorCode::MissingGps));
    let no_time = PhotoSpec { gps_time: None, ..good.clone() };
    assert_eq!(verdict(&no_time, "app"), Verdict::Rejected(ErrorCode::MissingExifTimestamp));
    let unreadable = evaluate(&not_a_jpeg(), ProofType::Photo, Some(&fence), "app", uploaded_at).verdict;
    assert_eq!(unreadable, Verdict::Rejected(ErrorCode::ProofUnreadable));
}
