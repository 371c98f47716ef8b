//! Surfaces of volumes as triangle meshes in world millimetres: marching cubes with shared
//! vertices, vertex normals, Taubin smoothing, vertex-clustering decimation, and the
//! measures (closed or not, enclosed volume, area) that say whether a mesh is right.
//!
//! Marching cubes (Lorensen and Cline, 1987) with its 256-case table derived once at start-up
//! from the contour on each cube face instead of typed in: on a face whose diagonal corners
//! are both inside (the ambiguous case) the inside corners are always cut apart, as in the
//! classic table (scikit-image's `method="lorensen"` makes as many triangles on a noisy
//! mask). The rule depends on a face's four corners only, so the two cubes that share a face
//! cut it the same way, and each polygon is fanned from a corner whose diagonals stay off the
//! cube's faces, so no two cubes draw the same diagonal: the surface has no cracks, and every
//! mesh edge is shared by exactly two triangles, once each way (tested on random volumes).
//!
//! Conventions: a voxel is inside when its value is `>= level` (NaN is outside). Vertices
//! lie on grid edges, placed by linear interpolation between voxel centres, so a binary
//! mask at level 0.5 gets its surface half a voxel outside its outer voxel centres. The
//! volume is taken as surrounded by outside voxels, so a region that touches the border is
//! closed there too, half a voxel beyond the last voxel centre. Triangles wind
//! counter-clockwise seen from outside, and normals point outwards (towards lower values),
//! whatever the handedness of the affine.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use crate::volume::Volume;

/// A triangle mesh. Positions are in world millimetres (RAS+) after [`isosurface`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    pub positions: Vec<[f32; 3]>,
    /// Unit vertex normals, pointing out of the enclosed region.
    pub normals: Vec<[f32; 3]>,
    /// Vertex indices, counter-clockwise seen from outside.
    pub triangles: Vec<[u32; 3]>,
}

/// What to do with a surface after marching cubes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SurfaceOptions {
    /// Taubin smoothing passes (each a shrink and an inflate step); 0: none.
    pub smoothing_iterations: usize,
    /// Vertex clustering on a grid of cubes of this side in mm; `None`: no decimation.
    pub decimation_cell_mm: Option<f64>,
}

impl SurfaceOptions {
    /// The surface as marching cubes makes it: no smoothing, no decimation.
    pub const RAW: SurfaceOptions = SurfaceOptions { smoothing_iterations: 0, decimation_cell_mm: None };
}

impl Default for SurfaceOptions {
    /// Ten Taubin passes take the voxel staircase off a CT surface without shrinking it.
    fn default() -> Self {
        SurfaceOptions { smoothing_iterations: 10, decimation_cell_mm: None }
    }
}

/// The surface where `volume` crosses `level` (inside: `>= level`), in world mm: marching
/// cubes, then the smoothing and decimation of `options`, then normals.
pub fn isosurface(volume: &Volume, level: f32, options: &SurfaceOptions) -> Mesh {
    let mut mesh = marching_cubes(volume, level);
    mesh.smooth(options.smoothing_iterations);
    if let Some(cell_mm) = options.decimation_cell_mm {
        mesh = mesh.decimate(cell_mm);
    }
    mesh
}

impl Mesh {
    pub fn is_empty(&self) -> bool {
        self.triangles.is_empty()
    }

    /// Total triangle area, mm².
    pub fn area(&self) -> f64 {
        self.triangles.iter().map(|t| norm(self.corners(t).cross_of_edges()) / 2.0).sum()
    }

    /// The volume the surface encloses, mm³, by the divergence theorem: the sum over
    /// triangles of the signed volumes of the tetrahedra they make with the origin. Positive
    /// for a closed mesh wound counter-clockwise seen from outside.
    pub fn enclosed_volume(&self) -> f64 {
        self.triangles
            .iter()
            .map(|t| {
                let Corners([a, b, c]) = self.corners(t);
                dot(a, cross(b, c)) / 6.0
            })
            .sum()
    }

    /// Whether the mesh is closed and consistently wound: every edge is used by exactly two
    /// triangles, once in each direction.
    pub fn is_closed(&self) -> bool {
        let mut directed: Vec<(u32, u32)> =
            self.triangles.iter().flat_map(|&[a, b, c]| [(a, b), (b, c), (c, a)]).collect();
        directed.sort_unstable();
        let unique = directed.windows(2).all(|w| w[0] != w[1]);
        unique && directed.iter().all(|&(a, b)| directed.binary_search(&(b, a)).is_ok())
    }

    /// Smallest and largest coordinates of the vertices, mm; `None` without vertices.
    pub fn bounds(&self) -> Option<([f32; 3], [f32; 3])> {
        let first = *self.positions.first()?;
        Some(self.positions.iter().fold((first, first), |(lo, hi), p| {
            (std::array::from_fn(|k| lo[k].min(p[k])), std::array::from_fn(|k| hi[k].max(p[k])))
        }))
    }

    /// Taubin's smoothing (Taubin 1995, "A signal processing approach to fair surface
    /// design"): each pass moves every vertex towards the mean of its neighbours by
    /// λ = 0.5, then away by μ = -0.53, which removes the voxel staircase without the
    /// shrinking of plain Laplacian smoothing. Topology is unchanged; normals are recomputed.
    pub fn smooth(&mut self, iterations: usize) {
        const LAMBDA: f64 = 0.5;
        const MU: f64 = -0.53;
        if iterations == 0 || self.is_empty() {
            return;
        }
        let neighbours = Neighbours::of(self);
        let mut positions: Vec<[f64; 3]> = self.positions.iter().map(|p| p.map(f64::from)).collect();
        for _ in 0..iterations {
            for factor in [LAMBDA, MU] {
                positions = neighbours.laplacian_step(&positions, factor);
            }
        }
        self.positions = positions.iter().map(|p| p.map(|v| v as f32)).collect();
        self.compute_normals();
    }

    /// A coarser mesh by vertex clustering (Rossignac and Borrel, 1993): the vertices in each
    /// cube of a grid of side `cell_mm` merge into one at their mean, triangles that lose a
    /// corner that way go, and so do repeated ones. Fast and good enough for a picture or a
    /// viewer; it may leave non-manifold edges where thin parts collapse.
    pub fn decimate(&self, cell_mm: f64) -> Mesh {
        let mut cell_of_key: HashMap<[i64; 3], u32> = HashMap::new();
        let mut sums: Vec<([f64; 3], f64)> = Vec::new();
        let cluster: Vec<u32> = self
            .positions
            .iter()
            .map(|p| {
                let key = p.map(|v| (f64::from(v) / cell_mm).floor() as i64);
                let id = *cell_of_key.entry(key).or_insert_with(|| {
                    sums.push(([0.0; 3], 0.0));
                    (sums.len() - 1) as u32
                });
                let (sum, n) = &mut sums[id as usize];
                (0..3).for_each(|k| sum[k] += f64::from(p[k]));
                *n += 1.0;
                id
            })
            .collect();
        let mut seen = HashSet::new();
        let triangles = self
            .triangles
            .iter()
            .map(|t| t.map(|v| cluster[v as usize]))
            .filter(|&[a, b, c]| a != b && b != c && c != a)
            .filter(|&t| seen.insert(rotate_smallest_first(t)))
            .collect();
        let positions = sums.iter().map(|(sum, n)| sum.map(|s| (s / n) as f32)).collect();
        let mut mesh = Mesh { positions, normals: Vec::new(), triangles };
        mesh.drop_unused_vertices();
        mesh.compute_normals();
        mesh
    }

    /// Area-weighted vertex normals, unit length; a vertex whose triangles have no area gets
    /// +z, so that every normal is a unit vector as file formats require.
    fn compute_normals(&mut self) {
        let mut sums = vec![[0.0f64; 3]; self.positions.len()];
        for t in &self.triangles {
            let n = self.corners(t).cross_of_edges();
            for &v in t {
                (0..3).for_each(|k| sums[v as usize][k] += n[k]);
            }
        }
        self.normals = sums
            .iter()
            .map(|n| {
                let length = norm(*n);
                if length > 0.0 { n.map(|v| (v / length) as f32) } else { [0.0, 0.0, 1.0] }
            })
            .collect();
    }

    fn drop_unused_vertices(&mut self) {
        let mut new_index = vec![u32::MAX; self.positions.len()];
        let mut positions = Vec::new();
        for t in &mut self.triangles {
            for v in t.iter_mut() {
                if new_index[*v as usize] == u32::MAX {
                    new_index[*v as usize] = positions.len() as u32;
                    positions.push(self.positions[*v as usize]);
                }
                *v = new_index[*v as usize];
            }
        }
        self.positions = positions;
    }

    fn corners(&self, t: &[u32; 3]) -> Corners {
        Corners(t.map(|v| self.positions[v as usize].map(f64::from)))
    }
}

/// A triangle's corners in f64.
struct Corners([[f64; 3]; 3]);

impl Corners {
    /// `(b - a) x (c - a)`: along the normal, twice the area long.
    fn cross_of_edges(&self) -> [f64; 3] {
        let [a, b, c] = self.0;
        cross(sub(b, a), sub(c, a))
    }
}

/// The same triangle (same winding) starting at its smallest index, to spot repeats.
fn rotate_smallest_first([a, b, c]: [u32; 3]) -> [u32; 3] {
    if a <= b && a <= c {
        [a, b, c]
    } else if b <= c {
        [b, c, a]
    } else {
        [c, a, b]
    }
}

/// Each vertex's neighbours along mesh edges, compressed rows.
struct Neighbours {
    start: Vec<usize>,
    list: Vec<u32>,
}

impl Neighbours {
    fn of(mesh: &Mesh) -> Self {
        let mut pairs: Vec<(u32, u32)> =
            mesh.triangles.iter().flat_map(|&[a, b, c]| [(a, b), (b, a), (b, c), (c, b), (c, a), (a, c)]).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut start = vec![0; mesh.positions.len() + 1];
        for &(a, _) in &pairs {
            start[a as usize + 1] += 1;
        }
        for v in 0..mesh.positions.len() {
            start[v + 1] += start[v];
        }
        Neighbours { start, list: pairs.into_iter().map(|(_, b)| b).collect() }
    }

    /// Every vertex moved by `factor` times (mean of its neighbours - itself).
    fn laplacian_step(&self, positions: &[[f64; 3]], factor: f64) -> Vec<[f64; 3]> {
        positions
            .iter()
            .enumerate()
            .map(|(v, p)| {
                let around = &self.list[self.start[v]..self.start[v + 1]];
                if around.is_empty() {
                    return *p;
                }
                let mut mean = [0.0; 3];
                for &n in around {
                    (0..3).for_each(|k| mean[k] += positions[n as usize][k] / around.len() as f64);
                }
                std::array::from_fn(|k| p[k] + factor * (mean[k] - p[k]))
            })
            .collect()
    }
}

/// Marching cubes over the whole grid and one layer of outside voxels around it, positions
/// mapped to world mm, normals computed.
fn marching_cubes(volume: &Volume, level: f32) -> Mesh {
    let [nz, ny, nx] = volume.shape();
    let data = volume.data();
    // Padded corner grid: corner (Z, Y, X) is voxel (Z - 1, Y - 1, X - 1), outside the volume
    // for Z = 0 or nz + 1 (and so on).
    let (pz, py, px) = (nz + 2, ny + 2, nx + 2);
    let value = |z: usize, y: usize, x: usize| -> Option<f32> {
        let inside_grid = (1..=nz).contains(&z) && (1..=ny).contains(&y) && (1..=nx).contains(&x);
        inside_grid.then(|| data[[z - 1, y - 1, x - 1]])
    };
    let inside_layer = |z: usize| -> Vec<bool> {
        let mut layer = vec![false; py * px];
        for y in 0..py {
            for x in 0..px {
                layer[y * px + x] = value(z, y, x).is_some_and(|v| v >= level);
            }
        }
        layer
    };
    let table = case_table();
    let edges = cube_edges();
    let mut positions: Vec<[f64; 3]> = Vec::new();
    let mut triangles: Vec<[u32; 3]> = Vec::new();
    // Vertex of each grid edge met so far, by the layer its start corner is in: x and y edges
    // at the cubes' bottom (`flat_low`) and top (`flat_high`) layer, z edges between them.
    const NONE: u32 = u32::MAX;
    let mut flat_low = vec![NONE; py * px * 2];
    let mut flat_high = vec![NONE; py * px * 2];
    let mut vertical = vec![NONE; py * px];
    let mut low = inside_layer(0);
    for z in 0..pz - 1 {
        let high = inside_layer(z + 1);
        for y in 0..py - 1 {
            for x in 0..px - 1 {
                let mut case = 0usize;
                for corner in 0..8 {
                    let [dx, dy, dz] = corner_offset(corner);
                    let layer = if dz == 0 { &low } else { &high };
                    if layer[(y + dy) * px + x + dx] {
                        case |= 1 << corner;
                    }
                }
                for triangle in &table[case] {
                    let vertices = triangle.map(|edge| {
                        let (corner, axis) = edges[edge as usize];
                        let [dx, dy, dz] = corner_offset(corner);
                        let (cz, cy, cx) = (z + dz, y + dy, x + dx);
                        let slot = match axis {
                            2 => &mut vertical[cy * px + cx],
                            _ if dz == 0 => &mut flat_low[(cy * px + cx) * 2 + axis],
                            _ => &mut flat_high[(cy * px + cx) * 2 + axis],
                        };
                        if *slot == NONE {
                            let mut end = [cz, cy, cx];
                            end[2 - axis] += 1;
                            let t = crossing(value(cz, cy, cx), value(end[0], end[1], end[2]), level);
                            let mut at = [cx as f64 - 1.0, cy as f64 - 1.0, cz as f64 - 1.0];
                            at[axis] += t;
                            *slot = positions.len() as u32;
                            positions.push(at);
                        }
                        *slot
                    });
                    triangles.push(vertices);
                }
            }
        }
        std::mem::swap(&mut flat_low, &mut flat_high);
        flat_high.fill(NONE);
        vertical.fill(NONE);
        low = high;
    }
    let affine = volume.affine();
    let world = positions
        .iter()
        .map(|p| {
            std::array::from_fn(|r| {
                (affine[r][0] * p[0] + affine[r][1] * p[1] + affine[r][2] * p[2] + affine[r][3]) as f32
            })
        })
        .collect();
    if determinant(affine) < 0.0 {
        // A mirroring affine turns counter-clockwise into clockwise: turn it back.
        triangles.iter_mut().for_each(|t| t.swap(1, 2));
    }
    let mut mesh = Mesh { positions: world, normals: Vec::new(), triangles };
    mesh.compute_normals();
    mesh
}

/// Where `level` crosses the edge from a corner of value `from` to one of value `to`, as a
/// fraction of the edge; half way when a corner is outside the grid or the values say
/// nothing (NaN, or equal).
fn crossing(from: Option<f32>, to: Option<f32>, level: f32) -> f64 {
    match (from, to) {
        (Some(a), Some(b)) => {
            let t = (f64::from(level) - f64::from(a)) / (f64::from(b) - f64::from(a));
            if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.5 }
        }
        _ => 0.5,
    }
}

/// Corner `c` of a cube (bit 0: x, bit 1: y, bit 2: z) as offsets `[x, y, z]`.
fn corner_offset(c: usize) -> [usize; 3] {
    [c & 1, c >> 1 & 1, c >> 2 & 1]
}

/// The 12 cube edges as (start corner, axis 0 = x, 1 = y, 2 = z); the end corner is the
/// start with the axis bit set.
fn cube_edges() -> [(usize, usize); 12] {
    let mut edges = [(0, 0); 12];
    let mut k = 0;
    for axis in 0..3 {
        for corner in (0..8).filter(|c| c & (1 << axis) == 0) {
            edges[k] = (corner, axis);
            k += 1;
        }
    }
    edges
}

/// Triangles (as cube edges) of each of the 256 inside/outside patterns of a cube's corners.
fn case_table() -> &'static [Vec<[u8; 3]>; 256] {
    static TABLE: OnceLock<[Vec<[u8; 3]>; 256]> = OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(case_triangles))
}

/// The triangles of one case: contour segments on the six faces, oriented so that the
/// inside is on one fixed side seen from outside the cube, chained into closed loops, each
/// loop a fan of triangles.
fn case_triangles(case: usize) -> Vec<[u8; 3]> {
    let inside = |corner: usize| case >> corner & 1 == 1;
    let edges = cube_edges();
    let edge_between = |a: usize, b: usize| {
        let (start, axis) = (a.min(b), (a ^ b).trailing_zeros() as usize);
        edges.iter().position(|&e| e == (start, axis)).expect("adjacent corners share a cube edge")
    };
    let position = |corner: usize| corner_offset(corner).map(|v| v as f64);
    let midpoint = |edge: usize| {
        let (start, axis) = edges[edge];
        let mut p = position(start);
        p[axis] += 0.5;
        p
    };
    let mut next: [Option<usize>; 12] = [None; 12];
    for axis in 0..3 {
        for side in 0..2 {
            let (b, c) = ((axis + 1) % 3, (axis + 2) % 3);
            let face = [(0, 0), (1, 0), (1, 1), (0, 1)].map(|(i, j)| side << axis | i << b | j << c);
            let mut outward = [0.0; 3];
            outward[axis] = if side == 1 { 1.0 } else { -1.0 };
            // Segments as (edge, edge, an inside corner they cut off).
            let mut segments = Vec::new();
            let side_edge = |i: usize| edge_between(face[i % 4], face[(i + 1) % 4]);
            let crossings: Vec<usize> = (0..4).filter(|&i| inside(face[i]) != inside(face[(i + 1) % 4])).collect();
            match crossings.len() {
                2 => {
                    let inner = *face.iter().find(|&&k| inside(k)).expect("a crossed face has an inside corner");
                    segments.push((side_edge(crossings[0]), side_edge(crossings[1]), inner));
                }
                4 => {
                    // Ambiguous face: cut each inside corner off on its own.
                    for i in (0..4).filter(|&i| inside(face[i])) {
                        segments.push((side_edge(i + 3), side_edge(i), face[i]));
                    }
                }
                _ => {}
            }
            for (p, q, inner) in segments {
                let (pm, qm) = (midpoint(p), midpoint(q));
                // p -> q is right when the inside corner is on the side of -(n x (q - p)).
                let forward = dot(cross(outward, sub(qm, pm)), sub(position(inner), pm)) < 0.0;
                let (from, to) = if forward { (p, q) } else { (q, p) };
                debug_assert!(next[from].is_none(), "case {case}: edge {from} starts two segments");
                next[from] = Some(to);
            }
        }
    }
    let mut triangles = Vec::new();
    let mut visited = [false; 12];
    for start in 0..12 {
        if visited[start] || next[start].is_none() {
            continue;
        }
        let mut contour = Vec::new();
        let mut edge = start;
        while !visited[edge] {
            visited[edge] = true;
            contour.push(edge as u8);
            edge = next[edge].expect("contour segments close into loops");
        }
        // A fan whose diagonals all cross the cube's inside: a diagonal between two points
        // of one face would lie in that face, where the neighbouring cube may draw it too,
        // and four triangles would share an edge. Such an apex exists in every case (checked
        // for all 256 by the tests).
        let n = contour.len();
        let apex = (0..n)
            .find(|&a| (2..n - 1).all(|k| !share_face(contour[a], contour[(a + k) % n])))
            .expect("every loop has an apex whose diagonals leave the faces");
        for k in 1..n - 1 {
            triangles.push([contour[apex], contour[(apex + k) % n], contour[(apex + k + 1) % n]]);
        }
    }
    triangles
}

/// Whether cube edges `u` and `v` lie on a common face of the cube.
fn share_face(u: u8, v: u8) -> bool {
    let faces = |e: u8| {
        let (start, axis) = cube_edges()[e as usize];
        let offset = corner_offset(start);
        // The two faces an edge lies on: (axis, side) for the two axes it does not run along.
        [(axis + 1) % 3, (axis + 2) % 3].map(|a| (a, offset[a]))
    };
    let (fu, fv) = (faces(u), faces(v));
    fu.iter().any(|f| fv.contains(f))
}

fn determinant(a: &crate::volume::Affine) -> f64 {
    dot([a[0][0], a[1][0], a[2][0]], cross([a[0][1], a[1][1], a[2][1]], [a[0][2], a[1][2], a[2][2]]))
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|k| a[k] - b[k])
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Affine;
    use ndarray::Array3;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `radius - distance` (mm) from `centre` (voxel `[z, y, x]`), so the level-0 surface is
    /// a sphere in millimetres whatever the spacing.
    fn sphere_field(shape: [usize; 3], spacing: [f64; 3], centre: [f64; 3], radius: f64) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(z, y, x)| {
            let d2: f64 =
                [z, y, x].iter().zip(centre).zip(spacing).map(|((&v, c), s)| ((v as f64 - c) * s).powi(2)).sum();
            (radius - d2.sqrt()) as f32
        })
    }

    fn binary_box(shape: [usize; 3], min: [usize; 3], max: [usize; 3]) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(z, y, x)| {
            let v = [z, y, x];
            f32::from(u8::from((0..3).all(|a| min[a] <= v[a] && v[a] < max[a])))
        })
    }

    /// A rotation about z by 30 degrees, a mirror of x, spacing [z, y, x] = [2.0, 0.7, 1.3] mm
    /// and an offset: nothing a bug could hide behind.
    fn oblique_affine() -> Affine {
        let (sin, cos) = 30f64.to_radians().sin_cos();
        let [sz, sy, sx] = [2.0, 0.7, 1.3];
        [
            [-cos * sx, -sin * sy, 0.0, 12.5],
            [-sin * sx, cos * sy, 0.0, -40.0],
            [0.0, 0.0, sz, 7.25],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    #[test]
    fn table_triangles_use_only_edges_the_surface_crosses_and_all_of_them() {
        let edges = cube_edges();
        for case in 0..256usize {
            let crosses = |e: usize| {
                let (start, axis) = edges[e];
                (case >> start & 1) != (case >> (start | 1 << axis) & 1)
            };
            let used: HashSet<usize> = case_table()[case].iter().flatten().map(|&e| e as usize).collect();
            let crossed: HashSet<usize> = (0..12).filter(|&e| crosses(e)).collect();
            assert_eq!(used, crossed, "case {case:08b}");
        }
        assert!(case_table()[0].is_empty() && case_table()[255].is_empty());
        assert_eq!(case_table()[1].len(), 1, "one corner inside: one triangle");
    }

    #[test]
    fn random_volumes_give_closed_consistently_wound_meshes() {
        // Random voxels make every case, the ambiguous faces included; the grid's border is
        // closed by the outside layer around it, so any crack or flipped triangle shows.
        for seed in 0..4 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let data = Array3::from_shape_fn((9, 10, 11), |_| rng.random::<f32>());
            let mesh = marching_cubes(&Volume::with_spacing(data, [1.0; 3]).unwrap(), 0.5);
            assert!(mesh.triangles.len() > 1000, "seed {seed}: a busy surface");
            assert!(mesh.is_closed(), "seed {seed}: every edge shared by two triangles, once each way");
            assert!(mesh.enclosed_volume() > 0.0, "seed {seed}: wound counter-clockwise from outside");
        }
    }

    #[test]
    fn sphere_volume_and_area_match_the_analytic_ones_in_millimetres() {
        let (spacing, radius) = ([1.5, 1.0, 1.25], 9.0);
        let field = sphere_field([16, 24, 20], spacing, [7.5, 11.5, 9.5], radius);
        let volume = Volume::with_spacing(field, spacing).unwrap();
        let mesh = isosurface(&volume, 0.0, &SurfaceOptions::RAW);
        assert!(mesh.is_closed());
        let exact_volume = 4.0 / 3.0 * std::f64::consts::PI * radius.powi(3);
        let exact_area = 4.0 * std::f64::consts::PI * radius.powi(2);
        assert!(
            (mesh.enclosed_volume() / exact_volume - 1.0).abs() < 0.02,
            "volume {} vs {exact_volume}",
            mesh.enclosed_volume()
        );
        assert!((mesh.area() / exact_area - 1.0).abs() < 0.02, "area {} vs {exact_area}", mesh.area());
    }

    #[test]
    fn normals_point_out_of_the_sphere() {
        let field = sphere_field([16, 16, 16], [1.0; 3], [7.5; 3], 6.0);
        let mesh = isosurface(&Volume::with_spacing(field, [1.0; 3]).unwrap(), 0.0, &SurfaceOptions::RAW);
        assert_eq!(mesh.normals.len(), mesh.positions.len());
        for (p, n) in mesh.positions.iter().zip(&mesh.normals) {
            let outward = sub(p.map(f64::from), [7.5; 3]);
            assert!(dot(outward, n.map(f64::from)) > 0.9 * norm(outward), "normal {n:?} at {p:?}");
        }
    }

    /// Volume in voxels of the marching-cubes surface of a binary box of `a x b x c` voxels:
    /// the box half a voxel out on every side, less a prism of 1/8 voxel² section along each
    /// of its 12 edges between the corner cubes, less 1/8 - 1/48 in each of its 8 corners.
    fn binary_box_volume([a, b, c]: [usize; 3]) -> f64 {
        let [a, b, c] = [a, b, c].map(|n| n as f64);
        a * b * c - 0.125 * 4.0 * ((a - 1.0) + (b - 1.0) + (c - 1.0)) - 8.0 * (0.125 - 1.0 / 48.0)
    }

    #[test]
    fn box_volume_matches_its_closed_form_through_a_mirroring_affine() {
        let (min, max) = ([2, 3, 1], [8, 13, 10]);
        let affine = oblique_affine();
        let volume = Volume::new(binary_box([10, 16, 12], min, max), [2.0, 0.7, 1.3], affine).unwrap();
        let mesh = isosurface(&volume, 0.5, &SurfaceOptions::RAW);
        let expected = binary_box_volume([6, 10, 9]) * determinant(&affine).abs();
        assert!((mesh.enclosed_volume() / expected - 1.0).abs() < 1e-5, "{} vs {expected}", mesh.enclosed_volume());
    }

    /// Inverse of the 3x4 part of an affine, applied to a world point: voxel `[x, y, z]`.
    fn world_to_voxel(a: &Affine, p: [f32; 3]) -> [f64; 3] {
        let q = [0, 1, 2].map(|r| f64::from(p[r]) - a[r][3]);
        let col = |c: usize| [a[0][c], a[1][c], a[2][c]];
        let det = dot(col(0), cross(col(1), col(2)));
        // Cramer's rule: component c is det(the matrix with column c replaced by q) / det.
        [dot(q, cross(col(1), col(2))) / det, dot(col(0), cross(q, col(2))) / det, dot(col(0), cross(col(1), q)) / det]
    }

    #[test]
    fn oblique_affine_places_the_box_half_a_voxel_out_in_voxel_space() {
        let (min, max) = ([2, 3, 1], [8, 13, 10]);
        let affine = oblique_affine();
        let volume = Volume::new(binary_box([10, 16, 12], min, max), [2.0, 0.7, 1.3], affine).unwrap();
        let mesh = isosurface(&volume, 0.5, &SurfaceOptions::RAW);
        let voxels: Vec<[f64; 3]> = mesh.positions.iter().map(|&p| world_to_voxel(&affine, p)).collect();
        for (k, axis) in [(0, 2), (1, 1), (2, 0)] {
            // k: x, y, z of the voxel position; axis: the same axis in [z, y, x] numbering.
            let lo = voxels.iter().map(|v| v[k]).fold(f64::INFINITY, f64::min);
            let hi = voxels.iter().map(|v| v[k]).fold(f64::NEG_INFINITY, f64::max);
            assert!((lo - (min[axis] as f64 - 0.5)).abs() < 1e-4, "axis {axis}: from {lo}");
            assert!((hi - (max[axis] as f64 - 0.5)).abs() < 1e-4, "axis {axis}: to {hi}");
        }
    }

    #[test]
    fn world_bounds_are_the_voxel_box_half_a_voxel_out_mapped_through_the_affine() {
        // Axes permuted and one mirrored (voxel x -> world y, y -> z, z -> -x), anisotropic,
        // offset: the box stays a box in the world, so its bounds map exactly.
        let affine: Affine =
            [[0.0, 0.0, -2.0, 30.0], [1.3, 0.0, 0.0, -5.0], [0.0, 0.7, 0.0, 2.0], [0.0, 0.0, 0.0, 1.0]];
        let (min, max) = ([2, 3, 1], [8, 13, 10]);
        let volume = Volume::new(binary_box([10, 16, 12], min, max), [2.0, 0.7, 1.3], affine).unwrap();
        let (lo, hi) = isosurface(&volume, 0.5, &SurfaceOptions::RAW).bounds().unwrap();
        let a = volume.voxel_to_world(min.map(|v| v as f64 - 0.5));
        let b = volume.voxel_to_world(max.map(|v| v as f64 - 0.5));
        for k in 0..3 {
            assert!((f64::from(lo[k]) - a[k].min(b[k])).abs() < 1e-4, "world axis {k}: low {} vs {a:?} {b:?}", lo[k]);
            assert!((f64::from(hi[k]) - a[k].max(b[k])).abs() < 1e-4, "world axis {k}: high {} vs {a:?} {b:?}", hi[k]);
        }
        assert_eq!((lo[0], hi[0]), (15.0, 27.0), "world x from z: 30 - 2 * (7.5, 1.5)");
    }

    #[test]
    fn a_region_touching_the_border_is_closed_half_a_voxel_beyond_it() {
        let volume = Volume::with_spacing(binary_box([6, 7, 8], [0, 2, 3], [4, 7, 8]), [1.0; 3]).unwrap();
        let mesh = isosurface(&volume, 0.5, &SurfaceOptions::RAW);
        assert!(mesh.is_closed());
        let (lo, hi) = mesh.bounds().unwrap();
        assert_eq!((lo, hi), ([2.5, 1.5, -0.5], [7.5, 6.5, 3.5]), "[x, y, z] world = voxel here");
        assert!((mesh.enclosed_volume() - binary_box_volume([4, 5, 5])).abs() < 1e-3);
    }

    #[test]
    fn nothing_inside_gives_an_empty_mesh() {
        let volume = Volume::with_spacing(Array3::from_elem((4, 4, 4), f32::NAN), [1.0; 3]).unwrap();
        let mesh = isosurface(&volume, 0.5, &SurfaceOptions::default());
        assert!(mesh.is_empty() && mesh.positions.is_empty());
        assert_eq!(mesh.bounds(), None);
    }

    /// A binary ball of `radius` voxels in a cube of side `side`: a voxel staircase.
    fn binary_ball(side: usize, radius: f64) -> Volume {
        let c = (side as f64 - 1.0) / 2.0;
        let data = Array3::from_shape_fn((side, side, side), |(z, y, x)| {
            let d2 = [z, y, x].iter().map(|&v| (v as f64 - c).powi(2)).sum::<f64>();
            f32::from(u8::from(d2 <= radius * radius))
        });
        Volume::with_spacing(data, [1.0; 3]).unwrap()
    }

    #[test]
    fn taubin_smoothing_takes_off_the_staircase_without_shrinking() {
        let radius = 8.0;
        let raw = isosurface(&binary_ball(22, radius), 0.5, &SurfaceOptions::RAW);
        let mut smooth = raw.clone();
        smooth.smooth(10);
        let sphere_area = 4.0 * std::f64::consts::PI * radius * radius;
        let excess = |m: &Mesh| m.area() / sphere_area - 1.0;
        assert!(excess(&smooth) < excess(&raw) / 2.0, "area excess {} raw, {} smoothed", excess(&raw), excess(&smooth));
        let kept = smooth.enclosed_volume() / raw.enclosed_volume();
        assert!((kept - 1.0).abs() < 0.02, "Taubin keeps the volume: ratio {kept}");
        assert!(smooth.is_closed(), "smoothing moves vertices only");
    }

    #[test]
    fn clustering_on_a_coarser_grid_keeps_the_shape_with_fewer_triangles() {
        let field = sphere_field([20, 20, 20], [1.0; 3], [9.5; 3], 7.0);
        let raw = isosurface(&Volume::with_spacing(field, [1.0; 3]).unwrap(), 0.0, &SurfaceOptions::RAW);
        let coarse = raw.decimate(2.0);
        assert!(
            coarse.triangles.len() * 3 < raw.triangles.len(),
            "{} -> {}",
            raw.triangles.len(),
            coarse.triangles.len()
        );
        let kept = coarse.enclosed_volume() / raw.enclosed_volume();
        assert!((kept - 1.0).abs() < 0.05, "volume ratio {kept}");
        assert_eq!(coarse.normals.len(), coarse.positions.len());
        let referenced: HashSet<u32> = coarse.triangles.iter().flatten().copied().collect();
        assert_eq!(referenced.len(), coarse.positions.len(), "no vertex left unused");
    }
}
