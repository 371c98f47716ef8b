//! Line charts as pictures: named series of `(x, y)` points drawn as joined, marked lines over
//! nice ticks (1-2-5 steps, or decades on a logarithmic y axis), with a title, axis labels and
//! a legend, on white. Made for training curves: loss per epoch (often log y), Dice per epoch.
//!
//! Drawn with the primitives of [`crate::picture`], text in its font (letters as capitals);
//! [`crate::picture::write_png`] saves one.

use std::ops::Range;

use crate::picture::{RgbImage, draw_rectangle, draw_text, fill_rectangle, text_size};

/// One named curve. Points are joined in the order given; a point with a non-finite
/// coordinate is not drawn and breaks the line, so a NaN loss shows as a gap.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChartOptions {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// A base-10 logarithmic y axis: every drawn y must be positive.
    pub log_y: bool,
    /// Picture size in pixels.
    pub width: usize,
    pub height: usize,
}

impl Default for ChartOptions {
    fn default() -> Self {
        ChartOptions {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            log_y: false,
            width: 800,
            height: 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChartError {
    #[error("no finite point to draw in {series} series")]
    NoData { series: usize },
    #[error("series \"{series}\": y = {y} at x = {x} cannot be drawn on a logarithmic y axis, which needs y > 0")]
    NonPositiveOnLogAxis { series: String, x: f64, y: f64 },
    #[error(
        "a {width}x{height} px chart leaves a {plot_width}x{plot_height} px plot after title, labels, ticks and \
         legend; a plot needs at least {min}x{min}",
        min = MIN_PLOT
    )]
    TooSmall { width: usize, height: usize, plot_width: usize, plot_height: usize },
}

/// Series colours by position (matplotlib's "tab10"): a series keeps its colour when one
/// before it is empty. An eleventh series repeats the first colour.
const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];
const BACKGROUND: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [40, 40, 40];
const FRAME: [u8; 3] = [110, 110, 110];
const GRID: [u8; 3] = [228, 228, 228];

/// Font scale of tick labels, axis labels and legend (glyphs 6 x 10 px), and of the title.
const SCALE: usize = 2;
const TITLE_SCALE: usize = 3;
/// Margin around the picture's edge, and the space between neighbouring parts of it.
const PAD: usize = 10;
const GAP: usize = 6;
const TICK_LENGTH: usize = 4;
/// Smallest plot area (px, each side) that still shows a curve.
const MIN_PLOT: usize = 40;
/// Length of the line drawn in front of a name in the legend.
const SWATCH: usize = 20;

/// The line chart of `series` (empty ones skipped) with the axes spanning all their points.
pub fn line_chart(series: &[Series], options: &ChartOptions) -> Result<RgbImage, ChartError> {
    let curves = curves(series, options.log_y)?;
    let layout = Layout::new(&curves, options)?;
    let mut image = RgbImage::filled(options.width, options.height, BACKGROUND);
    layout.draw_axes(&mut image, options);
    for curve in &curves {
        layout.draw_curve(&mut image, curve);
    }
    layout.draw_legend(&mut image, &curves);
    Ok(image)
}

/// A series ready to draw: its finite points cut into runs at the non-finite ones.
struct Curve<'a> {
    name: &'a str,
    colour: [u8; 3],
    runs: Vec<Vec<(f64, f64)>>,
    points: usize,
}

fn curves(series: &[Series], log_y: bool) -> Result<Vec<Curve<'_>>, ChartError> {
    let mut curves = Vec::new();
    for (index, one) in series.iter().enumerate() {
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for &(x, y) in &one.points {
            if !(x.is_finite() && y.is_finite()) {
                runs.push(Vec::new());
                continue;
            }
            if log_y && y <= 0.0 {
                return Err(ChartError::NonPositiveOnLogAxis { series: one.name.clone(), x, y });
            }
            runs.last_mut().expect("runs start non-empty").push((x, y));
        }
        runs.retain(|run| !run.is_empty());
        let points = runs.iter().map(Vec::len).sum();
        if points > 0 {
            curves.push(Curve { name: &one.name, colour: PALETTE[index % PALETTE.len()], runs, points });
        }
    }
    if curves.is_empty() {
        return Err(ChartError::NoData { series: series.len() });
    }
    Ok(curves)
}

/// One axis's span in data units, padded so that no point sits on the frame.
struct Axis {
    low: f64,
    high: f64,
    log: bool,
}

impl Axis {
    /// Spans `values` with 4% of their range to spare on each side (measured in decades on a
    /// log axis); a single value gets 10% of itself (1 for 0), or half a decade, each side.
    fn spanning(values: impl Iterator<Item = f64>, log: bool) -> Self {
        let scale = |v: f64| if log { v.log10() } else { v };
        let (min, max) =
            values.map(scale).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let pad = if max > min {
            (max - min) * 0.04
        } else if log {
            0.5
        } else if min == 0.0 {
            1.0
        } else {
            min.abs() * 0.1
        };
        let unscale = |v: f64| if log { 10f64.powf(v) } else { v };
        Axis { low: unscale(min - pad), high: unscale(max + pad), log }
    }

    /// Where `value` lies along the axis, `0` at `low` and `1` at `high`.
    fn fraction(&self, value: f64) -> f64 {
        if self.log {
            (value / self.low).log10() / (self.high / self.low).log10()
        } else {
            (value - self.low) / (self.high - self.low)
        }
    }

    /// Ticks inside the axis, about `target` of them.
    fn ticks(&self, target: usize) -> Vec<Tick> {
        if self.log { log_ticks(self.low, self.high, target) } else { linear_ticks(self.low, self.high, target) }
    }
}

/// A tick value, `count * 10^exponent`, and its label.
#[derive(Debug, Clone, PartialEq)]
struct Tick {
    value: f64,
    label: String,
}

impl Tick {
    fn new(count: i64, exponent: i32) -> Self {
        // Dividing by an exact power of ten makes 3 * 0.2 the double nearest 0.6, not 0.6000000000000001.
        let value =
            if exponent >= 0 { count as f64 * 10f64.powi(exponent) } else { count as f64 / 10f64.powi(-exponent) };
        let label = if count == 0 {
            "0".to_string()
        } else if !(-3..=5).contains(&exponent) {
            format!("{value:e}")
        } else {
            format!("{value:.*}", (-exponent).max(0) as usize)
        };
        Tick { value, label }
    }
}

/// The multiples in `low..=high` of the 1-2-5 step (`1, 2, 5 * 10^k`) that gives about
/// `target` ticks.
fn linear_ticks(low: f64, high: f64, target: usize) -> Vec<Tick> {
    let rough = (high - low) / target.max(1) as f64;
    let exponent = rough.log10().floor() as i32;
    let (mantissa, exponent) = match rough / 10f64.powi(exponent) {
        r if r < 1.5 => (1, exponent),
        r if r < 3.0 => (2, exponent),
        r if r < 7.0 => (5, exponent),
        _ => (1, exponent + 1),
    };
    let step = Tick::new(mantissa, exponent).value;
    // The tolerance keeps an end that is a multiple up to rounding.
    let first = (low / step - 1e-9).ceil() as i64;
    let last = (high / step + 1e-9).floor() as i64;
    (first..=last).map(|k| Tick::new(k * mantissa, exponent)).collect()
}

/// Decades in `low..=high` (`0 < low < high`), every n-th one when there are more than
/// `target`; with 2 and 5 times each decade as well when the span is under two decades; and
/// [`linear_ticks`] when that gives fewer than two.
fn log_ticks(low: f64, high: f64, target: usize) -> Vec<Tick> {
    let (first, last) = (low.log10().floor() as i32, high.log10().ceil() as i32);
    let inside = |tick: &Tick| tick.value >= low * (1.0 - 1e-9) && tick.value <= high * (1.0 + 1e-9);
    let decades = (first..=last).filter(|&e| inside(&Tick::new(1, e))).count();
    let (mantissas, every): (&[i64], usize) =
        if high / low < 100.0 { (&[1, 2, 5], 1) } else { (&[1], decades.div_ceil(target.max(1)).max(1)) };
    let ticks: Vec<Tick> = (first..=last)
        .filter(|e| e.rem_euclid(every as i32) == 0)
        .flat_map(|e| mantissas.iter().map(move |&m| Tick::new(m, e)))
        .filter(inside)
        .collect();
    if ticks.len() < 2 { linear_ticks(low, high, target) } else { ticks }
}

/// Where everything goes, in pixels (half-open ranges), and the axes' spans and ticks.
struct Layout {
    plot_rows: Range<usize>,
    plot_cols: Range<usize>,
    /// The legend box; `None` when no drawn series has a name.
    legend: Option<(Range<usize>, Range<usize>)>,
    x: Axis,
    y: Axis,
    x_ticks: Vec<Tick>,
    y_ticks: Vec<Tick>,
}

impl Layout {
    fn new(curves: &[Curve<'_>], options: &ChartOptions) -> Result<Self, ChartError> {
        let points = || curves.iter().flat_map(|c| c.runs.iter().flatten());
        let x = Axis::spanning(points().map(|p| p.0), false);
        let y = Axis::spanning(points().map(|p| p.1), options.log_y);
        let label_height = text_size("0", SCALE).0;

        let mut top = PAD;
        if !options.title.is_empty() {
            top += text_size(&options.title, TITLE_SCALE).0 + 2 * GAP;
        }
        if !options.y_label.is_empty() {
            top += label_height + GAP;
        }
        let mut bottom = PAD + TICK_LENGTH + GAP + label_height;
        if !options.x_label.is_empty() {
            bottom += GAP + label_height;
        }
        let plot_height = options.height.saturating_sub(top + bottom);
        let y_ticks = y.ticks((plot_height / 50).clamp(2, 8));

        let left = PAD + widest(y_ticks.iter().map(|t| t.label.as_str())) + GAP + TICK_LENGTH;
        let names = widest(curves.iter().map(|c| c.name));
        let legend_width = if names == 0 { 0 } else { 3 * GAP + SWATCH + names + 2 };
        // Without a legend, room for the right half of the last x tick label.
        let right = if names == 0 { 3 * PAD } else { 2 * PAD + legend_width };
        let plot_width = options.width.saturating_sub(left + right);
        if plot_width < MIN_PLOT || plot_height < MIN_PLOT {
            return Err(ChartError::TooSmall { width: options.width, height: options.height, plot_width, plot_height });
        }

        // Fewer ticks until their labels leave a gap between them.
        let mut x_ticks = Vec::new();
        for target in (2..=(plot_width / 90).clamp(2, 10)).rev() {
            x_ticks = x.ticks(target);
            let label_width = widest(x_ticks.iter().map(|t| t.label.as_str()));
            if (label_width + 2 * GAP) * x_ticks.len() <= plot_width {
                break;
            }
        }

        let plot_cols = left..left + plot_width;
        let plot_rows = top..top + plot_height;
        let legend = (names > 0).then(|| {
            let rows = top..top + GAP + curves.len() * (label_height + GAP);
            (rows, plot_cols.end + PAD..plot_cols.end + PAD + legend_width)
        });
        Ok(Layout { plot_rows, plot_cols, legend, x, y, x_ticks, y_ticks })
    }

    /// The pixel (row, column) of a data point, fractional, anywhere in the frame's inside.
    fn pixel(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let (inside_rows, inside_cols) = self.inside();
        let col = inside_cols.start as f64 + self.x.fraction(x) * (inside_cols.len() - 1) as f64;
        let row = (inside_rows.end - 1) as f64 - self.y.fraction(y) * (inside_rows.len() - 1) as f64;
        (row, col)
    }

    /// The plot area without its frame: where curves are drawn.
    fn inside(&self) -> (Range<usize>, Range<usize>) {
        (self.plot_rows.start + 1..self.plot_rows.end - 1, self.plot_cols.start + 1..self.plot_cols.end - 1)
    }

    fn draw_axes(&self, image: &mut RgbImage, options: &ChartOptions) {
        let (rows, cols) = (self.plot_rows.clone(), self.plot_cols.clone());
        let (label_height, _) = text_size("0", SCALE);
        for tick in &self.y_ticks {
            let row = self.pixel((self.x.low, tick.value)).0.round() as usize;
            fill_rectangle(image, row..row + 1, cols.clone(), GRID);
            fill_rectangle(image, row..row + 1, cols.start - TICK_LENGTH..cols.start, FRAME);
            let width = text_size(&tick.label, SCALE).1;
            let left = cols.start - TICK_LENGTH - GAP / 2 - width;
            draw_text(image, row.saturating_sub(label_height / 2), left, &tick.label, SCALE, INK);
        }
        for tick in &self.x_ticks {
            let col = self.pixel((tick.value, self.y.low)).1.round() as usize;
            fill_rectangle(image, rows.clone(), col..col + 1, GRID);
            fill_rectangle(image, rows.end..rows.end + TICK_LENGTH, col..col + 1, FRAME);
            let width = text_size(&tick.label, SCALE).1;
            let left = (col.saturating_sub(width / 2)).min(image.width.saturating_sub(width));
            draw_text(image, rows.end + TICK_LENGTH + GAP / 2, left, &tick.label, SCALE, INK);
        }
        draw_rectangle(image, rows.clone(), cols.clone(), FRAME);

        let mut top = PAD;
        if !options.title.is_empty() {
            let width = text_size(&options.title, TITLE_SCALE).1;
            draw_text(image, top, image.width.saturating_sub(width) / 2, &options.title, TITLE_SCALE, INK);
            top += text_size(&options.title, TITLE_SCALE).0 + 2 * GAP;
        }
        if !options.y_label.is_empty() {
            draw_text(image, top, PAD, &options.y_label, SCALE, INK);
        }
        if !options.x_label.is_empty() {
            let width = text_size(&options.x_label, SCALE).1;
            let left = (cols.start + cols.len() / 2).saturating_sub(width / 2);
            draw_text(image, image.height - PAD - label_height, left, &options.x_label, SCALE, INK);
        }
    }

    fn draw_curve(&self, image: &mut RgbImage, curve: &Curve<'_>) {
        let (rows, cols) = self.inside();
        // Markers smaller when points crowd, so that the line between them still shows.
        let radius = if curve.points * 10 <= cols.len() { 3 } else { 2 };
        for run in &curve.runs {
            let pixels: Vec<(isize, isize)> = run
                .iter()
                .map(|&p| {
                    let (r, c) = self.pixel(p);
                    (r.round() as isize, c.round() as isize)
                })
                .collect();
            for pair in pixels.windows(2) {
                draw_line(image, (&rows, &cols), pair[0], pair[1], curve.colour);
            }
            for &centre in &pixels {
                draw_marker(image, (&rows, &cols), centre, radius, curve.colour);
            }
        }
    }

    fn draw_legend(&self, image: &mut RgbImage, curves: &[Curve<'_>]) {
        let Some((rows, cols)) = &self.legend else { return };
        fill_rectangle(image, rows.clone(), cols.clone(), BACKGROUND);
        draw_rectangle(image, rows.clone(), cols.clone(), FRAME);
        let label_height = text_size("0", SCALE).0;
        for (k, curve) in curves.iter().enumerate() {
            let top = rows.start + GAP + k * (label_height + GAP);
            let middle = (top + label_height / 2) as isize;
            let swatch = (cols.start + GAP) as isize..(cols.start + GAP + SWATCH) as isize;
            let clip = (rows, cols);
            draw_line(image, clip, (middle, swatch.start), (middle, swatch.end - 1), curve.colour);
            draw_marker(image, clip, (middle, (swatch.start + swatch.end) / 2), 3, curve.colour);
            draw_text(image, top, swatch.end as usize + GAP, curve.name, SCALE, INK);
        }
    }
}

/// The width in pixels of the widest of `texts` at [`SCALE`], 0 for none.
fn widest<'a>(texts: impl Iterator<Item = &'a str>) -> usize {
    texts.map(|t| text_size(t, SCALE).1).max().unwrap_or(0)
}

/// The pixel rows and columns (half-open) that a drawing stays inside.
type Clip<'a> = (&'a Range<usize>, &'a Range<usize>);

/// Sets one pixel when it lies inside `clip`.
fn plot(image: &mut RgbImage, (rows, cols): Clip<'_>, row: isize, col: isize, colour: [u8; 3]) {
    if row >= rows.start as isize && row < rows.end as isize && col >= cols.start as isize && col < cols.end as isize {
        image.set(row as usize, col as usize, colour);
    }
}

/// A line 2 px thick from `from` to `to` (row, column), by Bresenham's algorithm.
fn draw_line(image: &mut RgbImage, clip: Clip<'_>, from: (isize, isize), to: (isize, isize), colour: [u8; 3]) {
    let (mut row, mut col) = from;
    let (d_row, d_col) = ((to.0 - row).abs(), (to.1 - col).abs());
    let (step_row, step_col) = ((to.0 - row).signum(), (to.1 - col).signum());
    let mut error = d_col - d_row;
    loop {
        for (r, c) in [(row, col), (row + 1, col), (row, col + 1), (row + 1, col + 1)] {
            plot(image, clip, r, c, colour);
        }
        if (row, col) == to {
            return;
        }
        let twice = 2 * error;
        if twice > -d_row {
            error -= d_row;
            col += step_col;
        }
        if twice < d_col {
            error += d_col;
            row += step_row;
        }
    }
}

/// A filled disc of `radius` px around `centre` (row, column).
fn draw_marker(image: &mut RgbImage, clip: Clip<'_>, centre: (isize, isize), radius: isize, colour: [u8; 3]) {
    for dr in -radius..=radius {
        for dc in -radius..=radius {
            // r * (r + 1) rather than r * r: rounder discs at these few pixels.
            if dr * dr + dc * dc <= radius * (radius + 1) {
                plot(image, clip, centre.0 + dr, centre.1 + dc, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series { name: name.to_string(), points: points.to_vec() }
    }

    fn values(ticks: &[Tick]) -> Vec<f64> {
        ticks.iter().map(|t| t.value).collect()
    }

    fn labels(ticks: &[Tick]) -> Vec<&str> {
        ticks.iter().map(|t| t.label.as_str()).collect()
    }

    #[test]
    fn linear_ticks_are_multiples_of_a_1_2_5_step_inside_the_range() {
        // 0.857 / 5 = 0.17 rounds to a step of 0.2.
        let ticks = linear_ticks(0.013, 0.87, 5);
        assert_eq!(values(&ticks), [0.2, 0.4, 0.6, 0.8]);
        assert_eq!(labels(&ticks), ["0.2", "0.4", "0.6", "0.8"]);
        // 323 / 6 = 54 rounds to 50; ends that are multiples are kept.
        assert_eq!(labels(&linear_ticks(-11.0, 312.0, 6)), ["0", "50", "100", "150", "200", "250", "300"]);
        assert_eq!(labels(&linear_ticks(-0.3, 0.25, 5)), ["-0.3", "-0.2", "-0.1", "0", "0.1", "0.2"]);
    }

    #[test]
    fn log_ticks_are_decades_and_add_2_and_5_under_two_decades() {
        assert_eq!(values(&log_ticks(0.003, 0.9, 5)), [0.01, 0.1]);
        assert_eq!(labels(&log_ticks(0.15, 6.0, 5)), ["0.2", "0.5", "1", "2", "5"]);
        // Eight decades for about 4 ticks: every second decade, counted from 10^0.
        assert_eq!(labels(&log_ticks(2e-7, 50.0, 4)), ["1e-6", "1e-4", "0.01", "1"]);
        // No decade, 2 or 5 times one inside: the linear ticks.
        assert_eq!(labels(&log_ticks(0.31, 0.39, 5)), ["0.32", "0.34", "0.36", "0.38"]);
    }

    fn two_point_chart() -> (Vec<Series>, ChartOptions) {
        let series = vec![series("train", &[(0.0, 0.0), (10.0, 1.0)])];
        let options = ChartOptions { title: "loss".into(), x_label: "epoch".into(), ..ChartOptions::default() };
        (series, options)
    }

    #[test]
    fn a_point_is_drawn_in_its_series_colour_where_it_maps() {
        let (series, options) = two_point_chart();
        let image = line_chart(&series, &options).unwrap();
        let layout = Layout::new(&curves(&series, false).unwrap(), &options).unwrap();
        let (low, high) = (layout.pixel((0.0, 0.0)), layout.pixel((10.0, 1.0)));
        assert!(high.0 < low.0 && high.1 > low.1, "larger y is higher, larger x further right");
        for (row, col) in [low, high] {
            assert_eq!(image.get(row.round() as usize, col.round() as usize), PALETTE[0]);
        }
        let middle = layout.pixel((5.0, 0.5));
        assert_eq!(image.get(middle.0.round() as usize, middle.1.round() as usize), PALETTE[0], "the line joins them");
    }

    #[test]
    fn the_legend_shows_a_swatch_and_the_name_of_each_series() {
        let series = vec![series("train", &[(1.0, 0.5)]), series("val", &[(1.0, 0.7)])];
        let options = ChartOptions::default();
        let image = line_chart(&series, &options).unwrap();
        let layout = Layout::new(&curves(&series, false).unwrap(), &options).unwrap();
        let (rows, cols) = layout.legend.clone().expect("named series have a legend");
        assert!(cols.start >= layout.plot_cols.end, "the legend is beside the plot, not over it");
        let count = |colour: [u8; 3]| {
            rows.clone()
                .flat_map(|r| cols.clone().map(move |c| (r, c)))
                .filter(|&(r, c)| image.get(r, c) == colour)
                .count()
        };
        assert!(count(PALETTE[0]) > 0 && count(PALETTE[1]) > 0, "a swatch per series");
        // 'L' alone has 7 font pixels, each SCALE x SCALE.
        assert!(count(INK) >= 2 * 7 * SCALE * SCALE, "names are written");
    }

    #[test]
    fn one_point_and_equal_values_are_drawn_with_a_padded_range() {
        let one = line_chart(&[series("a", &[(3.0, 0.25)])], &ChartOptions::default()).unwrap();
        assert!(one.pixels.contains(&PALETTE[0]));
        let flat = [series("a", &[(1.0, 2.0), (2.0, 2.0), (3.0, 2.0)])];
        let log = ChartOptions { log_y: true, ..ChartOptions::default() };
        assert!(line_chart(&flat, &ChartOptions::default()).unwrap().pixels.contains(&PALETTE[0]));
        assert!(line_chart(&flat, &log).unwrap().pixels.contains(&PALETTE[0]));
    }

    #[test]
    fn empty_series_are_skipped_and_keep_the_colours_of_the_others() {
        let series = [series("train", &[]), series("val", &[(1.0, 1.0), (5.0, 2.0)]), series("dice", &[(4.0, 9.0)])];
        let image = line_chart(&series, &ChartOptions::default()).unwrap();
        assert!(!image.pixels.contains(&PALETTE[0]));
        assert!(image.pixels.contains(&PALETTE[1]) && image.pixels.contains(&PALETTE[2]));
    }

    #[test]
    fn nothing_to_draw_is_an_error() {
        let nan = [series("train", &[(1.0, f64::NAN)]), series("val", &[])];
        assert_eq!(line_chart(&nan, &ChartOptions::default()), Err(ChartError::NoData { series: 2 }));
        assert_eq!(line_chart(&[], &ChartOptions::default()), Err(ChartError::NoData { series: 0 }));
    }

    #[test]
    fn a_non_positive_value_on_a_log_axis_is_an_error_naming_it() {
        let series = [series("train", &[(1.0, 0.5)]), series("val", &[(1.0, 0.5), (2.0, 0.0)])];
        let error = line_chart(&series, &ChartOptions { log_y: true, ..ChartOptions::default() }).unwrap_err();
        assert_eq!(error, ChartError::NonPositiveOnLogAxis { series: "val".into(), x: 2.0, y: 0.0 });
        assert!(error.to_string().contains("\"val\": y = 0 at x = 2"), "{error}");
    }

    #[test]
    fn a_picture_too_small_for_a_plot_is_an_error() {
        let (series, options) = two_point_chart();
        let error = line_chart(&series, &ChartOptions { width: 90, height: 60, ..options }).unwrap_err();
        assert!(matches!(error, ChartError::TooSmall { width: 90, height: 60, .. }), "{error}");
    }

    #[test]
    fn a_chart_saves_as_a_png_of_its_size() {
        let epochs = 1..=120;
        let train = epochs.clone().map(|e| (f64::from(e), 0.8 * (-f64::from(e) / 15.0).exp() + 2e-3)).collect();
        let val = epochs.map(|e| (f64::from(e), 0.9 * (-f64::from(e) / 20.0).exp() + 8e-3)).collect();
        let series = [Series { name: "train".into(), points: train }, Series { name: "val".into(), points: val }];
        let options = ChartOptions {
            title: "VAE loss".into(),
            x_label: "epoch".into(),
            y_label: "loss (MSE)".into(),
            log_y: true,
            width: 640,
            height: 400,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        crate::picture::write_png(&path, &line_chart(&series, &options).unwrap()).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (640, 400));
    }
}
