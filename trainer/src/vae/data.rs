//! What the trainer reads: crops of HU windowed to `[0, 1]`, `[z, y, x]`, all of the model's
//! input shape; their training-time augmentation; and batches of them as tensors.

use std::error::Error as StdError;

use burn::prelude::*;
use ndarray::{Array3, Zip};
use rand::Rng;

use super::config::AugmentConfig;

/// A set of crops addressed by index (the crop cache implements it; so does a plain vector).
pub trait CropSet {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Crop `index`, windowed HU in `[0, 1]`, `[z, y, x]`.
    fn crop(&self, index: usize) -> Result<Array3<f32>, CropError>;
}

/// A crop that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("crop {index}: {source}")]
pub struct CropError {
    pub index: usize,
    pub source: Box<dyn StdError + Send + Sync>,
}

impl CropSet for [Array3<f32>] {
    fn len(&self) -> usize {
        <[Array3<f32>]>::len(self)
    }

    fn crop(&self, index: usize) -> Result<Array3<f32>, CropError> {
        self.get(index)
            .cloned()
            .ok_or_else(|| CropError { index, source: format!("out of range, the set has {}", self.len()).into() })
    }
}

impl CropSet for Vec<Array3<f32>> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn crop(&self, index: usize) -> Result<Array3<f32>, CropError> {
        self.as_slice().crop(index)
    }
}

/// A randomly augmented copy of `crop`: axial rotation, then left-right flip, then intensity
/// jitter, each as configured (see [`AugmentConfig`]).
pub fn augment(crop: &Array3<f32>, config: &AugmentConfig, rng: &mut impl Rng) -> Array3<f32> {
    let mut out = if config.rotate_deg > 0.0 {
        let angle = rng.random_range(-config.rotate_deg..=config.rotate_deg).to_radians();
        rotate_axial(crop, angle)
    } else {
        crop.clone()
    };
    if config.flip && rng.random_bool(0.5) {
        out.invert_axis(ndarray::Axis(2));
    }
    if config.intensity_jitter > 0.0 {
        let j = config.intensity_jitter;
        let scale = 1.0 + rng.random_range(-j..=j) as f32;
        let shift = rng.random_range(-j..=j) as f32;
        out.mapv_inplace(|v| (v * scale + shift).clamp(0.0, 1.0));
    }
    out
}

/// Rotates every axial slice of `volume` `[z, y, x]` by `angle` radians about the slice
/// centre, bilinear; samples beyond the edge take the nearest edge voxel.
pub fn rotate_axial(volume: &Array3<f32>, angle: f64) -> Array3<f32> {
    let (_, ny, nx) = volume.dim();
    let (cy, cx) = ((ny as f64 - 1.0) / 2.0, (nx as f64 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let clamp = |v: f64, n: usize| v.clamp(0.0, (n - 1) as f64);
    let mut out = Array3::zeros(volume.dim());
    Zip::indexed(&mut out).for_each(|(z, y, x), value| {
        // The inverse rotation takes an output voxel back to where it came from.
        let (dy, dx) = (y as f64 - cy, x as f64 - cx);
        let sy = clamp(cy + cos * dy - sin * dx, ny);
        let sx = clamp(cx + sin * dy + cos * dx, nx);
        let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
        let (y1, x1) = ((y0 + 1).min(ny - 1), (x0 + 1).min(nx - 1));
        let (fy, fx) = ((sy - y0 as f64) as f32, (sx - x0 as f64) as f32);
        let v = |yy: usize, xx: usize| volume[[z, yy, xx]];
        let top = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
        let bottom = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
        *value = top * (1.0 - fy) + bottom * fy;
    });
    out
}

/// Stacks crops `[z, y, x]` (all of one shape) into a `[B, 1, z, y, x]` tensor on `device`.
pub fn batch_tensor(crops: &[Array3<f32>], device: &Device) -> Tensor<5> {
    let (d, h, w) = crops[0].dim();
    let values: Vec<f32> = crops.iter().flat_map(|crop| crop.iter().copied()).collect();
    Tensor::from_data(TensorData::new(values, [crops.len(), 1, d, h, w]), device)
}

/// `n` standard normal draws (Box-Muller), from the caller's generator so that the noise
/// follows the run's seed.
pub fn standard_normal(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln stays finite
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp_x(shape: (usize, usize, usize)) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(_, _, x)| x as f32 / (shape.2 - 1) as f32)
    }

    #[test]
    fn rotation_by_zero_is_the_identity() {
        let volume = ramp_x((2, 5, 7));
        assert_eq!(rotate_axial(&volume, 0.0), volume);
    }

    #[test]
    fn rotation_by_a_right_angle_turns_an_x_ramp_into_a_y_ramp() {
        let volume = ramp_x((1, 5, 5));
        let turned = rotate_axial(&volume, std::f64::consts::FRAC_PI_2);
        // out(y, x) = in(y' = cy - (x - cx), x' = cx + (y - cy)) = x' / 4 = y / 4 (c = 2)
        for y in 0..5 {
            for x in 0..5 {
                let expected = y as f32 / 4.0;
                assert!((turned[[0, y, x]] - expected).abs() < 1e-5, "({y}, {x}): {}", turned[[0, y, x]]);
            }
        }
    }

    #[test]
    fn flip_alone_mirrors_x_or_keeps_the_crop() {
        let volume = ramp_x((2, 3, 4));
        let config = AugmentConfig { flip: true, rotate_deg: 0.0, intensity_jitter: 0.0 };
        let mut mirrored = volume.clone();
        mirrored.invert_axis(ndarray::Axis(2));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let outcomes: Vec<bool> = (0..20).map(|_| augment(&volume, &config, &mut rng) == mirrored).collect();
        assert!(outcomes.contains(&true) && outcomes.contains(&false));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!((0..20).all(|_| {
            let out = augment(&volume, &config, &mut rng);
            out == mirrored || out == volume
        }));
    }

    #[test]
    fn jitter_stays_within_the_window() {
        let volume = ramp_x((2, 3, 4));
        let config = AugmentConfig { flip: false, rotate_deg: 0.0, intensity_jitter: 0.5 };
        let out = augment(&volume, &config, &mut ChaCha8Rng::seed_from_u64(2));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_ne!(out, volume);
    }

    #[test]
    fn no_augmentation_is_the_identity() {
        let volume = ramp_x((2, 3, 4));
        let config = AugmentConfig { flip: false, rotate_deg: 0.0, intensity_jitter: 0.0 };
        assert_eq!(augment(&volume, &config, &mut ChaCha8Rng::seed_from_u64(3)), volume);
    }

    #[test]
    fn normal_draws_have_zero_mean_and_unit_variance() {
        let draws = standard_normal(20_000, &mut ChaCha8Rng::seed_from_u64(4));
        let mean = draws.iter().sum::<f32>() / draws.len() as f32;
        let var = draws.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / draws.len() as f32;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean}, variance {var}");
    }

    #[test]
    fn batch_tensor_keeps_crop_order_and_voxel_order() {
        let a = Array3::from_shape_fn((1, 2, 2), |(_, y, x)| (y * 2 + x) as f32);
        let b = a.mapv(|v| v + 10.0);
        let tensor = batch_tensor(&[a, b], &Device::flex());
        assert_eq!(tensor.dims(), [2, 1, 1, 2, 2]);
        assert_eq!(tensor.into_data().try_to_vec::<f32>().unwrap(), [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]);
    }

    #[test]
    fn a_vector_is_a_crop_set_that_names_a_missing_index() {
        let set = vec![Array3::<f32>::zeros((1, 1, 1))];
        assert_eq!(CropSet::len(&set), 1);
        assert!(set.crop(3).unwrap_err().to_string().contains("crop 3"));
    }
}
