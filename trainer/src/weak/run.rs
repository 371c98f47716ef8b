//! `fracmap-train weak`: one phase-2 U-Net from a manifest, a configuration and a trained
//! VAE run (frozen; its best checkpoint makes the error maps).
//!
//! Folds as for the VAE (`training_data.rs`): the training folds train, the validation fold
//! picks the best epoch, the test fold is scored at the end with the threshold of the best
//! Dice on the training and validation folds.
//!
//! Run folder: `run.json`, `config.toml`, `vae.json` (the VAE run and epoch the error maps
//! came from), `metrics.csv`, `model_best.bpk`, `model_last.bpk`, `test.json` (the test
//! fold's numbers, see `eval.rs`), `drafts/` and `drafts.csv` (the test crops' draft masks,
//! see [`write_drafts`]), `heatmaps.png` (fractured test vertebrae, sagittal, the map over
//! the CT with the truth and the box outlined).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::prelude::*;
use fracmap_core::Box3;
use fracmap_core::fsutil::write_atomic;
use fracmap_core::geometry::bounding_box;
use fracmap_core::picture::write_png;
use fracmap_core::pseudo_label::{PseudoLabelConfig, pseudo_label, write_pseudo_label};
use ndarray::Array3;
use serde::{Deserialize, Serialize};

use super::config::WeakConfig;
use super::data::{Sample, load_samples};
use super::eval::{MapMetrics, choose_threshold, predict, score_maps};
use super::model::UNet;
use super::pictures::heatmap_sheet;
use super::train::{BEST_MODEL_FILE, WeakEvent, WeakTrainRun, term_names};
use crate::crops::{self, CropIndex};
use crate::device::{DeviceChoice, select_device};
use crate::progress::ProgressLine;
use crate::run_record::RunRecord;
use crate::training_data::{self, FoldSplit, Role, select};
use crate::vae::checkpoint::{self, Which};
use crate::vae::config::VaeConfig;
use crate::vae::model::Vae;

pub const VAE_RECORD_FILE: &str = "vae.json";
pub const TEST_METRICS_FILE: &str = "test.json";
/// Draft masks of the test crops, and their table.
pub const DRAFTS_DIR: &str = "drafts";
pub const HEATMAPS_FILE: &str = "heatmaps.png";
/// Fractured test vertebrae drawn in [`HEATMAPS_FILE`].
const HEATMAP_VERTEBRAE: usize = 6;
pub const DRAFTS_TABLE: &str = "drafts.csv";

/// What `fracmap-train weak` was asked.
#[derive(Debug, Clone)]
pub struct WeakTrainRequest {
    pub config: PathBuf,
    pub data: PathBuf,
    /// The trained VAE's run folder.
    pub vae: PathBuf,
    pub fold: usize,
    pub out: PathBuf,
    pub crops: Option<PathBuf>,
    pub threads: usize,
    pub device: DeviceChoice,
}

/// The VAE a phase-2 run read its error maps from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeRecord {
    pub run: PathBuf,
    pub checkpoint: String,
    pub epoch: usize,
}

/// The frozen VAE of a run folder (best checkpoint), on `device`, with its record.
pub fn load_frozen_vae(run: &Path, device: &Device) -> Result<(Vae, VaeConfig, VaeRecord)> {
    let dir = checkpoint::locate(run, Which::Best)?
        .with_context(|| format!("{}: no best checkpoint (is it a trained VAE run?)", run.display()))?;
    let state = checkpoint::load_state(&dir)?;
    let model = checkpoint::load_model(&dir, &state, device)?;
    let record = VaeRecord {
        run: std::path::absolute(run).unwrap_or_else(|_| run.to_path_buf()),
        checkpoint: Which::Best.name().to_string(),
        epoch: state.epochs_done,
    };
    Ok((model, state.config, record))
}

/// The crops of one fold with their error maps.
pub struct FoldSamples {
    pub split: FoldSplit,
    pub cache: PathBuf,
    /// The training crops, then the validation ones: together, what thresholds are chosen on.
    tuning: Vec<Sample>,
    train_len: usize,
    pub test: Vec<Sample>,
}

impl FoldSamples {
    pub fn train(&self) -> &[Sample] {
        &self.tuning[..self.train_len]
    }

    pub fn val(&self) -> &[Sample] {
        &self.tuning[self.train_len..]
    }

    /// The training and validation crops.
    pub fn tuning(&self) -> &[Sample] {
        &self.tuning
    }
}

/// A model's (or a baseline's) maps of the tuning and the test crops of a fold.
pub struct FoldMaps {
    pub tuning: Vec<Array3<f32>>,
    pub test: Vec<Array3<f32>>,
}

impl FoldMaps {
    /// The U-Net's maps of every tuning and test crop.
    pub fn predict(model: &UNet, samples: &FoldSamples, batch_size: usize, device: &Device) -> Result<Self> {
        Ok(FoldMaps {
            tuning: predict(model, samples.tuning(), batch_size, device)?,
            test: predict(model, &samples.test, batch_size, device)?,
        })
    }

    /// The test numbers at the threshold of the best Dice on the tuning crops.
    pub fn score(&self, samples: &FoldSamples) -> Result<MapMetrics> {
        let threshold = choose_threshold(&self.tuning, samples.tuning())?;
        score_maps(&self.test, &samples.test, threshold)
    }
}

/// Crops `data` with the spec of `config` (cached), splits them for test fold `fold` and
/// computes every labeled crop's error map with `vae`, whose crops must be the same.
pub fn fold_samples(
    config: &WeakConfig,
    vae: (&Vae, &VaeConfig),
    data: &Path,
    crops_dir: Option<&Path>,
    fold: usize,
    threads: usize,
    progress: &ProgressLine,
) -> Result<FoldSamples> {
    let (vae, vae_config) = vae;
    ensure!(
        vae_config.data == config.data && vae_config.model.input_shape == config.model.input_shape,
        "the VAE was trained on other crops ([data] {:?}, shape {:?}) than this configuration's ([data] {:?}, shape {:?}): the error map must be computed on the same crop",
        vae_config.data,
        vae_config.model.input_shape,
        config.data,
        config.model.input_shape
    );
    let spec = config.data.crop_spec(config.model.input_shape);
    let cache = crops_dir.map_or_else(|| training_data::default_cache_dir(data, &spec), Path::to_path_buf);
    let index: CropIndex = crops::build_crop_cache(data, &cache, &spec, threads, &|done, total| {
        progress.update("crops: case", done, total, "");
    })?
    .index;
    let split = FoldSplit::new(&index, fold)?;
    let mut sets = Vec::new();
    for (role, name) in [(Role::Train, "training"), (Role::Validation, "validation"), (Role::Test, "test")] {
        let entries: Vec<_> = select(&index, &split, role, |_| true).into_iter().cloned().collect();
        if entries.is_empty() {
            bail!("{}: no labeled vertebrae in the {name} set of test fold {fold}", data.display());
        }
        let samples = load_samples(&cache, &entries, &config.data, &config.labels, vae, &|done, total| {
            progress.update(&format!("error maps ({name})"), done, total, "")
        })?;
        sets.push(samples);
    }
    let [mut tuning, val, test]: [Vec<Sample>; 3] = sets.try_into().map_err(|_| anyhow::anyhow!("three sets"))?;
    progress.finish(&format!(
        "fold {fold}: {} training, {} validation, {} test crops with error maps",
        tuning.len(),
        val.len(),
        test.len()
    ));
    let train_len = tuning.len();
    tuning.extend(val);
    Ok(FoldSamples { split, cache, tuning, train_len, test })
}

/// Trains one U-Net on a fold into `out` (which must not hold a model yet), reporting
/// progress; returns the best model.
pub fn train_on_fold(
    config: &WeakConfig,
    samples: &FoldSamples,
    data: &Path,
    vae: &VaeRecord,
    out: &Path,
    device: &Device,
    progress: &ProgressLine,
) -> Result<UNet> {
    if out.join(BEST_MODEL_FILE).exists() {
        bail!("{} already holds a model: choose another --out", out.display());
    }
    let record =
        RunRecord::new("unet", data, &samples.cache, samples.split, (samples.train().len(), samples.val().len()))?;
    record.save(out, &config.to_toml())?;
    let vae_path = out.join(VAE_RECORD_FILE);
    write_atomic(&vae_path, &serde_json::to_vec_pretty(vae)?).with_context(|| vae_path.display().to_string())?;
    let mode = config.labels.mode;
    let run = WeakTrainRun { config, train: samples.train(), val: samples.val(), run_dir: out, device: device.clone() };
    let names = term_names(mode);
    let outcome = run.run(|event| match event {
        WeakEvent::Batch { epoch, epochs, batch, batches, loss } => progress.update(
            &format!("{} epoch {epoch}/{epochs}", mode.name()),
            batch,
            batches,
            &format!("loss {loss:.4}"),
        ),
        WeakEvent::Epoch(m) => {
            let terms: Vec<String> = names.iter().zip(&m.train.terms).map(|(n, v)| format!("{n} {v:.4}")).collect();
            progress.finish(&format!(
                "{} epoch {}/{}: train {:.4} ({}), val {:.4}, {:.1} s",
                mode.name(),
                m.epoch,
                config.train.epochs,
                m.train.total,
                terms.join(", "),
                m.val.total,
                m.seconds
            ));
        }
    })?;
    progress.finish(&format!(
        "{}: best epoch {} of {} ({} training and {} validation crops supervised)",
        mode.name(),
        outcome.best_epoch,
        config.train.epochs,
        outcome.supervising.0,
        outcome.supervising.1
    ));
    Ok(outcome.model)
}

/// The draft masks of the test crops (`core::pseudo_label`: `P >= threshold` inside the
/// vertebra's fracture box, or the whole crop without one; small components removed), as
/// uint8 NIfTI on each crop's grid (its affine places it on the source CT), and
/// `drafts.csv` with each one's volume and confidence; `maps` are the crops' probabilities.
pub fn write_drafts(maps: &[Array3<f32>], samples: &[Sample], threshold: f32, out: &Path) -> Result<()> {
    let dir = out.join(DRAFTS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let config = PseudoLabelConfig { threshold, ..PseudoLabelConfig::default() };
    let mut csv = String::from("crop,status,voxels,volume_mm3,confidence,components_removed\n");
    for (sample, map) in samples.iter().zip(maps) {
        let probability = sample.ct.with_data(map.clone())?;
        let boxes: Vec<Box3> = bounding_box(&sample.box_in).into_iter().collect();
        let draft =
            pseudo_label(&probability, &boxes, &config).with_context(|| format!("crop {}", sample.entry.dir))?;
        let path = dir.join(format!("{}.nii.gz", sample.entry.dir));
        write_pseudo_label(&path, &draft, &sample.ct.grid()).with_context(|| path.display().to_string())?;
        csv.push_str(&format!(
            "{},{:?},{},{:.1},{:.4},{}\n",
            sample.entry.dir,
            sample.entry.status,
            draft.voxels,
            draft.volume_mm3,
            draft.confidence,
            draft.removed_components
        ));
    }
    let path = out.join(DRAFTS_TABLE);
    write_atomic(&path, csv.as_bytes()).with_context(|| path.display().to_string())
}

/// Trains the U-Net of a request and scores it on the test fold.
pub fn train_weak(request: &WeakTrainRequest) -> Result<MapMetrics> {
    let config = WeakConfig::load(&request.config).with_context(|| request.config.display().to_string())?;
    let (device, device_name) = select_device(request.device)?;
    let progress = ProgressLine::default();
    let (vae, vae_config, vae_record) = load_frozen_vae(&request.vae, &device)?;
    // A VAE of another test fold trained on this fold's normal vertebrae: the test would leak.
    let vae_split = RunRecord::load(&request.vae)?.split;
    ensure!(
        vae_split.test == request.fold,
        "--fold {}: the VAE of {} was trained with test fold {} (its training folds include fold {}); use that fold or a VAE of this one",
        request.fold,
        request.vae.display(),
        vae_split.test,
        request.fold
    );
    let samples = fold_samples(
        &config,
        (&vae, &vae_config),
        &request.data,
        request.crops.as_deref(),
        request.fold,
        request.threads,
        &progress,
    )?;
    eprintln!(
        "weak ({} labels): {} parameters, on {device_name}",
        config.labels.mode.name(),
        config.model.init(&Device::flex(), 0).num_params()
    );
    let model = train_on_fold(&config, &samples, &request.data, &vae_record, &request.out, &device, &progress)?;
    let maps = FoldMaps::predict(&model, &samples, config.train.batch_size, &device)?;
    let metrics = maps.score(&samples)?;
    let path = request.out.join(TEST_METRICS_FILE);
    write_atomic(&path, &serde_json::to_vec_pretty(&metrics)?).with_context(|| path.display().to_string())?;
    write_drafts(&maps.test, &samples.test, metrics.threshold, &request.out)?;
    match heatmap_sheet(&samples.test, &[&maps.test], &["U-NET"], &[metrics.threshold], HEATMAP_VERTEBRAE)? {
        Some(picture) => {
            let path = request.out.join(HEATMAPS_FILE);
            write_png(&path, &picture).with_context(|| path.display().to_string())?;
        }
        None => eprintln!("no fractured test vertebra with a true mask to draw"),
    }
    Ok(metrics)
}
