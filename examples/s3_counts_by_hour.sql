-- Bids per channel and hour, read from the partitioned Parquet files that
-- examples/s3_bids_by_hour.sql wrote to S3: `dt` and `hour` come from the
-- directory names, not from the files.
--   cargo run --release -p flumen -- run examples/s3_counts_by_hour.sql

CREATE TABLE bids_on_s3 (
    auction   BIGINT,
    channel   VARCHAR,
    dt        VARCHAR,
    hour      VARCHAR
) WITH (connector = 'filesystem', path = 's3://flumen/bids/', format = 'parquet',
        partition_by = 'dt, hour', 's3.endpoint' = 'http://127.0.0.1:19000',
        's3.access-key' = 'flumen', 's3.secret-key' = 'flumen-test-secret');

SELECT dt, hour, count(*) AS bids
FROM bids_on_s3
GROUP BY dt, hour;
