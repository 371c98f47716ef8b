#![allow(dead_code)] // Each test binary that includes this file uses part of it.

//! A tiny untrained 2.5D pix2pix-LSTM generator, exported by the trainer's ONNX exporter with a
//! manifest as `fracmap-train export` writes one for a p2p run: the slice model of the
//! server's tests. Included with `#[path]` beside `tiny_pair.rs` (as `mod tiny_pair`), whose
//! manifest and folder writer it shares.

use std::path::Path;

use burn::prelude::*;
use fracmap_core::model_manifest::{ModelManifest, Preprocessing};
use fracmap_trainer::onnx::p2p::{p2p_onnx, p2p_signature};
use fracmap_trainer::p2p::model::{Generator, GeneratorConfig};
use fracmap_trainer::p2p::run::MODEL_KIND;

use super::tiny_pair;

/// The model's name and architecture, as a request names it.
pub const NAME: &str = "p2p_lstm";
/// `[depth, y, x]`: y and x unequal, so that a swap of the two would show.
pub const PATCH: [usize; 3] = [8, 8, 16];
/// Slices per sequence: the centre and two each side.
pub const CONTEXT: usize = 5;
pub const MASK_THRESHOLD: f32 = 0.47;
pub const SEED: u64 = 5;

/// The pair's crop (2 mm, 3 mm margin, the same HU window) with this model's patch.
pub fn preprocessing() -> Preprocessing {
    Preprocessing { patch: PATCH, ..tiny_pair::preprocessing() }
}

/// Untrained, with the output prior at even odds, so that probabilities spread around 0.5.
pub fn generator() -> Generator {
    let [_, h, w] = PATCH;
    GeneratorConfig {
        slice_shape: [h, w],
        context: CONTEXT,
        base_channels: 2,
        levels: 2,
        output_prior: 0.5,
        ..Default::default()
    }
    .init(&Device::flex(), SEED)
}

/// The manifest `fracmap-train export` writes for a scored p2p run, without its numbers.
pub fn manifest(onnx: &[u8], generator: &Generator) -> ModelManifest {
    ModelManifest {
        architecture: MODEL_KIND.to_string(),
        preprocessing: preprocessing(),
        mask_threshold: Some(MASK_THRESHOLD),
        notes: vec!["Needs no VAE: it reads the CT alone.".to_string()],
        ..tiny_pair::manifest(NAME, onnx, p2p_signature(generator))
    }
}

/// Writes the tiny generator, with its manifest changed by `edit`, into the repository `root`:
/// `root/p2p_lstm/1/`.
pub fn write_repository(root: &Path, edit: impl FnOnce(&mut ModelManifest)) {
    let generator = generator();
    let onnx = p2p_onnx(&generator).unwrap();
    let mut manifest = manifest(&onnx, &generator);
    edit(&mut manifest);
    tiny_pair::write_version(root, &manifest, &onnx);
}
