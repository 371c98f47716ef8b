//! The pix2pix-LSTM scored against the true masks at three scales, every threshold chosen
//! beforehand on the training and validation folds (`weak::eval::choose_threshold`, the
//! same rule as the weak U-Net's):
//! - 2D, per axial slice of a crop: the mean Dice, IoU, precision and recall over slices
//!   whose truth has fracture, and how many fracture-free slices get any voxel predicted;
//! - 3D per vertebra: the crop maps (slices stacked) scored exactly as the weak U-Net is
//!   (`weak::eval::score_maps`: voxels pooled over crops, PR-AUC, vertebra AUC), so the two
//!   models' numbers sit side by side;
//! - 3D per volume: the crop maps of each CT integrated onto its grid (`integrate.rs`) and
//!   scored against the case's whole fracture mask: pooled voxels and the mean per-volume Dice.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use fracmap_core::Confusion;
use fracmap_core::Mask;
use fracmap_core::metrics::average_precision;
use fracmap_core::nifti_io::read_volume;
use fracmap_core::preprocess::volume_to_mask;
use ndarray::{Array3, Axis};
use serde::{Deserialize, Serialize};

use super::integrate::{VolumeIntegrator, crop_geometry};
use crate::manifest::{Manifest, Status};
use crate::weak::data::Sample;
use crate::weak::eval::{MapMetrics, score_maps};

/// 2D numbers at a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceMetrics {
    /// Slices whose true mask has fracture voxels: the means below are over these.
    pub fracture_slices: usize,
    pub dice: f64,
    pub iou: f64,
    /// Over the slices where anything is predicted.
    pub precision: Option<f64>,
    pub recall: f64,
    /// Fracture-free slices, and the fraction of them with any voxel predicted.
    pub empty_slices: usize,
    pub empty_slices_flagged: f64,
}

/// 3D numbers on whole CTs at a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeMetrics {
    pub volumes: usize,
    /// Voxels pooled over the volumes.
    pub dice: f64,
    pub iou: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub pr_auc: Option<f64>,
    /// The mean of each volume's own Dice, over volumes with fracture voxels.
    pub mean_volume_dice: Option<f64>,
}

/// The model's numbers on a test fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct P2pMetrics {
    pub threshold: f32,
    pub slices: SliceMetrics,
    pub vertebrae: MapMetrics,
    pub volumes: Option<VolumeMetrics>,
}

/// The true mask a crop is scored against: as `weak::eval` (a normal vertebra without one is
/// all background, a fractured one without one is left out).
fn truth_of(sample: &Sample) -> Option<Mask> {
    match (&sample.truth, sample.entry.status) {
        (Some(truth), _) => Some(truth.clone()),
        (None, Status::Normal) => Some(Mask::from_elem(sample.ct.data().raw_dim(), false)),
        (None, Status::Fractured) => None,
    }
}

/// 2D numbers of the crop `maps` of `samples` at `threshold`.
pub fn slice_metrics(maps: &[Array3<f32>], samples: &[Sample], threshold: f32) -> Result<SliceMetrics> {
    ensure!(maps.len() == samples.len(), "{} maps for {} crops", maps.len(), samples.len());
    let (mut dice, mut iou, mut recall, mut precision) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut empty, mut flagged) = (0usize, 0usize);
    for (map, sample) in maps.iter().zip(samples) {
        let Some(truth) = truth_of(sample) else { continue };
        for (p, t) in map.axis_iter(Axis(0)).zip(truth.axis_iter(Axis(0))) {
            let predicted: Vec<bool> = p.iter().map(|&v| v >= threshold).collect();
            let truths: Vec<bool> = t.iter().copied().collect();
            let confusion = Confusion::from_labels(&predicted, &truths)?;
            if truths.iter().any(|&v| v) {
                dice.push(confusion.dice());
                iou.push(confusion.iou());
                recall.push(confusion.recall().unwrap_or(0.0));
                precision.extend(confusion.precision());
            } else {
                empty += 1;
                flagged += usize::from(predicted.iter().any(|&v| v));
            }
        }
    }
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    Ok(SliceMetrics {
        fracture_slices: dice.len(),
        dice: mean(&dice),
        iou: mean(&iou),
        precision: (!precision.is_empty()).then(|| mean(&precision)),
        recall: mean(&recall),
        empty_slices: empty,
        empty_slices_flagged: if empty == 0 { 0.0 } else { flagged as f64 / empty as f64 },
    })
}

/// Per-volume numbers: the crops of each case integrated onto its CT's grid and scored
/// against the case's fracture mask (from the manifest at `manifest_path`); cases without a
/// mask are left out. `None` when no case has one.
pub fn volume_metrics(
    maps: &[Array3<f32>],
    samples: &[Sample],
    manifest_path: &Path,
    threshold: f32,
) -> Result<Option<VolumeMetrics>> {
    let manifest = Manifest::load(manifest_path, false)?;
    let mut by_case: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, sample) in samples.iter().enumerate() {
        by_case.entry(sample.entry.case.as_str()).or_default().push(i);
    }
    let (mut scores, mut truths) = (Vec::new(), Vec::new());
    let mut per_volume = Vec::new();
    let mut volumes = 0;
    for (case_id, crops) in by_case {
        let case = manifest.cases.iter().find(|c| c.id == case_id).with_context(|| {
            format!("{}: no case {case_id} (the crops are of another manifest?)", manifest_path.display())
        })?;
        let Some(mask_path) = &case.fracture_mask else { continue };
        let path = Manifest::resolve(manifest_path, mask_path);
        let truth = volume_to_mask(&read_volume(&path).with_context(|| path.display().to_string())?, 0.5);
        let mut integrator = VolumeIntegrator::new(samples[crops[0]].entry.source.into());
        for &i in &crops {
            let geometry = crop_geometry(&samples[i].entry, samples[i].ct.clone());
            integrator.add(&geometry, &maps[i]).with_context(|| format!("crop {}", samples[i].entry.dir))?;
        }
        let (probability, _) = integrator.finish()?;
        ensure!(
            probability.shape() == [truth.dim().0, truth.dim().1, truth.dim().2],
            "{}: shape {:?}, its CT's is {:?}",
            path.display(),
            truth.dim(),
            probability.shape()
        );
        let before = scores.len();
        scores.extend(probability.data().iter());
        truths.extend(truth.iter());
        let confusion = Confusion::from_scores(&scores[before..], &truths[before..], threshold)?;
        if truth.iter().any(|&v| v) {
            per_volume.push(confusion.dice());
        }
        volumes += 1;
    }
    if volumes == 0 {
        return Ok(None);
    }
    let confusion = Confusion::from_scores(&scores, &truths, threshold)?;
    Ok(Some(VolumeMetrics {
        volumes,
        dice: confusion.dice(),
        iou: confusion.iou(),
        precision: confusion.precision(),
        recall: confusion.recall(),
        pr_auc: average_precision(&scores, &truths).ok(),
        mean_volume_dice: (!per_volume.is_empty()).then(|| per_volume.iter().sum::<f64>() / per_volume.len() as f64),
    }))
}

/// All three scales on the test crops at `threshold`.
pub fn score(maps: &[Array3<f32>], samples: &[Sample], manifest: &Path, threshold: f32) -> Result<P2pMetrics> {
    Ok(P2pMetrics {
        threshold,
        slices: slice_metrics(maps, samples, threshold)?,
        vertebrae: score_maps(maps, samples, threshold)?,
        volumes: volume_metrics(maps, samples, manifest, threshold)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weak::data::fixtures::sample;
    use std::path::PathBuf;

    #[test]
    fn slice_numbers_average_over_fracture_slices_and_count_flagged_empty_ones() {
        // Two slices of 1 x 4: slice 0 truth [1 1 0 0], slice 1 empty.
        let truth =
            Mask::from_shape_vec((2, 1, 4), vec![true, true, false, false, false, false, false, false]).unwrap();
        let map = Array3::from_shape_vec((2, 1, 4), vec![0.9, 0.2, 0.7, 0.0, 0.0, 0.6, 0.0, 0.0]).unwrap();
        let zeros = Array3::zeros((2, 1, 4));
        let fractured = sample(Status::Fractured, zeros.clone(), zeros.clone(), truth.clone(), Some(truth));
        let normal = sample(Status::Normal, zeros.clone(), zeros.clone(), Mask::from_elem((2, 1, 4), false), None);
        let m = slice_metrics(&[map.clone(), Array3::zeros((2, 1, 4))], &[fractured, normal], 0.5).unwrap();
        // Slice 0: predicted voxels 0 and 2, TP 1, FP 1, FN 1: Dice 1/2, IoU 1/3.
        assert_eq!(m.fracture_slices, 1);
        assert!((m.dice - 0.5).abs() < 1e-12 && (m.iou - 1.0 / 3.0).abs() < 1e-12, "{m:?}");
        assert_eq!((m.precision, m.recall), (Some(0.5), 0.5));
        // Empty slices: slice 1 of the fractured crop (flagged: 0.6) and both of the normal one.
        assert_eq!(m.empty_slices, 3);
        assert!((m.empty_slices_flagged - 1.0 / 3.0).abs() < 1e-12);
    }

    /// A 12 x 6 x 6 CT of 1 mm with a fracture at z 3..6 in y, x 2..4, cut into two crops of
    /// the CT's spacing (z 0..8 and 4..12), so that pasting back is exact.
    fn case_on_disk(dir: &Path) -> (PathBuf, Vec<Sample>, Mask) {
        use fracmap_core::vertebra_crop::{CropSpec, cut_vertebra};
        use fracmap_core::{Box3, Volume};
        let ct = Volume::with_spacing(Array3::zeros((12, 6, 6)), [1.0; 3]).unwrap();
        let truth = Mask::from_shape_fn((12, 6, 6), |(z, y, x)| {
            (3..6).contains(&z) && (2..4).contains(&y) && (2..4).contains(&x)
        });
        fracmap_core::nifti_io::write_mask(&dir.join("mask.nii.gz"), &truth, &ct.grid()).unwrap();
        let spec = CropSpec { spacing_mm: [1.0; 3], patch: [8, 6, 6], margin_mm: 0.0 };
        let samples = [0, 4]
            .map(|z0| {
                let crop = cut_vertebra(&ct, &Box3::new([z0, 0, 0], [z0 + 8, 6, 6]).unwrap(), &spec, 0.0).unwrap();
                let zeros = Array3::zeros((8, 6, 6));
                let mut s = sample(Status::Fractured, zeros.clone(), zeros, Mask::from_elem((8, 6, 6), false), None);
                s.entry.case = "c".into();
                s.entry.source = crop.source.into();
                s.entry.cut = crop.region.into();
                s.entry.cut_grid = crop.cut_grid.into();
                s.entry.resampled_shape = crop.resampled_shape;
                s.ct = crop.ct.clone();
                s.truth = Some(
                    crop.cut_mask(&fracmap_core::preprocess::mask_to_volume(&truth, &ct.grid()).unwrap()).unwrap(),
                );
                s
            })
            .to_vec();
        let manifest = r#"{"format": "fracmap-manifest", "version": 1, "source": "test", "cases": [{"id": "c", "patient": "p", "ct": "ct.nii.gz", "shape": [12, 6, 6], "fracture_mask": "mask.nii.gz", "labeled": true, "vertebrae": []}]}"#;
        let path = dir.join("manifest.json");
        std::fs::write(&path, manifest).unwrap();
        (path, samples, truth)
    }

    #[test]
    fn volumes_are_the_crops_integrated_and_scored_against_the_cases_mask() {
        let dir = tempfile::tempdir().unwrap();
        let (manifest, samples, _) = case_on_disk(dir.path());
        // Each crop predicts its own truth: the integrated volume is the case's mask.
        let perfect: Vec<Array3<f32>> =
            samples.iter().map(|s| crate::p2p::data::as_float(s.truth.as_ref().unwrap())).collect();
        let m = volume_metrics(&perfect, &samples, &manifest, 0.5).unwrap().unwrap();
        assert_eq!((m.volumes, m.dice, m.mean_volume_dice), (1, 1.0, Some(1.0)), "{m:?}");
        assert_eq!(m.pr_auc, Some(1.0));
        // The first crop alone says 0.8 on its fracture voxels, the second 0.0: their mean,
        // 0.4, is below 0.5 where they overlap (z 4..6), so only z 3 remains: 4 of 12 voxels.
        let mut halves = perfect.clone();
        halves[0].mapv_inplace(|v| v * 0.8);
        halves[1].fill(0.0);
        let m = volume_metrics(&halves, &samples, &manifest, 0.5).unwrap().unwrap();
        assert!((m.dice - 2.0 * 4.0 / (4.0 + 12.0)).abs() < 1e-12, "{m:?}");
        assert_eq!((m.precision, m.recall), (Some(1.0), Some(4.0 / 12.0)));
    }
}
