//! DICOM objects derived from a source CT series, on its grid: the draft mask as a binary
//! Segmentation (SEG) and the fracture probability as a float Parametric Map.
//!
//! Both are enhanced multi-frame objects with one frame per source slice, in the volume's z
//! order. Each frame carries its ImagePositionPatient and the source instance (and frame) it
//! was derived from; orientation and pixel measures are shared. They copy the source's
//! patient and study attributes and frame of reference, and get new series and instance
//! UIDs, so a PACS files them with the study and a viewer (OHIF, 3D Slicer) overlays them.
//!
//! Why a Parametric Map (float32) for the probability rather than a secondary-capture heat
//! map: it keeps the values (a heat map keeps only colours) and the geometry (secondary
//! capture has no frame of reference), and viewers colour it themselves.

use std::time::{SystemTime, UNIX_EPOCH};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use fracmap_core::fsutil::write_atomic;
use ndarray::Array3;

use crate::error::{DicomError, causes};
use crate::series::SeriesReference;
use crate::uid::new_uid;

pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
pub const PARAMETRIC_MAP_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.30";
/// The segment a SEG holds.
pub const SEGMENT_LABEL: &str = "vertebral fracture";

/// Patient and General Study attributes copied from the source into derived objects.
const PATIENT_STUDY: [Tag; 13] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::STUDY_DESCRIPTION,
];
/// Of those, the ones a derived object must have, empty if the source lacks them (Type 2).
const PATIENT_STUDY_TYPE_2: [(Tag, VR); 9] = [
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
];

/// Who made a derived object: goes into the equipment attributes and the segment's algorithm.
#[derive(Debug, Clone, PartialEq)]
pub struct Algorithm {
    /// E.g. the model's name.
    pub name: String,
    pub version: String,
}

/// UIDs of an object written.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
}

pub(crate) fn patient_study_of(source: &InMemDicomObject) -> InMemDicomObject {
    let mut copy = InMemDicomObject::new_empty();
    for tag in PATIENT_STUDY {
        if let Some(element) = source.get(tag) {
            copy.put(element.clone());
        }
    }
    copy
}

/// Writes `mask` (`[z, y, x]` on the source's grid) as a binary SEG with one segment,
/// [`SEGMENT_LABEL`], one frame per source slice (empty frames included, so that every
/// slice has its frame).
pub fn write_segmentation(
    path: &std::path::Path,
    reference: &SeriesReference,
    mask: &Array3<bool>,
    algorithm: &Algorithm,
) -> Result<Written, DicomError> {
    check_shape("the mask", reference, mask.shape())?;
    let mut object = derived_base(reference, Kind::Segmentation, algorithm);
    put_str(&mut object, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    let segment = item(|s| {
        put(s, tags::SEGMENT_NUMBER, VR::US, PrimitiveValue::from(1u16));
        put_str(s, tags::SEGMENT_LABEL, VR::LO, SEGMENT_LABEL);
        put_str(s, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
        put_str(s, tags::SEGMENT_ALGORITHM_NAME, VR::LO, &algorithm.name);
        put_seq(
            s,
            tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
            vec![code("49755003", "SCT", "Morphologically Altered Structure")],
        );
        put_seq(s, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, vec![code("72704001", "SCT", "Fracture")]);
    });
    put_seq(&mut object, tags::SEGMENT_SEQUENCE, vec![segment]);
    put(&mut object, tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(1u16));
    put(&mut object, tags::BITS_STORED, VR::US, PrimitiveValue::from(1u16));
    put(&mut object, tags::HIGH_BIT, VR::US, PrimitiveValue::from(0u16));
    put(&mut object, tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16));
    put_str(&mut object, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    // Frames follow each other bit by bit, first pixel in the lowest bit (PS3.5 8.1.1).
    let mut bits = vec![0u8; mask.len().div_ceil(8).next_multiple_of(2)];
    for (index, _) in mask.iter().enumerate().filter(|(_, inside)| **inside) {
        bits[index / 8] |= 1 << (index % 8);
    }
    put(&mut object, tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(bits.into()));
    write(path, object, SEGMENTATION_STORAGE)
}

/// Writes `probability` (`[z, y, x]` on the source's grid, in [0, 1]) as a float32
/// Parametric Map whose real-world value is the probability itself (slope 1, intercept 0).
pub fn write_parametric_map(
    path: &std::path::Path,
    reference: &SeriesReference,
    probability: &Array3<f32>,
    algorithm: &Algorithm,
) -> Result<Written, DicomError> {
    check_shape("the probability map", reference, probability.shape())?;
    let mut object = derived_base(reference, Kind::ParametricMap, algorithm);
    put_str(&mut object, tags::PIXEL_PRESENTATION, VR::CS, "MONOCHROME");
    put_str(&mut object, tags::VOLUMETRIC_PROPERTIES, VR::CS, "VOLUME");
    put_str(&mut object, tags::VOLUME_BASED_CALCULATION_TECHNIQUE, VR::CS, "NONE");
    put(&mut object, tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(32u16));
    put_str(&mut object, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    let values: Vec<f32> = probability.iter().copied().collect();
    put(&mut object, tags::FLOAT_PIXEL_DATA, VR::OF, PrimitiveValue::F32(values.into()));
    write(path, object, PARAMETRIC_MAP_STORAGE)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Segmentation,
    ParametricMap,
}

fn check_shape(what: &'static str, reference: &SeriesReference, shape: &[usize]) -> Result<(), DicomError> {
    let expected = [reference.slices.len(), reference.rows as usize, reference.columns as usize];
    let found = [shape[0], shape[1], shape[2]];
    if found != expected {
        return Err(DicomError::ShapeMismatch { what, found, expected });
    }
    Ok(())
}

/// What SEG and Parametric Map share: patient, study, series, frame of reference,
/// equipment, image pixel basics and the multi-frame functional groups.
fn derived_base(reference: &SeriesReference, kind: Kind, algorithm: &Algorithm) -> InMemDicomObject {
    let mut object = reference.patient_study.clone();
    for (tag, vr) in PATIENT_STUDY_TYPE_2 {
        if object.get(tag).is_none() {
            put_str(&mut object, tag, vr, "");
        }
    }
    put_str(&mut object, tags::STUDY_INSTANCE_UID, VR::UI, &reference.study_instance_uid);
    let (sop_class, modality, series_number, description, label) = match kind {
        Kind::Segmentation => (SEGMENTATION_STORAGE, "SEG", 9901u32, "fracmap fracture mask", "FRACTURE"),
        Kind::ParametricMap => (PARAMETRIC_MAP_STORAGE, "OT", 9902, "fracmap fracture probability", "PROBABILITY"),
    };
    let (date, time) = now();
    put_str(&mut object, tags::SOP_CLASS_UID, VR::UI, sop_class);
    put_str(&mut object, tags::SOP_INSTANCE_UID, VR::UI, &new_uid());
    put_str(&mut object, tags::MODALITY, VR::CS, modality);
    put_str(&mut object, tags::SERIES_INSTANCE_UID, VR::UI, &new_uid());
    put_str(&mut object, tags::SERIES_NUMBER, VR::IS, &series_number.to_string());
    put_str(&mut object, tags::SERIES_DESCRIPTION, VR::LO, description);
    put_str(&mut object, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut object, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut object, tags::CONTENT_TIME, VR::TM, &time);
    put_strs(&mut object, tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"]);
    put_str(&mut object, tags::CONTENT_LABEL, VR::CS, label);
    put_str(&mut object, tags::CONTENT_DESCRIPTION, VR::LO, description);
    put_str(&mut object, tags::CONTENT_CREATOR_NAME, VR::PN, "");
    let frame_of_reference = reference.frame_of_reference_uid.clone().unwrap_or_else(new_uid);
    put_str(&mut object, tags::FRAME_OF_REFERENCE_UID, VR::UI, &frame_of_reference);
    put_str(&mut object, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    put_str(&mut object, tags::MANUFACTURER, VR::LO, "fracmap");
    put_str(&mut object, tags::MANUFACTURER_MODEL_NAME, VR::LO, &algorithm.name);
    put_str(&mut object, tags::DEVICE_SERIAL_NUMBER, VR::LO, "0");
    put_str(&mut object, tags::SOFTWARE_VERSIONS, VR::LO, &algorithm.version);

    put(&mut object, tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put_str(&mut object, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put(&mut object, tags::ROWS, VR::US, PrimitiveValue::from(reference.rows as u16));
    put(&mut object, tags::COLUMNS, VR::US, PrimitiveValue::from(reference.columns as u16));
    put_str(&mut object, tags::NUMBER_OF_FRAMES, VR::IS, &reference.slices.len().to_string());

    // Dimensions: (segment,) position.
    let organization = new_uid();
    put_seq(
        &mut object,
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![item(|i| put_str(i, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organization))],
    );
    let dimension = |index: Tag, group: Tag| {
        item(|i| {
            put(i, tags::DIMENSION_INDEX_POINTER, VR::AT, PrimitiveValue::Tags([index][..].into()));
            put(i, tags::FUNCTIONAL_GROUP_POINTER, VR::AT, PrimitiveValue::Tags([group][..].into()));
            put_str(i, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organization);
        })
    };
    let mut dimensions = Vec::new();
    if kind == Kind::Segmentation {
        dimensions.push(dimension(tags::REFERENCED_SEGMENT_NUMBER, tags::SEGMENT_IDENTIFICATION_SEQUENCE));
    }
    dimensions.push(dimension(tags::IMAGE_POSITION_PATIENT, tags::PLANE_POSITION_SEQUENCE));
    put_seq(&mut object, tags::DIMENSION_INDEX_SEQUENCE, dimensions);

    let shared = item(|shared| {
        put_seq(
            shared,
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item(|o| put_strs(o, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &reference.orientation.map(ds)))],
        );
        put_seq(
            shared,
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![item(|m| {
                put_strs(m, tags::PIXEL_SPACING, VR::DS, &reference.pixel_spacing.map(ds));
                put_str(
                    m,
                    tags::SLICE_THICKNESS,
                    VR::DS,
                    &ds(reference.slice_thickness.unwrap_or(reference.slice_spacing)),
                );
                put_str(m, tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(reference.slice_spacing));
            })],
        );
        if kind == Kind::ParametricMap {
            put_seq(
                shared,
                tags::REAL_WORLD_VALUE_MAPPING_SEQUENCE,
                vec![item(|m| {
                    put(m, tags::DOUBLE_FLOAT_REAL_WORLD_VALUE_FIRST_VALUE_MAPPED, VR::FD, PrimitiveValue::from(0f64));
                    put(m, tags::DOUBLE_FLOAT_REAL_WORLD_VALUE_LAST_VALUE_MAPPED, VR::FD, PrimitiveValue::from(1f64));
                    put(m, tags::REAL_WORLD_VALUE_INTERCEPT, VR::FD, PrimitiveValue::from(0f64));
                    put(m, tags::REAL_WORLD_VALUE_SLOPE, VR::FD, PrimitiveValue::from(1f64));
                    put_str(m, tags::LUT_EXPLANATION, VR::LO, "fracture probability");
                    put_str(m, tags::LUT_LABEL, VR::SH, "P_FRACTURE");
                    put_seq(m, tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![code("1", "UCUM", "no units")]);
                })],
            );
            put_seq(
                shared,
                tags::FRAME_VOILUT_SEQUENCE,
                vec![item(|v| {
                    put_str(v, tags::WINDOW_CENTER, VR::DS, "0.5");
                    put_str(v, tags::WINDOW_WIDTH, VR::DS, "1");
                })],
            );
        }
    });
    put_seq(&mut object, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);

    let per_frame = reference
        .slices
        .iter()
        .enumerate()
        .map(|(z, slice)| {
            item(|frame| {
                let source = item(|s| {
                    put_str(s, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &slice.sop_class_uid);
                    put_str(s, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &slice.sop_instance_uid);
                    if let Some(number) = slice.frame_number {
                        put_str(s, tags::REFERENCED_FRAME_NUMBER, VR::IS, &number.to_string());
                    }
                    // Same grid as the source: viewers (and highdicom) may index by source frame.
                    put_str(s, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
                    put_seq(
                        s,
                        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                        vec![code("121322", "DCM", "Source image for image processing operation")],
                    );
                });
                let derivation = item(|d| {
                    put_seq(d, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
                    // The probability map is the segmentation's soft output: the same derivation.
                    put_seq(d, tags::DERIVATION_CODE_SEQUENCE, vec![code("113076", "DCM", "Segmentation")]);
                });
                put_seq(frame, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
                let position = (z + 1) as u32;
                let index_values: Vec<u32> =
                    if kind == Kind::Segmentation { vec![1, position] } else { vec![position] };
                put_seq(
                    frame,
                    tags::FRAME_CONTENT_SEQUENCE,
                    vec![item(|c| {
                        put(c, tags::DIMENSION_INDEX_VALUES, VR::UL, PrimitiveValue::U32(index_values.into()))
                    })],
                );
                put_seq(
                    frame,
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![item(|p| put_strs(p, tags::IMAGE_POSITION_PATIENT, VR::DS, &slice.position.map(ds)))],
                );
                if kind == Kind::Segmentation {
                    put_seq(
                        frame,
                        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                        vec![item(|s| put(s, tags::REFERENCED_SEGMENT_NUMBER, VR::US, PrimitiveValue::from(1u16)))],
                    );
                }
            })
        })
        .collect();
    put_seq(&mut object, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);

    // Common Instance Reference: the source series and each of its instances, once.
    let mut instances: Vec<(&str, &str)> = Vec::new();
    for slice in &reference.slices {
        let instance = (slice.sop_class_uid.as_str(), slice.sop_instance_uid.as_str());
        if !instances.contains(&instance) {
            instances.push(instance);
        }
    }
    let referenced_series = item(|s| {
        put_str(s, tags::SERIES_INSTANCE_UID, VR::UI, &reference.series_instance_uid);
        let referenced = instances
            .iter()
            .map(|(class, instance)| {
                item(|i| {
                    put_str(i, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
                    put_str(i, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance);
                })
            })
            .collect();
        put_seq(s, tags::REFERENCED_INSTANCE_SEQUENCE, referenced);
    });
    put_seq(&mut object, tags::REFERENCED_SERIES_SEQUENCE, vec![referenced_series]);
    object
}

/// Writes `object` as a DICOM file (explicit VR little endian), atomically.
fn write(path: &std::path::Path, object: InMemDicomObject, sop_class: &str) -> Result<Written, DicomError> {
    let uid = |tag| object.get(tag).and_then(|e| e.to_str().ok()).map(|s| s.to_string()).unwrap_or_default();
    let written =
        Written { series_instance_uid: uid(tags::SERIES_INSTANCE_UID), sop_instance_uid: uid(tags::SOP_INSTANCE_UID) };
    let failed = |reason: String| DicomError::Write { path: path.to_path_buf(), reason };
    let file = object
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(sop_class)
                .media_storage_sop_instance_uid(&written.sop_instance_uid),
        )
        .map_err(|error| failed(causes(&error)))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|error| failed(causes(&error)))?;
    write_atomic(path, &bytes).map_err(|error| failed(error.to_string()))?;
    Ok(written)
}

pub(crate) fn put(object: &mut InMemDicomObject, tag: Tag, vr: VR, value: PrimitiveValue) {
    object.put(DataElement::new(tag, vr, value));
}

pub(crate) fn put_str(object: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    put(object, tag, vr, PrimitiveValue::from(value));
}

pub(crate) fn put_strs<S: AsRef<str>>(object: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[S]) {
    let values: Vec<String> = values.iter().map(|v| v.as_ref().to_string()).collect();
    put(object, tag, vr, PrimitiveValue::Strs(values.into()));
}

pub(crate) fn put_seq(object: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    object.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

pub(crate) fn item(fill: impl FnOnce(&mut InMemDicomObject)) -> InMemDicomObject {
    let mut object = InMemDicomObject::new_empty();
    fill(&mut object);
    object
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(|c| {
        put_str(c, tags::CODE_VALUE, VR::SH, value);
        put_str(c, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
        put_str(c, tags::CODE_MEANING, VR::LO, meaning);
    })
}

/// A decimal string (DS) of at most 16 characters, as precise as fits.
pub(crate) fn ds(value: f64) -> String {
    let shortest = format!("{value}");
    if shortest.len() <= 16 {
        return shortest;
    }
    for decimals in (0..16).rev() {
        let text = format!("{value:.decimals$}");
        if text.len() <= 16 {
            return text;
        }
    }
    format!("{value:.9e}")
}

/// Today's date and the time, UTC, as DICOM DA and TM.
pub(crate) fn now() -> (String, String) {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, of_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (format!("{year:04}{month:02}{day:02}"), format!("{:02}{:02}{:02}", of_day / 3600, of_day % 3600 / 60, of_day % 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(-122.5), "-122.5");
        let long = ds(-0.123_456_789_012_345_67);
        assert!(long.len() <= 16 && (long.parse::<f64>().unwrap() + 0.123_456_789_012_345_67).abs() < 1e-13, "{long}");
        assert!(ds(1.0e300).len() <= 16);
    }

    #[test]
    fn dates_are_civil_dates() {
        let (date, time) = now();
        assert_eq!(date.len(), 8);
        assert_eq!(time.len(), 6);
        assert!(date.as_str() > "20240101");
    }
}
