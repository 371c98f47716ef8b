//! TLS, mutual TLS and bearer tokens over real gRPC on loopback, with certificates made at
//! test time: a server that serves the health service openly and reflection behind
//! [`BearerAuth`], as the real server serves health beside the protected fracmap service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fracmap_server::security::{BearerAuth, SecurityError, TlsSettings, server_tls_config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const TOKEN: &str = "s3cret-token";
const CA: &str = "fracmap test CA";
const STRANGER_CA: &str = "stranger CA";

/// A certificate and its key, PEM.
struct Pem {
    cert: String,
    key: String,
}

/// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate, both
/// issued by the CA, written as PEM files into a temporary folder.
struct Pki {
    dir: TempDir,
    ca: String,
    client: Pem,
}

impl Pki {
    /// A PKI whose CA is called `ca_name`: distinct names make a stranger's certificate an
    /// unknown issuer rather than a bad signature.
    fn generate(ca_name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let server = leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, &issuer);
        let client = leaf(&["client"], ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        let dir = tempfile::tempdir().unwrap();
        for (name, pem) in [("ca.pem", &ca), ("server.pem", &server.cert), ("server.key", &server.key)] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Pki { dir, ca, client }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's settings, requiring client certificates from the CA when `mutual`.
    fn settings(&self, mutual: bool) -> TlsSettings {
        TlsSettings {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: mutual.then(|| self.path("ca.pem")),
        }
    }

    /// A client that trusts the CA and checks the name "localhost".
    fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca)).domain_name("localhost")
    }
}

fn leaf(names: &[&str], usage: ExtendedKeyUsagePurpose, issuer: &Issuer<'_, KeyPair>) -> Pem {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    Pem { cert: params.signed_by(&key, issuer).unwrap().pem(), key: key.serialize_pem() }
}

/// A TLS server on 127.0.0.1 with health open and reflection behind `auth`; it stops when
/// the test's runtime ends.
async fn start(tls: &TlsSettings, auth: BearerAuth) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let router = Server::builder()
        .tls_config(server_tls_config(tls).unwrap())
        .unwrap()
        .add_service(health)
        .add_service(InterceptedService::new(reflection, auth));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    address
}

/// A channel to `address`, over TLS when `tls` is given; a failed handshake may surface here
/// or only at the first call.
async fn connect(address: SocketAddr, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}")).unwrap().timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    endpoint.connect().await.map_err(|error| format!("connect: {error:?}"))
}

/// The server's overall health as the client sees it, or why it could not ask.
async fn health(address: SocketAddr, tls: Option<ClientTlsConfig>) -> Result<ServingStatus, String> {
    let channel = connect(address, tls).await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(|status| format!("check: {status:?}"))?;
    Ok(response.into_inner().status())
}

/// The services that reflection lists, asked with `authorization` set to `credentials`.
async fn list_services(channel: Channel, credentials: Option<&str>) -> Result<Vec<String>, Status> {
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut request = Request::new(tokio_stream::iter([ask]));
    if let Some(credentials) = credentials {
        request.metadata_mut().insert("authorization", credentials.parse().unwrap());
    }
    let mut answers = ServerReflectionClient::new(channel).server_reflection_info(request).await?.into_inner();
    match answers.message().await?.and_then(|answer| answer.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|service| service.name).collect())
        }
        other => panic!("not a list of services: {other:?}"),
    }
}

/// Asserts that a call failed, for a reason whose debug text holds `reason`.
fn assert_failed_with(outcome: Result<ServingStatus, String>, reason: &str) {
    match outcome {
        Err(error) => assert!(error.contains(reason), "expected {reason}, got {error}"),
        Ok(status) => panic!("expected {reason}, got {status:?}"),
    }
}

fn no_auth() -> BearerAuth {
    BearerAuth::new(Vec::new()).unwrap()
}

#[tokio::test]
async fn tls_client_trusting_the_ca_is_served() {
    let pki = Pki::generate(CA);
    let address = start(&pki.settings(false), no_auth()).await;
    assert_eq!(health(address, Some(pki.client_tls())).await, Ok(ServingStatus::Serving));
}

#[tokio::test]
async fn plaintext_client_is_refused_by_a_tls_server() {
    let pki = Pki::generate(CA);
    let address = start(&pki.settings(false), no_auth()).await;
    assert!(health(address, None).await.is_err());
}

#[tokio::test]
async fn client_not_trusting_the_ca_refuses_the_server() {
    let pki = Pki::generate(CA);
    let address = start(&pki.settings(false), no_auth()).await;
    let other_ca = Pki::generate(STRANGER_CA).client_tls();
    assert_failed_with(health(address, Some(other_ca)).await, "UnknownIssuer");
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::generate(CA);
    let address = start(&pki.settings(true), no_auth()).await;
    assert_failed_with(health(address, Some(pki.client_tls())).await, "CertificateRequired");
}

#[tokio::test]
async fn mutual_tls_refuses_a_certificate_from_another_ca() {
    let pki = Pki::generate(CA);
    let address = start(&pki.settings(true), no_auth()).await;
    let stranger = Pki::generate(STRANGER_CA).client;
    let tls = pki.client_tls().identity(Identity::from_pem(stranger.cert, stranger.key));
    assert_failed_with(health(address, Some(tls)).await, "UnknownCA");
}

#[tokio::test]
async fn mutual_tls_serves_a_client_with_a_certificate_from_the_ca() {
    let pki = Pki::generate(CA);
    let address = start(&pki.settings(true), no_auth()).await;
    let tls = pki.client_tls().identity(Identity::from_pem(&pki.client.cert, &pki.client.key));
    assert_eq!(health(address, Some(tls)).await, Ok(ServingStatus::Serving));
}

#[tokio::test]
async fn bearer_token_guards_only_the_wrapped_service() {
    let pki = Pki::generate(CA);
    let auth = BearerAuth::new(vec!["another-token".into(), TOKEN.into()]).unwrap();
    let address = start(&pki.settings(false), auth).await;
    let channel = connect(address, Some(pki.client_tls())).await.unwrap();

    for credentials in [None, Some("Bearer wrong-token"), Some(TOKEN)] {
        let status = list_services(channel.clone(), credentials).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{credentials:?}: {status:?}");
    }
    let services = list_services(channel.clone(), Some(&format!("Bearer {TOKEN}"))).await.unwrap();
    assert!(services.iter().any(|service| service == "grpc.health.v1.Health"), "{services:?}");
    // Health stays open, for probes that carry no token.
    assert_eq!(health(address, Some(pki.client_tls())).await, Ok(ServingStatus::Serving));
}

#[tokio::test]
async fn bearer_errors_say_missing_or_invalid() {
    let pki = Pki::generate(CA);
    let address = start(&pki.settings(false), BearerAuth::new(vec![TOKEN.into()]).unwrap()).await;
    let channel = connect(address, Some(pki.client_tls())).await.unwrap();
    let missing = list_services(channel.clone(), None).await.unwrap_err();
    let invalid = list_services(channel, Some("Bearer wrong-token")).await.unwrap_err();
    assert_eq!((missing.message(), invalid.message()), ("missing bearer token", "invalid bearer token"));
}

#[test]
fn tls_file_errors_name_the_setting() {
    let pki = Pki::generate(CA);
    let key_is_a_certificate = TlsSettings { key: pki.path("server.pem"), ..pki.settings(false) };
    let error = server_tls_config(&key_is_a_certificate).unwrap_err();
    assert!(matches!(error, SecurityError::Pem { setting: "tls.key", .. }), "{error}");

    let missing_ca = TlsSettings { client_ca: Some(pki.path("absent.pem")), ..pki.settings(false) };
    let error = server_tls_config(&missing_ca).unwrap_err();
    assert!(matches!(error, SecurityError::Read { setting: "tls.client_ca", .. }), "{error}");
    assert!(error.to_string().contains("absent.pem"), "{error}");
}
