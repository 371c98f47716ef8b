//! The files of one segmentation in `--out`: the volumes as NIfTI on the CT's grid (so they
//! overlay it in any viewer), heat maps of the most suspicious vertebrae and of the whole
//! spine, and `summary.json`. Each file is written whole under a temporary name and renamed;
//! when one fails, those written before it are removed, so no folder holds half a result.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};
use fracmap_core::fsutil::write_atomic;
use fracmap_core::heatmap::{HeatmapOptions, heatmap_plane, heatmap_planes, legend};
use fracmap_core::nifti_io::{NiftiDtype, write_mask, write_volume};
use fracmap_core::picture::{Plane, RgbImage, draw_text, side_by_side, write_png};
use fracmap_core::{Grid, Volume};
use fracmap_proto::{ModelRef, SegmentSummary, VertebraResult, VoxelBox};
use serde_json::{Value, json};

use crate::assembly::Outputs;
use crate::info::provider_name;

pub const PROBABILITY_FILE: &str = "probability.nii.gz";
pub const MASK_FILE: &str = "mask.nii.gz";
pub const ERROR_MAP_FILE: &str = "error_map.nii.gz";
pub const SUMMARY_FILE: &str = "summary.json";
pub const OVERVIEW_FILE: &str = "overlay_overview.png";
/// Vertebrae pictured when none reaches the threshold: the highest scores.
const TOP_VERTEBRAE: usize = 3;
const TITLE_COLOUR: [u8; 3] = [255, 255, 255];

/// Writes every output file into `dir` (which exists); returns their names, in the order
/// written, `summary.json` last.
pub fn write_outputs(dir: &Path, summary: &SegmentSummary, outputs: &Outputs, ct: &Volume) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let result = write_each(dir, summary, outputs, ct, &mut written);
    if result.is_err() {
        for name in &written {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    result.map(|()| written)
}

fn write_each(
    dir: &Path,
    summary: &SegmentSummary,
    outputs: &Outputs,
    ct: &Volume,
    written: &mut Vec<String>,
) -> Result<()> {
    write_volume(&dir.join(PROBABILITY_FILE), &outputs.probability, NiftiDtype::F32)?;
    written.push(PROBABILITY_FILE.to_string());
    write_mask(&dir.join(MASK_FILE), &outputs.mask, &outputs.grid)?;
    written.push(MASK_FILE.to_string());
    if let Some(error_map) = &outputs.error_map {
        write_volume(&dir.join(ERROR_MAP_FILE), error_map, NiftiDtype::F32)?;
        written.push(ERROR_MAP_FILE.to_string());
    }
    for (name, picture) in pictures(summary, outputs, ct)? {
        let path = dir.join(&name);
        write_png(&path, &picture).with_context(|| format!("{}: cannot write", path.display()))?;
        written.push(name);
    }
    let path = dir.join(SUMMARY_FILE);
    let json = serde_json::to_string_pretty(&summary_json(summary, &outputs.grid, written))?;
    write_atomic(&path, json.as_bytes()).with_context(|| format!("{}: cannot write", path.display()))?;
    written.push(SUMMARY_FILE.to_string());
    Ok(())
}

/// A vertebra as people read it: its label, or its index in the request (`#0`), as the
/// server's messages name it.
pub fn display_name(label: &str, index: usize) -> String {
    if label.is_empty() { format!("#{index}") } else { label.to_string() }
}

/// The vertebrae worth a picture, by index: those at or above the threshold, or the
/// [`TOP_VERTEBRAE`] highest scores when none is.
fn pictured_vertebrae(vertebrae: &[VertebraResult], threshold: f32) -> Vec<usize> {
    let above: Vec<usize> = (0..vertebrae.len()).filter(|&i| vertebrae[i].fracture_score >= threshold).collect();
    if !above.is_empty() {
        return above;
    }
    let mut by_score: Vec<usize> = (0..vertebrae.len()).collect();
    by_score.sort_by(|&a, &b| vertebrae[b].fracture_score.total_cmp(&vertebrae[a].fracture_score));
    by_score.truncate(TOP_VERTEBRAE);
    by_score
}

/// `overlay_<label>.png` for each pictured vertebra (three planes through the centre of its
/// region, the mask outlined), then [`OVERVIEW_FILE`] (the mid-sagittal plane of the CT).
fn pictures(summary: &SegmentSummary, outputs: &Outputs, ct: &Volume) -> Result<Vec<(String, RgbImage)>> {
    let options = HeatmapOptions { threshold: summary.threshold, draft: Some(&outputs.mask), ..Default::default() };
    let mut names = HashSet::new();
    let mut pictures = Vec::new();
    for index in pictured_vertebrae(&summary.vertebrae, summary.threshold) {
        let vertebra = &summary.vertebrae[index];
        let name = display_name(&vertebra.label, index);
        let region = vertebra.region.as_ref().or(vertebra.body_box.as_ref());
        let point = region.and_then(centre).with_context(|| format!("vertebra {name}: no region"))?;
        let mut picture = heatmap_planes(ct, &outputs.probability, &HeatmapOptions { point: Some(point), ..options })
            .with_context(|| format!("vertebra {name}"))?;
        let title = format!("{name} {:.2}", vertebra.fracture_score);
        let scale = (picture.height / 160).max(1);
        draw_text(&mut picture, 2, 2, &title, scale, TITLE_COLOUR);
        let mut stem: String = if vertebra.label.is_empty() {
            format!("vertebra{index}")
        } else {
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
        };
        if !names.insert(stem.clone()) {
            stem = format!("{stem}_{index}");
            names.insert(stem.clone());
        }
        pictures.push((format!("overlay_{stem}.png"), picture));
    }
    let mid_sagittal = heatmap_plane(ct, Some(&outputs.probability), Plane::Sagittal, ct.shape()[2] / 2, &options)?;
    let key = legend(mid_sagittal.height, summary.threshold);
    pictures.push((OVERVIEW_FILE.to_string(), side_by_side(&[mid_sagittal, key], 4)));
    Ok(pictures)
}

/// The middle voxel `[z, y, x]` of a box.
fn centre(voxel_box: &VoxelBox) -> Option<[usize; 3]> {
    let (min, max) = (voxel_box.min.as_slice(), voxel_box.max.as_slice());
    (min.len() == 3 && max.len() == 3).then(|| std::array::from_fn(|a| ((min[a] + max[a]) / 2) as usize))
}

/// An f32 as the f64 of its shortest decimal: 0.42, not 0.41999998688697815.
fn decimal(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

fn summary_json(summary: &SegmentSummary, grid: &Grid, files: &[String]) -> Value {
    let model = |model: &Option<ModelRef>| model.as_ref().map(|m| json!({ "name": m.name, "version": m.version }));
    let voxel_box = |b: &Option<VoxelBox>| b.as_ref().map(|b| json!({ "min": b.min, "max": b.max }));
    let vertebrae: Vec<Value> = summary
        .vertebrae
        .iter()
        .map(|v| {
            json!({
                "label": v.label,
                "body_box": voxel_box(&v.body_box),
                "region": voxel_box(&v.region),
                "fracture_score": decimal(v.fracture_score),
                "mask_voxels": v.mask_voxels,
                "mask_volume_mm3": v.mask_volume_mm3,
                "confidence": v.confidence,
                "oversize": v.oversize,
            })
        })
        .collect();
    let timings = summary.timings.as_ref().map(|t| {
        json!({
            "receive": t.receive_ms, "decode": t.decode_ms, "queue": t.queue_ms, "crop": t.crop_ms,
            "vae": t.vae_ms, "unet": t.unet_ms, "paste": t.paste_ms, "mask": t.mask_ms, "total": t.total_ms,
        })
    });
    json!({
        "request_id": summary.request_id,
        "model": model(&summary.model),
        "vae": model(&summary.vae),
        "execution_provider": provider_name(summary.execution_provider()),
        "threshold": decimal(summary.threshold),
        "mask_voxels": summary.mask_voxels,
        "mask_volume_mm3": summary.mask_volume_mm3,
        "confidence": summary.confidence,
        "vertebrae": vertebrae,
        "grid": { "shape": grid.shape, "spacing_mm": grid.spacing, "affine": grid.affine },
        "timings_ms": timings,
        "files": files,
    })
}

#[cfg(test)]
mod tests {
    use fracmap_core::nifti_io::read_volume;
    use fracmap_core::volume::affine_spacing;
    use fracmap_proto::{ExecutionProvider, StageTimings};
    use ndarray::Array3;

    use super::*;
    use crate::assembly::tests::SHAPE;

    fn vertebra(label: &str, score: f32, region: ([u64; 3], [u64; 3])) -> VertebraResult {
        let region = Some(VoxelBox { min: region.0.to_vec(), max: region.1.to_vec() });
        VertebraResult { label: label.to_string(), fracture_score: score, region, ..VertebraResult::default() }
    }

    /// Two vertebrae on a 2 x 3 x 4 grid with a rotated affine.
    fn segmentation() -> (SegmentSummary, Outputs, Volume) {
        let grid = Grid {
            shape: SHAPE,
            spacing: [3.0, 2.0, 1.0],
            affine: [[0.0, -2.0, 0.0, 10.0], [1.0, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]],
        };
        assert_eq!(affine_spacing(&grid.affine), grid.spacing);
        let on_grid = |f: fn(usize, usize, usize) -> f32| {
            Volume::new(Array3::from_shape_fn(SHAPE, |(z, y, x)| f(z, y, x)), grid.spacing, grid.affine).unwrap()
        };
        let probability = on_grid(|z, y, x| (z * 12 + y * 4 + x) as f32 / 23.0);
        let mask = probability.data().mapv(|p| p >= 0.5);
        let error_map = Some(on_grid(|_, y, _| y as f32 / 2.0));
        let ct = on_grid(|z, _, _| 100.0 * z as f32);
        let summary = SegmentSummary {
            request_id: "r-1".to_string(),
            model: Some(ModelRef { name: "unet".to_string(), version: 2 }),
            execution_provider: ExecutionProvider::Cpu.into(),
            threshold: 0.5,
            mask_voxels: 12,
            vertebrae: vec![vertebra("L1", 0.9, ([0, 0, 0], [2, 3, 2])), vertebra("", 0.2, ([0, 0, 2], [2, 3, 4]))],
            timings: Some(StageTimings { total_ms: 12.5, ..StageTimings::default() }),
            ..SegmentSummary::default()
        };
        (summary, Outputs { grid, probability, mask, error_map }, ct)
    }

    #[test]
    fn volumes_read_back_on_the_grid_they_were_given() {
        let dir = tempfile::tempdir().unwrap();
        let (summary, outputs, ct) = segmentation();
        let written = write_outputs(dir.path(), &summary, &outputs, &ct).unwrap();
        assert_eq!(
            written,
            [PROBABILITY_FILE, MASK_FILE, ERROR_MAP_FILE, "overlay_L1.png", OVERVIEW_FILE, SUMMARY_FILE]
        );
        let probability = read_volume(&dir.path().join(PROBABILITY_FILE)).unwrap();
        assert_eq!(probability.grid(), outputs.grid);
        assert_eq!(probability.data(), outputs.probability.data());
        let mask = read_volume(&dir.path().join(MASK_FILE)).unwrap();
        assert_eq!(mask.grid(), outputs.grid);
        assert_eq!(mask.data().mapv(|m| m == 1.0), outputs.mask);
        assert!(mask.data().iter().all(|&m| m == 0.0 || m == 1.0));
        let error_map = read_volume(&dir.path().join(ERROR_MAP_FILE)).unwrap();
        assert_eq!(error_map.data(), outputs.error_map.as_ref().unwrap().data());
        // Only what was listed: no temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), written.len());
    }

    #[test]
    fn the_summary_file_holds_the_table_and_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let (summary, outputs, ct) = segmentation();
        write_outputs(dir.path(), &summary, &outputs, &ct).unwrap();
        let json: Value = serde_json::from_slice(&std::fs::read(dir.path().join(SUMMARY_FILE)).unwrap()).unwrap();
        assert_eq!(json["request_id"], "r-1");
        assert_eq!(json["model"], json!({ "name": "unet", "version": 2 }));
        assert_eq!(json["execution_provider"], "cpu");
        assert_eq!(json["vertebrae"][0]["label"], "L1");
        assert_eq!(json["vertebrae"][0]["fracture_score"], 0.9, "an f32 written as its decimal");
        assert_eq!(json["vertebrae"][1]["region"]["max"], json!([2, 3, 4]));
        assert_eq!(json["timings_ms"]["total"], 12.5);
        assert_eq!(json["grid"]["shape"], json!(SHAPE));
        assert_eq!(json["files"][0], PROBABILITY_FILE);
        assert_eq!(json["files"].as_array().unwrap().len(), 5, "all but summary.json itself");
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (mut summary, outputs, ct) = segmentation();
        // A region with two axes: its picture fails after the volumes were written.
        summary.vertebrae[0].region = Some(VoxelBox { min: vec![0, 0], max: vec![1, 1] });
        let error = write_outputs(dir.path(), &summary, &outputs, &ct).unwrap_err();
        assert_eq!(error.to_string(), "vertebra L1: no region");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn vertebrae_above_the_threshold_are_pictured_else_the_three_highest() {
        let region = ([0, 0, 0], [1, 1, 1]);
        let scores =
            |scores: &[f32]| -> Vec<VertebraResult> { scores.iter().map(|&s| vertebra("", s, region)).collect() };
        assert_eq!(pictured_vertebrae(&scores(&[0.1, 0.7, 0.5, 0.2]), 0.5), [1, 2]);
        assert_eq!(pictured_vertebrae(&scores(&[0.1, 0.4, 0.3, 0.2, 0.35]), 0.5), [1, 4, 2]);
        assert!(pictured_vertebrae(&[], 0.5).is_empty());
    }

    #[test]
    fn unlabelled_and_repeated_labels_get_files_of_their_own() {
        let (mut summary, outputs, ct) = segmentation();
        summary.vertebrae = vec![
            vertebra("T12/L1", 0.9, ([0, 0, 0], [2, 3, 2])),
            vertebra("T12/L1", 0.9, ([0, 0, 2], [2, 3, 4])),
            vertebra("", 0.9, ([0, 0, 2], [2, 3, 4])),
        ];
        let names: Vec<String> = pictures(&summary, &outputs, &ct).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["overlay_T12_L1.png", "overlay_T12_L1_1.png", "overlay_vertebra2.png", OVERVIEW_FILE]);
    }
}
