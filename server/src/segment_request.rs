//! A Segment request off the wire: the header checked, the chunks gathered within the
//! server's [`Limits`], the bytes decoded into a CT volume (raw voxels, a NIfTI file, or a
//! DICOM series read by `fracmap_dicom`), its vertebrae and fracture boxes.
//!
//! Every refusal is a gRPC status whose message names the field: INVALID_ARGUMENT for what
//! the client got wrong, RESOURCE_EXHAUSTED for what is over the server's limits.

use std::io::Read;
use std::time::Instant;

use flate2::read::MultiGzDecoder;
use fracmap_core::nifti_io::read_volume_bytes;
use fracmap_core::volume::spacing_affine;
use fracmap_core::{Affine, Box3, Volume};
use fracmap_dicom::Source as DicomSource;
use ndarray::Array3;
use tonic::{Status, Streaming};

use crate::pipeline::Vertebra;
use crate::proto::{
    SegmentHeader, SegmentRequest, VolumeDescription, VolumeEncoding, VolumeGrid, VoxelBox, VoxelType,
    segment_request::Part,
};

/// What one request may send. The defaults pass a 512 x 512 x 1024 int16 CT with a label map
/// of the same size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of CT and label map together.
    pub max_request_bytes: u64,
    /// Voxels of the CT (and so of the label map).
    pub max_voxels: u64,
    /// Bytes of one request message (a chunk); also the largest response chunk.
    pub max_chunk_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_request_bytes: 1 << 30, max_voxels: 512 * 512 * 1024, max_chunk_bytes: 4 << 20 }
    }
}

/// How much earlier than the server a client's deadline may pass (its timer starts before
/// the request reaches the server).
const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_millis(100);

/// Room for the protobuf framing around a chunk's payload.
pub const MESSAGE_OVERHEAD: usize = 64 << 10;

/// The first message of a request, which must be its header.
pub async fn receive_header(stream: &mut Streaming<SegmentRequest>) -> Result<SegmentHeader, Status> {
    match stream.message().await? {
        Some(SegmentRequest { part: Some(Part::Header(header)) }) => Ok(header),
        Some(_) => Err(Status::invalid_argument("the first message of a Segment request must be its header")),
        None => Err(Status::invalid_argument("empty Segment request: no header")),
    }
}

/// Checks what the header declares before any voxel is received: the volumes' encodings,
/// grids and sizes against `limits`, the boxes, the threshold.
pub fn check_header(header: &SegmentHeader, limits: &Limits) -> Result<(), Status> {
    let ct = header.ct.as_ref().ok_or_else(|| Status::invalid_argument("header.ct is missing"))?;
    check_description("ct", ct, limits)?;
    let mut total = ct.total_bytes;
    if let Some(labels) = &header.vertebra_labels {
        check_description("vertebra_labels", labels, limits)?;
        total = total.saturating_add(labels.total_bytes);
        if !header.vertebrae.is_empty() {
            return Err(Status::invalid_argument("give header.vertebrae or header.vertebra_labels, not both"));
        }
    } else if header.vertebrae.is_empty() {
        return Err(Status::invalid_argument(
            "no vertebrae to examine: give header.vertebrae (body boxes) or header.vertebra_labels (a label map)",
        ));
    }
    if total > limits.max_request_bytes {
        return Err(Status::resource_exhausted(format!(
            "the request declares {total} bytes of volumes; this server takes at most {} (limits.max_request_bytes)",
            limits.max_request_bytes
        )));
    }
    for (index, vertebra) in header.vertebrae.iter().enumerate() {
        let field = format!("header.vertebrae[{index}].body_box");
        voxel_box(&field, vertebra.body_box.as_ref())?;
    }
    for (index, fracture_box) in header.fracture_boxes.iter().enumerate() {
        voxel_box(&format!("header.fracture_boxes[{index}]"), Some(fracture_box))?;
    }
    if let Some(threshold) = header.threshold
        && !(threshold > 0.0 && threshold <= 1.0)
    {
        return Err(Status::invalid_argument(format!("header.threshold must be in (0, 1], got {threshold}")));
    }
    Ok(())
}

fn check_description(field: &str, volume: &VolumeDescription, limits: &Limits) -> Result<(), Status> {
    if volume.total_bytes == 0 {
        return Err(Status::invalid_argument(format!("{field}.total_bytes is 0: a volume has voxels")));
    }
    match volume.encoding() {
        VolumeEncoding::Raw => {
            let grid =
                volume.grid.as_ref().ok_or_else(|| Status::invalid_argument(format!("{field}.grid is missing")))?;
            let shape = grid_shape(field, grid)?;
            let voxels = shape.iter().map(|&n| n as u64).try_fold(1u64, |a, n| a.checked_mul(n)).unwrap_or(u64::MAX);
            if voxels > limits.max_voxels {
                return Err(Status::resource_exhausted(format!(
                    "{field}: {voxels} voxels; this server takes at most {} (limits.max_voxels)",
                    limits.max_voxels
                )));
            }
            let size = voxel_size(field, volume.voxel_type())?;
            let expected = voxels.saturating_mul(size);
            if volume.total_bytes != expected {
                return Err(Status::invalid_argument(format!(
                    "{field}.total_bytes is {}, but shape {shape:?} of {} takes {expected} bytes",
                    volume.total_bytes,
                    volume.voxel_type().as_str_name()
                )));
            }
            Ok(())
        }
        VolumeEncoding::Nifti => Ok(()),
        // Its voxel count is checked from the files' headers, before any pixel is decoded.
        VolumeEncoding::Dicom if field == "ct" => Ok(()),
        VolumeEncoding::Dicom => Err(Status::invalid_argument(format!(
            "{field}: VOLUME_ENCODING_DICOM is for the CT only; send the label map raw or as NIfTI"
        ))),
        VolumeEncoding::Unspecified => Err(Status::invalid_argument(format!(
            "{field}.encoding is unset: VOLUME_ENCODING_RAW, VOLUME_ENCODING_NIFTI or VOLUME_ENCODING_DICOM"
        ))),
    }
}

fn voxel_size(field: &str, voxel_type: VoxelType) -> Result<u64, Status> {
    match voxel_type {
        VoxelType::Uint8 => Ok(1),
        VoxelType::Int16 => Ok(2),
        VoxelType::Float32 => Ok(4),
        VoxelType::Unspecified => Err(Status::invalid_argument(format!(
            "{field}.voxel_type is unset: a raw volume is VOXEL_TYPE_INT16, VOXEL_TYPE_FLOAT32 or VOXEL_TYPE_UINT8"
        ))),
    }
}

fn grid_shape(field: &str, grid: &VolumeGrid) -> Result<[usize; 3], Status> {
    let shape: [u64; 3] = grid.shape.as_slice().try_into().map_err(|_| {
        Status::invalid_argument(format!("{field}.grid.shape must have 3 numbers [z, y, x], got {:?}", grid.shape))
    })?;
    if shape.contains(&0) {
        return Err(Status::invalid_argument(format!("{field}.grid.shape {shape:?} has an empty axis")));
    }
    Ok(shape.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
}

/// A box of the request as a [`Box3`]; `field` names it in errors.
fn voxel_box(field: &str, voxel_box: Option<&VoxelBox>) -> Result<Box3, Status> {
    let voxel_box = voxel_box.ok_or_else(|| Status::invalid_argument(format!("{field} is missing")))?;
    let corner = |name: &str, values: &[u64]| -> Result<[usize; 3], Status> {
        let values: [u64; 3] = values.try_into().map_err(|_| {
            Status::invalid_argument(format!("{field}.{name} must have 3 numbers [z, y, x], got {values:?}"))
        })?;
        Ok(values.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
    };
    let (min, max) = (corner("min", &voxel_box.min)?, corner("max", &voxel_box.max)?);
    Box3::new(min, max).map_err(|error| Status::invalid_argument(format!("{field}: {error}")))
}

/// One volume of a request as it arrives: a NIfTI file's bytes, DICOM files split at their
/// length prefixes, or raw voxels converted to f32 chunk by chunk, so that the conversion
/// overlaps the upload and a 300 MB int16 CT is never held as bytes and as floats at once.
#[derive(Debug)]
pub enum Payload {
    Nifti(Vec<u8>),
    Dicom(DicomFiles),
    Voxels {
        voxel_type: VoxelType,
        values: Vec<f32>,
        /// The bytes of a voxel split between two chunks.
        carry: Vec<u8>,
    },
}

impl Payload {
    /// An empty payload for `description`, with room for its declared size (within the
    /// limits, checked by [`check_header`]): no copies of a growing buffer.
    fn for_volume(description: &VolumeDescription) -> Self {
        let total = usize::try_from(description.total_bytes).unwrap_or(0);
        match description.encoding() {
            VolumeEncoding::Raw => {
                let voxel_type = description.voxel_type();
                let size = voxel_size_of(voxel_type);
                Payload::Voxels { voxel_type, values: Vec::with_capacity(total / size), carry: Vec::new() }
            }
            VolumeEncoding::Dicom => Payload::Dicom(DicomFiles::default()),
            _ => Payload::Nifti(Vec::with_capacity(total)),
        }
    }

    /// A payload holding `bytes` whole, as if they had come in one chunk.
    pub fn of_bytes(description: &VolumeDescription, bytes: &[u8]) -> Self {
        let mut payload = Payload::for_volume(description);
        payload.push(bytes);
        payload
    }

    fn push(&mut self, chunk: &[u8]) {
        match self {
            Payload::Nifti(bytes) => bytes.extend_from_slice(chunk),
            Payload::Dicom(files) => files.push(chunk),
            Payload::Voxels { voxel_type, values, carry } => {
                let size = voxel_size_of(*voxel_type);
                let mut chunk = chunk;
                if !carry.is_empty() {
                    let missing = (size - carry.len()).min(chunk.len());
                    carry.extend_from_slice(&chunk[..missing]);
                    chunk = &chunk[missing..];
                    if carry.len() == size {
                        extend_raw(values, *voxel_type, carry);
                        carry.clear();
                    }
                }
                let whole = chunk.len() / size * size;
                extend_raw(values, *voxel_type, &chunk[..whole]);
                carry.extend_from_slice(&chunk[whole..]);
            }
        }
    }
}

/// DICOM files as they arrive: each preceded by its length (u64, little-endian), split
/// wherever the chunks end. Lengths are not trusted for allocation: a file grows as its
/// bytes come, and a stream that ends short of a length is refused by [`DicomFiles::finish`].
#[derive(Debug, Default)]
pub struct DicomFiles {
    files: Vec<Vec<u8>>,
    /// The bytes of a length prefix read so far.
    prefix: Vec<u8>,
    /// Bytes of the last file still to come.
    remaining: u64,
}

const DICOM_LENGTH_BYTES: usize = 8;

impl DicomFiles {
    fn push(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.remaining == 0 {
                let take = (DICOM_LENGTH_BYTES - self.prefix.len()).min(chunk.len());
                self.prefix.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if self.prefix.len() == DICOM_LENGTH_BYTES {
                    self.remaining = u64::from_le_bytes(self.prefix[..].try_into().expect("8 bytes"));
                    self.prefix.clear();
                    self.files.push(Vec::new());
                }
            } else {
                let take = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(chunk.len());
                self.files.last_mut().expect("a length opened a file").extend_from_slice(&chunk[..take]);
                self.remaining -= take as u64;
                chunk = &chunk[take..];
            }
        }
    }

    /// The files, once the stream has ended exactly after the last one.
    fn finish(self) -> Result<Vec<Vec<u8>>, String> {
        if !self.prefix.is_empty() {
            return Err(format!("the bytes end inside the length of DICOM file {}", self.files.len() + 1));
        }
        if self.remaining > 0 {
            return Err(format!(
                "DICOM file {} ends {} bytes short of the length sent before it",
                self.files.len(),
                self.remaining
            ));
        }
        if self.files.is_empty() {
            return Err("no DICOM file".to_string());
        }
        Ok(self.files)
    }
}

/// A volume of the request being received: its payload and how many bytes came.
struct Incoming {
    field: &'static str,
    total: u64,
    received: u64,
    payload: Payload,
}

impl Incoming {
    fn new(field: &'static str, description: &VolumeDescription) -> Self {
        Incoming { field, total: description.total_bytes, received: 0, payload: Payload::for_volume(description) }
    }

    fn push(&mut self, chunk: &[u8]) -> Result<(), Status> {
        if self.received + chunk.len() as u64 > self.total {
            return Err(Status::invalid_argument(format!(
                "{}: chunks add up to more than the {} bytes declared in header.{}.total_bytes",
                self.field, self.total, self.field
            )));
        }
        self.received += chunk.len() as u64;
        self.payload.push(chunk);
        Ok(())
    }
}

/// A request's volumes, received whole.
#[derive(Debug)]
pub struct Received {
    pub ct: Payload,
    pub vertebra_labels: Option<Payload>,
}

/// Gathers the chunks that follow `header` until the client closes its side, or `deadline`.
/// A chunk that overruns its volume's declared total is refused at once; a short total at
/// the end too. Calls `on_bytes` with each chunk's size (for the metrics).
pub async fn receive_volumes(
    stream: &mut Streaming<SegmentRequest>,
    header: &SegmentHeader,
    deadline: Option<Instant>,
    mut on_bytes: impl FnMut(usize),
) -> Result<Received, Status> {
    let ct = header.ct.as_ref().ok_or_else(|| Status::invalid_argument("header.ct is missing"))?;
    let mut ct = Incoming::new("ct", ct);
    let mut labels = header.vertebra_labels.as_ref().map(|labels| Incoming::new("vertebra_labels", labels));
    loop {
        let next = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), stream.message())
                .await
                .map_err(|_| Status::deadline_exceeded("deadline exceeded while receiving the volumes"))?,
            None => stream.message().await,
        };
        let Some(message) = next? else { break };
        let (volume, chunk) = match message.part {
            Some(Part::CtChunk(chunk)) => (&mut ct, chunk),
            Some(Part::VertebraLabelsChunk(chunk)) => match &mut labels {
                Some(labels) => (labels, chunk),
                None => {
                    return Err(Status::invalid_argument(
                        "a vertebra_labels_chunk came, but the header declares no vertebra_labels",
                    ));
                }
            },
            Some(Part::Header(_)) => return Err(Status::invalid_argument("a second header: one per request")),
            None => return Err(Status::invalid_argument("a request message with no part set")),
        };
        on_bytes(chunk.len());
        volume.push(&chunk)?;
    }
    for volume in std::iter::once(&ct).chain(&labels) {
        if volume.received < volume.total {
            let (field, got, total) = (volume.field, volume.received, volume.total);
            // A client whose deadline passes ends its upload (tonic's does, cleanly) just
            // before ours passes: its timer started first.
            if deadline.is_some_and(|deadline| Instant::now() + DEADLINE_SLACK >= deadline) {
                return Err(Status::deadline_exceeded(format!(
                    "deadline exceeded after {got} of the {total} bytes of {field}"
                )));
            }
            return Err(Status::invalid_argument(format!(
                "{field}: the request ended after {got} of the {total} bytes declared in header.{field}.total_bytes"
            )));
        }
    }
    Ok(Received { ct: ct.payload, vertebra_labels: labels.map(|labels| labels.payload) })
}

/// A request decoded: what the pipeline takes.
#[derive(Debug)]
pub struct Decoded {
    pub ct: Volume,
    pub vertebrae: Vec<Vertebra>,
    pub fracture_boxes: Vec<Box3>,
}

/// Decodes the received bytes as the header describes them. Boxes are checked against the
/// CT later, by the pipeline, with the same messages as for every caller.
pub fn decode(header: &SegmentHeader, received: Received, limits: &Limits) -> Result<Decoded, Status> {
    let ct_description = header.ct.as_ref().ok_or_else(|| Status::invalid_argument("header.ct is missing"))?;
    let ct = decode_volume("ct", ct_description, received.ct, limits)?;
    let vertebrae = match (&header.vertebra_labels, received.vertebra_labels) {
        (Some(description), Some(payload)) => {
            let labels = decode_volume("vertebra_labels", description, payload, limits)?;
            vertebrae_of_labels(&labels, &ct)?
        }
        _ => header
            .vertebrae
            .iter()
            .enumerate()
            .map(|(index, vertebra)| {
                let body_box = voxel_box(&format!("header.vertebrae[{index}].body_box"), vertebra.body_box.as_ref())?;
                let label = (!vertebra.label.is_empty()).then(|| vertebra.label.clone());
                Ok(Vertebra { label, body_box })
            })
            .collect::<Result<_, Status>>()?,
    };
    let fracture_boxes = header
        .fracture_boxes
        .iter()
        .enumerate()
        .map(|(index, b)| voxel_box(&format!("header.fracture_boxes[{index}]"), Some(b)))
        .collect::<Result<_, _>>()?;
    Ok(Decoded { ct, vertebrae, fracture_boxes })
}

fn decode_volume(
    field: &str,
    description: &VolumeDescription,
    payload: Payload,
    limits: &Limits,
) -> Result<Volume, Status> {
    match payload {
        Payload::Nifti(bytes) => {
            let voxels = nifti_voxels(&bytes)
                .map_err(|problem| Status::invalid_argument(format!("{field}: not a NIfTI-1 file ({problem})")))?;
            if voxels > limits.max_voxels {
                return Err(Status::resource_exhausted(format!(
                    "{field}: the NIfTI header declares {voxels} voxels; this server takes at most {} \
                     (limits.max_voxels)",
                    limits.max_voxels
                )));
            }
            read_volume_bytes(&bytes).map_err(|error| Status::invalid_argument(format!("{field}: {error}")))
        }
        Payload::Dicom(files) => decode_dicom(field, files, limits),
        Payload::Voxels { values, .. } => {
            let grid = description
                .grid
                .as_ref()
                .ok_or_else(|| Status::invalid_argument(format!("{field}.grid is missing")))?;
            let shape = grid_shape(field, grid)?;
            let data = Array3::from_shape_vec(shape, values)
                .map_err(|error| Status::invalid_argument(format!("{field}: {error}")))?;
            let spacing: [f64; 3] = grid.spacing_mm.as_slice().try_into().map_err(|_| {
                Status::invalid_argument(format!(
                    "{field}.grid.spacing_mm must have 3 numbers [z, y, x], got {:?}",
                    grid.spacing_mm
                ))
            })?;
            let affine = match grid.affine.len() {
                0 => spacing_affine(spacing),
                16 => affine_of(&grid.affine),
                n => {
                    return Err(Status::invalid_argument(format!(
                        "{field}.grid.affine must have 16 numbers (4x4, row-major) or none, got {n}"
                    )));
                }
            };
            Volume::new(data, spacing, affine)
                .map_err(|error| Status::invalid_argument(format!("{field}.grid: {error}")))
        }
    }
}

/// A DICOM series from the files received, as `fracmap segment` reads it (files named by
/// their place in the stream); its size checked against the limits before pixels are decoded.
fn decode_dicom(field: &str, files: DicomFiles, limits: &Limits) -> Result<Volume, Status> {
    let invalid = |problem: String| Status::invalid_argument(format!("{field}: {problem}"));
    let files = files.finish().map_err(invalid)?;
    let count = files.len();
    let sources = files
        .into_iter()
        .enumerate()
        .map(|(index, bytes)| DicomSource::Memory { name: format!("DICOM file {} of {count}", index + 1), bytes })
        .collect();
    let plan = fracmap_dicom::scan(sources, None).map_err(|error| invalid(error.to_string()))?;
    let voxels = plan.shape().iter().map(|&n| n as u64).product::<u64>();
    if voxels > limits.max_voxels {
        return Err(Status::resource_exhausted(format!(
            "{field}: the DICOM series has {voxels} voxels; this server takes at most {} (limits.max_voxels)",
            limits.max_voxels
        )));
    }
    for note in plan.notes() {
        tracing::info!("{field}: {note}");
    }
    let series = plan.read().map_err(|error| invalid(error.to_string()))?;
    Ok(series.volume)
}

/// Appends the little-endian voxels of `voxel_type` in `bytes` (whole voxels) as f32.
fn extend_raw(values: &mut Vec<f32>, voxel_type: VoxelType, bytes: &[u8]) {
    match voxel_type {
        VoxelType::Int16 => values.extend(bytes.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))),
        VoxelType::Float32 => {
            values.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        }
        VoxelType::Uint8 | VoxelType::Unspecified => values.extend(bytes.iter().map(|&b| f32::from(b))),
    }
}

/// Bytes of one voxel; 1 for an unset type (refused earlier by [`check_header`]).
pub fn voxel_size_of(voxel_type: VoxelType) -> usize {
    match voxel_type {
        VoxelType::Int16 => 2,
        VoxelType::Float32 => 4,
        VoxelType::Uint8 | VoxelType::Unspecified => 1,
    }
}

fn affine_of(values: &[f64]) -> Affine {
    let mut affine = [[0.0; 4]; 4];
    for (row, chunk) in affine.iter_mut().zip(values.chunks_exact(4)) {
        row.copy_from_slice(chunk);
    }
    affine
}

/// The voxel count a NIfTI-1 header declares, read before the volume is, so that a small
/// compressed file cannot make the server allocate past its limits.
fn nifti_voxels(bytes: &[u8]) -> Result<u64, String> {
    let mut header = [0u8; 348];
    let read = if bytes.starts_with(&[0x1f, 0x8b]) {
        MultiGzDecoder::new(bytes).read_exact(&mut header).map_err(|e| format!("cannot decompress its header: {e}"))
    } else if bytes.len() >= header.len() {
        header.copy_from_slice(&bytes[..348]);
        Ok(())
    } else {
        Err(format!("{} bytes, shorter than a NIfTI-1 header (348)", bytes.len()))
    };
    read?;
    let little = i32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) == 348;
    let big = i32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) == 348;
    if !little && !big {
        return Err("its first 4 bytes are not sizeof_hdr = 348".to_string());
    }
    let dim = |i: usize| {
        let bytes = [header[40 + 2 * i], header[41 + 2 * i]];
        if little { i16::from_le_bytes(bytes) } else { i16::from_be_bytes(bytes) }
    };
    let rank = dim(0);
    if !(1..=7).contains(&rank) {
        return Err(format!("dim[0] = {rank}, not 1..7"));
    }
    (1..=rank as usize).try_fold(1u64, |voxels, i| Ok(voxels.saturating_mul(dim(i).max(0) as u64)))
}

/// Names of the VerSe labels: 1..7 C1..C7, 8..19 T1..T12, 20..25 L1..L6, 28 T13.
pub fn verse_level_name(label: u8) -> Option<String> {
    match label {
        1..=7 => Some(format!("C{label}")),
        8..=19 => Some(format!("T{}", label - 7)),
        20..=25 => Some(format!("L{}", label - 19)),
        28 => Some("T13".to_string()),
        _ => None,
    }
}

/// One vertebra per VerSe vertebra label present in `labels` (sacrum and coccyx, 26 and 27,
/// are not vertebrae), in label order, with the label's bounding box as its body box.
fn vertebrae_of_labels(labels: &Volume, ct: &Volume) -> Result<Vec<Vertebra>, Status> {
    if labels.shape() != ct.shape() {
        return Err(Status::invalid_argument(format!(
            "vertebra_labels: shape {:?} differs from the CT's {:?} (the label map must be on the CT's grid)",
            labels.shape(),
            ct.shape()
        )));
    }
    let mut boxes: Vec<Option<([usize; 3], [usize; 3])>> = vec![None; 256];
    for ((z, y, x), &value) in labels.data().indexed_iter() {
        if value == 0.0 {
            continue;
        }
        if !(value.fract() == 0.0 && (1.0..=255.0).contains(&value)) {
            return Err(Status::invalid_argument(format!(
                "vertebra_labels: voxel [z, y, x] = [{z}, {y}, {x}] is {value}; labels are integers 0..255"
            )));
        }
        let entry = &mut boxes[value as usize];
        let (min, max) = entry.get_or_insert(([z, y, x], [z + 1, y + 1, x + 1]));
        for (axis, v) in [z, y, x].into_iter().enumerate() {
            min[axis] = min[axis].min(v);
            max[axis] = max[axis].max(v + 1);
        }
    }
    let vertebrae: Vec<Vertebra> = boxes
        .iter()
        .enumerate()
        .filter_map(|(label, found)| {
            let name = verse_level_name(label as u8)?;
            let (min, max) = (*found)?;
            Some(Vertebra { label: Some(name), body_box: Box3::new(min, max).expect("a found label spans voxels") })
        })
        .collect();
    if vertebrae.is_empty() {
        return Err(Status::invalid_argument(
            "vertebra_labels: no vertebra label (1..25 or 28, VerSe's) in the label map",
        ));
    }
    Ok(vertebrae)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Vertebra as ProtoVertebra;

    fn raw_ct(shape: [u64; 3], voxel_type: VoxelType) -> VolumeDescription {
        let size = match voxel_type {
            VoxelType::Int16 => 2,
            VoxelType::Float32 => 4,
            _ => 1,
        };
        VolumeDescription {
            encoding: VolumeEncoding::Raw.into(),
            grid: Some(VolumeGrid { shape: shape.to_vec(), spacing_mm: vec![2.0, 1.0, 1.0], affine: vec![] }),
            voxel_type: voxel_type.into(),
            total_bytes: shape.iter().product::<u64>() * size,
        }
    }

    fn header(ct: VolumeDescription) -> SegmentHeader {
        SegmentHeader {
            ct: Some(ct),
            vertebrae: vec![ProtoVertebra {
                label: "L1".into(),
                body_box: Some(VoxelBox { min: vec![1, 1, 1], max: vec![3, 3, 3] }),
            }],
            ..Default::default()
        }
    }

    fn message(status: Status) -> String {
        status.message().to_string()
    }

    fn invalid(result: Result<impl std::fmt::Debug, Status>) -> String {
        let status = result.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        message(status)
    }

    #[test]
    fn the_default_limits_pass_a_512_512_600_int16_ct() {
        assert!(check_header(&header(raw_ct([600, 512, 512], VoxelType::Int16)), &Limits::default()).is_ok());
    }

    #[test]
    fn declared_sizes_that_do_not_add_up_are_invalid_arguments_naming_the_field() {
        let mut ct = raw_ct([4, 4, 4], VoxelType::Int16);
        ct.total_bytes = 100;
        let status = check_header(&header(ct), &Limits::default()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(message(status).contains("ct.total_bytes is 100, but shape [4, 4, 4] of VOXEL_TYPE_INT16 takes 128"));
    }

    #[test]
    fn volumes_over_the_limits_are_resource_exhausted() {
        let limits = Limits { max_voxels: 1000, ..Limits::default() };
        let status = check_header(&header(raw_ct([10, 10, 11], VoxelType::Uint8)), &limits).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(message(status).contains("limits.max_voxels"));
        let limits = Limits { max_request_bytes: 100, ..Limits::default() };
        let status = check_header(&header(raw_ct([5, 5, 5], VoxelType::Uint8)), &limits).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(message(status).contains("limits.max_request_bytes"));
    }

    #[test]
    fn bad_boxes_thresholds_and_missing_vertebrae_are_named() {
        let limits = Limits::default();
        let mut h = header(raw_ct([4, 4, 4], VoxelType::Uint8));
        h.fracture_boxes = vec![VoxelBox { min: vec![2, 0, 0], max: vec![2, 1, 1] }];
        assert!(
            message(check_header(&h, &limits).unwrap_err()).contains("header.fracture_boxes[0]: empty box on axis z")
        );
        h.fracture_boxes = vec![VoxelBox { min: vec![0, 0], max: vec![1, 1, 1] }];
        assert!(message(check_header(&h, &limits).unwrap_err()).contains("header.fracture_boxes[0].min must have 3"));
        h.fracture_boxes.clear();
        h.threshold = Some(1.5);
        assert!(message(check_header(&h, &limits).unwrap_err()).contains("header.threshold must be in (0, 1]"));
        h.threshold = Some(f32::NAN);
        assert!(check_header(&h, &limits).is_err());
        h.threshold = None;
        h.vertebrae.clear();
        assert!(message(check_header(&h, &limits).unwrap_err()).contains("no vertebrae to examine"));
    }

    #[test]
    fn raw_int16_voxels_decode_little_endian_in_x_fastest_order() {
        let h = header(raw_ct([1, 2, 3], VoxelType::Int16));
        let values: [i16; 6] = [-1000, 0, 1, 2, 300, -5];
        let ct: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let received = Received { ct: Payload::of_bytes(h.ct.as_ref().unwrap(), &ct), vertebra_labels: None };
        let decoded = decode(&h, received, &Limits::default()).unwrap();
        assert_eq!(decoded.ct.shape(), [1, 2, 3]);
        assert_eq!(decoded.ct.data()[[0, 1, 0]], 2.0);
        assert_eq!(decoded.ct.data()[[0, 0, 0]], -1000.0);
        assert_eq!(decoded.ct.spacing(), [2.0, 1.0, 1.0]);
        assert_eq!(decoded.vertebrae[0].label.as_deref(), Some("L1"));
    }

    #[test]
    fn raw_voxels_split_between_chunks_decode_as_if_sent_whole() {
        let description = raw_ct([1, 3, 5], VoxelType::Float32);
        let values: Vec<f32> = (0..15).map(|i| i as f32 * 1.5 - 7.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Chunks of 1, 3, 7 and the rest bytes: voxels cut at every offset.
        let mut payload = Payload::for_volume(&description);
        for range in [0..1, 1..4, 4..11, 11..bytes.len()] {
            payload.push(&bytes[range]);
        }
        let Payload::Voxels { values: got, carry, .. } = payload else { panic!("raw is voxels") };
        assert_eq!(got, values);
        assert!(carry.is_empty());
    }

    #[test]
    fn bytes_that_are_not_nifti_are_refused() {
        let mut description = raw_ct([1, 1, 1], VoxelType::Uint8);
        description.encoding = VolumeEncoding::Nifti.into();
        let h = header(description);
        let ct = Payload::of_bytes(h.ct.as_ref().unwrap(), b"this is not a NIfTI file at all");
        let received = Received { ct, vertebra_labels: None };
        let message = invalid(decode(&h, received, &Limits::default()));
        assert!(message.contains("ct: not a NIfTI-1 file"), "{message}");
    }

    #[test]
    fn a_label_map_gives_one_vertebra_per_level_with_its_bounding_box() {
        let ct = Volume::with_spacing(Array3::zeros((6, 4, 4)), [1.0; 3]).unwrap();
        let mut labels = Array3::zeros((6, 4, 4));
        labels[[1, 1, 1]] = 20.0; // L1
        labels[[2, 3, 2]] = 20.0;
        labels[[4, 0, 0]] = 19.0; // T12
        labels[[5, 0, 0]] = 26.0; // sacrum: not a vertebra
        let labels = Volume::with_spacing(labels, [1.0; 3]).unwrap();
        let vertebrae = vertebrae_of_labels(&labels, &ct).unwrap();
        assert_eq!(vertebrae.len(), 2);
        assert_eq!(vertebrae[0].label.as_deref(), Some("T12"));
        assert_eq!(vertebrae[1].label.as_deref(), Some("L1"));
        assert_eq!(vertebrae[1].body_box, Box3::new([1, 1, 1], [3, 4, 3]).unwrap());
    }

    #[test]
    fn a_label_map_of_another_shape_or_with_fractions_is_refused() {
        let ct = Volume::with_spacing(Array3::zeros((6, 4, 4)), [1.0; 3]).unwrap();
        let other = Volume::with_spacing(Array3::zeros((6, 4, 5)), [1.0; 3]).unwrap();
        assert!(message(vertebrae_of_labels(&other, &ct).unwrap_err()).contains("differs from the CT's"));
        let mut fraction = Array3::zeros((6, 4, 4));
        fraction[[0, 0, 0]] = 1.5;
        let fraction = Volume::with_spacing(fraction, [1.0; 3]).unwrap();
        assert!(message(vertebrae_of_labels(&fraction, &ct).unwrap_err()).contains("is 1.5"));
    }

    #[test]
    fn verse_names() {
        assert_eq!(verse_level_name(1).as_deref(), Some("C1"));
        assert_eq!(verse_level_name(8).as_deref(), Some("T1"));
        assert_eq!(verse_level_name(19).as_deref(), Some("T12"));
        assert_eq!(verse_level_name(20).as_deref(), Some("L1"));
        assert_eq!(verse_level_name(25).as_deref(), Some("L6"));
        assert_eq!(verse_level_name(28).as_deref(), Some("T13"));
        assert_eq!(verse_level_name(26), None);
    }

    #[test]
    fn dicom_files_are_split_at_their_lengths_wherever_chunks_end() {
        let files: [&[u8]; 3] = [b"first file", b"", b"third"];
        let stream: Vec<u8> =
            files.iter().flat_map(|f| (f.len() as u64).to_le_bytes().into_iter().chain(f.iter().copied())).collect();
        for chunk_size in [1, 3, 8, 13, stream.len()] {
            let mut received = DicomFiles::default();
            stream.chunks(chunk_size).for_each(|chunk| received.push(chunk));
            assert_eq!(received.finish().unwrap(), files.map(<[u8]>::to_vec), "chunks of {chunk_size}");
        }
        let mut short = DicomFiles::default();
        short.push(&stream[..stream.len() - 2]);
        assert_eq!(short.finish().unwrap_err(), "DICOM file 3 ends 2 bytes short of the length sent before it");
        let mut cut = DicomFiles::default();
        cut.push(&stream[..3]);
        assert_eq!(cut.finish().unwrap_err(), "the bytes end inside the length of DICOM file 1");
    }

    #[test]
    fn dicom_is_for_the_ct_only() {
        let dicom =
            VolumeDescription { encoding: VolumeEncoding::Dicom.into(), total_bytes: 1000, ..Default::default() };
        let mut h = header(dicom.clone());
        check_header(&h, &Limits::default()).unwrap();
        h.vertebrae.clear();
        h.vertebra_labels = Some(dicom);
        let refused = message(check_header(&h, &Limits::default()).unwrap_err());
        assert!(refused.contains("vertebra_labels: VOLUME_ENCODING_DICOM is for the CT only"), "{refused}");
    }

    #[test]
    fn a_dicom_payload_that_is_not_dicom_is_refused_by_file() {
        let dicom = VolumeDescription { encoding: VolumeEncoding::Dicom.into(), total_bytes: 20, ..Default::default() };
        let mut bytes = 12u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"not a DICOM!");
        let received = Received { ct: Payload::of_bytes(&dicom, &bytes), vertebra_labels: None };
        let refused = message(decode(&header(dicom), received, &Limits::default()).unwrap_err());
        assert!(refused.starts_with("ct: DICOM file 1 of 1: not a readable DICOM file"), "{refused}");
    }
}
