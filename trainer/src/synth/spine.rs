//! The spine: vertebrae stacked from the caudal end up, body, disc, body, each turned by
//! its wedge and its disc's (the kyphosis and lordosis), with a little bending and twist;
//! then stood up along the patient's `Z` and tilted as the patient lies. Also what the soft
//! tissue and the scanner ask of it: sections at a given height, and its extent.

use rand::Rng;

use super::anatomy::VertebraShape;
use super::noise::uniform;
use super::space::{Aabb, CRANIAL, Frame, LATERAL, POSTERIOR, Vec3, add, cross, dot, norm, scale, sub};

/// The sagittal and coronal shape of a patient's spine.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Curve {
    /// Thoracic kyphosis (T4..T12) and lumbar lordosis (L1..L5), radians, both positive.
    pub kyphosis: f64,
    pub lordosis: f64,
    /// Mild scoliosis: lateral bending per disc is `amplitude * sin(phase + k * frequency)`.
    pub bend_amplitude: f64,
    pub bend_phase: f64,
    /// Axial twist per disc, same form.
    pub twist_amplitude: f64,
    pub twist_phase: f64,
    /// Whole-spine tilt on the table: sagittal, coronal, axial, radians.
    pub tilt: Vec3,
}

impl Curve {
    pub fn sample(rng: &mut impl Rng, osteoporotic: bool) -> Curve {
        let extra_kyphosis = if osteoporotic { 8.0 } else { 0.0 };
        Curve {
            // Supine: flatter than the standing radiograph's 30..50 and 40..60 degrees.
            kyphosis: uniform(rng, (18.0 + extra_kyphosis, 38.0 + extra_kyphosis)).to_radians(),
            lordosis: uniform(rng, (22.0, 42.0)).to_radians(),
            bend_amplitude: uniform(rng, (0.0, 1.5)).to_radians(),
            bend_phase: uniform(rng, (0.0, std::f64::consts::TAU)),
            twist_amplitude: uniform(rng, (0.0, 1.5)).to_radians(),
            twist_phase: uniform(rng, (0.0, std::f64::consts::TAU)),
            tilt: [
                uniform(rng, (-4.0, 4.0)).to_radians(),
                uniform(rng, (-2.5, 2.5)).to_radians(),
                uniform(rng, (-4.0, 4.0)).to_radians(),
            ],
        }
    }

    /// Sagittal angle (kyphotic positive) between the lower endplate of the vertebra with
    /// `label` and that of its cranial neighbour: the target the body wedge and the disc
    /// above share.
    fn segment_angle(&self, label: u8) -> f64 {
        match label {
            ..=18 => self.kyphosis / 8.0,
            19 => self.kyphosis / 16.0,
            20..=24 => -self.lordosis * [0.08, 0.14, 0.2, 0.26, 0.32][usize::from(label - 20)],
            _ => -self.lordosis * 0.32,
        }
    }
}

/// A vertebra placed in the patient: its shape and its frame (origin at the body centre).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlacedVertebra {
    pub shape: VertebraShape,
    pub frame: Frame,
    /// Patient-frame box around everything the vertebra draws.
    pub bounds: Aabb,
}

/// The drawn spine, vertebrae cranial to caudal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spine {
    pub vertebrae: Vec<PlacedVertebra>,
}

/// Interpolated spine at one axial height, for the soft tissue around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Section {
    /// Body centre `(X, Y)` in patient mm.
    pub centre: [f64; 2],
    /// Unit in-plane direction of the vertebra's lateral axis (the patient's left).
    pub lateral: [f64; 2],
    /// Level as a fractional VerSe label (19.5: the T12/L1 disc).
    pub level: f64,
    pub width: f64,
    pub depth: f64,
    pub canal_back: f64,
    pub spinous_tip: f64,
}

impl Spine {
    /// Stacks `shapes` (cranial to caudal) from the caudal end up: body, disc, body... each
    /// turned by its wedge, the disc's wedge, a little bending and twist; then stands the
    /// whole spine up along `Z` and tilts it as the patient lies.
    pub fn assemble(mut shapes: Vec<VertebraShape>, curve: &Curve) -> Spine {
        if let Some(first) = shapes.first_mut() {
            first.canal_reach[1] = first.disc_above + 60.0;
        }
        if let Some(last) = shapes.last_mut() {
            last.canal_reach[0] = last.disc_below + 60.0;
        }
        let count = shapes.len();
        let mut frames = vec![Frame::identity(); count];
        let mut lower = Frame::identity();
        for (k, index) in (0..count).rev().enumerate() {
            let shape = &shapes[index];
            let wedge = 2.0 * (0.5 * shape.slope).atan();
            let intact_wedge = 2.0 * (0.5 * shape.intact_slope).atan();
            let body = lower.turned(LATERAL, 0.5 * wedge);
            let centre = add(lower.origin, scale(body.axes[CRANIAL], 0.5 * shape.height));
            frames[index] = body.at(centre);
            let upper = body.turned(LATERAL, 0.5 * wedge);
            let upper_centre = add(centre, scale(body.axes[CRANIAL], 0.5 * shape.height));
            let disc_wedge = curve.segment_angle(shape.level.label()) - intact_wedge;
            let disc = upper.turned(LATERAL, 0.5 * disc_wedge);
            let next_origin = add(upper_centre, scale(disc.axes[CRANIAL], shape.disc_above));
            let step = k as f64 * 0.7;
            lower = upper
                .turned(LATERAL, disc_wedge)
                .turned(POSTERIOR, curve.bend_amplitude * (curve.bend_phase + step).sin())
                .turned(CRANIAL, curve.twist_amplitude * (curve.twist_phase + step).sin())
                .at(next_origin);
        }
        // Stand up: the line that best fits the body centres becomes +Z (the principal axis
        // of the centres, by power iteration from the caudal-to-cranial direction).
        let origins: Vec<Vec3> = frames.iter().map(|f| f.origin).collect();
        let pivot = scale(origins.iter().fold([0.0; 3], |sum, &o| add(sum, o)), 1.0 / count as f64);
        let mut direction = sub(origins[0], origins[count - 1]);
        if norm(direction) < 1e-9 {
            direction = frames[0].axes[CRANIAL];
        }
        for _ in 0..8 {
            direction = scale(direction, 1.0 / norm(direction));
            direction = origins.iter().fold([0.0; 3], |sum, &o| {
                let d = sub(o, pivot);
                add(sum, scale(d, dot(d, direction)))
            });
            if norm(direction) < 1e-9 {
                direction = frames[0].axes[CRANIAL];
            }
        }
        let mut direction = scale(direction, 1.0 / norm(direction));
        if dot(direction, sub(origins[0], origins[count - 1])) < 0.0 {
            direction = scale(direction, -1.0);
        }
        let up = [0.0, 0.0, 1.0];
        let turn_axis = cross(direction, up);
        let turn = if norm(turn_axis) > 1e-12 {
            Some((scale(turn_axis, 1.0 / norm(turn_axis)), dot(direction, up).clamp(-1.0, 1.0).acos()))
        } else {
            None
        };
        let place = |frame: Frame| {
            let mut frame = frame;
            if let Some((axis, angle)) = turn {
                frame = frame.rotated_about(pivot, axis, angle);
            }
            frame = frame.rotated_about(pivot, [1.0, 0.0, 0.0], curve.tilt[0]);
            frame = frame.rotated_about(pivot, [0.0, 1.0, 0.0], curve.tilt[1]);
            frame = frame.rotated_about(pivot, [0.0, 0.0, 1.0], curve.tilt[2]);
            frame.at(sub(frame.origin, pivot))
        };
        let vertebrae = shapes
            .into_iter()
            .zip(frames)
            .map(|(shape, frame)| {
                let frame = place(frame);
                let bounds = shape.bounds().placed(&frame);
                PlacedVertebra { shape, frame, bounds }
            })
            .collect();
        Spine { vertebrae }
    }

    /// Lowest and highest `Z` (mm) of the bodies, each with half its outer disc: the axial
    /// extent a scan of this segment covers.
    pub fn body_extent(&self) -> (f64, f64) {
        let mut low = f64::INFINITY;
        let mut high = f64::NEG_INFINITY;
        for v in &self.vertebrae {
            let s = &v.shape;
            let (half_w, half_d) = (0.5 * s.width * s.widening, 0.5 * s.depth * s.widening);
            for a in [-half_w, half_w] {
                for b in [-half_d, 0.0, half_d] {
                    let half = 0.5 * s.slab_height(b);
                    low = low.min(v.frame.to_patient([a, b, -half - 0.5 * s.disc_below])[2]);
                    high = high.max(v.frame.to_patient([a, b, half + 0.5 * s.disc_above])[2]);
                }
            }
        }
        (low, high)
    }

    /// Patient `Y` (mm) of the front of the bodies, of their back, and of 10 mm behind the
    /// canals: what the field of view should hold.
    pub fn sagittal_reach(&self) -> [f64; 3] {
        let (mut front, mut bodies_back, mut canals_back) = (f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY);
        for v in &self.vertebrae {
            let s = &v.shape;
            let half_d = 0.5 * s.depth * s.widening + 1.0;
            let canal_back = s.canal.centre_b + s.canal.half_depth + 10.0;
            for c in [-0.5 * s.height, 0.0, 0.5 * s.height] {
                front = front.min(v.frame.to_patient([0.0, -half_d, c])[1]);
                bodies_back = bodies_back.max(v.frame.to_patient([0.0, half_d, c])[1]);
                canals_back = canals_back.max(v.frame.to_patient([0.0, canal_back, c])[1]);
            }
        }
        [front, bodies_back, canals_back]
    }

    /// The spine interpolated at height `z` (mm) between the nearest body centres.
    pub fn section(&self, z: f64) -> Section {
        let section_of = |v: &PlacedVertebra| {
            let a = v.frame.axes[LATERAL];
            let lateral_length = a[0].hypot(a[1]).max(1e-9);
            let s = &v.shape;
            Section {
                centre: [v.frame.origin[0], v.frame.origin[1]],
                lateral: [a[0] / lateral_length, a[1] / lateral_length],
                level: f64::from(s.level.label()),
                width: s.width,
                depth: s.depth,
                canal_back: s.canal.centre_b + s.canal.half_depth,
                spinous_tip: s.spinous_tip,
            }
        };
        // Body centres rise from the last (caudal) vertebra to the first.
        let n = self.vertebrae.len();
        if n == 1 {
            return section_of(&self.vertebrae[0]);
        }
        let height = |i: usize| self.vertebrae[i].frame.origin[2];
        let upper = (0..n - 1).find(|&i| height(i + 1) <= z).unwrap_or(n - 2);
        let (s0, s1) = (section_of(&self.vertebrae[upper + 1]), section_of(&self.vertebrae[upper]));
        let span = height(upper) - height(upper + 1);
        let t = if span.abs() > 1e-9 { (z - height(upper + 1)) / span } else { 0.5 };
        let lerp = |x: f64, y: f64| x + (y - x) * t;
        let clamped = |x: f64, y: f64| x + (y - x) * t.clamp(0.0, 1.0);
        let lateral = [lerp(s0.lateral[0], s1.lateral[0]), lerp(s0.lateral[1], s1.lateral[1])];
        let length = lateral[0].hypot(lateral[1]).max(1e-9);
        Section {
            centre: [lerp(s0.centre[0], s1.centre[0]), lerp(s0.centre[1], s1.centre[1])],
            lateral: [lateral[0] / length, lateral[1] / length],
            level: lerp(s0.level, s1.level),
            width: clamped(s0.width, s1.width),
            depth: clamped(s0.depth, s1.depth),
            canal_back: clamped(s0.canal_back, s1.canal_back),
            spinous_tip: clamped(s0.spinous_tip, s1.spinous_tip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::levels::Level;
    use crate::synth::noise::{Stream, stream};
    use crate::synth::tissue::Palette;

    fn spine(first: u8, last: u8, curve: &Curve) -> Spine {
        let palette = Palette::sample(&mut stream(9, Stream::Patient), false, 0.0);
        let shapes = (first..=last)
            .map(|label| {
                let level = Level::from_label(label).unwrap();
                VertebraShape::sample(level, 1.0, &palette, &mut stream(9, Stream::Vertebra(label)))
            })
            .collect();
        Spine::assemble(shapes, curve)
    }

    fn plain_curve(kyphosis_deg: f64, lordosis_deg: f64) -> Curve {
        Curve {
            kyphosis: kyphosis_deg.to_radians(),
            lordosis: lordosis_deg.to_radians(),
            bend_amplitude: 0.0,
            bend_phase: 0.0,
            twist_amplitude: 0.0,
            twist_phase: 0.0,
            tilt: [0.0; 3],
        }
    }

    #[test]
    fn bodies_stack_upward_with_their_discs_between() {
        let spine = spine(11, 24, &plain_curve(35.0, 40.0));
        for pair in spine.vertebrae.windows(2) {
            let (upper, lower) = (&pair[0], &pair[1]);
            // The disc between them: the centres are half a body + disc + half a body apart.
            let gap = norm(sub(upper.frame.origin, lower.frame.origin));
            let expected = 0.5 * upper.shape.height + lower.shape.disc_above + 0.5 * lower.shape.height;
            assert!((gap - expected).abs() < 0.05 * expected, "{}: {gap} vs {expected}", upper.shape.level);
            assert!(upper.frame.origin[2] > lower.frame.origin[2]);
        }
    }

    #[test]
    fn the_thoracic_spine_is_kyphotic_and_the_lumbar_lordotic() {
        let spine = spine(11, 24, &plain_curve(35.0, 40.0));
        let cranial_y = |label: u8| spine.vertebrae[usize::from(label - 11)].frame.axes[CRANIAL][1];
        // Going up a kyphosis, the cranial axis leans forward (-Y); up a lordosis, backward.
        assert!(cranial_y(11) < cranial_y(19) - 0.2, "T4 {} T12 {}", cranial_y(11), cranial_y(19));
        assert!(cranial_y(20) > cranial_y(24) + 0.2, "L1 {} L5 {}", cranial_y(20), cranial_y(24));
    }

    #[test]
    fn sections_follow_the_bodies_and_interpolate_the_level() {
        let spine = spine(18, 21, &plain_curve(30.0, 30.0));
        let (t12, l1) = (&spine.vertebrae[1], &spine.vertebrae[2]);
        let at_t12 = spine.section(t12.frame.origin[2]);
        assert!((at_t12.level - 19.0).abs() < 1e-9);
        assert!((at_t12.centre[0] - t12.frame.origin[0]).abs() < 1e-9);
        let between = spine.section(0.5 * (t12.frame.origin[2] + l1.frame.origin[2]));
        assert!((between.level - 19.5).abs() < 1e-9);
    }
}
