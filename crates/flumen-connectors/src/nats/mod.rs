//! The `nats` connector: reads a NATS JetStream stream through durable
//! pull consumers and publishes to a subject (async-nats). The source keeps
//! each split's stream sequence in checkpoints and acknowledges messages
//! once the checkpoint that covers them completes; the exactly-once sink
//! keeps a checkpoint's rows in the checkpoint and publishes them, with
//! message ids the server deduplicates by, when it completes.

mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_nats::{Client, ConnectOptions};
use flumen_runtime::{SinkFactory, SourceFactory};
use flumen_types::{FlumenError, Result};

use crate::options::OptionSpec;
use crate::{Delivery, Options, TableSpec};

pub use sink::NatsSinkFactory;
pub use source::NatsSourceFactory;

/// The `nats` connector (source and sink).
pub(crate) struct Nats;

#[async_trait::async_trait]
impl crate::Connector for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }
    fn metadata(&self) -> &'static [OptionSpec] {
        crate::metadata::NATS_KEYS
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    fn reads(&self) -> bool {
        true
    }
    fn formats_messages(&self) -> bool {
        true
    }
    fn delivery(&self) -> Option<Delivery> {
        Some(Delivery::ExactlyOnce)
    }
    async fn source(
        &self,
        spec: &TableSpec,
        projection: Option<&[usize]>,
    ) -> Result<Arc<dyn SourceFactory>> {
        Ok(Arc::new(
            NatsSourceFactory::try_new(spec, projection).await?,
        ))
    }
    fn sink(
        &self,
        spec: &TableSpec,
        input: SchemaRef,
        unique: &str,
    ) -> Result<Arc<dyn SinkFactory>> {
        Ok(Arc::new(NatsSinkFactory::try_new(spec, input, unique)?))
    }
}

/// Options of the `nats` connector.
pub(crate) const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "servers",
        "the NATS servers, nats://host:port separated by ','",
    ),
    OptionSpec::optional(
        "stream",
        "source: the JetStream stream read (required); sink: a stream made to capture subject when none does",
    ),
    OptionSpec::optional(
        "subject",
        "sink: the subject published to (required; a stream must capture it); source: subjects of the stream read, separated by ';', each a split read in parallel (default: the whole stream)",
    ),
    OptionSpec::optional(
        "consumer.name",
        "source: name of its durable consumers (default flumen-<table>; with several subjects, one per subject: <name>-<hash>)",
    ),
    OptionSpec::optional("auth.username", "user name, with auth.password"),
    OptionSpec::optional("auth.password", "password; never printed"),
    OptionSpec::optional("auth.token", "token; never printed"),
    OptionSpec::optional(
        "format",
        "json (default), csv, raw, avro, avro-confluent or debezium-json: the payload of each message",
    ),
    OptionSpec::optional(
        "scan.startup.mode",
        "source, where a job without a checkpoint starts: consumer-position (default: where the durable consumer is, all messages when it is new), earliest, latest or timestamp",
    ),
    OptionSpec::optional(
        "scan.startup.timestamp-millis",
        "source, with scan.startup.mode = 'timestamp': epoch milliseconds of the first message read",
    ),
    OptionSpec::optional(
        "scan.bounded.mode",
        "source: unbounded (default) or latest (read each split until first caught up with the stream, then end)",
    ),
    crate::bad_data::OPTIONS[0],
    crate::bad_data::OPTIONS[1],
    OptionSpec::optional(
        "dead_letter.subject",
        "source, with bad_data = 'dead_letter': a subject a stream captures that receives each malformed record, with its error and position, as a JSON message (instead of dead_letter.path)",
    ),
    crate::options::IDLE_TIMEOUT,
    crate::options::ALLOWED_LATENESS,
    crate::throttle::ROWS_PER_SECOND,
    crate::options::LINGER,
    crate::guarantee::OPTION,
];

/// How to reach the servers, with the address to name in messages (never
/// a password or token).
#[derive(Clone)]
pub(crate) struct Server {
    servers: String,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

/// Attempts to reach the servers before the job fails.
const CONNECT_ATTEMPTS: u32 = 6;

impl Server {
    fn from_options(options: &Options) -> Result<Self> {
        let servers = options.required("servers")?.to_string();
        let username = options.get("auth.username").map(str::to_string);
        let password = options.get("auth.password").map(str::to_string);
        if username.is_some() != password.is_some() {
            return Err(FlumenError::config(
                "options auth.username and auth.password go together",
            ));
        }
        Ok(Server {
            servers,
            username,
            password,
            token: options.get("auth.token").map(str::to_string),
        })
    }

    /// The servers, for messages.
    pub(crate) fn address(&self) -> &str {
        &self.servers
    }

    /// A connection, tried with backoff from 100 ms; wrong credentials fail
    /// at once, servers that stay unreachable fail naming them.
    pub(crate) async fn connect(&self) -> Result<Client> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let mut options = ConnectOptions::new()
                .connection_timeout(Duration::from_secs(5))
                .max_reconnects(None);
            if let (Some(user), Some(password)) = (&self.username, &self.password) {
                options = options.user_and_password(user.clone(), password.clone());
            }
            if let Some(token) = &self.token {
                options = options.token(token.clone());
            }
            match options.connect(self.servers.as_str()).await {
                Ok(client) => return Ok(client),
                Err(e)
                    if matches!(
                        e.kind(),
                        async_nats::ConnectErrorKind::AuthorizationViolation
                            | async_nats::ConnectErrorKind::Authentication
                    ) =>
                {
                    return Err(FlumenError::config(format!(
                        "NATS servers at {} refused the credentials: {e}",
                        self.servers
                    )));
                }
                Err(e) if matches!(e.kind(), async_nats::ConnectErrorKind::ServerParse) => {
                    return Err(FlumenError::config(format!(
                        "option servers: '{}' is no list of NATS server addresses: {e}",
                        self.servers
                    )));
                }
                Err(e) if attempt >= CONNECT_ATTEMPTS => {
                    return Err(FlumenError::transient(
                        format!(
                            "NATS servers at {} not reachable ({attempt} attempts)",
                            self.servers
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
