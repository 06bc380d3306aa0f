//! `debezium-json`: Debezium's change events as JSON, read into an
//! updating stream and written from one, as Flink's format of that name.
//!
//! An event `{"before": {…}, "after": {…}, "op": "c|r|u|d"}` (inside
//! `{"schema": …, "payload": …}` with `debezium-json.schema-include`) is an
//! insert of `after` (`c`, and `r` for a snapshot read), an update-before
//! of `before` and an update-after of `after` (`u`), or a delete of
//! `before` (`d`). Written back, an insert or update-after is a `c` event
//! with `after`, a delete or update-before a `d` event with `before`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int8Array, RecordBatch, StringArray, StructArray};
use arrow::buffer::NullBuffer;
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use flumen_types::{FlumenError, Result};
use flumen_types::{RowOp, op_field};

use crate::Options;

/// The options of `debezium-json`.
pub(crate) const OPTIONS: &[crate::OptionSpec] = &[crate::OptionSpec::optional(
    "debezium-json.schema-include",
    "with format = 'debezium-json': 'true' when each event is wrapped as {\"schema\": …, \"payload\": …} (Kafka Connect's JSON converter with schemas on); default 'false'",
)];

/// Whether events are wrapped with their schema.
#[derive(Debug)]
pub(crate) struct DebeziumFormat {
    schema_include: bool,
}

impl DebeziumFormat {
    /// The settings from `options`.
    pub(crate) fn parse(options: &Options) -> Result<Self> {
        Ok(DebeziumFormat {
            schema_include: options.choice(
                "debezium-json.schema-include",
                &["true", "false"],
                "false",
            )? == "true",
        })
    }
}

/// Decodes change events into rows of a table with a trailing op column.
#[derive(Debug)]
pub(crate) struct DebeziumDecoder {
    schema_include: bool,
    /// The event's schema: `before`, `after` (records of the columns read,
    /// every field nullable) and `op`, wrapped in `payload` if included.
    envelope: SchemaRef,
    /// The columns read, then the op column.
    schema: SchemaRef,
}

impl DebeziumDecoder {
    /// A decoder of events into the columns `columns`.
    pub(crate) fn new(format: &DebeziumFormat, columns: &Schema) -> Self {
        let record: Fields = columns
            .fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect();
        let change = Fields::from(vec![
            Field::new("before", DataType::Struct(record.clone()), true),
            Field::new("after", DataType::Struct(record), true),
            Field::new("op", DataType::Utf8, true),
        ]);
        let envelope = if format.schema_include {
            Schema::new(vec![Field::new("payload", DataType::Struct(change), true)])
        } else {
            Schema::new(change)
        };
        let mut fields: Vec<Field> = columns
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(op_field());
        DebeziumDecoder {
            schema_include: format.schema_include,
            envelope: Arc::new(envelope),
            schema: Arc::new(Schema::new(fields)),
        }
    }

    /// The rows' schema: the columns read, then the op column.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The rows of `events` (JSON lines, one event each), with the index
    /// of the event each row comes from.
    pub(crate) fn decode(
        &self,
        text: &[u8],
        events: usize,
    ) -> Result<(RecordBatch, Vec<usize>), ArrowError> {
        let mut decoder = arrow::json::ReaderBuilder::new(self.envelope.clone())
            .with_batch_size(events.max(1))
            .build_decoder()?;
        let used = decoder.decode(text)?;
        let decoded = decoder.flush()?;
        let rows = decoded.as_ref().map_or(0, |b| b.num_rows());
        if used != text.len() || rows != events {
            return Err(ArrowError::ParseError(format!(
                "{events} messages held {rows} events"
            )));
        }
        let Some(batch) = decoded else {
            return Ok((RecordBatch::new_empty(self.schema.clone()), Vec::new()));
        };
        let change = if self.schema_include {
            let payload = batch.column(0).as_struct();
            if payload.null_count() > 0 {
                return Err(ArrowError::ParseError(
                    "an event without a payload (with debezium-json.schema-include = 'true')"
                        .into(),
                ));
            }
            payload.clone()
        } else {
            StructArray::from(batch)
        };
        let before = change.column(0).as_struct();
        let after = change.column(1).as_struct();
        let op = change.column(2).as_string::<i32>();
        // (0, i) is event i's before, (1, i) its after.
        let mut picks = Vec::with_capacity(events);
        let mut ops = Vec::with_capacity(events);
        let mut from = Vec::with_capacity(events);
        for i in 0..events {
            let needs = |side: &StructArray, name: &str| {
                if side.is_null(i) {
                    Err(ArrowError::ParseError(format!(
                        "a '{}' event without '{name}'{}",
                        op.value(i),
                        if name == "before" {
                            " (a PostgreSQL table needs REPLICA IDENTITY FULL)"
                        } else {
                            ""
                        }
                    )))
                } else {
                    Ok(())
                }
            };
            let mut row = |side: usize, what: RowOp| {
                picks.push((side, i));
                ops.push(what as i8);
                from.push(i);
            };
            match op.is_valid(i).then(|| op.value(i)) {
                Some("c" | "r") => {
                    needs(after, "after")?;
                    row(1, RowOp::Insert);
                }
                Some("u") => {
                    needs(before, "before")?;
                    needs(after, "after")?;
                    row(0, RowOp::UpdateBefore);
                    row(1, RowOp::UpdateAfter);
                }
                Some("d") => {
                    needs(before, "before")?;
                    row(0, RowOp::Delete);
                }
                Some(other) => {
                    return Err(ArrowError::ParseError(format!(
                        "an event of unknown op '{other}' (Debezium's are c, r, u and d)"
                    )));
                }
                None => return Err(ArrowError::ParseError("an event without 'op'".into())),
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for c in 0..before.num_columns() {
            columns.push(interleave(
                &[before.column(c).as_ref(), after.column(c).as_ref()],
                &picks,
            )?);
        }
        columns.push(Arc::new(Int8Array::from(ops)));
        Ok((RecordBatch::try_new(self.schema.clone(), columns)?, from))
    }
}

/// The rows of a batch as change events: the JSON lines of a batch of
/// `before`, `after`, `op`. An `updating` batch's last column is the op
/// column; every row of another is an insert.
pub(crate) fn events(batch: &RecordBatch, updating: bool) -> Result<Vec<u8>> {
    let width = batch.num_columns() - usize::from(updating);
    let mut additions = Vec::with_capacity(batch.num_rows());
    if updating {
        let ops = batch
            .column(width)
            .as_primitive::<arrow::datatypes::Int8Type>();
        for code in ops.values() {
            let op = RowOp::from_code(*code)
                .ok_or_else(|| FlumenError::internal(format!("unknown row op code {code}")))?;
            additions.push(op.is_addition());
        }
    } else {
        additions.resize(batch.num_rows(), true);
    }
    let fields: Fields = batch.schema().fields()[..width].iter().cloned().collect();
    let columns = batch.columns()[..width].to_vec();
    let side = |valid: Vec<bool>| -> Result<ArrayRef> {
        Ok(Arc::new(StructArray::try_new(
            fields.clone(),
            columns.clone(),
            Some(NullBuffer::from(valid)),
        )?))
    };
    let before = side(additions.iter().map(|a| !a).collect())?;
    let after = side(additions.clone())?;
    let op: ArrayRef = Arc::new(StringArray::from_iter_values(
        additions.iter().map(|&a| if a { "c" } else { "d" }),
    ));
    let envelope = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("before", before.data_type().clone(), true),
            Field::new("after", after.data_type().clone(), true),
            Field::new("op", DataType::Utf8, false),
        ])),
        vec![before, after, op],
    )?;
    let mut text = Vec::new();
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::LineDelimited>(&mut text);
    writer.write(&envelope)?;
    writer.finish()?;
    drop(writer);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn columns() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ])
    }

    fn decode(include: bool, lines: &[&str]) -> Result<(RecordBatch, Vec<usize>), ArrowError> {
        let decoder = DebeziumDecoder::new(
            &DebeziumFormat {
                schema_include: include,
            },
            &columns(),
        );
        let text = lines.join("\n");
        decoder.decode(text.as_bytes(), lines.len())
    }

    #[test]
    fn events_become_inserts_updates_and_deletes() {
        let (batch, from) = decode(
            false,
            &[
                r#"{"before": null, "after": {"id": 1, "name": "a"}, "op": "c", "ts_ms": 5}"#,
                r#"{"before": {"id": 1, "name": "a"}, "after": {"id": 1, "name": "b"}, "op": "u", "source": {"db": "x"}}"#,
                r#"{"before": {"id": 2, "name": null}, "after": null, "op": "d"}"#,
                r#"{"after": {"id": 3}, "op": "r"}"#,
            ],
        )
        .unwrap();
        assert_eq!(from, vec![0, 1, 1, 2, 3]);
        assert_eq!(
            batch.column(0).as_ref(),
            &Int64Array::from(vec![1, 1, 1, 2, 3]) as &dyn Array
        );
        assert_eq!(
            batch.column(1).as_ref(),
            &StringArray::from(vec![Some("a"), Some("a"), Some("b"), None, None]) as &dyn Array
        );
        assert_eq!(
            batch.column(2).as_ref(),
            &Int8Array::from(vec![0, 2, 3, 1, 0]) as &dyn Array
        );
        let (wrapped, _) = decode(
            true,
            &[r#"{"schema": {"type": "struct"}, "payload": {"before": {"id": 7}, "after": null, "op": "d"}}"#],
        )
        .unwrap();
        assert_eq!(
            wrapped
                .column(2)
                .as_primitive::<arrow::datatypes::Int8Type>()
                .value(0),
            1
        );
    }

    #[test]
    fn events_missing_a_side_or_of_unknown_op_are_malformed() {
        for (line, says) in [
            (
                r#"{"before": null, "after": null, "op": "d"}"#,
                "REPLICA IDENTITY FULL",
            ),
            (
                r#"{"before": null, "after": {"id": 1}, "op": "u"}"#,
                "without 'before'",
            ),
            (r#"{"after": null, "op": "c"}"#, "without 'after'"),
            (r#"{"after": {"id": 1}, "op": "t"}"#, "unknown op 't'"),
            (r#"{"after": {"id": 1}}"#, "without 'op'"),
            (r#"{"after": {"id": null}, "op": "c"}"#, "non-nullable"),
        ] {
            let err = decode(false, &[line]).unwrap_err().to_string();
            assert!(err.contains(says), "{line}: {err}");
        }
        assert!(
            decode(
                true,
                &[r#"{"before": null, "after": {"id": 1}, "op": "c"}"#]
            )
            .is_err()
        );
        assert!(
            decode(
                false,
                &[r#"{"op": "c", "after": {"id": 1}} {"op": "c", "after": {"id": 2}}"#]
            )
            .is_err()
        );
    }

    #[test]
    fn written_events_read_back_as_the_same_changes() {
        let (batch, _) = decode(
            false,
            &[
                r#"{"after": {"id": 1, "name": "x\ny"}, "op": "c"}"#,
                r#"{"before": {"id": 1, "name": "x\ny"}, "after": {"id": 1, "name": null}, "op": "u"}"#,
                r#"{"before": {"id": 1}, "op": "d"}"#,
            ],
        )
        .unwrap();
        let text = events(&batch, true).unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&text).unwrap().lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[1].contains(r#""after":null"#) && lines[1].contains(r#""op":"d""#),
            "{}",
            lines[1]
        );
        let (back, _) = decode(false, &lines).unwrap();
        // An update is written as a delete and an insert.
        let ops = back.column(2).as_primitive::<arrow::datatypes::Int8Type>();
        assert_eq!(ops.values().to_vec(), vec![0, 1, 0, 1]);
        assert_eq!(
            back.project(&[0, 1]).unwrap(),
            batch.project(&[0, 1]).unwrap()
        );
    }
}
