//! Pictures of volumes: a plane through a volume as an RGB image with square pixels in
//! millimetres, mask outlines drawn over it, images side by side, PNG output.
//!
//! One place that draws, so the trainer, the review list and the client show the same thing.

use std::path::Path;

use ndarray::{Array2, ArrayView3, Axis};

use crate::volume::Volume;

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

    fn set(&mut self, row: usize, col: usize, colour: [u8; 3]) {
        self.pixels[row * self.width + col] = colour;
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

/// The 2D plane `index` of a `[z, y, x]` array, as rows x columns in the display order of
/// [`Plane`]. Rows that run along z are flipped so that the top of the image is the end of
/// the z axis that points up in the world (superior), as radiologists view it.
pub fn plane_of<T: Copy>(data: ArrayView3<'_, T>, plane: Plane, index: usize, z_points_up: bool) -> Array2<T> {
    let mut slice = data.index_axis(Axis(plane.fixed_axis()), index).to_owned();
    if plane != Plane::Axial && z_points_up {
        slice.invert_axis(Axis(0));
    }
    slice
}

/// A plane through a volume as a grey image whose pixels are square in millimetres: the
/// axis with the coarser spacing is stretched (nearest neighbour) to the finer one.
pub fn volume_plane(volume: &Volume, plane: Plane, index: usize, window: DisplayWindow) -> RgbImage {
    let slice = plane_of(volume.data().view(), plane, index, z_points_up(volume));
    let (row_mm, col_mm) = plane_spacing(volume, plane);
    let (rows, cols) = slice.dim();
    let pixel_mm = row_mm.min(col_mm);
    let height = ((rows as f64 * row_mm / pixel_mm).round() as usize).max(1);
    let width = ((cols as f64 * col_mm / pixel_mm).round() as usize).max(1);
    let mut image = RgbImage::filled(width, height, [0, 0, 0]);
    for r in 0..height {
        let sr = (r * rows / height).min(rows - 1);
        for c in 0..width {
            let sc = (c * cols / width).min(cols - 1);
            let g = window.grey(slice[[sr, sc]]);
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
    let slice = plane_of(mask, plane, index, z_points_up(volume));
    let (rows, cols) = slice.dim();
    let (h, w) = (image.height, image.width);
    let inside = |r: usize, c: usize| slice[[(r * rows / h).min(rows - 1), (c * cols / w).min(cols - 1)]];
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

/// Pixel spacing (rows, columns) in mm of a plane.
fn plane_spacing(volume: &Volume, plane: Plane) -> (f64, f64) {
    let [sz, sy, sx] = volume.spacing();
    match plane {
        Plane::Axial => (sy, sx),
        Plane::Coronal => (sz, sx),
        Plane::Sagittal => (sz, sy),
    }
}

/// Whether increasing z moves superior in the world (RAS+: the z row of the affine's k column).
fn z_points_up(volume: &Volume) -> bool {
    volume.affine()[2][2] >= 0.0
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
}
