//! Phase 2's losses and the `[loss]` section of a phase-2 configuration: the weak loss
//! `w_out*L_out + w_in*L_in + w_contrast*L_contrast + w_consistency*L_consistency` of
//! docs/method.md ("Phase 2"), and the BCE + Dice of the fully supervised upper bound.
//!
//! Every input is `[B, 1, D, H, W]`, `P = sigmoid(logits)`, and the masks are 0/1 (read as
//! `> 0.5`). Each term is computed per crop, then averaged over the crops of the batch it
//! applies to; a term that applies to no crop is exactly 0, with a zero gradient:
//! - `L_out`: mean over the crop's outside voxels of `BCE(P, 0) = softplus(logit)`; crops
//!   with an empty `M_out` are skipped;
//! - `L_in = BCE(agg(P[M_in]), 1) = -ln(agg(P[M_in]))`, `agg` mean or max over the crop's
//!   inside voxels, computed in log space from the logits; crops with an empty `M_in`
//!   (normal vertebrae) are skipped;
//! - `L_contrast = max(0, agg2(P[M_out]) - agg2(P[M_in]) + margin)`, in units of
//!   probability; crops with both masks non-empty;
//! - `L_consistency`: mean over the crop's voxels of `|P - E|` (L1) or `(P - E)^2` (L2), `E`
//!   the normalised VAE error map; every crop.
//!
//! A max sends its gradient to the argmax voxel alone. That is intended: it is
//! multiple-instance learning's "at least one voxel of the region is fractured".

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, relu, sigmoid, softplus};
use serde::{Deserialize, Serialize};

/// The weak loss's weights, aggregations, margin and consistency norm.
///
/// `L_out` and `L_in` are both BCEs in nats, one number per crop each (so a box of 0.1% of
/// the crop weighs as much as everything outside it), both `ln 2` at an untrained `P = 0.5`;
/// `L_contrast` is at most `1 + margin`. Hence weight 1 for all three: the neutral start,
/// whose tuning the method leaves to experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeakLossConfig {
    /// Weight of `L_out`, the strong negative.
    pub w_out: f64,
    /// Weight of `L_in`, the multiple-instance positive.
    pub w_in: f64,
    /// Weight of `L_contrast`, the hinge between inside and outside.
    pub w_contrast: f64,
    /// Weight of `L_consistency`. 0.1: the error map is a prior, not a label (the VAE also
    /// errs on vessels, edges, artefacts and unusual normal anatomy), so a weight equal to the
    /// others would teach `P` to copy those false positives against `L_out`.
    pub w_consistency: f64,
    /// `agg` of `L_in`.
    pub agg: Aggregation,
    /// `agg2` of `L_contrast`, on both sides.
    pub agg2: Aggregation,
    /// How far, in probability, `agg2` inside must rise above `agg2` outside. 0.3: clear
    /// separation without asking a mean over a box (which also holds intact bone) to reach 1.
    pub margin: f64,
    pub consistency: ConsistencyNorm,
}

/// How a mask's probabilities become one number per crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Fills the region: cleaner shapes where the region is tight (boxes).
    Mean,
    /// One voxel suffices: where the region is mostly normal (whole slices), a mean drowns.
    Max,
}

/// The distance of `L_consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyNorm {
    /// Mean absolute difference.
    L1,
    /// Mean squared difference.
    L2,
}

/// A `[loss]` value out of its range, named as it is written in the configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: must be finite and >= 0")]
pub struct LossConfigError {
    pub field: &'static str,
    pub value: f64,
}

impl WeakLossConfig {
    /// The method's recommendation for mode B (box labels): `agg = agg2 = mean`.
    pub fn for_boxes() -> Self {
        WeakLossConfig {
            w_out: 1.0,
            w_in: 1.0,
            w_contrast: 1.0,
            w_consistency: 0.1,
            agg: Aggregation::Mean,
            agg2: Aggregation::Mean,
            margin: 0.3,
            consistency: ConsistencyNorm::L1,
        }
    }

    /// The method's recommendation for mode A (slice ranges): `agg = agg2 = max`; the rest as
    /// [`Self::for_boxes`], so that the two modes differ only where the method says.
    pub fn for_slices() -> Self {
        WeakLossConfig { agg: Aggregation::Max, agg2: Aggregation::Max, ..Self::for_boxes() }
    }

    pub fn validate(&self) -> Result<(), LossConfigError> {
        let values = [
            ("loss.w_out", self.w_out),
            ("loss.w_in", self.w_in),
            ("loss.w_contrast", self.w_contrast),
            ("loss.w_consistency", self.w_consistency),
            ("loss.margin", self.margin),
        ];
        match values.into_iter().find(|(_, value)| !(value.is_finite() && *value >= 0.0)) {
            Some((field, value)) => Err(LossConfigError { field, value }),
            None => Ok(()),
        }
    }
}

impl Default for WeakLossConfig {
    fn default() -> Self {
        Self::for_boxes()
    }
}

/// The weak loss and its four terms, unweighted; each a one-element tensor.
#[derive(Debug, Clone)]
pub struct WeakLoss {
    /// The weighted sum: what is minimised.
    pub total: Tensor<1>,
    pub outside: Tensor<1>,
    pub inside: Tensor<1>,
    pub contrast: Tensor<1>,
    pub consistency: Tensor<1>,
}

/// The weak loss of a batch (see the module documentation for the reductions). `logits`: the
/// U-Net's output before the sigmoid; `inside`, `outside`: `M_in`, `M_out` (0/1); `error`:
/// `normalise(E)` in `[0, 1]`; all `[B, 1, D, H, W]`.
pub fn weak_loss(
    config: &WeakLossConfig,
    logits: Tensor<5>,
    inside: Tensor<5>,
    outside: Tensor<5>,
    error: Tensor<5>,
) -> WeakLoss {
    let shape = logits.dims();
    for (name, tensor) in [("inside", &inside), ("outside", &outside), ("error", &error)] {
        assert_eq!(tensor.dims(), shape, "weak_loss: {name} must have the shape of the logits");
    }
    let logits = per_crop(logits);
    let inside = CropMask::new(per_crop(inside));
    let outside = CropMask::new(per_crop(outside));
    let probability = sigmoid(logits.clone());
    let log_probability = log_sigmoid(logits.clone());

    // BCE(sigmoid(l), 0) = -ln(1 - sigmoid(l)) = softplus(l): finite for any logit.
    let outside_bce = outside.mean(softplus(logits, 1.0));
    let outside_term = mean_over_crops(outside_bce, outside.present.clone());

    let inside_bce = inside.ln_aggregate(config.agg, log_probability.clone()).neg();
    let inside_term = mean_over_crops(inside_bce, inside.present.clone());

    let outside_level = outside.ln_aggregate(config.agg2, log_probability.clone()).exp();
    let inside_level = inside.ln_aggregate(config.agg2, log_probability).exp();
    let hinge = relu((outside_level - inside_level).add_scalar(config.margin));
    let contrast = mean_over_crops(hinge, inside.present * outside.present);

    // Crops have equal sizes: the mean over all voxels is the mean of the per-crop means.
    let difference = probability - per_crop(error);
    let consistency = match config.consistency {
        ConsistencyNorm::L1 => difference.abs().mean(),
        ConsistencyNorm::L2 => difference.square().mean(),
    };

    let total = outside_term.clone().mul_scalar(config.w_out)
        + inside_term.clone().mul_scalar(config.w_in)
        + contrast.clone().mul_scalar(config.w_contrast)
        + consistency.clone().mul_scalar(config.w_consistency);
    WeakLoss { total, outside: outside_term, inside: inside_term, contrast, consistency }
}

/// The fully supervised loss of the upper bound and its two terms; each a one-element tensor.
#[derive(Debug, Clone)]
pub struct SupervisedLoss {
    /// `bce + dice`: what is minimised.
    pub total: Tensor<1>,
    pub bce: Tensor<1>,
    pub dice: Tensor<1>,
}

/// Smoothing of the soft Dice loss. It keeps a crop with an empty truth defined: there the
/// loss is `1 - 1 / (sum(P) + 1)`, near 0 when `P` is near 0 everywhere, so a normal vertebra
/// predicted clean costs nothing.
const DICE_SMOOTHING: f64 = 1.0;

/// `bce + dice` of `logits` against the true mask `truth` (0/1), both `[B, 1, D, H, W]`:
/// - `bce`: mean over every voxel of the batch of `BCE(P, T) = softplus(l) - T*l`;
/// - `dice`: `1 - (2*sum(P*T) + 1) / (sum(P) + sum(T) + 1)` per crop (sums over its voxels),
///   averaged over the batch.
pub fn supervised_loss(logits: Tensor<5>, truth: Tensor<5>) -> SupervisedLoss {
    assert_eq!(truth.dims(), logits.dims(), "supervised_loss: truth must have the shape of the logits");
    let logits = per_crop(logits);
    let truth = per_crop(truth);
    // -T ln(P) - (1 - T) ln(1 - P) = softplus(l) - T*l: finite for any logit.
    let bce = (softplus(logits.clone(), 1.0) - logits.clone() * truth.clone()).mean();

    let probability = sigmoid(logits);
    let overlap = (probability.clone() * truth.clone()).sum_dim(1);
    let size = probability.sum_dim(1) + truth.sum_dim(1);
    let score = overlap.mul_scalar(2.0).add_scalar(DICE_SMOOTHING) / size.add_scalar(DICE_SMOOTHING);
    let dice = score.mean().neg().add_scalar(1.0);
    SupervisedLoss { total: bce.clone() + dice.clone(), bce, dice }
}

/// `[B, 1, D, H, W]` -> `[B, D*H*W]`: one row per crop.
fn per_crop(tensor: Tensor<5>) -> Tensor<2> {
    tensor.flatten(1, 4)
}

/// Mean of the per-crop `values` over the crops where `applies` is 1, both `[B, 1]`; 0 (and no
/// gradient) where none applies. `values` must be finite everywhere, applicable or not.
fn mean_over_crops(values: Tensor<2>, applies: Tensor<2>) -> Tensor<1> {
    let crops = applies.clone().sum().clamp_min(1.0);
    (values * applies).sum() / crops
}

/// Stands in for `ln P` at voxels outside a mask: its exp is 0 in f32 next to the `ln P` of
/// any logit a network produces (above -1e3), and it keeps an empty mask's aggregate finite.
const LN_ZERO: f64 = -1e4;

/// A 0/1 mask of each crop, `[B, N]`, with its voxel count and whether it is non-empty (0/1),
/// both `[B, 1]`.
struct CropMask {
    weights: Tensor<2>,
    excluded: Tensor<2, Bool>,
    count: Tensor<2>,
    present: Tensor<2>,
}

impl CropMask {
    fn new(mask: Tensor<2>) -> Self {
        let member = mask.greater_elem(0.5);
        let weights = member.clone().float();
        let count = weights.clone().sum_dim(1);
        let present = count.clone().clamp_max(1.0);
        CropMask { weights, excluded: member.bool_not(), count, present }
    }

    /// Mean of `values` `[B, N]` over each crop's mask, `[B, 1]`; 0 for an empty mask, whose
    /// sum is divided by 1 rather than 0.
    fn mean(&self, values: Tensor<2>) -> Tensor<2> {
        (values * self.weights.clone()).sum_dim(1) / self.count.clone().clamp_min(1.0)
    }

    /// `ln(agg(P))` over each crop's mask, `[B, 1]`, from `ln P` `[B, N]`. In log space, not
    /// `ln(max(agg(P), eps))`: that clamp would be flat, with no gradient to raise `P`, for a
    /// region the model has pushed below eps, which is where `L_in` is needed most. An empty
    /// mask gives about `LN_ZERO`: finite, for the caller to weight by 0.
    fn ln_aggregate(&self, agg: Aggregation, ln_probability: Tensor<2>) -> Tensor<2> {
        let masked = ln_probability.mask_fill(self.excluded.clone(), LN_ZERO);
        // ln is increasing: ln(max P) = max(ln P).
        let max = masked.clone().max_dim(1);
        match agg {
            Aggregation::Max => max,
            Aggregation::Mean => {
                // ln(sum P) as a log-sum-exp shifted by the max, so that no exp underflows to
                // 0 for the whole mask; the shift cancels in value and in gradient.
                let max = max.detach();
                let sum = (masked - max.clone()).exp().sum_dim(1);
                max + sum.log() - self.count.clone().clamp_min(1.0).log()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two crops of shape `[1, 1, 1, 4]`, by voxel: crop 0 fractured, inside = voxels 2 and 3,
    /// outside = voxels 0 and 1; crop 1 a normal vertebra.
    const PROBABILITY: [[f64; 4]; 2] = [[0.2, 0.5, 0.8, 0.6], [0.1, 0.25, 0.4, 0.75]];
    const INSIDE: [[f64; 4]; 2] = [[0.0, 0.0, 1.0, 1.0], [0.0; 4]];
    const OUTSIDE: [[f64; 4]; 2] = [[1.0, 1.0, 0.0, 0.0], [1.0; 4]];
    const ERROR: [[f64; 4]; 2] = [[0.0, 0.5, 1.0, 0.5], [0.0, 0.0, 0.5, 1.0]];

    fn crops(values: &[[f64; 4]], device: &Device) -> Tensor<5> {
        let flat: Vec<f32> = values.iter().flatten().map(|&v| v as f32).collect();
        Tensor::from_data(TensorData::new(flat, [values.len(), 1, 1, 1, 4]), device)
    }

    /// The logits whose sigmoids are `probability`.
    fn logits(probability: &[[f64; 4]], device: &Device) -> Tensor<5> {
        let logits: Vec<[f64; 4]> = probability.iter().map(|crop| crop.map(|p| (p / (1.0 - p)).ln())).collect();
        crops(&logits, device)
    }

    /// The weak loss of crops `batch` (indices into the fixture) on the CPU.
    fn fixture_loss(config: &WeakLossConfig, batch: &[usize]) -> WeakLoss {
        let device = Device::flex();
        let pick = |values: &[[f64; 4]; 2]| crops(&batch.iter().map(|&b| values[b]).collect::<Vec<_>>(), &device);
        let probability: Vec<_> = batch.iter().map(|&b| PROBABILITY[b]).collect();
        weak_loss(config, logits(&probability, &device), pick(&INSIDE), pick(&OUTSIDE), pick(&ERROR))
    }

    fn value(tensor: Tensor<1>) -> f64 {
        f64::from(tensor.into_scalar::<f32>())
    }

    fn assert_close(actual: Tensor<1>, expected: f64) {
        let actual = value(actual);
        assert!((actual - expected).abs() < 1e-5, "{actual} != {expected}");
    }

    fn config(agg: Aggregation, margin: f64) -> WeakLossConfig {
        WeakLossConfig { agg, agg2: agg, margin, ..WeakLossConfig::default() }
    }

    /// d total / d logits on the autodiff backend, one `Vec` per crop.
    fn gradient(
        config: &WeakLossConfig,
        probability: &[[f64; 4]],
        inside: &[[f64; 4]],
        outside: &[[f64; 4]],
    ) -> Vec<Vec<f32>> {
        let device = Device::flex().autodiff();
        let logits = logits(probability, &device).require_grad();
        let error = crops(&vec![[0.5; 4]; probability.len()], &device);
        let loss = weak_loss(config, logits.clone(), crops(inside, &device), crops(outside, &device), error);
        let grads = loss.total.backward();
        let flat = logits.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        flat.chunks(4).map(<[f32]>::to_vec).collect()
    }

    #[test]
    fn outside_is_the_mean_bce_towards_0_over_each_crops_outside_voxels() {
        let crop0 = -((1.0 - 0.2f64).ln() + (1.0 - 0.5f64).ln()) / 2.0;
        let crop1 = -((1.0 - 0.1f64).ln() + (1.0 - 0.25f64).ln() + (1.0 - 0.4f64).ln() + (1.0 - 0.75f64).ln()) / 4.0;
        assert_close(fixture_loss(&WeakLossConfig::default(), &[0, 1]).outside, (crop0 + crop1) / 2.0);
    }

    #[test]
    fn inside_is_the_bce_towards_1_of_the_mean_or_the_max_over_the_fractured_crops_inside() {
        // Only crop 0 has an inside: no averaging with the normal crop 1.
        assert_close(fixture_loss(&config(Aggregation::Mean, 0.3), &[0, 1]).inside, -((0.8 + 0.6) / 2.0f64).ln());
        assert_close(fixture_loss(&config(Aggregation::Max, 0.3), &[0, 1]).inside, -(0.8f64.ln()));
    }

    #[test]
    fn contrast_is_the_hinge_on_the_mean_or_the_max_gap_over_the_fractured_crops() {
        let mean_gap = (0.2 + 0.5) / 2.0 - (0.8 + 0.6) / 2.0;
        let max_gap = 0.5 - 0.8;
        assert_close(fixture_loss(&config(Aggregation::Mean, 0.5), &[0, 1]).contrast, mean_gap + 0.5);
        assert_close(fixture_loss(&config(Aggregation::Max, 0.5), &[0, 1]).contrast, max_gap + 0.5);
    }

    #[test]
    fn contrast_is_zero_when_the_inside_beats_the_outside_by_more_than_the_margin() {
        // Gaps -0.35 (mean) and -0.3 (max), margin 0.1.
        for agg in [Aggregation::Mean, Aggregation::Max] {
            assert_eq!(value(fixture_loss(&config(agg, 0.1), &[0, 1]).contrast), 0.0, "{agg:?}");
        }
    }

    #[test]
    fn consistency_is_the_mean_absolute_or_squared_difference_to_the_error_map() {
        let differences: Vec<f64> =
            PROBABILITY.iter().flatten().zip(ERROR.iter().flatten()).map(|(p, e)| p - e).collect();
        let l1 = differences.iter().map(|d| d.abs()).sum::<f64>() / 8.0;
        let l2 = differences.iter().map(|d| d * d).sum::<f64>() / 8.0;
        let with = |consistency| WeakLossConfig { consistency, ..WeakLossConfig::default() };
        assert_close(fixture_loss(&with(ConsistencyNorm::L1), &[0, 1]).consistency, l1);
        assert_close(fixture_loss(&with(ConsistencyNorm::L2), &[0, 1]).consistency, l2);
    }

    #[test]
    fn total_is_the_weighted_sum_of_the_terms() {
        let config = WeakLossConfig {
            w_out: 1.5,
            w_in: 2.0,
            w_contrast: 3.0,
            w_consistency: 0.5,
            margin: 0.5,
            ..WeakLossConfig::default()
        };
        let loss = fixture_loss(&config, &[0, 1]);
        let expected = 1.5 * value(loss.outside)
            + 2.0 * value(loss.inside)
            + 3.0 * value(loss.contrast)
            + 0.5 * value(loss.consistency);
        assert_close(loss.total, expected);
    }

    #[test]
    fn a_normal_vertebra_has_no_inside_nor_contrast_and_no_nan_in_the_gradient() {
        for config in [WeakLossConfig::for_boxes(), WeakLossConfig::for_slices()] {
            let loss = fixture_loss(&config, &[1]);
            assert_eq!(value(loss.inside), 0.0, "{:?}", config.agg);
            assert_eq!(value(loss.contrast), 0.0, "{:?}", config.agg);
            assert!(value(loss.total).is_finite(), "{:?}", config.agg);
            let grad = gradient(&config, &[PROBABILITY[1]], &[INSIDE[1]], &[OUTSIDE[1]]);
            assert!(grad.iter().flatten().all(|g| g.is_finite()), "{:?}: {grad:?}", config.agg);
        }
    }

    #[test]
    fn all_masks_empty_leaves_consistency_alone_and_no_nan() {
        let empty = [[0.0; 4]; 2];
        for config in [WeakLossConfig::for_boxes(), WeakLossConfig::for_slices()] {
            let device = Device::flex();
            let loss = weak_loss(
                &config,
                logits(&PROBABILITY, &device),
                crops(&empty, &device),
                crops(&empty, &device),
                crops(&ERROR, &device),
            );
            assert_close(loss.total, config.w_consistency * value(loss.consistency));
            let grad = gradient(&config, &PROBABILITY, &empty, &empty);
            assert!(grad.iter().flatten().all(|g| g.is_finite()), "{:?}: {grad:?}", config.agg);
        }
    }

    #[test]
    fn the_gradient_pushes_outside_down_and_inside_up() {
        // Gradient descent moves a logit against its gradient: > 0 lowers P, < 0 raises it.
        let config = WeakLossConfig { w_consistency: 0.0, ..WeakLossConfig::for_boxes() };
        let grad = &gradient(&config, &[PROBABILITY[0]], &[INSIDE[0]], &[OUTSIDE[0]])[0];
        assert!(grad[0] > 0.0 && grad[1] > 0.0, "outside: {grad:?}");
        assert!(grad[2] < 0.0 && grad[3] < 0.0, "inside: {grad:?}");
    }

    #[test]
    fn a_max_sends_the_inside_gradient_to_the_argmax_alone() {
        // Inside P = 0.8 (voxel 2) and 0.6 (voxel 3).
        let config = WeakLossConfig { w_consistency: 0.0, ..WeakLossConfig::for_slices() };
        let grad = &gradient(&config, &[PROBABILITY[0]], &[INSIDE[0]], &[OUTSIDE[0]])[0];
        assert!(grad[2] < 0.0, "{grad:?}");
        assert_eq!(grad[3], 0.0, "{grad:?}");
    }

    #[test]
    fn inside_keeps_its_value_and_gradient_where_sigmoid_underflows() {
        // Logits -200 inside: sigmoid is 0 in f32, but -ln(mean P) = -ln(sigmoid(-200)) ~ 200
        // and d/dl_i = -(1 - sigmoid(-200)) / 2 ~ -0.5 for each of the two inside voxels.
        let device = Device::flex().autodiff();
        let logits =
            Tensor::<1>::from_floats([0.0, -200.0, -200.0, 0.0], &device).reshape([1, 1, 1, 1, 4]).require_grad();
        let inside = crops(&[[0.0, 1.0, 1.0, 0.0]], &device);
        let outside = crops(&[[1.0, 0.0, 0.0, 1.0]], &device);
        let error = crops(&[[0.0; 4]], &device);
        let loss = weak_loss(&WeakLossConfig::for_boxes(), logits.clone(), inside, outside, error);
        let expected = (1.0 + 200f64.exp()).ln();
        assert!((value(loss.inside.clone()) - expected).abs() < 1e-3, "{}", value(loss.inside.clone()));
        let grad = logits.grad(&loss.inside.backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert!((grad[1] + 0.5).abs() < 1e-6 && (grad[2] + 0.5).abs() < 1e-6, "{grad:?}");
    }

    #[test]
    fn supervised_bce_is_the_mean_over_every_voxel() {
        // Truth: crop 0 = its inside, crop 1 empty.
        let device = Device::flex();
        let expected = PROBABILITY
            .iter()
            .flatten()
            .zip(INSIDE.iter().flatten())
            .map(|(&p, &t)| if t == 1.0 { -p.ln() } else { -(1.0 - p).ln() })
            .sum::<f64>()
            / 8.0;
        assert_close(supervised_loss(logits(&PROBABILITY, &device), crops(&INSIDE, &device)).bce, expected);
    }

    #[test]
    fn supervised_dice_is_the_soft_dice_loss_per_crop_averaged() {
        // Crop 0: sum(P*T) = 0.8 + 0.6, sum(P) = 2.1, sum(T) = 2; crop 1: sum(P) = 1.5, T empty.
        let crop0 = 1.0 - (2.0 * (0.8 + 0.6) + 1.0) / (2.1 + 2.0 + 1.0);
        let crop1 = 1.0 - 1.0 / (1.5 + 0.0 + 1.0);
        let device = Device::flex();
        assert_close(
            supervised_loss(logits(&PROBABILITY, &device), crops(&INSIDE, &device)).dice,
            (crop0 + crop1) / 2.0,
        );
    }

    #[test]
    fn a_perfect_prediction_costs_almost_nothing_even_for_an_empty_truth() {
        let truth = [[0.0, 0.0, 1.0, 1.0], [0.0; 4]];
        let device = Device::flex();
        let sure = crops(&truth.map(|crop| crop.map(|t| if t == 1.0 { 30.0 } else { -30.0 })), &device);
        let loss = supervised_loss(sure, crops(&truth, &device));
        assert!(value(loss.dice.clone()) < 1e-6, "dice {}", value(loss.dice));
        assert!(value(loss.total.clone()) < 1e-6, "total {}", value(loss.total));
    }

    #[test]
    fn boxes_use_means_and_slices_use_maxima_with_the_same_weights() {
        let boxes = WeakLossConfig::for_boxes();
        assert_eq!(WeakLossConfig::default(), boxes);
        assert_eq!((boxes.agg, boxes.agg2), (Aggregation::Mean, Aggregation::Mean));
        let slices = WeakLossConfig::for_slices();
        assert_eq!((slices.agg, slices.agg2), (Aggregation::Max, Aggregation::Max));
        assert_eq!(WeakLossConfig { agg: Aggregation::Mean, agg2: Aggregation::Mean, ..slices }, boxes);
    }

    #[test]
    fn round_trips_through_toml_with_lowercase_names() {
        let config = WeakLossConfig { margin: 0.25, consistency: ConsistencyNorm::L2, ..WeakLossConfig::for_slices() };
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("agg = \"max\"") && text.contains("consistency = \"l2\""), "{text}");
        assert_eq!(toml::from_str::<WeakLossConfig>(&text).unwrap(), config);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<WeakLossConfig>("w_outside = 1.0\n").unwrap_err();
        assert!(err.to_string().contains("w_outside"), "{err}");
    }

    #[test]
    fn validation_names_a_negative_weight_or_a_nan_margin() {
        assert_eq!(WeakLossConfig::for_boxes().validate(), Ok(()));
        assert_eq!(WeakLossConfig::for_slices().validate(), Ok(()));
        let err = WeakLossConfig { w_in: -1.0, ..WeakLossConfig::default() }.validate().unwrap_err();
        assert_eq!(err.to_string(), "loss.w_in = -1: must be finite and >= 0");
        let err = WeakLossConfig { margin: f64::NAN, ..WeakLossConfig::default() }.validate().unwrap_err();
        assert_eq!(err.field, "loss.margin");
    }
}
