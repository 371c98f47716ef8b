//! NIfTI-1 input and output: files (`.nii`, `.nii.gz`, and `.hdr`/`.img` pairs on read) and
//! in-memory bytes to and from [`Volume`], masks to `uint8` files on a [`Grid`].
//!
//! Reading follows the NIfTI-1 standard: voxels scaled by `scl_slope`/`scl_inter` (slope 0 or
//! not finite: no scaling), the affine from the sform when `sform_code > 0`, else the qform
//! when `qform_code > 0`, else the spacing alone (the standard's "method 1"), spacing from
//! `pixdim` and lengths converted to mm by `xyzt_units`. Data come out `[z, y, x]` in C order
//! (a NIfTI file stores x fastest, so the bytes on disk are already in that order).
//!
//! The `nifti` crate parses headers and converts voxel types and byte orders; this module reads
//! the bytes itself so that a header's claims cannot make it allocate more than the input
//! holds (a small `.nii.gz` from the network may claim gigabytes) and so that every failure is
//! a [`NiftiError`] naming the file, never a panic.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use ndarray::{Array3, Ix3};
use nifti::header::{MAGIC_CODE_NI1, MAGIC_CODE_NIP1};
use nifti::{Endianness, InMemNiftiVolume, IntoNdArray, NiftiHeader, NiftiType};

use crate::fsutil::write_atomic;
use crate::volume::{Affine, Grid, Volume, VolumeError};

/// The name errors give to input that came as bytes rather than from a file.
const IN_MEMORY: &str = "<in-memory NIfTI>";
const HEADER_BYTES: u64 = 348;
/// Header plus the 4-byte extension flag: where a single-file `.nii` keeps its voxels.
const SINGLE_FILE_DATA_START: u64 = 352;
const NIFTI2_HEADER_BYTES: i32 = 540;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const NIFTI_UNITS_MM: u8 = 2;
/// `NIFTI_XFORM_SCANNER_ANAT`: what we write, since our world coordinates are the scanner's.
const XFORM_SCANNER: i16 = 1;
/// How far (relative) an affine may be from rotation times spacing and still get a qform.
const QFORM_TOLERANCE: f64 = 1e-4;

/// Voxel types [`write_volume`] can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NiftiDtype {
    /// 0..=255, rounded to nearest.
    U8,
    /// -32768..=32767, rounded to nearest (HU fits).
    I16,
    F32,
}

impl NiftiDtype {
    fn nifti_type(self) -> NiftiType {
        match self {
            NiftiDtype::U8 => NiftiType::Uint8,
            NiftiDtype::I16 => NiftiType::Int16,
            NiftiDtype::F32 => NiftiType::Float32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("{}: cannot read: {source}", file.display())]
    Read { file: PathBuf, source: io::Error },
    #[error("{}: cannot write: {source}", file.display())]
    Write { file: PathBuf, source: io::Error },
    #[error("{}: not a NIfTI-1 file: {reason}", file.display())]
    NotNifti { file: PathBuf, reason: String },
    #[error("{}: NIfTI-2 (or CIFTI-2) is not supported; save it as NIfTI-1", file.display())]
    Nifti2 { file: PathBuf },
    #[error("{}: truncated: needs at least {expected} bytes (decompressed), has {found}", file.display())]
    Truncated { file: PathBuf, expected: u64, found: u64 },
    #[error("{}: header of a .hdr/.img pair whose image is missing (looked for {})", file.display(), display_paths(looked_for))]
    MissingImage { file: PathBuf, looked_for: Vec<PathBuf> },
    #[error("{}: header of a .hdr/.img pair (magic 'ni1'); send a single .nii or .nii.gz", file.display())]
    HeaderOnly { file: PathBuf },
    #[error("{}: invalid header: {reason}", file.display())]
    BadHeader { file: PathBuf, reason: String },
    #[error("{}: shape (x, y, z, t, ...) = {shape:?} is not one volume (only dimensions of 1 beyond the third can be dropped)", file.display())]
    NotVolume { file: PathBuf, shape: Vec<usize> },
    #[error("{}: unsupported voxel datatype code {code}; supported: integers of 8 to 64 bits, float32, float64", file.display())]
    UnsupportedDatatype { file: PathBuf, code: i16 },
    #[error("{}: {source}", file.display())]
    Geometry { file: PathBuf, source: VolumeError },
    #[error("{}: {source}", file.display())]
    Nifti { file: PathBuf, source: nifti::NiftiError },
    #[error("{}: shape [z, y, x] = {shape:?} exceeds NIfTI-1's 32767 voxels an axis", file.display())]
    ShapeTooLarge { file: PathBuf, shape: [usize; 3] },
    #[error("{}: mask shape [z, y, x] = {mask:?} differs from its grid's {grid:?}", file.display())]
    ShapeMismatch { file: PathBuf, mask: [usize; 3], grid: [usize; 3] },
    #[error("{}: cannot store voxel [z, y, x] = {index:?} = {value} as {dtype:?}", file.display())]
    NotRepresentable { file: PathBuf, dtype: NiftiDtype, index: [usize; 3], value: f32 },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Reads a NIfTI-1 volume from `.nii`, `.nii.gz` (gzip recognised by its magic bytes, whatever
/// the name) or the `.hdr` of a `.hdr`/`.img` pair.
pub fn read_volume(path: &Path) -> Result<Volume, NiftiError> {
    let input = open_maybe_gz(path)?;
    read_from(path, input, |header, len| {
        let looked_for = pair_image_candidates(path);
        let image = looked_for
            .iter()
            .find(|p| p.is_file())
            .ok_or_else(|| NiftiError::MissingImage { file: path.to_path_buf(), looked_for: looked_for.clone() })?;
        read_voxels(image, open_maybe_gz(image)?, 0, vox_offset(header, 0), len)
    })
}

/// Reads a whole `.nii` or `.nii.gz` file held in memory (gzip recognised by its magic bytes).
pub fn read_volume_bytes(bytes: &[u8]) -> Result<Volume, NiftiError> {
    let file = Path::new(IN_MEMORY);
    let input: Box<dyn Read + '_> =
        if bytes.starts_with(&GZIP_MAGIC) { Box::new(MultiGzDecoder::new(bytes)) } else { Box::new(bytes) };
    read_from(file, input, |_, _| Err(NiftiError::HeaderOnly { file: file.to_path_buf() }))
}

/// Writes `volume` as a single-file NIfTI-1 (gzip-compressed when the name ends in `.gz`),
/// atomically. `U8` and `I16` round to nearest and refuse values outside their range or not
/// finite. The affine goes into the sform (as f32, which NIfTI stores) and, where it is a
/// rotation times the spacing, into the qform too; `pixdim` holds the spacing.
pub fn write_volume(path: &Path, volume: &Volume, dtype: NiftiDtype) -> Result<(), NiftiError> {
    let voxels = encode_voxels(path, volume.data(), dtype)?;
    write_nifti(path, &volume.grid(), dtype, &voxels)
}

/// Writes a mask as `uint8` 0/1 on `grid` (sform and qform set), so that it overlays the
/// volume the grid came from in any viewer.
pub fn write_mask(path: &Path, mask: &Array3<bool>, grid: &Grid) -> Result<(), NiftiError> {
    let shape = [mask.shape()[0], mask.shape()[1], mask.shape()[2]];
    if shape != grid.shape {
        return Err(NiftiError::ShapeMismatch { file: path.to_path_buf(), mask: shape, grid: grid.shape });
    }
    let voxels: Vec<u8> = mask.iter().map(|&inside| u8::from(inside)).collect();
    write_nifti(path, grid, NiftiDtype::U8, &voxels)
}

fn read_error(file: &Path, source: io::Error) -> NiftiError {
    NiftiError::Read { file: file.to_path_buf(), source }
}

fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>, NiftiError> {
    let mut input = BufReader::new(File::open(path).map_err(|e| read_error(path, e))?);
    let gzip = input.fill_buf().map_err(|e| read_error(path, e))?.starts_with(&GZIP_MAGIC);
    Ok(if gzip { Box::new(MultiGzDecoder::new(input)) } else { Box::new(input) })
}

/// `a.hdr` or `a.hdr.gz` -> `a.img`, `a.img.gz`.
fn pair_image_candidates(header: &Path) -> Vec<PathBuf> {
    let name = header.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let stem = Path::new(name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    ["img", "img.gz"].iter().map(|ext| header.with_file_name(format!("{stem}.{ext}"))).collect()
}

/// Header, then `len` bytes of voxels from the same input, or from `pair_image` for the
/// header of a `.hdr`/`.img` pair (magic `ni1`).
fn read_from(
    file: &Path,
    mut input: impl Read,
    pair_image: impl FnOnce(&NiftiHeader, u64) -> Result<Vec<u8>, NiftiError>,
) -> Result<Volume, NiftiError> {
    let header = read_header(file, &mut input)?;
    let xyz = volume_shape_xyz(file, &header)?;
    let datatype = supported_datatype(file, &header)?;
    // Each axis is below 2^15 and a voxel at most 8 bytes: no overflow.
    let len = (xyz.iter().product::<usize>() * datatype.size_of()) as u64;
    let raw = if header.magic == *MAGIC_CODE_NI1 {
        pair_image(&header, len)?
    } else {
        read_voxels(file, input, HEADER_BYTES, vox_offset(&header, SINGLE_FILE_DATA_START), len)?
    };
    volume_from(file, &header, xyz, datatype, raw)
}

fn read_header(file: &Path, input: &mut impl Read) -> Result<NiftiHeader, NiftiError> {
    let block = read_up_to(file, input, HEADER_BYTES)?;
    if let Some(size) = block.first_chunk::<4>() {
        let (little, big) = (i32::from_le_bytes(*size), i32::from_be_bytes(*size));
        if little == NIFTI2_HEADER_BYTES || big == NIFTI2_HEADER_BYTES {
            return Err(NiftiError::Nifti2 { file: file.to_path_buf() });
        }
        if little != HEADER_BYTES as i32 && big != HEADER_BYTES as i32 {
            let reason = format!("header size field is {little} (little-endian), not 348");
            return Err(NiftiError::NotNifti { file: file.to_path_buf(), reason });
        }
    }
    if (block.len() as u64) < HEADER_BYTES {
        return Err(NiftiError::Truncated {
            file: file.to_path_buf(),
            expected: HEADER_BYTES,
            found: block.len() as u64,
        });
    }
    NiftiHeader::from_reader(block.as_slice()).map_err(|e| match e {
        nifti::NiftiError::InvalidFormat => NiftiError::NotNifti {
            file: file.to_path_buf(),
            reason: "no NIfTI-1 magic 'n+1' or 'ni1' (an ANALYZE 7.5 header?)".into(),
        },
        source => NiftiError::Nifti { file: file.to_path_buf(), source },
    })
}

/// At most `limit` bytes: fewer only at the end of the input.
fn read_up_to(file: &Path, input: &mut impl Read, limit: u64) -> Result<Vec<u8>, NiftiError> {
    let mut bytes = Vec::new();
    match input.take(limit).read_to_end(&mut bytes) {
        Ok(_) => Ok(bytes),
        // A gzip stream cut short ends this way; its bytes so far are in `bytes`.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(bytes),
        Err(e) => Err(read_error(file, e)),
    }
}

/// The `len` bytes of voxels at byte `start` of an input already read up to `position`.
/// Allocates only what the input really holds, whatever the header claims.
fn read_voxels(file: &Path, mut input: impl Read, position: u64, start: u64, len: u64) -> Result<Vec<u8>, NiftiError> {
    let skip = start.saturating_sub(position);
    let skipped = io::copy(&mut input.by_ref().take(skip), &mut io::sink()).map_err(|e| read_error(file, e))?;
    let raw = if skipped == skip { read_up_to(file, &mut input, len)? } else { Vec::new() };
    if skipped < skip || (raw.len() as u64) < len {
        let found = position + skipped + raw.len() as u64;
        return Err(NiftiError::Truncated { file: file.to_path_buf(), expected: start + len, found });
    }
    Ok(raw)
}

/// Where the voxels start; `minimum` for a single file, whose header may say 0.
fn vox_offset(header: &NiftiHeader, minimum: u64) -> u64 {
    // A float field (for ANALYZE's sake); NaN or negative saturate to 0.
    (header.vox_offset as u64).max(minimum)
}

/// Checked `(x, y, z)` of a header whose dimensions beyond the third are all 1.
fn volume_shape_xyz(file: &Path, header: &NiftiHeader) -> Result<[usize; 3], NiftiError> {
    let bad = |reason: String| NiftiError::BadHeader { file: file.to_path_buf(), reason };
    // NIfTI-1 dimensions are signed 16-bit; the crate reads them unsigned.
    let ndim = header.dim[0] as i16;
    if !(1..=7).contains(&ndim) {
        return Err(bad(format!("dim[0] = {ndim} is not a number of dimensions 1..=7")));
    }
    let mut shape = Vec::with_capacity(ndim as usize);
    for (i, &d) in header.dim.iter().enumerate().take(ndim as usize + 1).skip(1) {
        match usize::try_from(d as i16) {
            Ok(n) if n > 0 => shape.push(n),
            _ => return Err(bad(format!("dim[{i}] = {} must be positive", d as i16))),
        }
    }
    if shape.iter().skip(3).any(|&n| n != 1) {
        return Err(NiftiError::NotVolume { file: file.to_path_buf(), shape });
    }
    Ok(std::array::from_fn(|axis| shape.get(axis).copied().unwrap_or(1)))
}

fn supported_datatype(file: &Path, header: &NiftiHeader) -> Result<NiftiType, NiftiError> {
    use NiftiType::*;
    match header.data_type() {
        Ok(t @ (Uint8 | Int8 | Uint16 | Int16 | Uint32 | Int32 | Uint64 | Int64 | Float32 | Float64)) => Ok(t),
        _ => Err(NiftiError::UnsupportedDatatype { file: file.to_path_buf(), code: header.datatype }),
    }
}

/// Voxels `raw` (file order, x fastest) of a checked shape and type to a [`Volume`].
fn volume_from(
    file: &Path,
    header: &NiftiHeader,
    [x, y, z]: [usize; 3],
    datatype: NiftiType,
    raw: Vec<u8>,
) -> Result<Volume, NiftiError> {
    let nifti_error = |source| NiftiError::Nifti { file: file.to_path_buf(), source };
    let dim = [3, x as u16, y as u16, z as u16, 1, 1, 1, 1];
    // Slope 0 here: the crate would scale in f32; we scale below in f64, as nibabel does.
    let xyz = InMemNiftiVolume::from_raw_fields(dim, datatype, 0.0, 0.0, raw, header.endianness)
        .and_then(|v| v.into_ndarray::<f32>())
        .map_err(nifti_error)?;
    let xyz = xyz.into_dimensionality::<Ix3>().expect("dim[0] = 3 gives a 3D array");
    // Column-major (x, y, z) reversed is row-major [z, y, x]: no copy.
    let mut zyx = xyz.reversed_axes();
    if let Some((slope, inter)) = scaling(file, header)? {
        zyx.mapv_inplace(|v| (f64::from(v) * slope + inter) as f32);
    }
    let spacing_xyz = spacing_xyz_mm(header);
    let affine = affine_mm(header);
    Volume::new(zyx, [spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]], affine)
        .map_err(|source| NiftiError::Geometry { file: file.to_path_buf(), source })
}

/// `(slope, inter)` when the header asks for scaling: slope finite and non-zero, not (1, 0).
fn scaling(file: &Path, header: &NiftiHeader) -> Result<Option<(f64, f64)>, NiftiError> {
    let (slope, inter) = (f64::from(header.scl_slope), f64::from(header.scl_inter));
    if slope == 0.0 || !slope.is_finite() || (slope == 1.0 && inter == 0.0) {
        return Ok(None);
    }
    if !inter.is_finite() {
        let reason = format!("scl_slope {slope} with scl_inter {inter}");
        return Err(NiftiError::BadHeader { file: file.to_path_buf(), reason });
    }
    Ok(Some((slope, inter)))
}

/// Millimetres per unit of `pixdim` and of world coordinates; unknown units count as mm.
fn mm_per_unit(header: &NiftiHeader) -> f64 {
    match header.xyzt_units & 0x07 {
        1 => 1000.0, // metre
        3 => 0.001,  // micrometre
        _ => 1.0,
    }
}

/// `pixdim[1..=3]` in file units, as the reference reader takes them: the absolute value, and
/// 1 where zero or not finite (2D images often leave `pixdim[3]` at 0).
fn pixdim_xyz(header: &NiftiHeader) -> [f64; 3] {
    std::array::from_fn(|axis| {
        let d = f64::from(header.pixdim[axis + 1]).abs();
        if d > 0.0 && d.is_finite() { d } else { 1.0 }
    })
}

fn spacing_xyz_mm(header: &NiftiHeader) -> [f64; 3] {
    pixdim_xyz(header).map(|d| d * mm_per_unit(header))
}

/// The standard's choice: sform if `sform_code > 0`, else qform if `qform_code > 0`, else the
/// spacing alone; world lengths converted to mm.
fn affine_mm(header: &NiftiHeader) -> Affine {
    let mut affine = if header.sform_code > 0 {
        let rows = [header.srow_x, header.srow_y, header.srow_z];
        std::array::from_fn(|r| if r < 3 { rows[r].map(f64::from) } else { [0.0, 0.0, 0.0, 1.0] })
    } else if header.qform_code > 0 {
        qform_affine(header)
    } else {
        let [dx, dy, dz] = pixdim_xyz(header);
        [[dx, 0.0, 0.0, 0.0], [0.0, dy, 0.0, 0.0], [0.0, 0.0, dz, 0.0], [0.0, 0.0, 0.0, 1.0]]
    };
    let scale = mm_per_unit(header);
    affine.iter_mut().take(3).flatten().for_each(|v| *v *= scale);
    affine
}

/// The qform ("method 2"): rotation from the quaternion `(a, b, c, d)` with `a` implied,
/// times `pixdim`, the z column negated when `qfac = pixdim[0]` is negative, plus the offsets.
fn qform_affine(header: &NiftiHeader) -> Affine {
    let [b, c, d] = [header.quatern_b, header.quatern_c, header.quatern_d].map(f64::from);
    let bcd_squared = b * b + c * c + d * d;
    let (a, b, c, d) = if 1.0 - bcd_squared < 1e-7 {
        // A 180 degree rotation (a = 0): renormalise b, c, d as nifti1_io does.
        let norm = bcd_squared.sqrt();
        (0.0, b / norm, c / norm, d / norm)
    } else {
        ((1.0 - bcd_squared).sqrt(), b, c, d)
    };
    let rotation = [
        [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
        [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
        [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ];
    let [dx, dy, dz] = pixdim_xyz(header);
    let qfac = if header.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let scale = [dx, dy, dz * qfac];
    let offset = [header.quatern_x, header.quatern_y, header.quatern_z].map(f64::from);
    std::array::from_fn(|r| {
        if r < 3 {
            [rotation[r][0] * scale[0], rotation[r][1] * scale[1], rotation[r][2] * scale[2], offset[r]]
        } else {
            [0.0, 0.0, 0.0, 1.0]
        }
    })
}

/// The qform fields for an affine that is a rotation (possibly with a flip: `qfac` -1) times
/// `spacing_xyz`; `None` for shears or a spacing that is not the affine's.
struct Qform {
    bcd: [f64; 3],
    qfac: f64,
}

fn qform_of(affine: &Affine, spacing_xyz: [f64; 3]) -> Option<Qform> {
    let mut r = [[0.0; 3]; 3];
    for (c, &spacing) in spacing_xyz.iter().enumerate() {
        let norm = (0..3).map(|row| affine[row][c] * affine[row][c]).sum::<f64>().sqrt();
        if (norm - spacing).abs() > QFORM_TOLERANCE * spacing {
            return None;
        }
        (0..3).for_each(|row| r[row][c] = affine[row][c] / norm);
    }
    let orthonormal = (0..3).all(|i| {
        (0..3).all(|j| {
            let dot: f64 = (0..3).map(|k| r[k][i] * r[k][j]).sum();
            (dot - if i == j { 1.0 } else { 0.0 }).abs() <= QFORM_TOLERANCE
        })
    });
    if !orthonormal {
        return None;
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    (0..3).for_each(|row| r[row][2] *= qfac);
    Some(Qform { bcd: rotation_quaternion_bcd(&r), qfac })
}

/// `(b, c, d)` of the unit quaternion with `a >= 0` for a proper rotation (nifti1_io's method).
fn rotation_quaternion_bcd(r: &[[f64; 3]; 3]) -> [f64; 3] {
    let trace_plus_one = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (a, b, c, d) = if trace_plus_one > 0.5 {
        let a = 0.5 * trace_plus_one.sqrt();
        (a, 0.25 * (r[2][1] - r[1][2]) / a, 0.25 * (r[0][2] - r[2][0]) / a, 0.25 * (r[1][0] - r[0][1]) / a)
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        if xd > 1.0 {
            let b = 0.5 * xd.sqrt();
            (0.25 * (r[2][1] - r[1][2]) / b, b, 0.25 * (r[0][1] + r[1][0]) / b, 0.25 * (r[0][2] + r[2][0]) / b)
        } else if yd > 1.0 {
            let c = 0.5 * yd.sqrt();
            (0.25 * (r[0][2] - r[2][0]) / c, 0.25 * (r[0][1] + r[1][0]) / c, c, 0.25 * (r[1][2] + r[2][1]) / c)
        } else {
            let d = 0.5 * zd.sqrt();
            (0.25 * (r[1][0] - r[0][1]) / d, 0.25 * (r[0][2] + r[2][0]) / d, 0.25 * (r[1][2] + r[2][1]) / d, d)
        }
    };
    let sign = if a < 0.0 { -1.0 } else { 1.0 };
    [b * sign, c * sign, d * sign]
}

/// Little-endian voxels in `[z, y, x]` C order, which is NIfTI's x-fastest order on disk.
fn encode_voxels(file: &Path, data: &Array3<f32>, dtype: NiftiDtype) -> Result<Vec<u8>, NiftiError> {
    let (min, max) = match dtype {
        NiftiDtype::U8 => (f32::from(u8::MIN), f32::from(u8::MAX)),
        NiftiDtype::I16 => (f32::from(i16::MIN), f32::from(i16::MAX)),
        NiftiDtype::F32 => (f32::NEG_INFINITY, f32::INFINITY),
    };
    let mut bytes = Vec::with_capacity(data.len() * dtype.nifti_type().size_of());
    for ((z, y, x), &value) in data.indexed_iter() {
        let rounded = value.round();
        let fits = dtype == NiftiDtype::F32 || (rounded >= min && rounded <= max);
        if !fits {
            return Err(NiftiError::NotRepresentable { file: file.to_path_buf(), dtype, index: [z, y, x], value });
        }
        match dtype {
            NiftiDtype::U8 => bytes.push(rounded as u8),
            NiftiDtype::I16 => bytes.extend((rounded as i16).to_le_bytes()),
            NiftiDtype::F32 => bytes.extend(value.to_le_bytes()),
        }
    }
    Ok(bytes)
}

fn write_nifti(path: &Path, grid: &Grid, dtype: NiftiDtype, voxels: &[u8]) -> Result<(), NiftiError> {
    let header = header_for(path, grid, dtype)?;
    let gzip = path.to_string_lossy().ends_with(".gz");
    write_atomic(path, &encode_file(&header, voxels, gzip))
        .map_err(|source| NiftiError::Write { file: path.to_path_buf(), source })
}

/// A little-endian single-file header for `grid`: sform from the affine, qform where
/// [`qform_of`] allows, `pixdim` from the spacing, units mm.
fn header_for(file: &Path, grid: &Grid, dtype: NiftiDtype) -> Result<NiftiHeader, NiftiError> {
    let [z, y, x] = grid.shape;
    let too_large = || NiftiError::ShapeTooLarge { file: file.to_path_buf(), shape: grid.shape };
    let axis = |n: usize| i16::try_from(n).map(|n| n as u16).map_err(|_| too_large());
    let [sz, sy, sx] = grid.spacing;
    let a = &grid.affine;
    let row = |r: usize| a[r].map(|v| v as f32);
    let mut header = NiftiHeader {
        dim: [3, axis(x)?, axis(y)?, axis(z)?, 1, 1, 1, 1],
        datatype: dtype.nifti_type() as i16,
        bitpix: (dtype.nifti_type().size_of() * 8) as i16,
        pixdim: [1.0, sx as f32, sy as f32, sz as f32, 1.0, 1.0, 1.0, 1.0],
        vox_offset: SINGLE_FILE_DATA_START as f32,
        scl_slope: 1.0,
        scl_inter: 0.0,
        xyzt_units: NIFTI_UNITS_MM,
        sform_code: XFORM_SCANNER,
        srow_x: row(0),
        srow_y: row(1),
        srow_z: row(2),
        qform_code: 0,
        magic: *MAGIC_CODE_NIP1,
        endianness: Endianness::Little,
        ..NiftiHeader::default()
    };
    if let Some(qform) = qform_of(a, [sx, sy, sz]) {
        header.qform_code = XFORM_SCANNER;
        header.pixdim[0] = qform.qfac as f32;
        [header.quatern_b, header.quatern_c, header.quatern_d] = qform.bcd.map(|q| q as f32);
        [header.quatern_x, header.quatern_y, header.quatern_z] = [a[0][3], a[1][3], a[2][3]].map(|t| t as f32);
    }
    Ok(header)
}

/// Header, an empty extension flag, voxels; gzip-compressed if asked.
fn encode_file(header: &NiftiHeader, voxels: &[u8], gzip: bool) -> Vec<u8> {
    let head = [header_bytes(header).as_slice(), &[0u8; 4]].concat();
    if !gzip {
        return [head.as_slice(), voxels].concat();
    }
    // Level 1, as nibabel: CT masks and volumes compress well at the fastest level.
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&head)
        .and_then(|()| gz.write_all(voxels))
        .and_then(|()| gz.finish())
        .expect("writing to a Vec cannot fail")
}

/// The 348 bytes of a NIfTI-1 header, little-endian, in the standard's field order (the
/// `nifti` crate writes headers only to files, and we write through [`write_atomic`]).
fn header_bytes(h: &NiftiHeader) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_BYTES as usize);
    b.extend(h.sizeof_hdr.to_le_bytes());
    b.extend(h.data_type);
    b.extend(h.db_name);
    b.extend(h.extents.to_le_bytes());
    b.extend(h.session_error.to_le_bytes());
    b.extend([h.regular, h.dim_info]);
    h.dim.iter().for_each(|d| b.extend(d.to_le_bytes()));
    [h.intent_p1, h.intent_p2, h.intent_p3].iter().for_each(|f| b.extend(f.to_le_bytes()));
    [h.intent_code, h.datatype, h.bitpix, h.slice_start].iter().for_each(|i| b.extend(i.to_le_bytes()));
    h.pixdim.iter().for_each(|f| b.extend(f.to_le_bytes()));
    [h.vox_offset, h.scl_slope, h.scl_inter].iter().for_each(|f| b.extend(f.to_le_bytes()));
    b.extend(h.slice_end.to_le_bytes());
    b.extend([h.slice_code, h.xyzt_units]);
    [h.cal_max, h.cal_min, h.slice_duration, h.toffset].iter().for_each(|f| b.extend(f.to_le_bytes()));
    [h.glmax, h.glmin].iter().for_each(|i| b.extend(i.to_le_bytes()));
    let mut descrip = [0u8; 80];
    let n = h.descrip.len().min(80);
    descrip[..n].copy_from_slice(&h.descrip[..n]);
    b.extend(descrip);
    b.extend(h.aux_file);
    [h.qform_code, h.sform_code].iter().for_each(|i| b.extend(i.to_le_bytes()));
    let quatern = [h.quatern_b, h.quatern_c, h.quatern_d, h.quatern_x, h.quatern_y, h.quatern_z];
    quatern.iter().chain(&h.srow_x).chain(&h.srow_y).chain(&h.srow_z).for_each(|f| b.extend(f.to_le_bytes()));
    b.extend(h.intent_name);
    b.extend(h.magic);
    debug_assert_eq!(b.len(), HEADER_BYTES as usize);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::spacing_affine;

    const SPACING: [f64; 3] = [2.5, 0.8, 0.7];

    /// Rotated 30 degrees about z, x flipped (determinant < 0, so qfac = -1), shifted.
    fn oblique_affine() -> Affine {
        let (s, c) = 30f64.to_radians().sin_cos();
        let [sz, sy, sx] = SPACING;
        [[-c * sx, -s * sy, 0.0, -100.25], [-s * sx, c * sy, 0.0, 50.5], [0.0, 0.0, sz, 20.125], [0.0, 0.0, 0.0, 1.0]]
    }

    /// Integer values that every output type holds, so round trips compare exactly.
    fn oblique_volume() -> Volume {
        let data = Array3::from_shape_fn((3, 4, 5), |(z, y, x)| (60 * z + 12 * y + 2 * x) as f32 + 7.0);
        Volume::new(data, SPACING, oblique_affine()).unwrap()
    }

    fn to_f32_precision(affine: &Affine) -> Affine {
        affine.map(|row| row.map(|v| f64::from(v as f32)))
    }

    /// A single-file header for a `[z, y, x]` shape with `dim` overridden: files that
    /// `write_volume` would never write.
    fn header_with_dim(dim: [u16; 8], dtype: NiftiDtype) -> NiftiHeader {
        let grid = Grid { shape: [1, 1, 1], spacing: [1.0; 3], affine: spacing_affine([1.0; 3]) };
        NiftiHeader { dim, ..header_for(Path::new("test"), &grid, dtype).unwrap() }
    }

    fn i16_voxels(values: &[i16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn round_trips_every_dtype_in_nii_and_nii_gz_as_a_fixed_point() {
        let dir = tempfile::tempdir().unwrap();
        let original = oblique_volume();
        for dtype in [NiftiDtype::U8, NiftiDtype::I16, NiftiDtype::F32] {
            for name in ["volume.nii", "volume.nii.gz"] {
                let path = dir.path().join(name);
                write_volume(&path, &original, dtype).unwrap();
                let first = read_volume(&path).unwrap();
                assert_eq!(first.data(), original.data(), "{dtype:?} {name}");
                assert_eq!(first.affine(), &to_f32_precision(original.affine()), "{dtype:?} {name}");
                assert_eq!(first.spacing(), SPACING.map(|s| f64::from(s as f32)), "{dtype:?} {name}");
                write_volume(&path, &first, dtype).unwrap();
                assert_eq!(read_volume(&path).unwrap(), first, "{dtype:?} {name}: second round trip");
            }
        }
    }

    #[test]
    fn compresses_by_extension_and_reads_gzip_by_magic_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, packed) = (dir.path().join("a.nii"), dir.path().join("a.nii.gz"));
        write_volume(&plain, &oblique_volume(), NiftiDtype::F32).unwrap();
        write_volume(&packed, &oblique_volume(), NiftiDtype::F32).unwrap();
        let packed_bytes = std::fs::read(&packed).unwrap();
        assert!(packed_bytes.starts_with(&GZIP_MAGIC));
        assert!(!std::fs::read(&plain).unwrap().starts_with(&GZIP_MAGIC));
        assert_eq!(read_volume_bytes(&packed_bytes).unwrap(), read_volume(&plain).unwrap());
    }

    #[test]
    fn integer_output_rounds_to_nearest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rounded.nii");
        let data = Array3::from_shape_vec((1, 1, 4), vec![1.4, 1.6, -1.6, -0.4]).unwrap();
        write_volume(&path, &Volume::with_spacing(data, [1.0; 3]).unwrap(), NiftiDtype::I16).unwrap();
        assert_eq!(read_volume(&path).unwrap().as_slice(), &[1.0, 2.0, -2.0, 0.0]);
    }

    #[test]
    fn written_qform_decodes_to_the_affine_and_shears_get_none() {
        let [sz, sy, sx] = SPACING;
        let half_turn_about_x = [[sx, 0.0, 0.0, 1.0], [0.0, -sy, 0.0, 2.0], [0.0, 0.0, -sz, 3.0], [0.0, 0.0, 0.0, 1.0]];
        for affine in [spacing_affine(SPACING), oblique_affine(), half_turn_about_x] {
            let grid = Grid { shape: [2, 2, 2], spacing: SPACING, affine };
            let header = header_for(Path::new("q.nii"), &grid, NiftiDtype::F32).unwrap();
            assert_eq!(header.qform_code, XFORM_SCANNER);
            let decoded = qform_affine(&header);
            for (r, (got, want)) in decoded.iter().zip(&affine).enumerate() {
                for (c, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!((g - w).abs() < 1e-5 * w.abs().max(1.0), "{affine:?} [{r}][{c}]: {g} vs {w}");
                }
            }
        }
        let mut sheared = oblique_affine();
        sheared[0][2] = 0.5;
        let grid = Grid { shape: [2, 2, 2], spacing: SPACING, affine: sheared };
        assert_eq!(header_for(Path::new("s.nii"), &grid, NiftiDtype::F32).unwrap().qform_code, 0);
    }

    #[test]
    fn affine_comes_from_sform_else_qform_else_spacing() {
        let grid = oblique_volume().grid();
        let mut header = header_for(Path::new("x.nii"), &grid, NiftiDtype::I16).unwrap();
        header.srow_x[3] = 999.0;
        assert_eq!(affine_mm(&header)[0][3], 999.0, "sform first");
        header.sform_code = 0;
        assert!((affine_mm(&header)[0][3] - grid.affine[0][3]).abs() < 1e-4, "then qform");
        assert!((affine_mm(&header)[1][0] - grid.affine[1][0]).abs() < 1e-6, "then qform");
        header.qform_code = 0;
        let [sz, sy, sx] = SPACING.map(|s| f64::from(s as f32));
        assert_eq!(affine_mm(&header), spacing_affine([sz, sy, sx]), "else spacing alone");
    }

    #[test]
    fn lengths_in_micrometres_become_mm() {
        let mut header = header_with_dim([3, 1, 1, 1, 1, 1, 1, 1], NiftiDtype::I16);
        header.xyzt_units = 3;
        header.pixdim[1..4].copy_from_slice(&[500.0, 250.0, 2000.0]);
        header.srow_x = [500.0, 0.0, 0.0, 1000.0];
        let volume = read_volume_bytes(&encode_file(&header, &i16_voxels(&[1]), false)).unwrap();
        assert_eq!(volume.spacing(), [2.0, 0.25, 0.5]);
        assert_eq!(volume.affine()[0], [0.5, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn scaling_applies_unless_slope_is_zero_or_not_finite() {
        let mut header = header_with_dim([3, 3, 1, 1, 1, 1, 1, 1], NiftiDtype::I16);
        let voxels = i16_voxels(&[0, 100, -2000]);
        let read = |slope: f32, inter: f32| {
            let header = NiftiHeader { scl_slope: slope, scl_inter: inter, ..header.clone() };
            read_volume_bytes(&encode_file(&header, &voxels, false)).unwrap().as_slice().to_vec()
        };
        assert_eq!(read(0.5, -1024.0), [-1024.0, -974.0, -2024.0]);
        assert_eq!(read(0.0, 7.0), [0.0, 100.0, -2000.0]);
        assert_eq!(read(f32::NAN, 7.0), [0.0, 100.0, -2000.0]);
        header.scl_slope = 2.0;
        header.scl_inter = f32::INFINITY;
        let error = read_volume_bytes(&encode_file(&header, &voxels, false)).unwrap_err();
        assert!(matches!(error, NiftiError::BadHeader { .. }), "{error}");
    }

    #[test]
    fn header_bytes_parse_back_to_the_same_header() {
        let header = header_for(Path::new("h.nii"), &oblique_volume().grid(), NiftiDtype::I16).unwrap();
        let bytes = header_bytes(&header);
        assert_eq!(bytes.len(), 348);
        assert_eq!(NiftiHeader::from_reader(bytes.as_slice()).unwrap(), header);
    }

    #[test]
    fn four_d_with_frames_is_an_error_naming_file_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames.nii");
        let header = header_with_dim([4, 2, 1, 1, 3, 1, 1, 1], NiftiDtype::I16);
        std::fs::write(&path, encode_file(&header, &i16_voxels(&[1, 2, 3, 4, 5, 6]), false)).unwrap();
        let error = read_volume(&path).unwrap_err();
        assert!(matches!(&error, NiftiError::NotVolume { shape, .. } if shape == &[2, 1, 1, 3]), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    }

    #[test]
    fn single_frame_4d_and_2d_images_read_as_volumes() {
        let one_frame = header_with_dim([4, 3, 2, 1, 1, 1, 1, 1], NiftiDtype::I16);
        let plane = header_with_dim([2, 3, 2, 0, 0, 0, 0, 0], NiftiDtype::I16);
        for header in [one_frame, plane] {
            let volume = read_volume_bytes(&encode_file(&header, &i16_voxels(&[0, 1, 2, 3, 4, 5]), false)).unwrap();
            assert_eq!(volume.shape(), [1, 2, 3]);
            assert_eq!(volume.data()[[0, 1, 0]], 3.0, "x runs fastest on disk");
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.nii");
        write_volume(&path, &oblique_volume(), NiftiDtype::F32).unwrap();
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 10]).unwrap();
        let error = read_volume(&path).unwrap_err();
        let (expected, found) = (whole.len() as u64, whole.len() as u64 - 10);
        assert!(matches!(error, NiftiError::Truncated { expected: e, found: f, .. } if (e, f) == (expected, found)));
        assert!(error.to_string().contains("cut.nii"), "{error}");
        let error = read_volume_bytes(&whole[..200]).unwrap_err();
        assert!(matches!(error, NiftiError::Truncated { expected: 348, found: 200, .. }), "{error}");
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.nii.gz");
        write_volume(&path, &oblique_volume(), NiftiDtype::F32).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let error = read_volume_bytes(&whole[..whole.len() / 2]).unwrap_err();
        assert!(matches!(error, NiftiError::Truncated { .. }), "{error}");
    }

    #[test]
    fn garbage_and_nifti2_are_errors() {
        let garbage: Vec<u8> = (0..1000u32).map(|i| (i * 37 % 251) as u8).collect();
        assert!(matches!(read_volume_bytes(&garbage), Err(NiftiError::NotNifti { .. })));
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&garbage).unwrap();
        assert!(matches!(read_volume_bytes(&gz.finish().unwrap()), Err(NiftiError::NotNifti { .. })));
        let fake_gzip = [&GZIP_MAGIC[..], &garbage].concat();
        assert!(matches!(read_volume_bytes(&fake_gzip), Err(NiftiError::Read { .. })));
        let nifti2 = [&540i32.to_le_bytes()[..], b"n+2\0\r\n\x1a\n", &garbage].concat();
        assert!(matches!(read_volume_bytes(&nifti2), Err(NiftiError::Nifti2 { .. })));
        let mut analyze = header_with_dim([3, 1, 1, 1, 1, 1, 1, 1], NiftiDtype::U8);
        analyze.magic = [0; 4];
        assert!(matches!(read_volume_bytes(&encode_file(&analyze, &[0], false)), Err(NiftiError::NotNifti { .. })));
    }

    #[test]
    fn unsupported_datatype_is_an_error() {
        let mut header = header_with_dim([3, 1, 1, 1, 1, 1, 1, 1], NiftiDtype::F32);
        header.datatype = NiftiType::Complex64 as i16;
        header.bitpix = 64;
        let error = read_volume_bytes(&encode_file(&header, &[0; 8], false)).unwrap_err();
        assert!(matches!(error, NiftiError::UnsupportedDatatype { code: 32, .. }), "{error}");
    }

    #[test]
    fn header_pairs_read_with_their_image_and_fail_without() {
        let dir = tempfile::tempdir().unwrap();
        let header = NiftiHeader {
            magic: *MAGIC_CODE_NI1,
            vox_offset: 0.0,
            ..header_with_dim([3, 2, 1, 1, 1, 1, 1, 1], NiftiDtype::I16)
        };
        let hdr = dir.path().join("pair.hdr");
        std::fs::write(&hdr, encode_file(&header, &[], false)).unwrap();
        let error = read_volume(&hdr).unwrap_err();
        assert!(
            matches!(&error, NiftiError::MissingImage { looked_for, .. } if looked_for[0] == dir.path().join("pair.img"))
        );
        assert!(matches!(read_volume_bytes(&std::fs::read(&hdr).unwrap()), Err(NiftiError::HeaderOnly { .. })));
        std::fs::write(dir.path().join("pair.img"), i16_voxels(&[-5, 9])).unwrap();
        assert_eq!(read_volume(&hdr).unwrap().as_slice(), &[-5.0, 9.0]);
    }

    #[test]
    fn failed_write_leaves_no_file_and_names_the_voxel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.nii.gz");
        let mut volume = oblique_volume();
        volume.data_mut()[[2, 1, 3]] = 40000.0;
        let error = write_volume(&path, &volume, NiftiDtype::I16).unwrap_err();
        assert!(matches!(error, NiftiError::NotRepresentable { index: [2, 1, 3], value: 40000.0, .. }), "{error}");
        volume.data_mut()[[2, 1, 3]] = f32::NAN;
        assert!(write_volume(&path, &volume, NiftiDtype::U8).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn mask_is_uint8_on_its_grid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mask.nii.gz");
        let grid = oblique_volume().grid();
        let mask = Array3::from_shape_fn(grid.shape, |(z, y, x)| (z + y + x) % 3 == 0);
        write_mask(&path, &mask, &grid).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = NiftiHeader::from_reader(MultiGzDecoder::new(bytes.as_slice())).unwrap();
        assert_eq!((header.datatype, header.sform_code, header.qform_code), (2, 1, 1));
        let read = read_volume(&path).unwrap();
        assert_eq!(read.data(), &mask.mapv(|inside| f32::from(u8::from(inside))));
        assert_eq!(read.affine(), &to_f32_precision(&grid.affine));
        let error = write_mask(&path, &Array3::from_elem((1, 1, 1), true), &grid).unwrap_err();
        assert!(matches!(error, NiftiError::ShapeMismatch { mask: [1, 1, 1], .. }), "{error}");
    }
}
