//! A state table of keys: group keys interned to dense ids (keys of one or
//! two integer-like columns packed into words, `fixed_keys`; others by
//! DataFusion `GroupValues`, one vectorised call per batch), each also kept as an
//! `arrow-row` row so the key can be emitted again while its group lives on
//! (which `GroupValues` alone cannot do without giving its keys up), and
//! each tagged with its key group when it first appears.

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use flumen_types::{FlumenError, Result};

use crate::fixed_keys::FixedKeys;
use crate::key_group::{KeyGroup, KeyGroups};

fn err(e: impl std::fmt::Display) -> FlumenError {
    FlumenError::execution(format!("group keys: {e}"))
}

/// What gives keys their ids.
enum Interner {
    Fixed(FixedKeys),
    Values(Box<dyn GroupValues>),
}

impl Interner {
    /// The fastest interner for keys of `schema`.
    fn new(schema: &SchemaRef) -> Result<Self> {
        let columns: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(match FixedKeys::for_columns(&columns) {
            Some(fixed) => Interner::Fixed(fixed),
            None => Interner::Values(
                new_group_values(schema.clone(), &GroupOrdering::None).map_err(err)?,
            ),
        })
    }

    fn intern(&mut self, keys: &[ArrayRef], ids: &mut Vec<usize>) -> Result<()> {
        match self {
            Interner::Fixed(fixed) => fixed.intern(keys, ids),
            Interner::Values(groups) => groups.intern(keys, ids).map_err(err),
        }
    }

    fn len(&self) -> usize {
        match self {
            Interner::Fixed(fixed) => fixed.len(),
            Interner::Values(groups) => groups.len(),
        }
    }

    fn size(&self) -> usize {
        match self {
            Interner::Fixed(fixed) => fixed.size(),
            Interner::Values(groups) => groups.size(),
        }
    }
}

/// The keys of one operator subtask's groups, with their key groups.
pub struct KeyedTable {
    schema: SchemaRef,
    groups: Interner,
    rows: Rows,
    converter: RowConverter,
    key_groups: KeyGroups,
    /// The key group of each id.
    tags: Vec<KeyGroup>,
    /// The key columns whose hash gives a key its key group, when the rows
    /// come routed by some of the keys only; `None`: all of them.
    routed_by: Option<Vec<usize>>,
    hashes: Vec<u64>,
    /// With no key columns (a global aggregate) every row is in group 0,
    /// which exists once a row has come.
    global: Option<usize>,
}

impl KeyedTable {
    /// An empty table of keys with these fields, of a subtask owning
    /// `key_groups`.
    pub fn new(fields: Vec<Field>, key_groups: KeyGroups) -> Result<Self> {
        let schema = Arc::new(Schema::new(fields));
        let converter = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let global = schema.fields().is_empty().then_some(0);
        Ok(KeyedTable {
            groups: Interner::new(&schema)?,
            rows: converter.empty_rows(0, 0),
            converter,
            schema,
            key_groups,
            tags: Vec::new(),
            routed_by: None,
            hashes: Vec::new(),
            global,
        })
    }

    /// The same table, with each key's key group taken from the hash of the
    /// key columns `columns` alone when given: the columns by whose hash its
    /// rows were routed (a join's key, when grouping by it and more), so
    /// that a restored key goes to the subtask its rows come to.
    pub fn routed_by(mut self, columns: Option<Vec<usize>>) -> Self {
        self.routed_by = columns;
        self
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.global.unwrap_or_else(|| self.groups.len())
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of each row's key in `ids`; new keys get the next ids.
    pub fn intern(&mut self, keys: &[ArrayRef], rows: usize, ids: &mut Vec<usize>) -> Result<()> {
        ids.clear();
        if let Some(count) = &mut self.global {
            ids.resize(rows, 0);
            if *count == 0 && rows > 0 {
                *count = 1;
                let mut tag = Vec::new();
                self.key_groups.assign(&[], 1, &mut self.hashes, &mut tag)?;
                self.tags = tag;
            }
            return Ok(());
        }
        let before = self.groups.len();
        self.groups.intern(keys, ids)?;
        let total = self.groups.len();
        if total > before {
            let mut first = vec![u32::MAX; total - before];
            for (row, &g) in ids.iter().enumerate() {
                if g >= before && first[g - before] == u32::MAX {
                    first[g - before] = row as u32;
                }
            }
            let indices = UInt32Array::from(first);
            let new_keys: Vec<ArrayRef> = keys
                .iter()
                .map(|k| take(k, &indices, None))
                .collect::<std::result::Result<_, _>>()?;
            self.converter.append(&mut self.rows, &new_keys)?;
            self.tag(&new_keys, total - before)?;
        }
        Ok(())
    }

    fn tag(&mut self, new_keys: &[ArrayRef], count: usize) -> Result<()> {
        let mut tags = Vec::with_capacity(count);
        let routed: Vec<ArrayRef>;
        let hashed = match &self.routed_by {
            Some(columns) => {
                routed = columns.iter().map(|&c| new_keys[c].clone()).collect();
                &routed
            }
            None => new_keys,
        };
        self.key_groups
            .assign(hashed, count, &mut self.hashes, &mut tags)?;
        self.tags.extend_from_slice(&tags);
        Ok(())
    }

    /// The key group of `id`.
    pub fn key_group(&self, id: usize) -> KeyGroup {
        self.tags[id]
    }

    /// The key group of every id, in id order.
    pub fn key_groups(&self) -> &[KeyGroup] {
        &self.tags
    }

    /// The key columns of `ids`, in that order.
    pub fn emit(&self, ids: impl Iterator<Item = usize>) -> Result<Vec<ArrayRef>> {
        if self.global.is_some() {
            return Ok(Vec::new());
        }
        Ok(self.converter.convert_rows(ids.map(|g| self.rows.row(g)))?)
    }

    /// Keeps only the keys `keep` (ascending ids), which become ids `0..`.
    pub fn retain(&mut self, keep: &[usize]) -> Result<()> {
        self.tags = keep.iter().map(|&id| self.tags[id]).collect();
        if let Some(count) = &mut self.global {
            *count = keep.len().min(1);
            return Ok(());
        }
        let keys = self.emit(keep.iter().copied())?;
        let mut groups = Interner::new(&self.schema)?;
        let mut ids = Vec::with_capacity(keep.len());
        if !keep.is_empty() {
            groups.intern(&keys, &mut ids)?;
        }
        self.groups = groups;
        self.rows = self.converter.empty_rows(keep.len(), 0);
        self.converter.append(&mut self.rows, &keys)?;
        Ok(())
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.groups.size() + self.rows.size() + self.tags.capacity() * size_of::<KeyGroup>()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::DataType;

    use super::*;

    #[test]
    fn keys_keep_their_key_group_across_retain() {
        let groups = KeyGroups::of_subtask(0, 1, 128);
        let mut table =
            KeyedTable::new(vec![Field::new("k", DataType::Utf8, true)], groups).unwrap();
        let keys: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "a", "c"]));
        let mut ids = Vec::new();
        table
            .intern(std::slice::from_ref(&keys), 4, &mut ids)
            .unwrap();
        assert_eq!(ids, [0, 1, 0, 2]);
        let (mut hashes, mut expected) = (Vec::new(), Vec::new());
        groups
            .assign(&[keys], 4, &mut hashes, &mut expected)
            .unwrap();
        assert_eq!(table.key_groups(), [expected[0], expected[1], expected[3]]);

        table.retain(&[1, 2]).unwrap();
        assert_eq!(table.key_groups(), [expected[1], expected[3]]);
        let kept = table.emit(0..2).unwrap();
        let kept: Vec<_> = kept[0].as_string::<i32>().iter().flatten().collect();
        assert_eq!(kept, ["b", "c"]);
    }

    #[test]
    fn keys_routed_by_some_columns_take_those_columns_key_group() {
        let groups = KeyGroups::of_subtask(0, 1, 128);
        let fields = vec![
            Field::new("id", DataType::Int64, true),
            Field::new("category", DataType::Int64, true),
        ];
        let mut table = KeyedTable::new(fields, groups)
            .unwrap()
            .routed_by(Some(vec![0]));
        let ids: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3, 4]));
        let categories: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![7, 8, 9, 10]));
        let mut interned = Vec::new();
        table
            .intern(&[ids.clone(), categories.clone()], 4, &mut interned)
            .unwrap();
        let (mut hashes, mut by_id, mut by_both) = (Vec::new(), Vec::new(), Vec::new());
        groups
            .assign(std::slice::from_ref(&ids), 4, &mut hashes, &mut by_id)
            .unwrap();
        groups
            .assign(&[ids, categories], 4, &mut hashes, &mut by_both)
            .unwrap();
        assert_eq!(table.key_groups(), by_id);
        assert_ne!(by_id, by_both);
    }

    #[test]
    fn packed_keys_are_interned_again_after_retain() {
        let groups = KeyGroups::of_subtask(0, 1, 128);
        let fields = vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int32, false),
        ];
        let mut table = KeyedTable::new(fields, groups).unwrap();
        assert!(matches!(table.groups, Interner::Fixed(_)));
        let batch = |a: Vec<Option<i64>>, b: Vec<i32>| -> Vec<ArrayRef> {
            vec![
                Arc::new(arrow::array::Int64Array::from(a)),
                Arc::new(arrow::array::Int32Array::from(b)),
            ]
        };
        let mut ids = Vec::new();
        let keys = batch(vec![Some(10), None, Some(10), Some(30)], vec![1, 1, 1, 1]);
        table.intern(&keys, 4, &mut ids).unwrap();
        assert_eq!(ids, [0, 1, 0, 2]);
        table.retain(&[1, 2]).unwrap();
        let keys = batch(vec![Some(30), None, Some(10), Some(30)], vec![1, 1, 1, 2]);
        table.intern(&keys, 4, &mut ids).unwrap();
        assert_eq!(ids, [1, 0, 2, 3]);
        let kept = table.emit(0..4).unwrap();
        assert_eq!(
            kept[0].as_primitive::<arrow::datatypes::Int64Type>(),
            &arrow::array::Int64Array::from(vec![None, Some(30), Some(10), Some(30)])
        );
    }

    #[test]
    fn a_global_table_has_one_key_once_a_row_came() {
        let mut table = KeyedTable::new(Vec::new(), KeyGroups::of_subtask(0, 1, 128)).unwrap();
        let mut ids = Vec::new();
        table.intern(&[], 0, &mut ids).unwrap();
        assert!(table.is_empty());
        table.intern(&[], 3, &mut ids).unwrap();
        assert_eq!((table.len(), ids), (1, vec![0, 0, 0]));
        assert_eq!(table.key_groups().len(), 1);
    }
}
