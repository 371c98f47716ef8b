//! The exported U-Net graphs compute what the Burn U-Net computes: ONNX Runtime (from Rust,
//! the library `scripts/setup.sh` installs) against `UNet::probability` on random patches,
//! for a non-cubic and a deeper cubic model, each norm and two batch sizes; a mutated weight
//! must break the comparison; every exported graph passes ONNX's full checker and shape
//! inference (`scripts/py/onnx_check.py`).

// core's runner of `scripts/py` references (FRACMAP_PYTHON and the setup hint), shared
// rather than copied.
#[path = "../../core/tests/common/mod.rs"]
mod common;
mod ort_support;

use std::path::PathBuf;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use fracmap_trainer::onnx::unet::{INPUT, PROBABILITY, unet_onnx};
use fracmap_trainer::vae::config::NormKind;
use fracmap_trainer::weak::model::{UNet, UNetConfig};

use ort::session::Session;
use ort::value::TensorRef;
use ort_support::{max_abs_difference, session};

/// Largest absolute difference allowed between ONNX Runtime and Burn on any voxel's
/// probability. Both run float32 with different convolution algorithms and summation
/// orders; the largest difference measured is 6.0e-7 (non-cubic model, InstanceNorm, batch
/// 3), on probabilities spread over 0.19-0.98, none within 1e-3 of 0 or 1 where the sigmoid
/// would flatten a logit difference away.
const TOLERANCE: f32 = 1e-4;

/// The batch sizes every model runs at: one exported graph serves both (dynamic batch axis).
const BATCHES: [usize; 2] = [1, 3];

const NORMS: [NormKind; 3] = [NormKind::Group, NormKind::Instance, NormKind::Batch];

/// Small and not cubic, so an axis mix-up changes shapes; three levels, two skips, two groups
/// per GroupNorm.
fn non_cubic(norm: NormKind) -> UNetConfig {
    UNetConfig { input_shape: [16, 8, 12], base_channels: 4, levels: 3, norm, norm_groups: 2, ..Default::default() }
}

/// Four levels down to a 2^3 bottleneck, so the skips pair up in reverse order at three
/// resolutions.
fn deep(norm: NormKind) -> UNetConfig {
    UNetConfig { input_shape: [16; 3], levels: 4, ..non_cubic(norm) }
}

fn varied_unet(config: &UNetConfig, seed: u64) -> UNet {
    ort_support::varied(config.init(&Device::flex(), seed), seed)
}

/// `batch` patches of `[channels, z, y, x]`, uniform in `[0, 1)`, flattened.
fn random_patches(batch: usize, channels: usize, shape: [usize; 3], seed: u64) -> Vec<f32> {
    ort_support::uniform(batch * channels * shape.iter().product::<usize>(), seed)
}

/// Burn's probabilities of `patches`, flattened.
fn burn_probability(unet: &UNet, patches: &[f32], batch: usize) -> Vec<f32> {
    let [d, h, w] = unet.input_shape;
    let x = Tensor::<1>::from_floats(patches, &Device::flex()).reshape([batch, unet.in_channels, d, h, w]);
    unet.probability(x).into_data().try_to_vec::<f32>().unwrap()
}

/// ONNX Runtime's probabilities of `patches`, flattened, after checking their shape.
fn ort_probability(session: &mut Session, unet: &UNet, patches: &[f32], batch: usize) -> Vec<f32> {
    let [d, h, w] = unet.input_shape;
    let input = TensorRef::from_array_view(([batch, unet.in_channels, d, h, w], patches)).unwrap();
    let outputs = session.run(ort::inputs![INPUT => input]).unwrap();
    let (dims, values) = outputs[PROBABILITY].try_extract_tensor::<f32>().unwrap();
    assert_eq!(dims.to_vec(), [batch, 1, d, h, w].map(|n| n as i64));
    values.to_vec()
}

/// Largest difference between Burn and ONNX Runtime, at each batch size of [`BATCHES`], for
/// `unet` exported as `onnx`.
fn differences(unet: &UNet, onnx: &[u8]) -> Vec<f32> {
    let mut session = session(onnx);
    BATCHES
        .iter()
        .map(|&batch| {
            let patches = random_patches(batch, unet.in_channels, unet.input_shape, batch as u64);
            let ort = ort_probability(&mut session, unet, &patches, batch);
            max_abs_difference(&burn_probability(unet, &patches, batch), &ort)
        })
        .collect()
}

fn assert_parity(config: UNetConfig, label: &str) {
    let unet = varied_unet(&config, 11);
    let onnx = unet_onnx(&unet).unwrap();
    for (batch, difference) in BATCHES.iter().zip(differences(&unet, &onnx)) {
        println!(
            "{label} {:?} {:?}, batch {batch}: max |burn - ort| = {difference:.2e}",
            config.input_shape, config.norm
        );
        assert!(difference <= TOLERANCE, "{label} {:?}, batch {batch}: {difference} > {TOLERANCE}", config.norm);
    }
}

#[test]
fn non_cubic_model_with_group_norm_matches_burn() {
    assert_parity(non_cubic(NormKind::Group), "non-cubic");
}

#[test]
fn non_cubic_model_with_instance_norm_matches_burn() {
    assert_parity(non_cubic(NormKind::Instance), "non-cubic");
}

#[test]
fn non_cubic_model_with_batch_norm_matches_burn() {
    assert_parity(non_cubic(NormKind::Batch), "non-cubic");
}

#[test]
fn deep_model_with_group_norm_matches_burn() {
    assert_parity(deep(NormKind::Group), "deep");
}

#[test]
fn a_mutated_weight_breaks_parity() {
    // The graph keeps the original weights; the Burn model gets one head tap changed by 0.01,
    // which moves every voxel's logit by 0.01 times its first feature channel, and its
    // probability by up to a quarter of that.
    let mut unet = varied_unet(&non_cubic(NormKind::Group), 11);
    let onnx = unet_onnx(&unet).unwrap();
    let weight = unet.head.weight.val();
    let mut values = weight.to_data().try_to_vec::<f32>().unwrap();
    values[0] += 0.01;
    unet.head.weight = Param::from_tensor(Tensor::from_data(TensorData::new(values, weight.shape()), &weight.device()));
    for (batch, difference) in BATCHES.iter().zip(differences(&unet, &onnx)) {
        println!("mutated head weight, batch {batch}: max |burn - ort| = {difference:.2e}");
        assert!(difference > TOLERANCE, "a changed weight went unnoticed: {difference} <= {TOLERANCE}");
    }
}

#[test]
fn exported_graphs_pass_the_full_onnx_checker_and_infer_their_output_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut models = Vec::new();
    for (label, config) in NORMS
        .iter()
        .map(|&norm| ("non_cubic", non_cubic(norm)))
        .chain([("deep", deep(NormKind::Group)), ("default", UNetConfig::default())])
    {
        let path = dir.path().join(format!("{label}_{:?}.onnx", config.norm));
        let onnx = unet_onnx(&config.init(&Device::flex(), 0)).unwrap();
        println!("{}: {} bytes", path.file_name().unwrap().to_string_lossy(), onnx.len());
        std::fs::write(&path, onnx).unwrap();
        models.push((path, config));
    }
    let paths: Vec<&PathBuf> = models.iter().map(|(path, _)| path).collect();
    let report = common::run_json_script("onnx_check.py", &paths);
    for (path, config) in &models {
        let model = &report[path.to_str().unwrap()];
        let [d, h, w] = config.input_shape;
        assert_eq!(model["opset"], 17, "{}", path.display());
        assert_eq!(model["inputs"][INPUT], serde_json::json!(["batch", config.in_channels, d, h, w]));
        let expected = serde_json::json!(["batch", 1, d, h, w]);
        assert_eq!(model["inferred_outputs"][PROBABILITY], expected, "{}", path.display());
        assert_eq!(model["ops"]["Concat"], config.levels - 1, "{}", path.display());
    }
}
