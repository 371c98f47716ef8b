//! What the cross-check tests share: running a reference script of `scripts/py/` with the
//! Python that `scripts/setup.sh` installs (`FRACMAP_PYTHON`, set for cargo by
//! `.cargo/config.toml`), failing with the setup hint when it cannot run.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const SETUP_HINT: &str = "run bash scripts/setup.sh (it installs the reference packages into .venv; cargo finds \
                              them through FRACMAP_PYTHON in .cargo/config.toml)";

/// `scripts/py/<name>`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/py").join(name)
}

/// Runs the venv's Python with `args` and returns what it printed; panics with the setup
/// hint when it cannot run or fails.
pub fn run_python<S: AsRef<OsStr>>(args: &[S]) -> String {
    let python =
        std::env::var_os("FRACMAP_PYTHON").unwrap_or_else(|| panic!("FRACMAP_PYTHON is not set: {SETUP_HINT}"));
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    let output = Command::new(&python)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {SETUP_HINT}", python.to_string_lossy()));
    assert!(
        output.status.success(),
        "python {shown:?} failed: {}\n{SETUP_HINT}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("python prints UTF-8")
}

/// Runs a reference script that prints one JSON object, and returns it.
pub fn run_json_script<S: AsRef<OsStr>>(name: &str, args: &[S]) -> serde_json::Value {
    let mut all: Vec<OsString> = vec![script(name).into()];
    all.extend(args.iter().map(|a| a.as_ref().to_os_string()));
    serde_json::from_str(&run_python(&all)).unwrap_or_else(|e| panic!("{name} did not print one JSON object: {e}"))
}
