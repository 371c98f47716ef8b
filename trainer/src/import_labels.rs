//! `fracmap-train import-labels`: fracture masks from outside (drafts a clinician corrected in
//! a viewer, or masks drawn by hand) back into the dataset.
//!
//! `--labels DIR` holds one NIfTI per case, `<case id>.nii.gz` (or `.nii`), on that case's CT
//! grid (shape and affine; any non-zero voxel is fracture). Every file is checked before
//! anything is written, so a mismatched grid or an unknown case leaves the dataset as it was.
//! Each mask is then copied as uint8 to `labels/<case id>.nii.gz` beside the manifest, the case's
//! `fracture_mask` points at it and `mask_source` records its kind (draft, corrected, manual),
//! the time and the file it came from; the manifest is rewritten whole.
//!
//! With `--drafts DIR` (a `pseudo-label` output), the annotation effort of each case: voxels
//! the clinician added to the draft and removed from it, and the Dice of draft against
//! corrected mask, into `labels/effort.csv`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use fracmap_core::fsutil::write_atomic;
use fracmap_core::metrics::Confusion;
use fracmap_core::nifti_io::{read_volume, write_mask};
use fracmap_core::{Mask, Volume};

use crate::manifest::{LabelKind, Manifest, MaskSource};
use crate::pseudo_labels::{CASES_DIR, DRAFT_FILE};

/// The folder beside the manifest that imported masks are copied into.
pub const LABELS_DIR: &str = "labels";
pub const EFFORT_FILE: &str = "effort.csv";
/// Grids agree when their affines differ by less than this (mm).
const AFFINE_TOLERANCE_MM: f64 = 1e-3;

/// How much a correction changed a draft.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effort {
    /// Voxels in the corrected mask, not in the draft.
    pub added: u64,
    /// Voxels in the draft, not in the corrected mask.
    pub removed: u64,
    /// Dice of the draft against the corrected mask (1 when both are empty).
    pub dice: f64,
}

/// The effort of turning `draft` into `corrected` (same shape).
pub fn effort(draft: &Mask, corrected: &Mask) -> Result<Effort> {
    let confusion = Confusion::from_masks(draft, corrected)?;
    Ok(Effort { added: confusion.fn_, removed: confusion.fp, dice: confusion.dice() })
}

/// One case imported.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub case: String,
    pub voxels: u64,
    /// With `--drafts`: against the case's draft.
    pub effort: Option<Effort>,
}

/// Imports every mask of `labels` into the dataset of `manifest_path`; see the module.
pub fn import_labels(
    manifest_path: &Path,
    labels: &Path,
    kind: LabelKind,
    drafts: Option<&Path>,
) -> Result<Vec<Imported>> {
    let mut manifest = Manifest::load(manifest_path, false)?;
    let files = label_files(labels)?;
    ensure!(!files.is_empty(), "--labels {}: no <case id>.nii.gz or .nii file in it", labels.display());

    // Check everything first: nothing is written unless every file fits its case.
    let mut masks = Vec::with_capacity(files.len());
    for (case_id, file) in &files {
        let case = manifest.cases.iter().find(|c| &c.id == case_id).with_context(|| {
            format!(
                "{}: no case {case_id:?} in {} (files are named <case id>.nii.gz)",
                file.display(),
                manifest_path.display()
            )
        })?;
        let ct = read_volume(&Manifest::resolve(manifest_path, &case.ct))
            .with_context(|| format!("case {case_id}: its CT"))?;
        let label = read_volume(file)?;
        check_grid(case_id, file, &label, &ct)?;
        let mask = to_mask(case_id, file, &label)?;
        let effort = match drafts {
            Some(dir) => {
                let path = dir.join(CASES_DIR).join(case_id).join(DRAFT_FILE);
                let draft = read_volume(&path).with_context(|| format!("case {case_id}: its draft (--drafts)"))?;
                check_grid(case_id, &path, &draft, &ct)?;
                Some(effort(&to_mask(case_id, &path, &draft)?, &mask)?)
            }
            None => None,
        };
        masks.push((case_id.clone(), file.clone(), mask, ct.grid(), effort));
    }

    let imported_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let labels_dir = Manifest::resolve(manifest_path, Path::new(LABELS_DIR));
    std::fs::create_dir_all(&labels_dir).with_context(|| format!("{}: cannot create", labels_dir.display()))?;
    let mut imported = Vec::with_capacity(masks.len());
    for (case_id, file, mask, grid, effort) in masks {
        let relative = PathBuf::from(LABELS_DIR).join(format!("{case_id}.nii.gz"));
        write_mask(&Manifest::resolve(manifest_path, &relative), &mask, &grid)?;
        let case = manifest.cases.iter_mut().find(|c| c.id == case_id).expect("checked above");
        case.fracture_mask = Some(relative);
        case.mask_source = Some(MaskSource { kind, imported_at, file });
        imported.push(Imported { case: case_id, voxels: mask.iter().filter(|&&m| m).count() as u64, effort });
    }
    manifest.save(manifest_path)?;
    if drafts.is_some() {
        let path = labels_dir.join(EFFORT_FILE);
        write_atomic(&path, effort_table(&imported).as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(imported)
}

/// `<case id>` -> file, for every `.nii.gz` or `.nii` file in `dir`.
fn label_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut files = BTreeMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("--labels {}: cannot read", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("--labels {}: cannot read", dir.display()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(case) = name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii")) else { continue };
        if let Some(earlier) = files.insert(case.to_string(), path.clone()) {
            bail!("case {case}: two label files, {} and {}", earlier.display(), path.display());
        }
    }
    Ok(files)
}

/// The label's grid must be its case's CT grid: same shape, affines within a micrometre.
fn check_grid(case: &str, file: &Path, label: &Volume, ct: &Volume) -> Result<()> {
    ensure!(
        label.shape() == ct.shape(),
        "case {case}: {} has shape [z, y, x] = {:?}, its CT {:?}: the mask must lie on the CT's grid",
        file.display(),
        label.shape(),
        ct.shape()
    );
    let worst = label
        .affine()
        .iter()
        .flatten()
        .zip(ct.affine().iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    ensure!(
        worst < AFFINE_TOLERANCE_MM,
        "case {case}: {}'s affine differs from its CT's by up to {worst:.4} mm: the mask must lie on the CT's grid",
        file.display()
    );
    Ok(())
}

/// Non-zero voxels are fracture (viewers write 1 or 255); a NaN is an error.
fn to_mask(case: &str, file: &Path, label: &Volume) -> Result<Mask> {
    if let Some((index, _)) = label.data().indexed_iter().find(|(_, v)| !v.is_finite()) {
        bail!("case {case}: {} has a non-finite voxel at [z, y, x] = {index:?}", file.display());
    }
    Ok(label.data().mapv(|v| v != 0.0))
}

/// `effort.csv`: a row per case and the total.
fn effort_table(imported: &[Imported]) -> String {
    let mut text = String::from("case,voxels,voxels_added,voxels_removed,dice_draft_vs_corrected\n");
    let (mut added, mut removed) = (0, 0);
    for case in imported {
        if let Some(e) = case.effort {
            text.push_str(&format!("{},{},{},{},{:.4}\n", case.case, case.voxels, e.added, e.removed, e.dice));
            added += e.added;
            removed += e.removed;
        }
    }
    let voxels: u64 = imported.iter().map(|c| c.voxels).sum();
    text.push_str(&format!("total,{voxels},{added},{removed},\n"));
    text
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    #[test]
    fn effort_counts_what_the_correction_added_and_removed() {
        // Draft: x in 0..4 of row 0 (4 voxels); corrected: x in 2..7 (5 voxels); 2 shared.
        let draft = Array3::from_shape_fn([1, 2, 8], |(_, y, x)| y == 0 && x < 4);
        let corrected = Array3::from_shape_fn([1, 2, 8], |(_, y, x)| y == 0 && (2..7).contains(&x));
        let e = effort(&draft, &corrected).unwrap();
        assert_eq!((e.added, e.removed), (3, 2));
        assert!((e.dice - 2.0 * 2.0 / (4.0 + 5.0)).abs() < 1e-12, "{}", e.dice);
        let same = effort(&draft, &draft).unwrap();
        assert_eq!((same.added, same.removed, same.dice), (0, 0, 1.0));
        let empty = Array3::from_elem([1, 2, 8], false);
        assert_eq!(effort(&empty, &empty).unwrap().dice, 1.0, "nothing drafted, nothing corrected");
    }

    #[test]
    fn the_effort_table_has_a_row_per_case_and_a_total() {
        let case = |id: &str, added, removed| Imported {
            case: id.into(),
            voxels: 10,
            effort: Some(Effort { added, removed, dice: 0.5 }),
        };
        let table = effort_table(&[case("a", 3, 1), case("b", 0, 4)]);
        assert_eq!(
            table,
            "case,voxels,voxels_added,voxels_removed,dice_draft_vs_corrected\na,10,3,1,0.5000\nb,10,0,4,0.5000\ntotal,20,3,5,\n"
        );
    }
}
