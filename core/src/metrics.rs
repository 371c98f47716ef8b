//! Voxel metrics against true masks: confusion counts at a threshold and what follows from
//! them (Dice, IoU, precision, recall), and the threshold-free average precision (PR-AUC) and
//! ROC-AUC, computed exactly as scikit-learn does so that numbers compare with the literature
//! (checked against it by `tests/metrics_vs_sklearn.rs`).
//!
//! Inputs are flat: `scores` and `truth` of the same length, the same voxels in the same
//! order. `Volume::as_slice()` gives a whole volume (3D metrics); in a `[z, y, x]` C-order
//! array, axial slice `z` is the contiguous chunk `z * h * w..(z + 1) * h * w` (2D metrics).

use std::ops::Add;

use ndarray::Zip;

use crate::geometry::Mask;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("{scores} scores but {truth} truth labels: both must list the same voxels")]
    LengthMismatch { scores: usize, truth: usize },
    #[error("prediction mask shape {prediction:?} differs from truth mask shape {truth:?}")]
    ShapeMismatch { prediction: Vec<usize>, truth: Vec<usize> },
    #[error("score of voxel {index} is NaN")]
    NanScore { index: usize },
    #[error("the threshold is NaN")]
    NanThreshold,
    #[error("{metric} of no voxels")]
    NoVoxels { metric: &'static str },
    #[error("{metric} needs both classes in the truth, but all {voxels} voxels are {class}")]
    OneClass { metric: &'static str, class: &'static str, voxels: usize },
}

/// Voxel counts of a binary prediction against the truth. `Add` sums counts over slices,
/// volumes or cases (micro-averaging: one Dice over a whole data set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    /// Predicted and true.
    pub tp: u64,
    /// Predicted, not true.
    pub fp: u64,
    /// True, not predicted.
    pub fn_: u64,
    /// Neither.
    pub tn: u64,
}

impl Confusion {
    /// Counts with `score >= threshold` as the prediction.
    pub fn from_scores(scores: &[f32], truth: &[bool], threshold: f32) -> Result<Self, MetricError> {
        check_lengths(scores, truth)?;
        if threshold.is_nan() {
            return Err(MetricError::NanThreshold);
        }
        if let Some(index) = scores.iter().position(|s| s.is_nan()) {
            return Err(MetricError::NanScore { index });
        }
        Ok(scores
            .iter()
            .zip(truth)
            .map(|(&s, &t)| Confusion::of_voxel(s >= threshold, t))
            .fold(Confusion::default(), Add::add))
    }

    /// Counts of a binary prediction given voxel by voxel.
    pub fn from_labels(prediction: &[bool], truth: &[bool]) -> Result<Self, MetricError> {
        if prediction.len() != truth.len() {
            return Err(MetricError::LengthMismatch { scores: prediction.len(), truth: truth.len() });
        }
        Ok(prediction.iter().zip(truth).map(|(&p, &t)| Confusion::of_voxel(p, t)).fold(Confusion::default(), Add::add))
    }

    /// Counts of a predicted mask against a true mask on the same grid (any memory layout).
    pub fn from_masks(prediction: &Mask, truth: &Mask) -> Result<Self, MetricError> {
        if prediction.shape() != truth.shape() {
            return Err(MetricError::ShapeMismatch {
                prediction: prediction.shape().to_vec(),
                truth: truth.shape().to_vec(),
            });
        }
        Ok(Zip::from(prediction).and(truth).fold(Confusion::default(), |sum, &p, &t| sum + Confusion::of_voxel(p, t)))
    }

    fn of_voxel(predicted: bool, truth: bool) -> Self {
        Confusion {
            tp: u64::from(predicted && truth),
            fp: u64::from(predicted && !truth),
            fn_: u64::from(!predicted && truth),
            tn: u64::from(!predicted && !truth),
        }
    }

    /// `2 tp / (2 tp + fp + fn)`, equal to F1. 1.0 when nothing is predicted and nothing is
    /// true (a normal vertebra left empty is a perfect answer); 0.0 when only one side is empty.
    pub fn dice(&self) -> f64 {
        ratio_or_one(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// `tp / (tp + fp + fn)` (Jaccard). Same empty-case convention as [`Confusion::dice`].
    pub fn iou(&self) -> f64 {
        ratio_or_one(self.tp, self.tp + self.fp + self.fn_)
    }

    /// `tp / (tp + fp)`; `None` when nothing is predicted. scikit-learn's `zero_division`
    /// would substitute a number there; averaging over cases, skip the `None`s instead.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    /// `tp / (tp + fn)`; `None` when nothing is true (a normal vertebra).
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }
}

impl Add for Confusion {
    type Output = Confusion;

    fn add(self, other: Confusion) -> Confusion {
        Confusion { tp: self.tp + other.tp, fp: self.fp + other.fp, fn_: self.fn_ + other.fn_, tn: self.tn + other.tn }
    }
}

fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

fn ratio_or_one(numerator: u64, denominator: u64) -> f64 {
    ratio(numerator, denominator).unwrap_or(1.0)
}

/// Average precision (PR-AUC) as scikit-learn's `average_precision_score`: the step sum
/// `sum_n (R_n - R_{n-1}) * P_n` over the distinct scores taken as thresholds in decreasing
/// order (tied scores are one threshold), with `R_0 = 0` and no interpolation.
/// Both classes must be present. O(n log n) time; the only allocation is 8 bytes a voxel.
pub fn average_precision(scores: &[f32], truth: &[bool]) -> Result<f64, MetricError> {
    let ranking = Ranking::new(scores, truth, "average precision")?;
    let positives = ranking.positives as f64;
    let mut sum = 0.0;
    let mut previous_tp = 0;
    ranking.for_each_threshold(|tp, fp| {
        if tp > previous_tp {
            sum += (tp - previous_tp) as f64 / positives * (tp as f64 / (tp + fp) as f64);
        }
        previous_tp = tp;
    });
    Ok(sum)
}

/// ROC-AUC as scikit-learn's `roc_auc_score`: the trapezoid area under the ROC curve whose
/// points are the distinct scores taken as thresholds (tied scores are one point). Equal to
/// the Mann-Whitney U statistic over `positives * negatives` with ties counting 1/2.
/// Both classes must be present. Summed in exact integers, divided once.
pub fn roc_auc(scores: &[f32], truth: &[bool]) -> Result<f64, MetricError> {
    let ranking = Ranking::new(scores, truth, "ROC-AUC")?;
    // Twice the area in units of (1 false positive) x (1 true positive).
    let mut twice_area: u128 = 0;
    let (mut previous_tp, mut previous_fp) = (0u64, 0u64);
    ranking.for_each_threshold(|tp, fp| {
        twice_area += u128::from(fp - previous_fp) * u128::from(tp + previous_tp);
        (previous_tp, previous_fp) = (tp, fp);
    });
    Ok(twice_area as f64 / (2.0 * ranking.positives as f64 * ranking.negatives as f64))
}

/// Voxels sorted by score, as `score key << 1 | label` so one flat sort of `u64` does it.
struct Ranking {
    keys: Vec<u64>,
    positives: u64,
    negatives: u64,
}

impl Ranking {
    fn new(scores: &[f32], truth: &[bool], metric: &'static str) -> Result<Self, MetricError> {
        check_lengths(scores, truth)?;
        if scores.is_empty() {
            return Err(MetricError::NoVoxels { metric });
        }
        let positives = truth.iter().filter(|&&t| t).count() as u64;
        let negatives = truth.len() as u64 - positives;
        if positives == 0 || negatives == 0 {
            let class = if positives == 0 { "negative" } else { "positive" };
            return Err(MetricError::OneClass { metric, class, voxels: truth.len() });
        }
        let mut keys = Vec::with_capacity(scores.len());
        for (index, (&score, &label)) in scores.iter().zip(truth).enumerate() {
            if score.is_nan() {
                return Err(MetricError::NanScore { index });
            }
            keys.push(u64::from(order_key(score)) << 1 | u64::from(label));
        }
        keys.sort_unstable();
        Ok(Ranking { keys, positives, negatives })
    }

    /// Calls `f(tp, fp)` with the cumulative counts at each distinct score, highest first:
    /// the voxels scored at or above that threshold.
    fn for_each_threshold(&self, mut f: impl FnMut(u64, u64)) {
        let (mut tp, mut fp) = (0, 0);
        let mut descending = self.keys.iter().rev().peekable();
        while let Some(&key) = descending.next() {
            if key & 1 == 1 {
                tp += 1;
            } else {
                fp += 1;
            }
            if descending.peek().is_none_or(|&&next| next >> 1 != key >> 1) {
                f(tp, fp);
            }
        }
    }
}

/// A `u32` that sorts as the (non-NaN) score does. `-0.0` is made `+0.0` first: they are one
/// score to numpy, hence one threshold to scikit-learn.
fn order_key(score: f32) -> u32 {
    let bits = if score == 0.0 { 0 } else { score.to_bits() };
    if bits >> 31 == 1 { !bits } else { bits | 1 << 31 }
}

fn check_lengths(scores: &[f32], truth: &[bool]) -> Result<(), MetricError> {
    if scores.len() != truth.len() {
        return Err(MetricError::LengthMismatch { scores: scores.len(), truth: truth.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: bool = true;
    const F: bool = false;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn confusion_at_threshold_counts_equal_scores_as_positive() {
        // Predicted (score >= 0.5): F T T F against truth F T T T: tp 2, fp 0, fn 1, tn 1.
        let c = Confusion::from_scores(&[0.2, 0.5, 0.7, 0.4], &[F, T, T, T], 0.5).unwrap();
        assert_eq!(c, Confusion { tp: 2, fp: 0, fn_: 1, tn: 1 });
        // Dice 2*2 / (2*2 + 0 + 1) = 0.8; IoU 2 / 3; precision 2 / 2; recall 2 / 3.
        assert!(close(c.dice(), 0.8));
        assert!(close(c.iou(), 2.0 / 3.0));
        assert_eq!(c.precision(), Some(1.0));
        assert!(close(c.recall().unwrap(), 2.0 / 3.0));
    }

    #[test]
    fn empty_prediction_and_empty_truth_is_perfect_overlap() {
        let c = Confusion::from_labels(&[F, F, F], &[F, F, F]).unwrap();
        assert_eq!((c.dice(), c.iou()), (1.0, 1.0));
        assert_eq!((c.precision(), c.recall()), (None, None));
    }

    #[test]
    fn one_sided_empty_cases() {
        // Prediction on a normal vertebra: all false positives, nothing to recall.
        let fp_only = Confusion::from_labels(&[T, F], &[F, F]).unwrap();
        assert_eq!((fp_only.dice(), fp_only.iou()), (0.0, 0.0));
        assert_eq!((fp_only.precision(), fp_only.recall()), (Some(0.0), None));
        // A missed fracture: nothing predicted, nothing found.
        let missed = Confusion::from_labels(&[F, F], &[T, F]).unwrap();
        assert_eq!((missed.dice(), missed.iou()), (0.0, 0.0));
        assert_eq!((missed.precision(), missed.recall()), (None, Some(0.0)));
    }

    #[test]
    fn confusion_from_masks_and_sums() {
        let mut prediction = Mask::from_elem((2, 2, 2), false);
        let mut truth = prediction.clone();
        prediction[[0, 0, 0]] = true;
        prediction[[1, 1, 1]] = true;
        truth[[1, 1, 1]] = true;
        truth[[1, 0, 1]] = true;
        let c = Confusion::from_masks(&prediction, &truth).unwrap();
        assert_eq!(c, Confusion { tp: 1, fp: 1, fn_: 1, tn: 5 });
        assert_eq!(c + c, Confusion { tp: 2, fp: 2, fn_: 2, tn: 10 });
        let other = Mask::from_elem((2, 2, 3), false);
        assert!(matches!(Confusion::from_masks(&prediction, &other), Err(MetricError::ShapeMismatch { .. })));
    }

    #[test]
    fn average_precision_of_the_sklearn_example() {
        // Truth 0 0 1 1, scores 0.1 0.4 0.35 0.8. Descending: 0.8 (pos): P 1/1, R 1/2;
        // 0.4 (neg): R unchanged; 0.35 (pos): P 2/3, R 2/2. AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
        let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T]).unwrap();
        assert!(close(ap, 5.0 / 6.0), "{ap}");
    }

    #[test]
    fn roc_auc_of_the_sklearn_example() {
        // Positive-negative pairs ranked right: 0.8 > 0.1, 0.8 > 0.4, 0.35 > 0.1; wrong:
        // 0.35 < 0.4. AUC = 3 / 4.
        let auc = roc_auc(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T]).unwrap();
        assert!(close(auc, 0.75), "{auc}");
    }

    #[test]
    fn tied_scores_are_one_threshold_for_average_precision() {
        // Scores 0.9 0.5 0.5 0.5 0.1, truth 1 1 0 0 1 (3 positives). Thresholds:
        // 0.9: tp 1 fp 0, P 1, R 1/3; 0.5: tp 2 fp 2, P 1/2, R 2/3; 0.1: tp 3 fp 2, P 3/5, R 1.
        // AP = 1/3 * 1 + 1/3 * 1/2 + 1/3 * 3/5 = 0.7. (Ranking the tied positive first would
        // give 1/3 + 1/3 + 1/3 * 3/5 = 0.8667: ties must not be broken.)
        let ap = average_precision(&[0.9, 0.5, 0.5, 0.5, 0.1], &[T, T, F, F, T]).unwrap();
        assert!(close(ap, 0.7), "{ap}");
    }

    #[test]
    fn tied_scores_count_half_for_roc_auc() {
        // Same voxels. Pairs (positive, negative), 3 x 2 = 6: 0.9 beats both (2), 0.5 ties
        // both (2 x 1/2 = 1), 0.1 loses both (0). AUC = 3 / 6 = 0.5.
        let auc = roc_auc(&[0.9, 0.5, 0.5, 0.5, 0.1], &[T, T, F, F, T]).unwrap();
        assert!(close(auc, 0.5), "{auc}");
    }

    #[test]
    fn negative_zero_ties_with_zero() {
        // One tie of a positive and a negative: AUC 1/2; one threshold with P 1/2, R 1: AP 1/2.
        assert_eq!(roc_auc(&[0.0, -0.0], &[T, F]).unwrap(), 0.5);
        assert_eq!(average_precision(&[-0.0, 0.0], &[T, F]).unwrap(), 0.5);
    }

    #[test]
    fn negative_and_infinite_scores_keep_their_order() {
        // Every positive scores above every negative: AP 1, AUC 1.
        let scores = [f32::NEG_INFINITY, -3.0, -1.0e-30, 2.0, f32::INFINITY];
        let truth = [F, F, F, T, T];
        assert_eq!(average_precision(&scores, &truth).unwrap(), 1.0);
        assert_eq!(roc_auc(&scores, &truth).unwrap(), 1.0);
    }

    #[test]
    fn one_class_is_an_error_naming_the_class() {
        let err = roc_auc(&[0.1, 0.2], &[T, T]).unwrap_err();
        assert_eq!(err, MetricError::OneClass { metric: "ROC-AUC", class: "positive", voxels: 2 });
        assert_eq!(err.to_string(), "ROC-AUC needs both classes in the truth, but all 2 voxels are positive");
        let err = average_precision(&[0.1, 0.2], &[F, F]).unwrap_err();
        assert_eq!(err, MetricError::OneClass { metric: "average precision", class: "negative", voxels: 2 });
        assert_eq!(roc_auc(&[], &[]).unwrap_err(), MetricError::NoVoxels { metric: "ROC-AUC" });
    }

    #[test]
    fn nan_scores_and_mismatched_lengths_are_errors() {
        assert_eq!(average_precision(&[0.1, f32::NAN], &[T, F]), Err(MetricError::NanScore { index: 1 }));
        assert_eq!(Confusion::from_scores(&[f32::NAN], &[T], 0.5), Err(MetricError::NanScore { index: 0 }));
        assert_eq!(Confusion::from_scores(&[0.1], &[T], f32::NAN), Err(MetricError::NanThreshold));
        assert_eq!(roc_auc(&[0.1], &[T, F]), Err(MetricError::LengthMismatch { scores: 1, truth: 2 }));
    }
}
