//! The models a server runs: every version its [`ModelRepository`] picked, loaded into an
//! ONNX Runtime session and checked against its manifest (the graph's input and output
//! names), once, at start-up.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use fracmap_core::model_manifest::{ModelManifest, TensorSpec};
use ort::session::Session;
use ort::value::Outlet;

use crate::repository::{ModelRepository, ModelVersion};
use crate::runtime::{ExecutionProvider, OnnxRuntime, RuntimeError, SessionSettings};

/// A model version ready to run.
#[derive(Debug)]
pub struct LoadedModel {
    /// `<repository>/<name>/<version>`.
    pub dir: PathBuf,
    pub manifest: ModelManifest,
    /// Behind a mutex: ort's `Session::run` takes `&mut self` (some ONNX Runtime internals
    /// are not thread safe), so one request runs a session at a time.
    pub session: Mutex<Session>,
    pub provider: ExecutionProvider,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {dir}: {source}")]
    Load { dir: PathBuf, source: RuntimeError },
    #[error("model {dir}: {field}: {problem}")]
    Mismatch { dir: PathBuf, field: &'static str, problem: String },
}

/// Loads every model of `repository` with `settings`, sorted by name. The first model that
/// does not load, or whose graph does not have the inputs and outputs its manifest names,
/// is an error: a server must not start with a model it cannot run as described.
pub fn load_models(
    runtime: &OnnxRuntime,
    repository: &ModelRepository,
    settings: &SessionSettings,
) -> Result<Vec<LoadedModel>, ModelError> {
    repository.models().map(|version| load_model(runtime, version, settings)).collect()
}

fn load_model(
    runtime: &OnnxRuntime,
    version: &ModelVersion,
    settings: &SessionSettings,
) -> Result<LoadedModel, ModelError> {
    let dir = version.dir.clone();
    let loaded = match runtime.load_session(&version.model_path, settings) {
        Ok(loaded) => loaded,
        Err(source) => return Err(ModelError::Load { dir, source }),
    };
    let manifest = &version.manifest;
    for (field, specs, outlets) in [
        ("inputs", &manifest.inputs, loaded.session.inputs()),
        ("outputs", &manifest.outputs, loaded.session.outputs()),
    ] {
        if let Err(problem) = same_names(specs, outlets) {
            return Err(ModelError::Mismatch { dir, field, problem });
        }
    }
    tracing::info!(
        model = %manifest.name,
        version = manifest.version,
        sha256 = &manifest.onnx.sha256[..12],
        provider = %loaded.provider,
        "model loaded"
    );
    Ok(LoadedModel { dir, manifest: manifest.clone(), session: Mutex::new(loaded.session), provider: loaded.provider })
}

/// Whether the manifest's tensors and the graph's have the same names (in any order); the
/// problem in words when not.
fn same_names(specs: &[TensorSpec], outlets: &[Outlet]) -> Result<(), String> {
    let declared: BTreeSet<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
    let in_graph: BTreeSet<&str> = outlets.iter().map(Outlet::name).collect();
    if declared == in_graph {
        return Ok(());
    }
    let list = |names: Vec<&str>| names.join(", ");
    let mut problem = format!(
        "the manifest names [{}], the ONNX graph has [{}]",
        list(declared.iter().copied().collect()),
        list(in_graph.iter().copied().collect())
    );
    let missing: Vec<&str> = declared.difference(&in_graph).copied().collect();
    if !missing.is_empty() {
        problem.push_str(&format!("; not in the graph: {}", list(missing)));
    }
    let unnamed: Vec<&str> = in_graph.difference(&declared).copied().collect();
    if !unnamed.is_empty() {
        problem.push_str(&format!("; not in the manifest: {}", list(unnamed)));
    }
    Err(problem)
}
