//! Message formats: how the payload of one message (a Kafka record, a NATS
//! message) maps to one row, both ways. `json` and `csv` decode with Arrow's
//! vectorised readers over many payloads at once; `raw` takes the payload
//! whole as the table's one column; `avro` and `avro-confluent` decode and
//! encode Avro records (see [`avro`]); `debezium-json` reads and writes
//! change events of updating streams (see [`debezium`]).

mod avro;
mod debezium;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use flumen_types::{FlumenError, Result};

use crate::Options;

/// The options of the message formats' own (the Kafka key's Avro options
/// are the Kafka connector's).
pub(crate) const OPTIONS: &[crate::OptionSpec] = &[
    avro::OPTIONS[0],
    avro::OPTIONS[1],
    avro::OPTIONS[2],
    debezium::OPTIONS[0],
];

/// The formats of message payloads.
#[derive(Debug, Clone)]
pub(crate) enum MessageFormat {
    /// One JSON object per message; fields matched to columns by name.
    Json,
    /// One CSV record per message; fields matched to columns by position.
    Csv,
    /// The payload is the table's only column (`STRING` or `BYTES`).
    Raw,
    /// One Avro binary record per message, bare or behind Confluent's
    /// wire-format header.
    Avro(Arc<avro::AvroFormat>),
    /// Debezium's change events as JSON: rows of an updating stream.
    Debezium(Arc<debezium::DebeziumFormat>),
}

impl MessageFormat {
    /// The format named by option `key` (default `json`); the Avro
    /// formats' own options are named with what precedes `format` in `key`.
    pub(crate) fn parse(options: &Options, key: &str) -> Result<Self> {
        let choices = [
            "json",
            "csv",
            "raw",
            "avro",
            "avro-confluent",
            "debezium-json",
        ];
        Ok(match options.choice(key, &choices, "json")? {
            "csv" => MessageFormat::Csv,
            "debezium-json" => {
                MessageFormat::Debezium(Arc::new(debezium::DebeziumFormat::parse(options)?))
            }
            "raw" => MessageFormat::Raw,
            name @ ("avro" | "avro-confluent") => {
                let prefix = key.strip_suffix("format").unwrap_or_default();
                MessageFormat::Avro(Arc::new(avro::AvroFormat::parse(options, prefix, name)?))
            }
            _ => MessageFormat::Json,
        })
    }

    /// Checks that rows of `schema` can be written in this format (named
    /// by `option`), so that a sink fails when planned, not at its first row.
    pub(crate) fn check_writes(
        &self,
        option: &str,
        schema: &arrow::datatypes::Schema,
    ) -> Result<()> {
        match self {
            MessageFormat::Avro(avro) => avro::check_writes(avro, schema)
                .map_err(|e| FlumenError::config(format!("{option}: {e}"))),
            _ => Ok(()),
        }
    }

    /// Whether this is `raw`, which reads and writes one column.
    pub(crate) fn is_raw(&self) -> bool {
        matches!(self, MessageFormat::Raw)
    }
}

/// Whether a message table of `spec` holds change events: read as an
/// updating stream, and written from one.
pub(crate) fn is_changelog_table(spec: &crate::TableSpec) -> bool {
    spec.options.get("format") == Some("debezium-json")
}

/// Decodes payloads into rows of `schema`: the columns a query reads, out
/// of the table's `table_schema` (CSV is positional over all of them).
pub(crate) struct PayloadDecoder {
    format: MessageFormat,
    schema: SchemaRef,
    table_schema: SchemaRef,
    projection: Vec<usize>,
    /// The decoder of a format that needs state of its own.
    own: Option<OwnDecoder>,
}

/// The decoders of formats with their own settings.
enum OwnDecoder {
    Avro(avro::AvroDecoder),
    Debezium(debezium::DebeziumDecoder),
}

impl PayloadDecoder {
    /// A decoder of `format` into the `projection` columns of
    /// `table_schema`; `raw` needs a table of one string or bytes column.
    pub(crate) fn try_new(
        format: MessageFormat,
        table_schema: &SchemaRef,
        projection: &[usize],
    ) -> Result<Self> {
        if format.is_raw() {
            let fields = table_schema.fields();
            if fields.len() != 1
                || !matches!(fields[0].data_type(), DataType::Utf8 | DataType::Binary)
            {
                return Err(FlumenError::config(format!(
                    "format 'raw' needs a table of one STRING or BYTES column, not ({})",
                    crate::column_list(table_schema)
                )));
            }
        }
        let mut schema = Arc::new(table_schema.project(projection)?);
        let own = match &format {
            MessageFormat::Debezium(d) => {
                let decoder = debezium::DebeziumDecoder::new(d, &schema);
                schema = decoder.schema().clone();
                Some(OwnDecoder::Debezium(decoder))
            }
            MessageFormat::Avro(avro) => Some(OwnDecoder::Avro(avro::AvroDecoder::try_new(
                avro,
                &schema,
                table_schema,
            )?)),
            _ => None,
        };
        Ok(PayloadDecoder {
            format,
            schema,
            table_schema: table_schema.clone(),
            projection: projection.to_vec(),
            own,
        })
    }

    /// The schema of decoded rows.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The rows of the payloads, all decoded at once, with the payload
    /// each row comes from when that is not one row per payload (a change
    /// event may be two rows, an update's before and after); an error if
    /// any payload is malformed (then [`PayloadDecoder::decode_one`] finds
    /// which).
    pub(crate) fn decode(
        &self,
        payloads: &[&[u8]],
    ) -> Result<(RecordBatch, Option<Vec<usize>>), ArrowError> {
        if payloads.is_empty() {
            return Ok((RecordBatch::new_empty(self.schema.clone()), None));
        }
        if let Some(OwnDecoder::Avro(avro)) = &self.own {
            return Ok((avro.decode(payloads)?, None));
        }
        if let MessageFormat::Raw = self.format {
            return Ok((self.raw(payloads)?, None));
        }
        let mut text = Vec::with_capacity(payloads.iter().map(|p| p.len() + 1).sum());
        for p in payloads {
            check_framing(&self.format, p)?;
            text.extend_from_slice(p);
            text.push(b'\n');
        }
        if let Some(OwnDecoder::Debezium(debezium)) = &self.own {
            let (batch, from) = debezium.decode(&text, payloads.len())?;
            return Ok((batch, Some(from)));
        }
        let batches = self.text_decoder(payloads.len())?.decode_all(&text)?;
        let batches: Vec<RecordBatch> = batches.into_iter().map(|(b, _)| b).collect();
        let batch = concat_batches(&self.schema, &batches)?;
        if batch.num_rows() != payloads.len() {
            return Err(ArrowError::ParseError(format!(
                "{} messages held {} rows",
                payloads.len(),
                batch.num_rows()
            )));
        }
        Ok((batch, None))
    }

    /// The rows of one payload alone, to name a malformed one.
    pub(crate) fn decode_one(&self, payload: &[u8]) -> Result<RecordBatch, ArrowError> {
        self.decode(&[payload]).map(|(batch, _)| batch)
    }

    fn text_decoder(&self, rows: usize) -> Result<TextDecoder, ArrowError> {
        let rows = rows.max(1);
        Ok(match self.format {
            MessageFormat::Csv => TextDecoder::Csv(Box::new(
                arrow::csv::ReaderBuilder::new(self.table_schema.clone())
                    .with_header(false)
                    .with_projection(self.projection.clone())
                    .with_batch_size(rows)
                    .build_decoder(),
            )),
            _ => TextDecoder::Json(
                arrow::json::ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(rows)
                    .build_decoder()?,
            ),
        })
    }

    fn raw(&self, payloads: &[&[u8]]) -> Result<RecordBatch, ArrowError> {
        let column: ArrayRef = match self.table_schema.field(0).data_type() {
            DataType::Utf8 => {
                let mut strings = Vec::with_capacity(payloads.len());
                for p in payloads {
                    strings.push(std::str::from_utf8(p).map_err(|e| {
                        ArrowError::ParseError(format!("the message is not UTF-8: {e}"))
                    })?);
                }
                Arc::new(StringArray::from(strings))
            }
            _ => Arc::new(BinaryArray::from_iter_values(payloads.iter())),
        };
        let columns = if self.projection.is_empty() {
            vec![]
        } else {
            vec![column]
        };
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(payloads.len())),
        )
    }
}

/// Checks that a payload can only be one whole row, so that payloads
/// decoded back to back map one to one onto rows (with the row count
/// checked after): not empty, and a JSON payload is one object.
fn check_framing(format: &MessageFormat, payload: &[u8]) -> Result<(), ArrowError> {
    let text = payload.trim_ascii();
    if text.is_empty() {
        return Err(ArrowError::ParseError("an empty message".into()));
    }
    if matches!(format, MessageFormat::Json | MessageFormat::Debezium(_))
        && (text[0] != b'{' || text[text.len() - 1] != b'}')
    {
        return Err(ArrowError::ParseError(
            "a JSON message must be one object".into(),
        ));
    }
    Ok(())
}

/// Rows encoded as payloads: row `i` is `data[ends[i - 1]..ends[i]]`.
pub(crate) struct Encoded {
    data: bytes::Bytes,
    ends: Vec<usize>,
}

impl Encoded {
    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The payload of row `i`.
    pub(crate) fn row(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    /// Each row's payload, as slices of one shared buffer (no copy per row).
    pub(crate) fn into_payloads(self) -> Vec<bytes::Bytes> {
        let data = self.data;
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let payload = data.slice(start..end);
                start = end;
                payload
            })
            .collect()
    }
}

/// Encodes each row of `batch` as one payload of `format`.
pub(crate) fn encode(format: &MessageFormat, batch: &RecordBatch) -> Result<Encoded> {
    let mut data = Vec::new();
    let mut ends = Vec::with_capacity(batch.num_rows());
    match format {
        MessageFormat::Avro(avro) => {
            let (data, ends) = avro::encode(avro, batch)?;
            return checked(batch, Encoded { data, ends });
        }
        MessageFormat::Debezium(_) => {
            data = debezium::events(batch, flumen_types::is_updating(&batch.schema()))?;
            split_lines(&mut data, &mut ends);
        }
        MessageFormat::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut data);
            writer.write(batch)?;
            writer.finish()?;
            drop(writer);
            split_lines(&mut data, &mut ends);
        }
        MessageFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(false)
                .build(&mut data);
            writer.write(batch)?;
            drop(writer);
            // A newline inside quotes belongs to a field.
            let mut quoted = false;
            let mut kept = 0;
            let mut start = 0;
            for i in 0..data.len() {
                match data[i] {
                    b'"' => quoted = !quoted,
                    b'\n' if !quoted => {
                        data.copy_within(start..i, kept);
                        kept += i - start;
                        ends.push(kept);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            data.truncate(kept);
        }
        MessageFormat::Raw => {
            if batch.num_columns() != 1 {
                return Err(FlumenError::config(format!(
                    "format 'raw' writes one column, not {}",
                    batch.num_columns()
                )));
            }
            let column = batch.column(0);
            let bytes = |i: usize| -> &[u8] {
                if column.is_null(i) {
                    return &[];
                }
                match column.as_any().downcast_ref::<StringArray>() {
                    Some(s) => s.value(i).as_bytes(),
                    None => column
                        .as_any()
                        .downcast_ref::<BinaryArray>()
                        .map_or(&[][..], |b| b.value(i)),
                }
            };
            if !matches!(column.data_type(), DataType::Utf8 | DataType::Binary) {
                return Err(FlumenError::config(format!(
                    "format 'raw' writes a STRING or BYTES column, not {}",
                    column.data_type()
                )));
            }
            for i in 0..batch.num_rows() {
                data.extend_from_slice(bytes(i));
                ends.push(data.len());
            }
        }
    }
    checked(
        batch,
        Encoded {
            data: data.into(),
            ends,
        },
    )
}

/// Drops the newline after each JSON line of `data`, recording where each
/// line ends (JSON escapes newlines inside strings: each one ends a row).
fn split_lines(data: &mut Vec<u8>, ends: &mut Vec<usize>) {
    let mut kept = 0;
    let mut start = 0;
    for i in 0..data.len() {
        if data[i] == b'\n' {
            data.copy_within(start..i, kept);
            kept += i - start;
            ends.push(kept);
            start = i + 1;
        }
    }
    data.truncate(kept);
}

/// `encoded`, when it holds one message per row of `batch`.
fn checked(batch: &RecordBatch, encoded: Encoded) -> Result<Encoded> {
    if encoded.len() != batch.num_rows() {
        return Err(FlumenError::internal(format!(
            "encoding {} rows gave {} messages",
            batch.num_rows(),
            encoded.len()
        )));
    }
    Ok(encoded)
}

/// Decodes JSON lines or CSV records (no header) into batches.
pub(crate) enum TextDecoder {
    /// JSON values, one per row.
    Json(arrow::json::reader::Decoder),
    /// CSV records, one per row.
    Csv(Box<arrow::csv::reader::Decoder>),
}

impl TextDecoder {
    /// Every batch of `data`, each with the byte offset in `data` after its
    /// last row.
    pub(crate) fn decode_all(
        mut self,
        data: &[u8],
    ) -> Result<Vec<(RecordBatch, usize)>, ArrowError> {
        let mut batches = Vec::new();
        let mut at = 0;
        loop {
            let consumed = match &mut self {
                TextDecoder::Json(d) => d.decode(&data[at..])?,
                TextDecoder::Csv(d) => d.decode(&data[at..])?,
            };
            at += consumed;
            let batch = match &mut self {
                TextDecoder::Json(d) => d.flush()?,
                TextDecoder::Csv(d) => d.flush()?,
            };
            let data = &data[at..];
            match batch {
                Some(b) if b.num_rows() > 0 => batches.push((b, at)),
                _ if data.is_empty() => return Ok(batches),
                _ if consumed == 0 => {
                    return Err(ArrowError::ParseError(
                        "the decoder made no progress".into(),
                    ));
                }
                _ => {}
            }
        }
    }
}

/// Format `raw` writes one STRING or BYTES column.
pub(crate) fn check_raw(option: &str, input: &SchemaRef, columns: &[usize]) -> Result<()> {
    match columns {
        [c] if matches!(
            input.field(*c).data_type(),
            arrow::datatypes::DataType::Utf8 | arrow::datatypes::DataType::Binary
        ) =>
        {
            Ok(())
        }
        _ => Err(FlumenError::config(format!(
            "{option} = 'raw' writes one STRING or BYTES column, not ({})",
            columns
                .iter()
                .map(|c| format!("{} {}", input.field(*c).name(), input.field(*c).data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema};

    fn table() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn json_and_csv_round_trip_one_row_per_message() {
        let batch = RecordBatch::try_new(
            table(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a\nb"), None, Some("c,\"d")])),
            ],
        )
        .unwrap();
        for format in [MessageFormat::Json, MessageFormat::Csv] {
            let encoded = encode(&format, &batch).unwrap();
            assert_eq!(encoded.len(), 3, "{format:?}");
            let payloads: Vec<&[u8]> = (0..3).map(|i| encoded.row(i)).collect();
            let decoder = PayloadDecoder::try_new(format.clone(), &table(), &[0, 1]).unwrap();
            if matches!(format, MessageFormat::Json) {
                assert_eq!(decoder.decode(&payloads).unwrap(), (batch.clone(), None));
            } else {
                // CSV cannot tell a null from an empty string.
                let back = decoder.decode_one(payloads[0]).unwrap();
                assert_eq!(back, batch.slice(0, 1), "{format:?}");
            }
        }
    }

    #[test]
    fn a_malformed_payload_fails_the_batch_and_is_found_alone() {
        let decoder = PayloadDecoder::try_new(MessageFormat::Json, &table(), &[1, 0]).unwrap();
        let good = br#"{"id": 1, "name": "x"}"#;
        let bad = br#"{"id": "one"}"#;
        assert!(decoder.decode(&[good, bad]).is_err());
        assert!(decoder.decode_one(bad).is_err());
        let one = decoder.decode_one(good).unwrap();
        assert_eq!(one.schema().field(0).name(), "name");
        // Two values in one message, or none, are not one row.
        assert!(decoder.decode(&[br#"{"id": 1} {"id": 2}"#]).is_err());
        assert!(decoder.decode_one(b"  ").is_err());
    }

    #[test]
    fn raw_takes_the_payload_as_its_one_column() {
        let schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
        let decoder = PayloadDecoder::try_new(MessageFormat::Raw, &schema, &[0]).unwrap();
        let (batch, _) = decoder.decode(&[b"a b", b"{"]).unwrap();
        let encoded = encode(&MessageFormat::Raw, &batch).unwrap();
        assert_eq!(encoded.row(1), b"{");
        assert!(decoder.decode(&[&[0xff]]).is_err());
        let err = PayloadDecoder::try_new(MessageFormat::Raw, &table(), &[0])
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("one STRING or BYTES column"),
            "{err}"
        );
    }
}
