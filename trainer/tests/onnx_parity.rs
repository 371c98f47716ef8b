//! The exported VAE graphs compute what the Burn VAE computes: ONNX Runtime (from Rust,
//! the library `scripts/setup.sh` installs) against `Vae::forward_inference` and
//! `Vae::error` on random crops, for two model shapes, each norm and two batch sizes; a
//! mutated weight must break the comparison; every exported graph passes ONNX's full checker
//! and shape inference (`scripts/py/onnx_check.py`).

// core's runner of `scripts/py` references (FRACMAP_PYTHON and the setup hint), shared
// rather than copied.
#[path = "../../core/tests/common/mod.rs"]
mod common;
mod ort_support;

use std::path::PathBuf;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use fracmap_trainer::onnx::vae::{ERROR, INPUT, RECONSTRUCTION, vae_onnx};
use fracmap_trainer::vae::config::{ModelConfig, NormKind, VaeConfig};
use fracmap_trainer::vae::model::Vae;

use ort::session::Session;
use ort::value::TensorRef;
use ort_support::{max_abs_difference, session};

/// Largest absolute difference allowed between ONNX Runtime and Burn, in the input's
/// `[0, 1]` units, on any voxel of either output. Both run float32 with different
/// convolution algorithms and summation orders; measured differences are around 1e-6.
const TOLERANCE: f32 = 1e-4;

/// The batch sizes every model runs at: one exported graph serves both (dynamic batch axis).
const BATCHES: [usize; 2] = [1, 3];

const NORMS: [NormKind; 3] = [NormKind::Group, NormKind::Instance, NormKind::Batch];

/// The model of `configs/vae_quick.toml`, with `norm`.
fn quick(norm: NormKind) -> ModelConfig {
    let config = VaeConfig::from_toml(include_str!("../../configs/vae_quick.toml")).expect("the shipped quick config");
    ModelConfig { norm, ..config.model }
}

/// Small and not cubic, so an axis mix-up changes shapes; two groups per GroupNorm.
fn non_cubic(norm: NormKind) -> ModelConfig {
    ModelConfig {
        input_shape: [16, 8, 12],
        base_channels: 4,
        levels: 2,
        latent_dim: 8,
        norm,
        norm_groups: 2,
        ..Default::default()
    }
}

fn varied_vae(config: &ModelConfig, seed: u64) -> Vae {
    ort_support::varied(config.init(&Device::flex(), seed), seed)
}

/// `batch` crops of `shape` `[z, y, x]`, uniform in `[0, 1)`, flattened `[batch, 1, z, y, x]`.
fn random_crops(batch: usize, shape: [usize; 3], seed: u64) -> Vec<f32> {
    ort_support::uniform(batch * shape.iter().product::<usize>(), seed)
}

/// Burn's `(reconstruction, error)` of `crops`, flattened.
fn burn_outputs(vae: &Vae, crops: &[f32], batch: usize) -> (Vec<f32>, Vec<f32>) {
    let [d, h, w] = vae.input_shape;
    let x = Tensor::<1>::from_floats(crops, &Device::flex()).reshape([batch, 1, d, h, w]);
    let flat = |t: Tensor<5>| t.into_data().try_to_vec::<f32>().unwrap();
    (flat(vae.forward_inference(x.clone())), flat(vae.error(x)))
}

/// ONNX Runtime's `(reconstruction, error)` of `crops`, flattened, after checking their shapes.
fn ort_outputs(session: &mut Session, crops: &[f32], batch: usize, shape: [usize; 3]) -> (Vec<f32>, Vec<f32>) {
    let [d, h, w] = shape;
    let input = TensorRef::from_array_view(([batch, 1, d, h, w], crops)).unwrap();
    let outputs = session.run(ort::inputs![INPUT => input]).unwrap();
    let flat = |name: &str| {
        let (dims, values) = outputs[name].try_extract_tensor::<f32>().unwrap();
        assert_eq!(dims.to_vec(), [batch, 1, d, h, w].map(|n| n as i64), "{name}");
        values.to_vec()
    };
    (flat(RECONSTRUCTION), flat(ERROR))
}

/// Largest difference between Burn and ONNX Runtime over both outputs, at each batch size
/// of [`BATCHES`], for `vae` exported as `onnx`.
fn differences(vae: &Vae, onnx: &[u8]) -> Vec<f32> {
    let mut session = session(onnx);
    BATCHES
        .iter()
        .map(|&batch| {
            let crops = random_crops(batch, vae.input_shape, batch as u64);
            let (burn_reconstruction, burn_error) = burn_outputs(vae, &crops, batch);
            let (ort_reconstruction, ort_error) = ort_outputs(&mut session, &crops, batch, vae.input_shape);
            max_abs_difference(&burn_reconstruction, &ort_reconstruction)
                .max(max_abs_difference(&burn_error, &ort_error))
        })
        .collect()
}

fn assert_parity(config: ModelConfig, label: &str) {
    let vae = varied_vae(&config, 11);
    let onnx = vae_onnx(&vae).unwrap();
    for (batch, difference) in BATCHES.iter().zip(differences(&vae, &onnx)) {
        println!(
            "{label} {:?} {:?}, batch {batch}: max |burn - ort| = {difference:.2e}",
            config.input_shape, config.norm
        );
        assert!(difference <= TOLERANCE, "{label} {:?}, batch {batch}: {difference} > {TOLERANCE}", config.norm);
    }
}

#[test]
fn quick_model_with_group_norm_matches_burn() {
    assert_parity(quick(NormKind::Group), "quick");
}

#[test]
fn quick_model_with_instance_norm_matches_burn() {
    assert_parity(quick(NormKind::Instance), "quick");
}

#[test]
fn quick_model_with_batch_norm_matches_burn() {
    assert_parity(quick(NormKind::Batch), "quick");
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
fn a_mutated_weight_breaks_parity() {
    // The graph keeps the original weights; the Burn model gets one head tap changed by 0.01,
    // which moves the reconstruction of the voxels that tap reaches by about 0.01 times
    // their features.
    let mut vae = varied_vae(&non_cubic(NormKind::Group), 11);
    let onnx = vae_onnx(&vae).unwrap();
    let weight = vae.head.weight.val();
    let mut values = weight.to_data().try_to_vec::<f32>().unwrap();
    values[0] += 0.01;
    vae.head.weight = Param::from_tensor(Tensor::from_data(TensorData::new(values, weight.shape()), &weight.device()));
    for (batch, difference) in BATCHES.iter().zip(differences(&vae, &onnx)) {
        println!("mutated head weight, batch {batch}: max |burn - ort| = {difference:.2e}");
        assert!(difference > TOLERANCE, "a changed weight went unnoticed: {difference} <= {TOLERANCE}");
    }
}

#[test]
fn exported_graphs_pass_the_full_onnx_checker_and_infer_their_output_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut models = Vec::new();
    for (label, config) in NORMS
        .iter()
        .flat_map(|&norm| [("quick", quick(norm)), ("non_cubic", non_cubic(norm))])
        .chain([("default", ModelConfig::default())])
    {
        let path = dir.path().join(format!("{label}_{:?}.onnx", config.norm));
        let onnx = vae_onnx(&config.init(&Device::flex(), 0)).unwrap();
        println!("{}: {} bytes", path.file_name().unwrap().to_string_lossy(), onnx.len());
        std::fs::write(&path, onnx).unwrap();
        models.push((path, config.input_shape));
    }
    let paths: Vec<&PathBuf> = models.iter().map(|(path, _)| path).collect();
    let report = common::run_json_script("onnx_check.py", &paths);
    for (path, [d, h, w]) in &models {
        let model = &report[path.to_str().unwrap()];
        assert_eq!(model["opset"], 17, "{}", path.display());
        let expected = serde_json::json!(["batch", 1, d, h, w]);
        assert_eq!(model["inputs"][INPUT], expected, "{}", path.display());
        for output in [RECONSTRUCTION, ERROR] {
            assert_eq!(model["inferred_outputs"][output], expected, "{}: {output}", path.display());
        }
    }
}
