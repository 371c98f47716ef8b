//! `fracmap segment` with a DICOM CT series against a real server on loopback: the phantom
//! written as a series by dicom-rs goes up file by file, comes back on the series' grid, and
//! goes out again as a DICOM SEG and Parametric Map referencing the series.

#[macro_use]
mod common;

use std::path::Path;

use common::{BODY_ARG, CT_SHAPE, TestServer, fracmap, phantom_ct, succeeded};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, open_file};
use fracmap_core::Volume;
use fracmap_core::nifti_io::{NiftiDtype, read_volume, write_volume};
use fracmap_dicom::ct_writer::{SeriesIdentity, write_ct_series};

/// The phantom CT in whole HU (what a DICOM series of integers holds).
fn whole_hu_phantom() -> Volume {
    let ct = phantom_ct();
    let rounded = ct.data().mapv(f32::round);
    ct.with_data(rounded).unwrap()
}

fn text(object: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    object.element(tag).unwrap().to_str().unwrap().trim_end_matches('\0').to_string()
}

fn first_item(object: &InMemDicomObject, tag: dicom_core::Tag) -> &InMemDicomObject {
    &object.element(tag).unwrap().items().unwrap()[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dicom_series_round_trips_to_a_seg_on_its_grid() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let series_dir = dir.path().join("series");
    std::fs::create_dir(&series_dir).unwrap();
    let ct = whole_hu_phantom();
    let identity = SeriesIdentity::phantom();
    let files = write_ct_series(&series_dir, &ct, &identity).unwrap();
    // A second, smaller series in the same folder: the larger is taken, with a note.
    let other = Volume::with_spacing(ndarray::Array3::zeros([3, 8, 8]), [1.0; 3]).unwrap();
    write_ct_series(&series_dir, &other, &SeriesIdentity { file_prefix: "scout".into(), ..SeriesIdentity::phantom() })
        .unwrap();
    let out = dir.path().join("out");

    let output = fracmap(args![
        "segment",
        series_dir.display(),
        "--box",
        BODY_ARG,
        "--out",
        out.display(),
        "--server",
        server.url()
    ])
    .await;
    let stdout = succeeded(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("fracture_seg.dcm (DICOM SEG)"), "{stdout}");
    assert!(stderr.contains("2 series in the input") && stderr.contains(&identity.series_instance_uid), "{stderr}");
    for shown in [&stdout, &stderr.to_string()] {
        assert!(!shown.contains(&identity.patient_id) && !shown.contains(&identity.patient_name), "{shown}");
    }

    // The NIfTI outputs sit on the series' grid, which is the phantom's.
    let probability = read_volume(&out.join("probability.nii.gz")).unwrap();
    let mask = read_volume(&out.join("mask.nii.gz")).unwrap();
    assert_eq!(probability.shape(), CT_SHAPE);
    for (ours, written) in probability.affine().iter().flatten().zip(ct.affine().iter().flatten()) {
        assert!((ours - written).abs() < 1e-5, "{:?} vs {:?}", probability.affine(), ct.affine());
    }
    assert!(mask.data().iter().any(|&m| m == 1.0), "the tiny model marks voxels at the default threshold");

    // The SEG: one frame a source slice, in z order, each referencing its source instance and
    // at its position; the mask the same as mask.nii.gz.
    let seg = open_file(out.join("fracture_seg.dcm")).unwrap();
    assert_eq!(text(&seg, tags::MODALITY), "SEG");
    assert_eq!(text(&seg, tags::NUMBER_OF_FRAMES), CT_SHAPE[0].to_string());
    assert_eq!(text(&seg, tags::FRAME_OF_REFERENCE_UID), identity.frame_of_reference_uid);
    assert_eq!(text(&seg, tags::STUDY_INSTANCE_UID), identity.study_instance_uid);
    assert_eq!(text(&seg, tags::PATIENT_ID), identity.patient_id);
    assert_eq!(
        text(first_item(&seg, tags::REFERENCED_SERIES_SEQUENCE), tags::SERIES_INSTANCE_UID),
        identity.series_instance_uid
    );
    let frames = seg.element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).unwrap().items().unwrap();
    for (z, frame) in frames.iter().enumerate() {
        let source = open_file(&files[z]).unwrap();
        let derivation = first_item(first_item(frame, tags::DERIVATION_IMAGE_SEQUENCE), tags::SOURCE_IMAGE_SEQUENCE);
        assert_eq!(text(derivation, tags::REFERENCED_SOP_INSTANCE_UID), text(&source, tags::SOP_INSTANCE_UID));
        let position = first_item(frame, tags::PLANE_POSITION_SEQUENCE).element(tags::IMAGE_POSITION_PATIENT).unwrap();
        let expected = source.element(tags::IMAGE_POSITION_PATIENT).unwrap().to_multi_float64().unwrap();
        assert_eq!(position.to_multi_float64().unwrap(), expected, "frame {z}");
    }
    let bits = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    for (index, &value) in mask.as_slice().iter().enumerate() {
        assert_eq!(bits[index / 8] >> (index % 8) & 1 == 1, value == 1.0, "mask voxel {index}");
    }
    // The Parametric Map holds the probabilities as they came.
    let map = open_file(out.join("probability_pm.dcm")).unwrap();
    let values = map.element(tags::FLOAT_PIXEL_DATA).unwrap().to_multi_float32().unwrap();
    assert!(values.as_slice() == probability.as_slice(), "the parametric map's values");

    // The server decoded the same volume as the client: the NIfTI of the same voxels gives the
    // same answer.
    let nifti = dir.path().join("ct.nii.gz");
    write_volume(&nifti, &read_phantom_back(&series_dir, &identity), NiftiDtype::F32).unwrap();
    let nifti_out = dir.path().join("nifti_out");
    succeeded(
        &fracmap(args![
            "segment",
            nifti.display(),
            "--box",
            BODY_ARG,
            "--out",
            nifti_out.display(),
            "--server",
            server.url()
        ])
        .await,
    );
    let from_nifti = read_volume(&nifti_out.join("probability.nii.gz")).unwrap();
    assert!(from_nifti.data() == probability.data(), "the DICOM and NIfTI requests answer alike");
    server.stop().await;
}

fn read_phantom_back(dir: &Path, identity: &SeriesIdentity) -> Volume {
    let sources = fracmap_dicom::discover(&[dir.to_path_buf()]).unwrap();
    let series = fracmap_dicom::read_series(sources, Some(&identity.series_instance_uid)).unwrap();
    assert_eq!(series.volume.data(), whole_hu_phantom().data());
    series.volume
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_series_is_refused_before_the_upload_naming_the_file() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let files = write_ct_series(dir.path(), &whole_hu_phantom(), &SeriesIdentity::phantom()).unwrap();
    let bytes = std::fs::read(&files[5]).unwrap();
    std::fs::write(&files[5], &bytes[..bytes.len() - 100]).unwrap();
    let output = fracmap(args![
        "segment",
        dir.path().display(),
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
    assert!(stderr.contains("slice0005.dcm"), "{stderr}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reads_a_series_sent_file_by_file_in_small_chunks() {
    // Chunks of 1 KiB: lengths and files split across chunks everywhere.
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let series_dir = dir.path().join("series");
    std::fs::create_dir(&series_dir).unwrap();
    write_ct_series(&series_dir, &whole_hu_phantom(), &SeriesIdentity::phantom()).unwrap();
    let (small, raw) = (dir.path().join("small"), dir.path().join("raw"));
    for (out, extra) in [(&small, vec!["--chunk-bytes", "1024"]), (&raw, vec!["--raw"])] {
        let mut arguments =
            args!["segment", series_dir.display(), "--box", BODY_ARG, "--out", out.display(), "--server", server.url()];
        arguments.extend(extra.into_iter().map(String::from));
        succeeded(&fracmap(arguments).await);
    }
    let small = read_volume(&small.join("probability.nii.gz")).unwrap();
    let raw = read_volume(&raw.join("probability.nii.gz")).unwrap();
    assert!(small.data() == raw.data(), "DICOM files and raw voxels answer alike");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_dicom_writes_a_series_that_reads_back_as_the_nifti_clipped_at_air() {
    let dir = tempfile::tempdir().unwrap();
    let nifti = dir.path().join("ct.nii.gz");
    // One voxel below the series' floor (-1024 HU), one with a fraction.
    let mut data = phantom_ct().data().clone();
    data[[0, 0, 0]] = -1100.0;
    data[[1, 2, 3]] = 40.4;
    let ct = phantom_ct().with_data(data).unwrap();
    write_volume(&nifti, &ct, NiftiDtype::F32).unwrap();
    let series = dir.path().join("series");

    let output = fracmap(args!["to-dicom", nifti.display(), "--out", series.display()]).await;
    let stdout = succeeded(&output);
    assert!(stdout.contains(&format!("wrote {} DICOM CT files (40 x 40 pixels)", CT_SHAPE[0])), "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 voxels below -1024 HU raised"), "{output:?}");

    let read =
        fracmap_dicom::read_series(fracmap_dicom::discover(std::slice::from_ref(&series)).unwrap(), None).unwrap();
    let expected = ct.data().mapv(|hu| hu.max(-1024.0).round());
    assert!(read.volume.data() == expected, "values: HU clipped at -1024 and rounded");
    for (ours, written) in read.volume.affine().iter().flatten().zip(ct.affine().iter().flatten()) {
        assert!((ours - written).abs() < 1e-9, "{:?} vs {:?}", read.volume.affine(), ct.affine());
    }

    // A second series into the same folder would mix two series: refused, naming the folder.
    let again = fracmap(args!["to-dicom", nifti.display(), "--out", series.display()]).await;
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains(&format!("--out {}: already holds .dcm files", series.display())), "{stderr}");
}
