//! The sweep's Pareto plot: validation accuracy against artifact size, one point per job,
//! each labelled with its sparsity, the Pareto front joined by a line.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{draw_error, draw_legend, padded, padded_percent, png_of, svg_of, FAMILY};
pub use crate::{PlotError, SIZE};

/// One finished job of a sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub sparsity: f64,
    pub artifact_bytes: u64,
    /// Validation accuracy as a fraction in `[0, 1]`.
    pub accuracy: f64,
}

/// Indices of the Pareto-optimal points, smallest artifact first: those for which no other
/// point is at most as large and at least as accurate while better in one of the two.
/// Identical points are all kept.
pub fn pareto_front(points: &[Point]) -> Vec<usize> {
    let dominates = |a: &Point, b: &Point| {
        a.artifact_bytes <= b.artifact_bytes
            && a.accuracy >= b.accuracy
            && (a.artifact_bytes < b.artifact_bytes || a.accuracy > b.accuracy)
    };
    let mut front: Vec<usize> =
        (0..points.len()).filter(|&i| !points.iter().any(|other| dominates(other, &points[i]))).collect();
    front.sort_by(|&a, &b| {
        points[a].artifact_bytes.cmp(&points[b].artifact_bytes).then(points[a].accuracy.total_cmp(&points[b].accuracy))
    });
    front
}

/// The plot as a PNG of [`SIZE`].
pub fn png(title: &str, points: &[Point]) -> Result<Vec<u8>, PlotError> {
    png_of(|root| draw(root, title, points))
}

/// The plot as an SVG document of [`SIZE`] (texts stay text: searchable, selectable).
pub fn svg(title: &str, points: &[Point]) -> Result<String, PlotError> {
    svg_of(|root| draw(root, title, points))
}

/// The text next to a point: its final sparsity, as the sweep was given it.
pub fn point_label(sparsity: f64) -> String {
    format!("s={sparsity}")
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, points: &[Point]) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(draw_error)?;
    let kb = |p: &Point| p.artifact_bytes as f64 / 1000.0;
    let percent = |p: &Point| p.accuracy * 100.0;
    let x_range = padded(points.iter().map(kb), 0.0..1.0);
    let y_range = padded_percent(points.iter().map(percent));
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 26))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, y_range)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("artifact size (kB)")
        .y_desc("validation accuracy (%)")
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 20))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(draw_error)?;

    let front_colour = RGBColor(214, 39, 40);
    let point_colour = RGBColor(31, 119, 180);
    let front: Vec<(f64, f64)> = pareto_front(points).iter().map(|&i| (kb(&points[i]), percent(&points[i]))).collect();
    chart
        .draw_series(LineSeries::new(front.iter().copied(), front_colour.stroke_width(2)))
        .map_err(draw_error)?
        .label("Pareto front")
        .legend(move |(x, y)| {
            EmptyElement::at((x + 10, y))
                + PathElement::new(vec![(-10, 0), (10, 0)], front_colour.stroke_width(2))
                + TriangleMarker::new((0, 0), 7, front_colour.filled())
        });
    chart
        .draw_series(points.iter().map(|p| Circle::new((kb(p), percent(p)), 5, point_colour.filled())))
        .map_err(draw_error)?
        .label("job (s = final sparsity)")
        .legend(move |(x, y)| Circle::new((x + 10, y), 5, point_colour.filled()));
    // Front points get a bigger, distinct marker on top of their circle.
    chart
        .draw_series(front.iter().map(|&(x, y)| TriangleMarker::new((x, y), 9, front_colour.filled())))
        .map_err(draw_error)?;
    let label_style = TextStyle::from((FAMILY, 16).into_font()).color(&BLACK);
    chart
        .draw_series(points.iter().map(|p| {
            EmptyElement::at((kb(p), percent(p))) + Text::new(point_label(p.sparsity), (9, -22), label_style.clone())
        }))
        .map_err(draw_error)?;
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(sparsity: f64, artifact_bytes: u64, accuracy: f64) -> Point {
        Point { sparsity, artifact_bytes, accuracy }
    }

    #[test]
    fn the_front_keeps_only_undominated_points_smallest_first() {
        let points = [
            point(0.5, 9000, 0.95),  // biggest, most accurate: on the front
            point(0.7, 7000, 0.90),  // on the front
            point(0.8, 7500, 0.85),  // bigger and less accurate than 0.7: dominated
            point(0.9, 4000, 0.80),  // smallest: on the front
            point(0.95, 4000, 0.70), // as small as 0.9, less accurate: dominated
        ];
        assert_eq!(pareto_front(&points), [3, 1, 0]);
        assert_eq!(pareto_front(&[]), Vec::<usize>::new());
        assert_eq!(pareto_front(&points[..1]), [0]);
        // Two identical results are both optimal.
        assert_eq!(pareto_front(&[point(0.5, 10, 0.5), point(0.6, 10, 0.5)]), [0, 1]);
    }

    #[test]
    fn png_decodes_to_the_plot_size() {
        let points = [point(0.5, 9000, 0.95), point(0.8, 5000, 0.9), point(0.95, 2500, 0.6)];
        let bytes = png("digits-mlp: accuracy vs artifact size", &points).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((frame.width, frame.height), SIZE);
        // Something was drawn: not one colour everywhere.
        let first = &pixels[..3];
        assert!(pixels[..frame.buffer_size()].chunks(3).any(|px| px != first));
        // Front colour (the line and triangles) is there.
        assert!(pixels.chunks(3).any(|px| px == [214, 39, 40]));
    }

    #[test]
    fn svg_holds_the_title_axes_and_every_label() {
        let points = [point(0.5, 9000, 0.95), point(0.7, 7000, 0.9), point(0.95, 2500, 0.6)];
        let svg = svg("digits-mlp: accuracy vs artifact size", &points).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for text in ["digits-mlp: accuracy vs artifact size", "artifact size (kB)", "validation accuracy (%)"] {
            assert!(svg.contains(text), "no {text:?}");
        }
        for p in points {
            // plotters writes each text on its own line inside its `<text>` element.
            assert!(svg.contains(&format!("{}\n</text>", point_label(p.sparsity))), "no label for {}", p.sparsity);
        }
        assert!(svg.contains(&format!("width=\"{}\"", SIZE.0)) && svg.contains(&format!("height=\"{}\"", SIZE.1)));
    }

    #[test]
    fn no_points_still_draw_axes() {
        let svg = svg("empty: accuracy vs artifact size", &[]).unwrap();
        assert!(svg.contains("artifact size (kB)"));
        assert!(png("empty", &[]).is_ok());
    }
}
