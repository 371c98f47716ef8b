//! What serving costs: one Segment request over real gRPC on loopback against the same models
//! run in this process by [`pipeline::segment`], on a phantom spine (T4..L5) and on the same
//! CT in the middle of a 512 x 512 x 600 int16 volume of air (a clinical scan's 300 MB).
//!
//! ```sh
//! cargo bench -p fracmap-server --bench segment_overhead   # [-- --models DIR | --tiny] [--runs N --warmup N]
//! ```
//! Prints markdown tables and writes them to `target/bench/segment_overhead.md`:
//!
//! - per input: `segment()` in process against the client's wall time from sending the
//!   header to the last answer chunk (int16 CT in 4 MiB chunks; uint8 probability and mask
//!   back in 1 MiB chunks), median and min seconds, their ratio and the difference;
//! - per stage: the medians of `segment()`'s own timings, of the server's summary timings
//!   and of the client's receipt of the answer (from its summary to its last chunk);
//! - batching: `segment()` with one crop per model run against eight.
//!
//! Models: the repository `models/` (`scripts/default-models.sh`), `--models DIR` (relative
//! to the workspace root), or `--tiny`, the untrained pair of the server's tests. The server
//! runs in this process with the settings it starts with (one worker, `max_batch` 8, one
//! intra-op thread per core); the client shares the machine with it. ONNX Runtime is the
//! library of `ORT_DYLIB_PATH` (set by `.cargo/config.toml`; relative paths are taken from
//! the workspace root). Defaults: 5 timed runs after 1 warm-up run; the compared sides run in
//! turn, so that other processes' load falls on both, and the report flags a busy machine.

mod common;

use std::num::NonZeroUsize;

use anyhow::{Context, bail};
use common::{
    Case, LocalServer, Machine, Models, Options, PHANTOM_SEED, Timing, busy_warning, check_masks_agree, fixed,
    in_process, report, setup_lines, stage_row, stage_table_head, time_in_turn, workspace_root,
};
use fracmap_core::Box3;
use fracmap_core::vertebra_crop::AIR_HU;
use fracmap_server::pipeline::{ModelPair, SegmentOptions, Vertebra};
use fracmap_trainer::synth::{PhantomParams, generate_case};
use ndarray::{Array3, s};

const USAGE: &str =
    "usage: cargo bench -p fracmap-server --bench segment_overhead [-- --models DIR | --tiny] [--runs N --warmup N]";
/// A clinical CT's grid, `[z, y, x]`.
const CLINICAL_SHAPE: [usize; 3] = [600, 512, 512];
/// The crops per model run the server uses, and one, to see whether batching pays.
const BATCHES: [usize; 2] = [1, 8];

/// The phantom spine of [`PHANTOM_SEED`], and the same CT in the middle of a clinical grid
/// of air with its boxes shifted.
fn cases() -> anyhow::Result<[Case; 2]> {
    let phantom = generate_case(&PhantomParams::default(), PHANTOM_SEED).context("phantom case")?;
    let spacing = phantom.ct.spacing();
    let shape = phantom.ct.shape();
    let vertebrae = |offset: [usize; 3]| -> anyhow::Result<Vec<Vertebra>> {
        phantom
            .vertebrae
            .iter()
            .map(|v| {
                let shifted = |corner: [usize; 3]| std::array::from_fn(|a| corner[a] + offset[a]);
                let body_box = Box3::new(shifted(v.body_box.min()), shifted(v.body_box.max()))?;
                Ok(Vertebra { label: Some(v.level.to_string()), body_box })
            })
            .collect()
    };
    if (0..3).any(|a| shape[a] > CLINICAL_SHAPE[a]) {
        bail!("phantom seed {PHANTOM_SEED}: CT {shape:?} does not fit in {CLINICAL_SHAPE:?}");
    }
    let offset: [usize; 3] = std::array::from_fn(|a| (CLINICAL_SHAPE[a] - shape[a]) / 2);
    let mut clinical = Array3::from_elem(CLINICAL_SHAPE, AIR_HU);
    clinical
        .slice_mut(s![
            offset[0]..offset[0] + shape[0],
            offset[1]..offset[1] + shape[1],
            offset[2]..offset[2] + shape[2]
        ])
        .assign(phantom.ct.data());
    Ok([
        Case::new("(1) phantom spine", phantom.ct.data().clone(), spacing, vertebrae([0; 3])?)?,
        Case::new("(2) same, in 512 x 512 x 600 air", clinical, spacing, vertebrae(offset)?)?,
    ])
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root()?;
    let options = Options::parse(root, USAGE, |_, _| Ok(false))?;
    let machine = Machine::now();
    let models = Models::load(root, &options, machine.cores)?;
    let (vae, unet) = models.vae_and_unet()?;
    let pair = ModelPair::new(vae, unet)?;

    eprintln!("segment_overhead: drawing phantom case {PHANTOM_SEED} and its clinical-size copy");
    let cases = cases()?;

    eprintln!("segment_overhead: starting the server on loopback");
    let mut server = LocalServer::start(&models, unet)?;
    let service = server.service.clone();

    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for case in &cases {
        eprintln!("segment_overhead: {}, in process and over gRPC in turn", case.name);
        let [in_process_timing, grpc_timing] = time_in_turn(
            &options,
            [&mut || in_process(case, &pair, &SegmentOptions::default()), &mut || server.segment(case)],
        )?;
        local.push(in_process_timing);
        remote.push(grpc_timing);
    }
    eprintln!("segment_overhead: {}, in process, max_batch {BATCHES:?} in turn", cases[0].name);
    let with_batch =
        |batch| SegmentOptions { max_batch: NonZeroUsize::new(batch).expect("not 0"), ..Default::default() };
    let [few, many] = BATCHES.map(with_batch);
    let batching: Vec<(usize, Timing)> = BATCHES
        .into_iter()
        .zip(time_in_turn(
            &options,
            [&mut || in_process(&cases[0], &pair, &few), &mut || in_process(&cases[0], &pair, &many)],
        )?)
        .collect();
    server.stop()?;

    for ((case, local), remote) in cases.iter().zip(&local).zip(&remote) {
        check_masks_agree(case, local, remote)?;
    }

    let mut text = format!(
        "Segment over gRPC on loopback against `pipeline::segment` in process, CPU; models {} ({} + {}, patch {:?}); \
         {} timed runs after {} warm-up\n\n",
        models.description,
        vae.manifest.name,
        unet.manifest.name,
        pair.preprocessing().patch,
        options.runs,
        options.warmup,
    );
    text += &machine.line();
    text += &setup_lines(&models, &service);
    text += "\n| input | CT [z, y, x] | int16 MB | vertebrae | in-process median s | in-process min s | e2e median s \
             | e2e min s | e2e / in-process (median) | overhead s (median) | other processes' cores, in-process / e2e |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for ((case, local), remote) in cases.iter().zip(&local).zip(&remote) {
        text += &format!(
            "| {} | {:?} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.3} | **{:.2}x** | {:.3} | {} / {} |\n",
            case.name,
            case.ct.shape(),
            case.int16.len() as f64 / 1e6,
            case.vertebrae.len(),
            local.median,
            local.min,
            remote.median,
            remote.min,
            remote.median / local.median,
            remote.median - local.median,
            fixed(local.others_busy, 2),
            fixed(remote.others_busy, 2),
        );
    }

    text += &format!(
        "\nStages, median s: `segment()`'s own timings in process; over gRPC the server's summary (receive: header \
         to last CT byte; server total: header to summary) and the client's receipt of the answer (summary to last \
         chunk)\n\n{}",
        stage_table_head("input"),
    );
    for ((case, local), remote) in cases.iter().zip(&local).zip(&remote) {
        for (side, timing) in [("in-process", local), ("e2e", remote)] {
            text += &stage_row(&case.name, side, timing);
        }
    }

    let crops = cases[0].vertebrae.len();
    text += &format!(
        "\nBatching crops: `segment()` in process on {}, {crops} crops, by crops per model run\n\n\
         | max_batch | model runs each | segment median s | segment min s | vae median s | unet median s \
         | model ms per crop (median) | other processes' cores |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        cases[0].name,
    );
    for (batch, timing) in &batching {
        let (vae_s, unet_s) = (timing.stage("vae").unwrap_or(0.0), timing.stage("unet").unwrap_or(0.0));
        text += &format!(
            "| {batch} | {} | {:.3} | {:.3} | {vae_s:.3} | {unet_s:.3} | {:.1} | {} |\n",
            crops.div_ceil(*batch),
            timing.median,
            timing.min,
            (vae_s + unet_s) * 1000.0 / crops as f64,
            fixed(timing.others_busy, 2),
        );
    }

    if let Some(warning) = busy_warning(local.iter().chain(&remote).chain(batching.iter().map(|(_, t)| t))) {
        text += &warning;
    }
    report(root, "segment_overhead", &text)
}
