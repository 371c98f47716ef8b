//! `fracmap-train synth`: a labelled set of phantom cases on disk, with its manifest.
//!
//! Per case `<id>/ct.nii.gz` (int16 HU), `<id>/vertebrae.nii.gz` (uint8 VerSe labels) and
//! `<id>/fracture_mask.nii.gz` (uint8 truth), all on one grid; `manifest.json` lists them
//! with body boxes, fracture boxes, slice ranges and folds. The same options and seed give
//! the same bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use fracmap_core::Volume;
use fracmap_core::nifti_io::{NiftiDtype, write_mask, write_volume};

use crate::folds::assign_folds;
use crate::manifest::{BoxJson, Case, Manifest, SliceRangeJson, Status, Vertebra};
use crate::parallel::map_indexed;
use crate::synth::{PhantomCase, PhantomParams, generate_case};

/// What to generate. Cases `0..normal_only` have no fracture (VAE training material); the
/// last `unlabeled` cases are marked unlabeled (pseudo-label input).
#[derive(Debug, Clone)]
pub struct PhantomSetSpec {
    pub cases: usize,
    pub normal_only: usize,
    pub unlabeled: usize,
    pub seed: u64,
    pub folds: usize,
    pub params: PhantomParams,
    /// Worker threads (0: every core); cases are independent.
    pub threads: usize,
}

/// Generates and writes the set into `out` (created if needed), calling `progress(done, total)`
/// after each case. Returns the manifest, already saved as `out/manifest.json`.
pub fn write_phantom_set(
    out: &Path,
    spec: &PhantomSetSpec,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Manifest> {
    ensure!(spec.cases > 0, "--cases must be at least 1");
    ensure!(spec.normal_only + spec.unlabeled <= spec.cases, "--normal-only + --unlabeled exceed --cases");
    spec.params.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut cases = map_indexed(spec.cases, spec.threads, progress, |i| write_case(out, spec, i))?;
    assign_folds(&mut cases, spec.folds, spec.seed);
    let source = format!(
        "fracmap-train synth --cases {} --normal-only {} --unlabeled {} --seed {}",
        spec.cases, spec.normal_only, spec.unlabeled, spec.seed
    );
    let manifest = Manifest::new(source, cases);
    manifest.save(&out.join("manifest.json"))?;
    Ok(manifest)
}

/// Seed of case `i`: distinct per case, fixed by the set's seed.
fn case_seed(seed: u64, i: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64)
}

fn write_case(out: &Path, spec: &PhantomSetSpec, i: usize) -> Result<Case> {
    let id = format!("case{i:03}");
    let params = PhantomParams { normal_only: i < spec.normal_only, ..spec.params.clone() };
    let phantom = generate_case(&params, case_seed(spec.seed, i)).with_context(|| format!("case {id}"))?;
    let dir = out.join(&id);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let rel = |name: &str| PathBuf::from(&id).join(name);
    let grid = phantom.ct.grid();
    write_volume(&out.join(rel("ct.nii.gz")), &phantom.ct, NiftiDtype::I16)?;
    let labels = Volume::new(phantom.vertebra_labels.mapv(f32::from), grid.spacing, grid.affine)?;
    write_volume(&out.join(rel("vertebrae.nii.gz")), &labels, NiftiDtype::U8)?;
    write_mask(&out.join(rel("fracture_mask.nii.gz")), &phantom.fracture_mask, &grid)?;
    Ok(Case {
        id: id.clone(),
        patient: format!("phantom-{id}"),
        ct: rel("ct.nii.gz"),
        shape: grid.shape,
        vertebra_labels: Some(rel("vertebrae.nii.gz")),
        fracture_mask: Some(rel("fracture_mask.nii.gz")),
        mask_source: None,
        labeled: i < spec.cases - spec.unlabeled,
        fold: None,
        vertebrae: vertebrae_of(&phantom),
    })
}

fn vertebrae_of(phantom: &PhantomCase) -> Vec<Vertebra> {
    phantom
        .vertebrae
        .iter()
        .map(|v| {
            let (status, fracture_boxes, slice_ranges) = match &v.fracture {
                Some(f) => (
                    Status::Fractured,
                    vec![BoxJson::from(f.fracture_box)],
                    vec![SliceRangeJson { z: [f.z_range.start(), f.z_range.end()] }],
                ),
                None => (Status::Normal, vec![], vec![]),
            };
            Vertebra { level: v.level, body_box: BoxJson::from(v.body_box), status, fracture_boxes, slice_ranges }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fracmap_core::geometry::bounding_box;
    use fracmap_core::nifti_io::read_volume;
    use fracmap_core::preprocess::volume_to_mask;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn spec() -> PhantomSetSpec {
        PhantomSetSpec {
            cases: 3,
            normal_only: 1,
            unlabeled: 1,
            seed: 5,
            folds: 2,
            params: PhantomParams {
                first: "L1".parse().unwrap(),
                last: "L2".parse().unwrap(),
                in_plane: 120,
                in_plane_spacing_mm: (0.8, 0.9),
                fracture_rate: 1.0,
                ..PhantomParams::default()
            },
            threads: 2,
        }
    }

    #[test]
    fn writes_a_valid_manifest_whose_boxes_hold_the_true_masks() {
        let dir = tempfile::tempdir().unwrap();
        let calls = AtomicUsize::new(0);
        let m = write_phantom_set(dir.path(), &spec(), &|_, total| {
            assert_eq!(total, 3);
            calls.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(calls.into_inner(), 3);
        let path = dir.path().join("manifest.json");
        assert_eq!(Manifest::load(&path, true).unwrap(), m);

        let labeled: Vec<bool> = m.cases.iter().map(|c| c.labeled).collect();
        assert_eq!(labeled, [true, true, false]);
        let first = &m.cases[0];
        assert!(first.vertebrae.iter().all(|v| v.status == Status::Normal), "case 0 is normal-only");
        let fractured = &m.cases[1];
        assert!(fractured.vertebrae.iter().all(|v| v.status == Status::Fractured), "fracture rate 1.0");

        // The union of the fracture boxes is exactly the bounding box of the true mask's parts.
        let mask = volume_to_mask(
            &read_volume(&Manifest::resolve(&path, fractured.fracture_mask.as_ref().unwrap())).unwrap(),
            0.5,
        );
        assert_eq!(mask.dim(), (fractured.shape[0], fractured.shape[1], fractured.shape[2]));
        for v in &fractured.vertebrae {
            let b = v.fracture_boxes[0].to_box3().unwrap();
            let inside =
                mask.slice(ndarray::s![b.ranges()[0].clone(), b.ranges()[1].clone(), b.ranges()[2].clone()]).to_owned();
            assert_eq!(
                bounding_box(&inside).map(|l| l.shape()),
                Some(b.shape()),
                "{}: box is the mask's bounding box",
                v.level
            );
            assert_eq!(v.slice_ranges[0].z, v.fracture_boxes[0].z);
        }
    }

    #[test]
    fn the_same_seed_writes_the_same_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut one = spec();
        one.cases = 2;
        one.unlabeled = 0;
        write_phantom_set(a.path(), &one, &|_, _| {}).unwrap();
        write_phantom_set(b.path(), &PhantomSetSpec { threads: 1, ..one.clone() }, &|_, _| {}).unwrap();
        for file in ["manifest.json", "case001/ct.nii.gz", "case001/vertebrae.nii.gz", "case001/fracture_mask.nii.gz"] {
            let (x, y) = (std::fs::read(a.path().join(file)).unwrap(), std::fs::read(b.path().join(file)).unwrap());
            assert!(x == y, "{file} differs between two runs with one seed");
        }
        let other = tempfile::tempdir().unwrap();
        write_phantom_set(other.path(), &PhantomSetSpec { seed: 6, ..one }, &|_, _| {}).unwrap();
        let ct = |d: &Path| std::fs::read(d.join("case001/ct.nii.gz")).unwrap();
        assert_ne!(ct(a.path()), ct(other.path()));
    }

    #[test]
    fn inconsistent_counts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_phantom_set(dir.path(), &PhantomSetSpec { normal_only: 3, ..spec() }, &|_, _| {}).unwrap_err();
        assert!(err.to_string().contains("exceed --cases"), "{err}");
    }
}
