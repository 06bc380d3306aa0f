//! Accumulator states frozen at checkpoint barriers, so that a snapshot
//! shares a window's aggregate state instead of copying it while processing
//! waits. At a barrier the live accumulators give up their state (for
//! DataFusion's primitive accumulators a move of their buffers, no copy)
//! into an immutable layer and start again empty; later rows go to the
//! fresh ones. A window's aggregates are its layers and its live
//! accumulators merged in that order. The snapshot merges its layers into
//! one beside processing and hands the result back, so a window carries
//! few layers however many barriers it lives through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use flumen_types::{FlumenError, Result};

use crate::window_aggregate::{AggregateCall, df};

/// Accumulators given their state by [`merge`]: one per aggregate.
pub(crate) type Accumulators = Vec<Box<dyn GroupsAccumulator>>;

/// One empty accumulator per aggregate; COUNT(DISTINCT)s of one integer
/// column share a set of values (`shared_distinct`).
pub(crate) fn new_accumulators(aggregates: &[AggregateCall]) -> Result<Accumulators> {
    let mut shared: Vec<Option<Box<dyn GroupsAccumulator>>> =
        (0..aggregates.len()).map(|_| None).collect();
    for members in crate::shared_distinct::shared_groups(aggregates) {
        let accumulators =
            crate::shared_distinct::shared_accumulators(aggregates, &members).map_err(df)?;
        for (&m, acc) in members.iter().zip(accumulators) {
            shared[m] = Some(acc);
        }
    }
    aggregates
        .iter()
        .zip(shared)
        .map(|(a, shared)| -> Result<Box<dyn GroupsAccumulator>> {
            if let Some(acc) = shared {
                Ok(acc)
            } else if a.function.groups_accumulator_supported() {
                a.function.create_groups_accumulator().map_err(df)
            } else {
                let f = a.function.clone();
                Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                    f.create_accumulator()
                })))
            }
        })
        .collect()
}

/// Merges an accumulator's `state` of groups `0..n` into `acc`, which has
/// or will have `total` groups, a run of groups at a time, so the group ids
/// it takes stay a small buffer.
fn merge_state(
    acc: &mut dyn GroupsAccumulator,
    state: &[ArrayRef],
    n: usize,
    total: usize,
) -> Result<()> {
    const RUN: usize = 1 << 16;
    let mut ids: Vec<usize> = Vec::with_capacity(RUN.min(n));
    let mut at = 0;
    while at < n {
        let len = RUN.min(n - at);
        ids.clear();
        ids.extend(at..at + len);
        let part: Vec<ArrayRef> = state.iter().map(|s| s.slice(at, len)).collect();
        acc.merge_batch(&part, &ids, total).map_err(df)?;
        at += len;
    }
    Ok(())
}

/// Tells layers apart, so a compaction made in the background replaces
/// only the layers it merged.
static SERIAL: AtomicU64 = AtomicU64::new(0);

/// The states of groups `0..groups` of every aggregate, frozen.
pub(crate) struct Layer {
    serial: u64,
    pub(crate) groups: usize,
    /// Per aggregate, its state columns.
    pub(crate) states: Vec<Vec<ArrayRef>>,
}

impl Layer {
    fn bytes(&self) -> usize {
        self.states
            .iter()
            .flatten()
            .map(|c| c.get_array_memory_size())
            .sum()
    }
}

/// A merge of a window's first `covers` layers, the last of which had
/// serial `last`, made by a snapshot beside processing.
struct Compacted {
    covers: usize,
    last: u64,
    layer: Arc<Layer>,
}

/// The frozen layers of one window, oldest first.
#[derive(Default)]
pub(crate) struct Layers {
    layers: Vec<Arc<Layer>>,
    compacted: Arc<Mutex<Option<Compacted>>>,
}

impl Layers {
    /// Whether no barrier froze anything yet: the live accumulators hold
    /// all the state.
    pub(crate) fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Bytes the layers hold.
    pub(crate) fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes()).sum()
    }

    /// Moves the state of `live` into a new layer and leaves fresh
    /// accumulators in their place; nothing when they hold no group.
    pub(crate) fn freeze(
        &mut self,
        live: &mut Accumulators,
        aggregates: &[AggregateCall],
    ) -> Result<()> {
        self.adopt_compacted();
        let mut states = Vec::with_capacity(live.len());
        for acc in live.iter_mut() {
            states.push(acc.state(EmitTo::All).map_err(df)?);
        }
        let lens: Vec<usize> = states
            .iter()
            .map(|s| s.first().map_or(0, |c| c.len()))
            .collect();
        let groups = lens.first().copied().unwrap_or(0);
        if lens.iter().any(|&l| l != groups) {
            return Err(FlumenError::internal(format!(
                "window aggregate: accumulators hold {lens:?} groups"
            )));
        }
        *live = new_accumulators(aggregates)?;
        if groups > 0 {
            self.layers.push(Arc::new(Layer {
                serial: SERIAL.fetch_add(1, Ordering::Relaxed),
                groups,
                states,
            }));
        }
        Ok(())
    }

    /// Puts in place a compaction a snapshot finished, if its layers are
    /// still the first ones.
    fn adopt_compacted(&mut self) {
        let done = self.compacted.lock().map(|mut c| c.take());
        if let Ok(Some(c)) = done
            && self
                .layers
                .get(c.covers.wrapping_sub(1))
                .is_some_and(|l| l.serial == c.last)
        {
            self.layers.splice(..c.covers, [c.layer]);
        }
    }

    /// Accumulators holding every layer merged in order: with the live
    /// accumulators' state frozen first, a window's whole aggregates.
    pub(crate) fn merged(&mut self, aggregates: &[AggregateCall]) -> Result<Accumulators> {
        self.adopt_compacted();
        merge(&self.layers, aggregates)
    }

    /// The whole state, the live accumulators frozen and every layer merged
    /// into one, which stays in place: what a pane gives each sliding
    /// window it belongs to. `None` when it holds no group.
    pub(crate) fn whole_layer(
        &mut self,
        live: &mut Accumulators,
        aggregates: &[AggregateCall],
    ) -> Result<Option<Arc<Layer>>> {
        self.freeze(live, aggregates)?;
        self.compact(aggregates)?;
        Ok(self.layers.first().cloned())
    }

    /// Merges the layers into one, in place.
    pub(crate) fn compact(&mut self, aggregates: &[AggregateCall]) -> Result<()> {
        self.adopt_compacted();
        if self.layers.len() > 1 {
            let merged = compact(&self.layers, aggregates)?;
            self.layers = vec![Arc::new(merged)];
        }
        Ok(())
    }

    /// What a snapshot takes: the layers as they are now, to read (and
    /// merge) later on another thread.
    pub(crate) fn share(&mut self) -> SharedLayers {
        self.adopt_compacted();
        SharedLayers {
            layers: self.layers.clone(),
            compacted: self.compacted.clone(),
        }
    }
}

/// Fresh accumulators with `layers` merged into them in order.
fn merge(layers: &[Arc<Layer>], aggregates: &[AggregateCall]) -> Result<Accumulators> {
    let mut accs = new_accumulators(aggregates)?;
    let total = layers.iter().map(|l| l.groups).max().unwrap_or(0);
    for layer in layers {
        for (acc, state) in accs.iter_mut().zip(&layer.states) {
            merge_state(acc.as_mut(), state, layer.groups, total)?;
        }
    }
    Ok(accs)
}

/// `layers` merged into one layer, which takes the serial of the last.
fn compact(layers: &[Arc<Layer>], aggregates: &[AggregateCall]) -> Result<Layer> {
    let mut accs = merge(layers, aggregates)?;
    let states = accs
        .iter_mut()
        .map(|a| a.state(EmitTo::All).map_err(df))
        .collect::<Result<Vec<_>>>()?;
    Ok(Layer {
        serial: layers.last().map_or(0, |l| l.serial),
        groups: layers.iter().map(|l| l.groups).max().unwrap_or(0),
        states,
    })
}

/// A window's layers as a snapshot took them.
pub(crate) struct SharedLayers {
    layers: Vec<Arc<Layer>>,
    compacted: Arc<Mutex<Option<Compacted>>>,
}

impl SharedLayers {
    /// The state columns of every aggregate, one after another, for groups
    /// `0..groups`. More than one layer is merged here, and the merge is
    /// handed back to the window, which puts it in place of those layers.
    pub(crate) fn states(
        self,
        aggregates: &[AggregateCall],
        groups: usize,
    ) -> Result<Vec<ArrayRef>> {
        if aggregates.is_empty() {
            // Grouping alone (`GROUP BY` without aggregates): no state.
            return Ok(Vec::new());
        }
        let layer = match self.layers.as_slice() {
            [one] => one.clone(),
            many => {
                let merged = Arc::new(compact(many, aggregates)?);
                if let Ok(mut slot) = self.compacted.lock() {
                    *slot = Some(Compacted {
                        covers: many.len(),
                        last: merged.serial,
                        layer: merged.clone(),
                    });
                }
                merged
            }
        };
        if layer.groups != groups {
            return Err(FlumenError::internal(format!(
                "window aggregate: layers hold {} groups, the window {groups}",
                layer.groups
            )));
        }
        Ok(layer.states.iter().flatten().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_without_aggregates_shares_no_state() {
        let mut layers = Layers::default();
        let mut live = Vec::new();
        layers.freeze(&mut live, &[]).unwrap();
        assert!(layers.is_empty());
        assert!(layers.share().states(&[], 5).unwrap().is_empty());
    }
}
