//! An operator subtask's keyed state as Arrow batches tagged by key group:
//! what a checkpoint stores, and what a subtask at another parallelism takes
//! its own key groups from on restore. Adding rows shares their buffers and
//! copies nothing, so taking a snapshot at a barrier is cheap; the rows are
//! copied once, when they are written out.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt16Array};
use arrow::compute::{cast, concat_batches, filter_record_batch, interleave};
use arrow::datatypes::{DataType, Field, Schema, UInt16Type};
use flumen_types::{FlumenError, Result};

use crate::key_group::{KeyGroup, KeyGroupRange};

/// Rows of one table of an operator, with the key group of each row.
#[derive(Debug, Clone)]
struct Part {
    table: usize,
    batch: RecordBatch,
    key_groups: KeyGroupsOf,
}

/// The key groups of a part's rows: given, or hashed from its key columns
/// when first needed (off the barrier's path: when it is written out).
#[derive(Debug, Clone)]
struct KeyGroupsOf {
    computed: std::sync::OnceLock<UInt16Array>,
    keys: Vec<usize>,
    max_parallelism: usize,
}

impl KeyGroupsOf {
    fn given(key_groups: UInt16Array) -> Self {
        KeyGroupsOf {
            computed: key_groups.into(),
            keys: Vec::new(),
            max_parallelism: 0,
        }
    }

    fn get(&self, batch: &RecordBatch) -> Result<&UInt16Array> {
        if let Some(k) = self.computed.get() {
            return Ok(k);
        }
        let keys: Vec<ArrayRef> = self.keys.iter().map(|&c| batch.column(c).clone()).collect();
        let mut hashes = Vec::new();
        crate::key_group::hash_keys(&keys, batch.num_rows(), &mut hashes)?;
        let groups: UInt16Array = hashes
            .iter()
            .map(|&h| crate::key_group::key_group_for_hash(h, self.max_parallelism))
            .collect();
        Ok(self.computed.get_or_init(|| groups))
    }
}

/// Which of `key_groups` lie in `range`.
fn in_range(key_groups: &UInt16Array, range: KeyGroupRange) -> BooleanArray {
    key_groups
        .values()
        .iter()
        .map(|&k| Some(range.contains(k)))
        .collect()
}

impl Part {
    fn key_groups(&self) -> Result<&UInt16Array> {
        self.key_groups.get(&self.batch)
    }

    /// The part's rows with a trailing [`KEY_GROUP_COLUMN`]: how a
    /// checkpoint stores them. The rows' buffers are shared, not copied.
    fn stored(&self) -> Result<RecordBatch> {
        let mut fields = self.batch.schema().fields().to_vec();
        fields.push(Arc::new(Field::new(
            KEY_GROUP_COLUMN,
            DataType::UInt16,
            false,
        )));
        let mut columns = self.batch.columns().to_vec();
        columns.push(Arc::new(self.key_groups()?.clone()));
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }

    /// The part's rows whose key group lies in `range`, with their key groups.
    fn in_range(&self, range: KeyGroupRange) -> Result<Option<Part>> {
        let key_groups = self.key_groups()?;
        let keep = in_range(key_groups, range);
        Ok(match keep.true_count() {
            0 => None,
            n if n == keep.len() => Some(self.clone()),
            _ => Some(Part {
                table: self.table,
                batch: filter_record_batch(&self.batch, &keep)?,
                key_groups: KeyGroupsOf::given(
                    arrow::compute::filter(key_groups, &keep)?
                        .as_primitive::<UInt16Type>()
                        .clone(),
                ),
            }),
        })
    }
}

/// Builds the parts of a deferred table one at a time, as they are asked for.
type Sets = Box<dyn Iterator<Item = Result<Part>> + Send>;

/// Rows of a table that an operator hands over as work to do rather than
/// as arrays: built part by part when the snapshot is written out (or
/// resolved), off the barrier's path.
struct Deferred {
    table: usize,
    rows: usize,
    sets: Sets,
}

/// The keyed state of one or more subtasks of an operator. An operator
/// numbers its own tables (window contents, join sides, …) and lays out
/// each table's rows in a schema of its choosing.
#[derive(Default)]
pub struct StateSnapshot {
    parts: Vec<Part>,
    deferred: Vec<Deferred>,
}

impl std::fmt::Debug for StateSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSnapshot")
            .field("parts", &self.parts)
            .field(
                "deferred_rows",
                &self.deferred.iter().map(|d| d.rows).sum::<usize>(),
            )
            .finish()
    }
}

impl StateSnapshot {
    /// Adds the rows of `batch` to table `table`; row `i` is in key group
    /// `key_groups[i]`. The batch's buffers are shared, not copied.
    pub fn add(
        &mut self,
        table: usize,
        batch: &RecordBatch,
        key_groups: &[KeyGroup],
    ) -> Result<()> {
        if batch.num_rows() > 0 {
            self.parts.push(given_part(table, batch, key_groups)?);
        }
        Ok(())
    }

    /// Adds rows given as columns (named by position) to table `table`;
    /// a row's key group is that of its values in the columns `keys`, out
    /// of `max_parallelism`, hashed as the exchanges hash. The hashing is
    /// left for when the rows are written out, so a snapshot at a barrier
    /// only shares buffers.
    pub fn add_keyed_columns(
        &mut self,
        table: usize,
        columns: Vec<ArrayRef>,
        keys: &[usize],
        max_parallelism: usize,
    ) -> Result<()> {
        let part = keyed_part(table, columns, keys, max_parallelism)?;
        if part.batch.num_rows() > 0 {
            self.parts.push(part);
        }
        Ok(())
    }

    /// Adds `rows` rows to table `table` that `make` builds later, when the
    /// snapshot is written out (beside processing, not at the barrier):
    /// column sets keyed by the columns `keys`, as for
    /// [`StateSnapshot::add_keyed_columns`]. `make` must build from data the
    /// operator no longer changes.
    pub fn add_deferred(
        &mut self,
        table: usize,
        rows: usize,
        keys: &[usize],
        max_parallelism: usize,
        make: impl FnOnce() -> Result<Vec<Vec<ArrayRef>>> + Send + 'static,
    ) {
        let keys = keys.to_vec();
        let sets = std::iter::once_with(make).flat_map(move |built| match built {
            Ok(sets) => sets
                .into_iter()
                .map(|columns| keyed_part(table, columns, &keys, max_parallelism))
                .collect(),
            Err(e) => vec![Err(e)],
        });
        self.add_sets(table, rows, Box::new(sets));
    }

    /// Adds `rows` rows to table `table` that `sets` builds one column set
    /// at a time, each with its rows' key groups, when the snapshot is
    /// written out: a set is written and dropped before the next is built,
    /// so a large state is copied through the same memory, a set at a
    /// time. `sets` must build from data the operator no longer changes.
    pub fn add_deferred_grouped(
        &mut self,
        table: usize,
        rows: usize,
        sets: impl Iterator<Item = Result<(Vec<ArrayRef>, Vec<KeyGroup>)>> + Send + 'static,
    ) {
        let parts = sets.map(move |set| {
            let (columns, key_groups) = set?;
            given_part(table, &columns_batch(columns)?, &key_groups)
        });
        self.add_sets(table, rows, Box::new(parts));
    }

    fn add_sets(&mut self, table: usize, rows: usize, sets: Sets) {
        if rows > 0 {
            self.deferred.push(Deferred { table, rows, sets });
        }
    }

    /// Builds the deferred rows, so that the snapshot can be read; the rows
    /// each part built must be the number it declared.
    pub fn resolve(mut self) -> Result<Self> {
        let deferred = std::mem::take(&mut self.deferred);
        for part in BuiltParts::new(deferred) {
            let part = part?;
            if part.batch.num_rows() > 0 {
                self.parts.push(part);
            }
        }
        Ok(self)
    }

    /// The snapshot as `(table, stored batch)` in the form
    /// [`StateSnapshot::to_batches`] gives, the batches of a table and
    /// schema one after another; deferred rows are built as the iterator
    /// is advanced, so only the batch in hand need be in memory.
    pub fn into_stored(self) -> impl Iterator<Item = Result<(usize, RecordBatch)>> + Send {
        let ready = match stored_groups(&self.parts) {
            Ok(groups) => groups
                .into_iter()
                .flat_map(|(table, batches)| batches.into_iter().map(move |b| Ok((table, b))))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        let built = BuiltParts::new(self.deferred)
            .filter(|part| !part.as_ref().is_ok_and(|p| p.batch.num_rows() == 0))
            .map(|part| part.and_then(|p| Ok((p.table, p.stored()?))));
        ready.into_iter().chain(built)
    }

    /// An error unless every deferred part has been built.
    fn resolved(&self) -> Result<()> {
        match self.deferred.first() {
            None => Ok(()),
            Some(d) => Err(FlumenError::internal(format!(
                "state table {} read before its deferred rows were built",
                d.table
            ))),
        }
    }

    /// Adds rows given as columns (named by position in the table's
    /// schema) to table `table`; row `i` is in key group `key_groups[i]`.
    pub fn add_columns(
        &mut self,
        table: usize,
        columns: Vec<ArrayRef>,
        key_groups: &[KeyGroup],
    ) -> Result<()> {
        self.add(table, &columns_batch(columns)?, key_groups)
    }

    /// The state of every subtask in `snapshots`, as one: what a restore at
    /// a new parallelism reads from.
    pub fn merge(snapshots: impl IntoIterator<Item = StateSnapshot>) -> Self {
        let mut merged = StateSnapshot::default();
        for s in snapshots {
            merged.parts.extend(s.parts);
            merged.deferred.extend(s.deferred);
        }
        merged
    }

    /// The rows of `table` whose key groups lie in `range`, a batch per
    /// part as stored (no copy of the whole table, as [`Self::rows`] makes;
    /// parts may differ in which columns they dictionary-encode).
    pub fn batches(&self, table: usize, range: KeyGroupRange) -> Result<Vec<RecordBatch>> {
        self.resolved()?;
        let mut batches = Vec::new();
        for part in self.parts.iter().filter(|p| p.table == table) {
            if let Some(kept) = part.in_range(range)? {
                batches.push(kept.batch);
            }
        }
        Ok(batches)
    }

    /// The rows of `table` whose key groups lie in `range`, in one batch;
    /// `None` when there are none. Parts that dictionary-encode different
    /// columns (subtasks of one operator may) come back with every
    /// dictionary column decoded.
    pub fn rows(&self, table: usize, range: KeyGroupRange) -> Result<Option<RecordBatch>> {
        let mut batches = self.batches(table, range)?;
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let schema = first.schema();
        if batches.iter().any(|b| b.schema() != schema) {
            batches = batches
                .iter()
                .map(dictionaries_decoded)
                .collect::<Result<_>>()?;
        }
        Ok(Some(concat_batches(&batches[0].schema(), &batches)?))
    }

    /// The key groups holding state, ascending.
    pub fn key_groups(&self) -> Result<Vec<KeyGroup>> {
        self.resolved()?;
        let mut groups = Vec::new();
        for part in &self.parts {
            groups.extend(part.key_groups()?.values().iter().copied());
        }
        groups.sort_unstable();
        groups.dedup();
        Ok(groups)
    }

    /// Rows held, over all tables (deferred ones as declared).
    pub fn num_rows(&self) -> usize {
        self.parts.iter().map(|p| p.batch.num_rows()).sum::<usize>()
            + self.deferred.iter().map(|d| d.rows).sum::<usize>()
    }

    /// The snapshot as batches per table and schema, each batch with a
    /// trailing [`KEY_GROUP_COLUMN`]: the form a checkpoint stores. The
    /// rows' buffers are shared, not copied.
    pub fn to_batches(&self) -> Result<Vec<(usize, Vec<RecordBatch>)>> {
        self.resolved()?;
        stored_groups(&self.parts)
    }

    /// Adds the rows of a stored batch of `table` (made by
    /// [`StateSnapshot::to_batches`]) whose key groups lie in `range`.
    pub fn add_stored(
        &mut self,
        table: usize,
        stored: &RecordBatch,
        range: KeyGroupRange,
    ) -> Result<()> {
        let last = stored.num_columns().checked_sub(1);
        let key_groups = last
            .filter(|&i| stored.schema().field(i).name() == KEY_GROUP_COLUMN)
            .and_then(|i| stored.column(i).as_primitive_opt::<UInt16Type>())
            .filter(|c| c.null_count() == 0)
            .ok_or_else(|| {
                FlumenError::state(format!(
                    "state table {table} has no {KEY_GROUP_COLUMN} column of UInt16"
                ))
            })?
            .clone();
        let rows = stored.project(&(0..stored.num_columns() - 1).collect::<Vec<_>>())?;
        let part = Part {
            table,
            batch: rows,
            key_groups: KeyGroupsOf::given(key_groups),
        };
        if let Some(kept) = part.in_range(range)? {
            self.parts.push(kept);
        }
        Ok(())
    }
}

/// The stored batches of `parts`, grouped by table and schema.
fn stored_groups(parts: &[Part]) -> Result<Vec<(usize, Vec<RecordBatch>)>> {
    let mut groups: Vec<(usize, Vec<RecordBatch>)> = Vec::new();
    for part in parts {
        let stored = part.stored()?;
        let same = |b: &RecordBatch| b.schema() == stored.schema();
        match groups
            .iter_mut()
            .find(|(t, g)| *t == part.table && g.first().is_some_and(same))
        {
            Some((_, g)) => g.push(stored),
            None => groups.push((part.table, vec![stored])),
        }
    }
    Ok(groups)
}

/// The rows of `batch` in table `table`, row `i` in key group `key_groups[i]`.
fn given_part(table: usize, batch: &RecordBatch, key_groups: &[KeyGroup]) -> Result<Part> {
    if batch.num_rows() != key_groups.len() {
        return Err(FlumenError::internal(format!(
            "state table {table}: {} rows but {} key groups",
            batch.num_rows(),
            key_groups.len()
        )));
    }
    Ok(Part {
        table,
        batch: batch.clone(),
        key_groups: KeyGroupsOf::given(UInt16Array::from(key_groups.to_vec())),
    })
}

/// Rows given as columns in table `table`, their key groups to be hashed
/// from the columns `keys` out of `max_parallelism` when first needed.
fn keyed_part(
    table: usize,
    columns: Vec<ArrayRef>,
    keys: &[usize],
    max_parallelism: usize,
) -> Result<Part> {
    let batch = columns_batch(columns)?;
    if let Some(&bad) = keys.iter().find(|&&k| k >= batch.num_columns()) {
        return Err(FlumenError::internal(format!(
            "state table {table}: key column {bad} of {} columns",
            batch.num_columns()
        )));
    }
    Ok(Part {
        table,
        batch,
        key_groups: KeyGroupsOf {
            computed: std::sync::OnceLock::new(),
            keys: keys.to_vec(),
            max_parallelism,
        },
    })
}

/// The parts of deferred tables, built one at a time as asked for; after
/// each table's last part, an error if it built other than the rows it
/// declared.
struct BuiltParts {
    deferred: std::vec::IntoIter<Deferred>,
    /// The table being built and the rows it has built so far.
    current: Option<(Deferred, usize)>,
}

impl BuiltParts {
    fn new(deferred: Vec<Deferred>) -> Self {
        BuiltParts {
            deferred: deferred.into_iter(),
            current: None,
        }
    }
}

impl Iterator for BuiltParts {
    type Item = Result<Part>;

    fn next(&mut self) -> Option<Result<Part>> {
        loop {
            let (d, built) = match &mut self.current {
                Some(current) => current,
                None => self.current.insert((self.deferred.next()?, 0)),
            };
            match d.sets.next() {
                Some(Ok(part)) => {
                    *built += part.batch.num_rows();
                    return Some(Ok(part));
                }
                Some(Err(e)) => {
                    self.current = None;
                    self.deferred = Vec::new().into_iter();
                    return Some(Err(e));
                }
                None => {
                    let (table, declared, built) = (d.table, d.rows, *built);
                    self.current = None;
                    if built != declared {
                        self.deferred = Vec::new().into_iter();
                        return Some(Err(FlumenError::internal(format!(
                            "state table {table}: {built} rows built, {declared} declared"
                        ))));
                    }
                }
            }
        }
    }
}

/// Columns named by position (`c0`, `c1`, …), as one batch.
/// `batch` with each dictionary column cast to its values' type.
fn dictionaries_decoded(batch: &RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Dictionary(_, values) => cast(c, values),
            _ => Ok(c.clone()),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn columns_batch(columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Name of the column that a stored state table adds: the key group of each row.
pub const KEY_GROUP_COLUMN: &str = "_key_group";

/// Column `index` of a restored state table as the array type `T`, or an
/// error naming the table and column: a snapshot that does not fit the
/// operator is an error, never a panic.
pub fn state_column<T: 'static>(batch: &RecordBatch, table: usize, index: usize) -> Result<&T> {
    let column = (index < batch.num_columns())
        .then(|| batch.column(index))
        .ok_or_else(|| {
            FlumenError::state(format!(
                "state table {table} has {} columns, column {index} is missing",
                batch.num_columns()
            ))
        })?;
    column.as_any().downcast_ref::<T>().ok_or_else(|| {
        FlumenError::state(format!(
            "state table {table}: column {index} is {}, not the type this operator stores",
            column.data_type()
        ))
    })
}

/// The rows `picked` (part, row) of a table's stored `parts` (from
/// [`StateSnapshot::batches`]) in one batch, in that order: one copy of
/// the rows an operator restores together, without first concatenating
/// the table. Parts of different layouts (column counts or types) are an
/// error naming `table`. Called once per group of rows (a window, a join
/// slot), so the layouts are checked by the column count and the gather
/// itself, not by comparing every part's schema each time.
pub fn gather_parts(
    table: usize,
    parts: &[RecordBatch],
    picked: &[(usize, usize)],
) -> Result<RecordBatch> {
    let Some(first) = parts.first() else {
        return Err(FlumenError::internal(format!(
            "state table {table}: rows gathered from no parts"
        )));
    };
    let layouts = |e: arrow::error::ArrowError| {
        FlumenError::state(format!(
            "state table {table}: parts of different layouts: {e}"
        ))
    };
    if parts.iter().any(|p| p.num_columns() != first.num_columns()) {
        return Err(FlumenError::state(format!(
            "state table {table}: parts of different layouts"
        )));
    }
    let columns = (0..first.num_columns())
        .map(|c| {
            let arrays: Vec<&dyn Array> = parts.iter().map(|p| p.column(c).as_ref()).collect();
            interleave(&arrays, picked)
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(layouts)?;
    RecordBatch::try_new_with_options(
        first.schema(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(picked.len())),
    )
    .map_err(layouts)
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Int64Type};

    use super::*;

    fn batch(values: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    #[test]
    fn rows_gathered_from_parts_come_in_the_order_picked() {
        let parts = [batch(vec![10, 11, 12]), batch(vec![20, 21])];
        let got = gather_parts(0, &parts, &[(1, 1), (0, 2), (1, 0), (0, 0)]).unwrap();
        assert_eq!(
            got.column(0).as_primitive::<Int64Type>().values().to_vec(),
            [21, 12, 20, 10]
        );
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, false)])),
            vec![Arc::new(arrow::array::StringArray::from(vec!["1"]))],
        )
        .unwrap();
        let wider = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("v", DataType::Int64, false),
                Field::new("w", DataType::Int64, false),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(Int64Array::from(vec![2])),
            ],
        )
        .unwrap();
        for odd in [other, wider] {
            let err = gather_parts(3, &[parts[0].clone(), odd], &[(0, 0)]).unwrap_err();
            assert!(
                err.to_string()
                    .contains("state table 3: parts of different layouts")
            );
        }
    }

    fn values(batch: Option<RecordBatch>) -> Vec<i64> {
        let mut v: Vec<i64> = batch
            .map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    #[test]
    fn stored_batches_round_trip_by_key_group_range() {
        let mut a = StateSnapshot::default();
        a.add(0, &batch(vec![10, 11, 12]), &[3, 1, 3]).unwrap();
        a.add(1, &batch(vec![20, 21]), &[1, 4]).unwrap();
        let stored = a.to_batches().unwrap();
        assert_eq!(stored.len(), 2);
        let mut back = StateSnapshot::default();
        let range = KeyGroupRange { start: 0, end: 4 };
        for (table, batches) in &stored {
            for b in batches {
                back.add_stored(*table, b, range).unwrap();
            }
        }
        assert_eq!(values(back.rows(0, range).unwrap()), [10, 11, 12]);
        assert_eq!(values(back.rows(1, range).unwrap()), [20]);
        let without = stored[0].1[0].project(&[0]).unwrap();
        let err = back.add_stored(0, &without, range).unwrap_err();
        assert!(err.to_string().contains("_key_group"), "{err}");
    }

    /// Parts of one table that differ in which columns they
    /// dictionary-encode come back as one batch, every dictionary decoded.
    #[test]
    fn parts_with_and_without_a_dictionary_read_back_together() {
        use arrow::array::{DictionaryArray, StringArray, UInt32Array};
        use arrow::datatypes::UInt32Type;
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        let encoded = DictionaryArray::<UInt32Type>::try_new(
            UInt32Array::from(vec![Some(1), None, Some(0)]),
            strings,
        )
        .unwrap();
        let mut a = StateSnapshot::default();
        a.add_columns(0, vec![Arc::new(encoded)], &[1, 2, 3])
            .unwrap();
        let mut b = StateSnapshot::default();
        b.add_columns(0, vec![Arc::new(StringArray::from(vec!["c"]))], &[4])
            .unwrap();
        let all = StateSnapshot::merge([a, b]);
        let rows = all
            .rows(0, KeyGroupRange { start: 0, end: 8 })
            .unwrap()
            .unwrap();
        let got: Vec<Option<&str>> = rows.column(0).as_string::<i32>().iter().collect();
        assert_eq!(got, [Some("b"), None, Some("a"), Some("c")]);
    }

    #[test]
    fn a_column_of_the_wrong_type_is_an_error_naming_the_table() {
        let b = batch(vec![1]);
        assert!(state_column::<Int64Array>(&b, 2, 0).is_ok());
        let err = state_column::<arrow::array::BinaryArray>(&b, 2, 0).unwrap_err();
        assert!(
            err.to_string().contains("state table 2: column 0 is Int64"),
            "{err}"
        );
        let err = state_column::<Int64Array>(&b, 2, 5).unwrap_err();
        assert!(err.to_string().contains("column 5 is missing"), "{err}");
    }

    #[test]
    fn a_restore_takes_the_key_groups_of_its_range_only() {
        let mut a = StateSnapshot::default();
        a.add(0, &batch(vec![10, 11, 12, 13]), &[3, 1, 3, 0])
            .unwrap();
        a.add(1, &batch(vec![20]), &[1]).unwrap();
        let mut b = StateSnapshot::default();
        b.add(0, &batch(vec![14, 15]), &[5, 2]).unwrap();
        let all = StateSnapshot::merge([a, b]);
        assert_eq!(all.key_groups().unwrap(), [0, 1, 2, 3, 5]);
        assert_eq!(all.num_rows(), 7);

        let low = KeyGroupRange { start: 0, end: 2 };
        let high = KeyGroupRange { start: 2, end: 6 };
        assert_eq!(values(all.rows(0, low).unwrap()), [11, 13]);
        assert_eq!(values(all.rows(0, high).unwrap()), [10, 12, 14, 15]);
        assert_eq!(values(all.rows(1, low).unwrap()), [20]);
        assert!(all.rows(1, high).unwrap().is_none());
    }

    #[test]
    fn deferred_rows_are_built_by_resolve_and_checked_against_their_count() {
        let mut a = StateSnapshot::default();
        a.add_deferred(0, 3, &[0], 128, || {
            Ok(vec![
                vec![Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef],
                vec![Arc::new(Int64Array::from(vec![3])) as ArrayRef],
            ])
        });
        assert_eq!(a.num_rows(), 3);
        let range = KeyGroupRange { start: 0, end: 128 };
        let err = a.rows(0, range).unwrap_err();
        assert!(err.to_string().contains("deferred"), "{err}");
        let a = a.resolve().unwrap();
        assert_eq!(values(a.rows(0, range).unwrap()), [1, 2, 3]);

        let mut wrong = StateSnapshot::default();
        wrong.add_deferred(0, 2, &[0], 128, || {
            Ok(vec![vec![Arc::new(Int64Array::from(vec![1])) as ArrayRef]])
        });
        let err = wrong.resolve().unwrap_err();
        assert!(
            err.to_string().contains("1 rows built, 2 declared"),
            "{err}"
        );
    }
}
