//! The service's plots, as pure functions from numbers to PNG or SVG bytes: a sweep's accuracy
//! against artifact size (`pareto`, drawn by `prunectl sweep`) and a sensitivity analysis's
//! accuracy against sparsity per tensor (`sensitivity`, drawn by the worker as a job artifact)
//! and a pruned language model's reconstruction error per decoder layer (`reconstruction`).
//!
//! Text is drawn with the embedded DejaVu Sans (`plot/assets`, license beside it) through
//! plotters' `ab_glyph` backend: no system font library at build or run time, and the same
//! pixels on every machine.

use std::ops::Range;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

pub mod pareto;
pub mod reconstruction;
pub mod sensitivity;

/// Width and height of every plot, in pixels: readable at a glance on a laptop screen.
pub const SIZE: (u32, u32) = (1000, 700);

/// The family every text of a plot uses; registered once with the embedded font.
const FAMILY: &str = "sans-serif";
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing the plot: {0}")]
    Draw(String),
    #[error("encoding the PNG: {0}")]
    Png(#[from] png::EncodingError),
}

fn draw_error(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

fn register_embedded_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The bytes are ours and a valid TrueType file: failing here is a build defect.
        register_font(FAMILY, FontStyle::Normal, FONT).unwrap_or_else(|_| panic!("the embedded font does not parse"));
    });
}

/// What `draw` paints, as an 8-bit RGB PNG of [`SIZE`].
fn png_of(
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<Vec<u8>, PlotError> {
    register_embedded_font();
    let (width, height) = SIZE;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        draw(&root)?;
        root.present().map_err(draw_error)?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(out)
}

/// What `draw` paints, as an SVG document of [`SIZE`] (texts stay text: searchable, selectable).
fn svg_of(
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<String, PlotError> {
    register_embedded_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root)?;
        root.present().map_err(draw_error)?;
    }
    Ok(out)
}

/// matplotlib's `tab10`: ten colours told apart at a glance; more series reuse them with
/// another marker.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The legend box every plot draws: white, framed, at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FAMILY, font_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)
}

/// The values' span with room around it for markers and labels (`empty` when there are none;
/// a single value gets a span of its own).
fn padded(values: impl Iterator<Item = f64>, empty: Range<f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return empty;
    }
    let pad = ((hi - lo) * 0.15).max(hi.abs() * 0.05).max(0.5);
    (lo - pad).max(0.0)..hi + pad
}

/// [`padded`] for a percentage (accuracy): the axis never passes 100% nor goes below 0%.
fn padded_percent(values: impl Iterator<Item = f64>) -> Range<f64> {
    let r = padded(values, 0.0..100.0);
    r.start.clamp(0.0, 100.0)..r.end.clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_axes_stay_within_0_and_100() {
        assert_eq!(padded_percent([98.0, 99.5, 100.0].into_iter()).end, 100.0);
        let r = padded_percent([97.0, 98.0].into_iter());
        assert!(r.start < 97.0 && r.end > 98.0 && r.end <= 100.0, "{r:?}");
        assert_eq!(padded_percent([0.0, 1.0].into_iter()).start, 0.0);
    }

    #[test]
    fn ranges_leave_room_and_survive_one_point() {
        let r = padded([5.0].into_iter(), 0.0..1.0);
        assert!(r.start < 5.0 && r.end > 5.0, "{r:?}");
        let r = padded([2.0, 10.0].into_iter(), 0.0..1.0);
        assert!(r.start < 2.0 && r.end > 10.0 && r.start >= 0.0, "{r:?}");
        assert_eq!(padded(std::iter::empty(), 0.0..100.0), 0.0..100.0);
    }
}
