//! The `nats` connector against a real NATS server with JetStream on
//! loopback (`scripts/services.sh nats` installs and starts Debian's
//! nats-server when `FLUMEN_NATS_URL` is not set): bids read from a stream
//! through one durable consumer per subject give exactly what the same
//! query gives over the same rows in a file, at several parallelisms; when
//! flumen is killed with SIGKILL at random moments and resumes from its
//! checkpoints, the output stream holds each result exactly once; bad
//! messages, missing streams and unreachable servers are named. Every test
//! makes streams of its own names and deletes them.

mod common;

use std::future::IntoFuture;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use common::bids::{BID_COLUMNS, OUT_COLUMNS, WINDOWED, assert_same, bids, expected, lines_of};
use common::{flumen, runtime};
use futures::StreamExt;

/// The server: `FLUMEN_NATS_URL`, or the one `scripts/services.sh` starts.
fn server() -> &'static str {
    static ADDRESS: OnceLock<String> = OnceLock::new();
    ADDRESS.get_or_init(|| common::service("nats", "FLUMEN_NATS_URL"))
}

async fn context_at(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.expect("NATS is up"))
}

async fn context() -> jetstream::Context {
    context_at(server()).await
}

/// Streams of one test, each capturing `<name>.>`, deleted when it ends
/// however it ends.
struct Streams(Vec<String>);

impl Streams {
    fn new(prefix: &str, count: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let names: Vec<String> = (0..count)
            .map(|i| format!("{prefix}_{}_{nanos}_{i}", std::process::id()))
            .collect();
        runtime().block_on(async {
            let js = context().await;
            for name in &names {
                js.create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("{name}.>")],
                    ..Default::default()
                })
                .await
                .expect("a stream is made");
            }
        });
        Streams(names)
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        runtime().block_on(async {
            let js = context().await;
            for name in &self.0 {
                let _ = js.delete_stream(name).await;
            }
        });
    }
}

/// Publishes `lines` to `<stream>.bids.<auction % 3>`, so each subject
/// holds a subsequence in the original order.
fn publish(stream: &str, lines: &[String]) {
    publish_to(server(), stream, lines);
}

/// [`publish`] to the server at `url`.
fn publish_to(url: &str, stream: &str, lines: &[String]) {
    runtime().block_on(async {
        let js = context_at(url).await;
        let mut acks = Vec::new();
        for line in lines {
            let auction: u64 = line
                .split("\"auction\":")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let subject = format!("{stream}.bids.{}", auction % 3);
            acks.push(
                js.publish(subject, line.clone().into())
                    .await
                    .unwrap()
                    .into_future(),
            );
            if acks.len() >= 4096 {
                for ack in futures::future::join_all(acks.drain(..)).await {
                    ack.unwrap();
                }
            }
        }
        for ack in futures::future::join_all(acks).await {
            ack.unwrap();
        }
    });
}

/// Every message stored in `stream`, sorted.
fn stored(stream: &str) -> Vec<String> {
    stored_at(server(), stream)
}

/// [`stored`] at the server at `url`.
fn stored_at(url: &str, stream: &str) -> Vec<String> {
    runtime().block_on(async {
        let js = context_at(url).await;
        let mut s = js.get_stream(stream).await.unwrap();
        let total = s.info().await.unwrap().state.messages;
        let mut lines = Vec::new();
        if total > 0 {
            let consumer = s
                .create_consumer(consumer::pull::Config {
                    ack_policy: consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut messages = consumer.messages().await.unwrap();
            while (lines.len() as u64) < total {
                let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
                    .await
                    .expect("stored messages arrive within 30 s")
                    .unwrap()
                    .unwrap();
                lines.push(String::from_utf8(m.message.payload.to_vec()).unwrap());
            }
        }
        lines.sort();
        lines
    })
}

/// `with` options of a bounded NATS table reading the three bid subjects
/// of `stream`.
fn nats_table(stream: &str, extra: &str) -> String {
    format!(
        "connector = 'nats', servers = '{}', stream = '{stream}',
         subject = '{stream}.bids.0;{stream}.bids.1;{stream}.bids.2',
         format = 'json', 'scan.startup.mode' = 'earliest', 'scan.bounded.mode' = 'latest'{extra}",
        server()
    )
}

/// The windowed job from NATS stream `input` into a filesystem table
/// (`dir`) and, with `output`, exactly once to the subject `<output>.out`.
fn job(input: &str, input_extra: &str, dir: &str, output: Option<&str>) -> String {
    let mut sql = format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH ({});
         CREATE TABLE out ({OUT_COLUMNS}) WITH (connector = 'filesystem', path = '{dir}', format = 'json');
         INSERT INTO out {WINDOWED};",
        nats_table(input, input_extra)
    );
    if let Some(output) = output {
        sql.push_str(&format!(
            "CREATE TABLE subject_out ({OUT_COLUMNS}) WITH (connector = 'nats', servers = '{}',
               subject = '{output}.out', format = 'json', 'sink.delivery-guarantee' = 'exactly-once');
             INSERT INTO subject_out {WINDOWED};",
            server()
        ));
    }
    sql
}

#[test]
fn reads_every_subject_exactly_at_several_parallelisms() {
    let work = tempfile::tempdir().unwrap();
    let streams = Streams::new("flumen_read", 2);
    let (input, output) = (&streams.0[0], &streams.0[1]);
    let lines = bids(work.path(), 60_000);
    publish(input, &lines);
    let want = expected(work.path());
    for p in ["1", "2", "4"] {
        let dir = format!("out-{p}");
        let sink = (p == "2").then_some(output.as_str());
        std::fs::write(work.path().join("job.sql"), job(input, "", &dir, sink)).unwrap();
        common::run_ok(work.path(), "job.sql", p);
        assert_same(
            &format!("p={p}"),
            &lines_of(&work.path().join(&dir), true),
            &want,
        );
    }
    assert_same("stream written at p=2", &stored(output), &want);
}

/// What `SELECT auction, bidder, price FROM bid` gives over the bids in
/// `work/bids` (files), sorted.
fn projected(work: &Path) -> Vec<String> {
    std::fs::write(
        work.join("projected.sql"),
        format!(
            "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json');
             CREATE TABLE out (auction BIGINT, bidder BIGINT, price BIGINT)
               WITH (connector = 'filesystem', path = 'projected', format = 'json');
             INSERT INTO out SELECT auction, bidder, price FROM bid;"
        ),
    )
    .unwrap();
    common::run_ok(work, "projected.sql", "1");
    lines_of(&work.join("projected"), true)
}

#[test]
fn sigkill_at_random_moments_publishes_each_result_once() {
    let work = tempfile::tempdir().unwrap();
    let streams = Streams::new("flumen_kill", 3);
    let (input, output, raw) = (&streams.0[0], &streams.0[1], &streams.0[2]);
    let lines = bids(work.path(), 120_000);
    publish(input, &lines);
    let want = expected(work.path());
    let want_raw = projected(work.path());
    // Besides the windows, every bid projected: every checkpoint interval
    // then has rows to publish, so a restart after any of them would
    // publish some twice but for the message ids.
    let sql = format!(
        "{}
         CREATE TABLE raw_out (auction BIGINT, bidder BIGINT, price BIGINT) WITH (connector = 'nats',
           servers = '{}', subject = '{raw}.raw', format = 'json', 'sink.delivery-guarantee' = 'exactly-once');
         INSERT INTO raw_out SELECT auction, bidder, price FROM bid;",
        job(input, ", rows_per_second = '8000'", "out", Some(output)),
        server()
    );
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    common::crash_until_done_within(
        work.path(),
        "job.sql",
        &work.path().join("checkpoints"),
        &["2", "1", "3"],
        5,
        0x6e61_7473,
        1000..3000,
    );
    assert_same("files", &lines_of(&work.path().join("out"), true), &want);
    assert_same("output stream", &stored(output), &want);
    assert_same("projected stream", &stored(raw), &want_raw);
}

/// Runs `sql` in `work`, which must fail; returns its stderr.
fn fails(work: &Path, sql: &str) -> String {
    std::fs::write(work.join("bad.sql"), sql).unwrap();
    let out = flumen(&["run", "bad.sql"], work).output().unwrap();
    assert!(!out.status.success(), "bad.sql succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_messages_missing_streams_and_unreachable_servers_are_named() {
    let work = tempfile::tempdir().unwrap();
    let streams = Streams::new("flumen_bad", 2);
    let (input, dead_stream) = (&streams.0[0], &streams.0[1]);
    let good = r#"{"auction": 1, "bidder": 2, "price": 3, "channel": "a", "date_time": "2026-01-01T00:00:00"}"#;
    publish(
        input,
        &[
            good.replace("\"auction\": 1", "\"auction\":3"),
            "not json at all \"auction\":3,".to_string(),
            good.replace("\"auction\": 1", "\"auction\":6"),
        ],
    );
    let query = |extra: &str| {
        format!(
            "CREATE TABLE bid ({BID_COLUMNS}) WITH ({});
             CREATE TABLE out (auction BIGINT) WITH (connector = 'filesystem', path = 'out', format = 'json');
             INSERT INTO out SELECT auction FROM bid;",
            nats_table(input, extra)
        )
    };
    let err = fails(work.path(), &query(""));
    assert!(
        err.contains(&format!("NATS stream '{input}' sequence 2")),
        "{err}"
    );

    std::fs::write(
        work.path().join("dead.sql"),
        query(", bad_data = 'dead_letter', 'dead_letter.path' = 'dead'"),
    )
    .unwrap();
    common::run_ok(work.path(), "dead.sql", "1");
    assert_eq!(lines_of(&work.path().join("out"), true).len(), 2);
    let dead = lines_of(&work.path().join("dead"), false);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("\"sequence\":2"), "{}", dead[0]);
    assert!(dead[0].contains("not json at all"), "{}", dead[0]);
    // Dead letters into a subject instead, the same record.
    std::fs::write(
        work.path().join("dead.sql"),
        query(&format!(
            ", bad_data = 'dead_letter', 'dead_letter.subject' = '{dead_stream}.letters'"
        ))
        .replace("path = 'out'", "path = 'out-2'"),
    )
    .unwrap();
    common::run_ok(work.path(), "dead.sql", "1");
    assert_eq!(lines_of(&work.path().join("out-2"), true).len(), 2);
    let in_subject = stored(dead_stream);
    assert_eq!(in_subject.len(), 1, "{in_subject:?}");
    let parse = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap();
    assert_eq!(parse(&in_subject[0]), parse(&dead[0]));

    let missing = query("").replace(&format!("stream = '{input}'"), "stream = 'no_such_stream'");
    let err = fails(work.path(), &missing);
    assert!(
        err.contains(&format!(
            "NATS stream 'no_such_stream' does not exist at {}",
            server()
        )),
        "{err}"
    );

    let err = fails(
        work.path(),
        &query("").replace(server(), "nats://127.0.0.1:1"),
    );
    assert!(
        err.contains("NATS servers at nats://127.0.0.1:1 not reachable"),
        "{err}"
    );

    let err = fails(
        work.path(),
        &format!(
            "CREATE TABLE bid ({BID_COLUMNS}) WITH ({});
             CREATE TABLE out (auction BIGINT) WITH (connector = 'nats', servers = '{}', subject = 'nobody.listens');
             INSERT INTO out SELECT auction FROM bid;",
            nats_table(input, ", bad_data = 'drop'"),
            server()
        ),
    );
    assert!(
        err.contains("no JetStream stream at") && err.contains("captures subject 'nobody.listens'"),
        "{err}"
    );
}

#[test]
fn server_restart_mid_run_resumes_without_loss_or_duplicates() {
    let work = tempfile::tempdir().unwrap();
    // The shared server's start installs nats-server when missing.
    server();
    let dir = work.path().to_path_buf();
    let mut own = common::OwnServer::start("nats-server", move |port| {
        let mut c = std::process::Command::new("nats-server");
        c.args(["--jetstream", "--addr", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--store_dir")
            .arg(dir.join("store"))
            .stderr(std::fs::File::create(dir.join("server.log")).unwrap());
        c
    });
    let url = format!("nats://127.0.0.1:{}", own.port);
    let input = "restart_in";
    let output = "restart_out";
    runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
        for name in [input, output] {
            js.create_stream(stream::Config {
                name: name.to_string(),
                subjects: vec![format!("{name}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });
    let lines = bids(work.path(), 60_000);
    publish_to(&url, input, &lines);
    let want = expected(work.path());
    let sql = job(input, ", rows_per_second = '8000'", "out", Some(output)).replace(server(), &url);
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    let child = common::start_checkpointed(work.path(), "job.sql", "2");
    std::thread::sleep(Duration::from_secs(2));
    own.down();
    std::thread::sleep(Duration::from_millis(1500));
    own.up();
    common::finish_checkpointed(child, work.path(), Duration::from_secs(120));
    assert_same("files", &lines_of(&work.path().join("out"), true), &want);
    assert_same("output stream", &stored_at(&url, output), &want);
}

#[test]
fn metadata_columns_read_stream_subject_sequence_timestamp_and_headers() {
    let streams = Streams::new("flumen_meta", 1);
    let name = &streams.0[0];
    runtime().block_on(async {
        let js = context().await;
        for i in 1..=6u64 {
            let subject = format!("{name}.m.{}", i % 2);
            let payload = if i == 3 {
                "bad".to_string()
            } else {
                format!("{{\"v\": {i}}}")
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("n", i.to_string().as_str());
            let ack = if i % 2 == 0 {
                js.publish_with_headers(subject, headers, payload.into())
                    .await
            } else {
                js.publish(subject, payload.into()).await
            };
            ack.unwrap().await.unwrap();
        }
    });
    // Sequence i holds v = i; the malformed sequence 3 is dropped.
    let mut want: Vec<String> = [1u64, 2, 4, 5, 6]
        .iter()
        .map(|i| {
            let h = if i % 2 == 0 {
                format!(",\"h\":\"{{\\\"n\\\":\\\"{i}\\\"}}\"")
            } else {
                String::new()
            };
            format!(
                "{{\"v\":{i},\"st\":\"{name}\",\"subj\":\"{name}.m.{}\",\"seq\":{i}{h},\"recent\":true}}",
                i % 2
            )
        })
        .collect();
    want.sort();
    let work = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE src (
           v BIGINT,
           st VARCHAR METADATA FROM 'stream',
           subj VARCHAR METADATA FROM 'subject' VIRTUAL,
           seq BIGINT METADATA FROM 'sequence',
           ts TIMESTAMP(3) METADATA FROM 'timestamp',
           h VARCHAR METADATA FROM 'headers'
         ) WITH (connector = 'nats', servers = '{}', stream = '{name}', format = 'json',
           'scan.startup.mode' = 'earliest', 'scan.bounded.mode' = 'latest', bad_data = 'drop');
         CREATE TABLE out (v BIGINT, st VARCHAR, subj VARCHAR, seq BIGINT, h VARCHAR, recent BOOLEAN)
           WITH (connector = 'filesystem', path = 'out', format = 'json');
         INSERT INTO out SELECT v, st, subj, seq, h, ts > TIMESTAMP '2026-01-01 00:00:00' FROM src;",
        server()
    );
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    common::run_ok(work.path(), "job.sql", "1");
    assert_same("metadata", &lines_of(&work.path().join("out"), true), &want);
}
