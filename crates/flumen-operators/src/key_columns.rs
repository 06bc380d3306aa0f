//! Kept columns that a TopN's keys already hold. A row's partition and
//! order keys are kept as `arrow-row` bytes beside its values; a value
//! column that is a column of a fixed-width key (q19's `auction` and
//! `price`, q18's `bidder`, `auction` and `date_time`) is read back from
//! those bytes when rows are gathered instead of being kept twice.

use arrow::array::ArrayRef;
use arrow::compute::SortOptions;
use arrow::datatypes::Schema;
use arrow::row::{RowConverter, SortField};
use flumen_types::Result;

/// One of a kept row's two keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    /// The partition key.
    Partition,
    /// The order key.
    Order,
}

/// Which kept columns are read from the keys, and the converters that read
/// them.
#[derive(Debug)]
pub(crate) struct KeyColumns {
    /// Per kept column: the key holding its values and its place there.
    of: Vec<Option<(Key, usize)>>,
    /// Converters of the keys that hold kept columns.
    partition: Option<RowConverter>,
    order: Option<RowConverter>,
    /// The Arrow bytes a row's columns held in keys take.
    row_width: usize,
}

impl KeyColumns {
    /// No kept column read from keys (every column kept as it is).
    pub(crate) fn none(width: usize) -> Self {
        KeyColumns {
            of: vec![None; width],
            partition: None,
            order: None,
            row_width: 0,
        }
    }

    /// The kept columns (the first `width` of `input`) that are columns of
    /// a partition key (`partition`: input columns with their sort options)
    /// or order key all of whose columns are fixed-width: these are read
    /// from the keys, which hold them exactly (`arrow-row` encodes such
    /// values one to one) and cheaply. A column in both keys is read from
    /// the partition key.
    pub(crate) fn new(
        input: &Schema,
        width: usize,
        partition: &[(usize, SortOptions)],
        order: &[(usize, SortOptions)],
    ) -> Result<Self> {
        let mut keyed = KeyColumns::none(width);
        for (key, columns) in [(Key::Order, order), (Key::Partition, partition)] {
            let types: Vec<_> = columns
                .iter()
                .map(|&(c, _)| input.field(c).data_type().clone())
                .collect();
            let fixed = !types.is_empty() && types.iter().all(|t| t.primitive_width().is_some());
            if !fixed || columns.iter().all(|&(c, _)| c >= width) {
                continue;
            }
            for (place, &(c, _)) in columns.iter().enumerate() {
                if c < width {
                    keyed.of[c] = Some((key, place));
                }
            }
            let fields = types
                .into_iter()
                .zip(columns)
                .map(|(t, &(_, o))| SortField::new_with_options(t, o))
                .collect();
            let converter = Some(RowConverter::new(fields)?);
            match key {
                Key::Partition => keyed.partition = converter,
                Key::Order => keyed.order = converter,
            }
        }
        // A column in both keys was first given to the order key: drop the
        // order converter if no column is read from it any more.
        if !keyed.of.iter().flatten().any(|(k, _)| *k == Key::Order) {
            keyed.order = None;
        }
        keyed.row_width = (0..width)
            .filter(|&c| keyed.of[c].is_some())
            .filter_map(|c| input.field(c).data_type().primitive_width())
            .sum();
        Ok(keyed)
    }

    fn converter(&self, key: Key) -> Option<&RowConverter> {
        match key {
            Key::Partition => self.partition.as_ref(),
            Key::Order => self.order.as_ref(),
        }
    }

    /// Whether kept column `c` is read from a key rather than stored.
    pub(crate) fn is_keyed(&self, c: usize) -> bool {
        self.of[c].is_some()
    }

    /// The Arrow size of one row's columns read from keys.
    pub(crate) fn row_width(&self) -> usize {
        self.row_width
    }

    /// All kept columns of some rows: `stored` (the columns not read from
    /// keys, in order) with the others read from the rows' keys, which
    /// `keys` gives for each key.
    pub(crate) fn assemble<'a, I>(
        &self,
        stored: Vec<ArrayRef>,
        keys: impl Fn(Key) -> I,
    ) -> Result<Vec<ArrayRef>>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        let decode = |key: Key| -> Result<Option<Vec<ArrayRef>>> {
            let Some(converter) = self.converter(key) else {
                return Ok(None);
            };
            let parser = converter.parser();
            Ok(Some(converter.convert_rows(
                keys(key).map(|bytes| parser.parse(bytes)),
            )?))
        };
        let (partition, order) = (decode(Key::Partition)?, decode(Key::Order)?);
        let mut stored = stored.into_iter();
        self.of
            .iter()
            .map(|of| {
                let column = match of {
                    None => stored.next(),
                    Some((Key::Partition, place)) => partition.as_ref().map(|p| p[*place].clone()),
                    Some((Key::Order, place)) => order.as_ref().map(|o| o[*place].clone()),
                };
                column.ok_or_else(|| {
                    flumen_types::FlumenError::state("a kept column is missing when gathered")
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    const ASC: SortOptions = SortOptions {
        descending: false,
        nulls_first: true,
    };
    const DESC: SortOptions = SortOptions {
        descending: true,
        nulls_first: false,
    };

    fn schema(types: &[DataType]) -> Schema {
        Schema::new(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("c{i}"), t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    /// Columns of fixed-width keys are read from them; a key with a string
    /// column is not (its bytes are not cheap to read back); a column of
    /// both keys comes from the partition key.
    #[test]
    fn only_columns_of_fixed_width_keys_are_read_from_them() {
        let ints = schema(&[
            DataType::Int64,
            DataType::Int32,
            DataType::Int64,
            DataType::Int64,
        ]);
        let keyed =
            KeyColumns::new(&ints, 4, &[(0, ASC), (2, ASC)], &[(2, DESC), (1, DESC)]).unwrap();
        let expected = [
            Some((Key::Partition, 0)),
            Some((Key::Order, 1)),
            Some((Key::Partition, 1)),
            None,
        ];
        assert_eq!(keyed.of, expected);
        assert_eq!(keyed.row_width(), 8 + 4 + 8);
        let mixed = schema(&[DataType::Int64, DataType::Utf8, DataType::Int64]);
        let keyed = KeyColumns::new(&mixed, 3, &[(0, ASC), (1, ASC)], &[(2, DESC)]).unwrap();
        assert_eq!(keyed.of, [None, None, Some((Key::Order, 0))]);
        assert!(keyed.partition.is_none() && keyed.order.is_some());
        // Key columns past the kept ones are not read back.
        let keyed = KeyColumns::new(&ints, 1, &[(3, ASC)], &[]).unwrap();
        assert_eq!(keyed.of, [None]);
        assert!(keyed.partition.is_none() && keyed.order.is_none());
    }

    /// Columns read from keys come back as they went in, nulls and
    /// descending order included, in their places among the stored ones.
    #[test]
    fn assembled_columns_are_the_keys_columns_in_their_places() {
        let input = schema(&[DataType::Int64, DataType::Utf8, DataType::Int64]);
        let keyed = KeyColumns::new(&input, 3, &[(2, ASC)], &[(0, DESC)]).unwrap();
        let p: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), None, Some(-3)]));
        let o: ArrayRef = Arc::new(Int64Array::from(vec![Some(i64::MIN), Some(5), None]));
        let s: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        let rows = |options, column: &ArrayRef| {
            RowConverter::new(vec![SortField::new_with_options(DataType::Int64, options)])
                .unwrap()
                .convert_columns(std::slice::from_ref(column))
                .unwrap()
        };
        let (pk, ok) = (rows(ASC, &p), rows(DESC, &o));
        let columns = keyed
            .assemble(vec![s.clone()], |key| {
                let rows = match key {
                    Key::Partition => &pk,
                    Key::Order => &ok,
                };
                rows.iter().map(|r| r.data())
            })
            .unwrap();
        assert_eq!(columns.len(), 3);
        assert_eq!(&columns[0], &o);
        assert_eq!(&columns[1], &s);
        assert_eq!(&columns[2], &p);
    }
}
