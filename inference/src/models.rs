//! The models a server (or a batch) runs: every version its [`ModelRepository`] picked,
//! loaded into ONNX Runtime sessions and checked against its manifest (the graph's input and
//! output names), once, at start-up.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

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
    pub sessions: SessionPool,
    pub provider: ExecutionProvider,
}

impl LoadedModel {
    /// "name version N", how messages name a model.
    pub fn id(&self) -> String {
        format!("{} version {}", self.manifest.name, self.manifest.version)
    }
}

/// Sessions of one model, each behind a mutex: ort's `Session::run` takes `&mut self` (some
/// ONNX Runtime internals are not thread safe), so a session runs one batch at a time and
/// concurrent requests take different sessions.
#[derive(Debug)]
pub struct SessionPool {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
}

impl SessionPool {
    pub fn new(sessions: Vec<Session>) -> Self {
        assert!(!sessions.is_empty(), "a session pool needs a session");
        SessionPool { sessions: sessions.into_iter().map(Mutex::new).collect(), next: AtomicUsize::new(0) }
    }

    /// A free session, or, when all are busy, the next one in turn once it is free. The
    /// server admits at most as many segmentations as a pool has sessions, so waiting here
    /// is rare.
    pub fn get(&self) -> MutexGuard<'_, Session> {
        // A panic elsewhere while holding a session leaves it as usable as before.
        for session in &self.sessions {
            if let Ok(guard) = session.try_lock() {
                return guard;
            }
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        self.sessions[turn].lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {dir}: {source}")]
    Load { dir: PathBuf, source: RuntimeError },
    #[error("model {dir}: {field}: {problem}")]
    Mismatch { dir: PathBuf, field: &'static str, problem: String },
}

/// Loads every model of `repository` with `settings`, `sessions` sessions each, sorted by name. The first model that
/// does not load, or whose graph does not have the inputs and outputs its manifest names,
/// is an error: a server must not start with a model it cannot run as described.
pub fn load_models(
    runtime: &OnnxRuntime,
    repository: &ModelRepository,
    settings: &SessionSettings,
    sessions: NonZeroUsize,
) -> Result<Vec<LoadedModel>, ModelError> {
    repository.models().map(|version| load_model(runtime, version, settings, sessions)).collect()
}

fn load_model(
    runtime: &OnnxRuntime,
    version: &ModelVersion,
    settings: &SessionSettings,
    sessions: NonZeroUsize,
) -> Result<LoadedModel, ModelError> {
    let dir = version.dir.clone();
    let loaded = match runtime.load_session(&version.model_path, settings) {
        Ok(loaded) => loaded,
        Err(source) => return Err(ModelError::Load { dir, source }),
    };
    // The first session fixed the provider (Auto may have fallen back): the others follow it.
    let same_provider = SessionSettings { device: loaded.provider.into(), ..*settings };
    let mut pool = Vec::with_capacity(sessions.get());
    let manifest = &version.manifest;
    for (field, specs, outlets) in [
        ("inputs", &manifest.inputs, loaded.session.inputs()),
        ("outputs", &manifest.outputs, loaded.session.outputs()),
    ] {
        if let Err(problem) = same_names(specs, outlets) {
            return Err(ModelError::Mismatch { dir, field, problem });
        }
    }
    let provider = loaded.provider;
    pool.push(loaded.session);
    while pool.len() < sessions.get() {
        match runtime.load_session(&version.model_path, &same_provider) {
            Ok(more) => pool.push(more.session),
            Err(source) => return Err(ModelError::Load { dir, source }),
        }
    }
    tracing::info!(
        model = %manifest.name,
        version = manifest.version,
        sha256 = &manifest.onnx.sha256[..12],
        %provider,
        sessions = pool.len(),
        "model loaded"
    );
    Ok(LoadedModel { dir, manifest: manifest.clone(), sessions: SessionPool::new(pool), provider })
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
