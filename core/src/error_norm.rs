//! The per-crop normalisation of the VAE error map `E` to `[0, 1]`: phase 2's second input
//! channel and the target of its consistency loss, `L1(P, normalise(E))`.
//!
//! The trainer and the inference server both call [`normalise_error`] with the [`ErrorNorm`]
//! of the model's configuration, so that the U-Net sees at inference exactly the scaling it
//! was trained on. Each crop is scaled on its own statistics, never on a dataset's.

use ndarray::Array3;
use serde::{Deserialize, Serialize};

/// Spread `hi - lo` at or below which a crop counts as constant and normalises to all zeros.
/// `E` is a difference of intensities windowed to `[0, 1]`: a spread this small is float
/// noise, and dividing by it would blow that noise up to the full range.
const CONSTANT_SPREAD: f64 = 1e-6;

/// How `E` maps to `[0, 1]` in one crop: `(e - lo) / (hi - lo)`, clamped to `[0, 1]`.
///
/// In TOML: `kind = "minmax"`, or `kind = "percentile"` with `low` and `high`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ErrorNorm {
    /// `lo` and `hi` are the crop's smallest and largest values: one hot voxel sets the scale
    /// for the whole crop. A struct variant, not a unit one, so that serde refuses stray
    /// fields (`kind = "minmax"` with a `high`): it ignores them on an internally tagged unit
    /// variant (serde-rs/serde#2123).
    MinMax {},
    /// `lo` and `hi` are the crop's `low`-th and `high`-th percentiles (`0 <= low < high <=
    /// 100`), linearly interpolated between order statistics like numpy's default
    /// `np.percentile(e, q)` (method "linear"): with the `n` values sorted, `v[0] <= ... <=
    /// v[n - 1]`, the `q`-th percentile is `v[k] + f * (v[k + 1] - v[k])` where `h = (n - 1) *
    /// q / 100`, `k = floor(h)`, `f = h - k`. Values beyond `hi` saturate at 1, below `lo` at
    /// 0. `Percentile { low: 0.0, high: 100.0 }` is `MinMax {}`.
    Percentile { low: f64, high: f64 },
}

impl Default for ErrorNorm {
    /// Percentiles 0.5 and 99.5, the clipping nnU-Net applies to CT intensities: a few
    /// hundred hot voxels of a 64^3 crop (an edge artefact of the VAE, a spot of metal) cannot
    /// squash the rest of the map towards 0, while the top 0.5% of the crop, more than a
    /// fracture box's usual share, still reads 1.
    fn default() -> Self {
        ErrorNorm::Percentile { low: 0.5, high: 99.5 }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErrorNormError {
    #[error("error normalisation: percentile {field} = {value} outside 0..=100")]
    PercentileOutOfRange { field: &'static str, value: f64 },
    #[error("error normalisation: percentile low = {low} must be below high = {high}")]
    PercentilesNotIncreasing { low: f64, high: f64 },
}

impl ErrorNorm {
    /// Checks that percentiles lie in `0..=100` (NaN does not) with `low < high`.
    pub fn validate(&self) -> Result<(), ErrorNormError> {
        if let ErrorNorm::Percentile { low, high } = *self {
            for (field, value) in [("low", low), ("high", high)] {
                if !(0.0..=100.0).contains(&value) {
                    return Err(ErrorNormError::PercentileOutOfRange { field, value });
                }
            }
            if low >= high {
                return Err(ErrorNormError::PercentilesNotIncreasing { low, high });
            }
        }
        Ok(())
    }
}

/// `error` (`[z, y, x]`, any layout) scaled to `[0, 1]` by `norm` on its own statistics.
///
/// Only finite values enter the statistics. In the output NaN becomes 0 and infinities
/// saturate (`+inf` at 1, `-inf` at 0), so no NaN comes out. A constant crop (spread `hi - lo`
/// at most 1e-6), or one without a finite value, comes out all zeros: it holds no anomaly
/// that stands out.
///
/// # Panics
///
/// When `norm` fails [`ErrorNorm::validate`]: configurations are validated once, at load.
pub fn normalise_error(error: &Array3<f32>, norm: ErrorNorm) -> Array3<f32> {
    if let Err(invalid) = norm.validate() {
        panic!("normalise_error with an unvalidated normalisation: {invalid}");
    }
    let mut finite: Vec<f32> = error.iter().copied().filter(|e| e.is_finite()).collect();
    if finite.is_empty() {
        return Array3::zeros(error.raw_dim());
    }
    let (lo, hi) = match norm {
        ErrorNorm::MinMax {} => {
            let (min, max) =
                finite.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(min, max), &e| (min.min(e), max.max(e)));
            (f64::from(min), f64::from(max))
        }
        ErrorNorm::Percentile { low, high } => (percentile(&mut finite, low), percentile(&mut finite, high)),
    };
    let spread = hi - lo;
    if spread <= CONSTANT_SPREAD {
        return Array3::zeros(error.raw_dim());
    }
    error.mapv(|e| if e.is_nan() { 0.0 } else { ((f64::from(e) - lo) / spread).clamp(0.0, 1.0) as f32 })
}

/// The `q`-th percentile (`0..=100`) of non-empty, finite `values`, interpolated linearly
/// between order statistics (numpy's default). Reorders `values`.
fn percentile(values: &mut [f32], q: f64) -> f64 {
    let h = (values.len() - 1) as f64 * q / 100.0;
    let k = h.floor() as usize;
    let (_, &mut at, above) = values.select_nth_unstable_by(k, f32::total_cmp);
    // The next order statistic is the smallest value above rank k; none when k is the last
    // rank, and then h == k and it does not count.
    let next = above.iter().copied().min_by(f32::total_cmp).unwrap_or(at);
    f64::from(at) + (h - k as f64) * (f64::from(next) - f64::from(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[f32]) -> Array3<f32> {
        Array3::from_shape_vec((1, 1, values.len()), values.to_vec()).unwrap()
    }

    fn assert_close(got: &Array3<f32>, want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-6, "voxel {i}: {g} vs {w} (all: {got:?})");
        }
    }

    #[test]
    fn min_max_maps_the_range_onto_zero_one() {
        // lo = 1, hi = 5: (e - 1) / 4.
        let out = normalise_error(&row(&[3.0, 1.0, 5.0, 2.0, 4.0]), ErrorNorm::MinMax {});
        assert_close(&out, &[0.5, 0.0, 1.0, 0.25, 0.75]);
    }

    #[test]
    fn percentiles_interpolate_between_order_statistics() {
        // Sorted: [0, 1, 2, 3, 10], n = 5.
        // low 10: h = 4 * 0.10 = 0.4 -> 0 + 0.4 * (1 - 0) = 0.4.
        // high 90: h = 4 * 0.90 = 3.6 -> 3 + 0.6 * (10 - 3) = 7.2.
        // np.percentile([0, 1, 2, 3, 10], [10, 90]) gives [0.4, 7.2] too.
        // Spread 6.8: 0 -> 0 (clamped), 1 -> 0.6 / 6.8, 2 -> 1.6 / 6.8, 3 -> 2.6 / 6.8, 10 -> 1.
        let error = row(&[10.0, 2.0, 0.0, 3.0, 1.0]);
        let out = normalise_error(&error, ErrorNorm::Percentile { low: 10.0, high: 90.0 });
        assert_close(&out, &[1.0, 1.6 / 6.8, 0.0, 2.6 / 6.8, 0.6 / 6.8]);
    }

    #[test]
    fn percentile_at_an_exact_rank_and_at_the_ends() {
        let mut values = [4.0, 0.0, 2.0, 6.0, 8.0];
        assert_eq!(percentile(&mut values, 50.0), 4.0, "h = 2 exactly: the median");
        assert_eq!(percentile(&mut values, 0.0), 0.0);
        assert_eq!(percentile(&mut values, 100.0), 8.0);
        assert_eq!(percentile(&mut values, 62.5), 5.0, "h = 2.5: halfway between 4 and 6");
    }

    #[test]
    fn full_percentile_range_equals_min_max() {
        let error = row(&[0.3, 0.1, 0.9, 0.5, 0.2]);
        let full = ErrorNorm::Percentile { low: 0.0, high: 100.0 };
        assert_eq!(normalise_error(&error, full), normalise_error(&error, ErrorNorm::MinMax {}));
    }

    #[test]
    fn constant_crop_gives_zeros() {
        for norm in [ErrorNorm::MinMax {}, ErrorNorm::default()] {
            assert_eq!(normalise_error(&row(&[0.7; 5]), norm), row(&[0.0; 5]), "{norm:?}");
            assert_eq!(normalise_error(&row(&[0.7, 0.7, 0.7, 0.7, 0.7 + 1e-7]), norm), row(&[0.0; 5]), "{norm:?}");
        }
    }

    #[test]
    fn nan_becomes_zero_and_infinities_saturate() {
        // Statistics from the finite values 1, 3: lo = 1, hi = 3.
        let error = row(&[f32::NAN, 1.0, f32::INFINITY, 3.0, f32::NEG_INFINITY, 2.0]);
        assert_close(&normalise_error(&error, ErrorNorm::MinMax {}), &[0.0, 0.0, 1.0, 1.0, 0.0, 0.5]);
        assert_eq!(normalise_error(&row(&[f32::NAN; 3]), ErrorNorm::default()), row(&[0.0; 3]));
    }

    #[test]
    fn validation_names_the_bad_field() {
        assert_eq!(ErrorNorm::default().validate(), Ok(()));
        assert_eq!(ErrorNorm::MinMax {}.validate(), Ok(()));
        let error = ErrorNorm::Percentile { low: -1.0, high: 99.0 }.validate().unwrap_err();
        assert_eq!(error, ErrorNormError::PercentileOutOfRange { field: "low", value: -1.0 });
        assert_eq!(error.to_string(), "error normalisation: percentile low = -1 outside 0..=100");
        let error = ErrorNorm::Percentile { low: 1.0, high: f64::NAN }.validate().unwrap_err();
        assert!(matches!(error, ErrorNormError::PercentileOutOfRange { field: "high", .. }), "{error}");
        let error = ErrorNorm::Percentile { low: 50.0, high: 50.0 }.validate().unwrap_err();
        assert_eq!(error.to_string(), "error normalisation: percentile low = 50 must be below high = 50");
    }

    #[test]
    #[should_panic(expected = "unvalidated normalisation")]
    fn unvalidated_percentiles_panic() {
        normalise_error(&row(&[1.0, 2.0]), ErrorNorm::Percentile { low: 0.0, high: 150.0 });
    }

    #[test]
    fn serde_round_trip_with_a_kind_tag() {
        for norm in [ErrorNorm::MinMax {}, ErrorNorm::Percentile { low: 2.0, high: 98.5 }] {
            let json = serde_json::to_string(&norm).unwrap();
            assert_eq!(serde_json::from_str::<ErrorNorm>(&json).unwrap(), norm, "{json}");
        }
        assert_eq!(serde_json::to_string(&ErrorNorm::MinMax {}).unwrap(), r#"{"kind":"minmax"}"#);
        let percentile: ErrorNorm = serde_json::from_str(r#"{"kind":"percentile","low":1,"high":99}"#).unwrap();
        assert_eq!(percentile, ErrorNorm::Percentile { low: 1.0, high: 99.0 });
        assert!(serde_json::from_str::<ErrorNorm>(r#"{"kind":"minmax","low":1}"#).is_err(), "unknown field");
        assert!(serde_json::from_str::<ErrorNorm>(r#"{"kind":"percentile","low":1}"#).is_err(), "missing high");
    }
}
