//! `fracmap info` and `fracmap models` against a real server on loopback, in plaintext,
//! with a bearer token and over mutual TLS.

#[macro_use]
mod common;

use std::path::Path;

use common::{TestServer, fracmap, succeeded};
use fracmap_server::security::TlsSettings;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

const TOKEN: &str = "s3cret-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_prints_the_provider_and_health_of_a_running_server() {
    let server = TestServer::start(|_| {}).await;
    let stdout = succeeded(&fracmap(args!["info", "--server", server.url()]).await);
    assert!(stdout.contains("health           SERVING"), "{stdout}");
    assert!(stdout.contains("provider         cpu"), "{stdout}");
    assert!(stdout.contains("onnx runtime     1.31.1"), "{stdout}");
    assert!(stdout.contains("intra-op threads 1"), "{stdout}");
    assert!(stdout.contains("model            unet v1 (unet)"), "{stdout}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_one_line_a_model_for_a_client_with_the_token() {
    let server = TestServer::start(|config| config.bearer_tokens = vec![TOKEN.to_string()]).await;
    let stdout = succeeded(&fracmap(args!["models", "--server", server.url(), "--token", TOKEN]).await);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("unet v1 (unet) sha256 "), "{stdout}");
    assert!(lines[0].ends_with("reads vae, threshold 0.42  (default)"), "{stdout}");
    assert!(lines[1].starts_with("vae v1 (vae) sha256 "), "{stdout}");

    let refused = fracmap(args!["models", "--server", server.url(), "--token", "wrong"]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("fracmap: models: UNAUTHENTICATED: "), "{stderr}");
    server.stop().await;
}

/// Writes a CA, a server certificate for localhost and a client certificate (PEM) into `dir`.
fn write_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for (name, usage) in
        [("server", ExtendedKeyUsagePurpose::ServerAuth), ("client", ExtendedKeyUsagePurpose::ClientAuth)]
    {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        std::fs::write(dir.join(format!("{name}.pem")), params.signed_by(&key, &issuer).unwrap().pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_takes_the_users_ca_and_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    write_certificates(pki.path());
    let path = |name: &str| pki.path().join(name);
    let tls = TlsSettings { cert: path("server.pem"), key: path("server.key"), client_ca: Some(path("ca.pem")) };
    let server = TestServer::start(|config| config.tls = Some(tls)).await;
    let url = format!("https://localhost:{}", server.address.port());

    let trusted = args!["models", "--server", url, "--ca-cert", path("ca.pem").display()];
    let client = args!["--client-cert", path("client.pem").display(), "--client-key", path("client.key").display()];
    let stdout = succeeded(&fracmap([trusted.clone(), client].concat()).await);
    assert!(stdout.starts_with("unet v1"), "{stdout}");

    let without_certificate = fracmap(trusted).await;
    assert!(!without_certificate.status.success(), "the server asks for a client certificate");
    let without_ca = fracmap(args!["models", "--server", url]).await;
    let stderr = String::from_utf8_lossy(&without_ca.stderr);
    assert!(stderr.contains(&format!("{url} needs --ca-cert PEM")), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn a_server_that_is_not_there_is_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there in a test sandbox.
    let out = fracmap(args!["info", "--server", "http://127.0.0.1:9", "--connect-timeout", "2"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fracmap: cannot connect to http://127.0.0.1:9"), "{stderr}");
}

#[tokio::test]
async fn a_malformed_server_address_is_named() {
    let out = fracmap(args!["info", "--server", "not a url"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--server \"not a url\" is not a URL"), "{stderr}");
}
