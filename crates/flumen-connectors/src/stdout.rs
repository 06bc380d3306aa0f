//! The `stdout` sink: prints rows as a table, JSON lines or CSV.

use std::io::Write;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_types::{FlumenError, Result};

use crate::Options;
use crate::options::OptionSpec;

/// Options of the `stdout` connector.
pub(crate) const OPTIONS: &[OptionSpec] =
    &[OptionSpec::optional("format", "table (default), json or csv")];

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

impl StdoutSinkFactory {
    /// A sink printing in `format`.
    pub fn new(format: StdoutFormat) -> Self {
        StdoutSinkFactory { format }
    }

    pub(crate) fn from_options(options: &Options) -> Result<Self> {
        Ok(Self::new(StdoutFormat::parse(options.get("format").unwrap_or("table"))?))
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
        }))
    }
}

struct StdoutSink {
    format: StdoutFormat,
    header_written: bool,
}

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let mut buf = Vec::new();
        match self.format {
            StdoutFormat::Table => {
                let table = arrow::util::pretty::pretty_format_batches(&[batch])?;
                writeln!(buf, "{table}").map_err(|e| FlumenError::io(e.to_string()))?;
            }
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
            .map_err(|e| FlumenError::io(format!("writing to stdout: {e}")))
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
