//! The method's `M_in` and `M_out` of one vertebra crop, built from its weak label.
//!
//! | mode | `M_in` | `M_out` |
//! |---|---|---|
//! | box (B) | the union of the vertebra's fracture boxes | every other voxel of the crop |
//! | slice (A) | every voxel of its fracture slices | every other slice |
//! | normal vertebra (both) | empty | the whole crop |
//!
//! A fractured vertebra with no label of the mode (status known, no box or no slice range)
//! has no masks: its empty mask would claim "no fracture here", so it is left out of
//! training rather than read as a normal one.

use fracmap_core::Mask;

use super::config::Supervision;
use crate::crops::CropEntry;
use crate::manifest::Status;

/// A crop's weak labels and true mask, on its grid.
#[derive(Debug, Clone, Copy)]
pub struct CropLabels<'a> {
    pub box_in: &'a Mask,
    pub slice_in: &'a Mask,
    pub truth: Option<&'a Mask>,
}

/// `M_in` and `M_out` of a crop, on its grid.
#[derive(Debug, Clone, PartialEq)]
pub struct WeakMasks {
    pub inside: Mask,
    pub outside: Mask,
}

/// The masks of `crop` under `mode`; `None` when the vertebra cannot supervise in that mode
/// (see the module doc). `Full` supervision reads the true mask instead: `None` for a
/// fractured vertebra without one, an empty mask for a normal one without one.
pub fn weak_masks(mode: Supervision, entry: &CropEntry, crop: CropLabels<'_>) -> Option<WeakMasks> {
    let labels = match mode {
        Supervision::Box => (entry.fracture_boxes, crop.box_in),
        Supervision::Slice => (entry.slice_ranges, crop.slice_in),
        Supervision::Full => {
            let truth = match (crop.truth, entry.status) {
                (Some(truth), _) => truth.clone(),
                (None, Status::Normal) => Mask::from_elem(crop.box_in.raw_dim(), false),
                (None, _) => return None,
            };
            return Some(WeakMasks { outside: truth.mapv(|v| !v), inside: truth });
        }
    };
    let inside = match (entry.status, labels) {
        (Status::Normal, _) => Mask::from_elem(crop.box_in.raw_dim(), false),
        (_, (0, _)) => return None,
        (_, (_, mask)) => mask.clone(),
    };
    Some(WeakMasks { outside: inside.mapv(|v| !v), inside })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crops::LoadedCrop;
    use fracmap_core::Volume;
    use ndarray::Array3;

    fn labels(crop: &LoadedCrop) -> CropLabels<'_> {
        CropLabels { box_in: &crop.box_in, slice_in: &crop.slice_in, truth: crop.truth.as_ref() }
    }

    /// A 4 x 4 x 4 crop whose box is voxels z 1..3, y 1..3, x 1..3 and whose slice range is
    /// z 1..3; the true fracture is the one voxel [1, 1, 1].
    fn crop() -> LoadedCrop {
        let in_box = Mask::from_shape_fn((4, 4, 4), |(z, y, x)| {
            (1..3).contains(&z) && (1..3).contains(&y) && (1..3).contains(&x)
        });
        let in_slices = Mask::from_shape_fn((4, 4, 4), |(z, _, _)| (1..3).contains(&z));
        let truth = Mask::from_shape_fn((4, 4, 4), |p| p == (1, 1, 1));
        let ct = Volume::with_spacing(Array3::zeros((4, 4, 4)), [1.0; 3]).unwrap();
        LoadedCrop { ct, box_in: in_box, slice_in: in_slices, truth: Some(truth) }
    }

    fn entry(status: Status, boxes: usize, ranges: usize) -> CropEntry {
        let json = include_str!("testdata/crop_entry.json");
        let mut entry: CropEntry = serde_json::from_str(json).unwrap();
        (entry.status, entry.fracture_boxes, entry.slice_ranges) = (status, boxes, ranges);
        entry
    }

    fn count(mask: &Mask) -> usize {
        mask.iter().filter(|&&v| v).count()
    }

    #[test]
    fn box_mode_puts_the_box_inside_and_all_else_outside_same_slices_included() {
        let masks = weak_masks(Supervision::Box, &entry(Status::Fractured, 1, 1), labels(&crop())).unwrap();
        assert_eq!(count(&masks.inside), 8);
        assert_eq!(count(&masks.outside), 64 - 8);
        assert!(masks.outside[[1, 0, 0]], "a voxel of the box's slices outside the box is M_out");
    }

    #[test]
    fn slice_mode_puts_whole_slices_inside_and_every_other_slice_outside() {
        let masks = weak_masks(Supervision::Slice, &entry(Status::Fractured, 1, 1), labels(&crop())).unwrap();
        assert_eq!(count(&masks.inside), 2 * 16);
        assert_eq!(count(&masks.outside), 2 * 16);
        assert!(masks.inside[[1, 0, 0]] && masks.outside[[0, 1, 1]]);
    }

    #[test]
    fn a_normal_vertebra_is_all_outside_in_every_mode() {
        for mode in [Supervision::Box, Supervision::Slice] {
            let masks = weak_masks(mode, &entry(Status::Normal, 0, 0), labels(&crop())).unwrap();
            assert_eq!((count(&masks.inside), count(&masks.outside)), (0, 64), "{mode:?}");
        }
    }

    #[test]
    fn a_fractured_vertebra_without_a_label_of_the_mode_is_left_out() {
        assert!(weak_masks(Supervision::Box, &entry(Status::Fractured, 0, 1), labels(&crop())).is_none());
        assert!(weak_masks(Supervision::Slice, &entry(Status::Fractured, 1, 0), labels(&crop())).is_none());
        assert!(weak_masks(Supervision::Slice, &entry(Status::Fractured, 0, 1), labels(&crop())).is_some());
    }

    #[test]
    fn full_supervision_reads_the_true_mask() {
        let masks = weak_masks(Supervision::Full, &entry(Status::Fractured, 1, 1), labels(&crop())).unwrap();
        assert_eq!(count(&masks.inside), 1);
        assert!(masks.inside[[1, 1, 1]] && !masks.outside[[1, 1, 1]]);
        let mut without_truth = crop();
        without_truth.truth = None;
        assert!(weak_masks(Supervision::Full, &entry(Status::Fractured, 1, 1), labels(&without_truth)).is_none());
        let normal = weak_masks(Supervision::Full, &entry(Status::Normal, 0, 0), labels(&without_truth)).unwrap();
        assert_eq!(count(&normal.inside), 0);
    }
}
