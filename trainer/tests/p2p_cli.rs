//! `fracmap-train p2p` end to end on a tiny phantom: the run folder (curves, health, models,
//! test numbers at three scales, heat maps), a refused overwrite, a bad configuration named
//! by its field, and `fracmap-train export` of the generator into a model repository.

mod cli;

use std::path::{Path, PathBuf};

use cli::{ok, train_cli};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// 16^3 crops of 4 mm, 16 x 16 slices in sequences of 5, a tiny generator and discriminator,
/// one warm-up epoch and one adversarial one.
fn tiny_config(dir: &Path) -> String {
    let text = "[data]\nspacing_mm = [4.0, 4.0, 4.0]\n\
                [slices]\ndepth = 16\n\
                [generator]\nslice_shape = [16, 16]\ncontext = 5\nbase_channels = 2\nlevels = 2\nnorm_groups = 2\n\
                [discriminator]\nbase_channels = 4\nlayers = 1\n\
                [train]\nepochs = 2\nwarmup_epochs = 1\ndecay_epochs = 0\nbatch_size = 8\nlr = 0.003\n";
    write(dir, "p2p.toml", text)
}

/// A six-case phantom (T12 to L3) with three folds.
fn phantom(dir: &Path) -> PathBuf {
    let data = dir.join("phantom");
    #[rustfmt::skip]
    ok(train_cli(&["synth", "--out", data.to_str().unwrap(), "--cases", "6", "--normal-only", "1", "--levels", "T12-L3", "--folds", "3", "--seed", "5"]));
    data.join("manifest.json")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn a_p2p_run_trains_scores_at_three_scales_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = phantom(dir.path());
    let manifest = manifest.to_str().unwrap();
    let config = tiny_config(dir.path());
    let run = dir.path().join("p2p");
    let run_arg = run.to_str().unwrap();
    let args = ["p2p", "--config", &config, "--data", manifest, "--out", run_arg];
    let (stdout, stderr) = ok(train_cli(&args));
    assert!(stdout.contains("per vertebra Dice") && stdout.contains("per slice Dice"), "{stdout}");
    assert!(stderr.contains("(warm-up)") && stderr.contains("D "), "both phases report: {stderr}");
    for file in [
        "run.json",
        "config.toml",
        "metrics.csv",
        "losses.png",
        "health.json",
        "generator_best.bpk",
        "generator_last.bpk",
        "discriminator_last.bpk",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "a header and two epochs: {metrics}");
    let health = json(&run.join("health.json"));
    let verdict = health["verdict"].as_str().unwrap();
    assert!(["healthy", "collapsed", "discriminator_won"].contains(&verdict), "{health}");
    assert_eq!(verdict != "healthy", stderr.contains("WARNING: the GAN"), "an unhealthy run says so: {stderr}");

    let test = json(&run.join("test.json"));
    let threshold = test["threshold"].as_f64().unwrap();
    assert!(threshold > 0.0 && threshold < 1.0, "{test}");
    for dice in [&test["vertebrae"]["dice"], &test["slices"]["dice"], &test["volumes"]["dice"]] {
        assert!((0.0..=1.0).contains(&dice.as_f64().unwrap()), "{test}");
    }
    let record = json(&run.join("run.json"));
    assert_eq!(record["model"], "p2p_lstm");
    // The test cases with a mask are scored as whole volumes.
    assert!(test["volumes"]["volumes"].as_u64().unwrap() >= 1, "{test}");

    let output = train_cli(&args);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already holds a model"), "{stderr}");

    let models = dir.path().join("models");
    ok(train_cli(&["export", "--run", run_arg, "--out", models.to_str().unwrap()]));
    let exported = json(&models.join("p2p_lstm/1/manifest.json"));
    assert_eq!(exported["architecture"], "p2p_lstm");
    assert_eq!(exported["inputs"][0]["name"], "slices");
    assert_eq!(exported["preprocessing"]["patch"], serde_json::json!([16, 16, 16]));
    assert!((exported["mask_threshold"].as_f64().unwrap() - threshold).abs() < 1e-6, "{exported}");
    assert!(exported["evaluation"]["measures"]["slice_dice"].is_number(), "{exported}");
    assert!(models.join("p2p_lstm/1/model.onnx").is_file());
}

#[test]
fn a_bad_configuration_is_named_by_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "bad.toml", "[generator]\ncontext = 4\n");
    let output = train_cli(&["p2p", "--config", &config, "--data", "missing.json", "--out", "unused"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("generator.context") && stderr.contains("bad.toml"), "{stderr}");
}
