//! The `mqtt` connector against a real Mosquitto broker on loopback
//! (`scripts/services.sh mqtt` installs and starts Debian's mosquitto when
//! `FLUMEN_MQTT_URL` is not set): bids read from three topics give exactly
//! what the same windowed query gives over the same rows in a file, at
//! parallelism 1 and 2; killed with SIGKILL at random moments and started
//! again, a job loses no message (at least once: the persistent session
//! sends again what no completed checkpoint covered); a broker restart
//! mid-run is ridden out; a sink's rows reach a subscriber once each at
//! QoS 1 and 0; wrong credentials, unreachable brokers and bad options are
//! named. Every test uses topics and client ids of its own.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::bids::{BID_COLUMNS, OUT_COLUMNS, WINDOWED, assert_same, bids, expected, lines_of};
use common::{flumen, runtime, unique_name};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const USER: &str = "flumen";
const PASSWORD: &str = "flumen-test-secret";

/// The broker: `FLUMEN_MQTT_URL`, or the one `scripts/services.sh` starts.
fn broker() -> String {
    common::service("mqtt", "FLUMEN_MQTT_URL")
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A client `id` of the broker at `url` and its event loop.
fn client(url: &str, id: &str, clean: bool) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port_of(url));
    options
        .set_clean_session(clean)
        .set_credentials(USER, PASSWORD)
        .set_keep_alive(Duration::from_secs(10));
    AsyncClient::new(options, 100)
}

/// The client id flumen's source uses for `topic` when a table lists
/// several topics: its `client.id` and a hash of the topic.
fn split_client(prefix: &str, topic: &str) -> String {
    format!(
        "{prefix}-{:08x}",
        twox_hash::XxHash64::oneshot(0, topic.as_bytes()) as u32
    )
}

/// Makes the persistent QoS 1 session a job's source will resume (client
/// `id` subscribed to `topic`), so the broker keeps what is published
/// before the job starts.
fn make_session(url: &str, id: &str, topic: &str) {
    runtime().block_on(async {
        let (c, mut events) = client(url, id, false);
        c.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.unwrap() {
                break;
            }
        }
        c.disconnect().await.unwrap();
        while !matches!(
            events.poll().await,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
        ) {}
    });
}

/// Publishes `lines` to `topic` at QoS 1 and waits for every
/// acknowledgement.
fn publish(url: &str, topic: &str, lines: &[String]) {
    publish_paced(url, &[topic.to_string()], lines, None);
}

/// Publishes `lines` spread over `topics` (line `i` to topic `i` modulo
/// their number) at QoS 1, about `per_second` of them a second when given,
/// through one connection; waits for every acknowledgement.
fn publish_paced(url: &str, topics: &[String], lines: &[String], per_second: Option<u64>) {
    runtime().block_on(async {
        let (c, mut events) = client(url, &unique_name("pub"), true);
        let n = lines.len();
        let driver = tokio::spawn(async move {
            let mut acked = 0;
            while acked < n {
                if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
                    acked += 1;
                }
            }
        });
        let start = Instant::now();
        for (i, line) in lines.iter().enumerate() {
            let topic = &topics[i % topics.len()];
            c.publish(topic, QoS::AtLeastOnce, false, line.as_bytes().to_vec())
                .await
                .unwrap();
            if let Some(rate) = per_second {
                let due = Duration::from_micros(i as u64 * 1_000_000 / rate);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        tokio::time::timeout(Duration::from_secs(60), driver)
            .await
            .expect("acknowledged within 60 s")
            .unwrap();
    });
}

/// A subscriber of `topic` that collects every payload, subscribed when
/// this returns.
struct Collector {
    got: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Collector {
    fn start(url: &str, topic: &str, qos: QoS) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (url, topic, sink) = (url.to_string(), topic.to_string(), got.clone());
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let (c, mut events) = client(&url, &unique_name("sub"), true);
                c.subscribe(topic, qos).await.unwrap();
                loop {
                    let event = tokio::select! {
                        e = events.poll() => e.unwrap(),
                        _ = &mut stopped => return,
                    };
                    match event {
                        Event::Incoming(Packet::SubAck(_)) => ready_tx.send(()).unwrap(),
                        Event::Incoming(Packet::Publish(p)) => sink
                            .lock()
                            .unwrap()
                            .push(String::from_utf8(p.payload.to_vec()).unwrap()),
                        _ => {}
                    }
                }
            });
        });
        ready.recv_timeout(Duration::from_secs(10)).unwrap();
        Collector { got, stop, thread }
    }

    /// Waits up to 20 s for `n` payloads, then stops; the payloads, sorted.
    fn finish(self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.got.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // A duplicate would come right behind: give it the chance.
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.stop.send(());
        self.thread.join().unwrap();
        let mut got = self.got.lock().unwrap().clone();
        got.sort();
        got
    }
}

/// `line` (a bid) with its time moved to 2100: sent last on a topic, it
/// moves the topic's watermark past every window of the test, and its own
/// window never closes.
fn far_future(line: &str) -> String {
    let mut bid: serde_json::Value = serde_json::from_str(line).unwrap();
    bid["date_time"] = serde_json::Value::from("2100-01-01T00:00:00");
    bid.to_string()
}

/// `with` options of an MQTT table reading `topics` as client `id`.
fn mqtt_table(url: &str, topics: &[String], id: &str, extra: &str) -> String {
    format!(
        "connector = 'mqtt', url = '{url}', topic = '{}', username = '{USER}',
         password = '{PASSWORD}', 'client.id' = '{id}', format = 'json'{extra}",
        topics.join(";")
    )
}

/// Waits up to `within` until `dir` holds every line of `want` (the job
/// running for a second at least, so it handles signals), then stops
/// `child` with SIGTERM (a savepoint); it must exit 0. Returns its log.
fn stop_when_all(
    child: Child,
    dir: &Path,
    want: &[String],
    within: Duration,
    work: &Path,
) -> String {
    let started = Instant::now();
    let want: BTreeSet<String> = want.iter().cloned().collect();
    while started.elapsed() < within
        && (started.elapsed() < Duration::from_secs(1) || !committed(dir).is_superset(&want))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    common::sigterm(child.id());
    common::finish_checkpointed(child, work, Duration::from_secs(30))
}

/// The lines committed under `dir`.
fn committed(dir: &Path) -> BTreeSet<String> {
    if dir.exists() {
        lines_of(dir, false).into_iter().collect()
    } else {
        BTreeSet::new()
    }
}

fn count_lines(dir: &Path) -> usize {
    if dir.exists() {
        lines_of(dir, false).len()
    } else {
        0
    }
}

fn topics(test: &str, n: usize) -> Vec<String> {
    let base = unique_name(test);
    (0..n).map(|i| format!("flumen/{base}/bids/{i}")).collect()
}

#[test]
fn windows_over_three_topics_equal_the_file_oracle_at_p1_and_p2() {
    let url = broker();
    let work = tempfile::tempdir().unwrap();
    let lines = bids(work.path(), 30_000);
    let want = expected(work.path());
    for p in ["1", "2"] {
        let topics = topics("read", 3);
        let id = unique_name("flumen-read");
        for t in &topics {
            make_session(&url, &split_client(&id, t), t);
        }
        publish_paced(&url, &topics, &lines, None);
        for (topic, line) in topics.iter().zip(&lines) {
            publish(&url, topic, &[far_future(line)]);
        }
        let dir = format!("out-{p}");
        std::fs::write(
            work.path().join("job.sql"),
            format!(
                "CREATE TABLE bid ({BID_COLUMNS}) WITH ({});
                 CREATE TABLE out ({OUT_COLUMNS}) WITH (connector = 'filesystem', path = '{dir}', format = 'json');
                 INSERT INTO out {WINDOWED};",
                mqtt_table(&url, &topics, &id, "")
            ),
        )
        .unwrap();
        std::fs::remove_dir_all(work.path().join("checkpoints")).ok();
        let child = common::start_checkpointed(work.path(), "job.sql", p);
        let out = work.path().join(&dir);
        stop_when_all(child, &out, &want, Duration::from_secs(60), work.path());
        assert_same(&format!("p={p}"), &lines_of(&out, true), &want);
    }
}

/// `SELECT auction, bidder, price FROM bid` over the bids in `work/bids`
/// (files), sorted.
fn projected(work: &Path) -> Vec<String> {
    std::fs::write(
        work.join("projected.sql"),
        format!(
            "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json');
             CREATE TABLE out (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3))
               WITH (connector = 'filesystem', path = 'projected', format = 'json');
             INSERT INTO out SELECT auction, bidder, price, date_time FROM bid;"
        ),
    )
    .unwrap();
    common::run_ok(work, "projected.sql", "1");
    lines_of(&work.join("projected"), true)
}

/// The projection job reading `topics` as `id` into `out/`.
fn projection_job(url: &str, topics: &[String], id: &str, extra: &str) -> String {
    format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH ({});
         CREATE TABLE out (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3))
           WITH (connector = 'filesystem', path = 'out', format = 'json');
         INSERT INTO out SELECT auction, bidder, price, date_time FROM bid;",
        mqtt_table(url, topics, id, extra)
    )
}

/// Every row of `want` is in `got`, and `got` holds nothing else (it may
/// hold some twice: at least once).
fn assert_all_at_least_once(what: &str, got: &[String], want: &[String]) -> usize {
    let got_set: BTreeSet<&String> = got.iter().collect();
    let want_set: BTreeSet<&String> = want.iter().collect();
    let missing = want_set.difference(&got_set).count();
    let extra = got_set.difference(&want_set).count();
    assert!(
        missing == 0 && extra == 0,
        "{what}: {missing} rows missing, {extra} unexpected, of {}",
        want.len()
    );
    got.len() - want.len()
}

#[test]
fn sigkill_at_random_moments_loses_no_message() {
    let url = broker();
    let work = tempfile::tempdir().unwrap();
    let lines = bids(work.path(), 40_000);
    let topics = topics("kill", 2);
    let id = unique_name("flumen-kill");
    for t in &topics {
        make_session(&url, &split_client(&id, t), t);
    }
    // Published while the job runs and dies, about 5,000 a second: a
    // client that keeps up acknowledges at once what it is told to, so a
    // message acknowledged before its checkpoint completed would be lost.
    let publisher = {
        let (url, topics, lines) = (url.clone(), topics.clone(), lines.clone());
        std::thread::spawn(move || publish_paced(&url, &topics, &lines, Some(5000)))
    };
    std::fs::write(
        work.path().join("job.sql"),
        projection_job(&url, &topics, &id, ""),
    )
    .unwrap();
    let mut random = common::Random(0x6d71_7474);
    for (kill, p) in ["2", "1", "2", "1"].iter().enumerate() {
        let mut child = common::start_checkpointed(work.path(), "job.sql", p);
        std::thread::sleep(Duration::from_millis(1000 + random.below(1500)));
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!(
            "kill {kill}: {} rows committed",
            count_lines(&work.path().join("out"))
        );
    }
    let child = common::start_checkpointed(work.path(), "job.sql", "2");
    publisher.join().unwrap();
    let want = projected(work.path());
    let out = work.path().join("out");
    stop_when_all(child, &out, &want, Duration::from_secs(90), work.path());
    let got = lines_of(&out, true);
    let twice = assert_all_at_least_once("after 4 kills", &got, &want);
    eprintln!("{} rows, {twice} delivered twice", want.len());
}

/// A Mosquitto of a test's own on a free port, with persistence under
/// `dir` (a restart keeps its sessions and queued messages), and its URL.
fn own_broker(dir: &Path) -> (common::OwnServer, String) {
    // The shared broker's start installs mosquitto when missing.
    broker();
    let passwd = dir.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args([USER, PASSWORD])
        .status()
        .unwrap();
    assert!(status.success());
    let user = if running_as_root() { "user root\n" } else { "" };
    let dir = dir.to_path_buf();
    let own = common::OwnServer::start("mosquitto", move |port| {
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
                 persistence true\npersistence_location {}/\nmax_inflight_messages 0\n\
                 max_queued_messages 0\nlog_dest stderr\n{user}",
                passwd.display(),
                dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))
            .unwrap();
        let mut c = std::process::Command::new("mosquitto");
        c.arg("-c").arg(dir.join("mosquitto.conf")).stderr(log);
        c
    });
    let url = format!("tcp://127.0.0.1:{}", own.port);
    (own, url)
}

/// Whether this process runs as root (mosquitto then needs `user root` to
/// read files under a root-owned temporary directory).
fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn a_broker_restart_mid_run_is_ridden_out_without_loss() {
    let work = tempfile::tempdir().unwrap();
    let (mut own, own_url) = own_broker(work.path());
    let lines = bids(work.path(), 20_000);
    let want = projected(work.path());
    let topics = topics("restart", 1);
    let id = unique_name("flumen-restart");
    make_session(&own_url, &id, &topics[0]);
    let (first, second) = lines.split_at(lines.len() / 2);
    publish(&own_url, &topics[0], first);
    std::fs::write(
        work.path().join("job.sql"),
        projection_job(&own_url, &topics, &id, ""),
    )
    .unwrap();
    let child = common::start_checkpointed(work.path(), "job.sql", "1");
    let out = work.path().join("out");
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_lines(&out) < first.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    own.down();
    std::thread::sleep(Duration::from_millis(1500));
    own.up();
    publish(&own_url, &topics[0], second);
    stop_when_all(child, &out, &want, Duration::from_secs(60), work.path());
    let twice = assert_all_at_least_once("after a restart", &lines_of(&out, true), &want);
    eprintln!("{twice} rows delivered twice");
}

#[test]
fn a_sink_publishes_each_row_once_at_qos_1_and_0() {
    let url = broker();
    let work = tempfile::tempdir().unwrap();
    bids(work.path(), 20_000);
    let want = expected(work.path());
    let base = unique_name("sink");
    let (t1, t0) = (format!("flumen/{base}/q1"), format!("flumen/{base}/q0"));
    let c1 = Collector::start(&url, &t1, QoS::AtLeastOnce);
    let c0 = Collector::start(&url, &t0, QoS::AtMostOnce);
    let out = |topic: &str, qos: u8| {
        format!(
            "connector = 'mqtt', url = '{url}', topic = '{topic}', qos = '{qos}',
             username = '{USER}', password = '{PASSWORD}', format = 'json'"
        )
    };
    std::fs::write(
        work.path().join("job.sql"),
        format!(
            "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json');
             CREATE TABLE q1 ({OUT_COLUMNS}) WITH ({});
             CREATE TABLE q0 ({OUT_COLUMNS}) WITH ({});
             INSERT INTO q1 {WINDOWED};
             INSERT INTO q0 {WINDOWED};",
            out(&t1, 1),
            out(&t0, 0)
        ),
    )
    .unwrap();
    common::run_ok(work.path(), "job.sql", "2");
    assert_same("qos 1", &c1.finish(want.len()), &want);
    assert_same("qos 0", &c0.finish(want.len()), &want);
}

/// Runs `sql` in `work`, which must fail within 60 s; returns its stderr.
fn fails(work: &Path, sql: &str) -> String {
    fails_with(work, sql, &[])
}

/// [`fails`] with more arguments for `flumen run`.
fn fails_with(work: &Path, sql: &str, args: &[&str]) -> String {
    std::fs::write(work.join("bad.sql"), sql).unwrap();
    let mut all = vec!["run", "bad.sql"];
    all.extend(args);
    let mut child = flumen(&all, work)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(work.join("bad.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{sql}: still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(work.join("bad.log")).unwrap();
    assert!(!status.success(), "{sql} ran");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_credentials_unreachable_brokers_bad_options_and_bad_messages_are_named() {
    let url = broker();
    let work = tempfile::tempdir().unwrap();
    let topic = format!("flumen/{}/bad", unique_name("bad"));
    let table = |options: &str, dir: &str| {
        format!(
            "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'mqtt', url = '{url}', topic = '{topic}',
               username = '{USER}', format = 'json'{options});
             CREATE TABLE out ({BID_COLUMNS}) WITH (connector = 'filesystem', path = '{dir}', format = 'json');
             INSERT INTO out SELECT * FROM bid;"
        )
    };
    let err = fails(work.path(), &table(", password = 'wrong-secret'", "o1"));
    assert!(
        err.contains("refused the credentials") && err.contains("127.0.0.1:"),
        "{err}"
    );
    assert!(!err.contains("wrong-secret"), "{err}");

    let sink = format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'nexmark', kind = 'bid', events = '100');
         CREATE TABLE out ({BID_COLUMNS}) WITH (connector = 'mqtt', url = '{url}', topic = '{topic}',
           username = '{USER}', password = 'wrong-secret', format = 'json');
         INSERT INTO out SELECT * FROM bid;"
    );
    let err = fails(work.path(), &sink);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("wrong-secret"), "{err}");

    let port = common::free_port();
    let err = fails(
        work.path(),
        &table(", password = 'x', 'connect.max-retries' = '2'", "o2")
            .replace(&url, &format!("tcp://127.0.0.1:{port}")),
    );
    assert!(
        err.contains(&format!("127.0.0.1:{port} not reachable")),
        "{err}"
    );

    let err = fails(
        work.path(),
        &table(&format!(", password = '{PASSWORD}', qos = '2'"), "o3"),
    );
    assert!(err.contains("qos = '2' is not one of: 0, 1"), "{err}");
    let err = fails(
        work.path(),
        &sink
            .replace("wrong-secret", PASSWORD)
            .replace(&topic, "flumen/+/out"),
    );
    assert!(err.contains("without wildcards"), "{err}");
    let err = fails(
        work.path(),
        &table(", password = 'x'", "o4").replace(&url, "mqtts://host:8883"),
    );
    assert!(err.contains("mqtts://host:8883"), "{err}");

    // A malformed message, kept in the session a checkpointed job
    // resumes, fails the job naming its topic.
    let id = unique_name("flumen-bad");
    make_session(&url, &id, &topic);
    publish(
        &url,
        &topic,
        &["{\"auction\": \"not a number\"".to_string()],
    );
    let sql = table(
        &format!(", password = '{PASSWORD}', 'client.id' = '{id}'"),
        "o5",
    );
    let err = fails_with(work.path(), &sql, &["--checkpoint-dir", "checkpoints"]);
    assert!(err.contains(&format!("MQTT topic '{topic}'")), "{err}");
}
