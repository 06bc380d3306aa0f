//! The `redis` sink against a real redis-server on loopback
//! (`scripts/services.sh redis` installs Debian's package and starts it
//! when `FLUMEN_REDIS_URL` is not set): windows upserted as hashes equal
//! the file oracle at several parallelisms; an updating aggregate upserted
//! as strings (with deletes) converges to the exact final state although
//! flumen is killed with SIGKILL at random moments; lists and streams get
//! every row; wrong passwords, unreachable servers and tables without keys
//! are named, and no password is printed. Every test writes keys under a
//! prefix of its own and deletes them.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use common::bids::{BID_COLUMNS, OUT_COLUMNS, WINDOWED, bids, expected};
use common::flumen;

/// The server: `FLUMEN_REDIS_URL`, or the one `scripts/services.sh` starts.
fn url() -> &'static str {
    static ADDRESS: OnceLock<String> = OnceLock::new();
    ADDRESS.get_or_init(|| common::service("redis", "FLUMEN_REDIS_URL"))
}

fn connection() -> redis::Connection {
    redis::Client::open(url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Keys under a prefix of one test; deleted when dropped.
struct Prefix(String);

impl Prefix {
    fn new(test: &str) -> Self {
        Prefix(format!("{}:", common::unique_name(test)))
    }

    /// Every key under the prefix, sorted.
    fn keys(&self) -> Vec<String> {
        let mut con = connection();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query(&mut con)
            .unwrap();
        keys.sort();
        keys
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let keys = self.keys();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut connection());
        }
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

/// A timestamp as `YYYY-MM-DDTHH:MM:SS`, however its fraction is written.
fn second(ts: &str) -> String {
    ts.chars().take(19).collect()
}

#[test]
fn windows_upserted_as_hashes_equal_the_oracle_at_several_parallelisms() {
    let work = tempfile::tempdir().unwrap();
    bids(work.path(), 60_000);
    let want: Vec<String> = expected(work.path())
        .iter()
        .map(|l| {
            let v = json(l);
            format!(
                "{} {} num={} top={}",
                v["auction"],
                second(v["window_start"].as_str().unwrap()),
                v["num"],
                v["top"]
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for p in ["1", "2", "4"] {
        let prefix = Prefix::new(&format!("windows-p{p}"));
        let sql = format!(
            "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json');
             CREATE TABLE out ({OUT_COLUMNS}) WITH (connector = 'redis', url = '{}', 'data-type' = 'hash',
               'key.fields' = 'auction;window_start', 'key.prefix' = '{}');
             INSERT INTO out {WINDOWED};",
            url(),
            prefix.0
        );
        std::fs::write(work.path().join("job.sql"), sql).unwrap();
        common::run_ok(work.path(), "job.sql", p);
        let mut con = connection();
        let mut got: Vec<String> = prefix
            .keys()
            .iter()
            .map(|key| {
                let fields: BTreeMap<String, String> =
                    redis::cmd("HGETALL").arg(key).query(&mut con).unwrap();
                let (auction, start) = key[prefix.0.len()..].split_once(':').unwrap();
                format!(
                    "{auction} {} num={} top={}",
                    second(start),
                    fields["num"],
                    fields["top"]
                )
            })
            .collect();
        got.sort();
        common::bids::assert_same(&format!("p={p}"), &got, &want);
    }
}

#[test]
fn an_updating_aggregate_converges_to_the_exact_state_after_sigkills() {
    let work = tempfile::tempdir().unwrap();
    let lines = bids(work.path(), 60_000);
    let prefix = Prefix::new("counts");
    // The oracle, from the rows themselves: per auction % 10, the count and
    // the top price; buckets with fewer bids than the median are kept
    // (HAVING), so the others are deleted once they pass it.
    let mut counts: BTreeMap<i64, (u64, i64)> = BTreeMap::new();
    for l in &lines {
        let v = json(l);
        let entry = counts
            .entry(v["auction"].as_i64().unwrap() % 10)
            .or_insert((0, i64::MIN));
        entry.0 += 1;
        entry.1 = entry.1.max(v["price"].as_i64().unwrap());
    }
    let mut sorted: Vec<u64> = counts.values().map(|c| c.0).collect();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    let want: Vec<String> = counts
        .iter()
        .filter(|(_, c)| c.0 < median)
        .map(|(b, c)| format!("{}{b}={{\"n\":{},\"top\":{}}}", prefix.0, c.0, c.1))
        .collect();
    assert!(!want.is_empty() && want.len() < 10, "{want:?}");
    let sql = format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json',
           rows_per_second = '12000');
         CREATE TABLE counts (bucket BIGINT, n BIGINT, top BIGINT, PRIMARY KEY (bucket) NOT ENFORCED)
           WITH (connector = 'redis', url = '{}', 'key.prefix' = '{}');
         INSERT INTO counts SELECT auction % 10, count(*), max(price) FROM bid
           GROUP BY auction % 10 HAVING count(*) < {median};",
        url(),
        prefix.0
    );
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    common::crash_until_done_within(
        work.path(),
        "job.sql",
        &work.path().join("checkpoints"),
        &["2", "1", "3"],
        3,
        0x7265_6469,
        1000..3000,
    );
    let mut con = connection();
    let got: Vec<String> = prefix
        .keys()
        .iter()
        .map(|key| {
            let value: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
            format!("{key}={value}")
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn lists_and_streams_get_every_row() {
    let work = tempfile::tempdir().unwrap();
    let lines = bids(work.path(), 20_000);
    let prefix = Prefix::new("append");
    let mut want: Vec<String> = lines
        .iter()
        .map(|l| {
            let v = json(l);
            format!(
                "{{\"auction\":{},\"bidder\":{},\"price\":{}}}",
                v["auction"], v["bidder"], v["price"]
            )
        })
        .collect();
    want.sort();
    let sql = format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json');
         CREATE TABLE list_out (auction BIGINT, bidder BIGINT, price BIGINT)
           WITH (connector = 'redis', url = '{url}', 'data-type' = 'list', 'key.prefix' = '{p}bids');
         CREATE TABLE stream_out (auction BIGINT, bidder BIGINT, price BIGINT)
           WITH (connector = 'redis', url = '{url}', 'data-type' = 'stream', 'key.prefix' = '{p}stream');
         INSERT INTO list_out SELECT auction, bidder, price FROM bid;
         INSERT INTO stream_out SELECT auction, bidder, price FROM bid;",
        url = url(),
        p = prefix.0
    );
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    common::run_ok(work.path(), "job.sql", "2");
    let mut con = connection();
    let mut list: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{}bids", prefix.0))
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
    list.sort();
    common::bids::assert_same("list", &list, &want);
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("{}stream", prefix.0))
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let mut stream: Vec<String> = entries
        .iter()
        .map(|(_, f)| {
            format!(
                "{{\"{}\":{},\"{}\":{},\"{}\":{}}}",
                f[0], f[1], f[2], f[3], f[4], f[5]
            )
        })
        .collect();
    stream.sort();
    common::bids::assert_same("stream", &stream, &want);
}

/// Runs `sql` in `work`, which must fail; returns its stderr.
fn fails(work: &std::path::Path, sql: &str) -> String {
    std::fs::write(work.join("bad.sql"), sql).unwrap();
    let out = flumen(&["run", "bad.sql"], work).output().unwrap();
    let text = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "bad.sql succeeded:\n{sql}");
    assert!(!text.contains("panicked"), "{text}");
    text
}

#[test]
fn wrong_passwords_unreachable_servers_and_keyless_tables_are_named() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("a.json"), "{\"a\": 1, \"b\": 2}\n").unwrap();
    let table = |url: &str, options: &str| {
        format!(
            "CREATE TABLE t (a BIGINT, b BIGINT) WITH (connector = 'filesystem', path = 'a.json', format = 'json');
             CREATE TABLE o (a BIGINT, b BIGINT) WITH (connector = 'redis', url = '{url}'{options});
             INSERT INTO o SELECT a, b FROM t;"
        )
    };
    let port = url().rsplit(':').next().unwrap();
    let wrong = format!("redis://:wrong-pw-4711@127.0.0.1:{port}");
    let err = fails(work.path(), &table(&wrong, ", 'key.fields' = 'a'"));
    assert!(
        err.contains(&format!(
            "Redis at 127.0.0.1:{port} refused the credentials"
        )),
        "{err}"
    );
    assert!(
        !err.contains("wrong-pw-4711"),
        "printed the password: {err}"
    );
    let err = fails(
        work.path(),
        &table(
            "redis://127.0.0.1:1",
            ", 'key.fields' = 'a', 'connect.max-retries' = '2'",
        ),
    );
    assert!(
        err.contains("cannot connect to Redis at 127.0.0.1:1"),
        "{err}"
    );
    let err = fails(work.path(), &table(url(), ""));
    assert!(err.contains("need key columns"), "{err}");
    let err = fails(work.path(), &table(url(), ", 'key.fields' = 'c'"));
    assert!(
        err.contains("key column 'c' is not a column") && err.contains("a, b"),
        "{err}"
    );
    assert!(
        !err.contains("flumen-test-secret"),
        "printed the password: {err}"
    );
}

#[test]
fn a_server_restart_mid_run_is_ridden_out_with_the_exact_final_state() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // The shared server's start installs redis-server when missing.
    url();
    // Every write appended to a file, so what the server acknowledged
    // survives its restart.
    let dir = data.path().to_path_buf();
    let mut own = common::OwnServer::start("redis-server", move |port| {
        let mut c = std::process::Command::new("redis-server");
        c.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--port"])
            .arg(port.to_string())
            .arg("--dir")
            .arg(&dir)
            .stderr(std::process::Stdio::null());
        c
    });
    let own_url = format!("redis://127.0.0.1:{}", own.port);
    let lines = bids(work.path(), 60_000);
    let mut counts: BTreeMap<i64, (u64, i64)> = BTreeMap::new();
    for l in &lines {
        let v = json(l);
        let entry = counts
            .entry(v["auction"].as_i64().unwrap() % 7)
            .or_insert((0, i64::MIN));
        entry.0 += 1;
        entry.1 = entry.1.max(v["price"].as_i64().unwrap());
    }
    let want: Vec<String> = counts
        .iter()
        .map(|(b, c)| format!("c:{b}={{\"n\":{},\"top\":{}}}", c.0, c.1))
        .collect();
    let sql = format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json',
           rows_per_second = '10000');
         CREATE TABLE counts (bucket BIGINT, n BIGINT, top BIGINT, PRIMARY KEY (bucket) NOT ENFORCED)
           WITH (connector = 'redis', url = '{}', 'key.prefix' = 'c:');
         INSERT INTO counts SELECT auction % 7, count(*), max(price) FROM bid GROUP BY auction % 7;",
        own_url.as_str()
    );
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    let child = common::start_checkpointed(work.path(), "job.sql", "2");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    own.down();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    own.up();
    let log = common::finish_checkpointed(child, work.path(), std::time::Duration::from_secs(120));
    assert!(
        log.contains("Redis"),
        "the job never saw the server go: {log}"
    );
    let mut con = redis::Client::open(own_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("c:*").query(&mut con).unwrap();
    keys.sort();
    let got: Vec<String> = keys
        .iter()
        .map(|key| {
            let value: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
            format!("{key}={value}")
        })
        .collect();
    assert_eq!(got, want);
}

/// Stores the lookup tests' customers under `prefix`: as hashes, or as
/// strings holding a JSON object of the non-key columns.
fn store_customers(prefix: &str, hashes: bool) {
    let mut con = connection();
    let mut pipe = redis::pipe();
    for (id, name, tier, since, active) in common::lookup::customers() {
        let key = format!("{prefix}{id}");
        if hashes {
            pipe.cmd("HSET")
                .arg(&key)
                .arg(
                    &[
                        "name",
                        &name,
                        "tier",
                        &tier.to_string(),
                        "since",
                        &since,
                        "active",
                        &active.to_string(),
                    ][..],
                )
                .ignore();
        } else {
            let value =
                serde_json::json!({"name": name, "tier": tier, "since": since, "active": active});
            pipe.cmd("SET").arg(&key).arg(value.to_string()).ignore();
        }
    }
    pipe.query::<()>(&mut con).unwrap();
}

/// The options of the customers stored under `prefix` as Redis
/// `data_type`s, read by lookups with the cache `options`.
fn customers_with(data_type: &str, prefix: &Prefix, options: &str) -> String {
    format!(
        "connector = 'redis', url = '{}', 'data-type' = '{data_type}', 'key.fields' = 'id', \
         'key.prefix' = '{}', {options}",
        url(),
        prefix.0
    )
}

#[test]
fn lookup_joins_of_hashes_and_strings_equal_the_batch_join() {
    for (hashes, data_type) in [(true, "hash"), (false, "string")] {
        let prefix = Prefix::new(&format!("lookup-{data_type}"));
        store_customers(&prefix.0, hashes);
        let work = tempfile::tempdir().unwrap();
        common::lookup::check(
            work.path(),
            &customers_with(
                data_type,
                &prefix,
                "'lookup.partial-cache.max-rows' = '100'",
            ),
        );
    }
}

/// A throttled, checkpointed lookup job without a cache whose connections
/// to Redis are cut twice mid-run (`CLIENT KILL` of the clients whose last
/// command was an `MGET`): the lookups reconnect and retry without
/// restarting the job, and the output still equals the batch join.
#[test]
fn lookup_joins_ride_out_cut_connections() {
    let prefix = Prefix::new("lookup-cut");
    store_customers(&prefix.0, false);
    let work = tempfile::tempdir().unwrap();
    let cut = |work: &Path, p: &str| {
        let con = std::cell::RefCell::new(connection());
        common::lookup::run_cut_twice(work, p, &|| {
            let mut con = con.borrow_mut();
            let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut *con).unwrap();
            let readers: Vec<&str> = clients
                .lines()
                .filter(|l| l.contains(" cmd=mget "))
                .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
                .collect();
            for id in &readers {
                let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .query(&mut *con);
            }
            !readers.is_empty()
        });
    };
    common::lookup::check_runs(
        work.path(),
        &customers_with("string", &prefix, "'lookup.cache' = 'NONE'"),
        &["2"],
        ", rows_per_second = '4000'",
        &cut,
    );
}
