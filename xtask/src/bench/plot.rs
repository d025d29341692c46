//! The SVG plot of the scaling sweep: each metric against the number of
//! published ports (log scale), one line per datapath, medians with the
//! min–max range as error bars; the direct veth limit as a dashed level.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use plotters::prelude::*;

use super::{
    results::{Datapath, Metric, Results, TrafficPath},
    stats::summarize,
};

const PANELS: [Metric; 4] = [Metric::Crr, Metric::Rr, Metric::Udp, Metric::Add];

fn color(datapath: Datapath) -> RGBColor {
    match datapath {
        Datapath::IptablesNft => RGBColor(214, 39, 40),
        Datapath::IptablesLegacy => RGBColor(255, 127, 14),
        Datapath::Bridge => RGBColor(31, 119, 180),
        Datapath::Redirect => RGBColor(44, 160, 44),
        Datapath::BridgeHostCt => RGBColor(148, 103, 189),
        Datapath::RedirectHostCt => RGBColor(140, 86, 75),
        Datapath::BridgeXdp => RGBColor(23, 190, 207),
        Datapath::RedirectXdp => RGBColor(188, 189, 34),
        Datapath::Direct => RGBColor(90, 90, 90),
    }
}

/// (N, median, min, max): one point of a line with its error bar.
type Point = (f64, f64, f64, f64);

/// The points of a datapath's DNAT-path series, one per port count.
fn points(results: &Results, datapath: Datapath, metric: Metric) -> Vec<Point> {
    results
        .meta
        .port_counts
        .iter()
        .filter_map(|&ports| {
            let values: Vec<f64> = results
                .series(datapath, TrafficPath::Dnat, metric, ports)
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            summarize(&values).map(|s| (f64::from(ports.max(1)), s.median, s.min, s.max))
        })
        .collect()
}

pub fn scaling_svg(results: &Results, path: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "netlab bench ({}): outside → published port, vs published ports installed",
        results.meta.mode
    );
    let root = root
        .titled(&title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let xmax = f64::from(
        results
            .meta
            .port_counts
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(10),
    );
    for (area, metric) in root.split_evenly((2, 2)).iter().zip(PANELS) {
        let lines: Vec<(Datapath, Vec<Point>)> = results
            .datapaths()
            .into_iter()
            .filter(|d| *d != Datapath::Direct)
            .map(|d| (d, points(results, d, metric)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        let limit = (metric != Metric::Add)
            .then(|| {
                let values: Vec<f64> = results
                    .series(Datapath::Direct, TrafficPath::Direct, metric, 0)
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect();
                summarize(&values).map(|s| s.median)
            })
            .flatten();
        let ymax = lines
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, _, _, hi)| *hi))
            .chain(limit)
            .fold(0.0_f64, f64::max)
            * 1.15;
        let ymax = if ymax > 0.0 { ymax } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{} ({})", metric.label(), metric.unit()),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((1.0..xmax).log_scale(), 0.0..ymax)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("published ports (log scale)")
            .y_desc(metric.unit())
            .y_label_formatter(&|v| super::stats::human(*v))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| err(&e))?;
        for (datapath, pts) in &lines {
            let c = color(*datapath);
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|(x, m, _, _)| (*x, *m)),
                    c.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label(datapath.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(
                    pts.iter()
                        .map(|(x, m, _, _)| Circle::new((*x, *m), 3, c.filled())),
                )
                .map_err(|e| err(&e))?;
            chart
                .draw_series(pts.iter().map(|(x, _, lo, hi)| {
                    PathElement::new(vec![(*x, *lo), (*x, *hi)], c.stroke_width(1))
                }))
                .map_err(|e| err(&e))?;
        }
        if let Some(level) = limit {
            let c = color(Datapath::Direct);
            chart
                .draw_series(DashedLineSeries::new(
                    [(1.0, level), (xmax, level)],
                    6,
                    4,
                    c.stroke_width(1),
                ))
                .map_err(|e| err(&e))?
                .label(Datapath::Direct.label())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Checks that `text` is one well-formed SVG document: an `<svg>` root and
/// balanced, properly nested elements (enough to catch a truncated or
/// garbled file; the tags' own syntax is plotters').
pub fn check_svg(text: &str) -> Result<()> {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = text;
    let mut roots = 0;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let close = rest
            .find('>')
            .ok_or_else(|| anyhow!("a tag is never closed"))?;
        let tag = &rest[..close];
        rest = &rest[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim();
            match stack.pop() {
                Some(open) if open == name => {}
                Some(open) => bail!("</{name}> closes <{open}>"),
                None => bail!("</{name}> closes nothing"),
            }
            continue;
        }
        let name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or_default();
        if name.is_empty() {
            bail!("an element without a name");
        }
        if stack.is_empty() {
            roots += 1;
            if name != "svg" {
                bail!("the root element is <{name}>, not <svg>");
            }
        }
        if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    if let Some(open) = stack.last() {
        bail!("<{open}> is never closed");
    }
    if roots != 1 {
        bail!("{roots} root elements");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::results;

    #[test]
    fn svg_check_accepts_nested_and_rejects_broken() {
        assert!(
            check_svg("<?xml version=\"1.0\"?><svg a=\"1\"><g><text>x</text><line/></g></svg>")
                .is_ok()
        );
        assert!(check_svg("<svg><g></svg>").is_err());
        assert!(check_svg("<svg><g>").is_err());
        assert!(check_svg("<html></html>").is_err());
        assert!(check_svg("<svg></svg><svg></svg>").is_err());
    }

    #[test]
    fn draws_a_well_formed_plot_with_every_datapath() {
        let dir = std::env::temp_dir().join(format!("netlab-plot-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("scaling.svg");
        scaling_svg(&results(), &path).unwrap_or_else(|e| panic!("{e:#}"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        check_svg(&text).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(text.contains("netlab bridge"));
        assert!(text.contains("iptables (nft)"));
        assert!(text.contains("direct veth (limit)"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
