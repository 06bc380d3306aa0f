//! The `redis` connector (sink): writes each row as a Redis string, a
//! hash, a list element or a stream entry, keyed by some of its columns.
//! Strings and hashes take an updating stream (upserts by key: an insert
//! or update sets the key, a delete removes it), so a replay after a
//! restart converges to the same state; lists and streams are appended to
//! at least once. See [`sink`]. Strings and hashes can also be looked up
//! by key in a lookup join: see [`lookup`].

mod lookup;
mod sink;

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError};
use arrow::array::{Array, AsArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use flumen_runtime::{LookupFactory, SinkFactory};
use flumen_types::{FlumenError, Result};

use crate::options::OptionSpec;
use crate::{Delivery, Options, TableSpec};

pub use sink::RedisSinkFactory;

/// The `redis` connector (sink and lookup table).
pub(crate) struct Redis;

#[async_trait::async_trait]
impl crate::Connector for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    fn delivery(&self) -> Option<Delivery> {
        Some(Delivery::AtLeastOnce)
    }
    /// Strings and hashes with key columns take updates (upserts by key).
    /// Writes are keyed by `key.fields`, else the primary key.
    fn upsert_key(&self, spec: &TableSpec) -> Vec<String> {
        crate::key_fields(spec)
    }
    fn accepts_updates(&self, spec: &TableSpec) -> bool {
        let keyed = !spec.primary_key.is_empty() || spec.options.get("key.fields").is_some();
        keyed
            && matches!(
                spec.options.get("data-type").unwrap_or("string"),
                "string" | "hash"
            )
    }
    fn sink(
        &self,
        spec: &TableSpec,
        input: SchemaRef,
        _unique: &str,
    ) -> Result<Arc<dyn SinkFactory>> {
        Ok(Arc::new(RedisSinkFactory::try_new(spec, input)?))
    }
    fn looks_up(&self) -> bool {
        true
    }
    async fn lookup(
        &self,
        spec: &TableSpec,
        projection: &[usize],
        keys: &[usize],
    ) -> Result<Arc<dyn LookupFactory>> {
        Ok(Arc::new(lookup::RedisLookupFactory::try_new(
            spec, projection, keys,
        )?))
    }
}

/// Options of the `redis` connector.
pub(crate) const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "url",
        "the server: redis://[:password@]host:port[/db]; the password is never printed",
    ),
    OptionSpec::optional("password", "password (overrides the url's); never printed"),
    OptionSpec::optional(
        "data-type",
        "string (default; SET key value), hash (HSET key column value …), list (RPUSH key value) or stream (XADD key * column value …)",
    ),
    OptionSpec::optional(
        "key.fields",
        "columns (a;b) whose values, joined by ':', make each row's key (default: the table's PRIMARY KEY)",
    ),
    OptionSpec::optional(
        "key.prefix",
        "text put before every key; for a list or stream without key columns, the key itself (default none)",
    ),
    OptionSpec::optional(
        "format",
        "string, list: how the non-key columns become the value: json (default; an object) or raw (the one non-key column as text)",
    ),
    OptionSpec::optional(
        "ttl",
        "string, hash: keys expire this long after their last write, e.g. '1 h' (default never)",
    ),
    OptionSpec::optional(
        "connect.max-retries",
        "attempts to reach the server before the job fails, with backoff from 100 ms (default 6)",
    ),
];

/// How rows are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Hash,
    List,
    Stream,
}

/// Where a table's rows live in Redis and how: the server, the data type,
/// and which columns make the key and which the value.
struct Layout {
    client: Client,
    /// `host:port`, for messages (never the password).
    address: String,
    retries: u32,
    kind: Kind,
    raw: bool,
    prefix: String,
    /// Key and value columns, by index in `columns`.
    keys: Vec<usize>,
    values: Vec<usize>,
    /// The value columns' names (hash fields, stream entry fields).
    value_names: Vec<String>,
}

impl Layout {
    /// Checks the table's options against its `columns`; connects nothing yet.
    fn of(spec: &TableSpec, columns: &[&str]) -> Result<Self> {
        let options = &spec.options;
        let client = client(options)?;
        let address = client.get_connection_info().addr().to_string();
        let kind =
            match options.choice("data-type", &["string", "hash", "list", "stream"], "string")? {
                "hash" => Kind::Hash,
                "list" => Kind::List,
                "stream" => Kind::Stream,
                _ => Kind::String,
            };
        let raw = options.choice("format", &["json", "raw"], "json")? == "raw";
        let prefix = options.get("key.prefix").unwrap_or_default().to_string();
        let key_names = crate::key_fields(spec);
        let mut keys = Vec::new();
        for name in &key_names {
            let Some(i) = columns.iter().position(|c| c == name) else {
                return Err(FlumenError::config(format!(
                    "key column '{name}' is not a column of the table; its columns are: {}",
                    columns.join(", ")
                )));
            };
            keys.push(i);
        }
        if keys.is_empty() && matches!(kind, Kind::String | Kind::Hash) {
            return Err(FlumenError::config(
                "data-type 'string' and 'hash' need key columns: declare PRIMARY KEY (…) NOT ENFORCED or option key.fields",
            ));
        }
        if keys.is_empty() && prefix.is_empty() {
            return Err(FlumenError::config(
                "a list or stream without key columns needs option key.prefix: the key written to",
            ));
        }
        let values: Vec<usize> = (0..columns.len()).filter(|i| !keys.contains(i)).collect();
        if values.is_empty() {
            return Err(FlumenError::config(
                "every column is a key column: there is no value to write",
            ));
        }
        if raw && (values.len() != 1 || matches!(kind, Kind::Hash | Kind::Stream)) {
            return Err(FlumenError::config(
                "format 'raw' writes one non-key column as a string or list value; this table has more, or is a hash or stream",
            ));
        }
        let retries = options.parse::<u32>("connect.max-retries")?.unwrap_or(6);
        Ok(Layout {
            client,
            address,
            retries: retries.max(1),
            kind,
            raw,
            prefix,
            value_names: values.iter().map(|&i| columns[i].to_string()).collect(),
            keys,
            values,
        })
    }

    /// A connection, retried with backoff (100 ms, doubling) while the
    /// server cannot be reached; refused credentials fail at once.
    async fn connect(&self) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(60)));
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => return Ok(c),
                Err(e) if refused(&e) => {
                    return Err(FlumenError::config(format!(
                        "Redis at {} refused the credentials: {e}",
                        self.address
                    )));
                }
                Err(e) if attempt >= self.retries => {
                    return Err(FlumenError::transient(
                        format!(
                            "cannot connect to Redis at {} ({attempt} attempts)",
                            self.address
                        ),
                        e,
                    ));
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
            }
        }
    }
}

/// The client for the `url` option, with the `password` option put in.
fn client(options: &Options) -> Result<Client> {
    let raw = options.required("url")?;
    let mut url = url::Url::parse(raw).map_err(|e| {
        FlumenError::config(format!(
            "option 'url' is not a Redis URL (redis://host:port/db): {e}"
        ))
    })?;
    if let Some(password) = options.get("password") {
        url.set_password(Some(password))
            .map_err(|()| FlumenError::config("option 'url' takes no password"))?;
    }
    Client::open(url.as_str()).map_err(|e| {
        FlumenError::config(format!(
            "option 'url' is not a Redis URL (redis://host:port/db): {}",
            e.category()
        ))
    })
}

/// Whether the server refused who we said we are (retrying cannot help).
fn refused(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed
        || ["WRONGPASS", "NOAUTH", "NOPERM"]
            .iter()
            .any(|code| e.to_string().contains(code))
}

/// A column as text (numbers in decimal, timestamps as ISO 8601).
fn text(column: &Arc<dyn Array>) -> Result<StringArray> {
    Ok(cast(column, &DataType::Utf8)?.as_string::<i32>().clone())
}
