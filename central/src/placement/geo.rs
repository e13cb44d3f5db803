//! Points on the earth, great-circle distance (haversine) and region polygons.
//!
//! Regions are simple polygons of latitude/longitude points tested on the plane of the two
//! angles (good for the country- or province-sized areas regions are drawn for). A polygon may
//! not cross the antimeridian (longitude ±180): draw two regions instead.

/// Mean earth radius (IUGG), km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;
/// Most points a region may have.
pub const MAX_REGION_POINTS: usize = 1000;

pub use cairn_api::Point;

/// Why a point or a polygon is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeoError {
    /// Latitude outside -90..=90 (or not a number).
    #[error("{what}: latitude {value} is outside -90..=90")]
    Latitude {
        /// Which point.
        what: String,
        /// The value given.
        value: f64,
    },
    /// Longitude outside -180..=180 (or not a number).
    #[error("{what}: longitude {value} is outside -180..=180")]
    Longitude {
        /// Which point.
        what: String,
        /// The value given.
        value: f64,
    },
    /// A polygon needs at least three corners.
    #[error("a region needs at least 3 distinct points; got {0}")]
    TooFewPoints(usize),
    /// Too many points.
    #[error("a region has at most {MAX_REGION_POINTS} points; got {0}")]
    TooManyPoints(usize),
    /// Two consecutive corners are the same point.
    #[error("points {0} and {1} are the same place; drop one")]
    RepeatedPoint(usize, usize),
    /// Two edges cross.
    #[error("the edge from point {0} crosses the edge from point {1}; list the points in order around the region")]
    SelfIntersecting(usize, usize),
    /// All corners on one line.
    #[error("the points enclose no area (they lie on one line)")]
    NoArea,
    /// The polygon spans more than half the globe in longitude.
    #[error("the region spans {0:.1} degrees of longitude; regions may not cross the antimeridian (±180): split it in two")]
    Antimeridian(f64),
    /// A distance is out of range.
    #[error("`km` must be above 0 and at most 20040 (half the earth's circumference); got {0}")]
    Distance(f64),
}

/// Checks and distances of a [`Point`] (degrees north -90..=90 and east -180..=180).
pub trait PointGeo {
    /// Refuse values off the globe; `what` names the point in the message.
    fn validate(&self, what: &str) -> Result<(), GeoError>;

    /// Great-circle distance to `other` in km (haversine).
    fn distance_km(&self, other: &Point) -> f64;
}

impl PointGeo for Point {
    fn validate(&self, what: &str) -> Result<(), GeoError> {
        if !(-90.0..=90.0).contains(&self.latitude) {
            return Err(GeoError::Latitude {
                what: what.to_owned(),
                value: self.latitude,
            });
        }
        if !(-180.0..=180.0).contains(&self.longitude) {
            return Err(GeoError::Longitude {
                what: what.to_owned(),
                value: self.longitude,
            });
        }
        Ok(())
    }

    fn distance_km(&self, other: &Point) -> f64 {
        let (lat1, lat2) = (self.latitude.to_radians(), other.latitude.to_radians());
        let dlat = lat2 - lat1;
        let dlon = (other.longitude - self.longitude).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }
}

/// Check a distance in km.
pub fn validate_km(km: f64) -> Result<(), GeoError> {
    if km.is_finite() && km > 0.0 && km <= 20_040.0 {
        Ok(())
    } else {
        Err(GeoError::Distance(km))
    }
}

/// Refuse polygons that are not simple: off-globe points, fewer than 3 corners, repeated
/// consecutive corners, crossing edges, no area, or crossing the antimeridian.
pub fn validate_polygon(points: &[Point]) -> Result<(), GeoError> {
    for (i, p) in points.iter().enumerate() {
        p.validate(&format!("point {i}"))?;
    }
    if points.len() > MAX_REGION_POINTS {
        return Err(GeoError::TooManyPoints(points.len()));
    }
    // A closing point equal to the first is allowed (GeoJSON habit) and ignored.
    let ring = open_ring(points);
    if ring.len() < 3 {
        return Err(GeoError::TooFewPoints(ring.len()));
    }
    let n = ring.len();
    for i in 0..n {
        if ring[i] == ring[(i + 1) % n] {
            return Err(GeoError::RepeatedPoint(i, (i + 1) % n));
        }
    }
    let (min, max) = ring.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.longitude), hi.max(p.longitude))
    });
    if max - min > 180.0 {
        return Err(GeoError::Antimeridian(max - min));
    }
    for i in 0..n {
        for j in i + 1..n {
            // Adjacent edges share a corner; that is not a crossing.
            if j == i + 1 || (i == 0 && j == n - 1) {
                continue;
            }
            if segments_intersect(ring[i], ring[(i + 1) % n], ring[j], ring[(j + 1) % n]) {
                return Err(GeoError::SelfIntersecting(i, j));
            }
        }
    }
    let area2: f64 = (0..n)
        .map(|i| {
            let (a, b) = (ring[i], ring[(i + 1) % n]);
            a.longitude * b.latitude - b.longitude * a.latitude
        })
        .sum();
    if area2.abs() < 1e-12 {
        return Err(GeoError::NoArea);
    }
    Ok(())
}

/// Whether `p` lies inside the polygon (even-odd ray casting; points on an edge count as in).
pub fn polygon_contains(points: &[Point], p: &Point) -> bool {
    let ring = open_ring(points);
    let n = ring.len();
    if n < 3 {
        return false;
    }
    let mut inside = false;
    for i in 0..n {
        let (a, b) = (ring[i], ring[(i + 1) % n]);
        if on_segment(a, b, *p) {
            return true;
        }
        let (ax, ay, bx, by) = (a.longitude, a.latitude, b.longitude, b.latitude);
        if (ay > p.latitude) != (by > p.latitude) {
            let x = ax + (p.latitude - ay) * (bx - ax) / (by - ay);
            if p.longitude < x {
                inside = !inside;
            }
        }
    }
    inside
}

fn open_ring(points: &[Point]) -> &[Point] {
    match points {
        [first, .., last] if points.len() > 3 && first == last => &points[..points.len() - 1],
        _ => points,
    }
}

fn cross(o: Point, a: Point, b: Point) -> f64 {
    (a.longitude - o.longitude) * (b.latitude - o.latitude)
        - (a.latitude - o.latitude) * (b.longitude - o.longitude)
}

fn on_segment(a: Point, b: Point, p: Point) -> bool {
    cross(a, b, p).abs() < 1e-12
        && p.longitude >= a.longitude.min(b.longitude)
        && p.longitude <= a.longitude.max(b.longitude)
        && p.latitude >= a.latitude.min(b.latitude)
        && p.latitude <= a.latitude.max(b.latitude)
}

fn segments_intersect(a: Point, b: Point, c: Point, d: Point) -> bool {
    let (d1, d2, d3, d4) = (
        cross(c, d, a),
        cross(c, d, b),
        cross(a, b, c),
        cross(a, b, d),
    );
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    on_segment(c, d, a) || on_segment(c, d, b) || on_segment(a, b, c) || on_segment(a, b, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(latitude: f64, longitude: f64) -> Point {
        Point {
            latitude,
            longitude,
        }
    }

    /// Roughly Switzerland's bounding box as a square.
    fn square() -> Vec<Point> {
        vec![p(45.8, 5.9), p(45.8, 10.5), p(47.8, 10.5), p(47.8, 5.9)]
    }

    #[test]
    fn haversine_matches_known_distances() {
        let zurich = p(47.3769, 8.5417);
        let geneva = p(46.2044, 6.1432);
        let d = zurich.distance_km(&geneva);
        assert!(
            (d - 224.0).abs() < 3.0,
            "Zurich-Geneva is about 224 km, got {d}"
        );
        let paris = p(48.8566, 2.3522);
        let new_york = p(40.7128, -74.0060);
        let d = paris.distance_km(&new_york);
        assert!(
            (d - 5837.0).abs() < 15.0,
            "Paris-New York is about 5837 km, got {d}"
        );
        assert_eq!(zurich.distance_km(&zurich), 0.0);
        // Antipodes: half the circumference, no NaN from rounding.
        let d = p(0.0, 0.0).distance_km(&p(0.0, 180.0));
        assert!(
            (d - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6,
            "{d}"
        );
    }

    #[test]
    fn point_in_polygon_square_and_concave() {
        let sq = square();
        assert!(
            polygon_contains(&sq, &p(47.3769, 8.5417)),
            "Zurich is inside"
        );
        assert!(
            !polygon_contains(&sq, &p(48.8566, 2.3522)),
            "Paris is outside"
        );
        assert!(
            polygon_contains(&sq, &p(45.8, 7.0)),
            "a point on an edge counts as inside"
        );
        assert!(
            polygon_contains(&sq, &p(45.8, 5.9)),
            "a corner counts as inside"
        );
        // A "U": the notch between the arms is outside.
        let u = vec![
            p(0.0, 0.0),
            p(0.0, 3.0),
            p(3.0, 3.0),
            p(3.0, 2.0),
            p(1.0, 2.0),
            p(1.0, 1.0),
            p(3.0, 1.0),
            p(3.0, 0.0),
        ];
        validate_polygon(&u).unwrap();
        assert!(polygon_contains(&u, &p(2.0, 0.5)), "left arm");
        assert!(polygon_contains(&u, &p(2.0, 2.5)), "right arm");
        assert!(!polygon_contains(&u, &p(2.0, 1.5)), "the notch");
        assert!(polygon_contains(&u, &p(0.5, 1.5)), "the base");
        // A closing point equal to the first is the same polygon.
        let mut closed = square();
        closed.push(closed[0]);
        validate_polygon(&closed).unwrap();
        assert!(polygon_contains(&closed, &p(47.0, 8.0)));
    }

    #[test]
    fn bad_polygons_and_points_are_refused() {
        assert_eq!(validate_polygon(&square()), Ok(()));
        assert_eq!(
            validate_polygon(&square()[..2]),
            Err(GeoError::TooFewPoints(2))
        );
        let bow_tie = vec![p(0.0, 0.0), p(1.0, 1.0), p(0.0, 1.0), p(1.0, 0.0)];
        assert!(matches!(
            validate_polygon(&bow_tie),
            Err(GeoError::SelfIntersecting(..))
        ));
        let line = vec![p(0.0, 0.0), p(1.0, 1.0), p(2.0, 2.0)];
        assert!(validate_polygon(&line).is_err());
        let repeated = vec![p(0.0, 0.0), p(0.0, 0.0), p(1.0, 1.0), p(0.0, 1.0)];
        assert_eq!(
            validate_polygon(&repeated),
            Err(GeoError::RepeatedPoint(0, 1))
        );
        let off = vec![p(0.0, 0.0), p(91.0, 1.0), p(0.0, 1.0)];
        assert!(matches!(
            validate_polygon(&off),
            Err(GeoError::Latitude { .. })
        ));
        let wide = vec![p(0.0, -170.0), p(0.0, 170.0), p(1.0, 170.0)];
        assert!(matches!(
            validate_polygon(&wide),
            Err(GeoError::Antimeridian(_))
        ));
        assert!(p(0.0, 180.5)
            .validate("site")
            .unwrap_err()
            .to_string()
            .contains("longitude 180.5"));
        assert!(p(f64::NAN, 0.0).validate("site").is_err());
        assert!(
            validate_km(0.0).is_err()
                && validate_km(f64::INFINITY).is_err()
                && validate_km(50.0).is_ok()
        );
    }
}
