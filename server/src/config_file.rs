//! The server's TOML configuration file: every key optional, unknown keys refused, relative
//! paths taken relative to the file's folder, values checked once at load. It is plain
//! data: the binary merges it with its command-line flags (flags win) and fills in defaults.
//! `configs/server.example.toml` shows every key.

use std::io;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _, Unexpected};

use crate::runtime::Device;
use crate::security::{SecurityError, TlsSettings, is_valid_token, read_token_file};

/// The sizes one request message's payload may take: below 64 KiB a volume takes too many
/// messages, above 64 MiB one message holds too much memory per stream.
pub const CHUNK_BYTES_RANGE: RangeInclusive<usize> = (64 << 10)..=(64 << 20);

/// The whole file. Keys left out are `None` (or an all-`None` section).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `listen = "127.0.0.1:50051"`: the gRPC address.
    pub listen: Option<SocketAddr>,
    /// `device = "auto"`: `auto`, `cpu` or `cuda`.
    #[serde(default, deserialize_with = "device_by_name")]
    pub device: Option<Device>,
    /// `threads = 2`: ONNX Runtime intra-op threads per session.
    pub threads: Option<NonZeroUsize>,
    /// `models = "models"`: the model repository folder.
    pub models: Option<PathBuf>,
    /// `default_model = "unet_box"`: the model used when a request names none.
    pub default_model: Option<String>,
    /// `shutdown_grace_seconds = 20`: how long running requests may finish after a stop signal.
    pub shutdown_grace_seconds: Option<u64>,
    /// `log_format = "text"`: `text` or `json`.
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub inference: InferenceFile,
    #[serde(default)]
    pub metrics: MetricsFile,
    /// `[tls]` with `cert`, `key` and optionally `client_ca`; absent = plaintext.
    pub tls: Option<TlsSettings>,
    #[serde(default)]
    pub auth: AuthFile,
}

/// `[limits]`: how much one request may send.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// `max_request_bytes`: total bytes of a request's CT and label map chunks.
    pub max_request_bytes: Option<NonZeroU64>,
    /// `max_voxels`: voxels of the CT volume.
    pub max_voxels: Option<NonZeroU64>,
    /// `max_chunk_bytes`: the payload of one request message, within [`CHUNK_BYTES_RANGE`].
    pub max_chunk_bytes: Option<usize>,
}

/// `[inference]`: how models are shared between requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceFile {
    /// `sessions`: ONNX Runtime sessions per model, that is concurrent segmentations.
    pub sessions: Option<NonZeroUsize>,
    /// `queue`: requests that may wait for a session; more get RESOURCE_EXHAUSTED. 0 = none wait.
    pub queue: Option<usize>,
    /// `max_batch`: crops per model run.
    pub max_batch: Option<NonZeroUsize>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// `listen = "127.0.0.1:9464"`; absent = no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

/// `[auth]`: bearer tokens, inline or from a file (one per line), not both; absent = no check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub bearer_tokens: Option<Vec<String>>,
    pub bearer_token_file: Option<PathBuf>,
}

impl AuthFile {
    /// The configured tokens, reading the token file if that is where they are; empty when
    /// authentication is off.
    pub fn tokens(&self) -> Result<Vec<String>, SecurityError> {
        match (&self.bearer_tokens, &self.bearer_token_file) {
            (Some(tokens), _) => Ok(tokens.clone()),
            (None, Some(path)) => read_token_file(path),
            (None, None) => Ok(Vec::new()),
        }
    }
}

/// How the server writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("config file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// toml's message names the line, column and key.
    #[error("config file {}: {source}", path.display())]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("config file {}: {key}: {reason}", path.display())]
    Invalid { path: PathBuf, key: String, reason: String },
}

impl FileConfig {
    /// Reads, parses and checks the file at `path`; relative paths in it come back joined
    /// to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read { path: path.to_owned(), source })?;
        let mut config: FileConfig =
            toml::from_str(&text).map_err(|source| ConfigFileError::Parse { path: path.to_owned(), source })?;
        config.validate().map_err(|(key, reason)| ConfigFileError::Invalid { path: path.to_owned(), key, reason })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(config)
    }

    /// The checks that types cannot express, as (key, reason).
    fn validate(&self) -> Result<(), (String, String)> {
        if let Some(bytes) = self.limits.max_chunk_bytes
            && !CHUNK_BYTES_RANGE.contains(&bytes)
        {
            let reason = format!(
                "{bytes} is outside {}..={} (64 KiB..=64 MiB)",
                CHUNK_BYTES_RANGE.start(),
                CHUNK_BYTES_RANGE.end()
            );
            return Err(("limits.max_chunk_bytes".into(), reason));
        }
        match (&self.auth.bearer_tokens, &self.auth.bearer_token_file) {
            (Some(_), Some(_)) => Err(("auth".into(), "set bearer_tokens or bearer_token_file, not both".into())),
            (Some(tokens), None) if tokens.is_empty() => {
                Err(("auth.bearer_tokens".into(), "empty: leave the key out to turn authentication off".into()))
            }
            (Some(tokens), None) => match tokens.iter().position(|token| !is_valid_token(token)) {
                Some(index) => Err((
                    format!("auth.bearer_tokens[{index}]"),
                    "empty or holds characters other than visible ASCII".into(),
                )),
                None => Ok(()),
            },
            (None, _) => Ok(()),
        }
    }

    fn resolve_paths(&mut self, folder: &Path) {
        let tls = self
            .tls
            .as_mut()
            .into_iter()
            .flat_map(|tls| [Some(&mut tls.cert), Some(&mut tls.key), tls.client_ca.as_mut()]);
        let paths = [self.models.as_mut(), self.auth.bearer_token_file.as_mut()].into_iter().chain(tls).flatten();
        for path in paths {
            *path = folder.join(&*path);
        }
    }
}

/// A [`Device`] by its command-line name, so that the file and the flag spell it alike.
fn device_by_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Device>, D::Error> {
    let name = String::deserialize(deserializer)?;
    Device::from_str(&name, false)
        .map(Some)
        .map_err(|_| D::Error::invalid_value(Unexpected::Str(&name), &"one of \"auto\", \"cpu\", \"cuda\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` as `server.toml` in a fresh folder and loads it.
    fn load(text: &str) -> (tempfile::TempDir, Result<FileConfig, ConfigFileError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, text).unwrap();
        let loaded = FileConfig::load(&path);
        (dir, loaded)
    }

    fn error_of(text: &str) -> String {
        load(text).1.unwrap_err().to_string()
    }

    #[test]
    fn example_file_loads_as_documented() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let config = FileConfig::load(&folder.join("server.example.toml")).unwrap();
        let expected = FileConfig {
            listen: Some("127.0.0.1:50051".parse().unwrap()),
            device: Some(Device::Auto),
            threads: None,
            models: Some(folder.join("../models")),
            default_model: Some("unet_box".into()),
            shutdown_grace_seconds: Some(20),
            log_format: Some(LogFormat::Text),
            limits: LimitsFile {
                max_request_bytes: NonZeroU64::new(1 << 30),
                max_voxels: NonZeroU64::new(1 << 28),
                max_chunk_bytes: Some(4 << 20),
            },
            inference: InferenceFile {
                sessions: NonZeroUsize::new(1),
                queue: Some(8),
                max_batch: NonZeroUsize::new(8),
            },
            metrics: MetricsFile { listen: Some("127.0.0.1:9464".parse().unwrap()) },
            tls: None,
            auth: AuthFile::default(),
        };
        assert_eq!(config, expected);
        // The commented sections parse too once uncommented.
        let text = std::fs::read_to_string(folder.join("server.example.toml")).unwrap();
        let uncommented: String = text
            .lines()
            .skip_while(|line| !line.starts_with("# [tls]"))
            .filter(|line| !line.starts_with("# bearer_tokens"))
            .map(|line| line.strip_prefix("# ").unwrap_or(line).to_string() + "\n")
            .collect();
        let (dir, loaded) = load(&uncommented);
        let config = loaded.unwrap();
        assert_eq!(config.tls.unwrap().client_ca, Some(dir.path().join("tls/clients-ca.pem")));
        assert_eq!(config.auth.bearer_token_file, Some(dir.path().join("tokens.txt")));
    }

    #[test]
    fn empty_file_is_all_unset() {
        assert_eq!(load("").1.unwrap(), FileConfig::default());
    }

    #[test]
    fn absolute_paths_stay_and_relative_ones_join_the_folder() {
        let (dir, loaded) = load("models = \"/srv/models\"\n[tls]\ncert = \"a.pem\"\nkey = \"/etc/a.key\"\n");
        let config = loaded.unwrap();
        assert_eq!(config.models, Some(PathBuf::from("/srv/models")));
        let tls = config.tls.unwrap();
        assert_eq!((tls.cert, tls.key, tls.client_ca), (dir.path().join("a.pem"), "/etc/a.key".into(), None));
    }

    #[test]
    fn parse_errors_name_the_file_line_and_key() {
        let message = error_of("listen = \"127.0.0.1:50051\"\n\n[inference]\nqueues = 3\n");
        assert!(message.starts_with("config file ") && message.contains("server.toml"), "{message}");
        assert!(message.contains("line 4") && message.contains("queues"), "{message}");
    }

    #[test]
    fn zero_counts_are_refused_at_their_line() {
        for text in
            ["threads = 0", "[inference]\nsessions = 0", "[inference]\nmax_batch = 0", "[limits]\nmax_voxels = 0"]
        {
            let message = error_of(text);
            assert!(message.contains("nonzero"), "{text}: {message}");
        }
    }

    #[test]
    fn device_and_log_format_take_their_lowercase_names() {
        let config = load("device = \"cuda\"\nlog_format = \"json\"").1.unwrap();
        assert_eq!((config.device, config.log_format), (Some(Device::Cuda), Some(LogFormat::Json)));
        let message = error_of("device = \"gpu\"");
        assert!(message.contains("\"gpu\"") && message.contains("\"cuda\""), "{message}");
    }

    #[test]
    fn chunk_size_must_lie_between_64_kib_and_64_mib() {
        assert!(load("[limits]\nmax_chunk_bytes = 65536").1.is_ok());
        assert!(load("[limits]\nmax_chunk_bytes = 67108864").1.is_ok());
        for bytes in [65535, 67108865] {
            let message = error_of(&format!("[limits]\nmax_chunk_bytes = {bytes}"));
            assert!(message.contains("limits.max_chunk_bytes"), "{message}");
        }
    }

    #[test]
    fn auth_takes_inline_tokens_or_a_file_not_both() {
        let message = error_of("[auth]\nbearer_tokens = [\"a\"]\nbearer_token_file = \"t.txt\"");
        assert!(message.contains("not both"), "{message}");
        assert!(error_of("[auth]\nbearer_tokens = []").contains("auth.bearer_tokens: empty"));
        assert!(error_of("[auth]\nbearer_tokens = [\"ok\", \"not ok\"]").contains("auth.bearer_tokens[1]"));
    }

    #[test]
    fn auth_tokens_come_inline_or_from_the_file() {
        let (_dir, loaded) = load("[auth]\nbearer_tokens = [\"alpha\"]");
        assert_eq!(loaded.unwrap().auth.tokens().unwrap(), ["alpha"]);
        let (dir, loaded) = load("[auth]\nbearer_token_file = \"tokens.txt\"");
        std::fs::write(dir.path().join("tokens.txt"), "beta\n").unwrap();
        assert_eq!(loaded.unwrap().auth.tokens().unwrap(), ["beta"]);
        assert!(AuthFile::default().tokens().unwrap().is_empty());
    }
}
