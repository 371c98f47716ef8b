//! Training the VAE: AdamW on the autodiff form of a device, the KL weight warmed up per
//! epoch, validation with `z = mu`, one metrics row and one checkpoint per epoch, resume
//! from the last checkpoint.
//!
//! Randomness: the initial weights come from `seed` (see `ModelConfig::init`); everything
//! random during epoch `e` (shuffling, augmentation, reparameterisation noise, in that order
//! per batch) from [`epoch_rng`]`(seed, e)`. The same seed and data give the same losses, and a
//! resumed run continues exactly as the uninterrupted one would have (on a deterministic
//! backend: flex on CPU is).
//!
//! Validation loss is `recon + beta * KL` with the full `beta`, not the warm-up's, so that
//! epochs compare and the best checkpoint is well defined.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use ndarray::Array3;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{self, BestEpoch, CheckpointError, TrainState, Which};
use super::config::{ConfigError, VaeConfig};
use super::data::{CropError, CropSet, augment, batch_tensor, standard_normal};
use super::loss::{VaeLoss, vae_loss};
use super::model::{Vae, VaeOutput};

pub const METRICS_FILE: &str = "metrics.csv";
const METRICS_HEADER: &str = "epoch,beta,train_loss,train_recon,train_kl,val_loss,val_recon,val_kl,seconds";

/// One training run: a configuration, its data and the folder it writes.
pub struct TrainRun<'a> {
    pub config: &'a VaeConfig,
    /// Normal vertebrae, windowed to `[0, 1]`, of the model's input shape.
    pub train: &'a (dyn CropSet + Sync),
    pub val: &'a (dyn CropSet + Sync),
    /// Receives `metrics.csv`, the pointers and `checkpoints/` (see `checkpoint.rs`).
    pub run_dir: &'a Path,
    /// Where tensors live (e.g. `Device::flex()`); training uses its autodiff form.
    pub device: Device,
    /// Continue from the run folder's last checkpoint (a fresh start if it has none). Without
    /// it, a folder that holds a run is refused rather than overwritten.
    pub resume: bool,
}

/// Mean losses over the crops of one pass.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossValues {
    pub loss: f64,
    pub recon: f64,
    pub kl: f64,
}

/// What an epoch did; also one row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    /// The KL weight this epoch trained with.
    pub beta: f64,
    pub train: LossValues,
    /// Present on validation epochs.
    pub val: Option<LossValues>,
    pub seconds: f64,
}

/// What [`TrainRun::run`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum TrainEvent<'a> {
    /// A training batch is done (`epoch`, `batch` 1-based); `loss` is the batch's.
    Batch { epoch: usize, epochs: usize, batch: usize, batches: usize, loss: LossValues, crops_per_second: f64 },
    /// An epoch is done and its checkpoint written.
    Epoch(&'a EpochMetrics),
}

/// A training batch ready for a step.
struct TrainBatch {
    crops: Vec<Array3<f32>>,
    noise: Vec<f32>,
}

/// Batches prepared ahead of the one training.
const PREFETCH_BATCHES: usize = 2;

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub epochs_done: usize,
    pub best: Option<BestEpoch>,
    /// The epochs this call trained (after the resume point).
    pub history: Vec<EpochMetrics>,
    pub model: Vae,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("the {0} set is empty")]
    EmptySet(&'static str),
    #[error("{set} set: {source}")]
    Crop { set: &'static str, source: CropError },
    #[error("{set} set: crop {index} has shape [z, y, x] = {shape:?}, the model takes {expected:?}")]
    CropShape { set: &'static str, index: usize, shape: [usize; 3], expected: [usize; 3] },
    #[error("epoch {epoch}, batch {batch}: the loss is {value} (try a lower train.lr)")]
    NonFinite { epoch: usize, batch: usize, value: f64 },
    #[error("{0} already holds a run: resume it or choose another folder")]
    RunExists(PathBuf),
    #[error("{checkpoint}: trained with another configuration (only train.epochs may change on resume)")]
    ConfigChanged { checkpoint: PathBuf },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The generator of epoch `index` (0-based): ChaCha8 seeded by `seed`, stream `index + 1`.
pub fn epoch_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64 + 1);
    rng
}

impl TrainRun<'_> {
    /// Trains up to `config.train.epochs`, telling `observe` of every batch and of every
    /// epoch (after its checkpoint is written).
    pub fn run(&self, mut observe: impl FnMut(TrainEvent<'_>)) -> Result<TrainOutcome, TrainError> {
        let config = self.config;
        config.validate()?;
        for (name, set) in [("training", self.train), ("validation", self.val)] {
            if set.is_empty() {
                return Err(TrainError::EmptySet(name));
            }
        }
        let device = self.device.clone().autodiff();
        let (mut model, mut optimizer, mut state) = self.start(&device, optimizer(config))?;
        let metrics_path = self.run_dir.join(METRICS_FILE);
        keep_metrics_until(&metrics_path, state.epochs_done)?;

        let epochs = config.train.epochs;
        let batches = self.train.len().div_ceil(config.train.batch_size);
        let mut history = Vec::new();
        for index in state.epochs_done..epochs {
            let started = Instant::now();
            let epoch = index + 1;
            let beta = config.loss.beta_at(index);
            let mut sums = LossSums::default();
            // Batches are read and augmented on another thread while this one trains: the
            // same generator draws in the same order as a sequential loop would.
            model = std::thread::scope(|scope| -> Result<Vae, TrainError> {
                let (sender, receiver) = std::sync::mpsc::sync_channel(PREFETCH_BATCHES);
                scope.spawn(move || {
                    for batch in self.batches(index) {
                        let failed = batch.is_err();
                        if sender.send(batch).is_err() || failed {
                            break;
                        }
                    }
                });
                for (batch, prepared) in receiver.into_iter().enumerate() {
                    let TrainBatch { crops, noise } = prepared?;
                    let (stepped, loss) = train_step(config, beta, model, &mut optimizer, &crops, noise, &device);
                    model = stepped;
                    let values = sums.add(&loss, crops.len());
                    if !values.loss.is_finite() {
                        return Err(TrainError::NonFinite { epoch, batch, value: values.loss });
                    }
                    let crops_per_second = sums.crops as f64 / started.elapsed().as_secs_f64();
                    observe(TrainEvent::Batch {
                        epoch,
                        epochs,
                        batch: batch + 1,
                        batches,
                        loss: values,
                        crops_per_second,
                    });
                }
                Ok(model)
            })?;
            let validate = epoch % config.train.val_every == 0 || epoch == epochs;
            let val = if validate { Some(self.evaluate(&model.valid())?) } else { None };
            let metrics =
                EpochMetrics { epoch, beta, train: sums.mean(), val, seconds: started.elapsed().as_secs_f64() };
            append_metrics(&metrics_path, &metrics)?;

            let improved = val.filter(|v| state.best.is_none_or(|best| v.loss < best.val_loss));
            if let Some(v) = improved {
                state.best = Some(BestEpoch { epoch, val_loss: v.loss });
            }
            state.epochs_done = epoch;
            checkpoint::save(self.run_dir, &state, &model, &optimizer, improved.is_some())?;
            observe(TrainEvent::Epoch(&metrics));
            history.push(metrics);
        }
        Ok(TrainOutcome { epochs_done: state.epochs_done, best: state.best, history, model })
    }

    /// The training batches of epoch `index` (0-based) in order: shuffled, read, augmented,
    /// with their reparameterisation noise, all from [`epoch_rng`].
    fn batches(&self, index: usize) -> impl Iterator<Item = Result<TrainBatch, TrainError>> + '_ {
        let config = self.config;
        let mut rng = epoch_rng(config.train.seed, index);
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        order.shuffle(&mut rng);
        let chunks: Vec<Vec<usize>> = order.chunks(config.train.batch_size).map(<[usize]>::to_vec).collect();
        chunks.into_iter().map(move |indices| {
            let crops = indices
                .iter()
                .map(|&i| {
                    read_crop(self.train, "training", i, config.model.input_shape)
                        .map(|c| augment(&c, &config.augment, &mut rng))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let noise = standard_normal(crops.len() * config.model.latent_dim, &mut rng);
            Ok(TrainBatch { crops, noise })
        })
    }

    /// A fresh model and optimizer, or those of the last checkpoint when resuming.
    fn start(
        &self,
        device: &Device,
        optimizer: ModuleOptimizer,
    ) -> Result<(Vae, ModuleOptimizer, TrainState), TrainError> {
        let last = checkpoint::locate(self.run_dir, Which::Last)?;
        match last {
            Some(dir) if self.resume => {
                let state = checkpoint::load_state(&dir)?;
                let mut comparable = state.config.clone();
                comparable.train.epochs = self.config.train.epochs;
                if &comparable != self.config {
                    return Err(TrainError::ConfigChanged { checkpoint: dir });
                }
                let model = checkpoint::load_model(&dir, &state, device)?;
                let optimizer = checkpoint::load_optimizer(&dir, optimizer)?;
                Ok((model, optimizer, state))
            }
            Some(_) => Err(TrainError::RunExists(self.run_dir.to_path_buf())),
            None => {
                let model = self.config.model.init(device, self.config.train.seed);
                Ok((model, optimizer, TrainState { epochs_done: 0, best: None, config: self.config.clone() }))
            }
        }
    }

    /// Mean losses over the validation set, `z = mu`, full `beta`, no augmentation.
    fn evaluate(&self, model: &Vae) -> Result<LossValues, TrainError> {
        let config = self.config;
        let mut sums = LossSums::default();
        let indices: Vec<usize> = (0..self.val.len()).collect();
        for chunk in indices.chunks(config.train.batch_size) {
            let crops = chunk
                .iter()
                .map(|&i| read_crop(self.val, "validation", i, config.model.input_shape))
                .collect::<Result<Vec<_>, _>>()?;
            let x = batch_tensor(&crops, &self.device);
            let (mu, logvar) = model.encode(x.clone());
            let output = VaeOutput { reconstruction: model.decode(mu.clone()), mu, logvar };
            sums.add(&vae_loss(config.loss.recon, config.loss.beta, x, output), crops.len());
        }
        Ok(sums.mean())
    }
}

/// AdamW with the run's weight decay (epsilon 1e-8 as in PyTorch; burn's default is 1e-5).
pub fn optimizer(config: &VaeConfig) -> ModuleOptimizer {
    AdamWConfig::new().with_weight_decay(config.train.weight_decay as f32).with_epsilon(1e-8).init()
}

/// One optimiser step on a batch of `crops` with reparameterisation noise `noise`
/// (`crops.len() * latent_dim` values): the updated model and the batch's loss, as computed
/// before the update.
pub fn train_step(
    config: &VaeConfig,
    beta: f64,
    model: Vae,
    optimizer: &mut ModuleOptimizer,
    crops: &[Array3<f32>],
    noise: Vec<f32>,
    device: &Device,
) -> (Vae, VaeLoss) {
    let x = batch_tensor(crops, device);
    let eps = Tensor::from_data(TensorData::new(noise, [crops.len(), config.model.latent_dim]), device);
    let loss = vae_loss(config.loss.recon, beta, x.clone(), model.forward(x, eps));
    let grads = GradientsParams::from_grads(loss.total.backward(), &model);
    (optimizer.step(config.train.lr, model, grads), loss)
}

fn read_crop(
    set: &(dyn CropSet + Sync),
    name: &'static str,
    index: usize,
    expected: [usize; 3],
) -> Result<Array3<f32>, TrainError> {
    let crop = set.crop(index).map_err(|source| TrainError::Crop { set: name, source })?;
    let (d, h, w) = crop.dim();
    if [d, h, w] != expected {
        return Err(TrainError::CropShape { set: name, index, shape: [d, h, w], expected });
    }
    Ok(crop)
}

/// Crop-weighted sums of batch losses.
#[derive(Default)]
struct LossSums {
    sum: LossValues,
    crops: usize,
}

impl LossSums {
    /// Adds a batch of `crops` crops; returns the batch's own values.
    fn add(&mut self, loss: &VaeLoss, crops: usize) -> LossValues {
        let scalar = |t: &Tensor<1>| t.clone().into_scalar::<f32>() as f64;
        let values = LossValues { loss: scalar(&loss.total), recon: scalar(&loss.recon), kl: scalar(&loss.kl) };
        let n = crops as f64;
        self.sum.loss += values.loss * n;
        self.sum.recon += values.recon * n;
        self.sum.kl += values.kl * n;
        self.crops += crops;
        values
    }

    fn mean(&self) -> LossValues {
        let n = self.crops.max(1) as f64;
        LossValues { loss: self.sum.loss / n, recon: self.sum.recon / n, kl: self.sum.kl / n }
    }
}

/// Drops rows after epoch `epochs_done` (written by an epoch whose checkpoint never
/// landed) and makes sure the header is there.
fn keep_metrics_until(path: &Path, epochs_done: usize) -> Result<(), TrainError> {
    let io = |source| TrainError::Io { path: path.to_path_buf(), source };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let mut kept = format!("{METRICS_HEADER}\n");
    for line in text.lines().skip(1) {
        let epoch = line.split(',').next().and_then(|e| e.parse::<usize>().ok());
        if epoch.is_some_and(|e| e <= epochs_done) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    fracmap_core::fsutil::write_atomic(path, kept.as_bytes()).map_err(io)
}

fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<(), TrainError> {
    let io = |source| TrainError::Io { path: path.to_path_buf(), source };
    let val = m.val.map_or(",,".to_string(), |v| format!("{},{},{}", v.loss, v.recon, v.kl));
    let t = m.train;
    let row = format!("{},{},{},{},{},{},{:.3}\n", m.epoch, m.beta, t.loss, t.recon, t.kl, val, m.seconds);
    let mut file = std::fs::OpenOptions::new().append(true).open(path).map_err(io)?;
    file.write_all(row.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vae::config::{AugmentConfig, ModelConfig};

    /// 16^3 crops, base 2, two levels, latent 8, batch 2.
    fn tiny_config(epochs: usize) -> VaeConfig {
        let model =
            ModelConfig { input_shape: [16; 3], base_channels: 2, levels: 2, latent_dim: 8, ..ModelConfig::default() };
        let mut config = VaeConfig { model, ..VaeConfig::default() };
        config.loss.kl_warmup_epochs = 1;
        config.train.epochs = epochs;
        config.train.batch_size = 2;
        config.train.lr = 3e-3;
        config.augment = AugmentConfig { flip: true, rotate_deg: 10.0, intensity_jitter: 0.05 };
        config
    }

    /// Bright balls of varying radius on a dark background: something with structure.
    fn balls(n: usize, offset: usize) -> Vec<Array3<f32>> {
        (0..n)
            .map(|i| {
                let r = 3.0 + ((i + offset) % 4) as f32;
                Array3::from_shape_fn((16, 16, 16), |(z, y, x)| {
                    let d = [z, y, x].map(|c| c as f32 - 7.5);
                    let inside = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt() < r;
                    if inside { 0.8 } else { 0.1 }
                })
            })
            .collect()
    }

    fn run(config: &VaeConfig, dir: &Path, resume: bool) -> Result<TrainOutcome, TrainError> {
        let (train, val) = (balls(4, 0), balls(2, 1));
        TrainRun { config, train: &train, val: &val, run_dir: dir, device: Device::flex(), resume }.run(|_| ())
    }

    fn weights(model: &Vae) -> Vec<TensorData> {
        let mut data = vec![model.encoder[0].conv.weight.val().into_data(), model.to_mu.weight.val().into_data()];
        data.push(model.head.weight.val().into_data());
        data
    }

    fn losses(outcome: &TrainOutcome) -> Vec<(LossValues, Option<LossValues>)> {
        outcome.history.iter().map(|m| (m.train, m.val)).collect()
    }

    #[test]
    fn steps_on_a_fixed_batch_reduce_the_loss() {
        let config = tiny_config(1);
        let device = Device::flex().autodiff();
        let mut model = config.model.init(&device, 0);
        let mut optimizer = optimizer(&config);
        let crops = balls(2, 0);
        let mut first_and_last = Vec::new();
        for step in 0..8 {
            let noise = vec![0.0; 2 * config.model.latent_dim];
            let (stepped, loss) = train_step(&config, 1e-4, model, &mut optimizer, &crops, noise, &device);
            model = stepped;
            if step == 0 || step == 7 {
                first_and_last.push(loss.total.into_scalar::<f32>());
            }
        }
        assert!(first_and_last[1] < 0.8 * first_and_last[0], "{first_and_last:?}");
    }

    #[test]
    fn the_same_seed_and_data_give_identical_losses_and_weights() {
        let config = tiny_config(2);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, second) = (run(&config, a.path(), false).unwrap(), run(&config, b.path(), false).unwrap());
        assert_eq!(losses(&first), losses(&second));
        assert_eq!(weights(&first.model), weights(&second.model));
    }

    #[test]
    fn another_seed_gives_other_losses() {
        let config = tiny_config(1);
        let mut reseeded = config.clone();
        reseeded.train.seed = 1;
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert_ne!(losses(&run(&config, a.path(), false).unwrap()), losses(&run(&reseeded, b.path(), false).unwrap()));
    }

    #[test]
    fn resuming_continues_exactly_like_an_uninterrupted_run() {
        let (whole, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let uninterrupted = run(&tiny_config(3), whole.path(), false).unwrap();
        run(&tiny_config(2), split.path(), false).unwrap();
        let resumed = run(&tiny_config(3), split.path(), true).unwrap();
        assert_eq!(resumed.history.len(), 1);
        assert_eq!(losses(&resumed), losses(&uninterrupted)[2..]);
        assert_eq!(weights(&resumed.model), weights(&uninterrupted.model));
        let rows = |dir: &Path| -> Vec<String> {
            let text = std::fs::read_to_string(dir.join(METRICS_FILE)).unwrap();
            text.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
        };
        assert_eq!(rows(split.path()), rows(whole.path()), "metrics.csv without the seconds column");
    }

    #[test]
    fn the_last_and_best_checkpoints_are_kept_and_the_rest_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = run(&tiny_config(3), dir.path(), false).unwrap();
        let best = outcome.best.unwrap();
        let val_losses: Vec<f64> = outcome.history.iter().map(|m| m.val.unwrap().loss).collect();
        let lowest = val_losses.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(best.val_loss, lowest);
        let best_dir = checkpoint::locate(dir.path(), Which::Best).unwrap().unwrap();
        assert_eq!(checkpoint::load_state(&best_dir).unwrap().epochs_done, best.epoch);
        let folders = std::fs::read_dir(dir.path().join(checkpoint::CHECKPOINTS_DIR)).unwrap().count();
        assert_eq!(folders, if best.epoch == 3 { 1 } else { 2 });
    }

    #[test]
    fn the_last_checkpoint_loads_as_the_trained_model() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = run(&tiny_config(1), dir.path(), false).unwrap();
        let (loaded, config) = checkpoint::load_run_model(dir.path(), Which::Last, &Device::flex()).unwrap().unwrap();
        assert_eq!(config, tiny_config(1));
        assert_eq!(weights(&loaded), weights(&outcome.model.valid()));
    }

    #[test]
    fn metrics_rows_past_the_checkpoint_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        std::fs::write(&path, format!("{METRICS_HEADER}\n1,0,a\n2,0,b\n3,0,c\n")).unwrap();
        keep_metrics_until(&path, 2).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{METRICS_HEADER}\n1,0,a\n2,0,b\n"));
    }

    #[test]
    fn a_folder_holding_a_run_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        run(&tiny_config(1), dir.path(), false).unwrap();
        assert!(matches!(run(&tiny_config(1), dir.path(), false), Err(TrainError::RunExists(_))));
    }

    #[test]
    fn resuming_with_another_configuration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        run(&tiny_config(1), dir.path(), false).unwrap();
        let mut changed = tiny_config(2);
        changed.train.lr = 1e-4;
        assert!(matches!(run(&changed, dir.path(), true), Err(TrainError::ConfigChanged { .. })));
    }

    #[test]
    fn a_crop_of_the_wrong_shape_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let train = vec![Array3::zeros((16, 16, 16)), Array3::zeros((16, 16, 8))];
        let config = tiny_config(1);
        let err = TrainRun {
            config: &config,
            train: &train,
            val: &train,
            run_dir: dir.path(),
            device: Device::flex(),
            resume: false,
        }
        .run(|_| ())
        .unwrap_err();
        assert!(err.to_string().contains("crop 1 has shape [z, y, x] = [16, 16, 8]"), "{err}");
    }
}
