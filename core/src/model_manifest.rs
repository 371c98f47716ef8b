//! The manifest that travels beside every exported model: what the model is, what it takes
//! and returns, how its input must be prepared, where it came from and how well it did.
//!
//! A model repository holds one folder per model version (Triton's layout):
//!
//! ```text
//! models/<name>/<version>/model.onnx       the graph with its weights
//! models/<name>/<version>/manifest.json    this type, as JSON
//! ```
//!
//! The trainer writes manifests (`fracmap-train export`), the server reads them; both use
//! this one type, so the preprocessing numbers (spacing, HU window, patch) have one source.
//! The manifest names the model file's SHA-256: [`ModelManifest::verify_model`] refuses a
//! model file that is not the one exported.
//!
//! A phase-2 U-Net reads the error map of a phase-1 VAE: its manifest says which VAE and how
//! the map becomes the U-Net's second input channel ([`ErrorInput`]), and the probability
//! threshold of its draft mask ([`ModelManifest::mask_threshold`]). Both fields are absent
//! from a VAE's manifest, and from manifests written before they existed.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error_norm::ErrorNorm;
use crate::preprocess::HuWindow;

/// The manifest's file name in a version folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The model's file name in a version folder.
pub const MODEL_FILE: &str = "model.onnx";
/// The manifest format this code writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// Everything known about one exported model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The model's name, also its folder in the repository: `[a-z0-9][a-z0-9_-]*`.
    pub name: String,
    /// The version, also its folder: a positive integer, higher is newer.
    pub version: u64,
    /// Which network: "vae", "unet", ...
    pub architecture: String,
    /// The network's configuration as the trainer read it (architecture-specific).
    pub config: serde_json::Value,
    pub onnx: OnnxFile,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub preprocessing: Preprocessing,
    /// How to read the reconstruction-error output, for models that have one.
    pub error_normalisation: Option<ErrorNormalisation>,
    /// How the error-map input channel is made, for models that read a VAE's error map (the
    /// phase-2 U-Net).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_input: Option<ErrorInput>,
    /// The probability at or above which a voxel belongs to the draft fracture mask, chosen
    /// with the training and validation folds (the best pooled Dice); for models with a
    /// probability output whose run chose one for the exported weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_threshold: Option<f32>,
    /// Sentences a user of the model needs (which axes are dynamic, what the graph leaves out).
    pub notes: Vec<String>,
    /// The training run, when the model came from one.
    pub training: Option<TrainingRecord>,
    /// The checkpoint exported and its validation numbers.
    pub validation: Option<Validation>,
    /// Test-fold numbers of the run's evaluation report, when there is one for this checkpoint.
    pub evaluation: Option<Evaluation>,
    pub exported: ExportRecord,
}

/// The ONNX file of a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxFile {
    /// Its file name in the version folder ([`MODEL_FILE`]).
    pub file: String,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub bytes: u64,
    /// The default-domain opset the graph imports.
    pub opset: u32,
    pub ir_version: u32,
}

impl OnnxFile {
    /// The description of `model`, the bytes of [`MODEL_FILE`], of that opset and IR version.
    pub fn of(model: &[u8], opset: u32, ir_version: u32) -> Self {
        OnnxFile {
            file: MODEL_FILE.to_string(),
            sha256: sha256_hex(model),
            bytes: model.len() as u64,
            opset,
            ir_version,
        }
    }
}

/// One input or output of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: ElementType,
    /// Axis lengths; a named axis (e.g. "batch") is dynamic.
    pub shape: Vec<Dim>,
    /// What the values are, in words (units, axes).
    pub meaning: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElementType {
    Float32,
}

/// An axis length: fixed, or dynamic with a name (in JSON, `32` or `"batch"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    Dynamic(String),
}

/// How a CT volume becomes the model's input: crop around the vertebral body, resample to
/// `spacing_mm`, pad or cut to `patch`, window to `[0, 1]`. The same numbers as the
/// trainer's crop cache (`[data]` of the training configuration, `model.input_shape`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Voxel spacing of a crop, mm, `[z, y, x]`.
    pub spacing_mm: [f64; 3],
    /// Context kept around the vertebral body's box on every side, mm.
    pub margin_mm: f64,
    /// HU clipped to this window and scaled linearly to `[0, 1]`.
    pub hu_window: HuWindow,
    /// The crop's shape in voxels, `[z, y, x]`: the input's spatial axes.
    pub patch: [usize; 3],
}

/// How the reconstruction-error output relates to HU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorNormalisation {
    /// The output it describes.
    pub output: String,
    /// How the graph computes it, in words.
    pub definition: String,
    /// HU per unit of error: the window's width (an error of 1 spans the whole window).
    pub hu_per_unit: f64,
}

/// How a phase-2 model's error-map channel (input channel 1; channel 0 is the CT crop) is
/// made from the crop `X` that `preprocessing` prepares:
///
/// 1. `E = |X - X_hat|`: the error output of the paired VAE (its manifest's
///    `error_normalisation.output`), the VAE of run `vae_run` at epoch `vae_epoch`, run on the
///    same crop (so the two manifests' `preprocessing` are equal);
/// 2. when `error_sigma > 0`, `E` blurred by
///    [`gaussian_smooth`](crate::smoothing::gaussian_smooth) with `error_sigma` voxels;
/// 3. `E` scaled to `[0, 1]` on the crop's own statistics by
///    [`normalise_error`](crate::error_norm::normalise_error) with `error_norm`.
///
/// [`ModelManifest::takes_errors_from`] tells whether a VAE's manifest is the paired one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorInput {
    /// The VAE's training run folder, absolute: its manifest's `training.run`.
    pub vae_run: PathBuf,
    /// Epochs the VAE had trained when its weights were saved (the checkpoint the U-Net's
    /// training read): its manifest's `validation.epoch`.
    pub vae_epoch: usize,
    /// Standard deviation of the Gaussian smoothing of `E`, voxels; 0 = not smoothed.
    pub error_sigma: f32,
    /// The per-crop scaling of `E` to `[0, 1]`.
    pub error_norm: ErrorNorm,
}

/// Where the weights came from: the training run's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// The run folder, absolute.
    pub run: PathBuf,
    /// The dataset manifest the run read, absolute.
    pub data: PathBuf,
    pub test_fold: usize,
    pub validation_fold: usize,
    pub folds: usize,
    pub train_crops: usize,
    pub validation_crops: usize,
    /// The source revision that trained the model, when known.
    pub git_revision: Option<String>,
    /// Seconds since the Unix epoch when the run started.
    pub started: u64,
}

/// The checkpoint exported and how it did on the validation fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// The checkpoint exported, in the run folder: a folder (the VAE's, e.g. "epoch-0019") or
    /// a file (the U-Net's, e.g. "model_best.bpk").
    pub checkpoint: String,
    /// "best" (lowest validation loss) or "last".
    pub selected: String,
    /// Epochs trained when the checkpoint was written.
    pub epoch: usize,
    pub best_epoch: Option<usize>,
    pub best_val_loss: Option<f64>,
    /// The exported epoch's row of the run's `metrics.csv` (column -> value; empty cells left out).
    pub metrics: BTreeMap<String, f64>,
}

/// Numbers of the run's evaluation report on its test fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    /// The report read, relative to the run folder.
    pub report: String,
    /// The report's statements about the evaluation (fold, checkpoint, smoothing, counts).
    pub notes: Vec<String>,
    /// Measure -> value; `None` where the report has none (one class missing).
    pub measures: BTreeMap<String, Option<f64>>,
}

/// Who exported the model and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRecord {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The exporting program and its version, e.g. "fracmap-train 0.1.0".
    pub tool: String,
    /// The exporter's source revision, when known.
    pub git_revision: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a model manifest: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("model manifest: {field} = {value}: {reason}")]
    Invalid { field: &'static str, value: String, reason: &'static str },
    #[error("{path}: SHA-256 {actual}, the manifest says {expected}: not the exported model")]
    Checksum { path: PathBuf, expected: String, actual: String },
}

impl ModelManifest {
    /// Reads and validates `manifest.json` at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read(path).map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
        let manifest: ModelManifest = serde_json::from_slice(&text)
            .map_err(|source| ManifestError::Parse { path: path.to_path_buf(), source })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Pretty JSON, as written to `manifest.json`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        json.push(b'\n');
        json
    }

    /// Checks what the types cannot: names, the checksum's form, shapes, preprocessing.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let format_ok = self.format == MANIFEST_FORMAT;
        check("format", self.format, format_ok, "this build reads manifest format 1")?;
        check("name", &self.name, is_model_name(&self.name), "must match [a-z0-9][a-z0-9_-]*")?;
        check("version", self.version, self.version > 0, "must be a positive integer")?;
        let file = &self.onnx.file;
        let plain = !file.is_empty() && !file.contains(['/', '\\']) && file != "." && file != "..";
        check("onnx.file", file, plain, "must be a file name in the version folder")?;
        let sha = &self.onnx.sha256;
        let hex = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        check("onnx.sha256", sha, hex, "must be 64 lower-case hex digits")?;
        check("inputs", self.inputs.len(), !self.inputs.is_empty(), "a model takes at least one input")?;
        check("outputs", self.outputs.len(), !self.outputs.is_empty(), "a model gives at least one output")?;
        let mut names = HashSet::new();
        for spec in self.inputs.iter().chain(&self.outputs) {
            check("inputs/outputs name", &spec.name, !spec.name.is_empty(), "must not be empty")?;
            check("inputs/outputs name", &spec.name, names.insert(&spec.name), "appears twice")?;
            let dims_ok = !spec.shape.is_empty()
                && spec.shape.iter().all(|d| match d {
                    Dim::Fixed(n) => *n > 0,
                    Dim::Dynamic(name) => !name.is_empty(),
                });
            let shape = format!("{}: {:?}", spec.name, spec.shape);
            check("shape", shape, dims_ok, "needs axes of positive or named length")?;
        }
        let p = &self.preprocessing;
        let spacing_ok = p.spacing_mm.iter().all(|s| s.is_finite() && *s > 0.0);
        check("preprocessing.spacing_mm", format!("{:?}", p.spacing_mm), spacing_ok, "must be finite and > 0")?;
        let margin_ok = p.margin_mm.is_finite() && p.margin_mm >= 0.0;
        check("preprocessing.margin_mm", p.margin_mm, margin_ok, "must be finite and >= 0")?;
        let patch_ok = p.patch.iter().all(|&n| n > 0);
        check("preprocessing.patch", format!("{:?}", p.patch), patch_ok, "every axis must be at least 1")?;
        if let Some(error) = &self.error_normalisation {
            let named = self.outputs.iter().any(|o| o.name == error.output);
            check("error_normalisation.output", &error.output, named, "names no output")?;
        }
        if let Some(input) = &self.error_input {
            let norm = input.error_norm;
            let norm_ok = norm.validate().is_ok();
            check(
                "error_input.error_norm",
                format!("{norm:?}"),
                norm_ok,
                "percentiles must be in 0..=100, low < high",
            )?;
            let sigma = input.error_sigma;
            check("error_input.error_sigma", sigma, sigma.is_finite() && sigma >= 0.0, "must be finite and >= 0")?;
        }
        if let Some(threshold) = self.mask_threshold {
            // As `pseudo_label` takes it: at 0 every voxel would be drafted.
            let ok = threshold > 0.0 && threshold <= 1.0;
            check("mask_threshold", threshold, ok, "must be a probability in (0, 1]")?;
        }
        Ok(())
    }

    /// Whether `vae` is the model whose error output makes this model's error channel: the
    /// VAE run and epoch of [`ModelManifest::error_input`], with the same preprocessing and
    /// an error output. False for a model without `error_input`.
    pub fn takes_errors_from(&self, vae: &ModelManifest) -> bool {
        let Some(input) = &self.error_input else { return false };
        vae.training.as_ref().is_some_and(|t| t.run == input.vae_run)
            && vae.validation.as_ref().is_some_and(|v| v.epoch == input.vae_epoch)
            && vae.preprocessing == self.preprocessing
            && vae.error_normalisation.is_some()
    }

    /// Checks that the model file in `version_dir` is the one exported (its SHA-256) and
    /// returns its path.
    pub fn verify_model(&self, version_dir: &Path) -> Result<PathBuf, ManifestError> {
        let path = version_dir.join(&self.onnx.file);
        let actual = sha256_file(&path).map_err(|source| ManifestError::Read { path: path.clone(), source })?;
        if actual != self.onnx.sha256 {
            return Err(ManifestError::Checksum { path, expected: self.onnx.sha256.clone(), actual });
        }
        Ok(path)
    }
}

/// The version a folder name stands for: a positive integer written plainly (`"3"`, not
/// `"03"`, so that no two folders claim one version).
pub fn parse_version(folder_name: &str) -> Option<u64> {
    folder_name.parse::<u64>().ok().filter(|&v| v > 0 && v.to_string() == folder_name)
}

/// Whether `name` can be a model's name (and folder): `[a-z0-9][a-z0-9_-]*`.
pub fn is_model_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file's bytes, read in pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn check(field: &'static str, value: impl ToString, ok: bool, reason: &'static str) -> Result<(), ManifestError> {
    if ok { Ok(()) } else { Err(ManifestError::Invalid { field, value: value.to_string(), reason }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(model_bytes: &[u8]) -> ModelManifest {
        let volume = |name: &str| TensorSpec {
            name: name.to_string(),
            dtype: ElementType::Float32,
            shape: vec![Dim::Dynamic("batch".into()), Dim::Fixed(1), Dim::Fixed(8), Dim::Fixed(8), Dim::Fixed(8)],
            meaning: "a crop".to_string(),
        };
        ModelManifest {
            format: MANIFEST_FORMAT,
            name: "vae".to_string(),
            version: 2,
            architecture: "vae".to_string(),
            config: serde_json::json!({"latent_dim": 8}),
            onnx: OnnxFile::of(model_bytes, 17, 8),
            inputs: vec![volume("ct")],
            outputs: vec![volume("reconstruction"), volume("error")],
            preprocessing: Preprocessing {
                spacing_mm: [2.0; 3],
                margin_mm: 6.0,
                hu_window: HuWindow::new(-250.0, 1250.0).unwrap(),
                patch: [8; 3],
            },
            error_normalisation: Some(ErrorNormalisation {
                output: "error".to_string(),
                definition: "|ct - reconstruction|".to_string(),
                hu_per_unit: 1500.0,
            }),
            error_input: None,
            mask_threshold: None,
            notes: vec![],
            training: None,
            validation: None,
            evaluation: None,
            exported: ExportRecord { at: 0, tool: "test".to_string(), git_revision: None },
        }
    }

    /// A VAE manifest with its run and epoch, and a U-Net manifest that reads its errors.
    fn vae_and_unet() -> (ModelManifest, ModelManifest) {
        let mut vae = manifest(b"vae");
        vae.training = Some(TrainingRecord {
            run: PathBuf::from("/runs/vae"),
            data: PathBuf::from("/data/manifest.json"),
            test_fold: 0,
            validation_fold: 1,
            folds: 5,
            train_crops: 10,
            validation_crops: 3,
            git_revision: None,
            started: 0,
        });
        vae.validation = Some(Validation {
            checkpoint: "epoch-0007".to_string(),
            selected: "best".to_string(),
            epoch: 7,
            best_epoch: Some(7),
            best_val_loss: Some(0.25),
            metrics: BTreeMap::new(),
        });
        let mut unet = manifest(b"unet");
        unet.name = "unet".to_string();
        unet.architecture = "unet".to_string();
        unet.error_normalisation = None;
        unet.outputs.truncate(1);
        unet.outputs[0].name = "probability".to_string();
        unet.error_input = Some(ErrorInput {
            vae_run: PathBuf::from("/runs/vae"),
            vae_epoch: 7,
            error_sigma: 1.5,
            error_norm: ErrorNorm::Percentile { low: 0.5, high: 99.5 },
        });
        unet.mask_threshold = Some(0.42);
        (vae, unet)
    }

    #[test]
    fn versions_are_plain_positive_integers() {
        assert_eq!(parse_version("7"), Some(7));
        for name in ["0", "07", "-1", "v1", "", "1.0"] {
            assert_eq!(parse_version(name), None, "{name:?}");
        }
    }

    #[test]
    fn sha256_of_abc_is_the_standard_one() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn sha256_of_a_file_equals_that_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(&bytes));
    }

    #[test]
    fn round_trips_through_json_and_reads_dims_as_numbers_or_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let m = manifest(b"model");
        std::fs::write(&path, m.to_json()).unwrap();
        assert_eq!(ModelManifest::load(&path).unwrap(), m);
        let json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(json["inputs"][0]["shape"], serde_json::json!(["batch", 1, 8, 8, 8]));
        assert_eq!(json["preprocessing"]["hu_window"], serde_json::json!({"min": -250.0, "max": 1250.0}));
    }

    #[test]
    fn a_unet_manifest_round_trips_with_its_error_input_and_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let (_, unet) = vae_and_unet();
        std::fs::write(&path, unet.to_json()).unwrap();
        assert_eq!(ModelManifest::load(&path).unwrap(), unet);
        let json: serde_json::Value = serde_json::from_slice(&unet.to_json()).unwrap();
        assert_eq!(
            json["error_input"]["error_norm"],
            serde_json::json!({"kind": "percentile", "low": 0.5, "high": 99.5})
        );
    }

    #[test]
    fn a_manifest_without_the_phase_2_fields_loads_and_is_written_without_them() {
        // Manifests written before `error_input` and `mask_threshold` existed lack both keys.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let (_, unet) = vae_and_unet();
        let mut json: serde_json::Value = serde_json::from_slice(&unet.to_json()).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("error_input");
        object.remove("mask_threshold");
        std::fs::write(&path, json.to_string()).unwrap();
        let old = ModelManifest::load(&path).unwrap();
        assert_eq!(old, ModelManifest { error_input: None, mask_threshold: None, ..unet });
        // A model without them is written as before: no new keys.
        let written: serde_json::Value = serde_json::from_slice(&old.to_json()).unwrap();
        assert_eq!(written, json);
    }

    #[test]
    fn a_bad_threshold_smoothing_or_normalisation_is_refused() {
        let (_, unet) = vae_and_unet();
        let mut m = unet.clone();
        m.mask_threshold = Some(1.5);
        assert!(m.validate().unwrap_err().to_string().contains("mask_threshold = 1.5"));
        m.mask_threshold = Some(0.0);
        assert!(m.validate().unwrap_err().to_string().contains("mask_threshold = 0"));
        let mut m = unet.clone();
        m.error_input.as_mut().unwrap().error_sigma = f32::NAN;
        assert!(m.validate().unwrap_err().to_string().contains("error_input.error_sigma"));
        let mut m = unet;
        m.error_input.as_mut().unwrap().error_norm = ErrorNorm::Percentile { low: 99.5, high: 0.5 };
        assert!(m.validate().unwrap_err().to_string().contains("error_input.error_norm"));
    }

    #[test]
    fn the_paired_vae_is_the_one_of_the_recorded_run_epoch_and_crop() {
        let (vae, unet) = vae_and_unet();
        assert!(unet.takes_errors_from(&vae));
        let mut other_epoch = vae.clone();
        other_epoch.validation.as_mut().unwrap().epoch = 8;
        assert!(!unet.takes_errors_from(&other_epoch));
        let mut other_run = vae.clone();
        other_run.training.as_mut().unwrap().run = PathBuf::from("/runs/vae-2");
        assert!(!unet.takes_errors_from(&other_run));
        let mut other_crop = vae.clone();
        other_crop.preprocessing.margin_mm = 8.0;
        assert!(!unet.takes_errors_from(&other_crop));
        // Only a model with error_input pairs with anything.
        assert!(!vae.takes_errors_from(&vae));
    }

    #[test]
    fn verify_accepts_the_exported_file_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(b"model bytes");
        std::fs::write(dir.path().join(MODEL_FILE), b"model bytes").unwrap();
        assert_eq!(m.verify_model(dir.path()).unwrap(), dir.path().join(MODEL_FILE));
        std::fs::write(dir.path().join(MODEL_FILE), b"model bytez").unwrap();
        let err = m.verify_model(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Checksum { .. }), "{err}");
    }

    #[test]
    fn a_missing_model_file_is_a_read_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = manifest(b"x").verify_model(dir.path()).unwrap_err();
        assert!(err.to_string().contains(MODEL_FILE), "{err}");
    }

    #[test]
    fn bad_names_versions_and_checksums_are_refused() {
        let mut m = manifest(b"x");
        m.name = "../vae".to_string();
        assert!(m.validate().unwrap_err().to_string().contains("name = ../vae"));
        let mut m = manifest(b"x");
        m.version = 0;
        assert!(m.validate().unwrap_err().to_string().contains("version"));
        let mut m = manifest(b"x");
        m.onnx.sha256 = "ABC".to_string();
        assert!(m.validate().unwrap_err().to_string().contains("onnx.sha256"));
    }

    #[test]
    fn duplicate_tensor_names_and_empty_axes_are_refused() {
        let mut m = manifest(b"x");
        m.outputs[1].name = "ct".to_string();
        assert!(m.validate().unwrap_err().to_string().contains("appears twice"));
        let mut m = manifest(b"x");
        m.outputs[0].shape[2] = Dim::Fixed(0);
        assert!(m.validate().unwrap_err().to_string().contains("reconstruction"));
    }

    #[test]
    fn an_unknown_field_or_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let mut json: serde_json::Value = serde_json::from_slice(&manifest(b"x").to_json()).unwrap();
        json["format"] = serde_json::json!(2);
        std::fs::write(&path, json.to_string()).unwrap();
        assert!(ModelManifest::load(&path).unwrap_err().to_string().contains("format"));
        json["format"] = serde_json::json!(1);
        json["colour"] = serde_json::json!("blue");
        std::fs::write(&path, json.to_string()).unwrap();
        assert!(ModelManifest::load(&path).unwrap_err().to_string().contains("colour"));
    }
}
