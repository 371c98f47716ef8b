//! `fracmap segment`: a CT (and a label map or body boxes) up to the server in chunks, the
//! summary and output volumes back, written beside each other into `--out`.
//!
//! The CT is a NIfTI file or a DICOM series (a folder, or its files: recognised by the DICM
//! magic). A DICOM series is read here first (so that a bad series fails before the upload and
//! the answer can be written back as DICOM), then sent as its files; the answer's mask and
//! probability also go out as a DICOM SEG and Parametric Map referencing the series.
//!
//! The upload runs on a blocking thread that reads the files a chunk at a time into a small
//! channel feeding the request stream, so a large CT is never held whole as bytes.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::{ArgGroup, Args};
use fracmap_core::Volume;
use fracmap_core::nifti_io::read_volume;
use fracmap_dicom::{Algorithm, SeriesReference, Source as DicomSource, is_dicom_file};
use fracmap_proto::segment_request::Part as RequestPart;
use fracmap_proto::segment_response::Part as ResponsePart;
use fracmap_proto::{
    ProbabilityEncoding, SegmentHeader, SegmentRequest, SegmentSummary, Vertebra, VolumeDescription, VolumeEncoding,
    VolumeGrid, VoxelBox, VoxelType,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::assembly::{Assembly, Outputs};
use crate::boxes;
use crate::connection::Client;
use crate::info::with_deadline;
use crate::outputs::{display_name, write_outputs};
use crate::progress::Progress;
use crate::report;

#[derive(Args)]
#[command(group(ArgGroup::new("which vertebrae").required(true).args(["vertebrae", "boxes"])))]
pub struct SegmentArgs {
    /// The CT in HU: a NIfTI-1 file (.nii, .nii.gz), or a DICOM CT series: its folder
    /// (searched recursively) or its files.
    #[arg(value_name = "CT", required = true, num_args = 1..)]
    ct: Vec<PathBuf>,
    /// DICOM input holding several series: the SeriesInstanceUID of the one to read
    /// (default: the one with the most images, with a note).
    #[arg(long, value_name = "UID")]
    series: Option<String>,
    /// DICOM input: the folder for the DICOM SEG (draft mask) and Parametric Map
    /// (probability) made from the answer; default: --out.
    #[arg(long, value_name = "DIR")]
    dicom_out: Option<PathBuf>,
    /// A VerSe vertebra label map on the CT's grid; each label in it is a vertebra.
    #[arg(long, value_name = "LABELS.nii[.gz]")]
    vertebrae: Option<PathBuf>,
    /// A vertebra by its body box in CT voxels, half-open; repeat for more.
    #[arg(long = "box", value_name = "[LABEL=]z0:z1,y0:y1,x0:x1", value_parser = boxes::parse_vertebra)]
    boxes: Vec<Vertebra>,
    /// A box drawn around a fracture: the draft mask stays inside the boxes; repeatable.
    #[arg(long = "fracture-box", value_name = "z0:z1,y0:y1,x0:x1", value_parser = boxes::parse_box)]
    fracture_boxes: Vec<VoxelBox>,
    /// The segmentation model (see `fracmap models`); default: the server's.
    #[arg(long)]
    model: Option<String>,
    /// Its version; 0: the one the server serves.
    #[arg(long, default_value_t = 0)]
    model_version: u64,
    /// Draft-mask threshold in (0, 1]; default: the model's.
    #[arg(long, value_parser = parse_threshold)]
    threshold: Option<f32>,
    /// Receive the probabilities as float32 rather than uint8 steps of 1/255.
    #[arg(long)]
    float32: bool,
    /// Also receive and write the VAE error map the model read.
    #[arg(long)]
    error_map: bool,
    /// Also write report.html (and scene.glb) into --out, as `fracmap report` does.
    #[arg(long)]
    report: bool,
    /// Read the volumes here and send float32 voxels rather than the NIfTI files' bytes.
    #[arg(long)]
    raw: bool,
    /// Bytes per uploaded chunk (at most 4 MB: gRPC's default message limit).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..=4_000_000))]
    chunk_bytes: u32,
    /// Folder for the outputs, created if need be.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn parse_threshold(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(t) if t > 0.0 && t <= 1.0 => Ok(t),
        _ => Err(format!("{text:?} is not a threshold in (0, 1]")),
    }
}

/// The CT as given: a NIfTI file, or a DICOM series read here.
enum CtInput {
    Nifti(PathBuf),
    Dicom { volume: Box<Volume>, reference: Box<SeriesReference>, files: Vec<PathBuf> },
}

impl CtInput {
    /// Reads a DICOM series (printing what was decided on the way: series chosen, spacing
    /// assumed), or checks that the input is one NIfTI file.
    fn of(args: &SegmentArgs) -> Result<Self> {
        let dicom = args.ct.iter().any(|path| path.is_dir() || is_dicom_file(path));
        if !dicom {
            ensure!(
                args.ct.len() == 1,
                "{} CT paths given: a NIfTI CT is one file (only a DICOM series comes as several files)",
                args.ct.len()
            );
            ensure!(args.series.is_none() && args.dicom_out.is_none(), "--series and --dicom-out are for DICOM input");
            return Ok(CtInput::Nifti(args.ct[0].clone()));
        }
        let plan = fracmap_dicom::scan(fracmap_dicom::discover(&args.ct)?, args.series.as_deref())?;
        let files = plan
            .series_sources()
            .into_iter()
            .filter_map(|source| match source {
                DicomSource::File(path) => Some(path.clone()),
                DicomSource::Memory { .. } => None,
            })
            .collect();
        for note in plan.notes() {
            eprintln!("note: {note}");
        }
        let series = plan.read()?;
        Ok(CtInput::Dicom { volume: Box::new(series.volume), reference: Box::new(series.reference), files })
    }

    fn upload(&self, raw: bool) -> Result<Upload> {
        match self {
            CtInput::Nifti(path) => Upload::open(path, raw, RequestPart::CtChunk),
            CtInput::Dicom { volume, files, .. } if raw => {
                Ok(Upload::voxels(files[0].clone(), (**volume).clone(), RequestPart::CtChunk))
            }
            CtInput::Dicom { files, .. } => Upload::dicom(files.clone(), RequestPart::CtChunk),
        }
    }
}

/// Sends the request, receives the answer within `timeout` and writes the outputs.
pub async fn segment(client: Client, args: SegmentArgs, timeout: Duration) -> Result<()> {
    let input = CtInput::of(&args)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}: cannot create", args.out.display()))?;
    let mut uploads = vec![input.upload(args.raw)?];
    if let Some(labels) = &args.vertebrae {
        uploads.push(Upload::open(labels, args.raw, RequestPart::VertebraLabelsChunk)?);
    }
    let header = header(&args, &uploads);
    let chunk_bytes = args.chunk_bytes as usize;
    let (requests, stream) = mpsc::channel(4);
    let upload = tokio::task::spawn_blocking(move || send(&requests, header, uploads, chunk_bytes));

    let answer = tokio::time::timeout(timeout, receive(client, stream, timeout, args.error_map)).await;
    // A file that failed to read explains the server's complaint about missing bytes.
    upload.await.context("the upload thread failed")??;
    let (summary, outputs) = answer.map_err(|_| {
        Status::deadline_exceeded(format!("no complete answer within {} s (--timeout)", timeout.as_secs()))
    })??;

    let (ct, ct_path) = match input {
        CtInput::Nifti(path) => (read_volume(&path)?, path),
        CtInput::Dicom { volume, reference, .. } => {
            let dir = args.dicom_out.as_deref().unwrap_or(&args.out);
            let written = write_dicom_outputs(dir, &reference, &summary, &outputs)?;
            println!("wrote {} to {}", written.join(", "), dir.display());
            (*volume, args.ct[0].clone())
        }
    };
    ensure!(
        ct.shape() == outputs.grid.shape,
        "the server's grid {:?} is not the CT's {:?}",
        outputs.grid.shape,
        ct.shape()
    );
    let written = write_outputs(&args.out, &summary, &outputs, &ct)?;
    print_table(&summary);
    println!("wrote {} files to {}: {}", written.len(), args.out.display(), written.join(", "));
    if args.report {
        let written = report::write_report(&args.out, &ct_path, &ct, &outputs.probability, &outputs.mask)?;
        println!("wrote {}", written.join(", "));
    }
    Ok(())
}

/// The answer as DICOM beside the source series: the draft mask as a SEG, the probability
/// as a Parametric Map. Returns the names written.
fn write_dicom_outputs(
    dir: &Path,
    reference: &SeriesReference,
    summary: &SegmentSummary,
    outputs: &Outputs,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("--dicom-out {}: cannot create", dir.display()))?;
    ensure!(
        outputs.grid.shape == [reference.slices.len(), reference.rows as usize, reference.columns as usize],
        "the server's grid {:?} is not the DICOM series'",
        outputs.grid.shape
    );
    let model = summary.model.as_ref().map(|m| format!("{} v{}", m.name, m.version)).unwrap_or_default();
    let algorithm =
        Algorithm { name: format!("fracmap {model}").trim().to_string(), version: env!("CARGO_PKG_VERSION").into() };
    let (seg, map) = ("fracture_seg.dcm", "probability_pm.dcm");
    fracmap_dicom::write_segmentation(&dir.join(seg), reference, &outputs.mask, &algorithm)?;
    fracmap_dicom::write_parametric_map(&dir.join(map), reference, outputs.probability.data(), &algorithm)?;
    Ok(vec![format!("{seg} (DICOM SEG)"), format!("{map} (DICOM Parametric Map)")])
}

fn header(args: &SegmentArgs, uploads: &[Upload]) -> SegmentHeader {
    let encoding = if args.float32 { ProbabilityEncoding::Float32 } else { ProbabilityEncoding::Uint8 };
    SegmentHeader {
        ct: Some(uploads[0].description.clone()),
        model: args.model.clone().unwrap_or_default(),
        model_version: args.model_version,
        vertebrae: args.boxes.clone(),
        vertebra_labels: uploads.get(1).map(|labels| labels.description.clone()),
        fracture_boxes: args.fracture_boxes.clone(),
        threshold: args.threshold,
        probability_encoding: encoding.into(),
        error_map: args.error_map,
        ..SegmentHeader::default()
    }
}

/// A volume to send: a NIfTI file's bytes, a DICOM series' files, or voxels read here and
/// sent raw.
pub struct Upload {
    path: PathBuf,
    pub description: VolumeDescription,
    source: Source,
    /// The request part its chunks travel in.
    pub part: fn(Vec<u8>) -> RequestPart,
}

enum Source {
    /// Files sent back to back, each after its length (u64, little-endian) when
    /// `length_prefixed` (DICOM's framing, see the .proto).
    Files {
        files: Vec<PathBuf>,
        length_prefixed: bool,
    },
    Voxels(Box<Volume>),
}

impl Upload {
    /// A NIfTI file: its bytes, or with `raw` its voxels read here.
    pub fn open(path: &Path, raw: bool, part: fn(Vec<u8>) -> RequestPart) -> Result<Self> {
        if raw {
            return Ok(Upload::voxels(path.to_path_buf(), read_volume(path)?, part));
        }
        let total_bytes = file_len(path)?;
        let description =
            VolumeDescription { encoding: VolumeEncoding::Nifti.into(), total_bytes, ..VolumeDescription::default() };
        let source = Source::Files { files: vec![path.to_path_buf()], length_prefixed: false };
        Ok(Upload { path: path.to_path_buf(), description, source, part })
    }

    /// The files of a DICOM series, each after its length.
    pub fn dicom(files: Vec<PathBuf>, part: fn(Vec<u8>) -> RequestPart) -> Result<Self> {
        let mut total_bytes = 0;
        for file in &files {
            total_bytes += 8 + file_len(file)?;
        }
        let description =
            VolumeDescription { encoding: VolumeEncoding::Dicom.into(), total_bytes, ..VolumeDescription::default() };
        let path = files.first().cloned().unwrap_or_default();
        Ok(Upload { path, description, source: Source::Files { files, length_prefixed: true }, part })
    }

    /// Voxels read here (from `path`), sent raw as float32.
    pub fn voxels(path: PathBuf, volume: Volume, part: fn(Vec<u8>) -> RequestPart) -> Self {
        let grid = volume.grid();
        let description = VolumeDescription {
            encoding: VolumeEncoding::Raw.into(),
            grid: Some(VolumeGrid {
                shape: grid.shape.iter().map(|&n| n as u64).collect(),
                spacing_mm: grid.spacing.to_vec(),
                affine: grid.affine.as_flattened().to_vec(),
            }),
            voxel_type: VoxelType::Float32.into(),
            total_bytes: volume.as_slice().len() as u64 * 4,
        };
        Upload { path, description, source: Source::Voxels(Box::new(volume)), part }
    }

    /// Hands `emit` chunks of at most `chunk_bytes` until the volume is sent or `emit` says
    /// the request is gone (returns false).
    pub fn send_chunks(self, chunk_bytes: usize, mut emit: impl FnMut(Vec<u8>) -> bool) -> Result<()> {
        let total = self.description.total_bytes;
        match self.source {
            Source::Files { files, length_prefixed } => {
                let mut sent = 0;
                let mut chunk = Vec::with_capacity(chunk_bytes);
                for path in &files {
                    let cannot_read = || format!("{}: cannot read", path.display());
                    let file = File::open(path).with_context(cannot_read)?;
                    let mut bytes: Box<dyn Read> = if length_prefixed {
                        let length = file.metadata().with_context(cannot_read)?.len();
                        Box::new(Cursor::new(length.to_le_bytes()).chain(file.take(length)))
                    } else {
                        Box::new(file)
                    };
                    loop {
                        let room = (chunk_bytes - chunk.len()) as u64;
                        let read = (&mut bytes).take(room).read_to_end(&mut chunk).with_context(cannot_read)?;
                        if read == 0 {
                            break;
                        }
                        sent += read as u64;
                        ensure!(sent <= total, "{} grew while it was sent", path.display());
                        if chunk.len() == chunk_bytes
                            && !emit(std::mem::replace(&mut chunk, Vec::with_capacity(chunk_bytes)))
                        {
                            return Ok(());
                        }
                    }
                }
                if !chunk.is_empty() && !emit(chunk) {
                    return Ok(());
                }
                ensure!(sent == total, "{} shrank while it was sent ({sent} of {total} bytes)", self.path.display());
            }
            Source::Voxels(volume) => {
                for voxels in volume.as_slice().chunks(chunk_bytes / 4) {
                    if !emit(voxels.iter().flat_map(|v| v.to_le_bytes()).collect()) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?.len())
}

/// Sends the header, then each upload's chunks; stops early, without error, when the request
/// is gone (the server answered or the deadline passed: [`receive`] reports why).
fn send(
    requests: &mpsc::Sender<SegmentRequest>,
    header: SegmentHeader,
    uploads: Vec<Upload>,
    chunk_bytes: usize,
) -> Result<()> {
    let deliver = |part| requests.blocking_send(SegmentRequest { part: Some(part) }).is_ok();
    if !deliver(RequestPart::Header(header)) {
        return Ok(());
    }
    let mut progress = Progress::new("upload", uploads.iter().map(|u| u.description.total_bytes).sum());
    for upload in uploads {
        let part = upload.part;
        let mut open = true;
        upload.send_chunks(chunk_bytes, |chunk| {
            progress.advance(chunk.len() as u64);
            open = deliver(part(chunk));
            open
        })?;
        if !open {
            break;
        }
    }
    Ok(())
}

/// Calls Segment with the request stream and reads the answer: the summary, then the
/// volumes' chunks.
async fn receive(
    mut client: Client,
    requests: mpsc::Receiver<SegmentRequest>,
    timeout: Duration,
    error_map: bool,
) -> Result<(SegmentSummary, Outputs)> {
    let mut answer = client.segment(with_deadline(ReceiverStream::new(requests), timeout)).await?.into_inner();
    let summary = match answer.message().await?.and_then(|message| message.part) {
        Some(ResponsePart::Summary(summary)) => summary,
        Some(ResponsePart::Chunk(_)) => bail!("the server sent volume chunks before its summary"),
        None => bail!("the server's answer has no summary"),
    };
    let mut assembly = Assembly::new(&summary)?;
    let mut progress = Progress::new("download", assembly.total_bytes());
    while let Some(message) = answer.message().await? {
        match message.part {
            Some(ResponsePart::Chunk(chunk)) => progress.advance(assembly.add(chunk)? as u64),
            Some(ResponsePart::Summary(_)) => bail!("the server sent a second summary"),
            None => bail!("the server sent an empty message"),
        }
    }
    let outputs = assembly.finish()?;
    ensure!(!error_map || outputs.error_map.is_some(), "--error-map was asked for but the server sent none");
    Ok((summary, outputs))
}

/// One line a vertebra, then the whole mask.
fn print_table(summary: &SegmentSummary) {
    println!("{:<10} {:>6} {:>10} {:>10}", "vertebra", "score", "mask mm3", "confidence");
    for (index, vertebra) in summary.vertebrae.iter().enumerate() {
        println!(
            "{:<10} {:>6.3} {:>10.1} {:>10.3}{}",
            display_name(&vertebra.label, index),
            vertebra.fracture_score,
            vertebra.mask_volume_mm3,
            vertebra.confidence,
            if vertebra.oversize { "  (larger than the model's crop: cut)" } else { "" }
        );
    }
    println!(
        "mask: {} voxels, {:.1} mm3, confidence {:.3} at threshold {:.3}",
        summary.mask_voxels, summary.mask_volume_mm3, summary.confidence, summary.threshold
    );
}
