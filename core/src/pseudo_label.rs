//! The pseudo-label step of the flywheel: a draft fracture mask from a probability map,
//! `(P >= threshold)`, kept inside the fracture boxes where a case has them, without its small
//! components, with the figures a clinician's queue is sorted by (voxels, mm^3, confidence).
//!
//! The server and the flywheel both call [`pseudo_label`] and [`write_pseudo_label`]: a
//! draft means the same thing wherever it was made.

use std::path::Path;

use ndarray::{Zip, s};
use serde::{Deserialize, Serialize};

use crate::geometry::{Box3, GeometryError, Mask, connected_components};
use crate::nifti_io::{NiftiError, write_mask};
use crate::volume::{Grid, Volume};

/// How a probability map becomes a draft mask.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PseudoLabelConfig {
    /// A voxel is drafted when `P >= threshold` (the rule of `metrics::Confusion`); in
    /// `(0, 1]`. Default 0.5: the sigmoid's even odds.
    pub threshold: f32,
    /// Components (26-connected) of fewer voxels are dropped as noise; 0 or 1 keep all.
    /// Default 10: 10 mm^3 on the 1 mm crops (80 mm^3 on the 2 mm quick ones), far below a
    /// vertebral fracture yet above the specks a probability map fires on.
    pub min_component_voxels: usize,
}

impl Default for PseudoLabelConfig {
    fn default() -> Self {
        Self { threshold: 0.5, min_component_voxels: 10 }
    }
}

impl PseudoLabelConfig {
    /// Checks that the threshold is finite and in `(0, 1]` (at 0 every voxel would be drafted).
    pub fn validate(&self) -> Result<(), PseudoLabelError> {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(PseudoLabelError::Threshold(self.threshold));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PseudoLabelError {
    #[error("pseudo-label threshold must be finite and in (0, 1], got {0}")]
    Threshold(f32),
    /// `index` counts from 0 in the caller's list of boxes; `source` names the axis.
    #[error("fracture box #{index} outside volume [z, y, x] = {shape:?}: {source}")]
    BoxOutside { index: usize, shape: [usize; 3], source: GeometryError },
    #[error("probability map has {count} non-finite voxels (NaN or infinite), first at [z, y, x] = {first:?}: {value}")]
    NonFiniteProbability { count: usize, first: [usize; 3], value: f32 },
    #[error("probability map has {count} voxels outside [0, 1], first at [z, y, x] = {first:?}: {value}")]
    ProbabilityOutOfRange { count: usize, first: [usize; 3], value: f32 },
}

/// A draft mask and its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoLabel {
    /// On the probability map's grid, `[z, y, x]`.
    pub mask: Mask,
    /// Voxels inside `mask`.
    pub voxels: usize,
    /// `voxels` times the voxel volume, mm^3.
    pub volume_mm3: f64,
    /// Mean `P` over `mask`, in `[threshold, 1]`; 0 for an empty mask (nothing to trust).
    pub confidence: f64,
    /// 26-connected components kept in `mask`.
    pub components: usize,
    /// Components of the thresholded, boxed draft dropped for being small.
    pub removed_components: usize,
}

/// The draft mask of `probability` (`P` in `[0, 1]`): `P >= threshold` inside the union of
/// `fracture_boxes` (half-open, `[z, y, x]`, on the map's grid; no box: the whole volume),
/// then its 26-connected components (face, edge or corner neighbours, see
/// [`connected_components`]) of fewer than `min_component_voxels` removed.
///
/// Fails on an invalid `config`, a box reaching outside the volume, or a probability that is
/// not finite or not in `[0, 1]` (a map that is not a probability is a bug upstream).
pub fn pseudo_label(
    probability: &Volume,
    fracture_boxes: &[Box3],
    config: &PseudoLabelConfig,
) -> Result<PseudoLabel, PseudoLabelError> {
    config.validate()?;
    let shape = probability.shape();
    for (index, fracture_box) in fracture_boxes.iter().enumerate() {
        fracture_box.check_inside(shape).map_err(|source| PseudoLabelError::BoxOutside { index, shape, source })?;
    }
    check_probabilities(probability)?;

    let mut draft = Mask::from_elem(shape, fracture_boxes.is_empty());
    for fracture_box in fracture_boxes {
        let [z, y, x] = fracture_box.ranges();
        draft.slice_mut(s![z, y, x]).fill(true);
    }
    Zip::from(&mut draft).and(probability.data()).for_each(|inside, &p| *inside &= p >= config.threshold);

    // Labelled here rather than through `remove_small_components`, to count what goes.
    let found = connected_components(&draft);
    let kept = |label: u32| label != 0 && found.sizes[label as usize - 1] >= config.min_component_voxels;
    let mask = found.labels.mapv(kept);
    let components = found.sizes.iter().filter(|&&size| size >= config.min_component_voxels).count();

    let (voxels, probability_sum) = Zip::from(&mask)
        .and(probability.data())
        .fold((0usize, 0.0f64), |(n, sum), &inside, &p| if inside { (n + 1, sum + f64::from(p)) } else { (n, sum) });
    let voxel_mm3: f64 = probability.spacing().iter().product();
    Ok(PseudoLabel {
        mask,
        voxels,
        volume_mm3: voxels as f64 * voxel_mm3,
        confidence: if voxels == 0 { 0.0 } else { probability_sum / voxels as f64 },
        components,
        removed_components: found.count() - components,
    })
}

/// Writes `label`'s mask as a `uint8` 0/1 NIfTI on `grid` (the source image's: same shape,
/// same affine), gzip-compressed when `path` ends in `.gz`. Atomic through
/// [`write_mask`]: a temporary file in the same folder, then a rename, so a failed write leaves
/// no half-written file.
pub fn write_pseudo_label(path: &Path, label: &PseudoLabel, grid: &Grid) -> Result<(), NiftiError> {
    write_mask(path, &label.mask, grid)
}

/// Every voxel finite and in `[0, 1]`; the error counts the offenders and names the first
/// (C order), non-finite ones before out-of-range ones.
fn check_probabilities(probability: &Volume) -> Result<(), PseudoLabelError> {
    let mut non_finite = (0, None);
    let mut out_of_range = (0, None);
    for ((z, y, x), &p) in probability.data().indexed_iter() {
        let offence = if !p.is_finite() {
            &mut non_finite
        } else if !(0.0..=1.0).contains(&p) {
            &mut out_of_range
        } else {
            continue;
        };
        offence.0 += 1;
        offence.1.get_or_insert(([z, y, x], p));
    }
    if let (count, Some((first, value))) = non_finite {
        return Err(PseudoLabelError::NonFiniteProbability { count, first, value });
    }
    if let (count, Some((first, value))) = out_of_range {
        return Err(PseudoLabelError::ProbabilityOutOfRange { count, first, value });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti_io::read_volume;
    use ndarray::Array3;

    const SHAPE: [usize; 3] = [6, 6, 6];

    /// A 6^3 map of 0.1 with `value` at each of `voxels`.
    fn map_with(voxels: &[[usize; 3]], value: f32) -> Array3<f32> {
        let mut data = Array3::from_elem(SHAPE, 0.1);
        for &v in voxels {
            data[v] = value;
        }
        data
    }

    fn volume(data: Array3<f32>) -> Volume {
        Volume::with_spacing(data, [1.0; 3]).unwrap()
    }

    /// The 12 voxels of a 2x2x3 blob at `[1..3, 1..3, 1..4]`.
    fn blob() -> Vec<[usize; 3]> {
        (0..12).map(|i| [1 + i / 6, 1 + i / 3 % 2, 1 + i % 3]).collect()
    }

    fn keep_all() -> PseudoLabelConfig {
        PseudoLabelConfig { min_component_voxels: 1, ..PseudoLabelConfig::default() }
    }

    #[test]
    fn default_config_is_valid() {
        let config = PseudoLabelConfig::default();
        assert_eq!((config.threshold, config.min_component_voxels), (0.5, 10));
        assert_eq!(config.validate(), Ok(()));
        let parsed: PseudoLabelConfig = serde_json::from_str(r#"{"threshold": 0.7}"#).unwrap();
        assert_eq!(parsed, PseudoLabelConfig { threshold: 0.7, min_component_voxels: 10 });
    }

    #[test]
    fn threshold_keeps_voxels_at_or_above_it() {
        let mut data = map_with(&[[0, 0, 0]], 0.5);
        data[[5, 5, 5]] = 0.49;
        data[[3, 3, 3]] = 1.0;
        let label = pseudo_label(&volume(data), &[], &keep_all()).unwrap();
        assert!(label.mask[[0, 0, 0]] && label.mask[[3, 3, 3]], "P == threshold is drafted");
        assert!(!label.mask[[5, 5, 5]]);
        assert_eq!((label.voxels, label.components, label.removed_components), (2, 2, 0));
    }

    #[test]
    fn no_box_means_the_whole_volume() {
        let corners = [[0, 0, 0], [5, 5, 5], [0, 5, 0]];
        let label = pseudo_label(&volume(map_with(&corners, 0.9)), &[], &keep_all()).unwrap();
        assert_eq!(label.voxels, 3);
        assert!(corners.iter().all(|&v| label.mask[v]));
    }

    #[test]
    fn voxels_outside_every_box_are_dropped() {
        let hot = [[0, 0, 0], [1, 1, 1], [2, 2, 2], [4, 4, 4], [5, 5, 5]];
        let boxes = [Box3::new([0, 0, 0], [2, 2, 2]).unwrap(), Box3::new([4, 4, 4], [5, 5, 5]).unwrap()];
        let label = pseudo_label(&volume(map_with(&hot, 0.9)), &boxes, &keep_all()).unwrap();
        let drafted: Vec<_> = label.mask.indexed_iter().filter(|(_, inside)| **inside).map(|(v, _)| v).collect();
        assert_eq!(drafted, [(0, 0, 0), (1, 1, 1), (4, 4, 4)], "[2, 2, 2] and [5, 5, 5] lie past the boxes' max");
    }

    #[test]
    fn small_components_are_removed() {
        let mut hot = blob();
        hot.push([5, 5, 5]);
        let label = pseudo_label(&volume(map_with(&hot, 0.9)), &[], &PseudoLabelConfig::default()).unwrap();
        assert_eq!((label.voxels, label.components, label.removed_components), (12, 1, 1));
        assert!(!label.mask[[5, 5, 5]], "the 1-voxel island goes");
        assert!(blob().into_iter().all(|v| label.mask[v]), "the 12-voxel blob stays");
    }

    #[test]
    fn confidence_is_the_mean_probability_inside_the_mask() {
        // The blob at 0.6 but for two voxels at 0.9: (10 * 0.6 + 2 * 0.9) / 12 = 7.8 / 12 = 0.65.
        let mut data = map_with(&blob(), 0.6);
        data[[1, 1, 1]] = 0.9;
        data[[2, 2, 3]] = 0.9;
        let label = pseudo_label(&volume(data), &[], &PseudoLabelConfig::default()).unwrap();
        assert_eq!(label.voxels, 12);
        assert!((label.confidence - 0.65).abs() < 1e-6, "{}", label.confidence);
    }

    #[test]
    fn empty_draft_has_zero_confidence() {
        let label = pseudo_label(&volume(map_with(&[], 0.0)), &[], &PseudoLabelConfig::default()).unwrap();
        assert_eq!((label.voxels, label.volume_mm3, label.confidence, label.components), (0, 0.0, 0.0, 0));
    }

    #[test]
    fn volume_follows_anisotropic_spacing() {
        // 12 voxels of 3 * 0.5 * 0.25 = 0.375 mm^3: 4.5 mm^3.
        let probability = Volume::with_spacing(map_with(&blob(), 0.9), [3.0, 0.5, 0.25]).unwrap();
        let label = pseudo_label(&probability, &[], &PseudoLabelConfig::default()).unwrap();
        assert_eq!(label.volume_mm3, 4.5);
    }

    #[test]
    fn box_outside_the_volume_names_box_axis_and_shape() {
        let inside = Box3::new([0, 0, 0], [2, 2, 2]).unwrap();
        let outside = Box3::new([1, 4, 0], [3, 8, 6]).unwrap();
        let error = pseudo_label(&volume(map_with(&[], 0.0)), &[inside, outside], &keep_all()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "fracture box #1 outside volume [z, y, x] = [6, 6, 6]: box y 4..8 outside volume height 6"
        );
    }

    #[test]
    fn non_finite_probabilities_are_counted_and_located() {
        let mut data = map_with(&[[2, 3, 4]], f32::NAN);
        data[[4, 0, 0]] = f32::INFINITY;
        data[[5, 0, 0]] = 7.0;
        let error = pseudo_label(&volume(data), &[], &keep_all()).unwrap_err();
        assert!(
            matches!(error, PseudoLabelError::NonFiniteProbability { count: 2, first: [2, 3, 4], value } if value.is_nan()),
            "{error}"
        );
    }

    #[test]
    fn probabilities_outside_zero_one_are_counted_and_located() {
        let mut data = map_with(&[[1, 0, 5]], -0.5);
        data[[3, 3, 3]] = 1.5;
        let error = pseudo_label(&volume(data), &[], &keep_all()).unwrap_err();
        assert_eq!(error, PseudoLabelError::ProbabilityOutOfRange { count: 2, first: [1, 0, 5], value: -0.5 });
        assert_eq!(
            error.to_string(),
            "probability map has 2 voxels outside [0, 1], first at [z, y, x] = [1, 0, 5]: -0.5"
        );
    }

    #[test]
    fn threshold_outside_zero_one_is_refused() {
        for threshold in [0.0, -0.1, 1.5, f32::NAN] {
            let config = PseudoLabelConfig { threshold, ..PseudoLabelConfig::default() };
            let error = pseudo_label(&volume(map_with(&[], 0.0)), &[], &config).unwrap_err();
            assert!(matches!(error, PseudoLabelError::Threshold(_)), "{threshold}: {error}");
        }
        assert_eq!(PseudoLabelConfig { threshold: 1.0, ..PseudoLabelConfig::default() }.validate(), Ok(()));
    }

    #[test]
    fn written_mask_reads_back_on_the_source_grid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("case-017.nii.gz");
        let mut affine = crate::volume::spacing_affine([3.0, 0.5, 0.25]);
        affine[0][3] = -40.25;
        affine[2][3] = 112.5;
        let probability = Volume::new(map_with(&blob(), 0.9), [3.0, 0.5, 0.25], affine).unwrap();
        let label = pseudo_label(&probability, &[], &PseudoLabelConfig::default()).unwrap();
        write_pseudo_label(&path, &label, &probability.grid()).unwrap();
        let read = read_volume(&path).unwrap();
        assert_eq!(read.affine(), &affine, "the affine's values are exact in f32");
        assert_eq!(read.data(), &label.mask.mapv(|inside| f32::from(u8::from(inside))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-folder").join("case.nii.gz");
        let label = pseudo_label(&volume(map_with(&blob(), 0.9)), &[], &PseudoLabelConfig::default()).unwrap();
        let error = write_pseudo_label(&path, &label, &volume(map_with(&[], 0.0)).grid()).unwrap_err();
        assert!(matches!(error, NiftiError::Write { .. }), "{error}");
        let other_grid = Volume::with_spacing(Array3::zeros((2, 2, 2)), [1.0; 3]).unwrap().grid();
        let error = write_pseudo_label(&dir.path().join("case.nii.gz"), &label, &other_grid).unwrap_err();
        assert!(matches!(error, NiftiError::ShapeMismatch { .. }), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
