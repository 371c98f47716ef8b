//! `fracmap segment`: a CT (and a label map or body boxes) up to the server in chunks, the
//! summary and output volumes back, written beside each other into `--out`.
//!
//! The upload runs on a blocking thread that reads the files a chunk at a time into a small
//! channel feeding the request stream, so a large CT is never held whole as bytes.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::{ArgGroup, Args};
use fracmap_core::Volume;
use fracmap_core::nifti_io::read_volume;
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
    /// The CT in HU: NIfTI-1, .nii or .nii.gz.
    #[arg(value_name = "CT.nii[.gz]")]
    ct: PathBuf,
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

/// Sends the request, receives the answer within `timeout` and writes the outputs.
pub async fn segment(client: Client, args: SegmentArgs, timeout: Duration) -> Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}: cannot create", args.out.display()))?;
    let mut uploads = vec![Upload::open(&args.ct, args.raw, RequestPart::CtChunk)?];
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

    let ct = read_volume(&args.ct)?;
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
        let written = report::write_report(&args.out, &args.ct, &ct, &outputs.probability, &outputs.mask)?;
        println!("wrote {}", written.join(", "));
    }
    Ok(())
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

/// A volume to send: a NIfTI file's bytes, or voxels read here and sent raw.
pub struct Upload {
    path: PathBuf,
    pub description: VolumeDescription,
    source: Source,
    /// The request part its chunks travel in.
    pub part: fn(Vec<u8>) -> RequestPart,
}

enum Source {
    NiftiFile(File),
    Voxels(Box<Volume>),
}

impl Upload {
    pub fn open(path: &Path, raw: bool, part: fn(Vec<u8>) -> RequestPart) -> Result<Self> {
        let (description, source) = if raw {
            let volume = read_volume(path)?;
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
            (description, Source::Voxels(Box::new(volume)))
        } else {
            let cannot_read = || format!("{}: cannot read", path.display());
            let file = File::open(path).with_context(cannot_read)?;
            let total_bytes = file.metadata().with_context(cannot_read)?.len();
            let description = VolumeDescription {
                encoding: VolumeEncoding::Nifti.into(),
                total_bytes,
                ..VolumeDescription::default()
            };
            (description, Source::NiftiFile(file))
        };
        Ok(Upload { path: path.to_path_buf(), description, source, part })
    }

    /// Hands `emit` chunks of at most `chunk_bytes` until the volume is sent or `emit` says
    /// the request is gone (returns false).
    pub fn send_chunks(self, chunk_bytes: usize, mut emit: impl FnMut(Vec<u8>) -> bool) -> Result<()> {
        let total = self.description.total_bytes;
        match self.source {
            Source::NiftiFile(mut file) => {
                let mut sent = 0;
                loop {
                    let mut chunk = Vec::with_capacity(chunk_bytes);
                    (&mut file)
                        .take(chunk_bytes as u64)
                        .read_to_end(&mut chunk)
                        .with_context(|| format!("{}: cannot read", self.path.display()))?;
                    if chunk.is_empty() {
                        break;
                    }
                    sent += chunk.len() as u64;
                    ensure!(sent <= total, "{} grew while it was sent", self.path.display());
                    if !emit(chunk) {
                        return Ok(());
                    }
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
        "mask: {} voxels, {:.1} mm3, confidence {:.3} at threshold {}",
        summary.mask_voxels, summary.mask_volume_mm3, summary.confidence, summary.threshold
    );
}
