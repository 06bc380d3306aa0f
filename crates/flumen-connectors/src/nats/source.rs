//! Reads a JetStream stream. Each split (the whole stream, or one of the
//! `subject`s it captures) is read through a durable pull consumer of its
//! own by the subtask a fixed rule names, so a checkpoint's positions find
//! their owner at any parallelism. A split's position is the stream
//! sequence after the last message returned; a job resuming from a
//! checkpoint makes the consumer again from there. Messages are
//! acknowledged (all up to one, `AckPolicy::All`) once the checkpoint that
//! covers them completes; without checkpoints as they are read. A message
//! delivered again (after `ack_wait`) is recognised by its sequence and
//! skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, Context};
use async_nats::{Client, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use flumen_runtime::{JobMetrics, Source, SourceFactory, TaskContext, WatermarkStrategy};
use flumen_state::checkpoint::SplitPosition;
use flumen_types::{DEFAULT_BATCH_SIZE, FlumenError, Message, Result};
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};

use super::Server;
use crate::TableSpec;
use crate::bad_data::{BadData, DeadLetters};
use crate::clocks::SplitClocks;
use crate::format::{MessageFormat, PayloadDecoder};
use crate::metadata::{MetadataColumns, Records};
use crate::payloads::Payloads;
use crate::ready::{Ready, next_within};
use crate::throttle::Throttle;

/// How long a subtask waits for a message before it looks at idleness.
const TICK: Duration = Duration::from_millis(100);

/// How long a delivered message may stay unacknowledged before the server
/// delivers it again (it is then skipped): longer than checkpoints take.
const ACK_WAIT: Duration = Duration::from_secs(600);

/// Where a job without a checkpoint starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    ConsumerPosition,
    Earliest,
    Latest,
}

/// Makes one NATS source per subtask.
pub struct NatsSourceFactory {
    table: String,
    server: Server,
    stream: String,
    /// The subjects read, each a split; empty: the whole stream, one split.
    subjects: Vec<String>,
    consumer: String,
    decoder: Arc<PayloadDecoder>,
    /// The columns filled from messages' metadata.
    metadata: Arc<MetadataColumns>,
    startup: Startup,
    bounded: bool,
    bad_data: BadData,
    idle_after: Option<Duration>,
    rows_per_second: Option<u64>,
    /// How long a partial batch waits for more messages.
    linger: Duration,
}

impl NatsSourceFactory {
    /// Checks the options and that the stream exists.
    pub async fn try_new(spec: &TableSpec, projection: Option<&[usize]>) -> Result<Self> {
        let options = &spec.options;
        let server = Server::from_options(options)?;
        let stream = options
            .get("stream")
            .ok_or_else(|| FlumenError::config("a NATS source needs option 'stream'"))?
            .to_string();
        let subjects = options.list("subject");
        let format = MessageFormat::parse(options, "format")?;
        let projection: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..spec.schema.fields().len()).collect(),
        };
        let (metadata, payload) = MetadataColumns::new(spec, &projection)?;
        let decoder = PayloadDecoder::try_new(format, &payload.schema, &payload.projection)?;
        let startup = match options.choice(
            "scan.startup.mode",
            &["consumer-position", "earliest", "latest"],
            "consumer-position",
        )? {
            "earliest" => Startup::Earliest,
            "latest" => Startup::Latest,
            _ => Startup::ConsumerPosition,
        };
        let bounded =
            options.choice("scan.bounded.mode", &["unbounded", "latest"], "unbounded")? == "latest";
        let idle_after = options
            .duration("idle_timeout")?
            .unwrap_or(Duration::from_secs(10));
        let consumer = options
            .get("consumer.name")
            .map_or_else(|| format!("flumen-{}", spec.name), str::to_string);
        if consumer.contains(['.', '*', '>', ' ']) {
            return Err(FlumenError::config(format!(
                "option consumer.name: '{consumer}' may not contain '.', '*', '>' or spaces"
            )));
        }
        let consumer = instance_name(consumer);
        let client = server.connect().await?;
        get_stream(&jetstream::new(client), &stream, server.address()).await?;
        Ok(NatsSourceFactory {
            table: spec.name.clone(),
            server,
            stream,
            subjects,
            consumer,
            decoder: Arc::new(decoder),
            metadata: Arc::new(metadata),
            startup,
            bounded,
            bad_data: BadData::parse(options)?,
            idle_after: (!idle_after.is_zero()).then_some(idle_after),
            rows_per_second: options.parse::<u64>("rows_per_second")?,
            linger: options
                .duration("linger")?
                .unwrap_or(crate::options::DEFAULT_LINGER),
        })
    }

    /// The splits: the stream, or one per subject.
    fn splits(&self) -> Vec<(String, Option<String>)> {
        if self.subjects.is_empty() {
            return vec![(self.stream.clone(), None)];
        }
        self.subjects
            .iter()
            .map(|s| (format!("{}:{s}", self.stream), Some(s.clone())))
            .collect()
    }

    fn source(
        &self,
        ctx: &TaskContext,
        watermarks: Option<&Arc<dyn WatermarkStrategy>>,
    ) -> NatsSource {
        let mut clocks = watermarks.map(|w| SplitClocks::new(w, 0, self.idle_after));
        let splits = self
            .splits()
            .into_iter()
            .filter(|(name, _)| crate::split_owner(name, ctx.parallelism) == ctx.subtask)
            .map(|(name, subject)| {
                let consumer = match &subject {
                    Some(s) => format!(
                        "{}-{:08x}",
                        self.consumer,
                        twox_hash::XxHash64::oneshot(0, s.as_bytes()) as u32
                    ),
                    None => self.consumer.clone(),
                };
                Split {
                    name,
                    subject,
                    consumer,
                    next_sequence: None,
                    opened: false,
                    done: false,
                    clock: clocks.as_mut().map_or(0, |c| c.add()),
                    buffer: Payloads::default(),
                    records: Records::default(),
                    taken_next: None,
                }
            })
            .collect();
        NatsSource {
            server: self.server.clone(),
            stream: self.stream.clone(),
            decoder: self.decoder.clone(),
            metadata: self.metadata.clone(),
            startup: self.startup,
            bounded: self.bounded,
            bad_data: self.bad_data.clone(),
            metrics: ctx.metrics.clone(),
            subtask: ctx.subtask,
            checkpoints: ctx.first_checkpoint.is_some(),
            splits,
            client: None,
            opened: false,
            messages: SelectAll::new(),
            restored: None,
            pending: Ready::new(Throttle::new(self.rows_per_second, ctx.parallelism)),
            acks: BTreeMap::new(),
            clocks,
            ended: Vec::new(),
            idle_sent: false,
            linger: self.linger,
            dead: Vec::new(),
        }
    }
}

impl SourceFactory for NatsSourceFactory {
    fn describe(&self) -> String {
        format!(
            "nats stream {}{}{}",
            self.stream,
            if self.subjects.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.subjects.join(";"))
            },
            if self.bounded { ", bounded" } else { "" }
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(self.source(ctx, None)))
    }

    /// Watermarks per split, the minimum over the active ones.
    fn create_with_watermarks(
        &self,
        ctx: &TaskContext,
        watermarks: &Arc<dyn WatermarkStrategy>,
    ) -> Result<Option<Box<dyn Source>>> {
        Ok(Some(Box::new(self.source(ctx, Some(watermarks)))))
    }
}

impl std::fmt::Debug for NatsSourceFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsSourceFactory({})", self.table)
    }
}

/// `name` for the first source of a process that asks for it, then
/// `name-2`, `name-3`, …: a job that reads a table in several statements
/// has a source (and consumers) for each, and planning the same SQL again
/// names them the same.
fn instance_name(name: String) -> String {
    static TAKEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut unique = name.clone();
    let mut n = 1;
    while taken.contains(&unique) {
        n += 1;
        unique = format!("{name}-{n}");
    }
    taken.push(unique.clone());
    unique
}

/// The stream `name`; one that does not exist is an error naming it.
async fn get_stream(
    context: &Context,
    name: &str,
    servers: &str,
) -> Result<jetstream::stream::Stream> {
    use async_nats::jetstream::context::GetStreamErrorKind as Kind;
    context.get_stream(name).await.map_err(|e| match e.kind() {
        Kind::JetStream(js) if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
            FlumenError::config(format!("NATS stream '{name}' does not exist at {servers}"))
        }
        Kind::Request => FlumenError::transient(
            format!("NATS servers at {servers}: no JetStream answer for stream '{name}'"),
            e,
        ),
        _ => FlumenError::config(format!("NATS stream '{name}' at {servers}: {e}")),
    })
}

/// Acknowledges everything up to the message `reply` belongs to.
async fn ack(client: Option<&Client>, servers: &str, reply: Subject) -> Result<()> {
    let Some(client) = client else {
        return Ok(());
    };
    client
        .publish(reply, Bytes::from_static(b"+ACK"))
        .await
        .map_err(|e| FlumenError::transient(format!("acknowledging to NATS at {servers}"), e))
}

/// One split this subtask reads.
struct Split {
    /// Its name in checkpoints: `stream` or `stream:subject`.
    name: String,
    subject: Option<String>,
    /// Its durable consumer.
    consumer: String,
    /// The stream sequence after the last message returned.
    next_sequence: Option<u64>,
    /// Whether its consumer is made and its messages flow (or it is done).
    opened: bool,
    done: bool,
    clock: usize,
    /// Messages taken but not yet decoded, by stream sequence.
    buffer: Payloads,
    /// Their subjects, timestamps and headers, when a column reads them.
    records: Records,
    /// Sequence after the last message taken, and its reply subject.
    taken_next: Option<(u64, Subject)>,
}

/// Each split's position: the sequence after the rows returned, and
/// whether it is done, which it is not while rows of it are `queued` or
/// taken but not decoded (a barrier came while the batch lingered).
fn split_positions(splits: &[Split], queued: &[usize]) -> Vec<SplitPosition> {
    splits
        .iter()
        .enumerate()
        .map(|(id, s)| SplitPosition {
            split: s.name.clone(),
            position: s.next_sequence.map(|n| vec![n]).unwrap_or_default(),
            done: s.done && !queued.contains(&id) && s.taken_next.is_none(),
        })
        .collect()
}

/// Where a split's returned rows reach: the sequence after them and the
/// subject that acknowledges them.
type Advance = (usize, u64, Subject);

type Delivery = (usize, std::result::Result<jetstream::Message, String>);

struct NatsSource {
    server: Server,
    stream: String,
    decoder: Arc<PayloadDecoder>,
    /// The columns filled from messages' metadata.
    metadata: Arc<MetadataColumns>,
    startup: Startup,
    bounded: bool,
    bad_data: BadData,
    metrics: Arc<JobMetrics>,
    subtask: usize,
    /// Whether acknowledgements wait for checkpoints.
    checkpoints: bool,
    splits: Vec<Split>,
    client: Option<Client>,
    /// Whether every split is open.
    opened: bool,
    messages: SelectAll<BoxStream<'static, Delivery>>,
    /// Positions of the checkpoint resumed from, by split name.
    restored: Option<Vec<SplitPosition>>,
    /// Messages ready to return, each with where its split moves to.
    pending: Ready<Advance>,
    /// Per checkpoint (`u64::MAX`: the one to come), the last
    /// acknowledgement subject of each split.
    acks: BTreeMap<u64, Vec<(usize, Subject)>>,
    clocks: Option<SplitClocks>,
    ended: Vec<usize>,
    /// Whether it said it is idle, having no split.
    idle_sent: bool,
    /// How long a partial batch waits for more messages.
    linger: Duration,
    /// Dead letters decoded and not yet stored in their subject
    /// (`dead_letter.subject`).
    dead: Vec<String>,
}

#[async_trait]
impl Source for NatsSource {
    async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some((msg, advance)) = self.pending.pop().await {
                if let Some((id, next, reply)) = advance {
                    self.splits[id].next_sequence = Some(next);
                    if self.checkpoints {
                        self.last_reply(id, reply);
                    } else {
                        ack(self.client.as_ref(), self.server.address(), reply).await?;
                    }
                }
                match msg {
                    Some(msg) => return Ok(Some(msg)),
                    None => continue,
                }
            }
            if self.splits.iter().any(|s| s.taken_next.is_some()) {
                self.decode_taken()?;
                self.publish_dead_letters().await?;
                continue;
            }
            if !self.opened {
                self.open().await?;
            }
            if self.bounded && self.splits.iter().all(|s| s.done) {
                return Ok(None);
            }
            // A subtask without splits holds no watermark back.
            if self.splits.is_empty() && !self.idle_sent {
                self.idle_sent = true;
                return Ok(Some(Message::Idle));
            }
            // With no split to read, `next` would end at once: only wait.
            let first = tokio::select! {
                m = self.messages.next(), if !self.messages.is_empty() => m,
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
            let deadline = (!self.linger.is_zero())
                .then(|| tokio::time::Instant::from_std(arrived) + self.linger);
            let mut taken = 1;
            while taken < DEFAULT_BATCH_SIZE {
                let Some(m) = next_within(&mut self.messages, deadline).await else {
                    break;
                };
                self.take(m)?;
                taken += 1;
            }
            self.decode_taken()?;
            self.publish_dead_letters().await?;
        }
    }

    fn ready_span(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        self.pending.ready_span()
    }

    fn snapshot_position(&mut self, checkpoint: u64) -> Result<Vec<SplitPosition>> {
        // What was returned since the last checkpoint is acknowledged once
        // this one completes.
        if let Some(replies) = self.acks.remove(&u64::MAX) {
            self.acks.insert(checkpoint, replies);
        }
        let queued: Vec<usize> = self.pending.advances().map(|(id, _, _)| *id).collect();
        Ok(split_positions(&self.splits, &queued))
    }

    fn restore_position(&mut self, positions: &[SplitPosition]) -> Result<()> {
        self.restored = Some(positions.to_vec());
        Ok(())
    }

    async fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        let later = self.acks.split_off(&(checkpoint + 1));
        let covered = std::mem::replace(&mut self.acks, later);
        // Acknowledging a split's last message acknowledges all before it,
        // so only the newest subject of each split is sent.
        let mut newest: Vec<(usize, Subject)> = Vec::new();
        for replies in covered.into_values().rev() {
            for (id, reply) in replies {
                if !newest.iter().any(|(i, _)| *i == id) {
                    newest.push((id, reply));
                }
            }
        }
        for (_, reply) in newest {
            ack(self.client.as_ref(), self.server.address(), reply).await?;
        }
        Ok(())
    }
}

impl NatsSource {
    /// Notes `reply` as the newest acknowledgement of split `id` since the
    /// last checkpoint.
    fn last_reply(&mut self, id: usize, reply: Subject) {
        let replies = self.acks.entry(u64::MAX).or_default();
        replies.retain(|(i, _)| *i != id);
        replies.push((id, reply));
    }

    /// Connects and makes each split's consumer: from the checkpoint's
    /// sequence when resuming, else as the startup mode says. Safe to
    /// cancel: a split counts as open only once its messages flow, and a
    /// split opened again gets its consumer made again.
    async fn open(&mut self) -> Result<()> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => self.client.insert(self.server.connect().await?).clone(),
        };
        let context = jetstream::new(client);
        let stream = get_stream(&context, &self.stream, self.server.address()).await?;
        for id in 0..self.splits.len() {
            let split = &mut self.splits[id];
            if split.opened {
                continue;
            }
            let restored = self
                .restored
                .as_ref()
                .map(|r| r.iter().find(|p| p.split == split.name));
            let policy = match restored {
                Some(Some(p)) => {
                    split.done = p.done;
                    match p.position.first() {
                        Some(&next) => {
                            split.next_sequence = Some(next);
                            Some(DeliverPolicy::ByStartSequence {
                                start_sequence: next,
                            })
                        }
                        None => Some(DeliverPolicy::All),
                    }
                }
                // A split the checkpoint does not know is new: read it all.
                Some(None) => Some(DeliverPolicy::All),
                None => match self.startup {
                    Startup::ConsumerPosition => None,
                    Startup::Earliest => Some(DeliverPolicy::All),
                    Startup::Latest => Some(DeliverPolicy::New),
                },
            };
            if !split.done {
                let consumer = open_consumer(&stream, split, policy, self.server.address()).await?;
                let info = consumer.cached_info();
                if self.bounded && info.num_pending == 0 && info.num_ack_pending == 0 {
                    split.done = true;
                } else {
                    let messages = consumer
                        .stream()
                        .max_messages_per_batch(DEFAULT_BATCH_SIZE)
                        .heartbeat(Duration::from_secs(5))
                        .expires(Duration::from_secs(30))
                        .messages()
                        .await
                        .map_err(|e| {
                            FlumenError::transient(
                                format!(
                                    "reading NATS stream '{}' at {}",
                                    self.stream,
                                    self.server.address()
                                ),
                                e,
                            )
                        })?;
                    self.messages.push(
                        messages
                            .map(move |m| (id, m.map_err(|e| e.to_string())))
                            .boxed(),
                    );
                }
            }
            let split = &mut self.splits[id];
            split.opened = true;
            if split.done
                && let Some(c) = self.clocks.as_mut()
            {
                c.finish(split.clock);
            }
        }
        self.opened = true;
        Ok(())
    }

    /// Buffers one message, unless it is one delivered again.
    fn take(&mut self, (id, message): Delivery) -> Result<()> {
        let message = message.map_err(|e| {
            FlumenError::transient(
                format!(
                    "reading NATS stream '{}' at {}",
                    self.stream,
                    self.server.address()
                ),
                std::io::Error::other(e),
            )
        })?;
        let info = message.info().map_err(|e| {
            FlumenError::internal(format!("a JetStream message without its metadata: {e}"))
        })?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let stored_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
        let split = &mut self.splits[id];
        let seen = split
            .taken_next
            .as_ref()
            .map(|(n, _)| *n)
            .or(split.next_sequence);
        if split.done || seen.is_some_and(|n| sequence < n) {
            return Ok(());
        }
        let Some(reply) = message.message.reply.clone() else {
            return Err(FlumenError::internal(
                "a JetStream message without a subject to acknowledge it",
            ));
        };
        split.buffer.push(&message.message.payload, sequence as i64);
        if let Some(wanted) = self.metadata.per_record() {
            split.records.push_nats(
                message.message.subject.as_str(),
                stored_ms,
                message.message.headers.as_ref(),
                wanted,
            );
        }
        split.taken_next = Some((sequence + 1, reply));
        if self.bounded && pending == 0 {
            split.done = true;
            self.ended.push(id);
        }
        Ok(())
    }

    /// Decodes every split's buffered payloads into a batch each, queued
    /// with the watermark it moves to.
    fn decode_taken(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for id in 0..self.splits.len() {
            let Some((next, reply)) = self.splits[id].taken_next.take() else {
                continue;
            };
            let split = &self.splits[id];
            let (batch, kept) = split.buffer.decode(
                &self.decoder,
                &self.bad_data,
                &self.metrics,
                &mut dead,
                |sequence| {
                    serde_json::json!({
                        "stream": self.stream,
                        "split": split.name,
                        "sequence": sequence,
                    })
                },
                |sequence| format!("NATS stream '{}' sequence {sequence}", self.stream),
            )?;
            let batch = self.metadata.attach(
                batch,
                kept.as_deref(),
                &self.stream,
                0,
                split.buffer.positions(),
                &split.records,
            )?;
            let wm = match self.clocks.as_mut() {
                Some(c) if batch.num_rows() > 0 => c.on_batch(self.splits[id].clock, &batch)?,
                _ => None,
            };
            self.pending
                .push(Message::Batch(batch), Some((id, next, reply)));
            if let Some(wm) = wm {
                self.pending.push(Message::Watermark(wm), None);
            }
            self.splits[id].buffer.clear();
            self.splits[id].records.clear();
        }
        for id in std::mem::take(&mut self.ended) {
            let clock = self.splits[id].clock;
            if let Some(wm) = self.clocks.as_mut().and_then(|c| c.finish(clock)) {
                self.pending.push(Message::Watermark(wm), None);
            }
        }
        if let BadData::DeadLetter(DeadLetters::Subject(_)) = &self.bad_data {
            self.dead.extend(dead);
            return Ok(());
        }
        self.bad_data
            .send_to_dead_letter(self.subtask, &dead, &self.metrics)
    }

    /// Publishes the dead letters waiting for `dead_letter.subject`, each
    /// acknowledged by its stream before the rows after it are returned
    /// (at least once: cut off, the rest are published again).
    async fn publish_dead_letters(&mut self) -> Result<()> {
        let BadData::DeadLetter(DeadLetters::Subject(subject)) = &self.bad_data else {
            return Ok(());
        };
        if self.dead.is_empty() {
            return Ok(());
        }
        let client = match &self.client {
            Some(c) => c.clone(),
            None => self.client.insert(self.server.connect().await?).clone(),
        };
        let context = jetstream::new(client);
        let failed = |e: &dyn std::fmt::Display| {
            FlumenError::io(format!(
                "publishing dead letters to subject '{subject}' at {}: {e}",
                self.server.address()
            ))
        };
        while let Some(record) = self.dead.first() {
            context
                .publish(subject.clone(), record.clone().into())
                .await
                .map_err(|e| failed(&e))?
                .await
                .map_err(|e| failed(&e))?;
            self.dead.remove(0);
            self.metrics.add_bad_records_dead_lettered(1);
        }
        Ok(())
    }
}

/// Deletes the consumer `name` if there is one.
async fn delete_consumer(
    stream: &jetstream::stream::Stream,
    name: &str,
) -> std::result::Result<(), async_nats::jetstream::stream::ConsumerError> {
    use async_nats::jetstream::stream::ConsumerErrorKind;
    match stream.delete_consumer(name).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            ConsumerErrorKind::JetStream(js)
                if js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
            {
                Ok(())
            }
            _ => Err(e),
        },
    }
}

/// The durable consumer of `split`: made again delivering from `policy`,
/// or (`None`) the existing one as it is, made reading everything when
/// there is none.
async fn open_consumer(
    stream: &jetstream::stream::Stream,
    split: &Split,
    policy: Option<DeliverPolicy>,
    servers: &str,
) -> Result<jetstream::consumer::Consumer<pull::Config>> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        FlumenError::config(format!(
            "NATS consumer '{}' of stream '{}' at {servers}: {what}: {e}",
            split.consumer,
            stream.cached_info().config.name
        ))
    };
    if policy.is_some() {
        delete_consumer(stream, &split.consumer)
            .await
            .map_err(|e| failed("cannot be deleted to be made again", &e))?;
    } else if let Ok(consumer) = stream.get_consumer(&split.consumer).await {
        return Ok(consumer);
    }
    let config = pull::Config {
        durable_name: Some(split.consumer.clone()),
        description: Some(format!("flumen source of {}", split.name)),
        deliver_policy: policy.unwrap_or(DeliverPolicy::All),
        ack_policy: AckPolicy::All,
        ack_wait: ACK_WAIT,
        max_ack_pending: -1,
        filter_subject: split.subject.clone().unwrap_or_default(),
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|e| failed("cannot be made", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A split at its end is done only once every row of it is returned:
    /// none queued, none taken and waiting to be decoded.
    #[test]
    fn a_split_at_its_end_is_done_only_once_its_rows_are_returned() {
        let split = |taken_next: Option<(u64, Subject)>| Split {
            name: "bids".into(),
            subject: None,
            consumer: "flumen-bids".into(),
            next_sequence: Some(7),
            opened: true,
            done: true,
            clock: 0,
            buffer: Payloads::default(),
            records: Records::default(),
            taken_next,
        };
        let splits = vec![split(None), split(Some((9, Subject::from("reply"))))];
        let positions = split_positions(&splits, &[]);
        assert!(positions[0].done);
        assert!(
            !positions[1].done,
            "rows up to sequence 9 are still buffered"
        );
        assert_eq!(positions[1].position, vec![7]);
        assert!(!split_positions(&splits, &[0])[0].done, "rows queued");
    }
}
