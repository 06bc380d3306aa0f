//! The filesystem connector's splitting: one Parquet file is read in
//! parallel, row group by row group, every row exactly once.

mod common;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_parquet_file_is_split_by_row_group_over_subtasks() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..10_000));
    let batch = RecordBatch::try_from_iter([("id", ids)]).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(1000))
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(&input).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let out = dir.path().join("out");
    let sql = format!(
        "CREATE TABLE src (id BIGINT) WITH (connector = 'filesystem', path = '{}', format = 'parquet');\n\
         CREATE TABLE dst (id BIGINT) WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
         INSERT INTO dst SELECT id FROM src;",
        input.display(),
        out.display()
    );
    common::run_scripts(&[("job.sql", &sql)], 3, &[])
        .await
        .unwrap();
    let rows = common::read_json_rows(&out).await;
    let mut ids: Vec<i64> = rows.iter().map(|r| r.parse().unwrap()).collect();
    ids.sort();
    assert_eq!(
        ids,
        (0..10_000).collect::<Vec<_>>(),
        "every row exactly once"
    );
    let writers = std::fs::read_dir(&out).unwrap().flatten().count();
    assert_eq!(
        writers, 3,
        "all three subtasks read a share of the one file"
    );
}
