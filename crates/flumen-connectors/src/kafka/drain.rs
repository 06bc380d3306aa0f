//! Takes the messages a Kafka consumer already holds many at a time,
//! through librdkafka's batch consume: polling one message at a time (what
//! rdkafka's stream does) reads the clock twice and wraps each message in
//! an event, ~10 % of a JSON source's CPU; a batch reads it once.
//!
//! rdkafka has no safe wrapper for batch consume, so this module holds the
//! only `unsafe` code of the Kafka source, each block saying why it holds.

use std::ffi::{CStr, c_void};
use std::sync::Arc;

use rdkafka::Message as _;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;

/// A header's name and its value, if it has one.
pub(crate) type Header<'a> = (String, Option<&'a [u8]>);

/// What the source reads of a consumed message, whether it came one at a
/// time from the stream or in a drained batch.
pub(crate) trait Record {
    /// The topic's name.
    fn topic(&self) -> &str;
    /// The partition the message was read from.
    fn partition(&self) -> i32;
    /// The message's offset in its partition.
    fn offset(&self) -> i64;
    /// The value; `None` for a tombstone.
    fn payload(&self) -> Option<&[u8]>;
    /// The key, if any.
    fn key(&self) -> Option<&[u8]>;
    /// The record's timestamp in epoch milliseconds, if it has one.
    fn timestamp_ms(&self) -> Option<i64>;
    /// The headers, in order, each name with its value if it has one;
    /// `None` when the message has none.
    fn headers(&self) -> Option<Vec<Header<'_>>>;
}

impl Record for BorrowedMessage<'_> {
    fn topic(&self) -> &str {
        rdkafka::Message::topic(self)
    }

    fn partition(&self) -> i32 {
        rdkafka::Message::partition(self)
    }

    fn offset(&self) -> i64 {
        rdkafka::Message::offset(self)
    }

    fn payload(&self) -> Option<&[u8]> {
        rdkafka::Message::payload(self)
    }

    fn key(&self) -> Option<&[u8]> {
        rdkafka::Message::key(self)
    }

    fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp().to_millis()
    }

    fn headers(&self) -> Option<Vec<Header<'_>>> {
        use rdkafka::message::Headers as _;
        rdkafka::Message::headers(self)
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value)).collect())
    }
}

/// The consumer's message queue, held together with its consumer so the
/// consumer outlives it.
pub(crate) struct ConsumerQueue {
    queue: *mut rdsys::rd_kafka_queue_t,
    /// Messages of the current drain, destroyed before the next.
    held: Vec<*mut rdsys::rd_kafka_message_t>,
    _consumer: Arc<StreamConsumer>,
}

// SAFETY: librdkafka's queues and messages may be used from any thread;
// the handle and the held messages are owned by this value alone.
unsafe impl Send for ConsumerQueue {}

impl ConsumerQueue {
    /// The queue `consumer`'s fetched messages arrive on.
    pub(crate) fn new(consumer: Arc<StreamConsumer>) -> ConsumerQueue {
        // SAFETY: the client pointer is valid while `consumer` lives, and
        // the queue reference taken here is released in `drop`.
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        ConsumerQueue {
            queue,
            held: Vec::new(),
            _consumer: consumer,
        }
    }

    /// Gives `each` every message (or consumer error) ready now, up to
    /// `max`, without waiting; returns how many it gave.
    pub(crate) fn drain<E>(
        &mut self,
        max: usize,
        mut each: impl FnMut(Result<RawRecord<'_>, KafkaError>) -> Result<(), E>,
    ) -> Result<usize, E> {
        self.held.resize(max, std::ptr::null_mut());
        // SAFETY: `held` has room for `max` pointers; with a timeout of 0
        // the call returns at once with the messages already queued.
        let got = unsafe {
            rdsys::rd_kafka_consume_batch_queue(self.queue, 0, self.held.as_mut_ptr(), max)
        };
        self.held.truncate(usize::try_from(got).unwrap_or(0));
        let given = self.held.iter().try_for_each(|&message| {
            // SAFETY: librdkafka returned a valid message, alive until
            // `release` destroys it below.
            let record = RawRecord(unsafe { &*message });
            each(match record.0.err {
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(record),
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                    Err(KafkaError::PartitionEOF(record.0.partition))
                }
                e => Err(KafkaError::MessageConsumption(RDKafkaErrorCode::from(e))),
            })
        });
        let count = self.held.len();
        self.release();
        given.map(|()| count)
    }

    /// Destroys the messages of the drain.
    fn release(&mut self) {
        for message in self.held.drain(..) {
            // SAFETY: each was returned by librdkafka and destroyed once.
            unsafe { rdsys::rd_kafka_message_destroy(message) };
        }
    }
}

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        self.release();
        // SAFETY: releases the reference `new` took, once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) };
    }
}

/// A message of a drained batch, borrowed from its [`ConsumerQueue`].
pub(crate) struct RawRecord<'a>(&'a rdsys::rd_kafka_message_t);

/// The `len` bytes at `ptr`, or `None` for a null pointer.
///
/// # Safety
/// A non-null `ptr` must point to `len` bytes that live as long as `'a`.
unsafe fn bytes<'a>(ptr: *const c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: as the caller promises.
    (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

impl Record for RawRecord<'_> {
    fn topic(&self) -> &str {
        // SAFETY: a consumed message's topic handle lives as long as the
        // message, and its name is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(self.0.rkt)) };
        // Kafka topic names are ASCII letters, digits, `.`, `_` and `-`
        // (brokers refuse others), so the name is always UTF-8.
        name.to_str().unwrap_or_default()
    }

    fn partition(&self) -> i32 {
        self.0.partition
    }

    fn offset(&self) -> i64 {
        self.0.offset
    }

    fn payload(&self) -> Option<&[u8]> {
        // SAFETY: the payload is `len` bytes owned by the message.
        unsafe { bytes(self.0.payload, self.0.len) }
    }

    fn key(&self) -> Option<&[u8]> {
        // SAFETY: the key is `key_len` bytes owned by the message.
        unsafe { bytes(self.0.key, self.0.key_len) }
    }

    fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: reads the message's own timestamp field.
        let ms = unsafe { rdsys::rd_kafka_message_timestamp(self.0, &mut kind) };
        (kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE).then_some(ms)
    }

    fn headers(&self) -> Option<Vec<Header<'_>>> {
        let mut headers = std::ptr::null_mut();
        let message = std::ptr::from_ref(self.0).cast_mut();
        // SAFETY: the headers belong to the message (parsed on first
        // access); a message without headers leaves the pointer null.
        let found = unsafe { rdsys::rd_kafka_message_headers(message, &mut headers) };
        let mut all = Vec::new();
        if found != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return None;
        }
        for i in 0.. {
            let (mut name, mut value, mut len) = (std::ptr::null(), std::ptr::null(), 0);
            // SAFETY: index `i` past the last header returns an error.
            let err = unsafe {
                rdsys::rd_kafka_header_get_all(headers, i, &mut name, &mut value, &mut len)
            };
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                break;
            }
            // SAFETY: the name is NUL-terminated and the value `len` bytes,
            // both owned by the message's headers.
            let name = unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned();
            all.push((name, unsafe { bytes(value, len) }));
        }
        Some(all)
    }
}
