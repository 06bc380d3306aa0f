//! The `kafka` connector: reads and writes topics of a Kafka-compatible
//! broker through librdkafka (rdkafka). Options follow Flink's Kafka
//! connector; `properties.*` pass through to librdkafka (security, SASL,
//! TLS, tuning). The source keeps its offsets in checkpoints; the sink
//! writes exactly once through transactions committed when a checkpoint
//! completes, or at least once.

mod dead_letters;
mod drain;
mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use flumen_runtime::{SinkFactory, SourceFactory};
use flumen_types::{FlumenError, Result};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

use crate::options::OptionSpec;
use crate::{Delivery, Options, TableSpec};

pub(crate) use drain::Record;
pub use sink::KafkaSinkFactory;
pub use source::KafkaSourceFactory;

/// The `kafka` connector (source and sink).
pub(crate) struct Kafka;

#[async_trait::async_trait]
impl crate::Connector for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn metadata(&self) -> &'static [OptionSpec] {
        crate::metadata::KAFKA_KEYS
    }
    fn writable_metadata(&self) -> &'static [&'static str] {
        &["headers", "timestamp"]
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    fn reads(&self) -> bool {
        true
    }
    fn formats_messages(&self) -> bool {
        true
    }
    /// Records are keyed by `key.fields`, else the primary key.
    fn upsert_key(&self, spec: &TableSpec) -> Vec<String> {
        crate::key_fields(spec)
    }
    fn delivery(&self) -> Option<Delivery> {
        Some(Delivery::ExactlyOnce)
    }
    async fn source(
        &self,
        spec: &TableSpec,
        projection: Option<&[usize]>,
    ) -> Result<Arc<dyn SourceFactory>> {
        Ok(Arc::new(
            KafkaSourceFactory::try_new(spec, projection).await?,
        ))
    }
    fn sink(
        &self,
        spec: &TableSpec,
        input: SchemaRef,
        unique: &str,
    ) -> Result<Arc<dyn SinkFactory>> {
        Ok(Arc::new(KafkaSinkFactory::try_new(spec, input, unique)?))
    }
}

/// Options of the `kafka` connector (named as Flink's).
pub(crate) const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "topic",
        "the topic read or written; a source reads several separated by ';'",
    ),
    OptionSpec::required(
        "properties.bootstrap.servers",
        "the brokers, host:port separated by ','",
    ),
    OptionSpec::optional(
        "properties.group.id",
        "source: the consumer group its offsets are committed to for monitoring (default flumen-<table>)",
    ),
    OptionSpec::optional(
        "properties.*",
        "any other librdkafka property, passed through (security.protocol, sasl.*, ssl.*, isolation.level, …)",
    ),
    OptionSpec::optional(
        "format",
        "json (default), csv, raw, avro, avro-confluent or debezium-json: the value of each message",
    ),
    OptionSpec::optional(
        "scan.startup.mode",
        "source, where a job without a checkpoint starts: group-offsets (default; earliest when the group has none), earliest-offset, latest-offset or timestamp",
    ),
    OptionSpec::optional(
        "scan.startup.timestamp-millis",
        "source, with scan.startup.mode = 'timestamp': epoch milliseconds of the first message read",
    ),
    OptionSpec::optional(
        "scan.bounded.mode",
        "source: unbounded (default) or latest-offset (read each partition until first caught up with its end, then end)",
    ),
    OptionSpec::optional(
        "scan.topic-partition-discovery.interval",
        "source: how often new partitions are looked for (default '10 s'; '0' turns it off)",
    ),
    crate::bad_data::OPTIONS[0],
    crate::bad_data::OPTIONS[1],
    OptionSpec::optional(
        "dead_letter.topic",
        "source, with bad_data = 'dead_letter': a topic of the same brokers that receives each malformed record, with its error and position, as a JSON message (instead of dead_letter.path)",
    ),
    crate::options::IDLE_TIMEOUT,
    crate::options::ALLOWED_LATENESS,
    crate::throttle::ROWS_PER_SECOND,
    crate::options::LINGER,
    OptionSpec::optional(
        "key.fields",
        "sink: columns written as the message key, separated by ';' (default: no key)",
    ),
    OptionSpec::optional(
        "key.format",
        "sink: json, csv, raw, avro, avro-confluent or debezium-json: the format of the key (default: as format; required with an Avro format)",
    ),
    OptionSpec::optional(
        "key.avro.schema",
        "sink, with key.format = 'avro': the key's Avro record schema (default: one from the key columns)",
    ),
    OptionSpec::optional(
        "key.avro-confluent.schema",
        "sink, with key.format = 'avro-confluent': the key's Avro record schema (default: one from the key columns)",
    ),
    OptionSpec::optional(
        "key.avro-confluent.schema-id",
        "sink, with key.format = 'avro-confluent': the schema id in each key's header",
    ),
    OptionSpec::optional(
        "sink.delivery-guarantee",
        "sink: exactly-once (transactions committed with checkpoints), at-least-once (default) or none",
    ),
    OptionSpec::optional(
        "sink.transactional-id-prefix",
        "sink, exactly-once: prefix of the producers' transactional ids (default flumen-<topic>-<job>)",
    ),
];

/// The client settings common to consumers and producers: the brokers, the
/// pass-through `properties.*`, and what flumen sets unless the user did.
fn client_config(options: &Options, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in options.with_prefix("properties.") {
        config.set(key, value);
    }
    config
}

/// The brokers, for messages.
fn brokers(options: &Options) -> &str {
    options
        .get("properties.bootstrap.servers")
        .unwrap_or_default()
}

/// How long a blocking client call (metadata, offsets, transactions) may
/// take before it fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed client call: retryable when the broker may come back or the
/// call may succeed on a second try, a user error when the request itself
/// is wrong (unknown topic, bad credentials, bad settings).
fn kafka_error(context: String, e: KafkaError) -> FlumenError {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let code = e.rdkafka_error_code();
    match code {
        Some(
            Code::UnknownTopicOrPartition
            | Code::UnknownTopic
            | Code::TopicAuthorizationFailed
            | Code::GroupAuthorizationFailed
            | Code::TransactionalIdAuthorizationFailed
            | Code::SaslAuthenticationFailed
            | Code::Authentication
            | Code::InvalidArgument
            | Code::InvalidConfig,
        ) => FlumenError::config(format!("{context}: {e}")),
        _ if matches!(e, KafkaError::ClientConfig(..)) => {
            FlumenError::config(format!("{context}: {e}"))
        }
        _ => FlumenError::transient(context, e),
    }
}
