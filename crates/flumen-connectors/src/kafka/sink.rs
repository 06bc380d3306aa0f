//! Writes a Kafka topic. `exactly-once`: each subtask writes the rows of
//! one checkpoint interval in one transaction of a transactional producer,
//! flushed at the barrier and committed when the checkpoint completes, so
//! `read_committed` readers see each row once; the next interval goes on in
//! another producer meanwhile (a small pool per subtask, ids
//! `<prefix>-<subtask>-<slot>`, fenced at start so a dead run's open
//! transactions are aborted). `at-least-once`: flushed at every barrier.
//! `none`: never waited for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_types::{FlumenError, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use super::{CALL_TIMEOUT, brokers, client_config, kafka_error};
use crate::TableSpec;
use crate::format::{MessageFormat, check_raw, encode};
use crate::guarantee::Guarantee;

/// Transactional producers each subtask fences when it starts: one open
/// transaction and those waiting for their checkpoint to complete.
const SLOTS: usize = 3;

/// Makes one Kafka sink per subtask.
pub struct KafkaSinkFactory {
    shared: Arc<Shared>,
}

struct Shared {
    topic: String,
    brokers: String,
    config: ClientConfig,
    format: MessageFormat,
    /// Key columns of the input and their format.
    key: Option<(Vec<usize>, MessageFormat)>,
    /// The input's columns written as the value: all but metadata columns.
    value_columns: Vec<usize>,
    /// The input's metadata columns written as each record's headers (a
    /// JSON object of strings) and timestamp.
    headers: Option<usize>,
    timestamp: Option<usize>,
    guarantee: Guarantee,
    prefix: String,
}

impl KafkaSinkFactory {
    /// Checks the options against the rows written.
    pub fn try_new(spec: &TableSpec, input: SchemaRef, unique: &str) -> Result<Self> {
        let options = &spec.options;
        let topics = options.required_list("topic")?;
        let [topic] = topics.as_slice() else {
            return Err(FlumenError::config(format!(
                "a Kafka sink writes one topic, not {}",
                topics.join(", ")
            )));
        };
        let format = MessageFormat::parse(options, "format")?;
        let key = match options.get("key.fields") {
            None => None,
            Some(fields) => {
                let mut columns = Vec::new();
                for name in fields.split(';').map(str::trim).filter(|f| !f.is_empty()) {
                    let i = input.index_of(name).map_err(|_| {
                        FlumenError::config(format!(
                            "option key.fields names column '{name}', which the table does not have; columns: {}",
                            crate::column_list(&input)
                        ))
                    })?;
                    columns.push(i);
                }
                let key_format = match options.get("key.format") {
                    Some(_) => MessageFormat::parse(options, "key.format")?,
                    None if matches!(format, MessageFormat::Avro(_)) => {
                        return Err(FlumenError::config(
                            "with an Avro format, option key.format must say how the key columns are written (its Avro options are key.avro.schema, key.avro-confluent.schema and key.avro-confluent.schema-id)",
                        ));
                    }
                    None => format.clone(),
                };
                Some((columns, key_format))
            }
        };
        let metadata_column = |key: &str| -> Result<Option<usize>> {
            let Some((column, _)) = spec.metadata.iter().find(|(_, k)| k == key) else {
                return Ok(None);
            };
            input.index_of(column).map(Some).map_err(|_| {
                FlumenError::internal(format!("metadata column '{column}' is not written"))
            })
        };
        let headers = metadata_column("headers")?;
        let timestamp = metadata_column("timestamp")?;
        let value_columns: Vec<usize> = (0..input.fields().len())
            .filter(|i| Some(*i) != headers && Some(*i) != timestamp)
            .collect();
        if let Some(t) = timestamp
            && !can_cast_types(input.field(t).data_type(), &TIMESTAMP_MS)
        {
            return Err(FlumenError::config(format!(
                "column '{}' ({}) cannot be written as the record timestamp",
                input.field(t).name(),
                input.field(t).data_type()
            )));
        }
        if format.is_raw() {
            check_raw("format", &input, &value_columns)?;
        }
        format.check_writes("format", &input.project(&value_columns)?)?;
        if let Some((columns, key_format)) = &key {
            if key_format.is_raw() {
                check_raw("key.format", &input, columns)?;
            }
            key_format.check_writes("key.format", &input.project(columns)?)?;
        }
        let guarantee = Guarantee::parse(options)?;
        let prefix = options
            .get("sink.transactional-id-prefix")
            .map(str::to_string)
            .unwrap_or_else(|| format!("flumen-{topic}-{unique}"));
        let idempotent = if guarantee == Guarantee::None {
            "false"
        } else {
            "true"
        };
        let config = client_config(
            options,
            &[
                ("enable.idempotence", idempotent),
                ("linger.ms", "5"),
                ("transaction.timeout.ms", "60000"),
            ],
        );
        Ok(KafkaSinkFactory {
            shared: Arc::new(Shared {
                topic: topic.clone(),
                brokers: brokers(options).to_string(),
                config,
                format,
                key,
                value_columns,
                headers,
                timestamp,
                guarantee,
                prefix,
            }),
        })
    }
}

#[async_trait]
impl SinkFactory for KafkaSinkFactory {
    fn describe(&self) -> String {
        let s = &self.shared;
        format!("kafka {} ({:?}, {})", s.topic, s.format, s.guarantee.name())
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(KafkaSink {
            shared: self.shared.clone(),
            subtask: ctx.subtask,
            slots: Vec::new(),
            open: None,
            waiting: Vec::new(),
            topic_checked: false,
        }))
    }
}

/// Notes the first failed delivery of a producer, for the next call to see.
#[derive(Default)]
pub(super) struct Deliveries {
    failed: Mutex<Option<KafkaError>>,
}

impl Deliveries {
    /// The first failed delivery since the last call, if any.
    pub(super) fn take_failure(&self) -> Option<KafkaError> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            failed.get_or_insert_with(|| e.clone());
        }
    }
}

pub(super) type KafkaProducer = ThreadedProducer<Deliveries>;

/// One producer of a subtask; transactional in exactly-once mode.
struct Slot {
    producer: Arc<KafkaProducer>,
    /// Its transactional id, for the manifest.
    id: String,
}

struct KafkaSink {
    shared: Arc<Shared>,
    subtask: usize,
    /// Producers: in exactly-once mode fenced and idle until used; the one
    /// of at-least-once and none.
    slots: Vec<Slot>,
    /// The producer writing now (its transaction open in exactly-once mode).
    open: Option<Slot>,
    /// Transactions flushed at a barrier, waiting for their checkpoint.
    waiting: Vec<(u64, Slot)>,
    /// Whether the topic was found to exist.
    topic_checked: bool,
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let s = self.shared.clone();
        let values = encode(&s.format, &batch.project(&s.value_columns)?)?;
        let headers = match s.headers {
            Some(h) => Some(record_headers(
                batch.column(h),
                batch.schema().field(h).name(),
            )?),
            None => None,
        };
        let timestamps = match s.timestamp {
            Some(t) => Some(cast(batch.column(t), &TIMESTAMP_MS)?),
            None => None,
        };
        let timestamps = timestamps
            .as_ref()
            .map(|t| t.as_primitive::<TimestampMillisecondType>());
        let keys = match &s.key {
            Some((columns, format)) => Some(encode(format, &batch.project(columns)?)?),
            None => None,
        };
        let producer = self.open_producer().await?.producer.clone();
        for i in 0..values.len() {
            let mut record = BaseRecord::to(&s.topic).payload(values.row(i));
            if let Some(keys) = &keys {
                record = record.key(keys.row(i));
            }
            if let Some(h) = headers.as_ref().and_then(|h| h[i].clone()) {
                record = record.headers(h);
            }
            if let Some(t) = timestamps.filter(|t| t.is_valid(i)) {
                record = record.timestamp(t.value(i));
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        // The local queue is full: the broker is slower
                        // than the job, so wait (backpressure).
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        return Err(kafka_error(format!("writing to topic '{}'", s.topic), e));
                    }
                }
            }
        }
        check_deliveries(&producer, &s)
    }

    async fn finish(&mut self) -> Result<()> {
        let Some(slot) = self.open.take() else {
            return Ok(());
        };
        flush(&slot.producer, &self.shared).await?;
        if self.shared.guarantee == Guarantee::ExactlyOnce {
            commit_transaction(&slot.producer, &self.shared).await?;
        }
        Ok(())
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<String>> {
        match self.shared.guarantee {
            Guarantee::None => Ok(Vec::new()),
            Guarantee::AtLeastOnce => {
                if let Some(slot) = &self.open {
                    flush(&slot.producer, &self.shared).await?;
                }
                Ok(Vec::new())
            }
            Guarantee::ExactlyOnce => {
                let Some(slot) = self.open.take() else {
                    return Ok(Vec::new());
                };
                flush(&slot.producer, &self.shared).await?;
                let staged = vec![slot.id.clone()];
                self.waiting.push((checkpoint, slot));
                Ok(staged)
            }
        }
    }

    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(n, _)| *n <= checkpoint);
        self.waiting = waiting;
        for (_, slot) in done {
            commit_transaction(&slot.producer, &self.shared).await?;
            self.slots.push(slot);
        }
        Ok(())
    }
}

impl KafkaSink {
    /// The producer for the rows written now; in exactly-once mode with
    /// its transaction begun. The first call fences this subtask's
    /// transactional ids, aborting what a dead run left open.
    async fn open_producer(&mut self) -> Result<&Slot> {
        if let Some(slot) = self.open.take() {
            return Ok(self.open.insert(slot));
        }
        let s = self.shared.clone();
        if s.guarantee == Guarantee::ExactlyOnce && self.slots.is_empty() && self.waiting.is_empty()
        {
            for slot in 0..SLOTS {
                let id = format!("{}-{}-{slot}", s.prefix, self.subtask);
                self.slots.push(transactional(&s, id).await?);
            }
        }
        let slot = match self.slots.pop() {
            Some(slot) => slot,
            None if s.guarantee == Guarantee::ExactlyOnce => {
                // More checkpoints wait to commit than the pool holds.
                let n = SLOTS + self.waiting.len();
                transactional(&s, format!("{}-{}-{n}", s.prefix, self.subtask)).await?
            }
            None => Slot {
                producer: Arc::new(create(&s, s.config.clone())?),
                id: String::new(),
            },
        };
        if !self.topic_checked {
            check_topic(&slot.producer, &s).await?;
            self.topic_checked = true;
        }
        if s.guarantee == Guarantee::ExactlyOnce {
            slot.producer.begin_transaction().map_err(|e| {
                kafka_error(format!("beginning a transaction on topic '{}'", s.topic), e)
            })?;
        }
        Ok(self.open.insert(slot))
    }
}

/// Fails naming the topic and brokers when the topic does not exist, so
/// that writing to it is not a delivery timeout much later.
/// The type a record's timestamp is written from.
const TIMESTAMP_MS: DataType = DataType::Timestamp(TimeUnit::Millisecond, None);

/// Each row's headers from a column holding a JSON object of strings
/// (null values are headers without a value; a null column no headers).
fn record_headers(column: &ArrayRef, name: &str) -> Result<Vec<Option<OwnedHeaders>>> {
    let text = cast(column, &DataType::Utf8)?;
    let text = text.as_string::<i32>();
    (0..text.len())
        .map(|i| {
            if text.is_null(i) {
                return Ok(None);
            }
            let bad = |why: String| {
                FlumenError::BadData(format!(
                    "column '{name}' must hold the record headers as a JSON object of strings, not {}: {why}",
                    text.value(i)
                ))
            };
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(text.value(i)).map_err(|e| bad(e.to_string()))?;
            let mut headers = OwnedHeaders::new_with_capacity(object.len());
            for (key, value) in &object {
                let value = match value {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.as_str()),
                    other => return Err(bad(format!("header '{key}' is {other}"))),
                };
                headers = headers.insert(Header { key, value });
            }
            Ok(Some(headers))
        })
        .collect()
}

async fn check_topic(producer: &Arc<KafkaProducer>, s: &Shared) -> Result<()> {
    let producer = producer.clone();
    let topic = s.topic.clone();
    let brokers = s.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(Some(&topic), CALL_TIMEOUT)
            .map_err(|e| {
                kafka_error(
                    format!("reading metadata of topic '{topic}' at {brokers}"),
                    e,
                )
            })?;
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(FlumenError::config(format!(
                "topic '{topic}' does not exist at {brokers}"
            ))),
        }
    })
    .await
    .map_err(|e| FlumenError::internal(format!("topic look-up panicked: {e}")))?
}

fn create(s: &Shared, config: ClientConfig) -> Result<KafkaProducer> {
    config
        .create_with_context(Deliveries::default())
        .map_err(|e| kafka_error(format!("creating a producer for {}", s.brokers), e))
}

/// A transactional producer with id `id`, initialised: the broker aborts
/// any transaction an earlier producer with this id left open.
async fn transactional(s: &Arc<Shared>, id: String) -> Result<Slot> {
    let mut config = s.config.clone();
    config.set("transactional.id", &id);
    let producer = Arc::new(create(s, config)?);
    let p = producer.clone();
    let shared = s.clone();
    tokio::task::spawn_blocking(move || {
        p.init_transactions(CALL_TIMEOUT).map_err(|e| {
            kafka_error(
                format!(
                    "starting transactions on {} (does the broker support them?)",
                    shared.brokers
                ),
                e,
            )
        })
    })
    .await
    .map_err(|e| FlumenError::internal(format!("initialising a producer panicked: {e}")))??;
    Ok(Slot { producer, id })
}

/// Waits until everything sent is acknowledged.
async fn flush(producer: &Arc<KafkaProducer>, s: &Arc<Shared>) -> Result<()> {
    let p = producer.clone();
    let shared = s.clone();
    tokio::task::spawn_blocking(move || {
        p.flush(CALL_TIMEOUT)
            .map_err(|e| kafka_error(format!("flushing to topic '{}'", shared.topic), e))
    })
    .await
    .map_err(|e| FlumenError::internal(format!("flushing panicked: {e}")))??;
    check_deliveries(producer, s)
}

/// Commits the producer's transaction.
async fn commit_transaction(producer: &Arc<KafkaProducer>, s: &Arc<Shared>) -> Result<()> {
    let p = producer.clone();
    let shared = s.clone();
    tokio::task::spawn_blocking(move || {
        p.commit_transaction(CALL_TIMEOUT).map_err(|e| {
            kafka_error(
                format!("committing a transaction on topic '{}'", shared.topic),
                e,
            )
        })
    })
    .await
    .map_err(|e| FlumenError::internal(format!("committing panicked: {e}")))?
}

/// The first delivery that failed, as an error.
fn check_deliveries(producer: &KafkaProducer, s: &Shared) -> Result<()> {
    match producer.context().take_failure() {
        Some(e) => Err(kafka_error(
            format!("writing to topic '{}' at {}", s.topic, s.brokers),
            e,
        )),
        None => Ok(()),
    }
}
