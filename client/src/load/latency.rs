//! Latency percentiles, exact over every stored sample: a load test keeps at most a few
//! hundred thousand latencies, so sorting them beats the approximations of a histogram.

use serde::Serialize;

/// The latency of the successful requests, in ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// The percentiles of `latencies_ms` (sorted here); `None` when there are none.
    pub fn of(latencies_ms: &mut [f64]) -> Option<Self> {
        latencies_ms.sort_unstable_by(f64::total_cmp);
        let sorted = &*latencies_ms;
        let max = *sorted.last()?;
        Some(Percentiles {
            p50: nearest_rank(sorted, 50.0),
            p90: nearest_rank(sorted, 90.0),
            p99: nearest_rank(sorted, 99.0),
            max,
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

/// The nearest-rank percentile: the smallest sample that at least `percent` % of the samples
/// are at or below. Always a sample that was measured, never an interpolation, and it never
/// decreases with `percent`. `sorted` is ascending and not empty.
fn nearest_rank(sorted: &[f64], percent: f64) -> f64 {
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percentiles(latencies: &[f64]) -> Percentiles {
        Percentiles::of(&mut latencies.to_vec()).unwrap()
    }

    #[test]
    fn ten_samples_give_the_fifth_ninth_and_tenth() {
        // Shuffled 1..=10: ranks ceil(5) = 5, ceil(9) = 9, ceil(9.9) = 10.
        let p = percentiles(&[7.0, 3.0, 10.0, 1.0, 9.0, 2.0, 8.0, 4.0, 6.0, 5.0]);
        assert_eq!(p, Percentiles { p50: 5.0, p90: 9.0, p99: 10.0, max: 10.0, mean: 5.5 });
    }

    #[test]
    fn a_hundred_samples_give_the_samples_of_those_ranks() {
        let latencies: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = percentiles(&latencies);
        assert_eq!((p.p50, p.p90, p.p99, p.max, p.mean), (50.0, 90.0, 99.0, 100.0, 50.5));
    }

    #[test]
    fn few_samples_round_the_rank_up() {
        // Three samples: ranks ceil(1.5) = 2, ceil(2.7) = 3, ceil(2.97) = 3.
        let p = percentiles(&[30.0, 10.0, 20.0]);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (20.0, 30.0, 30.0, 30.0));
        let one = percentiles(&[4.5]);
        assert_eq!((one.p50, one.p90, one.p99, one.max, one.mean), (4.5, 4.5, 4.5, 4.5, 4.5));
    }

    #[test]
    fn no_samples_have_no_percentiles() {
        assert_eq!(Percentiles::of(&mut []), None);
    }
}
