//! ONNX Runtime runs a real model from Rust through our runtime helper: a 3x3x3 convolution
//! then a sigmoid, made by `scripts/py/make_tiny_onnx.py` and recomputed here by hand.

mod common;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use fracmap_server::runtime::default_library_path;
use fracmap_server::{Device, ExecutionProvider, OnnxRuntime, RuntimeError, SessionSettings};
use ndarray::{Array5, ArrayView5};
use ort::value::TensorRef;

/// The model's kernel weight at tap `[kz, ky, kx]`, each in 0..3, and its bias: the
/// numbers `make_tiny_onnx.py` writes.
fn kernel_weight(kz: usize, ky: usize, kx: usize) -> f32 {
    (9 * kz + 3 * ky + kx + 1) as f32 / 378.0
}
const BIAS: f32 = -0.5;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn runtime() -> &'static OnnxRuntime {
    OnnxRuntime::init(&default_library_path()).unwrap_or_else(|error| panic!("{error}"))
}

/// Writes the tiny model into `dir`.
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny_conv_sigmoid.onnx");
    common::write_tiny_model(&model);
    model
}

fn cpu_settings() -> SessionSettings {
    SessionSettings { device: Device::Cpu, intra_threads: NonZeroUsize::MIN }
}

/// The tiny model's output for `volume`, `[n, 1, z, y, x]`, computed by ONNX Runtime.
fn run_tiny_model(volume: ArrayView5<f32>) -> Array5<f32> {
    let dir = tempfile::tempdir().unwrap();
    let mut loaded = runtime().load_session(&tiny_model(dir.path()), &cpu_settings()).unwrap();
    let outputs = loaded.session.run(ort::inputs!["volume" => TensorRef::from_array_view(volume).unwrap()]).unwrap();
    let probability = outputs["probability"].try_extract_array::<f32>().unwrap();
    probability.into_dimensionality().unwrap().to_owned()
}

/// The model by hand: cross-correlation with zero padding 1, plus bias, then sigmoid.
fn reference_model(volume: ArrayView5<f32>) -> Array5<f32> {
    let (batch, _, depth, height, width) = volume.dim();
    Array5::from_shape_fn((batch, 1, depth, height, width), |(n, _, z, y, x)| {
        let mut logit = BIAS;
        for kz in 0..3 {
            for ky in 0..3 {
                for kx in 0..3 {
                    // Input voxel under tap k: (z + kz - 1, ...), outside the volume is 0.
                    let (Some(iz), Some(iy), Some(ix)) =
                        ((z + kz).checked_sub(1), (y + ky).checked_sub(1), (x + kx).checked_sub(1))
                    else {
                        continue;
                    };
                    if iz < depth && iy < height && ix < width {
                        logit += kernel_weight(kz, ky, kx) * volume[[n, 0, iz, iy, ix]];
                    }
                }
            }
        }
        sigmoid(logit)
    })
}

#[test]
fn all_ones_volume_gives_hand_computed_probabilities() {
    let probability = run_tiny_model(Array5::ones((1, 1, 3, 4, 5)).view());
    assert_eq!(probability.dim(), (1, 1, 3, 4, 5));
    // Inside, all 27 taps see a 1: the weights sum to 1, so sigmoid(1 - 0.5).
    assert!((probability[[0, 0, 1, 2, 3]] - sigmoid(0.5)).abs() < 1e-6);
    // At the corner only taps 1..3 on each axis see the volume: weights
    // (14 + 15 + 17 + 18 + 23 + 24 + 26 + 27) / 378 = 164 / 378. A flipped kernel would give 60 / 378.
    assert!((probability[[0, 0, 0, 0, 0]] - sigmoid(164.0 / 378.0 - 0.5)).abs() < 1e-6);
}

#[test]
fn batch_of_two_matches_a_direct_convolution() {
    // Two different volumes in one batch: the batch axis is dynamic, and items must not mix.
    let volume = Array5::from_shape_fn((2, 1, 3, 4, 5), |(n, _, z, y, x)| {
        ((n * 60 + z * 20 + y * 5 + x) % 7) as f32 * 0.25 - 0.75
    });
    let ours = run_tiny_model(volume.view());
    let expected = reference_model(volume.view());
    assert_eq!(ours.dim(), expected.dim());
    let worst = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "largest difference from the hand computation: {worst}");
}

#[test]
fn cpu_session_reports_the_cpu_provider() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = runtime().load_session(&tiny_model(dir.path()), &cpu_settings()).unwrap();
    assert_eq!(loaded.provider, ExecutionProvider::Cpu);
}

#[test]
fn missing_model_is_an_error_naming_it() {
    let path = Path::new("/nonexistent/model.onnx");
    let error = runtime().load_session(path, &cpu_settings()).err().expect("no model there");
    assert!(error.to_string().contains("/nonexistent/model.onnx"), "{error}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let error = runtime().resolve_provider(Device::Cuda).unwrap_err();
    assert!(matches!(error, RuntimeError::CudaNotCompiled), "{error:?}");
    assert!(error.to_string().contains("--features cuda"), "{error}");
}

/// What `--device cuda` gets here: CUDA, or CPU when it is an error (no `cuda` feature, or
/// ONNX Runtime without a usable CUDA), which is what `--device auto` must then fall back to.
fn provider_auto_should_get(runtime: &OnnxRuntime) -> ExecutionProvider {
    match runtime.resolve_provider(Device::Cuda) {
        Ok(provider) => provider,
        Err(RuntimeError::CudaNotCompiled | RuntimeError::CudaUnavailable(_)) => ExecutionProvider::Cpu,
        Err(other) => panic!("device cuda: {other:?}"),
    }
}

#[test]
fn auto_is_cuda_exactly_when_cuda_is_usable() {
    let runtime = runtime();
    assert_eq!(runtime.resolve_provider(Device::Auto).unwrap(), provider_auto_should_get(runtime));
}

#[test]
fn auto_session_loads_on_the_provider_auto_resolves_to() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let settings = SessionSettings { device: Device::Auto, intra_threads: NonZeroUsize::MIN };
    let loaded = runtime.load_session(&tiny_model(dir.path()), &settings).unwrap();
    assert_eq!(loaded.provider, provider_auto_should_get(runtime));
}

#[test]
fn version_is_the_one_in_the_library_file_name() {
    // The wheel ships libonnxruntime.so.MAJOR.MINOR.PATCH; the version comes from the
    // library's own API, so the two agree only if both were read right.
    let runtime = runtime();
    let file_name = runtime.library().file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(file_name, format!("libonnxruntime.so.{}", runtime.version()));
}

#[test]
fn the_same_library_by_another_path_is_the_same_runtime() {
    let first = runtime();
    // default_library_path() is the .deps/lib link; library() is where it points.
    let again = OnnxRuntime::init(first.library()).unwrap();
    assert!(std::ptr::eq(first, again));
}

#[test]
fn a_second_library_is_refused() {
    let first = runtime();
    let other = tempfile::NamedTempFile::new().unwrap();
    let error = OnnxRuntime::init(other.path()).err().expect("one library per process");
    match error {
        RuntimeError::AlreadyLoaded { loaded, .. } => assert_eq!(loaded, first.library()),
        other => panic!("expected AlreadyLoaded, got {other:?}"),
    }
}
