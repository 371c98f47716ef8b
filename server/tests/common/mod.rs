//! What the integration tests share: the Python virtual environment of `scripts/setup.sh`.

use std::path::PathBuf;

/// The Python of `.venv` (`FRACMAP_PYTHON`, set for cargo by `.cargo/config.toml`).
pub fn venv_python() -> PathBuf {
    let python = std::env::var_os("FRACMAP_PYTHON")
        .map(PathBuf::from)
        .expect("FRACMAP_PYTHON is not set (cargo sets it from .cargo/config.toml): run bash scripts/setup.sh");
    assert!(python.exists(), "{} does not exist: run bash scripts/setup.sh", python.display());
    python
}
