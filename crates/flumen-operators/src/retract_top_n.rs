//! TopN over an updating input (Flink's retract TopN): the first N rows of
//! each partition of a stream whose rows may be taken back, such as the
//! running counts of a non-windowed `GROUP BY`. A row taken back can open a
//! place in the first N for one that was below it, so every row of a
//! partition is kept, in a B-tree by order key and arrival; each batch that
//! changes a partition's first N emits the difference (`+I`, `-U`/`+U`,
//! `-D`). Rows are kept as `arrow-row` rows of their output columns, which
//! convert back to columns when emitted.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BinaryArray, Int8Array, Int64Array, RecordBatch, UInt64Array,
};
use arrow::datatypes::{Int8Type, SchemaRef};
use arrow::row::{OwnedRow, Row, RowConverter, Rows};
use datafusion::common::HashMap;
use flumen_runtime::{JobMetrics, Operator, StateGauge};
use flumen_state::{KeyGroups, StateSnapshot, state_column};
use flumen_types::{Result, RowOp, Watermark};

use crate::top_n::{RankFunction, next_rank, partition_key_groups};

/// The rows of one partition, by order key and arrival id.
struct Ranked {
    rows: BTreeMap<(OwnedRow, u64), OwnedRow>,
    /// The watermark when a row last came or went (for `state_ttl`).
    touched_at: i64,
}

/// A row of a partition's first N: its number, arrival id and values.
#[derive(Clone)]
struct Numbered {
    rank: u64,
    id: u64,
    row: OwnedRow,
}

/// How a [`RetractTopN`] is set up (from the TopN factory).
pub(crate) struct RetractTopNSpec {
    pub(crate) width: usize,
    pub(crate) partition_columns: Vec<usize>,
    pub(crate) order_columns: Vec<usize>,
    pub(crate) op_column: usize,
    pub(crate) function: RankFunction,
    pub(crate) limit: usize,
    pub(crate) state_ttl_ns: Option<i64>,
    pub(crate) output: SchemaRef,
    pub(crate) partition_converter: RowConverter,
    pub(crate) order_converter: RowConverter,
    /// Encodes the `width` output columns of a row.
    pub(crate) row_converter: RowConverter,
}

/// The running TopN of one subtask over an updating input.
pub(crate) struct RetractTopN {
    spec: RetractTopNSpec,
    partitions: HashMap<Box<[u8]>, Ranked>,
    next_id: u64,
    watermark: i64,
    last_sweep: i64,
    /// Bytes of the kept rows and keys.
    bytes: usize,
    key_groups: KeyGroups,
    metrics: Arc<JobMetrics>,
    gauge: StateGauge,
}

/// Bytes a kept row costs besides its order key and values: its B-tree slot.
const ROW_OVERHEAD: usize = 64;

fn row_bytes(key: &OwnedRow, row: &OwnedRow) -> usize {
    key.as_ref().len() + row.as_ref().len() + ROW_OVERHEAD
}

impl RetractTopN {
    pub(crate) fn new(
        spec: RetractTopNSpec,
        key_groups: KeyGroups,
        metrics: Arc<JobMetrics>,
    ) -> Self {
        RetractTopN {
            spec,
            partitions: HashMap::new(),
            next_id: 0,
            watermark: i64::MIN,
            last_sweep: i64::MIN,
            bytes: 0,
            key_groups,
            metrics,
            gauge: StateGauge::default(),
        }
    }

    /// The first N rows of `partition` with their numbers.
    fn first(&self, partition: Option<&Ranked>) -> Vec<Numbered> {
        let Some(p) = partition else {
            return Vec::new();
        };
        let limit = self.spec.limit as u64;
        let mut out: Vec<Numbered> = Vec::new();
        let mut previous: Option<&OwnedRow> = None;
        let mut dense = 0;
        for (i, ((key, id), row)) in p.rows.iter().enumerate() {
            let tie = previous == Some(key);
            let rank = next_rank(
                self.spec.function,
                i,
                tie,
                out.last().map(|n| n.rank),
                &mut dense,
            );
            if rank > limit {
                break;
            }
            out.push(Numbered {
                rank,
                id: *id,
                row: row.clone(),
            });
            previous = Some(key);
        }
        out
    }

    /// The changes between a partition's first N before and after.
    fn diff(before: &[Numbered], after: &[Numbered], out: &mut Vec<(Numbered, RowOp)>) {
        for i in 0..before.len().max(after.len()) {
            match (before.get(i), after.get(i)) {
                (Some(o), Some(n)) if o.rank == n.rank && o.id == n.id => {}
                (Some(o), Some(n)) => {
                    out.push((o.clone(), RowOp::UpdateBefore));
                    out.push((n.clone(), RowOp::UpdateAfter));
                }
                (Some(o), None) => out.push((o.clone(), RowOp::Delete)),
                (None, Some(n)) => out.push((n.clone(), RowOp::Insert)),
                (None, None) => {}
            }
        }
    }

    fn emit(&self, changes: &[(Numbered, RowOp)]) -> Result<RecordBatch> {
        let mut columns = self
            .spec
            .row_converter
            .convert_rows(changes.iter().map(|(n, _)| n.row.row()))?;
        columns.push(Arc::new(UInt64Array::from_iter_values(
            changes.iter().map(|(n, _)| n.rank),
        )));
        columns.push(Arc::new(Int8Array::from_iter_values(
            changes.iter().map(|(_, op)| *op as i8),
        )));
        Ok(RecordBatch::try_new(self.spec.output.clone(), columns)?)
    }

    /// Adds a row to partition `pkey`.
    fn insert(&mut self, pkey: &[u8], key: OwnedRow, row: OwnedRow) {
        let id = self.next_id;
        self.next_id += 1;
        self.bytes += row_bytes(&key, &row);
        if !self.partitions.contains_key(pkey) {
            self.bytes += pkey.len() + ROW_OVERHEAD;
            self.partitions.insert(
                pkey.into(),
                Ranked {
                    rows: BTreeMap::new(),
                    touched_at: self.watermark,
                },
            );
        }
        let p = self.partitions.get_mut(pkey).expect("inserted above");
        p.rows.insert((key, id), row);
        p.touched_at = self.watermark;
    }

    /// Takes back one row of partition `pkey` equal to `row` with order key
    /// `key`; a row not held (dropped by `state_ttl`) is ignored, as Flink
    /// does.
    fn retract(&mut self, pkey: &[u8], key: Row<'_>, row: Row<'_>) {
        let Some(p) = self.partitions.get_mut(pkey) else {
            return;
        };
        let key = key.owned();
        let found = p
            .rows
            .range((key.clone(), 0)..=(key, u64::MAX))
            .find(|(_, kept)| kept.row() == row)
            .map(|(k, _)| k.clone());
        if let Some(k) = found
            && let Some(kept) = p.rows.remove(&k)
        {
            self.bytes -= row_bytes(&k.0, &kept);
            p.touched_at = self.watermark;
        }
    }

    /// Drops partitions that emptied or that no row reached for `state_ttl`.
    fn drop_partitions(&mut self, touched: &[Box<[u8]>]) {
        for pkey in touched {
            if self.partitions.get(pkey).is_some_and(|p| p.rows.is_empty()) {
                self.partitions.remove(pkey);
                self.bytes -= pkey.len() + ROW_OVERHEAD;
            }
        }
        let Some(ttl) = self.spec.state_ttl_ns else {
            return;
        };
        if self.watermark < self.last_sweep.saturating_add(ttl / 2) {
            return;
        }
        self.last_sweep = self.watermark;
        let cutoff = self.watermark.saturating_sub(ttl);
        let mut freed = 0;
        self.partitions.retain(|pkey, p| {
            let keep = p.touched_at >= cutoff;
            if !keep {
                freed += pkey.len()
                    + ROW_OVERHEAD
                    + p.rows
                        .iter()
                        .map(|((k, _), r)| row_bytes(k, r))
                        .sum::<usize>();
            }
            keep
        });
        self.bytes -= freed;
    }

    fn convert(converter: &RowConverter, batch: &RecordBatch, columns: &[usize]) -> Result<Rows> {
        let arrays: Vec<ArrayRef> = columns.iter().map(|&c| batch.column(c).clone()).collect();
        Ok(converter.convert_columns(&arrays)?)
    }
}

impl Operator for RetractTopN {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        // Without PARTITION BY every row is in the one partition, keyed by
        // no bytes.
        let partition_keys = (!self.spec.partition_columns.is_empty())
            .then(|| {
                Self::convert(
                    &self.spec.partition_converter,
                    &batch,
                    &self.spec.partition_columns,
                )
            })
            .transpose()?;
        let order_keys =
            Self::convert(&self.spec.order_converter, &batch, &self.spec.order_columns)?;
        let width: Vec<usize> = (0..self.spec.width).collect();
        let rows = Self::convert(&self.spec.row_converter, &batch, &width)?;
        let ops = batch
            .column(self.spec.op_column)
            .as_primitive::<Int8Type>()
            .clone();
        let mut before: HashMap<Box<[u8]>, Vec<Numbered>> = HashMap::new();
        let mut touched: Vec<Box<[u8]>> = Vec::new();
        for r in 0..n {
            let pkey: &[u8] = partition_keys.as_ref().map_or(&[], |k| k.row(r).data());
            if !before.contains_key(pkey) {
                let first = self.first(self.partitions.get(pkey));
                before.insert(pkey.into(), first);
                touched.push(pkey.into());
            }
            if RowOp::from_code(ops.value(r)).is_some_and(RowOp::is_addition) {
                self.insert(pkey, order_keys.row(r).owned(), rows.row(r).owned());
            } else {
                self.retract(pkey, order_keys.row(r), rows.row(r));
            }
        }
        let mut changes = Vec::new();
        for pkey in &touched {
            let after = self.first(self.partitions.get(pkey));
            Self::diff(&before[pkey], &after, &mut changes);
        }
        if !changes.is_empty() {
            out.push(self.emit(&changes)?);
        }
        self.drop_partitions(&touched);
        Ok(())
    }

    fn process_watermark(
        &mut self,
        watermark: Watermark,
        _out: &mut Vec<RecordBatch>,
    ) -> Result<Option<Watermark>> {
        self.watermark = self.watermark.max(watermark.0);
        self.drop_partitions(&[]);
        self.metrics.report_state(&mut self.gauge, self.bytes);
        Ok(Some(watermark))
    }

    fn finish(&mut self, _out: &mut Vec<RecordBatch>) -> Result<()> {
        self.metrics.report_state(&mut self.gauge, 0);
        Ok(())
    }

    /// One snapshot row per kept row: its values, partition and order keys
    /// (`arrow-row` bytes), arrival id and its partition's last change.
    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::default();
        let (mut pkeys, mut okeys, mut ids, mut touched, mut values) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (pkey, p) in &self.partitions {
            for ((key, id), row) in &p.rows {
                pkeys.push(pkey.as_ref());
                okeys.push(key.as_ref());
                ids.push(*id);
                touched.push(p.touched_at);
                values.push(row.row());
            }
        }
        if values.is_empty() {
            return Ok(snapshot);
        }
        let key_groups = partition_key_groups(
            &self.spec.partition_converter,
            !self.spec.partition_columns.is_empty(),
            &pkeys,
            &self.key_groups,
        )?;
        let mut columns = self.spec.row_converter.convert_rows(values)?;
        columns.push(Arc::new(BinaryArray::from_iter_values(pkeys)));
        columns.push(Arc::new(BinaryArray::from_iter_values(okeys)));
        columns.push(Arc::new(UInt64Array::from(ids)));
        columns.push(Arc::new(Int64Array::from(touched)));
        snapshot.add_columns(0, columns, &key_groups)?;
        Ok(snapshot)
    }

    /// Takes the stored rows back a part at a time, as stored (no copy of
    /// the whole table first).
    fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        let w = self.spec.width;
        let parser = self.spec.order_converter.parser();
        for batch in snapshot.batches(0, self.key_groups.range)? {
            let pkeys = state_column::<BinaryArray>(&batch, 0, w)?;
            let okeys = state_column::<BinaryArray>(&batch, 0, w + 1)?;
            let ids = state_column::<UInt64Array>(&batch, 0, w + 2)?;
            let touched = state_column::<Int64Array>(&batch, 0, w + 3)?;
            let rows = self
                .spec
                .row_converter
                .convert_columns(&batch.columns()[..w])?;
            for r in 0..batch.num_rows() {
                let pkey = pkeys.value(r);
                let key = parser.parse(okeys.value(r)).owned();
                let row = rows.row(r).owned();
                self.bytes += row_bytes(&key, &row);
                if !self.partitions.contains_key(pkey) {
                    self.bytes += pkey.len() + ROW_OVERHEAD;
                }
                let p = self.partitions.entry(pkey.into()).or_insert(Ranked {
                    rows: BTreeMap::new(),
                    touched_at: i64::MIN,
                });
                p.rows.insert((key, ids.value(r)), row);
                p.touched_at = p.touched_at.max(touched.value(r));
                self.next_id = self.next_id.max(ids.value(r) + 1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, UInt64Type};
    use arrow::row::SortField;

    use super::*;

    fn op(ttl: i64) -> RetractTopN {
        let output = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("rank", DataType::UInt64, false),
            Field::new("_op", DataType::Int8, false),
        ]));
        let converter = || RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let spec = RetractTopNSpec {
            width: 1,
            partition_columns: Vec::new(),
            order_columns: vec![0],
            op_column: 1,
            function: RankFunction::RowNumber,
            limit: 2,
            state_ttl_ns: Some(ttl),
            output,
            partition_converter: RowConverter::new(Vec::new()).unwrap(),
            order_converter: converter(),
            row_converter: converter(),
        };
        RetractTopN::new(
            spec,
            KeyGroups::of_subtask(0, 1, 128),
            Arc::new(JobMetrics::default()),
        )
    }

    fn batch(values: Vec<i64>, ops: Vec<RowOp>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("_op", DataType::Int8, false),
        ]));
        let ops = Int8Array::from_iter_values(ops.into_iter().map(|o| o as i8));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(values)), Arc::new(ops)],
        )
        .unwrap()
    }

    fn changes(out: &[RecordBatch]) -> Vec<(i64, u64, i8)> {
        out.iter()
            .flat_map(|b| {
                let v = b.column(0).as_primitive::<Int64Type>().clone();
                let r = b.column(1).as_primitive::<UInt64Type>().clone();
                let o = b.column(2).as_primitive::<Int8Type>().clone();
                (0..b.num_rows()).map(move |i| (v.value(i), r.value(i), o.value(i)))
            })
            .collect()
    }

    #[test]
    fn a_partition_idle_past_the_ttl_is_dropped_and_late_retractions_are_ignored() {
        let mut top = op(10);
        let mut out = Vec::new();
        top.process_batch(batch(vec![5, 3, 9], vec![RowOp::Insert; 3]), &mut out)
            .unwrap();
        assert_eq!(
            changes(&out),
            [(3, 1, 0), (5, 2, 0)],
            "ascending order, first two"
        );
        assert!(top.bytes > 0);
        top.process_watermark(Watermark(100), &mut Vec::new())
            .unwrap();
        assert_eq!(top.bytes, 0, "the idle partition is gone");
        let mut out = Vec::new();
        top.process_batch(
            batch(vec![3, 7], vec![RowOp::Delete, RowOp::Insert]),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            changes(&out),
            [(7, 1, 0)],
            "the dropped row's retraction is ignored"
        );
    }
}
