//! Pictures of volumes: a plane through a volume as an RGB image with square pixels in
//! millimetres, the pixel-to-voxel layout that everything drawn over it shares, mask
//! outlines, rectangles, text in a 3 x 5 font, images side by side or in a grid, PNG output.
//!
//! One place that draws, so the trainer, the review list and the client show the same thing.

use std::ops::Range;
use std::path::Path;

use ndarray::ArrayView3;

use crate::volume::{Affine, Grid, Volume};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Fixed z: rows are y, columns are x.
    Axial,
    /// Fixed y: rows are z, columns are x.
    Coronal,
    /// Fixed x: rows are z, columns are y.
    Sagittal,
}

impl Plane {
    /// The array axis held fixed (`[z, y, x]` numbering).
    pub fn fixed_axis(self) -> usize {
        match self {
            Plane::Axial => 0,
            Plane::Coronal => 1,
            Plane::Sagittal => 2,
        }
    }

    /// The array axes (`[z, y, x]` numbering) along a picture's rows and its columns.
    pub fn picture_axes(self) -> (usize, usize) {
        match self {
            Plane::Axial => (1, 2),
            Plane::Coronal => (0, 2),
            Plane::Sagittal => (0, 1),
        }
    }
}

/// An 8-bit RGB image, row-major, top row first.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<[u8; 3]>,
}

impl RgbImage {
    pub fn filled(width: usize, height: usize, colour: [u8; 3]) -> Self {
        RgbImage { width, height, pixels: vec![colour; width * height] }
    }

    pub fn get(&self, row: usize, col: usize) -> [u8; 3] {
        self.pixels[row * self.width + col]
    }

    pub fn set(&mut self, row: usize, col: usize, colour: [u8; 3]) {
        self.pixels[row * self.width + col] = colour;
    }

    /// Paints `colour` over the pixel with weight `alpha` (`0..=1`): `alpha * colour +
    /// (1 - alpha) * old`, per channel, rounded.
    pub fn blend(&mut self, row: usize, col: usize, colour: [u8; 3], alpha: f32) {
        let old = self.get(row, col);
        let mixed = std::array::from_fn(|k| {
            (alpha * f32::from(colour[k]) + (1.0 - alpha) * f32::from(old[k])).round().clamp(0.0, 255.0) as u8
        });
        self.set(row, col, mixed);
    }
}

/// Grey levels for a display window in the volume's units (e.g. HU `-250..1250` for bone).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisplayWindow {
    pub low: f32,
    pub high: f32,
}

impl DisplayWindow {
    pub const BONE: DisplayWindow = DisplayWindow { low: -250.0, high: 1250.0 };

    fn grey(&self, v: f32) -> u8 {
        let t = ((v - self.low) / (self.high - self.low)).clamp(0.0, 1.0);
        (t * 255.0).round() as u8
    }
}

/// Which voxel each pixel of a picture of one plane shows, and which pixels show a run of
/// voxels: pixels are square in millimetres (the axis with the coarser spacing is stretched,
/// nearest neighbour, to the finer one) and rows along z run with superior at the top, as
/// radiologists view them. [`volume_plane`] paints with it, and everything drawn over its
/// pictures maps through it, so an outline, a heat map or a box lands on the voxels it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneLayout {
    pub plane: Plane,
    /// The slice along [`Plane::fixed_axis`].
    pub index: usize,
    /// Picture size in pixels.
    pub height: usize,
    pub width: usize,
    /// Voxels along the picture's rows and columns.
    rows: usize,
    cols: usize,
    /// Whether picture rows run against their array axis (z drawn superior at the top).
    flip_rows: bool,
}

impl PlaneLayout {
    /// The layout of plane `index` of a volume on `grid`.
    pub fn new(grid: &Grid, plane: Plane, index: usize) -> Self {
        let (row_axis, col_axis) = plane.picture_axes();
        let (rows, cols) = (grid.shape[row_axis], grid.shape[col_axis]);
        let (row_mm, col_mm) = (grid.spacing[row_axis], grid.spacing[col_axis]);
        let pixel_mm = row_mm.min(col_mm);
        let height = ((rows as f64 * row_mm / pixel_mm).round() as usize).max(1);
        let width = ((cols as f64 * col_mm / pixel_mm).round() as usize).max(1);
        let flip_rows = plane != Plane::Axial && z_points_up(&grid.affine);
        PlaneLayout { plane, index, height, width, rows, cols, flip_rows }
    }

    /// The voxel `[z, y, x]` that pixel (`row`, `col`) shows.
    pub fn voxel_at(&self, row: usize, col: usize) -> [usize; 3] {
        let picture_row = (row * self.rows / self.height).min(self.rows - 1);
        let voxel_row = if self.flip_rows { self.rows - 1 - picture_row } else { picture_row };
        let voxel_col = (col * self.cols / self.width).min(self.cols - 1);
        let (row_axis, col_axis) = self.plane.picture_axes();
        let mut zyx = [0; 3];
        zyx[self.plane.fixed_axis()] = self.index;
        zyx[row_axis] = voxel_row;
        zyx[col_axis] = voxel_col;
        zyx
    }

    /// The pixel rows that show the voxels `voxels` (half-open, along the row axis of
    /// [`Plane::picture_axes`], clipped to the volume); empty when none is shown.
    pub fn pixel_rows(&self, voxels: Range<usize>) -> Range<usize> {
        let (start, end) = clip(voxels, self.rows);
        let (start, end) = if self.flip_rows { (self.rows - end, self.rows - start) } else { (start, end) };
        first_pixel(start, self.rows, self.height)..first_pixel(end, self.rows, self.height)
    }

    /// The pixel columns that show the voxels `voxels` (half-open, along the column axis of
    /// [`Plane::picture_axes`], clipped to the volume); empty when none is shown.
    pub fn pixel_cols(&self, voxels: Range<usize>) -> Range<usize> {
        let (start, end) = clip(voxels, self.cols);
        first_pixel(start, self.cols, self.width)..first_pixel(end, self.cols, self.width)
    }
}

/// `range` clipped to `0..len`, as (start, end) with `start <= end`.
fn clip(range: Range<usize>, len: usize) -> (usize, usize) {
    let start = range.start.min(len);
    (start, range.end.clamp(start, len))
}

/// The first of `pixels` pixels that shows picture voxel `voxel` of `voxels` (or `pixels`
/// for `voxel == voxels`): the smallest `p` with `p * voxels / pixels >= voxel`.
fn first_pixel(voxel: usize, voxels: usize, pixels: usize) -> usize {
    (voxel * pixels).div_ceil(voxels)
}

/// A plane through a volume as a grey image whose pixels are square in millimetres (see
/// [`PlaneLayout`]).
pub fn volume_plane(volume: &Volume, plane: Plane, index: usize, window: DisplayWindow) -> RgbImage {
    let layout = PlaneLayout::new(&volume.grid(), plane, index);
    let data = volume.data();
    let mut image = RgbImage::filled(layout.width, layout.height, [0, 0, 0]);
    for r in 0..layout.height {
        for c in 0..layout.width {
            let g = window.grey(data[layout.voxel_at(r, c)]);
            image.set(r, c, [g, g, g]);
        }
    }
    image
}

/// Draws the outline of `mask` (same volume grid, same plane) in `colour` over an image made
/// by [`volume_plane`]: a pixel is on the outline when it is inside and a 4-neighbour is not.
pub fn draw_outline(
    image: &mut RgbImage,
    volume: &Volume,
    mask: ArrayView3<'_, bool>,
    plane: Plane,
    index: usize,
    colour: [u8; 3],
) {
    let layout = PlaneLayout::new(&volume.grid(), plane, index);
    debug_assert_eq!((image.height, image.width), (layout.height, layout.width), "image made by volume_plane");
    let (h, w) = (image.height, image.width);
    let inside = |r: usize, c: usize| mask[layout.voxel_at(r, c)];
    for r in 0..h {
        for c in 0..w {
            if !inside(r, c) {
                continue;
            }
            let edge = r == 0
                || c == 0
                || r + 1 == h
                || c + 1 == w
                || !inside(r - 1, c)
                || !inside(r + 1, c)
                || !inside(r, c - 1)
                || !inside(r, c + 1);
            if edge {
                image.set(r, c, colour);
            }
        }
    }
}

/// Images in a row, top-aligned, with a `gap` of black pixels between them.
pub fn side_by_side(images: &[RgbImage], gap: usize) -> RgbImage {
    let width = images.iter().map(|i| i.width).sum::<usize>() + gap * images.len().saturating_sub(1);
    let height = images.iter().map(|i| i.height).max().unwrap_or(0);
    let mut out = RgbImage::filled(width, height, [0, 0, 0]);
    let mut left = 0;
    for image in images {
        for r in 0..image.height {
            for c in 0..image.width {
                out.set(r, left + c, image.get(r, c));
            }
        }
        left += image.width + gap;
    }
    out
}

/// Images in a grid of `columns` (left to right, then top to bottom), each in a cell as large
/// as the largest image, top-left aligned, with a `gap` of black pixels between cells.
pub fn tiled(images: &[RgbImage], columns: usize, gap: usize) -> RgbImage {
    let columns = columns.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(columns);
    let cell_w = images.iter().map(|i| i.width).max().unwrap_or(0);
    let cell_h = images.iter().map(|i| i.height).max().unwrap_or(0);
    let width = columns * cell_w + gap * (columns - 1);
    let height = rows * cell_h + gap * rows.saturating_sub(1);
    let mut out = RgbImage::filled(width, height, [0, 0, 0]);
    for (k, image) in images.iter().enumerate() {
        let (top, left) = (k / columns * (cell_h + gap), k % columns * (cell_w + gap));
        for r in 0..image.height {
            for c in 0..image.width {
                out.set(top + r, left + c, image.get(r, c));
            }
        }
    }
    out
}

/// Fills the pixels `rows` x `cols` (half-open, clipped to the image) with `colour`.
pub fn fill_rectangle(image: &mut RgbImage, rows: Range<usize>, cols: Range<usize>, colour: [u8; 3]) {
    for r in rows.start..rows.end.min(image.height) {
        for c in cols.start..cols.end.min(image.width) {
            image.set(r, c, colour);
        }
    }
}

/// Draws the one-pixel border of the rectangle `rows` x `cols` (half-open: the border is the
/// outermost pixels inside it), clipped to the image.
pub fn draw_rectangle(image: &mut RgbImage, rows: Range<usize>, cols: Range<usize>, colour: [u8; 3]) {
    if rows.is_empty() || cols.is_empty() {
        return;
    }
    let (top, bottom, left, right) = (rows.start, rows.end - 1, cols.start, cols.end - 1);
    fill_rectangle(image, top..top + 1, cols.clone(), colour);
    fill_rectangle(image, bottom..bottom + 1, cols, colour);
    fill_rectangle(image, rows.clone(), left..left + 1, colour);
    fill_rectangle(image, rows, right..right + 1, colour);
}

/// Glyphs 3 pixels wide and 5 high, one row a `u8` (bit 2 is the left pixel): digits,
/// capitals and the punctuation of tick labels, slice numbers, titles and axis labels.
const GLYPHS: &[(char, [u8; 5])] = &[
    ('0', [0b111, 0b101, 0b101, 0b101, 0b111]),
    ('1', [0b010, 0b110, 0b010, 0b010, 0b111]),
    ('2', [0b111, 0b001, 0b111, 0b100, 0b111]),
    ('3', [0b111, 0b001, 0b111, 0b001, 0b111]),
    ('4', [0b101, 0b101, 0b111, 0b001, 0b001]),
    ('5', [0b111, 0b100, 0b111, 0b001, 0b111]),
    ('6', [0b111, 0b100, 0b111, 0b101, 0b111]),
    ('7', [0b111, 0b001, 0b001, 0b001, 0b001]),
    ('8', [0b111, 0b101, 0b111, 0b101, 0b111]),
    ('9', [0b111, 0b101, 0b111, 0b001, 0b111]),
    ('A', [0b010, 0b101, 0b111, 0b101, 0b101]),
    ('B', [0b110, 0b101, 0b110, 0b101, 0b110]),
    ('C', [0b011, 0b100, 0b100, 0b100, 0b011]),
    ('D', [0b110, 0b101, 0b101, 0b101, 0b110]),
    ('E', [0b111, 0b100, 0b110, 0b100, 0b111]),
    ('F', [0b111, 0b100, 0b110, 0b100, 0b100]),
    ('G', [0b011, 0b100, 0b101, 0b101, 0b011]),
    ('H', [0b101, 0b101, 0b111, 0b101, 0b101]),
    ('I', [0b111, 0b010, 0b010, 0b010, 0b111]),
    ('J', [0b001, 0b001, 0b001, 0b101, 0b010]),
    ('K', [0b101, 0b101, 0b110, 0b101, 0b101]),
    ('L', [0b100, 0b100, 0b100, 0b100, 0b111]),
    ('M', [0b101, 0b111, 0b111, 0b101, 0b101]),
    ('N', [0b110, 0b101, 0b101, 0b101, 0b101]),
    ('O', [0b010, 0b101, 0b101, 0b101, 0b010]),
    ('P', [0b110, 0b101, 0b110, 0b100, 0b100]),
    ('Q', [0b010, 0b101, 0b101, 0b111, 0b011]),
    ('R', [0b110, 0b101, 0b110, 0b101, 0b101]),
    ('S', [0b011, 0b100, 0b010, 0b001, 0b110]),
    ('T', [0b111, 0b010, 0b010, 0b010, 0b010]),
    ('U', [0b101, 0b101, 0b101, 0b101, 0b111]),
    ('V', [0b101, 0b101, 0b101, 0b010, 0b010]),
    ('W', [0b101, 0b101, 0b111, 0b111, 0b101]),
    ('X', [0b101, 0b101, 0b010, 0b101, 0b101]),
    ('Y', [0b101, 0b101, 0b010, 0b010, 0b010]),
    ('Z', [0b111, 0b001, 0b010, 0b100, 0b111]),
    ('.', [0b000, 0b000, 0b000, 0b000, 0b010]),
    ('-', [0b000, 0b000, 0b111, 0b000, 0b000]),
    ('(', [0b001, 0b010, 0b010, 0b010, 0b001]),
    (')', [0b100, 0b010, 0b010, 0b010, 0b100]),
    ('[', [0b110, 0b100, 0b100, 0b100, 0b110]),
    (']', [0b011, 0b001, 0b001, 0b001, 0b011]),
    ('<', [0b001, 0b010, 0b100, 0b010, 0b001]),
    ('>', [0b100, 0b010, 0b001, 0b010, 0b100]),
    ('/', [0b001, 0b001, 0b010, 0b100, 0b100]),
    (':', [0b000, 0b010, 0b000, 0b010, 0b000]),
    (',', [0b000, 0b000, 0b000, 0b010, 0b100]),
    ('\'', [0b010, 0b010, 0b000, 0b000, 0b000]),
    ('_', [0b000, 0b000, 0b000, 0b000, 0b111]),
    ('+', [0b000, 0b010, 0b111, 0b010, 0b000]),
    ('=', [0b000, 0b111, 0b000, 0b111, 0b000]),
    ('*', [0b101, 0b010, 0b111, 0b010, 0b101]),
    ('%', [0b101, 0b001, 0b010, 0b100, 0b101]),
];

/// The glyph of `ch`, lower case as its capital; `None` for a character without one.
fn glyph(ch: char) -> Option<&'static [u8; 5]> {
    let ch = ch.to_ascii_uppercase();
    GLYPHS.iter().find(|(g, _)| *g == ch).map(|(_, rows)| rows)
}

/// Size in pixels (height, width) of `text` drawn by [`draw_text`] at `scale`.
pub fn text_size(text: &str, scale: usize) -> (usize, usize) {
    let chars = text.chars().count();
    (5 * scale, (4 * chars).saturating_sub(1) * scale)
}

/// Draws `text` with its top-left corner at (`top`, `left`), each font pixel a `scale` x
/// `scale` square, clipped to the image. Letters are drawn as capitals; a character without
/// a glyph in [`GLYPHS`] is drawn as a space.
pub fn draw_text(image: &mut RgbImage, top: usize, left: usize, text: &str, scale: usize, colour: [u8; 3]) {
    for (k, ch) in text.chars().enumerate() {
        let Some(rows) = glyph(ch) else { continue };
        let glyph_left = left + 4 * k * scale;
        for (gr, bits) in rows.iter().enumerate() {
            for gc in 0..3 {
                if bits >> (2 - gc) & 1 == 1 {
                    let (r, c) = (top + gr * scale, glyph_left + gc * scale);
                    fill_rectangle(image, r..r + scale, c..c + scale, colour);
                }
            }
        }
    }
}

/// Writes an 8-bit RGB PNG atomically (temporary file in the same folder, then rename).
pub fn write_png(path: &Path, image: &RgbImage) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, image.width as u32, image.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer.write_image_data(image.pixels.as_flattened()).map_err(std::io::Error::other)?;
    }
    crate::fsutil::write_atomic(path, &bytes)
}

/// Whether increasing z moves superior in the world (RAS+: the z row of the affine's k column).
fn z_points_up(affine: &Affine) -> bool {
    affine[2][2] >= 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn ramp_volume(spacing: [f64; 3]) -> Volume {
        // value = z: lets a test see which way z runs on screen.
        let data = Array3::from_shape_fn((4, 3, 2), |(z, _, _)| z as f32 * 100.0);
        Volume::with_spacing(data, spacing).unwrap()
    }

    #[test]
    fn planes_have_square_millimetre_pixels() {
        let v = ramp_volume([3.0, 1.0, 1.0]);
        let axial = volume_plane(&v, Plane::Axial, 0, DisplayWindow { low: 0.0, high: 300.0 });
        assert_eq!((axial.height, axial.width), (3, 2));
        let sagittal = volume_plane(&v, Plane::Sagittal, 0, DisplayWindow { low: 0.0, high: 300.0 });
        assert_eq!((sagittal.height, sagittal.width), (12, 3), "4 slices of 3 mm at 1 mm pixels");
    }

    #[test]
    fn superior_is_at_the_top() {
        let v = ramp_volume([1.0, 1.0, 1.0]);
        let coronal = volume_plane(&v, Plane::Coronal, 0, DisplayWindow { low: 0.0, high: 300.0 });
        // z = 3 (value 300, white) points up in a RAS+ affine, so it is the top row.
        assert_eq!(coronal.get(0, 0), [255, 255, 255]);
        assert_eq!(coronal.get(3, 0), [0, 0, 0]);
    }

    #[test]
    fn outline_marks_the_border_of_a_mask_not_its_inside() {
        let v = Volume::with_spacing(Array3::zeros((1, 5, 5)), [1.0; 3]).unwrap();
        let mut mask = Array3::from_elem((1, 5, 5), false);
        mask.slice_mut(ndarray::s![0, 1..4, 1..4]).fill(true);
        let mut image = volume_plane(&v, Plane::Axial, 0, DisplayWindow::BONE);
        let before = image.get(0, 0);
        draw_outline(&mut image, &v, mask.view(), Plane::Axial, 0, [255, 0, 0]);
        assert_eq!(image.get(1, 1), [255, 0, 0]);
        assert_eq!(image.get(2, 2), before, "the centre of a 3x3 square is inside, not outline");
        assert_eq!(image.get(0, 0), before);
    }

    #[test]
    fn png_round_trips_dimensions_and_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        let a = RgbImage::filled(3, 2, [10, 20, 30]);
        let b = RgbImage::filled(2, 4, [200, 0, 0]);
        write_png(&path, &side_by_side(&[a, b], 1)).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (6, 4));
        assert_eq!(&buf[..3], &[10, 20, 30]);
        assert_eq!(&buf[4 * 3..5 * 3], &[200, 0, 0], "column 4 is the second image after a 1-pixel gap");
        assert_eq!(&buf[3 * 6 * 3..3 * 6 * 3 + 3], &[0, 0, 0], "row 3 is below the first image");
    }

    #[test]
    fn layout_pixel_ranges_are_exactly_the_pixels_showing_those_voxels() {
        // Anisotropic and z flipped (superior up): every picture axis stretched by a non-integer factor.
        let v = Volume::with_spacing(Array3::zeros((5, 7, 3)), [2.5, 1.0, 1.5]).unwrap();
        for plane in [Plane::Axial, Plane::Coronal, Plane::Sagittal] {
            let layout = PlaneLayout::new(&v.grid(), plane, 1);
            let (row_axis, col_axis) = plane.picture_axes();
            for voxel in 0..v.shape()[row_axis] {
                let rows: Vec<usize> =
                    (0..layout.height).filter(|&r| layout.voxel_at(r, 0)[row_axis] == voxel).collect();
                assert_eq!(
                    rows,
                    layout.pixel_rows(voxel..voxel + 1).collect::<Vec<_>>(),
                    "{plane:?} row voxel {voxel}"
                );
            }
            for voxel in 0..v.shape()[col_axis] {
                let cols: Vec<usize> =
                    (0..layout.width).filter(|&c| layout.voxel_at(0, c)[col_axis] == voxel).collect();
                assert_eq!(
                    cols,
                    layout.pixel_cols(voxel..voxel + 1).collect::<Vec<_>>(),
                    "{plane:?} col voxel {voxel}"
                );
            }
            assert_eq!(layout.voxel_at(0, 0)[plane.fixed_axis()], 1);
        }
    }

    #[test]
    fn text_draws_the_glyph_pixels_scaled() {
        let mut image = RgbImage::filled(12, 12, [0, 0, 0]);
        draw_text(&mut image, 1, 1, "1", 2, [255, 255, 255]);
        // Glyph '1' top row is .#. : at scale 2, pixels (1..3, 3..5) are lit, (1..3, 1..3) not.
        assert_eq!(image.get(1, 3), [255, 255, 255]);
        assert_eq!(image.get(2, 4), [255, 255, 255]);
        assert_eq!(image.get(1, 1), [0, 0, 0]);
        let lit = image.pixels.iter().filter(|&&p| p == [255, 255, 255]).count();
        assert_eq!(lit, 8 * 4, "'1' has 8 font pixels, each 2 x 2");
        assert_eq!(text_size("0.5", 2), (10, 22));
    }

    #[test]
    fn letters_and_punctuation_draw_ink_and_unknown_characters_draw_as_spaces() {
        let draw = |text: &str| {
            let mut image = RgbImage::filled(9, 7, [0, 0, 0]);
            draw_text(&mut image, 1, 1, text, 1, [255, 255, 255]);
            image
        };
        let ink = |text: &str| draw(text).pixels.iter().filter(|&&p| p == [255, 255, 255]).count();
        assert_eq!(ink("L"), 7, "'L' has 7 font pixels");
        assert_eq!(draw("l"), draw("L"), "lower case is drawn as its capital");
        assert_eq!(ink("%"), 7, "'%' has 7 font pixels");
        assert_eq!(ink("§"), 0, "'§' has no glyph");
        assert_eq!(draw("§1"), draw(" 1"), "'§' takes a space's width");
    }

    #[test]
    fn tiles_fill_rows_left_to_right() {
        let images: Vec<RgbImage> = (0..5).map(|k| RgbImage::filled(2, 3, [k * 40, 0, 0])).collect();
        let grid = tiled(&images, 2, 1);
        assert_eq!((grid.height, grid.width), (3 * 3 + 2, 2 * 2 + 1));
        assert_eq!(grid.get(0, 3), [40, 0, 0], "image 1 is right of image 0");
        assert_eq!(grid.get(8, 0), [160, 0, 0], "image 4 starts the third row");
        assert_eq!(grid.get(8, 3), [0, 0, 0], "nothing right of the last image");
    }

    #[test]
    fn blend_weights_new_over_old() {
        let mut image = RgbImage::filled(1, 1, [100, 0, 200]);
        image.blend(0, 0, [200, 255, 0], 0.25);
        assert_eq!(image.get(0, 0), [125, 64, 150]);
    }
}
