//! `flumen`: runs SQL stream pipelines on this machine, explains their plans,
//! and benchmarks them.

mod bench;
mod checkpoints;
mod run;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use flumen_connectors::StdoutFormat;

/// Batches are allocated and freed at a high rate; mimalloc reuses their
/// pages instead of returning them to the kernel and faulting them back in.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// flumen — a stream processor that runs SQL pipelines over Arrow batches.
#[derive(Parser)]
#[command(name = "flumen", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline of one or more SQL files, read in order, until its
    /// bounded sources end (or Ctrl-C stops it cleanly).
    Run(RunArgs),
    /// Print the logical plan of each query and the job graph: tasks,
    /// chained operators, parallelism and exchanges.
    Explain(PlanArgs),
    /// Measure throughput, CPU per core and peak memory of benchmark queries.
    Bench(bench::BenchArgs),
    /// List the checkpoints and savepoints in a checkpoint directory.
    Checkpoints(checkpoints::ListArgs),
}

#[derive(Args)]
struct PlanArgs {
    /// SQL files; tables declared in one are visible in the next.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Parallel subtasks of every operator (default: the number of cores).
    #[arg(short, long, value_parser = parse_parallelism)]
    parallelism: Option<usize>,
    /// Override a connector option on every table whose connector takes it,
    /// e.g. `--set events=1000000`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    overrides: Vec<(String, String)>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// How a bare SELECT prints its rows: table, json (one object per line) or csv.
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
    format: String,
    #[command(flatten)]
    checkpoints: run::CheckpointArgs,
}

/// A duration as flumen writes them: `200ms`, `10s`, `'10 s'`, `5 min`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let text = s.trim().trim_matches('\'').trim_matches('"');
    match flumen_sql::duration_nanos(text) {
        Some(ns) if ns > 0 => Ok(std::time::Duration::from_nanos(ns as u64)),
        _ => Err(format!(
            "'{s}' is not a duration such as 200ms, 10s or '10 s'"
        )),
    }
}

pub(crate) fn parse_parallelism(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not a number of subtasks (1 or more)")),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

/// The number of cores this process may use.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl PlanArgs {
    fn planner_options(
        &self,
        format: StdoutFormat,
        job_id: Option<String>,
    ) -> flumen_sql::PlannerOptions {
        flumen_sql::PlannerOptions {
            parallelism: self.parallelism.unwrap_or_else(cores),
            stdout_format: format,
            overrides: self.overrides.clone(),
            job_id,
        }
    }

    /// Reads and plans every file; `job_id` names the output of a job that
    /// resumes from a checkpoint.
    async fn plan(
        &self,
        format: StdoutFormat,
        job_id: Option<String>,
    ) -> Result<flumen_sql::Pipeline> {
        let mut planner = flumen_sql::Planner::new(self.planner_options(format, job_id));
        for file in &self.files {
            let sql = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read SQL file '{}'", file.display()))?;
            planner
                .add_script(&file.display().to_string(), &sql)
                .await?;
        }
        Ok(planner.build().await?)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .thread_name("flumen-worker")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, v2 and v3 alike).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// mimalloc v3's `mi_option_allow_thp` (`mimalloc.h`).
const MI_OPTION_ALLOW_THP: std::ffi::c_int = 43;

/// mimalloc returns freed memory to the kernel after 10 ms by default.
/// Stateful operators free and allocate large buffers every few seconds
/// (TopN compaction, expired join batches), and faulting those pages back
/// in cost a third of Nexmark q18's time; keep freed memory for 10 s.
///
/// Transparent huge pages are off for the process: with them every first
/// touch of a fresh 2 MiB region zeroes all of it, and state that grows
/// and frees in smaller pieces made the kernel zero 4.9 GiB for 1.1 GiB of
/// peak memory in q18 (TopN queries ran 1.3-2x slower; others unchanged).
fn tune_allocator() {
    // SAFETY: sets process-wide allocator options before any thread of
    // ours runs; mimalloc reads them on each later purge and mapping.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000);
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
    }
    // mimalloc has already mapped its first arena and asked for huge pages
    // there; the process flag stops the kernel from backing any mapping
    // with them from now on. Failing leaves THP on: slower, not wrong.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// When the process started: restart figures count from here.
pub(crate) static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    STARTED.get_or_init(std::time::Instant::now);
    tune_allocator();
    let cli = Cli::parse();
    let outcome = runtime().and_then(|rt| {
        rt.block_on(async {
            match cli.command {
                Command::Run(args) => {
                    let format = StdoutFormat::parse(&args.format)?;
                    run::run(&args.plan, format, &args.checkpoints).await
                }
                Command::Explain(args) => {
                    let pipeline = args.plan(StdoutFormat::Table, None).await?;
                    for (label, plan) in &pipeline.logical_plans {
                        println!("== {label}: logical plan ==\n{plan}\n");
                    }
                    println!("== job graph ==\n{}", pipeline.graph.describe());
                    Ok(())
                }
                Command::Bench(args) => bench::bench(args).await,
                Command::Checkpoints(args) => checkpoints::list(&args).await,
            }
        })
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if matches!(
                e.downcast_ref::<flumen_types::FlumenError>(),
                Some(flumen_types::FlumenError::OutputClosed)
            ) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_are_written_as_elsewhere_in_flumen() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("'10 s'"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1 min"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("200ms"));
    }
}
