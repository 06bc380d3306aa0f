//! The `flumen` binary: golden SQL files with their expected output, SQL
//! errors with their expected message, help and explain.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// This crate's directory, read when the test runs (cargo and nextest set
/// it): a test binary reused from a checkout elsewhere (the target directory
/// is shared) would otherwise read that checkout's files.
fn crate_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

fn golden_dir() -> PathBuf {
    crate_dir().join("tests/golden")
}

fn flumen(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flumen"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("flumen runs")
}

fn sql_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {}", dir.display());
    files
}

fn sorted_lines(s: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = s.lines().collect();
    lines.sort();
    lines
}

/// The rows an updating CSV output (first column `op`) ends with: inserts
/// and update-afters add a row, deletes and update-befores take one back.
/// Other outputs are their sorted lines.
fn final_rows(s: &str) -> Vec<String> {
    if !s.starts_with("op,") {
        return sorted_lines(s).into_iter().map(str::to_string).collect();
    }
    let mut rows: Vec<String> = Vec::new();
    for line in s.lines().skip(1) {
        let (op, row) = line.split_once(',').expect("op column");
        match op {
            "+I" | "+U" => rows.push(row.to_string()),
            "-U" | "-D" => {
                let at = rows
                    .iter()
                    .position(|r| r == row)
                    .unwrap_or_else(|| panic!("{op} of a row never added: {row}"));
                rows.swap_remove(at);
            }
            other => panic!("unknown op {other}"),
        }
    }
    rows.sort();
    rows
}

#[test]
fn golden_queries_print_their_expected_rows() {
    let dir = golden_dir();
    for sql in sql_files(&dir) {
        let name = sql.file_name().unwrap().to_str().unwrap();
        let expected = std::fs::read_to_string(sql.with_extension("out")).unwrap();
        for parallelism in ["1", "2"] {
            let out = flumen(&["run", name, "--format", "csv", "-p", parallelism], &dir);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{name}: {stderr}");
            let stdout = String::from_utf8(out.stdout).unwrap();
            // Files marked "golden: final rows" are updating results whose
            // intermediate rows depend on which input arrives first.
            let exact = !std::fs::read_to_string(&sql)
                .unwrap()
                .contains("-- golden: final rows");
            if parallelism == "1" && exact {
                assert_eq!(stdout, expected, "{name} at parallelism 1");
            } else {
                assert_eq!(
                    final_rows(&stdout),
                    final_rows(&expected),
                    "{name} at parallelism {parallelism}"
                );
            }
            assert!(
                stderr.contains("rows out"),
                "{name} ends with a summary: {stderr}"
            );
        }
    }
}

#[test]
fn golden_errors_print_their_expected_message() {
    let dir = golden_dir().join("errors");
    for sql in sql_files(&dir) {
        let name = sql.file_name().unwrap().to_str().unwrap();
        let expected = std::fs::read_to_string(sql.with_extension("err")).unwrap();
        let out = flumen(&["run", name], &dir);
        assert_eq!(out.status.code(), Some(1), "{name} exits 1");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().next(), expected.lines().next(), "{name}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn help_describes_every_command() {
    let out = flumen(&["--help"], &golden_dir());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "explain", "bench"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = flumen(&["run", "--help"], &golden_dir());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--parallelism", "--format", "--set"] {
        assert!(text.contains(flag), "{text}");
    }
}

#[test]
fn zero_parallelism_is_refused() {
    let out = flumen(&["run", "top_n.sql", "-p", "0"], &golden_dir());
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("is not a number of subtasks (1 or more)"),
        "{text}"
    );
}

#[test]
fn explain_prints_plan_and_job_graph() {
    let root = crate_dir().join("../..");
    let out = flumen(
        &[
            "explain",
            "benchmarks/nexmark/ddl/nexmark.sql",
            "benchmarks/nexmark/q2.sql",
            "-p",
            "3",
        ],
        &root,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        "INSERT INTO nexmark_q2: logical plan",
        "TableScan: bid projection=[auction, price]",
        "Task 0 (parallelism 3)",
        "Filter: auction@0 % 123 = 0",
        "watermarks: date_time AS date_time - INTERVAL '4' SECOND",
        "Sink: blackhole",
    ] {
        assert!(text.contains(part), "missing {part:?} in:\n{text}");
    }
}

#[test]
fn an_updating_result_is_shuffled_by_the_sinks_key() {
    let work = tempfile::tempdir().unwrap();
    let job = |key: &str| {
        format!(
            "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3))
               WITH (connector = 'nexmark', kind = 'bid', events = '1000');
             CREATE TABLE out (bidder BIGINT, auction BIGINT, n BIGINT{key}) WITH (connector = 'blackhole');
             INSERT INTO out SELECT bidder, auction, count(*) FROM bid GROUP BY auction, bidder;"
        )
    };
    let explain = |sql: &str, p: &str| {
        std::fs::write(work.path().join("job.sql"), sql).unwrap();
        let out = flumen(&["explain", "job.sql", "-p", p], work.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let keyed = explain(&job(", PRIMARY KEY (bidder) NOT ENFORCED"), "2");
    assert!(
        keyed.contains("<- hash[0] exchange from Task 1\n  [3] Sink: blackhole"),
        "{keyed}"
    );
    // No key, or one subtask: the sink is chained as before.
    for text in [
        explain(&job(""), "2"),
        explain(&job(", PRIMARY KEY (bidder) NOT ENFORCED"), "1"),
    ] {
        assert!(!text.contains("Task 2"), "{text}");
    }
}

#[test]
fn a_join_broadcasts_a_small_file_table_and_forwards_the_other_side() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("side.csv"), "k,name\n0,zero\n1,one\n").unwrap();
    let job = |setting: &str, join: &str| {
        format!(
            "{setting}
             CREATE TABLE bid (auction BIGINT, price BIGINT)
               WITH (connector = 'nexmark', kind = 'bid', events = '1000');
             CREATE TABLE side (k BIGINT, name VARCHAR)
               WITH (connector = 'filesystem', path = 'side.csv', format = 'csv');
             CREATE TABLE out (auction BIGINT, name VARCHAR) WITH (connector = 'blackhole');
             INSERT INTO out SELECT b.auction, s.name FROM {join} ON b.auction % 2 = s.k;"
        )
    };
    let explain = |sql: &str| {
        std::fs::write(work.path().join("job.sql"), sql).unwrap();
        let out = flumen(&["explain", "job.sql", "-p", "2"], work.path());
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), text + &err)
    };
    let inner = "bid AS b JOIN side AS s";
    let (ok, text) = explain(&job("", inner));
    assert!(ok, "{text}");
    for part in [
        "<- forward exchange from Task 0",
        "<- broadcast exchange from Task 1",
        "right side broadcast",
    ] {
        assert!(text.contains(part), "missing {part:?} in:\n{text}");
    }
    // Broadcasting turned off, a table over the threshold, a table whose
    // unmatched rows the join emits (the preserved side of a LEFT join), or
    // rows that state_ttl drops (each subtask by its own watermark): both
    // sides are hashed.
    for (setting, join) in [
        (
            "SET 'table.optimizer.join.broadcast-threshold' = '-1';",
            inner,
        ),
        (
            "SET 'table.optimizer.join.broadcast-threshold' = '10';",
            inner,
        ),
        ("", "side AS s LEFT JOIN bid AS b"),
        ("SET state_ttl = '10 s';", inner),
    ] {
        let (ok, text) = explain(&job(setting, join));
        assert!(ok, "{text}");
        assert!(!text.contains("broadcast"), "{setting} {join}:\n{text}");
        assert_eq!(
            text.matches("] exchange from Task").count(),
            2,
            "{setting} {join}: two hash exchanges into the join:\n{text}"
        );
    }
    let (ok, text) = explain(&job(
        "SET 'table.optimizer.join.broadcast-threshold' = 'small';",
        inner,
    ));
    assert!(!ok);
    assert!(
        text.contains("must be a number of bytes, or -1 to never broadcast, not 'small'"),
        "{text}"
    );
}

#[test]
fn bench_json_prints_one_object_per_run_counting_only_generated_events() {
    let work = tempfile::tempdir().unwrap();
    let runs = |query: &str, extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec![
            "bench", "nexmark", "--query", query, "--events", "20000", "--runs", "2", "-p", "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = flumen(&args, work.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let q1 = runs("q1", &[]);
    assert_eq!(q1.len(), 2);
    for run in &q1 {
        for key in [
            "query",
            "parallelism",
            "events",
            "rows_read",
            "rows_written",
            "wall_s",
            "cpu_s",
            "sys_s",
            "page_faults",
            "events_per_s",
            "events_per_core_s",
            "peak_rss_bytes",
            "peak_state_bytes",
        ] {
            assert!(run.get(key).is_some(), "no {key} in {run}");
        }
        assert_eq!(run["query"], "q1");
        assert_eq!(run["parallelism"], 2);
        // q1 reads bids only: 46 of every 50 events.
        assert_eq!(run["events"], 18_400);
        assert_eq!(run["rows_written"], 18_400);
        let rate = run["events"].as_f64().unwrap() / run["wall_s"].as_f64().unwrap();
        assert!((rate / run["events_per_s"].as_f64().unwrap() - 1.0).abs() < 1e-9);
        assert!(run.get("kept_rows").is_none(), "q1 keeps no rows: {run}");
        let sys = run["sys_s"].as_f64().unwrap();
        assert!(sys >= 0.0 && sys <= run["cpu_s"].as_f64().unwrap(), "{run}");
    }
    // A TopN reports the rows it kept, their own Arrow size (a bid is ~234
    // bytes: four integers, a channel, a ~96-byte url, ~82 bytes of extra)
    // and the state that holds them.
    let q19 = runs("q19", &[]);
    let kept = q19[0]["kept_rows"].as_u64().unwrap();
    assert!(kept > 1_000 && kept < 18_400, "{}", q19[0]);
    let arrow = q19[0]["kept_arrow_bytes"].as_u64().unwrap() / kept;
    assert!((150..300).contains(&arrow), "{arrow} bytes per row");
    assert!(q19[0]["kept_state_bytes"].as_u64().unwrap() > kept * arrow);
    // Its kept rows are fresh memory: at least a fault per 4 KiB of them.
    let faults = q19[0]["page_faults"].as_u64().unwrap();
    assert!(
        faults >= kept * arrow / 4096,
        "{faults} page faults: {}",
        q19[0]
    );
    assert!(q19[0].get("checkpoints").is_none(), "{}", q19[0]);
    // With checkpoints, at least the one at the end of the input, and what
    // the largest wrote.
    let checkpointed = runs("q19", &["--checkpoint-interval", "1s"]);
    assert!(checkpointed[0]["checkpoints"].as_u64().unwrap() >= 1);
    let bytes = checkpointed[0]["checkpoint_max_bytes"].as_u64().unwrap();
    assert!(bytes > kept * 8, "{bytes} bytes: {}", checkpointed[0]);
    for key in ["checkpoint_max_ms", "checkpoint_max_pause_ms"] {
        assert!(checkpointed[0][key].as_f64().is_some(), "no {key}");
    }
    // The skewed-channel benchmark runs as the Nexmark queries do.
    let skew = runs("skew_channel", &[]);
    assert_eq!(skew[0]["events"], 18_400);
    assert!(skew[0]["rows_written"].as_u64().unwrap() > 4, "{}", skew[0]);
    // Batches built before the run count as the same events.
    let memory = runs("q1", &["--input", "memory"]);
    assert_eq!(memory[0]["events"], 18_400);
    assert_eq!(memory[0]["rows_written"], 18_400);
    // q8 reads persons and auctions: the bids the generator skips do not
    // count, unless all kinds are generated.
    assert_eq!(runs("q8", &[])[0]["events"], 1_600);
    assert_eq!(runs("q8", &["--generate-all"])[0]["events"], 20_000);
    assert_eq!(runs("generator", &["--generate-all"])[0]["events"], 20_000);
}

/// Sliding windows share panes only where that gives the same rows: the
/// window aggregate's input carries each bid once (its last window) and is
/// shuffled by the group key alone; a filter or an aggregate that reads the
/// window keeps one row per window.
#[test]
fn sliding_windows_share_panes_where_nothing_reads_the_window() {
    let work = tempfile::tempdir().unwrap();
    let explain = |select: &str| {
        let sql = format!(
            "CREATE TABLE bid (auction BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3),
                 WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'nexmark', kind = 'bid', events = '1000');
             CREATE TABLE out (channel VARCHAR, s TIMESTAMP(3), e TIMESTAMP(3), n BIGINT)
               WITH (connector = 'blackhole');
             INSERT INTO out {select};"
        );
        std::fs::write(work.path().join("job.sql"), sql).unwrap();
        let out = flumen(&["explain", "job.sql", "-p", "2"], work.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let hop = "FROM hop(bid, descriptor(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)";
    let panes = explain(&format!(
        "SELECT channel, window_start, window_end, count(*) {hop} WHERE price > 10 \
         GROUP BY channel, window_start, window_end"
    ));
    assert!(panes.contains("last element only (panes)"), "{panes}");
    assert!(
        panes.contains("built from panes of 2000 ms (keys [2] move with the window)"),
        "{panes}"
    );
    assert!(panes.contains("<- hash[0] exchange"), "{panes}");
    for select in [
        format!(
            "SELECT channel, window_start, window_end, count(*) {hop} \
             WHERE date_part('second', window_start) < 30 GROUP BY channel, window_start, window_end"
        ),
        format!(
            "SELECT channel, window_start, window_end, max(date_part('second', window_start)) {hop} \
             GROUP BY channel, window_start, window_end"
        ),
        format!(
            "SELECT 'all', window_start, window_end, count(*) {hop} GROUP BY window_start, window_end"
        ),
    ] {
        let text = explain(&select);
        assert!(!text.contains("panes"), "{select}:\n{text}");
        assert!(!text.contains("<- hash[0] exchange"), "{select}:\n{text}");
    }
}

/// The stdout of a run that must have succeeded.
fn succeeded(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn two_phase_aggregation_is_set_by_flinks_setting_and_skips_distinct() {
    let work = tempfile::tempdir().unwrap();
    let explain = |set: &str, aggregate: &str| {
        let sql = format!(
            "{set}
             CREATE TABLE bid (auction BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3),
                 WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'nexmark', kind = 'bid', events = '1000');
             CREATE TABLE out (channel VARCHAR, s TIMESTAMP(3), e TIMESTAMP(3), n BIGINT)
               WITH (connector = 'blackhole');
             INSERT INTO out SELECT channel, window_start, window_end, {aggregate}
               FROM tumble(bid, descriptor(date_time), INTERVAL '10' SECOND)
               GROUP BY channel, window_start, window_end;"
        );
        std::fs::write(work.path().join("job.sql"), sql).unwrap();
        flumen(&["explain", "job.sql", "-p", "2"], work.path())
    };
    let set = "SET 'table.optimizer.agg-phase-strategy' = 'TWO_PHASE';";
    let two = succeeded(explain(set, "count(*)"));
    assert!(
        two.contains("LocalAggregate: partial states per batch"),
        "{two}"
    );
    assert!(two.contains("merging partial states"), "{two}");
    // The local aggregate runs in the source's task: only its partial rows
    // cross the hash exchange.
    let local = two.find("LocalAggregate").unwrap();
    let hash = two.find("<- hash").unwrap();
    assert!(local < hash, "{two}");
    for plan in [
        succeeded(explain("", "count(*)")),
        succeeded(explain(
            "SET 'table.optimizer.agg-phase-strategy' = 'ONE_PHASE';",
            "count(*)",
        )),
        succeeded(explain(set, "count(DISTINCT auction) + count(*)")),
    ] {
        assert!(!plan.contains("LocalAggregate"), "{plan}");
        assert!(!plan.contains("merging partial states"), "{plan}");
    }
    let wrong = explain(
        "SET 'table.optimizer.agg-phase-strategy' = 'THREE_PHASE';",
        "count(*)",
    );
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(
        stderr.contains("'AUTO', 'ONE_PHASE' or 'TWO_PHASE', not 'THREE_PHASE'"),
        "{stderr}"
    );
}

/// Without a window, two-phase aggregation plans a local aggregate before
/// the exchange too: with row counts over an append-only input, and with a
/// group's additions and retractions in rows apart over an updating one.
#[test]
fn two_phase_plans_non_windowed_aggregates_over_updating_inputs() {
    let work = tempfile::tempdir().unwrap();
    let sql = "SET 'table.optimizer.agg-phase-strategy' = 'TWO_PHASE';
         CREATE TABLE bid (auction BIGINT, price BIGINT)
           WITH (connector = 'nexmark', kind = 'bid', events = '1000');
         CREATE TABLE out (c BIGINT, auctions BIGINT, mean DOUBLE) WITH (connector = 'blackhole');
         INSERT INTO out SELECT c, count(*), avg(top)
           FROM (SELECT auction, count(*) AS c, max(price) AS top FROM bid GROUP BY auction)
           GROUP BY c;";
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    let out = flumen(&["explain", "job.sql", "-p", "2"], work.path());
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(plan.matches("LocalAggregate").count(), 2, "{plan}");
    assert_eq!(plan.matches("merging partial states").count(), 2, "{plan}");
    assert!(plan.contains("additions and retractions apart"), "{plan}");
}

/// Flink's split-distinct setting plans a non-windowed COUNT(DISTINCT) as
/// an aggregate by key and bucket of the distinct value, then one summing
/// the buckets per key; windowed aggregates, aggregates that cannot be
/// summed and plans without the setting stay one aggregate.
#[test]
fn split_distinct_is_set_by_flinks_setting_for_non_windowed_aggregates() {
    let work = tempfile::tempdir().unwrap();
    let explain = |set: &str, select: &str| {
        let sql = format!(
            "{set}
             CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR,
                 date_time TIMESTAMP(3), WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'nexmark', kind = 'bid', events = '1000');
             CREATE TABLE out (channel VARCHAR, n BIGINT, m BIGINT) WITH (connector = 'blackhole');
             INSERT INTO out {select};"
        );
        std::fs::write(work.path().join("job.sql"), sql).unwrap();
        flumen(&["explain", "job.sql", "-p", "2"], work.path())
    };
    let on = "SET 'table.optimizer.distinct-agg.split.enabled' = 'true';
              SET 'table.optimizer.distinct-agg.split.bucket-num' = '64';";
    let running = "SELECT channel, count(DISTINCT bidder), count(*) FROM bid GROUP BY channel";
    let split = succeeded(explain(on, running));
    assert!(split.contains("flumen_bucket(bidder@0, 64)"), "{split}");
    assert!(
        split.contains("[sum(count(DISTINCT bid.bidder)), sum(count(Int64(1)))], retracting"),
        "{split}"
    );
    assert_eq!(split.matches("<- hash").count(), 2, "{split}");
    let windowed = "SELECT channel, count(DISTINCT bidder), count(*)
        FROM tumble(bid, descriptor(date_time), INTERVAL '10' SECOND)
        GROUP BY channel, window_start, window_end";
    for plan in [
        succeeded(explain("", running)),
        succeeded(explain(on, windowed)),
        succeeded(explain(
            on,
            "SELECT channel, count(DISTINCT bidder), max(price) FROM bid GROUP BY channel",
        )),
    ] {
        assert!(!plan.contains("flumen_bucket"), "{plan}");
        assert_eq!(plan.matches("<- hash").count(), 1, "{plan}");
    }
    let wrong = explain(
        "SET 'table.optimizer.distinct-agg.split.bucket-num' = '0';",
        running,
    );
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("bucket-num must be a positive integer, not '0'"),
        "{stderr}"
    );
}

/// `--rate-limit` runs the generator in real time and measures latency from
/// when each row was due, not from when its batch left the source: with a
/// 40 ms linger the first rows of every batch waited about 40 ms for the
/// others. Rows a watermark released (q7's windows) also count as emission
/// delay; q1 has none. A run that measured no row reports no percentiles.
#[test]
fn bench_rate_limit_reports_latency_from_when_rows_were_due() {
    let work = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["bench", "nexmark", "--runs", "1", "-p", "2", "--json"];
        all.extend_from_slice(args);
        let out = flumen(&all, work.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let q1 = run(&[
        "--query",
        "q1",
        "--events",
        "8000",
        "--rate-limit",
        "20000",
        "--linger",
        "40ms",
    ]);
    let ms = |key: &str| {
        q1[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key} in {q1}"))
    };
    assert!(ms("latency_p50_ms") >= 15.0, "{q1}");
    assert!(ms("latency_max_ms") >= 38.0, "{q1}");
    assert!(ms("latency_p50_ms") <= ms("latency_p99_ms"), "{q1}");
    assert!(ms("latency_p99_ms") <= ms("latency_p999_ms"), "{q1}");
    assert!(ms("latency_p999_ms") <= ms("latency_max_ms"), "{q1}");
    // 8,000 events at 20,000 a second take 0.4 s of wall clock.
    assert!(ms("wall_s") >= 0.39, "{q1}");
    assert!(q1.get("emission_delay_p99_ms").is_none(), "{q1}");
    assert_eq!(q1["latency_rows"], q1["rows_written"], "{q1}");
    // 1,000 events per second of event time: a 10 s window holds 10,000
    // events and closes (4 s of watermark delay later) within the run.
    let q7 = run(&[
        "--query",
        "q7",
        "--events",
        "40000",
        "--rate",
        "1000",
        "--rate-limit",
        "200000",
    ]);
    assert!(q7["rows_written"].as_u64().unwrap() > 0, "{q7}");
    let delay = q7["emission_delay_p99_ms"].as_f64();
    assert!(delay.is_some_and(|d| d > 0.0), "{q7}");
    // At the default 10 M events per second of event time, 20,000 events
    // span 2 ms: q7's one window comes out when the input ends, a row of
    // no latency, which is not reported as 0 ms.
    let open = run(&[
        "--query",
        "q7",
        "--events",
        "20000",
        "--rate-limit",
        "200000",
    ]);
    assert_eq!(open["rows_written"].as_u64(), Some(1), "{open}");
    assert_eq!(open["latency_rows"].as_u64(), Some(0), "{open}");
    assert!(open.get("latency_p50_ms").is_none(), "{open}");
    // Without --rate-limit there is no latency to report.
    let unpaced = run(&["--query", "q1", "--events", "1000"]);
    assert!(unpaced.get("latency_p50_ms").is_none(), "{unpaced}");
    // A rate of 0 events a second is refused, not taken as no limit.
    let zero = flumen(
        &[
            "bench",
            "nexmark",
            "--query",
            "q1",
            "--events",
            "1000",
            "--rate-limit",
            "0",
        ],
        work.path(),
    );
    assert!(!zero.status.success());
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert!(stderr.contains("--rate-limit"), "{stderr}");
}

#[test]
fn missing_sql_file_is_an_error_naming_it() {
    let out = flumen(&["run", "no-such-file.sql"], &golden_dir());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-file.sql"), "{stderr}");
}

#[test]
fn ctrl_c_stops_an_unbounded_run_cleanly_with_progress_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "CREATE TABLE bid (auction BIGINT, price BIGINT) WITH (connector = 'nexmark', kind = 'bid');\n\
               CREATE TABLE out (auction BIGINT, price BIGINT) WITH (connector = 'blackhole');\n\
               INSERT INTO out SELECT auction, price FROM bid WHERE auction % 123 = 0;\n";
    std::fs::write(dir.path().join("unbounded.sql"), sql).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_flumen"))
        .args(["run", "unbounded.sql", "-p", "2"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("flumen starts");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("flumen did not stop within 60 s of Ctrl-C");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for part in [
        "rows in",
        "rows/s",
        "stopping",
        "done:",
        "per core",
        "latency from a source row's arrival to its result's write: p50",
    ] {
        assert!(stderr.contains(part), "missing {part:?} in:\n{stderr}");
    }
}

#[test]
fn explain_gives_the_same_operator_ids_at_any_parallelism() {
    let root = crate_dir().join("../..");
    let ids = |p: &str| -> Vec<String> {
        let out = flumen(
            &[
                "explain",
                "benchmarks/nexmark/ddl/nexmark.sql",
                "benchmarks/nexmark/q5.sql",
                "-p",
                p,
            ],
            &root,
        );
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("id: ").map(str::to_string))
            .collect()
    };
    let one = ids("1");
    assert!(one.iter().any(|id| id.starts_with("operator-")), "{one:?}");
    assert_eq!(one, ids("3"));
    let mut unique = one.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), one.len(), "ids are distinct: {one:?}");
}
