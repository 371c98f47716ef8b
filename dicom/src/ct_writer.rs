//! A [`Volume`] out as a DICOM CT series, one file a slice: for phantoms, tests and demos
//! (a PACS-side test needs DICOM that nobody else has made for it).
//!
//! Voxels are stored as unsigned 16-bit values `HU + 1024` with RescaleIntercept -1024, as
//! many scanners do. The affine must be a rotation times the spacing with a slice axis along
//! the slice normal (what a DICOM stack without gantry tilt can hold); its RAS world becomes
//! DICOM's LPS.

use std::path::{Path, PathBuf};

use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use fracmap_core::Volume;
use fracmap_core::fsutil::write_atomic;

use crate::derived::{ds, now, put, put_str, put_strs};
use crate::error::{DicomError, causes};
use crate::series::cross;
use crate::uid::new_uid;

pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const INTERCEPT: f64 = -1024.0;

/// Who and what the series belongs to. [`SeriesIdentity::phantom`] gives fresh UIDs and a
/// made-up patient.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesIdentity {
    pub patient_name: String,
    pub patient_id: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub frame_of_reference_uid: String,
    pub series_number: u32,
    /// Files are named `<prefix><slice index, 4 digits>.dcm`.
    pub file_prefix: String,
}

impl SeriesIdentity {
    pub fn phantom() -> Self {
        SeriesIdentity {
            patient_name: "Phantom^Fracmap".to_string(),
            patient_id: "FRACMAP-PHANTOM".to_string(),
            study_instance_uid: new_uid(),
            series_instance_uid: new_uid(),
            frame_of_reference_uid: new_uid(),
            series_number: 1,
            file_prefix: "slice".to_string(),
        }
    }
}

/// Writes `volume` (HU) into `dir` as a CT series, one file a slice in z order, atomically
/// each; returns the files.
pub fn write_ct_series(dir: &Path, volume: &Volume, identity: &SeriesIdentity) -> Result<Vec<PathBuf>, DicomError> {
    let what = || format!("series {}", identity.series_instance_uid);
    let geometry = |reason: &str| DicomError::Output { what: what(), reason: reason.to_string() };
    let a = volume.affine();
    // RAS -> LPS: negate the first two world axes.
    let column_lps = |c: usize| [-a[0][c], -a[1][c], a[2][c]];
    let [x_axis, y_axis, z_axis, origin] = [0, 1, 2, 3].map(column_lps);
    let length = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let (column_spacing, row_spacing, slice_spacing) = (length(x_axis), length(y_axis), length(z_axis));
    let row_direction = x_axis.map(|v| v / column_spacing);
    let column_direction = y_axis.map(|v| v / row_spacing);
    let normal = cross(row_direction, column_direction);
    let dot = |p: [f64; 3], q: [f64; 3]| p[0] * q[0] + p[1] * q[1] + p[2] * q[2];
    if dot(row_direction, column_direction).abs() > 1e-6 {
        return Err(geometry("the affine's x and y axes are not orthogonal: no DICOM orientation holds it"));
    }
    if (dot(z_axis, normal).abs() - slice_spacing).abs() > 1e-6 * slice_spacing {
        return Err(geometry("the affine's z axis is not along the slice normal (a tilted stack)"));
    }
    let [depth, rows, columns] = volume.shape();
    if rows > usize::from(u16::MAX) || columns > usize::from(u16::MAX) {
        return Err(geometry("more than 65535 rows or columns"));
    }
    let (date, time) = now();
    let mut written = Vec::with_capacity(depth);
    for z in 0..depth {
        let slice = volume.data().index_axis(ndarray::Axis(0), z);
        let mut pixels = Vec::with_capacity(rows * columns);
        for (index, &hu) in slice.iter().enumerate() {
            let stored = (f64::from(hu) - INTERCEPT).round();
            if !(0.0..=f64::from(u16::MAX)).contains(&stored) {
                return Err(DicomError::Output {
                    what: what(),
                    reason: format!(
                        "voxel [z, y, x] = [{z}, {}, {}] = {hu} HU does not fit 16 bits above -1024",
                        index / columns,
                        index % columns
                    ),
                });
            }
            pixels.push(stored as u16);
        }
        let position: [f64; 3] = std::array::from_fn(|r| origin[r] + z as f64 * z_axis[r]);
        let mut o = InMemDicomObject::new_empty();
        put_str(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
        put_strs(&mut o, tags::IMAGE_TYPE, VR::CS, &["ORIGINAL", "PRIMARY", "AXIAL"]);
        put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE);
        let instance = new_uid();
        put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &instance);
        put_str(&mut o, tags::STUDY_DATE, VR::DA, &date);
        put_str(&mut o, tags::STUDY_TIME, VR::TM, &time);
        put_str(&mut o, tags::ACCESSION_NUMBER, VR::SH, "");
        put_str(&mut o, tags::MODALITY, VR::CS, "CT");
        put_str(&mut o, tags::MANUFACTURER, VR::LO, "fracmap phantom");
        put_str(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
        put_str(&mut o, tags::PATIENT_NAME, VR::PN, &identity.patient_name);
        put_str(&mut o, tags::PATIENT_ID, VR::LO, &identity.patient_id);
        put_str(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, "");
        put_str(&mut o, tags::PATIENT_SEX, VR::CS, "O");
        put_str(&mut o, tags::SLICE_THICKNESS, VR::DS, &ds(slice_spacing));
        put_str(&mut o, tags::KVP, VR::DS, "120");
        put_str(&mut o, tags::PATIENT_POSITION, VR::CS, "HFS");
        put_str(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, &identity.study_instance_uid);
        put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &identity.series_instance_uid);
        put_str(&mut o, tags::STUDY_ID, VR::SH, "1");
        put_str(&mut o, tags::SERIES_NUMBER, VR::IS, &identity.series_number.to_string());
        // Deliberately not the slice order: readers must sort by position.
        put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, &(depth - z).to_string());
        put_strs(&mut o, tags::IMAGE_POSITION_PATIENT, VR::DS, &position.map(ds));
        let orientation = [row_direction, column_direction].concat().iter().map(|&v| ds(v)).collect::<Vec<_>>();
        put_strs(&mut o, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &orientation);
        put_str(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, &identity.frame_of_reference_uid);
        put_str(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
        put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
        put_str(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
        put(&mut o, tags::ROWS, VR::US, PrimitiveValue::from(rows as u16));
        put(&mut o, tags::COLUMNS, VR::US, PrimitiveValue::from(columns as u16));
        put_strs(&mut o, tags::PIXEL_SPACING, VR::DS, &[ds(row_spacing), ds(column_spacing)]);
        put(&mut o, tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
        put(&mut o, tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
        put(&mut o, tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
        put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16));
        put_str(&mut o, tags::RESCALE_INTERCEPT, VR::DS, &ds(INTERCEPT));
        put_str(&mut o, tags::RESCALE_SLOPE, VR::DS, "1");
        put_str(&mut o, tags::RESCALE_TYPE, VR::LO, "HU");
        put(&mut o, tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into()));

        let path = dir.join(format!("{}{z:04}.dcm", identity.file_prefix));
        let failed = |reason: String| DicomError::Write { path: path.clone(), reason };
        let file = o
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .map_err(|error| failed(causes(&error)))?;
        let mut bytes = Vec::new();
        file.write_all(&mut bytes).map_err(|error| failed(causes(&error)))?;
        write_atomic(&path, &bytes).map_err(|error| failed(error.to_string()))?;
        written.push(path);
    }
    Ok(written)
}
