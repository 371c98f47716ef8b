//! Who may talk to the server: TLS from PEM files (mutual when a client CA is given) and
//! bearer tokens checked by a gRPC interceptor.
//!
//! Tokens are kept only as SHA-256 digests, so neither `Debug` nor an error message can
//! reveal one.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// Server TLS: certificate chain and key (PEM files), optional CA bundle whose certificates a
/// client must present (mTLS).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS or bearer authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{setting} {}: {source}", path.display())]
    Read { setting: &'static str, path: PathBuf, source: io::Error },
    #[error("{setting} {}: not a PEM {expected}: {source}", path.display())]
    Pem { setting: &'static str, path: PathBuf, expected: &'static str, source: pem::Error },
    #[error("bearer token {index}: empty or holds characters other than visible ASCII")]
    InvalidToken { index: usize },
    #[error("bearer token file {} line {line}: a token holds characters other than visible ASCII", path.display())]
    InvalidTokenLine { path: PathBuf, line: usize },
    #[error("bearer token file {}: holds no token", path.display())]
    NoTokens { path: PathBuf },
}

/// tonic's TLS configuration from the PEM files of `tls`, each checked here so that an
/// error names the file and its setting (tonic's own error names neither).
pub fn server_tls_config(tls: &TlsSettings) -> Result<ServerTlsConfig, SecurityError> {
    let cert = read_certificates(&tls.cert, "tls.cert")?;
    let key = read_file(&tls.key, "tls.key")?;
    PrivateKeyDer::from_pem_slice(&key).map_err(|source| SecurityError::Pem {
        setting: "tls.key",
        path: tls.key.clone(),
        expected: "private key",
        source,
    })?;
    let config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    Ok(match &tls.client_ca {
        Some(path) => config.client_ca_root(Certificate::from_pem(read_certificates(path, "tls.client_ca")?)),
        None => config,
    })
}

/// The bytes of a PEM file holding at least one certificate.
fn read_certificates(path: &Path, setting: &'static str) -> Result<Vec<u8>, SecurityError> {
    let pem = read_file(path, setting)?;
    let count =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map(|certificates| certificates.len());
    match count {
        Ok(0) => Err(pem::Error::NoItemsFound),
        Ok(_) => Ok(pem),
        Err(error) => Err(error),
    }
    .map_err(|source| SecurityError::Pem { setting, path: path.to_owned(), expected: "certificate", source })
}

fn read_file(path: &Path, setting: &'static str) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read { setting, path: path.to_owned(), source })
}

/// Bearer tokens: an interceptor that accepts `authorization: Bearer <token>` for any
/// configured token, else answers UNAUTHENTICATED. No tokens configured = no check.
#[derive(Clone)]
pub struct BearerAuth {
    /// SHA-256 of each token: equal lengths make the comparison constant-time, and the
    /// tokens themselves are not kept.
    digests: Arc<[[u8; 32]]>,
}

impl BearerAuth {
    /// Refuses an empty token and one with characters other than visible ASCII (such a
    /// token could never arrive in an `authorization` header).
    pub fn new(tokens: Vec<String>) -> Result<Self, SecurityError> {
        if let Some(index) = tokens.iter().position(|token| !is_valid_token(token)) {
            return Err(SecurityError::InvalidToken { index });
        }
        Ok(Self { digests: tokens.iter().map(|token| digest(token)).collect() })
    }

    /// Whether any token is configured, that is whether requests are checked at all.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let token = bearer_token(metadata).ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let presented = digest(token);
        // Every digest is compared, so the time taken does not say which token matched.
        let matched = self.digests.iter().fold(Choice::from(0), |matched, known| matched | known.ct_eq(&presented));
        if bool::from(matched) { Ok(()) } else { Err(Status::unauthenticated("invalid bearer token")) }
    }
}

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth").field("tokens", &self.digests.len()).finish()
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.enabled() {
            self.check(request.metadata())?;
        }
        Ok(request)
    }
}

/// The token of an `authorization: Bearer <token>` header (the scheme is case-insensitive,
/// RFC 7235), if there is one.
fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A token that an `authorization` header can carry: non-empty, visible ASCII only.
pub(crate) fn is_valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|byte| byte.is_ascii_graphic())
}

/// Tokens from a file: one per line, blank lines and # comments ignored. A file with no
/// token is an error: it would otherwise turn authentication off.
pub fn read_token_file(path: &Path) -> Result<Vec<String>, SecurityError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
        setting: "auth.bearer_token_file",
        path: path.to_owned(),
        source,
    })?;
    let mut tokens = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        if !is_valid_token(token) {
            return Err(SecurityError::InvalidTokenLine { path: path.to_owned(), line: index + 1 });
        }
        tokens.push(token.to_owned());
    }
    if tokens.is_empty() {
        return Err(SecurityError::NoTokens { path: path.to_owned() });
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn request_with(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", MetadataValue::try_from(value).unwrap());
        }
        request
    }

    fn code_of(mut auth: BearerAuth, authorization: Option<&str>) -> tonic::Code {
        match auth.call(request_with(authorization)) {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    }

    fn two_tokens() -> BearerAuth {
        BearerAuth::new(vec!["first-token".into(), "second.token".into()]).unwrap()
    }

    #[test]
    fn any_configured_token_is_accepted() {
        assert_eq!(code_of(two_tokens(), Some("Bearer first-token")), tonic::Code::Ok);
        assert_eq!(code_of(two_tokens(), Some("bearer second.token")), tonic::Code::Ok);
    }

    #[test]
    fn missing_wrong_or_malformed_credentials_are_unauthenticated() {
        for authorization in
            [None, Some("first-token"), Some("Basic Zmlyc3QtdG9rZW4="), Some("Bearer first"), Some("Bearer ")]
        {
            assert_eq!(code_of(two_tokens(), authorization), tonic::Code::Unauthenticated, "{authorization:?}");
        }
    }

    #[test]
    fn no_tokens_means_no_check() {
        let open = BearerAuth::new(Vec::new()).unwrap();
        assert!(!open.enabled());
        assert_eq!(code_of(open, None), tonic::Code::Ok);
    }

    #[test]
    fn empty_or_whitespace_tokens_are_refused_by_position() {
        for bad in ["", "two words", "tab\there", "caf\u{e9}"] {
            let error = BearerAuth::new(vec!["good".into(), bad.into()]).unwrap_err();
            assert!(matches!(error, SecurityError::InvalidToken { index: 1 }), "{bad:?}: {error}");
        }
    }

    #[test]
    fn debug_does_not_show_tokens() {
        let shown = format!("{:?}", two_tokens());
        assert_eq!(shown, "BearerAuth { tokens: 2 }");
    }

    #[test]
    fn token_file_skips_blank_lines_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.txt");
        std::fs::write(&path, "# operators\n  alpha  \n\n# ci\nbeta\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), ["alpha", "beta"]);
    }

    #[test]
    fn token_file_errors_name_the_line_or_the_emptiness() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.txt");
        std::fs::write(&path, "alpha\nbad token\n").unwrap();
        assert!(matches!(read_token_file(&path), Err(SecurityError::InvalidTokenLine { line: 2, .. })));
        std::fs::write(&path, "# nothing yet\n\n").unwrap();
        assert!(matches!(read_token_file(&path), Err(SecurityError::NoTokens { .. })));
    }

    #[test]
    fn tls_errors_name_the_setting_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("server.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let settings = TlsSettings { cert: not_pem.clone(), key: dir.path().join("absent.key"), client_ca: None };
        let message = server_tls_config(&settings).unwrap_err().to_string();
        assert!(message.starts_with(&format!("tls.cert {}: not a PEM certificate", not_pem.display())), "{message}");
    }
}
