//! Vertebra crops: how one vertebra is cut out of a CT for a model, and how a prediction made
//! on that crop goes back onto the CT. The trainer's crop cache and the server both cut here
//! with the same [`CropSpec`], so a model sees at inference the crops it was trained on.
//!
//! The way of one crop, every step a [`crate::preprocess`] function, so the affine follows
//! the voxels and the crop overlays its CT in world coordinates:
//! 1. cut the body box plus `margin_mm` (rounded up to source voxels) on every side, unclamped:
//!    where the cut reaches past the CT it holds `fill` ([`crop_around_box`]);
//! 2. resample the cut to `spacing_mm` over the same physical extent ([`resample`]; linear for
//!    the CT, nearest for masks);
//! 3. crop or pad to `patch`, centred ([`crop_or_pad_to`]): a vertebra whose resampled cut is
//!    larger than the patch loses its outer parts ([`VertebraCrop::oversize`]).
//!
//! Back ([`VertebraCrop::paste_back`]): step 3 undone (the patch cut or padded back to the
//! resampled shape), step 2 undone by resampling linearly onto the cut's grid
//! ([`resample_to_grid`]), step 1 undone by keeping the part of the cut inside the CT.

use ndarray::{Array3, ArrayView3, Zip, s};
use serde::{Deserialize, Serialize};

use crate::geometry::{Box3, GeometryError, Mask};
use crate::model_manifest::Preprocessing;
use crate::preprocess::{
    CropRegion, Interpolation, PreprocessError, crop_around_box, crop_or_pad_to, cut, mask_to_volume, resample,
    resample_to_grid, resample_to_shape, volume_to_mask,
};
use crate::volume::{Grid, Volume, VolumeError};

/// How vertebrae are cut: the voxel spacing and patch shape of every crop, and the context
/// kept around the vertebral body. Validated when read from configuration; its JSON form is
/// what a crop cache's `index.json` stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CropSpecFields")]
pub struct CropSpec {
    /// Voxel spacing of the crops in mm, `[z, y, x]`.
    pub spacing_mm: [f64; 3],
    /// Crop shape in voxels, `[z, y, x]`: every crop has exactly this shape.
    pub patch: [usize; 3],
    /// Context kept around the body box on every side, in mm (rounded up to source voxels).
    pub margin_mm: f64,
}

impl Default for CropSpec {
    fn default() -> Self {
        CropSpec { spacing_mm: [1.0; 3], patch: [64; 3], margin_mm: 6.0 }
    }
}

/// What configuration holds; every field may be left out. Checked by `TryFrom`.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CropSpecFields {
    spacing_mm: [f64; 3],
    patch: [usize; 3],
    margin_mm: f64,
}

impl Default for CropSpecFields {
    fn default() -> Self {
        let CropSpec { spacing_mm, patch, margin_mm } = CropSpec::default();
        CropSpecFields { spacing_mm, patch, margin_mm }
    }
}

impl TryFrom<CropSpecFields> for CropSpec {
    type Error = CropSpecError;

    fn try_from(fields: CropSpecFields) -> Result<Self, Self::Error> {
        let spec = CropSpec { spacing_mm: fields.spacing_mm, patch: fields.patch, margin_mm: fields.margin_mm };
        spec.validate()?;
        Ok(spec)
    }
}

/// The crop numbers of an exported model: the server cuts with what the trainer cut with.
/// The manifest checks them when it is read.
impl From<&Preprocessing> for CropSpec {
    fn from(p: &Preprocessing) -> Self {
        CropSpec { spacing_mm: p.spacing_mm, patch: p.patch, margin_mm: p.margin_mm }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CropSpecError {
    #[error("crop spacing_mm must be finite and positive, got [z, y, x] = {0:?}")]
    BadSpacing([f64; 3]),
    #[error("crop patch [z, y, x] = {0:?} has an empty axis")]
    EmptyPatch([usize; 3]),
    #[error("crop margin_mm must be finite and not negative, got {0}")]
    BadMargin(f64),
}

impl CropSpec {
    pub fn validate(&self) -> Result<(), CropSpecError> {
        if self.spacing_mm.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(CropSpecError::BadSpacing(self.spacing_mm));
        }
        if self.patch.contains(&0) {
            return Err(CropSpecError::EmptyPatch(self.patch));
        }
        if !self.margin_mm.is_finite() || self.margin_mm < 0.0 {
            return Err(CropSpecError::BadMargin(self.margin_mm));
        }
        Ok(())
    }

    /// The margin in voxels of a source with `spacing` (mm, `[z, y, x]`), rounded up so that
    /// at least `margin_mm` of context is kept (a hair of tolerance keeps 6 mm / 1.5 mm at 4).
    pub fn margin_voxels(&self, spacing: [f64; 3]) -> [usize; 3] {
        spacing.map(|s| (self.margin_mm / s - 1e-9).ceil().max(0.0) as usize)
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum VertebraCropError {
    #[error(transparent)]
    Spec(#[from] CropSpecError),
    #[error("body box outside the CT: {0}")]
    BodyBoxOutside(GeometryError),
    #[error("prediction shape [z, y, x] = {prediction:?} differs from the crop's patch {patch:?}")]
    PredictionShape { prediction: [usize; 3], patch: [usize; 3] },
    #[error("label volume shape [z, y, x] = {labels:?} differs from the CT's {ct:?}")]
    LabelShape { labels: [usize; 3], ct: [usize; 3] },
    #[error("cut at source voxel [z, y, x] = {origin:?} of shape {shape:?} covers none of the CT's {ct:?}")]
    CutOutsideCt { origin: [i64; 3], shape: [usize; 3], ct: [usize; 3] },
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
}

impl From<VolumeError> for VertebraCropError {
    fn from(error: VolumeError) -> Self {
        VertebraCropError::Preprocess(error.into())
    }
}

/// What a CT holds beyond the scanned volume, HU (air): the `fill` the trainer's crop cache
/// and the server's pipeline both cut vertebrae with.
pub const AIR_HU: f32 = -1000.0;

/// One vertebra cut out of a CT ([`cut_vertebra`]), and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct VertebraCrop {
    /// The CT on the crop's grid, shape = the spec's patch; where the cut reached past the CT,
    /// and where the patch is larger than the resampled cut, it holds the cut's `fill`.
    pub ct: Volume,
    /// The source CT's grid.
    pub source: Grid,
    /// The cut in source voxels: body box plus margin, unclamped (it may reach past the CT).
    pub region: CropRegion,
    /// The cut's grid: the source's spacing, its affine shifted to the region's origin.
    pub cut_grid: Grid,
    /// Shape of the cut once resampled to the spec's spacing, before crop or pad to the patch.
    pub resampled_shape: [usize; 3],
}

/// A prediction made on a crop, back on its source CT's grid ([`VertebraCrop::paste_back`]).
///
/// To stitch the vertebrae of one CT, whose cuts may overlap, accumulate over them
/// `sum[region] += values * weight` and `total[region] += weight` (times any weight of one's
/// own), and take `sum / total` where `total > 0`: a voxel no crop predicted stays uncovered.
#[derive(Debug, Clone, PartialEq)]
pub struct PastedPrediction {
    /// The source voxels it covers: the cut region clipped to the CT, `[z, y, x]`, half-open.
    /// The part of the cut past the CT's edges is dropped.
    pub region: Box3,
    /// The prediction on those voxels, shape = `region.shape()`; 0 where `weight` is 0.
    pub values: Array3<f32>,
    /// How much of each voxel's value comes from the prediction, in `[0, 1]`: 1 wherever the
    /// patch covered the resampled cut (every voxel, unless the vertebra was
    /// [oversize](VertebraCrop::oversize)), 0 in the outer parts the patch cut away (no
    /// prediction there), fractions on their border, where linear interpolation mixes
    /// predicted and unpredicted crop voxels (`values` is then the mean of the predicted ones).
    pub weight: Array3<f32>,
}

/// Cuts the vertebra whose body box is `body_box` (source voxels, `[z, y, x]`, half-open,
/// inside the CT) out of `ct` as `spec` says (module doc), with `fill` past the CT's edges and
/// in the patch's padding (the trainer and the server: [`AIR_HU`]).
pub fn cut_vertebra(
    ct: &Volume,
    body_box: &Box3,
    spec: &CropSpec,
    fill: f32,
) -> Result<VertebraCrop, VertebraCropError> {
    spec.validate()?;
    body_box.check_inside(ct.shape()).map_err(VertebraCropError::BodyBoxOutside)?;
    let (cut, region) = crop_around_box(ct, body_box, spec.margin_voxels(ct.spacing()), fill)?;
    let resampled = resample(&cut, spec.spacing_mm, Interpolation::Linear)?;
    Ok(VertebraCrop {
        ct: crop_or_pad_to(&resampled, spec.patch, fill)?,
        source: ct.grid(),
        region,
        cut_grid: cut.grid(),
        resampled_shape: resampled.shape(),
    })
}

impl VertebraCrop {
    /// Whether the resampled cut was larger than the patch on some axis and lost its edges.
    pub fn oversize(&self) -> bool {
        let patch = self.ct.shape();
        (0..3).any(|a| self.resampled_shape[a] > patch[a])
    }

    /// A mask or label volume on the source CT's grid (a fracture mask; only its shape is
    /// checked against the CT's) cut like the CT: nearest neighbour, 0 past the CT's edges and
    /// in the padding; true where the label is at least 0.5.
    pub fn cut_mask(&self, labels: &Volume) -> Result<Mask, VertebraCropError> {
        if labels.shape() != self.source.shape {
            return Err(VertebraCropError::LabelShape { labels: labels.shape(), ct: self.source.shape });
        }
        self.labels_on_cut_to_crop(&cut(labels, &self.region, 0.0)?)
    }

    /// A mask made on the cut's grid (shape = `region.shape`; a fracture box in region indices,
    /// [`CropRegion::local_box`]) taken to the crop's grid as [`VertebraCrop::cut_mask`] does.
    pub fn mask_on_cut_to_crop(&self, mask: &Mask) -> Result<Mask, VertebraCropError> {
        self.labels_on_cut_to_crop(&mask_to_volume(mask, &self.cut_grid)?)
    }

    /// Steps 2 and 3 for labels: nearest neighbour onto the resampled shape (the shape the CT's
    /// `resample` gave), crop or pad with 0, threshold 0.5.
    fn labels_on_cut_to_crop(&self, on_cut: &Volume) -> Result<Mask, VertebraCropError> {
        let resampled = resample_to_shape(on_cut, self.resampled_shape, Interpolation::Nearest)?;
        Ok(volume_to_mask(&crop_or_pad_to(&resampled, self.ct.shape(), 0.0)?, 0.5))
    }

    /// A prediction on the crop's grid (`[z, y, x]` of the patch's shape: a probability map, a
    /// reconstruction) on the source CT's grid: cut or padded back to the resampled shape,
    /// resampled linearly onto the cut's grid, clipped to the CT. See [`PastedPrediction`] for
    /// what is dropped (the cut past the CT) and what is reported uncovered (an oversize
    /// vertebra's outer parts).
    pub fn paste_back(&self, prediction: ArrayView3<'_, f32>) -> Result<PastedPrediction, VertebraCropError> {
        let patch = self.ct.shape();
        let (z, y, x) = prediction.dim();
        if [z, y, x] != patch {
            return Err(VertebraCropError::PredictionShape { prediction: [z, y, x], patch });
        }
        let (in_ct, in_cut) = self.region.overlap(self.source.shape).ok_or(VertebraCropError::CutOutsideCt {
            origin: self.region.origin,
            shape: self.region.shape,
            ct: self.source.shape,
        })?;
        let [cz, cy, cx] = in_cut.ranges();
        let on_ct = |on_crop: Array3<f32>| -> Result<Array3<f32>, VertebraCropError> {
            let resampled = crop_or_pad_to(&self.ct.with_data(on_crop)?, self.resampled_shape, 0.0)?;
            let on_cut = resample_to_grid(&resampled, &self.cut_grid, Interpolation::Linear, 0.0)?;
            Ok(on_cut.data().slice(s![cz.clone(), cy.clone(), cx.clone()]).to_owned())
        };
        let weighted = on_ct(prediction.to_owned())?;
        // Interpolating a map of ones that is 0 where the patch cut the vertebra away says how
        // much of each value came from predicted voxels; without a cut-away part it is all 1.
        let weight = if self.oversize() { on_ct(Array3::ones(patch))? } else { Array3::ones(in_ct.shape()) };
        let values = Zip::from(&weighted).and(&weight).map_collect(|&v, &w| if w > 0.0 { v / w } else { 0.0 });
        Ok(PastedPrediction { region: in_ct, values, weight })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::HuWindow;
    use crate::volume::Affine;

    const SHAPE: [usize; 3] = [20, 24, 28];

    /// x and y swapped (one flipped) against the world's axes, spacing `[z, y, x]` mm, an origin.
    fn oblique_affine([sz, sy, sx]: [f64; 3]) -> Affine {
        [[0.0, -sy, 0.0, 30.0], [sx, 0.0, 0.0, -12.0], [0.0, 0.0, sz, 7.5], [0.0, 0.0, 0.0, 1.0]]
    }

    /// A smooth HU field of world position (mm): curvature at most about 3 HU/mm^2.
    fn smooth_hu(w: [f64; 3]) -> f64 {
        300.0 * (w[0] / 10.0).sin() * (w[1] / 12.0).cos() + 2.0 * w[2]
    }

    /// A CT of `SHAPE` with `spacing` (`[z, y, x]` mm) holding `smooth_hu` at its voxel centres.
    fn smooth_ct(spacing: [f64; 3]) -> Volume {
        let empty = Volume::new(Array3::zeros(SHAPE), spacing, oblique_affine(spacing)).unwrap();
        let data = Array3::from_shape_fn(SHAPE, |(z, y, x)| {
            smooth_hu(empty.voxel_to_world([z, y, x].map(|i| i as f64))) as f32
        });
        empty.with_data(data).unwrap()
    }

    fn body_box() -> Box3 {
        Box3::new([6, 8, 9], [14, 17, 20]).unwrap()
    }

    /// The source's `region` (source voxels), the part of `pasted` that lies there.
    fn source_part(ct: &Volume, region: &Box3) -> Array3<f32> {
        let [z, y, x] = region.ranges();
        ct.data().slice(s![z, y, x]).to_owned()
    }

    fn max_difference(a: &Array3<f32>, b: &Array3<f32>) -> f32 {
        Zip::from(a).and(b).fold(0.0f32, |m, &x, &y| m.max((x - y).abs()))
    }

    #[test]
    fn spec_keeps_the_json_form_crop_indexes_store() {
        let spec = CropSpec { spacing_mm: [1.5, 1.0, 0.5], patch: [32, 48, 64], margin_mm: 6.0 };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, r#"{"spacing_mm":[1.5,1.0,0.5],"patch":[32,48,64],"margin_mm":6.0}"#);
        assert_eq!(serde_json::from_str::<CropSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn spec_has_defaults_and_rejects_bad_values() {
        let spec: CropSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, CropSpec { spacing_mm: [1.0; 3], patch: [64; 3], margin_mm: 6.0 });
        let bad = |json: &str| serde_json::from_str::<CropSpec>(json).unwrap_err().to_string();
        assert!(bad(r#"{"patch": [64, 0, 64]}"#).contains("patch [z, y, x] = [64, 0, 64] has an empty axis"));
        assert!(bad(r#"{"spacing_mm": [1, -1, 1]}"#).contains("spacing_mm must be finite and positive"));
        assert!(bad(r#"{"margin_mm": -2}"#).contains("margin_mm must be finite and not negative"));
        assert!(bad(r#"{"margin": 2}"#).contains("unknown field"));
    }

    #[test]
    fn margin_rounds_up_to_whole_source_voxels() {
        let spec = CropSpec { margin_mm: 6.0, ..CropSpec::default() };
        assert_eq!(spec.margin_voxels([1.5, 0.7, 2.0]), [4, 9, 3]);
    }

    #[test]
    fn spec_from_a_model_manifest_takes_its_crop_numbers() {
        let preprocessing = Preprocessing {
            spacing_mm: [2.0, 1.0, 1.0],
            margin_mm: 4.0,
            hu_window: HuWindow::new(-250.0, 1250.0).unwrap(),
            patch: [16, 32, 32],
        };
        let spec = CropSpec::from(&preprocessing);
        assert_eq!(spec, CropSpec { spacing_mm: [2.0, 1.0, 1.0], patch: [16, 32, 32], margin_mm: 4.0 });
    }

    #[test]
    fn crop_is_what_the_preprocess_steps_give() {
        // The sequence the trainer ran before this module: any change here changes every
        // cached crop (and must bump the cache's version).
        let ct = smooth_ct([2.0, 0.8, 1.1]);
        let spec = CropSpec { spacing_mm: [1.3, 1.0, 0.9], patch: [15, 16, 21], margin_mm: 3.0 };
        let (cut, region) = crop_around_box(&ct, &body_box(), spec.margin_voxels(ct.spacing()), AIR_HU).unwrap();
        let resampled = resample(&cut, spec.spacing_mm, Interpolation::Linear).unwrap();
        let expected = crop_or_pad_to(&resampled, spec.patch, AIR_HU).unwrap();

        let crop = cut_vertebra(&ct, &body_box(), &spec, AIR_HU).unwrap();
        assert_eq!(crop.ct, expected);
        assert_eq!((crop.region, crop.cut_grid, crop.resampled_shape), (region, cut.grid(), resampled.shape()));
        assert_eq!(crop.source, ct.grid());
    }

    #[test]
    fn masks_are_what_the_preprocess_steps_give() {
        let ct = smooth_ct([2.0, 0.8, 1.1]);
        let spec = CropSpec { spacing_mm: [1.3, 1.0, 0.9], patch: [15, 16, 21], margin_mm: 3.0 };
        let crop = cut_vertebra(&ct, &body_box(), &spec, AIR_HU).unwrap();
        let to_crop = |on_cut: &Volume| {
            let resampled = resample(on_cut, spec.spacing_mm, Interpolation::Nearest).unwrap();
            volume_to_mask(&crop_or_pad_to(&resampled, spec.patch, 0.0).unwrap(), 0.5)
        };

        let labels = Array3::from_shape_fn(SHAPE, |(z, y, x)| if (z + 2 * y + x) % 5 == 0 { 2.0 } else { 0.0 });
        let labels = ct.with_data(labels).unwrap();
        let expected = to_crop(&cut(&labels, &crop.region, 0.0).unwrap());
        assert_eq!(crop.cut_mask(&labels).unwrap(), expected);

        let on_cut = Mask::from_shape_fn(crop.region.shape, |(z, y, x)| (z * y + x) % 3 == 1);
        let expected = to_crop(&mask_to_volume(&on_cut, &crop.cut_grid).unwrap());
        assert_eq!(crop.mask_on_cut_to_crop(&on_cut).unwrap(), expected);
        assert!(expected.iter().any(|&v| v) && expected.iter().any(|&v| !v));
    }

    #[test]
    fn crop_has_the_patch_shape_and_its_centre_at_the_body_box_centre() {
        let ct = smooth_ct([2.0, 0.8, 1.1]);
        let body = body_box();
        let body_centre = ct.voxel_to_world(std::array::from_fn(|a| (body.min()[a] + body.max()[a] - 1) as f64 / 2.0));
        // Cut 12 x 17 x 17 source voxels (margins 2, 4, 3): 24 x 14 x 21 voxels of about
        // 1 x 1 x 0.9 mm. Where the resampled cut and the patch differ by an odd count, the extra
        // voxel is cut or padded at the end: the body's centre is then half a crop voxel before
        // the patch's centre where the patch crops, after it where the patch pads.
        for (patch, off_by_half) in [([20, 16, 15], [0.0; 3]), ([21, 15, 16], [0.5, -0.5, 0.5])] {
            let spec = CropSpec { spacing_mm: [1.0, 1.0, 0.9], patch, margin_mm: 3.0 };
            let crop = cut_vertebra(&ct, &body, &spec, AIR_HU).unwrap();
            assert_eq!(crop.resampled_shape, [24, 14, 21]);
            assert_eq!(crop.ct.shape(), patch);
            let crop_centre =
                crop.ct.voxel_to_world(std::array::from_fn(|a| (patch[a] - 1) as f64 / 2.0 + off_by_half[a]));
            let distance = (0..3).map(|a| (crop_centre[a] - body_centre[a]).powi(2)).sum::<f64>().sqrt();
            assert!(distance < 1e-6, "patch {patch:?}: crop centre {crop_centre:?}, body centre {body_centre:?}");
        }
    }

    #[test]
    fn body_box_outside_the_ct_is_refused() {
        let ct = smooth_ct([1.0; 3]);
        let outside = Box3::new([6, 8, 20], [14, 17, 30]).unwrap();
        let error = cut_vertebra(&ct, &outside, &CropSpec::default(), AIR_HU).unwrap_err();
        assert_eq!(error.to_string(), "body box outside the CT: box x 20..30 outside volume width 28");
    }

    #[test]
    fn prediction_of_another_shape_is_refused() {
        let spec = CropSpec { spacing_mm: [1.0; 3], patch: [16, 16, 16], margin_mm: 2.0 };
        let crop = cut_vertebra(&smooth_ct([1.0; 3]), &body_box(), &spec, AIR_HU).unwrap();
        let error = crop.paste_back(Array3::zeros((16, 16, 8)).view()).unwrap_err();
        assert_eq!(error, VertebraCropError::PredictionShape { prediction: [16, 16, 8], patch: [16, 16, 16] });
    }

    #[test]
    fn round_trip_at_the_crop_spacing_gives_the_ct_back_exactly() {
        // Cut 12 x 13 x 15 voxels; the patch pads every axis, and padding is dropped on the way back.
        let ct = smooth_ct([1.5; 3]);
        let spec = CropSpec { spacing_mm: [1.5; 3], patch: [16, 16, 18], margin_mm: 3.0 };
        let crop = cut_vertebra(&ct, &body_box(), &spec, AIR_HU).unwrap();
        let pasted = crop.paste_back(crop.ct.data().view()).unwrap();
        assert_eq!(pasted.region, Box3::new([4, 6, 7], [16, 19, 22]).unwrap());
        assert_eq!(pasted.values, source_part(&ct, &pasted.region));
        assert!(pasted.weight.iter().all(|&w| w == 1.0));
    }

    #[test]
    fn round_trip_through_another_spacing_is_close() {
        // Source 2 x 0.8 x 1.1 mm to about 1.3 x 1 x 0.9 mm and back: two linear interpolations.
        // Each errs by at most h^2 / 8 * curvature per voxel axis; `smooth_hu` curves by 3 and
        // 2.1 HU/mm^2 along the source's y and x (linear along z): 0.56 HU, twice. On the cut's
        // outer voxels, where resampling clamps to the outermost centres, the error is first
        // order instead, a fraction of a voxel times the gradient (up to 30 HU/mm): a few HU.
        let ct = smooth_ct([2.0, 0.8, 1.1]);
        let spec = CropSpec { spacing_mm: [1.3, 1.0, 0.9], patch: [32, 32, 32], margin_mm: 3.0 };
        let crop = cut_vertebra(&ct, &body_box(), &spec, AIR_HU).unwrap();
        let pasted = crop.paste_back(crop.ct.data().view()).unwrap();
        assert_eq!(pasted.region, Box3::new([4, 4, 6], [16, 21, 23]).unwrap());
        assert!(pasted.weight.iter().all(|&w| w == 1.0));
        let source = source_part(&ct, &pasted.region);
        let [d, h, w] = pasted.region.shape();
        let inner = s![1..d - 1, 1..h - 1, 1..w - 1];
        let inside = max_difference(&pasted.values.slice(inner).to_owned(), &source.slice(inner).to_owned());
        assert!(inside < 1.2, "inside the cut: {inside} HU");
        let everywhere = max_difference(&pasted.values, &source);
        assert!(everywhere < 5.0, "on the cut's outer voxels: {everywhere} HU");
    }

    #[test]
    fn cut_past_the_ct_edge_drops_the_outside_part() {
        // A body box against the CT's first corner: the margin reaches 3 voxels before it.
        let ct = smooth_ct([1.0; 3]);
        let corner = Box3::new([0, 0, 0], [6, 8, 10]).unwrap();
        let spec = CropSpec { spacing_mm: [1.0; 3], patch: [12, 14, 16], margin_mm: 3.0 };
        let crop = cut_vertebra(&ct, &corner, &spec, AIR_HU).unwrap();
        assert_eq!(crop.region, CropRegion { origin: [-3; 3], shape: [12, 14, 16] });
        assert!(crop.ct.data().slice(s![0..3, .., ..]).iter().all(|&hu| hu == AIR_HU));
        let pasted = crop.paste_back(crop.ct.data().view()).unwrap();
        assert_eq!(pasted.region, Box3::new([0; 3], [9, 11, 13]).unwrap());
        assert_eq!(pasted.values, source_part(&ct, &pasted.region));
    }

    #[test]
    fn oversize_vertebra_reports_what_the_patch_cut_away() {
        // Cut 12 x 13 x 15 at the source's spacing into a patch 6 voxels short in y and 1 in x:
        // cut y 3..10 and x 0..14 are predicted (the odd voxel is cut at the end), the rest not.
        let ct = smooth_ct([1.0; 3]);
        let spec = CropSpec { spacing_mm: [1.0; 3], patch: [12, 7, 14], margin_mm: 2.0 };
        let crop = cut_vertebra(&ct, &body_box(), &spec, AIR_HU).unwrap();
        assert_eq!((crop.region.shape, crop.oversize()), ([12, 13, 15], true));
        let pasted = crop.paste_back(crop.ct.data().view()).unwrap();
        assert_eq!(pasted.region.shape(), [12, 13, 15]);
        let covered = s![.., 3..10, 0..14];
        assert!(pasted.weight.slice(covered).iter().all(|&w| w == 1.0));
        assert_eq!(pasted.weight.iter().filter(|&&w| w == 0.0).count(), 12 * 13 * 15 - 12 * 7 * 14);
        assert!(pasted.values.iter().all(|v| v.is_finite()));
        let source = source_part(&ct, &pasted.region);
        assert_eq!(pasted.values.slice(covered), source.slice(covered));
        assert!(Zip::from(&pasted.values).and(&pasted.weight).all(|&v, &w| w > 0.0 || v == 0.0));
    }

    #[test]
    fn oversize_weights_are_fractions_on_the_border_at_another_spacing() {
        let ct = smooth_ct([2.0, 0.8, 1.1]);
        let spec = CropSpec { spacing_mm: [1.3, 1.0, 0.9], patch: [20, 10, 20], margin_mm: 3.0 };
        let crop = cut_vertebra(&ct, &body_box(), &spec, AIR_HU).unwrap();
        assert!(crop.oversize());
        let pasted = crop.paste_back(crop.ct.data().view()).unwrap();
        assert!(pasted.weight.iter().all(|&w| (0.0..=1.0).contains(&w)));
        assert!(pasted.weight.iter().any(|&w| w > 0.0 && w < 1.0));
        assert!(pasted.weight.iter().any(|&w| w == 0.0) && pasted.weight.iter().any(|&w| w == 1.0));
        assert!(pasted.values.iter().all(|v| v.is_finite()));
    }
}
