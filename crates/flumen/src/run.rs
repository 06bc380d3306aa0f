//! Runs a planned pipeline: progress on stderr while it runs, Ctrl-C to stop
//! it cleanly, and a summary at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;
use flumen_runtime::{RunOptions, run_job};
use tokio::signal::unix::{SignalKind, signal};

use crate::usage::usage;

/// What a finished run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub rows_in: u64,
    pub rows_out: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss: u64,
    /// The most bytes operator state held at once.
    pub peak_state: u64,
}

/// The output watermark as progress shows it: the event time up to which
/// results are complete, when there is one.
fn watermark_text(watermark: Option<i64>) -> String {
    match watermark {
        Some(i64::MAX) => ", watermark: input ended".to_string(),
        Some(ns) => arrow::temporal_conversions::timestamp_ns_to_datetime(ns)
            .map_or(String::new(), |t| format!(", watermark {t}")),
        None => String::new(),
    }
}

/// Runs `pipeline` to its end, printing progress and a summary on stderr.
pub(crate) async fn run(pipeline: flumen_sql::Pipeline) -> Result<Summary> {
    let summary = execute(pipeline, true).await?;
    Ok(summary)
}

/// Runs `pipeline`; `report` prints progress and the summary.
pub(crate) async fn execute(pipeline: flumen_sql::Pipeline, report: bool) -> Result<Summary> {
    let started = Instant::now();
    let cpu_before = usage().cpu_seconds;
    let handle = run_job(&pipeline.graph, &RunOptions::default())?;
    let metrics = handle.metrics();
    let stop = handle.stop_flag();
    let mut wait = Box::pin(handle.wait());
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let tty = std::io::stderr().is_terminal();
    // One signal stream for the whole run, so no Ctrl-C is missed between
    // two turns of the loop.
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut last_rows = 0;
    let mut stopping = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut wait => break outcome,
            _ = tick.tick(), if report => {
                let rows = metrics.rows_in();
                let line = format!(
                    "[{:>6.1}s] rows in {rows}, rows out {}, {} rows/s, state {} MiB{}",
                    started.elapsed().as_secs_f64(),
                    metrics.rows_out(),
                    rows - last_rows,
                    metrics.state_bytes() >> 20,
                    watermark_text(metrics.output_watermark())
                );
                last_rows = rows;
                if tty { eprint!("\r{line}\x1b[K") } else { eprintln!("{line}") }
            }
            _ = interrupts.recv() => {
                if stopping {
                    anyhow::bail!("aborted");
                }
                eprintln!("\nstopping: sources end now, in-flight rows drain to the sinks (Ctrl-C again to abort)");
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                stopping = true;
            }
        }
    };
    if report && tty && started.elapsed() >= Duration::from_secs(1) {
        eprintln!();
    }
    outcome?;
    let seconds = started.elapsed().as_secs_f64();
    let after = usage();
    let summary = Summary {
        rows_in: metrics.rows_in(),
        rows_out: metrics.rows_out(),
        seconds,
        cpu_seconds: after.cpu_seconds - cpu_before,
        peak_rss: after.peak_rss,
        peak_state: metrics.peak_state_bytes(),
    };
    if report {
        let per_core = summary.rows_in as f64 / summary.cpu_seconds.max(1e-9);
        eprintln!(
            "done: {} rows in, {} rows out in {:.2} s: {:.0} rows/s, {:.0} rows/s per core ({:.2} CPU s), peak memory {} MiB",
            summary.rows_in,
            summary.rows_out,
            seconds,
            summary.rows_in as f64 / seconds.max(1e-9),
            per_core,
            summary.cpu_seconds,
            summary.peak_rss >> 20
        );
        if summary.peak_state > 0 {
            eprintln!(
                "operator state: peak {:.1} MiB, {:.1} MiB at the end",
                summary.peak_state as f64 / 1048576.0,
                metrics.state_bytes() as f64 / 1048576.0
            );
        }
        let late = metrics.late_rows_dropped();
        if late > 0 {
            eprintln!("dropped {late} late rows (older than the watermark when they arrived)");
        }
        let dropped = metrics.bad_records_dropped();
        if dropped > 0 {
            eprintln!("dropped {dropped} malformed records (bad_data = 'drop')");
        }
    }
    Ok(summary)
}
