//! What the U-Net reads and is judged against, one vertebra crop at a time: the windowed CT,
//! the frozen VAE's normalised error map, the weak labels and (where the case has one) the
//! true mask. Crops are small (a 32^3 crop is 128 KiB a channel), so a run holds all of them
//! in memory and the VAE runs once per crop, not once per epoch.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::prelude::*;
use fracmap_core::error_norm::normalise_error;
use fracmap_core::{Mask, Volume};
use ndarray::Array3;

use super::config::{LabelConfig, Supervision};
use super::masks::{CropLabels, WeakMasks, weak_masks};
use crate::crops::CropEntry;
use crate::training_data::DataConfig;
use crate::vae::error_map::error_map;
use crate::vae::model::Vae;

/// One vertebra crop, ready for the U-Net.
#[derive(Debug, Clone)]
pub struct Sample {
    pub entry: CropEntry,
    /// HU windowed to `[0, 1]`, with the crop's grid (pictures overlay it).
    pub ct: Volume,
    /// The VAE's error map, normalised per crop to `[0, 1]`.
    pub error: Array3<f32>,
    pub box_in: Mask,
    pub slice_in: Mask,
    pub truth: Option<Mask>,
}

impl Sample {
    /// `M_in`, `M_out` under `mode`; `None` where this vertebra cannot supervise that mode.
    pub fn masks(&self, mode: Supervision) -> Option<WeakMasks> {
        let labels = CropLabels { box_in: &self.box_in, slice_in: &self.slice_in, truth: self.truth.as_ref() };
        weak_masks(mode, &self.entry, labels)
    }
}

/// Reads `entries` from the crop cache `dir` and computes each one's error map with the
/// frozen `vae` (an inference model); `progress(done, total)` after each crop.
pub fn load_samples(
    dir: &Path,
    entries: &[CropEntry],
    data: &DataConfig,
    labels: &LabelConfig,
    vae: &Vae,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<Sample>> {
    let mut samples = Vec::with_capacity(entries.len());
    for (done, entry) in entries.iter().enumerate() {
        let crop = entry.load(dir)?;
        let ct = data.window.apply(&crop.ct);
        let error = error_map(vae, ct.data(), labels.sigma()).with_context(|| format!("crop {}", entry.dir))?;
        samples.push(Sample {
            entry: entry.clone(),
            error: normalise_error(&error, labels.error_norm),
            ct,
            box_in: crop.box_in,
            slice_in: crop.slice_in,
            truth: crop.truth,
        });
        progress(done + 1, entries.len());
    }
    Ok(samples)
}

/// The U-Net's input `[B, 2, D, H, W]`: channel 0 the CT, channel 1 the error map.
pub fn input_tensor(samples: &[&Sample], flips: &[bool], device: &Device) -> Tensor<5> {
    let channels: Vec<&Array3<f32>> = samples.iter().flat_map(|s| [s.ct.data(), &s.error]).collect();
    stack(&channels, samples.len(), 2, flips, device)
}

/// Masks or maps `[B, 1, D, H, W]` as 0/1 floats.
pub fn mask_tensor(masks: &[&Mask], flips: &[bool], device: &Device) -> Tensor<5> {
    let maps: Vec<Array3<f32>> = masks.iter().map(|m| m.mapv(|v| if v { 1.0 } else { 0.0 })).collect();
    stack(&maps.iter().collect::<Vec<_>>(), masks.len(), 1, flips, device)
}

/// Maps `[B, 1, D, H, W]`.
pub fn map_tensor(maps: &[&Array3<f32>], flips: &[bool], device: &Device) -> Tensor<5> {
    stack(maps, maps.len(), 1, flips, device)
}

/// `volumes` (`batch * channels` of them, batch-major) as one tensor; volume `i` is mirrored
/// left-right (its x axis) when `flips[i / channels]`: the augmentation, applied alike to a
/// crop's every channel and target.
fn stack(volumes: &[&Array3<f32>], batch: usize, channels: usize, flips: &[bool], device: &Device) -> Tensor<5> {
    let (d, h, w) = volumes[0].dim();
    let mut values: Vec<f32> = Vec::with_capacity(volumes.len() * d * h * w);
    for (i, volume) in volumes.iter().enumerate() {
        if flips.get(i / channels).copied().unwrap_or(false) {
            values.extend(volume.slice(ndarray::s![.., .., ..;-1]).iter());
        } else {
            values.extend(volume.iter());
        }
    }
    Tensor::from_data(TensorData::new(values, [batch, channels, d, h, w]), device)
}

/// The `[z, y, x]` maps of a `[B, 1, D, H, W]` tensor.
pub fn maps_of(tensor: Tensor<5>) -> Result<Vec<Array3<f32>>> {
    let [b, c, d, h, w] = tensor.dims();
    ensure!(c == 1, "expected one channel, got {c}");
    let values = tensor.into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(values
        .chunks(d * h * w)
        .take(b)
        .map(|v| Array3::from_shape_vec((d, h, w), v.to_vec()).expect("shape"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_stack_batch_major_and_flip_only_x() {
        let a = Array3::from_shape_fn((1, 1, 3), |(_, _, x)| x as f32);
        let b = a.mapv(|v| v + 10.0);
        let (c, d) = (a.mapv(|v| v + 20.0), a.mapv(|v| v + 30.0));
        let t = stack(&[&a, &b, &c, &d], 2, 2, &[false, true], &Device::flex());
        assert_eq!(t.dims(), [2, 2, 1, 1, 3]);
        let values = t.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(values, vec![0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 22.0, 21.0, 20.0, 32.0, 31.0, 30.0]);
    }

    #[test]
    fn maps_come_back_as_they_went_in() {
        let a = Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 12 + y * 4 + x) as f32);
        let t = map_tensor(&[&a, &a], &[false, false], &Device::flex());
        assert_eq!(maps_of(t).unwrap(), vec![a.clone(), a]);
    }
}

/// Hand-made samples for the tests of this module's neighbours.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::manifest::Status;

    /// A sample of the given status whose CT is `ct` on a grid of 2 mm voxels, with `box_in`
    /// as its fracture box (and slice range: its slices), `truth` as its true mask, and
    /// `error` as its normalised error map.
    pub(crate) fn sample(
        status: Status,
        ct: Array3<f32>,
        error: Array3<f32>,
        box_in: Mask,
        truth: Option<Mask>,
    ) -> Sample {
        let mut entry: CropEntry = serde_json::from_str(include_str!("testdata/crop_entry.json")).unwrap();
        let labeled = box_in.iter().any(|v| *v);
        entry.status = status;
        (entry.fracture_boxes, entry.slice_ranges) = if labeled { (1, 1) } else { (0, 0) };
        let slices: Vec<bool> =
            (0..box_in.dim().0).map(|z| box_in.index_axis(ndarray::Axis(0), z).iter().any(|v| *v)).collect();
        let slice_in = Mask::from_shape_fn(box_in.raw_dim(), |(z, _, _)| slices[z]);
        Sample { entry, ct: Volume::with_spacing(ct, [2.0; 3]).unwrap(), error, box_in, slice_in, truth }
    }
}
