//! Gaussian smoothing of a volume, in voxels: how an error map is smoothed before it is
//! normalised, here so that the trainer and the server smooth alike.

use ndarray::{Array3, Axis};

/// Separable Gaussian blur of `sigma` voxels (kernel cut at 3 sigma, normalised); the edge
/// voxel is repeated beyond the border, so a constant volume stays constant.
pub fn gaussian_smooth(volume: &Array3<f32>, sigma: f32) -> Array3<f32> {
    let radius = (3.0 * sigma).ceil() as isize;
    let weights: Vec<f32> = (-radius..=radius).map(|i| (-0.5 * (i as f32 / sigma).powi(2)).exp()).collect();
    let total: f32 = weights.iter().sum();
    let kernel: Vec<f32> = weights.iter().map(|w| w / total).collect();
    let mut out = volume.clone();
    for axis in 0..3 {
        let source = out.clone();
        for (mut line_out, line_in) in out.lanes_mut(Axis(axis)).into_iter().zip(source.lanes(Axis(axis))) {
            let n = line_in.len() as isize;
            for (i, value) in line_out.iter_mut().enumerate() {
                *value = kernel
                    .iter()
                    .zip(-radius..=radius)
                    .map(|(k, offset)| k * line_in[(i as isize + offset).clamp(0, n - 1) as usize])
                    .sum();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_keeps_a_constant_and_the_total_of_an_inner_spike() {
        let constant = Array3::from_elem((5, 6, 7), 0.25f32);
        assert!(gaussian_smooth(&constant, 1.0).iter().all(|v| (v - 0.25).abs() < 1e-6));
        let mut spike = Array3::<f32>::zeros((15, 15, 15));
        spike[[7, 7, 7]] = 1.0;
        let smooth = gaussian_smooth(&spike, 1.0);
        assert!((smooth.sum() - 1.0).abs() < 1e-5);
        assert!(smooth[[7, 7, 7]] < 0.1 && smooth[[7, 7, 8]] > 0.0);
        assert!((smooth[[7, 7, 8]] - smooth[[7, 8, 7]]).abs() < 1e-7, "isotropic");
    }
}
