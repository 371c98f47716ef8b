//! What the ONNX Runtime tests of the trainer share: the process's one ORT environment (ort
//! allows one per process), sessions of exported graphs, random inputs, the largest
//! difference between two outputs, and a mapper that varies a model's one-dimensional
//! parameters so that a mix-up between them shows. The including test binary declares the
//! `common` module (core's test support) beside this one, for the setup hint.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use ort::environment::Environment;
use ort::session::Session;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::common::SETUP_HINT;

/// The process's one ONNX Runtime environment, on the library of `ORT_DYLIB_PATH`.
pub fn environment() -> &'static Environment {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let library = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("ORT_DYLIB_PATH is not set: {SETUP_HINT}"));
        ort::init_from(&library)
            .unwrap_or_else(|e| panic!("cannot load {}: {e}; {SETUP_HINT}", library.display()))
            .with_name("fracmap-trainer-tests")
            .build()
            .expect("an ONNX Runtime environment")
    })
}

/// A one-thread session of the graph `onnx`.
pub fn session(onnx: &[u8]) -> Session {
    Session::builder(environment())
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .commit_from_memory(onnx)
        .expect("ONNX Runtime loads the exported model")
}

/// A one-thread session of the model file `path`.
pub fn session_from_file(path: &Path) -> Session {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    session(&bytes)
}

/// `n` values uniform in `[0, 1)` drawn from `seed`.
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>()).collect()
}

pub fn max_abs_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Draws every one-dimensional tensor of a module (biases, norm scales and shifts, BatchNorm
/// running statistics) from `[0.5, 1.5)`: fresh ones are all 0 or all 1, which would hide a
/// mix-up between them, and a variance must stay positive.
struct VaryOneDimensional(ChaCha8Rng);

impl ModuleMapper for VaryOneDimensional {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if D != 1 {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let values: Vec<f32> = (0..tensor.shape().num_elements()).map(|_| self.0.random_range(0.5..1.5)).collect();
        let varied = Tensor::from_data(TensorData::new(values, tensor.shape()), &tensor.device());
        Param::from_mapped_value(id, varied, mapper)
    }
}

/// `module` with its one-dimensional parameters drawn as [`VaryOneDimensional`] does, from `seed`.
pub fn varied<M: Module>(module: M, seed: u64) -> M {
    module.map(&mut VaryOneDimensional(ChaCha8Rng::seed_from_u64(seed)))
}
