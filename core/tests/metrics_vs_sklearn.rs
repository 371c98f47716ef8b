//! Our voxel metrics against scikit-learn's on random scores, continuous and quantised (many ties): the
//! reference values come from `scripts/py/metrics_reference.py`, run with the Python that
//! `scripts/setup.sh` installs (`FRACMAP_PYTHON`, set for cargo by `.cargo/config.toml`).

mod common;

use std::io::Write;

use fracmap_core::metrics::{Confusion, average_precision, roc_auc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const THRESHOLD: f32 = 0.5;

/// Random voxels: 30% positive, positives scoring higher on average, so the metrics are
/// neither 0.5 nor 1. With `levels`, scores are rounded down to multiples of `1 / levels`
/// (many ties) and half of the zeros are `-0.0`. Voxel 0 is a sure positive and voxel 1 a
/// sure negative, so both classes and both predictions exist at any size.
fn random_voxels(count: usize, seed: u64, levels: Option<f32>) -> (Vec<f32>, Vec<bool>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut scores = Vec::with_capacity(count);
    let mut truth = Vec::with_capacity(count);
    for i in 0..count {
        let positive = match i {
            0 => true,
            1 => false,
            _ => rng.random_bool(0.3),
        };
        let noise: f32 = rng.random();
        let mut score = if positive { 0.25 + 0.75 * noise } else { 0.75 * noise };
        if i < 2 {
            score = if positive { 0.99 } else { 0.01 };
        }
        if let Some(levels) = levels {
            score = (score * levels).floor() / levels;
            if score == 0.0 && rng.random_bool(0.5) {
                score = -0.0;
            }
        }
        scores.push(score);
        truth.push(positive);
    }
    (scores, truth)
}

/// scikit-learn's values for these voxels, as the JSON object the script prints.
fn sklearn_reference(scores: &[f32], truth: &[bool]) -> serde_json::Value {
    let mut file = tempfile::NamedTempFile::new().expect("temporary file");
    // `as f64` prints the exact f32 value, which Python reads back as the same number.
    writeln!(file, "threshold {}", f64::from(THRESHOLD)).unwrap();
    for (&score, &label) in scores.iter().zip(truth) {
        writeln!(file, "{} {}", f64::from(score), u8::from(label)).unwrap();
    }
    file.flush().unwrap();

    common::run_json_script("metrics_reference.py", &[file.path()])
}

fn assert_agrees(name: &str, ours: f64, reference: &serde_json::Value) {
    let theirs = reference[name].as_f64().unwrap_or_else(|| panic!("no {name} in {reference}"));
    assert!((ours - theirs).abs() < 1e-9, "{name}: ours {ours}, scikit-learn {theirs}");
}

fn check_against_sklearn(count: usize, seed: u64, levels: Option<f32>) {
    let (scores, truth) = random_voxels(count, seed, levels);
    let reference = sklearn_reference(&scores, &truth);
    assert_agrees("average_precision", average_precision(&scores, &truth).unwrap(), &reference);
    assert_agrees("roc_auc", roc_auc(&scores, &truth).unwrap(), &reference);
    let confusion = Confusion::from_scores(&scores, &truth, THRESHOLD).unwrap();
    assert_agrees("f1", confusion.dice(), &reference);
    assert_agrees("jaccard", confusion.iou(), &reference);
    assert_agrees("precision", confusion.precision().expect("voxel 0 is predicted"), &reference);
    assert_agrees("recall", confusion.recall().expect("voxel 0 is true"), &reference);
}

#[test]
fn ten_voxels_with_continuous_scores() {
    check_against_sklearn(10, 1, None);
}

#[test]
fn ten_voxels_with_ties() {
    check_against_sklearn(10, 2, Some(4.0));
}

#[test]
fn thousand_voxels_with_many_ties_and_negative_zeros() {
    check_against_sklearn(1000, 3, Some(16.0));
}

#[test]
fn hundred_thousand_voxels_with_continuous_scores() {
    check_against_sklearn(100_000, 4, None);
}

#[test]
fn hundred_thousand_voxels_with_ties() {
    check_against_sklearn(100_000, 5, Some(256.0));
}
