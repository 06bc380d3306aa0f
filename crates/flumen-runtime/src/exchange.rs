//! The sending side of an edge between tasks: routes each batch to the
//! bounded channel of one or more downstream subtasks. A full channel makes
//! `send` wait, which is how backpressure reaches the sources.

use arrow::array::{ArrayRef, UInt32Array};
use arrow::record_batch::RecordBatch;
use flumen_state::string_take::take_batch;
use flumen_state::{KeyGroup, hash_keys, key_group_for_hash, subtask_for_key_group};
use flumen_types::{FlumenError, Message, Result};
use tokio::sync::mpsc::Sender;

use crate::graph::Partitioning;
use crate::latency::Origin;

/// What a channel between two tasks carries: a message and, for batches and
/// watermarks, the origin of the source rows behind it.
pub(crate) type Envelope = (Message, Option<Origin>);

/// Routes the output of one subtask over one edge.
pub(crate) struct Exchange {
    senders: Vec<Sender<Envelope>>,
    route: Route,
}

enum Route {
    Forward,
    Rebalance { next: usize },
    Broadcast,
    Hash(HashRouter),
}

struct HashRouter {
    key_columns: Vec<usize>,
    /// The downstream subtasks.
    parallelism: usize,
    /// The subtask owning each key group (no division per row).
    owners: Vec<u32>,
    /// Whether the receivers read a shared batch's rows in place
    /// ([`crate::OperatorFactory::reads_shared_rows`]): send it with their
    /// positions rather than a copy each.
    shares: bool,
    max_parallelism: usize,
    hashes: Vec<u64>,
    /// Each row's subtask.
    targets: Vec<u32>,
    /// The rows grouped by subtask, each group in batch order.
    rows: Vec<u32>,
    /// Where each subtask's rows start in `rows`, and the end.
    bounds: Vec<usize>,
}

impl HashRouter {
    /// Splits `batch` by key hash into what each downstream subtask gets:
    /// the whole batch when all its rows go there, else its rows: the
    /// batch shared with their positions when the receivers read them in
    /// place, a copy of them otherwise.
    fn split(&mut self, batch: &RecordBatch) -> Result<Vec<(usize, Message)>> {
        let parallelism = self.parallelism;
        if parallelism == 1 {
            // One downstream subtask takes every row: nothing to hash.
            let rows = (batch.num_rows() > 0).then(|| (0, Message::Batch(batch.clone())));
            return Ok(rows.into_iter().collect());
        }
        let keys: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        let n = batch.num_rows();
        hash_keys(&keys, n, &mut self.hashes)?;
        self.targets.clear();
        self.targets.extend(
            self.hashes
                .iter()
                .map(|&h| self.owners[usize::from(key_group_for_hash(h, self.max_parallelism))]),
        );
        group_by_target(&self.targets, parallelism, &mut self.rows, &mut self.bounds);
        let mut parts = Vec::with_capacity(parallelism);
        for target in 0..parallelism {
            let idx = &self.rows[self.bounds[target]..self.bounds[target + 1]];
            if idx.is_empty() {
                continue;
            }
            let part = if idx.len() == n {
                Message::Batch(batch.clone())
            } else if self.shares {
                Message::Rows(batch.clone(), UInt32Array::from(idx.to_vec()))
            } else {
                Message::Batch(take_batch(batch, &UInt32Array::from(idx.to_vec()))?)
            };
            parts.push((target, part));
        }
        Ok(parts)
    }
}

impl Exchange {
    /// An exchange over `senders`, one per downstream subtask (for a forward
    /// edge, the single matching one); `shares`: a hash exchange sends
    /// shared batches with positions (the receivers read them in place).
    pub(crate) fn new(
        partitioning: &Partitioning,
        senders: Vec<Sender<Envelope>>,
        subtask: usize,
        max_parallelism: usize,
        shares: bool,
    ) -> Self {
        let route = match partitioning {
            Partitioning::Forward => Route::Forward,
            Partitioning::Rebalance => Route::Rebalance {
                next: subtask % senders.len(),
            },
            Partitioning::Broadcast => Route::Broadcast,
            Partitioning::Hash(cols) => Route::Hash(HashRouter {
                key_columns: cols.clone(),
                parallelism: senders.len(),
                owners: owners(max_parallelism, senders.len()),
                shares,
                max_parallelism,
                hashes: Vec::new(),
                targets: Vec::new(),
                rows: Vec::new(),
                bounds: Vec::new(),
            }),
        };
        Exchange { senders, route }
    }

    /// Sends a batch of `origin` to the subtask(s) its rows belong to.
    pub(crate) async fn send_batch(
        &mut self,
        batch: RecordBatch,
        origin: Option<Origin>,
    ) -> Result<()> {
        match &mut self.route {
            Route::Forward => send(&self.senders[0], (Message::Batch(batch), origin)).await,
            Route::Rebalance { next } => {
                let target = *next;
                *next = (target + 1) % self.senders.len();
                send(&self.senders[target], (Message::Batch(batch), origin)).await
            }
            Route::Broadcast => self.broadcast(Message::Batch(batch), origin).await,
            Route::Hash(router) => {
                for (target, part) in router.split(&batch)? {
                    send(&self.senders[target], (part, origin)).await?;
                }
                Ok(())
            }
        }
    }

    /// Sends a message (a watermark of `origin`, a barrier, an end marker)
    /// to every downstream subtask.
    pub(crate) async fn broadcast(&mut self, msg: Message, origin: Option<Origin>) -> Result<()> {
        for s in &self.senders {
            send(s, (msg.clone(), origin)).await?;
        }
        Ok(())
    }
}

/// Subtask counts up to which [`group_by_target`] makes a pass per subtask.
const PASSES_UP_TO: usize = 8;

/// The rows (positions in `targets`) grouped by their target, each group in
/// order, into `rows`; group `t` is `rows[bounds[t]..bounds[t + 1]]`. A
/// push per row onto its target's list chains each row's store to the
/// next through the list's length in memory (4 % of q4's CPU at p=2);
/// instead, for a few targets, one pass per target writes every row and
/// advances only past its own, the position held in a register; for many,
/// a counting sort, whose counters then rarely meet twice in a row.
fn group_by_target(
    targets: &[u32],
    parallelism: usize,
    rows: &mut Vec<u32>,
    bounds: &mut Vec<usize>,
) {
    rows.clear();
    // One more: a pass writes each row at its position, the last possibly
    // past the group's end.
    rows.resize(targets.len() + 1, 0);
    bounds.clear();
    if parallelism <= PASSES_UP_TO {
        bounds.push(0);
        let mut at = 0;
        for target in 0..parallelism as u32 {
            for (row, &t) in targets.iter().enumerate() {
                rows[at] = row as u32;
                at += usize::from(t == target);
            }
            bounds.push(at);
        }
    } else {
        bounds.resize(parallelism + 1, 0);
        for &t in targets {
            bounds[t as usize + 1] += 1;
        }
        for t in 0..parallelism {
            bounds[t + 1] += bounds[t];
        }
        let mut next = bounds[..parallelism].to_vec();
        for (row, &t) in targets.iter().enumerate() {
            let at = &mut next[t as usize];
            rows[*at] = row as u32;
            *at += 1;
        }
    }
}

/// The subtask of `parallelism` owning each of `max_parallelism` key groups.
fn owners(max_parallelism: usize, parallelism: usize) -> Vec<u32> {
    (0..max_parallelism)
        .map(|kg| subtask_for_key_group(kg as KeyGroup, max_parallelism, parallelism) as u32)
        .collect()
}

async fn send(sender: &Sender<Envelope>, envelope: Envelope) -> Result<()> {
    // The receiver only goes away when its task stopped, which means the job
    // is being torn down.
    sender
        .send(envelope)
        .await
        .map_err(|_| FlumenError::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array, RecordBatch};
    use arrow::datatypes::Int64Type;
    use std::sync::Arc;

    #[test]
    fn key_groups_cover_subtasks_contiguously() {
        let owners: Vec<usize> = (0..128)
            .map(|kg| subtask_for_key_group(kg, 128, 3))
            .collect();
        assert_eq!(owners[0], 0);
        assert_eq!(owners[127], 2);
        assert!(owners.windows(2).all(|w| w[0] <= w[1]));
    }

    /// A batch of `keys` in column 0 and a router hashing that column to
    /// `subtasks` subtasks, sharing the batch with them when `shares`.
    fn keys_and_router(
        keys: Int64Array,
        subtasks: usize,
        shares: bool,
    ) -> (RecordBatch, HashRouter) {
        let batch = RecordBatch::try_from_iter([("k", Arc::new(keys) as ArrayRef)]).unwrap();
        let router = HashRouter {
            key_columns: vec![0],
            parallelism: subtasks,
            owners: owners(128, subtasks),
            shares,
            max_parallelism: 128,
            hashes: Vec::new(),
            targets: Vec::new(),
            rows: Vec::new(),
            bounds: Vec::new(),
        };
        (batch, router)
    }

    /// Each key's rows go to the subtask owning its key group, every row
    /// once and in batch order: copied out for receivers that copy anyway,
    /// shared with their positions for those that read them in place.
    #[test]
    fn hash_split_sends_each_row_once_in_order_to_its_key_groups_owner() {
        // Up to 8 subtasks a pass each groups the rows, over it a count.
        for (subtasks, shares) in [
            (2, false),
            (2, true),
            (3, true),
            (8, false),
            (9, true),
            (20, false),
        ] {
            let keys = Int64Array::from_iter_values((0..10_000).map(|i| i % 97));
            let (batch, mut router) = keys_and_router(keys.clone(), subtasks, shares);
            let mut hashes = Vec::new();
            hash_keys(
                &[Arc::new(keys.clone()) as ArrayRef],
                keys.len(),
                &mut hashes,
            )
            .unwrap();
            let owner_of = |row: usize| {
                subtask_for_key_group(key_group_for_hash(hashes[row], 128), 128, subtasks)
            };
            let parts = router.split(&batch).unwrap();
            let mut rows = Vec::new();
            for (target, part) in &parts {
                let positions: Vec<usize> = match part {
                    Message::Rows(shared, indices) if shares => {
                        assert_eq!(shared, &batch, "the batch is shared, not copied");
                        indices.values().iter().map(|&i| i as usize).collect()
                    }
                    // A copy holds the keys: each key's rows are its
                    // positions in order, found back by key and count.
                    Message::Batch(part) if !shares => {
                        let mut seen = std::collections::HashMap::new();
                        part.column(0)
                            .as_primitive::<Int64Type>()
                            .values()
                            .iter()
                            .map(|&k| {
                                let n = seen.entry(k).or_insert(0usize);
                                *n += 1;
                                (*n - 1) * 97 + k as usize
                            })
                            .collect()
                    }
                    _ => panic!("shares {shares}: a part sent as {part:?}"),
                };
                assert!(
                    positions.windows(2).all(|w| w[0] < w[1]),
                    "subtask {target} of {subtasks}: rows out of batch order"
                );
                for &row in &positions {
                    assert_eq!(owner_of(row), *target, "row {row} of {subtasks}");
                }
                rows.extend(positions);
            }
            rows.sort_unstable();
            assert_eq!(rows, (0..10_000).collect::<Vec<_>>());
            assert_eq!(
                parts.len(),
                subtasks,
                "97 keys should reach all {subtasks} subtasks"
            );
        }
    }

    /// One downstream subtask gets every row of a batch, and nothing of an
    /// empty one.
    #[test]
    fn hash_split_to_one_subtask_passes_batches_whole() {
        let (batch, mut router) = keys_and_router(Int64Array::from_iter_values(0..1_000), 1, true);
        let parts = router.split(&batch).unwrap();
        assert_eq!(parts.len(), 1);
        assert!(matches!(&parts[0], (0, Message::Batch(b)) if b == &batch));
        assert!(router.split(&batch.slice(0, 0)).unwrap().is_empty());
    }
}
