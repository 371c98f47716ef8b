//! `fracmap-train p2p`: one pix2pix-LSTM run from a manifest and a configuration, on one
//! fold: the training folds train, the validation fold picks the best epoch, the test fold
//! is scored at the end (`eval.rs`) with the threshold of the best Dice on the training and
//! validation crops.
//!
//! Run folder: `run.json`, `config.toml`, what `train.rs` writes (`metrics.csv`,
//! `losses.png`, `health.json`, the generator and discriminator), `test.json`
//! ([`P2pMetrics`]), `heatmaps.png` (fractured test vertebrae, sagittal, as for the weak
//! U-Net).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use fracmap_core::fsutil::write_atomic;
use fracmap_core::picture::write_png;
use ndarray::Array3;

use super::config::P2pConfig;
use super::data::{load_crops, targets};
use super::eval::{P2pMetrics, score};
use super::health::Verdict;
use super::integrate::predict_crop;
use super::model::Generator;
use super::train::{BEST_GENERATOR_FILE, HEALTH_FILE, P2pEvent, P2pTrainRun};
use crate::crops::{self, CropIndex};
use crate::device::{DeviceChoice, select_device};
use crate::progress::ProgressLine;
use crate::run_record::RunRecord;
use crate::training_data::{self, FoldSplit, Role, select};
use crate::weak::data::Sample;
use crate::weak::eval::choose_threshold;
use crate::weak::pictures::heatmap_sheet;

pub const TEST_METRICS_FILE: &str = "test.json";
pub const HEATMAPS_FILE: &str = "heatmaps.png";
/// The run record's model name, and the exported model's architecture.
pub const MODEL_KIND: &str = "p2p_lstm";
const HEATMAP_VERTEBRAE: usize = 6;

/// What `fracmap-train p2p` was asked.
#[derive(Debug, Clone)]
pub struct P2pTrainRequest {
    pub config: PathBuf,
    pub data: PathBuf,
    pub fold: usize,
    pub out: PathBuf,
    pub crops: Option<PathBuf>,
    pub threads: usize,
    pub device: DeviceChoice,
}

/// The crops of one fold.
pub struct P2pFold {
    pub split: FoldSplit,
    pub cache: PathBuf,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
}

/// Crops `data` with the spec of `config` (cached, shared with the weak U-Net when the spec
/// is the same) and splits them for test fold `fold`.
pub fn fold_crops(
    config: &P2pConfig,
    data: &Path,
    crops_dir: Option<&Path>,
    fold: usize,
    threads: usize,
    progress: &ProgressLine,
) -> Result<P2pFold> {
    let spec = config.data.crop_spec(config.crop_shape());
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
        sets.push(load_crops(&cache, &entries, &config.data, &|done, total| {
            progress.update(&format!("crops ({name})"), done, total, "")
        })?);
    }
    let [train, val, test]: [Vec<Sample>; 3] = sets.try_into().map_err(|_| anyhow::anyhow!("three sets"))?;
    progress.finish(&format!(
        "fold {fold}: {} training, {} validation, {} test crops",
        train.len(),
        val.len(),
        test.len()
    ));
    Ok(P2pFold { split, cache, train, val, test })
}

/// The generator's maps of `samples`, in order.
pub fn predict_all(
    generator: &Generator,
    samples: &[Sample],
    batch_size: usize,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<Array3<f32>>> {
    let mut maps = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        maps.push(predict_crop(generator, sample.ct.data(), batch_size, device)?);
        progress(i + 1, samples.len());
    }
    Ok(maps)
}

/// Trains the generator of a request, scores it on the test fold and writes the run folder.
pub fn train_p2p(request: &P2pTrainRequest) -> Result<P2pMetrics> {
    let config = P2pConfig::load(&request.config).with_context(|| request.config.display().to_string())?;
    if request.out.join(BEST_GENERATOR_FILE).exists() {
        bail!("{} already holds a model: choose another --out", request.out.display());
    }
    let (device, device_name) = select_device(request.device)?;
    let progress = ProgressLine::default();
    let fold = fold_crops(&config, &request.data, request.crops.as_deref(), request.fold, request.threads, &progress)?;
    let train_targets = targets(&fold.train, &config.slices)?;
    let val_targets = targets(&fold.val, &config.slices)?;
    let record =
        RunRecord::new(MODEL_KIND, &request.data, &fold.cache, fold.split, (fold.train.len(), fold.val.len()))?;
    record.save(&request.out, &config.to_toml())?;
    eprintln!(
        "p2p-lstm: generator {} parameters, discriminator {} (receptive field {} px), on {device_name}",
        config.generator.init(&Device::flex(), 0).num_params(),
        config.discriminator.init(&Device::flex(), 0).num_params(),
        config.discriminator.receptive_field()
    );
    let run = P2pTrainRun {
        config: &config,
        train: (&fold.train, &train_targets),
        val: (&fold.val, &val_targets),
        run_dir: &request.out,
        device: device.clone(),
    };
    let epochs = config.train.epochs;
    let outcome = run.run(|event| match event {
        P2pEvent::Batch { epoch, epochs, batch, batches, loss } => {
            progress.update(&format!("p2p epoch {epoch}/{epochs}"), batch, batches, &format!("loss {loss:.4}"))
        }
        P2pEvent::Epoch { signals: e, seconds } => {
            let adversary = if e.adversarial {
                format!(", D {:.3} (real {:.2}, fake {:.2}), G adv {:.3}", e.d_loss, e.d_real, e.d_fake, e.g_adv)
            } else {
                " (warm-up)".to_string()
            };
            progress.finish(&format!(
                "p2p epoch {}/{epochs}: G seg {:.4}{adversary}; val soft-Dice loss {:.4}, Dice@0.5 {:.3}, {:.1} s",
                e.epoch, e.g_seg, e.val_soft_dice_loss, e.val_dice, seconds
            ));
        }
        P2pEvent::Unhealthy(health) => progress.finish(&format!(
            "WARNING: the GAN {:?} at epoch {}: {} (losses.png and health.json in {})",
            health.verdict,
            health.epoch.unwrap_or(0),
            health.reason.as_deref().unwrap_or(""),
            request.out.display()
        )),
    })?;
    progress.finish(&format!(
        "p2p: best epoch {} of {} ({} slices with fracture, {} without, in training); health: {:?}",
        outcome.best_epoch, config.train.epochs, outcome.slices.0, outcome.slices.1, outcome.health.verdict
    ));
    if outcome.health.verdict == Verdict::Diverged {
        eprintln!("the run diverged; scoring the best epoch before it ({})", request.out.join(HEALTH_FILE).display());
    }
    let batch = config.slices.depth;
    let tuning: Vec<Sample> = fold.train.iter().chain(&fold.val).cloned().collect();
    let tuning_maps = predict_all(&outcome.generator, &tuning, batch, &device, &|done, total| {
        progress.update("predict (training and validation crops)", done, total, "")
    })?;
    let test_maps = predict_all(&outcome.generator, &fold.test, batch, &device, &|done, total| {
        progress.update("predict (test crops)", done, total, "")
    })?;
    let threshold = choose_threshold(&tuning_maps, &tuning)?;
    let metrics = score(&test_maps, &fold.test, &request.data, threshold)?;
    progress.finish(&format!("scored {} test crops at threshold {threshold:.2}", fold.test.len()));
    let path = request.out.join(TEST_METRICS_FILE);
    write_atomic(&path, &serde_json::to_vec_pretty(&metrics)?).with_context(|| path.display().to_string())?;
    match heatmap_sheet(&fold.test, &[&test_maps], &["P2P-LSTM"], &[threshold], HEATMAP_VERTEBRAE)? {
        Some(picture) => {
            let path = request.out.join(HEATMAPS_FILE);
            write_png(&path, &picture).with_context(|| path.display().to_string())?;
        }
        None => eprintln!("no fractured test vertebra with a true mask to draw"),
    }
    Ok(metrics)
}
