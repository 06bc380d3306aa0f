-- Kafka JSON in, a 10-second window per channel, PostgreSQL upsert out,
-- exactly once with checkpoints: the source's offsets are in each
-- checkpoint and the sink applies a checkpoint's rows when it completes.
--   scripts/services.sh                       (PostgreSQL and tansu)
--   psql postgres://flumen@127.0.0.1:54329/flumen -c "
--     CREATE TABLE IF NOT EXISTS channel_windows (channel text, window_end timestamp,
--       bids bigint, top bigint, PRIMARY KEY (channel, window_end));"
--   cargo run --release -p flumen -- run examples/kafka_bids_out.sql
--   cargo run --release -p flumen -- run examples/kafka_to_postgres.sql --checkpoint-dir /tmp/flumen-kafka-example
-- Kill it (SIGKILL) and run the same command again: it resumes at the
-- checkpointed offsets and no window is counted twice.

CREATE TABLE bids (
    auction   BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3),
    WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND
) WITH (connector = 'kafka', topic = 'bids', 'properties.bootstrap.servers' = '127.0.0.1:19092',
        format = 'json', 'scan.startup.mode' = 'earliest-offset',
        'scan.bounded.mode' = 'latest-offset', rows_per_second = '200000');

CREATE TABLE channel_windows (
    channel    VARCHAR,
    window_end TIMESTAMP(3),
    bids       BIGINT,
    top        BIGINT,
    PRIMARY KEY (channel, window_end) NOT ENFORCED
) WITH (connector = 'postgres', url = 'postgres://flumen@127.0.0.1:54329/flumen',
        'table-name' = 'channel_windows');

INSERT INTO channel_windows
SELECT channel, window_end, count(*), max(price)
FROM tumble(bids, descriptor(date_time), INTERVAL '10' SECOND)
GROUP BY channel, window_start, window_end;
