//! Exactly-once recovery of the `flumen` binary: a job with checkpoints is
//! killed with SIGKILL at random moments and started again until it
//! finishes; what its file sinks committed must equal the output of a run
//! without failures, as multisets (a changelog folded to its final rows).
//! Also: savepoints taken on SIGTERM resume at another parallelism, torn
//! checkpoints are skipped or refused, and a changed plan is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::flumen;

/// Events of the generator: 24 s of event time, read over 12 s of wall
/// clock when throttled, so that ten runs killed within a second each
/// cannot finish the job.
const EVENTS: u64 = 240_000;
const THROTTLED_SECONDS: u64 = 12;

/// Rows of the small table the job's broadcast join reads (from a CSV file
/// beside `out`, which [`job_sql`] writes).
const SIDE_ROWS: u64 = 50;

/// A windowed aggregate, a regular join, an updating aggregate over a join
/// grouped by its key and more (chained to the join, its groups routed by
/// the key), an updating aggregate, a TopN and a join with a small file
/// table (broadcast to every join subtask), each to a file sink, over the
/// Nexmark generator, throttled or not.
fn job_sql(out: &Path, throttle: bool) -> String {
    let side = out.with_extension("side.csv");
    let rows: String = (0..SIDE_ROWS).map(|k| format!("{k},name-{k}\n")).collect();
    std::fs::write(&side, format!("k,name\n{rows}")).unwrap();
    // The join reads the table before any bid: throttled to 0.1 s, so that
    // the bids wait upstream a while but checkpoints soon complete.
    let side_rps = if throttle {
        format!(", rows_per_second = '{}'", SIDE_ROWS * 10)
    } else {
        String::new()
    };
    // rows_per_second per table: its share of the events over the run.
    let rps = |share: u64| {
        if throttle {
            format!(
                ", rows_per_second = '{}'",
                EVENTS * share / 50 / THROTTLED_SECONDS
            )
        } else {
            String::new()
        }
    };
    let out = out.display();
    format!(
        "
CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3),
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', kind = 'bid', events = '{EVENTS}', rate = '10000', seed = '7'{bid});
CREATE TABLE auction (id BIGINT, seller BIGINT, category BIGINT, date_time TIMESTAMP(3),
    PRIMARY KEY (id) NOT ENFORCED,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', kind = 'auction', events = '{EVENTS}', rate = '10000', seed = '7'{auction});

CREATE TABLE windowed (auction BIGINT, num BIGINT, top BIGINT, window_start TIMESTAMP(3))
  WITH (connector = 'filesystem', path = '{out}/windowed', format = 'csv');
INSERT INTO windowed
SELECT auction, count(*), max(price), window_start
FROM tumble(bid, descriptor(date_time), INTERVAL '2' SECOND)
GROUP BY auction, window_start, window_end;

CREATE TABLE joined (auction BIGINT, price BIGINT, seller BIGINT)
  WITH (connector = 'filesystem', path = '{out}/joined', format = 'csv');
INSERT INTO joined
SELECT B.auction, B.price, A.seller FROM bid AS B JOIN auction AS A ON B.auction = A.id
WHERE A.category = 10;

CREATE TABLE per_auction (auction BIGINT, seller BIGINT, n BIGINT, top BIGINT)
  WITH (connector = 'filesystem', path = '{out}/per_auction', format = 'csv', changelog = 'true');
INSERT INTO per_auction
SELECT A.id, A.seller, count(*), max(B.price) FROM auction AS A JOIN bid AS B ON A.id = B.auction
GROUP BY A.id, A.seller;

CREATE TABLE updating (channel VARCHAR, n BIGINT, top BIGINT)
  WITH (connector = 'filesystem', path = '{out}/updating', format = 'csv', changelog = 'true');
INSERT INTO updating SELECT channel, count(*), max(price) FROM bid GROUP BY channel;

CREATE TABLE top (auction BIGINT, price BIGINT, bidder BIGINT, channel VARCHAR, rn BIGINT)
  WITH (connector = 'filesystem', path = '{out}/top', format = 'csv', changelog = 'true');
INSERT INTO top
SELECT auction, price, bidder, channel, rn FROM (
  SELECT auction, price, bidder, channel, ROW_NUMBER() OVER (
    PARTITION BY auction ORDER BY price DESC, date_time, bidder, channel) AS rn
  FROM bid)
WHERE rn <= 2;

CREATE TABLE side (k BIGINT, name VARCHAR)
  WITH (connector = 'filesystem', path = '{side}', format = 'csv'{side_rps});
CREATE TABLE named (auction BIGINT, price BIGINT, name VARCHAR)
  WITH (connector = 'filesystem', path = '{out}/named', format = 'csv');
INSERT INTO named
SELECT B.auction, B.price, S.name FROM bid AS B JOIN side AS S ON B.auction % 500 = S.k;
",
        bid = rps(46),
        auction = rps(3),
        side = side.display(),
    )
}

const SINKS: [&str; 6] = [
    "windowed",
    "joined",
    "per_auction",
    "updating",
    "top",
    "named",
];

fn run_to_end(args: &[&str], dir: &Path) -> Output {
    let out = flumen(args, dir).output().expect("flumen runs");
    assert!(
        out.status.success(),
        "flumen {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The rows committed under `dir`: visible files only, headers skipped; a
/// changelog (a trailing `_op` column) folded to the rows it ends with.
fn committed_rows(dir: &Path) -> Vec<String> {
    let mut rows: Vec<String> = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return rows;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.starts_with('.') && !name.starts_with('_')
        })
        .collect();
    // A key's changes are in order within a subtask's files, and a key moves
    // between subtasks only at a restart, which starts a new checkpoint: so
    // fold by checkpoint (the next-to-last number of a committed file's
    // name), then subtask and file.
    let order = |p: &PathBuf| {
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        let numbers: Vec<u64> = name.split('-').filter_map(|n| n.parse().ok()).collect();
        let checkpoint = numbers.len().checked_sub(2).map_or(0, |i| numbers[i]);
        (checkpoint, name)
    };
    files.sort_by_key(order);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let changelog = header.ends_with(",_op");
        for line in lines {
            if !changelog {
                rows.push(line.to_string());
                continue;
            }
            let (row, op) = line.rsplit_once(',').unwrap();
            match op {
                "0" | "3" => rows.push(row.to_string()),
                "1" | "2" => {
                    let at = rows
                        .iter()
                        .position(|r| r == row)
                        .unwrap_or_else(|| panic!("{file:?}: op {op} of a row never added: {row}"));
                    rows.swap_remove(at);
                }
                other => panic!("{file:?}: unknown op {other}"),
            }
        }
    }
    rows.sort();
    rows
}

/// The output of an uninterrupted run without checkpoints.
fn expected(work: &Path) -> Vec<Vec<String>> {
    let out = work.join("expected");
    std::fs::write(work.join("expected.sql"), job_sql(&out, false)).unwrap();
    run_to_end(&["run", "expected.sql", "-p", "2"], work);
    let rows: Vec<Vec<String>> = SINKS.iter().map(|s| committed_rows(&out.join(s))).collect();
    assert!(
        rows.iter().all(|r| r.len() > 4),
        "the job gives rows: {:?}",
        rows.iter().map(Vec::len).collect::<Vec<_>>()
    );
    rows
}

/// Runs the job with checkpoints every 200 ms, killing it with SIGKILL at
/// random moments at least `kills` times and starting it again, at the
/// parallelisms `parallelism` cycles through, until a run finishes.
fn crash_until_done(work: &Path, name: &str, parallelism: &[&str], kills: usize, seed: u64) {
    let out = work.join(name);
    let sql = format!("{name}.sql");
    std::fs::write(work.join(&sql), job_sql(&out, true)).unwrap();
    let checkpoints = work.join(format!("{name}-checkpoints"));
    common::crash_until_done(work, &sql, &checkpoints, parallelism, kills, seed);
}

fn check(work: &Path, name: &str, expected: &[Vec<String>]) {
    for (sink, want) in SINKS.iter().zip(expected) {
        let got = committed_rows(&work.join(name).join(sink));
        assert!(
            got == *want,
            "{name}/{sink}: {} rows committed, {} expected; first differences: {:?}",
            got.len(),
            want.len(),
            got.iter().zip(want).find(|(g, w)| g != w)
        );
    }
}

#[test]
fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let expected = expected(work);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill timings seeded with {seed}");
    crash_until_done(work, "p1", &["1"], 10, seed);
    check(work, "p1", &expected);
    crash_until_done(work, "p2", &["2"], 10, seed ^ 0x9e37);
    check(work, "p2", &expected);
    crash_until_done(work, "rescaled", &["2", "1", "3"], 10, seed ^ 0x51f1);
    check(work, "rescaled", &expected);
}

/// Starts the throttled job in `work` as `name` with checkpoints every
/// `interval` into `checkpoints`, with `extra` arguments; stderr is piped.
fn start(work: &Path, name: &str, checkpoints: &str, interval: &str, extra: &[&str]) -> Child {
    let sql = format!("{name}.sql");
    let mut args = vec![
        "run",
        &sql,
        "--checkpoint-dir",
        checkpoints,
        "--checkpoint-interval",
        interval,
    ];
    args.extend_from_slice(extra);
    flumen(&args, work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flumen starts")
}

/// Sends `signal` to `child` after `after`, waits (at most 60 s) and returns
/// its output.
fn signal_after(child: Child, signal: i32, after: Duration) -> Output {
    std::thread::sleep(after);
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("flumen did not stop within 60 s of signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The ids of the complete checkpoints in `dir`, ascending.
fn complete_checkpoints(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("manifest.json").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn a_savepoint_taken_at_parallelism_2_resumes_at_3() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let expected = expected(work);
    std::fs::write(work.join("sp.sql"), job_sql(&work.join("sp"), true)).unwrap();
    let checkpoints = work.join("sp-checkpoints");
    let checkpoints = checkpoints.to_str().unwrap();
    let child = start(work, "sp", checkpoints, "1s", &["-p", "2"]);
    let out = signal_after(child, libc::SIGTERM, Duration::from_secs(4));
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    let savepoint = text
        .lines()
        .find_map(|l| l.strip_prefix("savepoint: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no savepoint reported:\n{text}"))
        .to_string();
    // Stopped without draining: open windows are in the savepoint, not out.
    let windowed = committed_rows(&work.join("sp/windowed"));
    assert!(windowed.len() < expected[0].len(), "{text}");
    let listed = flumen(&["checkpoints", checkpoints], work)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listing.contains("savepoint") && listing.contains("complete"),
        "{listing}"
    );
    let out = run_to_end(
        &[
            "run",
            "sp.sql",
            "-p",
            "3",
            "--checkpoint-dir",
            checkpoints,
            "--from-savepoint",
            &savepoint,
        ],
        work,
    );
    assert!(
        stderr(&out).contains("resuming from savepoint"),
        "{}",
        stderr(&out)
    );
    check(work, "sp", &expected);
}

#[test]
fn torn_checkpoints_fall_back_and_none_left_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    std::fs::write(work.join("torn.sql"), job_sql(&work.join("torn"), true)).unwrap();
    let dir = work.join("torn-checkpoints");
    let checkpoints = dir.to_str().unwrap();
    let child = start(work, "torn", checkpoints, "200ms", &["-p", "2"]);
    signal_after(child, libc::SIGKILL, Duration::from_millis(2500));
    let ids = complete_checkpoints(&dir);
    assert!(ids.len() >= 2, "{ids:?}");
    // Cut the newest checkpoint's largest state file in half.
    let newest = dir.join(format!("chk-{:08}", ids[ids.len() - 1]));
    let largest = std::fs::read_dir(&newest)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .max_by_key(|p| p.metadata().unwrap().len())
        .expect("the newest checkpoint holds state");
    let bytes = std::fs::read(&largest).unwrap();
    std::fs::write(&largest, &bytes[..bytes.len() / 2]).unwrap();
    let child = start(work, "torn", checkpoints, "200ms", &["-p", "2"]);
    let text = stderr(&signal_after(
        child,
        libc::SIGKILL,
        Duration::from_millis(1500),
    ));
    let previous = format!("resuming from checkpoint {} ", ids[ids.len() - 2]);
    assert!(
        text.contains(&format!("chk-{:08} is not usable", ids[ids.len() - 1]))
            && text.contains("truncated")
            && text.contains(&previous),
        "{text}"
    );
    // Every state file gone: no checkpoint is usable, and starting over
    // would commit again what was committed.
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        for file in std::fs::read_dir(entry.path()).unwrap().flatten() {
            if file.path().extension().is_some_and(|e| e == "arrow") {
                std::fs::remove_file(file.path()).unwrap();
            }
        }
    }
    let out = flumen(&["run", "torn.sql", "--checkpoint-dir", checkpoints], work)
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no usable checkpoint is left") && text.contains("--fresh"),
        "{text}"
    );
    let child = start(work, "torn", checkpoints, "200ms", &["--fresh"]);
    let text = stderr(&signal_after(
        child,
        libc::SIGKILL,
        Duration::from_millis(1500),
    ));
    assert!(
        !text.contains("resuming") && !text.contains("error"),
        "{text}"
    );
}

#[test]
fn a_changed_plan_is_refused_naming_the_operator() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let sql = job_sql(&work.join("plan"), true);
    std::fs::write(work.join("plan.sql"), &sql).unwrap();
    let dir = work.join("plan-checkpoints");
    let checkpoints = dir.to_str().unwrap();
    let child = start(work, "plan", checkpoints, "200ms", &["-p", "2"]);
    signal_after(child, libc::SIGKILL, Duration::from_millis(2000));
    assert!(!complete_checkpoints(&dir).is_empty());
    // The windows become 3 s long: the old window state has no home.
    let changed = sql.replace("INTERVAL '2' SECOND", "INTERVAL '3' SECOND");
    assert_ne!(changed, sql);
    std::fs::write(work.join("plan.sql"), changed).unwrap();
    let out = flumen(
        &[
            "run",
            "plan.sql",
            "-p",
            "2",
            "--checkpoint-dir",
            checkpoints,
        ],
        work,
    )
    .output()
    .unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("holds state of operator 'WindowAggregate: windows end 2000 ms")
            && text.contains("--allow-unmatched-state"),
        "{text}"
    );
    let child = start(
        work,
        "plan",
        checkpoints,
        "200ms",
        &["-p", "2", "--allow-unmatched-state"],
    );
    let text = stderr(&signal_after(
        child,
        libc::SIGKILL,
        Duration::from_millis(1500),
    ));
    assert!(
        text.contains("dropping state: checkpoint") && text.contains("WindowAggregate"),
        "{text}"
    );
}

#[test]
fn a_failure_a_retry_cures_restarts_the_job_from_its_checkpoint() {
    use std::io::BufRead;
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let input = work.join("input");
    std::fs::create_dir(&input).unwrap();
    let mut all = Vec::new();
    for file in 0..2 {
        let lines: Vec<String> = (0..20_000)
            .map(|i| {
                let id = file * 20_000 + i;
                all.push(format!("{id},{}", id % 7));
                format!("{{\"id\": {id}, \"k\": {}}}", id % 7)
            })
            .collect();
        std::fs::write(input.join(format!("f{file}.json")), lines.join("\n") + "\n").unwrap();
    }
    all.sort();
    let sql = format!(
        "CREATE TABLE src (id BIGINT, k BIGINT) WITH (connector = 'filesystem', path = '{}', format = 'json', rows_per_second = '10000');
         CREATE TABLE dst (id BIGINT, k BIGINT) WITH (connector = 'filesystem', path = '{}', format = 'csv');
         INSERT INTO dst SELECT id, k FROM src;",
        input.display(),
        work.join("out").display()
    );
    std::fs::write(work.join("restart.sql"), sql).unwrap();
    let checkpoints = work.join("restart-checkpoints");
    let mut child = start(
        work,
        "restart",
        checkpoints.to_str().unwrap(),
        "200ms",
        &["-p", "1"],
    );
    let lines = std::io::BufReader::new(child.stderr.take().unwrap());
    let (moved, second) = (work.join("f1.json.away"), input.join("f1.json"));
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in lines.lines() {
        let line = line.unwrap();
        assert!(Instant::now() < deadline, "no end within 60 s:\n{text}");
        // The first file is being read: take the second away, so that
        // opening it fails; put it back once the job restarts.
        if line.starts_with('[') && second.exists() && !text.contains("restarting") {
            std::fs::rename(&second, &moved).unwrap();
        }
        if line.starts_with("restarting from") && moved.exists() {
            std::fs::rename(&moved, &second).unwrap();
        }
        text.push_str(&line);
        text.push('\n');
    }
    assert!(child.wait().unwrap().success(), "{text}");
    assert!(
        text.contains("the job failed") && text.contains("restarted 1 time(s)"),
        "{text}"
    );
    assert_eq!(committed_rows(&work.join("out")), all, "{text}");
}

#[test]
fn drain_on_sigterm_ends_the_job_and_a_finished_job_does_not_run_again() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    std::fs::write(work.join("drain.sql"), job_sql(&work.join("drain"), true)).unwrap();
    let dir = work.join("drain-checkpoints");
    let checkpoints = dir.to_str().unwrap();
    let child = start(work, "drain", checkpoints, "500ms", &["-p", "2", "--drain"]);
    let out = signal_after(child, libc::SIGTERM, Duration::from_millis(2500));
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("stopping: sources end now"), "{text}");
    let listed = flumen(&["checkpoints", checkpoints], work)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(listing.contains("complete (job finished)"), "{listing}");
    let windowed = committed_rows(&work.join("drain/windowed"));
    let out = run_to_end(&["run", "drain.sql", "--checkpoint-dir", checkpoints], work);
    assert!(
        stderr(&out).contains("the job already finished"),
        "{}",
        stderr(&out)
    );
    assert_eq!(committed_rows(&work.join("drain/windowed")), windowed);
    // Other SQL against the finished job's checkpoints is refused, not
    // told that there is nothing to run.
    let other = "CREATE TABLE bid (auction BIGINT) WITH (connector = 'nexmark', kind = 'bid', events = '10');\n\
                 CREATE TABLE o (auction BIGINT) WITH (connector = 'blackhole');\n\
                 INSERT INTO o SELECT auction FROM bid;\n";
    std::fs::write(work.join("other.sql"), other).unwrap();
    let out = flumen(&["run", "other.sql", "--checkpoint-dir", checkpoints], work)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("planned from other SQL"),
        "{}",
        stderr(&out)
    );
}
