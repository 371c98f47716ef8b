//! The spine CT phantom: a thoracolumbar CT whose truth is known voxel by voxel, for
//! training and testing without patient data.
//!
//! One call, [`generate_case`], draws a patient (size, bone density, spine curve, soft
//! tissue, contrast), breaks some vertebrae (wedge, biconcave, crush; Genant graded), adds
//! what is not a fracture but looks suspicious (Schmorl's nodes, mildly wedged bodies,
//! calcified plaques, dense foci, streaks), scans it (anisotropic spacing, slice profile,
//! point spread, noise) and returns the CT with its vertebra label map, the fracture mask
//! (the disrupted bone only) and per-vertebra truth. The same parameters and seed give the
//! same case, bit for bit.
//!
//! Anatomy is drawn in millimetres and sampled on the scan's grid, so the spacing changes
//! the voxels, not the patient. Arrays are `[z, y, x]`: z runs caudal to cranial (slice 0 is
//! the lowest), y anterior to posterior, x from the patient's right to left; the affine maps
//! voxels to RAS millimetres with the signs a real scanner writes.
//!
//! Modules, one concept each: `anatomy` (a vertebra, its discs, canal and ribs), `spine`
//! (the vertebrae stacked along the curve), `soft_tissue` (everything around the spine),
//! `fracture` (deformations and their truth), `confounders` (normal variants, dense foci),
//! `tissue` (tissue classes and HU), `scanner` (grid, blur, noise, artefacts), `render`
//! (millimetres to voxels), `noise` (random streams, texture), `space` (vectors, frames,
//! boxes).

mod anatomy;
mod confounders;
mod fracture;
mod noise;
mod render;
mod scanner;
mod soft_tissue;
mod space;
mod spine;
mod tissue;

use fracmap_core::Volume;
use fracmap_core::geometry::{Box3, Mask};
use ndarray::Array3;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use confounders::NormalVariant;
pub use fracture::{FractureKind, FractureTruth, Genant};

use crate::levels::Level;
use anatomy::{FIRST_LABEL, LAST_LABEL, VertebraShape};
use fracture::{Fracture, fracture_probability};
use noise::{Stream, ValueNoise, normal, stream, upper_quantile};
use render::{CaseModel, render};
use scanner::{Scanner, ScannerRanges};
use soft_tissue::SoftTissue;
use spine::{Curve, Spine};
use tissue::Palette;

/// What kind of cases to draw. Ranges are `(low, high)`, drawn uniformly per case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhantomParams {
    /// Most cranial and most caudal vertebra drawn (T1..L6; default T4..L5, the method's).
    pub first: Level,
    pub last: Level,
    /// Voxels along y and along x.
    pub in_plane: usize,
    /// In-plane spacing, mm.
    pub in_plane_spacing_mm: (f64, f64),
    /// Slice spacing (= thickness), mm.
    pub slice_spacing_mm: (f64, f64),
    /// Mean probability that a vertebra is fractured (higher at T12-L1 and T7-T8).
    pub fracture_rate: f64,
    /// No fractures at all (normal variants stay): cases for the VAE.
    pub normal_only: bool,
    /// Probability that an unfractured vertebra has a normal variant.
    pub variant_rate: f64,
    /// Probability that the patient is osteoporotic (trabecular bone 70..140 HU instead of
    /// 175..300, thinner cortex, more kyphosis).
    pub osteoporosis_rate: f64,
    /// Probability of a contrast-enhanced scan (arterial or portal venous).
    pub contrast_rate: f64,
    /// Noise standard deviation, HU.
    pub noise_hu: (f64, f64),
    /// Beam-hardening cupping in every case, streaks (from a clip, through a body) in some.
    pub artefacts: bool,
}

impl Default for PhantomParams {
    fn default() -> Self {
        PhantomParams {
            first: Level::from_label(11).expect("T4"),
            last: Level::from_label(24).expect("L5"),
            in_plane: 160,
            in_plane_spacing_mm: (0.6, 0.9),
            slice_spacing_mm: (1.0, 3.0),
            fracture_rate: 0.15,
            normal_only: false,
            variant_rate: 0.08,
            osteoporosis_rate: 0.4,
            contrast_rate: 0.5,
            noise_hu: (10.0, 40.0),
            artefacts: true,
        }
    }
}

/// The narrowest field of view that holds the bodies of a curved T4..L5 spine, mm.
const MIN_FIELD_MM: f64 = 90.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PhantomError {
    #[error("levels {first}..{last}: the phantom draws T1..L6, the first level cranial to or at the last")]
    Levels { first: Level, last: Level },
    #[error("{name} {low}..{high}: needs finite values, {min} <= low <= high <= {max}")]
    Range { name: &'static str, low: f64, high: f64, min: f64, max: f64 },
    #[error("{name} {value}: a probability must be within 0..=1")]
    Probability { name: &'static str, value: f64 },
    #[error(
        "field of view {field_mm:.0} mm ({in_plane} voxels of {spacing_mm} mm): needs at least {MIN_FIELD_MM} mm to hold the vertebral bodies"
    )]
    FieldOfView { field_mm: f64, in_plane: usize, spacing_mm: f64 },
    #[error("seed {seed}: {level} is out of the {field_mm:.0} mm field of view; use a wider field or another seed")]
    OutOfView { seed: u64, level: Level, field_mm: f64 },
}

impl PhantomParams {
    pub fn validate(&self) -> Result<(), PhantomError> {
        let (first, last) = (self.first.label(), self.last.label());
        if first < FIRST_LABEL || last > LAST_LABEL || first > last {
            return Err(PhantomError::Levels { first: self.first, last: self.last });
        }
        let range = |name, (low, high): (f64, f64), min: f64, max: f64| {
            if low.is_finite() && high.is_finite() && min <= low && low <= high && high <= max {
                Ok(())
            } else {
                Err(PhantomError::Range { name, low, high, min, max })
            }
        };
        range("in_plane_spacing_mm", self.in_plane_spacing_mm, 0.2, 5.0)?;
        range("slice_spacing_mm", self.slice_spacing_mm, 0.2, 6.0)?;
        range("noise_hu", self.noise_hu, 0.0, 500.0)?;
        for (name, value) in [
            ("fracture_rate", self.fracture_rate),
            ("variant_rate", self.variant_rate),
            ("osteoporosis_rate", self.osteoporosis_rate),
            ("contrast_rate", self.contrast_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(PhantomError::Probability { name, value });
            }
        }
        let field_mm = self.in_plane as f64 * self.in_plane_spacing_mm.0;
        if field_mm < MIN_FIELD_MM {
            return Err(PhantomError::FieldOfView {
                field_mm,
                in_plane: self.in_plane,
                spacing_mm: self.in_plane_spacing_mm.0,
            });
        }
        Ok(())
    }
}

/// One generated case.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomCase {
    /// HU (integers stored as f32), `[z, y, x]`, anisotropic spacing, RAS affine.
    pub ct: Volume,
    /// VerSe label value of the vertebra (body and posterior elements) at each voxel, 0
    /// elsewhere (ribs included).
    pub vertebra_labels: Array3<u8>,
    /// The truth: the disrupted bone of every fracture (sclerotic band, broken cortex).
    pub fracture_mask: Mask,
    /// Cranial to caudal, `first..=last`.
    pub vertebrae: Vec<PhantomVertebra>,
    /// Whether the patient's bone is osteoporotic.
    pub osteoporotic: bool,
}

/// One vertebra of a case.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomVertebra {
    pub level: Level,
    /// Bounding box of the body's voxels (posterior elements excluded), `[z, y, x]`.
    pub body_box: Box3,
    pub fracture: Option<FractureTruth>,
    pub variant: Option<NormalVariant>,
}

/// A case drawn in millimetres, before it is rendered.
struct Drawn {
    model: CaseModel,
    scanner: Scanner,
    variants: Vec<Option<NormalVariant>>,
    osteoporotic: bool,
}

/// Draws a patient, their fractures and variants, and the scan.
fn draw(params: &PhantomParams, seed: u64) -> Drawn {
    let mut patient = stream(seed, Stream::Patient);
    let osteoporotic = patient.random::<f64>() < params.osteoporosis_rate;
    let palette = Palette::sample(&mut patient, osteoporotic, params.contrast_rate);
    let scale = 1.0 + 0.05 * normal(&mut patient).clamp(-2.0, 2.0);
    let curve = Curve::sample(&mut patient, osteoporotic);
    let texture = ValueNoise::new(&mut patient);
    let mut shapes = Vec::new();
    let mut variants = Vec::new();
    for level in Level::range(params.first, params.last) {
        let label = level.label();
        let mut shape = VertebraShape::sample(level, scale, &palette, &mut stream(seed, Stream::Vertebra(label)));
        let mut breaking = stream(seed, Stream::Fracture(label));
        let fractured = breaking.random::<f64>() < fracture_probability(params.fracture_rate, label);
        let fracture = Fracture::sample(&mut breaking);
        let fractured = fractured && !params.normal_only;
        let variant_rate = if fractured { 0.0 } else { params.variant_rate };
        variants.push(confounders::apply_variant(&mut stream(seed, Stream::Variant(label)), variant_rate, &mut shape));
        if fractured {
            fracture.apply(&mut shape);
        }
        shapes.push(shape);
    }
    let spine = Spine::assemble(shapes, &curve);
    let mut surroundings = stream(seed, Stream::SoftTissue);
    let soft_tissue = SoftTissue::sample(&mut surroundings, osteoporotic);
    let mut scanning = stream(seed, Stream::Scanner);
    let clip = params.artefacts && scanning.random::<f64>() < 0.3;
    let blobs = confounders::sample_blobs(&mut surroundings, &spine, &soft_tissue, osteoporotic, clip);
    let ranges = ScannerRanges {
        in_plane: params.in_plane,
        in_plane_spacing: params.in_plane_spacing_mm,
        slice_spacing: params.slice_spacing_mm,
        noise: params.noise_hu,
        artefacts: params.artefacts,
    };
    let scanner = Scanner::sample(&mut scanning, &ranges, &spine, &blobs);
    let band_min = (1.1 * scanner.grid.spacing[0]).max(3.2);
    let marbling = upper_quantile(palette.muscle_fat);
    let model = CaseModel { spine, soft_tissue, blobs, palette, texture, band_min, marbling };
    Drawn { model, scanner, variants, osteoporotic }
}

/// Generates one case. Same `params` and `seed`, same case; each vertebra, its fracture and
/// its variant draw from their own random streams, so a case drawn with `normal_only` shows
/// the same patient as without.
pub fn generate_case(params: &PhantomParams, seed: u64) -> Result<PhantomCase, PhantomError> {
    params.validate()?;
    let drawn = draw(params, seed);
    let grid = &drawn.scanner.grid;
    let rendered = render(&drawn.model, grid);
    let out_of_view = |level| PhantomError::OutOfView { seed, level, field_mm: grid.shape[2] as f64 * grid.spacing[2] };
    let mut vertebrae = Vec::new();
    for (i, placed) in drawn.model.spine.vertebrae.iter().enumerate() {
        let level = placed.shape.level;
        let body_box = rendered.body_boxes[i].ok_or_else(|| out_of_view(level))?;
        let fracture = match &placed.shape.fracture {
            Some(f) => {
                let fracture_box = rendered.fracture_boxes[i].ok_or_else(|| out_of_view(level))?;
                Some(FractureTruth {
                    kind: f.kind,
                    grade: f.grade,
                    height_loss: f.loss,
                    fracture_box,
                    z_range: fracture_box.slice_range(),
                })
            }
            None => None,
        };
        vertebrae.push(PhantomVertebra { level, body_box, fracture, variant: drawn.variants[i] });
    }
    let mut image = rendered.ideal;
    drawn.scanner.apply(&mut image, &mut stream(seed, Stream::Noise));
    let ct = Volume::new(image, grid.spacing, grid.affine)
        .expect("the scan grid has positive spacing and an invertible affine");
    Ok(PhantomCase {
        ct,
        vertebra_labels: rendered.labels,
        fracture_mask: rendered.fracture,
        vertebrae,
        osteoporotic: drawn.osteoporotic,
    })
}

#[cfg(test)]
mod tests {
    use fracmap_core::geometry::{SliceRange, bounding_box};
    use ndarray::Zip;

    use super::render::Rendered;
    use super::space::{CRANIAL, Frame};
    use super::tissue::Tissue;
    use super::*;

    /// A few levels on coarse voxels: quick, and still a 96 mm field of view.
    fn coarse(first: &str, last: &str) -> PhantomParams {
        PhantomParams {
            first: first.parse().unwrap(),
            last: last.parse().unwrap(),
            in_plane: 48,
            in_plane_spacing_mm: (2.0, 2.2),
            slice_spacing_mm: (2.0, 3.0),
            ..PhantomParams::default()
        }
    }

    fn median(mut values: Vec<f32>) -> f32 {
        assert!(!values.is_empty());
        values.sort_by(f32::total_cmp);
        values[values.len() / 2]
    }

    /// What each voxel centre of a drawn case is, by the known geometry.
    fn truth(drawn: &Drawn) -> Array3<(Tissue, bool)> {
        let grid = &drawn.scanner.grid;
        let planes: Vec<_> =
            (0..grid.shape[0]).map(|z| drawn.model.plane(grid.patient([z as f64, 0.0, 0.0])[2])).collect();
        Array3::from_shape_fn(grid.shape, |(z, y, x)| {
            let point = drawn.model.sample(&planes[z], grid.patient([z as f64, y as f64, x as f64]));
            (point.tissue, point.body_of.is_some())
        })
    }

    /// CT values of the voxels of `class` whose four in-plane neighbours, and the two
    /// through-plane ones when `through` is set, are of the same class.
    fn interior(ct: &Volume, classes: &Array3<(Tissue, bool)>, class: (Tissue, bool), through: bool) -> Vec<f32> {
        let [nz, ny, nx] = ct.shape();
        let mut values = Vec::new();
        for z in 1..nz - 1 {
            for y in 1..ny - 1 {
                for x in 1..nx - 1 {
                    let in_plane = [[z, y, x], [z, y - 1, x], [z, y + 1, x], [z, y, x - 1], [z, y, x + 1]];
                    let same = in_plane.iter().all(|&i| classes[i] == class)
                        && (!through || (classes[[z - 1, y, x]] == class && classes[[z + 1, y, x]] == class));
                    if same {
                        values.push(ct.data()[[z, y, x]]);
                    }
                }
            }
        }
        values
    }

    /// Body height along the vertebra's own axis through `(a, b)`, read from a label map:
    /// the run of `label` voxels (nearest voxel, 0.1 mm steps) either side of the centre.
    fn labelled_height(rendered: &Rendered, grid: &scanner::ScanGrid, frame: &Frame, a: f64, b: f64, label: u8) -> f64 {
        let at = |c: f64| {
            let v = grid.voxel(frame.to_patient([a, b, c]));
            let index: Option<Vec<usize>> = v
                .iter()
                .zip(grid.shape)
                .map(|(&i, n)| (i.round() >= 0.0 && (i.round() as usize) < n).then_some(i.round() as usize))
                .collect();
            index.is_some_and(|i| rendered.labels[[i[0], i[1], i[2]]] == label)
        };
        assert!(at(0.0), "the body centre carries its label");
        let run = |step: f64| (1..).map(|k| k as f64 * step).find(|&c| !at(c)).unwrap() - 0.5 * step;
        run(0.1) - run(-0.1)
    }

    #[test]
    fn the_same_seed_gives_the_same_case_and_another_seed_another() {
        let params = coarse("T11", "L1");
        let case = generate_case(&params, 7).unwrap();
        assert_eq!(case, generate_case(&params, 7).unwrap());
        let other = generate_case(&params, 8).unwrap();
        assert_ne!(case.ct, other.ct);
        assert_ne!(case.vertebra_labels, other.vertebra_labels);
    }

    #[test]
    fn the_grid_is_anisotropic_within_its_ranges_and_the_affine_is_ras() {
        let params = coarse("T12", "L2");
        let case = generate_case(&params, 3).unwrap();
        let [sz, sy, sx] = case.ct.spacing();
        assert!((2.0..=3.0).contains(&sz) && (2.0..=2.2).contains(&sx) && sx == sy, "{sz} {sy} {sx}");
        let a = case.ct.affine();
        // x runs to the patient's left and y to posterior: RAS decreases along both.
        assert!(a[0][0] == -sx && a[1][1] == -sy && a[2][2] == sz);
        assert_eq!(case.ct.shape()[1..], [48, 48]);
        // Integers in the stored CT range.
        assert!(case.ct.as_slice().iter().all(|v| v.fract() == 0.0 && (-1024.0..=3071.0).contains(v)));
    }

    #[test]
    fn fracture_masks_are_bone_of_their_vertebra_inside_its_body_box() {
        let params = PhantomParams { fracture_rate: 1.0, ..coarse("T12", "L2") };
        for seed in 0..3 {
            let case = generate_case(&params, seed).unwrap();
            let shape = case.fracture_mask.raw_dim();
            let mut explained = 0;
            for v in &case.vertebrae {
                let truth = v.fracture.as_ref().expect("rate 1 breaks every vertebra");
                let label = v.level.label();
                let mine = Mask::from_shape_fn(shape, |i| case.fracture_mask[i] && case.vertebra_labels[i] == label);
                assert_eq!(bounding_box(&mine), Some(truth.fracture_box), "{}", v.level);
                let b = truth.fracture_box;
                assert_eq!(truth.z_range, SliceRange::new(b.min()[0], b.max()[0]).unwrap());
                assert_eq!(b.intersect(&v.body_box), Some(b), "{}: fracture box inside the body box", v.level);
                let body_voxels = case.vertebra_labels.iter().filter(|&&l| l == label).count();
                let broken = mine.iter().filter(|&&m| m).count();
                assert!(
                    broken * 2 < body_voxels,
                    "{}: the band, not the vertebra ({broken} of {body_voxels})",
                    v.level
                );
                assert_eq!(Genant::from_height_loss(truth.height_loss), Some(truth.grade));
                explained += broken;
            }
            // Every mask voxel is labelled with the vertebra it breaks.
            assert_eq!(explained, case.fracture_mask.iter().filter(|&&m| m).count());
        }
    }

    #[test]
    fn normal_only_cases_have_no_fracture_and_show_the_same_patient() {
        let broken = PhantomParams { fracture_rate: 1.0, variant_rate: 0.0, ..coarse("T12", "L1") };
        let normal = PhantomParams { normal_only: true, ..broken.clone() };
        let case = generate_case(&normal, 4).unwrap();
        assert!(case.fracture_mask.iter().all(|&m| !m));
        assert!(case.vertebrae.iter().all(|v| v.fracture.is_none()));
        let (a, b) = (draw(&broken, 4), draw(&normal, 4));
        for (x, y) in a.model.spine.vertebrae.iter().zip(&b.model.spine.vertebrae) {
            assert!(x.shape.fracture.is_some() && y.shape.fracture.is_none());
            assert_eq!((x.shape.width, x.shape.intact_height), (y.shape.width, y.shape.intact_height));
        }
    }

    #[test]
    fn tissues_read_realistic_hounsfield_units() {
        let params = PhantomParams {
            first: "T11".parse().unwrap(),
            last: "L1".parse().unwrap(),
            in_plane: 112,
            in_plane_spacing_mm: (0.82, 0.82),
            osteoporosis_rate: 0.0,
            fracture_rate: 1.0,
            ..PhantomParams::default()
        };
        // A thin-slice and a thick-slice scan.
        for seed in [0, 2] {
            let drawn = draw(&params, seed);
            let classes = truth(&drawn);
            let case = generate_case(&params, seed).unwrap();
            let hu = |tissue, body| median(interior(&case.ct, &classes, (tissue, body), true));
            let trabecular = hu(Tissue::Trabecular, true);
            assert!((150.0..=350.0).contains(&trabecular), "seed {seed}: trabecular {trabecular}");
            // The band may be a slice thick: its in-plane interior.
            let sclerotic = median(interior(&case.ct, &classes, (Tissue::Sclerotic, true), false));
            assert!(sclerotic > trabecular + 100.0, "seed {seed}: sclerotic band {sclerotic}");
            let disc = hu(Tissue::Disc, false);
            assert!((40.0..=120.0).contains(&disc), "seed {seed}: disc {disc}");
            let fat = hu(Tissue::Fat, false);
            assert!((-140.0..=-60.0).contains(&fat), "seed {seed}: fat {fat}");
            let muscle = hu(Tissue::Muscle, false);
            assert!((20.0..=80.0).contains(&muscle), "seed {seed}: muscle {muscle}");
            let lung = hu(Tissue::Lung, false);
            assert!((-950.0..=-750.0).contains(&lung), "seed {seed}: lung {lung}");
            // The shell is thinner than a voxel: every voxel whose centre is in it.
            let shell: Vec<f32> = Zip::from(case.ct.data()).and(&classes).fold(Vec::new(), |mut acc, &v, &c| {
                if c == (Tissue::Cortex, true) {
                    acc.push(v);
                }
                acc
            });
            let cortex = median(shell);
            assert!((650.0..=1300.0).contains(&cortex), "seed {seed}: cortex {cortex}");
        }
    }

    #[test]
    fn the_patient_lies_in_air() {
        // A 240 mm field of view always reaches past the skin of the back.
        let params = PhantomParams { in_plane: 80, in_plane_spacing_mm: (3.0, 3.0), ..coarse("L2", "L3") };
        let drawn = draw(&params, 5);
        let case = generate_case(&params, 5).unwrap();
        let air = interior(&case.ct, &truth(&drawn), (Tissue::Air, false), true);
        assert!(air.len() > 100, "{} air voxels", air.len());
        let hu = median(air);
        assert!(hu < -950.0, "air {hu}");
    }

    #[test]
    fn vertebral_bodies_grow_caudally() {
        let params = PhantomParams { normal_only: true, variant_rate: 0.0, ..coarse("T4", "L5") };
        let drawn = draw(&params, 11);
        let rendered = render(&drawn.model, &drawn.scanner.grid);
        let heights: Vec<(f64, f64)> = drawn
            .model
            .spine
            .vertebrae
            .iter()
            .map(|v| {
                let label = v.shape.level.label();
                (f64::from(label), labelled_height(&rendered, &drawn.scanner.grid, &v.frame, 0.0, 0.0, label))
            })
            .collect();
        let n = heights.len() as f64;
        let (mx, my) = (heights.iter().map(|h| h.0).sum::<f64>() / n, heights.iter().map(|h| h.1).sum::<f64>() / n);
        let slope = heights.iter().map(|h| (h.0 - mx) * (h.1 - my)).sum::<f64>()
            / heights.iter().map(|h| (h.0 - mx).powi(2)).sum::<f64>();
        assert!(slope > 0.4, "{slope:.2} mm per level: {heights:?}");
        assert!(heights[heights.len() - 1].1 > heights[0].1 + 5.0, "{heights:?}");
    }

    #[test]
    fn the_label_map_shows_the_height_loss_the_grade_says() {
        let broken = PhantomParams {
            first: "T12".parse().unwrap(),
            last: "L1".parse().unwrap(),
            in_plane: 96,
            in_plane_spacing_mm: (1.0, 1.0),
            slice_spacing_mm: (0.6, 0.6),
            fracture_rate: 1.0,
            variant_rate: 0.0,
            ..PhantomParams::default()
        };
        let intact = PhantomParams { normal_only: true, ..broken.clone() };
        for seed in [1, 2, 3] {
            let (a, b) = (draw(&broken, seed), draw(&intact, seed));
            let (ra, rb) = (render(&a.model, &a.scanner.grid), render(&b.model, &b.scanner.grid));
            for (x, y) in a.model.spine.vertebrae.iter().zip(&b.model.spine.vertebrae) {
                let fracture = x.shape.fracture.as_ref().unwrap();
                // The column where Genant reads this kind: anterior for a wedge, else middle.
                let column = if fracture.kind == FractureKind::Wedge { 2.5 - 0.5 * y.shape.depth } else { 0.0 };
                let label = x.shape.level.label();
                let measured = 1.0
                    - labelled_height(&ra, &a.scanner.grid, &x.frame, 0.0, column, label)
                        / labelled_height(&rb, &b.scanner.grid, &y.frame, 0.0, column, label);
                let drawn = 1.0 - x.shape.column_height(0.0, column) / y.shape.column_height(0.0, column);
                assert!(
                    (measured - drawn).abs() < 0.05,
                    "seed {seed} {} {:?}: measured {measured:.3}, drawn {drawn:.3}",
                    x.shape.level,
                    fracture.kind
                );
                assert_eq!(Genant::from_height_loss(fracture.loss), Some(fracture.grade));
                // The frame's axis is the body's: the intact column is as tall as drawn.
                assert!(y.frame.axes[CRANIAL][2] > 0.8);
            }
        }
    }

    #[test]
    fn bad_parameters_are_refused_with_a_reason() {
        let params =
            PhantomParams { first: "L2".parse().unwrap(), last: "T12".parse().unwrap(), ..PhantomParams::default() };
        assert!(matches!(params.validate(), Err(PhantomError::Levels { .. })));
        let params = PhantomParams { fracture_rate: 1.5, ..PhantomParams::default() };
        assert_eq!(params.validate(), Err(PhantomError::Probability { name: "fracture_rate", value: 1.5 }));
        let params = PhantomParams { in_plane: 64, ..PhantomParams::default() };
        assert!(matches!(generate_case(&params, 1), Err(PhantomError::FieldOfView { .. })));
        let params = PhantomParams { slice_spacing_mm: (3.0, 1.0), ..PhantomParams::default() };
        assert!(matches!(params.validate(), Err(PhantomError::Range { name: "slice_spacing_mm", .. })));
        assert_eq!(PhantomParams::default().validate(), Ok(()));
    }
}
