//! Checkpoint storage: state files and manifests under one directory of an
//! object store (a local directory or a URL).
//!
//! Layout, per checkpoint `n` (savepoints alike, as `savepoint-n`):
//!
//! ```text
//! DIR/chk-00000007/<operator id>-<subtask>-t<table>-<k>.arrow   Arrow IPC, one per table
//! DIR/chk-00000007/manifest.json                               written last
//! ```
//!
//! A state file holds one state table of one operator subtask with a
//! trailing key-group column, so a subtask at any parallelism reads the key
//! groups it owns. The manifest lists every file with its size, checksum
//! and key-group range, every source's positions and what every sink staged.
//! It is written last and in one `put`, so a checkpoint directory without a
//! manifest was never completed.

use std::collections::BTreeSet;
use std::hash::Hasher;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use flumen_types::{FlumenError, Result};
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::key_group::{KeyGroup, KeyGroupRange};
use crate::local_file::LocalFile;
use crate::location::Location;
use crate::snapshot::{KEY_GROUP_COLUMN, StateSnapshot};

/// Version of the manifest layout; a newer one is refused.
pub const MANIFEST_FORMAT: u32 = 1;

const MANIFEST: &str = "manifest.json";

/// Whether a checkpoint was taken on the job's schedule or asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// Periodic; the oldest are deleted past the retention.
    Checkpoint,
    /// Taken on request (stop with savepoint); never deleted by retention.
    Savepoint,
}

impl CheckpointKind {
    fn prefix(self) -> &'static str {
        match self {
            CheckpointKind::Checkpoint => "chk-",
            CheckpointKind::Savepoint => "savepoint-",
        }
    }
}

/// Where one source split had read to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPosition {
    /// The split's name, unique within its source (a file path, a lane of
    /// the generator, a partition).
    pub split: String,
    /// The source's own numbers for the position (an offset, a line count).
    pub position: Vec<u64>,
    /// The split has been read to its end.
    pub done: bool,
}

/// One stored state table of one operator subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// Path relative to the checkpoint root (files of a task that finished
    /// early stay in the checkpoint that first stored them).
    pub path: String,
    /// The subtask that wrote it.
    pub subtask: usize,
    /// The operator's table number.
    pub table: usize,
    /// Rows stored.
    pub rows: u64,
    /// Bytes of the file.
    pub size: u64,
    /// xxHash64 of the file's bytes, in hex.
    pub checksum: String,
    /// The first and last key group of its rows.
    pub key_groups: [KeyGroup; 2],
}

/// What one operator (a node of the job graph) holds in a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorState {
    /// Stable id: the same when the same SQL is planned again.
    pub id: String,
    /// What the operator is, for messages.
    pub name: String,
    /// Its parallelism when the checkpoint was taken.
    pub parallelism: usize,
    /// Its state tables.
    pub files: Vec<StateFile>,
    /// A source's positions, over all its subtasks.
    pub positions: Vec<SplitPosition>,
    /// What a sink staged, over all its subtasks (file names, transactions).
    pub staged: Vec<String>,
}

impl OperatorState {
    /// Bytes of its state files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Rows of its state files.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// A complete checkpoint: written last, it makes the checkpoint usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] of the writer.
    pub format: u32,
    /// Checkpoint id, increasing over the life of the job.
    pub id: u64,
    /// Checkpoint or savepoint.
    pub kind: CheckpointKind,
    /// Every source had ended and every task finished: nothing is left to run.
    pub finished: bool,
    /// Milliseconds since the Unix epoch when it completed.
    pub time_ms: u64,
    /// Names the job's output apart from other jobs' (kept across restarts).
    pub job_id: String,
    /// Hash of the job graph's operator ids and edges.
    pub fingerprint: String,
    /// The largest parallelism of the job's operators.
    pub parallelism: usize,
    /// Number of key groups.
    pub max_parallelism: usize,
    /// Every operator's state.
    pub operators: Vec<OperatorState>,
}

impl Manifest {
    /// The directory (relative to the root) holding this checkpoint.
    pub fn dir(&self) -> String {
        dir_name(self.kind, self.id)
    }

    /// Bytes of all state files.
    pub fn bytes(&self) -> u64 {
        self.operators.iter().map(OperatorState::bytes).sum()
    }

    /// The state of the operator with `id`.
    pub fn operator(&self, id: &str) -> Option<&OperatorState> {
        self.operators.iter().find(|o| o.id == id)
    }
}

/// The directory name of checkpoint `id` of `kind`.
pub fn dir_name(kind: CheckpointKind, id: u64) -> String {
    format!("{}{id:08}", kind.prefix())
}

/// A checkpoint directory found by [`CheckpointStore::list`].
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its name under the root.
    pub dir: String,
    /// Its id, from the name.
    pub id: u64,
    /// Checkpoint or savepoint, from the name.
    pub kind: CheckpointKind,
    /// The manifest, if the checkpoint completed.
    pub manifest: Option<Manifest>,
    /// Bytes of the files in the directory.
    pub bytes: u64,
}

/// Reads and writes checkpoints under one root.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    /// For a local directory: where the store keeps a path, so that state
    /// files are written there directly ([`LocalFile`]).
    local: Option<LocalFileSystem>,
    root: Path,
    display: String,
}

fn checksum(bytes: &[u8]) -> String {
    let mut h = twox_hash::XxHash64::with_seed(0);
    h.write(bytes);
    format!("{:016x}", h.finish())
}

/// About the bytes of state encoded at once: a larger batch (an operator's
/// whole state gathered into one) is written in slices of about this size,
/// so the encoding buffer stays this small and is reused, instead of
/// growing (copied at each doubling, into fresh pages) to the whole state.
const PIECE_BYTES: usize = 8 << 20;

/// `batch` in slices of about [`PIECE_BYTES`] (its buffers shared, not copied).
fn pieces(batch: &RecordBatch) -> impl Iterator<Item = RecordBatch> + '_ {
    let rows = batch.num_rows();
    let per = (rows * PIECE_BYTES / batch.get_array_memory_size().max(1)).clamp(1, rows.max(1));
    (0..rows.max(1))
        .step_by(per)
        .map(move |start| batch.slice(start, per.min(rows - start)))
}

/// Where a state file's bytes go: a local file, renamed into place when
/// complete, or a multipart upload, visible when completed.
enum StateOut {
    Local {
        file: LocalFile,
        temp: std::path::PathBuf,
        target: std::path::PathBuf,
    },
    Store(BufWriter),
}

impl StateOut {
    /// Appends the bytes of `buf`, leaving it empty to be filled again.
    async fn write_vec(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            StateOut::Local { file, .. } => file.write_vec(buf).await,
            StateOut::Store(out) => {
                out.write_all(buf).await?;
                buf.clear();
                Ok(())
            }
        }
    }

    /// Writes out the rest and makes the file visible under its name.
    async fn finish(self) -> std::io::Result<()> {
        match self {
            StateOut::Local {
                mut file,
                temp,
                target,
            } => {
                file.flush().await?;
                drop(file);
                tokio::fs::rename(&temp, &target).await
            }
            StateOut::Store(mut out) => out.shutdown().await,
        }
    }
}

/// A state file being written: batches of one table and schema, encoded
/// a piece at a time and streamed out (to a hidden local file or a
/// multipart upload, made visible whole at the end), so memory holds one
/// piece's encoding, not the file's.
struct OpenStateFile {
    writer: FileWriter<Vec<u8>>,
    schema: SchemaRef,
    table: usize,
    subtask: usize,
    path: String,
    out: StateOut,
    hash: twox_hash::XxHash64,
    size: u64,
    rows: u64,
    /// The first and last key group written so far.
    key_groups: Option<[KeyGroup; 2]>,
}

impl OpenStateFile {
    /// Encodes `batch` (slices of it, when large) and writes it out.
    async fn write(&mut self, store: &CheckpointStore, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.key_groups = key_group_span(batch, self.key_groups);
        for piece in pieces(batch) {
            self.writer.write(&piece)?;
            self.write_encoded(store).await?;
        }
        Ok(())
    }

    /// Writes out what the encoder holds, leaving its buffer empty.
    async fn write_encoded(&mut self, store: &CheckpointStore) -> Result<()> {
        let chunk = self.writer.get_mut();
        self.hash.write(chunk);
        self.size += chunk.len() as u64;
        self.out
            .write_vec(chunk)
            .await
            .map_err(|e| store.io(&format!("writing {}", self.path), e))
    }

    /// Ends the file, makes it visible under its name and describes it.
    async fn finish(mut self, store: &CheckpointStore) -> Result<StateFile> {
        self.writer.finish()?;
        self.write_encoded(store).await?;
        self.out
            .finish()
            .await
            .map_err(|e| store.io(&format!("writing {}", self.path), e))?;
        Ok(StateFile {
            path: self.path,
            subtask: self.subtask,
            table: self.table,
            rows: self.rows,
            size: self.size,
            checksum: format!("{:016x}", self.hash.finish()),
            key_groups: self.key_groups.unwrap_or([0, 0]),
        })
    }
}

impl CheckpointStore {
    /// The checkpoints under `raw` (a local directory, created if missing,
    /// or an object-store URL).
    pub fn open(raw: &str) -> Result<Self> {
        let location = Location::parse(raw)?;
        if let Some(dir) = &location.local {
            std::fs::create_dir_all(dir).map_err(|e| {
                FlumenError::config(format!("cannot create checkpoint directory '{raw}': {e}"))
            })?;
        }
        Ok(CheckpointStore {
            store: location.store,
            local: location.local.is_some().then(LocalFileSystem::new),
            root: location.path,
            display: location.display,
        })
    }

    /// The root as the user wrote it.
    pub fn display(&self) -> &str {
        &self.display
    }

    fn path(&self, relative: &str) -> Path {
        relative
            .split('/')
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    fn io(&self, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> FlumenError {
        FlumenError::transient(
            format!("{what} in checkpoint directory '{}'", self.display),
            e,
        )
    }

    /// Writes the state of one operator subtask into checkpoint directory
    /// `dir` and returns the files written: one per run of batches of the
    /// same table and schema.
    pub async fn write_state(
        &self,
        dir: &str,
        operator: &str,
        subtask: usize,
        snapshot: StateSnapshot,
    ) -> Result<Vec<StateFile>> {
        let mut files = Vec::new();
        let mut open: Option<OpenStateFile> = None;
        let mut batches = snapshot.into_stored();
        loop {
            // A deferred part is built when asked for, so the next batch
            // is taken on a blocking thread, beside processing.
            let (back, next) = tokio::task::spawn_blocking(move || {
                let next = batches.next();
                (batches, next)
            })
            .await
            .map_err(|e| FlumenError::internal(format!("building a snapshot: {e}")))?;
            batches = back;
            let Some(next) = next else { break };
            let (table, batch) = next?;
            let same = open
                .as_ref()
                .is_some_and(|o| o.table == table && *o.schema == *batch.schema());
            let file = match &mut open {
                Some(file) if same => file,
                _ => {
                    if let Some(done) = open.take() {
                        files.push(done.finish(self).await?);
                    }
                    let path = format!("{dir}/{operator}-{subtask}-t{table}-{}.arrow", files.len());
                    let out = self
                        .state_file(&path)
                        .await
                        .map_err(|e| self.io(&format!("writing {path}"), e))?;
                    open.insert(OpenStateFile {
                        writer: FileWriter::try_new(Vec::new(), &batch.schema())?,
                        schema: batch.schema(),
                        table,
                        subtask,
                        path,
                        out,
                        hash: twox_hash::XxHash64::with_seed(0),
                        size: 0,
                        rows: 0,
                        key_groups: None,
                    })
                }
            };
            file.write(self, &batch).await?;
        }
        if let Some(done) = open {
            files.push(done.finish(self).await?);
        }
        Ok(files)
    }

    /// A state file being written to `path` (relative to the root).
    async fn state_file(&self, path: &str) -> std::io::Result<StateOut> {
        let path = self.path(path);
        let Some(local) = &self.local else {
            return Ok(StateOut::Store(BufWriter::new(self.store.clone(), path)));
        };
        let target = local
            .path_to_filesystem(&path)
            .map_err(std::io::Error::other)?;
        let mut name = target.file_name().unwrap_or_default().to_owned();
        name.push(".inprogress");
        let temp = target.with_file_name(name);
        let file = LocalFile::create(temp.clone()).await?;
        Ok(StateOut::Local { file, temp, target })
    }

    async fn read_checked(&self, file: &StateFile) -> Result<Bytes> {
        let bytes = match self.store.get(&self.path(&file.path)).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| self.io(&format!("reading {}", file.path), e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(FlumenError::state(format!(
                    "state file {} is missing",
                    file.path
                )));
            }
            Err(e) => return Err(self.io(&format!("reading {}", file.path), e)),
        };
        if bytes.len() as u64 != file.size {
            return Err(FlumenError::state(format!(
                "state file {} has {} bytes, the manifest says {} (truncated)",
                file.path,
                bytes.len(),
                file.size
            )));
        }
        if checksum(&bytes) != file.checksum {
            return Err(FlumenError::state(format!(
                "state file {} fails its checksum",
                file.path
            )));
        }
        Ok(bytes)
    }

    /// The rows of `files` in key groups `range` (every key group of the
    /// tables in `whole`), checked against their sizes and checksums.
    pub async fn read_state(
        &self,
        files: &[&StateFile],
        range: KeyGroupRange,
        whole: &[usize],
    ) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::default();
        for file in files {
            let range = if whole.contains(&file.table) {
                KeyGroupRange::ALL
            } else {
                range
            };
            let [first, last] = file.key_groups;
            if last < range.start || first >= range.end {
                continue;
            }
            let bytes = self.read_checked(file).await?;
            let reader = FileReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| {
                FlumenError::state(format!("state file {} is not Arrow IPC: {e}", file.path))
            })?;
            for batch in reader {
                let batch = batch.map_err(|e| {
                    FlumenError::state(format!("state file {} cannot be read: {e}", file.path))
                })?;
                snapshot.add_stored(file.table, &batch, range)?;
            }
        }
        Ok(snapshot)
    }

    /// Writes `manifest` into its directory, completing the checkpoint.
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| FlumenError::internal(format!("encoding a manifest: {e}")))?;
        let path = format!("{}/{MANIFEST}", manifest.dir());
        self.store
            .put(&self.path(&path), PutPayload::from(json))
            .await
            .map_err(|e| self.io(&format!("writing {path}"), e))?;
        Ok(())
    }

    /// The manifest in directory `dir` (relative to the root); `None` if the
    /// checkpoint never completed.
    pub async fn read_manifest(&self, dir: &str) -> Result<Option<Manifest>> {
        let path = format!("{dir}/{MANIFEST}");
        let bytes = match self.store.get(&self.path(&path)).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| self.io(&format!("reading {path}"), e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.io(&format!("reading {path}"), e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| FlumenError::state(format!("manifest {path} cannot be read: {e}")))?;
        if manifest.format > MANIFEST_FORMAT {
            return Err(FlumenError::state(format!(
                "manifest {path} has format {}, newer than this flumen reads ({MANIFEST_FORMAT})",
                manifest.format
            )));
        }
        Ok(Some(manifest))
    }

    /// Checks that every file `manifest` lists is there, whole and with its
    /// checksum; the error says which is not.
    pub async fn verify(&self, manifest: &Manifest) -> Result<()> {
        for op in &manifest.operators {
            for file in &op.files {
                self.read_checked(file).await?;
            }
        }
        Ok(())
    }

    /// Every checkpoint and savepoint directory under the root, by id.
    pub async fn list(&self) -> Result<Vec<Listed>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.root))
            .await
            .map_err(|e| self.io("listing", e))?;
        let mut found = Vec::new();
        for prefix in listing.common_prefixes {
            let Some(name) = prefix.filename().map(str::to_string) else {
                continue;
            };
            let parsed = [CheckpointKind::Checkpoint, CheckpointKind::Savepoint]
                .into_iter()
                .find_map(|kind| {
                    let id = name.strip_prefix(kind.prefix())?.parse::<u64>().ok()?;
                    Some((kind, id))
                });
            let Some((kind, id)) = parsed else { continue };
            let bytes = self
                .store
                .list(Some(&prefix))
                .map_ok(|m| m.size)
                .try_fold(0, |sum, size| async move { Ok(sum + size) })
                .await
                .map_err(|e| self.io("listing", e))?;
            let manifest = self.read_manifest(&name).await?;
            found.push(Listed {
                dir: name,
                id,
                kind,
                manifest,
                bytes,
            });
        }
        found.sort_by_key(|l| (l.id, l.kind == CheckpointKind::Savepoint));
        Ok(found)
    }

    /// The newest complete checkpoint or savepoint whose files are all
    /// there and whole, with a note for each newer one that was skipped.
    pub async fn latest(&self) -> Result<(Option<Manifest>, Vec<String>)> {
        let mut skipped = Vec::new();
        for listed in self.list().await?.into_iter().rev() {
            let Some(manifest) = listed.manifest else {
                continue;
            };
            match self.verify(&manifest).await {
                Ok(()) => return Ok((Some(manifest), skipped)),
                Err(e) => skipped.push(format!("{} is not usable: {e}", listed.dir)),
            }
        }
        Ok((None, skipped))
    }

    /// Deletes checkpoints past the newest `keep` complete ones (and
    /// incomplete ones older than the newest complete one), except
    /// savepoints and any directory whose files a kept manifest lists.
    pub async fn retain(&self, keep: usize) -> Result<()> {
        let listed = self.list().await?;
        let complete: Vec<&Listed> = listed
            .iter()
            .filter(|l| l.kind == CheckpointKind::Checkpoint && l.manifest.is_some())
            .collect();
        let Some(newest) = complete.last().map(|l| l.id) else {
            return Ok(());
        };
        let kept: Vec<&Manifest> = listed
            .iter()
            .filter_map(|l| l.manifest.as_ref())
            .filter(|m| {
                m.kind == CheckpointKind::Savepoint
                    || complete.iter().rev().take(keep).any(|l| l.id == m.id)
            })
            .collect();
        let needed: BTreeSet<String> = kept
            .iter()
            .flat_map(|m| {
                std::iter::once(m.dir()).chain(m.operators.iter().flat_map(|o| {
                    o.files
                        .iter()
                        .filter_map(|f| f.path.split('/').next().map(str::to_string))
                }))
            })
            .collect();
        for l in &listed {
            let old = l.manifest.is_some() || l.id < newest;
            if l.kind == CheckpointKind::Savepoint || needed.contains(&l.dir) || !old {
                continue;
            }
            self.delete_dir(&l.dir).await?;
        }
        Ok(())
    }

    /// Deletes a checkpoint directory, its manifest first so that a
    /// deletion cut short leaves an incomplete checkpoint, not a torn one.
    async fn delete_dir(&self, dir: &str) -> Result<()> {
        let manifest = self.path(&format!("{dir}/{MANIFEST}"));
        match self.store.delete(&manifest).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.io(&format!("deleting {dir}"), e)),
        }
        let files: Vec<Path> = self
            .store
            .list(Some(&self.path(dir)))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.io(&format!("listing {dir}"), e))?;
        for file in files {
            match self.store.delete(&file).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.io(&format!("deleting {dir}"), e)),
            }
        }
        if let Some(local) = self.local_dir(dir) {
            let _ = std::fs::remove_dir_all(local);
        }
        Ok(())
    }

    /// A local store leaves empty directories behind; their path, to remove them.
    fn local_dir(&self, dir: &str) -> Option<std::path::PathBuf> {
        let location = Location::parse(&self.display).ok()?;
        location.local.map(|l| l.join(dir))
    }
}

/// `span` widened to the key groups of a stored batch (its last column).
fn key_group_span(batch: &RecordBatch, mut span: Option<[KeyGroup; 2]>) -> Option<[KeyGroup; 2]> {
    let column = batch
        .column_by_name(KEY_GROUP_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::UInt16Array>());
    for &k in column.map(|c| c.values().as_ref()).unwrap_or_default() {
        span = Some(match span {
            None => [k, k],
            Some([a, b]) => [a.min(k), b.max(k)],
        });
    }
    span
}

/// Opens the checkpoint or savepoint directory at `raw` directly (for
/// `--from-savepoint`): its parent as the root and its own name.
pub fn open_dir(raw: &str) -> Result<(CheckpointStore, String)> {
    let trimmed = raw.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/').unwrap_or((".", trimmed));
    let parent = if parent.is_empty() { "/" } else { parent };
    Ok((CheckpointStore::open(parent)?, name.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use futures::StreamExt;

    fn snapshot(values: Vec<i64>, key_groups: &[KeyGroup]) -> StateSnapshot {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap();
        let mut s = StateSnapshot::default();
        s.add(0, &batch, key_groups).unwrap();
        s
    }

    fn manifest(id: u64, files: Vec<StateFile>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            id,
            kind: CheckpointKind::Checkpoint,
            finished: false,
            time_ms: 0,
            job_id: "j".into(),
            fingerprint: "f".into(),
            parallelism: 1,
            max_parallelism: 128,
            operators: vec![OperatorState {
                id: "op".into(),
                name: "op".into(),
                parallelism: 1,
                files,
                ..Default::default()
            }],
        }
    }

    /// The names of the files in checkpoint directory `dir`.
    async fn file_names(store: &CheckpointStore, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = store
            .store
            .list(Some(&store.path(dir)))
            .map(|m| {
                m.unwrap()
                    .location
                    .filename()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
            .await;
        names.sort();
        names
    }

    async fn write(store: &CheckpointStore, id: u64) -> Manifest {
        let dir = dir_name(CheckpointKind::Checkpoint, id);
        let files = store
            .write_state(&dir, "op", 0, snapshot(vec![1, 2, 3], &[5, 9, 5]))
            .await
            .unwrap();
        let m = manifest(id, files);
        store.write_manifest(&m).await.unwrap();
        m
    }

    #[tokio::test]
    async fn state_round_trips_by_key_group_range_and_manifests_list() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(tmp.path().to_str().unwrap()).unwrap();
        let m = write(&store, 1).await;
        assert_eq!(m.operators[0].files[0].key_groups, [5, 9]);
        let files: Vec<&StateFile> = m.operators[0].files.iter().collect();
        let low = store
            .read_state(&files, KeyGroupRange { start: 0, end: 6 }, &[])
            .await
            .unwrap();
        assert_eq!(low.num_rows(), 2);
        let none = store
            .read_state(&files, KeyGroupRange { start: 10, end: 20 }, &[])
            .await
            .unwrap();
        assert_eq!(none.num_rows(), 0);
        // A table every subtask holds whole is read in all its key groups.
        let whole = store
            .read_state(&files, KeyGroupRange { start: 10, end: 20 }, &[0])
            .await
            .unwrap();
        assert_eq!(whole.num_rows(), 3);
        let (latest, skipped) = store.latest().await.unwrap();
        assert_eq!(latest.unwrap().id, 1);
        assert!(skipped.is_empty());
    }

    /// Deferred rows are built a set at a time as they are written: when a
    /// set is built, the one before it has been written and dropped (so a
    /// large state passes through the memory of one set), and the sets of
    /// one table and schema go into one file with the table's ready rows.
    #[tokio::test]
    async fn deferred_sets_are_built_one_at_a_time_as_they_are_written() {
        use std::sync::{Mutex, Weak};
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(tmp.path().to_str().unwrap()).unwrap();
        let mut snapshot = StateSnapshot::default();
        snapshot
            .add_columns(0, vec![Arc::new(Int64Array::from(vec![-1]))], &[7])
            .unwrap();
        let last: Arc<Mutex<Option<Weak<dyn arrow::array::Array>>>> = Arc::default();
        let overlaps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen, counted) = (last.clone(), overlaps.clone());
        let sets = (0..5i64).map(move |k| {
            let mut before = seen.lock().unwrap();
            if before.as_ref().is_some_and(|w| w.upgrade().is_some()) {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let values: ArrayRef = Arc::new(Int64Array::from_iter_values(k * 10..k * 10 + 10));
            *before = Some(Arc::downgrade(&values));
            Ok((vec![values], vec![k as KeyGroup + 1; 10]))
        });
        snapshot.add_deferred_grouped(0, 50, sets);
        let files = store.write_state("cp", "op", 0, snapshot).await.unwrap();
        assert_eq!(overlaps.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!((files[0].rows, files[0].key_groups), (51, [1, 7]));
        let files: Vec<&StateFile> = files.iter().collect();
        let back = store
            .read_state(&files, KeyGroupRange { start: 0, end: 128 }, &[])
            .await
            .unwrap();
        let mut values: Vec<i64> = back
            .rows(0, KeyGroupRange { start: 0, end: 128 })
            .unwrap()
            .unwrap()
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        values.sort_unstable();
        assert_eq!(values, (-1..50).collect::<Vec<_>>());

        let mut short = StateSnapshot::default();
        short.add_deferred_grouped(
            1,
            3,
            std::iter::once(Ok((
                vec![Arc::new(Int64Array::from(vec![1])) as ArrayRef],
                vec![0],
            ))),
        );
        let err = store.write_state("cp", "op", 1, short).await.unwrap_err();
        assert!(
            err.to_string().contains("1 rows built, 3 declared"),
            "{err}"
        );
    }

    /// A state larger than a piece is written as several batches, each
    /// holding only its own rows' bytes, and reads back whole.
    #[tokio::test]
    async fn a_large_state_is_written_in_pieces_and_reads_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(tmp.path().to_str().unwrap()).unwrap();
        let n = 1_500_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("value {i}")),
                )),
            ],
        )
        .unwrap();
        let key_groups: Vec<KeyGroup> = (0..n).map(|i| (i % 128) as KeyGroup).collect();
        let mut snapshot = StateSnapshot::default();
        snapshot.add(0, &batch, &key_groups).unwrap();
        let files = store.write_state("cp", "op", 0, snapshot).await.unwrap();
        let bytes = std::fs::read(tmp.path().join(&files[0].path)).unwrap();
        let stored = batch.get_array_memory_size() + 2 * n;
        assert!(
            (bytes.len() as f64) < 1.2 * stored as f64,
            "{} bytes written for {stored} of state: slices wrote whole buffers",
            bytes.len()
        );
        let reader = FileReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let batches = reader.map(|b| b.unwrap()).collect::<Vec<_>>();
        assert!(
            batches.len() >= stored / PIECE_BYTES,
            "{} batches for {stored} bytes",
            batches.len()
        );
        assert!(batches.iter().all(|b| b.num_rows() < n / 2));
        let files: Vec<&StateFile> = files.iter().collect();
        let back = store
            .read_state(&files, KeyGroupRange { start: 0, end: 128 }, &[])
            .await
            .unwrap();
        let back = back.to_batches().unwrap();
        let back = arrow::compute::concat_batches(&back[0].1[0].schema(), &back[0].1).unwrap();
        assert_eq!(back.num_rows(), n);
        assert_eq!(back.column(0), batch.column(0));
        assert_eq!(back.column(1), batch.column(1));
    }

    /// Sets of a dictionary-encoded column over one array of strings go
    /// into one file that holds the strings once, not once per row or per
    /// set, and read back as written.
    #[tokio::test]
    async fn dictionary_sets_sharing_their_strings_write_them_once() {
        use arrow::array::{DictionaryArray, UInt32Array};
        use arrow::datatypes::UInt32Type;
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(tmp.path().to_str().unwrap()).unwrap();
        let strings: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..100).map(|i| format!("{i:0100}")),
        ));
        let (sets, per_set) = (20, 10_000);
        let values = strings.clone();
        let built = (0..sets).map(move |s| {
            let ids =
                UInt32Array::from_iter_values((0..per_set).map(|i| ((i * 7 + s) % 100) as u32));
            let column = DictionaryArray::<UInt32Type>::try_new(ids, values.clone()).unwrap();
            Ok((
                vec![Arc::new(column) as ArrayRef],
                vec![s as KeyGroup; per_set],
            ))
        });
        let mut snapshot = StateSnapshot::default();
        snapshot.add_deferred_grouped(0, sets * per_set, built);
        let files = store.write_state("cp", "op", 0, snapshot).await.unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        // 4-byte ids and a key group per row, the 10 KB of strings once.
        assert!(
            files[0].size < (sets * per_set * 8 + 64 * 1024) as u64,
            "{} bytes",
            files[0].size
        );
        let files: Vec<&StateFile> = files.iter().collect();
        let back = store
            .read_state(&files, KeyGroupRange { start: 0, end: 128 }, &[])
            .await
            .unwrap();
        let rows = back
            .rows(0, KeyGroupRange { start: 3, end: 4 })
            .unwrap()
            .unwrap();
        let got = arrow::compute::cast(rows.column(0), &DataType::Utf8).unwrap();
        let want: StringArray = (0..per_set)
            .map(|i| Some(format!("{:0100}", (i * 7 + 3) % 100)))
            .collect();
        assert_eq!(got.as_ref(), &want as &dyn arrow::array::Array);
    }

    #[tokio::test]
    async fn torn_checkpoints_are_skipped_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let store = CheckpointStore::open(root.to_str().unwrap()).unwrap();
        for id in 1..=4 {
            write(&store, id).await;
        }
        // 5: files but no manifest (never completed): ignored silently.
        store
            .write_state("chk-00000005", "op", 0, snapshot(vec![1], &[1]))
            .await
            .unwrap();
        // 4: a file truncated; 3: a file missing; 2: a file changed.
        let file = |id: u64| root.join(format!("chk-{id:08}/op-0-t0-0.arrow"));
        let bytes = std::fs::read(file(4)).unwrap();
        std::fs::write(file(4), &bytes[..bytes.len() / 2]).unwrap();
        std::fs::remove_file(file(3)).unwrap();
        let mut changed = std::fs::read(file(2)).unwrap();
        let last = changed.len() - 20;
        changed[last] ^= 0xff;
        std::fs::write(file(2), changed).unwrap();
        let (latest, skipped) = store.latest().await.unwrap();
        assert_eq!(latest.unwrap().id, 1);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].contains("chk-00000004") && skipped[0].contains("truncated"));
        assert!(skipped[1].contains("chk-00000003") && skipped[1].contains("missing"));
        assert!(skipped[2].contains("chk-00000002") && skipped[2].contains("checksum"));
        // All torn: nothing usable.
        std::fs::remove_file(file(1)).unwrap();
        assert!(store.latest().await.unwrap().0.is_none());
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_and_what_they_reference() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(tmp.path().to_str().unwrap()).unwrap();
        let first = write(&store, 1).await;
        for id in 2..=5 {
            write(&store, id).await;
        }
        // Checkpoint 6 still lists a file of checkpoint 1 (a task that
        // finished early), so 1 must stay.
        let mut six = manifest(6, first.operators[0].files.clone());
        six.id = 6;
        store.write_manifest(&six).await.unwrap();
        store.retain(3).await.unwrap();
        let ids: Vec<u64> = store.list().await.unwrap().iter().map(|l| l.id).collect();
        assert_eq!(ids, [1, 4, 5, 6]);
        assert_eq!(file_names(&store, "chk-00000001").await.len(), 2);
    }
}
