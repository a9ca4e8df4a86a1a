//! Reading a photo proof: the JPEG structure is walked by hand up to the
//! start of scan (so "is this a JPEG" is our rule, not a library's guess),
//! and the `Exif\0\0` APP1 segment, if any, is handed to `kamadak-exif`.
//! Only two facts come out: the capture time in UTC and the GPS position.
//! Every malformed value (a zero denominator, a latitude of 95°, a time
//! without a zone) is treated as absent, never guessed and never a panic:
//! the bytes come straight from an untrusted upload.

use ::exif::{Exif, In, Rational, Reader, Tag, Value};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};

use super::geo::GpsPoint;
use crate::error::ErrorCode;

/// What a photo says about itself. Both facts are optional: a JPEG without
/// EXIF is still a readable photo, and the rules decide what a gap means.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PhotoFacts {
    pub captured_at: Option<DateTime<Utc>>,
    pub gps: Option<GpsPoint>,
}

/// Reads the capture time and GPS position of a JPEG.
///
/// `Err(ProofUnreadable)` only when the file is not a JPEG whose segments
/// parse up to the start of scan. Missing or broken EXIF gives empty facts.
pub fn read_photo(bytes: &[u8]) -> Result<PhotoFacts, ErrorCode> {
    let tiff = exif_payload(bytes).ok_or(ErrorCode::ProofUnreadable)?;
    let Some(exif) = tiff.and_then(parse_tiff) else {
        return Ok(PhotoFacts::default());
    };
    Ok(PhotoFacts { captured_at: capture_time(&exif), gps: gps_point(&exif) })
}

// JPEG markers (ITU T.81, table B.1).
const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const APP1: u8 = 0xE1;
const EXIF_HEADER: &[u8] = b"Exif\0\0";

/// Walks the marker segments from SOI to SOS. `None`: not a parseable JPEG;
/// `Some(None)`: a JPEG without EXIF; `Some(Some(tiff))`: the TIFF bytes of
/// the first EXIF APP1 segment.
fn exif_payload(bytes: &[u8]) -> Option<Option<&[u8]>> {
    if bytes.get(..2)? != [0xFF, SOI] {
        return None;
    }
    let mut pos = 2;
    let mut exif = None;
    let mut frame_seen = false;
    loop {
        // A marker is 0xFF and a code; extra 0xFF fill bytes may precede the
        // code (T.81 B.1.1.2). Anything else between segments is corrupt.
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let code = *bytes.get(pos)?;
        pos += 1;
        // Before the scan there is no place for a second SOI, an early EOI
        // (no image), byte stuffing, TEM or restart markers.
        if matches!(code, SOI | EOI | 0x00 | 0x01 | 0xD0..=0xD7) {
            return None;
        }
        let len_bytes = bytes.get(pos..pos + 2)?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        // The length counts its own two bytes.
        if len < 2 {
            return None;
        }
        let body = bytes.get(pos + 2..pos + len)?;
        pos += len;
        match code {
            // Start of frame (baseline, progressive, lossless…): C4 (DHT),
            // C8 (reserved JPG) and CC (DAC) share the range but are not.
            0xC0..=0xCF if !matches!(code, 0xC4 | 0xC8 | 0xCC) => {
                if !frame_header_is_sane(body) {
                    return None;
                }
                frame_seen = true;
            }
            APP1 if exif.is_none() && body.starts_with(EXIF_HEADER) => {
                exif = Some(&body[EXIF_HEADER.len()..]);
            }
            SOS => {
                // A scan needs a frame, and its header must count right:
                // Ns, then 2 bytes per component, then Ss, Se, Ah/Al.
                let components = usize::from(*body.first()?);
                let complete = components >= 1 && body.len() == 1 + 2 * components + 3;
                return (frame_seen && complete).then_some(exif);
            }
            _ => {}
        }
    }
}

/// SOFn body: precision, height, width, Nf, then 3 bytes per component. A
/// zero width or no component cannot be an image.
fn frame_header_is_sane(body: &[u8]) -> bool {
    let [_precision, _h1, _h2, w1, w2, components, ..] = *body else {
        return false;
    };
    let components = usize::from(components);
    u16::from_be_bytes([w1, w2]) != 0 && components >= 1 && body.len() == 6 + 3 * components
}

/// Parses the TIFF structure, keeping whatever fields parse: one broken
/// maker-note entry must not hide a good GPS block. A file whose EXIF does
/// not parse at all is treated as one without EXIF.
fn parse_tiff(tiff: &[u8]) -> Option<Exif> {
    let mut reader = Reader::new();
    reader.continue_on_error(true);
    match reader.read_raw(tiff.to_vec()) {
        Ok(exif) => Some(exif),
        Err(err) => err.distill_partial_result(|_ignored| ()).ok(),
    }
}

/// GPS date and time (UTC by definition) first; else `DateTimeOriginal`
/// with its `OffsetTimeOriginal`. A local time without an offset is not a
/// capture time: the zone would be a guess, and a guess of hours decides
/// between stale and fresh.
fn capture_time(exif: &Exif) -> Option<DateTime<Utc>> {
    gps_time(exif).or_else(|| original_time(exif))
}

fn gps_time(exif: &Exif) -> Option<DateTime<Utc>> {
    let date = parse_date(ascii(exif, Tag::GPSDateStamp)?)?;
    let &[hour, minute, second] = rationals(exif, Tag::GPSTimeStamp)? else {
        return None;
    };
    let (second, nanos) = seconds_and_nanos(second)?;
    // `from_hms_nano_opt` refuses hour ≥ 24, minute ≥ 60 and second ≥ 60.
    let time = NaiveTime::from_hms_nano_opt(whole(hour)?, whole(minute)?, second, nanos)?;
    Some(NaiveDateTime::new(date, time).and_utc())
}

fn original_time(exif: &Exif) -> Option<DateTime<Utc>> {
    let local = parse_date_time(ascii(exif, Tag::DateTimeOriginal)?)?;
    let offset = parse_offset(ascii(exif, Tag::OffsetTimeOriginal)?)?;
    // Local time = UTC + offset, so UTC = local − offset.
    Some(local.checked_sub_signed(offset)?.and_utc())
}

fn gps_point(exif: &Exif) -> Option<GpsPoint> {
    let lat = degrees(exif, Tag::GPSLatitude)?;
    let lng = degrees(exif, Tag::GPSLongitude)?;
    // Without its reference a coordinate's sign would be a guess, and a
    // wrong hemisphere is thousands of kilometres.
    let lat = match ascii(exif, Tag::GPSLatitudeRef)?.trim_ascii() {
        b"N" => lat,
        b"S" => -lat,
        _ => return None,
    };
    let lng = match ascii(exif, Tag::GPSLongitudeRef)?.trim_ascii() {
        b"E" => lng,
        b"W" => -lng,
        _ => return None,
    };
    GpsPoint::new(lat, lng)
}

/// Degrees, minutes, seconds as three rationals (EXIF 2.3, GPSLatitude).
fn degrees(exif: &Exif, tag: Tag) -> Option<f64> {
    let &[d, m, s] = rationals(exif, tag)? else {
        return None;
    };
    let (d, m, s) = (ratio(d)?, ratio(m)?, ratio(s)?);
    // Minutes or seconds of 60 and more are not a position, they are a bug
    // in the writer; the range of the total is checked by `GpsPoint::new`.
    if m >= 60.0 || s >= 60.0 {
        return None;
    }
    Some(d + m / 60.0 + s / 3600.0)
}

fn ascii(exif: &Exif, tag: Tag) -> Option<&[u8]> {
    match &exif.get_field(tag, In::PRIMARY)?.value {
        Value::Ascii(strings) => strings.first().map(Vec::as_slice),
        _ => None,
    }
}

fn rationals(exif: &Exif, tag: Tag) -> Option<&[Rational]> {
    match &exif.get_field(tag, In::PRIMARY)?.value {
        Value::Rational(values) => Some(values),
        _ => None,
    }
}

/// A rational as f64, `None` for a zero denominator (which would be ∞ or
/// NaN). Both halves are u32, so the result is finite and non-negative.
fn ratio(r: Rational) -> Option<f64> {
    (r.denom != 0).then(|| f64::from(r.num) / f64::from(r.denom))
}

/// A rational that must be a whole number (hours, minutes).
fn whole(r: Rational) -> Option<u32> {
    (r.denom != 0 && r.num.is_multiple_of(r.denom)).then(|| r.num / r.denom)
}

/// Seconds may carry a fraction (`3015/100`); kept to the nanosecond in
/// integers so no float rounding moves a time across a limit.
fn seconds_and_nanos(r: Rational) -> Option<(u32, u32)> {
    if r.denom == 0 {
        return None;
    }
    let nanos = u64::from(r.num % r.denom) * 1_000_000_000 / u64::from(r.denom);
    Some((r.num / r.denom, u32::try_from(nanos).ok()?))
}

/// The number written by `text` if it is all ASCII digits (no sign, no
/// space: EXIF dates are fixed-width).
fn digits(text: &[u8]) -> Option<u32> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0u32, |n, d| n.checked_mul(10)?.checked_add(u32::from(d - b'0')))
}

/// `YYYY:MM:DD`.
fn parse_date(text: &[u8]) -> Option<NaiveDate> {
    let [y1, y2, y3, y4, b':', m1, m2, b':', d1, d2] = *text else {
        return None;
    };
    let year = i32::try_from(digits(&[y1, y2, y3, y4])?).ok()?;
    NaiveDate::from_ymd_opt(year, digits(&[m1, m2])?, digits(&[d1, d2])?)
}

/// `YYYY:MM:DD HH:MM:SS` (DateTimeOriginal, no zone).
fn parse_date_time(text: &[u8]) -> Option<NaiveDateTime> {
    if text.len() != 19 || text[10] != b' ' {
        return None;
    }
    let date = parse_date(&text[..10])?;
    let [h1, h2, b':', m1, m2, b':', s1, s2] = *text.get(11..)? else {
        return None;
    };
    let time = NaiveTime::from_hms_opt(digits(&[h1, h2])?, digits(&[m1, m2])?, digits(&[s1, s2])?)?;
    Some(NaiveDateTime::new(date, time))
}

/// `+HH:MM` or `-HH:MM` (OffsetTimeOriginal) as the offset east of UTC.
fn parse_offset(text: &[u8]) -> Option<TimeDelta> {
    let [sign, h1, h2, b':', m1, m2] = *text else {
        return None;
    };
    let (hours, minutes) = (digits(&[h1, h2])?, digits(&[m1, m2])?);
    // Real zones span −12:00 to +14:00; anything past a day is garbage.
    if hours > 23 || minutes > 59 {
        return None;
    }
    let magnitude = TimeDelta::minutes(i64::from(hours * 60 + minutes));
    match sign {
        b'+' => Some(magnitude),
        b'-' => Some(-magnitude),
        _ => None,
    }
}

/// Builders of EXIF JPEGs from raw fields, for the tests of this module and
/// of [`super::evaluate`]. They take raw `Field`s (not a friendly spec like
/// the end-to-end builder in `tests/src/jpeg.rs`) because the point here is
/// to write the malformed values a friendly builder refuses to write.
#[cfg(test)]
pub(crate) mod testing {
    use ::exif::experimental::Writer;
    use ::exif::{Field, In, Rational, Tag, Value};
    use chrono::{DateTime, Datelike, Timelike, Utc};

    /// An 8x8 grey baseline JPEG (one DQT, SOF0, one-code DC and AC Huffman
    /// tables, a scan of one block whose DC difference is 0 and EOB). libjpeg
    /// decodes it to 64 pixels of value 128.
    #[rustfmt::skip]
    pub const GREY_8X8: &[u8] = &[
        0xFF, 0xD8, // SOI
        0xFF, 0xDB, 0x00, 0x43, 0x00, // DQT, table 0, 64 × 1
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, //
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, //
        0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x08, 0x00, 0x08, 0x01, 0x01, 0x11, 0x00, // SOF0 8x8, 1 comp
        0xFF, 0xC4, 0x00, 0x14, 0x00, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, // DHT DC0
        0xFF, 0xC4, 0x00, 0x14, 0x10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, // DHT AC0
        0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, // SOS
        0x3F, // DC "0", EOB "0", padded with ones
        0xFF, 0xD9, // EOI
    ];

    pub fn field(tag: Tag, value: Value) -> Field {
        Field { tag, ifd_num: In::PRIMARY, value }
    }

    pub fn ascii(tag: Tag, text: &str) -> Field {
        field(tag, Value::Ascii(vec![text.as_bytes().to_vec()]))
    }

    pub fn rationals(tag: Tag, parts: &[(u32, u32)]) -> Field {
        field(tag, Value::Rational(parts.iter().map(|&p| Rational::from(p)).collect()))
    }

    /// |degrees| as D/1, M/1, S/10000, computed in whole units of 1/10000
    /// arc second so rounding carries instead of writing 60 seconds.
    pub fn dms(value: f64) -> Vec<(u32, u32)> {
        // u64: 180° is 6.48e9 units, past u32.
        let units = (value.abs() * 36_000_000.0).round() as u64;
        let (d, rest) = (units / 36_000_000, units % 36_000_000);
        let part = |n: u64| u32::try_from(n).expect("a part fits in u32");
        vec![(part(d), 1), (part(rest / 600_000), 1), (part(rest % 600_000), 10_000)]
    }

    /// GPS position fields with N/S and E/W references.
    pub fn gps(lat: f64, lng: f64) -> Vec<Field> {
        vec![
            rationals(Tag::GPSLatitude, &dms(lat)),
            ascii(Tag::GPSLatitudeRef, if lat < 0.0 { "S" } else { "N" }),
            rationals(Tag::GPSLongitude, &dms(lng)),
            ascii(Tag::GPSLongitudeRef, if lng < 0.0 { "W" } else { "E" }),
        ]
    }

    /// GPS date and time stamp fields for `at` (whole seconds).
    pub fn gps_time(at: DateTime<Utc>) -> Vec<Field> {
        vec![
            ascii(Tag::GPSDateStamp, &format!("{:04}:{:02}:{:02}", at.year(), at.month(), at.day())),
            rationals(Tag::GPSTimeStamp, &[(at.hour(), 1), (at.minute(), 1), (at.second(), 1)]),
        ]
    }

    /// The TIFF bytes of `fields` (a Software tag is always added: the
    /// writer refuses an empty IFD).
    pub fn tiff(fields: &[Field]) -> Vec<u8> {
        let software = ascii(Tag::Software, "kobatela-tests");
        let mut writer = Writer::new();
        writer.push_field(&software);
        for f in fields {
            writer.push_field(f);
        }
        let mut out = std::io::Cursor::new(Vec::new());
        writer.write(&mut out, false).expect("EXIF fields encode");
        out.into_inner()
    }

    /// [`GREY_8X8`] with an `Exif\0\0` APP1 segment holding `tiff` right
    /// after SOI.
    pub fn jpeg_with_tiff(tiff: &[u8]) -> Vec<u8> {
        let len = u16::try_from(2 + 6 + tiff.len()).expect("EXIF fits in one segment");
        let mut out = GREY_8X8[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(b"Exif\0\0");
        out.extend_from_slice(tiff);
        out.extend_from_slice(&GREY_8X8[2..]);
        out
    }

    pub fn jpeg_with(fields: &[Field]) -> Vec<u8> {
        jpeg_with_tiff(&tiff(fields))
    }
}

#[cfg(test)]
mod tests {
    // Named imports: the helpers share names with this module's readers,
    // and a named import wins over the glob.
    use super::testing::{GREY_8X8, ascii, field, gps, gps_time, jpeg_with, jpeg_with_tiff, rationals};
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().expect("valid test time")
    }

    fn read(fields: &[::exif::Field]) -> PhotoFacts {
        read_photo(&jpeg_with(fields)).expect("readable")
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn a_plain_jpeg_without_exif_is_readable_with_no_facts() {
        assert_eq!(GREY_8X8.len(), 141, "the file checked with libjpeg");
        assert_eq!(read_photo(GREY_8X8), Ok(PhotoFacts::default()));
    }

    #[test]
    fn things_that_are_not_jpegs_are_unreadable() {
        let cases: &[&[u8]] = &[
            b"",
            b"\xFF",
            b"\xFF\xD8",
            b"%PDF-1.7\n",
            b"\x89PNG\r\n\x1a\n",
            b"\xFF\xD8\xFF\xD9",                                 // SOI, EOI: no image
            b"\xFF\xD8\xFF\xD8",                                 // two SOIs
            b"\xFF\xD8\x00\xFF\xDA\x00\x08",                     // garbage between segments
            b"\xFF\xD8\xFF\xE0\x00\x01",                         // length below 2
            b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00",                 // segment longer than the file
            b"\xFF\xD8\xFF\xDA\x00\x08\x01\x01\x00\x00\x3F\x00", // scan without frame
        ];
        for case in cases {
            assert_eq!(read_photo(case), Err(ErrorCode::ProofUnreadable), "{case:02X?}");
        }
    }

    #[test]
    fn every_truncation_before_the_scan_header_ends_is_unreadable_and_after_it_is_readable() {
        let full = jpeg_with(&gps(48.8566, 2.3522));
        let scan_end = full.len() - 3; // entropy byte 0x3F and EOI follow SOS
        for len in 0..=full.len() {
            let result = read_photo(&full[..len]);
            if len < scan_end {
                assert_eq!(result, Err(ErrorCode::ProofUnreadable), "len {len}");
            } else {
                assert!(result.is_ok(), "len {len}");
            }
        }
    }

    #[test]
    fn fill_bytes_before_a_marker_are_allowed() {
        let mut bytes = GREY_8X8[..2].to_vec();
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
        bytes.extend_from_slice(&GREY_8X8[3..]);
        assert_eq!(read_photo(&bytes), Ok(PhotoFacts::default()));
    }

    #[test]
    fn gps_position_is_read_in_all_four_hemispheres() {
        for (lat, lng) in [(48.8566, 2.3522), (-33.8688, 151.2093), (40.7128, -74.006), (-22.9068, -43.1729)] {
            let facts = read(&gps(lat, lng));
            let point = facts.gps.expect("gps");
            assert!(close(point.lat, lat) && close(point.lng, lng), "{point:?} vs {lat},{lng}");
        }
    }

    #[test]
    fn gps_date_and_time_give_the_capture_time_in_utc() {
        let facts = read(&gps_time(at(2030, 2, 28, 23, 59, 59)));
        assert_eq!(facts.captured_at, Some(at(2030, 2, 28, 23, 59, 59)));
        assert_eq!(facts.gps, None);
    }

    #[test]
    fn fractional_gps_seconds_are_kept_to_the_nanosecond() {
        let facts = read(&[
            ascii(Tag::GPSDateStamp, "2030:01:02"),
            rationals(Tag::GPSTimeStamp, &[(10, 1), (20, 1), (3015, 100)]),
        ]);
        let expected = at(2030, 1, 2, 10, 20, 30) + TimeDelta::milliseconds(150);
        assert_eq!(facts.captured_at, Some(expected));
    }

    #[test]
    fn date_time_original_with_its_offset_is_converted_to_utc() {
        let facts =
            read(&[ascii(Tag::DateTimeOriginal, "2030:01:01 00:30:00"), ascii(Tag::OffsetTimeOriginal, "+01:00")]);
        assert_eq!(facts.captured_at, Some(at(2029, 12, 31, 23, 30, 0)));
        let facts =
            read(&[ascii(Tag::DateTimeOriginal, "2030:06:15 20:00:00"), ascii(Tag::OffsetTimeOriginal, "-05:30")]);
        assert_eq!(facts.captured_at, Some(at(2030, 6, 16, 1, 30, 0)));
    }

    #[test]
    fn date_time_original_without_an_offset_is_no_capture_time() {
        let facts = read(&[ascii(Tag::DateTimeOriginal, "2030:01:01 12:00:00")]);
        assert_eq!(facts.captured_at, None);
    }

    #[test]
    fn gps_time_wins_over_date_time_original() {
        let mut fields = gps_time(at(2030, 1, 1, 12, 0, 0));
        fields.push(ascii(Tag::DateTimeOriginal, "2030:01:01 09:00:00"));
        fields.push(ascii(Tag::OffsetTimeOriginal, "+00:00"));
        assert_eq!(read(&fields).captured_at, Some(at(2030, 1, 1, 12, 0, 0)));
    }

    #[test]
    fn an_invalid_gps_time_falls_back_to_date_time_original() {
        let original = [ascii(Tag::DateTimeOriginal, "2030:01:01 09:00:00"), ascii(Tag::OffsetTimeOriginal, "+02:00")];
        let bad_gps_times: Vec<Vec<::exif::Field>> = vec![
            // date without time, time without date
            vec![ascii(Tag::GPSDateStamp, "2030:01:01")],
            vec![rationals(Tag::GPSTimeStamp, &[(1, 1), (2, 1), (3, 1)])],
            // impossible values
            vec![ascii(Tag::GPSDateStamp, "2030:02:30"), rationals(Tag::GPSTimeStamp, &[(1, 1), (2, 1), (3, 1)])],
            vec![ascii(Tag::GPSDateStamp, "2030:01:01"), rationals(Tag::GPSTimeStamp, &[(24, 1), (0, 1), (0, 1)])],
            vec![ascii(Tag::GPSDateStamp, "2030:01:01"), rationals(Tag::GPSTimeStamp, &[(1, 1), (60, 1), (0, 1)])],
            vec![ascii(Tag::GPSDateStamp, "2030:01:01"), rationals(Tag::GPSTimeStamp, &[(1, 1), (2, 1), (60, 1)])],
            // zero denominators, a fractional hour, two parts only
            vec![ascii(Tag::GPSDateStamp, "2030:01:01"), rationals(Tag::GPSTimeStamp, &[(1, 0), (2, 1), (3, 1)])],
            vec![ascii(Tag::GPSDateStamp, "2030:01:01"), rationals(Tag::GPSTimeStamp, &[(1, 1), (2, 1), (3, 0)])],
            vec![ascii(Tag::GPSDateStamp, "2030:01:01"), rationals(Tag::GPSTimeStamp, &[(3, 2), (2, 1), (3, 1)])],
            vec![ascii(Tag::GPSDateStamp, "2030:01:01"), rationals(Tag::GPSTimeStamp, &[(1, 1), (2, 1)])],
            // malformed date text
            vec![ascii(Tag::GPSDateStamp, "2030-01-01"), rationals(Tag::GPSTimeStamp, &[(1, 1), (2, 1), (3, 1)])],
            vec![ascii(Tag::GPSDateStamp, "+030:01:01"), rationals(Tag::GPSTimeStamp, &[(1, 1), (2, 1), (3, 1)])],
            vec![ascii(Tag::GPSDateStamp, "    :  :  "), rationals(Tag::GPSTimeStamp, &[(1, 1), (2, 1), (3, 1)])],
        ];
        for bad in bad_gps_times {
            let mut fields = bad.clone();
            fields.extend(original.iter().cloned());
            assert_eq!(read(&fields).captured_at, Some(at(2030, 1, 1, 7, 0, 0)), "{bad:?}");
            assert_eq!(read(&bad).captured_at, None, "{bad:?}");
        }
    }

    #[test]
    fn malformed_original_times_and_offsets_are_no_capture_time() {
        let cases = [
            ("2030:01:01 12:00:00", "+01"),
            ("2030:01:01 12:00:00", "01:00"),
            ("2030:01:01 12:00:00", "+24:00"),
            ("2030:01:01 12:00:00", "+01:60"),
            ("2030:01:01 12:00:00", "Z"),
            ("2030:01:01 12:00:00", "   :  "),
            ("2030:01:01T12:00:00", "+01:00"),
            ("2030:13:01 12:00:00", "+01:00"),
            ("2030:01:01 25:00:00", "+01:00"),
            ("    :  :     :  :  ", "+01:00"),
            ("2030:01:01 12:00", "+01:00"),
        ];
        for (original, offset) in cases {
            let facts = read(&[ascii(Tag::DateTimeOriginal, original), ascii(Tag::OffsetTimeOriginal, offset)]);
            assert_eq!(facts.captured_at, None, "{original} {offset}");
        }
    }

    #[test]
    fn malformed_gps_positions_are_no_gps() {
        let lat = |parts: &[(u32, u32)]| rationals(Tag::GPSLatitude, parts);
        let lng = rationals(Tag::GPSLongitude, &[(2, 1), (21, 1), (0, 1)]);
        let (n, e) = (ascii(Tag::GPSLatitudeRef, "N"), ascii(Tag::GPSLongitudeRef, "E"));
        let cases: Vec<Vec<::exif::Field>> = vec![
            vec![lat(&[(48, 0), (51, 1), (0, 1)]), n.clone(), lng.clone(), e.clone()],
            vec![lat(&[(48, 1), (51, 1), (0, 0)]), n.clone(), lng.clone(), e.clone()],
            vec![lat(&[(91, 1), (0, 1), (0, 1)]), n.clone(), lng.clone(), e.clone()],
            vec![lat(&[(90, 1), (1, 1), (0, 1)]), n.clone(), lng.clone(), e.clone()],
            vec![lat(&[(48, 1), (60, 1), (0, 1)]), n.clone(), lng.clone(), e.clone()],
            vec![lat(&[(48, 1), (51, 1), (60, 1)]), n.clone(), lng.clone(), e.clone()],
            vec![lat(&[(48, 1), (51, 1)]), n.clone(), lng.clone(), e.clone()],
            vec![lat(&[(48, 1), (51, 1), (0, 1)]), lng.clone(), e.clone()],
            vec![lat(&[(48, 1), (51, 1), (0, 1)]), ascii(Tag::GPSLatitudeRef, "X"), lng.clone(), e.clone()],
            vec![lat(&[(48, 1), (51, 1), (0, 1)]), n.clone(), lng.clone()],
            vec![
                lat(&[(48, 1), (51, 1), (0, 1)]),
                n.clone(),
                rationals(Tag::GPSLongitude, &[(181, 1), (0, 1), (0, 1)]),
                e.clone(),
            ],
            vec![lat(&[(48, 1), (51, 1), (0, 1)]), n.clone(), e.clone()],
            vec![field(Tag::GPSLatitude, Value::Short(vec![48, 51, 0])), n.clone(), lng.clone(), e.clone()],
        ];
        for case in cases {
            assert_eq!(read(&case).gps, None, "{case:?}");
        }
        // The same fields, well formed, do give a position.
        let ok = read(&[lat(&[(48, 1), (51, 1), (0, 1)]), n, lng, e]).gps.expect("gps");
        assert!(close(ok.lat, 48.85) && close(ok.lng, 2.35), "{ok:?}");
    }

    #[test]
    fn broken_exif_in_a_good_jpeg_is_no_exif_not_unreadable() {
        for tiff in [&b""[..], b"MM\0*", b"II*\0\xFF\xFF\xFF\xFF", b"MM\0*\0\0\0\x08\xFF\xFF"] {
            assert_eq!(read_photo(&jpeg_with_tiff(tiff)), Ok(PhotoFacts::default()), "{tiff:02X?}");
        }
    }

    #[test]
    fn a_huge_entry_count_or_value_count_does_not_allocate_or_panic() {
        // IFD at 8 claiming 65535 entries, then one entry with a count of
        // 0xFFFFFFFF rationals at an offset past the end.
        let mut tiff = b"MM\0*\0\0\0\x08\xFF\xFF".to_vec();
        tiff.extend_from_slice(&[0x00, 0x02, 0x00, 0x05, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x20]);
        assert_eq!(read_photo(&jpeg_with_tiff(&tiff)), Ok(PhotoFacts::default()));
    }
}
