//! Training the phase-2 U-Net: AdamW on the autodiff form of a device, random left-right
//! flips, the weak loss (or BCE + Dice for full supervision), validation every epoch, the
//! model of the lowest validation loss kept.
//!
//! Run folder: `metrics.csv` (one row per epoch: total and per-term losses), `model_best.bpk`
//! and `model_last.bpk` (each written beside, then renamed over), and what the caller adds
//! (`run.json`, `config.toml`). Randomness (initial weights, order, flips) comes from
//! `train.seed`: the same seed and crops give the same run. There is no resume: a phase-2
//! run on the phantom takes minutes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{Supervision, WeakConfig};
use super::data::{Sample, input_tensor, map_tensor, mask_tensor};
use super::loss::{supervised_loss, weak_loss};
use super::masks::WeakMasks;
use super::model::UNet;
use crate::manifest::Status;

pub const METRICS_FILE: &str = "metrics.csv";
pub const BEST_MODEL_FILE: &str = "model_best.bpk";
pub const LAST_MODEL_FILE: &str = "model_last.bpk";

/// One training run of the U-Net.
pub struct WeakTrainRun<'a> {
    pub config: &'a WeakConfig,
    pub train: &'a [Sample],
    pub val: &'a [Sample],
    pub run_dir: &'a Path,
    pub device: Device,
}

/// A loss and its terms (`out, in, contrast, consistency`, or `bce, dice` under full
/// supervision), means over crops.
#[derive(Debug, Clone, PartialEq)]
pub struct LossValues {
    pub total: f64,
    pub terms: Vec<f64>,
}

/// One epoch; one row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct WeakEpoch {
    /// 1-based.
    pub epoch: usize,
    pub train: LossValues,
    pub val: LossValues,
    pub seconds: f64,
}

/// What [`WeakTrainRun::run`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum WeakEvent<'a> {
    Batch { epoch: usize, epochs: usize, batch: usize, batches: usize, loss: f64 },
    Epoch(&'a WeakEpoch),
}

/// How a run ended: the model of the best epoch (an inference model) and every epoch.
pub struct WeakOutcome {
    pub model: UNet,
    pub best_epoch: usize,
    pub history: Vec<WeakEpoch>,
    /// Crops that supervised training and validation (vertebrae without a label of the mode
    /// are left out, see `masks.rs`).
    pub supervising: (usize, usize),
}

#[derive(Debug, thiserror::Error)]
pub enum WeakTrainError {
    #[error("no {0} crop can supervise this label mode")]
    Empty(&'static str),
    #[error("crop {crop}: shape [z, y, x] = {shape:?}, the model takes {expected:?}")]
    Shape { crop: String, shape: [usize; 3], expected: [usize; 3] },
    #[error("epoch {epoch}, batch {batch}: the loss is {value} (try a lower train.lr)")]
    NonFinite { epoch: usize, batch: usize, value: f64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Record { path: PathBuf, source: burn::store::RecordError },
}

/// Names of the loss terms of a mode, in [`LossValues::terms`] order.
pub fn term_names(mode: Supervision) -> &'static [&'static str] {
    match mode {
        Supervision::Full => &["bce", "dice"],
        _ => &["out", "in", "contrast", "consistency"],
    }
}

impl WeakTrainRun<'_> {
    pub fn run(&self, mut observe: impl FnMut(WeakEvent<'_>)) -> Result<WeakOutcome, WeakTrainError> {
        let config = self.config;
        let mode = config.labels.mode;
        let train = supervising(self.train, mode, config.model.input_shape)?;
        let val =
            thin_normals(supervising(self.val, mode, config.model.input_shape)?, config.labels.normals_per_fracture);
        if train.is_empty() {
            return Err(WeakTrainError::Empty("training"));
        }
        if val.is_empty() {
            return Err(WeakTrainError::Empty("validation"));
        }
        std::fs::create_dir_all(self.run_dir).map_err(io(self.run_dir))?;
        let device = self.device.clone().autodiff();
        let mut model = config.model.init(&device, config.train.seed);
        let mut optimizer: ModuleOptimizer =
            AdamWConfig::new().with_weight_decay(config.train.weight_decay as f32).with_epsilon(1e-8).init();
        let metrics_path = self.run_dir.join(METRICS_FILE);
        let names = term_names(mode);
        let header = ["epoch", "train_loss", "val_loss"]
            .iter()
            .map(|s| s.to_string())
            .chain(names.iter().map(|n| format!("train_{n}")))
            .chain(names.iter().map(|n| format!("val_{n}")))
            .chain(["seconds".to_string()])
            .collect::<Vec<_>>()
            .join(",");
        let mut csv = format!("{header}\n");

        let epochs = config.train.epochs;
        let batch_size = config.train.batch_size;
        let (fractured, normal): (Vec<usize>, Vec<usize>) =
            (0..train.len()).partition(|&i| train[i].0.entry.status == Status::Fractured);
        let normals_per_epoch = normals_drawn(config.labels.normals_per_fracture, fractured.len(), normal.len());
        let batches = (fractured.len() + normals_per_epoch).div_ceil(batch_size);
        let mut history = Vec::new();
        let mut best: Option<(usize, f64)> = None;
        let mut best_model = model.valid();
        for index in 0..epochs {
            let started = Instant::now();
            let epoch = index + 1;
            let mut rng = ChaCha8Rng::seed_from_u64(config.train.seed);
            rng.set_stream(index as u64 + 1);
            let mut order = normal.clone();
            order.shuffle(&mut rng);
            order.truncate(normals_per_epoch);
            order.extend(&fractured);
            order.shuffle(&mut rng);
            let mut sums = Sums::default();
            for (batch, chunk) in order.chunks(batch_size).enumerate() {
                let items: Vec<_> = chunk.iter().map(|&i| &train[i]).collect();
                let flips: Vec<bool> = items.iter().map(|_| rng.random_bool(0.5)).collect();
                let (total, terms) = batch_loss(config, &model, &items, &flips, &device);
                let value = scalar(&total);
                if !value.is_finite() {
                    return Err(WeakTrainError::NonFinite { epoch, batch: batch + 1, value });
                }
                sums.add(value, &terms, items.len());
                let grads = GradientsParams::from_grads(total.backward(), &model);
                model = optimizer.step(config.train.lr, model, grads);
                observe(WeakEvent::Batch { epoch, epochs, batch: batch + 1, batches, loss: value });
            }
            let inference = model.valid();
            let val_loss = validation_loss(config, &inference, &val, &self.device);
            let metrics =
                WeakEpoch { epoch, train: sums.mean(), val: val_loss, seconds: started.elapsed().as_secs_f64() };
            let row: Vec<String> = [metrics.epoch as f64, metrics.train.total, metrics.val.total]
                .iter()
                .chain(&metrics.train.terms)
                .chain(&metrics.val.terms)
                .map(|v| v.to_string())
                .chain([format!("{:.3}", metrics.seconds)])
                .collect();
            csv.push_str(&row.join(","));
            csv.push('\n');
            write_atomic(&metrics_path, csv.as_bytes())?;
            save_model(&inference, &self.run_dir.join(LAST_MODEL_FILE))?;
            if best.is_none_or(|(_, loss)| metrics.val.total < loss) {
                best = Some((epoch, metrics.val.total));
                save_model(&inference, &self.run_dir.join(BEST_MODEL_FILE))?;
                best_model = inference;
            }
            observe(WeakEvent::Epoch(&metrics));
            history.push(metrics);
        }
        let best_epoch = best.map_or(0, |(epoch, _)| epoch);
        Ok(WeakOutcome { model: best_model, best_epoch, history, supervising: (train.len(), val.len()) })
    }
}

/// The crops of `samples` that supervise `mode`, with their masks; checks their shape.
fn supervising(
    samples: &[Sample],
    mode: Supervision,
    expected: [usize; 3],
) -> Result<Vec<(&Sample, WeakMasks)>, WeakTrainError> {
    let mut kept = Vec::new();
    for sample in samples {
        let shape = sample.ct.shape();
        if shape != expected {
            return Err(WeakTrainError::Shape { crop: sample.entry.dir.clone(), shape, expected });
        }
        if let Some(masks) = sample.masks(mode) {
            kept.push((sample, masks));
        }
    }
    Ok(kept)
}

/// How many of `normal` normal vertebrae an epoch draws beside `fractured` fractured ones.
fn normals_drawn(ratio: f64, fractured: usize, normal: usize) -> usize {
    if ratio == 0.0 || fractured == 0 { normal } else { ((ratio * fractured as f64).ceil() as usize).min(normal) }
}

/// The fractured crops of `set` and an evenly spaced subset of its normal ones (see
/// [`normals_drawn`]), in their order.
fn thin_normals(set: Vec<(&Sample, WeakMasks)>, ratio: f64) -> Vec<(&Sample, WeakMasks)> {
    let is_normal = |item: &(&Sample, WeakMasks)| item.0.entry.status == Status::Normal;
    let normal = set.iter().filter(|item| is_normal(item)).count();
    let keep = normals_drawn(ratio, set.len() - normal, normal);
    let mut seen = 0;
    set.into_iter()
        .filter(|item| {
            if !is_normal(item) {
                return true;
            }
            // Normal number `seen` is kept when it starts a new stride of normal / keep.
            let kept = seen * keep / normal.max(1) != (seen + 1) * keep / normal.max(1);
            seen += 1;
            kept
        })
        .collect()
}

/// The loss of a batch and its terms' values.
fn batch_loss(
    config: &WeakConfig,
    model: &UNet,
    items: &[&(&Sample, WeakMasks)],
    flips: &[bool],
    device: &Device,
) -> (Tensor<1>, Vec<f64>) {
    let samples: Vec<&Sample> = items.iter().map(|(s, _)| *s).collect();
    let logits = model.forward(input_tensor(&samples, flips, device));
    let inside: Vec<_> = items.iter().map(|(_, m)| &m.inside).collect();
    match config.labels.mode {
        Supervision::Full => {
            let loss = supervised_loss(logits, mask_tensor(&inside, flips, device));
            let terms = vec![scalar(&loss.bce), scalar(&loss.dice)];
            (loss.total, terms)
        }
        _ => {
            let outside: Vec<_> = items.iter().map(|(_, m)| &m.outside).collect();
            let errors: Vec<_> = samples.iter().map(|s| &s.error).collect();
            let loss = weak_loss(
                &config.loss,
                logits,
                mask_tensor(&inside, flips, device),
                mask_tensor(&outside, flips, device),
                map_tensor(&errors, flips, device),
            );
            let terms = [&loss.outside, &loss.inside, &loss.contrast, &loss.consistency].map(scalar).to_vec();
            (loss.total, terms)
        }
    }
}

fn validation_loss(config: &WeakConfig, model: &UNet, val: &[(&Sample, WeakMasks)], device: &Device) -> LossValues {
    let mut sums = Sums::default();
    let items: Vec<_> = val.iter().collect();
    for chunk in items.chunks(config.train.batch_size) {
        let flips = vec![false; chunk.len()];
        let (total, terms) = batch_loss(config, model, chunk, &flips, device);
        sums.add(scalar(&total), &terms, chunk.len());
    }
    sums.mean()
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

/// Crop-weighted sums of batch losses.
#[derive(Default)]
struct Sums {
    total: f64,
    terms: Vec<f64>,
    crops: usize,
}

impl Sums {
    fn add(&mut self, total: f64, terms: &[f64], crops: usize) {
        let n = crops as f64;
        self.total += total * n;
        self.terms.resize(terms.len(), 0.0);
        for (sum, term) in self.terms.iter_mut().zip(terms) {
            *sum += term * n;
        }
        self.crops += crops;
    }

    fn mean(&self) -> LossValues {
        let n = self.crops.max(1) as f64;
        LossValues { total: self.total / n, terms: self.terms.iter().map(|t| t / n).collect() }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WeakTrainError + '_ {
    move |source| WeakTrainError::Io { path: path.to_path_buf(), source }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WeakTrainError> {
    fracmap_core::fsutil::write_atomic(path, bytes).map_err(io(path))
}

/// Writes the model beside `path`, then renames it over: a reader never sees half a file.
pub fn save_model(model: &UNet, path: &Path) -> Result<(), WeakTrainError> {
    let tmp = path.with_extension("bpk.tmp");
    model.clone().save_file(&tmp).map_err(|source| WeakTrainError::Record { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weak::data::fixtures::sample;
    use crate::weak::model::UNetConfig;
    use fracmap_core::Mask;
    use ndarray::Array3;

    /// 8^3 crops, base 2, two levels, batch 2.
    fn tiny_config(mode: Supervision, epochs: usize) -> WeakConfig {
        let mut config = WeakConfig {
            model: UNetConfig {
                input_shape: [8; 3],
                base_channels: 2,
                levels: 2,
                norm_groups: 2,
                ..UNetConfig::default()
            },
            ..WeakConfig::default()
        };
        config.labels.mode = mode;
        config.train.epochs = epochs;
        config.train.batch_size = 2;
        config.train.lr = 3e-3;
        config
    }

    /// A bright cube; fractured ones have a dark cleft in their box (z 2..5, y 2..5, x 2..5).
    fn vertebra(status: Status, shift: usize) -> Sample {
        let in_box = |z: usize, y: usize, x: usize| [z, y, x].iter().all(|c| (2..5).contains(c));
        let fractured = status == Status::Fractured;
        let cleft = Mask::from_shape_fn((8, 8, 8), |(z, y, x)| fractured && in_box(z, y, x) && y == 3);
        let ct = Array3::from_shape_fn((8, 8, 8), |(z, y, x)| {
            if cleft[[z, y, x]] {
                0.2
            } else if (1..7).contains(&((x + shift) % 8)) {
                0.8
            } else {
                0.1
            }
        });
        let error = cleft.mapv(|v| if v { 1.0 } else { 0.0 });
        let box_in = Mask::from_shape_fn((8, 8, 8), |(z, y, x)| fractured && in_box(z, y, x));
        sample(status, ct, error, box_in, Some(cleft))
    }

    fn set() -> Vec<Sample> {
        let mut samples: Vec<Sample> = (0..4).map(|i| vertebra(Status::Normal, i)).collect();
        samples.extend((0..2).map(|i| vertebra(Status::Fractured, i)));
        samples
    }

    fn run(config: &WeakConfig, dir: &Path) -> Result<WeakOutcome, WeakTrainError> {
        let (train, val) = (set(), set());
        WeakTrainRun { config, train: &train, val: &val, run_dir: dir, device: Device::flex() }.run(|_| ())
    }

    fn losses(outcome: &WeakOutcome) -> Vec<(LossValues, LossValues)> {
        outcome.history.iter().map(|e| (e.train.clone(), e.val.clone())).collect()
    }

    #[test]
    fn every_mode_trains_with_finite_losses_and_writes_its_files() {
        for mode in [Supervision::Box, Supervision::Slice, Supervision::Full] {
            let dir = tempfile::tempdir().unwrap();
            let config = tiny_config(mode, 2);
            let outcome = run(&config, dir.path()).unwrap();
            assert_eq!(outcome.history.len(), 2, "{mode:?}");
            for epoch in &outcome.history {
                assert!(epoch.train.total.is_finite() && epoch.val.total.is_finite(), "{mode:?}: {epoch:?}");
                assert_eq!(epoch.train.terms.len(), term_names(mode).len());
            }
            let csv = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
            assert_eq!(csv.lines().count(), 3, "{csv}");
            let loaded = config.model.load(&dir.path().join(BEST_MODEL_FILE), &Device::flex()).unwrap();
            assert_eq!(loaded.head.weight.val().into_data(), outcome.model.head.weight.val().into_data());
            assert!(dir.path().join(LAST_MODEL_FILE).is_file());
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run_and_another_seed_another() {
        let config = tiny_config(Supervision::Box, 2);
        let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = run(&config, a.path()).unwrap();
        assert_eq!(losses(&first), losses(&run(&config, b.path()).unwrap()));
        let mut reseeded = config.clone();
        reseeded.train.seed = 1;
        assert_ne!(losses(&first), losses(&run(&reseeded, c.path()).unwrap()));
    }

    #[test]
    fn training_lowers_the_weak_loss() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = run(&tiny_config(Supervision::Box, 8), dir.path()).unwrap();
        let (first, last) = (&outcome.history[0].train, &outcome.history[7].train);
        assert!(last.total < first.total, "{first:?} -> {last:?}");
    }

    #[test]
    fn fractured_vertebrae_without_a_label_of_the_mode_do_not_supervise() {
        let dir = tempfile::tempdir().unwrap();
        let mut train = set();
        train[4].entry.fracture_boxes = 0;
        let val = set();
        let config = tiny_config(Supervision::Box, 1);
        let outcome =
            WeakTrainRun { config: &config, train: &train, val: &val, run_dir: dir.path(), device: Device::flex() }
                .run(|_| ())
                .unwrap();
        assert_eq!(outcome.supervising, (5, 6));
    }

    #[test]
    fn epochs_draw_normals_in_proportion_to_fractures() {
        assert_eq!(normals_drawn(1.0, 2, 10), 2);
        assert_eq!(normals_drawn(1.5, 3, 10), 5, "rounded up");
        assert_eq!(normals_drawn(4.0, 3, 10), 10, "never more than there are");
        assert_eq!(normals_drawn(0.0, 3, 10), 10, "0: all of them");
        assert_eq!(normals_drawn(1.0, 0, 10), 10, "no fracture: all of them");
        let dir = tempfile::tempdir().unwrap();
        let mut config = tiny_config(Supervision::Box, 1);
        config.labels.normals_per_fracture = 1.0;
        let (train, val) = (set(), set());
        let mut batches = 0;
        WeakTrainRun { config: &config, train: &train, val: &val, run_dir: dir.path(), device: Device::flex() }
            .run(|event| {
                if let WeakEvent::Batch { batches: b, .. } = event {
                    batches = b;
                }
            })
            .unwrap();
        assert_eq!(batches, 2, "two fractured and two of four normal crops, in batches of two");
    }

    #[test]
    fn validation_keeps_every_fracture_and_evenly_spaced_normals() {
        let samples: Vec<Sample> =
            (0..7).map(|i| vertebra(if i == 3 { Status::Fractured } else { Status::Normal }, i)).collect();
        let set: Vec<_> = samples.iter().map(|s| (s, s.masks(Supervision::Box).unwrap())).collect();
        let kept: Vec<usize> = thin_normals(set, 2.0)
            .iter()
            .map(|(kept, _)| samples.iter().position(|s| std::ptr::eq(s, *kept)).unwrap())
            .collect();
        // Two of the six normals, the last of each half (normals 2 and 5, at 2 and 6), and
        // the fracture in its place.
        assert_eq!(kept, vec![2, 3, 6]);
    }
}
