//! fracmap-train: the trainer's command line. Each subcommand parses its flags and calls
//! one library function; all the work lives in the `fracmap_trainer` library.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fracmap_trainer::device::DeviceChoice;
use fracmap_trainer::manifest::{Manifest, Status};
use fracmap_trainer::phantom_set::{self, PhantomSetSpec};
use fracmap_trainer::synth::PhantomParams;
use fracmap_trainer::{crops, folds, p2p, show, vae, verse, weak};

#[derive(Parser)]
#[command(name = "fracmap-train", version, about = "Data, training, evaluation and export of fracmap's models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a phantom spine CT dataset with true fracture masks and its manifest.
    Synth {
        /// Output folder (created): one folder per case and manifest.json.
        #[arg(long)]
        out: PathBuf,
        /// Number of cases.
        #[arg(long, default_value_t = 40)]
        cases: usize,
        /// The first N cases have no fracture (VAE training material) [default: a quarter of --cases].
        #[arg(long)]
        normal_only: Option<usize>,
        /// The last N cases are marked unlabeled (pseudo-label input).
        #[arg(long, default_value_t = 0)]
        unlabeled: usize,
        /// Seed: the same options and seed write the same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Mean fraction of fractured vertebrae in cases that may have fractures.
        #[arg(long, default_value_t = PhantomParams::default().fracture_rate)]
        fracture_rate: f64,
        /// Levels to draw, FIRST-LAST (e.g. T11-L2).
        #[arg(long, default_value = "T4-L5")]
        levels: String,
        /// In-plane size in voxels (the field of view must cover at least 90 mm).
        #[arg(long, default_value_t = PhantomParams::default().in_plane)]
        size: usize,
        /// Leave out scanner artefacts (streaks, cupping).
        #[arg(long)]
        no_artefacts: bool,
        /// Cross-validation folds to assign.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Worker threads (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Check a manifest and the files it names, and print what it holds.
    Check {
        /// The manifest (JSON).
        #[arg(long)]
        data: PathBuf,
    },
    /// Draw a case (axial, coronal, sagittal through its fracture, mask outlined) to a PNG.
    Show {
        /// The manifest (JSON).
        #[arg(long)]
        data: PathBuf,
        /// Case ids to draw; all cases when none is given.
        cases: Vec<String>,
        /// Folder for the PNGs (`<case>.png`); default: `show/` beside the manifest.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Cut every vertebra out (body box + margin), resample and pad to a fixed patch, and cache
    /// the crops with their weak-label masks so training never re-reads NIfTI.
    Crops {
        /// The manifest (JSON).
        #[arg(long)]
        data: PathBuf,
        /// The cache folder; reused when the manifest and the spec are unchanged.
        #[arg(long)]
        out: PathBuf,
        /// Target voxel spacing in mm (isotropic).
        #[arg(long, default_value_t = 1.0)]
        spacing: f64,
        /// Patch edge in voxels (cubic).
        #[arg(long, default_value_t = 64)]
        patch: usize,
        /// Context around the vertebral body, mm.
        #[arg(long, default_value_t = 6.0)]
        margin: f64,
        /// Worker threads (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Assign cross-validation folds (by patient, stratified by fracture status), in place.
    Folds {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train the phase-1 VAE on normal vertebrae (crops are made and cached from the manifest).
    ///
    /// Fold K is the test fold (left for eval-vae), fold K+1 picks the best epoch, the rest
    /// train. The run folder gets run.json, config.toml, metrics.csv, loss.png and checkpoints;
    /// a run stopped at any point continues with --resume, losing at most the current epoch.
    Vae {
        /// The configuration (TOML); see configs/vae.toml and configs/vae_quick.toml.
        #[arg(long, default_value = "configs/vae.toml")]
        config: PathBuf,
        /// The manifest (JSON).
        #[arg(long)]
        data: PathBuf,
        /// The test fold.
        #[arg(long, default_value_t = 0)]
        fold: usize,
        /// The run folder (created).
        #[arg(long)]
        out: PathBuf,
        /// Continue the run in --out from its last checkpoint.
        #[arg(long)]
        resume: bool,
        /// The crop cache folder [default: crops/<spec> beside the manifest].
        #[arg(long)]
        crops: Option<PathBuf>,
        /// Worker threads for cropping (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// auto | cpu | cuda (cuda needs a build with --features cuda; auto falls back to cpu).
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Train the phase-2 U-Net from weak labels (boxes or slice ranges) on one fold, with a
    /// trained VAE's error maps as its second input, and score it on the test fold.
    ///
    /// The run folder gets run.json, config.toml, vae.json, metrics.csv, model_best.bpk,
    /// model_last.bpk and test.json (Dice, IoU, precision, recall, PR-AUC at the threshold of
    /// the best Dice on the training and validation folds).
    Weak {
        /// The configuration (TOML): configs/weak_box.toml (approach B) or configs/weak_slice.toml (A).
        #[arg(long, default_value = "configs/weak_box.toml")]
        config: PathBuf,
        /// The manifest (JSON).
        #[arg(long)]
        data: PathBuf,
        /// The VAE's run folder (of `fracmap-train vae` with the same [data] and input shape).
        #[arg(long)]
        vae: PathBuf,
        /// The test fold (use the VAE's).
        #[arg(long, default_value_t = 0)]
        fold: usize,
        /// The run folder (created; it must not hold a model).
        #[arg(long)]
        out: PathBuf,
        /// The crop cache folder [default: crops/<spec> beside the manifest].
        #[arg(long)]
        crops: Option<PathBuf>,
        /// Worker threads for cropping (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// auto | cpu | cuda.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Train the 2.5D pix2pix-LSTM (an Attention U-Net over 5 axial slices with a ConvLSTM,
    /// against a PatchGAN) on true masks or the weak model's drafts, on one fold, and score it
    /// on the test fold per slice, per vertebra and per volume.
    ///
    /// The run folder gets run.json, config.toml, metrics.csv, losses.png, health.json (is the
    /// GAN healthy, collapsed, diverged?), generator_best.bpk, generator_last.bpk,
    /// discriminator_last.bpk, test.json and heatmaps.png.
    P2p {
        /// The configuration (TOML).
        #[arg(long, default_value = "configs/p2p_lstm.toml")]
        config: PathBuf,
        /// The manifest (JSON).
        #[arg(long)]
        data: PathBuf,
        /// The test fold; fold + 1 validates.
        #[arg(long, default_value_t = 0)]
        fold: usize,
        /// The run folder (created; it must not hold a model).
        #[arg(long)]
        out: PathBuf,
        /// The crop cache folder [default: crops/<spec> beside the manifest].
        #[arg(long)]
        crops: Option<PathBuf>,
        /// Worker threads for cropping (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// auto | cpu | cuda.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Run an experiment: `box-vs-slice` compares, per fold, slice labels (A), box labels (B),
    /// the VAE error alone, the box filled as the mask and full supervision, and writes
    /// report.md, results.json and heat maps. Finished stages in --out are reused.
    Experiment {
        /// The experiment: box-vs-slice.
        #[arg(value_enum)]
        name: ExperimentName,
        /// The manifest (JSON); it needs folds and true masks.
        #[arg(long)]
        data: PathBuf,
        /// The experiment folder (created; rerun to continue an interrupted run).
        #[arg(long)]
        out: PathBuf,
        /// The VAE trained per fold.
        #[arg(long, default_value = "configs/vae_quick.toml")]
        vae_config: PathBuf,
        /// Approach B's configuration (the fully supervised bound uses it with true masks).
        #[arg(long, default_value = "configs/weak_box.toml")]
        box_config: PathBuf,
        /// Approach A's configuration.
        #[arg(long, default_value = "configs/weak_slice.toml")]
        slice_config: PathBuf,
        /// Test folds, comma separated [default: every fold].
        #[arg(long, value_delimiter = ',')]
        folds: Vec<usize>,
        /// Fractured test vertebrae drawn per fold.
        #[arg(long, default_value_t = 6)]
        pictures: usize,
        /// The crop cache folder [default: crops/<spec> beside the manifest].
        #[arg(long)]
        crops: Option<PathBuf>,
        /// Worker threads for cropping (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// auto | cpu | cuda.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Evaluate a VAE run's error map on its test fold: voxel ROC-AUC and PR-AUC against the
    /// true fracture masks, vertebra ROC-AUC normal vs fractured, error maps as NIfTI, pictures
    /// and report.md.
    EvalVae {
        /// The run folder of `fracmap-train vae` (its run.json names the data and the folds).
        #[arg(long)]
        run: PathBuf,
        /// The report folder [default: <run>/eval].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Evaluate the last checkpoint instead of the best.
        #[arg(long)]
        last: bool,
        /// Smooth the error map with a Gaussian of this many voxels (default: no smoothing).
        #[arg(long)]
        sigma: Option<f32>,
        /// The percentile of the error map that scores a vertebra.
        #[arg(long, default_value_t = 99.0)]
        percentile: f64,
        /// Fractured vertebrae to draw (and half as many normal ones).
        #[arg(long, default_value_t = 6)]
        pictures: usize,
        /// auto | cpu | cuda.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Export a run's model to ONNX with its manifest, as a new version in a model repository:
    /// <out>/<name>/<version>/model.onnx and manifest.json (what the server loads).
    Export {
        /// The run folder (of `fracmap-train vae` or `fracmap-train weak`).
        #[arg(long)]
        run: PathBuf,
        /// The model repository folder (created), e.g. models/.
        #[arg(long)]
        out: PathBuf,
        /// The model's name in the repository [default: the run's model, e.g. vae].
        #[arg(long)]
        name: Option<String>,
        /// The version to write; it must not exist [default: one above the highest there].
        #[arg(long)]
        version: Option<u64>,
        /// Export the last checkpoint instead of the best.
        #[arg(long)]
        last: bool,
    },
    /// Draft fracture masks for a dataset's cases with exported models (a VAE and the weak
    /// U-Net that reads its error maps) through ONNX Runtime, as the server runs them: per case
    /// a draft mask NIfTI on the CT's grid, an overlay and result.json; results.csv, failed.csv
    /// and review.md (least confident first). Resumable: a rerun skips drafted cases and tries
    /// failed ones again.
    PseudoLabel {
        /// The model repository (models/<name>/<version>/), e.g. models/.
        #[arg(long)]
        models: PathBuf,
        /// The manifest (JSON); its body boxes are the vertebrae, its fracture boxes (where it
        /// has them) keep the drafts inside them.
        #[arg(long)]
        data: PathBuf,
        /// The output folder (created; a folder of an earlier run resumes it).
        #[arg(long)]
        out: PathBuf,
        /// The U-Net to run (its VAE comes with it) [default: the first U-Net by name].
        #[arg(long)]
        model: Option<String>,
        /// Which cases: those with labeled = false, or all.
        #[arg(long, value_enum, default_value = "unlabeled")]
        cases: fracmap_trainer::pseudo_labels::CaseSelection,
        /// Also write each case's probability map (float32 NIfTI).
        #[arg(long)]
        probability: bool,
        /// Draft-mask threshold in (0, 1] [default: the U-Net manifest's].
        #[arg(long)]
        threshold: Option<f32>,
        /// Cases drafted at once, each with its own ONNX Runtime sessions.
        #[arg(long, default_value = "1")]
        jobs: std::num::NonZeroUsize,
        /// ONNX Runtime threads per job [default: the cores shared among the jobs].
        #[arg(long)]
        threads: Option<std::num::NonZeroUsize>,
        /// auto (CUDA when this build and ONNX Runtime have it, else CPU) | cpu | cuda.
        #[arg(long, value_enum, default_value = "auto")]
        device: fracmap_inference::runtime::Device,
    },
    /// Bring fracture masks back into the dataset (corrected drafts, masks drawn by hand):
    /// <labels>/<case id>.nii.gz on that case's CT grid, copied to labels/ beside the manifest,
    /// with their source and time recorded in it; with --drafts, the voxels each correction
    /// added and removed and the Dice of draft vs corrected (labels/effort.csv).
    ImportLabels {
        /// The manifest (JSON), rewritten in place.
        #[arg(long)]
        data: PathBuf,
        /// The folder of masks, one per case: <case id>.nii.gz or .nii.
        #[arg(long)]
        labels: PathBuf,
        /// Who made them: draft (the model's, as it is), corrected, manual.
        #[arg(long, value_enum, default_value = "corrected")]
        source: fracmap_trainer::manifest::LabelKind,
        /// The `pseudo-label` output the corrections started from (for the effort figures).
        #[arg(long)]
        drafts: Option<PathBuf>,
    },
    /// Import a VerSe tree (rawdata/, derivatives/) into a manifest, with fracture status from a CSV.
    ImportVerse {
        /// The VerSe root folder.
        #[arg(long)]
        root: PathBuf,
        /// CSV `scan,level,status`; status normal | fractured | Genant grade 0..3.
        #[arg(long)]
        status: PathBuf,
        /// Where to write the manifest; it must sit in the VerSe root (paths are relative to it).
        #[arg(long)]
        out: PathBuf,
        /// Treat vertebrae of a listed scan that the CSV does not mention as normal (default: error).
        #[arg(long)]
        unlisted_are_normal: bool,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExperimentName {
    /// Slice labels vs box labels on the same U-Net, with baselines and the upper bound.
    BoxVsSlice,
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("fracmap-train: {err:#}");
        std::process::exit(1);
    }
}

/// A progress line on stderr, rewritten in place: `label 3/40`.
fn progress(label: &'static str) -> impl Fn(usize, usize) + Sync {
    move |done, total| {
        eprint!("\r{label} {done}/{total}");
        if done == total {
            eprintln!();
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth {
            out,
            cases,
            normal_only,
            unlabeled,
            seed,
            fracture_rate,
            levels,
            size,
            no_artefacts,
            folds: k,
            threads,
        } => {
            let (first, last) = levels
                .split_once('-')
                .with_context(|| format!("--levels {levels:?}: expected FIRST-LAST, e.g. T11-L2"))?;
            let params = PhantomParams {
                first: first.parse()?,
                last: last.parse()?,
                in_plane: size,
                fracture_rate,
                artefacts: !no_artefacts,
                ..PhantomParams::default()
            };
            let threads =
                if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
            let normal_only = normal_only.unwrap_or(cases / 4);
            let spec = PhantomSetSpec { cases, normal_only, unlabeled, seed, folds: k, params, threads };
            let m = phantom_set::write_phantom_set(&out, &spec, &progress("synth: case"))?;
            let fractured = m.cases.iter().flat_map(|c| &c.vertebrae).filter(|v| v.status == Status::Fractured).count();
            println!(
                "{}: {} cases, {fractured} fractured vertebrae",
                out.join("manifest.json").display(),
                m.cases.len()
            );
        }
        Command::Check { data } => {
            let m = Manifest::load(&data, true)?;
            let vertebrae = m.cases.iter().flat_map(|c| &c.vertebrae);
            let fractured = vertebrae.clone().filter(|v| v.status == Status::Fractured).count();
            let unlabeled = m.cases.iter().filter(|c| !c.labeled).count();
            println!(
                "{}: {} cases ({unlabeled} unlabeled), {} vertebrae ({fractured} fractured); all files present",
                data.display(),
                m.cases.len(),
                vertebrae.count()
            );
        }
        Command::Show { data, cases, out } => {
            let m = Manifest::load(&data, true)?;
            let out = out.unwrap_or_else(|| Manifest::resolve(&data, "show".as_ref()));
            std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
            for id in &cases {
                if !m.cases.iter().any(|c| &c.id == id) {
                    bail!("{}: no case {id:?}", data.display());
                }
            }
            for case in m.cases.iter().filter(|c| cases.is_empty() || cases.contains(&c.id)) {
                let path = out.join(format!("{}.png", case.id));
                fracmap_core::picture::write_png(&path, &show::case_overview(&data, case)?)
                    .with_context(|| format!("{}: cannot write", path.display()))?;
                println!("{}", path.display());
            }
        }
        Command::Crops { data, out, spacing, patch, margin, threads } => {
            let spec = crops::CropSpec { spacing_mm: [spacing; 3], patch: [patch; 3], margin_mm: margin };
            spec.validate()?;
            let cache = crops::build_crop_cache(&data, &out, &spec, threads, &progress("crops: case"))?;
            let index = &cache.index;
            let how = if cache.reused { "reused" } else { "built" };
            println!("{}: {} crops {how}", out.display(), index.crops.len());
            if index.oversize() > 0 {
                eprintln!("note: {} vertebrae were larger than the patch and were cropped centrally", index.oversize());
            }
        }
        Command::Vae { config, data, fold, out, resume, crops, threads, device } => {
            let request = vae::run::VaeTrainRequest { config, data, fold, out, resume, crops, threads, device };
            let outcome = vae::run::train_vae(&request)?;
            let best =
                outcome.best.map_or("none".to_string(), |b| format!("epoch {} (val loss {:.5})", b.epoch, b.val_loss));
            println!("{}: {} epochs, best {best}", request.out.display(), outcome.epochs_done);
        }
        Command::Weak { config, data, vae, fold, out, crops, threads, device } => {
            let request = weak::run::WeakTrainRequest { config, data, vae, fold, out, crops, threads, device };
            let m = weak::run::train_weak(&request)?;
            let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
            println!(
                "{}: test fold Dice {:.3}, IoU {:.3}, precision {}, recall {}, PR-AUC {} at threshold {:.2}",
                request.out.display(),
                m.dice,
                m.iou,
                show(m.precision),
                show(m.recall),
                show(m.pr_auc),
                m.threshold
            );
        }
        Command::P2p { config, data, fold, out, crops, threads, device } => {
            let request = p2p::run::P2pTrainRequest { config, data, fold, out, crops, threads, device };
            let m = p2p::run::train_p2p(&request)?;
            let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
            let volumes = m.volumes.as_ref().map_or("no case with a mask".to_string(), |v| {
                format!("Dice {:.3} over {} volumes (mean per volume {})", v.dice, v.volumes, show(v.mean_volume_dice))
            });
            println!(
                "{}: at threshold {:.2}: per vertebra Dice {:.3}, IoU {:.3}, PR-AUC {}; per slice Dice {:.3} ({} slices with fracture); per volume {volumes}",
                request.out.display(),
                m.threshold,
                m.vertebrae.dice,
                m.vertebrae.iou,
                show(m.vertebrae.pr_auc),
                m.slices.dice,
                m.slices.fracture_slices,
            );
        }
        Command::Experiment {
            name: ExperimentName::BoxVsSlice,
            data,
            out,
            vae_config,
            box_config,
            slice_config,
            folds,
            pictures,
            crops,
            threads,
            device,
        } => {
            let request = weak::experiment::ExperimentRequest {
                data,
                out,
                vae_config,
                box_config,
                slice_config,
                folds,
                pictures,
                crops,
                threads,
                device,
            };
            weak::experiment::run_experiment(&request)?;
            println!("{}", request.out.join("report.md").display());
        }
        Command::EvalVae { run, out, last, sigma, percentile, pictures, device } => {
            let checkpoint = if last { vae::checkpoint::Which::Last } else { vae::checkpoint::Which::Best };
            let request = vae::eval::VaeEvalRequest { run, out, checkpoint, sigma, percentile, pictures, device };
            let r = vae::eval::evaluate_vae(&request)?;
            let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
            println!(
                "test fold {}: voxel ROC-AUC {}, PR-AUC {} (prevalence {}; the CT itself: {}, {}), vertebra ROC-AUC {} ({} normal, {} fractured)",
                r.test_fold,
                show(r.voxel_roc_auc),
                show(r.voxel_pr_auc),
                show(r.prevalence),
                show(r.brightness_roc_auc),
                show(r.brightness_pr_auc),
                show(r.vertebra_roc_auc),
                r.normal,
                r.fractured
            );
            println!("{}", r.out.join("report.md").display());
        }
        Command::Export { run, out, name, version, last } => {
            let checkpoint = if last { vae::checkpoint::Which::Last } else { vae::checkpoint::Which::Best };
            let request = fracmap_trainer::export::ExportRequest { run, out, name, version, checkpoint };
            let exported = fracmap_trainer::export::export_run(&request)?;
            let m = &exported.manifest;
            println!(
                "{}: {} version {}, {} bytes, sha256 {}",
                exported.dir.display(),
                m.name,
                m.version,
                m.onnx.bytes,
                m.onnx.sha256
            );
        }
        Command::PseudoLabel { models, data, out, model, cases, probability, threshold, jobs, threads, device } => {
            use fracmap_trainer::pseudo_labels::{BatchSettings, run_batch};
            let settings =
                BatchSettings { models, model, data, out, cases, probability, threshold, jobs, threads, device };
            let summary = run_batch(&settings)?;
            println!(
                "{} cases: {} drafted now, {} done before, {} failed; review list {}",
                summary.selected,
                summary.drafted,
                summary.skipped,
                summary.failed.len(),
                settings.out.join(fracmap_trainer::pseudo_labels::REVIEW_FILE).display()
            );
            if !summary.failed.is_empty() {
                bail!(
                    "{} cases failed (see failed.csv); rerun the same command to try them again",
                    summary.failed.len()
                );
            }
        }
        Command::ImportLabels { data, labels, source, drafts } => {
            let imported = fracmap_trainer::import_labels::import_labels(&data, &labels, source, drafts.as_deref())?;
            for case in &imported {
                let effort = case.effort.map_or(String::new(), |e| {
                    format!(": {} voxels added, {} removed, Dice draft vs corrected {:.3}", e.added, e.removed, e.dice)
                });
                println!("{}: {} mask voxels{effort}", case.case, case.voxels);
            }
            println!("{} masks imported into {} ({source:?})", imported.len(), data.display());
        }
        Command::Folds { data, folds: k, seed } => {
            let mut m = Manifest::load(&data, false)?;
            folds::assign_folds(&mut m.cases, k, seed);
            m.save(&data)?;
            println!("{}: {} cases assigned to {k} folds (seed {seed})", data.display(), m.cases.len());
        }
        Command::ImportVerse { root, status, out, unlisted_are_normal, folds: k, seed } => {
            let out_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(".".as_ref());
            if out_dir.canonicalize().ok() != root.canonicalize().ok() {
                bail!(
                    "--out {} must be inside --root {} (manifest paths are relative to it)",
                    out.display(),
                    root.display()
                );
            }
            let (_, unmatched) = verse::find_scans(&root)?;
            for ct in unmatched {
                eprintln!("skipping {}: no vertebra mask under derivatives/", ct.display());
            }
            let mut m = verse::import(&root, &status, unlisted_are_normal)?;
            folds::assign_folds(&mut m.cases, k, seed);
            m.save(&out)?;
            println!("{}: {} scans imported", out.display(), m.cases.len());
        }
    }
    Ok(())
}
