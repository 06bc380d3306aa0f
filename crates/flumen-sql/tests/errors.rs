//! Bad input gets a clear error that says where and what, never a panic, and
//! malformed records fail the job or are dropped and counted, as configured.

mod common;

use common::{read_json_rows, run_scripts};

const BID: &str = "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
                   url VARCHAR, date_time TIMESTAMP(3), extra VARCHAR) \
                   WITH (connector = 'nexmark', kind = 'bid', events = '1000');\n";

async fn error_of(sql: &str) -> String {
    match run_scripts(&[("job.sql", sql)], 1, &[]).await {
        Ok(_) => panic!("expected an error for:\n{sql}"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should contain {p:?}");
    }
}

#[tokio::test]
async fn syntax_error_names_line_and_column() {
    let msg = error_of(&format!("{BID}SELEC auction FROM bid;")).await;
    assert_contains(&msg, &["job.sql:2:1:", "syntax error", "SELEC"]);
}

#[tokio::test]
async fn unknown_column_names_line_and_column() {
    let msg = error_of(&format!("{BID}\nSELECT auction,\n       nope FROM bid;")).await;
    assert_contains(&msg, &["job.sql:4:8:", "nope"]);
}

#[tokio::test]
async fn unknown_connector_lists_the_valid_ones() {
    let msg =
        error_of("CREATE TABLE t (a BIGINT) WITH (connector = 'kafkaa');\nSELECT a FROM t;").await;
    assert_contains(
        &msg,
        &[
            "job.sql:1:",
            "unknown connector 'kafkaa'",
            "nexmark, filesystem, stdout, blackhole",
        ],
    );
}

#[tokio::test]
async fn unknown_option_lists_the_valid_ones() {
    let msg = error_of(
        "CREATE TABLE bid (auction BIGINT) WITH (connector = 'nexmark', kind = 'bid', evnts = '10');\nSELECT * FROM bid;",
    )
    .await;
    assert_contains(
        &msg,
        &["unknown option 'evnts'", "events", "rate", "seed", "kind"],
    );
}

#[tokio::test]
async fn missing_required_option_is_named() {
    let msg = error_of(
        "CREATE TABLE bid (auction BIGINT) WITH (connector = 'nexmark');\nSELECT * FROM bid;",
    )
    .await;
    assert_contains(&msg, &["needs option 'kind'"]);
}

#[tokio::test]
async fn bad_option_value_is_named() {
    let msg = error_of(
        "CREATE TABLE bid (auction BIGINT) WITH (connector = 'nexmark', kind = 'bids');\nSELECT * FROM bid;",
    )
    .await;
    assert_contains(&msg, &["kind = 'bids'", "person, auction, bid"]);
}

#[tokio::test]
async fn type_mismatch_names_the_column() {
    let sink =
        "CREATE TABLE out (auction BIGINT, seen TIMESTAMP(3)) WITH (connector = 'blackhole');\n";
    let msg = error_of(&format!(
        "{BID}{sink}INSERT INTO out SELECT auction, channel FROM bid;"
    ))
    .await;
    assert_contains(&msg, &["job.sql:3:1:", "column 'seen'", "Utf8"]);

    let msg = error_of(
        "CREATE TABLE bid (date_time BOOLEAN) WITH (connector = 'nexmark', kind = 'bid');\nSELECT * FROM bid;",
    )
    .await;
    assert_contains(&msg, &["column 'date_time'", "Boolean"]);
}

#[tokio::test]
async fn unsupported_construct_is_named() {
    let msg = error_of(&format!("{BID}SELECT auction FROM bid ORDER BY price;")).await;
    assert_contains(&msg, &["job.sql:2:1:", "ORDER BY", "only with LIMIT n"]);
    let msg = error_of(&format!("{BID}SELECT auction FROM bid LIMIT 3 OFFSET 2;")).await;
    assert_contains(
        &msg,
        &["job.sql:2:1:", "LIMIT with OFFSET is not supported"],
    );
}

#[tokio::test]
async fn an_append_only_sink_rejects_an_updating_query_naming_the_part() {
    let msg = error_of(&format!(
        "{BID}CREATE TABLE out (auction BIGINT, n BIGINT) WITH (connector = 'filesystem', path = '/tmp/x', format = 'json');\n\
         INSERT INTO out SELECT auction, count(*) FROM bid GROUP BY auction;"
    ))
    .await;
    assert_contains(
        &msg,
        &[
            "job.sql:3:1:",
            "can only append",
            "GROUP BY bid.auction without a window",
        ],
    );
}

#[tokio::test]
async fn min_over_an_updating_input_cannot_be_computed_incrementally() {
    let msg = error_of(&format!(
        "{BID}SELECT min(n) FROM (SELECT auction, count(*) AS n FROM bid GROUP BY auction);"
    ))
    .await;
    assert_contains(
        &msg,
        &[
            "job.sql:2:1:",
            "min(",
            "cannot be computed incrementally",
            "COUNT, SUM and AVG",
        ],
    );
}

#[tokio::test]
async fn an_unknown_setting_lists_the_valid_ones() {
    let msg = error_of(&format!(
        "SET parallelism = 4;\n{BID}SELECT auction FROM bid;"
    ))
    .await;
    assert_contains(
        &msg,
        &["job.sql:1:1:", "unknown setting 'parallelism'", "state_ttl"],
    );
}

#[tokio::test]
async fn an_override_no_table_takes_lists_the_valid_ones() {
    let err = run_scripts(
        &[("job.sql", &format!("{BID}SELECT auction FROM bid;"))],
        1,
        &[("evnts", "10")],
    )
    .await
    .expect_err("a typo in --set is an error");
    assert_contains(
        &err.to_string(),
        &[
            "--set evnts: no table of the script takes option 'evnts'",
            "events",
            "state_ttl",
        ],
    );
}

#[tokio::test]
async fn missing_input_path_is_named() {
    let msg = error_of(
        "CREATE TABLE t (a BIGINT) WITH (connector = 'filesystem', path = '/no/such/dir/in.json', format = 'json');\nSELECT a FROM t;",
    )
    .await;
    assert_contains(&msg, &["/no/such/dir/in.json", "does not exist"]);
}

#[tokio::test]
async fn unwritable_sink_path_is_named() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().join("out");
    let sql = format!(
        "{BID}CREATE TABLE out (auction BIGINT) WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
         INSERT INTO out SELECT auction FROM bid;",
        path.display()
    );
    let msg = error_of(&sql).await;
    assert_contains(&msg, &[&path.display().to_string(), "cannot write"]);
}

fn json_job(input: &std::path::Path, output: &std::path::Path, bad_data: &str) -> String {
    format!(
        "CREATE TABLE src (id BIGINT, name VARCHAR) WITH (connector = 'filesystem', path = '{}', format = 'json'{bad_data});\n\
         CREATE TABLE dst (id BIGINT, name VARCHAR) WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
         INSERT INTO dst SELECT id, upper(name) FROM src;",
        input.display(),
        output.display()
    )
}

const JSON_LINES: &str = "{\"id\": 1, \"name\": \"a\"}\n{\"id\": \"two\", \"name\": \"b\"}\n{\"id\": 3, \"name\": \"c\"}\n";

#[tokio::test]
async fn malformed_json_record_fails_the_job_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    std::fs::write(&input, JSON_LINES).unwrap();
    let msg = error_of(&json_job(&input, &dir.path().join("out"), "")).await;
    assert_contains(&msg, &["in.json line 2"]);
}

#[tokio::test]
async fn malformed_json_record_is_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    std::fs::write(&input, JSON_LINES).unwrap();
    let out = dir.path().join("out");
    let sql = json_job(&input, &out, ", bad_data = 'drop'");
    let metrics = run_scripts(&[("job.sql", &sql)], 2, &[]).await.unwrap();
    assert_eq!(metrics.bad_records_dropped(), 1);
    assert_eq!(metrics.rows_in(), 2);
    assert_eq!(read_json_rows(&out).await, vec!["1|A", "3|C"]);
}

#[tokio::test]
async fn malformed_records_go_to_the_dead_letter_output_with_error_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    let bytes = [JSON_LINES.as_bytes(), b"{\"id\": 4, \"name\": \"\xff\"}\n"].concat();
    std::fs::write(&input, bytes).unwrap();
    let out = dir.path().join("out");
    let dead = dir.path().join("dead");
    let sql = json_job(
        &input,
        &out,
        &format!(
            ", bad_data = 'dead_letter', 'dead_letter.path' = '{}'",
            dead.display()
        ),
    );
    let metrics = run_scripts(&[("job.sql", &sql)], 1, &[]).await.unwrap();
    assert_eq!(metrics.bad_records_dead_lettered(), 2);
    assert_eq!(metrics.bad_records_dropped(), 0);
    assert_eq!(read_json_rows(&out).await, vec!["1|A", "3|C"]);
    let text = std::fs::read_to_string(dead.join("dead-letter-0.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{text}");
    assert_eq!(records[0]["file"], input.display().to_string());
    assert_eq!(records[0]["line"], 2);
    assert_eq!(records[0]["offset"], 23);
    assert_eq!(records[0]["raw"], "{\"id\": \"two\", \"name\": \"b\"}");
    assert!(
        records[0]["error"].as_str().unwrap().contains("two"),
        "{text}"
    );
    assert_eq!(records[1]["line"], 4);
    assert!(
        records[1]["raw_hex"].as_str().unwrap().ends_with("ff227d"),
        "{text}"
    );
    let missing = error_of(&json_job(&input, &out, ", bad_data = 'dead_letter'")).await;
    assert_contains(&missing, &["'dead_letter.path'"]);
}

#[tokio::test]
async fn csv_source_reads_headers_and_names_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.csv"), "id,name\n1,x\n2,y\n").unwrap();
    std::fs::write(input.join("b.csv"), "id,name\n3,z\nfour,w\n").unwrap();
    let out = dir.path().join("out");
    let sql = |bad: &str| {
        format!(
            "CREATE TABLE src (id BIGINT, name VARCHAR) WITH (connector = 'filesystem', path = '{}', format = 'csv'{bad});\n\
             CREATE TABLE dst (id BIGINT, name VARCHAR) WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
             INSERT INTO dst SELECT id * 10, name FROM src;",
            input.display(),
            out.display()
        )
    };
    let msg = error_of(&sql("")).await;
    assert_contains(&msg, &["b.csv line 3"]);
    std::fs::remove_dir_all(&out).ok();
    let metrics = run_scripts(&[("job.sql", &sql(", bad_data = 'drop'"))], 2, &[])
        .await
        .unwrap();
    assert_eq!(metrics.bad_records_dropped(), 1);
    assert_eq!(read_json_rows(&out).await, vec!["10|x", "20|y", "30|z"]);
}

/// A CSV file with a header maps its columns by name: a table may declare
/// some of them, in any order; a column the query reads that a file lacks is
/// an error naming the file (as the user wrote its path) and the column.
#[tokio::test]
async fn csv_header_maps_columns_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(
        input.join("a.csv"),
        "id,city,name,score,flag,extra,zone\n1,Oslo,x,7,true,e,z\n2,Rome,y,8,false,e,z\n",
    )
    .unwrap();
    std::fs::write(
        input.join("b.csv"),
        "zone,name,id,score\r\nq,w,3,9\r\n\"q,2\",\"v, u\",4,10\r\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let sql = |columns: &str, select: &str| {
        format!(
            "CREATE TABLE src ({columns}) WITH (connector = 'filesystem', path = '{}', format = 'csv', bad_data = 'drop');\n\
             CREATE TABLE dst (a VARCHAR, b BIGINT) WITH (connector = 'filesystem', path = '{}', format = 'json');\n\
             INSERT INTO dst SELECT {select} FROM src;",
            input.display(),
            out.display()
        )
    };
    let metrics = run_scripts(
        &[(
            "job.sql",
            &sql(
                "score BIGINT, name VARCHAR, id BIGINT",
                "name, id * 100 + score",
            ),
        )],
        2,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(metrics.bad_records_dropped(), 0);
    let mut rows = read_json_rows(&out).await;
    rows.sort();
    assert_eq!(rows, vec!["v, u|410", "w|309", "x|107", "y|208"]);
    std::fs::remove_dir_all(&out).ok();
    let msg = error_of(&sql("id BIGINT, city VARCHAR", "city, id")).await;
    let file = input.join("b.csv");
    assert_contains(
        &msg,
        &[
            &format!("{}:", file.display()),
            "no column 'city'",
            "zone, name, id, score",
        ],
    );
}

#[tokio::test]
async fn file_sink_rolls_files_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "{BID}CREATE TABLE out (auction BIGINT, extra VARCHAR) WITH (connector = 'filesystem', path = '{}', format = 'json', rolling_size = '10000');\n\
         INSERT INTO out SELECT auction, extra FROM bid;",
        dir.path().display()
    );
    run_scripts(&[("job.sql", &sql)], 1, &[("events", "100000")])
        .await
        .unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(files.len() > 5, "{} files", files.len());
    assert!(
        files
            .iter()
            .all(|f| !f.file_name().to_string_lossy().contains("inprogress"))
    );
    assert_eq!(read_json_rows(dir.path()).await.len(), 92_000);
}

#[tokio::test]
async fn insert_into_a_view_is_an_error_not_a_panic() {
    let msg = error_of(&format!(
        "{BID}CREATE VIEW v AS SELECT auction FROM bid;\nINSERT INTO v SELECT auction FROM bid;"
    ))
    .await;
    assert_contains(&msg, &["job.sql:3:1:", "'v' is a view"]);
}

#[tokio::test]
async fn a_top_n_without_order_by_says_what_would_work() {
    let msg = error_of(&format!(
        "{BID}SELECT * FROM (SELECT auction, ROW_NUMBER() OVER (PARTITION BY auction) AS rn FROM bid) WHERE rn <= 3;"
    ))
    .await;
    assert_contains(
        &msg,
        &[
            "job.sql:2:1:",
            "TopN needs ORDER BY",
            "ORDER BY <column> DESC",
        ],
    );
}

#[tokio::test]
async fn a_window_function_that_is_not_a_top_n_is_named() {
    let msg = error_of(&format!(
        "{BID}SELECT auction, sum(price) OVER (PARTITION BY auction ORDER BY date_time) FROM bid;"
    ))
    .await;
    assert_contains(&msg, &["job.sql:2:1:", "only as TopN", "ROW_NUMBER()"]);
}

#[tokio::test]
async fn a_join_without_equal_keys_is_rejected() {
    let msg = error_of(&format!(
        "{BID}SELECT a.auction FROM bid AS a JOIN bid AS b ON a.price < b.price;"
    ))
    .await;
    assert_contains(&msg, &["job.sql:2:1:", "needs at least one equality"]);
}

#[tokio::test]
async fn a_window_over_a_table_without_event_time_is_a_plan_error() {
    let msg = error_of(&format!(
        "{BID}SELECT auction, count(*) FROM tumble(bid, descriptor(url), INTERVAL '2' SECOND) GROUP BY auction, window_start;"
    ))
    .await;
    assert_contains(
        &msg,
        &[
            "job.sql:2:1:",
            "table 'bid' has no event time, so tumble cannot window it",
            "WATERMARK FOR",
        ],
    );
}

/// `BID` with event time.
fn timed_bid() -> String {
    BID.replace(
        "extra VARCHAR)",
        "extra VARCHAR, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)",
    )
}

#[tokio::test]
async fn a_window_over_another_column_names_the_event_time_column() {
    let msg = error_of(&format!(
        "{}SELECT auction, count(*) FROM tumble(bid, descriptor(price), INTERVAL '2' SECOND) GROUP BY auction, window_start;",
        timed_bid()
    ))
    .await;
    assert_contains(
        &msg,
        &[
            "job.sql:2:1:",
            "tumble is over column 'price', but the event-time column of 'bid' is 'date_time'",
            "window by descriptor(date_time)",
        ],
    );
}

#[tokio::test]
async fn window_intervals_must_be_positive() {
    for (call, error) in [
        (
            "hop(bid, descriptor(date_time), INTERVAL '0' SECOND, INTERVAL '10' SECOND)",
            "hop's slide must be a positive constant INTERVAL",
        ),
        (
            "tumble(bid, descriptor(date_time), INTERVAL '0' SECOND)",
            "tumble's size must be a positive constant INTERVAL",
        ),
        (
            "cumulate(bid, descriptor(date_time), INTERVAL '1' SECOND, INTERVAL '-4' SECOND)",
            "cumulate's size must be a positive constant INTERVAL",
        ),
    ] {
        let msg = error_of(&format!(
            "{}SELECT auction, count(*) FROM {call} GROUP BY auction, window_start, window_end;",
            timed_bid()
        ))
        .await;
        assert_contains(&msg, &["job.sql:2:1:", error]);
    }
}

#[tokio::test]
async fn a_date_bin_over_an_expression_or_with_an_origin_says_what_works() {
    for window in [
        "date_bin(INTERVAL '10' SECOND, date_time + INTERVAL '1' SECOND)",
        "date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '2020-01-01 00:00:03')",
    ] {
        let msg = error_of(&format!(
            "{}SELECT auction, count(*) FROM bid GROUP BY auction, {window};",
            timed_bid()
        ))
        .await;
        assert_contains(
            &msg,
            &[
                "job.sql:2:1:",
                "the date_bin(…) window is not over an event-time column as it is",
                "with no origin and no expression around it",
            ],
        );
    }
}

#[tokio::test]
async fn an_ordered_aggregate_with_filter_outside_windows_says_what_works() {
    let msg = error_of(&format!(
        "{BID}SELECT auction, last_value(price ORDER BY date_time) FILTER (WHERE price > 10) FROM bid GROUP BY auction;"
    ))
    .await;
    assert_contains(
        &msg,
        &[
            "job.sql:2:1:",
            "with FILTER (WHERE …) is supported in event-time windows only",
        ],
    );
}

#[tokio::test]
async fn an_interval_join_of_an_updating_input_is_named() {
    let auction = "CREATE TABLE auction (id BIGINT, date_time TIMESTAMP(3), expires TIMESTAMP(3), \
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) \
                   WITH (connector = 'nexmark', kind = 'auction', events = '1000');\n";
    let msg = error_of(&format!(
        "{}{auction}SELECT c.auction FROM (SELECT auction, max(date_time) AS t FROM bid GROUP BY auction) c \
         JOIN auction a ON c.auction = a.id AND c.t BETWEEN a.date_time AND a.expires;",
        timed_bid()
    ))
    .await;
    assert_contains(
        &msg,
        &[
            "job.sql:3:1:",
            "a window or interval join of an updating input",
        ],
    );
}

#[tokio::test]
async fn not_in_over_a_nullable_column_says_to_write_not_exists() {
    let msg = error_of(&format!(
        "{BID}SELECT auction FROM bid WHERE bidder NOT IN (SELECT auction FROM bid WHERE price > 100);"
    ))
    .await;
    assert_contains(
        &msg,
        &["job.sql:2:1:", "NOT IN over a subquery", "NOT EXISTS"],
    );
}

#[tokio::test]
async fn grouping_sets_are_named() {
    let msg = error_of(&format!(
        "{BID}SELECT auction, count(*) FROM bid GROUP BY ROLLUP(auction, bidder);"
    ))
    .await;
    assert_contains(
        &msg,
        &[
            "job.sql:2:1:",
            "GROUPING SETS, ROLLUP and CUBE are not supported",
        ],
    );
}

#[tokio::test]
async fn session_rows_outside_a_session_aggregate_are_refused() {
    let msg = error_of(&format!(
        "{}SELECT bidder, window_start FROM session(bid, descriptor(date_time), INTERVAL '10' SECOND, descriptor(bidder));",
        timed_bid()
    ))
    .await;
    assert_contains(
        &msg,
        &[
            "job.sql:2:1:",
            "session(…) windows are computed by an aggregate",
        ],
    );
}

#[tokio::test]
async fn a_hop_whose_size_is_not_a_whole_number_of_slides_is_a_plan_error() {
    let msg = error_of(&format!(
        "{}SELECT auction, count(*) FROM hop(bid, descriptor(date_time), INTERVAL '3' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end;",
        timed_bid()
    ))
    .await;
    assert_contains(
        &msg,
        &[
            "job.sql:2:1:",
            "hop's size (INTERVAL '10' SECOND) must be a whole number of its slide",
        ],
    );
}

#[tokio::test]
async fn a_scalar_subquery_says_to_write_a_join() {
    let msg = error_of(&format!(
        "{BID}SELECT auction, price FROM bid WHERE price > (SELECT avg(price) FROM bid);"
    ))
    .await;
    assert_contains(
        &msg,
        &["job.sql:2:1:", "subquery inside an expression", "JOIN"],
    );
}
