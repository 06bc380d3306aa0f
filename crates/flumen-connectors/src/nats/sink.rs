//! Publishes rows to a NATS subject that a JetStream stream captures.
//!
//! `exactly-once`: a subtask keeps the rows of a checkpoint interval, seals
//! them at the barrier and stores them in the checkpoint itself
//! ([`Sink::snapshot_state`]); when the checkpoint completes it publishes
//! them, each with the message id `<sink>-<checkpoint>-<subtask>-<row>`. A
//! run that died after a checkpoint but before (or while) publishing its
//! rows leaves them in that checkpoint: the run resuming from it publishes
//! them again under the same ids, and the stream drops those it already
//! has (within its `duplicate_window`, two minutes by default). Rows reach
//! readers one checkpoint interval late. `at-least-once`: published at once,
//! every acknowledgement awaited at each barrier. `none`: published without
//! acknowledgements.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray, RecordBatch, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_nats::jetstream::context::{Context, PublishAckFuture};
use async_nats::jetstream::{self, message::PublishMessage};
use async_trait::async_trait;
use bytes::Bytes;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_state::{KeyGroup, KeyGroupRange, StateSnapshot};
use flumen_types::{FlumenError, Result};

use super::Server;
use crate::TableSpec;
use crate::format::{MessageFormat, check_raw, encode};
use crate::guarantee::Guarantee;

/// Acknowledgements awaited at once before more are published: below the
/// 5,000 the client lets be in flight (more would wait for ever, since a
/// permit comes back only when its acknowledgement is awaited or dropped).
const MAX_IN_FLIGHT: usize = 4096;

/// Makes one NATS publisher per subtask.
pub struct NatsSinkFactory {
    shared: Arc<Shared>,
}

struct Shared {
    server: Server,
    subject: String,
    /// The stream made to capture `subject` when none does.
    stream: Option<String>,
    format: MessageFormat,
    guarantee: Guarantee,
    /// Names this sink's message ids apart from other sinks' and jobs'.
    unique: String,
}

impl NatsSinkFactory {
    /// Checks the options against the rows written.
    pub fn try_new(spec: &TableSpec, input: SchemaRef, unique: &str) -> Result<Self> {
        let options = &spec.options;
        let subject = options
            .get("subject")
            .ok_or_else(|| FlumenError::config("a NATS sink needs option 'subject'"))?;
        if subject.contains(['*', '>', ';', ' ']) || subject.is_empty() {
            return Err(FlumenError::config(format!(
                "option subject: a NATS sink publishes to one subject without wildcards, not '{subject}'"
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
        Ok(NatsSinkFactory {
            shared: Arc::new(Shared {
                server: Server::from_options(options)?,
                subject: subject.to_string(),
                stream: options.get("stream").map(str::to_string),
                format,
                guarantee: Guarantee::parse(options)?,
                unique: unique.to_string(),
            }),
        })
    }
}

#[async_trait]
impl SinkFactory for NatsSinkFactory {
    fn describe(&self) -> String {
        let s = &self.shared;
        format!(
            "nats {} ({:?}, {})",
            s.subject,
            s.format,
            s.guarantee.name()
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Sink>> {
        let staging =
            self.shared.guarantee == Guarantee::ExactlyOnce && ctx.first_checkpoint.is_some();
        Ok(Box::new(NatsSink {
            shared: self.shared.clone(),
            subtask: ctx.subtask as u32,
            range: ctx.key_groups.range,
            staging,
            context: None,
            in_flight: Vec::new(),
            open: Vec::new(),
            sealed: BTreeMap::new(),
        }))
    }
}

struct NatsSink {
    shared: Arc<Shared>,
    subtask: u32,
    /// The key groups this subtask owns: sealed rows are stored under the
    /// first, so a restore at any parallelism gives them one owner.
    range: KeyGroupRange,
    /// Exactly-once with checkpoints on: rows wait for their checkpoint.
    staging: bool,
    context: Option<Context>,
    in_flight: Vec<PublishAckFuture>,
    /// Rows of the interval now open.
    open: Vec<Bytes>,
    /// Rows sealed at a barrier, not yet published: by (checkpoint, the
    /// subtask that wrote them), in order.
    sealed: BTreeMap<(u64, u32), Vec<Bytes>>,
}

#[async_trait]
impl Sink for NatsSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let payloads = encode(&self.shared.format, &batch)?.into_payloads();
        if self.staging {
            self.open.extend(payloads);
            return Ok(());
        }
        let s = self.shared.clone();
        let context = self.context().await?;
        if s.guarantee == Guarantee::None {
            let client = context.client();
            for payload in payloads {
                client
                    .publish(s.subject.clone(), payload)
                    .await
                    .map_err(|e| publish_error(&s, e))?;
            }
            return Ok(());
        }
        for payload in payloads {
            let ack = context
                .publish(s.subject.clone(), payload)
                .await
                .map_err(|e| publish_error(&s, e))?;
            self.in_flight.push(ack);
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                self.confirm().await?;
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if self.shared.guarantee == Guarantee::None {
            if let Some(c) = &self.context {
                c.client()
                    .flush()
                    .await
                    .map_err(|e| publish_error(&self.shared, e))?;
            }
            return Ok(());
        }
        self.confirm().await
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<String>> {
        if self.staging {
            if !self.open.is_empty() {
                let rows = std::mem::take(&mut self.open);
                self.sealed.insert((checkpoint, self.subtask), rows);
            }
            return Ok(Vec::new());
        }
        self.finish().await?;
        Ok(Vec::new())
    }

    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        let later = self.sealed.split_off(&(checkpoint + 1, 0));
        let due = std::mem::replace(&mut self.sealed, later);
        if due.is_empty() {
            return Ok(());
        }
        let s = self.shared.clone();
        let context = self.context().await?;
        for ((sealed_at, subtask), rows) in &due {
            for (i, payload) in rows.iter().enumerate() {
                let message = PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(format!("{}-{sealed_at}-{subtask}-{i}", s.unique));
                let ack = context
                    .send_publish(s.subject.clone(), message)
                    .await
                    .map_err(|e| publish_error(&s, e))?;
                self.in_flight.push(ack);
                if self.in_flight.len() >= MAX_IN_FLIGHT {
                    self.confirm().await?;
                }
            }
        }
        self.confirm().await
    }

    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::default();
        let rows: usize = self.sealed.values().map(Vec::len).sum();
        if rows == 0 {
            return Ok(snapshot);
        }
        let mut checkpoints = Vec::with_capacity(rows);
        let mut subtasks = Vec::with_capacity(rows);
        let mut indexes = Vec::with_capacity(rows);
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(rows);
        for ((checkpoint, subtask), sealed) in &self.sealed {
            for (i, payload) in sealed.iter().enumerate() {
                checkpoints.push(*checkpoint);
                subtasks.push(*subtask);
                indexes.push(i as u32);
                payloads.push(payload);
            }
        }
        let batch = RecordBatch::try_new(
            sealed_schema(),
            vec![
                Arc::new(UInt64Array::from(checkpoints)),
                Arc::new(UInt32Array::from(subtasks)),
                Arc::new(UInt32Array::from(indexes)),
                Arc::new(BinaryArray::from(payloads)),
            ],
        )?;
        let key_groups: Vec<KeyGroup> = vec![self.range.start; rows];
        snapshot.add(0, &batch, &key_groups)?;
        Ok(snapshot)
    }

    fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        let Some(batch) = snapshot.rows(0, self.range)? else {
            return Ok(());
        };
        if batch.schema().fields() != sealed_schema().fields() {
            return Err(FlumenError::state(format!(
                "sealed rows stored as {:?}, expected {:?}",
                batch.schema(),
                sealed_schema()
            )));
        }
        let column = |i: usize| batch.column(i);
        let (Some(checkpoints), Some(subtasks), Some(indexes), Some(payloads)) = (
            column(0).as_any().downcast_ref::<UInt64Array>(),
            column(1).as_any().downcast_ref::<UInt32Array>(),
            column(2).as_any().downcast_ref::<UInt32Array>(),
            column(3).as_any().downcast_ref::<BinaryArray>(),
        ) else {
            return Err(FlumenError::state("sealed rows of another layout"));
        };
        let mut rows: BTreeMap<(u64, u32), Vec<(u32, Bytes)>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            rows.entry((checkpoints.value(i), subtasks.value(i)))
                .or_default()
                .push((indexes.value(i), Bytes::copy_from_slice(payloads.value(i))));
        }
        for (key, mut sealed) in rows {
            sealed.sort_by_key(|(i, _)| *i);
            // Ids come from positions: rows must be whole from 0.
            if sealed
                .iter()
                .enumerate()
                .any(|(i, (at, _))| *at as usize != i)
            {
                return Err(FlumenError::state(format!(
                    "sealed rows of checkpoint {} subtask {} are not whole",
                    key.0, key.1
                )));
            }
            self.sealed
                .insert(key, sealed.into_iter().map(|(_, p)| p).collect());
        }
        Ok(())
    }
}

impl NatsSink {
    /// The JetStream context, connected at first use; a subject that no
    /// stream captures is an error naming it.
    async fn context(&mut self) -> Result<Context> {
        if let Some(c) = &self.context {
            return Ok(c.clone());
        }
        let s = &self.shared;
        let context = jetstream::new(s.server.connect().await?);
        if context.stream_by_subject(s.subject.clone()).await.is_err() {
            let Some(stream) = &s.stream else {
                return Err(FlumenError::config(format!(
                    "no JetStream stream at {} captures subject '{}' (option stream names one to make)",
                    s.server.address(),
                    s.subject
                )));
            };
            context
                .create_stream(jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![s.subject.clone()],
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    FlumenError::config(format!(
                        "making NATS stream '{stream}' for subject '{}' at {}: {e}",
                        s.subject,
                        s.server.address()
                    ))
                })?;
        }
        Ok(self.context.insert(context).clone())
    }

    /// Waits for every acknowledgement in flight.
    async fn confirm(&mut self) -> Result<()> {
        let acks = std::mem::take(&mut self.in_flight);
        let acks = acks.into_iter().map(std::future::IntoFuture::into_future);
        for ack in futures::future::join_all(acks).await {
            ack.map_err(|e| publish_error(&self.shared, e))?;
        }
        Ok(())
    }
}

/// How sealed rows are stored in a checkpoint.
fn sealed_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("checkpoint", DataType::UInt64, false),
        Field::new("subtask", DataType::UInt32, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("payload", DataType::Binary, false),
    ]))
}

fn publish_error(s: &Shared, e: impl std::error::Error + Send + Sync + 'static) -> FlumenError {
    FlumenError::transient(
        format!(
            "publishing to NATS subject '{}' at {}",
            s.subject,
            s.server.address()
        ),
        e,
    )
}
