//! A phantom written as a DICOM CT series by dicom-rs, read back: values and geometry exact,
//! whatever the file names; and the series that must be refused, each refused by name.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_same_world, decimal_strings, edit, oblique_affine, phantom};
use dicom_core::VR;
use dicom_dictionary_std::tags;
use fracmap_core::volume::spacing_affine;
use fracmap_dicom::ct_writer::{SeriesIdentity, write_ct_series};
use fracmap_dicom::{DicomError, Source, discover, read_series};

const SHAPE: [usize; 3] = [6, 10, 12];

fn write_phantom(dir: &Path, identity: &SeriesIdentity) -> (fracmap_core::Volume, Vec<PathBuf>) {
    let volume = phantom(SHAPE, oblique_affine(25.0, [2.5, 0.8, 0.7], [-40.0, 12.5, 300.0]));
    let files = write_ct_series(dir, &volume, identity).unwrap();
    (volume, files)
}

fn read_dir(dir: &Path, series: Option<&str>) -> Result<fracmap_dicom::CtSeries, DicomError> {
    read_series(discover(&[dir.to_path_buf()])?, series)
}

fn error_text(dir: &Path) -> String {
    read_dir(dir, None).unwrap_err().to_string()
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn an_oblique_series_with_shuffled_names_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let identity = SeriesIdentity::phantom();
    let (volume, files) = write_phantom(dir.path(), &identity);
    // Names that sort in neither slice nor InstanceNumber order.
    for (index, path) in files.iter().enumerate() {
        let shuffled = dir.path().join(format!("IM{}", (index * 7 + 3) % files.len()));
        std::fs::rename(path, shuffled).unwrap();
    }
    let series = read_dir(dir.path(), None).unwrap();
    assert_eq!(series.volume.shape(), SHAPE);
    assert_eq!(series.volume.data(), volume.data());
    for (ours, written) in series.volume.affine().iter().flatten().zip(volume.affine().iter().flatten()) {
        assert!((ours - written).abs() < 1e-9, "{:?} vs {:?}", series.volume.affine(), volume.affine());
    }
    assert_eq!(series.reference.series_instance_uid, identity.series_instance_uid);
    assert_eq!(series.reference.frame_of_reference_uid.as_deref(), Some(identity.frame_of_reference_uid.as_str()));
    assert_eq!(series.reference.slices.len(), SHAPE[0]);
    assert!(series.notes.is_empty(), "{:?}", series.notes);
    // Nothing of the patient shows in what may be printed.
    let shown = format!("{series:?}");
    assert!(!shown.contains(&identity.patient_id) && !shown.contains("Phantom"), "{shown}");
}

#[test]
fn a_stack_whose_z_axis_points_against_the_normal_is_reordered_to_the_same_world() {
    let dir = tempfile::tempdir().unwrap();
    // LPS-style: x and y flipped relative to RAS, and z running against the slice normal.
    let mut affine = spacing_affine([3.0, 0.5, 0.5]);
    affine[0][0] = -0.5;
    affine[1][1] = -0.5;
    affine[0][3] = 10.0;
    affine[2][3] = -20.0;
    // A left-handed grid: slice normal (x cross y) is +z, so z = -3 runs against it.
    affine[2][2] = -3.0;
    let volume = phantom(SHAPE, affine);
    write_ct_series(dir.path(), &volume, &SeriesIdentity::phantom()).unwrap();
    let series = read_dir(dir.path(), None).unwrap();
    assert_eq!(series.volume.affine()[2][2], 3.0, "slices go along the normal");
    assert_eq!(series.volume.data()[[0, 0, 0]], volume.data()[[SHAPE[0] - 1, 0, 0]]);
    assert_same_world(&series.volume, &volume, 1e-9);
}

#[test]
fn a_folder_of_two_series_gives_the_larger_unless_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let large = SeriesIdentity::phantom();
    let small = SeriesIdentity { file_prefix: "other".into(), ..SeriesIdentity::phantom() };
    write_phantom(dir.path(), &large);
    let other = phantom([3, 4, 5], spacing_affine([1.0, 1.0, 1.0]));
    write_ct_series(dir.path(), &other, &small).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not DICOM").unwrap();

    let chosen = read_dir(dir.path(), None).unwrap();
    assert_eq!(chosen.volume.shape(), SHAPE);
    assert_eq!(chosen.notes.len(), 1);
    assert!(
        chosen.notes[0].contains("2 series") && chosen.notes[0].contains(&large.series_instance_uid),
        "{:?}",
        chosen.notes
    );

    let named = read_dir(dir.path(), Some(&small.series_instance_uid)).unwrap();
    assert_eq!(named.volume.data(), other.data());

    let error = read_dir(dir.path(), Some("1.2.3")).unwrap_err().to_string();
    assert!(error.contains("1.2.3 is not in the input") && error.contains(&small.series_instance_uid), "{error}");
}

#[test]
fn bytes_read_as_the_files_do() {
    let dir = tempfile::tempdir().unwrap();
    let (volume, files) = write_phantom(dir.path(), &SeriesIdentity::phantom());
    let sources = files
        .iter()
        .rev()
        .map(|path| Source::Memory { name: file_name(path), bytes: std::fs::read(path).unwrap() })
        .collect();
    let series = read_series(sources, None).unwrap();
    assert_eq!(series.volume.data(), volume.data());
}

#[test]
fn a_truncated_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, files) = write_phantom(dir.path(), &SeriesIdentity::phantom());
    let bytes = std::fs::read(&files[2]).unwrap();
    std::fs::write(&files[2], &bytes[..bytes.len() / 2]).unwrap();
    let error = error_text(dir.path());
    assert!(error.contains(&file_name(&files[2])), "{error}");
}

#[test]
fn a_file_without_pixel_data_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, files) = write_phantom(dir.path(), &SeriesIdentity::phantom());
    edit(&files[4], tags::PIXEL_DATA, None);
    let error = error_text(dir.path());
    assert!(error.contains(&file_name(&files[4])) && error.contains("no pixel data"), "{error}");
}

#[test]
fn an_inconsistent_orientation_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, files) = write_phantom(dir.path(), &SeriesIdentity::phantom());
    edit(&files[3], tags::IMAGE_ORIENTATION_PATIENT, Some((VR::DS, decimal_strings(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))));
    let error = error_text(dir.path());
    assert!(error.contains(&file_name(&files[3])) && error.contains("ImageOrientationPatient"), "{error}");
}

/// Moves slice `index` by `offset` (LPS mm).
fn move_slice(path: &Path, offset: [f64; 3]) {
    let object = dicom_object::open_file(path).unwrap();
    let position = object.element(tags::IMAGE_POSITION_PATIENT).unwrap().to_multi_float64().unwrap();
    let moved: Vec<f64> = position.iter().zip(offset).map(|(p, o)| p + o).collect();
    edit(path, tags::IMAGE_POSITION_PATIENT, Some((VR::DS, decimal_strings(&moved))));
}

fn slice_normal(path: &Path) -> [f64; 3] {
    let object = dicom_object::open_file(path).unwrap();
    let o = object.element(tags::IMAGE_ORIENTATION_PATIENT).unwrap().to_multi_float64().unwrap();
    [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]]
}

#[test]
fn uneven_spacing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, files) = write_phantom(dir.path(), &SeriesIdentity::phantom());
    let normal = slice_normal(&files[0]);
    move_slice(&files[3], normal.map(|n| n * 0.8));
    let error = error_text(dir.path());
    assert!(error.contains("uneven slice spacing") && error.contains(&file_name(&files[3])), "{error}");
}

#[test]
fn a_missing_slice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, files) = write_phantom(dir.path(), &SeriesIdentity::phantom());
    std::fs::remove_file(&files[2]).unwrap();
    let error = error_text(dir.path());
    assert!(error.contains("missing slices") && error.contains("about 1 slice"), "{error}");
    assert!(error.contains(&file_name(&files[1])) && error.contains(&file_name(&files[3])), "{error}");
}

#[test]
fn gantry_tilt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, files) = write_phantom(dir.path(), &SeriesIdentity::phantom());
    let object = dicom_object::open_file(&files[0]).unwrap();
    let o = object.element(tags::IMAGE_ORIENTATION_PATIENT).unwrap().to_multi_float64().unwrap();
    // Each slice shifted along the column direction by 0.5 mm more than the last: ~11 degrees.
    for (z, path) in files.iter().enumerate() {
        move_slice(path, [o[3], o[4], o[5]].map(|c| c * 0.5 * z as f64));
    }
    let error = error_text(dir.path());
    assert!(error.contains("gantry tilt") && error.contains("11.3"), "{error}");
}

#[test]
fn mixed_sizes_in_one_series_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let identity = SeriesIdentity::phantom();
    write_phantom(dir.path(), &identity);
    let odd = phantom([1, 4, 5], spacing_affine([1.0, 1.0, 1.0]));
    write_ct_series(dir.path(), &odd, &SeriesIdentity { file_prefix: "odd".into(), ..identity }).unwrap();
    let error = error_text(dir.path());
    assert!(error.contains("odd0000.dcm") && error.contains("one series, one size"), "{error}");
}

#[test]
fn a_file_given_that_is_not_dicom_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scan.nii");
    std::fs::write(&path, vec![0u8; 400]).unwrap();
    let error = discover(&[path]).unwrap_err().to_string();
    assert!(error.contains("scan.nii") && error.contains("not a DICOM Part 10 file"), "{error}");
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(discover(&[empty.path().to_path_buf()]), Err(DicomError::NoFiles { .. })));
}
