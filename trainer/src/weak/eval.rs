//! How well a fracture probability map matches the true masks, over a set of vertebra crops.
//!
//! Every number pools the voxels of all crops that have a truth (a normal vertebra without a
//! mask counts as all-negative; a fractured one without a mask is left out), so false
//! positives on normal vertebrae count against a method as they would in a clinic:
//! - Dice, IoU, precision, recall of `P >= t`, `t` chosen beforehand (on the training folds,
//!   by [`choose_threshold`]: the threshold of the best pooled Dice on a grid of 0.02 steps);
//! - voxel PR-AUC (average precision), threshold-free;
//! - predicted volume outside the vertebra's fracture box (mm^3 per vertebra; for a normal
//!   vertebra, everything it predicts);
//! - per-vertebra detection ROC-AUC, a vertebra scored by its highest `P`.

use anyhow::{Result, ensure};
use burn::prelude::*;
use fracmap_core::Confusion;
use fracmap_core::Mask;
use fracmap_core::metrics::{average_precision, roc_auc};
use ndarray::Array3;
use serde::{Deserialize, Serialize};

use super::data::{Sample, input_tensor, maps_of};
use super::model::UNet;
use crate::manifest::Status;

/// The U-Net's probability maps of `samples`, in order.
pub fn predict(model: &UNet, samples: &[Sample], batch_size: usize, device: &Device) -> Result<Vec<Array3<f32>>> {
    let mut maps = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch_size.max(1)) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let flips = vec![false; refs.len()];
        maps.extend(maps_of(model.probability(input_tensor(&refs, &flips, device)))?);
    }
    Ok(maps)
}

/// The true mask a crop is scored against; `None` for a fractured vertebra without one.
fn truth_of(sample: &Sample) -> Option<Mask> {
    match (&sample.truth, sample.entry.status) {
        (Some(truth), _) => Some(truth.clone()),
        (None, Status::Normal) => Some(Mask::from_elem(sample.box_in.raw_dim(), false)),
        (None, Status::Fractured) => None,
    }
}

/// Every scored voxel's probability and truth, pooled over crops.
fn pooled(maps: &[Array3<f32>], samples: &[Sample]) -> (Vec<f32>, Vec<bool>) {
    let (mut scores, mut truths) = (Vec::new(), Vec::new());
    for (map, sample) in maps.iter().zip(samples) {
        if let Some(truth) = truth_of(sample) {
            scores.extend(map.iter());
            truths.extend(truth.iter());
        }
    }
    (scores, truths)
}

/// The threshold on a grid `0.02, 0.04, .., 0.98` whose pooled Dice over `samples` is highest
/// (the lowest of equals).
pub fn choose_threshold(maps: &[Array3<f32>], samples: &[Sample]) -> Result<f32> {
    let (scores, truths) = pooled(maps, samples);
    let mut best = (0.5_f32, f64::NEG_INFINITY);
    for step in 1..50 {
        let threshold = step as f32 * 0.02;
        let dice = Confusion::from_scores(&scores, &truths, threshold)?.dice();
        if dice > best.1 {
            best = (threshold, dice);
        }
    }
    Ok(best.0)
}

/// A method's numbers on a set of crops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapMetrics {
    pub threshold: f32,
    pub dice: f64,
    pub iou: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub pr_auc: Option<f64>,
    /// Predicted volume outside the vertebra's fracture box, mm^3, mean per vertebra.
    pub outside_box_mm3: f64,
    pub vertebra_auc: Option<f64>,
}

/// Scores `maps` (one per sample, on its grid) against the samples' truths at `threshold`.
pub fn score_maps(maps: &[Array3<f32>], samples: &[Sample], threshold: f32) -> Result<MapMetrics> {
    ensure!(maps.len() == samples.len(), "{} maps for {} crops", maps.len(), samples.len());
    ensure!(!samples.is_empty(), "no crops to score");
    let (scores, truths) = pooled(maps, samples);
    let confusion = Confusion::from_scores(&scores, &truths, threshold)?;
    let pr_auc = average_precision(&scores, &truths).ok();

    let mut outside_mm3 = 0.0;
    for (map, sample) in maps.iter().zip(samples) {
        let voxel_mm3: f64 = sample.ct.spacing().iter().product();
        let outside = map.iter().zip(sample.box_in.iter()).filter(|&(&p, &inside)| p >= threshold && !inside).count();
        outside_mm3 += outside as f64 * voxel_mm3;
    }
    let peaks: Vec<f32> = maps.iter().map(|m| m.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
    let fractured: Vec<bool> = samples.iter().map(|s| s.entry.status == Status::Fractured).collect();
    Ok(MapMetrics {
        threshold,
        dice: confusion.dice(),
        iou: confusion.iou(),
        precision: confusion.precision(),
        recall: confusion.recall(),
        pr_auc,
        outside_box_mm3: outside_mm3 / samples.len() as f64,
        vertebra_auc: roc_auc(&peaks, &fractured).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weak::data::fixtures::sample;

    fn row(values: [f32; 4]) -> Array3<f32> {
        Array3::from_shape_vec((1, 1, 4), values.to_vec()).unwrap()
    }

    fn mask(values: [bool; 4]) -> Mask {
        Mask::from_shape_vec((1, 1, 4), values.to_vec()).unwrap()
    }

    /// A fractured vertebra (truth on voxels 0 and 1, box over 0..3) and a normal one.
    fn two_vertebrae() -> Vec<Sample> {
        let zeros = row([0.0; 4]);
        vec![
            sample(
                Status::Fractured,
                zeros.clone(),
                zeros.clone(),
                mask([true, true, true, false]),
                Some(mask([true, true, false, false])),
            ),
            sample(Status::Normal, zeros.clone(), zeros, mask([false; 4]), Some(mask([false; 4]))),
        ]
    }

    #[test]
    fn scores_pool_the_voxels_of_every_vertebra() {
        let maps = [row([0.9, 0.4, 0.8, 0.1]), row([0.2, 0.7, 0.1, 0.0])];
        let m = score_maps(&maps, &two_vertebrae(), 0.5).unwrap();
        // Predicted: voxels 0 and 2 of the first, 1 of the second. TP 1, FP 2, FN 1.
        assert!((m.dice - 2.0 / 5.0).abs() < 1e-12, "{m:?}");
        assert!((m.iou - 1.0 / 4.0).abs() < 1e-12);
        assert!((m.precision.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.recall.unwrap() - 0.5).abs() < 1e-12);
        // Descending: 0.9 (fracture), 0.8, 0.7, 0.4 (fracture): AP = 0.5 * 1 + 0.5 * 2/4.
        assert!((m.pr_auc.unwrap() - 0.75).abs() < 1e-12);
        // Outside the boxes only the normal vertebra's voxel 1 is predicted: 8 mm^3 over two vertebrae.
        assert!((m.outside_box_mm3 - 4.0).abs() < 1e-12);
        // The fractured vertebra peaks higher (0.9 against 0.7).
        assert_eq!(m.vertebra_auc, Some(1.0));
    }

    #[test]
    fn a_fractured_vertebra_without_a_mask_is_left_out_of_the_voxel_numbers() {
        let mut samples = two_vertebrae();
        samples[0].truth = None;
        let maps = [row([0.9, 0.4, 0.8, 0.1]), row([0.2, 0.7, 0.1, 0.0])];
        let m = score_maps(&maps, &samples, 0.5).unwrap();
        assert_eq!((m.dice, m.recall, m.pr_auc), (0.0, None, None), "only the normal vertebra's negatives remain");
        assert_eq!(m.vertebra_auc, Some(1.0), "detection needs only the status");
    }

    #[test]
    fn the_threshold_is_the_lowest_of_the_best_dice() {
        let samples = &two_vertebrae()[..1];
        // Anything in (0.3, 0.6] separates the fracture exactly; the grid's first such is 0.32.
        let threshold = choose_threshold(&[row([0.9, 0.6, 0.3, 0.1])], samples).unwrap();
        assert!((threshold - 0.32).abs() < 1e-6, "{threshold}");
    }
}
