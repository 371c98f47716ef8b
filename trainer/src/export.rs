//! `fracmap-train export`: a training run's model as ONNX with its manifest, into a model
//! repository (the layout of `fracmap_core::model_manifest`):
//!
//! ```text
//! <out>/<name>/<version>/model.onnx      the inference graph with the checkpoint's weights
//! <out>/<name>/<version>/manifest.json   what it takes and gives, preprocessing, provenance
//! ```
//!
//! The version defaults to one above the highest already there, so newer is always higher;
//! an existing version is never overwritten. The version folder is claimed with an atomic
//! `create_dir`, then `model.onnx` and last `manifest.json` are each written whole (under a
//! temporary name, then renamed): a version without its manifest is unfinished and the
//! server skips it.
//!
//! The manifest's numbers come from the run folder, `run.json` (data, folds, revision) and
//! `metrics.csv` (the exported epoch's row) for every model, and per architecture:
//! - a VAE run (`fracmap-train vae`): the checkpoint's `state.json` (configuration, best
//!   epoch) and, when it evaluated this checkpoint, `eval/metrics.json` of `eval-vae`;
//! - a U-Net run (`fracmap-train weak`): `config.toml`, `model_best.bpk` or `model_last.bpk`
//!   (best: the lowest validation loss in `metrics.csv`), `vae.json` (the VAE whose error maps
//!   it reads: the manifest's `error_input`) and, when these are the best epoch's weights,
//!   `test.json` (its test-fold numbers and the threshold of its draft mask).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail, ensure};
use burn::prelude::*;
use fracmap_core::fsutil::write_atomic;
use fracmap_core::model_manifest::{
    ErrorInput, ErrorNormalisation, Evaluation, ExportRecord, MANIFEST_FILE, MANIFEST_FORMAT, MODEL_FILE,
    ModelManifest, OnnxFile, Preprocessing, TensorSpec, TrainingRecord, Validation, is_model_name, parse_version,
};
use serde::de::DeserializeOwned;

use crate::onnx::graph::{IR_VERSION, OPSET};
use crate::onnx::p2p::{self as p2p_onnx_names, p2p_onnx, p2p_signature};
use crate::onnx::unet::{self, unet_onnx, unet_signature};
use crate::onnx::vae::{BATCH_AXIS, ERROR, INPUT, RECONSTRUCTION, vae_onnx, vae_signature};
use crate::p2p;
use crate::p2p::config::P2pConfig;
use crate::p2p::eval::P2pMetrics;
use crate::run_record::{CONFIG_FILE, RunRecord, git_revision};
use crate::training_data::DataConfig;
use crate::vae::checkpoint::{self, Which};
use crate::vae::config::NormKind;
use crate::vae::eval::VaeEvalReport;
use crate::vae::train::METRICS_FILE;
use crate::weak::config::WeakConfig;
use crate::weak::eval::MapMetrics;
use crate::weak::run::{TEST_METRICS_FILE, VAE_RECORD_FILE, VaeRecord};
use crate::weak::train::{BEST_MODEL_FILE, LAST_MODEL_FILE};

/// The numbers of `eval-vae`, relative to the run folder.
pub const EVAL_METRICS: &str = "eval/metrics.json";

/// A note for models with BatchNorm layers.
const BATCH_NORM_NOTE: &str = "BatchNorm uses the running statistics of training.";

/// What `fracmap-train export` was asked.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The run folder.
    pub run: PathBuf,
    /// The model repository.
    pub out: PathBuf,
    /// The model's name; default: the run's model ("vae", "unet").
    pub name: Option<String>,
    /// Default: one above the highest version there.
    pub version: Option<u64>,
    pub checkpoint: Which,
}

/// A version written.
#[derive(Debug, Clone)]
pub struct Exported {
    /// `<out>/<name>/<version>`.
    pub dir: PathBuf,
    pub manifest: ModelManifest,
}

/// What an architecture's exporter knows that the run folder's `run.json` does not.
struct ArchitectureExport {
    onnx: Vec<u8>,
    architecture: &'static str,
    config: serde_json::Value,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    preprocessing: Preprocessing,
    error_normalisation: Option<ErrorNormalisation>,
    error_input: Option<ErrorInput>,
    mask_threshold: Option<f32>,
    notes: Vec<String>,
    /// The checkpoint exported: its folder or file name in the run folder.
    checkpoint: String,
    /// Epochs trained at the checkpoint, and the best epoch with its validation loss.
    epoch: usize,
    best: Option<(usize, f64)>,
    /// The run's test-fold numbers, when its report scored these weights.
    evaluation: Option<Evaluation>,
}

/// Exports the model of a run into a new version of the repository `request.out`.
pub fn export_run(request: &ExportRequest) -> Result<Exported> {
    let run = &request.run;
    let record = RunRecord::load(run)?;
    let name = request.name.clone().unwrap_or_else(|| record.model.clone());
    if !is_model_name(&name) {
        bail!("--name {name:?}: a model name is [a-z0-9][a-z0-9_-]* (it becomes a folder)");
    }
    if request.version == Some(0) {
        bail!("--version 0: versions start at 1");
    }
    let model = match record.model.as_str() {
        "vae" => export_vae(run, request.checkpoint)?,
        "unet" => export_unet(run, request.checkpoint)?,
        p2p::run::MODEL_KIND => export_p2p(run, request.checkpoint)?,
        other => bail!("{}: a {other} run; only vae, unet and p2p_lstm runs can be exported", run.display()),
    };
    let validation = Validation {
        checkpoint: model.checkpoint,
        selected: request.checkpoint.name().to_string(),
        epoch: model.epoch,
        best_epoch: model.best.map(|(epoch, _)| epoch),
        best_val_loss: model.best.map(|(_, loss)| loss),
        metrics: epoch_metrics(&run.join(METRICS_FILE), model.epoch)?,
    };
    let mut manifest = ModelManifest {
        format: MANIFEST_FORMAT,
        name,
        version: 1,
        architecture: model.architecture.to_string(),
        config: model.config,
        onnx: OnnxFile::of(&model.onnx, OPSET as u32, IR_VERSION as u32),
        inputs: model.inputs,
        outputs: model.outputs,
        preprocessing: model.preprocessing,
        error_normalisation: model.error_normalisation,
        error_input: model.error_input,
        mask_threshold: model.mask_threshold,
        notes: model.notes,
        training: Some(TrainingRecord {
            run: std::path::absolute(run).with_context(|| format!("{}: cannot resolve", run.display()))?,
            data: record.data,
            test_fold: record.split.test,
            validation_fold: record.split.validation,
            folds: record.split.folds,
            train_crops: record.train_crops,
            validation_crops: record.validation_crops,
            git_revision: record.git_revision,
            started: record.started,
        }),
        validation: Some(validation),
        evaluation: model.evaluation,
        exported: ExportRecord {
            at: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            tool: format!("fracmap-train {}", env!("CARGO_PKG_VERSION")),
            git_revision: git_revision(),
        },
    };
    manifest.validate()?;
    let model_dir = request.out.join(&manifest.name);
    let (version, dir) = claim_version_dir(&model_dir, request.version)?;
    manifest.version = version;
    let written = write_version(&dir, &model.onnx, &manifest);
    if written.is_err() {
        // Unfinished: leave no folder that a later export would have to step over.
        let _ = std::fs::remove_dir_all(&dir);
    }
    written.map(|()| Exported { dir, manifest })
}

/// The VAE of a run's `which` checkpoint, as its inference graph.
fn export_vae(run: &Path, which: Which) -> Result<ArchitectureExport> {
    let checkpoint_dir =
        checkpoint::locate(run, which)?.with_context(|| format!("{}: no checkpoint yet", run.display()))?;
    let state = checkpoint::load_state(&checkpoint_dir)?;
    let vae = checkpoint::load_model(&checkpoint_dir, &state, &Device::flex())?;
    let onnx = vae_onnx(&vae).with_context(|| format!("{}: cannot export", checkpoint_dir.display()))?;
    let (inputs, outputs) = vae_signature(&vae);
    let config = &state.config;
    let window = config.data.window;
    let mut notes = vec![
        format!(
            "Only the {:?} axis is dynamic: the Linear layers around the latent fix the spatial axes to the patch {:?}.",
            BATCH_AXIS, config.model.input_shape
        ),
        format!(
            "Inference graph: z = mu, no sampling ({INPUT} to {RECONSTRUCTION} and {ERROR}; logvar is not computed)."
        ),
    ];
    if config.model.norm == NormKind::Batch {
        notes.push(BATCH_NORM_NOTE.to_string());
    }
    Ok(ArchitectureExport {
        onnx,
        architecture: "vae",
        config: serde_json::to_value(config).context("the VAE configuration as JSON")?,
        inputs,
        outputs,
        preprocessing: preprocessing(&config.data, config.model.input_shape),
        error_normalisation: Some(ErrorNormalisation {
            output: ERROR.to_string(),
            definition: format!(
                "|{INPUT} - {RECONSTRUCTION}| per voxel, both in the window's [0, 1] units; not smoothed, not rescaled"
            ),
            hu_per_unit: f64::from(window.max() - window.min()),
        }),
        error_input: None,
        mask_threshold: None,
        notes,
        checkpoint: checkpoint_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        epoch: state.epochs_done,
        best: state.best.map(|b| (b.epoch, b.val_loss)),
        evaluation: vae_evaluation(run, which, state.epochs_done)?,
    })
}

/// The U-Net of a phase-2 run's `which` model file, as its inference graph, with the VAE
/// whose error maps it reads and, when `test.json` scored these weights (those of the best
/// epoch), the run's threshold and test-fold numbers.
fn export_unet(run: &Path, which: Which) -> Result<ArchitectureExport> {
    let config_path = run.join(CONFIG_FILE);
    let config = WeakConfig::load(&config_path).with_context(|| format!("{}: cannot load", config_path.display()))?;
    // The pipeline, the notes and error_input describe two channels: the CT, the error map.
    ensure!(
        config.model.in_channels == 2,
        "{}: model.in_channels = {}; the pipeline feeds 2 (CT, error map)",
        config_path.display(),
        config.model.in_channels
    );
    let metrics_path = run.join(METRICS_FILE);
    let epochs = metrics_rows(&metrics_path)?;
    let last = epochs
        .last()
        .map(|(epoch, _)| *epoch)
        .with_context(|| format!("{}: no epoch finished yet (missing or without rows)", metrics_path.display()))?;
    let best = best_epoch(&epochs);
    let (file, epoch) = match which {
        Which::Best => {
            let (epoch, _) = best.with_context(|| format!("{}: no epoch with a val_loss", metrics_path.display()))?;
            (BEST_MODEL_FILE, epoch)
        }
        Which::Last => (LAST_MODEL_FILE, last),
    };
    let path = run.join(file);
    let unet = config
        .model
        .load(&path, &Device::flex())
        .with_context(|| format!("{}: cannot load the U-Net", path.display()))?;
    let onnx = unet_onnx(&unet).with_context(|| format!("{}: cannot export", path.display()))?;
    let (inputs, outputs) = unet_signature(&unet);

    let vae_path = run.join(VAE_RECORD_FILE);
    let vae: VaeRecord = read_json(&vae_path, "a record of the VAE a phase-2 run read")?
        .with_context(|| format!("{}: missing; the U-Net is of no use without the VAE it read", vae_path.display()))?;
    // test.json scored the model of the best epoch; the last model is that one when the best
    // epoch was the last.
    let test = match best {
        Some((best_epoch, _)) if best_epoch == epoch => {
            read_json::<MapMetrics>(&run.join(TEST_METRICS_FILE), "a phase-2 test report")?
        }
        _ => None,
    };

    let mut notes = vec![
        format!(
            "Only the {BATCH_AXIS:?} axis is dynamic: the spatial axes are the training patch {:?}, the one patch the \
             pipeline feeds (the graph itself is fully convolutional).",
            config.model.input_shape
        ),
        format!(
            "{} channel 0 is the CT crop windowed to [0, 1] (preprocessing); channel 1 is the error map of the paired \
             VAE (run {}, epoch {}) on the same crop, smoothed and normalised per crop as error_input says: the model \
             cannot run without that VAE.",
            unet::INPUT,
            vae.run.display(),
            vae.epoch
        ),
        format!("The graph ends in a Sigmoid: {} is the fracture probability, not logits.", unet::PROBABILITY),
    ];
    notes.push(match (&test, best) {
        (Some(_), _) => format!("Draft fracture mask: {} >= mask_threshold.", unet::PROBABILITY),
        (None, Some((best_epoch, _))) if best_epoch != epoch => format!(
            "No mask_threshold: {TEST_METRICS_FILE} chose one for the weights of the best epoch ({best_epoch}), not \
             these (epoch {epoch})."
        ),
        (None, _) => format!("No mask_threshold: the run has no {TEST_METRICS_FILE} (it did not finish)."),
    });
    if config.model.norm == NormKind::Batch {
        notes.push(BATCH_NORM_NOTE.to_string());
    }
    Ok(ArchitectureExport {
        onnx,
        architecture: "unet",
        config: serde_json::to_value(&config).context("the U-Net configuration as JSON")?,
        inputs,
        outputs,
        preprocessing: preprocessing(&config.data, config.model.input_shape),
        error_normalisation: None,
        error_input: Some(ErrorInput {
            vae_run: vae.run,
            vae_epoch: vae.epoch,
            error_sigma: config.labels.error_sigma,
            error_norm: config.labels.error_norm,
        }),
        mask_threshold: test.as_ref().map(|t| t.threshold),
        notes,
        checkpoint: file.to_string(),
        epoch,
        best,
        evaluation: test.map(|t| unet_evaluation(&t, file, epoch)),
    })
}

/// The generator of a pix2pix-LSTM run's `which` file (`generator_best.bpk` or
/// `generator_last.bpk`), as its inference graph, with the run's threshold and test numbers
/// when `test.json` scored those weights.
fn export_p2p(run: &Path, which: Which) -> Result<ArchitectureExport> {
    let config_path = run.join(CONFIG_FILE);
    let config = P2pConfig::load(&config_path).with_context(|| format!("{}: cannot load", config_path.display()))?;
    let metrics_path = run.join(METRICS_FILE);
    let epochs = metrics_rows(&metrics_path)?;
    let last = epochs
        .last()
        .map(|(epoch, _)| *epoch)
        .with_context(|| format!("{}: no epoch finished yet (missing or without rows)", metrics_path.display()))?;
    let best = best_epoch(&epochs);
    let (file, epoch) = match which {
        Which::Best => {
            let (epoch, _) = best.with_context(|| format!("{}: no epoch with a val_loss", metrics_path.display()))?;
            (p2p::train::BEST_GENERATOR_FILE, epoch)
        }
        Which::Last => (p2p::train::LAST_GENERATOR_FILE, last),
    };
    let path = run.join(file);
    let generator = config
        .generator
        .load(&path, &Device::flex())
        .with_context(|| format!("{}: cannot load the generator", path.display()))?;
    let onnx = p2p_onnx(&generator).with_context(|| format!("{}: cannot export", path.display()))?;
    let (inputs, outputs) = p2p_signature(&generator);
    let test = match best {
        Some((best_epoch, _)) if best_epoch == epoch => {
            read_json::<P2pMetrics>(&run.join(p2p::run::TEST_METRICS_FILE), "a pix2pix-LSTM test report")?
        }
        _ => None,
    };
    let crop = config.crop_shape();
    let notes = vec![
        format!(
            "{} [batch, {}, {}, {}]: {} consecutive axial slices of a vertebra crop of {crop:?} voxels (the preprocessing \
             patch), windowed to [0, 1], centred on the slice predicted; edge slices repeat the crop's first or last.",
            p2p_onnx_names::INPUT,
            config.generator.context,
            crop[1],
            crop[2],
            config.generator.context
        ),
        format!(
            "{} [batch, 1, {}, {}]: the centre slice's fracture probability (the graph ends in a Sigmoid). A crop's map is \
             every slice predicted and stacked; crops are pasted back onto the CT and averaged where they overlap.",
            p2p_onnx_names::PROBABILITY,
            crop[1],
            crop[2]
        ),
        "Needs no VAE: it reads the CT alone.".to_string(),
    ];
    Ok(ArchitectureExport {
        onnx,
        architecture: p2p::run::MODEL_KIND,
        config: serde_json::to_value(&config).context("the pix2pix-LSTM configuration as JSON")?,
        inputs,
        outputs,
        preprocessing: preprocessing(&config.data, crop),
        error_normalisation: None,
        error_input: None,
        mask_threshold: test.as_ref().map(|t| t.threshold),
        notes,
        checkpoint: file.to_string(),
        epoch,
        best,
        evaluation: test.map(|t| p2p_evaluation(&t, file, epoch)),
    })
}

/// The per-vertebra numbers of a pix2pix-LSTM's `test.json` under the U-Net's measure names,
/// with the per-slice and per-volume ones beside them.
fn p2p_evaluation(m: &P2pMetrics, file: &str, epoch: usize) -> Evaluation {
    let mut evaluation = unet_evaluation(&m.vertebrae, file, epoch);
    evaluation.report = p2p::run::TEST_METRICS_FILE.to_string();
    let mut extra = vec![
        ("slice_dice", Some(m.slices.dice)),
        ("slice_recall", Some(m.slices.recall)),
        ("empty_slices_flagged", Some(m.slices.empty_slices_flagged)),
    ];
    if let Some(v) = &m.volumes {
        extra.extend([
            ("volume_dice", Some(v.dice)),
            ("volume_pr_auc", v.pr_auc),
            ("mean_volume_dice", v.mean_volume_dice),
        ]);
    }
    for (name, value) in extra {
        evaluation.measures.insert(name.to_string(), value.filter(|v| v.is_finite()));
    }
    evaluation
}

/// How a CT volume becomes the input of a model of `patch` voxels trained on `data`'s crops.
fn preprocessing(data: &DataConfig, patch: [usize; 3]) -> Preprocessing {
    Preprocessing { spacing_mm: data.spacing_mm, margin_mm: data.margin_mm, hu_window: data.window, patch }
}

/// Claims `<model_dir>/<version>` by creating it: the requested version, which must be new,
/// or one above the highest there (the next one up when another export takes that first).
fn claim_version_dir(model_dir: &Path, requested: Option<u64>) -> Result<(u64, PathBuf)> {
    std::fs::create_dir_all(model_dir).with_context(|| format!("{}: cannot create", model_dir.display()))?;
    loop {
        let version = match requested {
            Some(version) => version,
            None => highest_version(model_dir)? + 1,
        };
        let dir = model_dir.join(version.to_string());
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((version, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && requested.is_none() => continue,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                bail!("{}: version {version} exists already; choose another --version or leave it out", dir.display())
            }
            Err(e) => return Err(e).with_context(|| format!("{}: cannot create", dir.display())),
        }
    }
}

/// The highest version folder in `model_dir`, 0 when there is none.
fn highest_version(model_dir: &Path) -> Result<u64> {
    let entries = std::fs::read_dir(model_dir).with_context(|| format!("{}: cannot list", model_dir.display()))?;
    let mut highest = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list", model_dir.display()))?;
        if let Some(version) = entry.file_name().to_str().and_then(parse_version) {
            highest = highest.max(version);
        }
    }
    Ok(highest)
}

/// Writes the model, then the manifest, each atomically, and checks the file on disk against
/// the manifest's checksum.
fn write_version(dir: &Path, onnx: &[u8], manifest: &ModelManifest) -> Result<()> {
    let model_path = dir.join(MODEL_FILE);
    write_atomic(&model_path, onnx).with_context(|| format!("{}: cannot write", model_path.display()))?;
    let manifest_path = dir.join(MANIFEST_FILE);
    write_atomic(&manifest_path, &manifest.to_json())
        .with_context(|| format!("{}: cannot write", manifest_path.display()))?;
    manifest.verify_model(dir)?;
    Ok(())
}

/// One row of a run's `metrics.csv`: its epoch and column -> value.
type EpochRow = (usize, BTreeMap<String, f64>);

/// The rows of a run's `metrics.csv` in file order, each with its epoch and its other columns
/// (empty cells, which epochs without validation have, and non-finite ones left out: JSON
/// has no NaN); empty when the file is missing.
fn metrics_rows(path: &Path) -> Result<Vec<EpochRow>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let Some(epoch_column) = header.iter().position(|&c| c == "epoch") else {
        bail!("{}: no epoch column", path.display());
    };
    lines
        .enumerate()
        .map(|(i, line)| {
            let cells: Vec<&str> = line.split(',').collect();
            let cell = cells.get(epoch_column).copied().unwrap_or_default();
            let epoch = cell
                .parse::<usize>()
                .with_context(|| format!("{}: line {}: epoch {cell:?} is not a whole number", path.display(), i + 2))?;
            let values = header
                .iter()
                .zip(&cells)
                .filter(|(column, _)| **column != "epoch")
                .filter_map(|(column, cell)| cell.parse::<f64>().ok().map(|v| (column.to_string(), v)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            Ok((epoch, values))
        })
        .collect()
}

/// The row of `epoch` in a run's `metrics.csv` (see [`metrics_rows`]); empty when the file or
/// the row is missing.
fn epoch_metrics(path: &Path, epoch: usize) -> Result<BTreeMap<String, f64>> {
    Ok(metrics_rows(path)?.into_iter().find(|(e, _)| *e == epoch).map(|(_, values)| values).unwrap_or_default())
}

/// The epoch of the lowest `val_loss` and that loss, the first among equals, as the phase-2
/// trainer keeps its best model; rows without a `val_loss` are passed over.
fn best_epoch(rows: &[EpochRow]) -> Option<(usize, f64)> {
    rows.iter().filter_map(|(epoch, values)| values.get("val_loss").map(|&loss| (*epoch, loss))).fold(
        None,
        |best, (epoch, loss)| match best {
            Some((_, lowest)) if lowest <= loss => best,
            _ => Some((epoch, loss)),
        },
    )
}

/// The JSON file at `path` as a `T` (`what` it should be, for the error); `None` when there
/// is no such file.
fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    serde_json::from_slice(&bytes).map(Some).with_context(|| format!("{}: not {what}", path.display()))
}

/// The numbers of `eval-vae` (`<run>/eval/metrics.json`) when they scored the exported
/// checkpoint (same kind and epoch); `None` otherwise.
fn vae_evaluation(run: &Path, which: Which, epoch: usize) -> Result<Option<Evaluation>> {
    let Some(r) = read_json::<VaeEvalReport>(&run.join(EVAL_METRICS), "an eval-vae metrics file")? else {
        return Ok(None);
    };
    if r.checkpoint != which.name() || r.epoch != epoch {
        return Ok(None);
    }
    let smoothing = r.sigma.map_or("none".to_string(), |s| format!("Gaussian, sigma {s} voxels"));
    let notes = vec![
        format!("test fold {} (never trained on); checkpoint: {} (epoch {})", r.test_fold, r.checkpoint, r.epoch),
        format!("error map E = |X - X_hat| with z = mu; smoothing: {smoothing}"),
        format!("vertebrae: {} normal, {} fractured ({} with a true mask)", r.normal, r.fractured, r.with_truth),
        format!("vertebra score: the {}th percentile of E", r.percentile),
    ];
    let measures = [
        ("voxel_roc_auc", r.voxel_roc_auc),
        ("voxel_pr_auc", r.voxel_pr_auc),
        ("fracture_voxel_prevalence", r.prevalence),
        ("vertebra_roc_auc", r.vertebra_roc_auc),
        ("baseline_ct_voxel_roc_auc", r.brightness_roc_auc),
        ("baseline_ct_voxel_pr_auc", r.brightness_pr_auc),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    Ok(Some(Evaluation { report: EVAL_METRICS.to_string(), notes, measures }))
}

/// The numbers of a phase-2 run's `test.json`, which scored `file` (the model of `epoch`).
/// Measures are named as the VAE's are, so that the two compare.
fn unet_evaluation(m: &MapMetrics, file: &str, epoch: usize) -> Evaluation {
    let notes = vec![
        format!("the run's test fold (training.test_fold, never trained on); model: {file} (epoch {epoch})"),
        format!(
            "draft mask P >= {}: the threshold of the best pooled Dice on the training and validation folds, on a \
             0.02 grid",
            m.threshold
        ),
        "voxels pooled over the test crops: a normal vertebra without a mask counts as all negative, a fractured one \
         without a mask is left out"
            .to_string(),
        "vertebra score: its highest P; outside_box_mm3: predicted volume outside the fracture box, mean per vertebra"
            .to_string(),
    ];
    let measures = [
        ("voxel_dice", Some(m.dice)),
        ("voxel_iou", Some(m.iou)),
        ("voxel_precision", m.precision),
        ("voxel_recall", m.recall),
        ("voxel_pr_auc", m.pr_auc),
        ("outside_box_mm3", Some(m.outside_box_mm3)),
        ("vertebra_roc_auc", m.vertebra_auc),
    ]
    .into_iter()
    // JSON has no NaN: a measure without a finite value has none.
    .map(|(name, value)| (name.to_string(), value.filter(|v| v.is_finite())))
    .collect();
    Evaluation { report: TEST_METRICS_FILE.to_string(), notes, measures }
}

#[cfg(test)]
mod tests {
    use fracmap_core::model_manifest::Dim;

    use super::*;
    use crate::training_data::FoldSplit;
    use crate::vae::checkpoint::{BestEpoch, TrainState};
    use crate::vae::config::{ModelConfig, VaeConfig};
    use crate::weak::run::load_frozen_vae;

    /// A run folder as `fracmap-train vae` leaves it after 2 epochs (best: epoch 2), with a
    /// tiny untrained VAE.
    fn fake_run(dir: &Path) -> PathBuf {
        let run = dir.join("run");
        let config = VaeConfig {
            model: ModelConfig {
                input_shape: [16, 8, 8],
                base_channels: 2,
                levels: 2,
                latent_dim: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let split = FoldSplit { test: 0, validation: 1, folds: 5 };
        let record =
            RunRecord::new("vae", Path::new("data/manifest.json"), Path::new("data/crops"), split, (10, 3)).unwrap();
        record.save(&run, &config.to_toml()).unwrap();
        let checkpoint = run.join(checkpoint::CHECKPOINTS_DIR).join("epoch-0002");
        std::fs::create_dir_all(&checkpoint).unwrap();
        config.model.init(&Device::flex(), 0).save_file(checkpoint.join(checkpoint::MODEL_FILE)).unwrap();
        let state = TrainState { epochs_done: 2, best: Some(BestEpoch { epoch: 2, val_loss: 0.25 }), config };
        std::fs::write(checkpoint.join(checkpoint::STATE_FILE), serde_json::to_vec(&state).unwrap()).unwrap();
        for pointer in ["best.json", "last.json"] {
            std::fs::write(run.join(pointer), r#"{"checkpoint":"epoch-0002"}"#).unwrap();
        }
        std::fs::write(
            run.join(METRICS_FILE),
            "epoch,beta,train_loss,val_loss,seconds\n1,0,0.5,,1.0\n2,0.0001,0.3,0.25,1.1\n",
        )
        .unwrap();
        run
    }

    fn request(run: &Path, out: &Path) -> ExportRequest {
        ExportRequest {
            run: run.to_path_buf(),
            out: out.to_path_buf(),
            name: None,
            version: None,
            checkpoint: Which::Best,
        }
    }

    #[test]
    fn exports_version_one_then_two_with_a_manifest_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let run = fake_run(dir.path());
        let out = dir.path().join("models");
        let first = export_run(&request(&run, &out)).unwrap();
        assert_eq!(first.dir, out.join("vae").join("1"));
        let second = export_run(&request(&run, &out)).unwrap();
        assert_eq!(second.manifest.version, 2);

        let manifest = ModelManifest::load(&second.dir.join(MANIFEST_FILE)).unwrap();
        assert_eq!(manifest, second.manifest);
        manifest.verify_model(&second.dir).unwrap();
        // The same checkpoint gives the same bytes.
        assert_eq!(manifest.onnx.sha256, first.manifest.onnx.sha256);
        assert_eq!(manifest.inputs[0].shape[2..], [Dim::Fixed(16), Dim::Fixed(8), Dim::Fixed(8)]);
        assert_eq!(manifest.preprocessing.patch, [16, 8, 8]);
        assert_eq!(manifest.error_normalisation.as_ref().unwrap().hu_per_unit, 1500.0);
        let training = manifest.training.unwrap();
        assert_eq!((training.test_fold, training.validation_fold, training.train_crops), (0, 1, 10));
        let validation = manifest.validation.unwrap();
        assert_eq!((validation.checkpoint.as_str(), validation.best_epoch), ("epoch-0002", Some(2)));
        assert_eq!(validation.metrics["val_loss"], 0.25);
        assert!(manifest.evaluation.is_none(), "the run has no eval report");
    }

    #[test]
    fn an_existing_version_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let run = fake_run(dir.path());
        let out = dir.path().join("models");
        let first = export_run(&ExportRequest { version: Some(4), ..request(&run, &out) }).unwrap();
        let err = export_run(&ExportRequest { version: Some(4), ..request(&run, &out) }).unwrap_err();
        assert!(err.to_string().contains("version 4 exists already"), "{err}");
        ModelManifest::load(&first.dir.join(MANIFEST_FILE)).unwrap().verify_model(&first.dir).unwrap();
        // The next free version is above the highest, not in a gap.
        assert_eq!(export_run(&request(&run, &out)).unwrap().manifest.version, 5);
    }

    #[test]
    fn the_vae_manifest_names_the_run_and_epoch_a_phase_2_run_records() {
        // A U-Net's error_input is its vae.json, which load_frozen_vae writes; the server
        // pairs the two manifests on it.
        let dir = tempfile::tempdir().unwrap();
        let run = fake_run(dir.path());
        let (_, _, record) = load_frozen_vae(&run, &Device::flex()).unwrap();
        let manifest = export_run(&request(&run, &dir.path().join("models"))).unwrap().manifest;
        assert_eq!(manifest.training.unwrap().run, record.run);
        assert_eq!(manifest.validation.unwrap().epoch, record.epoch);
    }

    #[test]
    fn a_run_of_another_model_is_refused_naming_those_that_export() {
        let dir = tempfile::tempdir().unwrap();
        let run = fake_run(dir.path());
        let mut record = RunRecord::load(&run).unwrap();
        record.model = "gan".to_string();
        record.save(&run, &std::fs::read_to_string(run.join(CONFIG_FILE)).unwrap()).unwrap();
        let err = export_run(&request(&run, &dir.path().join("models"))).unwrap_err();
        assert!(err.to_string().contains("a gan run; only vae, unet and p2p_lstm runs can be exported"), "{err}");
    }

    /// `csv` as a run's `metrics.csv`, read back.
    fn metrics(csv: &str) -> Result<Vec<EpochRow>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        std::fs::write(&path, csv).unwrap();
        metrics_rows(&path)
    }

    #[test]
    fn the_best_epoch_is_the_first_of_the_lowest_validation_losses() {
        let rows = metrics("epoch,train_loss,val_loss\n1,0.9,0.5\n2,0.8,0.3\n3,0.7,0.3\n4,0.6,\n5,0.5,NaN\n").unwrap();
        assert_eq!(best_epoch(&rows), Some((2, 0.3)));
        // Empty and non-finite cells are left out (JSON has no NaN).
        assert_eq!(rows[3].1.keys().collect::<Vec<_>>(), ["train_loss"]);
        assert_eq!(rows[4].1.keys().collect::<Vec<_>>(), ["train_loss"]);
    }

    #[test]
    fn a_row_without_a_whole_epoch_is_refused_by_its_line() {
        let err = metrics("epoch,val_loss\n1,0.5\n2.5,0.4\n").unwrap_err();
        assert!(err.to_string().contains("line 3: epoch \"2.5\""), "{err}");
    }

    #[test]
    fn a_name_that_is_not_a_folder_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = fake_run(dir.path());
        let request = ExportRequest { name: Some("../vae".to_string()), ..request(&run, &dir.path().join("m")) };
        assert!(export_run(&request).unwrap_err().to_string().contains("--name"));
    }

    #[test]
    fn the_evaluation_is_recorded_when_it_scored_this_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = fake_run(dir.path());
        std::fs::create_dir_all(run.join("eval")).unwrap();
        let report = VaeEvalReport {
            checkpoint: "best".to_string(),
            epoch: 2,
            sigma: None,
            percentile: 99.0,
            test_fold: 0,
            normal: 9,
            fractured: 2,
            with_truth: 2,
            prevalence: Some(0.01),
            voxel_roc_auc: Some(0.8591),
            voxel_pr_auc: Some(0.05),
            vertebra_roc_auc: None,
            brightness_roc_auc: Some(0.9),
            brightness_pr_auc: Some(0.1),
            out: PathBuf::new(),
        };
        std::fs::write(run.join(EVAL_METRICS), serde_json::to_vec(&report).unwrap()).unwrap();
        let out = dir.path().join("models");
        let evaluation = export_run(&request(&run, &out)).unwrap().manifest.evaluation.expect("recorded");
        assert_eq!(evaluation.measures["voxel_roc_auc"], Some(0.8591));
        assert_eq!(evaluation.measures["vertebra_roc_auc"], None);
        assert!(evaluation.notes[1].contains("smoothing: none"));
        // It scored the best checkpoint, not the last.
        let last = ExportRequest { checkpoint: Which::Last, ..request(&run, &out) };
        assert!(export_run(&last).unwrap().manifest.evaluation.is_none());
        // Numbers of an earlier epoch's weights are not this checkpoint's.
        let earlier = VaeEvalReport { epoch: 1, ..report };
        std::fs::write(run.join(EVAL_METRICS), serde_json::to_vec(&earlier).unwrap()).unwrap();
        assert!(export_run(&request(&run, &out)).unwrap().manifest.evaluation.is_none());
    }
}
