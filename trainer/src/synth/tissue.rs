//! Tissue classes and the Hounsfield units a case gives them (its palette).
//!
//! Values are those of the ideal image, before the scanner blurs it: a 1 mm cortex drawn at
//! 1300 HU reads 700..1100 HU on a 0.8 mm grid, as on a real scanner.

use rand::Rng;

use super::noise::uniform;

/// What a point of the phantom is made of: the renderer's answer before texture and the
/// scanner, and the ground truth the tests measure HU against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tissue {
    Air,
    Lung,
    Fat,
    /// Viscera, skin, vessel walls: the generic ~40 HU.
    Soft,
    Muscle,
    Kidney,
    Blood,
    /// Calcified plaque of the aorta.
    Plaque,
    /// Small dense focus outside the spine (calcified node, granuloma, oral contrast, clip).
    BrightSpot,
    Csf,
    Cord,
    EpiduralFat,
    Disc,
    Cortex,
    Trabecular,
    /// Compacted trabeculae of a fracture (the sclerotic band).
    Sclerotic,
    /// Gas or fluid in a fracture cleft.
    Cleft,
    /// Bone that belongs to no vertebra label (ribs).
    Rib,
}

/// Contrast medium in the vessels at the time of the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContrastPhase {
    None,
    Arterial,
    PortalVenous,
}

/// Base HU of each tissue for one case. Bone values are per case; each vertebra varies them
/// slightly.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Palette {
    pub phase: ContrastPhase,
    pub fat: f64,
    pub soft_tissue: f64,
    pub muscle: f64,
    pub kidney: f64,
    pub aorta: f64,
    pub vein: f64,
    pub lung: f64,
    pub csf: f64,
    pub cord: f64,
    pub epidural_fat: f64,
    pub disc_nucleus: f64,
    pub disc_annulus: f64,
    /// Cortical bone of the ideal image.
    pub cortex: f64,
    /// Mean trabecular bone of the vertebral bodies.
    pub trabecular: f64,
    /// Standard deviation of the trabecular texture, HU.
    pub bone_texture: f64,
    /// Fraction of muscle replaced by fat streaks (fatty infiltration grows with age).
    pub muscle_fat: f64,
}

impl Palette {
    /// `contrast_rate`: probability of a contrast-enhanced scan (half arterial, half portal).
    pub fn sample(rng: &mut impl Rng, osteoporotic: bool, contrast_rate: f64) -> Palette {
        let phase = match rng.random::<f64>() {
            u if u < contrast_rate / 2.0 => ContrastPhase::Arterial,
            u if u < contrast_rate => ContrastPhase::PortalVenous,
            _ => ContrastPhase::None,
        };
        let (aorta, vein, kidney, soft_tissue) = match phase {
            ContrastPhase::None => (uniform(rng, (35.0, 50.0)), 40.0, 32.0, uniform(rng, (38.0, 50.0))),
            ContrastPhase::Arterial => {
                (uniform(rng, (250.0, 400.0)), 60.0, uniform(rng, (130.0, 180.0)), uniform(rng, (45.0, 60.0)))
            }
            ContrastPhase::PortalVenous => (
                uniform(rng, (140.0, 200.0)),
                uniform(rng, (120.0, 160.0)),
                uniform(rng, (150.0, 200.0)),
                uniform(rng, (70.0, 100.0)),
            ),
        };
        let (cortex, trabecular, bone_texture) = if osteoporotic {
            (uniform(rng, (850.0, 1150.0)), uniform(rng, (70.0, 140.0)), uniform(rng, (22.0, 32.0)))
        } else {
            (uniform(rng, (1200.0, 1600.0)), uniform(rng, (175.0, 300.0)), uniform(rng, (28.0, 40.0)))
        };
        Palette {
            phase,
            fat: uniform(rng, (-115.0, -85.0)),
            soft_tissue,
            muscle: uniform(rng, (42.0, 58.0)),
            kidney,
            aorta,
            vein,
            lung: uniform(rng, (-880.0, -820.0)),
            csf: uniform(rng, (4.0, 14.0)),
            cord: uniform(rng, (30.0, 40.0)),
            epidural_fat: uniform(rng, (-90.0, -60.0)),
            disc_nucleus: uniform(rng, (65.0, 85.0)),
            disc_annulus: uniform(rng, (85.0, 105.0)),
            cortex,
            trabecular,
            bone_texture,
            muscle_fat: if osteoporotic { uniform(rng, (0.08, 0.25)) } else { uniform(rng, (0.02, 0.1)) },
        }
    }
}
