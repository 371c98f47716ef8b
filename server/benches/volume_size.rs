//! Cost against volume size: one vertebra's region of a phantom CT at the centre of volumes
//! of air of growing size, so that the models' work stays the same and all that grows with the
//! volume shows. Is the cost of a request linear in its voxels?
//!
//! ```sh
//! cargo bench -p fracmap-server --bench volume_size   # [-- --models DIR | --tiny] [--runs N --warmup N] [--sizes ZxYxX,...]
//! ```
//!
//! The region: L1 of phantom case [`PHANTOM_SEED`] (`synth::generate_case`, default
//! parameters), its body box plus the models' margin, cut to at most [`REGION_MAX_SIDE`]
//! voxels a side (and to the smallest volume asked) around the body's centre. Each volume
//! (default 64^3, 128^3, 128 x 256 x 256, 256^3 and 300 x 512 x 512, `[z, y, x]`) is air
//! (-1000 HU) with the region pasted at its centre, and each request examines that one
//! vertebra by its body box (cut to the region, shifted). Per size, after `--warmup` untimed
//! calls, `--runs` calls of each side in turn (as `segment_overhead` times them, with its
//! server and client):
//!
//! - in-process: [`pipeline::segment`](fracmap_server::pipeline::segment) on the CT as the
//!   server decodes it;
//! - e2e: one Segment call over gRPC on loopback, int16 CT in 4 MiB chunks, uint8 probability
//!   and mask back in 1 MiB chunks, all kept.
//!
//! The report gives, per size, median and min seconds, the stage medians, and the process's
//! peak resident memory (`VmHWM`, reset through `/proc/self/clear_refs` once the size's CT is
//! built, so that it is the size's own peak); then a least-squares fit `y = a + b * Mvoxels`
//! of each side's median, of each stage that reaches 5 ms and of the peak memory, with R^2
//! and each size's residual, so that "linear in voxels" is checked, not assumed. Prints
//! markdown tables and writes them to `target/bench/volume_size.md`.

mod common;

use anyhow::{Context, bail, ensure};
use common::{
    Case, LocalServer, Machine, Models, Options, PHANTOM_SEED, STAGES, Timing, busy_warning, check_masks_agree, fixed,
    in_process, report, setup_lines, stage_row, stage_table_head, time_in_turn, workspace_root,
};
use fracmap_core::Box3;
use fracmap_core::vertebra_crop::{AIR_HU, CropSpec};
use fracmap_server::pipeline::{ModelPair, SegmentOptions, Vertebra};
use fracmap_trainer::levels::Level;
use fracmap_trainer::synth::{PhantomParams, generate_case};
use ndarray::{Array3, s};

const USAGE: &str = "usage: cargo bench -p fracmap-server --bench volume_size [-- --models DIR | --tiny] \
                     [--runs N --warmup N] [--sizes ZxYxX,...]";
/// The volumes timed by default, `[z, y, x]`, smallest first.
const DEFAULT_SIZES: [[usize; 3]; 5] =
    [[64, 64, 64], [128, 128, 128], [128, 256, 256], [256, 256, 256], [300, 512, 512]];
/// The vertebra whose region every volume holds.
const VERTEBRA: &str = "L1";
/// The most voxels a side of the region: it must fit in the smallest default volume.
const REGION_MAX_SIDE: usize = 64;
/// Stages whose median stays under this at every size get no row in the fit table, s.
const NEGLIGIBLE_STAGE_S: f64 = 0.005;

/// One vertebra's part of the phantom CT.
struct Region {
    /// HU, `[z, y, x]`.
    hu: Array3<f32>,
    spacing: [f64; 3],
    /// The vertebra's body box within the region (cut to it).
    body_box: Box3,
    /// The region's shape before it was cut to `REGION_MAX_SIDE`.
    uncut: [usize; 3],
}

impl Region {
    /// [`VERTEBRA`] of the phantom case: its body box grown by the models' margin (`crop`'s),
    /// then cut to at most `max_side[a]` voxels along each axis around the body's centre.
    fn of_phantom(crop: &CropSpec, max_side: [usize; 3]) -> anyhow::Result<Self> {
        let phantom = generate_case(&PhantomParams::default(), PHANTOM_SEED).context("phantom case")?;
        let level: Level = VERTEBRA.parse().map_err(|e| anyhow::anyhow!("{VERTEBRA}: {e}"))?;
        let vertebra = phantom
            .vertebrae
            .iter()
            .find(|v| v.level == level)
            .with_context(|| format!("phantom case {PHANTOM_SEED} has no {VERTEBRA}"))?;
        let (ct, body) = (&phantom.ct, vertebra.body_box);
        let reach = body.expand(crop.margin_voxels(ct.spacing()), ct.shape())?;
        let [min, max] = [reach.min(), reach.max()];
        let side: [usize; 3] = std::array::from_fn(|a| max_side[a].min(max[a] - min[a]));
        let start: [usize; 3] = std::array::from_fn(|a| {
            let centre = (body.min()[a] + body.max()[a]) / 2;
            centre.saturating_sub(side[a] / 2).clamp(min[a], max[a] - side[a])
        });
        let end: [usize; 3] = std::array::from_fn(|a| start[a] + side[a]);
        let region = Box3::new(start, end)?;
        let inside = body.intersect(&region).context("the body's centre lies in its region")?;
        let local = |corner: [usize; 3]| std::array::from_fn(|a| corner[a] - start[a]);
        let [z, y, x] = region.ranges();
        Ok(Region {
            hu: ct.data().slice(s![z, y, x]).to_owned(),
            spacing: ct.spacing(),
            body_box: Box3::new(local(inside.min()), local(inside.max()))?,
            uncut: reach.shape(),
        })
    }

    /// A volume of air of `size` with the region at its centre, and the vertebra's body box
    /// there.
    fn in_air(&self, size: [usize; 3]) -> anyhow::Result<Case> {
        let shape = self.hu.shape();
        ensure!((0..3).all(|a| shape[a] <= size[a]), "region {shape:?} does not fit in {size:?}");
        let offset: [usize; 3] = std::array::from_fn(|a| (size[a] - shape[a]) / 2);
        let mut hu = Array3::from_elem(size, AIR_HU);
        hu.slice_mut(s![
            offset[0]..offset[0] + shape[0],
            offset[1]..offset[1] + shape[1],
            offset[2]..offset[2] + shape[2]
        ])
        .assign(&self.hu);
        let shifted = |corner: [usize; 3]| std::array::from_fn(|a| corner[a] + offset[a]);
        let body_box = Box3::new(shifted(self.body_box.min()), shifted(self.body_box.max()))?;
        let vertebrae = vec![Vertebra { label: Some(VERTEBRA.to_string()), body_box }];
        Case::new(format!("{} x {} x {}", size[0], size[1], size[2]), hu, self.spacing, vertebrae)
    }
}

/// `"64x64x64,300x512x512"`: volumes `[z, y, x]`.
fn parse_sizes(text: &str) -> anyhow::Result<Vec<[usize; 3]>> {
    text.split(',')
        .map(|size| {
            let sides: Vec<usize> = size
                .split('x')
                .map(|n| n.trim().parse())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--sizes {size}: expected ZxYxX"))?;
            match sides[..] {
                [z, y, x] if z > 0 && y > 0 && x > 0 => Ok([z, y, x]),
                _ => bail!("--sizes {size}: expected ZxYxX, three whole numbers > 0"),
            }
        })
        .collect()
}

/// One size's timings and memory.
struct Measured {
    case_name: String,
    shape: [usize; 3],
    int16_bytes: usize,
    in_process: Timing,
    e2e: Timing,
    /// Resident memory once the CT was built (the CT in float32 and int16 included), MB.
    rss_start_mb: Option<f64>,
    /// The largest resident memory while the size was timed, MB.
    peak_rss_mb: Option<f64>,
}

impl Measured {
    fn mvoxels(&self) -> f64 {
        self.shape.iter().product::<usize>() as f64 / 1e6
    }
}

/// Times both sides on `case`, the process's peak memory measured from here.
fn measure(
    options: &Options,
    case: &Case,
    pair: &ModelPair<'_>,
    server: &mut LocalServer,
    peak_resets: &mut bool,
) -> anyhow::Result<Measured> {
    *peak_resets &= reset_peak_rss();
    let rss_start_mb = status_mb("VmRSS");
    let [in_process_timing, e2e] = time_in_turn(
        options,
        [&mut || in_process(case, pair, &SegmentOptions::default()), &mut || server.segment(case)],
    )?;
    check_masks_agree(case, &in_process_timing, &e2e)?;
    Ok(Measured {
        case_name: case.name.clone(),
        shape: case.ct.shape(),
        int16_bytes: case.int16.len(),
        in_process: in_process_timing,
        e2e,
        rss_start_mb,
        peak_rss_mb: status_mb("VmHWM"),
    })
}

/// `y = a + b * x` by least squares.
struct LinearFit {
    a: f64,
    b: f64,
    /// 1 - residual sum of squares / total sum of squares; `None` when y does not vary.
    r2: Option<f64>,
    /// `y - (a + b * x)` at each point.
    residuals: Vec<f64>,
}

impl LinearFit {
    /// `None` with fewer than two distinct x.
    fn new(x: &[f64], y: &[f64]) -> Option<Self> {
        let n = x.len() as f64;
        let (mean_x, mean_y) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let sxx: f64 = x.iter().map(|x| (x - mean_x).powi(2)).sum();
        if sxx <= 0.0 {
            return None;
        }
        let sxy: f64 = x.iter().zip(y).map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
        let b = sxy / sxx;
        let a = mean_y - b * mean_x;
        let residuals: Vec<f64> = x.iter().zip(y).map(|(x, y)| y - (a + b * x)).collect();
        let total: f64 = y.iter().map(|y| (y - mean_y).powi(2)).sum();
        let r2 = (total > 0.0).then(|| 1.0 - residuals.iter().map(|r| r * r).sum::<f64>() / total);
        Some(LinearFit { a, b, r2, residuals })
    }

    /// A row of the fit table: `quantity`, a, b, R^2, then each residual, with its share of
    /// the measured value when `shares`; `digits` decimals.
    fn row(&self, quantity: &str, y: &[f64], digits: usize, shares: bool) -> String {
        let residuals: Vec<String> = self
            .residuals
            .iter()
            .zip(y)
            .map(|(r, y)| {
                if shares && *y != 0.0 {
                    format!("{r:+.digits$} ({:+.0} %)", 100.0 * r / y)
                } else {
                    format!("{r:+.digits$}")
                }
            })
            .collect();
        format!(
            "| {quantity} | {:.digits$} | {:.digits$} | {} | {} |\n",
            self.a,
            self.b,
            fixed(self.r2, 4),
            residuals.join(" | ")
        )
    }
}

/// Starts the process's peak resident memory (`VmHWM`) afresh; false where Linux refuses.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A memory figure of `/proc/self/status` (`VmRSS`, `VmHWM`), MB.
fn status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024.0 / 1e6)
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root()?;
    let mut sizes = DEFAULT_SIZES.to_vec();
    let options = Options::parse(root, USAGE, |flag, value| match flag {
        "--sizes" => {
            sizes = parse_sizes(&value()?)?;
            Ok(true)
        }
        _ => Ok(false),
    })?;
    sizes.sort_by_key(|size| size.iter().product::<usize>());
    let machine = Machine::now();
    let models = Models::load(root, &options, machine.cores)?;
    let (vae, unet) = models.vae_and_unet()?;
    let pair = ModelPair::new(vae, unet)?;

    let max_side: [usize; 3] =
        std::array::from_fn(|a| sizes.iter().map(|size| size[a]).fold(REGION_MAX_SIDE, usize::min));
    eprintln!("volume_size: cutting {VERTEBRA} of phantom case {PHANTOM_SEED}, at most {max_side:?} voxels");
    let region = Region::of_phantom(&CropSpec::from(pair.preprocessing()), max_side)?;

    eprintln!("volume_size: starting the server on loopback");
    let mut server = LocalServer::start(&models, unet)?;
    let service = server.service.clone();
    let mut peak_resets = true;
    let mut measured = Vec::new();
    for &size in &sizes {
        let case = region.in_air(size)?;
        eprintln!("volume_size: {}, in process and over gRPC in turn", case.name);
        measured.push(measure(&options, &case, &pair, &mut server, &mut peak_resets)?);
    }
    server.stop()?;

    let mut text = format!(
        "Cost against volume size: the same {VERTEBRA} region at the centre of air volumes, one vertebra a request; \
         `pipeline::segment` in process and Segment over gRPC on loopback, CPU; models {} ({} + {}, patch {:?}); \
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
    text += &format!(
        "- content: {VERTEBRA} of phantom case {PHANTOM_SEED}, body box + {} mm margin ({:?} voxels), cut to {:?} \
         voxels `[z, y, x]` at {:?} mm, body box {:?}..{:?} within it; the rest -1000 HU\n",
        pair.preprocessing().margin_mm,
        region.uncut,
        region.hu.shape(),
        region.spacing.map(|mm| (mm * 1000.0).round() / 1000.0),
        region.body_box.min(),
        region.body_box.max(),
    );
    text += &format!(
        "- peak RSS: the process's `VmHWM` while the size was timed ({}); RSS at start: `VmRSS` once its CT was built \
         (float32 and int16 copies held by the bench)\n",
        if peak_resets {
            "reset through /proc/self/clear_refs before each size"
        } else {
            "not resettable here: since start"
        },
    );

    text += "\n| CT [z, y, x] | Mvoxels | int16 MB | in-process median s | in-process min s | e2e median s | e2e min s \
             | e2e - in-process s (median) | RSS at start MB | peak RSS MB | draft-mask voxels \
             | other processes' cores, in-process / e2e |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for m in &measured {
        text += &format!(
            "| {} | {:.2} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} / {} |\n",
            m.case_name,
            m.mvoxels(),
            m.int16_bytes as f64 / 1e6,
            m.in_process.median,
            m.in_process.min,
            m.e2e.median,
            m.e2e.min,
            m.e2e.median - m.in_process.median,
            fixed(m.rss_start_mb, 0),
            fixed(m.peak_rss_mb, 0),
            m.in_process.mask_voxels[0],
            fixed(m.in_process.others_busy, 2),
            fixed(m.e2e.others_busy, 2),
        );
    }

    text += &format!(
        "\nStages, median s: `segment()`'s own timings in process; over gRPC the server's summary (receive: header \
         to last CT byte; server total: header to summary) and the client's receipt of the answer (summary to last \
         chunk)\n\n{}",
        stage_table_head("CT [z, y, x]"),
    );
    for m in &measured {
        for (side, timing) in [("in-process", &m.in_process), ("e2e", &m.e2e)] {
            text += &stage_row(&m.case_name, side, timing);
        }
    }

    let mvoxels: Vec<f64> = measured.iter().map(Measured::mvoxels).collect();
    text += &format!(
        "\nLeast-squares fit y = a + b * Mvoxels over the {} sizes (stages under {} ms at every size left out); \
         residual y - fit at each size, for the walls and the memory with its share of y\n\n\
         | y | a | b per Mvoxel | R^2 | {} |\n|---|---:|---:|---:|{}\n",
        measured.len(),
        NEGLIGIBLE_STAGE_S * 1000.0,
        measured.iter().map(|m| format!("residual {}", m.case_name)).collect::<Vec<_>>().join(" | "),
        "---:|".repeat(measured.len()),
    );
    let mut fit_row = |quantity: &str, y: Vec<f64>, digits: usize, shares: bool| {
        if let Some(fit) = LinearFit::new(&mvoxels, &y) {
            text += &fit.row(quantity, &y, digits, shares);
        }
    };
    let ms = |of: &dyn Fn(&Measured) -> f64| measured.iter().map(|m| of(m) * 1000.0).collect::<Vec<f64>>();
    fit_row("in-process wall median, ms", ms(&|m| m.in_process.median), 2, true);
    fit_row("e2e wall median, ms", ms(&|m| m.e2e.median), 2, true);
    // What `segment()` spends outside its stages: mostly the request's checks, a scan of every
    // voxel for NaN.
    let outside_stages = |m: &Measured| m.in_process.median - m.in_process.stages.iter().flatten().sum::<f64>();
    fit_row("in-process wall - stage medians, ms", ms(&outside_stages), 2, false);
    for (side, timing) in
        [("in-process", (|m: &Measured| &m.in_process) as fn(&Measured) -> &Timing), ("e2e", |m| &m.e2e)]
    {
        for stage in STAGES {
            let medians: Option<Vec<f64>> = measured.iter().map(|m| timing(m).stage(stage)).collect();
            if let Some(medians) = medians.filter(|medians| medians.iter().any(|&t| t >= NEGLIGIBLE_STAGE_S)) {
                fit_row(&format!("{side} {stage}, ms"), medians.iter().map(|t| t * 1000.0).collect(), 2, false);
            }
        }
    }
    if let Some(peaks) = measured.iter().map(|m| m.peak_rss_mb).collect::<Option<Vec<f64>>>() {
        fit_row("peak RSS, MB", peaks, 1, true);
    }

    if let Some(warning) = busy_warning(measured.iter().flat_map(|m| [&m.in_process, &m.e2e])) {
        text += &warning;
    }
    report(root, "volume_size", &text)
}
