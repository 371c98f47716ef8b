//! `loss.png` of a run folder: training and validation loss per epoch, drawn from
//! `metrics.csv` (so a resumed run's picture holds every epoch, not just its own).

use std::path::Path;

use anyhow::{Context, Result};
use fracmap_core::chart::{ChartOptions, Series, line_chart};
use fracmap_core::picture::write_png;

use super::train::METRICS_FILE;

pub const LOSS_CURVE_FILE: &str = "loss.png";

/// Redraws `<run_dir>/loss.png` from `<run_dir>/metrics.csv`.
pub fn write_loss_curve(run_dir: &Path) -> Result<()> {
    let metrics = run_dir.join(METRICS_FILE);
    let text = std::fs::read_to_string(&metrics).with_context(|| format!("{}: cannot read", metrics.display()))?;
    let series = loss_series(&text).with_context(|| format!("{}: not a metrics file", metrics.display()))?;
    let options = ChartOptions {
        title: "VAE loss = recon + beta * KL".to_string(),
        x_label: "epoch".to_string(),
        y_label: "loss".to_string(),
        log_y: true,
        width: 720,
        height: 420,
    };
    let image = line_chart(&series, &options)?;
    let path = run_dir.join(LOSS_CURVE_FILE);
    write_png(&path, &image).with_context(|| format!("{}: cannot write", path.display()))
}

/// The columns of `metrics.csv` worth a line: the training and validation loss.
fn loss_series(csv: &str) -> Result<Vec<Series>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().context("empty")?.split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("no column {name}"));
    let (epoch, train, val) = (column("epoch")?, column("train_loss")?, column("val_loss")?);
    let mut series = [("training", train), ("validation", val)]
        .map(|(name, _)| Series { name: name.to_string(), points: Vec::new() });
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let value = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        let Some(x) = value(epoch) else { continue };
        for (s, col) in series.iter_mut().zip([train, val]) {
            if let Some(y) = value(col) {
                s.points.push((x, y));
            }
        }
    }
    Ok(series.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_gaps_are_skipped() {
        let csv = "epoch,beta,train_loss,val_loss\n1,0,0.5,0.6\n2,0,0.4,\n3,0,0.3,0.35\n";
        let series = loss_series(csv).unwrap();
        assert_eq!(series[0].points, [(1.0, 0.5), (2.0, 0.4), (3.0, 0.3)]);
        assert_eq!(series[1].points, [(1.0, 0.6), (3.0, 0.35)]);
    }

    #[test]
    fn a_metrics_file_without_the_columns_is_named() {
        assert!(loss_series("epoch,loss\n1,2\n").unwrap_err().to_string().contains("train_loss"));
    }
}
