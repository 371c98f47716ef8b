//! fracmap-dicom against readers made by others: pydicom's test CT files read with the same
//! values as pydicom and the same voxels and affine as dcm2niix gives; a phantom series as
//! dcm2niix converts it; our SEG and Parametric Map as pydicom and highdicom read them.
//!
//! The references run from the project's Python (scripts/setup.sh installs pydicom,
//! pydicom-data, dcm2niix and highdicom from PyPI).

mod common;

use std::path::{Path, PathBuf};

use common::python::run_json_script;
use common::{assert_same_world, oblique_affine, phantom};
use fracmap_core::Volume;
use fracmap_core::nifti_io::read_volume;
use fracmap_dicom::ct_writer::{SeriesIdentity, write_ct_series};
use fracmap_dicom::derived::SEGMENT_LABEL;
use fracmap_dicom::{Algorithm, CtSeries, Source, discover, read_series, write_parametric_map, write_segmentation};
use ndarray::Array3;
use serde_json::Value;

/// dcm2niix's conversion of `input` (a file or a folder): its one NIfTI, read by core.
fn dcm2niix(input: &Path, out: &Path) -> Volume {
    let answer = run_json_script("dicom_dcm2niix.py", &[input.as_os_str(), out.as_os_str()]);
    let niftis = answer["niftis"].as_array().unwrap();
    assert_eq!(niftis.len(), 1, "dcm2niix wrote {niftis:?}: {}", answer["log"]);
    read_volume(Path::new(niftis[0].as_str().unwrap())).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

/// One of pydicom's test files: ours vs pydicom (values, when pydicom can decode it here;
/// geometry per frame) and vs dcm2niix (voxels and affine within 1e-3 mm).
fn check_test_file(name: &str, expect_pydicom_decodes: bool) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("pydicom.f32");
    let reference = run_json_script("dicom_pydicom_read.py", &[name.as_ref(), raw.as_os_str()]);
    let path = PathBuf::from(reference["path"].as_str().unwrap());
    let ours: CtSeries = read_series(vec![Source::File(path.clone())], None).unwrap();
    let [frames, rows, columns] = ours.volume.shape();
    let shape: Vec<usize> =
        reference["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(shape, [frames, rows, columns]);

    // Our slice z is pydicom's frame `frame_number - 1` (slices are put in position order).
    let frame_of = |z: usize| ours.reference.slices[z].frame_number.map_or(0, |n| n as usize - 1);
    for z in 0..frames {
        let frame = &reference["frames"][frame_of(z)];
        let position = floats(&frame["position"]);
        assert_eq!(ours.reference.slices[z].position.to_vec(), position, "{name} slice {z}");
        assert_eq!(ours.reference.orientation.to_vec(), floats(&frame["orientation"]), "{name}");
        assert_eq!(ours.reference.pixel_spacing.to_vec(), floats(&frame["pixel_spacing"]), "{name}");
    }
    assert_eq!(reference["decoded"].as_bool(), Some(expect_pydicom_decodes), "{name}: {}", reference["why_not"]);
    if expect_pydicom_decodes {
        let bytes = std::fs::read(&raw).unwrap();
        let theirs: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let plane = rows * columns;
        for z in 0..frames {
            let frame = frame_of(z);
            let ours_plane = &ours.volume.as_slice()[z * plane..(z + 1) * plane];
            assert!(
                ours_plane == &theirs[frame * plane..(frame + 1) * plane],
                "{name}: slice {z} differs from pydicom"
            );
        }
    }

    let converted = dcm2niix(&path, &dir.path().join("nifti"));
    assert_same_world(&ours.volume, &converted, 1e-3);
}

#[test]
fn ct_small_uncompressed() {
    check_test_file("CT_small.dcm", true);
}

#[test]
fn ct_693_uncompressed_14_bits() {
    check_test_file("693_UNCI.dcm", true);
}

#[test]
fn ct_693_jpeg_2000_lossy() {
    check_test_file("693_J2KI.dcm", true);
}

#[test]
fn ct_jpeg_lossless() {
    // pydicom needs pylibjpeg or GDCM for JPEG lossless (not installed): dcm2niix checks it.
    check_test_file("bad_sequence.dcm", false);
}

#[test]
fn ct_jpeg_2000_lossless_with_un_elements() {
    check_test_file("explicit_VR-UN.dcm", true);
}

#[test]
fn enhanced_multi_frame_ct() {
    check_test_file("eCT_Supplemental.dcm", true);
}

#[test]
fn rle_lossless() {
    check_test_file("MR_small_RLE.dcm", true);
}

#[test]
fn an_oblique_phantom_series_reads_as_dcm2niix_converts_it() {
    let dir = tempfile::tempdir().unwrap();
    let series_dir = dir.path().join("series");
    std::fs::create_dir(&series_dir).unwrap();
    let volume = phantom([7, 9, 11], oblique_affine(25.0, [2.5, 0.8, 0.7], [-40.0, 12.5, 300.0]));
    write_ct_series(&series_dir, &volume, &SeriesIdentity::phantom()).unwrap();
    let ours = read_series(discover(std::slice::from_ref(&series_dir)).unwrap(), None).unwrap();
    let converted = dcm2niix(&series_dir, &dir.path().join("nifti"));
    assert_same_world(&ours.volume, &converted, 1e-3);
}

#[test]
fn seg_and_parametric_map_read_back_with_pydicom_and_highdicom() {
    let dir = tempfile::tempdir().unwrap();
    let series_dir = dir.path().join("series");
    std::fs::create_dir(&series_dir).unwrap();
    let identity = SeriesIdentity::phantom();
    let volume = phantom([5, 8, 9], oblique_affine(-30.0, [3.0, 0.9, 0.6], [12.0, -80.0, 40.0]));
    write_ct_series(&series_dir, &volume, &identity).unwrap();
    let source = read_series(discover(&[series_dir]).unwrap(), None).unwrap();

    let mask = Array3::from_shape_fn([5, 8, 9], |(z, y, x)| (1..4).contains(&z) && (2..6).contains(&y) && x > y);
    let probability = Array3::from_shape_fn([5, 8, 9], |(z, y, x)| ((z * 72 + y * 9 + x) as f32) / 360.0);
    let algorithm = Algorithm { name: "fracmap-test".into(), version: "0.1.0".into() };
    let seg_path = dir.path().join("fracture.seg.dcm");
    let pm_path = dir.path().join("probability.pm.dcm");
    let seg = write_segmentation(&seg_path, &source.reference, &mask, &algorithm).unwrap();
    write_parametric_map(&pm_path, &source.reference, &probability, &algorithm).unwrap();

    let pm_raw = dir.path().join("pm.f32");
    let mut args = vec![seg_path.into_os_string(), pm_path.into_os_string(), pm_raw.clone().into_os_string()];
    args.extend(source.reference.slices.iter().map(|s| s.sop_instance_uid.clone().into()));
    let read = run_json_script("dicom_seg_check.py", &args);

    let set: Vec<u64> = mask.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| i as u64).collect();
    let indices = |v: &Value| v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(indices(&read["seg"]["mask_indices"]), set, "pydicom's mask");
    assert_eq!(indices(&read["highdicom"]["mask_indices"]), set, "highdicom's mask by source instance");
    assert_eq!(read["seg"]["segment_label"], SEGMENT_LABEL);
    assert_eq!(read["highdicom"]["segment_label"], SEGMENT_LABEL);
    assert_eq!(read["highdicom"]["segmentation_type"], "BINARY");

    for (object, sop_class) in
        [("seg", "1.2.840.10008.5.1.4.1.1.66.4"), ("parametric_map", "1.2.840.10008.5.1.4.1.1.30")]
    {
        let read = &read[object];
        assert_eq!(read["sop_class_uid"], sop_class);
        assert_eq!(read["shape"], serde_json::json!([5, 8, 9]));
        assert_eq!(read["frame_of_reference_uid"], identity.frame_of_reference_uid.as_str());
        assert_eq!(read["study_instance_uid"], identity.study_instance_uid.as_str());
        assert_eq!(read["referenced_series_uid"], identity.series_instance_uid.as_str());
        assert_ne!(read["series_instance_uid"], identity.series_instance_uid.as_str());
        assert!(read["sop_instance_uid"].as_str().unwrap().starts_with("2.25."));
        assert_eq!(read["patient_name"], identity.patient_name.as_str());
        assert_eq!(read["patient_id"], identity.patient_id.as_str());
        for (r, expected) in floats(&read["orientation"]).iter().zip(source.reference.orientation) {
            assert!((r - expected).abs() < 1e-9);
        }
        assert_eq!(floats(&read["pixel_spacing"]), source.reference.pixel_spacing.to_vec());
        assert!((read["spacing_between_slices"].as_f64().unwrap() - 3.0).abs() < 1e-9);
        for (z, slice) in source.reference.slices.iter().enumerate() {
            assert_eq!(read["source_instances"][z], slice.sop_instance_uid.as_str());
            for (r, expected) in floats(&read["positions"][z]).iter().zip(slice.position) {
                assert!((r - expected).abs() < 1e-9, "{object} frame {z}");
            }
        }
    }
    assert_eq!(read["seg"]["sop_instance_uid"], seg.sop_instance_uid.as_str());

    assert_eq!(read["highdicom"]["volume_shape"], serde_json::json!([5, 8, 9]));
    let affine = source.volume.affine();
    // highdicom's volume of the SEG: the source's grid in LPS, voxel axes (slice, row,
    // column) = our (z, y, x); it may stack the slices the other way round.
    let theirs = |r: usize, c: usize| read["highdicom"]["volume_affine"][r][c].as_f64().unwrap();
    let lps = |r: usize, c: usize| if r < 2 { -affine[r][c] } else { affine[r][c] };
    let reversed = theirs(0, 0) * lps(0, 2) + theirs(1, 0) * lps(1, 2) + theirs(2, 0) * lps(2, 2) < 0.0;
    for r in 0..3 {
        let (slice, origin) = if reversed { (-lps(r, 2), lps(r, 3) + 4.0 * lps(r, 2)) } else { (lps(r, 2), lps(r, 3)) };
        for (c, expected) in [slice, lps(r, 1), lps(r, 0), origin].into_iter().enumerate() {
            assert!(
                (theirs(r, c) - expected).abs() < 1e-6,
                "highdicom affine [{r}][{c}] = {}, ours {expected}",
                theirs(r, c)
            );
        }
    }

    let values: Vec<f32> =
        std::fs::read(&pm_raw).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert!(values == probability.as_slice().unwrap(), "the parametric map's values");
    assert_eq!(read["parametric_map"]["real_world_slope"], 1.0);
    assert_eq!(read["parametric_map"]["real_world_intercept"], 0.0);
}
