//! `fracmap report` and `fracmap segment --report`: one case's outputs as one page,
//! `report.html` in the case's folder, that any browser shows without a NIfTI viewer and
//! that can be mailed or archived alone (pictures inline, nothing fetched).
//!
//! - [`case`]: `summary.json` as the report reads it; the vertebrae in spine order and
//!   which of them to picture.
//! - [`figures`]: heat maps and axial slices around each pictured vertebra, and the bone and
//!   draft mask as surfaces (rendered here, and written beside the page as `scene.glb`).
//! - [`html`]: the page.
//!
//! The page names the CT by its file name only: nothing of its folder or its header (which
//! may hold patient data) goes into it.

mod case;
mod figures;
mod html;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::Args;
use fracmap_core::nifti_io::read_volume;
use fracmap_core::preprocess::volume_to_mask;
use fracmap_core::{Mask, Volume};

use crate::outputs::{MASK_FILE, PROBABILITY_FILE};
use case::{CaseSummary, read_summary};
use figures::CaseVolumes;

pub const REPORT_FILE: &str = "report.html";
pub const SCENE_FILE: &str = "scene.glb";

#[derive(Args)]
pub struct ReportArgs {
    /// The folder `fracmap segment --out` wrote.
    #[arg(value_name = "CASE_OUTPUT_DIR")]
    dir: PathBuf,
    /// The CT that was segmented: the folder holds the outputs, not the CT.
    #[arg(long, value_name = "CT.nii[.gz]")]
    ct: PathBuf,
}

/// Reads the case from its folder and the CT, writes the report into the folder.
pub fn report(args: &ReportArgs) -> Result<()> {
    let dir = &args.dir;
    ensure!(dir.is_dir(), "{}: no such folder", dir.display());
    // Before the CT, which may take seconds to read: a wrong folder fails at once.
    let summary = read_summary(dir)?;
    let ct = read_volume(&args.ct)?;
    let probability = read_volume(&dir.join(PROBABILITY_FILE))?;
    let mask = volume_to_mask(&read_volume(&dir.join(MASK_FILE))?, 0.5);
    let case = CaseVolumes { ct: &ct, probability: &probability, mask: &mask };
    let written = write(dir, &args.ct, &summary, &case)?;
    println!("wrote {}", written.join(", "));
    Ok(())
}

/// Writes the report of the case in `dir` (its `summary.json` read there, its volumes
/// given) into `dir`; returns the paths written. For `fracmap segment --report`, which holds
/// the volumes already.
pub fn write_report(dir: &Path, ct_path: &Path, ct: &Volume, probability: &Volume, mask: &Mask) -> Result<Vec<String>> {
    let summary = read_summary(dir)?;
    write(dir, ct_path, &summary, &CaseVolumes { ct, probability, mask })
}

fn write(dir: &Path, ct_path: &Path, summary: &CaseSummary, case: &CaseVolumes) -> Result<Vec<String>> {
    let ct_name = ct_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    ensure!(
        case.ct.shape() == summary.grid.shape,
        "{}: shape {:?} ([z, y, x]), but the case in {} was segmented on {:?}: is it this case's CT?",
        ct_path.display(),
        case.ct.shape(),
        dir.display(),
        summary.grid.shape
    );
    case.check_grids()?;

    let mut pictured = Vec::new();
    for index in summary.pictured() {
        let vertebra = &summary.vertebrae[index];
        let name = vertebra.name(index);
        let figures = vertebra
            .boxes(case.ct.shape())
            .and_then(|(region, body)| figures::vertebra_figures(case, &region, &body, summary.threshold))
            .with_context(|| format!("vertebra {name}"))?;
        pictured.push((index, figures));
    }

    let mut written = Vec::new();
    let scene = match summary.scene_box(case.ct.shape()) {
        Some(around) => {
            let scene = figures::case_scene(case, &around)?;
            let path = dir.join(SCENE_FILE);
            scene.write_glb(&path).with_context(|| format!("{}: cannot write", path.display()))?;
            written.push(path.display().to_string());
            Some(figures::scene_views(&scene)?)
        }
        None => None,
    };

    let page = html::page(&html::Page { ct_name: &ct_name, summary, pictured: &pictured, scene: scene.as_ref() });
    let path = dir.join(REPORT_FILE);
    fracmap_core::fsutil::write_atomic(&path, page.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    written.push(path.display().to_string());
    Ok(written)
}
