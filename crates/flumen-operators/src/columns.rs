//! Arrow columns from aggregate values and back: output columns from
//! per-row scalar values, and row accumulators' intermediate states as
//! columns of a state snapshot.

use arrow::array::ArrayRef;
use arrow::compute::cast;
use arrow::datatypes::Field;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use flumen_types::{FlumenError, Result};

use crate::window_aggregate::AggregateCall;

fn err(e: impl std::fmt::Display) -> FlumenError {
    FlumenError::execution(format!("aggregate state: {e}"))
}

/// One output column from per-row scalar values, cast to the field's type.
pub(crate) fn scalar_column(
    values: impl Iterator<Item = ScalarValue>,
    field: &Field,
) -> Result<ArrayRef> {
    let column = ScalarValue::iter_to_array(values).map_err(err)?;
    Ok(if column.data_type() == field.data_type() {
        column
    } else {
        cast(&column, field.data_type())?
    })
}

/// The intermediate-state fields of `aggregates`' groups accumulators, all
/// in order, with the index where each aggregate's fields start (and one
/// past the last).
pub(crate) fn state_fields(aggregates: &[AggregateCall]) -> Result<(Vec<Field>, Vec<usize>)> {
    let mut fields = Vec::new();
    let mut starts = vec![0];
    for a in aggregates {
        let state = a.function.state_fields().map_err(err)?;
        fields.extend(state.iter().map(|f| f.as_ref().clone().with_nullable(true)));
        starts.push(fields.len());
    }
    Ok((fields, starts))
}

/// The same layout for row accumulators made by `create(aggregate)`, read
/// from a fresh one's state: a retracting (sliding) accumulator keeps more
/// than the aggregate's declared state (SUM keeps a count too).
pub(crate) fn row_state_fields(
    aggregates: usize,
    create: impl Fn(usize) -> Result<Box<dyn Accumulator>>,
) -> Result<(Vec<Field>, Vec<usize>)> {
    let mut fields = Vec::new();
    let mut starts = vec![0];
    for a in 0..aggregates {
        let state = create(a)?.state().map_err(err)?;
        fields.extend(
            state
                .iter()
                .enumerate()
                .map(|(i, v)| Field::new(format!("s{a}_{i}"), v.data_type(), true)),
        );
        starts.push(fields.len());
    }
    Ok((fields, starts))
}

/// The intermediate states of the accumulators of every entry (one slice
/// of one accumulator per aggregate each) as columns, row `i` for entry `i`.
/// Reading a state may consume it, so each accumulator is replaced by a
/// fresh one (from `create(aggregate)`) merged from what was read.
pub(crate) fn take_states<'a>(
    entries: impl Iterator<Item = &'a mut [Box<dyn Accumulator>]>,
    (fields, starts): &(Vec<Field>, Vec<usize>),
    create: impl Fn(usize) -> Result<Box<dyn Accumulator>>,
) -> Result<Vec<ArrayRef>> {
    let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); fields.len()];
    let mut slots = Vec::new();
    for entry in entries {
        for (a, acc) in entry.iter_mut().enumerate() {
            let state = acc.state().map_err(err)?;
            for (field, value) in (starts[a]..starts[a + 1]).zip(state) {
                values[field].push(value);
            }
        }
        slots.push(entry);
    }
    let columns: Vec<ArrayRef> = values
        .into_iter()
        .zip(fields)
        .map(|(v, f)| scalar_column(v.into_iter(), f))
        .collect::<Result<_>>()?;
    for (row, entry) in slots.into_iter().enumerate() {
        for (a, acc) in entry.iter_mut().enumerate() {
            *acc = create(a)?;
            merge_state(acc.as_mut(), &columns[starts[a]..starts[a + 1]], row)?;
        }
    }
    Ok(columns)
}

/// Merges row `row` of one aggregate's state columns into `acc`.
pub(crate) fn merge_state(
    acc: &mut dyn Accumulator,
    columns: &[ArrayRef],
    row: usize,
) -> Result<()> {
    let state: Vec<ArrayRef> = columns.iter().map(|c| c.slice(row, 1)).collect();
    acc.merge_batch(&state).map_err(err)
}

/// Takes row `row` of one aggregate's state columns back out of `acc`,
/// rebuilding it (with `create`) from its state minus that one. Exact for
/// the states of the aggregates that can take rows back (COUNT, SUM, AVG:
/// counts and sums), where the state of some rows is the sum of the
/// states of their parts; a null part (no value counted) subtracts nothing.
pub(crate) fn subtract_state(
    acc: &mut Box<dyn Accumulator>,
    columns: &[ArrayRef],
    row: usize,
    create: impl Fn() -> Result<Box<dyn Accumulator>>,
) -> Result<()> {
    let have = acc.state().map_err(err)?;
    let left = have
        .into_iter()
        .zip(columns)
        .map(|(have, column)| {
            let part = ScalarValue::try_from_array(column, row).map_err(err)?;
            Ok(if part.is_null() {
                have
            } else if have.is_null() {
                part.arithmetic_negate().map_err(err)?
            } else {
                have.sub(&part).map_err(err)?
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let state = left
        .iter()
        .map(ScalarValue::to_array)
        .collect::<datafusion::common::Result<Vec<_>>>()
        .map_err(err)?;
    let mut fresh = create()?;
    fresh.merge_batch(&state).map_err(err)?;
    *acc = fresh;
    Ok(())
}
