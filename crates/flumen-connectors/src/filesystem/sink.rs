//! Writes files under a directory: each subtask writes its own files, starts a
//! new one when the current one passes `rolling_size` bytes, and gives a file
//! its final name only once it is complete, so readers never see half a file.
//!
//! With checkpoints on, files are committed in two phases: what a subtask
//! writes before barrier `n` goes to hidden files carrying `n` in their
//! names (`.part-<job>-<sink>-<subtask>-<n>-<seq>.json`), closed at the
//! barrier and renamed into place (the leading `.` dropped) only when
//! checkpoint `n` completes. A restart renames those of checkpoints up to the
//! one it resumes from and deletes the rest, so every row is committed once.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_types::{FlumenError, Result};
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::file::properties::WriterProperties;
use tokio::io::AsyncWriteExt;

use super::Format;
use crate::Options;
use flumen_state::Location;

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

#[async_trait]
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
            epoch: ctx.first_checkpoint,
            staged: Vec::new(),
        }))
    }

    /// Renames the hidden files of this sink staged for checkpoints up to
    /// `committed` into place and deletes every other hidden file of it
    /// (staged after `committed`, or cut off while being written).
    async fn recover(&self, committed: Option<u64>) -> Result<()> {
        let ours = format!(".part-{}-", self.prefix);
        let display = &self.location.display;
        let files: Vec<Path> = self
            .location
            .store
            .list(Some(&self.location.path))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| write_error(display, e))?;
        for file in files {
            let Some(name) = file.filename().filter(|n| n.starts_with(&ours)) else {
                continue;
            };
            let finished = staged_checkpoint(name).filter(|&n| committed.is_some_and(|c| n <= c));
            let store = &self.location.store;
            let outcome = match finished {
                Some(_) => {
                    let target = self.location.path.clone().join(&name[1..]);
                    store.rename(&file, &target).await
                }
                None => store.delete(&file).await,
            };
            match outcome {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(write_error(display, e)),
            }
        }
        Ok(())
    }
}

/// The checkpoint id in the name of a staged file
/// (`.part-<job>-<sink>-<subtask>-<checkpoint>-<seq>.<ext>`).
fn staged_checkpoint(name: &str) -> Option<u64> {
    let stem = name.rsplit_once('.')?.0;
    let mut parts = stem.rsplit('-');
    let seq = parts.next()?;
    let checkpoint = parts.next()?;
    seq.parse::<u64>().ok()?;
    checkpoint.parse::<u64>().ok()
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
    /// With checkpoints on: the checkpoint the rows being written belong to.
    epoch: Option<u64>,
    /// Closed hidden files waiting for their checkpoint: (checkpoint, file, final name).
    staged: Vec<(u64, Path, Path)>,
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

/// An I/O error of the sink, naming its path, with its cause kept (a retry
/// may cure it).
fn write_error(display: &str, e: impl std::error::Error + Send + Sync + 'static) -> FlumenError {
    FlumenError::transient(format!("writing sink path '{display}'"), e)
}

fn parquet_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP_ROWS))
        .build()
}

impl FileSink {
    fn err(&self, e: impl std::error::Error + Send + Sync + 'static) -> FlumenError {
        write_error(&self.display, e)
    }

    fn open(&mut self) -> Result<OpenFile> {
        // Zero-padded, so that listing the files in name order lists each
        // subtask's files in the order they were written.
        let (file, temp) = match self.epoch {
            Some(epoch) => {
                let file = format!(
                    "{}-{epoch:08}-{:04}.{}",
                    self.name,
                    self.next_file,
                    self.format.extension()
                );
                let temp = format!(".{file}");
                (file, temp)
            }
            None => {
                let file = format!(
                    "{}-{:06}.{}",
                    self.name,
                    self.next_file,
                    self.format.extension()
                );
                let temp = format!(".{file}.inprogress");
                (file, temp)
            }
        };
        self.next_file += 1;
        let target = self.dir.clone().join(file.as_str());
        let temp = self.dir.clone().join(temp.as_str());
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
        match self.epoch {
            // Complete but hidden until its checkpoint completes.
            Some(epoch) => {
                self.staged.push((epoch, file.temp, file.target));
                Ok(())
            }
            None => self
                .store
                .rename(&file.temp, &file.target)
                .await
                .map_err(|e| self.err(e)),
        }
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

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<String>> {
        self.close().await?;
        self.epoch = Some(checkpoint + 1);
        self.next_file = 0;
        Ok(self
            .staged
            .iter()
            .filter(|(n, _, _)| *n <= checkpoint)
            .map(|(_, temp, _)| temp.to_string())
            .collect())
    }

    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        let mut keep = Vec::new();
        for (n, temp, target) in std::mem::take(&mut self.staged) {
            if n > checkpoint {
                keep.push((n, temp, target));
                continue;
            }
            self.store
                .rename(&temp, &target)
                .await
                .map_err(|e| self.err(e))?;
        }
        self.staged = keep;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_names_carry_their_checkpoint() {
        assert_eq!(
            staged_checkpoint(".part-17-0-3-00000012-0002.json"),
            Some(12)
        );
        assert_eq!(
            staged_checkpoint(".part-17-0-3-000001.json.inprogress"),
            None
        );
        assert_eq!(staged_checkpoint(".part-17-0-3-x-0001.csv"), None);
    }
}
