//! Running the `fracmap-train` binary, as the CLI tests share it.

use std::process::{Command, Output};

pub fn train_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fracmap-train")).args(args).output().expect("fracmap-train runs")
}

/// Stdout and stderr of a run that must have succeeded.
pub fn ok(output: Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "failed: {stderr}");
    (String::from_utf8(output.stdout).unwrap(), stderr)
}
