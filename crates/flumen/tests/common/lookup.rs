//! The workload of the lookup-join tests: customers keyed by bidder id
//! (the same rows in the system under test and in a CSV file), lookup joins
//! of the generator's bids with them, and their batch result computed by
//! DataFusion over the files (the oracle).

use std::path::Path;

/// Customers keyed by bidder id, as (id, name, tier, since, active); ids
/// divisible by 7 are missing, so joins meet keys the table lacks.
pub fn customers() -> Vec<(i64, String, i32, String, bool)> {
    (1000..1600)
        .filter(|id| id % 7 != 0)
        .map(|id| {
            (
                id,
                format!("c'{id}"),
                (id % 4) as i32,
                format!(
                    "2026-0{}-1{} 0{}:04:05.{:03}",
                    1 + id % 9,
                    id % 10,
                    id % 10,
                    id % 1000
                ),
                id % 5 != 0,
            )
        })
        .collect()
}

pub const CUSTOMER_COLUMNS: &str =
    "id BIGINT, name VARCHAR, tier INT, since TIMESTAMP(3), active BOOLEAN";

/// The lookup joins checked: an inner join with a condition on the
/// table's rows, and a LEFT join with one in its ON clause.
pub const LOOKUP_QUERIES: [&str; 2] = [
    "SELECT b.auction, b.bidder, b.price, c.name, c.tier, c.since
     FROM bid AS b JOIN customers FOR SYSTEM_TIME AS OF b.date_time AS c ON b.bidder = c.id
     WHERE c.active",
    "SELECT b.auction, b.price, c.name, c.since
     FROM bid AS b LEFT JOIN customers FOR SYSTEM_TIME AS OF b.date_time AS c
       ON b.bidder = c.id AND c.tier > 1",
];

/// Every row of `batches`, its values `|`-separated, sorted.
pub fn rendered(batches: &[arrow::array::RecordBatch]) -> Vec<String> {
    let mut rows: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| {
                b.columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, r).unwrap())
                    .collect::<Vec<_>>()
                    .join("|")
            })
        })
        .collect();
    rows.sort();
    rows
}

/// Checks the lookup joins of bids with `customers` declared `WITH
/// (customers_with)` against DataFusion's batch joins over the same rows,
/// at parallelism 1, 2 and 3.
pub fn check(work: &Path, customers_with: &str) {
    check_runs(work, customers_with, &["1", "2", "3"], "", &|work, p| {
        super::run_ok(work, "job.sql", p)
    });
}

/// [`check`] at the `parallelisms` given, the bids' table declared with
/// `bid_options` too, each job (`job.sql` in `work`) run by `run`.
pub fn check_runs(
    work: &Path,
    customers_with: &str,
    parallelisms: &[&str],
    bid_options: &str,
    run: &dyn Fn(&Path, &str),
) {
    let rows = customers();
    let mut csv = String::from("id,name,tier,since,active\n");
    for (id, name, tier, since, active) in &rows {
        csv.push_str(&format!("{id},{name},{tier},{since},{active}\n"));
    }
    std::fs::create_dir(work.join("customers")).unwrap();
    std::fs::write(work.join("customers/part-0.csv"), csv).unwrap();
    super::bids::bids(work, 20_000);

    // The oracle: DataFusion's batch engine over the same rows.
    let rt = super::runtime();
    let ctx = flumen_sql::session();
    let expected: Vec<Vec<String>> = rt.block_on(async {
        let bid_schema = arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("auction", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("bidder", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("price", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("channel", arrow::datatypes::DataType::Utf8, true),
            arrow::datatypes::Field::new(
                "date_time",
                arrow::datatypes::DataType::Timestamp(
                    arrow::datatypes::TimeUnit::Millisecond,
                    None,
                ),
                true,
            ),
        ]);
        let customer_schema = arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("name", arrow::datatypes::DataType::Utf8, true),
            arrow::datatypes::Field::new("tier", arrow::datatypes::DataType::Int32, true),
            arrow::datatypes::Field::new(
                "since",
                arrow::datatypes::DataType::Timestamp(
                    arrow::datatypes::TimeUnit::Millisecond,
                    None,
                ),
                true,
            ),
            arrow::datatypes::Field::new("active", arrow::datatypes::DataType::Boolean, true),
        ]);
        let json = datafusion::prelude::JsonReadOptions::default()
            .schema(&bid_schema)
            .file_extension(".json");
        ctx.register_json("bid", work.join("bids").to_str().unwrap(), json)
            .await
            .unwrap();
        let csv = datafusion::prelude::CsvReadOptions::new().schema(&customer_schema);
        ctx.register_csv("customers", work.join("customers").to_str().unwrap(), csv)
            .await
            .unwrap();
        let mut all = Vec::new();
        for q in LOOKUP_QUERIES {
            let batch = q.replace("FOR SYSTEM_TIME AS OF b.date_time", "");
            let got = ctx.sql(&batch).await.unwrap().collect().await.unwrap();
            all.push(rendered(&got));
        }
        all
    });
    assert!(expected[0].len() > 1000 && expected[1].len() > expected[0].len());
    let padded = expected[1].iter().filter(|r| r.ends_with("||")).count();
    assert!(padded > 100, "{padded} bids without a matching customer");

    for &p in parallelisms {
        let out = work.join(format!("out-{p}"));
        let mut sql = format!(
            "CREATE TABLE bid ({}) WITH (connector = 'filesystem', path = 'bids', format = 'json'{bid_options});
             CREATE TABLE customers ({CUSTOMER_COLUMNS}) WITH ({customers_with});",
            super::bids::BID_COLUMNS
        );
        for (i, q) in LOOKUP_QUERIES.iter().enumerate() {
            let columns = if i == 0 {
                "auction BIGINT, bidder BIGINT, price BIGINT, name VARCHAR, tier INT, since TIMESTAMP(3)"
            } else {
                "auction BIGINT, price BIGINT, name VARCHAR, since TIMESTAMP(3)"
            };
            sql.push_str(&format!(
                "CREATE TABLE out{i} ({columns}) WITH (connector = 'filesystem', path = '{}/q{i}', format = 'csv');
                 INSERT INTO out{i} {q};",
                out.display()
            ));
        }
        std::fs::write(work.join("job.sql"), sql).unwrap();
        run(work, p);
        for (i, want) in expected.iter().enumerate() {
            let got = rt.block_on(async {
                let schema = ctx
                    .sql(
                        LOOKUP_QUERIES[i]
                            .replace("FOR SYSTEM_TIME AS OF b.date_time", "")
                            .as_str(),
                    )
                    .await
                    .unwrap()
                    .schema()
                    .as_arrow()
                    .clone();
                let read = flumen_sql::session();
                let csv = datafusion::prelude::CsvReadOptions::new()
                    .schema(&schema)
                    .has_header(true);
                read.register_csv("got", out.join(format!("q{i}")).to_str().unwrap(), csv)
                    .await
                    .unwrap();
                rendered(
                    &read
                        .sql("SELECT * FROM got")
                        .await
                        .unwrap()
                        .collect()
                        .await
                        .unwrap(),
                )
            });
            super::bids::assert_same(&format!("query {i} at parallelism {p}"), &got, want);
        }
    }
}

/// Runs the checkpointed job `job.sql` in `work` at `parallelism`, calling
/// `cut` every second until it has cut the job's connections twice (it
/// says whether it found any), then waits for the job: the lookups must
/// reconnect and retry, never restart the job from a checkpoint.
pub fn run_cut_twice(work: &Path, parallelism: &str, cut: &dyn Fn() -> bool) {
    use std::time::{Duration, Instant};
    let child = super::start_checkpointed(work, "job.sql", parallelism);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut cuts = 0;
    while cuts < 2 {
        assert!(Instant::now() < deadline, "the job never connected");
        std::thread::sleep(Duration::from_millis(1000));
        if cut() {
            cuts += 1;
        }
    }
    let log = super::finish_checkpointed(child, work, Duration::from_secs(120));
    assert!(
        !log.contains("restarting from checkpoint"),
        "the lookups should reconnect and retry, not restart the job: {log}"
    );
}
