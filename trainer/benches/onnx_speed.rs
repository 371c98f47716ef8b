//! Forward pass of the VAE in Burn (flex, CPU) against the same model exported to ONNX
//! (`onnx::vae::vae_onnx`) and run by ONNX Runtime, on the same random batch in the same
//! process: Burn's `Vae::forward_inference` (read back to host) against `Session::run` (the
//! reconstruction extracted). The two outputs must agree within 1e-4 before anything is timed.
//!
//! ```sh
//! cargo bench -p fracmap-trainer --bench onnx_speed   # [-- --config PATH --steps N --warmup N]
//! ```
//! Prints a markdown table (median and min seconds per forward pass, and burn / ort) and
//! writes it to `target/bench/onnx_speed.md`. Defaults: `configs/vae.toml` and
//! `configs/vae_quick.toml`, batches 1 and 4, 10 timed runs after 2 warm-up runs. ONNX Runtime
//! is the library of `ORT_DYLIB_PATH` (set by `.cargo/config.toml`; relative paths are taken
//! from the workspace root) with one intra-op thread per core, as flex's rayon pool has.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::prelude::*;
use fracmap_trainer::onnx::vae::{INPUT, RECONSTRUCTION, vae_onnx};
use fracmap_trainer::vae::config::VaeConfig;
use ort::session::Session;
use ort::value::TensorRef;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const USAGE: &str = "usage: cargo bench -p fracmap-trainer --bench onnx_speed [-- --config PATH --steps N --warmup N]";
const CONFIGS: [&str; 2] = ["configs/vae.toml", "configs/vae_quick.toml"];
const BATCHES: [usize; 2] = [1, 4];
/// Largest |burn - ort| on any voxel for the two to count as the same computation.
const TOLERANCE: f32 = 1e-4;

struct Options {
    configs: Vec<PathBuf>,
    steps: usize,
    warmup: usize,
}

impl Options {
    fn parse(root: &Path) -> anyhow::Result<Self> {
        let mut options = Options { configs: Vec::new(), steps: 10, warmup: 2 };
        // cargo bench passes `--bench` to every harness-less bench.
        let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value\n{USAGE}"));
            let count = |text: String, least: usize| match text.parse::<usize>() {
                Ok(n) if n >= least => Ok(n),
                _ => Err(anyhow::anyhow!("{arg} {text}: expected a whole number >= {least}")),
            };
            match arg.as_str() {
                "--config" => options.configs.push(root.join(value()?)),
                "--steps" => options.steps = count(value()?, 1)?,
                "--warmup" => options.warmup = count(value()?, 0)?,
                _ => bail!("unknown argument {arg}\n{USAGE}"),
            }
        }
        if options.configs.is_empty() {
            options.configs = CONFIGS.iter().map(|c| root.join(c)).collect();
        }
        Ok(options)
    }
}

/// An ONNX Runtime session of `onnx` with `threads` intra-op threads.
fn session(environment: &ort::environment::Environment, threads: usize, onnx: &[u8]) -> anyhow::Result<Session> {
    let error = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let builder = Session::builder(environment).map_err(|e| error(&e))?;
    let mut builder = builder.with_intra_threads(threads).map_err(|e| error(&e))?;
    builder.commit_from_memory(onnx).map_err(|e| error(&e))
}

/// Median and min seconds of `steps` calls of `step`, after `warmup` untimed ones.
fn time_steps(options: &Options, mut step: impl FnMut()) -> (f64, f64) {
    for _ in 0..options.warmup {
        step();
    }
    let mut seconds: Vec<f64> = (0..options.steps)
        .map(|_| {
            let started = Instant::now();
            step();
            started.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    let n = seconds.len();
    let median = if n % 2 == 1 { seconds[n / 2] } else { (seconds[n / 2 - 1] + seconds[n / 2]) / 2.0 };
    (median, seconds[0])
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the trainer crate has a workspace")?;
    let options = Options::parse(root)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let library = root.join(std::env::var_os("ORT_DYLIB_PATH").context("ORT_DYLIB_PATH is not set (run via cargo)")?);
    let environment = ort::init_from(&library)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}; run `bash scripts/setup.sh`", library.display()))?
        .with_name("onnx_speed")
        .build()
        .map_err(|e| anyhow::anyhow!("ONNX Runtime environment: {e}"))?;

    let mut text = format!(
        "VAE forward pass (z = mu), Burn flex vs ONNX Runtime, CPU; {} timed runs after {} warm-up; ORT's graph also computes its second output, the error |x - reconstruction| (one elementwise pass)\n\n\
         - machine: {threads} cores; Burn: rayon {threads} threads; ONNX Runtime ({}): {threads} intra-op threads\n\n\
         | config | input | batch | Burn median s | Burn min s | ORT median s | ORT min s | burn / ort (median) \
         | max abs diff |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        options.steps,
        options.warmup,
        std::fs::canonicalize(&library)
            .unwrap_or(library.clone())
            .file_name()
            .map_or("?".into(), |n| n.to_string_lossy().into_owned()),
    );
    let device = Device::flex();
    for config_path in &options.configs {
        let name = config_path.strip_prefix(root).unwrap_or(config_path).display().to_string();
        let config = VaeConfig::load(config_path).with_context(|| format!("--config {}", config_path.display()))?;
        let vae = config.model.init(&device, 0);
        let onnx = vae_onnx(&vae).with_context(|| format!("exporting {name}"))?;
        let mut session =
            session(&environment, threads, &onnx).with_context(|| format!("ONNX Runtime session for {name}"))?;
        let [d, h, w] = config.model.input_shape;
        for batch in BATCHES {
            eprintln!("onnx_speed: {name}, batch {batch} x 1 x {d}x{h}x{w}");
            let mut rng = ChaCha8Rng::seed_from_u64(batch as u64);
            let crops: Vec<f32> = (0..batch * d * h * w).map(|_| rng.random::<f32>()).collect();
            let x = Tensor::<1>::from_floats(crops.as_slice(), &device).reshape([batch, 1, d, h, w]);

            let burn_run = || vae.forward_inference(x.clone()).into_data().try_to_vec::<f32>().unwrap();
            let mut ort_run = || {
                let input = TensorRef::from_array_view(([batch, 1, d, h, w], crops.as_slice())).unwrap();
                let outputs = session.run(ort::inputs![INPUT => input]).unwrap();
                outputs[RECONSTRUCTION].try_extract_tensor::<f32>().unwrap().1.to_vec()
            };
            let (burn_out, ort_out) = (burn_run(), ort_run());
            anyhow::ensure!(burn_out.len() == ort_out.len(), "{name}: output sizes differ");
            let diff = burn_out.iter().zip(&ort_out).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            anyhow::ensure!(diff < TOLERANCE, "{name}, batch {batch}: max |burn - ort| = {diff} >= {TOLERANCE}");

            let (burn_median, burn_min) = time_steps(&options, || drop(burn_run()));
            let (ort_median, ort_min) = time_steps(&options, || drop(ort_run()));
            text += &format!(
                "| {name} | {d}x{h}x{w} | {batch} | {burn_median:.4} | {burn_min:.4} | {ort_median:.4} | {ort_min:.4} \
                 | **{:.2}x** | {diff:.1e} |\n",
                burn_median / ort_median
            );
        }
    }

    println!("\n{text}");
    let out_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("{}", out_dir.display()))?;
    let path = out_dir.join("onnx_speed.md");
    std::fs::write(&path, &text).with_context(|| format!("{}", path.display()))?;
    eprintln!("onnx_speed: written to {}", path.display());
    Ok(())
}
