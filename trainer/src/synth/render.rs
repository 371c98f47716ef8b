//! From the drawn case in millimetres to voxels: every point of the volume asks the
//! vertebrae near it, then the dense foci, then the soft tissue what it is (the first that
//! claims it wins). The ideal image averages thin sub-slices across each slice (the slice profile);
//! labels and the fracture mask are sampled at the slice centres.

use fracmap_core::geometry::{Box3, Mask};
use ndarray::Array3;

use super::confounders::Blob;
use super::noise::ValueNoise;
use super::scanner::ScanGrid;
use super::soft_tissue::{SliceTissue, SoftTissue};
use super::space::Vec3;
use super::spine::{Section, Spine};
use super::tissue::{Palette, Tissue};

/// Everything drawn for one case, in patient millimetres.
#[derive(Debug, Clone)]
pub(crate) struct CaseModel {
    pub spine: Spine,
    pub soft_tissue: SoftTissue,
    pub blobs: Vec<Blob>,
    pub palette: Palette,
    pub texture: ValueNoise,
    /// Thinnest fracture band, mm (at least a slice: every fracture shows on the grid).
    pub band_min: f64,
    /// Value of the muscle texture above which muscle is fat (fatty infiltration).
    pub marbling: f64,
}

/// What one point is: tissue, HU of the ideal image, vertebra label (0 none), the index of
/// the vertebra whose body it is in, and whether it is fractured bone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PointSample {
    pub tissue: Tissue,
    pub hu: f64,
    pub label: u8,
    pub body_of: Option<usize>,
    pub fractured: bool,
}

/// What an axial plane at one height needs: the spine's section and soft tissue there, the
/// foci and the vertebrae that reach it, and the patient `(X, Y)` box the vertebrae cover.
pub(crate) struct Plane<'a> {
    soft: SliceTissue<'a>,
    blobs: Vec<&'a Blob>,
    vertebrae: Vec<usize>,
    reach: [f64; 4],
}

/// More vertebrae than this never overlap one point.
const MAX_NEAR: usize = 8;

impl CaseModel {
    pub fn plane(&self, z: f64) -> Plane<'_> {
        let section: Section = self.spine.section(z);
        let vertebrae: Vec<usize> = (0..self.spine.vertebrae.len())
            .filter(|&i| {
                let b = &self.spine.vertebrae[i].bounds;
                b.lo[2] <= z && z <= b.hi[2]
            })
            .collect();
        let mut reach = [f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY];
        for &i in &vertebrae {
            let b = &self.spine.vertebrae[i].bounds;
            reach = [reach[0].min(b.lo[0]), reach[1].max(b.hi[0]), reach[2].min(b.lo[1]), reach[3].max(b.hi[1])];
        }
        let blobs = self.blobs.iter().filter(|b| (z - b.centre[2]).abs() <= b.radii[2]).collect();
        Plane { soft: self.soft_tissue.at_section(&section), blobs, vertebrae, reach }
    }

    /// What the patient point `p` (in `plane`'s height) is. Precedence, highest first:
    /// vertebral body, posterior elements, ribs, disc, canal, dense foci, soft tissue.
    pub fn sample(&self, plane: &Plane<'_>, p: Vec3) -> PointSample {
        if let Some(spine) = self.spine_sample(plane, p) {
            return spine;
        }
        let palette = &self.palette;
        // Soft tissue outlines wander a few mm: organs are not ellipses.
        let warp = |shift: f64| 2.0 * self.texture.at([p[0] / 25.0 + shift, p[1] / 25.0 + shift, p[2] / 25.0 + shift]);
        let (u, v) = plane.soft.uv(p[0] + warp(23.0), p[1] + warp(29.0));
        let (tissue, hu) = plane.soft.classify(u, v, warp(31.0) / 10.0, palette);
        let (mut tissue, mut hu) = self.soft_texture(tissue, hu, p);
        if let Some(blob) = plane.blobs.iter().find(|b| b.contains(p) && (!b.viscera_only || tissue == Tissue::Soft)) {
            (tissue, hu) = (blob.tissue, blob.hu);
        }
        PointSample { tissue, hu, label: 0, body_of: None, fractured: false }
    }

    /// The spine at `p`, if it is there.
    fn spine_sample(&self, plane: &Plane<'_>, p: Vec3) -> Option<PointSample> {
        let [x_lo, x_hi, y_lo, y_hi] = plane.reach;
        if p[0] < x_lo || p[0] > x_hi || p[1] < y_lo || p[1] > y_hi {
            return None;
        }
        // Each vertebra near `p` in its own frame; the nearest body slab owns the body, the
        // disc and the canal here.
        let mut near = [(0usize, [0.0f64; 3]); MAX_NEAR];
        let mut count = 0;
        let mut owner: Option<(usize, Vec3)> = None;
        let mut owner_distance = f64::INFINITY;
        for &i in &plane.vertebrae {
            let placed = &self.spine.vertebrae[i];
            if !placed.bounds.contains(p) || count == MAX_NEAR {
                continue;
            }
            let q = placed.frame.to_local(p);
            near[count] = (i, q);
            count += 1;
            let distance = placed.shape.slab_distance(q);
            if distance < owner_distance {
                owner_distance = distance;
                owner = Some((i, q));
            }
        }
        let near = &near[..count];
        let palette = &self.palette;
        let shape = |i: usize| &self.spine.vertebrae[i].shape;
        let soft = |tissue, hu| Some(PointSample { tissue, hu, label: 0, body_of: None, fractured: false });
        if let Some((i, q)) = owner
            && let Some(body) = shape(i).body(q, &self.texture, palette, self.band_min)
        {
            return Some(PointSample {
                tissue: body.tissue,
                hu: body.hu,
                label: shape(i).level.label(),
                body_of: Some(i),
                fractured: body.fractured,
            });
        }
        if let Some((i, (tissue, hu))) =
            near.iter().find_map(|&(i, q)| Some((i, shape(i).posterior(q, &self.texture, palette)?)))
        {
            return Some(PointSample { tissue, hu, label: shape(i).level.label(), body_of: None, fractured: false });
        }
        if let Some((tissue, hu)) = near.iter().find_map(|&(i, q)| shape(i).rib(q, palette)) {
            return soft(tissue, hu);
        }
        let (i, q) = owner?;
        if let Some(hu) = shape(i).disc(q, palette) {
            return soft(Tissue::Disc, hu);
        }
        let (tissue, hu) = shape(i).canal(q, palette)?;
        soft(tissue, hu)
    }

    /// Soft tissue texture: organs and fat are not flat, muscle is marbled with fat.
    fn soft_texture(&self, tissue: Tissue, hu: f64, p: Vec3) -> (Tissue, f64) {
        let grain = |mm: f64, shift: f64| self.texture.at([p[0] / mm + shift, p[1] / mm + shift, p[2] / mm + shift]);
        match tissue {
            Tissue::Muscle => {
                // Fibres and fat streaks run craniocaudally.
                let streak = self.texture.at([p[0] / 3.5 + 40.0, p[1] / 3.5 + 40.0, p[2] / 14.0 + 40.0]);
                if streak > self.marbling {
                    (Tissue::Fat, self.palette.fat + 8.0 * grain(3.0, 7.0))
                } else {
                    (tissue, hu + 5.0 * grain(3.0, 7.0))
                }
            }
            Tissue::Fat => (tissue, hu + 8.0 * grain(3.0, 11.0)),
            Tissue::Soft | Tissue::Kidney => (tissue, hu + 7.0 * grain(5.0, 13.0)),
            Tissue::Lung => (tissue, hu + 30.0 * grain(2.0, 17.0)),
            Tissue::Blood => (tissue, hu + 3.0 * grain(4.0, 19.0)),
            _ => (tissue, hu),
        }
    }
}

/// The rendered case on its grid, before the scanner's blur and noise.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    /// HU, `[z, y, x]`, each slice the mean of its sub-slices.
    pub ideal: Array3<f32>,
    pub labels: Array3<u8>,
    pub fracture: Mask,
    /// Per vertebra (spine order): box of its body voxels, box of its fracture voxels.
    pub body_boxes: Vec<Option<Box3>>,
    pub fracture_boxes: Vec<Option<Box3>>,
}

/// Running bounding box of voxels, `[z, y, x]` half-open.
#[derive(Debug, Clone, Copy)]
struct Extent {
    min: [usize; 3],
    max: [usize; 3],
}

impl Extent {
    const EMPTY: Extent = Extent { min: [usize::MAX; 3], max: [0; 3] };

    fn add(&mut self, zyx: [usize; 3]) {
        for ((min, max), v) in self.min.iter_mut().zip(&mut self.max).zip(zyx) {
            *min = (*min).min(v);
            *max = (*max).max(v + 1);
        }
    }

    fn to_box(self) -> Option<Box3> {
        Box3::new(self.min, self.max).ok()
    }
}

pub(crate) fn render(model: &CaseModel, grid: &ScanGrid) -> Rendered {
    let [nz, ny, nx] = grid.shape;
    let mut ideal = Array3::<f32>::zeros((nz, ny, nx));
    let mut labels = Array3::<u8>::zeros((nz, ny, nx));
    let mut fracture = Mask::from_elem((nz, ny, nx), false);
    let count = model.spine.vertebrae.len();
    let mut bodies = vec![Extent::EMPTY; count];
    let mut fractures = vec![Extent::EMPTY; count];
    let sub = grid.sub_slices;
    let mut sum = vec![0.0f64; ny * nx];
    for z in 0..nz {
        sum.fill(0.0);
        for k in 0..sub {
            // Sub-slice centres spread evenly across the slice; the middle one is its centre.
            let offset = (k as f64 + 0.5) / sub as f64 - 0.5;
            let plane = model.plane(grid.patient([z as f64 + offset, 0.0, 0.0])[2]);
            let centre = 2 * k + 1 == sub;
            for y in 0..ny {
                for x in 0..nx {
                    let point = model.sample(&plane, grid.patient([z as f64 + offset, y as f64, x as f64]));
                    sum[y * nx + x] += point.hu;
                    if !centre {
                        continue;
                    }
                    labels[[z, y, x]] = point.label;
                    if let Some(i) = point.body_of {
                        bodies[i].add([z, y, x]);
                        if point.fractured {
                            fracture[[z, y, x]] = true;
                            fractures[i].add([z, y, x]);
                        }
                    }
                }
            }
        }
        for y in 0..ny {
            for x in 0..nx {
                ideal[[z, y, x]] = (sum[y * nx + x] / sub as f64) as f32;
            }
        }
    }
    Rendered {
        ideal,
        labels,
        fracture,
        body_boxes: bodies.into_iter().map(Extent::to_box).collect(),
        fracture_boxes: fractures.into_iter().map(Extent::to_box).collect(),
    }
}
