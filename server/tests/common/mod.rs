//! What the integration tests share: the Python virtual environment of `scripts/setup.sh`
//! and the tiny ONNX model it makes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python of `.venv` (`FRACMAP_PYTHON`, set for cargo by `.cargo/config.toml`).
pub fn venv_python() -> PathBuf {
    let python = std::env::var_os("FRACMAP_PYTHON")
        .map(PathBuf::from)
        .expect("FRACMAP_PYTHON is not set (cargo sets it from .cargo/config.toml): run bash scripts/setup.sh");
    assert!(python.exists(), "{} does not exist: run bash scripts/setup.sh", python.display());
    python
}

/// Writes the tiny model of `scripts/py/make_tiny_onnx.py` to `model` with the venv's Python
/// and `onnx`: input "volume", output "probability", both float32 `[batch, 1, depth, height,
/// width]`, all but the channel axis dynamic.
pub fn write_tiny_model(model: &Path) {
    let python = venv_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/py/make_tiny_onnx.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(model)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run bash scripts/setup.sh", python.display()));
    assert!(
        output.status.success(),
        "{} failed; run bash scripts/setup.sh\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}
