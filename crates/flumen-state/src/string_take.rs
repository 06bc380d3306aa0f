//! `take` of short strings copied as whole 32-byte chunks
//! ([`crate::chunk_copy`]). Arrow's `take` copies each string with a
//! `memcpy` call of its own length; for strings of tens of bytes (URLs,
//! names, channels) the call and its size dispatch cost more than the copy.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, StringArray, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::take;
use arrow::error::ArrowError;

use crate::chunk_copy::{CHUNK, copy_spans};

/// The longest string copied by chunks (4 of them): past it Arrow's
/// per-string call no longer dominates a copy.
const LONGEST: usize = 4 * CHUNK;

/// Rows `rows` of `array`: strings copied by whole chunks where they are
/// short, anything else by Arrow's `take`.
pub fn take_array(array: &dyn Array, rows: &UInt32Array) -> Result<ArrayRef, ArrowError> {
    let short = array
        .as_string_opt::<i32>()
        .and_then(|strings| take_short_strings(strings, rows));
    Ok(match short {
        Some(strings) => Arc::new(strings),
        None => take(array, rows, None)?,
    })
}

/// Rows `rows` of every column of `batch`, as [`take_array`] takes them:
/// Arrow's `take_record_batch` with short strings copied by chunks.
pub fn take_batch(batch: &RecordBatch, rows: &UInt32Array) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| take_array(c.as_ref(), rows))
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    RecordBatch::try_new_with_options(batch.schema(), columns, &options)
}

/// The strings of `array` at `indices`, in order (null where `array` is),
/// or `None`, for the caller to use Arrow's `take`, as soon as one of them
/// is longer than [`LONGEST`] or when an index is null (its value may point
/// anywhere). Panics on an index out of bounds.
pub fn take_short_strings(array: &StringArray, indices: &UInt32Array) -> Option<StringArray> {
    if indices.null_count() > 0 {
        return None;
    }
    let picked = indices.values();
    let source = array.value_offsets();
    let mut offsets = Vec::with_capacity(picked.len() + 1);
    offsets.push(0i32);
    let mut spans = Vec::with_capacity(picked.len());
    let (mut total, mut longest) = (0usize, 0usize);
    for &i in picked {
        let i = i as usize;
        let (start, end) = (source[i] as usize, source[i + 1] as usize);
        let len = end - start;
        if len > LONGEST {
            // Arrow's `take` copies this column; stop measuring it here.
            return None;
        }
        spans.push((start, end));
        longest = longest.max(len);
        total += len;
        offsets.push(i32::try_from(total).ok()?);
    }
    let bytes = array.value_data();
    let values = match longest.div_ceil(CHUNK) {
        0 | 1 => copy_spans::<1>(bytes, &spans, total),
        2 => copy_spans::<2>(bytes, &spans, total),
        3 => copy_spans::<3>(bytes, &spans, total),
        4 => copy_spans::<4>(bytes, &spans, total),
        _ => return None,
    };
    let nulls = (array.null_count() > 0)
        .then(|| NullBuffer::from_iter(picked.iter().map(|&i| array.is_valid(i as usize))));
    // SAFETY: the offsets start at 0 and ascend by each picked string's
    // length to `total`, the length of `values`, which holds those strings
    // (valid UTF-8, as `array` holds them) back to back.
    Some(unsafe {
        StringArray::new_unchecked(
            OffsetBuffer::new_unchecked(offsets.into()),
            values.into(),
            nulls,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::compute::take;

    /// Strings of each chunk count (and empty ones, nulls, and strings at
    /// the very end of the buffer, which are copied alone) come out as
    /// Arrow's `take` gives them; longer strings are refused.
    #[test]
    fn short_strings_are_taken_as_arrow_takes_them() {
        for longest in [0usize, 1, 31, 32, 33, 64, 65, 96, 97, 128] {
            let strings: Vec<Option<String>> = (0..50)
                .map(|i| {
                    (i % 7 != 3).then(|| {
                        let len = if i % 4 == 0 {
                            longest
                        } else {
                            (i * 13) % (longest + 1)
                        };
                        (0..len)
                            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
                            .collect()
                    })
                })
                .collect();
            let array = StringArray::from(strings);
            for indices in [
                UInt32Array::from_iter_values([49, 0, 3, 48, 10, 49, 20, 47]),
                UInt32Array::from_iter_values((0..50).rev()),
                UInt32Array::from_iter_values([]),
            ] {
                let want = take(&array, &indices, None).unwrap();
                let got = take_short_strings(&array, &indices).unwrap();
                assert_eq!(&got as &dyn Array, want.as_ref(), "longest {longest}");
            }
        }
        let long = StringArray::from(vec!["x".repeat(129), "y".to_string()]);
        assert!(take_short_strings(&long, &UInt32Array::from_iter_values([1, 0])).is_none());
        assert!(take_short_strings(&long, &UInt32Array::from_iter_values([1])).is_some());
        let null_index = UInt32Array::from(vec![Some(1), None]);
        assert!(take_short_strings(&long, &null_index).is_none());
    }

    /// A batch's rows come out as Arrow's `take_record_batch` gives them:
    /// short strings by chunks, long ones and other types by Arrow, and a
    /// batch without columns keeps its row count.
    #[test]
    fn batches_are_taken_as_arrow_takes_them() {
        use arrow::array::Int64Array;
        use arrow::compute::take_record_batch;
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("short", DataType::Utf8, true),
            Field::new("long", DataType::Utf8, false),
        ]));
        let ids = Int64Array::from_iter((0..20).map(|i| (i % 5 != 2).then_some(i * 7)));
        let short = StringArray::from_iter((0..20).map(|i| (i % 6 != 1).then(|| "s".repeat(i))));
        let long = StringArray::from_iter_values((0..20).map(|i| "l".repeat(100 + 3 * i)));
        let columns: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(short), Arc::new(long)];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let rows = UInt32Array::from_iter_values([19, 3, 3, 0, 12, 7]);
        let want = take_record_batch(&batch, &rows).unwrap();
        assert_eq!(take_batch(&batch, &rows).unwrap(), want);
        let empty = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(20)),
        )
        .unwrap();
        assert_eq!(take_batch(&empty, &rows).unwrap().num_rows(), 6);
    }

    /// A slice of an array reads its own strings, whose bytes sit after
    /// others' in the shared buffer.
    #[test]
    fn slices_are_taken_from_their_own_offsets() {
        let array = StringArray::from(vec!["first", "second", "third", "fourth"]);
        let slice = array.slice(1, 3);
        let indices = UInt32Array::from_iter_values([2, 0, 1]);
        let got = take_short_strings(&slice, &indices).unwrap();
        assert_eq!(got, StringArray::from(vec!["fourth", "second", "third"]));
    }
}
