//! The running `COUNT`, `SUM`, `MIN` and `MAX` of 64-bit integers of a
//! `GROUP BY` without a window, held as one vector per aggregate indexed by
//! group. A boxed DataFusion row `Accumulator` per group and aggregate costs
//! a heap object per group, a virtual call and an array slice per touched
//! group, and a `Vec<ScalarValue>` for each result read; Nexmark q4's
//! `MAX(price)` per auction touches thousands of groups a batch with one or
//! two rows each, where that overhead is most of the work. Used for
//! appending inputs (nothing to take back); the snapshot layout is the row
//! accumulators' own (one `Int64` state column per aggregate), so either
//! path restores the other's state.

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Int64Type};
use flumen_types::{FlumenError, Result};

use crate::window_aggregate::AggregateCall;

/// What one aggregate computes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Count,
    Sum,
    Min,
    Max,
}

/// One aggregate's value per group.
struct Column {
    kind: Kind,
    values: Vec<i64>,
    /// Whether a group has a value: a `SUM`, `MIN` or `MAX` of no non-null
    /// row is NULL (a `COUNT` always has one).
    valid: Vec<bool>,
}

/// Every aggregate's value per group.
pub(crate) struct IntAggregates {
    columns: Vec<Column>,
}

impl IntAggregates {
    /// The vectors for `aggregates` when every one is a plain `COUNT`,
    /// `SUM`, `MIN` or `MAX` (no `DISTINCT`, no `ORDER BY`, one argument)
    /// whose result and row-accumulator state are one `Int64` each
    /// (`output` and `state` give their fields, `state_starts` where each
    /// aggregate's state fields start); `None` otherwise.
    pub(crate) fn for_aggregates(
        aggregates: &[AggregateCall],
        output: &[&Field],
        state: &[Field],
        state_starts: &[usize],
    ) -> Option<Self> {
        let columns = aggregates
            .iter()
            .enumerate()
            .map(|(a, call)| {
                let f = &call.function;
                let kind = match f.fun().name() {
                    "count" => Kind::Count,
                    "sum" => Kind::Sum,
                    "min" => Kind::Min,
                    "max" => Kind::Max,
                    _ => return None,
                };
                let own_state = &state[state_starts[a]..state_starts[a + 1]];
                let plain = !f.is_distinct()
                    && f.order_bys().is_empty()
                    && f.expressions().len() == 1
                    && output[a].data_type() == &DataType::Int64
                    && own_state.len() == 1
                    && own_state[0].data_type() == &DataType::Int64;
                plain.then(|| Column {
                    kind,
                    values: Vec::new(),
                    valid: Vec::new(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(IntAggregates { columns })
    }

    /// Room for groups up to `groups`, each with no rows yet.
    pub(crate) fn add_groups(&mut self, groups: usize) {
        for c in &mut self.columns {
            c.values.resize(groups, 0);
            c.valid.resize(groups, c.kind == Kind::Count);
        }
    }

    /// Aggregate `a`'s value of `group`.
    #[inline]
    pub(crate) fn value(&self, a: usize, group: usize) -> Option<i64> {
        let c = &self.columns[a];
        c.valid[group].then(|| c.values[group])
    }

    /// Whether every aggregate of `group` has the value in `old`.
    pub(crate) fn equals(&self, group: usize, old: &[Option<i64>]) -> bool {
        old.iter()
            .enumerate()
            .all(|(a, &v)| self.value(a, group) == v)
    }

    /// Adds rows `from..to` of `argument` (the aggregate's input, or with
    /// `merging` its partial state) to aggregate `a` of `group`.
    pub(crate) fn update(
        &mut self,
        a: usize,
        group: usize,
        argument: &ArrayRef,
        from: usize,
        to: usize,
        merging: bool,
    ) -> Result<()> {
        let c = &mut self.columns[a];
        if c.kind == Kind::Count && !merging {
            let counted = if argument.null_count() == 0 {
                to - from
            } else {
                (from..to).filter(|&row| argument.is_valid(row)).count()
            };
            c.values[group] += counted as i64;
            return Ok(());
        }
        let ints = argument.as_primitive_opt::<Int64Type>().ok_or_else(|| {
            FlumenError::execution(format!(
                "aggregate: {:?} of {} (expected Int64)",
                c.kind,
                argument.data_type()
            ))
        })?;
        let (mut value, mut valid) = (c.values[group], c.valid[group]);
        for row in from..to {
            if ints.is_null(row) {
                continue;
            }
            let v = ints.value(row);
            value = match (c.kind, valid) {
                (Kind::Count | Kind::Sum, _) => value.wrapping_add(v),
                (_, false) => v,
                (Kind::Min, true) => value.min(v),
                (Kind::Max, true) => value.max(v),
            };
            valid = true;
        }
        c.values[group] = value;
        c.valid[group] = valid;
        Ok(())
    }

    /// Forgets `group`'s rows.
    pub(crate) fn reset(&mut self, group: usize) {
        for c in &mut self.columns {
            c.values[group] = 0;
            c.valid[group] = c.kind == Kind::Count;
        }
    }

    /// Keeps only groups `keep` (ascending), which become groups `0..`.
    pub(crate) fn retain(&mut self, keep: &[usize]) {
        for c in &mut self.columns {
            c.values = keep.iter().map(|&g| c.values[g]).collect();
            c.valid = keep.iter().map(|&g| c.valid[g]).collect();
        }
    }

    /// Every group's state, one column per aggregate, row `g` for group `g`.
    pub(crate) fn states(&self) -> Vec<ArrayRef> {
        self.columns
            .iter()
            .map(|c| -> ArrayRef {
                let nulls = (c.kind != Kind::Count).then(|| NullBuffer::from(c.valid.clone()));
                std::sync::Arc::new(Int64Array::new(c.values.clone().into(), nulls))
            })
            .collect()
    }

    /// Bytes held.
    pub(crate) fn size(&self) -> usize {
        self.columns
            .iter()
            .map(|c| c.values.capacity() * 8 + c.valid.capacity())
            .sum()
    }
}
