//! Publishes each row as one message to an MQTT topic. Each subtask has a
//! client whose event loop runs in a task of its own and counts what the
//! broker confirmed (QoS 1: its acknowledgements; QoS 0: what was written
//! to the socket). At a barrier and at the end the sink waits until every
//! message published before is confirmed, so with QoS 1 a completed
//! checkpoint never leaves a row behind (at least once: a restart may
//! publish again what followed it). A dropped connection is made again
//! with backoff, and the client sends again what was not acknowledged.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_types::{FlumenError, Result};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Broker, has_wildcard, parse_qos};
use crate::TableSpec;
use crate::format::{MessageFormat, check_raw, encode};

/// Makes one MQTT sink per subtask.
pub struct MqttSinkFactory {
    shared: Arc<Shared>,
}

struct Shared {
    broker: Broker,
    topic: String,
    qos: QoS,
    retain: bool,
    format: MessageFormat,
    /// The prefix of the clients' ids.
    client_id: String,
    /// Names this sink's clients apart from other sinks' and jobs'.
    unique: String,
}

impl MqttSinkFactory {
    /// Checks the options against the rows written.
    pub fn try_new(spec: &TableSpec, input: SchemaRef, unique: &str) -> Result<Self> {
        let options = &spec.options;
        let topic = options.required("topic")?;
        if topic.is_empty() || has_wildcard(topic) || topic.contains(';') {
            return Err(FlumenError::config(format!(
                "option topic: an MQTT sink publishes to one topic without wildcards, not '{topic}'"
            )));
        }
        let format = MessageFormat::parse(options, "format")?;
        if format.is_raw() {
            check_raw(
                "format",
                &input,
                &(0..input.fields().len()).collect::<Vec<_>>(),
            )?;
        }
        format.check_writes("format", &input)?;
        Ok(MqttSinkFactory {
            shared: Arc::new(Shared {
                broker: Broker::from_options(options)?,
                topic: topic.to_string(),
                qos: parse_qos(options)?,
                retain: options.parse::<bool>("retain")?.unwrap_or(false),
                format,
                client_id: options
                    .get("client.id")
                    .map_or_else(|| format!("flumen-{}", spec.name), str::to_string),
                unique: unique.to_string(),
            }),
        })
    }
}

#[async_trait]
impl SinkFactory for MqttSinkFactory {
    fn describe(&self) -> String {
        let s = &self.shared;
        format!(
            "mqtt {} topic {} ({:?}, qos {})",
            s.broker.address(),
            s.topic,
            s.format,
            s.qos as u8
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Sink>> {
        let s = &self.shared;
        Ok(Box::new(MqttSink {
            shared: self.shared.clone(),
            client_id: format!(
                "{}-{:08x}-{}",
                s.client_id,
                twox_hash::XxHash64::oneshot(0, s.unique.as_bytes()) as u32,
                ctx.subtask
            ),
            client: None,
            event_loop: None,
            confirmed: None,
            published: 0,
        }))
    }
}

/// What an event loop reports: messages the broker confirmed, and why it
/// gave up, if it did.
#[derive(Clone, Default)]
struct Progress {
    confirmed: u64,
    failed: Option<Failure>,
}

/// An event loop's end, as the job's error: a refusal is the user's to fix,
/// anything else may pass.
#[derive(Clone)]
struct Failure {
    config: bool,
    message: String,
}

impl Failure {
    fn error(&self) -> FlumenError {
        if self.config {
            FlumenError::config(self.message.clone())
        } else {
            FlumenError::io(self.message.clone())
        }
    }
}

struct MqttSink {
    shared: Arc<Shared>,
    client_id: String,
    client: Option<AsyncClient>,
    event_loop: Option<JoinHandle<()>>,
    confirmed: Option<watch::Receiver<Progress>>,
    /// Messages published so far.
    published: u64,
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        if let Some(l) = &self.event_loop {
            l.abort();
        }
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let client = self.client().clone();
        let s = &self.shared;
        for payload in encode(&s.format, &batch)?.into_payloads() {
            if client
                .publish_bytes(s.topic.clone(), s.qos, s.retain, payload)
                .await
                .is_err()
            {
                return Err(self.failure());
            }
            self.published += 1;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.flush().await?;
        if let Some(client) = &self.client {
            // The messages are confirmed; a lost goodbye loses nothing.
            let _ = client.disconnect().await;
        }
        Ok(())
    }

    /// Waits until the broker confirmed every message published before the
    /// barrier.
    async fn pre_commit(&mut self, _checkpoint: u64) -> Result<Vec<String>> {
        self.flush().await?;
        Ok(Vec::new())
    }
}

impl MqttSink {
    /// The client, made (and its event loop started) on first use.
    fn client(&mut self) -> &AsyncClient {
        if self.client.is_none() {
            let (client, events) = self.shared.broker.client(&self.client_id, true, false);
            let (tx, rx) = watch::channel(Progress::default());
            self.event_loop = Some(tokio::spawn(drive(
                self.shared.broker.clone(),
                self.shared.qos,
                events,
                tx,
            )));
            self.confirmed = Some(rx);
            self.client = Some(client);
        }
        self.client.as_ref().expect("made above")
    }

    /// Why publishing stopped: the event loop's failure.
    fn failure(&self) -> FlumenError {
        self.confirmed
            .as_ref()
            .and_then(|rx| rx.borrow().failed.clone())
            .map_or_else(
                || {
                    FlumenError::internal(format!(
                        "the MQTT client of {} stopped",
                        self.shared.broker.address()
                    ))
                },
                |f| f.error(),
            )
    }

    /// Waits until every message published so far is confirmed.
    async fn flush(&mut self) -> Result<()> {
        let Some(rx) = self.confirmed.as_mut() else {
            return Ok(());
        };
        loop {
            {
                let progress = rx.borrow_and_update();
                if let Some(f) = &progress.failed {
                    return Err(f.error());
                }
                if progress.confirmed >= self.published {
                    return Ok(());
                }
            }
            if rx.changed().await.is_err() {
                return Err(self.failure());
            }
        }
    }
}

/// Runs a sink client's event loop: counts confirmed messages and
/// reconnects with backoff until the broker stays away or refuses.
async fn drive(broker: Broker, qos: QoS, mut events: EventLoop, tx: watch::Sender<Progress>) {
    let mut failures = 0;
    let mut delay = Duration::from_millis(100);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                delay = Duration::from_millis(100);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => {
                tx.send_modify(|p| p.confirmed += 1);
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                tx.send_modify(|p| p.confirmed += 1);
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                if let Some(err) = broker.failure(&e, failures) {
                    let config = matches!(err, FlumenError::Config(_));
                    tx.send_modify(|p| {
                        p.failed = Some(Failure {
                            config,
                            message: err.to_string(),
                        })
                    });
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
