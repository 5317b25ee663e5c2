//! The PNG chart of latency percentiles: one panel per request/response scenario, one
//! line per configuration (the median of each percentile over the rounds).
//!
//! plotters draws text with ab_glyph from a font registered here, not through
//! fontconfig (which a clean machine may lack); the font is DejaVu Sans from Debian's
//! `fonts-dejavu-core`, which `cargo xtask setup` installs.
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context as _, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::report::Run;
use super::stats::Scenario;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const FONT: &str = "sans-serif";
const PANEL: (u32, u32) = (640, 420);
const COLUMNS: usize = 2;

/// Registers the font once; fails with what to install if there is none.
pub fn load_font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_PATHS
            .iter()
            .find(|p| Path::new(p).is_file())
            .ok_or_else(|| format!("no font for the chart at {FONT_PATHS:?}: install fonts-dejavu-core (cargo xtask setup does)"))?;
        let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font(FONT, FontStyle::Normal, bytes).map_err(|_| format!("{path} is not a font plotters can read"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Scenarios with latency percentiles and more than one configuration.
fn panels(run: &Run) -> Vec<&Scenario> {
    run.scenarios
        .iter()
        .filter(|s| s.configs.len() > 1 && s.samples.iter().any(|x| x.latency_us.is_some()))
        .collect()
}

pub fn draw(run: &Run, path: &Path) -> Result<()> {
    load_font()?;
    let panels = panels(run);
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let size = (PANEL.0 * COLUMNS as u32, PANEL.1 * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    if panels.is_empty() {
        root.draw(&Text::new(
            "no request/response scenario in this run",
            (20, 20),
            (FONT, 20).into_font(),
        ))
        .map_err(err)?;
    }
    for (area, s) in root.split_evenly((rows, COLUMNS)).iter().zip(&panels) {
        panel(area, s).with_context(|| format!("drawing the {} panel", s.id))?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn panel(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, s: &Scenario) -> Result<()> {
    let lines: Vec<(String, Vec<(u32, f64)>)> = s
        .configs
        .iter()
        .filter_map(|c| {
            let p = s.median_percentiles(c)?;
            Some((
                c.clone(),
                (0u32..).zip(p.points().map(|(_, v)| v.max(1.0))).collect(),
            ))
        })
        .collect();
    let values = lines.iter().flat_map(|(_, l)| l.iter().map(|(_, v)| *v));
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lines.is_empty() || hi <= 0.0 {
        bail!("no latency data");
    }
    let labels = ["p50", "p90", "p99", "p99.9"];
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{}: {}", s.id, s.title), (FONT, 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0u32..3u32, ((lo * 0.8)..(hi * 1.25)).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| labels.get(*x as usize).unwrap_or(&"").to_string())
        .y_desc("latency, µs (log)")
        .label_style((FONT, 13))
        .draw()
        .map_err(e)?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::Percentiles;
    use crate::bench::stats::{Figure, Sample};
    use crate::bench::Plan;

    #[test]
    fn draws_a_png_of_the_percentiles() {
        if load_font().is_err() {
            eprintln!("SKIP: no font for the chart (install fonts-dejavu-core)");
            return;
        }
        let sample = |config: &str, base: f64| Sample {
            config: config.into(),
            round: 0,
            values: Default::default(),
            latency_us: Some(Percentiles {
                p50: base,
                p90: base * 1.5,
                p99: base * 3.0,
                p999: base * 6.0,
                max: base * 10.0,
                mean: base,
            }),
        };
        let mut run = Run::new(&Plan::quick(), "test");
        run.scenarios.push(Scenario {
            id: "S1-64B".into(),
            title: "same-node".into(),
            baseline: "no mesh".into(),
            configs: vec!["no mesh".into(), "mesh".into()],
            figures: vec![Figure::lower("p50_us", "p50")],
            samples: vec![sample("no mesh", 40.0), sample("mesh", 90.0)],
            notes: vec![],
        });
        let dir = std::env::temp_dir().join(format!("mesh-bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.png");
        draw(&run, &path).unwrap();
        let png = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(
            png.len() > 10_000,
            "a chart with text and lines, {} bytes",
            png.len()
        );
    }
}
