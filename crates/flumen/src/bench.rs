//! `flumen bench nexmark`: runs a Nexmark query over the generator into a
//! blackhole, several times, and reports events/s, events/s per core (CPU
//! time of the whole process, generator included) and peak memory; with
//! `--rate-limit`, the generator runs in real time and the latency of the
//! rows written is reported; with `--json`, one JSON object per run for
//! scripts to compare.

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use flumen_connectors::StdoutFormat;
use flumen_runtime::Percentiles;

use crate::run::{Summary, execute};

const DDL: &str = include_str!("../../../benchmarks/nexmark/ddl/nexmark.sql");

/// The queries the driver knows, with their SQL.
const QUERIES: &[(&str, &str)] = &[
    ("q0", include_str!("../../../benchmarks/nexmark/q0.sql")),
    ("q1", include_str!("../../../benchmarks/nexmark/q1.sql")),
    ("q2", include_str!("../../../benchmarks/nexmark/q2.sql")),
    ("q3", include_str!("../../../benchmarks/nexmark/q3.sql")),
    ("q4", include_str!("../../../benchmarks/nexmark/q4.sql")),
    ("q5", include_str!("../../../benchmarks/nexmark/q5.sql")),
    ("q7", include_str!("../../../benchmarks/nexmark/q7.sql")),
    ("q8", include_str!("../../../benchmarks/nexmark/q8.sql")),
    ("q9", include_str!("../../../benchmarks/nexmark/q9.sql")),
    ("q10", include_str!("../../../benchmarks/nexmark/q10.sql")),
    ("q11", include_str!("../../../benchmarks/nexmark/q11.sql")),
    ("q12", include_str!("../../../benchmarks/nexmark/q12.sql")),
    ("q13", include_str!("../../../benchmarks/nexmark/q13.sql")),
    ("q14", include_str!("../../../benchmarks/nexmark/q14.sql")),
    ("q15", include_str!("../../../benchmarks/nexmark/q15.sql")),
    ("q16", include_str!("../../../benchmarks/nexmark/q16.sql")),
    ("q17", include_str!("../../../benchmarks/nexmark/q17.sql")),
    ("q18", include_str!("../../../benchmarks/nexmark/q18.sql")),
    ("q19", include_str!("../../../benchmarks/nexmark/q19.sql")),
    ("q20", include_str!("../../../benchmarks/nexmark/q20.sql")),
    ("q21", include_str!("../../../benchmarks/nexmark/q21.sql")),
    ("q22", include_str!("../../../benchmarks/nexmark/q22.sql")),
    (
        "skew_channel",
        include_str!("../../../benchmarks/skew_channel.sql"),
    ),
    (
        "skew_channel_running",
        include_str!("../../../benchmarks/skew_channel_running.sql"),
    ),
    (
        "skew_channel_distinct",
        include_str!("../../../benchmarks/skew_channel_distinct.sql"),
    ),
];

/// Blackholes for every column of each kind of event.
const KIND_SINKS: &str = "
CREATE TABLE person_sink (id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR,
    city VARCHAR, state VARCHAR, date_time TIMESTAMP(3), extra VARCHAR) WITH (connector = 'blackhole');
CREATE TABLE auction_sink (id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT,
    reserve BIGINT, date_time TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT, category BIGINT,
    extra VARCHAR) WITH (connector = 'blackhole');
CREATE TABLE bid_sink (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
    date_time TIMESTAMP(3), extra VARCHAR) WITH (connector = 'blackhole');
";

/// The kinds of event, as the tables of the Nexmark DDL name them.
const KINDS: [&str; 3] = ["person", "auction", "bid"];

/// Copies every event of `kinds` into its blackhole.
fn kinds_into_blackholes(kinds: &[&str]) -> String {
    let mut sql = KIND_SINKS.to_string();
    for kind in kinds {
        sql.push_str(&format!("INSERT INTO {kind}_sink SELECT * FROM {kind};\n"));
    }
    sql
}

/// Where the benchmark's events come from.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Input {
    /// The generator, as the job runs (its cost counts).
    Generator,
    /// Every batch built before the clock starts, served from memory: the
    /// figures are the operators' cost alone.
    Memory,
}

#[derive(Clone, Copy, ValueEnum)]
enum Suite {
    /// The Nexmark auction benchmark.
    Nexmark,
}

/// Options of `flumen bench`.
#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Benchmark suite.
    #[arg(value_enum)]
    suite: Suite,
    /// Query to run: q0–q5, q7–q22, `skew_channel` (bids per hot channel
    /// and window, `benchmarks/skew_channel.sql`), `skew_channel_running`
    /// (the same without a window: an updating result),
    /// `skew_channel_distinct` (distinct bidders per channel, for
    /// split-distinct aggregation), or `generator`
    /// (the source alone).
    /// q10 writes its files under the system's temporary directory,
    /// removed after each run.
    #[arg(long, default_value = "q1")]
    query: String,
    /// Generator events (all kinds).
    #[arg(long, default_value_t = 100_000_000)]
    events: u64,
    /// Events per second of event time.
    #[arg(long, default_value_t = 10_000_000)]
    rate: u64,
    /// Parallel subtasks of every operator.
    #[arg(short, long, default_value_t = 1, value_parser = crate::parse_parallelism)]
    parallelism: usize,
    /// Runs to take the median of.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// How long (event time) a regular join keeps a row, e.g. `10 s`; kept forever when unset.
    #[arg(long)]
    state_ttl: Option<String>,
    /// Take checkpoints this often (into a fresh directory under the
    /// system's temporary directory, removed after each run): 1s, 10s, …
    #[arg(long, value_parser = crate::parse_duration)]
    checkpoint_interval: Option<std::time::Duration>,
    /// With --checkpoint-interval: least time from the end of one
    /// checkpoint to the start of the next (Flink's min-pause).
    #[arg(long, value_parser = crate::parse_duration, requires = "checkpoint_interval")]
    checkpoint_min_pause: Option<std::time::Duration>,
    /// Print one JSON object per run on standard output (the summary
    /// line goes to standard error): query, parallelism, events (rows the
    /// sources really produced), rows_read, rows_written, wall_s, cpu_s
    /// (with its system part, sys_s, and the minor page faults behind most
    /// of it, page_faults), events_per_s, events_per_core_s, peak_rss_bytes, peak_state_bytes;
    /// with a TopN, the rows it kept at the end (kept_rows), their own
    /// Arrow size (kept_arrow_bytes) and the state holding them
    /// (kept_state_bytes); with checkpoints, how many completed
    /// (checkpoints), the largest's bytes (checkpoint_max_bytes), the
    /// longest's duration (checkpoint_max_ms) and the longest a task
    /// stopped for a snapshot (checkpoint_max_pause_ms).
    #[arg(long)]
    json: bool,
    /// Generate all three kinds of event even when the query reads fewer
    /// (q3 and q8 read persons and auctions), as Flink's Nexmark figures
    /// mean: the kinds the query does not read go into blackholes.
    #[arg(long)]
    generate_all: bool,
    /// Run the generator in real time at this many events per second (wall
    /// clock, all kinds, all subtasks) and report the latency of the rows
    /// written: from when each row's source event was due to when the sink
    /// wrote it, and for windows the emission delay, from when the
    /// watermark passed the window's end.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate_limit: Option<u64>,
    /// With --rate-limit: how long a partial batch waits for more rows
    /// before the generator sends it (the tables' `linger`), e.g. 1ms.
    #[arg(long, requires = "rate_limit")]
    linger: Option<String>,
    /// `generator` (default): events are generated as the job runs;
    /// `memory`: all input batches are built before the clock starts (keep
    /// --events within memory: ~100 bytes per bid read).
    #[arg(long, value_enum, default_value = "generator")]
    input: Input,
    /// A setting for the query, as `SET 'KEY' = 'VALUE'` would set it, e.g.
    /// `table.optimizer.agg-phase-strategy=TWO_PHASE`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

/// One run as `--json` prints it. `events` counts the rows the sources
/// produced: a query that reads only persons and auctions makes the
/// generator skip bids, and those are not counted.
fn run_json(query: &str, parallelism: usize, s: &Summary, latency: bool) -> serde_json::Value {
    let events = s.rows_in as f64;
    let mut json = serde_json::json!({
        "query": query,
        "parallelism": parallelism,
        "events": s.rows_in,
        "rows_read": s.rows_in,
        "rows_written": s.rows_out,
        "wall_s": s.seconds,
        "cpu_s": s.cpu_seconds,
        "sys_s": s.system_seconds,
        "page_faults": s.minor_faults,
        "events_per_s": events / s.seconds.max(1e-9),
        "events_per_core_s": events / s.cpu_seconds.max(1e-9),
        "peak_rss_bytes": s.peak_rss,
        "peak_state_bytes": s.peak_state,
    });
    if s.checkpoints > 0 {
        json["checkpoints"] = s.checkpoints.into();
        json["checkpoint_max_bytes"] = s.checkpoint_bytes.into();
        json["checkpoint_max_ms"] = s.checkpoint_max_ms.into();
        json["checkpoint_max_pause_ms"] = (s.checkpoint_max_pause_us as f64 / 1e3).into();
    }
    if s.kept.rows > 0 {
        json["kept_rows"] = s.kept.rows.into();
        json["kept_arrow_bytes"] = s.kept.arrow_bytes.into();
        json["kept_state_bytes"] = s.kept.state_bytes.into();
    }
    if latency {
        // Percentiles of no row would read as a latency of 0 ms: a run
        // whose rows all came out when its input ended has only the count.
        let l = &s.latency.latency;
        json["latency_rows"] = l.count.into();
        if l.count > 0 {
            json["latency_p50_ms"] = l.p50_ms.into();
            json["latency_p99_ms"] = l.p99_ms.into();
            json["latency_p999_ms"] = l.p999_ms.into();
            json["latency_max_ms"] = l.max_ms.into();
        }
        let e = &s.latency.emission_delay;
        if e.count > 0 {
            json["emission_delay_p50_ms"] = e.p50_ms.into();
            json["emission_delay_p99_ms"] = e.p99_ms.into();
            json["emission_delay_max_ms"] = e.max_ms.into();
        }
    }
    json
}

/// What a run reports when no row it wrote has a latency: rows that only
/// the end of the input released (a window still open then) have none.
const NO_LATENCY: &str = ", latency of no row (every row came out when the input ended; \
    for windows, a lower --rate of event time closes them during the run)";

/// The median of `values` (the upper one of an even count); NaN for none,
/// which callers rule out.
fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of `f` of the `of` percentiles of the runs that recorded a
/// row there.
fn median_where(
    runs: &[Summary],
    of: fn(&Summary) -> &Percentiles,
    f: fn(&Percentiles) -> f64,
) -> f64 {
    median_of(runs.iter().map(of).filter(|p| p.count > 0).map(f))
}

/// A run's latency as its progress line shows it.
fn latency_text(l: &flumen_runtime::LatencySummary) -> String {
    if l.latency.count == 0 {
        return NO_LATENCY.to_string();
    }
    let mut text = format!(
        ", latency p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms",
        l.latency.p50_ms, l.latency.p99_ms, l.latency.p999_ms, l.latency.max_ms
    );
    if l.emission_delay.count > 0 {
        text.push_str(&format!(
            ", emission delay p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            l.emission_delay.p50_ms, l.emission_delay.p99_ms, l.emission_delay.max_ms
        ));
    }
    text
}

fn query_sql(query: &str) -> Result<String> {
    if query == "generator" {
        return Ok(kinds_into_blackholes(&KINDS));
    }
    match QUERIES.iter().find(|(name, _)| *name == query) {
        // q13's side table is a file of the source tree; find it from anywhere.
        Some((_, sql)) => Ok(sql.replace(
            "'benchmarks/nexmark/data/side_input.csv'",
            concat!(
                "'",
                env!("CARGO_MANIFEST_DIR"),
                "/../../benchmarks/nexmark/data/side_input.csv'"
            ),
        )),
        None => {
            let names: Vec<&str> = QUERIES.iter().map(|q| q.0).collect();
            bail!("unknown query '{query}'; known: {}", names.join(", "))
        }
    }
}

/// The kinds of event the query does not read: no table scan of theirs is
/// in its logical plans.
async fn unread_kinds(args: &BenchArgs, sql: &str) -> Result<Vec<&'static str>> {
    let mut planner = flumen_sql::Planner::new(flumen_sql::PlannerOptions {
        parallelism: 1,
        stdout_format: StdoutFormat::Table,
        overrides: Default::default(),
        job_id: None,
    });
    planner.add_script("ddl/nexmark.sql", DDL).await?;
    planner
        .add_script(&format!("{}.sql", args.query), sql)
        .await?;
    let plans = planner.build().await?.logical_plans;
    Ok(KINDS
        .into_iter()
        .filter(|kind| {
            let scan = format!("TableScan: {kind} ");
            !plans.iter().any(|(_, plan)| plan.contains(&scan))
        })
        .collect())
}

pub(crate) async fn bench(args: BenchArgs) -> Result<()> {
    let Suite::Nexmark = args.suite;
    let mut sql = String::new();
    for setting in &args.settings {
        let Some((key, value)) = setting.split_once('=') else {
            bail!("--set takes KEY=VALUE, not '{setting}'");
        };
        sql.push_str(&format!("SET '{}' = '{}';\n", key.trim(), value.trim()));
    }
    sql.push_str(&query_sql(&args.query)?);
    let unread = if args.generate_all {
        unread_kinds(&args, &sql).await?
    } else {
        Vec::new()
    };
    let mut runs: Vec<Summary> = Vec::new();
    for run in 1..=args.runs.max(1) {
        let mut planner = flumen_sql::Planner::new(flumen_sql::PlannerOptions {
            parallelism: args.parallelism,
            stdout_format: StdoutFormat::Table,
            overrides: [
                ("events".to_string(), args.events.to_string()),
                ("rate".to_string(), args.rate.to_string()),
            ]
            .into_iter()
            .chain(
                args.state_ttl
                    .iter()
                    .map(|t| ("state_ttl".to_string(), t.clone())),
            )
            .chain(
                args.rate_limit
                    .map(|r| ("events_per_second".to_string(), r.to_string())),
            )
            .chain(
                args.linger
                    .iter()
                    .map(|l| ("linger".to_string(), l.clone())),
            )
            .chain(
                (args.input == Input::Memory)
                    .then(|| ("pregenerate".to_string(), "true".to_string())),
            )
            .collect(),
            job_id: None,
        });
        let dir = std::env::temp_dir().join(format!("flumen-bench-{}-{run}", std::process::id()));
        // q10's files go to this run's directory.
        let sql = sql.replace(
            "path = 'nexmark_q10'",
            &format!("path = '{}'", dir.join("q10").display()),
        );
        planner.add_script("ddl/nexmark.sql", DDL).await?;
        planner
            .add_script(&format!("{}.sql", args.query), &sql)
            .await?;
        if !unread.is_empty() {
            planner
                .add_script("generate-all.sql", &kinds_into_blackholes(&unread))
                .await?;
        }
        let pipeline = planner.build().await?;
        let checkpoints = match args.checkpoint_interval {
            Some(interval) => Some((
                flumen_runtime::CheckpointOptions {
                    store: flumen_state::checkpoint::CheckpointStore::open(
                        &dir.display().to_string(),
                    )?,
                    interval,
                    min_pause: args.checkpoint_min_pause.unwrap_or_default(),
                    retention: 3,
                    job_id: flumen_sql::new_job_id(),
                    first_id: 1,
                    restore: None,
                    allow_unmatched_state: false,
                },
                true,
            )),
            None => None,
        };
        let outcome = execute(&pipeline, false, checkpoints).await;
        let _ = std::fs::remove_dir_all(&dir);
        let s = outcome?;
        let checkpoints = if args.checkpoint_interval.is_some() {
            format!(
                ", {} checkpoints, the largest {:.1} MiB, the longest {} ms, longest pause {:.1} ms",
                s.checkpoints,
                s.checkpoint_bytes as f64 / 1048576.0,
                s.checkpoint_max_ms,
                s.checkpoint_max_pause_us as f64 / 1000.0
            )
        } else {
            String::new()
        };
        let latency = if args.rate_limit.is_some() {
            latency_text(&s.latency)
        } else {
            String::new()
        };
        eprintln!(
            "run {run}: {:.2} s, {:.2} M events/s, {:.2} M events/s per core, {} rows out{checkpoints}{latency}",
            s.seconds,
            args.events as f64 / s.seconds / 1e6,
            args.events as f64 / s.cpu_seconds / 1e6,
            s.rows_out
        );
        if args.json {
            let json = run_json(&args.query, args.parallelism, &s, args.rate_limit.is_some());
            println!("{json}");
        }
        runs.push(s);
    }
    let median = |f: &dyn Fn(&Summary) -> f64| median_of(runs.iter().map(f));
    let events = args.events as f64;
    let peak = runs.iter().map(|s| s.peak_rss).max().unwrap_or(0);
    let peak_state = runs.iter().map(|s| s.peak_state).max().unwrap_or(0);
    let last = runs.last().map(|s| s.kept).unwrap_or_default();
    let kept = if last.rows > 0 {
        let per_row = |bytes: u64| bytes as f64 / last.rows as f64;
        format!(
            ", kept rows {:.2} M: {:.0} B each in state, {:.0} B of Arrow ({:.2}x)",
            last.rows as f64 / 1e6,
            per_row(last.state_bytes),
            per_row(last.arrow_bytes),
            last.state_bytes as f64 / last.arrow_bytes.max(1) as f64
        )
    } else {
        String::new()
    };
    let latency = match args.rate_limit {
        Some(_) if runs.iter().all(|s| s.latency.latency.count == 0) => NO_LATENCY.to_string(),
        Some(_) => {
            // Each median over the runs that measured a row (see
            // `NO_LATENCY`).
            let latency =
                |f: fn(&Percentiles) -> f64| median_where(&runs, |s| &s.latency.latency, f);
            let mut text = format!(
                ", latency median p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms",
                latency(|p| p.p50_ms),
                latency(|p| p.p99_ms),
                latency(|p| p.p999_ms),
                latency(|p| p.max_ms),
            );
            if runs.iter().any(|s| s.latency.emission_delay.count > 0) {
                text.push_str(&format!(
                    ", emission delay median p99 {:.2} ms",
                    median_where(&runs, |s| &s.latency.emission_delay, |p| p.p99_ms)
                ));
            }
            text
        }
        None => String::new(),
    };
    let settings: String = args.settings.iter().map(|s| format!(" set {s}")).collect();
    let line = format!(
        "nexmark {}{settings} events={} rate={}{} parallelism={} runs={}{}{}: median {:.2} M events/s, {:.2} M events/s per core, {:.2} M source rows/s, peak memory {} MiB, peak state {:.1} MiB{kept}{latency}",
        args.query,
        args.events,
        args.rate,
        args.rate_limit
            .map(|r| format!(" rate_limit={r}"))
            .unwrap_or_default(),
        args.parallelism,
        runs.len(),
        args.state_ttl
            .as_ref()
            .map(|t| format!(" state_ttl={t}"))
            .unwrap_or_default(),
        args.checkpoint_interval
            .map(|t| format!(" checkpoint_interval={}ms", t.as_millis()))
            .unwrap_or_default(),
        median(&|s| events / s.seconds) / 1e6,
        median(&|s| events / s.cpu_seconds.max(1e-9)) / 1e6,
        median(&|s| s.rows_in as f64 / s.seconds) / 1e6,
        peak >> 20,
        peak_state as f64 / 1048576.0
    );
    if args.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}
