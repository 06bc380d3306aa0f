//! The `stdout` sink: prints rows as a table, JSON lines or CSV.

use std::io::Write;

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int8Type, Schema};
use async_trait::async_trait;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_types::{FlumenError, Result, RowOp, is_updating};

use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::Options;

fn stdout_error(e: std::io::Error) -> FlumenError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        FlumenError::OutputClosed
    } else {
        FlumenError::io(format!("writing to stdout: {e}"))
    }
}
use crate::options::OptionSpec;

/// Options of the `stdout` connector.
pub(crate) const OPTIONS: &[OptionSpec] = &[OptionSpec::optional(
    "format",
    "table (default), json or csv",
)];

/// How rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutFormat {
    /// An aligned text table per batch.
    Table,
    /// One JSON object per line.
    Json,
    /// CSV with one header line.
    Csv,
}

impl StdoutFormat {
    /// Parses `table`, `json` or `csv`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "table" => Ok(StdoutFormat::Table),
            "json" => Ok(StdoutFormat::Json),
            "csv" => Ok(StdoutFormat::Csv),
            other => Err(FlumenError::config(format!(
                "format '{other}' is not one of: table, json, csv"
            ))),
        }
    }
}

/// Makes stdout sinks; the planner gives it parallelism 1 so lines never interleave.
pub struct StdoutSinkFactory {
    format: StdoutFormat,
}

/// The `stdout` connector: writes only, at least once.
pub(crate) struct Stdout;

impl crate::Connector for Stdout {
    fn name(&self) -> &'static str {
        "stdout"
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    fn delivery(&self) -> Option<crate::Delivery> {
        Some(crate::Delivery::AtLeastOnce)
    }
    fn accepts_updates(&self, _spec: &crate::TableSpec) -> bool {
        true
    }
    fn sink(
        &self,
        spec: &crate::TableSpec,
        _input: arrow::datatypes::SchemaRef,
        _unique: &str,
    ) -> Result<std::sync::Arc<dyn flumen_runtime::SinkFactory>> {
        Ok(std::sync::Arc::new(StdoutSinkFactory::from_options(
            &spec.options,
        )?))
    }
}

impl StdoutSinkFactory {
    /// A sink printing in `format`.
    pub fn new(format: StdoutFormat) -> Self {
        StdoutSinkFactory { format }
    }

    pub(crate) fn from_options(options: &Options) -> Result<Self> {
        Ok(Self::new(StdoutFormat::parse(
            options.get("format").unwrap_or("table"),
        )?))
    }
}

impl SinkFactory for StdoutSinkFactory {
    fn describe(&self) -> String {
        format!("Sink: stdout ({:?})", self.format)
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(StdoutSink {
            format: self.format,
            header_written: false,
            widths: Vec::new(),
        }))
    }
}

struct StdoutSink {
    format: StdoutFormat,
    header_written: bool,
    /// Column widths of the table so far.
    widths: Vec<usize>,
}

impl StdoutSink {
    /// Appends `batch` as rows of one continuing table, printed as they
    /// arrive: the columns are as wide as the widest value seen so far, and
    /// when a batch brings a wider one the header is printed again.
    fn write_table(&mut self, batch: &RecordBatch, buf: &mut Vec<u8>) -> Result<()> {
        let options = FormatOptions::default().with_null("NULL");
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        let cells: Vec<Vec<String>> = (0..batch.num_rows())
            .map(|row| {
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect()
            })
            .collect();
        let io = |e: std::io::Error| FlumenError::io(e.to_string());
        let schema = batch.schema();
        let needed: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                cells
                    .iter()
                    .map(|r| r[i].len())
                    .fold(f.name().len(), usize::max)
            })
            .collect();
        // A value wider than its column starts a new section of the table
        // with wider columns, so rows stay aligned under their header.
        let wider = self.widths.len() != needed.len()
            || needed.iter().zip(&self.widths).any(|(n, w)| n > w);
        if !self.header_written || wider {
            if self.header_written {
                writeln!(buf, "{}", self.rule()).map_err(io)?;
            }
            self.widths = if self.widths.len() == needed.len() {
                needed
                    .iter()
                    .zip(&self.widths)
                    .map(|(n, w)| *n.max(w))
                    .collect()
            } else {
                needed
            };
            let rule = self.rule();
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            writeln!(buf, "{rule}\n{}\n{rule}", self.line(&names)).map_err(io)?;
            self.header_written = true;
        }
        for row in &cells {
            let row: Vec<&str> = row.iter().map(String::as_str).collect();
            writeln!(buf, "{}", self.line(&row)).map_err(io)?;
        }
        Ok(())
    }

    fn rule(&self) -> String {
        let dashes: Vec<String> = self.widths.iter().map(|w| "-".repeat(w + 2)).collect();
        format!("+{}+", dashes.join("+"))
    }

    fn line(&self, cells: &[&str]) -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&self.widths)
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect();
        format!("|{}|", padded.join("|"))
    }
}

/// An updating stream's rows with their operation shown first, as Flink
/// prints them: an `op` column of `+I`, `-U`, `+U` or `-D`.
fn with_op_first(batch: &RecordBatch) -> Result<RecordBatch> {
    let last = batch.num_columns() - 1;
    let ops: StringArray = batch
        .column(last)
        .as_primitive::<Int8Type>()
        .values()
        .iter()
        .map(|&code| Some(RowOp::from_code(code).map_or("?", RowOp::short)))
        .collect();
    let schema = batch.schema();
    let mut fields = vec![Arc::new(Field::new("op", DataType::Utf8, false))];
    fields.extend(schema.fields()[..last].iter().cloned());
    let mut columns: Vec<ArrayRef> = vec![Arc::new(ops)];
    columns.extend(batch.columns()[..last].iter().cloned());
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let batch = if is_updating(&batch.schema()) {
            with_op_first(&batch)?
        } else {
            batch
        };
        let mut buf = Vec::new();
        match self.format {
            StdoutFormat::Table => self.write_table(&batch, &mut buf)?,
            StdoutFormat::Json => {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                w.write(&batch)?;
                w.finish()?;
            }
            StdoutFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(!self.header_written)
                    .build(&mut buf);
                w.write(&batch)?;
                self.header_written = true;
            }
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&buf)
            .and_then(|()| out.flush())
            .map_err(stdout_error)
    }

    async fn finish(&mut self) -> Result<()> {
        if self.format == StdoutFormat::Table && self.header_written {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", self.rule())
                .and_then(|()| out.flush())
                .map_err(stdout_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn a_wider_value_prints_the_header_again_and_rows_stay_aligned() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = |v: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap()
        };
        let mut sink = StdoutSink {
            format: StdoutFormat::Table,
            header_written: false,
            widths: Vec::new(),
        };
        let mut buf = Vec::new();
        sink.write_table(&batch(vec![1, 22]), &mut buf).unwrap();
        sink.write_table(&batch(vec![3]), &mut buf).unwrap();
        sink.write_table(&batch(vec![4444]), &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let expected = "\
+----+
| n  |
+----+
| 1  |
| 22 |
| 3  |
+----+
+------+
| n    |
+------+
| 4444 |
";
        assert_eq!(text, expected);
    }
}
