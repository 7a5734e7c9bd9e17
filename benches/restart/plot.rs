//! The benchmark's pictures (`target/bench/restart-*.svg`, copied to
//! `docs/`), drawn by the plotter of `svg.rs`.

use std::time::Duration;

use testkit::Summary;

use crate::svg::{Series, Svg};
use crate::timeline::Timeline;
use crate::{Plan, ms};

/// Requests per 10 ms across the restarts (red): with grestart, above the
/// same load across a naive stop-and-start of a server without it.
pub fn timeline_chart(graceful: &Timeline, naive: &Timeline) -> String {
    let peak = (graceful.stats.per_10ms.iter().chain(&naive.stats.per_10ms))
        .max()
        .copied()
        .unwrap_or(1) as f64;
    let mut svg = Svg::new(900.0, 560.0, None);
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
    let mut svg = Svg::new(700.0, 360.0, None);
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
