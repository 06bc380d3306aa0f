//! Avro message payloads, through arrow-avro's vectorised decoder and
//! encoder: `avro` is a bare Avro binary record per message (Flink's
//! `avro`), `avro-confluent` the same record behind Confluent's wire-format
//! header (a zero byte, then the schema id as 4 big-endian bytes).
//!
//! The schema of the messages is the table's columns unless an option gives
//! one; a given schema is the writer's, and the table reads its fields by
//! name, so a table may declare some of them in any order.

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow_avro::reader::ReaderBuilder;
use arrow_avro::schema::{
    AvroSchema, Fingerprint, FingerprintAlgorithm, FingerprintStrategy, SCHEMA_METADATA_KEY,
    SchemaStore,
};
use arrow_avro::writer::WriterBuilder;
use arrow_avro::writer::format::{AvroBinaryFormat, AvroSoeFormat};
use flumen_types::{FlumenError, Result};

use crate::Options;

/// The options of the Avro formats (values; the Kafka key's are these
/// prefixed with `key.`).
pub(crate) const OPTIONS: &[crate::OptionSpec] = &[
    crate::OptionSpec::optional(
        "avro.schema",
        "with format = 'avro': the messages' Avro record schema as JSON (default: one from the table's columns)",
    ),
    crate::OptionSpec::optional(
        "avro-confluent.schema",
        "with format = 'avro-confluent': the Avro record schema the schema id stands for (default: one from the table's columns)",
    ),
    crate::OptionSpec::optional(
        "avro-confluent.schema-id",
        "with format = 'avro-confluent': the schema id in each message's header; a source rejects messages with another id",
    ),
];

/// The id the bare format is decoded under: the decoder only reads framed
/// records, so each bare record is given a header with this id.
const BARE_ID: u32 = 0;

/// How the Avro records of one table are framed and what schema they have.
#[derive(Debug)]
pub(crate) struct AvroFormat {
    /// The schema id of Confluent's header; none for bare records.
    confluent_id: Option<u32>,
    /// The writer schema given as an option, if any.
    schema: Option<AvroSchema>,
}

impl AvroFormat {
    /// The settings of format `name` (`avro` or `avro-confluent`), from
    /// options named with `prefix` (empty, or `key.` for a Kafka key).
    pub(crate) fn parse(options: &Options, prefix: &str, name: &str) -> Result<Self> {
        let schema = options
            .get(&format!("{prefix}{name}.schema"))
            .map(|json| AvroSchema::new(json.to_string()));
        let confluent_id = if name == "avro-confluent" {
            let key = format!("{prefix}avro-confluent.schema-id");
            Some(options.parse::<u32>(&key)?.ok_or_else(|| {
                FlumenError::config(format!(
                    "format '{name}' needs option '{key}': the schema id written in each message's header"
                ))
            })?)
        } else {
            None
        };
        Ok(AvroFormat {
            confluent_id,
            schema,
        })
    }

    /// The writer schema: the given one, or one made from `table`.
    fn writer_schema(&self, table: &Schema) -> Result<AvroSchema> {
        match &self.schema {
            Some(s) => Ok(s.clone()),
            None => AvroSchema::try_from(table).map_err(|e| {
                FlumenError::config(format!("the table's columns have no Avro schema: {e}"))
            }),
        }
    }
}

/// Decodes Avro payloads into columns of a table.
#[derive(Debug)]
pub(crate) struct AvroDecoder {
    confluent_id: Option<u32>,
    writer: AvroSchema,
    /// The writer fields read, in the order of the decoded columns.
    fields: Vec<usize>,
    /// The decoded rows' schema (the columns a query reads).
    schema: SchemaRef,
}

impl AvroDecoder {
    /// A decoder of records of `format` into `schema`, whose columns must
    /// be fields of the writer schema.
    pub(crate) fn try_new(format: &AvroFormat, schema: &SchemaRef, table: &Schema) -> Result<Self> {
        let writer = format.writer_schema(table)?;
        let names = record_fields(&writer)?;
        let field_of = |name: &str| {
            names.iter().position(|n| n == name).ok_or_else(|| {
                FlumenError::config(format!(
                    "column '{name}' is not a field of the Avro schema (its fields: {})",
                    names.join(", ")
                ))
            })
        };
        // Every declared column, read or not, must be in the schema.
        for column in table.fields() {
            field_of(column.name())?;
        }
        let fields = schema
            .fields()
            .iter()
            .map(|c| field_of(c.name()))
            .collect::<Result<Vec<_>>>()?;
        let decoder = AvroDecoder {
            confluent_id: format.confluent_id,
            writer,
            fields,
            schema: schema.clone(),
        };
        // Builds a decoder once, so that a schema arrow-avro cannot read is
        // an error when the job is planned, not at its first message.
        decoder
            .decoder(1)
            .map_err(|e| FlumenError::config(format!("the Avro schema cannot be read: {e}")))?;
        Ok(decoder)
    }

    fn decoder(&self, rows: usize) -> Result<arrow_avro::reader::Decoder, ArrowError> {
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        store.set(
            Fingerprint::Id(self.confluent_id.unwrap_or(BARE_ID)),
            self.writer.clone(),
        )?;
        // With no column read, the first field is decoded to count rows.
        let fields = if self.fields.is_empty() {
            vec![0]
        } else {
            self.fields.clone()
        };
        ReaderBuilder::new()
            .with_writer_schema_store(store)
            .with_batch_size(rows.max(1))
            .with_projection(fields)
            .build_decoder()
    }

    /// One row per payload; an error if any payload is not one whole
    /// record of the schema (with the header the format needs).
    pub(crate) fn decode(&self, payloads: &[&[u8]]) -> Result<RecordBatch, ArrowError> {
        // One row of room past the payloads, for the check at the end.
        let mut decoder = self.decoder(payloads.len() + 1)?;
        let bare_header = header(BARE_ID);
        let mut room = decoder.capacity();
        for payload in payloads {
            let body = match self.confluent_id {
                Some(id) => {
                    check_header(payload, id)?;
                    step(&mut decoder, &payload[..5], room, "its header")?;
                    &payload[5..]
                }
                None => {
                    step(&mut decoder, &bare_header, room, "its header")?;
                    *payload
                }
            };
            // A body that held no whole record shows at the next header.
            if decoder.decode(body).map_err(ArrowError::from)? != body.len() {
                return Err(ArrowError::ParseError(
                    "the message is not one Avro record of the table's schema".into(),
                ));
            }
            room -= 1;
        }
        // A record that ended early left bytes the decoder took for the
        // start of another: a header now must read as a header.
        step(&mut decoder, &header(self.id()), room, "the end")?;
        let decoded = decoder.flush().map_err(ArrowError::from)?;
        let rows = decoded.as_ref().map_or(0, |b| b.num_rows());
        if rows != payloads.len() {
            return Err(ArrowError::ParseError(format!(
                "{} messages held {rows} Avro records",
                payloads.len()
            )));
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.fields.len());
        if let Some(batch) = decoded.filter(|_| !self.fields.is_empty()) {
            for (column, field) in batch.columns().iter().zip(self.schema.fields()) {
                columns.push(if column.data_type() == field.data_type() {
                    column.clone()
                } else {
                    cast(column, field.data_type())?
                });
            }
        }
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
    }

    fn id(&self) -> u32 {
        self.confluent_id.unwrap_or(BARE_ID)
    }
}

/// Feeds a header to `decoder`, which must take all of it as a header.
fn step(
    decoder: &mut arrow_avro::reader::Decoder,
    header: &[u8],
    room: usize,
    what: &str,
) -> Result<(), ArrowError> {
    let used = decoder.decode(header).map_err(ArrowError::from)?;
    if used != header.len() || decoder.capacity() != room {
        return Err(ArrowError::ParseError(format!(
            "the Avro record before {what} has bytes left over"
        )));
    }
    Ok(())
}

/// Confluent's wire-format header for schema `id`.
fn header(id: u32) -> [u8; 5] {
    let mut h = [0u8; 5];
    h[1..].copy_from_slice(&id.to_be_bytes());
    h
}

/// Checks a message's Confluent header: magic byte zero and the table's id.
fn check_header(payload: &[u8], id: u32) -> Result<(), ArrowError> {
    if payload.len() < 5 || payload[0] != 0 {
        return Err(ArrowError::ParseError(
            "the message is not in Confluent's wire format (a zero byte and a 4-byte schema id first)"
                .into(),
        ));
    }
    let found = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    if found != id {
        return Err(ArrowError::ParseError(format!(
            "the message has schema id {found}, the table reads id {id} (avro-confluent.schema-id)"
        )));
    }
    Ok(())
}

/// The field names of a record schema.
fn record_fields(schema: &AvroSchema) -> Result<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(&schema.json_string)
        .map_err(|e| FlumenError::config(format!("the Avro schema is not JSON: {e}")))?;
    let fields = value
        .get("fields")
        .and_then(|f| f.as_array())
        .filter(|_| value.get("type").and_then(|t| t.as_str()) == Some("record"))
        .ok_or_else(|| {
            FlumenError::config(
                "the Avro schema must be a record (\"type\": \"record\" with \"fields\")",
            )
        })?;
    fields
        .iter()
        .map(|f| {
            f.get("name")
                .and_then(|n| n.as_str())
                .map(str::to_string)
                .ok_or_else(|| FlumenError::config("an Avro schema field has no name"))
        })
        .collect()
}

/// Encodes each row of `batch` as one record of `format`: the bytes of all
/// rows and where each row ends.
pub(crate) fn encode(
    format: &AvroFormat,
    batch: &RecordBatch,
) -> Result<(bytes::Bytes, Vec<usize>)> {
    let mut encoder = encoder(format, batch.schema().as_ref()).map_err(avro_config)?;
    encoder.encode(batch).map_err(avro_config)?;
    let rows = encoder.flush();
    let ends = rows.offsets().get(1..).unwrap_or_default().to_vec();
    Ok((rows.bytes().clone(), ends))
}

/// Checks that rows of `schema` can be written as records of `format`.
pub(crate) fn check_writes(format: &AvroFormat, schema: &Schema) -> Result<()> {
    encoder(format, schema).map(drop).map_err(avro_config)
}

/// An encoder of rows of `schema`, with the given writer schema if any.
fn encoder(
    format: &AvroFormat,
    schema: &Schema,
) -> Result<arrow_avro::writer::Encoder, arrow_avro::errors::AvroError> {
    let mut schema = schema.clone();
    if let Some(given) = &format.schema {
        schema
            .metadata
            .insert(SCHEMA_METADATA_KEY.to_string(), given.json_string.clone());
    }
    let builder = WriterBuilder::new(schema);
    match format.confluent_id {
        Some(id) => builder
            .with_fingerprint_strategy(FingerprintStrategy::Id(id))
            .build_encoder::<AvroSoeFormat>(),
        None => builder.build_encoder::<AvroBinaryFormat>(),
    }
}

fn avro_config(e: arrow_avro::errors::AvroError) -> FlumenError {
    FlumenError::config(format!("rows cannot be written as Avro: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, TimeUnit};

    fn table() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
        ]))
    }

    fn rows() -> RecordBatch {
        RecordBatch::try_new(
            table(),
            vec![
                Arc::new(Int64Array::from(vec![1, -2, 3])),
                Arc::new(StringArray::from(vec![Some("a\"b"), None, Some("")])),
                Arc::new(TimestampMicrosecondArray::from(vec![
                    0,
                    1_700_000_000_000_000,
                    -5,
                ])),
            ],
        )
        .unwrap()
    }

    fn format(pairs: &[(&str, &str)], name: &str) -> AvroFormat {
        let options =
            Options::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        AvroFormat::parse(&options, "", name).unwrap()
    }

    fn payloads(data: &bytes::Bytes, ends: &[usize]) -> Vec<bytes::Bytes> {
        let mut start = 0;
        ends.iter()
            .map(|&end| {
                let p = data.slice(start..end);
                start = end;
                p
            })
            .collect()
    }

    #[test]
    fn bare_and_confluent_records_round_trip_one_row_per_message() {
        for (name, pairs) in [
            ("avro", vec![]),
            ("avro-confluent", vec![("avro-confluent.schema-id", "42")]),
        ] {
            let format = format(&pairs, name);
            let (data, ends) = encode(&format, &rows()).unwrap();
            let messages = payloads(&data, &ends);
            assert_eq!(messages.len(), 3);
            if name == "avro-confluent" {
                assert_eq!(&messages[1][..5], &[0, 0, 0, 0, 42]);
            }
            let refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
            let decoder = AvroDecoder::try_new(&format, &table(), &table()).unwrap();
            assert_eq!(decoder.decode(&refs).unwrap(), rows(), "{name}");
            // Some columns, in another order.
            let some = Arc::new(table().project(&[2, 0]).unwrap());
            let decoder = AvroDecoder::try_new(&format, &some, &table()).unwrap();
            assert_eq!(
                decoder.decode(&refs).unwrap(),
                rows().project(&[2, 0]).unwrap()
            );
            let none = Arc::new(Schema::empty());
            let decoder = AvroDecoder::try_new(&format, &none, &table()).unwrap();
            assert_eq!(decoder.decode(&refs).unwrap().num_rows(), 3);
        }
    }

    #[test]
    fn a_given_schema_is_read_by_field_name_with_its_types_cast() {
        let writer = r#"{"type": "record", "name": "bid", "fields": [
            {"name": "extra", "type": "string"},
            {"name": "price", "type": "int"},
            {"name": "auction", "type": "long"}]}"#;
        let format = format(
            &[
                ("avro-confluent.schema", writer),
                ("avro-confluent.schema-id", "3"),
            ],
            "avro-confluent",
        );
        let written = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("extra", DataType::Utf8, false),
                Field::new("price", DataType::Int32, false),
                Field::new("auction", DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["x", "y"])),
                Arc::new(arrow::array::Int32Array::from(vec![7, 8])),
                Arc::new(Int64Array::from(vec![100, 200])),
            ],
        )
        .unwrap();
        let (data, ends) = encode(&format, &written).unwrap();
        let messages = payloads(&data, &ends);
        let refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
        let table = Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, false),
            Field::new("price", DataType::Int64, false),
        ]));
        let decoder = AvroDecoder::try_new(&format, &table, &table).unwrap();
        let batch = decoder.decode(&refs).unwrap();
        assert_eq!(
            batch.column(1).as_ref(),
            &Int64Array::from(vec![7, 8]) as &dyn arrow::array::Array
        );
        let missing = Arc::new(Schema::new(vec![Field::new(
            "bidder",
            DataType::Int64,
            false,
        )]));
        let err = AvroDecoder::try_new(&format, &missing, &missing).unwrap_err();
        assert!(
            err.to_string().contains("column 'bidder' is not a field of the Avro schema (its fields: extra, price, auction)"),
            "{err}"
        );
    }

    #[test]
    fn a_message_that_is_not_one_whole_record_is_malformed() {
        let format = format(&[("avro-confluent.schema-id", "9")], "avro-confluent");
        let (data, ends) = encode(&format, &rows()).unwrap();
        let messages = payloads(&data, &ends);
        let decoder = AvroDecoder::try_new(&format, &table(), &table()).unwrap();
        let good = &messages[0][..];
        let short = &messages[0][..messages[0].len() - 1];
        let mut long = messages[0].to_vec();
        long.extend_from_slice(&header(9));
        let mut other_id = messages[0].to_vec();
        other_id[4] = 8;
        assert!(decoder.decode(&[good, good]).is_ok());
        for bad in [short, &long[..], &other_id[..], &good[1..], &[][..]] {
            assert!(decoder.decode(&[bad]).is_err(), "{bad:?}");
            assert!(decoder.decode(&[good, bad, good]).is_err(), "{bad:?}");
        }
        let err = decoder.decode(&[&other_id[..]]).unwrap_err();
        assert!(
            err.to_string()
                .contains("schema id 8, the table reads id 9"),
            "{err}"
        );

        let bare = super::AvroFormat {
            confluent_id: None,
            schema: None,
        };
        let (data, ends) = encode(&bare, &rows()).unwrap();
        let messages = payloads(&data, &ends);
        let decoder = AvroDecoder::try_new(&bare, &table(), &table()).unwrap();
        let mut long = messages[1].to_vec();
        long.extend_from_slice(&header(BARE_ID));
        assert!(decoder.decode(&[&messages[1][..]]).is_ok());
        assert!(decoder.decode(&[&long[..]]).is_err());
        assert!(decoder.decode(&[&long[..], &messages[0][..]]).is_err());
    }

    #[test]
    fn avro_confluent_needs_a_schema_id_and_a_record_schema() {
        let options = Options::new([]).unwrap();
        let err = AvroFormat::parse(&options, "key.", "avro-confluent").unwrap_err();
        assert!(
            err.to_string().contains("'key.avro-confluent.schema-id'"),
            "{err}"
        );
        let format = format(&[("avro.schema", r#""long""#)], "avro");
        let err = AvroDecoder::try_new(&format, &table(), &table()).unwrap_err();
        assert!(err.to_string().contains("must be a record"), "{err}");
    }
}
