//! What the server's benches share (each includes it with `mod common;`): the command line of
//! models and runs, the models loaded in this process, the server started in this process
//! with a client on loopback, one segmentation timed in process ([`in_process`]) or as a
//! Segment call over gRPC ([`LocalServer::segment`]), compared calls timed in turn
//! ([`time_in_turn`]), and the facts of the machine, other processes' load included.

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
use fracmap_server::service::ServiceSettings;
use fracmap_server::{Device, OnnxRuntime, ServerConfig, ServerError, SessionSettings, serve};
use ndarray::Array3;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

#[path = "../../tests/common/tiny_pair.rs"]
mod tiny_pair;

const DEFAULT_MODELS: &str = "models";
/// The phantom case the benches draw their CTs from.
pub const PHANTOM_SEED: u64 = 7;
/// The largest request message a server accepts by default (its `max_chunk_bytes`).
pub const UPLOAD_CHUNK_BYTES: usize = 4 << 20;
/// The server's default answer chunk, asked for explicitly.
pub const ANSWER_CHUNK_BYTES: u32 = 1 << 20;
/// Cores used by other processes during a timing above which the report says the sides do
/// not compare (on 2 cores, 0.2 is a tenth of the machine).
pub const BUSY_MACHINE: f64 = 0.2;

/// The columns of the stage tables: the server's summary timings, then the client's receipt
/// of the answer; `segment()` in process fills crop to mask.
pub const STAGES: [&str; 10] =
    ["receive", "decode", "queue", "crop", "vae", "unet", "paste", "mask", "server total", "answer to client"];

/// The flags every bench takes: `--models DIR | --tiny`, `--runs N`, `--warmup N`.
pub struct Options {
    /// The model repository; `None` with `tiny`.
    pub models: Option<PathBuf>,
    pub tiny: bool,
    pub runs: usize,
    pub warmup: usize,
}

impl Options {
    /// Parses the command line; `own` takes the bench's own flags, given the flag and a way to
    /// take its value, and answers whether it knew the flag.
    pub fn parse(
        root: &Path,
        usage: &str,
        mut own: impl FnMut(&str, &mut dyn FnMut() -> anyhow::Result<String>) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Self> {
        let mut options = Options { models: None, tiny: false, runs: 5, warmup: 1 };
        // cargo bench passes `--bench` to every harness-less bench.
        let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value\n{usage}"));
            let count = |text: String, least: usize| match text.parse::<usize>() {
                Ok(n) if n >= least => Ok(n),
                _ => Err(anyhow::anyhow!("{arg} {text}: expected a whole number >= {least}")),
            };
            match arg.as_str() {
                "--models" => options.models = Some(root.join(value()?)),
                "--tiny" => options.tiny = true,
                "--runs" => options.runs = count(value()?, 1)?,
                "--warmup" => options.warmup = count(value()?, 0)?,
                _ => {
                    if !own(&arg, &mut value)? {
                        bail!("unknown argument {arg}\n{usage}");
                    }
                }
            }
        }
        if options.tiny && options.models.is_some() {
            bail!("--models and --tiny exclude each other\n{usage}");
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

/// The workspace root, which relative paths of the command line and `ORT_DYLIB_PATH` start from.
pub fn workspace_root() -> anyhow::Result<&'static Path> {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the server crate has a workspace")
}

/// The models of the command line, loaded in this process as the server loads them: one
/// session per model, one intra-op thread per core.
pub struct Models {
    pub runtime: &'static OnnxRuntime,
    /// The ONNX Runtime library, `ORT_DYLIB_PATH`.
    pub library: PathBuf,
    pub repository: PathBuf,
    pub loaded: Vec<LoadedModel>,
    pub threads: NonZeroUsize,
    /// How the report names the repository.
    pub description: String,
    /// Holds the tiny pair's repository, with `--tiny`, until the bench ends.
    _tiny_repository: tempfile::TempDir,
}

impl Models {
    pub fn load(root: &Path, options: &Options, threads: NonZeroUsize) -> anyhow::Result<Self> {
        let library =
            root.join(std::env::var_os("ORT_DYLIB_PATH").context("ORT_DYLIB_PATH is not set (run via cargo)")?);
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
        let loaded = load_models(runtime, &scanned, &settings, NonZeroUsize::MIN)?;
        let description = if options.tiny {
            "the tiny untrained pair of the tests".to_string()
        } else {
            repository.strip_prefix(root).unwrap_or(&repository).display().to_string()
        };
        Ok(Models { runtime, library, repository, loaded, threads, description, _tiny_repository: tiny_repository })
    }

    /// The VAE and the U-Net the server segments with by default: the first U-Net by name (a
    /// manifest with `error_input`) whose VAE is loaded.
    pub fn vae_and_unet(&self) -> anyhow::Result<(&LoadedModel, &LoadedModel)> {
        for unet in self.loaded.iter().filter(|m| m.manifest.error_input.is_some()) {
            if let Some(vae) = self.loaded.iter().find(|vae| unet.manifest.takes_errors_from(&vae.manifest)) {
                return Ok((vae, unet));
            }
        }
        bail!("the repository has no U-Net with the VAE whose error maps it reads")
    }
}

/// One input: its CT as the server decodes it, the same voxels as the int16 bytes sent, and
/// the vertebrae to examine.
pub struct Case {
    pub name: String,
    pub ct: Volume,
    pub int16: Arc<[u8]>,
    pub vertebrae: Vec<Vertebra>,
}

impl Case {
    /// `hu` rounded to int16, the voxel type a client sends, so that both sides see the same CT.
    pub fn new(
        name: impl Into<String>,
        hu: Array3<f32>,
        spacing: [f64; 3],
        vertebrae: Vec<Vertebra>,
    ) -> anyhow::Result<Self> {
        let name = name.into();
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

/// One timed call: its wall seconds, what it reports per stage (`None`: not this side's) and
/// the draft mask's voxels, which both sides must agree on.
pub struct Sample {
    wall: f64,
    stages: [Option<f64>; STAGES.len()],
    mask_voxels: u64,
}

/// The timed calls of one kind.
pub struct Timing {
    pub median: f64,
    pub min: f64,
    /// The median of each stage.
    pub stages: [Option<f64>; STAGES.len()],
    pub mask_voxels: Vec<u64>,
    /// Cores other processes kept busy meanwhile (`None`: not measurable here).
    pub others_busy: Option<f64>,
}

impl Timing {
    /// The median of stage `name`.
    pub fn stage(&self, name: &str) -> Option<f64> {
        STAGES.iter().position(|s| *s == name).and_then(|i| self.stages[i])
    }
}

/// Runs each of `calls` `warmup` times untimed, then `runs` rounds of each in turn, so that
/// work of other processes (a shared machine) falls on the compared sides alike.
pub fn time_in_turn<const N: usize>(
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

/// Fails unless every call of both sides drew a draft mask of as many voxels.
pub fn check_masks_agree(case: &Case, in_process: &Timing, e2e: &Timing) -> anyhow::Result<()> {
    let first = in_process.mask_voxels[0];
    if e2e.mask_voxels.iter().chain(&in_process.mask_voxels).any(|&n| n != first) {
        bail!(
            "{}: draft masks differ: in process {:?} voxels, over gRPC {:?}",
            case.name,
            in_process.mask_voxels,
            e2e.mask_voxels
        );
    }
    Ok(())
}

/// One `segment()` in this process.
pub fn in_process(case: &Case, pair: &ModelPair<'_>, options: &SegmentOptions) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let segmentation = segment(&case.ct, &case.vertebrae, &[], pair, options)?;
    let wall = started.elapsed().as_secs_f64();
    let StageTimings { crop, vae, unet, paste, mask } = segmentation.timings;
    let pipeline = [("crop", crop), ("vae", vae), ("unet", unet), ("paste", paste), ("mask", mask)];
    let stages = STAGES.map(|name| pipeline.iter().find(|(n, _)| *n == name).map(|(_, t)| t.as_secs_f64()));
    Ok(Sample { wall, stages, mask_voxels: segmentation.mask_voxels as u64 })
}

/// The server, started in this process on loopback with the settings it starts with (CPU,
/// one worker, `max_batch` 8), and a client of it.
pub struct LocalServer {
    tokio: tokio::runtime::Runtime,
    client: FracmapClient<Channel>,
    /// The model the server segments with by default, which the requests name.
    model: String,
    pub service: ServiceSettings,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), ServerError>>,
}

impl LocalServer {
    /// Starts the server on `models`' repository and checks that its default model is `unet`,
    /// the U-Net this process segments with.
    pub fn start(models: &Models, unet: &LoadedModel) -> anyhow::Result<Self> {
        let tokio =
            tokio::runtime::Builder::new_multi_thread().worker_threads(models.threads.get()).enable_all().build()?;
        let config = ServerConfig {
            device: Device::Cpu,
            models: Some(models.repository.clone()),
            ..ServerConfig::new(models.library.clone())
        };
        let service = config.service.clone();
        let listener = tokio.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let address = listener.local_addr()?;
        let (stop, stop_requested) = oneshot::channel::<()>();
        let server = tokio.spawn(serve(config, listener, async {
            let _ = stop_requested.await;
        }));
        let mut client = tokio.block_on(connect(address))?;
        let listed = tokio.block_on(client.list_models(ListModelsRequest {}))?.into_inner().models;
        let model =
            listed.iter().find(|m| m.is_default).context("the server offers no segmentation model")?.name.clone();
        if model != unet.manifest.name {
            bail!("the server segments with {model}, this process with {}", unet.manifest.name);
        }
        Ok(LocalServer { tokio, client, model, service, stop, server })
    }

    /// One Segment call: the header and the CT in chunks (copied as a client reading a file
    /// would), then the summary and every answer chunk, kept.
    pub fn segment(&mut self, case: &Case) -> anyhow::Result<Sample> {
        self.tokio.block_on(over_grpc(&mut self.client, case, &self.model))
    }

    /// Closes the client and waits for the server to stop.
    pub fn stop(self) -> anyhow::Result<()> {
        let LocalServer { tokio, client, stop, server, .. } = self;
        drop(client);
        let _ = stop.send(());
        tokio
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), server).await })??
            .context("the server failed")?;
        Ok(())
    }
}

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

/// The report's lines on how both sides ran: ONNX Runtime and the server's settings, then the
/// client.
pub fn setup_lines(models: &Models, service: &ServiceSettings) -> String {
    format!(
        "- ONNX Runtime {}: one session per model, {} intra-op threads; server: {} worker, queue {}, max_batch {}; \
         both sides draw the mask at the default threshold\n\
         - client in the same process, on loopback TCP: int16 CT in {} MiB chunks, uint8 probability and mask back \
         in {} MiB chunks, all kept; wall time from sending the header to the last chunk\n",
        models.runtime.version(),
        models.threads,
        service.workers,
        service.queue,
        service.max_batch,
        UPLOAD_CHUNK_BYTES >> 20,
        ANSWER_CHUNK_BYTES >> 20,
    )
}

/// The head of a markdown table of stage medians, one row per input and side
/// ([`stage_row`]); `input` names the first column.
pub fn stage_table_head(input: &str) -> String {
    format!("| {input} | side | {} | wall |\n|---|---|{}---:|\n", STAGES.join(" | "), "---:|".repeat(STAGES.len()))
}

/// The row of `timing`'s stage medians and wall median.
pub fn stage_row(input: &str, side: &str, timing: &Timing) -> String {
    let stages: Vec<String> = timing.stages.iter().map(|&t| fixed(t, 3)).collect();
    format!("| {input} | {side} | {} | {:.3} |\n", stages.join(" | "), timing.median)
}

/// The report's warning when other processes kept more than [`BUSY_MACHINE`] cores busy
/// during a timing.
pub fn busy_warning<'a>(timings: impl IntoIterator<Item = &'a Timing>) -> Option<String> {
    let others_max = timings.into_iter().filter_map(|t| t.others_busy).fold(0.0, f64::max);
    (others_max > BUSY_MACHINE).then(|| {
        format!(
            "\n**Not comparable:** other processes kept up to {others_max:.2} cores busy during a timing. Rerun on \
             an idle machine.\n"
        )
    })
}

/// Prints `text` and writes it to `target/bench/{name}.md` (under `CARGO_TARGET_DIR` when set).
pub fn report(root: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    println!("\n{text}");
    let out_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("{}", out_dir.display()))?;
    let path = out_dir.join(format!("{name}.md"));
    std::fs::write(&path, text).with_context(|| format!("{}", path.display()))?;
    eprintln!("{name}: written to {}", path.display());
    Ok(())
}

/// `value` with `digits` decimals, or "n/a".
pub fn fixed(value: Option<f64>, digits: usize) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// What the report says of the machine: its cores, CPU, memory and load at the start.
pub struct Machine {
    pub cores: NonZeroUsize,
    /// The 1, 5 and 15 minute load averages.
    pub load_average: String,
}

impl Machine {
    pub fn now() -> Self {
        let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
        let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load_average = load_average.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        Machine { cores, load_average }
    }

    /// "- machine: 2 cores, CPU, 23.5 GiB; load average at start 0.10 0.20 0.30"
    pub fn line(&self) -> String {
        format!(
            "- machine: {} cores, {}, {}; load average at start {}\n",
            self.cores,
            cpu_model(),
            memory(),
            self.load_average
        )
    }
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
