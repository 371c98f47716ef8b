//! `fracmap-train show`: a case at a glance, the axial, coronal and sagittal planes through
//! the centre of its first fracture box (else of its mask, else of the volume) with the true
//! fracture mask outlined.

use std::path::Path;

use anyhow::{Context, Result};
use fracmap_core::geometry::bounding_box;
use fracmap_core::nifti_io::read_volume;
use fracmap_core::picture::{DisplayWindow, Plane, RgbImage, draw_outline, side_by_side, volume_plane};
use fracmap_core::preprocess::volume_to_mask;

use crate::manifest::{Case, Manifest};

const MASK_COLOUR: [u8; 3] = [255, 40, 40];

/// The three planes side by side through the centre of the case's fracture mask (if any).
pub fn case_overview(manifest_path: &Path, case: &Case) -> Result<RgbImage> {
    let ct_path = Manifest::resolve(manifest_path, &case.ct);
    let ct = read_volume(&ct_path).with_context(|| format!("case {}", case.id))?;
    let mask = match &case.fracture_mask {
        Some(rel) => {
            let path = Manifest::resolve(manifest_path, rel);
            let mask = read_volume(&path).with_context(|| format!("case {}", case.id))?;
            anyhow::ensure!(
                mask.shape() == ct.shape(),
                "case {}: fracture mask {} has shape {:?}, CT has {:?}",
                case.id,
                path.display(),
                mask.shape(),
                ct.shape()
            );
            Some(volume_to_mask(&mask, 0.5))
        }
        None => None,
    };
    // Through the first fracture box; else the mask's centre; else the volume's.
    let first_box = case.vertebrae.iter().flat_map(|v| &v.fracture_boxes).next().map(|b| b.to_box3()).transpose()?;
    let centre = first_box
        .or_else(|| mask.as_ref().and_then(bounding_box))
        .map(|b| std::array::from_fn(|a| (b.min()[a] + b.max()[a]) / 2))
        .unwrap_or_else(|| ct.shape().map(|n| n / 2));
    let planes = [Plane::Axial, Plane::Coronal, Plane::Sagittal].map(|plane| {
        let index = centre[plane.fixed_axis()];
        let mut image = volume_plane(&ct, plane, index, DisplayWindow::BONE);
        if let Some(mask) = &mask {
            draw_outline(&mut image, &ct, mask.view(), plane, index, MASK_COLOUR);
        }
        image
    });
    Ok(side_by_side(&planes, 4))
}
