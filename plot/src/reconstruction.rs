//! A pruned language model's reconstruction error per decoder layer: for every pruned Linear,
//! the relative error ‖WX − ŴX‖² / ‖WX‖² on the calibration inputs, one line per kind of Linear
//! (`q_proj`, `down_proj`, ...: whatever the architecture calls them). The error axis is
//! logarithmic when the errors span more than two decades, linear otherwise.

use std::ops::Range;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{draw_error, draw_legend, png_of, svg_of, FAMILY, PALETTE};
pub use crate::{PlotError, SIZE};

/// One kind of Linear's errors across the decoder layers.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSeries {
    /// The kind of Linear as the model names it (`q_proj`, `down_proj`, `c_fc`, ...).
    pub name: String,
    /// `(decoder layer, relative error)`, in any order. An error that is NaN, infinite or
    /// negative is no relative error and is left out.
    pub points: Vec<(u32, f64)>,
}

/// The plot as a PNG of [`SIZE`].
pub fn png(title: &str, series: &[LayerSeries]) -> Result<Vec<u8>, PlotError> {
    png_of(|root| draw(root, title, series))
}

/// The plot as an SVG document of [`SIZE`] (texts stay text: searchable, selectable).
pub fn svg(title: &str, series: &[LayerSeries]) -> Result<String, PlotError> {
    svg_of(|root| draw(root, title, series))
}

const X_DESC: &str = "decoder layer";
const Y_DESC: &str = "relative reconstruction error ‖WX − ŴX‖² / ‖WX‖²";
/// The legend entry of the line that zero errors are drawn on, on a logarithmic axis.
const ZERO_LABEL: &str = "error 0 (dashed line)";

/// Errors whose largest is more than this many times their smallest positive one get a
/// logarithmic axis: two decades.
const LOG_SPAN: f64 = 100.0;

/// The error axis.
#[derive(Debug, Clone, PartialEq)]
enum Scale {
    Linear(Range<f64>),
    /// A logarithmic axis over `range`. A log axis has no 0, so an error of 0 is clamped to
    /// `zero`: a line below the smallest positive error, inside the axis, drawn dashed and named
    /// in the legend. Falling back to a linear axis instead would flatten every error below a
    /// percent of the largest onto the zero line, and those are the layers worth comparing.
    Log {
        range: Range<f64>,
        zero: f64,
    },
}

impl Scale {
    /// The axis for these errors (all finite and non-negative).
    fn of(errors: &[f64]) -> Scale {
        let positive = errors.iter().copied().filter(|&e| e > 0.0);
        let (lo, hi) = positive.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), e| (lo.min(e), hi.max(e)));
        if hi / lo > LOG_SPAN {
            let (lo, hi) = (lo.log10(), hi.log10());
            let pad = (hi - lo) * 0.06;
            return Scale::Log { range: 10f64.powf(lo - 2.0 * pad)..10f64.powf(hi + pad), zero: 10f64.powf(lo - pad) };
        }
        let lo = errors.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = errors.iter().copied().fold(0.0, f64::max);
        if hi <= 0.0 {
            // No errors, or only zeros: an axis from 0 to 1, the zeros on its bottom line.
            return Scale::Linear(0.0..1.0);
        }
        let pad = ((hi - lo) * 0.1).max(hi * 0.05);
        Scale::Linear((lo - pad).max(0.0)..hi + pad)
    }

    /// Where a value lies on the axis, from 0 (bottom) to 1 (top).
    fn fraction(&self, error: f64) -> f64 {
        match self {
            Scale::Linear(r) => (error - r.start) / (r.end - r.start),
            Scale::Log { range, zero } => {
                let (lo, hi) = (range.start.log10(), range.end.log10());
                (error.max(*zero).log10() - lo) / (hi - lo)
            }
        }
    }
}

/// How an axis writes a tick's value.
type TickLabel = fn(&f64) -> String;

/// A log axis's tick label: decimals from 0.001 to 1000 (`0.01`, `0.25`), `1e-4` or `2.5e-5`
/// beyond.
fn log_label(v: &f64) -> String {
    let exponent = v.log10().floor() as i32;
    // One decimal of mantissa at most: 9.999 is 1 of the next decade.
    let mantissa = (v / 10f64.powi(exponent) * 10.0).round() / 10.0;
    let (mantissa, exponent) = if mantissa >= 10.0 { (1.0, exponent + 1) } else { (mantissa, exponent) };
    let whole = mantissa.fract() == 0.0;
    if (-3..=3).contains(&exponent) {
        let decimals = (-exponent).max(0) as usize + usize::from(!whole);
        format!("{:.decimals$}", mantissa * 10f64.powi(exponent))
    } else if whole {
        format!("{mantissa}e{exponent}")
    } else {
        format!("{mantissa:.1}e{exponent}")
    }
}

/// A layer axis's tick label: the layer index, nothing between layers.
fn layer_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{}", v.round())
    } else {
        String::new()
    }
}

/// The series as drawn: errors that are no relative error left out, layers ascending.
fn plottable(series: &[LayerSeries]) -> Vec<(&str, Vec<(f64, f64)>)> {
    series
        .iter()
        .map(|s| {
            let mut points: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|&&(_, e)| e.is_finite() && e >= 0.0)
                .map(|&(layer, e)| (f64::from(layer), e))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (s.name.as_str(), points)
        })
        .collect()
}

/// The plotting area's corner with the fewest points in it, for the legend, given each point's
/// place as fractions `(0..1, 0..1)` of the area from its bottom left.
fn emptiest_corner(points: impl Iterator<Item = (f64, f64)>) -> SeriesLabelPosition {
    // Roughly what the legend covers: a third of the width, up to half the height.
    type Inside = fn(f64, f64) -> bool;
    let corners: [(SeriesLabelPosition, Inside); 4] = [
        (SeriesLabelPosition::UpperRight, |x, y| x > 0.65 && y > 0.55),
        (SeriesLabelPosition::UpperLeft, |x, y| x < 0.35 && y > 0.55),
        (SeriesLabelPosition::LowerRight, |x, y| x > 0.65 && y < 0.45),
        (SeriesLabelPosition::LowerLeft, |x, y| x < 0.35 && y < 0.45),
    ];
    let mut counts = [0usize; 4];
    for (x, y) in points {
        for (count, (_, inside)) in counts.iter_mut().zip(&corners) {
            *count += usize::from(inside(x, y));
        }
    }
    // The first of the emptiest: upper right when there is a tie.
    let best = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    corners.into_iter().nth(best).map_or(SeriesLabelPosition::UpperRight, |(position, _)| position)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[LayerSeries],
) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(draw_error)?;
    let series = plottable(series);
    let all = || series.iter().flat_map(|(_, points)| points.iter().copied());
    let errors: Vec<f64> = all().map(|(_, e)| e).collect();
    let scale = Scale::of(&errors);
    let (first, last) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (x, _)| (lo.min(x), hi.max(x)));
    let (first, last) = if first <= last { (first, last) } else { (0.0, 0.0) };
    // Half a layer either side: every layer a tick, the first and last off the frame.
    let x_range = first - 0.5..last + 0.5;
    let legend = emptiest_corner(all().map(|(x, e)| ((x - x_range.start) / (last - first + 1.0), scale.fraction(e))));
    // Labels at every layer up to 32 layers; beyond, at every 2nd, 5th, 10th, ...
    let x_labels = ((last - first) as usize + 1).min(32);
    match scale {
        Scale::Linear(range) => draw_on(root, title, &series, (x_range, x_labels), (range, None), None, legend),
        Scale::Log { range, zero } => {
            let zeros = errors.contains(&0.0).then_some(zero);
            let y = (range.log_scale(), Some(log_label as TickLabel));
            draw_on(root, title, &series, (x_range, x_labels), y, zeros, legend)
        }
    }
}

/// The chart on either error axis, its tick labels as `y_labels` writes them (plotters' own when
/// `None`); `zero` is where a log axis draws errors of 0, when there are any.
fn draw_on<DB: DrawingBackend, Y>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    (x_range, x_labels): (Range<f64>, usize),
    (y, y_labels): (Y, Option<TickLabel>),
    zero: Option<f64>,
    legend: SeriesLabelPosition,
) -> Result<(), PlotError>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 26))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range.clone(), y)
        .map_err(draw_error)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(X_DESC)
        .y_desc(Y_DESC)
        .x_labels(x_labels)
        .x_label_formatter(&layer_label)
        .x_max_light_lines(0)
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 20))
        .light_line_style(RGBColor(235, 235, 235));
    if let Some(y_labels) = &y_labels {
        mesh.y_label_formatter(y_labels);
    }
    mesh.draw().map_err(draw_error)?;
    if let Some(zero) = zero {
        let grey = RGBColor(90, 90, 90);
        chart
            .draw_series(DashedLineSeries::new(
                [(x_range.start, zero), (x_range.end, zero)],
                8,
                6,
                grey.stroke_width(1),
            ))
            .map_err(draw_error)?
            .label(ZERO_LABEL)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1)));
    }
    let at = |e: f64| zero.map_or(e, |zero| e.max(zero));
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = points.iter().map(|&(x, e)| (x, at(e))).collect();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
            .map_err(draw_error)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        let filled = (i / PALETTE.len()).is_multiple_of(2);
        let style = if filled { colour.filled() } else { colour.stroke_width(2) };
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, style))).map_err(draw_error)?;
    }
    draw_legend(&mut chart, legend, 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(u32, f64)]) -> LayerSeries {
        LayerSeries { name: name.into(), points: points.to_vec() }
    }

    /// Seven kinds of Linear over 30 layers, errors from 1e-4 to 1 as after Wanda at 50%.
    fn llama() -> Vec<LayerSeries> {
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let points = (0..30u32)
                    .map(|layer| (layer, 1e-4 * 10f64.powf(4.0 * f64::from(layer) / 29.0) * (1.0 - 0.1 * k as f64)))
                    .collect::<Vec<_>>();
                series(name, &points)
            })
            .collect()
    }

    fn decode(bytes: Vec<u8>) -> ((u32, u32), Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        pixels.truncate(frame.buffer_size());
        ((frame.width, frame.height), pixels)
    }

    #[test]
    fn png_decodes_to_the_plot_size_with_a_colour_per_kind() {
        let series = llama();
        let (size, pixels) = decode(png("SmolLM2-135M, wanda 50%", &series).unwrap());
        assert_eq!(size, SIZE);
        for colour in &PALETTE[..series.len()] {
            let rgb = [colour.0, colour.1, colour.2];
            assert!(pixels.chunks(3).any(|px| px == rgb), "no pixel of {rgb:?}");
        }
    }

    #[test]
    fn svg_names_the_axes_and_every_kind_in_the_legend() {
        let svg = svg("SmolLM2-135M, wanda 50%", &llama()).unwrap();
        for text in ["SmolLM2-135M, wanda 50%", X_DESC, Y_DESC] {
            assert!(svg.contains(text), "no {text:?}");
        }
        for s in llama() {
            assert!(svg.contains(&format!("{}\n</text>", s.name)), "no legend entry {}", s.name);
        }
        // A log axis, labelled by decades; every layer labelled.
        for label in ["1e-4", "0.001", "0.01", "0.1", "1", "0", "29"] {
            assert!(svg.contains(&format!(">\n{label}\n</text>")), "no tick label {label:?}");
        }
        assert!(!svg.contains(ZERO_LABEL), "no error is 0");
    }

    #[test]
    fn two_decades_or_less_are_linear_more_are_logarithmic() {
        let Scale::Linear(r) = Scale::of(&[0.02, 0.05, 1.0]) else { panic!("50x is linear") };
        assert!(r.start >= 0.0 && r.start < 0.02 && r.end > 1.0, "{r:?}");
        let Scale::Log { range, zero } = Scale::of(&[1e-4, 0.3, 1.0]) else { panic!("1e4x is logarithmic") };
        assert!(range.start < zero && zero < 1e-4 && range.end > 1.0, "{range:?} {zero}");
        // Zeros decide nothing about the scale: they go below the smallest positive error.
        let Scale::Log { zero, .. } = Scale::of(&[0.0, 1e-4, 1.0]) else { panic!("zeros made it linear") };
        assert!(zero < 1e-4);
        let Scale::Linear(r) = Scale::of(&[0.0, 0.1, 0.2]) else { panic!("0.1 to 0.2 is linear") };
        assert_eq!(r.start, 0.0);
        assert!(r.end > 0.2);
    }

    #[test]
    fn equal_zero_and_no_errors_get_an_axis_of_their_own() {
        let Scale::Linear(r) = Scale::of(&[0.3, 0.3, 0.3]) else { panic!() };
        assert!(r.start < 0.3 && r.end > 0.3, "{r:?}");
        assert_eq!(Scale::of(&[0.0, 0.0]), Scale::Linear(0.0..1.0));
        assert_eq!(Scale::of(&[]), Scale::Linear(0.0..1.0));
    }

    #[test]
    fn errors_that_are_no_relative_error_are_left_out_and_layers_sorted() {
        let s = [series("q_proj", &[(2, 0.5), (0, f64::NAN), (1, 0.25), (3, f64::INFINITY), (4, -1.0)])];
        assert_eq!(plottable(&s), [("q_proj", vec![(1.0, 0.25), (2.0, 0.5)])]);
        let svg = svg("errors left out", &s).unwrap();
        assert!(!svg.to_lowercase().contains("nan\n</text>") && !svg.contains("inf\n</text>"));
    }

    #[test]
    fn edge_cases_still_draw() {
        let cases: [(&str, Vec<LayerSeries>); 6] = [
            ("no series", vec![]),
            ("no points", vec![series("q_proj", &[])]),
            ("one layer", vec![series("q_proj", &[(7, 0.1)]), series("k_proj", &[(7, 0.2)])]),
            ("all equal", vec![series("q_proj", &[(0, 0.3), (1, 0.3), (2, 0.3)])]),
            ("all zero", vec![series("q_proj", &[(0, 0.0), (1, 0.0)])]),
            ("only nan", vec![series("q_proj", &[(0, f64::NAN)])]),
        ];
        for (title, s) in cases {
            let (size, _) = decode(png(title, &s).unwrap_or_else(|e| panic!("{title}: {e}")));
            assert_eq!(size, SIZE);
            assert!(svg(title, &s).unwrap().contains(X_DESC), "{title}");
        }
        let one = svg("one layer", &[series("q_proj", &[(7, 0.1)])]).unwrap();
        assert!(one.contains(">\n7\n</text>"), "layer 7 is not labelled");
    }

    #[test]
    fn zeros_on_a_log_axis_are_drawn_on_a_named_line() {
        let s = [series("q_proj", &[(0, 0.0), (1, 1e-4), (2, 0.5)])];
        let svg = svg("zeros", &s).unwrap();
        assert!(svg.contains(&format!("{ZERO_LABEL}\n</text>")));
        let (_, pixels) = decode(png("zeros", &s).unwrap());
        assert!(pixels.chunks(3).any(|px| px == [90, 90, 90]), "no zero line");
    }

    #[test]
    fn log_labels_read_as_numbers() {
        assert_eq!(log_label(&1e-4), "1e-4");
        assert_eq!(log_label(&0.0010000000000000002), "0.001");
        assert_eq!(log_label(&0.01), "0.01");
        assert_eq!(log_label(&0.999_999_999_999), "1");
        assert_eq!(log_label(&100.0), "100");
        assert_eq!(log_label(&1e5), "1e5");
        assert_eq!(log_label(&3e-5), "3e-5");
        assert_eq!(log_label(&2.5e-5), "2.5e-5");
        assert_eq!(log_label(&0.25), "0.25");
        assert_eq!(log_label(&0.002), "0.002");
        assert_eq!(layer_label(&3.0), "3");
        assert_eq!(layer_label(&2.5), "");
    }

    #[test]
    fn the_legend_goes_where_the_points_are_not() {
        let upper_right = [(0.9, 0.9), (0.8, 0.7), (0.1, 0.1)];
        assert!(matches!(emptiest_corner(upper_right.into_iter()), SeriesLabelPosition::UpperLeft));
        assert!(matches!(emptiest_corner(std::iter::empty()), SeriesLabelPosition::UpperRight));
        let everywhere_but_lower_right = [(0.9, 0.9), (0.1, 0.9), (0.1, 0.1)];
        assert!(matches!(emptiest_corner(everywhere_but_lower_right.into_iter()), SeriesLabelPosition::LowerRight));
    }
}
