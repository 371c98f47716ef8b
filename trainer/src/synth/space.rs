//! Millimetre space of the phantom: 3-vectors, the rigid frames anatomy is built in, boxes.
//!
//! The patient frame is DICOM's LPS: `X` toward the patient's left, `Y` toward posterior, `Z`
//! toward cranial, in mm. Voxel axes run along it (x -> left, y -> posterior, z -> cranial),
//! so a voxel's patient position is its index times the spacing plus an offset; the NIfTI
//! affine (RAS) flips the signs of `X` and `Y`.

pub(crate) type Vec3 = [f64; 3];

pub(crate) fn add(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub(crate) fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn scale(a: Vec3, s: f64) -> Vec3 {
    [a[0] * s, a[1] * s, a[2] * s]
}

pub(crate) fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

pub(crate) fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}

/// Length of the 2D vector `(x, y)`: `hypot` without its overflow care, which costs more
/// than everything else in a voxel's hot path.
pub(crate) fn length2(x: f64, y: f64) -> f64 {
    (x * x + y * y).sqrt()
}

/// `v` rotated by `angle` (radians, right-hand rule) about the unit vector `axis` (Rodrigues).
pub(crate) fn rotate(v: Vec3, axis: Vec3, angle: f64) -> Vec3 {
    let (s, c) = angle.sin_cos();
    let along = scale(axis, dot(axis, v) * (1.0 - c));
    add(add(scale(v, c), scale(cross(axis, v), s)), along)
}

/// Index of a vertebra frame's axes.
pub(crate) const LATERAL: usize = 0;
pub(crate) const POSTERIOR: usize = 1;
pub(crate) const CRANIAL: usize = 2;

/// A right-handed orthonormal frame in patient mm. Local coordinates `[a, b, c]` run along
/// `axes[LATERAL]` (toward the patient's left), `axes[POSTERIOR]` and `axes[CRANIAL]`; a frame
/// equal to the identity has local = patient.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    pub origin: Vec3,
    pub axes: [Vec3; 3],
}

impl Frame {
    pub fn identity() -> Frame {
        Frame { origin: [0.0; 3], axes: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] }
    }

    pub fn to_local(&self, p: Vec3) -> Vec3 {
        let d = sub(p, self.origin);
        [dot(d, self.axes[0]), dot(d, self.axes[1]), dot(d, self.axes[2])]
    }

    pub fn to_patient(&self, q: Vec3) -> Vec3 {
        let mut p = self.origin;
        for (axis, &coord) in self.axes.iter().zip(&q) {
            p = add(p, scale(*axis, coord));
        }
        p
    }

    /// The same origin with the axes turned by `angle` about the frame's own axis `axis`.
    pub fn turned(&self, axis: usize, angle: f64) -> Frame {
        let k = self.axes[axis];
        Frame { origin: self.origin, axes: self.axes.map(|v| rotate(v, k, angle)) }
    }

    /// The frame moved to `origin`, axes unchanged.
    pub fn at(&self, origin: Vec3) -> Frame {
        Frame { origin, axes: self.axes }
    }

    /// The whole frame (origin and axes) rotated about the patient-frame point `pivot`.
    pub fn rotated_about(&self, pivot: Vec3, axis: Vec3, angle: f64) -> Frame {
        Frame {
            origin: add(pivot, rotate(sub(self.origin, pivot), axis, angle)),
            axes: self.axes.map(|v| rotate(v, axis, angle)),
        }
    }
}

/// Axis-aligned box in some frame, mm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Aabb {
    pub lo: Vec3,
    pub hi: Vec3,
}

impl Aabb {
    pub fn around(points: &[Vec3], margin: Vec3) -> Aabb {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for p in points {
            for axis in 0..3 {
                lo[axis] = lo[axis].min(p[axis] - margin[axis]);
                hi[axis] = hi[axis].max(p[axis] + margin[axis]);
            }
        }
        Aabb { lo, hi }
    }

    pub fn union(&self, other: &Aabb) -> Aabb {
        Aabb {
            lo: std::array::from_fn(|i| self.lo[i].min(other.lo[i])),
            hi: std::array::from_fn(|i| self.hi[i].max(other.hi[i])),
        }
    }

    pub fn contains(&self, p: Vec3) -> bool {
        (0..3).all(|i| self.lo[i] <= p[i] && p[i] <= self.hi[i])
    }

    pub fn corners(&self) -> [Vec3; 8] {
        std::array::from_fn(|i| {
            [
                if i & 1 == 0 { self.lo[0] } else { self.hi[0] },
                if i & 2 == 0 { self.lo[1] } else { self.hi[1] },
                if i & 4 == 0 { self.lo[2] } else { self.hi[2] },
            ]
        })
    }

    /// The patient-frame box around this local box placed by `frame`.
    pub fn placed(&self, frame: &Frame) -> Aabb {
        Aabb::around(&self.corners().map(|c| frame.to_patient(c)), [0.0; 3])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Vec3, b: Vec3) -> bool {
        norm(sub(a, b)) < 1e-9
    }

    #[test]
    fn local_and_patient_coordinates_are_inverse() {
        let frame = Frame::identity().turned(LATERAL, 0.3).turned(CRANIAL, -0.2).at([4.0, -2.0, 7.0]);
        let p = [1.5, 2.5, -3.0];
        assert!(close(frame.to_patient(frame.to_local(p)), p));
        assert!(close(cross(frame.axes[0], frame.axes[1]), frame.axes[2]), "frames stay right-handed");
    }

    #[test]
    fn a_positive_turn_about_lateral_tilts_cranial_toward_anterior() {
        // Kyphosis in this module's sign convention: the cranial axis leans forward (-Y).
        let tilted = Frame::identity().turned(LATERAL, 0.1);
        assert!(tilted.axes[CRANIAL][1] < 0.0);
        assert!(close(tilted.axes[LATERAL], [1.0, 0.0, 0.0]));
    }
}
