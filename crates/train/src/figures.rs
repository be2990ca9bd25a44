//! The report's figures, drawn with `plotters` into SVG strings: the head gate values per
//! layer, the structure kept per layer, and the training curves (loss, expected against
//! target size, the Lagrange multipliers).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::Point;

/// A figure that could not be drawn (plotters' message).
pub type FigureError = String;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn err(e: impl std::fmt::Display) -> FigureError {
    e.to_string()
}

/// An integer tick's label, nothing between integers.
fn integer_label(v: &f64, label: impl Fn(i64) -> String) -> String {
    if (v - v.round()).abs() < 1e-6 {
        label(v.round() as i64)
    } else {
        String::new()
    }
}

fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Result<(), FigureError>,
) -> Result<String, FigureError> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// A heatmap of deterministic gate values in [0, 1], one row per layer (layer 0 on top), one
/// cell per head with its value printed; white is closed, blue open.
pub fn gate_heatmap(values: &[Vec<f64>]) -> Result<String, FigureError> {
    let rows = values.len().max(1);
    let cols = values.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let size = (90 + 46 * cols as u32, 90 + 40 * rows as u32);
    svg(size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("head gate values (white = closed, blue = open)", (FONT, 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..cols as f64 - 0.5, -0.5..rows as f64 - 0.5)
            .map_err(err)?;
        let row = |l: usize| (rows - 1 - l) as f64;
        let x_fmt = |v: &f64| integer_label(v, |h| format!("h{h}"));
        let y_fmt = |v: &f64| {
            integer_label(v, |y| match usize::try_from(y) {
                Ok(y) if y < rows => format!("layer {}", rows - 1 - y),
                _ => String::new(),
            })
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols)
            .y_labels(rows)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .draw()
            .map_err(err)?;
        let cells = values
            .iter()
            .enumerate()
            .flat_map(|(l, r)| r.iter().enumerate().map(move |(h, &v)| (l, h, v)));
        for (l, h, v) in cells {
            let v = if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                0.0
            };
            let shade = (255.0 * (1.0 - v)) as u8;
            let (x, y) = (h as f64, row(l));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                    RGBColor(shade, shade, 255).filled(),
                )))
                .map_err(err)?;
            let ink = if v > 0.5 { WHITE } else { BLACK };
            let style = TextStyle::from((FONT, 12).into_font())
                .color(&ink)
                .pos(Pos::new(HPos::Center, VPos::Center));
            chart
                .draw_series(std::iter::once(Text::new(format!("{v:.2}"), (x, y), style)))
                .map_err(err)?;
        }
        Ok(())
    })
}

/// What a layer kept, for [`kept_structure`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerKept {
    /// Heads before and after pruning.
    pub heads: (usize, usize),
    /// FFN neurons before and after.
    pub ffn: (usize, usize),
}

/// Bars per layer: the fraction of heads and of FFN neurons kept, each labelled
/// `kept/dense`; the caption gives the hidden width kept.
pub fn kept_structure(layers: &[LayerKept], hidden: (usize, usize)) -> Result<String, FigureError> {
    let n = layers.len().max(1);
    let size = (160 + 110 * n as u32, 360);
    svg(size, |root| {
        let caption = format!("kept per layer (hidden width {} of {})", hidden.1, hidden.0);
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FONT, 15))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..1.3)
            .map_err(err)?;
        let x_fmt = |v: &f64| integer_label(v, |l| format!("layer {l}"));
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&x_fmt)
            .y_desc("fraction kept")
            .draw()
            .map_err(err)?;
        let frac = |(dense, kept): (usize, usize)| {
            if dense == 0 {
                0.0
            } else {
                kept as f64 / dense as f64
            }
        };
        let parts: [(&str, Counts, f64); 2] = [
            ("heads", |l| l.heads, -0.4),
            ("FFN neurons", |l| l.ffn, 0.02),
        ];
        for (i, (name, get, offset)) in parts.into_iter().enumerate() {
            let color = COLORS[i];
            chart
                .draw_series(layers.iter().enumerate().map(|(l, k)| {
                    let x = l as f64 + offset;
                    Rectangle::new([(x, 0.0), (x + 0.38, frac(get(k)))], color.filled())
                }))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            let style =
                TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart
                .draw_series(layers.iter().enumerate().map(|(l, k)| {
                    let (dense, kept) = get(k);
                    let x = l as f64 + offset + 0.19;
                    Text::new(
                        format!("{kept}/{dense}"),
                        (x, frac((dense, kept)) + 0.01),
                        style.clone(),
                    )
                }))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    })
}

/// Dense and kept counts of one structure of a layer.
type Counts = fn(&LayerKept) -> (usize, usize);

/// One named line of a panel.
type Series = (String, Vec<(f64, f64)>);

/// A line chart of `series` over the global step, phase starts marked.
fn panel(
    area: &Area<'_>,
    title: &str,
    y_desc: &str,
    series: &[Series],
    phases: &[(f64, String)],
    x_max: f64,
) -> Result<(), FigureError> {
    let values = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        let pad = ((hi - lo) * 0.05).max(1e-6);
        // Non-negative curves (loss, size) start at 0.
        (if lo >= 0.0 { 0.0 } else { lo - pad }, hi + pad)
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 14))
        .margin(8)
        .margin_right(24)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max.max(1.0), lo..hi)
        .map_err(err)?;
    let x_fmt = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .x_label_formatter(&x_fmt)
        .x_desc("step (all phases)")
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (x, name) in phases {
        chart
            .draw_series(DashedLineSeries::new(
                [(*x, lo), (*x, hi)],
                4,
                4,
                RGBColor(150, 150, 150).into(),
            ))
            .map_err(err)?;
        let style = TextStyle::from((FONT, 11).into_font()).color(&RGBColor(100, 100, 100));
        chart
            .draw_series(std::iter::once(Text::new(
                name.clone(),
                (*x + x_max * 0.005, hi - (hi - lo) * 0.02),
                style,
            )))
            .map_err(err)?;
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Stacked line charts over the global step (phases end to end): training loss (every
/// phase); in the gated phase, the expected size against the target, both as the fraction
/// of the dense size kept; and the Lagrange multipliers λ₁ and λ₂.
pub fn curves(history: &[Point]) -> Result<String, FigureError> {
    // Global x: phases laid end to end.
    let mut xs = Vec::with_capacity(history.len());
    let mut phases: Vec<(f64, String)> = Vec::new();
    let (mut offset, mut last_step) = (0usize, 0usize);
    for p in history {
        match phases.last() {
            Some((_, name)) if *name == p.phase => {}
            Some(_) => {
                offset += last_step;
                phases.push((offset as f64, p.phase.clone()));
            }
            None => phases.push((0.0, p.phase.clone())),
        }
        last_step = p.step;
        xs.push((offset + p.step) as f64);
    }
    let x_max = xs.last().copied().unwrap_or(1.0);
    let line = |name: &str, get: &dyn Fn(&Point) -> Option<f64>| -> Series {
        let points = xs
            .iter()
            .zip(history)
            .filter_map(|(&x, p)| get(p).filter(|v| v.is_finite()).map(|v| (x, v)))
            .collect();
        (name.to_string(), points)
    };
    let gated = history.iter().any(|p| p.expected_sparsity.is_some());
    let panels = if gated { 3 } else { 1 };
    svg((760, 260 * panels), |root| {
        let areas = root.split_evenly((panels as usize, 1));
        panel(
            &areas[0],
            "training loss",
            "loss",
            &[line("loss", &|p| Some(p.loss))],
            &phases,
            x_max,
        )?;
        if gated {
            panel(
                &areas[1],
                "under the gates: expected against target (fraction kept of what the target counts)",
                "fraction kept",
                &[
                    line("expected", &|p| p.expected_sparsity.map(|s| 1.0 - s)),
                    line("target", &|p| p.target_sparsity.map(|s| 1.0 - s)),
                ],
                &phases,
                x_max,
            )?;
            // One panel each: λ₂ starts at `gated.quadratic_init` and would flatten λ₁.
            let halves = areas[2].split_evenly((1, 2));
            panel(
                &halves[0],
                "Lagrange multiplier λ₁",
                "λ₁",
                &[line("λ₁", &|p| p.lambda1)],
                &phases,
                x_max,
            )?;
            panel(
                &halves[1],
                "Lagrange multiplier λ₂",
                "λ₂",
                &[line("λ₂", &|p| p.lambda2)],
                &phases,
                x_max,
            )?;
        }
        Ok(())
    })
}
