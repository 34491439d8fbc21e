//! The report's plots (plotters), each written as SVG and PNG: score versus measured ratio per
//! task category, and needle exact-match heatmaps (depth × prompt length) per method.
//!
//! Text is drawn with DejaVu Sans, fetched like the data (`models/manifest.json`, asset `font`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, anyhow};
use kvbench::bench::TrialResult;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::table::{TASKS, methods};

const FONT: &str = "usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Register the font once per process (plotters keeps it for the process's life).
fn font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = kvbench::assets::path("font", FONT).map_err(|e| e.to_string())?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{} is not a font plotters can read", path.display()))
    })
    .clone()
    .map_err(|e| anyhow!("the report's font: {e}"))
}

/// A budgeted method's family (`h2o-4x` → `h2o`); other methods are their own family.
fn family(method: &str) -> &str {
    match method.rsplit_once('-') {
        Some((head, tail))
            if tail
                .strip_suffix('x')
                .or_else(|| tail.strip_suffix("tok"))
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) =>
        {
            head
        }
        _ => method,
    }
}

/// Per task, per family (in matrix order): (measured ratio, score × 100), by ratio.
type ScorePoints = BTreeMap<&'static str, Vec<(String, Vec<(f64, f64)>)>>;

fn score_points(trials: &[TrialResult]) -> (Vec<String>, ScorePoints) {
    let mut families: Vec<String> = Vec::new();
    for m in methods() {
        if !families.iter().any(|f| f == family(&m)) {
            families.push(family(&m).to_string());
        }
    }
    let mut out = ScorePoints::new();
    for task in TASKS {
        let mut per: Vec<(String, Vec<(f64, f64)>)> = families.iter().map(|f| (f.clone(), Vec::new())).collect();
        for t in trials.iter().filter(|t| t.task == task) {
            if let Some((_, pts)) = per.iter_mut().find(|(f, _)| f == family(&t.method)) {
                pts.push((t.measured_ratio, t.score.mean * 100.0));
            }
        }
        per.iter_mut().for_each(|(_, pts)| pts.sort_by(|a, b| a.0.total_cmp(&b.0)));
        out.insert(task, per);
    }
    (families, out)
}

/// The score axis of a panel: from 0 to the next multiple of 10 above its best score (with room
/// for the markers), 100 at most; a small model's scores of 5–20 would otherwise be a flat line
/// at the bottom of a 0–100 axis. The caption states the range, so panels are not misread as
/// sharing one.
fn score_axis_top(scores: impl Iterator<Item = f64>) -> f64 {
    let best = scores.fold(0.0f64, f64::max);
    ((best * 1.1 / 10.0).ceil() * 10.0).clamp(10.0, 100.0)
}

fn color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// Score versus measured ratio, one panel per task category and a legend panel.
pub fn score_vs_ratio(trials: &[TrialResult], stem: &Path) -> anyhow::Result<()> {
    font()?;
    let (families, points) = score_points(trials);
    let size = (1600, 900);
    atomically(&stem.with_extension("svg"), |tmp| {
        draw_scores(SVGBackend::new(tmp, size).into_drawing_area(), &families, &points)
    })?;
    atomically(&stem.with_extension("png"), |tmp| {
        draw_scores(BitMapBackend::new(tmp, size).into_drawing_area(), &families, &points)
    })
}

/// Draw the image at `path` by drawing it (`draw`) into a temporary file beside it, which is
/// then renamed over `path`: a run killed mid-drawing leaves the previous image whole, never a
/// truncated one. The temporary name keeps the extension, by which plotters picks the format.
fn atomically(path: &Path, draw: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp.{ext}", std::process::id()));
    let drawn = draw(&tmp).and_then(|()| Ok(std::fs::rename(&tmp, path)?));
    if drawn.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drawn.with_context(|| format!("drawing {}", path.display()))
}

fn draw_scores<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    families: &[String],
    points: &ScorePoints,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled("Task score versus measured compression ratio", ("sans-serif", 24)).map_err(plot_err)?;
    let max_ratio = points.values().flatten().flat_map(|(_, p)| p.iter().map(|x| x.0)).fold(2.0f64, f64::max);
    let panels = root.split_evenly((2, 4));
    for (panel, task) in panels.iter().zip(TASKS) {
        let top = score_axis_top(points[task].iter().flat_map(|(_, p)| p.iter().map(|x| x.1)));
        let empty = points[task].iter().all(|(_, p)| p.is_empty());
        let caption = if empty { format!("{task}: no results") } else { format!("{task} (score 0–{top:.0})") };
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..(max_ratio * 1.05).ceil(), 0.0..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("measured ratio (×)")
            .y_desc("score")
            .light_line_style(WHITE)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        for (i, (_, pts)) in points[task].iter().enumerate() {
            let c = color(i);
            if pts.len() > 1 {
                chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2))).map_err(plot_err)?;
            }
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(plot_err)?;
        }
    }
    let legend = &panels[7];
    for (i, f) in families.iter().enumerate() {
        let (col, row) = (i / 12, i % 12);
        let (x, y) = (20 + col as i32 * 190, 20 + row as i32 * 28);
        legend.draw(&Rectangle::new([(x, y), (x + 18, y + 14)], color(i).filled())).map_err(plot_err)?;
        legend.draw(&Text::new(f.clone(), (x + 26, y), ("sans-serif", 16).into_font())).map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

/// One method's needle cells: (length, depth) → (score sum, samples).
type Cells = BTreeMap<(usize, u32), (f64, usize)>;

pub fn needle_cells(trials: &[TrialResult]) -> Vec<(String, Cells)> {
    let mut out = Vec::new();
    for m in methods() {
        let Some(t) = trials.iter().find(|t| t.task == "needle" && t.method == m) else { continue };
        let mut cells = Cells::new();
        for s in &t.samples {
            let Some(depth) = s.depth else { continue };
            let len = target_len(&s.id).unwrap_or(s.prompt_len);
            let cell = cells.entry((len, (depth * 100.0).round() as u32)).or_default();
            cell.0 += s.score;
            cell.1 += 1;
        }
        if !cells.is_empty() {
            out.push((m, cells));
        }
    }
    out
}

/// The target length in a sample id (`needle/s0/n2048/...`).
fn target_len(id: &str) -> Option<usize> {
    id.split('/').find_map(|part| part.strip_prefix('n')?.parse().ok())
}

/// Red (0) through yellow to green (1).
fn heat(x: f64) -> RGBColor {
    let lerp = |a: (f64, f64, f64), b: (f64, f64, f64), t: f64| {
        RGBColor((a.0 + (b.0 - a.0) * t) as u8, (a.1 + (b.1 - a.1) * t) as u8, (a.2 + (b.2 - a.2) * t) as u8)
    };
    let (red, yellow, green) = ((215.0, 48.0, 39.0), (254.0, 224.0, 139.0), (26.0, 152.0, 80.0));
    let x = x.clamp(0.0, 1.0);
    if x < 0.5 { lerp(red, yellow, x * 2.0) } else { lerp(yellow, green, x * 2.0 - 1.0) }
}

/// Needle exact-match rate by depth and length, one small heatmap per method. With no needle
/// results there is nothing to draw: no image is written and an earlier one is removed, so a
/// report never shows a blank or stale picture.
pub fn needle_heatmaps(trials: &[TrialResult], stem: &Path) -> anyhow::Result<()> {
    let cells = needle_cells(trials);
    if cells.is_empty() {
        for ext in ["svg", "png"] {
            match std::fs::remove_file(stem.with_extension(ext)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        return Ok(());
    }
    font()?;
    let cols = 8;
    let rows = cells.len().div_ceil(cols).max(1);
    let size = (cols as u32 * 220, rows as u32 * 190 + 50);
    atomically(&stem.with_extension("svg"), |tmp| {
        draw_heatmaps(SVGBackend::new(tmp, size).into_drawing_area(), &cells, cols, rows)
    })?;
    atomically(&stem.with_extension("png"), |tmp| {
        draw_heatmaps(BitMapBackend::new(tmp, size).into_drawing_area(), &cells, cols, rows)
    })
}

fn draw_heatmaps<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    cells: &[(String, Cells)],
    cols: usize,
    rows: usize,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root
        .titled("Needle exact-match rate: depth (%) × prompt length (tokens); red 0 → green 1", ("sans-serif", 22))
        .map_err(plot_err)?;
    let lens: Vec<usize> =
        cells.iter().flat_map(|(_, c)| c.keys().map(|k| k.0)).collect::<BTreeSet<_>>().into_iter().collect();
    let depths: Vec<u32> =
        cells.iter().flat_map(|(_, c)| c.keys().map(|k| k.1)).collect::<BTreeSet<_>>().into_iter().collect();
    // cell i spans [2i, 2i + 2] (integer coordinates, so that the axes take custom key points);
    // its label sits at its centre, 2i + 1
    let centres = |n: usize| (0..n as i32).map(|i| 2 * i + 1).collect::<Vec<_>>();
    let name = |names: &[String], v: i32| names.get((v.max(1) / 2) as usize).cloned().unwrap_or_default();
    let (len_names, depth_names): (Vec<String>, Vec<String>) =
        (lens.iter().map(usize::to_string).collect(), depths.iter().map(u32::to_string).collect());
    for (panel, (method, cells)) in root.split_evenly((rows, cols)).iter().zip(cells) {
        let mut chart = ChartBuilder::on(panel)
            .caption(method, ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(30)
            .build_cartesian_2d(
                (0..2 * lens.len() as i32).with_key_points(centres(lens.len())),
                (0..2 * depths.len() as i32).with_key_points(centres(depths.len())),
            )
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_label_formatter(&|v| name(&len_names, *v))
            .y_label_formatter(&|v| name(&depth_names, *v))
            .label_style(("sans-serif", 10))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(cells.iter().map(|(&(len, depth), &(sum, n))| {
                let x = 2 * lens.iter().position(|&l| l == len).unwrap_or(0) as i32;
                let y = 2 * depths.iter().position(|&d| d == depth).unwrap_or(0) as i32;
                Rectangle::new([(x, y), (x + 2, y + 2)], heat(sum / n as f64).filled())
            }))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_strip_budgets_only() {
        assert_eq!(family("h2o-4x"), "h2o");
        assert_eq!(family("snapkv-512tok"), "snapkv");
        assert_eq!(family("kivi-2bit"), "kivi-2bit");
        assert_eq!(family("q4_0-rot"), "q4_0-rot");
        assert_eq!(family("full"), "full");
    }

    #[test]
    fn plots_are_drawn_as_svg_and_png() {
        let trial = |method: &str, task: &str, ratio: f64, score: f64| {
            let mut t = crate::report::fixture::with_scores(&format!("{method}::{task}"), &[1.0, 0.0]);
            (t.measured_ratio, t.score.mean) = (ratio, score);
            for (s, (id, len, depth)) in t
                .samples
                .iter_mut()
                .zip([("needle/s0/n1024/pg-essays/d0", 1024, 0.0), ("needle/s1/n2048/pg-essays/d50", 2048, 0.5)])
            {
                (s.id, s.prompt_len, s.depth) = (id.into(), len, Some(depth));
            }
            t
        };
        let trials = vec![
            trial("full", "needle", 0.5, 1.0),
            trial("h2o-2x", "needle", 2.1, 0.5),
            trial("h2o-4x", "code", 4.2, 0.1),
        ];
        let dir = std::env::temp_dir().join(format!("kvbench-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        score_vs_ratio(&trials, &dir.join("s")).unwrap();
        needle_heatmaps(&trials, &dir.join("n")).unwrap();
        for stem in ["s", "n"] {
            let svg = std::fs::read_to_string(dir.join(stem).with_extension("svg")).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("<text"), "{stem}.svg");
            let png = std::fs::read(dir.join(stem).with_extension("png")).unwrap();
            assert_eq!(&png[1..4], b"PNG", "{stem}.png");
        }
        let cells = needle_cells(&trials);
        assert_eq!(cells.len(), 2, "full and h2o-2x have needle results");
        assert_eq!(cells[0].1[&(1024, 0)], (1.0, 1));
        assert_eq!(cells[0].1[&(2048, 50)], (0.0, 1));
        // without needle results the heatmaps are left out, and the earlier ones removed
        needle_heatmaps(&trials[2..], &dir.join("n")).unwrap();
        assert!(!dir.join("n.svg").exists() && !dir.join("n.png").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn score_axes_fit_their_panel() {
        assert_eq!(score_axis_top([13.3, 16.3].into_iter()), 20.0);
        assert_eq!(score_axis_top([86.0].into_iter()), 100.0);
        assert_eq!(score_axis_top([100.0].into_iter()), 100.0);
        assert_eq!(score_axis_top(std::iter::empty()), 10.0);
        assert_eq!(score_axis_top([0.0].into_iter()), 10.0);
    }

    #[test]
    fn needle_lengths_come_from_ids() {
        assert_eq!(target_len("needle/s0/n2048/pg-essays/d20"), Some(2048));
        assert_eq!(target_len("needle/s0/pg-essays"), None);
        assert_eq!(heat(0.0), RGBColor(215, 48, 39));
        assert_eq!(heat(1.0), RGBColor(26, 152, 80));
    }
}
