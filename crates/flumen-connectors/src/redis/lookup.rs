//! Reads rows of a Redis table by key for a lookup join: the keys of a
//! batch in one round trip (`MGET` for strings, a pipeline of `HMGET` for
//! hashes), values parsed into the table's Arrow types. A key Redis does not
//! have (for a hash: none of its fields) is a key without a row.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, StringArray, UInt32Array};
use arrow::compute::{CastOptions, cast_with_options, take};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use flumen_runtime::{Lookup, LookupFactory};
use flumen_types::{ErrorKind, FlumenError, Result};

use super::{Kind, Layout, refused, text};
use crate::TableSpec;

/// Makes the lookups of one table.
pub(crate) struct RedisLookupFactory {
    shared: Arc<Shared>,
}

struct Shared {
    layout: Layout,
    table: String,
    /// The whole table's columns.
    columns: SchemaRef,
    /// The table columns a lookup returns, and their schema.
    fetched: Vec<usize>,
    schema: SchemaRef,
    /// For each key column of the layout, which of the lookup's key arrays
    /// holds it.
    key_order: Vec<usize>,
    retries: u32,
}

impl RedisLookupFactory {
    /// Checks that the join matches the table's key columns and that its
    /// rows are strings or hashes; connects nothing yet.
    pub(crate) fn try_new(spec: &TableSpec, projection: &[usize], keys: &[usize]) -> Result<Self> {
        let names: Vec<&str> = spec
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let layout = Layout::of(spec, &names)?;
        if !matches!(layout.kind, Kind::String | Kind::Hash) {
            return Err(FlumenError::config(format!(
                "a lookup join reads Redis strings and hashes by key; data-type '{}' cannot be looked up",
                format!("{:?}", layout.kind).to_lowercase()
            )));
        }
        let key_order: Option<Vec<usize>> = layout
            .keys
            .iter()
            .map(|k| keys.iter().position(|j| j == k))
            .collect();
        let column_names = |columns: &[usize]| {
            columns
                .iter()
                .map(|&c| names[c])
                .collect::<Vec<_>>()
                .join(", ")
        };
        let key_order = match key_order {
            Some(order) if keys.len() == layout.keys.len() => order,
            _ => {
                return Err(FlumenError::plan(format!(
                    "a lookup join of Redis table '{}' must match its key columns ({}) and only them; the join matches ({})",
                    spec.name,
                    column_names(&layout.keys),
                    column_names(keys)
                )));
            }
        };
        let schema = Arc::new(spec.schema.project(projection)?);
        Ok(RedisLookupFactory {
            shared: Arc::new(Shared {
                retries: crate::lookup::max_retries(spec)?,
                layout,
                table: spec.name.clone(),
                columns: spec.schema.clone(),
                fetched: projection.to_vec(),
                schema,
                key_order,
            }),
        })
    }
}

impl LookupFactory for RedisLookupFactory {
    fn describe(&self) -> String {
        let l = &self.shared.layout;
        format!(
            "redis {} ({:?}, key prefix '{}')",
            l.address, l.kind, l.prefix
        )
    }

    fn schema(&self) -> SchemaRef {
        self.shared.schema.clone()
    }

    fn create(&self) -> Result<Box<dyn Lookup>> {
        Ok(Box::new(RedisLookup {
            shared: self.shared.clone(),
            connection: None,
        }))
    }
}

struct RedisLookup {
    shared: Arc<Shared>,
    connection: Option<MultiplexedConnection>,
}

impl Shared {
    /// Each key row's Redis key: the prefix, then its key columns joined by `:`.
    fn redis_keys(&self, keys: &[ArrayRef]) -> Result<Vec<String>> {
        let columns = self
            .key_order
            .iter()
            .map(|&i| text(&keys[i]))
            .collect::<Result<Vec<_>>>()?;
        let rows = keys.first().map_or(0, |k| k.len());
        Ok((0..rows)
            .map(|row| {
                let mut key = self.layout.prefix.clone();
                for (n, c) in columns.iter().enumerate() {
                    if n > 0 {
                        key.push(':');
                    }
                    key.push_str(c.value(row));
                }
                key
            })
            .collect())
    }

    /// The value columns of the keys found, from what Redis sent: per key,
    /// each value column's text (a hash), or the one value (a string).
    fn values(&self, found: &[Vec<Option<String>>]) -> Result<Vec<ArrayRef>> {
        let l = &self.layout;
        let value_schema = Arc::new(self.columns.project(&l.values)?);
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        let unreadable = |what: &str, e: arrow::error::ArrowError| {
            FlumenError::execution(format!(
                "a value of Redis table '{}' ({what}) cannot be read: {e}",
                self.table
            ))
        };
        if l.kind == Kind::String && !l.raw {
            let mut decoder = arrow::json::ReaderBuilder::new(value_schema.clone())
                .build_decoder()
                .map_err(|e| unreadable("JSON", e))?;
            for value in found {
                let json = value[0].as_deref().unwrap_or("{}");
                decoder
                    .decode(json.as_bytes())
                    .map_err(|e| unreadable(json, e))?;
                decoder.decode(b"\n").map_err(|e| unreadable(json, e))?;
            }
            let batch = decoder
                .flush()
                .map_err(|e| unreadable("JSON", e))?
                .unwrap_or_else(|| RecordBatch::new_empty(value_schema.clone()));
            return Ok(batch.columns().to_vec());
        }
        value_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let text: ArrayRef = Arc::new(StringArray::from_iter(
                    found.iter().map(|v| v[i].as_deref()),
                ));
                cast_with_options(&text, field.data_type(), &strict)
                    .map_err(|e| unreadable(field.name(), e))
            })
            .collect()
    }
}

impl RedisLookup {
    /// One try: what Redis holds for each key, `None` where it has nothing.
    async fn read(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<Option<String>>>>> {
        let s = &self.shared;
        if self.connection.is_none() {
            self.connection = Some(s.layout.connect().await?);
        }
        let connection = self.connection.as_mut().expect("connected above");
        let failed = |e: ::redis::RedisError| {
            if refused(&e) {
                FlumenError::config(format!("Redis at {} refused a read: {e}", s.layout.address))
            } else {
                FlumenError::transient(
                    format!("looking up keys in Redis at {}", s.layout.address),
                    e,
                )
            }
        };
        match s.layout.kind {
            Kind::Hash => {
                let mut pipe = ::redis::pipe();
                for key in keys {
                    pipe.cmd("HMGET").arg(key).arg(&s.layout.value_names);
                }
                let got: Vec<Vec<Option<String>>> =
                    pipe.query_async(connection).await.map_err(failed)?;
                Ok(got
                    .into_iter()
                    .map(|fields| fields.iter().any(Option::is_some).then_some(fields))
                    .collect())
            }
            _ => {
                let got: Vec<Option<String>> = ::redis::cmd("MGET")
                    .arg(keys)
                    .query_async(connection)
                    .await
                    .map_err(failed)?;
                Ok(got.into_iter().map(|v| v.map(|v| vec![Some(v)])).collect())
            }
        }
    }
}

#[async_trait]
impl Lookup for RedisLookup {
    async fn lookup(&mut self, keys: &[ArrayRef]) -> Result<(RecordBatch, Vec<u32>)> {
        let s = self.shared.clone();
        let redis_keys = s.redis_keys(keys)?;
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        let got = loop {
            match self.read(&redis_keys).await {
                Ok(got) => break got,
                Err(e) if e.kind() == ErrorKind::Retryable && attempt < s.retries => {
                    self.connection = None;
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    self.connection = None;
                    return Err(e);
                }
            }
        };
        let (owners, found): (Vec<u32>, Vec<Vec<Option<String>>>) = got
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i as u32, v?)))
            .unzip();
        let values = s.values(&found)?;
        let picked = UInt32Array::from(owners.clone());
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(s.fetched.len());
        for &c in &s.fetched {
            columns.push(match s.layout.keys.iter().position(|&k| k == c) {
                Some(k) => take(&keys[s.key_order[k]], &picked, None)?,
                None => {
                    let v = s
                        .layout
                        .values
                        .iter()
                        .position(|&v| v == c)
                        .ok_or_else(|| {
                            FlumenError::internal(format!("column {c} is neither key nor value"))
                        })?;
                    values[v].clone()
                }
            });
        }
        let options = RecordBatchOptions::new().with_row_count(Some(owners.len()));
        Ok((
            RecordBatch::try_new_with_options(s.schema.clone(), columns, &options)?,
            owners,
        ))
    }
}
