//! An operator subtask's keyed state as Arrow batches split by key group:
//! what a checkpoint stores, and what a subtask at another parallelism takes
//! its own key groups from on restore.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{Field, Schema};
use flumen_types::Result;

use crate::key_group::{KeyGroup, KeyGroupRange};

/// Rows of one table of an operator in one key group.
#[derive(Debug, Clone)]
struct Part {
    table: usize,
    key_group: KeyGroup,
    batch: RecordBatch,
}

/// The keyed state of one or more subtasks of an operator. An operator
/// numbers its own tables (window contents, join sides, …) and lays out
/// each table's rows in a schema of its choosing.
#[derive(Debug, Clone, Default)]
pub struct StateSnapshot {
    parts: Vec<Part>,
}

impl StateSnapshot {
    /// Adds the rows of `batch` to table `table`; row `i` is in key group
    /// `key_groups[i]`.
    pub fn add(
        &mut self,
        table: usize,
        batch: &RecordBatch,
        key_groups: &[KeyGroup],
    ) -> Result<()> {
        debug_assert_eq!(batch.num_rows(), key_groups.len());
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
        order.sort_by_key(|&row| key_groups[row as usize]);
        let sorted = take_record_batch(batch, &UInt32Array::from(order.clone()))?;
        let mut start = 0;
        while start < order.len() {
            let key_group = key_groups[order[start] as usize];
            let end = start
                + order[start..]
                    .iter()
                    .take_while(|&&row| key_groups[row as usize] == key_group)
                    .count();
            self.parts.push(Part {
                table,
                key_group,
                batch: sorted.slice(start, end - start),
            });
            start = end;
        }
        Ok(())
    }

    /// Adds rows given as columns (named by position in the table's
    /// schema) to table `table`; row `i` is in key group `key_groups[i]`.
    pub fn add_columns(
        &mut self,
        table: usize,
        columns: Vec<ArrayRef>,
        key_groups: &[KeyGroup],
    ) -> Result<()> {
        let fields: Vec<Field> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        self.add(table, &batch, key_groups)
    }

    /// The state of every subtask in `snapshots`, as one: what a restore at
    /// a new parallelism reads from.
    pub fn merge(snapshots: impl IntoIterator<Item = StateSnapshot>) -> Self {
        StateSnapshot {
            parts: snapshots.into_iter().flat_map(|s| s.parts).collect(),
        }
    }

    /// The rows of `table` whose key groups lie in `range`, in one batch;
    /// `None` when there are none.
    pub fn rows(&self, table: usize, range: KeyGroupRange) -> Result<Option<RecordBatch>> {
        let batches: Vec<&RecordBatch> = self
            .parts
            .iter()
            .filter(|p| p.table == table && range.contains(p.key_group))
            .map(|p| &p.batch)
            .collect();
        match batches.first() {
            None => Ok(None),
            Some(first) => Ok(Some(concat_batches(
                &first.schema(),
                batches.iter().copied(),
            )?)),
        }
    }

    /// The key groups holding state, ascending.
    pub fn key_groups(&self) -> Vec<KeyGroup> {
        let mut groups: Vec<KeyGroup> = self.parts.iter().map(|p| p.key_group).collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    }

    /// Rows held, over all tables.
    pub fn num_rows(&self) -> usize {
        self.parts.iter().map(|p| p.batch.num_rows()).sum()
    }
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

    fn values(batch: Option<RecordBatch>) -> Vec<i64> {
        let mut v: Vec<i64> = batch
            .map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .unwrap_or_default();
        v.sort_unstable();
        v
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
        assert_eq!(all.key_groups(), [0, 1, 2, 3, 5]);
        assert_eq!(all.num_rows(), 7);

        let low = KeyGroupRange { start: 0, end: 2 };
        let high = KeyGroupRange { start: 2, end: 6 };
        assert_eq!(values(all.rows(0, low).unwrap()), [11, 13]);
        assert_eq!(values(all.rows(0, high).unwrap()), [10, 12, 14, 15]);
        assert_eq!(values(all.rows(1, low).unwrap()), [20]);
        assert!(all.rows(1, high).unwrap().is_none());
    }
}
