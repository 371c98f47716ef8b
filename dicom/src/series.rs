//! A DICOM CT series in: files found, separated by SeriesInstanceUID, one series chosen,
//! its slices put in order along their normal, checked for a regular straight stack, and read
//! into a [`Volume`] of HU with a NIfTI-convention (RAS) affine.
//!
//! Two steps, so that a caller with limits can look before it decodes: [`scan`] reads the
//! headers only and returns a [`SeriesPlan`] (shape, notes), [`SeriesPlan::read`] decodes
//! the pixels. [`read_series`] does both.
//!
//! Geometry, as DICOM PS3.3 C.7.6.2 defines it: pixel (column c, row r) of a slice lies at
//! `ImagePositionPatient + c * PixelSpacing[1] * row_direction + r * PixelSpacing[0] *
//! column_direction` in LPS mm, where `ImageOrientationPatient = row_direction,
//! column_direction`. The volume's x is the column index, y the row index, z the slice index
//! in order of increasing position along `row_direction x column_direction`; the slice step is
//! measured from the positions (SliceThickness is not trusted; it is used only for a single
//! slice, where there is nothing to measure). LPS becomes RAS by negating the first two world
//! axes. Uneven steps, missing slices, gantry tilt, mixed sizes and inconsistent orientations
//! are errors: the volume is never resampled here.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use fracmap_core::{Affine, Volume};
use ndarray::Array3;

use crate::error::{DicomError, causes};

/// Where the 4-byte `DICM` magic of a DICOM Part 10 file sits, after its 128-byte preamble.
const MAGIC_AT: usize = 128;
const MAGIC: &[u8; 4] = b"DICM";
/// Directory depth searched for files (PACS exports nest patient/study/series folders).
const MAX_DEPTH: usize = 8;
/// Slices closer than this along the normal are the same slice (mm).
const SAME_POSITION_MM: f64 = 1e-3;
/// Tolerances of a regular stack: a step may differ from the series' step by the larger of
/// these (absolute mm, relative), as may a slice's in-plane offset from the first.
const STEP_TOLERANCE_MM: f64 = 0.01;
const STEP_TOLERANCE_RELATIVE: f64 = 0.01;
/// Direction cosines of two slices agree to this, and are unit and orthogonal to it.
const ORIENTATION_TOLERANCE: f64 = 1e-3;
const PIXEL_SPACING_TOLERANCE: f64 = 1e-4;

/// One DICOM file: on disk, or received as bytes (named for messages).
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Memory { name: String, bytes: Vec<u8> },
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Memory { name, .. } => name.clone(),
        }
    }

    /// The parsed file; with `headers_only`, everything before the pixel data.
    fn open(&self, headers_only: bool) -> Result<DefaultDicomObject, DicomError> {
        let options = OpenFileOptions::new().read_preamble(ReadPreamble::Always);
        let options = if headers_only { options.read_until(tags::PIXEL_DATA) } else { options };
        let parsed = match self {
            Source::File(path) => {
                let mut head = Vec::with_capacity(MAGIC_AT + 4);
                std::fs::File::open(path)
                    .and_then(|file| file.take((MAGIC_AT + 4) as u64).read_to_end(&mut head))
                    .map_err(|source| DicomError::Io { path: path.clone(), source })?;
                check_magic(&self.name(), &head)?;
                options.open_file(path)
            }
            Source::Memory { name, bytes } => {
                check_magic(name, bytes)?;
                options.from_reader(bytes.as_slice())
            }
        };
        parsed.map_err(|error| DicomError::Parse { file: self.name(), reason: causes(&error) })
    }
}

fn check_magic(name: &str, head: &[u8]) -> Result<(), DicomError> {
    if has_magic(head) {
        Ok(())
    } else {
        Err(DicomError::Parse {
            file: name.to_string(),
            reason: "no DICM magic after a 128-byte preamble: not a DICOM Part 10 file (or truncated)".to_string(),
        })
    }
}

fn has_magic(head: &[u8]) -> bool {
    head.get(MAGIC_AT..MAGIC_AT + 4) == Some(MAGIC.as_slice())
}

/// Whether `path` is a file that starts like a DICOM Part 10 file (preamble, `DICM`).
pub fn is_dicom_file(path: &Path) -> bool {
    let mut head = Vec::with_capacity(MAGIC_AT + 4);
    std::fs::File::open(path).and_then(|file| file.take((MAGIC_AT + 4) as u64).read_to_end(&mut head)).is_ok()
        && has_magic(&head)
}

/// The DICOM files of `inputs`: files as given (each must be DICOM), and the DICOM files in
/// directories (searched recursively, in name order; other files and DICOMDIR skipped).
pub fn discover(inputs: &[PathBuf]) -> Result<Vec<Source>, DicomError> {
    let mut sources = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let before = sources.len();
            walk(input, 0, &mut sources)?;
            if sources.len() == before {
                return Err(DicomError::NoFiles { input: input.clone() });
            }
        } else {
            let head = Source::File(input.clone());
            let mut bytes = Vec::new();
            std::fs::File::open(input)
                .and_then(|file| file.take((MAGIC_AT + 4) as u64).read_to_end(&mut bytes))
                .map_err(|source| DicomError::Io { path: input.clone(), source })?;
            check_magic(&head.name(), &bytes)?;
            sources.push(head);
        }
    }
    Ok(sources)
}

fn walk(dir: &Path, depth: usize, sources: &mut Vec<Source>) -> Result<(), DicomError> {
    let io = |source| DicomError::Io { path: dir.to_path_buf(), source };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, sources)?;
            }
        } else if !path.file_name().is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR")) && is_dicom_file(&path) {
            sources.push(Source::File(path));
        }
    }
    Ok(())
}

/// One image plane of the series: a single-frame file, or one frame of a multi-frame file.
#[derive(Debug, Clone)]
struct Plane {
    /// Index into the plan's sources.
    source: usize,
    /// 0-based frame in its file.
    frame: u32,
    /// Whether its file is multi-frame (then a reference names the frame).
    multi_frame: bool,
    /// The file's name, with the frame for a multi-frame file: for messages.
    name: String,
    sop_class_uid: String,
    sop_instance_uid: String,
    rows: u32,
    columns: u32,
    /// Row direction then column direction, LPS.
    orientation: [f64; 6],
    /// LPS mm of the first pixel's centre.
    position: [f64; 3],
    /// Between rows, between columns (mm).
    pixel_spacing: [f64; 2],
    slope: f64,
    intercept: f64,
    /// SpacingBetweenSlices, else SliceThickness: used only when the series has one slice.
    nominal_spacing: Option<f64>,
    slice_thickness: Option<f64>,
}

/// The source series' identity and geometry, what a derived object (SEG, parametric map)
/// must reference. Holds the source's patient and study attributes to copy into derived
/// objects; its `Debug` never shows them.
#[derive(Clone)]
pub struct SeriesReference {
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    /// `None` when the source has none (a derived object then gets a new one).
    pub frame_of_reference_uid: Option<String>,
    /// One per slice of the volume, in its z order.
    pub slices: Vec<SourceSlice>,
    /// Row then column direction cosines, LPS.
    pub orientation: [f64; 6],
    /// Between rows, between columns (mm).
    pub pixel_spacing: [f64; 2],
    /// Between slice centres along the normal (mm).
    pub slice_spacing: f64,
    pub slice_thickness: Option<f64>,
    pub rows: u32,
    pub columns: u32,
    /// Patient and General Study module attributes of the first file, copied as they are.
    pub(crate) patient_study: InMemDicomObject,
}

impl fmt::Debug for SeriesReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeriesReference")
            .field("series_instance_uid", &self.series_instance_uid)
            .field("frame_of_reference_uid", &self.frame_of_reference_uid)
            .field("slices", &self.slices.len())
            .field("orientation", &self.orientation)
            .field("pixel_spacing", &self.pixel_spacing)
            .field("slice_spacing", &self.slice_spacing)
            .field("patient_study", &"(not shown)")
            .finish()
    }
}

/// A slice of the volume in its source: which instance (and frame), and where (LPS mm).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSlice {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// 1-based frame number in a multi-frame instance; `None` for a single-frame one.
    pub frame_number: Option<u32>,
    pub position: [f64; 3],
}

/// A series read: HU volume `[z, y, x]` (RAS affine), the reference for derived objects, and
/// what was decided on the way (series chosen, nominal spacing used), one line each.
#[derive(Debug)]
pub struct CtSeries {
    pub volume: Volume,
    pub reference: SeriesReference,
    pub notes: Vec<String>,
}

/// A series whose headers are read and checked; its pixels not yet decoded.
#[derive(Debug)]
pub struct SeriesPlan {
    sources: Vec<Source>,
    planes: Vec<Plane>,
    reference: SeriesReference,
    affine: Affine,
    notes: Vec<String>,
}

/// Reads the chosen series of `sources` (`series`: its SeriesInstanceUID; `None`: the only
/// one, else the one with the most images, with a note).
pub fn read_series(sources: Vec<Source>, series: Option<&str>) -> Result<CtSeries, DicomError> {
    scan(sources, series)?.read()
}

/// Reads the headers of `sources`, chooses the series and checks its geometry.
pub fn scan(sources: Vec<Source>, series: Option<&str>) -> Result<SeriesPlan, DicomError> {
    let mut by_series: BTreeMap<String, Vec<(usize, InMemDicomObject)>> = BTreeMap::new();
    for (index, source) in sources.iter().enumerate() {
        let object = source.open(true)?.into_inner();
        let uid = text(&object, tags::SERIES_INSTANCE_UID, "SeriesInstanceUID (0020,000E)", &source.name())?;
        by_series.entry(uid).or_default().push((index, object));
    }
    let mut notes = Vec::new();
    let count = |files: &[(usize, InMemDicomObject)]| -> usize {
        files.iter().map(|(_, object)| frames_of(object).unwrap_or(1) as usize).sum()
    };
    let chosen = match series {
        Some(wanted) => by_series.remove(wanted).ok_or_else(|| DicomError::NoSuchSeries {
            wanted: wanted.to_string(),
            available: by_series
                .iter()
                .map(|(uid, files)| format!("{uid} ({} images)", count(files)))
                .collect::<Vec<_>>()
                .join(", "),
        })?,
        None => {
            let total = by_series.len();
            // The largest; on a tie, the first UID in order, so that the choice is repeatable.
            let largest = by_series
                .iter()
                .max_by_key(|(uid, files)| (count(files), std::cmp::Reverse(*uid)))
                .map(|(uid, _)| uid.clone());
            let uid = largest.expect("discover returns at least one file");
            let files = by_series.remove(&uid).expect("a key just seen");
            if total > 1 {
                notes.push(format!(
                    "{total} series in the input; took {uid} ({} images), the largest; the others: {}",
                    count(&files),
                    by_series
                        .iter()
                        .map(|(uid, files)| format!("{uid} ({} images)", count(files)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            files
        }
    };
    let mut planes = Vec::new();
    for (index, object) in &chosen {
        planes.extend(planes_of(object, *index, &sources[*index].name())?);
    }
    let first_object = &chosen[0].1;
    let (reference, affine) = stack(&mut planes, first_object, &sources[chosen[0].0].name(), &mut notes)?;
    Ok(SeriesPlan { sources, planes, reference, affine, notes })
}

impl SeriesPlan {
    /// The volume's shape, `[z, y, x]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.planes.len(), self.reference.rows as usize, self.reference.columns as usize]
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn reference(&self) -> &SeriesReference {
        &self.reference
    }

    /// The files of the chosen series, in input order, each once.
    pub fn series_sources(&self) -> Vec<&Source> {
        let mut indices: Vec<usize> = self.planes.iter().map(|plane| plane.source).collect();
        indices.sort_unstable();
        indices.dedup();
        indices.into_iter().map(|index| &self.sources[index]).collect()
    }

    /// Decodes every slice into HU (RescaleSlope/Intercept applied) and builds the volume.
    pub fn read(self) -> Result<CtSeries, DicomError> {
        let [depth, rows, columns] = self.shape();
        let plane_len = rows * columns;
        let mut data = vec![0f32; depth * plane_len];
        // Files in order, each decoded once however many of its frames the stack uses.
        let mut by_source: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (z, plane) in self.planes.iter().enumerate() {
            by_source.entry(plane.source).or_default().push(z);
        }
        for (source, slices) in by_source {
            let name = self.sources[source].name();
            let object = self.sources[source].open(false)?;
            if object.get(tags::PIXEL_DATA).is_none() {
                return Err(DicomError::NoPixelData { file: name });
            }
            let transfer_syntax = object.meta().transfer_syntax().trim_end_matches('\0').to_string();
            let decoded = object.decode_pixel_data().map_err(|error| DicomError::Decode {
                file: name.clone(),
                transfer_syntax: transfer_syntax.clone(),
                reason: causes(&error),
            })?;
            if decoded.samples_per_pixel() != 1 {
                return Err(DicomError::Unsupported {
                    file: name,
                    reason: format!("{} samples a pixel (colour); a CT has 1", decoded.samples_per_pixel()),
                });
            }
            let format = SampleFormat::of(
                &name,
                decoded.bits_allocated(),
                decoded.bits_stored(),
                decoded.pixel_representation(),
            )?;
            for z in slices {
                let plane = &self.planes[z];
                let bytes = decoded.frame_data(plane.frame).map_err(|error| DicomError::Decode {
                    file: plane.name.clone(),
                    transfer_syntax: transfer_syntax.clone(),
                    reason: format!("{} (pixel data shorter than the header declares: truncated?)", causes(&error)),
                })?;
                let out = &mut data[z * plane_len..(z + 1) * plane_len];
                format.convert(bytes, plane.slope, plane.intercept, out);
            }
        }
        let data = Array3::from_shape_vec((depth, rows, columns), data).expect("length is depth * rows * columns");
        let spacing = [self.reference.slice_spacing, self.reference.pixel_spacing[0], self.reference.pixel_spacing[1]];
        let volume = Volume::new(data, spacing, self.affine).map_err(|source| DicomError::Geometry {
            what: format!("series {}", self.reference.series_instance_uid),
            source,
        })?;
        Ok(CtSeries { volume, reference: self.reference, notes: self.notes })
    }
}

/// How a frame's native bytes hold its samples.
#[derive(Debug, Clone, Copy)]
struct SampleFormat {
    bytes: usize,
    bits_stored: u32,
    signed: bool,
}

impl SampleFormat {
    fn of(
        name: &str,
        bits_allocated: u16,
        bits_stored: u16,
        representation: dicom_pixeldata::PixelRepresentation,
    ) -> Result<Self, DicomError> {
        let bytes = match bits_allocated {
            8 => 1,
            16 => 2,
            32 => 4,
            other => {
                return Err(DicomError::Unsupported {
                    file: name.to_string(),
                    reason: format!("BitsAllocated {other}"),
                });
            }
        };
        if bits_stored == 0 || u32::from(bits_stored) > 8 * bytes as u32 {
            return Err(DicomError::Invalid {
                file: name.to_string(),
                attribute: "BitsStored (0028,0101)",
                reason: format!("{bits_stored} with BitsAllocated {bits_allocated}"),
            });
        }
        let signed = representation == dicom_pixeldata::PixelRepresentation::Signed;
        Ok(SampleFormat { bytes, bits_stored: u32::from(bits_stored), signed })
    }

    /// Stored values (bits above BitsStored ignored, sign-extended when signed) times
    /// `slope` plus `intercept`, into `out`.
    fn convert(self, bytes: &[u8], slope: f64, intercept: f64, out: &mut [f32]) {
        let unused = 64 - self.bits_stored;
        for (value, sample) in out.iter_mut().zip(bytes.chunks_exact(self.bytes)) {
            let mut raw = [0u8; 8];
            raw[..self.bytes].copy_from_slice(sample);
            let word = u64::from_le_bytes(raw) << unused;
            let stored = if self.signed { ((word as i64) >> unused) as f64 } else { (word >> unused) as f64 };
            *value = (stored * slope + intercept) as f32;
        }
    }
}

/// The image planes a file holds: one, or one a frame of an enhanced multi-frame image.
fn planes_of(object: &InMemDicomObject, source: usize, name: &str) -> Result<Vec<Plane>, DicomError> {
    let sop_class_uid = text(object, tags::SOP_CLASS_UID, "SOPClassUID (0008,0016)", name)?;
    let sop_instance_uid = text(object, tags::SOP_INSTANCE_UID, "SOPInstanceUID (0008,0018)", name)?;
    let rows = unsigned(object, tags::ROWS, "Rows (0028,0010)", name)?;
    let columns = unsigned(object, tags::COLUMNS, "Columns (0028,0011)", name)?;
    let frames = frames_of(object).map_err(|reason| DicomError::Invalid {
        file: name.to_string(),
        attribute: "NumberOfFrames (0028,0008)",
        reason,
    })?;
    let slice_thickness = optional_float(object, tags::SLICE_THICKNESS, "SliceThickness (0018,0050)", name)?;
    let nominal_spacing =
        optional_float(object, tags::SPACING_BETWEEN_SLICES, "SpacingBetweenSlices (0018,0088)", name)?
            .or(slice_thickness);
    let base = Plane {
        source,
        frame: 0,
        multi_frame: false,
        name: name.to_string(),
        sop_class_uid,
        sop_instance_uid,
        rows,
        columns,
        orientation: [0.0; 6],
        position: [0.0; 3],
        pixel_spacing: [0.0; 2],
        slope: 1.0,
        intercept: 0.0,
        nominal_spacing,
        slice_thickness,
    };
    let Some(per_frame) = object.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE) else {
        if frames != 1 {
            return Err(DicomError::Unsupported {
                file: name.to_string(),
                reason: format!("{frames} frames without per-frame functional groups: not an enhanced image"),
            });
        }
        let (slope, intercept) = rescale(object, name)?;
        return Ok(vec![Plane {
            orientation: floats(object, tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient (0020,0037)", name)?,
            position: floats(object, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient (0020,0032)", name)?,
            pixel_spacing: floats(object, tags::PIXEL_SPACING, "PixelSpacing (0028,0030)", name)?,
            slope,
            intercept,
            ..base
        }]);
    };
    let items = per_frame.items().unwrap_or_default();
    if items.len() != frames as usize {
        return Err(DicomError::Invalid {
            file: name.to_string(),
            attribute: "PerFrameFunctionalGroupsSequence (5200,9230)",
            reason: format!("{} items for {frames} frames", items.len()),
        });
    }
    let shared = object.get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|e| e.items()).and_then(|i| i.first());
    items
        .iter()
        .enumerate()
        .map(|(frame, item)| {
            let frame_name = format!("{name} frame {}", frame + 1);
            let lookup =
                |sequence: Tag| first_item(item, sequence).or_else(|| shared.and_then(|s| first_item(s, sequence)));
            let group = |sequence: Tag, attribute: &'static str| {
                lookup(sequence).ok_or_else(|| DicomError::Missing { file: frame_name.clone(), attribute })
            };
            let orientation = group(tags::PLANE_ORIENTATION_SEQUENCE, "PlaneOrientationSequence (0020,9116)")?;
            let position = group(tags::PLANE_POSITION_SEQUENCE, "PlanePositionSequence (0020,9113)")?;
            let measures = group(tags::PIXEL_MEASURES_SEQUENCE, "PixelMeasuresSequence (0028,9110)")?;
            let (slope, intercept) =
                rescale(lookup(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE).unwrap_or(object), &frame_name)?;
            let thickness = optional_float(measures, tags::SLICE_THICKNESS, "SliceThickness (0018,0050)", &frame_name)?;
            let spacing_between = optional_float(
                measures,
                tags::SPACING_BETWEEN_SLICES,
                "SpacingBetweenSlices (0018,0088)",
                &frame_name,
            )?;
            Ok(Plane {
                frame: frame as u32,
                multi_frame: true,
                orientation: floats(
                    orientation,
                    tags::IMAGE_ORIENTATION_PATIENT,
                    "ImageOrientationPatient (0020,0037)",
                    &frame_name,
                )?,
                position: floats(
                    position,
                    tags::IMAGE_POSITION_PATIENT,
                    "ImagePositionPatient (0020,0032)",
                    &frame_name,
                )?,
                pixel_spacing: floats(measures, tags::PIXEL_SPACING, "PixelSpacing (0028,0030)", &frame_name)?,
                slope,
                intercept,
                nominal_spacing: spacing_between.or(thickness).or(base.nominal_spacing),
                slice_thickness: thickness.or(base.slice_thickness),
                name: frame_name,
                ..base.clone()
            })
        })
        .collect()
}

fn frames_of(object: &InMemDicomObject) -> Result<u32, String> {
    match object.get(tags::NUMBER_OF_FRAMES) {
        None => Ok(1),
        Some(element) => match element_int(element, false) {
            Ok(n) if n >= 1 && n <= i64::from(u32::MAX) => Ok(n as u32),
            Ok(n) => Err(format!("{n}")),
            Err(reason) => Err(reason),
        },
    }
}

/// RescaleSlope and RescaleIntercept of `object` (identity when absent).
fn rescale(object: &InMemDicomObject, name: &str) -> Result<(f64, f64), DicomError> {
    let slope = optional_float(object, tags::RESCALE_SLOPE, "RescaleSlope (0028,1053)", name)?.unwrap_or(1.0);
    let intercept =
        optional_float(object, tags::RESCALE_INTERCEPT, "RescaleIntercept (0028,1052)", name)?.unwrap_or(0.0);
    if slope == 0.0 {
        return Err(DicomError::Invalid {
            file: name.to_string(),
            attribute: "RescaleSlope (0028,1053)",
            reason: "0".into(),
        });
    }
    Ok((slope, intercept))
}

/// Orders `planes` along their normal, checks that they form one regular straight stack
/// and returns the reference and the RAS affine.
fn stack(
    planes: &mut [Plane],
    first_object: &InMemDicomObject,
    first_name: &str,
    notes: &mut Vec<String>,
) -> Result<(SeriesReference, Affine), DicomError> {
    let first = planes[0].clone();
    check_orientation(&first)?;
    for plane in planes.iter() {
        if (plane.rows, plane.columns) != (first.rows, first.columns) {
            return Err(DicomError::MixedSizes {
                file: plane.name.clone(),
                rows: plane.rows,
                columns: plane.columns,
                first: first.name.clone(),
                first_rows: first.rows,
                first_columns: first.columns,
            });
        }
        let differs = |a: &[f64], b: &[f64], tolerance: f64| a.iter().zip(b).any(|(x, y)| (x - y).abs() > tolerance);
        if differs(&plane.orientation, &first.orientation, ORIENTATION_TOLERANCE) {
            return Err(DicomError::Inconsistent {
                file: plane.name.clone(),
                attribute: "ImageOrientationPatient (0020,0037)",
                found: plane.orientation.to_vec(),
                first: first.name.clone(),
                expected: first.orientation.to_vec(),
            });
        }
        if differs(&plane.pixel_spacing, &first.pixel_spacing, PIXEL_SPACING_TOLERANCE * first.pixel_spacing[0]) {
            return Err(DicomError::Inconsistent {
                file: plane.name.clone(),
                attribute: "PixelSpacing (0028,0030)",
                found: plane.pixel_spacing.to_vec(),
                first: first.name.clone(),
                expected: first.pixel_spacing.to_vec(),
            });
        }
    }
    let row = [first.orientation[0], first.orientation[1], first.orientation[2]];
    let column = [first.orientation[3], first.orientation[4], first.orientation[5]];
    let normal = cross(row, column);
    let along = |p: &Plane| dot(p.position, normal);
    planes.sort_by(|a, b| along(a).total_cmp(&along(b)));

    let slice_vector = if planes.len() == 1 {
        let spacing = first.nominal_spacing.filter(|s| *s > 0.0).unwrap_or(1.0);
        notes.push(format!(
            "one slice: its spacing along the normal, {spacing} mm, is the file's nominal one \
             (SpacingBetweenSlices, else SliceThickness, else 1)"
        ));
        normal.map(|n| n * spacing)
    } else {
        regular_step(planes, normal)?
    };
    let slice_spacing = dot(slice_vector, slice_vector).sqrt();

    let [row_spacing, column_spacing] = first.pixel_spacing;
    let origin = planes[0].position;
    // Columns of the LPS affine: x (column index) along the row direction, y (row index)
    // along the column direction, z along the stack; then LPS -> RAS.
    let columns_lps = [row.map(|r| r * column_spacing), column.map(|c| c * row_spacing), slice_vector, origin];
    let mut affine = [[0.0; 4]; 4];
    for (c, vector) in columns_lps.iter().enumerate() {
        for r in 0..3 {
            let flip = if r < 2 { -1.0 } else { 1.0 };
            affine[r][c] = flip * vector[r];
        }
    }
    affine[3][3] = 1.0;

    let frame_of_reference_uid = optional_text(first_object, tags::FRAME_OF_REFERENCE_UID);
    let reference = SeriesReference {
        series_instance_uid: text(
            first_object,
            tags::SERIES_INSTANCE_UID,
            "SeriesInstanceUID (0020,000E)",
            first_name,
        )?,
        study_instance_uid: text(first_object, tags::STUDY_INSTANCE_UID, "StudyInstanceUID (0020,000D)", first_name)?,
        frame_of_reference_uid,
        slices: planes
            .iter()
            .map(|p| SourceSlice {
                sop_class_uid: p.sop_class_uid.clone(),
                sop_instance_uid: p.sop_instance_uid.clone(),
                frame_number: p.multi_frame.then_some(p.frame + 1),
                position: p.position,
            })
            .collect(),
        orientation: first.orientation,
        pixel_spacing: first.pixel_spacing,
        slice_spacing,
        slice_thickness: first.slice_thickness,
        rows: first.rows,
        columns: first.columns,
        patient_study: crate::derived::patient_study_of(first_object),
    };
    Ok((reference, affine))
}

/// The slice step of a sorted stack of at least two planes (LPS mm): checks that the planes
/// are distinct, evenly spaced along the normal, and not displaced in-plane (tilt).
fn regular_step(planes: &[Plane], normal: [f64; 3]) -> Result<[f64; 3], DicomError> {
    let steps: Vec<f64> = planes.windows(2).map(|w| dot(sub(w[1].position, w[0].position), normal)).collect();
    for (w, step) in planes.windows(2).zip(&steps) {
        if *step < SAME_POSITION_MM {
            return Err(DicomError::DuplicatePosition {
                file: w[1].name.clone(),
                other: w[0].name.clone(),
                position_mm: dot(w[0].position, normal),
            });
        }
    }
    let mut sorted = steps.clone();
    sorted.sort_by(f64::total_cmp);
    let step = sorted[sorted.len() / 2];
    let tolerance = STEP_TOLERANCE_MM.max(STEP_TOLERANCE_RELATIVE * step);
    for (w, gap) in planes.windows(2).zip(&steps) {
        if (gap - step).abs() <= tolerance {
            continue;
        }
        let (before, after) = (w[0].name.clone(), w[1].name.clone());
        let multiple = (gap / step).round();
        if multiple >= 2.0 && (gap - multiple * step).abs() <= tolerance * multiple {
            return Err(DicomError::MissingSlices {
                before,
                after,
                gap_mm: *gap,
                step_mm: step,
                missing: multiple as usize - 1,
            });
        }
        return Err(DicomError::UnevenSpacing { before, after, gap_mm: *gap, step_mm: step });
    }
    let first = &planes[0];
    for plane in &planes[1..] {
        let offset = sub(plane.position, first.position);
        let along = dot(offset, normal);
        let in_plane = sub(offset, normal.map(|n| n * along));
        let sideways = dot(in_plane, in_plane).sqrt();
        if sideways > STEP_TOLERANCE_MM.max(STEP_TOLERANCE_RELATIVE * along) {
            return Err(DicomError::GantryTilt {
                first: first.name.clone(),
                last: plane.name.clone(),
                tilt_degrees: sideways.atan2(along).to_degrees(),
            });
        }
    }
    let last = &planes[planes.len() - 1];
    let count = (planes.len() - 1) as f64;
    Ok(sub(last.position, first.position).map(|d| d / count))
}

fn check_orientation(plane: &Plane) -> Result<(), DicomError> {
    let o = plane.orientation;
    let row = [o[0], o[1], o[2]];
    let column = [o[3], o[4], o[5]];
    let unit = |v: [f64; 3]| (dot(v, v).sqrt() - 1.0).abs() <= ORIENTATION_TOLERANCE;
    if !unit(row) || !unit(column) || dot(row, column).abs() > ORIENTATION_TOLERANCE {
        return Err(DicomError::Invalid {
            file: plane.name.clone(),
            attribute: "ImageOrientationPatient (0020,0037)",
            reason: format!("{o:?} are not two orthogonal unit vectors"),
        });
    }
    if plane.pixel_spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(DicomError::Invalid {
            file: plane.name.clone(),
            attribute: "PixelSpacing (0028,0030)",
            reason: format!("{:?} is not two positive sizes", plane.pixel_spacing),
        });
    }
    Ok(())
}

fn first_item(object: &InMemDicomObject, sequence: Tag) -> Option<&InMemDicomObject> {
    object.get(sequence).and_then(|e| e.items()).and_then(|items| items.first())
}

fn text(object: &InMemDicomObject, tag: Tag, attribute: &'static str, name: &str) -> Result<String, DicomError> {
    optional_text(object, tag).ok_or(DicomError::Missing { file: name.to_string(), attribute })
}

fn optional_text(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    object.get(tag).and_then(element_text).filter(|t| !t.is_empty())
}

/// An element's text. A UN element (a standard attribute whose VR the writer did not know,
/// as in pydicom's explicit_VR-UN.dcm) holds the bytes of its text.
fn element_text(element: &InMemElement) -> Option<String> {
    let text = if element.vr() == VR::UN {
        String::from_utf8_lossy(&element.to_bytes().ok()?).into_owned()
    } else {
        element.to_str().ok()?.into_owned()
    };
    Some(text.trim_end_matches(['\0', ' ']).to_string())
}

fn element_floats(element: &InMemElement) -> Result<Vec<f64>, String> {
    if element.vr() != VR::UN {
        return element.to_multi_float64().map_err(|error| error.to_string());
    }
    let text = element_text(element).unwrap_or_default();
    text.split('\\').map(|v| v.trim_matches([' ', '\0']).parse::<f64>().map_err(|e| format!("{v:?}: {e}"))).collect()
}

/// An integer element; `binary`: a US value (read from 2 bytes when the VR is UN), else IS.
fn element_int(element: &InMemElement, binary: bool) -> Result<i64, String> {
    if element.vr() != VR::UN {
        return element.to_int::<i64>().map_err(|error| error.to_string());
    }
    let bytes = element.to_bytes().map_err(|error| error.to_string())?;
    match (binary, bytes.len()) {
        (true, 2) => Ok(i64::from(u16::from_le_bytes([bytes[0], bytes[1]]))),
        (true, n) => Err(format!("{n} bytes of VR UN where a US value has 2")),
        (false, _) => {
            let text = element_text(element).unwrap_or_default();
            text.trim().parse::<i64>().map_err(|e| format!("{text:?}: {e}"))
        }
    }
}

fn unsigned(object: &InMemDicomObject, tag: Tag, attribute: &'static str, name: &str) -> Result<u32, DicomError> {
    let element = object.get(tag).ok_or(DicomError::Missing { file: name.to_string(), attribute })?;
    match element_int(element, true) {
        Ok(n) if n >= 1 && n <= i64::from(u16::MAX) => Ok(n as u32),
        Ok(n) => Err(DicomError::Invalid { file: name.to_string(), attribute, reason: format!("{n}") }),
        Err(reason) => Err(DicomError::Invalid { file: name.to_string(), attribute, reason }),
    }
}

fn floats<const N: usize>(
    object: &InMemDicomObject,
    tag: Tag,
    attribute: &'static str,
    name: &str,
) -> Result<[f64; N], DicomError> {
    let element = object.get(tag).ok_or(DicomError::Missing { file: name.to_string(), attribute })?;
    let invalid = |reason: String| DicomError::Invalid { file: name.to_string(), attribute, reason };
    let values = element_floats(element).map_err(invalid)?;
    let values: [f64; N] =
        values.as_slice().try_into().map_err(|_| invalid(format!("{} numbers where {N} belong", values.len())))?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(invalid(format!("{values:?} is not finite")));
    }
    Ok(values)
}

fn optional_float(
    object: &InMemDicomObject,
    tag: Tag,
    attribute: &'static str,
    name: &str,
) -> Result<Option<f64>, DicomError> {
    let Some(element) = object.get(tag) else { return Ok(None) };
    if element_text(element).is_some_and(|t| t.trim().is_empty()) {
        return Ok(None);
    }
    let invalid = |reason: String| DicomError::Invalid { file: name.to_string(), attribute, reason };
    match element_floats(element).map_err(invalid)?.as_slice() {
        [value] if value.is_finite() => Ok(Some(*value)),
        values => Err(invalid(format!("{values:?} is not one finite number"))),
    }
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bits_are_masked_and_sign_extended() {
        // 12 bits stored in 16, signed: 0x0FFF is -1; garbage above bit 11 is ignored.
        let format = SampleFormat { bytes: 2, bits_stored: 12, signed: true };
        let bytes = [0xFF, 0x0F, 0x00, 0xF0, 0x01, 0x00];
        let mut out = [0f32; 3];
        format.convert(&bytes, 2.0, -10.0, &mut out);
        assert_eq!(out, [-12.0, -10.0, -8.0]);
        let format = SampleFormat { bytes: 2, bits_stored: 16, signed: false };
        format.convert(&[0xFF, 0xFF, 0, 0, 1, 0], 1.0, -1024.0, &mut out);
        assert_eq!(out, [64511.0, -1024.0, -1023.0]);
    }
}
