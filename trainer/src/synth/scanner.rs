//! The scanner: where the voxel grid lies (spacing, field of view, the affine a real
//! scanner writes) and what it does to the ideal image: the slice profile (each slice
//! averages the anatomy across its thickness), the in-plane point spread, beam-hardening
//! cupping, streaks, and correlated quantum noise; HU rounded to integers as stored.

use fracmap_core::Affine;
use ndarray::{Array3, Axis};
use rand::Rng;

use super::confounders::Blob;
use super::noise::{normal, normal_pair, uniform};
use super::space::{CRANIAL, Vec3, add, length2, scale};
use super::spine::Spine;

/// The voxel grid of a case in the patient frame (LPS, mm; see [`super::space`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScanGrid {
    /// `[z, y, x]`: z runs caudal to cranial, y anterior to posterior, x right to left.
    pub shape: [usize; 3],
    /// `[z, y, x]`, mm.
    pub spacing: [f64; 3],
    /// Patient position of voxel `[0, 0, 0]`, `[X, Y, Z]`.
    pub origin: Vec3,
    /// Thin sub-slices averaged into each slice (odd: the middle one is the slice centre,
    /// where labels and masks are sampled).
    pub sub_slices: usize,
    /// Voxel `(x, y, z)` to RAS world, as the NIfTI header stores it.
    pub affine: Affine,
}

impl ScanGrid {
    /// Patient position of the (fractional) voxel `[z, y, x]`.
    pub fn patient(&self, zyx: [f64; 3]) -> Vec3 {
        let [sz, sy, sx] = self.spacing;
        [self.origin[0] + zyx[2] * sx, self.origin[1] + zyx[1] * sy, self.origin[2] + zyx[0] * sz]
    }

    /// Fractional voxel `[z, y, x]` of a patient position.
    #[cfg(test)]
    pub fn voxel(&self, p: Vec3) -> [f64; 3] {
        let [sz, sy, sx] = self.spacing;
        [(p[2] - self.origin[2]) / sz, (p[1] - self.origin[1]) / sy, (p[0] - self.origin[0]) / sx]
    }
}

/// A straight streak through one axial slab: bright and dark lines through a point.
#[derive(Debug, Clone, PartialEq)]
struct Streak {
    /// Patient `[X, Y, Z]` the lines pass through.
    through: Vec3,
    /// Half-thickness of the slab it affects, mm.
    half_height: f64,
    /// `(angle, HU)` of each line; the amplitude fades with distance from `through`.
    lines: Vec<(f64, f64)>,
    width: f64,
    fade: f64,
}

/// Scanner settings of one case.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scanner {
    pub grid: ScanGrid,
    /// Gaussian point spread in the axial plane (sigma, mm).
    psf: f64,
    /// Noise standard deviation, HU.
    noise: f64,
    /// Noise texture: correlation of neighbouring voxels (Gaussian sigma, voxels).
    noise_grain: f64,
    /// Beam-hardening cupping at the body centre, HU (0: none).
    cupping: f64,
    /// Patient `(X, Y)` of the body's centre per slice, for the cupping.
    body_centres: Vec<[f64; 2]>,
    streaks: Vec<Streak>,
}

/// Ranges the scanner draws from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ScannerRanges {
    pub in_plane: usize,
    pub in_plane_spacing: (f64, f64),
    pub slice_spacing: (f64, f64),
    pub noise: (f64, f64),
    pub artefacts: bool,
}

/// Hounsfield units a CT stores (12-bit, offset -1024).
const HU_RANGE: (f32, f32) = (-1024.0, 3071.0);

impl Scanner {
    /// Places a scan over `spine`: every body inside, the field of view centred on the
    /// bodies and canals, slices covering the bodies and half their outer discs.
    pub fn sample(rng: &mut impl Rng, ranges: &ScannerRanges, spine: &Spine, blobs: &[Blob]) -> Scanner {
        let pixel = uniform(rng, ranges.in_plane_spacing);
        let slice = uniform(rng, ranges.slice_spacing);
        let jitter = [uniform(rng, (-4.0, 4.0)), uniform(rng, (-4.0, 4.0))];
        let table = [uniform(rng, (-20.0, 20.0)), uniform(rng, (-160.0, -120.0)), uniform(rng, (-900.0, -300.0))];
        let psf = uniform(rng, (0.35, 0.6));
        let noise = uniform(rng, ranges.noise);
        let noise_grain = uniform(rng, (0.6, 1.0));
        let cupping = if ranges.artefacts { uniform(rng, (5.0, 30.0)) } else { 0.0 };

        let field = ranges.in_plane as f64 * pixel;
        let [front, bodies_back, canals_back] = spine.sagittal_reach();
        let margin = 5.0;
        let slack = |back: f64| field - (back - front) - 2.0 * margin;
        // Bodies and canals with a random shift; bodies alone when both do not fit.
        let centre_y = if slack(canals_back) >= 0.0 {
            let room = 0.5 * slack(canals_back);
            0.5 * (front + canals_back) + jitter[1].clamp(-room, room)
        } else if slack(bodies_back) >= 0.0 {
            front - margin + 0.5 * field
        } else {
            0.5 * (front + bodies_back)
        };
        let mean_x = spine.vertebrae.iter().map(|v| v.frame.origin[0]).sum::<f64>() / spine.vertebrae.len() as f64;
        let centre = [mean_x + jitter[0], centre_y];
        let (low, high) = spine.body_extent();
        let depth = ((high - low) / slice).floor() as usize + 1;
        let half = 0.5 * (ranges.in_plane - 1) as f64 * pixel;
        let origin = [centre[0] - half, centre[1] - half, low + 0.5 * ((high - low) - (depth - 1) as f64 * slice)];
        // Sub-slices about 1 mm apart: thin structures (a 1 mm endplate) blur across a thick
        // slice as they do in a real one instead of appearing or vanishing.
        let ratio = (slice / 1.2).round().max(1.0) as usize;
        let sub_slices = if ratio.is_multiple_of(2) { ratio + 1 } else { ratio };
        // RAS: world X = -patient X, world Y = -patient Y, plus the table position.
        let affine = [
            [-pixel, 0.0, 0.0, -origin[0] + table[0]],
            [0.0, -pixel, 0.0, -origin[1] + table[1]],
            [0.0, 0.0, slice, origin[2] + table[2]],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let grid = ScanGrid {
            shape: [depth, ranges.in_plane, ranges.in_plane],
            spacing: [slice, pixel, pixel],
            origin,
            sub_slices,
            affine,
        };
        // The body's centre lies about 70 mm in front of the vertebral bodies.
        let body_centres = (0..depth)
            .map(|z| {
                let section = spine.section(grid.patient([z as f64, 0.0, 0.0])[2]);
                let [lx, ly] = section.lateral;
                [section.centre[0] + 70.0 * ly, section.centre[1] - 70.0 * lx]
            })
            .collect();
        let streaks = if ranges.artefacts { sample_streaks(rng, spine, blobs, &grid) } else { Vec::new() };
        Scanner { grid, psf, noise, noise_grain, cupping, body_centres, streaks }
    }

    /// Turns the ideal image (already averaged across each slice) into what the scanner
    /// reconstructs.
    pub fn apply(&self, image: &mut Array3<f32>, rng: &mut impl Rng) {
        let [_, sy, sx] = self.grid.spacing;
        let psf = gaussian_kernel(self.psf / sx.min(sy));
        let grain = gaussian_kernel(self.noise_grain);
        // Unit white noise blurred by a separable kernel k keeps a standard deviation of
        // sqrt(sum k^2) per axis, sum k^2 over both: divide it out.
        let grain_gain = 1.0 / grain.iter().map(|k| k * k).sum::<f32>();
        let [_, ny, nx] = self.grid.shape;
        let mut field = vec![0.0f32; ny * nx];
        for (z, mut plane) in image.axis_iter_mut(Axis(0)).enumerate() {
            let pixels = plane.as_slice_mut().expect("standard layout");
            blur_plane(pixels, ny, nx, &psf);
            for pair in field.chunks_mut(2) {
                let (a, b) = normal_pair(rng);
                pair[0] = a as f32;
                if let Some(second) = pair.get_mut(1) {
                    *second = b as f32;
                }
            }
            blur_plane(&mut field, ny, nx, &grain);
            let z_mm = self.grid.patient([z as f64, 0.0, 0.0])[2];
            let sigma = self.noise as f32 * grain_gain;
            for y in 0..ny {
                for x in 0..nx {
                    let p = self.grid.patient([z as f64, y as f64, x as f64]);
                    let mut artefact = 0.0;
                    if self.cupping > 0.0 {
                        let [cx, cy] = self.body_centres[z];
                        let r2 = ((p[0] - cx).powi(2) + (p[1] - cy).powi(2)) / (160.0f64 * 160.0);
                        artefact -= self.cupping * (1.0 - r2).max(0.0);
                    }
                    for streak in &self.streaks {
                        artefact += streak.at([p[0], p[1], z_mm]);
                    }
                    let value = pixels[y * nx + x] + artefact as f32 + sigma * field[y * nx + x];
                    pixels[y * nx + x] = value.round().clamp(HU_RANGE.0, HU_RANGE.1);
                }
            }
        }
    }
}

impl Streak {
    fn at(&self, p: Vec3) -> f64 {
        let dz = (p[2] - self.through[2]).abs();
        if dz > self.half_height {
            return 0.0;
        }
        let (dx, dy) = (p[0] - self.through[0], p[1] - self.through[1]);
        let distance = length2(dx, dy);
        let fade = (1.0 - dz / self.half_height) / (1.0 + distance / self.fade);
        self.lines
            .iter()
            .map(|&(angle, hu)| {
                let off_line = (-dx * angle.sin() + dy * angle.cos()) / self.width;
                hu * (-off_line * off_line).exp()
            })
            .sum::<f64>()
            * fade
    }
}

/// Streaks of one case: from a metal clip if there is one (bright and dark rays), and
/// photon-starvation bands straight through a vertebral body (dark, across the patient:
/// the kind of line a slice label takes for a fracture).
fn sample_streaks(rng: &mut impl Rng, spine: &Spine, blobs: &[Blob], grid: &ScanGrid) -> Vec<Streak> {
    let mut streaks = Vec::new();
    if let Some(clip) = blobs.iter().find(|b| b.hu >= 2000.0) {
        let lines = (0..rng.random_range(6..12))
            .map(|k| {
                let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
                (uniform(rng, (0.0, std::f64::consts::PI)), sign * uniform(rng, (120.0, 400.0)))
            })
            .collect();
        streaks.push(Streak {
            through: clip.centre,
            half_height: 4.0,
            lines,
            width: uniform(rng, (1.0, 2.5)),
            fade: 40.0,
        });
    }
    let bands = if rng.random::<f64>() < 0.5 { rng.random_range(1..4) } else { 0 };
    for _ in 0..bands {
        let vertebra = &spine.vertebrae[rng.random_range(0..spine.vertebrae.len())];
        let offset = uniform(rng, (-0.3, 0.3)) * vertebra.shape.height;
        let through = add(vertebra.frame.origin, scale(vertebra.frame.axes[CRANIAL], offset));
        let angle = uniform(rng, (-0.15, 0.15));
        let dark = -uniform(rng, (30.0, 90.0));
        streaks.push(Streak {
            through,
            half_height: 0.6 * grid.spacing[0].max(1.5),
            lines: vec![(angle, dark), (angle + 0.02, 0.4 * normal(rng).abs() * -dark)],
            width: uniform(rng, (0.8, 1.8)),
            fade: 400.0,
        });
    }
    streaks
}

/// Normalised 1D Gaussian, radius 3 sigma (a single tap for a negligible sigma).
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    if sigma < 0.05 {
        return vec![1.0];
    }
    let radius = (3.0 * sigma).ceil() as i64;
    let raw: Vec<f64> = (-radius..=radius).map(|i| (-0.5 * (i as f64 / sigma).powi(2)).exp()).collect();
    let total: f64 = raw.iter().sum();
    raw.iter().map(|w| (w / total) as f32).collect()
}

/// Separable convolution of a `[ny, nx]` plane with `kernel` along both axes (edges
/// clamped).
fn blur_plane(plane: &mut [f32], ny: usize, nx: usize, kernel: &[f32]) {
    if kernel.len() == 1 {
        return;
    }
    let radius = (kernel.len() / 2) as i64;
    let mut line = vec![0.0f32; nx.max(ny)];
    for y in 0..ny {
        let row = &mut plane[y * nx..(y + 1) * nx];
        line[..nx].copy_from_slice(row);
        for (x, out) in row.iter_mut().enumerate() {
            *out = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * line[(x as i64 + k as i64 - radius).clamp(0, nx as i64 - 1) as usize])
                .sum();
        }
    }
    for x in 0..nx {
        for y in 0..ny {
            line[y] = plane[y * nx + x];
        }
        for y in 0..ny {
            plane[y * nx + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * line[(y as i64 + k as i64 - radius).clamp(0, ny as i64 - 1) as usize])
                .sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_the_mean_and_spreads_an_impulse() {
        let (ny, nx) = (9, 9);
        let mut plane = vec![0.0f32; ny * nx];
        plane[4 * nx + 4] = 81.0;
        blur_plane(&mut plane, ny, nx, &gaussian_kernel(1.0));
        let total: f32 = plane.iter().sum();
        assert!((total - 81.0).abs() < 1e-3, "total {total}");
        assert!(plane[4 * nx + 4] < 81.0 * 0.3 && plane[4 * nx + 5] > 1.0);
    }

    #[test]
    fn a_streak_lies_along_its_lines_and_fades_away_from_them() {
        let streak =
            Streak { through: [0.0, 0.0, 10.0], half_height: 2.0, lines: vec![(0.0, -100.0)], width: 1.0, fade: 50.0 };
        assert!(streak.at([5.0, 0.0, 10.0]) < -85.0, "on the line, near its source");
        assert!(streak.at([60.0, 0.0, 10.0]) > streak.at([5.0, 0.0, 10.0]), "fades with distance");
        assert!(streak.at([5.0, 4.0, 10.0]).abs() < 1e-3, "4 widths off the line");
        assert_eq!(streak.at([5.0, 0.0, 12.5]), 0.0, "outside its slab");
    }

    #[test]
    fn patient_and_voxel_positions_are_inverse() {
        let grid = ScanGrid {
            shape: [10, 20, 20],
            spacing: [2.5, 0.7, 0.7],
            origin: [-7.0, -5.0, 100.0],
            sub_slices: 3,
            affine: [[0.0; 4]; 4],
        };
        let p = grid.patient([3.0, 4.5, 6.0]);
        assert_eq!(p, [-7.0 + 6.0 * 0.7, -5.0 + 4.5 * 0.7, 107.5]);
        let back = grid.voxel(p);
        assert!((back[0] - 3.0).abs() < 1e-12 && (back[1] - 4.5).abs() < 1e-12 && (back[2] - 6.0).abs() < 1e-12);
    }
}
