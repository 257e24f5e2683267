//! The latency chart: empirical distribution functions, one panel per phase.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cri::{COVE, RUNC};
use crate::serial::{Samples, DOWN, RUN, START};
use crate::shim_alone::{ShimSamples, FLOOR_DOWN, FLOOR_UP, SHIM_DOWN, SHIM_UP};
use crate::stats::ms;

/// Empirical distribution functions of each phase, cove and runc, one panel per phase.
pub fn svg(serial: &Samples, shim: &ShimSamples) -> String {
    const BLUE: &str = "#1f77b4";
    const ORANGE: &str = "#ff7f0e";
    let pair = |phase: &'static str| -> Vec<(&'static str, &'static str, &Vec<Duration>)> {
        vec![
            ("cove", BLUE, &serial[&(phase, COVE)]),
            ("runc", ORANGE, &serial[&(phase, RUNC)]),
        ]
    };
    let panels = [
        (RUN, pair(RUN)),
        (START, pair(START)),
        (DOWN, pair(DOWN)),
        (
            "cove shim alone over ttrpc, and floors",
            vec![
                (SHIM_UP, BLUE, &shim[SHIM_UP]),
                (SHIM_DOWN, "#2ca02c", &shim[SHIM_DOWN]),
                (FLOOR_UP, "#7f7f7f", &shim[FLOOR_UP]),
                (FLOOR_DOWN, "#bcbd22", &shim[FLOOR_DOWN]),
            ],
        ),
    ];
    let (pw, ph, ml, mb, mt) = (360.0, 240.0, 50.0, 40.0, 30.0);
    let width = pw * 2.0 + 20.0;
    let height = (ph + 20.0) * 2.0 + 30.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="18" font-size="13">Latency distributions: share of calls done within x ms</text>
"#
    );
    for (i, (title, series)) in panels.iter().enumerate() {
        let ox = 10.0 + (i % 2) as f64 * (pw + 10.0);
        let oy = 30.0 + (i / 2) as f64 * (ph + 20.0);
        let max = series
            .iter()
            .flat_map(|(_, _, v)| v.iter())
            .map(|d| ms(*d))
            .fold(1.0_f64, f64::max);
        let xmax = nice_ceiling(max);
        let (x0, x1, y0, y1) = (ox + ml, ox + pw - 10.0, oy + ph - mb, oy + mt);
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-weight="bold">{}</text>
<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>"##,
            ox + ml,
            oy + 18.0,
            xml_escape(title)
        );
        for k in 0..=4 {
            let f = k as f64 / 4.0;
            let x = x0 + f * (x1 - x0);
            let y = y0 - f * (y0 - y1);
            let _ = writeln!(
                s,
                r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{:.0}</text>
<text x="{}" y="{}" text-anchor="end">{:.2}</text>"##,
                y0 + 14.0,
                f * xmax,
                x0 - 4.0,
                y + 4.0,
                f
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">ms</text>"#,
            (x0 + x1) / 2.0,
            y0 + 28.0
        );
        for (j, (label, color, v)) in series.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
                x0 + 8.0,
                y1 + 4.0 + j as f64 * 14.0,
                x0 + 22.0,
                y1 + 13.0 + j as f64 * 14.0,
                xml_escape(label)
            );
            let mut pts = format!("{x0},{y0}");
            for (k, d) in v.iter().enumerate() {
                let x = x0 + ms(*d) / xmax * (x1 - x0);
                let ya = y0 - (k as f64 / v.len() as f64) * (y0 - y1);
                let yb = y0 - ((k + 1) as f64 / v.len() as f64) * (y0 - y1);
                let _ = write!(pts, " {x:.1},{ya:.1} {x:.1},{yb:.1}");
            }
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>"#
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

pub fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
