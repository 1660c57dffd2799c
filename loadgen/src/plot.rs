//! SVG plots (plotters): the latency percentile spectrum and latency against throughput.

use std::path::Path;

use plotters::prelude::*;

type Res = Result<(), Box<dyn std::error::Error>>;

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// One named spectrum: `(quantile, microseconds)` points as [`crate::stats::spectrum`] gives.
pub type Spectrum = (String, Vec<(f64, f64)>);

/// Latency percentile spectrum: x is `1 / (1 - q)` on a log scale (1 = p0, 10 = p90,
/// 100 = p99, ...), y the latency in microseconds on a log scale. The maximum is drawn one
/// decade past the last finite point.
pub fn spectrum_svg(path: &Path, title: &str, series: &[Spectrum]) -> Res {
    let to_xy = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        let finite: Vec<(f64, f64)> =
            pts.iter().filter(|p| p.0 < 1.0).map(|&(q, v)| (1.0 / (1.0 - q), v.max(0.1))).collect();
        let mut out = finite.clone();
        if let (Some(last), Some(max)) = (finite.last(), pts.iter().find(|p| p.0 >= 1.0)) {
            out.push((last.0 * 10.0, max.1.max(0.1)));
        }
        out
    };
    let all: Vec<(String, Vec<(f64, f64)>)> = series.iter().map(|(n, p)| (n.clone(), to_xy(p))).collect();
    let xmax = all.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(10.0, f64::max);
    let ymax = all.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.5;
    let ymin = all.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(f64::MAX, f64::min).clamp(0.1, ymax / 2.0) / 1.5;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..xmax).log_scale(), (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile (1/(1-q): 10 = p90, 100 = p99, 1000 = p99.9)")
        .y_desc("latency (us)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, (name, pts)) in all.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// One point of a sweep: achieved throughput and latency percentiles (microseconds).
#[derive(Clone, Copy, Debug)]
pub struct SweepPoint {
    /// Answers per second.
    pub throughput: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// Latency (p50, p99, p99.9; log scale) against achieved throughput.
pub fn latency_vs_throughput_svg(path: &Path, title: &str, points: &[SweepPoint]) -> Res {
    let xmax = points.iter().map(|p| p.throughput).fold(1.0, f64::max) * 1.05;
    let ymax = points.iter().map(|p| p.p999.max(p.p99)).fold(1.0, f64::max) * 1.5;
    let ymin = points.iter().map(|p| p.p50).fold(f64::MAX, f64::min).clamp(0.1, ymax / 2.0) / 1.5;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("achieved throughput (answers/s)")
        .y_desc("latency from intended send time (us)")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    type Line = (&'static str, fn(&SweepPoint) -> f64);
    let lines: [Line; 3] = [("p50", |p| p.p50), ("p99", |p| p.p99), ("p99.9", |p| p.p999)];
    for (i, (name, f)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = points.iter().map(|p| (p.throughput, f(p).max(ymin))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
