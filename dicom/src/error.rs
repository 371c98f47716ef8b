//! What can go wrong with DICOM input and output: every error names the file (or, for a
//! series, the files) and the attribute it is about, never a patient's name or ID.

use std::path::PathBuf;

use fracmap_core::VolumeError;

#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: cannot write: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("{file}: not a readable DICOM file: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: {attribute} is missing")]
    Missing { file: String, attribute: &'static str },
    #[error("{file}: {attribute} is invalid: {reason}")]
    Invalid { file: String, attribute: &'static str, reason: String },
    #[error("{file}: has no pixel data (7FE0,0010)")]
    NoPixelData { file: String },
    #[error("{file}: cannot decode its pixel data ({transfer_syntax}): {reason}")]
    Decode { file: String, transfer_syntax: String, reason: String },
    #[error("{file}: unsupported image: {reason}")]
    Unsupported { file: String, reason: String },
    #[error("no DICOM files in {}", input.display())]
    NoFiles { input: PathBuf },
    #[error("series {wanted} is not in the input; it holds: {available}")]
    NoSuchSeries { wanted: String, available: String },
    #[error("{file}: {rows} x {columns} pixels, but {first} has {first_rows} x {first_columns}: one series, one size")]
    MixedSizes { file: String, rows: u32, columns: u32, first: String, first_rows: u32, first_columns: u32 },
    #[error(
        "{file}: {attribute} {found:?} differs from {first}'s {expected:?}: one series, one orientation and pixel size"
    )]
    Inconsistent { file: String, attribute: &'static str, found: Vec<f64>, first: String, expected: Vec<f64> },
    #[error("{file} and {other} are at the same position along the slice normal ({position_mm:.3} mm)")]
    DuplicatePosition { file: String, other: String, position_mm: f64 },
    #[error(
        "gantry tilt: slices advance {tilt_degrees:.2} degrees off their normal (from {first} to {last}); \
         resample the series to a straight stack first"
    )]
    GantryTilt { first: String, last: String, tilt_degrees: f64 },
    #[error(
        "missing slices: {gap_mm:.3} mm between {before} and {after}, where the series steps {step_mm:.3} mm \
         (about {missing} slice(s) missing)"
    )]
    MissingSlices { before: String, after: String, gap_mm: f64, step_mm: f64, missing: usize },
    #[error(
        "uneven slice spacing: {gap_mm:.3} mm between {before} and {after}, where the series steps {step_mm:.3} mm"
    )]
    UnevenSpacing { before: String, after: String, gap_mm: f64, step_mm: f64 },
    #[error("{what}: {source}")]
    Geometry { what: String, source: VolumeError },
    #[error("{what}: shape [z, y, x] = {found:?} is not the source series' {expected:?}")]
    ShapeMismatch { what: &'static str, found: [usize; 3], expected: [usize; 3] },
    #[error("{what}: {reason}")]
    Output { what: String, reason: String },
}

/// An error and its causes on one line: dicom-rs's errors keep the useful part (which
/// element, how many bytes) in their sources.
pub(crate) fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
