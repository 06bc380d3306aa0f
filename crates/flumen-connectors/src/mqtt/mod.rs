//! The `mqtt` connector: subscribes to topics of an MQTT broker and
//! publishes to a topic (rumqttc, MQTT 3.1.1), QoS 0 or 1, for telemetry.
//! At least once with QoS 1: the source keeps a persistent session and
//! acknowledges each message only once the checkpoint that covers it
//! completes, so the broker sends again what a crash cut off; the sink
//! waits at each barrier until the broker acknowledged every message
//! published before it.

mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use flumen_runtime::{SinkFactory, SourceFactory};
use flumen_types::{FlumenError, Result};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
};

use crate::options::OptionSpec;
use crate::{Delivery, Options, TableSpec};

pub use sink::MqttSinkFactory;
pub use source::MqttSourceFactory;

/// The `mqtt` connector (source and sink).
pub(crate) struct Mqtt;

#[async_trait::async_trait]
impl crate::Connector for Mqtt {
    fn name(&self) -> &'static str {
        "mqtt"
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
        Some(Delivery::AtLeastOnce)
    }
    async fn source(
        &self,
        spec: &TableSpec,
        projection: Option<&[usize]>,
    ) -> Result<Arc<dyn SourceFactory>> {
        Ok(Arc::new(
            MqttSourceFactory::try_new(spec, projection).await?,
        ))
    }
    fn sink(
        &self,
        spec: &TableSpec,
        input: SchemaRef,
        unique: &str,
    ) -> Result<Arc<dyn SinkFactory>> {
        Ok(Arc::new(MqttSinkFactory::try_new(spec, input, unique)?))
    }
}

/// Options of the `mqtt` connector.
pub(crate) const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "url",
        "the broker: tcp://host[:port] or mqtt://host[:port] (port 1883 by default)",
    ),
    OptionSpec::required(
        "topic",
        "source: topic filters subscribed to (wildcards + and # allowed), separated by ';', each a split with a client of its own; sink: the topic published to, without wildcards",
    ),
    OptionSpec::optional(
        "qos",
        "0 or 1 (default 1): QoS 1 is at least once (the source acknowledges after checkpoints, the sink waits for the broker's acknowledgements), QoS 0 at most once",
    ),
    OptionSpec::optional("username", "user name, with password"),
    OptionSpec::optional("password", "password; never printed"),
    OptionSpec::optional(
        "client.id",
        "source: the client id of its persistent session (default flumen-<table>; with several topics <id>-<hash of the topic>); sink: the prefix of its clients' ids (default flumen-<table>)",
    ),
    OptionSpec::optional(
        "format",
        "json (default), csv, raw, avro, avro-confluent or debezium-json: the payload of each message",
    ),
    OptionSpec::optional(
        "retain",
        "sink: true to publish retained messages (default false)",
    ),
    crate::bad_data::OPTIONS[0],
    crate::bad_data::OPTIONS[1],
    crate::options::IDLE_TIMEOUT,
    crate::options::ALLOWED_LATENESS,
    crate::throttle::ROWS_PER_SECOND,
    crate::options::LINGER,
    OptionSpec::optional(
        "connect.max-retries",
        "attempts to reach the broker in a row, with backoff from 100 ms to 5 s, before the job fails (default 8)",
    ),
];

/// The largest message a client sends or takes.
const MAX_PACKET: usize = 16 << 20;

/// How to reach the broker, with the address to name in messages (never
/// the password).
#[derive(Clone)]
pub(crate) struct Broker {
    url: String,
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    max_retries: u32,
}

impl Broker {
    fn from_options(options: &Options) -> Result<Self> {
        let url = options.required("url")?.to_string();
        let rest = url
            .strip_prefix("tcp://")
            .or_else(|| url.strip_prefix("mqtt://"))
            .ok_or_else(|| {
                FlumenError::config(format!(
                    "option url: '{url}' is no tcp://host[:port] or mqtt://host[:port] (TLS, mqtts:// and ssl://, is not built in)"
                ))
            })?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>().map_err(|_| {
                    FlumenError::config(format!("option url: '{url}' has no valid port"))
                })?,
            ),
            None => (rest, 1883),
        };
        if host.is_empty() || host.contains('/') {
            return Err(FlumenError::config(format!(
                "option url: '{url}' names no host"
            )));
        }
        let username = options.get("username").map(str::to_string);
        let password = options.get("password").map(str::to_string);
        if password.is_some() && username.is_none() {
            return Err(FlumenError::config("option password needs option username"));
        }
        Ok(Broker {
            url: format!("{host}:{port}"),
            host: host.to_string(),
            port,
            username,
            password,
            max_retries: options.parse::<u32>("connect.max-retries")?.unwrap_or(8),
        })
    }

    /// The broker's address, for messages.
    pub(crate) fn address(&self) -> &str {
        &self.url
    }

    /// A client `id` of this broker and its event loop, not yet connected
    /// (the event loop connects when first polled); `clean` starts a new
    /// session, else the broker keeps the last one; with `manual_acks` a
    /// QoS 1 message is acknowledged only when the caller says so.
    pub(crate) fn client(
        &self,
        id: &str,
        clean: bool,
        manual_acks: bool,
    ) -> (AsyncClient, EventLoop) {
        let mut options = MqttOptions::new(id, self.host.clone(), self.port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(clean)
            .set_manual_acks(manual_acks)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_inflight(1000);
        if let Some(user) = &self.username {
            options.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        AsyncClient::new(options, 1024)
    }

    /// The error a failed connection gives the job: a refusal of the
    /// credentials or client id at once (retrying cannot help), anything
    /// else once `failures` attempts in a row failed; `None` to retry.
    pub(crate) fn failure(&self, e: &ConnectionError, failures: u32) -> Option<FlumenError> {
        if let ConnectionError::ConnectionRefused(code) = e {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    "refused the credentials"
                }
                ConnectReturnCode::BadClientId => "refused the client id",
                ConnectReturnCode::RefusedProtocolVersion => "does not speak MQTT 3.1.1",
                ConnectReturnCode::ServiceUnavailable | ConnectReturnCode::Success => {
                    return self.transient(e, failures);
                }
            };
            return Some(FlumenError::config(format!(
                "MQTT broker at {} {why} ({code:?})",
                self.url
            )));
        }
        self.transient(e, failures)
    }

    fn transient(&self, e: &ConnectionError, failures: u32) -> Option<FlumenError> {
        (failures > self.max_retries).then(|| {
            FlumenError::transient(
                format!(
                    "MQTT broker at {} not reachable ({failures} attempts)",
                    self.url
                ),
                std::io::Error::other(e.to_string()),
            )
        })
    }

    /// Connects once with client `id` (a clean session), retrying as a
    /// job would, and disconnects: so a table's wrong address or
    /// credentials fail when the job is planned, named.
    pub(crate) async fn check(&self, id: &str) -> Result<()> {
        let (client, mut events) = self.client(id, true, false);
        let mut failures = 0;
        let mut delay = Duration::from_millis(100);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    if let Some(err) = self.failure(&e, failures) {
                        return Err(err);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        // The connection is dropped either way; a clean goodbye is a
        // courtesy to the broker's log.
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
        Ok(())
    }
}

/// The `qos` option: 0 or 1.
fn parse_qos(options: &Options) -> Result<QoS> {
    Ok(match options.choice("qos", &["0", "1"], "1")? {
        "0" => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    })
}

/// Whether `topic` holds an MQTT wildcard.
fn has_wildcard(topic: &str) -> bool {
    topic.contains(['+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> Options {
        Options::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn urls_name_host_and_port() {
        let b = Broker::from_options(&options(&[("url", "tcp://127.0.0.1:11883")])).unwrap();
        assert_eq!((b.host.as_str(), b.port), ("127.0.0.1", 11883));
        let b = Broker::from_options(&options(&[("url", "mqtt://broker")])).unwrap();
        assert_eq!((b.host.as_str(), b.port), ("broker", 1883));
        for bad in [
            "mqtts://broker:8883",
            "broker:1883",
            "tcp://:1883",
            "tcp://h:x",
        ] {
            let err = Broker::from_options(&options(&[("url", bad)]))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn qos_2_is_refused_naming_the_valid_levels() {
        let err = parse_qos(&options(&[("qos", "2")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("qos") && err.contains('0') && err.contains('1'),
            "{err}"
        );
        assert_eq!(parse_qos(&options(&[])).unwrap(), QoS::AtLeastOnce);
    }
}
