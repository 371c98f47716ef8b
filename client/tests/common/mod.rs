#![allow(dead_code)] // Each test binary that includes this file uses part of it.

//! What the client's end-to-end tests share: a real server on loopback with the server
//! tests' tiny untrained VAE and U-Net, a small CT phantom, and the `fracmap` binary.

#[path = "../../../server/tests/common/tiny_pair.rs"]
pub mod tiny_pair;

use std::num::NonZeroUsize;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fracmap_core::nifti_io::{NiftiDtype, write_volume};
use fracmap_core::volume::Affine;
use fracmap_core::{Box3, Volume};
use fracmap_server::runtime::default_library_path;
use fracmap_server::{Device, ServerConfig, ServerError, serve};
use ndarray::Array3;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// `[z, y, x]`: 24 slices of 40 x 40 voxels, 2 mm each way.
pub const CT_SHAPE: [usize; 3] = [24, 40, 40];
pub const CT_SPACING: [f64; 3] = [2.0; 3];
/// The phantom's vertebral body, a bright box, and the `--box` that names it.
pub const BODY: ([usize; 3], [usize; 3]) = ([8, 14, 14], [16, 26, 26]);
pub const BODY_ARG: &str = "L1=8:16,14:26,14:26";

/// The spacing on the diagonal, with an origin, as a scanner writes an axial series.
pub fn ct_affine() -> Affine {
    [[2.0, 0.0, 0.0, -40.0], [0.0, 2.0, 0.0, -40.0], [0.0, 0.0, 2.0, 100.0], [0.0, 0.0, 0.0, 1.0]]
}

/// Soft tissue (40 HU) with a bright vertebral body (700 HU) at [`BODY`] and a little
/// structure, so that the crop is not flat.
pub fn phantom_ct() -> Volume {
    let body = Box3::new(BODY.0, BODY.1).unwrap();
    let data = Array3::from_shape_fn(CT_SHAPE, |(z, y, x)| {
        let texture = 30.0 * ((0.5 * z as f32).sin() + (0.3 * (x + y) as f32).cos());
        if body.contains([z, y, x]) { 700.0 + texture } else { 40.0 + texture }
    });
    Volume::new(data, CT_SPACING, ct_affine()).unwrap()
}

/// Writes the phantom CT (float32) to `path`.
pub fn write_phantom_ct(path: &Path) -> Volume {
    let ct = phantom_ct();
    write_volume(path, &ct, NiftiDtype::F32).unwrap();
    ct
}

/// Writes a VerSe label map on the phantom's grid to `path`: 20 (L1) in the body box.
pub fn write_phantom_labels(path: &Path) {
    let body = Box3::new(BODY.0, BODY.1).unwrap();
    let labels = Array3::from_shape_fn(CT_SHAPE, |(z, y, x)| if body.contains([z, y, x]) { 20.0 } else { 0.0 });
    write_volume(path, &Volume::new(labels, CT_SPACING, ct_affine()).unwrap(), NiftiDtype::U8).unwrap();
}

/// A server on 127.0.0.1 serving the tiny pair from a repository of its own.
pub struct TestServer {
    pub address: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    served: JoinHandle<Result<(), ServerError>>,
    _models: TempDir,
}

impl TestServer {
    /// Starts a server on CPU with one thread, its configuration changed by `edit`.
    pub async fn start(edit: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let models = tempfile::tempdir().unwrap();
        tiny_pair::write_repository(models.path(), |_, _| {});
        let mut config = ServerConfig {
            device: Device::Cpu,
            intra_threads: NonZeroUsize::MIN,
            models: Some(models.path().to_path_buf()),
            shutdown_grace: Duration::from_millis(200),
            ..ServerConfig::new(default_library_path())
        };
        edit(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(config, listener, async {
            let _ = stopped.await;
        }));
        TestServer { address, stop, served, _models: models }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.served.await.unwrap().unwrap();
    }
}

/// Runs `fracmap` with `args` on a blocking thread (the server runs on the test's runtime).
pub async fn fracmap(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_fracmap"))
            .args(args)
            .env_remove("FRACMAP_SERVER")
            .env_remove("FRACMAP_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Panics with stdout and stderr unless the command succeeded; returns stdout.
pub fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Arguments as owned strings (`path.display()` for a path).
macro_rules! args {
    ($($arg:expr),* $(,)?) => { vec![$(format!("{}", $arg)),*] };
}
