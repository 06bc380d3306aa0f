//! Reads rows of a PostgreSQL table by key for a lookup join: one prepared
//! query per batch of distinct keys, the keys passed as text arrays and
//! cast to the key columns' own types (so an index on them is used), the
//! rows read back as text and parsed into the table's Arrow types.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray, StringBuilder};
use arrow::compute::{CastOptions, cast, cast_with_options};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use async_trait::async_trait;
use flumen_runtime::{Lookup, LookupFactory};
use flumen_types::{ErrorKind, FlumenError, Result};
use tokio_postgres::{Client, Statement};

use super::{Database, ident, qualified};
use crate::TableSpec;

/// Makes the lookups of one table.
pub(crate) struct PostgresLookupFactory {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    table: String,
    /// The columns returned, as the flumen table declares them.
    schema: SchemaRef,
    /// The query: `$1…$k` are the key columns' values as text arrays.
    query: String,
    keys: usize,
    retries: u32,
}

impl PostgresLookupFactory {
    /// Checks the table and its columns in the database and prepares the
    /// query reading `projection` columns by `keys` columns.
    pub(crate) async fn try_new(
        spec: &TableSpec,
        projection: &[usize],
        keys: &[usize],
    ) -> Result<Self> {
        let db = Database::from_options(&spec.options)?;
        let table = spec.options.required("table-name")?.to_string();
        let client = db.connect().await?;
        let types = column_types(&db, &client, &table).await?;
        let type_of = |name: &str| {
            types
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| {
                    let names: Vec<&str> = types.iter().map(|(n, _)| n.as_str()).collect();
                    FlumenError::config(format!(
                        "column '{name}' is not a column of PostgreSQL table {table} at {}; its columns: {}",
                        db.address,
                        names.join(", ")
                    ))
                })
        };
        let schema = Arc::new(spec.schema.project(projection)?);
        let mut select = vec!["k.i::int4".to_string()];
        for field in schema.fields() {
            type_of(field.name())?;
            let column = format!("t.{}", ident(field.name()));
            select.push(match field.data_type() {
                // Microseconds since the epoch: the same for timestamp and
                // timestamptz, whatever the session's time zone.
                DataType::Timestamp(..) => {
                    format!("(extract(epoch from {column}) * 1000000)::int8::text")
                }
                _ => format!("{column}::text"),
            });
        }
        let mut params = Vec::new();
        let mut names = Vec::new();
        let mut on = Vec::new();
        for (i, &k) in keys.iter().enumerate() {
            let name = spec.schema.field(k).name();
            params.push(format!("${}::text[]", i + 1));
            names.push(format!("k{i}"));
            on.push(format!("t.{} = k.k{i}::{}", ident(name), type_of(name)?));
        }
        let query = format!(
            "SELECT {} FROM unnest({}) WITH ORDINALITY AS k({}, i) JOIN {} AS t ON {}",
            select.join(", "),
            params.join(", "),
            names.join(", "),
            qualified(&table),
            on.join(" AND ")
        );
        client
            .prepare(&query)
            .await
            .map_err(|e| db.error(&format!("preparing the lookup of {table}"), e))?;
        Ok(PostgresLookupFactory {
            shared: Arc::new(Shared {
                db,
                table,
                schema,
                query,
                keys: keys.len(),
                retries: crate::lookup::max_retries(spec)?,
            }),
        })
    }
}

/// Each column of `table` with its type as SQL names it.
async fn column_types(
    db: &Database,
    client: &Client,
    table: &str,
) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&qualified(table)],
        )
        .await
        .map_err(|e| db.error(&format!("reading the columns of {table}"), e))?;
    if rows.is_empty() {
        return Err(FlumenError::config(format!(
            "PostgreSQL table {table} does not exist at {}",
            db.address
        )));
    }
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(unexpected)?,
                r.try_get(1).map_err(unexpected)?,
            ))
        })
        .collect()
}

impl LookupFactory for PostgresLookupFactory {
    fn describe(&self) -> String {
        format!(
            "postgres {} table {}",
            self.shared.db.address, self.shared.table
        )
    }

    fn schema(&self) -> SchemaRef {
        self.shared.schema.clone()
    }

    fn create(&self) -> Result<Box<dyn Lookup>> {
        Ok(Box::new(PostgresLookup {
            shared: self.shared.clone(),
            connection: None,
        }))
    }
}

struct PostgresLookup {
    shared: Arc<Shared>,
    connection: Option<(Client, Statement)>,
}

impl PostgresLookup {
    /// One try: connects (and prepares) if needed, then reads.
    async fn try_lookup(
        &mut self,
        keys: &[Vec<Option<String>>],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let s = &self.shared;
        if self.connection.is_none() {
            let client = s.db.connect().await?;
            let statement = client.prepare(&s.query).await.map_err(|e| {
                s.db.error(&format!("preparing the lookup of {}", s.table), e)
            })?;
            self.connection = Some((client, statement));
        }
        let (client, statement) = self.connection.as_ref().expect("connected above");
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            keys.iter().map(|k| k as _).collect();
        client
            .query(statement, &params)
            .await
            .map_err(|e| s.db.error(&format!("looking up rows of {}", s.table), e))
    }

    /// The rows read as the flumen table's columns.
    fn batch(&self, rows: &[tokio_postgres::Row]) -> Result<(RecordBatch, Vec<u32>)> {
        let s = &self.shared;
        let owners: Vec<u32> = rows
            .iter()
            .map(|r| Ok((r.try_get::<_, i32>(0).map_err(unexpected)? - 1) as u32))
            .collect::<Result<_>>()?;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(s.schema.fields().len());
        for (c, field) in s.schema.fields().iter().enumerate() {
            let mut text = StringBuilder::new();
            for row in rows {
                text.append_option(row.try_get::<_, Option<&str>>(c + 1).map_err(unexpected)?);
            }
            let text: ArrayRef = Arc::new(text.finish());
            let strict = CastOptions {
                safe: false,
                ..Default::default()
            };
            let unreadable = |e: arrow::error::ArrowError| {
                FlumenError::execution(format!(
                    "column '{}' of PostgreSQL table {} cannot be read as {}: {e}",
                    field.name(),
                    s.table,
                    field.data_type()
                ))
            };
            let column = match field.data_type() {
                DataType::Timestamp(unit, tz) => {
                    let micros =
                        cast_with_options(&text, &DataType::Int64, &strict).map_err(unreadable)?;
                    let micros = cast(
                        &micros,
                        &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
                    )?;
                    cast(&micros, &DataType::Timestamp(*unit, tz.clone()))?
                }
                other => cast_with_options(&text, other, &strict).map_err(unreadable)?,
            };
            columns.push(column);
        }
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
        let batch = RecordBatch::try_new_with_options(s.schema.clone(), columns, &options)?;
        Ok((batch, owners))
    }
}

/// A reply column that is not what flumen's own query asked for.
fn unexpected(e: tokio_postgres::Error) -> FlumenError {
    FlumenError::internal(format!(
        "a PostgreSQL reply column has an unexpected type: {e}"
    ))
}

/// A key column's values as text, as the query takes them.
fn as_text(keys: &ArrayRef) -> Result<Vec<Option<String>>> {
    let text = cast(keys, &DataType::Utf8)?;
    let text = text
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("a cast to Utf8 makes a StringArray");
    Ok(text.iter().map(|v| v.map(str::to_string)).collect())
}

#[async_trait]
impl Lookup for PostgresLookup {
    async fn lookup(&mut self, keys: &[ArrayRef]) -> Result<(RecordBatch, Vec<u32>)> {
        if keys.len() != self.shared.keys {
            return Err(FlumenError::internal(format!(
                "a lookup of {} got {} key columns, not {}",
                self.shared.table,
                keys.len(),
                self.shared.keys
            )));
        }
        let text: Vec<Vec<Option<String>>> = keys.iter().map(as_text).collect::<Result<_>>()?;
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            match self.try_lookup(&text).await {
                Ok(rows) => return self.batch(&rows),
                Err(e) if e.kind() == ErrorKind::Retryable && attempt < self.shared.retries => {
                    self.connection = None;
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, TimestampNanosecondArray};

    use super::*;

    #[test]
    fn keys_become_text_postgres_can_cast() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), None]));
        assert_eq!(as_text(&ints).unwrap(), [Some("7".to_string()), None]);
        let ts: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![1_500_000_000]));
        assert_eq!(
            as_text(&ts).unwrap(),
            [Some("1970-01-01T00:00:01.500".to_string())]
        );
    }
}
