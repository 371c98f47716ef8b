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
//! The manifest's numbers come from the run folder: `run.json` (data, folds, revision), the
//! checkpoint's `state.json` (configuration, best epoch), `metrics.csv` (the exported epoch's
//! row) and, when it evaluated this checkpoint, `eval/metrics.json` of `eval-vae`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use fracmap_core::fsutil::write_atomic;
use fracmap_core::model_manifest::{
    ErrorNormalisation, Evaluation, ExportRecord, MANIFEST_FILE, MANIFEST_FORMAT, MODEL_FILE, ModelManifest, OnnxFile,
    Preprocessing, TensorSpec, TrainingRecord, Validation, is_model_name, parse_version,
};

use crate::onnx::graph::{IR_VERSION, OPSET};
use crate::onnx::vae::{BATCH_AXIS, ERROR, INPUT, RECONSTRUCTION, vae_onnx, vae_signature};
use crate::run_record::{RunRecord, git_revision};
use crate::vae::checkpoint::{self, Which};
use crate::vae::config::NormKind;
use crate::vae::eval::VaeEvalReport;
use crate::vae::train::METRICS_FILE;

/// The numbers of `eval-vae`, relative to the run folder.
pub const EVAL_METRICS: &str = "eval/metrics.json";

/// What `fracmap-train export` was asked.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The run folder.
    pub run: PathBuf,
    /// The model repository.
    pub out: PathBuf,
    /// The model's name; default: the run's model ("vae").
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

/// What an architecture's exporter knows that the run folder does not.
struct ArchitectureExport {
    onnx: Vec<u8>,
    architecture: &'static str,
    config: serde_json::Value,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    preprocessing: Preprocessing,
    error_normalisation: Option<ErrorNormalisation>,
    notes: Vec<String>,
    /// The checkpoint folder exported.
    checkpoint_dir: PathBuf,
    /// Epochs trained at the checkpoint, and the best epoch with its validation loss.
    epoch: usize,
    best: Option<(usize, f64)>,
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
        other => bail!("{}: a {other} run; only vae runs can be exported so far", run.display()),
    };
    let checkpoint = model.checkpoint_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let validation = Validation {
        checkpoint,
        selected: request.checkpoint.name().to_string(),
        epoch: model.epoch,
        best_epoch: model.best.map(|(epoch, _)| epoch),
        best_val_loss: model.best.map(|(_, loss)| loss),
        metrics: epoch_metrics(&run.join(METRICS_FILE), model.epoch)?,
    };
    let evaluation = evaluation(run, request.checkpoint, model.epoch)?;
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
        evaluation,
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
        notes.push("BatchNorm uses the running statistics of training.".to_string());
    }
    Ok(ArchitectureExport {
        onnx,
        architecture: "vae",
        config: serde_json::to_value(config).context("the VAE configuration as JSON")?,
        inputs,
        outputs,
        preprocessing: Preprocessing {
            spacing_mm: config.data.spacing_mm,
            margin_mm: config.data.margin_mm,
            hu_window: window,
            patch: config.model.input_shape,
        },
        error_normalisation: Some(ErrorNormalisation {
            output: ERROR.to_string(),
            definition: format!(
                "|{INPUT} - {RECONSTRUCTION}| per voxel, both in the window's [0, 1] units; not smoothed, not rescaled"
            ),
            hu_per_unit: f64::from(window.max() - window.min()),
        }),
        notes,
        checkpoint_dir,
        epoch: state.epochs_done,
        best: state.best.map(|b| (b.epoch, b.val_loss)),
    })
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

/// The row of `epoch` in a run's `metrics.csv`, column -> value (empty cells, which epochs
/// without validation have, left out); empty when the file or the row is missing.
fn epoch_metrics(path: &Path, epoch: usize) -> Result<BTreeMap<String, f64>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let Some(epoch_column) = header.iter().position(|&c| c == "epoch") else {
        bail!("{}: no epoch column", path.display());
    };
    let row = lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .find(|cells| cells.get(epoch_column).and_then(|c| c.parse::<usize>().ok()) == Some(epoch));
    Ok(row
        .map(|cells| {
            header
                .iter()
                .zip(cells)
                .filter(|(column, _)| **column != "epoch")
                .filter_map(|(column, cell)| cell.parse::<f64>().ok().map(|v| (column.to_string(), v)))
                .collect()
        })
        .unwrap_or_default())
}

/// The numbers of `eval-vae` (`<run>/eval/metrics.json`) when they scored the exported
/// checkpoint (same kind and epoch); `None` otherwise.
fn evaluation(run: &Path, which: Which, epoch: usize) -> Result<Option<Evaluation>> {
    let path = run.join(EVAL_METRICS);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let r: VaeEvalReport =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not an eval-vae metrics file", path.display()))?;
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

#[cfg(test)]
mod tests {
    use fracmap_core::model_manifest::Dim;

    use super::*;
    use crate::training_data::FoldSplit;
    use crate::vae::checkpoint::{BestEpoch, TrainState};
    use crate::vae::config::{ModelConfig, VaeConfig};

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
