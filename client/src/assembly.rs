//! The output volumes of a Segment answer put together from their chunks and checked against
//! the summary: a valid grid, each volume's bytes exactly once, in order, none missing.

use anyhow::{Context, Result, bail, ensure};
use fracmap_core::volume::spacing_affine;
use fracmap_core::{Affine, Grid, Mask, Volume};
use fracmap_proto::{OutputKind, OutputVolume, SegmentSummary, VolumeChunk, VolumeGrid, VoxelType};
use ndarray::Array3;

/// The volumes of one answer, on the summary's grid (the CT's).
#[derive(Debug)]
pub struct Outputs {
    pub grid: Grid,
    /// Fracture probability in [0, 1] (stored values times their scale).
    pub probability: Volume,
    pub mask: Mask,
    /// The VAE error map, when asked for.
    pub error_map: Option<Volume>,
}

/// Volumes being received, as the summary announced them.
pub struct Assembly {
    grid: Grid,
    volumes: Vec<Incoming>,
}

/// One announced volume and its bytes so far.
struct Incoming {
    kind: OutputKind,
    voxel_type: VoxelType,
    scale: f64,
    total: usize,
    bytes: Vec<u8>,
}

impl Assembly {
    /// Checks the summary's grid and outputs: a probability volume and a mask, at most one of
    /// each kind, each exactly as many bytes as its voxels take.
    pub fn new(summary: &SegmentSummary) -> Result<Self> {
        let grid = grid(summary.grid.as_ref().context("the summary has no grid")?)?;
        let voxels: usize = grid.shape.iter().product();
        let mut volumes: Vec<Incoming> = Vec::new();
        for output in &summary.outputs {
            let incoming = Incoming::announced(output, voxels)?;
            ensure!(volumes.iter().all(|v| v.kind != incoming.kind), "{} is announced twice", name(incoming.kind));
            volumes.push(incoming);
        }
        for kind in [OutputKind::Probability, OutputKind::Mask] {
            ensure!(volumes.iter().any(|v| v.kind == kind), "the summary announces no {} volume", name(kind));
        }
        Ok(Assembly { grid, volumes })
    }

    /// Bytes of all the announced volumes.
    pub fn total_bytes(&self) -> u64 {
        self.volumes.iter().map(|v| v.total as u64).sum()
    }

    /// Adds a chunk, which must continue its volume where the last one ended; returns its size.
    pub fn add(&mut self, chunk: VolumeChunk) -> Result<usize> {
        let kind = OutputKind::try_from(chunk.kind).unwrap_or(OutputKind::Unspecified);
        let Some(volume) = self.volumes.iter_mut().find(|v| v.kind == kind) else {
            bail!("a chunk of {}, which the summary does not announce", name(kind));
        };
        let (have, len) = (volume.bytes.len() as u64, chunk.data.len());
        ensure!(
            chunk.offset == have,
            "{}: chunk at byte {} where byte {have} was due (a gap or an overlap)",
            name(kind),
            chunk.offset
        );
        ensure!(
            volume.bytes.len() + len <= volume.total,
            "{}: chunk of {len} bytes at byte {have} overflows its {} bytes",
            name(kind),
            volume.total
        );
        volume.bytes.extend_from_slice(&chunk.data);
        Ok(len)
    }

    /// The volumes, once every byte of each has come.
    pub fn finish(self) -> Result<Outputs> {
        let Assembly { grid, volumes } = self;
        let (mut probability, mut mask, mut error_map) = (None, None, None);
        for volume in volumes {
            ensure!(
                volume.bytes.len() == volume.total,
                "{}: the answer ended after {} of its {} bytes",
                name(volume.kind),
                volume.bytes.len(),
                volume.total
            );
            let kind = volume.kind;
            let values = Array3::from_shape_vec(grid.shape, volume.values()).expect("sizes checked when announced");
            match kind {
                OutputKind::Mask => mask = Some(values.mapv(|v| v != 0.0)),
                _ => {
                    let on_grid = Volume::new(values, grid.spacing, grid.affine).context("the summary's grid")?;
                    if kind == OutputKind::Probability {
                        probability = Some(on_grid);
                    } else {
                        error_map = Some(on_grid);
                    }
                }
            }
        }
        let (Some(probability), Some(mask)) = (probability, mask) else { unreachable!("checked when announced") };
        Ok(Outputs { grid, probability, mask, error_map })
    }
}

impl Incoming {
    fn announced(output: &OutputVolume, voxels: usize) -> Result<Self> {
        let kind = OutputKind::try_from(output.kind).unwrap_or(OutputKind::Unspecified);
        let voxel_type = VoxelType::try_from(output.voxel_type).unwrap_or(VoxelType::Unspecified);
        ensure!(kind != OutputKind::Unspecified, "an output of unknown kind {}", output.kind);
        let expected = match (kind, voxel_type) {
            (OutputKind::Mask | OutputKind::Probability | OutputKind::ErrorMap, VoxelType::Uint8) => voxels,
            (OutputKind::Probability | OutputKind::ErrorMap, VoxelType::Float32) => voxels * 4,
            _ => bail!("{} as {} is not a volume this client reads", name(kind), voxel_type.as_str_name()),
        };
        ensure!(
            output.total_bytes == expected as u64,
            "{}: {} bytes announced, its {voxels} voxels of {} take {expected}",
            name(kind),
            output.total_bytes,
            voxel_type.as_str_name()
        );
        // Proto3 sends an unset scale as 0; the API's "else 1".
        let scale = if output.scale == 0.0 { 1.0 } else { output.scale };
        ensure!(scale.is_finite() && scale > 0.0, "{}: scale {scale} is not a positive number", name(kind));
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(expected).with_context(|| format!("{}: cannot hold {expected} bytes", name(kind)))?;
        Ok(Incoming { kind, voxel_type, scale, total: expected, bytes })
    }

    /// Voxel values times the scale (in f64, so that 230 / 255 is the f32 nearest it),
    /// `[z, y, x]` C order (x fastest, as sent).
    fn values(&self) -> Vec<f32> {
        let scaled = |v: f32| (f64::from(v) * self.scale) as f32;
        match self.voxel_type {
            VoxelType::Float32 => {
                self.bytes.chunks_exact(4).map(|b| scaled(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect()
            }
            _ => self.bytes.iter().map(|&b| scaled(f32::from(b))).collect(),
        }
    }
}

/// The summary's grid, checked: three positive axis lengths, spacing finite and positive,
/// and 16 affine numbers (none: the spacing on the diagonal).
fn grid(grid: &VolumeGrid) -> Result<Grid> {
    let shape: [u64; 3] =
        grid.shape.as_slice().try_into().with_context(|| format!("grid shape {:?} is not [z, y, x]", grid.shape))?;
    ensure!(shape.iter().all(|&n| n > 0), "grid shape {shape:?} has an empty axis");
    let shape = shape.map(|n| n as usize);
    let spacing: [f64; 3] = grid
        .spacing_mm
        .as_slice()
        .try_into()
        .with_context(|| format!("grid spacing {:?} is not [z, y, x] mm", grid.spacing_mm))?;
    ensure!(spacing.iter().all(|s| s.is_finite() && *s > 0.0), "grid spacing {spacing:?} mm is not positive");
    let affine: Affine = match grid.affine.len() {
        0 => spacing_affine(spacing),
        16 => std::array::from_fn(|r| std::array::from_fn(|c| grid.affine[4 * r + c])),
        n => bail!("grid affine has {n} numbers, not 16"),
    };
    // Float32 volumes on it take 4 bytes a voxel.
    shape.iter().try_fold(4usize, |all, &n| all.checked_mul(n)).context("grid shape too large")?;
    Ok(Grid { shape, spacing, affine })
}

/// An output kind as people read it.
fn name(kind: OutputKind) -> &'static str {
    match kind {
        OutputKind::Probability => "probability",
        OutputKind::Mask => "mask",
        OutputKind::ErrorMap => "error map",
        OutputKind::Unspecified => "an output of unknown kind",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use fracmap_proto::VolumeGrid;

    use super::*;

    pub(crate) const SHAPE: [usize; 3] = [2, 3, 4];
    const VOXELS: usize = 24;

    fn output(kind: OutputKind, voxel_type: VoxelType, total_bytes: usize, scale: f64) -> OutputVolume {
        OutputVolume { kind: kind.into(), voxel_type: voxel_type.into(), total_bytes: total_bytes as u64, scale }
    }

    /// A summary announcing a uint8 probability (scale 1/255) and a mask on a 2 x 3 x 4 grid.
    pub(crate) fn summary() -> SegmentSummary {
        SegmentSummary {
            grid: Some(VolumeGrid {
                shape: SHAPE.iter().map(|&n| n as u64).collect(),
                spacing_mm: vec![3.0, 2.0, 1.0],
                affine: vec![0.0, -2.0, 0.0, 10.0, 1.0, 0.0, 0.0, -5.0, 0.0, 0.0, 3.0, 7.0, 0.0, 0.0, 0.0, 1.0],
            }),
            outputs: vec![
                output(OutputKind::Probability, VoxelType::Uint8, VOXELS, 1.0 / 255.0),
                output(OutputKind::Mask, VoxelType::Uint8, VOXELS, 1.0),
            ],
            ..SegmentSummary::default()
        }
    }

    fn chunk(kind: OutputKind, offset: usize, data: &[u8]) -> VolumeChunk {
        VolumeChunk { kind: kind.into(), offset: offset as u64, data: data.to_vec() }
    }

    #[test]
    fn chunks_in_order_make_the_volumes() {
        let probability: Vec<u8> = (0..VOXELS as u8).map(|v| v * 10).collect();
        let mask: Vec<u8> = (0..VOXELS).map(|v| u8::from(v % 5 == 0)).collect();
        let mut assembly = Assembly::new(&summary()).unwrap();
        assert_eq!(assembly.total_bytes(), 2 * VOXELS as u64);
        for (offset, part) in [(0, &probability[..10]), (10, &probability[10..])] {
            assembly.add(chunk(OutputKind::Probability, offset, part)).unwrap();
        }
        assembly.add(chunk(OutputKind::Mask, 0, &mask)).unwrap();
        let outputs = assembly.finish().unwrap();
        assert_eq!(outputs.grid.shape, SHAPE);
        assert_eq!(outputs.grid.affine[0], [0.0, -2.0, 0.0, 10.0]);
        assert_eq!(outputs.probability.data()[[1, 2, 3]], 230.0 / 255.0);
        assert_eq!(outputs.probability.data()[[0, 0, 1]], 10.0 / 255.0);
        assert!(outputs.mask[[0, 0, 0]] && outputs.mask[[0, 1, 1]] && !outputs.mask[[0, 0, 1]]);
        assert!(outputs.error_map.is_none());
    }

    #[test]
    fn a_gap_or_an_overlap_is_an_error() {
        let mut assembly = Assembly::new(&summary()).unwrap();
        assembly.add(chunk(OutputKind::Probability, 0, &[0; 8])).unwrap();
        let gap = assembly.add(chunk(OutputKind::Probability, 10, &[0; 4])).unwrap_err();
        assert_eq!(gap.to_string(), "probability: chunk at byte 10 where byte 8 was due (a gap or an overlap)");
        assert!(assembly.add(chunk(OutputKind::Probability, 4, &[0; 4])).is_err(), "overlap");
    }

    #[test]
    fn a_chunk_past_the_end_is_an_error() {
        let mut assembly = Assembly::new(&summary()).unwrap();
        assembly.add(chunk(OutputKind::Mask, 0, &[0; 20])).unwrap();
        let error = assembly.add(chunk(OutputKind::Mask, 20, &[0; 5])).unwrap_err();
        assert_eq!(error.to_string(), "mask: chunk of 5 bytes at byte 20 overflows its 24 bytes");
    }

    #[test]
    fn a_volume_cut_short_is_an_error() {
        let mut assembly = Assembly::new(&summary()).unwrap();
        assembly.add(chunk(OutputKind::Probability, 0, &[0; VOXELS])).unwrap();
        assembly.add(chunk(OutputKind::Mask, 0, &[0; 10])).unwrap();
        assert_eq!(assembly.finish().unwrap_err().to_string(), "mask: the answer ended after 10 of its 24 bytes");
    }

    #[test]
    fn a_chunk_of_a_volume_not_announced_is_an_error() {
        let mut assembly = Assembly::new(&summary()).unwrap();
        let error = assembly.add(chunk(OutputKind::ErrorMap, 0, &[0; 4])).unwrap_err();
        assert!(error.to_string().contains("error map, which the summary does not announce"), "{error}");
    }

    #[test]
    fn a_summary_that_does_not_add_up_is_refused() {
        let mut wrong_size = summary();
        wrong_size.outputs[0].total_bytes = 23;
        let error = Assembly::new(&wrong_size).err().unwrap().to_string();
        assert!(
            error.contains("probability: 23 bytes announced, its 24 voxels of VOXEL_TYPE_UINT8 take 24"),
            "{error}"
        );

        let mut no_mask = summary();
        no_mask.outputs.pop();
        assert!(Assembly::new(&no_mask).err().unwrap().to_string().contains("no mask volume"));

        let mut bad_grid = summary();
        bad_grid.grid.as_mut().unwrap().shape = vec![2, 0, 4];
        assert!(Assembly::new(&bad_grid).err().unwrap().to_string().contains("empty axis"));

        let mut bad_affine = summary();
        bad_affine.grid.as_mut().unwrap().affine.pop();
        assert!(Assembly::new(&bad_affine).err().unwrap().to_string().contains("15 numbers, not 16"));
    }

    #[test]
    fn float32_volumes_are_read_little_endian() {
        let mut with_floats = summary();
        with_floats.outputs[0] = output(OutputKind::Probability, VoxelType::Float32, 4 * VOXELS, 1.0);
        with_floats.outputs.push(output(OutputKind::ErrorMap, VoxelType::Float32, 4 * VOXELS, 0.0));
        let floats: Vec<u8> = (0..VOXELS).flat_map(|v| (v as f32 / 100.0).to_le_bytes()).collect();
        let mut assembly = Assembly::new(&with_floats).unwrap();
        for kind in [OutputKind::Probability, OutputKind::ErrorMap] {
            assembly.add(chunk(kind, 0, &floats)).unwrap();
        }
        assembly.add(chunk(OutputKind::Mask, 0, &[1; VOXELS])).unwrap();
        let outputs = assembly.finish().unwrap();
        assert_eq!(outputs.probability.data()[[0, 1, 2]], 0.06);
        assert_eq!(outputs.error_map.unwrap().data()[[1, 0, 0]], 0.12, "scale 0 (unset) is 1");
    }
}
