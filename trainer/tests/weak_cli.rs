//! `fracmap-train weak` and `fracmap-train experiment box-vs-slice` end to end on a tiny
//! phantom with a tiny VAE: the run folder's files and test numbers, a refused overwrite, a
//! refused VAE of other crops, and the experiment's report, heat maps and reuse of finished
//! stages.

mod cli;

use std::path::{Path, PathBuf};

use cli::{ok, train_cli};

/// 16^3 crops of 4 mm, as the tiny VAE's.
const DATA: &str = "[data]\nspacing_mm = [4.0, 4.0, 4.0]\n";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn vae_config(dir: &Path) -> String {
    let model = "[model]\ninput_shape = [16, 16, 16]\nbase_channels = 2\nlevels = 2\nlatent_dim = 8\nnorm_groups = 2\n";
    write(dir, "vae.toml", &format!("{DATA}{model}[train]\nepochs = 1\nbatch_size = 4\n"))
}

fn weak_config(dir: &Path, mode: &str, agg: &str, spacing: f64) -> String {
    let text = format!(
        "[data]\nspacing_mm = [{spacing:.1}, {spacing:.1}, {spacing:.1}]\n\
         [model]\ninput_shape = [16, 16, 16]\nbase_channels = 2\nlevels = 2\nnorm_groups = 2\n\
         [labels]\nmode = \"{mode}\"\nnormals_per_fracture = 1.0\n\
         [loss]\nagg = \"{agg}\"\nagg2 = \"{agg}\"\n\
         [train]\nepochs = 1\nbatch_size = 4\nlr = 0.003\n"
    );
    write(dir, &format!("weak_{mode}_{spacing}.toml"), &text)
}

/// A six-case phantom (T12 to L3) with three folds.
fn phantom(dir: &Path) -> PathBuf {
    let data = dir.join("phantom");
    #[rustfmt::skip]
    ok(train_cli(&["synth", "--out", data.to_str().unwrap(), "--cases", "6", "--normal-only", "1", "--levels", "T12-L3", "--folds", "3", "--seed", "5"]));
    data.join("manifest.json")
}

#[test]
fn a_weak_run_trains_scores_its_test_fold_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = phantom(dir.path());
    let manifest = manifest.to_str().unwrap();
    let vae = dir.path().join("vae");
    let vae_arg = vae.to_str().unwrap();
    ok(train_cli(&["vae", "--config", &vae_config(dir.path()), "--data", manifest, "--out", vae_arg]));

    let boxes = weak_config(dir.path(), "box", "mean", 4.0);
    let run = dir.path().join("weak");
    let run_arg = run.to_str().unwrap();
    let args = ["weak", "--config", &boxes, "--data", manifest, "--vae", vae_arg, "--out", run_arg];
    let (stdout, stderr) = ok(train_cli(&args));
    assert!(stdout.contains("test fold Dice"), "{stdout}");
    // The heat maps of the fractured test vertebrae, when the test fold has one with a mask.
    let drew = run.join("heatmaps.png").is_file();
    assert!(drew != stderr.contains("no fractured test vertebra with a true mask to draw"), "{stderr}");
    if drew {
        assert!(std::fs::read(run.join("heatmaps.png")).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));
    }
    for file in ["run.json", "config.toml", "vae.json", "metrics.csv", "model_best.bpk", "model_last.bpk", "drafts.csv"]
    {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let test: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("test.json")).unwrap()).unwrap();
    let dice = test["dice"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&dice), "{test}");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["model"], "unet");
    // Every test crop has a draft mask, on the crop's grid (which places it on the source CT).
    let table = std::fs::read_to_string(run.join("drafts.csv")).unwrap();
    let crops: Vec<&str> = table.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert!(!crops.is_empty());
    let draft = fracmap_core::nifti_io::read_volume(&run.join("drafts").join(format!("{}.nii.gz", crops[0]))).unwrap();
    let cache = Path::new(manifest).parent().unwrap().join("crops").join("crops_16x16x16_4x4x4mm_m6");
    let ct = fracmap_core::nifti_io::read_volume(&cache.join(crops[0]).join("ct.nii")).unwrap();
    assert_eq!(draft.grid(), ct.grid());
    assert!(draft.data().iter().all(|&v| v == 0.0 || v == 1.0));

    let refused = train_cli(&args);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already holds a model"));

    // Another test fold than the VAE's would test on vertebrae the VAE trained on.
    let out = dir.path().join("fold1");
    let refused = train_cli(&[
        "weak",
        "--config",
        &boxes,
        "--data",
        manifest,
        "--vae",
        vae_arg,
        "--fold",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("trained with test fold 0"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A U-Net on 2 mm crops cannot read the error maps of a VAE of 4 mm crops.
    let other = weak_config(dir.path(), "box", "mean", 2.0);
    let out = dir.path().join("other");
    let refused =
        train_cli(&["weak", "--config", &other, "--data", manifest, "--vae", vae_arg, "--out", out.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("other crops"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn the_box_vs_slice_experiment_reports_every_method_and_reuses_finished_stages() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = phantom(dir.path());
    let out = dir.path().join("experiment");
    let (vae, boxes, slices) = (
        vae_config(dir.path()),
        weak_config(dir.path(), "box", "mean", 4.0),
        weak_config(dir.path(), "slice", "max", 4.0),
    );
    #[rustfmt::skip]
    let args = ["experiment", "box-vs-slice", "--data", manifest.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--vae-config", &vae, "--box-config", &boxes, "--slice-config", &slices, "--folds", "0", "--pictures", "2"];
    ok(train_cli(&args));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    #[rustfmt::skip]
    let methods = ["A: slice labels", "B: box labels", "VAE error alone", "box filled", "B inside the box", "fully supervised"];
    for method in methods {
        assert!(report.contains(&format!("| {method} |")), "{method} missing from {report}");
    }
    assert!(report.contains("fraction of the fully supervised upper bound"), "{report}");
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results[0]["fold"], 0);
    assert_eq!(results[0]["methods"].as_array().unwrap().len(), 6);
    // The filled box is perfect where the box is the fracture's own: its recall is 1 wherever
    // the truth lies inside the boxes, as in the phantom.
    assert_eq!(results[0]["methods"][3]["recall"], 1.0);
    // B kept inside the boxes predicts nothing outside them.
    assert_eq!(results[0]["methods"][4]["outside_box_mm3"], 0.0);
    for run in ["vae", "slice", "box", "full"] {
        assert!(out.join("fold0").join(run).is_dir(), "{run} missing");
    }

    // Run again: every stage is reused, the numbers are the same.
    let (_, stderr) = ok(train_cli(&args));
    assert_eq!(stderr.matches("reused").count(), 4, "{stderr}");
    let again: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(again, results);
}
