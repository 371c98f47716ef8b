//! What serving costs: one Segment request over real gRPC on loopback against the same models
//! run in this process by [`pipeline::segment`], on a phantom spine (T4..L5) and on the same
//! CT in the middle of a 512 x 512 x 600 int16 volume of air (a clinical scan's 300 MB).
//!
//! ```sh
//! cargo bench -p fracmap-server --bench segment_overhead   # [-- --models DIR | --tiny] [--runs N --warmup N]
//! ```
//! Prints markdown tables and writes them to `target/bench/segment_overhead.md`:
//!
//! - per input: `segment()` in process against the client's wall time from sending the
//!   header to the last answer chunk (int16 CT in 4 MiB chunks; uint8 probability and mask
//!   back in 1 MiB chunks), median and min seconds, their ratio and the difference;
//! - per stage: the medians of `segment()`'s own timings, of the server's summary timings
//!   and of the client's receipt of the answer (from its summary to its last chunk);
//! - batching: `segment()` with one crop per model run against eight.
//!
//! Models: the repository `models/` (`scripts/default-models.sh`), `--models DIR` (relative
//! to the workspace root), or `--tiny`, the untrained pair of the server's tests. The server
//! runs in this process with the settings it starts with (one worker, `max_batch` 8, one
//! intra-op thread per core); the client shares the machine with it. ONNX Runtime is the
//! library of `ORT_DYLIB_PATH` (set by `.cargo/config.toml`; relative paths are taken from
//! the workspace root). Defaults: 5 timed runs after 1 warm-up run; the compared sides run in
//! turn, so that other processes' load falls on both, and the report flags a busy machine.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fracmap_core::{Box3, Volume};
use fracmap_server::models::{LoadedModel, load_models};
use fracmap_server::pipeline::{ModelPair, SegmentOptions, StageTimings, Vertebra, segment};
use fracmap_server::proto::fracmap_client::FracmapClient;
use fracmap_server::proto::segment_request::Part;
use fracmap_server::proto::segment_response::Part as ResponsePart;
use fracmap_server::proto::{
    self, ListModelsRequest, SegmentHeader, SegmentRequest, VolumeDescription, VolumeEncoding, VolumeGrid, VoxelBox,
    VoxelType,
};
use fracmap_server::repository::ModelRepository;
use fracmap_server::{Device, OnnxRuntime, ServerConfig, SessionSettings, serve};
use fracmap_trainer::synth::{PhantomParams, generate_case};
use ndarray::{Array3, s};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

#[path = "../tests/common/tiny_pair.rs"]
mod tiny_pair;

const USAGE: &str =
    "usage: cargo bench -p fracmap-server --bench segment_overhead [-- --models DIR | --tiny] [--runs N --warmup N]";
const DEFAULT_MODELS: &str = "models";
const PHANTOM_SEED: u64 = 7;
/// A clinical CT's grid, `[z, y, x]`.
const CLINICAL_SHAPE: [usize; 3] = [600, 512, 512];
/// Hounsfield units of air, around the phantom in the clinical-size volume.
const AIR_HU: f32 = -1000.0;
/// The largest request message a server accepts by default (its `max_chunk_bytes`).
const UPLOAD_CHUNK_BYTES: usize = 4 << 20;
/// The server's default answer chunk, asked for explicitly.
const ANSWER_CHUNK_BYTES: u32 = 1 << 20;
/// The crops per model run the server uses, and one, to see whether batching pays.
const BATCHES: [usize; 2] = [1, 8];
/// Cores used by other processes during a timing above which the report says the sides do
/// not compare (on 2 cores, 0.2 is a tenth of the machine).
const BUSY_MACHINE: f64 = 0.2;

/// The columns of the stage table: the server's summary timings, then the client's receipt
/// of the answer.
const STAGES: [&str; 10] =
    ["receive", "decode", "queue", "crop", "vae", "unet", "paste", "mask", "server total", "answer to client"];

struct Options {
    /// The model repository; `None` with `tiny`.
    models: Option<PathBuf>,
    tiny: bool,
    runs: usize,
    warmup: usize,
}

impl Options {
    fn parse(root: &Path) -> anyhow::Result<Self> {
        let mut options = Options { models: None, tiny: false, runs: 5, warmup: 1 };
        // cargo bench passes `--bench` to every harness-less bench.
        let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value\n{USAGE}"));
            let count = |text: String, least: usize| match text.parse::<usize>() {
                Ok(n) if n >= least => Ok(n),
                _ => Err(anyhow::anyhow!("{arg} {text}: expected a whole number >= {least}")),
            };
            match arg.as_str() {
                "--models" => options.models = Some(root.join(value()?)),
                "--tiny" => options.tiny = true,
                "--runs" => options.runs = count(value()?, 1)?,
                "--warmup" => options.warmup = count(value()?, 0)?,
                _ => bail!("unknown argument {arg}\n{USAGE}"),
            }
        }
        if options.tiny && options.models.is_some() {
            bail!("--models and --tiny exclude each other\n{USAGE}");
        }
        if !options.tiny && options.models.is_none() {
            let models = root.join(DEFAULT_MODELS);
            let default_pair = ["vae", "unet_box"].iter().all(|name| models.join(name).join("1").is_dir());
            if !default_pair {
                bail!(
                    "the default models are missing: {} has no vae/1 and unet_box/1. Train them with \
                     `bash scripts/default-models.sh` (about 15 minutes), or pass --models DIR or --tiny",
                    models.display()
                );
            }
            options.models = Some(models);
        }
        Ok(options)
    }
}

/// One input: its CT as the server decodes it, the same voxels as the int16 bytes sent, and
/// the vertebrae to examine.
struct Case {
    name: &'static str,
    ct: Volume,
    int16: Arc<[u8]>,
    vertebrae: Vec<Vertebra>,
}

impl Case {
    /// `hu` rounded to int16, the voxel type a client sends, so that both sides see the same CT.
    fn new(name: &'static str, hu: Array3<f32>, spacing: [f64; 3], vertebrae: Vec<Vertebra>) -> anyhow::Result<Self> {
        let hu = hu.mapv(|v| f32::from(v.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16));
        let ct = Volume::with_spacing(hu, spacing).with_context(|| format!("{name}: CT"))?;
        let int16 = ct.as_slice().iter().flat_map(|&v| (v as i16).to_le_bytes()).collect();
        Ok(Case { name, ct, int16, vertebrae })
    }

    /// The request's header: raw int16 voxels, the vertebrae's body boxes, uint8 answers in
    /// 1 MiB chunks, everything else the server's default.
    fn header(&self, model: &str) -> SegmentHeader {
        let voxel_box =
            |b: &Box3| VoxelBox { min: b.min().map(|n| n as u64).to_vec(), max: b.max().map(|n| n as u64).to_vec() };
        SegmentHeader {
            ct: Some(VolumeDescription {
                encoding: VolumeEncoding::Raw.into(),
                grid: Some(VolumeGrid {
                    shape: self.ct.shape().map(|n| n as u64).to_vec(),
                    spacing_mm: self.ct.spacing().to_vec(),
                    affine: self.ct.affine().iter().flatten().copied().collect(),
                }),
                voxel_type: VoxelType::Int16.into(),
                total_bytes: self.int16.len() as u64,
            }),
            model: model.to_string(),
            vertebrae: self
                .vertebrae
                .iter()
                .map(|v| proto::Vertebra {
                    label: v.label.clone().unwrap_or_default(),
                    body_box: Some(voxel_box(&v.body_box)),
                })
                .collect(),
            probability_encoding: proto::ProbabilityEncoding::Uint8.into(),
            response_chunk_bytes: ANSWER_CHUNK_BYTES,
            ..Default::default()
        }
    }
}

/// The phantom spine of [`PHANTOM_SEED`], and the same CT in the middle of a clinical grid
/// of air with its boxes shifted.
fn cases() -> anyhow::Result<[Case; 2]> {
    let phantom = generate_case(&PhantomParams::default(), PHANTOM_SEED).context("phantom case")?;
    let spacing = phantom.ct.spacing();
    let shape = phantom.ct.shape();
    let vertebrae = |offset: [usize; 3]| -> anyhow::Result<Vec<Vertebra>> {
        phantom
            .vertebrae
            .iter()
            .map(|v| {
                let shifted = |corner: [usize; 3]| std::array::from_fn(|a| corner[a] + offset[a]);
                let body_box = Box3::new(shifted(v.body_box.min()), shifted(v.body_box.max()))?;
                Ok(Vertebra { label: Some(v.level.to_string()), body_box })
            })
            .collect()
    };
    if (0..3).any(|a| shape[a] > CLINICAL_SHAPE[a]) {
        bail!("phantom seed {PHANTOM_SEED}: CT {shape:?} does not fit in {CLINICAL_SHAPE:?}");
    }
    let offset: [usize; 3] = std::array::from_fn(|a| (CLINICAL_SHAPE[a] - shape[a]) / 2);
    let mut clinical = Array3::from_elem(CLINICAL_SHAPE, AIR_HU);
    clinical
        .slice_mut(s![
            offset[0]..offset[0] + shape[0],
            offset[1]..offset[1] + shape[1],
            offset[2]..offset[2] + shape[2]
        ])
        .assign(phantom.ct.data());
    Ok([
        Case::new("(1) phantom spine", phantom.ct.data().clone(), spacing, vertebrae([0; 3])?)?,
        Case::new("(2) same, in 512 x 512 x 600 air", clinical, spacing, vertebrae(offset)?)?,
    ])
}

/// One timed call: its wall seconds, what it reports per stage (`None`: not this side's) and
/// the draft mask's voxels, which both sides must agree on.
struct Sample {
    wall: f64,
    stages: [Option<f64>; STAGES.len()],
    mask_voxels: u64,
}

/// The timed calls of one kind.
struct Timing {
    median: f64,
    min: f64,
    /// The median of each stage.
    stages: [Option<f64>; STAGES.len()],
    mask_voxels: Vec<u64>,
    /// Cores other processes kept busy meanwhile (`None`: not measurable here).
    others_busy: Option<f64>,
}

/// Runs each of `calls` `warmup` times untimed, then `runs` rounds of each in turn, so that
/// work of other processes (a shared machine) falls on the compared sides alike.
fn time_in_turn<const N: usize>(
    options: &Options,
    mut calls: [&mut dyn FnMut() -> anyhow::Result<Sample>; N],
) -> anyhow::Result<[Timing; N]> {
    for call in calls.iter_mut() {
        for _ in 0..options.warmup {
            call()?;
        }
    }
    let mut samples: [Vec<Sample>; N] = std::array::from_fn(|_| Vec::new());
    // Other processes' CPU seconds and the wall seconds they were counted over, per call.
    let mut others: [Option<f64>; N] = [Some(0.0); N];
    let mut counted = [0.0; N];
    for _ in 0..options.runs {
        for (i, call) in calls.iter_mut().enumerate() {
            let before = CpuSeconds::now();
            let started = Instant::now();
            samples[i].push(call()?);
            counted[i] += started.elapsed().as_secs_f64();
            others[i] = others[i].zip(before.others_since()).map(|(sum, seconds)| sum + seconds);
        }
    }
    Ok(std::array::from_fn(|i| {
        let walls: Vec<f64> = samples[i].iter().map(|s| s.wall).collect();
        let stages = std::array::from_fn(|stage| {
            samples[i].iter().map(|s| s.stages[stage]).collect::<Option<Vec<f64>>>().map(median)
        });
        Timing {
            median: median(walls.clone()),
            min: walls.iter().copied().fold(f64::INFINITY, f64::min),
            stages,
            mask_voxels: samples[i].iter().map(|s| s.mask_voxels).collect(),
            others_busy: others[i].map(|seconds| seconds / counted[i]),
        }
    }))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// One `segment()` in this process.
fn in_process(case: &Case, pair: &ModelPair<'_>, options: &SegmentOptions) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let segmentation = segment(&case.ct, &case.vertebrae, &[], pair, options)?;
    let wall = started.elapsed().as_secs_f64();
    let StageTimings { crop, vae, unet, paste, mask } = segmentation.timings;
    let pipeline = [("crop", crop), ("vae", vae), ("unet", unet), ("paste", paste), ("mask", mask)];
    let stages = STAGES.map(|name| pipeline.iter().find(|(n, _)| *n == name).map(|(_, t)| t.as_secs_f64()));
    Ok(Sample { wall, stages, mask_voxels: segmentation.mask_voxels as u64 })
}

/// One Segment call: the header and the CT in chunks (copied as a client reading a file
/// would), then the summary and every answer chunk, kept.
async fn over_grpc(client: &mut FracmapClient<Channel>, case: &Case, model: &str) -> anyhow::Result<Sample> {
    let int16 = Arc::clone(&case.int16);
    let chunks = (0..int16.len()).step_by(UPLOAD_CHUNK_BYTES).map(move |start| {
        let end = (start + UPLOAD_CHUNK_BYTES).min(int16.len());
        SegmentRequest { part: Some(Part::CtChunk(int16[start..end].to_vec())) }
    });
    let header = SegmentRequest { part: Some(Part::Header(case.header(model))) };
    let requests = tokio_stream::iter(std::iter::once(header).chain(chunks));

    let started = Instant::now();
    let mut answer = client.segment(requests).await?.into_inner();
    let Some(ResponsePart::Summary(summary)) = answer.message().await?.and_then(|m| m.part) else {
        bail!("{}: the answer does not begin with a summary", case.name);
    };
    let summary_received = Instant::now();
    let mut volumes: BTreeMap<i32, Vec<u8>> =
        summary.outputs.iter().map(|o| (o.kind, Vec::with_capacity(o.total_bytes as usize))).collect();
    while let Some(message) = answer.message().await? {
        let Some(ResponsePart::Chunk(chunk)) = message.part else { bail!("{}: a second summary", case.name) };
        volumes.entry(chunk.kind).or_default().extend_from_slice(&chunk.data);
    }
    let wall = started.elapsed().as_secs_f64();
    let answer_seconds = summary_received.elapsed().as_secs_f64();

    for output in &summary.outputs {
        let received = volumes.get(&output.kind).map_or(0, Vec::len) as u64;
        if received != output.total_bytes {
            bail!("{}: output {} came with {received} of {} bytes", case.name, output.kind, output.total_bytes);
        }
    }
    let t = summary.timings.context("the summary has no timings")?;
    let milliseconds =
        [t.receive_ms, t.decode_ms, t.queue_ms, t.crop_ms, t.vae_ms, t.unet_ms, t.paste_ms, t.mask_ms, t.total_ms];
    // In the order of STAGES: the server's, then the client's.
    let seconds: Vec<f64> = milliseconds.iter().map(|ms| ms / 1000.0).chain([answer_seconds]).collect();
    let stages = std::array::from_fn(|i| Some(seconds[i]));
    Ok(Sample { wall, stages, mask_voxels: summary.mask_voxels })
}

/// The VAE and the U-Net the server segments with by default: the first U-Net by name (a
/// manifest with `error_input`) whose VAE is loaded.
fn vae_and_unet(models: &[LoadedModel]) -> anyhow::Result<(&LoadedModel, &LoadedModel)> {
    for unet in models.iter().filter(|m| m.manifest.error_input.is_some()) {
        if let Some(vae) = models.iter().find(|vae| unet.manifest.takes_errors_from(&vae.manifest)) {
            return Ok((vae, unet));
        }
    }
    bail!("the repository has no U-Net with the VAE whose error maps it reads")
}

/// The median of stage `name` in `timing`.
fn stage(timing: &Timing, name: &str) -> Option<f64> {
    STAGES.iter().position(|s| *s == name).and_then(|i| timing.stages[i])
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the server crate has a workspace")?;
    let options = Options::parse(root)?;
    let threads = NonZeroUsize::new(cores()).expect("at least one core");
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_average = load_average.split_whitespace().take(3).collect::<Vec<_>>().join(" ");

    let library = root.join(std::env::var_os("ORT_DYLIB_PATH").context("ORT_DYLIB_PATH is not set (run via cargo)")?);
    let runtime = OnnxRuntime::init(&library).with_context(|| "run `bash scripts/setup.sh`")?;
    let tiny_repository = tempfile::tempdir()?;
    let repository = match &options.models {
        Some(models) => models.clone(),
        None => {
            tiny_pair::write_repository(tiny_repository.path(), |_, _| {});
            tiny_repository.path().to_path_buf()
        }
    };
    let scanned =
        ModelRepository::scan(&repository).with_context(|| format!("model repository {}", repository.display()))?;
    let settings = SessionSettings { device: Device::Cpu, intra_threads: threads };
    let models = load_models(runtime, &scanned, &settings, NonZeroUsize::MIN)?;
    let (vae, unet) = vae_and_unet(&models)?;
    let pair = ModelPair::new(vae, unet)?;

    eprintln!("segment_overhead: drawing phantom case {PHANTOM_SEED} and its clinical-size copy");
    let cases = cases()?;

    eprintln!("segment_overhead: starting the server on loopback");
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.get()).enable_all().build()?;
    let config = ServerConfig { device: Device::Cpu, models: Some(repository.clone()), ..ServerConfig::new(library) };
    let service = config.service.clone();
    let listener = tokio.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let address = listener.local_addr()?;
    let (stop, stop_requested) = tokio::sync::oneshot::channel::<()>();
    let server = tokio.spawn(serve(config, listener, async {
        let _ = stop_requested.await;
    }));
    let mut client = tokio.block_on(connect(address))?;
    let listed = tokio.block_on(client.list_models(ListModelsRequest {}))?.into_inner().models;
    let model = listed.iter().find(|m| m.is_default).context("the server offers no segmentation model")?.name.clone();
    if model != unet.manifest.name {
        bail!("the server segments with {model}, this process with {}", unet.manifest.name);
    }

    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for case in &cases {
        eprintln!("segment_overhead: {}, in process and over gRPC in turn", case.name);
        let [in_process_timing, grpc_timing] = time_in_turn(
            &options,
            [&mut || in_process(case, &pair, &SegmentOptions::default()), &mut || {
                tokio.block_on(over_grpc(&mut client, case, &model))
            }],
        )?;
        local.push(in_process_timing);
        remote.push(grpc_timing);
    }
    eprintln!("segment_overhead: {}, in process, max_batch {BATCHES:?} in turn", cases[0].name);
    let with_batch =
        |batch| SegmentOptions { max_batch: NonZeroUsize::new(batch).expect("not 0"), ..Default::default() };
    let [few, many] = BATCHES.map(with_batch);
    let batching: Vec<(usize, Timing)> = BATCHES
        .into_iter()
        .zip(time_in_turn(
            &options,
            [&mut || in_process(&cases[0], &pair, &few), &mut || in_process(&cases[0], &pair, &many)],
        )?)
        .collect();
    drop(client);
    let _ = stop.send(());
    tokio
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), server).await })??
        .context("the server failed")?;

    for ((case, local), remote) in cases.iter().zip(&local).zip(&remote) {
        if remote.mask_voxels.iter().chain(&local.mask_voxels).any(|&n| n != local.mask_voxels[0]) {
            bail!(
                "{}: draft masks differ: in process {:?} voxels, over gRPC {:?}",
                case.name,
                local.mask_voxels,
                remote.mask_voxels
            );
        }
    }

    let mut text = format!(
        "Segment over gRPC on loopback against `pipeline::segment` in process, CPU; models {} ({} + {}, patch {:?}); \
         {} timed runs after {} warm-up\n\n",
        if options.tiny {
            "the tiny untrained pair of the tests".to_string()
        } else {
            repository.strip_prefix(root).unwrap_or(&repository).display().to_string()
        },
        vae.manifest.name,
        unet.manifest.name,
        pair.preprocessing().patch,
        options.runs,
        options.warmup,
    );
    text += &format!(
        "- machine: {} cores, {}, {}; load average at start {load_average}\n",
        threads,
        cpu_model(),
        memory(),
    );
    text += &format!(
        "- ONNX Runtime {}: one session per model, {threads} intra-op threads; server: {} worker, queue {}, \
         max_batch {}; both sides draw the mask at the default threshold\n",
        runtime.version(),
        service.workers,
        service.queue,
        service.max_batch,
    );
    text += &format!(
        "- client in the same process, on loopback TCP: int16 CT in {} MiB chunks, uint8 probability and mask \
         back in {} MiB chunks, all kept; wall time from sending the header to the last chunk\n\n",
        UPLOAD_CHUNK_BYTES >> 20,
        ANSWER_CHUNK_BYTES >> 20,
    );
    text += "| input | CT [z, y, x] | int16 MB | vertebrae | in-process median s | in-process min s | e2e median s \
             | e2e min s | e2e / in-process (median) | overhead s (median) | other processes' cores, in-process / e2e |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for ((case, local), remote) in cases.iter().zip(&local).zip(&remote) {
        text += &format!(
            "| {} | {:?} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.3} | **{:.2}x** | {:.3} | {} / {} |\n",
            case.name,
            case.ct.shape(),
            case.int16.len() as f64 / 1e6,
            case.vertebrae.len(),
            local.median,
            local.min,
            remote.median,
            remote.min,
            remote.median / local.median,
            remote.median - local.median,
            fixed(local.others_busy, 2),
            fixed(remote.others_busy, 2),
        );
    }

    text += &format!(
        "\nStages, median s: `segment()`'s own timings in process; over gRPC the server's summary (receive: header \
         to last CT byte; server total: header to summary) and the client's receipt of the answer (summary to last \
         chunk)\n\n| input | side | {} | wall |\n|---|---|{}---:|\n",
        STAGES.join(" | "),
        "---:|".repeat(STAGES.len()),
    );
    for ((case, local), remote) in cases.iter().zip(&local).zip(&remote) {
        for (side, timing) in [("in-process", local), ("e2e", remote)] {
            let stages: Vec<String> = timing.stages.iter().map(|&t| fixed(t, 3)).collect();
            text += &format!("| {} | {side} | {} | {:.3} |\n", case.name, stages.join(" | "), timing.median);
        }
    }

    let crops = cases[0].vertebrae.len();
    text += &format!(
        "\nBatching crops: `segment()` in process on {}, {crops} crops, by crops per model run\n\n\
         | max_batch | model runs each | segment median s | segment min s | vae median s | unet median s \
         | model ms per crop (median) | other processes' cores |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        cases[0].name,
    );
    for (batch, timing) in &batching {
        let (vae_s, unet_s) = (stage(timing, "vae").unwrap_or(0.0), stage(timing, "unet").unwrap_or(0.0));
        text += &format!(
            "| {batch} | {} | {:.3} | {:.3} | {vae_s:.3} | {unet_s:.3} | {:.1} | {} |\n",
            crops.div_ceil(*batch),
            timing.median,
            timing.min,
            (vae_s + unet_s) * 1000.0 / crops as f64,
            fixed(timing.others_busy, 2),
        );
    }

    let others_max = local
        .iter()
        .chain(&remote)
        .chain(batching.iter().map(|(_, t)| t))
        .filter_map(|t| t.others_busy)
        .fold(0.0, f64::max);
    if others_max > BUSY_MACHINE {
        text += &format!(
            "\n**Not comparable:** other processes kept up to {others_max:.2} cores busy during a timing. Rerun on \
             an idle machine.\n"
        );
    }

    println!("\n{text}");
    let out_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("{}", out_dir.display()))?;
    let path = out_dir.join("segment_overhead.md");
    std::fs::write(&path, &text).with_context(|| format!("{}", path.display()))?;
    eprintln!("segment_overhead: written to {}", path.display());
    Ok(())
}

/// A client of the server at `address`, once it listens; answers of 1 MiB chunks fit its
/// message limit.
async fn connect(address: std::net::SocketAddr) -> anyhow::Result<FracmapClient<Channel>> {
    // The windows `fracmap` uses: a client of this API as we ship it.
    let endpoint = Endpoint::from_shared(format!("http://{address}"))?
        .initial_stream_window_size(fracmap_server::proto::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(fracmap_server::proto::HTTP2_CONNECTION_WINDOW);
    for _ in 0..500 {
        if let Ok(channel) = endpoint.connect().await {
            return Ok(FracmapClient::new(channel).max_decoding_message_size(8 << 20));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the server at {address} did not answer within 10 s")
}

/// `value` with `digits` decimals, or "n/a".
fn fixed(value: Option<f64>, digits: usize) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, m)| m));
    model.map_or_else(|| "CPU model unknown".to_string(), |m| m.trim().to_string())
}

/// Total memory from `/proc/meminfo`, in GiB.
fn memory() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok());
    kib.map_or_else(|| "memory unknown".to_string(), |kib| format!("{:.1} GiB", kib / (1 << 20) as f64))
}

/// CPU seconds used so far by this process (all threads) and by the whole machine, from
/// Linux's `/proc/self/stat` and `/proc/stat`, whose clock ticks are USER_HZ = 100 on every
/// mainstream architecture. `None` where they cannot be read.
struct CpuSeconds(Option<(f64, f64)>);

impl CpuSeconds {
    fn now() -> Self {
        CpuSeconds(process_cpu_seconds().zip(machine_cpu_seconds()))
    }

    /// CPU seconds that other processes used since `self`.
    fn others_since(&self) -> Option<f64> {
        let ((own_0, all_0), (own_1, all_1)) = self.0.zip(CpuSeconds::now().0)?;
        Some(((all_1 - all_0) - (own_1 - own_0)).max(0.0))
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
