//! The `postgres` connector: writes a table of a PostgreSQL database, in
//! append mode or, when the table declares a `PRIMARY KEY`, in upsert mode
//! (an updating stream's inserts, updates and deletes applied by key).
//! Exactly once with checkpoints: see [`sink`]. Its tables can also be
//! looked up by key in a lookup join: see [`lookup`].

mod lookup;
mod sink;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use flumen_runtime::{LookupFactory, SinkFactory};
use flumen_types::{FlumenError, Result};
use tokio_postgres::{Client, Config, NoTls};

use crate::options::OptionSpec;
use crate::{Delivery, Options, TableSpec};

pub use sink::PostgresSinkFactory;

/// The `postgres` connector (sink and lookup table).
pub(crate) struct Postgres;

#[async_trait::async_trait]
impl crate::Connector for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    fn delivery(&self) -> Option<Delivery> {
        Some(Delivery::ExactlyOnce)
    }
    /// A table with a primary key takes updates (upsert mode).
    fn accepts_updates(&self, spec: &TableSpec) -> bool {
        !spec.primary_key.is_empty()
    }
    fn sink(
        &self,
        spec: &TableSpec,
        input: SchemaRef,
        unique: &str,
    ) -> Result<Arc<dyn SinkFactory>> {
        Ok(Arc::new(PostgresSinkFactory::try_new(spec, input, unique)?))
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
        Ok(Arc::new(
            lookup::PostgresLookupFactory::try_new(spec, projection, keys).await?,
        ))
    }
}

/// Options of the `postgres` connector (named as Flink's JDBC connector).
pub(crate) const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "url",
        "the database: postgres://user:password@host:port/db, jdbc:postgresql://host:port/db or key=value pairs",
    ),
    OptionSpec::required(
        "table-name",
        "the table written or looked up, optionally schema-qualified (it must exist)",
    ),
    OptionSpec::optional("username", "user name (overrides the url's)"),
    OptionSpec::optional("password", "password (overrides the url's); never printed"),
    OptionSpec::optional(
        "sink.buffer-flush.max-rows",
        "rows a subtask buffers before writing them to the staging table (default 100000)",
    ),
    OptionSpec::optional(
        "connect.max-retries",
        "attempts to reach the server before the job fails, with backoff from 100 ms (default 6)",
    ),
];

/// Where and how to connect, with the address to name in messages (never
/// the password).
#[derive(Clone)]
pub(crate) struct Database {
    config: Config,
    /// `host:port/database`.
    pub(crate) address: String,
    retries: u32,
}

impl Database {
    pub(crate) fn from_options(options: &Options) -> Result<Self> {
        let url = options.required("url")?;
        let url = url.strip_prefix("jdbc:").unwrap_or(url);
        let mut config: Config = url.parse().map_err(|e| {
            FlumenError::config(format!(
                "option 'url' is not a PostgreSQL connection string: {e}"
            ))
        })?;
        if let Some(user) = options.get("username") {
            config.user(user);
        }
        if let Some(password) = options.get("password") {
            config.password(password);
        }
        // Names the job's connections (`pg_stat_activity`) by the table.
        if let Some(table) = options.get("table-name") {
            config.application_name(format!("flumen {table}"));
        }
        if config.get_user().is_none() {
            config.user("postgres");
        }
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => {
                config.host("localhost");
                "localhost".to_string()
            }
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let address = format!(
            "{host}:{port}/{}",
            config
                .get_dbname()
                .unwrap_or(config.get_user().unwrap_or_default())
        );
        let retries = options.parse::<u32>("connect.max-retries")?.unwrap_or(6);
        Ok(Database {
            config,
            address,
            retries: retries.max(1),
        })
    }

    /// A connection, retried with backoff (100 ms, doubling) while the
    /// server cannot be reached; a refusal by the server (credentials, a
    /// missing database) fails at once.
    pub(crate) async fn connect(&self) -> Result<Client> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.config.connect(NoTls).await {
                Ok((client, connection)) => {
                    // The connection's I/O runs beside; its end shows up as
                    // an error of the client's next request.
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    return Ok(client);
                }
                Err(e) if e.as_db_error().is_some() => {
                    return Err(FlumenError::config(format!(
                        "PostgreSQL at {} refused the connection: {}",
                        self.address,
                        db_message(&e)
                    )));
                }
                Err(e) if attempt >= self.retries => {
                    return Err(FlumenError::transient(
                        format!(
                            "cannot connect to PostgreSQL at {} ({attempt} attempts)",
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

    /// `e`, said as a failure of `what` at this database: one a retry may
    /// cure (the connection broke, the server is shutting down, a
    /// serialization conflict) or one that names what is wrong.
    pub(crate) fn error(&self, what: &str, e: tokio_postgres::Error) -> FlumenError {
        let retryable = match e.code() {
            None => true,
            Some(code) => {
                let class = &code.code()[..2];
                matches!(class, "08" | "40" | "53" | "57")
            }
        };
        if retryable {
            FlumenError::transient(format!("{what} (PostgreSQL at {})", self.address), e)
        } else {
            FlumenError::execution(format!(
                "{what} (PostgreSQL at {}): {}",
                self.address,
                db_message(&e)
            ))
        }
    }
}

/// The server's message with its detail and hint, or the client's error.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = db.message().to_string();
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!("; hint: {h}"));
            }
            m
        }
        None => e.to_string(),
    }
}

/// `name` as a quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A possibly schema-qualified table name, each part quoted.
pub(crate) fn qualified(name: &str) -> String {
    name.split('.').map(ident).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> Options {
        Options::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn urls_in_flink_and_libpq_forms_name_the_address_without_the_password() {
        let db = Database::from_options(&options(&[(
            "url",
            "jdbc:postgresql://db.example:6543/shop?user=app",
        )]))
        .unwrap();
        assert_eq!(db.address, "db.example:6543/shop");
        let db = Database::from_options(&options(&[
            ("url", "postgres://app:secret@127.0.0.1/shop"),
            ("password", "other"),
        ]))
        .unwrap();
        assert_eq!(db.address, "127.0.0.1:5432/shop");
        assert!(!db.address.contains("secret"));
        let bad = Database::from_options(&options(&[("url", "postgres://[nope")]));
        assert!(bad.is_err());
    }

    #[test]
    fn identifiers_are_quoted_part_by_part() {
        assert_eq!(qualified("public.Results"), "\"public\".\"Results\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
