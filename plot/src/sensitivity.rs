//! A sensitivity analysis's plot: validation accuracy (or loss, for a regression) against the
//! sparsity one tensor was pruned to, one line per tensor, with the dense model's value as a
//! dashed reference line.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{draw_error, draw_legend, padded, padded_percent, png_of, svg_of, FAMILY, PALETTE};
pub use crate::{PlotError, SIZE};

/// One tensor's measurements, levels ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub tensor: String,
    /// `(sparsity, value)`: sparsity as a fraction; the value a fraction (accuracy) or a loss.
    pub points: Vec<(f64, f64)>,
}

/// What the y axis shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    /// Validation accuracy, drawn in percent.
    Accuracy,
    /// Validation loss (models without class labels).
    Loss,
}

impl Measure {
    fn scale(self, v: f64) -> f64 {
        match self {
            Measure::Accuracy => v * 100.0,
            Measure::Loss => v,
        }
    }

    fn axis(self) -> &'static str {
        match self {
            Measure::Accuracy => "validation accuracy (%)",
            Measure::Loss => "validation loss",
        }
    }
}

/// The plot as a PNG of [`SIZE`]; `dense` is the unpruned model's value.
pub fn png(title: &str, measure: Measure, dense: Option<f64>, series: &[Series]) -> Result<Vec<u8>, PlotError> {
    png_of(|root| draw(root, title, measure, dense, series))
}

/// The plot as an SVG document of [`SIZE`].
pub fn svg(title: &str, measure: Measure, dense: Option<f64>, series: &[Series]) -> Result<String, PlotError> {
    svg_of(|root| draw(root, title, measure, dense, series))
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    measure: Measure,
    dense: Option<f64>,
    series: &[Series],
) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(draw_error)?;
    let values = series.iter().flat_map(|s| s.points.iter().map(|&(_, v)| measure.scale(v)));
    let values = values.chain(dense.map(|d| measure.scale(d)));
    let y_range = match measure {
        Measure::Accuracy => padded_percent(values),
        Measure::Loss => padded(values, 0.0..100.0),
    };
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 26))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..100.0, y_range)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("sparsity of the one pruned tensor (%)")
        .y_desc(measure.axis())
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 20))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(draw_error)?;
    if let Some(dense) = dense {
        let y = measure.scale(dense);
        let grey = RGBColor(90, 90, 90);
        chart
            .draw_series(DashedLineSeries::new([(0.0, y), (100.0, y)], 8, 6, grey.stroke_width(2)))
            .map_err(draw_error)?
            .label("dense model")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
    }
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = s.points.iter().map(|&(x, v)| (x * 100.0, measure.scale(v))).collect();
        let filled = (i / PALETTE.len()).is_multiple_of(2);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
            .map_err(draw_error)?
            .label(s.tensor.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        let style = if filled { colour.filled() } else { colour.stroke_width(2) };
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, style))).map_err(draw_error)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerLeft, 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Vec<Series> {
        vec![
            Series { tensor: "0.weight".into(), points: vec![(0.5, 0.97), (0.8, 0.95), (0.95, 0.6)] },
            Series { tensor: "2.weight".into(), points: vec![(0.5, 0.97), (0.8, 0.9), (0.95, 0.3)] },
        ]
    }

    #[test]
    fn png_decodes_to_the_plot_size_with_a_colour_per_tensor() {
        let bytes = png("digits: sensitivity", Measure::Accuracy, Some(0.97), &series()).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((frame.width, frame.height), SIZE);
        for colour in &PALETTE[..2] {
            let rgb = [colour.0, colour.1, colour.2];
            assert!(pixels.chunks(3).any(|px| px == rgb), "no pixel of {rgb:?}");
        }
    }

    #[test]
    fn svg_names_the_axes_and_every_tensor() {
        let text_of = svg("digits: sensitivity", Measure::Accuracy, Some(0.97), &series()).unwrap();
        for text in ["digits: sensitivity", "sparsity of the one pruned tensor (%)", "validation accuracy (%)"] {
            assert!(text_of.contains(text), "no {text:?}");
        }
        for name in ["0.weight", "2.weight", "dense model"] {
            assert!(text_of.contains(&format!("{name}\n</text>")), "no legend entry {name}");
        }
        let loss = svg("regression", Measure::Loss, None, &series()).unwrap();
        assert!(loss.contains("validation loss") && !loss.contains("dense model"));
    }

    #[test]
    fn many_tensors_and_none_still_draw() {
        let many: Vec<Series> =
            (0..25).map(|i| Series { tensor: format!("{i}.weight"), points: vec![(0.5, 0.9), (0.9, 0.5)] }).collect();
        assert!(png("many", Measure::Accuracy, Some(0.9), &many).is_ok());
        assert!(png("none", Measure::Accuracy, None, &[]).is_ok());
    }
}
