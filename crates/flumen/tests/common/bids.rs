//! The workload of the connector tests: the generator's bids as JSON lines,
//! a windowed query over them, and its result computed from files (the
//! oracle the same query over a connector must equal).

use std::path::Path;

/// Writes the generator's bids as JSON lines into `work/bids/`; returns
/// the lines.
pub fn bids(work: &Path, events: u64) -> Vec<String> {
    std::fs::write(
        work.join("bids.sql"),
        format!(
            "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3))
               WITH (connector = 'nexmark', kind = 'bid', events = '{events}', rate = '10000', seed = '11');
             CREATE TABLE out (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3))
               WITH (connector = 'filesystem', path = 'bids', format = 'json');
             INSERT INTO out SELECT * FROM bid;"
        ),
    )
    .unwrap();
    super::run_ok(work, "bids.sql", "1");
    lines_of(&work.join("bids"), false)
}

/// The lines of every file under `dir`; sorted when `sort`.
pub fn lines_of(dir: &Path, sort: bool) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(['.', '_'])
        })
        .collect();
    files.sort();
    let mut lines: Vec<String> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    if sort {
        lines.sort();
    }
    lines
}

pub const BID_COLUMNS: &str =
    "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3),
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND";

/// A windowed count and top price per auction over `bid`.
pub const WINDOWED: &str = "SELECT auction, count(*) AS num, max(price) AS top, window_start
    FROM tumble(bid, descriptor(date_time), INTERVAL '2' SECOND)
    GROUP BY auction, window_start, window_end";

pub const OUT_COLUMNS: &str = "auction BIGINT, num BIGINT, top BIGINT, window_start TIMESTAMP(3)";

/// The windowed query over the bids in `work/bids` (files): the oracle.
pub fn expected(work: &Path) -> Vec<String> {
    std::fs::write(
        work.join("expected.sql"),
        format!(
            "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json');
             CREATE TABLE out ({OUT_COLUMNS}) WITH (connector = 'filesystem', path = 'expected', format = 'json');
             INSERT INTO out {WINDOWED};"
        ),
    )
    .unwrap();
    super::run_ok(work, "expected.sql", "1");
    let want = lines_of(&work.join("expected"), true);
    assert!(want.len() > 1000, "{} rows expected", want.len());
    want
}

pub fn assert_same(what: &str, got: &[String], want: &[String]) {
    if got != want {
        let first = got.iter().zip(want).find(|(a, b)| a != b);
        panic!(
            "{what}: {} rows, {} expected; first difference (got, expected): {first:?}",
            got.len(),
            want.len()
        );
    }
}
