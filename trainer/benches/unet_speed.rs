//! Speed of the phase-2 weak U-Net in Burn (flex, CPU) against a PyTorch twin of the same
//! architecture, loss and optimiser (`scripts/bench/unet_torch.py`), on the same machine in
//! the same run: one training step (forward, weak loss, backward, AdamW) and one inference
//! forward (`sigmoid(logits)`), on the same batch, which this bench draws and hands over.
//!
//! ```sh
//! bash scripts/bench-setup.sh                         # PyTorch into .venv-bench/, once
//! cargo bench -p fracmap-trainer --bench unet_speed   # [-- --config PATH --batch N --steps N --warmup N]
//! ```
//! Prints a markdown table (median and min seconds per step, and burn / torch) and writes it
//! to `target/bench/unet_speed.md`. Relative paths are taken from the workspace root. The
//! Python is the path in `FRACMAP_BENCH_PYTHON` (default `.venv-bench/bin/python`); without
//! it only Burn's side is measured. Defaults: `configs/weak_box.toml`, its `train.batch_size`,
//! 10 timed steps after 2 warm-up steps.
//!
//! The batch: input `[B, 2, D, H, W]` uniform in `[0, 1)` (channel 1 doubles as the error map
//! `E` of `L_consistency`, as in the trainer), and box-mode masks: half the crops (rounded up)
//! "fractured", each with one random box as `M_in` (every side 1/8 to 1/2 of the axis), the
//! others normal (`M_in` empty); `M_out = 1 - M_in`. Half and half is what
//! `normals_per_fracture = 1` draws.
//!
//! Threads, and the "cores busy" columns, as in `vae_speed.rs`, whose timing and machine
//! helpers this bench copies (benches cannot share a module without editing that file).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use fracmap_trainer::weak::config::WeakConfig;
use fracmap_trainer::weak::loss::weak_loss;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

const USAGE: &str =
    "usage: cargo bench -p fracmap-trainer --bench unet_speed [-- --config PATH --batch N --steps N --warmup N]";
const TORCH_SCRIPT: &str = "scripts/bench/unet_torch.py";
const DEFAULT_PYTHON: &str = ".venv-bench/bin/python";
/// Cores used by other processes during a timing above which the report says the two sides
/// do not compare (on 2 cores, 0.2 is a tenth of the machine).
const BUSY_MACHINE: f64 = 0.2;

struct Options {
    config: PathBuf,
    /// Crops per step; `None` takes `train.batch_size`.
    batch: Option<usize>,
    /// Timed steps of each kind, after `warmup` untimed ones.
    steps: usize,
    warmup: usize,
}

impl Options {
    fn parse(root: &Path) -> anyhow::Result<Self> {
        let mut options = Options { config: root.join("configs/weak_box.toml"), batch: None, steps: 10, warmup: 2 };
        // cargo bench passes `--bench` to every harness-less bench.
        let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value\n{USAGE}"));
            let count = |text: String, least: usize| match text.parse::<usize>() {
                Ok(n) if n >= least => Ok(n),
                _ => Err(anyhow::anyhow!("{arg} {text}: expected a whole number >= {least}")),
            };
            match arg.as_str() {
                "--config" => options.config = root.join(value()?),
                "--batch" => options.batch = Some(count(value()?, 1)?),
                "--steps" => options.steps = count(value()?, 1)?,
                "--warmup" => options.warmup = count(value()?, 0)?,
                _ => bail!("unknown argument {arg}\n{USAGE}"),
            }
        }
        Ok(options)
    }
}

/// What both sides run.
struct Bench {
    /// The configuration file, relative to the workspace root where it lies there.
    config_name: String,
    config: WeakConfig,
    batch: usize,
    steps: usize,
    warmup: usize,
    /// flex's rayon pool; torch gets as many threads.
    threads: usize,
}

impl Bench {
    fn new(root: &Path, options: Options) -> anyhow::Result<Self> {
        let config =
            WeakConfig::load(&options.config).with_context(|| format!("--config {}", options.config.display()))?;
        // The trainer's input is the CT and the error map, which is also L_consistency's target.
        ensure!(config.model.in_channels == 2, "model.in_channels = {}: the bench needs 2", config.model.in_channels);
        Ok(Bench {
            config_name: options.config.strip_prefix(root).unwrap_or(&options.config).display().to_string(),
            batch: options.batch.unwrap_or(config.train.batch_size),
            config,
            steps: options.steps,
            warmup: options.warmup,
            threads: rayon_threads(),
        })
    }
}

/// One batch of the phase-2 training input and its box-mode weak labels, as flat `f32`
/// values in `[B, C, D, H, W]` order.
struct WeakBatch {
    /// `[B, 2, D, H, W]`: the "CT" and the error map, uniform in `[0, 1)`.
    input: Vec<f32>,
    /// `M_in`, `[B, 1, D, H, W]`, 0/1.
    inside: Vec<f32>,
    /// `M_out = 1 - M_in`.
    outside: Vec<f32>,
    /// Channel 1 of `input`, `[B, 1, D, H, W]`.
    error: Vec<f32>,
}

impl WeakBatch {
    /// `batch` crops of `shape` `[z, y, x]` (see the module doc).
    fn random(batch: usize, shape: [usize; 3], rng: &mut impl Rng) -> Self {
        let voxels: usize = shape.iter().product();
        let mut input = Vec::with_capacity(batch * 2 * voxels);
        let mut error = Vec::with_capacity(batch * voxels);
        let mut inside = Vec::with_capacity(batch * voxels);
        for crop in 0..batch {
            input.extend((0..voxels).map(|_| rng.random::<f32>()));
            let map: Vec<f32> = (0..voxels).map(|_| rng.random::<f32>()).collect();
            input.extend(&map);
            error.extend(map);
            let fracture_box = (crop < batch.div_ceil(2)).then(|| shape.map(|n| random_range(n, rng)));
            let [_, h, w] = shape;
            inside.extend((0..voxels).map(|i| {
                let (z, y, x) = (i / (h * w), i / w % h, i % w);
                let box_ranges = fracture_box.as_ref();
                let within =
                    box_ranges.is_some_and(|[bz, by, bx]| bz.contains(&z) && by.contains(&y) && bx.contains(&x));
                if within { 1.0 } else { 0.0 }
            }));
        }
        let outside = inside.iter().map(|m| 1.0 - m).collect();
        WeakBatch { input, inside, outside, error }
    }

    /// The little-endian file `unet_torch.py` reads: input, `M_in`, `M_out`, one after the other.
    fn to_bytes(&self) -> Vec<u8> {
        [&self.input, &self.inside, &self.outside].into_iter().flatten().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// A half-open range of an axis of `n` voxels, `n / 8` to `n / 2` long (at least 1).
fn random_range(n: usize, rng: &mut impl Rng) -> std::ops::Range<usize> {
    let length = rng.random_range((n / 8).max(1)..=(n / 2).max(1));
    let start = rng.random_range(0..=n - length);
    start..start + length
}

/// The batch's tensors on one device.
struct BatchTensors {
    input: Tensor<5>,
    inside: Tensor<5>,
    outside: Tensor<5>,
    error: Tensor<5>,
}

impl BatchTensors {
    fn new(batch: &WeakBatch, crops: usize, shape: [usize; 3], device: &Device) -> Self {
        let [d, h, w] = shape;
        let tensor = |values: &[f32], channels| {
            Tensor::from_data(TensorData::new(values.to_vec(), [crops, channels, d, h, w]), device)
        };
        BatchTensors {
            input: tensor(&batch.input, 2),
            inside: tensor(&batch.inside, 1),
            outside: tensor(&batch.outside, 1),
            error: tensor(&batch.error, 1),
        }
    }
}

/// Seconds per step of one kind of work.
#[derive(Debug, Clone, Deserialize)]
struct Timing {
    median_s: f64,
    min_s: f64,
    /// This process's CPU time / wall time over the timed steps (`None`: not measurable here).
    cores_busy: Option<f64>,
    /// The rest of the machine's CPU time / wall time meanwhile: other processes competing
    /// for the cores make the two sides incomparable.
    others_busy: Option<f64>,
}

/// What `unet_torch.py` prints.
#[derive(Debug, Deserialize)]
struct TorchReport {
    torch_version: String,
    threads: usize,
    params: usize,
    initial_loss: f64,
    train_step: Timing,
    forward: Timing,
}

/// Burn's side: parameter count, the untrained loss, training step, inference forward.
struct BurnReport {
    params: usize,
    initial_loss: f64,
    train_step: Timing,
    forward: Timing,
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the trainer crate has a workspace")?;
    let bench = Bench::new(root, Options::parse(root)?)?;
    let mut rng = ChaCha8Rng::seed_from_u64(bench.config.train.seed);
    let batch = WeakBatch::random(bench.batch, bench.config.model.input_shape, &mut rng);

    let [d, h, w] = bench.config.model.input_shape;
    eprintln!("unet_speed: Burn, batch {} x 2 x {d}x{h}x{w}, {} + {} steps", bench.batch, bench.warmup, bench.steps);
    let burn = bench_burn(&bench, &batch);

    let out_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("{}", out_dir.display()))?;
    let torch = bench_torch(root, &out_dir, &bench, &batch)?;

    let table = report(&bench, &burn, torch.as_ref());
    println!("\n{table}");
    let path = out_dir.join("unet_speed.md");
    std::fs::write(&path, &table).with_context(|| format!("{}", path.display()))?;
    eprintln!("unet_speed: written to {}", path.display());
    Ok(())
}

fn bench_burn(bench: &Bench, batch: &WeakBatch) -> BurnReport {
    let (config, crops, shape) = (&bench.config, bench.batch, bench.config.model.input_shape);
    let device = Device::flex();
    let train_device = device.clone().autodiff();
    let plain = BatchTensors::new(batch, crops, shape, &device);
    let train = BatchTensors::new(batch, crops, shape, &train_device);

    let mut model = Some(config.model.init(&train_device, config.train.seed));
    let params = model.as_ref().map_or(0, |m| m.num_params());
    let untrained = model.as_ref().expect("just built").valid();
    let initial = weak_loss(
        &config.loss,
        untrained.forward(plain.input.clone()),
        plain.inside.clone(),
        plain.outside.clone(),
        plain.error.clone(),
    );
    let initial_loss = f64::from(initial.total.into_scalar::<f32>());
    // As train.rs builds it.
    let mut adamw: ModuleOptimizer =
        AdamWConfig::new().with_weight_decay(config.train.weight_decay as f32).with_epsilon(1e-8).init();
    let train_step = time_steps(bench, || {
        let started = Instant::now();
        let current = model.take().expect("the model is put back after every step");
        let logits = current.forward(train.input.clone());
        let loss = weak_loss(&config.loss, logits, train.inside.clone(), train.outside.clone(), train.error.clone());
        let grads = GradientsParams::from_grads(loss.total.backward(), &current);
        model = Some(adamw.step(config.train.lr, current, grads));
        // Reading the loss waits for the step, as the training loop does.
        let _: f32 = loss.total.into_scalar();
        started.elapsed().as_secs_f64()
    });

    let inference_model = model.expect("the model is put back after every step").valid();
    let forward = time_steps(bench, || {
        let started = Instant::now();
        let probability = inference_model.probability(plain.input.clone()).into_data();
        let seconds = started.elapsed().as_secs_f64();
        drop(probability);
        seconds
    });
    BurnReport { params, initial_loss, train_step, forward }
}

/// Runs `step` (which returns its own seconds) `warmup` times untimed, then `steps` times.
fn time_steps(bench: &Bench, mut step: impl FnMut() -> f64) -> Timing {
    for _ in 0..bench.warmup {
        step();
    }
    let before = CpuSeconds::now();
    let wall = Instant::now();
    let mut seconds: Vec<f64> = (0..bench.steps).map(|_| step()).collect();
    let (cores_busy, others_busy) = before.busy_since(wall.elapsed().as_secs_f64());
    seconds.sort_by(f64::total_cmp);
    let n = seconds.len();
    let median = if n % 2 == 1 { seconds[n / 2] } else { (seconds[n / 2 - 1] + seconds[n / 2]) / 2.0 };
    Timing { median_s: median, min_s: seconds[0], cores_busy, others_busy }
}

/// Runs the PyTorch twin on the resolved configuration and the same batch; `None` (with a
/// message) when its Python is not installed.
fn bench_torch(root: &Path, out_dir: &Path, bench: &Bench, batch: &WeakBatch) -> anyhow::Result<Option<TorchReport>> {
    let python = root.join(std::env::var_os("FRACMAP_BENCH_PYTHON").unwrap_or_else(|| DEFAULT_PYTHON.into()));
    if !python.exists() {
        eprintln!(
            "unet_speed: no PyTorch side: {} not found. Run `bash scripts/bench-setup.sh` (or point \
             FRACMAP_BENCH_PYTHON at a Python with torch); Burn's numbers follow alone.",
            python.display()
        );
        return Ok(None);
    }
    // The twin reads the configuration as Burn resolved it, defaults spelled out.
    let resolved = out_dir.join("unet_speed.config.toml");
    std::fs::write(&resolved, bench.config.to_toml()).with_context(|| format!("{}", resolved.display()))?;
    let batch_file = out_dir.join("unet_speed.batch.f32");
    std::fs::write(&batch_file, batch.to_bytes()).with_context(|| format!("{}", batch_file.display()))?;
    eprintln!("unet_speed: PyTorch ({}), same batch and steps", python.display());
    let output = Command::new(&python)
        .arg(root.join(TORCH_SCRIPT))
        .arg("--config")
        .arg(&resolved)
        .arg("--batch-file")
        .arg(&batch_file)
        .args(["--batch", &bench.batch.to_string(), "--steps", &bench.steps.to_string()])
        .args(["--warmup", &bench.warmup.to_string(), "--threads", &bench.threads.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!("{TORCH_SCRIPT} failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout.lines().last().unwrap_or_default();
    let report = serde_json::from_str(json).with_context(|| format!("{TORCH_SCRIPT} printed {stdout:?}"))?;
    Ok(Some(report))
}

fn report(bench: &Bench, burn: &BurnReport, torch: Option<&TorchReport>) -> String {
    let (m, l, batch, threads) = (&bench.config.model, &bench.config.loss, bench.batch, bench.threads);
    let [d, h, w] = m.input_shape;
    let mut text = format!(
        "U-Net speed, batch {batch} x {} x {d}x{h}x{w}, base {}, {} levels, {:?} norm; weak loss (agg {:?}, agg2 \
         {:?}, {:?} consistency), AdamW lr {}; {} timed steps after {} warm-up; config {}\n\n",
        m.in_channels,
        m.base_channels,
        m.levels,
        m.norm,
        l.agg,
        l.agg2,
        l.consistency,
        bench.config.train.lr,
        bench.steps,
        bench.warmup,
        bench.config_name,
    );
    text += &format!("- machine: {} cores, {}\n", cores(), cpu_model());
    text += &format!(
        "- Burn {} (flex, rayon {threads} threads): {} parameters, untrained weak loss {:.4}\n",
        burn_version(),
        burn.params,
        burn.initial_loss
    );
    match torch {
        Some(t) => {
            let same = if t.params == burn.params { "the same" } else { "MISMATCH: the architectures differ" };
            text += &format!(
                "- PyTorch {} (CPU, {} threads): {} parameters ({same}), untrained weak loss {:.4}\n\n",
                t.torch_version, t.threads, t.params, t.initial_loss
            );
        }
        None => text += "- PyTorch: not run (see `bash scripts/bench-setup.sh`)\n\n",
    }
    text += "| per step | Burn median s | Burn min s | PyTorch median s | PyTorch min s | burn / torch (median) \
             | cores busy, burn / torch | other processes' cores, burn / torch |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n";
    let rows = [
        ("training step (fwd + weak loss + bwd + AdamW)", &burn.train_step, torch.map(|t| &t.train_step)),
        ("forward, sigmoid(logits)", &burn.forward, torch.map(|t| &t.forward)),
    ];
    let mut others_max = 0.0f64;
    for (name, b, t) in rows {
        let ratio = t.map_or("n/a".into(), |t| format!("**{:.2}x**", b.median_s / t.median_s));
        text += &format!(
            "| {name} | {:.4} | {:.4} | {} | {} | {ratio} | {} / {} | {} / {} |\n",
            b.median_s,
            b.min_s,
            fixed(t.map(|t| t.median_s), 4),
            fixed(t.map(|t| t.min_s), 4),
            fixed(b.cores_busy, 2),
            fixed(t.and_then(|t| t.cores_busy), 2),
            fixed(b.others_busy, 2),
            fixed(t.and_then(|t| t.others_busy), 2),
        );
        let others = [b.others_busy, t.and_then(|t| t.others_busy)];
        others_max = others.into_iter().flatten().fold(others_max, f64::max);
    }
    if others_max > BUSY_MACHINE {
        text += &format!(
            "\n**Not comparable:** other processes kept up to {others_max:.2} cores busy while a side was \
             timed. Rerun on an idle machine.\n"
        );
    }
    text
}

/// `value` with `digits` decimals, or "n/a".
fn fixed(value: Option<f64>, digits: usize) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// rayon's default pool size: `RAYON_NUM_THREADS`, else one per core.
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS").ok().and_then(|n| n.parse().ok()).filter(|&n| n > 0).unwrap_or_else(cores)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, m)| m));
    model.map_or_else(|| "CPU model unknown".to_string(), |m| m.trim().to_string())
}

/// CPU seconds used so far by this process (all threads) and by the whole machine, from
/// Linux's `/proc/self/stat` and `/proc/stat`, whose clock ticks are USER_HZ = 100 on every
/// mainstream architecture. `None` where they cannot be read.
struct CpuSeconds(Option<(f64, f64)>);

impl CpuSeconds {
    fn now() -> Self {
        CpuSeconds(process_cpu_seconds().zip(machine_cpu_seconds()))
    }

    /// Cores kept busy by this process and by everything else since `self`, over `wall` s.
    fn busy_since(&self, wall: f64) -> (Option<f64>, Option<f64>) {
        match (self.0, CpuSeconds::now().0) {
            (Some((own_0, all_0)), Some((own_1, all_1))) => {
                let own = (own_1 - own_0) / wall;
                (Some(own), Some(((all_1 - all_0) / wall - own).max(0.0)))
            }
            _ => (None, None),
        }
    }
}

fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Busy time of all cores: user, nice, system, irq, softirq and steal (not idle, iowait).
fn machine_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).map_while(|t| t.parse().ok()).collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    Some(busy as f64 / 100.0)
}

/// The burn version in the workspace's Cargo.lock.
fn burn_version() -> String {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"burn\""
            && let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return version.trim_end_matches('"').to_string();
        }
    }
    "(version unknown)".to_string()
}
