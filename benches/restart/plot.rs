//! The benchmark's pictures (`target/bench/restart-*.svg`, copied to
//! `docs/`), drawn by a minimal SVG plotter of its own: panels with labelled
//! axes, ticks and series.

use std::fmt::Write as _;
use std::time::Duration;

use testkit::Summary;

use crate::timeline::Timeline;
use crate::{Plan, ms};

/// Requests per 10 ms across the restarts (red): with grestart, above the
/// same load across a naive stop-and-start of a server without it.
pub fn timeline_chart(graceful: &Timeline, naive: &Timeline) -> String {
    let peak = (graceful.stats.per_10ms.iter().chain(&naive.stats.per_10ms))
        .max()
        .copied()
        .unwrap_or(1) as f64;
    let mut svg = Svg::new(900.0, 560.0);
    for (top, title, timeline) in [
        (
            0.0,
            format!(
                "grestart: 8 restarts (red) under 4 keep-alive + 4 connection-per-request clients; failed requests: {}",
                graceful.stats.failed
            ),
            graceful,
        ),
        (
            280.0,
            format!(
                "without grestart: 8 stop-and-starts (red) under the same load; failed requests: {}",
                naive.stats.failed
            ),
            naive,
        ),
    ] {
        // The last bucket is cut short by the end of the run.
        let per_10ms = &timeline.stats.per_10ms;
        let buckets = &per_10ms[..per_10ms.len().saturating_sub(1)];
        let points = (buckets.iter().enumerate())
            .map(|(i, &v)| (i as f64 / 100.0, v as f64))
            .collect();
        let marks: Vec<f64> = timeline.marks.iter().map(Duration::as_secs_f64).collect();
        svg.panel(
            top,
            280.0,
            &title,
            (
                "time since the load started (s)",
                buckets.len() as f64 / 100.0,
            ),
            ("requests answered per 10 ms", peak),
            &[("", "steelblue", points)],
            &marks,
        );
    }
    svg.finish()
}

/// Restart latency against the memory the server holds: the medians of each
/// implementation at each of the plan's sizes, and the fork+exec floor.
pub fn memory_chart(plan: &Plan, by_size: &[(&str, Vec<Summary>)], floor: Duration) -> String {
    let sizes = &plan.sizes;
    let gb = |mb: usize| mb as f64 / 1024.0;
    let mut series: Vec<Series<'_>> = Vec::new();
    for ((name, summaries), color) in by_size.iter().zip(["steelblue", "darkorange"]) {
        let points = (sizes.iter().zip(summaries))
            .map(|(&mb, s)| (gb(mb), ms(s.median)))
            .collect();
        series.push((name, color, points));
    }
    let flat = sizes.iter().map(|&mb| (gb(mb), ms(floor))).collect();
    series.push(("fork+exec floor (a fresh start)", "gray", flat));
    // Headroom above the lines for the legend.
    let top = 1.4 * (series.iter().flat_map(|s| &s.2).map(|p| p.1)).fold(1.0, f64::max);
    let mut svg = Svg::new(700.0, 360.0);
    svg.panel(
        0.0,
        360.0,
        &format!(
            "idle restart latency (median of {}) against the memory the server holds",
            plan.medians
        ),
        (
            "touched heap of the server (GB)",
            gb(sizes[sizes.len() - 1]),
        ),
        ("restart latency (ms)", top),
        &series,
        &[],
    );
    svg.finish()
}

/// A line to draw: (legend, colour, points).
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A minimal SVG plotter: panels with labelled axes, ticks and series.
struct Svg {
    width: f64,
    body: String,
}

impl Svg {
    fn new(width: f64, height: f64) -> Svg {
        Svg {
            width,
            body: format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
                 <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
            ),
        }
    }

    /// One chart in the band `top..top + height`: `x` and `y` are (label,
    /// maximum); `series` are (legend, colour, points); `marks` are red
    /// vertical lines at those x values.
    #[allow(clippy::too_many_arguments)]
    fn panel(
        &mut self,
        top: f64,
        height: f64,
        title: &str,
        x: (&str, f64),
        y: (&str, f64),
        series: &[Series<'_>],
        marks: &[f64],
    ) {
        let (left, right, upper, lower) =
            (70.0, self.width - 20.0, top + 40.0, top + height - 50.0);
        let px = |v: f64| left + v / x.1.max(f64::MIN_POSITIVE) * (right - left);
        let py = |v: f64| lower - v / y.1.max(f64::MIN_POSITIVE) * (lower - upper);
        let b = &mut self.body;
        let _ = writeln!(
            b,
            "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{title}</text>",
            top + 20.0
        );
        let _ = writeln!(
            b,
            "<path d=\"M{left},{upper} V{lower} H{right}\" fill=\"none\" stroke=\"black\"/>"
        );
        for tick in ticks(x.1) {
            let at = px(tick);
            let _ = writeln!(
                b,
                "<line x1=\"{at:.1}\" y1=\"{lower}\" x2=\"{at:.1}\" y2=\"{}\" stroke=\"black\"/><text x=\"{at:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                lower + 5.0,
                lower + 18.0,
                round(tick)
            );
        }
        for tick in ticks(y.1) {
            let at = py(tick);
            let _ = writeln!(
                b,
                "<line x1=\"{}\" y1=\"{at:.1}\" x2=\"{left}\" y2=\"{at:.1}\" stroke=\"black\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><line x1=\"{left}\" y1=\"{at:.1}\" x2=\"{right}\" y2=\"{at:.1}\" stroke=\"#eee\"/>",
                left - 5.0,
                left - 8.0,
                at + 4.0,
                round(tick)
            );
        }
        let _ = writeln!(
            b,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            (left + right) / 2.0,
            lower + 36.0,
            x.0
        );
        let _ = writeln!(
            b,
            "<text transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            (upper + lower) / 2.0,
            y.0
        );
        for &mark in marks {
            let at = px(mark);
            let _ = writeln!(
                b,
                "<line x1=\"{at:.1}\" y1=\"{upper}\" x2=\"{at:.1}\" y2=\"{lower}\" stroke=\"red\"/>"
            );
        }
        for (i, (legend, color, points)) in series.iter().enumerate() {
            let path: Vec<String> = (points.iter())
                .map(|&(vx, vy)| format!("{:.1},{:.1}", px(vx), py(vy)))
                .collect();
            let _ = writeln!(
                b,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                path.join(" ")
            );
            for &(vx, vy) in points.iter().filter(|_| points.len() < 20) {
                let _ = writeln!(
                    b,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                    px(vx),
                    py(vy)
                );
            }
            if !legend.is_empty() {
                let _ = writeln!(
                    b,
                    "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{legend}</text>",
                    left + 10.0,
                    upper + 14.0 + 16.0 * i as f64
                );
            }
        }
    }

    fn finish(mut self) -> String {
        self.body.push_str("</svg>\n");
        self.body
    }
}

/// About five round tick values from 0 to `max`.
fn ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 {
        return vec![0.0];
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    (0..)
        .map(|i| i as f64 * step)
        .take_while(|&t| t <= max * 1.0001)
        .collect()
}

fn round(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}
