//! Message metadata read into columns declared `METADATA [FROM 'key']`
//! (as in Flink): the payload is decoded into the other columns, and the
//! metadata columns are filled from each message: a Kafka record's topic,
//! partition, offset, timestamp, key and headers; a NATS JetStream
//! message's stream, subject, sequence, timestamp and headers.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray,
    TimestampMillisecondArray,
};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use flumen_types::{FlumenError, Result};

use crate::TableSpec;
use crate::options::OptionSpec;

/// The metadata a Kafka table can read, with the type it comes as.
pub(crate) const KAFKA_KEYS: &[OptionSpec] = &[
    OptionSpec::optional("topic", "VARCHAR: the record's topic"),
    OptionSpec::optional("partition", "INT: its partition"),
    OptionSpec::optional("offset", "BIGINT: its offset in the partition"),
    OptionSpec::optional(
        "timestamp",
        "TIMESTAMP(3): its timestamp (create or log-append time)",
    ),
    OptionSpec::optional(
        "key",
        "BYTES or VARCHAR: its key (null for records without one)",
    ),
    OptionSpec::optional(
        "headers",
        "VARCHAR: its headers as a JSON object of strings (null without headers)",
    ),
];

/// The metadata a NATS table can read, with the type it comes as.
pub(crate) const NATS_KEYS: &[OptionSpec] = &[
    OptionSpec::optional("stream", "VARCHAR: the JetStream stream"),
    OptionSpec::optional("subject", "VARCHAR: the message's subject"),
    OptionSpec::optional("sequence", "BIGINT: its stream sequence"),
    OptionSpec::optional("timestamp", "TIMESTAMP(3): when the stream stored it"),
    OptionSpec::optional(
        "headers",
        "VARCHAR: its headers as a JSON object of strings (a repeated header's last value; null without headers)",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    /// Kafka topic or NATS stream: the same for every message of a split.
    Topic,
    /// Kafka partition: the same for every message of a split.
    Partition,
    /// Kafka offset or NATS stream sequence: the message's position.
    Offset,
    Timestamp,
    Key,
    Headers,
    /// NATS subject.
    Subject,
}

impl Meta {
    fn parse(name: &str) -> Option<Meta> {
        Some(match name {
            "topic" | "stream" => Meta::Topic,
            "partition" => Meta::Partition,
            "offset" | "sequence" => Meta::Offset,
            "subject" => Meta::Subject,
            "timestamp" => Meta::Timestamp,
            "key" => Meta::Key,
            "headers" => Meta::Headers,
            _ => return None,
        })
    }

    /// The type the metadata comes as, before the cast to the column's.
    fn data_type(self) -> DataType {
        match self {
            Meta::Topic | Meta::Headers | Meta::Subject => DataType::Utf8,
            Meta::Partition => DataType::Int32,
            Meta::Offset => DataType::Int64,
            Meta::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            Meta::Key => DataType::Binary,
        }
    }
}

/// The metadata columns among a source's columns, and how the rest (the
/// payload's) are laid out.
pub(crate) struct MetadataColumns {
    /// (position among the source's columns, metadata, the column's type).
    fill: Vec<(usize, Meta, DataType)>,
    /// The source's columns.
    output: SchemaRef,
    /// What must be kept of each message, beside its payload.
    wanted: Wanted,
}

/// The per-message metadata some column reads: only that is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Wanted {
    timestamp: bool,
    key: bool,
    headers: bool,
    subject: bool,
}

/// What a source decodes its payloads into: the table's columns without
/// its metadata columns, and the projected ones among them.
pub(crate) struct PayloadColumns {
    pub(crate) schema: SchemaRef,
    pub(crate) projection: Vec<usize>,
}

impl MetadataColumns {
    /// The metadata columns of `spec` among its `projection`; each must
    /// cast from the metadata's type.
    pub(crate) fn new(spec: &TableSpec, projection: &[usize]) -> Result<(Self, PayloadColumns)> {
        let table = &spec.schema;
        let meta_of = |i: usize| {
            let name = table.field(i).name();
            spec.metadata
                .iter()
                .find(|(column, _)| column == name)
                .map(|(_, key)| key.as_str())
        };
        let mut fill = Vec::new();
        let mut payload = Vec::new();
        for (at, &i) in projection.iter().enumerate() {
            let Some(name) = meta_of(i) else {
                payload.push(i - (0..i).filter(|&c| meta_of(c).is_some()).count());
                continue;
            };
            let key = Meta::parse(name)
                .ok_or_else(|| FlumenError::config(format!("unknown metadata '{name}'")))?;
            let field = table.field(i);
            if !can_cast_types(&key.data_type(), field.data_type()) {
                return Err(FlumenError::config(format!(
                    "column '{}' ({}) cannot hold metadata '{name}', which is {}",
                    field.name(),
                    field.data_type(),
                    key.data_type()
                )));
            }
            fill.push((at, key, field.data_type().clone()));
        }
        let payload_fields: Vec<usize> = (0..table.fields().len())
            .filter(|&i| meta_of(i).is_none())
            .collect();
        let payload_schema = Arc::new(table.project(&payload_fields)?);
        let reads = |m: Meta| fill.iter().any(|(_, k, _)| *k == m);
        let wanted = Wanted {
            timestamp: reads(Meta::Timestamp),
            key: reads(Meta::Key),
            headers: reads(Meta::Headers),
            subject: reads(Meta::Subject),
        };
        Ok((
            MetadataColumns {
                fill,
                output: Arc::new(table.project(projection)?),
                wanted,
            },
            PayloadColumns {
                schema: payload_schema,
                projection: payload,
            },
        ))
    }

    /// What of each message must be kept beside its payload; `None` when
    /// nothing (the split's own topic, partition and offsets suffice).
    pub(crate) fn per_record(&self) -> Option<Wanted> {
        (self.wanted != Wanted::default()).then_some(self.wanted)
    }

    /// `payload` (one row per kept record) with the metadata columns put
    /// in: records `kept` (all when `None`) of `offsets` and `records`;
    /// `topic` and `partition` are the split's (a NATS split: its stream).
    pub(crate) fn attach(
        &self,
        payload: RecordBatch,
        kept: Option<&[usize]>,
        topic: &str,
        partition: i32,
        offsets: &[i64],
        records: &Records,
    ) -> Result<RecordBatch> {
        if self.fill.is_empty() {
            return Ok(payload);
        }
        let rows = payload.num_rows();
        let index = |r: usize| kept.map_or(r, |k| k[r]);
        let mut from_payload = payload.columns().iter();
        let mut filled = self.fill.iter().peekable();
        let mut columns = Vec::with_capacity(self.output.fields().len());
        for at in 0..self.output.fields().len() {
            let Some(&&(_, key, ref to)) = filled.peek().filter(|(p, _, _)| *p == at) else {
                columns.push(from_payload.next().cloned().ok_or_else(|| {
                    FlumenError::internal("a decoded batch with fewer columns than its schema")
                })?);
                continue;
            };
            filled.next();
            let column: ArrayRef = match key {
                Meta::Topic => Arc::new(StringArray::from(vec![topic; rows])),
                Meta::Partition => Arc::new(Int32Array::from(vec![partition; rows])),
                Meta::Offset => Arc::new(Int64Array::from_iter_values(
                    (0..rows).map(|r| offsets[index(r)]),
                )),
                Meta::Timestamp => Arc::new(TimestampMillisecondArray::from_iter(
                    (0..rows).map(|r| records.timestamps[index(r)]),
                )),
                Meta::Key => Arc::new(BinaryArray::from_iter(
                    (0..rows).map(|r| records.keys[index(r)].as_deref()),
                )),
                Meta::Headers => Arc::new(StringArray::from_iter(
                    (0..rows).map(|r| records.headers[index(r)].as_deref()),
                )),
                Meta::Subject => Arc::new(StringArray::from_iter(
                    (0..rows).map(|r| records.subjects[index(r)].as_deref()),
                )),
            };
            columns.push(cast(&column, to)?);
        }
        Ok(RecordBatch::try_new_with_options(
            self.output.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}

/// The timestamps, keys, headers and subjects of messages taken and not
/// yet decoded, beside their payloads (kept only when a column reads them).
#[derive(Default)]
pub(crate) struct Records {
    timestamps: Vec<Option<i64>>,
    keys: Vec<Option<Vec<u8>>>,
    headers: Vec<Option<String>>,
    subjects: Vec<Option<String>>,
}

impl Records {
    /// Keeps what `wanted` says of a Kafka record's metadata.
    pub(crate) fn push_kafka(&mut self, message: &impl crate::kafka::Record, wanted: Wanted) {
        self.timestamps
            .push(message.timestamp_ms().filter(|_| wanted.timestamp));
        self.keys
            .push(message.key().filter(|_| wanted.key).map(<[u8]>::to_vec));
        self.headers
            .push(message.headers().filter(|_| wanted.headers).map(|h| {
                headers_json(h.into_iter().map(|(key, value)| {
                    (key, value.map(|v| String::from_utf8_lossy(v).into_owned()))
                }))
            }));
        self.subjects.push(None);
    }

    /// Keeps what `wanted` says of a NATS message's metadata: its
    /// subject, when the stream stored it (epoch milliseconds) and its
    /// headers.
    pub(crate) fn push_nats(
        &mut self,
        subject: &str,
        stored_ms: i64,
        headers: Option<&async_nats::HeaderMap>,
        wanted: Wanted,
    ) {
        self.timestamps.push(wanted.timestamp.then_some(stored_ms));
        self.keys.push(None);
        self.headers
            .push(headers.filter(|_| wanted.headers).map(|h| {
                headers_json(
                    h.iter().map(|(name, values)| {
                        (name.to_string(), values.last().map(|v| v.to_string()))
                    }),
                )
            }));
        self.subjects
            .push(wanted.subject.then(|| subject.to_string()));
    }

    /// Empties it, keeping its memory.
    pub(crate) fn clear(&mut self) {
        self.timestamps.clear();
        self.keys.clear();
        self.headers.clear();
        self.subjects.clear();
    }
}

/// Headers as a JSON object of strings (null: a header without a value).
fn headers_json(headers: impl Iterator<Item = (String, Option<String>)>) -> String {
    let object: serde_json::Map<String, serde_json::Value> = headers
        .map(|(k, v)| {
            (
                k,
                v.map_or(serde_json::Value::Null, serde_json::Value::String),
            )
        })
        .collect();
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};

    fn schema_of(fields: Vec<Field>) -> SchemaRef {
        Arc::new(Schema::new(fields))
    }

    fn spec(metadata: &[(&str, &str)]) -> TableSpec {
        TableSpec {
            name: "t".into(),
            schema: schema_of(vec![
                Field::new("a", DataType::Int64, true),
                Field::new("off", DataType::Int64, true),
                Field::new("b", DataType::Utf8, true),
                Field::new("part", DataType::Utf8, true),
            ]),
            options: crate::Options::default(),
            primary_key: Vec::new(),
            metadata: metadata
                .iter()
                .map(|(c, k)| (c.to_string(), k.to_string()))
                .collect(),
        }
    }

    #[test]
    fn metadata_columns_are_filled_beside_the_payload_columns() {
        let spec = spec(&[("off", "offset"), ("part", "partition")]);
        let (meta, payload) = MetadataColumns::new(&spec, &[3, 0, 1, 2]).unwrap();
        assert_eq!(payload.projection, vec![0, 1]);
        assert_eq!(payload.schema.fields().len(), 2);
        assert_eq!(meta.per_record(), None);
        let decoded = RecordBatch::try_new(
            Arc::new(payload.schema.project(&payload.projection).unwrap()),
            vec![
                Arc::new(Int64Array::from(vec![7, 8])),
                Arc::new(StringArray::from(vec!["x", "y"])),
            ],
        )
        .unwrap();
        // Record 1 of 3 was malformed and dropped.
        let out = meta
            .attach(
                decoded,
                Some(&[0, 2]),
                "t",
                5,
                &[10, 11, 12],
                &Records::default(),
            )
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&[out])
            .unwrap()
            .to_string();
        assert!(text.contains("| 5    | 7 | 10  | x |"), "{text}");
        assert!(text.contains("| 5    | 8 | 12  | y |"), "{text}");
    }

    #[test]
    fn a_column_of_the_wrong_type_is_named() {
        let spec = spec(&[("off", "key")]);
        let err = MetadataColumns::new(&spec, &[0, 1]).err().unwrap();
        assert!(
            err.to_string()
                .contains("column 'off' (Int64) cannot hold metadata 'key'"),
            "{err}"
        );
    }
}
