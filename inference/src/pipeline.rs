//! The inference pipeline: a CT and the vertebrae to examine in; the fracture probability map
//! on the CT's grid, its draft mask and per-vertebra figures out. [`segment`] is a plain
//! library function, without gRPC types: the service, the benchmark and the tests call it
//! alike.
//!
//! Every step is core's, with the numbers of the models' manifests, so that a vertebra reaches
//! the models as the trainer's crop cache prepared it. The models are [`CropModels`]: a VAE
//! and the U-Net that reads its error maps ([`ModelPair`]), or a slice model, the 2.5D
//! pix2pix-LSTM ([`SliceModel`]), which reads the CT alone.
//!
//! 1. crop: [`cut_vertebra`] with the manifest's [`CropSpec`] (body box + margin, resampled to
//!    the model's spacing, cut or padded to the patch) and [`AIR_HU`] past the CT's edges, then
//!    the manifest's HU window;
//! 2. vae (a pair only): the VAE's error output `E = |X - X_hat|`, smoothed by
//!    [`gaussian_smooth`] when `error_sigma > 0`, scaled by [`normalise_error`] (the U-Net's
//!    [`ErrorInput`]);
//! 3. unet: `[X, normalised E]` to the probability `P` (the graph ends in a sigmoid); or, for a
//!    slice model, every axial slice `z` of the crop as the centre of its sequence of `context`
//!    slices (the crop's edge slices repeated, [`sequence_indices`]) to that slice of `P`;
//! 4. paste: each crop's `P` back onto the CT's grid ([`VertebraCrop::paste_back`]: undoes the
//!    patch, resamples to the CT's spacing, drops what lies past the CT) and stitched where
//!    crops overlap: the mean of the vertebrae's `P` weighted by the paste weight (0 where an
//!    [oversize](VertebraCrop::oversize) vertebra's patch did not reach) times, for a pair,
//!    nnU-Net's Gaussian importance of the patch, so that a voxel trusts the crop it lies near
//!    the centre of; a slice model's crops by the paste weight alone, the plain mean of the
//!    trainer's 3D integration (`fracmap_trainer::p2p::integrate`), so that both agree; 0 where
//!    no crop reaches;
//! 5. mask: [`pseudo_label`], the flywheel's draft mask, inside the clinician's fracture boxes
//!    when there are any.
//!
//! Everything is in the CT's voxels, `[z, y, x]`, boxes half-open.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fracmap_core::error_norm::normalise_error;
use fracmap_core::model_manifest::{Dim, ErrorInput, Preprocessing, TensorSpec};
use fracmap_core::pseudo_label::pseudo_label;
use fracmap_core::sliding_window::gaussian_importance;
use fracmap_core::smoothing::gaussian_smooth;
use fracmap_core::vertebra_crop::{AIR_HU, CropSpec, PastedPrediction, VertebraCrop, VertebraCropError, cut_vertebra};
use fracmap_core::{Box3, GeometryError, Mask, PseudoLabel, PseudoLabelConfig, PseudoLabelError, Volume};
use ndarray::{Array, Array3, Array4, Array5, ArrayView, ArrayView3, Axis, Dimension, Zip, s};
use ort::value::TensorRef;

use crate::models::LoadedModel;

/// The draft-mask threshold when neither the request nor the U-Net's (or slice model's)
/// manifest gives one: the sigmoid's even odds.
pub const DEFAULT_MASK_THRESHOLD: f32 = 0.5;

/// The Gaussian importance of a crop when crops overlap: `sigma = patch / 8` per axis, as
/// nnU-Net weights its sliding windows.
pub const IMPORTANCE_SIGMA_FRACTION: f64 = 1.0 / 8.0;

/// The manifest architecture of a slice model: the 2.5D pix2pix-LSTM generator that
/// `fracmap-train export` writes.
pub const SLICE_ARCHITECTURE: &str = "p2p_lstm";

/// One vertebra to examine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vertebra {
    /// Its name for people ("L1"), when the caller has one.
    pub label: Option<String>,
    /// Its vertebral body, in the CT's voxels.
    pub body_box: Box3,
}

/// Stops a segmentation between its steps and model runs: the client went away, or its
/// deadline passed. Clones share the cancellation.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    cancelled: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Interrupt {
    /// Never fires unless cancelled; past `deadline` when there is one.
    pub fn new(deadline: Option<Instant>) -> Self {
        Interrupt { cancelled: Arc::default(), deadline }
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// [`PipelineError::Cancelled`] or [`PipelineError::DeadlineExceeded`] when the work
    /// should stop.
    pub fn check(&self) -> Result<(), PipelineError> {
        if self.is_cancelled() {
            return Err(PipelineError::Cancelled);
        }
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(PipelineError::DeadlineExceeded),
            _ => Ok(()),
        }
    }
}

/// How [`segment`] runs and what it returns beyond the probability map.
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// Draft-mask threshold in `(0, 1]`; `None`: the U-Net's (or slice model's) manifest's
    /// `mask_threshold`, else [`DEFAULT_MASK_THRESHOLD`].
    pub threshold: Option<f32>,
    /// Draft-mask components of fewer voxels are dropped (see [`PseudoLabelConfig`]).
    pub min_component_voxels: usize,
    /// Crops per model run: all vertebrae of a spine in a few runs, with a bounded memory. A
    /// slice model runs as many crops' worth of sequences at once: `max_batch * depth`
    /// sequences (`depth` the patch's), whichever crops they come from.
    pub max_batch: NonZeroUsize,
    /// Whether to stitch the U-Net's error channel onto the CT's grid too
    /// ([`Segmentation::error_map`]); a slice model has none ([`PipelineError::NoErrorMap`]).
    pub error_map: bool,
    /// Checked between steps and model runs.
    pub interrupt: Interrupt,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            threshold: None,
            min_component_voxels: PseudoLabelConfig::default().min_component_voxels,
            max_batch: NonZeroUsize::new(8).expect("8 is not 0"),
            error_map: false,
            interrupt: Interrupt::default(),
        }
    }
}

/// What [`segment`] found in a CT.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// Fracture probability on the CT's grid, in `[0, 1]`; 0 where no crop reached.
    pub probability: Volume,
    /// The draft mask on the CT's grid ([`pseudo_label`]).
    pub mask: Mask,
    /// The threshold the mask was drawn at.
    pub threshold: f32,
    /// Voxels in `mask`.
    pub mask_voxels: usize,
    /// `mask_voxels` times the CT's voxel volume, mm^3.
    pub mask_volume_mm3: f64,
    /// Mean probability over `mask`; 0 for an empty mask.
    pub confidence: f64,
    /// One per requested vertebra, in the request's order.
    pub vertebrae: Vec<VertebraResult>,
    /// The U-Net's error channel (the VAE's error, smoothed and normalised per crop to
    /// `[0, 1]`) on the CT's grid, stitched like `probability`; when asked for.
    pub error_map: Option<Volume>,
    pub timings: StageTimings,
}

/// One vertebra's figures. Where two vertebrae's regions overlap, the voxels there count for
/// both.
#[derive(Debug, Clone, PartialEq)]
pub struct VertebraResult {
    pub label: Option<String>,
    pub body_box: Box3,
    /// The CT voxels its crop covers: body box plus margin, clipped to the CT.
    pub region: Box3,
    /// Whether its crop was larger than the patch and lost its outer parts (no prediction of
    /// its own there).
    pub oversize: bool,
    /// Largest probability in `region`.
    pub fracture_score: f32,
    /// Mask voxels in `region`.
    pub mask_voxels: usize,
    /// `mask_voxels` in mm^3.
    pub mask_volume_mm3: f64,
    /// Mean probability over its mask voxels; 0 when it has none.
    pub confidence: f64,
}

/// Wall time of each stage of one [`segment`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimings {
    /// Cutting, resampling and windowing the crops.
    pub crop: Duration,
    /// The VAE and the error maps made from its output; 0 for a slice model.
    pub vae: Duration,
    /// The U-Net, or a slice model's runs over every slice.
    pub unet: Duration,
    /// Pasting back and stitching.
    pub paste: Duration,
    /// The draft mask and the figures.
    pub mask: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("models {vae} (VAE) and {unet} (U-Net) do not work together: {problem}")]
    ModelPair { vae: String, unet: String, problem: String },
    #[error("model {model} cannot segment as a slice model ({SLICE_ARCHITECTURE}): {problem}")]
    SliceModel { model: String, problem: String },
    #[error("error_map: model {model} has no error map to give: a {SLICE_ARCHITECTURE} model reads no VAE's error map")]
    NoErrorMap { model: String },
    #[error("no vertebrae to examine")]
    NoVertebrae,
    #[error("CT has {count} non-finite voxels (NaN or infinite), first at [z, y, x] = {first:?}: {value}")]
    NonFiniteCt { count: usize, first: [usize; 3], value: f32 },
    /// `index` counts from 0 in the request's vertebrae.
    #[error("{}: body box outside the CT: {source}", vertebra_name(*.index, .label))]
    BodyBoxOutside { index: usize, label: Option<String>, source: GeometryError },
    /// `index` counts from 0 in the request's fracture boxes.
    #[error("fracture box #{index} outside the CT: {source}")]
    FractureBoxOutside { index: usize, source: GeometryError },
    #[error("mask threshold must be in (0, 1], got {0}")]
    Threshold(f32),
    #[error("{}: {source}", vertebra_name(*.index, .label))]
    Crop { index: usize, label: Option<String>, source: VertebraCropError },
    #[error("model {model}: ONNX Runtime failed: {source}")]
    Run { model: String, source: ort::Error },
    #[error("model {model}: output {output}: {problem}")]
    Output { model: String, output: String, problem: String },
    #[error("draft mask: {0}")]
    Mask(#[from] PseudoLabelError),
    #[error("cancelled")]
    Cancelled,
    #[error("deadline exceeded")]
    DeadlineExceeded,
}

/// "vertebra #2 (L1)", or "vertebra #2" without a label.
fn vertebra_name(index: usize, label: &Option<String>) -> String {
    match label {
        Some(label) => format!("vertebra #{index} ({label})"),
        None => format!("vertebra #{index}"),
    }
}

/// A VAE and the U-Net that reads its error maps, checked to work together.
#[derive(Debug)]
pub struct ModelPair<'a> {
    vae: &'a LoadedModel,
    unet: &'a LoadedModel,
    /// The error output of the VAE, as its manifest names it.
    vae_error: String,
    error_input: ErrorInput,
    /// The Gaussian importance of a crop, `[z, y, x]` of the patch.
    importance: Array3<f32>,
}

impl<'a> ModelPair<'a> {
    /// Checks that `unet` reads the error maps of `vae` (its manifest's `error_input` names
    /// this VAE's run and epoch, [`ModelManifest::takes_errors_from`]), that both prepare
    /// crops alike, and that their inputs and outputs are those the pipeline feeds and reads:
    /// one input each, `[batch, 1 | 2, patch]`.
    ///
    /// [`ModelManifest::takes_errors_from`]: fracmap_core::model_manifest::ModelManifest::takes_errors_from
    pub fn new(vae: &'a LoadedModel, unet: &'a LoadedModel) -> Result<Self, PipelineError> {
        let mismatch = |problem: String| PipelineError::ModelPair { vae: vae.id(), unet: unet.id(), problem };
        let (vm, um) = (&vae.manifest, &unet.manifest);
        let error_input = um
            .error_input
            .clone()
            .ok_or_else(|| mismatch("the U-Net's manifest has no error_input: it reads no VAE's error map".into()))?;
        let vae_error = vm
            .error_normalisation
            .as_ref()
            .map(|e| e.output.clone())
            .ok_or_else(|| mismatch("the VAE's manifest names no error output (error_normalisation)".into()))?;
        if vm.preprocessing != um.preprocessing {
            return Err(mismatch(format!(
                "their preprocessing differs: the VAE's {:?}, the U-Net's {:?}",
                vm.preprocessing, um.preprocessing
            )));
        }
        if !um.takes_errors_from(vm) {
            return Err(mismatch(format!(
                "the U-Net reads the error maps of VAE run {} at epoch {}; this VAE is run {} at epoch {}",
                error_input.vae_run.display(),
                error_input.vae_epoch,
                vm.training.as_ref().map_or("(none)".into(), |t| t.run.display().to_string()),
                vm.validation.as_ref().map_or("(none)".into(), |v| v.epoch.to_string()),
            )));
        }
        let sigma = error_input.error_sigma;
        if !(sigma.is_finite() && sigma >= 0.0) {
            return Err(mismatch(format!("error_input.error_sigma = {sigma}: must be finite and >= 0")));
        }
        error_input.error_norm.validate().map_err(|e| mismatch(e.to_string()))?;
        let spec = CropSpec::from(&um.preprocessing);
        spec.validate().map_err(|e| mismatch(e.to_string()))?;
        let patch = spec.patch;
        check_signature("VAE", &vm.inputs, &vm.outputs, 1, &vae_error, patch).map_err(mismatch)?;
        let [probability] = &um.outputs[..] else {
            return Err(mismatch(format!("the U-Net has {} outputs; the pipeline reads one", um.outputs.len())));
        };
        check_signature("U-Net", &um.inputs, &um.outputs, 2, &probability.name, patch).map_err(mismatch)?;
        let importance = gaussian_importance(patch, IMPORTANCE_SIGMA_FRACTION).map_err(|e| mismatch(e.to_string()))?;
        Ok(ModelPair { vae, unet, vae_error, error_input, importance })
    }

    /// How both models prepare a crop.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.unet.manifest.preprocessing
    }

    /// The draft-mask threshold without an override: the U-Net manifest's, else
    /// [`DEFAULT_MASK_THRESHOLD`].
    pub fn default_threshold(&self) -> f32 {
        self.unet.manifest.mask_threshold.unwrap_or(DEFAULT_MASK_THRESHOLD)
    }

    /// The normalised error maps of `crops` (windowed, `[z, y, x]` of the patch).
    fn error_maps(&self, crops: &[Array3<f32>], options: &SegmentOptions) -> Result<Vec<Array3<f32>>, PipelineError> {
        let input = &self.vae.manifest.inputs[0].name;
        let errors = run_batched(self.vae, input, &self.vae_error, &[crops], options)?;
        let ErrorInput { error_sigma, error_norm, .. } = self.error_input;
        Ok(errors
            .into_iter()
            .map(|error| {
                let error = if error_sigma > 0.0 { gaussian_smooth(&error, error_sigma) } else { error };
                normalise_error(&error, error_norm)
            })
            .collect())
    }

    /// The U-Net's probabilities of `crops` with their normalised `errors`.
    fn probabilities(
        &self,
        crops: &[Array3<f32>],
        errors: &[Array3<f32>],
        options: &SegmentOptions,
    ) -> Result<Vec<Array3<f32>>, PipelineError> {
        let manifest = &self.unet.manifest;
        run_batched(self.unet, &manifest.inputs[0].name, &manifest.outputs[0].name, &[crops, errors], options)
    }
}

/// A slice model, checked to be one the pipeline can run: the 2.5D pix2pix-LSTM generator
/// (manifest architecture [`SLICE_ARCHITECTURE`]), which predicts one axial slice of a crop
/// from the `context` slices around it and reads no VAE.
#[derive(Debug)]
pub struct SliceModel<'a> {
    model: &'a LoadedModel,
    /// Slices in a sequence, odd; the predicted one is the centre.
    context: usize,
}

impl<'a> SliceModel<'a> {
    /// Checks that `model`'s manifest is a [`SLICE_ARCHITECTURE`] model with a valid crop, one
    /// input `[batch, context, y, x]` (`context` fixed and odd; `y, x` the patch's) and one
    /// output `[batch, 1, y, x]`.
    pub fn new(model: &'a LoadedModel) -> Result<Self, PipelineError> {
        let refuse = |problem: String| PipelineError::SliceModel { model: model.id(), problem };
        let manifest = &model.manifest;
        if manifest.architecture != SLICE_ARCHITECTURE {
            return Err(refuse(format!("its manifest's architecture is {:?}", manifest.architecture)));
        }
        let spec = CropSpec::from(&manifest.preprocessing);
        spec.validate().map_err(|e| refuse(e.to_string()))?;
        let [_, h, w] = spec.patch.map(|n| n as u64);
        let ([input], [output]) = (&manifest.inputs[..], &manifest.outputs[..]) else {
            return Err(refuse(format!(
                "it has {} inputs and {} outputs; the pipeline feeds one and reads one",
                manifest.inputs.len(),
                manifest.outputs.len()
            )));
        };
        let context = match input.shape.get(1) {
            Some(&Dim::Fixed(context)) if context % 2 == 1 => context as usize,
            _ => {
                return Err(refuse(format!(
                    "its input {} has shape {:?}; the pipeline uses [batch, context, {h}, {w}] with a fixed, odd \
                     context (the predicted slice is the centre)",
                    input.name, input.shape
                )));
            }
        };
        let fits = |dim: &Dim, length: u64| matches!(dim, Dim::Dynamic(_)) || *dim == Dim::Fixed(length);
        for (tensor, channels) in [(input, context as u64), (output, 1)] {
            let ok = tensor.shape.len() == 4 && tensor.shape[1..].iter().zip([channels, h, w]).all(|(d, n)| fits(d, n));
            if !ok {
                return Err(refuse(format!(
                    "its {} has shape {:?}; the pipeline uses [batch, {channels}, {h}, {w}] (y, x of the patch {:?})",
                    tensor.name, tensor.shape, spec.patch
                )));
            }
        }
        Ok(SliceModel { model, context })
    }

    /// How the model prepares a crop.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.model.manifest.preprocessing
    }

    /// The draft-mask threshold without an override: the manifest's, else
    /// [`DEFAULT_MASK_THRESHOLD`].
    pub fn default_threshold(&self) -> f32 {
        self.model.manifest.mask_threshold.unwrap_or(DEFAULT_MASK_THRESHOLD)
    }

    /// The probability maps of `crops` (windowed, `[z, y, x]` of the patch): every slice `z`
    /// predicted as the centre of its sequence, in runs of at most `options.max_batch` crops'
    /// worth of sequences, checking `options.interrupt` before each.
    fn probabilities(
        &self,
        crops: &[Array3<f32>],
        options: &SegmentOptions,
    ) -> Result<Vec<Array3<f32>>, PipelineError> {
        let manifest = &self.model.manifest;
        let (input, output) = (&manifest.inputs[0].name, &manifest.outputs[0].name);
        let (depth, h, w) = crops[0].dim();
        let slices: Vec<(usize, usize)> =
            (0..crops.len()).flat_map(|crop| (0..depth).map(move |z| (crop, z))).collect();
        let mut maps: Vec<Array3<f32>> = crops.iter().map(|crop| Array3::zeros(crop.dim())).collect();
        for run_slices in slices.chunks(options.max_batch.get() * depth) {
            options.interrupt.check()?;
            let mut batch = Array4::zeros((run_slices.len(), self.context, h, w));
            for (i, &(crop, z)) in run_slices.iter().enumerate() {
                for (t, source) in sequence_indices(z, depth, self.context).enumerate() {
                    batch.slice_mut(s![i, t, .., ..]).assign(&crops[crop].index_axis(Axis(0), source));
                }
            }
            let planes = run(self.model, input, output, batch.view())?;
            for (i, &(crop, z)) in run_slices.iter().enumerate() {
                maps[crop].index_axis_mut(Axis(0), z).assign(&planes.slice(s![i, 0, .., ..]));
            }
        }
        Ok(maps)
    }
}

/// The slice indices of the sequence centred on slice `z` of a crop of `depth` slices, the
/// crop's edge slices repeated where the sequence reaches past them: `context = 5, z = 0`
/// gives `[0, 0, 0, 1, 2]`, as the trainer's `p2p::data::sequence_indices` (a test checks
/// they agree).
pub fn sequence_indices(z: usize, depth: usize, context: usize) -> impl Iterator<Item = usize> {
    let half = context / 2;
    (0..context).map(move |t| (z + t).saturating_sub(half).min(depth - 1))
}

/// The models [`segment`] runs on a CT's crops: a [`ModelPair`] or a [`SliceModel`].
#[derive(Debug, Clone, Copy)]
pub enum CropModels<'a> {
    Pair(&'a ModelPair<'a>),
    Slices(&'a SliceModel<'a>),
}

impl<'r, 'a: 'r> From<&'r ModelPair<'a>> for CropModels<'r> {
    fn from(pair: &'r ModelPair<'a>) -> Self {
        CropModels::Pair(pair)
    }
}

impl<'r, 'a: 'r> From<&'r SliceModel<'a>> for CropModels<'r> {
    fn from(slices: &'r SliceModel<'a>) -> Self {
        CropModels::Slices(slices)
    }
}

/// What the models made of the crops: the probability maps and, for a pair, the normalised
/// error maps the U-Net read (each `[z, y, x]` of the patch).
struct Predictions {
    probabilities: Vec<Array3<f32>>,
    errors: Option<Vec<Array3<f32>>>,
}

impl CropModels<'_> {
    /// How the models prepare a crop.
    pub fn preprocessing(&self) -> &Preprocessing {
        match self {
            CropModels::Pair(pair) => pair.preprocessing(),
            CropModels::Slices(slices) => slices.preprocessing(),
        }
    }

    /// The draft-mask threshold without an override.
    pub fn default_threshold(&self) -> f32 {
        match self {
            CropModels::Pair(pair) => pair.default_threshold(),
            CropModels::Slices(slices) => slices.default_threshold(),
        }
    }

    /// The weight of a crop's voxels where crops overlap besides the paste weight, `[z, y, x]`
    /// of the patch: a pair's Gaussian importance; none for a slice model (a plain mean).
    fn importance(&self) -> Option<&Array3<f32>> {
        match self {
            CropModels::Pair(pair) => Some(&pair.importance),
            CropModels::Slices(_) => None,
        }
    }

    /// The models run on `crops` (windowed), timed into `timings.vae` and `timings.unet`.
    fn predict(
        &self,
        crops: &[Array3<f32>],
        options: &SegmentOptions,
        timings: &mut StageTimings,
    ) -> Result<Predictions, PipelineError> {
        match self {
            CropModels::Pair(pair) => {
                let started = Instant::now();
                let errors = pair.error_maps(crops, options)?;
                timings.vae = started.elapsed();
                let started = Instant::now();
                let probabilities = pair.probabilities(crops, &errors, options)?;
                options.interrupt.check()?;
                timings.unet = started.elapsed();
                Ok(Predictions { probabilities, errors: Some(errors) })
            }
            CropModels::Slices(slices) => {
                let started = Instant::now();
                let probabilities = slices.probabilities(crops, options)?;
                options.interrupt.check()?;
                timings.unet = started.elapsed();
                Ok(Predictions { probabilities, errors: None })
            }
        }
    }

    /// Whether the models make an error map ([`SegmentOptions::error_map`]); the slice
    /// model's error when not.
    fn check_error_map(&self) -> Result<(), PipelineError> {
        match self {
            CropModels::Pair(_) => Ok(()),
            CropModels::Slices(slices) => Err(PipelineError::NoErrorMap { model: slices.model.id() }),
        }
    }
}

/// Whether a model has one input `[batch, channels, patch]` (a dynamic axis fits any length)
/// and `output` among its outputs, the same shape with one channel.
fn check_signature(
    role: &str,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    channels: u64,
    output: &str,
    patch: [usize; 3],
) -> Result<(), String> {
    let [input] = inputs else {
        return Err(format!("the {role} has {} inputs; the pipeline feeds one", inputs.len()));
    };
    let output = outputs
        .iter()
        .find(|o| o.name == output)
        .ok_or_else(|| format!("the {role}'s manifest has no output {output:?}"))?;
    for (spec, channels) in [(input, channels), (output, 1)] {
        let fits = |dim: &Dim, length: u64| matches!(dim, Dim::Dynamic(_)) || *dim == Dim::Fixed(length);
        let expected = [channels].into_iter().chain(patch.map(|n| n as u64));
        let ok = spec.shape.len() == 5 && spec.shape[1..].iter().zip(expected).all(|(dim, n)| fits(dim, n));
        if !ok {
            return Err(format!(
                "the {role}'s {} has shape {:?}; the pipeline uses [batch, {channels}, {patch:?}]",
                spec.name, spec.shape
            ));
        }
    }
    Ok(())
}

/// Runs `model` on `channels` (each a list of `[z, y, x]` crops of one shape, all lists as
/// long) as `[batch, channels, z, y, x]` in runs of at most `options.max_batch` crops,
/// checking `options.interrupt` before each; returns the one-channel `output` of every crop.
fn run_batched(
    model: &LoadedModel,
    input: &str,
    output: &str,
    channels: &[&[Array3<f32>]],
    options: &SegmentOptions,
) -> Result<Vec<Array3<f32>>, PipelineError> {
    let max_batch = options.max_batch;
    let count = channels[0].len();
    let (d, h, w) = channels[0][0].dim();
    let mut results = Vec::with_capacity(count);
    for start in (0..count).step_by(max_batch.get()) {
        options.interrupt.check()?;
        let end = (start + max_batch.get()).min(count);
        let mut batch = Array5::zeros((end - start, channels.len(), d, h, w));
        for (c, crops) in channels.iter().enumerate() {
            for (i, crop) in crops[start..end].iter().enumerate() {
                batch.slice_mut(s![i, c, .., .., ..]).assign(crop);
            }
        }
        let maps = run(model, input, output, batch.view())?;
        results.extend(maps.axis_iter(Axis(0)).map(|map| map.index_axis(Axis(0), 0).to_owned()));
    }
    Ok(results)
}

/// One run of `model` on `batch` `[n, c, ...]` (`[n, c, z, y, x]` crops, `[n, c, y, x]`
/// slice sequences); its `output`, checked `[n, 1, ...]`. Holds one of the model's sessions
/// for the run alone.
fn run<D: Dimension + 'static>(
    model: &LoadedModel,
    input: &str,
    output: &str,
    batch: ArrayView<'_, f32, D>,
) -> Result<Array<f32, D>, PipelineError> {
    let failed = |source| PipelineError::Run { model: model.id(), source };
    let bad_output = |problem: String| PipelineError::Output { model: model.id(), output: output.to_string(), problem };
    let mut expected = batch.raw_dim();
    expected[1] = 1;
    let tensor = TensorRef::from_array_view(batch).map_err(failed)?;
    let mut session = model.sessions.get();
    let outputs = session.run(ort::inputs![input => tensor]).map_err(failed)?;
    let value = outputs.get(output).ok_or_else(|| bad_output("not among the graph's outputs".to_string()))?;
    let array = value.try_extract_array::<f32>().map_err(failed)?;
    let shape = array.shape().to_vec();
    let array = array
        .into_dimensionality::<D>()
        .ok()
        .filter(|a| a.raw_dim() == expected)
        .ok_or_else(|| bad_output(format!("shape {shape:?}, expected {:?}", expected.slice())))?;
    Ok(array.to_owned())
}

/// Examines `vertebrae` of `ct` (HU, any grid) with `models` (a [`ModelPair`] or a
/// [`SliceModel`], or [`CropModels`]): the module's five steps. The draft mask stays inside
/// `fracture_boxes` (the CT's voxels) when there are any.
///
/// Fails, before running a model, on an empty list of vertebrae, a non-finite CT voxel, a
/// body or fracture box reaching outside the CT, a threshold outside `(0, 1]`, or an error map
/// asked of a slice model; and on a model run that fails or returns what its manifest did not
/// promise.
pub fn segment<'a>(
    ct: &Volume,
    vertebrae: &[Vertebra],
    fracture_boxes: &[Box3],
    models: impl Into<CropModels<'a>>,
    options: &SegmentOptions,
) -> Result<Segmentation, PipelineError> {
    let models = models.into();
    let threshold = options.threshold.unwrap_or_else(|| models.default_threshold());
    let mask_config = PseudoLabelConfig { threshold, min_component_voxels: options.min_component_voxels };
    check_request(ct, vertebrae, fracture_boxes, &mask_config)?;
    if options.error_map {
        models.check_error_map()?;
    }
    options.interrupt.check()?;
    let mut timings = StageTimings::default();

    let crop_error =
        |index: usize| move |source| PipelineError::Crop { index, label: vertebrae[index].label.clone(), source };

    let started = Instant::now();
    let spec = CropSpec::from(models.preprocessing());
    let crops: Vec<VertebraCrop> = vertebrae
        .iter()
        .enumerate()
        .map(|(index, vertebra)| cut_vertebra(ct, &vertebra.body_box, &spec, AIR_HU).map_err(crop_error(index)))
        .collect::<Result<_, _>>()?;
    let window = models.preprocessing().hu_window;
    let windowed: Vec<Array3<f32>> = crops.iter().map(|crop| window.apply(&crop.ct).into_data()).collect();
    timings.crop = started.elapsed();

    let Predictions { probabilities, errors } = models.predict(&windowed, options, &mut timings)?;

    let started = Instant::now();
    let mut pasted = Vec::with_capacity(crops.len());
    for (index, crop) in crops.iter().enumerate() {
        let probability = crop.paste_back(probabilities[index].view()).map_err(crop_error(index))?;
        let weight = match models.importance() {
            Some(importance) => {
                let importance = crop.paste_back(importance.view()).map_err(crop_error(index))?;
                &probability.weight * &importance.values
            }
            None => probability.weight.clone(),
        };
        let error = errors
            .as_ref()
            .filter(|_| options.error_map)
            .map(|errors| crop.paste_back(errors[index].view()))
            .transpose()
            .map_err(crop_error(index))?;
        pasted.push(Pasted { probability, error, weight });
    }
    let bounds = union(pasted.iter().map(|p| p.probability.region)).ok_or(PipelineError::NoVertebrae)?;
    let stitch = |map: fn(&Pasted) -> Option<&PastedPrediction>| {
        let mut stitched = Stitch::new(bounds);
        for p in &pasted {
            if let Some(prediction) = map(p) {
                stitched.add(prediction, p.weight.view());
            }
        }
        stitched.on_grid_of(ct)
    };
    let probability = stitch(|p| Some(&p.probability));
    let error_map = options.error_map.then(|| stitch(|p| p.error.as_ref()));
    timings.paste = started.elapsed();
    options.interrupt.check()?;

    let started = Instant::now();
    let label = draft_mask(&probability, bounds, fracture_boxes, &mask_config)?;
    let voxel_mm3: f64 = ct.spacing().iter().product();
    let results = vertebrae
        .iter()
        .zip(&crops)
        .zip(&pasted)
        .map(|((vertebra, crop), pasted)| {
            let region = pasted.probability.region;
            let [z, y, x] = region.ranges();
            let p = probability.data().slice(s![z.clone(), y.clone(), x.clone()]);
            let mask = label.mask.slice(s![z, y, x]);
            let (voxels, sum) = Zip::from(&mask)
                .and(&p)
                .fold((0usize, 0.0f64), |(n, sum), &m, &p| if m { (n + 1, sum + f64::from(p)) } else { (n, sum) });
            VertebraResult {
                label: vertebra.label.clone(),
                body_box: vertebra.body_box,
                region,
                oversize: crop.oversize(),
                fracture_score: p.fold(0.0f32, |max, &v| max.max(v)),
                mask_voxels: voxels,
                mask_volume_mm3: voxels as f64 * voxel_mm3,
                confidence: if voxels == 0 { 0.0 } else { sum / voxels as f64 },
            }
        })
        .collect();
    timings.mask = started.elapsed();

    Ok(Segmentation {
        probability,
        mask: label.mask,
        threshold,
        mask_voxels: label.voxels,
        mask_volume_mm3: label.volume_mm3,
        confidence: label.confidence,
        vertebrae: results,
        error_map,
        timings,
    })
}

/// What the request must satisfy before a model runs.
fn check_request(
    ct: &Volume,
    vertebrae: &[Vertebra],
    fracture_boxes: &[Box3],
    mask_config: &PseudoLabelConfig,
) -> Result<(), PipelineError> {
    if vertebrae.is_empty() {
        return Err(PipelineError::NoVertebrae);
    }
    if mask_config.validate().is_err() {
        return Err(PipelineError::Threshold(mask_config.threshold));
    }
    let shape = ct.shape();
    for (index, vertebra) in vertebrae.iter().enumerate() {
        vertebra.body_box.check_inside(shape).map_err(|source| PipelineError::BodyBoxOutside {
            index,
            label: vertebra.label.clone(),
            source,
        })?;
    }
    for (index, fracture_box) in fracture_boxes.iter().enumerate() {
        fracture_box.check_inside(shape).map_err(|source| PipelineError::FractureBoxOutside { index, source })?;
    }
    // A flat scan first: a 300 MB CT is almost always clean, and indexing every voxel is slow.
    let voxels = ct.as_slice();
    if let Some(at) = voxels.iter().position(|hu| !hu.is_finite()) {
        let [_, h, w] = ct.shape();
        let count = voxels[at..].iter().filter(|hu| !hu.is_finite()).count();
        let first = [at / (h * w), at / w % h, at % w];
        return Err(PipelineError::NonFiniteCt { count, first, value: voxels[at] });
    }
    Ok(())
}

/// [`pseudo_label`] of `probability` computed within `bounds` alone, the mask then placed on
/// the whole grid: the same answer (`P` is 0 outside, below any threshold, and components
/// cannot cross into it) without passes over every voxel of a 300 MB CT.
fn draft_mask(
    probability: &Volume,
    bounds: Box3,
    fracture_boxes: &[Box3],
    config: &PseudoLabelConfig,
) -> Result<PseudoLabel, PipelineError> {
    let [z, y, x] = bounds.ranges();
    let within = probability.data().slice(s![z.clone(), y.clone(), x.clone()]).to_owned();
    let within = Volume::with_spacing(within, probability.spacing()).expect("a part of a valid volume");
    let origin = bounds.min();
    let boxes: Vec<Box3> = fracture_boxes
        .iter()
        .filter_map(|b| b.intersect(&bounds))
        .map(|b| {
            let shift = |corner: [usize; 3]| std::array::from_fn(|a| corner[a] - origin[a]);
            Box3::new(shift(b.min()), shift(b.max())).expect("an intersection is not empty")
        })
        .collect();
    let mut label = if !fracture_boxes.is_empty() && boxes.is_empty() {
        // Every fracture box lies where no crop reached: the draft is empty.
        let mask = Mask::from_elem(within.shape(), false);
        PseudoLabel { mask, voxels: 0, volume_mm3: 0.0, confidence: 0.0, components: 0, removed_components: 0 }
    } else {
        pseudo_label(&within, &boxes, config)?
    };
    let mut mask = Mask::from_elem(probability.shape(), false);
    mask.slice_mut(s![z, y, x]).assign(&label.mask);
    label.mask = mask;
    Ok(label)
}

/// One vertebra's predictions on the CT's grid and its stitching weight there (the paste
/// weight, times the pasted Gaussian importance for a pair), all on `probability.region`.
struct Pasted {
    probability: PastedPrediction,
    error: Option<PastedPrediction>,
    weight: Array3<f32>,
}

/// The smallest box holding every one of `boxes`; `None` for none.
fn union(boxes: impl Iterator<Item = Box3>) -> Option<Box3> {
    boxes.reduce(|a, b| {
        let (min, max) =
            (std::array::from_fn(|i| a.min()[i].min(b.min()[i])), std::array::from_fn(|i| a.max()[i].max(b.max()[i])));
        Box3::new(min, max).expect("the union of non-empty boxes is not empty")
    })
}

/// The weighted mean of pasted predictions, accumulated over `bounds` only (the vertebrae's
/// part of the CT, not the whole scan).
struct Stitch {
    bounds: Box3,
    sum: Array3<f32>,
    total: Array3<f32>,
}

impl Stitch {
    fn new(bounds: Box3) -> Self {
        Stitch { bounds, sum: Array3::zeros(bounds.shape()), total: Array3::zeros(bounds.shape()) }
    }

    /// Adds `prediction` with `weight` (on `prediction.region`, inside the bounds).
    fn add(&mut self, prediction: &PastedPrediction, weight: ArrayView3<'_, f32>) {
        let region = prediction.region;
        let [z, y, x]: [std::ops::Range<usize>; 3] =
            std::array::from_fn(|a| region.min()[a] - self.bounds.min()[a]..region.max()[a] - self.bounds.min()[a]);
        Zip::from(self.sum.slice_mut(s![z.clone(), y.clone(), x.clone()]))
            .and(self.total.slice_mut(s![z, y, x]))
            .and(&prediction.values)
            .and(&weight)
            .for_each(|sum, total, &value, &weight| {
                *sum += value * weight;
                *total += weight;
            });
    }

    /// The stitched map on `ct`'s grid: 0 where nothing was added, clamped to `[0, 1]` (the
    /// mean of values in `[0, 1]` leaves it only by rounding).
    fn on_grid_of(self, ct: &Volume) -> Volume {
        let mut data = Array3::zeros(ct.shape());
        let [z, y, x] = self.bounds.ranges();
        Zip::from(data.slice_mut(s![z, y, x])).and(&self.sum).and(&self.total).for_each(|out, &sum, &total| {
            *out = if total > 0.0 { (sum / total).clamp(0.0, 1.0) } else { 0.0 };
        });
        ct.with_data(data).expect("the CT's own shape and grid")
    }
}
