//! Is the GAN training? pix2pix fails in known ways, each visible in per-epoch numbers:
//! - divergence: a loss turns NaN or infinite;
//! - the discriminator wins: it tells real from generated masks almost perfectly for
//!   epochs on end, so the generator's adversarial gradient vanishes (Goodfellow et al.'s
//!   saturation) and training stalls;
//! - collapse: the generator's output stops depending on its input (nearly constant over
//!   the validation slices) or turns empty, or the adversary undoes what the warm-up learned
//!   (validation Dice falls below half its warm-up best).
//!
//! [`assess`] reads the epochs so far and names the first failure; the run writes its
//! verdict to `health.json` beside `metrics.csv` and the loss curves.

use serde::{Deserialize, Serialize};

/// What one epoch showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochSignals {
    /// 1-based.
    pub epoch: usize,
    /// Whether the discriminator trained this epoch (after the warm-up).
    pub adversarial: bool,
    /// Mean generator loss, segmentation term and adversarial term (0 in the warm-up).
    pub g_loss: f64,
    pub g_seg: f64,
    pub g_adv: f64,
    /// Mean discriminator loss and its mean score of real and of generated masks (sigmoid of
    /// the patch logits, or the least-squares output), NaN in the warm-up.
    pub d_loss: f64,
    pub d_real: f64,
    pub d_fake: f64,
    /// On the validation slices: soft Dice loss, Dice of `P >= 0.5`, the fraction of voxels
    /// predicted and truly fracture, and the standard deviation of `P` over voxels.
    pub val_soft_dice_loss: f64,
    pub val_dice: f64,
    pub val_predicted_fraction: f64,
    pub val_true_fraction: f64,
    pub val_std: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Healthy,
    Diverged,
    DiscriminatorWon,
    Collapsed,
}

/// The verdict on a run so far, with the epoch where it failed and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub verdict: Verdict,
    pub epoch: Option<usize>,
    pub reason: Option<String>,
}

/// Scores at or past these (both, epochs in a row) mean the discriminator wins.
const D_WINS_REAL: f64 = 0.95;
const D_WINS_FAKE: f64 = 0.05;
const D_WINS_EPOCHS: usize = 3;
/// Below this standard deviation of `P`, the output no longer depends on the input.
const CONSTANT_STD: f64 = 1e-3;
/// Validation Dice below this fraction of its warm-up best, once the adversary trains.
const DICE_DROP: f64 = 0.5;
/// A warm-up best Dice below this is too low to judge a drop by.
const MIN_WARMUP_DICE: f64 = 0.05;

/// The first failure in `history` (epochs in order), or healthy.
pub fn assess(history: &[EpochSignals]) -> Health {
    let failed = |verdict, epoch, reason: String| Health { verdict, epoch: Some(epoch), reason: Some(reason) };
    let warmup_best = history.iter().filter(|e| !e.adversarial).map(|e| e.val_dice).fold(0.0, f64::max);
    let mut d_winning = 0;
    for e in history {
        let losses = [e.g_loss, e.g_seg, e.g_adv, e.val_soft_dice_loss];
        let d_losses = [e.d_loss, e.d_real, e.d_fake];
        if losses.iter().any(|v| !v.is_finite()) || (e.adversarial && d_losses.iter().any(|v| !v.is_finite())) {
            let reason = format!(
                "a loss is not finite (generator {}, segmentation {}, adversarial {}, discriminator {}): lower train.lr or loss.lambda",
                e.g_loss, e.g_seg, e.g_adv, e.d_loss
            );
            return failed(Verdict::Diverged, e.epoch, reason);
        }
        if !e.adversarial {
            continue;
        }
        d_winning = if e.d_real >= D_WINS_REAL && e.d_fake <= D_WINS_FAKE { d_winning + 1 } else { 0 };
        if d_winning >= D_WINS_EPOCHS {
            let reason = format!(
                "for {D_WINS_EPOCHS} epochs the discriminator scored real masks {:.3} and generated ones {:.3}: its gradient to the generator vanishes (try least_squares, a lower w_adv or fewer discriminator layers)",
                e.d_real, e.d_fake
            );
            return failed(Verdict::DiscriminatorWon, e.epoch, reason);
        }
        if e.val_std < CONSTANT_STD {
            let reason = format!("the output is constant over the validation slices (std of P {:.2e})", e.val_std);
            return failed(Verdict::Collapsed, e.epoch, reason);
        }
        if e.val_predicted_fraction == 0.0 && e.val_true_fraction > 0.0 {
            let reason = "no validation voxel is predicted (P < 0.5 everywhere) where fractures exist".to_string();
            return failed(Verdict::Collapsed, e.epoch, reason);
        }
        if warmup_best >= MIN_WARMUP_DICE && e.val_dice < DICE_DROP * warmup_best {
            let reason = format!(
                "validation Dice fell to {:.3} from {:.3} at the end of the warm-up: the adversary undoes the segmentation (try a lower w_adv)",
                e.val_dice, warmup_best
            );
            return failed(Verdict::Collapsed, e.epoch, reason);
        }
    }
    Health { verdict: Verdict::Healthy, epoch: None, reason: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: usize, adversarial: bool) -> EpochSignals {
        EpochSignals {
            epoch,
            adversarial,
            g_loss: 50.0,
            g_seg: 0.5,
            g_adv: if adversarial { 0.7 } else { 0.0 },
            d_loss: if adversarial { 0.6 } else { f64::NAN },
            d_real: if adversarial { 0.6 } else { f64::NAN },
            d_fake: if adversarial { 0.4 } else { f64::NAN },
            val_soft_dice_loss: 0.5,
            val_dice: 0.4,
            val_predicted_fraction: 0.01,
            val_true_fraction: 0.01,
            val_std: 0.2,
        }
    }

    fn run(adversarial_from: usize, epochs: usize) -> Vec<EpochSignals> {
        (1..=epochs).map(|e| epoch(e, e >= adversarial_from)).collect()
    }

    #[test]
    fn a_balanced_run_is_healthy_and_the_warm_up_has_no_discriminator_numbers() {
        assert_eq!(assess(&run(3, 6)).verdict, Verdict::Healthy);
    }

    #[test]
    fn a_non_finite_loss_is_divergence_at_its_epoch() {
        let mut h = run(3, 6);
        h[3].d_loss = f64::INFINITY;
        let health = assess(&h);
        assert_eq!((health.verdict, health.epoch), (Verdict::Diverged, Some(4)));
        let mut h = run(3, 6);
        h[0].g_seg = f64::NAN;
        assert_eq!(assess(&h).epoch, Some(1), "in the warm-up too");
    }

    #[test]
    fn a_discriminator_that_separates_for_three_epochs_in_a_row_wins() {
        let mut h = run(2, 8);
        for (i, e) in h.iter_mut().enumerate() {
            // Epochs 3, 4, then a break at 5, then 6, 7, 8.
            if [3, 4, 6, 7, 8].contains(&(i + 1)) {
                (e.d_real, e.d_fake) = (0.99, 0.01);
            }
        }
        let health = assess(&h);
        assert_eq!((health.verdict, health.epoch), (Verdict::DiscriminatorWon, Some(8)));
    }

    #[test]
    fn constant_empty_or_undone_output_is_collapse() {
        let mut h = run(3, 5);
        h[3].val_std = 1e-5;
        assert_eq!((assess(&h).verdict, assess(&h).epoch), (Verdict::Collapsed, Some(4)));

        let mut h = run(3, 5);
        h[4].val_predicted_fraction = 0.0;
        assert_eq!((assess(&h).verdict, assess(&h).epoch), (Verdict::Collapsed, Some(5)));

        let mut h = run(3, 5);
        h[1].val_dice = 0.6; // the warm-up's best
        h[2].val_dice = 0.31;
        assert_eq!(assess(&h).verdict, Verdict::Healthy, "0.31 is above half of 0.6");
        h[3].val_dice = 0.29;
        assert_eq!((assess(&h).verdict, assess(&h).epoch), (Verdict::Collapsed, Some(4)));
    }

    #[test]
    fn an_empty_output_in_the_warm_up_is_not_a_gan_failure() {
        let mut h = run(4, 5);
        h[0].val_predicted_fraction = 0.0;
        h[0].val_std = 0.0;
        assert_eq!(assess(&h).verdict, Verdict::Healthy);
    }
}
