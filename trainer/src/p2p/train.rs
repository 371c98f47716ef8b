//! Training the pix2pix-LSTM: Adam on both networks, the generator alone on the segmentation
//! loss for the warm-up epochs, then a discriminator step and a generator step per batch
//! (pix2pix's alternation); validation slices scored every epoch; the generator of the lowest
//! validation soft-Dice loss kept; the GAN's health judged every epoch (`health.rs`).
//!
//! Run folder: `metrics.csv` (one row per epoch, the columns of [`EpochSignals`] and the
//! learning rate), `losses.png` (the curves), `health.json`, `generator_best.bpk`,
//! `generator_last.bpk`, `discriminator_last.bpk` (each written beside, then renamed over).
//! Randomness (weights, slices drawn, order, flips) comes from `train.seed`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use fracmap_core::Mask;
use fracmap_core::chart::{ChartOptions, Series, line_chart};
use fracmap_core::fsutil::write_atomic;
use fracmap_core::picture::write_png;
use ndarray::Array3;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{Adversarial, P2pConfig};
use super::data::{SliceRef, as_float, plane_tensor, sequence_tensor, slice_refs};
use super::health::{EpochSignals, Health, Verdict, assess};
use super::loss::{discriminator_loss, generator_loss};
use super::model::Generator;
use crate::weak::data::Sample;

pub const METRICS_FILE: &str = "metrics.csv";
pub const CURVES_FILE: &str = "losses.png";
pub const HEALTH_FILE: &str = "health.json";
pub const BEST_GENERATOR_FILE: &str = "generator_best.bpk";
pub const LAST_GENERATOR_FILE: &str = "generator_last.bpk";
pub const LAST_DISCRIMINATOR_FILE: &str = "discriminator_last.bpk";

/// One training run: crops with their targets (`None`: the crop does not supervise).
pub struct P2pTrainRun<'a> {
    pub config: &'a P2pConfig,
    pub train: (&'a [Sample], &'a [Option<Mask>]),
    pub val: (&'a [Sample], &'a [Option<Mask>]),
    pub run_dir: &'a Path,
    pub device: Device,
}

/// What [`P2pTrainRun::run`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum P2pEvent<'a> {
    Batch {
        epoch: usize,
        epochs: usize,
        batch: usize,
        batches: usize,
        loss: f64,
    },
    Epoch {
        signals: &'a EpochSignals,
        seconds: f64,
    },
    /// The first time the health turns bad; training goes on unless it diverged.
    Unhealthy(&'a Health),
}

pub struct P2pOutcome {
    /// The generator of the best epoch (an inference model).
    pub generator: Generator,
    pub best_epoch: usize,
    pub history: Vec<EpochSignals>,
    pub health: Health,
    /// Slices with fracture and without, in the training set.
    pub slices: (usize, usize),
}

impl P2pTrainRun<'_> {
    pub fn run(&self, mut observe: impl FnMut(P2pEvent<'_>)) -> Result<P2pOutcome> {
        let config = self.config;
        let (train_fracture, train_empty) = slice_refs(self.train.1);
        if train_fracture.is_empty() {
            bail!("no training slice holds a fracture voxel: nothing to learn (are the targets empty?)");
        }
        let val_refs = validation_slices(self.val.1, config.slices.normal_slices_per_fracture);
        if val_refs.is_empty() {
            bail!("no validation slice has a target");
        }
        std::fs::create_dir_all(self.run_dir).with_context(|| format!("{}: cannot create", self.run_dir.display()))?;
        let train_cts: Vec<&Array3<f32>> = self.train.0.iter().map(|s| s.ct.data()).collect();
        let train_targets: Vec<Array3<f32>> =
            self.train.1.iter().map(|t| t.as_ref().map_or_else(|| Array3::zeros((0, 0, 0)), as_float)).collect();
        let train_targets: Vec<&Array3<f32>> = train_targets.iter().collect();

        let device = self.device.clone().autodiff();
        let mut generator = config.generator.init(&device, config.train.seed);
        let mut discriminator = config.discriminator.init(&device, config.train.seed.wrapping_add(1));
        let adam = || {
            AdamConfig::new()
                .with_beta_1(config.train.beta1 as f32)
                .with_beta_2(config.train.beta2 as f32)
                .with_epsilon(1e-8)
                .init()
        };
        let (mut g_optimizer, mut d_optimizer) = (adam(), adam());
        let context = config.generator.context;
        let kind = config.loss.adversarial;
        let epochs = config.train.epochs;
        let batch_size = config.train.batch_size;
        let empty_per_epoch = drawn(config.slices.normal_slices_per_fracture, train_fracture.len(), train_empty.len());
        let batches = (train_fracture.len() + empty_per_epoch).div_ceil(batch_size);

        let mut csv = format!("{}\n", METRICS_COLUMNS.join(","));
        let mut history: Vec<EpochSignals> = Vec::new();
        let mut best: Option<(usize, f64)> = None;
        let mut best_generator = generator.valid();
        let mut reported = false;
        for index in 0..epochs {
            let started = Instant::now();
            let epoch = index + 1;
            let adversarial = config.train.adversarial_at(epoch);
            let lr = config.train.lr_at(epoch);
            let mut rng = ChaCha8Rng::seed_from_u64(config.train.seed);
            rng.set_stream(index as u64 + 1);
            let mut order = train_empty.clone();
            order.shuffle(&mut rng);
            order.truncate(empty_per_epoch);
            order.extend(&train_fracture);
            order.shuffle(&mut rng);

            let mut sums = Means::default();
            for (batch, refs) in order.chunks(batch_size).enumerate() {
                let flips: Vec<bool> = refs.iter().map(|_| config.train.flip && rng.random_bool(0.5)).collect();
                let slices = sequence_tensor(&train_cts, refs, context, &flips, &device);
                let target = plane_tensor(&train_targets, refs, &flips, &device);
                let logits = generator.forward(slices);
                let fake_patches = if adversarial {
                    let centre = plane_tensor(&train_cts, refs, &flips, &device);
                    let fake = sigmoid(logits.clone()).detach();
                    let real_patches = discriminator.forward(centre.clone(), target.clone());
                    let fake_for_d = discriminator.forward(centre.clone(), fake);
                    sums.add("d_real", score(kind, real_patches.clone()), refs.len());
                    sums.add("d_fake", score(kind, fake_for_d.clone()), refs.len());
                    let d_loss = discriminator_loss(kind, real_patches, fake_for_d);
                    sums.add("d_loss", scalar(&d_loss), refs.len());
                    let grads = GradientsParams::from_grads(d_loss.backward(), &discriminator);
                    discriminator = d_optimizer.step(lr, discriminator, grads);
                    Some(discriminator.forward(centre, sigmoid(logits.clone())))
                } else {
                    None
                };
                let loss = generator_loss(&config.loss, logits, target, fake_patches);
                let value = scalar(&loss.total);
                sums.add("g_loss", value, refs.len());
                sums.add("g_seg", scalar(&loss.segmentation), refs.len());
                sums.add("g_adv", loss.adversarial.as_ref().map_or(0.0, scalar), refs.len());
                if value.is_finite() {
                    let grads = GradientsParams::from_grads(loss.total.backward(), &generator);
                    generator = g_optimizer.step(lr, generator, grads);
                }
                observe(P2pEvent::Batch { epoch, epochs, batch: batch + 1, batches, loss: value });
                if !value.is_finite() {
                    break;
                }
            }
            let inference = generator.valid();
            let val = validate(&inference, self.val, &val_refs, batch_size, &self.device)?;
            let signals = EpochSignals {
                epoch,
                adversarial,
                g_loss: sums.mean("g_loss"),
                g_seg: sums.mean("g_seg"),
                g_adv: sums.mean("g_adv"),
                d_loss: sums.mean("d_loss"),
                d_real: sums.mean("d_real"),
                d_fake: sums.mean("d_fake"),
                val_soft_dice_loss: val.soft_dice_loss,
                val_dice: val.dice,
                val_predicted_fraction: val.predicted_fraction,
                val_true_fraction: val.true_fraction,
                val_std: val.std,
            };
            csv.push_str(&metrics_row(&signals, lr));
            write_atomic(&self.run_dir.join(METRICS_FILE), csv.as_bytes())?;
            history.push(signals);
            let seconds = started.elapsed().as_secs_f64();
            observe(P2pEvent::Epoch { signals: history.last().expect("pushed"), seconds });
            write_curves(self.run_dir, &history)?;
            let health = assess(&history);
            write_atomic(&self.run_dir.join(HEALTH_FILE), &serde_json::to_vec_pretty(&health)?)?;
            if health.verdict != Verdict::Healthy && !reported {
                reported = true;
                observe(P2pEvent::Unhealthy(&health));
            }
            if health.verdict == Verdict::Diverged {
                break;
            }
            save(&inference, &self.run_dir.join(LAST_GENERATOR_FILE))?;
            save(&discriminator.valid(), &self.run_dir.join(LAST_DISCRIMINATOR_FILE))?;
            let loss = history.last().expect("pushed").val_soft_dice_loss;
            if best.is_none_or(|(_, b)| loss < b) {
                best = Some((epoch, loss));
                save(&inference, &self.run_dir.join(BEST_GENERATOR_FILE))?;
                best_generator = inference;
            }
        }
        let Some((best_epoch, _)) = best else {
            bail!("training diverged in epoch 1: no model to keep (see {})", self.run_dir.join(HEALTH_FILE).display());
        };
        Ok(P2pOutcome {
            generator: best_generator,
            best_epoch,
            health: assess(&history),
            history,
            slices: (train_fracture.len(), train_empty.len()),
        })
    }
}

/// `metrics.csv`'s columns.
const METRICS_COLUMNS: [&str; 14] = [
    "epoch",
    "adversarial",
    "lr",
    "g_loss",
    "g_seg",
    "g_adv",
    "d_loss",
    "d_real",
    "d_fake",
    "val_loss", // the validation soft-Dice loss: what picks the best epoch, as in every run's metrics.csv
    "val_dice",
    "val_predicted_fraction",
    "val_true_fraction",
    "val_std",
];

fn metrics_row(e: &EpochSignals, lr: f64) -> String {
    let values = [
        e.g_loss,
        e.g_seg,
        e.g_adv,
        e.d_loss,
        e.d_real,
        e.d_fake,
        e.val_soft_dice_loss,
        e.val_dice,
        e.val_predicted_fraction,
        e.val_true_fraction,
        e.val_std,
    ];
    let values: Vec<String> = values.iter().map(|v| if v.is_nan() { String::new() } else { v.to_string() }).collect();
    format!("{},{},{lr},{}\n", e.epoch, u8::from(e.adversarial), values.join(","))
}

/// `losses.png`: the generator's segmentation term, its adversarial term, the
/// discriminator's loss and the validation soft-Dice loss per epoch.
fn write_curves(run_dir: &Path, history: &[EpochSignals]) -> Result<()> {
    let series = |name: &str, value: fn(&EpochSignals) -> f64| Series {
        name: name.to_string(),
        points: history.iter().map(|e| (e.epoch as f64, value(e))).filter(|(_, y)| y.is_finite()).collect(),
    };
    let lines = [
        series("G segmentation", |e| e.g_seg),
        series("G adversarial", |e| e.g_adv),
        series("D loss", |e| e.d_loss),
        series("val soft Dice loss", |e| e.val_soft_dice_loss),
    ];
    let options = ChartOptions {
        title: "pix2pix-LSTM losses (adversary after the warm-up)".to_string(),
        x_label: "epoch".to_string(),
        y_label: "loss".to_string(),
        log_y: false,
        width: 720,
        height: 420,
    };
    let image = line_chart(&lines, &options)?;
    let path = run_dir.join(CURVES_FILE);
    write_png(&path, &image).with_context(|| format!("{}: cannot write", path.display()))
}

/// The discriminator's mean score: the probability of "real" (vanilla), or the raw output
/// the least-squares loss pulls to 1 (real) and 0 (fake).
fn score(kind: Adversarial, patches: Tensor<4>) -> f64 {
    let scores = match kind {
        Adversarial::Vanilla => sigmoid(patches),
        Adversarial::LeastSquares => patches,
    };
    scalar(&scores.mean())
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

/// How many of `empty` slices an epoch draws beside `fracture` ones.
fn drawn(ratio: f64, fracture: usize, empty: usize) -> usize {
    if ratio == 0.0 { empty } else { ((ratio * fracture as f64).ceil() as usize).min(empty) }
}

/// Every validation slice with fracture, and evenly spaced empty ones in the training ratio.
fn validation_slices(targets: &[Option<Mask>], ratio: f64) -> Vec<SliceRef> {
    let (mut fracture, empty) = slice_refs(targets);
    let keep = drawn(ratio, fracture.len(), empty.len());
    fracture.extend((0..keep).map(|i| empty[i * empty.len() / keep.max(1)]));
    fracture
}

/// The validation numbers of one epoch.
struct Validation {
    soft_dice_loss: f64,
    dice: f64,
    predicted_fraction: f64,
    true_fraction: f64,
    std: f64,
}

fn validate(
    generator: &Generator,
    (samples, targets): (&[Sample], &[Option<Mask>]),
    refs: &[SliceRef],
    batch_size: usize,
    device: &Device,
) -> Result<Validation> {
    let cts: Vec<&Array3<f32>> = samples.iter().map(|s| s.ct.data()).collect();
    let floats: Vec<Array3<f32>> =
        targets.iter().map(|t| t.as_ref().map_or_else(|| Array3::zeros((0, 0, 0)), as_float)).collect();
    let floats: Vec<&Array3<f32>> = floats.iter().collect();
    let (mut sum_p, mut sum_t, mut sum_pt, mut sum_p2) = (0.0, 0.0, 0.0, 0.0);
    let (mut tp, mut predicted, mut voxels) = (0usize, 0usize, 0usize);
    for chunk in refs.chunks(batch_size) {
        let flips = vec![false; chunk.len()];
        let probability = generator.probability(sequence_tensor(&cts, chunk, generator.context, &flips, device));
        let target = plane_tensor(&floats, chunk, &flips, device);
        let p = probability.into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let t = target.into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        for (&p, &t) in p.iter().zip(&t) {
            let (p, t) = (p as f64, t as f64);
            sum_p += p;
            sum_t += t;
            sum_pt += p * t;
            sum_p2 += p * p;
            let hit = p >= 0.5;
            predicted += usize::from(hit);
            tp += usize::from(hit && t > 0.5);
        }
        voxels += p.len();
    }
    let n = voxels.max(1) as f64;
    let mean = sum_p / n;
    let truth = sum_t;
    Ok(Validation {
        soft_dice_loss: 1.0 - (2.0 * sum_pt + 1.0) / (sum_p + sum_t + 1.0),
        dice: if predicted as f64 + truth == 0.0 { 1.0 } else { 2.0 * tp as f64 / (predicted as f64 + truth) },
        predicted_fraction: predicted as f64 / n,
        true_fraction: truth / n,
        std: (sum_p2 / n - mean * mean).max(0.0).sqrt(),
    })
}

/// Means over slices of named batch values.
#[derive(Default)]
struct Means {
    sums: std::collections::BTreeMap<&'static str, (f64, usize)>,
}

impl Means {
    fn add(&mut self, name: &'static str, value: f64, slices: usize) {
        let entry = self.sums.entry(name).or_default();
        entry.0 += value * slices as f64;
        entry.1 += slices;
    }

    /// NaN for a value never added (the discriminator's in the warm-up).
    fn mean(&self, name: &str) -> f64 {
        self.sums.get(name).map_or(f64::NAN, |(sum, n)| sum / *n as f64)
    }
}

/// Writes a module beside `path`, then renames it over: a reader never sees half a file.
pub fn save<M: Module>(module: &M, path: &Path) -> Result<()> {
    let tmp: PathBuf = path.with_extension("bpk.tmp");
    module.clone().save_file(&tmp).map_err(|e| anyhow::anyhow!("{}: {e:?}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Status;
    use crate::p2p::model::{DiscriminatorConfig, GeneratorConfig};
    use crate::weak::data::fixtures::sample;

    /// 8^3 crops: 8x8 slices, base 2, two levels, batch 4.
    pub(crate) fn tiny_config(epochs: usize, warmup: usize) -> P2pConfig {
        let mut config = P2pConfig {
            generator: GeneratorConfig {
                slice_shape: [8, 8],
                context: 3,
                base_channels: 2,
                levels: 2,
                norm_groups: 2,
                ..GeneratorConfig::default()
            },
            discriminator: DiscriminatorConfig { base_channels: 4, layers: 1, ..DiscriminatorConfig::default() },
            ..P2pConfig::default()
        };
        config.slices.depth = 8;
        config.train.epochs = epochs;
        config.train.warmup_epochs = warmup;
        config.train.decay_epochs = 0;
        config.train.batch_size = 4;
        config.train.lr = 3e-3;
        config
    }

    /// A bright block; fractured ones have a dark cleft (the target) at y = 3 in z 2..5.
    pub(crate) fn vertebra(status: Status, shift: usize) -> Sample {
        let fractured = status == Status::Fractured;
        let cleft = Mask::from_shape_fn((8, 8, 8), |(z, y, x)| {
            fractured && (2..5).contains(&z) && y == 3 && (2..6).contains(&x)
        });
        let ct = Array3::from_shape_fn((8, 8, 8), |(z, y, x)| {
            if cleft[[z, y, x]] {
                0.1
            } else if (1..7).contains(&((x + shift) % 8)) && (1..7).contains(&y) {
                0.8
            } else {
                0.2
            }
        });
        let empty = Array3::zeros((0, 0, 0));
        sample(status, ct, empty, cleft.clone(), Some(cleft))
    }

    pub(crate) fn set() -> (Vec<Sample>, Vec<Option<Mask>>) {
        let mut samples: Vec<Sample> = (0..3).map(|i| vertebra(Status::Normal, i)).collect();
        samples.extend((0..3).map(|i| vertebra(Status::Fractured, i)));
        let targets = samples.iter().map(|s| s.truth.clone()).collect();
        (samples, targets)
    }

    fn run(config: &P2pConfig, dir: &Path) -> Result<P2pOutcome> {
        let (samples, targets) = set();
        let run = P2pTrainRun {
            config,
            train: (&samples, &targets),
            val: (&samples, &targets),
            run_dir: dir,
            device: Device::flex(),
        };
        run.run(|_| ())
    }

    #[test]
    fn a_run_warms_up_then_trains_both_networks_and_writes_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = run(&tiny_config(3, 1), dir.path()).unwrap();
        assert_eq!(outcome.history.len(), 3);
        let h = &outcome.history;
        assert!(!h[0].adversarial && h[0].d_loss.is_nan() && h[0].g_adv == 0.0);
        assert!(h[1].adversarial && h[1].d_loss.is_finite() && h[1].g_adv > 0.0);
        assert!((0.0..=1.0).contains(&h[2].d_real) && (0.0..=1.0).contains(&h[2].d_fake));
        assert_eq!(outcome.slices, (9, 39), "3 fractured crops x 3 cleft slices; the rest of 6 x 8");
        let csv = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
        assert_eq!(csv.lines().count(), 4, "{csv}");
        assert!(csv.lines().nth(1).unwrap().starts_with("1,0,"), "{csv}");
        for file in [CURVES_FILE, HEALTH_FILE, BEST_GENERATOR_FILE, LAST_GENERATOR_FILE, LAST_DISCRIMINATOR_FILE] {
            assert!(dir.path().join(file).is_file(), "{file}");
        }
        let health: Health = serde_json::from_slice(&std::fs::read(dir.path().join(HEALTH_FILE)).unwrap()).unwrap();
        assert_eq!(health, outcome.health);
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let config = tiny_config(2, 1);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Debug forms: the warm-up's discriminator numbers are NaN, which `==` never equals.
        let history = |dir: &Path| format!("{:?}", run(&config, dir).unwrap().history);
        assert_eq!(history(a.path()), history(b.path()));
    }

    #[test]
    fn the_warm_up_learns_the_cleft() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = tiny_config(12, 12);
        config.train.lr = 1e-2;
        let outcome = run(&config, dir.path()).unwrap();
        let (first, last) = (&outcome.history[0], outcome.history.last().unwrap());
        assert!(last.val_soft_dice_loss < first.val_soft_dice_loss - 0.1, "{first:?} -> {last:?}");
    }

    #[test]
    fn a_diverging_run_is_stopped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = tiny_config(4, 1);
        config.loss.lambda = 1e39; // past f32's range: the loss is infinite from the first batch
        let mut events = Vec::new();
        let result = run_observed(&config, dir.path(), &mut events);
        assert!(result.is_err(), "nothing to keep when the first epoch diverges");
        assert_eq!(events.first().map(|h| h.verdict), Some(Verdict::Diverged));
        let health: Health = serde_json::from_slice(&std::fs::read(dir.path().join(HEALTH_FILE)).unwrap()).unwrap();
        assert_eq!((health.verdict, health.epoch), (Verdict::Diverged, Some(1)));
        assert!(dir.path().join(CURVES_FILE).is_file(), "the curves stay for the post-mortem");
    }

    fn run_observed(config: &P2pConfig, dir: &Path, unhealthy: &mut Vec<Health>) -> Result<P2pOutcome> {
        let (samples, targets) = set();
        let run = P2pTrainRun {
            config,
            train: (&samples, &targets),
            val: (&samples, &targets),
            run_dir: dir,
            device: Device::flex(),
        };
        run.run(|event| {
            if let P2pEvent::Unhealthy(h) = event {
                unhealthy.push(h.clone());
            }
        })
    }

    #[test]
    fn validation_keeps_every_fracture_slice_and_evenly_spaced_empty_ones() {
        let (_, targets) = set();
        let refs = validation_slices(&targets, 1.0);
        assert_eq!(refs.len(), 18, "9 with fracture, 9 of 39 empty");
        assert!(refs[..9].iter().all(|r| r.crop >= 3 && (2..5).contains(&r.z)));
        assert_eq!(validation_slices(&targets, 0.0).len(), 48);
    }
}
