//! ONNX Runtime: loading its shared library once per process, choosing the execution
//! provider (CPU or CUDA) and creating sessions with an explicit thread count.
//!
//! The library is loaded at run time (ort's `load-dynamic`): `scripts/setup.sh` links
//! `.deps/lib/libonnxruntime.so` to the one inside the pinned `onnxruntime` wheel. ort allows
//! one library and one environment per process, so [`OnnxRuntime::init`] hands out a
//! process-wide `&'static OnnxRuntime` and refuses a second, different library.

use std::ffi::CStr;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::SessionBuilder;

/// Where `scripts/setup.sh` links the ONNX Runtime library, relative to the repository root.
pub const SETUP_LIBRARY_LINK: &str = ".deps/lib/libonnxruntime.so";

/// The environment variable naming the ONNX Runtime library (ort's own convention;
/// `.cargo/config.toml` sets it for `cargo run` and `cargo test`).
pub const LIBRARY_ENV_VAR: &str = "ORT_DYLIB_PATH";

/// The ONNX Runtime library to load when none is named: `$ORT_DYLIB_PATH` when set, else
/// [`SETUP_LIBRARY_LINK`] relative to the working directory.
pub fn default_library_path() -> PathBuf {
    match std::env::var_os(LIBRARY_ENV_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(SETUP_LIBRARY_LINK),
    }
}

/// Where a user asks the models to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// CUDA when this build has it and ONNX Runtime can use it, else CPU.
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA or nothing: an error when it is not usable.
    Cuda,
}

/// The ONNX Runtime execution provider that sessions actually run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
}

impl ExecutionProvider {
    /// Lower-case name, as in logs and on the command line: "cpu", "cuda".
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<ExecutionProvider> for Device {
    fn from(provider: ExecutionProvider) -> Self {
        match provider {
            ExecutionProvider::Cpu => Device::Cpu,
            ExecutionProvider::Cuda => Device::Cuda,
        }
    }
}

/// How to build a session: where it runs and how many threads one operator may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    pub device: Device,
    /// ONNX Runtime's intra-op threads. Set explicitly: its default was the slowest under load.
    pub intra_threads: NonZeroUsize,
}

/// A model loaded into ONNX Runtime, with the execution provider it got.
pub struct ModelSession {
    pub session: Session,
    pub provider: ExecutionProvider,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found at {path}: run `bash scripts/setup.sh`, which installs it and links \
         {SETUP_LIBRARY_LINK}, or name another one with {LIBRARY_ENV_VAR}"
    )]
    LibraryMissing { path: PathBuf },
    #[error("cannot load the ONNX Runtime library {path}: {message}")]
    LibraryLoad { path: PathBuf, message: String },
    #[error(
        "ONNX Runtime is already loaded from {loaded} in this process; cannot also load {requested} \
         (one library per process)"
    )]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
    #[error("cannot create the ONNX Runtime environment")]
    Environment(#[source] ort::Error),
    #[error(
        "device cuda: this server was built without CUDA support; rebuild it with \
         `cargo build -p fracmap-server --features cuda`, or use --device cpu"
    )]
    CudaNotCompiled,
    #[error(
        "device cuda: ONNX Runtime cannot use CUDA; it needs the onnxruntime-gpu==1.31.1 library with \
         CUDA 13 and cuDNN 9 (or use --device cpu)"
    )]
    CudaUnavailable(#[source] ort::Error),
    #[error("cannot set up an ONNX Runtime session")]
    SessionOptions(#[source] ort::Error),
    #[error("cannot load model {path} on {provider}")]
    Model { path: PathBuf, provider: ExecutionProvider, source: ort::Error },
}

/// The process's ONNX Runtime: its library and its one environment.
pub struct OnnxRuntime {
    library: PathBuf,
    version: String,
    environment: Environment,
}

static RUNTIME: OnceLock<OnnxRuntime> = OnceLock::new();
/// Serialises [`OnnxRuntime::init`]: ort's library and environment may be set only once.
static INIT: Mutex<()> = Mutex::new(());

impl OnnxRuntime {
    /// Loads the ONNX Runtime library at `library` and creates the environment, once per
    /// process. Later calls with the same library (after links are resolved) return the
    /// same runtime; a different library is [`RuntimeError::AlreadyLoaded`]. Never panics
    /// on a missing or wrong library, unlike ort's implicit loading.
    pub fn init(library: &Path) -> Result<&'static OnnxRuntime, RuntimeError> {
        let library = std::fs::canonicalize(library).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => RuntimeError::LibraryMissing { path: library.to_path_buf() },
            _ => RuntimeError::LibraryLoad { path: library.to_path_buf(), message: error.to_string() },
        })?;
        let _serialised = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(runtime) = RUNTIME.get() {
            return if runtime.library == library {
                Ok(runtime)
            } else {
                Err(RuntimeError::AlreadyLoaded { loaded: runtime.library.clone(), requested: library })
            };
        }
        let environment = ort::init_from(&library)
            .map_err(|error| RuntimeError::LibraryLoad { path: library.clone(), message: error.to_string() })?
            .with_name("fracmap")
            .build()
            .map_err(RuntimeError::Environment)?;
        let version = library_version(&library)?;
        tracing::info!(library = %library.display(), %version, "loaded ONNX Runtime");
        Ok(RUNTIME.get_or_init(|| OnnxRuntime { library, version, environment }))
    }

    /// The library loaded, absolute, with links resolved.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The version the library reports, e.g. "1.31.1".
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The execution provider that `device` gets here. `Auto` tries CUDA and falls back to
    /// CPU with a log line; `Cuda` is an error when CUDA cannot be registered.
    ///
    /// This checks that ONNX Runtime accepts the CUDA provider (the GPU library and its CUDA
    /// libraries load); a GPU that fails only when a model is placed on it shows up in
    /// [`OnnxRuntime::load_session`], which falls back again for `Auto`.
    pub fn resolve_provider(&self, device: Device) -> Result<ExecutionProvider, RuntimeError> {
        let threads = NonZeroUsize::MIN;
        match device {
            Device::Cpu => Ok(ExecutionProvider::Cpu),
            Device::Cuda => self.builder(ExecutionProvider::Cuda, threads).map(|_| ExecutionProvider::Cuda),
            Device::Auto => match self.builder(ExecutionProvider::Cuda, threads) {
                Ok(_) => Ok(ExecutionProvider::Cuda),
                Err(error) => {
                    log_cpu_fallback(&error);
                    Ok(ExecutionProvider::Cpu)
                }
            },
        }
    }

    /// Loads the ONNX model at `model` for `settings.device`, with `settings.intra_threads`
    /// threads. `Auto` falls back to CPU, with a log line, when CUDA fails at any step.
    pub fn load_session(&self, model: &Path, settings: &SessionSettings) -> Result<ModelSession, RuntimeError> {
        let on = |provider| self.commit(model, provider, settings.intra_threads);
        match settings.device {
            Device::Cpu => on(ExecutionProvider::Cpu),
            Device::Cuda => on(ExecutionProvider::Cuda),
            Device::Auto => on(ExecutionProvider::Cuda).or_else(|error| {
                log_cpu_fallback(&error);
                on(ExecutionProvider::Cpu)
            }),
        }
    }

    fn commit(
        &self,
        model: &Path,
        provider: ExecutionProvider,
        intra_threads: NonZeroUsize,
    ) -> Result<ModelSession, RuntimeError> {
        let session = self
            .builder(provider, intra_threads)?
            .commit_from_file(model)
            .map_err(|error| RuntimeError::Model { path: model.to_path_buf(), provider, source: error })?;
        Ok(ModelSession { session, provider })
    }

    /// A session builder on `provider` alone: a provider that cannot register is an error,
    /// never ort's silent fallback to CPU.
    fn builder(
        &self,
        provider: ExecutionProvider,
        intra_threads: NonZeroUsize,
    ) -> Result<SessionBuilder, RuntimeError> {
        let builder = Session::builder(&self.environment)
            .map_err(RuntimeError::SessionOptions)?
            .with_intra_threads(intra_threads.get())
            .map_err(|error| RuntimeError::SessionOptions(error.into()))?;
        match provider {
            ExecutionProvider::Cpu => Ok(builder),
            ExecutionProvider::Cuda => with_cuda(builder),
        }
    }
}

#[cfg(feature = "cuda")]
fn with_cuda(builder: SessionBuilder) -> Result<SessionBuilder, RuntimeError> {
    builder
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|error| RuntimeError::CudaUnavailable(error.into()))
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(_builder: SessionBuilder) -> Result<SessionBuilder, RuntimeError> {
    Err(RuntimeError::CudaNotCompiled)
}

fn log_cpu_fallback(error: &RuntimeError) {
    match error {
        RuntimeError::CudaNotCompiled => tracing::info!("device auto: built without CUDA support, using CPU"),
        _ => {
            let cause = std::error::Error::source(error).map(|cause| format!(" ({cause})")).unwrap_or_default();
            tracing::warn!("device auto: CUDA is not usable, using CPU: {error}{cause}");
        }
    }
}

/// The version string the library reports (`OrtApiBase::GetVersionString`), which ort does
/// not expose. ort has loaded `library` already: this opens a second handle to it.
fn library_version(library: &Path) -> Result<String, RuntimeError> {
    let load_error = |message: String| RuntimeError::LibraryLoad { path: library.to_path_buf(), message };
    // SAFETY: the library is already loaded in this process (by ort), so opening it again
    // runs no initialisers.
    let handle = unsafe { libloading::Library::new(library) }.map_err(|error| load_error(error.to_string()))?;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release
    // (onnxruntime_c_api.h), and ort has just called it on this library.
    let get_api_base = unsafe { handle.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase") }
        .map_err(|error| load_error(error.to_string()))?;
    // SAFETY: the API base is a static struct of the library, which stays loaded (ort holds
    // it for the life of the process); the version is a static NUL-terminated string.
    let version = unsafe {
        let api_base = get_api_base();
        if api_base.is_null() {
            return Err(load_error("OrtGetApiBase returned null".to_string()));
        }
        CStr::from_ptr(((*api_base).GetVersionString)())
    };
    Ok(version.to_string_lossy().into_owned())
}
