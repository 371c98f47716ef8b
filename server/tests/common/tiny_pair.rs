#![allow(dead_code)] // Each test binary that includes this file uses part of it.

//! A tiny untrained VAE and U-Net that work together, exported by the trainer's ONNX exporter
//! with manifests as `fracmap-train export` writes them: the model repository of the server's
//! tests (included with `#[path]` by those that need it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use fracmap_core::model_manifest::{
    ErrorInput, ErrorNormalisation, ExportRecord, MANIFEST_FILE, MANIFEST_FORMAT, MODEL_FILE, ModelManifest, OnnxFile,
    Preprocessing, TensorSpec, TrainingRecord, Validation,
};
use fracmap_core::{ErrorNorm, HuWindow};
use fracmap_trainer::onnx::graph::{IR_VERSION, OPSET};
use fracmap_trainer::onnx::unet::{unet_onnx, unet_signature};
use fracmap_trainer::onnx::vae::{ERROR, vae_onnx, vae_signature};
use fracmap_trainer::vae::config::ModelConfig;
use fracmap_trainer::vae::model::Vae;
use fracmap_trainer::weak::model::{UNet, UNetConfig};

pub const PATCH: [usize; 3] = [8, 8, 8];
pub const ERROR_SIGMA: f32 = 1.0;
pub const VAE_RUN: &str = "/runs/vae";
pub const VAE_EPOCH: usize = 7;
pub const MASK_THRESHOLD: f32 = 0.42;
pub const VAE_SEED: u64 = 3;
pub const UNET_SEED: u64 = 4;

pub fn preprocessing() -> Preprocessing {
    Preprocessing {
        spacing_mm: [2.0; 3],
        margin_mm: 3.0,
        hu_window: HuWindow::new(-250.0, 1250.0).unwrap(),
        patch: PATCH,
    }
}

pub fn vae_model() -> Vae {
    ModelConfig { input_shape: PATCH, base_channels: 2, levels: 2, latent_dim: 4, ..Default::default() }
        .init(&Device::flex(), VAE_SEED)
}

/// Untrained, with the output prior at even odds, so that probabilities spread around 0.5.
pub fn unet_model() -> UNet {
    UNetConfig { input_shape: PATCH, base_channels: 2, levels: 2, output_prior: 0.5, ..Default::default() }
        .init(&Device::flex(), UNET_SEED)
}

/// A manifest as `fracmap-train export` writes one, without the numbers of a training run.
pub fn manifest(name: &str, onnx: &[u8], (inputs, outputs): (Vec<TensorSpec>, Vec<TensorSpec>)) -> ModelManifest {
    ModelManifest {
        format: MANIFEST_FORMAT,
        name: name.to_string(),
        version: 1,
        architecture: name.to_string(),
        config: Default::default(),
        onnx: OnnxFile::of(onnx, OPSET as u32, IR_VERSION as u32),
        inputs,
        outputs,
        preprocessing: preprocessing(),
        error_normalisation: None,
        error_input: None,
        mask_threshold: None,
        notes: vec![],
        training: None,
        validation: None,
        evaluation: None,
        exported: ExportRecord { at: 0, tool: "pipeline test".to_string(), git_revision: None },
    }
}

pub fn vae_manifest(onnx: &[u8], vae: &Vae) -> ModelManifest {
    ModelManifest {
        error_normalisation: Some(ErrorNormalisation {
            output: ERROR.to_string(),
            definition: "|ct - reconstruction|".to_string(),
            hu_per_unit: 1500.0,
        }),
        training: Some(TrainingRecord {
            run: PathBuf::from(VAE_RUN),
            data: PathBuf::from("/data/manifest.json"),
            test_fold: 0,
            validation_fold: 1,
            folds: 5,
            train_crops: 1,
            validation_crops: 1,
            git_revision: None,
            started: 0,
        }),
        validation: Some(Validation {
            checkpoint: "epoch-0007".to_string(),
            selected: "best".to_string(),
            epoch: VAE_EPOCH,
            best_epoch: Some(VAE_EPOCH),
            best_val_loss: None,
            metrics: BTreeMap::new(),
        }),
        ..manifest("vae", onnx, vae_signature(vae))
    }
}

pub fn unet_manifest(onnx: &[u8], unet: &UNet) -> ModelManifest {
    ModelManifest {
        error_input: Some(ErrorInput {
            vae_run: PathBuf::from(VAE_RUN),
            vae_epoch: VAE_EPOCH,
            error_sigma: ERROR_SIGMA,
            error_norm: ErrorNorm::default(),
        }),
        mask_threshold: Some(MASK_THRESHOLD),
        ..manifest("unet", onnx, unet_signature(unet))
    }
}

pub fn write_version(root: &Path, manifest: &ModelManifest, onnx: &[u8]) {
    let dir = root.join(&manifest.name).join(manifest.version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(MODEL_FILE), onnx).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_json()).unwrap();
}

/// Writes the tiny pair, with manifests changed by `edit(vae, unet)`, into the repository
/// `root`: `root/vae/1/` and `root/unet/1/`.
pub fn write_repository(root: &Path, edit: impl FnOnce(&mut ModelManifest, &mut ModelManifest)) {
    let (vae, unet) = (vae_model(), unet_model());
    let (vae_bytes, unet_bytes) = (vae_onnx(&vae).unwrap(), unet_onnx(&unet).unwrap());
    let (mut vae_manifest, mut unet_manifest) = (vae_manifest(&vae_bytes, &vae), unet_manifest(&unet_bytes, &unet));
    edit(&mut vae_manifest, &mut unet_manifest);
    write_version(root, &vae_manifest, &vae_bytes);
    write_version(root, &unet_manifest, &unet_bytes);
}
