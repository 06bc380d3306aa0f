//! The file source's positions: read part of a directory at one
//! parallelism, snapshot every subtask's position, restore at another
//! parallelism and read on; every row must come exactly once, for JSON,
//! CSV and Parquet (split by row group).

use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use flumen_connectors::Options;
use flumen_connectors::filesystem::FileSourceFactory;
use flumen_runtime::{JobMetrics, SourceFactory, TaskContext};
use flumen_state::checkpoint::SplitPosition;
use flumen_types::Message;

const FILES: i64 = 3;
const ROWS_PER_FILE: i64 = 20_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]))
}

fn batch(file: i64) -> RecordBatch {
    let ids: Vec<i64> = (0..ROWS_PER_FILE)
        .map(|i| file * ROWS_PER_FILE + i)
        .collect();
    let names: Vec<String> = ids.iter().map(|i| format!("name-{i}")).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(names)),
        ],
    )
    .unwrap()
}

fn write_files(dir: &std::path::Path, format: &str) {
    for file in 0..FILES {
        let path = dir.join(format!("data-{file}.{format}"));
        let out = std::fs::File::create(&path).unwrap();
        let b = batch(file);
        match format {
            "json" => {
                let mut w = arrow::json::LineDelimitedWriter::new(out);
                w.write(&b).unwrap();
                w.finish().unwrap();
            }
            "csv" => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out);
                w.write(&b).unwrap();
            }
            _ => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_max_row_group_row_count(Some(12_000))
                    .build();
                let mut w =
                    parquet::arrow::ArrowWriter::try_new(out, schema(), Some(props)).unwrap();
                w.write(&b).unwrap();
                w.close().unwrap();
            }
        }
    }
}

fn context(subtask: usize, parallelism: usize) -> TaskContext {
    TaskContext::new(subtask, parallelism, 128, Arc::new(JobMetrics::default()))
}

fn ids(msg: Message, into: &mut Vec<i64>) {
    if let Message::Batch(b) = msg {
        into.extend(b.column(0).as_primitive::<Int64Type>().values().iter());
    }
}

async fn check(format: &str, from: usize, to: usize, first_reads: usize) {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), format);
    let options = Options::new([
        ("path".to_string(), dir.path().display().to_string()),
        ("format".to_string(), format.to_string()),
    ])
    .unwrap();
    let factory = FileSourceFactory::try_new(&options, &schema(), None)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut positions: Vec<SplitPosition> = Vec::new();
    for subtask in 0..from {
        let mut source = factory.create(&context(subtask, from)).unwrap();
        for _ in 0..first_reads {
            match source.next().await.unwrap() {
                Some(msg) => ids(msg, &mut seen),
                None => break,
            }
        }
        positions.extend(source.snapshot_position(1).unwrap());
    }
    assert!(!seen.is_empty(), "{format}: the first run read rows");
    for subtask in 0..to {
        let mut source = factory.create(&context(subtask, to)).unwrap();
        source.restore_position(&positions).unwrap();
        while let Some(msg) = source.next().await.unwrap() {
            ids(msg, &mut seen);
        }
    }
    seen.sort_unstable();
    let all: Vec<i64> = (0..FILES * ROWS_PER_FILE).collect();
    assert_eq!(
        seen.len(),
        all.len(),
        "{format} {from} -> {to} after {first_reads} reads: rows lost or doubled"
    );
    assert_eq!(seen, all, "{format} {from} -> {to}");
}

#[tokio::test]
async fn text_files_resume_at_their_byte_offsets_at_any_parallelism() {
    for format in ["json", "csv"] {
        check(format, 2, 3, 2).await;
        check(format, 3, 1, 1).await;
        check(format, 1, 2, 5).await;
    }
}

#[tokio::test]
async fn parquet_row_groups_resume_at_their_rows_at_any_parallelism() {
    check("parquet", 2, 3, 3).await;
    check("parquet", 3, 1, 2).await;
    check("parquet", 1, 2, 4).await;
}
