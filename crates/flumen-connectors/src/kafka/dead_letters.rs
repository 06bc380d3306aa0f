//! Dead letters of a Kafka source written to a topic of the same brokers
//! (`dead_letter.topic`): each malformed record as a JSON message with its
//! topic, partition, offset, error and bytes. Sent as found and flushed at
//! every checkpoint barrier and at the end of a bounded read, so a record
//! whose position a checkpoint covers has reached the topic (at least once).

use std::time::Duration;

use flumen_runtime::JobMetrics;
use flumen_types::{FlumenError, Result};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};

use super::kafka_error;
use super::sink::{Deliveries, KafkaProducer};

/// How long a flush waits for the brokers.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// A producer of one source subtask's dead letters.
pub(super) struct DeadLetterTopic {
    producer: KafkaProducer,
    topic: String,
    brokers: String,
}

impl DeadLetterTopic {
    /// A producer for `topic` with the source's client properties.
    pub(super) fn new(config: &ClientConfig, topic: &str, brokers: &str) -> Result<Self> {
        let producer = config
            .create_with_context(Deliveries::default())
            .map_err(|e| kafka_error(format!("creating a producer for {brokers}"), e))?;
        Ok(DeadLetterTopic {
            producer,
            topic: topic.to_string(),
            brokers: brokers.to_string(),
        })
    }

    /// Sends `records` (JSON) and counts them.
    pub(super) fn send(&self, records: &[String], metrics: &JobMetrics) -> Result<()> {
        for record in records {
            let mut message = BaseRecord::<(), str>::to(&self.topic).payload(record.as_str());
            loop {
                match self.producer.send(message) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), m)) => {
                        message = m;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(self.error(e)),
                }
            }
        }
        metrics.add_bad_records_dead_lettered(records.len());
        self.check()
    }

    /// Waits until every dead letter sent is stored, or fails naming the topic.
    pub(super) fn flush(&self) -> Result<()> {
        self.producer
            .flush(FLUSH_TIMEOUT)
            .map_err(|e| self.error(e))?;
        self.check()
    }

    fn check(&self) -> Result<()> {
        match self.producer.context().take_failure() {
            Some(e) => Err(self.error(e)),
            None => Ok(()),
        }
    }

    fn error(&self, e: KafkaError) -> FlumenError {
        kafka_error(
            format!(
                "writing dead letters to topic '{}' at {}",
                self.topic, self.brokers
            ),
            e,
        )
    }
}
