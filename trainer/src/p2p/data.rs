//! What the 2.5D model reads and learns: vertebra crops (the weak U-Net's crop cache), each
//! cut into axial slice sequences `[t - c/2 .. t + c/2]` whose target is slice `t`'s mask.
//! Edge slices repeat the crop's first or last slice (replication padding), so every slice
//! of a crop is a centre.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::prelude::*;
use fracmap_core::Mask;
use fracmap_core::nifti_io::read_volume;
use fracmap_core::preprocess::volume_to_mask;
use ndarray::{Array3, ArrayView2, Axis, s};

use super::config::{MaskSource, SliceConfig};
use crate::crops::CropEntry;
use crate::manifest::Status;
use crate::training_data::DataConfig;
use crate::weak::data::Sample;

/// Reads `entries` from the crop cache `dir`, the CT windowed to `[0, 1]`. The samples are
/// the weak U-Net's, so the two models share evaluation and pictures; this model reads no
/// VAE error map, so each sample's `error` is empty.
pub fn load_crops(
    dir: &Path,
    entries: &[CropEntry],
    data: &DataConfig,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<Sample>> {
    let mut samples = Vec::with_capacity(entries.len());
    for (done, entry) in entries.iter().enumerate() {
        let crop = entry.load(dir)?;
        samples.push(Sample {
            entry: entry.clone(),
            ct: data.window.apply(&crop.ct),
            error: Array3::zeros((0, 0, 0)),
            box_in: crop.box_in,
            slice_in: crop.slice_in,
            truth: crop.truth,
        });
        progress(done + 1, entries.len());
    }
    Ok(samples)
}

/// Each sample's target mask under `config.source`, `None` where the crop cannot supervise:
/// - truth: the true mask; a normal vertebra without one is all background, a fractured one
///   without one has no target;
/// - drafts: `<drafts>/<crop>.nii.gz` (uint8 on the crop's grid, as `fracmap-train weak`
///   writes them); a crop without a draft has no target.
pub fn targets(samples: &[Sample], config: &SliceConfig) -> Result<Vec<Option<Mask>>> {
    samples
        .iter()
        .map(|sample| match config.source {
            MaskSource::Truth => Ok(match (&sample.truth, sample.entry.status) {
                (Some(truth), _) => Some(truth.clone()),
                (None, Status::Normal) => Some(Mask::from_elem(sample.ct.data().raw_dim(), false)),
                (None, Status::Fractured) => None,
            }),
            MaskSource::Drafts => {
                let dir = config.drafts.as_deref().context("slices.drafts is not set")?;
                let path = dir.join(format!("{}.nii.gz", sample.entry.dir));
                if !path.exists() {
                    return Ok(None);
                }
                let draft = read_volume(&path).with_context(|| format!("draft mask {}", path.display()))?;
                ensure!(
                    draft.shape() == sample.ct.shape(),
                    "{}: shape [z, y, x] = {:?}, crop {} is {:?}",
                    path.display(),
                    draft.shape(),
                    sample.entry.dir,
                    sample.ct.shape()
                );
                Ok(Some(volume_to_mask(&draft, 0.5)))
            }
        })
        .collect()
}

/// One slice sequence: crop `crop` of a sample list, centre slice `z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceRef {
    pub crop: usize,
    pub z: usize,
}

/// Every slice of every crop with a target, split into those whose target holds fracture
/// voxels and the rest.
pub fn slice_refs(targets: &[Option<Mask>]) -> (Vec<SliceRef>, Vec<SliceRef>) {
    let mut fracture = Vec::new();
    let mut empty = Vec::new();
    for (crop, target) in targets.iter().enumerate() {
        let Some(target) = target else { continue };
        for (z, plane) in target.axis_iter(Axis(0)).enumerate() {
            let refs = if plane.iter().any(|&v| v) { &mut fracture } else { &mut empty };
            refs.push(SliceRef { crop, z });
        }
    }
    (fracture, empty)
}

/// The slice indices of the sequence centred on `z` in a crop of `depth` slices, the edges
/// repeated: `context = 5, z = 0` gives `[0, 0, 0, 1, 2]`.
pub fn sequence_indices(z: usize, depth: usize, context: usize) -> Vec<usize> {
    let half = (context / 2) as i64;
    (-half..=half).map(|d| (z as i64 + d).clamp(0, depth as i64 - 1) as usize).collect()
}

/// The generator's input `[B, context, H, W]` for `refs` of `cts` (windowed CT crops).
pub fn sequence_tensor(
    cts: &[&Array3<f32>],
    refs: &[SliceRef],
    context: usize,
    flips: &[bool],
    device: &Device,
) -> Tensor<4> {
    let planes: Vec<ArrayView2<'_, f32>> = refs
        .iter()
        .flat_map(|r| {
            let ct = cts[r.crop];
            sequence_indices(r.z, ct.dim().0, context).into_iter().map(move |z| ct.index_axis(Axis(0), z))
        })
        .collect();
    stack_planes(&planes, refs.len(), context, flips, device)
}

/// Slice `z` of each ref's volume, `[B, 1, H, W]`: the centre CT slice or a target mask.
pub fn plane_tensor(volumes: &[&Array3<f32>], refs: &[SliceRef], flips: &[bool], device: &Device) -> Tensor<4> {
    let planes: Vec<ArrayView2<'_, f32>> = refs.iter().map(|r| volumes[r.crop].index_axis(Axis(0), r.z)).collect();
    stack_planes(&planes, refs.len(), 1, flips, device)
}

/// `planes` (`batch * channels`, batch-major) as `[batch, channels, H, W]`; the planes of
/// item `i` mirrored left-right (x) when `flips[i]`.
fn stack_planes(
    planes: &[ArrayView2<'_, f32>],
    batch: usize,
    channels: usize,
    flips: &[bool],
    device: &Device,
) -> Tensor<4> {
    let (h, w) = planes[0].dim();
    let mut values: Vec<f32> = Vec::with_capacity(planes.len() * h * w);
    for (i, plane) in planes.iter().enumerate() {
        if flips.get(i / channels).copied().unwrap_or(false) {
            values.extend(plane.slice(s![.., ..;-1]).iter());
        } else {
            values.extend(plane.iter());
        }
    }
    Tensor::from_data(TensorData::new(values, [batch, channels, h, w]), device)
}

/// A mask as 0/1 floats, for [`plane_tensor`].
pub fn as_float(mask: &Mask) -> Array3<f32> {
    mask.mapv(|v| if v { 1.0 } else { 0.0 })
}

/// The `[H, W]` planes of a `[B, 1, H, W]` tensor, in batch order.
pub fn planes_of(tensor: Tensor<4>) -> Result<Vec<ndarray::Array2<f32>>> {
    let [b, c, h, w] = tensor.dims();
    ensure!(c == 1, "expected one channel, got {c}");
    let values = tensor.into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(values
        .chunks(h * w)
        .take(b)
        .map(|v| ndarray::Array2::from_shape_vec((h, w), v.to_vec()).expect("shape"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weak::data::fixtures::sample;

    #[test]
    fn sequences_repeat_the_edge_slices() {
        assert_eq!(sequence_indices(0, 8, 5), [0, 0, 0, 1, 2]);
        assert_eq!(sequence_indices(1, 8, 5), [0, 0, 1, 2, 3]);
        assert_eq!(sequence_indices(4, 8, 5), [2, 3, 4, 5, 6]);
        assert_eq!(sequence_indices(7, 8, 5), [5, 6, 7, 7, 7]);
        assert_eq!(sequence_indices(0, 1, 3), [0, 0, 0]);
    }

    #[test]
    fn a_sequence_tensor_holds_the_slices_in_order_and_flips_only_x() {
        // Voxel value = 100 z + 10 y + x.
        let ct = Array3::from_shape_fn((4, 2, 3), |(z, y, x)| (100 * z + 10 * y + x) as f32);
        let refs = [SliceRef { crop: 0, z: 3 }, SliceRef { crop: 0, z: 0 }];
        let t = sequence_tensor(&[&ct], &refs, 3, &[false, true], &Device::flex());
        assert_eq!(t.dims(), [2, 3, 2, 3]);
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        // Item 0: slices 2, 3, 3; item 1 (flipped): slices 0, 0, 1 with x reversed.
        assert_eq!(&v[..6], &[200.0, 201.0, 202.0, 210.0, 211.0, 212.0]);
        assert_eq!(&v[12..18], &[300.0, 301.0, 302.0, 310.0, 311.0, 312.0]);
        assert_eq!(&v[18..24], &[2.0, 1.0, 0.0, 12.0, 11.0, 10.0]);
        assert_eq!(&v[30..36], &[102.0, 101.0, 100.0, 112.0, 111.0, 110.0]);
        let centre = plane_tensor(&[&ct], &refs, &[false, true], &Device::flex());
        assert_eq!(planes_of(centre).unwrap()[1], ndarray::array![[2.0, 1.0, 0.0], [12.0, 11.0, 10.0]]);
    }

    #[test]
    fn slices_split_by_fracture_and_crops_without_a_target_drop_out() {
        let zeros = Array3::zeros((3, 2, 2));
        let truth = Mask::from_shape_fn((3, 2, 2), |(z, y, x)| z == 1 && y == 0 && x == 1);
        let fractured = sample(Status::Fractured, zeros.clone(), zeros.clone(), truth.clone(), Some(truth));
        let unlabeled =
            sample(Status::Fractured, zeros.clone(), zeros.clone(), Mask::from_elem((3, 2, 2), false), None);
        let normal = sample(Status::Normal, zeros.clone(), zeros, Mask::from_elem((3, 2, 2), false), None);
        let targets = targets(&[fractured, unlabeled, normal], &SliceConfig::default()).unwrap();
        assert!(targets[1].is_none(), "a fractured vertebra without a mask has no target");
        assert_eq!(targets[2].as_ref().unwrap().iter().filter(|v| **v).count(), 0, "a normal one is all background");
        let (fracture, empty) = slice_refs(&targets);
        assert_eq!(fracture, [SliceRef { crop: 0, z: 1 }]);
        assert_eq!(empty.len(), 2 + 3);
    }

    #[test]
    fn drafts_are_read_by_crop_name_and_a_wrong_shape_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = Array3::zeros((3, 2, 2));
        let mut a = sample(Status::Fractured, zeros.clone(), zeros.clone(), Mask::from_elem((3, 2, 2), true), None);
        a.entry.dir = "case_L1".into();
        let mut b = a.clone();
        b.entry.dir = "case_L2".into();
        let grid = a.ct.grid();
        let draft = Mask::from_shape_fn((3, 2, 2), |(z, _, _)| z == 2);
        fracmap_core::nifti_io::write_mask(&dir.path().join("case_L1.nii.gz"), &draft, &grid).unwrap();
        let config =
            SliceConfig { source: MaskSource::Drafts, drafts: Some(dir.path().into()), ..SliceConfig::default() };
        let got = targets(&[a.clone(), b], &config).unwrap();
        assert_eq!(got[0].as_ref(), Some(&draft));
        assert!(got[1].is_none(), "no draft, no target");

        let small = Volume::with_spacing(Array3::zeros((2, 2, 2)), [2.0; 3]).unwrap();
        fracmap_core::nifti_io::write_volume(
            &dir.path().join("case_L1.nii.gz"),
            &small,
            fracmap_core::nifti_io::NiftiDtype::F32,
        )
        .unwrap();
        let err = targets(&[a], &config).unwrap_err().to_string();
        assert!(err.contains("case_L1.nii.gz") && err.contains("[2, 2, 2]"), "{err}");
    }

    use fracmap_core::Volume;
}
