//! Randomness of the phantom: one ChaCha stream per purpose, normal draws, and smooth value
//! noise for tissue texture.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::space::Vec3;

/// What a random stream is for. Each purpose (and each vertebra) draws from its own stream,
/// so that changing one choice (the fracture rate, the level range) leaves everything else
/// drawn from the same seed unchanged: the same seed with and without fractures gives the
/// same patient.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Patient,
    Vertebra(u8),
    Fracture(u8),
    Variant(u8),
    SoftTissue,
    Scanner,
    Noise,
}

pub(crate) fn stream(seed: u64, purpose: Stream) -> ChaCha8Rng {
    let id = match purpose {
        Stream::Patient => 1,
        Stream::SoftTissue => 2,
        Stream::Scanner => 3,
        Stream::Noise => 4,
        Stream::Vertebra(label) => 1000 + u64::from(label),
        Stream::Fracture(label) => 2000 + u64::from(label),
        Stream::Variant(label) => 3000 + u64::from(label),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id);
    rng
}

/// Uniform in `lo..hi` (`lo` when the range is empty).
pub(crate) fn uniform(rng: &mut impl Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Two independent standard normal draws (Box-Muller).
pub(crate) fn normal_pair(rng: &mut impl Rng) -> (f64, f64) {
    let u = 1.0 - rng.random::<f64>(); // in (0, 1]: ln is finite
    let radius = (-2.0 * u.ln()).sqrt();
    let angle = std::f64::consts::TAU * rng.random::<f64>();
    (radius * angle.cos(), radius * angle.sin())
}

pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    normal_pair(rng).0
}

/// The value a standard normal variable exceeds with probability `p` (0 < p < 0.5),
/// Abramowitz and Stegun 26.2.23 (error under 5e-4).
pub(crate) fn upper_quantile(p: f64) -> f64 {
    let t = (-2.0 * p.clamp(1e-9, 0.5).ln()).sqrt();
    t - (2.515517 + 0.802853 * t + 0.010328 * t * t) / (1.0 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t)
}

/// Lattice cells per axis; the noise repeats every `PERIOD` units, which texture callers
/// hide by giving every structure its own random offset.
const PERIOD: usize = 32;

/// Standard deviation of one octave of raw lattice noise, measured (see the test): dividing
/// by it makes `at` roughly unit-variance.
const RAW_STD: f64 = 0.30;

/// Smooth random field: values on an integer lattice, smoothstep-interpolated between.
/// About unit variance, correlation length about one lattice unit.
#[derive(Debug, Clone)]
pub(crate) struct ValueNoise {
    lattice: Vec<f32>,
}

impl ValueNoise {
    pub fn new(rng: &mut impl Rng) -> ValueNoise {
        ValueNoise { lattice: (0..PERIOD * PERIOD * PERIOD).map(|_| rng.random_range(-1.0f32..1.0)).collect() }
    }

    /// The field at `p` (lattice units).
    pub fn at(&self, p: Vec3) -> f64 {
        let mut index = [[0usize; 2]; 3];
        let mut weight = [0.0f64; 3];
        for axis in 0..3 {
            let floor = p[axis].floor();
            let t = p[axis] - floor;
            weight[axis] = t * t * (3.0 - 2.0 * t);
            let i = (floor as i64).rem_euclid(PERIOD as i64) as usize;
            index[axis] = [i, (i + 1) % PERIOD];
        }
        let value = |iz: usize, iy: usize, ix: usize| {
            f64::from(self.lattice[(index[2][iz] * PERIOD + index[1][iy]) * PERIOD + index[0][ix]])
        };
        let lerp = |a: f64, b: f64, t: f64| a + (b - a) * t;
        let plane = |iz: usize| {
            lerp(
                lerp(value(iz, 0, 0), value(iz, 0, 1), weight[0]),
                lerp(value(iz, 1, 0), value(iz, 1, 1), weight[0]),
                weight[1],
            )
        };
        lerp(plane(0), plane(1), weight[2]) / RAW_STD
    }

    /// Two octaves (the second at twice the frequency and half the amplitude), about unit
    /// variance: a rougher texture for bone.
    pub fn fractal(&self, p: Vec3) -> f64 {
        let fine = [2.0 * p[0] + 11.3, 2.0 * p[1] + 5.7, 2.0 * p[2] + 17.1];
        (self.at(p) + 0.5 * self.at(fine)) / 1.118
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_noise_is_smooth_and_about_unit_variance() {
        let noise = ValueNoise::new(&mut stream(5, Stream::Patient));
        let samples: Vec<f64> = (0..20_000).map(|i| noise.at([i as f64 * 0.37, i as f64 * 0.11, 3.3])).collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let std = (samples.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
        assert!((0.8..1.2).contains(&std), "std {std}");
        assert!(mean.abs() < 0.1, "mean {mean}");
        // Neighbours 0.05 units apart differ far less than the field varies.
        let step = (noise.at([1.3, 2.1, 0.4]) - noise.at([1.35, 2.1, 0.4])).abs();
        assert!(step < 0.3, "jump {step}");
    }

    #[test]
    fn upper_quantiles_match_the_normal_table() {
        assert!((upper_quantile(0.025) - 1.96).abs() < 1e-3);
        assert!((upper_quantile(0.5)).abs() < 1e-3);
    }

    #[test]
    fn streams_differ_by_purpose_and_repeat_by_seed() {
        let draw = |seed, purpose| uniform(&mut stream(seed, purpose), (0.0, 1.0));
        assert_eq!(draw(3, Stream::Scanner), draw(3, Stream::Scanner));
        assert_ne!(draw(3, Stream::Scanner), draw(3, Stream::Noise));
        assert_ne!(draw(3, Stream::Vertebra(20)), draw(3, Stream::Vertebra(21)));
        assert_ne!(draw(3, Stream::Scanner), draw(4, Stream::Scanner));
    }
}
