//! `fracmap-train experiment box-vs-slice`: the method's key experiment. On the same folds,
//! crops, VAE and U-Net architecture, it trains and scores
//! 1. A: slice-level weak labels (`configs/weak_slice.toml`);
//! 2. B: box-level weak labels (`configs/weak_box.toml`);
//! 3. the VAE error alone, thresholded (its normalised `E` is the map);
//! 4. the fracture box itself filled as the mask (the naive use of a box);
//! 5. B's map kept inside the fracture box (what a draft mask from a clinician's box holds);
//! 6. the upper bound: B's configuration fully supervised by the true masks (BCE + Dice),
//!
//! every threshold chosen on the training and validation folds, every number on the test
//! fold (see `eval.rs` for the measures). Per fold: a VAE trained on that fold's training
//! normals (`fold<k>/vae`), the three U-Nets (`fold<k>/{slice,box,full}`), `metrics.json`
//! and `heatmaps.png` (the same test vertebrae under every method). Over folds: `report.md`
//! (mean and spread) and `results.json`.
//!
//! Finished stages are reused when the command runs again on the same `--out` (a VAE whose
//! last epoch is done, a U-Net folder with its test numbers), so an interrupted experiment
//! continues where it stopped.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use burn::prelude::*;
use fracmap_core::fsutil::write_atomic;
use fracmap_core::picture::write_png;
use ndarray::Array3;
use serde::{Deserialize, Serialize};

use super::config::{Supervision, WeakConfig};
use super::data::Sample;
use super::eval::{MapMetrics, score_maps};
use super::pictures::heatmap_sheet;
use super::run::{FoldMaps, FoldSamples, TEST_METRICS_FILE, fold_samples, load_frozen_vae, train_on_fold};
use super::train::BEST_MODEL_FILE;
use crate::device::{DeviceChoice, select_device};
use crate::manifest::Status;
use crate::progress::ProgressLine;
use crate::vae::checkpoint::{self, Which};
use crate::vae::config::VaeConfig;
use crate::vae::run::{VaeTrainRequest, train_vae};

/// What `fracmap-train experiment box-vs-slice` was asked.
#[derive(Debug, Clone)]
pub struct ExperimentRequest {
    pub data: PathBuf,
    pub out: PathBuf,
    pub vae_config: PathBuf,
    pub box_config: PathBuf,
    pub slice_config: PathBuf,
    /// Test folds to run; empty: every fold of the manifest.
    pub folds: Vec<usize>,
    /// Fractured test vertebrae drawn per fold.
    pub pictures: usize,
    pub crops: Option<PathBuf>,
    pub threads: usize,
    pub device: DeviceChoice,
}

/// The five methods, in the report's order.
pub const METHODS: [&str; 6] =
    ["A: slice labels", "B: box labels", "VAE error alone", "box filled", "B inside the box", "fully supervised"];
/// Indices in [`METHODS`].
/// The methods' column titles in the heat-map sheet.
const METHOD_TITLES: [&str; 6] = ["A SLICE", "B BOX", "VAE", "BOX FILL", "B IN BOX", "FULL"];
const B: usize = 1;
const FILLED: usize = 3;
const FULL: usize = 5;

/// `maps` kept inside each vertebra's fracture boxes, 0 elsewhere (a normal vertebra: 0
/// everywhere): what a draft mask from B and a clinician's box can contain.
fn inside_boxes(maps: &[Array3<f32>], samples: &[Sample]) -> Vec<Array3<f32>> {
    maps.iter()
        .zip(samples)
        .map(|(map, s)| ndarray::Zip::from(map).and(&s.box_in).map_collect(|&p, &inside| if inside { p } else { 0.0 }))
        .collect()
}

/// One fold's numbers, per method in [`METHODS`] order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldResult {
    pub fold: usize,
    pub test_crops: usize,
    pub test_fractured: usize,
    pub methods: Vec<MapMetrics>,
}

/// Runs the experiment of a request; returns every fold's numbers.
pub fn run_experiment(request: &ExperimentRequest) -> Result<Vec<FoldResult>> {
    let boxes = WeakConfig::load(&request.box_config).with_context(|| request.box_config.display().to_string())?;
    let slices = WeakConfig::load(&request.slice_config).with_context(|| request.slice_config.display().to_string())?;
    ensure!(boxes.labels.mode == Supervision::Box, "{}: labels.mode must be \"box\"", request.box_config.display());
    ensure!(
        slices.labels.mode == Supervision::Slice,
        "{}: labels.mode must be \"slice\"",
        request.slice_config.display()
    );
    ensure!(
        (&boxes.data, &boxes.model, &boxes.train, boxes.labels.error_norm, boxes.labels.error_sigma)
            == (&slices.data, &slices.model, &slices.train, slices.labels.error_norm, slices.labels.error_sigma),
        "{} and {} must differ only in [labels] mode and [loss]: the comparison holds data, model, error map and training fixed",
        request.box_config.display(),
        request.slice_config.display()
    );
    let mut full = boxes.clone();
    full.labels.mode = Supervision::Full;
    let (device, device_name) = select_device(request.device)?;
    eprintln!("experiment box-vs-slice on {device_name}, into {}", request.out.display());
    let folds = if request.folds.is_empty() { all_folds(request)? } else { request.folds.clone() };

    let progress = ProgressLine::default();
    let mut results = Vec::new();
    for &fold in &folds {
        let dir = request.out.join(format!("fold{fold}"));
        let vae_dir = dir.join("vae");
        train_vae_once(request, fold, &vae_dir)?;
        let (vae, vae_config, vae_record) = load_frozen_vae(&vae_dir, &device)?;
        let samples = fold_samples(
            &boxes,
            (&vae, &vae_config),
            &request.data,
            request.crops.as_deref(),
            fold,
            request.threads,
            &progress,
        )?;
        let mut unets = Vec::new();
        for config in [&slices, &boxes, &full] {
            let out = dir.join(config.labels.mode.name());
            unets.push(unet_method(config, &samples, request, &vae_record, &out, &device, &progress)?);
        }
        let [a, b, upper]: [FoldMaps; 3] = unets.try_into().map_err(|_| anyhow::anyhow!("three U-Nets"))?;
        let tuning = samples.tuning();
        let error_maps = |set: &[Sample]| set.iter().map(|s| s.error.clone()).collect::<Vec<_>>();
        let vae_alone = FoldMaps { tuning: error_maps(tuning), test: error_maps(&samples.test) };
        let box_maps = |set: &[Sample]| -> Vec<Array3<f32>> {
            set.iter().map(|s| s.box_in.mapv(|v| if v { 1.0 } else { 0.0 })).collect()
        };
        let filled = FoldMaps { tuning: box_maps(tuning), test: box_maps(&samples.test) };
        let b_in_box = FoldMaps { tuning: inside_boxes(&b.tuning, tuning), test: inside_boxes(&b.test, &samples.test) };
        let mut methods = Vec::new();
        let mut maps = Vec::new();
        for (method, fold_maps) in [a, b, vae_alone, filled, b_in_box, upper].into_iter().enumerate() {
            // The filled box is 0 or 1: any threshold in (0, 1] gives the same mask.
            methods.push(match method {
                FILLED => score_maps(&fold_maps.test, &samples.test, 0.5)?,
                _ => fold_maps.score(&samples)?,
            });
            maps.push(fold_maps.test);
        }

        let result = FoldResult {
            fold,
            test_crops: samples.test.len(),
            test_fractured: samples.test.iter().filter(|s| s.entry.status == Status::Fractured).count(),
            methods,
        };
        let path = dir.join("metrics.json");
        write_atomic(&path, &serde_json::to_vec_pretty(&result)?).with_context(|| path.display().to_string())?;
        let thresholds: Vec<f32> = result.methods.iter().map(|m| m.threshold).collect();
        let maps: Vec<&[Array3<f32>]> = maps.iter().map(Vec::as_slice).collect();
        match heatmap_sheet(&samples.test, &maps, &METHOD_TITLES, &thresholds, request.pictures)? {
            Some(picture) => {
                let path = dir.join("heatmaps.png");
                write_png(&path, &picture).with_context(|| path.display().to_string())?;
            }
            None => eprintln!("fold {fold}: no fractured test vertebra with a true mask to draw"),
        }
        progress.finish(&format!("fold {fold}: {}", summary_line(&result)));
        results.push(result);
    }
    let path = request.out.join("results.json");
    write_atomic(&path, &serde_json::to_vec_pretty(&results)?).with_context(|| path.display().to_string())?;
    let path = request.out.join("report.md");
    write_atomic(&path, report(request, &results).as_bytes()).with_context(|| path.display().to_string())?;
    eprintln!("report: {}", path.display());
    Ok(results)
}

/// Every fold the manifest's labeled crops use.
fn all_folds(request: &ExperimentRequest) -> Result<Vec<usize>> {
    let manifest = crate::manifest::Manifest::load(&request.data, false)?;
    let folds = manifest.cases.iter().filter_map(|c| c.fold).max().map_or(0, |f| f + 1);
    ensure!(folds >= 3, "{}: {folds} folds; the experiment needs at least 3", request.data.display());
    Ok((0..folds).collect())
}

/// Trains (or finishes) the fold's VAE unless its last epoch is already done.
fn train_vae_once(request: &ExperimentRequest, fold: usize, dir: &Path) -> Result<()> {
    let config = VaeConfig::load(&request.vae_config).with_context(|| request.vae_config.display().to_string())?;
    if let Some(last) = checkpoint::locate(dir, Which::Last)?
        && checkpoint::load_state(&last)?.epochs_done >= config.train.epochs
    {
        eprintln!("fold {fold}: VAE of {} reused", dir.display());
        return Ok(());
    }
    train_vae(&VaeTrainRequest {
        config: request.vae_config.clone(),
        data: request.data.clone(),
        fold,
        out: dir.to_path_buf(),
        resume: true,
        crops: request.crops.clone(),
        threads: request.threads,
        device: request.device,
    })?;
    Ok(())
}

/// Trains one U-Net method (or reuses a finished one) and scores it: the test numbers and
/// the test maps.
fn unet_method(
    config: &WeakConfig,
    samples: &FoldSamples,
    request: &ExperimentRequest,
    vae: &super::run::VaeRecord,
    out: &Path,
    device: &Device,
    progress: &ProgressLine,
) -> Result<FoldMaps> {
    let done = out.join(TEST_METRICS_FILE);
    let model = if done.exists() {
        eprintln!("{}: reused", out.display());
        config.model.load(&out.join(BEST_MODEL_FILE), device).with_context(|| out.display().to_string())?
    } else {
        if out.exists() {
            std::fs::remove_dir_all(out)
                .with_context(|| format!("{}: cannot clear an unfinished run", out.display()))?;
        }
        train_on_fold(config, samples, &request.data, vae, out, device, progress)?
    };
    let batch = config.train.batch_size;
    let maps = FoldMaps::predict(&model, samples, batch, device)?;
    let metrics = maps.score(samples)?;
    write_atomic(&done, &serde_json::to_vec_pretty(&metrics)?).with_context(|| done.display().to_string())?;
    Ok(maps)
}

fn summary_line(result: &FoldResult) -> String {
    let dice: Vec<String> =
        METHODS.iter().zip(&result.methods).map(|(name, m)| format!("{name} Dice {:.3}", m.dice)).collect();
    dice.join(", ")
}

/// Mean and sample standard deviation of `values` (`None`s left out).
fn mean_sd(values: impl Iterator<Item = Option<f64>>) -> Option<(f64, f64)> {
    let values: Vec<f64> = values.flatten().collect();
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    Some((mean, var.sqrt()))
}

fn cell(value: Option<(f64, f64)>, digits: usize) -> String {
    value.map_or("n/a".to_string(), |(m, s)| format!("{m:.digits$} ± {s:.digits$}"))
}

/// The markdown report: the table over folds, the headline ratio, every fold's Dice.
fn report(request: &ExperimentRequest, results: &[FoldResult]) -> String {
    let mut md = String::new();
    let folds: Vec<String> = results.iter().map(|r| r.fold.to_string()).collect();
    let _ = writeln!(md, "# Box vs slice labels: results\n");
    let _ = writeln!(
        md,
        "Data `{}`; test folds {}; configs `{}`, `{}`, VAE `{}`. Mean ± sample standard deviation over folds; every threshold chosen on the training and validation folds, every number on the test fold, voxels pooled over its vertebrae.\n",
        request.data.display(),
        folds.join(", "),
        request.slice_config.display(),
        request.box_config.display(),
        request.vae_config.display()
    );
    let _ = writeln!(
        md,
        "| method | Dice | IoU | precision | recall | voxel PR-AUC | predicted outside box (mm³/vertebra) | vertebra AUC | threshold |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (k, name) in METHODS.iter().enumerate() {
        let of = |f: &dyn Fn(&MapMetrics) -> Option<f64>| mean_sd(results.iter().map(|r| f(&r.methods[k])));
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(of(&|m| Some(m.dice)), 3),
            cell(of(&|m| Some(m.iou)), 3),
            cell(of(&|m| m.precision), 3),
            cell(of(&|m| m.recall), 3),
            cell(of(&|m| m.pr_auc), 3),
            cell(of(&|m| Some(m.outside_box_mm3)), 0),
            cell(of(&|m| m.vertebra_auc), 3),
            cell(of(&|m| Some(m.threshold as f64)), 2),
        );
    }
    let ratio = mean_sd(results.iter().map(|r| {
        let full = r.methods[FULL].dice;
        (full > 0.0).then(|| r.methods[B].dice / full)
    }));
    let _ = writeln!(md, "\n**B's Dice as a fraction of the fully supervised upper bound: {}.**\n", cell(ratio, 2));
    let _ = writeln!(md, "Dice per fold:\n");
    let _ = writeln!(md, "| fold | test vertebrae (fractured) | {} |", METHODS.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---|".repeat(METHODS.len()));
    for r in results {
        let dice: Vec<String> = r.methods.iter().map(|m| format!("{:.3}", m.dice)).collect();
        let _ = writeln!(md, "| {} | {} ({}) | {} |", r.fold, r.test_crops, r.test_fractured, dice.join(" | "));
    }
    let _ = writeln!(
        md,
        "\nThe box-filled baseline and B inside the box read each test vertebra's fracture box (a normal vertebra has none: nothing is predicted there), as a draft mask does when a clinician gives the box: their vertebra AUC and outside-box volume are those of the label itself, not of a model. The other maps never see a box."
    );
    md
}
