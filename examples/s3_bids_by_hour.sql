-- Generator bids written to S3 as Parquet files partitioned by date and
-- hour (s3://flumen/bids/dt=…/hour=…/), for examples/s3_counts_by_hour.sql
-- to read. Against the S3 server of the tests (s3s-fs on 127.0.0.1:19000,
-- bucket `flumen`):
--   scripts/services.sh s3
--   cargo run --release -p flumen -- run examples/s3_bids_by_hour.sql --checkpoint-dir /tmp/flumen-s3-example
-- With checkpoints each file is a multipart upload completed when its
-- checkpoint completes. Credentials may also come from AWS_ACCESS_KEY_ID
-- and AWS_SECRET_ACCESS_KEY instead of the options.

CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3)
) WITH (connector = 'nexmark', kind = 'bid', events = '2000000', rate = '200');

CREATE TABLE bids_on_s3 (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3),
    dt        VARCHAR,
    hour      VARCHAR
) WITH (connector = 'filesystem', path = 's3://flumen/bids/', format = 'parquet',
        partition_by = 'dt, hour', 's3.endpoint' = 'http://127.0.0.1:19000',
        's3.access-key' = 'flumen', 's3.secret-key' = 'flumen-test-secret');

INSERT INTO bids_on_s3
SELECT auction, bidder, price, channel, date_time,
       to_char(date_time, '%Y-%m-%d'), to_char(date_time, '%H')
FROM bid;
