//! The report's pictures, cut from the case around its vertebrae so that a 300 MB CT costs
//! little more than a small one: three planes and the axial slices of each pictured
//! vertebra (core's heat maps: probabilities over the CT, the draft mask outlined, pixels
//! square in mm whatever the voxels), and the bone and draft mask as surfaces in world mm,
//! meshed no finer than the pictures need and rendered from three sides.

use anyhow::{Context, Result, ensure};
use fracmap_core::heatmap::{HeatmapOptions, contact_sheet, heatmap_planes};
use fracmap_core::mesh::SurfaceOptions;
use fracmap_core::picture::RgbImage;
use fracmap_core::preprocess::{Interpolation, crop, mask_to_volume, resample};
use fracmap_core::render::{RenderOptions, View, render};
use fracmap_core::scene::{Scene, SceneOptions, fracture_scene};
use fracmap_core::{Box3, Mask, Volume};
use ndarray::s;

/// Bone surface: CT at or above this, HU (cancellous bone is about 200-300 HU, cortex more).
pub const BONE_HU: f32 = 200.0;
/// Half-seen bone: the draft mask inside it shows, and so does the bone over a black ground.
const BONE_OPACITY: f32 = 0.5;
/// The views of the scene, left to right, as the page names them.
pub const VIEWS: [(View, &str); 3] = [(View::Anterior, "front"), (View::Left, "left"), (View::Posterior, "back")];
/// Side of each rendered view, pixels.
const VIEW_SIZE: usize = 360;
/// The scene is meshed no finer than this, mm: finer adds triangles, not detail, at the
/// size it is drawn.
const SCENE_MIN_SPACING_MM: f64 = 1.0;
/// ... and from at most this many voxels (a whole spine at 1 mm is about 7 million).
const SCENE_MAX_VOXELS: f64 = 8e6;
/// Vertex clustering of the meshes, mm: `scene.glb` stays a few MB for a whole spine.
const DECIMATION_CELL_MM: f64 = 1.5;
/// Axial slices in a contact sheet at most; a thin-slice CT shows every n-th.
const MAX_SHEET_TILES: usize = 40;
const SHEET_COLUMNS: usize = 8;

/// A case's volumes, all on the CT's grid.
pub struct CaseVolumes<'a> {
    pub ct: &'a Volume,
    /// Fracture probability in [0, 1].
    pub probability: &'a Volume,
    /// The draft mask.
    pub mask: &'a Mask,
}

impl CaseVolumes<'_> {
    pub fn check_grids(&self) -> Result<()> {
        let mask = self.mask.shape();
        for (what, shape) in [("probability", self.probability.shape()), ("mask", [mask[0], mask[1], mask[2]])] {
            ensure!(
                shape == self.ct.shape(),
                "the {what} has shape {shape:?}, the CT {:?} ([z, y, x])",
                self.ct.shape()
            );
        }
        Ok(())
    }

    /// The three volumes inside `region` (CT voxels, inside the CT).
    fn cut_out(&self, region: &Box3) -> Result<(Volume, Volume, Mask)> {
        let [z, y, x] = region.ranges();
        Ok((crop(self.ct, region)?, crop(self.probability, region)?, self.mask.slice(s![z, y, x]).to_owned()))
    }
}

/// A picture for the page: PNG bytes and its size in pixels.
pub struct Picture {
    pub png: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

impl Picture {
    pub fn encode(image: &RgbImage) -> Result<Picture> {
        let mut png = Vec::new();
        let mut encoder = png::Encoder::new(&mut png, image.width as u32, image.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().context("PNG header")?;
        writer.write_image_data(image.pixels.as_flattened()).context("PNG data")?;
        writer.finish().context("PNG end")?;
        Ok(Picture { png, width: image.width, height: image.height })
    }
}

/// The pictures of one vertebra.
pub struct VertebraFigures {
    /// The CT voxel `[z, y, x]` the three planes pass through.
    pub point: [usize; 3],
    /// Axial, coronal and sagittal planes through `point`, with the legend.
    pub planes: Picture,
    /// The axial slices of its body, with the legend: tile `k` is CT slice
    /// `first_slice + k * slice_step`.
    pub sheet: Picture,
    pub first_slice: usize,
    pub slice_step: usize,
}

/// Planes through the centre of the vertebra's `region` and a contact sheet of the slices of
/// its `body` (the region's extent in y and x), both cut to the region.
pub fn vertebra_figures(case: &CaseVolumes, region: &Box3, body: &Box3, threshold: f32) -> Result<VertebraFigures> {
    let (ct, probability, mask) = case.cut_out(region)?;
    let local_point = region.shape().map(|n| n / 2);
    let options = HeatmapOptions { threshold, draft: Some(&mask), point: Some(local_point), ..Default::default() };
    let planes = heatmap_planes(&ct, &probability, &options)?;

    let slices = body.min()[0]..body.max()[0];
    let slice_step = slices.len().div_ceil(MAX_SHEET_TILES);
    let body_slices =
        Box3::new([slices.start, region.min()[1], region.min()[2]], [slices.end, region.max()[1], region.max()[2]])?;
    let (ct, probability, mask) = case.cut_out(&body_slices)?;
    let (ct, probability) = (every_nth_slice(&ct, slice_step)?, every_nth_slice(&probability, slice_step)?);
    let mask = mask.slice(s![..;slice_step as isize, .., ..]).to_owned();
    let options = HeatmapOptions { threshold, draft: Some(&mask), ..Default::default() };
    let sheet = contact_sheet(&ct, Some(&probability), &options, SHEET_COLUMNS)?;

    Ok(VertebraFigures {
        point: std::array::from_fn(|a| region.min()[a] + local_point[a]),
        planes: Picture::encode(&planes)?,
        sheet: Picture::encode(&sheet)?,
        first_slice: slices.start,
        slice_step,
    })
}

/// Axial slices `0, step, 2 step, ...` of `volume`. Only for axial pictures: the affine
/// left is the spacing's, which places them right in-plane but not in the world.
fn every_nth_slice(volume: &Volume, step: usize) -> Result<Volume> {
    let [dz, dy, dx] = volume.spacing();
    let data = volume.data().slice(s![..;step as isize, .., ..]).to_owned();
    Ok(Volume::with_spacing(data, [dz * step as f64, dy, dx])?)
}

/// The bone (CT >= [`BONE_HU`], translucent) and the draft mask (opaque) inside `around`,
/// as surfaces in world mm; meshed on a coarser grid where the CT is finer than
/// [`SCENE_MIN_SPACING_MM`] or `around` holds more than [`SCENE_MAX_VOXELS`].
pub fn case_scene(case: &CaseVolumes, around: &Box3) -> Result<Scene> {
    let [z, y, x] = around.ranges();
    let ct = crop(case.ct, around)?;
    let mask = mask_to_volume(&case.mask.slice(s![z, y, x]).to_owned(), &ct.grid())?;
    let spacing = scene_spacing(ct.shape(), ct.spacing());
    let (ct, mask) = if spacing == ct.spacing() {
        (ct, mask)
    } else {
        // Linear for the mask too: its 0.5 surface comes out smooth rather than in steps.
        (resample(&ct, spacing, Interpolation::Linear)?, resample(&mask, spacing, Interpolation::Linear)?)
    };
    let options = SceneOptions {
        bone_hu: BONE_HU,
        // The "probability" is the mask as 0 / 1: its surface is the mask's.
        fracture_threshold: 0.5,
        bone_opacity: BONE_OPACITY,
        surface: SurfaceOptions { decimation_cell_mm: Some(DECIMATION_CELL_MM), ..SurfaceOptions::default() },
    };
    Ok(fracture_scene(&ct, &mask, &options)?)
}

/// The scene from each of [`VIEWS`], side by side.
pub fn scene_views(scene: &Scene) -> Result<Picture> {
    let options =
        RenderOptions { size: VIEW_SIZE, views: VIEWS.map(|(view, _)| view).to_vec(), ..RenderOptions::default() };
    Picture::encode(&render(scene, &options))
}

/// The spacing to mesh a volume of `shape` and `spacing` (`[z, y, x]`, mm) at: each axis at
/// least [`SCENE_MIN_SPACING_MM`], then all coarser alike until at most [`SCENE_MAX_VOXELS`].
fn scene_spacing(shape: [usize; 3], spacing: [f64; 3]) -> [f64; 3] {
    let at_least = spacing.map(|s| s.max(SCENE_MIN_SPACING_MM));
    let voxels: f64 = (0..3).map(|a| shape[a] as f64 * spacing[a] / at_least[a]).product();
    let coarser = (voxels / SCENE_MAX_VOXELS).cbrt().max(1.0);
    at_least.map(|s| s * coarser)
}

#[cfg(test)]
mod tests {
    use fracmap_core::heatmap::legend;
    use ndarray::Array3;

    use super::*;

    #[test]
    fn the_scene_is_meshed_at_1_mm_or_coarser_and_from_at_most_8_million_voxels() {
        assert_eq!(scene_spacing([10, 10, 10], [2.0, 0.5, 1.0]), [2.0, 1.0, 1.0]);
        // 400 x 400 x 400 at 1 mm is 64 million voxels: 8 times too many, so 2 mm.
        assert_eq!(scene_spacing([400, 400, 400], [1.0, 1.0, 1.0]), [2.0, 2.0, 2.0]);
    }

    #[test]
    fn planes_through_a_vertebra_are_cut_to_its_region_in_millimetre_proportions() {
        // 3 mm slices, 1 mm in-plane: 16 slices are 48 pixels high in the sagittal plane.
        let ct = Volume::with_spacing(Array3::from_elem([20, 8, 8], 300.0), [3.0, 1.0, 1.0]).unwrap();
        let probability = ct.with_data(Array3::zeros([20, 8, 8])).unwrap();
        let mask = Array3::from_elem([20, 8, 8], false);
        let case = CaseVolumes { ct: &ct, probability: &probability, mask: &mask };
        let region = Box3::new([2, 2, 2], [18, 7, 8]).unwrap();
        let figures = vertebra_figures(&case, &region, &region, 0.5).unwrap();
        assert_eq!(figures.point, [10, 4, 5]);
        let key = legend(48, 0.5);
        // Axial 6 wide, coronal 6 (x), sagittal 5 (y), the legend, 4 pixels apart.
        assert_eq!((figures.planes.height, figures.planes.width), (48, 6 + 6 + 5 + key.width + 3 * 4));
        // 16 tiles 6 wide in rows of 8, and the legend.
        assert_eq!(figures.sheet.width, 8 * 6 + 7 * 4 + 4 + legend(40, 0.5).width);
        assert_eq!((figures.first_slice, figures.slice_step), (2, 1));
    }

    #[test]
    fn a_thin_slice_sheet_shows_every_nth_slice() {
        let ct =
            Volume::with_spacing(Array3::from_shape_fn([90, 4, 4], |(z, _, _)| z as f32), [0.5, 1.0, 1.0]).unwrap();
        assert_eq!(every_nth_slice(&ct, 3).unwrap().data()[[2, 0, 0]], 6.0);
        assert_eq!(every_nth_slice(&ct, 3).unwrap().shape(), [30, 4, 4]);
        assert_eq!(90usize.div_ceil(MAX_SHEET_TILES), 3);
    }
}
