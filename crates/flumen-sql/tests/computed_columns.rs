//! Computed columns (`name AS expression` in CREATE TABLE, as in Flink):
//! event time computed from epoch milliseconds carries the table's
//! watermarks, and every query over the table equals DataFusion's batch
//! result over a view that computes the same columns.

mod common;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use common::{read_parquet_rows, rows, run_scripts};
use datafusion::prelude::ParquetReadOptions;
use parquet::arrow::ArrowWriter;

/// 20,000 events over 100 s of event time, each moved by up to ±1.25 s
/// (a deterministic jitter), so they arrive out of order but never later
/// than the 3-second watermark allows.
fn write_events(path: &std::path::Path) {
    let n = 20_000i64;
    let ids: Vec<i64> = (0..n).collect();
    let ms: Vec<i64> = ids
        .iter()
        .map(|i| 1_700_000_000_000 + i * 5 + (i * 7919 % 2500) - 1250)
        .collect();
    let prices: Vec<i64> = ids.iter().map(|i| i * 31 % 1000).collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(Int64Array::from(ids))),
        ("ms", Arc::new(Int64Array::from(ms))),
        ("price", Arc::new(Int64Array::from(prices))),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// The table as flumen declares it: a computed event time before the
/// column it is computed from, and a computed column after.
fn table(path: &std::path::Path) -> String {
    format!(
        "CREATE TABLE ev (
            id    BIGINT,
            ts    AS to_timestamp_ltz(ms, 3),
            ms    BIGINT,
            price BIGINT,
            cents AS price * 100,
            WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
        ) WITH (connector = 'filesystem', path = '{}', format = 'parquet');\n",
        path.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_computed_columns_match_batch() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.parquet");
    write_events(&input);
    let ctx = flumen_sql::session();
    ctx.register_parquet(
        "ev_raw",
        input.to_str().unwrap(),
        ParquetReadOptions::default(),
    )
    .await
    .unwrap();
    ctx.sql(
        "CREATE VIEW ev AS SELECT id, to_timestamp_ltz(ms, 3) AS ts, ms, price, price * 100 AS cents FROM ev_raw",
    )
    .await
    .unwrap();
    let queries = [
        (
            "a window over the computed event time",
            "window_start TIMESTAMP(3), window_end TIMESTAMP(3), n BIGINT, total BIGINT",
            "SELECT window_start, window_end, count(*), sum(cents) \
             FROM tumble(ev, descriptor(ts), INTERVAL '10' SECOND) \
             GROUP BY window_start, window_end",
        ),
        (
            "every column, computed ones in their declared places",
            "id BIGINT, ts TIMESTAMP(3), ms BIGINT, price BIGINT, cents BIGINT",
            "SELECT * FROM ev WHERE id % 97 = 0",
        ),
        (
            "a computed column alone",
            "cents BIGINT",
            "SELECT cents FROM ev WHERE cents > 99000",
        ),
    ];
    for (what, columns, query) in queries {
        let batch_sql = flumen_sql::expand_window_functions(query).unwrap();
        let batch = ctx.sql(&batch_sql).await.unwrap().collect().await.unwrap();
        let expected = rows(&batch);
        assert!(!expected.is_empty(), "{what}: the batch result has rows");
        let sql = |out: &std::path::Path| {
            format!(
                "{}CREATE TABLE out ({columns}) WITH (connector = 'filesystem', path = '{}', format = 'parquet');\nINSERT INTO out {query};",
                table(&input),
                out.display()
            )
        };
        common::assert_streams_equal(what, sql, &expected).await;
    }
}

async fn error_of(sql: &str) -> String {
    match run_scripts(&[("job.sql", sql)], 1, &[]).await {
        Ok(_) => panic!("expected an error for:\n{sql}"),
        Err(e) => e.to_string(),
    }
}

/// A computed column that names no column, is declared twice or is
/// written to is an error that says where and what.
#[tokio::test]
async fn computed_column_errors_say_where_and_what() {
    let nexmark = "WITH (connector = 'nexmark', kind = 'bid', events = '1000')";
    let msg = error_of(&format!(
        "CREATE TABLE bid (\n  auction BIGINT,\n  doubled AS auction * 2,\n  tripled AS bidder * 3\n) {nexmark};\nSELECT * FROM bid;"
    ))
    .await;
    assert!(
        msg.contains("job.sql:4:3: in computed column 'tripled' AS bidder * 3")
            && msg.contains("bidder"),
        "{msg}"
    );
    let msg = error_of(&format!(
        "CREATE TABLE bid (auction BIGINT, auction AS 1) {nexmark};\nSELECT * FROM bid;"
    ))
    .await;
    assert!(
        msg.contains("job.sql:1:35: table 'bid' declares column 'auction' twice"),
        "{msg}"
    );
    let msg = error_of(
        "CREATE TABLE out (a BIGINT, b AS a + 1) WITH (connector = 'blackhole');\nINSERT INTO out SELECT 1;",
    )
    .await;
    assert!(
        msg.contains(
            "job.sql:2:1: table 'out' has computed columns (b), which are read, never written"
        ),
        "{msg}"
    );
}

/// `p AS PROCTIME()` is processing time, as in Flink: a window over it
/// closes by the wall clock, and its windows hold every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proctime_column_windows_by_processing_time() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.parquet");
    write_events(&input);
    let out = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE ev (id BIGINT, p AS PROCTIME()) WITH (connector = 'filesystem', path = '{}', format = 'parquet');\n\
         CREATE TABLE out (n BIGINT) WITH (connector = 'filesystem', path = '{}', format = 'parquet');\n\
         INSERT INTO out SELECT count(*) FROM tumble(ev, descriptor(p), INTERVAL '1' SECOND) GROUP BY window_start, window_end;",
        input.display(),
        out.path().display()
    );
    run_scripts(&[("job.sql", &sql)], 2, &[]).await.unwrap();
    let counts: i64 = read_parquet_rows(out.path())
        .await
        .iter()
        .map(|r| r.parse::<i64>().unwrap())
        .sum();
    assert_eq!(counts, 20_000);
}
