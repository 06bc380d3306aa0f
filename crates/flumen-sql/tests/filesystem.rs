//! The filesystem connector's Parquet files: one file is read in parallel,
//! row group by row group, every row exactly once; the sink compresses its
//! files with the codec `parquet.compression` names, and reads them back.

mod common;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};

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

/// The codec of every column chunk of the Parquet file at `path`.
fn codecs(path: &std::path::Path) -> Vec<Compression> {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let meta = reader.metadata();
    meta.row_groups()
        .iter()
        .flat_map(|g| g.columns().iter().map(|c| c.compression()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parquet_sink_writes_the_codec_asked_for_and_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (None, "SNAPPY"),
        (Some("uncompressed"), "UNCOMPRESSED"),
        (Some("ZSTD"), "ZSTD"),
        (Some("lz4"), "LZ4_RAW"),
        (Some("gzip"), "GZIP"),
    ];
    for (option, codec) in cases {
        let out = dir.path().join(codec);
        let with = option
            .map(|c| format!(", 'parquet.compression' = '{c}'"))
            .unwrap_or_default();
        let copy = dir.path().join(format!("{codec}-copy"));
        let sql = format!(
            "CREATE TABLE gen (id BIGINT, name VARCHAR) WITH (connector = 'filesystem', path = '{src}', format = 'json');\n\
             CREATE TABLE dst (id BIGINT, name VARCHAR) WITH (connector = 'filesystem', path = '{out}', format = 'parquet'{with});\n\
             INSERT INTO dst SELECT id, name FROM gen;",
            src = dir.path().join("in.json").display(),
            out = out.display(),
        );
        let lines: String = (0..5000)
            .map(|i| format!("{{\"id\": {i}, \"name\": \"name-{}\"}}\n", i % 7))
            .collect();
        std::fs::write(dir.path().join("in.json"), lines).unwrap();
        common::run_scripts(&[("job.sql", &sql)], 2, &[])
            .await
            .unwrap();
        let files: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        assert!(!files.is_empty(), "{codec}: files written");
        for file in &files {
            let found = codecs(file);
            assert!(
                !found.is_empty() && found.iter().all(|c| format!("{c:?}").starts_with(codec)),
                "{codec}: {} has {found:?}",
                file.display()
            );
        }
        // The filesystem source reads the files back, every row once.
        let read_back = format!(
            "CREATE TABLE src (id BIGINT, name VARCHAR) WITH (connector = 'filesystem', path = '{out}', format = 'parquet');\n\
             CREATE TABLE cp (id BIGINT, name VARCHAR) WITH (connector = 'filesystem', path = '{copy}', format = 'json');\n\
             INSERT INTO cp SELECT id, name FROM src;",
            out = out.display(),
            copy = copy.display(),
        );
        common::run_scripts(&[("read.sql", &read_back)], 2, &[])
            .await
            .unwrap();
        let mut want: Vec<String> = (0..5000).map(|i| format!("{i}|name-{}", i % 7)).collect();
        want.sort();
        common::assert_same_rows(codec, &common::read_json_rows(&copy).await, &want);
    }
}

#[tokio::test]
async fn a_parquet_codec_that_is_unknown_or_given_to_another_format_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let table = |format: &str, codec: &str| {
        format!(
            "CREATE TABLE src (id BIGINT) WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
             CREATE TABLE dst (id BIGINT) WITH (connector = 'filesystem', path = '{}', format = '{format}', 'parquet.compression' = '{codec}');\n\
             INSERT INTO dst SELECT id FROM src;",
            dir.path().join("in.json").display(),
            dir.path().join("out").display(),
        )
    };
    std::fs::write(dir.path().join("in.json"), "{\"id\": 1}\n").unwrap();
    let err = common::run_scripts(&[("job.sql", &table("parquet", "lzo"))], 1, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "parquet.compression = 'lzo' is not one of: uncompressed, snappy, gzip, lz4, zstd"
        ),
        "{err}"
    );
    let err = common::run_scripts(&[("job.sql", &table("json", "zstd"))], 1, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("parquet.compression applies only to format = 'parquet', not 'json'"),
        "{err}"
    );
}

/// Whether the data pages of column `c` of the Parquet file at `path` hold
/// plain values (a column whose dictionary filled up falls back to them).
fn plain_data_pages(path: &std::path::Path, c: usize) -> bool {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let meta = reader.metadata();
    meta.row_groups().iter().any(|g| {
        g.column(c)
            .page_encoding_stats_mask()
            .expect("data page encodings")
            .is_set(parquet::basic::Encoding::PLAIN)
    })
}

/// A column of few values keeps its dictionary; one of 100,000 distinct
/// BIGINTs falls back to plain values once its dictionary passes the cap,
/// within the row group, instead of hashing every value into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_dictionaries_stop_at_their_cap() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..100_000)
        .map(|i| format!("{{\"id\": {}, \"name\": \"name-{}\"}}\n", i * 7919, i % 7))
        .collect();
    std::fs::write(dir.path().join("in.json"), lines).unwrap();
    let out = dir.path().join("out");
    let sql = format!(
        "CREATE TABLE src (id BIGINT, name VARCHAR) WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
         CREATE TABLE dst (id BIGINT, name VARCHAR) WITH (connector = 'filesystem', path = '{}', format = 'parquet');\n\
         INSERT INTO dst SELECT id, name FROM src;",
        dir.path().join("in.json").display(),
        out.display()
    );
    common::run_scripts(&[("job.sql", &sql)], 1, &[])
        .await
        .unwrap();
    let file = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    assert!(plain_data_pages(&file, 0), "unique ids fall back to plain");
    assert!(
        !plain_data_pages(&file, 1),
        "seven names keep their dictionary"
    );
}
