//! The `nexmark` source: the Nexmark auction generator as a table of one
//! event kind. Subtask `i` of `p` generates blocks `i, i + p, i + 2p, …` of
//! consecutive event numbers (lane `i` of `p`), so all subtasks advance event
//! time together and the rows are the same at any parallelism. A checkpoint
//! stores each lane's next block; restored at another parallelism, subtask
//! `j` of `q` takes the lanes `i` with `i % q == j` and always generates the
//! lowest block of its lanes next, so its event time stays in order.
//!
//! With `events_per_second` the generator runs in real time: event `n` is
//! due `n / events_per_second` after the start, and a block goes once its
//! last event is due; blocks then hold the events of one `linger`, so no row
//! waits longer than that for the others of its batch.

mod generator;
mod rng;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use async_trait::async_trait;
use flumen_runtime::{Source, SourceFactory, TaskContext};
use flumen_state::checkpoint::SplitPosition;
use flumen_types::{DEFAULT_BATCH_SIZE, FlumenError, Message, Result};

pub use generator::{EventKind, Generator, GeneratorConfig, event_numbers};

use crate::options::{OptionSpec, Options};
use crate::throttle::Throttle;
use tokio::time::Instant;

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
    OptionSpec::optional(
        "events_per_second",
        "run in real time: wall-clock events per second, all kinds, over all subtasks; each row is sent once due, in batches of one linger (for latency benchmarks)",
    ),
    crate::options::LINGER,
    OptionSpec::optional(
        "pregenerate",
        "true: build every batch when the job is planned and serve them from memory, so a benchmark times the operators alone (needs events; default false)",
    ),
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
    fn check(&self, spec: &crate::TableSpec) -> Result<()> {
        kind_of(&spec.options).map(|_| ())
    }
    fn check_column(&self, spec: &crate::TableSpec, column: &Field) -> Result<()> {
        check_column(kind_of(&spec.options)?, column).map(|_| ())
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

/// The event kind a table of `options` holds.
fn kind_of(options: &Options) -> Result<EventKind> {
    match options.required("kind")? {
        "person" => Ok(EventKind::Person),
        "auction" => Ok(EventKind::Auction),
        "bid" => Ok(EventKind::Bid),
        other => Err(FlumenError::config(format!(
            "nexmark option kind = '{other}' is not one of: person, auction, bid"
        ))),
    }
}

/// The generator's column that fills the declared `column` of a `kind`
/// table, by its index among the kind's columns. Its declared type must
/// be the generated one or one that holds every generated value as it is
/// (a longer string type, finer timestamps, a wide enough decimal), as
/// Flink's connectors refuse a table whose types do not fit: a cast that
/// changes values (an id read as a timestamp, a timestamp truncated to
/// seconds, a bigint narrowed) would be silent.
fn check_column(kind: EventKind, column: &Field) -> Result<usize> {
    let canonical = kind.schema();
    let Ok(index) = canonical.index_of(column.name()) else {
        let valid: Vec<&str> = canonical
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        return Err(FlumenError::config(format!(
            "nexmark {} table has no column '{}'; its columns are: {}",
            kind.name(),
            column.name(),
            valid.join(", ")
        )));
    };
    let produced = canonical.field(index).data_type();
    if !holds_every(produced, column.data_type()) {
        return Err(FlumenError::config(format!(
            "column '{}' is declared {} but nexmark's {} column '{}' is {}; declare it {}, or CAST it in the query",
            column.name(),
            column.data_type(),
            kind.name(),
            column.name(),
            produced,
            sql_name(produced),
        )));
    }
    Ok(index)
}

/// Whether every value of the generated type `produced` reads unchanged
/// as `declared`.
fn holds_every(produced: &DataType, declared: &DataType) -> bool {
    use DataType::*;
    match (produced, declared) {
        (a, b) if a == b => true,
        (Utf8, LargeUtf8 | Utf8View) => true,
        (Int64, Decimal128(precision, scale) | Decimal256(precision, scale)) => {
            i16::from(*precision) - i16::from(*scale) >= 19
        }
        (Timestamp(TimeUnit::Millisecond, None), Timestamp(unit, _)) => *unit != TimeUnit::Second,
        _ => false,
    }
}

/// How SQL spells a generated column's type.
fn sql_name(produced: &DataType) -> &'static str {
    match produced {
        DataType::Int64 => "BIGINT",
        DataType::Utf8 => "VARCHAR",
        _ => "TIMESTAMP(3)",
    }
}

/// What a source's batches hold: one kind of event, some of its columns.
#[derive(Clone)]
struct BatchShape {
    kind: EventKind,
    /// Canonical column index of each output column.
    columns: Vec<usize>,
    /// The declared types of the output columns.
    schema: SchemaRef,
}

impl BatchShape {
    /// The rows of events `start..end` of this kind, cast to the declared
    /// types; `None` when the range holds none of them.
    fn block(&self, generator: &Generator, start: u64, end: u64) -> Result<Option<RecordBatch>> {
        let arrays = generator.build(self.kind, start, end, &self.columns);
        let rows = arrays.first().map_or_else(
            || generator::event_numbers(self.kind, start, end).count(),
            |a| a.len(),
        );
        if rows == 0 {
            return Ok(None);
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
        Ok(Some(RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &options,
        )?))
    }
}

/// Makes one generator source per subtask.
pub struct NexmarkSourceFactory {
    generator: Arc<Generator>,
    shape: BatchShape,
    events: Option<u64>,
    /// With `pregenerate`: every block's batch, built when the job is planned.
    memory: Option<Arc<Vec<Option<RecordBatch>>>>,
    block_events: u64,
    rows_per_second: Option<u64>,
    /// With `events_per_second`: wall-clock events per second.
    events_per_second: Option<u64>,
    /// The clock all subtasks of a paced generator share.
    clock: Arc<OnceLock<(u64, Instant)>>,
}

impl NexmarkSourceFactory {
    /// A source for `table_schema` (projected to `projection`) configured by `options`.
    pub fn try_new(
        options: &Options,
        table_schema: &SchemaRef,
        projection: Option<&[usize]>,
    ) -> Result<Self> {
        let kind = kind_of(options)?;
        let events = options.parse::<u64>("events")?;
        let rate = options.parse::<u64>("rate")?.unwrap_or(10_000_000);
        if !(1..=10_000_000_000).contains(&rate) {
            return Err(FlumenError::config(format!(
                "nexmark option rate = {rate} must be between 1 and 10000000000 events per second"
            )));
        }
        let seed = options.parse::<u64>("seed")?.unwrap_or(0);
        let rows_per_second = options.parse::<u64>("rows_per_second")?;
        let events_per_second = options
            .parse::<u64>("events_per_second")?
            .filter(|&e| e > 0);
        if events_per_second.is_some() && rows_per_second.is_some() {
            return Err(FlumenError::config(
                "nexmark options rows_per_second and events_per_second both pace the generator; give one",
            ));
        }
        let linger = options
            .duration("linger")?
            .unwrap_or(crate::options::DEFAULT_LINGER);
        let projected = match projection {
            Some(p) => Arc::new(table_schema.project(p)?),
            None => table_schema.clone(),
        };
        let columns = projected
            .fields()
            .iter()
            .map(|field| check_column(kind, field))
            .collect::<Result<Vec<usize>>>()?;
        let per_epoch = kind.per_epoch();
        let mut block_events = generator::EPOCH * (DEFAULT_BATCH_SIZE as u64).div_ceil(per_epoch);
        if let Some(eps) = events_per_second {
            // The events due within one linger, in whole epochs.
            let lingering = (eps as f64 * linger.as_secs_f64()) as u64 / generator::EPOCH;
            block_events = block_events.min(generator::EPOCH * lingering.max(1));
        }
        let generator = Generator::new(GeneratorConfig { rate, seed });
        let shape = BatchShape {
            kind,
            columns,
            schema: projected,
        };
        let memory = match options.get("pregenerate") {
            None | Some("false") => None,
            Some("true") => {
                let Some(events) = events else {
                    return Err(FlumenError::config(
                        "nexmark option pregenerate = 'true' needs a bounded table: set events",
                    ));
                };
                let blocks = (0..events.div_ceil(block_events))
                    .map(|b| {
                        let start = b * block_events;
                        shape.block(&generator, start, (start + block_events).min(events))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(Arc::new(blocks))
            }
            Some(other) => {
                return Err(FlumenError::config(format!(
                    "nexmark option pregenerate = '{other}' is not true or false"
                )));
            }
        };
        Ok(NexmarkSourceFactory {
            generator: Arc::new(generator),
            shape,
            events,
            memory,
            block_events,
            rows_per_second,
            events_per_second,
            clock: Arc::default(),
        })
    }
}

impl SourceFactory for NexmarkSourceFactory {
    fn describe(&self) -> String {
        let events = self
            .events
            .map_or("unbounded".to_string(), |e| format!("{e} events"));
        let cols: Vec<&str> = self
            .shape
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        format!(
            "Source: nexmark {:?} ({events}{}) columns [{}]",
            self.shape.kind,
            if self.memory.is_some() {
                ", pregenerated"
            } else {
                ""
            },
            cols.join(", ")
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(NexmarkSource {
            generator: self.generator.clone(),
            shape: self.shape.clone(),
            memory: self.memory.clone(),
            end: self.events.unwrap_or(u64::MAX),
            block_events: self.block_events,
            lanes: vec![Lane {
                index: ctx.subtask as u64,
                step: ctx.parallelism as u64,
                next_block: ctx.subtask as u64,
            }],
            subtask: ctx.subtask as u64,
            parallelism: ctx.parallelism as u64,
            throttle: Throttle::new(self.rows_per_second, ctx.parallelism),
            pace: self.events_per_second.map(|eps| Pace {
                events_per_second: eps as f64,
                clock: self.clock.clone(),
            }),
            ready: None,
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
    shape: BatchShape,
    /// With `pregenerate`: every block's batch, built before the job ran.
    memory: Option<Arc<Vec<Option<RecordBatch>>>>,
    end: u64,
    block_events: u64,
    /// The lanes this subtask generates; the lowest next block goes first.
    lanes: Vec<Lane>,
    subtask: u64,
    parallelism: u64,
    throttle: Option<Throttle>,
    pace: Option<Pace>,
    /// With a pace: when the rows of the last batch became due.
    ready: Option<(std::time::Instant, std::time::Instant)>,
}

/// The generator in real time.
struct Pace {
    events_per_second: f64,
    /// The subtasks' shared start: an event and when it was due.
    clock: Arc<OnceLock<(u64, Instant)>>,
}

impl Pace {
    /// Starts the clock, unless another subtask did: event `n` is due now.
    fn start(&mut self, n: u64) {
        self.clock.get_or_init(|| (n, Instant::now()));
    }

    /// When event `n` is due.
    fn due(&mut self, n: u64) -> Instant {
        let (first, at) = *self.clock.get_or_init(|| (n, Instant::now()));
        let ahead = n.saturating_sub(first) as f64 / self.events_per_second;
        at + Duration::from_secs_f64(ahead)
    }
}

#[async_trait]
impl Source for NexmarkSource {
    async fn next(&mut self) -> Result<Option<Message>> {
        if let Some(t) = &mut self.throttle {
            t.wait().await;
        }
        // Nothing changes before the pace's sleep, the only await below: a
        // cancelled call has changed nothing.
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
            if let Some(pace) = &mut self.pace {
                // The lanes' first blocks at this point are due one after
                // the other, whichever subtask starts first.
                let round = self.block_events * lane.step;
                pace.start(start / round * round);
                let (first, last) = (pace.due(start), pace.due(end - 1));
                // Safe to cancel: only the pace's clock may have started.
                tokio::time::sleep_until(last).await;
                self.ready = Some((first.into_std(), last.into_std()));
            }
            let block = lane.next_block;
            lane.next_block += lane.step;
            let batch = match &self.memory {
                Some(blocks) => blocks.get(block as usize).cloned().flatten(),
                None => self.shape.block(&self.generator, start, end)?,
            };
            let Some(batch) = batch else { continue };
            let rows = batch.num_rows();
            if let Some(t) = &mut self.throttle {
                t.sent(rows);
            }
            return Ok(Some(Message::Batch(batch)));
        }
    }

    fn ready_span(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        self.ready
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

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_runtime::JobMetrics;

    fn paced(events_per_second: &str, linger: &str) -> NexmarkSourceFactory {
        let options = Options::new(
            [
                ("kind", "bid"),
                ("events", "20000"),
                ("events_per_second", events_per_second),
                ("linger", linger),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        NexmarkSourceFactory::try_new(&options, &EventKind::Bid.schema(), None).unwrap()
    }

    /// In real time every batch goes once its last row is due, holds the
    /// rows of one linger, and says when its first and last rows were due.
    #[tokio::test(start_paused = true)]
    async fn a_paced_generator_sends_each_batch_once_its_rows_are_due() {
        // 100,000 events/s over 2 subtasks, 10 ms linger: blocks of 1,000
        // events, subtask 0 taking blocks 0, 2, 4, … of the global sequence.
        let factory = paced("100000", "10ms");
        let ctx = |i| TaskContext::new(i, 2, 128, Arc::new(JobMetrics::default()));
        let mut source = factory.create(&ctx(0)).unwrap();
        let start = Instant::now();
        // Subtask 1 asks first: its first block is still due after 0's.
        let mut other = factory.create(&ctx(1)).unwrap();
        other.next().await.unwrap();
        let (first, _) = other.ready_span().unwrap();
        assert_eq!(first, start.into_std() + Duration::from_millis(10));
        let mut blocks = 0;
        while let Some(msg) = source.next().await.unwrap() {
            let Message::Batch(b) = msg else { continue };
            let (first, last) = source.ready_span().unwrap();
            let now = Instant::now().into_std();
            // Block 2k covers events 2,000k … 2,000k + 999, due 20k ms
            // (first) to 20k + 9.99 ms (last) after the start.
            let k = blocks as u64;
            let due = |ms: f64| start.into_std() + Duration::from_secs_f64(ms / 1000.0);
            assert_eq!(first, due(20.0 * k as f64), "block {k}");
            assert_eq!(last, due(20.0 * k as f64 + 9.99), "block {k}");
            assert!(now >= last, "block {k} sent before its last row was due");
            // 46 of every 50 events are bids.
            assert_eq!(b.num_rows(), 920);
            blocks += 1;
        }
        assert_eq!(blocks, 10);
        // The last block, block 18, was due at 189.99 ms.
        assert!(start.elapsed() >= Duration::from_micros(189_990));
        assert!(start.elapsed() < Duration::from_millis(200));
    }

    fn rows(factory: &NexmarkSourceFactory, parallelism: usize) -> Vec<RecordBatch> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut batches = Vec::new();
        for i in 0..parallelism {
            let ctx = TaskContext::new(i, parallelism, 128, Arc::new(JobMetrics::default()));
            let mut source = factory.create(&ctx).unwrap();
            while let Some(msg) = runtime.block_on(source.next()).unwrap() {
                if let Message::Batch(b) = msg {
                    batches.push(b);
                }
            }
        }
        batches
    }

    /// Batches built when the job is planned are the generator's, lane by
    /// lane, at any parallelism.
    /// A declared column must hold every generated value unchanged:
    /// longer string types, finer timestamps and wide decimals are read
    /// through a cast; types that would change values, and columns the
    /// generator does not have, are refused naming the column.
    #[test]
    fn declared_types_must_hold_every_generated_value() {
        use DataType::*;
        let bid =
            |name: &str, t: DataType| check_column(EventKind::Bid, &Field::new(name, t, true));
        let ms = TimeUnit::Millisecond;
        for (name, t) in [
            ("auction", Int64),
            ("channel", LargeUtf8),
            ("channel", Utf8View),
            ("date_time", Timestamp(ms, None)),
            ("date_time", Timestamp(TimeUnit::Nanosecond, None)),
            (
                "date_time",
                Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
            ("price", Decimal128(19, 0)),
            ("price", Decimal128(21, 2)),
            ("price", Decimal256(40, 4)),
        ] {
            assert!(bid(name, t.clone()).is_ok(), "{name} {t}");
        }
        for (name, t) in [
            ("auction", Timestamp(ms, None)),
            ("date_time", Timestamp(TimeUnit::Second, None)),
            ("date_time", Int64),
            ("price", Int32),
            ("price", Float64),
            ("price", Decimal128(18, 0)),
            ("price", Decimal128(20, 2)),
            ("channel", Int64),
            ("auction", Utf8),
        ] {
            assert!(bid(name, t.clone()).is_err(), "{name} {t}");
        }
        let msg = bid("auction", Timestamp(ms, None)).unwrap_err().to_string();
        assert!(
            msg.contains("column 'auction' is declared Timestamp(ms)")
                && msg.contains("nexmark's bid column 'auction' is Int64; declare it BIGINT"),
            "{msg}"
        );
        let msg = bid("date_time", Utf8).unwrap_err().to_string();
        assert!(msg.contains("declare it TIMESTAMP(3)"), "{msg}");
        let msg = check_column(EventKind::Person, &Field::new("price", Int64, true))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("nexmark person table has no column 'price'; its columns are: id, name,"),
            "{msg}"
        );
    }

    /// Columns declared wider than generated read the generated values.
    #[test]
    fn widened_columns_read_the_generated_values() {
        let options = Options::new(
            [("kind", "bid"), ("events", "1000")].map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        let declared = Arc::new(arrow::datatypes::Schema::new(vec![
            Field::new("price", DataType::Decimal128(21, 2), false),
            Field::new("channel", DataType::Utf8View, false),
            Field::new(
                "date_time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]));
        let factory = NexmarkSourceFactory::try_new(&options, &declared, None).unwrap();
        let wide = factory
            .shape
            .block(&factory.generator, 0, 1000)
            .unwrap()
            .unwrap();
        assert_eq!(wide.schema(), declared);
        let canonical = EventKind::Bid.schema();
        let columns = ["price", "channel", "date_time"].map(|c| canonical.index_of(c).unwrap());
        let generated = factory.generator.build(EventKind::Bid, 0, 1000, &columns);
        for (wide, generated) in wide.columns().iter().zip(&generated) {
            assert_eq!(&cast(wide, generated.data_type()).unwrap(), generated);
        }
    }

    #[test]
    fn pregenerated_batches_equal_the_generated_ones() {
        let options = |pregenerate: &str| {
            Options::new(
                [
                    ("kind", "auction"),
                    ("events", "1000000"),
                    ("pregenerate", pregenerate),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .unwrap()
        };
        let schema = EventKind::Auction.schema();
        let generated = NexmarkSourceFactory::try_new(&options("false"), &schema, None).unwrap();
        let memory = NexmarkSourceFactory::try_new(&options("true"), &schema, None).unwrap();
        assert!(memory.describe().contains("pregenerated"));
        assert!(!generated.describe().contains("pregenerated"));
        for p in [1, 3] {
            let want = rows(&generated, p);
            assert_eq!(want.iter().map(|b| b.num_rows()).sum::<usize>(), 60_000);
            assert_eq!(rows(&memory, p), want, "parallelism {p}");
        }
        let unbounded = Options::new(
            [("kind", "auction"), ("pregenerate", "true")]
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        let err = NexmarkSourceFactory::try_new(&unbounded, &schema, None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("set events"), "{err}");
    }

    #[test]
    fn a_fast_pace_keeps_full_batches_and_two_paces_are_an_error() {
        // 100 M events/s within 1 ms would be 100,000 events: the block
        // stays at the ~8,192 rows of an unpaced one.
        let fast = paced("100000000", "1ms");
        assert_eq!(fast.block_events, 8950);
        assert_eq!(paced("1000", "1ms").block_events, generator::EPOCH);
        let options = Options::new(
            [
                ("kind", "bid"),
                ("events_per_second", "10"),
                ("rows_per_second", "10"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        let err = NexmarkSourceFactory::try_new(&options, &EventKind::Bid.schema(), None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("give one"), "{err}");
    }
}
