//! COUNT(DISTINCT) aggregates over the same integer column, with different
//! filters (Nexmark q16 has four per column), share one set of distinct
//! values per group: each (group, value) keeps a bit per aggregate, set
//! when a row that aggregate counts has the value, and each aggregate keeps
//! its counts per group, so a value is stored once however many aggregates
//! count it: (group, value) and the bits share one word of a
//! [`WordSet`]. The aggregates hand their filters in as they are updated
//! and the last looks each row up once with all their bits, prefetching
//! the slots of the rows a few ahead. Each aggregate is still a
//! `GroupsAccumulator` of its own, with
//! DataFusion's state layout (a list of values per group), so snapshots,
//! layers and panes treat it as any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type};
use datafusion::common::Result as DfResult;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use crate::filter::true_bits;
use crate::window_aggregate::AggregateCall;
use crate::word_set::{FLAG_BITS, WordSet};

/// The distinct values of one column, per group, of several aggregates.
struct SharedSet {
    /// (group, value) and which aggregates have counted it, one word each:
    /// the group in the top 20 bits, the value in the next 36, a bit per
    /// aggregate in the low 8 (when group and value fit): 8 bytes a value
    /// in a table 3/8 to 3/4 full.
    packed: WordSet,
    /// The (group, value) pairs that do not fit a word.
    wide: HashMap<(u32, i64), u8, ahash::RandomState>,
    /// Per aggregate, its count per group.
    counts: Vec<Vec<i64>>,
    /// The batch the aggregates are being updated with: applied once the
    /// last has handed its filter in, looking each row up once for all.
    pending: Option<Pending>,
    /// Scratch for [`Self::apply`]: each packable row's key, bits, group
    /// and home slot.
    batch: Vec<(u64, u8, u32, usize)>,
}

/// How many rows ahead of the one being looked up [`SharedSet::apply`]
/// prefetches: enough to cover a memory access at this loop's pace.
const PREFETCH_AHEAD: usize = 16;

/// One batch's update, gathered from the aggregates of a set.
struct Pending {
    column: Int64Array,
    groups: Vec<usize>,
    /// Per aggregate: `None` until it is updated, then its filter, if any.
    filters: Vec<Option<Option<BooleanArray>>>,
}

/// Bits of a packed key that hold the value.
const VALUE_BITS: u32 = 36;

/// Bits of a packed key that hold the group.
const GROUP_BITS: u32 = 20;

/// Low bits of a packed word that hold the aggregates' bits.
const MEMBER_BITS: u32 = FLAG_BITS;

/// The set's hasher: fast, and fixed (no random source needed).
fn hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(1, 2, 3, 4)
}

/// `(group, value)` as one key of `GROUP_BITS + VALUE_BITS` bits, when
/// both fit.
fn pack(group: usize, value: i64) -> Option<u64> {
    let limit = 1i64 << (VALUE_BITS - 1);
    (group < 1 << GROUP_BITS && (-limit..limit).contains(&value))
        .then_some(((group as u64) << VALUE_BITS) | (value as u64 & ((1 << VALUE_BITS) - 1)))
}

/// The group and value of a packed key.
fn unpack(key: u64) -> (usize, i64) {
    let shift = 64 - VALUE_BITS;
    (
        (key >> VALUE_BITS) as usize,
        ((key << shift) as i64) >> shift,
    )
}

impl SharedSet {
    fn new(members: usize) -> Self {
        SharedSet {
            packed: WordSet::new(),
            wide: HashMap::with_hasher(hasher()),
            counts: vec![Vec::new(); members],
            pending: None,
            batch: Vec::new(),
        }
    }

    /// Aggregate `member` is updated with `column` for rows of `groups`:
    /// noted, and the batch applied once every aggregate of the set has
    /// been (they are updated in order, on the same rows). A batch the
    /// earlier ones were not updated with is applied for those first.
    fn update(
        &mut self,
        member: usize,
        column: Int64Array,
        groups: &[usize],
        filter: Option<&BooleanArray>,
    ) {
        // The same batch: the same values buffer (the pending batch holds
        // its buffer, so no later batch can have that address) and rows.
        let same = self.pending.as_ref().is_some_and(|p| {
            p.filters[member].is_none()
                && p.groups.len() == groups.len()
                && p.column.len() == column.len()
                && p.column.offset() == column.offset()
                && p.column.values().inner().as_ptr() == column.values().inner().as_ptr()
        });
        if !same {
            self.apply();
        }
        let members = self.counts.len();
        let pending = self.pending.get_or_insert_with(|| Pending {
            column,
            groups: groups.to_vec(),
            filters: vec![None; members],
        });
        pending.filters[member] = Some(filter.cloned());
        if member + 1 == self.counts.len() {
            self.apply();
        }
    }

    /// Applies the pending batch: each row is looked up once, with the bits
    /// of the aggregates that count it. Home slots are computed for the
    /// whole batch first (room reserved, so they stay valid), and each
    /// lookup prefetches the slot of the row `PREFETCH_AHEAD` later.
    fn apply(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        // Each row's bits, a filter at a time over its set bits.
        let mut row_bits = vec![0u8; p.groups.len()];
        for (m, filter) in p.filters.iter().enumerate() {
            let bit = 1u8 << m;
            match filter {
                None => {}
                Some(None) => row_bits.iter_mut().for_each(|b| *b |= bit),
                Some(Some(f)) => {
                    for row in true_bits(f).set_indices() {
                        row_bits[row] |= bit;
                    }
                }
            }
        }
        for (row, (&group, &bits)) in p.groups.iter().zip(&row_bits).enumerate() {
            if bits == 0 || !p.column.is_valid(row) {
                continue;
            }
            let value = p.column.value(row);
            match pack(group, value) {
                Some(key) => batch.push((key, bits, group as u32, 0)),
                None => self.add_wide(bits, group, value),
            }
        }
        self.packed.reserve(batch.len());
        for entry in &mut batch {
            entry.3 = self.packed.home(entry.0);
        }
        for i in 0..batch.len() {
            if let Some(ahead) = batch.get(i + PREFETCH_AHEAD) {
                self.packed.prefetch(ahead.3);
            }
            let (key, bits, group, home) = batch[i];
            let new = self.packed.insert(home, key, bits);
            self.count(new, group as usize);
        }
        self.batch = batch;
    }

    /// Aggregate `member` counts `value` in `group`.
    fn add(&mut self, member: usize, group: usize, value: i64) {
        let bit = 1 << member;
        match pack(group, value) {
            Some(key) => {
                self.packed.reserve(1);
                let home = self.packed.home(key);
                let new = self.packed.insert(home, key, bit);
                self.count(new, group);
            }
            None => self.add_wide(bit, group, value),
        }
    }

    /// The aggregates of `bits` count `value` in `group`, a pair that does
    /// not fit a word.
    fn add_wide(&mut self, bit: u8, group: usize, value: i64) {
        let bits = self.wide.entry((group as u32, value)).or_insert(0);
        let new = bit & !*bits;
        *bits |= bit;
        self.count(new, group);
    }

    /// Counts a value newly in `group` for each aggregate of `new`.
    fn count(&mut self, mut new: u8, group: usize) {
        while new != 0 {
            let member = new.trailing_zeros() as usize;
            self.counts[member][group] += 1;
            new &= new - 1;
        }
    }

    fn grow(&mut self, member: usize, groups: usize) {
        if self.counts[member].len() < groups {
            self.counts[member].resize(groups, 0);
        }
    }
}

/// One COUNT(DISTINCT) of a shared set.
struct SharedDistinctCount {
    set: Arc<Mutex<SharedSet>>,
    member: usize,
    /// The state's list field, as DataFusion declares it.
    item: Arc<Field>,
}

/// The aggregates of `aggregates` (by index) that are COUNT(DISTINCT) of an
/// integer column counted by at least one other such aggregate, grouped by
/// column.
pub(crate) fn shared_groups(aggregates: &[AggregateCall]) -> Vec<Vec<usize>> {
    let mut by_column: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, a) in aggregates.iter().enumerate() {
        let f = &a.function;
        let expressions = f.expressions();
        let [expr] = expressions.as_slice() else {
            continue;
        };
        let integer_state = f.state_fields().ok().is_some_and(|s| {
            matches!(s.as_slice(), [one] if matches!(one.data_type(),
                DataType::List(item) if matches!(item.data_type(), DataType::Int64 | DataType::Int32)))
        });
        if !(f.is_distinct() && f.fun().name() == "count" && integer_state) {
            continue;
        }
        let column = format!("{expr}");
        match by_column.iter_mut().find(|(c, _)| *c == column) {
            Some((_, members)) => members.push(i),
            None => by_column.push((column, vec![i])),
        }
    }
    by_column
        .into_iter()
        .map(|(_, m)| m)
        .filter(|m| (2..=8).contains(&m.len()))
        .collect()
}

/// Accumulators sharing one set, one per aggregate of `members`.
pub(crate) fn shared_accumulators(
    aggregates: &[AggregateCall],
    members: &[usize],
) -> DfResult<Vec<Box<dyn GroupsAccumulator>>> {
    let set = Arc::new(Mutex::new(SharedSet::new(members.len())));
    members
        .iter()
        .enumerate()
        .map(|(member, &a)| -> DfResult<Box<dyn GroupsAccumulator>> {
            let state = aggregates[a].function.state_fields()?;
            let DataType::List(item) = state[0].data_type() else {
                return Err(DataFusionError::Internal(
                    "COUNT(DISTINCT) state is not a list".into(),
                ));
            };
            Ok(Box::new(SharedDistinctCount {
                set: set.clone(),
                member,
                item: item.clone(),
            }))
        })
        .collect()
}

fn poisoned<T>(_: T) -> DataFusionError {
    DataFusionError::Internal("a shared distinct set's lock is poisoned".into())
}

impl SharedDistinctCount {
    fn values(&self, array: &ArrayRef) -> DfResult<Int64Array> {
        Ok(cast(array, &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .clone())
    }
}

impl GroupsAccumulator for SharedDistinctCount {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        let column = self.values(&values[0])?;
        let mut set = self.set.lock().map_err(poisoned)?;
        set.grow(self.member, total_num_groups);
        set.update(self.member, column, group_indices, opt_filter);
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let EmitTo::All = emit_to else {
            return Err(DataFusionError::NotImplemented(
                "emitting some groups of a shared COUNT(DISTINCT)".into(),
            ));
        };
        let mut set = self.set.lock().map_err(poisoned)?;
        // Updates still gathering are applied before anything is read.
        set.apply();
        let counts = std::mem::take(&mut set.counts[self.member]);
        Ok(Arc::new(Int64Array::from(counts)))
    }

    /// This aggregate's values per group, which it gives up (the set keeps
    /// the values other aggregates counted).
    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let EmitTo::All = emit_to else {
            return Err(DataFusionError::NotImplemented(
                "the state of some groups of a shared COUNT(DISTINCT)".into(),
            ));
        };
        let mut set = self.set.lock().map_err(poisoned)?;
        // Updates still gathering are applied before anything is read.
        set.apply();
        let groups = set.counts[self.member].len();
        let bit = 1u32 << self.member;
        let mut per_group: Vec<Vec<i64>> = vec![Vec::new(); groups];
        let bit = bit as u8;
        set.packed.retain(|word| {
            if *word as u8 & bit != 0 {
                let (group, value) = unpack(*word >> MEMBER_BITS);
                per_group[group].push(value);
                *word &= !u64::from(bit);
            }
            *word as u8 != 0
        });
        set.wide.retain(|&(group, value), bits| {
            if *bits & bit != 0 {
                per_group[group as usize].push(value);
                *bits &= !bit;
            }
            *bits != 0
        });
        set.counts[self.member] = Vec::new();
        let lengths = per_group.iter().map(Vec::len);
        let offsets = OffsetBuffer::from_lengths(lengths);
        let flat = Int64Array::from_iter_values(per_group.into_iter().flatten());
        let values = cast(&flat, self.item.data_type())?;
        Ok(vec![Arc::new(ListArray::try_new(
            self.item.clone(),
            offsets,
            values,
            None,
        )?)])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        let lists = values[0].as_list::<i32>();
        let mut set = self.set.lock().map_err(poisoned)?;
        // Updates still gathering are applied before anything is read.
        set.apply();
        set.grow(self.member, total_num_groups);
        for (row, &group) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            let list = self.values(&lists.value(row))?;
            for v in list.iter().flatten() {
                set.add(self.member, group, v);
            }
        }
        Ok(())
    }

    /// Each row as a group of its own: a list of its value, or none.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        let column = &values[0];
        let counted = |row: usize| {
            column.is_valid(row) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row))
        };
        let lengths = (0..column.len()).map(|row| usize::from(counted(row)));
        let keep = BooleanArray::from_iter((0..column.len()).map(|row| Some(counted(row))));
        let kept = arrow::compute::filter(column, &keep)?;
        let values = cast(&kept, self.item.data_type())?;
        Ok(vec![Arc::new(ListArray::try_new(
            self.item.clone(),
            OffsetBuffer::from_lengths(lengths),
            values,
            None,
        )?)])
    }

    /// The first aggregate of a set reports the set; the others their counts.
    fn size(&self) -> usize {
        let Ok(set) = self.set.lock() else {
            return 0;
        };
        let counts = set.counts[self.member].capacity() * 8;
        if self.member == 0 {
            counts
                + set.packed.capacity() * std::mem::size_of::<u64>()
                + set.wide.capacity() * (std::mem::size_of::<((u32, i64), u8)>() + 1)
        } else {
            counts
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use arrow::datatypes::Schema;
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    use datafusion::physical_expr::expressions::col;

    use super::*;
    use crate::accumulator_layers::{Layers, new_accumulators};

    fn count_distinct(column: &str, schema: &Arc<Schema>) -> AggregateCall {
        let expr = AggregateExprBuilder::new(count_udaf(), vec![col(column, schema).unwrap()])
            .schema(schema.clone())
            .alias(format!("n_{column}"))
            .distinct()
            .build()
            .unwrap();
        AggregateCall {
            function: Arc::new(expr),
            filter: None,
        }
    }

    /// Three filtered COUNT(DISTINCT v) share one set for v (w has its own
    /// accumulator);
    /// across a barrier's freeze (state given up, merged back) the counts
    /// equal distinct values counted one set per aggregate.
    #[test]
    fn shared_counts_equal_one_set_per_aggregate_across_a_freeze() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new("w", DataType::Int32, true),
        ]));
        let aggregates = vec![
            count_distinct("v", &schema),
            count_distinct("v", &schema),
            count_distinct("w", &schema),
            count_distinct("v", &schema),
        ];
        assert_eq!(shared_groups(&aggregates), vec![vec![0, 1, 3]]);
        // Filters of aggregates 0, 1 and 3 (2 counts every row); a row
        // `NULL_FILTER` picks has a null filter, which counts nothing.
        let filter = |a: usize, row: usize| match a {
            _ if NULL_FILTER(row) => false,
            0 => !row.is_multiple_of(3),
            1 => row.is_multiple_of(2),
            3 => row % 7 == 1 || row.is_multiple_of(5),
            _ => true,
        };
        // In order, the set looks each row up once for all its aggregates;
        // in reverse, each batch is applied when the next one starts.
        for (freeze, reverse) in [(false, false), (true, false), (false, true)] {
            let got = run(&aggregates, freeze, reverse, &filter);
            for (a, counts) in got.iter().enumerate() {
                assert_eq!(
                    counts,
                    &expected(a, &filter),
                    "aggregate {a}, freeze {freeze}, reverse {reverse}"
                );
            }
        }
    }

    /// An aggregate that gives up its state starts again from nothing
    /// while the others of its set keep theirs.
    #[test]
    fn one_aggregate_giving_up_its_state_restarts_alone() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let aggregates = vec![count_distinct("v", &schema), count_distinct("v", &schema)];
        let mut accs = new_accumulators(&aggregates).unwrap();
        let (v, _, ids) = rows(0);
        let column: ArrayRef = Arc::new(v);
        let update = |accs: &mut Vec<Box<dyn GroupsAccumulator>>| {
            for acc in accs.iter_mut() {
                acc.update_batch(std::slice::from_ref(&column), &ids, None, GROUPS)
                    .unwrap();
            }
        };
        update(&mut accs);
        let given_up = accs[0].state(EmitTo::All).unwrap();
        assert_eq!(given_up[0].len(), GROUPS);
        update(&mut accs);
        let counts: Vec<Vec<i64>> = accs
            .iter_mut()
            .map(|acc| {
                let counts = acc.evaluate(EmitTo::All).unwrap();
                counts.as_primitive::<Int64Type>().values().to_vec()
            })
            .collect();
        let once: Vec<i64> = {
            let mut seen: HashSet<(usize, i64)> = HashSet::new();
            let (v, _, ids) = rows(0);
            for (r, &g) in ids.iter().enumerate() {
                if v.is_valid(r) {
                    seen.insert((g, v.value(r)));
                }
            }
            (0..GROUPS)
                .map(|g| seen.iter().filter(|(sg, _)| *sg == g).count() as i64)
                .collect()
        };
        assert!(once.iter().all(|&n| n > 0));
        assert_eq!(counts[0], once, "the one that gave up its state");
        assert_eq!(counts[1], once, "the one that kept it");
    }

    /// Rows of batch `batch`: values of v (small, negative, at the limits of
    /// packing and too wide for it; some null), of w, and group ids.
    fn rows(batch: usize) -> (Int64Array, arrow::array::Int32Array, Vec<usize>) {
        let rows = 500;
        let v = Int64Array::from_iter((0..rows).map(|r| {
            let small = ((r * 37 + batch * 13) % 90) as i64;
            (r % 11 != 0).then_some(match r % 13 {
                0 => i64::MAX - small % 3,
                1 => -small,
                // At the packing limits, and apart from `small` only in
                // the value's top bits.
                2 => (1 << 35) - 1 - small % 3,
                3 => -(1 << 35) + small % 3,
                4 => small + (1 << 34),
                _ => small,
            })
        }));
        let w = arrow::array::Int32Array::from_iter(
            (0..rows).map(|r| Some(((r * 7 + batch) % 40) as i32)),
        );
        let ids = (0..rows).map(|r| (r * 5 + batch) % GROUPS).collect();
        (v, w, ids)
    }

    const GROUPS: usize = 6;
    const BATCHES: usize = 4;

    /// Rows whose filter is null.
    const NULL_FILTER: fn(usize) -> bool = |row| row % 17 == 4;

    /// Each aggregate's counts per group after every batch, with its state
    /// frozen into layers after batch 1 and at the end (and merged back) or
    /// evaluated live.
    fn run(
        aggregates: &[AggregateCall],
        freeze: bool,
        reverse: bool,
        filter: &dyn Fn(usize, usize) -> bool,
    ) -> Vec<Vec<i64>> {
        let mut live = new_accumulators(aggregates).unwrap();
        let mut layers = Layers::default();
        for batch in 0..BATCHES {
            let (v, w, ids) = rows(batch);
            let mut order: Vec<_> = live.iter_mut().enumerate().collect();
            if reverse {
                order.reverse();
            }
            for (a, acc) in order {
                let column: ArrayRef = if a == 2 {
                    Arc::new(w.clone())
                } else {
                    Arc::new(v.clone())
                };
                // A null's value bit is set: only its validity says no.
                let mask = BooleanArray::new(
                    (0..ids.len())
                        .map(|r| filter(a, r) || NULL_FILTER(r))
                        .collect(),
                    Some((0..ids.len()).map(|r| !NULL_FILTER(r)).collect()),
                );
                acc.update_batch(&[column], &ids, Some(&mask), GROUPS)
                    .unwrap();
            }
            if freeze && batch == 1 {
                layers.freeze(&mut live, aggregates).unwrap();
            }
        }
        if freeze {
            layers.freeze(&mut live, aggregates).unwrap();
            live = layers.merged(aggregates).unwrap();
        }
        live.iter_mut()
            .map(|acc| {
                let counts = acc.evaluate(EmitTo::All).unwrap();
                counts.as_primitive::<Int64Type>().values().to_vec()
            })
            .collect()
    }

    /// Aggregate `a`'s distinct values per group, counted with a set each.
    fn expected(a: usize, filter: &dyn Fn(usize, usize) -> bool) -> Vec<i64> {
        let mut seen: HashSet<(usize, i64)> = HashSet::new();
        for batch in 0..BATCHES {
            let (v, w, ids) = rows(batch);
            for (r, &g) in ids.iter().enumerate() {
                let value = if a == 2 {
                    Some(i64::from(w.value(r)))
                } else {
                    v.is_valid(r).then(|| v.value(r))
                };
                if let Some(value) = value.filter(|_| filter(a, r)) {
                    seen.insert((g, value));
                }
            }
        }
        (0..GROUPS)
            .map(|g| seen.iter().filter(|(sg, _)| *sg == g).count() as i64)
            .collect()
    }
}
