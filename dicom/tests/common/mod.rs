//! What fracmap-dicom's tests share: phantoms, DICOM edits, and "same voxels at the same
//! world positions" for volumes whose voxel axes may be ordered or flipped differently (as
//! dcm2niix flips rows).

#![allow(dead_code)]

#[path = "../../../core/tests/common/mod.rs"]
pub mod python;

use std::path::Path;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::open_file;
use fracmap_core::{Affine, Volume};
use ndarray::Array3;

/// A phantom of distinct integer HU values, `[z, y, x]`.
pub fn phantom(shape: [usize; 3], affine: Affine) -> Volume {
    let data = Array3::from_shape_fn(shape, |(z, y, x)| (z * 100 + y * 10 + x) as f32 - 1000.0 + (x * y) as f32);
    let spacing = fracmap_core::volume::affine_spacing(&affine);
    Volume::new(data, spacing, affine).unwrap()
}

/// An oblique RAS affine: rotation by `degrees` about (1, 2, 3), spacing `[z, y, x]`, origin.
pub fn oblique_affine(degrees: f64, spacing: [f64; 3], origin: [f64; 3]) -> Affine {
    let norm = 14f64.sqrt();
    let [ux, uy, uz] = [1.0 / norm, 2.0 / norm, 3.0 / norm];
    let (s, c) = degrees.to_radians().sin_cos();
    let t = 1.0 - c;
    let rotation = [
        [t * ux * ux + c, t * ux * uy - s * uz, t * ux * uz + s * uy],
        [t * ux * uy + s * uz, t * uy * uy + c, t * uy * uz - s * ux],
        [t * ux * uz - s * uy, t * uy * uz + s * ux, t * uz * uz + c],
    ];
    let xyz = [spacing[2], spacing[1], spacing[0]];
    let mut affine = [[0.0; 4]; 4];
    for r in 0..3 {
        for col in 0..3 {
            affine[r][col] = rotation[r][col] * xyz[col];
        }
        affine[r][3] = origin[r];
    }
    affine[3][3] = 1.0;
    affine
}

/// Rewrites one attribute of a DICOM file (`None`: removes it).
pub fn edit(path: &Path, tag: Tag, value: Option<(VR, PrimitiveValue)>) {
    let mut object = open_file(path).unwrap();
    match value {
        Some((vr, value)) => {
            object.put(DataElement::new(tag, vr, value));
        }
        None => {
            object.remove_element(tag);
        }
    }
    object.write_to_file(path).unwrap();
}

pub fn decimal_strings(values: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|v| format!("{v}")).collect::<Vec<_>>().into())
}

/// Checks that `theirs` holds the same voxels as `ours` at the same world positions: the
/// affines must differ only by an ordering and flipping of voxel axes (within `tolerance_mm`
/// at every corner), and every voxel must be equal.
pub fn assert_same_world(ours: &Volume, theirs: &Volume, tolerance_mm: f64) {
    let a = ours.affine();
    let b = theirs.affine();
    let inverse = fracmap_core::preprocess::invert(a);
    // Voxel (x, y, z, 1) of theirs -> voxel of ours.
    let map: [[f64; 4]; 4] =
        std::array::from_fn(|r| std::array::from_fn(|c| (0..4).map(|k| inverse[r][k] * b[k][c]).sum()));
    let rounded = map.map(|row| row.map(f64::round));
    for row in &rounded[..3] {
        assert_eq!(row[..3].iter().filter(|v| **v != 0.0).count(), 1, "not an axis permutation: {map:?}");
    }
    // The rounded map reproduces their affine within tolerance.
    let rebuilt: [[f64; 4]; 4] =
        std::array::from_fn(|r| std::array::from_fn(|c| (0..4).map(|k| a[r][k] * rounded[k][c]).sum()));
    for r in 0..3 {
        for c in 0..4 {
            assert!(
                (rebuilt[r][c] - b[r][c]).abs() < tolerance_mm,
                "affines differ at [{r}][{c}]: ours {a:?} theirs {b:?}"
            );
        }
    }
    let [tz, ty, tx] = theirs.shape();
    let [oz, oy, ox] = ours.shape();
    assert_eq!(tz * ty * tx, oz * oy * ox, "voxel counts differ");
    let mut mismatches = 0;
    let mut first = None;
    for ((z, y, x), value) in theirs.data().indexed_iter() {
        let v = [x as f64, y as f64, z as f64, 1.0];
        let o: [f64; 3] = std::array::from_fn(|r| (0..4).map(|k| rounded[r][k] * v[k]).sum());
        let (xo, yo, zo) = (o[0] as usize, o[1] as usize, o[2] as usize);
        assert!(o.iter().all(|c| *c >= 0.0) && xo < ox && yo < oy && zo < oz, "voxel {o:?} outside ours");
        if ours.data()[[zo, yo, xo]] != *value {
            mismatches += 1;
            first.get_or_insert(format!(
                "[z, y, x] = [{zo}, {yo}, {xo}]: ours {} theirs {value}",
                ours.data()[[zo, yo, xo]]
            ));
        }
    }
    assert_eq!(mismatches, 0, "{mismatches} voxels differ; the first: {first:?}");
}
