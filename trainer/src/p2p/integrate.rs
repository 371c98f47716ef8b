//! From slices back to 3D: the generator predicts every axial slice of a vertebra crop (each
//! slice the centre of its own sequence), the predictions stacked in slice order make the
//! crop's probability map, and the crops' maps of one CT, pasted back onto its grid
//! ([`VertebraCrop::paste_back`], the inverse of the crop's resample and pad), are averaged
//! where crops overlap. A voxel no crop covers stays 0.

use anyhow::{Result, ensure};
use burn::prelude::*;
use fracmap_core::vertebra_crop::VertebraCrop;
use fracmap_core::{Box3, Grid, Volume};
use ndarray::{Array2, Array3, Axis, Zip, s};

use super::data::{SliceRef, planes_of, sequence_tensor};
use super::model::Generator;
use crate::crops::CropEntry;

/// The generator's probability map of one crop (windowed CT, `[z, y, x]`): every slice
/// predicted, `batch_size` sequences per forward pass.
pub fn predict_crop(
    generator: &Generator,
    ct: &Array3<f32>,
    batch_size: usize,
    device: &Device,
) -> Result<Array3<f32>> {
    let refs: Vec<SliceRef> = (0..ct.dim().0).map(|z| SliceRef { crop: 0, z }).collect();
    let mut planes = Vec::with_capacity(refs.len());
    for chunk in refs.chunks(batch_size.max(1)) {
        let flips = vec![false; chunk.len()];
        let input = sequence_tensor(&[ct], chunk, generator.context, &flips, device);
        planes.extend(planes_of(generator.probability(input))?);
    }
    stack_slices(&planes)
}

/// Per-slice predictions, slice `z` at index `z`, as one `[z, y, x]` volume.
pub fn stack_slices(planes: &[Array2<f32>]) -> Result<Array3<f32>> {
    ensure!(!planes.is_empty(), "no slice to stack");
    let (h, w) = planes[0].dim();
    let mut volume = Array3::zeros((planes.len(), h, w));
    for (z, plane) in planes.iter().enumerate() {
        ensure!(plane.dim() == (h, w), "slice {z} is {:?}, slice 0 {:?}", plane.dim(), (h, w));
        volume.index_axis_mut(Axis(0), z).assign(plane);
    }
    Ok(volume)
}

/// The crop geometry of a cache entry, with `ct` (on the crop's grid) as its CT: what
/// `paste_back` needs.
pub fn crop_geometry(entry: &CropEntry, ct: Volume) -> VertebraCrop {
    VertebraCrop {
        ct,
        source: entry.source.into(),
        region: entry.cut.into(),
        cut_grid: entry.cut_grid.into(),
        resampled_shape: entry.resampled_shape,
    }
}

/// Crop maps of one CT averaged onto its grid: `sum(w * P) / sum(w)` over the crops covering
/// a voxel, `w` the paste weight (1 wherever the crop predicted), 0 where none does.
pub struct VolumeIntegrator {
    grid: Grid,
    sum: Array3<f32>,
    weight: Array3<f32>,
}

impl VolumeIntegrator {
    pub fn new(grid: Grid) -> Self {
        let shape = grid.shape;
        VolumeIntegrator { grid, sum: Array3::zeros(shape), weight: Array3::zeros(shape) }
    }

    /// Adds the map `probability` of `crop` (whose source must be this CT's grid).
    pub fn add(&mut self, crop: &VertebraCrop, probability: &Array3<f32>) -> Result<()> {
        ensure!(
            crop.source.shape == self.grid.shape,
            "a crop of a CT of shape {:?} added to one of {:?}",
            crop.source.shape,
            self.grid.shape
        );
        let pasted = crop.paste_back(probability.view())?;
        let [z, y, x] = pasted.region.ranges();
        let mut sum = self.sum.slice_mut(s![z.clone(), y.clone(), x.clone()]);
        Zip::from(&mut sum).and(&pasted.values).and(&pasted.weight).for_each(|s, &v, &w| *s += v * w);
        let mut weight = self.weight.slice_mut(s![z, y, x]);
        weight += &pasted.weight;
        Ok(())
    }

    /// The averaged map on the CT's grid, and the box of voxels some crop covered.
    pub fn finish(self) -> Result<(Volume, Option<Box3>)> {
        let covered = fracmap_core::geometry::bounding_box(&self.weight.mapv(|w| w > 0.0));
        let data = Zip::from(&self.sum).and(&self.weight).map_collect(|&s, &w| if w > 0.0 { s / w } else { 0.0 });
        Ok((Volume::new(data, self.grid.spacing, self.grid.affine)?, covered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fracmap_core::vertebra_crop::{CropSpec, cut_vertebra};

    /// A CT of 12 x 6 x 6 voxels of 1 mm; crops with the CT's spacing, so paste-back is exact.
    fn ct() -> Volume {
        Volume::with_spacing(Array3::zeros((12, 6, 6)), [1.0; 3]).unwrap()
    }

    /// The crop of body box z `z0..z0 + 8`, the whole y, x; no margin, patch 8 x 6 x 6.
    fn crop(z0: usize) -> VertebraCrop {
        let spec = CropSpec { spacing_mm: [1.0; 3], patch: [8, 6, 6], margin_mm: 0.0 };
        cut_vertebra(&ct(), &Box3::new([z0, 0, 0], [z0 + 8, 6, 6]).unwrap(), &spec, 0.0).unwrap()
    }

    #[test]
    fn known_slices_give_the_known_volume_averaged_where_crops_overlap() {
        // Crop A covers z 0..8 and predicts z/10 on its slice z; crop B covers z 4..12 and
        // predicts 1 on every slice. Where they overlap (z 4..8) the volume is their mean.
        let slices_a: Vec<Array2<f32>> = (0..8).map(|z| Array2::from_elem((6, 6), z as f32 / 10.0)).collect();
        let slices_b: Vec<Array2<f32>> = (0..8).map(|_| Array2::from_elem((6, 6), 1.0)).collect();
        let mut integrator = VolumeIntegrator::new(ct().grid());
        integrator.add(&crop(0), &stack_slices(&slices_a).unwrap()).unwrap();
        integrator.add(&crop(4), &stack_slices(&slices_b).unwrap()).unwrap();
        let (volume, covered) = integrator.finish().unwrap();
        assert_eq!(covered, Some(Box3::new([0, 0, 0], [12, 6, 6]).unwrap()));
        for z in 0..12 {
            let expected = match z {
                0..4 => z as f32 / 10.0,
                4..8 => (z as f32 / 10.0 + 1.0) / 2.0,
                _ => 1.0,
            };
            let plane = volume.data().index_axis(Axis(0), z);
            assert!(plane.iter().all(|&v| (v - expected).abs() < 1e-6), "z {z}: {plane:?} vs {expected}");
        }
        assert_eq!(volume.affine(), ct().affine(), "on the CT's grid");
    }

    #[test]
    fn voxels_no_crop_covers_stay_zero() {
        let mut integrator = VolumeIntegrator::new(ct().grid());
        integrator.add(&crop(2), &Array3::from_elem((8, 6, 6), 0.5)).unwrap();
        let (volume, covered) = integrator.finish().unwrap();
        assert_eq!(covered, Some(Box3::new([2, 0, 0], [10, 6, 6]).unwrap()));
        assert_eq!(volume.data()[[0, 0, 0]], 0.0);
        assert_eq!(volume.data()[[5, 3, 3]], 0.5);
    }

    #[test]
    fn slices_of_different_shapes_are_refused() {
        let err = stack_slices(&[Array2::zeros((2, 2)), Array2::zeros((2, 3))]).unwrap_err();
        assert!(err.to_string().contains("slice 1"), "{err}");
    }
}
