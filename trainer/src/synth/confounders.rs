//! What is not a fracture but may look like one to a slice label or a careless model:
//! normal variants of the vertebrae (a Schmorl's node, a slightly wedged body) and dense
//! foci outside the spine (calcified aortic plaques, calcified nodes, oral contrast, a
//! surgical clip) and bowel gas. The vessels themselves are soft tissue anatomy
//! ([`super::soft_tissue`]).

use rand::Rng;

use super::anatomy::VertebraShape;
use super::noise::uniform;
use super::soft_tissue::SoftTissue;
use super::space::{Vec3, length2};
use super::spine::Spine;
use super::tissue::Tissue;

/// A normal variant of a vertebra: changed shape, intact bone, not in the fracture mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalVariant {
    /// A small pit in an endplate (disc herniated into the body) with a sclerotic rim.
    SchmorlNode,
    /// A body wedged by less than 15 % (anterior/posterior height), cortex intact.
    MildWedging,
}

/// A Schmorl's node: a round, steep-walled pit in one endplate, mm in the local frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pit {
    pub upper: bool,
    a: f64,
    b: f64,
    radius: f64,
    depth: f64,
}

/// Thickness of the sclerotic rim around a pit, mm.
const PIT_RIM: f64 = 2.2;

impl Pit {
    /// Depth of the pit at `(a, b)`, mm.
    pub fn depression(&self, a: f64, b: f64) -> f64 {
        let r = length2(a - self.a, b - self.b) / self.radius;
        if r >= 1.0 { 0.0 } else { self.depth * (1.0 - r.powi(4)).sqrt() }
    }

    /// Whether a body point `below` mm under the pitted endplate is in the pit's rim.
    pub fn in_rim(&self, a: f64, b: f64, below: f64) -> bool {
        length2(a - self.a, b - self.b) < self.radius + 1.0 && below < PIT_RIM
    }
}

/// Draws whether the vertebra has a normal variant (probability `rate`) and applies it.
/// Always draws the same amount of randomness.
pub(crate) fn apply_variant(rng: &mut impl Rng, rate: f64, shape: &mut VertebraShape) -> Option<NormalVariant> {
    let happens = rng.random::<f64>() < rate;
    let schmorl = rng.random::<f64>() < 0.6;
    let pit = Pit {
        upper: rng.random::<f64>() < 0.5,
        a: uniform(rng, (-0.2, 0.2)) * shape.width,
        b: uniform(rng, (-0.1, 0.25)) * shape.depth,
        radius: uniform(rng, (2.5, 4.5)),
        depth: uniform(rng, (2.5, 5.0)),
    };
    // Anterior height `1 - wedge` of the posterior one, wedge under 15 %.
    let wedge = uniform(rng, (0.06, 0.145));
    if !happens {
        return None;
    }
    if schmorl {
        shape.pit = Some(pit);
        return Some(NormalVariant::SchmorlNode);
    }
    let posterior = shape.slab_height(0.5 * shape.depth);
    let anterior = (posterior * (1.0 - wedge)).min(shape.slab_height(-0.5 * shape.depth));
    shape.height = 0.5 * (anterior + posterior);
    shape.slope = (posterior - anterior) / shape.depth;
    shape.intact_height = shape.height;
    shape.intact_slope = shape.slope;
    Some(NormalVariant::MildWedging)
}

/// A small dense (or gas) ellipsoid in patient mm, outside the spine.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Blob {
    pub centre: Vec3,
    pub radii: Vec3,
    pub tissue: Tissue,
    pub hu: f64,
    /// Bowel gas and oral contrast: only inside the viscera, not in fat or muscle.
    pub viscera_only: bool,
}

impl Blob {
    pub fn contains(&self, p: Vec3) -> bool {
        (0..3).map(|i| ((p[i] - self.centre[i]) / self.radii[i]).powi(2)).sum::<f64>() <= 1.0
    }
}

/// Dense foci and gas of one case. `clip`: also place a metal clip (a streak source).
pub(crate) fn sample_blobs(rng: &mut impl Rng, spine: &Spine, soft: &SoftTissue, aged: bool, clip: bool) -> Vec<Blob> {
    let (low, high) = spine.body_extent();
    let mut blobs = Vec::new();
    // Position in patient mm of section-relative `(u, v)` at height `z`.
    let place = |z: f64, u: f64, v: f64| {
        let s = spine.section(z);
        let [lx, ly] = s.lateral;
        [s.centre[0] + u * lx - v * ly, s.centre[1] + u * ly + v * lx, z]
    };
    let plaques = (uniform(rng, (0.0, if aged { 18.0 } else { 9.0 }))) as usize;
    for _ in 0..plaques {
        let z = uniform(rng, (low, high));
        let section = spine.section(z);
        let angle = uniform(rng, (0.0, std::f64::consts::TAU));
        // On the wall of the aorta (or of an iliac artery below the bifurcation).
        let vessels = soft.arteries(&section);
        let (u, v, r) = vessels[rng.random_range(0..vessels.len())];
        let size = uniform(rng, (0.8, 2.2));
        blobs.push(Blob {
            centre: place(z, u + r * angle.cos(), v + r * angle.sin()),
            radii: [size, size, size * uniform(rng, (1.0, 2.5))],
            tissue: Tissue::Plaque,
            hu: uniform(rng, (450.0, 950.0)),
            viscera_only: false,
        });
    }
    let spots = rng.random_range(0..5);
    for _ in 0..spots {
        let z = uniform(rng, (low, high));
        let section = spine.section(z);
        let side = if rng.random::<bool>() { 1.0 } else { -1.0 };
        let u = side * uniform(rng, (0.5 * section.width + 12.0, 0.5 * section.width + 55.0));
        let v = uniform(rng, (-0.5 * section.depth - 50.0, 0.5 * section.depth + 10.0));
        let size = uniform(rng, (1.0, 3.0));
        blobs.push(Blob {
            centre: place(z, u, v),
            radii: [size, size * uniform(rng, (0.7, 1.3)), size * uniform(rng, (0.8, 1.6))],
            tissue: Tissue::BrightSpot,
            hu: uniform(rng, (300.0, 1100.0)),
            viscera_only: false,
        });
    }
    // Bowel lies in front of the lumbar spine only.
    let lumbar_low = spine
        .vertebrae
        .iter()
        .filter(|v| v.shape.level.label() >= 20)
        .map(|v| v.frame.origin[2])
        .fold(f64::INFINITY, f64::min);
    let lumbar_high = spine
        .vertebrae
        .iter()
        .filter(|v| v.shape.level.label() >= 20)
        .map(|v| v.frame.origin[2])
        .fold(f64::NEG_INFINITY, f64::max);
    let bowel = rng.random_range(0..10);
    for k in 0..bowel {
        let z = uniform(rng, (lumbar_low - 15.0, lumbar_high + 15.0));
        let section = spine.section(z);
        let (u, v) =
            (uniform(rng, (-70.0, 70.0)), uniform(rng, (-0.5 * section.depth - 80.0, -0.5 * section.depth - 25.0)));
        let size = uniform(rng, (2.0, 9.0));
        let contrast = k % 4 == 3;
        if lumbar_low.is_finite() {
            blobs.push(Blob {
                centre: place(z, u, v),
                radii: [size, size * uniform(rng, (0.6, 1.4)), size * uniform(rng, (0.6, 1.4))],
                tissue: if contrast { Tissue::BrightSpot } else { Tissue::Air },
                hu: if contrast { uniform(rng, (250.0, 600.0)) } else { -1000.0 },
                viscera_only: true,
            });
        }
    }
    let clip_z = uniform(rng, (low, high));
    let clip_uv = (uniform(rng, (-50.0, 50.0)), uniform(rng, (-60.0, -30.0)));
    if clip {
        let section = spine.section(clip_z);
        blobs.push(Blob {
            centre: place(clip_z, clip_uv.0, clip_uv.1 - 0.5 * section.depth),
            radii: [1.0, 1.0, 3.0],
            tissue: Tissue::BrightSpot,
            hu: 3000.0,
            viscera_only: false,
        });
    }
    blobs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::levels::Level;
    use crate::synth::noise::{Stream, stream};
    use crate::synth::tissue::Palette;

    fn vertebra(name: &str) -> VertebraShape {
        let palette = Palette::sample(&mut stream(2, Stream::Patient), false, 0.0);
        VertebraShape::sample(name.parse::<Level>().unwrap(), 1.0, &palette, &mut stream(2, Stream::Vertebra(15)))
    }

    #[test]
    fn a_mildly_wedged_vertebra_stays_under_fifteen_percent() {
        for seed in 0..40 {
            let mut shape = vertebra("T8");
            if apply_variant(&mut stream(seed, Stream::Variant(15)), 1.0, &mut shape)
                == Some(NormalVariant::MildWedging)
            {
                let ratio = shape.slab_height(-0.5 * shape.depth) / shape.slab_height(0.5 * shape.depth);
                assert!((0.85..1.0).contains(&ratio), "seed {seed}: anterior/posterior {ratio}");
                assert!(shape.fracture.is_none());
            }
        }
    }

    #[test]
    fn a_schmorl_node_is_a_small_pit_that_leaves_the_rim_alone() {
        let found = (0..40).find_map(|seed| {
            let mut shape = vertebra("T8");
            (apply_variant(&mut stream(seed, Stream::Variant(15)), 1.0, &mut shape) == Some(NormalVariant::SchmorlNode))
                .then_some(shape)
        });
        let shape = found.expect("some seed draws a Schmorl's node");
        let pit = shape.pit.as_ref().unwrap();
        assert!(pit.depression(pit.a, pit.b) > 2.0);
        assert_eq!(pit.depression(pit.a + pit.radius + 0.1, pit.b), 0.0);
        // The anterior column keeps its height.
        let mut plain = shape.clone();
        plain.pit = None;
        assert_eq!(shape.column_height(0.0, -0.45 * shape.depth), plain.column_height(0.0, -0.45 * shape.depth));
    }

    #[test]
    fn variants_draw_nothing_at_rate_zero() {
        let mut shape = vertebra("L2");
        let before = shape.clone();
        assert_eq!(apply_variant(&mut stream(1, Stream::Variant(21)), 0.0, &mut shape), None);
        assert_eq!(shape, before);
    }
}
