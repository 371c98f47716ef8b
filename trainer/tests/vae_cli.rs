//! `fracmap-train vae`, `eval-vae` and `export` end to end on a tiny phantom: the run
//! folder's files, an interrupted run resumed by a second call, a refused overwrite, the
//! evaluation's report, and the exported model's manifest.

use std::path::Path;
use std::process::{Command, Output};

fn train_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fracmap-train")).args(args).output().expect("fracmap-train runs")
}

fn ok(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// 16^3 crops of 4 mm: a few seconds of training.
fn tiny_config(dir: &Path, epochs: usize) -> String {
    let path = dir.join(format!("tiny_{epochs}.toml"));
    let text = format!(
        "[data]\nspacing_mm = [4.0, 4.0, 4.0]\n\
         [model]\ninput_shape = [16, 16, 16]\nbase_channels = 2\nlevels = 2\nlatent_dim = 8\nnorm_groups = 2\n\
         [loss]\nkl_warmup_epochs = 1\n\
         [train]\nepochs = {epochs}\nbatch_size = 4\nlr = 0.003\n"
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn metrics_rows(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.csv")).unwrap().lines().count() - 1
}

#[test]
fn train_resume_and_evaluate_a_tiny_vae() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("phantom");
    let data_arg = data.to_str().unwrap();
    #[rustfmt::skip]
    ok(train_cli(&["synth", "--out", data_arg, "--cases", "6", "--normal-only", "3", "--levels", "T12-L3", "--folds", "3", "--seed", "3"]));
    let manifest = data.join("manifest.json");
    let run = dir.path().join("run");
    let (manifest_arg, run_arg) = (manifest.to_str().unwrap(), run.to_str().unwrap());

    let two = tiny_config(dir.path(), 2);
    let stdout = ok(train_cli(&["vae", "--config", &two, "--data", manifest_arg, "--fold", "0", "--out", run_arg]));
    assert!(stdout.contains("2 epochs"), "{stdout}");
    for file in ["run.json", "config.toml", "metrics.csv", "loss.png", "last.json", "best.json"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    assert_eq!(metrics_rows(&run), 2);
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["split"]["test"], 0);
    assert_eq!(record["split"]["validation"], 1);

    // The same folder again without --resume is refused; with it, the run goes on to 3 epochs.
    let refused = train_cli(&["vae", "--config", &two, "--data", manifest_arg, "--out", run_arg]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    let three = tiny_config(dir.path(), 3);
    ok(train_cli(&["vae", "--config", &three, "--data", manifest_arg, "--out", run_arg, "--resume"]));
    assert_eq!(metrics_rows(&run), 3);

    let stdout = ok(train_cli(&["eval-vae", "--run", run_arg, "--sigma", "1", "--pictures", "2"]));
    assert!(stdout.contains("voxel ROC-AUC"), "{stdout}");
    let eval = run.join("eval");
    let report = std::fs::read_to_string(eval.join("report.md")).unwrap();
    assert!(report.contains("voxel PR-AUC"), "{report}");
    let table = std::fs::read_to_string(eval.join("vertebrae.csv")).unwrap();
    let vertebrae = table.lines().count() - 1;
    assert!(vertebrae > 0);
    let maps = std::fs::read_dir(eval.join("maps")).unwrap().count();
    assert_eq!(maps, vertebrae, "one error map per test vertebra");
    // An error map overlays its crop: same grid as the cached CT.
    let first = table.lines().nth(1).unwrap().split(',').next().unwrap();
    let map = fracmap_core::nifti_io::read_volume(&eval.join("maps").join(format!("{first}_error.nii.gz"))).unwrap();
    let crops = data.join("crops").join("crops_16x16x16_4x4x4mm_m6");
    let ct = fracmap_core::nifti_io::read_volume(&crops.join(first).join("ct.nii")).unwrap();
    assert_eq!(map.grid(), ct.grid());
    assert!(map.as_slice().iter().all(|e| e.is_finite() && *e >= 0.0));

    // Exported, the model's manifest carries the evaluation of the checkpoint it holds.
    let models = dir.path().join("models");
    ok(train_cli(&["export", "--run", run_arg, "--out", models.to_str().unwrap()]));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models.join("vae/1/manifest.json")).unwrap()).unwrap();
    assert!(manifest["evaluation"]["measures"]["voxel_roc_auc"].is_number(), "{manifest}");
    assert!(models.join("vae/1/model.onnx").is_file());
}

#[test]
fn a_bad_config_is_named_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[model]\ninput_shape = [16, 16, 12]\n").unwrap();
    let output = train_cli(&["vae", "--config", config.to_str().unwrap(), "--data", "nowhere.json", "--out", "x"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml") && stderr.contains("model.input_shape"), "{stderr}");
}
