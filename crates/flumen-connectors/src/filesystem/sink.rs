//! Writes files under a directory: each subtask writes its own files, starts a
//! new one when the current one passes `rolling_size` bytes, and gives a file
//! its final name only once it is complete, so readers never see half a file.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_types::{FlumenError, Result};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::file::properties::WriterProperties;
use tokio::io::AsyncWriteExt;

use super::Format;
use super::location::Location;
use crate::Options;

const DEFAULT_ROLLING_SIZE: u64 = 128 << 20;

/// Rows per Parquet row group. The writer holds a whole row group in memory
/// and readers fetch one at a time, so this bounds both sides' memory
/// (the library default of a million rows held ~900 MiB for two writers).
const PARQUET_ROW_GROUP_ROWS: usize = 128 * 1024;

/// Makes one file writer per subtask.
pub struct FileSinkFactory {
    location: Location,
    format: Format,
    rolling_size: u64,
    schema: SchemaRef,
    /// Distinguishes the files of this sink from those of other runs and sinks.
    prefix: String,
}

impl FileSinkFactory {
    /// A sink writing batches of `schema` under the `path` option. A local
    /// directory is created now, so an unwritable path fails before the job.
    pub fn try_new(options: &Options, schema: SchemaRef, unique: &str) -> Result<Self> {
        let location = Location::parse(options.required("path")?)?;
        let format = Format::parse(options)?;
        options.choice("changelog", &["true", "false"], "false")?;
        let rolling_size = options
            .parse::<u64>("rolling_size")?
            .unwrap_or(DEFAULT_ROLLING_SIZE);
        if let Some(dir) = &location.local {
            std::fs::create_dir_all(dir).map_err(|e| {
                FlumenError::io(format!(
                    "cannot write to sink path '{}': {e}",
                    location.display
                ))
            })?;
            let probe = dir.join(format!(".flumen-probe-{unique}"));
            std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|e| {
                    FlumenError::io(format!(
                        "cannot write to sink path '{}': {e}",
                        location.display
                    ))
                })?;
        }
        Ok(FileSinkFactory {
            location,
            format,
            rolling_size: rolling_size.max(1),
            schema,
            prefix: unique.to_string(),
        })
    }
}

impl SinkFactory for FileSinkFactory {
    fn describe(&self) -> String {
        format!(
            "Sink: filesystem {} ({:?})",
            self.location.display, self.format
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(FileSink {
            store: self.location.store.clone(),
            dir: self.location.path.clone(),
            display: self.location.display.clone(),
            format: self.format,
            rolling_size: self.rolling_size,
            schema: self.schema.clone(),
            name: format!("part-{}-{}", self.prefix, ctx.subtask),
            next_file: 0,
            current: None,
        }))
    }
}

struct FileSink {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    display: String,
    format: Format,
    rolling_size: u64,
    schema: SchemaRef,
    name: String,
    next_file: u64,
    current: Option<OpenFile>,
}

struct OpenFile {
    temp: Path,
    target: Path,
    writer: FileWriter,
    bytes: u64,
}

enum FileWriter {
    Text(Box<BufWriter>),
    Parquet(Box<AsyncArrowWriter<BufWriter>>),
}

/// An I/O error of the sink, naming its path.
fn write_error(display: &str, e: impl std::fmt::Display) -> FlumenError {
    FlumenError::io(format!("writing sink path '{display}': {e}"))
}

fn parquet_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP_ROWS))
        .build()
}

impl FileSink {
    fn err(&self, e: impl std::fmt::Display) -> FlumenError {
        write_error(&self.display, e)
    }

    fn open(&mut self) -> Result<OpenFile> {
        // Zero-padded, so that listing the files in name order lists each
        // subtask's files in the order they were written.
        let file = format!(
            "{}-{:06}.{}",
            self.name,
            self.next_file,
            self.format.extension()
        );
        self.next_file += 1;
        let target = self.dir.clone().join(file.as_str());
        let temp = self
            .dir
            .clone()
            .join(format!(".{file}.inprogress").as_str());
        let out = BufWriter::new(self.store.clone(), temp.clone());
        let writer = match self.format {
            Format::Parquet => FileWriter::Parquet(Box::new(
                AsyncArrowWriter::try_new(out, self.schema.clone(), Some(parquet_properties()))
                    .map_err(|e| self.err(e))?,
            )),
            _ => FileWriter::Text(Box::new(out)),
        };
        Ok(OpenFile {
            temp,
            target,
            writer,
            bytes: 0,
        })
    }

    async fn close(&mut self) -> Result<()> {
        let Some(file) = self.current.take() else {
            return Ok(());
        };
        match file.writer {
            FileWriter::Text(mut w) => w.shutdown().await.map_err(|e| self.err(e))?,
            FileWriter::Parquet(w) => {
                w.close().await.map_err(|e| self.err(e))?;
            }
        }
        self.store
            .rename(&file.temp, &file.target)
            .await
            .map_err(|e| self.err(e))
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if self.current.is_none() {
            self.current = Some(self.open()?);
        }
        let format = self.format;
        let display = &self.display;
        let file = self.current.as_mut().expect("opened above");
        match &mut file.writer {
            FileWriter::Parquet(w) => {
                w.write(&batch).await.map_err(|e| write_error(display, e))?;
                file.bytes = w.bytes_written() as u64 + w.in_progress_size() as u64;
            }
            FileWriter::Text(w) => {
                let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 2);
                if format == Format::Json {
                    let mut json = arrow::json::LineDelimitedWriter::new(&mut buf);
                    json.write(&batch)?;
                    json.finish()?;
                } else {
                    let mut csv = arrow::csv::WriterBuilder::new()
                        .with_header(file.bytes == 0)
                        .build(&mut buf);
                    csv.write(&batch)?;
                }
                w.write_all(&buf)
                    .await
                    .map_err(|e| write_error(display, e))?;
                file.bytes += buf.len() as u64;
            }
        }
        if file.bytes >= self.rolling_size {
            self.close().await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.close().await
    }
}
