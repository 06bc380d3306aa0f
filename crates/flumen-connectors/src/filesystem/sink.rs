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

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, ListBuilder, RecordBatch, StringArray, StringBuilder, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_state::{KeyGroupRange, LocalFile, Location, StateSnapshot};
use flumen_types::{FlumenError, Result};
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::Format;
use super::dictionary_choice;
use super::output::{Output, Sealed, Upload};
use super::parquet_file::ParquetFile;
use super::partition::Partitioning;
use crate::Options;

const DEFAULT_ROLLING_SIZE: u64 = 128 << 20;

/// Rows per Parquet row group. The writer holds a whole row group in memory
/// and readers fetch one at a time, so this bounds both sides' memory
/// (the library default of a million rows held ~900 MiB for two writers).
const PARQUET_ROW_GROUP_ROWS: usize = 128 * 1024;

/// The most bytes a column chunk's dictionary grows to before the column
/// falls back to plain values. parquet-rs's 1 MiB holds 131,072 `BIGINT`s,
/// a whole row group's worth, so ids and timestamps were dictionary-encoded
/// (every value hashed) to no gain; at 256 KiB they fall back after a
/// quarter of the group while columns of few values keep their dictionary
/// (q10 at 10 M events: 12 % less user CPU, files no larger).
const PARQUET_DICTIONARY_BYTES: usize = 256 << 10;

/// Makes one file writer per subtask.
pub struct FileSinkFactory {
    location: Location,
    format: Format,
    /// How Parquet files are written (`parquet.compression`).
    parquet: WriterProperties,
    rolling_size: u64,
    /// What files hold: the input's columns less the partition columns.
    file_schema: SchemaRef,
    partitions: Partitioning,
    /// Distinguishes the files of this sink from those of other runs and sinks.
    prefix: String,
}

impl FileSinkFactory {
    /// A sink writing batches of `schema` under the `path` option. A local
    /// directory is created now, so an unwritable path fails before the job.
    pub fn try_new(options: &Options, schema: SchemaRef, unique: &str) -> Result<Self> {
        let location = super::location(options)?;
        let format = Format::parse(options)?;
        let partitions = Partitioning::new(options.get("partition_by"), &schema)?;
        let commit = options.choice("s3.commit", &["multipart", "copy"], "multipart")?;
        let mut location = location;
        if commit == "copy" {
            // Staged as hidden objects, copied into place on commit.
            location.multipart = None;
        }
        options.choice("changelog", &["true", "false"], "false")?;
        let rolling_size = options
            .parse::<u64>("rolling_size")?
            .unwrap_or(DEFAULT_ROLLING_SIZE);
        let parquet = parquet_properties(parquet_compression(options, format)?);
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
            parquet,
            rolling_size: rolling_size.max(1),
            file_schema: partitions.file_schema(&schema)?,
            partitions,
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
            location: self.location.clone(),
            store: self.location.store.clone(),
            local: self.location.local.is_some().then(LocalFileSystem::new),
            uploads: self.location.multipart.clone(),
            dir: self.location.path.clone(),
            display: self.location.display.clone(),
            format: self.format,
            parquet: self.parquet.clone(),
            rolling_size: self.rolling_size,
            schema: self.file_schema.clone(),
            partitions: self.partitions.clone(),
            name: format!("part-{}-{}", self.prefix, ctx.subtask),
            next_file: 0,
            open: HashMap::new(),
            epoch: ctx.first_checkpoint,
            staged: Vec::new(),
            range: ctx.key_groups.range,
            checked: false,
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
            .map_err(|e| self.location.error("listing sink path", e))?;
        for file in files {
            let Some(name) = file.filename().filter(|n| n.starts_with(&ours)) else {
                continue;
            };
            let finished = staged_checkpoint(name).filter(|&n| committed.is_some_and(|c| n <= c));
            let store = &self.location.store;
            let outcome = match finished {
                Some(_) => {
                    // Its own directory: a partition's, under a partitioned table.
                    let mut dir: Vec<_> = file.parts().collect();
                    dir.pop();
                    let target = Path::from_iter(dir).join(&name[1..]);
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
    location: Location,
    store: Arc<dyn ObjectStore>,
    /// For a local directory: where the store keeps a path, so that files
    /// are written there directly ([`LocalFile`]).
    local: Option<LocalFileSystem>,
    /// The store again where files are staged as resumable uploads (S3).
    uploads: Option<Arc<dyn MultipartStore>>,
    dir: Path,
    display: String,
    format: Format,
    parquet: WriterProperties,
    rolling_size: u64,
    /// The columns written into files: the input's less its partition columns.
    schema: SchemaRef,
    partitions: Partitioning,
    name: String,
    next_file: u64,
    /// Open files by partition directory ("" when not partitioned).
    open: HashMap<String, OpenFile>,
    /// With checkpoints on: the checkpoint the rows being written belong to.
    epoch: Option<u64>,
    /// Closed files waiting for their checkpoint.
    staged: Vec<Staged>,
    /// The key groups this subtask owns: its staged uploads are kept in the
    /// checkpoint under the first.
    range: KeyGroupRange,
    /// Whether the store has answered a listing of `dir`, which tells a
    /// missing bucket or rejected credentials before the first upload
    /// (some S3-compatible servers make a bucket on upload).
    checked: bool,
}

/// A closed file that becomes visible when its checkpoint completes.
struct Staged {
    checkpoint: u64,
    file: StagedFile,
}

enum StagedFile {
    /// A hidden file renamed into place on commit.
    Hidden { temp: Path, target: Path },
    /// A sealed upload completed on commit.
    Upload(Sealed),
}

struct OpenFile {
    temp: Path,
    target: Path,
    writer: FileWriter,
    bytes: u64,
}

enum FileWriter {
    Text(Output),
    Parquet(Box<ParquetFile>),
}

/// An I/O error of the sink, naming its path, with its cause kept (a retry
/// may cure it).
fn write_error(display: &str, e: impl std::error::Error + Send + Sync + 'static) -> FlumenError {
    FlumenError::transient(format!("writing sink path '{display}'"), e)
}

/// The codecs `parquet.compression` takes, by Flink's names (any case).
const PARQUET_CODECS: &[&str] = &["uncompressed", "snappy", "gzip", "lz4", "zstd"];

/// The codec of Parquet files: `parquet.compression`, snappy by default as
/// in Flink and Spark. It shrinks files (and the bytes the kernel copies)
/// for little CPU; `lz4` is Parquet's `LZ4_RAW`.
fn parquet_compression(options: &Options, format: Format) -> Result<Compression> {
    let Some(value) = options.get("parquet.compression") else {
        return Ok(Compression::SNAPPY);
    };
    if format != Format::Parquet {
        return Err(FlumenError::config(format!(
            "option parquet.compression applies only to format = 'parquet', not '{}'",
            format.extension()
        )));
    }
    Ok(match value.to_ascii_lowercase().as_str() {
        "uncompressed" => Compression::UNCOMPRESSED,
        "snappy" => Compression::SNAPPY,
        "gzip" => Compression::GZIP(GzipLevel::default()),
        "lz4" => Compression::LZ4_RAW,
        "zstd" => Compression::ZSTD(ZstdLevel::default()),
        _ => {
            return Err(FlumenError::config(format!(
                "option parquet.compression = '{value}' is not one of: {}",
                PARQUET_CODECS.join(", ")
            )));
        }
    })
}

fn parquet_properties(compression: Compression) -> WriterProperties {
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP_ROWS))
        .set_compression(compression)
        .set_dictionary_page_size_limit(PARQUET_DICTIONARY_BYTES)
        .build()
}

impl FileSink {
    fn err(&self, e: impl std::error::Error + Send + Sync + 'static) -> FlumenError {
        write_error(&self.display, e)
    }

    /// Opens a file for `partition`, whose first rows will be `first`.
    async fn open(&mut self, partition: &str, first: &RecordBatch) -> Result<OpenFile> {
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
        let mut dir = self.dir.clone();
        for part in partition.split('/').filter(|p| !p.is_empty()) {
            dir = dir.join(part);
        }
        let target = dir.clone().join(file.as_str());
        if self.uploads.is_some() && !self.checked {
            self.store
                .list_with_delimiter(Some(&self.dir))
                .await
                .map_err(|e| self.location.error("writing sink path", e))?;
            self.checked = true;
        }
        let (temp, out) = match &self.uploads {
            // An upload is invisible until completed: it goes to its final name.
            Some(uploads) => (
                target.clone(),
                Output::Upload(Box::new(
                    Upload::start(uploads.clone(), target.clone())
                        .await
                        .map_err(|e| self.location.error("writing sink path", e))?,
                )),
            ),
            None => {
                let temp = dir.join(temp.as_str());
                let out = match &self.local {
                    Some(local) => {
                        let path = local.path_to_filesystem(&temp).map_err(|e| self.err(e))?;
                        let file = LocalFile::create(path).await.map_err(|e| self.err(e))?;
                        Output::Local(Box::new(file))
                    }
                    None => {
                        Output::Buffered(Box::new(BufWriter::new(self.store.clone(), temp.clone())))
                    }
                };
                (temp, out)
            }
        };
        let writer = match self.format {
            Format::Parquet => FileWriter::Parquet(Box::new(
                ParquetFile::try_new(
                    out,
                    self.schema.clone(),
                    dictionary_choice::properties(&self.parquet, first),
                )
                .map_err(|e| self.err(e))?,
            )),
            _ => FileWriter::Text(out),
        };
        Ok(OpenFile {
            temp,
            target,
            writer,
            bytes: 0,
        })
    }

    /// Closes every open file.
    async fn close_all(&mut self) -> Result<()> {
        let open: Vec<OpenFile> = self.open.drain().map(|(_, f)| f).collect();
        for file in open {
            self.close(file).await?;
        }
        Ok(())
    }

    async fn close(&mut self, file: OpenFile) -> Result<()> {
        let sealed = match file.writer {
            FileWriter::Text(mut out) => out.finish().await.map_err(|e| self.err(e))?,
            FileWriter::Parquet(w) => w.finish().await.map_err(|e| self.err(e))?,
        };
        let staged = match sealed {
            Some(sealed) => StagedFile::Upload(sealed),
            None => StagedFile::Hidden {
                temp: file.temp,
                target: file.target,
            },
        };
        match self.epoch {
            // Complete but hidden until its checkpoint completes.
            Some(checkpoint) => {
                self.staged.push(Staged {
                    checkpoint,
                    file: staged,
                });
                Ok(())
            }
            None => make_visible(&self.location, &staged).await,
        }
    }

    /// Writes `batch` (already without partition columns) to the open file
    /// of `partition`, opening one when there is none.
    async fn write_to(&mut self, partition: &str, batch: &RecordBatch) -> Result<()> {
        if !self.open.contains_key(partition) {
            let file = self.open(partition, batch).await?;
            self.open.insert(partition.to_string(), file);
        }
        let format = self.format;
        let display = &self.display;
        let file = self
            .open
            .get_mut(partition)
            .expect("opened above when missing");
        match &mut file.writer {
            FileWriter::Parquet(w) => {
                w.write(batch).await.map_err(|e| write_error(display, e))?;
                file.bytes = w.bytes();
            }
            FileWriter::Text(w) => {
                let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 2);
                if format == Format::Json {
                    let mut json = arrow::json::LineDelimitedWriter::new(&mut buf);
                    json.write(batch)?;
                    json.finish()?;
                } else {
                    let mut csv = arrow::csv::WriterBuilder::new()
                        .with_header(file.bytes == 0)
                        .build(&mut buf);
                    csv.write(batch)?;
                }
                w.write_all(&buf)
                    .await
                    .map_err(|e| write_error(display, e))?;
                file.bytes += buf.len() as u64;
            }
        }
        if file.bytes >= self.rolling_size {
            let file = self.open.remove(partition).expect("written to just above");
            self.close(file).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if self.partitions.is_empty() {
            return self.write_to("", &batch).await;
        }
        for (dir, rows) in self.partitions.split(&batch)? {
            self.write_to(&dir, &rows).await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.close_all().await
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<String>> {
        self.close_all().await?;
        self.epoch = Some(checkpoint + 1);
        self.next_file = 0;
        Ok(self
            .staged
            .iter()
            .filter(|s| s.checkpoint <= checkpoint)
            .map(|s| match &s.file {
                StagedFile::Hidden { temp, .. } => temp.to_string(),
                StagedFile::Upload(sealed) => sealed.path.to_string(),
            })
            .collect())
    }

    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        let mut keep = Vec::new();
        for staged in std::mem::take(&mut self.staged) {
            if staged.checkpoint > checkpoint {
                keep.push(staged);
                continue;
            }
            make_visible(&self.location, &staged.file).await?;
        }
        self.staged = keep;
        Ok(())
    }

    /// The sealed uploads not yet completed: a run resuming from this
    /// checkpoint completes them (hidden files are found by listing).
    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::default();
        let uploads: Vec<(u64, &Sealed)> = self
            .staged
            .iter()
            .filter_map(|s| match &s.file {
                StagedFile::Upload(sealed) => Some((s.checkpoint, sealed)),
                StagedFile::Hidden { .. } => None,
            })
            .collect();
        if uploads.is_empty() {
            return Ok(snapshot);
        }
        let batch = uploads_batch(&uploads)?;
        snapshot.add(0, &batch, &vec![self.range.start; uploads.len()])?;
        Ok(snapshot)
    }

    fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        let Some(batch) = snapshot.rows(0, self.range)? else {
            return Ok(());
        };
        for (checkpoint, sealed) in read_uploads(&batch)? {
            self.staged.push(Staged {
                checkpoint,
                file: StagedFile::Upload(sealed),
            });
        }
        Ok(())
    }
}

/// Makes a staged file visible: renames a hidden file into place or
/// completes an upload.
async fn make_visible(location: &Location, file: &StagedFile) -> Result<()> {
    match file {
        StagedFile::Hidden { temp, target } => location
            .store
            .rename(temp, target)
            .await
            .map_err(|e| write_error(&location.display, e)),
        StagedFile::Upload(sealed) => {
            let uploads = location.multipart.as_ref().ok_or_else(|| {
                FlumenError::internal("an upload staged on a store without uploads")
            })?;
            sealed
                .complete(uploads.as_ref(), location.store.as_ref())
                .await
                .map_err(|e| location.error("committing a file of sink path", e))
        }
    }
}

fn uploads_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("checkpoint", DataType::UInt64, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("upload_id", DataType::Utf8, false),
        Field::new(
            "parts",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            false,
        ),
    ]))
}

/// Sealed uploads as a state table: checkpoint, path, upload id, part ids.
fn uploads_batch(uploads: &[(u64, &Sealed)]) -> Result<RecordBatch> {
    let mut parts = ListBuilder::new(StringBuilder::new());
    for (_, sealed) in uploads {
        for part in &sealed.parts {
            parts.values().append_value(&part.content_id);
        }
        parts.append(true);
    }
    Ok(RecordBatch::try_new(
        uploads_schema(),
        vec![
            Arc::new(UInt64Array::from_iter_values(uploads.iter().map(|u| u.0))),
            Arc::new(StringArray::from_iter_values(
                uploads.iter().map(|u| u.1.path.as_ref()),
            )),
            Arc::new(StringArray::from_iter_values(
                uploads.iter().map(|u| u.1.id.as_str()),
            )),
            Arc::new(parts.finish()),
        ],
    )?)
}

fn read_uploads(batch: &RecordBatch) -> Result<Vec<(u64, Sealed)>> {
    if batch.schema().fields() != uploads_schema().fields() {
        return Err(FlumenError::state(format!(
            "staged uploads stored as {:?}, expected {:?}",
            batch.schema(),
            uploads_schema()
        )));
    }
    let layout = || FlumenError::state("staged uploads of another layout");
    let checkpoints = batch
        .column(0)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(layout)?;
    let paths = batch.column(1).as_string_opt::<i32>().ok_or_else(layout)?;
    let ids = batch.column(2).as_string_opt::<i32>().ok_or_else(layout)?;
    let parts = batch.column(3).as_list_opt::<i32>().ok_or_else(layout)?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let list = parts.value(i);
        let list = list.as_string_opt::<i32>().ok_or_else(layout)?;
        out.push((
            checkpoints.value(i),
            Sealed {
                path: Path::from(paths.value(i)),
                id: ids.value(i).to_string(),
                parts: list
                    .iter()
                    .map(|p| PartId {
                        content_id: p.unwrap_or_default().to_string(),
                    })
                    .collect(),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use flumen_runtime::JobMetrics;
    use object_store::memory::InMemory;

    /// A sink over an in-memory store that takes uploads as S3 does.
    fn upload_sink() -> (Arc<InMemory>, FileSinkFactory) {
        let store = Arc::new(InMemory::new());
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let factory = FileSinkFactory {
            location: Location {
                store: store.clone(),
                path: Path::from("out"),
                display: "s3://bucket/out".into(),
                local: None,
                multipart: Some(store.clone()),
            },
            format: Format::Json,
            parquet: parquet_properties(Compression::SNAPPY),
            rolling_size: 1 << 20,
            file_schema: schema,
            partitions: Partitioning::default(),
            prefix: "t".into(),
        };
        (store, factory)
    }

    fn run(factory: &FileSinkFactory, first_checkpoint: u64) -> Box<dyn Sink> {
        let mut ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        ctx.first_checkpoint = Some(first_checkpoint);
        factory.create(&ctx).unwrap()
    }

    async fn visible(store: &InMemory) -> Vec<String> {
        let mut out = Vec::new();
        for meta in store.list(None).try_collect::<Vec<_>>().await.unwrap() {
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            out.push(String::from_utf8(bytes.to_vec()).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn uploads_sealed_in_a_checkpoint_are_completed_by_the_run_that_resumes_it() {
        let (store, factory) = upload_sink();
        let mut first = run(&factory, 1);
        let schema = factory.file_schema.clone();
        let rows =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        first.write(rows).await.unwrap();
        first.pre_commit(1).await.unwrap();
        let snapshot = first.snapshot_state().unwrap();
        // Killed after checkpoint 1 completed, before its commit.
        drop(first);
        assert!(
            visible(&store).await.is_empty(),
            "nothing visible before a commit"
        );
        let mut second = run(&factory, 2);
        second.restore_state(&snapshot).unwrap();
        second.pre_commit(2).await.unwrap();
        second.commit(2).await.unwrap();
        assert_eq!(visible(&store).await, vec!["{\"a\":1}\n{\"a\":2}\n"]);
        // Killed again before checkpoint 2 completed: a third run resumes
        // checkpoint 1 once more and finds its upload done.
        let mut third = run(&factory, 2);
        third.restore_state(&snapshot).unwrap();
        third.commit(2).await.unwrap();
        assert_eq!(visible(&store).await.len(), 1);
    }

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
