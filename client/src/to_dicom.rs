//! `fracmap to-dicom`: a NIfTI CT written as a DICOM CT series, one file a slice, with new
//! UIDs and a made-up patient: DICOM input for trying `fracmap segment` (or a PACS, or a
//! viewer) on a phantom, since no one else has made DICOM for it.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use clap::Args;
use fracmap_core::nifti_io::read_volume;
use fracmap_dicom::ct_writer::{SeriesIdentity, write_ct_series};

/// The lowest HU the series holds.
const AIR_FLOOR_HU: f32 = -1024.0;

#[derive(Args)]
pub struct ToDicomArgs {
    /// The CT in HU: a NIfTI-1 file (.nii, .nii.gz); its affine must have no shear.
    #[arg(value_name = "CT.nii[.gz]")]
    ct: PathBuf,
    /// The folder for the series (created; it must hold no .dcm file yet).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn to_dicom(args: &ToDicomArgs) -> Result<()> {
    let volume = read_volume(&args.ct)?;
    // Stored as 16 bits above -1024 HU, as scanners store CT: lower values (noise in air) are
    // raised to -1024, as a scanner clips them.
    let below = volume.data().iter().filter(|&&hu| hu < AIR_FLOOR_HU).count();
    let volume = if below > 0 {
        eprintln!(
            "note: {below} voxels below {AIR_FLOOR_HU} HU raised to {AIR_FLOOR_HU} HU (the series stores 16 bits above it)"
        );
        let clipped = volume.data().mapv(|hu| hu.max(AIR_FLOOR_HU));
        volume.with_data(clipped)?
    } else {
        volume
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}: cannot create", args.out.display()))?;
    let holds_dicom = std::fs::read_dir(&args.out)
        .with_context(|| format!("--out {}: cannot read", args.out.display()))?
        .filter_map(|entry| entry.ok())
        .any(|entry| entry.path().extension().is_some_and(|e| e == "dcm"));
    ensure!(!holds_dicom, "--out {}: already holds .dcm files; give an empty folder", args.out.display());
    let identity = SeriesIdentity::phantom();
    let files = write_ct_series(&args.out, &volume, &identity)?;
    let [_, rows, columns] = volume.shape();
    println!(
        "wrote {} DICOM CT files ({columns} x {rows} pixels) to {}: series {}",
        files.len(),
        args.out.display(),
        identity.series_instance_uid
    );
    Ok(())
}
