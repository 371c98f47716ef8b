//! Vertebra crops: every vertebra of a manifest cut out of its CT, resampled to one spacing
//! and brought to one patch shape, with its weak-label masks on the same grid, cached on disk
//! so that training never re-reads a whole NIfTI.
//!
//! The way of one crop is core's [`cut_vertebra`], which the server calls too: body box +
//! `margin_mm` (past the volume's edge -1000 HU, 0 for masks) -> resample to `spacing_mm`
//! (linear for the CT, nearest for masks) -> crop or pad to `patch`, centred (a vertebra larger
//! than the patch loses its outer parts and is flagged [`CropEntry::oversize`]). The affine
//! follows the voxels, so anything written on a crop's grid overlays the source CT in a viewer.
//!
//! Masks per crop, each built on the cut's grid (the source grid, reaching past its edges like
//! the cut) and taken through the same resample and crop as the CT:
//! - `box_in`: the union of the vertebra's fracture boxes (the method's `M_in`, label mode B);
//! - `slice_in`: the union of its slice ranges, every voxel of those axial slices of the crop,
//!   padding included (`M_in`, label mode A);
//! - `truth`: every voxel of the case's fracture mask inside the crop, a neighbour's fracture
//!   within the margin included (only for cases with a fracture mask).
//!
//! Cache layout in the output folder:
//! - `<case>_<level>/ct.nii`: int16 HU (rounded to nearest), uncompressed for speed;
//! - `<case>_<level>/box_in.nii`, `slice_in.nii`, `truth.nii`: uint8 0/1 on the crop's grid;
//! - `index.json` ([`CropIndex`]): the spec, the manifest, its fingerprint and one
//!   [`CropEntry`] per crop. It is removed before a rebuild touches any crop and written last,
//!   so an index only ever names complete files of its own spec.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail, ensure};
use fracmap_core::fsutil::write_atomic;
use fracmap_core::nifti_io::{NiftiDtype, read_volume, write_mask, write_volume};
use fracmap_core::preprocess::volume_to_mask;
use fracmap_core::vertebra_crop::{AIR_HU, cut_vertebra};
pub use fracmap_core::vertebra_crop::{CropSpec, CropSpecError};
use fracmap_core::volume::Affine;
use fracmap_core::{Box3, CropRegion, Grid, Mask, Volume};
use ndarray::{Axis, s};
use serde::{Deserialize, Serialize};

use crate::levels::Level;
use crate::manifest::{BoxJson, Case, Manifest, Status, Vertebra};
use crate::parallel::map_indexed;

pub const FORMAT: &str = "fracmap-crops";
/// Bumped whenever the way a crop is made changes, so that older caches are rebuilt.
pub const VERSION: u32 = 1;
pub const INDEX_FILE: &str = "index.json";
const CT_FILE: &str = "ct.nii";
const BOX_IN_FILE: &str = "box_in.nii";
const SLICE_IN_FILE: &str = "slice_in.nii";
const TRUTH_FILE: &str = "truth.nii";

/// A voxel grid as the index stores it (see [`Grid`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridJson {
    /// `[z, y, x]`.
    pub shape: [usize; 3],
    /// mm, `[z, y, x]`.
    pub spacing: [f64; 3],
    /// Voxel `(x, y, z, 1)` to world mm, row-major, as NIfTI's sform.
    pub affine: Affine,
}

impl From<Grid> for GridJson {
    fn from(grid: Grid) -> Self {
        GridJson { shape: grid.shape, spacing: grid.spacing, affine: grid.affine }
    }
}

impl From<GridJson> for Grid {
    fn from(grid: GridJson) -> Self {
        Grid { shape: grid.shape, spacing: grid.spacing, affine: grid.affine }
    }
}

/// A [`CropRegion`] as the index stores it: voxel `[0, 0, 0]` of the region is source voxel
/// `origin` (`[z, y, x]`, negative where it starts before the source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionJson {
    pub origin: [i64; 3],
    pub shape: [usize; 3],
}

impl From<CropRegion> for RegionJson {
    fn from(region: CropRegion) -> Self {
        RegionJson { origin: region.origin, shape: region.shape }
    }
}

impl From<RegionJson> for CropRegion {
    fn from(region: RegionJson) -> Self {
        CropRegion { origin: region.origin, shape: region.shape }
    }
}

/// File names of one crop, relative to its folder [`CropEntry::dir`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropFiles {
    pub ct: String,
    pub box_in: String,
    pub slice_in: String,
    /// Only for cases with a fracture mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<String>,
}

/// One vertebra's crop: who it is (copied from the manifest), where its files are, and how
/// its grid relates to the source CT.
///
/// Its geometry is a [`VertebraCrop`](fracmap_core::vertebra_crop::VertebraCrop)'s (`source`,
/// `cut` as `region`, `cut_grid`, `resampled_shape`, and `grid` for the crop's CT), whose
/// `paste_back` puts a prediction made on the crop back onto the source CT's grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropEntry {
    pub case: String,
    pub patient: String,
    pub level: Level,
    pub status: Status,
    pub fold: Option<usize>,
    pub labeled: bool,
    /// How many fracture boxes (mode B) and slice ranges (mode A) the manifest gives. A
    /// fractured vertebra with none of a mode has no label of that mode: its empty mask does
    /// not mean "no fracture here", as a normal vertebra's does.
    pub fracture_boxes: usize,
    pub slice_ranges: usize,
    /// Folder of the crop's files, relative to the cache folder: `<case>_<level>`.
    pub dir: String,
    pub files: CropFiles,
    /// The source CT's grid.
    pub source: GridJson,
    /// The body box on the source grid, as in the manifest.
    pub body_box: BoxJson,
    /// The cut in source voxels: body box plus margin, unclamped.
    pub cut: RegionJson,
    /// The cut's grid (source spacing, affine shifted to the cut's origin).
    pub cut_grid: GridJson,
    /// Shape of the cut once resampled to the spec's spacing, before crop or pad to the patch.
    pub resampled_shape: [usize; 3],
    /// The crop's grid: shape = the spec's patch.
    pub grid: GridJson,
    /// True when the resampled cut was larger than the patch on some axis and lost its edges.
    pub oversize: bool,
    pub box_in_voxels: usize,
    pub slice_in_voxels: usize,
    pub truth_voxels: Option<usize>,
}

/// `index.json` of a crop cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropIndex {
    pub format: String,
    pub version: u32,
    pub spec: CropSpec,
    /// The manifest the crops came from (absolute where it could be resolved).
    pub manifest: PathBuf,
    /// Hash of the manifest's path and bytes and of the size and modification time of every
    /// CT and fracture mask it names: a change to any of them rebuilds the cache.
    pub fingerprint: String,
    /// In manifest order: cases, then their vertebrae.
    pub crops: Vec<CropEntry>,
}

impl CropIndex {
    /// How many vertebrae were larger than the patch (and lost their outer parts).
    pub fn oversize(&self) -> usize {
        self.crops.iter().filter(|c| c.oversize).count()
    }

    /// Whether every file the index names is in `dir`.
    fn files_present(&self, dir: &Path) -> bool {
        self.crops.iter().all(|c| c.file_paths(dir).iter().all(|p| p.is_file()))
    }
}

/// A crop read back from the cache, what training consumes.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedCrop {
    /// HU on the crop's grid, shape = the patch.
    pub ct: Volume,
    pub box_in: Mask,
    pub slice_in: Mask,
    pub truth: Option<Mask>,
}

impl CropEntry {
    /// Reads the crop's files from the cache folder `dir`.
    pub fn load(&self, dir: &Path) -> Result<LoadedCrop> {
        let read_mask = |name: &str| self.read(dir, name).map(|v| volume_to_mask(&v, 0.5));
        let context = || format!("crop {}", self.dir);
        Ok(LoadedCrop {
            ct: self.load_ct(dir)?,
            box_in: read_mask(&self.files.box_in).with_context(context)?,
            slice_in: read_mask(&self.files.slice_in).with_context(context)?,
            truth: self.load_truth(dir)?,
        })
    }

    /// Reads the crop's CT (HU) alone: what a model's input needs.
    pub fn load_ct(&self, dir: &Path) -> Result<Volume> {
        self.read(dir, &self.files.ct).with_context(|| format!("crop {}", self.dir))
    }

    /// Reads the crop's true fracture mask, `None` for a case without one.
    pub fn load_truth(&self, dir: &Path) -> Result<Option<Mask>> {
        let read_mask = |name: &str| self.read(dir, name).map(|v| volume_to_mask(&v, 0.5));
        self.files.truth.as_deref().map(read_mask).transpose().with_context(|| format!("crop {}", self.dir))
    }

    /// Reads one file of the crop and checks its shape against the index.
    fn read(&self, dir: &Path, name: &str) -> Result<Volume> {
        let path = dir.join(&self.dir).join(name);
        let volume = read_volume(&path)?;
        ensure!(
            volume.shape() == self.grid.shape,
            "{}: shape [z, y, x] = {:?}, the crop index says {:?}",
            path.display(),
            volume.shape(),
            self.grid.shape
        );
        Ok(volume)
    }

    fn file_paths(&self, dir: &Path) -> Vec<PathBuf> {
        let f = &self.files;
        let names = [Some(&f.ct), Some(&f.box_in), Some(&f.slice_in), f.truth.as_ref()];
        names.into_iter().flatten().map(|name| dir.join(&self.dir).join(name)).collect()
    }
}

/// What [`build_crop_cache`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct CropCache {
    pub index: CropIndex,
    /// True when the cache already matched the spec and the manifest and nothing was written.
    pub reused: bool,
}

/// Reads `<dir>/index.json`.
pub fn load_crop_index(dir: &Path) -> Result<CropIndex> {
    let path = dir.join(INDEX_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let index: CropIndex =
        serde_json::from_str(&text).with_context(|| format!("{}: not a valid crop index", path.display()))?;
    if index.format != FORMAT || index.version != VERSION {
        bail!(
            "{}: format {:?} version {}, this build reads {FORMAT:?} version {VERSION}",
            path.display(),
            index.format,
            index.version
        );
    }
    Ok(index)
}

/// Crops every vertebra of every case of the manifest at `manifest_path` into the cache folder
/// `out` (layout in the module doc). When `out` already holds a cache of the same spec, the same
/// manifest and unchanged input files, it is returned as it is (`reused`). Cases run on
/// `threads` workers (0: every core), each CT read once; `progress(done, total)` is called
/// after each case (not when the cache is reused). Errors name the case and vertebra.
pub fn build_crop_cache(
    manifest_path: &Path,
    out: &Path,
    spec: &CropSpec,
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<CropCache> {
    spec.validate()?;
    // Bytes before parsing: should the manifest change in between, the fingerprint is the
    // older one and the next run rebuilds.
    let manifest_bytes =
        std::fs::read(manifest_path).with_context(|| format!("{}: cannot read", manifest_path.display()))?;
    let manifest = Manifest::load(manifest_path, false)?;
    for case in &manifest.cases {
        ensure_folder_name(&case.id)?;
    }
    let manifest_abs = manifest_path.canonicalize().unwrap_or_else(|_| manifest_path.to_path_buf());
    let fingerprint = fingerprint(&manifest_abs, &manifest_bytes, manifest_path, &manifest);

    let previous = load_crop_index(out).ok();
    if let Some(index) = &previous
        && index.spec == *spec
        && index.fingerprint == fingerprint
        && index.files_present(out)
    {
        return Ok(CropCache { index: index.clone(), reused: true });
    }

    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let index_path = out.join(INDEX_FILE);
    match std::fs::remove_file(&index_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("{}: cannot remove the old index", index_path.display()));
        }
        _ => {}
    }
    let per_case = map_indexed(manifest.cases.len(), threads, progress, |i| {
        let case = &manifest.cases[i];
        crop_case(manifest_path, case, spec, out).with_context(|| format!("case {}", case.id))
    })?;
    let index = CropIndex {
        format: FORMAT.to_string(),
        version: VERSION,
        spec: spec.clone(),
        manifest: manifest_abs,
        fingerprint,
        crops: per_case.into_iter().flatten().collect(),
    };
    let text = serde_json::to_string_pretty(&index).expect("a crop index always serialises");
    write_atomic(&index_path, text.as_bytes()).with_context(|| format!("{}: cannot write", index_path.display()))?;
    // Crops of the previous build that this one no longer has (a case or vertebra left the
    // manifest). Only folders that the old index named: the output folder may hold other things.
    for stale in previous.iter().flat_map(|p| &p.crops).filter(|c| index.crops.iter().all(|n| n.dir != c.dir)) {
        let folder = out.join(&stale.dir);
        std::fs::remove_dir_all(&folder).with_context(|| format!("{}: cannot remove", folder.display()))?;
    }
    Ok(CropCache { index, reused: false })
}

/// Case ids name folders of the cache: one plain name, no path.
fn ensure_folder_name(case_id: &str) -> Result<()> {
    let mut parts = Path::new(case_id).components();
    let plain = matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None));
    ensure!(plain && !case_id.contains(['/', '\\']), "case {case_id}: the id must be usable as a folder name");
    Ok(())
}

/// FNV-1a (64 bits) of the manifest's path and bytes, and of the size and modification time
/// of every file it names that the crops read. Stable across Rust releases, unlike std's hasher.
fn fingerprint(manifest_abs: &Path, manifest_bytes: &[u8], manifest_path: &Path, manifest: &Manifest) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(manifest_abs.to_string_lossy().as_bytes());
    feed(&(manifest_bytes.len() as u64).to_le_bytes());
    feed(manifest_bytes);
    for case in &manifest.cases {
        for rel in std::iter::once(&case.ct).chain(&case.fracture_mask) {
            let stamp = std::fs::metadata(Manifest::resolve(manifest_path, rel)).ok().map(|m| {
                let modified = m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
                (m.len(), modified.map_or(0, |d| d.as_nanos()))
            });
            match stamp {
                Some((len, nanos)) => {
                    feed(&len.to_le_bytes());
                    feed(&nanos.to_le_bytes());
                }
                None => feed(b"missing"),
            }
        }
    }
    format!("fnv1a64:{hash:016x}")
}

/// Reads one case's CT (and fracture mask) once and writes the crops of all its vertebrae.
fn crop_case(manifest_path: &Path, case: &Case, spec: &CropSpec, out: &Path) -> Result<Vec<CropEntry>> {
    let ct_path = Manifest::resolve(manifest_path, &case.ct);
    let ct = read_volume(&ct_path)?;
    ensure!(
        ct.shape() == case.shape,
        "CT {} has shape [z, y, x] = {:?}, the manifest says {:?}",
        ct_path.display(),
        ct.shape(),
        case.shape
    );
    let truth = match &case.fracture_mask {
        Some(rel) => {
            let path = Manifest::resolve(manifest_path, rel);
            let mask = read_volume(&path)?;
            ensure!(
                mask.shape() == ct.shape(),
                "fracture mask {} has shape [z, y, x] = {:?}, the CT has {:?}",
                path.display(),
                mask.shape(),
                ct.shape()
            );
            Some(mask)
        }
        None => None,
    };
    case.vertebrae
        .iter()
        .map(|v| crop_vertebra(case, v, &ct, truth.as_ref(), spec, out).with_context(|| v.level.to_string()))
        .collect()
}

/// Cuts, resamples and writes one vertebra's crop and masks; returns its index entry.
fn crop_vertebra(
    case: &Case,
    vertebra: &Vertebra,
    ct: &Volume,
    truth: Option<&Volume>,
    spec: &CropSpec,
    out: &Path,
) -> Result<CropEntry> {
    let body = vertebra.body_box.to_box3()?;
    let crop = cut_vertebra(ct, &body, spec, AIR_HU)?;
    let region = crop.region;

    let fracture_boxes = vertebra.fracture_boxes.iter().map(|b| b.to_box3()).collect::<Result<Vec<_>, _>>()?;
    let box_in = region_mask(region.shape, fracture_boxes.iter().filter_map(|b| region.local_box(b)));
    let slices = vertebra.slice_ranges.iter().filter_map(|r| {
        let range = fracmap_core::SliceRange::new(r.z[0], r.z[1]).ok()?;
        let local = region.local_slices(&range)?;
        Box3::new([local.start(), 0, 0], [local.end(), region.shape[1], region.shape[2]]).ok()
    });
    let slice_in = region_mask(region.shape, slices);
    let box_in = crop.mask_on_cut_to_crop(&box_in)?;
    let slice_in = whole_slices(crop.mask_on_cut_to_crop(&slice_in)?);
    let truth = truth.map(|mask| crop.cut_mask(mask)).transpose()?;

    let dir = format!("{}_{}", case.id, vertebra.level);
    let folder = out.join(&dir);
    std::fs::create_dir_all(&folder).with_context(|| format!("{}: cannot create", folder.display()))?;
    let grid = crop.ct.grid();
    // int16 holds every HU a scanner writes; clamping only keeps a stray value from failing.
    let hu = crop.ct.data().mapv(|v| v.clamp(f32::from(i16::MIN), f32::from(i16::MAX)));
    write_volume(&folder.join(CT_FILE), &crop.ct.with_data(hu)?, NiftiDtype::I16)?;
    write_mask(&folder.join(BOX_IN_FILE), &box_in, &grid)?;
    write_mask(&folder.join(SLICE_IN_FILE), &slice_in, &grid)?;
    if let Some(truth) = &truth {
        write_mask(&folder.join(TRUTH_FILE), truth, &grid)?;
    }

    let count = |mask: &Mask| mask.iter().filter(|&&inside| inside).count();
    Ok(CropEntry {
        case: case.id.clone(),
        patient: case.patient.clone(),
        level: vertebra.level,
        status: vertebra.status,
        fold: case.fold,
        labeled: case.labeled,
        fracture_boxes: vertebra.fracture_boxes.len(),
        slice_ranges: vertebra.slice_ranges.len(),
        dir,
        files: CropFiles {
            ct: CT_FILE.to_string(),
            box_in: BOX_IN_FILE.to_string(),
            slice_in: SLICE_IN_FILE.to_string(),
            truth: truth.as_ref().map(|_| TRUTH_FILE.to_string()),
        },
        source: crop.source.into(),
        body_box: vertebra.body_box,
        cut: region.into(),
        cut_grid: crop.cut_grid.into(),
        resampled_shape: crop.resampled_shape,
        grid: grid.into(),
        oversize: crop.oversize(),
        box_in_voxels: count(&box_in),
        slice_in_voxels: count(&slice_in),
        truth_voxels: truth.as_ref().map(count),
    })
}

/// A mask of `shape` (`[z, y, x]`) that is true inside any of `boxes`.
fn region_mask(shape: [usize; 3], boxes: impl Iterator<Item = Box3>) -> Mask {
    let mut mask = Mask::from_elem(shape, false);
    for b in boxes {
        let [z, y, x] = b.ranges();
        mask.slice_mut(s![z, y, x]).fill(true);
    }
    mask
}

/// Every axial slice that holds any voxel, filled: a slice label marks whole slices of the
/// crop, also where the patch is padding. The resample and crop are axis-aligned, so a slice
/// either holds the label across the whole cut or not at all.
fn whole_slices(mut mask: Mask) -> Mask {
    for mut slice in mask.axis_iter_mut(Axis(0)) {
        if slice.iter().any(|&inside| inside) {
            slice.fill(true);
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use fracmap_core::Interpolation;
    use fracmap_core::preprocess::{cut, resample_to_grid};
    use fracmap_core::volume::spacing_affine;
    use ndarray::Array3;

    use super::*;
    use crate::manifest::SliceRangeJson;

    const SOURCE_SHAPE: [usize; 3] = [24, 32, 32];
    const SOURCE_SPACING: [f64; 3] = [2.0, 1.0, 1.0];
    /// World position of source voxel 0, `(x, y, z)` mm.
    const SOURCE_ORIGIN_XYZ: [f64; 3] = [-50.0, 20.0, 100.0];
    /// Vertebra L1 of every case: body box, one fracture box, one slice range (z 8..10).
    const L1_BODY: BoxJson = BoxJson { z: [6, 14], y: [8, 24], x: [10, 26] };
    const L1_FRACTURE: BoxJson = BoxJson { z: [8, 10], y: [10, 14], x: [12, 20] };
    /// Vertebra T12 of case `a`: against the volume's first corner, so its margin reaches out.
    const T12_BODY: BoxJson = BoxJson { z: [0, 4], y: [0, 10], x: [0, 12] };

    fn source_affine() -> Affine {
        let mut affine = spacing_affine(SOURCE_SPACING);
        for (row, origin) in affine.iter_mut().zip(SOURCE_ORIGIN_XYZ) {
            row[3] = origin;
        }
        affine
    }

    /// Linear in the index, so linear resampling reproduces it exactly inside the volume;
    /// never -1000, so air padding is recognisable.
    fn source_hu([z, y, x]: [i64; 3]) -> f32 {
        (100 * z + 10 * y + x) as f32
    }

    fn source_ct() -> Volume {
        let data = Array3::from_shape_fn(SOURCE_SHAPE, |(z, y, x)| source_hu([z, y, x].map(|v| v as i64)));
        Volume::new(data, SOURCE_SPACING, source_affine()).unwrap()
    }

    /// The true fracture of case `a`: part of L1's fracture box.
    fn source_truth() -> Mask {
        let mut mask = Mask::from_elem(SOURCE_SHAPE, false);
        mask.slice_mut(s![8..9, 11..13, 13..18]).fill(true);
        mask
    }

    /// Source voxel index `[z, y, x]` (rounded) at the world position of crop voxel `zyx`.
    fn source_index(crop_affine: &Affine, zyx: [usize; 3]) -> [i64; 3] {
        let v = [zyx[2], zyx[1], zyx[0]].map(|i| i as f64);
        let world: [f64; 3] =
            std::array::from_fn(|r| (0..3).map(|c| crop_affine[r][c] * v[c]).sum::<f64>() + crop_affine[r][3]);
        let xyz: [f64; 3] = std::array::from_fn(|a| (world[a] - SOURCE_ORIGIN_XYZ[a]) / SOURCE_SPACING[2 - a]);
        [xyz[2], xyz[1], xyz[0]].map(|i| i.round() as i64)
    }

    fn inside(b: &BoxJson, [z, y, x]: [i64; 3]) -> bool {
        let within = |r: [usize; 2], v: i64| r[0] as i64 <= v && v < r[1] as i64;
        within(b.z, z) && within(b.y, y) && within(b.x, x)
    }

    fn count(mask: &Mask) -> usize {
        mask.iter().filter(|&&v| v).count()
    }

    fn l1() -> Vertebra {
        Vertebra {
            level: "L1".parse().unwrap(),
            body_box: L1_BODY,
            status: Status::Fractured,
            fracture_boxes: vec![L1_FRACTURE],
            slice_ranges: vec![SliceRangeJson { z: [8, 10] }],
        }
    }

    fn t12() -> Vertebra {
        Vertebra {
            level: "T12".parse().unwrap(),
            body_box: T12_BODY,
            status: Status::Normal,
            fracture_boxes: vec![],
            slice_ranges: vec![],
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        manifest: PathBuf,
        out: PathBuf,
    }

    /// Cases with the given ids, each with the same CT; the first (`a`) also has a fracture
    /// mask and a second vertebra (T12) at the volume's edge.
    fn fixture(ids: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let ct = source_ct();
        let cases = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                std::fs::create_dir_all(root.join(id)).unwrap();
                write_volume(&root.join(id).join("ct.nii"), &ct, NiftiDtype::I16).unwrap();
                let first = i == 0;
                if first {
                    write_mask(&root.join(id).join("fracture.nii"), &source_truth(), &ct.grid()).unwrap();
                }
                Case {
                    id: id.to_string(),
                    patient: format!("patient-{id}"),
                    ct: format!("{id}/ct.nii").into(),
                    shape: SOURCE_SHAPE,
                    vertebra_labels: None,
                    fracture_mask: first.then(|| format!("{id}/fracture.nii").into()),
                    mask_source: None,
                    labeled: true,
                    fold: Some(i),
                    vertebrae: if first { vec![t12(), l1()] } else { vec![l1()] },
                }
            })
            .collect();
        let manifest = root.join("manifest.json");
        Manifest::new("crops test", cases).save(&manifest).unwrap();
        Fixture { out: root.join("crops"), root, manifest, _dir: dir }
    }

    /// Crops on the source's own spacing: voxels are copied, nothing interpolated.
    fn same_spacing() -> CropSpec {
        CropSpec { spacing_mm: SOURCE_SPACING, patch: [16, 24, 32], margin_mm: 4.0 }
    }

    /// Twice as fine in z; y smaller than L1's cut, so it is cropped.
    fn finer() -> CropSpec {
        CropSpec { spacing_mm: [1.0; 3], patch: [32, 16, 32], margin_mm: 4.0 }
    }

    fn build(f: &Fixture, spec: &CropSpec) -> Result<CropCache> {
        build_crop_cache(&f.manifest, &f.out, spec, 2, &|_, _| {})
    }

    fn entry<'a>(index: &'a CropIndex, case: &str, level: &str) -> &'a CropEntry {
        index.crops.iter().find(|c| c.case == case && c.level.to_string() == level).unwrap()
    }

    #[test]
    fn every_crop_file_has_the_patch_shape() {
        let f = fixture(&["a", "b"]);
        let spec = finer();
        let index = build(&f, &spec).unwrap().index;
        assert_eq!(index.crops.len(), 3);
        for crop in &index.crops {
            let loaded = crop.load(&f.out).unwrap();
            assert_eq!(loaded.ct.shape(), spec.patch, "{}", crop.dir);
            assert_eq!(loaded.box_in.shape(), spec.patch, "{}", crop.dir);
            assert_eq!(loaded.slice_in.shape(), spec.patch, "{}", crop.dir);
            assert_eq!(loaded.truth.as_ref().map(|t| t.shape()), (crop.case == "a").then_some(&spec.patch[..]));
        }
    }

    #[test]
    fn crop_centre_is_the_body_box_centre_in_the_world() {
        let f = fixture(&["a"]);
        let source = source_ct();
        for spec in [same_spacing(), finer()] {
            let index = build(&f, &spec).unwrap().index;
            for crop in &index.crops {
                let ct = crop.load(&f.out).unwrap().ct;
                let body = crop.body_box.to_box3().unwrap();
                let body_centre =
                    source.voxel_to_world(std::array::from_fn(|a| (body.min()[a] + body.max()[a] - 1) as f64 / 2.0));
                let crop_centre = ct.voxel_to_world(spec.patch.map(|n| (n - 1) as f64 / 2.0));
                for a in 0..3 {
                    assert!(
                        (body_centre[a] - crop_centre[a]).abs() < 1e-4,
                        "{} {spec:?}: {body_centre:?} vs {crop_centre:?}",
                        crop.dir
                    );
                }
            }
        }
    }

    #[test]
    fn equal_spacing_copies_the_cut_and_pads_with_air() {
        let f = fixture(&["a"]);
        let index = build(&f, &same_spacing()).unwrap().index;
        for crop in &index.crops {
            let ct = crop.load(&f.out).unwrap().ct;
            let cut = crop.cut;
            for ((z, y, x), &hu) in ct.data().indexed_iter() {
                let at = source_index(ct.affine(), [z, y, x]);
                let in_cut = (0..3).all(|a| cut.origin[a] <= at[a] && at[a] < cut.origin[a] + cut.shape[a] as i64);
                let in_source = (0..3).all(|a| 0 <= at[a] && at[a] < SOURCE_SHAPE[a] as i64);
                let expected = if in_cut && in_source { source_hu(at) } else { AIR_HU };
                assert_eq!(hu, expected, "{} voxel {:?} (source {at:?})", crop.dir, [z, y, x]);
            }
        }
    }

    #[test]
    fn vertebra_at_the_volume_edge_is_padded_with_air() {
        let f = fixture(&["a"]);
        let spec = same_spacing();
        let index = build(&f, &spec).unwrap().index;
        let crop = entry(&index, "a", "T12");
        // Cut: z -2..6, y -4..14, x -4..16; the part inside the volume is 6 x 14 x 16 voxels,
        // every other voxel of the patch (margin past the edge, patch padding) is air.
        assert_eq!((crop.cut.origin, crop.cut.shape), ([-2, -4, -4], [8, 18, 20]));
        let ct = crop.load(&f.out).unwrap().ct;
        let air = ct.data().iter().filter(|&&hu| hu == AIR_HU).count();
        assert_eq!(air, spec.patch.iter().product::<usize>() - 6 * 14 * 16);
    }

    #[test]
    fn box_in_is_exactly_the_fracture_box_when_spacings_match() {
        let f = fixture(&["a"]);
        let index = build(&f, &same_spacing()).unwrap().index;
        let crop = entry(&index, "a", "L1");
        let loaded = crop.load(&f.out).unwrap();
        assert_eq!(count(&loaded.box_in), 2 * 4 * 8);
        for ((z, y, x), &inside_box) in loaded.box_in.indexed_iter() {
            let at = source_index(loaded.ct.affine(), [z, y, x]);
            assert_eq!(inside_box, inside(&L1_FRACTURE, at), "voxel {:?} (source {at:?})", [z, y, x]);
        }
        assert_eq!(crop.box_in_voxels, 2 * 4 * 8);
    }

    #[test]
    fn box_in_scales_with_the_spacing_ratio() {
        let f = fixture(&["a"]);
        let loaded = entry(&build(&f, &finer()).unwrap().index, "a", "L1").load(&f.out).unwrap();
        // z spacing 2 mm -> 1 mm: each source slice of the box becomes two crop slices.
        assert_eq!(count(&loaded.box_in), 2 * (2 * 4 * 8));
        for ((z, y, x), &inside_box) in loaded.box_in.indexed_iter() {
            let at = source_index(loaded.ct.affine(), [z, y, x]);
            assert_eq!(inside_box, inside(&L1_FRACTURE, at), "voxel {:?} (source {at:?})", [z, y, x]);
        }
    }

    #[test]
    fn slice_in_covers_whole_crop_slices_of_the_range() {
        let f = fixture(&["a"]);
        for (spec, slices) in [(same_spacing(), 2), (finer(), 4)] {
            let loaded = entry(&build(&f, &spec).unwrap().index, "a", "L1").load(&f.out).unwrap();
            let [_, height, width] = spec.patch;
            assert_eq!(count(&loaded.slice_in), slices * height * width, "{spec:?}");
            for (z, slice) in loaded.slice_in.axis_iter(Axis(0)).enumerate() {
                let source_z = source_index(loaded.ct.affine(), [z, 0, 0])[0];
                let in_range = (8..10).contains(&source_z);
                assert!(slice.iter().all(|&v| v == in_range), "{spec:?} crop slice {z} (source {source_z})");
            }
        }
    }

    #[test]
    fn truth_is_the_fracture_mask_inside_the_crop() {
        let f = fixture(&["a", "b"]);
        let index = build(&f, &finer()).unwrap().index;
        let truth = source_truth();
        let loaded = entry(&index, "a", "L1").load(&f.out).unwrap();
        let crop_truth = loaded.truth.unwrap();
        assert_eq!(count(&crop_truth), 2 * count(&truth));
        for ((z, y, x), &v) in crop_truth.indexed_iter() {
            let at = source_index(loaded.ct.affine(), [z, y, x]);
            let expected =
                (0..3).all(|a| 0 <= at[a] && at[a] < SOURCE_SHAPE[a] as i64) && truth[at.map(|i| i as usize)];
            assert_eq!(v, expected, "voxel {:?}", [z, y, x]);
        }
        let b = entry(&index, "b", "L1");
        assert_eq!((b.files.truth.as_ref(), b.truth_voxels), (None, None));
        assert!(b.load(&f.out).unwrap().truth.is_none());
    }

    #[test]
    fn vertebra_larger_than_the_patch_is_flagged() {
        let f = fixture(&["a"]);
        let index = build(&f, &finer()).unwrap().index;
        // L1 cut y 24 voxels of 1 mm against a patch of 16; T12's 18 against 16.
        assert_eq!(entry(&index, "a", "L1").resampled_shape, [24, 24, 24]);
        assert_eq!(index.oversize(), 2);
        assert_eq!(build(&f, &same_spacing()).unwrap().index.oversize(), 0);
    }

    #[test]
    fn prediction_goes_back_onto_the_cut_region() {
        let f = fixture(&["a"]);
        let index = build(&f, &same_spacing()).unwrap().index;
        let crop = entry(&index, "a", "L1");
        let on_crop = crop.load(&f.out).unwrap().ct;
        let back = resample_to_grid(&on_crop, &crop.cut_grid.into(), Interpolation::Nearest, 0.0).unwrap();
        let expected = cut(&source_ct(), &crop.cut.into(), AIR_HU).unwrap();
        assert_eq!(back.data(), expected.data());
    }

    #[test]
    fn same_spec_reuses_the_cache_and_a_new_spec_rebuilds() {
        let f = fixture(&["a"]);
        let first = build(&f, &finer()).unwrap();
        assert!(!first.reused);
        let ct_file = f.out.join("a_L1").join(CT_FILE);
        let written = std::fs::metadata(&ct_file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = build(&f, &finer()).unwrap();
        assert!(second.reused);
        assert_eq!(second.index, first.index);
        assert_eq!(std::fs::metadata(&ct_file).unwrap().modified().unwrap(), written);

        let wider = CropSpec { margin_mm: 8.0, ..finer() };
        let third = build(&f, &wider).unwrap();
        assert!(!third.reused);
        assert_eq!(load_crop_index(&f.out).unwrap().spec, wider);
        assert_eq!(entry(&third.index, "a", "L1").cut.shape, [16, 32, 32]);
    }

    #[test]
    fn changed_manifest_rebuilds_and_drops_crops_it_no_longer_has() {
        let f = fixture(&["a", "b"]);
        assert!(!build(&f, &finer()).unwrap().reused);
        let mut manifest = Manifest::load(&f.manifest, false).unwrap();
        manifest.cases.truncate(1);
        manifest.cases[0].fold = Some(3);
        manifest.save(&f.manifest).unwrap();
        let rebuilt = build(&f, &finer()).unwrap();
        assert!(!rebuilt.reused);
        assert!(rebuilt.index.crops.iter().all(|c| c.fold == Some(3)));
        assert!(!f.out.join("b_L1").exists());
    }

    #[test]
    fn missing_ct_names_the_case_and_leaves_no_index() {
        let f = fixture(&["a", "b"]);
        build(&f, &same_spacing()).unwrap();
        std::fs::remove_file(f.root.join("b").join("ct.nii")).unwrap();
        let error = format!("{:#}", build(&f, &finer()).unwrap_err());
        assert!(error.starts_with("case b: ") && error.contains("ct.nii"), "{error}");
        assert!(!f.out.join(INDEX_FILE).exists(), "the old index must not name crops of another spec");
    }

    #[test]
    fn ct_of_another_shape_names_the_case() {
        let f = fixture(&["a"]);
        let small = Volume::new(Array3::zeros((8, 8, 8)), SOURCE_SPACING, source_affine()).unwrap();
        write_volume(&f.root.join("a").join("ct.nii"), &small, NiftiDtype::I16).unwrap();
        let error = format!("{:#}", build(&f, &finer()).unwrap_err());
        assert!(error.starts_with("case a: CT ") && error.contains("[8, 8, 8]"), "{error}");
    }

    #[test]
    fn progress_reports_every_case_and_order_follows_the_manifest() {
        let f = fixture(&["a", "b", "c"]);
        let calls = Mutex::new(Vec::new());
        let index = build_crop_cache(&f.manifest, &f.out, &finer(), 2, &|done, total| {
            calls.lock().unwrap().push((done, total))
        })
        .unwrap()
        .index;
        let mut calls = calls.into_inner().unwrap();
        calls.sort();
        assert_eq!(calls, vec![(1, 3), (2, 3), (3, 3)]);
        let order: Vec<_> = index.crops.iter().map(|c| c.dir.as_str()).collect();
        assert_eq!(order, ["a_T12", "a_L1", "b_L1", "c_L1"]);
    }
}
