//! `fracmap segment` against a real server on loopback, with the tiny untrained model pair:
//! the files it writes, the two ways it sends volumes, and how it fails.

#[macro_use]
mod common;

use std::path::Path;

use common::{BODY_ARG, CT_SHAPE, TestServer, fracmap, succeeded, write_phantom_ct, write_phantom_labels};
use fracmap_core::nifti_io::read_volume;
use serde_json::Value;

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_writes_volumes_on_the_ct_grid_heat_maps_and_a_summary() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (ct_path, out) = (dir.path().join("ct.nii.gz"), dir.path().join("out"));
    let ct = write_phantom_ct(&ct_path);

    let output = fracmap(args![
        "segment",
        ct_path.display(),
        "--box",
        BODY_ARG,
        "--out",
        out.display(),
        "--server",
        server.url()
    ])
    .await;
    let stdout = succeeded(&output);
    assert!(stdout.contains("L1"), "{stdout}");
    assert!(stdout.contains(&format!("to {}", out.display())), "{stdout}");

    for name in ["probability.nii.gz", "mask.nii.gz"] {
        let volume = read_volume(&out.join(name)).unwrap();
        assert_eq!(volume.shape(), CT_SHAPE, "{name}");
        assert_eq!(volume.affine(), ct.affine(), "{name}");
    }
    let probability = read_volume(&out.join("probability.nii.gz")).unwrap();
    assert!(probability.data().iter().all(|p| (0.0..=1.0).contains(p)));
    assert!(probability.data().iter().any(|&p| p > 0.0), "the vertebra's region has probabilities");
    let mask = read_volume(&out.join("mask.nii.gz")).unwrap();
    assert!(mask.data().iter().all(|&m| m == 0.0 || m == 1.0));
    for name in ["overlay_L1.png", "overlay_overview.png"] {
        assert!(out.join(name).is_file(), "{name}");
    }
    assert!(!out.join("error_map.nii.gz").exists(), "not asked for");

    let summary = summary(&out);
    let vertebrae = summary["vertebrae"].as_array().unwrap();
    assert_eq!(vertebrae.len(), 1);
    assert_eq!(vertebrae[0]["label"], "L1");
    assert_eq!(vertebrae[0]["body_box"]["min"], serde_json::json!([8, 14, 14]));
    assert_eq!(summary["model"]["name"], "unet");
    assert_eq!(summary["execution_provider"], "cpu");
    assert_eq!(summary["grid"]["shape"], serde_json::json!(CT_SHAPE));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_voxels_and_a_label_map_give_what_the_nifti_file_and_a_box_give() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (ct_path, labels_path) = (dir.path().join("ct.nii"), dir.path().join("labels.nii.gz"));
    write_phantom_ct(&ct_path);
    write_phantom_labels(&labels_path);
    let (by_box, by_labels) = (dir.path().join("box"), dir.path().join("labels"));

    let shared = args!["--server", server.url(), "--float32", "--chunk-bytes", 4096];
    let boxed = args!["segment", ct_path.display(), "--box", BODY_ARG, "--out", by_box.display()];
    succeeded(&fracmap([boxed, shared.clone()].concat()).await);
    let labelled = args![
        "segment",
        ct_path.display(),
        "--raw",
        "--vertebrae",
        labels_path.display(),
        "--error-map",
        "--out",
        by_labels.display()
    ];
    succeeded(&fracmap([labelled, shared].concat()).await);

    let probability = |out: &Path| read_volume(&out.join("probability.nii.gz")).unwrap();
    assert_eq!(probability(&by_box).data(), probability(&by_labels).data());
    assert_eq!(summary(&by_labels)["vertebrae"][0]["label"], "L1", "VerSe label 20");
    let error_map = read_volume(&by_labels.join("error_map.nii.gz")).unwrap();
    assert_eq!(error_map.shape(), CT_SHAPE);
    assert!(error_map.data().iter().all(|e| (0.0..=1.0).contains(e)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_the_servers_status_and_writes_nothing() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (ct_path, out) = (dir.path().join("ct.nii.gz"), dir.path().join("out"));
    write_phantom_ct(&ct_path);

    let output = fracmap(args![
        "segment",
        ct_path.display(),
        "--box",
        BODY_ARG,
        "--model",
        "no-such-model",
        "--out",
        out.display(),
        "--server",
        server.url()
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("fracmap: segment: NOT_FOUND: "), "{stderr}");
    assert!(stderr.contains("no-such-model"), "{stderr}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_box_names_the_flag_and_the_form_expected() {
    let output = fracmap(args!["segment", "ct.nii.gz", "--box", "3:4,1", "--out", "out"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--box"), "{stderr}");
    assert!(stderr.contains("expected z0:z1,y0:y1,x0:x1"), "{stderr}");
}

#[tokio::test]
async fn a_ct_that_is_not_there_is_named_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.nii.gz");
    // The connection comes first, then the files, before anything is sent.
    let server = TestServer::start(|_| {}).await;
    let output = fracmap(args![
        "segment",
        missing.display(),
        "--box",
        BODY_ARG,
        "--out",
        dir.path().join("out").display(),
        "--server",
        server.url()
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}: cannot read", missing.display())), "{stderr}");
    server.stop().await;
}
