//! Reads a file or a directory of files. JSON-lines and CSV files are split
//! over subtasks whole (file `j` goes to subtask `j % parallelism`) and
//! decoded in large chunks. A table with event time has its files read side
//! by side, a batch from each in turn, with a watermark per file; the
//! subtask's watermark is the minimum over the files it has not finished; only a chunk that fails is decoded again line by
//! line, to name (or drop) exactly the bad records. Parquet files are split
//! by row group (row group `g` of file `j` goes to subtask
//! `(j + g) % parallelism`), so even one large file is read in parallel.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, StringArray, UInt32Array};
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use async_trait::async_trait;
use bytes::Bytes;
use flumen_runtime::{JobMetrics, Source, SourceFactory, TaskContext, WatermarkStrategy};
use flumen_types::{DEFAULT_BATCH_SIZE, FlumenError, Message, Result};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
// ParquetObjectReader is deprecated in favour of hand-written readers; it is
// still the maintained way to read Parquet through object_store, so keep it
// until arrow-rs ships its replacement.
use crate::clocks::SplitClocks;
use crate::throttle::Throttle;
use flumen_state::checkpoint::SplitPosition;
use object_store::{GetOptions, GetRange};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_reader::ParquetRecordBatchStream;

use super::Format;
use super::partition::{NULL_PARTITION, Partitioning, unescape};
use crate::Options;
use crate::bad_data::{BadData, dead_letter_record};
use crate::format::TextDecoder;
use flumen_state::Location;

/// Bytes of text decoded at once.
const CHUNK_BYTES: usize = 1 << 20;

/// Makes one file source per subtask over the files listed at plan time.
pub struct FileSourceFactory {
    location: Location,
    files: Vec<(Path, u64)>,
    format: Format,
    /// Columns of the table, in declaration order (CSV without a header is
    /// positional; with one, its columns are matched by name).
    table_schema: SchemaRef,
    /// Indices of the columns the query reads.
    projection: Vec<usize>,
    schema: SchemaRef,
    /// Partition columns: read from directory names, not from files.
    partitions: Partitioning,
    bad_data: BadData,
    header: bool,
    rows_per_second: Option<u64>,
}

impl FileSourceFactory {
    /// Lists the files under `path`; a missing path is an error that names it.
    pub async fn try_new(
        options: &Options,
        table_schema: &SchemaRef,
        projection: Option<&[usize]>,
    ) -> Result<Self> {
        let location = super::location(options)?;
        let format = Format::parse(options)?;
        let partitions = Partitioning::new(options.get("partition_by"), table_schema)?;
        let bad_data = BadData::parse(options)?;
        let header = options.choice("header", &["true", "false"], "true")? == "true";
        let rows_per_second = options.parse::<u64>("rows_per_second")?;
        let files = list_files(&location).await?;
        let projection: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..table_schema.fields().len()).collect(),
        };
        let schema = Arc::new(table_schema.project(&projection)?);
        Ok(FileSourceFactory {
            location,
            files,
            format,
            table_schema: table_schema.clone(),
            projection,
            schema,
            partitions,
            bad_data,
            header,
            rows_per_second,
        })
    }
}

/// The files of the table: the object at `path`, or those under it
/// (skipping hidden ones), sorted.
async fn list_files(location: &Location) -> Result<Vec<(Path, u64)>> {
    if let Some(local) = &location.local {
        if !local.exists() {
            return Err(FlumenError::io(format!(
                "input path '{}' does not exist",
                location.display
            )));
        }
        if let Ok(meta) = location.store.head(&location.path).await {
            return Ok(vec![(meta.location, meta.size)]);
        }
        return list_under(location).await;
    }
    // An object store: a prefix first (one request tells an unreachable
    // server, rejected credentials or a missing bucket), then an object.
    let files = list_under(location).await?;
    if !files.is_empty() {
        return Ok(files);
    }
    match location.store.head(&location.path).await {
        Ok(meta) => Ok(vec![(meta.location, meta.size)]),
        Err(object_store::Error::NotFound { .. }) => Err(FlumenError::io(format!(
            "input path '{}' holds no files",
            location.display
        ))),
        Err(e) => Err(location.error("reading input path", e)),
    }
}

async fn list_under(location: &Location) -> Result<Vec<(Path, u64)>> {
    let mut files = Vec::new();
    let mut listing = location.store.list(Some(&location.path));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| location.error("listing input path", e))?;
        let name = meta.location.filename().unwrap_or_default();
        if name.starts_with('.') || name.starts_with('_') || name.ends_with(".inprogress") {
            continue;
        }
        files.push((meta.location, meta.size));
    }
    files.sort();
    Ok(files)
}

impl SourceFactory for FileSourceFactory {
    fn describe(&self) -> String {
        format!(
            "Source: filesystem {} ({:?}, {} files) columns [{}]",
            self.location.display,
            self.format,
            self.files.len(),
            crate::column_list(&self.schema)
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(self.source(ctx, None)?))
    }

    fn bounded_bytes(&self) -> Option<u64> {
        Some(self.files.iter().map(|(_, size)| size).sum())
    }

    /// With event time, a subtask reads all its files side by side (a batch
    /// from each in turn) and its watermark is the minimum over the files it
    /// has not finished, so files need not be in event-time order.
    fn create_with_watermarks(
        &self,
        ctx: &TaskContext,
        watermarks: &Arc<dyn WatermarkStrategy>,
    ) -> Result<Option<Box<dyn Source>>> {
        Ok(Some(Box::new(self.source(ctx, Some(watermarks))?)))
    }
}

impl FileSourceFactory {
    fn source(
        &self,
        ctx: &TaskContext,
        watermarks: Option<&Arc<dyn WatermarkStrategy>>,
    ) -> Result<FileSource> {
        let whole_files = self.format != Format::Parquet;
        let files: VecDeque<Split> = self
            .files
            .iter()
            .enumerate()
            .filter(|(j, _)| !whole_files || j % ctx.parallelism == ctx.subtask)
            .enumerate()
            .map(|(id, (j, (path, size)))| Split {
                path: path.clone(),
                shown: self.location.show(path),
                size: *size,
                index: j,
                id,
            })
            .collect();
        let progress = files
            .iter()
            .map(|f| Progress {
                path: f.path.to_string(),
                index: f.index,
                read: if whole_files {
                    Read::Text {
                        offset: 0,
                        lines: 0,
                    }
                } else {
                    Read::Parquet {
                        groups: Vec::new(),
                        opened: false,
                    }
                },
                done: false,
            })
            .collect();
        let clocks = watermarks.map(|w| SplitClocks::new(w, files.len(), None));
        let read = PartitionedRead::new(&self.partitions, &self.table_schema, &self.projection)?;
        let partition_values = files
            .iter()
            .map(|f| read.values(&self.location, f))
            .collect::<Result<_>>()?;
        Ok(FileSource {
            store: self.location.store.clone(),
            max_open: if clocks.is_some() {
                files.len().max(1)
            } else {
                1
            },
            files,
            format: self.format,
            table_schema: read.file_table,
            projection: read.projection,
            schema: read.schema,
            output: self.schema.clone(),
            fill: read.fill,
            partition_values,
            bad_data: self.bad_data.clone(),
            header: self.header,
            metrics: ctx.metrics.clone(),
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            open: Vec::new(),
            turn: 0,
            pending: VecDeque::new(),
            clocks,
            progress,
            restored: Vec::new(),
            throttle: Throttle::new(self.rows_per_second, ctx.parallelism),
        })
    }
}

/// How a subtask reads a partitioned table: files hold the table less its
/// partition columns; the query's partition columns are filled in from
/// each file's directory names.
struct PartitionedRead {
    /// The table's columns that files hold, in declaration order.
    file_table: SchemaRef,
    /// The query's columns that files hold, as indices into `file_table`.
    projection: Vec<usize>,
    /// Their schema: what is decoded.
    schema: SchemaRef,
    /// The query's partition columns: (position in the query's columns,
    /// name, type).
    fill: Vec<(usize, String, DataType)>,
}

impl PartitionedRead {
    fn new(partitions: &Partitioning, table: &SchemaRef, projection: &[usize]) -> Result<Self> {
        let file_table = partitions.file_schema(table)?;
        let is_partition = |i: usize| partitions.columns().iter().any(|(c, _)| *c == i);
        let mut read = Vec::new();
        let mut fill = Vec::new();
        for (at, &i) in projection.iter().enumerate() {
            if is_partition(i) {
                let field = table.field(i);
                fill.push((at, field.name().clone(), field.data_type().clone()));
            } else {
                read.push(i - (0..i).filter(|&c| is_partition(c)).count());
            }
        }
        Ok(PartitionedRead {
            schema: Arc::new(file_table.project(&read)?),
            file_table,
            projection: read,
            fill,
        })
    }

    /// One-row arrays of the partition values of `split`, in `fill`'s
    /// order, from its `name=value` directories (null when absent).
    fn values(&self, location: &Location, split: &Split) -> Result<Vec<ArrayRef>> {
        if self.fill.is_empty() {
            return Ok(Vec::new());
        }
        let dirs: Vec<String> = match split.path.prefix_match(&location.path) {
            Some(parts) => parts.map(|p| p.as_ref().to_string()).collect(),
            None => split.path.parts().map(|p| p.as_ref().to_string()).collect(),
        };
        let dirs = &dirs[..dirs.len().saturating_sub(1)];
        self.fill
            .iter()
            .map(|(_, name, to)| {
                let value = dirs.iter().rev().find_map(|d| {
                    let (k, v) = d.split_once('=')?;
                    (unescape(k) == *name && v != NULL_PARTITION).then(|| unescape(v))
                });
                let text: ArrayRef = Arc::new(StringArray::from(vec![value]));
                cast(&text, to).map_err(|e| {
                    FlumenError::BadData(format!(
                        "{}: partition column '{name}' from its directory: {e}",
                        split.shown
                    ))
                })
            })
            .collect()
    }
}

/// A file to read, with its position in the sorted file list and among
/// this subtask's files.
struct Split {
    path: Path,
    /// The path as the user would write it, for messages.
    shown: String,
    size: u64,
    index: usize,
    id: usize,
}

/// How far a split has been read, counting only rows `next` returned:
/// what a checkpoint stores.
struct Progress {
    path: String,
    index: usize,
    read: Read,
    done: bool,
}

enum Read {
    /// The byte offset of the first line not returned, and the lines before it.
    Text { offset: u64, lines: u64 },
    /// Per row group of this subtask's share: (row group, its rows, rows
    /// returned); known once the file is opened.
    Parquet {
        groups: Vec<(usize, u64, u64)>,
        opened: bool,
    },
}

/// How a message moves its split's position once it is returned.
enum Advance {
    Text { offset: u64, lines: u64 },
    Rows(u64),
}

impl Progress {
    fn advance(&mut self, advance: Advance) {
        match (&mut self.read, advance) {
            (
                Read::Text { offset, lines },
                Advance::Text {
                    offset: o,
                    lines: l,
                },
            ) => {
                *offset = o;
                *lines = l;
            }
            (Read::Parquet { groups, .. }, Advance::Rows(mut rows)) => {
                for (_, total, read) in groups.iter_mut() {
                    let take = rows.min(*total - *read);
                    *read += take;
                    rows -= take;
                }
            }
            _ => {}
        }
    }

    fn positions(&self, out: &mut Vec<SplitPosition>) {
        match &self.read {
            Read::Text { offset, lines } => out.push(SplitPosition {
                split: self.path.clone(),
                position: vec![*offset, *lines],
                done: self.done,
            }),
            Read::Parquet { groups, .. } => {
                out.extend(groups.iter().map(|&(g, total, read)| SplitPosition {
                    split: row_group_split(&self.path, g),
                    position: vec![read],
                    done: self.done || read >= total,
                }))
            }
        }
    }
}

/// The split name of row group `g` of the Parquet file at `path`.
fn row_group_split(path: &str, g: usize) -> String {
    format!("{path}#row group {g}")
}

struct FileSource {
    store: Arc<dyn ObjectStore>,
    /// Files not opened yet.
    files: VecDeque<Split>,
    format: Format,
    /// The table's columns that files hold.
    table_schema: SchemaRef,
    /// The query's columns that files hold (indices into `table_schema`).
    projection: Vec<usize>,
    /// Their schema: what is decoded.
    schema: SchemaRef,
    /// What the source returns: the query's columns, partition columns included.
    output: SchemaRef,
    /// The query's partition columns (position, name, type).
    fill: Vec<(usize, String, DataType)>,
    /// Per split (by id): one-row arrays of its partition values, in `fill`'s order.
    partition_values: Vec<Vec<ArrayRef>>,
    bad_data: BadData,
    header: bool,
    metrics: Arc<JobMetrics>,
    subtask: usize,
    parallelism: usize,
    /// Files being read, in turn; one at a time without event time.
    open: Vec<(usize, Reader)>,
    max_open: usize,
    turn: usize,
    /// Messages ready to return, each with how it moves its split's position.
    pending: VecDeque<(Message, Option<(usize, Advance)>)>,
    clocks: Option<SplitClocks>,
    /// Per split of this subtask (by id): how far it has been read.
    progress: Vec<Progress>,
    /// Restored positions of Parquet row groups of files not opened yet.
    restored: Vec<SplitPosition>,
    throttle: Option<Throttle>,
}

enum Reader {
    Text(TextReader),
    Parquet {
        shown: String,
        #[allow(deprecated)]
        stream: ParquetRecordBatchStream<ParquetObjectReader>,
    },
}

struct TextReader {
    shown: String,
    /// How the file's CSV columns map to the table's.
    csv: Option<Arc<CsvColumns>>,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    buf: Vec<u8>,
    eof: bool,
    /// Byte offset in the file of the start of `buf`.
    offset: u64,
    /// Lines of the file consumed so far.
    lines: u64,
    at_start: bool,
}

#[async_trait]
impl Source for FileSource {
    async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some(t) = &mut self.throttle
                && matches!(self.pending.front(), Some((Message::Batch(_), _)) | None)
            {
                t.wait().await;
            }
            if let Some((msg, advance)) = self.pending.pop_front() {
                if let Some((id, advance)) = advance {
                    self.progress[id].advance(advance);
                }
                if let Message::Batch(b) = &msg {
                    // Lines that were all dropped move the position only.
                    if b.num_rows() == 0 {
                        continue;
                    }
                    if let Some(t) = &mut self.throttle {
                        t.sent(b.num_rows());
                    }
                }
                return Ok(Some(msg));
            }
            while self.open.len() < self.max_open
                && let Some(split) = self.files.front()
            {
                let share = Share {
                    subtask: self.subtask,
                    parallelism: self.parallelism,
                };
                let id = split.id;
                let text = TextLayout {
                    csv: (self.format == Format::Csv).then_some(&self.table_schema),
                    header: self.header,
                    projection: &self.projection,
                };
                let opened = open(
                    self.store.clone(),
                    split,
                    self.schema.clone(),
                    text,
                    share,
                    &mut self.progress[id],
                    &self.restored,
                )
                .await?;
                // Taken off the queue only now: a cancelled open loses nothing.
                self.files.pop_front();
                match opened {
                    Some(reader) => self.open.push((id, reader)),
                    None => self.split_done(id),
                }
            }
            if self.open.is_empty() {
                return Ok(None);
            }
            let at = self.turn % self.open.len();
            self.turn = at + 1;
            let id = self.open[at].0;
            match self.read_step(at).await? {
                Some(batches) => {
                    for (batch, advance) in batches {
                        let batch = self.with_partitions(id, batch)?;
                        let wm = match &mut self.clocks {
                            Some(c) => c.on_batch(id, &batch)?,
                            None => None,
                        };
                        self.pending
                            .push_back((Message::Batch(batch), Some((id, advance))));
                        if let Some(wm) = wm {
                            self.pending.push_back((Message::Watermark(wm), None));
                        }
                    }
                }
                None => {
                    self.open.remove(at);
                    self.split_done(id);
                }
            }
        }
    }

    fn snapshot_position(&mut self, _checkpoint: u64) -> Result<Vec<SplitPosition>> {
        let mut out = Vec::new();
        for p in &self.progress {
            match &p.read {
                Read::Parquet { opened: false, .. } if !p.done => {
                    let prefix = format!("{}#", p.path);
                    out.extend(
                        self.restored
                            .iter()
                            .filter(|r| r.split.starts_with(&prefix))
                            .cloned(),
                    );
                }
                _ => p.positions(&mut out),
            }
        }
        Ok(out)
    }

    fn restore_position(&mut self, positions: &[SplitPosition]) -> Result<()> {
        let (subtask, parallelism) = (self.subtask, self.parallelism);
        let mut done = Vec::new();
        for p in &mut self.progress {
            match &mut p.read {
                Read::Text { offset, lines } => {
                    let Some(r) = positions.iter().find(|r| r.split == p.path) else {
                        continue;
                    };
                    let [o, l] = r.position[..] else {
                        return Err(FlumenError::state(format!(
                            "position of file {} is {:?}, not an offset and a line count",
                            p.path, r.position
                        )));
                    };
                    (*offset, *lines) = (o, l);
                    if r.done {
                        p.done = true;
                    }
                }
                Read::Parquet { .. } => {
                    let prefix = format!("{}#", p.path);
                    let index = p.index;
                    self.restored.extend(
                        positions
                            .iter()
                            .filter(|r| r.split.starts_with(&prefix))
                            .filter(|r| {
                                r.split
                                    .rsplit_once(' ')
                                    .and_then(|(_, g)| g.parse::<usize>().ok())
                                    .is_some_and(|g| (index + g) % parallelism == subtask)
                            })
                            .cloned(),
                    );
                }
            }
            if p.done {
                done.push(p.path.clone());
            }
        }
        let finished: Vec<usize> = self
            .files
            .iter()
            .filter(|f| done.contains(&f.path.to_string()))
            .map(|f| f.id)
            .collect();
        self.files.retain(|f| !finished.contains(&f.id));
        for id in finished {
            self.split_done(id);
        }
        Ok(())
    }
}

impl FileSource {
    /// `batch` of split `id` with the query's partition columns put in.
    fn with_partitions(&self, id: usize, batch: RecordBatch) -> Result<RecordBatch> {
        if self.fill.is_empty() {
            return Ok(batch);
        }
        let rows = batch.num_rows();
        let repeat = UInt32Array::from(vec![0u32; rows]);
        let mut read = batch.columns().iter();
        let mut filled = self.fill.iter().zip(&self.partition_values[id]).peekable();
        let mut columns = Vec::with_capacity(self.output.fields().len());
        for at in 0..self.output.fields().len() {
            match filled.peek() {
                Some(((p, _, _), value)) if *p == at => {
                    columns.push(take(value.as_ref(), &repeat, None)?);
                    filled.next();
                }
                _ => columns.push(read.next().cloned().ok_or_else(|| {
                    FlumenError::internal("a file batch with fewer columns than its schema")
                })?),
            }
        }
        Ok(RecordBatch::try_new_with_options(
            self.output.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    /// Split `id` has nothing more: it no longer holds the watermark back.
    fn split_done(&mut self, id: usize) {
        self.progress[id].done = true;
        if let Some(wm) = self.clocks.as_mut().and_then(|c| c.finish(id)) {
            self.pending.push_back((Message::Watermark(wm), None));
        }
    }

    /// The next batches of open file `at`, each with the position after
    /// it; `None` at its end.
    async fn read_step(&mut self, at: usize) -> Result<Option<Vec<(RecordBatch, Advance)>>> {
        match &mut self.open[at].1 {
            Reader::Parquet { shown, stream } => match stream.next().await {
                Some(batch) => {
                    let batch = batch.map_err(|e| read_error(shown, e))?;
                    let batch = conform(&batch, &self.schema)
                        .map_err(|e| FlumenError::io(format!("reading {shown}: {e}")))?;
                    let rows = batch.num_rows() as u64;
                    Ok(Some(vec![(batch, Advance::Rows(rows))]))
                }
                None => Ok(None),
            },
            Reader::Text(text) => {
                let chunk = text
                    .next_chunk(self.header && self.format == Format::Csv)
                    .await?;
                let Some(chunk) = chunk else {
                    return Ok(None);
                };
                let (shown, csv) = (text.shown.clone(), text.csv.clone());
                let mut dead = Vec::new();
                let batches = self.decode(&shown, csv.as_deref(), &chunk, &mut dead)?;
                self.send_to_dead_letter(&dead)?;
                Ok(Some(batches))
            }
        }
    }
}

impl FileSource {
    fn decoder(&self, csv: Option<&CsvColumns>) -> Result<TextDecoder> {
        Ok(match csv {
            None => TextDecoder::Json(
                arrow::json::ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(DEFAULT_BATCH_SIZE)
                    .build_decoder()?,
            ),
            Some(csv) => TextDecoder::Csv(Box::new(
                arrow::csv::ReaderBuilder::new(csv.file_schema.clone())
                    .with_header(false)
                    .with_projection(csv.projection.clone())
                    .with_batch_size(DEFAULT_BATCH_SIZE)
                    .build_decoder(),
            )),
        })
    }

    /// Decodes a chunk of whole lines of the file shown as `path` into
    /// batches, each with the file position after its last line.
    /// Malformed records go to `dead` (as dead-letter JSON lines) when the
    /// table says so.
    fn decode(
        &self,
        path: &str,
        csv: Option<&CsvColumns>,
        chunk: &Chunk,
        dead: &mut Vec<String>,
    ) -> Result<Vec<(RecordBatch, Advance)>> {
        let lines = &chunk.lines;
        let after = |end: usize, counted: &mut (usize, u64)| {
            counted.1 += lines[counted.0..end]
                .iter()
                .filter(|b| **b == b'\n')
                .count() as u64;
            counted.0 = end;
            Advance::Text {
                offset: chunk.offset + end as u64,
                lines: chunk.lines_before + counted.1,
            }
        };
        if let Ok(batches) = self.decoder(csv)?.decode_all(lines) {
            let mut counted = (0, 0);
            return Ok(batches
                .into_iter()
                .map(|(b, end)| (b, after(end, &mut counted)))
                .collect());
        }
        let first_line = chunk.lines_before + 1;
        let mut good = Vec::new();
        let mut dropped = 0;
        let mut start = 0;
        for (i, line) in lines.split(|b| *b == b'\n').enumerate() {
            let at = chunk.offset + start as u64;
            start += line.len() + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut one = Vec::with_capacity(line.len() + 1);
            one.extend_from_slice(line);
            one.push(b'\n');
            match (self.decoder(csv)?.decode_all(&one), &self.bad_data) {
                (Ok(batches), _) => good.extend(batches.into_iter().map(|(b, _)| b)),
                (Err(_), BadData::Drop) => dropped += 1,
                (Err(e), BadData::DeadLetter(_)) => dead.push(dead_letter(
                    path,
                    first_line + i as u64,
                    at,
                    &e.to_string(),
                    line,
                )),
                (Err(e), BadData::Fail) => {
                    return Err(FlumenError::BadData(format!(
                        "{path} line {}: {e}",
                        first_line + i as u64
                    )));
                }
            }
        }
        self.metrics.add_bad_records_dropped(dropped);
        let batch = if good.is_empty() {
            RecordBatch::new_empty(self.schema.clone())
        } else {
            concat_batches(&self.schema, &good)?
        };
        Ok(vec![(batch, after(lines.len(), &mut (0, 0)))])
    }
}

impl FileSource {
    /// Appends dead-letter records to this subtask's dead-letter file and
    /// counts them.
    fn send_to_dead_letter(&self, records: &[String]) -> Result<()> {
        self.bad_data
            .send_to_dead_letter(self.subtask, records, &self.metrics)
    }
}

/// One dead-letter record of a file: the file as the user wrote it, line,
/// byte offset, error and raw bytes.
fn dead_letter(path: &str, line: u64, offset: u64, error: &str, raw: &[u8]) -> String {
    dead_letter_record(
        serde_json::json!({"file": path, "line": line, "offset": offset}),
        error,
        raw,
    )
}

/// A failure reading `path`, with its cause kept (a retry may cure it).
fn read_error(path: &str, e: impl std::error::Error + Send + Sync + 'static) -> FlumenError {
    FlumenError::transient(format!("reading {path}"), e)
}

/// Which subtask of how many reads, for splitting Parquet files by row group.
#[derive(Clone, Copy)]
struct Share {
    subtask: usize,
    parallelism: usize,
}

/// Opens a split: text is streamed in chunks; Parquet is read row group by
/// row group (this subtask's share, projected columns only), so memory stays
/// flat. `None` when the split holds nothing for this subtask.
#[allow(deprecated)]
async fn open(
    store: Arc<dyn ObjectStore>,
    split: &Split,
    schema: SchemaRef,
    text: TextLayout<'_>,
    share: Share,
    progress: &mut Progress,
    restored: &[SplitPosition],
) -> Result<Option<Reader>> {
    let Split {
        path,
        shown,
        size,
        index,
        ..
    } = split;
    let (path, size, index) = (path.clone(), *size, *index);
    if let Read::Text { offset, lines } = progress.read {
        if offset >= size {
            return Ok(None);
        }
        let csv = match &text.csv {
            None => None,
            Some(table) if text.header => {
                Some(CsvColumns::by_header(&store, &path, shown, size, table, &schema).await?)
            }
            Some(table) => Some(CsvColumns {
                file_schema: Arc::clone(table),
                projection: text.projection.to_vec(),
            }),
        };
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        let fetched = store
            .get_opts(&path, options)
            .await
            .map_err(|e| read_error(shown, e))?;
        return Ok(Some(Reader::Text(TextReader {
            stream: fetched.into_stream(),
            shown: shown.clone(),
            csv: csv.map(Arc::new),
            buf: Vec::with_capacity(CHUNK_BYTES * 2),
            eof: false,
            offset,
            lines,
            at_start: offset == 0,
        })));
    }
    let reader = ParquetObjectReader::new(store, path.clone()).with_file_size(size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| read_error(shown, e))?;
    let metadata = builder.metadata().clone();
    let mut groups = Vec::new();
    let mut selectors = Vec::new();
    for g in
        (0..metadata.num_row_groups()).filter(|g| (index + g) % share.parallelism == share.subtask)
    {
        let total = metadata.row_group(g).num_rows().max(0) as u64;
        let name = row_group_split(progress.path.as_str(), g);
        let read = restored.iter().find(|r| r.split == name).map_or(0, |r| {
            if r.done {
                total
            } else {
                r.position.first().copied().unwrap_or(0).min(total)
            }
        });
        groups.push((g, total, read));
        if read < total {
            selectors.push(RowSelector::skip(read as usize));
            selectors.push(RowSelector::select((total - read) as usize));
        }
    }
    let row_groups: Vec<usize> = groups
        .iter()
        .filter(|(_, total, read)| read < total)
        .map(|(g, _, _)| *g)
        .collect();
    progress.read = Read::Parquet {
        groups,
        opened: true,
    };
    if row_groups.is_empty() {
        return Ok(None);
    }
    let file_schema = builder.schema().clone();
    let mut roots = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let index = file_schema.index_of(field.name()).map_err(|_| {
            FlumenError::io(format!(
                "reading {shown}: the file has no column '{}'",
                field.name()
            ))
        })?;
        roots.push(index);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let stream = builder
        .with_row_groups(row_groups)
        .with_row_selection(RowSelection::from(selectors))
        .with_projection(mask)
        .with_batch_size(DEFAULT_BATCH_SIZE)
        .build()
        .map_err(|e| read_error(shown, e))?;
    Ok(Some(Reader::Parquet {
        shown: shown.clone(),
        stream,
    }))
}

impl TextReader {
    /// The next run of complete lines with where it starts; `None` at the
    /// end of the file.
    async fn next_chunk(&mut self, header: bool) -> Result<Option<Chunk>> {
        let mut want = CHUNK_BYTES;
        loop {
            while !self.eof && self.buf.len() < want {
                match self.stream.next().await {
                    Some(bytes) => {
                        let bytes = bytes.map_err(|e| read_error(&self.shown, e))?;
                        self.buf.extend_from_slice(&bytes);
                    }
                    None => self.eof = true,
                }
            }
            if self.at_start && header {
                match self.buf.iter().position(|b| *b == b'\n') {
                    Some(nl) => {
                        self.buf.drain(..=nl);
                        self.offset += nl as u64 + 1;
                        self.lines += 1;
                    }
                    None if self.eof => return Ok(None),
                    None => {
                        want = self.buf.len() * 2;
                        continue;
                    }
                }
            }
            self.at_start = false;
            if self.buf.is_empty() {
                return Ok(None);
            }
            let cut = if self.eof {
                self.buf.len()
            } else {
                match self.buf.iter().rposition(|b| *b == b'\n') {
                    Some(p) => p + 1,
                    None => {
                        want = self.buf.len() * 2;
                        continue;
                    }
                }
            };
            let rest = self.buf.split_off(cut);
            let lines = std::mem::replace(&mut self.buf, rest);
            let chunk = Chunk {
                offset: self.offset,
                lines_before: self.lines,
                lines,
            };
            self.offset += chunk.lines.len() as u64;
            self.lines += chunk.lines.iter().filter(|b| **b == b'\n').count() as u64;
            return Ok(Some(chunk));
        }
    }
}

/// What a text file's columns are, as the table declares them.
struct TextLayout<'a> {
    /// The table's columns, for CSV; `None` for JSON.
    csv: Option<&'a SchemaRef>,
    /// CSV: whether the first line names the columns.
    header: bool,
    /// Table columns the query reads.
    projection: &'a [usize],
}

/// How to decode one CSV file: its columns, and which of them the query
/// reads, in the query's order.
struct CsvColumns {
    file_schema: SchemaRef,
    projection: Vec<usize>,
}

/// How long a CSV header line may be.
const MAX_HEADER_BYTES: u64 = 1 << 20;

impl CsvColumns {
    /// Maps the columns of the file by the names in its first line: a
    /// table may declare a subset of them, in any order. Columns the table
    /// does not declare are read as text and dropped; a column the query
    /// reads that the file lacks is an error naming both.
    async fn by_header(
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        shown: &str,
        size: u64,
        table: &SchemaRef,
        read: &SchemaRef,
    ) -> Result<Self> {
        let mut want = size.min(64 * 1024);
        let line = loop {
            let bytes = store
                .get_range(path, 0..want)
                .await
                .map_err(|e| read_error(shown, e))?;
            match bytes.iter().position(|b| *b == b'\n') {
                Some(nl) => break bytes.slice(..nl),
                None if want >= size => break bytes,
                None if want >= MAX_HEADER_BYTES => {
                    return Err(FlumenError::BadData(format!(
                        "{shown}: the header line is longer than {MAX_HEADER_BYTES} bytes"
                    )));
                }
                None => want = (want * 4).min(size),
            }
        };
        let (header, _) = arrow::csv::reader::Format::default()
            .with_header(true)
            .infer_schema(std::io::Cursor::new(line), Some(0))
            .map_err(|e| FlumenError::BadData(format!("{shown} line 1: {e}")))?;
        let names: Vec<&str> = header
            .fields()
            .iter()
            .map(|f| f.name().trim_end_matches('\r'))
            .collect();
        let fields: Vec<arrow::datatypes::Field> = names
            .iter()
            .map(|name| match table.field_with_name(name) {
                Ok(declared) => declared.clone(),
                Err(_) => arrow::datatypes::Field::new(*name, DataType::Utf8, true),
            })
            .collect();
        let projection = read
            .fields()
            .iter()
            .map(|f| {
                names.iter().position(|n| n == f.name()).ok_or_else(|| {
                    FlumenError::BadData(format!(
                        "{shown}: the header has no column '{}' (it names: {})",
                        f.name(),
                        names.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CsvColumns {
            file_schema: Arc::new(arrow::datatypes::Schema::new(fields)),
            projection,
        })
    }
}

/// A run of whole lines of a file.
struct Chunk {
    /// Byte offset in the file of its first line.
    offset: u64,
    /// Lines of the file before it.
    lines_before: u64,
    lines: Vec<u8>,
}

/// Selects and casts the columns of `batch` to `schema`, by name.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let col = batch
                .column_by_name(f.name())
                .ok_or_else(|| ArrowError::SchemaError(format!("no column '{}'", f.name())))?;
            if col.data_type() == f.data_type() {
                Ok(col.clone())
            } else {
                cast(col, f.data_type())
            }
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
}
