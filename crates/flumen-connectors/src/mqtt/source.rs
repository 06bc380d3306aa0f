//! Reads MQTT topics. Each split (a topic filter) is read through a client
//! of its own by the subtask a fixed rule names; its event loop runs in a
//! task that forwards messages to the source through a bounded channel (a
//! slow job stops reading the socket, and the broker queues). With QoS 1
//! and checkpoints the client keeps a persistent session and acknowledges a
//! message only once the checkpoint that covers it completes: a message a
//! crash cut off is sent again by the broker to the restarted job (at
//! least once). Without checkpoints, or with QoS 0, messages are
//! acknowledged as they are returned.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flumen_runtime::{JobMetrics, Source, SourceFactory, TaskContext, WatermarkStrategy};
use flumen_state::checkpoint::SplitPosition;
use flumen_types::{DEFAULT_BATCH_SIZE, FlumenError, Message, Result};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Broker, has_wildcard, parse_qos};
use crate::TableSpec;
use crate::bad_data::BadData;
use crate::clocks::SplitClocks;
use crate::format::{MessageFormat, PayloadDecoder};
use crate::payloads::Payloads;
use crate::ready::Ready;
use crate::throttle::Throttle;

/// How long a subtask waits for a message before it looks at idleness.
const TICK: Duration = Duration::from_millis(100);

/// Messages on their way from the event loops to the source.
const CHANNEL: usize = DEFAULT_BATCH_SIZE;

/// Makes one MQTT source per subtask.
pub struct MqttSourceFactory {
    table: String,
    broker: Broker,
    /// The topic filters, each a split.
    topics: Vec<String>,
    qos: QoS,
    client_id: String,
    decoder: Arc<PayloadDecoder>,
    bad_data: BadData,
    idle_after: Option<Duration>,
    rows_per_second: Option<u64>,
    /// How long a partial batch waits for more messages.
    linger: Duration,
}

impl MqttSourceFactory {
    /// Checks the options and that the broker takes the credentials.
    pub async fn try_new(spec: &TableSpec, projection: Option<&[usize]>) -> Result<Self> {
        let options = &spec.options;
        let broker = Broker::from_options(options)?;
        let topics = options.required_list("topic")?;
        let format = MessageFormat::parse(options, "format")?;
        let projection: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..spec.schema.fields().len()).collect(),
        };
        let decoder = PayloadDecoder::try_new(format, &spec.schema, &projection)?;
        let idle_after = options
            .duration("idle_timeout")?
            .unwrap_or(Duration::from_secs(10));
        let client_id = options
            .get("client.id")
            .map_or_else(|| format!("flumen-{}", spec.name), str::to_string);
        broker.check(&format!("{client_id}-check")).await?;
        Ok(MqttSourceFactory {
            table: spec.name.clone(),
            broker,
            topics,
            qos: parse_qos(options)?,
            client_id,
            decoder: Arc::new(decoder),
            bad_data: BadData::parse(options)?,
            idle_after: (!idle_after.is_zero()).then_some(idle_after),
            rows_per_second: options.parse::<u64>("rows_per_second")?,
            linger: options
                .duration("linger")?
                .unwrap_or(crate::options::DEFAULT_LINGER),
        })
    }

    /// The client id reading `topic`: the table's own with one topic, else
    /// one per topic.
    fn client_id(&self, topic: &str) -> String {
        if self.topics.len() == 1 {
            return self.client_id.clone();
        }
        format!(
            "{}-{:08x}",
            self.client_id,
            twox_hash::XxHash64::oneshot(0, topic.as_bytes()) as u32
        )
    }

    fn source(
        &self,
        ctx: &TaskContext,
        watermarks: Option<&Arc<dyn WatermarkStrategy>>,
    ) -> MqttSource {
        let mut clocks = watermarks.map(|w| SplitClocks::new(w, 0, self.idle_after));
        let splits = self
            .topics
            .iter()
            .filter(|t| crate::split_owner(t, ctx.parallelism) == ctx.subtask)
            .map(|topic| Split {
                topic: topic.clone(),
                client_id: self.client_id(topic),
                client: None,
                connection: 0,
                received: 0,
                clock: clocks.as_mut().map_or(0, |c| c.add()),
                buffer: Payloads::default(),
                taken: Vec::new(),
            })
            .collect();
        let checkpoints = ctx.first_checkpoint.is_some();
        MqttSource {
            broker: self.broker.clone(),
            qos: self.qos,
            decoder: self.decoder.clone(),
            bad_data: self.bad_data.clone(),
            metrics: ctx.metrics.clone(),
            subtask: ctx.subtask,
            persistent: checkpoints && self.qos == QoS::AtLeastOnce,
            splits,
            incoming: None,
            loops: Vec::new(),
            pending: Ready::new(Throttle::new(self.rows_per_second, ctx.parallelism)),
            returned: Vec::new(),
            covered: BTreeMap::new(),
            to_ack: VecDeque::new(),
            clocks,
            idle_sent: false,
            linger: self.linger,
        }
    }
}

impl SourceFactory for MqttSourceFactory {
    fn describe(&self) -> String {
        format!(
            "mqtt {} topic {} qos {}",
            self.broker.address(),
            self.topics.join(";"),
            self.qos as u8
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

impl std::fmt::Debug for MqttSourceFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MqttSourceFactory({})", self.table)
    }
}

/// A QoS 1 message to acknowledge: its split, the connection it came on
/// (an acknowledgement on a later connection of a new session would be
/// taken for another message's) and its packet id.
#[derive(Debug, Clone, Copy)]
struct Ack {
    split: usize,
    connection: u32,
    pkid: u16,
}

/// What an event loop tells its source.
enum Incoming {
    /// The client (re)connected: connection number `1`, `2`, ….
    Connected(usize, u32),
    /// A message on connection number `u32`.
    Message(usize, u32, Publish),
    /// The split cannot go on.
    Failed(FlumenError),
}

/// One topic filter this subtask reads.
struct Split {
    topic: String,
    client_id: String,
    client: Option<AsyncClient>,
    /// The connection messages now come on.
    connection: u32,
    /// Messages received so far by this run: a message's position in
    /// dead-letter records.
    received: u64,
    clock: usize,
    /// Messages taken but not yet decoded.
    buffer: Payloads,
    /// Their acknowledgements.
    taken: Vec<Ack>,
}

struct MqttSource {
    broker: Broker,
    qos: QoS,
    decoder: Arc<PayloadDecoder>,
    bad_data: BadData,
    metrics: Arc<JobMetrics>,
    subtask: usize,
    /// Whether sessions persist and acknowledgements wait for checkpoints.
    persistent: bool,
    splits: Vec<Split>,
    incoming: Option<mpsc::Receiver<Incoming>>,
    loops: Vec<JoinHandle<()>>,
    /// Batches ready to return, each with its messages' acknowledgements.
    pending: Ready<Vec<Ack>>,
    /// Acknowledgements of the messages returned since the last barrier.
    returned: Vec<Ack>,
    /// Per checkpoint, the acknowledgements it covers.
    covered: BTreeMap<u64, Vec<Ack>>,
    /// Acknowledgements due, not yet handed to their client.
    to_ack: VecDeque<Ack>,
    clocks: Option<SplitClocks>,
    idle_sent: bool,
    /// How long a partial batch waits for more messages.
    linger: Duration,
}

impl Drop for MqttSource {
    fn drop(&mut self) {
        for l in &self.loops {
            l.abort();
        }
    }
}

#[async_trait]
impl Source for MqttSource {
    async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            self.send_acks();
            if let Some((msg, acks)) = self.pending.pop().await {
                if let Some(acks) = acks {
                    if self.persistent {
                        self.returned.extend(acks);
                    } else {
                        self.to_ack.extend(acks);
                    }
                }
                match msg {
                    Some(msg) => return Ok(Some(msg)),
                    None => continue,
                }
            }
            // Messages taken before a cancel (mid-linger) go first.
            if self.splits.iter().any(|s| !s.buffer.positions().is_empty()) {
                self.decode_taken()?;
                continue;
            }
            if self.incoming.is_none() {
                self.start();
            }
            // A subtask without splits holds no watermark back.
            if self.splits.is_empty() {
                if !self.idle_sent {
                    self.idle_sent = true;
                    return Ok(Some(Message::Idle));
                }
                std::future::pending::<()>().await;
            }
            let incoming = self.incoming.as_mut().expect("started above");
            let first = tokio::select! {
                m = incoming.recv() => m,
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
            let deadline = (!self.linger.is_zero())
                .then(|| tokio::time::Instant::from_std(arrived) + self.linger);
            let mut taken = 1;
            while taken < DEFAULT_BATCH_SIZE {
                let Some(incoming) = self.incoming.as_mut() else {
                    break;
                };
                let next = match (incoming.try_recv(), deadline) {
                    (Ok(m), _) => Some(m),
                    (Err(_), Some(d)) => tokio::time::timeout_at(d, incoming.recv())
                        .await
                        .ok()
                        .flatten(),
                    (Err(_), None) => None,
                };
                let Some(m) = next else { break };
                self.take(m)?;
                taken += 1;
            }
            self.decode_taken()?;
        }
    }

    fn ready_span(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        self.pending.ready_span()
    }

    /// MQTT has no position to rewind to: a persistent session keeps what
    /// was not acknowledged. What was returned since the last barrier is
    /// acknowledged once this checkpoint completes.
    fn snapshot_position(&mut self, checkpoint: u64) -> Result<Vec<SplitPosition>> {
        if !self.returned.is_empty() {
            self.covered
                .insert(checkpoint, std::mem::take(&mut self.returned));
        }
        Ok(Vec::new())
    }

    async fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        let later = self.covered.split_off(&(checkpoint + 1));
        for acks in std::mem::replace(&mut self.covered, later).into_values() {
            self.to_ack.extend(acks);
        }
        self.send_acks();
        Ok(())
    }
}

impl MqttSource {
    /// Makes each split's client and starts its event loop.
    fn start(&mut self) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        for (id, split) in self.splits.iter_mut().enumerate() {
            let (client, events) = self.broker.client(&split.client_id, !self.persistent, true);
            split.client = Some(client.clone());
            self.loops.push(tokio::spawn(drive(
                id,
                split.topic.clone(),
                self.qos,
                self.broker.clone(),
                client,
                events,
                tx.clone(),
            )));
        }
        self.incoming = Some(rx);
    }

    /// Hands due acknowledgements to their clients, in order, as far as
    /// their request queues take them (never waiting, so `next` stays safe
    /// to cancel); one from an earlier connection is dropped, as the
    /// broker sends that message again.
    fn send_acks(&mut self) {
        while let Some(ack) = self.to_ack.front().copied() {
            let split = &self.splits[ack.split];
            if ack.connection == split.connection
                && let Some(client) = &split.client
            {
                let mut publish = Publish::new("", QoS::AtLeastOnce, Vec::new());
                publish.pkid = ack.pkid;
                if client.try_ack(&publish).is_err() {
                    return;
                }
            }
            self.to_ack.pop_front();
        }
    }

    fn take(&mut self, incoming: Incoming) -> Result<()> {
        match incoming {
            Incoming::Connected(id, connection) => self.splits[id].connection = connection,
            Incoming::Failed(e) => return Err(e),
            Incoming::Message(id, connection, publish) => {
                let split = &mut self.splits[id];
                split.received += 1;
                split.buffer.push(&publish.payload, split.received as i64);
                if publish.qos == QoS::AtLeastOnce {
                    split.taken.push(Ack {
                        split: id,
                        connection,
                        pkid: publish.pkid,
                    });
                }
            }
        }
        Ok(())
    }

    /// Decodes every split's buffered payloads into a batch each, queued
    /// with the watermark it moves to.
    fn decode_taken(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for id in 0..self.splits.len() {
            let split = &self.splits[id];
            if split.buffer.positions().is_empty() {
                continue;
            }
            let (batch, _) = split.buffer.decode(
                &self.decoder,
                &self.bad_data,
                &self.metrics,
                &mut dead,
                |received| {
                    serde_json::json!({
                        "broker": self.broker.address(),
                        "topic": split.topic,
                        "message": received,
                    })
                },
                |received| {
                    format!(
                        "MQTT topic '{}' at {}, message {received} of this run",
                        split.topic,
                        self.broker.address()
                    )
                },
            )?;
            let wm = match self.clocks.as_mut() {
                Some(c) if batch.num_rows() > 0 => c.on_batch(split.clock, &batch)?,
                _ => None,
            };
            let acks = std::mem::take(&mut self.splits[id].taken);
            self.pending.push(Message::Batch(batch), Some(acks));
            if let Some(wm) = wm {
                self.pending.push(Message::Watermark(wm), None);
            }
            self.splits[id].buffer.clear();
        }
        self.bad_data
            .send_to_dead_letter(self.subtask, &dead, &self.metrics)
    }
}

/// Runs the event loop of split `id`'s client: subscribes to `topic` on
/// each connection whose session the broker did not keep, forwards
/// messages, and reconnects with backoff when the connection drops, until
/// the source is gone or the broker stays away. The loop keeps polling
/// while the source is busy (the client sends acknowledgements only while
/// polled), holding what the channel does not take: at QoS 1 the broker
/// sends at most 65,535 unacknowledged messages, which bounds that; at QoS
/// 0, which has no such bound, it waits for the source once
/// [`CHANNEL`] messages wait.
async fn drive(
    id: usize,
    topic: String,
    qos: QoS,
    broker: Broker,
    client: AsyncClient,
    mut events: EventLoop,
    tx: mpsc::Sender<Incoming>,
) {
    let mut connection = 0;
    let mut waiting: VecDeque<Incoming> = VecDeque::new();
    let mut failures = 0;
    let mut delay = Duration::from_millis(100);
    loop {
        let incoming = match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connection += 1;
                failures = 0;
                delay = Duration::from_millis(100);
                if !ack.session_present && client.try_subscribe(topic.clone(), qos).is_err() {
                    Some(Incoming::Failed(FlumenError::internal(
                        "an MQTT client's request queue is full right after it connected",
                    )))
                } else {
                    Some(Incoming::Connected(id, connection))
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Some(Incoming::Message(id, connection, p)),
            Ok(Event::Incoming(Packet::SubAck(ack)))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure)) =>
            {
                Some(Incoming::Failed(FlumenError::config(format!(
                    "MQTT broker at {} refused the subscription to '{topic}'{}",
                    broker.address(),
                    if has_wildcard(&topic) {
                        " (is the filter well formed?)"
                    } else {
                        ""
                    }
                ))))
            }
            Ok(_) => None,
            Err(e) => {
                failures += 1;
                match broker.failure(&e, failures) {
                    Some(err) => Some(Incoming::Failed(err)),
                    None => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        None
                    }
                }
            }
        };
        if let Some(incoming) = incoming {
            let failed = matches!(incoming, Incoming::Failed(_));
            waiting.push_back(incoming);
            if failed {
                // The source takes what came before, then the failure.
                for incoming in waiting {
                    if tx.send(incoming).await.is_err() {
                        break;
                    }
                }
                return;
            }
        }
        while let Some(incoming) = waiting.pop_front() {
            match tx.try_send(incoming) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(incoming)) => {
                    if qos == QoS::AtMostOnce && waiting.len() >= CHANNEL {
                        if tx.send(incoming).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    waiting.push_front(incoming);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}
