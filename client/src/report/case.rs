//! `summary.json` as the report reads it (what [`crate::outputs`] writes), the vertebrae in
//! spine order, and which of them the report pictures.

use std::path::Path;

use anyhow::{Context, Result, bail};
use fracmap_core::Box3;
use serde::Deserialize;

use crate::outputs::{SUMMARY_FILE, display_name};

/// Vertebrae pictured when none is flagged: the highest scores.
const TOP_VERTEBRAE: usize = 3;
/// Vertebrae pictured at most when many are flagged (a model gone wrong flags them all),
/// so that the page stays a few MB: the highest scores among them.
const MAX_PICTURED: usize = 6;
/// Context around the vertebrae in the 3D scene, mm.
const SCENE_MARGIN_MM: f64 = 10.0;

#[derive(Debug, Deserialize)]
pub struct CaseSummary {
    #[serde(default)]
    pub request_id: String,
    pub model: Option<ModelName>,
    pub vae: Option<ModelName>,
    pub execution_provider: String,
    /// The draft mask's threshold, which also flags a vertebra.
    pub threshold: f32,
    pub mask_voxels: u64,
    pub mask_volume_mm3: f64,
    pub confidence: f64,
    /// In the request's order.
    pub vertebrae: Vec<VertebraSummary>,
    pub grid: GridSummary,
    pub timings_ms: Option<Timings>,
}

#[derive(Debug, Deserialize)]
pub struct ModelName {
    pub name: String,
    pub version: u64,
}

#[derive(Debug, Deserialize)]
pub struct VertebraSummary {
    pub label: String,
    pub body_box: Option<VoxelBox>,
    /// The CT voxels the model saw: the body box plus a margin.
    pub region: Option<VoxelBox>,
    pub fracture_score: f32,
    pub mask_volume_mm3: f64,
    pub confidence: f64,
    #[serde(default)]
    pub oversize: bool,
}

/// CT voxels `[z, y, x]`, half-open.
#[derive(Debug, Deserialize)]
pub struct VoxelBox {
    pub min: Vec<usize>,
    pub max: Vec<usize>,
}

#[derive(Debug, Deserialize)]
pub struct GridSummary {
    /// `[z, y, x]`.
    pub shape: [usize; 3],
    /// `[z, y, x]`, mm.
    pub spacing_mm: [f64; 3],
}

/// Wall time of the server's stages, ms.
#[derive(Debug, Deserialize)]
pub struct Timings {
    pub receive: f64,
    pub decode: f64,
    pub queue: f64,
    pub crop: f64,
    pub vae: f64,
    pub unet: f64,
    pub paste: f64,
    pub mask: f64,
    pub total: f64,
}

impl Timings {
    /// The stages in the order they run, the total last.
    pub fn stages(&self) -> [(&'static str, f64); 9] {
        [
            ("receive", self.receive),
            ("decode", self.decode),
            ("queue", self.queue),
            ("crop", self.crop),
            ("VAE", self.vae),
            ("U-Net", self.unet),
            ("paste", self.paste),
            ("mask", self.mask),
            ("total", self.total),
        ]
    }
}

/// Reads `dir/summary.json`.
pub fn read_summary(dir: &Path) -> Result<CaseSummary> {
    let path = dir.join(SUMMARY_FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!("{}: cannot read (is {} a folder `fracmap segment` wrote?)", path.display(), dir.display())
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not a summary `fracmap segment` wrote", path.display()))
}

impl CaseSummary {
    /// Indices of the vertebrae from the skull down (see [`spine_position`]); labels that
    /// name no level last, in the request's order.
    pub fn spine_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.vertebrae.len()).collect();
        order.sort_by_key(|&i| spine_position(&self.vertebrae[i].label).map_or((1, 0, 0), |(r, n)| (0, r, n)));
        order
    }

    pub fn flagged(&self, index: usize) -> bool {
        self.vertebrae[index].fracture_score >= self.threshold
    }

    /// The vertebrae worth a picture, in spine order: the flagged ones (at most
    /// [`MAX_PICTURED`], the highest scores), or the [`TOP_VERTEBRAE`] highest scores when
    /// none is flagged.
    pub fn pictured(&self) -> Vec<usize> {
        let mut by_score: Vec<usize> = (0..self.vertebrae.len()).collect();
        by_score.sort_by(|&a, &b| self.vertebrae[b].fracture_score.total_cmp(&self.vertebrae[a].fracture_score));
        let flagged = by_score.iter().take_while(|&&i| self.flagged(i)).count();
        by_score.truncate(if flagged > 0 { flagged.min(MAX_PICTURED) } else { TOP_VERTEBRAE });
        self.spine_order().into_iter().filter(|i| by_score.contains(i)).collect()
    }

    /// Every vertebra's region, their bounding box grown by [`SCENE_MARGIN_MM`], in a CT of
    /// `shape`: what the 3D scene shows. `None` without a vertebra that has a region.
    pub fn scene_box(&self, shape: [usize; 3]) -> Option<Box3> {
        let regions = self.vertebrae.iter().filter_map(|v| v.region.as_ref()?.in_ct(shape).ok());
        let around = regions.reduce(|a, b| {
            Box3::new(
                std::array::from_fn(|k| a.min()[k].min(b.min()[k])),
                std::array::from_fn(|k| a.max()[k].max(b.max()[k])),
            )
            .expect("the hull of two boxes is not empty")
        })?;
        let margin = self.grid.spacing_mm.map(|s| (SCENE_MARGIN_MM / s).ceil() as usize);
        around.expand(margin, shape).ok()
    }
}

impl VertebraSummary {
    /// Its label, or its index in the request (`#0`) as the server names it.
    pub fn name(&self, index: usize) -> String {
        display_name(&self.label, index)
    }

    /// Its region and body box in a CT of `shape` (the region when there is no body box).
    pub fn boxes(&self, shape: [usize; 3]) -> Result<(Box3, Box3)> {
        let Some(region) = &self.region else { bail!("no region in {SUMMARY_FILE}") };
        let region = region.in_ct(shape).context("its region")?;
        let body = match &self.body_box {
            Some(body) => body.in_ct(shape).context("its body box")?,
            None => region,
        };
        Ok((region, body))
    }
}

impl VoxelBox {
    /// The box, which must have three axes and lie inside a CT of `shape`.
    fn in_ct(&self, shape: [usize; 3]) -> Result<Box3> {
        let (Ok(min), Ok(max)) =
            (<[usize; 3]>::try_from(self.min.as_slice()), <[usize; 3]>::try_from(self.max.as_slice()))
        else {
            bail!("{:?}..{:?} is not a box of three axes", self.min, self.max);
        };
        let voxel_box = Box3::new(min, max)?;
        voxel_box.check_inside(shape)?;
        Ok(voxel_box)
    }
}

/// Where a level sits from the skull down, as (region, number): C1-C7, T1-T13, L1-L6, S1-S5
/// and Co (T and L go to 13 and 6 for the transitional vertebrae VerSe labels); `None` for
/// a label that names no level.
fn spine_position(label: &str) -> Option<(u8, u32)> {
    let (region, number) = label.split_at(label.find(|c: char| c.is_ascii_digit())?);
    let rank = match region.to_ascii_uppercase().as_str() {
        "C" => 0,
        "T" | "TH" => 1,
        "L" => 2,
        "S" => 3,
        "CO" => 4,
        _ => return None,
    };
    Some((rank, number.parse().ok()?))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A case whose vertebrae have these labels and scores, each with a region.
    pub fn case(vertebrae: &[(&str, f32)], threshold: f32) -> CaseSummary {
        let vertebrae = vertebrae
            .iter()
            .map(|&(label, fracture_score)| VertebraSummary {
                label: label.to_string(),
                body_box: None,
                region: Some(VoxelBox { min: vec![0, 0, 0], max: vec![2, 2, 2] }),
                fracture_score,
                mask_volume_mm3: 0.0,
                confidence: 0.0,
                oversize: false,
            })
            .collect();
        CaseSummary {
            request_id: String::new(),
            model: None,
            vae: None,
            execution_provider: "cpu".to_string(),
            threshold,
            mask_voxels: 0,
            mask_volume_mm3: 0.0,
            confidence: 0.0,
            vertebrae,
            grid: GridSummary { shape: [4, 4, 4], spacing_mm: [1.0; 3] },
            timings_ms: None,
        }
    }

    #[test]
    fn vertebrae_run_from_the_skull_down_and_unknown_labels_come_last() {
        let labels = ["L1", "", "T12", "S1", "C7", "x", "L10", "T2"];
        let summary = case(&labels.map(|label| (label, 0.0)), 0.5);
        let order: Vec<&str> = summary.spine_order().iter().map(|&i| labels[i]).collect();
        assert_eq!(order, ["C7", "T2", "T12", "L1", "L10", "S1", "", "x"]);
    }

    #[test]
    fn flagged_vertebrae_are_pictured_else_the_three_highest() {
        let pictured = |scores: &[(&str, f32)]| case(scores, 0.5).pictured();
        assert_eq!(pictured(&[("L2", 0.7), ("L1", 0.1), ("T12", 0.5)]), [2, 0], "spine order, T12 first");
        assert_eq!(pictured(&[("L1", 0.1), ("L2", 0.4), ("L3", 0.3), ("L4", 0.2)]), [1, 2, 3]);
        let all_flagged: Vec<(&str, f32)> = (0..10).map(|i| ("", 0.5 + i as f32 / 100.0)).collect();
        assert_eq!(pictured(&all_flagged), [4, 5, 6, 7, 8, 9], "the six highest of ten flagged");
    }

    #[test]
    fn the_scene_covers_every_region_and_a_margin_inside_the_ct() {
        let mut summary = case(&[("L1", 0.0), ("L2", 0.0)], 0.5);
        summary.grid.spacing_mm = [5.0, 4.0, 2.5];
        summary.vertebrae[1].region = Some(VoxelBox { min: vec![10, 1, 1], max: vec![12, 3, 3] });
        let scene = summary.scene_box([40, 40, 40]).unwrap();
        assert_eq!(scene, Box3::new([0, 0, 0], [14, 6, 7]).unwrap(), "10 mm: 2, 3 and 4 voxels");
    }

    #[test]
    fn a_box_outside_the_ct_is_an_error_naming_it() {
        let summary = case(&[("L1", 0.0)], 0.5);
        let error = summary.vertebrae[0].boxes([4, 1, 4]).unwrap_err();
        assert_eq!(format!("{error:#}"), "its region: box y 0..2 outside volume height 1");
    }
}
