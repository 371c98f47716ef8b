//! Preprocessing of volumes: the HU window, resampling onto another spacing, shape or grid,
//! cropping and padding.
//!
//! Every function returns a new [`Volume`] whose affine is updated with its voxels, so any
//! output still overlays its source in world coordinates (a viewer shows them aligned). The
//! trainer and the server call these same functions with the same parameters.
//!
//! Masks go through the same functions as volumes of 0/1 ([`mask_to_volume`], then
//! [`Interpolation::Nearest`], then [`volume_to_mask`] with threshold 0.5).

use ndarray::{Array3, s};
use serde::{Deserialize, Serialize};

use crate::geometry::{Box3, GeometryError, Mask, SliceRange};
use crate::volume::{Affine, Grid, Volume, VolumeError};

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    #[error("HU window must be finite with min < max, got {min}..{max}")]
    BadWindow { min: f32, max: f32 },
    #[error("target spacing must be finite and positive, got [z, y, x] = {0:?} mm")]
    BadSpacing([f64; 3]),
    #[error("target shape [z, y, x] = {0:?} has an empty axis")]
    EmptyShape([usize; 3]),
    #[error("mask shape [z, y, x] = {mask:?} differs from the grid's {grid:?}")]
    ShapeMismatch { mask: [usize; 3], grid: [usize; 3] },
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    /// Boxed: a `VolumeError` carries a whole affine, too large to return by value.
    #[error(transparent)]
    Volume(Box<VolumeError>),
}

impl From<VolumeError> for PreprocessError {
    fn from(error: VolumeError) -> Self {
        PreprocessError::Volume(Box::new(error))
    }
}

/// A window in HU (or whatever unit the volume holds): values are clipped to `min..=max` and
/// scaled linearly to `0..=1`. Validated at construction and when read from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HuWindowFields")]
pub struct HuWindow {
    min: f32,
    max: f32,
}

/// What configuration holds; checked by `TryFrom` into a [`HuWindow`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HuWindowFields {
    min: f32,
    max: f32,
}

impl TryFrom<HuWindowFields> for HuWindow {
    type Error = PreprocessError;

    fn try_from(fields: HuWindowFields) -> Result<Self, Self::Error> {
        HuWindow::new(fields.min, fields.max)
    }
}

impl HuWindow {
    pub fn new(min: f32, max: f32) -> Result<Self, PreprocessError> {
        if !(min.is_finite() && max.is_finite() && min < max) {
            return Err(PreprocessError::BadWindow { min, max });
        }
        Ok(Self { min, max })
    }

    pub fn min(&self) -> f32 {
        self.min
    }

    pub fn max(&self) -> f32 {
        self.max
    }

    /// One value: `min` and below -> 0, `max` and above -> 1, linear between. NaN stays NaN.
    pub fn scale(&self, value: f32) -> f32 {
        (value.clamp(self.min, self.max) - self.min) / (self.max - self.min)
    }

    /// The windowed volume, on the same grid.
    pub fn apply(&self, volume: &Volume) -> Volume {
        volume.with_data(volume.data().mapv(|v| self.scale(v))).expect("same shape, same grid")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Trilinear, for images and probability maps.
    Linear,
    /// Nearest voxel (exact ties go to the higher index), for masks and label maps: the
    /// output holds only values of the input.
    Nearest,
}

/// Resamples onto `target_spacing` (mm, `[z, y, x]`) keeping the physical extent: the new
/// shape is `round(shape * spacing / target_spacing)` (at least 1), and the spacing actually
/// used is `extent / new shape`, which differs from `target_spacing` by the rounding (less
/// than half a voxel over the whole extent). See [`resample_to_shape`].
pub fn resample(volume: &Volume, target_spacing: [f64; 3], interp: Interpolation) -> Result<Volume, PreprocessError> {
    if target_spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(PreprocessError::BadSpacing(target_spacing));
    }
    let (shape, spacing) = (volume.shape(), volume.spacing());
    let new_shape =
        std::array::from_fn(|a| ((shape[a] as f64 * spacing[a] / target_spacing[a]).round() as usize).max(1));
    resample_to_shape(volume, new_shape, interp)
}

/// Resamples to `shape` (`[z, y, x]`) over the same physical extent, as scipy/skimage resize
/// with `align_corners=False`: new voxel `i` reads old index `(i + 0.5) * old_n / new_n - 0.5`,
/// clamped to the first and last voxel at the edges. The spacing becomes
/// `old_spacing * old_n / new_n` and the affine places the new voxel centres where they were
/// read, so the volume's corners stay where they were in the world. No anti-aliasing filter
/// (like `scipy.ndimage.zoom` or torch `interpolate`): smooth first when shrinking a lot.
pub fn resample_to_shape(volume: &Volume, shape: [usize; 3], interp: Interpolation) -> Result<Volume, PreprocessError> {
    if shape.contains(&0) {
        return Err(PreprocessError::EmptyShape(shape));
    }
    let (old_shape, old_spacing) = (volume.shape(), volume.spacing());
    let scale: [f64; 3] = std::array::from_fn(|a| old_shape[a] as f64 / shape[a] as f64);
    let mut to_old = IndexMap::default();
    for (a, row) in to_old.rows.iter_mut().enumerate() {
        row[a] = scale[a];
        row[3] = 0.5 * scale[a] - 0.5;
    }
    let grid = Grid {
        shape,
        spacing: std::array::from_fn(|a| old_spacing[a] * scale[a]),
        affine: compose(volume.affine(), &to_old.to_affine()),
    };
    sample(volume, &grid, &to_old, interp, 0.0)
}

/// Resamples onto any `grid`: each target voxel reads the source at
/// `inverse(source affine) * grid affine * target index`, so the two grids may differ in
/// spacing, origin and orientation. Target voxels whose centre falls outside the source's
/// voxels (beyond half a voxel past its first or last centre) get `fill`; inside that
/// footprint, positions beyond the outer centres are clamped to them. This is how a
/// prediction made on a resampled crop goes back onto the CT's grid (fill 0).
pub fn resample_to_grid(
    volume: &Volume,
    grid: &Grid,
    interp: Interpolation,
    fill: f32,
) -> Result<Volume, PreprocessError> {
    if grid.shape.contains(&0) {
        return Err(PreprocessError::EmptyShape(grid.shape));
    }
    let to_source = compose(&invert(volume.affine()), &grid.affine);
    sample(volume, grid, &IndexMap::from_affine(&to_source), interp, fill)
}

/// A window onto a volume's index space that may reach past its edges: voxel `[0, 0, 0]` of
/// the window is voxel `origin` (`[z, y, x]`) of the source, negative where the window starts
/// before the source. What [`cut`] cuts, and what a crop needs to go back to its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CropRegion {
    pub origin: [i64; 3],
    pub shape: [usize; 3],
}

impl CropRegion {
    /// A region of `shape` centred on a source of `source_shape`. Where the difference is odd,
    /// the extra voxel is cut (or padded) at the end of the axis, so cutting back to the
    /// source's shape returns every voxel to its place.
    pub fn centred(source_shape: [usize; 3], shape: [usize; 3]) -> Self {
        let origin = std::array::from_fn(|a| {
            let (n, m) = (source_shape[a] as i64, shape[a] as i64);
            if n >= m { (n - m) / 2 } else { -((m - n) / 2) }
        });
        CropRegion { origin, shape }
    }

    /// `region` grown by `margin` voxels (`[z, y, x]`) on both sides, unclamped.
    pub fn around_box(region: &Box3, margin: [usize; 3]) -> Self {
        CropRegion {
            origin: std::array::from_fn(|a| region.min()[a] as i64 - margin[a] as i64),
            shape: std::array::from_fn(|a| region.shape()[a] + 2 * margin[a]),
        }
    }

    /// The part of the source the region covers, as `(box in source indices, the same voxels
    /// in region indices)`; `None` when it covers none of a source of `source_shape`.
    pub fn overlap(&self, source_shape: [usize; 3]) -> Option<(Box3, Box3)> {
        let whole = Box3::whole(source_shape).ok()?;
        let in_source = self.source_box_clipped(whole.min(), whole.max())?;
        Some((in_source, self.local(&in_source)?))
    }

    /// A box given in source indices (a fracture box), in region indices: the part of it inside
    /// the region, `None` when none is.
    pub fn local_box(&self, source_box: &Box3) -> Option<Box3> {
        let in_region = self.source_box_clipped(source_box.min(), source_box.max())?;
        self.local(&in_region)
    }

    /// A slice range given in source z indices, in region z indices (the part inside).
    pub fn local_slices(&self, slices: &SliceRange) -> Option<SliceRange> {
        let start = (slices.start() as i64 - self.origin[0]).max(0);
        let end = (slices.end() as i64 - self.origin[0]).min(self.shape[0] as i64);
        SliceRange::new(usize::try_from(start).ok()?, usize::try_from(end).ok()?).ok()
    }

    /// Source indices `min..max` intersected with this region's footprint in the source.
    fn source_box_clipped(&self, min: [usize; 3], max: [usize; 3]) -> Option<Box3> {
        let lo: [i64; 3] = std::array::from_fn(|a| self.origin[a].max(min[a] as i64));
        let hi: [i64; 3] = std::array::from_fn(|a| (self.origin[a] + self.shape[a] as i64).min(max[a] as i64));
        if (0..3).any(|a| lo[a] >= hi[a]) {
            return None;
        }
        Box3::new(lo.map(|v| v as usize), hi.map(|v| v as usize)).ok()
    }

    /// A box in source indices that lies inside the region, in region indices.
    fn local(&self, inside: &Box3) -> Option<Box3> {
        let shift = |v: [usize; 3]| {
            let local = [0, 1, 2].map(|a| usize::try_from(v[a] as i64 - self.origin[a]).ok());
            Some([local[0]?, local[1]?, local[2]?])
        };
        Box3::new(shift(inside.min())?, shift(inside.max())?).ok()
    }
}

/// Cuts `region` out of `volume`, filling with `fill` where it reaches past the source. The
/// affine is translated by the region's origin, so every voxel keeps its world position.
pub fn cut(volume: &Volume, region: &CropRegion, fill: f32) -> Result<Volume, PreprocessError> {
    if region.shape.contains(&0) {
        return Err(PreprocessError::EmptyShape(region.shape));
    }
    let mut data = Array3::from_elem(region.shape, fill);
    if let Some((src, dst)) = region.overlap(volume.shape()) {
        let ([sz, sy, sx], [dz, dy, dx]) = (src.ranges(), dst.ranges());
        data.slice_mut(s![dz, dy, dx]).assign(&volume.data().slice(s![sz, sy, sx]));
    }
    let mut shift = IndexMap::default();
    for (a, row) in shift.rows.iter_mut().enumerate() {
        row[a] = 1.0;
        row[3] = region.origin[a] as f64;
    }
    Ok(Volume::new(data, volume.spacing(), compose(volume.affine(), &shift.to_affine()))?)
}

/// The voxels of `region`, which must lie inside the volume.
pub fn crop(volume: &Volume, region: &Box3) -> Result<Volume, PreprocessError> {
    region.check_inside(volume.shape())?;
    cut(volume, &CropRegion { origin: region.min().map(|v| v as i64), shape: region.shape() }, 0.0)
}

/// Adds `before` and `after` voxels (`[z, y, x]`) of `value` on each axis.
pub fn pad(volume: &Volume, before: [usize; 3], after: [usize; 3], value: f32) -> Volume {
    let shape = volume.shape();
    let region = CropRegion {
        origin: before.map(|b| -(b as i64)),
        shape: std::array::from_fn(|a| before[a] + shape[a] + after[a]),
    };
    cut(volume, &region, value).expect("padding keeps every axis non-empty")
}

/// Crops or pads each axis to `shape` (`[z, y, x]`), centred (see [`CropRegion::centred`]).
pub fn crop_or_pad_to(volume: &Volume, shape: [usize; 3], value: f32) -> Result<Volume, PreprocessError> {
    cut(volume, &CropRegion::centred(volume.shape(), shape), value)
}

/// Cuts `region` (which must lie inside the volume) plus `margin` voxels on each side,
/// padding with `pad_value` where the margin reaches past the volume, so that every vertebra
/// crop has the same context whatever its place. Returns the crop and where it came from
/// ([`CropRegion::local_box`] gives the fracture boxes in crop indices, and
/// [`CropRegion::overlap`] where a prediction on the crop goes back).
pub fn crop_around_box(
    volume: &Volume,
    region: &Box3,
    margin: [usize; 3],
    pad_value: f32,
) -> Result<(Volume, CropRegion), PreprocessError> {
    region.check_inside(volume.shape())?;
    let crop_region = CropRegion::around_box(region, margin);
    Ok((cut(volume, &crop_region, pad_value)?, crop_region))
}

/// A mask as a volume of 0.0 / 1.0 on `grid` (whose shape must be the mask's).
pub fn mask_to_volume(mask: &Mask, grid: &Grid) -> Result<Volume, PreprocessError> {
    let shape = [mask.shape()[0], mask.shape()[1], mask.shape()[2]];
    if shape != grid.shape {
        return Err(PreprocessError::ShapeMismatch { mask: shape, grid: grid.shape });
    }
    Ok(Volume::new(mask.mapv(|inside| if inside { 1.0 } else { 0.0 }), grid.spacing, grid.affine)?)
}

/// The voxels at or above `threshold` (a probability map, or a 0/1 mask volume with 0.5).
pub fn volume_to_mask(volume: &Volume, threshold: f32) -> Mask {
    volume.data().mapv(|v| v >= threshold)
}

/// Target voxel index to source voxel index, both `[z, y, x]`: `source[a] = rows[a] . (z, y, x, 1)`.
#[derive(Debug, Clone, Default)]
struct IndexMap {
    rows: [[f64; 4]; 3],
}

impl IndexMap {
    /// From a voxel-to-voxel affine in NIfTI's `(x, y, z)` order.
    fn from_affine(xyz: &Affine) -> Self {
        IndexMap { rows: std::array::from_fn(|a| [xyz[2 - a][2], xyz[2 - a][1], xyz[2 - a][0], xyz[2 - a][3]]) }
    }

    /// As a voxel-to-voxel affine in NIfTI's `(x, y, z)` order.
    fn to_affine(&self) -> Affine {
        let mut xyz = [[0.0; 4]; 4];
        for (r, out) in xyz.iter_mut().take(3).enumerate() {
            let row = &self.rows[2 - r];
            *out = [row[2], row[1], row[0], row[3]];
        }
        xyz[3][3] = 1.0;
        xyz
    }
}

/// Index maps through an inverse affine carry rounding noise (~1e-15 voxel). Snapping source
/// positions to 2^-20 voxel makes exact integers and exact halves come out exact, so
/// nearest-neighbour ties always break the same way and an identity map copies voxels.
const SNAP: f64 = (1u64 << 20) as f64;

/// Reads `volume` at `map(target index)` for every voxel of `grid`.
fn sample(
    volume: &Volume,
    grid: &Grid,
    map: &IndexMap,
    interp: Interpolation,
    fill: f32,
) -> Result<Volume, PreprocessError> {
    let source = volume.as_slice();
    let n = volume.shape();
    let strides = [n[1] * n[2], n[2], 1];
    let [depth, height, width] = grid.shape;
    let m = &map.rows;
    let mut out = Vec::with_capacity(depth * height * width);
    for z in 0..depth {
        for y in 0..height {
            let row_start: [f64; 3] = std::array::from_fn(|a| m[a][0] * z as f64 + m[a][1] * y as f64 + m[a][3]);
            for x in 0..width {
                let at: [f64; 3] = std::array::from_fn(|a| ((row_start[a] + m[a][2] * x as f64) * SNAP).round() / SNAP);
                let inside = (0..3).all(|a| at[a] >= -0.5 && at[a] <= n[a] as f64 - 0.5);
                if !inside {
                    out.push(fill);
                    continue;
                }
                let at: [f64; 3] = std::array::from_fn(|a| at[a].clamp(0.0, (n[a] - 1) as f64));
                let value = match interp {
                    Interpolation::Nearest => {
                        let index: usize =
                            (0..3).map(|a| (at[a] + 0.5).floor().min((n[a] - 1) as f64) as usize * strides[a]).sum();
                        source[index]
                    }
                    Interpolation::Linear => trilinear(source, n, strides, at),
                };
                out.push(value);
            }
        }
    }
    let data = Array3::from_shape_vec(grid.shape, out).expect("one value per target voxel");
    Ok(Volume::new(data, grid.spacing, grid.affine)?)
}

/// Trilinear interpolation at `at` (`[z, y, x]`, already clamped into the array).
fn trilinear(source: &[f32], n: [usize; 3], strides: [usize; 3], at: [f64; 3]) -> f32 {
    let lower: [usize; 3] = std::array::from_fn(|a| at[a].floor() as usize);
    let upper: [usize; 3] = std::array::from_fn(|a| (lower[a] + 1).min(n[a] - 1));
    let weight: [f64; 3] = std::array::from_fn(|a| at[a] - lower[a] as f64);
    let mut value = 0.0;
    for corner in 0..8 {
        let mut index = 0;
        let mut w = 1.0;
        for a in 0..3 {
            if corner >> (2 - a) & 1 == 1 {
                index += upper[a] * strides[a];
                w *= weight[a];
            } else {
                index += lower[a] * strides[a];
                w *= 1.0 - weight[a];
            }
        }
        if w != 0.0 {
            value += w * f64::from(source[index]);
        }
    }
    value as f32
}

fn compose(a: &Affine, b: &Affine) -> Affine {
    std::array::from_fn(|r| std::array::from_fn(|c| (0..4).map(|k| a[r][k] * b[k][c]).sum()))
}

/// Inverse of an affine with an invertible 3x3 part (every `Volume`'s is); shared with the
/// DICOM tests, which map one reader's voxels onto another's.
pub fn invert(a: &Affine) -> Affine {
    let m = |r: usize, c: usize| a[r][c];
    let cofactor = |r: usize, c: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        m(r1, c1) * m(r2, c2) - m(r1, c2) * m(r2, c1)
    };
    let det: f64 = (0..3).map(|c| m(0, c) * cofactor(0, c)).sum();
    let mut inv = [[0.0; 4]; 4];
    for (r, row) in inv.iter_mut().take(3).enumerate() {
        for (c, v) in row.iter_mut().take(3).enumerate() {
            *v = cofactor(c, r) / det;
        }
    }
    for row in inv.iter_mut().take(3) {
        row[3] = -(0..3).map(|c| row[c] * a[c][3]).sum::<f64>();
    }
    inv[3][3] = 1.0;
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{affine_spacing, spacing_affine};

    /// An affine with a rotation (x and y swapped, one flipped), unequal spacing and an origin.
    fn oblique_affine() -> Affine {
        [[0.0, -0.8, 0.0, 30.0], [1.5, 0.0, 0.0, -12.0], [0.0, 0.0, 2.0, 7.5], [0.0, 0.0, 0.0, 1.0]]
    }

    /// A linear function of world position (mm): trilinear interpolation reproduces it exactly.
    fn world_ramp(p: [f64; 3]) -> f64 {
        0.5 * p[0] - 2.0 * p[1] + 3.0 * p[2] + 1.0
    }

    /// A volume whose voxels hold `world_ramp` of their centres.
    fn ramp_volume(shape: [usize; 3], affine: Affine) -> Volume {
        let empty = Volume::new(Array3::zeros(shape), affine_spacing(&affine), affine).unwrap();
        let data = Array3::from_shape_fn(shape, |(z, y, x)| {
            world_ramp(empty.voxel_to_world([z as f64, y as f64, x as f64])) as f32
        });
        empty.with_data(data).unwrap()
    }

    fn assert_close(a: [f64; 3], b: [f64; 3]) {
        assert!((0..3).all(|i| (a[i] - b[i]).abs() < 1e-9), "{a:?} != {b:?}");
    }

    #[test]
    fn window_clips_and_scales_to_unit_range() {
        let window = HuWindow::new(-100.0, 300.0).unwrap();
        let v = Volume::with_spacing(
            Array3::from_shape_vec((1, 1, 5), vec![-200.0, -100.0, 100.0, 300.0, 500.0]).unwrap(),
            [2.0, 1.0, 1.0],
        )
        .unwrap();
        let windowed = window.apply(&v);
        assert_eq!(windowed.as_slice(), &[0.0, 0.0, 0.5, 1.0, 1.0]);
        assert_eq!(windowed.grid(), v.grid());
    }

    #[test]
    fn window_is_validated_in_code_and_configuration() {
        assert_eq!(HuWindow::new(1.0, 1.0), Err(PreprocessError::BadWindow { min: 1.0, max: 1.0 }));
        assert!(HuWindow::new(f32::NAN, 1.0).is_err());
        assert!(HuWindow::new(-1000.0, f32::INFINITY).is_err());
        let read: HuWindow = serde_json::from_str(r#"{"min": -250, "max": 1250}"#).unwrap();
        assert_eq!(read, HuWindow::new(-250.0, 1250.0).unwrap());
        let err = serde_json::from_str::<HuWindow>(r#"{"min": 500, "max": 100}"#).unwrap_err();
        assert!(err.to_string().contains("min < max"), "{err}");
    }

    #[test]
    fn halving_a_ramp_keeps_it_a_ramp_in_world_coordinates() {
        // Spacing [2, 0.8, 1.5] -> [4, 1.6, 3]: new voxel i reads old 2i + 0.5, always between
        // two old centres, so every value is the ramp at the new centre's world position.
        let source = ramp_volume([4, 6, 8], oblique_affine());
        let halved = resample(&source, [4.0, 1.6, 3.0], Interpolation::Linear).unwrap();
        assert_eq!(halved.shape(), [2, 3, 4]);
        for ((z, y, x), &value) in halved.data().indexed_iter() {
            let expected = world_ramp(halved.voxel_to_world([z as f64, y as f64, x as f64]));
            assert!((f64::from(value) - expected).abs() < 1e-4, "[{z}, {y}, {x}]: {value} vs {expected}");
        }
    }

    #[test]
    fn doubling_a_ramp_interpolates_inside_and_clamps_at_the_edges() {
        // Shape 3 -> 6 per axis: new i reads old i/2 - 0.25; i = 0 reads -0.25, clamped to 0.
        let source = ramp_volume([3, 3, 3], spacing_affine([1.0, 1.0, 1.0]));
        let doubled = resample_to_shape(&source, [6, 6, 6], Interpolation::Linear).unwrap();
        for i in 1..5 {
            let expected = world_ramp(doubled.voxel_to_world([i as f64; 3]));
            assert!((f64::from(doubled.data()[[i, i, i]]) - expected).abs() < 1e-4);
        }
        assert_eq!(doubled.data()[[0, 0, 0]], source.data()[[0, 0, 0]]);
        assert_eq!(doubled.data()[[5, 5, 5]], source.data()[[2, 2, 2]]);
    }

    #[test]
    fn resample_keeps_the_physical_extent_and_reports_the_spacing_used() {
        // Extents 12.5, 4.9, 3.9 mm at 1 mm: 13, 5, 4 voxels of 12.5/13, 4.9/5, 3.9/4 mm.
        let mut affine = oblique_affine();
        for row in affine.iter_mut().take(3) {
            row[0] *= 1.3 / 1.5;
            row[1] *= 0.7 / 0.8;
            row[2] *= 2.5 / 2.0;
        }
        let source = ramp_volume([5, 7, 3], affine);
        assert_close(source.spacing(), [2.5, 0.7, 1.3]);
        let out = resample(&source, [1.0, 1.0, 1.0], Interpolation::Linear).unwrap();
        assert_eq!(out.shape(), [13, 5, 4]);
        assert_close(out.spacing(), [12.5 / 13.0, 4.9 / 5.0, 3.9 / 4.0]);
        assert_close(affine_spacing(out.affine()), out.spacing());
        assert_close(out.voxel_to_world([-0.5; 3]), source.voxel_to_world([-0.5; 3]));
        assert_close(out.voxel_to_world([12.5, 4.5, 3.5]), source.voxel_to_world([4.5, 6.5, 2.5]));
    }

    #[test]
    fn nearest_copies_labels_without_inventing_values() {
        let labels = Array3::from_shape_fn((2, 2, 3), |(z, y, x)| [0.0, 3.0, 7.0][(z + y + x) % 3]);
        let source = Volume::with_spacing(labels, [1.0; 3]).unwrap();
        // Doubling: new i reads old i/2 - 0.25, whose nearest voxel is i / 2.
        let doubled = resample_to_shape(&source, [4, 4, 6], Interpolation::Nearest).unwrap();
        for ((z, y, x), &v) in doubled.data().indexed_iter() {
            assert_eq!(v, source.data()[[z / 2, y / 2, x / 2]]);
        }
        let odd = resample_to_shape(&source, [3, 5, 2], Interpolation::Nearest).unwrap();
        assert!(odd.data().iter().all(|v| [0.0, 3.0, 7.0].contains(v)));
    }

    #[test]
    fn nearest_ties_go_to_the_higher_index() {
        // Halving 4 -> 2: new i reads old 2i + 0.5, exactly between two voxels.
        let source =
            Volume::with_spacing(Array3::from_shape_vec((1, 1, 4), vec![0.0, 1.0, 2.0, 3.0]).unwrap(), [1.0; 3])
                .unwrap();
        let halved = resample_to_shape(&source, [1, 1, 2], Interpolation::Nearest).unwrap();
        assert_eq!(halved.as_slice(), &[1.0, 3.0]);
    }

    #[test]
    fn resample_to_own_grid_copies_every_voxel() {
        let source = ramp_volume([3, 4, 5], oblique_affine());
        for interp in [Interpolation::Linear, Interpolation::Nearest] {
            assert_eq!(resample_to_grid(&source, &source.grid(), interp, -1.0).unwrap(), source);
        }
    }

    #[test]
    fn resample_to_a_rotated_grid_follows_world_positions_and_fills_outside() {
        let source = ramp_volume([6, 6, 6], spacing_affine([2.0, 2.0, 2.0]));
        // Target axes permuted against the source's, 1 mm voxels, origin at world (3, 3, 3).
        let affine = [[0.0, 0.0, 1.0, 3.0], [1.0, 0.0, 0.0, 3.0], [0.0, 1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]];
        let grid = Grid { shape: [10, 10, 10], spacing: [1.0; 3], affine };
        let out = resample_to_grid(&source, &grid, Interpolation::Linear, -99.0).unwrap();
        assert_eq!(out.grid(), grid);
        for ((z, y, x), &value) in out.data().indexed_iter() {
            let world = out.voxel_to_world([z as f64, y as f64, x as f64]);
            // The source's centres span 0..10 mm and its voxels -1..11 mm on each world axis.
            if world.iter().all(|&w| (0.0..=10.0).contains(&w)) {
                assert!((f64::from(value) - world_ramp(world)).abs() < 1e-4, "{world:?}");
            } else if world.iter().any(|&w| w > 11.0) {
                assert_eq!(value, -99.0, "{world:?} is outside the source");
            }
        }
        assert_eq!(out.data()[[8, 8, 8]], source.data()[[5, 5, 5]], "world (11, 11, 11): the source's outer corner");
        assert_eq!(out.data()[[9, 9, 9]], -99.0, "world (12, 12, 12): past the source");
    }

    #[test]
    fn crop_keeps_world_positions_and_rejects_boxes_outside() {
        let source = ramp_volume([4, 5, 6], oblique_affine());
        let region = Box3::new([1, 2, 3], [3, 5, 6]).unwrap();
        let cropped = crop(&source, &region).unwrap();
        assert_eq!(cropped.shape(), [2, 3, 3]);
        assert_eq!(cropped.data()[[1, 2, 0]], source.data()[[2, 4, 3]]);
        assert_close(cropped.voxel_to_world([0.0; 3]), source.voxel_to_world([1.0, 2.0, 3.0]));
        let outside = Box3::new([0, 0, 4], [1, 1, 7]).unwrap();
        assert_eq!(crop(&source, &outside).unwrap_err().to_string(), "box x 4..7 outside volume width 6");
    }

    #[test]
    fn pad_adds_values_and_keeps_world_positions() {
        let source = ramp_volume([2, 2, 2], oblique_affine());
        let padded = pad(&source, [1, 0, 2], [0, 1, 1], -1000.0);
        assert_eq!(padded.shape(), [3, 3, 5]);
        assert_eq!(padded.data()[[1, 0, 2]], source.data()[[0, 0, 0]]);
        assert_eq!(padded.data()[[0, 0, 2]], -1000.0);
        assert_eq!(padded.data()[[1, 2, 2]], -1000.0);
        assert_eq!(padded.data().iter().filter(|&&v| v == -1000.0).count(), 45 - 8);
        assert_close(padded.voxel_to_world([1.0, 0.0, 2.0]), source.voxel_to_world([0.0; 3]));
    }

    #[test]
    fn crop_or_pad_to_centres_and_round_trips() {
        // z: 5 -> 3 cuts 1 before, 1 after; y: 2 -> 5 pads 1 before, 2 after; x unchanged.
        let source = ramp_volume([5, 2, 4], oblique_affine());
        let fitted = crop_or_pad_to(&source, [3, 5, 4], 0.0).unwrap();
        assert_eq!(fitted.data()[[0, 1, 3]], source.data()[[1, 0, 3]]);
        assert_eq!(fitted.data()[[0, 0, 3]], 0.0);
        assert_eq!(fitted.data()[[0, 3, 3]], 0.0);
        assert_close(fitted.voxel_to_world([0.0, 1.0, 0.0]), source.voxel_to_world([1.0, 0.0, 0.0]));
        let back = crop_or_pad_to(&fitted, [5, 2, 4], 0.0).unwrap();
        assert_eq!(back.data().slice(s![1..4, .., ..]), source.data().slice(s![1..4, .., ..]));
        assert_close(back.voxel_to_world([0.0; 3]), source.voxel_to_world([0.0; 3]));
        assert!(crop_or_pad_to(&source, [3, 0, 4], 0.0).is_err());
    }

    #[test]
    fn crop_around_box_at_the_edge_pads_to_the_full_context() {
        let source = ramp_volume([4, 4, 4], spacing_affine([1.0; 3]));
        let vertebra = Box3::new([0, 1, 1], [2, 3, 3]).unwrap();
        let (crop, region) = crop_around_box(&source, &vertebra, [2, 1, 1], -1000.0).unwrap();
        assert_eq!(region, CropRegion { origin: [-2, 0, 0], shape: [6, 4, 4] });
        assert_eq!(crop.shape(), [6, 4, 4]);
        assert!(crop.data().slice(s![0..2, .., ..]).iter().all(|&v| v == -1000.0), "two padded slices");
        assert_eq!(crop.data()[[2, 0, 0]], source.data()[[0, 0, 0]]);
        assert_close(crop.voxel_to_world([2.0, 1.0, 1.0]), source.voxel_to_world([0.0, 1.0, 1.0]));
        assert_eq!(region.local_box(&vertebra), Some(Box3::new([2, 1, 1], [4, 3, 3]).unwrap()));
        let (in_source, in_crop) = region.overlap(source.shape()).unwrap();
        assert_eq!(
            (in_source, in_crop),
            (Box3::new([0; 3], [4; 3]).unwrap(), Box3::new([2, 0, 0], [6, 4, 4]).unwrap())
        );
        assert_eq!(region.local_slices(&SliceRange::new(1, 9).unwrap()), Some(SliceRange::new(3, 6).unwrap()));
        assert!(crop_around_box(&source, &Box3::new([3, 0, 0], [5, 1, 1]).unwrap(), [0; 3], 0.0).is_err());
    }

    #[test]
    fn local_box_keeps_the_part_inside_the_region() {
        let region = CropRegion { origin: [10, -3, 0], shape: [8, 8, 8] };
        let fracture = Box3::new([4, 2, 6], [12, 4, 20]).unwrap();
        assert_eq!(region.local_box(&fracture), Some(Box3::new([0, 5, 6], [2, 7, 8]).unwrap()));
        assert_eq!(region.local_box(&Box3::new([30, 0, 0], [31, 1, 1]).unwrap()), None);
    }

    #[test]
    fn masks_resample_through_nearest() {
        let grid = Volume::with_spacing(Array3::zeros((2, 2, 2)), [2.0; 3]).unwrap().grid();
        let mut mask = Mask::from_elem((2, 2, 2), false);
        mask[[1, 0, 1]] = true;
        let as_volume = mask_to_volume(&mask, &grid).unwrap();
        let fine = resample(&as_volume, [1.0; 3], Interpolation::Nearest).unwrap();
        let fine_mask = volume_to_mask(&fine, 0.5);
        assert_eq!(fine_mask.iter().filter(|&&v| v).count(), 8);
        assert!(fine_mask[[2, 0, 2]] && fine_mask[[3, 1, 3]]);
        let wrong = Grid { shape: [2, 2, 3], ..grid };
        assert_eq!(
            mask_to_volume(&mask, &wrong),
            Err(PreprocessError::ShapeMismatch { mask: [2, 2, 2], grid: [2, 2, 3] })
        );
    }
}
