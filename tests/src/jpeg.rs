//! Real JPEG files with real EXIF for the proof tests: a tiny known-good
//! baseline image with an `Exif\0\0` APP1 segment written by
//! `kamadak-exif`'s writer, so the API and the worker see what a phone
//! would upload, not a mock. The `seed` goes into a comment segment: every
//! file has its own SHA-256 (the API refuses a file used twice) without
//! changing a pixel.

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use exif::experimental::Writer;
use exif::{Field, In, Rational, Tag, Value};

/// What the photo's EXIF says. Every part is optional, so each rule of
/// DOMAIN.md ("Proofs") has a file that breaks it alone.
#[derive(Debug, Clone, Default)]
pub struct PhotoSpec {
    /// Latitude and longitude in decimal degrees (north and east positive),
    /// written as degrees, minutes, seconds to 1/10000 of an arc second.
    pub gps: Option<(f64, f64)>,
    /// GPSDateStamp and GPSTimeStamp (UTC), kept to the millisecond.
    pub gps_time: Option<DateTime<Utc>>,
    /// DateTimeOriginal (local time) and OffsetTimeOriginal (`"+01:00"`).
    pub original: Option<(NaiveDateTime, &'static str)>,
    /// Distinguishes otherwise identical files; odd seeds also write the
    /// TIFF little-endian, so both byte orders are exercised.
    pub seed: u64,
}

/// An 8x8 grey baseline JPEG, hand-assembled: one quantisation table (all
/// ones), SOF0 with one component, a DC and an AC Huffman table of one code
/// each, and a scan of one block (DC difference 0, end of block). libjpeg
/// decodes it to 64 pixels of value 128; `file` calls it "JPEG image data,
/// baseline, precision 8, 8x8, components 1".
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

/// A JPEG whose EXIF says what `spec` says (an EXIF segment is always
/// present, with at least a Software tag, even when `spec` asks for no time
/// and no position).
pub fn jpeg(spec: &PhotoSpec) -> Vec<u8> {
    let mut out = GREY_8X8[..2].to_vec();
    push_segment(&mut out, 0xE1, &[&b"Exif\0\0"[..], &tiff(spec)].concat());
    push_comment(&mut out, spec.seed);
    out.extend_from_slice(&GREY_8X8[2..]);
    out
}

/// A JPEG with no EXIF at all (a comment segment only, for the seed).
pub fn jpeg_without_exif(seed: u64) -> Vec<u8> {
    let mut out = GREY_8X8[..2].to_vec();
    push_comment(&mut out, seed);
    out.extend_from_slice(&GREY_8X8[2..]);
    out
}

/// A file that is not a JPEG at all (it claims to be a PDF).
pub fn not_a_jpeg() -> Vec<u8> {
    b"%PDF-1.4\n% kobatela test: a proof upload that is not a JPEG\n%%EOF\n".to_vec()
}

fn push_comment(out: &mut Vec<u8>, seed: u64) {
    push_segment(out, 0xFE, format!("kobatela test photo {seed:016x}").as_bytes());
}

/// A marker segment: FF, code, big-endian length counting itself, body.
fn push_segment(out: &mut Vec<u8>, code: u8, body: &[u8]) {
    let len = u16::try_from(body.len() + 2).expect("a test segment fits in 64 KiB");
    out.extend_from_slice(&[0xFF, code]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
}

/// The TIFF structure (IFD0, Exif IFD, GPS IFD) for `spec`.
fn tiff(spec: &PhotoSpec) -> Vec<u8> {
    let primary = |tag, value| Field { tag, ifd_num: In::PRIMARY, value };
    let ascii = |text: &str| Value::Ascii(vec![text.as_bytes().to_vec()]);
    let mut fields = vec![primary(Tag::Software, ascii("kobatela-tests"))];
    if let Some((lat, lng)) = spec.gps {
        fields.push(primary(Tag::GPSVersionID, Value::Byte(vec![2, 3, 0, 0])));
        fields.push(primary(Tag::GPSLatitudeRef, ascii(if lat < 0.0 { "S" } else { "N" })));
        fields.push(primary(Tag::GPSLatitude, dms(lat)));
        fields.push(primary(Tag::GPSLongitudeRef, ascii(if lng < 0.0 { "W" } else { "E" })));
        fields.push(primary(Tag::GPSLongitude, dms(lng)));
    }
    if let Some(at) = spec.gps_time {
        let date = format!("{:04}:{:02}:{:02}", at.year(), at.month(), at.day());
        fields.push(primary(Tag::GPSDateStamp, ascii(&date)));
        let millis = at.second() * 1000 + at.timestamp_subsec_millis();
        let stamp =
            vec![Rational::from((at.hour(), 1)), Rational::from((at.minute(), 1)), Rational::from((millis, 1000))];
        fields.push(primary(Tag::GPSTimeStamp, Value::Rational(stamp)));
    }
    if let Some((local, offset)) = spec.original {
        fields.push(primary(Tag::ExifVersion, Value::Undefined(b"0232".to_vec(), 0)));
        fields.push(primary(Tag::DateTimeOriginal, ascii(&local.format("%Y:%m:%d %H:%M:%S").to_string())));
        fields.push(primary(Tag::OffsetTimeOriginal, ascii(offset)));
    }
    let mut writer = Writer::new();
    for field in &fields {
        writer.push_field(field);
    }
    let mut out = std::io::Cursor::new(Vec::new());
    writer.write(&mut out, spec.seed % 2 == 1).expect("the EXIF fields encode");
    out.into_inner()
}

/// |degrees| as three rationals D/1, M/1, S/10000, computed in whole units
/// of 1/10000 arc second so that rounding carries into minutes and degrees
/// instead of writing 60 seconds.
fn dms(degrees: f64) -> Value {
    let units = (degrees.abs() * 3600.0 * 10_000.0).round() as u64;
    let (d, rest) = (units / 36_000_000, units % 36_000_000);
    let (m, s) = (rest / 600_000, rest % 600_000);
    let part = |n: u64, denom: u32| Rational::from((u32::try_from(n).expect("a coordinate part fits in u32"), denom));
    Value::Rational(vec![part(d, 1), part(m, 1), part(s, 10_000)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_that_round_up_to_sixty_carry_into_minutes_and_degrees() {
        let Value::Rational(parts) = dms(1.999_999_999_9) else { panic!("rationals") };
        let parts: Vec<(u32, u32)> = parts.iter().map(|r| (r.num, r.denom)).collect();
        assert_eq!(parts, vec![(2, 1), (0, 1), (0, 10_000)]);
    }

    #[test]
    fn each_seed_gives_a_different_file() {
        let spec = |seed| PhotoSpec { seed, ..PhotoSpec::default() };
        assert_ne!(jpeg(&spec(1)), jpeg(&spec(2)));
        assert_ne!(jpeg_without_exif(1), jpeg_without_exif(2));
        assert_eq!(jpeg(&spec(7)), jpeg(&spec(7)));
    }
}
