//! The VAE's reconstruction-error map `E = |X - X_hat|` (`z = mu`): large where a crop leaves
//! the normal pattern the VAE learned. Phase 2 reads it beside the CT.

use fracmap_core::smoothing::gaussian_smooth;
use ndarray::Array3;

use super::data::batch_tensor;
use super::model::Vae;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErrorMapError {
    #[error("crop of shape [z, y, x] = {shape:?}, the model takes {expected:?}")]
    Shape { shape: [usize; 3], expected: [usize; 3] },
    #[error("smoothing sigma must be finite and positive (voxels), got {0}")]
    Sigma(f32),
}

/// `|crop - reconstruction|` per voxel, `[z, y, x]` like `crop` (windowed HU in `[0, 1]`),
/// optionally smoothed by a Gaussian of `sigma` voxels. `model` is an inference model
/// (`Module::valid()` of a trained one, or one loaded on a plain device).
pub fn error_map(model: &Vae, crop: &Array3<f32>, sigma: Option<f32>) -> Result<Array3<f32>, ErrorMapError> {
    let reconstruction = reconstruct(model, crop)?;
    error_of(crop, &reconstruction, sigma)
}

/// The model's reconstruction of `crop` with `z = mu`, `[z, y, x]`.
pub fn reconstruct(model: &Vae, crop: &Array3<f32>) -> Result<Array3<f32>, ErrorMapError> {
    let expected = model.input_shape;
    let (z, y, x) = crop.dim();
    if [z, y, x] != expected {
        return Err(ErrorMapError::Shape { shape: [z, y, x], expected });
    }
    let device = model.head.weight.val().device();
    let reconstruction = model.forward_inference(batch_tensor(std::slice::from_ref(crop), &device));
    let values = reconstruction.into_data().try_to_vec::<f32>().expect("the reconstruction is f32");
    Ok(Array3::from_shape_vec((z, y, x), values).expect("the reconstruction has the crop's shape"))
}

/// `|crop - reconstruction|`, smoothed by a Gaussian of `sigma` voxels when given (checked
/// finite and positive).
pub fn error_of(
    crop: &Array3<f32>,
    reconstruction: &Array3<f32>,
    sigma: Option<f32>,
) -> Result<Array3<f32>, ErrorMapError> {
    if let Some(s) = sigma.filter(|s| !s.is_finite() || *s <= 0.0) {
        return Err(ErrorMapError::Sigma(s));
    }
    let map = (crop - reconstruction).mapv(f32::abs);
    Ok(match sigma {
        Some(sigma) => gaussian_smooth(&map, sigma),
        None => map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vae::config::ModelConfig;
    use burn::prelude::*;

    fn tiny_model() -> Vae {
        ModelConfig { input_shape: [16; 3], base_channels: 2, levels: 2, latent_dim: 8, ..ModelConfig::default() }
            .init(&Device::flex(), 0)
    }

    #[test]
    fn error_map_is_the_absolute_difference_to_the_inference_reconstruction() {
        let model = tiny_model();
        let crop = Array3::from_shape_fn((16, 16, 16), |(z, y, x)| ((z + 2 * y + 3 * x) % 10) as f32 / 10.0);
        let map = error_map(&model, &crop, None).unwrap();
        let reconstruction = model.forward_inference(batch_tensor(std::slice::from_ref(&crop), &Device::flex()));
        let reconstruction = reconstruction.into_data().try_to_vec::<f32>().unwrap();
        let expected: Vec<f32> = crop.iter().zip(&reconstruction).map(|(x, r)| (x - r).abs()).collect();
        assert_eq!(map.dim(), (16, 16, 16));
        assert_eq!(map.iter().copied().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn a_crop_of_the_wrong_shape_is_refused() {
        let err = error_map(&tiny_model(), &Array3::zeros((16, 16, 8)), None).unwrap_err();
        assert_eq!(err, ErrorMapError::Shape { shape: [16, 16, 8], expected: [16, 16, 16] });
    }

    #[test]
    fn a_non_positive_sigma_is_refused() {
        let err = error_map(&tiny_model(), &Array3::zeros((16, 16, 16)), Some(0.0)).unwrap_err();
        assert_eq!(err, ErrorMapError::Sigma(0.0));
    }
}
