//! `fracmap-train pseudo-label`: draft fracture masks for a dataset's cases with the exported
//! models (a VAE and the weak U-Net that reads its error maps), run through ONNX Runtime by
//! `fracmap_inference::pipeline` exactly as the server runs them.
//!
//! A batch is meant for thousands of volumes, so it is resumable and idempotent: each case
//! writes its files whole (write, then rename) into `cases/<id>/`, `result.json` last, and a
//! case with a `result.json` is skipped on a rerun. A case that fails leaves `failed.json`
//! (its error) and no `result.json`; the batch goes on, and a rerun tries it again. The tables
//! are rebuilt at the end from every case folder, so a resumed batch reports every case.
//!
//! `--out` holds:
//! - `cases/<id>/draft_mask.nii.gz`: uint8 0/1 on the CT's grid (a viewer overlays it);
//! - `cases/<id>/probability.nii.gz`: float32, with `--probability`;
//! - `cases/<id>/overlay.png`: the case's most suspicious vertebra, for the review list;
//! - `cases/<id>/result.json`: threshold, mask volume, confidence, per-vertebra figures;
//! - `results.csv`: a row per case and vertebra; `failed.csv`: a row per failed case;
//! - `review.md`: the cases least confident first, with their overlays, where a clinician
//!   starts correcting (a case's confidence is the mean probability over its draft mask, 0
//!   for an empty one, [`fracmap_core::PseudoLabel`]).

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use fracmap_core::fsutil::write_atomic;
use fracmap_core::heatmap::{HeatmapOptions, heatmap_planes};
use fracmap_core::nifti_io::{NiftiDtype, read_volume, write_mask, write_volume};
use fracmap_core::picture::{draw_text, write_png};
use fracmap_core::{Box3, Volume};
use fracmap_inference::models::{LoadedModel, load_models};
use fracmap_inference::pipeline::{ModelPair, SegmentOptions, Segmentation, Vertebra, segment};
use fracmap_inference::repository::ModelRepository;
use fracmap_inference::runtime::{Device, OnnxRuntime, SessionSettings, default_library_path};
use serde::{Deserialize, Serialize};

use crate::manifest::{Case, Manifest};
use crate::parallel::map_indexed;
use crate::progress::ProgressLine;

pub const CASES_DIR: &str = "cases";
pub const DRAFT_FILE: &str = "draft_mask.nii.gz";
pub const PROBABILITY_FILE: &str = "probability.nii.gz";
pub const OVERLAY_FILE: &str = "overlay.png";
pub const RESULT_FILE: &str = "result.json";
pub const FAILED_FILE: &str = "failed.json";
pub const RESULTS_TABLE: &str = "results.csv";
pub const FAILED_TABLE: &str = "failed.csv";
pub const REVIEW_FILE: &str = "review.md";

/// Which of the manifest's cases to draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaseSelection {
    /// Cases with `labeled: false`, the pool a flywheel drafts.
    Unlabeled,
    /// Every case.
    All,
}

/// What a batch runs with.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// The model repository (`models/<name>/<version>/`).
    pub models: PathBuf,
    /// The U-Net to run (its VAE comes with it); `None`: the first U-Net by name.
    pub model: Option<String>,
    pub data: PathBuf,
    pub out: PathBuf,
    pub cases: CaseSelection,
    /// Also write each case's probability map.
    pub probability: bool,
    /// Draft-mask threshold; `None`: the U-Net manifest's.
    pub threshold: Option<f32>,
    /// Cases drafted at once, each with its own ONNX Runtime sessions.
    pub jobs: NonZeroUsize,
    /// ONNX Runtime threads per job; `None`: the cores shared among the jobs.
    pub threads: Option<NonZeroUsize>,
    pub device: Device,
}

/// One vertebra's figures in a case's `result.json` and `results.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VertebraDraft {
    pub level: String,
    /// Highest probability in its crop's region.
    pub score: f32,
    /// Mean probability over its draft-mask voxels; 0 when it has none.
    pub confidence: f64,
    pub mask_voxels: usize,
    pub mask_volume_mm3: f64,
}

/// A case's `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseDraft {
    pub case: String,
    /// `<name> version <version>` of the U-Net and of its VAE.
    pub model: String,
    pub vae: String,
    pub threshold: f32,
    /// Fracture boxes of the manifest the draft was kept inside (0: none, the whole crops).
    pub fracture_boxes: usize,
    pub mask_voxels: usize,
    pub mask_volume_mm3: f64,
    pub confidence: f64,
    pub vertebrae: Vec<VertebraDraft>,
    pub seconds: f64,
}

/// A case's `failed.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseFailure {
    pub case: String,
    pub error: String,
}

/// What a batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSummary {
    pub selected: usize,
    /// Done by an earlier run and skipped.
    pub skipped: usize,
    pub drafted: usize,
    pub failed: Vec<CaseFailure>,
}

/// Drafts the selected cases of `settings.data` into `settings.out`; see the module.
pub fn run_batch(settings: &BatchSettings) -> Result<BatchSummary> {
    let manifest = Manifest::load(&settings.data, false)?;
    let selected: Vec<&Case> =
        manifest.cases.iter().filter(|case| settings.cases == CaseSelection::All || !case.labeled).collect();
    if selected.is_empty() {
        bail!(
            "{}: no case to draft ({} cases, none unlabeled; --cases all drafts every case)",
            settings.data.display(),
            manifest.cases.len()
        );
    }
    let cases_dir = settings.out.join(CASES_DIR);
    std::fs::create_dir_all(&cases_dir).with_context(|| format!("--out {}: cannot create", settings.out.display()))?;
    let todo: Vec<&Case> =
        selected.iter().copied().filter(|case| !case_dir(settings, case).join(RESULT_FILE).exists()).collect();
    let skipped = selected.len() - todo.len();
    if skipped > 0 {
        eprintln!("pseudo-label: {skipped} of {} cases already drafted (skipped)", selected.len());
    }

    // Nothing left to draft (a finished batch rerun): no models to load, the tables only.
    let failed = if todo.is_empty() { Vec::new() } else { draft_all(settings, &todo)? };
    write_tables(settings, &selected)?;
    Ok(BatchSummary { selected: selected.len(), skipped, drafted: todo.len() - failed.len(), failed })
}

/// Drafts `todo` on `settings.jobs` workers; returns the cases that failed, each recorded in
/// its folder (a failure never stops the batch).
fn draft_all(settings: &BatchSettings, todo: &[&Case]) -> Result<Vec<CaseFailure>> {
    let models = load(settings)?;
    let pair = find_pair(&models, settings.model.as_deref())?;
    eprintln!(
        "pseudo-label: {} cases with {} and {} ({} jobs, {})",
        todo.len(),
        pair.unet.id(),
        pair.vae.id(),
        settings.jobs,
        pair.unet.provider
    );
    let model_pair = ModelPair::new(pair.vae, pair.unet)?;

    let progress = ProgressLine::default();
    let started = Instant::now();
    let report = |done: usize, total: usize| progress.update("pseudo-label", done, total, &eta(started, done, total));
    let outcomes = map_indexed(todo.len(), settings.jobs.get(), &report, |index| {
        let case = todo[index];
        Ok(draft_case(settings, case, &model_pair, &pair).err().map(|error| {
            let failure = CaseFailure { case: case.id.clone(), error: format!("{error:#}") };
            record_failure(settings, case, &failure);
            failure
        }))
    })?;
    let failed: Vec<CaseFailure> = outcomes.into_iter().flatten().collect();
    progress.finish(&format!(
        "pseudo-label: {} cases drafted, {} failed in {:.0} s",
        todo.len() - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(failed)
}

/// "ETA 3 min" from the pace so far.
fn eta(started: Instant, done: usize, total: usize) -> String {
    let per_case = started.elapsed().as_secs_f64() / done.max(1) as f64;
    let left = per_case * (total - done) as f64;
    if left >= 90.0 { format!("ETA {:.0} min", left / 60.0) } else { format!("ETA {left:.0} s") }
}

fn case_dir(settings: &BatchSettings, case: &Case) -> PathBuf {
    settings.out.join(CASES_DIR).join(&case.id)
}

/// Every model of the repository, `jobs` sessions each, on `settings.device`.
fn load(settings: &BatchSettings) -> Result<Vec<LoadedModel>> {
    let runtime = OnnxRuntime::init(&default_library_path())?;
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let threads =
        settings.threads.unwrap_or_else(|| NonZeroUsize::new(cores / settings.jobs.get()).unwrap_or(NonZeroUsize::MIN));
    let session_settings = SessionSettings { device: settings.device, intra_threads: threads };
    let repository = ModelRepository::scan(&settings.models)?;
    Ok(load_models(runtime, &repository, &session_settings, settings.jobs)?)
}

/// The U-Net to run and its VAE, among the loaded models.
pub struct Pair<'a> {
    pub unet: &'a LoadedModel,
    pub vae: &'a LoadedModel,
}

/// The U-Net named `name` (default: the first U-Net by name) and the loaded VAE it reads.
fn find_pair<'a>(models: &'a [LoadedModel], name: Option<&str>) -> Result<Pair<'a>> {
    let unets: Vec<&LoadedModel> = models.iter().filter(|m| m.manifest.error_input.is_some()).collect();
    let unet = match name {
        Some(name) => *unets.iter().find(|m| m.manifest.name == name).with_context(|| {
            let known: Vec<&str> = unets.iter().map(|m| m.manifest.name.as_str()).collect();
            format!("--model {name}: no U-Net of that name in the repository (U-Nets: {})", known.join(", "))
        })?,
        None => *unets.first().context("the repository has no U-Net (a model whose manifest has error_input)")?,
    };
    let vae = models
        .iter()
        .find(|vae| unet.manifest.takes_errors_from(&vae.manifest))
        .with_context(|| format!("{}: the VAE whose error maps it reads is not in the repository", unet.id()))?;
    Ok(Pair { unet, vae })
}

/// Drafts one case into its folder, `result.json` last.
fn draft_case(settings: &BatchSettings, case: &Case, models: &ModelPair<'_>, pair: &Pair<'_>) -> Result<()> {
    let started = Instant::now();
    let ct = read_volume(&Manifest::resolve(&settings.data, &case.ct))?;
    let vertebrae = case
        .vertebrae
        .iter()
        .map(|v| {
            let body_box = v.body_box.to_box3().with_context(|| format!("vertebra {}: body_box", v.level))?;
            Ok(Vertebra { label: Some(v.level.to_string()), body_box })
        })
        .collect::<Result<Vec<_>>>()?;
    let fracture_boxes = case
        .vertebrae
        .iter()
        .flat_map(|v| v.fracture_boxes.iter().map(move |b| (v, b)))
        .map(|(v, b)| b.to_box3().with_context(|| format!("vertebra {}: fracture box", v.level)))
        .collect::<Result<Vec<Box3>>>()?;
    let options = SegmentOptions { threshold: settings.threshold, ..SegmentOptions::default() };
    let segmentation = segment(&ct, &vertebrae, &fracture_boxes, models, &options)?;

    let dir = case_dir(settings, case);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let _ = std::fs::remove_file(dir.join(FAILED_FILE));
    write_mask(&dir.join(DRAFT_FILE), &segmentation.mask, &ct.grid())?;
    if settings.probability {
        write_volume(&dir.join(PROBABILITY_FILE), &segmentation.probability, NiftiDtype::F32)?;
    }
    write_overlay(&dir.join(OVERLAY_FILE), case, &ct, &segmentation)?;
    let result = CaseDraft {
        case: case.id.clone(),
        model: pair.unet.id(),
        vae: pair.vae.id(),
        threshold: segmentation.threshold,
        fracture_boxes: fracture_boxes.len(),
        mask_voxels: segmentation.mask_voxels,
        mask_volume_mm3: segmentation.mask_volume_mm3,
        confidence: segmentation.confidence,
        vertebrae: segmentation
            .vertebrae
            .iter()
            .map(|v| VertebraDraft {
                level: v.label.clone().unwrap_or_default(),
                score: v.fracture_score,
                confidence: v.confidence,
                mask_voxels: v.mask_voxels,
                mask_volume_mm3: v.mask_volume_mm3,
            })
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let path = dir.join(RESULT_FILE);
    write_atomic(&path, serde_json::to_string_pretty(&result)?.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// The three planes through the centre of the case's highest-scoring vertebra, titled.
fn write_overlay(path: &Path, case: &Case, ct: &Volume, segmentation: &Segmentation) -> Result<()> {
    let top = segmentation
        .vertebrae
        .iter()
        .max_by(|a, b| a.fracture_score.total_cmp(&b.fracture_score))
        .context("no vertebra")?;
    let point = std::array::from_fn(|a| (top.region.min()[a] + top.region.max()[a]) / 2);
    let options = HeatmapOptions {
        threshold: segmentation.threshold,
        draft: Some(&segmentation.mask),
        point: Some(point),
        ..Default::default()
    };
    let mut picture = heatmap_planes(ct, &segmentation.probability, &options)?;
    let title = format!("{} {} {:.2}", case.id, top.label.as_deref().unwrap_or(""), top.fracture_score);
    let scale = (picture.height / 160).max(1);
    draw_text(&mut picture, 2, 2, &title, scale, [255, 255, 255]);
    write_png(path, &picture).with_context(|| format!("{}: cannot write", path.display()))
}

/// Writes `failed.json` into the case's folder; a failure to write it is printed, the batch
/// goes on (the failure is in `failed.csv` too).
fn record_failure(settings: &BatchSettings, case: &Case, failure: &CaseFailure) {
    eprintln!("pseudo-label: case {}: {}", failure.case, failure.error);
    let dir = case_dir(settings, case);
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let json = serde_json::to_string_pretty(failure).map_err(std::io::Error::other)?;
        write_atomic(&dir.join(FAILED_FILE), json.as_bytes())
    });
    if let Err(error) = written {
        eprintln!("pseudo-label: case {}: cannot record the failure: {error}", failure.case);
    }
}

/// `results.csv`, `failed.csv` and `review.md` from every selected case's folder.
fn write_tables(settings: &BatchSettings, cases: &[&Case]) -> Result<()> {
    let mut drafts = Vec::new();
    let mut failures = Vec::new();
    for case in cases {
        let dir = case_dir(settings, case);
        if let Some(draft) = read_json::<CaseDraft>(&dir.join(RESULT_FILE))? {
            drafts.push(draft);
        } else if let Some(failure) = read_json::<CaseFailure>(&dir.join(FAILED_FILE))? {
            failures.push(failure);
        }
    }
    let mut csv = String::from("case,vertebra,score,confidence,mask_voxels,mask_volume_mm3\n");
    for draft in &drafts {
        for v in &draft.vertebrae {
            csv.push_str(&format!(
                "{},{},{:.4},{:.4},{},{:.1}\n",
                draft.case, v.level, v.score, v.confidence, v.mask_voxels, v.mask_volume_mm3
            ));
        }
    }
    write_text(&settings.out.join(RESULTS_TABLE), &csv)?;
    let mut failed = String::from("case,error\n");
    for failure in &failures {
        failed.push_str(&format!("{},\"{}\"\n", failure.case, failure.error.replace('"', "'").replace('\n', " ")));
    }
    write_text(&settings.out.join(FAILED_TABLE), &failed)?;
    write_text(&settings.out.join(REVIEW_FILE), &review(&drafts, &failures))
}

/// The review list: least confident first (ties: larger draft first, then case id).
pub fn review(drafts: &[CaseDraft], failures: &[CaseFailure]) -> String {
    let mut order: Vec<&CaseDraft> = drafts.iter().collect();
    order.sort_by(|a, b| {
        a.confidence.total_cmp(&b.confidence).then(b.mask_voxels.cmp(&a.mask_voxels)).then(a.case.cmp(&b.case))
    });
    let mut text = String::from(
        "# Draft masks to review, least confident first\n\nConfidence: the mean fracture probability \
         over the case's draft mask (0: the draft is empty). Correct the drafts in any viewer \
         (`cases/<case>/draft_mask.nii.gz` lies on the CT's grid), save them as `<case>.nii.gz` \
         in one folder and bring them back with `fracmap-train import-labels --labels DIR --drafts \
         <this folder>`.\n\n| # | case | confidence | draft mm³ | top vertebra | score | overlay |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (rank, draft) in order.iter().enumerate() {
        let top = draft.vertebrae.iter().max_by(|a, b| a.score.total_cmp(&b.score));
        text.push_str(&format!(
            "| {} | {} | {:.3} | {:.0} | {} | {} | ![{}]({CASES_DIR}/{}/{OVERLAY_FILE}) |\n",
            rank + 1,
            draft.case,
            draft.confidence,
            draft.mask_volume_mm3,
            top.map_or("", |v| v.level.as_str()),
            top.map_or(String::new(), |v| format!("{:.3}", v.score)),
            draft.case,
            draft.case
        ));
    }
    if !failures.is_empty() {
        text.push_str("\n## Failed (rerun the same command to try them again)\n\n");
        for failure in failures {
            text.push_str(&format!("- {}: {}\n", failure.case, failure.error));
        }
    }
    text
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("{}: not valid", path.display()))?))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("{}: cannot read", path.display())),
    }
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes()).with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(case: &str, confidence: f64, mask_voxels: usize) -> CaseDraft {
        CaseDraft {
            case: case.into(),
            model: "unet_box version 1".into(),
            vae: "vae version 1".into(),
            threshold: 0.5,
            fracture_boxes: 0,
            mask_voxels,
            mask_volume_mm3: mask_voxels as f64 * 8.0,
            confidence,
            vertebrae: vec![
                VertebraDraft { level: "L1".into(), score: 0.4, confidence, mask_voxels, mask_volume_mm3: 0.0 },
                VertebraDraft { level: "L2".into(), score: 0.9, confidence, mask_voxels: 0, mask_volume_mm3: 0.0 },
            ],
            seconds: 1.0,
        }
    }

    #[test]
    fn the_review_list_starts_with_the_least_confident_case() {
        let drafts = [draft("a", 0.9, 10), draft("b", 0.0, 0), draft("c", 0.6, 5), draft("d", 0.6, 50)];
        let failures = [CaseFailure { case: "e".into(), error: "case e: ct.nii.gz: cannot read".into() }];
        let text = review(&drafts, &failures);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| #")).collect();
        let cases: Vec<&str> = rows.iter().map(|row| row.split(" | ").nth(1).unwrap()).collect();
        assert_eq!(cases, ["b", "d", "c", "a"], "least confident first; ties: the larger draft first");
        assert!(rows[0].contains("| L2 | 0.900 |"), "the top vertebra by score: {}", rows[0]);
        assert!(rows[0].ends_with("![b](cases/b/overlay.png) |"), "{}", rows[0]);
        assert!(text.contains("- e: case e: ct.nii.gz: cannot read"), "{text}");
    }
}
