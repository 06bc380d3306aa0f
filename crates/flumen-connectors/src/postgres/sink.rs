//! Writes rows into a PostgreSQL table, each checkpoint's rows exactly once.
//!
//! A subtask stages the rows it is given in a staging table beside the
//! target (`flumen."stage_<table>_<hash>"`, the target's columns plus the
//! sink, subtask, checkpoint, operation and a sequence number): at a barrier
//! (or earlier, every `sink.buffer-flush.max-rows`) with `COPY`, tagged with
//! the checkpoint they belong to. When checkpoint `n` completes, one
//! transaction moves the subtask's rows staged up to `n` into the target
//! (appended, or in upsert mode applied by key: the last operation per key
//! wins), deletes them from staging and records `n` in
//! `flumen.sink_progress`. A replay cannot apply a row twice, since moving
//! it and deleting it commit together; a restart moves what was staged up to
//! the checkpoint it resumes from and deletes the rest. Without checkpoints
//! each flush is staged and moved in one transaction.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int16Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use bytes::Bytes;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_types::{FlumenError, Result, is_updating};
use futures::SinkExt;
use tokio_postgres::{Client, GenericClient};

use super::{Database, ident, qualified};
use crate::TableSpec;

const DEFAULT_FLUSH_ROWS: usize = 100_000;

/// Makes one PostgreSQL writer per subtask.
pub struct PostgresSinkFactory {
    shared: Arc<Shared>,
}

/// What every subtask of one sink shares.
struct Shared {
    db: Database,
    /// The target table as the user named it.
    table: String,
    /// The target's columns written, in the input's order.
    columns: Vec<String>,
    /// Primary key columns: upsert mode when not empty.
    key: Vec<String>,
    /// Whether the input carries an op column (an updating stream).
    updating: bool,
    /// Names this sink's rows in the staging and progress tables.
    sink_id: String,
    /// The staging table, quoted.
    staging: String,
    flush_rows: usize,
}

impl PostgresSinkFactory {
    /// A sink writing rows of `input` (the table's columns, then an op
    /// column for an updating stream) into the table `spec` names.
    pub fn try_new(spec: &TableSpec, input: SchemaRef, unique: &str) -> Result<Self> {
        let db = Database::from_options(&spec.options)?;
        let table = spec.options.required("table-name")?.to_string();
        let updating = is_updating(&input);
        let n = input.fields().len() - usize::from(updating);
        let columns: Vec<String> = input.fields()[..n]
            .iter()
            .map(|f| f.name().clone())
            .collect();
        if updating && spec.primary_key.is_empty() {
            return Err(FlumenError::plan(format!(
                "table '{}' has no PRIMARY KEY, so it cannot take an updating result; declare one (PRIMARY KEY (…) NOT ENFORCED)",
                spec.name
            )));
        }
        let flush_rows = spec
            .options
            .parse::<usize>("sink.buffer-flush.max-rows")?
            .unwrap_or(DEFAULT_FLUSH_ROWS)
            .max(1);
        let shape = format!("{table}({})", columns.join(","));
        let hash = twox_hash::XxHash64::oneshot(0, shape.as_bytes());
        let base: String = table
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        Ok(PostgresSinkFactory {
            shared: Arc::new(Shared {
                db,
                table,
                columns,
                key: spec.primary_key.clone(),
                updating,
                sink_id: unique.to_string(),
                staging: format!("flumen.{}", ident(&format!("stage_{base}_{hash:016x}"))),
                flush_rows,
            }),
        })
    }
}

#[async_trait]
impl SinkFactory for PostgresSinkFactory {
    fn describe(&self) -> String {
        let s = &self.shared;
        format!(
            "Sink: postgres {} table {} ({})",
            s.db.address,
            s.table,
            if s.key.is_empty() {
                "append".to_string()
            } else {
                format!("upsert on {}", s.key.join(", "))
            }
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(PostgresSink {
            shared: self.shared.clone(),
            subtask: ctx.subtask as i32,
            client: None,
            buffer: Vec::new(),
            buffered: 0,
            epoch: ctx.first_checkpoint,
        }))
    }

    /// Moves every subtask's rows staged up to `committed` into the target
    /// and deletes the rest of this sink's staged rows.
    async fn recover(&self, committed: Option<u64>) -> Result<()> {
        let s = &self.shared;
        let mut client = s.db.connect().await?;
        s.prepare(&client).await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| s.db.error("starting a transaction", e))?;
        if let Some(c) = committed {
            s.apply(&tx, None, c as i64).await?;
        }
        tx.execute(
            &format!("DELETE FROM {} WHERE _flumen_sink = $1", s.staging),
            &[&s.sink_id],
        )
        .await
        .map_err(|e| s.db.error("discarding staged rows", e))?;
        tx.commit()
            .await
            .map_err(|e| s.db.error("committing recovered rows", e))
    }
}

impl Shared {
    /// Checks the target (it exists, has every column written and, in
    /// upsert mode, a unique index on the key) and creates the staging and
    /// progress tables when missing, under a lock so subtasks do not race.
    async fn prepare(&self, client: &Client) -> Result<()> {
        let err = |what: &str, e| self.db.error(what, e);
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
                 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&qualified(&self.table)],
            )
            .await
            .map_err(|e| err("reading the target's columns", e))?;
        if rows.is_empty() {
            return Err(FlumenError::config(format!(
                "PostgreSQL at {} has no table '{}'; create it first",
                self.db.address, self.table
            )));
        }
        let target: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut defs = Vec::new();
        for c in &self.columns {
            let Some((_, ty)) = target.iter().find(|(n, _)| n == c) else {
                let names: Vec<&str> = target.iter().map(|(n, _)| n.as_str()).collect();
                return Err(FlumenError::config(format!(
                    "table '{}' at {} has no column '{c}' (it has: {})",
                    self.table,
                    self.db.address,
                    names.join(", ")
                )));
            };
            defs.push(format!("{} {ty}", ident(c)));
        }
        if !self.key.is_empty() {
            let mut key = self.key.clone();
            key.sort();
            let unique = client
                .query(
                    "SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisunique \
                     AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a \
                          WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = $2::text[]",
                    &[&qualified(&self.table), &key],
                )
                .await
                .map_err(|e| err("reading the target's indexes", e))?;
            if unique.is_empty() {
                return Err(FlumenError::config(format!(
                    "table '{}' at {} has no primary key or unique index on ({}), which upsert mode needs",
                    self.table,
                    self.db.address,
                    self.key.join(", ")
                )));
            }
        }
        // One lock for every sink's DDL, not one per staging table: each
        // creates the shared schema and progress table "if not exists",
        // which PostgreSQL does not make safe against a concurrent creator.
        let ddl = format!(
            "SELECT pg_advisory_xact_lock(7243392, 0); \
             CREATE SCHEMA IF NOT EXISTS flumen; \
             CREATE TABLE IF NOT EXISTS flumen.sink_progress (sink text NOT NULL, subtask int NOT NULL, \
               checkpoint bigint NOT NULL, updated timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (sink, subtask)); \
             CREATE TABLE IF NOT EXISTS {staging} ({defs}, _flumen_sink text NOT NULL, \
               _flumen_subtask int NOT NULL, _flumen_epoch bigint NOT NULL, _flumen_op smallint NOT NULL, \
               _flumen_seq bigserial); \
             CREATE INDEX IF NOT EXISTS {index} ON {staging} (_flumen_sink, _flumen_subtask, _flumen_epoch);",
            staging = self.staging,
            defs = defs.join(", "),
            index = ident(&format!(
                "{}_by_sink",
                self.staging.trim_start_matches("flumen.").trim_matches('"')
            )),
        );
        client
            .batch_execute(&format!("BEGIN; {ddl} COMMIT;"))
            .await
            .map_err(|e| err("creating flumen's staging table", e))
    }

    /// Moves the rows staged by `subtask` (every subtask when `None`) for
    /// checkpoints up to `upto` into the target and deletes them from
    /// staging, inside the caller's transaction.
    async fn apply(&self, tx: &impl GenericClient, subtask: Option<i32>, upto: i64) -> Result<()> {
        let cols = self
            .columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let filter = "_flumen_sink = $1 AND ($2::int IS NULL OR _flumen_subtask = $2) AND _flumen_epoch <= $3";
        let sql = if self.key.is_empty() {
            format!(
                "INSERT INTO {target} ({cols}) SELECT {cols} FROM {staging} WHERE {filter} \
                 ORDER BY _flumen_epoch, _flumen_seq",
                target = qualified(&self.table),
                staging = self.staging,
            )
        } else {
            let key = self
                .key
                .iter()
                .map(|c| ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            let matches = self
                .key
                .iter()
                .map(|c| format!("t.{0} = l.{0}", ident(c)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let rest: Vec<String> = self
                .columns
                .iter()
                .filter(|c| !self.key.contains(c))
                .map(|c| format!("{0} = EXCLUDED.{0}", ident(c)))
                .collect();
            let on_conflict = if rest.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", rest.join(", "))
            };
            format!(
                "WITH last AS (SELECT DISTINCT ON ({key}) {cols}, _flumen_op FROM {staging} WHERE {filter} \
                   ORDER BY {key}, _flumen_epoch DESC, _flumen_seq DESC), \
                 gone AS (DELETE FROM {target} t USING last l WHERE l._flumen_op IN (1, 2) AND {matches}) \
                 INSERT INTO {target} ({cols}) SELECT {cols} FROM last WHERE _flumen_op IN (0, 3) \
                 ON CONFLICT ({key}) {on_conflict}",
                target = qualified(&self.table),
                staging = self.staging,
            )
        };
        tx.execute(&sql, &[&self.sink_id, &subtask, &upto])
            .await
            .map_err(|e| {
                self.db
                    .error(&format!("writing into table '{}'", self.table), e)
            })?;
        tx.execute(
            &format!("DELETE FROM {} WHERE {filter}", self.staging),
            &[&self.sink_id, &subtask, &upto],
        )
        .await
        .map_err(|e| self.db.error("deleting moved rows from staging", e))?;
        Ok(())
    }
}

struct PostgresSink {
    shared: Arc<Shared>,
    subtask: i32,
    client: Option<Client>,
    buffer: Vec<RecordBatch>,
    buffered: usize,
    /// The checkpoint that buffered rows belong to; `None` without
    /// checkpoints.
    epoch: Option<u64>,
}

impl PostgresSink {
    /// The subtask's connection, made (and the tables checked) on first use.
    async fn client(&mut self) -> Result<&mut Client> {
        let client = match self.client.take() {
            Some(client) => client,
            None => {
                let client = self.shared.db.connect().await?;
                self.shared.prepare(&client).await?;
                client
            }
        };
        Ok(self.client.insert(client))
    }

    /// Stages the buffered rows under `epoch` (and, without checkpoints,
    /// moves them into the target in the same transaction).
    async fn flush(&mut self, epoch: Option<u64>) -> Result<usize> {
        if self.buffer.is_empty() {
            return Ok(0);
        }
        let shared = self.shared.clone();
        let subtask = self.subtask;
        let csv = self.csv(epoch.unwrap_or(0))?;
        let rows = self.buffered;
        let client = self.client().await?;
        let err = |what: &str, e| shared.db.error(what, e);
        let tx = client
            .transaction()
            .await
            .map_err(|e| err("starting a transaction", e))?;
        let cols = shared
            .columns
            .iter()
            .map(|c| ident(c))
            .chain(
                [
                    "_flumen_sink",
                    "_flumen_subtask",
                    "_flumen_epoch",
                    "_flumen_op",
                ]
                .map(String::from),
            )
            .collect::<Vec<_>>()
            .join(", ");
        let copy = tx
            .copy_in::<_, Bytes>(&format!(
                "COPY {} ({cols}) FROM STDIN (FORMAT csv, NULL '\\N')",
                shared.staging
            ))
            .await
            .map_err(|e| err("staging rows", e))?;
        futures::pin_mut!(copy);
        copy.send(Bytes::from(csv))
            .await
            .map_err(|e| err("staging rows", e))?;
        copy.as_mut()
            .finish()
            .await
            .map_err(|e| err("staging rows", e))?;
        if epoch.is_none() {
            shared.apply(&tx, Some(subtask), 0).await?;
        }
        tx.commit()
            .await
            .map_err(|e| err("committing staged rows", e))?;
        self.buffer.clear();
        self.buffered = 0;
        Ok(rows)
    }

    /// The buffered rows as CSV for `COPY`: the target's columns, then the
    /// sink, subtask, checkpoint and operation of each row.
    fn csv(&self, epoch: u64) -> Result<Vec<u8>> {
        let shared = &self.shared;
        let n = shared.columns.len();
        let mut out = Vec::new();
        {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(false)
                .with_null("\\N".to_string())
                .with_timestamp_format("%Y-%m-%d %H:%M:%S%.f".to_string())
                .with_timestamp_tz_format("%Y-%m-%d %H:%M:%S%.f%:z".to_string())
                .build(&mut out);
            for batch in &self.buffer {
                let rows = batch.num_rows();
                let mut columns: Vec<ArrayRef> = batch.columns()[..n].to_vec();
                let mut fields: Vec<Field> = batch.schema().fields()[..n]
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                let op: ArrayRef = if shared.updating {
                    let ops = batch.column(n);
                    cast(ops, &DataType::Int16)?
                } else {
                    Arc::new(Int16Array::from_value(0, rows))
                };
                columns.push(Arc::new(StringArray::from_iter_values(
                    std::iter::repeat_n(shared.sink_id.as_str(), rows),
                )));
                columns.push(Arc::new(Int32Array::from_value(self.subtask, rows)));
                columns.push(Arc::new(Int64Array::from_value(epoch as i64, rows)));
                columns.push(op);
                for (name, ty) in [
                    ("_flumen_sink", DataType::Utf8),
                    ("_flumen_subtask", DataType::Int32),
                    ("_flumen_epoch", DataType::Int64),
                    ("_flumen_op", DataType::Int16),
                ] {
                    fields.push(Field::new(name, ty, true));
                }
                let fields: Vec<Field> =
                    fields.into_iter().map(|f| f.with_nullable(true)).collect();
                let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
                writer.write(&batch)?;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.buffered += batch.num_rows();
        self.buffer.push(batch);
        if self.buffered >= self.shared.flush_rows {
            self.flush(self.epoch).await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.flush(self.epoch).await?;
        Ok(())
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<String>> {
        let rows = self.flush(Some(checkpoint)).await?;
        self.epoch = Some(checkpoint + 1);
        Ok(vec![format!(
            "postgres {} table {}: subtask {} staged {rows} rows for checkpoint {checkpoint}",
            self.shared.db.address, self.shared.table, self.subtask
        )])
    }

    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        let shared = self.shared.clone();
        let subtask = self.subtask;
        let client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| shared.db.error("starting a transaction", e))?;
        shared.apply(&tx, Some(subtask), checkpoint as i64).await?;
        tx.execute(
            "INSERT INTO flumen.sink_progress (sink, subtask, checkpoint) VALUES ($1, $2, $3) \
             ON CONFLICT (sink, subtask) DO UPDATE SET checkpoint = EXCLUDED.checkpoint, updated = now()",
            &[&shared.sink_id, &subtask, &(checkpoint as i64)],
        )
        .await
        .map_err(|e| shared.db.error("recording the committed checkpoint", e))?;
        tx.commit().await.map_err(|e| {
            shared
                .db
                .error(&format!("committing checkpoint {checkpoint}"), e)
        })
    }
}
