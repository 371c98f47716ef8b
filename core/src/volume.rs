//! `Volume`: voxels on a grid with its spacing and its place in the world.

use ndarray::Array3;

/// Voxel `(x, y, z, 1)` to world millimetres, row-major 4x4, as NIfTI's sform/qform.
pub type Affine = [[f64; 4]; 4];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VolumeError {
    #[error("spacing must be finite and positive, got [z, y, x] = {0:?}")]
    BadSpacing([f64; 3]),
    #[error("affine must be finite with an invertible 3x3 part, got {0:?}")]
    BadAffine(Box<Affine>),
    #[error("volume shape {0:?} has an empty axis")]
    EmptyShape([usize; 3]),
}

/// Where voxels sit: shape `[z, y, x]`, spacing in mm `[z, y, x]`, voxel-to-world affine.
/// A mask or a probability map written "on the CT's grid" carries the CT's `Grid`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub affine: Affine,
}

/// A scalar volume: f32 voxels indexed `[z, y, x]` in a contiguous C-order array, the voxel
/// spacing in mm (`[z, y, x]`, same order as the array), and the voxel-to-world affine.
///
/// Invariants (checked by [`Volume::new`]): the array is in standard layout, no axis is
/// empty, the spacing is finite and positive, the affine is finite and invertible.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    data: Array3<f32>,
    spacing: [f64; 3],
    affine: Affine,
}

impl Volume {
    pub fn new(data: Array3<f32>, spacing: [f64; 3], affine: Affine) -> Result<Self, VolumeError> {
        let shape = shape3(&data);
        if shape.contains(&0) {
            return Err(VolumeError::EmptyShape(shape));
        }
        if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(VolumeError::BadSpacing(spacing));
        }
        if affine.iter().flatten().any(|v| !v.is_finite()) || det3(&affine).abs() < 1e-12 {
            return Err(VolumeError::BadAffine(Box::new(affine)));
        }
        let data = if data.is_standard_layout() { data } else { data.as_standard_layout().into_owned() };
        Ok(Self { data, spacing, affine })
    }

    /// A volume whose affine is just the spacing (no rotation, origin at voxel 0).
    pub fn with_spacing(data: Array3<f32>, spacing: [f64; 3]) -> Result<Self, VolumeError> {
        Self::new(data, spacing, spacing_affine(spacing))
    }

    /// `[z, y, x]`.
    pub fn shape(&self) -> [usize; 3] {
        shape3(&self.data)
    }

    pub fn grid(&self) -> Grid {
        Grid { shape: self.shape(), spacing: self.spacing, affine: self.affine }
    }

    /// Voxel spacing in mm, `[z, y, x]`.
    pub fn spacing(&self) -> [f64; 3] {
        self.spacing
    }

    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    pub fn data(&self) -> &Array3<f32> {
        &self.data
    }

    /// Mutable voxels; the shape cannot change through this view.
    pub fn data_mut(&mut self) -> ndarray::ArrayViewMut3<'_, f32> {
        self.data.view_mut()
    }

    /// Contiguous voxels, `[z, y, x]` C order.
    pub fn as_slice(&self) -> &[f32] {
        self.data.as_slice().expect("Volume keeps its data in standard layout")
    }

    pub fn into_data(self) -> Array3<f32> {
        self.data
    }

    /// The same grid (spacing, affine) with other voxels of the same shape.
    pub fn with_data(&self, data: Array3<f32>) -> Result<Self, VolumeError> {
        Self::new(data, self.spacing, self.affine)
    }

    /// World position (mm) of a voxel index given as `[z, y, x]` (fractional allowed).
    pub fn voxel_to_world(&self, zyx: [f64; 3]) -> [f64; 3] {
        let v = [zyx[2], zyx[1], zyx[0], 1.0];
        let a = &self.affine;
        std::array::from_fn(|r| (0..4).map(|c| a[r][c] * v[c]).sum())
    }
}

/// Diagonal affine from `[z, y, x]` spacing: voxel `(x, y, z)` -> `(x*sx, y*sy, z*sz)`.
pub fn spacing_affine(spacing: [f64; 3]) -> Affine {
    let [sz, sy, sx] = spacing;
    [[sx, 0.0, 0.0, 0.0], [0.0, sy, 0.0, 0.0], [0.0, 0.0, sz, 0.0], [0.0, 0.0, 0.0, 1.0]]
}

/// Voxel spacing `[z, y, x]` implied by an affine: the lengths of its columns.
pub fn affine_spacing(affine: &Affine) -> [f64; 3] {
    let col = |c: usize| (0..3).map(|r| affine[r][c] * affine[r][c]).sum::<f64>().sqrt();
    [col(2), col(1), col(0)]
}

fn shape3<T>(a: &Array3<T>) -> [usize; 3] {
    let s = a.shape();
    [s[0], s[1], s[2]]
}

fn det3(a: &Affine) -> f64 {
    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn rejects_bad_spacing_and_singular_affine() {
        let data = Array3::<f32>::zeros((2, 3, 4));
        assert_eq!(Volume::with_spacing(data.clone(), [1.0, 0.0, 1.0]), Err(VolumeError::BadSpacing([1.0, 0.0, 1.0])));
        let mut flat = spacing_affine([1.0, 1.0, 1.0]);
        flat[2][2] = 0.0;
        assert!(matches!(Volume::new(data, [1.0; 3], flat), Err(VolumeError::BadAffine(_))));
        assert_eq!(Volume::with_spacing(Array3::zeros((0, 3, 4)), [1.0; 3]), Err(VolumeError::EmptyShape([0, 3, 4])));
    }

    #[test]
    fn non_standard_layout_is_made_contiguous_in_zyx_order() {
        // Built in (x, y, z) order, then viewed as [z, y, x]: a column-major array.
        let xyz = Array3::from_shape_fn((4, 3, 2), |(x, y, z)| (100 * z + 10 * y + x) as f32);
        let zyx = xyz.reversed_axes();
        assert!(!zyx.is_standard_layout());
        let v = Volume::with_spacing(zyx, [2.0, 1.0, 0.5]).unwrap();
        assert_eq!(v.shape(), [2, 3, 4]);
        assert_eq!(&v.as_slice()[..5], &[0.0, 1.0, 2.0, 3.0, 10.0]);
    }

    #[test]
    fn world_position_follows_the_affine() {
        let mut a = spacing_affine([3.0, 2.0, 0.5]);
        a[0][3] = -10.0;
        let v = Volume::new(Array3::zeros((4, 4, 4)), [3.0, 2.0, 0.5], a).unwrap();
        // voxel z=1, y=2, x=4 -> (4*0.5 - 10, 2*2, 1*3)
        assert_eq!(v.voxel_to_world([1.0, 2.0, 4.0]), [-8.0, 4.0, 3.0]);
        assert_eq!(affine_spacing(&a), [3.0, 2.0, 0.5]);
    }
}
