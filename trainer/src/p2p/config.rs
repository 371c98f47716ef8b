//! The configuration of a pix2pix-LSTM run (`configs/p2p_lstm.toml`): crops, the slices
//! that train, the two networks, the loss and the GAN schedule, read from TOML and validated
//! once at load, every bad value named by its path.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::{DiscriminatorConfig, GeneratorConfig};
use crate::training_data::DataConfig;

/// The whole configuration of a pix2pix-LSTM run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// The crops the slices come from; with `slices.depth` and the generator's slice shape,
    /// the same crop cache as the weak U-Net's (`configs/weak_box.toml`), so both are scored
    /// on the same vertebrae.
    pub data: DataConfig,
    pub slices: SliceConfig,
    pub generator: GeneratorConfig,
    pub discriminator: DiscriminatorConfig,
    pub loss: P2pLossConfig,
    pub train: P2pTrainConfig,
}

/// Where the target masks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskSource {
    /// The true masks of the manifest's labeled cases.
    Truth,
    /// Draft masks written by the weak model (`drafts/<crop>.nii.gz` on each crop's grid, as
    /// `fracmap-train weak` writes them): the pseudo-label route of the method.
    Drafts,
}

/// Which slices train, and their targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SliceConfig {
    /// Axial slices per crop: the crop's z extent in voxels (its y, x are the generator's
    /// `slice_shape`).
    pub depth: usize,
    pub source: MaskSource,
    /// The folder of draft masks when `source = "drafts"`; a crop without a draft does not train.
    pub drafts: Option<PathBuf>,
    /// Slices without fracture per slice with one in each epoch (drawn afresh every epoch);
    /// 0 = every slice. Fracture voxels are about 1% of a crop: without this an epoch is
    /// mostly empty slices.
    pub normal_slices_per_fracture: f64,
}

impl Default for SliceConfig {
    fn default() -> Self {
        SliceConfig { depth: 32, source: MaskSource::Truth, drafts: None, normal_slices_per_fracture: 1.0 }
    }
}

/// The adversarial loss's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adversarial {
    /// pix2pix's: binary cross-entropy of the patch logits.
    Vanilla,
    /// Mao et al.'s least squares: `(D - 1)^2` and `D^2` on the patch logits.
    LeastSquares,
}

/// The segmentation term's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentationLoss {
    /// pix2pix's mean `|P - T|` over voxels.
    L1,
    /// Soft Dice over the batch's voxels: unlike L1 it does not reward an empty mask when
    /// fractures are 1% of the voxels.
    Dice,
}

/// `L_G = w_adv * adv(D(x, G(x)), real) + lambda * seg(G(x), T)`;
/// `L_D = (adv(D(x, T), real) + adv(D(x, G(x)), fake)) / 2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pLossConfig {
    pub adversarial: Adversarial,
    pub segmentation: SegmentationLoss,
    /// pix2pix's 100.
    pub lambda: f64,
    pub w_adv: f64,
}

impl Default for P2pLossConfig {
    fn default() -> Self {
        P2pLossConfig {
            adversarial: Adversarial::Vanilla,
            segmentation: SegmentationLoss::Dice,
            lambda: 100.0,
            w_adv: 1.0,
        }
    }
}

/// The schedule: Adam for both networks (pix2pix: lr 2e-4, beta1 0.5), the generator alone
/// on the segmentation loss for `warmup_epochs`, then both; the learning rate constant, then
/// decaying linearly to 0 over the last `decay_epochs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pTrainConfig {
    pub epochs: usize,
    pub warmup_epochs: usize,
    pub decay_epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Seeds the weights, the order, the slices drawn and the flips.
    pub seed: u64,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
}

impl Default for P2pTrainConfig {
    fn default() -> Self {
        P2pTrainConfig {
            epochs: 30,
            warmup_epochs: 5,
            decay_epochs: 10,
            batch_size: 16,
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            seed: 0,
            flip: true,
        }
    }
}

impl P2pTrainConfig {
    /// The learning rate of 1-based `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let decay_start = self.epochs.saturating_sub(self.decay_epochs);
        if self.decay_epochs == 0 || epoch <= decay_start {
            return self.lr;
        }
        // Epoch decay_start + k of decay_epochs: lr * (1 - k / (decay_epochs + 1)), never 0.
        let k = (epoch - decay_start) as f64;
        self.lr * (1.0 - k / (self.decay_epochs as f64 + 1.0))
    }

    /// Whether the discriminator trains (and the adversarial term counts) in 1-based `epoch`.
    pub fn adversarial_at(&self, epoch: usize) -> bool {
        epoch > self.warmup_epochs
    }
}

#[derive(Debug, thiserror::Error)]
pub enum P2pConfigError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("pix2pix-LSTM configuration: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("pix2pix-LSTM configuration: {0}")]
    Invalid(String),
}

impl P2pConfig {
    pub fn from_toml(text: &str) -> Result<Self, P2pConfigError> {
        let config: P2pConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, P2pConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| P2pConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a P2pConfig always serialises")
    }

    /// The crop shape `[z, y, x]`: `slices.depth` axial slices of the generator's shape.
    pub fn crop_shape(&self) -> [usize; 3] {
        let [h, w] = self.generator.slice_shape;
        [self.slices.depth, h, w]
    }

    pub fn validate(&self) -> Result<(), P2pConfigError> {
        let invalid = |e: String| P2pConfigError::Invalid(e);
        self.generator.validate().map_err(|e| invalid(e.to_string()))?;
        self.discriminator.validate().map_err(|e| invalid(e.to_string()))?;
        self.data.crop_spec(self.crop_shape()).validate().map_err(|e| invalid(format!("[data]: {e}")))?;
        let s = &self.slices;
        if s.depth == 0 {
            return Err(invalid("slices.depth = 0: must be at least 1".into()));
        }
        if s.source == MaskSource::Drafts && s.drafts.is_none() {
            return Err(invalid("slices.drafts: required when slices.source = \"drafts\"".into()));
        }
        let ratio = s.normal_slices_per_fracture;
        if !(ratio.is_finite() && ratio >= 0.0) {
            return Err(invalid(format!("slices.normal_slices_per_fracture = {ratio}: must be finite and >= 0")));
        }
        let l = &self.loss;
        for (field, value) in [("loss.lambda", l.lambda), ("loss.w_adv", l.w_adv)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid(format!("{field} = {value}: must be finite and >= 0")));
            }
        }
        let t = &self.train;
        let checks = [
            ("train.epochs", t.epochs > 0, t.epochs.to_string(), "must be at least 1"),
            ("train.batch_size", t.batch_size > 0, t.batch_size.to_string(), "must be at least 1"),
            ("train.lr", t.lr.is_finite() && t.lr > 0.0, t.lr.to_string(), "must be positive and finite"),
            ("train.beta1", (0.0..1.0).contains(&t.beta1), t.beta1.to_string(), "must be in [0, 1)"),
            ("train.beta2", (0.0..1.0).contains(&t.beta2), t.beta2.to_string(), "must be in [0, 1)"),
            (
                "train.warmup_epochs",
                t.warmup_epochs <= t.epochs,
                t.warmup_epochs.to_string(),
                "must not exceed train.epochs",
            ),
            (
                "train.decay_epochs",
                t.decay_epochs <= t.epochs,
                t.decay_epochs.to_string(),
                "must not exceed train.epochs",
            ),
        ];
        match checks.into_iter().find(|(_, ok, _, _)| !ok) {
            Some((field, _, value, reason)) => Err(invalid(format!("{field} = {value}: {reason}"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses_with_pix2pix_settings_on_the_weak_u_nets_crops() {
        let config = P2pConfig::from_toml(include_str!("../../../configs/p2p_lstm.toml")).unwrap();
        assert_eq!((config.loss.lambda, config.train.lr, config.train.beta1), (100.0, 2e-4, 0.5));
        assert_eq!(config.generator.context, 5);
        let weak = crate::weak::config::WeakConfig::from_toml(include_str!("../../../configs/weak_box.toml")).unwrap();
        assert_eq!(config.data, weak.data);
        assert_eq!(config.crop_shape(), weak.model.input_shape, "the same crop cache and vertebrae");
    }

    #[test]
    fn round_trips_through_toml() {
        let mut config = P2pConfig::default();
        config.slices.source = MaskSource::Drafts;
        config.slices.drafts = Some("runs/weak/drafts".into());
        config.loss.adversarial = Adversarial::LeastSquares;
        assert_eq!(P2pConfig::from_toml(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn bad_values_are_named_by_their_path() {
        let err = |text: &str| P2pConfig::from_toml(text).unwrap_err().to_string();
        assert!(err("[train]\nbeta1 = 1.0\n").contains("train.beta1 = 1"));
        assert!(err("[train]\nepochs = 3\nwarmup_epochs = 4\n").contains("train.warmup_epochs = 4"));
        assert!(err("[slices]\nsource = \"drafts\"\n").contains("slices.drafts"));
        assert!(err("[loss]\nlambda = -1.0\n").contains("loss.lambda = -1"));
        assert!(err("[loss]\nadversarial = \"wasserstein\"\n").contains("wasserstein"));
        assert!(err("[slices]\ndepht = 3\n").contains("depht"));
    }

    #[test]
    fn the_learning_rate_is_constant_then_decays_linearly_short_of_zero() {
        let t = P2pTrainConfig { epochs: 10, warmup_epochs: 5, decay_epochs: 4, lr: 1.0, ..P2pTrainConfig::default() };
        assert!((1..=6).all(|e| t.lr_at(e) == 1.0));
        for (epoch, expected) in [(6, 1.0), (7, 0.8), (8, 0.6), (9, 0.4), (10, 0.2)] {
            assert!((t.lr_at(epoch) - expected).abs() < 1e-12, "epoch {epoch}: {}", t.lr_at(epoch));
        }
        let constant = P2pTrainConfig { decay_epochs: 0, ..t.clone() };
        assert!((1..=10).all(|e| constant.lr_at(e) == 1.0));
        assert!(!t.adversarial_at(5) && t.adversarial_at(6));
    }
}
