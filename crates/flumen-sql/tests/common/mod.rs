//! Helpers shared by the SQL integration tests: run a script as a streaming
//! job, read what a sink wrote, and compare row multisets.

// Each test file uses only some of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{JsonReadOptions, ParquetReadOptions, SessionContext};
use flumen_runtime::{JobMetrics, RunOptions, run_job};
use flumen_sql::{Planner, PlannerOptions};
use flumen_types::Result;

/// Plans and runs `scripts` (name, SQL) in order; returns the job's counters.
pub async fn run_scripts(
    scripts: &[(&str, &str)],
    parallelism: usize,
    overrides: &[(&str, &str)],
) -> Result<Arc<JobMetrics>> {
    let mut planner = Planner::new(PlannerOptions {
        parallelism,
        overrides: overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    });
    for (name, sql) in scripts {
        planner.add_script(name, sql).await?;
    }
    let pipeline = planner.build().await?;
    let job = run_job(&pipeline.graph, &RunOptions::default())?;
    let metrics = job.metrics();
    job.wait().await?;
    Ok(metrics)
}

/// Each row of `batches` as one `|`-separated line, sorted: a multiset.
/// For an updating result (a trailing `_op` column) the rows it ends with:
/// inserts and update-afters add a row, deletes and update-befores take one.
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let updating = batches
        .first()
        .is_some_and(|b| flumen_types::is_updating(&b.schema()));
    if !updating {
        return plain_rows(batches);
    }
    let mut live: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for line in plain_rows_unsorted(batches) {
        let (row, op) = line.rsplit_once('|').expect("op column");
        let op = flumen_types::RowOp::from_code(op.parse().expect("op code")).expect("known op");
        *live.entry(row.to_string()).or_default() += if op.is_addition() { 1 } else { -1 };
    }
    let mut out = Vec::new();
    for (row, n) in live {
        assert!(n >= 0, "more rows taken back than added: {row}");
        out.extend(std::iter::repeat_n(row, n as usize));
    }
    out.sort();
    out
}

fn plain_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = plain_rows_unsorted(batches);
    out.sort();
    out
}

fn plain_rows_unsorted(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

fn has_files(dir: &Path, ext: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == ext))
        })
        .unwrap_or(false)
}

/// The rows of every Parquet file a sink wrote under `dir`.
pub async fn read_parquet_rows(dir: &Path) -> Vec<String> {
    if !has_files(dir, "parquet") {
        return Vec::new();
    }
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(dir.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    rows(&df.collect().await.unwrap())
}

/// Columns `columns` (and the op column, if written) of every Parquet file
/// a sink wrote under `dir`, as rows.
pub async fn read_parquet_columns(dir: &Path, columns: &str) -> Vec<String> {
    if !has_files(dir, "parquet") {
        return Vec::new();
    }
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "written",
        dir.to_str().unwrap(),
        ParquetReadOptions::default(),
    )
    .await
    .unwrap();
    let updating = ctx
        .table("written")
        .await
        .unwrap()
        .schema()
        .has_column_with_unqualified_name(flumen_types::OP_COLUMN);
    let op = if updating { ", _op" } else { "" };
    let df = ctx
        .sql(&format!("SELECT {columns}{op} FROM written"))
        .await
        .unwrap();
    rows(&df.collect().await.unwrap())
}

/// The rows of every JSON-lines file a sink wrote under `dir`.
pub async fn read_json_rows(dir: &Path) -> Vec<String> {
    if !has_files(dir, "json") {
        return Vec::new();
    }
    let ctx = SessionContext::new();
    let options = JsonReadOptions::default().file_extension(".json");
    let df = ctx.read_json(dir.to_str().unwrap(), options).await.unwrap();
    rows(&df.collect().await.unwrap())
}

/// Asserts two row multisets are equal, showing the first difference.
pub fn assert_same_rows(what: &str, streaming: &[String], batch: &[String]) {
    if streaming == batch {
        return;
    }
    let first_diff = streaming
        .iter()
        .zip(batch)
        .position(|(a, b)| a != b)
        .unwrap_or(streaming.len().min(batch.len()));
    panic!(
        "{what}: streaming gave {} rows, batch {}; first difference at sorted row {first_diff}:\n  streaming: {:?}\n  batch:     {:?}",
        streaming.len(),
        batch.len(),
        streaming.get(first_diff),
        batch.get(first_diff)
    );
}

/// Runs the script `sql(out)` (whose sink writes Parquet files to `out`)
/// at parallelism 1, 2 and 4; each run must drop no late row and write
/// exactly the rows `expected`.
pub async fn assert_streams_equal(what: &str, sql: impl Fn(&Path) -> String, expected: &[String]) {
    for parallelism in [1, 2, 4] {
        let out = tempfile::tempdir().unwrap();
        let metrics = run_scripts(&[("job.sql", &sql(out.path()))], parallelism, &[])
            .await
            .unwrap_or_else(|e| panic!("{what} at parallelism {parallelism}: {e}"));
        assert_eq!(metrics.late_rows_dropped(), 0, "{what}: no row is late");
        let actual = read_parquet_rows(out.path()).await;
        assert_same_rows(
            &format!("{what} at parallelism {parallelism}"),
            &actual,
            expected,
        );
    }
}
