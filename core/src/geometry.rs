//! Weak-label geometry in voxel indices: boxes, axial slice ranges, masks, and 26-connected
//! components.
//!
//! Everything here is in `[z, y, x]` array order with HALF-OPEN ranges (`min` inside, `max`
//! outside), like Rust ranges and numpy slices. No world coordinates: a box or a mask means
//! something only together with the `Grid` of the volume it indexes.

use std::fmt;
use std::ops::Range;

use ndarray::Array3;

/// A voxel mask on some grid, indexed `[z, y, x]`; `true` is inside.
pub type Mask = Array3<bool>;

/// Array axis names in `[z, y, x]` order, and how an error message calls each volume size.
const AXIS_NAMES: [&str; 3] = ["z", "y", "x"];
const SIZE_NAMES: [&str; 3] = ["depth", "height", "width"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("empty box on axis {axis}: {min}..{max} (half-open, needs min < max)")]
    EmptyBox { axis: &'static str, min: usize, max: usize },
    #[error("box {axis} {min}..{max} outside volume {size_name} {size}")]
    BoxOutside { axis: &'static str, min: usize, max: usize, size_name: &'static str, size: usize },
    #[error("empty slice range z {start}..{end} (half-open, needs start < end)")]
    EmptySliceRange { start: usize, end: usize },
    #[error("slice range z {start}..{end} outside volume depth {depth}")]
    SliceRangeOutside { start: usize, end: usize, depth: usize },
}

/// An axis-aligned box of voxels, `[z, y, x]`, half-open: voxel `v` is inside when
/// `min[a] <= v[a] < max[a]` on every axis `a`. Never empty (checked at construction).
///
/// The method writes a fracture box as `(x, y, z)_min..(x, y, z)_max` in NIfTI `i, j, k`
/// order; [`Box3::from_xyz`] takes it in that order and stores it as
/// `min = [z_min, y_min, x_min]`, `max = [z_max, y_max, x_max]`, with `max` exclusive. A
/// label source with inclusive maxima must add 1 before calling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Box3 {
    min: [usize; 3],
    max: [usize; 3],
}

impl Box3 {
    /// A box from `[z, y, x]` corners, half-open; fails when `min >= max` on some axis.
    pub fn new(min: [usize; 3], max: [usize; 3]) -> Result<Self, GeometryError> {
        for a in 0..3 {
            if min[a] >= max[a] {
                return Err(GeometryError::EmptyBox { axis: AXIS_NAMES[a], min: min[a], max: max[a] });
            }
        }
        Ok(Self { min, max })
    }

    /// A box from the method's `(x, y, z)_min..(x, y, z)_max` (NIfTI `i, j, k` order, max
    /// exclusive).
    pub fn from_xyz(min_xyz: [usize; 3], max_xyz: [usize; 3]) -> Result<Self, GeometryError> {
        Self::new(reverse(min_xyz), reverse(max_xyz))
    }

    /// The box covering a whole volume of `shape` (`[z, y, x]`, no empty axis).
    pub fn whole(shape: [usize; 3]) -> Result<Self, GeometryError> {
        Self::new([0; 3], shape)
    }

    /// First voxel inside, `[z, y, x]`.
    pub fn min(&self) -> [usize; 3] {
        self.min
    }

    /// One past the last voxel inside, `[z, y, x]`.
    pub fn max(&self) -> [usize; 3] {
        self.max
    }

    /// Size in voxels, `[z, y, x]`.
    pub fn shape(&self) -> [usize; 3] {
        std::array::from_fn(|a| self.max[a] - self.min[a])
    }

    /// Number of voxels inside.
    pub fn voxels(&self) -> usize {
        self.shape().iter().product()
    }

    /// The index ranges `[z, y, x]`, ready for `ndarray::s![r[0].clone(), ...]`.
    pub fn ranges(&self) -> [Range<usize>; 3] {
        std::array::from_fn(|a| self.min[a]..self.max[a])
    }

    /// The axial slices the box spans (its z range).
    pub fn slice_range(&self) -> SliceRange {
        SliceRange { start: self.min[0], end: self.max[0] }
    }

    /// Whether the box lies inside a volume of `shape` (`[z, y, x]`).
    pub fn fits(&self, shape: [usize; 3]) -> bool {
        self.check_inside(shape).is_ok()
    }

    /// Like [`Box3::fits`], with an error naming the first axis that sticks out.
    pub fn check_inside(&self, shape: [usize; 3]) -> Result<(), GeometryError> {
        for a in 0..3 {
            if self.max[a] > shape[a] {
                return Err(GeometryError::BoxOutside {
                    axis: AXIS_NAMES[a],
                    min: self.min[a],
                    max: self.max[a],
                    size_name: SIZE_NAMES[a],
                    size: shape[a],
                });
            }
        }
        Ok(())
    }

    /// The box grown by `margin` voxels on both sides of each axis (`[z, y, x]`), clamped to a
    /// volume of `shape`. The box must lie inside that volume.
    pub fn expand(&self, margin: [usize; 3], shape: [usize; 3]) -> Result<Self, GeometryError> {
        self.check_inside(shape)?;
        Ok(Self {
            min: std::array::from_fn(|a| self.min[a].saturating_sub(margin[a])),
            max: std::array::from_fn(|a| self.max[a].saturating_add(margin[a]).min(shape[a])),
        })
    }

    /// The voxels in both boxes, `None` when they do not overlap.
    pub fn intersect(&self, other: &Box3) -> Option<Box3> {
        let min = std::array::from_fn(|a| self.min[a].max(other.min[a]));
        let max = std::array::from_fn(|a| self.max[a].min(other.max[a]));
        Box3::new(min, max).ok()
    }

    /// Whether voxel `zyx` is inside.
    pub fn contains(&self, zyx: [usize; 3]) -> bool {
        (0..3).all(|a| self.min[a] <= zyx[a] && zyx[a] < self.max[a])
    }
}

impl fmt::Display for Box3 {
    /// `z 40..70, y 10..30, x 5..25` (half-open).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [z, y, x] = self.ranges();
        write!(f, "z {z:?}, y {y:?}, x {x:?}")
    }
}

/// A half-open range of axial slices `start..end` (z indices): the method's slice-level
/// label `z_start..z_end`. Never empty (checked at construction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SliceRange {
    start: usize,
    end: usize,
}

impl SliceRange {
    pub fn new(start: usize, end: usize) -> Result<Self, GeometryError> {
        if start >= end {
            return Err(GeometryError::EmptySliceRange { start, end });
        }
        Ok(Self { start, end })
    }

    /// First slice inside.
    pub fn start(&self) -> usize {
        self.start
    }

    /// One past the last slice inside.
    pub fn end(&self) -> usize {
        self.end
    }

    /// Number of slices inside.
    pub fn slice_count(&self) -> usize {
        self.end - self.start
    }

    pub fn contains(&self, z: usize) -> bool {
        self.start <= z && z < self.end
    }

    /// Whether the range lies inside a volume of `depth` slices.
    pub fn fits(&self, depth: usize) -> bool {
        self.check_inside(depth).is_ok()
    }

    pub fn check_inside(&self, depth: usize) -> Result<(), GeometryError> {
        if self.end > depth {
            return Err(GeometryError::SliceRangeOutside { start: self.start, end: self.end, depth });
        }
        Ok(())
    }
}

impl fmt::Display for SliceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "z {}..{}", self.start, self.end)
    }
}

/// A mask of `shape` that is true inside `region`. The part of a box that reaches past the
/// volume is dropped: a fracture box that sticks out of a vertebra crop marks what is inside.
pub fn box_mask(shape: [usize; 3], region: &Box3) -> Mask {
    let mut mask = Mask::from_elem(shape, false);
    if let Some(inside) = Box3::whole(shape).ok().and_then(|whole| whole.intersect(region)) {
        let [z, y, x] = inside.ranges();
        mask.slice_mut(ndarray::s![z, y, x]).fill(true);
    }
    mask
}

/// A mask of `shape` that is true on every slice of `slices` (clipped to the volume's depth).
pub fn slice_mask(shape: [usize; 3], slices: &SliceRange) -> Mask {
    let mut mask = Mask::from_elem(shape, false);
    let z = slices.start.min(shape[0])..slices.end.min(shape[0]);
    mask.slice_mut(ndarray::s![z, .., ..]).fill(true);
    mask
}

/// The smallest box holding every true voxel, `None` for an empty mask.
pub fn bounding_box(mask: &Mask) -> Option<Box3> {
    let mut min = [usize::MAX; 3];
    let mut max = [0usize; 3];
    for ((z, y, x), &inside) in mask.indexed_iter() {
        if inside {
            for (a, v) in [z, y, x].into_iter().enumerate() {
                min[a] = min[a].min(v);
                max[a] = max[a].max(v + 1);
            }
        }
    }
    Box3::new(min, max).ok()
}

/// 26-connected components of a mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Components {
    /// Same shape as the mask: 0 for background, `1..=n` for the component a voxel is in.
    /// Labels are numbered in C order (`[z, y, x]`, x fastest) of each component's first voxel.
    pub labels: Array3<u32>,
    /// Voxel count of each component: `sizes[k - 1]` is the size of label `k`.
    pub sizes: Vec<usize>,
}

impl Components {
    /// Number of components.
    pub fn count(&self) -> usize {
        self.sizes.len()
    }
}

/// Labels the 26-connected components of `mask` (voxels touching by a face, an edge or a
/// corner belong together). Flood fill with an explicit stack, so a 512^3 mask cannot
/// overflow the call stack; memory beyond the labels is the stack of pending voxels.
pub fn connected_components(mask: &Mask) -> Components {
    let mask = mask.as_standard_layout();
    let inside = mask.as_slice().expect("standard layout is contiguous");
    let [depth, height, width] = [mask.shape()[0], mask.shape()[1], mask.shape()[2]];
    let mut labels = vec![0u32; inside.len()];
    let mut sizes = Vec::new();
    let mut pending = Vec::new();
    for seed in 0..inside.len() {
        if !inside[seed] || labels[seed] != 0 {
            continue;
        }
        let label = u32::try_from(sizes.len() + 1).expect("fewer than 2^32 components");
        labels[seed] = label;
        pending.push(seed);
        let mut size = 0;
        while let Some(at) = pending.pop() {
            size += 1;
            let (z, y, x) = (at / (height * width), at / width % height, at % width);
            for nz in z.saturating_sub(1)..(z + 2).min(depth) {
                for ny in y.saturating_sub(1)..(y + 2).min(height) {
                    for nx in x.saturating_sub(1)..(x + 2).min(width) {
                        let next = (nz * height + ny) * width + nx;
                        if inside[next] && labels[next] == 0 {
                            labels[next] = label;
                            pending.push(next);
                        }
                    }
                }
            }
        }
        sizes.push(size);
    }
    let labels = Array3::from_shape_vec((depth, height, width), labels).expect("one label per voxel");
    Components { labels, sizes }
}

/// The mask without its 26-connected components smaller than `min_voxels`.
pub fn remove_small_components(mask: &Mask, min_voxels: usize) -> Mask {
    let components = connected_components(mask);
    components.labels.mapv(|label| label != 0 && components.sizes[label as usize - 1] >= min_voxels)
}

fn reverse(v: [usize; 3]) -> [usize; 3] {
    [v[2], v[1], v[0]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_from(shape: [usize; 3], voxels: &[[usize; 3]]) -> Mask {
        let mut mask = Mask::from_elem(shape, false);
        for &v in voxels {
            mask[v] = true;
        }
        mask
    }

    #[test]
    fn box_is_half_open_and_validated() {
        let b = Box3::new([1, 2, 3], [4, 6, 8]).unwrap();
        assert_eq!(b.shape(), [3, 4, 5]);
        assert_eq!(b.voxels(), 60);
        assert!(b.contains([1, 2, 3]));
        assert!(!b.contains([4, 2, 3]), "max is exclusive");
        assert_eq!(Box3::new([1, 2, 3], [4, 2, 8]), Err(GeometryError::EmptyBox { axis: "y", min: 2, max: 2 }));
    }

    #[test]
    fn from_xyz_reverses_into_zyx() {
        let b = Box3::from_xyz([5, 10, 40], [25, 30, 70]).unwrap();
        assert_eq!((b.min(), b.max()), ([40, 10, 5], [70, 30, 25]));
        assert_eq!(b.to_string(), "z 40..70, y 10..30, x 5..25");
        assert_eq!(b.slice_range(), SliceRange::new(40, 70).unwrap());
    }

    #[test]
    fn box_outside_names_axis_and_sizes() {
        let b = Box3::new([40, 0, 0], [70, 10, 10]).unwrap();
        let err = b.check_inside([64, 128, 128]).unwrap_err();
        assert_eq!(err.to_string(), "box z 40..70 outside volume depth 64");
        assert!(!b.fits([64, 128, 128]));
        assert!(b.fits([70, 10, 10]), "a box may end exactly at the volume's edge");
        let wide = Box3::new([0, 0, 5], [1, 1, 12]).unwrap();
        assert_eq!(wide.check_inside([4, 4, 10]).unwrap_err().to_string(), "box x 5..12 outside volume width 10");
    }

    #[test]
    fn expand_grows_by_margin_and_clamps_at_edges() {
        let b = Box3::new([1, 5, 5], [3, 6, 9]).unwrap();
        let grown = b.expand([2, 1, 3], [4, 10, 10]).unwrap();
        assert_eq!((grown.min(), grown.max()), ([0, 4, 2], [4, 7, 10]));
        assert!(b.expand([1, 1, 1], [2, 10, 10]).is_err(), "a box outside the volume is an error");
    }

    #[test]
    fn intersect_overlapping_and_disjoint() {
        let a = Box3::new([0, 0, 0], [4, 4, 4]).unwrap();
        let b = Box3::new([2, 3, 1], [6, 5, 3]).unwrap();
        assert_eq!(a.intersect(&b), Some(Box3::new([2, 3, 1], [4, 4, 3]).unwrap()));
        let far = Box3::new([4, 0, 0], [5, 4, 4]).unwrap();
        assert_eq!(a.intersect(&far), None, "touching half-open boxes share no voxel");
    }

    #[test]
    fn slice_range_validated_and_checked_against_depth() {
        assert_eq!(SliceRange::new(3, 3), Err(GeometryError::EmptySliceRange { start: 3, end: 3 }));
        let r = SliceRange::new(2, 5).unwrap();
        assert_eq!(r.slice_count(), 3);
        assert!(r.contains(2) && !r.contains(5));
        assert_eq!(r.check_inside(4).unwrap_err().to_string(), "slice range z 2..5 outside volume depth 4");
        assert!(r.fits(5));
    }

    #[test]
    fn box_mask_marks_exactly_the_box() {
        let b = Box3::new([1, 0, 2], [3, 2, 4]).unwrap();
        let mask = box_mask([4, 3, 5], &b);
        assert_eq!(mask.iter().filter(|&&v| v).count(), b.voxels());
        assert!(mask[[1, 0, 2]] && mask[[2, 1, 3]]);
        assert!(!mask[[3, 0, 2]] && !mask[[1, 2, 2]] && !mask[[1, 0, 4]]);
    }

    #[test]
    fn box_mask_keeps_only_the_part_inside_the_volume() {
        let b = Box3::new([2, 0, 0], [6, 2, 2]).unwrap();
        assert_eq!(box_mask([4, 2, 2], &b).iter().filter(|&&v| v).count(), 2 * 2 * 2);
        let beyond = Box3::new([5, 0, 0], [6, 1, 1]).unwrap();
        assert!(!box_mask([4, 2, 2], &beyond).iter().any(|&v| v));
    }

    #[test]
    fn slice_mask_marks_whole_slices() {
        let mask = slice_mask([5, 2, 3], &SliceRange::new(1, 3).unwrap());
        assert_eq!(mask.iter().filter(|&&v| v).count(), 2 * 2 * 3);
        assert!(mask[[1, 1, 2]] && mask[[2, 0, 0]]);
        assert!(!mask[[0, 0, 0]] && !mask[[3, 1, 1]]);
    }

    #[test]
    fn bounding_box_of_scattered_voxels() {
        let mask = mask_from([5, 5, 5], &[[1, 3, 0], [3, 1, 2], [2, 2, 4]]);
        assert_eq!(bounding_box(&mask), Some(Box3::new([1, 1, 0], [4, 4, 5]).unwrap()));
        assert_eq!(bounding_box(&Mask::from_elem([2, 2, 2], false)), None);
    }

    #[test]
    fn blobs_touching_only_at_a_corner_are_one_component() {
        // Blob A: a 2x2x2 cube at the origin. Blob B: a 2x2x2 cube at [2, 2, 2]: A's voxel
        // [1, 1, 1] and B's voxel [2, 2, 2] share only a corner, so one 26-component of 16.
        // Blob C: one voxel at [0, 4, 4], two voxels away from everything else.
        let mut voxels = Vec::new();
        for d in 0..8 {
            let [dz, dy, dx] = [d / 4, d / 2 % 2, d % 2];
            voxels.push([dz, dy, dx]);
            voxels.push([2 + dz, 2 + dy, 2 + dx]);
        }
        voxels.push([0, 4, 4]);
        let components = connected_components(&mask_from([4, 5, 5], &voxels));
        assert_eq!(components.count(), 2);
        assert_eq!(components.sizes, vec![16, 1]);
        assert_eq!(components.labels[[1, 1, 1]], components.labels[[2, 2, 2]]);
        assert_eq!(components.labels[[0, 0, 0]], 1, "numbered in C order of first voxel");
        assert_eq!(components.labels[[0, 4, 4]], 2);
        assert_eq!(components.labels[[0, 0, 3]], 0, "background is 0");
    }

    #[test]
    fn components_of_a_non_standard_layout_mask() {
        // Two voxels far apart along x, in a mask viewed with reversed axes.
        let xyz = mask_from([6, 1, 2], &[[0, 0, 0], [5, 0, 1]]);
        let zyx = xyz.reversed_axes();
        let components = connected_components(&zyx);
        assert_eq!(components.sizes, vec![1, 1]);
        assert_eq!(components.labels[[1, 0, 5]], 2);
    }

    #[test]
    fn remove_small_drops_components_below_the_size() {
        // A 3-voxel bar (size 3) and a lone voxel (size 1).
        let mask = mask_from([3, 3, 5], &[[1, 1, 0], [1, 1, 1], [1, 1, 2], [1, 1, 4]]);
        let cleaned = remove_small_components(&mask, 2);
        assert_eq!(cleaned.iter().filter(|&&v| v).count(), 3);
        assert!(cleaned[[1, 1, 1]] && !cleaned[[1, 1, 4]]);
        assert_eq!(remove_small_components(&mask, 3), cleaned, "a component of exactly min_voxels stays");
        assert!(!remove_small_components(&mask, 4).iter().any(|&v| v));
    }
}
