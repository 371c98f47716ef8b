//! Pictures of a [`Scene`] without a GPU or a display: a small software rasteriser.
//!
//! Orthographic views from fixed directions around the patient, all at one scale and
//! centred on the scene, a z-buffer, Phong shading (normals interpolated across triangles,
//! Lambert diffuse plus a Blinn-Phong highlight, lit from the viewer's upper left, both
//! sides of a surface lit alike). Opaque surfaces are drawn first; over them the nearest
//! translucent surface in front is blended with its opacity, so a fracture shows through
//! translucent bone whatever order the surfaces come in.

use crate::picture::{RgbImage, side_by_side};
use crate::scene::Scene;

/// Where the camera looks from, in the patient's terms (RAS+ world: +x right, +y anterior,
/// +z superior). Superior is up in every view but the axial ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// From the front: the patient's right on the picture's left.
    Anterior,
    /// From behind.
    Posterior,
    /// From the patient's left side.
    Left,
    /// From the patient's right side.
    Right,
    /// From above, anterior up: the patient's right on the picture's right.
    Superior,
}

impl View {
    /// Unit vectors (world) of the picture's right, the picture's up, and the direction the
    /// camera looks in; right x up points at the viewer, so no view is a mirror image.
    fn basis(self) -> [[f64; 3]; 3] {
        match self {
            View::Anterior => [[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]],
            View::Posterior => [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
            View::Left => [[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
            View::Right => [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]],
            View::Superior => [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Side of each view's square picture, pixels.
    pub size: usize,
    /// The views, side by side in this order.
    pub views: Vec<View>,
    pub background: [u8; 3],
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions { size: 400, views: vec![View::Anterior, View::Left, View::Posterior], background: [0, 0, 0] }
    }
}

/// Black between views.
const VIEW_GAP: usize = 4;
/// Part of the picture's half-side the scene's bounding sphere fills.
const FILL: f64 = 0.92;

/// The scene from each of `options.views`, side by side.
pub fn render(scene: &Scene, options: &RenderOptions) -> RgbImage {
    let pictures: Vec<RgbImage> = options.views.iter().map(|&view| render_view(scene, view, options)).collect();
    side_by_side(&pictures, VIEW_GAP)
}

/// One surface's fragments land in one of these: the nearest depth and its colour.
struct Layer {
    depth: Vec<f64>,
    colour: Vec<[f64; 3]>,
    opacity: Vec<f64>,
}

impl Layer {
    fn new(pixels: usize, colour: [f64; 3]) -> Self {
        Layer { depth: vec![f64::INFINITY; pixels], colour: vec![colour; pixels], opacity: vec![0.0; pixels] }
    }
}

fn render_view(scene: &Scene, view: View, options: &RenderOptions) -> RgbImage {
    let size = options.size;
    let background = options.background.map(f64::from);
    let Some((lo, hi)) = scene.bounds() else {
        return RgbImage::filled(size, size, options.background);
    };
    let centre: [f64; 3] = std::array::from_fn(|k| (f64::from(lo[k]) + f64::from(hi[k])) / 2.0);
    let radius = (0..3).map(|k| (f64::from(hi[k]) - f64::from(lo[k])).powi(2)).sum::<f64>().sqrt() / 2.0;
    let scale = FILL * size as f64 / 2.0 / radius.max(1e-6);
    let [right, up, forward] = view.basis();
    let light = normalise(add(scale_by(forward, -1.0), add(scale_by(up, 0.5), scale_by(right, -0.4))));
    let towards_viewer = scale_by(forward, -1.0);
    let halfway = normalise(add(light, towards_viewer));

    let mut opaque = Layer::new(size * size, background);
    let mut translucent = Layer::new(size * size, background);
    let mut by_opacity: Vec<_> = scene.surfaces.iter().collect();
    by_opacity.sort_by_key(|s| s.opacity < 1.0);
    for surface in by_opacity {
        let is_opaque = surface.opacity >= 1.0;
        let base = surface.colour.map(f64::from);
        let mesh = &surface.mesh;
        let screen: Vec<[f64; 3]> = mesh
            .positions
            .iter()
            .map(|p| {
                let d = sub(p.map(f64::from), centre);
                [size as f64 / 2.0 + dot(d, right) * scale, size as f64 / 2.0 - dot(d, up) * scale, dot(d, forward)]
            })
            .collect();
        for triangle in &mesh.triangles {
            let [a, b, c] = triangle.map(|v| screen[v as usize]);
            let area = edge(a, b, c);
            if area.abs() < 1e-12 {
                continue;
            }
            let normals = triangle.map(|v| mesh.normals[v as usize].map(f64::from));
            let col_range = pixel_span(a[0].min(b[0]).min(c[0]), a[0].max(b[0]).max(c[0]), size);
            let row_range = pixel_span(a[1].min(b[1]).min(c[1]), a[1].max(b[1]).max(c[1]), size);
            for row in row_range {
                for col in col_range.clone() {
                    let p = [col as f64 + 0.5, row as f64 + 0.5, 0.0];
                    let w = [edge(b, c, p) / area, edge(c, a, p) / area, edge(a, b, p) / area];
                    if w.iter().any(|&v| v < 0.0) {
                        continue;
                    }
                    let depth = w[0] * a[2] + w[1] * b[2] + w[2] * c[2];
                    let at = row * size + col;
                    let nearest =
                        if is_opaque { opaque.depth[at] } else { translucent.depth[at].min(opaque.depth[at]) };
                    if depth >= nearest {
                        continue;
                    }
                    let normal = normalise(std::array::from_fn(|k| {
                        w[0] * normals[0][k] + w[1] * normals[1][k] + w[2] * normals[2][k]
                    }));
                    // Both sides of a surface lit alike: turn the normal to the viewer.
                    let normal = if dot(normal, towards_viewer) < 0.0 { scale_by(normal, -1.0) } else { normal };
                    let diffuse = dot(normal, light).max(0.0);
                    let highlight = dot(normal, halfway).max(0.0).powi(32);
                    let layer = if is_opaque { &mut opaque } else { &mut translucent };
                    layer.depth[at] = depth;
                    layer.colour[at] = base.map(|c| c * (0.25 + 0.75 * diffuse) + 255.0 * 0.25 * highlight);
                    layer.opacity[at] = f64::from(surface.opacity.clamp(0.0, 1.0));
                }
            }
        }
    }
    let mut image = RgbImage::filled(size, size, options.background);
    for at in 0..size * size {
        let under = opaque.colour[at];
        let (over, alpha) = if translucent.depth[at] < opaque.depth[at] {
            (translucent.colour[at], translucent.opacity[at])
        } else {
            (under, 0.0)
        };
        let colour =
            std::array::from_fn(|k| (alpha * over[k] + (1.0 - alpha) * under[k]).round().clamp(0.0, 255.0) as u8);
        image.set(at / size, at % size, colour);
    }
    image
}

/// Pixels whose centres (`i + 0.5`) may fall in `lo..=hi`, clipped to `0..size`.
fn pixel_span(lo: f64, hi: f64, size: usize) -> std::ops::Range<usize> {
    let first = (lo - 0.5).ceil().max(0.0) as usize;
    let last = ((hi - 0.5).floor() + 1.0).clamp(0.0, size as f64) as usize;
    first.min(size)..last
}

/// Twice the signed area of the screen triangle (a, b, p), x and y only.
fn edge(a: [f64; 3], b: [f64; 3], p: [f64; 3]) -> f64 {
    (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
}

fn add(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|k| a[k] + b[k])
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|k| a[k] - b[k])
}

fn scale_by(a: [f64; 3], s: f64) -> [f64; 3] {
    a.map(|v| v * s)
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn normalise(a: [f64; 3]) -> [f64; 3] {
    let length = dot(a, a).sqrt();
    if length > 0.0 { scale_by(a, 1.0 / length) } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{SurfaceOptions, isosurface};
    use crate::scene::Surface;
    use crate::volume::Volume;
    use ndarray::Array3;

    /// A sphere of `radius` mm at `centre` (world mm) as a surface, from a 1 mm grid of 32
    /// voxels a side whose voxel 0 is at world -16.
    fn ball(centre: [f64; 3], radius: f64, colour: [u8; 3], opacity: f32) -> Surface {
        let field = Array3::from_shape_fn((32, 32, 32), |(z, y, x)| {
            let p = [x, y, z].map(|v| v as f64 - 16.0);
            (radius - (0..3).map(|k| (p[k] - centre[k]).powi(2)).sum::<f64>().sqrt()) as f32
        });
        let mut affine = crate::volume::spacing_affine([1.0; 3]);
        (0..3).for_each(|r| affine[r][3] = -16.0);
        let volume = Volume::new(field, [1.0; 3], affine).unwrap();
        Surface { name: "ball".into(), mesh: isosurface(&volume, 0.0, &SurfaceOptions::RAW), colour, opacity }
    }

    const RED: [u8; 3] = [230, 40, 30];
    const GREY: [u8; 3] = [200, 200, 200];

    fn one_view(scene: &Scene, view: View) -> RgbImage {
        render(scene, &RenderOptions { size: 48, views: vec![view], background: [0, 0, 0] })
    }

    fn is_red(p: [u8; 3]) -> bool {
        let [r, g, b] = p.map(u32::from);
        r > 60 && r > 2 * g && r > 2 * b
    }

    fn is_grey(p: [u8; 3]) -> bool {
        p[0] > 20 && p[0].abs_diff(p[1]) < 8 && p[1].abs_diff(p[2]) < 8
    }

    #[test]
    fn fracture_shows_in_colour_through_translucent_bone() {
        let bone = ball([0.0; 3], 12.0, GREY, 0.35);
        let fracture = ball([0.0; 3], 5.0, RED, 1.0);
        // Translucent first: the order of surfaces must not matter.
        let image = one_view(&Scene { surfaces: vec![bone, fracture] }, View::Anterior);
        let centre = image.get(24, 24);
        assert!(is_red(centre), "fracture through bone at the centre: {centre:?}");
        // 9 mm from the centre: bone in front of the background only (the scene spans
        // about 24 mm, drawn 0.92 x 48 pixels across its 41.6 mm diagonal).
        let bone_only = image.get(24, 24 + 9);
        assert!(is_grey(bone_only) && bone_only[0] < 140, "translucent grey over black: {bone_only:?}");
        assert_eq!(image.get(0, 0), [0, 0, 0], "background in the corner");
        let red = image.pixels.iter().filter(|&&p| is_red(p)).count();
        assert!(red > 40, "a fracture disc of radius ~5 px is mostly red: {red} pixels");
    }

    #[test]
    fn the_nearer_opaque_surface_hides_the_farther() {
        // Red in front (anterior, +y), grey behind, on one line of sight.
        let scene =
            Scene { surfaces: vec![ball([0.0, -7.0, 0.0], 5.0, GREY, 1.0), ball([0.0, 7.0, 0.0], 5.0, RED, 1.0)] };
        assert!(is_red(one_view(&scene, View::Anterior).get(24, 24)), "from the front, the front ball");
        assert!(is_grey(one_view(&scene, View::Posterior).get(24, 24)), "from behind, the back ball");
    }

    #[test]
    fn views_are_not_mirrored() {
        // Red on the patient's right (+x) and above (+z), grey on the left and below.
        let scene =
            Scene { surfaces: vec![ball([8.0, 0.0, 6.0], 4.0, RED, 1.0), ball([-8.0, 0.0, -6.0], 4.0, GREY, 1.0)] };
        let red_side = |image: &RgbImage| {
            let (mut sum_col, mut sum_row, mut n) = (0, 0, 0);
            for r in 0..image.height {
                for c in 0..image.width {
                    if is_red(image.get(r, c)) {
                        (sum_col, sum_row, n) = (sum_col + c, sum_row + r, n + 1);
                    }
                }
            }
            assert!(n > 0, "red is in view");
            (sum_col / n < image.width / 2, sum_row / n < image.height / 2)
        };
        assert_eq!(red_side(&one_view(&scene, View::Anterior)), (true, true), "patient's right on the left, up");
        assert_eq!(red_side(&one_view(&scene, View::Posterior)), (false, true));
        assert!(!red_side(&one_view(&scene, View::Superior)).0, "from above, the patient's right on the right");
    }

    #[test]
    fn views_sit_side_by_side_and_an_empty_scene_is_background() {
        let options = RenderOptions { size: 20, views: vec![View::Left, View::Right], background: [9, 9, 9] };
        let image = render(&Scene::default(), &options);
        assert_eq!((image.height, image.width), (20, 2 * 20 + VIEW_GAP));
        assert_eq!(image.get(10, 10), [9, 9, 9]);
    }
}
