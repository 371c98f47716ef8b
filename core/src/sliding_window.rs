//! Sliding-window inference geometry and stitching: where the patches of a region larger
//! than the model's patch go, and how their overlapping predictions become one map.
//!
//! Follows nnU-Net v2, `nnunetv2/inference/sliding_window_prediction.py` (MIC-DKFZ/nnUNet):
//!
//! - [`windows`] is its `compute_steps_for_sliding_window`: per axis,
//!   `ceil((image - patch) / (patch * step)) + 1` windows spread evenly from 0 to
//!   `image - patch` (starts rounded half to even, as `np.round`), so the first window starts
//!   at the image's start, the last ends at its end, and neighbours are at most `patch * step`
//!   apart. Here the step is written as an overlap: `overlap = 1 - tile_step_size`, nnU-Net's
//!   default 0.5 either way.
//! - [`gaussian_importance`] is its `compute_gaussian`: a unit impulse at voxel `patch / 2`
//!   (integer division: for an even size, the voxel just past the middle, so there the map
//!   is symmetric about that voxel, not about the patch's middle), blurred by scipy's `gaussian_filter` with
//!   `sigma = patch * sigma_fraction` per axis (nnU-Net: 1/8), zero outside the patch and the
//!   kernel cut at `int(4 sigma + 0.5)` voxels (with 1/8 the cut lies at or past the patch's
//!   edge; a smaller fraction leaves zeros near the edges), scaled to a maximum of 1, zeros raised to the
//!   smallest non-zero value so that every voxel a window covers gets some weight. Written
//!   here in closed form (`exp(-d^2 / (2 sigma^2))` per axis, multiplied), which is what the
//!   filter of an impulse is once scaled to a maximum of 1.
//! - [`Stitcher`] accumulates `prediction * importance` and `importance` over the windows
//!   and divides, as `_internal_predict_sliding_window_return_logits` in nnU-Net's
//!   `nnunetv2/inference/predict_from_raw_data.py` does. nnU-Net scales the map to a maximum
//!   of 10 there for its float16 sums; the scale cancels in the division, and here the sums
//!   are `f32` with a maximum of 1.
//!
//! Unlike nnU-Net, nothing here pads: an image smaller than the patch on an axis is an error
//! naming the axis; the caller pads it to the patch first (e.g.
//! [`crop_or_pad_to`](crate::preprocess::crop_or_pad_to)) and crops the stitched map back.
//! Everything is in voxels, `[z, y, x]`, with half-open windows ([`Box3`]).

use ndarray::{Array3, ArrayView3, Zip, s};

use crate::geometry::{Box3, GeometryError};

/// Array axis names in `[z, y, x]` order, for error messages.
const AXIS_NAMES: [&str; 3] = ["z", "y", "x"];

/// scipy's `gaussian_filter` cuts its kernel at `int(TRUNCATE * sigma + 0.5)` voxels.
const TRUNCATE: f64 = 4.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SlidingWindowError {
    #[error("window overlap must be in [0, 1) of the patch, got {0}")]
    BadOverlap(f64),
    #[error("Gaussian sigma must be a finite positive fraction of the patch, got {0}")]
    BadSigmaFraction(f64),
    #[error("patch [z, y, x] = {0:?} has an empty axis")]
    EmptyPatch([usize; 3]),
    #[error("image {axis} size {image} is smaller than the patch's {patch}: pad the image to the patch first")]
    ImageSmallerThanPatch { axis: &'static str, image: usize, patch: usize },
    #[error("window {window} is not the size of the patch [z, y, x] = {patch:?}")]
    WindowShape { window: Box3, patch: [usize; 3] },
    #[error("prediction shape [z, y, x] = {prediction:?} differs from the patch's {patch:?}")]
    PredictionShape { prediction: [usize; 3], patch: [usize; 3] },
    #[error(transparent)]
    Geometry(#[from] GeometryError),
}

/// nnU-Net's Gaussian importance map of a `patch` (`[z, y, x]` voxels): 1 at voxel
/// `patch / 2`, falling as a Gaussian of `sigma = patch * sigma_fraction` voxels per axis,
/// every value positive. See the module doc for where it departs from a plain Gaussian.
pub fn gaussian_importance(patch: [usize; 3], sigma_fraction: f64) -> Result<Array3<f32>, SlidingWindowError> {
    if patch.contains(&0) {
        return Err(SlidingWindowError::EmptyPatch(patch));
    }
    if !(sigma_fraction.is_finite() && sigma_fraction > 0.0) {
        return Err(SlidingWindowError::BadSigmaFraction(sigma_fraction));
    }
    let profiles: [Vec<f64>; 3] = std::array::from_fn(|a| gaussian_profile(patch[a], sigma_fraction));
    let mut importance =
        Array3::from_shape_fn(patch, |(z, y, x)| (profiles[0][z] * profiles[1][y] * profiles[2][x]) as f32);
    // A zero weight would leave a voxel covered only there as 0 / 0 when stitching.
    let smallest = importance.iter().copied().filter(|&w| w > 0.0).fold(1.0f32, f32::min);
    importance.mapv_inplace(|w| if w > 0.0 { w } else { smallest });
    Ok(importance)
}

/// One axis of the importance map: `exp(-d^2 / (2 sigma^2))` at distance `d` from voxel
/// `size / 2`, zero beyond scipy's kernel radius.
fn gaussian_profile(size: usize, sigma_fraction: f64) -> Vec<f64> {
    let sigma = size as f64 * sigma_fraction;
    let radius = (TRUNCATE * sigma + 0.5).floor() as usize;
    let centre = size / 2;
    (0..size)
        .map(|i| {
            let d = i.abs_diff(centre);
            // d / sigma, not d^2 / sigma^2: a tiny sigma squared would round to 0 and make 0 / 0.
            let z = d as f64 / sigma;
            if d <= radius { (-0.5 * z * z).exp() } else { 0.0 }
        })
        .collect()
}

/// The windows that tile a region of `shape` with patches of `patch` (both `[z, y, x]`
/// voxels), neighbours overlapping by about `overlap` of the patch (nnU-Net: 0.5), in C
/// order (x fastest). Every voxel is in at least one window; each window lies inside the
/// region and has the patch's shape.
pub fn windows(shape: [usize; 3], patch: [usize; 3], overlap: f64) -> Result<Vec<Box3>, SlidingWindowError> {
    if !(0.0..1.0).contains(&overlap) {
        return Err(SlidingWindowError::BadOverlap(overlap));
    }
    check_patch_fits(shape, patch)?;
    let [zs, ys, xs] = std::array::from_fn(|a| window_starts(shape[a], patch[a], 1.0 - overlap));
    let mut boxes = Vec::with_capacity(zs.len() * ys.len() * xs.len());
    for &z in &zs {
        for &y in &ys {
            for &x in &xs {
                let min = [z, y, x];
                let max = std::array::from_fn(|a| min[a] + patch[a]);
                boxes.push(Box3::new(min, max).expect("a non-empty patch makes a non-empty window"));
            }
        }
    }
    Ok(boxes)
}

/// nnU-Net's window starts along one axis (`image >= patch >= 1`, `0 < step_fraction <= 1`).
/// When the step is under a voxel (a patch of a voxel or two), rounding repeats a start;
/// repeats are dropped, as they would predict the same window twice.
fn window_starts(image: usize, patch: usize, step_fraction: f64) -> Vec<usize> {
    let target_step = patch as f64 * step_fraction;
    let last_start = image - patch;
    let count = (last_start as f64 / target_step).ceil() as usize + 1;
    let step = if count > 1 { last_start as f64 / (count - 1) as f64 } else { 0.0 };
    let mut starts: Vec<usize> = (0..count).map(|i| (step * i as f64).round_ties_even() as usize).collect();
    starts.dedup();
    starts
}

/// Fails unless the patch has no empty axis and fits inside `shape` on every axis.
fn check_patch_fits(shape: [usize; 3], patch: [usize; 3]) -> Result<(), SlidingWindowError> {
    if patch.contains(&0) {
        return Err(SlidingWindowError::EmptyPatch(patch));
    }
    match (0..3).find(|&a| shape[a] < patch[a]) {
        Some(a) => {
            Err(SlidingWindowError::ImageSmallerThanPatch { axis: AXIS_NAMES[a], image: shape[a], patch: patch[a] })
        }
        None => Ok(()),
    }
}

/// Stitches patch predictions into one map of a region, each weighted by the Gaussian
/// importance map so that a voxel trusts the windows it sits near the centre of.
///
/// Holds two `f32` arrays of the region's shape (weighted sum and total weight) and one of
/// the patch's.
#[derive(Debug, Clone)]
pub struct Stitcher {
    sum: Array3<f32>,
    weight: Array3<f32>,
    importance: Array3<f32>,
}

impl Stitcher {
    /// A stitcher for a region of `shape` and windows of `patch` (both `[z, y, x]` voxels),
    /// weighting with [`gaussian_importance`]`(patch, sigma_fraction)` (nnU-Net: 1/8).
    pub fn new(shape: [usize; 3], patch: [usize; 3], sigma_fraction: f64) -> Result<Self, SlidingWindowError> {
        check_patch_fits(shape, patch)?;
        Ok(Self {
            sum: Array3::zeros(shape),
            weight: Array3::zeros(shape),
            importance: gaussian_importance(patch, sigma_fraction)?,
        })
    }

    /// Adds the prediction of the patch at `window` (which must have the patch's shape and
    /// lie inside the region); `prediction` is `[z, y, x]` of the patch's shape.
    pub fn add(&mut self, window: &Box3, prediction: ArrayView3<'_, f32>) -> Result<(), SlidingWindowError> {
        let patch = dims(&self.importance.view());
        if window.shape() != patch {
            return Err(SlidingWindowError::WindowShape { window: *window, patch });
        }
        window.check_inside(dims(&self.sum.view()))?;
        if dims(&prediction) != patch {
            return Err(SlidingWindowError::PredictionShape { prediction: dims(&prediction), patch });
        }
        let [z, y, x] = window.ranges();
        Zip::from(self.sum.slice_mut(s![z.clone(), y.clone(), x.clone()]))
            .and(self.weight.slice_mut(s![z, y, x]))
            .and(&prediction)
            .and(&self.importance)
            .for_each(|sum, weight, &value, &importance| {
                *sum += value * importance;
                *weight += importance;
            });
        Ok(())
    }

    /// The stitched map, `[z, y, x]` of the region's shape: the importance-weighted mean of
    /// the predictions covering each voxel, 0 where no window was added.
    pub fn finish(self) -> Array3<f32> {
        Zip::from(&self.sum)
            .and(&self.weight)
            .map_collect(|&sum, &weight| if weight > 0.0 { sum / weight } else { 0.0 })
    }
}

fn dims(array: &ArrayView3<'_, f32>) -> [usize; 3] {
    let (z, y, x) = array.dim();
    [z, y, x]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(image: usize, patch: usize, overlap: f64) -> Vec<usize> {
        window_starts(image, patch, 1.0 - overlap)
    }

    #[test]
    fn window_starts_follow_nnunet_formula() {
        // image 10, patch 4, step 4 * 0.5 = 2: ceil((10 - 4) / 2) + 1 = 4 windows,
        // actual step (10 - 4) / 3 = 2 -> 0, 2, 4, 6.
        assert_eq!(starts(10, 4, 0.5), vec![0, 2, 4, 6]);
        // nnU-Net's own example: image 110, patch 64: ceil(46 / 32) + 1 = 3 windows, step 23.
        assert_eq!(starts(110, 64, 0.5), vec![0, 23, 46]);
        // Overlap 0, image 13, patch 4: ceil(9 / 4) + 1 = 4 windows, step 9 / 3 = 3.
        assert_eq!(starts(13, 4, 0.0), vec![0, 3, 6, 9]);
    }

    #[test]
    fn window_starts_round_half_to_even_as_numpy() {
        // image 11, patch 6: ceil(5 / 3) + 1 = 3 windows, step 5 / 2 = 2.5: np.round(2.5) = 2.
        assert_eq!(starts(11, 6, 0.5), vec![0, 2, 5]);
    }

    #[test]
    fn image_the_size_of_the_patch_is_one_window() {
        assert_eq!(starts(7, 7, 0.5), vec![0]);
        assert_eq!(starts(1, 1, 0.0), vec![0]);
    }

    #[test]
    fn windows_span_the_image_with_steps_at_most_the_target() {
        for (image, patch, overlap) in [(10, 4, 0.5), (11, 4, 0.5), (100, 64, 0.5), (37, 8, 0.25), (9, 3, 0.0)] {
            let found = starts(image, patch, overlap);
            assert_eq!(found[0], 0, "{image} {patch} {overlap}");
            assert_eq!(found.last().unwrap() + patch, image, "last window ends at the image end: {found:?}");
            let target = patch as f64 * (1.0 - overlap);
            assert!(found.windows(2).all(|w| w[0] < w[1] && (w[1] - w[0]) as f64 <= target), "{found:?}");
        }
    }

    #[test]
    fn sub_voxel_steps_drop_repeated_starts() {
        // patch 1, step 0.5: ceil(3 / 0.5) + 1 = 7 windows at 0, 0.5, .. 3, rounding to
        // 0, 0, 1, 2, 2, 2, 3.
        assert_eq!(starts(4, 1, 0.5), vec![0, 1, 2, 3]);
    }

    #[test]
    fn windows_are_in_c_order_with_the_patch_shape() {
        let boxes = windows([6, 1, 6], [4, 1, 4], 0.5).unwrap();
        let mins: Vec<_> = boxes.iter().map(Box3::min).collect();
        assert_eq!(mins, vec![[0, 0, 0], [0, 0, 2], [2, 0, 0], [2, 0, 2]]);
        assert!(boxes.iter().all(|b| b.shape() == [4, 1, 4] && b.fits([6, 1, 6])));
    }

    #[test]
    fn bad_overlap_is_an_error() {
        for overlap in [1.0, -0.1, f64::NAN] {
            assert!(matches!(windows([8; 3], [4; 3], overlap), Err(SlidingWindowError::BadOverlap(_))), "{overlap}");
        }
    }

    #[test]
    fn image_smaller_than_patch_names_the_axis() {
        let err = windows([8, 3, 8], [4, 4, 4], 0.5).unwrap_err();
        assert_eq!(err.to_string(), "image y size 3 is smaller than the patch's 4: pad the image to the patch first");
        assert_eq!(windows([8; 3], [4, 0, 4], 0.5), Err(SlidingWindowError::EmptyPatch([4, 0, 4])));
    }

    #[test]
    fn importance_of_an_even_patch_peaks_just_past_the_middle() {
        // x: patch 4, sigma 4 / 8 = 0.5, impulse at 4 / 2 = 2: exp(-d^2 / 0.5) for d = 2, 1, 0, 1.
        // z and y: patch 1, only the impulse itself, 1.
        let importance = gaussian_importance([1, 1, 4], 1.0 / 8.0).unwrap();
        let expected = [(-8.0f32).exp(), (-2.0f32).exp(), 1.0, (-2.0f32).exp()];
        for (x, want) in expected.into_iter().enumerate() {
            assert!((importance[[0, 0, x]] - want).abs() < 1e-7, "x {x}: {} vs {want}", importance[[0, 0, x]]);
        }
    }

    #[test]
    fn importance_of_an_odd_patch_is_symmetric_positive_with_max_one_at_the_centre() {
        let importance = gaussian_importance([5, 3, 7], 1.0 / 8.0).unwrap();
        assert_eq!(importance[[2, 1, 3]], 1.0);
        assert!(importance.iter().all(|&w| w > 0.0 && w <= 1.0));
        for axis in 0..3 {
            let mut flipped = importance.clone();
            flipped.invert_axis(ndarray::Axis(axis));
            assert_eq!(flipped, importance, "mirror symmetric along axis {axis}");
        }
        // Separable: at [0, 0, 0], distances 2, 1, 3 with sigmas 5/8, 3/8, 7/8.
        let exponent: f64 =
            [(2.0f64, 5.0), (1.0, 3.0), (3.0, 7.0)].iter().map(|(d, n)| (d * 8.0 / n).powi(2) / 2.0).sum();
        assert!((importance[[0, 0, 0]] as f64 - (-exponent).exp()).abs() < 1e-9);
    }

    #[test]
    fn importance_beyond_the_kernel_radius_takes_the_smallest_weight() {
        // x: patch 9, sigma 9 / 16 = 0.5625, radius int(4 * 0.5625 + 0.5) = 2 around voxel 4:
        // voxels 0, 1, 7, 8 are zero after the filter and are raised to the value at d = 2.
        let importance = gaussian_importance([1, 1, 9], 1.0 / 16.0).unwrap();
        let at_radius = importance[[0, 0, 2]];
        assert!((at_radius as f64 - (-0.5 * (2.0f64 / 0.5625).powi(2)).exp()).abs() < 1e-9);
        for x in [0, 1, 7, 8] {
            assert_eq!(importance[[0, 0, x]], at_radius, "x {x}");
        }
    }

    #[test]
    fn bad_sigma_fraction_is_an_error() {
        for sigma_fraction in [0.0, -0.125, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                gaussian_importance([4; 3], sigma_fraction),
                Err(SlidingWindowError::BadSigmaFraction(_))
            ));
        }
        assert!(matches!(Stitcher::new([8; 3], [4; 3], 0.0), Err(SlidingWindowError::BadSigmaFraction(_))));
    }

    #[test]
    fn stitching_a_constant_gives_the_constant() {
        let (shape, patch) = ([5, 7, 6], [3, 4, 4]);
        let mut stitcher = Stitcher::new(shape, patch, 1.0 / 8.0).unwrap();
        let prediction = Array3::from_elem(patch, 0.7f32);
        for window in windows(shape, patch, 0.5).unwrap() {
            stitcher.add(&window, prediction.view()).unwrap();
        }
        let stitched = stitcher.finish();
        assert_eq!(stitched.dim(), (5, 7, 6));
        assert!(stitched.iter().all(|&v| (v - 0.7).abs() < 1e-6), "{stitched:?}");
    }

    #[test]
    fn overlap_leans_to_the_window_whose_centre_is_nearer() {
        // x: patch 5, sigma 5 / 8 = 0.625, centre at local 2. Window A at x 0..5 predicts 1
        // (centre x 2), window B at x 1..6 predicts 3 (centre x 3). Voxel x 3 is 1 from A's
        // centre, weight exp(-0.5 / 0.625^2) = exp(-1.28) = 0.27804, and 0 from B's, weight 1:
        // (1 * 0.27804 + 3 * 1) / (0.27804 + 1) = 2.56490.
        let mut stitcher = Stitcher::new([1, 1, 6], [1, 1, 5], 1.0 / 8.0).unwrap();
        let window_a = Box3::new([0, 0, 0], [1, 1, 5]).unwrap();
        let window_b = Box3::new([0, 0, 1], [1, 1, 6]).unwrap();
        stitcher.add(&window_a, Array3::from_elem([1, 1, 5], 1.0f32).view()).unwrap();
        stitcher.add(&window_b, Array3::from_elem([1, 1, 5], 3.0f32).view()).unwrap();
        let stitched = stitcher.finish();
        let weight_a = (-1.28f32).exp();
        assert!((stitched[[0, 0, 3]] - (weight_a + 3.0) / (weight_a + 1.0)).abs() < 1e-6);
        assert!((stitched[[0, 0, 3]] - 2.5649).abs() < 1e-5);
        assert_eq!(stitched[[0, 0, 0]], 1.0, "only A covers x 0");
        assert_eq!(stitched[[0, 0, 5]], 3.0, "only B covers x 5");
    }

    #[test]
    fn voxels_no_window_covers_are_zero() {
        let mut stitcher = Stitcher::new([1, 1, 8], [1, 1, 5], 1.0 / 8.0).unwrap();
        let window = Box3::new([0, 0, 0], [1, 1, 5]).unwrap();
        stitcher.add(&window, Array3::from_elem([1, 1, 5], 0.5f32).view()).unwrap();
        let stitched = stitcher.finish();
        assert!(stitched.slice(s![.., .., ..5]).iter().all(|&v| v == 0.5));
        assert!(stitched.slice(s![.., .., 5..]).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn prediction_of_another_shape_is_an_error() {
        let mut stitcher = Stitcher::new([4, 4, 6], [2, 2, 4], 1.0 / 8.0).unwrap();
        let window = Box3::new([0, 0, 0], [2, 2, 4]).unwrap();
        let err = stitcher.add(&window, Array3::zeros([2, 2, 3]).view()).unwrap_err();
        assert_eq!(err.to_string(), "prediction shape [z, y, x] = [2, 2, 3] differs from the patch's [2, 2, 4]");
    }

    #[test]
    fn window_outside_the_region_is_an_error() {
        let mut stitcher = Stitcher::new([4, 4, 6], [2, 2, 4], 1.0 / 8.0).unwrap();
        let outside = Box3::new([0, 0, 4], [2, 2, 8]).unwrap();
        let err = stitcher.add(&outside, Array3::zeros([2, 2, 4]).view()).unwrap_err();
        assert_eq!(err.to_string(), "box x 4..8 outside volume width 6");
    }

    #[test]
    fn window_of_another_size_is_an_error() {
        let mut stitcher = Stitcher::new([4, 4, 6], [2, 2, 4], 1.0 / 8.0).unwrap();
        let small = Box3::new([0, 0, 0], [2, 2, 3]).unwrap();
        let err = stitcher.add(&small, Array3::zeros([2, 2, 3]).view()).unwrap_err();
        assert_eq!(err.to_string(), "window z 0..2, y 0..2, x 0..3 is not the size of the patch [z, y, x] = [2, 2, 4]");
    }
}
