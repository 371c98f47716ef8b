//! fracmap-core: what every fracmap binary shares and none of them owns.
//!
//! Volumes and their geometry, NIfTI input and output, weak-label geometry (boxes, slice
//! ranges, masks, connected components), preprocessing and metrics. No Burn, no ONNX
//! Runtime, no gRPC, no configuration files, no terminal: policy lives in the binaries.
//!
//! Axis convention everywhere: arrays are indexed `[z, y, x]` (C order, x fastest), which
//! maps to ONNX `N, C, D, H, W` without a copy. The affine maps voxel `(x, y, z, 1)` (NIfTI's
//! `i, j, k`) to world millimetres (RAS+), as NIfTI defines it.

pub mod chart;
pub mod colormap;
pub mod error_norm;
pub mod fsutil;
pub mod geometry;
pub mod heatmap;
pub mod mesh;
pub mod metrics;
pub mod model_manifest;
pub mod nifti_io;
pub mod picture;
pub mod preprocess;
pub mod pseudo_label;
pub mod render;
pub mod scene;
pub mod sliding_window;
pub mod smoothing;
pub mod vertebra_crop;
pub mod volume;

pub use error_norm::{ErrorNorm, ErrorNormError};
pub use geometry::{Box3, GeometryError, Mask, SliceRange};
pub use metrics::{Confusion, MetricError};
pub use preprocess::{CropRegion, HuWindow, Interpolation, PreprocessError};
pub use pseudo_label::{PseudoLabel, PseudoLabelConfig, PseudoLabelError};
pub use volume::{Affine, Grid, Volume, VolumeError};
