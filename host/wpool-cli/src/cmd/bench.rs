//! `wpool bench KERNEL INPUT... -j 1,2,4,8`: the same run at several worker
//! counts, as the speedup table of the seed article (processes, time,
//! speedup, efficiency), on stdout or as JSON, and as an SVG chart.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::driver::{items, map_kernel, Setup};
use crate::exit::Exit;
use crate::flags::BenchCmd;
use crate::say;
use crate::signals::{self, Interrupts};

/// One worker count's runs.
struct Row {
    workers: usize,
    /// Each run's wall time, in the order they ran.
    times: Vec<Duration>,
}

impl Row {
    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort_unstable();
        let n = t.len();
        if n % 2 == 1 {
            t[n / 2]
        } else {
            (t[n / 2 - 1] + t[n / 2]) / 2
        }
    }
}

pub fn run(mut cmd: BenchCmd) -> Result<Exit> {
    let interrupts = Interrupts::install()?;
    let cores = num_cpus::get();
    // The list is bench's own; every run below sets its worker count.
    let mut counts = match cmd.run.jobs.take() {
        Some(jobs) => jobs.0,
        None => std::iter::successors(Some(1usize), |n| Some(n * 2)).take_while(|&n| n <= cores.max(1)).collect(),
    };
    // Rows, chart and speedups go from the smallest count up.
    counts.sort_unstable();
    let args = &cmd.run;
    if args.joblog.is_some() {
        anyhow::bail!("--joblog: wpool bench records nothing (it runs the items many times)");
    }
    if args.launcher.is_some() || args.slurm {
        anyhow::bail!("wpool bench runs local workers only (no --launcher, no --slurm)");
    }
    let kernel = map_kernel(&cmd.kernel, &args.inputs)?;
    let setup = Setup::new(args)?;
    let init = match &cmd.init {
        Some(file) => Some(std::fs::read(file).with_context(|| format!("--init {}", file.display()))?),
        None => None,
    };
    // Read once: every run maps the same items from memory, so the input's
    // speed is not measured.
    let (items, _) = items(args)?;
    let read_error = items.error();
    let items: Vec<Vec<u8>> = items.collect();
    if let Some(e) = read_error.lock().unwrap().take() {
        anyhow::bail!("{e}");
    }
    if items.is_empty() {
        anyhow::bail!("no items to run: the inputs are empty");
    }

    let mut rows: Vec<Row> = counts.iter().map(|&workers| Row { workers, times: Vec::new() }).collect();
    let mut failed = 0;
    // Round-robin over the worker counts, so that a machine that slows
    // down (or speeds up) part-way does not favour one count.
    for _ in 0..cmd.repeat {
        for row in &mut rows {
            let start = Instant::now();
            let mut builder = setup.builder(kernel.clone(), args, row.workers, row.workers);
            if let Some(config) = &init {
                builder = builder.init(config.clone());
            }
            let mut pool = builder.build()?;
            interrupts.watch(&pool);
            let results = pool.map(items.iter().map(|i| i.as_slice()));
            drop(pool);
            let took = start.elapsed();
            if let Some(sig) = interrupts.received() {
                say(format_args!("wpool: {}", signals::name(sig)));
                return Ok(Exit::Signal(sig));
            }
            let results = results?;
            failed = results.iter().filter(|r| r.is_err()).count();
            row.times.push(took);
        }
    }

    let name = cmd.kernel.file_name().map_or_else(|| cmd.kernel.display().to_string(), |n| n.to_string_lossy().into());
    let base = &rows[0];
    let base_time = base.median().as_secs_f64();
    let speedup = |row: &Row| base_time / row.median().as_secs_f64() * base.workers as f64;
    if args.json {
        let json = serde_json::json!({
            "kernel": cmd.kernel.display().to_string(),
            "items": items.len(),
            "failed_items": failed,
            "cores": cores,
            "repeat": cmd.repeat,
            "rows": rows.iter().map(|r| serde_json::json!({
                "workers": r.workers,
                "seconds": r.times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
                "median_seconds": r.median().as_secs_f64(),
                "speedup": speedup(r),
                "efficiency": speedup(r) / r.workers as f64,
            })).collect::<Vec<_>>(),
        });
        println!("{json}");
    } else {
        println!(
            "{name}: {} items, median of {} run{} at each worker count, {cores} cores",
            items.len(),
            cmd.repeat,
            if cmd.repeat == 1 { "" } else { "s" }
        );
        println!("{:>9}  {:>10}  {:>8}  {:>10}", "processes", "time", "speedup", "efficiency");
        for r in &rows {
            let note = if r.workers > cores { "  (more workers than cores)" } else { "" };
            println!(
                "{:>9}  {:>8.3} s  {:>7.2}x  {:>8.0} %{note}",
                r.workers,
                r.median().as_secs_f64(),
                speedup(r),
                100.0 * speedup(r) / r.workers as f64
            );
        }
    }
    if failed > 0 {
        say(format_args!("wpool: {failed} of {} items failed in each run (timed all the same)", items.len()));
    }
    if let Some(path) = &cmd.svg {
        let points: Vec<(usize, f64)> = rows.iter().map(|r| (r.workers, speedup(r))).collect();
        write_svg(path, &name, &points).with_context(|| format!("--svg {}", path.display()))?;
    }
    Ok(Exit::Success)
}

/// The chart: measured speedup against worker count, one point each, over
/// the ideal line (speedup = workers). Written whole or not at all.
fn write_svg(path: &Path, name: &str, points: &[(usize, f64)]) -> Result<()> {
    use plotters::prelude::*;
    let max_workers = points.iter().map(|p| p.0).max().unwrap_or(1);
    let max_speedup = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let top = (max_workers as f64).max(max_speedup).ceil() + 0.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("wpool bench: {name}"), ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..(max_workers as f64 + 0.5), 0f64..top)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc("worker processes")
            .y_desc("speedup")
            .x_labels(max_workers.min(16) + 1)
            .draw()
            .map_err(draw_error)?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (top, top)], BLACK.mix(0.4)))
            .map_err(draw_error)?
            .label("ideal")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
        let measured: Vec<(f64, f64)> = points.iter().map(|&(w, s)| (w as f64, s)).collect();
        chart.draw_series(LineSeries::new(measured.iter().copied(), BLUE)).map_err(draw_error)?;
        chart
            .draw_series(measured.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
            .map_err(draw_error)?
            .label("measured")
            // Not a circle: the chart's circles are its points, one per
            // worker count.
            .legend(|(x, y)| Rectangle::new([(x + 6, y - 4), (x + 14, y + 4)], BLUE.filled()));
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    let tmp = path.with_extension("svg.tmp");
    std::fs::write(&tmp, svg).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn draw_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}
