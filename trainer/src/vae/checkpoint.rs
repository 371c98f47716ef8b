//! Checkpoints of a training run, and where they live in the run folder:
//!
//! ```text
//! <run>/metrics.csv                     one row per finished epoch (see `train.rs`)
//! <run>/last.json, <run>/best.json      {"checkpoint": "epoch-0007"}: which folder is which
//! <run>/checkpoints/epoch-0007/
//!     model.bpk        the VAE's weights (burnpack), BatchNorm statistics included
//!     optimizer.bpk    AdamW's moments and step count (burnpack), keyed by parameter id
//!     state.json       epochs done, best validation so far, the run's configuration
//! ```
//!
//! A checkpoint folder is written under a temporary name and renamed into place whole; the
//! pointers are replaced atomically afterwards. A crash at any point leaves `last.json`
//! naming a complete checkpoint (the previous one at worst), so a resumed run loses at most
//! the epoch in progress. Folders neither pointer names are pruned.
//!
//! No generator state is stored: the generator of epoch `e` is derived from the seed and `e`
//! alone (see `train::epoch_rng`), so `(seed, epochs_done)` is the whole random state at an
//! epoch boundary.

use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::store::RecordError;
use fracmap_core::fsutil::write_atomic;
use serde::{Deserialize, Serialize};

use super::config::VaeConfig;
use super::model::Vae;

pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const MODEL_FILE: &str = "model.bpk";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
pub const STATE_FILE: &str = "state.json";

/// Which checkpoint of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The most recent: where training resumes.
    Last,
    /// The lowest validation loss: what inference uses.
    Best,
}

impl Which {
    /// "last" or "best": how reports and manifests name it.
    pub fn name(self) -> &'static str {
        match self {
            Which::Last => "last",
            Which::Best => "best",
        }
    }

    fn pointer_file(self) -> String {
        format!("{}.json", self.name())
    }
}

/// The run's state at the end of an epoch, beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Epochs finished (1-based count; the next epoch has index `epochs_done`).
    pub epochs_done: usize,
    pub best: Option<BestEpoch>,
    pub config: VaeConfig,
}

/// The epoch of lowest validation loss so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestEpoch {
    pub epoch: usize,
    pub val_loss: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pointer {
    checkpoint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Record { path: PathBuf, source: RecordError },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: names checkpoint {name:?}, which is not a folder of {CHECKPOINTS_DIR}/")]
    Dangling { path: PathBuf, name: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

fn record(path: &Path) -> impl FnOnce(RecordError) -> CheckpointError + '_ {
    move |source| CheckpointError::Record { path: path.to_path_buf(), source }
}

fn checkpoint_name(epochs_done: usize) -> String {
    format!("epoch-{epochs_done:04}")
}

/// Writes the checkpoint of `state` into `run_dir` and points `last.json` at it (and
/// `best.json` too when `is_best`); then prunes checkpoints no pointer names.
pub fn save(
    run_dir: &Path,
    state: &TrainState,
    model: &Vae,
    optimizer: &ModuleOptimizer,
    is_best: bool,
) -> Result<(), CheckpointError> {
    let checkpoints = run_dir.join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(&checkpoints).map_err(io(&checkpoints))?;
    let name = checkpoint_name(state.epochs_done);
    let tmp = checkpoints.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let model_path = tmp.join(MODEL_FILE);
    model.clone().save_file(&model_path).map_err(record(&model_path))?;
    let optimizer_path = tmp.join(OPTIMIZER_FILE);
    optimizer.save(&optimizer_path).map_err(record(&optimizer_path))?;
    let state_path = tmp.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(state).expect("a TrainState always serialises");
    std::fs::write(&state_path, json).map_err(io(&state_path))?;

    let target = checkpoints.join(&name);
    // Left by a run that died between this rename and its pointer update: not named by
    // last.json, so the older checkpoint it names is still whole.
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io(&target))?;
    }
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    write_pointer(run_dir, Which::Last, &name)?;
    if is_best {
        write_pointer(run_dir, Which::Best, &name)?;
    }
    prune(run_dir)
}

fn write_pointer(run_dir: &Path, which: Which, name: &str) -> Result<(), CheckpointError> {
    let path = run_dir.join(which.pointer_file());
    let json = serde_json::to_vec(&Pointer { checkpoint: name.to_string() }).expect("a pointer serialises");
    write_atomic(&path, &json).map_err(io(&path))
}

/// The folder of the `which` checkpoint of `run_dir`, or `None` when the run has none yet.
pub fn locate(run_dir: &Path, which: Which) -> Result<Option<PathBuf>, CheckpointError> {
    let path = run_dir.join(which.pointer_file());
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Io { path, source }),
    };
    let pointer: Pointer =
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json { path: path.clone(), source })?;
    let dir = run_dir.join(CHECKPOINTS_DIR).join(&pointer.checkpoint);
    if pointer.checkpoint.contains(['/', '\\']) || !dir.is_dir() {
        return Err(CheckpointError::Dangling { path, name: pointer.checkpoint });
    }
    Ok(Some(dir))
}

/// Reads `state.json` of a checkpoint folder.
pub fn load_state(checkpoint_dir: &Path) -> Result<TrainState, CheckpointError> {
    let path = checkpoint_dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json { path, source })
}

/// The VAE of a checkpoint folder, on `device` (add `.autodiff()` to train it further).
pub fn load_model(checkpoint_dir: &Path, state: &TrainState, device: &Device) -> Result<Vae, CheckpointError> {
    let path = checkpoint_dir.join(MODEL_FILE);
    state.config.model.load(&path, device).map_err(record(&path))
}

/// `optimizer` with the moments of a checkpoint folder.
pub fn load_optimizer(checkpoint_dir: &Path, optimizer: ModuleOptimizer) -> Result<ModuleOptimizer, CheckpointError> {
    let path = checkpoint_dir.join(OPTIMIZER_FILE);
    optimizer.load(&path).map_err(record(&path))
}

/// The VAE of the `which` checkpoint of a run and the configuration it was trained with.
pub fn load_run_model(
    run_dir: &Path,
    which: Which,
    device: &Device,
) -> Result<Option<(Vae, VaeConfig)>, CheckpointError> {
    let Some(dir) = locate(run_dir, which)? else { return Ok(None) };
    let state = load_state(&dir)?;
    let model = load_model(&dir, &state, device)?;
    Ok(Some((model, state.config)))
}

/// Removes checkpoint folders (and temporaries) that neither pointer names.
fn prune(run_dir: &Path) -> Result<(), CheckpointError> {
    let keep: Vec<PathBuf> = [Which::Last, Which::Best]
        .into_iter()
        .filter_map(|which| locate(run_dir, which).transpose())
        .collect::<Result<_, _>>()?;
    let checkpoints = run_dir.join(CHECKPOINTS_DIR);
    for entry in std::fs::read_dir(&checkpoints).map_err(io(&checkpoints))? {
        let path = entry.map_err(io(&checkpoints))?.path();
        if path.is_dir() && !keep.contains(&path) {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}
