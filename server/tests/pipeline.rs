//! The inference pipeline end to end on real exported models: a tiny untrained VAE and U-Net,
//! exported by the trainer's ONNX exporter into a model repository, loaded into ONNX Runtime
//! (the library `scripts/setup.sh` installs) and run on a small synthetic CT with an oblique
//! affine and two vertebrae whose crops overlap. One vertebra is recomputed with the Burn
//! models the graphs came from.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use burn::prelude::*;
use burn::tensor::TensorData;
use fracmap_core::error_norm::normalise_error;
use fracmap_core::model_manifest::{Dim, ModelManifest};
use fracmap_core::smoothing::gaussian_smooth;
use fracmap_core::vertebra_crop::{AIR_HU, CropSpec, cut_vertebra};
use fracmap_core::volume::Affine;
use fracmap_core::{Box3, ErrorNorm, Volume};
use fracmap_server::models::{LoadedModel, load_models};
use fracmap_server::pipeline::{Interrupt, ModelPair, PipelineError, SegmentOptions, Segmentation, Vertebra, segment};
use fracmap_server::repository::ModelRepository;
use fracmap_server::runtime::default_library_path;
use fracmap_server::{OnnxRuntime, SessionSettings};
use ndarray::{Array3, s};

#[path = "common/tiny_pair.rs"]
mod tiny_pair;
use tiny_pair::*;

/// Largest difference allowed between the pipeline (ONNX Runtime) and the Burn models on a
/// probability or a normalised error, as in the trainer's parity tests: float32 with other
/// summation orders, through a per-crop normalisation and two linear resamplings.
const TOLERANCE: f32 = 1e-4;

const CT_SHAPE: [usize; 3] = [28, 40, 40];
/// `[z, y, x]` mm: thicker slices than the crops' 2 mm in z, thinner in y and x.
const CT_SPACING: [f64; 3] = [1.5, 1.0, 1.0];

/// The pair of tiny models, loaded from a repository of their own.
struct Models {
    _repository: tempfile::TempDir,
    vae: LoadedModel,
    unet: LoadedModel,
}

impl Models {
    fn pair(&self) -> ModelPair<'_> {
        ModelPair::new(&self.vae, &self.unet).unwrap()
    }
}

/// Exports the tiny models with manifests changed by `edit(vae, unet)` into a new repository
/// and loads them on CPU.
fn load(edit: impl FnOnce(&mut ModelManifest, &mut ModelManifest)) -> Models {
    let repository = tempfile::tempdir().unwrap();
    write_repository(repository.path(), edit);
    let scanned = ModelRepository::scan(repository.path()).unwrap();
    assert!(scanned.skipped().is_empty(), "{:?}", scanned.skipped());
    let runtime = OnnxRuntime::init(&default_library_path()).unwrap_or_else(|error| panic!("{error}"));
    let settings = SessionSettings { device: fracmap_server::Device::Cpu, intra_threads: NonZeroUsize::MIN };
    let mut loaded = load_models(runtime, &scanned, &settings, NonZeroUsize::MIN).unwrap();
    let vae = loaded.pop().unwrap();
    let unet = loaded.pop().unwrap();
    assert_eq!((vae.manifest.name.as_str(), unet.manifest.name.as_str()), ("vae", "unet"));
    Models { _repository: repository, vae, unet }
}

/// The models as exported, shared by the tests that do not change them.
fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| load(|_, _| {}))
}

/// x and y swapped (one flipped) against the world's axes, with an origin.
fn oblique_affine([sz, sy, sx]: [f64; 3]) -> Affine {
    [[0.0, -sy, 0.0, 30.0], [sx, 0.0, 0.0, -12.0], [0.0, 0.0, sz, 7.5], [0.0, 0.0, 0.0, 1.0]]
}

/// A bright column (the vertebral bodies) in soft tissue, with some structure along every axis.
fn ct() -> Volume {
    let data = Array3::from_shape_fn(CT_SHAPE, |(z, y, x)| {
        let (z, y, x) = (z as f32, y as f32, x as f32);
        let r2 = (y - 20.0).powi(2) + (x - 20.0).powi(2);
        -100.0 + 900.0 * (-r2 / 40.0).exp() + 80.0 * (0.7 * z).sin() * (0.4 * x).cos() + 40.0 * (0.9 * y).cos()
    });
    Volume::new(data, CT_SPACING, oblique_affine(CT_SPACING)).unwrap()
}

/// L1: its crop covers CT z 4..14, y 11..27, x 12..28, exactly the patch once resampled.
fn l1() -> Vertebra {
    Vertebra { label: Some("L1".to_string()), body_box: Box3::new([6, 14, 15], [12, 24, 25]).unwrap() }
}

/// L2: its crop covers CT z 11..20 (7 crop voxels, padded to 8), y 13..29, x 11..27; it
/// overlaps L1's in z 11..14.
fn l2() -> Vertebra {
    Vertebra { label: Some("L2".to_string()), body_box: Box3::new([13, 16, 14], [18, 26, 24]).unwrap() }
}

fn with_error_map() -> SegmentOptions {
    SegmentOptions { error_map: true, ..SegmentOptions::default() }
}

fn run(vertebrae: &[Vertebra], options: &SegmentOptions) -> Segmentation {
    segment(&ct(), vertebrae, &[], &models().pair(), options).unwrap()
}

fn run_err(ct: &Volume, vertebrae: &[Vertebra], fracture_boxes: &[Box3], options: &SegmentOptions) -> PipelineError {
    segment(ct, vertebrae, fracture_boxes, &models().pair(), options).expect_err("bad input")
}

fn region_values(volume: &Volume, region: &Box3) -> Array3<f32> {
    let [z, y, x] = region.ranges();
    volume.data().slice(s![z, y, x]).to_owned()
}

fn max_difference<'a>(a: impl IntoIterator<Item = &'a f32>, b: impl IntoIterator<Item = &'a f32>) -> f32 {
    a.into_iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[test]
fn outputs_lie_on_the_ct_grid_and_are_zero_away_from_the_vertebrae() {
    let ct = ct();
    let found = segment(&ct, &[l1(), l2()], &[], &models().pair(), &with_error_map()).unwrap();
    let error_map = found.error_map.as_ref().expect("asked for");
    assert_eq!(found.probability.grid(), ct.grid());
    assert_eq!(error_map.grid(), ct.grid());
    assert_eq!(found.mask.shape(), CT_SHAPE);

    let regions: Vec<Box3> = found.vertebrae.iter().map(|v| v.region).collect();
    assert_eq!(regions[0], Box3::new([4, 11, 12], [14, 27, 28]).unwrap(), "L1: body box + 2, 3, 3 voxels");
    assert_eq!(regions[1], Box3::new([11, 13, 11], [20, 29, 27]).unwrap(), "L2: body box + 2, 3, 3 voxels");
    for map in [&found.probability, error_map] {
        for (at, &value) in map.data().indexed_iter() {
            let at = [at.0, at.1, at.2];
            if regions.iter().any(|r| r.contains(at)) {
                assert!(value.is_finite() && (0.0..=1.0).contains(&value), "{at:?}: {value}");
            } else {
                assert_eq!(value, 0.0, "{at:?} lies in no crop");
            }
        }
    }
    // Every voxel of a crop gets a prediction: a sigmoid is never 0.
    assert!(regions.iter().all(|r| region_values(&found.probability, r).iter().all(|&p| p > 0.0)));

    let labels: Vec<_> = found.vertebrae.iter().map(|v| v.label.as_deref()).collect();
    assert_eq!(labels, [Some("L1"), Some("L2")]);
    for vertebra in &found.vertebrae {
        let max = region_values(&found.probability, &vertebra.region).fold(0.0f32, |m, &p| m.max(p));
        assert_eq!(vertebra.fracture_score, max);
        assert!(!vertebra.oversize);
    }
}

#[test]
fn one_vertebra_matches_its_burn_models() {
    let found = run(&[l1()], &with_error_map());

    // The same crop through the Burn models the graphs were exported from.
    let crop = cut_vertebra(&ct(), &l1().body_box, &CropSpec::from(&preprocessing()), AIR_HU).unwrap();
    let windowed = preprocessing().hu_window.apply(&crop.ct).into_data();
    let device = Device::flex();
    let [d, h, w] = PATCH;
    let tensor = |channels: &[&Array3<f32>]| {
        let values: Vec<f32> = channels.iter().flat_map(|c| c.iter().copied()).collect();
        Tensor::<5>::from_data(TensorData::new(values, [1, channels.len(), d, h, w]), &device)
    };
    let array = |t: Tensor<5>| Array3::from_shape_vec(PATCH, t.into_data().try_to_vec::<f32>().unwrap()).unwrap();
    let error = array(vae_model().error(tensor(&[&windowed])));
    let error = normalise_error(&gaussian_smooth(&error, ERROR_SIGMA), ErrorNorm::default());
    let probability = array(unet_model().probability(tensor(&[&windowed, &error])));
    let expected_probability = crop.paste_back(probability.view()).unwrap();
    let expected_error = crop.paste_back(error.view()).unwrap();

    let region = found.vertebrae[0].region;
    assert_eq!(region, expected_probability.region);
    let spread = probability.iter().fold(0.0f32, |m, &p| m.max((p - 0.5).abs()));
    assert!(spread > 1e-3, "the probabilities vary (by {spread} about 0.5), so a mix-up would show");
    let p_difference = max_difference(&region_values(&found.probability, &region), &expected_probability.values);
    let e_difference =
        max_difference(&region_values(found.error_map.as_ref().unwrap(), &region), &expected_error.values);
    println!("max |pipeline - burn|: probability {p_difference:.2e}, normalised error {e_difference:.2e}");
    assert!(p_difference <= TOLERANCE, "probability: {p_difference}");
    assert!(e_difference <= TOLERANCE, "normalised error: {e_difference}");
}

#[test]
fn overlapping_vertebrae_stitch_to_a_weighted_mean_of_each_alone() {
    let both = run(&[l1(), l2()], &SegmentOptions::default());
    let (alone_1, alone_2) = (run(&[l1()], &SegmentOptions::default()), run(&[l2()], &SegmentOptions::default()));
    let (r1, r2) = (both.vertebrae[0].region, both.vertebrae[1].region);
    let (mut only_one, mut outside_range, mut strictly_between) = (0.0f32, 0.0f32, 0);
    // Summed distance to each vertebra's own prediction over the overlap's first slice, z = 11:
    // nearer L1's crop centre (z 9) than L2's (z 15.5).
    let (mut to_1, mut to_2) = (0.0f32, 0.0f32);
    for (at, &p) in both.probability.data().indexed_iter() {
        let at = [at.0, at.1, at.2];
        let (p1, p2) = (alone_1.probability.data()[at], alone_2.probability.data()[at]);
        match (r1.contains(at), r2.contains(at)) {
            (true, false) => only_one = only_one.max((p - p1).abs()),
            (false, true) => only_one = only_one.max((p - p2).abs()),
            (true, true) => {
                let (lo, hi) = (p1.min(p2), p1.max(p2));
                outside_range = outside_range.max(lo - p).max(p - hi);
                if hi - lo > 1e-3 && p > lo + 1e-5 && p < hi - 1e-5 {
                    strictly_between += 1;
                }
                if at[0] == 11 {
                    to_1 += (p - p1).abs();
                    to_2 += (p - p2).abs();
                }
            }
            (false, false) => assert_eq!(p, 0.0),
        }
    }
    println!(
        "covered by one: max |both - alone| = {only_one:.2e}; overlap: {outside_range:.2e} outside the two, \
         {strictly_between} voxels strictly between; z = 11: summed distance to L1 {to_1:.3e}, to L2 {to_2:.3e}"
    );
    assert!(only_one <= 1e-5, "where one crop covers, its own prediction: {only_one}");
    assert!(outside_range <= 1e-6, "in the overlap, between the two predictions: {outside_range}");
    assert!(strictly_between > 0, "the overlap mixes the two");
    assert!(to_1 < to_2, "nearer L1's centre, nearer L1's prediction: {to_1} vs {to_2}");
}

#[test]
fn crops_batched_or_one_at_a_time_give_the_same_result() {
    let batched = run(&[l1(), l2()], &with_error_map());
    let one_at_a_time = run(&[l1(), l2()], &SegmentOptions { max_batch: NonZeroUsize::MIN, ..with_error_map() });
    let difference = max_difference(batched.probability.data(), one_at_a_time.probability.data());
    println!("max |batched - one at a time| = {difference:.2e}");
    assert!(difference <= 1e-6, "{difference}");
    assert_eq!(batched.vertebrae.len(), one_at_a_time.vertebrae.len());
}

#[test]
fn the_draft_mask_stays_inside_the_fracture_box() {
    let fracture_box = Box3::new([8, 16, 16], [12, 22, 22]).unwrap();
    // Every covered voxel passes this threshold: the box alone shapes the mask.
    let options = SegmentOptions { threshold: Some(0.01), min_component_voxels: 1, ..SegmentOptions::default() };
    let pair = models().pair();
    let boxed = segment(&ct(), &[l1(), l2()], &[fracture_box], &pair, &options).unwrap();
    assert!(boxed.mask.indexed_iter().all(|((z, y, x), &m)| !m || fracture_box.contains([z, y, x])));
    assert_eq!(boxed.mask_voxels, fracture_box.voxels());
    let voxel_mm3: f64 = CT_SPACING.iter().product();
    assert_eq!(boxed.mask_volume_mm3, fracture_box.voxels() as f64 * voxel_mm3);
    let [z, y, x] = fracture_box.ranges();
    let mean = boxed.probability.data().slice(s![z, y, x]).iter().map(|&p| f64::from(p)).sum::<f64>()
        / fracture_box.voxels() as f64;
    assert!((boxed.confidence - mean).abs() < 1e-9, "{} vs {mean}", boxed.confidence);
    // The box lies in L1's region; L2's reaches its slices z 11..12.
    let in_l2 = fracture_box.intersect(&boxed.vertebrae[1].region).map_or(0, |b| b.voxels());
    assert_eq!((boxed.vertebrae[0].mask_voxels, boxed.vertebrae[1].mask_voxels), (fracture_box.voxels(), in_l2));
    assert!(in_l2 > 0);

    let free = segment(&ct(), &[l1(), l2()], &[], &pair, &options).unwrap();
    assert!(free.mask.indexed_iter().any(|((z, y, x), &m)| m && !fracture_box.contains([z, y, x])));
}

#[test]
fn the_threshold_is_the_manifests_unless_the_request_gives_one() {
    let options = SegmentOptions { min_component_voxels: 1, ..SegmentOptions::default() };
    for (threshold, expected) in [(None, MASK_THRESHOLD), (Some(0.55), 0.55)] {
        let found = run(&[l1()], &SegmentOptions { threshold, ..options.clone() });
        assert_eq!(found.threshold, expected);
        let drafted = found.probability.data().mapv(|p| p >= expected);
        assert_eq!(found.mask, drafted, "threshold {expected}");
    }
}

#[test]
fn no_vertebrae_is_an_error() {
    let error = run_err(&ct(), &[], &[], &SegmentOptions::default());
    assert!(matches!(error, PipelineError::NoVertebrae), "{error:?}");
}

#[test]
fn a_body_box_outside_the_ct_is_named() {
    let outside = Vertebra { label: Some("L3".to_string()), body_box: Box3::new([20, 16, 14], [30, 26, 24]).unwrap() };
    let error = run_err(&ct(), &[l1(), outside], &[], &SegmentOptions::default());
    assert_eq!(error.to_string(), "vertebra #1 (L3): body box outside the CT: box z 20..30 outside volume depth 28");
}

#[test]
fn a_fracture_box_outside_the_ct_is_named() {
    let fracture_boxes = [Box3::new([8, 16, 16], [12, 22, 22]).unwrap(), Box3::new([0, 0, 35], [4, 4, 45]).unwrap()];
    let error = run_err(&ct(), &[l1()], &fracture_boxes, &SegmentOptions::default());
    assert_eq!(error.to_string(), "fracture box #1 outside the CT: box x 35..45 outside volume width 40");
}

#[test]
fn a_ct_with_nan_or_infinity_is_refused() {
    let mut ct = ct();
    ct.data_mut()[[3, 4, 5]] = f32::NAN;
    ct.data_mut()[[20, 0, 1]] = f32::INFINITY;
    let error = run_err(&ct, &[l1()], &[], &SegmentOptions::default());
    assert!(
        matches!(error, PipelineError::NonFiniteCt { count: 2, first: [3, 4, 5], value } if value.is_nan()),
        "{error:?}"
    );
    assert!(error.to_string().contains("2 non-finite voxels"), "{error}");
}

#[test]
fn a_threshold_outside_zero_one_is_refused() {
    for threshold in [0.0, 1.5, f32::NAN] {
        let options = SegmentOptions { threshold: Some(threshold), ..SegmentOptions::default() };
        let error = run_err(&ct(), &[l1()], &[], &options);
        assert!(matches!(error, PipelineError::Threshold(_)), "{threshold}: {error:?}");
    }
}

fn pair_problem(vae: &LoadedModel, unet: &LoadedModel) -> String {
    match ModelPair::new(vae, unet) {
        Err(error @ PipelineError::ModelPair { .. }) => error.to_string(),
        other => panic!("expected a model pair error, got {other:?}"),
    }
}

#[test]
fn models_given_the_wrong_way_round_are_refused() {
    let models = models();
    let problem = pair_problem(&models.unet, &models.vae);
    assert!(problem.contains("no error_input"), "{problem}");
}

#[test]
fn a_unet_trained_on_another_vae_epoch_is_refused() {
    let models = load(|_, unet| unet.error_input.as_mut().unwrap().vae_epoch = 8);
    let problem = pair_problem(&models.vae, &models.unet);
    assert!(problem.contains("VAE run /runs/vae at epoch 8; this VAE is run /runs/vae at epoch 7"), "{problem}");
}

#[test]
fn models_that_crop_differently_are_refused() {
    let models = load(|vae, _| vae.preprocessing.margin_mm = 4.0);
    let problem = pair_problem(&models.vae, &models.unet);
    assert!(problem.contains("preprocessing differs"), "{problem}");
}

#[test]
fn an_onnx_runtime_failure_names_the_model() {
    // Manifests that promise 16^3 crops to graphs of 8^3: the first run fails in ONNX Runtime.
    let models = load(|vae, unet| {
        for manifest in [vae, unet] {
            manifest.preprocessing.patch = [16; 3];
            for spec in manifest.inputs.iter_mut().chain(&mut manifest.outputs) {
                spec.shape[2..].fill(Dim::Fixed(16));
            }
        }
    });
    let error = segment(&ct(), &[l1()], &[], &models.pair(), &SegmentOptions::default()).unwrap_err();
    assert!(matches!(&error, PipelineError::Run { model, .. } if model == "vae version 1"), "{error:?}");
    assert!(error.to_string().starts_with("model vae version 1: ONNX Runtime failed: "), "{error}");
}

#[test]
fn a_cancelled_or_expired_request_stops_before_its_model_runs() {
    let cancelled = Interrupt::default();
    cancelled.cancel();
    let options = SegmentOptions { interrupt: cancelled, ..SegmentOptions::default() };
    assert!(matches!(run_err(&ct(), &[l1()], &[], &options), PipelineError::Cancelled));
    let expired = Interrupt::new(Some(std::time::Instant::now()));
    let options = SegmentOptions { interrupt: expired, ..SegmentOptions::default() };
    assert!(matches!(run_err(&ct(), &[l1()], &[], &options), PipelineError::DeadlineExceeded));
    // A deadline to come does not stop it.
    let later = Interrupt::new(Some(std::time::Instant::now() + std::time::Duration::from_secs(600)));
    run(&[l1()], &SegmentOptions { interrupt: later, ..SegmentOptions::default() });
}

#[test]
fn the_draft_mask_is_core_pseudo_label_over_the_whole_grid() {
    // Computed within the crops' reach only; the same as over every voxel, with fracture boxes
    // inside, across and beyond that reach.
    let low = SegmentOptions { threshold: Some(0.3), min_component_voxels: 2, ..SegmentOptions::default() };
    let config = fracmap_core::PseudoLabelConfig { threshold: 0.3, min_component_voxels: 2 };
    let boxes_cases: [Vec<Box3>; 4] = [
        vec![],
        vec![Box3::new([6, 14, 15], [10, 20, 20]).unwrap()],
        vec![Box3::new([0, 0, 0], [9, 18, 18]).unwrap(), Box3::new([15, 20, 20], [28, 40, 40]).unwrap()],
        vec![Box3::new([0, 0, 0], [2, 2, 2]).unwrap()],
    ];
    for boxes in boxes_cases {
        let got = segment(&ct(), &[l1(), l2()], &boxes, &models().pair(), &low).unwrap();
        let expected = fracmap_core::pseudo_label::pseudo_label(&got.probability, &boxes, &config).unwrap();
        assert_eq!(got.mask, expected.mask, "boxes {boxes:?}");
        assert_eq!(got.mask_voxels, expected.voxels);
        assert!((got.confidence - expected.confidence).abs() < 1e-12);
    }
}

#[test]
fn a_non_finite_voxel_is_found_and_counted() {
    let mut ct = ct();
    ct.data_mut()[[5, 7, 9]] = f32::INFINITY;
    ct.data_mut()[[20, 1, 2]] = f32::NAN;
    let error = run_err(&ct, &[l1()], &[], &SegmentOptions::default());
    assert!(matches!(error, PipelineError::NonFiniteCt { count: 2, first: [5, 7, 9], .. }), "{error:?}");
}
