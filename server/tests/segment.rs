//! Segment and ListModels over real gRPC on loopback, with the tiny VAE and U-Net exported into
//! a model repository: answers equal to the in-process pipeline's, a 512 x 512 x 600 int16 CT
//! streamed in chunks, NIfTI and label-map requests, concurrent clients and a full queue,
//! every bad input, deadlines, cancellation, graceful shutdown, bearer tokens and metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use fracmap_core::nifti_io::{NiftiDtype, write_volume};
use fracmap_core::{Box3, Volume};
use fracmap_server::models::load_models;
use fracmap_server::pipeline::{ModelPair, SegmentOptions, Vertebra as PipelineVertebra, segment};
use fracmap_server::proto::fracmap_client::FracmapClient;
use fracmap_server::proto::{
    ListModelsRequest, OutputKind, ProbabilityEncoding, SegmentHeader, SegmentRequest, SegmentSummary, Vertebra,
    VolumeDescription, VolumeEncoding, VolumeGrid, VoxelBox, VoxelType, segment_request::Part,
    segment_response::Part as ResponsePart,
};
use fracmap_server::repository::ModelRepository;
use fracmap_server::runtime::default_library_path;
use fracmap_server::segment_request::Limits;
use fracmap_server::service::ServiceSettings;
use fracmap_server::{Device, OnnxRuntime, ServerConfig, ServerError, SessionSettings, serve};
use ndarray::Array3;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

#[path = "common/tiny_pair.rs"]
mod tiny_pair;

const CHUNK: usize = 1 << 20;

/// A server on 127.0.0.1 with an OS-chosen port, serving the tiny pair.
struct TestServer {
    address: SocketAddr,
    metrics: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
    _repository: tempfile::TempDir,
}

fn repository() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    tiny_pair::write_repository(root.path(), |_, _| {});
    root
}

fn config(repository: &Path, edit: impl FnOnce(&mut ServerConfig)) -> ServerConfig {
    let mut config = ServerConfig {
        device: Device::Cpu,
        intra_threads: NonZeroUsize::MIN,
        models: Some(repository.to_path_buf()),
        shutdown_grace: Duration::from_secs(5),
        service: ServiceSettings { workers: NonZeroUsize::new(2).unwrap(), queue: 4, ..Default::default() },
        ..ServerConfig::new(default_library_path())
    };
    edit(&mut config);
    config
}

impl TestServer {
    async fn start(edit: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let repository = repository();
        let config = config(repository.path(), edit);
        let metrics = config.metrics;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stop_requested) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config, listener, async {
            let _ = stop_requested.await;
        }));
        TestServer { address, metrics, stop: Some(stop), task, _repository: repository }
    }

    async fn client(&self) -> FracmapClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.address)).unwrap();
        let channel = loop {
            match channel.connect().await {
                Ok(channel) => break channel,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        FracmapClient::new(channel).max_decoding_message_size(8 << 20)
    }

    async fn stop(mut self) -> Result<(), ServerError> {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("the server did not stop").unwrap()
    }
}

/// A free loopback port (bound and released).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A CT with a bright column, as the pipeline test's, on a plain grid.
fn ct(shape: [usize; 3]) -> Volume {
    let data = Array3::from_shape_fn(shape, |(z, y, x)| {
        let (z, y, x) = (z as f32, y as f32, x as f32);
        let r2 = (y - 20.0).powi(2) + (x - 20.0).powi(2);
        -100.0 + 900.0 * (-r2 / 40.0).exp() + 80.0 * (0.7 * z).sin() * (0.4 * x).cos()
    });
    Volume::with_spacing(data, [1.5, 1.0, 1.0]).unwrap()
}

fn voxel_box(b: [[u64; 3]; 2]) -> VoxelBox {
    VoxelBox { min: b[0].to_vec(), max: b[1].to_vec() }
}

const L1: [[u64; 3]; 2] = [[6, 14, 15], [12, 24, 25]];
const L2: [[u64; 3]; 2] = [[13, 16, 14], [18, 26, 24]];

fn vertebrae() -> Vec<Vertebra> {
    vec![
        Vertebra { label: "L1".into(), body_box: Some(voxel_box(L1)) },
        Vertebra { label: "L2".into(), body_box: Some(voxel_box(L2)) },
    ]
}

fn raw_f32(volume: &Volume) -> (VolumeDescription, Vec<u8>) {
    let bytes: Vec<u8> = volume.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect();
    let description = VolumeDescription {
        encoding: VolumeEncoding::Raw.into(),
        grid: Some(VolumeGrid {
            shape: volume.shape().map(|n| n as u64).to_vec(),
            spacing_mm: volume.spacing().to_vec(),
            affine: volume.affine().iter().flatten().copied().collect(),
        }),
        voxel_type: VoxelType::Float32.into(),
        total_bytes: bytes.len() as u64,
    };
    (description, bytes)
}

fn header(ct: VolumeDescription) -> SegmentHeader {
    SegmentHeader { ct: Some(ct), vertebrae: vertebrae(), ..Default::default() }
}

/// The messages of a request: header, then the CT in chunks.
fn messages(header: SegmentHeader, ct: &[u8]) -> Vec<SegmentRequest> {
    let mut messages = vec![SegmentRequest { part: Some(Part::Header(header)) }];
    messages.extend(ct.chunks(CHUNK).map(|c| SegmentRequest { part: Some(Part::CtChunk(c.to_vec())) }));
    messages
}

/// An answer put together: the summary and each output's bytes.
#[derive(Debug)]
struct Answer {
    summary: SegmentSummary,
    volumes: BTreeMap<i32, Vec<u8>>,
}

async fn call(client: &mut FracmapClient<Channel>, messages: Vec<SegmentRequest>) -> Result<Answer, Status> {
    let mut stream = client.segment(tokio_stream::iter(messages)).await?.into_inner();
    collect(&mut stream).await
}

async fn collect(stream: &mut tonic::Streaming<fracmap_server::proto::SegmentResponse>) -> Result<Answer, Status> {
    let Some(ResponsePart::Summary(summary)) = stream.message().await?.and_then(|m| m.part) else {
        panic!("the first answer is not a summary");
    };
    let mut volumes: BTreeMap<i32, Vec<u8>> = BTreeMap::new();
    while let Some(message) = stream.message().await? {
        let Some(ResponsePart::Chunk(chunk)) = message.part else { panic!("a second summary") };
        let volume = volumes.entry(chunk.kind).or_default();
        assert_eq!(volume.len() as u64, chunk.offset, "chunks come in order");
        volume.extend_from_slice(&chunk.data);
    }
    for output in &summary.outputs {
        assert_eq!(volumes.get(&output.kind).map_or(0, Vec::len) as u64, output.total_bytes, "{output:?}");
    }
    Ok(Answer { summary, volumes })
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// The pipeline run in this process on the same models and CT.
fn in_process(ct: &Volume) -> fracmap_server::pipeline::Segmentation {
    let repository = repository();
    let runtime = OnnxRuntime::init(&default_library_path()).unwrap();
    let scanned = ModelRepository::scan(repository.path()).unwrap();
    let settings = SessionSettings { device: Device::Cpu, intra_threads: NonZeroUsize::MIN };
    let models = load_models(runtime, &scanned, &settings, NonZeroUsize::MIN).unwrap();
    let (unet, vae) = (&models[0], &models[1]);
    let pair = ModelPair::new(vae, unet).unwrap();
    let vertebrae: Vec<PipelineVertebra> = [("L1", L1), ("L2", L2)]
        .map(|(label, b)| PipelineVertebra {
            label: Some(label.into()),
            body_box: Box3::new(b[0].map(|n| n as usize), b[1].map(|n| n as usize)).unwrap(),
        })
        .to_vec();
    segment(ct, &vertebrae, &[], &pair, &SegmentOptions { error_map: true, ..Default::default() }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_equals_the_in_process_pipeline_and_lists_everything() {
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;
    let volume = ct([28, 40, 40]);
    let (description, bytes) = raw_f32(&volume);
    let mut h = header(description);
    h.probability_encoding = ProbabilityEncoding::Float32.into();
    h.error_map = true;
    h.response_chunk_bytes = 4096;
    let answer = call(&mut client, messages(h, &bytes)).await.unwrap();
    let expected = in_process(&volume);

    let s = &answer.summary;
    assert_eq!(s.model.as_ref().unwrap().name, "unet");
    assert_eq!(s.vae.as_ref().unwrap().name, "vae");
    assert_eq!(s.execution_provider(), fracmap_server::proto::ExecutionProvider::Cpu);
    assert_eq!(s.threshold, tiny_pair::MASK_THRESHOLD);
    assert_eq!(s.mask_voxels, expected.mask_voxels as u64);
    assert_eq!(s.grid.as_ref().unwrap().shape, vec![28, 40, 40]);
    assert_eq!(s.vertebrae.len(), 2);
    assert_eq!(s.vertebrae[1].label, "L2");
    assert_eq!(s.vertebrae[1].fracture_score, expected.vertebrae[1].fracture_score);
    assert!(!s.request_id.is_empty());
    let probability = f32s(&answer.volumes[&(OutputKind::Probability as i32)]);
    assert_eq!(probability, expected.probability.as_slice(), "float32 probabilities are the pipeline's, bit for bit");
    let mask = &answer.volumes[&(OutputKind::Mask as i32)];
    let expected_mask: Vec<u8> = expected.mask.iter().map(|&m| u8::from(m)).collect();
    assert_eq!(mask, &expected_mask);
    let error = f32s(&answer.volumes[&(OutputKind::ErrorMap as i32)]);
    assert_eq!(error, expected.error_map.as_ref().unwrap().as_slice());

    // uint8 by default: within half a step of 1/255.
    let answer = call(&mut client, messages(header(raw_f32(&volume).0), &bytes)).await.unwrap();
    let output = &answer.summary.outputs[0];
    assert_eq!((output.voxel_type(), output.scale), (VoxelType::Uint8, 1.0 / 255.0));
    let quantised = &answer.volumes[&(OutputKind::Probability as i32)];
    for (&q, &p) in quantised.iter().zip(expected.probability.as_slice()) {
        assert!((f64::from(q) / 255.0 - f64::from(p)).abs() <= 0.5 / 255.0 + 1e-6, "{q} vs {p}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_models_names_the_pair_and_the_default() {
    let server = TestServer::start(|_| {}).await;
    let models = server.client().await.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["unet", "vae"]);
    assert_eq!(models[0].reads_errors_of, "vae");
    assert!(models[0].is_default);
    assert_eq!(models[0].mask_threshold, tiny_pair::MASK_THRESHOLD);
    assert!(!models[1].is_default);
    assert_eq!(models[1].reads_errors_of, "");
    assert_eq!(models[0].preprocessing.as_ref().unwrap().patch, vec![8, 8, 8]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nifti_ct_with_a_label_map_is_answered_on_its_grid() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let volume = ct([28, 40, 40]);
    let mut labels = Array3::<f32>::zeros((28, 40, 40));
    labels.slice_mut(ndarray::s![6..12, 14..24, 15..25]).fill(20.0);
    labels.slice_mut(ndarray::s![13..18, 16..26, 14..24]).fill(21.0);
    let labels = volume.with_data(labels).unwrap();
    write_volume(&dir.path().join("ct.nii.gz"), &volume, NiftiDtype::I16).unwrap();
    write_volume(&dir.path().join("labels.nii.gz"), &labels, NiftiDtype::U8).unwrap();
    let ct_bytes = std::fs::read(dir.path().join("ct.nii.gz")).unwrap();
    let label_bytes = std::fs::read(dir.path().join("labels.nii.gz")).unwrap();
    let nifti = |total: usize| VolumeDescription {
        encoding: VolumeEncoding::Nifti.into(),
        total_bytes: total as u64,
        ..Default::default()
    };
    let h = SegmentHeader {
        ct: Some(nifti(ct_bytes.len())),
        vertebra_labels: Some(nifti(label_bytes.len())),
        ..Default::default()
    };
    let mut requests = messages(h, &ct_bytes);
    requests.push(SegmentRequest { part: Some(Part::VertebraLabelsChunk(label_bytes)) });
    let answer = call(&mut server.client().await, requests).await.unwrap();
    let labels: Vec<&str> = answer.summary.vertebrae.iter().map(|v| v.label.as_str()).collect();
    assert_eq!(labels, ["L1", "L2"]);
    assert_eq!(answer.summary.vertebrae[0].body_box, Some(voxel_box(L1)));
    let grid = answer.summary.grid.unwrap();
    assert_eq!(grid.shape, vec![28, 40, 40]);
    assert_eq!(grid.spacing_mm, vec![1.5, 1.0, 1.0]);
    server.stop().await.unwrap();
}

/// A full-size CT: 512 x 512 x 600 int16 (300 MB) in 4 MiB chunks, the answer streamed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_512_512_600_int16_ct_streams_in_and_out() {
    let server = TestServer::start(|_| {}).await;
    let shape = [600usize, 512, 512];
    let voxels: usize = shape.iter().product();
    let mut bytes = Vec::with_capacity(voxels * 2);
    for z in 0..shape[0] {
        for y in 0..shape[1] {
            for x in 0..shape[2] {
                let bone = (y as i32 - 256).pow(2) + (x as i32 - 256).pow(2) < 900;
                let hu: i16 = if bone { 700 } else { -50 + ((z + y + x) % 7) as i16 };
                bytes.extend_from_slice(&hu.to_le_bytes());
            }
        }
    }
    let h = SegmentHeader {
        ct: Some(VolumeDescription {
            encoding: VolumeEncoding::Raw.into(),
            grid: Some(VolumeGrid { shape: vec![600, 512, 512], spacing_mm: vec![1.0, 0.7, 0.7], affine: vec![] }),
            voxel_type: VoxelType::Int16.into(),
            total_bytes: bytes.len() as u64,
        }),
        vertebrae: vec![Vertebra { label: "L1".into(), body_box: Some(voxel_box([[290, 236, 236], [310, 276, 276]])) }],
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(4);
    let mut client = server.client().await;
    let call = tokio::spawn(async move { client.segment(ReceiverStream::new(rx)).await });
    tx.send(SegmentRequest { part: Some(Part::Header(h)) }).await.unwrap();
    for chunk in bytes.chunks(4 << 20) {
        tx.send(SegmentRequest { part: Some(Part::CtChunk(chunk.to_vec())) }).await.unwrap();
    }
    drop(tx);
    drop(bytes);
    let answer = collect(&mut call.await.unwrap().unwrap().into_inner()).await.unwrap();
    assert_eq!(answer.volumes[&(OutputKind::Probability as i32)].len(), voxels);
    assert_eq!(answer.volumes[&(OutputKind::Mask as i32)].len(), voxels);
    assert_eq!(answer.summary.vertebrae[0].region.as_ref().unwrap().min.len(), 3);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_all_answered_alike() {
    let server = TestServer::start(|c| c.service.queue = 8).await;
    let volume = ct([28, 40, 40]);
    let (description, bytes) = raw_f32(&volume);
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let requests = messages(header(description.clone()), &bytes);
            let address = server.address;
            tokio::spawn(async move {
                let channel = Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
                call(&mut FracmapClient::new(channel), requests).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap().unwrap());
    }
    let first = &answers[0].volumes;
    assert!(answers.iter().all(|a| &a.volumes == first), "every client gets the same maps");
    let ids: std::collections::BTreeSet<&str> = answers.iter().map(|a| a.summary.request_id.as_str()).collect();
    assert_eq!(ids.len(), 6, "request ids are unique");
    server.stop().await.unwrap();
}

/// Sends a header and one chunk, then holds the request open: it keeps its place.
async fn open_request(
    client: &mut FracmapClient<Channel>,
    bytes: &[u8],
    description: VolumeDescription,
) -> (mpsc::Sender<SegmentRequest>, JoinHandle<Result<Answer, Status>>) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(SegmentRequest { part: Some(Part::Header(header(description))) }).await.unwrap();
    tx.send(SegmentRequest { part: Some(Part::CtChunk(bytes[..bytes.len() / 2].to_vec())) }).await.unwrap();
    let mut client = client.clone();
    let task = tokio::spawn(async move {
        let mut stream = client.segment(ReceiverStream::new(rx)).await?.into_inner();
        collect(&mut stream).await
    });
    // The server admits on the header: give it time to read it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_at_once_and_a_cancelled_upload_frees_its_place() {
    let server = TestServer::start(|c| {
        c.service.workers = NonZeroUsize::MIN;
        c.service.queue = 0;
    })
    .await;
    let mut client = server.client().await;
    let volume = ct([28, 40, 40]);
    let (description, bytes) = raw_f32(&volume);

    let (holder, held) = open_request(&mut client, &bytes, description.clone()).await;
    let refused = call(&mut client, messages(header(description.clone()), &bytes)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("server busy"), "{refused:?}");

    // The client gives up mid-upload: its place comes back.
    held.abort();
    drop(holder);
    let mut answered = None;
    for _ in 0..50 {
        match call(&mut client, messages(header(description.clone()), &bytes)).await {
            Ok(answer) => {
                answered = Some(answer);
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    assert!(answered.is_some(), "the cancelled request's place never came back");
    server.stop().await.unwrap();
}

/// A client that stalls mid-upload past its deadline: the server keeps the deadline itself
/// (the client's body stays open, so only the server's timer can end the call there), frees
/// the request's place and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_while_uploading_stops_the_request() {
    let metrics = free_port();
    let server = TestServer::start(|c| c.metrics = Some(metrics)).await;
    let mut client = server.client().await;
    let (description, bytes) = raw_f32(&ct([28, 40, 40]));
    let (tx, rx) = mpsc::channel(4);
    tx.send(SegmentRequest { part: Some(Part::Header(header(description.clone()))) }).await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.set_timeout(Duration::from_millis(300));
    let status = match client.segment(request).await {
        Ok(response) => collect(&mut response.into_inner()).await.unwrap_err(),
        Err(status) => status,
    };
    // tonic's client gives up at the same deadline (Cancelled, "Timeout expired").
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = http_get(metrics, "/metrics").await;
    assert!(text.contains("fracmap_requests_total{method=\"Segment\",code=\"DEADLINE_EXCEEDED\"} 1"), "{text}");
    drop(tx);
    assert!(text.contains("fracmap_queue_depth 0"), "the request left the queue: {text}");
    call(&mut client, messages(header(description), &bytes)).await.expect("the server serves on");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_named_and_the_server_serves_on() {
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;
    let volume = ct([28, 40, 40]);
    let (description, bytes) = raw_f32(&volume);
    let expect = |code: Code, text: &'static str| (code, text);
    let mut cases: Vec<(&str, Vec<SegmentRequest>, (Code, &str))> = Vec::new();

    let mut wrong_size = description.clone();
    wrong_size.total_bytes += 4;
    cases.push((
        "declared size",
        messages(header(wrong_size), &bytes),
        expect(
            Code::InvalidArgument,
            "ct.total_bytes is 179204, but shape [28, 40, 40] of VOXEL_TYPE_FLOAT32 takes 179200",
        ),
    ));
    cases.push((
        "short",
        messages(header(description.clone()), &bytes[..bytes.len() - 8]),
        expect(Code::InvalidArgument, "ct: the request ended after 179192 of the 179200 bytes"),
    ));
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 8]);
    cases.push((
        "long",
        messages(header(description.clone()), &long),
        expect(Code::InvalidArgument, "ct: chunks add up to more than the 179200 bytes"),
    ));
    let mut nan = volume.clone();
    nan.data_mut()[[3, 4, 5]] = f32::NAN;
    cases.push((
        "NaN",
        messages(header(description.clone()), &raw_f32(&nan).1),
        expect(Code::InvalidArgument, "CT has 1 non-finite voxels (NaN or infinite), first at [z, y, x] = [3, 4, 5]"),
    ));
    let mut outside = header(description.clone());
    outside.vertebrae[1].body_box = Some(voxel_box([[13, 16, 14], [18, 26, 41]]));
    cases.push((
        "box outside",
        messages(outside, &bytes),
        expect(Code::InvalidArgument, "vertebra #1 (L2): body box outside the CT: box x 14..41 outside volume"),
    ));
    let mut fracture_outside = header(description.clone());
    fracture_outside.fracture_boxes = vec![voxel_box([[0, 0, 0], [29, 1, 1]])];
    cases.push((
        "fracture box outside",
        messages(fracture_outside, &bytes),
        expect(Code::InvalidArgument, "fracture box #0 outside the CT"),
    ));
    let mut unknown = header(description.clone());
    unknown.model = "unet_nope".into();
    cases.push((
        "unknown model",
        messages(unknown, &bytes),
        expect(Code::NotFound, "header.model: no segmentation model \"unet_nope\" here (known: unet)"),
    ));
    let mut version = header(description.clone());
    version.model_version = 9;
    cases.push(("unknown version", messages(version, &bytes), expect(Code::NotFound, "unet version 9 is not served")));
    let nifti = VolumeDescription { encoding: VolumeEncoding::Nifti.into(), total_bytes: 1000, ..Default::default() };
    cases.push((
        "not NIfTI",
        messages(header(nifti), &[7u8; 1000]),
        expect(Code::InvalidArgument, "ct: not a NIfTI-1 file"),
    ));
    cases.push((
        "chunk first",
        vec![SegmentRequest { part: Some(Part::CtChunk(vec![0; 4])) }],
        expect(Code::InvalidArgument, "the first message of a Segment request must be its header"),
    ));
    let mut none = header(description.clone());
    none.vertebrae.clear();
    cases.push(("no vertebrae", messages(none, &bytes), expect(Code::InvalidArgument, "no vertebrae to examine")));
    let mut threshold = header(description.clone());
    threshold.threshold = Some(0.0);
    cases.push((
        "threshold",
        messages(threshold, &bytes),
        expect(Code::InvalidArgument, "header.threshold must be in (0, 1]"),
    ));
    let mut labels_chunk = messages(header(description.clone()), &bytes);
    labels_chunk.push(SegmentRequest { part: Some(Part::VertebraLabelsChunk(vec![1])) });
    cases.push((
        "stray label chunk",
        labels_chunk,
        expect(Code::InvalidArgument, "the header declares no vertebra_labels"),
    ));
    let mut no_type = description.clone();
    no_type.voxel_type = VoxelType::Unspecified.into();
    cases.push((
        "voxel type",
        messages(header(no_type), &bytes),
        expect(Code::InvalidArgument, "ct.voxel_type is unset"),
    ));

    for (name, requests, (code, text)) in cases {
        let status = call(&mut client, requests).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(status.message().contains(text), "{name}: {:?} does not contain {text:?}", status.message());
    }
    call(&mut client, messages(header(description), &bytes)).await.expect("the server serves on");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_over_the_message_limit_is_refused() {
    let server =
        TestServer::start(|c| c.service.limits = Limits { max_chunk_bytes: 64 << 10, ..Limits::default() }).await;
    let mut client = server.client().await;
    let (description, bytes) = raw_f32(&ct([28, 40, 40]));
    let requests = vec![
        SegmentRequest { part: Some(Part::Header(header(description))) },
        SegmentRequest { part: Some(Part::CtChunk(bytes)) },
    ];
    let status = call(&mut client, requests).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_in_flight_finish() {
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;
    let (description, bytes) = raw_f32(&ct([28, 40, 40]));
    let (tx, task) = open_request(&mut client, &bytes, description).await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "the server waits for the request in flight");
    tx.send(SegmentRequest { part: Some(Part::CtChunk(bytes[bytes.len() / 2..].to_vec())) }).await.unwrap();
    drop(tx);
    let answer = task.await.unwrap().expect("the request in flight is answered");
    assert_eq!(answer.summary.vertebrae.len(), 2);
    stopping.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_fracmap_but_not_health() {
    let server = TestServer::start(|c| c.bearer_tokens = vec!["s3cret-token".into()]).await;
    let mut client = server.client().await;
    let status = client.list_models(ListModelsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut request = tonic::Request::new(ListModelsRequest {});
    request.metadata_mut().insert("authorization", "Bearer s3cret-token".parse().unwrap());
    assert_eq!(client.list_models(request).await.unwrap().into_inner().models.len(), 2);
    let channel = Endpoint::from_shared(format!("http://{}", server.address)).unwrap().connect().await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    assert!(health.is_ok(), "{health:?}");
    server.stop().await.unwrap();
}

/// GET `path` on `address` over plain HTTP/1.1: the whole answer.
async fn http_get(address: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_status_and_time_the_stages() {
    let metrics = free_port();
    let server = TestServer::start(|c| c.metrics = Some(metrics)).await;
    let mut client = server.client().await;
    let (description, bytes) = raw_f32(&ct([28, 40, 40]));
    call(&mut client, messages(header(description.clone()), &bytes)).await.unwrap();
    let mut unknown = header(description);
    unknown.model = "nope".into();
    call(&mut client, messages(unknown, &bytes)).await.unwrap_err();
    // The OK is recorded once the answer has been sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = http_get(server.metrics.unwrap(), "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("fracmap_requests_total{method=\"Segment\",code=\"OK\"} 1"), "{text}");
    assert!(text.contains("fracmap_requests_total{method=\"Segment\",code=\"NOT_FOUND\"} 1"), "{text}");
    assert!(text.contains("fracmap_stage_duration_seconds_count{stage=\"unet\"} 1"), "{text}");
    assert!(text.contains("fracmap_models_loaded 2"), "{text}");
    assert!(text.contains("fracmap_queue_depth 0"), "{text}");
    server.stop().await.unwrap();
}
