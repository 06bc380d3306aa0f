//! Which columns of a Parquet file get a dictionary, chosen from the first
//! rows written to it, as ORC's writer does (`orc.dictionary.key.threshold`):
//! a column whose sampled values are mostly distinct (prices, random text)
//! is written plain, for its dictionary would only hash every value until
//! it overflowed and fell back; a column of repeating values keeps its
//! dictionary and its smaller pages.

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

/// Rows sampled per column: ORC checks its dictionaries at its first row
/// index stride, 10,000 rows.
const SAMPLE_ROWS: usize = 10_000;

/// Fewer non-null sampled values than this say too little: the column
/// keeps the default (a dictionary).
const MIN_SAMPLE: usize = 1_000;

/// A column whose distinct sampled values exceed this share of its non-null
/// sampled values is written without a dictionary (ORC's default 0.8).
const DISTINCT_SHARE: f64 = 0.8;

/// `base` with the dictionary turned off for each top-level column of
/// `first` (the file's first rows) whose sample is mostly distinct values.
pub(super) fn properties(base: &WriterProperties, first: &RecordBatch) -> WriterProperties {
    let plain: Vec<&str> = first
        .schema_ref()
        .fields()
        .iter()
        .zip(first.columns())
        .filter(|(_, column)| mostly_distinct(column))
        .map(|(field, _)| field.name().as_str())
        .collect();
    if plain.is_empty() {
        return base.clone();
    }
    let mut builder = base.clone().into_builder();
    for name in plain {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    builder.build()
}

/// Whether the first [`SAMPLE_ROWS`] values of `column` are mostly
/// distinct; false for types not sampled (nested, boolean, …).
fn mostly_distinct(column: &ArrayRef) -> bool {
    let sample = column.slice(0, column.len().min(SAMPLE_ROWS));
    let distinct = match sample.data_type() {
        DataType::Utf8 => Some(distinct_values(sample.as_string::<i32>().iter())),
        DataType::Binary => Some(distinct_values(sample.as_binary::<i32>().iter())),
        data_type => match data_type.primitive_width() {
            Some(width) => {
                let data = sample.to_data();
                let bytes = &data.buffers()[0].as_slice()[data.offset() * width..];
                let values = bytes.chunks_exact(width).take(sample.len());
                let valid = (0..sample.len()).map(|i| sample.is_valid(i));
                Some(distinct_values(
                    values.zip(valid).map(|(v, ok)| ok.then_some(v)),
                ))
            }
            None => None,
        },
    };
    distinct.is_some_and(|(distinct, values)| {
        values >= MIN_SAMPLE && distinct as f64 > DISTINCT_SHARE * values as f64
    })
}

/// How many distinct non-null values `values` holds, and how many non-null
/// values.
fn distinct_values<'a, T: AsRef<[u8]> + ?Sized + 'a>(
    values: impl Iterator<Item = Option<&'a T>>,
) -> (usize, usize) {
    let mut seen = HashSet::new();
    let mut count = 0;
    for value in values.flatten() {
        seen.insert(value.as_ref());
        count += 1;
    }
    (seen.len(), count)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use arrow::array::{BooleanArray, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// Columns of `rows` rows: unique ints, ints of 10 values, unique
    /// strings, strings of 10 values, unique 32-bit ints in a slice of a
    /// longer array, unique ints four in five null, booleans.
    fn batch(rows: usize) -> RecordBatch {
        // Zeros before the slice: read from the wrong place, the column
        // would look like one value.
        let zeros = std::iter::repeat_n(0, SAMPLE_ROWS);
        let sliced = Int32Array::from_iter_values(zeros.chain(0..rows as i32));
        let sliced = sliced.slice(SAMPLE_ROWS, rows);
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "unique",
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
            ),
            (
                "few",
                Arc::new(Int64Array::from_iter_values(
                    (0..rows as i64).map(|i| i % 10),
                )),
            ),
            (
                "unique_text",
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("u{i}")),
                )),
            ),
            (
                "few_text",
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("f{}", i % 10)),
                )),
            ),
            ("sliced", Arc::new(sliced)),
            (
                "sparse",
                Arc::new(Int64Array::from_iter(
                    (0..rows as i64).map(|i| (i % 5 == 0).then_some(i)),
                )),
            ),
            (
                "flags",
                Arc::new(BooleanArray::from_iter((0..rows).map(|i| Some(i % 2 == 0)))),
            ),
        ];
        let schema = Schema::new(
            columns
                .iter()
                .map(|(name, c)| Field::new(*name, c.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(
            Arc::new(schema),
            columns.into_iter().map(|(_, c)| c).collect(),
        )
        .unwrap()
    }

    /// Per column of a file written with `props`, whether it has a
    /// dictionary page.
    fn dictionaries(batch: &RecordBatch, props: WriterProperties) -> Vec<bool> {
        let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).unwrap();
        writer.write(batch).unwrap();
        let bytes = bytes::Bytes::from(writer.into_inner().unwrap());
        let reader = SerializedFileReader::new(bytes).unwrap();
        let group = reader.metadata().row_group(0);
        (0..group.num_columns())
            .map(|c| group.column(c).dictionary_page_offset().is_some())
            .collect()
    }

    #[test]
    fn mostly_distinct_columns_are_written_without_a_dictionary() {
        let base = WriterProperties::builder().build();
        let rows = batch(20_000);
        let chosen = properties(&base, &rows);
        assert_eq!(
            dictionaries(&rows, chosen),
            // The sparse column: 2,000 non-null values sampled, all distinct.
            vec![false, true, false, true, false, false, false],
        );
        assert_eq!(
            dictionaries(&rows, base),
            vec![true, true, true, true, true, true, false],
            "parquet's default, for comparison"
        );
    }

    #[test]
    fn a_small_first_batch_keeps_the_defaults() {
        let base = WriterProperties::builder().build();
        let rows = batch(MIN_SAMPLE - 1);
        assert_eq!(
            dictionaries(&rows, properties(&base, &rows)),
            vec![true, true, true, true, true, true, false],
        );
    }
}
