//! The pipeline with a slice model: a tiny untrained 2.5D pix2pix-LSTM generator, exported by
//! the trainer's ONNX exporter into a model repository and loaded into ONNX Runtime, run on the
//! pipeline test's CT (oblique affine, two vertebrae whose crops overlap) and compared with the
//! trainer's own 3D integration of the Burn generator the graph came from.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use burn::prelude::*;
use fracmap_core::model_manifest::{Dim, ModelManifest};
use fracmap_core::vertebra_crop::{AIR_HU, CropSpec, cut_vertebra};
use fracmap_core::volume::Affine;
use fracmap_core::{Box3, Volume};
use fracmap_server::models::{LoadedModel, load_models};
use fracmap_server::pipeline::{
    PipelineError, SegmentOptions, Segmentation, SliceModel, Vertebra, segment, sequence_indices,
};
use fracmap_server::repository::ModelRepository;
use fracmap_server::runtime::default_library_path;
use fracmap_server::{OnnxRuntime, SessionSettings};
use fracmap_trainer::p2p::integrate::{VolumeIntegrator, predict_crop};
use ndarray::Array3;

#[path = "common/tiny_p2p.rs"]
mod tiny_p2p;
#[path = "common/tiny_pair.rs"]
mod tiny_pair;

/// Largest difference allowed between the pipeline (ONNX Runtime) and the trainer (Burn) on a
/// probability: float32 with other summation orders, through one linear resampling and a
/// mean; the pair's tests allow the same.
const TOLERANCE: f32 = 1e-4;

const CT_SHAPE: [usize; 3] = [28, 40, 40];
const CT_SPACING: [f64; 3] = [1.5, 1.0, 1.0];

/// The tiny generator, loaded from a repository of its own.
struct Model {
    _repository: tempfile::TempDir,
    model: LoadedModel,
}

/// Exports the tiny generator with its manifest changed by `edit` into a new repository and
/// loads it on CPU.
fn load(edit: impl FnOnce(&mut ModelManifest)) -> Model {
    let repository = tempfile::tempdir().unwrap();
    tiny_p2p::write_repository(repository.path(), edit);
    let scanned = ModelRepository::scan(repository.path()).unwrap();
    assert!(scanned.skipped().is_empty(), "{:?}", scanned.skipped());
    let runtime = OnnxRuntime::init(&default_library_path()).unwrap_or_else(|error| panic!("{error}"));
    let settings = SessionSettings { device: fracmap_server::Device::Cpu, intra_threads: NonZeroUsize::MIN };
    let model = load_models(runtime, &scanned, &settings, NonZeroUsize::MIN).unwrap().pop().unwrap();
    Model { _repository: repository, model }
}

/// The model as exported, shared by the tests that do not change it.
fn model() -> &'static LoadedModel {
    static MODEL: OnceLock<Model> = OnceLock::new();
    &MODEL.get_or_init(|| load(|_| {})).model
}

fn slice_model() -> SliceModel<'static> {
    SliceModel::new(model()).unwrap()
}

/// The pipeline test's CT: a bright column in soft tissue, structure along every axis, x and
/// y swapped (one flipped) against the world's axes.
fn ct() -> Volume {
    let data = Array3::from_shape_fn(CT_SHAPE, |(z, y, x)| {
        let (z, y, x) = (z as f32, y as f32, x as f32);
        let r2 = (y - 20.0).powi(2) + (x - 20.0).powi(2);
        -100.0 + 900.0 * (-r2 / 40.0).exp() + 80.0 * (0.7 * z).sin() * (0.4 * x).cos() + 40.0 * (0.9 * y).cos()
    });
    let [sz, sy, sx] = CT_SPACING;
    let affine: Affine = [[0.0, -sy, 0.0, 30.0], [sx, 0.0, 0.0, -12.0], [0.0, 0.0, sz, 7.5], [0.0, 0.0, 0.0, 1.0]];
    Volume::new(data, CT_SPACING, affine).unwrap()
}

/// Crop z 4..14 (8 slices at 2 mm), y 11..27, x 12..28 (8 voxels, padded to 16 in x).
fn l1() -> Vertebra {
    Vertebra { label: Some("L1".to_string()), body_box: Box3::new([6, 14, 15], [12, 24, 25]).unwrap() }
}

/// Crop z 11..20, overlapping L1's in z 11..14.
fn l2() -> Vertebra {
    Vertebra { label: Some("L2".to_string()), body_box: Box3::new([13, 16, 14], [18, 26, 24]).unwrap() }
}

fn run(vertebrae: &[Vertebra], options: &SegmentOptions) -> Segmentation {
    segment(&ct(), vertebrae, &[], &slice_model(), options).unwrap()
}

fn max_difference<'a>(a: impl IntoIterator<Item = &'a f32>, b: impl IntoIterator<Item = &'a f32>) -> f32 {
    a.into_iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// The trainer's map of `vertebrae`: each crop cut and windowed as the crop cache does,
/// predicted slice by slice by the Burn generator ([`predict_crop`]), pasted back and averaged
/// ([`VolumeIntegrator`]).
fn trainer_map(vertebrae: &[Vertebra]) -> Volume {
    let (ct, spec, generator) = (ct(), CropSpec::from(&tiny_p2p::preprocessing()), tiny_p2p::generator());
    let mut integrator = VolumeIntegrator::new(ct.grid());
    for vertebra in vertebrae {
        let crop = cut_vertebra(&ct, &vertebra.body_box, &spec, AIR_HU).unwrap();
        let windowed = tiny_p2p::preprocessing().hu_window.apply(&crop.ct).into_data();
        let map = predict_crop(&generator, &windowed, 3, &Device::flex()).unwrap();
        integrator.add(&crop, &map).unwrap();
    }
    integrator.finish().unwrap().0
}

#[test]
fn overlapping_vertebrae_match_the_trainers_3d_integration() {
    let found = run(&[l1(), l2()], &SegmentOptions::default());
    let expected = trainer_map(&[l1(), l2()]);
    assert_eq!(found.probability.grid(), ct().grid());
    let spread = expected.data().iter().filter(|&&p| p > 0.0).fold(0.0f32, |m, &p| m.max((p - 0.5).abs()));
    assert!(spread > 1e-3, "the probabilities vary (by {spread} about 0.5), so a mix-up would show");
    let difference = max_difference(found.probability.data(), expected.data());
    println!("max |pipeline - trainer| over the CT: {difference:.2e}");
    assert!(difference <= TOLERANCE, "{difference}");
    // Outside the crops both are 0, inside a sigmoid is never 0: the same voxels covered.
    let covered = |v: &Volume| v.data().mapv(|p| p > 0.0);
    assert_eq!(covered(&found.probability), covered(&expected));
}

#[test]
fn one_vertebra_alone_matches_the_trainer_and_is_not_oversize() {
    let found = run(&[l1()], &SegmentOptions::default());
    let difference = max_difference(found.probability.data(), trainer_map(&[l1()]).data());
    println!("max |pipeline - trainer|, L1 alone: {difference:.2e}");
    assert!(difference <= TOLERANCE, "{difference}");
    assert_eq!(found.vertebrae[0].region, Box3::new([4, 11, 12], [14, 27, 28]).unwrap());
    assert!(!found.vertebrae[0].oversize);
}

#[test]
fn sequences_batched_by_crops_or_one_crop_at_a_time_give_the_same_result() {
    let batched = run(&[l1(), l2()], &SegmentOptions::default());
    let one_crop = run(&[l1(), l2()], &SegmentOptions { max_batch: NonZeroUsize::MIN, ..SegmentOptions::default() });
    let difference = max_difference(batched.probability.data(), one_crop.probability.data());
    println!("max |16 sequences a run - 8 a run| = {difference:.2e}");
    assert!(difference <= 1e-6, "{difference}");
}

#[test]
fn sequence_indices_are_the_trainers() {
    for context in [1, 3, 5, 7] {
        for depth in 1..=9 {
            for z in 0..depth {
                let ours: Vec<usize> = sequence_indices(z, depth, context).collect();
                let trainers = fracmap_trainer::p2p::data::sequence_indices(z, depth, context);
                assert_eq!(ours, trainers, "context {context}, depth {depth}, z {z}");
            }
        }
    }
    assert_eq!(sequence_indices(0, 8, 5).collect::<Vec<_>>(), [0, 0, 0, 1, 2]);
}

#[test]
fn the_threshold_is_the_manifests_unless_the_request_gives_one() {
    let options = SegmentOptions { min_component_voxels: 1, ..SegmentOptions::default() };
    for (threshold, expected) in [(None, tiny_p2p::MASK_THRESHOLD), (Some(0.55), 0.55)] {
        let found = run(&[l1()], &SegmentOptions { threshold, ..options.clone() });
        assert_eq!(found.threshold, expected);
        assert_eq!(found.mask, found.probability.data().mapv(|p| p >= expected), "threshold {expected}");
    }
}

#[test]
fn an_error_map_is_refused_naming_the_field() {
    let options = SegmentOptions { error_map: true, ..SegmentOptions::default() };
    let error = segment(&ct(), &[l1()], &[], &slice_model(), &options).unwrap_err();
    assert!(matches!(error, PipelineError::NoErrorMap { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "error_map: model p2p_lstm version 1 has no error map to give: a p2p_lstm model reads no VAE's error map"
    );
}

fn refusal(edit: impl FnOnce(&mut ModelManifest)) -> String {
    let model = load(edit);
    match SliceModel::new(&model.model) {
        Err(error @ PipelineError::SliceModel { .. }) => error.to_string(),
        other => panic!("expected a slice model error, got {other:?}"),
    }
}

#[test]
fn an_even_context_is_refused() {
    let problem = refusal(|m| m.inputs[0].shape[1] = Dim::Fixed(4));
    assert!(
        problem.starts_with("model p2p_lstm version 1 cannot segment as a slice model (p2p_lstm): its input slices"),
        "{problem}"
    );
    assert!(problem.contains("with a fixed, odd context"), "{problem}");
}

#[test]
fn slices_of_another_size_than_the_patch_are_refused() {
    // The graph's slices are 8 x 16; a manifest that crops 8 x 8.
    let problem = refusal(|m| m.preprocessing.patch = [8, 8, 8]);
    assert!(problem.contains("the pipeline uses [batch, 5, 8, 8] (y, x of the patch [8, 8, 8])"), "{problem}");
}

#[test]
fn a_five_dimensional_output_is_refused() {
    let problem = refusal(|m| m.outputs[0].shape.push(Dim::Fixed(1)));
    assert!(problem.contains("its probability has shape"), "{problem}");
}

#[test]
fn a_model_of_another_architecture_is_refused() {
    let problem = refusal(|m| m.architecture = "unet".to_string());
    assert!(problem.ends_with("its manifest's architecture is \"unet\""), "{problem}");
}
