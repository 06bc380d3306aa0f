//! The `nexmark` source: the Nexmark auction generator as a table of one
//! event kind. Subtask `i` of `p` generates blocks `i, i + p, i + 2p, …` of
//! consecutive event numbers (lane `i` of `p`), so all subtasks advance event
//! time together and the rows are the same at any parallelism. A checkpoint
//! stores each lane's next block; restored at another parallelism, subtask
//! `j` of `q` takes the lanes `i` with `i % q == j` and always generates the
//! lowest block of its lanes next, so its event time stays in order.

mod generator;
mod rng;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use flumen_runtime::{Source, SourceFactory, TaskContext};
use flumen_state::checkpoint::SplitPosition;
use flumen_types::{DEFAULT_BATCH_SIZE, FlumenError, Message, Result};

pub use generator::{EventKind, Generator, GeneratorConfig, event_numbers};

use crate::options::{OptionSpec, Options};
use crate::throttle::Throttle;

/// Options of the `nexmark` connector.
pub(crate) const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required("kind", "person, auction or bid"),
    OptionSpec::optional(
        "events",
        "total generator events, all kinds (default: unbounded)",
    ),
    OptionSpec::optional("rate", "events per second of event time (default 10000000)"),
    OptionSpec::optional("seed", "seed of every random choice (default 0)"),
    crate::throttle::ROWS_PER_SECOND,
    crate::options::IDLE_TIMEOUT,
    crate::options::ALLOWED_LATENESS,
];

/// The `nexmark` connector: reads only.
pub(crate) struct Nexmark;

#[async_trait]
impl crate::Connector for Nexmark {
    fn name(&self) -> &'static str {
        "nexmark"
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    fn reads(&self) -> bool {
        true
    }
    async fn source(
        &self,
        spec: &crate::TableSpec,
        projection: Option<&[usize]>,
    ) -> Result<Arc<dyn SourceFactory>> {
        Ok(Arc::new(NexmarkSourceFactory::try_new(
            &spec.options,
            &spec.schema,
            projection,
        )?))
    }
}

/// Makes one generator source per subtask.
pub struct NexmarkSourceFactory {
    generator: Arc<Generator>,
    kind: EventKind,
    events: Option<u64>,
    /// Canonical column index of each output column.
    columns: Vec<usize>,
    /// The declared types of the output columns.
    schema: SchemaRef,
    block_events: u64,
    rows_per_second: Option<u64>,
}

impl NexmarkSourceFactory {
    /// A source for `table_schema` (projected to `projection`) configured by `options`.
    pub fn try_new(
        options: &Options,
        table_schema: &SchemaRef,
        projection: Option<&[usize]>,
    ) -> Result<Self> {
        let kind = match options.required("kind")? {
            "person" => EventKind::Person,
            "auction" => EventKind::Auction,
            "bid" => EventKind::Bid,
            other => {
                return Err(FlumenError::config(format!(
                    "nexmark option kind = '{other}' is not one of: person, auction, bid"
                )));
            }
        };
        let events = options.parse::<u64>("events")?;
        let rate = options.parse::<u64>("rate")?.unwrap_or(10_000_000);
        if !(1..=10_000_000_000).contains(&rate) {
            return Err(FlumenError::config(format!(
                "nexmark option rate = {rate} must be between 1 and 10000000000 events per second"
            )));
        }
        let seed = options.parse::<u64>("seed")?.unwrap_or(0);
        let rows_per_second = options.parse::<u64>("rows_per_second")?;
        let canonical = kind.schema();
        let projected = match projection {
            Some(p) => Arc::new(table_schema.project(p)?),
            None => table_schema.clone(),
        };
        let mut columns = Vec::with_capacity(projected.fields().len());
        for field in projected.fields() {
            let Ok(index) = canonical.index_of(field.name()) else {
                let valid: Vec<&str> = canonical
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                return Err(FlumenError::config(format!(
                    "nexmark {kind:?} table has no column '{}'; its columns are: {}",
                    field.name(),
                    valid.join(", ")
                )));
            };
            let produced = canonical.field(index).data_type();
            if produced != field.data_type()
                && !arrow::compute::can_cast_types(produced, field.data_type())
            {
                return Err(FlumenError::config(format!(
                    "column '{}' is declared {} but nexmark produces {produced}, which cannot be cast to it",
                    field.name(),
                    field.data_type()
                )));
            }
            columns.push(index);
        }
        let per_epoch = kind.per_epoch();
        let block_events = generator::EPOCH * (DEFAULT_BATCH_SIZE as u64).div_ceil(per_epoch);
        Ok(NexmarkSourceFactory {
            generator: Arc::new(Generator::new(GeneratorConfig { rate, seed })),
            kind,
            events,
            columns,
            schema: projected,
            block_events,
            rows_per_second,
        })
    }
}

impl SourceFactory for NexmarkSourceFactory {
    fn describe(&self) -> String {
        let events = self
            .events
            .map_or("unbounded".to_string(), |e| format!("{e} events"));
        let cols: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        format!(
            "Source: nexmark {:?} ({events}) columns [{}]",
            self.kind,
            cols.join(", ")
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(NexmarkSource {
            generator: self.generator.clone(),
            kind: self.kind,
            end: self.events.unwrap_or(u64::MAX),
            columns: self.columns.clone(),
            schema: self.schema.clone(),
            block_events: self.block_events,
            lanes: vec![Lane {
                index: ctx.subtask as u64,
                step: ctx.parallelism as u64,
                next_block: ctx.subtask as u64,
            }],
            subtask: ctx.subtask as u64,
            parallelism: ctx.parallelism as u64,
            throttle: Throttle::new(self.rows_per_second, ctx.parallelism),
        }))
    }
}

/// Blocks `index, index + step, …` of the event numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lane {
    index: u64,
    step: u64,
    next_block: u64,
}

impl Lane {
    fn split(&self) -> String {
        format!("lane {} of {}", self.index, self.step)
    }

    fn parse(p: &SplitPosition, block_events: u64) -> Result<Lane> {
        let bad = || {
            FlumenError::state(format!(
                "nexmark position '{}' {:?} is not a lane of this source",
                p.split, p.position
            ))
        };
        let (index, step) = p
            .split
            .strip_prefix("lane ")
            .and_then(|rest| rest.split_once(" of "))
            .and_then(|(i, s)| Some((i.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
            .ok_or_else(bad)?;
        let [next_block, stored_block_events] = p.position[..] else {
            return Err(bad());
        };
        if stored_block_events != block_events {
            return Err(FlumenError::state(format!(
                "nexmark lane '{}' was generated in blocks of {stored_block_events} events, this source uses {block_events}",
                p.split
            )));
        }
        Ok(Lane {
            index,
            step,
            next_block,
        })
    }
}

struct NexmarkSource {
    generator: Arc<Generator>,
    kind: EventKind,
    end: u64,
    columns: Vec<usize>,
    schema: SchemaRef,
    block_events: u64,
    /// The lanes this subtask generates; the lowest next block goes first.
    lanes: Vec<Lane>,
    subtask: u64,
    parallelism: u64,
    throttle: Option<Throttle>,
}

#[async_trait]
impl Source for NexmarkSource {
    async fn next(&mut self) -> Result<Option<Message>> {
        if let Some(t) = &mut self.throttle {
            t.wait().await;
        }
        // From here on nothing awaits: a cancelled call has changed nothing.
        loop {
            let Some(lane) = self
                .lanes
                .iter_mut()
                .filter(|l| l.next_block.saturating_mul(self.block_events) < self.end)
                .min_by_key(|l| l.next_block)
            else {
                return Ok(None);
            };
            let start = lane.next_block.saturating_mul(self.block_events);
            let end = (start + self.block_events).min(self.end);
            lane.next_block += lane.step;
            let arrays = self.generator.build(self.kind, start, end, &self.columns);
            let rows = arrays.first().map_or_else(
                || generator::event_numbers(self.kind, start, end).count(),
                |a| a.len(),
            );
            if rows == 0 {
                continue;
            }
            let arrays = arrays
                .into_iter()
                .zip(self.schema.fields())
                .map(|(a, f)| {
                    if a.data_type() == f.data_type() {
                        Ok(a)
                    } else {
                        cast(&a, f.data_type())
                    }
                })
                .collect::<Result<Vec<ArrayRef>, _>>()?;
            let options = RecordBatchOptions::new().with_row_count(Some(rows));
            let batch = RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)?;
            if let Some(t) = &mut self.throttle {
                t.sent(rows);
            }
            return Ok(Some(Message::Batch(batch)));
        }
    }

    fn snapshot_position(&mut self, _checkpoint: u64) -> Result<Vec<SplitPosition>> {
        Ok(self
            .lanes
            .iter()
            .map(|l| SplitPosition {
                split: l.split(),
                position: vec![l.next_block, self.block_events],
                done: l.next_block.saturating_mul(self.block_events) >= self.end,
            })
            .collect())
    }

    fn restore_position(&mut self, positions: &[SplitPosition]) -> Result<()> {
        let lanes = positions
            .iter()
            .map(|p| Lane::parse(p, self.block_events))
            .collect::<Result<Vec<Lane>>>()?;
        if lanes.is_empty() {
            return Ok(());
        }
        self.lanes = lanes
            .into_iter()
            .filter(|l| l.index % self.parallelism == self.subtask)
            .collect();
        Ok(())
    }
}
