//! Speed of the Phase 1 VAE in Burn (flex, CPU) against a PyTorch twin of the same
//! architecture and optimiser (`scripts/bench/vae_torch.py`), on the same machine in the same
//! run: one training step (forward, L1 + beta * KL, backward, AdamW) and one inference
//! forward (`z = mu`), on the same batch of random crops.
//!
//! ```sh
//! bash scripts/bench-setup.sh                        # PyTorch into .venv-bench/, once
//! cargo bench -p fracmap-trainer --bench vae_speed   # [-- --config PATH --batch N --steps N --warmup N]
//! ```
//! Prints a markdown table (median and min seconds per step, and burn / torch) and writes it
//! to `target/bench/vae_speed.md`. Relative paths are taken from the workspace root. The
//! Python is the path in `FRACMAP_BENCH_PYTHON` (default `.venv-bench/bin/python`); without
//! it only Burn's side is measured. Defaults: `configs/vae.toml`, its `train.batch_size`,
//! 10 timed steps after 2 warm-up steps.
//!
//! Threads: flex runs on rayon's global pool, one thread per core unless `RAYON_NUM_THREADS`
//! says otherwise; torch gets `torch.set_num_threads` of the same number. Each side also
//! reports the cores it kept busy (CPU time / wall time over its timed steps) and those other
//! processes did meanwhile: the report says when the machine was too busy to compare.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::prelude::*;
use fracmap_trainer::vae::config::VaeConfig;
use fracmap_trainer::vae::data::{batch_tensor, standard_normal};
use fracmap_trainer::vae::train::{optimizer, train_step};
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

const USAGE: &str =
    "usage: cargo bench -p fracmap-trainer --bench vae_speed [-- --config PATH --batch N --steps N --warmup N]";
const TORCH_SCRIPT: &str = "scripts/bench/vae_torch.py";
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
        let mut options = Options { config: root.join("configs/vae.toml"), batch: None, steps: 10, warmup: 2 };
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
    config: VaeConfig,
    batch: usize,
    steps: usize,
    warmup: usize,
    /// flex's rayon pool; torch gets as many threads.
    threads: usize,
}

impl Bench {
    fn new(root: &Path, options: Options) -> anyhow::Result<Self> {
        let config =
            VaeConfig::load(&options.config).with_context(|| format!("--config {}", options.config.display()))?;
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

/// What `vae_torch.py` prints.
#[derive(Debug, Deserialize)]
struct TorchReport {
    torch_version: String,
    threads: usize,
    params: usize,
    train_step: Timing,
    forward: Timing,
}

/// Burn's side: parameter count, training step, inference forward.
struct BurnReport {
    params: usize,
    train_step: Timing,
    forward: Timing,
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the trainer crate has a workspace")?;
    let bench = Bench::new(root, Options::parse(root)?)?;

    let [d, h, w] = bench.config.model.input_shape;
    eprintln!("vae_speed: Burn, batch {} x {d}x{h}x{w}, {} + {} steps", bench.batch, bench.warmup, bench.steps);
    let burn = bench_burn(&bench);

    let out_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("{}", out_dir.display()))?;
    let torch = bench_torch(root, &out_dir, &bench)?;

    let table = report(&bench, &burn, torch.as_ref());
    println!("\n{table}");
    let path = out_dir.join("vae_speed.md");
    std::fs::write(&path, &table).with_context(|| format!("{}", path.display()))?;
    eprintln!("vae_speed: written to {}", path.display());
    Ok(())
}

fn bench_burn(bench: &Bench) -> BurnReport {
    let (config, batch) = (&bench.config, bench.batch);
    let device = Device::flex();
    let train_device = device.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(config.train.seed);
    let crops = random_crops(batch, config.model.input_shape, &mut rng);
    let beta = config.loss.beta;

    let mut model = Some(config.model.init(&train_device, config.train.seed));
    let params = model.as_ref().map_or(0, |m| m.num_params());
    let mut adamw = optimizer(config);
    let train = time_steps(bench, || {
        // The noise is drawn outside the measured step, on the torch side too.
        let noise = standard_normal(batch * config.model.latent_dim, &mut rng);
        let started = Instant::now();
        let current = model.take().expect("the model is put back after every step");
        let (stepped, loss) = train_step(config, beta, current, &mut adamw, &crops, noise, &train_device);
        // Reading the loss waits for the step, as the training loop does.
        let _: f32 = loss.total.into_scalar();
        model = Some(stepped);
        started.elapsed().as_secs_f64()
    });

    let inference_model = model.expect("the model is put back after every step").valid();
    let x = batch_tensor(&crops, &device);
    let forward = time_steps(bench, || {
        let started = Instant::now();
        let reconstruction = inference_model.forward_inference(x.clone()).into_data();
        let seconds = started.elapsed().as_secs_f64();
        drop(reconstruction);
        seconds
    });
    BurnReport { params, train_step: train, forward }
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

/// Crops `[z, y, x]` of uniform values in `[0, 1)`, the range of windowed CT.
fn random_crops(n: usize, shape: [usize; 3], rng: &mut impl Rng) -> Vec<Array3<f32>> {
    let [d, h, w] = shape;
    (0..n).map(|_| Array3::from_shape_simple_fn((d, h, w), || rng.random::<f32>())).collect()
}

/// Runs the PyTorch twin on the resolved configuration; `None` (with a message) when its
/// Python is not installed.
fn bench_torch(root: &Path, out_dir: &Path, bench: &Bench) -> anyhow::Result<Option<TorchReport>> {
    let python = root.join(std::env::var_os("FRACMAP_BENCH_PYTHON").unwrap_or_else(|| DEFAULT_PYTHON.into()));
    if !python.exists() {
        eprintln!(
            "vae_speed: no PyTorch side: {} not found. Run `bash scripts/bench-setup.sh` (or point \
             FRACMAP_BENCH_PYTHON at a Python with torch); Burn's numbers follow alone.",
            python.display()
        );
        return Ok(None);
    }
    // The twin reads the configuration as Burn resolved it, defaults spelled out.
    let resolved = out_dir.join("vae_speed.config.toml");
    std::fs::write(&resolved, bench.config.to_toml()).with_context(|| format!("{}", resolved.display()))?;
    eprintln!("vae_speed: PyTorch ({}), same batch and steps", python.display());
    let output = Command::new(&python)
        .arg(root.join(TORCH_SCRIPT))
        .arg("--config")
        .arg(&resolved)
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
    let (m, batch, threads) = (&bench.config.model, bench.batch, bench.threads);
    let [d, h, w] = m.input_shape;
    let mut text = format!(
        "VAE speed, batch {batch} x 1 x {d}x{h}x{w}, base {}, {} levels, latent {}, {:?} norm; \
         {} timed steps after {} warm-up; config {}\n\n",
        m.base_channels, m.levels, m.latent_dim, m.norm, bench.steps, bench.warmup, bench.config_name,
    );
    text += &format!("- machine: {} cores, {}\n", cores(), cpu_model());
    text += &format!("- Burn {} (flex, rayon {threads} threads): {} parameters\n", burn_version(), burn.params);
    match torch {
        Some(t) => {
            let same = if t.params == burn.params { "the same" } else { "MISMATCH: the architectures differ" };
            text += &format!(
                "- PyTorch {} (CPU, {} threads): {} parameters ({same})\n\n",
                t.torch_version, t.threads, t.params
            );
        }
        None => text += "- PyTorch: not run (see `bash scripts/bench-setup.sh`)\n\n",
    }
    text += "| per step | Burn median s | Burn min s | PyTorch median s | PyTorch min s | burn / torch (median) \
             | cores busy, burn / torch | other processes' cores, burn / torch |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n";
    let rows = [
        ("training step (fwd + bwd + AdamW)", &burn.train_step, torch.map(|t| &t.train_step)),
        ("forward, z = mu", &burn.forward, torch.map(|t| &t.forward)),
    ];
    let mut others_max = 0.0f64;
    for (name, b, t) in rows {
        let ratio = t.map_or("n/a".into(), |t| format!("**{:.2}x**", b.median_s / t.median_s));
        text += &format!(
            "| {name} | {:.3} | {:.3} | {} | {} | {ratio} | {} / {} | {} / {} |\n",
            b.median_s,
            b.min_s,
            fixed(t.map(|t| t.median_s), 3),
            fixed(t.map(|t| t.min_s), 3),
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
