//! `fracmap-train pseudo-label` end to end on a small phantom with a tiny exported VAE and
//! U-Net (the server tests' pair, run through the real ONNX Runtime): the files of each
//! unlabeled case on the CT's grid, the tables and the review list; a rerun after a kill in
//! the middle of a case redoes that case alone; a case that fails is recorded and the batch
//! goes on, and a rerun after the fix drafts it.

mod cli;

#[path = "../../server/tests/common/tiny_pair.rs"]
mod tiny_pair;

use std::path::{Path, PathBuf};
use std::process::Output;

use fracmap_core::nifti_io::read_volume;

use cli::{ok, train_cli};

/// Four cases (T12 to L2), the last two unlabeled; and the tiny models.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("phantom");
    #[rustfmt::skip]
    ok(train_cli(&["synth", "--out", data.to_str().unwrap(), "--cases", "4", "--normal-only", "1", "--unlabeled", "2", "--levels", "T12-L2", "--folds", "2", "--seed", "5"]));
    let models = dir.join("models");
    tiny_pair::write_repository(&models, |_, _| {});
    (data.join("manifest.json"), models)
}

fn batch(manifest: &Path, models: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["pseudo-label", "--models", models.to_str().unwrap(), "--data", manifest.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    train_cli(&args)
}

const UNLABELED: [&str; 2] = ["case002", "case003"];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn unlabeled_cases_are_drafted_on_their_grids_with_tables_and_a_review_list() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, models) = setup(dir.path());
    let out = dir.path().join("drafts");
    let (stdout, _) = ok(batch(&manifest, &models, &out, &["--probability", "--jobs", "2"]));
    assert!(stdout.contains("2 cases: 2 drafted now, 0 done before, 0 failed"), "{stdout}");

    let cases = out.join("cases");
    let drafted: Vec<String> =
        std::fs::read_dir(&cases).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(drafted.len(), 2, "the labeled cases are left alone: {drafted:?}");
    for case in UNLABELED {
        let ct = read_volume(&manifest.parent().unwrap().join(case).join("ct.nii.gz")).unwrap();
        let draft = read_volume(&cases.join(case).join("draft_mask.nii.gz")).unwrap();
        let probability = read_volume(&cases.join(case).join("probability.nii.gz")).unwrap();
        for volume in [&draft, &probability] {
            assert_eq!(volume.shape(), ct.shape(), "{case}");
            assert_eq!(volume.affine(), ct.affine(), "{case}");
        }
        assert!(draft.data().iter().all(|&v| v == 0.0 || v == 1.0), "{case}: a 0/1 mask");
        // The draft lies where the probability reaches the tiny U-Net's threshold (small
        // components and voxels outside fracture boxes are left out of it).
        assert!(
            draft.data().iter().zip(probability.data()).all(|(&d, &p)| d == 0.0 || p >= tiny_pair::MASK_THRESHOLD),
            "{case}: a draft voxel below the threshold"
        );
        let result: serde_json::Value = serde_json::from_str(&read(&cases.join(case).join("result.json"))).unwrap();
        assert_eq!(result["vertebrae"].as_array().unwrap().len(), 3, "{result}");
        assert_eq!(result["mask_voxels"].as_u64().unwrap() as f32, draft.data().sum(), "{case}");
        assert!(std::fs::read(cases.join(case).join("overlay.png")).unwrap().starts_with(b"\x89PNG"));
    }
    let table = read(&out.join("results.csv"));
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows[0], "case,vertebra,score,confidence,mask_voxels,mask_volume_mm3");
    assert_eq!(rows.len(), 1 + 2 * 3, "a row per case and vertebra: {table}");
    assert_eq!(read(&out.join("failed.csv")), "case,error\n");

    // The review list: both cases, least confident first.
    let review = read(&out.join("review.md"));
    let confidence = |case: &str| -> f64 {
        let result: serde_json::Value = serde_json::from_str(&read(&cases.join(case).join("result.json"))).unwrap();
        result["confidence"].as_f64().unwrap()
    };
    let (first, second) = (review.find("| case002 |").unwrap(), review.find("| case003 |").unwrap());
    assert_eq!(first < second, confidence("case002") <= confidence("case003"), "{review}");
}

#[test]
fn a_rerun_after_a_kill_redoes_the_unfinished_case_alone_and_a_failed_case_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, models) = setup(dir.path());
    let out = dir.path().join("drafts");
    ok(batch(&manifest, &models, &out, &[]));
    let cases = out.join("cases");
    let done = cases.join("case002").join("result.json");
    let done_before = (read(&done), std::fs::metadata(&done).unwrap().modified().unwrap());

    // Killed after case003's mask was written, before its result.json: it is not done.
    std::fs::remove_file(cases.join("case003").join("result.json")).unwrap();
    let tables_before = read(&out.join("results.csv"));
    let (stdout, stderr) = ok(batch(&manifest, &models, &out, &[]));
    assert!(stderr.contains("1 of 2 cases already drafted (skipped)"), "{stderr}");
    assert!(stdout.contains("2 cases: 1 drafted now, 1 done before, 0 failed"), "{stdout}");
    assert_eq!((read(&done), std::fs::metadata(&done).unwrap().modified().unwrap()), done_before, "case002 untouched");
    assert!(cases.join("case003").join("result.json").is_file());
    assert_eq!(read(&out.join("results.csv")), tables_before, "the same tables as an uninterrupted run");

    // A broken CT: the case fails with its error, the other is drafted, the exit says so.
    let ct = manifest.parent().unwrap().join("case003").join("ct.nii.gz");
    let good = std::fs::read(&ct).unwrap();
    std::fs::write(&ct, &good[..good.len() / 2]).unwrap();
    std::fs::remove_dir_all(&cases).unwrap();
    let failed = batch(&manifest, &models, &out, &[]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("1 cases failed (see failed.csv); rerun the same command"), "{stderr}");
    assert!(cases.join("case002").join("result.json").is_file(), "the batch went on");
    let failure: serde_json::Value = serde_json::from_str(&read(&cases.join("case003").join("failed.json"))).unwrap();
    assert!(failure["error"].as_str().unwrap().contains("ct.nii.gz"), "names the file: {failure}");
    assert!(read(&out.join("failed.csv")).contains("case003,"));
    assert!(read(&out.join("review.md")).contains("## Failed"));
    assert!(!cases.join("case003").join("result.json").exists());

    // Fixed, rerun: case003 is drafted and its failure record gone.
    std::fs::write(&ct, &good).unwrap();
    let (stdout, _) = ok(batch(&manifest, &models, &out, &[]));
    assert!(stdout.contains("1 drafted now, 1 done before, 0 failed"), "{stdout}");
    assert!(!cases.join("case003").join("failed.json").exists());
    assert_eq!(read(&out.join("failed.csv")), "case,error\n");
}

#[test]
fn a_unet_that_is_not_there_is_named_with_the_ones_that_are() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, models) = setup(dir.path());
    let output = batch(&manifest, &models, &dir.path().join("out"), &["--model", "unet_slice"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--model unet_slice: no U-Net of that name in the repository (U-Nets: unet)"), "{stderr}");
}

/// Writes `mask` as uint8 on `like`'s grid.
fn write_mask_like(path: &Path, mask: &ndarray::Array3<bool>, like: &fracmap_core::Volume) {
    fracmap_core::nifti_io::write_mask(path, mask, &like.grid()).unwrap();
}

#[test]
fn corrected_drafts_come_back_with_their_source_and_the_effort_of_each_correction() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, models) = setup(dir.path());
    let drafts = dir.path().join("drafts");
    ok(batch(&manifest, &models, &drafts, &[]));
    let labels = dir.path().join("corrected");
    std::fs::create_dir(&labels).unwrap();

    // The clinician's corrections: case002 gains a 3x4x5 block and loses its draft's first
    // voxels in C order (up to 7); case003 is the draft as it was.
    let mut expected = Vec::new();
    for case in UNLABELED {
        let draft = read_volume(&drafts.join("cases").join(case).join("draft_mask.nii.gz")).unwrap();
        let drafted = draft.data().mapv(|v| v != 0.0);
        let mut corrected = drafted.clone();
        if case == "case002" {
            corrected.slice_mut(ndarray::s![10..13, 40..44, 50..55]).fill(true);
            let mut removed = 0;
            for (index, voxel) in drafted.indexed_iter() {
                let outside_block =
                    !(10..13).contains(&index.0) || !(40..44).contains(&index.1) || !(50..55).contains(&index.2);
                if *voxel && outside_block && removed < 7 {
                    corrected[index] = false;
                    removed += 1;
                }
            }
        }
        let count = |m: &ndarray::Array3<bool>| m.iter().filter(|&&v| v).count() as f64;
        let both = ndarray::Zip::from(&drafted).and(&corrected).fold(0.0, |n, &d, &c| n + f64::from(u8::from(d && c)));
        let added = ndarray::Zip::from(&drafted).and(&corrected).fold(0, |n, &d, &c| n + usize::from(c && !d));
        let removed = ndarray::Zip::from(&drafted).and(&corrected).fold(0, |n, &d, &c| n + usize::from(d && !c));
        let dice = if count(&drafted) + count(&corrected) == 0.0 {
            1.0
        } else {
            2.0 * both / (count(&drafted) + count(&corrected))
        };
        expected.push(format!("{case},{},{added},{removed},{dice:.4}", count(&corrected)));
        write_mask_like(&labels.join(format!("{case}.nii.gz")), &corrected, &draft);
    }
    assert!(!expected[0].ends_with(",0,0,1.0000"), "case002 was changed: {expected:?}");

    // A mask on another grid is refused, naming the case, and nothing is written.
    let before = read(&manifest);
    let ct = read_volume(&manifest.parent().unwrap().join("case003").join("ct.nii.gz")).unwrap();
    let wrong = fracmap_core::Volume::new(ndarray::Array3::zeros([4, 4, 4]), ct.spacing(), *ct.affine()).unwrap();
    let wrong_dir = dir.path().join("wrong");
    std::fs::create_dir(&wrong_dir).unwrap();
    std::fs::copy(labels.join("case002.nii.gz"), wrong_dir.join("case002.nii.gz")).unwrap();
    write_mask_like(&wrong_dir.join("case003.nii.gz"), &ndarray::Array3::from_elem([4, 4, 4], false), &wrong);
    let refused =
        train_cli(&["import-labels", "--data", manifest.to_str().unwrap(), "--labels", wrong_dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("case case003:") && stderr.contains("has shape [z, y, x] = [4, 4, 4]"), "{stderr}");
    assert_eq!(read(&manifest), before, "the manifest is untouched");
    assert!(!manifest.parent().unwrap().join("labels").exists(), "no mask copied");

    let drafts_arg = drafts.to_str().unwrap();
    #[rustfmt::skip]
    let (stdout, _) = ok(train_cli(&["import-labels", "--data", manifest.to_str().unwrap(), "--labels", labels.to_str().unwrap(), "--drafts", drafts_arg]));
    assert!(stdout.contains("2 masks imported"), "{stdout}");
    let effort = read(&manifest.parent().unwrap().join("labels").join("effort.csv"));
    let rows: Vec<&str> = effort.lines().collect();
    assert_eq!(rows[1..3], [expected[0].as_str(), expected[1].as_str()], "{effort}");
    assert!(rows[2].ends_with(",0,0,1.0000"), "an unchanged draft costs nothing: {}", rows[2]);

    let data: serde_json::Value = serde_json::from_str(&read(&manifest)).unwrap();
    for case in data["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        if UNLABELED.contains(&id) {
            assert_eq!(case["fracture_mask"], format!("labels/{id}.nii.gz"));
            assert_eq!(case["mask_source"]["kind"], "corrected");
            assert!(case["mask_source"]["imported_at"].as_u64().unwrap() > 1_700_000_000);
            let copied = read_volume(&manifest.parent().unwrap().join("labels").join(format!("{id}.nii.gz"))).unwrap();
            let given = read_volume(&labels.join(format!("{id}.nii.gz"))).unwrap();
            assert!(copied.data() == given.data() && copied.affine() == given.affine(), "{id}");
        } else {
            assert!(case.get("mask_source").is_none(), "{id} untouched");
        }
    }
}
