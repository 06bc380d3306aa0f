//! Runs a planned pipeline: progress on stderr while it runs, Ctrl-C to stop
//! it, and a summary at the end. With `--checkpoint-dir` the job takes
//! checkpoints, resumes from the newest one when started again, stops with
//! a savepoint on Ctrl-C or SIGTERM, and restarts from its last checkpoint
//! after a failure that a retry may cure.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use flumen_connectors::StdoutFormat;
use flumen_runtime::{CheckpointOptions, NodeKind, Restore, RunOptions, run_job};
use flumen_state::checkpoint::{CheckpointStore, Manifest, open_dir};
use flumen_types::{ErrorKind, FlumenError};
use tokio::signal::unix::{SignalKind, signal};

use crate::PlanArgs;
use crate::usage::usage;

/// Checkpoint options of `flumen run`.
#[derive(Args)]
pub(crate) struct CheckpointArgs {
    /// Take checkpoints into DIR (a local path or an object-store URL). A
    /// job started again with the same DIR resumes from its newest complete
    /// checkpoint; Ctrl-C or SIGTERM stops it with a savepoint.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<String>,
    /// Time between checkpoints: 200ms, 10s, '10 s', …
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration, requires = "checkpoint_dir")]
    checkpoint_interval: Duration,
    /// Least time from the end of one checkpoint to the start of the next
    /// (Flink's min-pause), for checkpoints that take longer than the
    /// interval: 5s, 500ms, …; none by default.
    #[arg(long, value_parser = crate::parse_duration, requires = "checkpoint_dir")]
    checkpoint_min_pause: Option<Duration>,
    /// Complete checkpoints kept (savepoints are never deleted).
    #[arg(long, default_value_t = 3, requires = "checkpoint_dir")]
    checkpoint_retention: usize,
    /// Start from the beginning even though DIR holds checkpoints of the job.
    #[arg(long, requires = "checkpoint_dir", conflicts_with = "from_savepoint")]
    fresh: bool,
    /// Resume from this savepoint (or checkpoint) directory.
    #[arg(long, value_name = "PATH", requires = "checkpoint_dir")]
    from_savepoint: Option<String>,
    /// Drop the state of operators the job no longer has (after a change of
    /// the SQL) instead of refusing to start.
    #[arg(long, requires = "checkpoint_dir")]
    allow_unmatched_state: bool,
    /// On Ctrl-C or SIGTERM end the sources and let every window close, as
    /// without checkpoints, instead of stopping with a savepoint.
    #[arg(long, requires = "checkpoint_dir")]
    drain: bool,
    /// How often a job restarts from its last checkpoint after a failure
    /// that a retry may cure (a lost connection, storage unavailable).
    #[arg(long, default_value_t = 3, requires = "checkpoint_dir")]
    restart_attempts: u32,
}

/// What a finished run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub rows_in: u64,
    pub rows_out: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// The system part of `cpu_seconds`.
    pub system_seconds: f64,
    /// Minor page faults during the run (first touches of fresh memory).
    pub minor_faults: u64,
    pub peak_rss: u64,
    /// The most bytes operator state held at once.
    pub peak_state: u64,
    /// Checkpoints completed.
    pub checkpoints: u64,
    /// Bytes of the largest checkpoint's state files.
    pub checkpoint_bytes: u64,
    /// The longest checkpoint, from its barriers to its manifest, in ms.
    pub checkpoint_max_ms: u64,
    /// The longest a task stopped processing for a snapshot, in µs.
    pub checkpoint_max_pause_us: u64,
    /// How long after their sources' rows became ready sinks wrote rows.
    pub latency: flumen_runtime::LatencySummary,
    /// The rows TopN operators kept at the end, and what holding them cost.
    pub kept: flumen_runtime::KeptRowsReport,
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

/// Plans the files and runs the job to its end (or until it is stopped).
pub(crate) async fn run(
    plan: &PlanArgs,
    format: StdoutFormat,
    args: &CheckpointArgs,
) -> Result<()> {
    let Some(dir) = &args.checkpoint_dir else {
        let pipeline = plan.plan(format, None).await?;
        execute(&pipeline, true, None).await?;
        return Ok(());
    };
    let store = CheckpointStore::open(dir)?;
    let initial = initial_restore(&store, args).await?;
    let job_id = initial
        .as_ref()
        .map_or_else(flumen_sql::new_job_id, |r| r.manifest.job_id.clone());
    let pipeline = plan.plan(format, Some(job_id.clone())).await?;
    if let Some(r) = initial.as_ref().filter(|r| r.manifest.finished) {
        if r.manifest.fingerprint != pipeline.graph.fingerprint() {
            bail!(
                "checkpoint {} in {} holds the end of a job planned from other SQL (its operators are not this job's); \
                 --fresh runs this job from the start",
                r.manifest.id,
                store.display()
            );
        }
        settle_sinks(&pipeline, r.manifest.id).await?;
        eprintln!(
            "the job already finished (checkpoint {} in {} holds its end); nothing to run. --fresh runs it again",
            r.manifest.id,
            store.display()
        );
        return Ok(());
    }
    if let Some(r) = &initial {
        let same = r.manifest.fingerprint == pipeline.graph.fingerprint();
        eprintln!(
            "resuming from {} {} of {} (parallelism {}){}",
            kind_name(&r.manifest),
            r.manifest.id,
            r.store.display(),
            r.manifest.parallelism,
            if same {
                ""
            } else {
                "; the plan changed since, operators are matched by id"
            }
        );
    }
    let mut restarts = 0;
    let mut restore = initial;
    loop {
        let first_id = next_free_id(&store).await?;
        let options = CheckpointOptions {
            store: store.clone(),
            interval: args.checkpoint_interval,
            min_pause: args.checkpoint_min_pause.unwrap_or_default(),
            retention: args.checkpoint_retention.max(1),
            job_id: job_id.clone(),
            first_id,
            restore: restore.clone(),
            allow_unmatched_state: args.allow_unmatched_state,
        };
        match execute(&pipeline, true, Some((options, args.drain))).await {
            Ok(_) => {
                if restarts > 0 {
                    eprintln!("the job restarted {restarts} time(s) from its checkpoints");
                }
                return Ok(());
            }
            Err(e) => {
                let retryable = e
                    .downcast_ref::<FlumenError>()
                    .is_some_and(|f| f.kind() == ErrorKind::Retryable);
                if !retryable || restarts >= args.restart_attempts {
                    if restarts > 0 {
                        eprintln!("the job restarted {restarts} time(s) from its checkpoints");
                    }
                    return Err(e);
                }
                restarts += 1;
                let backoff = Duration::from_millis(500 << (restarts - 1).min(5));
                let (latest, skipped) = store.latest().await?;
                for note in skipped {
                    eprintln!("{note}");
                }
                if let Some(m) = latest.filter(|m| m.job_id == job_id) {
                    restore = Some(Restore {
                        store: store.clone(),
                        manifest: m,
                    });
                }
                eprintln!(
                    "the job failed: {e:#}\nrestarting from {} in {} ms (attempt {restarts} of {})",
                    restore
                        .as_ref()
                        .map_or("the beginning".to_string(), |r| format!(
                            "checkpoint {}",
                            r.manifest.id
                        )),
                    backoff.as_millis(),
                    args.restart_attempts
                );
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

fn kind_name(m: &Manifest) -> &'static str {
    match m.kind {
        flumen_state::checkpoint::CheckpointKind::Checkpoint => "checkpoint",
        flumen_state::checkpoint::CheckpointKind::Savepoint => "savepoint",
    }
}

/// What a run with checkpoints starts from: the savepoint it was given, or
/// the newest usable checkpoint in the directory, or nothing (`--fresh`, or
/// no complete checkpoint yet). Refuses to start over when checkpoints
/// exist but none is usable: that would commit again what they committed.
async fn initial_restore(
    store: &CheckpointStore,
    args: &CheckpointArgs,
) -> Result<Option<Restore>> {
    if args.fresh {
        return Ok(None);
    }
    if let Some(path) = &args.from_savepoint {
        let (sp_store, name) = open_dir(path)?;
        let manifest = sp_store.read_manifest(&name).await?.with_context(|| {
            format!("'{path}' holds no complete savepoint or checkpoint (no manifest.json)")
        })?;
        sp_store
            .verify(&manifest)
            .await
            .with_context(|| format!("savepoint '{path}' cannot be used"))?;
        return Ok(Some(Restore {
            store: sp_store,
            manifest,
        }));
    }
    let (latest, skipped) = store.latest().await?;
    for note in &skipped {
        eprintln!("{note}");
    }
    match latest {
        Some(manifest) => Ok(Some(Restore {
            store: store.clone(),
            manifest,
        })),
        None if !skipped.is_empty() => bail!(
            "no usable checkpoint is left in '{}' and starting over would commit again what the job already committed; give --fresh to start over anyway",
            store.display()
        ),
        None => Ok(None),
    }
}

/// One past the largest checkpoint id in the directory.
async fn next_free_id(store: &CheckpointStore) -> Result<u64> {
    Ok(store.list().await?.iter().map(|l| l.id).max().unwrap_or(0) + 1)
}

/// Lets every sink finish what the job staged up to `committed`.
async fn settle_sinks(pipeline: &flumen_sql::Pipeline, committed: u64) -> Result<()> {
    for node in pipeline.graph.nodes() {
        if let NodeKind::Sink(f) = &node.kind {
            f.recover(Some(committed)).await?;
        }
    }
    Ok(())
}

/// Runs `pipeline`; `report` prints progress and the summary. With
/// checkpoint options, Ctrl-C or SIGTERM stops it with a savepoint unless
/// the flag beside them says to drain.
pub(crate) async fn execute(
    pipeline: &flumen_sql::Pipeline,
    report: bool,
    checkpoints: Option<(CheckpointOptions, bool)>,
) -> Result<Summary> {
    let started = Instant::now();
    let before = usage();
    let drain = checkpoints.as_ref().is_none_or(|(_, drain)| *drain);
    let options = RunOptions {
        checkpoints: checkpoints.map(|(c, _)| c),
        ..RunOptions::default()
    };
    let handle = run_job(&pipeline.graph, &options)?;
    for note in handle.notes() {
        eprintln!("{note}");
    }
    let metrics = handle.metrics();
    let checkpoint_stats = handle.checkpoint_stats();
    let checkpointing = options.checkpoints.is_some();
    let stop = handle.stop_flag();
    let savepoint_handle = handle.savepoint_requester();
    let mut wait = Box::pin(handle.wait());
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let tty = std::io::stderr().is_terminal();
    // One signal stream each for the whole run, so no signal is missed
    // between two turns of the loop.
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut terminates = signal(SignalKind::terminate())?;
    let mut last_rows = 0;
    let mut stopping = false;
    let outcome = loop {
        let signalled = tokio::select! {
            outcome = &mut wait => break outcome,
            _ = tick.tick(), if report => {
                for warning in checkpoint_stats.take_warnings() {
                    eprintln!("{warning}");
                }
                let rows = metrics.rows_in();
                let checkpoint = match checkpoint_stats.last_id() {
                    0 => String::new(),
                    id => format!(", checkpoint {id}"),
                };
                let line = format!(
                    "[{:>6.1}s] rows in {rows}, rows out {}, {} rows/s, state {} MiB{}{checkpoint}",
                    started.elapsed().as_secs_f64(),
                    metrics.rows_out(),
                    rows - last_rows,
                    metrics.state_bytes() >> 20,
                    watermark_text(metrics.output_watermark())
                );
                last_rows = rows;
                if tty { eprint!("\r{line}\x1b[K") } else { eprintln!("{line}") }
                false
            }
            _ = interrupts.recv() => true,
            _ = terminates.recv() => true,
        };
        if !signalled {
            continue;
        }
        if stopping {
            bail!("aborted");
        }
        stopping = true;
        if !drain && savepoint_handle.stop_with_savepoint() {
            eprintln!(
                "\nstopping with a savepoint: open windows and joins are kept in it and go on when the job resumes (Ctrl-C again to abort)"
            );
        } else {
            eprintln!(
                "\nstopping: sources end now, in-flight rows drain to the sinks (Ctrl-C again to abort)"
            );
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    if report && tty && started.elapsed() >= Duration::from_secs(1) {
        eprintln!();
    }
    for warning in checkpoint_stats.take_warnings() {
        eprintln!("{warning}");
    }
    outcome?;
    let seconds = started.elapsed().as_secs_f64();
    let after = usage();
    let summary = Summary {
        rows_in: metrics.rows_in(),
        rows_out: metrics.rows_out(),
        seconds,
        cpu_seconds: (after.cpu - before.cpu).as_secs_f64(),
        system_seconds: (after.system - before.system).as_secs_f64(),
        minor_faults: after.minor_faults - before.minor_faults,
        peak_rss: after.peak_rss,
        peak_state: metrics.peak_state_bytes(),
        kept: metrics.kept_rows(),
        checkpoints: checkpoint_stats.completed(),
        checkpoint_bytes: checkpoint_stats.max_bytes(),
        checkpoint_max_ms: checkpoint_stats.max_duration_ms(),
        checkpoint_max_pause_us: checkpoint_stats.max_pause_us(),
        latency: metrics.latency(),
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
        let l = &summary.latency.latency;
        if l.count > 0 {
            let e = &summary.latency.emission_delay;
            let emission = if e.count > 0 {
                format!(
                    "; windows' emission delay p50 {:.1} ms, p99 {:.1} ms",
                    e.p50_ms, e.p99_ms
                )
            } else {
                String::new()
            };
            eprintln!(
                "latency from a source row's arrival to its result's write: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{emission}",
                l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        if summary.peak_state > 0 {
            eprintln!(
                "operator state: peak {:.1} MiB, {:.1} MiB at the end",
                summary.peak_state as f64 / 1048576.0,
                metrics.state_bytes() as f64 / 1048576.0
            );
        }
        if checkpointing {
            eprintln!(
                "checkpoints: {} completed, {} failed, the last ({}) {:.1} MiB in {} ms, the longest took {} ms and paused a task {:.1} ms",
                checkpoint_stats.completed(),
                checkpoint_stats.failed(),
                checkpoint_stats.last_id(),
                checkpoint_stats.last_bytes() as f64 / 1048576.0,
                checkpoint_stats.last_duration_ms(),
                checkpoint_stats.max_duration_ms(),
                checkpoint_stats.max_pause_us() as f64 / 1000.0
            );
            if let Some(restored) = metrics.restored_after() {
                // The job started this long after the process (planning,
                // choosing and verifying the checkpoint).
                let before = crate::STARTED
                    .get()
                    .map_or(0, |t| (t.elapsed() - started.elapsed()).as_millis());
                eprintln!(
                    "resumed: state restored {} ms after the job started ({before} ms after the process), first output after {} ms",
                    restored.as_millis(),
                    metrics
                        .first_output_after()
                        .map_or("none".to_string(), |d| d.as_millis().to_string())
                );
            }
            if let Some(savepoint) = checkpoint_stats.savepoint() {
                eprintln!(
                    "savepoint: {savepoint} (resume with --from-savepoint {savepoint}, or start again with the same --checkpoint-dir)"
                );
            }
        }
        let late = metrics.late_rows_dropped();
        if late > 0 {
            eprintln!("dropped {late} late rows (older than the watermark when they arrived)");
        }
        let dropped = metrics.bad_records_dropped();
        if dropped > 0 {
            eprintln!("dropped {dropped} malformed records (bad_data = 'drop')");
        }
        let dead = metrics.bad_records_dead_lettered();
        if dead > 0 {
            eprintln!(
                "sent {dead} malformed records to the dead-letter output (bad_data = 'dead_letter')"
            );
        }
    }
    Ok(summary)
}
