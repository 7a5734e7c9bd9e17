//! A minimal SVG plotter of its own for the benchmarks' pictures (this one's
//! and `cargo bench --bench peers`'s): panels with labelled axes, ticks and
//! series.

use std::fmt::Write as _;

/// A line to draw: (legend, colour, points).
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A minimal SVG plotter: panels with labelled axes, ticks and series.
pub struct Svg {
    width: f64,
    /// Whether the y axes are logarithmic, from this value at the bottom:
    /// for values spread over decades.
    log_y_from: Option<f64>,
    body: String,
}

impl Svg {
    /// A picture `width` × `height`; with `log_y_from`, its y axes are
    /// logarithmic from that value at the bottom.
    pub fn new(width: f64, height: f64, log_y_from: Option<f64>) -> Svg {
        Svg {
            width,
            log_y_from,
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
    pub fn panel(
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
        let log_y_from = self.log_y_from;
        let py = |v: f64| {
            let share = match log_y_from {
                None => v / y.1.max(f64::MIN_POSITIVE),
                Some(bottom) => (v.max(bottom) / bottom).log10() / (y.1 / bottom).log10(),
            };
            lower - share * (lower - upper)
        };
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
        let y_ticks = match log_y_from {
            None => ticks(y.1),
            Some(bottom) => log_ticks(bottom, y.1),
        };
        for tick in y_ticks {
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

    pub fn finish(mut self) -> String {
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

/// 1, 2 and 5 times each power of ten from `bottom` (one) to `max`.
fn log_ticks(bottom: f64, max: f64) -> Vec<f64> {
    let mut found = Vec::new();
    let mut decade = bottom;
    while decade <= max * 1.0001 {
        found.extend(
            [1.0, 2.0, 5.0]
                .map(|m| m * decade)
                .iter()
                .filter(|&&t| t <= max * 1.0001),
        );
        decade *= 10.0;
    }
    found
}

fn round(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}
