//! Vertebral compression fractures: how a body collapses (wedge, biconcave, crush), how
//! much (the Genant grade), what the scanner sees at the break (a sclerotic band of
//! compacted trabeculae, a broken and buckled cortex, sometimes a cleft), and the truth: the
//! disrupted bone, which is the band under the failed endplate, not the whole vertebra.

use fracmap_core::geometry::{Box3, SliceRange};
use rand::Rng;

use super::anatomy::VertebraShape;
use super::noise::uniform;

/// The shape of a compression fracture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FractureKind {
    /// Anterior height lost, posterior wall intact.
    Wedge,
    /// Central depression of the endplates, rim intact.
    Biconcave,
    /// The whole body lower.
    Crush,
}

/// Genant's semi-quantitative grade, from the loss of vertebral height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Genant {
    /// 20..25 % height loss (grade 1).
    Mild,
    /// 25..40 % (grade 2).
    Moderate,
    /// Over 40 % (grade 3).
    Severe,
}

impl Genant {
    /// The grade of a fractional height loss (`0.3` = 30 %); `None` below 20 %: normal.
    pub fn from_height_loss(loss: f64) -> Option<Genant> {
        match loss {
            l if l < 0.20 => None,
            l if l < 0.25 => Some(Genant::Mild),
            l if l < 0.40 => Some(Genant::Moderate),
            _ => Some(Genant::Severe),
        }
    }

    /// Genant's grade number, 1..=3.
    pub fn number(self) -> u8 {
        match self {
            Genant::Mild => 1,
            Genant::Moderate => 2,
            Genant::Severe => 3,
        }
    }

    /// The height losses the phantom draws for this grade: inside Genant's range, kept off
    /// its edges so that a measurement on the voxel grid grades the same.
    fn drawn_loss(self) -> (f64, f64) {
        match self {
            Genant::Mild => (0.205, 0.245),
            Genant::Moderate => (0.26, 0.39),
            Genant::Severe => (0.41, 0.58),
        }
    }
}

/// The truth about one fractured vertebra of a phantom case.
#[derive(Debug, Clone, PartialEq)]
pub struct FractureTruth {
    pub kind: FractureKind,
    pub grade: Genant,
    /// Fractional height loss where the body is lowest relative to its intact shape: the
    /// anterior column (wedge), the middle column (biconcave, crush).
    pub height_loss: f64,
    /// Bounding box of this vertebra's voxels in the fracture mask, `[z, y, x]` half-open.
    pub fracture_box: Box3,
    /// The axial slices those voxels span (the box's z range).
    pub z_range: SliceRange,
}

/// Relative frequency of each kind (osteoporotic fractures are mostly wedges).
const KIND_WEIGHTS: [(FractureKind, f64); 3] =
    [(FractureKind::Wedge, 0.5), (FractureKind::Biconcave, 0.3), (FractureKind::Crush, 0.2)];
const GRADE_WEIGHTS: [(Genant, f64); 3] = [(Genant::Mild, 0.35), (Genant::Moderate, 0.4), (Genant::Severe, 0.25)];

/// A displacement smaller than this (mm) leaves the trabeculae intact: no band.
const MIN_DISPLACEMENT: f64 = 1.0;

/// Probability that the vertebra with `label` is fractured, for a mean rate `rate` per
/// vertebra: osteoporotic fractures cluster at the thoracolumbar junction (T12, L1) and the
/// mid-thoracic kyphosis (T7, T8). `rate` 0 and 1 stay 0 and 1.
pub(crate) fn fracture_probability(rate: f64, label: u8) -> f64 {
    let weight = |l: f64| 1.0 + 1.5 * (-((l - 19.5) / 1.6).powi(2)).exp() + 0.6 * (-((l - 14.5) / 1.5).powi(2)).exp();
    let mean = (11..=24).map(|l| weight(f64::from(l))).sum::<f64>() / 14.0;
    1.0 - (1.0 - rate.clamp(0.0, 1.0)).powf(weight(f64::from(label)) / mean)
}

/// A cleft inside the band: gas (vacuum phenomenon) or fluid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cleft {
    /// Where across the band, as the band's closeness to the endplate (1 at the endplate).
    at: f64,
    hu: f64,
}

/// A fracture applied to one vertebral body: its kind and size, and the intact sizes it
/// was applied to (mm).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fracture {
    pub kind: FractureKind,
    pub grade: Genant,
    pub loss: f64,
    /// Share of the collapse taken by the upper endplate (the rest by the lower one).
    upper_share: f64,
    /// HU added to the trabecular bone at the failed endplate.
    pub sclerosis: f64,
    cleft: Option<Cleft>,
    /// Radius of the biconcave depression (fraction of the endplate radius).
    bowl_radius: f64,
    /// Intact middle and anterior heights and depth of the body.
    mid_height: f64,
    anterior_height: f64,
    depth: f64,
    /// Outward buckle of the anterior wall (mm) and its height `c`.
    buckle_amplitude: f64,
    buckle_c: f64,
}

impl Fracture {
    /// Draws a fracture. Every call draws the same amount of randomness, whatever it picks.
    pub fn sample(rng: &mut impl Rng) -> Fracture {
        let kind = pick(rng, &KIND_WEIGHTS);
        let grade = pick(rng, &GRADE_WEIGHTS);
        let loss = uniform(rng, grade.drawn_loss());
        let upper_share = match kind {
            FractureKind::Wedge => uniform(rng, (0.75, 1.0)),
            FractureKind::Biconcave | FractureKind::Crush => uniform(rng, (0.4, 0.65)),
        };
        let sclerosis = uniform(rng, (150.0, 330.0)) * (0.55 + loss);
        let has_cleft = rng.random::<f64>() < if grade == Genant::Mild { 0.0 } else { 0.3 };
        let gas = rng.random::<f64>() < 0.5;
        let cleft_at = uniform(rng, (0.35, 0.6));
        let cleft_hu = if gas { uniform(rng, (-700.0, -300.0)) } else { uniform(rng, (5.0, 40.0)) };
        Fracture {
            kind,
            grade,
            loss,
            upper_share,
            sclerosis,
            cleft: has_cleft.then_some(Cleft { at: cleft_at, hu: cleft_hu }),
            bowl_radius: uniform(rng, (0.75, 0.92)),
            buckle_amplitude: if kind == FractureKind::Biconcave { 0.0 } else { uniform(rng, (0.8, 2.0)) },
            mid_height: 0.0,
            anterior_height: 0.0,
            depth: 0.0,
            buckle_c: 0.0,
        }
    }

    /// Breaks `shape`: lowers its slab (wedge, crush), spreads a crushed body, and records
    /// the intact sizes the depressions and the band are measured against.
    pub fn apply(mut self, shape: &mut VertebraShape) {
        let depth = shape.depth;
        self.mid_height = shape.intact_height;
        self.anterior_height = shape.intact_height - 0.5 * depth * shape.intact_slope;
        self.depth = depth;
        match self.kind {
            // Anterior loss `loss * anterior height`, none at the posterior wall: a hinge.
            FractureKind::Wedge => {
                let anterior_loss = self.loss * self.anterior_height;
                shape.height -= 0.5 * anterior_loss;
                shape.slope += anterior_loss / depth;
            }
            FractureKind::Crush => {
                shape.height *= 1.0 - self.loss;
                shape.slope *= 1.0 - self.loss;
                shape.widening = 1.0 + 0.2 * self.loss;
            }
            FractureKind::Biconcave => {}
        }
        // The anterior wall buckles in the middle of the band of the failed endplate.
        let (upper, lower) = self.displacement(-0.5 * depth, 1.0);
        let half = 0.5 * shape.slab_height(-0.5 * depth);
        self.buckle_c = if upper >= lower { half - 0.5 * band(upper, 0.0) } else { -half + 0.5 * band(lower, 0.0) };
        shape.fracture = Some(self);
    }

    /// Extra depression of the upper and lower endplates at normalised radius `rho` (mm):
    /// the biconcave bowl (the planar collapses are in the slab already).
    pub fn depression(&self, rho: f64) -> (f64, f64) {
        if self.kind != FractureKind::Biconcave {
            return (0.0, 0.0);
        }
        let total = self.loss * self.mid_height * self.bowl(rho);
        (total * self.upper_share, total * (1.0 - self.upper_share))
    }

    fn bowl(&self, rho: f64) -> f64 {
        let r = rho / self.bowl_radius;
        if r >= 1.0 { 0.0 } else { (1.0 - r * r).powi(2) }
    }

    /// How far each endplate moved at `(b, rho)`, mm: the collapse that compacted the bone
    /// beneath it.
    fn displacement(&self, b: f64, rho: f64) -> (f64, f64) {
        let total = match self.kind {
            FractureKind::Wedge => {
                self.loss * self.anterior_height * ((0.5 * self.depth - b) / self.depth).clamp(0.0, 1.0)
            }
            FractureKind::Crush => self.loss * self.mid_height,
            FractureKind::Biconcave => self.loss * self.mid_height * self.bowl(rho),
        };
        (total * self.upper_share, total * (1.0 - self.upper_share))
    }

    /// Whether a body point lies in the disrupted zone, and how close to the failed endplate
    /// (1 at the endplate, 0 at the band's inner edge). `below_upper` and `above_lower` are
    /// its distances to the deformed endplates along `c`. The band under an endplate that
    /// moved by `u` mm is `max(band_min, 2.5 + u / 2)` thick; `band_min` keeps it at least a
    /// slice thick so that every fracture shows on the grid.
    pub fn zone(&self, b: f64, rho: f64, below_upper: f64, above_lower: f64, band_min: f64) -> Option<f64> {
        let (upper, lower) = self.displacement(b, rho);
        let closeness = |moved: f64, distance: f64| {
            let thickness = band(moved, band_min);
            (moved >= MIN_DISPLACEMENT && distance <= thickness).then(|| 1.0 - distance / thickness)
        };
        match (closeness(upper, below_upper), closeness(lower, above_lower)) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        }
    }

    /// The cleft's HU at a band point of this `closeness` and normalised radius `rho`, when
    /// the point is in the cleft: a thin layer across the band, away from the rim.
    pub fn cleft_hu(&self, closeness: f64, rho: f64) -> Option<f64> {
        self.cleft.filter(|cleft| (closeness - cleft.at).abs() < 0.07 && rho < 0.7).map(|cleft| cleft.hu)
    }

    /// Outward buckle of the anterior wall at `(b, c)`, mm.
    pub fn buckle(&self, b: f64, c: f64, depth: f64) -> f64 {
        if b >= 0.0 || self.buckle_amplitude == 0.0 {
            return 0.0;
        }
        let anterior = (-b / (0.5 * depth)).clamp(0.0, 1.0);
        self.buckle_amplitude * anterior * anterior * (-((c - self.buckle_c) / 1.6).powi(2)).exp()
    }

    /// Whether `(b, c)` lies in the break of the anterior cortex, at the buckle.
    pub fn in_cortical_gap(&self, b: f64, c: f64, depth: f64) -> bool {
        self.buckle_amplitude > 0.0 && b < -0.25 * depth && (c - self.buckle_c).abs() < 0.8
    }
}

/// Band thickness under an endplate that moved by `moved` mm.
fn band(moved: f64, band_min: f64) -> f64 {
    (2.5 + 0.5 * moved).max(band_min)
}

/// One of `weighted` with probability proportional to its weight.
fn pick<T: Copy>(rng: &mut impl Rng, weighted: &[(T, f64)]) -> T {
    let total: f64 = weighted.iter().map(|(_, w)| w).sum();
    let mut u = rng.random::<f64>() * total;
    for &(item, weight) in weighted {
        if u < weight {
            return item;
        }
        u -= weight;
    }
    weighted[weighted.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::levels::Level;
    use crate::synth::noise::{Stream, stream};
    use crate::synth::tissue::Palette;

    fn vertebra(name: &str) -> VertebraShape {
        let palette = Palette::sample(&mut stream(1, Stream::Patient), false, 0.0);
        VertebraShape::sample(name.parse::<Level>().unwrap(), 1.0, &palette, &mut stream(1, Stream::Vertebra(20)))
    }

    fn fracture_of(kind: FractureKind, grade: Genant) -> Fracture {
        (0..500)
            .map(|seed| Fracture::sample(&mut stream(seed, Stream::Fracture(20))))
            .find(|f| f.kind == kind && f.grade == grade)
            .expect("every kind and grade is drawn")
    }

    #[test]
    fn genant_grades_follow_the_height_loss() {
        assert_eq!(Genant::from_height_loss(0.15), None);
        assert_eq!(Genant::from_height_loss(0.22), Some(Genant::Mild));
        assert_eq!(Genant::from_height_loss(0.30), Some(Genant::Moderate));
        assert_eq!(Genant::from_height_loss(0.45), Some(Genant::Severe));
        for grade in [Genant::Mild, Genant::Moderate, Genant::Severe] {
            let (lo, hi) = grade.drawn_loss();
            assert_eq!(Genant::from_height_loss(lo), Some(grade));
            assert_eq!(Genant::from_height_loss(hi), Some(grade));
        }
    }

    /// Measured like a radiologist: the deformed column height against the intact one, at
    /// the column the kind defines (anterior for a wedge, middle otherwise).
    #[test]
    fn the_drawn_body_loses_the_height_its_grade_says() {
        for kind in [FractureKind::Wedge, FractureKind::Biconcave, FractureKind::Crush] {
            for grade in [Genant::Mild, Genant::Moderate, Genant::Severe] {
                let intact = vertebra("L1");
                let mut broken = intact.clone();
                let fracture = fracture_of(kind, grade);
                let loss = fracture.loss;
                fracture.apply(&mut broken);
                // 2 mm inside the anterior wall for a wedge: the loss there is a little less.
                let b = if kind == FractureKind::Wedge { -0.5 * intact.depth + 2.0 } else { 0.0 };
                let measured = 1.0 - broken.column_height(0.0, b) / intact.column_height(0.0, b);
                let expected = if kind == FractureKind::Wedge {
                    let anterior = intact.intact_height - 0.5 * intact.depth * intact.intact_slope;
                    loss * anterior * ((0.5 * intact.depth - b) / intact.depth) / intact.column_height(0.0, b)
                } else {
                    loss * intact.intact_height / intact.column_height(0.0, b)
                };
                assert!((measured - expected).abs() < 1e-9, "{kind:?} {grade:?}: {measured} vs {expected}");
                let at_column = if kind == FractureKind::Wedge {
                    let anterior = intact.intact_height - 0.5 * intact.depth * intact.intact_slope;
                    1.0 - broken.slab_height(-0.5 * intact.depth) / anterior
                } else {
                    1.0 - (broken.column_height(0.0, 0.0) + 2.0 * intact.concavity) / intact.intact_height
                };
                assert!((at_column - loss).abs() < 1e-9, "{kind:?}: {at_column} vs {loss}");
                assert_eq!(Genant::from_height_loss(at_column), Some(grade));
            }
        }
    }

    #[test]
    fn the_band_lies_under_the_failed_endplate_only_where_it_moved() {
        let mut shape = vertebra("T12");
        let wedge = fracture_of(FractureKind::Wedge, Genant::Severe);
        wedge.apply(&mut shape);
        let fracture = shape.fracture.as_ref().unwrap();
        let anterior = -0.5 * shape.depth + 1.0;
        assert!(fracture.zone(anterior, 0.5, 1.0, 20.0, 3.2).is_some(), "just under the collapsed front");
        assert!(fracture.zone(anterior, 0.5, 12.0, 8.0, 3.2).is_none(), "mid-body is intact");
        assert!(fracture.zone(0.5 * shape.depth, 0.5, 1.0, 20.0, 3.2).is_none(), "the posterior wall hinge is intact");
        let closer = fracture.zone(anterior, 0.5, 0.5, 20.0, 3.2).unwrap();
        let deeper = fracture.zone(anterior, 0.5, 3.0, 20.0, 3.2).unwrap();
        assert!(closer > deeper);
    }

    #[test]
    fn fracture_probability_keeps_the_extremes_and_favours_the_junction() {
        assert_eq!(fracture_probability(0.0, 20), 0.0);
        assert_eq!(fracture_probability(1.0, 11), 1.0);
        assert!(fracture_probability(0.2, 20) > fracture_probability(0.2, 11));
        let mean = (11..=24).map(|l| fracture_probability(0.1, l)).sum::<f64>() / 14.0;
        assert!((0.07..0.13).contains(&mean), "mean {mean}");
    }
}
