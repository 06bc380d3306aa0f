//! Hive-style partitioning (`partition_by`): a sink writes each row under
//! `dir/col=value/…/` by the values of the partition columns, which are
//! then left out of the file itself (as Flink and Hive do); a source reads
//! them back from those directory names.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, lexsort_to_indices, partition, take_record_batch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use flumen_types::{FlumenError, Result};

/// The directory name of a null partition value (Flink's default).
pub(super) const NULL_PARTITION: &str = "__DEFAULT_PARTITION__";

/// Above this many runs of equal partition values in one batch, the batch
/// is sorted by them first, so each partition gets one slice.
const MAX_RUNS: usize = 16;

/// The partition columns of a table, by position in its schema.
#[derive(Debug, Clone, Default)]
pub(super) struct Partitioning {
    columns: Vec<(usize, String)>,
    /// The other columns: those written into files.
    keep: Vec<usize>,
}

impl Partitioning {
    /// The columns named in the `partition_by` option (`a, b`), in that
    /// order; each must be a column of `schema`, and some column must be left.
    pub(super) fn new(option: Option<&str>, schema: &Schema) -> Result<Self> {
        let mut columns = Vec::new();
        for name in option.into_iter().flat_map(|o| o.split(',')) {
            let name = name.trim();
            let Ok(i) = schema.index_of(name) else {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(FlumenError::config(format!(
                    "partition_by column '{name}' is not a column of the table; its columns are: {}",
                    names.join(", ")
                )));
            };
            if columns.iter().any(|(c, _)| *c == i) {
                return Err(FlumenError::config(format!(
                    "partition_by names column '{name}' twice"
                )));
            }
            columns.push((i, name.to_string()));
        }
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !columns.iter().any(|(c, _)| c == i))
            .collect();
        if keep.is_empty() {
            return Err(FlumenError::config(
                "partition_by takes every column of the table: files would hold nothing",
            ));
        }
        Ok(Partitioning { columns, keep })
    }

    /// Whether the table is partitioned at all.
    pub(super) fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The partition columns' names and positions in the table's schema.
    pub(super) fn columns(&self) -> &[(usize, String)] {
        &self.columns
    }

    /// The schema of what files hold: `schema` without the partition columns.
    pub(super) fn file_schema(&self, schema: &SchemaRef) -> Result<SchemaRef> {
        Ok(Arc::new(schema.project(&self.keep)?))
    }

    /// Splits `batch` by partition: each partition's directory
    /// (`a=1/b=x`) with its rows, partition columns left out. Rows of one
    /// partition stay in their order.
    pub(super) fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        let keys = |b: &RecordBatch| -> Vec<ArrayRef> {
            self.columns
                .iter()
                .map(|(i, _)| b.column(*i).clone())
                .collect()
        };
        let mut batch = batch.clone();
        let mut columns = keys(&batch);
        let mut ranges = partition(&columns)?.ranges();
        if ranges.len() > MAX_RUNS {
            // The row index as the last key keeps each partition's rows in
            // their order (lexsort is not stable): a changelog's updates
            // of one key must stay in order.
            let position: ArrayRef =
                Arc::new(UInt32Array::from_iter_values(0..batch.num_rows() as u32));
            let sort: Vec<SortColumn> = columns
                .iter()
                .chain(std::iter::once(&position))
                .map(|c| SortColumn {
                    values: c.clone(),
                    options: None,
                })
                .collect();
            let order = lexsort_to_indices(&sort, None)?;
            batch = take_record_batch(&batch, &order)?;
            columns = keys(&batch);
            ranges = partition(&columns)?.ranges();
        }
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            let rows = batch.slice(range.start, range.end - range.start);
            let dir = self.directory(&columns, range.start)?;
            out.push((dir, rows.project(&self.keep)?));
        }
        Ok(out)
    }

    /// `a=1/b=x` for row `row` of the partition columns.
    fn directory(&self, columns: &[ArrayRef], row: usize) -> Result<String> {
        let mut dir = String::new();
        for ((_, name), column) in self.columns.iter().zip(columns) {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(&escape(name));
            dir.push('=');
            if column.is_null(row) {
                dir.push_str(NULL_PARTITION);
            } else {
                let format = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
                dir.push_str(&escape(&format.value(row).to_string()));
            }
        }
        Ok(dir)
    }
}

/// A value as a path segment: characters that a path or Hive gives a
/// meaning to are written `%XX`, as Hive does.
pub(super) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() || "\"#%'*/:=?\\{[]^".contains(c) {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of an escaped path segment.
pub(super) fn unescape(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("dt", DataType::Utf8, true),
            Field::new("h", DataType::Int64, false),
        ]));
        let dts: Vec<Option<&str>> = (0..40)
            .map(|i| match i % 3 {
                0 => Some("2026-12-01"),
                1 => Some("a/b=c"),
                _ => None,
            })
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..40)),
                Arc::new(StringArray::from(dts)),
                Arc::new(Int64Array::from_iter_values((0..40).map(|i| i / 20))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_split_by_partition_in_order_without_partition_columns() {
        let b = batch();
        let p = Partitioning::new(Some("dt, h"), &b.schema()).unwrap();
        let split = p.split(&b).unwrap();
        let dirs: Vec<&str> = split.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(
            dirs,
            [
                "dt=__DEFAULT_PARTITION__/h=0",
                "dt=__DEFAULT_PARTITION__/h=1",
                "dt=2026-12-01/h=0",
                "dt=2026-12-01/h=1",
                "dt=a%2Fb%3Dc/h=0",
                "dt=a%2Fb%3Dc/h=1",
            ]
        );
        let rows: usize = split.iter().map(|(_, b)| b.num_rows()).sum();
        assert_eq!(rows, 40);
        let (_, first) = &split[2];
        assert_eq!(first.schema().fields().len(), 1);
        let v = first
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(v.values().to_vec(), vec![0, 3, 6, 9, 12, 15, 18]);
        assert_eq!(unescape("a%2Fb%3Dc"), "a/b=c");
    }

    #[test]
    fn unknown_or_all_partition_columns_are_errors() {
        let b = batch();
        let err = Partitioning::new(Some("day"), &b.schema()).unwrap_err();
        assert!(err.to_string().contains("'day'") && err.to_string().contains("v, dt, h"));
        let err = Partitioning::new(Some("v,dt,h"), &b.schema()).unwrap_err();
        assert!(err.to_string().contains("every column"), "{err}");
    }
}
