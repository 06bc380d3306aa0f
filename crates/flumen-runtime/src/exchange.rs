//! The sending side of an edge between tasks: routes each batch to the
//! bounded channel of one or more downstream subtasks. A full channel makes
//! `send` wait, which is how backpressure reaches the sources.

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
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
    /// The subtask owning each key group (no division per row).
    owners: Vec<u32>,
    /// Whether the receivers read a shared batch's rows in place
    /// ([`crate::OperatorFactory::reads_shared_rows`]): send it with their
    /// positions rather than a copy each.
    shares: bool,
    max_parallelism: usize,
    hashes: Vec<u64>,
    indices: Vec<Vec<u32>>,
}

impl HashRouter {
    /// Splits `batch` by key hash into what each downstream subtask gets:
    /// the whole batch when all its rows go there, else its rows: the
    /// batch shared with their positions when the receivers read them in
    /// place, a copy of them otherwise.
    fn split(&mut self, batch: &RecordBatch) -> Result<Vec<(usize, Message)>> {
        let parallelism = self.indices.len();
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
        hash_keys(&keys, batch.num_rows(), &mut self.hashes)?;
        for idx in &mut self.indices {
            idx.clear();
        }
        for (row, &h) in self.hashes.iter().enumerate() {
            let kg = key_group_for_hash(h, self.max_parallelism);
            self.indices[self.owners[usize::from(kg)] as usize].push(row as u32);
        }
        let mut parts = Vec::with_capacity(parallelism);
        for (target, idx) in self.indices.iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let part = if idx.len() == batch.num_rows() {
                Message::Batch(batch.clone())
            } else if self.shares {
                Message::Rows(batch.clone(), UInt32Array::from(idx.clone()))
            } else {
                Message::Batch(take_record_batch(batch, &UInt32Array::from(idx.clone()))?)
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
                owners: owners(max_parallelism, senders.len()),
                shares,
                max_parallelism,
                hashes: Vec::new(),
                indices: vec![Vec::new(); senders.len()],
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
            owners: owners(128, subtasks),
            shares,
            max_parallelism: 128,
            hashes: Vec::new(),
            indices: vec![Vec::new(); subtasks],
        };
        (batch, router)
    }

    /// Each key's rows go to one subtask, every row once: copied out for
    /// receivers that copy anyway, shared with their positions for those
    /// that read them in place.
    #[test]
    fn hash_split_keeps_each_key_on_one_subtask() {
        for shares in [false, true] {
            let keys = Int64Array::from_iter_values((0..10_000).map(|i| i % 97));
            let (batch, mut router) = keys_and_router(keys, 4, shares);
            let parts = router.split(&batch).unwrap();
            let mut owner = std::collections::HashMap::new();
            let mut rows = 0;
            for (target, part) in &parts {
                let keys: Vec<i64> = match part {
                    Message::Rows(shared, indices) if shares => {
                        assert_eq!(shared, &batch, "the batch is shared, not copied");
                        let col = shared.column(0).as_primitive::<Int64Type>();
                        indices
                            .values()
                            .iter()
                            .map(|&i| col.value(i as usize))
                            .collect()
                    }
                    Message::Batch(part) if !shares => {
                        part.column(0).as_primitive::<Int64Type>().values().to_vec()
                    }
                    _ => panic!("shares {shares}: a part sent as {part:?}"),
                };
                rows += keys.len();
                for k in keys {
                    assert_eq!(*owner.entry(k).or_insert(*target), *target);
                }
            }
            assert_eq!(rows, 10_000);
            assert!(
                parts.len() > 1,
                "97 keys should spread over several subtasks"
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
