//! The 2.5D pix2pix-LSTM served beside the U-Net pair, over real gRPC on loopback: a request
//! for model "p2p_lstm" is answered by it (equal to the in-process pipeline), ListModels lists
//! it, an error map asked of it is refused before the upload, and a p2p model whose manifest
//! the pipeline cannot run is not offered, with the reason in the answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use fracmap_core::model_manifest::{Dim, ModelManifest};
use fracmap_core::{Box3, Volume};
use fracmap_server::models::load_models;
use fracmap_server::pipeline::{SegmentOptions, Segmentation, SliceModel, Vertebra as PipelineVertebra, segment};
use fracmap_server::proto::fracmap_client::FracmapClient;
use fracmap_server::proto::{
    GetServerInfoRequest, ListModelsRequest, OutputKind, ProbabilityEncoding, SegmentHeader, SegmentRequest,
    SegmentSummary, Vertebra, VolumeDescription, VolumeEncoding, VolumeGrid, VoxelBox, VoxelType,
    segment_request::Part, segment_response::Part as ResponsePart,
};
use fracmap_server::repository::ModelRepository;
use fracmap_server::runtime::default_library_path;
use fracmap_server::service::ServiceSettings;
use fracmap_server::{Device, OnnxRuntime, ServerConfig, ServerError, SessionSettings, serve};
use ndarray::Array3;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

#[path = "common/tiny_p2p.rs"]
mod tiny_p2p;
#[path = "common/tiny_pair.rs"]
mod tiny_pair;

const L1: [[u64; 3]; 2] = [[6, 14, 15], [12, 24, 25]];
const L2: [[u64; 3]; 2] = [[13, 16, 14], [18, 26, 24]];

/// A repository with the tiny pair and the tiny generator, its manifest changed by `edit`.
fn repository(edit: impl FnOnce(&mut ModelManifest)) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    tiny_pair::write_repository(root.path(), |_, _| {});
    tiny_p2p::write_repository(root.path(), edit);
    root
}

/// A server on 127.0.0.1 with an OS-chosen port.
struct TestServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
    _repository: tempfile::TempDir,
}

impl TestServer {
    async fn start(repository: tempfile::TempDir, edit: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut config = ServerConfig {
            device: Device::Cpu,
            intra_threads: NonZeroUsize::MIN,
            models: Some(repository.path().to_path_buf()),
            shutdown_grace: Duration::from_secs(5),
            service: ServiceSettings { workers: NonZeroUsize::new(2).unwrap(), queue: 4, ..Default::default() },
            ..ServerConfig::new(default_library_path())
        };
        edit(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stop_requested) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config, listener, async {
            let _ = stop_requested.await;
        }));
        TestServer { address, stop: Some(stop), task, _repository: repository }
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

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(20), self.task).await;
        stopped.expect("the server did not stop").unwrap().unwrap();
    }
}

/// The segment tests' CT: a bright column in soft tissue, on a plain grid.
fn ct() -> Volume {
    let data = Array3::from_shape_fn((28, 40, 40), |(z, y, x)| {
        let (z, y, x) = (z as f32, y as f32, x as f32);
        let r2 = (y - 20.0).powi(2) + (x - 20.0).powi(2);
        -100.0 + 900.0 * (-r2 / 40.0).exp() + 80.0 * (0.7 * z).sin() * (0.4 * x).cos()
    });
    Volume::with_spacing(data, [1.5, 1.0, 1.0]).unwrap()
}

/// A float32 request for `model` ("" for the server's default) on [`ct`] with L1 and L2.
fn request(model: &str, error_map: bool) -> Vec<SegmentRequest> {
    let ct = ct();
    let bytes: Vec<u8> = ct.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect();
    let voxel_box = |b: [[u64; 3]; 2]| VoxelBox { min: b[0].to_vec(), max: b[1].to_vec() };
    let header = SegmentHeader {
        model: model.to_string(),
        ct: Some(VolumeDescription {
            encoding: VolumeEncoding::Raw.into(),
            grid: Some(VolumeGrid {
                shape: ct.shape().map(|n| n as u64).to_vec(),
                spacing_mm: ct.spacing().to_vec(),
                affine: ct.affine().iter().flatten().copied().collect(),
            }),
            voxel_type: VoxelType::Float32.into(),
            total_bytes: bytes.len() as u64,
        }),
        vertebrae: [("L1", L1), ("L2", L2)]
            .map(|(label, b)| Vertebra { label: label.into(), body_box: Some(voxel_box(b)) })
            .to_vec(),
        probability_encoding: ProbabilityEncoding::Float32.into(),
        error_map,
        ..Default::default()
    };
    let mut messages = vec![SegmentRequest { part: Some(Part::Header(header)) }];
    messages.extend(bytes.chunks(1 << 20).map(|c| SegmentRequest { part: Some(Part::CtChunk(c.to_vec())) }));
    messages
}

/// An answer put together: the summary and each output's bytes.
struct Answer {
    summary: SegmentSummary,
    volumes: BTreeMap<i32, Vec<u8>>,
}

async fn call(client: &mut FracmapClient<Channel>, messages: Vec<SegmentRequest>) -> Result<Answer, Status> {
    let mut stream = client.segment(tokio_stream::iter(messages)).await?.into_inner();
    let Some(ResponsePart::Summary(summary)) = stream.message().await?.and_then(|m| m.part) else {
        panic!("the first answer is not a summary");
    };
    let mut volumes: BTreeMap<i32, Vec<u8>> = BTreeMap::new();
    while let Some(message) = stream.message().await? {
        let Some(ResponsePart::Chunk(chunk)) = message.part else { panic!("a second summary") };
        volumes.entry(chunk.kind).or_default().extend_from_slice(&chunk.data);
    }
    Ok(Answer { summary, volumes })
}

/// The pipeline in this process with the tiny generator, on [`ct`] with L1 and L2.
fn in_process() -> Segmentation {
    let repository = repository(|_| {});
    let runtime = OnnxRuntime::init(&default_library_path()).unwrap();
    let scanned = ModelRepository::scan(repository.path()).unwrap();
    let settings = SessionSettings { device: Device::Cpu, intra_threads: NonZeroUsize::MIN };
    let models = load_models(runtime, &scanned, &settings, NonZeroUsize::MIN).unwrap();
    let p2p = models.iter().find(|m| m.manifest.name == tiny_p2p::NAME).unwrap();
    let vertebrae: Vec<PipelineVertebra> = [("L1", L1), ("L2", L2)]
        .map(|(label, b)| PipelineVertebra {
            label: Some(label.into()),
            body_box: Box3::new(b[0].map(|n| n as usize), b[1].map(|n| n as usize)).unwrap(),
        })
        .to_vec();
    segment(&ct(), &vertebrae, &[], &SliceModel::new(p2p).unwrap(), &SegmentOptions::default()).unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

async fn http_get(address: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_p2p_lstm_is_answered_by_it_as_in_process() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = TestServer::start(repository(|_| {}), |c| c.metrics = Some(metrics)).await;
    let answer = call(&mut server.client().await, request(tiny_p2p::NAME, false)).await.unwrap();
    let expected = in_process();

    let s = &answer.summary;
    assert_eq!(s.model.as_ref().map(|m| (m.name.as_str(), m.version)), Some((tiny_p2p::NAME, 1)));
    assert_eq!(s.vae, None, "no VAE ran");
    assert_eq!(s.threshold, tiny_p2p::MASK_THRESHOLD);
    assert_eq!(s.mask_voxels, expected.mask_voxels as u64);
    let timings = s.timings.unwrap();
    assert_eq!(timings.vae_ms, 0.0);
    assert!(timings.unet_ms > 0.0, "the slice model's runs are reported as unet_ms");
    let kinds: Vec<OutputKind> = s.outputs.iter().map(|o| o.kind()).collect();
    assert_eq!(kinds, [OutputKind::Probability, OutputKind::Mask]);
    let probability = f32s(&answer.volumes[&(OutputKind::Probability as i32)]);
    assert_eq!(probability, expected.probability.as_slice(), "the pipeline's probabilities, bit for bit");
    assert!(probability.iter().any(|&p| p > 0.0));
    let mask = &answer.volumes[&(OutputKind::Mask as i32)];
    assert_eq!(mask, &expected.mask.iter().map(|&m| u8::from(m)).collect::<Vec<u8>>());

    // The model run has a stage of its own; no VAE stage was timed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = http_get(metrics, "/metrics").await;
    assert!(text.contains("fracmap_stage_duration_seconds_count{stage=\"p2p\"} 1"), "{text}");
    assert!(!text.contains("stage=\"vae\""), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_models_offers_p2p_lstm_beside_the_pair_and_the_default_stays() {
    let server = TestServer::start(repository(|_| {}), |_| {}).await;
    let mut client = server.client().await;
    let models = client.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["p2p_lstm", "unet", "vae"]);
    let p2p = &models[0];
    assert_eq!(p2p.architecture, "p2p_lstm");
    assert_eq!(p2p.reads_errors_of, "", "it reads no VAE");
    assert_eq!(p2p.mask_threshold, tiny_p2p::MASK_THRESHOLD, "a segmentation model");
    assert_eq!(p2p.inputs[0].shape, [-1, 5, 8, 16]);
    assert_eq!(p2p.preprocessing.as_ref().unwrap().patch, [8, 8, 16]);
    assert!(!p2p.is_default && models[1].is_default, "the default is the U-Net, first though p2p_lstm sorts");
    let info = client.get_server_info(GetServerInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.models, models);
    // A request that names no model gets the U-Net.
    let answer = call(&mut client, request("", false)).await.unwrap();
    assert_eq!(answer.summary.model.unwrap().name, "unet");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_lstm_configured_as_the_default_answers_requests_naming_none() {
    let server = TestServer::start(repository(|_| {}), |c| c.service.default_model = Some(tiny_p2p::NAME.into())).await;
    let mut client = server.client().await;
    let answer = call(&mut client, request("", false)).await.unwrap();
    assert_eq!(answer.summary.model.unwrap().name, tiny_p2p::NAME);
    let models = client.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    assert!(models[0].is_default && !models[1].is_default);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_map_asked_of_p2p_lstm_is_invalid_argument_naming_the_field() {
    let server = TestServer::start(repository(|_| {}), |_| {}).await;
    let status = call(&mut server.client().await, request(tiny_p2p::NAME, true)).await.err().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "header.error_map: model p2p_lstm is a p2p_lstm model, which reads no VAE's error map; ask without error_map"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2p_model_with_a_bad_signature_is_not_offered_and_a_request_for_it_says_why() {
    // The graph reads 5 slices; a manifest that promises 4 (an even context has no centre).
    let bad = repository(|m| m.inputs[0].shape[1] = Dim::Fixed(4));
    let server = TestServer::start(bad, |_| {}).await;
    let mut client = server.client().await;
    let models = client.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    assert_eq!(models[0].name, "p2p_lstm", "still loaded and listed");
    assert_eq!((models[0].mask_threshold, models[0].is_default), (0.0, false), "but not a segmentation model");

    let status = call(&mut client, request(tiny_p2p::NAME, false)).await.err().unwrap();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with(
            "header.model: model \"p2p_lstm\" is loaded but cannot segment: model p2p_lstm version 1 cannot segment \
             as a slice model (p2p_lstm): its input slices has shape"
        ),
        "{message}"
    );
    assert!(message.ends_with("(the predicted slice is the centre) (known: unet)"), "{message}");
    // The pair serves on.
    call(&mut client, request("unet", false)).await.unwrap();
    server.stop().await;
}
