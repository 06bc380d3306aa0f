//! Reads Kafka topics. Partitions are spread over source subtasks by a
//! fixed rule (so a checkpoint's offsets find their owner at any
//! parallelism) and assigned directly, without the group protocol; each
//! subtask's offsets go into checkpoints and, for monitoring only, to the
//! consumer group once the checkpoint completes. Payloads are decoded many at a time, one batch per
//! partition, with a watermark per partition (idle partitions stop holding
//! it back).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flumen_runtime::{JobMetrics, Source, SourceFactory, TaskContext, WatermarkStrategy};
use flumen_state::checkpoint::SplitPosition;
use flumen_types::{DEFAULT_BATCH_SIZE, FlumenError, Message, Result};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::time::Instant;

use super::dead_letters::DeadLetterTopic;
use super::drain::{ConsumerQueue, Record};
use super::{CALL_TIMEOUT, brokers, client_config, kafka_error};
use crate::TableSpec;
use crate::bad_data::{BadData, DeadLetters};
use crate::clocks::SplitClocks;
use crate::format::{MessageFormat, PayloadDecoder};
use crate::metadata::{MetadataColumns, Records};
use crate::payloads::Payloads;
use crate::ready::{Ready, next_within};
use crate::throttle::Throttle;

/// How long a subtask waits for a message before it looks at idleness and
/// partition discovery again.
const TICK: Duration = Duration::from_millis(100);

/// How long metadata look-ups at plan time wait for the brokers.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a job without a checkpoint starts reading.
#[derive(Debug, Clone, Copy)]
enum Startup {
    GroupOffsets,
    Earliest,
    Latest,
    Timestamp(i64),
}

/// Makes one Kafka source per subtask over the partitions found at plan
/// time (and later, when discovery is on).
pub struct KafkaSourceFactory {
    table: String,
    config: ClientConfig,
    brokers: String,
    topics: Vec<String>,
    partitions: Vec<(String, i32)>,
    decoder: Arc<PayloadDecoder>,
    /// The columns filled from records' metadata.
    metadata: Arc<MetadataColumns>,
    startup: Startup,
    bounded: bool,
    discovery: Option<Duration>,
    bad_data: BadData,
    /// With `dead_letter.topic`: the producer's properties and the topic.
    dead_letters: Option<(ClientConfig, String)>,
    idle_after: Option<Duration>,
    rows_per_second: Option<u64>,
    /// How long a partial batch waits for more messages.
    linger: Duration,
}

impl KafkaSourceFactory {
    /// Checks the options and that every topic exists, listing partitions.
    pub async fn try_new(spec: &TableSpec, projection: Option<&[usize]>) -> Result<Self> {
        let options = &spec.options;
        let format = MessageFormat::parse(options, "format")?;
        let projection: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..spec.schema.fields().len()).collect(),
        };
        let (metadata, payload) = MetadataColumns::new(spec, &projection)?;
        let decoder = PayloadDecoder::try_new(format, &payload.schema, &payload.projection)?;
        let startup = match options.choice(
            "scan.startup.mode",
            &["group-offsets", "earliest-offset", "latest-offset", "timestamp"],
            "group-offsets",
        )? {
            "earliest-offset" => Startup::Earliest,
            "latest-offset" => Startup::Latest,
            "timestamp" => Startup::Timestamp(
                options
                    .parse::<i64>("scan.startup.timestamp-millis")?
                    .ok_or_else(|| {
                        FlumenError::config(
                            "scan.startup.mode = 'timestamp' needs option 'scan.startup.timestamp-millis'",
                        )
                    })?,
            ),
            _ => Startup::GroupOffsets,
        };
        let bounded = options.choice(
            "scan.bounded.mode",
            &["unbounded", "latest-offset"],
            "unbounded",
        )? == "latest-offset";
        let discovery = options
            .duration("scan.topic-partition-discovery.interval")?
            .unwrap_or(Duration::from_secs(10));
        let idle_after = options
            .duration("idle_timeout")?
            .unwrap_or(Duration::from_secs(10));
        let group = format!("flumen-{}", spec.name);
        let config = client_config(
            options,
            &[
                ("group.id", group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_committed"),
            ],
        );
        let topics = options.required_list("topic")?;
        let brokers = brokers(options).to_string();
        let partitions = list_partitions(&config, &brokers, &topics).await?;
        let bad_data = BadData::parse(options)?;
        let dead_letters = match &bad_data {
            BadData::DeadLetter(DeadLetters::Topic(topic)) => {
                // It must exist now, not fail deliveries minutes later.
                list_partitions(&config, &brokers, std::slice::from_ref(topic)).await?;
                Some((client_config(options, &[("linger.ms", "5")]), topic.clone()))
            }
            _ => None,
        };
        Ok(KafkaSourceFactory {
            table: spec.name.clone(),
            config,
            brokers,
            topics,
            partitions,
            decoder: Arc::new(decoder),
            metadata: Arc::new(metadata),
            startup,
            bounded,
            discovery: (!bounded && !discovery.is_zero()).then_some(discovery),
            bad_data,
            dead_letters,
            idle_after: (!idle_after.is_zero()).then_some(idle_after),
            rows_per_second: options.parse::<u64>("rows_per_second")?,
            linger: options
                .duration("linger")?
                .unwrap_or(crate::options::DEFAULT_LINGER),
        })
    }

    fn source(
        &self,
        ctx: &TaskContext,
        watermarks: Option<&Arc<dyn WatermarkStrategy>>,
    ) -> Result<KafkaSource> {
        let consumer: StreamConsumer = self
            .config
            .create()
            .map_err(|e| kafka_error(format!("creating a consumer of {}", self.brokers), e))?;
        let mut source = KafkaSource {
            consumer: Arc::new(consumer),
            brokers: self.brokers.clone(),
            topics: self.topics.clone(),
            decoder: self.decoder.clone(),
            metadata: self.metadata.clone(),
            startup: self.startup,
            bounded: self.bounded,
            discovery: self.discovery,
            next_discovery: Instant::now() + self.discovery.unwrap_or_default(),
            bad_data: self.bad_data.clone(),
            dead_letters: match &self.dead_letters {
                Some((config, topic)) => Some(DeadLetterTopic::new(config, topic, &self.brokers)?),
                None => None,
            },
            metrics: ctx.metrics.clone(),
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            splits: Vec::new(),
            by_topic: HashMap::new(),
            assigned: false,
            restored: Vec::new(),
            offsets_of: BTreeMap::new(),
            pending: Ready::new(Throttle::new(self.rows_per_second, ctx.parallelism)),
            clocks: watermarks.map(|w| SplitClocks::new(w, 0, self.idle_after)),
            ended: Vec::new(),
            idle_sent: false,
            linger: self.linger,
            queue: None,
            last_split: None,
        };
        for (topic, partition) in &self.partitions {
            source.add_split(topic, *partition);
        }
        Ok(source)
    }
}

impl SourceFactory for KafkaSourceFactory {
    fn describe(&self) -> String {
        format!(
            "kafka {} ({} partitions){}",
            self.topics.join(";"),
            self.partitions.len(),
            if self.bounded { ", bounded" } else { "" }
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(self.source(ctx, None)?))
    }

    /// Watermarks per partition, the minimum over the active ones.
    fn create_with_watermarks(
        &self,
        ctx: &TaskContext,
        watermarks: &Arc<dyn WatermarkStrategy>,
    ) -> Result<Option<Box<dyn Source>>> {
        Ok(Some(Box::new(self.source(ctx, Some(watermarks))?)))
    }
}

impl std::fmt::Debug for KafkaSourceFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KafkaSourceFactory({})", self.table)
    }
}

/// Every partition of `topics`, sorted; a topic that does not exist, or
/// brokers that cannot be reached, are errors that name them.
async fn list_partitions(
    config: &ClientConfig,
    brokers: &str,
    topics: &[String],
) -> Result<Vec<(String, i32)>> {
    let config = config.clone();
    let brokers = brokers.to_string();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| kafka_error(format!("creating a consumer of {brokers}"), e))?;
        metadata_partitions(&consumer, &brokers, &topics, METADATA_TIMEOUT)
    })
    .await
    .map_err(|e| FlumenError::internal(format!("metadata look-up panicked: {e}")))?
}

/// The partitions of `topics` by the brokers' metadata (blocking).
fn metadata_partitions<C: Consumer>(
    consumer: &C,
    brokers: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<(String, i32)>> {
    let mut partitions = Vec::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| match e {
                KafkaError::MetadataFetch(_) => FlumenError::transient(
                    format!("Kafka brokers at {brokers} not reachable (tried for {timeout:?})"),
                    e,
                ),
                e => kafka_error(
                    format!("reading metadata of topic '{topic}' at {brokers}"),
                    e,
                ),
            })?;
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        match found {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                partitions.extend(t.partitions().iter().map(|p| (topic.clone(), p.id())));
            }
            Some(t) if let Some(e) = t.error() => {
                let code = rdkafka::types::RDKafkaErrorCode::from(e);
                return Err(FlumenError::config(format!(
                    "topic '{topic}' at {brokers}: {code}"
                )));
            }
            _ => {
                return Err(FlumenError::config(format!(
                    "topic '{topic}' does not exist at {brokers}"
                )));
            }
        }
    }
    partitions.sort();
    Ok(partitions)
}

/// The subtask of `parallelism` that reads `partition` of `topic`: the
/// topic's hash picks where its partitions start, then they go round.
fn owner(topic: &str, partition: i32, parallelism: usize) -> usize {
    let start = twox_hash::XxHash64::oneshot(0, topic.as_bytes()) % parallelism as u64;
    ((start + partition.max(0) as u64) % parallelism as u64) as usize
}

/// The split name of a partition in checkpoints.
fn split_name(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// One partition this subtask reads.
struct Split {
    topic: String,
    partition: i32,
    /// The offset after the last message returned; `None` before any.
    next_offset: Option<i64>,
    /// Bounded reading: the offset it ends at.
    stop: Option<i64>,
    done: bool,
    /// Its clock, with event time.
    clock: usize,
    /// Messages taken but not yet decoded, by offset.
    buffer: Payloads,
    /// Their timestamps, keys and headers, when a column reads them.
    records: Records,
    /// Offset after the last message taken (tombstones included).
    taken_next: Option<i64>,
}

struct KafkaSource {
    consumer: Arc<StreamConsumer>,
    brokers: String,
    topics: Vec<String>,
    decoder: Arc<PayloadDecoder>,
    metadata: Arc<MetadataColumns>,
    startup: Startup,
    bounded: bool,
    discovery: Option<Duration>,
    next_discovery: Instant,
    bad_data: BadData,
    /// With `dead_letter.topic`: where malformed records go.
    dead_letters: Option<DeadLetterTopic>,
    metrics: Arc<JobMetrics>,
    subtask: usize,
    parallelism: usize,
    splits: Vec<Split>,
    /// Split ids by topic, then partition.
    by_topic: HashMap<String, HashMap<i32, usize>>,
    assigned: bool,
    restored: Vec<SplitPosition>,
    /// Offsets of each checkpoint taken and not yet complete.
    offsets_of: BTreeMap<u64, TopicPartitionList>,
    /// Messages ready to return, each with the split offset it moves to.
    pending: Ready<(usize, i64)>,
    clocks: Option<SplitClocks>,
    /// Splits found at their end since the last decode, whose clocks stop
    /// once their last rows are queued.
    ended: Vec<usize>,
    /// Whether it said it is idle, having no partition.
    idle_sent: bool,
    /// How long a partial batch waits for more messages.
    linger: Duration,
    /// The consumer's queue, drained many messages at a time once the
    /// first of a batch arrived; made at the first batch.
    queue: Option<ConsumerQueue>,
    /// The split of the last message taken.
    last_split: Option<usize>,
}

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some((msg, advance)) = self.pending.pop().await {
                if let Some((id, next)) = advance {
                    self.splits[id].next_offset = Some(next);
                }
                match msg {
                    Some(msg) => return Ok(Some(msg)),
                    None => continue,
                }
            }
            if self.splits.iter().any(|s| s.taken_next.is_some()) {
                self.decode_taken()?;
                continue;
            }
            if !self.assigned {
                self.assign().await?;
            }
            if self.bounded && self.splits.iter().all(|s| s.done) {
                if let Some(d) = &self.dead_letters {
                    d.flush()?;
                }
                return Ok(None);
            }
            if self.discovery.is_some() && Instant::now() >= self.next_discovery {
                self.discover().await?;
            }
            // A subtask without partitions holds no watermark back.
            if self.splits.is_empty() && !self.idle_sent {
                self.idle_sent = true;
                return Ok(Some(Message::Idle));
            }
            let consumer = self.consumer.clone();
            let mut stream = consumer.stream();
            let first = tokio::select! {
                m = stream.next() => m,
                _ = tokio::time::sleep(TICK) => None,
            };
            let Some(first) = first else {
                if let Some(wm) = self.clocks.as_mut().and_then(|c| c.advanced()) {
                    return Ok(Some(Message::Watermark(wm)));
                }
                continue;
            };
            let arrived = std::time::Instant::now();
            self.pending.arrived(arrived);
            self.take(first)?;
            // A cancel while lingering leaves the messages taken in their
            // splits' buffers: the next call decodes them first.
            let deadline =
                (!self.linger.is_zero()).then(|| Instant::from_std(arrived) + self.linger);
            let mut queue = match self.queue.take() {
                Some(q) => q,
                None => ConsumerQueue::new(self.consumer.clone()),
            };
            let mut taken = 1;
            while taken < DEFAULT_BATCH_SIZE {
                let drained = queue.drain(DEFAULT_BATCH_SIZE - taken, |m| self.take(m))?;
                taken += drained;
                if drained > 0 {
                    continue;
                }
                let Some(m) = next_within(&mut stream, deadline).await else {
                    break;
                };
                self.take(m)?;
                taken += 1;
            }
            self.queue = Some(queue);
            drop(stream);
            self.decode_taken()?;
        }
    }

    fn ready_span(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        self.pending.ready_span()
    }

    fn snapshot_position(&mut self, checkpoint: u64) -> Result<Vec<SplitPosition>> {
        // Dead letters of records before the barrier are stored first.
        if let Some(d) = &self.dead_letters {
            d.flush()?;
        }
        let positions = split_positions(&self.splits, &self.pending);
        let mut offsets = TopicPartitionList::new();
        for s in &self.splits {
            if let Some(next) = s.next_offset {
                let _ = offsets.add_partition_offset(&s.topic, s.partition, Offset::Offset(next));
            }
        }
        self.offsets_of.insert(checkpoint, offsets);
        Ok(positions)
    }

    /// Commits the offsets of the completed checkpoint to the consumer
    /// group, as Flink does: for monitoring only, so a failure changes
    /// nothing.
    async fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        let later = self.offsets_of.split_off(&(checkpoint + 1));
        let covered = std::mem::replace(&mut self.offsets_of, later);
        if let Some((_, offsets)) = covered.into_iter().next_back()
            && offsets.count() > 0
        {
            let _ = self.consumer.commit(&offsets, CommitMode::Async);
        }
        Ok(())
    }

    fn restore_position(&mut self, positions: &[SplitPosition]) -> Result<()> {
        self.restored = positions.to_vec();
        Ok(())
    }
}

impl KafkaSource {
    /// Adds `partition` of `topic` if this subtask owns it.
    fn add_split(&mut self, topic: &str, partition: i32) {
        if owner(topic, partition, self.parallelism) != self.subtask
            || self
                .by_topic
                .get(topic)
                .is_some_and(|p| p.contains_key(&partition))
        {
            return;
        }
        let clock = self.clocks.as_mut().map_or(0, |c| c.add());
        self.by_topic
            .entry(topic.to_string())
            .or_default()
            .insert(partition, self.splits.len());
        self.splits.push(Split {
            topic: topic.to_string(),
            partition,
            next_offset: None,
            stop: None,
            done: false,
            clock,
            buffer: Payloads::default(),
            records: Records::default(),
            taken_next: None,
        });
    }

    /// Assigns this subtask's partitions at their checkpointed offsets, or
    /// where the startup mode says; bounded reading notes where each ends.
    async fn assign(&mut self) -> Result<()> {
        let restored: HashMap<&str, &SplitPosition> = self
            .restored
            .iter()
            .map(|p| (p.split.as_str(), p))
            .collect();
        let from_checkpoint = !self.restored.is_empty();
        let mut list = TopicPartitionList::new();
        let mut by_time = TopicPartitionList::new();
        for s in &mut self.splits {
            let offset = match restored.get(split_name(&s.topic, s.partition).as_str()) {
                Some(p) => {
                    s.done = p.done;
                    match p.position.first() {
                        Some(&o) => {
                            s.next_offset = Some(o as i64);
                            Offset::Offset(o as i64)
                        }
                        None => start_offset(self.startup),
                    }
                }
                // A partition the checkpoint does not know is new: read it all.
                None if from_checkpoint => Offset::Beginning,
                None => start_offset(self.startup),
            };
            let list = match (offset, self.startup) {
                (Offset::Stored, Startup::Timestamp(ms)) => {
                    by_time
                        .add_partition_offset(&s.topic, s.partition, Offset::Offset(ms))
                        .map_err(|e| kafka_error("assigning partitions".into(), e))?;
                    continue;
                }
                _ => &mut list,
            };
            list.add_partition_offset(&s.topic, s.partition, offset)
                .map_err(|e| kafka_error("assigning partitions".into(), e))?;
        }
        let consumer = self.consumer.clone();
        let brokers = self.brokers.clone();
        // With several topics, `at_end` needs each partition's end.
        let need_stops = self.bounded && self.topics.len() > 1;
        let (list, stops) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut list = list;
            if by_time.count() > 0 {
                let found = consumer
                    .offsets_for_times(by_time, CALL_TIMEOUT)
                    .map_err(|e| kafka_error(format!("finding offsets by time at {brokers}"), e))?;
                for e in found.elements() {
                    // No message at or after the time: start at the end.
                    let offset = match e.offset() {
                        Offset::Offset(o) => Offset::Offset(o),
                        _ => Offset::End,
                    };
                    list.add_partition_offset(e.topic(), e.partition(), offset)
                        .map_err(|err| kafka_error("assigning partitions".into(), err))?;
                }
            }
            let mut stops = Vec::new();
            if need_stops {
                for e in list.elements() {
                    let (_, high) = consumer
                        .fetch_watermarks(e.topic(), e.partition(), CALL_TIMEOUT)
                        .map_err(|err| {
                            kafka_error(
                                format!(
                                    "reading the end of {}:{} at {brokers}",
                                    e.topic(),
                                    e.partition()
                                ),
                                err,
                            )
                        })?;
                    stops.push((e.topic().to_string(), e.partition(), high));
                }
            }
            Ok((list, stops))
        })
        .await
        .map_err(|e| FlumenError::internal(format!("assigning partitions panicked: {e}")))??;
        // Each split is done when the consumer reaches its end (`at_end`),
        // an empty one included; these ends only tell topics apart.
        for (topic, partition, stop) in stops {
            if let Some(&id) = self.by_topic.get(&topic).and_then(|p| p.get(&partition)) {
                self.splits[id].stop = Some(stop);
            }
        }
        for s in self.splits.iter().filter(|s| s.done) {
            if let Some(c) = self.clocks.as_mut() {
                c.finish(s.clock);
            }
        }
        self.consumer
            .assign(&list)
            .map_err(|e| kafka_error(format!("assigning partitions at {}", self.brokers), e))?;
        self.assigned = true;
        Ok(())
    }

    /// Looks for partitions added since the last look and starts reading
    /// those this subtask owns from their beginning.
    async fn discover(&mut self) -> Result<()> {
        self.next_discovery = Instant::now() + self.discovery.unwrap_or_default();
        let consumer = self.consumer.clone();
        let brokers = self.brokers.clone();
        let topics = self.topics.clone();
        let found = tokio::task::spawn_blocking(move || {
            metadata_partitions(&*consumer, &brokers, &topics, CALL_TIMEOUT)
        })
        .await
        .map_err(|e| FlumenError::internal(format!("partition discovery panicked: {e}")))??;
        let known = self.splits.len();
        for (topic, partition) in found {
            self.add_split(&topic, partition);
        }
        if self.splits.len() > known {
            let mut list = TopicPartitionList::new();
            for s in &self.splits[known..] {
                list.add_partition_offset(&s.topic, s.partition, Offset::Beginning)
                    .map_err(|e| kafka_error("assigning new partitions".into(), e))?;
            }
            self.consumer.incremental_assign(&list).map_err(|e| {
                kafka_error(format!("assigning new partitions at {}", self.brokers), e)
            })?;
        }
        Ok(())
    }

    /// Buffers one message (or notes a partition's end).
    fn take(&mut self, message: Result<impl Record, KafkaError>) -> Result<()> {
        let message = match message {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(partition)) => {
                self.at_end(partition);
                return Ok(());
            }
            Err(e) if client_recovers(&e) => {
                // Drained batches leave these to librdkafka's own log.
                eprintln!("kafka source of {}: {e}; reconnecting", self.brokers);
                return Ok(());
            }
            Err(e) => return Err(kafka_error(format!("reading from {}", self.brokers), e)),
        };
        let (topic, partition) = (message.topic(), message.partition());
        let id = match self.last_split {
            // Messages come in runs of one partition: most skip the maps.
            Some(id)
                if self.splits[id].partition == partition && self.splits[id].topic == topic =>
            {
                id
            }
            _ => {
                let Some(&id) = self.by_topic.get(topic).and_then(|p| p.get(&partition)) else {
                    return Ok(());
                };
                self.last_split = Some(id);
                id
            }
        };
        let split = &mut self.splits[id];
        split.taken_next = Some(message.offset() + 1);
        // A message without a value (a tombstone) is no row.
        if let Some(payload) = message.payload() {
            split.buffer.push(payload, message.offset());
            if let Some(wanted) = self.metadata.per_record() {
                split.records.push_kafka(&message, wanted);
            }
        }
        Ok(())
    }

    /// The consumer reached the end of `partition` (of some topic), as
    /// the log is now: in bounded reading, the split is done. librdkafka
    /// does not say which topic, so with several topics a split at that
    /// number is done only once its position passed the end it had at
    /// start. Its clock stops after its last batch ([`Self::decode_taken`]).
    fn at_end(&mut self, partition: i32) {
        if !self.bounded {
            return;
        }
        let one_topic = self.topics.len() == 1;
        let positions = (!one_topic)
            .then(|| self.consumer.position().ok())
            .flatten();
        for (id, s) in self.splits.iter_mut().enumerate() {
            if s.partition != partition || s.done {
                continue;
            }
            let passed_stop = || {
                let fetched = positions
                    .as_ref()
                    .and_then(|p| p.find_partition(&s.topic, s.partition))
                    .and_then(|e| e.offset().to_raw());
                let at = s.taken_next.or(s.next_offset).max(fetched);
                s.stop.is_some_and(|stop| at.is_some_and(|a| a >= stop))
            };
            if one_topic || passed_stop() {
                s.done = true;
                self.ended.push(id);
            }
        }
    }

    /// Decodes every split's buffered payloads into a batch each, queued
    /// with the watermark it moves to.
    fn decode_taken(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for id in 0..self.splits.len() {
            let Some(next) = self.splits[id].taken_next.take() else {
                continue;
            };
            let split = &self.splits[id];
            let (batch, kept) = split.buffer.decode(
                &self.decoder,
                &self.bad_data,
                &self.metrics,
                &mut dead,
                |offset| {
                    serde_json::json!({
                        "topic": split.topic,
                        "partition": split.partition,
                        "offset": offset,
                    })
                },
                |offset| {
                    format!(
                        "topic '{}' partition {} offset {offset}",
                        split.topic, split.partition
                    )
                },
            )?;
            let batch = self.metadata.attach(
                batch,
                kept.as_deref(),
                &split.topic,
                split.partition,
                split.buffer.positions(),
                &split.records,
            )?;
            let wm = match self.clocks.as_mut() {
                Some(c) if batch.num_rows() > 0 => c.on_batch(self.splits[id].clock, &batch)?,
                _ => None,
            };
            self.pending.push(Message::Batch(batch), Some((id, next)));
            if let Some(wm) = wm {
                self.pending.push(Message::Watermark(wm), None);
            }
            self.splits[id].buffer.clear();
            self.splits[id].records.clear();
        }
        // Splits read to their end no longer hold the watermark back.
        for id in std::mem::take(&mut self.ended) {
            let clock = self.splits[id].clock;
            if let Some(wm) = self.clocks.as_mut().and_then(|c| c.finish(clock)) {
                self.pending.push(Message::Watermark(wm), None);
            }
        }
        match &self.dead_letters {
            Some(d) if !dead.is_empty() => d.send(&dead, &self.metrics),
            Some(_) => Ok(()),
            None => self
                .bad_data
                .send_to_dead_letter(self.subtask, &dead, &self.metrics),
        }
    }
}

/// Whether a consumer error is one librdkafka recovers from by itself,
/// reconnecting with backoff and fetching on from where it was (a broker
/// gone away or not resolved for now): the source waits for it, as Flink's
/// does, instead of restarting the job.
fn client_recovers(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(Code::BrokerTransportFailure | Code::AllBrokersDown | Code::Resolve)
    )
}

/// Where each split has read to, counting only rows returned: a split
/// found at its end is done only once none of its rows wait in `pending`.
fn split_positions(splits: &[Split], pending: &Ready<(usize, i64)>) -> Vec<SplitPosition> {
    let queued: Vec<usize> = pending.advances().map(|(id, _)| *id).collect();
    splits
        .iter()
        .enumerate()
        .map(|(id, s)| SplitPosition {
            split: split_name(&s.topic, s.partition),
            position: s.next_offset.map(|o| vec![o as u64]).unwrap_or_default(),
            // Rows taken but not decoded (a barrier came while the batch
            // lingered) are not returned yet either.
            done: s.done && !queued.contains(&id) && s.taken_next.is_none(),
        })
        .collect()
}

/// Where a partition without a checkpointed offset starts; `Stored` for
/// a timestamp, which is looked up before assigning.
fn start_offset(startup: Startup) -> Offset {
    match startup {
        Startup::Earliest => Offset::Beginning,
        Startup::Latest => Offset::End,
        Startup::GroupOffsets | Startup::Timestamp(_) => Offset::Stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::record_batch::RecordBatch;

    #[test]
    fn partitions_go_round_the_subtasks_from_a_start_the_topic_picks() {
        for parallelism in 1..=5 {
            let mut per_subtask = vec![0; parallelism];
            for p in 0..(parallelism as i32 * 2) {
                per_subtask[owner("bids", p, parallelism)] += 1;
            }
            assert!(per_subtask.iter().all(|n| *n == 2), "{per_subtask:?}");
        }
        // Consecutive partitions go to consecutive subtasks.
        let first = owner("bids", 0, 4);
        assert_eq!(owner("bids", 1, 4), (first + 1) % 4);
        assert_eq!(split_name("bids", 3), "bids:3");
    }

    #[test]
    fn a_split_at_its_end_is_done_only_once_its_rows_are_returned() {
        let split = |partition, next_offset: Option<i64>| Split {
            topic: "bids".into(),
            partition,
            next_offset,
            stop: None,
            done: true,
            clock: 0,
            buffer: Payloads::default(),
            records: Records::default(),
            taken_next: None,
        };
        let splits = vec![split(0, Some(7)), split(1, None)];
        let batch = RecordBatch::new_empty(Arc::new(arrow::datatypes::Schema::empty()));
        let mut pending = Ready::new(None);
        pending.push(Message::Batch(batch), Some((0, 9)));
        let positions = split_positions(&splits, &pending);
        assert_eq!(positions[0].position, vec![7]);
        assert!(!positions[0].done, "rows up to offset 9 are still queued");
        assert!(positions[1].done && positions[1].position.is_empty());
        let pending = Ready::new(None);
        assert!(split_positions(&splits, &pending)[0].done);
        // Messages taken before the end and not yet decoded: not done.
        let mut lingering = splits;
        lingering[0].taken_next = Some(9);
        let positions = split_positions(&lingering, &pending);
        assert!(!positions[0].done, "rows up to offset 9 are still buffered");
        assert_eq!(positions[0].position, vec![7]);
    }
}
