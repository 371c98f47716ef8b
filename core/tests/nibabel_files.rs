//! Our NIfTI reader and writer against nibabel, an independent reference: every `.nii` and
//! `.nii.gz` in nibabel's own test data, files nibabel writes for cases those lack, and files
//! we write. nibabel's view of each file comes from `scripts/py/nibabel_dump.py`, run with the
//! Python that `FRACMAP_PYTHON` names (set by `.cargo/config.toml`, installed by
//! `scripts/setup.sh`). Each file gets one line of output; run with `--nocapture` to see them.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use fracmap_core::nifti_io::{NiftiDtype, NiftiError, read_volume, write_mask, write_volume};
use fracmap_core::{Affine, Volume};
use ndarray::Array3;
use serde_json::Value;

const AFFINE_TOLERANCE: f64 = 1e-5;

fn nibabel_test_data() -> PathBuf {
    let code = "import nibabel, os; print(os.path.join(os.path.dirname(nibabel.__file__), 'tests', 'data'))";
    PathBuf::from(common::run_python(&["-c", code]).trim())
}

fn dump_script() -> PathBuf {
    common::script("nibabel_dump.py")
}

/// What nibabel sees in one file.
struct Nibabel {
    header: Value,
    /// `[z, y, x]` C order, for kind "volume".
    voxels: Vec<f32>,
}

impl Nibabel {
    fn of(file: &Path) -> Nibabel {
        let out = tempfile::tempdir().unwrap();
        common::run_python(&[dump_script().as_os_str(), file.as_os_str(), out.path().as_os_str()]);
        let header: Value = serde_json::from_slice(&std::fs::read(out.path().join("header.json")).unwrap()).unwrap();
        let voxels = std::fs::read(out.path().join("voxels.f32"))
            .map(|b| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
            .unwrap_or_default();
        Nibabel { header, voxels }
    }

    fn kind(&self) -> &str {
        self.header["kind"].as_str().unwrap()
    }

    fn detail(&self) -> &str {
        self.header["detail"].as_str().unwrap()
    }

    /// A number, list or nested list under `key`, flattened in row order.
    fn numbers(&self, key: &str) -> Vec<f64> {
        fn flatten(v: &Value) -> Vec<f64> {
            match v {
                Value::Array(items) => items.iter().flat_map(flatten).collect(),
                number => vec![number.as_f64().unwrap_or_else(|| panic!("not a number: {number}"))],
            }
        }
        flatten(&self.header[key])
    }

    fn affine(&self, key: &str) -> Option<Affine> {
        if self.header[key].is_null() {
            return None;
        }
        let n = self.numbers(key);
        Some(std::array::from_fn(|r| std::array::from_fn(|c| n[4 * r + c])))
    }
}

fn largest_difference(ours: &Affine, theirs: &Affine) -> f64 {
    ours.iter().flatten().zip(theirs.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// Voxels equal up to f32 rounding: both sides scale in f64 and round once to f32.
fn voxels_match(ours: &[f32], theirs: &[f32]) -> Result<(), String> {
    if ours.len() != theirs.len() {
        return Err(format!("{} voxels, nibabel {}", ours.len(), theirs.len()));
    }
    let bad = ours.iter().zip(theirs).enumerate().find(|(_, (a, b))| {
        let both_nan = a.is_nan() && b.is_nan();
        !both_nan && (*a - *b).abs() > 2.0 * f32::EPSILON * b.abs()
    });
    match bad {
        Some((i, (a, b))) => Err(format!("voxel {i} (C order [z, y, x]): ours {a}, nibabel {b}")),
        None => Ok(()),
    }
}

/// Our volume against nibabel's: shape, voxels, affine, spacing.
fn same_volume(ours: &Volume, nibabel: &Nibabel) -> Result<String, String> {
    let shape: Vec<usize> = nibabel.numbers("shape").iter().map(|&n| n as usize).collect();
    if ours.shape().as_slice() != shape {
        return Err(format!("shape [z, y, x] {:?}, nibabel {shape:?}", ours.shape()));
    }
    voxels_match(ours.as_slice(), &nibabel.voxels)?;
    let affine = nibabel.affine("affine").unwrap();
    let off = largest_difference(ours.affine(), &affine);
    if off > AFFINE_TOLERANCE {
        return Err(format!("affine off by {off:e}: ours {:?}, nibabel {affine:?}", ours.affine()));
    }
    let spacing = nibabel.numbers("spacing");
    if ours.spacing().iter().zip(&spacing).any(|(a, b)| (a - b).abs() > 1e-6 * b) {
        return Err(format!("spacing [z, y, x] {:?}, header says {spacing:?}", ours.spacing()));
    }
    Ok(format!("shape {shape:?}, affine within {off:.0e}"))
}

/// Reads `file` with our reader and nibabel; one line for it, `Err` on disagreement.
fn check_file(file: &Path) -> Result<String, String> {
    let nibabel = Nibabel::of(file);
    let ours = catch_unwind(AssertUnwindSafe(|| read_volume(file)))
        .map_err(|_| format!("our reader panicked; nibabel: {} ({})", nibabel.kind(), nibabel.detail()))?;
    match (nibabel.kind(), ours) {
        ("volume", Ok(volume)) => same_volume(&volume, &nibabel).map(|s| format!("volume, {}: {s}", nibabel.detail())),
        ("volume", Err(e)) => Err(format!("nibabel reads a volume ({}), we fail: {e}", nibabel.detail())),
        (kind, Err(e)) => Ok(format!("{kind} ({}), our error: {e}", nibabel.detail())),
        (kind, Ok(v)) => Err(format!("nibabel says {kind} ({}), we read shape {:?}", nibabel.detail(), v.shape())),
    }
}

/// Checks every `.nii` and `.nii.gz` in `dir`, printing a line per file; returns how many of
/// them nibabel read as volumes and how many it did not, panicking on any disagreement.
fn check_dir(dir: &Path) -> (usize, usize) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".nii") || p.to_string_lossy().ends_with(".nii.gz"))
        .collect();
    files.sort();
    let (mut volumes, mut refused, mut failures) = (0, 0, Vec::new());
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        match check_file(file) {
            Ok(line) => {
                println!("ok    {name}: {line}");
                if line.starts_with("volume") { volumes += 1 } else { refused += 1 }
            }
            Err(line) => {
                println!("FAIL  {name}: {line}");
                failures.push(format!("{name}: {line}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} files disagree with nibabel:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    (volumes, refused)
}

#[test]
fn every_nifti_file_in_nibabels_test_data_reads_as_nibabel_reads_it_or_is_an_error() {
    let (volumes, refused) = check_dir(&nibabel_test_data());
    // anatomical, reoriented_anat_moved, resampled_anat_moved, standard; functional and
    // example4d (frames), example_nifti2 and row_major.dconn (NIfTI-2).
    assert!(volumes >= 4 && refused >= 4, "only {volumes} volumes and {refused} refusals: is the data there?");
}

#[test]
fn files_nibabel_writes_for_the_cases_its_data_lacks_read_as_nibabel_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    common::run_python(&[dump_script().as_os_str(), "--make-variants".as_ref(), dir.path().as_os_str()]);
    let (volumes, refused) = check_dir(dir.path());
    // Scaled int16 twice, slope 0, qform only, neither form, sform beside another qform,
    // 2D, one-frame 4D, micrometres, int8, uint16, uint32, int64; complex and two frames.
    assert_eq!((volumes, refused), (13, 2));
}

#[test]
fn header_files_in_nibabels_test_data_are_errors_without_a_volume() {
    let data = nibabel_test_data();
    let error = read_volume(&data.join("nifti1.hdr")).unwrap_err();
    println!("nifti1.hdr (no nifti1.img beside it): {error}");
    assert!(matches!(&error, NiftiError::MissingImage { looked_for, .. } if looked_for[0] == data.join("nifti1.img")));
    let error = read_volume(&data.join("nifti2.hdr")).unwrap_err();
    println!("nifti2.hdr: {error}");
    assert!(matches!(error, NiftiError::Nifti2 { .. }));
    let error = read_volume(&data.join("analyze.hdr")).unwrap_err();
    println!("analyze.hdr: {error}");
    assert!(matches!(error, NiftiError::NotNifti { .. }));
}

/// Rotated, x flipped (qfac -1), shifted: a grid with every part of the qform in use.
fn oblique_volume() -> Volume {
    let (s, c) = 20f64.to_radians().sin_cos();
    let spacing = [3.0, 0.75, 0.6];
    let [sz, sy, sx] = spacing;
    let affine =
        [[-c * sx, -s * sy, 0.0, 120.3], [-s * sx, c * sy, 0.0, -80.7], [0.0, 0.0, sz, -401.2], [0.0, 0.0, 0.0, 1.0]];
    let data = Array3::from_shape_fn((4, 5, 6), |(z, y, x)| (40 * z + 7 * y + x) as f32 - 50.25);
    Volume::new(data, spacing, affine).unwrap()
}

#[test]
fn files_we_write_read_the_same_in_nibabel_with_sform_and_qform() {
    let dir = tempfile::tempdir().unwrap();
    let volume = oblique_volume();
    let mask = volume.data().mapv(|v| v > 60.0);
    let cases = [
        ("f32.nii", Some(NiftiDtype::F32), "float32"),
        ("i16.nii.gz", Some(NiftiDtype::I16), "int16"),
        ("u8.nii", Some(NiftiDtype::U8), "uint8"),
        ("mask.nii.gz", None, "uint8"),
    ];
    for (name, dtype, nibabel_dtype) in cases {
        let path = dir.path().join(name);
        match dtype {
            Some(NiftiDtype::U8) => {
                write_volume(&path, &volume.with_data(volume.data().mapv(|v| v + 51.0)).unwrap(), NiftiDtype::U8)
            }
            Some(dtype) => write_volume(&path, &volume, dtype),
            None => write_mask(&path, &mask, &volume.grid()),
        }
        .unwrap();
        let ours = read_volume(&path).unwrap();
        let nibabel = Nibabel::of(&path);
        assert_eq!(nibabel.kind(), "volume", "{name}: {}", nibabel.detail());
        assert_eq!(nibabel.header["dtype"], nibabel_dtype, "{name}");
        assert_eq!((&nibabel.header["sform_code"], &nibabel.header["qform_code"]), (&1.into(), &1.into()), "{name}");
        if let Err(e) = same_volume(&ours, &nibabel) {
            panic!("{name}: {e}");
        }
        // The qform (f32 quaternion and offsets) agrees with the sform to f32 precision.
        let off = largest_difference(&nibabel.affine("qform").unwrap(), volume.affine());
        assert!(off < 1e-4, "{name}: nibabel's qform off by {off:e}");
        println!("ok    {name}: nibabel reads it as we do; its qform is within {off:.0e} of the affine");
    }
}
