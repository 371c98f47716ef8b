//! Heat maps of a fold's test vertebrae: what `weak` and the box-vs-slice experiment draw so
//! that a reader sees where each model put the fracture.

use anyhow::Result;
use fracmap_core::geometry::bounding_box;
use fracmap_core::heatmap::{HeatmapOptions, WeakLabel, heatmap_plane};
use fracmap_core::picture::{DisplayWindow, Plane, RgbImage, draw_text, tiled};
use ndarray::Array3;

use super::data::Sample;
use crate::manifest::Status;
use crate::vae::eval::{centroid, upscale};

/// A panel's width in pixels, about: small crops are upscaled by whole factors to it.
const PANEL_SIZE: usize = 160;

/// Rows: up to `count` fractured test vertebrae with a true mask; columns: the CT, then each
/// map over it (`maps[m][i]` is map `m` of vertebra `i`, titled `titles[m]`, drawn from
/// `thresholds[m]` up), sagittal through the fracture's centre. The truth is outlined in red,
/// the fracture box in cyan. `None` when there is no such vertebra.
pub fn heatmap_sheet(
    test: &[Sample],
    maps: &[&[Array3<f32>]],
    titles: &[&str],
    thresholds: &[f32],
    count: usize,
) -> Result<Option<RgbImage>> {
    anyhow::ensure!(maps.len() == titles.len() && maps.len() == thresholds.len(), "one title and threshold a map");
    let chosen: Vec<usize> = (0..test.len())
        .filter(|&i| test[i].truth.as_ref().is_some_and(|t| t.iter().any(|v| *v)))
        .filter(|&i| test[i].entry.status == Status::Fractured)
        .take(count)
        .collect();
    if chosen.is_empty() {
        return Ok(None);
    }
    let mut panels = Vec::new();
    for &i in &chosen {
        let sample = &test[i];
        let truth = sample.truth.as_ref().expect("chosen for its truth");
        let point = centroid(truth);
        let weak_label = bounding_box(&sample.box_in).map(WeakLabel::Box);
        for column in 0..=maps.len() {
            let (prob, threshold, title) = match column {
                0 => (None, 0.5, "CT"),
                m => (Some(sample.ct.with_data(maps[m - 1][i].clone())?), thresholds[m - 1], titles[m - 1]),
            };
            let options = HeatmapOptions {
                threshold,
                window: DisplayWindow { low: 0.0, high: 1.0 },
                truth: Some(truth),
                weak_label,
                ..HeatmapOptions::default()
            };
            let panel = heatmap_plane(&sample.ct, prob.as_ref(), Plane::Sagittal, point[2], &options)?;
            let mut panel = upscale(&panel, (PANEL_SIZE / panel.width.max(1)).max(1));
            draw_text(&mut panel, 3, 3, title, 2, [255, 255, 0]);
            panels.push(panel);
        }
    }
    Ok(Some(tiled(&panels, maps.len() + 1, 4)))
}
