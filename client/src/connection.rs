//! Reaching the server: its address, TLS (a CA of the user's, optional client certificate)
//! and the bearer token every call carries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use fracmap_proto::fracmap_client::FracmapClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};
use tonic_health::pb::health_client::HealthClient;

/// How to reach the server; global flags of every subcommand.
#[derive(Args)]
#[command(next_help_heading = "Server")]
pub struct ConnectArgs {
    /// The server, e.g. http://127.0.0.1:50051 (https://... for TLS); `--target` says the same
    /// (the load tester's word).
    #[arg(
        long,
        visible_alias = "target",
        global = true,
        default_value = "http://127.0.0.1:50051",
        env = "FRACMAP_SERVER"
    )]
    pub server: String,
    /// Seconds to wait for the connection.
    #[arg(long, global = true, default_value_t = 10)]
    pub connect_timeout: u64,
    /// Sent as `authorization: Bearer <token>` with every call.
    #[arg(long, global = true, env = "FRACMAP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (https:// servers).
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate this client shows the server (mutual TLS), with --client-key.
    #[arg(long, global = true, value_name = "PEM", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, global = true, value_name = "PEM", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// A client of `fracmap.v1.Fracmap` whose calls carry the token.
pub type Client = FracmapClient<InterceptedService<Channel, BearerToken>>;

/// Answers of several MiB (a chunk size a server may choose) must not hit tonic's 4 MiB default.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// An open connection to the server and the token its calls carry.
pub struct Connection {
    channel: Channel,
    token: BearerToken,
}

impl Connection {
    pub fn fracmap(&self) -> Client {
        FracmapClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub fn health(&self) -> HealthClient<InterceptedService<Channel, BearerToken>> {
        HealthClient::with_interceptor(self.channel.clone(), self.token.clone())
    }
}

/// Adds `authorization: Bearer <token>` to each request, when there is a token.
#[derive(Clone)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connects (TLS for https:// URLs), waiting at most `--connect-timeout`.
pub async fn connect(args: &ConnectArgs) -> Result<Connection> {
    let server = &args.server;
    let token = match &args.token {
        Some(token) => Some(
            MetadataValue::try_from(format!("Bearer {token}"))
                .context("--token (or FRACMAP_TOKEN) must be printable ASCII")?,
        ),
        None => None,
    };
    let mut endpoint = Endpoint::from_shared(server.clone())
        .with_context(|| format!("--server {server:?} is not a URL"))?
        .initial_stream_window_size(fracmap_proto::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(fracmap_proto::HTTP2_CONNECTION_WINDOW);
    if server.starts_with("https://") {
        endpoint = endpoint.tls_config(tls_config(args)?).context("TLS configuration")?;
    } else if args.ca_cert.is_some() || args.client_cert.is_some() {
        bail!("--ca-cert and --client-cert need an https:// server, not {server}");
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(args.connect_timeout))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    Ok(Connection { channel, token: BearerToken(token) })
}

fn tls_config(args: &ConnectArgs) -> Result<ClientTlsConfig> {
    let Some(ca) = &args.ca_cert else {
        bail!(
            "{} needs --ca-cert PEM, the CA that signed its certificate \
             (/etc/ssl/certs/ca-certificates.crt for a publicly signed one)",
            args.server
        );
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--ca-cert", ca)?));
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        config = config.identity(Identity::from_pem(read_pem("--client-cert", cert)?, read_pem("--client-key", key)?));
    }
    Ok(config)
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read", path.display()))
}
