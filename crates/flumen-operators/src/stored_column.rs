//! A kept column as a TopN's slot stores it: as given, or, for a column of
//! 8-byte integers (`Int64`, timestamps, dates, times and durations) whose
//! values in the slot span less than 2^32, as 4-byte offsets from the
//! least of them. Ids, bidders, prices and event times of one batch span
//! far less than that, so each such column's state takes half the memory,
//! and a TopN's state is mostly memory written once (a page fault per
//! 4 KiB of it). Readers get the declared type back.

use arrow::array::{Array, ArrayData, ArrayRef, UInt32Array, make_array};
use arrow::buffer::{Buffer, NullBuffer, ScalarBuffer};
use arrow::compute::interleave;
use arrow::datatypes::DataType;
use flumen_types::Result;

/// One stored column of a slot.
#[derive(Clone)]
pub(crate) enum StoredColumn {
    /// The column as given (or a dictionary's ids).
    Plain(ArrayRef),
    /// Value `i` is `base + offsets[i]`, of type `data_type`.
    Narrow {
        base: i64,
        offsets: UInt32Array,
        data_type: DataType,
    },
}

impl StoredColumn {
    /// Stores `array`, narrowed when its type and values allow.
    pub(crate) fn new(array: ArrayRef) -> Self {
        if !narrowable(array.data_type()) || array.is_empty() {
            return StoredColumn::Plain(array);
        }
        let data = array.to_data();
        let values: &[i64] = data.buffer::<i64>(0);
        let nulls = array.logical_nulls();
        // The span of the valid values; a null's value (anything) is
        // stored as offset 0.
        let valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
        let (least, most) = match &nulls {
            None => values
                .iter()
                .fold((i64::MAX, i64::MIN), |(l, m), &v| (l.min(v), m.max(v))),
            Some(_) => (0..values.len())
                .filter(|&i| valid(i))
                .fold((i64::MAX, i64::MIN), |(l, m), i| {
                    (l.min(values[i]), m.max(values[i]))
                }),
        };
        if least > most {
            // No valid value.
            return StoredColumn::Plain(array);
        }
        if (most as i128 - least as i128) > u32::MAX as i128 {
            return StoredColumn::Plain(array);
        }
        let offsets: ScalarBuffer<u32> = match &nulls {
            None => values
                .iter()
                .map(|&v| v.wrapping_sub(least) as u32)
                .collect(),
            Some(_) => (0..values.len())
                .map(|i| {
                    if valid(i) {
                        values[i].wrapping_sub(least) as u32
                    } else {
                        0
                    }
                })
                .collect(),
        };
        StoredColumn::Narrow {
            base: least,
            offsets: UInt32Array::new(offsets, nulls),
            data_type: array.data_type().clone(),
        }
    }

    /// The column as stored (a dictionary's ids are plain).
    pub(crate) fn plain(&self) -> Option<&ArrayRef> {
        match self {
            StoredColumn::Plain(array) => Some(array),
            StoredColumn::Narrow { .. } => None,
        }
    }

    /// Rows stored.
    pub(crate) fn len(&self) -> usize {
        match self {
            StoredColumn::Plain(array) => array.len(),
            StoredColumn::Narrow { offsets, .. } => offsets.len(),
        }
    }

    /// Bytes this column takes in memory.
    pub(crate) fn memory_size(&self) -> usize {
        match self {
            StoredColumn::Plain(array) => array.get_array_memory_size(),
            StoredColumn::Narrow { offsets, .. } => offsets.get_array_memory_size(),
        }
    }

    /// Rows `start..start + len`, of the declared type.
    pub(crate) fn slice(&self, start: usize, len: usize) -> ArrayRef {
        match self {
            StoredColumn::Plain(array) => array.slice(start, len),
            StoredColumn::Narrow {
                base,
                offsets,
                data_type,
            } => {
                let offsets = offsets.slice(start, len);
                let values = offsets
                    .values()
                    .iter()
                    .map(|&o| base.wrapping_add(i64::from(o)));
                wide(data_type, values.collect(), offsets.nulls().cloned())
            }
        }
    }
}

/// Whether columns of `data_type` are 8-byte integers that can be narrowed.
fn narrowable(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int64
            | DataType::Timestamp(..)
            | DataType::Date64
            | DataType::Time64(_)
            | DataType::Duration(_)
    )
}

/// An array of `data_type` (8-byte integers) of `values` and `nulls`.
fn wide(data_type: &DataType, values: Buffer, nulls: Option<NullBuffer>) -> ArrayRef {
    let len = values.len() / 8;
    let data = ArrayData::builder(data_type.clone())
        .len(len)
        .add_buffer(values)
        .nulls(nulls);
    // SAFETY: `data_type` is an 8-byte primitive type (the only ones
    // narrowed) and `values` holds `len` of them; `nulls`, when given, are
    // `len` long (each caller builds both from the same rows).
    make_array(unsafe { data.build_unchecked() })
}

/// Rows `picks` (`(array, row)`) of `columns` (the same stored column of
/// several slots), of the declared type.
pub(crate) fn interleave_stored(
    columns: &[&StoredColumn],
    picks: &[(usize, usize)],
) -> Result<ArrayRef> {
    let narrow = columns.iter().find_map(|c| match c {
        StoredColumn::Narrow { data_type, .. } => Some(data_type),
        StoredColumn::Plain(_) => None,
    });
    let Some(data_type) = narrow else {
        let arrays: Vec<&dyn Array> = columns
            .iter()
            .filter_map(|c| c.plain().map(|a| a.as_ref()))
            .collect();
        return Ok(interleave(&arrays, picks)?);
    };
    // Plain columns of 8-byte integers of any declared type, read as such.
    let plain: Vec<Option<ArrayData>> = columns
        .iter()
        .map(|c| c.plain().map(|a| a.to_data()))
        .collect();
    let plain: Vec<&[i64]> = plain
        .iter()
        .map(|d| d.as_ref().map_or(&[][..], |d| d.buffer::<i64>(0)))
        .collect();
    let value = |(array, row): (usize, usize)| match columns[array] {
        StoredColumn::Plain(_) => plain[array][row],
        StoredColumn::Narrow { base, offsets, .. } => {
            base.wrapping_add(i64::from(offsets.values()[row]))
        }
    };
    let valid = |(array, row): (usize, usize)| match columns[array] {
        StoredColumn::Plain(plain) => plain.is_valid(row),
        StoredColumn::Narrow { offsets, .. } => offsets.is_valid(row),
    };
    let nulls = columns
        .iter()
        .any(|c| match c {
            StoredColumn::Plain(plain) => plain.null_count() > 0,
            StoredColumn::Narrow { offsets, .. } => offsets.null_count() > 0,
        })
        .then(|| NullBuffer::from_iter(picks.iter().map(|&p| valid(p))));
    let values: Buffer = picks.iter().map(|&p| value(p)).collect();
    Ok(wide(data_type, values, nulls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array, Int64Array, TimestampMillisecondArray};
    use std::sync::Arc;

    fn stored(array: impl Array + 'static) -> (ArrayRef, StoredColumn) {
        let array: ArrayRef = Arc::new(array);
        (array.clone(), StoredColumn::new(array))
    }

    /// Integers and timestamps spanning less than 2^32 (up to exactly
    /// u32::MAX) are narrowed, nulls kept, and every slice reads back as
    /// the same slice of what was stored.
    #[test]
    fn narrow_spans_read_back_as_stored() {
        let base = 1_700_000_000_000i64;
        let cases = [
            stored(Int64Array::from(vec![
                Some(-5),
                None,
                Some(7),
                Some(-5),
                Some(1 << 31),
            ])),
            stored(Int64Array::from(vec![i64::MAX - u32::MAX as i64, i64::MAX])),
            stored(Int64Array::from(vec![i64::MIN, i64::MIN + u32::MAX as i64])),
            stored(
                TimestampMillisecondArray::from(vec![Some(base + 9), Some(base), None])
                    .with_timezone("UTC"),
            ),
            // What lies under a null does not count.
            stored(Int64Array::new(
                vec![5, i64::MAX, 7, i64::MIN].into(),
                Some(NullBuffer::from(vec![true, false, true, false])),
            )),
        ];
        for (array, column) in cases {
            assert!(column.plain().is_none(), "{array:?} is narrowed");
            assert!(column.memory_size() < array.get_array_memory_size());
            assert_eq!(column.len(), array.len());
            for start in 0..array.len() {
                for len in 0..=array.len() - start {
                    assert_eq!(
                        column.slice(start, len).as_ref(),
                        array.slice(start, len).as_ref()
                    );
                }
            }
        }
    }

    /// A span of 2^32 or more, an empty column and columns of other types
    /// are stored as they are.
    #[test]
    fn wide_spans_and_other_types_stay_plain() {
        let cases = [
            stored(Int64Array::from(vec![0, 1 << 32])),
            stored(Int64Array::from(vec![i64::MIN, i64::MAX])),
            stored(Int64Array::from(Vec::<i64>::new())),
            stored(Int64Array::from(vec![None, None])),
            stored(Int32Array::from(vec![1, 2])),
            stored(Float64Array::from(vec![1.0, 2.0])),
        ];
        for (array, column) in cases {
            let plain = column.plain().expect("stored as it is");
            assert_eq!(plain.as_ref(), array.as_ref());
        }
    }

    /// Rows picked from narrowed and plain columns of several slots, in any
    /// order, are the rows Arrow's `interleave` picks from the originals.
    #[test]
    fn picks_across_narrow_and_plain_slots_are_the_stored_rows() {
        let slots = [
            stored(Int64Array::from(vec![Some(10), None, Some(12)])),
            stored(Int64Array::from(vec![Some(0), Some(1 << 40)])),
            stored(Int64Array::from(vec![Some(-3), Some(-4), Some(-5), None])),
        ];
        assert!(slots[0].1.plain().is_none() && slots[1].1.plain().is_some());
        let picks = [(2, 3), (0, 0), (1, 1), (0, 1), (2, 0), (1, 0), (0, 2)];
        let originals: Vec<&dyn Array> = slots.iter().map(|(a, _)| a.as_ref()).collect();
        let columns: Vec<&StoredColumn> = slots.iter().map(|(_, c)| c).collect();
        let want = interleave(&originals, &picks).unwrap();
        assert_eq!(
            interleave_stored(&columns, &picks).unwrap().as_ref(),
            want.as_ref()
        );
        let timestamps = [
            stored(TimestampMillisecondArray::from(vec![5, 6]).with_timezone("UTC")),
            stored(TimestampMillisecondArray::from(vec![7]).with_timezone("UTC")),
        ];
        let originals: Vec<&dyn Array> = timestamps.iter().map(|(a, _)| a.as_ref()).collect();
        let columns: Vec<&StoredColumn> = timestamps.iter().map(|(_, c)| c).collect();
        let picks = [(1, 0), (0, 1), (0, 0)];
        let want = interleave(&originals, &picks).unwrap();
        assert_eq!(
            interleave_stored(&columns, &picks).unwrap().as_ref(),
            want.as_ref()
        );
    }
}
