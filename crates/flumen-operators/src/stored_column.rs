//! A kept column as a TopN's slot stores it: as given, or, for a column of
//! integers whose values in the slot span little, as offsets from the
//! least of them: 2 bytes a value where they span less than 2^16, 4 where
//! 8-byte integers (`Int64`, timestamps, dates, times and durations) span
//! less than 2^32. Dictionary ids, bidders, prices and event times of one
//! batch span far less than their types allow, and a TopN's state is mostly
//! memory written once (a page fault per 4 KiB of it). Readers get the
//! declared type back.

use arrow::array::{Array, ArrayData, ArrayRef, AsArray, make_array};
use arrow::buffer::{Buffer, NullBuffer, ScalarBuffer};
use arrow::compute::interleave;
use arrow::datatypes::ArrowNativeType;
use arrow::datatypes::{DataType, UInt32Type};
use flumen_types::Result;

/// One stored column of a slot.
#[derive(Clone)]
pub(crate) enum StoredColumn {
    /// The column as given.
    Plain(ArrayRef),
    /// Value `i` is `base + offsets[i]` (null where `nulls` says), of type
    /// `data_type`.
    Narrow {
        base: i64,
        offsets: Offsets,
        nulls: Option<NullBuffer>,
        data_type: DataType,
    },
}

/// The offsets of a narrowed column.
#[derive(Clone)]
pub(crate) enum Offsets {
    U16(ScalarBuffer<u16>),
    U32(ScalarBuffer<u32>),
}

impl Offsets {
    fn get(&self, i: usize) -> i64 {
        match self {
            Offsets::U16(o) => i64::from(o[i]),
            Offsets::U32(o) => i64::from(o[i]),
        }
    }

    fn len(&self) -> usize {
        match self {
            Offsets::U16(o) => o.len(),
            Offsets::U32(o) => o.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Offsets::U16(o) => o.inner().capacity(),
            Offsets::U32(o) => o.inner().capacity(),
        }
    }
}

/// How the values of a narrowable type are laid out.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    I64,
    I32,
    U32,
}

/// The layout of `data_type` if its columns can be narrowed.
fn layout(data_type: &DataType) -> Option<Layout> {
    match data_type {
        DataType::Int64
        | DataType::Timestamp(..)
        | DataType::Date64
        | DataType::Time64(_)
        | DataType::Duration(_) => Some(Layout::I64),
        DataType::Int32 | DataType::Date32 | DataType::Time32(_) => Some(Layout::I32),
        DataType::UInt32 => Some(Layout::U32),
        _ => None,
    }
}

/// The values of an array of `layout`, each as an `i64`.
enum Values<'a> {
    I64(&'a [i64]),
    I32(&'a [i32]),
    U32(&'a [u32]),
}

impl Values<'_> {
    fn of(data: &ArrayData, layout: Layout) -> Values<'_> {
        match layout {
            Layout::I64 => Values::I64(data.buffer::<i64>(0)),
            Layout::I32 => Values::I32(data.buffer::<i32>(0)),
            Layout::U32 => Values::U32(data.buffer::<u32>(0)),
        }
    }

    #[inline]
    fn get(&self, i: usize) -> i64 {
        match self {
            Values::I64(v) => v[i],
            Values::I32(v) => i64::from(v[i]),
            Values::U32(v) => i64::from(v[i]),
        }
    }
}

impl StoredColumn {
    /// Stores `array`, narrowed when its type and values allow.
    pub(crate) fn new(array: ArrayRef) -> Self {
        let Some(layout) = layout(array.data_type()) else {
            return StoredColumn::Plain(array);
        };
        let data = array.to_data();
        let nulls = array.logical_nulls();
        let narrowed = match layout {
            Layout::I64 => narrow(data.buffer::<i64>(0), nulls.as_ref(), true),
            Layout::I32 => narrow(data.buffer::<i32>(0), nulls.as_ref(), false),
            Layout::U32 => narrow(data.buffer::<u32>(0), nulls.as_ref(), false),
        };
        match narrowed {
            Some((base, offsets)) => StoredColumn::Narrow {
                base,
                offsets,
                nulls,
                data_type: array.data_type().clone(),
            },
            None => StoredColumn::Plain(array),
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
            StoredColumn::Narrow { offsets, nulls, .. } => {
                offsets.bytes() + nulls.as_ref().map_or(0, |b| b.buffer().capacity())
            }
        }
    }

    /// Whether row `i` is null.
    pub(crate) fn is_null(&self, i: usize) -> bool {
        match self {
            StoredColumn::Plain(array) => array.is_null(i),
            StoredColumn::Narrow { nulls, .. } => nulls.as_ref().is_some_and(|b| b.is_null(i)),
        }
    }

    /// The value of row `i` of a column of dictionary ids (`UInt32`).
    pub(crate) fn id(&self, i: usize) -> u32 {
        match self {
            StoredColumn::Plain(array) => array.as_primitive::<UInt32Type>().value(i),
            // Offsets from a `UInt32` base stay within `u32`.
            StoredColumn::Narrow { base, offsets, .. } => (base + offsets.get(i)) as u32,
        }
    }

    /// Rows `start..start + len`, of the declared type.
    pub(crate) fn slice(&self, start: usize, len: usize) -> ArrayRef {
        match self {
            StoredColumn::Plain(array) => array.slice(start, len),
            StoredColumn::Narrow {
                base,
                offsets,
                nulls,
                data_type,
            } => {
                let nulls = nulls.as_ref().map(|b| b.slice(start, len));
                let plus = |o: i64| base.wrapping_add(o);
                match offsets {
                    Offsets::U16(o) => wide(
                        data_type,
                        o[start..start + len].iter().map(|&o| plus(o.into())),
                        nulls,
                    ),
                    Offsets::U32(o) => wide(
                        data_type,
                        o[start..start + len].iter().map(|&o| plus(o.into())),
                        nulls,
                    ),
                }
            }
        }
    }

    /// Whether any row is null.
    fn has_nulls(&self) -> bool {
        match self {
            StoredColumn::Plain(array) => array.null_count() > 0,
            StoredColumn::Narrow { nulls, .. } => {
                nulls.as_ref().is_some_and(|b| b.null_count() > 0)
            }
        }
    }
}

/// `values` as a base and offsets from it (null rows' values, which may be
/// anything, as offset 0): 2-byte offsets where the valid values span less
/// than 2^16, 4-byte ones where they span less than 2^32 and are 8-byte
/// integers (`eight_bytes`); `None` where neither, or no value is valid. Without nulls the
/// loops are plain passes over the slice, which the compiler vectorises.
fn narrow<N: Copy + Into<i64>>(
    values: &[N],
    nulls: Option<&NullBuffer>,
    eight_bytes: bool,
) -> Option<(i64, Offsets)> {
    let span = |(l, m): (i64, i64), v: N| {
        let v: i64 = v.into();
        (l.min(v), m.max(v))
    };
    let start = (i64::MAX, i64::MIN);
    let (least, most) = match nulls {
        None => values.iter().copied().fold(start, span),
        Some(b) => values
            .iter()
            .zip(b.iter())
            .filter(|&(_, valid)| valid)
            .fold(start, |acc, (&v, _)| span(acc, v)),
    };
    if least > most {
        return None;
    }
    let offset = |v: N| Into::<i64>::into(v).wrapping_sub(least) as u64;
    let range = most as i128 - least as i128;
    Some((
        least,
        if range <= i128::from(u16::MAX) {
            Offsets::U16(each(values, nulls, |v| offset(v) as u16))
        } else if range <= i128::from(u32::MAX) && eight_bytes {
            Offsets::U32(each(values, nulls, |v| offset(v) as u32))
        } else {
            return None;
        },
    ))
}

/// `to` of each of `values`, 0 where `nulls` has a null.
fn each<N: Copy, O: ArrowNativeType>(
    values: &[N],
    nulls: Option<&NullBuffer>,
    to: impl Fn(N) -> O,
) -> ScalarBuffer<O> {
    match nulls {
        None => values.iter().map(|&v| to(v)).collect(),
        Some(b) => values
            .iter()
            .zip(b.iter())
            .map(|(&v, valid)| if valid { to(v) } else { O::default() })
            .collect(),
    }
}

/// An array of `data_type` (a narrowable type) of `values` and `nulls`
/// (as many as the values, when given), its buffer written in one pass of
/// the type's own width.
fn wide(
    data_type: &DataType,
    values: impl Iterator<Item = i64>,
    nulls: Option<NullBuffer>,
) -> ArrayRef {
    fn buffer<T: ArrowNativeType>(values: Vec<T>) -> (usize, Buffer) {
        (values.len(), Buffer::from_vec(values))
    }
    // Each value is the base (a value of the type) plus an offset within
    // the span of the type's values, so the casts are exact.
    let (len, buffer) = match layout(data_type) {
        Some(Layout::I64) | None => buffer(values.collect::<Vec<i64>>()),
        Some(Layout::I32) => buffer(values.map(|v| v as i32).collect::<Vec<_>>()),
        Some(Layout::U32) => buffer(values.map(|v| v as u32).collect::<Vec<_>>()),
    };
    let data = ArrayData::builder(data_type.clone())
        .len(len)
        .add_buffer(buffer)
        .nulls(nulls);
    // SAFETY: `data_type` is a narrowable primitive type whose values
    // `buffer` holds `len` of, in its layout; `nulls`, when given, are
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
            .filter_map(|c| match c {
                StoredColumn::Plain(array) => Some(array.as_ref()),
                StoredColumn::Narrow { .. } => None,
            })
            .collect();
        return Ok(interleave(&arrays, picks)?);
    };
    // Every column's type is `data_type`, narrowable.
    let plain: Vec<Option<ArrayData>> = columns
        .iter()
        .map(|c| match c {
            StoredColumn::Plain(array) => Some(array.to_data()),
            StoredColumn::Narrow { .. } => None,
        })
        .collect();
    let layout = layout(data_type).unwrap_or(Layout::I64);
    let plain: Vec<Option<Values>> = plain
        .iter()
        .map(|d| d.as_ref().map(|d| Values::of(d, layout)))
        .collect();
    let value = |(array, row): (usize, usize)| match (columns[array], &plain[array]) {
        (StoredColumn::Narrow { base, offsets, .. }, _) => base.wrapping_add(offsets.get(row)),
        (StoredColumn::Plain(_), Some(values)) => values.get(row),
        (StoredColumn::Plain(_), None) => 0,
    };
    let nulls = columns
        .iter()
        .any(|c| c.has_nulls())
        .then(|| NullBuffer::from_iter(picks.iter().map(|&(a, r)| !columns[a].is_null(r))));
    Ok(wide(data_type, picks.iter().map(|&p| value(p)), nulls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Date32Array, Float64Array, Int32Array, Int64Array, TimestampMillisecondArray, UInt32Array,
    };
    use std::sync::Arc;

    fn stored(array: impl Array + 'static) -> (ArrayRef, StoredColumn) {
        let array: ArrayRef = Arc::new(array);
        (array.clone(), StoredColumn::new(array))
    }

    /// 8-byte integers and timestamps spanning up to exactly u32::MAX, and
    /// 4-byte integers, ids and dates up to u16::MAX, are narrowed, nulls
    /// kept, and every slice reads back as the same slice of what was
    /// stored, at the ends of each type's range too.
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
            stored(Int64Array::from(vec![Some(-5), None, Some(65_530)])),
            stored(Int32Array::from(vec![
                Some(i32::MIN),
                None,
                Some(i32::MIN + 65_535),
            ])),
            stored(Int32Array::from(vec![i32::MAX, i32::MAX - 65_535])),
            stored(UInt32Array::from(vec![
                Some(u32::MAX),
                None,
                Some(u32::MAX - 9),
            ])),
            stored(Date32Array::from(vec![19_000, 19_001])),
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
            assert!(
                matches!(column, StoredColumn::Narrow { .. }),
                "{array:?} is narrowed"
            );
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

    /// A span of 2^32 or more (2^16 for 4-byte integers), an empty column
    /// and columns of other types are stored as they are.
    #[test]
    fn wide_spans_and_other_types_stay_plain() {
        let cases = [
            stored(Int64Array::from(vec![0, 1 << 32])),
            stored(Int64Array::from(vec![i64::MIN, i64::MAX])),
            stored(Int64Array::from(Vec::<i64>::new())),
            stored(Int64Array::from(vec![None, None])),
            stored(Int32Array::from(vec![0, 65_536])),
            stored(UInt32Array::from(vec![0, u32::MAX])),
            stored(Float64Array::from(vec![1.0, 2.0])),
        ];
        for (array, column) in cases {
            let StoredColumn::Plain(plain) = column else {
                panic!("{array:?} is narrowed");
            };
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
        assert!(matches!(slots[0].1, StoredColumn::Narrow { .. }));
        assert!(matches!(slots[1].1, StoredColumn::Plain(_)));
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
