//! The configuration of a phase-2 run: crops, U-Net, label mode, loss and training, read
//! from TOML and validated once at load. `configs/weak_box.toml` and `configs/weak_slice.toml`
//! hold the method's recommended settings for the two label modes.

use std::path::Path;

use fracmap_core::error_norm::ErrorNorm;
use serde::{Deserialize, Serialize};

use super::loss::WeakLossConfig;
use super::model::UNetConfig;
use crate::training_data::DataConfig;
use crate::vae::config::TrainConfig;

/// The whole configuration of a phase-2 run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeakConfig {
    /// Must match the VAE's `[data]` and input shape: the error map is computed on the same crop.
    pub data: DataConfig,
    pub model: UNetConfig,
    pub labels: LabelConfig,
    pub loss: WeakLossConfig,
    pub train: TrainConfig,
}

/// What supervises the U-Net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Supervision {
    /// Approach B: inside the fracture boxes vs everything else.
    Box,
    /// Approach A: the slices of the slice ranges vs every other slice.
    Slice,
    /// The upper bound: the true voxel masks, BCE + Dice (the `[loss]` section is unused).
    Full,
}

impl Supervision {
    pub fn name(self) -> &'static str {
        match self {
            Supervision::Box => "box",
            Supervision::Slice => "slice",
            Supervision::Full => "full",
        }
    }
}

/// The weak labels and the error map the U-Net reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelConfig {
    pub mode: Supervision,
    /// Per-crop normalisation of `E` to `[0, 1]`: the second input channel and the target of
    /// `L_consistency`.
    pub error_norm: ErrorNorm,
    /// Gaussian smoothing of `E` before normalisation, in voxels (0 = raw `|X - X_hat|`).
    pub error_sigma: f32,
    /// Normal vertebrae per fractured one in each epoch (drawn afresh every epoch) and in the
    /// validation set (a fixed, evenly spaced subset); 0 = every normal vertebra. Most
    /// vertebrae are normal: this balances the batches and bounds an epoch's time.
    pub normals_per_fracture: f64,
}

impl Default for LabelConfig {
    fn default() -> Self {
        LabelConfig {
            mode: Supervision::Box,
            error_norm: ErrorNorm::default(),
            error_sigma: 0.0,
            normals_per_fracture: 0.0,
        }
    }
}

impl LabelConfig {
    /// The smoothing as `error_map` takes it.
    pub fn sigma(&self) -> Option<f32> {
        (self.error_sigma > 0.0).then_some(self.error_sigma)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeakConfigError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("phase-2 configuration: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("phase-2 configuration: {0}")]
    Invalid(String),
}

impl WeakConfig {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, WeakConfigError> {
        let config: WeakConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, WeakConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| WeakConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a WeakConfig always serialises")
    }

    pub fn validate(&self) -> Result<(), WeakConfigError> {
        let invalid = |e: &dyn std::fmt::Display| WeakConfigError::Invalid(e.to_string());
        self.model.validate().map_err(|e| invalid(&e))?;
        self.data.crop_spec(self.model.input_shape).validate().map_err(|e| invalid(&format!("[data]: {e}")))?;
        self.loss.validate().map_err(|e| invalid(&e))?;
        self.labels.error_norm.validate().map_err(|e| invalid(&format!("labels.error_norm: {e}")))?;
        let sigma = self.labels.error_sigma;
        if !(sigma.is_finite() && sigma >= 0.0) {
            return Err(invalid(&format!("labels.error_sigma = {sigma}: must be finite and >= 0")));
        }
        let ratio = self.labels.normals_per_fracture;
        if !(ratio.is_finite() && ratio >= 0.0) {
            return Err(invalid(&format!("labels.normals_per_fracture = {ratio}: must be finite and >= 0")));
        }
        let t = &self.train;
        let checks = [
            ("train.epochs", t.epochs > 0, t.epochs.to_string()),
            ("train.batch_size", t.batch_size > 0, t.batch_size.to_string()),
            ("train.lr", t.lr.is_finite() && t.lr > 0.0, t.lr.to_string()),
            ("train.weight_decay", t.weight_decay.is_finite() && t.weight_decay >= 0.0, t.weight_decay.to_string()),
            ("train.val_every", t.val_every > 0, t.val_every.to_string()),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((field, _, value)) => Err(invalid(&format!("{field} = {value}: must be positive and finite"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weak::loss::Aggregation;

    #[test]
    fn the_shipped_configs_parse_with_the_methods_aggregations() {
        let boxes = WeakConfig::from_toml(include_str!("../../../configs/weak_box.toml")).unwrap();
        let slices = WeakConfig::from_toml(include_str!("../../../configs/weak_slice.toml")).unwrap();
        assert_eq!(
            (boxes.labels.mode, boxes.loss.agg, boxes.loss.agg2),
            (Supervision::Box, Aggregation::Mean, Aggregation::Mean)
        );
        assert_eq!(
            (slices.labels.mode, slices.loss.agg, slices.loss.agg2),
            (Supervision::Slice, Aggregation::Max, Aggregation::Max)
        );
        // The A-vs-B comparison holds everything but the labels and their aggregations fixed.
        assert_eq!((boxes.data, boxes.model, boxes.train), (slices.data, slices.model, slices.train));
    }

    #[test]
    fn round_trips_through_toml() {
        let mut config = WeakConfig::default();
        config.labels.mode = Supervision::Full;
        config.labels.error_sigma = 1.5;
        assert_eq!(WeakConfig::from_toml(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn unknown_fields_and_modes_are_refused() {
        let err = WeakConfig::from_toml("[labels]\nmod = \"box\"\n").unwrap_err();
        assert!(err.to_string().contains("mod"), "{err}");
        let err = WeakConfig::from_toml("[labels]\nmode = \"boxes\"\n").unwrap_err();
        assert!(err.to_string().contains("boxes"), "{err}");
    }

    #[test]
    fn a_bad_value_is_named() {
        let err = WeakConfig::from_toml("[train]\nlr = 0.0\n").unwrap_err();
        assert!(err.to_string().contains("train.lr = 0"), "{err}");
        let err = WeakConfig::from_toml("[labels]\nerror_sigma = -1.0\n").unwrap_err();
        assert!(err.to_string().contains("labels.error_sigma"), "{err}");
    }
}
