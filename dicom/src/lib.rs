//! fracmap-dicom: fracmap's DICOM side, over dicom-rs.
//!
//! - [`series`]: a CT series in (files or bytes; one series picked by SeriesInstanceUID;
//!   slices ordered by position; HU; RAS affine) -> `fracmap_core::Volume`.
//! - [`derived`]: the draft mask out as a binary DICOM SEG, the probability as a float
//!   Parametric Map, both on the source's grid and referencing its instances.
//! - [`ct_writer`]: a `Volume` out as a CT series (phantoms and tests).
//! - [`uid`]: new UIDs (`2.25.<UUID>`).
//!
//! Patient and study attributes are copied from the source into derived objects and appear
//! in no message, error or `Debug` output of this crate.
//!
//! Pixel data: native (uncompressed) and what dicom-rs decodes in pure Rust here: JPEG
//! baseline/extended/lossless, JPEG 2000 (openjp2), RLE lossless, deflate. Not JPEG-LS.

pub mod ct_writer;
pub mod derived;
mod error;
pub mod series;
pub mod uid;

pub use derived::{Algorithm, Written, write_parametric_map, write_segmentation};
pub use error::DicomError;
pub use series::{CtSeries, SeriesPlan, SeriesReference, Source, discover, is_dicom_file, read_series, scan};
