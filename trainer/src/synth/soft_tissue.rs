//! Everything around the spine: the back (skin, subcutaneous fat, paraspinal muscles and
//! the air behind the patient), the thorax (lungs down to the diaphragm, posterior
//! mediastinum with the aorta, azygos vein and oesophagus), the abdomen (retroperitoneal
//! fat, psoas and quadratus lumborum, kidneys, aorta and its bifurcation, inferior vena
//! cava, viscera).
//!
//! Shapes are laid out in a section's `(u, v)` plane: `u` along the spine's lateral axis
//! (the patient's left), `v` posterior, both from the body centre, in mm; they follow the
//! spine as it curves, and their sizes follow the level.

use rand::Rng;

use super::anatomy::{lumbar_blend, lung_outline, smoothstep};
use super::noise::uniform;
use super::space::length2;
use super::spine::Section;
use super::tissue::{Palette, Tissue};

/// One patient's soft tissue build, mm (levels as fractional VerSe labels).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SoftTissue {
    subcutaneous_fat: f64,
    /// Muscle between the spinous tips and the fascia.
    fascia_gap: f64,
    muscle_scale: f64,
    psoas_scale: f64,
    /// Level of the diaphragm's dome (the posterior recesses reach lower).
    diaphragm: f64,
    aorta_radius: f64,
    aorta_shift: f64,
    bifurcation: f64,
    vena_cava: [f64; 2],
    kidney: f64,
    retroperitoneal_fat: f64,
    oesophageal_air: bool,
}

impl SoftTissue {
    pub fn sample(rng: &mut impl Rng, aged: bool) -> SoftTissue {
        SoftTissue {
            subcutaneous_fat: uniform(rng, (4.0, 35.0)),
            fascia_gap: uniform(rng, (3.0, 9.0)),
            muscle_scale: uniform(rng, if aged { (0.75, 1.0) } else { (0.9, 1.15) }),
            psoas_scale: uniform(rng, if aged { (0.7, 1.0) } else { (0.9, 1.2) }),
            diaphragm: uniform(rng, (17.0, 18.5)),
            aorta_radius: uniform(rng, if aged { (12.0, 15.0) } else { (10.0, 13.0) }),
            aorta_shift: uniform(rng, (-3.0, 3.0)),
            bifurcation: uniform(rng, (22.8, 23.8)),
            vena_cava: [uniform(rng, (9.0, 13.0)), uniform(rng, (6.0, 9.0))],
            kidney: uniform(rng, (19.5, 21.0)),
            retroperitoneal_fat: uniform(rng, (12.0, 45.0)),
            oesophageal_air: rng.random::<f64>() < 0.3,
        }
    }

    /// Arteries at a section, `(u, v, radius)`: the aorta, or both common iliac arteries
    /// below the bifurcation.
    pub fn arteries(&self, s: &Section) -> Vec<(f64, f64, f64)> {
        let (half_w, half_d) = (0.5 * s.width, 0.5 * s.depth);
        let abdominal = smoothstep(16.0, 20.0, s.level);
        let r = self.aorta_radius * (1.0 - 0.2 * abdominal);
        if s.level > self.bifurcation {
            let apart = 4.0 + 14.0 * (s.level - self.bifurcation) + 0.3 * r;
            return vec![(apart, -half_d - 0.6 * r, 0.6 * r), (-apart, -half_d - 0.6 * r, 0.6 * r)];
        }
        let u = (0.75 * half_w + 0.6 * r) * (1.0 - abdominal) + 0.25 * half_w * abdominal + self.aorta_shift;
        let v = (-half_d - 0.2 * r) * (1.0 - abdominal) + (-half_d - r - 2.0) * abdominal;
        vec![(u, v, r)]
    }

    /// The soft tissue model at one section, ready to classify its points.
    pub fn at_section(&self, s: &Section) -> SliceTissue<'_> {
        SliceTissue { model: self, section: *s, arteries: self.arteries(s) }
    }
}

/// [`SoftTissue`] at one axial height.
#[derive(Debug, Clone)]
pub(crate) struct SliceTissue<'a> {
    model: &'a SoftTissue,
    section: Section,
    arteries: Vec<(f64, f64, f64)>,
}

fn in_ellipse(u: f64, v: f64, centre: (f64, f64), semi: (f64, f64)) -> bool {
    ((u - centre.0) / semi.0).powi(2) + ((v - centre.1) / semi.1).powi(2) <= 1.0
}

impl SliceTissue<'_> {
    /// Section coordinates `(u, v)` of patient `(X, Y)`.
    pub fn uv(&self, x: f64, y: f64) -> (f64, f64) {
        let (dx, dy) = (x - self.section.centre[0], y - self.section.centre[1]);
        let [lx, ly] = self.section.lateral;
        (dx * lx + dy * ly, -dx * ly + dy * lx)
    }

    /// Tissue and base HU at section point `(u, v)`, outside the spine; `level_shift` moves
    /// the point up or down the spine (fractional levels) so that boundaries across levels
    /// (the diaphragm, the kidneys' poles) are not flat.
    pub fn classify(&self, u: f64, v: f64, level_shift: f64, palette: &Palette) -> (Tissue, f64) {
        let m = self.model;
        let s = &self.section;
        let (half_w, half_d) = (0.5 * s.width, 0.5 * s.depth);
        let level = s.level + level_shift;
        // The back: muscle up to the fascia, then subcutaneous fat, skin, and the air
        // between the patient and the table.
        let fascia = s.spinous_tip + m.fascia_gap - 4.0 * (-(u / 12.0).powi(2)).exp() - 10.0 * (u / 70.0).powi(2);
        let skin = fascia + m.subcutaneous_fat + 2.0;
        if v > skin {
            return (Tissue::Air, -1000.0);
        }
        if v > skin - 2.0 {
            return (Tissue::Soft, palette.soft_tissue);
        }
        if v > fascia {
            return (Tissue::Fat, palette.fat);
        }
        for &(cu, cv, r) in &self.arteries {
            if length2(u - cu, v - cv) <= r {
                return (Tissue::Blood, palette.aorta);
            }
        }
        // The diaphragm domes: lowest behind and at the sides (the recesses).
        let cavity = level < m.diaphragm + 1.2 * smoothstep(-half_d, half_d + 30.0, v) + 0.8 * (u / 80.0).powi(2);
        if level > 18.0
            && level < m.bifurcation + 0.6
            && in_ellipse(u, v, (-(0.35 * half_w + 12.0), -half_d - 8.0), (m.vena_cava[0], m.vena_cava[1]))
        {
            return (Tissue::Blood, palette.vein);
        }
        if level < 19.5 && length2(u + 0.45 * half_w + 3.0, v + half_d + 2.0) <= 4.0 {
            return (Tissue::Blood, palette.vein);
        }
        if cavity && in_ellipse(u, v, (-3.0, -half_d - 16.0), (9.0, 6.0)) {
            return if m.oesophageal_air && in_ellipse(u, v, (-3.0, -half_d - 16.0), (2.5, 1.5)) {
                (Tissue::Air, -1000.0)
            } else {
                (Tissue::Soft, palette.soft_tissue)
            };
        }
        // Paraspinal muscles from the laminae to the fascia, either side of the spinous
        // processes.
        let lumbar = lumbar_blend(level);
        let muscle_a = (19.0 + 6.0 * lumbar) * m.muscle_scale;
        let (front, back) = (s.canal_back - 6.0, s.spinous_tip + m.fascia_gap);
        let muscle_centre_v = 0.5 * (front + back);
        let muscle_b = 0.5 * (back - front);
        let au = u.abs();
        if in_ellipse(au, v, (8.0 + muscle_a, muscle_centre_v), (muscle_a, muscle_b)) {
            return (Tissue::Muscle, palette.muscle);
        }
        if level > 18.5 {
            let r = (3.0 + 22.0 * smoothstep(19.0, 24.5, level)) * m.psoas_scale;
            if in_ellipse(au, v, (half_w + 0.75 * r, 0.1 * half_d - 0.3 * r), (r, 1.15 * r)) {
                return (Tissue::Muscle, palette.muscle);
            }
        }
        if (19.5..24.0).contains(&level) && in_ellipse(au, v, (half_w + 38.0, half_d + 14.0), (14.0, 8.0)) {
            return (Tissue::Muscle, palette.muscle);
        }
        // Kidneys, the right one a little lower.
        let kidney_level = if u < 0.0 { m.kidney + 0.6 } else { m.kidney };
        let pole = 1.0 - ((level - kidney_level) / 1.5).powi(2);
        if pole > 0.0 && in_ellipse(au, v, (half_w + 52.0, 0.35 * s.depth), (22.0 * pole.sqrt(), 30.0 * pole.sqrt())) {
            return (Tissue::Kidney, palette.kidney);
        }
        if cavity {
            let [centre_a, centre_b, semi_a, semi_b] = lung_outline(s.width, s.depth);
            if in_ellipse(au, v, (centre_a, centre_b), (semi_a, semi_b)) {
                return (Tissue::Lung, palette.lung);
            }
        }
        // What is left: fat behind the bodies and in the posterior mediastinum or the
        // retroperitoneum, viscera (heart, liver, bowel) in front.
        if v > half_d - 4.0 {
            return (Tissue::Fat, palette.fat);
        }
        let fat = if cavity {
            au < half_w + 12.0 && v > -half_d - 40.0
        } else {
            in_ellipse(u, v, (0.0, 0.0), (half_w + m.retroperitoneal_fat, half_d + 0.6 * m.retroperitoneal_fat))
        };
        if fat { (Tissue::Fat, palette.fat) } else { (Tissue::Soft, palette.soft_tissue) }
    }
}
