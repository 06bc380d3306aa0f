//! The `postgres` sink against a real PostgreSQL server on loopback
//! (`scripts/services.sh` installs and starts it when `FLUMEN_POSTGRES_URL`
//! is not set): a windowed query appended and an updating query upserted
//! exactly once although flumen is killed with SIGKILL at random moments or
//! has its connections cut mid-run; and errors that name what is wrong.
//! Every test makes tables of its own names and drops them.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::flumen;
use common::postgres::{FreshDatabase, Tables, database, psql, psql_at};

const EVENTS: u64 = 240_000;
const THROTTLED_SECONDS: u64 = 12;

/// Creates the target tables `windowed` and `per_channel` (a primary key).
fn create(windowed: &str, per_channel: &str) {
    psql(&format!(
        "CREATE TABLE {windowed} (auction bigint, num bigint, top bigint, window_start timestamp);
         CREATE TABLE {per_channel} (channel text PRIMARY KEY, n bigint NOT NULL, top bigint);"
    ));
}

/// A windowed aggregate appended to `windowed` and an updating aggregate
/// upserted into `per_channel`, over bids of the generator. The sinks stage
/// every 300 rows, so most kills land after rows were staged and before
/// their checkpoint completed.
fn job_sql(windowed: &str, per_channel: &str, throttle: bool) -> String {
    let rps = if throttle {
        format!(
            ", rows_per_second = '{}'",
            EVENTS * 46 / 50 / THROTTLED_SECONDS
        )
    } else {
        String::new()
    };
    let url = database();
    format!(
        "
CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3),
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', kind = 'bid', events = '{EVENTS}', rate = '10000', seed = '7'{rps});
CREATE TABLE windowed (auction BIGINT, num BIGINT, top BIGINT, window_start TIMESTAMP(3))
  WITH (connector = 'postgres', url = '{url}', 'table-name' = '{windowed}',
        'sink.buffer-flush.max-rows' = '300');
INSERT INTO windowed
SELECT auction, count(*), max(price), window_start
FROM tumble(bid, descriptor(date_time), INTERVAL '2' SECOND)
GROUP BY auction, window_start, window_end;
CREATE TABLE per_channel (channel VARCHAR, n BIGINT, top BIGINT, PRIMARY KEY (channel) NOT ENFORCED)
  WITH (connector = 'postgres', url = '{url}', 'table-name' = '{per_channel}',
        'sink.buffer-flush.max-rows' = '300');
INSERT INTO per_channel SELECT channel, count(*), max(price) FROM bid GROUP BY channel;
"
    )
}

/// Both tables' rows, sorted.
fn contents(windowed: &str, per_channel: &str) -> (String, String) {
    (
        psql(&format!("SELECT * FROM {windowed} ORDER BY 1, 2, 3, 4")),
        psql(&format!("SELECT * FROM {per_channel} ORDER BY 1")),
    )
}

/// What a run without failures writes.
fn expected(work: &Path, tables: &[String]) -> (String, String) {
    create(&tables[0], &tables[1]);
    std::fs::write(
        work.join("expected.sql"),
        job_sql(&tables[0], &tables[1], false),
    )
    .unwrap();
    common::run_ok(work, "expected.sql", "2");
    let want = contents(&tables[0], &tables[1]);
    assert!(want.0.lines().count() > 1000 && want.1.lines().count() > 1000);
    want
}

/// Writes what a run without failures gives into tables 0 and 1, creates
/// tables 2 and 3 and writes `job.sql`, a throttled job into them; returns
/// the rows expected.
fn throttled_job(work: &Path, tables: &[String]) -> (String, String) {
    let want = expected(work, tables);
    create(&tables[2], &tables[3]);
    std::fs::write(work.join("job.sql"), job_sql(&tables[2], &tables[3], true)).unwrap();
    want
}

fn assert_same(got: &(String, String), want: &(String, String)) {
    for (what, g, w) in [
        ("windowed", &got.0, &want.0),
        ("per_channel", &got.1, &want.1),
    ] {
        if g != w {
            let first = g.lines().zip(w.lines()).find(|(a, b)| a != b);
            panic!(
                "{what}: {} rows written, {} expected; first difference (got, expected): {first:?}",
                g.lines().count(),
                w.lines().count()
            );
        }
    }
}

#[test]
fn sigkill_at_random_moments_writes_each_row_once() {
    let work = tempfile::tempdir().unwrap();
    let tables = Tables::new("flumen_kill", 4);
    let want = throttled_job(work.path(), &tables.0);
    common::crash_until_done(
        work.path(),
        "job.sql",
        &work.path().join("checkpoints"),
        &["2", "1", "3"],
        10,
        0x5eed_1234,
    );
    assert_same(&contents(&tables.0[2], &tables.0[3]), &want);
    let staged = psql(&format!(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'flumen' AND tablename LIKE 'stage_{}%'",
        tables.0[2]
    ));
    assert_eq!(staged.trim(), "1", "one staging table per target");
}

/// Sinks that start together in a database flumen has not written to yet
/// each create flumen's schema and progress table "if not exists", which
/// PostgreSQL does not make safe against a concurrent creator: all must
/// start, and every row arrive.
#[test]
fn sinks_starting_together_in_a_fresh_database_all_start() {
    let work = tempfile::tempdir().unwrap();
    let db = FreshDatabase::new("flumen_fresh");
    const SINKS: usize = 6;
    let mut sql = String::from(
        "CREATE TABLE bid (auction BIGINT, price BIGINT)
           WITH (connector = 'nexmark', kind = 'bid', events = '5000', seed = '3');\n",
    );
    for i in 0..SINKS {
        psql_at(
            &db.url,
            &format!("CREATE TABLE t{i} (auction bigint, price bigint)"),
        );
        sql.push_str(&format!(
            "CREATE TABLE t{i} (auction BIGINT, price BIGINT)
               WITH (connector = 'postgres', url = '{}', 'table-name' = 't{i}');
             INSERT INTO t{i} SELECT auction, price FROM bid WHERE price % {SINKS} = {i};\n",
            db.url
        ));
    }
    std::fs::write(work.path().join("fresh.sql"), sql).unwrap();
    common::run_ok(work.path(), "fresh.sql", "2");
    let counts: Vec<String> = (0..SINKS)
        .map(|i| {
            psql_at(&db.url, &format!("SELECT count(*) FROM t{i}"))
                .trim()
                .to_string()
        })
        .collect();
    let total: u64 = counts.iter().map(|c| c.parse::<u64>().unwrap()).sum();
    assert_eq!(total, 5000 * 46 / 50, "rows per sink: {counts:?}");
}

#[test]
fn cut_connections_restart_the_job_from_its_checkpoint() {
    let work = tempfile::tempdir().unwrap();
    let tables = Tables::new("flumen_cut", 4);
    let want = throttled_job(work.path(), &tables.0);
    let child = flumen(
        &[
            "run",
            "job.sql",
            "-p",
            "2",
            "--checkpoint-dir",
            "checkpoints",
            "--checkpoint-interval",
            "200ms",
        ],
        work.path(),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Cut every connection of the job to one table, twice, mid-run.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut cut = 0;
    while cut < 2 {
        assert!(Instant::now() < deadline, "the job never connected");
        std::thread::sleep(Duration::from_millis(1500));
        let n = psql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'flumen {}'",
            tables.0[2]
        ));
        if n.trim() != "0" {
            cut += 1;
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("restarting from checkpoint") || stderr.contains("the job restarted"),
        "the job should say it restarted:\n{stderr}"
    );
    assert_same(&contents(&tables.0[2], &tables.0[3]), &want);
}

/// Runs a one-statement job writing the generator's bids into `target`
/// (declared with `columns`), expecting it to fail; its stderr.
fn failure(columns: &str, select: &str, options: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3))
           WITH (connector = 'nexmark', kind = 'bid', events = '1000');
         CREATE TABLE out ({columns}) WITH (connector = 'postgres'{options});
         INSERT INTO out {select};"
    );
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    let out = flumen(&["run", "job.sql"], work.path()).output().unwrap();
    assert!(!out.status.success(), "the job should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn errors_name_the_server_table_and_column() {
    let url = database();
    let tables = Tables::new("flumen_err", 2);
    let (t, keyless) = (&tables.0[0], &tables.0[1]);
    psql(&format!(
        "CREATE TABLE {t} (auction bigint, price bigint); CREATE TABLE {keyless} (channel text, n bigint);"
    ));
    let unreachable = failure(
        "auction BIGINT",
        "SELECT auction FROM bid",
        &format!(
            ", url = 'postgres://flumen@127.0.0.1:9/flumen', 'table-name' = '{t}', 'connect.max-retries' = '2'"
        ),
    );
    assert!(
        unreachable.contains("cannot connect to PostgreSQL at 127.0.0.1:9/flumen (2 attempts)"),
        "{unreachable}"
    );
    let no_database = failure(
        "auction BIGINT",
        "SELECT auction FROM bid",
        &format!(
            ", url = '{}/flumen_nope', 'table-name' = '{t}'",
            url.rsplit_once('/').unwrap().0
        ),
    );
    assert!(
        no_database.contains("refused the connection")
            && no_database.contains("\"flumen_nope\" does not exist"),
        "{no_database}"
    );
    let missing = failure(
        "auction BIGINT",
        "SELECT auction FROM bid",
        &format!(", url = '{url}', 'table-name' = '{t}_nope'"),
    );
    assert!(
        missing.contains(&format!("has no table '{t}_nope'")),
        "{missing}"
    );
    let column = failure(
        "auction BIGINT, bidder BIGINT",
        "SELECT auction, bidder FROM bid",
        &format!(", url = '{url}', 'table-name' = '{t}'"),
    );
    assert!(
        column.contains("has no column 'bidder' (it has: auction, price)"),
        "{column}"
    );
    let no_index = failure(
        "channel VARCHAR, n BIGINT, PRIMARY KEY (channel) NOT ENFORCED",
        "SELECT channel, count(*) FROM bid GROUP BY channel",
        &format!(", url = '{url}', 'table-name' = '{keyless}'"),
    );
    assert!(
        no_index.contains("no primary key or unique index on (channel)"),
        "{no_index}"
    );
    let no_key = failure(
        "channel VARCHAR, n BIGINT",
        "SELECT channel, count(*) FROM bid GROUP BY channel",
        &format!(", url = '{url}', 'table-name' = '{keyless}'"),
    );
    assert!(no_key.contains("can only append rows"), "{no_key}");
    assert!(!unreachable.contains("panicked") && !column.contains("panicked"));
}

/// Creates table `t` of the lookup tests' customers.
fn create_customers(t: &str) {
    let values: Vec<String> = common::lookup::customers()
        .iter()
        .map(|(id, name, tier, since, active)| {
            format!(
                "({id}, '{}', {tier}, '{since}', {active})",
                name.replace('\'', "''")
            )
        })
        .collect();
    psql(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, name text, tier int, since timestamp, active boolean);
         INSERT INTO {t} VALUES {};",
        values.join(", ")
    ));
}

#[test]
fn lookup_joins_equal_the_batch_join_at_several_parallelisms() {
    let work = tempfile::tempdir().unwrap();
    let tables = Tables::new("flumen_lookup", 1);
    let t = &tables.0[0];
    create_customers(t);
    common::lookup::check(
        work.path(),
        &format!(
            "connector = 'postgres', url = '{}', 'table-name' = '{t}', 'lookup.partial-cache.max-rows' = '200'",
            database()
        ),
    );
}

/// A throttled, checkpointed lookup job without a cache whose connections
/// to the database are cut twice mid-run: the lookups reconnect and retry
/// without restarting the job, and the output still equals the batch join.
#[test]
fn lookup_joins_ride_out_cut_connections() {
    let work = tempfile::tempdir().unwrap();
    let tables = Tables::new("flumen_lookup_cut", 1);
    let t = &tables.0[0];
    create_customers(t);
    let cut = |work: &Path, p: &str| {
        common::lookup::run_cut_twice(work, p, &|| {
            psql(&format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = 'flumen {t}'"
            ))
            .trim()
                != "0"
        });
    };
    common::lookup::check_runs(
        work.path(),
        &format!(
            "connector = 'postgres', url = '{}', 'table-name' = '{t}', 'lookup.cache' = 'NONE'",
            database()
        ),
        &["2"],
        ", rows_per_second = '4000'",
        &cut,
    );
}

/// The lookup cache against a table changed mid-run (one key, which every
/// bid reads): with `expire-after-write` of 200 ms, bids read the new value
/// once the cached entry expired, and no later bid the old one; with an
/// hour, every bid carries the value first read although the table changed.
#[test]
fn lookup_cache_serves_a_key_until_it_expires() {
    let tables = Tables::new("flumen_lookup_ttl", 2);
    for (t, ttl, refreshed) in [(&tables.0[0], "200 ms", true), (&tables.0[1], "1 h", false)] {
        psql(&format!(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, label text);
             INSERT INTO {t} VALUES (0, 'old');"
        ));
        let work = tempfile::tempdir().unwrap();
        let sql = format!(
            "
CREATE TABLE bid (auction BIGINT, date_time TIMESTAMP(3))
  WITH (connector = 'nexmark', kind = 'bid', events = '20000', rate = '1000',
        rows_per_second = '5000');
CREATE TABLE labels (id BIGINT, label VARCHAR)
  WITH (connector = 'postgres', url = '{}', 'table-name' = '{t}',
        'lookup.partial-cache.expire-after-write' = '{ttl}');
CREATE TABLE out (auction BIGINT, date_time TIMESTAMP(3), label VARCHAR)
  WITH (connector = 'filesystem', path = 'out', format = 'json');
INSERT INTO out SELECT b.auction, b.date_time, l.label
FROM bid AS b JOIN labels FOR SYSTEM_TIME AS OF b.date_time AS l ON b.auction * 0 = l.id;",
            database()
        );
        std::fs::write(work.path().join("job.sql"), sql).unwrap();
        let mut child = flumen(&["run", "job.sql", "-p", "1"], work.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A second after the lookups connected: about a quarter of the
        // way through the bids (~3.7 s of them).
        let deadline = Instant::now() + Duration::from_secs(60);
        while psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flumen {t}'"
        ))
        .trim()
            == "0"
        {
            assert!(Instant::now() < deadline, "the lookups never connected");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(1000));
        psql(&format!("UPDATE {t} SET label = 'new' WHERE id = 0"));
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the job did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The labels in the bids' order (event time: one event a
        // millisecond, one subtask).
        let mut rows: Vec<(String, String)> =
            common::bids::lines_of(&work.path().join("out"), false)
                .iter()
                .map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    (
                        v["date_time"].to_string(),
                        v["label"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
        rows.sort();
        let labels: Vec<&str> = rows.iter().map(|(_, l)| l.as_str()).collect();
        assert!(labels.len() > 18_000, "{} rows", labels.len());
        let first_new = labels.iter().position(|&l| l == "new");
        if refreshed {
            let k = first_new.expect("bids after the change and its expiry read the new value");
            assert!(
                k > 1000,
                "the old value was read until the change: {k} rows"
            );
            assert!(
                labels[k..].iter().all(|&l| l == "new"),
                "an old value after the new one"
            );
            assert!(labels.len() - k > 1000, "{} rows new", labels.len() - k);
        } else {
            assert_eq!(first_new, None, "the cached value held for the hour");
        }
    }
}

/// Runs `query` over the generator's bids with `customers` declared as a
/// postgres table with `columns` over table `table` (and more `options`),
/// expecting it to fail; its stderr.
fn lookup_failure(columns: &str, table: &str, query: &str, options: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3))
           WITH (connector = 'nexmark', kind = 'bid', events = '1000');
         CREATE TABLE customers ({columns}) WITH (connector = 'postgres', url = '{}', 'table-name' = '{table}'{options});
         {query};",
        database()
    );
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    let out = flumen(&["run", "job.sql"], work.path()).output().unwrap();
    assert!(!out.status.success(), "the job should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn lookup_join_errors_name_the_table_column_and_syntax() {
    let tables = Tables::new("flumen_lookup_err", 1);
    let t = &tables.0[0];
    psql(&format!("CREATE TABLE {t} (id bigint, name text)"));
    let join = "SELECT b.price, c.name FROM bid AS b JOIN customers FOR SYSTEM_TIME AS OF b.date_time AS c ON b.bidder = c.id";
    let missing = lookup_failure("id BIGINT, name VARCHAR", &format!("{t}_nope"), join, "");
    assert!(
        missing.contains(&format!("PostgreSQL table {t}_nope does not exist")),
        "{missing}"
    );
    let column = lookup_failure(
        "id BIGINT, nick VARCHAR",
        t,
        &join.replace("c.name", "c.nick"),
        "",
    );
    assert!(
        column.contains(&format!(
            "column 'nick' is not a column of PostgreSQL table {t}"
        )) && column.contains("its columns: id, name"),
        "{column}"
    );
    let scanned = lookup_failure("id BIGINT, name VARCHAR", t, "SELECT * FROM customers", "");
    assert!(
        scanned.contains("is read by key, as the right side of a lookup join"),
        "{scanned}"
    );
    let left_side = lookup_failure(
        "id BIGINT, name VARCHAR",
        t,
        "SELECT c.name FROM customers AS c JOIN bid AS b ON b.bidder = c.id",
        "",
    );
    assert!(
        left_side.contains("lookup table 'customers' must be the right side of its join"),
        "{left_side}"
    );
    let not_lookup = lookup_failure(
        "id BIGINT, name VARCHAR",
        t,
        "SELECT a.price FROM bid AS a JOIN bid FOR SYSTEM_TIME AS OF a.date_time AS b ON a.bidder = b.bidder",
        "",
    );
    assert!(
        not_lookup.contains("job.sql:4:48: FOR SYSTEM_TIME AS OF reads a table by key")
            && not_lookup.contains("uses connector 'nexmark'; lookup connectors: postgres"),
        "{not_lookup}"
    );
    let cache = lookup_failure(
        "id BIGINT, name VARCHAR",
        t,
        join,
        ", 'lookup.cache' = 'FULL'",
    );
    assert!(
        cache.contains("lookup.cache = 'FULL' is not one of: PARTIAL, NONE"),
        "{cache}"
    );
}
