//! `fracmap-train vae`: from a manifest and a configuration to a trained run folder.
//!
//! The manifest's vertebrae are cropped with the configuration's `[data]` spec (cached, see
//! `training_data.rs`); clean normal vertebrae of the training folds train, those of the
//! validation fold pick the best epoch; the test fold is left for `eval-vae`.
//!
//! Run folder: `run.json` and `config.toml` (see `run_record.rs`), `metrics.csv`, `loss.png`
//! (redrawn after every epoch), the checkpoints (see `checkpoint.rs`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;

use super::checkpoint::{self, Which};
use super::config::VaeConfig;
use super::curves::write_loss_curve;
use super::train::{TrainEvent, TrainOutcome, TrainRun};
use crate::crops;
use crate::device::{DeviceChoice, select_device};
use crate::progress::ProgressLine;
use crate::run_record::RunRecord;
use crate::training_data::{self, CachedCrops, FoldSplit, Role, is_clean_normal, select};

/// What `fracmap-train vae` was asked.
#[derive(Debug, Clone)]
pub struct VaeTrainRequest {
    pub config: PathBuf,
    /// The manifest.
    pub data: PathBuf,
    /// The test fold.
    pub fold: usize,
    pub out: PathBuf,
    pub resume: bool,
    /// The crop cache folder; default: beside the manifest, named by the crop spec.
    pub crops: Option<PathBuf>,
    /// Threads for cropping (0: every core).
    pub threads: usize,
    pub device: DeviceChoice,
}

/// Trains the VAE of a request, reporting progress on stderr.
pub fn train_vae(request: &VaeTrainRequest) -> Result<TrainOutcome> {
    let config = VaeConfig::load(&request.config).with_context(|| request.config.display().to_string())?;
    let spec = config.data.crop_spec(config.model.input_shape);
    let cache = request.crops.clone().unwrap_or_else(|| training_data::default_cache_dir(&request.data, &spec));
    let progress = ProgressLine::default();
    let index = crops::build_crop_cache(&request.data, &cache, &spec, request.threads, &|done, total| {
        progress.update("crops: case", done, total, "");
    })?
    .index;
    progress.finish(&format!("crops: {} vertebrae in {}", index.crops.len(), cache.display()));

    let split = FoldSplit::new(&index, request.fold)?;
    let pick = |role| select(&index, &split, role, is_clean_normal).into_iter().cloned().collect::<Vec<_>>();
    let (train, val) = (pick(Role::Train), pick(Role::Validation));
    for (name, set, fold) in [("training", &train, None), ("validation", &val, Some(split.validation))] {
        if set.is_empty() {
            let folds = fold.map_or_else(|| "the training folds".to_string(), |f| format!("fold {f}"));
            bail!("{}: no normal vertebrae in {folds} for the {name} set", request.data.display());
        }
    }
    let (device, device_name) = select_device(request.device)?;
    let record = RunRecord::new("vae", &request.data, &cache, split, (train.len(), val.len()))?;
    prepare_run_dir(&request.out, &record, &config, request.resume)?;
    eprintln!(
        "vae: {} training and {} validation crops (test fold {}, validation fold {}), {} parameters, on {device_name}",
        train.len(),
        val.len(),
        split.test,
        split.validation,
        config.model.init(&Device::flex(), 0).num_params()
    );

    let (train, val) =
        (CachedCrops::new(&cache, train, config.data.window), CachedCrops::new(&cache, val, config.data.window));
    let run =
        TrainRun { config: &config, train: &train, val: &val, run_dir: &request.out, device, resume: request.resume };
    let mut curve_error = None;
    let outcome = run.run(|event| match event {
        TrainEvent::Batch { epoch, epochs, batch, batches, loss, crops_per_second } => progress.update(
            &format!("epoch {epoch}/{epochs}"),
            batch,
            batches,
            &format!(
                "loss {:.4} (recon {:.4}, kl {:.1}) {crops_per_second:.1} crops/s",
                loss.loss, loss.recon, loss.kl
            ),
        ),
        TrainEvent::Epoch(m) => {
            let val = m.val.map_or(String::new(), |v| format!(", val {:.4} (recon {:.4})", v.loss, v.recon));
            progress.finish(&format!(
                "epoch {}/{}: train {:.4} (recon {:.4}, kl {:.1}){val}, beta {:.1e}, {:.1} s",
                m.epoch, config.train.epochs, m.train.loss, m.train.recon, m.train.kl, m.beta, m.seconds
            ));
            if let Err(e) = write_loss_curve(&request.out) {
                curve_error.get_or_insert(e);
            }
        }
    })?;
    if let Some(e) = curve_error {
        eprintln!("warning: loss curve not drawn: {e:#}");
    }
    Ok(outcome)
}

/// Writes the run record into a new run folder, or checks it against the one there when
/// resuming.
fn prepare_run_dir(out: &Path, record: &RunRecord, config: &VaeConfig, resume: bool) -> Result<()> {
    let has_checkpoint = checkpoint::locate(out, Which::Last)?.is_some();
    if has_checkpoint && resume {
        let earlier = RunRecord::load(out)?;
        return record.check_resumes(&earlier);
    }
    if has_checkpoint {
        bail!("{} already holds a run: add --resume to continue it, or choose another --out", out.display());
    }
    record.save(out, &config.to_toml()).with_context(|| format!("{}: cannot start the run", out.display()))
}
