//! The VAE's configuration: model shape, loss, training and augmentation, read from TOML
//! and validated once at load. Every field may be left out; the defaults train the 64^3
//! model of the method (`configs/vae.toml` spells them out, `configs/vae_quick.toml` is a
//! run of minutes on two cores).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crops::CropSpecError;
use crate::training_data::DataConfig;

/// The whole configuration of a VAE run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaeConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub loss: LossConfig,
    pub train: TrainConfig,
    pub augment: AugmentConfig,
}

/// The network. Encoder: `levels` stride-2 stages (Conv3d kernel 4, padding 1: each halves
/// every axis) with `base_channels * 2^i` channels at stage `i`; decoder the mirror image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Crop shape in voxels, `[z, y, x]`; every axis a multiple of `2^levels`.
    pub input_shape: [usize; 3],
    /// Channels of the first encoder stage; doubled at every further stage.
    pub base_channels: usize,
    /// Stride-2 stages: 4 takes 64^3 to a 4^3 bottleneck.
    pub levels: usize,
    pub latent_dim: usize,
    pub norm: NormKind,
    /// Upper bound on GroupNorm's groups; a layer of `c` channels uses `gcd(c, norm_groups)`
    /// groups, so narrow test models still divide evenly. Ignored by the other norms.
    pub norm_groups: usize,
    pub leaky_relu_slope: f64,
}

/// The normalisation after every convolution but the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// GroupNorm: independent of the batch (batches here are 2-8 crops) and identical in
    /// training and inference. The default.
    Group,
    /// InstanceNorm (GroupNorm with one group per channel).
    Instance,
    /// BatchNorm: running statistics at inference; noisy with batches this small.
    Batch,
}

/// The loss: `recon + beta_e * KL` with `beta_e` ramped linearly over the warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    pub recon: ReconKind,
    /// Weight of the KL term (reconstruction is a mean over voxels, KL a sum over latent
    /// dimensions, see `loss.rs`, so the useful range is small). Measured on the phantom
    /// (docs/experiments/vae_phantom.md, 32^3 model): at 1e-4 the posterior collapses to
    /// ~20-30 nats and reconstructions are a mean vertebra; 1e-5 and 1e-6 keep 100-350 nats
    /// and reconstruct better (validation L1 0.035 and 0.034 after 30 epochs; 0.045 for 1e-4
    /// when stopped at epoch 10), with the same fracture detection. Too low a beta makes a plain autoencoder, which can learn to copy
    /// fractures too: keep it above 0.
    pub beta: f64,
    /// Epochs over which the KL weight rises linearly from 0 to `beta` (0 = full weight from
    /// the start): lets the decoder learn to reconstruct before the prior pulls on `z`.
    pub kl_warmup_epochs: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconKind {
    /// Mean absolute error: sharper reconstructions, the error map is in the loss's own unit.
    L1,
    /// Mean squared error.
    Mse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW's decoupled weight decay (0 = plain Adam).
    pub weight_decay: f64,
    /// Seeds the weights, the shuffling, the augmentation and the reparameterisation noise.
    pub seed: u64,
    /// Validate every this many epochs (and always after the last).
    pub val_every: usize,
}

/// Training-time augmentation (never applied to validation crops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Mirror left-right (the x axis) with probability 1/2. Only x: the spine is not
    /// symmetric cranio-caudally nor antero-posteriorly.
    pub flip: bool,
    /// Rotation in the axial (y, x) plane by an angle uniform in `[-rotate_deg, rotate_deg]`
    /// (0 = off).
    pub rotate_deg: f64,
    /// Intensity scale and shift, each uniform in `[-j, j]`: `x * (1 + a) + b`, clamped to
    /// `[0, 1]` (0 = off).
    pub intensity_jitter: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            input_shape: [64; 3],
            base_channels: 16,
            levels: 4,
            latent_dim: 128,
            norm: NormKind::Group,
            norm_groups: 8,
            leaky_relu_slope: 0.2,
        }
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig { recon: ReconKind::L1, beta: 1e-5, kl_warmup_epochs: 10 }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { epochs: 100, batch_size: 4, lr: 5e-4, weight_decay: 1e-5, seed: 0, val_every: 1 }
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig { flip: true, rotate_deg: 5.0, intensity_jitter: 0.05 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("VAE configuration: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("VAE configuration: [data]: {0}")]
    Data(#[from] CropSpecError),
    #[error("VAE configuration: {field} = {value}: {reason}")]
    Invalid { field: &'static str, value: String, reason: String },
}

impl VaeConfig {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: VaeConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a VaeConfig always serialises")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.validate()?;
        self.data.crop_spec(self.model.input_shape).validate()?;
        let loss = &self.loss;
        check("loss.beta", loss.beta, loss.beta.is_finite() && loss.beta >= 0.0, "must be finite and >= 0")?;
        let train = &self.train;
        check("train.epochs", train.epochs, train.epochs > 0, "must be at least 1")?;
        check("train.batch_size", train.batch_size, train.batch_size > 0, "must be at least 1")?;
        check("train.lr", train.lr, train.lr.is_finite() && train.lr > 0.0, "must be finite and > 0")?;
        let wd = train.weight_decay;
        check("train.weight_decay", wd, wd.is_finite() && wd >= 0.0, "must be finite and >= 0")?;
        check("train.val_every", train.val_every, train.val_every > 0, "must be at least 1")?;
        let aug = &self.augment;
        let deg = aug.rotate_deg;
        check("augment.rotate_deg", deg, deg.is_finite() && (0.0..=180.0).contains(&deg), "must be in [0, 180]")?;
        let j = aug.intensity_jitter;
        check("augment.intensity_jitter", j, j.is_finite() && (0.0..1.0).contains(&j), "must be in [0, 1)")
    }
}

impl ModelConfig {
    /// Spatial shape `[z, y, x]` at the bottleneck, after `levels` halvings.
    pub fn bottleneck_shape(&self) -> [usize; 3] {
        self.input_shape.map(|n| n >> self.levels)
    }

    /// Channels at encoder stage `i` (0-based); also the decoder's, mirrored.
    pub fn stage_channels(&self, i: usize) -> usize {
        self.base_channels << i
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check("model.levels", self.levels, (1..=6).contains(&self.levels), "must be 1 to 6")?;
        let unit = 1usize << self.levels;
        let shape = self.input_shape;
        let fits = shape.iter().all(|&n| n >= unit && n % unit == 0);
        let reason = format!("every axis must be a positive multiple of 2^levels = {unit}");
        check("model.input_shape", format!("{shape:?}"), fits, &reason)?;
        check("model.base_channels", self.base_channels, self.base_channels > 0, "must be at least 1")?;
        check("model.latent_dim", self.latent_dim, self.latent_dim > 0, "must be at least 1")?;
        check("model.norm_groups", self.norm_groups, self.norm_groups > 0, "must be at least 1")?;
        let slope = self.leaky_relu_slope;
        check("model.leaky_relu_slope", slope, slope.is_finite() && (0.0..1.0).contains(&slope), "must be in [0, 1)")
    }
}

fn check(field: &'static str, value: impl ToString, ok: bool, reason: &str) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(ConfigError::Invalid { field, value: value.to_string(), reason: reason.to_string() }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_gives_the_defaults() {
        assert_eq!(VaeConfig::from_toml("").unwrap(), VaeConfig::default());
    }

    #[test]
    fn the_shipped_configs_parse_and_the_default_one_spells_out_the_defaults() {
        assert_eq!(VaeConfig::from_toml(include_str!("../../../configs/vae.toml")).unwrap(), VaeConfig::default());
        let quick = VaeConfig::from_toml(include_str!("../../../configs/vae_quick.toml")).unwrap();
        assert_eq!(quick.model.input_shape, [32; 3]);
    }

    #[test]
    fn round_trips_through_toml() {
        let mut config = VaeConfig::default();
        config.model.norm = NormKind::Batch;
        config.loss.recon = ReconKind::Mse;
        assert_eq!(VaeConfig::from_toml(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = VaeConfig::from_toml("[model]\nbase_chanels = 8\n").unwrap_err();
        assert!(err.to_string().contains("base_chanels"), "{err}");
    }

    #[test]
    fn unknown_norm_is_refused() {
        assert!(VaeConfig::from_toml("[model]\nnorm = \"layer\"\n").is_err());
    }

    #[test]
    fn input_shape_must_divide_by_two_to_the_levels() {
        let err = VaeConfig::from_toml("[model]\ninput_shape = [64, 64, 40]\n").unwrap_err();
        assert!(err.to_string().contains("model.input_shape = [64, 64, 40]"), "{err}");
        assert!(err.to_string().contains("2^levels = 16"), "{err}");
    }

    #[test]
    fn negative_beta_is_refused() {
        let err = VaeConfig::from_toml("[loss]\nbeta = -1.0\n").unwrap_err();
        assert!(err.to_string().contains("loss.beta"), "{err}");
    }

    #[test]
    fn zero_batch_size_is_refused() {
        let err = VaeConfig::from_toml("[train]\nbatch_size = 0\n").unwrap_err();
        assert!(err.to_string().contains("train.batch_size"), "{err}");
    }

    #[test]
    fn bottleneck_of_the_default_model_is_4_cubed() {
        let model = ModelConfig::default();
        assert_eq!(model.bottleneck_shape(), [4; 3]);
        assert_eq!(model.stage_channels(model.levels - 1), 128);
    }
}
