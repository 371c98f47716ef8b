//! The exported 2.5D generator graphs compute what the Burn generator computes: ONNX Runtime
//! (from Rust, the library `scripts/setup.sh` installs) against `Generator::probability` on
//! random sequences of slices, for a bidirectional and a forward-only model of different
//! depth, context, norm and slice shape, at two batch sizes; a mutated weight must break the
//! comparison; every exported graph passes ONNX's full checker and shape inference
//! (`scripts/py/onnx_check.py`).

// core's runner of `scripts/py` references (FRACMAP_PYTHON and the setup hint), shared
// rather than copied.
#[path = "../../core/tests/common/mod.rs"]
mod common;
mod ort_support;

use std::path::PathBuf;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use fracmap_trainer::onnx::p2p::{INPUT, PROBABILITY, p2p_onnx};
use fracmap_trainer::p2p::model::{Generator, GeneratorConfig};
use fracmap_trainer::vae::config::NormKind;

use ort::session::Session;
use ort::value::TensorRef;
use ort_support::{max_abs_difference, session};

/// Largest absolute difference allowed between ONNX Runtime and Burn on any pixel's
/// probability. Both run float32 with different convolution algorithms and summation
/// orders, and the LSTM carries rounding from step to step; the largest difference measured
/// is 2.4e-7 (bidirectional and forward-only models, batch 3), a few float32 ulps, on
/// probabilities spread over 0.32-0.94, none near 0 or 1 where the sigmoid would flatten a
/// logit difference away. 1e-5 leaves 40x headroom and sits 50x below what the mutated LSTM
/// weight of [`a_mutated_weight_breaks_parity`] moves (4.8e-4).
const TOLERANCE: f32 = 1e-5;

/// The batch sizes every model runs at: one exported graph serves both (dynamic batch axis).
const BATCHES: [usize; 2] = [1, 3];

/// Bidirectional, 5 slices of 16 x 24 (not square, so an axis mix-up changes shapes), three
/// levels: two attention-gated skips; two groups per GroupNorm.
fn bidirectional() -> GeneratorConfig {
    GeneratorConfig {
        slice_shape: [16, 24],
        context: 5,
        base_channels: 4,
        levels: 3,
        norm: NormKind::Group,
        norm_groups: 2,
        bidirectional: true,
        ..Default::default()
    }
}

/// Forward only (the slices after the centre are not encoded), 3 slices, four levels down to
/// 2 x 3, InstanceNorm.
fn forward_only() -> GeneratorConfig {
    GeneratorConfig { context: 3, levels: 4, norm: NormKind::Instance, bidirectional: false, ..bidirectional() }
}

fn varied_generator(config: &GeneratorConfig, seed: u64) -> Generator {
    ort_support::varied(config.init(&Device::flex(), seed), seed)
}

/// `batch` sequences `[context, y, x]`, uniform in `[0, 1)`, flattened.
fn random_slices(batch: usize, generator: &Generator, seed: u64) -> Vec<f32> {
    let [h, w] = generator.slice_shape;
    ort_support::uniform(batch * generator.context * h * w, seed)
}

/// Burn's probabilities of `slices`, flattened.
fn burn_probability(generator: &Generator, slices: &[f32], batch: usize) -> Vec<f32> {
    let [h, w] = generator.slice_shape;
    let x = Tensor::<1>::from_floats(slices, &Device::flex()).reshape([batch, generator.context, h, w]);
    generator.probability(x).into_data().try_to_vec::<f32>().unwrap()
}

/// ONNX Runtime's probabilities of `slices`, flattened, after checking their shape.
fn ort_probability(session: &mut Session, generator: &Generator, slices: &[f32], batch: usize) -> Vec<f32> {
    let [h, w] = generator.slice_shape;
    let input = TensorRef::from_array_view(([batch, generator.context, h, w], slices)).unwrap();
    let outputs = session.run(ort::inputs![INPUT => input]).unwrap();
    let (dims, values) = outputs[PROBABILITY].try_extract_tensor::<f32>().unwrap();
    assert_eq!(dims.to_vec(), [batch, 1, h, w].map(|n| n as i64));
    values.to_vec()
}

/// Largest difference between Burn and ONNX Runtime, at each batch size of [`BATCHES`], for
/// `generator` exported as `onnx`.
fn differences(generator: &Generator, onnx: &[u8]) -> Vec<f32> {
    let mut session = session(onnx);
    BATCHES
        .iter()
        .map(|&batch| {
            let slices = random_slices(batch, generator, batch as u64);
            let ort = ort_probability(&mut session, generator, &slices, batch);
            max_abs_difference(&burn_probability(generator, &slices, batch), &ort)
        })
        .collect()
}

fn assert_parity(config: GeneratorConfig, label: &str) {
    let generator = varied_generator(&config, 11);
    let onnx = p2p_onnx(&generator).unwrap();
    for (batch, difference) in BATCHES.iter().zip(differences(&generator, &onnx)) {
        println!("{label}, batch {batch}: max |burn - ort| = {difference:.2e}");
        assert!(difference <= TOLERANCE, "{label}, batch {batch}: {difference} > {TOLERANCE}");
    }
}

#[test]
fn bidirectional_model_matches_burn() {
    assert_parity(bidirectional(), "bidirectional");
}

#[test]
fn forward_only_model_matches_burn() {
    assert_parity(forward_only(), "forward only");
}

#[test]
fn bidirectional_model_with_batch_norm_matches_burn() {
    assert_parity(GeneratorConfig { norm: NormKind::Batch, ..bidirectional() }, "bidirectional, BatchNorm");
}

#[test]
fn a_mutated_weight_breaks_parity() {
    // The graph keeps the original weights; the Burn model gets one tap of the backward
    // LSTM's gates changed by 0.5, a change that reaches the output only through the
    // recurrence, the merge and the whole decoder.
    let mut generator = varied_generator(&bidirectional(), 11);
    let onnx = p2p_onnx(&generator).unwrap();
    let cell = &mut generator.backward_lstm.as_mut().unwrap().cell;
    let weight = cell.gates.weight.val();
    let mut values = weight.to_data().try_to_vec::<f32>().unwrap();
    values[0] += 0.5;
    cell.gates.weight =
        Param::from_tensor(Tensor::from_data(TensorData::new(values, weight.shape()), &weight.device()));
    for (batch, difference) in BATCHES.iter().zip(differences(&generator, &onnx)) {
        println!("mutated backward LSTM weight, batch {batch}: max |burn - ort| = {difference:.2e}");
        assert!(difference > TOLERANCE, "a changed weight went unnoticed: {difference} <= {TOLERANCE}");
    }
}

#[test]
fn exported_graphs_pass_the_full_onnx_checker_and_infer_their_output_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut models = Vec::new();
    for (label, config) in
        [("bidirectional", bidirectional()), ("forward_only", forward_only()), ("default", GeneratorConfig::default())]
    {
        let path = dir.path().join(format!("{label}.onnx"));
        let onnx = p2p_onnx(&config.init(&Device::flex(), 0)).unwrap();
        println!("{}: {} bytes", path.file_name().unwrap().to_string_lossy(), onnx.len());
        std::fs::write(&path, onnx).unwrap();
        models.push((path, config));
    }
    let paths: Vec<&PathBuf> = models.iter().map(|(path, _)| path).collect();
    let report = common::run_json_script("onnx_check.py", &paths);
    for (path, config) in &models {
        let model = &report[path.to_str().unwrap()];
        let [h, w] = config.slice_shape;
        assert_eq!(model["opset"], 17, "{}", path.display());
        assert_eq!(model["inputs"][INPUT], serde_json::json!(["batch", config.context, h, w]));
        assert_eq!(model["inferred_outputs"][PROBABILITY], serde_json::json!(["batch", 1, h, w]), "{}", path.display());
        // Per decoder level one Concat of skip and features, per LSTM step one of input and
        // state, and one for the merge when bidirectional; plus one unfolding shape per skip
        // and for the bottleneck.
        let lstm_steps = if config.bidirectional { config.context + 1 } else { config.context / 2 + 1 };
        let merge = usize::from(config.bidirectional);
        let expected_concats = 2 * (config.levels - 1) + lstm_steps + merge + 1;
        assert_eq!(model["ops"]["Concat"], expected_concats, "{}", path.display());
    }
}
