//! Probability maps over CT: a fracture probability volume on the CT's grid drawn as a
//! viridis heat map over the grey CT, with the true and draft masks outlined, the weak label
//! (box or slice range) marked, and a legend; three planes through a point, or every axial
//! slice as a contact sheet.
//!
//! Probabilities below the threshold are not drawn at all (the CT shows through unchanged);
//! above it the colour is blended over the CT with a fixed opacity, so the anatomy under a
//! hot spot stays readable.

use crate::colormap::viridis;
use crate::geometry::{Box3, Mask, SliceRange};
use crate::picture::{
    DisplayWindow, Plane, PlaneLayout, RgbImage, draw_outline, draw_rectangle, draw_text, fill_rectangle, side_by_side,
    text_size, tiled, volume_plane,
};
use crate::volume::Volume;

/// Outline of the true fracture mask: red, as `fracmap-train show` draws it.
pub const TRUTH_COLOUR: [u8; 3] = [255, 40, 40];
/// Outline of the draft (pseudo-label) mask: magenta, apart from red and from viridis.
pub const DRAFT_COLOUR: [u8; 3] = [255, 0, 255];
/// The weak label's box, lines and marker: cyan, brighter than viridis' teal.
pub const WEAK_LABEL_COLOUR: [u8; 3] = [0, 255, 255];
/// The legend's colour bar below the threshold, where nothing is drawn over the CT.
pub const NOT_SHOWN_COLOUR: [u8; 3] = [60, 60, 60];

/// Black between panels.
const PANEL_GAP: usize = 4;
/// Tick labels of the legend, with their probabilities.
const LEGEND_TICKS: [(f32, &str); 3] = [(0.0, "0"), (0.5, "0.5"), (1.0, "1")];
const LABEL_COLOUR: [u8; 3] = [255, 255, 255];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeatmapError {
    #[error("{what} has shape {shape:?}, the CT {ct_shape:?} ([z, y, x]): it must be on the CT's grid")]
    NotOnCtGrid { what: &'static str, shape: [usize; 3], ct_shape: [usize; 3] },
    #[error("point {point:?} ([z, y, x]) outside the CT of shape {shape:?}")]
    PointOutside { point: [usize; 3], shape: [usize; 3] },
    #[error("{plane:?} slice {index} outside the CT ({size} slices that way)")]
    SliceOutside { plane: Plane, index: usize, size: usize },
}

/// The weak label of a case, in voxel indices of the CT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeakLabel {
    /// A fracture box: drawn as a rectangle in every plane that cuts it.
    Box(Box3),
    /// An axial slice range: two lines (its first and last slice) in coronal and sagittal
    /// planes, a square marker in the top-right corner of axial planes inside it.
    Slices(SliceRange),
}

/// What to draw over the CT besides the probabilities, and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatmapOptions<'a> {
    /// Probabilities below this are not drawn; at or above, they are.
    pub threshold: f32,
    /// Weight of the heat-map colour over the CT where it is drawn, `0..=1`.
    pub opacity: f32,
    /// Grey levels of the CT.
    pub window: DisplayWindow,
    /// The voxel `[z, y, x]` the three planes of [`heatmap_planes`] pass through; `None`: the
    /// probability maximum (the first in C order among equals).
    pub point: Option<[usize; 3]>,
    /// The true fracture mask, outlined in [`TRUTH_COLOUR`].
    pub truth: Option<&'a Mask>,
    /// The draft mask, outlined in [`DRAFT_COLOUR`].
    pub draft: Option<&'a Mask>,
    pub weak_label: Option<WeakLabel>,
}

impl Default for HeatmapOptions<'_> {
    fn default() -> Self {
        HeatmapOptions {
            threshold: 0.5,
            opacity: 0.6,
            window: DisplayWindow::BONE,
            point: None,
            truth: None,
            draft: None,
            weak_label: None,
        }
    }
}

/// Axial, coronal and sagittal planes through `options.point` (default: the probability
/// maximum), side by side, with the legend on the right.
pub fn heatmap_planes(ct: &Volume, prob: &Volume, options: &HeatmapOptions<'_>) -> Result<RgbImage, HeatmapError> {
    check_grids(ct, Some(prob), options)?;
    let point = options.point.unwrap_or_else(|| probability_maximum(prob));
    let shape = ct.shape();
    if (0..3).any(|a| point[a] >= shape[a]) {
        return Err(HeatmapError::PointOutside { point, shape });
    }
    let mut panels = [Plane::Axial, Plane::Coronal, Plane::Sagittal]
        .map(|plane| overlay(ct, Some(prob), plane, point[plane.fixed_axis()], options))
        .to_vec();
    let height = panels.iter().map(|p| p.height).max().unwrap_or(0);
    panels.push(legend(height, options.threshold));
    Ok(side_by_side(&panels, PANEL_GAP))
}

/// One plane of the CT with the probabilities (if any), outlines and weak label of `options`
/// drawn over it; `options.point` plays no part.
pub fn heatmap_plane(
    ct: &Volume,
    prob: Option<&Volume>,
    plane: Plane,
    index: usize,
    options: &HeatmapOptions<'_>,
) -> Result<RgbImage, HeatmapError> {
    check_grids(ct, prob, options)?;
    let size = ct.shape()[plane.fixed_axis()];
    if index >= size {
        return Err(HeatmapError::SliceOutside { plane, index, size });
    }
    Ok(overlay(ct, prob, plane, index, options))
}

/// Every axial slice of `ct` (a vertebra crop, say) in a grid of `columns`, lowest z first,
/// each numbered with its z index in the top-left corner and drawn as [`heatmap_plane`]
/// draws it; with a legend on the right when there are probabilities.
pub fn contact_sheet(
    ct: &Volume,
    prob: Option<&Volume>,
    options: &HeatmapOptions<'_>,
    columns: usize,
) -> Result<RgbImage, HeatmapError> {
    check_grids(ct, prob, options)?;
    let tiles: Vec<RgbImage> = (0..ct.shape()[0])
        .map(|z| {
            let mut tile = overlay(ct, prob, Plane::Axial, z, options);
            draw_text(&mut tile, 1, 1, &z.to_string(), 1, LABEL_COLOUR);
            tile
        })
        .collect();
    let sheet = tiled(&tiles, columns, PANEL_GAP);
    Ok(match prob {
        Some(_) => {
            let legend = legend(sheet.height, options.threshold);
            side_by_side(&[sheet, legend], PANEL_GAP)
        }
        None => sheet,
    })
}

/// A colour bar, probability 1 at the top and 0 at the bottom, viridis from the threshold up
/// and [`NOT_SHOWN_COLOUR`] below it, with ticks and labels at 0, 0.5 and 1. At least 40
/// pixels high; the font grows with the height.
pub fn legend(height: usize, threshold: f32) -> RgbImage {
    let height = height.max(40);
    let scale = (height / 160).max(1);
    let (text_h, text_w) = text_size("0.5", scale);
    let margin = text_h;
    let bar = scale..scale + 6 * scale;
    let tick = bar.end..bar.end + 2 * scale;
    let label_left = tick.end + scale;
    let mut image = RgbImage::filled(label_left + text_w + scale, height, [0, 0, 0]);
    let (top, bottom) = (margin, height - 1 - margin);
    for row in top..=bottom {
        let p = legend_probability(row, top, bottom);
        let colour = if p >= threshold { viridis(p) } else { NOT_SHOWN_COLOUR };
        fill_rectangle(&mut image, row..row + 1, bar.clone(), colour);
    }
    for (p, label) in LEGEND_TICKS {
        let row = bottom - (p * (bottom - top) as f32).round() as usize;
        fill_rectangle(&mut image, row..row + scale, tick.clone(), LABEL_COLOUR);
        draw_text(&mut image, row - text_h / 2, label_left, label, scale, LABEL_COLOUR);
    }
    image
}

/// The probability the legend's bar shows at `row`, 1 at `top` and 0 at `bottom`.
fn legend_probability(row: usize, top: usize, bottom: usize) -> f32 {
    (bottom - row) as f32 / (bottom - top) as f32
}

fn check_grids(ct: &Volume, prob: Option<&Volume>, options: &HeatmapOptions<'_>) -> Result<(), HeatmapError> {
    let ct_shape = ct.shape();
    let shapes = [
        ("probability map", prob.map(Volume::shape)),
        ("true mask", options.truth.map(mask_shape)),
        ("draft mask", options.draft.map(mask_shape)),
    ];
    match shapes.into_iter().find(|(_, shape)| shape.is_some_and(|s| s != ct_shape)) {
        Some((what, Some(shape))) => Err(HeatmapError::NotOnCtGrid { what, shape, ct_shape }),
        _ => Ok(()),
    }
}

fn mask_shape(mask: &Mask) -> [usize; 3] {
    let s = mask.shape();
    [s[0], s[1], s[2]]
}

/// The voxel `[z, y, x]` of the largest probability, the first in C order among equals;
/// NaN never wins.
fn probability_maximum(prob: &Volume) -> [usize; 3] {
    let mut best = ([0, 0, 0], f32::NEG_INFINITY);
    for ((z, y, x), &p) in prob.data().indexed_iter() {
        if p > best.1 {
            best = ([z, y, x], p);
        }
    }
    best.0
}

/// The plane with everything of `options` drawn over it; grids already checked.
fn overlay(ct: &Volume, prob: Option<&Volume>, plane: Plane, index: usize, options: &HeatmapOptions<'_>) -> RgbImage {
    let layout = PlaneLayout::new(&ct.grid(), plane, index);
    let mut image = volume_plane(ct, plane, index, options.window);
    if let Some(prob) = prob {
        let data = prob.data();
        for r in 0..layout.height {
            for c in 0..layout.width {
                let p = data[layout.voxel_at(r, c)];
                if p >= options.threshold {
                    image.blend(r, c, viridis(p), options.opacity);
                }
            }
        }
    }
    for (mask, colour) in [(options.truth, TRUTH_COLOUR), (options.draft, DRAFT_COLOUR)] {
        if let Some(mask) = mask {
            draw_outline(&mut image, ct, mask.view(), plane, index, colour);
        }
    }
    if let Some(label) = options.weak_label {
        draw_weak_label(&mut image, &layout, label);
    }
    image
}

fn draw_weak_label(image: &mut RgbImage, layout: &PlaneLayout, label: WeakLabel) {
    let (row_axis, col_axis) = layout.plane.picture_axes();
    match label {
        WeakLabel::Box(fracture_box) => {
            let ranges = fracture_box.ranges();
            if ranges[layout.plane.fixed_axis()].contains(&layout.index) {
                let rows = layout.pixel_rows(ranges[row_axis].clone());
                let cols = layout.pixel_cols(ranges[col_axis].clone());
                draw_rectangle(image, rows, cols, WEAK_LABEL_COLOUR);
            }
        }
        WeakLabel::Slices(slices) if layout.plane == Plane::Axial => {
            if slices.contains(layout.index) {
                let side = (layout.height.min(layout.width) / 8).max(2);
                let width = layout.width;
                fill_rectangle(image, 0..side, width.saturating_sub(side)..width, WEAK_LABEL_COLOUR);
            }
        }
        WeakLabel::Slices(slices) => {
            let rows = layout.pixel_rows(slices.start()..slices.end());
            if !rows.is_empty() {
                let all = 0..layout.width;
                fill_rectangle(image, rows.start..rows.start + 1, all.clone(), WEAK_LABEL_COLOUR);
                fill_rectangle(image, rows.end - 1..rows.end, all, WEAK_LABEL_COLOUR);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, s};

    /// A CT of constant `hu` and a probability map of zeros on the same grid.
    fn ct_and_prob(shape: [usize; 3], spacing: [f64; 3], hu: f32) -> (Volume, Volume) {
        let ct = Volume::with_spacing(Array3::from_elem(shape, hu), spacing).unwrap();
        let prob = ct.with_data(Array3::zeros(shape)).unwrap();
        (ct, prob)
    }

    fn count(image: &RgbImage, colour: [u8; 3]) -> usize {
        image.pixels.iter().filter(|&&p| p == colour).count()
    }

    #[test]
    fn below_threshold_is_transparent_and_above_is_blended() {
        let (ct, mut prob) = ct_and_prob([1, 1, 3], [1.0; 3], 500.0);
        prob.data_mut().slice_mut(s![0, 0, ..]).assign(&ndarray::arr1(&[0.49, 0.5, 0.9]));
        let options = HeatmapOptions { threshold: 0.5, opacity: 0.6, ..Default::default() };
        let image = heatmap_plane(&ct, Some(&prob), Plane::Axial, 0, &options).unwrap();
        let grey = volume_plane(&ct, Plane::Axial, 0, options.window).get(0, 0);
        assert_eq!(image.get(0, 0), grey, "0.49 is below the threshold: the CT shows through");
        let expect = |p: f32| -> [u8; 3] {
            std::array::from_fn(|k| (0.6 * f32::from(viridis(p)[k]) + 0.4 * f32::from(grey[k])).round() as u8)
        };
        assert_eq!(image.get(0, 1), expect(0.5), "the threshold itself is drawn");
        assert_eq!(image.get(0, 2), expect(0.9));
    }

    #[test]
    fn heat_lands_on_its_voxels_with_square_millimetre_pixels() {
        // z spacing 3 mm, x 0.5 mm: a coronal picture is 4 * 6 = 24 rows by 8 columns.
        let (ct, mut prob) = ct_and_prob([4, 6, 8], [3.0, 1.0, 0.5], 0.0);
        prob.data_mut().slice_mut(s![1, .., ..]).fill(1.0);
        let image = heatmap_plane(&ct, Some(&prob), Plane::Coronal, 2, &HeatmapOptions::default()).unwrap();
        assert_eq!((image.height, image.width), (24, 8));
        let hot: Vec<usize> = (0..image.height).filter(|&r| image.get(r, 0) != image.get(0, 0)).collect();
        // z = 1 of 0..4 drawn superior-up is the third 6-row band from the top.
        assert_eq!(hot, (12..18).collect::<Vec<_>>());
        let sagittal = heatmap_plane(&ct, Some(&prob), Plane::Sagittal, 0, &HeatmapOptions::default()).unwrap();
        assert_eq!((sagittal.height, sagittal.width), (12, 6), "3 mm rows, 1 mm columns at 1 mm pixels");
    }

    #[test]
    fn box_is_drawn_on_its_border_voxels_in_each_plane_that_cuts_it() {
        let (ct, _) = ct_and_prob([6, 10, 12], [2.0, 1.0, 1.0], -1000.0);
        let fracture_box = Box3::new([1, 2, 4], [3, 5, 9]).unwrap();
        let options = HeatmapOptions { weak_label: Some(WeakLabel::Box(fracture_box)), ..Default::default() };
        let axial = heatmap_plane(&ct, None, Plane::Axial, 2, &options).unwrap();
        for (r, c) in [(2, 4), (2, 8), (4, 4), (4, 8), (3, 4), (2, 6)] {
            assert_eq!(axial.get(r, c), WEAK_LABEL_COLOUR, "border pixel ({r}, {c})");
        }
        for (r, c) in [(3, 6), (1, 4), (5, 4), (2, 3), (2, 9)] {
            assert_ne!(axial.get(r, c), WEAK_LABEL_COLOUR, "pixel ({r}, {c}) is inside or outside the box");
        }
        assert_eq!(count(&axial, WEAK_LABEL_COLOUR), 5 + 5 + 1 + 1, "two rows of 5, the middle row's two ends");

        // Coronal: z 1..3 at 2 px a slice, superior up: z 2 is rows 6..8, z 1 rows 8..10.
        let coronal = heatmap_plane(&ct, None, Plane::Coronal, 3, &options).unwrap();
        let rows: Vec<usize> = (0..coronal.height).filter(|&r| coronal.get(r, 4) == WEAK_LABEL_COLOUR).collect();
        assert_eq!(rows, (6..10).collect::<Vec<_>>());
        assert_eq!(coronal.get(6, 6), WEAK_LABEL_COLOUR);
        assert_ne!(coronal.get(7, 6), WEAK_LABEL_COLOUR);

        let outside = heatmap_plane(&ct, None, Plane::Axial, 4, &options).unwrap();
        assert_eq!(count(&outside, WEAK_LABEL_COLOUR), 0, "slice 4 does not cut a box of z 1..3");
    }

    #[test]
    fn slice_range_is_two_lines_across_and_a_marker_on_axial_slices_inside() {
        let (ct, _) = ct_and_prob([6, 4, 8], [1.0; 3], -1000.0);
        let slices = SliceRange::new(2, 4).unwrap();
        let options = HeatmapOptions { weak_label: Some(WeakLabel::Slices(slices)), ..Default::default() };
        let sagittal = heatmap_plane(&ct, None, Plane::Sagittal, 0, &options).unwrap();
        // z 2..4 superior up is picture rows 2..4: lines on rows 2 and 3, across all columns.
        let rows: Vec<usize> = (0..sagittal.height).filter(|&r| sagittal.get(r, 0) == WEAK_LABEL_COLOUR).collect();
        assert_eq!(rows, vec![2, 3]);
        assert_eq!(count(&sagittal, WEAK_LABEL_COLOUR), 2 * sagittal.width);

        let inside = heatmap_plane(&ct, None, Plane::Axial, 3, &options).unwrap();
        assert_eq!(inside.get(0, inside.width - 1), WEAK_LABEL_COLOUR, "marker in the top-right corner");
        let outside = heatmap_plane(&ct, None, Plane::Axial, 4, &options).unwrap();
        assert_eq!(count(&outside, WEAK_LABEL_COLOUR), 0, "slice 4 is past the half-open range");
    }

    #[test]
    fn truth_and_draft_are_outlined_in_their_own_colours() {
        let (ct, _) = ct_and_prob([1, 8, 8], [1.0; 3], -1000.0);
        let mut truth = Mask::from_elem((1, 8, 8), false);
        truth.slice_mut(s![0, 1..4, 1..4]).fill(true);
        let mut draft = Mask::from_elem((1, 8, 8), false);
        draft.slice_mut(s![0, 4..7, 4..7]).fill(true);
        let options = HeatmapOptions { truth: Some(&truth), draft: Some(&draft), ..Default::default() };
        let image = heatmap_plane(&ct, None, Plane::Axial, 0, &options).unwrap();
        assert_eq!(image.get(1, 1), TRUTH_COLOUR);
        assert_eq!(image.get(4, 4), DRAFT_COLOUR);
        assert_eq!(count(&image, TRUTH_COLOUR), 8, "the border of a 3x3 square");
        assert_eq!(count(&image, DRAFT_COLOUR), 8);
    }

    #[test]
    fn planes_pass_through_the_probability_maximum_by_default() {
        let (ct, mut prob) = ct_and_prob([6, 10, 12], [1.0; 3], -1000.0);
        prob.data_mut()[[2, 5, 7]] = 0.9;
        prob.data_mut()[[4, 1, 1]] = 0.7;
        let image = heatmap_planes(&ct, &prob, &HeatmapOptions::default()).unwrap();
        let hot = viridis(0.9);
        let black = [0, 0, 0];
        let drawn: [u8; 3] =
            std::array::from_fn(|k| (0.6 * f32::from(hot[k]) + 0.4 * f32::from(black[k])).round() as u8);
        // Axial (10 x 12) at x 0, coronal (6 x 12) after a gap of 4, sagittal (6 x 10) next;
        // z = 2 is picture row 3 with superior up.
        assert_eq!(image.get(5, 7), drawn, "axial z 2: row y 5, column x 7");
        assert_eq!(image.get(3, 12 + PANEL_GAP + 7), drawn, "coronal y 5: row z 2, column x 7");
        assert_eq!(image.get(3, 2 * (12 + PANEL_GAP) + 5), drawn, "sagittal x 7: row z 2, column y 5");
        assert_eq!(image.get(1, 1), black, "the other blob (z 4) is not in the axial plane");
    }

    #[test]
    fn planes_end_with_the_legend() {
        let (ct, prob) = ct_and_prob([6, 10, 12], [1.0; 3], 0.0);
        let image = heatmap_planes(&ct, &prob, &HeatmapOptions { threshold: 0.3, ..Default::default() }).unwrap();
        let legend = legend(10, 0.3);
        assert_eq!(image.height, legend.height, "a 40-pixel legend is taller than the 10-pixel planes");
        let left = image.width - legend.width;
        assert_eq!(left, 12 + 12 + 10 + 3 * PANEL_GAP);
        for r in 0..legend.height {
            for c in 0..legend.width {
                assert_eq!(image.get(r, left + c), legend.get(r, c), "legend pixel ({r}, {c})");
            }
        }
    }

    #[test]
    fn legend_shows_the_colour_map_above_the_threshold_and_labels_its_ticks() {
        let image = legend(100, 0.3);
        let bar_col = 3;
        let bar: Vec<usize> = (0..image.height).filter(|&r| image.get(r, bar_col) != [0, 0, 0]).collect();
        let (top, bottom) = (bar[0], *bar.last().unwrap());
        assert_eq!(image.get(top, bar_col), viridis(1.0), "1 at the top");
        let middle = image.get((top + bottom).div_ceil(2), bar_col);
        let near_half = (0..3).all(|k| middle[k].abs_diff(viridis(0.5)[k]) <= 3);
        assert!(near_half, "half way down is viridis(0.5) {:?}, got {middle:?}", viridis(0.5));
        assert_eq!(image.get(bottom, bar_col), NOT_SHOWN_COLOUR, "0 is below the threshold 0.3");
        let label_cols = 10..image.width;
        for row in [top, (top + bottom).div_ceil(2), bottom] {
            let white = (row - 2..=row + 2)
                .flat_map(|r| label_cols.clone().map(move |c| (r, c)))
                .filter(|&(r, c)| image.get(r, c) == LABEL_COLOUR)
                .count();
            assert!(white >= 5, "a label beside the tick at row {row}: {white} white pixels");
        }
    }

    #[test]
    fn contact_sheet_shows_every_axial_slice_numbered_in_a_grid() {
        let (ct, prob) = ct_and_prob([5, 6, 7], [1.0; 3], -1000.0);
        let sheet = contact_sheet(&ct, None, &HeatmapOptions::default(), 3).unwrap();
        assert_eq!((sheet.height, sheet.width), (2 * 6 + PANEL_GAP, 3 * 7 + 2 * PANEL_GAP));
        // Slice 4 is the second tile of the second row; its label "4" starts with glyph row 101.
        let (top, left) = (6 + PANEL_GAP, 7 + PANEL_GAP);
        assert_eq!(sheet.get(top + 1, left + 1), LABEL_COLOUR);
        assert_eq!(sheet.get(top + 1, left + 2), [0, 0, 0]);
        assert_eq!(sheet.get(top + 1, left + 3), LABEL_COLOUR);
        let with_prob = contact_sheet(&ct, Some(&prob), &HeatmapOptions::default(), 3).unwrap();
        assert_eq!(with_prob.width, sheet.width + PANEL_GAP + legend(sheet.height, 0.5).width, "and a legend");
    }

    #[test]
    fn maps_off_the_ct_grid_are_refused_with_their_name() {
        let (ct, _) = ct_and_prob([4, 4, 4], [1.0; 3], 0.0);
        let (_, small) = ct_and_prob([4, 4, 3], [1.0; 3], 0.0);
        let err = heatmap_planes(&ct, &small, &HeatmapOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "probability map has shape [4, 4, 3], the CT [4, 4, 4] ([z, y, x]): it must be on the CT's grid"
        );
        let draft = Mask::from_elem((4, 5, 4), false);
        let options = HeatmapOptions { draft: Some(&draft), ..Default::default() };
        assert!(matches!(
            contact_sheet(&ct, None, &options, 2),
            Err(HeatmapError::NotOnCtGrid { what: "draft mask", .. })
        ));
        let far = HeatmapOptions { point: Some([1, 4, 0]), ..Default::default() };
        assert_eq!(
            heatmap_planes(&ct, &ct, &far),
            Err(HeatmapError::PointOutside { point: [1, 4, 0], shape: [4, 4, 4] })
        );
    }
}
