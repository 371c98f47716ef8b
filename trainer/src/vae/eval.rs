//! `fracmap-train eval-vae`: how well the VAE's error map finds fractures on the run's test
//! fold, which it never saw.
//!
//! - Voxel level: ROC-AUC and PR-AUC (average precision) of `E` against the true fracture
//!   mask, over every voxel of the fractured vertebrae that have one. PR-AUC is the honest
//!   number: fracture voxels are a few percent of a crop, and ROC-AUC rewards the many easy
//!   negatives (air, soft tissue) that any model reconstructs well.
//! - Vertebra level: a vertebra's anomaly score is a high percentile of its `E`; ROC-AUC of
//!   that score, normal vs fractured.
//!
//! Output folder: `maps/<crop>_error.nii.gz` (float32 `E` on the crop's grid, which overlays
//! the source CT), `vertebrae.csv` (one row per vertebra), `pictures/*.png` (crop,
//! reconstruction and error side by side, axial and sagittal, truth outlined) and
//! `report.md` with the numbers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fracmap_core::fsutil::write_atomic;
use fracmap_core::heatmap::{HeatmapOptions, heatmap_plane};
use fracmap_core::metrics::{average_precision, roc_auc};
use fracmap_core::nifti_io::{NiftiDtype, write_volume};
use fracmap_core::picture::{DisplayWindow, Plane, RgbImage, draw_text, tiled, write_png};
use fracmap_core::{Mask, Volume};
use ndarray::Array3;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, Which};
use super::error_map::{error_of, reconstruct};
use crate::crops;
use crate::crops::CropEntry;
use crate::device::{DeviceChoice, select_device};
use crate::manifest::Status;
use crate::progress::ProgressLine;
use crate::run_record::RunRecord;
use crate::training_data::{CachedCrops, Role, select};

/// What `fracmap-train eval-vae` was asked.
#[derive(Debug, Clone)]
pub struct VaeEvalRequest {
    pub run: PathBuf,
    /// Where the report goes; default `<run>/eval`.
    pub out: Option<PathBuf>,
    pub checkpoint: Which,
    /// Gaussian smoothing of `E`, voxels; `None`: raw `|X - X_hat|`.
    pub sigma: Option<f32>,
    /// The percentile of `E` that scores a vertebra, `0..=100`.
    pub percentile: f64,
    /// How many fractured vertebrae to draw (and half as many normal ones).
    pub pictures: usize,
    pub device: DeviceChoice,
}

/// The file of [`VaeEvalReport`] in the report folder: what `export` reads.
pub const EVAL_METRICS_FILE: &str = "metrics.json";

/// The numbers of an evaluation; also `metrics.json` of the report folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeEvalReport {
    /// The checkpoint evaluated, "best" or "last", and its epoch.
    pub checkpoint: String,
    pub epoch: usize,
    /// Gaussian smoothing of E in voxels, if any, and the percentile scoring a vertebra.
    pub sigma: Option<f32>,
    pub percentile: f64,
    pub test_fold: usize,
    pub normal: usize,
    pub fractured: usize,
    /// Fractured vertebrae with a true mask in their crop (the voxel metrics' material).
    pub with_truth: usize,
    /// Share of fracture voxels among the voxels scored at the voxel level.
    pub prevalence: Option<f64>,
    pub voxel_roc_auc: Option<f64>,
    pub voxel_pr_auc: Option<f64>,
    pub vertebra_roc_auc: Option<f64>,
    /// The same voxel measures with the windowed CT itself as the map: a baseline that any
    /// error map should beat (fractures in bone, and sclerotic ones, are bright).
    pub brightness_roc_auc: Option<f64>,
    pub brightness_pr_auc: Option<f64>,
    #[serde(skip)]
    pub out: PathBuf,
}

/// One test vertebra's result.
struct Scored {
    entry: CropEntry,
    score: f32,
    truth_voxels: usize,
}

/// Evaluates a run's VAE on its test fold, writing maps, pictures and the report.
pub fn evaluate_vae(request: &VaeEvalRequest) -> Result<VaeEvalReport> {
    if !(0.0..=100.0).contains(&request.percentile) {
        bail!("--percentile {}: must be within 0..=100", request.percentile);
    }
    let record = RunRecord::load(&request.run)?;
    let (device, _) = select_device(request.device)?;
    let checkpoint_dir = checkpoint::locate(&request.run, request.checkpoint)?
        .with_context(|| format!("{}: no checkpoint yet", request.run.display()))?;
    let state = checkpoint::load_state(&checkpoint_dir)?;
    let model = checkpoint::load_model(&checkpoint_dir, &state, &device)?;
    let config = state.config;
    let spec = config.data.crop_spec(config.model.input_shape);
    let progress = ProgressLine::default();
    let index = crops::build_crop_cache(&record.data, &record.crops, &spec, 0, &|done, total| {
        progress.update("crops: case", done, total, "");
    })?
    .index;
    let test: Vec<CropEntry> = select(&index, &record.split, Role::Test, |_| true).into_iter().cloned().collect();
    if test.is_empty() {
        bail!("{}: no labeled vertebrae in test fold {}", record.data.display(), record.split.test);
    }
    let out = request.out.clone().unwrap_or_else(|| request.run.join("eval"));
    let maps_dir = out.join("maps");
    let pictures_dir = out.join("pictures");
    for dir in [&maps_dir, &pictures_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }

    let crops = CachedCrops::new(&record.crops, test, config.data.window);
    let (mut voxel_scores, mut voxel_truth, mut voxel_brightness) = (Vec::new(), Vec::new(), Vec::new());
    let mut scored = Vec::new();
    let mut drawn = (0, 0);
    for (i, entry) in crops.entries().iter().enumerate() {
        progress.update("eval-vae: vertebra", i + 1, crops.entries().len(), &entry.dir);
        let ct = crops.volume(i)?;
        let reconstruction = reconstruct(&model, ct.data())?;
        let error = error_of(ct.data(), &reconstruction, request.sigma)?;
        let error_volume = ct.with_data(error.clone())?;
        let map_path = maps_dir.join(format!("{}_error.nii.gz", entry.dir));
        write_volume(&map_path, &error_volume, NiftiDtype::F32).with_context(|| map_path.display().to_string())?;

        let truth = entry.load_truth(&record.crops)?;
        let truth_voxels = truth.as_ref().map_or(0, |t| t.iter().filter(|&&v| v).count());
        if entry.status == Status::Fractured && truth_voxels > 0 {
            let truth = truth.as_ref().expect("counted above");
            voxel_scores.extend(error.iter().copied());
            voxel_truth.extend(truth.iter().copied());
            voxel_brightness.extend(ct.as_slice().iter().copied());
        }
        let fractured = entry.status == Status::Fractured;
        let (n_fractured, n_normal) = &mut drawn;
        let wanted = if fractured { n_fractured } else { n_normal };
        let limit = if fractured { request.pictures } else { request.pictures.div_ceil(2) };
        if *wanted < limit && (!fractured || truth_voxels > 0) {
            let picture = error_picture(&ct, &reconstruction, &error, truth.as_ref())?;
            let path = pictures_dir.join(format!("{}.png", entry.dir));
            write_png(&path, &picture).with_context(|| path.display().to_string())?;
            *wanted += 1;
        }
        scored.push(Scored { entry: entry.clone(), score: percentile(&error, request.percentile), truth_voxels });
    }
    progress.finish(&format!("eval-vae: {} test vertebrae", scored.len()));

    let fractured: Vec<bool> = scored.iter().map(|s| s.entry.status == Status::Fractured).collect();
    let scores: Vec<f32> = scored.iter().map(|s| s.score).collect();
    let both_classes = |truth: &[bool]| truth.contains(&true) && truth.contains(&false);
    let report = VaeEvalReport {
        checkpoint: request.checkpoint.name().to_string(),
        epoch: state.epochs_done,
        sigma: request.sigma,
        percentile: request.percentile,
        test_fold: record.split.test,
        normal: fractured.iter().filter(|f| !**f).count(),
        fractured: fractured.iter().filter(|f| **f).count(),
        with_truth: scored.iter().filter(|s| s.entry.status == Status::Fractured && s.truth_voxels > 0).count(),
        prevalence: (!voxel_truth.is_empty())
            .then(|| voxel_truth.iter().filter(|v| **v).count() as f64 / voxel_truth.len() as f64),
        voxel_roc_auc: both_classes(&voxel_truth).then(|| roc_auc(&voxel_scores, &voxel_truth)).transpose()?,
        voxel_pr_auc: both_classes(&voxel_truth).then(|| average_precision(&voxel_scores, &voxel_truth)).transpose()?,
        vertebra_roc_auc: both_classes(&fractured).then(|| roc_auc(&scores, &fractured)).transpose()?,
        brightness_roc_auc: both_classes(&voxel_truth).then(|| roc_auc(&voxel_brightness, &voxel_truth)).transpose()?,
        brightness_pr_auc: both_classes(&voxel_truth)
            .then(|| average_precision(&voxel_brightness, &voxel_truth))
            .transpose()?,
        out: out.clone(),
    };
    write_vertebra_table(&out.join("vertebrae.csv"), &scored)?;
    write_report(&out.join("report.md"), request, &record, &report)?;
    let metrics_path = out.join(EVAL_METRICS_FILE);
    let json = serde_json::to_vec_pretty(&report).expect("a report serialises");
    write_atomic(&metrics_path, &json).with_context(|| format!("{}: cannot write", metrics_path.display()))?;
    Ok(report)
}

/// The `p`-th percentile (nearest rank) of a map's values.
fn percentile(values: &Array3<f32>, p: f64) -> f32 {
    let mut sorted: Vec<f32> = values.iter().copied().collect();
    sorted.sort_by(f32::total_cmp);
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Crop, reconstruction and error map side by side, axial over sagittal, through the centre
/// of the true fracture (or the error's maximum), the truth outlined in every panel.
fn error_picture(
    ct: &Volume,
    reconstruction: &Array3<f32>,
    error: &Array3<f32>,
    truth: Option<&Mask>,
) -> Result<RgbImage> {
    let truth = truth.filter(|t| t.iter().any(|v| *v));
    let point = match truth {
        Some(t) => centroid(t),
        None => argmax(error),
    };
    let recon = ct.with_data(reconstruction.clone())?;
    // The error's colour scale: 0 to a fixed 0.5 of the window, so pictures compare.
    let scaled = ct.with_data(error.mapv(|e| (e / ERROR_SCALE).min(1.0)))?;
    let options = HeatmapOptions {
        threshold: 0.0,
        opacity: 1.0,
        window: DisplayWindow { low: 0.0, high: 1.0 },
        truth,
        ..HeatmapOptions::default()
    };
    let mut panels = Vec::new();
    for plane in [Plane::Axial, Plane::Sagittal] {
        let index = point[plane.fixed_axis()];
        for (title, volume, prob) in [("CT", ct, None), ("RECON", &recon, None), ("ERROR", ct, Some(&scaled))] {
            let panel = heatmap_plane(volume, prob, plane, index, &options)?;
            let mut panel = upscale(&panel, (PANEL_SIZE / panel.width.max(1)).max(1));
            draw_text(&mut panel, 3, 3, title, 2, [255, 255, 0]);
            panels.push(panel);
        }
    }
    Ok(tiled(&panels, 3, 4))
}

/// Error (windowed units) drawn at full colour.
const ERROR_SCALE: f32 = 0.5;

/// About how wide a panel is drawn, pixels: crops are 32-64 voxels a side.
const PANEL_SIZE: usize = 192;

/// Nearest-neighbour enlargement by `factor`.
pub(crate) fn upscale(image: &RgbImage, factor: usize) -> RgbImage {
    let factor = factor.max(1);
    let mut out = RgbImage::filled(image.width * factor, image.height * factor, [0, 0, 0]);
    for row in 0..out.height {
        for col in 0..out.width {
            out.set(row, col, image.get(row / factor, col / factor));
        }
    }
    out
}

pub(crate) fn centroid(mask: &Mask) -> [usize; 3] {
    let (mut sum, mut n) = ([0usize; 3], 0usize);
    for ((z, y, x), _) in mask.indexed_iter().filter(|(_, v)| **v) {
        sum = [sum[0] + z, sum[1] + y, sum[2] + x];
        n += 1;
    }
    sum.map(|s| s / n.max(1))
}

fn argmax(values: &Array3<f32>) -> [usize; 3] {
    let ((z, y, x), _) = values
        .indexed_iter()
        .fold(((0, 0, 0), f32::NEG_INFINITY), |best, (i, v)| if *v > best.1 { (i, *v) } else { best });
    [z, y, x]
}

fn write_vertebra_table(path: &Path, scored: &[Scored]) -> Result<()> {
    let mut csv = String::from("crop,case,level,status,truth_voxels,score\n");
    for s in scored {
        let status = if s.entry.status == Status::Fractured { "fractured" } else { "normal" };
        let e = &s.entry;
        writeln!(csv, "{},{},{},{status},{},{}", e.dir, e.case, e.level, s.truth_voxels, s.score).expect("a string");
    }
    write_atomic(path, csv.as_bytes()).with_context(|| format!("{}: cannot write", path.display()))
}

fn write_report(path: &Path, request: &VaeEvalRequest, record: &RunRecord, r: &VaeEvalReport) -> Result<()> {
    let number = |v: Option<f64>| v.map_or("n/a (one class missing)".to_string(), |v| format!("{v:.4}"));
    let smoothing = request.sigma.map_or("none".to_string(), |s| format!("Gaussian, sigma {s} voxels"));
    let mut md = String::new();
    writeln!(md, "# VAE evaluation: {}\n", request.run.display()).expect("a string");
    writeln!(md, "- data: {}", record.data.display()).expect("a string");
    writeln!(md, "- test fold {} (never trained on); checkpoint: {} (epoch {})", r.test_fold, r.checkpoint, r.epoch)
        .expect("a string");
    writeln!(md, "- error map E = |X - X_hat| with z = mu; smoothing: {smoothing}").expect("a string");
    writeln!(md, "- vertebrae: {} normal, {} fractured ({} with a true mask)\n", r.normal, r.fractured, r.with_truth)
        .expect("a string");
    writeln!(md, "| measure | value |\n|---|---|").expect("a string");
    writeln!(md, "| voxel ROC-AUC (E vs true mask, fractured vertebrae) | {} |", number(r.voxel_roc_auc))
        .expect("a string");
    writeln!(md, "| voxel PR-AUC (average precision) | {} |", number(r.voxel_pr_auc)).expect("a string");
    writeln!(md, "| fracture voxel prevalence (PR-AUC of a random map) | {} |", number(r.prevalence))
        .expect("a string");
    writeln!(
        md,
        "| vertebra ROC-AUC, score = {}th percentile of E, normal vs fractured | {} |\n",
        request.percentile,
        number(r.vertebra_roc_auc)
    )
    .expect("a string");
    writeln!(md, "Per vertebra: `vertebrae.csv`. Error maps (NIfTI, on each crop's grid): `maps/`.\n")
        .expect("a string");
    writeln!(md, "## Pictures\n\nCT, reconstruction and error (0 to {ERROR_SCALE} of the window), axial over sagittal, true mask outlined.\n").expect("a string");
    let mut pictures: Vec<String> = std::fs::read_dir(r.out.join("pictures"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    pictures.sort();
    for name in pictures {
        writeln!(md, "![{name}](pictures/{name})").expect("a string");
    }
    write_atomic(path, md.as_bytes()).with_context(|| format!("{}: cannot write", path.display()))
}
