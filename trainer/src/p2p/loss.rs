//! The pix2pix losses on slices (`[B, 1, H, W]` tensors):
//! - generator: `w_adv * adv(D(x, P), real) + lambda * seg(P, T)`, `P = sigmoid(G(x))`;
//! - discriminator: `(adv(D(x, T), real) + adv(D(x, P), fake)) / 2`, `P` detached;
//!
//! where `adv` on patch logits `l` is binary cross-entropy (vanilla: `softplus(-l)` for real,
//! `softplus(l)` for fake, finite for any logit) or least squares (`(l - 1)^2`, `l^2`), a
//! mean over patches and batch, and `seg` is the mean `|P - T|` (L1) or the soft Dice loss
//! `1 - (2 sum(P T) + 1) / (sum P + sum T + 1)` over the batch's voxels.

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softplus};

use super::config::{Adversarial, P2pLossConfig, SegmentationLoss};

/// Smoothing of the soft Dice: a batch of empty targets predicted empty costs nearly nothing.
const DICE_SMOOTHING: f64 = 1.0;

/// `adv(logits, target)`: how far the discriminator's patch logits are from saying `real`.
pub fn adversarial(kind: Adversarial, logits: Tensor<4>, real: bool) -> Tensor<1> {
    match (kind, real) {
        (Adversarial::Vanilla, true) => softplus(logits.neg(), 1.0).mean(),
        (Adversarial::Vanilla, false) => softplus(logits, 1.0).mean(),
        (Adversarial::LeastSquares, true) => logits.sub_scalar(1.0).powi_scalar(2).mean(),
        (Adversarial::LeastSquares, false) => logits.powi_scalar(2).mean(),
    }
}

/// `seg(sigmoid(logits), target)`.
pub fn segmentation(kind: SegmentationLoss, logits: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    let probability = sigmoid(logits);
    match kind {
        SegmentationLoss::L1 => (probability - target).abs().mean(),
        SegmentationLoss::Dice => {
            let overlap = (probability.clone() * target.clone()).sum();
            let size = probability.sum() + target.sum();
            (overlap.mul_scalar(2.0).add_scalar(DICE_SMOOTHING) / size.add_scalar(DICE_SMOOTHING)).neg().add_scalar(1.0)
        }
    }
}

/// The generator's loss and its two terms.
#[derive(Debug, Clone)]
pub struct GeneratorLoss {
    pub total: Tensor<1>,
    /// `adv(D(x, P), real)`; `None` in the warm-up, when the adversary is not in the loss.
    pub adversarial: Option<Tensor<1>>,
    pub segmentation: Tensor<1>,
}

/// `fake_patches`: the discriminator's logits on the generator's output (`None`: warm-up).
pub fn generator_loss(
    config: &P2pLossConfig,
    logits: Tensor<4>,
    target: Tensor<4>,
    fake_patches: Option<Tensor<4>>,
) -> GeneratorLoss {
    let segmentation = segmentation(config.segmentation, logits, target);
    let adversarial = fake_patches.map(|patches| adversarial(config.adversarial, patches, true));
    let weighted = segmentation.clone().mul_scalar(config.lambda);
    let total = match &adversarial {
        Some(adv) => weighted + adv.clone().mul_scalar(config.w_adv),
        None => weighted,
    };
    GeneratorLoss { total, adversarial, segmentation }
}

/// `(adv(real_patches, real) + adv(fake_patches, fake)) / 2`.
pub fn discriminator_loss(kind: Adversarial, real_patches: Tensor<4>, fake_patches: Tensor<4>) -> Tensor<1> {
    (adversarial(kind, real_patches, true) + adversarial(kind, fake_patches, false)).mul_scalar(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values.to_vec(), [1, 1, 1, values.len()]), &Device::flex())
    }

    fn value(x: Tensor<1>) -> f64 {
        x.into_scalar::<f32>() as f64
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn adversarial_terms_match_hand_computation() {
        let logits = [2.0, -1.0, 0.0];
        // BCE(sigmoid(l), 1) = -ln sigmoid(l); BCE(sigmoid(l), 0) = -ln(1 - sigmoid(l)).
        let real: f64 = logits.iter().map(|&l| -sig(l).ln()).sum::<f64>() / 3.0;
        let fake: f64 = logits.iter().map(|&l| -(1.0 - sig(l)).ln()).sum::<f64>() / 3.0;
        let l = || t(&logits.map(|v| v as f32));
        close(value(adversarial(Adversarial::Vanilla, l(), true)), real);
        close(value(adversarial(Adversarial::Vanilla, l(), false)), fake);
        close(value(adversarial(Adversarial::LeastSquares, l(), true)), (1.0 + 4.0 + 1.0) / 3.0);
        close(value(adversarial(Adversarial::LeastSquares, l(), false)), (4.0 + 1.0 + 0.0) / 3.0);
        close(value(discriminator_loss(Adversarial::LeastSquares, l(), l())), (2.0 + 5.0 / 3.0) / 2.0);
        // Finite where the sigmoid saturates.
        assert!(value(adversarial(Adversarial::Vanilla, t(&[-200.0]), true)).is_finite());
    }

    #[test]
    fn segmentation_terms_match_hand_computation() {
        let logits = [0.0f32, 1.0, -2.0, 3.0];
        let target = [1.0f32, 0.0, 0.0, 1.0];
        let p: Vec<f64> = logits.iter().map(|&l| sig(l as f64)).collect();
        let l1 = p.iter().zip(target).map(|(p, t)| (p - t as f64).abs()).sum::<f64>() / 4.0;
        let overlap: f64 = p.iter().zip(target).map(|(p, t)| p * t as f64).sum();
        let dice = 1.0 - (2.0 * overlap + 1.0) / (p.iter().sum::<f64>() + 2.0 + 1.0);
        close(value(segmentation(SegmentationLoss::L1, t(&logits), t(&target))), l1);
        close(value(segmentation(SegmentationLoss::Dice, t(&logits), t(&target))), dice);
    }

    #[test]
    fn the_generator_loss_weighs_its_terms_and_leaves_the_adversary_out_in_the_warm_up() {
        let config = P2pLossConfig { lambda: 100.0, w_adv: 2.0, ..P2pLossConfig::default() };
        let (logits, target) = (t(&[0.5, -0.5]), t(&[1.0, 0.0]));
        let warm = generator_loss(&config, logits.clone(), target.clone(), None);
        assert!(warm.adversarial.is_none());
        close(value(warm.total), 100.0 * value(warm.segmentation.clone()));
        let full = generator_loss(&config, logits, target, Some(t(&[0.0])));
        close(value(full.adversarial.clone().unwrap()), 2f64.ln());
        close(value(full.total), 100.0 * value(full.segmentation) + 2.0 * 2f64.ln());
    }
}
