//! `examples/python/segment.py` (grpcio, stubs generated from proto/ at run time) against a
//! real server on loopback: the Python client of the README works with this server.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::{BODY_ARG, CT_SHAPE, TestServer, fracmap, succeeded, write_phantom_ct};
use fracmap_core::nifti_io::read_volume;

/// The Python of `.venv` (`FRACMAP_PYTHON`, set for cargo by `.cargo/config.toml`).
fn venv_python() -> std::path::PathBuf {
    let python = std::env::var_os("FRACMAP_PYTHON").expect("FRACMAP_PYTHON is not set: run bash scripts/setup.sh");
    let python = std::path::PathBuf::from(python);
    assert!(python.exists(), "{} does not exist: run bash scripts/setup.sh", python.display());
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_segments_a_ct_and_writes_volumes_on_its_grid() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (ct_path, out) = (dir.path().join("ct.nii.gz"), dir.path().join("out"));
    let ct = write_phantom_ct(&ct_path);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/segment.py");
    let args = args![
        script.display(),
        ct_path.display(),
        "--box",
        BODY_ARG,
        "--out",
        out.display(),
        "--server",
        server.address
    ];

    let output =
        tokio::task::spawn_blocking(move || Command::new(venv_python()).args(args).output().unwrap()).await.unwrap();
    let stdout = succeeded(&output);
    assert!(stdout.contains("model unet v1"), "{stdout}");
    assert!(stdout.lines().any(|line| line.starts_with("L1 ")), "{stdout}");

    let probability = read_volume(&out.join("probability.nii.gz")).unwrap();
    let mask = read_volume(&out.join("mask.nii.gz")).unwrap();
    for volume in [&probability, &mask] {
        assert_eq!(volume.shape(), CT_SHAPE);
        assert_eq!(volume.affine(), ct.affine());
    }
    assert!(probability.data().iter().all(|p| (0.0..=1.0).contains(p)));
    assert!(probability.data().iter().any(|&p| p > 0.0));
    assert!(mask.data().iter().all(|&m| m == 0.0 || m == 1.0));

    // The same request from the Rust client: the same voxels in the same places (an axis
    // swapped or flipped on the way to nibabel would show here, not in the shape).
    let rust_out = dir.path().join("rust");
    let args = args!["segment", ct_path.display(), "--box", BODY_ARG, "--float32", "--out", rust_out.display()];
    succeeded(&fracmap([args, args!["--server", server.url()]].concat()).await);
    assert_eq!(read_volume(&rust_out.join("probability.nii.gz")).unwrap().data(), probability.data());
    assert_eq!(read_volume(&rust_out.join("mask.nii.gz")).unwrap().data(), mask.data());
    server.stop().await;
}
