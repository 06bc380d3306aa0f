//! `WATERMARK FOR` in CREATE TABLE: sources with event time emit watermarks,
//! and mistakes in the clause are errors that say where.

mod common;

use flumen_sql::{Planner, PlannerOptions};

const NEXMARK_DDL: &str = include_str!("../../../benchmarks/nexmark/ddl/nexmark.sql");

async fn plan(sql: &str) -> Result<String, String> {
    let mut planner = Planner::new(PlannerOptions::default());
    planner
        .add_script("job.sql", sql)
        .await
        .map_err(|e| e.to_string())?;
    let pipeline = planner.build().await.map_err(|e| e.to_string())?;
    Ok(pipeline.graph.describe())
}

#[tokio::test]
async fn nexmark_tables_have_event_time_and_the_column_is_read_for_it() {
    let graph = plan(&format!("{NEXMARK_DDL}\nSELECT auction FROM bid;"))
        .await
        .unwrap();
    assert!(
        graph.contains("watermarks: date_time AS date_time - INTERVAL '4' SECOND"),
        "{graph}"
    );
    assert!(graph.contains("columns [auction, date_time]"), "{graph}");
    assert!(
        graph.contains("Projection: auction@0 AS auction"),
        "{graph}"
    );
}

#[tokio::test]
async fn a_query_not_selecting_event_time_still_gives_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "CREATE TABLE out (auction BIGINT) WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
         INSERT INTO out SELECT auction FROM bid WHERE auction % 7 = 0;",
        dir.path().display()
    );
    common::run_scripts(
        &[("ddl.sql", NEXMARK_DDL), ("q.sql", &sink)],
        2,
        &[("events", "20000")],
    )
    .await
    .unwrap();
    let rows = common::read_json_rows(dir.path()).await;
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|r| r.parse::<i64>().unwrap() % 7 == 0),
        "{rows:?}"
    );
}

const Q9: &str = include_str!("../../../benchmarks/nexmark/q9.sql");

/// q9 ranks the bids of each auction it joined: with auction ids declared
/// unique, an auction's partition closes when the join frees the auction
/// (the watermark passes `expires`); without the declaration, or ranked by
/// another key, partitions live on.
#[tokio::test]
async fn a_topn_over_a_join_with_a_unique_side_closes_its_partitions() {
    let closes = "a partition closed when the watermark passes column 6 + 0 ms";
    let graph = plan(&format!("{NEXMARK_DDL}\n{Q9}")).await.unwrap();
    assert!(graph.contains(closes), "{graph}");
    let undeclared = NEXMARK_DDL.replace("PRIMARY KEY (id) NOT ENFORCED,", "");
    let graph = plan(&format!("{undeclared}\n{Q9}")).await.unwrap();
    assert!(
        !graph.contains(closes) && graph.contains("UNBOUNDED STATE"),
        "{graph}"
    );
    let by_bidder = Q9.replace("PARTITION BY A.id", "PARTITION BY B.bidder");
    let graph = plan(&format!("{NEXMARK_DDL}\n{by_bidder}")).await.unwrap();
    assert!(!graph.contains(closes), "{graph}");
}

async fn error_of(sql: &str) -> String {
    plan(sql).await.expect_err("the clause is rejected")
}

#[tokio::test]
async fn watermark_on_a_missing_column_names_it_and_where() {
    let msg = error_of(
        "CREATE TABLE t (\n  date_time TIMESTAMP(3),\n  WATERMARK FOR datetime AS datetime - INTERVAL '1' SECOND\n) WITH (connector = 'nexmark', kind = 'bid');\nSELECT date_time FROM t;",
    )
    .await;
    assert!(msg.starts_with("job.sql:3:3:"), "{msg}");
    assert!(msg.contains("'datetime'"), "{msg}");
}

#[tokio::test]
async fn watermark_on_a_non_timestamp_column_is_rejected() {
    let msg = error_of(
        "CREATE TABLE t (auction BIGINT, WATERMARK FOR auction AS auction) WITH (connector = 'nexmark', kind = 'bid');\nSELECT auction FROM t;",
    )
    .await;
    assert!(msg.contains("must be a TIMESTAMP"), "{msg}");
}

#[tokio::test]
async fn watermark_expression_must_give_a_timestamp() {
    let msg = error_of(
        "CREATE TABLE t (date_time TIMESTAMP(3), WATERMARK FOR date_time AS date_time > now()) WITH (connector = 'nexmark', kind = 'bid');\nSELECT * FROM t;",
    )
    .await;
    assert!(msg.contains("must give a TIMESTAMP"), "{msg}");
}

#[tokio::test]
async fn two_watermarks_in_one_table_are_rejected() {
    let msg = error_of(
        "CREATE TABLE t (date_time TIMESTAMP(3), WATERMARK FOR date_time AS date_time, WATERMARK FOR date_time AS date_time) WITH (connector = 'nexmark', kind = 'bid');\nSELECT * FROM t;",
    )
    .await;
    assert!(msg.contains("one WATERMARK FOR clause"), "{msg}");
}

#[tokio::test]
async fn watermark_expression_may_use_only_the_event_time_column() {
    let msg = error_of(
        "CREATE TABLE t (date_time TIMESTAMP(3), expires TIMESTAMP(3), WATERMARK FOR date_time AS expires) WITH (connector = 'nexmark', kind = 'auction');\nSELECT * FROM t;",
    )
    .await;
    assert!(
        msg.contains("may use only the event-time column 'date_time'"),
        "{msg}"
    );
}

#[tokio::test]
async fn windows_need_event_time_on_the_windowed_column() {
    let msg = error_of(
        "CREATE TABLE t (auction BIGINT, date_time TIMESTAMP(3)) WITH (connector = 'nexmark', kind = 'bid');\n\
         SELECT count(*) FROM t GROUP BY date_bin(INTERVAL '10' SECOND, date_time);",
    )
    .await;
    assert!(
        msg.contains("has no event time") && msg.contains("WATERMARK FOR"),
        "{msg}"
    );

    let msg = error_of(&format!(
        "{NEXMARK_DDL}\nSELECT count(*) FROM auction GROUP BY date_bin(INTERVAL '10' SECOND, expires);"
    ))
    .await;
    assert!(msg.contains("window is over column 'expires'"), "{msg}");
}

#[tokio::test]
async fn late_rows_are_dropped_and_counted_and_windows_fire_by_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.json");
    // Read as three batches: the watermark (max - 5 s) is 7 s after the
    // first and 20 s after the second, so the third's 4 s row is late.
    write_batches(
        &input,
        &[
            &[("a", 1), ("a", 3), ("a", 12)],
            &[("a", 2), ("a", 25)],
            &[("a", 4)],
        ],
    );
    let out = dir.path().join("out");
    let sql = format!(
        "CREATE TABLE events (ts TIMESTAMP(3), filler VARCHAR, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)\n\
         WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
         CREATE TABLE counts (window_start TIMESTAMP(3), n BIGINT)\n\
         WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
         INSERT INTO counts SELECT date_bin(INTERVAL '10' SECOND, ts), count(*) FROM events\n\
         WHERE filler IS NULL GROUP BY date_bin(INTERVAL '10' SECOND, ts);",
        input.display(),
        out.display()
    );
    let metrics = common::run_scripts(&[("late.sql", &sql)], 1, &[])
        .await
        .unwrap();
    assert_eq!(metrics.late_rows_dropped(), 1);
    // Rows read back as `n|window_start` (JSON schema inference orders the
    // columns by name), sorted.
    assert_eq!(
        common::read_json_rows(&out).await,
        vec![
            "1|2026-01-01T00:00:10",
            "1|2026-01-01T00:00:20",
            "3|2026-01-01T00:00:00"
        ]
    );
}

/// Runs `query` (which reads `events(k VARCHAR, ts)`) over `groups` of
/// `(key, second)` rows, each read as one batch, and returns every change
/// the sink received as `columns…,op` lines, in order of arrival.
async fn changes_of(groups: &[&[(&str, u32)]], prelude: &str, query: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.json");
    write_batches(&input, groups);
    let out = dir.path().join("out");
    let sql = format!(
        "{prelude}CREATE TABLE events_all (k VARCHAR, ts TIMESTAMP(3), filler VARCHAR, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
         WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
         CREATE VIEW events AS SELECT k, ts FROM events_all WHERE filler IS NULL;\n\
         CREATE TABLE changes (k VARCHAR, n BIGINT)\n\
         WITH (connector = 'filesystem', path = '{}', format = 'csv', changelog = 'true');\n\
         INSERT INTO changes {query}",
        input.display(),
        out.display()
    );
    common::run_scripts(&[("ttl.sql", &sql)], 1, &[])
        .await
        .unwrap();
    changelog_lines(&out)
}

#[tokio::test]
async fn state_ttl_drops_a_group_idle_longer_than_it() {
    let files: &[&[(&str, u32)]] = &[&[("a", 0), ("a", 1)], &[("b", 30)], &[("a", 40)]];
    let query = "SELECT k, count(*) FROM events GROUP BY k;";
    // Without a TTL the third `a` updates its group.
    let kept = changes_of(files, "", query).await;
    assert_eq!(kept, ["a,2,0", "b,1,0", "a,2,2", "a,3,3"]);
    // With 10 s, `a` (last seen at 1 s) is dropped once the watermark
    // passes 11 s, so at 40 s it starts again.
    let dropped = changes_of(files, "SET state_ttl = '10 s';\n", query).await;
    assert_eq!(dropped, ["a,2,0", "b,1,0", "a,1,0"]);
}

#[tokio::test]
async fn allowed_lateness_corrects_a_fired_window_as_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.json");
    // As in the late-row test, windows [0 s, 10 s) and [10 s, 20 s) fire
    // after the second batch (the watermark reaches 20 s) and the third
    // batch's 4 s row is late; with 20 s of allowed lateness it is counted and
    // the window's row corrected. Its 50 s row then moves the watermark past
    // 30 s, and the last batch's 5 s row is too late even for that.
    write_batches(
        &input,
        &[
            &[("a", 1), ("a", 3), ("a", 12)],
            &[("a", 2), ("a", 25)],
            &[("a", 4), ("a", 50)],
            &[("a", 5)],
        ],
    );
    let out = dir.path().join("out");
    let sql = format!(
        "CREATE TABLE events (ts TIMESTAMP(3), filler VARCHAR, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)\n\
         WITH (connector = 'filesystem', path = '{}', format = 'json', allowed_lateness = '20 s');\n\
         CREATE TABLE counts (window_start TIMESTAMP(3), n BIGINT)\n\
         WITH (connector = 'filesystem', path = '{}', format = 'csv', changelog = 'true');\n\
         INSERT INTO counts SELECT date_bin(INTERVAL '10' SECOND, ts), count(*) FROM events\n\
         WHERE filler IS NULL GROUP BY date_bin(INTERVAL '10' SECOND, ts);",
        input.display(),
        out.display()
    );
    let metrics = common::run_scripts(&[("lateness.sql", &sql)], 1, &[])
        .await
        .unwrap();
    assert_eq!(
        metrics.late_rows_dropped(),
        1,
        "only the last 5 s row is too late"
    );
    let window = |s: u32| format!("2026-01-01T00:00:{s:02}");
    assert_eq!(
        changelog_lines(&out),
        [
            format!("{},3,0", window(0)),
            format!("{},1,0", window(10)),
            format!("{},3,2", window(0)),
            format!("{},4,3", window(0)),
            format!("{},1,0", window(20)),
            format!("{},1,0", window(50)),
        ]
    );
}

/// Writes one JSON file in which each group of `(key, second)` rows is read
/// as a batch of its own: a filler line longer than the reader's 1 MiB chunk
/// follows each group (fillers carry `filler`; queries skip them), so the
/// watermark after one group applies to the next.
fn write_batches(path: &std::path::Path, groups: &[&[(&str, u32)]]) {
    let filler = "x".repeat(1_500_000);
    let mut text = String::new();
    for group in groups {
        for (k, s) in *group {
            text.push_str(&format!(
                "{{\"k\": \"{k}\", \"ts\": \"2026-01-01T00:{:02}:{:02}\"}}\n",
                s / 60,
                s % 60
            ));
        }
        let last = group.iter().map(|r| r.1).max().unwrap_or(0);
        text.push_str(&format!(
            "{{\"ts\": \"2026-01-01T00:{:02}:{:02}\", \"filler\": \"{filler}\"}}\n",
            last / 60,
            last % 60
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// The lines of the CSV files a changelog sink wrote under `out`, headers
/// skipped, in file order.
fn changelog_lines(out: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        lines.extend(text.lines().skip(1).map(str::to_string));
    }
    lines
}

#[tokio::test]
async fn files_out_of_event_time_order_are_not_late_each_file_has_its_own_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let row = |s: u32| format!("{{\"ts\": \"2026-01-01T00:00:{s:02}\"}}\n");
    // One subtask reads both files. a.json alone would put the watermark at
    // 24 s, and every row of b.json would be late; with a watermark per file
    // the subtask's is the minimum over its unfinished files.
    std::fs::write(input.join("a.json"), [row(20), row(21), row(25)].concat()).unwrap();
    std::fs::write(input.join("b.json"), [row(1), row(2), row(5)].concat()).unwrap();
    let out = dir.path().join("out");
    let sql = format!(
        "CREATE TABLE events (ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
         WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
         CREATE TABLE counts (window_start TIMESTAMP(3), n BIGINT)\n\
         WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
         INSERT INTO counts SELECT date_bin(INTERVAL '10' SECOND, ts), count(*) FROM events\n\
         GROUP BY date_bin(INTERVAL '10' SECOND, ts);",
        input.display(),
        out.display()
    );
    let metrics = common::run_scripts(&[("splits.sql", &sql)], 1, &[])
        .await
        .unwrap();
    assert_eq!(metrics.late_rows_dropped(), 0);
    assert_eq!(
        common::read_json_rows(&out).await,
        vec!["3|2026-01-01T00:00:00", "3|2026-01-01T00:00:20"]
    );
}

#[tokio::test]
async fn a_batch_spanning_many_windows_counts_each_window_once() {
    // One batch with rows of 40 one-second windows in shuffled order; the
    // window of second s gets s % 3 + 1 rows.
    let mut rows: Vec<(&str, u32)> = Vec::new();
    for i in 0..40u32 {
        let second = (i * 17) % 40;
        for _ in 0..=second % 3 {
            rows.push(("a", second));
        }
    }
    let query = "SELECT k, count(*) FROM events GROUP BY k, date_bin(INTERVAL '1' SECOND, ts);";
    let mut got = changes_of(&[&rows], "", query).await;
    got.sort();
    let mut want: Vec<String> = (0..40u32).map(|s| format!("a,{}", s % 3 + 1)).collect();
    want.sort();
    assert_eq!(got, want);
}
