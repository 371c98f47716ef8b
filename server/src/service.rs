//! The `fracmap.v1.Fracmap` gRPC service: GetServerInfo, ListModels and Segment. What it
//! serves is fixed at start-up (see [`crate::server`]); a request's work is the pipeline's
//! ([`crate::pipeline::segment`]), admitted by [`Admission`] and run on a blocking thread.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fracmap_core::model_manifest::{Dim, ModelManifest, TensorSpec};
use fracmap_core::{Box3, Grid, Volume};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::admission::Admission;
use crate::metrics::Metrics;
use crate::models::LoadedModel;
use crate::pipeline::{
    Interrupt, ModelPair, PipelineError, SLICE_ARCHITECTURE, SegmentOptions, Segmentation, SliceModel, Vertebra,
    segment,
};
use crate::proto::{
    self, GetServerInfoRequest, GetServerInfoResponse, ListModelsRequest, ListModelsResponse, OutputKind, OutputVolume,
    ProbabilityEncoding, SegmentHeader, SegmentRequest, SegmentResponse, SegmentSummary, VolumeChunk, VoxelBox,
    VoxelType, segment_response,
};
use crate::runtime::{ExecutionProvider, OnnxRuntime};
use crate::segment_request::{self, Decoded, Limits};

/// Response chunk size when the request asks for none.
pub const DEFAULT_RESPONSE_CHUNK_BYTES: usize = 1 << 20;

/// The metadata key of a request's id, read from a request and set on its answer.
pub const REQUEST_ID_KEY: &str = "x-request-id";

/// How the service runs segmentations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    /// The segmentation model for requests that name none; `None`: the first U-Net by name, or
    /// the first slice model by name when no U-Net can segment.
    pub default_model: Option<String>,
    pub limits: Limits,
    /// Crops per model run.
    pub max_batch: NonZeroUsize,
    /// Segmentations at once (each model has as many sessions).
    pub workers: NonZeroUsize,
    /// Requests that may wait for a worker.
    pub queue: usize,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            default_model: None,
            limits: Limits::default(),
            max_batch: NonZeroUsize::new(8).expect("8 is not 0"),
            workers: NonZeroUsize::MIN,
            queue: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "default model {name:?} is not a segmentation model this server loaded (those it can segment with: {known})"
    )]
    UnknownDefault { name: String, known: String },
}

/// What can segment, by indices in the models: a U-Net and the VAE whose error maps it reads,
/// or a slice model (architecture [`SLICE_ARCHITECTURE`]) that reads the CT alone.
#[derive(Debug, Clone, Copy)]
enum Segmenter {
    Pair { unet: usize, vae: usize },
    Slices { model: usize },
}

impl Segmenter {
    /// The model a request names: the U-Net, or the slice model.
    fn model(self) -> usize {
        match self {
            Segmenter::Pair { unet, .. } => unet,
            Segmenter::Slices { model } => model,
        }
    }

    fn vae(self) -> Option<usize> {
        match self {
            Segmenter::Pair { vae, .. } => Some(vae),
            Segmenter::Slices { .. } => None,
        }
    }

    /// The metrics stages of its model runs with their times in `t`: "vae" and "unet" for a
    /// pair, "p2p" for a slice model.
    fn model_stages(self, t: &crate::pipeline::StageTimings) -> Vec<(&'static str, Duration)> {
        match self {
            Segmenter::Pair { .. } => vec![("vae", t.vae), ("unet", t.unet)],
            Segmenter::Slices { .. } => vec![("p2p", t.unet)],
        }
    }

    /// [`segment`] with these models.
    fn segment(
        self,
        models: &[LoadedModel],
        ct: &Volume,
        vertebrae: &[Vertebra],
        fracture_boxes: &[Box3],
        options: &SegmentOptions,
    ) -> Result<Segmentation, PipelineError> {
        match self {
            Segmenter::Pair { unet, vae } => {
                segment(ct, vertebrae, fracture_boxes, &ModelPair::new(&models[vae], &models[unet])?, options)
            }
            Segmenter::Slices { model } => {
                segment(ct, vertebrae, fracture_boxes, &SliceModel::new(&models[model])?, options)
            }
        }
    }
}

/// Implements `fracmap.v1.Fracmap`.
#[derive(Debug, Clone)]
pub struct FracmapService {
    server_info: GetServerInfoResponse,
    models: Arc<[LoadedModel]>,
    segmenters: Arc<[Segmenter]>,
    /// Index into `segmenters`.
    default: Option<usize>,
    /// Why each loaded U-Net or slice model that cannot segment is not offered, by name.
    refused: Arc<BTreeMap<String, String>>,
    settings: ServiceSettings,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
}

impl FracmapService {
    /// A service on `runtime`, whose models run on `provider` with `intra_threads` threads.
    /// Pairs every U-Net with the loaded VAE it reads and offers every slice model
    /// ([`SLICE_ARCHITECTURE`]) beside them; a U-Net without its VAE, or a model the pipeline
    /// cannot run, is logged and not offered.
    pub fn new(
        runtime: &OnnxRuntime,
        provider: ExecutionProvider,
        intra_threads: NonZeroUsize,
        models: Vec<LoadedModel>,
        settings: ServiceSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServiceError> {
        let (segmenters, refused) = find_segmenters(&models);
        let name_of = |s: &Segmenter| models[s.model()].manifest.name.as_str();
        let default = match &settings.default_model {
            Some(name) => Some(segmenters.iter().position(|s| name_of(s) == name).ok_or_else(|| {
                ServiceError::UnknownDefault {
                    name: name.clone(),
                    known: segmenters.iter().map(name_of).collect::<Vec<_>>().join(", "),
                }
            })?),
            None => (!segmenters.is_empty()).then_some(0),
        };
        let infos = models_info(&models, &segmenters, default, provider);
        let server_info = GetServerInfoResponse {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            onnx_runtime_version: runtime.version().to_string(),
            onnx_runtime_library: runtime.library().display().to_string(),
            execution_provider: provider_message(provider).into(),
            intra_op_threads: u32::try_from(intra_threads.get()).unwrap_or(u32::MAX),
            models: infos,
        };
        metrics.set_models_loaded(models.len());
        let admission = Admission::new(settings.workers, settings.queue, Arc::clone(&metrics));
        Ok(FracmapService {
            server_info,
            models: models.into(),
            segmenters: segmenters.into(),
            default,
            refused: Arc::new(refused),
            settings,
            admission,
            metrics,
        })
    }

    /// The loaded model called `name`.
    pub fn model(&self, name: &str) -> Option<&LoadedModel> {
        self.models.iter().find(|model| model.manifest.name == name)
    }

    /// The segmenter a header asks for: its model, else the default.
    fn segmenter(&self, header: &SegmentHeader) -> Result<Segmenter, Status> {
        let found = if header.model.is_empty() {
            self.default.map(|i| self.segmenters[i]).ok_or_else(|| {
                Status::not_found(format!(
                    "this server has no segmentation model (a U-Net with the VAE it reads, or a {SLICE_ARCHITECTURE} \
                     model)"
                ))
            })?
        } else {
            *self.segmenters.iter().find(|s| self.models[s.model()].manifest.name == header.model).ok_or_else(|| {
                let known: Vec<&str> =
                    self.segmenters.iter().map(|s| self.models[s.model()].manifest.name.as_str()).collect();
                let known = known.join(", ");
                match self.refused.get(&header.model) {
                    Some(reason) => Status::not_found(format!(
                        "header.model: model {:?} is loaded but cannot segment: {reason} (known: {known})",
                        header.model
                    )),
                    None => Status::not_found(format!(
                        "header.model: no segmentation model {:?} here (known: {known})",
                        header.model
                    )),
                }
            })?
        };
        let model = &self.models[found.model()].manifest;
        if header.model_version != 0 && header.model_version != model.version {
            return Err(Status::not_found(format!(
                "header.model_version: {} version {} is not served; version {} is",
                model.name, header.model_version, model.version
            )));
        }
        // Refused before the upload: a slice model has no error map to give.
        if header.error_map && found.vae().is_none() {
            return Err(Status::invalid_argument(format!(
                "header.error_map: model {} is a {} model, which reads no VAE's error map; ask without error_map",
                model.name, model.architecture
            )));
        }
        Ok(found)
    }

    /// Everything of one Segment call up to its answer's stream.
    async fn run_segment(
        &self,
        mut stream: Streaming<SegmentRequest>,
        request_id: String,
        interrupt: Interrupt,
        started: Instant,
    ) -> Result<SegmentStream, Status> {
        let deadline = interrupt.deadline();
        let header = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), segment_request::receive_header(&mut stream))
                .await
                .map_err(|_| Status::deadline_exceeded("deadline exceeded before the header came"))??,
            None => segment_request::receive_header(&mut stream).await?,
        };
        let limits = self.settings.limits;
        segment_request::check_header(&header, &limits)?;
        let segmenter = self.segmenter(&header)?;
        let mut admitted = self.admission.admit()?;
        let (model, vae) = (&self.models[segmenter.model()], segmenter.vae().map(|vae| &self.models[vae]));
        tracing::info!(
            model = %model.manifest.name,
            version = model.manifest.version,
            ct_bytes = header.ct.as_ref().map_or(0, |ct| ct.total_bytes),
            encoding = header.ct.as_ref().map_or("", |ct| ct.encoding().as_str_name()),
            vertebrae = header.vertebrae.len(),
            label_map = header.vertebra_labels.is_some(),
            fracture_boxes = header.fracture_boxes.len(),
            "segment: admitted"
        );

        let metrics = Arc::clone(&self.metrics);
        let received =
            segment_request::receive_volumes(&mut stream, &header, deadline, |n| metrics.bytes_received(n as u64))
                .await?;
        let receive = started.elapsed();

        // Decoded once a worker is free: a waiting request holds its bytes as they came (a
        // compressed NIfTI is a fraction of its volume), and decoding does not take cores
        // from the segmentations running.
        let queue_started = Instant::now();
        admitted.wait_for_worker(deadline).await?;
        let queue = queue_started.elapsed();

        let decode_started = Instant::now();
        let header = Arc::new(header);
        let decoded = {
            let header = Arc::clone(&header);
            tokio::task::spawn_blocking(move || segment_request::decode(&header, received, &limits))
                .await
                .map_err(|e| Status::internal(format!("decoding failed: {e}")))??
        };
        let decode = decode_started.elapsed();

        let options = SegmentOptions {
            threshold: header.threshold,
            min_component_voxels: header
                .min_component_voxels
                .map_or(SegmentOptions::default().min_component_voxels, |n| n as usize),
            max_batch: self.settings.max_batch,
            error_map: header.error_map,
            interrupt: interrupt.clone(),
        };
        let models = Arc::clone(&self.models);
        let Decoded { ct, vertebrae, fracture_boxes } = decoded;
        let grid = ct.grid();
        let segmentation = tokio::task::spawn_blocking(move || {
            let _running = admitted;
            segmenter.segment(&models, &ct, &vertebrae, &fracture_boxes, &options)
        })
        .await
        .map_err(|e| Status::internal(format!("the segmentation failed: {e}")))?
        .map_err(pipeline_status)?;

        let t = &segmentation.timings;
        let stages = [("receive", receive), ("decode", decode), ("queue", queue), ("crop", t.crop)]
            .into_iter()
            .chain(segmenter.model_stages(t))
            .chain([("paste", t.paste), ("mask", t.mask)]);
        for (stage, time) in stages {
            self.metrics.observe_stage(stage, time.as_secs_f64());
        }
        let timings = proto::StageTimings {
            receive_ms: ms(receive),
            decode_ms: ms(decode),
            queue_ms: ms(queue),
            crop_ms: ms(t.crop),
            vae_ms: ms(t.vae),
            unet_ms: ms(t.unet),
            paste_ms: ms(t.paste),
            mask_ms: ms(t.mask),
            total_ms: ms(started.elapsed()),
        };
        let outputs = Outputs::new(segmentation, &header);
        let summary = SegmentSummary {
            request_id: request_id.clone(),
            model: Some(model_ref(model)),
            vae: vae.map(model_ref),
            execution_provider: provider_message(model.provider).into(),
            threshold: outputs.segmentation.threshold,
            mask_voxels: outputs.segmentation.mask_voxels as u64,
            mask_volume_mm3: outputs.segmentation.mask_volume_mm3,
            confidence: outputs.segmentation.confidence,
            vertebrae: outputs.segmentation.vertebrae.iter().map(vertebra_result).collect(),
            grid: Some(grid_message(&grid)),
            outputs: outputs.descriptions(),
            timings: Some(timings),
        };
        tracing::info!(
            mask_voxels = summary.mask_voxels,
            vertebrae = summary.vertebrae.len(),
            total_ms = summary.timings.as_ref().map_or(0.0, |t| t.total_ms),
            "segment: done, sending"
        );
        let chunk_bytes = match header.response_chunk_bytes {
            0 => DEFAULT_RESPONSE_CHUNK_BYTES,
            n => n as usize,
        }
        .min(limits.max_chunk_bytes);
        Ok(send(summary, outputs, chunk_bytes, Arc::clone(&self.metrics), started, interrupt))
    }
}

type SegmentStream = Pin<Box<dyn Stream<Item = Result<SegmentResponse, Status>> + Send>>;

/// Streams the summary, then every output's chunks, from a task of its own; records the
/// call's outcome once the client has it all (or went away: CANCELLED).
fn send(
    summary: SegmentSummary,
    outputs: Outputs,
    chunk_bytes: usize,
    metrics: Arc<Metrics>,
    started: Instant,
    interrupt: Interrupt,
) -> SegmentStream {
    let (tx, rx) = mpsc::channel(4);
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            let send_started = Instant::now();
            let message = |part| Ok(SegmentResponse { part: Some(part) });
            let mut delivered = tx.send(message(segment_response::Part::Summary(summary))).await.is_ok();
            'outputs: for output in 0..outputs.kinds.len() {
                for chunk in outputs.chunks(output, chunk_bytes) {
                    metrics.bytes_sent(chunk.data.len() as u64);
                    if tx.send(message(segment_response::Part::Chunk(chunk))).await.is_err() {
                        delivered = false;
                        break 'outputs;
                    }
                }
            }
            metrics.observe_stage("send", send_started.elapsed().as_secs_f64());
            let code = if delivered { Code::Ok } else { Code::Cancelled };
            if !delivered {
                interrupt.cancel();
            }
            metrics.request_finished("Segment", code, started.elapsed().as_secs_f64());
            tracing::info!(code = ?code, ms = ms(started.elapsed()), "segment: finished");
        }
        .instrument(span),
    );
    Box::pin(ReceiverStream::new(rx))
}

/// The volumes a request gets back, in the order they are sent.
struct Outputs {
    segmentation: Segmentation,
    kinds: Vec<(OutputKind, VoxelType)>,
}

impl Outputs {
    fn new(segmentation: Segmentation, header: &SegmentHeader) -> Self {
        let mut kinds = Vec::new();
        if !header.skip_volumes {
            let probability = match header.probability_encoding() {
                ProbabilityEncoding::Float32 => VoxelType::Float32,
                _ => VoxelType::Uint8,
            };
            kinds.push((OutputKind::Probability, probability));
            kinds.push((OutputKind::Mask, VoxelType::Uint8));
            if segmentation.error_map.is_some() {
                kinds.push((OutputKind::ErrorMap, VoxelType::Float32));
            }
        }
        Outputs { segmentation, kinds }
    }

    fn voxels(&self) -> usize {
        self.segmentation.probability.shape().iter().product()
    }

    fn descriptions(&self) -> Vec<OutputVolume> {
        self.kinds
            .iter()
            .map(|&(kind, voxel_type)| OutputVolume {
                kind: kind.into(),
                voxel_type: voxel_type.into(),
                total_bytes: (self.voxels() * segment_request::voxel_size_of(voxel_type)) as u64,
                scale: if kind == OutputKind::Probability && voxel_type == VoxelType::Uint8 {
                    1.0 / 255.0
                } else {
                    1.0
                },
            })
            .collect()
    }

    /// Output `index` as chunks of at most `chunk_bytes` (whole voxels), encoded as each is
    /// taken, so that a 300 MB answer is never copied whole.
    fn chunks(&self, index: usize, chunk_bytes: usize) -> impl Iterator<Item = VolumeChunk> + '_ {
        let (kind, voxel_type) = self.kinds[index];
        let size = segment_request::voxel_size_of(voxel_type);
        let per_chunk = (chunk_bytes / size).max(1);
        let total = self.voxels();
        (0..total).step_by(per_chunk).map(move |start| {
            let range = start..(start + per_chunk).min(total);
            let data = match (kind, voxel_type) {
                (OutputKind::Mask, _) => {
                    let mask = self.segmentation.mask.as_slice().expect("the pipeline's mask is contiguous");
                    mask[range.clone()].iter().map(|&m| u8::from(m)).collect()
                }
                (OutputKind::ErrorMap, _) => {
                    let error = self.segmentation.error_map.as_ref().expect("listed only when present");
                    error.as_slice()[range.clone()].iter().flat_map(|v| v.to_le_bytes()).collect()
                }
                (_, VoxelType::Float32) => self.segmentation.probability.as_slice()[range.clone()]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                _ => self.segmentation.probability.as_slice()[range.clone()]
                    .iter()
                    .map(|&p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
                    .collect(),
            };
            VolumeChunk { kind: kind.into(), offset: (range.start * size) as u64, data }
        })
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn model_ref(model: &LoadedModel) -> proto::ModelRef {
    proto::ModelRef { name: model.manifest.name.clone(), version: model.manifest.version }
}

fn box_message(b: &Box3) -> VoxelBox {
    VoxelBox { min: b.min().map(|n| n as u64).to_vec(), max: b.max().map(|n| n as u64).to_vec() }
}

fn grid_message(grid: &Grid) -> proto::VolumeGrid {
    proto::VolumeGrid {
        shape: grid.shape.map(|n| n as u64).to_vec(),
        spacing_mm: grid.spacing.to_vec(),
        affine: grid.affine.iter().flatten().copied().collect(),
    }
}

fn vertebra_result(v: &crate::pipeline::VertebraResult) -> proto::VertebraResult {
    proto::VertebraResult {
        label: v.label.clone().unwrap_or_default(),
        body_box: Some(box_message(&v.body_box)),
        region: Some(box_message(&v.region)),
        fracture_score: v.fracture_score,
        mask_voxels: v.mask_voxels as u64,
        mask_volume_mm3: v.mask_volume_mm3,
        confidence: v.confidence,
        oversize: v.oversize,
    }
}

/// The status of a pipeline failure: the request's fault is INVALID_ARGUMENT, the models'
/// INTERNAL.
fn pipeline_status(error: PipelineError) -> Status {
    let message = error.to_string();
    match error {
        PipelineError::NoVertebrae
        | PipelineError::NonFiniteCt { .. }
        | PipelineError::BodyBoxOutside { .. }
        | PipelineError::FractureBoxOutside { .. }
        | PipelineError::Threshold(_)
        | PipelineError::Crop { .. } => Status::invalid_argument(message),
        PipelineError::Cancelled => Status::cancelled(message),
        PipelineError::DeadlineExceeded => Status::deadline_exceeded(message),
        PipelineError::NoErrorMap { .. } => Status::invalid_argument(format!("header.{message}")),
        PipelineError::ModelPair { .. }
        | PipelineError::SliceModel { .. }
        | PipelineError::Run { .. }
        | PipelineError::Output { .. }
        | PipelineError::Mask(_) => Status::internal(message),
    }
}

/// What can segment: every U-Net (a manifest with `error_input`) with the loaded VAE it reads
/// and works with, then every slice model ([`SLICE_ARCHITECTURE`]) the pipeline can run, each
/// in the models' (name) order; and, by name, why the other U-Nets and slice models are not
/// offered.
fn find_segmenters(models: &[LoadedModel]) -> (Vec<Segmenter>, BTreeMap<String, String>) {
    let (mut pairs, mut slice_models, mut refused) = (Vec::new(), Vec::new(), BTreeMap::new());
    for (index, model) in models.iter().enumerate() {
        let manifest = &model.manifest;
        let found = if manifest.architecture == SLICE_ARCHITECTURE {
            SliceModel::new(model).map(|_| Segmenter::Slices { model: index }).map_err(|e| e.to_string())
        } else if manifest.error_input.is_some() {
            match models.iter().position(|vae| manifest.takes_errors_from(&vae.manifest)) {
                Some(vae) => ModelPair::new(&models[vae], model)
                    .map(|_| Segmenter::Pair { unet: index, vae })
                    .map_err(|e| e.to_string()),
                None => Err("the VAE whose error maps it reads is not loaded".to_string()),
            }
        } else {
            continue;
        };
        match found {
            Ok(pair @ Segmenter::Pair { .. }) => pairs.push(pair),
            Ok(slice_model) => slice_models.push(slice_model),
            Err(reason) => {
                tracing::warn!("model {} not offered: {reason}", manifest.name);
                refused.insert(manifest.name.clone(), reason);
            }
        }
    }
    pairs.extend(slice_models);
    (pairs, refused)
}

/// What GetServerInfo and ListModels tell of the models.
fn models_info(
    models: &[LoadedModel],
    segmenters: &[Segmenter],
    default: Option<usize>,
    provider: ExecutionProvider,
) -> Vec<proto::ModelInfo> {
    models
        .iter()
        .enumerate()
        .map(|(index, model)| {
            let segmenter = segmenters.iter().position(|s| s.model() == index);
            let mut info = model_info(&model.manifest);
            info.execution_provider = provider_message(provider).into();
            if let Some(s) = segmenter {
                // Empty for a slice model: it reads no VAE.
                info.reads_errors_of =
                    segmenters[s].vae().map_or_else(String::new, |vae| models[vae].manifest.name.clone());
                info.mask_threshold = model.manifest.mask_threshold.unwrap_or(crate::pipeline::DEFAULT_MASK_THRESHOLD);
                info.is_default = default == Some(s);
            }
            info
        })
        .collect()
}

/// What GetServerInfo tells of a model: its manifest's identity, tensors and preprocessing.
fn model_info(manifest: &ModelManifest) -> proto::ModelInfo {
    let tensors = |specs: &[TensorSpec]| specs.iter().map(tensor_info).collect();
    let preprocessing = &manifest.preprocessing;
    proto::ModelInfo {
        name: manifest.name.clone(),
        version: manifest.version,
        sha256: manifest.onnx.sha256.clone(),
        architecture: manifest.architecture.clone(),
        inputs: tensors(&manifest.inputs),
        outputs: tensors(&manifest.outputs),
        preprocessing: Some(proto::CropPreprocessing {
            spacing_mm: preprocessing.spacing_mm.to_vec(),
            margin_mm: preprocessing.margin_mm,
            hu_min: f64::from(preprocessing.hu_window.min()),
            hu_max: f64::from(preprocessing.hu_window.max()),
            patch: preprocessing.patch.iter().map(|&n| u32::try_from(n).unwrap_or(u32::MAX)).collect(),
        }),
        metrics: manifest
            .evaluation
            .iter()
            .flat_map(|e| e.measures.iter())
            .filter_map(|(name, value)| value.map(|v| (name.clone(), v)))
            .collect(),
        ..Default::default()
    }
}

/// A tensor's name and shape, -1 for a dynamic axis.
fn tensor_info(spec: &TensorSpec) -> proto::TensorInfo {
    let length = |dim: &Dim| match dim {
        Dim::Fixed(length) => i64::try_from(*length).unwrap_or(i64::MAX),
        Dim::Dynamic(_) => -1,
    };
    proto::TensorInfo { name: spec.name.clone(), shape: spec.shape.iter().map(length).collect() }
}

/// The execution provider as the API names it.
pub fn provider_message(provider: ExecutionProvider) -> proto::ExecutionProvider {
    match provider {
        ExecutionProvider::Cpu => proto::ExecutionProvider::Cpu,
        ExecutionProvider::Cuda => proto::ExecutionProvider::Cuda,
    }
}

/// The deadline a client set (the `grpc-timeout` header: digits and a unit, H M S m u n),
/// as an instant of this process.
pub fn grpc_deadline(metadata: &MetadataMap, now: Instant) -> Result<Option<Instant>, Status> {
    let Some(value) = metadata.get("grpc-timeout") else { return Ok(None) };
    let bad = || Status::invalid_argument(format!("grpc-timeout header {value:?} is not digits and a unit"));
    let text = value.to_str().map_err(|_| bad())?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1).ok_or_else(bad)?);
    let amount: u64 = digits.parse().map_err(|_| bad())?;
    let duration = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(bad()),
    };
    Ok(now.checked_add(duration))
}

/// The client's `x-request-id` when it is short and plain, else a new one: the id that ties
/// a request's log lines (which carry no patient data) to what the client saw.
fn request_id(metadata: &MetadataMap) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let given = metadata.get(REQUEST_ID_KEY).and_then(|v| v.to_str().ok()).filter(|id| {
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    });
    match given {
        Some(id) => id.to_string(),
        None => {
            // The process's start second keeps ids of a restarted server apart.
            static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
            let epoch = *EPOCH.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
            format!("{epoch:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
        }
    }
}

/// Cancels the segmentation when dropped before [`CancelOnDrop::disarm`]: tonic drops a
/// handler whose client went away (or gave up at its deadline), and the blocking work must
/// then stop too. The call counts as CANCELLED.
struct CancelOnDrop {
    interrupt: Option<Interrupt>,
    metrics: Arc<Metrics>,
    started: Instant,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.interrupt = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(interrupt) = &self.interrupt {
            interrupt.cancel();
            self.metrics.request_finished("Segment", Code::Cancelled, self.started.elapsed().as_secs_f64());
            tracing::info!("segment: the client went away; stopping");
        }
    }
}

#[tonic::async_trait]
impl proto::fracmap_server::Fracmap for FracmapService {
    async fn get_server_info(
        &self,
        _request: Request<GetServerInfoRequest>,
    ) -> Result<Response<GetServerInfoResponse>, Status> {
        Ok(Response::new(self.server_info.clone()))
    }

    async fn list_models(&self, _request: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        let started = Instant::now();
        let response = ListModelsResponse { models: self.server_info.models.clone() };
        self.metrics.request_finished("ListModels", Code::Ok, started.elapsed().as_secs_f64());
        Ok(Response::new(response))
    }

    type SegmentStream = SegmentStream;

    async fn segment(
        &self,
        request: Request<Streaming<SegmentRequest>>,
    ) -> Result<Response<Self::SegmentStream>, Status> {
        let started = Instant::now();
        let id = request_id(request.metadata());
        let span = tracing::info_span!("segment", request_id = %id);
        let id_value = MetadataValue::try_from(id.as_str()).ok();
        let result = match grpc_deadline(request.metadata(), started) {
            Ok(deadline) => {
                let interrupt = Interrupt::new(deadline);
                let guard =
                    CancelOnDrop { interrupt: Some(interrupt.clone()), metrics: Arc::clone(&self.metrics), started };
                let result = self
                    .run_segment(request.into_inner(), id.clone(), interrupt, started)
                    .instrument(span.clone())
                    .await;
                guard.disarm();
                result
            }
            Err(status) => Err(status),
        };
        match result {
            Ok(stream) => {
                let mut response = Response::new(stream);
                if let Some(value) = id_value {
                    response.metadata_mut().insert(REQUEST_ID_KEY, value);
                }
                Ok(response)
            }
            Err(mut status) => {
                self.metrics.request_finished("Segment", status.code(), started.elapsed().as_secs_f64());
                span.in_scope(
                    || tracing::info!(code = ?status.code(), message = status.message(), "segment: refused or failed"),
                );
                if let Some(value) = id_value {
                    status.metadata_mut().insert(REQUEST_ID_KEY, value);
                }
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(timeout: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", timeout.parse().unwrap());
        metadata
    }

    #[test]
    fn grpc_timeouts_of_every_unit_become_deadlines() {
        let now = Instant::now();
        assert_eq!(grpc_deadline(&MetadataMap::new(), now).unwrap(), None);
        assert_eq!(grpc_deadline(&metadata("3S"), now).unwrap(), Some(now + Duration::from_secs(3)));
        assert_eq!(grpc_deadline(&metadata("250m"), now).unwrap(), Some(now + Duration::from_millis(250)));
        assert_eq!(grpc_deadline(&metadata("2M"), now).unwrap(), Some(now + Duration::from_secs(120)));
        assert_eq!(grpc_deadline(&metadata("7u"), now).unwrap(), Some(now + Duration::from_micros(7)));
        for bad in ["", "S", "12", "1x", "-1S"] {
            let status = grpc_deadline(&metadata(bad), now).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn a_plain_client_request_id_is_kept_and_others_replaced() {
        let mut metadata = MetadataMap::new();
        metadata.insert(REQUEST_ID_KEY, "pacs-42.a".parse().unwrap());
        assert_eq!(request_id(&metadata), "pacs-42.a");
        metadata.insert(REQUEST_ID_KEY, "has space".parse().unwrap());
        let generated = request_id(&metadata);
        assert_ne!(generated, "has space");
        assert_ne!(request_id(&MetadataMap::new()), request_id(&MetadataMap::new()));
    }
}
