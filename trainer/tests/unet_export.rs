//! `fracmap-train export` of a phase-2 U-Net run: a run folder written by hand around two
//! tiny untrained U-Nets (best and last) exports to a manifest that names the VAE whose error
//! maps the U-Net reads, the run's threshold and test numbers (for the best model only), and
//! to a graph that ONNX Runtime (the library `scripts/setup.sh` installs) runs to the
//! probabilities of the Burn model it was exported from.

// core's runner of `scripts/py` references, for its setup hint.
#[path = "../../core/tests/common/mod.rs"]
mod common;
mod ort_support;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use fracmap_core::ErrorNorm;
use fracmap_core::model_manifest::{Dim, ErrorInput, MANIFEST_FILE, ModelManifest};
use fracmap_trainer::export::{ExportRequest, Exported, export_run};
use fracmap_trainer::onnx::unet::{INPUT, PROBABILITY};
use fracmap_trainer::run_record::RunRecord;
use fracmap_trainer::training_data::FoldSplit;
use fracmap_trainer::vae::checkpoint::Which;
use fracmap_trainer::weak::config::{LabelConfig, Supervision, WeakConfig};
use fracmap_trainer::weak::eval::MapMetrics;
use fracmap_trainer::weak::model::{UNet, UNetConfig};
use fracmap_trainer::weak::run::{TEST_METRICS_FILE, VAE_RECORD_FILE, VaeRecord};
use fracmap_trainer::weak::train::{BEST_MODEL_FILE, LAST_MODEL_FILE, METRICS_FILE, save_model, term_names};
use ort::value::TensorRef;

/// Largest absolute difference allowed between ONNX Runtime and Burn on a probability, as in
/// `unet_onnx_parity.rs`: both run float32 with different summation orders.
const TOLERANCE: f32 = 1e-4;

const PATCH: [usize; 3] = [8, 8, 8];
const VAE_RUN: &str = "/runs/vae";
const VAE_EPOCH: usize = 7;
const THRESHOLD: f32 = 0.42;

fn config() -> WeakConfig {
    WeakConfig {
        model: UNetConfig { input_shape: PATCH, base_channels: 2, levels: 2, ..Default::default() },
        labels: LabelConfig {
            error_sigma: 1.5,
            error_norm: ErrorNorm::Percentile { low: 1.0, high: 99.0 },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A run folder as `fracmap-train weak` leaves it after 2 epochs, the best being the first;
/// returns it with the models saved as best and last.
fn fake_unet_run(dir: &Path) -> (PathBuf, UNet, UNet) {
    let run = dir.join("run");
    let config = config();
    let split = FoldSplit { test: 2, validation: 3, folds: 5 };
    let record =
        RunRecord::new("unet", Path::new("data/manifest.json"), Path::new("data/crops"), split, (12, 4)).unwrap();
    record.save(&run, &config.to_toml()).unwrap();
    let (best, last) = (config.model.init(&Device::flex(), 1), config.model.init(&Device::flex(), 2));
    save_model(&best, &run.join(BEST_MODEL_FILE)).unwrap();
    save_model(&last, &run.join(LAST_MODEL_FILE)).unwrap();

    let terms = term_names(Supervision::Box);
    let header: Vec<String> = ["epoch", "train_loss", "val_loss"]
        .into_iter()
        .map(String::from)
        .chain(terms.iter().map(|t| format!("train_{t}")))
        .chain(terms.iter().map(|t| format!("val_{t}")))
        .chain(["seconds".to_string()])
        .collect();
    let csv = format!(
        "{}\n1,0.5,0.2,0.1,0.1,0.1,0.1,0.05,0.05,0.05,0.05,1.0\n2,0.4,0.3,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,1.1\n",
        header.join(",")
    );
    std::fs::write(run.join(METRICS_FILE), csv).unwrap();

    let vae = VaeRecord { run: PathBuf::from(VAE_RUN), checkpoint: "best".to_string(), epoch: VAE_EPOCH };
    std::fs::write(run.join(VAE_RECORD_FILE), serde_json::to_vec(&vae).unwrap()).unwrap();
    let test = MapMetrics {
        threshold: THRESHOLD,
        dice: 0.61,
        iou: 0.44,
        precision: Some(0.7),
        recall: Some(0.55),
        pr_auc: Some(0.66),
        outside_box_mm3: 12.5,
        vertebra_auc: None,
    };
    std::fs::write(run.join(TEST_METRICS_FILE), serde_json::to_vec(&test).unwrap()).unwrap();
    (run, best, last)
}

fn request(run: &Path, out: &Path, checkpoint: Which) -> ExportRequest {
    ExportRequest { run: run.to_path_buf(), out: out.to_path_buf(), name: None, version: None, checkpoint }
}

fn export(run: &Path, out: &Path, checkpoint: Which) -> Exported {
    export_run(&request(run, out, checkpoint)).unwrap()
}

/// Largest difference between Burn's `unet` and ONNX Runtime's run of `model_file` on a
/// random batch of 2 patches in `[0, 1)`.
fn largest_difference(unet: &UNet, model_file: &Path) -> f32 {
    let [d, h, w] = PATCH;
    let shape = [2, 2, d, h, w];
    let patches = ort_support::uniform(shape.iter().product::<usize>(), 5);
    let burn = unet
        .probability(Tensor::<1>::from_floats(patches.as_slice(), &Device::flex()).reshape(shape))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let mut session = ort_support::session_from_file(model_file);
    let input = TensorRef::from_array_view((shape, patches.as_slice())).unwrap();
    let outputs = session.run(ort::inputs![INPUT => input]).unwrap();
    let (dims, ort) = outputs[PROBABILITY].try_extract_tensor::<f32>().unwrap();
    assert_eq!(dims.to_vec(), [2, 1, d, h, w].map(|n| n as i64));
    ort_support::max_abs_difference(&burn, ort)
}

#[test]
fn the_best_model_exports_with_its_vae_threshold_and_test_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _, _) = fake_unet_run(dir.path());
    let exported = export(&run, &dir.path().join("models"), Which::Best);
    assert_eq!(exported.dir, dir.path().join("models").join("unet").join("1"));
    let manifest = ModelManifest::load(&exported.dir.join(MANIFEST_FILE)).unwrap();
    assert_eq!(manifest, exported.manifest);
    manifest.verify_model(&exported.dir).unwrap();

    assert_eq!(manifest.architecture, "unet");
    let batch = Dim::Dynamic("batch".to_string());
    let patch = PATCH.map(|n| Dim::Fixed(n as u64));
    assert_eq!(manifest.inputs[0].name, INPUT);
    assert_eq!(manifest.inputs[0].shape, [[batch.clone(), Dim::Fixed(2)].as_slice(), &patch].concat());
    assert_eq!(manifest.outputs[0].name, PROBABILITY);
    assert_eq!(manifest.outputs[0].shape, [[batch, Dim::Fixed(1)].as_slice(), &patch].concat());
    assert_eq!(manifest.preprocessing.patch, PATCH);
    assert_eq!(manifest.error_normalisation, None);
    let error_input = ErrorInput {
        vae_run: PathBuf::from(VAE_RUN),
        vae_epoch: VAE_EPOCH,
        error_sigma: 1.5,
        error_norm: ErrorNorm::Percentile { low: 1.0, high: 99.0 },
    };
    assert_eq!(manifest.error_input, Some(error_input));
    assert_eq!(manifest.mask_threshold, Some(THRESHOLD));

    let validation = manifest.validation.unwrap();
    assert_eq!((validation.checkpoint.as_str(), validation.selected.as_str()), (BEST_MODEL_FILE, "best"));
    assert_eq!((validation.epoch, validation.best_epoch, validation.best_val_loss), (1, Some(1), Some(0.2)));
    assert_eq!(validation.metrics["val_consistency"], 0.05);
    assert_eq!(manifest.training.unwrap().test_fold, 2);
    let evaluation = manifest.evaluation.expect("test.json scored the best model");
    assert_eq!(evaluation.report, TEST_METRICS_FILE);
    assert_eq!(evaluation.measures["voxel_dice"], Some(0.61));
    assert_eq!(evaluation.measures["vertebra_roc_auc"], None);
}

#[test]
fn the_last_model_has_neither_the_threshold_nor_the_test_numbers_of_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _, _) = fake_unet_run(dir.path());
    let out = dir.path().join("models");
    let best = export(&run, &out, Which::Best).manifest;
    let last = export(&run, &out, Which::Last).manifest;
    assert_ne!(last.onnx.sha256, best.onnx.sha256);
    let validation = last.validation.unwrap();
    assert_eq!(
        (validation.checkpoint.as_str(), validation.epoch, validation.best_epoch),
        (LAST_MODEL_FILE, 2, Some(1))
    );
    assert_eq!((last.mask_threshold, last.evaluation), (None, None));
    // It reads the same VAE's error maps.
    assert_eq!(last.error_input, best.error_input);
}

#[test]
fn each_exported_graph_computes_the_probabilities_of_its_burn_model() {
    let dir = tempfile::tempdir().unwrap();
    let (run, best, last) = fake_unet_run(dir.path());
    let out = dir.path().join("models");
    for (which, unet) in [(Which::Best, &best), (Which::Last, &last)] {
        let exported = export(&run, &out, which);
        let model_file = exported.manifest.verify_model(&exported.dir).unwrap();
        let difference = largest_difference(unet, &model_file);
        println!("{}: max |burn - ort| = {difference:.2e}", which.name());
        assert!(difference <= TOLERANCE, "{}: {difference} > {TOLERANCE}", which.name());
    }
}

#[test]
fn a_run_without_its_vae_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _, _) = fake_unet_run(dir.path());
    std::fs::remove_file(run.join(VAE_RECORD_FILE)).unwrap();
    let out = dir.path().join("models");
    let err = export_run(&request(&run, &out, Which::Best)).unwrap_err();
    assert!(format!("{err:#}").contains(VAE_RECORD_FILE), "{err:#}");
    assert!(!out.exists(), "nothing written");
}
