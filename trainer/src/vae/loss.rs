//! The VAE loss: `recon + beta * KL`.
//!
//! Reductions (they set the scale `beta` is meant for):
//! - `recon`: L1 or MSE, mean over every voxel of every crop of the batch;
//! - `KL = -0.5 * mean_over_batch(sum_over_latent(1 + logvar - mu^2 - exp(logvar)))`, the KL
//!   divergence of `N(mu, exp(logvar))` from `N(0, 1)` per crop, in nats, averaged over the
//!   batch.

use burn::prelude::*;

use super::config::{LossConfig, ReconKind};
use super::model::VaeOutput;

/// The loss and its two parts, each a one-element tensor.
#[derive(Debug, Clone)]
pub struct VaeLoss {
    /// `recon + beta * kl`: what is minimised.
    pub total: Tensor<1>,
    pub recon: Tensor<1>,
    pub kl: Tensor<1>,
}

/// Mean over voxels and batch of `|x - x_hat|` or `(x - x_hat)^2`; `x`, `x_hat` `[B, 1, D, H, W]`.
pub fn reconstruction_loss(kind: ReconKind, x: Tensor<5>, x_hat: Tensor<5>) -> Tensor<1> {
    let diff = x - x_hat;
    match kind {
        ReconKind::L1 => diff.abs().mean(),
        ReconKind::Mse => diff.square().mean(),
    }
}

/// `-0.5 * mean_b(sum_latent(1 + logvar - mu^2 - exp(logvar)))`; `mu`, `logvar` `[B, latent]`.
pub fn kl_divergence(mu: Tensor<2>, logvar: Tensor<2>) -> Tensor<1> {
    let terms = logvar.clone().add_scalar(1.0) - mu.square() - logvar.exp();
    terms.sum_dim(1).mean().mul_scalar(-0.5)
}

/// The loss of a forward pass on `x` with KL weight `beta`.
pub fn vae_loss(recon: ReconKind, beta: f64, x: Tensor<5>, output: VaeOutput) -> VaeLoss {
    let recon = reconstruction_loss(recon, x, output.reconstruction);
    let kl = kl_divergence(output.mu, output.logvar);
    VaeLoss { total: recon.clone() + kl.clone().mul_scalar(beta), recon, kl }
}

impl LossConfig {
    /// The KL weight during 0-based `epoch`: `beta * epoch / kl_warmup_epochs`, capped at
    /// `beta` (so epoch 0 trains the reconstruction alone when there is a warm-up).
    pub fn beta_at(&self, epoch: usize) -> f64 {
        if self.kl_warmup_epochs == 0 {
            self.beta
        } else {
            self.beta * (epoch as f64 / self.kl_warmup_epochs as f64).min(1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LN2: f32 = std::f32::consts::LN_2;

    fn assert_close(actual: Tensor<1>, expected: f32) {
        let actual: f32 = actual.into_scalar();
        assert!((actual - expected).abs() < 1e-6, "{actual} != {expected}");
    }

    fn tensor2(values: [[f32; 2]; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::from(values), device)
    }

    /// x = [0, 0.5, 1, 1], x_hat = [0.5, 0.5, 0, 1] as one 1x1x1x2x2 crop.
    fn pair(device: &Device) -> (Tensor<5>, Tensor<5>) {
        let x = Tensor::<1>::from_floats([0.0, 0.5, 1.0, 1.0], device).reshape([1, 1, 1, 2, 2]);
        let x_hat = Tensor::<1>::from_floats([0.5, 0.5, 0.0, 1.0], device).reshape([1, 1, 1, 2, 2]);
        (x, x_hat)
    }

    #[test]
    fn l1_is_the_mean_absolute_difference() {
        // |diff| = 0.5, 0, 1, 0 -> mean 1.5 / 4 = 0.375
        let (x, x_hat) = pair(&Device::flex());
        assert_close(reconstruction_loss(ReconKind::L1, x, x_hat), 0.375);
    }

    #[test]
    fn mse_is_the_mean_squared_difference() {
        // diff^2 = 0.25, 0, 1, 0 -> mean 1.25 / 4 = 0.3125
        let (x, x_hat) = pair(&Device::flex());
        assert_close(reconstruction_loss(ReconKind::Mse, x, x_hat), 0.3125);
    }

    #[test]
    fn kl_matches_the_hand_computation() {
        // mu = [[0, 1], [2, -1]], logvar = [[0, 0], [ln 2, 0]]
        // 1 + logvar - mu^2 - exp(logvar):
        //   crop 0: 1 + 0 - 0 - 1 = 0;             1 + 0 - 1 - 1 = -1   -> sum -1
        //   crop 1: 1 + ln2 - 4 - 2 = -5 + ln2;    1 + 0 - 1 - 1 = -1   -> sum -6 + ln2
        // mean over the batch: (-7 + ln2) / 2;  KL = -0.5 * that = (7 - ln2) / 4 = 1.5767132
        let device = Device::flex();
        let mu = tensor2([[0.0, 1.0], [2.0, -1.0]], &device);
        let logvar = tensor2([[0.0, 0.0], [LN2, 0.0]], &device);
        assert_close(kl_divergence(mu, logvar), (7.0 - LN2) / 4.0);
    }

    #[test]
    fn kl_of_the_prior_is_zero() {
        let device = Device::flex();
        assert_close(kl_divergence(Tensor::zeros([3, 5], &device), Tensor::zeros([3, 5], &device)), 0.0);
    }

    #[test]
    fn total_is_recon_plus_beta_times_kl() {
        // 0.375 + 0.1 * (7 - ln2) / 4
        let device = Device::flex();
        let (x, x_hat) = pair(&device);
        let output = VaeOutput {
            reconstruction: x_hat,
            mu: tensor2([[0.0, 1.0], [2.0, -1.0]], &device),
            logvar: tensor2([[0.0, 0.0], [LN2, 0.0]], &device),
        };
        let loss = vae_loss(ReconKind::L1, 0.1, x, output);
        assert_close(loss.total, 0.375 + 0.1 * (7.0 - LN2) / 4.0);
    }

    #[test]
    fn kl_gradient_pulls_mu_towards_zero_and_variance_towards_one() {
        // dKL/dmu = mu / B: along mu, so a descent step moves mu towards 0.
        //   [[0, 1], [2, -1]] / 2 = [[0, 0.5], [1, -0.5]]
        // dKL/dlogvar = (exp(logvar) - 1) / (2B): zero at variance 1.
        //   [[0, 0], [(2 - 1) / 4, 0]] = [[0, 0], [0.25, 0]]
        let device = Device::flex().autodiff();
        let mu = tensor2([[0.0, 1.0], [2.0, -1.0]], &device).require_grad();
        let logvar = tensor2([[0.0, 0.0], [LN2, 0.0]], &device).require_grad();
        let grads = kl_divergence(mu.clone(), logvar.clone()).backward();
        let grad_mu = mu.grad(&grads).unwrap().into_data();
        let grad_logvar = logvar.grad(&grads).unwrap().into_data();
        grad_mu.assert_approx_eq::<f32>(&TensorData::from([[0.0, 0.5], [1.0, -0.5]]), Default::default());
        grad_logvar.assert_approx_eq::<f32>(&TensorData::from([[0.0, 0.0], [0.25, 0.0]]), Default::default());
    }

    #[test]
    fn beta_ramps_linearly_over_the_warm_up() {
        let config = LossConfig { beta: 1e-3, kl_warmup_epochs: 4, ..LossConfig::default() };
        let betas: Vec<f64> = (0..6).map(|e| config.beta_at(e)).collect();
        assert_eq!(betas, [0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3]);
        assert_eq!(LossConfig { kl_warmup_epochs: 0, ..config }.beta_at(0), 1e-3);
    }
}
