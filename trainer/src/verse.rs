//! Import of the public VerSe layout into a manifest.
//!
//! VerSe (the MICCAI vertebra segmentation challenge) ships one scan per prefix `P`:
//! `rawdata/sub-*/P_ct.nii.gz`, `derivatives/sub-*/P_seg-vert_msk.nii.gz` (vertebra label map,
//! 8..19 = T1..T12, 20..25 = L1..L6) and `derivatives/sub-*/P_seg-subreg_ctd.json` (centroids).
//! VerSe has no fracture labels: the user supplies them as a CSV
//! `scan,level,status` with status `normal`, `fractured`, or a Genant grade `0..3` (0 = normal).
//! Vertebra boxes come from the label map; fractured vertebrae get no fracture box (status only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fracmap_core::geometry::bounding_box;
use fracmap_core::nifti_io::read_volume;

use crate::levels::Level;
use crate::manifest::{BoxJson, Case, Manifest, Status, Vertebra};

/// One scan found in a VerSe tree, paths relative to the tree's root.
#[derive(Debug, Clone, PartialEq)]
pub struct VerseScan {
    pub prefix: String,
    pub subject: String,
    pub ct: PathBuf,
    pub vertebra_mask: PathBuf,
}

/// Finds every `rawdata/sub-*/P_ct.nii.gz` that has its `derivatives/sub-*/P_seg-vert_msk.nii.gz`.
/// Scans without a mask are returned separately so the caller can say so.
pub fn find_scans(root: &Path) -> Result<(Vec<VerseScan>, Vec<PathBuf>)> {
    let rawdata = root.join("rawdata");
    let subjects = std::fs::read_dir(&rawdata).with_context(|| format!("{}: not a VerSe tree", rawdata.display()))?;
    let (mut scans, mut unmatched) = (Vec::new(), Vec::new());
    for subject in subjects {
        let subject = subject?.file_name().to_string_lossy().into_owned();
        if !subject.starts_with("sub-") {
            continue;
        }
        for file in std::fs::read_dir(rawdata.join(&subject))? {
            let name = file?.file_name().to_string_lossy().into_owned();
            let Some(prefix) = name.strip_suffix("_ct.nii.gz").or_else(|| name.strip_suffix("_ct.nii")) else {
                continue;
            };
            let ct = Path::new("rawdata").join(&subject).join(&name);
            let mask_dir = Path::new("derivatives").join(&subject);
            let mask = ["nii.gz", "nii"]
                .iter()
                .map(|ext| mask_dir.join(format!("{prefix}_seg-vert_msk.{ext}")))
                .find(|m| root.join(m).is_file());
            match mask {
                Some(vertebra_mask) => {
                    scans.push(VerseScan { prefix: prefix.to_string(), subject: subject.clone(), ct, vertebra_mask })
                }
                None => unmatched.push(ct),
            }
        }
    }
    scans.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    unmatched.sort();
    Ok((scans, unmatched))
}

/// Fracture status per (scan prefix, level), read from the user's CSV.
pub fn read_status_csv(path: &Path) -> Result<BTreeMap<(String, Level), Status>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().map(|(_, l)| l.split(',').map(str::trim).collect()).unwrap_or_default();
    if header != ["scan", "level", "status"] {
        bail!("{}: header must be `scan,level,status`, found {:?}", path.display(), header.join(","));
    }
    let mut out = BTreeMap::new();
    for (i, line) in lines {
        let at = || format!("{}: line {}", path.display(), i + 1);
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [scan, level, status] = fields[..] else { bail!("{}: expected 3 fields, found {}", at(), fields.len()) };
        let level: Level = level.parse().with_context(at)?;
        let status = match status {
            "normal" | "0" => Status::Normal,
            "fractured" | "1" | "2" | "3" => Status::Fractured,
            other => bail!("{}: status {other:?} is not normal, fractured or a Genant grade 0..3", at()),
        };
        if out.insert((scan.to_string(), level), status).is_some() {
            bail!("{}: {scan} {level} listed twice", at());
        }
    }
    Ok(out)
}

/// Builds a manifest from a VerSe tree. Vertebrae present in a label map but absent from
/// the CSV are kept only when `unlisted_are_normal`, else the import fails naming them: a
/// silent default would put unknown fractures among the normals the VAE learns from.
/// Scans with no CSV line at all are imported as unlabeled (pseudo-label input).
pub fn import(root: &Path, status_csv: &Path, unlisted_are_normal: bool) -> Result<Manifest> {
    let statuses = read_status_csv(status_csv)?;
    let (scans, _) = find_scans(root)?;
    if scans.is_empty() {
        bail!("{}: no rawdata/sub-*/*_ct.nii.gz with a derivatives/sub-*/*_seg-vert_msk.nii.gz", root.display());
    }
    let mut cases = Vec::new();
    for scan in &scans {
        let mask_path = root.join(&scan.vertebra_mask);
        let labels = read_volume(&mask_path).with_context(|| format!("scan {}", scan.prefix))?;
        let ct_header = read_volume(&root.join(&scan.ct)).with_context(|| format!("scan {}", scan.prefix))?;
        if labels.shape() != ct_header.shape() {
            bail!(
                "scan {}: vertebra mask shape {:?} differs from CT shape {:?}",
                scan.prefix,
                labels.shape(),
                ct_header.shape()
            );
        }
        let listed = statuses.keys().any(|(s, _)| s == &scan.prefix);
        let mut vertebrae = Vec::new();
        for level in present_levels(labels.data()) {
            let mask = labels.data().mapv(|v| v.round() as i64 == i64::from(level.label()));
            let body_box = bounding_box(&mask).expect("a present level has voxels");
            let status = match statuses.get(&(scan.prefix.clone(), level)) {
                Some(status) => *status,
                None if !listed || unlisted_are_normal => Status::Normal,
                None => {
                    bail!("scan {}: level {level} is in the label map but not in {}", scan.prefix, status_csv.display())
                }
            };
            vertebrae.push(Vertebra {
                level,
                body_box: BoxJson::from(body_box),
                status,
                fracture_boxes: vec![],
                slice_ranges: vec![],
            });
        }
        cases.push(Case {
            id: scan.prefix.clone(),
            patient: scan.subject.clone(),
            ct: scan.ct.clone(),
            shape: ct_header.shape(),
            vertebra_labels: Some(scan.vertebra_mask.clone()),
            fracture_mask: None,
            mask_source: None,
            labeled: listed,
            fold: None,
            vertebrae,
        });
    }
    let manifest = Manifest::new(format!("VerSe import of {}", root.display()), cases);
    manifest.validate()?;
    Ok(manifest)
}

/// Levels with at least one voxel in a label map, cranial to caudal.
fn present_levels(labels: &ndarray::Array3<f32>) -> Vec<Level> {
    let mut seen = [false; 256];
    for &v in labels {
        if (1.0..=255.0).contains(&v) {
            seen[v.round() as usize] = true;
        }
    }
    (1..=255u8).filter(|&l| seen[l as usize]).filter_map(Level::from_label).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fracmap_core::Volume;
    use fracmap_core::nifti_io::{NiftiDtype, write_volume};
    use ndarray::Array3;

    /// A VerSe-shaped tree: two subjects; sub-a has T12 (label 19) and L1 (20), sub-b only L1.
    fn verse_tree(root: &Path) {
        let spacing = [2.0, 1.0, 1.0];
        for (subject, prefix, levels) in [("sub-a", "sub-a_dir-ax", vec![19u8, 20]), ("sub-b", "sub-b", vec![20])] {
            std::fs::create_dir_all(root.join("rawdata").join(subject)).unwrap();
            std::fs::create_dir_all(root.join("derivatives").join(subject)).unwrap();
            let ct = Volume::with_spacing(Array3::from_elem((8, 6, 6), -1000.0), spacing).unwrap();
            write_volume(&root.join(format!("rawdata/{subject}/{prefix}_ct.nii.gz")), &ct, NiftiDtype::I16).unwrap();
            let mut labels = Array3::zeros((8, 6, 6));
            for (i, &l) in levels.iter().enumerate() {
                // Level i occupies z 4i..4i+3, y 1..5, x 2..4.
                labels.slice_mut(ndarray::s![4 * i..4 * i + 3, 1..5, 2..4]).fill(f32::from(l));
            }
            let mask = Volume::with_spacing(labels, spacing).unwrap();
            let path = root.join(format!("derivatives/{subject}/{prefix}_seg-vert_msk.nii.gz"));
            write_volume(&path, &mask, NiftiDtype::U8).unwrap();
        }
        std::fs::create_dir_all(root.join("rawdata/sub-c")).unwrap();
        std::fs::write(root.join("rawdata/sub-c/sub-c_ct.nii.gz"), b"no mask for this one").unwrap();
    }

    #[test]
    fn imports_boxes_statuses_and_unlabeled_scans() {
        let dir = tempfile::tempdir().unwrap();
        verse_tree(dir.path());
        let csv = dir.path().join("status.csv");
        std::fs::write(&csv, "scan,level,status\nsub-a_dir-ax,T12,normal\nsub-a_dir-ax,L1,2\n").unwrap();

        let (scans, unmatched) = find_scans(dir.path()).unwrap();
        assert_eq!(scans.len(), 2);
        assert_eq!(unmatched, vec![PathBuf::from("rawdata/sub-c/sub-c_ct.nii.gz")]);

        let m = import(dir.path(), &csv, false).unwrap();
        let a = &m.cases[0];
        assert_eq!((a.id.as_str(), a.patient.as_str(), a.labeled), ("sub-a_dir-ax", "sub-a", true));
        let levels: Vec<String> = a.vertebrae.iter().map(|v| v.level.to_string()).collect();
        assert_eq!(levels, ["T12", "L1"]);
        assert_eq!(a.vertebrae[1].status, Status::Fractured, "Genant grade 2 is a fracture");
        assert_eq!(a.vertebrae[1].body_box, BoxJson { x: [2, 4], y: [1, 5], z: [4, 7] });
        assert_eq!(a.shape, [8, 6, 6]);
        let b = &m.cases[1];
        assert!(!b.labeled, "a scan with no CSV line is pseudo-label input");
        assert_eq!(b.vertebrae[0].status, Status::Normal);
    }

    #[test]
    fn a_level_missing_from_the_csv_is_named() {
        let dir = tempfile::tempdir().unwrap();
        verse_tree(dir.path());
        let csv = dir.path().join("status.csv");
        std::fs::write(&csv, "scan,level,status\nsub-a_dir-ax,L1,fractured\n").unwrap();
        let err = import(dir.path(), &csv, false).unwrap_err().to_string();
        assert!(err.contains("scan sub-a_dir-ax: level T12 is in the label map but not in"), "{err}");
        let m = import(dir.path(), &csv, true).unwrap();
        assert_eq!(m.cases[0].vertebrae[0].status, Status::Normal);
    }

    #[test]
    fn csv_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("s.csv");
        std::fs::write(&csv, "scan,level,status\nx,T13,normal\n").unwrap();
        let err = format!("{:#}", read_status_csv(&csv).unwrap_err());
        assert!(err.contains("s.csv: line 2") && err.contains("T13"), "{err}");
        std::fs::write(&csv, "scan,level,status\nx,T12,broken\n").unwrap();
        let err = format!("{:#}", read_status_csv(&csv).unwrap_err());
        assert!(err.contains("line 2: status \"broken\""), "{err}");
        std::fs::write(&csv, "case,level\n").unwrap();
        assert!(read_status_csv(&csv).unwrap_err().to_string().contains("header must be"));
    }
}
