//! Whole-volume inference: fracmap's [`pipeline::segment`](fracmap_server::pipeline::segment)
//! in process against the same pipeline written as a user would in Python
//! (`scripts/bench/pipeline_numpy.py`: onnxruntime, numpy, scipy.ndimage), with the same
//! models, on the same CT and vertebrae, on one machine.
//!
//! ```sh
//! cargo bench -p fracmap-server --bench whole_volume   # [-- --models DIR | --tiny] [--runs N --warmup N] [--shape ZxYxX ...]
//! ```
//!
//! Each CT is the phantom spine (T4..L5, 14 vertebrae) of case [`PHANTOM_SEED`] drawn on a grid
//! of the asked size, `[z, y, x]` (default 200 x 256 x 256 and the clinical 300 x 512 x 512):
//! 0.7 mm in plane, the slice spacing that fits the whole spine in the asked depth (1.9 and
//! 1.3 mm), padded with air to that depth. It is written as an int16 NIfTI with a JSON of body
//! boxes into a temporary folder; this process reads it back with core's reader and segments
//! it, the Python reads it with nibabel. Both time the pipeline alone on the CT in memory,
//! neither reading the files nor creating the sessions: `--warmup` untimed runs, then `--runs`
//! timed ones, each side measuring the cores other processes kept busy meanwhile. No fracture
//! boxes: the draft mask is drawn wherever the crops reach.
//!
//! Before the times count, the two probability maps must agree: max |P_fracmap - P_numpy| at
//! most [`TOLERANCE`] (they differ only by the order of float operations and interpolation
//! details: scipy computes positions in f64 as core does, without core's 2^-20 voxel snap), and
//! the report gives the Dice of the two draft masks.
//!
//! Prints markdown tables and writes them to `target/bench/whole_volume.md`. ONNX Runtime is
//! the library of `ORT_DYLIB_PATH` in this process and the `onnxruntime` wheel of
//! `FRACMAP_PYTHON` in Python (both set by `.cargo/config.toml`), one session per model with
//! one intra-op thread per core on each side.

// The benches share `common`; this one runs no server, so parts of it go unused here.
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use common::{
    Case, Machine, Models, Options, PHANTOM_SEED, STAGES, Timing, busy_warning, fixed, in_process, report,
    time_in_turn, workspace_root,
};
use fracmap_core::nifti_io::{NiftiDtype, read_volume, write_volume};
use fracmap_core::vertebra_crop::AIR_HU;
use fracmap_core::{Box3, Mask, Volume};
use fracmap_server::pipeline::{ModelPair, SegmentOptions, Segmentation, Vertebra, segment};
use fracmap_trainer::synth::{PhantomParams, generate_case};
use ndarray::{Array3, Zip, s};

const USAGE: &str = "usage: cargo bench -p fracmap-server --bench whole_volume [-- --models DIR | --tiny] \
                     [--runs N --warmup N] [--shape ZxYxX (repeatable)]";
const PYTHON_SCRIPT: &str = "scripts/bench/pipeline_numpy.py";
/// The CTs timed by default, `[z, y, x]`.
const DEFAULT_SHAPES: [[usize; 3]; 2] = [[200, 256, 256], [300, 512, 512]];
/// In-plane spacing of every phantom, mm: a 512 grid spans a clinical 358 mm field of view.
const IN_PLANE_MM: f64 = 0.7;
/// Slice spacing of the draw that measures the spine's length, mm.
const PROBE_SLICE_MM: f64 = 3.0;
/// The largest difference of the two probability maps that still counts as the same pipeline.
const TOLERANCE: f32 = 1e-3;
/// The pipeline's stages, those both sides report.
const PIPELINE_STAGES: [&str; 5] = ["crop", "vae", "unet", "paste", "mask"];

/// One CT on disk, and as this process read it back, with its vertebrae.
struct WrittenCase {
    case: Case,
    ct_path: PathBuf,
    boxes_path: PathBuf,
}

/// The phantom spine of [`PHANTOM_SEED`] on a grid of `shape` (module doc), written into `dir`.
fn write_case(shape: [usize; 3], dir: &Path) -> anyhow::Result<WrittenCase> {
    let [depth, height, width] = shape;
    ensure!(height == width, "shape {shape:?}: the phantom's slices are square");
    // The spine's length from a quick draw with thick slices, then the slice spacing (rounded
    // up to 0.1 mm) that fits it in the asked depth.
    let probe = PhantomParams { slice_spacing_mm: (PROBE_SLICE_MM, PROBE_SLICE_MM), ..PhantomParams::default() };
    let probe = generate_case(&probe, PHANTOM_SEED).context("phantom probe")?;
    let length_mm = probe.ct.shape()[0] as f64 * PROBE_SLICE_MM;
    let slice_mm = (length_mm / (depth.max(2) - 1) as f64 * 10.0).ceil() / 10.0;
    let params = PhantomParams {
        in_plane: width,
        in_plane_spacing_mm: (IN_PLANE_MM, IN_PLANE_MM),
        slice_spacing_mm: (slice_mm, slice_mm),
        ..PhantomParams::default()
    };
    let phantom = generate_case(&params, PHANTOM_SEED).with_context(|| format!("phantom for {shape:?}"))?;
    let drawn = phantom.ct.shape()[0];
    // Rows of the drawn CT that land in the asked depth: centred, padded with air (or cut, when
    // rounding drew one slice too many, dropping the vertebrae that no longer fit).
    let (from, to) = if drawn >= depth { ((drawn - depth) / 2, 0) } else { (0, (depth - drawn) / 2) };
    let rows = drawn.min(depth);
    let mut hu = Array3::from_elem(shape, AIR_HU);
    hu.slice_mut(s![to..to + rows, .., ..]).assign(&phantom.ct.data().slice(s![from..from + rows, .., ..]));
    let vertebrae: Vec<Vertebra> = phantom
        .vertebrae
        .iter()
        .filter(|v| v.body_box.min()[0] >= from && v.body_box.max()[0] <= from + rows)
        .map(|v| {
            let shift = |corner: [usize; 3]| [corner[0] - from + to, corner[1], corner[2]];
            Ok(Vertebra {
                label: Some(v.level.to_string()),
                body_box: Box3::new(shift(v.body_box.min()), shift(v.body_box.max()))?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(!vertebrae.is_empty(), "shape {shape:?}: no vertebra fits in {depth} slices of {slice_mm} mm");

    let ct_path = dir.join("ct.nii");
    let boxes_path = dir.join("boxes.json");
    write_volume(&ct_path, &Volume::with_spacing(hu, phantom.ct.spacing())?, NiftiDtype::I16)?;
    std::fs::write(&boxes_path, boxes_json(&vertebrae)).with_context(|| format!("{}", boxes_path.display()))?;
    // What the Python reads: the spacing as the header's float32, the voxels as int16.
    let read = read_volume(&ct_path)?;
    let case = Case::new(format!("{shape:?}"), read.data().clone(), read.spacing(), vertebrae)?;
    Ok(WrittenCase { case, ct_path, boxes_path })
}

/// The vertebrae as `pipeline_numpy.py` reads them; no fracture boxes.
fn boxes_json(vertebrae: &[Vertebra]) -> String {
    let entries: Vec<String> = vertebrae
        .iter()
        .map(|v| {
            format!(
                r#"{{"label": "{}", "body_box": {{"min": {:?}, "max": {:?}}}}}"#,
                v.label.as_deref().unwrap_or(""),
                v.body_box.min(),
                v.body_box.max()
            )
        })
        .collect();
    format!("{{\"vertebrae\": [\n  {}\n], \"fracture_boxes\": []}}\n", entries.join(",\n  "))
}

/// How the Python reference is run: `python script --models models --vae ... --unet ...`.
struct NumpyReference {
    python: PathBuf,
    script: PathBuf,
    models: PathBuf,
    /// The VAE's and the U-Net's folders in `models` ("vae/1").
    model_dirs: [PathBuf; 2],
    threads: usize,
}

/// What the Python reference answered.
struct NumpyRun {
    timing: Timing,
    probability: Array3<f32>,
    mask: Mask,
    /// Its onnxruntime's version.
    onnxruntime: String,
}

/// The Python reference on the same files, writing its maps into `dir`.
fn time_numpy(
    reference: &NumpyReference,
    written: &WrittenCase,
    options: &Options,
    dir: &Path,
) -> anyhow::Result<NumpyRun> {
    let NumpyReference { python, script, models, model_dirs: [vae, unet], threads } = reference;
    let (probability_path, mask_path) = (dir.join("probability.npy"), dir.join("mask.npy"));
    let mut command = Command::new(python);
    command.arg(script).arg("--models").arg(models).arg("--vae").arg(vae).arg("--unet").arg(unet);
    command.arg("--ct").arg(&written.ct_path).arg("--boxes").arg(&written.boxes_path);
    command.arg("--out").arg(&probability_path).arg("--mask-out").arg(&mask_path);
    command.args(["--runs", &options.runs.to_string(), "--warmup", &options.warmup.to_string()]);
    command.args(["--threads", &threads.to_string()]);
    let output = command.output().with_context(|| format!("running {}", python.display()))?;
    ensure!(
        output.status.success(),
        "{} {} failed ({}):\n{}",
        python.display(),
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer = stdout.lines().last().context("the Python printed nothing")?;
    let number = |key: &str| json_number(answer, key).with_context(|| format!("no {key:?} in {answer}"));
    let timing = Timing {
        median: number("median_s")?,
        min: number("min_s")?,
        stages: STAGES.map(|stage| PIPELINE_STAGES.contains(&stage).then(|| json_number(answer, stage)).flatten()),
        mask_voxels: vec![number("mask_voxels")? as u64],
        others_busy: json_number(answer, "others_busy"),
    };
    let onnxruntime = json_string(answer, "onnxruntime").unwrap_or_else(|| "?".into());
    let shape = written.case.ct.shape();
    let probability = read_npy(&probability_path, "<f4", shape)?;
    let probability = Array3::from_shape_vec(
        shape,
        probability.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    )?;
    let mask = Array3::from_shape_vec(shape, read_npy(&mask_path, "|u1", shape)?.iter().map(|&b| b != 0).collect())?;
    Ok(NumpyRun { timing, probability, mask, onnxruntime })
}

/// The number after `"key":` in the Python's one line of JSON (keys are unique in it).
fn json_number(json: &str, key: &str) -> Option<f64> {
    let after = &json[json.find(&format!("\"{key}\":"))? + key.len() + 3..];
    let end = after.find([',', '}']).unwrap_or(after.len());
    after[..end].trim().parse().ok()
}

/// The string after `"key":` in the Python's one line of JSON.
fn json_string(json: &str, key: &str) -> Option<String> {
    let after = json[json.find(&format!("\"{key}\":"))? + key.len() + 3..].trim_start().strip_prefix('"')?;
    Some(after[..after.find('"')?].to_string())
}

/// The data bytes of a C-order `.npy` of `descr` (`"<f4"`, `"|u1"`) and `shape`, checked.
fn read_npy(path: &Path, descr: &str, shape: [usize; 3]) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    ensure!(bytes.starts_with(b"\x93NUMPY") && bytes.len() > 10, "{}: not a .npy file", path.display());
    // Format 1.0 has a 2-byte header length, later formats 4 bytes; little-endian.
    let length_bytes = if bytes[6] == 1 { 2 } else { 4 };
    let header_start = 8 + length_bytes;
    let header_length = bytes[8..header_start].iter().rev().fold(0usize, |n, &b| n << 8 | usize::from(b));
    let data_start = header_start + header_length;
    let header = String::from_utf8_lossy(bytes.get(header_start..data_start).context("truncated header")?);
    let expected_shape = format!("({}, {}, {})", shape[0], shape[1], shape[2]);
    ensure!(
        header.contains(&format!("'descr': '{descr}'"))
            && header.contains("'fortran_order': False")
            && header.contains(&expected_shape),
        "{}: header {header:?}, expected {descr} in C order of shape {expected_shape}",
        path.display()
    );
    Ok(bytes[data_start..].to_vec())
}

/// How far the two pipelines' answers are apart.
struct Agreement {
    max_difference: f32,
    /// Voxels whose probabilities differ by more than [`TOLERANCE`].
    beyond_tolerance: usize,
    mask_voxels: [usize; 2],
    /// Of the two masks; 1 when both are empty.
    dice: f64,
}

fn agreement(fracmap: &Segmentation, numpy: &NumpyRun) -> Agreement {
    let (max_difference, beyond_tolerance) = Zip::from(fracmap.probability.data()).and(&numpy.probability).fold(
        (0.0f32, 0usize),
        |(max, beyond), &a, &b| {
            let d = (a - b).abs();
            (max.max(d), beyond + usize::from(d > TOLERANCE))
        },
    );
    let both = Zip::from(&fracmap.mask).and(&numpy.mask).fold(0usize, |n, &a, &b| n + usize::from(a && b));
    let mask_voxels = [fracmap.mask_voxels, numpy.mask.iter().filter(|&&m| m).count()];
    let sum = mask_voxels[0] + mask_voxels[1];
    let dice = if sum == 0 { 1.0 } else { 2.0 * both as f64 / sum as f64 };
    Agreement { max_difference, beyond_tolerance, mask_voxels, dice }
}

struct Row {
    shape: [usize; 3],
    spacing: [f64; 3],
    vertebrae: usize,
    /// Vertebrae whose crop was larger than the patch (pasted back with partial weights).
    oversize: usize,
    fracmap: Timing,
    numpy: Timing,
    agreement: Agreement,
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root()?;
    let mut shapes = Vec::new();
    let options = Options::parse(root, USAGE, |flag, value| {
        if flag != "--shape" {
            return Ok(false);
        }
        let text = value()?;
        let axes: Vec<usize> = text
            .split('x')
            .map(|n| n.parse().ok().filter(|&n| n > 0))
            .collect::<Option<_>>()
            .with_context(|| format!("--shape {text}: expected ZxYxX"))?;
        shapes.push(<[usize; 3]>::try_from(axes).map_err(|_| anyhow::anyhow!("--shape {text}: expected ZxYxX"))?);
        Ok(true)
    })?;
    if shapes.is_empty() {
        shapes = DEFAULT_SHAPES.to_vec();
    }
    let machine = Machine::now();
    let python = root.join(std::env::var_os("FRACMAP_PYTHON").context("FRACMAP_PYTHON is not set (run via cargo)")?);
    ensure!(python.exists(), "no Python at {}: run `bash scripts/setup.sh`", python.display());
    let models = Models::load(root, &options, machine.cores)?;
    let (vae, unet) = models.vae_and_unet()?;
    let pair = ModelPair::new(vae, unet)?;
    let in_repository = |dir: &Path| dir.strip_prefix(&models.repository).map(Path::to_path_buf);
    let reference = NumpyReference {
        python,
        script: root.join(PYTHON_SCRIPT),
        models: models.repository.clone(),
        model_dirs: [in_repository(&vae.dir)?, in_repository(&unet.dir)?],
        threads: machine.cores.get(),
    };

    let mut rows = Vec::new();
    let mut numpy_version = String::new();
    for shape in shapes {
        let dir = tempfile::tempdir()?;
        eprintln!("whole_volume: drawing the phantom on {shape:?}");
        let written = write_case(shape, dir.path())?;
        let case = &written.case;
        eprintln!("whole_volume: fracmap, {} vertebrae", case.vertebrae.len());
        let [fracmap] = time_in_turn(&options, [&mut || in_process(case, &pair, &SegmentOptions::default())])?;
        // Once more for its maps: the pipeline is deterministic.
        let segmentation = segment(&case.ct, &case.vertebrae, &[], &pair, &SegmentOptions::default())?;
        eprintln!("whole_volume: numpy");
        let numpy = time_numpy(&reference, &written, &options, dir.path())?;
        let agreement = agreement(&segmentation, &numpy);
        if agreement.max_difference > TOLERANCE {
            bail!(
                "{shape:?}: the pipelines disagree: max |P_fracmap - P_numpy| = {:.2e} ({} voxels beyond {TOLERANCE:e}); \
                 the Python port differs from the pipeline, its times do not compare",
                agreement.max_difference,
                agreement.beyond_tolerance
            );
        }
        numpy_version = numpy.onnxruntime;
        rows.push(Row {
            shape,
            spacing: case.ct.spacing(),
            vertebrae: case.vertebrae.len(),
            oversize: segmentation.vertebrae.iter().filter(|v| v.oversize).count(),
            fracmap,
            numpy: numpy.timing,
            agreement,
        });
    }

    let mut text = format!(
        "Whole-volume inference, CPU: `pipeline::segment` in process against `{PYTHON_SCRIPT}` (onnxruntime + numpy \
         + scipy.ndimage); models {} (patch {:?}); {} timed runs after {} warm-up each\n\n",
        models.description,
        pair.preprocessing().patch,
        options.runs,
        options.warmup,
    );
    text += &machine.line();
    text += &format!(
        "- ONNX Runtime {} here, onnxruntime {numpy_version} in Python: one session per model, {} intra-op threads; \
         crops in runs of 8; no fracture boxes, mask at the U-Net's threshold {}\n\n",
        models.runtime.version(),
        models.threads,
        pair.default_threshold(),
    );
    text += &results_table(&rows);
    text += &format!(
        "\nStages, median s\n\n| CT [z, y, x] | side | {} | wall |\n|---|---|{}---:|\n",
        PIPELINE_STAGES.join(" | "),
        "---:|".repeat(PIPELINE_STAGES.len())
    );
    for row in &rows {
        for (side, timing) in [("fracmap", &row.fracmap), ("numpy", &row.numpy)] {
            let stages: Vec<String> = PIPELINE_STAGES.iter().map(|&stage| fixed(timing.stage(stage), 3)).collect();
            text += &format!("| {:?} | {side} | {} | {:.3} |\n", row.shape, stages.join(" | "), timing.median);
        }
    }
    if let Some(warning) = busy_warning(rows.iter().flat_map(|row| [&row.fracmap, &row.numpy])) {
        text += &warning;
    }
    report(root, "whole_volume", &text)
}

/// Times, ratio and agreement, one row per CT.
fn results_table(rows: &[Row]) -> String {
    let mut text =
        "| CT [z, y, x] | spacing mm | vertebrae (oversize) | fracmap median s | fracmap min s | numpy median s \
                    | numpy min s | numpy / fracmap (median) | max abs dP | mask voxels fracmap / numpy | mask Dice \
                    | other processes' cores, fracmap / numpy |\n\
                    |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            .to_string();
    for row in rows {
        let a = &row.agreement;
        text += &format!(
            "| {:?} | {:?} | {} ({}) | {:.3} | {:.3} | {:.3} | {:.3} | **{:.2}x** | {:.1e} | {} / {} | {:.4} | {} / {} |\n",
            row.shape,
            row.spacing.map(|s| (s * 1000.0).round() / 1000.0),
            row.vertebrae,
            row.oversize,
            row.fracmap.median,
            row.fracmap.min,
            row.numpy.median,
            row.numpy.min,
            row.numpy.median / row.fracmap.median,
            a.max_difference,
            a.mask_voxels[0],
            a.mask_voxels[1],
            a.dice,
            fixed(row.fracmap.others_busy, 2),
            fixed(row.numpy.others_busy, 2),
        );
    }
    text
}
