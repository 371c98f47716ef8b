//! Our marching-cubes surface area against scikit-image's (`measure.marching_cubes` and
//! `measure.mesh_surface_area`) on the same volumes: the reference comes from
//! `scripts/py/marching_cubes_reference.py`, run with the Python that `scripts/setup.sh`
//! installs (`FRACMAP_PYTHON`, set for cargo by `.cargo/config.toml`).
//!
//! Ours is the classic table (ambiguous faces always cut the inside corners apart);
//! scikit-image's default, Lewiner's, instead follows the trilinear interpolant and may join
//! them. On smooth surfaces ambiguous cubes are rare and the two agree within a percent; on a
//! noisy mask they make different topologies (Lewiner's area is 12% larger on the one below),
//! so there we compare with scikit-image's classic method, which must agree as closely as the
//! triangulation of the polygons in each cube allows.

mod common;

use std::io::Write;

use fracmap_core::mesh::{SurfaceOptions, isosurface};
use fracmap_core::volume::{Affine, Volume};
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// scikit-image's marching cubes: "lewiner" (its default) or "lorensen" (the classic table).
#[derive(Debug, Clone, Copy)]
enum Method {
    Lewiner,
    Lorensen,
}

/// scikit-image's area (mm²) of the `level` surface of `volume`, on its spacing.
fn skimage_area(volume: &Volume, level: f32, method: Method) -> f64 {
    let mut file = tempfile::NamedTempFile::new().expect("temporary file");
    let bytes: Vec<u8> = volume.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect();
    file.write_all(&bytes).unwrap();
    file.flush().unwrap();

    let [nz, ny, nx] = volume.shape();
    let [sz, sy, sx] = volume.spacing();
    let mut args = vec![file.path().display().to_string()];
    args.extend([nz, ny, nx].map(|n| n.to_string()));
    args.extend([sz, sy, sx].map(|s| s.to_string()));
    args.push(f64::from(level).to_string());
    args.push(format!("{method:?}").to_lowercase());
    let reference = common::run_json_script("marching_cubes_reference.py", &args);
    reference["area"].as_f64().unwrap_or_else(|| panic!("no area in {reference}"))
}

fn assert_area_agrees(volume: &Volume, level: f32, method: Method, tolerance: f64) {
    let ours = isosurface(volume, level, &SurfaceOptions::RAW).area();
    let theirs = skimage_area(volume, level, method);
    let relative = ours / theirs - 1.0;
    assert!(
        relative.abs() < tolerance,
        "area: ours {ours:.2} mm², scikit-image ({method:?}) {theirs:.2} mm² ({:+.2}%)",
        100.0 * relative
    );
}

/// An affine with the given `[z, y, x]` spacing, turned 35 degrees about z and 20 about x,
/// and moved: the area must not depend on where the volume sits or how it is turned.
fn turned_affine(spacing: [f64; 3]) -> Affine {
    let [sz, sy, sx] = spacing;
    let (s1, c1) = 35f64.to_radians().sin_cos();
    let (s2, c2) = 20f64.to_radians().sin_cos();
    // Rotation Rx(20) * Rz(35), columns scaled by the spacing of x, y, z.
    let r = [[c1, -s1, 0.0], [c2 * s1, c2 * c1, -s2], [s2 * s1, s2 * c1, c2]];
    let mut a = [[0.0; 4]; 4];
    for row in 0..3 {
        a[row] = [r[row][0] * sx, r[row][1] * sy, r[row][2] * sz, [-20.0, 5.0, 130.0][row]];
    }
    a[3] = [0.0, 0.0, 0.0, 1.0];
    a
}

#[test]
fn smooth_blobs_on_an_anisotropic_turned_grid() {
    // Two overlapping Gaussian blobs, well inside the grid (scikit-image leaves surfaces
    // open at the border, ours closes them).
    let spacing = [2.0, 0.9, 0.7];
    let data = Array3::from_shape_fn((14, 24, 28), |(z, y, x)| {
        let blob = |c: [f64; 3], w: f64| {
            let d2: f64 = [z, y, x].iter().zip(c).zip(spacing).map(|((&v, c), s)| ((v as f64 - c) * s).powi(2)).sum();
            (-d2 / (2.0 * w * w)).exp()
        };
        (blob([6.0, 10.0, 12.0], 4.0) + 0.8 * blob([7.5, 14.0, 16.0], 3.0)) as f32
    });
    let volume = Volume::new(data, spacing, turned_affine(spacing)).unwrap();
    assert_area_agrees(&volume, 0.3, Method::Lewiner, 0.01);
}

#[test]
fn noisy_binary_mask_with_many_ambiguous_cubes() {
    // A ball with a fifth of its voxels flipped at random near the surface: thin bridges,
    // holes and checkerboard faces.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let data = Array3::from_shape_fn((20, 20, 20), |(z, y, x)| {
        let d = [z, y, x].iter().map(|&v| (v as f64 - 9.5).powi(2)).sum::<f64>().sqrt();
        let inside = d < 6.5;
        let flip = (d - 6.5).abs() < 2.0 && rng.random_bool(0.2);
        f32::from(u8::from(inside != flip))
    });
    let volume = Volume::with_spacing(data, [1.0, 1.0, 1.0]).unwrap();
    assert_area_agrees(&volume, 0.5, Method::Lorensen, 0.01);
}
