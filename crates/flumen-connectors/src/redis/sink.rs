//! Writes rows into Redis through one multiplexed connection per subtask,
//! a pipeline of commands per batch, awaited before the next batch (so
//! everything before a checkpoint's barrier is acknowledged when the
//! barrier passes: at least once).
//!
//! A row's key is `key.prefix` followed by its key columns' values joined
//! by `:`. Per data type:
//! - `string`: `SET key value [EX ttl]`, the value the non-key columns as
//!   a JSON object (or the one non-key column as text with `format = 'raw'`);
//! - `hash`: `HSET key column value …` for each non-null non-key column,
//!   `HDEL` for null ones, then `EXPIRE` with a `ttl`;
//! - `list`: `RPUSH key value`; `stream`: `XADD key * column value …`.
//!
//! An updating stream (strings and hashes only) is applied by key: within
//! a batch only each key's last change is sent; an insert or update-after
//! sets the key, a delete or update-before removes it (`DEL`).

use std::collections::HashMap;
use std::sync::Arc;

use ::redis::aio::MultiplexedConnection;
use arrow::array::{Array, Int8Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_types::{FlumenError, OP_COLUMN, Result, RowOp};

use super::{Kind, Layout, refused, text};
use crate::TableSpec;

/// Makes one writer per subtask.
pub struct RedisSinkFactory {
    shared: Arc<Shared>,
}

/// What every subtask of the sink shares.
struct Shared {
    layout: Layout,
    /// Index of the `_op` column of an updating input.
    op: Option<usize>,
    ttl: Option<u64>,
}

impl RedisSinkFactory {
    /// Checks the table's options against its columns; connects nothing yet.
    pub fn try_new(spec: &TableSpec, input: SchemaRef) -> Result<Self> {
        let options = &spec.options;
        let op = input
            .fields()
            .last()
            .filter(|f| f.name() == OP_COLUMN)
            .map(|_| input.fields().len() - 1);
        let columns: Vec<&str> = input
            .fields()
            .iter()
            .take(op.unwrap_or(input.fields().len()))
            .map(|f| f.name().as_str())
            .collect();
        let layout = Layout::of(spec, &columns)?;
        let kind = layout.kind;
        let ttl = options
            .duration("ttl")?
            .map(|d| d.as_secs().max(1))
            .filter(|_| matches!(kind, Kind::String | Kind::Hash));
        Ok(RedisSinkFactory {
            shared: Arc::new(Shared { layout, op, ttl }),
        })
    }
}

#[async_trait]
impl SinkFactory for RedisSinkFactory {
    fn describe(&self) -> String {
        let s = &self.shared;
        format!(
            "Sink: redis {} ({:?}, key prefix '{}')",
            s.layout.address, s.layout.kind, s.layout.prefix
        )
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(RedisSink {
            shared: self.shared.clone(),
            connection: None,
        }))
    }
}

struct RedisSink {
    shared: Arc<Shared>,
    connection: Option<MultiplexedConnection>,
}

impl Shared {
    /// Each row's key.
    fn keys(&self, batch: &RecordBatch) -> Result<Vec<String>> {
        let columns = self
            .layout
            .keys
            .iter()
            .map(|&i| text(batch.column(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok((0..batch.num_rows())
            .map(|row| {
                let mut key = self.layout.prefix.clone();
                for (n, c) in columns.iter().enumerate() {
                    if n > 0 {
                        key.push(':');
                    }
                    if c.is_valid(row) {
                        key.push_str(c.value(row));
                    }
                }
                key
            })
            .collect())
    }

    /// Each row's value for a string or list: its value columns as a JSON
    /// object, or the one value column as text.
    fn encoded(&self, batch: &RecordBatch) -> Result<Vec<String>> {
        if self.layout.raw {
            let c = text(batch.column(self.layout.values[0]))?;
            return Ok((0..c.len())
                .map(|i| if c.is_valid(i) { c.value(i) } else { "" }.to_string())
                .collect());
        }
        let values = batch.project(&self.layout.values)?;
        let mut buf = Vec::with_capacity(values.get_array_memory_size());
        let mut json = arrow::json::LineDelimitedWriter::new(&mut buf);
        json.write(&values)?;
        json.finish()?;
        let text = String::from_utf8(buf)
            .map_err(|e| FlumenError::internal(format!("JSON writer wrote no UTF-8: {e}")))?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// The commands for `batch`.
    fn pipeline(&self, batch: &RecordBatch) -> Result<::redis::Pipeline> {
        let keys = self.keys(batch)?;
        let ops = match self.op {
            Some(i) => Some(
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int8Array>()
                    .ok_or_else(|| FlumenError::internal("the _op column is not Int8"))?,
            ),
            None => None,
        };
        // Of an updating input, only each key's last change counts.
        let rows: Vec<usize> = match ops {
            None => (0..batch.num_rows()).collect(),
            Some(_) => {
                let mut last: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
                for (row, key) in keys.iter().enumerate() {
                    last.insert(key, row);
                }
                (0..batch.num_rows())
                    .filter(|&row| last[keys[row].as_str()] == row)
                    .collect()
            }
        };
        let sets = |row: usize| {
            ops.is_none_or(|o| RowOp::from_code(o.value(row)).is_some_and(RowOp::is_addition))
        };
        let mut pipe = ::redis::pipe();
        match self.layout.kind {
            Kind::String | Kind::List => {
                let values = self.encoded(batch)?;
                for row in rows {
                    let key = &keys[row];
                    match self.layout.kind {
                        Kind::List => pipe.cmd("RPUSH").arg(key).arg(&values[row]).ignore(),
                        _ if !sets(row) => pipe.cmd("DEL").arg(key).ignore(),
                        _ => {
                            pipe.cmd("SET").arg(key).arg(&values[row]);
                            if let Some(ttl) = self.ttl {
                                pipe.arg("EX").arg(ttl);
                            }
                            pipe.ignore()
                        }
                    };
                }
            }
            Kind::Hash | Kind::Stream => {
                let fields = self
                    .layout
                    .values
                    .iter()
                    .map(|&i| text(batch.column(i)))
                    .collect::<Result<Vec<_>>>()?;
                for row in rows {
                    let key = &keys[row];
                    if self.layout.kind == Kind::Hash && !sets(row) {
                        pipe.cmd("DEL").arg(key).ignore();
                        continue;
                    }
                    let present = || {
                        self.layout
                            .value_names
                            .iter()
                            .zip(&fields)
                            .filter(move |(_, c)| c.is_valid(row))
                    };
                    if self.layout.kind == Kind::Stream {
                        pipe.cmd("XADD").arg(key).arg("*");
                        for (name, c) in present() {
                            pipe.arg(name).arg(c.value(row));
                        }
                        pipe.ignore();
                        continue;
                    }
                    if present().next().is_some() {
                        pipe.cmd("HSET").arg(key);
                        for (name, c) in present() {
                            pipe.arg(name).arg(c.value(row));
                        }
                        pipe.ignore();
                    }
                    let nulls: Vec<&String> = self
                        .layout
                        .value_names
                        .iter()
                        .zip(&fields)
                        .filter(|(_, c)| c.is_null(row))
                        .map(|(n, _)| n)
                        .collect();
                    if !nulls.is_empty() {
                        pipe.cmd("HDEL").arg(key).arg(nulls).ignore();
                    }
                    if let Some(ttl) = self.ttl {
                        pipe.cmd("EXPIRE").arg(key).arg(ttl).ignore();
                    }
                }
            }
        }
        Ok(pipe)
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let pipe = self.shared.pipeline(&batch)?;
        if self.connection.is_none() {
            self.connection = Some(self.shared.layout.connect().await?);
        }
        let connection = self.connection.as_mut().expect("connected above");
        if let Err(e) = pipe.query_async::<()>(connection).await {
            // A broken connection is made again by the restarted job.
            self.connection = None;
            if refused(&e) {
                return Err(FlumenError::config(format!(
                    "Redis at {} refused a write: {e}",
                    self.shared.layout.address
                )));
            }
            return Err(FlumenError::transient(
                format!("writing to Redis at {}", self.shared.layout.address),
                e,
            ));
        }
        Ok(())
    }

    /// Every batch was acknowledged when it was written.
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;
    use arrow::array::{Int8Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn spec(options: &[(&str, &str)], primary_key: &[&str]) -> TableSpec {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        TableSpec {
            name: "t".into(),
            schema,
            options: Options::new(
                options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .chain([("url".into(), "redis://:secret-9@127.0.0.1:1/0".into())]),
            )
            .unwrap(),
            primary_key: primary_key.iter().map(|k| k.to_string()).collect(),
            metadata: Vec::new(),
        }
    }

    fn updating() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
            flumen_types::op_field(),
        ]))
    }

    #[test]
    fn an_updating_batch_sends_each_keys_last_change() {
        let f =
            RedisSinkFactory::try_new(&spec(&[("key.prefix", "p:")], &["k"]), updating()).unwrap();
        let batch = RecordBatch::try_new(
            updating(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 1, 2, 3])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    Some("a"),
                    Some("c"),
                    None,
                ])),
                Arc::new(Int8Array::from(vec![0, 0, 2, 3, 0])),
            ],
        )
        .unwrap();
        let pipe = f.shared.pipeline(&batch).unwrap();
        let packed = String::from_utf8_lossy(&pipe.get_packed_pipeline()).replace("\r\n", " ");
        // Key 1 was deleted (update-before last), key 2 holds its update,
        // key 3 a value whose only column is null.
        assert!(packed.contains("DEL $3 p:1"), "{packed}");
        assert!(packed.contains("SET $3 p:2 $9 {\"v\":\"c\"}"), "{packed}");
        assert!(packed.contains("SET $3 p:3 $2 {}"), "{packed}");
        assert!(!packed.contains("\"a\""), "{packed}");
        assert!(!f.describe().contains("secret-9"), "{}", f.describe());
    }

    #[test]
    fn keys_and_formats_are_checked_against_the_columns() {
        let input = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        let err = |options: &[(&str, &str)], pk: &[&str]| {
            RedisSinkFactory::try_new(&spec(options, pk), input.clone())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(&[], &[]).contains("need key columns"));
        assert!(err(&[("key.fields", "x")], &[]).contains("'x' is not a column"));
        assert!(err(&[("data-type", "list")], &[]).contains("needs option key.prefix"));
        assert!(err(&[("data-type", "set")], &["k"]).contains("string, hash, list, stream"));
        assert!(err(&[("data-type", "hash"), ("format", "raw")], &["k"]).contains("raw"));
        assert_eq!(
            err(&[("data-type", "stream"), ("key.prefix", "s")], &[]),
            ""
        );
    }
}
