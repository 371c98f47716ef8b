//! The case report, `fracmap segment --report` and `fracmap report`, on a case segmented by
//! a real server on loopback with the tiny untrained model pair: one self-contained page
//! whose table holds summary.json's numbers, and the errors of a folder that is not a case.

#[macro_use]
mod common;

use std::path::Path;

use common::{BODY_ARG, TestServer, fracmap, succeeded, write_phantom_ct};
use serde_json::Value;

/// Above the phantom's L1 (z up is superior), so the page lists it first.
const T12_ARG: &str = "T12=16:24,14:26,14:26";

/// Segments the phantom with `--report` into `dir/out`; the CT lies in a folder whose name
/// must not reach the page. Returns (CT path, output folder).
async fn segmented_case(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let server = TestServer::start(|_| {}).await;
    let patient_folder = dir.join("Doe^Jane-1234");
    std::fs::create_dir(&patient_folder).unwrap();
    let (ct_path, out) = (patient_folder.join("ct.nii.gz"), dir.join("out"));
    write_phantom_ct(&ct_path);
    let output = fracmap(args![
        "segment",
        ct_path.display(),
        "--box",
        BODY_ARG,
        "--box",
        T12_ARG,
        "--report",
        "--out",
        out.display(),
        "--server",
        server.url()
    ])
    .await;
    let stdout = succeeded(&output);
    assert!(stdout.contains("report.html"), "{stdout}");
    server.stop().await;
    (ct_path, out)
}

/// Every `src="..."` value in the page.
fn sources(html: &str) -> Vec<&str> {
    html.split("src=\"").skip(1).map(|rest| &rest[..rest.find('"').unwrap()]).collect()
}

/// Decodes a base64 `data:` URI's bytes.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("{:?} is not base64", c as char),
    };
    let mut bytes = Vec::new();
    for group in text.as_bytes().chunks(4) {
        let data: Vec<u8> = group.iter().filter(|&&c| c != b'=').map(|&c| value(c)).collect();
        let n = data.iter().enumerate().fold(0u32, |n, (k, &v)| n | u32::from(v) << (18 - 6 * k));
        bytes.extend((0..data.len() - 1).map(|k| (n >> (16 - 8 * k)) as u8));
    }
    bytes
}

/// Width and height from the IHDR of a PNG whose pixels decode.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "IHDR first");
    let size =
        (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), size);
    size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_report_is_one_page_with_the_summarys_numbers_and_inline_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = segmented_case(dir.path()).await;
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let summary: Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();

    assert!(html.contains("<title>Fracture report: ct.nii.gz</title>"), "the CT by its file name");
    assert!(!html.contains("Doe^Jane"), "nothing of the CT's folder");
    assert!(!html.contains(&dir.path().display().to_string()), "no path");
    assert!(!html.contains("http:") && !html.contains("https:"), "nothing fetched");
    assert!(!html.contains("<script"));
    assert_eq!(html.matches("href=\"").count(), html.matches("href=\"#").count() + 1, "one link out");
    assert!(html.contains("<a href=\"scene.glb\">"));
    assert_eq!(&std::fs::read(out.join("scene.glb")).unwrap()[..4], b"glTF");

    let threshold = summary["threshold"].as_f64().unwrap();
    let scores: Vec<f64> =
        summary["vertebrae"].as_array().unwrap().iter().map(|v| v["fracture_score"].as_f64().unwrap()).collect();
    let flagged = scores.iter().filter(|&&s| s >= threshold).count();
    let pictured = if flagged > 0 { flagged } else { scores.len() };
    let pictures = sources(&html);
    assert_eq!(pictures.len(), 2 * pictured + 1, "planes and slices of each pictured vertebra, the 3D views");
    for uri in pictures {
        let base64 = uri.strip_prefix("data:image/png;base64,").unwrap_or_else(|| panic!("{uri:.60}"));
        let (width, height) = png_size(&decode_base64(base64));
        assert!(width > 0 && height > 0);
    }

    let model = &summary["model"];
    assert!(html.contains(&format!("{} version {}", model["name"].as_str().unwrap(), model["version"])));
    let rows: Vec<usize> = ["T12", "L1"]
        .iter()
        .map(|label| {
            let vertebra = summary["vertebrae"].as_array().unwrap().iter().find(|v| v["label"] == *label).unwrap();
            let number = |key: &str| vertebra[key].as_f64().unwrap();
            let cells = format!(
                "<td class=\"number\">{:.3}</td><td class=\"number\">{:.3}</td><td class=\"number\">{:.1}</td>",
                number("fracture_score"),
                number("confidence"),
                number("mask_volume_mm3")
            );
            html.find(&cells).unwrap_or_else(|| panic!("{label}: {cells} not in the page"))
        })
        .collect();
    assert!(rows[0] < rows[1], "T12 above L1, though L1 came first in the request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_rebuilds_from_the_folder_the_page_segment_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let (ct_path, out) = segmented_case(dir.path()).await;
    let written = std::fs::read(out.join("report.html")).unwrap();
    std::fs::remove_file(out.join("report.html")).unwrap();

    let output = fracmap(args!["report", out.display(), "--ct", ct_path.display()]).await;
    succeeded(&output);
    assert!(std::fs::read(out.join("report.html")).unwrap() == written, "the same page, byte for byte");
}

#[tokio::test]
async fn a_missing_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-case");
    let output = fracmap(args!["report", missing.display(), "--ct", "ct.nii.gz"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}: no such folder", missing.display())), "{stderr}");
}

#[tokio::test]
async fn a_folder_without_a_summary_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = fracmap(args!["report", dir.path().display(), "--ct", "ct.nii.gz"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}: cannot read", dir.path().join("summary.json").display())), "{stderr}");
    assert!(!dir.path().join("report.html").exists());
}
