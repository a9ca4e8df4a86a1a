//! Positions on the Earth for photo proofs: a GPS point read from a photo,
//! a milestone's geofence, and the haversine distance between two points
//! (spherical Earth of radius 6,371,000 m, as DOMAIN.md fixes it, so every
//! component computes the same metres for the same pair).

use serde::{Deserialize, Serialize};

/// Mean Earth radius in metres; DOMAIN.md fixes it so distances are
/// reproducible, not because the sphere is exact.
pub const EARTH_RADIUS_M: f64 = 6_371_000.0;

/// A WGS 84 position in decimal degrees: north and east are positive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpsPoint {
    pub lat: f64,
    pub lng: f64,
}

impl GpsPoint {
    /// The point if both coordinates are finite and on the globe, else
    /// `None`: a NaN or a latitude of 91° is not a place to measure from.
    pub fn new(lat: f64, lng: f64) -> Option<GpsPoint> {
        let valid =
            lat.is_finite() && lng.is_finite() && (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng);
        valid.then_some(GpsPoint { lat, lng })
    }
}

/// A milestone's optional geofence: a centre and a radius in metres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Geofence {
    pub lat: f64,
    pub lng: f64,
    pub radius_m: f64,
}

impl Geofence {
    pub fn centre(&self) -> GpsPoint {
        GpsPoint { lat: self.lat, lng: self.lng }
    }

    /// Whether `distance_m` is inside the fence. Exactly on the radius is
    /// inside (DOMAIN.md: distance ≤ radius). Written as `<=` so that a NaN
    /// distance or radius is outside: a fence that cannot be measured must
    /// not let a proof through.
    pub fn contains_distance(&self, distance_m: f64) -> bool {
        distance_m <= self.radius_m
    }
}

/// Great-circle distance in metres between `a` and `b` (haversine formula).
pub fn haversine_m(a: GpsPoint, b: GpsPoint) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let d_lat = lat2 - lat1;
    let d_lng = (b.lng - a.lng).to_radians();
    let h = (d_lat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (d_lng / 2.0).sin().powi(2);
    // Rounding can push `h` a hair above 1 for antipodal points; clamping
    // keeps `asin` out of NaN.
    2.0 * EARTH_RADIUS_M * h.clamp(0.0, 1.0).sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lng: f64) -> GpsPoint {
        GpsPoint { lat, lng }
    }

    #[test]
    fn the_distance_from_a_point_to_itself_is_zero() {
        assert_eq!(haversine_m(p(48.8566, 2.3522), p(48.8566, 2.3522)), 0.0);
    }

    #[test]
    fn one_degree_of_latitude_is_the_radius_times_pi_over_180() {
        let d = haversine_m(p(0.0, 0.0), p(1.0, 0.0));
        let expected = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        assert!((d - expected).abs() < 1e-6, "{d} vs {expected}");
        assert!((d - 111_194.93).abs() < 0.01, "{d}");
    }

    #[test]
    fn paris_to_london_matches_an_independent_haversine() {
        // Python: 2*6371000*asin(sqrt(sin(dφ/2)**2 + cos φ1 cos φ2 sin(dλ/2)**2))
        // for (48.8566, 2.3522) → (51.5074, -0.1278) gives 343_556.06 m.
        let d = haversine_m(p(48.8566, 2.3522), p(51.5074, -0.1278));
        assert!((d - 343_556.06).abs() < 1.0, "{d}");
    }

    #[test]
    fn the_distance_is_symmetric_and_antipodes_are_half_the_circumference() {
        let (a, b) = (p(12.5, -7.25), p(-33.9, 151.2));
        assert_eq!(haversine_m(a, b), haversine_m(b, a));
        let half = haversine_m(p(0.0, 0.0), p(0.0, 180.0));
        assert!((half - EARTH_RADIUS_M * std::f64::consts::PI).abs() < 1e-3, "{half}");
    }

    #[test]
    fn exactly_on_the_radius_is_inside_and_nan_is_outside() {
        let fence = Geofence { lat: 0.0, lng: 0.0, radius_m: 100.0 };
        assert!(fence.contains_distance(100.0));
        assert!(fence.contains_distance(99.999));
        assert!(!fence.contains_distance(100.001));
        assert!(!fence.contains_distance(f64::NAN));
        let nan_fence = Geofence { radius_m: f64::NAN, ..fence };
        assert!(!nan_fence.contains_distance(0.0));
    }

    #[test]
    fn points_off_the_globe_are_refused() {
        assert!(GpsPoint::new(90.0, 180.0).is_some());
        assert!(GpsPoint::new(-90.0, -180.0).is_some());
        assert!(GpsPoint::new(90.000_001, 0.0).is_none());
        assert!(GpsPoint::new(0.0, 180.5).is_none());
        assert!(GpsPoint::new(f64::NAN, 0.0).is_none());
        assert!(GpsPoint::new(0.0, f64::INFINITY).is_none());
    }
}
