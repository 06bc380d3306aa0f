//! A session window without keys (Flink's `SESSION(TABLE t, DESCRIPTOR(ts),
//! gap)` without PARTITION BY): one stream of sessions over all rows, equal
//! to DataFusion's batch result at every parallelism.

mod common;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampMillisecondArray};
use common::rows;
use datafusion::prelude::ParquetReadOptions;
use parquet::arrow::ArrowWriter;

/// Bursts of 50 events 100 ms apart, each moved by up to ±400 ms, with
/// 3 to 8 s of silence between bursts: a 2-second gap closes a session
/// only between bursts.
fn write_bursts(path: &std::path::Path) {
    let mut ids = Vec::new();
    let mut times = Vec::new();
    let mut t = 1_700_000_000_000i64;
    for i in 0..4_000i64 {
        t += if i % 50 == 0 {
            3_000 + (i * 7919 % 5_000)
        } else {
            100
        };
        ids.push(i);
        times.push(t + (i * 104_729 % 800) - 400);
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(Int64Array::from(ids))),
        ("ts", Arc::new(TimestampMillisecondArray::from(times))),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_without_keys_match_batch() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bursts.parquet");
    write_bursts(&input);
    let ctx = flumen_sql::session();
    ctx.register_parquet("ev", input.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    for (what, from) in [
        (
            "Flink's spelling",
            "TABLE(SESSION(TABLE ev, DESCRIPTOR(ts), INTERVAL '2' SECOND))",
        ),
        (
            "flumen's spelling",
            "session(ev, descriptor(ts), INTERVAL '2' SECOND)",
        ),
    ] {
        let query = format!(
            "SELECT window_start, window_end, count(*), min(id), max(id) FROM {from} GROUP BY window_start, window_end"
        );
        let batch_sql = flumen_sql::expand_window_functions(&query).unwrap();
        let batch = ctx.sql(&batch_sql).await.unwrap().collect().await.unwrap();
        let expected = rows(&batch);
        assert_eq!(expected.len(), 80, "{what}: one session per burst");
        let sql = |out: &std::path::Path| {
            format!(
                "CREATE TABLE ev (id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
                 WITH (connector = 'filesystem', path = '{}', format = 'parquet');\n\
                 CREATE TABLE out (window_start TIMESTAMP(3), window_end TIMESTAMP(3), n BIGINT, first BIGINT, last BIGINT) \
                 WITH (connector = 'filesystem', path = '{}', format = 'parquet');\n\
                 INSERT INTO out {query};",
                input.display(),
                out.display()
            )
        };
        common::assert_streams_equal(what, sql, &expected).await;
    }
}
