//! Normal anatomy of a thoracolumbar vertebra in millimetres: the body (cortical shell,
//! endplates, trabecular bone), pedicles, laminae, spinous and transverse processes, facets,
//! the discs above and below, the spinal canal and the ribs, all in the vertebra's local
//! frame. [`super::spine`] stacks the vertebrae.
//!
//! Local frame of a vertebra: origin at the centre of its body, `a` toward the patient's left,
//! `b` posterior, `c` cranial (see [`super::space`]). Every shape is evaluated only inside its
//! own bounding box, so a vertebra costs what its neighbourhood costs, not the whole volume.

use rand::Rng;

use super::confounders::Pit;
use super::fracture::Fracture;
use super::noise::{ValueNoise, normal, uniform};
use super::space::{Aabb, Vec3, add, dot, length2, norm, scale, sub};
use super::tissue::{Palette, Tissue};
use crate::levels::Level;

/// Typical adult size of a level, mm (after the literature on vertebral morphometry).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LevelSize {
    /// Body height at the middle column.
    pub height: f64,
    /// Body depth (anterior-posterior) and width (left-right) at the endplates.
    pub depth: f64,
    pub width: f64,
    /// Height of the disc below this vertebra.
    pub disc_below: f64,
    /// Anterior over posterior body height: thoracic bodies are physiologically wedged.
    pub wedge_ratio: f64,
    pub canal_half_width: f64,
    pub canal_half_depth: f64,
    pub pedicle_radius: f64,
}

/// Rows for T1..L6 (labels 8..=25): height, depth, width, disc below, anterior/posterior
/// height ratio, canal half width, canal half depth, pedicle radius.
const SIZES: [[f64; 8]; 18] = [
    [14.5, 16.0, 25.0, 4.0, 0.97, 7.5, 7.0, 3.8],
    [15.5, 17.0, 25.0, 3.8, 0.95, 7.5, 7.0, 3.5],
    [16.0, 18.0, 26.0, 3.8, 0.94, 7.5, 7.0, 3.2],
    [16.5, 19.0, 26.5, 4.0, 0.93, 7.5, 7.0, 3.2],
    [17.0, 20.0, 27.0, 4.0, 0.92, 7.5, 7.0, 3.3],
    [17.5, 22.0, 28.0, 4.2, 0.92, 7.5, 7.0, 3.5],
    [18.5, 23.0, 29.5, 4.5, 0.91, 7.5, 7.0, 3.6],
    [19.0, 24.0, 31.0, 4.8, 0.92, 7.5, 7.0, 3.8],
    [20.0, 26.0, 33.0, 5.0, 0.93, 7.5, 7.0, 4.0],
    [21.0, 27.0, 35.0, 5.5, 0.94, 8.0, 7.2, 4.5],
    [22.0, 28.0, 38.0, 6.0, 0.95, 8.5, 7.5, 5.0],
    [23.0, 30.0, 41.0, 7.0, 0.95, 9.0, 7.8, 5.0],
    [24.0, 31.0, 43.0, 8.0, 0.96, 10.0, 8.0, 5.0],
    [25.0, 32.0, 45.0, 9.0, 0.98, 10.5, 8.0, 5.2],
    [26.0, 33.0, 47.0, 10.0, 1.00, 11.0, 8.0, 5.8],
    [26.5, 34.0, 49.0, 10.5, 1.03, 11.5, 8.0, 6.5],
    [26.5, 35.0, 51.0, 10.0, 1.10, 12.5, 8.0, 7.5],
    [26.5, 35.0, 51.0, 10.0, 1.10, 12.5, 8.0, 7.5],
];

/// Lowest and highest label the phantom draws: T1 and L6.
pub(crate) const FIRST_LABEL: u8 = 8;
pub(crate) const LAST_LABEL: u8 = 25;

/// Size of the level with VerSe label `label` (clamped to T1..L6).
pub(crate) fn level_size(label: u8) -> LevelSize {
    let r = SIZES[usize::from(label.clamp(FIRST_LABEL, LAST_LABEL) - FIRST_LABEL)];
    LevelSize {
        height: r[0],
        depth: r[1],
        width: r[2],
        disc_below: r[3],
        wedge_ratio: r[4],
        canal_half_width: r[5],
        canal_half_depth: r[6],
        pedicle_radius: r[7],
    }
}

/// 0 for thoracic levels, 1 for lumbar, smooth across the thoracolumbar junction.
pub(crate) fn lumbar_blend(level: f64) -> f64 {
    smoothstep(17.0, 21.0, level)
}

pub(crate) fn smoothstep(lo: f64, hi: f64, x: f64) -> f64 {
    let t = ((x - lo) / (hi - lo)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// The lung on the patient's left side of a thoracic section, in a vertebra's `(a, b)` plane:
/// centre and semi-axes of an ellipse. The ribs follow its outline, the soft tissue model
/// fills it with lung (mirror `a` for the right side).
pub(crate) fn lung_outline(width: f64, depth: f64) -> [f64; 4] {
    let semi_a = 42.0;
    [0.5 * width + 5.0 + semi_a, 0.12 * depth, semi_a, 0.5 * depth + 26.0]
}

/// Cross-section of a piece of bone along its segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Profile {
    /// A rod: the points within `radius` of the segment once `c` is divided by the stretch
    /// (a stretch above 1 makes the section an upright ellipse: a pedicle).
    Rod { c_stretch: f64 },
    /// An upright plate: `radius` thick either side in the `(a, b)` plane, `half_height`
    /// above and below the segment in `c` (a lamina, a spinous process, a rib).
    Plate { half_height: f64 },
}

/// A piece of bone around a segment; `distance` is negative inside, in mm.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Capsule {
    start: Vec3,
    end: Vec3,
    radius: f64,
    profile: Profile,
    pub bounds: Aabb,
}

impl Capsule {
    pub fn rod(start: Vec3, end: Vec3, radius: f64, c_stretch: f64) -> Capsule {
        let bounds = Aabb::around(&[start, end], [radius, radius, radius * c_stretch]);
        let squash = |p: Vec3| [p[0], p[1], p[2] / c_stretch];
        Capsule { start: squash(start), end: squash(end), radius, profile: Profile::Rod { c_stretch }, bounds }
    }

    pub fn plate(start: Vec3, end: Vec3, radius: f64, half_height: f64) -> Capsule {
        let bounds = Aabb::around(&[start, end], [radius, radius, half_height + radius]);
        Capsule { start, end, radius, profile: Profile::Plate { half_height }, bounds }
    }

    pub fn distance(&self, q: Vec3) -> f64 {
        match self.profile {
            Profile::Rod { c_stretch } => {
                let p = [q[0], q[1], q[2] / c_stretch];
                let axis = sub(self.end, self.start);
                let t = (dot(sub(p, self.start), axis) / dot(axis, axis).max(1e-12)).clamp(0.0, 1.0);
                norm(sub(p, add(self.start, scale(axis, t)))) - self.radius
            }
            Profile::Plate { half_height } => {
                let (da, db) = (self.end[0] - self.start[0], self.end[1] - self.start[1]);
                let (qa, qb) = (q[0] - self.start[0], q[1] - self.start[1]);
                let t = ((qa * da + qb * db) / (da * da + db * db).max(1e-12)).clamp(0.0, 1.0);
                let across = length2(qa - t * da, qb - t * db) - self.radius;
                let centre_c = self.start[2] + t * (self.end[2] - self.start[2]);
                let along_c = (q[2] - centre_c).abs() - half_height;
                // A box with rounded edges: exact outside both faces, the nearer face inside.
                if across > 0.0 && along_c > 0.0 { length2(across, along_c) } else { across.max(along_c) }
            }
        }
    }
}

/// A chain of plates sharing endpoints (a rib).
fn plates(points: &[Vec3], radius: f64, half_height: f64) -> Vec<Capsule> {
    points.windows(2).map(|w| Capsule::plate(w[0], w[1], radius, half_height)).collect()
}

/// The spinal canal of a vertebra: an ellipse in the `(a, b)` plane behind the body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Canal {
    pub centre_b: f64,
    pub half_width: f64,
    pub half_depth: f64,
    /// The spinal cord ends at L1-L2; below it the sac holds only CSF (and nerve roots).
    pub has_cord: bool,
}

/// Cortical thickness of the posterior elements and ribs, mm.
const POSTERIOR_CORTEX: f64 = 0.9;
/// How far a disc bulges beyond the rim of its endplates, mm.
const DISC_BULGE: f64 = 1.2;

/// What a point inside a vertebral body is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BodySample {
    pub tissue: Tissue,
    pub hu: f64,
    /// Inside the fracture's disrupted zone (the truth mask).
    pub fractured: bool,
}

/// One vertebra in its local frame. Sizes in mm, HU for the ideal image.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VertebraShape {
    pub level: Level,
    pub width: f64,
    pub depth: f64,
    /// Body height along `c` at posterior offset `b`, before any deformation:
    /// `intact_height + intact_slope * b` (a positive slope is a kyphotic wedge).
    pub intact_height: f64,
    pub intact_slope: f64,
    /// The same after a fracture or a wedged variant: what is drawn and stacked.
    pub height: f64,
    pub slope: f64,
    /// Cross-section scale (a crushed body spreads).
    pub widening: f64,
    /// Normal central depression of each endplate, mm.
    pub concavity: f64,
    /// Narrowing of the body at mid-height (fraction of the endplate radius).
    pub waist: f64,
    /// Posterior wall indentation at the midline, mm.
    pub notch: f64,
    pub wall: f64,
    pub endplate: f64,
    pub trabecular: f64,
    pub texture_offset: Vec3,
    pub canal: Canal,
    /// How far the canal is drawn beyond the body's slab, below and above: the disc, or more
    /// at the ends of the drawn segment so that the canal runs to the volume's edge.
    pub canal_reach: [f64; 2],
    pub disc_below: f64,
    pub disc_above: f64,
    /// Most posterior point of the spinous process (`b`).
    pub spinous_tip: f64,
    posterior: Vec<Capsule>,
    posterior_bounds: Aabb,
    ribs: Vec<Capsule>,
    rib_bounds: Option<Aabb>,
    pub fracture: Option<Fracture>,
    pub pit: Option<Pit>,
}

impl VertebraShape {
    /// A normal vertebra of `level`, all sizes times `scale` (the patient's size).
    pub fn sample(level: Level, scale: f64, palette: &Palette, rng: &mut impl Rng) -> VertebraShape {
        let label = level.label();
        let size = level_size(label);
        let jitter = |rng: &mut _, sd: f64| 1.0 + sd * normal(rng).clamp(-2.5, 2.5);
        let width = size.width * scale * jitter(rng, 0.02);
        let depth = size.depth * scale * jitter(rng, 0.02);
        let height = size.height * scale * jitter(rng, 0.015);
        let wedge_ratio = size.wedge_ratio + 0.01 * normal(rng).clamp(-2.0, 2.0);
        // h(b) = height + slope * b with h(-D/2) / h(D/2) = wedge_ratio.
        let slope = 2.0 * height * (1.0 - wedge_ratio) / (depth * (1.0 + wedge_ratio));
        let texture_offset = [uniform(rng, (0.0, 64.0)), uniform(rng, (0.0, 64.0)), uniform(rng, (0.0, 64.0))];
        let trabecular = palette.trabecular * jitter(rng, 0.04);
        let canal = Canal {
            centre_b: 0.5 * depth + size.canal_half_depth * scale + 0.5,
            half_width: size.canal_half_width * scale,
            half_depth: size.canal_half_depth * scale,
            has_cord: label <= 20,
        };
        let lumbar = lumbar_blend(f64::from(label));
        let pedicle_radius = size.pedicle_radius * scale * jitter(rng, 0.05);
        let spinous_length = (26.0 + 0.2 * depth) * jitter(rng, 0.06);
        let disc_below = size.disc_below * scale;
        let disc_above = level_size(label.saturating_sub(1)).disc_below * scale;
        let mut shape = VertebraShape {
            level,
            width,
            depth,
            intact_height: height,
            intact_slope: slope,
            height,
            slope,
            widening: 1.0,
            concavity: uniform(rng, (0.8, 1.6)),
            waist: uniform(rng, (0.04, 0.08)),
            notch: 0.06 * depth,
            wall: uniform(rng, (0.9, 1.3)),
            endplate: uniform(rng, (1.0, 1.4)),
            trabecular,
            texture_offset,
            canal,
            canal_reach: [disc_below, disc_above],
            disc_below,
            disc_above,
            spinous_tip: 0.0,
            posterior: Vec::new(),
            posterior_bounds: Aabb { lo: [0.0; 3], hi: [0.0; 3] },
            ribs: Vec::new(),
            rib_bounds: None,
            fracture: None,
            pit: None,
        };
        shape.build_posterior(pedicle_radius, spinous_length, lumbar);
        shape
    }

    /// Pedicles, laminae, spinous and transverse processes, facets and (thoracic) ribs.
    fn build_posterior(&mut self, pedicle_radius: f64, spinous_length: f64, lumbar: f64) {
        let (w, d, h) = (self.width, self.depth, self.intact_height);
        let Canal { centre_b: cb, half_width: cw, half_depth: cd, .. } = self.canal;
        let mix = |thoracic: f64, lumbar_value: f64| thoracic + (lumbar_value - thoracic) * lumbar;
        let pedicle_c = 0.18 * h;
        let junction = [0.0, cb + cd + 3.5, pedicle_c - 0.15 * h];
        let spinous_end = add(junction, [0.0, spinous_length, -mix(22.0 + 0.3 * h, 0.15 * h)]);
        self.spinous_tip = spinous_end[1] + 3.0;
        let label = self.level.label();
        let lung = lung_outline(w, d);
        let rib_point = |side: f64, angle_deg: f64, c: f64| {
            let phi = angle_deg.to_radians();
            [side * (lung[0] + (lung[2] + 7.0) * phi.sin()), lung[1] + (lung[3] + 7.0) * phi.cos(), c]
        };
        let mut posterior = vec![Capsule::plate(junction, spinous_end, mix(2.6, 3.0), mix(4.0, 0.28 * h))];
        let mut ribs = Vec::new();
        for side in [-1.0, 1.0] {
            let pedicle_a = side * (cw + 0.8 * pedicle_radius);
            let pedicle_end = [pedicle_a, cb + 0.3 * cd, pedicle_c];
            posterior.push(Capsule::rod([pedicle_a, 0.5 * d - 3.0, pedicle_c], pedicle_end, pedicle_radius, 1.5));
            posterior.push(Capsule::plate(
                [side * (cw + 0.6 * pedicle_radius), cb + 0.5 * cd, pedicle_c - 0.05 * h],
                junction,
                mix(2.6, 3.2),
                0.3 * h,
            ));
            // Transverse processes: T1..T10 reach back to the rib tubercle; T11 and T12 have
            // stubs; the lumbar ones stick out sideways, longest at L3.
            let tip = match label {
                ..=17 => {
                    let tubercle = rib_point(side, -40.0, 0.3 * h);
                    [tubercle[0] - side * 2.0, tubercle[1] + 3.0, pedicle_c + 2.0]
                }
                _ => {
                    let length = match label {
                        18 => 12.0,
                        19 => 8.0,
                        20 => 18.0,
                        21 => 24.0,
                        22 => 28.0,
                        23 => 25.0,
                        _ => 22.0,
                    };
                    [side * (cw + pedicle_radius + length), cb - 0.2 * cd * lumbar, pedicle_c - 0.05 * h]
                }
            };
            posterior.push(Capsule::rod([pedicle_a, cb + 0.4 * cd, pedicle_c], tip, mix(4.5, 3.2), mix(1.2, 1.8)));
            // Superior and inferior articular processes; the inferior sit medial to the
            // superior of the vertebra below (the facet joints).
            let facet_radius = 3.2 + lumbar;
            posterior.push(Capsule::rod(
                [side * (cw + 0.9 * pedicle_radius), cb + 0.6 * cd, pedicle_c],
                [side * (cw + 1.1 * pedicle_radius + 2.0 * lumbar), cb + 0.9 * cd, 0.5 * h + 4.0 + 2.0 * lumbar],
                facet_radius,
                1.0,
            ));
            posterior.push(Capsule::rod(
                [side * (cw + 0.5 * pedicle_radius), cb + cd, pedicle_c - 0.2 * h],
                [side * (cw + 0.5 * pedicle_radius - 2.0 * lumbar), cb + cd + 2.5, -0.5 * h - 5.0 - 2.0 * lumbar],
                facet_radius - 0.4,
                1.0,
            ));
            // Ribs articulate with T1..T12 and descend as they run around the lung.
            let angles: &[f64] = match label {
                8..=17 => &[-40.0, 0.0, 40.0, 80.0, 115.0, 150.0],
                18 => &[-40.0, 0.0, 35.0],
                19 => &[-40.0, -5.0],
                _ => &[],
            };
            if !angles.is_empty() {
                // Ribs descend about 23 degrees as they run out from the tubercle.
                let mut points = vec![[side * (0.5 * w - 1.0), 0.28 * d, 0.42 * h]];
                let mut c = 0.3 * h;
                let mut previous: Option<Vec3> = None;
                for &angle in angles {
                    let flat = rib_point(side, angle, 0.0);
                    if let Some(previous) = previous {
                        c -= 0.42 * norm(sub(flat, previous));
                    }
                    points.push(rib_point(side, angle, c));
                    previous = Some(flat);
                }
                ribs.extend(plates(&points, 2.6, 5.0));
            }
        }
        self.posterior_bounds =
            posterior.iter().map(|c| c.bounds).reduce(|a, b| a.union(&b)).expect("spinous process is always there");
        self.rib_bounds = ribs.iter().map(|c| c.bounds).reduce(|a, b| a.union(&b));
        self.posterior = posterior;
        self.ribs = ribs;
    }

    /// Local box holding everything this vertebra draws (body, discs, canal, posterior
    /// elements, ribs).
    pub fn bounds(&self) -> Aabb {
        let half_w = 0.5 * self.width * self.widening + DISC_BULGE + 1.0;
        let half_d = 0.5 * self.depth * self.widening + DISC_BULGE + 1.0;
        let tilt = 0.5 * self.slope.abs() * half_d;
        let body = Aabb {
            lo: [-half_w, -half_d, -0.5 * self.height - tilt - self.disc_below.max(self.canal_reach[0])],
            hi: [
                half_w,
                self.canal.centre_b + self.canal.half_depth,
                0.5 * self.height + tilt + self.disc_above.max(self.canal_reach[1]),
            ],
        };
        let with_posterior = body.union(&self.posterior_bounds);
        match &self.rib_bounds {
            Some(ribs) => with_posterior.union(ribs),
            None => with_posterior,
        }
    }

    /// Drawn (deformed) body height of the planar slab at posterior offset `b`.
    pub fn slab_height(&self, b: f64) -> f64 {
        self.height + self.slope * b
    }

    /// How far `q` lies outside this body's slab along `c` (negative inside): the spine
    /// gives a point to the vertebra whose slab is nearest.
    pub fn slab_distance(&self, q: Vec3) -> f64 {
        q[2].abs() - 0.5 * self.slab_height(q[1])
    }

    /// Whether `(a, b)` lies more than `margin` mm outside the box around the body's
    /// cross-section: a cheap test before the exact one.
    fn beside(&self, a: f64, b: f64, margin: f64) -> bool {
        a.abs() > 0.5 * self.width * self.widening + margin || b.abs() > 0.5 * self.depth * self.widening + margin
    }

    /// Signed radial distance to the body's side wall at height `c` (mm, negative inside),
    /// and the normalised radius of `(a, b)` at the endplates (0 centre, 1 rim).
    fn cross_section(&self, a: f64, b: f64, c: f64, h: f64) -> (f64, f64) {
        let half_w = 0.5 * self.width * self.widening;
        let half_d = 0.5 * self.depth * self.widening;
        let b = if b > 0.0 { b + self.notch * (-(a / (0.3 * self.width)).powi(2)).exp() } else { b };
        let (x, y) = (a.abs() / half_w, b.abs() / half_d);
        // Round in front, squarer behind (the flat posterior wall).
        let rho = if b > 0.0 { (x.powi(4) + y.powi(4)).sqrt().sqrt() } else { length2(x, y) };
        let waist = 1.0 - self.waist * (1.0 - (2.0 * c / h).powi(2)).max(0.0);
        let f = rho / waist;
        let distance = if f > 1e-9 { length2(a, b) * (1.0 - 1.0 / f) } else { -half_w.min(half_d) * waist };
        (distance, rho)
    }

    /// Upper and lower endplate surfaces (`c`) over `(a, b)`: the planar slab, the normal
    /// concavity, and the depressions of a fracture or a Schmorl's node.
    fn endplates(&self, a: f64, b: f64, rho: f64) -> (f64, f64) {
        let half = 0.5 * self.slab_height(b);
        let dip = self.concavity * (1.0 - rho * rho).max(0.0);
        let (mut top_dip, mut bottom_dip) = (dip, dip);
        if let Some(fracture) = &self.fracture {
            let (t, u) = fracture.depression(rho);
            top_dip += t;
            bottom_dip += u;
        }
        if let Some(pit) = &self.pit {
            let depth = pit.depression(a, b);
            if pit.upper {
                top_dip += depth;
            } else {
                bottom_dip += depth;
            }
        }
        (half - top_dip, -half + bottom_dip)
    }

    /// Body height along `c` at `(a, b)` (0 outside the body): what a radiologist measures
    /// at the anterior, middle or posterior column.
    #[cfg(test)]
    pub fn column_height(&self, a: f64, b: f64) -> f64 {
        let (_, rho) = self.cross_section(a, b, 0.5 * self.slab_height(b), self.slab_height(b));
        if rho > 1.0 {
            return 0.0;
        }
        let (top, bottom) = self.endplates(a, b, rho);
        (top - bottom).max(0.0)
    }

    /// The vertebral body at `q`, or `None` outside it. `band_min`: the thinnest fracture
    /// band, mm (see [`Fracture::zone`]).
    pub fn body(&self, q: Vec3, texture: &ValueNoise, palette: &Palette, band_min: f64) -> Option<BodySample> {
        let [a, b, c] = q;
        let h = self.slab_height(b);
        if c.abs() > 0.5 * h || self.beside(a, b, 2.5) {
            return None;
        }
        let (mut wall_distance, rho) = self.cross_section(a, b, c, h);
        if let Some(fracture) = &self.fracture {
            wall_distance -= fracture.buckle(b, c, self.depth);
        }
        if wall_distance > 0.0 {
            return None;
        }
        let (top, bottom) = self.endplates(a, b, rho);
        if c > top || c < bottom {
            return None;
        }
        let (below_top, above_bottom) = (top - c, c - bottom);
        let grain = texture.fractal(self.texture_coordinates(q));
        let trabecular = self.trabecular + palette.bone_texture * grain;
        let pit_rim =
            self.pit.as_ref().is_some_and(|pit| pit.in_rim(a, b, if pit.upper { below_top } else { above_bottom }));
        let endplate = below_top.min(above_bottom) < self.endplate;
        let cortex = wall_distance > -self.wall || endplate || pit_rim;
        let zone = self.fracture.as_ref().and_then(|f| f.zone(b, rho, below_top, above_bottom, band_min));
        let basivertebral = (a / (0.12 * self.width)).powi(2)
            + ((b - 0.3 * self.depth) / (0.15 * self.depth)).powi(2)
            + (c / 1.3).powi(2)
            < 1.0
            || (b > 0.3 * self.depth && a.abs() < 1.5 && c.abs() < 1.0);
        let sample = |tissue, hu| Some(BodySample { tissue, hu, fractured: zone.is_some() });
        if let (Some(closeness), Some(fracture)) = (zone, &self.fracture) {
            if let Some(hu) = fracture.cleft_hu(closeness, rho) {
                return sample(Tissue::Cleft, hu);
            }
            let sclerotic =
                trabecular + fracture.sclerosis * (0.35 + 0.65 * closeness) + 0.4 * palette.bone_texture * grain;
            // A broken cortex: fragments, and a gap where the anterior wall buckled.
            let broken = fracture.in_cortical_gap(b, c, self.depth) || grain < -0.3;
            return if cortex && !broken {
                sample(Tissue::Cortex, palette.cortex)
            } else {
                sample(Tissue::Sclerotic, sclerotic)
            };
        }
        if cortex {
            return sample(Tissue::Cortex, if pit_rim && !endplate { 0.7 * palette.cortex } else { palette.cortex });
        }
        if basivertebral {
            return sample(Tissue::Blood, palette.vein.min(80.0));
        }
        sample(Tissue::Trabecular, trabecular)
    }

    /// Texture coordinates: trabeculae run mostly along `c`, so the grain is longer there.
    fn texture_coordinates(&self, q: Vec3) -> Vec3 {
        [q[0] / 1.1 + self.texture_offset[0], q[1] / 1.1 + self.texture_offset[1], q[2] / 2.2 + self.texture_offset[2]]
    }

    /// The disc at `q` (its HU), for a point this vertebra owns: between its endplates and the
    /// middle of the neighbouring disc, or in a depression of its endplates.
    pub fn disc(&self, q: Vec3, palette: &Palette) -> Option<f64> {
        let [a, b, c] = q;
        let h = self.slab_height(b);
        let beyond = c.abs() - 0.5 * h;
        let gap = if c > 0.0 { self.disc_above } else { self.disc_below };
        if beyond > gap || self.beside(a, b, DISC_BULGE) {
            return None;
        }
        let (wall_distance, rho) = self.cross_section(a, b, 0.5 * h, h);
        let inside = if beyond > 0.0 {
            wall_distance < DISC_BULGE
        } else {
            let (top, bottom) = self.endplates(a, b, rho);
            wall_distance < 0.0 && (c > top || c < bottom)
        };
        inside
            .then(|| palette.disc_nucleus + (palette.disc_annulus - palette.disc_nucleus) * smoothstep(0.45, 0.75, rho))
    }

    /// Canal contents at `q` (epidural fat, CSF, cord), for a point this vertebra owns.
    pub fn canal(&self, q: Vec3, palette: &Palette) -> Option<(Tissue, f64)> {
        let [a, b, c] = q;
        let reach = if c > 0.0 { self.canal_reach[1] } else { self.canal_reach[0] };
        let Canal { centre_b, half_width, half_depth, has_cord } = self.canal;
        if c.abs() - 0.5 * self.slab_height(b) > reach
            || (a / half_width).powi(2) + ((b - centre_b) / half_depth).powi(2) > 1.0
        {
            return None;
        }
        // The dural sac sits forward in the canal, epidural fat behind and beside it.
        let sac_b = b - centre_b + 0.12 * half_depth;
        let in_sac = |f: f64| (a / (f * half_width)).powi(2) + (sac_b / (f * half_depth)).powi(2) <= 1.0;
        Some(if has_cord && in_sac(0.45) {
            (Tissue::Cord, palette.cord)
        } else if in_sac(0.82) {
            (Tissue::Csf, palette.csf)
        } else {
            (Tissue::EpiduralFat, palette.epidural_fat)
        })
    }

    /// Posterior elements at `q` (vertebra bone), or `None`.
    pub fn posterior(&self, q: Vec3, texture: &ValueNoise, palette: &Palette) -> Option<(Tissue, f64)> {
        if !self.posterior_bounds.contains(q) {
            return None;
        }
        let distance = nearest(&self.posterior, q)?;
        Some(if distance > -POSTERIOR_CORTEX {
            (Tissue::Cortex, 0.95 * palette.cortex)
        } else {
            let grain = texture.fractal(self.texture_coordinates(q));
            (Tissue::Trabecular, self.trabecular + 80.0 + palette.bone_texture * grain)
        })
    }

    /// Rib bone at `q` (no vertebra label), or `None`.
    pub fn rib(&self, q: Vec3, palette: &Palette) -> Option<(Tissue, f64)> {
        if !self.rib_bounds.is_some_and(|b| b.contains(q)) {
            return None;
        }
        let distance = nearest(&self.ribs, q)?;
        Some((Tissue::Rib, if distance > -POSTERIOR_CORTEX { 0.85 * palette.cortex } else { self.trabecular + 40.0 }))
    }
}

/// Signed distance to the nearest capsule whose box holds `q`, when it is inside (<= 0).
fn nearest(capsules: &[Capsule], q: Vec3) -> Option<f64> {
    let distance =
        capsules.iter().filter(|c| c.bounds.contains(q)).map(|c| c.distance(q)).fold(f64::INFINITY, f64::min);
    (distance <= 0.0).then_some(distance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::noise::{Stream, stream};

    fn l2() -> (VertebraShape, ValueNoise, Palette) {
        let palette = Palette::sample(&mut stream(4, Stream::Patient), false, 0.0);
        let texture = ValueNoise::new(&mut stream(4, Stream::Patient));
        let shape = VertebraShape::sample("L2".parse().unwrap(), 1.0, &palette, &mut stream(4, Stream::Vertebra(21)));
        (shape, texture, palette)
    }

    #[test]
    fn the_body_is_a_cortical_shell_around_trabecular_bone() {
        let (shape, texture, palette) = l2();
        let tissue_at = |b: f64, c: f64| shape.body([0.0, b, c], &texture, &palette, 3.2).map(|s| s.tissue);
        // From in front of the body to its centre: nothing, the shell, then trabecular bone.
        let front = -0.5 * shape.depth;
        assert_eq!(tissue_at(front - 1.0, 0.0), None);
        let first = (0..100).map(|k| front + 0.1 * f64::from(k)).find_map(|b| tissue_at(b, 0.0));
        assert_eq!(first, Some(Tissue::Cortex));
        assert_eq!(tissue_at(-0.2 * shape.depth, 0.0), Some(Tissue::Trabecular));
        // Down from above the body: the disc, then the cortical endplate.
        let b = -0.3 * shape.depth;
        let above = 0.5 * shape.slab_height(b) + 0.5;
        assert!(shape.disc([0.0, b, above], &palette).is_some());
        let first = (0..100).map(|k| above - 0.1 * f64::from(k)).find_map(|c| tissue_at(b, c));
        assert_eq!(first, Some(Tissue::Cortex));
        assert!(shape.body([0.0, 0.0, 0.0], &texture, &palette, 3.2).is_some_and(|s| !s.fractured));
    }

    #[test]
    fn the_canal_lies_behind_the_body_inside_the_posterior_ring() {
        let (shape, texture, palette) = l2();
        let canal = shape.canal;
        let centre = [0.0, canal.centre_b, 0.0];
        assert!(shape.body(centre, &texture, &palette, 3.2).is_none());
        assert!(matches!(shape.canal(centre, &palette), Some((Tissue::Csf | Tissue::Cord, _))));
        assert!(shape.posterior(centre, &texture, &palette).is_none());
        // Bone closes the ring behind it (laminae) and beside it (pedicles).
        let behind = [0.0, canal.centre_b + canal.half_depth + 3.5, 0.03 * shape.intact_height];
        assert!(shape.posterior(behind, &texture, &palette).is_some());
        let beside = [canal.half_width + 3.0, 0.5 * shape.depth + 2.0, 0.18 * shape.intact_height];
        assert!(shape.posterior(beside, &texture, &palette).is_some());
        // The spinous process reaches far back, the ribs do not exist at L2.
        assert!(shape.spinous_tip > canal.centre_b + 25.0);
        assert!(shape.rib([40.0, 20.0, 0.0], &palette).is_none());
    }
}
