//! The dataset manifest: one JSON file that lists cases, their vertebrae and weak labels.
//!
//! Every trainer command reads this format; the phantom generator and the VerSe importer
//! write it. Paths inside are relative to the manifest's own directory. Boxes are written
//! with named axes and half-open voxel ranges, `{"x": [x0, x1], "y": [y0, y1], "z": [z0, z1]}`,
//! so that nobody has to remember an axis order. Documented in `docs/manifest.md`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fracmap_core::Box3;
use fracmap_core::fsutil::write_atomic;
use serde::{Deserialize, Serialize};

use crate::levels::Level;

pub const FORMAT: &str = "fracmap-manifest";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Where the data came from (e.g. "fracmap synth --seed 7"); free text.
    #[serde(default)]
    pub source: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique within the manifest; used in file names and reports.
    pub id: String,
    /// Folds are split by patient: all cases of one patient share a fold.
    pub patient: String,
    /// CT in Hounsfield units, relative path.
    pub ct: PathBuf,
    /// Voxel grid of the CT, `[z, y, x]`; checked against the file's header.
    pub shape: [usize; 3],
    /// Vertebra label map (VerSe label values), relative path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertebra_labels: Option<PathBuf>,
    /// True fracture mask on the CT grid (evaluation, strong supervision), relative path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fracture_mask: Option<PathBuf>,
    /// Where `fracture_mask` came from when `fracmap-train import-labels` put it there; `None`:
    /// the dataset's own (a phantom's truth, an import's annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_source: Option<MaskSource>,
    /// False for cases whose weak labels are not to be trained on (pseudo-label input).
    pub labeled: bool,
    /// Cross-validation fold, `0..folds`; `None` until folds are assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<usize>,
    pub vertebrae: Vec<Vertebra>,
}

/// The provenance of an imported fracture mask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSource {
    pub kind: LabelKind,
    /// When it was imported, seconds since the Unix epoch.
    pub imported_at: u64,
    /// The file it was imported from, as given.
    pub file: PathBuf,
}

/// Who drew an imported mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LabelKind {
    /// The weak model's draft, taken as it is.
    Draft,
    /// A draft a clinician corrected.
    Corrected,
    /// Drawn by hand from nothing.
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Normal,
    Fractured,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vertebra {
    pub level: Level,
    /// The vertebral body's bounding box on the CT grid.
    pub body_box: BoxJson,
    pub status: Status,
    /// One box per fracture (label mode B); empty for normal vertebrae.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fracture_boxes: Vec<BoxJson>,
    /// Axial slice ranges the fractures span (label mode A); empty for normal vertebrae.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slice_ranges: Vec<SliceRangeJson>,
}

/// A box with named axes, half-open voxel ranges: `x` in `x[0]..x[1]`, etc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxJson {
    pub x: [usize; 2],
    pub y: [usize; 2],
    pub z: [usize; 2],
}

/// An axial slice range, half-open: slices `z[0]..z[1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceRangeJson {
    pub z: [usize; 2],
}

impl From<Box3> for BoxJson {
    fn from(b: Box3) -> Self {
        let (min, max) = (b.min(), b.max());
        BoxJson { z: [min[0], max[0]], y: [min[1], max[1]], x: [min[2], max[2]] }
    }
}

impl BoxJson {
    /// The box as `Box3`; fails on an empty range (a validated manifest has none).
    pub fn to_box3(self) -> Result<Box3, fracmap_core::GeometryError> {
        Box3::new([self.z[0], self.y[0], self.x[0]], [self.z[1], self.y[1], self.x[1]])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid manifest: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("manifest: {0}")]
    Invalid(String),
}

impl Manifest {
    pub fn new(source: impl Into<String>, cases: Vec<Case>) -> Self {
        Manifest { format: FORMAT.to_string(), version: VERSION, source: source.into(), cases }
    }

    /// Reads and validates a manifest; `check_files` also checks that every referenced file exists.
    pub fn load(path: &Path, check_files: bool) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.into(), source })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| ManifestError::Parse { path: path.into(), source })?;
        manifest.validate()?;
        if check_files {
            manifest.check_files(path.parent().unwrap_or(Path::new(".")))?;
        }
        Ok(manifest)
    }

    /// Writes the manifest atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), ManifestError> {
        self.validate()?;
        let text = serde_json::to_string_pretty(self).expect("a manifest always serialises");
        write_atomic(path, text.as_bytes()).map_err(|source| ManifestError::Write { path: path.into(), source })
    }

    /// Structural checks that need no file access.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |msg: String| Err(ManifestError::Invalid(msg));
        if self.format != FORMAT {
            return invalid(format!("format is {:?}, expected {FORMAT:?}", self.format));
        }
        if self.version != VERSION {
            return invalid(format!("version {} is not supported (this build reads version {VERSION})", self.version));
        }
        let mut ids = BTreeSet::new();
        for case in &self.cases {
            if case.id.is_empty() || !ids.insert(case.id.as_str()) {
                return invalid(format!("case id {:?} is empty or not unique", case.id));
            }
            case.validate().map_err(|msg| ManifestError::Invalid(format!("case {}: {msg}", case.id)))?;
        }
        Ok(())
    }

    fn check_files(&self, root: &Path) -> Result<(), ManifestError> {
        for case in &self.cases {
            let paths = [Some(&case.ct), case.vertebra_labels.as_ref(), case.fracture_mask.as_ref()];
            for rel in paths.into_iter().flatten() {
                let full = root.join(rel);
                if !full.is_file() {
                    return Err(ManifestError::Invalid(format!(
                        "case {}: file {} does not exist",
                        case.id,
                        full.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The absolute (or manifest-relative) path of a file named in the manifest at `manifest_path`.
    pub fn resolve(manifest_path: &Path, rel: &Path) -> PathBuf {
        manifest_path.parent().unwrap_or(Path::new(".")).join(rel)
    }
}

impl Case {
    fn validate(&self) -> Result<(), String> {
        if self.shape.contains(&0) {
            return Err(format!("shape {:?} has an empty axis", self.shape));
        }
        let mut levels = BTreeSet::new();
        for v in &self.vertebrae {
            if !levels.insert(v.level) {
                return Err(format!("level {} listed twice", v.level));
            }
            let where_ = |what: &str| format!("{} {what}", v.level);
            check_box(&v.body_box, self.shape).map_err(|e| format!("{}: {e}", where_("body box")))?;
            for b in &v.fracture_boxes {
                check_box(b, self.shape).map_err(|e| format!("{}: {e}", where_("fracture box")))?;
            }
            for r in &v.slice_ranges {
                if r.z[0] >= r.z[1] || r.z[1] > self.shape[0] {
                    return Err(format!(
                        "{}: z {}..{} is empty or outside volume depth {}",
                        where_("slice range"),
                        r.z[0],
                        r.z[1],
                        self.shape[0]
                    ));
                }
            }
            let has_labels = !v.fracture_boxes.is_empty() || !v.slice_ranges.is_empty();
            if v.status == Status::Normal && has_labels {
                return Err(format!("{} is normal but has fracture boxes or slice ranges", v.level));
            }
        }
        Ok(())
    }
}

/// Checks a box against a `[z, y, x]` shape, naming the axis that is wrong.
fn check_box(b: &BoxJson, shape: [usize; 3]) -> Result<(), String> {
    let axes = [("z", b.z, shape[0], "depth"), ("y", b.y, shape[1], "height"), ("x", b.x, shape[2], "width")];
    for (name, [lo, hi], size, dim) in axes {
        if lo >= hi || hi > size {
            return Err(format!("{name} {lo}..{hi} is empty or outside volume {dim} {size}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vertebra(level: &str, status: Status) -> Vertebra {
        let fractured = status == Status::Fractured;
        Vertebra {
            level: level.parse().unwrap(),
            body_box: BoxJson { x: [4, 20], y: [4, 20], z: [2, 12] },
            status,
            fracture_boxes: if fractured { vec![BoxJson { x: [6, 10], y: [5, 9], z: [3, 6] }] } else { vec![] },
            slice_ranges: if fractured { vec![SliceRangeJson { z: [3, 6] }] } else { vec![] },
        }
    }

    fn case(id: &str) -> Case {
        Case {
            id: id.into(),
            patient: format!("patient-{id}"),
            ct: format!("{id}/ct.nii.gz").into(),
            shape: [16, 24, 24],
            vertebra_labels: Some(format!("{id}/vertebrae.nii.gz").into()),
            fracture_mask: None,
            mask_source: None,
            labeled: true,
            fold: Some(0),
            vertebrae: vec![vertebra("T12", Status::Normal), vertebra("L1", Status::Fractured)],
        }
    }

    fn invalid_message(m: &Manifest) -> String {
        match m.validate() {
            Err(ManifestError::Invalid(msg)) => msg,
            other => panic!("expected an invalid manifest, got {other:?}"),
        }
    }

    #[test]
    fn round_trips_through_json_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let m = Manifest::new("test", vec![case("a"), case("b")]);
        m.save(&path).unwrap();
        assert_eq!(Manifest::load(&path, false).unwrap(), m);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"level\": \"L1\"") && text.contains("\"status\": \"fractured\""), "{text}");
    }

    #[test]
    fn box_json_maps_axes_to_zyx() {
        let b = BoxJson { x: [1, 2], y: [3, 4], z: [5, 6] };
        let b3 = b.to_box3().unwrap();
        assert_eq!((b3.min(), b3.max()), ([5, 3, 1], [6, 4, 2]));
        assert_eq!(BoxJson::from(b3), b);
    }

    #[test]
    fn errors_name_case_level_and_axis() {
        let mut m = Manifest::new("test", vec![case("a")]);
        m.cases[0].vertebrae[1].fracture_boxes[0].z = [10, 20];
        assert_eq!(invalid_message(&m), "case a: L1 fracture box: z 10..20 is empty or outside volume depth 16");

        let mut m = Manifest::new("test", vec![case("a"), case("a")]);
        assert!(invalid_message(&m).contains("not unique"));
        m.cases.pop();
        m.cases[0].vertebrae[0].slice_ranges.push(SliceRangeJson { z: [1, 2] });
        assert_eq!(invalid_message(&m), "case a: T12 is normal but has fracture boxes or slice ranges");
    }

    #[test]
    fn unknown_level_and_version_are_rejected_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let mut json = serde_json::to_string(&Manifest::new("t", vec![case("a")])).unwrap();
        std::fs::write(&path, json.replace("\"T12\"", "\"T13\"")).unwrap();
        let err = Manifest::load(&path, false).unwrap_err().to_string();
        assert!(err.contains("unknown vertebral level \"T13\""), "{err}");
        json = json.replace("\"version\":1", "\"version\":2");
        std::fs::write(&path, json).unwrap();
        let err = Manifest::load(&path, false).unwrap_err().to_string();
        assert!(err.contains("version 2 is not supported"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        Manifest::new("t", vec![case("a")]).save(&path).unwrap();
        let err = Manifest::load(&path, true).unwrap_err().to_string();
        assert!(err.contains("case a: file") && err.contains("a/ct.nii.gz does not exist"), "{err}");
    }
}
